// A vCPU file descriptor: KVM_RUN over the mmap'ed kvm_run page, and every
// piece of architectural state a snapshot needs.
//
// A KvmVcpu can be adopted by fd in another thread of the process (the vCPU
// worker does so); each thread maps kvm_run itself, and both mappings are the
// same page, so the main thread can set immediate_exit for a worker's vCPU.
import { kvmNative } from '../../native-kvm.js';
import { native } from '../../native.js';
import { VmError } from '../errors.js';
import { KVM_RUN_OFFSET, KVM_SIZE, type KvmIoctlName } from './ioctls/constants.js';
import { decodeExit, type VmExit } from './exits.js';
import { kvmIoctlBytes, kvmIoctlBytesResult, kvmIoctlInt, requireSavedStruct } from './ioctls/ioctl.js';
import { decodeMsrs, decodeRegs, decodeSregs, encodeCpuid, encodeMsrs, encodeRegs, encodeSregs, type CpuidEntry, type KvmRegs, type KvmSregs, type MsrEntry } from './ioctls/structs.js';
import { wrapKvm } from './kvm-errors.js';

/** What one KVM_RUN ended with: an exit to handle, or a kick (signal or immediate_exit). */
export type RunResult = { type: 'exit'; exit: VmExit } | { type: 'kicked' };

/** Everything KVM keeps for one vCPU, as the kernel's structs (opaque bytes) plus MSR values. */
export interface VcpuState {
  id: number;
  cpuid: CpuidEntry[];
  mpState: Uint8Array;
  regs: Uint8Array;
  sregs: Uint8Array;
  fpu: Uint8Array;
  xsave: Uint8Array;
  xcrs: Uint8Array;
  debugregs: Uint8Array;
  lapic: Uint8Array;
  msrs: MsrEntry[];
  events: Uint8Array;
}

const C = native.constants;

export class KvmVcpu {
  private closed = false;
  private cpuid: CpuidEntry[] = [];
  /** The kvm_run mapping: the exit struct, plus the PIO data page after it. */
  readonly run: Uint8Array;

  private constructor(
    readonly fd: number,
    readonly id: number,
    readonly runAddress: number,
    readonly runLengthBytes: number,
    /** This VM's XSAVE area size (KvmVm.xsaveBytes): what KVM_GET_XSAVE2 fills and KVM_SET_XSAVE reads. */
    readonly xsaveBytes: number,
  ) {
    this.run = new Uint8Array(native.arrayBufferAt(runAddress, runLengthBytes));
  }

  /** Wrap an existing vCPU fd (made by KvmVm.createVcpu, possibly in another thread) and map kvm_run. */
  static adopt(fd: number, id: number, mmapSize: number, xsaveBytes: number): KvmVcpu {
    const address = wrapKvm('mmap(kvm_run)', () => native.mmap(0, mmapSize, C.PROT_READ | C.PROT_WRITE, C.MAP_SHARED, fd, 0));
    return new KvmVcpu(fd, id, address, mmapSize, xsaveBytes);
  }

  /** KVM_RUN until the next exit to userspace. Blocks the calling thread. */
  runOnce(): RunResult {
    this.assertOpen();
    const r = wrapKvm('KVM_RUN', () => kvmNative.kvmRun(this.fd));
    if (r < 0) return { type: 'kicked' };
    return { type: 'exit', exit: decodeExit(this.run) };
  }

  /** kvm_run.immediate_exit: while set, KVM_RUN returns -EINTR before entering the guest. */
  setImmediateExit(on: boolean): void {
    Atomics.store(new Uint8Array(this.run.buffer, this.run.byteOffset + KVM_RUN_OFFSET.immediate_exit, 1), 0, on ? 1 : 0);
  }

  getRegs(): KvmRegs {
    return decodeRegs(this.getBytes('KVM_GET_REGS', KVM_SIZE.kvm_regs));
  }

  setRegs(regs: KvmRegs): void {
    this.setBytes('KVM_SET_REGS', encodeRegs(regs));
  }

  getSregs(): KvmSregs {
    return decodeSregs(this.getBytes('KVM_GET_SREGS', KVM_SIZE.kvm_sregs));
  }

  setSregs(sregs: KvmSregs): void {
    this.setBytes('KVM_SET_SREGS', encodeSregs(sregs));
  }

  /** KVM_SET_CPUID2: must come before the first KVM_RUN. */
  setCpuid(entries: readonly CpuidEntry[]): void {
    this.setBytes('KVM_SET_CPUID2', encodeCpuid(entries));
    this.cpuid = entries.slice();
  }

  /** KVM_KVMCLOCK_CTRL: tell a kvmclock guest it was paused (no soft-lockup warning). EINVAL when it has no kvmclock. */
  kvmclockCtrl(): boolean {
    try {
      kvmIoctlInt(this.fd, 'KVM_KVMCLOCK_CTRL', 0);
      return true;
    } catch {
      return false;
    }
  }

  /** The MSRs among `candidates` this vCPU can read (KVM_GET_MSR_INDEX_LIST includes some it cannot). */
  readableMsrs(candidates: readonly number[]): number[] {
    const readable: number[] = [];
    for (const index of candidates) {
      const bytes = encodeMsrs([{ index, data: 0n }]);
      if (kvmIoctlBytesResult(this.fd, 'KVM_GET_MSRS', bytes) === 1) readable.push(index);
    }
    return readable;
  }

  getMsrs(indices: readonly number[]): MsrEntry[] {
    const bytes = encodeMsrs(indices.map((index) => ({ index, data: 0n })));
    const count = this.ioctlBytes('KVM_GET_MSRS', bytes);
    if (count !== indices.length) throw new VmError(`KVM_GET_MSRS read ${count} of ${indices.length} MSRs; MSR 0x${indices[count]!.toString(16)} failed`);
    return decodeMsrs(bytes, count);
  }

  setMsrs(entries: readonly MsrEntry[]): void {
    const count = this.ioctlBytes('KVM_SET_MSRS', encodeMsrs(entries));
    if (count !== entries.length) throw new VmError(`KVM_SET_MSRS wrote ${count} of ${entries.length} MSRs; MSR 0x${entries[count]!.index.toString(16)} failed`);
  }

  /** Save every piece of vCPU state. Call on the vCPU's own thread, while it is out of KVM_RUN. */
  saveState(msrIndices: readonly number[]): VcpuState {
    const { xsaveBytes } = this;
    // Firecracker's order: mp_state first (it can flush pending events into
    // the other state), then the registers, then the rest.
    const mpState = this.getBytes('KVM_GET_MP_STATE', KVM_SIZE.kvm_mp_state);
    const regs = this.getBytes('KVM_GET_REGS', KVM_SIZE.kvm_regs);
    const sregs = this.getBytes('KVM_GET_SREGS', KVM_SIZE.kvm_sregs);
    const fpu = this.getBytes('KVM_GET_FPU', KVM_SIZE.kvm_fpu);
    const xsave = this.getBytes(xsaveBytes > KVM_SIZE.kvm_xsave ? 'KVM_GET_XSAVE2' : 'KVM_GET_XSAVE', xsaveBytes);
    const xcrs = this.getBytes('KVM_GET_XCRS', KVM_SIZE.kvm_xcrs);
    const debugregs = this.getBytes('KVM_GET_DEBUGREGS', KVM_SIZE.kvm_debugregs);
    const lapic = this.getBytes('KVM_GET_LAPIC', KVM_SIZE.kvm_lapic_state);
    const msrs = this.getMsrs(msrIndices);
    const events = this.getBytes('KVM_GET_VCPU_EVENTS', KVM_SIZE.kvm_vcpu_events);
    return { id: this.id, cpuid: this.cpuid.slice(), mpState, regs, sregs, fpu, xsave, xcrs, debugregs, lapic, msrs, events };
  }

  /**
   * Restore what saveState returned, in the order KVM needs (CPUID first;
   * LAPIC after sregs' apic_base; events last). Every blob is checked against
   * its struct's size first (SAVED_STRUCTS), so nothing reaches KVM when one is wrong.
   */
  restoreState(state: VcpuState): void {
    if (state.id !== this.id) throw new VmError(`state of vCPU ${state.id} given to vCPU ${this.id}`);
    const field = (name: string): string => `vcpus[${state.id}].${name}`;
    const mpState = requireSavedStruct('mpState', state.mpState, field('mpState'));
    const regs = requireSavedStruct('regs', state.regs, field('regs'));
    const sregs = requireSavedStruct('sregs', state.sregs, field('sregs'));
    const fpu = requireSavedStruct('fpu', state.fpu, field('fpu'));
    const xsave = this.xsaveArea(requireSavedStruct('xsave', state.xsave, field('xsave')));
    const xcrs = requireSavedStruct('xcrs', state.xcrs, field('xcrs'));
    const debugregs = requireSavedStruct('debugregs', state.debugregs, field('debugregs'));
    const lapic = requireSavedStruct('lapic', state.lapic, field('lapic'));
    const events = requireSavedStruct('events', state.events, field('events'));
    this.setCpuid(state.cpuid);
    this.setBytes('KVM_SET_MP_STATE', mpState);
    this.setBytes('KVM_SET_REGS', regs);
    this.setBytes('KVM_SET_SREGS', sregs);
    this.setBytes('KVM_SET_FPU', fpu);
    // KVM_SET_XSAVE copies this VM's whole XSAVE area (uabi_size), not 4 KiB.
    this.setBytes('KVM_SET_XSAVE', xsave, this.xsaveBytes);
    this.setBytes('KVM_SET_XCRS', xcrs);
    this.setBytes('KVM_SET_DEBUGREGS', debugregs);
    this.setBytes('KVM_SET_LAPIC', lapic);
    this.setMsrs(state.msrs);
    this.setBytes('KVM_SET_VCPU_EVENTS', events);
  }

  /**
   * A saved XSAVE area sized for this VM: a shorter one (saved where the area
   * was 4 KiB) is zero-padded, which is what the components it lacks look
   * like to the kernel (their XSTATE_BV bits are clear). A longer one is
   * passed whole; KVM refuses components this host does not support.
   */
  private xsaveArea(saved: Uint8Array): Uint8Array {
    if (saved.byteLength >= this.xsaveBytes) return saved;
    const area = new Uint8Array(this.xsaveBytes);
    area.set(saved);
    return area;
  }

  /** Unmap kvm_run (and close the fd if `closeFd`: only the thread that owns the vCPU should). */
  close(closeFd = true): void {
    if (this.closed) return;
    this.closed = true;
    native.munmap(this.runAddress, this.runLengthBytes);
    if (closeFd) native.close(this.fd);
  }

  private getBytes(name: KvmIoctlName, size: number): Uint8Array {
    const bytes = new Uint8Array(size);
    this.ioctlBytes(name, bytes);
    return bytes;
  }

  private setBytes(name: KvmIoctlName, bytes: Uint8Array, minBytes = 0): void {
    this.ioctlBytes(name, bytes, minBytes);
  }

  private ioctlBytes(name: KvmIoctlName, bytes: Uint8Array, minBytes = 0): number {
    this.assertOpen();
    return kvmIoctlBytes(this.fd, name, bytes, minBytes);
  }

  private assertOpen(): void {
    if (this.closed) throw new VmError(`vCPU ${this.id} is closed`);
  }
}
