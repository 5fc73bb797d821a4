// `userfault snapshot push FILE s3://BUCKET/KEY`: a snapshot file uploaded as
// a snapshot object (src/snapshot/object-layout.ts). Two passes over the file:
// the first checks every stored page's CRC (a corrupt snapshot is refused,
// not published) and takes each chunk's SHA-256, which the index at the
// object's front records; the second uploads index and pages, in parts of
// `partBytes` with a few in flight, so memory stays at a few parts whatever
// the snapshot's size.
import { createHash } from 'node:crypto';
import { open, type FileHandle } from 'node:fs/promises';
import { SnapshotCorruptError, SnapshotTruncatedError } from '../snapshot/errors.js';
import { DEFAULT_CHUNK_BYTES, chunkPagesFor, encodeSnapshotObject, planChunks, type ChunkTable } from '../snapshot/object-layout.js';
import { PageKind, pageChecksumName } from '../snapshot/format.js';
import { SnapshotFile } from '../snapshot/reader.js';
import { MAX_PARTS, MIN_PART_BYTES, MAX_SINGLE_PUT_BYTES, S3Object, type S3StoreOptions } from './s3-object.js';
import type { S3Location } from './s3-url.js';

export interface PushOptions extends S3StoreOptions {
  /** Image bytes per chunk (a multiple of the page size; default 256 KiB). */
  chunkBytes?: number;
  /** Bytes per uploaded part (default 16 MiB, at least 5 MiB); an object no larger is one PUT. */
  partBytes?: number;
  /** Parts in flight (default 4). */
  concurrency?: number;
  /** Told as the work goes: the stored pages checked and hashed, then the object's bytes handed to the upload. */
  onProgress?: (progress: TransferProgress) => void;
}

/** A push's or a pull's progress: bytes of the phase done out of its total. */
export interface TransferProgress {
  /** push: 'checking' (every stored page's CRC, each chunk's SHA-256), then 'uploading'; pull: 'downloading'. */
  phase: 'checking' | 'uploading' | 'downloading';
  doneBytes: number;
  totalBytes: number;
}

export interface PushSummary {
  readonly url: string;
  readonly objectSizeBytes: number;
  readonly etag: string;
  readonly chunkBytes: number;
  readonly chunkCount: number;
  readonly dataPageCount: number;
  readonly zeroPageCount: number;
  /** Bytes before the page data: header and index (tables, chunk table, metadata). */
  readonly indexBytes: number;
  /** 0 for a single PUT. */
  readonly partCount: number;
  readonly durationMs: number;
}

const DEFAULT_PART_BYTES = 16 * 1024 * 1024;
/** Bytes read from the file per call while hashing. */
const HASH_READ_BYTES = 4 * 1024 * 1024;

/** A snapshot file laid out as an object, ready to upload: its size, and its bytes at any offset (the prefix, then the file's data section). */
export interface PreparedSnapshotObject {
  readonly sizeBytes: number;
  readonly chunkBytes: number;
  readonly chunkCount: number;
  readonly dataPageCount: number;
  readonly zeroPageCount: number;
  readonly indexBytes: number;
  bytesAt(offset: number, lengthBytes: number): Promise<Uint8Array>;
  close(): Promise<void>;
}

/** Open a snapshot file, check every stored page, hash every chunk and lay out the object (nothing is uploaded). */
export async function prepareSnapshotObject(path: string, options: { chunkBytes?: number; onProgress?: PushOptions['onProgress'] } = {}): Promise<PreparedSnapshotObject> {
  const snapshot = await SnapshotFile.open(path);
  let file: FileHandle | undefined;
  try {
    file = await open(path, 'r');
    const { header, pageTable, pageSize } = snapshot;
    const chunkBytes = options.chunkBytes ?? Math.max(DEFAULT_CHUNK_BYTES, pageSize);
    const chunkPages = chunkPagesFor(chunkBytes, pageSize);
    const chunks = planChunks(pageTable, chunkPages);
    await hashChunks(file, snapshot, chunks, chunkPages, options.onProgress);
    const encoded = encodeSnapshotObject({
      snapshotHeaderBytes: await readAt(file, 0, header.headerLengthBytes),
      regionTableBytes: await readAt(file, header.regionTable.offset, header.regionTable.lengthBytes),
      pageTableBytes: await readAt(file, header.pageTable.offset, header.pageTable.lengthBytes),
      metadata: snapshot.metadata,
      snapshotHeader: header,
      chunks,
      chunkPages,
    });
    const source = file;
    return {
      sizeBytes: encoded.header.objectSizeBytes,
      chunkBytes,
      chunkCount: chunks.chunkCount,
      dataPageCount: header.dataPageCount,
      zeroPageCount: header.pageCount - header.dataPageCount,
      indexBytes: encoded.prefix.length,
      async bytesAt(offset: number, length: number): Promise<Uint8Array> {
        const out = new Uint8Array(length);
        const prefix = encoded.prefix;
        let done = 0;
        if (offset < prefix.length) {
          const piece = prefix.subarray(offset, Math.min(prefix.length, offset + length));
          out.set(piece);
          done = piece.length;
        }
        if (done < length) out.set(await readAt(source, header.data.offset + offset + done - prefix.length, length - done), done);
        return out;
      },
      async close(): Promise<void> {
        await source.close();
        await snapshot.close();
      },
    };
  } catch (error) {
    await file?.close();
    await snapshot.close();
    throw error;
  }
}

export async function pushSnapshot(path: string, location: S3Location, options: PushOptions = {}): Promise<PushSummary> {
  const started = performance.now();
  const prepared = await prepareSnapshotObject(path, options);
  const object = S3Object.open(location, options);
  try {
    const size = prepared.sizeBytes;
    const wanted = Math.max(MIN_PART_BYTES, options.partBytes ?? DEFAULT_PART_BYTES);
    const partBytes = Math.max(wanted, Math.ceil(size / MAX_PARTS));
    let etag: string;
    let partCount = 0;
    const progress = options.onProgress;
    progress?.({ phase: 'uploading', doneBytes: 0, totalBytes: size });
    if (size <= partBytes && size <= MAX_SINGLE_PUT_BYTES) {
      etag = (await object.put(await prepared.bytesAt(0, size))).etag;
    } else {
      // A part counts as done when the upload asks for the next one past its window (a few in flight), and all of them at the end.
      const parts = async function* (): AsyncGenerator<Uint8Array> {
        for (let offset = 0; offset < size; offset += partBytes) {
          progress?.({ phase: 'uploading', doneBytes: offset, totalBytes: size });
          yield await prepared.bytesAt(offset, Math.min(partBytes, size - offset));
        }
      };
      ({ etag, partCount } = await object.putMultipart(parts(), { concurrency: options.concurrency }));
    }
    progress?.({ phase: 'uploading', doneBytes: size, totalBytes: size });
    return {
      url: object.url,
      objectSizeBytes: size,
      etag,
      chunkBytes: prepared.chunkBytes,
      chunkCount: prepared.chunkCount,
      dataPageCount: prepared.dataPageCount,
      zeroPageCount: prepared.zeroPageCount,
      indexBytes: prepared.indexBytes,
      partCount,
      durationMs: performance.now() - started,
    };
  } finally {
    await prepared.close();
    object.close();
  }
}

/** Check every stored page's CRC and fill in each chunk's SHA-256, reading the data section front to back. */
async function hashChunks(file: FileHandle, snapshot: SnapshotFile, chunks: ChunkTable, chunkPages: number, onProgress?: PushOptions['onProgress']): Promise<void> {
  const { pageSize, header, pageTable } = snapshot;
  let storedPages = 0;
  for (let chunk = 0; chunk < chunks.chunkCount; chunk++) storedPages += chunks.storedPages[chunk]!;
  const totalBytes = storedPages * pageSize;
  let doneBytes = 0;
  onProgress?.({ phase: 'checking', doneBytes, totalBytes });
  // Data pages of each chunk, in page-table order: their CRCs, to check as they are read.
  let pageIndex = 0;
  for (let chunk = 0; chunk < chunks.chunkCount; chunk++) {
    const hash = createHash('sha256');
    const stored = chunks.storedPages[chunk]!;
    let dataIndex = chunks.firstDataIndexes[chunk]!;
    let left = stored;
    const end = Math.min(pageTable.pageCount, (chunk + 1) * chunkPages);
    while (left > 0) {
      const count = Math.min(left, Math.max(1, Math.floor(HASH_READ_BYTES / pageSize)));
      const bytes = await readAt(file, header.data.offset + dataIndex * pageSize, count * pageSize);
      for (let i = 0; i < count; i++) {
        while (pageIndex < end && pageTable.kinds[pageIndex] !== PageKind.data) pageIndex++;
        const page = bytes.subarray(i * pageSize, (i + 1) * pageSize);
        const actual = snapshot.pageChecksum(page);
        if (actual !== pageTable.crc32s[pageIndex]) {
          throw new SnapshotCorruptError({
            structure: 'page data',
            fileOffset: header.data.offset + (dataIndex + i) * pageSize,
            expectedCrc32: pageTable.crc32s[pageIndex]!,
            actualCrc32: actual,
            pageIndex,
            imageOffset: imageOffsetOf(snapshot, pageIndex),
            checksum: pageChecksumName(header.version),
          });
        }
        pageIndex++;
      }
      hash.update(bytes);
      dataIndex += count;
      left -= count;
      doneBytes += count * pageSize;
      onProgress?.({ phase: 'checking', doneBytes, totalBytes });
    }
    pageIndex = end;
    chunks.sha256s.set(hash.digest(), chunk * 32);
  }
}

function imageOffsetOf(snapshot: SnapshotFile, pageIndex: number): number {
  for (const region of snapshot.regions) {
    if (pageIndex < region.firstPageIndex + region.pageCount) return region.imageOffset + (pageIndex - region.firstPageIndex) * snapshot.pageSize;
  }
  return 0;
}

async function readAt(file: FileHandle, offset: number, length: number): Promise<Uint8Array> {
  const into = new Uint8Array(length);
  let done = 0;
  while (done < length) {
    const { bytesRead } = await file.read(into, done, length - done, offset + done);
    if (bytesRead === 0) throw new SnapshotTruncatedError('file', offset + length, offset + done);
    done += bytesRead;
  }
  return into;
}
