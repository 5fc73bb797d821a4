// Restore straight from object storage: a VM snapshot pushed to a local
// S3-compatible store (s3rver behind a counting, misbehaving proxy, in its own
// process), restored by a VMM in another process whose vCPUs' faults are
// served from chunks fetched by range request. Needs /dev/kvm and the micro guest.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { controlRequest } from '../../src/vmm-host/control-api.js';
import type { VmStatus } from '../../src/vm/vmm.js';
import { S3Object } from '../../src/s3/s3-object.js';
import { parseS3Url } from '../../src/s3/s3-url.js';
import { LocalS3Store, storeEnv } from '../fixtures/s3-store.js';
import { assertHeartbeatContinues, cleanupList, kvmSkipReason, snapshotRunningWriter, spawnCli, spawnVmm, tempDir, vmmEvents, waitForSocket } from './helpers.js';

const skip = kvmSkipReason();
const REGION_PAGES = 4096;

describe('restore from object storage', { skip, timeout: 180_000 }, () => {
  let dir = '';
  let store: LocalS3Store;
  let last = 0;
  const savedEnv = { ...process.env };
  /** A fresh chunk cache for the next VMM spawned (children inherit the environment). */
  const freshCache = (): string => {
    const cache = mkdtempSync(join(dir, 'cache-'));
    process.env.USERFAULT_CACHE_DIR = cache;
    return cache;
  };

  before(async () => {
    if (skip) return;
    dir = mkdtempSync(join(tmpdir(), 'uf-vm-s3-'));
    store = await LocalS3Store.start();
    Object.assign(process.env, storeEnv(store.endpoint));
    const snap = join(dir, 'vm.snap');
    last = await snapshotRunningWriter(snap, 'workload=writer mem=16 hb=10 pattern=random seed=5');
    const cleanup = cleanupList();
    try {
      for (const [key, chunk] of [['vm', '256K'], ['vm-small-chunks', '16K']] as const) {
        const push = spawnCli(cleanup, ['snapshot', 'push', snap, store.url(key), '--chunk', chunk, '--json']);
        assert.equal(await push.exit, 0, push.stderr());
      }
      // A copy whose last chunk was damaged at rest: one byte flipped in the store.
      const object = S3Object.open(parseS3Url(store.url('vm')), { endpoint: store.endpoint });
      const { sizeBytes } = await object.head();
      const bytes = await object.readRange(0, sizeBytes);
      bytes[sizeBytes - 1000] ^= 0xff;
      await S3Object.open(parseS3Url(store.url('vm-corrupt')), { endpoint: store.endpoint }).put(bytes);
      object.close();
    } finally {
      cleanup.run();
    }
  });
  after(async () => {
    process.env = savedEnv;
    await store?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  test('lazily: the guest runs at once, its faults are served by range reads from the store, the heartbeat continues and its verify is clean', async (t) => {
    freshCache();
    await store.reset();
    const sock = join(tempDir(t), 's3.sock');
    const restored = spawnVmm(t, ['restore', '--from', store.url('vm'), '--lazy', '--api-sock', sock]);
    await waitForSocket(sock);
    await restored.console.waitFor(new RegExp(`hb ${last + 3} `));
    assertHeartbeatContinues(restored.console.heartbeats(), last, restored.console.text);
    const live = (await controlRequest(sock, 'GET', '/vm')).body as VmStatus;
    assert.equal(live.restore?.mode, 'lazy');
    assert.equal(live.restore?.source, `object ${store.url('vm')}`);
    assert.ok((live.restore?.memory?.metrics.faults ?? 0) > 0, 'the vCPUs faulted and the pager served them from the store');
    assert.equal((await controlRequest(sock, 'PUT', '/serial/input', { data: 'q' })).status, 204);
    assert.equal(await restored.exit, 0, restored.stderr());
    assert.match(restored.console.text, new RegExp(`verify pages=${REGION_PAGES} bad=0`));
    const stats = await store.stats();
    assert.ok(stats.rangeGets > 1, `chunks were fetched by range request (${JSON.stringify(stats)})`);
  });

  test('the chunk cache is reused: a second restore on the host reads nothing but a HEAD from the store', async (t) => {
    freshCache();
    const first = spawnVmm(t, ['restore', '--from', store.url('vm'), '--lazy']);
    await first.console.waitFor(new RegExp(`hb ${last + 1} `));
    first.child.kill('SIGTERM');
    await first.exit;
    // The first restore fetched what its guest touched; a restore that walks every page fetches the rest once.
    const walk = join(tempDir(t), 'walk.sock');
    const second = spawnVmm(t, ['restore', '--from', store.url('vm'), '--lazy', '--api-sock', walk]);
    await waitForSocket(walk);
    await controlRequest(walk, 'PUT', '/serial/input', { data: 'q' });
    assert.equal(await second.exit, 0, second.stderr());
    await store.reset();
    const sock = join(tempDir(t), 'cached.sock');
    const third = spawnVmm(t, ['restore', '--from', store.url('vm'), '--lazy', '--api-sock', sock]);
    await waitForSocket(sock);
    await third.console.waitFor(new RegExp(`hb ${last + 2} `));
    await controlRequest(sock, 'PUT', '/serial/input', { data: 'q' });
    assert.equal(await third.exit, 0, third.stderr());
    assert.match(third.console.text, new RegExp(`verify pages=${REGION_PAGES} bad=0`));
    const stats = await store.stats();
    assert.deepEqual({ requests: stats.requests, rangeBytes: stats.rangeBytes }, { requests: 1, rangeBytes: 0 }, `only the HEAD that finds the object's version (${JSON.stringify(stats)})`);
  });

  test('eagerly: every page is read from the store before the guest runs', async (t) => {
    freshCache();
    const sock = join(tempDir(t), 'eager.sock');
    const restored = spawnVmm(t, ['restore', '--from', store.url('vm'), '--api-sock', sock]);
    await waitForSocket(sock);
    await restored.console.waitFor(new RegExp(`hb ${last + 2} `));
    assertHeartbeatContinues(restored.console.heartbeats(), last, restored.console.text);
    await controlRequest(sock, 'PUT', '/serial/input', { data: 'q' });
    assert.equal(await restored.exit, 0, restored.stderr());
    assert.match(restored.console.text, new RegExp(`verify pages=${REGION_PAGES} bad=0`));
  });

  test('a chunk corrupt in the store is refused before it reaches guest memory: the VM stops with the chunk named, the guest never finishes on bad memory', async (t) => {
    freshCache();
    const sock = join(tempDir(t), 'corrupt.sock');
    const restored = spawnVmm(t, ['restore', '--from', store.url('vm-corrupt'), '--lazy', '--api-sock', sock]);
    await waitForSocket(sock);
    await controlRequest(sock, 'PUT', '/serial/input', { data: 'q' }).catch(() => {});
    assert.equal(await restored.exit, 70, restored.stderr());
    const exited = vmmEvents(restored.stderr()).find((e) => e.event === 'exited') as { reason: { type: string; exit: string }; status: VmStatus } | undefined;
    assert.equal(exited?.reason.type, 'failed');
    assert.match(exited!.reason.exit, /^EGUESTMEMORY: guest memory from object s3:\/\/snapshots\/vm-corrupt: .*chunk \d+(?:'s page \d+)? \(object offset \d+, image offset 0x[0-9a-f]+\) from the store .*is corrupt: (?:SHA-256|CRC32C)/);
    assert.ok((exited!.status.restore?.memory?.pages.poisoned ?? 0) > 0, 'the bad page is poisoned, not zero-filled');
    assert.doesNotMatch(restored.console.text, /verify pages=|done status=/);
  });

  test('a store that stops answering: faults wait (no zeroes, no SIGBUS), and the guest goes on with every page right when it answers again', async (t) => {
    freshCache();
    const sock = join(tempDir(t), 'frozen.sock');
    const restored = spawnVmm(t, ['restore', '--from', store.url('vm-small-chunks'), '--lazy', '--prefetch-pages', '1', '--source-deadline-ms', '60000', '--api-sock', sock]);
    await waitForSocket(sock);
    // The verify walks every page, one 16 KiB chunk per fault, each slowed to 20 ms: it is mid-walk when the store goes silent.
    // ('q' first: the UART's input is taken by the vCPU, which may be the thread waiting.)
    await store.latency(20);
    await controlRequest(sock, 'PUT', '/serial/input', { data: 'q' });
    await store.freeze();
    try {
      const deadline = Date.now() + 10_000;
      while ((await store.stats()).held === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
      assert.ok((await store.stats()).held > 0, 'a fault is waiting on the store');
      await new Promise((r) => setTimeout(r, 1_500));
      assert.doesNotMatch(restored.console.text, /verify pages=/, 'the guest waits while the store is silent');
      assert.equal(restored.child.exitCode, null, restored.stderr());
    } finally {
      await store.latency(0);
      await store.thaw();
    }
    assert.equal(await restored.exit, 0, restored.stderr());
    assert.match(restored.console.text, new RegExp(`verify pages=${REGION_PAGES} bad=0`));
  });

  test('a store silent past --source-deadline-ms: the waiting pages are poisoned, never zero-filled, and the VM stops with the reason', async (t) => {
    freshCache();
    const sock = join(tempDir(t), 'deadline.sock');
    const restored = spawnVmm(t, ['restore', '--from', store.url('vm-small-chunks'), '--lazy', '--prefetch-pages', '1', '--source-deadline-ms', '1000', '--api-sock', sock]);
    await waitForSocket(sock);
    await store.latency(20);
    await controlRequest(sock, 'PUT', '/serial/input', { data: 'q' });
    await store.freeze();
    try {
      // A request times out after 5 s; the deadline counts from that first failure.
      assert.equal(await Promise.race([restored.exit, new Promise((r) => setTimeout(() => r('still running'), 30_000))]), 70, restored.stderr());
    } finally {
      await store.latency(0);
      await store.thaw();
    }
    const exited = vmmEvents(restored.stderr()).find((e) => e.event === 'exited') as { reason: { type: string; exit: string } } | undefined;
    assert.match(exited?.reason.exit ?? '', /it did not answer for \d+ ms, past the deadline of 1000 ms/);
    assert.doesNotMatch(restored.console.text, /verify pages=|done status=/);
  });

  test('an object that does not hold a VM snapshot is refused before any VM is built (exit 65)', async (t) => {
    const { writeSnapshot } = await import('../../src/snapshot/index.js');
    const plain = join(tempDir(t), 'plain.snap');
    await writeSnapshot(plain, { regions: [{ imageOffset: 0, lengthBytes: 1 << 20, name: 'ram' }], content: new Uint8Array(1 << 20) });
    const push = spawnCli(t, ['snapshot', 'push', plain, store.url('plain')]);
    assert.equal(await push.exit, 0, push.stderr());
    const restored = spawnVmm(t, ['restore', '--from', store.url('plain'), '--lazy']);
    assert.equal(await restored.exit, 65, restored.stderr());
    assert.match(restored.stderr(), /object s3:\/\/snapshots\/plain cannot be restored: its snapshot has no VM state/);
  });
});
