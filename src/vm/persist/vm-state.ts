// The saved state of a paused VM, apart from guest memory: every vCPU's KVM
// state, the in-kernel irqchip, PIT and clock, and each device's own state
// (devices/board.ts; each device's model checks its part). JSON-able
// (kernel structs as base64, 64-bit values as hex strings), so it can live in
// the snapshot's metadata section whatever container holds the memory.
//
// vmStateFromJson is the schema: a snapshot is read by untrusted-input rules.
// Every field is checked (type, range, size of every kernel struct against
// SAVED_STRUCTS, ids, counts) before anything is built from it, and the first
// problem is an InvalidVmStateError naming the field's path, so nothing
// malformed gets as far as KVM or a TypeError.
import { devicesFromJson, devicesFromLegacyUart, devicesToJson } from '../devices/board.js';
import type { SavedDevice } from '../devices/device.js';
import { InvalidVmStateError } from '../errors.js';
import { KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE } from '../kvm/ioctls/constants.js';
import { savedStructProblem, type CpuidEntry, type MsrEntry, type SavedStructName } from '../kvm/ioctls/structs.js';
import type { VcpuState } from '../kvm/kvm-vcpu.js';
import type { IrqchipState } from '../kvm/kvm-vm.js';
import { machineConfigProblem, type MachineConfig } from '../machine-config.js';
import { array, base64, describe, field, integer, object, string, uint32 } from './schema.js';

export type { MachineConfig };

/**
 * 3: devices as a list of {id, kind, state}. 2 and 1 carried the UART alone
 * as `uart` (1 with its queued input as an array of numbers); both still read.
 */
export const VM_STATE_VERSION = 3;
const READABLE_VERSIONS = [1, 2, 3];

/** KVM takes at most this many CPUID entries (KVM_MAX_CPUID_ENTRIES) ... */
const MAX_CPUID_ENTRIES = 256;
/** ... and fewer than this many MSRs in one KVM_SET_MSRS (MAX_IO_MSRS). */
const MAX_MSRS = 255;
const MAX_CMDLINE_CHARS = 4096;
const MAX_IMAGE_PATH_CHARS = 4096;

export interface VmSavedState {
  machine: MachineConfig;
  vcpus: VcpuState[];
  irqchip: IrqchipState;
  pit2: Uint8Array;
  clock: Uint8Array;
  /** Each device's saved state (an empty list: devices keep their power-on state). */
  devices: SavedDevice[];
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
  devices: unknown[];
}

const b64 = (bytes: Uint8Array): string => Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('base64');
const BLOBS = ['mpState', 'regs', 'sregs', 'fpu', 'xsave', 'xcrs', 'debugregs', 'lapic', 'events'] as const satisfies readonly SavedStructName[];
const CPUID_FIELDS = ['function', 'index', 'flags', 'eax', 'ebx', 'ecx', 'edx'] as const;

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
    devices: devicesToJson(state.devices),
  };
}

/** Check the whole state against the schema and build it; InvalidVmStateError names the first bad field. */
export function vmStateFromJson(json: unknown): VmSavedState {
  const root = object(json, '');
  const version = field(root, 'version');
  if (typeof version !== 'number' || !READABLE_VERSIONS.includes(version)) {
    throw new InvalidVmStateError('version', `is ${describe(version)}; this build reads ${READABLE_VERSIONS.join(' and ')}`);
  }
  const machine = machineConfigFromJson(field(root, 'machine'));
  const vcpusJson = array(field(root, 'vcpus'), 'vcpus');
  if (vcpusJson.length !== machine.vcpuCount) throw new InvalidVmStateError('vcpus', `holds ${vcpusJson.length} vCPUs, machine.vcpuCount is ${machine.vcpuCount}`);
  const seen = new Set<number>();
  const vcpus = vcpusJson.map((v, i) => {
    const vcpu = readVcpu(v, `vcpus[${i}]`, machine.vcpuCount);
    if (seen.has(vcpu.id)) throw new InvalidVmStateError(`vcpus[${i}].id`, `is ${vcpu.id}, which an earlier vCPU has too`);
    seen.add(vcpu.id);
    return vcpu;
  });
  const irqchipJson = object(field(root, 'irqchip'), 'irqchip');
  const chip = (name: 'picMaster' | 'picSlave' | 'ioapic', chipId: number): Uint8Array => {
    const bytes = blob(field(irqchipJson, name), `irqchip.${name}`, 'irqchip');
    // KVM_SET_IRQCHIP takes the chip from the struct's chip_id: a blob under the wrong name would load into the wrong chip.
    const id = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength).getUint32(0, true);
    if (id !== chipId) throw new InvalidVmStateError(`irqchip.${name}`, `has chip_id ${id}, want ${chipId}`);
    return bytes;
  };
  const irqchip = { picMaster: chip('picMaster', KVM_IRQCHIP_PIC_MASTER), picSlave: chip('picSlave', KVM_IRQCHIP_PIC_SLAVE), ioapic: chip('ioapic', KVM_IRQCHIP_IOAPIC) };
  const pit2 = blob(field(root, 'pit2'), 'pit2', 'pit2');
  const clock = blob(field(root, 'clock'), 'clock', 'clock');
  const devices = version >= 3 ? devicesFromJson(field(root, 'devices')) : devicesFromLegacyUart(field(root, 'uart'), version);
  return { machine, vcpus, irqchip, pit2, clock, devices };
}

/** The machine config a VM state (or a migration's BEGIN) carries, checked; InvalidVmStateError names the bad field. */
export function machineConfigFromJson(value: unknown): MachineConfig {
  const m = object(value, 'machine');
  const memoryBytes = integer(field(m, 'memoryBytes'), 'machine.memoryBytes');
  const vcpuCount = integer(field(m, 'vcpuCount'), 'machine.vcpuCount');
  const cmdline = string(field(m, 'cmdline'), 'machine.cmdline', MAX_CMDLINE_CHARS);
  const image = string(field(m, 'image'), 'machine.image', MAX_IMAGE_PATH_CHARS);
  const machine = { memoryBytes, vcpuCount, cmdline, image };
  const problem = machineConfigProblem(machine);
  if (problem) throw new InvalidVmStateError(`machine.${problem.field}`, `is ${machine[problem.field]}; it ${problem.problem}`);
  return machine;
}

function readVcpu(value: unknown, path: string, vcpuCount: number): VcpuState {
  const v = object(value, path);
  const id = integer(field(v, 'id'), `${path}.id`);
  if (id < 0 || id >= vcpuCount) throw new InvalidVmStateError(`${path}.id`, `is ${id}; vCPU ids run from 0 to ${vcpuCount - 1}`);
  const cpuidJson = array(field(v, 'cpuid'), `${path}.cpuid`);
  if (cpuidJson.length > MAX_CPUID_ENTRIES) throw new InvalidVmStateError(`${path}.cpuid`, `has ${cpuidJson.length} entries; KVM takes at most ${MAX_CPUID_ENTRIES}`);
  const cpuid = cpuidJson.map((e, i) => {
    const entryPath = `${path}.cpuid[${i}]`;
    const entry = object(e, entryPath);
    const out = {} as CpuidEntry;
    for (const name of CPUID_FIELDS) out[name] = uint32(field(entry, name), `${entryPath}.${name}`);
    return out;
  });
  const msrsJson = array(field(v, 'msrs'), `${path}.msrs`);
  if (msrsJson.length > MAX_MSRS) throw new InvalidVmStateError(`${path}.msrs`, `has ${msrsJson.length} entries; KVM takes at most ${MAX_MSRS} at once`);
  const msrs = msrsJson.map((m, i) => {
    const msrPath = `${path}.msrs[${i}]`;
    const msr = object(m, msrPath);
    const index = uint32(field(msr, 'index'), `${msrPath}.index`);
    const data = field(msr, 'data');
    if (typeof data !== 'string' || !/^[0-9a-f]{1,16}$/i.test(data)) throw new InvalidVmStateError(`${msrPath}.data`, `is ${describe(data)}, not 1 to 16 hex digits`);
    return { index, data: BigInt(`0x${data}`) };
  });
  const out = { id, cpuid, msrs } as VcpuState;
  for (const key of BLOBS) out[key] = blob(field(v, key), `${path}.${key}`, key);
  return out;
}

// ---- kernel structs ----

/** A kernel struct in base64, its length checked against SAVED_STRUCTS. */
function blob(value: unknown, path: string, struct: SavedStructName): Uint8Array {
  const bytes = base64(value, path, Math.ceil((128 * 1024) / 3) * 4);
  const problem = savedStructProblem(struct, bytes.byteLength);
  if (problem !== undefined) throw new InvalidVmStateError(path, problem);
  return bytes;
}
