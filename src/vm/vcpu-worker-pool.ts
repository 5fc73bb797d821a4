// vCPU worker threads started before they are needed. A worker takes 30 ms
// here to boot Node and 15-40 ms more to load its modules; a restore that
// spawns its workers only once the VM exists waits that long before the
// guest runs. A process that is about to start a VM calls
// prewarmVcpuWorkers() first thing (before loading the rest of itself):
// the workers load on the other core meanwhile, each waiting for the vCPU
// it will run (vcpu-worker.ts takes its VcpuWorkerData as a first message
// when it was started without one).
//
// Imports nothing but worker_threads, so that calling it costs nothing.
import { Worker } from 'node:worker_threads';
import type { VcpuWorkerData } from './vcpu-protocol.js';

const WORKER_URL = new URL('./vcpu-worker.js', import.meta.url);
const idle: Worker[] = [];

/** Start `count` vCPU workers (less those already idle) that wait for a vCPU. They do not keep the process alive. */
export function prewarmVcpuWorkers(count = 1): void {
  while (idle.length < count) {
    const worker = new Worker(WORKER_URL);
    // A worker that failed to load before it was taken is not handed out: the next take spawns afresh.
    const forget = (): void => {
      const at = idle.indexOf(worker);
      if (at >= 0) idle.splice(at, 1);
    };
    worker.once('error', forget).once('exit', forget);
    worker.unref();
    idle.push(worker);
  }
}

/** A worker running the vCPU `data` names: an idle one given it, else a new one started with it. */
export function vcpuWorkerFor(data: VcpuWorkerData, transferList: Transferable[]): Worker {
  const worker = idle.shift();
  if (!worker) return new Worker(WORKER_URL, { workerData: data, transferList: transferList as never });
  worker.ref();
  worker.postMessage(data, transferList as never);
  return worker;
}

/** Idle workers, for tests. */
export function idleVcpuWorkers(): number {
  return idle.length;
}
