// Messages between the VMM (main thread) and a vCPU worker. The worker runs
// KVM_RUN synchronously and never returns to its event loop while the VM
// lives, so commands reach it by receiveMessageOnPort after a doorbell: the
// VMM posts the command, bumps the doorbell word (waking a paused worker from
// Atomics.wait) and, if the vCPU is in the guest, sets kvm_run.immediate_exit
// and sends the kick signal so KVM_RUN returns -EINTR.
//
// The vCPU's counters do not travel in messages: a guest that never does port
// I/O would send none, and the VMM's view would stand still. The worker adds
// to a SharedArrayBuffer (VcpuCounterBlock) on every exit, and the main thread
// reads it whenever it is asked (status, /metrics): always live.
import type { MessagePort } from 'node:worker_threads';
import type { SavedDevice } from './devices/device.js';
import { InvalidStateTransitionError, SerialInputFullError, VcpuCommandError, type VmError } from './errors.js';
import type { KvmRegs, KvmSregs } from './kvm/ioctls/structs.js';
import type { VmExit } from './kvm/exits.js';
import type { VcpuState } from './kvm/kvm-vcpu.js';
import type { VcpuRunState } from './vcpu-state-machine.js';

export interface VcpuWorkerData {
  vcpuFd: number;
  vcpuId: number;
  mmapSize: number;
  /** The VM's XSAVE area size (KvmVm.xsaveBytes). */
  xsaveBytes: number;
  /** Int32Array[1] over it: the doorbell counter. */
  doorbell: SharedArrayBuffer;
  kickSignal: number;
  /** vCPU 0's worker owns the port I/O devices (COM1, the done port). */
  ownsDevices: boolean;
  port: MessagePort;
  /** The vCPU's counters (VcpuCounterBlock): the worker adds, the VMM reads. */
  counters: SharedArrayBuffer;
}

export type VcpuCommand =
  | { type: 'resume'; seq: number }
  | { type: 'pause'; seq: number }
  | { type: 'save-state'; seq: number; msrIndices: number[] }
  /** devices: for the worker that owns them (vCPU 0's). */
  | { type: 'restore-state'; seq: number; vcpu: VcpuState; devices?: SavedDevice[] }
  | { type: 'set-boot-state'; seq: number; regs: KvmRegs; sregs: KvmSregs; cpuid: VcpuState['cpuid'] }
  | { type: 'input'; seq: number; bytes: Uint8Array }
  | { type: 'stop'; seq: number };

/** A command before the handle numbers it. */
export type VcpuCommandBody = VcpuCommand extends infer C ? (C extends VcpuCommand ? Omit<C, 'seq'> : never) : never;

/** Why a vCPU left the guest for good. */
export type GuestExitReason =
  | { type: 'done'; status: number }
  | { type: 'shutdown' }
  | { type: 'stopped' }
  /** The guest moved to another VMM (a completed live migration): it runs there now. */
  | { type: 'migrated'; to: string }
  | { type: 'failed'; exit: string };

/** Every exit to userspace a vCPU can take (kvm/exits.ts's VmExit types), in the order of their counter slots. */
export const VCPU_EXIT_REASONS = ['io', 'mmio', 'hlt', 'shutdown', 'fail-entry', 'internal-error', 'system-event', 'intr', 'debug', 'exception', 'unknown'] as const;
export type VcpuExitReason = (typeof VCPU_EXIT_REASONS)[number];
// Compile-time check that the list is VmExit's types, no more, no fewer.
const exitReasonsComplete: [Exclude<VmExit['type'], VcpuExitReason>, Exclude<VcpuExitReason, VmExit['type']>] extends [never, never] ? true : never = true;
void exitReasonsComplete;

export interface VcpuCounters {
  /** Exits to userspace (KVM_RUN returned with an exit reason), all reasons. */
  exits: number;
  /** Of those, port I/O. */
  ioExits: number;
  /** KVM_RUN interrupted by the VMM's kick (a command for the vCPU). */
  kicks: number;
  exitsByReason: Record<VcpuExitReason, number>;
}

const KICK_SLOT = VCPU_EXIT_REASONS.length;
const EXIT_SLOT: Readonly<Record<VcpuExitReason, number>> = Object.fromEntries(VCPU_EXIT_REASONS.map((reason, slot) => [reason, slot])) as Record<VcpuExitReason, number>;

/**
 * A vCPU's counters in shared memory: one u64 slot per exit reason, then
 * kicks. Only the vCPU's worker adds (Atomics, so a reader on another thread
 * never sees a torn value); anyone holding the buffer reads.
 */
export class VcpuCounterBlock {
  private readonly slots: BigUint64Array;

  constructor(readonly buffer: SharedArrayBuffer = new SharedArrayBuffer((KICK_SLOT + 1) * 8)) {
    this.slots = new BigUint64Array(buffer);
  }

  countExit(reason: VcpuExitReason): void {
    Atomics.add(this.slots, EXIT_SLOT[reason], 1n);
  }

  countKick(): void {
    Atomics.add(this.slots, KICK_SLOT, 1n);
  }

  read(): VcpuCounters {
    const exitsByReason = {} as Record<VcpuExitReason, number>;
    let exits = 0;
    for (const reason of VCPU_EXIT_REASONS) {
      const count = Number(Atomics.load(this.slots, EXIT_SLOT[reason]));
      exitsByReason[reason] = count;
      exits += count;
    }
    return { exits, ioExits: exitsByReason.io, kicks: Number(Atomics.load(this.slots, KICK_SLOT)), exitsByReason };
  }
}

export type VcpuEvent =
  | { type: 'ready'; tid: number }
  | { type: 'reply'; seq: number; ok: true; value?: unknown }
  | { type: 'reply'; seq: number; ok: false; error: VcpuReplyError }
  | { type: 'state'; state: VcpuRunState }
  /** Console bytes. */
  | { type: 'output'; bytes: Uint8Array }
  | { type: 'irq'; irq: number; level: 0 | 1 }
  | { type: 'exited'; reason: GuestExitReason };

/** A worker-side error as it crosses the port: its class's code and the fields needed to rebuild it. */
export interface VcpuReplyError {
  name: string;
  code?: string;
  message: string;
  fields?: Record<string, number | string>;
}

/** The worker's side: an error thrown while handling a command, for the reply. */
export function encodeVcpuError(error: unknown): VcpuReplyError {
  const e = error as Error & { code?: string };
  if (error instanceof SerialInputFullError) {
    return { name: e.name, code: e.code, message: e.message, fields: { refusedBytes: error.refusedBytes, queuedBytes: error.queuedBytes, limitBytes: error.limitBytes } };
  }
  if (error instanceof InvalidStateTransitionError) return { name: e.name, code: e.code, message: e.message, fields: { from: error.from, request: error.request } };
  return { name: e.name, code: e.code, message: e.message };
}

/** The VMM's side: the typed error a refused command stands for (the same class where the worker's is known). */
export function decodeVcpuError(vcpuId: number, command: string, error: VcpuReplyError): VmError {
  const f = error.fields ?? {};
  if (error.code === 'ESERIALFULL') return new SerialInputFullError(Number(f.refusedBytes), Number(f.queuedBytes), Number(f.limitBytes));
  if (error.code === 'ESTATE') return new InvalidStateTransitionError(String(f.from), String(f.request));
  return new VcpuCommandError(vcpuId, command, error.code, error.message);
}
