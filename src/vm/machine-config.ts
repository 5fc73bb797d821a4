// The machine a VM is built as, and what this VMM can build: checked in one
// place for a boot's options (src/cli/vm-commands.ts names them --mem and
// --cpus), a snapshot's saved machine (persist/vm-state.ts) and the builder (builder.ts buildVm).
// Pure: no KVM, no addon.

/** How the VM was built: a restore builds the same machine before loading state. */
export interface MachineConfig {
  memoryBytes: number;
  vcpuCount: number;
  cmdline: string;
  image: string;
}

/** Guest RAM is whole 4 KiB pages (KVM memory slots are page-granular). */
export const GUEST_PAGE_BYTES = 4096;
/** One memory slot from guest physical 0, below the 32-bit PCI hole; more needs a second slot above 4 GiB (not built). */
export const MAX_GUEST_MEMORY_BYTES = 3 * 2 ** 30;
/** xAPIC ids are 8 bits and 0xff is the broadcast id: vCPU ids 0..254. */
export const MAX_VCPUS = 255;

export interface MachineConfigProblem {
  field: 'memoryBytes' | 'vcpuCount';
  problem: string;
}

/** The first thing wrong with `machine`'s memory or vCPU count (`problem` says what the value must be), or undefined. */
export function machineConfigProblem(machine: Pick<MachineConfig, 'memoryBytes' | 'vcpuCount'>): MachineConfigProblem | undefined {
  const { memoryBytes, vcpuCount } = machine;
  if (!Number.isSafeInteger(memoryBytes) || memoryBytes <= 0) return { field: 'memoryBytes', problem: 'must be a positive number of bytes' };
  if (memoryBytes % GUEST_PAGE_BYTES !== 0) return { field: 'memoryBytes', problem: `must be a multiple of ${GUEST_PAGE_BYTES} bytes` };
  if (memoryBytes > MAX_GUEST_MEMORY_BYTES) return { field: 'memoryBytes', problem: `must be at most 3 GiB (${MAX_GUEST_MEMORY_BYTES} bytes), all this VMM builds` };
  if (!Number.isSafeInteger(vcpuCount) || vcpuCount < 1) return { field: 'vcpuCount', problem: 'must be at least 1: a VM needs a vCPU' };
  if (vcpuCount > MAX_VCPUS) return { field: 'vcpuCount', problem: `must be at most ${MAX_VCPUS}, all this VMM builds` };
  return undefined;
}
