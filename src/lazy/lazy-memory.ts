// Memory of this process that fills itself on first touch from a page source.
//
// The rule: the pager runs in its own worker thread and never waits on the
// thread it serves. The owning thread touches the memory and sleeps in the
// kernel until the worker resolves the fault; if the pager ran on the owning
// thread, the first fault would deadlock it.
import { MessageChannel, Worker } from 'node:worker_threads';
import { Mapping } from '../mem/mapping.js';
import { native } from '../native.js';
import type { PagerMetricsSnapshot, PrefetchOptions } from '../pager/index.js';
import { Userfaultfd, UserfaultError, type FeatureName } from '../uffd/index.js';
import type { PagerWorkerData, PagerWorkerReply, PagerWorkerRequest } from './pager-worker.js';
import { openSource, type SourceSpec } from './source-spec.js';
import type { HandlerLostPolicy, WatchdogWorkerData } from './watchdog.js';

export interface LazyMemoryOptions {
  source: SourceSpec;
  /** Bytes of memory (default: the whole image); a multiple of the page size. */
  sizeBytes?: number;
  /** Image offset the memory starts at (default 0). */
  sourceOffset?: number;
  prefetch?: PrefetchOptions | false;
  recordWorkingSet?: boolean;
  /** Image pages to stream in the background, in order, after start (a recorded working set). */
  replay?: Uint32Array;
  /** What happens to faults if the pager thread dies (default 'poison'). */
  onHandlerLost?: HandlerLostPolicy;
  /** UFFD_USER_MODE_ONLY: kernel accesses (read(2) into the memory, O_DIRECT) get EFAULT instead of a fault. */
  userModeOnly?: boolean;
}

export interface LazyMemoryStats {
  metrics: PagerMetricsSnapshot;
  pages: { missing: number; inFlight: number; present: number; discarded: number; unmapped: number };
}

const FEATURES: FeatureName[] = ['EVENT_REMOVE', 'EVENT_UNMAP', 'EVENT_REMAP'];
const OPTIONAL: FeatureName[] = ['THREAD_ID', 'POISON'];

export class LazyMemory {
  private closed = false;
  private readonly errors: PagerWorkerReply[] = [];

  private constructor(
    readonly mapping: Mapping,
    /** The owner's own reference: faults freeze rather than zero-fill if the pager dies. */
    private readonly uffd: Userfaultfd,
    private readonly pagerWorker: Worker,
    private readonly watchdog: Worker | undefined,
  ) {
    pagerWorker.on('message', (reply: PagerWorkerReply) => {
      if (reply.type === 'error') this.errors.push(reply);
    });
  }

  static async create(options: LazyMemoryOptions): Promise<LazyMemory> {
    const sourceOffset = options.sourceOffset ?? 0;
    const sizeBytes = options.sizeBytes ?? (await imageSize(options.source)) - sourceOffset;
    const mapping = Mapping.anonymous(sizeBytes, { noReserve: true });
    let uffd: Userfaultfd | undefined;
    try {
      // A child forked without exec would inherit this range without the uffd
      // (no EVENT_FORK is asked for: every spawn would then wait on the pager
      // and leave it a child pager to serve until it stops) and read every
      // page not yet filled as ZERO. MADV_DONTFORK leaves the range out of the
      // child instead: a touch there faults loudly (SIGSEGV), never reads zero.
      // exec'd children (child_process) never see it either way.
      mapping.madvise(0, sizeBytes, native.constants.MADV_DONTFORK);
      uffd = Userfaultfd.open({ features: FEATURES, optionalFeatures: OPTIONAL, userModeOnly: options.userModeOnly });
      uffd.register(mapping.address, sizeBytes, ['MISSING']);
      const policy = options.onHandlerLost ?? 'poison';
      const { port1: lifeline, port2: watchdogEnd } = new MessageChannel();
      const features = [...uffd.features];
      const workerData: PagerWorkerData = {
        uffdFd: uffd.duplicate(),
        features,
        regions: [{ address: mapping.address, lengthBytes: sizeBytes, sourceOffset }],
        source: options.source,
        prefetch: options.prefetch ?? {},
        recordWorkingSet: options.recordWorkingSet ?? false,
        replay: options.replay,
        lifeline,
      };
      const pagerWorker = new Worker(new URL('./pager-worker.js', import.meta.url), { workerData, transferList: [lifeline] });
      // Listen for 'ready' before awaiting anything else: a message nobody listens for is lost.
      const ready = waitFor(pagerWorker, (reply: PagerWorkerReply) => {
        if (reply.type === 'error') throw new UserfaultError(`pager worker failed to start: ${reply.message}`);
        return reply.type === 'ready';
      });
      let watchdog: Worker | undefined;
      let armed: Promise<unknown> = Promise.resolve();
      if (policy !== 'freeze') {
        const watchdogData: WatchdogWorkerData = { uffdFd: uffd.duplicate(), policy, lifeline: watchdogEnd, regions: [{ address: mapping.address, lengthBytes: sizeBytes }] };
        watchdog = new Worker(new URL('./watchdog-worker.js', import.meta.url), { workerData: watchdogData, transferList: [watchdogEnd] });
        watchdog.unref();
        armed = waitFor(watchdog, (m: { type: string }) => m.type === 'armed');
      }
      await Promise.all([ready, armed]);
      pagerWorker.unref();
      return new LazyMemory(mapping, uffd, pagerWorker, watchdog);
    } catch (error) {
      uffd?.close();
      mapping.unmap();
      throw error;
    }
  }

  get address(): number {
    return this.mapping.address;
  }

  get sizeBytes(): number {
    return this.mapping.lengthBytes;
  }

  /** The memory as an ArrayBuffer; a first touch of a page blocks this thread until the pager fills it. */
  get buffer(): ArrayBuffer {
    return this.mapping.buffer();
  }

  bytes(offset = 0, length?: number): Uint8Array {
    return this.mapping.bytes(offset, length);
  }

  /** Errors the pager reported (source failures and the like). */
  get pagerErrors(): readonly PagerWorkerReply[] {
    return this.errors;
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
    this.pagerWorker.postMessage({ type: 'prefetch-all' } satisfies PagerWorkerRequest);
  }

  /** Stop the pager and unmap the memory; views of it must not be used after. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.watchdog) {
      this.watchdog.postMessage({ type: 'disarm' });
      await new Promise((resolve) => this.watchdog!.once('exit', resolve));
    }
    await this.request({ type: 'stop' }, 'stopped');
    await this.pagerWorker.terminate();
    // Unregister before munmap: with EVENT_UNMAP registered, munmap waits until
    // a handler reads the UNMAP event, and the pager has just stopped.
    this.uffd.unregister(this.mapping.address, this.mapping.lengthBytes);
    this.uffd.close();
    this.mapping.unmap();
  }

  /** For tests of the handler-lost policy: end the pager thread abruptly. */
  async killPagerForTest(): Promise<void> {
    await this.pagerWorker.terminate();
  }

  private request(request: PagerWorkerRequest, replyType: PagerWorkerReply['type']): Promise<PagerWorkerReply> {
    if (this.closed && request.type !== 'stop') return Promise.reject(new UserfaultError('lazy memory is closed'));
    const reply = waitFor(this.pagerWorker, (r: PagerWorkerReply) => r.type === replyType);
    this.pagerWorker.postMessage(request);
    return reply;
  }
}

async function imageSize(spec: SourceSpec): Promise<number> {
  if (spec.kind === 'zero') return spec.sizeBytes;
  if (spec.kind === 'buffer') return spec.buffer.byteLength;
  const source = await openSource(spec);
  try {
    return source.sizeBytes;
  } finally {
    await source.close?.();
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

