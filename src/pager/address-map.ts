// Which host addresses show which part of the image. mremap moves ranges and
// munmap removes them, so the map is a list of extents that split as needed.
import { UserfaultError } from '../errors.js';
import { PAGE_SIZE } from '../native.js';

/** A registered range of host memory and the image offset its first byte shows. */
export interface PagerRegion {
  /** Host virtual address of the first byte. */
  address: number;
  lengthBytes: number;
  /** Offset in the page source's image of the first byte. */
  sourceOffset: number;
}

/** Regions a pager cannot serve as given: misaligned, overlapping, or two showing the same image bytes. */
export class RegionLayoutError extends UserfaultError {
  override readonly code = 'EREGIONS';
  constructor(readonly problem: string, readonly regions: readonly PagerRegion[]) {
    super(`${problem}: ${regions.map((r) => `0x${r.address.toString(16)}+${r.lengthBytes} <- image ${r.sourceOffset}`).join(', ')}`);
  }
}

export class AddressMap {
  private extents: PagerRegion[];

  constructor(regions: readonly PagerRegion[]) {
    for (const r of regions) {
      if (r.address % PAGE_SIZE || r.lengthBytes % PAGE_SIZE || r.sourceOffset % PAGE_SIZE || r.lengthBytes <= 0) {
        throw new RegionLayoutError('a region is not page-aligned, or empty', [r]);
      }
    }
    this.extents = regions.map((r) => ({ ...r })).sort((a, b) => a.address - b.address);
    for (let i = 1; i < this.extents.length; i++) {
      const previous = this.extents[i - 1]!;
      if (this.extents[i]!.address < previous.address + previous.lengthBytes) throw new RegionLayoutError('two regions overlap in host memory', [previous, this.extents[i]!]);
    }
    // One state and one address per image page: two host ranges showing the
    // same image bytes would share a state, and the second's waiters would
    // never be woken by a fill of the first. Refused, not served wrong.
    const byImage = [...this.extents].sort((a, b) => a.sourceOffset - b.sourceOffset);
    for (let i = 1; i < byImage.length; i++) {
      const previous = byImage[i - 1]!;
      if (byImage[i]!.sourceOffset < previous.sourceOffset + previous.lengthBytes) throw new RegionLayoutError('two regions show the same image bytes', [previous, byImage[i]!]);
    }
  }

  get regions(): readonly PagerRegion[] {
    return this.extents;
  }

  /** The image offset shown at `address`, or undefined when no extent covers it. */
  sourceOffsetOf(address: number): number | undefined {
    const e = this.find(address);
    return e === undefined ? undefined : e.sourceOffset + (address - e.address);
  }

  /** Where image offset `sourceOffset` is mapped now, or undefined. */
  addressOf(sourceOffset: number): number | undefined {
    for (const e of this.extents) {
      if (sourceOffset >= e.sourceOffset && sourceOffset < e.sourceOffset + e.lengthBytes) {
        return e.address + (sourceOffset - e.sourceOffset);
      }
    }
    return undefined;
  }

  /** Pages after `sourceOffset` that stay contiguous both in the image and in host memory. */
  contiguousPagesFrom(sourceOffset: number, maxPages: number): number {
    for (const e of this.extents) {
      if (sourceOffset >= e.sourceOffset && sourceOffset < e.sourceOffset + e.lengthBytes) {
        return Math.min(maxPages, (e.sourceOffset + e.lengthBytes - sourceOffset) / PAGE_SIZE);
      }
    }
    return 0;
  }

  /** Remove [start, end) from the map (munmap); returns the pieces it held. */
  remove(start: number, end: number): PagerRegion[] {
    const removed: PagerRegion[] = [];
    const kept: PagerRegion[] = [];
    for (const e of this.extents) {
      const eEnd = e.address + e.lengthBytes;
      const lo = Math.max(start, e.address);
      const hi = Math.min(end, eEnd);
      if (lo >= hi) {
        kept.push(e);
        continue;
      }
      removed.push({ address: lo, lengthBytes: hi - lo, sourceOffset: e.sourceOffset + (lo - e.address) });
      if (e.address < lo) kept.push({ address: e.address, lengthBytes: lo - e.address, sourceOffset: e.sourceOffset });
      if (hi < eEnd) kept.push({ address: hi, lengthBytes: eEnd - hi, sourceOffset: e.sourceOffset + (hi - e.address) });
    }
    this.extents = kept.sort((a, b) => a.address - b.address);
    return removed;
  }

  /** mremap moved [from, from+length) to `to`: the image it showed moves along. */
  move(from: number, to: number, lengthBytes: number): void {
    for (const piece of this.remove(from, from + lengthBytes)) {
      this.extents.push({ ...piece, address: to + (piece.address - from) });
    }
    this.extents.sort((a, b) => a.address - b.address);
  }

  /** Image ranges shown by [start, end). */
  sourceRangesIn(start: number, end: number): Array<{ sourceOffset: number; lengthBytes: number }> {
    const out: Array<{ sourceOffset: number; lengthBytes: number }> = [];
    for (const e of this.extents) {
      const lo = Math.max(start, e.address);
      const hi = Math.min(end, e.address + e.lengthBytes);
      if (lo < hi) out.push({ sourceOffset: e.sourceOffset + (lo - e.address), lengthBytes: hi - lo });
    }
    return out;
  }

  private find(address: number): PagerRegion | undefined {
    // Few extents (one per registered region): a linear scan beats a tree here.
    for (const e of this.extents) if (address >= e.address && address < e.address + e.lengthBytes) return e;
    return undefined;
  }

}
