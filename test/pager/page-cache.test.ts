// The shared page cache by itself: a real memfd, real private mappings of it
// (no uffd here: the kernel maps cache pages on its own).
import assert from 'node:assert/strict';
import { ftruncateSync, readFileSync, writeSync } from 'node:fs';
import { describe, test } from 'node:test';
import { fillPattern } from '../../src/demo/pattern.js';
import { Mapping } from '../../src/mem/mapping.js';
import { PAGE_SIZE, native } from '../../src/native.js';
import { PageCacheMismatchError, SharedPageCache } from '../../src/pager/page-cache.js';

const PAGES = 16;

/** Whether `address` starts a mapping of this process (/proc/self/maps). */
function mapped(address: number): boolean {
  return readFileSync('/proc/self/maps', 'utf8').split('\n').some((line) => line.startsWith(`${address.toString(16)}-`));
}

function image(): Uint8Array {
  const bytes = new Uint8Array(PAGES * PAGE_SIZE);
  fillPattern(bytes, 0);
  return bytes;
}

describe('shared page cache', () => {
  test('fill writes each page once and sets its bit after; a share of it (another thread\'s) sees the same bits and bytes', () => {
    const bytes = image();
    const cache = SharedPageCache.create(PAGES * PAGE_SIZE, 'test:image');
    const attached = SharedPageCache.adopt(cache.share());
    try {
      assert.equal(cache.fill(2, 3, bytes, 2 * PAGE_SIZE), 3);
      assert.equal(attached.fill(0, 8, bytes), 5, 'pages 2..4 were in already: only the other five are written');
      for (let index = 0; index < PAGES; index++) assert.equal(attached.isFilled(index), index < 8, `page ${index}`);
      assert.equal(cache.filledPageCount(), 8);
      assert.ok(cache.allFilled(0, 8) && !cache.allFilled(7, 2));
      const view = attached.mapPrivate(0, 8 * PAGE_SIZE);
      try {
        assert.deepEqual(view.bytes().slice(), bytes.subarray(0, 8 * PAGE_SIZE));
      } finally {
        view.unmap();
      }
    } finally {
      attached.close();
      cache.close();
    }
  });

  test('a store to a private mapping of the cache copies the page: the cache and every other mapping keep the image', () => {
    const bytes = image();
    const cache = SharedPageCache.create(PAGES * PAGE_SIZE, 'test:image');
    try {
      cache.fill(0, PAGES, bytes);
      const first = cache.mapPrivate(0, PAGES * PAGE_SIZE);
      first.bytes().fill(0xee);
      const second = cache.mapPrivate(0, PAGES * PAGE_SIZE);
      try {
        assert.deepEqual(second.bytes().slice(), bytes);
      } finally {
        first.unmap();
        second.unmap();
      }
    } finally {
      cache.close();
    }
  });

  test('a mapping outlives the cache it came from (it holds the memfd); calls on a closed cache are refused', () => {
    const bytes = image();
    const cache = SharedPageCache.create(PAGES * PAGE_SIZE, 'test:image');
    cache.fill(0, PAGES, bytes);
    const view = cache.mapPrivate(4 * PAGE_SIZE, 4 * PAGE_SIZE);
    cache.close();
    try {
      assert.deepEqual(view.bytes().slice(), bytes.subarray(4 * PAGE_SIZE, 8 * PAGE_SIZE));
    } finally {
      view.unmap();
    }
    assert.throws(() => cache.fill(0, 1, bytes), /the page cache is closed/);
    assert.throws(() => cache.mapPrivate(0, PAGE_SIZE), /the page cache is closed/);
  });

  test('the memfd handed to other processes is sealed: whoever holds it can map it privately, never write it, resize it or map it shared and writable', () => {
    const bytes = image();
    const cache = SharedPageCache.create(PAGES * PAGE_SIZE, 'test:image');
    try {
      assert.throws(() => ftruncateSync(cache.fd, 0), /EPERM/, 'it never shrinks, sealed or not');
      cache.fill(0, PAGES / 2, bytes);
      const fd = cache.sealForSharing();
      assert.equal(cache.sealForSharing(), fd, 'sealing again changes nothing');
      assert.equal(cache.fill(0, PAGES, bytes), PAGES / 2, 'fills go on after the seal, through the view');
      assert.throws(() => writeSync(fd, new Uint8Array(PAGE_SIZE), 0, PAGE_SIZE, 0), /EPERM/);
      assert.throws(() => ftruncateSync(fd, 0), /EPERM/);
      assert.throws(() => ftruncateSync(fd, 2 * PAGES * PAGE_SIZE), /EPERM/);
      assert.throws(() => Mapping.file(fd, PAGES * PAGE_SIZE, { shared: true }), /EPERM/);
      const readOnly = Mapping.file(fd, PAGES * PAGE_SIZE, { shared: true, writable: false });
      try {
        assert.deepEqual(readOnly.bytes().slice(), bytes);
        assert.throws(() => native.mprotect(readOnly.address, PAGE_SIZE, native.constants.PROT_READ | native.constants.PROT_WRITE), /EACCES|Permission denied/);
      } finally {
        readOnly.unmap();
      }
    } finally {
      cache.close();
    }
  });

  test('the view lives while any share is open; a share nobody closed (its thread died) is released by the sharer', () => {
    const bytes = image();
    const cache = SharedPageCache.create(PAGES * PAGE_SIZE, 'test:image');
    const unadopted = cache.share();
    const shared = SharedPageCache.adopt(cache.share());
    const orphan = cache.share();
    cache.close();
    assert.equal(shared.fill(0, PAGES, bytes), PAGES, 'a share still fills through the view after the sharer closed');
    shared.close();
    SharedPageCache.release(orphan);
    assert.ok(mapped(unadopted.viewAddress), 'one share is still out: the view stays');
    SharedPageCache.release(unadopted);
    assert.equal(mapped(unadopted.viewAddress), false, 'the last one out unmapped the view');
    assert.throws(() => cache.share(), /the page cache is closed/);
  });

  test('sizes, ranges and handles that do not fit are refused with typed errors', () => {
    assert.throws(() => SharedPageCache.create(PAGE_SIZE + 1, 'x'), RangeError);
    assert.throws(() => SharedPageCache.create(0, 'x'), RangeError);
    const cache = SharedPageCache.create(PAGES * PAGE_SIZE, 'test:image');
    try {
      assert.throws(() => cache.fill(PAGES - 1, 2, new Uint8Array(2 * PAGE_SIZE)), RangeError);
      assert.throws(() => cache.fill(0, 2, new Uint8Array(PAGE_SIZE)), RangeError, 'fewer bytes than pages');
      assert.throws(() => cache.mapPrivate(PAGE_SIZE, PAGES * PAGE_SIZE), PageCacheMismatchError);
      const handle = cache.share();
      assert.throws(() => SharedPageCache.adopt({ ...handle, filled: new SharedArrayBuffer(1) }), PageCacheMismatchError);
      assert.throws(() => SharedPageCache.adopt({ ...handle, users: new SharedArrayBuffer(0) }), PageCacheMismatchError);
      SharedPageCache.release(handle);
    } finally {
      cache.close();
    }
  });
});
