// Pages from a snapshot object in an S3-compatible store (`userfault snapshot
// push`; the layout is src/snapshot/object-layout.ts, docs/s3.md): a
// PageSource like any other, so the pager, LazyMemory, the handler service and
// the VMM restore straight from object storage.
//
// The unit of fetching, checking and caching is the chunk (256 KiB of image
// by default). A read needs the chunks its stored pages are in; each comes
// from, in order: this process's memory (a bounded LRU), the host's chunk
// cache on disk (src/sources/chunk-cache.ts, shared by every restore), or the
// store, by range request. Every chunk is checked against the SHA-256 its
// index records before a byte of it is copied anywhere, and a read copies
// nothing until every chunk it needs has passed.
//
// A chunk's life in this process:
//
//   absent ──read──▶ loading (disk cache) ──hit──▶ in memory
//                       └──miss──▶ queued (demand | background) ──sent──▶ fetching ──checked──▶ in memory (and written to the disk cache)
//                                    ▲                                        ├──store unavailable / wrong reply──▶ queued again, after a pause
//                                    └────────────────────────────────────────┤   (until the deadline: then the source is gone)
//                                                                             ├──SHA-256 mismatch──▶ queued again (maxCorruptRetries), then corrupt for good
//                                                                             └──object changed, missing, refused──▶ the source is gone
//
// Range requests are bounded (maxInFlight) and demand first: a chunk a thread
// is blocked on is sent before any read-ahead, and a queued background chunk
// that a fault then needs moves to the demand queue. Consecutive background
// chunks go in one request of up to backgroundRequestBytes; a demand request
// carries only the chunks its read needs, so what a fault fetches stays close
// to what it touches.
//
// A store that stops answering is not a failed read: the chunk is asked for
// again (each request bounded by requestTimeoutMs) while the faulting thread
// waits, as it must (not zeroes, not SIGBUS); only a store unavailable for
// deadlineMs makes the source gone (SourceGoneError, fatal, for every read),
// and the owner's policy poisons the pages.
import { createHash } from 'node:crypto';
import { ChunkCorruptError } from '../snapshot/object-errors.js';
import type { ReadPiece, SnapshotObjectLayout } from '../snapshot/object-layout.js';
import { S3Error, StoreResponseError, StoreUnavailableError } from '../s3/errors.js';
import { S3Object, type ObjectInfo, type ObjectReader, type S3StoreOptions } from '../s3/s3-object.js';
import { parseS3Url } from '../s3/s3-url.js';
import { openSnapshotObject } from '../s3/snapshot-object.js';
import { ChunkCache } from './chunk-cache.js';
import { SourceGoneError, SourceReadError, checkReadRange, type PageSource, type ReadOptions, type ReadPriority } from './page-source.js';

export interface S3SourceOptions extends S3StoreOptions {
  /** The chunk cache's directory; false for none (default: ChunkCache's). */
  cacheDir?: string | false;
  /** The chunk cache's bound (default: ChunkCache's, 4 GiB). */
  cacheMaxBytes?: number;
  /** How long the store may be unavailable, reads waiting, before the source is gone (default 30 s). */
  deadlineMs?: number;
  /** Range requests in flight (default 16). */
  maxInFlight?: number;
  /** The most one background request spans, in bytes of consecutive chunks (default 4 MiB). */
  backgroundRequestBytes?: number;
  /** Chunks kept in this process's memory, in bytes (default 64 MiB). */
  memoryBytes?: number;
  /** Times a chunk that fails its SHA-256 is fetched again before it is given up as corrupt (default 2). */
  maxCorruptRetries?: number;
}

export interface S3SourceStats {
  /** Range requests sent for chunks (retries included), and by priority. */
  requests: number;
  demandRequests: number;
  backgroundRequests: number;
  /** Requests to open the object (HEAD, header and index). */
  openRequests: number;
  /** Chunk bytes received from the store (opening not included). */
  bytesFetched: number;
  openBytes: number;
  chunksFetched: number;
  /** Chunks found in the disk cache, and in memory. */
  cacheHits: number;
  memoryHits: number;
  /** Requests that failed and were retried (the store unavailable, a wrong reply, a corrupt chunk). */
  retries: number;
  corruptChunks: number;
  indexFromCache: boolean;
}

type Priority = ReadPriority;

/** A chunk being loaded: from the disk cache, then (on a miss) the store. */
interface Load {
  readonly chunk: number;
  state: 'cache' | 'queued' | 'fetching';
  priority: Priority;
  waiters: number;
  corruptAttempts: number;
  readonly promise: Promise<Uint8Array>;
  resolve(bytes: Uint8Array): void;
  reject(error: Error): void;
}

type SourceState = 'open' | 'gone' | 'closed';

export class S3Source implements PageSource {
  readonly description: string;
  readonly sizeBytes: number;
  readonly stats: S3SourceStats;
  private readonly settings: Required<Pick<S3SourceOptions, 'deadlineMs' | 'maxInFlight' | 'backgroundRequestBytes' | 'memoryBytes' | 'maxCorruptRetries'>>;
  private stateValue: SourceState = 'open';
  private goneError: Error | undefined;
  private readonly memory = new Map<number, Uint8Array>();
  private memoryBytesUsed = 0;
  private readonly loads = new Map<number, Load>();
  private readonly demandQueue: Load[] = [];
  private readonly backgroundQueue: Load[] = [];
  private readonly corrupt = new Map<number, ChunkCorruptError>();
  private inFlight = 0;
  private readonly requests = new Set<AbortController>();
  private unavailableSince: number | undefined;
  private lastUnavailable: Error | undefined;
  private readonly timers = new Set<NodeJS.Timeout>();
  private retryDelayMs = 20;

  private constructor(
    readonly reader: ObjectReader,
    readonly info: ObjectInfo,
    readonly layout: SnapshotObjectLayout,
    readonly cache: ChunkCache | undefined,
    options: S3SourceOptions,
    opened: { requests: number; bytesRead: number; indexFromCache: boolean },
  ) {
    this.description = `object ${reader.url}`;
    this.sizeBytes = layout.imageSizeBytes;
    this.settings = {
      deadlineMs: options.deadlineMs ?? 30_000,
      maxInFlight: options.maxInFlight ?? 16,
      backgroundRequestBytes: options.backgroundRequestBytes ?? 4 * 1024 * 1024,
      memoryBytes: options.memoryBytes ?? 64 * 1024 * 1024,
      maxCorruptRetries: options.maxCorruptRetries ?? 2,
    };
    this.stats = {
      requests: 0, demandRequests: 0, backgroundRequests: 0, openRequests: opened.requests, bytesFetched: 0, openBytes: opened.bytesRead,
      chunksFetched: 0, cacheHits: 0, memoryHits: 0, retries: 0, corruptChunks: 0, indexFromCache: opened.indexFromCache,
    };
  }

  /**
   * Open s3://BUCKET/KEY: HEAD, then the header and index (from the chunk
   * cache when this object version's index is there). Rejects with an
   * S3Error (the store) or a SnapshotObjectFormatError (the object).
   */
  static async open(url: string, options: S3SourceOptions = {}): Promise<S3Source> {
    const object = S3Object.open(parseS3Url(url), { requestTimeoutMs: 5_000, ...options });
    try {
      return await S3Source.openReader(object, options);
    } catch (error) {
      object.close();
      throw error;
    }
  }

  /** Open over any ObjectReader (tests put hostile ones here); the source closes it. */
  static async openReader(reader: ObjectReader, options: S3SourceOptions = {}): Promise<S3Source> {
    const cache = options.cacheDir === false ? undefined : new ChunkCache({ directory: options.cacheDir, maxBytes: options.cacheMaxBytes });
    const opened = await openSnapshotObject(reader, { indexCache: cache });
    return new S3Source(reader, opened.info, opened.layout, cache, options, opened);
  }

  /** The snapshot's metadata (a VM snapshot's VM state). */
  get metadata(): Uint8Array {
    return this.layout.metadata;
  }

  get state(): SourceState {
    return this.stateValue;
  }

  isZero(offset: number, length: number): boolean {
    return this.layout.isZero(offset, length);
  }

  /** The fast path: every chunk the range needs is in memory. */
  readSync(offset: number, length: number, target: Uint8Array): boolean {
    if (this.stateValue !== 'open') return false;
    checkReadRange(this, offset, length);
    const pieces = [...this.layout.planRead(offset, length)];
    for (const piece of pieces) if (piece.type === 'data' && !this.memory.has(piece.chunk)) return false;
    this.copy(pieces, target, (chunk) => this.fromMemory(chunk)!);
    return true;
  }

  read(offset: number, length: number, target: Uint8Array, options: ReadOptions = {}): Promise<void> {
    if (this.stateValue !== 'open') return Promise.reject(this.goneReadError(offset, length));
    try {
      checkReadRange(this, offset, length);
    } catch (error) {
      return Promise.reject(error);
    }
    if (target.length < length) return Promise.reject(new RangeError(`target holds ${target.length} bytes, ${length} asked for`));
    if (options.signal?.aborted) return Promise.reject(abortError());
    const pieces = [...this.layout.planRead(offset, length)];
    const chunks = new Map<number, Uint8Array | undefined>();
    for (const piece of pieces) if (piece.type === 'data') chunks.set(piece.chunk, undefined);
    const waiting: Load[] = [];
    for (const chunk of chunks.keys()) {
      const known = this.corrupt.get(chunk);
      if (known) return Promise.reject(this.corruptReadError(offset, length, chunk, known));
      const bytes = this.fromMemory(chunk);
      if (bytes) chunks.set(chunk, bytes);
      else waiting.push(this.loadFor(chunk, options.priority ?? 'demand'));
    }
    if (waiting.length === 0) {
      this.copy(pieces, target, (chunk) => chunks.get(chunk)!);
      return Promise.resolve();
    }
    return new Promise<void>((resolve, reject) => {
      let settled = false;
      const finish = (error: Error | undefined): void => {
        if (settled) return;
        settled = true;
        options.signal?.removeEventListener('abort', onAbort);
        for (const load of waiting) this.release(load);
        if (error) return reject(error);
        // Every chunk passed its check: only now is anything copied.
        this.copy(pieces, target, (chunk) => chunks.get(chunk)!);
        resolve();
      };
      const onAbort = (): void => finish(abortError());
      options.signal?.addEventListener('abort', onAbort, { once: true });
      let left = waiting.length;
      for (const load of waiting) {
        load.promise.then(
          (bytes) => {
            chunks.set(load.chunk, bytes);
            if (--left === 0) finish(undefined);
          },
          (error: Error) => {
            if (error instanceof ChunkCorruptError) finish(this.corruptReadError(offset, length, load.chunk, error));
            else if (this.stateValue !== 'open') finish(this.goneReadError(offset, length));
            else finish(error);
          },
        );
      }
    });
  }

  /** Abort every request; every read still waiting rejects with SourceGoneError. */
  async close(): Promise<void> {
    if (this.stateValue === 'closed') return;
    if (this.stateValue === 'open') this.goneError = new Error('the source was closed');
    this.stateValue = 'closed';
    this.failAll();
    this.reader.close();
  }

  // ---- loading ----

  private fromMemory(chunk: number): Uint8Array | undefined {
    const bytes = this.memory.get(chunk);
    if (bytes === undefined) return undefined;
    // Most recently used last.
    this.memory.delete(chunk);
    this.memory.set(chunk, bytes);
    this.stats.memoryHits++;
    return bytes;
  }

  private remember(chunk: number, bytes: Uint8Array): void {
    if (this.memory.has(chunk)) return;
    this.memory.set(chunk, bytes);
    this.memoryBytesUsed += bytes.length;
    for (const [old, oldBytes] of this.memory) {
      if (this.memoryBytesUsed <= this.settings.memoryBytes || old === chunk) break;
      this.memory.delete(old);
      this.memoryBytesUsed -= oldBytes.length;
    }
  }

  /** The load of a chunk a read of `priority` waits for (joined, or begun). */
  private loadFor(chunk: number, priority: Priority): Load {
    const existing = this.loads.get(chunk);
    if (existing) {
      existing.waiters++;
      if (priority === 'demand' && existing.priority === 'background') {
        existing.priority = 'demand';
        // Not sent yet: it jumps ahead of every background chunk.
        const at = this.backgroundQueue.indexOf(existing);
        if (at !== -1) {
          this.backgroundQueue.splice(at, 1);
          this.demandQueue.push(existing);
          this.pump();
        }
      }
      return existing;
    }
    let resolve!: (bytes: Uint8Array) => void;
    let reject!: (error: Error) => void;
    const promise = new Promise<Uint8Array>((res, rej) => {
      resolve = res;
      reject = rej;
    });
    // Nobody may be listening when a load fails after its waiters left.
    promise.catch(() => undefined);
    const load: Load = { chunk, state: 'cache', priority, waiters: 1, corruptAttempts: 0, promise, resolve, reject };
    this.loads.set(chunk, load);
    void this.loadFromCache(load);
    return load;
  }

  private async loadFromCache(load: Load): Promise<void> {
    const { lengthBytes } = this.layout.chunkRange(load.chunk);
    const bytes = lengthBytes === 0 ? new Uint8Array(0) : await this.cache?.get(this.layout.chunks.sha256Hex(load.chunk), lengthBytes).catch(() => undefined);
    if (this.loads.get(load.chunk) !== load) return;
    if (bytes !== undefined) {
      if (lengthBytes > 0) this.stats.cacheHits++;
      this.loaded(load, bytes);
      return;
    }
    if (load.waiters === 0) {
      this.loads.delete(load.chunk);
      return;
    }
    this.enqueue(load);
  }

  private enqueue(load: Load): void {
    load.state = 'queued';
    (load.priority === 'demand' ? this.demandQueue : this.backgroundQueue).push(load);
    this.pump();
  }

  private loaded(load: Load, bytes: Uint8Array): void {
    this.loads.delete(load.chunk);
    this.remember(load.chunk, bytes);
    load.resolve(bytes);
  }

  /** A read no longer waits for this load; one nobody waits for is dropped (or its request aborted). */
  private release(load: Load): void {
    load.waiters--;
    if (load.waiters > 0 || this.loads.get(load.chunk) !== load) return;
    if (load.state === 'queued') {
      for (const queue of [this.demandQueue, this.backgroundQueue]) {
        const at = queue.indexOf(load);
        if (at !== -1) queue.splice(at, 1);
      }
      this.loads.delete(load.chunk);
    }
    // 'fetching': the request goes on (other chunks of it may be wanted) and the chunk is kept.
  }

  /** Send queued chunks while there is room: demand first, background after. */
  private pump(): void {
    while (this.stateValue === 'open' && this.inFlight < this.settings.maxInFlight) {
      const demand = this.demandQueue.length > 0;
      const queue = demand ? this.demandQueue : this.backgroundQueue;
      if (queue.length === 0) return;
      const batch = this.takeBatch(queue, demand ? this.demandRequestBytes() : this.settings.backgroundRequestBytes);
      void this.fetch(batch, demand ? 'demand' : 'background');
    }
  }

  /** A demand request carries what its read needs, plus adjacent queued demand chunks (a fault's run across a chunk boundary). */
  private demandRequestBytes(): number {
    return 2 * this.layout.header.chunkPages * this.layout.pageSize;
  }

  /** The first queued chunk, and the queued chunks right after it in the object, up to maxBytes. */
  private takeBatch(queue: Load[], maxBytes: number): Load[] {
    queue.sort((a, b) => a.chunk - b.chunk);
    const first = queue.shift()!;
    const batch = [first];
    let bytes = this.layout.chunkRange(first.chunk).lengthBytes;
    let next = first.chunk + 1;
    for (;;) {
      const at = queue.findIndex((load) => load.chunk === next);
      if (at === -1) break;
      const length = this.layout.chunkRange(next).lengthBytes;
      if (bytes + length > maxBytes) break;
      batch.push(queue.splice(at, 1)[0]!);
      bytes += length;
      next++;
    }
    for (const load of batch) load.state = 'fetching';
    return batch;
  }

  private async fetch(batch: Load[], priority: Priority): Promise<void> {
    this.inFlight++;
    this.stats.requests++;
    if (priority === 'demand') this.stats.demandRequests++;
    else this.stats.backgroundRequests++;
    const start = this.layout.chunkRange(batch[0]!.chunk);
    const end = this.layout.chunkRange(batch.at(-1)!.chunk);
    const length = end.offset + end.lengthBytes - start.offset;
    const controller = new AbortController();
    this.requests.add(controller);
    let bytes: Uint8Array | undefined;
    let failure: unknown;
    try {
      bytes = await this.reader.readRange(start.offset, length, { etag: this.info.etag, signal: controller.signal });
    } catch (error) {
      failure = error;
    } finally {
      this.requests.delete(controller);
      this.inFlight--;
    }
    if (this.stateValue !== 'open') return;
    if (bytes !== undefined && bytes.length !== length) {
      // The reader's own checks should have caught it; a reader is not trusted to.
      failure = new StoreResponseError(this.reader.url, `a read of ${length} bytes at ${start.offset} returned ${bytes.length}`);
      bytes = undefined;
    }
    if (bytes !== undefined) {
      this.stats.bytesFetched += bytes.length;
      this.unavailableSince = undefined;
      this.retryDelayMs = 20;
      for (const load of batch) this.checkAndDeliver(load, bytes.subarray(this.layout.chunkRange(load.chunk).offset - start.offset, this.layout.chunkRange(load.chunk).offset - start.offset + this.layout.chunkRange(load.chunk).lengthBytes));
    } else {
      this.fetchFailed(batch, failure);
    }
    this.pump();
  }

  private checkAndDeliver(load: Load, piece: Uint8Array): void {
    const expected = this.layout.chunks.sha256Hex(load.chunk);
    const actual = createHash('sha256').update(piece).digest('hex');
    if (actual !== expected) {
      const error = new ChunkCorruptError(load.chunk, this.layout.chunkRange(load.chunk).offset, this.layout.chunkImageOffset(load.chunk), expected, actual, `the store (${this.reader.url})`);
      this.stats.corruptChunks++;
      if (load.corruptAttempts++ < this.settings.maxCorruptRetries) {
        this.stats.retries++;
        this.retry(load);
        return;
      }
      this.corrupt.set(load.chunk, error);
      this.loads.delete(load.chunk);
      load.reject(error);
      return;
    }
    this.stats.chunksFetched++;
    // A copy of its own: the request's buffer may hold chunks not kept.
    const bytes = piece.byteOffset === 0 && piece.length === piece.buffer.byteLength ? piece : piece.slice();
    this.loaded(load, bytes);
    if (this.cache) void this.cache.put(expected, bytes);
  }

  private fetchFailed(batch: Load[], error: unknown): void {
    const transient = error instanceof S3Error ? error.transient : !(error instanceof Error && error.name === 'AbortError');
    if (!transient) {
      // The object is gone, changed or refused: nothing it could still send can be trusted or had.
      this.goneFor(error as Error);
      return;
    }
    this.stats.retries++;
    const now = performance.now();
    this.unavailableSince ??= now;
    this.lastUnavailable = error as Error;
    if (now - this.unavailableSince >= this.settings.deadlineMs) {
      this.goneFor(new StoreUnavailableError(this.reader.url, `it did not answer for ${Math.round(now - this.unavailableSince)} ms, past the deadline of ${this.settings.deadlineMs} ms (last: ${(error as Error).message})`, { cause: error }));
      return;
    }
    for (const load of batch) this.retry(load);
  }

  /** Queue a chunk again after a pause (doubling to 1 s); dropped if nobody waits by then. */
  private retry(load: Load): void {
    load.state = 'queued';
    const delay = this.retryDelayMs;
    this.retryDelayMs = Math.min(1_000, this.retryDelayMs * 2);
    const timer = setTimeout(() => {
      this.timers.delete(timer);
      if (this.stateValue !== 'open' || this.loads.get(load.chunk) !== load) return;
      if (load.waiters === 0) {
        this.loads.delete(load.chunk);
        return;
      }
      (load.priority === 'demand' ? this.demandQueue : this.backgroundQueue).push(load);
      this.pump();
    }, delay);
    this.timers.add(timer);
    // While the deadline runs, a timer must not end before the reads it serves: the deadline itself is checked on each failure.
    this.checkDeadlineLater();
  }

  private deadlineTimer: NodeJS.Timeout | undefined;

  /** A store that holds requests without failing them is caught by the request timeout; this catches one whose retries are all paused. */
  private checkDeadlineLater(): void {
    if (this.deadlineTimer || this.unavailableSince === undefined) return;
    const left = this.settings.deadlineMs - (performance.now() - this.unavailableSince);
    this.deadlineTimer = setTimeout(() => {
      this.deadlineTimer = undefined;
      if (this.stateValue !== 'open' || this.unavailableSince === undefined) return;
      const waited = performance.now() - this.unavailableSince;
      if (waited >= this.settings.deadlineMs) {
        this.goneFor(new StoreUnavailableError(this.reader.url, `it did not answer for ${Math.round(waited)} ms, past the deadline of ${this.settings.deadlineMs} ms (last: ${this.lastUnavailable?.message ?? 'none'})`, { cause: this.lastUnavailable }));
      } else {
        this.checkDeadlineLater();
      }
    }, Math.max(10, left + 5));
  }

  private goneFor(error: Error): void {
    if (this.stateValue !== 'open') return;
    this.stateValue = 'gone';
    this.goneError = error;
    this.failAll();
  }

  private failAll(): void {
    for (const controller of this.requests) controller.abort();
    this.requests.clear();
    for (const timer of this.timers) clearTimeout(timer);
    this.timers.clear();
    clearTimeout(this.deadlineTimer);
    const error = this.goneError ?? new Error('the source is gone');
    for (const load of this.loads.values()) load.reject(error);
    this.loads.clear();
    this.demandQueue.length = 0;
    this.backgroundQueue.length = 0;
  }

  private copy(pieces: readonly ReadPiece[], target: Uint8Array, chunkBytes: (chunk: number) => Uint8Array): void {
    for (const piece of pieces) {
      if (piece.type === 'zero') target.fill(0, piece.targetOffset, piece.targetOffset + piece.lengthBytes);
      else target.set(chunkBytes(piece.chunk).subarray(piece.chunkOffset, piece.chunkOffset + piece.lengthBytes), piece.targetOffset);
    }
  }

  private corruptReadError(offset: number, length: number, chunk: number, error: ChunkCorruptError): SourceReadError {
    // The first byte of the read that lies in the corrupt chunk: the pager poisons it and tries the rest page by page.
    let failedOffset = offset;
    for (const piece of this.layout.planRead(offset, length)) {
      if (piece.type === 'data' && piece.chunk === chunk) {
        failedOffset = offset + piece.targetOffset;
        break;
      }
    }
    return new SourceReadError(offset, length, `${this.description}: ${error.message}`, { cause: error, failure: 'fatal', failedOffset });
  }

  private goneReadError(offset: number, length: number): SourceGoneError {
    const reason = this.goneError?.message ?? 'the source is gone';
    return new SourceGoneError(offset, length, `${this.description}: ${reason}`, { cause: this.goneError });
  }
}

function abortError(): Error {
  return new DOMException('the read was aborted', 'AbortError');
}
