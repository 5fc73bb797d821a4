// What a VM restore needs, wherever it comes from: the VM's saved state and a
// page source over its memory image. A snapshot file, a page server and (next)
// a migration stream are three ways to supply the same two things; the VMM
// does not know which it has.
import type { PageSource } from '../../sources/page-source.js';
import type { VmSavedState } from './vm-state.js';

export interface VmRestoreSource {
  /** Where it comes from, for messages ("snapshot /tmp/vm.snap", "page server tcp://127.0.0.1:7000"). */
  readonly description: string;
  readonly state: VmSavedState;
  /** The guest memory image (its length is state.machine.memoryBytes). The restore owns it from here on and closes it. */
  readonly memory: PageSource;
  /** ms it took to open the source and check its state, for the restore's timings. */
  readonly openMs: number;
  /**
   * Check every stored page before the guest runs, where the source can do
   * that without copying (a snapshot file: its CRCs); throws naming the first
   * bad page. Absent: pages are checked as they are read (a page server's
   * frames carry a CRC, checked on receipt).
   */
  verifyAll?(): Promise<void>;
  /** The error to report for a failed read of guest memory (a snapshot says which page of which file is corrupt). */
  explain(error: Error): Error;
}
