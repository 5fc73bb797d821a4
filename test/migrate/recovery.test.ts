// Migration you can trust: a connection cut in the middle of post-copy is
// survived (the destination's vCPUs wait on their missing pages, nothing is
// poisoned, the source reconnects and sends what the destination lacks, and
// every page still verifies); a cut during pre-copy fails the migration and
// the guest runs on at the source. Needs /dev/kvm and the micro guest.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { join } from 'node:path';
import { controlRequest } from '../../src/vm/control-api.js';
import type { MigrationProgress } from '../../src/migrate/source-migration.js';
import { kvmSkipReason, spawnVmm, tempDir, vmmEvents, waitForSocket } from '../vm/helpers.js';
import { CutProxy } from './cut-proxy.js';

const skip = kvmSkipReason();

async function progressOf(sock: string): Promise<MigrationProgress | undefined> {
  const reply = await controlRequest(sock, 'GET', '/migrate').catch(() => undefined);
  return reply?.status === 200 ? (reply.body as MigrationProgress) : undefined;
}

async function until(what: string, test: () => Promise<boolean>, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await test())) {
    if (Date.now() > deadline) throw new Error(`no ${what} within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

describe('a migration survives a cut', { skip, timeout: 120_000 }, () => {
  test('cut mid-post-copy: the guest waits, the source reconnects, the rest is sent, every page verified and the guest\'s verify clean', async (t) => {
    const dir = tempDir(t);
    const srcSock = join(dir, 'src.sock');
    const dstSock = join(dir, 'dst.sock');
    const src = spawnVmm(t, ['run', '--mem', '64M', '--cmdline', 'workload=writer mem=16 hb=10 pattern=random seed=21', '--api-sock', srcSock]);
    const dst = spawnVmm(t, ['receive', '--listen', '127.0.0.1:0', '--api-sock', dstSock]);
    await waitForSocket(srcSock);
    await src.console.waitFor(/hb 2 /);
    await until('listening line', async () => vmmEvents(dst.stderr()).some((e) => e.event === 'listening'));
    const url = (vmmEvents(dst.stderr()).find((e) => e.event === 'listening') as unknown as { url: string }).url;
    const [host, port] = url.replace('tcp://', '').split(':') as [string, string];
    // 8 MB/s from the source: the post-copy push of 64 MiB takes seconds, long enough to be cut in the middle.
    const proxy = await CutProxy.start({ host, port: Number(port) }, { bytesPerSecond: 8e6 });
    t.after(() => proxy.close());
    assert.equal((await controlRequest(srcSock, 'PUT', '/migrate', { to: proxy.address, mode: 'postcopy' })).status, 202);
    await until('post-copy with pages pushed', async () => {
      const p = await progressOf(srcSock);
      return p?.state === 'postcopy' && p.pushedPages > 200;
    });
    assert.ok(proxy.cut() >= 2, 'both connections cut');
    await until('the source noticing the cut', async () => ((await progressOf(srcSock))?.recoveries ?? 0) >= 1 || (await progressOf(srcSock))?.state === 'postcopy-paused');
    await until('a completed migration', async () => {
      const p = await progressOf(srcSock);
      return p === undefined || p.state === 'completed';
    }, 60_000);
    assert.equal(await src.exit, 0, src.stderr());
    const exited = vmmEvents(src.stderr()).find((e) => e.event === 'exited') as unknown as { status: { migration: MigrationProgress } } | undefined;
    const report = exited!.status.migration;
    assert.equal(report.state, 'completed');
    assert.equal(report.verified, true, 'every page verified after the cut');
    assert.ok((report.recoveries ?? 0) >= 1, 'recovered from the cut');
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
  });

  test('cut during pre-copy: the migration fails cleanly and the guest runs on at the source', async (t) => {
    const dir = tempDir(t);
    const srcSock = join(dir, 'src.sock');
    const src = spawnVmm(t, ['run', '--mem', '64M', '--cmdline', 'workload=writer mem=16 hb=10 pattern=random seed=22', '--api-sock', srcSock]);
    const dst = spawnVmm(t, ['receive', '--listen', '127.0.0.1:0']);
    await waitForSocket(srcSock);
    await src.console.waitFor(/hb 2 /);
    await until('listening line', async () => vmmEvents(dst.stderr()).some((e) => e.event === 'listening'));
    const url = (vmmEvents(dst.stderr()).find((e) => e.event === 'listening') as unknown as { url: string }).url;
    const [host, port] = url.replace('tcp://', '').split(':') as [string, string];
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
