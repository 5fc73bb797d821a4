// Errors of the snapshot format: one base class, a subclass per condition, a stable code,
// and what is needed to act on it (which structure, which page, which file offset).
// Nothing here loads the native addon: a snapshot can be inspected on any machine.
import { UserfaultError } from '../errors.js';

/** A part of a snapshot file, as named in errors and reports. */
export type SnapshotStructure = 'header' | 'region table' | 'page table' | 'metadata' | 'page data' | 'file';

export class SnapshotError extends UserfaultError {
  override readonly code: string = 'ESNAPSHOT';
}

/** The file (or a buffer handed to a decoder) ends before a structure it must hold. */
export class SnapshotTruncatedError extends SnapshotError {
  override readonly code = 'ESNAPSHOT_TRUNCATED';
  constructor(
    readonly structure: SnapshotStructure,
    /** Bytes the structure needs (for 'file': the length the header records). */
    readonly expectedBytes: number,
    readonly actualBytes: number,
  ) {
    super(`snapshot ${structure} is truncated: ${actualBytes} of ${expectedBytes} bytes`);
  }
}

/** A checksum does not match: the bytes changed after they were written. */
export class SnapshotCorruptError extends SnapshotError {
  override readonly code = 'ESNAPSHOT_CORRUPT';
  readonly structure: SnapshotStructure;
  /** Byte offset in the file of the structure (or page) that failed. */
  readonly fileOffset: number;
  readonly expectedCrc32: number;
  readonly actualCrc32: number;
  /** For page data: the page's index in the page table and its offset in the image. */
  readonly pageIndex: number | undefined;
  readonly imageOffset: number | undefined;
  constructor(fields: {
    structure: SnapshotStructure;
    fileOffset: number;
    expectedCrc32: number;
    actualCrc32: number;
    pageIndex?: number;
    imageOffset?: number;
    /** Which checksum failed: a page's is CRC32C from format version 2 on; tables and headers are CRC32. */
    checksum?: 'CRC32' | 'CRC32C';
  }) {
    const what = fields.pageIndex === undefined
      ? `snapshot ${fields.structure}`
      : `snapshot page ${fields.pageIndex} (image offset 0x${(fields.imageOffset ?? 0).toString(16)})`;
    super(`${what} at file offset ${fields.fileOffset} is corrupt: ${fields.checksum ?? 'CRC32'} ${hex32(fields.actualCrc32)}, expected ${hex32(fields.expectedCrc32)}`);
    this.structure = fields.structure;
    this.fileOffset = fields.fileOffset;
    this.expectedCrc32 = fields.expectedCrc32;
    this.actualCrc32 = fields.actualCrc32;
    this.pageIndex = fields.pageIndex;
    this.imageOffset = fields.imageOffset;
  }
}

/** The file is a snapshot, but of a format version this code does not read. */
export class SnapshotVersionError extends SnapshotError {
  override readonly code = 'ESNAPSHOT_VERSION';
  constructor(readonly version: number, readonly supportedVersions: readonly number[]) {
    super(`snapshot format version ${version} is not supported (this build reads ${supportedVersions.join(', ')})`);
  }
}

/**
 * The bytes (or the regions a caller asked to write) break a rule of the format:
 * bad magic, a page size that is not a power of two, misaligned or overlapping regions,
 * sections that do not fit the file. `structure` says where.
 */
export class SnapshotFormatError extends SnapshotError {
  override readonly code = 'ESNAPSHOT_FORMAT';
  constructor(readonly structure: SnapshotStructure, readonly problem: string) {
    super(`snapshot ${structure}: ${problem}`);
  }
}

/** The snapshot file does not exist (or is a directory). Code ENOINPUT, as every missing input (exit status 66). */
export class SnapshotNotFoundError extends SnapshotError {
  override readonly code = 'ENOINPUT';
  constructor(readonly path: string, readonly reason: 'does not exist' | 'is a directory', options?: { cause?: unknown }) {
    super(`snapshot ${path} ${reason}`, options);
  }
}

/** A streaming writer was used out of turn: pages out of order, a ragged length, a call after finish. */
export class SnapshotWriteError extends SnapshotError {
  override readonly code = 'ESNAPSHOT_WRITE';
  constructor(
    /** Where the next write must start; undefined when every page was already written. */
    readonly expectedImageOffset: number | undefined,
    /** Where the refused write started; undefined for calls that write no pages. */
    readonly actualImageOffset: number | undefined,
    detail: string,
  ) {
    super(actualImageOffset === undefined ? `snapshot writer: ${detail}` : `snapshot write at image offset 0x${actualImageOffset.toString(16)}: ${detail}`);
  }
}

function hex32(value: number): string {
  return `0x${value.toString(16).padStart(8, '0')}`;
}
