// The view of a file's page cache sources lend to the pager: ranges wholly
// cached come back as views; anything else does not, and a range just read in
// is seen at once, whatever residency answers are remembered.
import assert from 'node:assert/strict';
import { closeSync, ftruncateSync, mkdtempSync, openSync, rmSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { PAGE_SIZE } from '../../src/native.js';
import { PageCacheView } from '../../src/sources/page-cache-view.js';

const PAGES = 1024; // two residency blocks

function sparseFile(t: { after(fn: () => void): void }): number {
  const dir = mkdtempSync(join(tmpdir(), 'uf-view-'));
  const fd = openSync(join(dir, 'file'), 'w+');
  t.after(() => {
    closeSync(fd);
    rmSync(dir, { recursive: true, force: true });
  });
  ftruncateSync(fd, PAGES * PAGE_SIZE); // all holes: nothing in the page cache
  return fd;
}

describe('page cache view', () => {
  test('a range is lent only when every page of it is in the page cache; one written since is seen at once, not after the remembered answer expires', (t) => {
    const fd = sparseFile(t);
    const view = PageCacheView.open(fd, 0, PAGES * PAGE_SIZE)!;
    t.after(() => view.close());
    assert.equal(view.cached(5 * PAGE_SIZE, PAGE_SIZE), undefined, 'a hole is not cached');
    const page = new Uint8Array(PAGE_SIZE).fill(0x5c);
    writeSync(fd, page, 0, PAGE_SIZE, 5 * PAGE_SIZE);
    // Views are copied before they are compared: a failure's message is written after the view is unmapped.
    assert.deepEqual(view.cached(5 * PAGE_SIZE, PAGE_SIZE)?.slice(), page, 'written just now, and lent');
    assert.equal(view.cached(5 * PAGE_SIZE, 2 * PAGE_SIZE), undefined, 'a range with one page still out is not');
    writeSync(fd, page, 0, PAGE_SIZE, 6 * PAGE_SIZE);
    assert.deepEqual(view.cached(5 * PAGE_SIZE, 2 * PAGE_SIZE)?.slice(), new Uint8Array(2 * PAGE_SIZE).fill(0x5c));
    // Across the two blocks.
    writeSync(fd, new Uint8Array(2 * PAGE_SIZE).fill(1), 0, 2 * PAGE_SIZE, 511 * PAGE_SIZE);
    assert.equal(view.cached(511 * PAGE_SIZE, 2 * PAGE_SIZE)?.length, 2 * PAGE_SIZE);
  });

  test('ranges outside the view, empty ones, and any after close() are not lent', (t) => {
    const fd = sparseFile(t);
    writeSync(fd, new Uint8Array(PAGES * PAGE_SIZE), 0, PAGES * PAGE_SIZE, 0);
    const view = PageCacheView.open(fd, PAGE_SIZE, (PAGES - 1) * PAGE_SIZE)!;
    assert.equal(view.cached(0, (PAGES - 1) * PAGE_SIZE)?.length, (PAGES - 1) * PAGE_SIZE);
    assert.equal(view.cached((PAGES - 1) * PAGE_SIZE, PAGE_SIZE), undefined);
    assert.equal(view.cached(-PAGE_SIZE, PAGE_SIZE), undefined);
    assert.equal(view.cached(0, 0), undefined);
    view.close();
    assert.equal(view.cached(0, PAGE_SIZE), undefined);
  });
});
