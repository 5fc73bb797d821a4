// Which pages a complete restore must still fill: every page of the given
// page ranges that the source does not know to be zero (a zero page needs no
// fill: it reads zero once the pager is gone). Computed here for the pager's
// own regions and for a VM restore that starts with some pages in place.
import { PAGE_SIZE } from '../native.js';
import type { PageSource } from '../sources/page-source.js';
import { PageState, PageStateTable } from './page-state.js';

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

/** One bit a page, bit i of byte i >> 3 (page-bitmap.ts's PageBitmap is one). */
export interface PageBits {
  readonly bytes: Uint8Array;
}

/**
 * The page states of a restore that starts with some pages in place (a
 * post-copy destination: those received in pre-copy), and which of the rest
 * it must fill: `present` has one bit a page (bit i of byte i >> 3, as
 * page-bitmap.ts and KVM's dirty log lay them out). One pass over
 * its bytes, a whole byte of present (or of missing, with the source's zero
 * mask) at a time, with no call a page: it runs inside a migration's
 * downtime.
 */
export function startingPageStates(source: PageSource, pageCount: number, present: Uint8Array): PageStateTable {
  if (present.length < Math.ceil(pageCount / 8)) throw new RangeError(`a bitmap of ${pageCount} pages needs ${Math.ceil(pageCount / 8)} bytes, got ${present.length}`);
  const states = new Uint8Array(pageCount);
  const needed = new Uint8Array(pageCount);
  const zero = source.zeroPageMask?.(PAGE_SIZE);
  const isZero = zero ? undefined : source.isZero?.bind(source);
  let presentCount = 0;
  let neededCount = 0;
  for (let byteIndex = 0, base = 0; base < pageCount; byteIndex++, base += 8) {
    const bits = present[byteIndex]!;
    const end = Math.min(base + 8, pageCount);
    if (bits === 0xff) {
      states.fill(PageState.PRESENT, base, end);
      presentCount += end - base;
      continue;
    }
    if (bits === 0 && !isZero) {
      if (zero) {
        for (let page = base; page < end; page++) neededCount += needed[page] = zero[page]! ^ 1;
      } else {
        needed.fill(1, base, end);
        neededCount += end - base;
      }
      continue;
    }
    for (let page = base; page < end; page++) {
      if (bits & (1 << (page - base))) {
        states[page] = PageState.PRESENT;
        presentCount++;
      } else {
        neededCount += needed[page] = zero ? zero[page]! ^ 1 : isZero?.(page * PAGE_SIZE, PAGE_SIZE) ? 0 : 1;
      }
    }
  }
  return new PageStateTable(pageCount, { states, needed, counted: { present: presentCount, pendingNeeded: neededCount } });
}
