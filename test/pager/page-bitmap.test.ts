// The one bitset: a bit per page, set and cleared alone (the pager's marks on
// the fault path), counted, walked in order and in runs, merged, and read as
// a byte mask (a migration's dirty, received and known-zero pages).
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { PageBitmap } from '../../src/pager/page-bitmap.js';

describe('page bitmaps', () => {
  test('each page has its own bit, set and cleared alone', () => {
    const bits = new PageBitmap(20);
    for (const page of [0, 7, 8, 19]) bits.set(page);
    assert.deepEqual(Array.from({ length: 20 }, (_, i) => i).filter((i) => bits.get(i)), [0, 7, 8, 19]);
    bits.clear(8);
    bits.clear(9);
    assert.deepEqual(Array.from({ length: 20 }, (_, i) => i).filter((i) => bits.get(i)), [0, 7, 19]);
  });

  test('a copy is its own', () => {
    const a = new PageBitmap(16);
    a.set(3);
    const b = a.copy();
    b.set(4);
    assert.deepEqual([...a.pages()], [3]);
    assert.deepEqual([...b.pages()], [3, 4]);
  });

  test('set, get, count, and the pages and runs in order', () => {
    const b = new PageBitmap(200);
    for (const p of [0, 1, 2, 7, 8, 63, 64, 65, 199]) b.set(p);
    assert.equal(b.count(), 9);
    assert.deepEqual([...b.pages()], [0, 1, 2, 7, 8, 63, 64, 65, 199]);
    assert.deepEqual([...b.runs()], [[0, 3], [7, 2], [63, 3], [199, 1]]);
    assert.deepEqual([...b.runs(2)], [[0, 2], [2, 1], [7, 2], [63, 2], [65, 1], [199, 1]]);
    b.clear(64);
    assert.equal(b.get(64), false);
    assert.equal(b.bytes.length, 32, 'whole u64 words, as KVM_GET_DIRTY_LOG writes them');
  });

  test('setAll sets exactly pageCount pages; or merges', () => {
    const a = new PageBitmap(70);
    a.setAll();
    assert.equal(a.count(), 70);
    const b = new PageBitmap(70);
    b.set(3);
    const c = new PageBitmap(70);
    c.set(69);
    b.or(c);
    assert.deepEqual([...b.pages()], [3, 69]);
  });

  test('nextSet finds the first set page at or after a page, across empty bytes, and -1 past the last', () => {
    const b = new PageBitmap(1000);
    for (const page of [0, 7, 8, 500, 999]) b.set(page);
    assert.deepEqual([0, 1, 8, 9, 500, 501, 999, 1000].map((from) => b.nextSet(from)), [0, 7, 8, 500, 500, 999, 999, -1]);
    // The same answers as a walk of pages(), from every starting point.
    const pages = [...b.pages()];
    for (let from = 0; from < 1000; from++) assert.equal(b.nextSet(from), pages.find((p) => p >= from) ?? -1, `from ${from}`);
    assert.equal(new PageBitmap(64).nextSet(0), -1);
  });

  test('toByteMask and andNot say, page by page, what get() says', () => {
    const received = new PageBitmap(131);
    const zero = new PageBitmap(131);
    for (let page = 0; page < 131; page++) {
      if (page % 3 !== 0) received.set(page);
      if (page % 5 === 0 || page === 130) zero.set(page);
    }
    const mask = zero.toByteMask();
    assert.equal(mask.length, 131);
    const present = received.andNot(zero);
    for (let page = 0; page < 131; page++) {
      assert.equal(mask[page], zero.get(page) ? 1 : 0, `mask ${page}`);
      assert.equal(present.get(page), received.get(page) && !zero.get(page), `present ${page}`);
    }
    assert.equal(received.get(1), true, 'andNot leaves its operands alone');
  });
});

