// Memory of this process that fills itself on first touch from a page source.
//
// The rule: the pager runs in its own worker thread and never waits on the
// thread it serves. The owning thread touches the memory and sleeps in the
// kernel until the worker resolves the fault; if the pager ran on the owning
// thread, the first fault would deadlock it. The worker, the watchdog and
// their teardown are PagerThread's, and the front end (the uffd, the calls
// that reach the pager, the order of close) LazyFront's, both shared with
// LazyWasmMemory.
import { Mapping } from '../mem/mapping.js';
import { native } from '../native.js';
import { PageCacheMismatchError, SharedPageCache, type PrefetchOptions } from '../pager/index.js';
import type { FeatureName, Userfaultfd } from '../uffd/index.js';
import { LazyFront, serveLazyRange } from './lazy-front.js';
import type { PagerThread } from './pager-thread.js';
import { checkSourceSpec, imageName, imageSizeBytes, type SourceSpec } from './source-spec.js';
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
  /**
   * Zero-copy restore: share this page cache (createPageCache) between the
   * restores of one image. The memory is then a private mapping of the
   * cache's memfd: each page is read and checked once, by whichever restore
   * touches it first, and every restore maps it from the cache (MINOR faults,
   * UFFDIO_CONTINUE) instead of copying it. Stores copy the page (the
   * kernel's copy-on-write) and never reach the cache. Wins where memory is
   * read more than written and one image is restored many times; a first
   * restore, or memory mostly written, is faster without (docs/bench.md).
   */
  pageCache?: SharedPageCache;
}

/**
 * A page cache for `source`'s image, to share between its restores
 * (LazyMemoryOptions.pageCache). It takes memory only as pages are filled, and
 * lives until it is closed and every restore that used it is closed.
 */
export async function createPageCache(source: SourceSpec): Promise<SharedPageCache> {
  checkSourceSpec(source);
  const name = imageName(source);
  if (name === undefined) throw new PageCacheMismatchError(`a page cache is kept per named image (a snapshot, a raw file, a page server, an object); a ${source.kind} source has no name`);
  const sizeBytes = await imageSizeBytes(source);
  return SharedPageCache.forImage(sizeBytes, name);
}

const FEATURES: FeatureName[] = ['EVENT_REMOVE', 'EVENT_UNMAP', 'EVENT_REMAP'];
const OPTIONAL: FeatureName[] = ['THREAD_ID', 'POISON'];

/** close() stops the pager and unmaps the memory; views of it must not be used after. */
export class LazyMemory extends LazyFront {
  private constructor(
    readonly mapping: Mapping,
    /** The owner's own reference: faults freeze rather than zero-fill if the pager dies. */
    uffd: Userfaultfd,
    pager: PagerThread,
  ) {
    super(uffd, pager, 'lazy memory');
  }

  static async create(options: LazyMemoryOptions): Promise<LazyMemory> {
    checkSourceSpec(options.source);
    const sourceOffset = options.sourceOffset ?? 0;
    const { pageCache } = options;
    if (pageCache) {
      const name = imageName(options.source);
      if (name !== pageCache.image) throw new PageCacheMismatchError(`the page cache holds ${pageCache.image}, not ${name ?? `a ${options.source.kind} source`}`);
    }
    const sizeBytes = options.sizeBytes ?? (await imageSizeBytes(options.source)) - sourceOffset;
    const mapping = pageCache ? pageCache.mapPrivate(sourceOffset, sizeBytes) : Mapping.anonymous(sizeBytes, { noReserve: true });
    try {
      // A child forked without exec would inherit this range without the uffd
      // (no EVENT_FORK is asked for: every spawn would then wait on the pager
      // and leave it a child pager to serve until it stops) and read every
      // page not yet filled as ZERO. MADV_DONTFORK leaves the range out of the
      // child instead: a touch there faults loudly (SIGSEGV), never reads zero.
      // exec'd children (child_process) never see it either way.
      mapping.madvise(0, sizeBytes, native.constants.MADV_DONTFORK);
      const { uffd, pager } = await serveLazyRange({ ...options, pageCache, address: mapping.address, lengthBytes: sizeBytes, sourceOffset, features: FEATURES, optionalFeatures: OPTIONAL });
      return new LazyMemory(mapping, uffd, pager);
    } catch (error) {
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

  protected override releaseRange(): void {
    // Unregister before munmap: with EVENT_UNMAP registered, munmap waits until
    // a handler reads the UNMAP event, and the pager has just stopped.
    this.uffd.unregister(this.mapping.address, this.mapping.lengthBytes);
  }

  protected override afterClose(): void {
    this.mapping.unmap();
  }
}
