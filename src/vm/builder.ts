// Assembling a VM (Firecracker's builder.rs): the KVM objects, guest RAM, the
// in-kernel irqchip and PIT, one vCPU per machine vCPU; then either a
// multiboot guest loaded at its entry point (bootVm), or a machine left
// restoring for a live migration to fill (createIncomingVm). A restore from a
// snapshot, a page server or object storage builds here too, and is
// persist/restore.ts's. What is built is a Vmm (vmm.ts), the live object.
import { readFileSync } from 'node:fs';
import { parseMultibootImage, loadMultiboot, multibootEntryState } from './boot/multiboot.js';
import { BUILTIN_GUEST_PATH } from './boot/builtin-guest.js';
import { GuestImageNotFoundError, VmConfigError } from './errors.js';
import { KVM_PIT_SPEAKER_DUMMY, KVM_TSS_ADDRESS, KVM_IDENTITY_MAP_ADDRESS, type KvmCapName } from './kvm/ioctls/constants.js';
import type { CpuidEntry } from './kvm/ioctls/structs.js';
import { KvmSystem } from './kvm/kvm-system.js';
import type { KvmVm } from './kvm/kvm-vm.js';
import { GuestMemory, type GuestMemoryBacking } from './memory/guest-memory.js';
import { machineConfigProblem, type MachineConfig } from './machine-config.js';
import { Vmm } from './vmm.js';

export interface VmConfig {
  /** A multiboot v1 image path, or 'builtin' for the micro guest. */
  image: string;
  memoryBytes: number;
  vcpuCount?: number;
  cmdline?: string;
  backing?: GuestMemoryBacking;
  /** Where the guest's COM1 output goes (default: discarded). */
  console?: (bytes: Uint8Array) => void;
}

/** What the VMM needs from KVM; checked up front so a missing one is named. */
const REQUIRED_CAPS: KvmCapName[] = ['KVM_CAP_IRQCHIP', 'KVM_CAP_PIT2', 'KVM_CAP_USER_MEMORY', 'KVM_CAP_IMMEDIATE_EXIT', 'KVM_CAP_XSAVE', 'KVM_CAP_XCRS', 'KVM_CAP_VCPU_EVENTS', 'KVM_CAP_DEBUGREGS'];

/** Build a VM, load a multiboot image and leave it created (paused at the entry point, never run). */
export async function bootVm(config: VmConfig): Promise<Vmm> {
  const machine: MachineConfig = { memoryBytes: config.memoryBytes, vcpuCount: config.vcpuCount ?? 1, cmdline: config.cmdline ?? '', image: '' };
  const problem = machineConfigProblem(machine);
  if (problem) throw new VmConfigError(problem.field, `is ${machine[problem.field]}; it ${problem.problem}`);
  const imagePath = config.image === 'builtin' ? BUILTIN_GUEST_PATH : config.image;
  machine.image = imagePath;
  let imageBytes: Uint8Array;
  try {
    imageBytes = readFileSync(imagePath);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') throw new GuestImageNotFoundError(imagePath, { cause: error });
    throw error;
  }
  const image = parseMultibootImage(imageBytes, imagePath);
  const vmm = buildVm(machine, config.backing ?? 'anonymous', config.console);
  try {
    const { entry, infoAddress } = loadMultiboot(vmm.memory, image, machine.cmdline);
    await vmm.startVcpus();
    const [bsp] = vmm.vcpus;
    const boot = multibootEntryState(entry, infoAddress, bsp!.vcpu.getSregs());
    for (const handle of vmm.vcpus) {
      const cpuid = cpuidFor(vmm.system, handle.vcpu.id);
      if (handle === bsp) await handle.request({ type: 'set-boot-state', regs: boot.regs, sregs: boot.sregs, cpuid });
      else await handle.request({ type: 'set-boot-state', regs: handle.vcpu.getRegs(), sregs: handle.vcpu.getSregs(), cpuid });
    }
    return vmm;
  } catch (error) {
    await vmm.close();
    throw error;
  }
}

/**
 * Build the machine an incoming live migration describes and start its
 * vCPU workers. The VM is `restoring`: its memory arrives over the
 * migration (pre-copy writes it in place), then its state (persist/restore.ts
 * restoreInto, through vm-migration-kind.ts).
 */
export async function createIncomingVm(machine: MachineConfig, options: { console?: (bytes: Uint8Array) => void; backing?: GuestMemoryBacking } = {}): Promise<Vmm> {
  const vmm = buildVm(machine, options.backing ?? 'anonymous', options.console);
  try {
    vmm.beginRestore();
    await vmm.startVcpus();
    return vmm;
  } catch (error) {
    await vmm.close();
    throw error;
  }
}

/**
 * The KVM objects and guest RAM of `machine`, its vCPUs created (their worker
 * threads not yet started: Vmm.startVcpus). The VM is created; a failure
 * frees whatever was made.
 */
export function buildVm(machine: MachineConfig, backing: GuestMemoryBacking, console?: (bytes: Uint8Array) => void): Vmm {
  const problem = machineConfigProblem(machine);
  if (problem) throw new VmConfigError(problem.field, `is ${machine[problem.field]}; it ${problem.problem}`);
  const system = KvmSystem.open();
  let vm: KvmVm | undefined;
  let memory: GuestMemory | undefined;
  try {
    system.requireExtensions(REQUIRED_CAPS);
    vm = system.createVm();
    // Intel VMX needs these pages for real-mode emulation; harmless elsewhere.
    vm.setTssAddress(KVM_TSS_ADDRESS);
    vm.setIdentityMapAddress(KVM_IDENTITY_MAP_ADDRESS);
    vm.createIrqchip();
    vm.createPit2(KVM_PIT_SPEAKER_DUMMY);
    memory = GuestMemory.create(machine.memoryBytes, backing);
    for (const region of memory.regions) vm.setUserMemoryRegion(region);
    const vmm = new Vmm(system, vm, memory, machine, console ?? (() => {}));
    for (let id = 0; id < machine.vcpuCount; id++) vm.createVcpu(id);
    return vmm;
  } catch (error) {
    vm?.close();
    memory?.unmap();
    system.close();
    throw error;
  }
}

/** CPUID for one vCPU: what KVM supports, with this vCPU's APIC ID. */
function cpuidFor(system: KvmSystem, id: number): CpuidEntry[] {
  return system.supportedCpuid().map((e) => {
    if (e.function === 1) return { ...e, ebx: ((e.ebx & 0x00ffffff) | (id << 24)) >>> 0 };
    if (e.function === 0xb || e.function === 0x1f) return { ...e, edx: id };
    return e;
  });
}
