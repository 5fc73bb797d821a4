// Lazy restore of guest RAM: the memory is registered with userfaultfd
// (MISSING mode) and a Pager running in the VMM's main thread fills each page
// from a page source (a snapshot file, a page server) the first time anything
// touches it. The vCPUs run in worker threads; their faults on guest RAM are
// kernel-mode (KVM's emulator and get_user_pages), so the uffd must not be
// USER_MODE_ONLY.
//
// The rule this depends on: the main thread never touches guest memory while
// pages are missing (it is the thread that serves the faults). complete()
// fills everything first for the one place that needs all of it (a snapshot).
//
// Teardown (PagerHost's order): stop the pager (after the vCPUs are gone),
// unregister the ranges, close the uffd and the source, and only then may the
// VMM unmap the memory.
import { PAGE_SIZE } from '../../native.js';
import { PageState, PagerHost, startingPageStates, type PageBits, type PagerGauges, type PagerMetrics, type PagerMetricsSnapshot, type PageCounts, type PageStateMap, type PrefetchOptions } from '../../pager/index.js';
import type { PageSource } from '../../sources/page-source.js';
import { Userfaultfd } from '../../uffd/index.js';
import { VmError } from '../errors.js';
import type { GuestMemory } from './guest-memory.js';

/**
 * Background reads of prefetch-all at once. A file source shares libuv's four
 * threadpool threads with the demand reads of the vCPUs' faults; queued all at
 * once, the background reads fill them and a demand fault waits behind
 * (measured on a 256 MiB guest: 9-15 ms per fault). Two outstanding keep the
 * stream going at about the same rate with demand faults at 0.7-2 ms.
 */
const STREAM_BACKGROUND_READS = 2;

/** A page of guest memory the source could not supply (corrupt, unreadable, or the source is gone): the guest must not run on. */
export class GuestMemoryUnavailableError extends VmError {
  override readonly code = 'EGUESTMEMORY';
  constructor(readonly source: string, cause: Error) {
    super(`guest memory from ${source}: ${cause.message}`, { cause });
  }
}

export interface LazyRestoreOptions {
  /** The pager's read-ahead around a fault (default: 1 page, growing to 64 on sequential faults); false for one page per fault. */
  prefetch?: PrefetchOptions | false;
  /** After the guest resumes, stream every page still missing in the background. */
  prefetchAll?: boolean;
  /**
   * Read and check every stored page's CRC before the guest runs (a snapshot
   * file only), so a corrupted snapshot is refused before any vCPU exists.
   * Default false: that is reading the whole file first, which is not lazy.
   * Either way every page is checked as it is installed: a corrupt page is
   * never mapped, and the VM stops when the guest touches it.
   */
  verifyFirst?: boolean;
  /** Source reads in flight at once (the pager's default: 64). */
  maxInFlight?: number;
  /**
   * Pages already in guest RAM (a live migration's pre-copy put them there):
   * they are present for the pager, never fetched. Default: none.
   */
  presentPages?: PageBits;
}

export interface LazyMemoryReport {
  /** Guest RAM in pages. */
  guestPages: number;
  /** Pages the source stores (those not known to be zero): what a complete restore fills. */
  snapshotDataPages: number;
  /** Of those, the ones not yet in guest memory (0: prefetch-all or complete() is done). */
  storedPagesPending: number;
  pages: PageCounts;
  metrics: PagerMetricsSnapshot;
  /** µs each faulting thread (by thread id) spent blocked on missing pages (the VMM maps them to vCPUs). */
  blocktimeByThread: Record<string, number>;
  /** Every stored page present and the pager detached (memory is ordinary memory now). */
  complete: boolean;
  /** ms from start() to completion, when complete. */
  completedMs?: number;
  verifyMs?: number;
  /**
   * Errors of fills that landed after guest memory was released (a page
   * could not be supplied and the VM is stopping): the reads still out when
   * the range was unregistered find it gone (UFFDIO_COPY: ENOENT). Those
   * pages no longer matter; they are counted here, not reported.
   */
  droppedAfterRelease: number;
}

export class LazyGuestMemory {
  private readonly started = performance.now();
  private detached = false;
  private detaching: Promise<void> | undefined;
  private released = false;
  private completedMs: number | undefined;
  private completion: Promise<void> | undefined;
  private finalMetrics: PagerMetricsSnapshot | undefined;
  private finalPages: PageCounts | undefined;
  private finalPending: number | undefined;
  private finalBlocktime: Map<number, number> | undefined;
  verifyMs: number | undefined;
  private readonly dataPages: number;
  private streaming = false;
  private droppedAfterRelease = 0;
  private failure: GuestMemoryUnavailableError | undefined;
  private readonly completeWaiters: Array<{ resolve: () => void; reject: (error: Error) => void }> = [];

  private constructor(
    private readonly memory: GuestMemory,
    private readonly host: PagerHost,
  ) {
    this.dataPages = host.pager.pendingPages;
  }

  /**
   * Register guest RAM and start serving it from `source` (which this object
   * now owns and closes). `onFailure` gets the first page the source could
   * not supply (its vCPU got an error, not data): the VMM must stop its vCPUs.
   */
  static start(memory: GuestMemory, source: PageSource, options: LazyRestoreOptions, onFailure: (error: GuestMemoryUnavailableError) => void): LazyGuestMemory {
    // REMOVE: a page given back while registered (a balloon's MADV_DONTNEED/MADV_REMOVE) becomes a discarded page
    // for the pager, read as zero from then on: without it a page discarded before it arrived stays "missing",
    // and the source's copy (a post-copy push, a fetch in flight) would be installed over what the guest gave up.
    // Such a discard waits in madvise until this thread reads the event, so it is never issued from this thread
    // but from another (a vCPU's) or with Mapping.discardAsync (docs/migration.md, "Discards").
    // No UNMAP or REMAP: the VMM never unmaps or remaps guest RAM while it is registered (and with EVENT_UNMAP a
    // munmap would wait for us to read it). THREAD_ID: each fault names its thread, so the time each vCPU spends
    // blocked on pages is known.
    const uffd = Userfaultfd.open({ features: ['EVENT_REMOVE'], optionalFeatures: ['THREAD_ID'], userModeOnly: false });
    const registered: GuestMemory['regions'][number][] = [];
    let lazy: LazyGuestMemory | undefined;
    try {
      for (const region of memory.regions) {
        uffd.register(region.hostAddress, region.lengthBytes, ['MISSING']);
        registered.push(region);
      }
      let early: Error | undefined;
      const fail = (error: Error): void => {
        if (!lazy) {
          early ??= error;
          return;
        }
        if (lazy.failure) return;
        const failure = new GuestMemoryUnavailableError(source.description, error);
        lazy.failure = failure;
        for (const waiter of lazy.completeWaiters.splice(0)) waiter.reject(failure);
        onFailure(failure);
      };
      const host = PagerHost.start(
        {
          uffd,
          source,
          regions: memory.regions.map((r) => ({ address: r.hostAddress, lengthBytes: r.lengthBytes, sourceOffset: r.imageOffset })),
          initialStates: options.presentPages ? startingPageStates(source, memory.lengthBytes / PAGE_SIZE, options.presentPages.bytes) : undefined,
          prefetch: options.prefetch,
          maxInFlight: options.maxInFlight,
          maxBackgroundInFlight: STREAM_BACKGROUND_READS,
          unknownFault: 'zero',
          unregisterOnStop: true,
          closeUffd: true,
          closeSource: true,
        },
        {
          // Once released, the reads still in flight land on an unregistered range: nothing there matters any more.
          // Before, an error that did not stop serving (a read to be retried) is a process warning, which the CLI prints.
          error: (error) => {
            if (lazy?.released) lazy.droppedAfterRelease++;
            else process.emitWarning(error);
          },
          // A page the guest cannot have: its vCPU got EFAULT from KVM_RUN, and the VM must not run on.
          poisoned: (_first, _count, error) => fail(error),
          ended: (_reason, error) => error && fail(error),
          complete: () => {
            if (!lazy) return;
            lazy.completedMs ??= performance.now() - lazy.started;
            for (const waiter of lazy.completeWaiters.splice(0)) waiter.resolve();
          },
        },
      );
      lazy = new LazyGuestMemory(memory, host);
      if (early) fail(early);
      return lazy;
    } catch (error) {
      for (const region of registered) uffd.unregister(region.hostAddress, region.lengthBytes);
      uffd.close();
      void source.close?.();
      throw error;
    }
  }

  /**
   * Stream every stored page still missing in the background, in image order,
   * a couple of reads at a time (see STREAM_BACKGROUND_READS). Zero pages are
   * left alone: a fault on one is answered with the zero page, and once the
   * pager detaches an untouched one is ordinary anonymous memory, which reads
   * zero too.
   */
  prefetchAll(): void {
    if (this.detached || this.streaming) return;
    this.streaming = true;
    this.host.pager.prefetchAll();
  }

  /**
   * Fill every stored page still missing and wait until all are present, then
   * detach the pager: guest RAM is ordinary memory from here on (an untouched
   * zero page reads zero as anonymous memory does), so the main thread
   * may read it (a snapshot of a lazily restored VM).
   */
  complete(): Promise<void> {
    this.completion ??= (async () => {
      if (this.detached) return;
      if (this.failure) throw this.failure;
      const pager = this.host.pager;
      if (pager.status !== 'running') throw new GuestMemoryUnavailableError(this.host.source.description, new Error(`the pager stopped (${pager.status}) before guest memory was complete`));
      if (!pager.isComplete) {
        const done = new Promise<void>((resolve, reject) => this.completeWaiters.push({ resolve, reject }));
        this.prefetchAll();
        await done;
      }
      this.completedMs ??= performance.now() - this.started;
      await this.detach();
    })();
    return this.completion;
  }

  /**
   * Let every thread waiting on a page go without serving it (after a failed
   * page, once the vCPUs were told to stop): unregistering wakes the waiters
   * and the pages they retry are ordinary zero-filled memory.
   */
  release(): void {
    if (this.released || this.detached) return;
    this.released = true;
    this.host.unregister();
    for (const waiter of this.completeWaiters.splice(0)) waiter.reject(new GuestMemoryUnavailableError(this.host.source.description, new Error('guest memory was released after a failed page')));
  }

  /** Whether a page's contents are in guest RAM (or need none): filled, zero-filled, discarded, or the pager detached. */
  hasPage(page: number): boolean {
    if (this.detached) return true;
    const state = this.host.pager.states.get(page);
    return state !== PageState.MISSING && state !== PageState.IN_FLIGHT;
  }

  report(): LazyMemoryReport {
    const pager = this.host.pager;
    const report: LazyMemoryReport = {
      guestPages: this.memory.lengthBytes / PAGE_SIZE,
      snapshotDataPages: this.dataPages,
      storedPagesPending: this.finalPending ?? pager.pendingPages,
      pages: this.finalPages ?? pager.pageCounts(),
      metrics: this.finalMetrics ?? pager.snapshotMetrics(),
      blocktimeByThread: Object.fromEntries([...(this.finalBlocktime ?? pager.blocktime())].map(([tid, micros]) => [String(tid), Math.round(micros)])),
      complete: this.completedMs !== undefined && this.detached,
      droppedAfterRelease: this.droppedAfterRelease,
    };
    if (this.completedMs !== undefined) report.completedMs = +this.completedMs.toFixed(1);
    if (this.verifyMs !== undefined) report.verifyMs = +this.verifyMs.toFixed(1);
    return report;
  }

  /** The pager's counters (live while it serves, final after), its gauges, and each faulting thread's blocked µs: for /metrics. */
  metricsView(): { metrics: PagerMetrics; gauges: PagerGauges; blocktimeByThread: ReadonlyMap<number, number> } {
    const pager = this.host.pager;
    return {
      metrics: pager.metrics,
      gauges: { pages: this.finalPages ?? pager.pageCounts(), pendingPages: this.finalPending ?? pager.pendingPages, readsInFlight: this.detached ? 0 : pager.readsInFlight },
      blocktimeByThread: this.finalBlocktime ?? pager.blocktime(),
    };
  }

  /** Guest RAM's page states in at most `maxCells` cells (the dashboard's memory map); as they were when the pager detached, after. */
  pageStates(maxCells: number): PageStateMap {
    return this.host.pager.states.downsample(maxCells);
  }

  /**
   * Stop serving, unregister, close the uffd and the source: the VM is going
   * away and its memory no longer matters. A thread still asleep on a page
   * (a vCPU blocked in KVM_RUN, or the kernel worker of one of its async page
   * faults) is let go at once, before any read in flight settles: the
   * unregister wakes it and its retry finds ordinary anonymous memory (zero),
   * so nothing waits for a page that may never come. Memory may be unmapped
   * once the vCPU threads are gone.
   */
  async stop(): Promise<void> {
    // detach() stops the pager before its first await (no ioctl on the uffd
    // after this line), so the unregister cannot race a fill.
    const detaching = this.detach();
    if (!this.released) {
      this.released = true;
      this.host.unregister();
    }
    // A complete() still waiting would wait for ever: the pages it waits for will not come now.
    for (const waiter of this.completeWaiters.splice(0)) waiter.reject(new GuestMemoryUnavailableError(this.host.source.description, new Error('guest memory was stopped before it was complete')));
    await detaching;
  }

  /** Stop the pager and release what it holds; every caller waits for the one detach (a stop during complete()'s). */
  private detach(): Promise<void> {
    this.detaching ??= (async () => {
      this.detached = true;
      const pager = this.host.pager;
      await this.host.stop();
      this.finalMetrics = pager.snapshotMetrics();
      this.finalPages = pager.pageCounts();
      this.finalPending = pager.pendingPages;
      this.finalBlocktime = pager.blocktime();
    })();
    return this.detaching;
  }
}
