// Memory of this process that fills itself on first touch from a page source.
//
// The rule: the pager runs in its own worker thread and never waits on the
// thread it serves. The owning thread touches the memory and sleeps in the
// kernel until the worker resolves the fault; if the pager ran on the owning
// thread, the first fault would deadlock it. The worker, the watchdog and
// their teardown are PagerThread's (shared with LazyWasmMemory).
import { Mapping } from '../mem/mapping.js';
import { native } from '../native.js';
import type { PrefetchOptions } from '../pager/index.js';
import { Userfaultfd, UserfaultError, type FeatureName } from '../uffd/index.js';
import type { PagerWorkerReply } from './pager-worker.js';
import { PagerThread, type LazyMemoryStats } from './pager-thread.js';
import { imageSizeBytes, type SourceSpec } from './source-spec.js';
import type { HandlerLostPolicy } from './watchdog.js';

export type { LazyMemoryStats } from './pager-thread.js';

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

const FEATURES: FeatureName[] = ['EVENT_REMOVE', 'EVENT_UNMAP', 'EVENT_REMAP'];
const OPTIONAL: FeatureName[] = ['THREAD_ID', 'POISON'];

export class LazyMemory {
  private closed = false;

  private constructor(
    readonly mapping: Mapping,
    /** The owner's own reference: faults freeze rather than zero-fill if the pager dies. */
    private readonly uffd: Userfaultfd,
    private readonly pager: PagerThread,
  ) {}

  static async create(options: LazyMemoryOptions): Promise<LazyMemory> {
    const sourceOffset = options.sourceOffset ?? 0;
    const sizeBytes = options.sizeBytes ?? (await imageSizeBytes(options.source)) - sourceOffset;
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
      const pager = await PagerThread.start({
        uffd,
        regions: [{ address: mapping.address, lengthBytes: sizeBytes, sourceOffset }],
        source: options.source,
        prefetch: options.prefetch,
        recordWorkingSet: options.recordWorkingSet,
        replay: options.replay,
        onHandlerLost: options.onHandlerLost,
      });
      return new LazyMemory(mapping, uffd, pager);
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
    return this.pager.pagerErrors;
  }

  stats(): Promise<LazyMemoryStats> {
    return this.closed ? closedError() : this.pager.stats();
  }

  /** Image pages first demanded so far, in order (needs recordWorkingSet). */
  workingSet(): Promise<Uint32Array> {
    return this.closed ? closedError() : this.pager.workingSet();
  }

  /** Fill the rest in the background. */
  prefetchAll(): void {
    this.pager.prefetchAll();
  }

  /** Fill the rest, resolving once every page is in. */
  fillAll(): Promise<void> {
    return this.closed ? closedError() : this.pager.fillAll();
  }

  /** Stop the pager and unmap the memory; views of it must not be used after. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    try {
      await this.pager.stop();
    } finally {
      // Unregister before munmap: with EVENT_UNMAP registered, munmap waits until
      // a handler reads the UNMAP event, and the pager has just stopped.
      try {
        this.uffd.unregister(this.mapping.address, this.mapping.lengthBytes);
      } finally {
        this.uffd.close();
        this.mapping.unmap();
      }
    }
  }

  /** For tests of the handler-lost policy: end the pager thread abruptly. */
  killPagerForTest(): Promise<void> {
    return this.pager.killPagerForTest();
  }
}

function closedError(): Promise<never> {
  return Promise.reject(new UserfaultError('lazy memory is closed'));
}
