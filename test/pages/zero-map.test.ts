import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { ZeroMap } from '../../src/pages/index.js';
import { SnapshotFile } from '../../src/snapshot/index.js';
import { GAP_FIRST_PAGE, PAGE, PAGE_COUNT, isZeroPage, tempDir, writeTestSnapshot } from './fixtures.js';

describe('the zero map', () => {
  test('from a snapshot: zero pages and gap pages are set, stored pages clear, without reading a page', async (t) => {
    const { path } = await writeTestSnapshot(tempDir(t));
    const file = await SnapshotFile.open(path);
    try {
      const map = ZeroMap.fromSnapshot(file);
      assert.equal(map.pageCount, PAGE_COUNT);
      for (let p = 0; p < PAGE_COUNT; p++) assert.equal(map.isZeroPage(p), isZeroPage(p), `page ${p}`);
      assert.equal(map.zeroPageCount, Array.from({ length: PAGE_COUNT }, (_, p) => p).filter(isZeroPage).length);
      assert.equal(map.isZero(GAP_FIRST_PAGE * PAGE, 64 * PAGE), true);
      assert.equal(map.isZero((GAP_FIRST_PAGE - 2) * PAGE, 4 * PAGE), false);
    } finally {
      await file.close();
    }
  });

  test('slice and assign round-trip at every alignment, with pad bits clear', () => {
    const map = ZeroMap.fromPredicate(77, PAGE, (offset) => (offset / PAGE) % 3 === 0);
    for (let first = 0; first < 77; first++) {
      for (const count of [1, 7, 8, 9, 77 - first]) {
        if (first + count > 77) continue;
        const bits = map.slice(first, count);
        assert.equal(bits.length, Math.ceil(count / 8));
        const pad = bits.length * 8 - count;
        if (pad > 0) assert.equal(bits[bits.length - 1]! >> (8 - pad), 0, `pad bits of ${first}+${count}`);
        const copy = new ZeroMap(77, PAGE);
        copy.assign(first, count, bits);
        for (let p = 0; p < 77; p++) assert.equal(copy.isZeroPage(p), p >= first && p < first + count && p % 3 === 0, `page ${p} of ${first}+${count}`);
      }
    }
  });

  test('a range outside the map, or empty, is not known zero; out-of-range slices throw', () => {
    const map = ZeroMap.fromPredicate(8, PAGE, () => true);
    assert.equal(map.isZero(0, 8 * PAGE), true);
    assert.equal(map.isZero(0, 9 * PAGE), false);
    assert.equal(map.isZero(0, 0), false);
    assert.equal(map.isZero(100, 10), true, 'a part of a zero page is zero');
    assert.throws(() => map.slice(4, 5), RangeError);
    assert.throws(() => map.assign(0, 8, new Uint8Array(2)), RangeError);
  });
});
