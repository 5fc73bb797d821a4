// An object store that goes away under an S3Source and comes back on the same
// port (the local store killed, then started again over the same objects):
// the outage is said ('unavailable' with the reads waiting, 'restored' with
// how long it took) and counted, as for a page server.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { writeSnapshot } from '../../src/snapshot/index.js';
import { parseS3Url } from '../../src/s3/s3-url.js';
import { pushSnapshot } from '../../src/s3/snapshot-push.js';
import { S3Source } from '../../src/s3/s3-source.js';
import type { AvailabilityEvent } from '../../src/sources/network/availability.js';
import { availabilityLine } from '../../src/sources/network/availability-text.js';
import { LocalS3Store } from '../fixtures/s3-store.js';

const PAGE = 4096;
const PAGES = 256;

describe('an object store outage under an S3Source', { timeout: 60_000 }, () => {
  let dir = '';
  let store: LocalS3Store;
  const image = new Uint8Array(PAGES * PAGE).map((_, i) => (Math.floor(i / PAGE) * 7 + 1) & 255 || 1);

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'uf-s3-outage-'));
    store = await LocalS3Store.start();
    process.env.AWS_ACCESS_KEY_ID = 'S3RVER';
    process.env.AWS_SECRET_ACCESS_KEY = 'S3RVER';
    process.env.AWS_EC2_METADATA_DISABLED = 'true';
    const snap = join(dir, 'a.snap');
    await writeSnapshot(snap, { regions: [{ imageOffset: 0, lengthBytes: image.length, name: 'ram' }], content: image });
    await pushSnapshot(snap, parseS3Url(store.url('a')), { endpoint: store.endpoint, chunkBytes: 64 * 1024 });
  });
  after(async () => {
    await store?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  test('killed: unavailable within a second with the read waiting; started again on its port: restored, the read right, the outage counted', async () => {
    const source = await S3Source.open(store.url('a'), { endpoint: store.endpoint, cacheDir: false, requestTimeoutMs: 2_000, deadlineMs: 30_000 });
    const events: AvailabilityEvent[] = [];
    source.onAvailability((event) => events.push(event));
    try {
      await store.kill();
      const killedAt = performance.now();
      const target = new Uint8Array(PAGE);
      let done = false;
      const reading = source.read(100 * PAGE, PAGE, target).then(() => void (done = true));
      while (!events.some((e) => e.type === 'unavailable') && performance.now() - killedAt < 1_000) await new Promise((resolve) => setTimeout(resolve, 10));
      const down = events.find((e) => e.type === 'unavailable');
      assert.ok(down, `unavailable within a second of the kill; heard ${JSON.stringify(events)}`);
      assert.match(availabilityLine(down), new RegExp(`^object s3://snapshots/a unreachable, guest waiting \\(1 read blocked\\), retrying until the deadline in (29|30)\\.\\d s \\(last: .+\\)$`));
      assert.equal(source.availabilityStats.state, 'unavailable');
      await new Promise((resolve) => setTimeout(resolve, 300));
      assert.equal(done, false, 'the read waits for the store');

      store = await store.startAgain();
      await reading;
      assert.deepEqual(target, image.subarray(100 * PAGE, 101 * PAGE));
      const up = events.find((e) => e.type === 'restored');
      assert.ok(up?.type === 'restored', `restored; heard ${JSON.stringify(events)}`);
      assert.ok(up.afterMs >= 300, `back after ${up.afterMs} ms`);
      assert.equal(up.readsWaited, 1);
      assert.match(availabilityLine(up), /^object s3:\/\/snapshots\/a reconnected after \d+\.\d s \(1 read waited\)$/);
      const stats = source.availabilityStats;
      assert.equal(stats.state, 'available');
      assert.equal(stats.outages, 1);
      assert.ok(stats.outageMs >= 300);
    } finally {
      await source.close();
    }
  });
});
