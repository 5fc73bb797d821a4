// The page-state table drawn in a bounded number of cells (the dashboard's memory map).
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { PageState, PageStateTable, downsamplePageStates } from '../../src/pager/page-state.js';

const S = PageState;
const states = (...list: number[]): Uint8Array => Uint8Array.from(list);

describe('the page-state map', () => {
  test('one page a cell when the table is small enough', () => {
    const map = downsamplePageStates(states(S.MISSING, S.PRESENT, S.IN_FLIGHT), 10);
    assert.deepEqual({ ...map, cells: [...map.cells] }, { pageCount: 3, pagesPerCell: 1, cells: [S.MISSING, S.PRESENT, S.IN_FLIGHT] });
  });

  test('never more cells than asked; the last cell may cover fewer pages', () => {
    for (const [pages, max] of [[16384, 4096], [16385, 4096], [7, 3], [1, 1], [65536, 1000]] as const) {
      const map = downsamplePageStates(new Uint8Array(pages), max);
      assert.ok(map.cells.length <= max, `${pages} pages in ${max} cells: ${map.cells.length}`);
      assert.ok(map.pagesPerCell * map.cells.length >= pages);
      assert.ok(map.pagesPerCell * (map.cells.length - 1) < pages);
    }
  });

  test('a page in flight marks its cell, then a poisoned one, then the state most pages are in', () => {
    const cells = [...downsamplePageStates(states(
      S.PRESENT, S.PRESENT, S.PRESENT, S.IN_FLIGHT, // any in flight: in flight
      S.PRESENT, S.POISONED, S.PRESENT, S.PRESENT, // poisoned is never averaged away
      S.MISSING, S.MISSING, S.MISSING, S.PRESENT, // the most: missing
      S.MISSING, S.MISSING, S.PRESENT, S.PRESENT, // a tie: present
      S.DISCARDED, S.DISCARDED, S.PRESENT, S.MISSING,
    ), 5).cells];
    assert.deepEqual(cells, [S.IN_FLIGHT, S.POISONED, S.MISSING, S.PRESENT, S.DISCARDED]);
  });

  test('a table draws itself, and refuses a silly cell count', () => {
    const table = new PageStateTable(8);
    table.set(0, S.IN_FLIGHT);
    table.set(0, S.PRESENT);
    assert.deepEqual([...table.downsample(4).cells], [S.PRESENT, S.MISSING, S.MISSING, S.MISSING]);
    assert.throws(() => table.downsample(0), RangeError);
    assert.throws(() => table.downsample(1.5), RangeError);
  });
});
