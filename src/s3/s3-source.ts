// Pages from a snapshot object in an S3-compatible store (`userfault snapshot
// push`; the layout is src/snapshot/object-layout.ts, docs/s3.md): a
// PageSource like any other, so the pager, LazyMemory, the handler service and
// the VMM restore straight from object storage.
//
// The object's page data is cut into chunks (256 KiB of image by default),
// the unit of checking (a SHA-256 each) and of caching. A read needs some
// stored pages of some chunks; each comes from, in order: this process's
// memory, the host's chunk cache on disk (src/sources/chunk-cache.ts, shared
// by every restore), or the store, by range request:
//
//   - a background read (read-ahead, the working set, prefetch-all) fetches
//     whole chunks, consecutive ones in one request of up to
//     backgroundRequestBytes, each checked against its SHA-256 and cached;
//   - a demand read (a thread is blocked) fetches only the stored pages it
//     needs, each checked against its page table's CRC32, so what faults
//     fetch stays close to what they touch (docs/s3.md: the numbers). Those
//     pages are kept with the rest of their chunk's fetched so far, written
//     to the cache as a part file, and make a whole chunk once all are here.
//
// Nothing is copied into a read's target until every page it needs passed
// its check. Range requests are bounded (maxInFlight) and demand first: a
// fault's pages are sent before any read-ahead, and a queued background chunk
// that a fault then needs moves to the demand queue.
//
// A load's life (its states are every network request's: the table in
// src/sources/network/request-state.ts, 'local' being the cache; the request
// table there counts the reads waiting and delivers):
//
//   begun ──▶ cache (disk: whole chunk, or part file) ──hit──▶ done
//               └──miss──▶ queued (demand | background) ──sent──▶ fetching ──checked──▶ done (kept, cached)
//                            ▲                                       ├──store unavailable / wrong reply──▶ queued again after a pause,
//                            └───────────────────────────────────────┤    until the deadline (then the source is gone)
//                                                                    ├──SHA-256 / CRC32 mismatch──▶ queued again (maxCorruptRetries), then refused
//                                                                    └──object changed, missing, refused──▶ the source is gone
//
// A store that stops answering is not a failed read: the chunk is asked for
// again (each request bounded by requestTimeoutMs) while the faulting thread
// waits, as it must (not zeroes, not SIGBUS); only a store unavailable for
// deadlineMs makes the source gone (SourceGoneError, fatal, for every read),
// and the owner's policy poisons the pages.
import { createHash } from 'node:crypto';
import { ChunkCorruptError } from '../snapshot/object-errors.js';
import type { ReadPiece, SnapshotObjectLayout } from '../snapshot/object-layout.js';
import { S3Error, StoreResponseError, StoreUnavailableError } from './errors.js';
import { S3Object, type ObjectInfo, type ObjectReader, type S3StoreOptions } from './s3-object.js';
import { parseS3Url } from './s3-url.js';
import { openSnapshotObject } from './snapshot-object.js';
import { PageKind, pageChecksumName } from '../snapshot/format.js';
import { ChunkCache, type PageCheck } from '../sources/chunk-cache.js';
import { SourceReadError, checkReadRange, readRequestRefusal, type PageSource, type ReadOptions, type ReadPriority } from '../sources/page-source.js';
import { SourceAvailability, type AvailabilityEvent, type AvailabilityStats, type Outage } from '../sources/network/availability.js';
import { RequestTable, type NetworkRequest, type PendingRead } from '../sources/network/request-table.js';
import type { SourceState } from '../sources/network/source-state.js';

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
  /** Chunk bytes kept in this process's memory (default 64 MiB). */
  memoryBytes?: number;
  /** Times a chunk that fails its check is fetched again before it is given up as corrupt (default 2). */
  maxCorruptRetries?: number;
  /**
   * What a demand read fetches of a chunk not here: 'pages', only the stored
   * pages it needs (each checked against its page table's CRC32; the default),
   * or 'chunk', the whole chunk (checked against its SHA-256).
   */
  demandFetch?: 'pages' | 'chunk';
}

export interface S3SourceStats {
  /** Range requests sent for pages (retries included), and by priority. */
  requests: number;
  demandRequests: number;
  backgroundRequests: number;
  /** Requests to open the object (HEAD, header and index). */
  openRequests: number;
  /** Page bytes received from the store (opening not included). */
  bytesFetched: number;
  openBytes: number;
  /** Whole chunks received, and demand fetches of part of a chunk. */
  chunksFetched: number;
  pageRunsFetched: number;
  /** Whole chunks found in the disk cache, part files that served a read, and reads served from memory. */
  cacheHits: number;
  partialCacheHits: number;
  memoryHits: number;
  /** Requests that failed and were retried (the store unavailable, a wrong reply, a corrupt chunk). */
  retries: number;
  corruptChunks: number;
  indexFromCache: boolean;
}

type Priority = ReadPriority;

/** Some of a chunk's stored pages, fetched by demand reads of part of it. */
interface PartialState {
  readonly pages: (Uint8Array | undefined)[];
  present: number;
  /** Pages fetched since it was last written to the disk cache. */
  dirty: boolean;
}

/** What a load resolves with: the chunk whole, or the pages of it fetched so far (the load's among them). */
type ChunkData = { readonly whole: Uint8Array } | { readonly partial: PartialState };

/**
 * A fetch being made: a whole chunk (from the disk cache, else the store), or
 * for a demand read the stored pages [firstPage, firstPage + pageCount) of one.
 * Its state moves only through the request table (REQUEST_STATES).
 */
interface Load extends NetworkRequest<ChunkData> {
  readonly chunk: number;
  readonly whole: boolean;
  readonly firstPage: number;
  readonly pageCount: number;
  priority: Priority;
  corruptAttempts: number;
}

export class S3Source implements PageSource {
  readonly description: string;
  readonly sizeBytes: number;
  readonly stats: S3SourceStats;
  private readonly settings: Required<Pick<S3SourceOptions, 'deadlineMs' | 'maxInFlight' | 'backgroundRequestBytes' | 'memoryBytes' | 'maxCorruptRetries' | 'demandFetch'>>;
  private readonly availability = new SourceAvailability({ description: () => this.description, onEnd: () => this.failAll(), readsWaiting: () => this.table.pendingReads });
  /** The store out of reach: the backoff between retries, and the deadline after which the source is gone. */
  private readonly outage: Outage;
  /** Every load live, by what it fetches: a read needing the same joins it. A load nobody waits for is dropped before it is sent; one being fetched goes on (other chunks of its request may be wanted) and what it brings is kept. */
  private readonly table = new RequestTable<Load, ChunkData>({ dequeue: (load) => this.dequeue(load), cancel: () => false });
  /** Whole chunks, least recently used first. */
  private readonly memory = new Map<number, Uint8Array>();
  private memoryBytesUsed = 0;
  private readonly partials = new Map<number, PartialState>();
  private partialBytesUsed = 0;
  /** Chunks whose part file was looked for already. */
  private readonly partialLooked = new Set<number>();
  private readonly storedIndexCache = new Map<number, Int32Array>();
  private readonly demandQueue: Load[] = [];
  private readonly backgroundQueue: Load[] = [];
  private readonly corrupt = new Map<number, ChunkCorruptError>();
  private inFlight = 0;
  private readonly requests = new Set<AbortController>();
  private readonly timers = new Set<NodeJS.Timeout>();
  private flushTimer: NodeJS.Timeout | undefined;
  private flushing: Promise<void> | undefined;
  /** Writes to the disk cache not yet done (close waits for them: a process about to exit still leaves its chunks). */
  private readonly pendingWrites = new Set<Promise<unknown>>();

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
      demandFetch: options.demandFetch ?? 'pages',
    };
    this.outage = this.availability.outage({
      deadlineMs: this.settings.deadlineMs,
      initialDelayMs: 20,
      maxDelayMs: 1_000,
      expired: (waitedMs, last) => new StoreUnavailableError(reader.url, `it did not answer for ${Math.round(waitedMs)} ms, past the deadline of ${this.settings.deadlineMs} ms (last: ${last?.message ?? 'none'})`, { cause: last }),
    });
    this.stats = {
      requests: 0, demandRequests: 0, backgroundRequests: 0, openRequests: opened.requests, bytesFetched: 0, openBytes: opened.bytesRead,
      chunksFetched: 0, pageRunsFetched: 0, cacheHits: 0, partialCacheHits: 0, memoryHits: 0, retries: 0, corruptChunks: 0, indexFromCache: opened.indexFromCache,
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
    return this.availability.state;
  }

  /** The store's outages so far (transient failures until a request succeeds), and the current one. */
  get availabilityStats(): AvailabilityStats {
    return this.availability.availabilityStats;
  }

  /** Hear the store become unreachable, come back, or be given up (AvailabilityEvent). */
  onAvailability(listener: (event: AvailabilityEvent) => void): () => void {
    return this.availability.onAvailability(listener);
  }

  isZero(offset: number, lengthBytes: number): boolean {
    return this.layout.isZero(offset, lengthBytes);
  }

  /** The fast path: every page the range needs is in memory. */
  readSync(offset: number, lengthBytes: number, target: Uint8Array): boolean {
    if (!this.availability.isOpen) return false;
    checkReadRange(this, offset, lengthBytes);
    const pieces = [...this.layout.planRead(offset, lengthBytes)];
    const data = new Map<number, ChunkData>();
    for (const [chunk, need] of this.needs(pieces)) {
      const here = this.inMemory(chunk, need.first, need.end);
      if (here === undefined) return false;
      data.set(chunk, here);
    }
    this.copy(pieces, target, data);
    return true;
  }

  read(offset: number, lengthBytes: number, target: Uint8Array, options: ReadOptions = {}): Promise<void> {
    if (!this.availability.isOpen) return Promise.reject(this.availability.readError(offset, lengthBytes));
    const refusal = readRequestRefusal(this, offset, lengthBytes, target, options.signal);
    if (refusal) return Promise.reject(refusal);
    const priority = options.priority ?? 'demand';
    const pieces = [...this.layout.planRead(offset, lengthBytes)];
    const data = new Map<number, ChunkData>();
    const missing: Array<{ chunk: number; first: number; end: number }> = [];
    for (const [chunk, need] of this.needs(pieces)) {
      const known = this.corrupt.get(chunk);
      if (known) return Promise.reject(this.corruptReadError(offset, lengthBytes, chunk, known));
      const here = this.inMemory(chunk, need.first, need.end);
      if (here) data.set(chunk, here);
      else missing.push({ chunk, ...need });
    }
    return this.table.read({
      offset,
      lengthBytes,
      priority,
      signal: options.signal,
      onPart: (load, chunkData) => data.set((load as Load).chunk, chunkData),
      // Every page passed its check: only now is anything copied.
      onComplete: () => this.copy(pieces, target, data),
    }, (read) => {
      for (const { chunk, first, end } of missing) this.loadFor(read, chunk, first, end, priority);
    });
  }

  /** Abort every request and write what part files are due; every read still waiting rejects with SourceGoneError. */
  async close(): Promise<void> {
    if (!this.availability.close(new Error('the source was closed'))) return;
    clearTimeout(this.flushTimer);
    this.cacheWrite(this.flushPartials());
    // Bounded: a cache on a disk that hangs must not hold the close.
    await Promise.race([Promise.allSettled([...this.pendingWrites]), new Promise((resolve) => setTimeout(resolve, 5_000).unref())]);
    this.reader.close();
  }

  // ---- what a read needs, and what is here ----

  /** For each chunk a read touches, the range of its stored pages it needs. */
  private needs(pieces: readonly ReadPiece[]): Map<number, { first: number; end: number }> {
    const page = this.layout.pageSize;
    const out = new Map<number, { first: number; end: number }>();
    for (const piece of pieces) {
      if (piece.type !== 'data') continue;
      const first = Math.floor(piece.chunkOffset / page);
      const end = Math.ceil((piece.chunkOffset + piece.lengthBytes) / page);
      const known = out.get(piece.chunk);
      out.set(piece.chunk, known ? { first: Math.min(known.first, first), end: Math.max(known.end, end) } : { first, end });
    }
    return out;
  }

  private inMemory(chunk: number, first: number, end: number): ChunkData | undefined {
    const whole = this.memory.get(chunk);
    if (whole) {
      this.memory.delete(chunk);
      this.memory.set(chunk, whole);
      this.stats.memoryHits++;
      return { whole };
    }
    const partial = this.partials.get(chunk);
    if (partial && covers(partial, first, end)) {
      this.stats.memoryHits++;
      return { partial };
    }
    return undefined;
  }

  private remember(chunk: number, bytes: Uint8Array): void {
    this.dropPartialState(chunk);
    if (this.memory.has(chunk)) return;
    this.memory.set(chunk, bytes);
    this.memoryBytesUsed += bytes.length;
    for (const [old, oldBytes] of this.memory) {
      if (this.memoryBytesUsed <= this.settings.memoryBytes || old === chunk) break;
      this.memory.delete(old);
      this.memoryBytesUsed -= oldBytes.length;
    }
  }

  private dropPartialState(chunk: number): void {
    const partial = this.partials.get(chunk);
    if (!partial) return;
    this.partials.delete(chunk);
    this.partialBytesUsed -= partial.present * this.layout.pageSize;
  }

  /** The page-table indexes of a chunk's stored pages, in order (for their CRCs). */
  private storedIndexes(chunk: number): Int32Array {
    let indexes = this.storedIndexCache.get(chunk);
    if (indexes) return indexes;
    const { kinds } = this.layout.pageTable;
    const { chunkPages } = this.layout.header;
    indexes = new Int32Array(this.layout.chunks.storedPages[chunk]!);
    let n = 0;
    const end = Math.min(this.layout.pageTable.pageCount, (chunk + 1) * chunkPages);
    for (let page = chunk * chunkPages; page < end; page++) if (kinds[page] === PageKind.data) indexes[n++] = page;
    this.storedIndexCache.set(chunk, indexes);
    return indexes;
  }

  private pageCheck(chunk: number): PageCheck {
    const indexes = this.storedIndexes(chunk);
    return (i, page) => i < indexes.length && this.layout.pageChecksum(page) === this.layout.pageTable.crc32s[indexes[i]!];
  }

  // ---- loading ----

  /** `read` waits for the load of stored pages [first, end) of `chunk`: one live already (joined), or a new one. */
  private loadFor(read: PendingRead<ChunkData>, chunk: number, first: number, end: number, priority: Priority): void {
    const whole = this.table.get(`w${chunk}`);
    if (whole) return this.join(read, whole, priority);
    if (priority === 'background' || this.settings.demandFetch === 'chunk') return this.begin(read, chunk, true, 0, this.layout.chunks.storedPages[chunk]!, priority);
    // Only the pages not here yet.
    const partial = this.partials.get(chunk);
    while (partial && first < end && partial.pages[first]) first++;
    while (partial && end > first && partial.pages[end - 1]) end--;
    const existing = this.table.get(`p${chunk}:${first}+${end - first}`);
    if (existing) return this.join(read, existing, priority);
    this.begin(read, chunk, false, first, end - first, priority);
  }

  private join(read: PendingRead<ChunkData>, load: Load, priority: Priority): void {
    this.table.join(read, load);
    if (priority === 'demand' && load.priority === 'background') {
      load.priority = 'demand';
      // Not sent yet: it jumps ahead of every background chunk.
      const at = this.backgroundQueue.indexOf(load);
      if (at !== -1) {
        this.backgroundQueue.splice(at, 1);
        this.demandQueue.push(load);
        this.pump();
      }
    }
  }

  private begin(read: PendingRead<ChunkData>, chunk: number, whole: boolean, firstPage: number, pageCount: number, priority: Priority): void {
    const key = whole ? `w${chunk}` : `p${chunk}:${firstPage}+${pageCount}`;
    const load = this.table.add({ key, chunk, whole, firstPage, pageCount, state: 'local', priority, waiters: new Set(), corruptAttempts: 0 });
    // Joined before the cache is looked in: a lookup may end at once.
    this.table.join(read, load);
    void this.loadFromCache(load);
  }

  /** Memory and the disk cache first; a load still 'local' after each wait is still wanted (one nobody waits for is dropped). */
  private async loadFromCache(load: Load): Promise<void> {
    const { chunk } = load;
    const { lengthBytes } = this.layout.chunkRange(chunk);
    const sha = this.layout.chunks.sha256Hex(chunk);
    const bytes = lengthBytes === 0 ? new Uint8Array(0) : await this.cache?.get(sha, lengthBytes).catch(() => undefined);
    if (load.state !== 'local') return;
    if (bytes !== undefined) {
      if (lengthBytes > 0) this.stats.cacheHits++;
      this.finishedWhole(load, bytes, 'local-hit');
      return;
    }
    if (!load.whole && this.cache && !this.partialLooked.has(chunk)) {
      this.partialLooked.add(chunk);
      const part = await this.cache.getPartial(sha, this.layout.chunks.storedPages[chunk]!, this.layout.pageSize, this.pageCheck(chunk)).catch(() => undefined);
      if (load.state !== 'local') return;
      if (part) this.mergePages(chunk, part.have, part.bytes, false);
      const partial = this.partials.get(chunk);
      if (partial && covers(partial, load.firstPage, load.firstPage + load.pageCount)) {
        this.stats.partialCacheHits++;
        this.table.deliver(load, { partial }, 'local-hit');
        return;
      }
    }
    this.table.move(load, 'local-miss');
    (load.priority === 'demand' ? this.demandQueue : this.backgroundQueue).push(load);
    this.pump();
  }

  private finishedWhole(load: Load, bytes: Uint8Array, event: 'local-hit' | 'delivered'): void {
    this.remember(load.chunk, bytes);
    this.table.deliver(load, { whole: bytes }, event);
  }

  /** Pages of a chunk, checked, into its partial state (a whole chunk when that completes it). */
  private mergePages(chunk: number, have: Uint8Array | undefined, bytes: Uint8Array, fresh: boolean, firstPage = 0): void {
    if (this.memory.has(chunk)) return;
    const page = this.layout.pageSize;
    const stored = this.layout.chunks.storedPages[chunk]!;
    let partial = this.partials.get(chunk);
    if (!partial) {
      partial = { pages: new Array<Uint8Array | undefined>(stored), present: 0, dirty: false };
      this.partials.set(chunk, partial);
    }
    const count = have ? stored : bytes.length / page;
    for (let i = 0; i < count; i++) {
      const at = firstPage + i;
      if (have && !have[i]) continue;
      if (partial.pages[at]) continue;
      partial.pages[at] = bytes.slice(i * page, (i + 1) * page);
      partial.present++;
      this.partialBytesUsed += page;
      if (fresh) partial.dirty = true;
    }
    if (partial.present === stored) {
      // Complete: one buffer, checked against the chunk's SHA-256 like a whole fetch, and cached as a whole chunk.
      const whole = new Uint8Array(stored * page);
      partial.pages.forEach((p, i) => whole.set(p!, i * page));
      const sha = this.layout.chunks.sha256Hex(chunk);
      if (createHash('sha256').update(whole).digest('hex') === sha) {
        this.remember(chunk, whole);
        this.cacheWrite(this.cache?.put(sha, whole));
      }
      return;
    }
    if (fresh) this.scheduleFlush();
    if (this.partialBytesUsed > this.settings.memoryBytes) void this.shedPartials();
  }

  private cacheWrite(write: Promise<unknown> | undefined): void {
    if (!write) return;
    const tracked = write.catch(() => undefined).finally(() => this.pendingWrites.delete(tracked));
    this.pendingWrites.add(tracked);
  }

  /** Over the memory bound: write the part files due, then let the oldest partial chunks go. */
  private async shedPartials(): Promise<void> {
    await this.flushPartials().catch(() => undefined);
    for (const chunk of this.partials.keys()) {
      if (this.partialBytesUsed <= this.settings.memoryBytes / 2) break;
      if (this.partials.get(chunk)?.dirty) continue;
      this.dropPartialState(chunk);
      this.partialLooked.delete(chunk);
    }
  }

  private scheduleFlush(): void {
    if (!this.cache || this.flushTimer) return;
    this.flushTimer = setTimeout(() => {
      this.flushTimer = undefined;
      this.cacheWrite(this.flushPartials());
    }, 500);
    this.flushTimer.unref();
  }

  /** Write the part file of every chunk with pages fetched since its last. */
  private async flushPartials(): Promise<void> {
    if (!this.cache) return;
    await this.flushing;
    const page = this.layout.pageSize;
    const due = [...this.partials].filter(([, partial]) => partial.dirty);
    this.flushing = (async () => {
      for (const [chunk, partial] of due) {
        partial.dirty = false;
        const stored = partial.pages.length;
        const have = new Uint8Array(stored);
        const bytes = new Uint8Array(stored * page);
        partial.pages.forEach((p, i) => {
          if (!p) return;
          have[i] = 1;
          bytes.set(p, i * page);
        });
        await this.cache!.putPartial(this.layout.chunks.sha256Hex(chunk), { have, bytes }, page, this.pageCheck(chunk));
      }
    })();
    await this.flushing;
  }

  /** A queued load nobody waits for leaves its queue (it may be out of both, waiting out a retry's pause). */
  private dequeue(load: Load): void {
    for (const queue of [this.demandQueue, this.backgroundQueue]) {
      const at = queue.indexOf(load);
      if (at !== -1) queue.splice(at, 1);
    }
  }

  /** Send queued loads while there is room: demand first, background after. */
  private pump(): void {
    while (this.availability.isOpen && this.inFlight < this.settings.maxInFlight) {
      const demand = this.demandQueue.length > 0;
      const queue = demand ? this.demandQueue : this.backgroundQueue;
      if (queue.length === 0) return;
      const batch = this.takeBatch(queue, demand ? 0 : this.settings.backgroundRequestBytes);
      void this.fetch(batch, demand ? 'demand' : 'background');
    }
  }

  /** The first queued load; for background, the queued whole chunks right after it in the object too, up to maxBytes. */
  private takeBatch(queue: Load[], maxBytes: number): Load[] {
    if (maxBytes > 0) queue.sort((a, b) => a.chunk - b.chunk);
    const first = queue.shift()!;
    const batch = [first];
    if (first.whole && maxBytes > 0) {
      let bytes = this.layout.chunkRange(first.chunk).lengthBytes;
      let next = first.chunk + 1;
      for (;;) {
        const at = queue.findIndex((load) => load.whole && load.chunk === next);
        if (at === -1) break;
        const length = this.layout.chunkRange(next).lengthBytes;
        if (bytes + length > maxBytes) break;
        batch.push(queue.splice(at, 1)[0]!);
        bytes += length;
        next++;
      }
    }
    for (const load of batch) this.table.move(load, 'sent');
    return batch;
  }

  /** Where a load's bytes are in the object. */
  private rangeOf(load: Load): { offset: number; lengthBytes: number } {
    const range = this.layout.chunkRange(load.chunk);
    if (load.whole) return range;
    return { offset: range.offset + load.firstPage * this.layout.pageSize, lengthBytes: load.pageCount * this.layout.pageSize };
  }

  private async fetch(batch: Load[], priority: Priority): Promise<void> {
    this.inFlight++;
    this.stats.requests++;
    if (priority === 'demand') this.stats.demandRequests++;
    else this.stats.backgroundRequests++;
    const start = this.rangeOf(batch[0]!);
    const end = this.rangeOf(batch.at(-1)!);
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
    if (!this.availability.isOpen) return;
    if (bytes !== undefined && bytes.length !== length) {
      // The reader's own checks should have caught it; a reader is not trusted to.
      failure = new StoreResponseError(this.reader.url, `a read of ${length} bytes at ${start.offset} returned ${bytes.length}`);
      bytes = undefined;
    }
    if (bytes !== undefined) {
      this.stats.bytesFetched += bytes.length;
      this.outage.restored();
      for (const load of batch) {
        const range = this.rangeOf(load);
        this.checkAndDeliver(load, bytes.subarray(range.offset - start.offset, range.offset - start.offset + range.lengthBytes));
      }
    } else {
      this.fetchFailed(batch, failure);
    }
    this.pump();
  }

  private checkAndDeliver(load: Load, piece: Uint8Array): void {
    const bad = load.whole ? this.checkWhole(load.chunk, piece) : this.checkPages(load, piece);
    if (bad) {
      this.stats.corruptChunks++;
      if (load.corruptAttempts++ < this.settings.maxCorruptRetries) {
        this.stats.retries++;
        this.retry(load);
        return;
      }
      // A chunk that fails its SHA-256 is refused whole from now on; a page that fails its CRC costs only itself (the pager poisons it).
      if (load.whole) this.corrupt.set(load.chunk, bad);
      this.table.fail(load, (read) => this.corruptReadError(read.offset, read.lengthBytes, load.chunk, bad));
      return;
    }
    if (load.whole) {
      this.stats.chunksFetched++;
      // A copy of its own: the request's buffer may hold chunks not kept.
      const bytes = piece.byteOffset === 0 && piece.length === piece.buffer.byteLength ? piece : piece.slice();
      this.finishedWhole(load, bytes, 'delivered');
      this.cacheWrite(this.cache?.put(this.layout.chunks.sha256Hex(load.chunk), bytes));
      return;
    }
    this.stats.pageRunsFetched++;
    this.mergePages(load.chunk, undefined, piece, true, load.firstPage);
    const whole = this.memory.get(load.chunk);
    this.table.deliver(load, whole ? { whole } : { partial: this.partials.get(load.chunk)! });
  }

  private checkWhole(chunk: number, piece: Uint8Array): ChunkCorruptError | undefined {
    const expected = this.layout.chunks.sha256Hex(chunk);
    const actual = createHash('sha256').update(piece).digest('hex');
    if (actual === expected) return undefined;
    return new ChunkCorruptError({ chunkIndex: chunk, objectOffset: this.layout.chunkRange(chunk).offset, imageOffset: this.layout.chunkImageOffset(chunk), from: `the store (${this.reader.url})`, sha256: { expected, actual } });
  }

  private checkPages(load: Load, piece: Uint8Array): ChunkCorruptError | undefined {
    const page = this.layout.pageSize;
    const indexes = this.storedIndexes(load.chunk);
    const { crc32s } = this.layout.pageTable;
    for (let i = 0; i < load.pageCount; i++) {
      const pageIndex = indexes[load.firstPage + i]!;
      const actual = this.layout.pageChecksum(piece.subarray(i * page, (i + 1) * page));
      if (actual === crc32s[pageIndex]) continue;
      return new ChunkCorruptError({
        chunkIndex: load.chunk,
        objectOffset: this.rangeOf(load).offset + i * page,
        imageOffset: this.layout.imageOffsetOfPage(pageIndex),
        from: `the store (${this.reader.url})`,
        crc32: { expected: crc32s[pageIndex]!, actual, pageIndex, checksum: pageChecksumName(this.layout.snapshotHeader.version) },
      });
    }
    return undefined;
  }

  private fetchFailed(batch: Load[], error: unknown): void {
    const transient = error instanceof S3Error ? error.transient : !(error instanceof Error && error.name === 'AbortError');
    if (!transient) {
      // The object is gone, changed or refused: nothing it could still send can be trusted or had.
      this.goneFor(error as Error);
      return;
    }
    this.stats.retries++;
    // Past the deadline the source is gone here and then, and every load with it.
    if (!this.outage.lost(error as Error)) return;
    for (const load of batch) this.retry(load);
  }

  /** Queue a load again after a pause (the outage's backoff: 20 ms doubling to 1 s); dropped meanwhile if nobody waits by then. */
  private retry(load: Load): void {
    this.table.move(load, 'retry');
    const timer = setTimeout(() => {
      this.timers.delete(timer);
      if (!this.availability.isOpen || load.state !== 'queued') return;
      (load.priority === 'demand' ? this.demandQueue : this.backgroundQueue).push(load);
      this.pump();
    }, this.outage.nextDelayMs());
    this.timers.add(timer);
  }

  private goneFor(error: Error): void {
    this.availability.giveUp(error);
  }

  /** The source gave up or closed: every request aborted, every load and read failed (SourceGoneError). */
  private failAll(): void {
    for (const controller of this.requests) controller.abort();
    this.requests.clear();
    for (const timer of this.timers) clearTimeout(timer);
    this.timers.clear();
    this.outage.stop();
    this.demandQueue.length = 0;
    this.backgroundQueue.length = 0;
    this.table.failAll((read) => this.availability.readError(read.offset, read.lengthBytes));
  }

  private copy(pieces: readonly ReadPiece[], target: Uint8Array, data: Map<number, ChunkData>): void {
    const page = this.layout.pageSize;
    for (const piece of pieces) {
      if (piece.type === 'zero') {
        target.fill(0, piece.targetOffset, piece.targetOffset + piece.lengthBytes);
        continue;
      }
      const chunkData = data.get(piece.chunk)!;
      if ('whole' in chunkData) {
        target.set(chunkData.whole.subarray(piece.chunkOffset, piece.chunkOffset + piece.lengthBytes), piece.targetOffset);
        continue;
      }
      // Page by page from the pages fetched (every one this read needs is there).
      for (let done = 0; done < piece.lengthBytes;) {
        const at = piece.chunkOffset + done;
        const index = Math.floor(at / page);
        const within = at - index * page;
        const n = Math.min(page - within, piece.lengthBytes - done);
        target.set(chunkData.partial.pages[index]!.subarray(within, within + n), piece.targetOffset + done);
        done += n;
      }
    }
  }

  private corruptReadError(offset: number, length: number, chunk: number, error: ChunkCorruptError): SourceReadError {
    // The bad page when known, else the first byte of the read in the corrupt chunk: the pager poisons it and tries the rest page by page.
    let failedOffset = offset;
    for (const piece of this.layout.planRead(offset, length)) {
      if (piece.type === 'data' && piece.chunk === chunk) {
        failedOffset = offset + piece.targetOffset;
        break;
      }
    }
    if (error.pageIndex !== undefined) {
      const bad = this.layout.imageOffsetOfPage(error.pageIndex);
      if (bad >= offset && bad < offset + length) failedOffset = bad;
    }
    return new SourceReadError(offset, length, `${this.description}: ${error.message}`, { cause: error, failure: 'fatal', failedOffset });
  }
}

function covers(partial: PartialState, first: number, end: number): boolean {
  for (let i = first; i < end; i++) if (!partial.pages[i]) return false;
  return true;
}
