// Migration you can trust: a connection cut in the middle of post-copy is
// survived (the destination's vCPUs wait on their missing pages, nothing is
// poisoned, the source reconnects and sends what the destination lacks, and
// every page still verifies); a cut during pre-copy fails the migration and
// the guest runs on at the source. Needs /dev/kvm and the micro guest.
import assert from 'node:assert/strict';
import { describe, test, type TestContext } from 'node:test';
import { controlRequest } from '../../src/vmm-host/control-api.js';
import type { MigrationProgress } from '../../src/migrate/source-migration.js';
import { kvmSkipReason, tempDir, vmmEvents } from '../vm/helpers.js';
import { CutProxy } from './cut-proxy.js';
import { destination, source, until } from './vmm-pair.js';

const skip = kvmSkipReason();

async function progressOf(sock: string): Promise<MigrationProgress | undefined> {
  const reply = await controlRequest(sock, 'GET', '/migrate').catch(() => undefined);
  return reply?.status === 200 ? (reply.body as MigrationProgress) : undefined;
}

interface Interruption {
  /** Extra fields of PUT /migrate. */
  migrate?: Record<string, unknown>;
  /** Interrupt the link (the post-copy push is under way); resolves once it is restored or left to recover. */
  interrupt(proxy: CutProxy): Promise<void>;
}

/**
 * Post-copy through a throttled proxy, interrupted in the middle of its push:
 * the migration must recover, every page verify, and the guest run on with a
 * continuous heartbeat and a clean verify of its own memory.
 */
async function postcopySurvives(t: TestContext, seed: number, interruption: Interruption): Promise<{ source: MigrationProgress; proxy: CutProxy }> {
  const dir = tempDir(t);
  const { run: src, sock: srcSock } = await source(t, dir, `workload=writer mem=16 hb=10 pattern=random seed=${seed}`);
  const { run: dst, sock: dstSock, host, port } = await destination(t, dir, interruption.migrate?.stall_timeout_ms ? ['--stall-timeout-ms', String(interruption.migrate.stall_timeout_ms)] : []);
  // 8 MB/s from the source: the post-copy push of 64 MiB takes seconds, long enough to be cut in the middle.
  const proxy = await CutProxy.start({ host, port: Number(port) }, { bytesPerSecond: 8e6 });
  t.after(() => proxy.close());
  assert.equal((await controlRequest(srcSock, 'PUT', '/migrate', { to: proxy.address, mode: 'postcopy', ...interruption.migrate })).status, 202);
  await until('post-copy with pages pushed', async () => {
    const p = await progressOf(srcSock);
    return p?.state === 'postcopy' && p.pushedPages > 200;
  });
  await interruption.interrupt(proxy);
  await until('a completed migration', async () => {
    const p = await progressOf(srcSock);
    return p === undefined || p.state === 'completed';
  }, 60_000);
  assert.equal(await src.exit, 0, src.stderr());
  const exited = vmmEvents(src.stderr()).find((e) => e.event === 'exited') as unknown as { status: { migration: MigrationProgress } } | undefined;
  const report = exited!.status.migration;
  assert.equal(report.state, 'completed');
  assert.equal(report.verified, true, 'every page verified after the interruption');
  assert.ok((report.recoveries ?? 0) >= 1, 'recovered from the interruption');
  assert.ok(proxy.accepted >= 4, 'the source came back through the proxy');
  // The guest ran on: heartbeat continuous across the move and the cut, its verify clean.
  const last = src.console.heartbeats().at(-1)!;
  await dst.console.waitFor(new RegExp(`hb ${last + 3} `), 30_000);
  const all = [...src.console.heartbeats(), ...dst.console.heartbeats()];
  assert.deepEqual(all, all.map((_, i) => all[0]! + i), 'no gap, no repeat');
  await controlRequest(dstSock, 'PUT', '/serial/input', { data: 'q' });
  assert.equal(await dst.exit, 0, dst.stderr());
  assert.match(dst.console.text, /verify pages=4096 bad=0/);
  const incoming = vmmEvents(dst.stderr()).find((e) => e.event === 'migration') as unknown as { progress: { verified: boolean; recoveries?: number } };
  assert.equal(incoming.progress.verified, true);
  assert.ok((incoming.progress.recoveries ?? 0) >= 1);
  t.diagnostic(`recovered in ${report.lastRecoveryMs} ms (loss to RESUMED); total ${report.elapsedMs} ms`);
  return { source: report, proxy };
}

describe('a migration survives a cut', { skip, timeout: 120_000 }, () => {
  test('cut mid-post-copy: the guest waits, the source reconnects, the rest is sent, every page verified and the guest\'s verify clean', async (t) => {
    await postcopySurvives(t, 21, {
      async interrupt(proxy) {
        assert.ok(proxy.cut() >= 2, 'both connections cut');
      },
    });
  });

  test('a blackholed link mid-post-copy (nothing closes): the silence is noticed, the source reconnects once the link is back, every page verified', async (t) => {
    const { source } = await postcopySurvives(t, 23, {
      migrate: { stall_timeout_ms: 1000 },
      async interrupt(proxy) {
        assert.ok(proxy.freeze() >= 2, 'both connections frozen');
        await new Promise((r) => setTimeout(r, 3000));
        proxy.thaw();
      },
    });
    // Noticed after ~1 s of silence, back once the link was: the recovery spans the blackhole, not TCP's minutes.
    assert.ok(source.lastRecoveryMs! >= 1000 && source.lastRecoveryMs! < 15_000, `recovery took ${source.lastRecoveryMs} ms`);
  });

  test('cut during pre-copy: the migration fails cleanly and the guest runs on at the source', async (t) => {
    const dir = tempDir(t);
    const { run: src, sock: srcSock } = await source(t, dir, 'workload=writer mem=16 hb=10 pattern=random seed=22');
    const { run: dst, host, port } = await destination(t, dir);
    const proxy = await CutProxy.start({ host, port: Number(port) }, { bytesPerSecond: 4e6 });
    t.after(() => proxy.close());
    assert.equal((await controlRequest(srcSock, 'PUT', '/migrate', { to: proxy.address, mode: 'precopy' })).status, 202);
    await until('pre-copy under way', async () => (await progressOf(srcSock))?.state === 'precopy' && ((await progressOf(srcSock))?.dataPagesSent ?? 0) > 100);
    proxy.cut();
    await until('a failed migration', async () => (await progressOf(srcSock))?.state === 'failed');
    const vm = (await controlRequest(srcSock, 'GET', '/vm')).body as { state: string };
    assert.equal(vm.state, 'running');
    const beats = src.console.heartbeats();
    await src.console.waitFor(new RegExp(`hb ${beats.at(-1)! + 2} `));
    await controlRequest(srcSock, 'PUT', '/serial/input', { data: 'q' });
    assert.equal(await src.exit, 0);
    assert.match(src.console.text, /verify pages=4096 bad=0/);
    // The destination discarded what it had and exits (nothing ran there).
    assert.equal(dst.console.heartbeats().length, 0);
  });
});

describe('a migration ends cleanly whatever order its connections close in', { skip, timeout: 120_000 }, () => {
  test('the urgent connection seen closing before the verdict on the main one: no cut, the destination completes, verified', async (t) => {
    const dir = tempDir(t);
    const { run: src, sock: srcSock } = await source(t, dir, 'workload=writer mem=8 hb=10 pattern=random seed=24', { mem: '32M' });
    const { run: dst, host, port } = await destination(t, dir);
    // The source sends VERIFIED on main, then closes both: main's bytes lag, so the urgent close is seen first.
    const proxy = await CutProxy.start({ host, port: Number(port) }, { mainLagMs: 150 });
    t.after(() => proxy.close());
    assert.equal((await controlRequest(srcSock, 'PUT', '/migrate', { to: proxy.address, mode: 'postcopy' })).status, 202);
    assert.equal(await src.exit, 0, src.stderr());
    const exited = vmmEvents(src.stderr()).find((e) => e.event === 'exited') as unknown as { status: { migration: MigrationProgress } };
    assert.equal(exited.status.migration.state, 'completed');
    assert.equal(exited.status.migration.verified, true);
    assert.equal(exited.status.migration.recoveries ?? 0, 0);
    const last = src.console.heartbeats().at(-1)!;
    await dst.console.waitFor(new RegExp(`hb ${last + 3} `), 30_000);
    const incoming = await until('the destination\'s migration line', async () => vmmEvents(dst.stderr()).some((e) => e.event === 'migration')).then(
      () => vmmEvents(dst.stderr()).find((e) => e.event === 'migration') as unknown as { progress: { state: string; verified: boolean; connectionLost?: unknown; error?: unknown } },
    );
    assert.equal(incoming.progress.state, 'completed', JSON.stringify(incoming.progress));
    assert.equal(incoming.progress.verified, true);
    assert.equal(incoming.progress.error, undefined);
  });
});
