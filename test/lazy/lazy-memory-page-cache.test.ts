// Zero-copy restore: LazyMemory over a shared page cache, the pager in its
// worker answering MISSING and MINOR faults with UFFDIO_CONTINUE, from a real
// checksummed snapshot file.
import assert from 'node:assert/strict';
import { closeSync, mkdtempSync, openSync, readdirSync, readFileSync, readlinkSync, rmSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { fillPattern, findPatternMismatches } from '../../src/demo/pattern.js';
import { createPageCache, LazyMemory, type SourceSpec } from '../../src/lazy/index.js';
import { PAGE_SIZE } from '../../src/native.js';
import { PageCacheMismatchError, SharedPageCache } from '../../src/pager/index.js';
import { writeSnapshot } from '../../src/snapshot/index.js';

const PAGES = 256;
/** Every 16th page of the image is zero: never read, never in the cache. */
const ZERO_EVERY = 16;
const DATA_PAGES = PAGES - PAGES / ZERO_EVERY;

/** Descriptors of this process open on a page cache's memfd. */
function cacheDescriptors(): number {
  let count = 0;
  for (const fd of readdirSync('/proc/self/fd')) {
    try {
      if (readlinkSync(`/proc/self/fd/${fd}`).startsWith('/memfd:userfault-cache:')) count++;
    } catch {
      // Closed while listing (the readdir's own descriptor).
    }
  }
  return count;
}

/** Minor page faults this thread took so far (/proc/thread-self/stat, field 10): not the pager thread's. */
function threadMinorFaults(): number {
  const stat = readFileSync('/proc/thread-self/stat', 'utf8');
  return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[7]);
}

async function snapshotOf(t: { after(fn: () => void): void }, pages = PAGES): Promise<{ spec: SourceSpec; path: string; image: Uint8Array }> {
  const dir = mkdtempSync(join(tmpdir(), 'uf-page-cache-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const image = new Uint8Array(pages * PAGE_SIZE);
  fillPattern(image, 0, 1, ZERO_EVERY);
  const path = join(dir, 'image.snap');
  await writeSnapshot(path, { regions: [{ imageOffset: 0, lengthBytes: image.length, name: 'ram' }], content: image });
  return { spec: { kind: 'snapshot', path }, path, image };
}

describe('lazy memory over a shared page cache', () => {
  test('the first restore reads and checks each page once into the cache; a second maps every page from it with no read, and never sees the first one\'s stores', async (t) => {
    const { spec, image } = await snapshotOf(t);
    const cache = await createPageCache(spec);
    t.after(() => cache.close());
    const first = await LazyMemory.create({ source: spec, pageCache: cache });
    try {
      assert.deepEqual(findPatternMismatches(first.bytes(), 0, 1, ZERO_EVERY), [], 'the first restore reads the image');
      const m = (await first.stats()).metrics;
      assert.equal(m.cacheFills, DATA_PAGES, 'every data page went into the cache once');
      assert.equal(m.pagesMapped, DATA_PAGES, 'and was mapped from there');
      assert.equal(m.pagesCopied, 0, 'nothing was copied with UFFDIO_COPY');
      assert.ok(m.sourceReads > 0);
      assert.equal(cache.filledPageCount(), DATA_PAGES, 'zero pages stay out of the cache');
      // Stores land in the restore's own pages (copy on write), every page of it.
      first.bytes().fill(0xa5);
      assert.ok(first.bytes().every((byte) => byte === 0xa5));
    } finally {
      await first.close();
    }
    const second = await LazyMemory.create({ source: spec, pageCache: cache });
    try {
      assert.deepEqual(second.bytes().slice(), image, 'the second restore reads the image, not the first one\'s stores');
      const m = (await second.stats()).metrics;
      assert.equal(m.sourceReads, 0, 'no page was read from the snapshot again');
      assert.equal(m.cacheFills, 0);
      assert.equal(m.pagesMapped, DATA_PAGES);
      assert.equal(m.zeroPages, PAGES / ZERO_EVERY);
    } finally {
      await second.close();
    }
  });

  test('pages first touched by a store get their private copy at once (UFFDIO_COPY, from the read or from the cache), and the cache still fills and stays clean', async (t) => {
    const pages = 1024;
    const dataPages = pages - pages / ZERO_EVERY;
    const { spec, image } = await snapshotOf(t, pages);
    const cache = await createPageCache(spec);
    t.after(() => cache.close());
    for (const round of ['empty cache', 'filled cache']) {
      const memory = await LazyMemory.create({ source: spec, pageCache: cache });
      try {
        const before = threadMinorFaults();
        memory.bytes().fill(0x5a);
        const faults = threadMinorFaults() - before;
        // A cache page mapped (CONTINUE) and then stored to takes a second,
        // copy-on-write fault in this thread: at least one a page. With the
        // copy, this thread faults only where the pager has not been yet.
        assert.ok(faults < dataPages * 0.75, `${round}: ${faults} page faults for ${dataPages} pages stored to: pages were mapped, then copied on write`);
        assert.ok(memory.bytes().every((byte) => byte === 0x5a), `${round}: the stores are there`);
        const m = (await memory.stats()).metrics;
        assert.equal(m.pagesCopied, dataPages, `${round}: every data page was copied for its store`);
        assert.equal(m.pagesMapped, 0, round);
        assert.equal(m.cacheFills, round === 'empty cache' ? dataPages : 0, `${round}: each page went into the cache once`);
        assert.equal(m.sourceReads > 0, round === 'empty cache', `${round}: a filled cache is not read again`);
      } finally {
        await memory.close();
      }
    }
    const reader = await LazyMemory.create({ source: spec, pageCache: cache });
    try {
      assert.deepEqual(reader.bytes().slice(), image, 'no store reached the cache');
    } finally {
      await reader.close();
    }
  });

  test('two restores open at once share the fills: each page is read once between them, and each restore sees only its own stores', async (t) => {
    const { spec, image } = await snapshotOf(t);
    const cache = await createPageCache(spec);
    t.after(() => cache.close());
    const a = await LazyMemory.create({ source: spec, pageCache: cache, prefetch: false });
    const b = await LazyMemory.create({ source: spec, pageCache: cache, prefetch: false });
    try {
      const half = (PAGES / 2) * PAGE_SIZE;
      assert.deepEqual(findPatternMismatches(a.bytes(0, half), 0, 1, ZERO_EVERY), []);
      a.bytes(0, half).fill(1);
      assert.deepEqual(b.bytes().slice(), image);
      b.bytes(half).fill(2);
      assert.deepEqual(findPatternMismatches(a.bytes(half), PAGES / 2, 1, ZERO_EVERY), []);
      assert.ok(a.bytes(0, half).every((byte) => byte === 1) && b.bytes(half).every((byte) => byte === 2));
      const [ma, mb] = [(await a.stats()).metrics, (await b.stats()).metrics];
      assert.equal(ma.cacheFills + mb.cacheFills, DATA_PAGES, 'each data page was put in the cache by exactly one of them');
      assert.equal(ma.cacheFills, DATA_PAGES / 2);
      assert.equal(mb.sourceReads, DATA_PAGES / 2, 'b read only the half a had not (one page a read, no read-ahead)');
    } finally {
      await a.close();
      await b.close();
    }
  });

  test('a discarded page reads zero in its restore (the cache still holds the image page, which must not come back)', async (t) => {
    const { spec, image } = await snapshotOf(t);
    const cache = await createPageCache(spec);
    t.after(() => cache.close());
    const memory = await LazyMemory.create({ source: spec, pageCache: cache });
    try {
      assert.deepEqual(memory.bytes().slice(), image);
      memory.mapping.discard(3 * PAGE_SIZE, 2 * PAGE_SIZE);
      assert.ok(memory.bytes(3 * PAGE_SIZE, 2 * PAGE_SIZE).every((byte) => byte === 0), 'a discarded page reads zero, as anonymous memory does');
      assert.deepEqual(memory.bytes(5 * PAGE_SIZE).slice(), image.subarray(5 * PAGE_SIZE), 'the rest is untouched');
      assert.ok(cache.isFilled(3) && cache.isFilled(4), 'the cache keeps the page for other restores');
    } finally {
      await memory.close();
    }
  });

  test('a page that fails its checksum never enters the cache: each restore poisons it, and every other page is served', async (t) => {
    const { spec, path, image } = await snapshotOf(t);
    const bad = 37;
    // Flip a byte of page 37's stored contents (the page's own words, found in the file).
    const file = readFileSync(path);
    const at = file.indexOf(Buffer.from(image.subarray(bad * PAGE_SIZE, bad * PAGE_SIZE + 64)));
    assert.ok(at > 0, 'page 37 is stored as it is');
    const fd = openSync(path, 'r+');
    writeSync(fd, Buffer.from([file[at + 100]! ^ 0xff]), 0, 1, at + 100);
    closeSync(fd);
    const cache = await createPageCache(spec);
    t.after(() => cache.close());
    for (const round of [1, 2]) {
      const memory = await LazyMemory.create({ source: spec, pageCache: cache });
      try {
        await memory.fillAll();
        const m = (await memory.stats()).metrics;
        assert.equal(m.pagesPoisoned, 1, `round ${round}: the bad page is poisoned`);
        assert.equal(cache.isFilled(bad), false, `round ${round}: the bad page is not in the cache`);
        assert.equal(m.pagesMapped, DATA_PAGES - 1, `round ${round}: every other data page is mapped`);
        assert.deepEqual(memory.bytes(0, bad * PAGE_SIZE).slice(), image.subarray(0, bad * PAGE_SIZE));
        assert.deepEqual(memory.bytes((bad + 1) * PAGE_SIZE).slice(), image.subarray((bad + 1) * PAGE_SIZE));
      } finally {
        await memory.close();
      }
    }
  });

  test('close() gives back the pager worker\'s share of the cache, whether the worker stopped or died: nothing of the cache stays open after it is closed', async (t) => {
    const { spec } = await snapshotOf(t);
    const cache = await createPageCache(spec);
    const probe = cache.share();
    SharedPageCache.release(probe); // only to learn where the view is
    assert.equal(cacheDescriptors(), 1);
    for (const how of ['stopped', 'died'] as const) {
      const memory = await LazyMemory.create({ source: spec, pageCache: cache, onHandlerLost: 'freeze' });
      assert.equal(cacheDescriptors(), 2, `${how}: the worker holds a descriptor of its own`);
      assert.equal(new Uint32Array(memory.buffer, 0, 1)[0], 0);
      if (how === 'died') await memory.killPagerForTest();
      await memory.close();
      assert.equal(cacheDescriptors(), 1, `${how}: the worker's descriptor is closed`);
    }
    cache.close();
    assert.equal(cacheDescriptors(), 0);
    assert.equal(readFileSync('/proc/self/maps', 'utf8').includes(`${probe.viewAddress.toString(16)}-`), false, 'the view is unmapped');
  });

  test('a cache is for one named image: another image, or a source with no name, is refused before any thread starts', async (t) => {
    const { spec } = await snapshotOf(t);
    const other = await snapshotOf(t);
    const cache = await createPageCache(spec);
    t.after(() => cache.close());
    await assert.rejects(LazyMemory.create({ source: other.spec, pageCache: cache }), (error: unknown) => {
      assert.ok(error instanceof PageCacheMismatchError, String(error));
      assert.equal(error.code, 'EPAGECACHE_MISMATCH');
      assert.match(error.message, /the page cache holds snapshot:.*, not snapshot:/);
      return true;
    });
    await assert.rejects(createPageCache({ kind: 'zero', sizeBytes: PAGE_SIZE }), PageCacheMismatchError);
  });
});
