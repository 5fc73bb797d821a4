// Opening a snapshot object in a store: HEAD for its size and ETag, then its
// header and index by range reads (one read when the index is small: the
// first FIRST_READ_BYTES hold both for a guest up to ~60 MiB of 4 KiB pages:
// 16 bytes of page table and ~0.75 of chunk table a page; a larger one takes
// one more read for the rest of its index), decoded and checked by the pure layout (src/snapshot/object-layout.ts).
// Every later read names the ETag seen here, so chunks are never mixed from
// two versions of the object.
import { DEFAULT_MAX_INDEX_BYTES, OBJECT_HEADER_BYTES, SnapshotObjectLayout, decodeObjectHeader } from '../snapshot/object-layout.js';
import { SnapshotObjectFormatError } from '../snapshot/object-errors.js';
import type { ObjectInfo, ObjectReader } from './s3-object.js';

/** Bytes read first: the header and, for most snapshots, the whole index. */
export const FIRST_READ_BYTES = 256 * 1024;

/** Where an opened object's index may be kept between restores (the chunk cache keeps one). */
export interface IndexCache {
  /** The index bytes cached for this object version, or undefined. */
  getIndex(key: string): Promise<Uint8Array | undefined>;
  putIndex(key: string, bytes: Uint8Array): Promise<void>;
}

export interface OpenedSnapshotObject {
  readonly info: ObjectInfo;
  readonly layout: SnapshotObjectLayout;
  /** Requests and bytes it took (0 bytes when the index came from the cache). */
  readonly requests: number;
  readonly bytesRead: number;
  readonly indexFromCache: boolean;
}

export interface OpenObjectOptions {
  maxIndexBytes?: number;
  indexCache?: IndexCache;
  signal?: AbortSignal;
}

/** The key an object version's index is cached under: the object, its ETag and its size. */
export function indexCacheKey(url: string, info: ObjectInfo): string {
  return `${url}\n${info.etag}\n${info.sizeBytes}`;
}

/**
 * Open and check a snapshot object. Rejects with SnapshotObjectFormatError
 * (and the snapshot format's errors as its cause) for an object that is not
 * a well-formed snapshot object, or an S3Error from the store.
 */
export async function openSnapshotObject(reader: ObjectReader, options: OpenObjectOptions = {}): Promise<OpenedSnapshotObject> {
  const info = await reader.head(options.signal);
  let requests = 1;
  let bytesRead = 0;
  if (info.sizeBytes < OBJECT_HEADER_BYTES) {
    throw new SnapshotObjectFormatError('object header', `the object is ${info.sizeBytes} bytes, shorter than a ${OBJECT_HEADER_BYTES}-byte header (truncated, or not a snapshot object)`);
  }
  const maxIndexBytes = options.maxIndexBytes ?? DEFAULT_MAX_INDEX_BYTES;
  const cacheKey = indexCacheKey(reader.url, info);
  const cached = await options.indexCache?.getIndex(cacheKey);
  if (cached !== undefined) {
    // The cached bytes are the index after the header: check them exactly as fresh ones.
    try {
      const header = decodeObjectHeader(cached.subarray(0, OBJECT_HEADER_BYTES), { objectSizeBytes: info.sizeBytes, maxIndexBytes });
      const layout = SnapshotObjectLayout.decode(header, cached.subarray(OBJECT_HEADER_BYTES));
      return { info, layout, requests, bytesRead, indexFromCache: true };
    } catch {
      // A damaged cache entry is a miss: read the index from the store.
    }
  }
  const firstLength = Math.min(info.sizeBytes, FIRST_READ_BYTES);
  const first = await reader.readRange(0, firstLength, { etag: info.etag, signal: options.signal });
  requests++;
  bytesRead += first.length;
  const header = decodeObjectHeader(first, { objectSizeBytes: info.sizeBytes, maxIndexBytes });
  const indexEnd = header.index.offset + header.index.lengthBytes;
  let prefix: Uint8Array;
  if (indexEnd <= first.length) {
    prefix = first.subarray(0, indexEnd);
  } else {
    prefix = new Uint8Array(indexEnd);
    prefix.set(first);
    const rest = await reader.readRange(first.length, indexEnd - first.length, { etag: info.etag, signal: options.signal });
    requests++;
    bytesRead += rest.length;
    prefix.set(rest, first.length);
  }
  const layout = SnapshotObjectLayout.decode(header, prefix.subarray(OBJECT_HEADER_BYTES, indexEnd));
  await options.indexCache?.putIndex(cacheKey, prefix.slice(0, indexEnd)).catch(() => undefined);
  return { info, layout, requests, bytesRead, indexFromCache: false };
}
