// The owner's side of a pager that runs in its own worker thread, and of the
// watchdog that applies the handler-lost policy if that thread dies. Every
// kind of lazy memory in this process (LazyMemory over a mapping of ours,
// LazyWasmMemory over V8's reservation) starts, asks and stops its pager
// through this, so the worker protocol and the teardown order live once.
//
// The rule: the pager never runs on, nor waits on, a thread that touches the
// memory it serves — that thread sleeps in the kernel on a fault until the
// pager answers.
//
// File descriptors: the owner keeps its own reference to the uffd (so a dead
// pager means faults wait, never read zero) and hands a duplicate to each
// thread. The pager worker closes its duplicate when it stops; a duplicate
// whose thread ended without closing it (the watchdog always, a pager that
// died) is closed here once that thread has exited, so close() leaves none.
// A page cache's share (its descriptor and view count) goes the same way.
//
// Teardown order (stop()):
//   1. the watchdog ends first: the pager's stopping closes its lifeline,
//      which the watchdog would otherwise take for the handler's death
//   2. the pager stops (no ioctl after this), optionally zero-filling pages
//      known to read zero, and closes its duplicate
//   3. the worker threads are gone; the owner then unregisters its ranges and
//      closes its own reference (its business: see LazyMemory, LazyWasmMemory)
import { MessageChannel, Worker } from 'node:worker_threads';
import { native } from '../native.js';
import { SharedPageCache, type PageCacheHandle, type PageCounts, type PagerMetricsSnapshot, type PagerRegion, type PrefetchOptions } from '../pager/index.js';
import { UserfaultError, type Userfaultfd } from '../uffd/index.js';
import type { PagerWorkerData, PagerWorkerReply, PagerWorkerRequest } from './pager-worker.js';
import type { SourceSpec } from './source-spec.js';
import type { AvailabilityEvent } from '../sources/network/availability.js';
import type { HandlerLostPolicy, WatchdogWorkerData } from './watchdog.js';

export interface PagerThreadOptions {
  /** The owner's uffd, its ranges already registered; the threads get duplicates. */
  uffd: Userfaultfd;
  regions: PagerRegion[];
  source: SourceSpec;
  prefetch?: PrefetchOptions | false;
  recordWorkingSet?: boolean;
  /** Image pages to stream in the background, in order, after start (a recorded working set). */
  replay?: Uint32Array;
  /** What happens to faults if the pager thread dies (default 'poison'). */
  onHandlerLost?: HandlerLostPolicy;
  /** Serve from this shared page cache (zero-copy restore): the worker gets a share of it (its own descriptor). */
  pageCache?: SharedPageCache;
}

export interface LazyMemoryStats {
  metrics: PagerMetricsSnapshot;
  pages: PageCounts;
}

export interface PagerStopOptions {
  /**
   * Before the pager lets go, map the zero page where a page still missing is
   * known to read zero (the source says so, or the application discarded it),
   * so an owner that keeps the memory and poisons every page still missing
   * poisons none that should read zero.
   */
  zeroFillKnownZero?: boolean;
}

export class PagerThread {
  private readonly errors: PagerWorkerReply[] = [];
  private pagerExited = false;
  private stopRequested = false;
  private stopping: Promise<void> | undefined;
  private awaitingReplies = 0;
  private retained: object | undefined;
  private readonly availabilityListeners = new Set<(event: AvailabilityEvent) => void>();

  private constructor(
    private readonly pagerWorker: Worker,
    /** The pager worker's duplicate of the uffd (it closes it when it stops). */
    private readonly pagerFd: number,
    /** The pager worker's share of the page cache (it closes it when it stops). */
    private readonly cacheShare: PageCacheHandle | undefined,
    private readonly watchdog: { worker: Worker; fd: number } | undefined,
  ) {
    pagerWorker.on('message', (reply: PagerWorkerReply) => {
      if (reply.type === 'error') this.errors.push(reply);
      else if (reply.type === 'availability') for (const listener of [...this.availabilityListeners]) listener(reply.event);
    });
    pagerWorker.once('exit', () => (this.pagerExited = true));
  }

  /** Start the pager worker (and the watchdog, unless the policy is 'freeze'); resolves once both serve. */
  static async start(options: PagerThreadOptions): Promise<PagerThread> {
    const { uffd } = options;
    const policy = options.onHandlerLost ?? 'poison';
    const { port1: lifeline, port2: watchdogEnd } = new MessageChannel();
    const regions = options.regions.map((r) => ({ ...r }));
    const started: Array<{ worker: Worker; fd: number }> = [];
    let cacheShare: PageCacheHandle | undefined;
    try {
      cacheShare = options.pageCache?.share();
      const pagerFd = uffd.duplicate();
      const workerData: PagerWorkerData = {
        uffdFd: pagerFd,
        features: [...uffd.features],
        regions,
        source: options.source,
        prefetch: options.prefetch ?? {},
        recordWorkingSet: options.recordWorkingSet ?? false,
        replay: options.replay,
        pageCache: cacheShare,
        lifeline,
      };
      const pagerWorker = new Worker(new URL('./pager-worker.js', import.meta.url), { workerData, transferList: [lifeline] });
      started.push({ worker: pagerWorker, fd: pagerFd });
      // Listen for 'ready' before awaiting anything else: a message nobody listens for is lost.
      const ready = waitFor(pagerWorker, (reply: PagerWorkerReply) => {
        if (reply.type === 'error') throw new UserfaultError(`pager worker failed to start: ${reply.message}`);
        return reply.type === 'ready';
      });
      let watchdog: { worker: Worker; fd: number } | undefined;
      let armed: Promise<unknown> = Promise.resolve();
      if (policy !== 'freeze') {
        const fd = uffd.duplicate();
        const watchdogData: WatchdogWorkerData = { uffdFd: fd, policy, lifeline: watchdogEnd, regions: regions.map(({ address, lengthBytes }) => ({ address, lengthBytes })) };
        const worker = new Worker(new URL('./watchdog-worker.js', import.meta.url), { workerData: watchdogData, transferList: [watchdogEnd] });
        watchdog = { worker, fd };
        started.push(watchdog);
        armed = waitFor(worker, (m: { type: string }) => m.type === 'armed');
      }
      // The owner's listener goes on before unref(): a worker's first 'message'
      // listener refs its port again, and an unclosed lazy memory would then
      // keep the process from ever exiting on its own.
      const thread = new PagerThread(pagerWorker, pagerFd, cacheShare, watchdog);
      await Promise.all([ready, armed]);
      watchdog?.worker.unref();
      pagerWorker.unref();
      return thread;
    } catch (error) {
      // Neither thread serves yet: end both, then close their duplicates (they never close their own here).
      for (const { worker, fd } of started.reverse()) {
        await worker.terminate();
        native.close(fd);
      }
      if (cacheShare) SharedPageCache.release(cacheShare);
      throw error;
    }
  }

  /**
   * Keep `owner` reachable until stop(): a running worker keeps its listeners
   * alive even when unref'd, and this object is one's closure. For an owner
   * whose memory the garbage collector would otherwise unmap while served.
   */
  retain(owner: object): void {
    this.retained = owner;
  }

  /** Errors the pager reported (source failures and the like). */
  get pagerErrors(): readonly PagerWorkerReply[] {
    return this.errors;
  }

  /** Hear the pager's network source become unreachable, come back, or be given up; returns the function that stops the listener. */
  onAvailability(listener: (event: AvailabilityEvent) => void): () => void {
    this.availabilityListeners.add(listener);
    return () => this.availabilityListeners.delete(listener);
  }

  async stats(): Promise<LazyMemoryStats> {
    const reply = await this.request({ type: 'metrics' }, 'metrics');
    if (reply.type !== 'metrics') throw new UserfaultError('unexpected reply');
    return { metrics: reply.metrics, pages: reply.pages };
  }

  /** Image pages first demanded so far, in order (needs recordWorkingSet). */
  async workingSet(): Promise<Uint32Array> {
    const reply = await this.request({ type: 'working-set' }, 'working-set');
    if (reply.type !== 'working-set') throw new UserfaultError('unexpected reply');
    return reply.pages;
  }

  /** Fill the rest in the background. */
  prefetchAll(): void {
    if (this.stopping || this.pagerExited) throw new UserfaultError('the pager is stopped');
    this.pagerWorker.postMessage({ type: 'prefetch-all' } satisfies PagerWorkerRequest);
  }

  /**
   * Fill every page the regions need, and resolve once all are in (pages the
   * source could not supply count as settled: they are poisoned, see stats()).
   */
  async fillAll(): Promise<void> {
    const reply = await this.request({ type: 'fill-all' }, 'filled');
    if (reply.type !== 'filled') throw new UserfaultError('unexpected reply');
    if (!reply.complete) throw new UserfaultError('the pager stopped serving before every page was in');
  }

  /** Stop the watchdog and the pager, in that order; both threads are gone when this resolves. Idempotent. */
  stop(options: PagerStopOptions = {}): Promise<void> {
    this.stopping ??= (async () => {
      if (this.watchdog) {
        // terminate() rather than a message: a watchdog that took over after a
        // pager's death blocks its thread in its poison loop and reads no messages.
        await this.watchdog.worker.terminate();
        native.close(this.watchdog.fd);
      }
      if (!this.pagerExited) {
        this.stopRequested = true;
        await this.awaitReply({ type: 'stop', zeroFillKnownZero: options.zeroFillKnownZero ?? false }, 'stopped');
        await this.pagerWorker.terminate();
      } else if (!this.stopRequested) {
        // The pager thread died without stopping: its duplicate (and cache share) are still open.
        native.close(this.pagerFd);
        if (this.cacheShare) SharedPageCache.release(this.cacheShare);
      }
      this.retained = undefined;
    })();
    return this.stopping;
  }

  /** For tests of the handler-lost policy: end the pager thread abruptly. */
  async killPagerForTest(): Promise<void> {
    await this.pagerWorker.terminate();
  }

  private request(request: PagerWorkerRequest, replyType: PagerWorkerReply['type']): Promise<PagerWorkerReply> {
    if (this.stopping || this.pagerExited) return Promise.reject(new UserfaultError('the pager is stopped'));
    return this.awaitReply(request, replyType);
  }

  /**
   * Post a request and wait for its reply with the worker ref'd meanwhile: the
   * worker is unref'd so an idle lazy memory does not keep the process alive,
   * but a caller awaiting an answer must (else Node ends the process with the
   * await unsettled, exit status 13).
   */
  private async awaitReply(request: PagerWorkerRequest, replyType: PagerWorkerReply['type']): Promise<PagerWorkerReply> {
    const reply = waitFor(this.pagerWorker, (r: PagerWorkerReply) => r.type === replyType);
    if (this.awaitingReplies++ === 0) this.pagerWorker.ref();
    try {
      this.pagerWorker.postMessage(request);
      return await reply;
    } finally {
      if (--this.awaitingReplies === 0) this.pagerWorker.unref();
    }
  }
}

function waitFor<T>(worker: Worker, accept: (message: T) => boolean): Promise<T> {
  return new Promise((resolve, reject) => {
    const onMessage = (message: T): void => {
      try {
        if (!accept(message)) return;
      } catch (error) {
        cleanup();
        reject(error);
        return;
      }
      cleanup();
      resolve(message);
    };
    const onExit = (code: number): void => {
      cleanup();
      reject(new UserfaultError(`worker exited (code ${code}) before answering`));
    };
    const onError = (error: Error): void => {
      cleanup();
      reject(error);
    };
    const cleanup = (): void => {
      worker.off('message', onMessage);
      worker.off('exit', onExit);
      worker.off('error', onError);
    };
    worker.on('message', onMessage);
    worker.on('exit', onExit);
    worker.on('error', onError);
  });
}
