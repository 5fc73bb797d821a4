// Needs /dev/kvm and the micro guest (nasm); skipped with the reason otherwise.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { idleVcpuWorkers, prewarmVcpuWorkers } from '../../src/vm/vcpu-worker-pool.js';
import { bootVm } from '../../src/vm/builder.js';
import type { Vmm } from '../../src/vm/vmm.js';
import { GuestImageNotFoundError, InvalidGuestImageError, InvalidStateTransitionError } from '../../src/vm/errors.js';
import { ConsoleCapture, kvmSkipReason, tempDir } from './helpers.js';

const skip = kvmSkipReason();
const MiB = 1 << 20;

async function runToDone(cmdline: string, memoryBytes = 32 * MiB): Promise<{ console: ConsoleCapture; reason: Awaited<Vmm['exited']> }> {
  const console = new ConsoleCapture();
  const vmm = await bootVm({ image: 'builtin', memoryBytes, cmdline, console: console.sink });
  try {
    await vmm.resume();
    const reason = await vmm.exited;
    return { console, reason };
  } finally {
    await vmm.close();
  }
}

describe('booting the micro guest', { skip, timeout: 60000 }, () => {
  test('the idle guest wakes on PIT ticks, prints over COM1 and signals done', async () => {
    const { console, reason } = await runToDone('workload=idle hb=5 beats=3');
    assert.match(console.text, /^micro: boot workload=idle/m);
    assert.match(console.text, /tick 1\ntick 2\ntick 3\n/);
    assert.deepEqual(reason, { type: 'done', status: 0 });
  });

  test('the writer fills 16 MiB, beats, and its final verify is clean', async () => {
    const { console, reason } = await runToDone('workload=writer mem=16 hb=10 beats=3 pattern=random seed=9');
    assert.match(console.text, /fill pages=4096/);
    assert.deepEqual(console.heartbeats(), [1, 2, 3]);
    assert.match(console.text, /verify pages=4096 bad=0/);
    assert.deepEqual(reason, { type: 'done', status: 0 });
  });

  test('a vCPU worker started ahead (the CLI does, before loading itself) runs the next VM\'s vCPU', async () => {
    prewarmVcpuWorkers(1);
    assert.equal(idleVcpuWorkers(), 1);
    const { console, reason } = await runToDone('workload=writer mem=4 hb=5 beats=2');
    assert.equal(idleVcpuWorkers(), 0, 'the idle worker was taken');
    assert.deepEqual(console.heartbeats(), [1, 2]);
    assert.deepEqual(reason, { type: 'done', status: 0 });
  });

  test('an idle vCPU worker does not keep a process alive', () => {
    const pool = new URL('../../src/vm/vcpu-worker-pool.js', import.meta.url).href;
    const started = Date.now();
    const child = spawnSync(process.execPath, ['--input-type=module', '-e', `const p = await import(${JSON.stringify(pool)}); p.prewarmVcpuWorkers(2); console.log(p.idleVcpuWorkers());`], { encoding: 'utf8', timeout: 10_000 });
    assert.equal(child.status, 0, child.stderr);
    assert.equal(child.stdout.trim(), '2');
    assert.ok(Date.now() - started < 10_000);
  });

  test('verify on a fresh guest finds the never-written region all zero', async () => {
    const { console, reason } = await runToDone('workload=verify mem=8');
    assert.match(console.text, /verify pages=2048 bad=0/);
    assert.deepEqual(reason, { type: 'done', status: 0 });
  });

  test('a page changed behind the guest\'s back is reported by its verify', async () => {
    const console = new ConsoleCapture();
    const vmm = await bootVm({ image: 'builtin', memoryBytes: 32 * MiB, cmdline: 'workload=writer mem=4 hb=5 rate=100', console: console.sink });
    try {
      await vmm.resume();
      await console.waitFor(/hb 1 /);
      await vmm.pause();
      // At 100 pages/s the writer is far from page 900 (2 MiB + 900 pages): flip its generation word.
      const page = vmm.memory.bytes((0x200000 + 900 * 4096) as never, 4);
      page[0] ^= 0xff;
      await vmm.resume();
      await vmm.sendInput(Buffer.from('q'));
      const reason = await vmm.exited;
      assert.match(console.text, /bad page=900 /);
      assert.match(console.text, /verify pages=1024 bad=1/);
      assert.deepEqual(reason, { type: 'done', status: 1 });
    } finally {
      await vmm.close();
    }
  });

  test('a missing image is a GuestImageNotFoundError', async () => {
    await assert.rejects(bootVm({ image: '/nonexistent/guest.elf', memoryBytes: 16 * MiB }), (e: unknown) => e instanceof GuestImageNotFoundError && e.code === 'EIMAGENOTFOUND');
  });

  test('a file that is not multiboot is an InvalidGuestImageError before any VM is made', async (t) => {
    const path = join(tempDir(t), 'junk.elf');
    writeFileSync(path, Buffer.alloc(4096, 0x90));
    await assert.rejects(bootVm({ image: path, memoryBytes: 16 * MiB }), (e: unknown) => e instanceof InvalidGuestImageError && e.code === 'EIMAGEINVALID');
  });

  test('pause and resume stop and restart the heartbeat; saving a running VM is refused', async () => {
    const console = new ConsoleCapture();
    const vmm = await bootVm({ image: 'builtin', memoryBytes: 32 * MiB, cmdline: 'workload=writer mem=4 hb=5', console: console.sink });
    try {
      await vmm.resume();
      await console.waitFor(/hb 2 /);
      await assert.rejects(vmm.saveState(), InvalidStateTransitionError);
      await vmm.pause();
      assert.equal(vmm.state, 'paused');
      const frozen = console.text.length;
      await new Promise((r) => setTimeout(r, 300));
      assert.equal(console.text.length, frozen, 'no output while paused');
      const last = console.heartbeats().at(-1)!;
      await vmm.resume();
      await console.waitFor(new RegExp(`hb ${last + 2} `));
      const beats = console.heartbeats();
      assert.deepEqual(beats, beats.map((_, i) => i + 1), 'no heartbeat lost or repeated across the pause');
    } finally {
      await vmm.close();
    }
  });
});
