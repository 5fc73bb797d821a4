// What a VM restore needs, wherever it comes from: the VM's saved state and a
// page source over its memory image. A snapshot file, a page server and
// object storage are three ways to supply the same two things (an incoming
// migration a fourth, with some pages present already); the restore
// (restore.ts) does not know which it has.
import type { PageSource } from '../../sources/page-source.js';
import { InvalidVmStateError, RemoteVmRefusedError } from '../errors.js';
import { GuestMemoryUnavailableError } from '../memory/lazy-guest-memory.js';
import { VM_SNAPSHOT_KIND } from './vm-snapshot.js';
import { vmStateFromJson, type VmSavedState } from './vm-state.js';

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

/** Why a network source without VM state cannot be restored, by what serves it. */
const NO_VM_STATE = {
  'page-server': 'it serves no VM state (was it started on a VM snapshot?)',
  'object-store': 'its snapshot has no VM state (was it pushed from a VM snapshot?)',
} as const;

/**
 * A restore source from a network source whose metadata is a VM snapshot's
 * (a page server's, an object's; opened by the caller from its URL): the
 * state parsed and checked by the VM snapshot schema, refused
 * (RemoteVmRefusedError naming the source) when it is missing, not JSON, of
 * another kind or for another memory size. Nothing else is read before the
 * guest runs: each page is checked as it arrives (a page server's against the
 * checksum the snapshot stores for it, an object's chunk against its
 * SHA-256), so there is no verifyAll. The source is closed when it is refused.
 */
export async function vmRestoreSourceFromNetwork(
  memory: PageSource & { readonly metadata: Uint8Array },
  servedBy: keyof typeof NO_VM_STATE,
  startedMs: number,
): Promise<VmRestoreSource> {
  const where = memory.description;
  const { metadata } = memory;
  try {
    if (metadata.byteLength === 0) throw new RemoteVmRefusedError(where, NO_VM_STATE[servedBy]);
    let parsed: unknown;
    try {
      parsed = JSON.parse(Buffer.from(metadata).toString('utf8'));
    } catch (error) {
      throw new RemoteVmRefusedError(where, 'its metadata is not JSON (not a VM snapshot)', { cause: error });
    }
    const kind = typeof parsed === 'object' && parsed !== null ? (parsed as { kind?: unknown }).kind : undefined;
    if (kind !== VM_SNAPSHOT_KIND) throw new RemoteVmRefusedError(where, `its metadata kind is ${JSON.stringify(kind) ?? 'missing'}, not ${VM_SNAPSHOT_KIND}`);
    let state;
    try {
      state = vmStateFromJson((parsed as { state?: unknown }).state);
    } catch (error) {
      if (error instanceof InvalidVmStateError) throw new RemoteVmRefusedError(where, error.message, { cause: error });
      throw error;
    }
    if (memory.sizeBytes !== state.machine.memoryBytes) throw new RemoteVmRefusedError(where, `its image is ${memory.sizeBytes} bytes, the machine has ${state.machine.memoryBytes}`);
    return {
      description: where,
      state,
      memory,
      openMs: performance.now() - startedMs,
      explain: (error) => new GuestMemoryUnavailableError(where, error),
    };
  } catch (error) {
    await memory.close?.();
    throw error;
  }
}
