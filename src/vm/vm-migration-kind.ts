// The KVM micro-VM as a machine a live migration moves (vm/migratable.ts):
// its description is a MachineConfig, its state a VmSavedState, both checked
// by the VM state's own schema before anything is built; the destination
// builds a Vmm.
import type { MigratableMachineKind } from './migratable.js';
import { InvalidVmStateError } from './errors.js';
import { machineConfigFromJson, vmStateFromJson, type MachineConfig, type VmSavedState } from './persist/vm-state.js';
import { Vmm } from './vmm.js';

export function vmMigrationKind(options: { console?: (bytes: Uint8Array) => void } = {}): MigratableMachineKind<MachineConfig, VmSavedState, Vmm> {
  return {
    parseMachine: (json) => machineConfigFromJson(json),
    parseState(json, machine) {
      const state = vmStateFromJson(json);
      if (state.machine.memoryBytes !== machine.memoryBytes || state.machine.vcpuCount !== machine.vcpuCount) {
        throw new InvalidVmStateError('machine', 'the VM state is for another machine than the one described');
      }
      return state;
    },
    createIncoming: (machine) => Vmm.createIncoming(machine, { console: options.console }),
  };
}
