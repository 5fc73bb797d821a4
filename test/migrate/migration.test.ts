// Live migration of a running micro guest between two VMM processes on this
// machine: pre-copy, post-copy and hybrid, each verified end to end, the
// heartbeat continuous across the move, the guest's own verify clean on the
// destination; and a migration cancelled before switchover leaves the source
// running. Needs /dev/kvm and the micro guest.
import assert from 'node:assert/strict';
import { after, describe, test } from 'node:test';
import { join } from 'node:path';
import { controlRequest } from '../../src/vmm-host/control-api.js';
import { MigrationListener } from '../../src/migrate/transport/channels.js';
import type { MigrationProgress } from '../../src/migrate/source-migration.js';
import { kvmSkipReason, spawnCli, spawnVmm, tempDir, vmmEvents, waitForSocket, type CleanupScope, type SpawnedVmm } from '../vm/helpers.js';
import { destination, source } from './vmm-pair.js';

const skip = kvmSkipReason();
const REGION_PAGES = 4096;

/** The heartbeats of both sides form one sequence: no gap, no repeat. */
function assertContinuous(before: number[], afterMove: number[]): void {
  assert.ok(before.length > 0 && afterMove.length > 0, `heartbeats on both sides: ${before} | ${afterMove}`);
  const all = [...before, ...afterMove];
  assert.deepEqual(all, all.map((_, i) => all[0]! + i), `one sequence across the move: ${before.join(',')} | ${afterMove.join(',')}`);
}

describe('live migration between two VMM processes', { skip, timeout: 180_000 }, () => {
  for (const mode of ['precopy', 'postcopy', 'hybrid'] as const) {
    test(`${mode}: the guest moves while running, the heartbeat goes on without gap or repeat, every page verified, its own verify clean`, async (t) => {
      const dir = tempDir(t);
      const src = await source(t, dir);
      const dst = await destination(t, dir);
      const migrate = spawnCli(t, ['vm', 'migrate', '--api-sock', src.sock, '--to', dst.url.replace('tcp://', ''), '--mode', mode, '--downtime-ms', '100', '--json']);
      assert.equal(await migrate.exit, 0, migrate.stderr());
      const report = JSON.parse(migrate.console.text.trim().split('\n').at(-1)!) as MigrationProgress;
      assert.equal(report.state, 'completed');
      assert.equal(report.verified, true, 'every page the destination installed matches what the source sent');
      assert.ok(report.downtime && report.downtime.totalMs > 0);
      if (mode === 'postcopy') assert.equal(report.round, 0, 'pure post-copy sends nothing before switchover');
      else assert.ok(report.round >= 1);
      // The source's guest is gone: it migrated.
      assert.equal(await src.run.exit, 0, src.run.stderr());
      const exited = vmmEvents(src.run.stderr()).find((e) => e.event === 'exited') as { reason: { type: string } } | undefined;
      assert.equal(exited?.reason.type, 'migrated');
      // The destination runs it on.
      const last = src.run.console.heartbeats().at(-1)!;
      await dst.run.console.waitFor(new RegExp(`hb ${last + 2} `));
      assertContinuous(src.run.console.heartbeats(), dst.run.console.heartbeats());
      const status = (await controlRequest(dst.sock, 'GET', '/vm')).body as { state: string; migration?: { state: string; verified?: boolean } };
      assert.equal(status.state, 'running');
      for (let i = 0; i < 200 && status.migration?.state !== 'completed'; i++) {
        await new Promise((r) => setTimeout(r, 20));
        status.migration = ((await controlRequest(dst.sock, 'GET', '/vm')).body as typeof status).migration;
      }
      assert.deepEqual([status.migration?.state, status.migration?.verified], ['completed', true]);
      assert.equal((await controlRequest(dst.sock, 'PUT', '/serial/input', { data: 'q' })).status, 204);
      assert.equal(await dst.run.exit, 0, dst.run.stderr());
      assert.match(dst.run.console.text, new RegExp(`verify pages=${REGION_PAGES} bad=0`));
    });
  }

  test('cancelled before switchover (a destination that stopped reading): the source goes on as if nothing happened', async (t) => {
    const dir = tempDir(t);
    // A destination that takes the session and BEGIN, then reads no more: the source's first pass stalls on the socket.
    const stalled = await MigrationListener.listen({ host: '127.0.0.1', port: 0 }, (channel) => {
      channel.socket.on('message', (message, requestId) => {
        if (message.type !== 'mig-begin') return;
        void channel.socket.send({ type: 'mig-accept' }, requestId).then(() => channel.socket.socket.pause());
      });
    }, () => undefined);
    after(() => stalled.close());
    const src = await source(t, dir);
    const started = await controlRequest(src.sock, 'PUT', '/migrate', { to: stalled.url.replace('tcp://', ''), mode: 'precopy' });
    assert.equal(started.status, 202);
    let state = '';
    for (let i = 0; i < 200 && state !== 'precopy'; i++) {
      await new Promise((r) => setTimeout(r, 10));
      state = (((await controlRequest(src.sock, 'GET', '/migrate')).body ?? {}) as { state?: string }).state ?? '';
    }
    assert.equal(state, 'precopy');
    const refusedMeanwhile = await controlRequest(src.sock, 'PATCH', '/vm', { state: 'Paused' });
    assert.equal(refusedMeanwhile.status, 409, 'a migrating VM refuses other requests');
    const cancelled = await controlRequest(src.sock, 'PUT', '/migrate/cancel');
    assert.equal(cancelled.status, 200, JSON.stringify(cancelled.body));
    for (let i = 0; i < 300 && state !== 'cancelled'; i++) {
      await new Promise((r) => setTimeout(r, 10));
      state = ((await controlRequest(src.sock, 'GET', '/migrate')).body as { state: string }).state;
    }
    assert.equal(state, 'cancelled');
    const vm = (await controlRequest(src.sock, 'GET', '/vm')).body as { state: string };
    assert.equal(vm.state, 'running', 'the source VM runs on');
    const beats = src.run.console.heartbeats().length;
    await src.run.console.waitFor(new RegExp(`hb ${src.run.console.heartbeats().at(-1)! + 2} `));
    const beatsNow = src.run.console.heartbeats();
    assert.ok(beatsNow.length >= beats + 2);
    assert.deepEqual(beatsNow, beatsNow.map((_, i) => i + 1), 'the heartbeat never stopped or repeated');
    assert.equal((await controlRequest(src.sock, 'PUT', '/serial/input', { data: 'q' })).status, 204);
    assert.equal(await src.run.exit, 0);
    assert.match(src.run.console.text, new RegExp(`verify pages=${REGION_PAGES} bad=0`));
  });
});
