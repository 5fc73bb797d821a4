// Errors of the snapshot object layout (object-layout.ts): an object in a
// store that does not hold a well-formed snapshot object, or a chunk whose
// bytes do not match the SHA-256 its index records. Subclasses of
// SnapshotError: a snapshot object is a snapshot in another arrangement.
import { SnapshotError } from './errors.js';

/** A part of a snapshot object, as named in errors. */
export type ObjectStructure = 'object header' | 'object index' | 'chunk table' | 'chunk';

/**
 * The object's bytes break a rule of the layout: bad magic, a length that is
 * impossible or does not match the rest, a chunk table that disagrees with the
 * page table, a section that is truncated. `structure` says where.
 */
export class SnapshotObjectFormatError extends SnapshotError {
  override readonly code = 'ESNAPSHOT_OBJECT';
  constructor(readonly structure: ObjectStructure, readonly problem: string, options?: { cause?: unknown }) {
    super(`snapshot object ${structure}: ${problem}`, options);
  }
}

/** The object is a snapshot object, but of a layout version this code does not read. */
export class SnapshotObjectVersionError extends SnapshotError {
  override readonly code = 'ESNAPSHOT_OBJECT_VERSION';
  constructor(readonly version: number, readonly supportedVersions: readonly number[]) {
    super(`snapshot object layout version ${version} is not supported (this build reads ${supportedVersions.join(', ')})`);
  }
}

/**
 * A chunk's bytes do not match its index: the whole chunk against the SHA-256
 * its chunk table records, or (for a read of part of a chunk) one of its
 * pages against the CRC32 its page table records. They changed after the
 * object was written, at rest or on the way.
 */
export class ChunkCorruptError extends SnapshotError {
  override readonly code = 'ESNAPSHOT_CHUNK_CORRUPT';
  readonly chunkIndex: number;
  /** Where the bad bytes start in the object: the chunk's, or the page's. */
  readonly objectOffset: number;
  /** The image offset of the chunk's first stored page, or of the bad page. */
  readonly imageOffset: number;
  /** Where the bad bytes came from ("the store (s3://...)", "the cache"). */
  readonly from: string;
  readonly expected: string;
  readonly actual: string;
  /** For a page: its page-table index. */
  readonly pageIndex: number | undefined;
  constructor(fields: { chunkIndex: number; objectOffset: number; imageOffset: number; from: string } & ({ sha256: { expected: string; actual: string } } | { crc32: { expected: number; actual: number; pageIndex: number; checksum?: 'CRC32' | 'CRC32C' } })) {
    const check = 'sha256' in fields
      ? `SHA-256 ${fields.sha256.actual.slice(0, 16)}..., expected ${fields.sha256.expected.slice(0, 16)}...`
      : `${fields.crc32.checksum ?? 'CRC32'} 0x${hex32(fields.crc32.actual)}, expected 0x${hex32(fields.crc32.expected)}`;
    const what = 'sha256' in fields ? `chunk ${fields.chunkIndex}` : `chunk ${fields.chunkIndex}'s page ${fields.crc32.pageIndex}`;
    super(`${what} (object offset ${fields.objectOffset}, image offset 0x${fields.imageOffset.toString(16)}) from ${fields.from} is corrupt: ${check}`);
    this.chunkIndex = fields.chunkIndex;
    this.objectOffset = fields.objectOffset;
    this.imageOffset = fields.imageOffset;
    this.from = fields.from;
    this.expected = 'sha256' in fields ? fields.sha256.expected : hex32(fields.crc32.expected);
    this.actual = 'sha256' in fields ? fields.sha256.actual : hex32(fields.crc32.actual);
    this.pageIndex = 'sha256' in fields ? undefined : fields.crc32.pageIndex;
  }
}

function hex32(value: number): string {
  return value.toString(16).padStart(8, '0');
}
