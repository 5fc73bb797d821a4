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

/** A chunk's bytes do not hash to the SHA-256 its index records: they changed after the object was written (or on the way). */
export class ChunkCorruptError extends SnapshotError {
  override readonly code = 'ESNAPSHOT_CHUNK_CORRUPT';
  constructor(
    readonly chunkIndex: number,
    /** Where the chunk's bytes start in the object. */
    readonly objectOffset: number,
    /** The image offset of the chunk's first stored page. */
    readonly imageOffset: number,
    readonly expectedSha256: string,
    readonly actualSha256: string,
    /** Where the bad bytes came from ("the store", "the cache"). */
    readonly from: string,
  ) {
    super(`chunk ${chunkIndex} (object offset ${objectOffset}, image offset 0x${imageOffset.toString(16)}) from ${from} is corrupt: SHA-256 ${actualSha256.slice(0, 16)}..., expected ${expectedSha256.slice(0, 16)}...`);
  }
}
