// Restore from anywhere: a VM whose state and memory come from a page server
// in another process (`userfault pages serve`), its vCPUs' faults served over
// TCP. Needs /dev/kvm and the micro guest. One snapshot serves every test.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { controlRequest } from '../../src/vmm-host/control-api.js';
import type { VmStatus } from '../../src/vm/vmm.js';
import { assertHeartbeatContinues, cleanupList, kvmSkipReason, snapshotRunningWriter, spawnCli, spawnVmm, tempDir, waitForSocket, type CleanupScope, type SpawnedVmm } from './helpers.js';

const skip = kvmSkipReason();
const REGION_PAGES = 4096;

/** `userfault pages serve` on 127.0.0.1 (port 0: any), and the URL it listens on once it says so. */
async function pageServer(t: CleanupScope, snap: string, port = 0): Promise<{ run: SpawnedVmm; url: string; port: number }> {
  const run = spawnCli(t, ['pages', 'serve', '--snapshot', snap, '--listen', `127.0.0.1:${port}`, '--json']);
  const deadline = Date.now() + 10_000;
  for (;;) {
    const line = run.console.text.split('\n').find((l) => l.includes('"listening"'));
    if (line) {
      const event = JSON.parse(line) as { url: string; port: number };
      return { run, url: event.url, port: event.port };
    }
    if (Date.now() > deadline || run.child.exitCode !== null) throw new Error(`the page server did not listen:\n${run.console.text}\n${run.stderr()}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

describe('restore from a page server in another process', { skip, timeout: 120_000 }, () => {
  let dir = '';
  let snap = '';
  let last = 0;

  before(async () => {
    if (skip) return;
    dir = mkdtempSync(join(tmpdir(), 'uf-vm-remote-'));
    snap = join(dir, 'vm.snap');
    last = await snapshotRunningWriter(snap, 'workload=writer mem=16 hb=10 pattern=random seed=5');
  });
  after(() => {
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  test('lazily: the guest runs at once, its faults are served over TCP, the heartbeat continues and its verify is clean', async (t) => {
    const server = await pageServer(t, snap);
    const sock = join(tempDir(t), 'remote.sock');
    const restored = spawnVmm(t, ['restore', '--from', server.url, '--lazy', '--api-sock', sock]);
    await waitForSocket(sock);
    await restored.console.waitFor(new RegExp(`hb ${last + 3} `));
    assertHeartbeatContinues(restored.console.heartbeats(), last, restored.console.text);
    const live = (await controlRequest(sock, 'GET', '/vm')).body as VmStatus;
    assert.equal(live.restore?.mode, 'lazy');
    assert.match(live.restore?.source ?? '', /^page server tcp:\/\/127\.0\.0\.1:\d+$/);
    assert.ok((live.restore?.memory?.metrics.faults ?? 0) > 0, 'the vCPUs faulted and the pager served them from the page server');
    assert.equal((await controlRequest(sock, 'PUT', '/serial/input', { data: 'q' })).status, 204);
    assert.equal(await restored.exit, 0, restored.stderr());
    assert.match(restored.console.text, new RegExp(`verify pages=${REGION_PAGES} bad=0`));
  });

  test('eagerly: every page is read from the page server before the guest runs', async (t) => {
    const server = await pageServer(t, snap);
    const sock = join(tempDir(t), 'eager.sock');
    const restored = spawnVmm(t, ['restore', '--from', server.url, '--api-sock', sock]);
    await waitForSocket(sock);
    await restored.console.waitFor(new RegExp(`hb ${last + 2} `));
    assertHeartbeatContinues(restored.console.heartbeats(), last, restored.console.text);
    await controlRequest(sock, 'PUT', '/serial/input', { data: 'q' });
    assert.equal(await restored.exit, 0, restored.stderr());
    assert.match(restored.console.text, new RegExp(`verify pages=${REGION_PAGES} bad=0`));
  });

  test('the page server killed mid-restore and started again: the guest waits (no zeroes, no SIGBUS) and goes on with every page right', async (t) => {
    const first = await pageServer(t, snap);
    const sock = join(tempDir(t), 'outage.sock');
    // No read-ahead: the random writer keeps faulting on pages it has not touched yet.
    const restored = spawnVmm(t, ['restore', '--from', first.url, '--lazy', '--prefetch-pages', '1', '--api-sock', sock]);
    await waitForSocket(sock);
    await restored.console.waitFor(new RegExp(`hb ${last + 2} `));
    first.run.child.kill('SIGKILL');
    await first.run.exit;
    const beatsAtKill = restored.console.heartbeats().length;
    await new Promise((r) => setTimeout(r, 500));
    const second = await pageServer(t, snap, first.port);
    assert.equal(second.url, first.url);
    await restored.console.waitFor(new RegExp(`hb ${last + beatsAtKill + 2} `), 30_000);
    assertHeartbeatContinues(restored.console.heartbeats(), last, restored.console.text);
    await controlRequest(sock, 'PUT', '/serial/input', { data: 'q' });
    assert.equal(await restored.exit, 0, restored.stderr());
    assert.match(restored.console.text, new RegExp(`verify pages=${REGION_PAGES} bad=0`));
  });

  test('a page server that serves no VM state is refused before any VM is built (exit 65)', async (t) => {
    const { writeSnapshot } = await import('../../src/snapshot/index.js');
    const plain = join(tempDir(t), 'plain.snap');
    await writeSnapshot(plain, { regions: [{ imageOffset: 0, lengthBytes: 1 << 20, name: 'ram' }], content: new Uint8Array(1 << 20) });
    const server = await pageServer(t, plain);
    const restored = spawnVmm(t, ['restore', '--from', server.url, '--lazy']);
    assert.equal(await restored.exit, 65, restored.stderr());
    assert.match(restored.stderr(), /cannot be restored: it serves no VM state/);
  });
});
