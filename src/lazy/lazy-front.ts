// The front end every lazy memory of this process shares (LazyMemory over a
// mapping of ours, LazyWasmMemory over V8's reservation): one range
// registered MISSING with a uffd of its own, its pager in a worker thread
// (PagerThread), the calls that reach the pager while the memory is open, and
// the order of teardown. Each memory adds only what is its own: how its range
// is made, which uffd features it needs, and what is left of the range after
// close().
import type { PrefetchOptions, SharedPageCache } from '../pager/index.js';
import { Userfaultfd, UserfaultError, type FeatureName } from '../uffd/index.js';
import { PagerThread, type LazyMemoryStats, type PagerStopOptions } from './pager-thread.js';
import type { PagerWorkerReply } from './pager-worker.js';
import type { SourceSpec } from './source-spec.js';
import type { AvailabilityEvent } from '../sources/network/availability.js';
import type { HandlerLostPolicy } from './watchdog.js';

export interface LazyRangeOptions {
  /** The range to serve: host address, bytes, and the image offset it shows. */
  address: number;
  lengthBytes: number;
  sourceOffset: number;
  features: FeatureName[];
  optionalFeatures: FeatureName[];
  userModeOnly?: boolean;
  source: SourceSpec;
  prefetch?: PrefetchOptions | false;
  recordWorkingSet?: boolean;
  replay?: Uint32Array;
  onHandlerLost?: HandlerLostPolicy;
  /** The range is a private mapping of this page cache's memfd: registered MISSING and MINOR, served with CONTINUE. */
  pageCache?: SharedPageCache;
}

export interface LazyRange {
  /** The owner's own reference: faults wait rather than read zero if the pager dies. */
  uffd: Userfaultfd;
  pager: PagerThread;
}

/**
 * Open a uffd, register the range MISSING (and MINOR, over a page cache), and start its pager thread. If a
 * step fails the uffd is closed (the last reference: the kernel unregisters
 * the range) and the error thrown; the range itself is the caller's to drop.
 */
export async function serveLazyRange(options: LazyRangeOptions): Promise<LazyRange> {
  let uffd: Userfaultfd | undefined;
  try {
    const features: FeatureName[] = options.pageCache ? [...options.features, 'MINOR_SHMEM'] : options.features;
    uffd = Userfaultfd.open({ features, optionalFeatures: options.optionalFeatures, userModeOnly: options.userModeOnly });
    uffd.register(options.address, options.lengthBytes, options.pageCache ? ['MISSING', 'MINOR'] : ['MISSING']);
    const pager = await PagerThread.start({
      uffd,
      regions: [{ address: options.address, lengthBytes: options.lengthBytes, sourceOffset: options.sourceOffset }],
      source: options.source,
      prefetch: options.prefetch,
      recordWorkingSet: options.recordWorkingSet,
      replay: options.replay,
      onHandlerLost: options.onHandlerLost,
      pageCache: options.pageCache,
    });
    return { uffd, pager };
  } catch (error) {
    uffd?.close();
    throw error;
  }
}

export abstract class LazyFront {
  private closed = false;

  protected constructor(
    protected readonly uffd: Userfaultfd,
    protected readonly pager: PagerThread,
    /** Names the memory in the error a call after close() rejects with. */
    private readonly what: string,
  ) {}

  /** Errors the pager reported (source failures and the like). */
  get pagerErrors(): readonly PagerWorkerReply[] {
    return this.pager.pagerErrors;
  }

  stats(): Promise<LazyMemoryStats> {
    return this.closed ? this.closedError() : this.pager.stats();
  }

  /**
   * Hear a network source (tcp://, s3://) become unreachable, come back, or
   * be given up (AvailabilityEvent; availabilityLine says it in words).
   * Delivered on this thread's event loop: a thread blocked in a fault on
   * this memory hears of the outage once it is over, so listen on a thread
   * that does not touch it. Returns the function that stops the listener.
   */
  onAvailability(listener: (event: AvailabilityEvent) => void): () => void {
    return this.pager.onAvailability(listener);
  }

  /** Image pages (4 KiB) first demanded so far, in order (needs recordWorkingSet). */
  workingSet(): Promise<Uint32Array> {
    return this.closed ? this.closedError() : this.pager.workingSet();
  }

  /** Fill the rest of the served range in the background. */
  prefetchAll(): void {
    this.pager.prefetchAll();
  }

  /** Fill the rest, resolving once every page is in. */
  fillAll(): Promise<void> {
    return this.closed ? this.closedError() : this.pager.fillAll();
  }

  /**
   * Stop the pager (both threads gone: stop() rejects only once the pager
   * worker has exited), then let go of the range while it is still
   * registered and nobody installs any more (releaseRange), then close the
   * uffd, then whatever the memory does last (afterClose).
   */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    try {
      await this.pager.stop(this.stopOptions());
    } finally {
      try {
        this.releaseRange();
      } finally {
        this.uffd.close();
        this.afterClose();
      }
    }
  }

  /** For tests of the handler-lost policy: end the pager thread abruptly. */
  killPagerForTest(): Promise<void> {
    return this.pager.killPagerForTest();
  }

  protected stopOptions(): PagerStopOptions {
    return {};
  }

  /** The range, pager stopped, still registered: unregister it (and whatever must come first). */
  protected abstract releaseRange(): void;

  protected afterClose(): void {}

  private closedError(): Promise<never> {
    return Promise.reject(new UserfaultError(`${this.what} is closed`));
  }
}
