// The VM snapshot file: a page-aligned container of the VM state (JSON) and
// the guest memory image, each with a SHA-256, so a corrupted snapshot is
// refused before any guest runs. (Interim container: the project-wide format
// in src/snapshot/ will hold the same two sections, the state JSON in its
// metadata section.)
//
//   0     "UFVMSNAP"  magic (8)          48   memoryLength  u64
//   8     version     u32                56   state SHA-256 (32)
//   12    reserved    u32                88   memory SHA-256 (32)
//   16    stateOffset u64                120  zero to 4096
//   24    stateLength u64                4096 state JSON (UTF-8), zero-padded to a page
//   32    memoryOffset u64 (page-aligned)  memoryOffset: guest memory image
//   40    reserved    u64
import { createHash } from 'node:crypto';
import { closeSync, fstatSync, openSync, readSync, writeSync, ftruncateSync, fsyncSync } from 'node:fs';
import { native, PAGE_SIZE } from '../../native.js';
import { wrapNative } from '../../uffd/errors.js';
import { InvalidVmSnapshotError } from '../errors.js';
import { vmStateFromJson, vmStateToJson, type VmSavedState } from './vm-state.js';

export const SNAPSHOT_MAGIC = 'UFVMSNAP';
export const SNAPSHOT_VERSION = 1;
const HEADER_BYTES = 4096;

export interface SnapshotWriteResult {
  sizeBytes: number;
  stateBytes: number;
  memoryBytes: number;
  durationMs: number;
}

const alignUp = (n: number): number => Math.ceil(n / PAGE_SIZE) * PAGE_SIZE;

/** Write state and memory to `path` (created or truncated). */
export function writeVmSnapshot(path: string, state: VmSavedState, memory: Uint8Array): SnapshotWriteResult {
  const started = performance.now();
  const stateBytes = Buffer.from(JSON.stringify(vmStateToJson(state)), 'utf8');
  const memoryOffset = HEADER_BYTES + alignUp(stateBytes.byteLength);
  const header = Buffer.alloc(HEADER_BYTES);
  header.write(SNAPSHOT_MAGIC, 0, 'latin1');
  header.writeUInt32LE(SNAPSHOT_VERSION, 8);
  header.writeBigUInt64LE(BigInt(HEADER_BYTES), 16);
  header.writeBigUInt64LE(BigInt(stateBytes.byteLength), 24);
  header.writeBigUInt64LE(BigInt(memoryOffset), 32);
  header.writeBigUInt64LE(BigInt(memory.byteLength), 48);
  createHash('sha256').update(stateBytes).digest().copy(header, 56);
  createHash('sha256').update(memory).digest().copy(header, 88);
  const fd = openSync(path, 'w', 0o600);
  try {
    ftruncateSync(fd, memoryOffset + memory.byteLength);
    writeAll(fd, header, 0);
    writeAll(fd, stateBytes, HEADER_BYTES);
    writeAll(fd, memory, memoryOffset);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  return { sizeBytes: memoryOffset + memory.byteLength, stateBytes: stateBytes.byteLength, memoryBytes: memory.byteLength, durationMs: performance.now() - started };
}

function writeAll(fd: number, data: Uint8Array, position: number): void {
  for (let done = 0; done < data.byteLength; ) done += writeSync(fd, data, done, data.byteLength - done, position + done);
}

/** An open snapshot whose header and state were checked; memory is read on request. */
export class VmSnapshotFile {
  private constructor(
    readonly path: string,
    readonly fd: number,
    readonly state: VmSavedState,
    readonly memoryOffset: number,
    readonly memoryLength: number,
    private readonly memorySha256: Buffer,
  ) {}

  /** Open and check magic, version, layout and the state's checksum. Throws InvalidVmSnapshotError. */
  static open(path: string): VmSnapshotFile {
    let fd: number;
    try {
      fd = openSync(path, 'r');
    } catch (error) {
      throw new InvalidVmSnapshotError(path, `cannot open: ${(error as Error).message}`);
    }
    try {
      const fail = (reason: string): never => {
        throw new InvalidVmSnapshotError(path, reason);
      };
      const size = fstatSync(fd).size;
      if (size < HEADER_BYTES) fail(`${size} bytes is shorter than the ${HEADER_BYTES}-byte header`);
      const header = Buffer.alloc(HEADER_BYTES);
      readSync(fd, header, 0, HEADER_BYTES, 0);
      if (header.toString('latin1', 0, 8) !== SNAPSHOT_MAGIC) fail('bad magic (not a userfault VM snapshot)');
      const version = header.readUInt32LE(8);
      if (version !== SNAPSHOT_VERSION) fail(`version ${version}, this VMM reads ${SNAPSHOT_VERSION}`);
      const stateOffset = Number(header.readBigUInt64LE(16));
      const stateLength = Number(header.readBigUInt64LE(24));
      const memoryOffset = Number(header.readBigUInt64LE(32));
      const memoryLength = Number(header.readBigUInt64LE(48));
      if (stateOffset !== HEADER_BYTES || memoryOffset % PAGE_SIZE !== 0 || memoryOffset < stateOffset + stateLength) fail('inconsistent section offsets');
      if (memoryOffset + memoryLength !== size) fail(`file is ${size} bytes, the header describes ${memoryOffset + memoryLength}`);
      const stateBytes = Buffer.alloc(stateLength);
      readSync(fd, stateBytes, 0, stateLength, stateOffset);
      if (!createHash('sha256').update(stateBytes).digest().equals(header.subarray(56, 88))) fail('the VM state section fails its SHA-256');
      let state: VmSavedState;
      try {
        state = vmStateFromJson(JSON.parse(stateBytes.toString('utf8')));
      } catch (error) {
        return fail((error as Error).message);
      }
      if (state.machine.memoryBytes !== memoryLength) fail(`memory section is ${memoryLength} bytes, the machine has ${state.machine.memoryBytes}`);
      return new VmSnapshotFile(path, fd, state, memoryOffset, memoryLength, Buffer.from(header.subarray(88, 120)));
    } catch (error) {
      closeSync(fd);
      throw error;
    }
  }

  /** Read the whole memory image into host memory at `hostAddress` (pread straight into it), checking its SHA-256. */
  readMemoryInto(hostAddress: number, view: Uint8Array): void {
    const chunk = 16 * 1024 * 1024;
    for (let done = 0; done < this.memoryLength; ) {
      const length = Math.min(chunk, this.memoryLength - done);
      const n = wrapNative(() => native.preadAt(this.fd, hostAddress + done, length, this.memoryOffset + done));
      if (n <= 0) throw new InvalidVmSnapshotError(this.path, `memory section ends early at ${done} bytes`);
      done += n;
    }
    this.checkMemory(view);
  }

  /** Throws InvalidVmSnapshotError when `memory` (the whole image) does not match the recorded SHA-256. */
  checkMemory(memory: Uint8Array): void {
    if (!createHash('sha256').update(memory).digest().equals(this.memorySha256)) {
      throw new InvalidVmSnapshotError(this.path, 'the guest memory section fails its SHA-256');
    }
  }

  close(): void {
    closeSync(this.fd);
  }
}
