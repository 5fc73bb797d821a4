// The non-cooperative events: what the application did to its memory behind
// the pager's back, applied to the page states and the address map before
// any fault of the same batch is served (a fault can be read before a REMOVE
// that logically precedes it).
//
//   REMOVE (MADV_DONTNEED/REMOVE)  pages read zero from now on; a fill in flight is dropped,
//                                  and a thread waiting on one gets the zero page now
//   UNMAP (munmap)                 pages are gone; threads asleep on them are woken to fail
//   REMAP (mremap)                 the image moves with the memory; threads asleep at the
//                                  old address are woken to retry there (nothing is mapped)
//   FORK                           a child pager serves the child's copy, from the parent's states
import { PAGE_SIZE } from '../native.js';
import { UserfaultError } from '../errors.js';
import type { PagefaultEvent, UffdEvent } from '../uffd/messages.js';
import type { AddressMap } from './address-map.js';
import type { PageInstaller } from './installer.js';
import type { PagerMetrics } from './metrics.js';
import { PageState, type PageStateTable } from './page-state.js';
import type { FaultWaiters } from './waiters.js';

export type NonFaultEvent = Exclude<UffdEvent, PagefaultEvent>;

export interface EventContext {
  states: PageStateTable;
  map: AddressMap;
  waiters: FaultWaiters;
  installer: PageInstaller;
  metrics: PagerMetrics;
  /** Some pages left the in-flight state: reads none of whose pages are in flight may be aborted. */
  settledInFlight(): void;
  adoptFork(childUffdFd: number): void;
  report(error: Error): void;
}

export function applyEvent(ctx: EventContext, event: NonFaultEvent): void {
  switch (event.type) {
    case 'remove':
      ctx.metrics.events.remove++;
      discard(ctx, event.start, event.end);
      return;
    case 'unmap':
      ctx.metrics.events.unmap++;
      for (const piece of ctx.map.remove(event.start, event.end)) {
        forPages(ctx.states, piece.sourceOffset, piece.lengthBytes, (index) => {
          ctx.states.set(index, PageState.UNMAPPED);
          ctx.waiters.drop(index);
        });
        // A thread that faulted here before the munmap sleeps in
        // handle_userfault; nothing the kernel does on munmap wakes it. Woken,
        // it retries, finds no VMA, and fails as any access to unmapped
        // memory does (SIGSEGV, or EFAULT inside a syscall).
        ctx.installer.wakeRange(piece.address, piece.lengthBytes);
      }
      ctx.settledInFlight();
      return;
    case 'remap':
      ctx.metrics.events.remap++;
      ctx.map.move(event.from, event.to, event.length);
      // Fills in flight land at the new address (installing looks it up then)
      // and wake waiters there; a thread that faulted at the old address
      // before the move is woken here to retry, where nothing is mapped now.
      ctx.installer.wakeRange(event.from, event.length);
      return;
    case 'fork':
      ctx.metrics.events.fork++;
      ctx.adoptFork(event.uffd);
      return;
    case 'unknown':
      ctx.metrics.events.unknown++;
      ctx.report(new UserfaultError(`unknown userfaultfd event 0x${event.event.toString(16)}; ignored`));
      return;
    default: {
      const never: never = event;
      throw new UserfaultError(`unhandled event ${JSON.stringify(never)}`);
    }
  }
}

/**
 * MADV_DONTNEED/MADV_REMOVE threw pages away: from now on they read zero.
 * A fill in flight for them is dropped; a thread waiting on one gets the
 * zero page now rather than stale source data later.
 */
function discard(ctx: EventContext, start: number, end: number): void {
  for (const piece of ctx.map.sourceRangesIn(start, end)) {
    forPages(ctx.states, piece.sourceOffset, piece.lengthBytes, (index) => {
      const state = ctx.states.get(index);
      if (state === PageState.UNMAPPED) return;
      ctx.states.set(index, PageState.DISCARDED);
      if (state === PageState.IN_FLIGHT && ctx.waiters.has(index)) ctx.installer.zeroFill(index);
    });
  }
  ctx.settledInFlight();
}

export function forPages(states: PageStateTable, sourceOffset: number, lengthBytes: number, each: (index: number) => void): void {
  const first = Math.floor(sourceOffset / PAGE_SIZE);
  const end = Math.ceil((sourceOffset + lengthBytes) / PAGE_SIZE);
  for (let index = first; index < end && index < states.pageCount; index++) each(index);
}
