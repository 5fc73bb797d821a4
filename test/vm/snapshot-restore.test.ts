// A guest snapshotted through the control socket of one VMM process and
// restored in another. Needs /dev/kvm and the micro guest.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { statSync } from 'node:fs';
import { join } from 'node:path';
import { controlRequest } from '../../src/vmm-host/control-api.js';
import { bootVm } from '../../src/vm/builder.js';
import { restoreVm } from '../../src/vm/persist/restore.js';
import { openVmSnapshotSource } from '../../src/vm/persist/vm-snapshot.js';
import { InvalidVmStateError } from '../../src/vm/errors.js';
import { corruptStoredPage, kvmSkipReason, rewriteVmSnapshot, spawnVmm, tempDir, vmmEvents, waitForSocket } from './helpers.js';

const skip = kvmSkipReason();

describe('snapshot and restore across processes', { skip, timeout: 90000 }, () => {
  test('the heartbeat continues without gap or repeat and the restored guest verifies clean', async (t) => {
    const dir = tempDir(t);
    const snap = join(dir, 'vm.snap');
    const sock1 = join(dir, 'run.sock');
    const run = spawnVmm(t, ['run', '--mem', '32M', '--cmdline', 'workload=writer mem=16 hb=10 pattern=random seed=3', '--api-sock', sock1]);
    await waitForSocket(sock1);
    await run.console.waitFor(/hb 3 /);

    const status = await controlRequest(sock1, 'GET', '/vm');
    assert.equal((status.body as { state: string }).state, 'running');
    const created = await controlRequest(sock1, 'PUT', '/snapshot/create', { snapshot_path: snap });
    assert.equal(created.status, 200, JSON.stringify(created.body));
    const paused = await controlRequest(sock1, 'GET', '/vm');
    assert.equal((paused.body as { state: string }).state, 'Paused'.toLowerCase());
    const before = run.console.heartbeats();
    await controlRequest(sock1, 'PUT', '/actions', { action_type: 'Stop' });
    assert.equal(await run.exit, 0);
    assert.deepEqual(before, before.map((_, i) => i + 1));
    assert.equal(statSync(snap).size, (created.body as { fileSizeBytes: number }).fileSizeBytes);

    const sock2 = join(dir, 'restore.sock');
    const restored = spawnVmm(t, ['restore', snap, '--api-sock', sock2]);
    await waitForSocket(sock2);
    const last = before.at(-1)!;
    await restored.console.waitFor(new RegExp(`hb ${last + 3} `));
    const after = restored.console.heartbeats();
    assert.equal(after[0], last + 1, `the restored guest's first heartbeat follows the last one saved:\n${restored.console.text}`);
    assert.deepEqual(after, after.map((_, i) => last + 1 + i));
    await controlRequest(sock2, 'PUT', '/serial/input', { data: 'q' });
    assert.equal(await restored.exit, 0, restored.stderr());
    assert.match(restored.console.text, /verify pages=4096 bad=0/);
    assert.match(restored.console.text, /done status=0/);
  });

  test('a snapshot with one corrupted memory byte is refused before the guest runs', async (t) => {
    const dir = tempDir(t);
    const snap = join(dir, 'vm.snap');
    const sock = join(dir, 'run.sock');
    const run = spawnVmm(t, ['run', '--mem', '16M', '--cmdline', 'workload=writer mem=4 hb=5', '--api-sock', sock]);
    await waitForSocket(sock);
    await run.console.waitFor(/hb 1 /);
    assert.equal((await controlRequest(sock, 'PUT', '/snapshot/create', { snapshot_path: snap })).status, 200);
    await controlRequest(sock, 'PUT', '/actions', { action_type: 'Stop' });
    await run.exit;

    const { imageOffset } = await corruptStoredPage(snap, 'last');
    const restored = spawnVmm(t, ['restore', snap]);
    assert.equal(await restored.exit, 65, 'bad input data (sysexits EX_DATAERR)');
    assert.match(restored.stderr(), /ESNAPSHOTINVALID.*CRC/i);
    assert.match(restored.stderr(), new RegExp(`image offset 0x${imageOffset.toString(16)}`));
    assert.equal(restored.console.text, '', 'the guest never ran');
  });

  test('an unknown request on the control socket is a 400 with the reason', async (t) => {
    const dir = tempDir(t);
    const sock = join(dir, 'run.sock');
    const run = spawnVmm(t, ['run', '--mem', '16M', '--cmdline', 'workload=idle hb=5', '--api-sock', sock]);
    await waitForSocket(sock);
    const bad = await controlRequest(sock, 'PATCH', '/vm', { state: 'Sleeping' });
    assert.equal(bad.status, 400);
    assert.match((bad.body as { fault_message: string }).fault_message, /Paused/);
    assert.deepEqual(await controlRequest(sock, 'PATCH', '/vm', { state: 'Paused' }), { status: 200, body: { state: 'paused', changed: true } });
    assert.deepEqual(await controlRequest(sock, 'PATCH', '/vm', { state: 'Paused' }), { status: 200, body: { state: 'paused', changed: false } });
    assert.deepEqual(await controlRequest(sock, 'PATCH', '/vm', { state: 'Resumed' }), { status: 200, body: { state: 'running', changed: true } });
    await controlRequest(sock, 'PUT', '/actions', { action_type: 'Stop' });
    assert.equal(await run.exit, 0);
  });
});

describe('snapshots with a malformed VM state', { skip, timeout: 90000 }, () => {
  /** A real snapshot of a 16 MiB writer, taken in this process. */
  async function realSnapshot(dir: string): Promise<string> {
    const snap = join(dir, 'real.snap');
    const vmm = await bootVm({ image: 'builtin', memoryBytes: 16 << 20, cmdline: 'workload=writer mem=4 hb=5' });
    try {
      await vmm.resume();
      await vmm.snapshot(snap);
    } finally {
      await vmm.close();
    }
    return snap;
  }

  const half = (b64: string): string => { const b = Buffer.from(b64, 'base64'); return b.subarray(0, b.length >> 1).toString('base64'); };

  test('every kernel struct truncated to half, in a real snapshot: refused naming it, before any VM is built', async (t) => {
    const dir = tempDir(t);
    const snap = await realSnapshot(dir);
    const fields: [string, (s: any) => void][] = [ // eslint-disable-line @typescript-eslint/no-explicit-any
      ...['mpState', 'regs', 'sregs', 'fpu', 'xsave', 'xcrs', 'debugregs', 'lapic', 'events'].map((blob): [string, (s: any) => void] => // eslint-disable-line @typescript-eslint/no-explicit-any
        [`vcpus[0].${blob}`, (s) => { s.vcpus[0][blob] = half(s.vcpus[0][blob]); }]),
      ['irqchip.picMaster', (s) => { s.irqchip.picMaster = half(s.irqchip.picMaster); }],
      ['irqchip.picSlave', (s) => { s.irqchip.picSlave = half(s.irqchip.picSlave); }],
      ['irqchip.ioapic', (s) => { s.irqchip.ioapic = half(s.irqchip.ioapic); }],
      ['pit2', (s) => { s.pit2 = half(s.pit2); }],
      ['clock', (s) => { s.clock = half(s.clock); }],
    ];
    for (const [field, change] of fields) {
      const bad = join(dir, `${field}.snap`);
      await rewriteVmSnapshot(snap, bad, change);
      await assert.rejects(openVmSnapshotSource(bad).then((from) => restoreVm(from)), (e: unknown) => e instanceof InvalidVmStateError && e.field === field && e.snapshotPath === bad && /is \d+ bytes, struct kvm_/.test(e.message), field);
    }
  });

  test('a VMM restoring a truncated regs blob or a 0-vCPU state exits 65 with the field named, and the guest never runs', async (t) => {
    const dir = tempDir(t);
    const snap = await realSnapshot(dir);
    const cases: [string, (s: any) => void][] = [ // eslint-disable-line @typescript-eslint/no-explicit-any
      ['vcpus[0].regs', (s) => { s.vcpus[0].regs = half(s.vcpus[0].regs); }],
      ['machine.vcpuCount', (s) => { s.machine.vcpuCount = 0; s.vcpus = []; }],
    ];
    for (const [field, change] of cases) {
      const bad = join(dir, 'bad.snap');
      await rewriteVmSnapshot(snap, bad, change);
      const restored = spawnVmm(t, ['restore', bad]);
      assert.equal(await restored.exit, 65, restored.stderr());
      const error = vmmEvents(restored.stderr()).find((e) => e.event === 'error') as { code: string; details: { field: string } } | undefined;
      assert.equal(error?.code, 'EVMSTATE');
      assert.equal(error?.details.field, field);
      assert.equal(restored.console.text, '', 'the guest never ran');
    }
  });
});
