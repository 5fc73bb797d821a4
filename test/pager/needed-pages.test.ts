import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { PAGE_SIZE } from '../../src/native.js';
import { neededPages } from '../../src/pager/needed-pages.js';
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
