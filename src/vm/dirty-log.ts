// Which pages of guest RAM were written since they were last read off: KVM's
// dirty log for the guest's own writes (KVM_MEM_LOG_DIRTY_PAGES; with
// KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 and INITIALLY_SET where offered, so that
// starting it write-protects nothing up front), and the VMM's own writes to
// guest RAM (GuestMemory.write), which KVM does not see.
import type { KvmVm } from './kvm/kvm-vm.js';
import type { GuestMemory } from './memory/guest-memory.js';

export class GuestDirtyLog {
  private mode: 'manual-protect' | 'get-clears' | undefined;
  private readonly pageCount: number;

  constructor(private readonly vm: KvmVm, private readonly memory: GuestMemory, pageSizeBytes: number) {
    this.pageCount = memory.lengthBytes / pageSizeBytes;
  }

  get active(): boolean {
    return this.mode !== undefined;
  }

  start(): void {
    if (this.mode) return;
    this.mode = this.vm.startDirtyLog(this.memory.regions[0]!);
    this.memory.trackVmmWrites(true);
  }

  /** OR the pages written since the last collect into `into` (bit p: page p), and re-arm them. */
  collect(into: Uint8Array): void {
    if (!this.mode) return;
    const slot = this.memory.regions[0]!.slot;
    // KVM writes whole 64-bit words of bits.
    const bitmap = new Uint8Array(Math.ceil(this.pageCount / 64) * 8);
    this.vm.getDirtyLog(slot, bitmap);
    if (this.mode === 'manual-protect') this.vm.clearDirtyLog(slot, 0, this.pageCount, bitmap);
    for (let i = 0; i < into.length && i < bitmap.length; i++) into[i]! |= bitmap[i]!;
    for (const page of this.memory.takeVmmWrites()) into[page >> 3]! |= 1 << (page & 7);
  }

  /** Turning the log off rebuilds KVM's memslot (tens of ms on a large guest): done once the guest runs elsewhere. */
  stop(): void {
    if (!this.mode) return;
    this.vm.stopDirtyLog(this.memory.regions[0]!);
    this.memory.trackVmmWrites(false);
    this.mode = undefined;
  }
}
