// A VM snapshot in the project's snapshot format (src/snapshot/): guest RAM as
// the image (one snapshot region per KVM memory slot; zero pages not stored,
// every stored page CRC-checked on read) and the VM state JSON (vm-state.ts)
// in the metadata section, tagged so another kind of snapshot is refused.
import { SnapshotError, SnapshotFile, writeSnapshot, type SnapshotWriteSummary } from '../../snapshot/index.js';
import { InvalidVmSnapshotError } from '../errors.js';
import type { GuestMemory } from '../memory/guest-memory.js';
import { vmStateFromJson, vmStateToJson, type VmSavedState } from './vm-state.js';

/** metadata.kind of a VM snapshot. */
export const VM_SNAPSHOT_KIND = 'userfault-vm';

export async function writeVmSnapshot(path: string, state: VmSavedState, memory: GuestMemory): Promise<SnapshotWriteSummary> {
  const metadata = Buffer.from(JSON.stringify({ kind: VM_SNAPSHOT_KIND, state: vmStateToJson(state) }), 'utf8');
  return writeSnapshot(path, {
    regions: memory.regions.map((r) => ({ imageOffset: r.imageOffset, lengthBytes: r.lengthBytes, guestPhysAddress: r.guestPhysAddress, name: `ram${r.slot}` })),
    imageSizeBytes: memory.lengthBytes,
    content: memory.image(),
    metadata,
  });
}

/** An opened VM snapshot: the file (its tables checked) and the VM state parsed from its metadata. */
export interface OpenedVmSnapshot {
  file: SnapshotFile;
  state: VmSavedState;
}

/** Open and check a VM snapshot; every problem is an InvalidVmSnapshotError (with the format's error as cause). */
export async function openVmSnapshot(path: string): Promise<OpenedVmSnapshot> {
  let file: SnapshotFile;
  try {
    file = await SnapshotFile.open(path);
  } catch (error) {
    throw invalid(path, error);
  }
  try {
    let parsed: { kind?: string; state?: unknown };
    try {
      parsed = JSON.parse(Buffer.from(file.metadata).toString('utf8')) as typeof parsed;
    } catch {
      throw new InvalidVmSnapshotError(path, 'its metadata is not JSON (not a VM snapshot)');
    }
    if (parsed.kind !== VM_SNAPSHOT_KIND) throw new InvalidVmSnapshotError(path, `its metadata kind is ${JSON.stringify(parsed.kind)}, not ${VM_SNAPSHOT_KIND}`);
    let state: VmSavedState;
    try {
      state = vmStateFromJson(parsed.state);
    } catch (error) {
      throw new InvalidVmSnapshotError(path, (error as Error).message);
    }
    if (file.imageSizeBytes !== state.machine.memoryBytes) {
      throw new InvalidVmSnapshotError(path, `its image is ${file.imageSizeBytes} bytes, the machine has ${state.machine.memoryBytes}`);
    }
    return { file, state };
  } catch (error) {
    await file.close();
    throw error;
  }
}

/** Eager restore: every page into guest memory now, each stored page's CRC checked. */
export async function readVmMemory(path: string, file: SnapshotFile, memory: GuestMemory): Promise<void> {
  try {
    await file.readPages(0, memory.lengthBytes, memory.image());
  } catch (error) {
    throw invalid(path, error);
  }
}

function invalid(path: string, error: unknown): Error {
  if (error instanceof SnapshotError) {
    const e = new InvalidVmSnapshotError(path, `${error.message} [${error.code}]`);
    (e as { cause?: unknown }).cause = error;
    return e;
  }
  if ((error as NodeJS.ErrnoException).code === 'ENOENT') return new InvalidVmSnapshotError(path, 'no such file');
  return error as Error;
}
