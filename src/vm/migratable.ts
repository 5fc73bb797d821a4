// What a live migration needs of a machine, declared here so that a machine
// offers it without knowing anything of migration (src/migrate/ uses these
// interfaces; nothing in src/vm/ imports src/migrate/ for them). The KVM
// micro-VM is one such machine (vmm.ts, vm-migration-kind.ts); any other
// machine whose memory is a GuestMemory and whose state is JSON can be
// migrated the same way. Who drives a migration is the host's affair
// (src/vmm-host/): the machine offers these views and is told how it ended.
//
// Two sides:
//   MigrationSourceMachine  the running machine: its RAM, a dirty log, pause and resume,
//                           its state saved as JSON
//   MigratableMachineKind   how the destination checks the machine and state a source
//                           describes (a hostile source is refused before anything is built)
//                           and builds an IncomingMachine that loads them and runs
import type { LatencySummary } from '../stats/latency-histogram.js';
import type { PageSource } from '../sources/page-source.js';
import type { GuestMemory } from './memory/guest-memory.js';
import type { PageBits } from '../pager/index.js';

/** The running machine, on the source. */
export interface MigrationSourceMachine {
  readonly memory: GuestMemory;
  /** What the destination builds: JSON its kind's parseMachine() checks. */
  describe(): unknown;
  /** Start tracking writes to guest RAM (every page counts as written until the first collect). */
  startDirtyLog(): void;
  /** OR the pages written since the last collect into `bitmap` (bit p, LSB first: page p), and re-arm them. */
  collectDirtyPages(bitmap: Uint8Array): void;
  stopDirtyLog(): void;
  /** Out of the guest (its memory no longer changes); resolves once every vCPU is out. */
  pauseVcpus(): Promise<void>;
  /** Back to where it was before the migration (running if it ran). */
  resumeVcpus(): Promise<void>;
  /** The machine's state while paused: JSON its kind's parseState() checks. */
  saveState(): Promise<unknown>;
}

/**
 * How an outgoing migration ended, for the machine it was to move (the
 * migration's owner tells the machine: Vmm.endMigration).
 */
export type MigrationEnd =
  /** The guest runs on the destination now: this machine stops. */
  | { type: 'moved'; to: string }
  /** Failed or cancelled while the guest was still this machine's: it is as it was (running again if it ran). */
  | { type: 'kept' }
  /** Stopped by the operator while paused, the guest still this machine's: not resumed (the machine is being stopped). */
  | { type: 'stopped' }
  /** Failed once the guest is (or may be) the destination's: this machine stays migrating, keeping its memory. */
  | { type: 'left' };

/** Pages still to come after the switchover (post-copy): served by a pager from `source`. */
export interface IncomingLazyMemory {
  source: PageSource;
  /** Pages already in guest RAM (pre-copy put them there): never faulted for. */
  presentPages: PageBits;
}

/** The machine the destination builds: RAM first (pre-copy writes it in place), then its state, then it runs. */
export interface IncomingMachine {
  readonly memory: GuestMemory;
  /** Load the state (and register RAM for the pages still to come, `lazy`): paused, ready to resume. */
  completeIncoming(state: unknown, from: string, lazy?: IncomingLazyMemory): Promise<void>;
  /** Run the guest. */
  resume(): Promise<unknown>;
  /** Resolves once every page is in guest RAM (the pager detached). */
  completeMemory(): Promise<void>;
  /** Whether a page is in guest RAM now. */
  pagePresent(): (page: number) => boolean;
  /** Each guest fault's latency so far (post-copy), if a pager serves it. */
  faultLatency(): LatencySummary | undefined;
  /** Stop it and free everything. */
  close(): Promise<void>;
}

/** How a destination checks and builds one kind of machine. */
export interface MigratableMachineKind<Machine extends { memoryBytes: number } = { memoryBytes: number }, State = unknown, Built extends IncomingMachine = IncomingMachine> {
  /** A machine description from the source, checked; throws (typed) what is wrong with it. */
  parseMachine(json: unknown): Machine;
  /** A state from the source, checked against the machine it is for; throws what is wrong. */
  parseState(json: unknown, machine: Machine): State;
  /** Build the machine (nothing runs yet). */
  createIncoming(machine: Machine): Promise<Built>;
}
