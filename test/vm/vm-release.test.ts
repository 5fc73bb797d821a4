// A VMM releases everything it took, and a stop ends it promptly whatever its
// vCPUs are blocked on. Needs /dev/kvm and the micro guest.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync, readFileSync, readlinkSync } from 'node:fs';
import { join } from 'node:path';
import { controlRequest } from '../../src/vmm-host/control-api.js';
import { openVmSnapshotSource } from '../../src/vm/persist/vm-snapshot.js';
import { bootVm } from '../../src/vm/builder.js';
import { restoreVm } from '../../src/vm/persist/restore.js';
import type { VmStatus } from '../../src/vm/vmm.js';
import { ConsoleCapture, kvmSkipReason, snapshotRunningWriter, spawnCli, spawnVmm, tempDir, vmmEvents, waitForSocket, type CleanupScope, type SpawnedVmm } from './helpers.js';

const skip = kvmSkipReason();

/** What a VM holds in this process: kvm_run mappings, KVM and userfaultfd descriptors, KVM's threads. */
interface KvmFootprint {
  vcpuMappings: number;
  vmFds: number;
  vcpuFds: number;
  uffds: number;
  /** /dev/kvm itself (each VMM opens it). */
  kvmSystemFds: number;
  /** The kernel's per-VM huge-page recovery thread (a thread of this process since Linux 6.13, kvm-nx-lpage-recovery). */
  nxRecoveryThreads: number;
}

function footprint(): KvmFootprint {
  const vcpuMappings = readFileSync('/proc/self/maps', 'utf8').split('\n').filter((line) => line.includes('anon_inode:kvm-vcpu')).length;
  const links: string[] = [];
  for (const fd of readdirSync('/proc/self/fd')) {
    try {
      links.push(readlinkSync(`/proc/self/fd/${fd}`));
    } catch {
      // The fd readdir itself used, closed meanwhile.
    }
  }
  let nxRecoveryThreads = 0;
  for (const tid of readdirSync('/proc/self/task')) {
    try {
      if (readFileSync(`/proc/self/task/${tid}/comm`, 'utf8').startsWith('kvm-nx-lpage')) nxRecoveryThreads++;
    } catch {
      // The thread ended meanwhile.
    }
  }
  return {
    vcpuMappings,
    vmFds: links.filter((l) => l === 'anon_inode:kvm-vm').length,
    vcpuFds: links.filter((l) => l.startsWith('anon_inode:kvm-vcpu')).length,
    uffds: links.filter((l) => l === 'anon_inode:[userfaultfd]').length,
    kvmSystemFds: links.filter((l) => l === '/dev/kvm').length,
    nxRecoveryThreads,
  };
}

/** The footprint back at `baseline`: the kernel frees a VM's thread a moment after its last reference goes. */
async function assertReleased(baseline: KvmFootprint, what: string): Promise<void> {
  const deadline = Date.now() + 3000;
  let now = footprint();
  while (JSON.stringify(now) !== JSON.stringify(baseline) && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 20));
    now = footprint();
  }
  assert.deepEqual(now, baseline, `${what}: every kvm_run mapping, KVM and uffd descriptor and KVM thread released`);
}

describe('a closed VM leaves nothing behind', { skip, timeout: 120_000 }, () => {
  test('50 VMs booted, run and closed in one process: kvm_run mappings, KVM descriptors and threads return to where they were', async () => {
    const baseline = footprint();
    for (let i = 0; i < 50; i++) {
      const guestConsole = new ConsoleCapture();
      const vmm = await bootVm({ image: 'builtin', memoryBytes: 8 << 20, cmdline: 'workload=idle hb=1', console: guestConsole.sink });
      await vmm.resume();
      await guestConsole.waitFor(/tick 1\n/, 5000);
      await vmm.close();
      // The closed VM is gone at once, not at some later close.
      if (i === 0 || i === 49) await assertReleased(baseline, `after VM ${i + 1}`);
    }
    await assertReleased(baseline, 'after 50 VMs');
  });

  test('20 lazy restores closed in one process: the uffds go too', async (t) => {
    const snap = join(tempDir(t), 'vm.snap');
    const source = await bootVm({ image: 'builtin', memoryBytes: 16 << 20, cmdline: 'workload=writer mem=4 hb=5' });
    try {
      await source.resume();
      await source.snapshot(snap);
    } finally {
      await source.close();
    }
    const baseline = footprint();
    for (let i = 0; i < 20; i++) {
      const vmm = await restoreVm(await openVmSnapshotSource(snap), { lazy: true });
      await vmm.resume();
      const deadline = Date.now() + 5000;
      while ((vmm.lazyMemoryReport()?.metrics.faults ?? 0) === 0) {
        assert.ok(Date.now() < deadline, 'the restored guest runs on lazily served memory');
        await new Promise((r) => setTimeout(r, 5));
      }
      await vmm.close();
    }
    await assertReleased(baseline, 'after 20 lazy restores');
  });
});

/** `userfault pages serve` on 127.0.0.1 (any port), and its URL once it listens. */
async function pageServer(t: CleanupScope, snap: string): Promise<{ run: SpawnedVmm; url: string }> {
  const run = spawnCli(t, ['pages', 'serve', '--snapshot', snap, '--listen', '127.0.0.1:0', '--json']);
  const deadline = Date.now() + 10_000;
  for (;;) {
    const line = run.console.text.split('\n').find((l) => l.includes('"listening"'));
    if (line) return { run, url: (JSON.parse(line) as { url: string }).url };
    if (Date.now() > deadline || run.child.exitCode !== null) throw new Error(`the page server did not listen:\n${run.console.text}\n${run.stderr()}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** CPU time (user + system) of a process so far, in ms; undefined once it is gone. */
function cpuMs(pid: number): number | undefined {
  try {
    // Fields after the command's closing parenthesis: utime is the 12th, stime the 13th (clock ticks, 100 a second).
    const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
    return (Number(fields[11]) + Number(fields[12])) * 10;
  } catch {
    return undefined;
  }
}

/** A VMM process lazily restored from a page server that then stops answering, its guest blocked on a page that never comes. */
async function blockedVm(t: CleanupScope & { diagnostic(message: string): void }, dir: string, seed: number): Promise<{ vmm: SpawnedVmm; sock: string; beats: number; faults: number }> {
  const snap = join(dir, 'vm.snap');
  const last = await snapshotRunningWriter(snap, `workload=writer mem=16 hb=10 pattern=random seed=${seed}`);
  const server = await pageServer(t, snap);
  const sock = join(dir, 'blocked.sock');
  // One page a fault: the random writer keeps faulting on pages it has not touched yet.
  const vmm = spawnVmm(t, ['restore', '--from', server.url, '--lazy', '--prefetch-pages', '1', '--api-sock', sock]);
  await waitForSocket(sock);
  await vmm.console.waitFor(new RegExp(`hb ${last + 2} `));
  // The page server stops answering (its connection stays open): the next missing page never comes.
  server.run.child.kill('SIGSTOP');
  t.after(() => server.run.child.kill('SIGKILL'));
  const deadline = Date.now() + 10_000;
  while ((((await controlRequest(sock, 'GET', '/vm')).body as VmStatus).restore?.memory?.pages.inFlight ?? 0) === 0) {
    if (Date.now() > deadline) throw new Error('the guest never blocked on a page');
    await new Promise((r) => setTimeout(r, 50));
  }
  const beats = vmm.console.heartbeats().length;
  await new Promise((r) => setTimeout(r, 500));
  assert.equal(vmm.console.heartbeats().length, beats, 'the guest is blocked: no heartbeat');
  const faults = ((await controlRequest(sock, 'GET', '/vm')).body as VmStatus).restore!.memory!.metrics.faults;
  t.diagnostic(`blocked after ${beats} heartbeats and ${faults} faults`);
  return { vmm, sock, beats, faults };
}

/**
 * Stop `vmm` with `stop`: in the second after the request it is gone or used
 * less than `cpuBudgetMs` of CPU (a spin uses all of one core or two), and it
 * exits 0 within 3 s, stopped; with `countFaults`, no fault was read after it
 * blocked.
 */
async function assertStopsPromptly(blocked: { vmm: SpawnedVmm; sock: string; beats: number; faults: number }, stop: () => Promise<void>, options: { cpuBudgetMs: number; countFaults: boolean }): Promise<void> {
  const { vmm } = blocked;
  const pid = vmm.child.pid!;
  const cpuAtStop = cpuMs(pid)!;
  const stopAt = performance.now();
  await stop();
  await Promise.race([vmm.exit, new Promise((r) => setTimeout(r, 1000))]);
  const cpuAfterSecond = cpuMs(pid);
  if (cpuAfterSecond !== undefined) assert.ok(cpuAfterSecond - cpuAtStop < options.cpuBudgetMs, `${cpuAfterSecond - cpuAtStop} ms of CPU in the second after the stop: a spin`);
  let timer: NodeJS.Timeout | undefined;
  const code = await Promise.race([vmm.exit, new Promise<'still running'>((r) => (timer = setTimeout(() => r('still running'), 2000)))]);
  clearTimeout(timer);
  assert.equal(code, 0, `the stopped VMM exits within 3 s (${Math.round(performance.now() - stopAt)} ms after the stop):\n${vmm.stderr()}`);

  const exited = vmmEvents(vmm.stderr()).find((e) => e.event === 'exited') as { reason: { type: string }; status: VmStatus } | undefined;
  assert.equal(exited?.reason.type, 'stopped');
  const memory = exited!.status.restore!.memory!;
  if (options.countFaults) assert.ok(memory.metrics.faults - blocked.faults <= 2, `no fault re-read while stopping: ${blocked.faults} faults blocked, ${memory.metrics.faults} at the end`);
  assert.equal(vmm.console.heartbeats().length, blocked.beats, 'the guest printed nothing on the memory it was let go on');
}

describe('stopping a VM blocked on a page that never comes', { skip, timeout: 120_000 }, () => {
  test('vm stop ends the process within a couple of seconds, without spinning, and counts no fault it did not serve', async (t) => {
    const blocked = await blockedVm(t, tempDir(t), 7);
    await assertStopsPromptly(blocked, async () => {
      assert.equal((await controlRequest(blocked.sock, 'PUT', '/actions', { action_type: 'Stop' })).status, 204);
    }, { cpuBudgetMs: 300, countFaults: true });
  });

  test('a pause held by the blocked vCPU does not hold the stop behind it', async (t) => {
    const blocked = await blockedVm(t, tempDir(t), 11);
    // The pause may never be answered (its vCPU never leaves the fault): not awaited.
    const paused = controlRequest(blocked.sock, 'PATCH', '/vm', { state: 'Paused' }).catch(() => undefined);
    await new Promise((r) => setTimeout(r, 300));
    await assertStopsPromptly(blocked, async () => {
      assert.equal((await controlRequest(blocked.sock, 'PUT', '/actions', { action_type: 'Stop' })).status, 204);
      // The pause's kick may have set the vCPU re-faulting (see Vmm.haltGuest) until the stop, a moment later, ends it.
    }, { cpuBudgetMs: 700, countFaults: false });
    await paused;
  });
});
