// A thread that reaches memory from kernel mode, as a vCPU thread does inside
// KVM_RUN (KVM's emulator reads guest RAM with copy_from_user): it writes a
// page of the memory to a file, so the kernel copies from it, and a missing
// page faults in kernel mode. It takes the VMM's kick signal the way a vCPU
// thread does (an empty handler, unblocked here), so a test can kick it while
// it waits on the page.
import { closeSync, openSync, writeSync } from 'node:fs';
import { parentPort, workerData } from 'node:worker_threads';
import { kvmNative } from '../../src/native-kvm.js';
import { native } from '../../src/native.js';

const { kickSignal, file } = workerData as { kickSignal: number; file: string };
kvmNative.kvmPrepareKick(kickSignal);
parentPort!.postMessage({ type: 'ready', tid: native.gettid() });
parentPort!.on('message', (request: { address: number; lengthBytes: number }) => {
  const fd = openSync(file, 'w');
  try {
    const written = writeSync(fd, new Uint8Array(native.arrayBufferAt(request.address, request.lengthBytes)));
    parentPort!.postMessage({ type: 'written', bytes: written });
  } catch (error) {
    parentPort!.postMessage({ type: 'failed', message: (error as Error).message });
  } finally {
    closeSync(fd);
  }
});
