// `userfault snapshot pull s3://BUCKET/KEY FILE`: a snapshot object fetched
// back whole as the snapshot file it was made from, byte for byte (the object
// keeps the file's header, tables and metadata verbatim; its chunks are the
// file's data section). Every chunk is checked against its SHA-256 and every
// page against its CRC before it is written; the file appears at its path
// complete or not at all (a temporary file, fsynced, renamed, the directory
// fsynced), and is opened as a snapshot once more before the pull reports success.
import { createHash, randomBytes } from 'node:crypto';
import { open, rename, unlink, type FileHandle } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { PageKind, pageChecksumName } from '../snapshot/format.js';
import { ChunkCorruptError } from '../snapshot/object-errors.js';
import type { SnapshotObjectLayout } from '../snapshot/object-layout.js';
import { SnapshotCorruptError } from '../snapshot/errors.js';
import { SnapshotFile } from '../snapshot/reader.js';
import { S3Error } from './errors.js';
import { S3Object, type ObjectReader, type S3StoreOptions } from './s3-object.js';
import type { S3Location } from './s3-url.js';
import { openSnapshotObject } from './snapshot-object.js';
import type { TransferProgress } from './snapshot-push.js';

export interface PullOptions extends S3StoreOptions {
  /** Bytes per range request (default 8 MiB; whole chunks, at least one). */
  requestBytes?: number;
  /** Range requests in flight (default 8). */
  concurrency?: number;
  /** Attempts per request when the store is unavailable or answers wrong (default 4). */
  attempts?: number;
  /** Told as chunks arrive, checked and written: the object's page bytes done out of all of them. */
  onProgress?: (progress: TransferProgress) => void;
}

export interface PullSummary {
  readonly url: string;
  readonly path: string;
  readonly fileSizeBytes: number;
  readonly objectSizeBytes: number;
  readonly chunkCount: number;
  readonly dataPageCount: number;
  readonly requests: number;
  readonly bytesFetched: number;
  readonly durationMs: number;
}

export async function pullSnapshot(location: S3Location, path: string, options: PullOptions = {}): Promise<PullSummary> {
  const object = S3Object.open(location, options);
  try {
    return await pullSnapshotFrom(object, path, options);
  } finally {
    object.close();
  }
}

/** pullSnapshot over any ObjectReader (tests put hostile ones here). */
export async function pullSnapshotFrom(reader: ObjectReader, path: string, options: PullOptions = {}): Promise<PullSummary> {
  const started = performance.now();
  const opened = await openSnapshotObject(reader);
  const { layout, info } = opened;
  let requests = opened.requests;
  let bytesFetched = opened.bytesRead;
  const temp = join(dirname(path), `.${basename(path)}.${process.pid}-${randomBytes(6).toString('hex')}.tmp`);
  const file = await open(temp, 'wx');
  let renamed = false;
  try {
    const parts = layout.fileParts();
    for (const piece of parts.pieces) await writeAll(file, piece.bytes, piece.offset);
    // Runs of whole chunks up to requestBytes, a few in flight.
    const requestBytes = options.requestBytes ?? 8 * 1024 * 1024;
    const runs: { first: number; count: number }[] = [];
    for (let chunk = 0; chunk < layout.chunks.chunkCount;) {
      let count = 0;
      let bytes = 0;
      while (chunk + count < layout.chunks.chunkCount && (count === 0 || bytes + layout.chunkRange(chunk + count).lengthBytes <= requestBytes)) {
        bytes += layout.chunkRange(chunk + count).lengthBytes;
        count++;
      }
      if (bytes > 0) runs.push({ first: chunk, count });
      chunk += count;
    }
    const attempts = options.attempts ?? 4;
    const totalBytes = runs.reduce((sum, run) => {
      const start = layout.chunkRange(run.first);
      const last = layout.chunkRange(run.first + run.count - 1);
      return sum + last.offset + last.lengthBytes - start.offset;
    }, 0);
    let doneBytes = 0;
    options.onProgress?.({ phase: 'downloading', doneBytes, totalBytes });
    let next = 0;
    const worker = async (): Promise<void> => {
      while (next < runs.length) {
        const run = runs[next++]!;
        const start = layout.chunkRange(run.first);
        const last = layout.chunkRange(run.first + run.count - 1);
        const length = last.offset + last.lengthBytes - start.offset;
        const bytes = await withRetries(attempts, async () => {
          requests++;
          const got = await reader.readRange(start.offset, length, { etag: info.etag });
          bytesFetched += got.length;
          checkChunks(layout, run.first, run.count, got, start.offset, reader.url);
          return got;
        });
        await writeAll(file, bytes, parts.dataOffset + (start.offset - layout.header.data.offset));
        doneBytes += length;
        options.onProgress?.({ phase: 'downloading', doneBytes, totalBytes });
      }
    };
    await Promise.all(Array.from({ length: Math.max(1, options.concurrency ?? 8) }, worker));
    await file.truncate(parts.fileSizeBytes);
    await file.sync();
    await file.close();
    // Opened once more as a snapshot: its header, tables and size, as any reader will check them.
    await (await SnapshotFile.open(temp)).close();
    await rename(temp, path);
    renamed = true;
    const directory = await open(dirname(path), 'r');
    await directory.sync().finally(() => directory.close());
    return {
      url: reader.url,
      path,
      fileSizeBytes: parts.fileSizeBytes,
      objectSizeBytes: info.sizeBytes,
      chunkCount: layout.chunks.chunkCount,
      dataPageCount: layout.dataPageCount,
      requests,
      bytesFetched,
      durationMs: performance.now() - started,
    };
  } finally {
    await file.close().catch(() => undefined);
    if (!renamed) await unlink(temp).catch(() => undefined);
  }
}

/**
 * Check `count` chunks from `first`, whose bytes are `bytes` (starting at
 * object offset `objectOffset`): each against its SHA-256, and each of its
 * pages against the page table's CRC. Throws ChunkCorruptError or SnapshotCorruptError.
 */
export function checkChunks(layout: SnapshotObjectLayout, first: number, count: number, bytes: Uint8Array, objectOffset: number, from: string): void {
  const { pageSize } = layout;
  const { kinds, crc32s } = layout.pageTable;
  const { chunkPages } = layout.header;
  for (let chunk = first; chunk < first + count; chunk++) {
    const range = layout.chunkRange(chunk);
    const piece = bytes.subarray(range.offset - objectOffset, range.offset - objectOffset + range.lengthBytes);
    const actual = createHash('sha256').update(piece).digest('hex');
    const expected = layout.chunks.sha256Hex(chunk);
    if (actual !== expected) throw new ChunkCorruptError({ chunkIndex: chunk, objectOffset: range.offset, imageOffset: layout.chunkImageOffset(chunk), from, sha256: { expected, actual } });
    let at = 0;
    const end = Math.min(layout.pageTable.pageCount, (chunk + 1) * chunkPages);
    for (let pageIndex = chunk * chunkPages; pageIndex < end; pageIndex++) {
      if (kinds[pageIndex] !== PageKind.data) continue;
      const crc = layout.pageChecksum(piece.subarray(at, at + pageSize));
      if (crc !== crc32s[pageIndex]) {
        throw new SnapshotCorruptError({ structure: 'page data', fileOffset: range.offset + at, expectedCrc32: crc32s[pageIndex]!, actualCrc32: crc, pageIndex, imageOffset: layout.imageOffsetOfPage(pageIndex), checksum: pageChecksumName(layout.snapshotHeader.version) });
      }
      at += pageSize;
    }
  }
}

async function withRetries<T>(attempts: number, run: () => Promise<T>): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await run();
    } catch (error) {
      const transient = (error instanceof S3Error && error.transient) || error instanceof ChunkCorruptError;
      if (!transient || attempt >= attempts) throw error;
      await new Promise((resolve) => setTimeout(resolve, 50 * 2 ** attempt));
    }
  }
}

async function writeAll(file: FileHandle, bytes: Uint8Array, position: number): Promise<void> {
  let done = 0;
  while (done < bytes.length) {
    const { bytesWritten } = await file.write(bytes, done, bytes.length - done, position + done);
    if (bytesWritten <= 0) throw new Error(`write at ${position + done} wrote nothing`);
    done += bytesWritten;
  }
}
