// The pager: serves a uffd's faults from a page source, many fetches in flight.
//
// It runs in the event loop of the thread that starts it and never blocks it:
// uffd readability arrives through a libuv poll handle, source reads are
// promises, and each resolution is one non-blocking ioctl. The rule this
// implies: the pager must never run on a thread that touches the memory it
// serves (that thread sleeps in the kernel until the pager answers).
//
// The pieces, one owner each:
//   page-state.ts       the state of every image page, and the legal moves between states
//   address-map.ts      which host addresses show which image pages (split by munmap, moved by mremap)
//   waiters.ts          the pages a thread is asleep on, and fault latency
//   event-applier.ts    REMOVE / UNMAP / REMAP / FORK applied before the faults of a batch
//   fetch-scheduler.ts  what to read next: demand before background, bounded in flight
//   installer.ts        COPY / ZEROPAGE / POISON / WAKE and every way the kernel refuses them
//   page-cache.ts       a zero-copy restore's shared page cache (CONTINUE instead of COPY)
//   readahead.ts        how far to read around a fault
//   metrics.ts          counters and the latency histogram
// This file reads the uffd, routes each fault by its page's state, runs the
// source reads and decides what a failed read means.
import { EventEmitter } from 'node:events';
import { PAGE_SIZE } from '../native.js';
import { SourceReadError, isAbortError, type PageSource, type PushedPages } from '../sources/page-source.js';
import { AddressSpaceGoneError, UserfaultError } from '../uffd/errors.js';
import type { FeatureName } from '../uffd/constants.js';
import type { PagefaultEvent, UffdEvent } from '../uffd/messages.js';
import { Userfaultfd } from '../uffd/userfaultfd.js';
import { AddressMap, RegionLayoutError, type PagerRegion } from './address-map.js';
import { applyEvent, forPages, type EventContext } from './event-applier.js';
import { FetchScheduler, newFetch, type Fetch } from './fetch-scheduler.js';
import { PageInstaller, type InstallHow, type InstallerContext } from './installer.js';
import { PagerMetrics, type PagerMetricsSnapshot } from './metrics.js';
import { neededPages } from './needed-pages.js';
import { PageBitmap } from './page-bitmap.js';
import { PageCacheMismatchError, type SharedPageCache } from './page-cache.js';
import { PageState, PageStateTable, type PageCounts } from './page-state.js';
import { ReadAhead, type PrefetchOptions } from './readahead.js';
import { ReadAheadTriggers, type HeldPage } from './readahead-triggers.js';
import { FaultWaiters } from './waiters.js';

export type { PagerRegion } from './address-map.js';
export { PageInstallError, type InstallHow } from './installer.js';

export interface PagerOptions {
  uffd: Userfaultfd;
  source: PageSource;
  /** The registered ranges and the image offsets they show. */
  regions: readonly PagerRegion[];
  /** Register the regions with the uffd first, MISSING (and MINOR with a page cache); default false: the caller did. */
  register?: boolean;
  /**
   * Zero-copy restore (page-cache.ts): the regions are a MAP_PRIVATE mapping
   * of this cache's memfd, registered MISSING and MINOR (the uffd with
   * MINOR_SHMEM). Pages read from the source go into the cache once and are
   * mapped with UFFDIO_CONTINUE; pages another restore put there are mapped
   * with no read at all. The cache is for this source's image, of its size.
   */
  pageCache?: SharedPageCache;
  /** Read-ahead around faults; false for exactly one page per fault. */
  prefetch?: PrefetchOptions | false;
  /** Source reads in flight at once (default 64). */
  maxInFlight?: number;
  /**
   * Of those, background reads (read-ahead streams, replay, prefetch-all) at
   * once (default half). A local file source shares libuv's four threads with
   * demand reads, so a VMM streaming a whole image keeps this small.
   */
  maxBackgroundInFlight?: number;
  /** Record the order in which pages were first demanded (see workingSet()). */
  recordWorkingSet?: boolean;
  /** What a fault outside every region gets: the zero page (default), or poison (SIGBUS). */
  unknownFault?: 'zero' | 'poison';
  /** Serve the child's uffd after a FORK event (default true). */
  followForks?: boolean;
  /** Page states to start from (a forked child's copy). */
  initialStates?: PageStateTable;
  /** Times a read that failed transiently is retried before its waiters are poisoned (default 2). */
  sourceRetries?: number;
  /**
   * What waiters get when the source is gone for good (a fatal failure, such
   * as a page server that did not come back before its deadline): 'poison'
   * (default: SIGBUS/EFAULT) or 'freeze' (they keep waiting, and the owner
   * decides, e.g. a VMM pausing its guest).
   */
  sourceLost?: 'poison' | 'freeze';
  /**
   * After serving, keep reading the uffd for this long (µs) when no read is
   * in flight, before going back to sleep in the event loop. A fault that
   * arrives meanwhile skips the ~20 µs cross-CPU wake-up, at the cost of CPU.
   */
  spinMicros?: number;
}

export type PagerStatus = 'idle' | 'running' | 'stopped' | 'exited' | 'failed';

export interface PagerEvents {
  /** The served address space is gone (the process exited): nothing more to serve. */
  exit: [];
  /** The uffd cannot be served any more (reading it fails): the pager stopped serving. */
  failed: [error: Error];
  /** A FORK event: a child pager now serves the child's copy. */
  fork: [child: Pager];
  /** Something went wrong that did not stop the pager (a source read that will be retried, an odd errno). */
  error: [error: Error];
  /** Pages [first, first+count) of the image got their contents. */
  installed: [firstPageIndex: number, pageCount: number, how: InstallHow];
  /** Pages that could not be supplied were poisoned: an access gets SIGBUS/EFAULT. `error` says why. */
  poisoned: [firstPageIndex: number, pageCount: number, error: Error];
  /** Every page the regions need (those not known to be zero) is in. Emitted once. */
  complete: [];
}

/** Batches read back to back in one wake-up while faults keep coming several at a time (then the event loop gets a turn). */
const MAX_BATCHES_PER_WAKE = 16;

/** Windows one read ahead of a stream covers, from a source that lends its bytes (readAheadOfStream): 2 MiB, a page server's largest READ. */
const AHEAD_RUN_WINDOWS = 8;

/** Delays before retrying a read that failed transiently (ms), by attempt. */
const READ_RETRY_DELAYS_MS = [1, 10, 100];

/**
 * Longest run of reads started back to back (ms) before the thread goes back
 * to its event loop. A source that answers synchronously (memory, the page
 * cache) installs each read as it starts, so a prefetch-all would otherwise
 * fill the whole image in one go without reading the uffd: every fault, and
 * every discard (madvise waits until its REMOVE event is read), waited for it.
 */
const PUMP_SLICE_MS = 2;

export class Pager extends EventEmitter<PagerEvents> {
  readonly uffd: Userfaultfd;
  readonly source: PageSource;
  readonly metrics = new PagerMetrics();
  readonly states: PageStateTable;
  private readonly map: AddressMap;
  private readonly readAhead: ReadAhead;
  private readonly scheduler: FetchScheduler;
  private readonly installer: PageInstaller;
  private readonly waiters = new FaultWaiters();
  private readonly events: EventContext;
  private readonly options: PagerOptions;
  private readonly pageCache: SharedPageCache | undefined;
  private readonly inFlightSettled = new Set<Promise<void>>();
  /** Pages put in flight by read-ahead or replay rather than a fault. */
  private readonly prefetched: PageBitmap;
  private readonly workingSetOrder: number[] = [];
  private readonly demanded: Uint8Array | undefined;
  private readonly bufferPool: Uint8Array[] = [];
  /** The page each stream's read-ahead holds back for its thread to fault on (readahead-triggers.ts). */
  private readonly triggers = new ReadAheadTriggers((index, page) => {
    this.installHeld(index, page);
    this.checkComplete();
  });
  /** The buffer pages to be written are read into from the page cache, between two such reads. */
  private cacheScratch: Uint8Array | undefined;
  private readonly children: Pager[] = [];
  private readonly retryTimers = new Set<NodeJS.Timeout>();
  private stopPush: (() => void) | undefined;
  private pumpLater: NodeJS.Immediate | undefined;
  private completeEmitted = false;
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
    this.pageCache = options.pageCache;
    if (this.pageCache && this.pageCache.pageCount !== Math.ceil(this.source.sizeBytes / PAGE_SIZE)) {
      throw new PageCacheMismatchError(`a ${this.pageCache.pageCount}-page cache (${this.pageCache.image}) cannot hold ${this.source.description} (${this.source.sizeBytes} bytes)`);
    }
    const pageCount = Math.ceil(this.source.sizeBytes / PAGE_SIZE);
    this.states = options.initialStates ?? new PageStateTable(pageCount, undefined, neededPages(this.source, pageCount, this.map.regions.map((region) => ({ firstPage: region.sourceOffset / PAGE_SIZE, pageCount: region.lengthBytes / PAGE_SIZE }))));
    this.prefetched = new PageBitmap(pageCount);
    this.readAhead = new ReadAhead(options.prefetch ?? {});
    const maxInFlight = options.maxInFlight ?? 64;
    this.scheduler = new FetchScheduler(maxInFlight, options.maxBackgroundInFlight ?? Math.max(1, maxInFlight >> 1), this.readAhead.maxPages);
    if (options.recordWorkingSet) this.demanded = new Uint8Array(pageCount);
    const installerContext: InstallerContext = {
      uffd: this.uffd,
      states: this.states,
      map: this.map,
      waiters: this.waiters,
      metrics: this.metrics,
      prefetched: this.prefetched,
      pageCache: this.pageCache,
      isRunning: () => this.statusValue === 'running',
      drainEvents: () => this.serve(),
      report: (error) => this.report(error),
      installed: (first, count, how) => {
        this.emit('installed', first, count, how);
        this.checkComplete();
      },
      poisoned: (first, count, error) => {
        this.emit('poisoned', first, count, error);
        this.checkComplete();
      },
    };
    this.installer = new PageInstaller(installerContext);
    this.events = {
      states: this.states,
      map: this.map,
      waiters: this.waiters,
      installer: this.installer,
      metrics: this.metrics,
      settledInFlight: () => this.abortUnneededReads(),
      adoptFork: (fd) => this.adoptFork(fd),
      report: (error) => this.report(error),
    };
  }

  get status(): PagerStatus {
    return this.statusValue;
  }

  get regions(): readonly PagerRegion[] {
    return this.map.regions;
  }

  /** Every page the regions need is in (see the 'complete' event). */
  get isComplete(): boolean {
    return this.states.pendingNeeded === 0;
  }

  /** Pages the regions need (not known to be zero) still missing or in flight. */
  get pendingPages(): number {
    return this.states.pendingNeeded ?? 0;
  }

  /** Source reads started and not finished now. */
  get readsInFlight(): number {
    return this.scheduler.inFlight;
  }

  /** Pages some thread is asleep on (a fault read, not resolved yet). */
  get pagesWaitedOn(): number {
    return this.waiters.size;
  }

  /** Start serving from this thread's event loop. The watch keeps the loop alive while running. */
  start(): this {
    if (this.statusValue !== 'idle') throw new UserfaultError(`pager cannot start: it is ${this.statusValue}`);
    if (this.options.register) {
      for (const region of this.map.regions) this.uffd.register(region.address, region.lengthBytes, this.pageCache ? ['MISSING', 'MINOR'] : ['MISSING']);
    }
    this.statusValue = 'running';
    this.uffd.watch(() => this.serve(), { ref: true, onError: (error) => this.failed(error) });
    this.stopPush = this.source.onPush?.((pages) => this.guarded(() => this.installPushed(pages)));
    // Faults may already be queued (the fd was handed over with waiters).
    this.serve();
    this.checkComplete();
    return this;
  }

  /**
   * Stop serving; reads in flight are aborted (a source that honours the
   * signal settles them at once, one that does not finishes them) and never
   * installed. The uffd stays open (the caller owns it).
   */
  async stop(): Promise<void> {
    if (this.statusValue === 'running') this.statusValue = 'stopped';
    this.halt();
    // Their bytes would be dropped anyway, and waiting for a read that never
    // answers (a page server stopped mid-read) would hold the stop, and every
    // teardown behind it, until the source's own timeouts give up on it.
    for (const fetch of this.scheduler.active) fetch.abort?.abort();
    await Promise.allSettled([...this.inFlightSettled]);
    // The children's uffds came from FORK events: this pager opened them, so it closes them.
    const children = this.children.splice(0);
    await Promise.all(children.map((child) => child.stop().then(() => child.uffd.close())));
  }

  /** Metrics of this pager (children report their own). */
  snapshotMetrics(): PagerMetricsSnapshot {
    return this.metrics.snapshot();
  }

  /**
   * Microseconds each faulting thread spent blocked on missing pages, by its
   * thread id (needs UFFD_FEATURE_THREAD_ID on the uffd; without it, empty).
   */
  blocktime(): Map<number, number> {
    return this.waiters.blocktime();
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
    this.scheduler.queueBackgroundPages(pageIndices);
    this.pump();
  }

  /** Fill every needed page still missing, in the background (eager completion of a lazy restore). */
  prefetchAll(): void {
    const indices: number[] = [];
    for (const region of this.map.regions) {
      const first = region.sourceOffset / PAGE_SIZE;
      for (let i = 0; i < region.lengthBytes / PAGE_SIZE; i++) {
        if (this.states.get(first + i) === PageState.MISSING && this.states.isNeeded(first + i)) indices.push(first + i);
      }
    }
    this.prefetchPages(indices);
  }

  /** How many pages are in each state. */
  pageCounts(): PageCounts {
    return this.states.counted();
  }

  // ---- reading the uffd ----------------------------------------------------

  /**
   * Read every pending message, apply the non-cooperative events first, then
   * serve the faults. A fault can be read before a REMOVE that logically
   * precedes it, so deciding what to serve waits until all events are in.
   */
  private serve(): void {
    if (this.statusValue !== 'running') return;
    // A batch of several faults means threads fault side by side (vCPUs):
    // more are likely queued by the time this batch's copies are done, and
    // reading them now saves going round the event loop (epoll, the native
    // callback) for them. A batch of one (a single thread, asleep until its
    // copy woke it) would only buy an empty read.
    let faults = this.serveBatch();
    for (let rounds = 0; faults > 1 && rounds < MAX_BATCHES_PER_WAKE && this.statusValue === 'running'; rounds++) faults = this.serveBatch();
    const spinMs = (this.options.spinMicros ?? 0) / 1000;
    if (spinMs <= 0) return;
    // Spin only while nothing is in flight: a spinning thread cannot run the
    // promise callbacks that complete asynchronous reads.
    let deadline = performance.now() + spinMs;
    while (this.statusValue === 'running' && this.scheduler.inFlight === 0 && performance.now() < deadline) {
      if (this.serveBatch() > 0) deadline = performance.now() + spinMs;
    }
  }

  /**
   * Read and serve what is pending now; returns how many faults there were.
   * The fault path allocates nothing of its own per fault (no arrays, no
   * closures): it runs once per fault, tens of thousands of times a second.
   */
  private serveBatch(): number {
    let messages: UffdEvent[];
    try {
      messages = this.uffd.readEvents();
    } catch (error) {
      this.failed(error as Error);
      return 0;
    }
    if (messages.length === 0 && !this.installer.retriesPending) return 0;
    let faults = 0;
    for (const message of messages) {
      if (message.type === 'pagefault') faults++;
      else this.guarded(() => applyEvent(this.events, message));
    }
    if (this.installer.retriesPending) this.guarded(() => this.installer.flushRetries());
    if (faults > 0) {
      const now = performance.now();
      for (const message of messages) {
        if (message.type !== 'pagefault' || this.statusValue !== 'running') continue;
        try {
          this.handleFault(message, now);
        } catch (error) {
          this.stepFailed(error);
        }
      }
    }
    this.pump();
    this.checkComplete();
    return faults;
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
      this.stepFailed(error);
    }
  }

  /** What a step that threw means: the address space is gone, or an error to report. */
  private stepFailed(error: unknown): void {
    if (error instanceof AddressSpaceGoneError) this.exited();
    else this.report(error as Error);
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
    const pageAddress = fault.address - (fault.address % PAGE_SIZE);
    if (fault.writeProtect) {
      this.metrics.fault('write-protect');
      // This pager does not write-protect; a WP fault here means someone else
      // did, and the writer must not hang: lift the protection for this page.
      this.uffd.writeProtect(pageAddress, PAGE_SIZE, { protect: false });
      return;
    }
    const sourceOffset = this.map.sourceOffsetOf(pageAddress);
    if (sourceOffset === undefined) {
      this.metrics.fault('outside');
      this.installer.answerOutside(pageAddress, this.options.unknownFault === 'poison');
      return;
    }
    const index = sourceOffset / PAGE_SIZE;
    if (fault.minor && !this.pageCache) {
      this.metrics.fault('minor');
      this.installer.answerMinor(pageAddress);
      return;
    }
    // With a page cache, a MINOR fault (the page is in the cache, not mapped
    // here) goes by its page's state like a MISSING one: the cache may hold a
    // page this restore discarded (it reads zero here) or one still being
    // written (its filled bit is not set yet).
    if (this.demanded && !this.demanded[index]) {
      this.demanded[index] = 1;
      this.workingSetOrder.push(index);
    }
    this.waiters.add(index, now, fault.threadId);
    const state = this.states.get(index);
    switch (state) {
      case PageState.MISSING:
        this.metrics.fault('missing');
        this.startDemandFetch(index, fault.write);
        return;
      case PageState.IN_FLIGHT:
        this.metrics.fault('in-flight');
        if (this.prefetched.get(index)) this.metrics.prefetchHits++;
        this.scheduler.promote(index);
        this.keepStreamAhead(index, fault.write);
        if (this.triggers.size > 0) {
          // A read-ahead's trigger: the read-ahead was just extended; its page is answered from the bytes kept.
          const held = this.triggers.take(index);
          if (held) this.installHeld(index, held);
        }
        return;
      case PageState.DISCARDED:
        this.metrics.fault('discarded');
        this.installer.zeroFill(index);
        return;
      case PageState.PRESENT:
        this.metrics.fault('present');
        // A cache page mapped here and never written loses its entry when
        // reclaim swaps the cache page out; the next touch is a MINOR fault,
        // and only CONTINUE brings the right bytes back (the zero page would not).
        if (fault.minor && this.pageCache?.isFilled(index)) this.installer.answerMinor(pageAddress, index);
        else this.installer.answerPresent(index, pageAddress);
        return;
      case PageState.POISONED:
        this.metrics.fault('poisoned');
        // The poison marker answers accesses itself; a fault here means it is
        // gone (the page was zapped). Poison again, never data.
        this.installer.answerOutside(pageAddress, true);
        this.installer.settled(index);
        return;
      case PageState.UNMAPPED:
        this.metrics.fault('outside');
        this.waiters.drop(index);
        this.installer.answerOutside(pageAddress, false);
        return;
      default: {
        const never: never = state;
        throw new UserfaultError(`page ${index} is in an unknown state ${String(never)}`);
      }
    }
  }

  /** `forWrite`: the fault was a store (see Fetch.forWrite; it matters only with a page cache). */
  private startDemandFetch(index: number, forWrite: boolean): void {
    if (this.source.isZero?.(index * PAGE_SIZE, PAGE_SIZE)) {
      this.installer.zeroFill(index);
      return;
    }
    const window = this.readAhead.windowFor(index);
    const sourceOffset = index * PAGE_SIZE;
    const limit = Math.min(window, this.map.contiguousPagesFrom(sourceOffset, window));
    let pageCount = 1;
    while (pageCount < limit && this.states.get(index + pageCount) === PageState.MISSING && !this.source.isZero?.((index + pageCount) * PAGE_SIZE, PAGE_SIZE)) {
      pageCount++;
    }
    this.claim(index, pageCount, true);
    this.scheduler.queueDemand(newFetch(sourceOffset, pageCount, true, { claimed: true, forWrite }));
    if (pageCount === window && this.readAhead.atFullSpeed) this.readAheadOfStream(index + pageCount, window, forWrite);
  }

  /**
   * A stream at its full window (a thread sweeping memory in order): the
   * next `aheadWindows` windows go in the background, behind the demand
   * fetch. The thread works on the pages just installed while the source
   * reads and the pager copies the next ones, and finds them in place instead
   * of faulting. Part way in, one page is held back as the read-ahead's
   * trigger (readahead-triggers.ts): the thread's fault there extends the
   * read-ahead before it runs out, and is answered without a read, so past
   * its ramp-up a sweep never waits for its source. Random faults never get
   * here (their window is one page).
   *
   * A source that lends its bytes (readView, mappedPages: no buffer of the
   * pager's is filled) is read ahead in runs of AHEAD_RUN_WINDOWS windows:
   * what a read costs besides its bytes (a request and its reply, a promise,
   * an ioctl) is paid that much less often. Measured on the bench's
   * sequential restore from a page server, runs of 4 windows against 1: CPU
   * per byte down about a quarter on both sides (430 -> 245 µs per 256 KiB in
   * the pager's thread, 457 -> 242 in the page server); 8 against 4, remote /
   * local 0.66x against 0.61x. Other sources read into the pager's pooled
   * window-sized buffers, so their runs stay one window.
   */
  private readAheadOfStream(firstIndex: number, pageCount: number, forWrite: boolean): void {
    this.readAheadRange(firstIndex, firstIndex + this.readAhead.aheadWindows * pageCount, pageCount, forWrite);
  }

  /**
   * A thread sweeping in order caught up with its stream's read-ahead (it
   * faulted on a page still coming): the read-ahead is extended to
   * `aheadWindows` windows past the window it is in, in whole windows, so a
   * stream whose source is slower than the thread stays that far ahead
   * instead of draining and starting again at its next missing page.
   */
  private keepStreamAhead(index: number, forWrite: boolean): void {
    const from = this.readAhead.caughtUp(index);
    if (from < 0) return;
    const window = this.readAhead.maxPages;
    const wanted = index + (this.readAhead.aheadWindows + 1) * window;
    const windows = Math.floor((wanted - from) / window);
    if (windows > 0) this.readAheadRange(from, from + windows * window, window, forWrite);
  }

  /** Queue [firstIndex, end) in the background as a stream's read-ahead: runs of windows of `pageCount` pages, for writing if the stream writes. */
  private readAheadRange(firstIndex: number, end: number, pageCount: number, forWrite: boolean): void {
    const lends = this.source.readView !== undefined || this.source.mappedPages !== undefined;
    const runPages = lends ? pageCount * AHEAD_RUN_WINDOWS : pageCount;
    const start = firstIndex;
    end = Math.min(this.states.pageCount, end);
    while (firstIndex < end) {
      const count = this.map.contiguousPagesFrom(firstIndex * PAGE_SIZE, Math.min(runPages, end - firstIndex));
      if (count === 0) break;
      if (this.states.get(firstIndex) === PageState.MISSING) this.scheduler.queueBackground(newFetch(firstIndex * PAGE_SIZE, count, false, { forWrite }));
      firstIndex += count;
      this.readAhead.readAheadTo(firstIndex);
    }
    // The trigger (readahead-triggers.ts): half the read-ahead's depth before its end, so that the thread that
    // faults on it still has that much in place or coming while the extension is read. A read-ahead of one
    // window has no half to spare: its thread faults at its end, as before.
    if (this.readAhead.aheadWindows < 2) return;
    const trigger = Math.max(start, firstIndex - Math.floor(this.readAhead.aheadWindows / 2) * pageCount);
    if (trigger < firstIndex && this.states.get(trigger) === PageState.MISSING) this.triggers.set(trigger, forWrite);
  }

  /** Mark pages in flight for a fetch; all but a demand fetch's first are prefetched. */
  private claim(first: number, count: number, demand: boolean): void {
    for (let i = 0; i < count; i++) {
      this.states.set(first + i, PageState.IN_FLIGHT);
      if (!demand || i > 0) this.prefetched.set(first + i);
    }
  }

  // ---- fetching ------------------------------------------------------------

  /** Start reads up to the scheduler's limits, for one slice; the rest after the uffd was read again. */
  private pump(): void {
    const sliceEnd = performance.now() + PUMP_SLICE_MS;
    while (this.statusValue === 'running') {
      const fetch = this.scheduler.next((queued) => this.prepare(queued));
      if (!fetch) return;
      this.startRead(fetch);
      if (performance.now() > sliceEnd) {
        // After the poll phase: faults and events queued meanwhile are served first.
        this.pumpLater ??= setImmediate(() => {
          this.pumpLater = undefined;
          this.pump();
          this.checkComplete();
        });
        return;
      }
    }
  }

  /**
   * A queued fetch made ready to read. A claimed one (its pages already in
   * flight for it) goes as it is; an unclaimed one (replay, prefetch-all) is
   * trimmed to its first run of pages still missing, contiguous in host
   * memory, and claimed; the rest of it goes back to the queue.
   */
  private prepare(fetch: Fetch): Fetch | undefined {
    if (fetch.claimed) return fetch;
    let first = fetch.sourceOffset / PAGE_SIZE;
    const end = first + fetch.pageCount;
    while (first < end && this.states.get(first) !== PageState.MISSING) first++;
    let count = 0;
    while (first + count < end && this.states.get(first + count) === PageState.MISSING) count++;
    if (count === 0) return undefined;
    if (first + count < end) this.scheduler.requeueBackgroundFront(newFetch((first + count) * PAGE_SIZE, end - first - count, false, { forWrite: fetch.forWrite }));
    count = Math.min(count, this.map.contiguousPagesFrom(first * PAGE_SIZE, count));
    if (count === 0) return undefined;
    this.claim(first, count, false);
    return newFetch(first * PAGE_SIZE, count, fetch.demand, { attempts: fetch.attempts, claimed: true, forWrite: fetch.forWrite });
  }

  private startRead(fetch: Fetch): void {
    if (this.pageCache?.allFilled(fetch.sourceOffset / PAGE_SIZE, fetch.pageCount)) {
      this.installFromCache(fetch, this.pageCache);
      return;
    }
    if ((this.source.mappedPages || this.source.readSync) && this.readNow(fetch)) return;
    this.scheduler.started(fetch);
    if (this.scheduler.inFlight > this.metrics.inFlightPeak) this.metrics.inFlightPeak = this.scheduler.inFlight;
    this.metrics.sourceReads++;
    const lengthBytes = fetch.pageCount * PAGE_SIZE;
    fetch.abort = new AbortController();
    const options = { priority: fetch.demand ? 'demand' as const : 'background' as const, signal: fetch.abort.signal };
    const readStarted = performance.now();
    // A source that holds the bytes once received (a network payload) lends them, checked: installed
    // from where they arrived, not copied into a buffer of the pager's first.
    let buffer: Uint8Array | undefined;
    const reading = this.source.readView
      ? this.source.readView(fetch.sourceOffset, lengthBytes, options).then((view) => {
        fetch.buffer = view;
        fetch.borrowed = true;
      })
      : this.source.read(fetch.sourceOffset, lengthBytes, (buffer = this.takeBuffer(lengthBytes)), options).then(() => {
        fetch.buffer = buffer;
      });
    const settled = reading
      .then(
        () => {
          this.metrics.recordSourceReadMicros((performance.now() - readStarted) * 1000);
          if (this.statusValue === 'running') this.guarded(() => this.installRead(fetch));
          else this.releaseBuffer(fetch);
        },
        (error: unknown) => {
          if (buffer) this.releaseBuffer({ ...fetch, buffer, borrowed: false });
          this.guarded(() => this.readFailed(fetch, error));
        },
      )
      .finally(() => {
        this.scheduler.finished(fetch);
        this.inFlightSettled.delete(settled);
        this.pump();
        this.checkComplete();
      });
    this.inFlightSettled.add(settled);
  }

  /**
   * Some restore of this image put these pages in the cache already: nothing
   * to read from the source. Pages to be read are mapped from it; pages to be
   * written are copied out of it (pread, then COPY: cheaper here than COPY
   * from a mapping of the cache, which faults each page in).
   */
  private installFromCache(fetch: Fetch, pageCache: SharedPageCache): void {
    if (!fetch.forWrite) {
      this.installReadGuarded(fetch);
      return;
    }
    // Read and installed in one go, so one buffer serves every such fetch
    // (a fresh one would fault in each of its pages on the read). A fetch
    // the kernel made wait for a retry keeps its buffer; the next takes a new one.
    const length = fetch.pageCount * PAGE_SIZE;
    const scratch = this.cacheScratch && this.cacheScratch.length >= length ? this.cacheScratch : Buffer.allocUnsafeSlow(Math.max(length, this.readAhead.maxPages * PAGE_SIZE * AHEAD_RUN_WINDOWS));
    this.cacheScratch = undefined;
    try {
      pageCache.read(fetch.sourceOffset / PAGE_SIZE, fetch.pageCount, scratch);
    } catch (error) {
      this.cacheScratch = scratch;
      this.guarded(() => this.readFailed(fetch, error));
      return;
    }
    fetch.buffer = scratch.subarray(0, length);
    if (this.statusValue !== 'running') return;
    try {
      if (this.installer.install(fetch)) this.cacheScratch = scratch;
    } catch (error) {
      this.stepFailed(error);
    }
  }

  /** The source's synchronous fast path: read and install at once, or return false to go async. */
  private readNow(fetch: Fetch): boolean {
    const lengthBytes = fetch.pageCount * PAGE_SIZE;
    const readStarted = performance.now();
    if (this.source.mappedPages) {
      // One copy: from where the source keeps the bytes (the page cache) straight into place.
      let view: Uint8Array | undefined;
      try {
        view = this.source.mappedPages(fetch.sourceOffset, lengthBytes);
      } catch (error) {
        this.guarded(() => this.readFailed(fetch, error));
        return true;
      }
      if (view) {
        this.metrics.sourceReads++;
        this.metrics.recordSourceReadMicros((performance.now() - readStarted) * 1000);
        fetch.buffer = view;
        fetch.borrowed = true;
        this.installReadGuarded(fetch);
        return true;
      }
    }
    if (!this.source.readSync) return false;
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
    this.metrics.recordSourceReadMicros((performance.now() - readStarted) * 1000);
    fetch.buffer = buffer;
    this.installReadGuarded(fetch);
    return true;
  }

  private installRead(fetch: Fetch): void {
    const held = this.triggers.size > 0 && fetch.buffer
      ? this.triggers.holdFrom(fetch.sourceOffset / PAGE_SIZE, fetch.pageCount, fetch.buffer, (index) => this.states.get(index) === PageState.IN_FLIGHT && !this.waiters.has(index))
      : -1;
    if (this.installer.install(fetch, 'copy', held)) this.releaseBuffer(fetch);
  }

  /** A read-ahead trigger's kept page, installed (a thread faulted on it, or nobody did in time) unless its state moved on. */
  private installHeld(index: number, page: HeldPage): void {
    if (this.statusValue !== 'running' || this.states.get(index) !== PageState.IN_FLIGHT) return;
    const fetch = newFetch(index * PAGE_SIZE, 1, this.waiters.has(index), { claimed: true, forWrite: page.forWrite });
    fetch.buffer = page.bytes;
    try {
      this.installer.install(fetch);
    } catch (error) {
      this.stepFailed(error);
    }
  }

  /** installRead as a guarded step, without a closure (the synchronous read path runs it once per fault). */
  private installReadGuarded(fetch: Fetch): void {
    if (this.statusValue !== 'running') return;
    try {
      this.installRead(fetch);
    } catch (error) {
      this.stepFailed(error);
    }
  }

  /**
   * A read failed. Aborted reads were not needed. Otherwise the failure says
   * what to do: transient ones are retried after a pause (the waiters keep
   * waiting); fatal ones are not, and their pages are given up (poisoned).
   * A failed run is narrowed first, so that one bad page costs only itself:
   * the source names the failing page when it knows it, else the run is
   * split into single pages.
   */
  private readFailed(fetch: Fetch, error: unknown): void {
    if (isAbortError(error) || fetch.abort?.signal.aborted) {
      this.metrics.readsAborted++;
      this.unclaim(fetch);
      return;
    }
    this.metrics.sourceErrors++;
    const failure = error instanceof SourceReadError
      ? error
      : new SourceReadError(fetch.sourceOffset, fetch.pageCount * PAGE_SIZE, String((error as Error)?.message ?? error), { cause: error });
    this.report(failure);
    if (this.statusValue !== 'running') return;
    const firstIndex = fetch.sourceOffset / PAGE_SIZE;
    const retries = this.options.sourceRetries ?? 2;
    if (failure.failure === 'transient' && fetch.attempts < retries) {
      this.retryLater(newFetch(fetch.sourceOffset, fetch.pageCount, this.anyWaiter(fetch), { attempts: fetch.attempts + 1, claimed: true, forWrite: fetch.forWrite }));
      return;
    }
    if (fetch.pageCount > 1) {
      const bad = failure.failedOffset;
      const badIndex = bad !== undefined && bad >= fetch.sourceOffset && bad < fetch.sourceOffset + fetch.pageCount * PAGE_SIZE ? Math.floor(bad / PAGE_SIZE) : undefined;
      if (badIndex !== undefined) this.giveUp(badIndex, 1, failure);
      // Each other page once more on its own, with no retries left if this was transient.
      const attempts = failure.failure === 'transient' ? retries : fetch.attempts;
      for (let index = firstIndex; index < firstIndex + fetch.pageCount; index++) {
        if (index === badIndex || this.states.get(index) !== PageState.IN_FLIGHT) continue;
        const single = newFetch(index * PAGE_SIZE, 1, this.waiters.has(index), { attempts, claimed: true, forWrite: fetch.forWrite });
        if (single.demand) this.scheduler.queueDemand(single);
        else this.scheduler.queueBackground(single);
      }
      this.pump();
      return;
    }
    this.giveUp(firstIndex, 1, failure);
  }

  /** Give up pages whose read failed for good: poisoned (or, with sourceLost 'freeze' and a gone source, left waiting). */
  private giveUp(firstIndex: number, pageCount: number, failure: SourceReadError): void {
    const fatal = failure.failure === 'fatal';
    if (fatal && failure.code === 'ESOURCEGONE' && this.options.sourceLost === 'freeze') {
      // Nobody is answered; the pages go back to missing and their threads keep waiting.
      for (let index = firstIndex; index < firstIndex + pageCount; index++) if (this.states.get(index) === PageState.IN_FLIGHT) this.states.set(index, PageState.MISSING);
      return;
    }
    // A page whose source failed for good is poisoned even when nobody waits on
    // it yet: no later read would give it, and a later touch must not wait.
    this.installer.giveUp(firstIndex, pageCount, failure, { poisonAll: fatal && failure.code !== 'ESOURCEGONE' });
  }

  private retryLater(fetch: Fetch): void {
    const delay = READ_RETRY_DELAYS_MS[Math.min(fetch.attempts - 1, READ_RETRY_DELAYS_MS.length - 1)]!;
    const timer = setTimeout(() => {
      this.retryTimers.delete(timer);
      if (this.statusValue !== 'running') return;
      fetch.demand = this.anyWaiter(fetch);
      if (fetch.demand) this.scheduler.queueDemand(fetch);
      else this.scheduler.queueBackground(fetch);
      this.pump();
    }, delay);
    this.retryTimers.add(timer);
  }

  private anyWaiter(fetch: Fetch): boolean {
    const first = fetch.sourceOffset / PAGE_SIZE;
    for (let index = first; index < first + fetch.pageCount; index++) if (this.waiters.has(index)) return true;
    return false;
  }

  /** An aborted read's pages that are still in flight go back to missing (a waiter, if any, gets a new fetch). */
  private unclaim(fetch: Fetch): void {
    const first = fetch.sourceOffset / PAGE_SIZE;
    for (let index = first; index < first + fetch.pageCount; index++) {
      if (this.states.get(index) !== PageState.IN_FLIGHT) continue;
      this.states.set(index, PageState.MISSING);
      this.prefetched.clear(index);
      if (this.waiters.has(index)) this.startDemandFetch(index, fetch.forWrite ?? false);
    }
    this.pump();
  }

  /** Abort reads in flight none of whose pages is in flight any more (discarded, unmapped, or pushed meanwhile). */
  private abortUnneededReads(): void {
    for (const fetch of this.scheduler.active) {
      if (!fetch.abort || fetch.abort.signal.aborted) continue;
      let needed = false;
      forPages(this.states, fetch.sourceOffset, fetch.pageCount * PAGE_SIZE, (index) => {
        if (this.states.get(index) === PageState.IN_FLIGHT) needed = true;
      });
      if (!needed) fetch.abort.abort();
    }
  }

  // ---- pages the source pushes ---------------------------------------------

  /**
   * Pages the source sent unasked (post-copy's background stream): installed
   * where still missing or in flight (a read of them may be under way; it
   * will find them present), dropped where already present or discarded — a
   * page already installed is never overwritten (COPY refuses with EEXIST).
   */
  private installPushed(pages: PushedPages): void {
    const { offset, bytes } = pages;
    if (offset % PAGE_SIZE !== 0 || bytes.length % PAGE_SIZE !== 0 || offset < 0 || offset + bytes.length > this.source.sizeBytes) {
      this.report(new UserfaultError(`the source pushed ${bytes.length} bytes at offset ${offset}: not whole pages of the image; dropped`));
      return;
    }
    const first = offset / PAGE_SIZE;
    const count = bytes.length / PAGE_SIZE;
    let wanted = 0;
    for (let index = first; index < first + count; index++) {
      const state = this.states.get(index);
      if (state === PageState.MISSING) this.states.set(index, PageState.IN_FLIGHT);
      if (state === PageState.MISSING || state === PageState.IN_FLIGHT) wanted++;
      else this.metrics.pushedPagesDropped++;
    }
    if (wanted === 0) return;
    const before = this.metrics.pagesCopied;
    this.installer.install({ ...newFetch(offset, count, false), buffer: bytes }, 'push');
    this.metrics.pushedPages += this.metrics.pagesCopied - before;
    this.abortUnneededReads();
    this.checkComplete();
  }

  // ---- helpers -------------------------------------------------------------

  private checkComplete(): void {
    if (this.completeEmitted || this.statusValue !== 'running' || this.states.pendingNeeded !== 0) return;
    this.completeEmitted = true;
    this.emit('complete');
  }

  private takeBuffer(lengthBytes: number): Uint8Array {
    const poolBytes = this.readAhead.maxPages * PAGE_SIZE;
    if (lengthBytes <= poolBytes) return this.bufferPool.pop() ?? Buffer.allocUnsafeSlow(poolBytes);
    return Buffer.allocUnsafeSlow(lengthBytes);
  }

  private releaseBuffer(fetch: Fetch): void {
    if (fetch.borrowed) {
      // The source's own memory: given back to it (it may reuse it), never pooled here (a pooled buffer is read into).
      if (fetch.buffer) this.source.releaseView?.(fetch.buffer);
      fetch.buffer = undefined;
      fetch.borrowed = false;
      return;
    }
    if (fetch.buffer && fetch.buffer.length === this.readAhead.maxPages * PAGE_SIZE && this.bufferPool.length < this.scheduler.maxInFlight) {
      this.bufferPool.push(fetch.buffer);
    }
    fetch.buffer = undefined;
  }

  /** Stop the machinery (watch, timers, queues, push listener); reads in flight settle on their own (stop() aborts them). */
  private halt(): void {
    this.uffd.unwatch();
    clearImmediate(this.pumpLater);
    this.pumpLater = undefined;
    this.installer.stop();
    this.triggers.clear();
    for (const timer of this.retryTimers) clearTimeout(timer);
    this.retryTimers.clear();
    this.scheduler.clear();
    this.stopPush?.();
    this.stopPush = undefined;
  }

  private exited(): void {
    if (this.statusValue !== 'running') return;
    this.statusValue = 'exited';
    this.halt();
    this.emit('exit');
  }

  /** The uffd cannot be read (or polled) any more: serving through it would only spin. */
  private failed(error: Error): void {
    if (error instanceof AddressSpaceGoneError) {
      this.exited();
      return;
    }
    if (this.statusValue !== 'running') return;
    this.statusValue = 'failed';
    this.halt();
    if (this.listenerCount('failed') > 0) this.emit('failed', error);
    else this.report(error);
  }

  /** Errors go to 'error' listeners; with none, to a process warning (never thrown into libuv, never dropped). */
  private report(error: Error): void {
    if (this.listenerCount('error') > 0) this.emit('error', error);
    else process.emitWarning(error);
  }
}
