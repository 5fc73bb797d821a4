// A VM snapshot in the project's snapshot format (src/snapshot/): guest RAM as
// the image (one snapshot region per KVM memory slot; zero pages not stored,
// every stored page CRC-checked on read) and the VM state JSON (vm-state.ts)
// in the metadata section, tagged so another kind of snapshot is refused.
import { lstatSync, statSync } from 'node:fs';
import { dirname } from 'node:path';
import { SnapshotError, SnapshotFile, writeSnapshot, type SnapshotWriteSummary } from '../../snapshot/index.js';
import { InvalidVmSnapshotError, InvalidVmStateError, SnapshotPathError, VmSnapshotNotFoundError } from '../errors.js';
import type { GuestMemory } from '../memory/guest-memory.js';
import { SnapshotSource } from '../../sources/snapshot-source.js';
import { SnapshotCorruptError, SnapshotNotFoundError } from '../../snapshot/errors.js';
import { pageChecksumName } from '../../snapshot/format.js';
import type { VmRestoreSource } from './restore-source.js';
import { vmStateFromJson, vmStateToJson, type VmSavedState } from './vm-state.js';

/** metadata.kind of a VM snapshot. */
export const VM_SNAPSHOT_KIND = 'userfault-vm';

/**
 * Refuse a snapshot path that is not somewhere a snapshot may go, before the
 * VM is paused for it: its directory must exist, and whatever is at the path
 * must be a regular file. The writer renames its temporary file over the
 * path, which would replace anything — a device node (/dev/full became a
 * regular file), a socket, a symbolic link — so only a regular file may be
 * replaced. Errors name the path as given.
 */
export function checkSnapshotPath(path: string): void {
  const directory = dirname(path);
  let directoryStat;
  try {
    directoryStat = statSync(directory);
  } catch (error) {
    throw new SnapshotPathError(path, `its directory ${directory} does not exist`, { cause: error });
  }
  if (!directoryStat.isDirectory()) throw new SnapshotPathError(path, `${directory} is not a directory`);
  let existing;
  try {
    existing = lstatSync(path);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw new SnapshotPathError(path, describeErrno(error), { cause: error });
  }
  if (!existing.isFile()) throw new SnapshotPathError(path, `it is ${fileKind(existing)}; only a regular file is replaced`);
}

function fileKind(stat: ReturnType<typeof lstatSync> & object): string {
  if (stat.isDirectory()) return 'a directory';
  if (stat.isCharacterDevice()) return 'a character device';
  if (stat.isBlockDevice()) return 'a block device';
  if (stat.isSymbolicLink()) return 'a symbolic link';
  if (stat.isSocket()) return 'a socket';
  if (stat.isFIFO()) return 'a FIFO';
  return 'not a regular file';
}

function describeErrno(error: unknown): string {
  const code = (error as NodeJS.ErrnoException).code;
  switch (code) {
    case 'EACCES':
    case 'EPERM':
      return 'permission denied';
    case 'EROFS':
      return 'the file system is read-only';
    case 'ENOSPC':
      return 'no space left on the device';
    case 'EDQUOT':
      return 'the disk quota is exhausted';
    case 'ENOTDIR':
      return 'a component of the path is not a directory';
    case 'ENOENT':
      return 'no file can be created there';
    case 'ENAMETOOLONG':
      return 'the name is too long';
    default:
      return code ?? (error as Error).message;
  }
}

/**
 * Write the snapshot (checkSnapshotPath first). A failure of the file system
 * is a SnapshotPathError naming `path`, not the writer's temporary file.
 */
export async function writeVmSnapshot(path: string, state: VmSavedState, memory: GuestMemory, onProgress?: (writtenBytes: number, totalBytes: number) => void): Promise<SnapshotWriteSummary> {
  checkSnapshotPath(path);
  const metadata = Buffer.from(JSON.stringify({ kind: VM_SNAPSHOT_KIND, state: vmStateToJson(state) }), 'utf8');
  try {
    return await writeSnapshot(path, {
      regions: memory.regions.map((r) => ({ imageOffset: r.imageOffset, lengthBytes: r.lengthBytes, guestPhysAddress: r.guestPhysAddress, name: `ram${r.slot}` })),
      imageSizeBytes: memory.lengthBytes,
      content: memory.image(),
      metadata,
      onProgress,
    });
  } catch (error) {
    if (error instanceof SnapshotError) throw error;
    const errno = (error as NodeJS.ErrnoException).code;
    if (typeof errno === 'string') throw new SnapshotPathError(path, describeErrno(error), { cause: error });
    throw error;
  }
}

/** An opened VM snapshot: the file (its tables checked) and the VM state parsed from its metadata. */
export interface OpenedVmSnapshot {
  file: SnapshotFile;
  state: VmSavedState;
}

/**
 * Open and check a VM snapshot: VmSnapshotNotFoundError when there is no
 * file, InvalidVmSnapshotError for the format (its error the cause),
 * InvalidVmStateError for the state in it (the field named).
 */
export async function openVmSnapshot(path: string): Promise<OpenedVmSnapshot> {
  let file: SnapshotFile;
  try {
    file = await SnapshotFile.open(path);
  } catch (error) {
    throw invalid(path, error);
  }
  try {
    let parsed: unknown;
    try {
      parsed = JSON.parse(Buffer.from(file.metadata).toString('utf8'));
    } catch (error) {
      throw new InvalidVmSnapshotError(path, 'its metadata is not JSON (not a VM snapshot)', { cause: error });
    }
    const kind = typeof parsed === 'object' && parsed !== null ? (parsed as { kind?: unknown }).kind : undefined;
    if (kind !== VM_SNAPSHOT_KIND) throw new InvalidVmSnapshotError(path, `its metadata kind is ${JSON.stringify(kind) ?? 'missing'}, not ${VM_SNAPSHOT_KIND}`);
    let state: VmSavedState;
    try {
      state = vmStateFromJson((parsed as { state?: unknown }).state);
    } catch (error) {
      if (error instanceof InvalidVmStateError) throw error.inSnapshot(path);
      throw error;
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

/**
 * A VM snapshot as a restore source: its state (checked by openVmSnapshot)
 * and its image through a SnapshotSource, which checks each stored page's
 * CRC as it is read; verifyAll checks them all without copying.
 */
export async function openVmSnapshotSource(path: string): Promise<VmRestoreSource> {
  const started = performance.now();
  const { file, state } = await openVmSnapshot(path);
  return {
    description: `snapshot ${path}`,
    state,
    memory: new SnapshotSource(file),
    openMs: performance.now() - started,
    async verifyAll() {
      const report = await file.verifyAll();
      if (report.ok) return;
      const first = report.corruptPages[0]!;
      const checksum = pageChecksumName(file.header.version);
      const cause = new SnapshotCorruptError({ structure: 'page data', ...first, checksum });
      throw new InvalidVmSnapshotError(path, `${report.corruptPageCount} stored page(s) fail their ${checksum} check, the first at image offset 0x${first.imageOffset.toString(16)} ` +
        `(${checksum} 0x${first.actualCrc32.toString(16)}, expected 0x${first.expectedCrc32.toString(16)})`, { cause });
    },
    explain: (error) => invalid(path, (error.cause as Error | undefined) ?? error),
  };
}

function invalid(path: string, error: unknown): Error {
  if (error instanceof SnapshotNotFoundError) return new VmSnapshotNotFoundError(path, { cause: error });
  if (error instanceof SnapshotError) return new InvalidVmSnapshotError(path, error.message, { cause: error });
  if ((error as NodeJS.ErrnoException).code === 'ENOENT') return new VmSnapshotNotFoundError(path, { cause: error });
  return error as Error;
}
