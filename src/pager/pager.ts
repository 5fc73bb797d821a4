// The pager: serves a uffd's faults from a page source, many fetches in flight.
//
// It runs in the event loop of the thread that starts it and never blocks it:
// uffd readability arrives through a libuv poll handle, source reads are
// promises, and each resolution is one non-blocking ioctl. The rule this
// implies: the pager must never run on a thread that touches the memory it
// serves (that thread sleeps in the kernel until the pager answers).
import { EventEmitter } from 'node:events';
import { PAGE_SIZE } from '../native.js';
import type { PageSource } from '../sources/page-source.js';
import { SourceReadError } from '../sources/page-source.js';
import { AddressSpaceGoneError, RangeNotRegisteredError, UserfaultError } from '../uffd/errors.js';
import type { FeatureName } from '../uffd/constants.js';
import type { PagefaultEvent, UffdEvent } from '../uffd/messages.js';
import { Userfaultfd, type ResolveResult } from '../uffd/userfaultfd.js';
import { AddressMap, RegionLayoutError, type PagerRegion } from './address-map.js';
import { PagerMetrics, type PagerMetricsSnapshot } from './metrics.js';
import { PageState, PageStateTable } from './page-state.js';
import { ReadAhead, type PrefetchOptions } from './readahead.js';

export type { PagerRegion } from './address-map.js';

export interface PagerOptions {
  uffd: Userfaultfd;
  source: PageSource;
  /** The registered ranges and the image offsets they show. */
  regions: readonly PagerRegion[];
  /** Register the regions with the uffd in MISSING mode first (default false: the caller did). */
  register?: boolean;
  /** Read-ahead around faults; false for exactly one page per fault. */
  prefetch?: PrefetchOptions | false;
  /** Source reads in flight at once (default 64). */
  maxInFlight?: number;
  /** Record the order in which pages were first demanded (see workingSet()). */
  recordWorkingSet?: boolean;
  /** What a fault outside every region gets: the zero page (default), or poison (SIGBUS). */
  unknownFault?: 'zero' | 'poison';
  /** Serve the child's uffd after a FORK event (default true). */
  followForks?: boolean;
  /** Page states to start from (a forked child's copy). */
  initialStates?: PageStateTable;
  /** Times a failed source read is retried before the page is poisoned. */
  sourceRetries?: number;
  /**
   * After serving, keep reading the uffd for this long (µs) when no read is
   * in flight, before going back to sleep in the event loop. A fault that
   * arrives meanwhile skips the ~20 µs cross-CPU wake-up, at the cost of CPU.
   */
  spinMicros?: number;
}

/** One source read: `pageCount` pages of the image from `sourceOffset`. */
interface Fetch {
  sourceOffset: number;
  pageCount: number;
  /** Started by a fault (true) or by read-ahead/replay in the background (false). */
  demand: boolean;
  attempts: number;
  buffer?: Uint8Array;
  /** Where to resume installing after the kernel said EAGAIN (or refused a copy that is retried). */
  resumeAtPage?: number;
  /** Copies of this fetch the kernel refused with an unexpected errno, retried so far. */
  installAttempts?: number;
}

export type PagerStatus = 'idle' | 'running' | 'stopped' | 'exited';

export interface PagerEvents {
  /** The served address space is gone (the process exited): nothing more to serve. */
  exit: [];
  /** A FORK event: a child pager now serves the child's copy. */
  fork: [child: Pager];
  /** Something went wrong that did not stop the pager (a source failure, an unexpected errno). */
  error: [error: Error];
}

const RETRY_DELAYS_MS = [0, 1, 2, 5, 10, 20, 50];
/** Times a copy refused with an unexpected errno (ENOMEM, say) is retried before its pages are given up. */
const INSTALL_RETRIES = 3;

/** The kernel refused to install pages (UFFDIO_COPY failed with an errno that retrying did not cure). */
export class PageInstallError extends UserfaultError {
  override readonly code = 'EINSTALL';
  constructor(readonly address: number, readonly lengthBytes: number, cause: Error) {
    super(`installing ${lengthBytes} bytes at 0x${address.toString(16)} failed: ${cause.message}; waiting threads get SIGBUS`, { cause });
  }
}

export class Pager extends EventEmitter<PagerEvents> {
  readonly uffd: Userfaultfd;
  readonly source: PageSource;
  readonly metrics = new PagerMetrics();
  readonly states: PageStateTable;
  private readonly map: AddressMap;
  private readonly readAhead: ReadAhead;
  private readonly maxInFlight: number;
  private readonly maxRunPages: number;
  private readonly options: PagerOptions;
  private readonly demandQueue: Fetch[] = [];
  private readonly backgroundQueue: Fetch[] = [];
  /** Copies the kernel refused with EAGAIN, to redo once events are read. */
  private readonly retryQueue: Fetch[] = [];
  private retryTimer: NodeJS.Timeout | undefined;
  private retryRound = 0;
  private inFlight = 0;
  private backgroundInFlight = 0;
  private readonly inFlightSettled = new Set<Promise<void>>();
  /** When the first fault for a page was read (for latency), by page index. */
  private readonly waitingSince = new Map<number, number>();
  /** Pages put in flight by read-ahead or replay rather than a fault. */
  private readonly prefetchedInFlight = new Set<number>();
  private readonly workingSetOrder: number[] = [];
  private readonly demanded: Uint8Array | undefined;
  private readonly bufferPool: Uint8Array[] = [];
  private readonly children: Pager[] = [];
  private statusValue: PagerStatus = 'idle';

  constructor(options: PagerOptions) {
    super();
    this.options = options;
    this.uffd = options.uffd;
    this.source = options.source;
    this.map = new AddressMap(options.regions);
    for (const region of this.map.regions) {
      if (region.sourceOffset + region.lengthBytes > this.source.sizeBytes) {
        throw new RegionLayoutError(`a region shows image bytes past the end of ${this.source.description} (${this.source.sizeBytes} bytes)`, [region]);
      }
    }
    const pageCount = Math.ceil(this.source.sizeBytes / PAGE_SIZE);
    this.states = options.initialStates ?? new PageStateTable(pageCount);
    this.readAhead = new ReadAhead(options.prefetch ?? {});
    this.maxRunPages = this.readAhead.maxPages;
    this.maxInFlight = options.maxInFlight ?? 64;
    if (options.recordWorkingSet) this.demanded = new Uint8Array(pageCount);
  }

  get status(): PagerStatus {
    return this.statusValue;
  }

  get regions(): readonly PagerRegion[] {
    return this.map.regions;
  }

  /** Start serving from this thread's event loop. The watch keeps the loop alive while running. */
  start(): this {
    if (this.statusValue !== 'idle') throw new UserfaultError(`pager cannot start: it is ${this.statusValue}`);
    if (this.options.register) {
      for (const region of this.map.regions) this.uffd.register(region.address, region.lengthBytes, ['MISSING']);
    }
    this.statusValue = 'running';
    this.uffd.watch(() => this.serve(), { ref: true, onError: (error) => this.fail(error) });
    // Faults may already be queued (the fd was handed over with waiters).
    this.serve();
    return this;
  }

  /** Stop serving; reads in flight finish but are not installed. The uffd stays open (the caller owns it). */
  async stop(): Promise<void> {
    if (this.statusValue === 'running') this.statusValue = 'stopped';
    this.uffd.unwatch();
    clearTimeout(this.retryTimer);
    await Promise.allSettled([...this.inFlightSettled]);
    // The children's uffds came from FORK events: this pager opened them, so it closes them.
    const children = this.children.splice(0);
    await Promise.all(children.map((child) => child.stop().then(() => child.uffd.close())));
  }

  /** Metrics of this pager (children report their own). */
  snapshotMetrics(): PagerMetricsSnapshot {
    return this.metrics.snapshot();
  }

  /** Pages first demanded by faults, in order, as image page indices (needs recordWorkingSet). */
  workingSet(): Uint32Array {
    return Uint32Array.from(this.workingSetOrder);
  }

  /**
   * Fetch these image pages in the background, in order, while demand faults
   * keep priority (working-set replay). Consecutive indices become one run.
   */
  prefetchPages(pageIndices: Iterable<number>): void {
    let runStart = -1;
    let runLength = 0;
    const flush = (): void => {
      if (runLength > 0) {
        this.backgroundQueue.push({ sourceOffset: runStart * PAGE_SIZE, pageCount: runLength, demand: false, attempts: 0 });
      }
      runLength = 0;
    };
    for (const index of pageIndices) {
      if (runLength > 0 && index === runStart + runLength && runLength < this.maxRunPages) {
        runLength++;
      } else {
        flush();
        runStart = index;
        runLength = 1;
      }
    }
    flush();
    this.pump();
  }

  /** Fill every page still missing, in the background (eager completion of a lazy restore). */
  prefetchAll(): void {
    const indices: number[] = [];
    for (const region of this.map.regions) {
      const first = region.sourceOffset / PAGE_SIZE;
      for (let i = 0; i < region.lengthBytes / PAGE_SIZE; i++) {
        if (this.states.get(first + i) === PageState.MISSING) indices.push(first + i);
      }
    }
    this.prefetchPages(indices);
  }

  /** How many pages are in each state. */
  pageCounts(): Record<'missing' | 'inFlight' | 'present' | 'discarded' | 'unmapped', number> {
    return {
      missing: this.states.count(PageState.MISSING),
      inFlight: this.states.count(PageState.IN_FLIGHT),
      present: this.states.count(PageState.PRESENT),
      discarded: this.states.count(PageState.DISCARDED),
      unmapped: this.states.count(PageState.UNMAPPED),
    };
  }

  // ---- reading the uffd ----------------------------------------------------

  /**
   * Read every pending message, apply the non-cooperative events first, then
   * serve the faults. A fault can be read before a REMOVE that logically
   * precedes it, so deciding what to serve waits until all events are in.
   */
  private serve(): void {
    if (this.statusValue !== 'running') return;
    this.serveBatch();
    const spinMs = (this.options.spinMicros ?? 0) / 1000;
    if (spinMs <= 0) return;
    // Spin only while nothing is in flight: a spinning thread cannot run the
    // promise callbacks that complete asynchronous reads.
    let deadline = performance.now() + spinMs;
    while (this.statusValue === 'running' && this.inFlight === 0 && performance.now() < deadline) {
      if (this.serveBatch() > 0) deadline = performance.now() + spinMs;
    }
  }

  /** Read and serve what is pending now; returns how many messages there were. */
  private serveBatch(): number {
    let messages: UffdEvent[];
    try {
      messages = this.uffd.readEvents();
    } catch (error) {
      this.fail(error as Error);
      return 0;
    }
    if (messages.length === 0 && this.retryQueue.length === 0) return 0;
    const faults: PagefaultEvent[] = [];
    for (const message of messages) {
      if (message.type === 'pagefault') faults.push(message);
      else this.guarded(() => this.applyEvent(message));
    }
    if (this.retryQueue.length > 0) this.guarded(() => this.flushRetries());
    const now = performance.now();
    for (const fault of faults) this.guarded(() => this.handleFault(fault, now));
    this.pump();
    return messages.length;
  }

  /**
   * Run one step of serving; an ioctl failure (ESRCH once the process is gone,
   * say) ends up in fail(), never thrown into the event loop.
   */
  private guarded(step: () => void): void {
    if (this.statusValue !== 'running') return;
    try {
      step();
    } catch (error) {
      this.fail(error as Error);
    }
  }

  private applyEvent(event: Exclude<UffdEvent, PagefaultEvent>): void {
    switch (event.type) {
      case 'remove':
        this.metrics.events.remove++;
        this.discard(event.start, event.end);
        return;
      case 'unmap':
        this.metrics.events.unmap++;
        for (const piece of this.map.remove(event.start, event.end)) {
          this.forPages(piece.sourceOffset, piece.lengthBytes, (index) => {
            this.states.set(index, PageState.UNMAPPED);
            this.waitingSince.delete(index);
          });
          // A thread that faulted here before the munmap sleeps in
          // handle_userfault; nothing the kernel does on munmap wakes it. Woken,
          // it retries, finds no VMA, and fails as any access to unmapped
          // memory does (SIGSEGV, or EFAULT inside a syscall).
          this.wakeRange(piece.address, piece.lengthBytes);
        }
        return;
      case 'remap':
        this.metrics.events.remap++;
        this.map.move(event.from, event.to, event.length);
        // Fills in flight land at the new address (install looks it up then)
        // and wake waiters there; a thread that faulted at the old address
        // before the move is woken here to retry, where nothing is mapped now.
        this.wakeRange(event.from, event.length);
        return;
      case 'fork':
        this.metrics.events.fork++;
        this.adoptFork(event.uffd);
        return;
      case 'unknown':
        this.metrics.events.unknown++;
        this.report(new UserfaultError(`unknown userfaultfd event 0x${event.event.toString(16)}; ignored`));
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
  private discard(start: number, end: number): void {
    for (const piece of this.map.sourceRangesIn(start, end)) {
      this.forPages(piece.sourceOffset, piece.lengthBytes, (index) => {
        const state = this.states.get(index);
        if (state === PageState.UNMAPPED) return;
        this.states.set(index, PageState.DISCARDED);
        if (state === PageState.IN_FLIGHT && this.waitingSince.has(index)) this.resolveWithZero(index);
      });
    }
  }

  private adoptFork(childFd: number): void {
    const child = new Pager({
      ...this.options,
      uffd: Userfaultfd.adopt(childFd, [...this.uffd.features] as FeatureName[]),
      regions: this.map.regions,
      register: false,
      initialStates: this.states.forkedCopy(),
    });
    child.on('error', (error) => this.report(error));
    if (this.options.followForks ?? true) {
      this.children.push(child);
      child.start();
      child.once('exit', () => {
        const at = this.children.indexOf(child);
        if (at >= 0) this.children.splice(at, 1);
        child.uffd.close();
      });
    }
    this.emit('fork', child);
  }

  // ---- faults ------------------------------------------------------------

  private handleFault(fault: PagefaultEvent, now: number): void {
    this.metrics.faults++;
    const pageAddress = fault.address - (fault.address % PAGE_SIZE);
    if (fault.writeProtect) {
      // This pager does not write-protect; a WP fault here means someone else
      // did, and the writer must not hang: lift the protection for this page.
      this.uffd.writeProtect(pageAddress, PAGE_SIZE, { protect: false });
      return;
    }
    const sourceOffset = this.map.sourceOffsetOf(pageAddress);
    if (sourceOffset === undefined) {
      this.metrics.unknownFaults++;
      this.resolveOutside(pageAddress);
      return;
    }
    const index = sourceOffset / PAGE_SIZE;
    if (fault.minor) {
      // MINOR mode: the page cache already holds the page; map it.
      this.answer(pageAddress, () => this.uffd.continue(pageAddress, PAGE_SIZE));
      return;
    }
    if (this.demanded && !this.demanded[index]) {
      this.demanded[index] = 1;
      this.workingSetOrder.push(index);
    }
    if (!this.waitingSince.has(index)) this.waitingSince.set(index, now);
    switch (this.states.get(index)) {
      case PageState.MISSING:
        this.startDemandFetch(index);
        return;
      case PageState.IN_FLIGHT:
        this.metrics.coalescedFaults++;
        if (this.prefetchedInFlight.has(index)) this.metrics.prefetchHits++;
        this.promoteBackgroundFetch(index);
        return;
      case PageState.DISCARDED:
        this.resolveWithZero(index);
        return;
      case PageState.PRESENT:
        // A message read after its page was filled (the copy woke the thread
        // before we read the message), or the page was dropped behind our back
        // (MADV_FREE reclaim sends no event). ZEROPAGE tells them apart without
        // ever resurrecting source data: EEXIST means present, so just wake.
        this.resolvePresent(index, pageAddress);
        return;
      case PageState.UNMAPPED:
        this.metrics.unknownFaults++;
        this.waitingSince.delete(index);
        this.resolveOutside(pageAddress);
        return;
    }
  }

  /**
   * A fault at an address no region shows now: the zero page (or poison, if
   * asked). When the kernel refuses because the address is not registered any
   * more (the munmap or mremap that explains it was read in this batch or an
   * earlier one), the thread is woken to retry, and fails as any access to
   * unmapped memory does; it must never be left asleep.
   */
  private resolveOutside(pageAddress: number): void {
    try {
      this.settle(pageAddress, this.options.unknownFault === 'poison' ? this.uffd.poison(pageAddress, PAGE_SIZE) : this.uffd.zeropage(pageAddress, PAGE_SIZE));
    } catch (error) {
      if (error instanceof AddressSpaceGoneError) throw error;
      this.wakeRange(pageAddress, PAGE_SIZE);
      if (!(error instanceof RangeNotRegisteredError)) this.report(error as Error);
    }
  }

  /** UFFDIO_WAKE over a range, for waiters that no fill will reach; a range gone with its process is nothing to wake. */
  private wakeRange(address: number, lengthBytes: number): void {
    try {
      this.uffd.wake(address, lengthBytes);
    } catch (error) {
      if (error instanceof AddressSpaceGoneError) throw error;
      this.report(error as Error);
    }
  }

  private startDemandFetch(index: number): void {
    if (this.source.isZero?.(index * PAGE_SIZE, PAGE_SIZE)) {
      this.resolveWithZero(index);
      return;
    }
    const window = this.readAhead.windowFor(index);
    const sourceOffset = index * PAGE_SIZE;
    const limit = Math.min(window, this.map.contiguousPagesFrom(sourceOffset, window));
    let pageCount = 1;
    while (pageCount < limit && this.states.get(index + pageCount) === PageState.MISSING && !this.source.isZero?.((index + pageCount) * PAGE_SIZE, PAGE_SIZE)) {
      pageCount++;
    }
    for (let i = 0; i < pageCount; i++) {
      this.states.set(index + i, PageState.IN_FLIGHT);
      if (i > 0) this.prefetchedInFlight.add(index + i);
    }
    this.demandQueue.push({ sourceOffset, pageCount, demand: true, attempts: 0 });
  }

  /** A fault on a page queued for background replay: move its fetch to the front. */
  private promoteBackgroundFetch(index: number): void {
    const at = this.backgroundQueue.findIndex((f) => index * PAGE_SIZE >= f.sourceOffset && index * PAGE_SIZE < f.sourceOffset + f.pageCount * PAGE_SIZE);
    if (at >= 0) {
      const [fetch] = this.backgroundQueue.splice(at, 1);
      fetch!.demand = true;
      this.demandQueue.push(fetch!);
    }
  }

  private resolveWithZero(index: number): void {
    const address = this.map.addressOf(index * PAGE_SIZE);
    if (address === undefined) return;
    const result = this.answer(address, () => this.uffd.zeropage(address, PAGE_SIZE));
    if (result === 'retry') {
      // Events are pending; the page stays as it is and the next fault or drain decides again.
      this.scheduleRetryDrain();
      return;
    }
    if (result === 'done') this.metrics.zeroPages++;
    if (this.states.get(index) !== PageState.UNMAPPED) this.states.set(index, PageState.PRESENT);
    this.resolved(index);
  }

  private resolvePresent(index: number, address: number): void {
    const result = this.answer(address, () => this.uffd.zeropage(address, PAGE_SIZE));
    if (result === 'done') this.metrics.zeroPages++;
    if (result === 'retry') this.scheduleRetryDrain();
    this.resolved(index);
  }

  /**
   * Answer one faulting page with `resolve` (ZEROPAGE, CONTINUE). A refusal
   * must not leave the thread asleep: ENOENT (not registered any more) wakes it
   * to retry; anything else (ENOMEM from a full tmpfs) is reported and the page
   * poisoned, as the kernel's own fault path gives SIGBUS when it cannot
   * allocate. 'failed' means the page got poison or a wake, not its contents.
   */
  private answer(address: number, resolve: () => ResolveResult): 'done' | 'retry' | 'failed' {
    try {
      return this.settle(address, resolve());
    } catch (error) {
      if (error instanceof AddressSpaceGoneError) throw error;
      if (error instanceof RangeNotRegisteredError) {
        this.wakeRange(address, PAGE_SIZE);
        return 'failed';
      }
      this.report(new PageInstallError(address, PAGE_SIZE, error as Error));
      try {
        this.settle(address, this.uffd.poison(address, PAGE_SIZE));
      } catch (poisonError) {
        if (poisonError instanceof AddressSpaceGoneError) throw poisonError;
        this.wakeRange(address, PAGE_SIZE);
      }
      return 'failed';
    }
  }

  /** Interpret a single-page resolution: wake on EEXIST, report retry, surface errors. */
  private settle(address: number, result: ResolveResult): 'done' | 'retry' {
    if (result.status === 'exists') {
      this.uffd.wake(address, PAGE_SIZE);
      return 'done';
    }
    if (result.status === 'retry') return 'retry';
    return 'done';
  }

  private resolved(index: number): void {
    const since = this.waitingSince.get(index);
    if (since !== undefined) {
      this.metrics.recordLatencyMicros((performance.now() - since) * 1000);
      this.waitingSince.delete(index);
    }
    this.prefetchedInFlight.delete(index);
  }

  // ---- fetching ------------------------------------------------------------

  /**
   * Start reads up to the in-flight limit. Background reads (read-ahead
   * streams, replay) take at most half the slots, so a demand fault never
   * queues behind a long replay.
   */
  private pump(): void {
    while (this.inFlight < this.maxInFlight && this.statusValue === 'running') {
      let fetch = this.demandQueue.shift();
      if (!fetch && this.backgroundInFlight < Math.max(1, this.maxInFlight >> 1)) fetch = this.nextBackgroundFetch();
      if (!fetch) return;
      this.startRead(fetch);
    }
  }

  /** The next background run, trimmed to pages still missing (demand may have taken some). */
  private nextBackgroundFetch(): Fetch | undefined {
    for (;;) {
      const fetch = this.backgroundQueue.shift();
      if (!fetch) return undefined;
      let first = fetch.sourceOffset / PAGE_SIZE;
      const end = first + fetch.pageCount;
      while (first < end && this.states.get(first) !== PageState.MISSING) first++;
      let count = 0;
      while (first + count < end && this.states.get(first + count) === PageState.MISSING) count++;
      if (count === 0) continue;
      if (first + count < end) {
        this.backgroundQueue.unshift({ sourceOffset: (first + count) * PAGE_SIZE, pageCount: end - first - count, demand: false, attempts: 0 });
      }
      count = Math.min(count, this.map.contiguousPagesFrom(first * PAGE_SIZE, count));
      if (count === 0) continue;
      for (let i = 0; i < count; i++) {
        this.states.set(first + i, PageState.IN_FLIGHT);
        this.prefetchedInFlight.add(first + i);
      }
      return { sourceOffset: first * PAGE_SIZE, pageCount: count, demand: false, attempts: 0 };
    }
  }

  private startRead(fetch: Fetch): void {
    if (this.source.readSync && this.readNow(fetch)) return;
    this.inFlight++;
    const background = !fetch.demand;
    if (background) this.backgroundInFlight++;
    if (this.inFlight > this.metrics.inFlightPeak) this.metrics.inFlightPeak = this.inFlight;
    this.metrics.sourceReads++;
    const lengthBytes = fetch.pageCount * PAGE_SIZE;
    const buffer = this.takeBuffer(lengthBytes);
    const settled = this.source
      .read(fetch.sourceOffset, lengthBytes, buffer)
      .then(
        () => {
          fetch.buffer = buffer;
          if (this.statusValue === 'running') this.guarded(() => this.install(fetch));
          else this.releaseBuffer(fetch);
        },
        (error: unknown) => {
          this.releaseBuffer({ ...fetch, buffer });
          this.guarded(() => this.readFailed(fetch, error));
        },
      )
      .finally(() => {
        this.inFlight--;
        if (background) this.backgroundInFlight--;
        this.inFlightSettled.delete(settled);
        this.pump();
      });
    this.inFlightSettled.add(settled);
  }

  /** The source's synchronous fast path: read and install at once, or return false to go async. */
  private readNow(fetch: Fetch): boolean {
    const lengthBytes = fetch.pageCount * PAGE_SIZE;
    const buffer = this.takeBuffer(lengthBytes);
    let done: boolean;
    try {
      done = this.source.readSync!(fetch.sourceOffset, lengthBytes, buffer);
    } catch (error) {
      this.releaseBuffer({ ...fetch, buffer });
      this.guarded(() => this.readFailed(fetch, error));
      return true;
    }
    if (!done) {
      this.releaseBuffer({ ...fetch, buffer });
      return false;
    }
    this.metrics.sourceReads++;
    fetch.buffer = buffer;
    this.guarded(() => this.install(fetch));
    return true;
  }

  private readFailed(fetch: Fetch, error: unknown): void {
    this.metrics.sourceErrors++;
    const wrapped = error instanceof SourceReadError ? error : new SourceReadError(fetch.sourceOffset, fetch.pageCount * PAGE_SIZE, String(error), { cause: error });
    this.report(wrapped);
    if (this.statusValue !== 'running') return;
    if (fetch.attempts < (this.options.sourceRetries ?? 2)) {
      this.demandQueue.push({ ...fetch, buffer: undefined, attempts: fetch.attempts + 1 });
      return;
    }
    // Out of retries: a waiting thread must get an error, never a hang and never
    // made-up data.
    this.abandonPages(fetch.sourceOffset / PAGE_SIZE, fetch.pageCount);
  }

  /**
   * Give up on pages in flight that cannot be filled (the source failed for
   * good, or the kernel refused the copy): a thread waiting on one gets
   * POISON, so SIGBUS (EFAULT inside a syscall), never a hang and never made-up
   * data; a page nobody waits for goes back to missing, to be tried again if
   * it is ever touched.
   */
  private abandonPages(firstIndex: number, pageCount: number): void {
    for (let index = firstIndex; index < firstIndex + pageCount && index < this.states.pageCount; index++) {
      if (this.states.get(index) !== PageState.IN_FLIGHT) continue;
      const address = this.map.addressOf(index * PAGE_SIZE);
      if (!this.waitingSince.has(index) || address === undefined) {
        this.states.set(index, PageState.MISSING);
        this.prefetchedInFlight.delete(index);
        continue;
      }
      // UFFDIO_POISON works whether or not the feature was negotiated (an
      // adopted uffd's features are unknown). A kernel without it (before
      // 6.6) throws: then the waiter is woken to retry, which faults again and
      // is answered again, rather than left asleep.
      try {
        this.settle(address, this.uffd.poison(address, PAGE_SIZE));
        this.states.set(index, PageState.PRESENT);
        this.resolved(index);
      } catch (error) {
        if (error instanceof AddressSpaceGoneError) throw error;
        this.states.set(index, PageState.MISSING);
        this.resolved(index);
        this.wakeRange(address, PAGE_SIZE);
        this.report(error as Error);
      }
    }
  }

  /** Copy a completed read into place, page runs at a time, skipping pages whose state moved on. */
  private install(fetch: Fetch): void {
    const firstIndex = fetch.sourceOffset / PAGE_SIZE;
    let i = fetch.resumeAtPage ?? 0;
    while (i < fetch.pageCount) {
      if (this.states.get(firstIndex + i) !== PageState.IN_FLIGHT) {
        i++;
        continue;
      }
      let runPages = 1;
      const sourceOffset = (firstIndex + i) * PAGE_SIZE;
      const address = this.map.addressOf(sourceOffset);
      if (address === undefined) {
        this.states.set(firstIndex + i, PageState.UNMAPPED);
        i++;
        continue;
      }
      const contiguous = this.map.contiguousPagesFrom(sourceOffset, fetch.pageCount - i);
      while (runPages < contiguous && this.states.get(firstIndex + i + runPages) === PageState.IN_FLIGHT) runPages++;
      const retryFrom = this.copyRun(fetch, i, runPages, address);
      if (retryFrom !== undefined) {
        this.queueRetry(fetch, retryFrom);
        return;
      }
      i += runPages;
    }
    this.releaseBuffer(fetch);
  }

  /** COPY pages [first, first+count) of the fetch; returns the page to retry from on EAGAIN. */
  private copyRun(fetch: Fetch, first: number, count: number, address: number): number | undefined {
    const firstIndex = fetch.sourceOffset / PAGE_SIZE;
    let donePages = 0;
    while (donePages < count) {
      let result: ResolveResult;
      try {
        this.metrics.copyIoctls++;
        result = this.uffd.copy(address + donePages * PAGE_SIZE, fetch.buffer!, {
          srcOffset: (first + donePages) * PAGE_SIZE,
          length: (count - donePages) * PAGE_SIZE,
        });
      } catch (error) {
        if (error instanceof RangeNotRegisteredError) {
          if (count - donePages > 1) {
            // The kernel refuses a whole COPY when any part of it is not
            // registered (a hole in the client's registration, or a munmap
            // racing us). Go page by page so the pages that can be filled,
            // the faulting one first, still are.
            for (let k = donePages; k < count; k++) {
              const retryFrom = this.copyRun(fetch, first + k, 1, address + k * PAGE_SIZE);
              if (retryFrom !== undefined) return retryFrom;
            }
            return undefined;
          }
          // This page is not registered (any more): a hole in the registration,
          // or a munmap whose UNMAP event follows. Say so; nobody can be waiting on it.
          this.states.set(firstIndex + first + donePages, PageState.MISSING);
          this.report(error);
          return undefined;
        }
        if (error instanceof AddressSpaceGoneError) {
          this.fail(error);
          return undefined;
        }
        // Any other refusal (ENOMEM from a full tmpfs or a memory cgroup,
        // EFAULT, EINVAL): the pages of the run must not stay in flight with a
        // thread asleep on them. Retry a few times (ENOMEM can be transient),
        // then give them up: waiters get poison (SIGBUS, as a fault the kernel
        // cannot allocate for gets), the others go back to missing.
        const failedAt = first + donePages;
        if ((fetch.installAttempts ?? 0) < INSTALL_RETRIES) {
          this.metrics.copyRetries++;
          fetch.installAttempts = (fetch.installAttempts ?? 0) + 1;
          return failedAt;
        }
        const address0 = address + donePages * PAGE_SIZE;
        this.report(new PageInstallError(address0, (count - donePages) * PAGE_SIZE, error as Error));
        this.abandonPages(firstIndex + failedAt, count - donePages);
        return undefined;
      }
      switch (result.status) {
        case 'done':
        case 'partial': {
          const pages = result.bytes / PAGE_SIZE;
          for (let k = 0; k < pages; k++) this.installed(firstIndex + first + donePages + k);
          donePages += pages;
          break;
        }
        case 'exists':
          // The first page is already there (an earlier zero page, or a fill
          // that raced us); its waiters still need waking.
          this.uffd.wake(address + donePages * PAGE_SIZE, PAGE_SIZE);
          this.states.set(firstIndex + first + donePages, PageState.PRESENT);
          this.resolved(firstIndex + first + donePages);
          donePages++;
          break;
        case 'retry':
          this.metrics.copyRetries++;
          return first + donePages;
      }
    }
    return undefined;
  }

  private installed(index: number): void {
    this.states.set(index, PageState.PRESENT);
    this.metrics.pagesCopied++;
    this.metrics.bytesCopied += PAGE_SIZE;
    if (!this.waitingSince.has(index) && this.prefetchedInFlight.has(index)) this.metrics.prefetchedPages++;
    this.resolved(index);
  }

  // ---- EAGAIN: copies refused while events are pending -----------------------

  private queueRetry(fetch: Fetch, fromPage: number): void {
    this.retryQueue.push({ ...fetch, resumeAtPage: fromPage });
    this.scheduleRetryDrain();
  }

  /**
   * The kernel refuses copies while an mmap change is being reported
   * (mmap_changing). The events that explain it are read by serve(); the
   * copies are retried after them, and on a short timer in case the change
   * completes after its event was already read.
   */
  private scheduleRetryDrain(): void {
    if (this.retryTimer) return;
    const delay = RETRY_DELAYS_MS[Math.min(this.retryRound, RETRY_DELAYS_MS.length - 1)]!;
    this.retryRound++;
    this.retryTimer = setTimeout(() => {
      this.retryTimer = undefined;
      this.serve();
      this.guarded(() => this.flushRetries());
    }, delay);
  }

  private flushRetries(): void {
    const pending = this.retryQueue.splice(0);
    for (const fetch of pending) this.install(fetch);
    if (this.retryQueue.length === 0) this.retryRound = 0;
    // Faults whose zero-page answer was refused are still waiting: re-serve them.
    for (const index of [...this.waitingSince.keys()]) {
      const state = this.states.get(index);
      if (state === PageState.DISCARDED) this.resolveWithZero(index);
      else if (state === PageState.PRESENT) {
        const address = this.map.addressOf(index * PAGE_SIZE);
        if (address !== undefined) this.resolvePresent(index, address);
      }
    }
  }

  // ---- helpers -------------------------------------------------------------

  private takeBuffer(lengthBytes: number): Uint8Array {
    const poolBytes = this.maxRunPages * PAGE_SIZE;
    if (lengthBytes <= poolBytes) {
      const pooled = this.bufferPool.pop() ?? Buffer.allocUnsafeSlow(poolBytes);
      return pooled;
    }
    return Buffer.allocUnsafeSlow(lengthBytes);
  }

  private releaseBuffer(fetch: Fetch): void {
    if (fetch.buffer && fetch.buffer.length === this.maxRunPages * PAGE_SIZE && this.bufferPool.length < this.maxInFlight) {
      this.bufferPool.push(fetch.buffer);
    }
    fetch.buffer = undefined;
  }

  private forPages(sourceOffset: number, lengthBytes: number, each: (index: number) => void): void {
    const first = Math.floor(sourceOffset / PAGE_SIZE);
    const end = Math.ceil((sourceOffset + lengthBytes) / PAGE_SIZE);
    for (let index = first; index < end && index < this.states.pageCount; index++) each(index);
  }

  private fail(error: Error): void {
    if (error instanceof AddressSpaceGoneError) {
      this.statusValue = 'exited';
      this.uffd.unwatch();
      clearTimeout(this.retryTimer);
      this.emit('exit');
      return;
    }
    this.report(error);
  }

  /** Errors go to 'error' listeners; with none, to a process warning (never thrown into libuv, never dropped). */
  private report(error: Error): void {
    if (this.listenerCount('error') > 0) this.emit('error', error);
    else process.emitWarning(error);
  }
}

function hex(value: number): string {
  return `0x${value.toString(16)}`;
}
