// A VM file descriptor: memory slots, the in-kernel irqchip and PIT, the
// clock, and vCPU creation.
import { native } from '../../native.js';
import { VmError } from '../errors.js';
import type { GuestMemoryRegion } from '../memory/guest-memory.js';
import { KVM_CAP, KVM_DIRTY_LOG_INITIALLY_SET, KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE, KVM_MEM_LOG_DIRTY_PAGES, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, KVM_SIZE, type KvmCapName, type KvmIoctlName } from './ioctls/constants.js';
import { kvmIoctlBytes, kvmIoctlInt, requireSavedStruct } from './ioctls/ioctl.js';
import { clockFlagsCleared, encodeClearDirtyLog, encodeDirtyLog, encodeEnableCap, encodeIrqLevel, encodePitConfig, encodeUserMemoryRegion, irqchipBuffer } from './ioctls/structs.js';
import type { KvmSystem } from './kvm-system.js';
import { KvmVcpu } from './kvm-vcpu.js';

/** The in-kernel interrupt controllers, as the kernel's opaque kvm_irqchip structs. */
export interface IrqchipState {
  picMaster: Uint8Array;
  picSlave: Uint8Array;
  ioapic: Uint8Array;
}

export class KvmVm {
  private closed = false;
  private readonly vcpus: KvmVcpu[] = [];
  /** KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 is enabled on this VM (it cannot be turned off again). */
  private manualProtect = false;

  constructor(readonly system: KvmSystem, readonly fd: number) {}

  /** KVM_CHECK_EXTENSION on the VM: some answers (KVM_CAP_XSAVE2's size) are per VM. */
  checkExtension(cap: KvmCapName): number {
    return this.ioctlInt('KVM_CHECK_EXTENSION', KVM_CAP[cap]);
  }

  /** KVM_SET_USER_MEMORY_REGION: guest RAM [gpa, +length) is the host memory at hostAddress. */
  setUserMemoryRegion(region: GuestMemoryRegion, flags = 0): void {
    this.ioctlBytes('KVM_SET_USER_MEMORY_REGION', encodeUserMemoryRegion({
      slot: region.slot,
      flags,
      guestPhysAddress: region.guestPhysAddress,
      lengthBytes: region.lengthBytes,
      hostAddress: region.hostAddress,
    }));
  }

  /**
   * Start tracking which pages of guest RAM the guest writes (pre-copy's dirty
   * log): the slot is set again with KVM_MEM_LOG_DIRTY_PAGES. Where KVM offers
   * KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 it is enabled first with INITIALLY_SET,
   * so turning the log on costs nothing up front and pages are write-protected
   * only as clearDirtyLog re-arms them; returns which mode is in force.
   */
  startDirtyLog(region: GuestMemoryRegion): 'manual-protect' | 'get-clears' {
    let mode: 'manual-protect' | 'get-clears' = 'get-clears';
    if (this.checkExtension('KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2') > 0 && !this.manualProtect) {
      const flags = BigInt(KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE | KVM_DIRTY_LOG_INITIALLY_SET);
      this.ioctlBytes('KVM_ENABLE_CAP', encodeEnableCap(KVM_CAP.KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2, [flags]));
      this.manualProtect = true;
    }
    if (this.manualProtect) mode = 'manual-protect';
    this.setUserMemoryRegion(region, KVM_MEM_LOG_DIRTY_PAGES);
    return mode;
  }

  /** Stop the dirty log (the slot is set again without KVM_MEM_LOG_DIRTY_PAGES). */
  stopDirtyLog(region: GuestMemoryRegion): void {
    this.setUserMemoryRegion(region, 0);
  }

  /**
   * KVM_GET_DIRTY_LOG into `bitmap` (one bit per page of the slot, whole u64
   * words). Without manual protect the call also clears the log and
   * re-protects the pages it reports; with it, call clearDirtyLog for the
   * pages about to be sent, before reading them.
   */
  getDirtyLog(slot: number, bitmap: Uint8Array): void {
    this.ioctlBytes('KVM_GET_DIRTY_LOG', encodeDirtyLog(slot, native.addressOf(bitmap)));
  }

  /** KVM_CLEAR_DIRTY_LOG: re-arm tracking of the pages set in `bitmap` (bit 0 = firstPage, a multiple of 64). */
  clearDirtyLog(slot: number, firstPage: number, pageCount: number, bitmap: Uint8Array): void {
    this.ioctlBytes('KVM_CLEAR_DIRTY_LOG', encodeClearDirtyLog(slot, firstPage, pageCount, native.addressOf(bitmap)));
  }

  /** KVM_SET_TSS_ADDR: three pages below 4 GiB that Intel VMX uses for real-mode emulation. */
  setTssAddress(address: number): void {
    this.ioctlInt('KVM_SET_TSS_ADDR', address);
  }

  /** KVM_SET_IDENTITY_MAP_ADDR: one page below 4 GiB for VMX's identity page table. */
  setIdentityMapAddress(address: number): void {
    const bytes = new Uint8Array(8);
    new DataView(bytes.buffer).setBigUint64(0, BigInt(address), true);
    this.ioctlBytes('KVM_SET_IDENTITY_MAP_ADDR', bytes);
  }

  /** KVM_CREATE_IRQCHIP: in-kernel PIC pair, IOAPIC and a LAPIC per vCPU. Before any vCPU. */
  createIrqchip(): void {
    this.ioctlInt('KVM_CREATE_IRQCHIP', 0);
  }

  /** KVM_CREATE_PIT2: the in-kernel 8254 timer on IRQ0. */
  createPit2(flags: number): void {
    this.ioctlBytes('KVM_CREATE_PIT2', encodePitConfig(flags));
  }

  /** KVM_IRQ_LINE: set an interrupt line (GSI) high or low. */
  irqLine(irq: number, level: 0 | 1): void {
    this.ioctlBytes('KVM_IRQ_LINE', encodeIrqLevel(irq, level));
  }

  getIrqchip(): IrqchipState {
    const read = (chipId: number): Uint8Array => {
      const bytes = irqchipBuffer(chipId);
      this.ioctlBytes('KVM_GET_IRQCHIP', bytes);
      return bytes;
    };
    return { picMaster: read(KVM_IRQCHIP_PIC_MASTER), picSlave: read(KVM_IRQCHIP_PIC_SLAVE), ioapic: read(KVM_IRQCHIP_IOAPIC) };
  }

  setIrqchip(state: IrqchipState): void {
    for (const [field, bytes] of [['irqchip.picMaster', state.picMaster], ['irqchip.picSlave', state.picSlave], ['irqchip.ioapic', state.ioapic]] as const) {
      this.ioctlBytes('KVM_SET_IRQCHIP', requireSavedStruct('irqchip', bytes, field));
    }
  }

  /** KVM_GET_PIT2: struct kvm_pit_state2. */
  getPit2(): Uint8Array {
    const bytes = new Uint8Array(KVM_SIZE.kvm_pit_state2);
    this.ioctlBytes('KVM_GET_PIT2', bytes);
    return bytes;
  }

  setPit2(bytes: Uint8Array): void {
    this.ioctlBytes('KVM_SET_PIT2', requireSavedStruct('pit2', bytes));
  }

  /** KVM_GET_CLOCK: struct kvm_clock_data (the kvmclock's nanoseconds and flags). */
  getClock(): Uint8Array {
    const bytes = new Uint8Array(KVM_SIZE.kvm_clock_data);
    this.ioctlBytes('KVM_GET_CLOCK', bytes);
    return bytes;
  }

  /** KVM_SET_CLOCK, with the flags cleared so the clock resumes at the saved value. */
  setClock(bytes: Uint8Array): void {
    this.ioctlBytes('KVM_SET_CLOCK', clockFlagsCleared(requireSavedStruct('clock', bytes)));
  }

  /** KVM_CREATE_VCPU, and its kvm_run mapping in this thread. */
  createVcpu(id: number): KvmVcpu {
    const vcpuFd = this.ioctlInt('KVM_CREATE_VCPU', id);
    const vcpu = KvmVcpu.adopt(vcpuFd, id, this.system.vcpuMmapSize(), this.xsaveBytes());
    this.vcpus.push(vcpu);
    return vcpu;
  }

  /**
   * Bytes of a vCPU's XSAVE area on this VM: struct kvm_xsave's 4 KiB, or more
   * when KVM_CAP_XSAVE2 says so (KVM_GET_XSAVE2 fills that much, and
   * KVM_SET_XSAVE then reads that much).
   */
  xsaveBytes(): number {
    return Math.max(KVM_SIZE.kvm_xsave, this.checkExtension('KVM_CAP_XSAVE2'));
  }

  /** The vCPUs made by createVcpu, in creation order. */
  get createdVcpus(): readonly KvmVcpu[] {
    return this.vcpus;
  }

  /** Close the vCPUs made here, then the VM (the kernel frees it when the last fd closes). */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const vcpu of this.vcpus) vcpu.close();
    native.close(this.fd);
  }

  private ioctlInt(name: KvmIoctlName, arg: number): number {
    if (this.closed) throw new VmError('KvmVm is closed');
    return kvmIoctlInt(this.fd, name, arg);
  }

  private ioctlBytes(name: KvmIoctlName, bytes: Uint8Array): number {
    if (this.closed) throw new VmError('KvmVm is closed');
    return kvmIoctlBytes(this.fd, name, bytes);
  }
}
