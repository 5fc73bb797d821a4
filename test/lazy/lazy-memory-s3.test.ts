// LazyMemory { kind: 's3' }: this process's memory filled from object storage
// (a local S3 store in its own process, so the thread that faults never
// blocks the store that serves it).
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fillPattern, findPatternMismatches } from '../../src/demo/pattern.js';
import { LazyMemory } from '../../src/lazy/index.js';
import { PAGE_SIZE } from '../../src/native.js';
import { parseS3Url } from '../../src/s3/s3-url.js';
import { pushSnapshot } from '../../src/s3/snapshot-push.js';
import { writeSnapshot } from '../../src/snapshot/index.js';
import { uffdSkipReason } from '../handler/helpers.js';
import { LocalS3Store, storeEnv } from '../fixtures/s3-store.js';

const skip = uffdSkipReason();

describe('LazyMemory from object storage', { skip, timeout: 60_000 }, () => {
  let store: LocalS3Store;
  let dir = '';
  const saved = { ...process.env };
  before(async () => {
    if (skip) return;
    store = await LocalS3Store.start();
    Object.assign(process.env, storeEnv(store.endpoint));
    dir = mkdtempSync(join(tmpdir(), 'uf-lazy-s3-'));
  });
  after(async () => {
    process.env = saved;
    await store?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  test('{ kind: "s3" } fills this process\'s memory on first touch from a pushed snapshot, zero pages never fetched', async () => {
    const image = new Uint8Array(256 * PAGE_SIZE);
    fillPattern(image, 0, 3, 8);
    const snap = join(dir, 'image.snap');
    await writeSnapshot(snap, { regions: [{ imageOffset: 0, lengthBytes: image.length, name: 'ram' }], content: image });
    await pushSnapshot(snap, parseS3Url(store.url('lazy/image')), { endpoint: store.endpoint, chunkBytes: 64 * 1024 });
    const memory = await LazyMemory.create({ source: { kind: 's3', url: store.url('lazy/image'), options: { endpoint: store.endpoint, cacheDir: join(dir, 'cache') } } });
    try {
      assert.equal(memory.sizeBytes, image.length);
      assert.deepEqual(findPatternMismatches(memory.bytes(), 0, 3, 8), [], 'every page matches the image');
      const stats = await memory.stats();
      assert.ok(stats.metrics.faults > 0);
      assert.ok(stats.metrics.zeroPages > 0, 'zero pages are known from the index and never read');
    } finally {
      await memory.close();
    }
  });
});
