// The KVM micro-VM as a machine a live migration moves (vm/migratable.ts):
// its description is a MachineConfig, its state a VmSavedState, both checked
// by the VM state's own schema before anything is built; the destination
// builds a Vmm (builder.ts createIncomingVm) and, at the switchover, restores
// into it like any other restore (persist/restore.ts restoreInto): the pages
// pre-copy wrote are present, the others (post-copy) come from the
// migration's page source.
import type { IncomingMachine, MigratableMachineKind } from './migratable.js';
import { InvalidVmStateError } from './errors.js';
import { createIncomingVm } from './builder.js';
import { restoreInto } from './persist/restore.js';
import { machineConfigFromJson, vmStateFromJson, type MachineConfig, type VmSavedState } from './persist/vm-state.js';
import type { Vmm } from './vmm.js';

/** A Vmm as the machine an incoming migration fills; `vmm` is the VM once it runs. */
export interface IncomingVm extends IncomingMachine {
  readonly vmm: Vmm;
}

export function vmMigrationKind(options: { console?: (bytes: Uint8Array) => void } = {}): MigratableMachineKind<MachineConfig, VmSavedState, IncomingVm> {
  return {
    parseMachine: (json) => machineConfigFromJson(json),
    parseState(json, machine) {
      const state = vmStateFromJson(json);
      if (state.machine.memoryBytes !== machine.memoryBytes || state.machine.vcpuCount !== machine.vcpuCount) {
        throw new InvalidVmStateError('machine', 'the VM state is for another machine than the one described');
      }
      return state;
    },
    createIncoming: async (machine) => incomingVm(await createIncomingVm(machine, { console: options.console })),
  };
}

function incomingVm(vmm: Vmm): IncomingVm {
  return {
    vmm,
    memory: vmm.memory,
    // The switchover: pages still to come (post-copy) are served by a pager from `lazy.source`, those already here are present;
    // the saved state is loaded and the VM is paused, ready to resume.
    completeIncoming: (state, from, lazy) => restoreInto(vmm, { description: from, state: state as VmSavedState, memory: lazy?.source, presentPages: lazy?.presentPages }, {
      lazy: { prefetch: false },
      startedMs: performance.now(),
      timings: { openedMs: 0, builtMs: 0 },
    }),
    resume: () => vmm.resume(),
    completeMemory: () => vmm.completeMemory(),
    pagePresent: () => vmm.pagePresent(),
    // Each guest fault's wait for its page (post-copy), while a pager serves guest RAM.
    faultLatency: () => vmm.lazyMemoryReport()?.metrics.latencyMicros,
    close: () => vmm.close(),
  };
}
