// The saved state of a paused VM, apart from guest memory: every vCPU's KVM
// state, the in-kernel irqchip, PIT and clock, and the UART. JSON-able
// (kernel structs as base64, 64-bit values as hex strings), so it can live in
// the snapshot's metadata section whatever container holds the memory.
import type { UartState } from '../devices/serial/uart16550.js';
import type { CpuidEntry, MsrEntry } from '../kvm/ioctls/structs.js';
import type { VcpuState } from '../kvm/kvm-vcpu.js';
import type { IrqchipState } from '../kvm/kvm-vm.js';

export const VM_STATE_VERSION = 1;

/** How the VM was built: a restore builds the same machine before loading state. */
export interface MachineConfig {
  memoryBytes: number;
  vcpuCount: number;
  cmdline: string;
  image: string;
}

export interface VmSavedState {
  machine: MachineConfig;
  vcpus: VcpuState[];
  irqchip: IrqchipState;
  pit2: Uint8Array;
  clock: Uint8Array;
  uart: UartState | undefined;
}

interface VcpuStateJson {
  id: number;
  cpuid: CpuidEntry[];
  mpState: string; regs: string; sregs: string; fpu: string; xsave: string;
  xcrs: string; debugregs: string; lapic: string; events: string;
  msrs: { index: number; data: string }[];
}

export interface VmStateJson {
  version: number;
  machine: MachineConfig;
  vcpus: VcpuStateJson[];
  irqchip: { picMaster: string; picSlave: string; ioapic: string };
  pit2: string;
  clock: string;
  uart: UartState | null;
}

const b64 = (bytes: Uint8Array): string => Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('base64');
const unb64 = (text: string): Uint8Array => new Uint8Array(Buffer.from(text, 'base64'));
const BLOBS = ['mpState', 'regs', 'sregs', 'fpu', 'xsave', 'xcrs', 'debugregs', 'lapic', 'events'] as const;

export function vmStateToJson(state: VmSavedState): VmStateJson {
  return {
    version: VM_STATE_VERSION,
    machine: state.machine,
    vcpus: state.vcpus.map((v) => {
      const out = { id: v.id, cpuid: v.cpuid, msrs: v.msrs.map((m: MsrEntry) => ({ index: m.index, data: m.data.toString(16) })) } as VcpuStateJson;
      for (const key of BLOBS) out[key] = b64(v[key]);
      return out;
    }),
    irqchip: { picMaster: b64(state.irqchip.picMaster), picSlave: b64(state.irqchip.picSlave), ioapic: b64(state.irqchip.ioapic) },
    pit2: b64(state.pit2),
    clock: b64(state.clock),
    uart: state.uart ?? null,
  };
}

/** Parse and check the shape; throws a message naming the first bad field. */
export function vmStateFromJson(json: unknown): VmSavedState {
  const j = json as VmStateJson;
  const need = (ok: boolean, field: string): void => {
    if (!ok) throw new TypeError(`VM state: ${field} is missing or malformed`);
  };
  need(typeof j === 'object' && j !== null, 'the state object');
  need(j.version === VM_STATE_VERSION, `version (want ${VM_STATE_VERSION}, have ${String(j.version)})`);
  need(typeof j.machine?.memoryBytes === 'number' && typeof j.machine?.vcpuCount === 'number', 'machine');
  need(Array.isArray(j.vcpus) && j.vcpus.length === j.machine.vcpuCount, 'vcpus');
  const vcpus = j.vcpus.map((v, i) => {
    for (const key of BLOBS) need(typeof v[key] === 'string', `vcpus[${i}].${key}`);
    need(Array.isArray(v.msrs) && Array.isArray(v.cpuid), `vcpus[${i}].msrs/cpuid`);
    const out = { id: v.id, cpuid: v.cpuid, msrs: v.msrs.map((m) => ({ index: m.index, data: BigInt('0x' + m.data) })) } as VcpuState;
    for (const key of BLOBS) out[key] = unb64(v[key]);
    return out;
  });
  need(typeof j.irqchip?.picMaster === 'string' && typeof j.pit2 === 'string' && typeof j.clock === 'string', 'irqchip/pit2/clock');
  return {
    machine: j.machine,
    vcpus,
    irqchip: { picMaster: unb64(j.irqchip.picMaster), picSlave: unb64(j.irqchip.picSlave), ioapic: unb64(j.irqchip.ioapic) },
    pit2: unb64(j.pit2),
    clock: unb64(j.clock),
    uart: j.uart ?? undefined,
  };
}
