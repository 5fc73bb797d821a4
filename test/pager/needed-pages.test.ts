import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { PAGE_SIZE } from '../../src/native.js';
import { neededPages, startingPageStates } from '../../src/pager/needed-pages.js';
import { PageState } from '../../src/pager/page-state.js';
import type { PageSource } from '../../src/sources/page-source.js';

/** A source of `pageCount` pages whose zero pages are `zeroPages`, told by a mask or page by page. */
function sourceWithZeros(pageCount: number, zeroPages: number[], by: 'mask' | 'isZero'): PageSource & { isZeroCalls: number } {
  const zero = new Uint8Array(pageCount);
  for (const page of zeroPages) zero[page] = 1;
  const source = {
    description: 'test', sizeBytes: pageCount * PAGE_SIZE, isZeroCalls: 0,
    read: async () => undefined,
    ...(by === 'mask'
      ? { zeroPageMask: () => zero }
      : { isZero: (offset: number) => { source.isZeroCalls++; return zero[offset / PAGE_SIZE] === 1; } }),
  };
  return source;
}

describe('the pages a complete restore must still fill', () => {
  for (const by of ['mask', 'isZero'] as const) {
    test(`are the pages of the ranges not known zero (zeros told by ${by})`, () => {
      const source = sourceWithZeros(8, [1, 6], by);
      assert.deepEqual([...neededPages(source, 8, [{ firstPage: 0, pageCount: 3 }, { firstPage: 5, pageCount: 3 }])], [1, 0, 1, 0, 0, 1, 0, 1]);
    });
  }

  test('leave out pages already in place, without asking the source about them', () => {
    const source = sourceWithZeros(4, [], 'isZero');
    assert.deepEqual([...neededPages(source, 4, [{ firstPage: 0, pageCount: 4 }], (page) => page % 2 === 0)], [0, 1, 0, 1]);
    assert.equal(source.isZeroCalls, 2);
  });

  test('are every page of the ranges when the source knows no zero pages', () => {
    const source: PageSource = { description: 'test', sizeBytes: 3 * PAGE_SIZE, read: async () => undefined };
    assert.deepEqual([...neededPages(source, 3, [{ firstPage: 0, pageCount: 3 }])], [1, 1, 1]);
  });
});

describe('the starting states of a restore with pages in place (a post-copy destination)', () => {
  /** Page by page, as the states were built before the one pass over the bitmap's bytes. */
  function reference(present: Uint8Array, zero: Uint8Array | undefined, pageCount: number): { states: number[]; needed: number[] } {
    const states: number[] = [];
    const needed: number[] = [];
    for (let page = 0; page < pageCount; page++) {
      const isPresent = (present[page >> 3]! & (1 << (page & 7))) !== 0;
      states.push(isPresent ? PageState.PRESENT : PageState.MISSING);
      needed.push(isPresent || zero?.[page] === 1 ? 0 : 1);
    }
    return { states, needed };
  }

  // Sizes off the byte grid, bitmaps with whole bytes set, clear and mixed, zero pages among the present and the missing.
  for (const pageCount of [1, 7, 8, 9, 64, 1001]) {
    for (const by of ['mask', 'isZero', 'none'] as const) {
      test(`${pageCount} pages, zeros told by ${by}: the same states and needed pages as page by page`, () => {
        let seed = pageCount * 7 + by.length;
        const random = (): number => (seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31;
        const present = new Uint8Array(Math.ceil(pageCount / 8) + 1);
        for (let i = 0; i < present.length; i++) {
          const r = random();
          present[i] = r < 0.3 ? 0xff : r < 0.6 ? 0 : Math.floor(random() * 256);
        }
        const zeroPages = Array.from({ length: pageCount }, (_, page) => page).filter(() => random() < 0.25);
        const source: PageSource = by === 'none' ? { description: 'test', sizeBytes: pageCount * PAGE_SIZE, read: async () => undefined } : sourceWithZeros(pageCount, zeroPages, by);
        const zero = by === 'none' ? undefined : Uint8Array.from({ length: pageCount }, (_, page) => (zeroPages.includes(page) ? 1 : 0));
        const table = startingPageStates(source, pageCount, present);
        const want = reference(present, zero, pageCount);
        assert.deepEqual(Array.from({ length: pageCount }, (_, page) => table.get(page)), want.states);
        assert.deepEqual(Array.from({ length: pageCount }, (_, page) => (table.isNeeded(page) ? 1 : 0)), want.needed);
        assert.equal(table.pendingNeeded, want.needed.reduce((a, b) => a + b, 0));
      });
    }
  }

  test('a bitmap too short for the pages is refused', () => {
    const source: PageSource = { description: 'test', sizeBytes: 16 * PAGE_SIZE, read: async () => undefined };
    assert.throws(() => startingPageStates(source, 16, new Uint8Array(1)), RangeError);
  });
});
