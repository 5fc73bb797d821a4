// A snapshot laid out as one object for an object store (S3), made for range
// reads: pure functions over bytes. The store I/O lives in src/s3/; the
// source that restores from it is src/s3/s3-source.ts.
//
// The object keeps the snapshot file's own structures verbatim (header,
// region table, page table, metadata, page data), so the file can be rebuilt
// byte for byte (`userfault snapshot pull`), and adds what range reads need:
// everything but the page data at the front (one read opens a restore), and
// the page data cut into chunks, each with its SHA-256, so a chunk is checked
// before any of its bytes is used and a cache can hold it by its content.
//
//   object offset                                                little-endian throughout
//   0            +-------------------------------------------+
//                | object header (128 bytes)                  |  magic, version, page size, chunk span,
//                |   ... header CRC32 in its last 4 bytes     |  offsets and lengths, index CRC32
//   128          +-------------------------------------------+
//                | index:                                     |
//                |   snapshot header (256 bytes, verbatim)    |  the file's: its CRC, its sections' CRCs
//                |   region table (verbatim)                  |
//                |   page table (verbatim)                    |  kind, CRC32, data index per page
//                |   chunk table: chunkCount x 48 bytes       |  first data index, stored pages, SHA-256
//                |   metadata (verbatim)                      |  a VM snapshot's VM state
//                +-------------------------------------------+
//                | zero padding to a multiple of pageSize     |
//   dataOffset   +-------------------------------------------+
//                | chunk 0: the stored pages of page-table     |  the file's data section, verbatim:
//                |   entries [0, P)                            |  zero pages are not stored, so a chunk
//                | chunk 1: ... of entries [P, 2P)             |  holds at most P pages, maybe none
//                | ...                                         |
//   objectSize   +-------------------------------------------+
//
//   object header                                chunk table entry (48 bytes)
//     0  u8[8] magic "UFSNOBJ\x01"                 0  u64 first data index (of its first stored page)
//     8  u32   version (1)                         8  u32 stored pages (data pages in its span)
//    12  u32   headerLengthBytes (128)            12  u32 reserved (0)
//    16  u32   pageSize (the snapshot's)          16  u8[32] SHA-256 of the chunk's bytes
//    20  u32   chunkPages P (page-table entries per chunk)
//    24  u32   flags (0)                        Chunk k covers page-table entries [kP, (k+1)P) and
//    28  u32   reserved (0)                      its bytes are the object's
//    32  u64   chunkCount = ceil(pageCount / P)     [dataOffset + firstDataIndex * pageSize,
//    40  u64   index.offset (128)                    + storedPages * pageSize)
//    48  u64   index.lengthBytes                 Both fields follow from the page table; the reader
//    56  u64   data.offset                       checks that they do.
//    64  u64   data.lengthBytes
//    72  u64   objectSizeBytes
//    80  u32   index CRC32
//    84  u8[40] reserved (0)
//   124  u32   header CRC32 of bytes [0, 124)
import { crc32 } from 'node:zlib';
import { SnapshotFormatError } from './errors.js';
import {
  HEADER_LENGTH_BYTES,
  PageKind,
  alignUp,
  checkMetadata,
  decodeHeader,
  decodePageTable,
  decodeRegionTable,
  findRegionIndex,
  nextRegionStart,
  type PageTable,
  type SnapshotHeader,
  pageChecksumOf,
  type PageChecksum,
  type SnapshotRegion,
} from './format.js';
import { SnapshotObjectFormatError, SnapshotObjectVersionError } from './object-errors.js';

/** "UFSNOBJ\x01". */
export const SNAPSHOT_OBJECT_MAGIC: Uint8Array = Uint8Array.of(0x55, 0x46, 0x53, 0x4e, 0x4f, 0x42, 0x4a, 0x01);
export const SNAPSHOT_OBJECT_VERSION = 1;
export const SUPPORTED_SNAPSHOT_OBJECT_VERSIONS: readonly number[] = [SNAPSHOT_OBJECT_VERSION];
export const OBJECT_HEADER_BYTES = 128;
export const CHUNK_ENTRY_BYTES = 48;
export const SHA256_BYTES = 32;
/** The default chunk span: 256 KiB of image (64 pages of 4 KiB). docs/s3.md says why. */
export const DEFAULT_CHUNK_BYTES = 256 * 1024;
/** The largest chunk span a writer makes or a reader accepts (one chunk is one allocation). */
export const MAX_CHUNK_BYTES = 64 * 1024 * 1024;
/** The largest index a reader allocates by default: a 64 GiB guest's page table is 256 MiB. */
export const DEFAULT_MAX_INDEX_BYTES = 512 * 1024 * 1024;

const O = {
  magic: 0,
  version: 8,
  headerLength: 12,
  pageSize: 16,
  chunkPages: 20,
  flags: 24,
  reserved: 28,
  chunkCount: 32,
  indexOffset: 40,
  indexLength: 48,
  dataOffset: 56,
  dataLength: 64,
  objectSize: 72,
  indexCrc: 80,
  headerCrc: OBJECT_HEADER_BYTES - 4,
} as const;

export interface SnapshotObjectHeader {
  readonly version: number;
  readonly pageSize: number;
  /** Page-table entries per chunk. */
  readonly chunkPages: number;
  readonly chunkCount: number;
  readonly index: { readonly offset: number; readonly lengthBytes: number; readonly crc32: number };
  readonly data: { readonly offset: number; readonly lengthBytes: number };
  readonly objectSizeBytes: number;
}

/** Chunks as parallel arrays, indexed by chunk. */
export class ChunkTable {
  readonly firstDataIndexes: Float64Array;
  readonly storedPages: Uint32Array;
  /** chunkCount x 32 bytes. */
  readonly sha256s: Uint8Array;
  constructor(readonly chunkCount: number) {
    this.firstDataIndexes = new Float64Array(chunkCount);
    this.storedPages = new Uint32Array(chunkCount);
    this.sha256s = new Uint8Array(chunkCount * SHA256_BYTES);
  }
  sha256(chunk: number): Uint8Array {
    return this.sha256s.subarray(chunk * SHA256_BYTES, (chunk + 1) * SHA256_BYTES);
  }
  sha256Hex(chunk: number): string {
    return Buffer.from(this.sha256(chunk)).toString('hex');
  }
}

/**
 * Which stored pages each chunk of P page-table entries holds. Data pages are
 * in page-table order (the format's rule), so chunk k's pages are the data
 * indexes from its first stored page on, consecutive.
 */
export function planChunks(pageTable: PageTable, chunkPages: number): ChunkTable {
  checkChunkPages(chunkPages, 4096, 'chunk table');
  const chunkCount = Math.ceil(pageTable.pageCount / chunkPages);
  const chunks = new ChunkTable(chunkCount);
  let dataIndex = 0;
  for (let chunk = 0; chunk < chunkCount; chunk++) {
    chunks.firstDataIndexes[chunk] = dataIndex;
    const end = Math.min(pageTable.pageCount, (chunk + 1) * chunkPages);
    let stored = 0;
    for (let page = chunk * chunkPages; page < end; page++) if (pageTable.kinds[page] === PageKind.data) stored++;
    chunks.storedPages[chunk] = stored;
    dataIndex += stored;
  }
  return chunks;
}

function checkChunkPages(chunkPages: number, pageSize: number, structure: 'object header' | 'chunk table'): void {
  if (!Number.isSafeInteger(chunkPages) || chunkPages < 1 || chunkPages * pageSize > MAX_CHUNK_BYTES) {
    throw new SnapshotObjectFormatError(structure, `a chunk of ${chunkPages} pages of ${pageSize} bytes is not between one page and ${MAX_CHUNK_BYTES} bytes`);
  }
}

/** The snapshot's own structures, as its file holds them, and the chunks to cut its page data into. */
export interface SnapshotObjectParts {
  /** The file's header bytes (256), verbatim. */
  readonly snapshotHeaderBytes: Uint8Array;
  readonly regionTableBytes: Uint8Array;
  readonly pageTableBytes: Uint8Array;
  readonly metadata: Uint8Array;
  /** The decoded header of snapshotHeaderBytes. */
  readonly snapshotHeader: SnapshotHeader;
  /** planChunks' table, with every chunk's SHA-256 filled in. */
  readonly chunks: ChunkTable;
  readonly chunkPages: number;
}

export interface EncodedSnapshotObject {
  readonly header: SnapshotObjectHeader;
  /** Object header, index and padding: the object's bytes [0, data.offset). */
  readonly prefix: Uint8Array;
}

/** Lay out an object: its bytes before the page data, which follows verbatim from the snapshot file's data section. */
export function encodeSnapshotObject(parts: SnapshotObjectParts): EncodedSnapshotObject {
  const sh = parts.snapshotHeader;
  checkChunkPages(parts.chunkPages, sh.pageSize, 'chunk table');
  const chunkTableBytes = encodeChunkTable(parts.chunks);
  const pieces = [parts.snapshotHeaderBytes, parts.regionTableBytes, parts.pageTableBytes, chunkTableBytes, parts.metadata];
  const indexLengthBytes = pieces.reduce((n, p) => n + p.length, 0);
  const dataOffset = alignUp(OBJECT_HEADER_BYTES + indexLengthBytes, sh.pageSize);
  const prefix = new Uint8Array(dataOffset);
  let at = OBJECT_HEADER_BYTES;
  for (const piece of pieces) {
    prefix.set(piece, at);
    at += piece.length;
  }
  const header: SnapshotObjectHeader = {
    version: SNAPSHOT_OBJECT_VERSION,
    pageSize: sh.pageSize,
    chunkPages: parts.chunkPages,
    chunkCount: parts.chunks.chunkCount,
    index: { offset: OBJECT_HEADER_BYTES, lengthBytes: indexLengthBytes, crc32: crc32(prefix.subarray(OBJECT_HEADER_BYTES, OBJECT_HEADER_BYTES + indexLengthBytes)) },
    data: { offset: dataOffset, lengthBytes: sh.data.lengthBytes },
    objectSizeBytes: dataOffset + sh.data.lengthBytes,
  };
  prefix.set(encodeObjectHeader(header), 0);
  return { header, prefix };
}

export function encodeObjectHeader(header: SnapshotObjectHeader): Uint8Array {
  const bytes = new Uint8Array(OBJECT_HEADER_BYTES);
  const view = viewOf(bytes);
  bytes.set(SNAPSHOT_OBJECT_MAGIC, O.magic);
  view.setUint32(O.version, header.version, true);
  view.setUint32(O.headerLength, OBJECT_HEADER_BYTES, true);
  view.setUint32(O.pageSize, header.pageSize, true);
  view.setUint32(O.chunkPages, header.chunkPages, true);
  setU64(view, O.chunkCount, header.chunkCount);
  setU64(view, O.indexOffset, header.index.offset);
  setU64(view, O.indexLength, header.index.lengthBytes);
  setU64(view, O.dataOffset, header.data.offset);
  setU64(view, O.dataLength, header.data.lengthBytes);
  setU64(view, O.objectSize, header.objectSizeBytes);
  view.setUint32(O.indexCrc, header.index.crc32, true);
  view.setUint32(O.headerCrc, crc32(bytes.subarray(0, O.headerCrc)), true);
  return bytes;
}

/**
 * Decode and check an object header from the object's first bytes (at least
 * OBJECT_HEADER_BYTES; more is ignored). `objectSizeBytes`, when known (a
 * HEAD's Content-Length), must match. Nothing is allocated from its fields.
 */
export function decodeObjectHeader(bytes: Uint8Array, options: { objectSizeBytes?: number; maxIndexBytes?: number } = {}): SnapshotObjectHeader {
  const magicBytes = Math.min(bytes.length, SNAPSHOT_OBJECT_MAGIC.length);
  for (let i = 0; i < magicBytes; i++) {
    if (bytes[i] !== SNAPSHOT_OBJECT_MAGIC[i]) {
      throw new SnapshotObjectFormatError('object header', `bad magic ${Buffer.from(bytes.subarray(0, magicBytes)).toString('hex')} (not a userfault snapshot object${bytes[0] === 0x55 && bytes[5] === 0x50 ? '; a snapshot file? push it with userfault snapshot push' : ''})`);
    }
  }
  if (bytes.length < OBJECT_HEADER_BYTES) throw new SnapshotObjectFormatError('object header', `truncated: ${bytes.length} of ${OBJECT_HEADER_BYTES} bytes`);
  const view = viewOf(bytes);
  const fail = (problem: string): never => {
    throw new SnapshotObjectFormatError('object header', problem);
  };
  const headerLength = view.getUint32(O.headerLength, true);
  if (headerLength !== OBJECT_HEADER_BYTES) fail(`header length ${headerLength}, not ${OBJECT_HEADER_BYTES}`);
  const expected = view.getUint32(O.headerCrc, true);
  const actual = crc32(bytes.subarray(0, O.headerCrc));
  if (expected !== actual) fail(`CRC32 0x${hex32(actual)}, expected 0x${hex32(expected)} (the header is corrupt)`);
  const version = view.getUint32(O.version, true);
  if (!SUPPORTED_SNAPSHOT_OBJECT_VERSIONS.includes(version)) throw new SnapshotObjectVersionError(version, SUPPORTED_SNAPSHOT_OBJECT_VERSIONS);
  if (view.getUint32(O.flags, true) !== 0) fail(`unknown flags 0x${view.getUint32(O.flags, true).toString(16)}`);
  const u64 = (offset: number, field: string): number => {
    const value = view.getBigUint64(offset, true);
    if (value > BigInt(Number.MAX_SAFE_INTEGER)) fail(`${field} 0x${value.toString(16)} is beyond 2^53`);
    return Number(value);
  };
  const header: SnapshotObjectHeader = {
    version,
    pageSize: view.getUint32(O.pageSize, true),
    chunkPages: view.getUint32(O.chunkPages, true),
    chunkCount: u64(O.chunkCount, 'chunk count'),
    index: { offset: u64(O.indexOffset, 'index offset'), lengthBytes: u64(O.indexLength, 'index length'), crc32: view.getUint32(O.indexCrc, true) },
    data: { offset: u64(O.dataOffset, 'data offset'), lengthBytes: u64(O.dataLength, 'data length') },
    objectSizeBytes: u64(O.objectSize, 'object size'),
  };
  const { pageSize } = header;
  if (pageSize < 4096 || pageSize > 1 << 30 || (pageSize & (pageSize - 1)) !== 0) fail(`page size ${pageSize} is not a power of two between 4096 and 2^30`);
  checkChunkPages(header.chunkPages, pageSize, 'object header');
  if (header.index.offset !== OBJECT_HEADER_BYTES) fail(`the index starts at ${header.index.offset}, not right after the header`);
  const maxIndexBytes = options.maxIndexBytes ?? DEFAULT_MAX_INDEX_BYTES;
  if (header.index.lengthBytes < HEADER_LENGTH_BYTES || header.index.lengthBytes > maxIndexBytes) {
    fail(`an index of ${header.index.lengthBytes} bytes (this reader takes ${HEADER_LENGTH_BYTES} to ${maxIndexBytes})`);
  }
  if (header.data.offset !== alignUp(OBJECT_HEADER_BYTES + header.index.lengthBytes, pageSize)) fail(`the data starts at ${header.data.offset}, not at the first page boundary after the index`);
  if (header.data.lengthBytes % pageSize !== 0) fail(`the data is ${header.data.lengthBytes} bytes, not whole pages`);
  if (header.objectSizeBytes !== header.data.offset + header.data.lengthBytes) fail(`the object is ${header.objectSizeBytes} bytes, its data ends at ${header.data.offset + header.data.lengthBytes}`);
  if (options.objectSizeBytes !== undefined && options.objectSizeBytes !== header.objectSizeBytes) {
    fail(`the store says the object is ${options.objectSizeBytes} bytes, its header says ${header.objectSizeBytes}${options.objectSizeBytes < header.objectSizeBytes ? ' (truncated)' : ''}`);
  }
  // The chunk table is part of the index: its count is bounded by the index's length.
  if (header.chunkCount * CHUNK_ENTRY_BYTES > header.index.lengthBytes) fail(`${header.chunkCount} chunks do not fit a ${header.index.lengthBytes}-byte index`);
  return header;
}

/** A decoded, checked snapshot object: what a restore needs before its first page. */
export class SnapshotObjectLayout {
  /** The page checksum of the snapshot's format version (its page table's, as the file's). */
  readonly pageChecksum: PageChecksum;

  private constructor(
    readonly header: SnapshotObjectHeader,
    readonly snapshotHeader: SnapshotHeader,
    readonly regions: readonly SnapshotRegion[],
    readonly pageTable: PageTable,
    readonly chunks: ChunkTable,
    readonly metadata: Uint8Array,
    /** The index bytes (for a cache of indexes, and to rebuild the file). */
    readonly indexBytes: Uint8Array,
  ) {
    this.pageChecksum = pageChecksumOf(snapshotHeader.version);
  }

  /**
   * Decode the index (the object's bytes at header.index) and check it: its
   * CRC, the snapshot header and every table as the file format checks them,
   * the chunk table against the page table, the sizes against the object's.
   */
  static decode(header: SnapshotObjectHeader, indexBytes: Uint8Array): SnapshotObjectLayout {
    const fail = (structure: 'object index' | 'chunk table', problem: string, cause?: unknown): never => {
      throw new SnapshotObjectFormatError(structure, problem, { cause });
    };
    if (indexBytes.length !== header.index.lengthBytes) fail('object index', `${indexBytes.length} bytes, the header says ${header.index.lengthBytes}${indexBytes.length < header.index.lengthBytes ? ' (truncated)' : ''}`);
    const actualCrc = crc32(indexBytes);
    if (actualCrc !== header.index.crc32) fail('object index', `CRC32 0x${hex32(actualCrc)}, expected 0x${hex32(header.index.crc32)} (the index is corrupt)`);
    let snapshotHeader: SnapshotHeader;
    let regions: SnapshotRegion[];
    let pageTable: PageTable;
    let at = HEADER_LENGTH_BYTES;
    const take = (lengthBytes: number, what: string): Uint8Array => {
      if (at + lengthBytes > indexBytes.length) fail('object index', `the ${what} (${lengthBytes} bytes at ${at}) runs past the ${indexBytes.length}-byte index`);
      const piece = indexBytes.subarray(at, at + lengthBytes);
      at += lengthBytes;
      return piece;
    };
    try {
      snapshotHeader = decodeHeader(indexBytes.subarray(0, HEADER_LENGTH_BYTES));
    } catch (error) {
      return fail('object index', `its snapshot header: ${(error as Error).message}`, error);
    }
    const sh = snapshotHeader;
    if (sh.pageSize !== header.pageSize) fail('object index', `the snapshot's pages are ${sh.pageSize} bytes, the object's ${header.pageSize}`);
    if (sh.data.lengthBytes !== header.data.lengthBytes) fail('object index', `the snapshot stores ${sh.data.lengthBytes} bytes of pages, the object ${header.data.lengthBytes}`);
    const expectedChunks = Math.ceil(sh.pageCount / header.chunkPages);
    if (header.chunkCount !== expectedChunks) fail('chunk table', `${header.chunkCount} chunks, ${sh.pageCount} pages in chunks of ${header.chunkPages} make ${expectedChunks}`);
    const expectedLength = HEADER_LENGTH_BYTES + sh.regionTable.lengthBytes + sh.pageTable.lengthBytes + header.chunkCount * CHUNK_ENTRY_BYTES + sh.metadata.lengthBytes;
    if (expectedLength !== indexBytes.length) fail('object index', `${indexBytes.length} bytes, its snapshot's tables, chunk table and metadata make ${expectedLength}`);
    const regionBytes = take(sh.regionTable.lengthBytes, 'region table');
    const pageBytes = take(sh.pageTable.lengthBytes, 'page table');
    const chunkBytes = take(header.chunkCount * CHUNK_ENTRY_BYTES, 'chunk table');
    const metadata = take(sh.metadata.lengthBytes, 'metadata');
    try {
      regions = decodeRegionTable(regionBytes, sh);
      pageTable = decodePageTable(pageBytes, sh);
      checkMetadata(metadata, sh);
    } catch (error) {
      return fail('object index', (error as Error).message, error);
    }
    const chunks = decodeChunkTable(chunkBytes, header.chunkCount);
    const planned = planChunks(pageTable, header.chunkPages);
    for (let chunk = 0; chunk < chunks.chunkCount; chunk++) {
      if (chunks.firstDataIndexes[chunk] !== planned.firstDataIndexes[chunk] || chunks.storedPages[chunk] !== planned.storedPages[chunk]) {
        fail('chunk table', `chunk ${chunk} says ${chunks.storedPages[chunk]} stored pages from data index ${chunks.firstDataIndexes[chunk]}, the page table says ${planned.storedPages[chunk]} from ${planned.firstDataIndexes[chunk]}`);
      }
    }
    return new SnapshotObjectLayout(header, snapshotHeader, regions, pageTable, chunks, metadata, indexBytes);
  }

  get pageSize(): number {
    return this.header.pageSize;
  }

  get imageSizeBytes(): number {
    return this.snapshotHeader.imageSizeBytes;
  }

  /** Where chunk k's bytes are in the object. */
  chunkRange(chunk: number): { offset: number; lengthBytes: number } {
    return {
      offset: this.header.data.offset + this.chunks.firstDataIndexes[chunk]! * this.pageSize,
      lengthBytes: this.chunks.storedPages[chunk]! * this.pageSize,
    };
  }

  /** The image offset of chunk k's first stored page (for errors). */
  chunkImageOffset(chunk: number): number {
    const { kinds } = this.pageTable;
    const end = Math.min(this.pageTable.pageCount, (chunk + 1) * this.header.chunkPages);
    for (let page = chunk * this.header.chunkPages; page < end; page++) if (kinds[page] === PageKind.data) return this.imageOffsetOfPage(page);
    return this.imageOffsetOfPage(Math.min(chunk * this.header.chunkPages, Math.max(0, this.pageTable.pageCount - 1)));
  }

  /** Whether every byte of [imageOffset, +length) is a gap or a zero page. */
  isZero(imageOffset: number, length: number): boolean {
    for (const piece of this.planRead(imageOffset, length)) if (piece.type === 'data') return false;
    return true;
  }

  /**
   * What a read of [imageOffset, +length) is made of, in order: runs that
   * read as zero (gaps, zero pages), and runs of stored bytes, each within one
   * chunk, at an offset in that chunk's bytes. Any range of the image works.
   */
  *planRead(imageOffset: number, length: number): Generator<ReadPiece> {
    if (!Number.isSafeInteger(imageOffset) || !Number.isSafeInteger(length) || imageOffset < 0 || length < 0 || imageOffset + length > this.imageSizeBytes) {
      throw new RangeError(`[${imageOffset}, ${imageOffset + length}) is outside the ${this.imageSizeBytes}-byte image`);
    }
    const { pageSize, regions } = this;
    const { kinds, dataIndexes } = this.pageTable;
    const { chunkPages } = this.header;
    const end = imageOffset + length;
    let position = imageOffset;
    let pending: ReadPiece | undefined;
    const emit = function* (piece: ReadPiece): Generator<ReadPiece> {
      // Runs of the same kind (and for data, of the same chunk, contiguous) are merged.
      if (pending && pending.type === piece.type && (piece.type === 'zero' || (pending.type === 'data' && pending.chunk === piece.chunk && pending.chunkOffset + pending.lengthBytes === piece.chunkOffset))) {
        pending = { ...pending, lengthBytes: pending.lengthBytes + piece.lengthBytes };
        return;
      }
      if (pending) yield pending;
      pending = piece;
    };
    while (position < end) {
      const regionIndex = findRegionIndex(regions, position);
      if (regionIndex === -1) {
        const stop = Math.min(end, nextRegionStart(regions, position, this.imageSizeBytes));
        yield* emit({ type: 'zero', targetOffset: position - imageOffset, lengthBytes: stop - position });
        position = stop;
        continue;
      }
      const region = regions[regionIndex]!;
      const pageIndex = region.firstPageIndex + Math.floor((position - region.imageOffset) / pageSize);
      const pageStart = region.imageOffset + (pageIndex - region.firstPageIndex) * pageSize;
      const stop = Math.min(end, pageStart + pageSize);
      if (kinds[pageIndex] === PageKind.zero) {
        yield* emit({ type: 'zero', targetOffset: position - imageOffset, lengthBytes: stop - position });
      } else {
        const chunk = Math.floor(pageIndex / chunkPages);
        const chunkOffset = (dataIndexes[pageIndex]! - this.chunks.firstDataIndexes[chunk]!) * pageSize + (position - pageStart);
        yield* emit({ type: 'data', targetOffset: position - imageOffset, lengthBytes: stop - position, chunk, chunkOffset });
      }
      position = stop;
    }
    if (pending) yield pending;
  }

  /** The chunks a read of [imageOffset, +length) needs, ascending, each once. */
  chunksOf(imageOffset: number, length: number): number[] {
    const chunks: number[] = [];
    for (const piece of this.planRead(imageOffset, length)) if (piece.type === 'data' && chunks.at(-1) !== piece.chunk) chunks.push(piece.chunk);
    return chunks;
  }

  /** Stored pages of the image, for reports. */
  get dataPageCount(): number {
    return this.snapshotHeader.dataPageCount;
  }

  /** The image offset of page-table entry `pageIndex`. */
  imageOffsetOfPage(pageIndex: number): number {
    // Regions are few; a linear walk is fine for errors and reports.
    for (const region of this.regions) {
      if (pageIndex < region.firstPageIndex + region.pageCount) return region.imageOffset + (pageIndex - region.firstPageIndex) * this.pageSize;
    }
    return this.imageSizeBytes;
  }

  /**
   * The snapshot file this object was made from, as pieces at file offsets
   * (everything but the page data, which goes at snapshotHeader.data.offset).
   * The file is fileSizeBytes long; bytes no piece covers are zero (padding).
   */
  fileParts(): { fileSizeBytes: number; pieces: { offset: number; bytes: Uint8Array }[]; dataOffset: number } {
    const sh = this.snapshotHeader;
    const at = (offset: number, length: number): Uint8Array => this.indexBytes.subarray(offset, offset + length);
    let cursor = HEADER_LENGTH_BYTES;
    const region = at(cursor, sh.regionTable.lengthBytes);
    cursor += sh.regionTable.lengthBytes;
    const page = at(cursor, sh.pageTable.lengthBytes);
    cursor += sh.pageTable.lengthBytes + this.chunks.chunkCount * CHUNK_ENTRY_BYTES;
    return {
      fileSizeBytes: sh.fileSizeBytes,
      dataOffset: sh.data.offset,
      pieces: [
        { offset: 0, bytes: at(0, HEADER_LENGTH_BYTES) },
        { offset: sh.regionTable.offset, bytes: region },
        { offset: sh.pageTable.offset, bytes: page },
        { offset: sh.metadata.offset, bytes: at(cursor, sh.metadata.lengthBytes) },
      ],
    };
  }
}

/** One piece of a read: bytes that read as zero, or bytes of one chunk. */
export type ReadPiece =
  | { readonly type: 'zero'; readonly targetOffset: number; readonly lengthBytes: number }
  | { readonly type: 'data'; readonly targetOffset: number; readonly lengthBytes: number; readonly chunk: number; readonly chunkOffset: number };

export function encodeChunkTable(chunks: ChunkTable): Uint8Array {
  const bytes = new Uint8Array(chunks.chunkCount * CHUNK_ENTRY_BYTES);
  const view = viewOf(bytes);
  for (let chunk = 0; chunk < chunks.chunkCount; chunk++) {
    const base = chunk * CHUNK_ENTRY_BYTES;
    setU64(view, base, chunks.firstDataIndexes[chunk]!);
    view.setUint32(base + 8, chunks.storedPages[chunk]!, true);
    bytes.set(chunks.sha256(chunk), base + 16);
  }
  return bytes;
}

function decodeChunkTable(bytes: Uint8Array, chunkCount: number): ChunkTable {
  const view = viewOf(bytes);
  const chunks = new ChunkTable(chunkCount);
  for (let chunk = 0; chunk < chunkCount; chunk++) {
    const base = chunk * CHUNK_ENTRY_BYTES;
    const first = view.getBigUint64(base, true);
    if (first > BigInt(Number.MAX_SAFE_INTEGER)) throw new SnapshotObjectFormatError('chunk table', `chunk ${chunk}'s first data index is beyond 2^53`);
    if (view.getUint32(base + 12, true) !== 0) throw new SnapshotObjectFormatError('chunk table', `chunk ${chunk} has reserved bits set`);
    chunks.firstDataIndexes[chunk] = Number(first);
    chunks.storedPages[chunk] = view.getUint32(base + 8, true);
    chunks.sha256s.set(bytes.subarray(base + 16, base + 16 + SHA256_BYTES), chunk * SHA256_BYTES);
  }
  return chunks;
}

/** A chunk span given in bytes ("--chunk 256K"): whole pages, at least one, at most MAX_CHUNK_BYTES. */
export function chunkPagesFor(chunkBytes: number, pageSize: number): number {
  if (!Number.isSafeInteger(chunkBytes) || chunkBytes < pageSize || chunkBytes % pageSize !== 0 || chunkBytes > MAX_CHUNK_BYTES) {
    throw new SnapshotFormatError('page data', `a chunk of ${chunkBytes} bytes is not a whole number of ${pageSize}-byte pages between one page and ${MAX_CHUNK_BYTES} bytes`);
  }
  return chunkBytes / pageSize;
}

function viewOf(bytes: Uint8Array): DataView {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

function setU64(view: DataView, offset: number, value: number): void {
  view.setBigUint64(offset, BigInt(value), true);
}

function hex32(value: number): string {
  return value.toString(16).padStart(8, '0');
}
