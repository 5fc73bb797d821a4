// Pure codecs for the KVM structs the VMM reads field by field. Everything
// else (LAPIC, XSAVE, events, irqchip, PIT...) is kept as the kernel's opaque
// bytes: the VMM saves and restores it, it never edits it.
import { KVM_SIZE } from './constants.js';

/**
 * Saved state that goes back to KVM as the kernel's own bytes: which struct
 * each piece is and how long it must be. The one table both the snapshot's
 * schema (persist/vm-state.ts, before any vCPU exists) and the KVM wrappers
 * (kvm-vcpu.ts, kvm-vm.ts, right before the ioctl) check against. XSAVE may
 * be longer: with KVM_CAP_XSAVE2 the area holds more state components than
 * struct kvm_xsave's 4 KiB (AMX), and the restoring vCPU pads or checks it
 * against its own size.
 */
export const SAVED_STRUCTS = {
  mpState: { struct: 'kvm_mp_state', bytes: KVM_SIZE.kvm_mp_state, larger: false },
  regs: { struct: 'kvm_regs', bytes: KVM_SIZE.kvm_regs, larger: false },
  sregs: { struct: 'kvm_sregs', bytes: KVM_SIZE.kvm_sregs, larger: false },
  fpu: { struct: 'kvm_fpu', bytes: KVM_SIZE.kvm_fpu, larger: false },
  xsave: { struct: 'kvm_xsave', bytes: KVM_SIZE.kvm_xsave, larger: true },
  xcrs: { struct: 'kvm_xcrs', bytes: KVM_SIZE.kvm_xcrs, larger: false },
  debugregs: { struct: 'kvm_debugregs', bytes: KVM_SIZE.kvm_debugregs, larger: false },
  lapic: { struct: 'kvm_lapic_state', bytes: KVM_SIZE.kvm_lapic_state, larger: false },
  events: { struct: 'kvm_vcpu_events', bytes: KVM_SIZE.kvm_vcpu_events, larger: false },
  irqchip: { struct: 'kvm_irqchip', bytes: KVM_SIZE.kvm_irqchip, larger: false },
  pit2: { struct: 'kvm_pit_state2', bytes: KVM_SIZE.kvm_pit_state2, larger: false },
  clock: { struct: 'kvm_clock_data', bytes: KVM_SIZE.kvm_clock_data, larger: false },
} as const satisfies Record<string, { struct: keyof typeof KVM_SIZE; bytes: number; larger: boolean }>;
export type SavedStructName = keyof typeof SAVED_STRUCTS;

/** The largest XSAVE area accepted from a snapshot (KVM_CAP_XSAVE2 sizes are a few KiB; AMX is about 11 KiB). */
export const MAX_XSAVE_BYTES = 64 * 1024;

/** Why `byteLength` bytes cannot be `name`'s struct, or undefined when they can. */
export function savedStructProblem(name: SavedStructName, byteLength: number): string | undefined {
  const { struct, bytes, larger } = SAVED_STRUCTS[name];
  if (larger) {
    if (byteLength < bytes) return `is ${byteLength} bytes, struct ${struct} is at least ${bytes}`;
    if (byteLength > MAX_XSAVE_BYTES) return `is ${byteLength} bytes, more than the ${MAX_XSAVE_BYTES} accepted for struct ${struct}`;
    return undefined;
  }
  return byteLength === bytes ? undefined : `is ${byteLength} bytes, struct ${struct} is ${bytes}`;
}

/** struct kvm_regs: general-purpose registers, as 64-bit values. */
export interface KvmRegs {
  rax: bigint; rbx: bigint; rcx: bigint; rdx: bigint;
  rsi: bigint; rdi: bigint; rsp: bigint; rbp: bigint;
  r8: bigint; r9: bigint; r10: bigint; r11: bigint;
  r12: bigint; r13: bigint; r14: bigint; r15: bigint;
  rip: bigint; rflags: bigint;
}
const REG_ORDER = ['rax', 'rbx', 'rcx', 'rdx', 'rsi', 'rdi', 'rsp', 'rbp', 'r8', 'r9', 'r10', 'r11', 'r12', 'r13', 'r14', 'r15', 'rip', 'rflags'] as const;

export function decodeRegs(bytes: Uint8Array): KvmRegs {
  const view = viewOf(bytes, KVM_SIZE.kvm_regs, 'kvm_regs');
  const out = {} as KvmRegs;
  REG_ORDER.forEach((name, i) => { out[name] = view.getBigUint64(i * 8, true); });
  return out;
}

export function encodeRegs(regs: KvmRegs): Uint8Array {
  const bytes = new Uint8Array(KVM_SIZE.kvm_regs);
  const view = new DataView(bytes.buffer);
  REG_ORDER.forEach((name, i) => view.setBigUint64(i * 8, regs[name], true));
  return bytes;
}

/** struct kvm_segment (24 bytes). */
export interface KvmSegment {
  base: bigint;
  limit: number;
  selector: number;
  type: number;
  present: number;
  dpl: number;
  db: number;
  s: number;
  l: number;
  g: number;
  avl: number;
  unusable: number;
}

/** struct kvm_dtable (16 bytes). */
export interface KvmDtable {
  base: bigint;
  limit: number;
}

/** struct kvm_sregs (312 bytes). */
export interface KvmSregs {
  cs: KvmSegment; ds: KvmSegment; es: KvmSegment; fs: KvmSegment;
  gs: KvmSegment; ss: KvmSegment; tr: KvmSegment; ldt: KvmSegment;
  gdt: KvmDtable; idt: KvmDtable;
  cr0: bigint; cr2: bigint; cr3: bigint; cr4: bigint; cr8: bigint;
  efer: bigint; apic_base: bigint;
  /** interrupt_bitmap[4]: pending external interrupts (raw). */
  interrupt_bitmap: [bigint, bigint, bigint, bigint];
}
const SEGMENTS = ['cs', 'ds', 'es', 'fs', 'gs', 'ss', 'tr', 'ldt'] as const;
const CONTROL = ['cr0', 'cr2', 'cr3', 'cr4', 'cr8', 'efer', 'apic_base'] as const;

function decodeSegment(view: DataView, at: number): KvmSegment {
  return {
    base: view.getBigUint64(at, true),
    limit: view.getUint32(at + 8, true),
    selector: view.getUint16(at + 12, true),
    type: view.getUint8(at + 14),
    present: view.getUint8(at + 15),
    dpl: view.getUint8(at + 16),
    db: view.getUint8(at + 17),
    s: view.getUint8(at + 18),
    l: view.getUint8(at + 19),
    g: view.getUint8(at + 20),
    avl: view.getUint8(at + 21),
    unusable: view.getUint8(at + 22),
  };
}

function encodeSegment(view: DataView, at: number, s: KvmSegment): void {
  view.setBigUint64(at, s.base, true);
  view.setUint32(at + 8, s.limit, true);
  view.setUint16(at + 12, s.selector, true);
  view.setUint8(at + 14, s.type);
  view.setUint8(at + 15, s.present);
  view.setUint8(at + 16, s.dpl);
  view.setUint8(at + 17, s.db);
  view.setUint8(at + 18, s.s);
  view.setUint8(at + 19, s.l);
  view.setUint8(at + 20, s.g);
  view.setUint8(at + 21, s.avl);
  view.setUint8(at + 22, s.unusable);
  view.setUint8(at + 23, 0);
}

export function decodeSregs(bytes: Uint8Array): KvmSregs {
  const view = viewOf(bytes, KVM_SIZE.kvm_sregs, 'kvm_sregs');
  const out = {} as KvmSregs;
  SEGMENTS.forEach((name, i) => { out[name] = decodeSegment(view, i * 24); });
  out.gdt = { base: view.getBigUint64(192, true), limit: view.getUint16(200, true) };
  out.idt = { base: view.getBigUint64(208, true), limit: view.getUint16(216, true) };
  CONTROL.forEach((name, i) => { out[name] = view.getBigUint64(224 + i * 8, true); });
  out.interrupt_bitmap = [0, 1, 2, 3].map((i) => view.getBigUint64(280 + i * 8, true)) as KvmSregs['interrupt_bitmap'];
  return out;
}

export function encodeSregs(sregs: KvmSregs): Uint8Array {
  const bytes = new Uint8Array(KVM_SIZE.kvm_sregs);
  const view = new DataView(bytes.buffer);
  SEGMENTS.forEach((name, i) => encodeSegment(view, i * 24, sregs[name]));
  view.setBigUint64(192, sregs.gdt.base, true);
  view.setUint16(200, sregs.gdt.limit, true);
  view.setBigUint64(208, sregs.idt.base, true);
  view.setUint16(216, sregs.idt.limit, true);
  CONTROL.forEach((name, i) => view.setBigUint64(224 + i * 8, sregs[name], true));
  sregs.interrupt_bitmap.forEach((word, i) => view.setBigUint64(280 + i * 8, word, true));
  return bytes;
}

/** struct kvm_userspace_memory_region. */
export interface UserMemoryRegion {
  slot: number;
  flags: number;
  guestPhysAddress: number;
  lengthBytes: number;
  hostAddress: number;
}

export function encodeUserMemoryRegion(region: UserMemoryRegion): Uint8Array {
  const bytes = new Uint8Array(KVM_SIZE.kvm_userspace_memory_region);
  const view = new DataView(bytes.buffer);
  view.setUint32(0, region.slot, true);
  view.setUint32(4, region.flags, true);
  view.setBigUint64(8, BigInt(region.guestPhysAddress), true);
  view.setBigUint64(16, BigInt(region.lengthBytes), true);
  view.setBigUint64(24, BigInt(region.hostAddress), true);
  return bytes;
}

/** struct kvm_cpuid_entry2. */
export interface CpuidEntry {
  function: number;
  index: number;
  flags: number;
  eax: number;
  ebx: number;
  ecx: number;
  edx: number;
}

/** struct kvm_cpuid2 with room for `capacity` entries (nent = capacity). */
export function cpuidBuffer(capacity: number): Uint8Array {
  const bytes = new Uint8Array(KVM_SIZE.kvm_cpuid2 + capacity * KVM_SIZE.kvm_cpuid_entry2);
  new DataView(bytes.buffer).setUint32(0, capacity, true);
  return bytes;
}

export function decodeCpuid(bytes: Uint8Array): CpuidEntry[] {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const count = view.getUint32(0, true);
  const entries: CpuidEntry[] = [];
  for (let i = 0; i < count; i++) {
    const at = KVM_SIZE.kvm_cpuid2 + i * KVM_SIZE.kvm_cpuid_entry2;
    entries.push({
      function: view.getUint32(at, true),
      index: view.getUint32(at + 4, true),
      flags: view.getUint32(at + 8, true),
      eax: view.getUint32(at + 12, true),
      ebx: view.getUint32(at + 16, true),
      ecx: view.getUint32(at + 20, true),
      edx: view.getUint32(at + 24, true),
    });
  }
  return entries;
}

export function encodeCpuid(entries: readonly CpuidEntry[]): Uint8Array {
  const bytes = cpuidBuffer(entries.length);
  const view = new DataView(bytes.buffer);
  entries.forEach((e, i) => {
    const at = KVM_SIZE.kvm_cpuid2 + i * KVM_SIZE.kvm_cpuid_entry2;
    view.setUint32(at, e.function, true);
    view.setUint32(at + 4, e.index, true);
    view.setUint32(at + 8, e.flags, true);
    view.setUint32(at + 12, e.eax, true);
    view.setUint32(at + 16, e.ebx, true);
    view.setUint32(at + 20, e.ecx, true);
    view.setUint32(at + 24, e.edx, true);
  });
  return bytes;
}

/** struct kvm_msr_list with room for `capacity` indices. */
export function msrListBuffer(capacity: number): Uint8Array {
  const bytes = new Uint8Array(KVM_SIZE.kvm_msr_list + capacity * 4);
  new DataView(bytes.buffer).setUint32(0, capacity, true);
  return bytes;
}

export function decodeMsrList(bytes: Uint8Array): number[] {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const count = view.getUint32(0, true);
  return Array.from({ length: count }, (_, i) => view.getUint32(4 + i * 4, true));
}

/** One MSR and its value. */
export interface MsrEntry {
  index: number;
  data: bigint;
}

/** struct kvm_msrs followed by its entries. */
export function encodeMsrs(entries: readonly MsrEntry[]): Uint8Array {
  const bytes = new Uint8Array(KVM_SIZE.kvm_msrs + entries.length * KVM_SIZE.kvm_msr_entry);
  const view = new DataView(bytes.buffer);
  view.setUint32(0, entries.length, true);
  entries.forEach((e, i) => {
    const at = KVM_SIZE.kvm_msrs + i * KVM_SIZE.kvm_msr_entry;
    view.setUint32(at, e.index, true);
    view.setBigUint64(at + 8, e.data, true);
  });
  return bytes;
}

/** The first `count` entries of a kvm_msrs buffer (KVM_GET_MSRS returns how many it read). */
export function decodeMsrs(bytes: Uint8Array, count: number): MsrEntry[] {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  return Array.from({ length: count }, (_, i) => {
    const at = KVM_SIZE.kvm_msrs + i * KVM_SIZE.kvm_msr_entry;
    return { index: view.getUint32(at, true), data: view.getBigUint64(at + 8, true) };
  });
}

/** struct kvm_irqchip for KVM_GET_IRQCHIP: chip_id set, the rest filled by the kernel. */
export function irqchipBuffer(chipId: number): Uint8Array {
  const bytes = new Uint8Array(KVM_SIZE.kvm_irqchip);
  new DataView(bytes.buffer).setUint32(0, chipId, true);
  return bytes;
}

/** struct kvm_irq_level. */
export function encodeIrqLevel(irq: number, level: number): Uint8Array {
  const bytes = new Uint8Array(KVM_SIZE.kvm_irq_level);
  const view = new DataView(bytes.buffer);
  view.setUint32(0, irq, true);
  view.setUint32(4, level, true);
  return bytes;
}

/** struct kvm_pit_config. */
export function encodePitConfig(flags: number): Uint8Array {
  const bytes = new Uint8Array(KVM_SIZE.kvm_pit_config);
  new DataView(bytes.buffer).setUint32(0, flags, true);
  return bytes;
}

/** struct kvm_clock_data: the fields a restore touches. */
export function clockFlagsCleared(bytes: Uint8Array): Uint8Array {
  // KVM_SET_CLOCK with KVM_CLOCK_REALTIME in flags would advance the clock by
  // the wall time spent in the snapshot; the guest resumes where it stopped.
  const copy = bytes.slice();
  new DataView(copy.buffer).setUint32(8, 0, true);
  return copy;
}

export function clockNanoseconds(bytes: Uint8Array): bigint {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength).getBigUint64(0, true);
}

/** struct kvm_mp_state. */
export function decodeMpState(bytes: Uint8Array): number {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength).getUint32(0, true);
}

function viewOf(bytes: Uint8Array, size: number, name: string): DataView {
  if (bytes.byteLength < size) throw new RangeError(`${name} needs ${size} bytes, got ${bytes.byteLength}`);
  return new DataView(bytes.buffer, bytes.byteOffset, size);
}

/**
 * struct kvm_dirty_log { u32 slot; u32 padding; u64 dirty_bitmap (a pointer) }:
 * the kernel writes one bit per page of the slot into the bitmap at that
 * address, which the caller keeps alive across the ioctl.
 */
export function encodeDirtyLog(slot: number, bitmapAddress: number): Uint8Array {
  const bytes = new Uint8Array(KVM_SIZE.kvm_dirty_log);
  const view = new DataView(bytes.buffer);
  view.setUint32(0, slot, true);
  view.setBigUint64(8, BigInt(bitmapAddress), true);
  return bytes;
}

/**
 * struct kvm_clear_dirty_log { u32 slot; u32 num_pages; u64 first_page; u64 dirty_bitmap }:
 * re-protect (and clear from the log) the pages whose bits are set in the
 * bitmap, bit 0 being first_page. first_page must be a multiple of 64.
 */
export function encodeClearDirtyLog(slot: number, firstPage: number, pageCount: number, bitmapAddress: number): Uint8Array {
  const bytes = new Uint8Array(KVM_SIZE.kvm_clear_dirty_log);
  const view = new DataView(bytes.buffer);
  view.setUint32(0, slot, true);
  view.setUint32(4, pageCount, true);
  view.setBigUint64(8, BigInt(firstPage), true);
  view.setBigUint64(16, BigInt(bitmapAddress), true);
  return bytes;
}

/** struct kvm_enable_cap { u32 cap; u32 flags; u64 args[4]; u8 pad[64] }. */
export function encodeEnableCap(cap: number, args: readonly bigint[] = []): Uint8Array {
  const bytes = new Uint8Array(KVM_SIZE.kvm_enable_cap);
  const view = new DataView(bytes.buffer);
  view.setUint32(0, cap, true);
  args.slice(0, 4).forEach((arg, i) => view.setBigUint64(8 + i * 8, arg, true));
  return bytes;
}
