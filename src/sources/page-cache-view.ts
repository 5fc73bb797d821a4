// Part of a file mapped read-only and shared, handing out views of ranges
// that are wholly in the page cache: what a source gives the pager so that
// a page is copied once (page cache to its new place) instead of twice (to a
// buffer, then to its place). mincore(2) decides "cached" without faulting,
// so the caller's thread never waits on the disk here.
//
// The file is the owner's to keep as it was while it is mapped: a writer can
// change a page after a caller checked it, and a truncation raises SIGBUS on
// the next touch past the new end, as with any mapped memory file
// (Firecracker maps its snapshot's).
import { Mapping } from '../mem/mapping.js';
import { PAGE_SIZE, native } from '../native.js';

export class PageCacheView {
  private residency = new Uint8Array(0);
  private closed = false;

  private constructor(
    private readonly mapping: Mapping,
    /** Where the file range asked for starts inside the (page-aligned) mapping. */
    private readonly skew: number,
    readonly lengthBytes: number,
  ) {}

  /** Map [fileOffset, fileOffset + lengthBytes) of `fd`; undefined if it cannot be mapped (empty, or not a mappable file). */
  static open(fd: number, fileOffset: number, lengthBytes: number): PageCacheView | undefined {
    if (lengthBytes <= 0) return undefined;
    const skew = fileOffset % PAGE_SIZE;
    // Whole pages: the last may run past the end of the file (those bytes read as zero; no view reaches them).
    const mapped = Math.ceil((skew + lengthBytes) / PAGE_SIZE) * PAGE_SIZE;
    try {
      return new PageCacheView(Mapping.file(fd, mapped, { shared: true, writable: false, offset: fileOffset - skew }), skew, lengthBytes);
    } catch {
      return undefined;
    }
  }

  /** The bytes at [offset, offset + length) of the range, if every page of them is cached; else undefined. Valid until close(). */
  cached(offset: number, length: number): Uint8Array | undefined {
    if (this.closed || offset < 0 || length <= 0 || offset + length > this.lengthBytes) return undefined;
    const start = this.skew + offset;
    const firstPage = Math.floor(start / PAGE_SIZE);
    const pages = Math.ceil((start + length) / PAGE_SIZE) - firstPage;
    if (this.residency.length < pages) this.residency = new Uint8Array(pages);
    native.mincore(this.mapping.address + firstPage * PAGE_SIZE, pages * PAGE_SIZE, this.residency);
    for (let i = 0; i < pages; i++) if ((this.residency[i]! & 1) === 0) return undefined;
    return this.mapping.bytes(start, length);
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.mapping.unmap();
  }
}
