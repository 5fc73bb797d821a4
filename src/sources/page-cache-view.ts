// Part of a file mapped read-only and shared, handing out views of ranges
// that are wholly in the page cache: what a source gives the pager so that
// a page is copied once (page cache to its new place) instead of twice (to a
// buffer, then to its place). mincore(2) decides "cached" without faulting,
// so the caller's thread never waits on the disk here.
//
// mincore costs about 3 µs a call here, as much as a tenth of a whole
// random fault, so a "cached" answer is remembered for a 2 MiB block at a
// time for RESIDENCY_TTL_MS: a block is asked about once in that time,
// whatever the number of reads in it. A page evicted meanwhile costs the
// caller a disk read in its COPY (a wait, never wrong bytes); a page seen
// missing is asked about again at once, every time (it is about to be read
// in, and then it is cached).
//
// The file is the owner's to keep as it was while it is mapped: a writer can
// change a page after a caller checked it, and a truncation raises SIGBUS on
// the next touch past the new end, as with any mapped memory file
// (Firecracker maps its snapshot's).
import { Mapping } from '../mem/mapping.js';
import { PAGE_SIZE, native } from '../native.js';

/** Pages one residency answer covers (2 MiB). */
const BLOCK_PAGES = 512;
/** How long a block's residency answer is trusted (ms). */
export const RESIDENCY_TTL_MS = 50;

export class PageCacheView {
  /** mincore's answer for every page of the mapping, by block, as of checkedAt. */
  private readonly residency: Uint8Array;
  /** performance.now() of each block's last mincore; -Infinity: never. */
  private readonly checkedAt: Float64Array;
  private closed = false;

  private constructor(
    private readonly mapping: Mapping,
    /** Where the file range asked for starts inside the (page-aligned) mapping. */
    private readonly skew: number,
    readonly lengthBytes: number,
  ) {
    this.residency = new Uint8Array(mapping.lengthBytes / PAGE_SIZE);
    this.checkedAt = new Float64Array(Math.ceil(this.residency.length / BLOCK_PAGES)).fill(-Infinity);
  }

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
    const endPage = Math.ceil((start + length) / PAGE_SIZE);
    const now = performance.now();
    for (let block = Math.floor(firstPage / BLOCK_PAGES); block * BLOCK_PAGES < endPage; block++) {
      if (now - this.checkedAt[block]! > RESIDENCY_TTL_MS) this.askKernel(block, now);
    }
    for (let page = firstPage; page < endPage; page++) {
      if ((this.residency[page]! & 1) !== 0) continue;
      // Seen missing: ask again now (it may have been read in since); still missing, not cached.
      const block = Math.floor(page / BLOCK_PAGES);
      if (this.checkedAt[block] === now) return undefined;
      this.askKernel(block, now);
      if ((this.residency[page]! & 1) === 0) return undefined;
    }
    return this.mapping.bytes(start, length);
  }

  private askKernel(block: number, now: number): void {
    const first = block * BLOCK_PAGES;
    const pages = Math.min(BLOCK_PAGES, this.residency.length - first);
    native.mincore(this.mapping.address + first * PAGE_SIZE, pages * PAGE_SIZE, this.residency.subarray(first, first + pages));
    this.checkedAt[block] = now;
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.mapping.unmap();
  }
}
