// One image's checked pages kept in a memfd's page cache, shared by every
// restore of that image in this process: the zero-copy restore.
//
// A restore maps the memfd MAP_PRIVATE and registers it MISSING and MINOR. A
// page not yet in the cache faults MISSING: the pager reads it from the source
// (checked, as always), writes it into the cache once, and maps it with
// UFFDIO_CONTINUE. A page some restore already put there faults MINOR and is
// mapped with CONTINUE at once: no read, no copy by us. A page whose first
// touch is a store is copied into place instead (UFFDIO_COPY): the store
// would copy it anyway, and the copy saves its second fault. A store to a
// mapped page takes a copy-on-write fault in the kernel. Either way it lands
// in the restore's own anonymous page, so no restore's writes ever reach the
// cache or another restore (the kernel maps cache pages read-only into a
// private mapping).
//
// Why MINOR, not MISSING alone (which would let the kernel map cached pages
// with no round trip at all): a page is in the page cache, visible to faults,
// before its bytes are. A write into the memfd whose copy faults on its source
// (shmem_write_end) publishes the page zero-filled, uptodate and unlocked, and
// writes the bytes on a second try; a fault in between maps zeros. The bench's
// C prototype showed it (a few pages in 65,536 read zero). With MINOR
// registered the kernel maps no cache page on its own: every first touch asks
// the pager, which maps only pages whose `filled` bit it set after their bytes
// were in.
//
// Threads: each restore's pager runs in a worker of its own, so the filled
// bits live in a SharedArrayBuffer (set with Atomics after the bytes are
// written) and each thread has its own descriptor of the memfd: share() makes
// one in the owner's thread, the worker adopt()s it, and the owner release()s
// it if the worker died without closing it (as with a uffd's duplicate). Two
// pagers filling one page at once both write the same checked bytes; neither
// maps it before its own write is done.
//
// The memfd never grows or shrinks (sealed so from the start: a truncation
// would take pages from under every restore). Fills are pwrite(2)s: the
// kernel copies into the page cache, and this process maps none of it (a
// copy through a mapping of ours costs a page fault per page first, which
// doubled a whole first restore on this machine). Before the memfd goes
// to another process (serve's clients), sealForSharing() forbids every
// write, by write(2), a new shared writable mapping or a hole punched, by
// anyone (F_SEAL_FUTURE_WRITE); from then on fills are copies into the one
// writable mapping made before that seal, the cache's view, each run
// populated in one madvise first.
import { ftruncateSync, readSync, writeSync } from 'node:fs';
import { ERRNO } from '../errno.js';
import { UserfaultError } from '../errors.js';
import { Mapping } from '../mem/mapping.js';
import { PAGE_SIZE, native } from '../native.js';
import { wrapNative } from '../uffd/errors.js';

const C = native.constants;

/**
 * What crosses to a pager's thread (share()): a descriptor of the memfd of its
 * own and one count of the view's users, both the adopter's to give back
 * (close()), or the sharer's if the adopter never did (release()).
 */
export interface PageCacheHandle {
  fd: number;
  sizeBytes: number;
  /** One bit a page, set once the page's checked bytes are in the memfd. */
  filled: SharedArrayBuffer;
  /** Two Int32s: the caches of this process open on the memfd (the last to close unmaps the view); 1 once sealed against writes. */
  users: SharedArrayBuffer;
  /** The writable view of the memfd (mapped before the seal), in this process. */
  viewAddress: number;
  /** The image the cache holds (a path, a URL): restores of another image are refused. */
  image: string;
}

/** A page cache used for an image or a size it was not made for. */
export class PageCacheMismatchError extends UserfaultError {
  override readonly code = 'EPAGECACHE_MISMATCH';
}

/** Int32 slots of PageCacheHandle.users. */
const USERS = 0;
const SEALED = 1;
const MADV_POPULATE_WRITE = 23;

export class SharedPageCache {
  private readonly bits: Uint8Array;
  /** USERS and SEALED. */
  private readonly users: Int32Array;
  private readonly view: Uint8Array;
  private closed = false;

  private constructor(
    /** This thread's own descriptor of the memfd (closed by close()). */
    private readonly descriptor: number,
    private readonly handleValue: PageCacheHandle,
  ) {
    this.bits = new Uint8Array(handleValue.filled);
    this.users = new Int32Array(handleValue.users);
    this.view = new Uint8Array(native.arrayBufferAt(handleValue.viewAddress, handleValue.sizeBytes));
  }

  /** An empty cache for an image of `sizeBytes` (whole pages), named by `image`. Pages take memory only as they are filled. */
  static create(sizeBytes: number, image: string): SharedPageCache {
    if (!Number.isSafeInteger(sizeBytes) || sizeBytes <= 0 || sizeBytes % PAGE_SIZE !== 0) {
      throw new RangeError(`a page cache of ${sizeBytes} bytes is not a positive number of whole pages`);
    }
    const fd = wrapNative(() => native.memfdCreate(`userfault-cache:${image}`.slice(0, 249), C.MFD_CLOEXEC | C.MFD_ALLOW_SEALING));
    let viewAddress: number | undefined;
    try {
      ftruncateSync(fd, sizeBytes);
      viewAddress = wrapNative(() => native.mmap(0, sizeBytes, C.PROT_READ | C.PROT_WRITE, C.MAP_SHARED, fd, 0));
      wrapNative(() => native.addSeals(fd, C.F_SEAL_SHRINK | C.F_SEAL_GROW));
    } catch (error) {
      if (viewAddress !== undefined) native.munmap(viewAddress, sizeBytes);
      native.close(fd);
      throw error;
    }
    const users = new SharedArrayBuffer(8);
    new Int32Array(users)[USERS] = 1;
    const filled = new SharedArrayBuffer(Math.ceil(sizeBytes / PAGE_SIZE / 8));
    return new SharedPageCache(fd, { fd, sizeBytes, filled, users, viewAddress, image });
  }

  /**
   * A cache for an image of `imageSizeBytes`, whole pages or not (the
   * pager's page count: the last page partly past the image's end), named
   * by `image`.
   */
  static forImage(imageSizeBytes: number, image: string): SharedPageCache {
    return SharedPageCache.create(Math.ceil(imageSizeBytes / PAGE_SIZE) * PAGE_SIZE, image);
  }

  /**
   * A reference to this cache for another thread of this process: a
   * descriptor of its own and a count of the view's users, which the other
   * thread takes with adopt() and gives back with close(). If it never does
   * (its thread died), the sharer gives them back with release().
   */
  share(): PageCacheHandle {
    this.assertOpen();
    const fd = wrapNative(() => native.dup(this.descriptor));
    Atomics.add(this.users, USERS, 1);
    return { ...this.handleValue, fd };
  }

  /** The cache a share() made, in the thread it was made for: this object owns the handle's descriptor and count. */
  static adopt(handle: PageCacheHandle): SharedPageCache {
    if (!(handle.filled instanceof SharedArrayBuffer) || handle.filled.byteLength * 8 < handle.sizeBytes / PAGE_SIZE || !(handle.users instanceof SharedArrayBuffer) || handle.users.byteLength < 8) {
      throw new PageCacheMismatchError(`a page cache handle whose shared state does not cover ${handle.sizeBytes} bytes`);
    }
    return new SharedPageCache(handle.fd, handle);
  }

  /** Give back a shared handle nobody adopted or closed (the thread it went to died). */
  static release(handle: PageCacheHandle): void {
    native.close(handle.fd);
    releaseView(new Int32Array(handle.users), handle);
  }

  /** This thread's descriptor of the memfd (it stays the cache's; for a trusted process to map, else sealForSharing()). */
  get fd(): number {
    this.assertOpen();
    return this.descriptor;
  }

  get sizeBytes(): number {
    return this.handleValue.sizeBytes;
  }

  get image(): string {
    return this.handleValue.image;
  }

  get pageCount(): number {
    return this.handleValue.sizeBytes / PAGE_SIZE;
  }

  /**
   * The memfd, sealed against every write first (idempotent), to hand to a
   * process that maps it MAP_PRIVATE: it can neither write nor resize it. It
   * stays this cache's descriptor; fills go on through the view.
   */
  sealForSharing(): number {
    this.assertOpen();
    if (Atomics.load(this.users, SEALED) === 0) {
      try {
        wrapNative(() => native.addSeals(this.descriptor, C.F_SEAL_FUTURE_WRITE | C.F_SEAL_SEAL));
      } catch (error) {
        // Another thread sealed it meanwhile (F_SEAL_SEAL refuses a second seal).
        if ((error as { errno?: number }).errno !== ERRNO.EPERM) throw error;
      }
      Atomics.store(this.users, SEALED, 1);
    }
    return this.descriptor;
  }

  isFilled(index: number): boolean {
    return (Atomics.load(this.bits, index >>> 3) & (1 << (index & 7))) !== 0;
  }

  /** Pages [first, first+count) all filled. */
  allFilled(first: number, count: number): boolean {
    for (let index = first; index < first + count; index++) if (!this.isFilled(index)) return false;
    return true;
  }

  /** Pages filled so far (every bit counted: for stats and tests, not the fault path). */
  filledPageCount(): number {
    let count = 0;
    for (let index = 0; index < this.pageCount; index++) if (this.isFilled(index)) count++;
    return count;
  }

  /**
   * Put pages [first, first+count) in the cache from `bytes` (their checked
   * contents, from `offset`), skipping pages already there; returns how many
   * it wrote. Each run is one pwrite (one copy into the view once sealed),
   * and its bits are set after.
   */
  fill(first: number, count: number, bytes: Uint8Array, offset = 0): number {
    this.assertOpen();
    if (first < 0 || count < 0 || first + count > this.pageCount || offset + count * PAGE_SIZE > bytes.byteLength) {
      throw new RangeError(`pages [${first}, +${count}) are not within this ${this.pageCount}-page cache and the ${bytes.byteLength} bytes given`);
    }
    let written = 0;
    let i = 0;
    while (i < count) {
      if (this.isFilled(first + i)) {
        i++;
        continue;
      }
      let run = 1;
      while (i + run < count && !this.isFilled(first + i + run)) run++;
      this.write(first + i, run, bytes, offset + i * PAGE_SIZE);
      for (let k = 0; k < run; k++) Atomics.or(this.bits, (first + i + k) >>> 3, 1 << ((first + i + k) & 7));
      written += run;
      i += run;
    }
    return written;
  }

  private write(first: number, count: number, bytes: Uint8Array, from: number): void {
    if (Atomics.load(this.users, SEALED) === 0) {
      try {
        writeAll(this.descriptor, bytes, from, count * PAGE_SIZE, first * PAGE_SIZE);
        return;
      } catch (error) {
        // Sealed by another thread since the check: the view is the way in now.
        if ((error as { code?: string }).code !== 'EPERM' || Atomics.load(this.users, SEALED) === 0) throw error;
      }
    }
    const address = this.handleValue.viewAddress + first * PAGE_SIZE;
    wrapNative(() => native.madvise(address, count * PAGE_SIZE, MADV_POPULATE_WRITE));
    this.view.set(bytes.subarray(from, from + count * PAGE_SIZE), first * PAGE_SIZE);
  }

  /**
   * Read filled pages [first, first+count) into `target`: for pages about to
   * be written, copied once into place (UFFDIO_COPY) instead of mapped and
   * copied again by the kernel's copy-on-write fault.
   */
  read(first: number, count: number, target: Uint8Array): void {
    this.assertOpen();
    if (!this.allFilled(first, count) || count * PAGE_SIZE > target.byteLength) {
      throw new RangeError(`pages [${first}, +${count}) are not all in the page cache, or do not fit ${target.byteLength} bytes`);
    }
    let done = 0;
    const length = count * PAGE_SIZE;
    while (done < length) {
      const n = readSync(this.descriptor, target, done, length - done, first * PAGE_SIZE + done);
      if (n <= 0) throw new UserfaultError(`reading ${length} bytes from the page cache stopped at ${done}`);
      done += n;
    }
  }

  /**
   * A restore's memory: the cache's pages [offset, offset+lengthBytes) mapped
   * MAP_PRIVATE, for the caller to register MISSING and MINOR. Stores stay in
   * the mapping (copy on write); the cache never sees them.
   */
  mapPrivate(offset: number, lengthBytes: number): Mapping {
    this.assertOpen();
    if (offset < 0 || offset % PAGE_SIZE !== 0 || offset + lengthBytes > this.sizeBytes) {
      throw new PageCacheMismatchError(`[${offset}, +${lengthBytes}) is not within this ${this.sizeBytes}-byte page cache`);
    }
    return Mapping.file(this.descriptor, lengthBytes, { offset });
  }

  /**
   * Close this thread's descriptor; the last cache of the process to close
   * unmaps the view. Mappings made from it stay valid (they hold the memfd).
   */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    native.close(this.descriptor);
    releaseView(this.users, this.handleValue);
  }

  private assertOpen(): void {
    if (this.closed) throw new UserfaultError('the page cache is closed');
  }
}

function releaseView(users: Int32Array, handle: PageCacheHandle): void {
  if (Atomics.sub(users, USERS, 1) === 1) native.munmap(handle.viewAddress, handle.sizeBytes);
}

function writeAll(fd: number, bytes: Uint8Array, offset: number, length: number, position: number): void {
  let done = 0;
  while (done < length) {
    const n = writeSync(fd, bytes, offset + done, length - done, position + done);
    if (n <= 0) throw new UserfaultError(`writing ${length} bytes into the page cache stopped at ${done}`);
    done += n;
  }
}
