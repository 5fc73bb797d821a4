// ReadAheadTriggers on its own: which page of a read is held back, what a
// fault on it gets, and that nothing is held for ever (the hold time, and the
// bound on triggers live at once). The pager's use of it, against the real
// kernel, is in pager.test.ts.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { PAGE_SIZE } from '../../src/native.js';
import { ReadAheadTriggers, type HeldPage } from '../../src/pager/readahead-triggers.js';
import { sleep } from '../helpers/toucher.js';

/** `pages` pages, each filled with its own index (a byte). */
function pagesFrom(first: number, pages: number): Buffer {
  const buffer = Buffer.alloc(pages * PAGE_SIZE);
  for (let i = 0; i < pages; i++) buffer.fill(first + i, i * PAGE_SIZE, (i + 1) * PAGE_SIZE);
  return buffer;
}

const always = (): boolean => true;

describe('read-ahead triggers', () => {
  test('the trigger inside a read is held back with a copy of its bytes; a fault on it takes them once', () => {
    const expired: number[] = [];
    const triggers = new ReadAheadTriggers((index) => expired.push(index));
    try {
      triggers.set(12, true);
      assert.equal(triggers.holdFrom(0, 8, pagesFrom(0, 8), always), -1, 'no trigger in pages 0-7');
      const buffer = pagesFrom(8, 8);
      assert.equal(triggers.holdFrom(8, 8, buffer, always), 12);
      buffer.fill(0xee); // the read's buffer goes back to a pool and is read into again
      const held = triggers.take(12)!;
      assert.equal(held.forWrite, true);
      assert.equal(held.bytes.length, PAGE_SIZE);
      assert.ok(held.bytes.every((byte) => byte === 12), 'the kept bytes are a copy, not a view of the buffer');
      assert.equal(triggers.take(12), undefined, 'taken once');
      assert.equal(triggers.size, 0);
    } finally {
      triggers.clear();
    }
  });

  test('a buffer longer than its read (a pooled window) is read page by page from its start', () => {
    const triggers = new ReadAheadTriggers(() => {});
    try {
      triggers.set(3, false);
      const pooled = pagesFrom(2, 16); // a 16-page buffer holding a 4-page read of pages 2-5
      assert.equal(triggers.holdFrom(2, 4, pooled, always), 3);
      assert.ok(triggers.take(3)!.bytes.every((byte) => byte === 3));
    } finally {
      triggers.clear();
    }
  });

  test('a trigger its caller will not hold (a thread waits on it, or it is not in flight) stays unheld: its read installs it', () => {
    const triggers = new ReadAheadTriggers(() => {});
    try {
      triggers.set(5, false);
      assert.equal(triggers.holdFrom(0, 8, pagesFrom(0, 8), () => false), -1);
      assert.equal(triggers.take(5), undefined, 'a fault on it before its bytes came gets nothing to install');
      assert.equal(triggers.size, 0, 'and it is a trigger no more');
    } finally {
      triggers.clear();
    }
  });

  test('held bytes nobody faulted on are handed back once the hold time is over; an unheld trigger just goes', async () => {
    const expired: Array<[number, HeldPage]> = [];
    const triggers = new ReadAheadTriggers((index, page) => expired.push([index, page]), 20);
    try {
      triggers.set(4, false);
      triggers.set(40, false);
      triggers.holdFrom(0, 8, pagesFrom(0, 8), always);
      for (let i = 0; i < 100 && triggers.size > 0; i++) await sleep(5);
      assert.equal(triggers.size, 0);
      assert.deepEqual(expired.map(([index]) => index), [4]);
      assert.ok(expired[0]![1].bytes.every((byte) => byte === 4));
    } finally {
      triggers.clear();
    }
  });

  test('at most 16 live at once: the oldest makes way, its held bytes handed back', () => {
    const expired: number[] = [];
    const triggers = new ReadAheadTriggers((index) => expired.push(index));
    try {
      triggers.set(0, false);
      triggers.holdFrom(0, 1, pagesFrom(0, 1), always);
      for (let i = 1; i < 16; i++) triggers.set(i * 100, false);
      assert.equal(triggers.size, 16);
      triggers.set(5000, false);
      assert.equal(triggers.size, 16);
      assert.deepEqual(expired, [0]);
      assert.equal(triggers.take(0), undefined);
    } finally {
      triggers.clear();
    }
  });

  test('clear() drops every trigger and its bytes, and no timer fires after', async () => {
    const expired: number[] = [];
    const triggers = new ReadAheadTriggers((index) => expired.push(index), 10);
    triggers.set(1, false);
    triggers.holdFrom(0, 4, pagesFrom(0, 4), always);
    triggers.clear();
    await sleep(30);
    assert.equal(triggers.size, 0);
    assert.deepEqual(expired, []);
  });
});
