// Putting pages in place, and every way the kernel can refuse. The one owner
// of the resolving ioctls (COPY, ZEROPAGE, CONTINUE, POISON, WAKE) on the
// pager's behalf:
//
//   done / partial   the pages are in; waiters woke (partial: go on from there)
//   EEXIST           the page is already there (a zero page, or a racing fill): wake its waiters
//   EAGAIN           events are pending (mmap_changing): read them, then retry from that page
//   ENOENT           part of the run is not registered (a hole, or a munmap whose UNMAP event
//                    follows): redo page by page so the pages that can be filled still are
//   ESRCH            the address space is gone: thrown, and the pager ends ('exit')
//   anything else    (ENOMEM from a full tmpfs or a memory cgroup, EFAULT, EINVAL): retried a
//                    few times, then the pages are given up — waiters get poison, never a hang
//
// Nothing here leaves a faulting thread asleep: each path ends in a fill, the
// zero page, poison, or a wake that makes the thread retry (and fail as any
// access to memory that is not there does).
import { UserfaultError } from '../errors.js';
import { PAGE_SIZE } from '../native.js';
import { AddressSpaceGoneError, RangeNotRegisteredError } from '../uffd/errors.js';
import type { ResolveResult, Userfaultfd } from '../uffd/userfaultfd.js';
import type { AddressMap } from './address-map.js';
import type { Fetch } from './fetch-scheduler.js';
import type { PagerMetrics } from './metrics.js';
import type { PageBitmap } from './page-bitmap.js';
import type { SharedPageCache } from './page-cache.js';
import { PageState, type PageStateTable } from './page-state.js';
import type { FaultWaiters } from './waiters.js';

/** Delays between rounds of retrying copies the kernel refused (ms), growing while refusals continue. */
const RETRY_DELAYS_MS = [0, 1, 2, 5, 10, 20, 50];
/** Times a copy refused with an unexpected errno (ENOMEM, say) is retried before its pages are given up. */
const INSTALL_RETRIES = 3;

/** The kernel refused to install pages (UFFDIO_COPY or ZEROPAGE failed with an errno retrying did not cure). */
export class PageInstallError extends UserfaultError {
  override readonly code = 'EINSTALL';
  constructor(readonly address: number, readonly lengthBytes: number, cause: Error) {
    super(`installing ${lengthBytes} bytes at 0x${address.toString(16)} failed: ${cause.message}; waiting threads get SIGBUS`, { cause });
  }
}

/** How a page got its contents (for the pager's 'installed' event and metrics). */
export type InstallHow = 'copy' | 'zero' | 'push';

export interface InstallerContext {
  uffd: Userfaultfd;
  states: PageStateTable;
  map: AddressMap;
  waiters: FaultWaiters;
  metrics: PagerMetrics;
  /**
   * Zero-copy restore: pages go into this shared page cache (once, for every
   * restore of the image) and are mapped with UFFDIO_CONTINUE instead of
   * copied. A fetch without a buffer is all in the cache already.
   */
  pageCache?: SharedPageCache;
  /** Pages were prefetched (read-ahead or replay) rather than demanded: for the prefetch metrics. */
  prefetched: PageBitmap;
  isRunning(): boolean;
  /** Read and apply the uffd's pending messages (before retrying copies the kernel refused with EAGAIN). */
  drainEvents(): void;
  report(error: Error): void;
  installed(firstIndex: number, pageCount: number, how: InstallHow): void;
  /** Pages that could not be supplied were poisoned (their waiters get SIGBUS/EFAULT). */
  poisoned(firstIndex: number, pageCount: number, error: Error): void;
}

export class PageInstaller {
  /** Copies to redo after the kernel refused them (EAGAIN, or a retried errno). */
  private readonly retryQueue: Fetch[] = [];
  private retryTimer: NodeJS.Timeout | undefined;
  private retryRound = 0;

  constructor(private readonly ctx: InstallerContext) {}

  /**
   * Copy a completed read into place, page runs at a time, skipping pages
   * whose state moved on, and `heldIndex` (a read-ahead trigger the pager
   * keeps for a thread to fault on; it stays in flight). Returns true when
   * the fetch is done with its buffer.
   */
  install(fetch: Fetch, how: InstallHow = 'copy', heldIndex = -1): boolean {
    const { states, map } = this.ctx;
    const firstIndex = fetch.sourceOffset / PAGE_SIZE;
    let i = fetch.resumeAtPage ?? 0;
    while (i < fetch.pageCount) {
      if (states.get(firstIndex + i) !== PageState.IN_FLIGHT || firstIndex + i === heldIndex) {
        i++;
        continue;
      }
      const sourceOffset = (firstIndex + i) * PAGE_SIZE;
      const address = map.addressOf(sourceOffset);
      if (address === undefined) {
        // Unmapped since the read started (the UNMAP event already marked it, or will).
        states.set(firstIndex + i, PageState.UNMAPPED);
        i++;
        continue;
      }
      const contiguous = map.contiguousPagesFrom(sourceOffset, fetch.pageCount - i);
      let runPages = 1;
      while (runPages < contiguous && states.get(firstIndex + i + runPages) === PageState.IN_FLIGHT && firstIndex + i + runPages !== heldIndex) runPages++;
      const retryFrom = this.copyRun(fetch, i, runPages, address, how);
      if (retryFrom !== undefined) {
        this.queueRetry({ ...fetch, resumeAtPage: retryFrom });
        return false;
      }
      i += runPages;
    }
    return true;
  }

  /** COPY pages [first, first+count) of the fetch to `address`; returns the page to retry from, if the kernel asked for a retry. */
  private copyRun(fetch: Fetch, first: number, count: number, address: number, how: InstallHow): number | undefined {
    const { uffd, metrics, pageCache } = this.ctx;
    const firstIndex = fetch.sourceOffset / PAGE_SIZE;
    let donePages = 0;
    while (donePages < count) {
      let result: ResolveResult;
      try {
        metrics.copyIoctls++;
        if (pageCache) {
          // Only pages whose filled bit is set are mapped: the bit goes on after their bytes are in.
          const index = firstIndex + first + donePages;
          if (fetch.buffer) metrics.cacheFills += pageCache.fill(index, count - donePages, fetch.buffer, (first + donePages) * PAGE_SIZE);
          else if (!pageCache.allFilled(index, count - donePages)) throw new UserfaultError(`pages ${index}.. are not in the page cache and no read brought them`);
          if (!fetch.forWrite) result = uffd.continue(address + donePages * PAGE_SIZE, (count - donePages) * PAGE_SIZE);
          else result = uffd.copy(address + donePages * PAGE_SIZE, fetch.buffer!, { srcOffset: (first + donePages) * PAGE_SIZE, length: (count - donePages) * PAGE_SIZE });
        } else {
          result = uffd.copy(address + donePages * PAGE_SIZE, fetch.buffer!, {
            srcOffset: (first + donePages) * PAGE_SIZE,
            length: (count - donePages) * PAGE_SIZE,
          });
        }
      } catch (error) {
        if (error instanceof AddressSpaceGoneError) throw error;
        if (error instanceof RangeNotRegisteredError) {
          if (count - donePages > 1) {
            // The kernel refuses a whole COPY when any part of it is not
            // registered (a hole in the client's registration, or a munmap
            // racing us). Go page by page so the pages that can be filled,
            // the faulting one first, still are.
            for (let k = donePages; k < count; k++) {
              const retryFrom = this.copyRun(fetch, first + k, 1, address + k * PAGE_SIZE, how);
              if (retryFrom !== undefined) return retryFrom;
            }
            return undefined;
          }
          // This page is not registered (any more): a hole in the registration,
          // or a munmap whose UNMAP event follows. A thread that faulted on it
          // is woken to retry; nobody can be served there.
          const index = firstIndex + first + donePages;
          this.ctx.states.set(index, PageState.MISSING);
          this.wakeWaiters(index, address + donePages * PAGE_SIZE);
          this.ctx.report(error);
          return undefined;
        }
        // Any other refusal: retry a few times (ENOMEM can pass), then give the pages up.
        if (fetch.installAttempts < INSTALL_RETRIES) {
          metrics.copyRetries++;
          fetch.installAttempts++;
          return first + donePages;
        }
        const failure = new PageInstallError(address + donePages * PAGE_SIZE, (count - donePages) * PAGE_SIZE, error as Error);
        this.ctx.report(failure);
        this.giveUp(firstIndex + first + donePages, count - donePages, failure, { poisonAll: false });
        return undefined;
      }
      switch (result.status) {
        case 'done':
        case 'partial': {
          const pages = result.bytes / PAGE_SIZE;
          const mapped = this.ctx.pageCache !== undefined && !fetch.forWrite;
          for (let k = 0; k < pages; k++) this.filled(firstIndex + first + donePages + k, mapped);
          this.ctx.installed(firstIndex + first + donePages, pages, how);
          donePages += pages;
          break;
        }
        case 'exists':
          // The first page is already there (an earlier zero page, or a fill
          // that raced us); its waiters still need waking.
          uffd.wake(address + donePages * PAGE_SIZE, PAGE_SIZE);
          metrics.wakes++;
          this.ctx.states.set(firstIndex + first + donePages, PageState.PRESENT);
          this.settled(firstIndex + first + donePages);
          donePages++;
          break;
        case 'retry':
          metrics.copyRetries++;
          return first + donePages;
      }
    }
    return undefined;
  }

  /** Page `index` is in: copied, or mapped from the page cache (CONTINUE). */
  private filled(index: number, mapped: boolean): void {
    const { states, metrics, waiters, prefetched } = this.ctx;
    states.set(index, PageState.PRESENT);
    if (mapped) metrics.pagesMapped++;
    else {
      metrics.pagesCopied++;
      metrics.bytesCopied += PAGE_SIZE;
    }
    if (!waiters.has(index) && prefetched.get(index)) metrics.prefetchedPages++;
    this.settled(index);
  }

  /** A page's waiters are resolved: record the latency, forget it was prefetched. */
  settled(index: number): void {
    const micros = this.ctx.waiters.settle(index);
    if (micros !== undefined) this.ctx.metrics.recordLatencyMicros(micros);
    this.ctx.prefetched.clear(index);
  }

  /** The zero page for a page that reads zero (known-zero in the source, or discarded). */
  zeroFill(index: number): void {
    const address = this.ctx.map.addressOf(index * PAGE_SIZE);
    if (address === undefined) return;
    const result = this.answer(address, () => this.ctx.uffd.zeropage(address, PAGE_SIZE));
    if (result === 'retry') {
      // Events are pending; the page stays as it is and the next drain decides again.
      this.scheduleRetryDrain();
      return;
    }
    if (result === 'done') {
      this.ctx.metrics.zeroPages++;
      this.ctx.installed(index, 1, 'zero');
    }
    const state = this.ctx.states.get(index);
    if (state !== PageState.UNMAPPED && state !== PageState.POISONED) this.ctx.states.set(index, PageState.PRESENT);
    this.settled(index);
  }

  /**
   * A fault on a page the pager believes present: the message was read after
   * the fill woke the thread, or the page was dropped behind the pager's back
   * (MADV_FREE reclaim sends no event). ZEROPAGE tells them apart without ever
   * resurrecting source data: EEXIST means present, so it only wakes.
   */
  answerPresent(index: number, address: number): void {
    const result = this.answer(address, () => this.ctx.uffd.zeropage(address, PAGE_SIZE));
    if (result === 'done') this.ctx.metrics.zeroPages++;
    if (result === 'retry') this.scheduleRetryDrain();
    this.settled(index);
  }

  /**
   * A fault at an address no region shows now: the zero page (or poison, if
   * asked). When the kernel refuses because the address is not registered any
   * more (the munmap or mremap that explains it was read in this batch or an
   * earlier one), the thread is woken to retry, and fails as any access to
   * unmapped memory does; it must never be left asleep.
   */
  answerOutside(address: number, poison: boolean): void {
    this.answer(address, () => (poison ? this.ctx.uffd.poison(address, PAGE_SIZE) : this.ctx.uffd.zeropage(address, PAGE_SIZE)));
  }

  /** MINOR mode: the page cache already holds the page; map it (and settle the image page's waiters, when it has an index). */
  answerMinor(address: number, index?: number): void {
    this.answer(address, () => this.ctx.uffd.continue(address, PAGE_SIZE));
    if (index !== undefined) this.settled(index);
  }

  /**
   * Give up on pages in flight or missing that cannot be filled. With
   * poisonAll (the source failed for good: no read will ever give the bytes)
   * every such page is poisoned now; otherwise only pages a thread waits on
   * are, and the others go back to missing, to be tried again if touched.
   * Poison means SIGBUS, EFAULT inside a syscall: never a hang, never made-up data.
   */
  giveUp(firstIndex: number, pageCount: number, error: Error, options: { poisonAll: boolean }): void {
    const { states, map, waiters, prefetched } = this.ctx;
    let runStart = -1;
    let runLength = 0;
    const flushPoisoned = (): void => {
      if (runLength > 0) this.ctx.poisoned(runStart, runLength, error);
      runLength = 0;
    };
    for (let index = firstIndex; index < firstIndex + pageCount && index < states.pageCount; index++) {
      const state = states.get(index);
      if (state !== PageState.IN_FLIGHT && state !== PageState.MISSING) continue;
      const address = map.addressOf(index * PAGE_SIZE);
      if (address === undefined || (!options.poisonAll && !waiters.has(index))) {
        if (state === PageState.IN_FLIGHT) states.set(index, PageState.MISSING);
        prefetched.clear(index);
        continue;
      }
      // UFFDIO_POISON works whether or not the feature was negotiated (an
      // adopted uffd's features are unknown). A kernel without it (before 6.6)
      // throws: the waiter is then woken to retry rather than left asleep.
      let result: ResolveResult;
      try {
        result = this.ctx.uffd.poison(address, PAGE_SIZE);
      } catch (poisonError) {
        if (poisonError instanceof AddressSpaceGoneError) throw poisonError;
        if (state === PageState.IN_FLIGHT) states.set(index, PageState.MISSING);
        this.wakeWaiters(index, address);
        this.ctx.report(poisonError as Error);
        continue;
      }
      if (result.status === 'retry') {
        // Events pending: leave it missing; a waiter faults again after the drain.
        if (state === PageState.IN_FLIGHT) states.set(index, PageState.MISSING);
        this.wakeWaiters(index, address);
        continue;
      }
      if (result.status === 'exists') {
        this.ctx.uffd.wake(address, PAGE_SIZE);
        states.set(index, PageState.PRESENT);
        this.settled(index);
        continue;
      }
      states.set(index, PageState.POISONED);
      this.ctx.metrics.pagesPoisoned++;
      this.settled(index);
      if (runLength > 0 && index === runStart + runLength) runLength++;
      else {
        flushPoisoned();
        runStart = index;
        runLength = 1;
      }
    }
    flushPoisoned();
  }

  /** UFFDIO_WAKE over a range, for waiters that no fill will reach. */
  wakeRange(address: number, lengthBytes: number): void {
    try {
      this.ctx.uffd.wake(address, lengthBytes);
    } catch (error) {
      if (error instanceof AddressSpaceGoneError) throw error;
      this.ctx.report(error as Error);
    }
  }

  private wakeWaiters(index: number, address: number): void {
    if (!this.ctx.waiters.has(index)) return;
    this.ctx.waiters.drop(index);
    this.wakeRange(address, PAGE_SIZE);
  }

  /**
   * Answer one faulting page with `resolve` (ZEROPAGE, CONTINUE, POISON). A
   * refusal must not leave the thread asleep: ENOENT (not registered any more)
   * wakes it to retry; anything else (ENOMEM from a full tmpfs) is reported and
   * the page poisoned, as the kernel's own fault path gives SIGBUS when it
   * cannot allocate. 'woken': the page was there already (EEXIST), its
   * waiters were woken. 'failed': the page got poison or a wake, not contents.
   */
  private answer(address: number, resolve: () => ResolveResult): 'done' | 'woken' | 'retry' | 'failed' {
    try {
      return this.settle(address, resolve());
    } catch (error) {
      if (error instanceof AddressSpaceGoneError) throw error;
      if (error instanceof RangeNotRegisteredError) {
        this.wakeRange(address, PAGE_SIZE);
        return 'failed';
      }
      this.ctx.report(new PageInstallError(address, PAGE_SIZE, error as Error));
      try {
        this.settle(address, this.ctx.uffd.poison(address, PAGE_SIZE));
      } catch (poisonError) {
        if (poisonError instanceof AddressSpaceGoneError) throw poisonError;
        this.wakeRange(address, PAGE_SIZE);
      }
      return 'failed';
    }
  }

  /** A single-page resolution: EEXIST wakes (the page is there), EAGAIN says retry. */
  private settle(address: number, result: ResolveResult): 'done' | 'woken' | 'retry' {
    if (result.status === 'exists') {
      this.ctx.uffd.wake(address, PAGE_SIZE);
      this.ctx.metrics.wakes++;
      return 'woken';
    }
    return result.status === 'retry' ? 'retry' : 'done';
  }

  // ---- retries: copies refused while events are pending ----------------------

  private queueRetry(fetch: Fetch): void {
    this.retryQueue.push(fetch);
    this.scheduleRetryDrain();
  }

  get retriesPending(): boolean {
    return this.retryQueue.length > 0;
  }

  /**
   * The kernel refuses copies while an mmap change is being reported
   * (mmap_changing). The events that explain it are read first; the copies are
   * retried after them, and on a short timer in case the change completes
   * after its event was already read.
   */
  scheduleRetryDrain(): void {
    if (this.retryTimer) return;
    const delay = RETRY_DELAYS_MS[Math.min(this.retryRound, RETRY_DELAYS_MS.length - 1)]!;
    this.retryRound++;
    this.retryTimer = setTimeout(() => {
      this.retryTimer = undefined;
      if (!this.ctx.isRunning()) return;
      this.ctx.drainEvents();
      this.flushRetries();
    }, delay);
  }

  /** Redo refused copies, and re-answer waiters whose zero-page answer was refused. */
  flushRetries(): void {
    if (!this.ctx.isRunning()) return;
    const pending = this.retryQueue.splice(0);
    for (const fetch of pending) this.install(fetch);
    if (this.retryQueue.length === 0) this.retryRound = 0;
    const { waiters, states, map } = this.ctx;
    for (const index of waiters.pages()) {
      const state = states.get(index);
      if (state === PageState.DISCARDED) this.zeroFill(index);
      else if (state === PageState.PRESENT) {
        const address = map.addressOf(index * PAGE_SIZE);
        if (address !== undefined) this.answerPresent(index, address);
      }
    }
  }

  /** Forget pending retries (the pager stopped). */
  stop(): void {
    clearTimeout(this.retryTimer);
    this.retryTimer = undefined;
    this.retryQueue.length = 0;
  }
}
