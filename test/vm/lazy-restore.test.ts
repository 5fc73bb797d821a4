// Lazy restore in a new process: guest RAM registered with userfaultfd, the
// vCPUs' faults on it served by the pager from the snapshot. Needs /dev/kvm
// and the micro guest. One snapshot, taken mid-workload, serves every test.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { copyFileSync, mkdtempSync, rmSync, statSync, truncateSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { controlRequest } from '../../src/vmm-host/control-api.js';
import type { VmStatus } from '../../src/vm/vmm.js';
import { assertHeartbeatContinues, cleanupList, corruptStoredPage, snapshotRunningWriter, kvmSkipReason, spawnVmm, tempDir, vmmEvents, waitForSocket } from './helpers.js';

const skip = kvmSkipReason();
const MiB = 1 << 20;
/** 64 MiB of guest RAM, of which the writer's region is 16 MiB (4096 pages): the guest touches about a quarter. */
const GUEST_PAGES = (64 * MiB) / 4096;
const REGION_PAGES = 4096;

type LazyStatus = VmStatus & { restore: NonNullable<VmStatus['restore']> & { memory: NonNullable<NonNullable<VmStatus['restore']>['memory']> } };

async function status(sock: string): Promise<LazyStatus> {
  const reply = await controlRequest(sock, 'GET', '/vm');
  assert.equal(reply.status, 200);
  return reply.body as LazyStatus;
}

describe('lazy restore across processes', { skip, timeout: 120000 }, () => {
  let dir = '';
  let snap = '';
  /** The last heartbeat the saved guest printed. */
  let last = 0;

  before(async () => {
    if (skip) return;
    dir = mkdtempSync(join(tmpdir(), 'uf-vm-lazy-'));
    snap = join(dir, 'vm.snap');
    last = await snapshotRunningWriter(snap);
    assert.ok(last >= 3);
  });
  after(() => {
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  test('the heartbeat continues, faults are served by the pager, fewer pages are copied than the guest has, verify is clean', async (t) => {
    const sock = join(tempDir(t), 'lazy.sock');
    const restored = spawnVmm(t, ['restore', snap, '--lazy', '--api-sock', sock]);
    await waitForSocket(sock);
    await restored.console.waitFor(new RegExp(`hb ${last + 3} `));
    assertHeartbeatContinues(restored.console.heartbeats(), last, restored.console.text);

    const live = await status(sock);
    assert.equal(live.restore.mode, 'lazy');
    assert.ok(live.restore.memory.metrics.faults > 0, 'the guest faulted on its RAM and the pager served it');
    assert.ok(live.restore.memory.pages.present > 0);

    assert.equal((await controlRequest(sock, 'PUT', '/serial/input', { data: 'q' })).status, 204);
    assert.equal(await restored.exit, 0, restored.stderr());
    assert.match(restored.console.text, new RegExp(`verify pages=${REGION_PAGES} bad=0`));
    assert.match(restored.console.text, /done status=0/);

    const events = vmmEvents(restored.stderr());
    const running = events.find((e) => e.event === 'running') as { resumedMs: number; restore: { mode: string } } | undefined;
    assert.ok(running && running.resumedMs > 0 && running.restore.mode === 'lazy');
    const exited = events.find((e) => e.event === 'exited') as { status: LazyStatus } | undefined;
    const memory = exited!.status.restore.memory;
    assert.equal(memory.guestPages, GUEST_PAGES);
    assert.ok(memory.metrics.faults > 0);
    assert.ok(memory.metrics.pagesCopied >= REGION_PAGES, `verify read every region page, each filled by a fault or its read-ahead: ${JSON.stringify(memory.metrics)}`);
    assert.ok(memory.metrics.pagesCopied <= memory.snapshotDataPages, 'only stored pages are copied');
    assert.ok(memory.metrics.pagesCopied < GUEST_PAGES / 2, `the guest touched a quarter of its RAM; copied ${memory.metrics.pagesCopied} of ${GUEST_PAGES}`);
    assert.ok(memory.pages.missing > GUEST_PAGES / 2, 'most of guest RAM was never filled');
    assert.equal(memory.metrics.sourceErrors, 0);
  });

  test('--prefetch-all fills the rest in the background while the guest runs', async (t) => {
    const sock = join(tempDir(t), 'lazy.sock');
    const restored = spawnVmm(t, ['restore', snap, '--lazy', '--prefetch-all', '--api-sock', sock]);
    await waitForSocket(sock);
    await restored.console.waitFor(new RegExp(`hb ${last + 1} `));
    const deadline = Date.now() + 15000;
    let live = await status(sock);
    while (live.restore.memory.storedPagesPending > 0 && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 50));
      live = await status(sock);
    }
    const memory = live.restore.memory;
    assert.equal(memory.storedPagesPending, 0, JSON.stringify(memory.pages));
    assert.ok(memory.metrics.prefetchedPages > 0);
    assert.ok(memory.metrics.pagesCopied <= memory.snapshotDataPages, 'zero pages are not copied: they fault in as zero pages, or stay untouched');
    await controlRequest(sock, 'PUT', '/serial/input', { data: 'q' });
    assert.equal(await restored.exit, 0, restored.stderr());
    assertHeartbeatContinues(restored.console.heartbeats(), last, restored.console.text);
    assert.match(restored.console.text, new RegExp(`verify pages=${REGION_PAGES} bad=0`));
  });

  test('a lazily restored VM snapshots again (its memory completed first), and that snapshot restores eagerly', async (t) => {
    const tmp = tempDir(t);
    const sock = join(tmp, 'lazy.sock');
    const snap2 = join(tmp, 'again.snap');
    const lazy = spawnVmm(t, ['restore', snap, '--lazy', '--api-sock', sock]);
    await waitForSocket(sock);
    await lazy.console.waitFor(new RegExp(`hb ${last + 2} [^\\n]*\\n`));
    const created = await controlRequest(sock, 'PUT', '/snapshot/create', { snapshot_path: snap2 });
    assert.equal(created.status, 200, JSON.stringify(created.body));
    const paused = await status(sock);
    assert.equal(paused.state, 'paused');
    assert.equal(paused.restore.memory.complete, true);
    assert.equal(paused.restore.memory.storedPagesPending, 0);
    await controlRequest(sock, 'PUT', '/actions', { action_type: 'Stop' });
    assert.equal(await lazy.exit, 0, lazy.stderr());
    const second = lazy.console.heartbeats().at(-1)!;
    assert.ok(second >= last + 2);

    const eager = spawnVmm(t, ['restore', snap2]);
    await eager.console.waitFor(new RegExp(`hb ${second + 2} `));
    assertHeartbeatContinues(eager.console.heartbeats(), second, eager.console.text);
    eager.child.kill('SIGTERM');
    assert.equal(await eager.exit, 0, eager.stderr());
  });

  test('--verify-first: a corrupted page is refused before the guest runs', async (t) => {
    const bad = join(tempDir(t), 'bad.snap');
    copyFileSync(snap, bad);
    const { imageOffset } = await corruptStoredPage(bad, 'last');
    const restored = spawnVmm(t, ['restore', bad, '--lazy', '--verify-first']);
    assert.equal(await restored.exit, 65, restored.stderr());
    assert.match(restored.stderr(), /ESNAPSHOTINVALID/);
    assert.match(restored.stderr(), new RegExp(`CRC32C check, the first at image offset 0x${imageOffset.toString(16)}`));
    assert.equal(restored.console.text, '', 'the guest never ran');
  });

  test('a truncated snapshot is refused before the guest runs (lazy)', async (t) => {
    const bad = join(tempDir(t), 'short.snap');
    copyFileSync(snap, bad);
    truncateSync(bad, statSync(bad).size - 4096);
    const restored = spawnVmm(t, ['restore', bad, '--lazy']);
    assert.equal(await restored.exit, 65, restored.stderr());
    assert.match(restored.stderr(), /ESNAPSHOTINVALID.*truncated/i);
    assert.equal(restored.console.text, '');
  });

  test('by default the guest resumes at once, and a corrupt page stops the VM when touched (never installed)', async (t) => {
    const tmp = tempDir(t);
    const bad = join(tmp, 'bad.snap');
    const sock = join(tmp, 'lazy.sock');
    copyFileSync(snap, bad);
    await corruptStoredPage(bad, 'last');
    const restored = spawnVmm(t, ['restore', bad, '--lazy', '--api-sock', sock]);
    await waitForSocket(sock);
    // The random writer finds the page soon enough; 'q' makes the guest's verify walk to it for certain.
    await controlRequest(sock, 'PUT', '/serial/input', { data: 'q' }).catch(() => {});
    assert.equal(await restored.exit, 70, restored.stderr());
    const exited = vmmEvents(restored.stderr()).find((e) => e.event === 'exited') as { reason: { type: string; exit: string }; status: LazyStatus } | undefined;
    assert.equal(exited?.reason.type, 'failed');
    assert.match(exited!.reason.exit, /^EGUESTMEMORY: guest memory from snapshot .*is corrupt: CRC32C/);
    assert.equal(exited!.status.restore.memory.metrics.sourceErrors, 1);
    assert.doesNotMatch(restored.console.text, /verify pages=|done status=/, 'the guest never finished on bad memory');
  });
});
