// Migration between two hosts: the source VMM in one network namespace, the
// destination in another, the link between them clean, then 2 ms each way,
// then 2 ms and 1% loss, then blackholed in the middle of post-copy. Each
// migration is post-copy (the guest switches at once and faults its pages in
// over the link), verified end to end, and the guest's own verify is clean.
// The figures (total time, downtime, the guest's fault latency, vCPU time
// blocked on pages) go out as test diagnostics:
//   node --test dist/test/migrate/two-hosts.test.js
// Needs /dev/kvm, the micro guest, root (namespaces) and /dev/net/tun.
import assert from 'node:assert/strict';
import { after, before, describe, test, type TestContext } from 'node:test';
import { join } from 'node:path';
import { controlRequest } from '../../src/vmm-host/control-api.js';
import type { DestinationProgress } from '../../src/migrate/destination-migration.js';
import type { MigrationProgress } from '../../src/migrate/source-migration.js';
import { kvmSkipReason, spawnVmm, tempDir, vmmEvents, waitForSocket } from '../vm/helpers.js';
import { TwoHosts, twoHostsSkipReason } from './two-hosts.js';

const skip = kvmSkipReason() ?? twoHostsSkipReason();
const PORT = 7400;

interface Outcome {
  link: string;
  source: MigrationProgress;
  destination: DestinationProgress;
  blockedOnMemoryMs: number;
}

async function until(what: string, test: () => Promise<boolean>, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await test())) {
    if (Date.now() > deadline) throw new Error(`no ${what} within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/**
 * The writer guest (16 MiB of 64 MiB, random pages) migrated post-copy from
 * the source namespace to the destination's; `during` runs once the push is
 * under way. Returns both sides' final reports once the guest, moved, has
 * verified its memory.
 */
async function migrateAcross(t: TestContext, hosts: TwoHosts, seed: number, link: string, options: { stallTimeoutMs?: number; during?: () => Promise<void> } = {}): Promise<Outcome> {
  const dir = tempDir(t);
  const srcSock = join(dir, 'src.sock');
  const dstSock = join(dir, 'dst.sock');
  const stall = options.stallTimeoutMs === undefined ? [] : ['--stall-timeout-ms', String(options.stallTimeoutMs)];
  const src = spawnVmm(t, ['run', '--mem', '64M', '--cmdline', `workload=writer mem=16 hb=10 pattern=random seed=${seed}`, '--api-sock', srcSock], { netns: hosts.source.netns });
  const dst = spawnVmm(t, ['receive', '--listen', `${hosts.destination.address}:${PORT}`, '--api-sock', dstSock, ...stall], { netns: hosts.destination.netns });
  await waitForSocket(srcSock);
  await src.console.waitFor(/hb 2 /);
  await until('the destination listening', async () => vmmEvents(dst.stderr()).some((e) => e.event === 'listening'));
  const migrating = controlRequest(srcSock, 'PUT', '/migrate', {
    to: `${hosts.destination.address}:${PORT}`,
    mode: 'postcopy',
    wait: true,
    ...(options.stallTimeoutMs === undefined ? {} : { stall_timeout_ms: options.stallTimeoutMs }),
  });
  if (options.during) {
    await until('post-copy with pages pushed', async () => {
      const reply = await controlRequest(srcSock, 'GET', '/migrate').catch(() => undefined);
      const p = reply?.body as MigrationProgress | undefined;
      return p?.state === 'postcopy' && p.pushedPages > 200;
    });
    await options.during();
  }
  const reply = await migrating;
  assert.equal(reply.status, 200, JSON.stringify(reply.body));
  const source = reply.body as MigrationProgress;
  assert.equal(source.state, 'completed');
  assert.equal(source.verified, true, `every page verified across the ${link} link`);
  assert.equal(await src.exit, 0, src.stderr());
  // The guest ran on at the destination: its heartbeat continues, and its own check of every page it wrote is clean.
  const last = src.console.heartbeats().at(-1)!;
  await dst.console.waitFor(new RegExp(`hb ${last + 3} `), 30_000);
  const beats = [...src.console.heartbeats(), ...dst.console.heartbeats()];
  assert.deepEqual(beats, beats.map((_, i) => beats[0]! + i), 'no gap, no repeat');
  await controlRequest(dstSock, 'PUT', '/serial/input', { data: 'q' });
  assert.equal(await dst.exit, 0, dst.stderr());
  assert.match(dst.console.text, /verify pages=4096 bad=0/);
  const events = vmmEvents(dst.stderr());
  const destination = (events.find((e) => e.event === 'migration') as unknown as { progress: DestinationProgress }).progress;
  assert.equal(destination.verified, true);
  const exited = events.find((e) => e.event === 'exited') as unknown as { status: { vcpus: { blockedOnMemoryMs?: number }[] } };
  const blockedOnMemoryMs = exited.status.vcpus.reduce((sum, v) => sum + (v.blockedOnMemoryMs ?? 0), 0);
  return { link, source, destination, blockedOnMemoryMs };
}

function row(o: Outcome): string {
  const l = o.destination.faultLatencyMicros;
  const ms = (us: number | undefined): string => (us === undefined ? '-' : (us / 1000).toFixed(2));
  return `${o.link.padEnd(24)} total ${String(Math.round(o.source.elapsedMs)).padStart(6)} ms  downtime ${(o.source.downtime?.totalMs ?? 0).toFixed(1).padStart(6)} ms  ` +
    `demand reads ${String(o.destination.demandReads).padStart(5)}  faults ${String(l?.count ?? 0).padStart(5)} waited p50 ${ms(l?.p50).padStart(6)} ms p99 ${ms(l?.p99).padStart(7)} ms  ` +
    `vCPU blocked ${o.blockedOnMemoryMs.toFixed(0).padStart(5)} ms  recoveries ${o.source.recoveries ?? 0}`;
}

describe('migration between two hosts (network namespaces)', { skip, timeout: 300_000 }, () => {
  let hosts: TwoHosts;
  const outcomes: Outcome[] = [];
  before(async () => {
    hosts = await TwoHosts.create();
  });
  after(() => {
    hosts?.closeSync();
    if (outcomes.length) console.log(`# post-copy of a 64 MiB guest writing 16 MiB, source and destination in separate namespaces:\n${outcomes.map((o) => `#   ${row(o)}`).join('\n')}`);
  });

  test('a clean link: post-copy across it, every page verified', async (t) => {
    await hosts.impair(0, 0);
    const outcome = await migrateAcross(t, hosts, 31, 'clean');
    outcomes.push(outcome);
    t.diagnostic(row(outcome));
    assert.ok(outcome.destination.demandReads > 0, 'the guest faulted pages in over the link');
  });

  test('2 ms each way: the guest\'s faults wait on the link, and the migration still verifies', async (t) => {
    await hosts.impair(2, 0);
    const outcome = await migrateAcross(t, hosts, 32, '2 ms delay');
    outcomes.push(outcome);
    t.diagnostic(row(outcome));
    // Every byte crosses the link 2 ms late: no fault on a page still at the source is served in under 2 ms.
    const latency = outcome.destination.faultLatencyMicros!;
    assert.ok(latency.count > 0 && latency.max >= 2000, `the slowest fault waited ${latency.max} us, under the link's 2 ms`);
  });

  test('2 ms and 1% loss: TCP retransmits, nothing is lost or corrupted, the migration verifies', async (t) => {
    await hosts.impair(2, 0.01);
    const before = await hosts.stats();
    const outcome = await migrateAcross(t, hosts, 33, '2 ms delay, 1% loss');
    outcomes.push(outcome);
    t.diagnostic(row(outcome));
    const stats = await hosts.stats();
    assert.ok(stats.dropped > before.dropped, 'the link dropped packets');
    t.diagnostic(`the link dropped ${stats.dropped - before.dropped} of ${stats.forwarded - before.forwarded + stats.dropped - before.dropped} packets`);
  });

  test('the link blackholed for 3 s mid-post-copy: the silence is noticed, the source reconnects once packets flow, every page verified', async (t) => {
    await hosts.impair(0, 0);
    const outcome = await migrateAcross(t, hosts, 34, 'blackholed 3 s', {
      stallTimeoutMs: 1000,
      during: async () => {
        await hosts.blackhole(true);
        await new Promise((r) => setTimeout(r, 3000));
        await hosts.blackhole(false);
      },
    });
    outcomes.push(outcome);
    t.diagnostic(row(outcome));
    assert.ok((outcome.source.recoveries ?? 0) >= 1, 'the source recovered from the blackhole');
    t.diagnostic(`recovered ${outcome.source.lastRecoveryMs} ms after the silence was noticed`);
  });
});
