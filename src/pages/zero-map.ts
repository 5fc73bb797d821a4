// Which pages of an image are known to be all zero: one bit per page, bit i
// of the image in byte i>>3 at bit i&7 (LSB first), the order ZERO_MAP sends
// (src/protocol/wire.ts). The server builds it once from its snapshot's page
// table; a client fills it from ZERO_MAP replies and answers isZero with no
// round trip.
import { PageKind } from '../snapshot/format.js';
import type { SnapshotFile } from '../snapshot/reader.js';

export class ZeroMap {
  readonly pageCount: number;
  private readonly bits: Uint8Array;

  /** An empty map (no page known zero) of `pageCount` pages of `pageSizeBytes`. */
  constructor(pageCount: number, readonly pageSizeBytes: number) {
    if (!Number.isSafeInteger(pageCount) || pageCount < 0) throw new RangeError(`a zero map of ${pageCount} pages`);
    this.pageCount = pageCount;
    this.bits = new Uint8Array(Math.ceil(pageCount / 8));
  }

  /** Zero pages and gaps between regions (which read as zero) of a snapshot, from its page table: no page is read. */
  static fromSnapshot(file: SnapshotFile): ZeroMap {
    const { pageSize } = file;
    const map = new ZeroMap(file.imageSizeBytes / pageSize, pageSize);
    // Every page starts zero (gaps are); then each stored page is cleared.
    map.bits.fill(0xff);
    const { kinds } = file.pageTable;
    for (const region of file.regions) {
      const firstImagePage = region.imageOffset / pageSize;
      for (let page = 0; page < region.pageCount; page++) {
        if (kinds[region.firstPageIndex + page] !== PageKind.zero) map.clear(firstImagePage + page);
      }
    }
    map.clearPadBits();
    return map;
  }

  /** A map from a per-range predicate (a PageSource's isZero), asked page by page. */
  static fromPredicate(pageCount: number, pageSizeBytes: number, isZero: (offset: number, lengthBytes: number) => boolean): ZeroMap {
    const map = new ZeroMap(pageCount, pageSizeBytes);
    for (let page = 0; page < pageCount; page++) if (isZero(page * pageSizeBytes, pageSizeBytes)) map.set(page);
    return map;
  }

  get sizeBytes(): number {
    return this.pageCount * this.pageSizeBytes;
  }

  get zeroPageCount(): number {
    let count = 0;
    for (const byte of this.bits) count += popcount8(byte);
    return count;
  }

  isZeroPage(page: number): boolean {
    return (this.bits[page >>> 3]! & (1 << (page & 7))) !== 0;
  }

  /**
   * Whether every page touching [offset, offset+length) is known zero. A range
   * outside the map is not (unknown), and neither is an empty one.
   */
  isZero(offset: number, lengthBytes: number): boolean {
    if (lengthBytes <= 0 || offset < 0 || offset + lengthBytes > this.sizeBytes) return false;
    const first = Math.floor(offset / this.pageSizeBytes);
    const end = Math.ceil((offset + lengthBytes) / this.pageSizeBytes);
    for (let page = first; page < end; page++) if (!this.isZeroPage(page)) return false;
    return true;
  }

  set(page: number): void {
    this.bits[page >>> 3]! |= 1 << (page & 7);
  }

  clear(page: number): void {
    this.bits[page >>> 3]! &= ~(1 << (page & 7));
  }

  /** The bitmap of pages [firstPage, firstPage+pageCount), as ZERO_MAP sends it (pad bits 0). */
  slice(firstPage: number, pageCount: number): Uint8Array {
    this.checkRange(firstPage, pageCount);
    const out = new Uint8Array(Math.ceil(pageCount / 8));
    if (firstPage % 8 === 0) {
      out.set(this.bits.subarray(firstPage / 8, firstPage / 8 + out.length));
      const padBits = out.length * 8 - pageCount;
      if (padBits > 0) out[out.length - 1]! &= 0xff >> padBits;
      return out;
    }
    for (let i = 0; i < pageCount; i++) if (this.isZeroPage(firstPage + i)) out[i >>> 3]! |= 1 << (i & 7);
    return out;
  }

  /** Record a ZERO_MAP reply's bitmap for [firstPage, firstPage+pageCount). */
  assign(firstPage: number, pageCount: number, bitmap: Uint8Array): void {
    this.checkRange(firstPage, pageCount);
    if (bitmap.length !== Math.ceil(pageCount / 8)) throw new RangeError(`${pageCount} pages need a ${Math.ceil(pageCount / 8)}-byte bitmap, not ${bitmap.length}`);
    for (let i = 0; i < pageCount; i++) {
      if ((bitmap[i >>> 3]! & (1 << (i & 7))) !== 0) this.set(firstPage + i);
      else this.clear(firstPage + i);
    }
  }

  private checkRange(firstPage: number, pageCount: number): void {
    if (!Number.isSafeInteger(firstPage) || !Number.isSafeInteger(pageCount) || firstPage < 0 || pageCount < 0 || firstPage + pageCount > this.pageCount) {
      throw new RangeError(`pages [${firstPage}, ${firstPage + pageCount}) are outside the ${this.pageCount}-page map`);
    }
  }

  private clearPadBits(): void {
    const padBits = this.bits.length * 8 - this.pageCount;
    if (padBits > 0) this.bits[this.bits.length - 1]! &= 0xff >> padBits;
  }
}

function popcount8(byte: number): number {
  let count = 0;
  for (let b = byte; b !== 0; b &= b - 1) count++;
  return count;
}
