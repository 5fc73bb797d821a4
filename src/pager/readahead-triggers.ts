// The page a stream's read-ahead holds back, so that the thread sweeping the
// stream says when it got there (the kernel's PG_readahead marker, for
// memory whose faults the kernel only reports while a page is missing).
//
// Without one, a thread that finds every page of the read-ahead in place
// never faults until it runs off its end: there it faults on a missing page
// and waits for a whole read (a network round trip) before the stream goes
// on. Measured on the bench's sequential restore from a page server, 256 MiB:
// 59 such faults, 1.8 ms each at the median, a quarter of the restore.
//
// So one page part way into each read-ahead is the trigger: its read arrives
// like the others, but its bytes are kept aside and the page is left for the
// thread to fault on. That fault is answered at once from the kept bytes (no
// read), and it extends the read-ahead (Pager.keepStreamAhead) while the
// thread still has the pages after the trigger to work through: the stream
// never drains. A trigger nobody touches within TRIGGER_HOLD_MS is installed
// like any read-ahead page, so a thread that stopped sweeping, or sweeps
// slowly, costs nothing but that wait (the page is in flight meanwhile: a
// fault on it is served from the kept bytes, never read again).
import { PAGE_SIZE } from '../native.js';

/** How long a trigger's bytes are kept for a thread to fault on (ms), counted from when it was set. */
export const TRIGGER_HOLD_MS = 100;
/** Triggers live at once: one a stream, a few streams (ReadAhead tracks 8). */
const MAX_TRIGGERS = 16;

interface Trigger {
  /** The page's bytes once its read arrived (a copy: a read's buffer is pooled or the source's). */
  bytes: Uint8Array | undefined;
  /** Install it as a store's page (see Fetch.forWrite). */
  readonly forWrite: boolean;
  readonly setAt: number;
}

/** The bytes of a trigger a thread faulted on, to install now. */
export interface HeldPage {
  readonly bytes: Uint8Array;
  readonly forWrite: boolean;
}

export class ReadAheadTriggers {
  private readonly triggers = new Map<number, Trigger>();
  private timer: NodeJS.Timeout | undefined;

  /** `expired`: a trigger whose bytes were kept and nobody faulted on within HOLD_MS, to be installed now. */
  constructor(
    private readonly expired: (index: number, page: HeldPage) => void,
    private readonly holdMs = TRIGGER_HOLD_MS,
  ) {}

  get size(): number {
    return this.triggers.size;
  }

  /** `index`, a missing page just queued in a stream's read-ahead, is that read-ahead's trigger. */
  set(index: number, forWrite: boolean): void {
    if (this.triggers.has(index)) return;
    if (this.triggers.size >= MAX_TRIGGERS) {
      const [oldest, trigger] = this.triggers.entries().next().value as [number, Trigger];
      this.triggers.delete(oldest);
      if (trigger.bytes) this.expired(oldest, { bytes: trigger.bytes, forWrite: trigger.forWrite });
    }
    this.triggers.set(index, { bytes: undefined, forWrite, setAt: performance.now() });
    this.timer ??= setTimeout(() => this.expire(), this.holdMs).unref();
  }

  /**
   * A read of pages [first, first + pageCount) arrived in `buffer` (page i at i * PAGE_SIZE): the
   * trigger among them that `holdable` allows (in flight, nobody waiting on
   * it), its bytes now kept, to be left out of the install; or -1.
   */
  holdFrom(first: number, pageCount: number, buffer: Uint8Array, holdable: (index: number) => boolean): number {
    for (const [index, trigger] of this.triggers) {
      if (index < first || index >= first + pageCount || trigger.bytes || !holdable(index)) continue;
      // A copy (Buffer.slice would be a view of a buffer the pool hands to the next read). The buffer may be
      // longer than the read (a pooled window's): page i of the read is at i * PAGE_SIZE.
      const at = (index - first) * PAGE_SIZE;
      trigger.bytes = new Uint8Array(PAGE_SIZE);
      trigger.bytes.set(buffer.subarray(at, at + PAGE_SIZE));
      return index;
    }
    return -1;
  }

  /**
   * A thread faulted on `index`, a page in flight: if it is a trigger it is
   * one no more, and its kept bytes (when its read arrived) are returned to
   * install now; a trigger whose read has not arrived is installed by that read.
   */
  take(index: number): HeldPage | undefined {
    const trigger = this.triggers.get(index);
    if (!trigger) return undefined;
    this.triggers.delete(index);
    return trigger.bytes ? { bytes: trigger.bytes, forWrite: trigger.forWrite } : undefined;
  }

  /** Forget every trigger (the pager stopped): kept bytes are dropped, their pages left in flight. */
  clear(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
    this.triggers.clear();
  }

  private expire(): void {
    this.timer = undefined;
    const now = performance.now();
    let next = Infinity;
    for (const [index, trigger] of this.triggers) {
      const left = trigger.setAt + this.holdMs - now;
      if (left > 0) {
        next = Math.min(next, left);
        continue;
      }
      this.triggers.delete(index);
      if (trigger.bytes) this.expired(index, { bytes: trigger.bytes, forWrite: trigger.forWrite });
    }
    if (next < Infinity) this.timer = setTimeout(() => this.expire(), Math.ceil(next)).unref();
  }
}
