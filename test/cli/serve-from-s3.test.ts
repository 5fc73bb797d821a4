// `userfault serve --from s3://BUCKET/KEY`: the Firecracker-style handler
// service, its clients' memory fetched from object storage (a local S3 store).
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { parseS3Url } from '../../src/s3/s3-url.js';
import { pushSnapshot } from '../../src/s3/snapshot-push.js';
import { CLI, ChildRun, spawnClient, tempDir, uffdSkipReason, writeMemoryFiles } from '../handler/helpers.js';
import { LocalS3Store, storeEnv } from '../fixtures/s3-store.js';

const skip = uffdSkipReason();

describe('userfault serve --from s3://', { skip, timeout: 60_000 }, () => {
  let store: LocalS3Store;
  const saved = { ...process.env };
  before(async () => {
    if (skip) return;
    store = await LocalS3Store.start();
    Object.assign(process.env, storeEnv(store.endpoint));
  });
  after(async () => {
    process.env = saved;
    await store?.stop();
  });

  test('two Firecracker-style clients at once are served from chunks fetched by range request, every page right', async (t) => {
    const dir = tempDir(t);
    const files = await writeMemoryFiles(dir);
    await pushSnapshot(files.snapshotPath, parseS3Url(store.url('serve/memory')), { endpoint: store.endpoint });
    await store.reset();
    const socketPath = join(dir, 'serve.sock');
    const child = spawn(process.execPath, [CLI, 'serve', '--socket', socketPath, '--from', store.url('serve/memory'), '--json'], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, USERFAULT_CACHE_DIR: join(dir, 'cache') },
    });
    const server = new ChildRun(t, child, 'userfault serve --from s3://', 30_000);
    const listening = JSON.parse((await server.waitForText(/^\{.*"event":"listening".*\}$/m))[0]) as Record<string, unknown>;
    assert.equal(listening.kind, 'object-store');
    assert.equal(listening.source, `object ${store.url('serve/memory')}`);
    assert.equal(listening.sizeBytes, 4 * 1024 * 1024);
    const clients = [0, 1].map((i) => spawnClient(t, { socketPath, pageCount: 256, filePage: 128 + i * 384, send: 'one-message' }, 20_000, `client ${i}`));
    for (const client of clients) {
      const result = await client.waitForEvent('result');
      assert.equal(result.badCount, 0, JSON.stringify(result));
    }
    const stats = await store.stats();
    assert.ok(stats.rangeGets >= 2 && stats.rangeBytes < 4 * 1024 * 1024, `only the chunks the clients touched (${JSON.stringify(stats)})`);
    server.kill('SIGTERM');
    assert.deepEqual(await server.exit, { code: 0, signal: null });
  });
});
