// Lazy restore of guest RAM: the memory is registered with userfaultfd
// (MISSING mode) and a Pager running in the VMM's main thread fills each page
// from the snapshot the first time anything touches it. The vCPUs run in
// worker threads; their faults on guest RAM are kernel-mode (KVM's emulator
// and get_user_pages), so the uffd must not be USER_MODE_ONLY.
//
// The rule this depends on: the main thread never touches guest memory while
// pages are missing (it is the thread that serves the faults). complete()
// fills everything first for the one place that needs all of it (a snapshot).
//
// Teardown order: stop the pager (after the vCPUs are gone), unregister the
// ranges, close the uffd, and only then may the VMM unmap the memory.
import { PAGE_SIZE } from '../../native.js';
import { PageState, Pager, type PagerMetricsSnapshot, type PrefetchOptions } from '../../pager/index.js';
import { PageKind, type SnapshotFile } from '../../snapshot/index.js';
import { SourceReadError } from '../../sources/page-source.js';
import { SnapshotSource } from '../../sources/snapshot-source.js';
import { Userfaultfd } from '../../uffd/index.js';
import { InvalidVmSnapshotError } from '../errors.js';
import type { GuestMemory } from './guest-memory.js';

/** Background streaming (prefetchAll): pages handed to the pager at a time, and chunks outstanding. */
const STREAM_CHUNK_PAGES = 512;
const STREAM_WINDOW_CHUNKS = 2;

const pending = (state: PageState): boolean => state === PageState.MISSING || state === PageState.IN_FLIGHT;

export interface LazyRestoreOptions {
  /** The pager's read-ahead around a fault (default: 1 page, growing to 64 on sequential faults); false for one page per fault. */
  prefetch?: PrefetchOptions | false;
  /** After the guest resumes, stream every page still missing in the background. */
  prefetchAll?: boolean;
  /**
   * Check every stored page's CRC before the guest runs (default true), so a
   * corrupted snapshot is refused before any vCPU exists. With false the guest
   * resumes at once and pages are checked as they are faulted in: a corrupt
   * page stops the VM (it is never installed).
   */
  verify?: boolean;
  /** Source reads in flight at once (the pager's default: 64). */
  maxInFlight?: number;
}

export interface LazyMemoryReport {
  /** Guest RAM in pages. */
  guestPages: number;
  /** Stored (non-zero) pages in the snapshot. */
  snapshotDataPages: number;
  /** Of those, the ones not yet in guest memory (0: prefetch-all or complete() is done). */
  storedPagesPending: number;
  pages: ReturnType<Pager['pageCounts']>;
  metrics: PagerMetricsSnapshot;
  /** Every stored page present and the pager detached (memory is ordinary memory now). */
  complete: boolean;
  /** ms from start() to completion, when complete. */
  completedMs?: number;
  verifyMs?: number;
}

export class LazyGuestMemory {
  private readonly started = performance.now();
  private detached = false;
  private released = false;
  private completedMs: number | undefined;
  private completion: Promise<void> | undefined;
  private finalMetrics: PagerMetricsSnapshot | undefined;
  private finalPages: ReturnType<Pager['pageCounts']> | undefined;
  verifyMs: number | undefined;
  private readonly dataPages: number;
  private streaming = false;
  /** Image page indices of the pages the snapshot stores (the non-zero ones). */
  private readonly dataPageIndices: Uint32Array;

  private constructor(
    private readonly memory: GuestMemory,
    private readonly source: SnapshotSource,
    private readonly uffd: Userfaultfd,
    readonly pager: Pager,
  ) {
    const { kinds } = source.snapshot.pageTable;
    const indices: number[] = [];
    for (let i = 0; i < kinds.length; i++) if (kinds[i] === PageKind.data) indices.push(i);
    this.dataPageIndices = Uint32Array.from(indices);
    this.dataPages = indices.length;
  }

  /**
   * Register guest RAM and start serving it from `file` (which this object
   * now owns and closes). `onFailure` gets the first page the snapshot could
   * not supply (corrupt or unreadable): the VMM must stop its vCPUs and call
   * release() so a vCPU waiting on that page is let go.
   */
  static start(memory: GuestMemory, file: SnapshotFile, options: LazyRestoreOptions, onFailure: (error: InvalidVmSnapshotError) => void): LazyGuestMemory {
    const source = new SnapshotSource(file);
    // No non-cooperative events: the VMM never unmaps or remaps guest RAM while it
    // is registered (and with EVENT_UNMAP a munmap would wait for us to read it).
    const uffd = Userfaultfd.open({ features: [], userModeOnly: false });
    const registered: GuestMemory['regions'][number][] = [];
    try {
      for (const region of memory.regions) {
        uffd.register(region.hostAddress, region.lengthBytes, ['MISSING']);
        registered.push(region);
      }
      const pager = new Pager({
        uffd,
        source,
        regions: memory.regions.map((r) => ({ address: r.hostAddress, lengthBytes: r.lengthBytes, sourceOffset: r.imageOffset })),
        prefetch: options.prefetch,
        maxInFlight: options.maxInFlight,
        // A CRC mismatch does not go away on a second read; an I/O error is as fatal to a VM.
        sourceRetries: 0,
        unknownFault: 'zero',
      });
      const lazy = new LazyGuestMemory(memory, source, uffd, pager);
      let failed = false;
      pager.on('error', (error) => {
        if (failed) return;
        if (!(error instanceof SourceReadError)) {
          process.emitWarning(error);
          return;
        }
        failed = true;
        const cause = (error.cause as Error | undefined)?.message ?? error.message;
        onFailure(new InvalidVmSnapshotError(file.path, `guest page at image offset 0x${error.offset.toString(16)}: ${cause}`, { cause: error }));
      });
      pager.start();
      return lazy;
    } catch (error) {
      for (const region of registered) uffd.unregister(region.hostAddress, region.lengthBytes);
      uffd.close();
      void source.close();
      throw error;
    }
  }

  /**
   * Stream every stored page still missing in the background, in image order.
   * Zero pages are left alone: a fault on one is answered with the zero page,
   * and once the pager detaches an untouched one is ordinary anonymous
   * memory, which reads zero too.
   *
   * The pages go to the pager a window at a time. Queued all at once, the
   * background reads fill the pager's in-flight slots and libuv's four
   * threadpool threads, and a vCPU's demand fault waits behind all of them
   * (measured on a 256 MiB guest: 9-15 ms per fault); two chunks of 2 MiB
   * outstanding keep it a few reads behind (0.7-2 ms, most of the few faults
   * being on pages already in flight) at about the same streaming rate.
   */
  prefetchAll(): void {
    if (this.detached || this.streaming) return;
    this.streaming = true;
    const missing = this.dataPageIndices.filter((index) => this.pager.states.get(index) === PageState.MISSING);
    const chunks: Uint32Array[] = [];
    for (let at = 0; at < missing.length; at += STREAM_CHUNK_PAGES) chunks.push(missing.subarray(at, at + STREAM_CHUNK_PAGES));
    const outstanding: Uint32Array[] = [];
    const step = (): void => {
      if (this.detached || this.released || this.pager.status !== 'running') return;
      while (outstanding.length > 0 && outstanding[0]!.every((index) => !pending(this.pager.states.get(index)))) outstanding.shift();
      while (outstanding.length < STREAM_WINDOW_CHUNKS && chunks.length > 0) {
        const chunk = chunks.shift()!;
        outstanding.push(chunk);
        this.pager.prefetchPages(chunk);
      }
      if (outstanding.length > 0) setTimeout(step, 1);
    };
    step();
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
      this.prefetchAll();
      for (;;) {
        if (this.pager.status !== 'running') throw new InvalidVmSnapshotError(this.source.snapshot.path, `the pager stopped (${this.pager.status}) before guest memory was complete`);
        if (this.released) throw new InvalidVmSnapshotError(this.source.snapshot.path, 'guest memory was released after a failed page');
        if (this.storedPagesPending() === 0) break;
        await new Promise((r) => setTimeout(r, 2));
      }
      this.completedMs = performance.now() - this.started;
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
    this.unregister();
  }

  report(): LazyMemoryReport {
    const metrics = this.finalMetrics ?? this.pager.snapshotMetrics();
    const pages = this.finalPages ?? this.pager.pageCounts();
    const report: LazyMemoryReport = {
      guestPages: this.memory.lengthBytes / PAGE_SIZE,
      snapshotDataPages: this.dataPages,
      storedPagesPending: this.storedPagesPending(),
      pages,
      metrics,
      complete: this.completedMs !== undefined,
    };
    if (this.completedMs !== undefined) report.completedMs = +this.completedMs.toFixed(1);
    if (this.verifyMs !== undefined) report.verifyMs = +this.verifyMs.toFixed(1);
    return report;
  }

  /** Stop serving (the vCPUs must be gone), unregister, close the uffd and the snapshot. Memory may be unmapped after. */
  async stop(): Promise<void> {
    await this.detach();
  }

  private async detach(): Promise<void> {
    if (this.detached) return;
    this.detached = true;
    await this.pager.stop();
    this.finalMetrics = this.pager.snapshotMetrics();
    this.finalPages = this.pager.pageCounts();
    if (!this.released) this.unregister();
    this.uffd.close();
    await this.source.close();
  }

  /** Stored pages not yet in guest memory (zero pages need no filling: see prefetchAll). */
  private storedPagesPending(): number {
    let count = 0;
    for (const index of this.dataPageIndices) if (pending(this.pager.states.get(index))) count++;
    return count;
  }

  private unregister(): void {
    for (const region of this.memory.regions) this.uffd.unregister(region.hostAddress, region.lengthBytes);
  }
}

