// Which pages a complete restore must still fill: every page of the given
// page ranges that the source does not know to be zero (a zero page needs no
// fill: it reads zero once the pager is gone). Computed here for the pager's
// own regions and for a VM restore that starts with some pages in place.
import { PAGE_SIZE } from '../native.js';
import type { PageSource } from '../sources/page-source.js';

export interface PageRange {
  firstPage: number;
  pageCount: number;
}

/**
 * 1 for a page of `ranges` that must be filled, 0 for the rest of the
 * `pageCount` pages (outside every range, known zero, or `skip`ped: already
 * in place). One mask from the source (zeroPageMask) rather than an isZero()
 * call a page when it has one: a VM restore runs this inside a migration's
 * downtime.
 */
export function neededPages(source: PageSource, pageCount: number, ranges: Iterable<PageRange>, skip?: (page: number) => boolean): Uint8Array {
  const needed = new Uint8Array(pageCount);
  const zero = source.zeroPageMask?.(PAGE_SIZE);
  for (const { firstPage, pageCount: count } of ranges) {
    // The common cases without a call a page (every client of `serve` and every VM restore runs this, often in cold code).
    if (!skip && !zero && !source.isZero) {
      needed.fill(1, firstPage, firstPage + count);
      continue;
    }
    if (!skip && zero) {
      for (let page = firstPage; page < firstPage + count; page++) needed[page] = zero[page]! ^ 1;
      continue;
    }
    for (let page = firstPage; page < firstPage + count; page++) {
      if (skip?.(page)) continue;
      needed[page] = zero ? zero[page]! ^ 1 : source.isZero?.(page * PAGE_SIZE, PAGE_SIZE) ? 0 : 1;
    }
  }
  return needed;
}
