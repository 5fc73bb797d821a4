// A VM state that passes the schema without a VM behind it (every kernel
// struct zeroed at its size), and snapshot files made from it with any
// change a test wants — for refusals that must happen before KVM is asked.
import { writeSnapshot } from '../../src/snapshot/index.js';
import { KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE } from '../../src/vm/kvm/ioctls/constants.js';
import { irqchipBuffer, SAVED_STRUCTS } from '../../src/vm/kvm/ioctls/structs.js';
import type { VcpuState } from '../../src/vm/kvm/kvm-vcpu.js';
import { VM_SNAPSHOT_KIND } from '../../src/vm/persist/vm-snapshot.js';
import { vmStateToJson, type VmSavedState } from '../../src/vm/persist/vm-state.js';

export const FIXTURE_MEMORY_BYTES = 16 << 20;

const zeroed = (name: keyof typeof SAVED_STRUCTS): Uint8Array => new Uint8Array(SAVED_STRUCTS[name].bytes);

/** Two vCPUs, an irqchip with the right chip ids, a UART with three bytes queued. */
export function validVmState(): VmSavedState {
  const vcpu = (id: number): VcpuState => ({
    id,
    cpuid: [{ function: 0, index: 0, flags: 0, eax: 0xd, ebx: 0x756e6547, ecx: 0x6c65746e, edx: 0x49656e69 }],
    msrs: [{ index: 0x10, data: 0x1234n }, { index: 0xc0000080, data: 0xffffffffffffffffn }],
    mpState: zeroed('mpState'), regs: zeroed('regs'), sregs: zeroed('sregs'), fpu: zeroed('fpu'), xsave: zeroed('xsave'),
    xcrs: zeroed('xcrs'), debugregs: zeroed('debugregs'), lapic: zeroed('lapic'), events: zeroed('events'),
  });
  return {
    machine: { memoryBytes: FIXTURE_MEMORY_BYTES, vcpuCount: 2, cmdline: 'workload=idle', image: 'builtin' },
    vcpus: [vcpu(0), vcpu(1)],
    irqchip: { picMaster: irqchipBuffer(KVM_IRQCHIP_PIC_MASTER), picSlave: irqchipBuffer(KVM_IRQCHIP_PIC_SLAVE), ioapic: irqchipBuffer(KVM_IRQCHIP_IOAPIC) },
    pit2: zeroed('pit2'),
    clock: zeroed('clock'),
    devices: [
      { id: 'com1', kind: 'uart16550', state: { dll: 1, dlm: 0, ier: 0, lcr: 3, mcr: 8, fcr: 0, scr: 0, lsrErrors: 0, thrEmptyPending: false, rx: Uint8Array.of(1, 2, 3) } },
      { id: 'debug-exit', kind: 'debug-exit', state: null },
    ],
  };
}

/**
 * A VM snapshot of FIXTURE_MEMORY_BYTES of zero RAM whose state is the valid
 * one changed by `change` (which may return a replacement); `metadata`
 * replaces the whole metadata text instead.
 */
export async function writeVmStateSnapshot(path: string, change: (json: any) => unknown, options: { metadata?: string } = {}): Promise<void> { // eslint-disable-line @typescript-eslint/no-explicit-any
  const json = JSON.parse(JSON.stringify(vmStateToJson(validVmState()))) as unknown;
  const replaced = change(json);
  const state = replaced === undefined ? json : replaced;
  const metadata = options.metadata ?? JSON.stringify({ kind: VM_SNAPSHOT_KIND, state });
  await writeSnapshot(path, {
    regions: [{ imageOffset: 0, lengthBytes: FIXTURE_MEMORY_BYTES, guestPhysAddress: 0, name: 'ram0' }],
    imageSizeBytes: FIXTURE_MEMORY_BYTES,
    content: new Uint8Array(FIXTURE_MEMORY_BYTES),
    metadata: Buffer.from(metadata, 'utf8'),
  });
}

/** The UART as VM state versions 1 and 2 carried it, alone, under `uart` (version 2: queued input in base64). */
export function legacyUartJson(): Record<string, unknown> {
  return { dll: 1, dlm: 0, ier: 0, lcr: 3, mcr: 8, fcr: 0, scr: 0, lsrErrors: 0, thrEmptyPending: false, rx: 'AQID' };
}
