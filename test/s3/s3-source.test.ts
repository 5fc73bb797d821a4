// S3Source against a local S3 store (s3rver behind a proxy that misbehaves on
// command) and against hostile readers: bytes right or refused, never made up.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { writeSnapshot } from '../../src/snapshot/index.js';
import { ChunkCorruptError } from '../../src/snapshot/object-errors.js';
import { ObjectChangedError, StoreResponseError } from '../../src/s3/errors.js';
import { S3Object, type ObjectInfo, type ObjectReader, type RangeReadOptions } from '../../src/s3/s3-object.js';
import { parseS3Url } from '../../src/s3/s3-url.js';
import { prepareSnapshotObject, pushSnapshot } from '../../src/s3/snapshot-push.js';
import { SnapshotObjectFormatError } from '../../src/snapshot/object-errors.js';
import { SourceGoneError, SourceReadError } from '../../src/sources/page-source.js';
import { S3Source } from '../../src/s3/s3-source.js';
import { LocalS3Store } from '../fixtures/s3-store.js';

const PAGE = 4096;
const PAGES = 512;

function imageBytes(seed: number): Uint8Array {
  const image = new Uint8Array(PAGES * PAGE);
  for (let page = 0; page < PAGES; page++) if (page % 4 !== 3) image.fill((page + seed) & 255 || 1, page * PAGE, (page + 1) * PAGE);
  return image;
}

/** An object's whole bytes in memory, served by a reader that can be told to lie or to wait. */
class MemoryReader implements ObjectReader {
  readonly url = 's3://test-bucket/memory';
  readonly description = 'memory';
  readonly requests: { offset: number; lengthBytes: number }[] = [];
  hold = false;
  private held: (() => void)[] = [];
  lie: ((bytes: Uint8Array) => Uint8Array) | undefined;
  constructor(readonly bytes: Uint8Array, readonly etag = '"e1"') {}
  async head(): Promise<ObjectInfo> {
    return { sizeBytes: this.bytes.length, etag: this.etag };
  }
  async readRange(offset: number, lengthBytes: number, _options?: RangeReadOptions): Promise<Uint8Array> {
    this.requests.push({ offset, lengthBytes });
    if (this.hold && offset > 0) await new Promise<void>((resolve) => this.held.push(resolve));
    const bytes = this.bytes.slice(offset, offset + lengthBytes);
    return this.lie && offset > 0 ? this.lie(bytes) : bytes;
  }
  release(): void {
    this.held.splice(0).forEach((go) => go());
  }
  close(): void {}
}

describe('S3Source', { timeout: 120_000 }, () => {
  let dir = '';
  let store: LocalS3Store;
  let snap = '';
  const image = imageBytes(1);
  const options = () => ({ endpoint: store.endpoint, cacheDir: false as const });

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'uf-s3-source-'));
    store = await LocalS3Store.start();
    process.env.AWS_ACCESS_KEY_ID = 'S3RVER';
    process.env.AWS_SECRET_ACCESS_KEY = 'S3RVER';
    process.env.AWS_EC2_METADATA_DISABLED = 'true';
    snap = join(dir, 'a.snap');
    await writeSnapshot(snap, { regions: [{ imageOffset: 0, lengthBytes: image.length, name: 'ram' }], content: image });
    await pushSnapshot(snap, parseS3Url(store.url('a')), { endpoint: store.endpoint, chunkBytes: 64 * 1024 });
  });
  after(async () => {
    await store?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  test('every range reads as the image; zero pages are known from the index and never fetched', async () => {
    const source = await S3Source.open(store.url('a'), options());
    try {
      assert.equal(source.sizeBytes, image.length);
      for (const [offset, length] of [[0, PAGE], [3 * PAGE, PAGE], [60 * PAGE, 9 * PAGE], [0, image.length], [12345, 6789]] as const) {
        const target = new Uint8Array(length);
        await source.read(offset, length, target, { priority: 'background' });
        assert.deepEqual(target, image.subarray(offset, offset + length), `[${offset}, +${length})`);
      }
      assert.equal(source.isZero(3 * PAGE, PAGE), true);
      assert.equal(source.isZero(2 * PAGE, PAGE), false);
      const target = new Uint8Array(PAGE);
      assert.equal(source.readSync(100 * PAGE, PAGE, target), true, 'a chunk already in memory is read without waiting');
      assert.deepEqual(target, image.subarray(100 * PAGE, 101 * PAGE));
    } finally {
      await source.close();
    }
  });

  test('a corrupt chunk (a byte flipped on the way) is refused before anything is copied, after being asked for again', async () => {
    const source = await S3Source.open(store.url('a'), { ...options(), maxCorruptRetries: 2 });
    try {
      await store.tamper('flip', 3);
      const target = new Uint8Array(PAGE).fill(0xaa);
      // Background: whole chunks, checked against their SHA-256.
      const error = await source.read(20 * PAGE, PAGE, target, { priority: 'background' }).then(() => undefined, (e: unknown) => e);
      assert.ok(error instanceof SourceReadError && !(error instanceof SourceGoneError), String(error));
      assert.equal(error.failure, 'fatal');
      assert.equal(error.failedOffset, 20 * PAGE);
      assert.ok(error.cause instanceof ChunkCorruptError);
      assert.match(error.message, /chunk 1 .*from the store .*is corrupt: SHA-256/);
      assert.ok(target.every((b) => b === 0xaa), 'nothing was copied into the target');
      assert.equal(source.stats.corruptChunks, 3);
      // Known corrupt from now on: refused at once, the store not asked again.
      const before = (await store.stats()).rangeGets;
      await assert.rejects(source.read(21 * PAGE, PAGE, target), SourceReadError);
      assert.equal((await store.stats()).rangeGets, before);
      // Another chunk is fine.
      await source.read(200 * PAGE, PAGE, target);
      assert.deepEqual(target, image.subarray(200 * PAGE, 201 * PAGE));
    } finally {
      await store.tamper(undefined);
      await source.close();
    }
  });

  test('a corrupt page of a demand read is refused by its CRC32, naming the page; the rest of its chunk is still read', async () => {
    const source = await S3Source.open(store.url('a'), { ...options(), maxCorruptRetries: 1 });
    try {
      await store.tamper('flip', 2);
      const target = new Uint8Array(2 * PAGE).fill(0xaa);
      const error = await source.read(33 * PAGE, 2 * PAGE, target).then(() => undefined, (e: unknown) => e);
      assert.ok(error instanceof SourceReadError && error.cause instanceof ChunkCorruptError, String(error));
      // Pages 33 and 34 are stored one after the other; the flip lands in the middle of the reply: page 34.
      assert.match(error.message, /chunk 2's page 34 \(object offset \d+, image offset 0x22000\) .*is corrupt: CRC32C/);
      assert.equal(error.failedOffset, 34 * PAGE);
      assert.ok(target.every((b) => b === 0xaa));
      await source.read(33 * PAGE, PAGE, target);
      assert.deepEqual(target.subarray(0, PAGE), image.subarray(33 * PAGE, 34 * PAGE));
    } finally {
      await store.tamper(undefined);
      await source.close();
    }
  });

  test('demand reads fetch only the pages they need; background reads fetch whole chunks', async () => {
    const source = await S3Source.open(store.url('a'), options());
    try {
      await source.read(64 * PAGE, PAGE, new Uint8Array(PAGE));
      assert.equal(source.stats.bytesFetched, PAGE, 'one page');
      await source.read(128 * PAGE, PAGE, new Uint8Array(PAGE), { priority: 'background' });
      assert.equal(source.stats.bytesFetched, PAGE + 12 * PAGE, 'then a whole chunk of 16 pages, 4 of them zero');
      const whole = await S3Source.open(store.url('a'), { ...options(), demandFetch: 'chunk' });
      await whole.read(64 * PAGE, PAGE, new Uint8Array(PAGE));
      assert.equal(whole.stats.bytesFetched, 12 * PAGE, 'demandFetch chunk: the whole chunk');
      await whole.close();
    } finally {
      await source.close();
    }
  });

  test('a corrupt reply that the next request gets right is retried and read right', async () => {
    const source = await S3Source.open(store.url('a'), options());
    try {
      for (const kind of ['flip', 'short', 'long', 'range'] as const) {
        await store.tamper(kind, 1);
        const target = new Uint8Array(PAGE);
        const offset = { flip: 40, short: 80, long: 120, range: 160 }[kind] * PAGE;
        await source.read(offset, PAGE, target);
        assert.deepEqual(target, image.subarray(offset, offset + PAGE), kind);
      }
      assert.ok(source.stats.retries >= 4, JSON.stringify(source.stats));
    } finally {
      await store.tamper(undefined);
      await source.close();
    }
  });

  test('a store that answers with wrong lengths every time: reads wait until the deadline, then the source is gone (typed, fatal)', async () => {
    const source = await S3Source.open(store.url('a'), { ...options(), deadlineMs: 500 });
    try {
      await store.tamper('short', 1000);
      const started = performance.now();
      const error = await source.read(300 * PAGE, PAGE, new Uint8Array(PAGE)).then(() => undefined, (e: unknown) => e);
      assert.ok(error instanceof SourceGoneError, String(error));
      assert.ok(performance.now() - started >= 450, 'not before the deadline');
      assert.match(error.message, /it did not answer for \d+ ms, past the deadline of 500 ms \(last: .*the store's reply is wrong: a read of \d+ bytes at \d+ /);
      assert.ok((error.cause as Error).cause instanceof StoreResponseError);
    } finally {
      await store.tamper(undefined);
      await source.close();
    }
  });

  test('a store that stops answering: a read waits (not rejected, not zeroes) and completes when it answers again', async () => {
    const source = await S3Source.open(store.url('a'), { ...options(), requestTimeoutMs: 300, deadlineMs: 20_000 });
    try {
      await store.freeze();
      const target = new Uint8Array(PAGE);
      let done = false;
      const reading = source.read(400 * PAGE, PAGE, target).then(() => { done = true; });
      await new Promise((r) => setTimeout(r, 1_000));
      assert.equal(done, false, 'the read waits');
      assert.ok(source.stats.retries > 0, 'its request timed out and was sent again');
      await store.thaw();
      await reading;
      assert.deepEqual(target, image.subarray(400 * PAGE, 401 * PAGE));
    } finally {
      await store.thaw();
      await source.close();
    }
  });

  test('an object replaced while in use is refused by its ETag: the source is gone, no chunk of the new object is used', async () => {
    const other = join(dir, 'b.snap');
    await writeSnapshot(other, { regions: [{ imageOffset: 0, lengthBytes: image.length, name: 'ram' }], content: imageBytes(9) });
    await pushSnapshot(snap, parseS3Url(store.url('changing')), { endpoint: store.endpoint, chunkBytes: 64 * 1024 });
    const source = await S3Source.open(store.url('changing'), options());
    try {
      await pushSnapshot(other, parseS3Url(store.url('changing')), { endpoint: store.endpoint, chunkBytes: 64 * 1024 });
      const error = await source.read(0, PAGES * PAGE, new Uint8Array(PAGES * PAGE)).then(() => undefined, (e: unknown) => e);
      assert.ok(error instanceof SourceGoneError, String(error));
      assert.ok(error.cause instanceof ObjectChangedError, String(error.cause));
    } finally {
      await source.close();
    }
  });

  test('the chunk cache: a second source on the same directory reads its index and chunks from disk, and the store sends only a HEAD', async () => {
    const cacheDir = join(dir, 'cache');
    const first = await S3Source.open(store.url('a'), { endpoint: store.endpoint, cacheDir });
    await first.read(0, image.length, new Uint8Array(image.length), { priority: 'background' });
    // Demand reads of part of a chunk: kept as a part file.
    const partly = await S3Source.open(store.url('a'), { endpoint: store.endpoint, cacheDir: join(dir, 'cache-partial') });
    await partly.read(64 * PAGE, PAGE, new Uint8Array(PAGE));
    await partly.close();
    await first.close();
    await new Promise((r) => setTimeout(r, 200)); // cache writes are not awaited by reads
    await store.reset();
    const second = await S3Source.open(store.url('a'), { endpoint: store.endpoint, cacheDir });
    try {
      const target = new Uint8Array(image.length);
      await second.read(0, image.length, target);
      assert.deepEqual(target, image);
      assert.equal(second.stats.indexFromCache, true);
      assert.equal(second.stats.cacheHits, 32, '512 pages in chunks of 16');
      assert.deepEqual(await store.stats().then((s) => ({ requests: s.requests, rangeGets: s.rangeGets })), { requests: 1, rangeGets: 0 });
    } finally {
      await second.close();
    }
    const again = await S3Source.open(store.url('a'), { endpoint: store.endpoint, cacheDir: join(dir, 'cache-partial') });
    try {
      const target = new Uint8Array(PAGE);
      await again.read(64 * PAGE, PAGE, target);
      assert.deepEqual(target, image.subarray(64 * PAGE, 65 * PAGE));
      assert.deepEqual({ fetched: again.stats.bytesFetched, partialHits: again.stats.partialCacheHits }, { fetched: 0, partialHits: 1 }, 'the page came from the part file');
    } finally {
      await again.close();
    }
  });

  test('demand before background: with one request in flight, a fault\'s chunk is sent before queued read-ahead', async () => {
    const prepared = await prepareSnapshotObject(snap, { chunkBytes: 16 * 1024 });
    const reader = new MemoryReader(await prepared.bytesAt(0, prepared.sizeBytes));
    await prepared.close();
    const source = await S3Source.openReader(reader, { cacheDir: false, maxInFlight: 1 });
    try {
      reader.hold = true;
      const chunkAt = (page: number): number => source.layout.chunkRange(Math.floor(page / 4)).offset;
      const reads = [0, 16, 32, 48].map((page) => source.read(page * PAGE, PAGE, new Uint8Array(PAGE), { priority: 'background' }));
      await new Promise((r) => setTimeout(r, 50));
      const demand = source.read(400 * PAGE, PAGE, new Uint8Array(PAGE), { priority: 'demand' });
      for (let i = 0; i < 5; i++) {
        await new Promise((r) => setTimeout(r, 20));
        reader.release();
      }
      await Promise.all([...reads, demand]);
      // requests[0] opened the object (header and index in one read).
      const order = reader.requests.slice(1).map((r) => r.offset);
      assert.deepEqual(order.slice(0, 2), [chunkAt(0), chunkAt(400)], `the first background request, then the demand one (${order}; ${[0, 16, 32, 48, 400].map(chunkAt)})`);
      assert.equal(source.stats.demandRequests, 1);
    } finally {
      await source.close();
    }
  });

  test('hostile objects: not a snapshot object, truncated, wrong size are refused on open with typed errors', async () => {
    const prepared = await prepareSnapshotObject(snap);
    const good = await prepared.bytesAt(0, prepared.sizeBytes);
    await prepared.close();
    const cases: [string, Uint8Array][] = [
      ['garbage', new Uint8Array(5000).fill(7)],
      ['empty', new Uint8Array(0)],
      ['truncated', good.subarray(0, good.length - PAGE)],
      ['appended', Buffer.concat([good, new Uint8Array(PAGE)])],
      ['header only', good.subarray(0, 128)],
    ];
    for (const [name, bytes] of cases) {
      await assert.rejects(S3Source.openReader(new MemoryReader(bytes), { cacheDir: false }), SnapshotObjectFormatError, name);
    }
    // A reader whose range replies are a page short: the source's own check, not the reader's.
    const reader = new MemoryReader(good);
    reader.lie = (bytes) => bytes.subarray(0, bytes.length - PAGE);
    const source = await S3Source.openReader(reader, { cacheDir: false, deadlineMs: 300 });
    try {
      await assert.rejects(source.read(0, 8 * PAGE, new Uint8Array(8 * PAGE)), (e: unknown) => e instanceof SourceGoneError && /a read of \d+ bytes at \d+ returned \d+/.test(e.message));
    } finally {
      await source.close();
    }
    void S3Object;
  });
});
