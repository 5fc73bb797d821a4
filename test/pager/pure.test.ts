import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { AddressMap, RegionLayoutError } from '../../src/pager/address-map.js';
import { IllegalPageTransitionError, PageState, PageStateTable } from '../../src/pager/page-state.js';
import { ReadAhead } from '../../src/pager/readahead.js';

const P = 4096;

describe('page states', () => {
  test('a page goes missing -> in flight -> present -> discarded -> present', () => {
    const table = new PageStateTable(1);
    for (const to of [PageState.IN_FLIGHT, PageState.PRESENT, PageState.DISCARDED, PageState.PRESENT]) table.set(0, to);
    assert.equal(table.get(0), PageState.PRESENT);
  });

  test('an unmapped page never comes back, and the refusal names the page and states', () => {
    const table = new PageStateTable(3);
    table.set(2, PageState.UNMAPPED);
    assert.throws(() => table.set(2, PageState.PRESENT), (e: unknown) => e instanceof IllegalPageTransitionError && /page 2: illegal transition unmapped -> present/.test(e.message));
  });

  test('a discarded page cannot go back to the source (missing or in flight)', () => {
    const table = new PageStateTable(1);
    table.set(0, PageState.DISCARDED);
    assert.throws(() => table.set(0, PageState.IN_FLIGHT), IllegalPageTransitionError);
    assert.throws(() => table.set(0, PageState.MISSING), IllegalPageTransitionError);
  });

  test('a forked copy keeps present and discarded pages and refetches pages that were in flight', () => {
    const table = new PageStateTable(3);
    table.set(0, PageState.PRESENT);
    table.set(1, PageState.IN_FLIGHT);
    table.set(2, PageState.DISCARDED);
    assert.deepEqual([...table.forkedCopy().states], [PageState.PRESENT, PageState.MISSING, PageState.DISCARDED]);
  });
});

describe('the address map', () => {
  const map = () => new AddressMap([{ address: 0x10000, lengthBytes: 8 * P, sourceOffset: 4 * P }]);

  test('addresses and image offsets translate both ways', () => {
    const m = map();
    assert.equal(m.sourceOffsetOf(0x10000 + 3 * P + 5), 7 * P + 5);
    assert.equal(m.addressOf(7 * P), 0x10000 + 3 * P);
    assert.equal(m.sourceOffsetOf(0x10000 + 8 * P), undefined);
    assert.equal(m.addressOf(0), undefined);
  });

  test('munmap of the middle splits the extent and returns what it showed', () => {
    const m = map();
    assert.deepEqual(m.remove(0x10000 + 2 * P, 0x10000 + 4 * P), [{ address: 0x10000 + 2 * P, lengthBytes: 2 * P, sourceOffset: 6 * P }]);
    assert.equal(m.regions.length, 2);
    assert.equal(m.addressOf(6 * P), undefined);
    assert.equal(m.addressOf(8 * P), 0x10000 + 4 * P);
    assert.equal(m.contiguousPagesFrom(4 * P, 64), 2);
  });

  test('mremap of part of an extent moves the image it showed to the new address', () => {
    const m = map();
    m.move(0x10000 + 6 * P, 0x90000, 2 * P);
    assert.equal(m.addressOf(10 * P), 0x90000);
    assert.equal(m.addressOf(11 * P), 0x90000 + P);
    assert.equal(m.sourceOffsetOf(0x10000 + 6 * P), undefined);
    assert.equal(m.addressOf(4 * P), 0x10000);
  });

  test('two regions showing the same image bytes, or sharing host addresses, are refused (one state per image page)', () => {
    const alias = () => new AddressMap([{ address: 0x10000, lengthBytes: 4 * P, sourceOffset: 0 }, { address: 0x40000, lengthBytes: 4 * P, sourceOffset: 2 * P }]);
    assert.throws(alias, (e: unknown) => e instanceof RegionLayoutError && e.code === 'EREGIONS' && /same image bytes/.test(e.message));
    const overlap = () => new AddressMap([{ address: 0x10000, lengthBytes: 4 * P, sourceOffset: 0 }, { address: 0x12000, lengthBytes: 4 * P, sourceOffset: 8 * P }]);
    assert.throws(overlap, /overlap in host memory/);
    assert.doesNotThrow(() => new AddressMap([{ address: 0x10000, lengthBytes: 4 * P, sourceOffset: 4 * P }, { address: 0x40000, lengthBytes: 4 * P, sourceOffset: 0 }]));
  });

  test('a region that is not page-aligned is refused', () => {
    assert.throws(() => new AddressMap([{ address: 0x10001, lengthBytes: P, sourceOffset: 0 }]), RegionLayoutError);
  });
});

describe('adaptive read-ahead', () => {
  test('sequential faults double the window up to the maximum; a jump starts small again', () => {
    const ra = new ReadAhead({ initialPages: 1, maxPages: 8 });
    const windows: number[] = [];
    let page = 0;
    for (let i = 0; i < 6; i++) {
      const w = ra.windowFor(page);
      windows.push(w);
      page += w;
    }
    assert.deepEqual(windows, [1, 2, 4, 8, 8, 8]);
    assert.equal(ra.windowFor(100_000), 1);
  });

  test('two interleaved streams do not reset each other', () => {
    const ra = new ReadAhead({ initialPages: 1, maxPages: 16 });
    let a = 0;
    let b = 50_000;
    const last: number[] = [];
    for (let i = 0; i < 5; i++) {
      const wa = ra.windowFor(a);
      a += wa;
      const wb = ra.windowFor(b);
      b += wb;
      last.splice(0, 2, wa, wb);
    }
    assert.deepEqual(last, [16, 16]);
  });

  test('prefetch off means exactly one page per fault', () => {
    const ra = new ReadAhead(false);
    assert.equal(ra.windowFor(0), 1);
    assert.equal(ra.windowFor(1), 1);
    assert.equal(ra.atFullSpeed, false, 'with read-ahead off no stream is ever at full speed');
  });

  test('a stream is at full speed once a fault continues it at the largest window; a jump is not', () => {
    const ra = new ReadAhead({ initialPages: 1, maxPages: 4 });
    const speeds: boolean[] = [];
    let page = 0;
    for (let i = 0; i < 5; i++) {
      page += ra.windowFor(page);
      speeds.push(ra.atFullSpeed);
    }
    assert.deepEqual(speeds, [false, false, true, true, true]);
    ra.windowFor(100_000);
    assert.equal(ra.atFullSpeed, false);
  });
});


