// The vCPU worker's end, without KVM: a memfd stands in for the vCPU fd (the
// worker maps it as it maps kvm_run, MAP_SHARED at offset 0), and the worker
// is told to stop while paused, so it never calls KVM_RUN. What is checked is
// the worker's own order: its mapping is gone before it says 'exited', so the
// VMM ending the thread at that word leaks nothing, and its thread then ends
// on its own.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { describe, test } from 'node:test';
import { MessageChannel, type Worker } from 'node:worker_threads';
import { Mapping } from '../../src/mem/mapping.js';
import { kvmNative } from '../../src/native-kvm.js';
import { vcpuWorkerFor } from '../../src/vm/vcpu-worker-pool.js';
import { VcpuCounterBlock, type VcpuEvent, type VcpuWorkerData } from '../../src/vm/vcpu-protocol.js';
import { within } from '../helpers/waiting.js';

const NAME = 'kvm-run-stand-in';
const RUN_BYTES = 2 * 4096;

/** Mappings of the stand-in's memfd in this process. */
function standInMappings(): number {
  return readFileSync('/proc/self/maps', 'utf8').split('\n').filter((line) => line.includes(`memfd:${NAME}`)).length;
}

/** A vCPU worker over the stand-in, ready (it has mapped it); `stop` sends it the stop command as the VMM does. */
async function startWorker(fd: number): Promise<{ worker: Worker; stop: () => void }> {
  const channel = new MessageChannel();
  const doorbell = new SharedArrayBuffer(4);
  const data: VcpuWorkerData = {
    vcpuFd: fd,
    vcpuId: 0,
    mmapSize: RUN_BYTES,
    xsaveBytes: 4096,
    doorbell,
    kickSignal: kvmNative.kvmConstants.SIGRTMIN + 2,
    ownsDevices: false,
    port: channel.port2,
    counters: new VcpuCounterBlock().buffer,
  };
  const worker = vcpuWorkerFor(data, [channel.port2]);
  await new Promise<void>((resolve, reject) => {
    worker.on('message', (event: VcpuEvent) => event.type === 'ready' && resolve());
    worker.once('error', reject);
  });
  return {
    worker,
    stop: () => {
      channel.port1.postMessage({ type: 'stop', seq: 1 });
      const word = new Int32Array(doorbell);
      Atomics.add(word, 0, 1);
      Atomics.notify(word, 0);
    },
  };
}

describe('a vCPU worker told to stop', { timeout: 60_000 }, () => {
  test('has unmapped kvm_run when it says exited: a worker terminated at that word leaves no mapping (20 times)', async () => {
    const stand = Mapping.memfd(RUN_BYTES, NAME);
    try {
      const baseline = standInMappings();
      for (let i = 0; i < 20; i++) {
        const { worker, stop } = await within(10_000, 'the worker starting', startWorker(stand.fd!));
        assert.equal(standInMappings(), baseline + 1, 'the worker mapped its kvm_run');
        const exited = new Promise<void>((resolve) => worker.on('message', (event: VcpuEvent) => event.type === 'exited' && resolve()));
        stop();
        await within(5000, "the worker's exited", exited);
        // What the VMM did on 'exited': end the thread at once.
        await within(5000, 'terminating the worker', worker.terminate());
        assert.equal(standInMappings(), baseline, `round ${i + 1}: the worker's kvm_run mapping is gone`);
      }
    } finally {
      stand.unmap();
    }
  });

  test('ends its thread on its own once it said exited', async () => {
    const stand = Mapping.memfd(RUN_BYTES, NAME);
    try {
      const baseline = standInMappings();
      const { worker, stop } = await within(10_000, 'the worker starting', startWorker(stand.fd!));
      const ended = new Promise<number>((resolve) => worker.once('exit', resolve));
      stop();
      await within(2000, 'the worker thread ending by itself', ended);
      assert.equal(standInMappings(), baseline);
    } finally {
      stand.unmap();
    }
  });
});
