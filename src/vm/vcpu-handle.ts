// One vCPU's worker thread as the main thread sees it: commands sent with a
// doorbell and a kick, their replies matched by sequence number, and the
// vCPU's run state as its worker reports it. The worker owns the state (its
// table, vcpu-state-machine.ts, checks every command it is sent); this copy
// moves only as that table allows (reportedVcpuState), never by assignment
// from an event.
import type { Worker } from 'node:worker_threads';
import { kvmNative } from '../native-kvm.js';
import { InvalidStateTransitionError } from './errors.js';
import type { KvmVcpu } from './kvm/kvm-vcpu.js';
import { decodeVcpuError, type GuestExitReason, type VcpuCommandBody, type VcpuCounterBlock, type VcpuCounters, type VcpuEvent } from './vcpu-protocol.js';
import { reportedVcpuState, type VcpuRunState } from './vcpu-state-machine.js';

/** The real-time signal that kicks a vCPU thread out of KVM_RUN (an empty handler, no SA_RESTART: KVM_RUN returns -EINTR). */
export const KICK_SIGNAL = kvmNative.kvmConstants.SIGRTMIN + 2;

/** One vCPU's worker, as the main thread sees it. */
export class VcpuHandle {
  private runState: VcpuRunState = 'paused';
  private tid = 0;
  private seq = 0;
  private readonly pending = new Map<number, { command: string; resolve: (v: unknown) => void; reject: (e: Error) => void }>();
  readonly exited: Promise<GuestExitReason>;
  readonly ready: Promise<void>;
  /** Resolves when the worker thread has ended (on its own after 'exited', or terminated). */
  private readonly ended: Promise<void>;

  constructor(
    readonly vcpu: KvmVcpu,
    private readonly worker: Worker,
    private readonly port: MessagePort,
    private readonly doorbell: Int32Array,
    private readonly counterBlock: VcpuCounterBlock,
    onEvent: (event: VcpuEvent) => void,
  ) {
    let resolveReady!: () => void;
    this.ready = new Promise((r) => (resolveReady = r));
    this.ended = new Promise((r) => worker.once('exit', () => r()));
    this.exited = new Promise((resolveExit) => {
      worker.on('message', (event: VcpuEvent) => {
        switch (event.type) {
          case 'ready':
            this.tid = event.tid;
            resolveReady();
            break;
          case 'reply': {
            const p = this.pending.get(event.seq);
            this.pending.delete(event.seq);
            if (!p) break;
            if (event.ok) p.resolve(event.value);
            else p.reject(decodeVcpuError(vcpu.id, p.command, event.error));
            break;
          }
          case 'state':
            this.runState = reportedVcpuState(this.runState, event.state);
            break;
          case 'exited':
            this.runState = reportedVcpuState(this.runState, 'exited');
            for (const p of this.pending.values()) p.reject(new InvalidStateTransitionError('exited', p.command));
            this.pending.clear();
            resolveExit(event.reason);
            break;
          case 'output':
          case 'irq':
            break;
          default: {
            const never: never = event;
            throw new Error(`unknown vCPU event ${JSON.stringify(never)}`);
          }
        }
        onEvent(event);
      });
      worker.on('error', (error) => resolveExit({ type: 'failed', exit: `worker error: ${error.message}` }));
      worker.on('exit', () => resolveExit({ type: 'failed', exit: 'worker ended' }));
    });
  }

  /** The vCPU's run state, as its worker last reported it. */
  get state(): VcpuRunState {
    return this.runState;
  }

  /** Send a command and wait for its reply. Kicks the vCPU out of the guest so it sees the command. */
  request<T = void>(command: VcpuCommandBody): Promise<T> {
    if (this.runState === 'exited') return Promise.reject(new InvalidStateTransitionError('exited', command.type));
    const seq = ++this.seq;
    const reply = new Promise<T>((resolve, reject) => this.pending.set(seq, { command: command.type, resolve: resolve as (v: unknown) => void, reject }));
    this.port.postMessage({ ...command, seq });
    Atomics.add(this.doorbell, 0, 1);
    Atomics.notify(this.doorbell, 0);
    if (this.runState === 'running') {
      // immediate_exit first: a signal landing just before KVM_RUN would be
      // lost, the flag is not (KVM checks it on entry).
      this.vcpu.setImmediateExit(true);
      try {
        kvmNative.kvmKick(this.tid, KICK_SIGNAL);
      } catch {
        // The thread is gone: its 'exited' event rejects the request.
      }
    }
    return reply;
  }

  /**
   * Wait for the worker to leave the guest for good (it was sent a stop) and
   * for its thread to end, each for at most `graceMs`; a worker that has not
   * ended by then is terminated. A vCPU thread still inside KVM_RUN cannot be
   * terminated (Node ends a worker only when its JavaScript runs again), so
   * nothing here waits longer than its bounds: the caller goes on either way.
   */
  async end(graceMs: number): Promise<void> {
    await settledWithin(this.exited, graceMs);
    // After 'exited' the worker has unmapped kvm_run and ends by itself in a moment.
    if (await settledWithin(this.ended, graceMs)) return;
    if (await settledWithin(this.worker.terminate(), graceMs)) return;
    // Held in the kernel still: it must not keep the process alive as well.
    this.worker.unref();
  }

  /** The vCPU's counters as of now, read from the memory its worker adds to (live while it runs). */
  get counters(): VcpuCounters {
    return this.counterBlock.read();
  }

  /** The vCPU thread's kernel id (a fault message names it). */
  get threadId(): number {
    return this.tid;
  }
}

/** Whether `promise` settled within `ms` (false: it is still pending, and is left to settle alone). */
export async function settledWithin(promise: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const timedOut = new Promise<false>((resolve) => (timer = setTimeout(() => resolve(false), ms)));
  try {
    return await Promise.race([promise.then(() => true, () => true), timedOut]);
  } finally {
    clearTimeout(timer);
  }
}
