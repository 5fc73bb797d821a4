// Host memory the process maps: the object userfaultfd registers and JS views.
import { ftruncateSync } from 'node:fs';
import { PAGE_SIZE, native } from '../native.js';
import { UserfaultError, wrapNative, wrapNativeAsync } from '../uffd/errors.js';

const C = native.constants;

export interface AnonymousOptions {
  /** MAP_SHARED anonymous (shmem-backed) instead of private. */
  shared?: boolean;
  /** Don't reserve swap for the whole length. */
  noReserve?: boolean;
  /** Back with hugetlbfs pages (MAP_HUGETLB, 2 MiB on x86-64); needs vm.nr_hugepages reserved. */
  hugetlb?: boolean;
}

/** The size of a default huge page (2 MiB on x86-64). */
export const HUGE_PAGE_SIZE = 2 << 20;

/** A mapping of `lengthBytes` at `address`, page-aligned. */
export class Mapping {
  private unmapped = false;
  private cachedBuffer: ArrayBuffer | undefined;

  private constructor(
    /** Host virtual address of the first byte. */
    public address: number,
    readonly lengthBytes: number,
    /** The memfd or file backing the mapping, when there is one (owned by the mapping). */
    readonly fd: number | undefined,
    readonly kind: 'anonymous' | 'shared-anonymous' | 'hugetlb' | 'memfd' | 'file',
  ) {}

  /** Private (or shared) anonymous memory; pages are missing until touched. */
  static anonymous(lengthBytes: number, options: AnonymousOptions = {}): Mapping {
    checkLength(lengthBytes);
    if (options.hugetlb && lengthBytes % HUGE_PAGE_SIZE !== 0) {
      throw new RangeError(`a hugetlb mapping length ${lengthBytes} is not a multiple of ${HUGE_PAGE_SIZE}`);
    }
    const flags =
      C.MAP_ANONYMOUS |
      (options.shared ? C.MAP_SHARED : C.MAP_PRIVATE) |
      (options.noReserve ? C.MAP_NORESERVE : 0) |
      (options.hugetlb ? C.MAP_HUGETLB : 0);
    const address = wrapNative(() => native.mmap(0, lengthBytes, C.PROT_READ | C.PROT_WRITE, flags, -1, 0));
    const kind = options.hugetlb ? 'hugetlb' : options.shared ? 'shared-anonymous' : 'anonymous';
    return new Mapping(address, lengthBytes, undefined, kind);
  }

  /** A memfd of `lengthBytes` mapped shared: shmem memory, usable for MINOR faults and by a second mapping. */
  static memfd(lengthBytes: number, name = 'userfault'): Mapping {
    checkLength(lengthBytes);
    const fd = wrapNative(() => native.memfdCreate(name, C.MFD_CLOEXEC));
    try {
      ftruncateSync(fd, lengthBytes);
      const address = wrapNative(() => native.mmap(0, lengthBytes, C.PROT_READ | C.PROT_WRITE, C.MAP_SHARED, fd, 0));
      return new Mapping(address, lengthBytes, fd, 'memfd');
    } catch (error) {
      native.close(fd);
      throw error;
    }
  }

  /** Map an open file (MAP_PRIVATE by default): the kernel's own demand paging. The fd stays the caller's. */
  static file(fd: number, lengthBytes: number, options: { shared?: boolean; offset?: number; writable?: boolean } = {}): Mapping {
    checkLength(lengthBytes);
    const prot = C.PROT_READ | (options.writable ?? true ? C.PROT_WRITE : 0);
    const flags = options.shared ? C.MAP_SHARED : C.MAP_PRIVATE;
    const address = wrapNative(() => native.mmap(0, lengthBytes, prot, flags, fd, options.offset ?? 0));
    return new Mapping(address, lengthBytes, undefined, 'file');
  }

  /** A second view of this memfd mapping at another address (shares the page cache). */
  alias(): Mapping {
    if (this.fd === undefined) throw new UserfaultError('only a memfd mapping can be aliased');
    const fd = this.fd;
    const address = wrapNative(() => native.mmap(0, this.lengthBytes, C.PROT_READ | C.PROT_WRITE, C.MAP_SHARED, fd, 0));
    return new Mapping(address, this.lengthBytes, undefined, 'file');
  }

  get pageCount(): number {
    return this.lengthBytes / PAGE_SIZE;
  }

  get end(): number {
    return this.address + this.lengthBytes;
  }

  /** An ArrayBuffer over the whole mapping. Touching a missing page blocks the touching thread in the kernel. */
  buffer(): ArrayBuffer {
    this.assertMapped();
    this.cachedBuffer ??= native.arrayBufferAt(this.address, this.lengthBytes);
    return this.cachedBuffer;
  }

  bytes(offset = 0, length = this.lengthBytes - offset): Uint8Array {
    return new Uint8Array(this.buffer(), offset, length);
  }

  /** Which pages are resident, per mincore(2); never faults a page in. */
  residency(): Uint8Array {
    this.assertMapped();
    const out = new Uint8Array(this.pageCount);
    wrapNative(() => native.mincore(this.address, this.lengthBytes, out));
    return out;
  }

  residentPageCount(): number {
    let count = 0;
    for (const byte of this.residency()) count += byte & 1;
    return count;
  }

  /**
   * Discard [offset, offset+length): the pages are missing again and read
   * zero (or fault to a registered uffd). MADV_DONTNEED on private memory;
   * on shmem (a memfd, shared anonymous) MADV_REMOVE, because MADV_DONTNEED
   * there only unmaps and the page cache keeps the bytes, which the next
   * touch maps back without a fault. Called on a range registered with a
   * uffd that asked for REMOVE events, it waits until that event is read:
   * never from the thread that reads the uffd (see discardAsync).
   */
  discard(offset: number, lengthBytes: number): void {
    this.checkPages(offset, lengthBytes);
    wrapNative(() => native.madvise(this.address + offset, lengthBytes, this.discardAdvice));
  }

  /**
   * discard() on libuv's thread pool: for the thread that reads the uffd of
   * this range itself (a VMM's main thread giving back a balloon's pages),
   * which would otherwise wait in madvise for itself to read the REMOVE
   * event. Resolves once the pages are gone. The mapping must stay mapped
   * until then: the madvise runs later, on another thread, at this address.
   */
  async discardAsync(offset: number, lengthBytes: number): Promise<void> {
    this.checkPages(offset, lengthBytes);
    return wrapNativeAsync(() => native.madviseAsync(this.address + offset, lengthBytes, this.discardAdvice));
  }

  /** Whole pages of this mapping, which is still mapped: madvise must never reach memory that is not its own. */
  private checkPages(offset: number, lengthBytes: number): void {
    this.assertMapped();
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(lengthBytes) || offset < 0 || lengthBytes <= 0 || offset % PAGE_SIZE !== 0 || lengthBytes % PAGE_SIZE !== 0 || offset + lengthBytes > this.lengthBytes) {
      throw new RangeError(`[${offset}, +${lengthBytes}) is not whole pages of this ${this.lengthBytes}-byte mapping`);
    }
  }

  private get discardAdvice(): number {
    return this.kind === 'memfd' || this.kind === 'shared-anonymous' ? C.MADV_REMOVE : C.MADV_DONTNEED;
  }

  madvise(offset: number, lengthBytes: number, advice: number): void {
    this.assertMapped();
    wrapNative(() => native.madvise(this.address + offset, lengthBytes, advice));
  }

  /** mremap the mapping to a new address (MREMAP_MAYMOVE | MREMAP_FIXED when `to` is given). */
  moveTo(to?: number): number {
    this.assertMapped();
    const flags = C.MREMAP_MAYMOVE | (to === undefined ? 0 : C.MREMAP_FIXED);
    const address = wrapNative(() => native.mremap(this.address, this.lengthBytes, this.lengthBytes, flags, to ?? 0));
    this.address = address;
    this.cachedBuffer = undefined;
    return address;
  }

  get isMapped(): boolean {
    return !this.unmapped;
  }

  /** munmap; views of the mapping must not be used after this. */
  unmap(): void {
    if (this.unmapped) return;
    this.unmapped = true;
    this.cachedBuffer = undefined;
    native.munmap(this.address, this.lengthBytes);
    if (this.fd !== undefined) native.close(this.fd);
  }

  private assertMapped(): void {
    if (this.unmapped) throw new UserfaultError('mapping is unmapped');
  }
}

function checkLength(lengthBytes: number): void {
  if (!Number.isSafeInteger(lengthBytes) || lengthBytes <= 0 || lengthBytes % PAGE_SIZE !== 0) {
    throw new RangeError(`mapping length ${lengthBytes} is not a positive multiple of the ${PAGE_SIZE}-byte page`);
  }
}
