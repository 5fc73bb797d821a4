// The VM lifecycle: its table (pure), and the Vmm holding to it — a request
// that does not fit the state is refused while an operation owns the VM.
// The race of issue 7 (a resume while a snapshot is being written) is made
// deterministic with the Vmm's beforeSnapshotWrite hook: the snapshot is
// held between saving the state and writing RAM while the resume is sent.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { SnapshotFile } from '../../src/snapshot/index.js';
import { controlRequest, startControlApi } from '../../src/vmm-host/control-api.js';
import { HostedVm } from '../../src/vmm-host/hosted-vm.js';
import { InvalidStateTransitionError } from '../../src/vm/errors.js';
import { VmLifecycle, vmLifecycleBusy, vmLifecycleEvents, vmLifecycleNext, vmStateSavable, type VmLifecycleState } from '../../src/vm/vm-lifecycle.js';
import { bootVm } from '../../src/vm/builder.js';
import { ConsoleCapture, kvmSkipReason, tempDir } from './helpers.js';

const skip = kvmSkipReason();
const MiB = 1 << 20;
const STATES: VmLifecycleState[] = ['created', 'running', 'paused', 'snapshotting', 'restoring', 'migrating', 'stopped'];

describe('the VM lifecycle table', () => {
  test('a booted VM is created; it resumes to running, pauses to paused, and a snapshot passes through snapshotting back to paused', () => {
    assert.equal(vmLifecycleNext('created', 'resume'), 'running');
    assert.equal(vmLifecycleNext('running', 'pause'), 'paused');
    assert.equal(vmLifecycleNext('paused', 'resume'), 'running');
    assert.equal(vmLifecycleNext('running', 'snapshot'), 'snapshotting');
    assert.equal(vmLifecycleNext('snapshotting', 'snapshot-done'), 'paused');
    assert.equal(vmLifecycleNext('snapshotting', 'snapshot-failed'), 'paused');
  });

  test('a restore goes created -> restoring -> paused, or to stopped when it fails', () => {
    assert.equal(vmLifecycleNext('created', 'restore'), 'restoring');
    assert.equal(vmLifecycleNext('restoring', 'restored'), 'paused');
    assert.equal(vmLifecycleNext('restoring', 'restore-failed'), 'stopped');
  });

  test('the busy states take nothing but their own ending, input, and the guest leaving', () => {
    assert.deepEqual(vmLifecycleEvents('snapshotting').sort(), ['guest-exit', 'input', 'snapshot-done', 'snapshot-failed']);
    assert.deepEqual(vmLifecycleEvents('migrating').sort(), ['guest-exit', 'input', 'migrate-done', 'migrate-failed']);
    assert.deepEqual(vmLifecycleEvents('restoring').sort(), ['guest-exit', 'restore-failed', 'restored']);
    for (const request of ['resume', 'pause', 'snapshot', 'stop', 'migrate'] as const) {
      assert.equal(vmLifecycleNext('snapshotting', request), undefined, `${request} while snapshotting`);
    }
  });

  test('stopped is final, and the guest leaving is a fact every state takes', () => {
    assert.deepEqual(vmLifecycleEvents('stopped'), ['guest-exit']);
    for (const state of STATES) assert.equal(vmLifecycleNext(state, 'guest-exit'), 'stopped');
  });

  test('the state can be saved only where no vCPU runs and the state is loaded; the busy states are those an operation owns', () => {
    assert.deepEqual(STATES.filter(vmStateSavable), ['created', 'paused', 'snapshotting', 'migrating']);
    assert.deepEqual(STATES.filter(vmLifecycleBusy), ['snapshotting', 'restoring', 'migrating']);
    // A busy state refuses every request but input: what "owns the VM" means in the table.
    for (const state of STATES.filter(vmLifecycleBusy)) {
      for (const request of ['resume', 'pause', 'snapshot', 'migrate', 'stop'] as const) assert.equal(vmLifecycleNext(state, request), undefined, `${request} while ${state}`);
    }
  });

  test('a refused transition names the current state and changes nothing', () => {
    const lifecycle = new VmLifecycle('created');
    lifecycle.transition('resume');
    lifecycle.transition('snapshot');
    assert.throws(() => lifecycle.transition('resume'), (e: unknown) =>
      e instanceof InvalidStateTransitionError && e.code === 'ESTATE' && e.from === 'snapshotting' && /cannot resume a VM that is snapshotting/.test(e.message));
    assert.equal(lifecycle.state, 'snapshotting');
  });
});

describe('the Vmm holds to its lifecycle', { skip, timeout: 60000 }, () => {
  test('a resume sent while a snapshot is being written is refused 409 naming the state; the snapshot verifies clean and the VM stays paused', async (t) => {
    const dir = tempDir(t);
    const snap = join(dir, 'vm.snap');
    const sock = join(dir, 'vm.sock');
    const console = new ConsoleCapture();
    const vmm = await bootVm({ image: 'builtin', memoryBytes: 32 * MiB, cmdline: 'workload=writer mem=8 hb=5 rate=0', console: console.sink });
    const api = await startControlApi(new HostedVm(vmm), sock);
    t.after(async () => {
      await api.close();
      await vmm.close();
    });
    await vmm.resume();
    await console.waitFor(/hb 1 /);

    // Hold the snapshot after its state is saved, before RAM is written.
    let release!: () => void;
    const held = new Promise<void>((r) => (release = r));
    let reached!: () => void;
    const atWrite = new Promise<void>((r) => (reached = r));
    vmm.hooks.beforeSnapshotWrite = async () => {
      reached();
      await held;
    };
    const snapshot = controlRequest(sock, 'PUT', '/snapshot/create', { snapshot_path: snap });
    await atWrite;
    assert.equal(vmm.state, 'snapshotting');
    const status = await controlRequest(sock, 'GET', '/vm');
    assert.equal((status.body as { state: string }).state, 'snapshotting', 'status is answered while the snapshot runs');

    const resume = await controlRequest(sock, 'PATCH', '/vm', { state: 'Resumed' });
    assert.equal(resume.status, 409);
    assert.deepEqual(resume.body, { fault_message: 'cannot resume a VM that is snapshotting', code: 'ESTATE' });
    const pause = await controlRequest(sock, 'PATCH', '/vm', { state: 'Paused' });
    assert.equal(pause.status, 409);
    const second = await controlRequest(sock, 'PUT', '/snapshot/create', { snapshot_path: join(dir, 'second.snap') });
    assert.equal(second.status, 409);
    assert.match((second.body as { fault_message: string }).fault_message, /snapshotting/);
    const stop = await controlRequest(sock, 'PUT', '/actions', { action_type: 'Stop' });
    assert.equal(stop.status, 409, 'a stop would unmap RAM under the writer');
    assert.equal(vmm.status().vcpus[0]!.state, 'paused', 'no refused request reached a vCPU');

    release();
    const created = await snapshot;
    assert.equal(created.status, 200, JSON.stringify(created.body));
    assert.equal(vmm.state, 'paused');
    const file = await SnapshotFile.open(snap);
    try {
      const report = await file.verifyAll();
      assert.equal(report.ok, true, `every stored page matches its CRC: ${JSON.stringify(report.corruptPages.slice(0, 3))}`);
    } finally {
      await file.close();
    }
    // Once the snapshot is done the same resume is taken.
    assert.deepEqual(await controlRequest(sock, 'PATCH', '/vm', { state: 'Resumed' }), { status: 200, body: { state: 'running', changed: true } });
  });

  test('requests run one at a time: a pause and a resume sent together both complete, in order', async (t) => {
    const console = new ConsoleCapture();
    const vmm = await bootVm({ image: 'builtin', memoryBytes: 16 * MiB, cmdline: 'workload=idle hb=5', console: console.sink });
    t.after(() => vmm.close());
    await vmm.resume();
    const [paused, resumed, pausedAgain] = await Promise.all([vmm.pause(), vmm.resume(), vmm.pause()]);
    assert.deepEqual(paused, { state: 'paused', changed: true });
    assert.deepEqual(resumed, { state: 'running', changed: true });
    assert.deepEqual(pausedAgain, { state: 'paused', changed: true });
    assert.equal(vmm.state, 'paused');
    assert.deepEqual(vmm.status().vcpus.map((v) => v.state), ['paused']);
  });

  test('a stopped VM refuses everything with the state named', async () => {
    const vmm = await bootVm({ image: 'builtin', memoryBytes: 16 * MiB, cmdline: 'workload=idle' });
    await vmm.close();
    assert.equal(vmm.state, 'stopped');
    await assert.rejects(vmm.resume(), { code: 'ESTATE', message: 'cannot resume a VM that is stopped' });
    await assert.rejects(vmm.snapshot('/tmp/never.snap'), { code: 'ESTATE' });
    await assert.rejects(vmm.sendInput(Buffer.from('x')), { code: 'ESTATE', message: 'cannot send input to a VM that is stopped' });
  });
});
