// A bounded cache on disk of snapshot-object chunks, shared by every restore
// on the host (every process that opens the same directory), so the tenth
// restore of a snapshot reads almost nothing from the store.
//
//   DIR/chunks/ab/ab12...ef      a chunk, named by the SHA-256 of its bytes
//   DIR/chunks/ab/ab12...ef.part some of a chunk's pages (a restore that read only
//                                part of it): a header, a byte per stored page
//                                saying whether it is there, the pages there
//   DIR/indexes/9f/9f...         an object version's header and index, named by
//                                SHA-256(url, ETag, size)
//   DIR/tmp/                     files being written
//
// Content-addressed: a chunk's name is the hash its object's index records,
// so a changed object (another index, other hashes) can never be served a
// stale chunk, two snapshots that share chunks share them here, and every
// read is checked against its name before it is used (a file damaged on disk,
// or left half-written by a crash, is a miss and is removed).
//
// Safe across processes without locks: a file is written under a temporary
// name and renamed into place (readers see all of it or none); eviction
// unlinks, and a reader that loses the race sees a miss (an open descriptor
// keeps reading). The size bound is kept by whoever writes: past maxBytes it
// rescans the directory (other processes' files included) and removes the
// least recently used files (mtime, refreshed on every hit) down to 90%.
// Two processes may fetch and write the same chunk at once; the second
// rename replaces identical bytes. A part file is merged with the one on
// disk when written; two writers at once may lose each other's pages (a
// later miss), never corrupt them: a part file carries the SHA-256 of its
// body, and its caller checks each page against its page table's CRC32.
//
//   part file: 0 u8[8] "UFPART\0\x01", 8 u32 stored pages N, 12 u32 page size,
//              16 u8[32] SHA-256 of the body; body: N bytes (1: page i is
//              there), then the pages that are there, in order
import { createHash, randomBytes } from 'node:crypto';
import { mkdirSync } from 'node:fs';
import { mkdir, open, readdir, rename, stat, unlink, utimes, writeFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import { join } from 'node:path';

export interface ChunkCacheOptions {
  /** Default USERFAULT_CACHE_DIR, else $XDG_CACHE_HOME/userfault/s3, else ~/.cache/userfault/s3. */
  directory?: string;
  /** Default USERFAULT_CACHE_MAX_BYTES, else 4 GiB. */
  maxBytes?: number;
}

export interface ChunkCacheStats {
  hits: number;
  misses: number;
  /** Files that did not match their name (removed). */
  damaged: number;
  writes: number;
  evicted: number;
}

export function defaultCacheDirectory(env: NodeJS.ProcessEnv = process.env): string {
  if (env.USERFAULT_CACHE_DIR) return env.USERFAULT_CACHE_DIR;
  const base = env.XDG_CACHE_HOME || join(homedir(), '.cache');
  return join(base, 'userfault', 's3');
}

export function defaultCacheMaxBytes(env: NodeJS.ProcessEnv = process.env): number {
  const text = env.USERFAULT_CACHE_MAX_BYTES;
  if (text && /^\d+$/.test(text)) return Number(text);
  return 4 * 1024 * 1024 * 1024;
}

const SHA256_HEX = /^[0-9a-f]{64}$/;
const PART_MAGIC = Buffer.from('UFPART\0\x01', 'latin1');
const PART_HEADER_BYTES = 48;

/** Some of a chunk's stored pages: have[i] is 1 when page i is at bytes[i * pageSize, +pageSize). */
export interface PartialChunk {
  readonly have: Uint8Array;
  readonly bytes: Uint8Array;
}

/** Whether stored page i of a chunk has these bytes (its page table's CRC32). */
export type PageCheck = (index: number, page: Uint8Array) => boolean;

export class ChunkCache {
  readonly directory: string;
  readonly maxBytes: number;
  readonly stats: ChunkCacheStats = { hits: 0, misses: 0, damaged: 0, writes: 0, evicted: 0 };
  /** Bytes this process believes the cache holds: a scan's total plus what it wrote since. */
  private approximateBytes: number | undefined;
  private evicting: Promise<void> | undefined;

  constructor(options: ChunkCacheOptions = {}) {
    this.directory = options.directory ?? defaultCacheDirectory();
    this.maxBytes = options.maxBytes ?? defaultCacheMaxBytes();
    for (const sub of ['chunks', 'indexes', 'tmp']) mkdirSync(join(this.directory, sub), { recursive: true, mode: 0o700 });
  }

  /** The chunk whose SHA-256 is `sha256Hex`, checked against it; undefined when absent or damaged. */
  async get(sha256Hex: string, lengthBytes: number): Promise<Uint8Array | undefined> {
    if (!SHA256_HEX.test(sha256Hex)) throw new RangeError(`${sha256Hex} is not a SHA-256`);
    const path = this.chunkPath(sha256Hex);
    const bytes = await readWhole(path, lengthBytes);
    if (bytes === undefined) {
      this.stats.misses++;
      return undefined;
    }
    if (bytes.length !== lengthBytes || createHash('sha256').update(bytes).digest('hex') !== sha256Hex) {
      this.stats.damaged++;
      this.stats.misses++;
      await unlink(path).catch(() => undefined);
      return undefined;
    }
    this.stats.hits++;
    void touch(path);
    return bytes;
  }

  /** Keep a chunk (its SHA-256 already checked by the caller). Failures (a full disk) are the cache's, not the restore's: they are swallowed and counted nowhere else. */
  async put(sha256Hex: string, bytes: Uint8Array): Promise<void> {
    if (!SHA256_HEX.test(sha256Hex)) throw new RangeError(`${sha256Hex} is not a SHA-256`);
    await this.store(this.chunkPath(sha256Hex), bytes, true);
    await this.dropPartial(sha256Hex);
  }

  /**
   * The pages of a chunk that a part file holds, each passed through `check`
   * (pages that fail it are left out); undefined when there is none or it is damaged.
   */
  async getPartial(sha256Hex: string, storedPages: number, pageSize: number, check: PageCheck): Promise<PartialChunk | undefined> {
    if (!SHA256_HEX.test(sha256Hex)) throw new RangeError(`${sha256Hex} is not a SHA-256`);
    const path = `${this.chunkPath(sha256Hex)}.part`;
    const file = await readWhole(path, undefined);
    if (file === undefined || file.length === 0) return undefined;
    const partial = decodePart(file, storedPages, pageSize, check);
    if (partial === undefined) {
      this.stats.damaged++;
      await unlink(path).catch(() => undefined);
      return undefined;
    }
    void touch(path);
    return partial;
  }

  /** Keep some of a chunk's pages (already checked), merged with what the part file on disk holds. */
  async putPartial(sha256Hex: string, partial: PartialChunk, pageSize: number, check: PageCheck): Promise<void> {
    if (!SHA256_HEX.test(sha256Hex)) throw new RangeError(`${sha256Hex} is not a SHA-256`);
    const storedPages = partial.have.length;
    const have = partial.have.slice();
    const bytes = partial.bytes.slice();
    const onDisk = await this.getPartial(sha256Hex, storedPages, pageSize, check);
    if (onDisk) {
      for (let i = 0; i < storedPages; i++) {
        if (have[i] || !onDisk.have[i]) continue;
        have[i] = 1;
        bytes.set(onDisk.bytes.subarray(i * pageSize, (i + 1) * pageSize), i * pageSize);
      }
    }
    await this.store(`${this.chunkPath(sha256Hex)}.part`, encodePart(have, bytes, pageSize), false);
  }

  /** Forget a chunk's part file (the whole chunk is here now). */
  async dropPartial(sha256Hex: string): Promise<void> {
    await unlink(`${this.chunkPath(sha256Hex)}.part`).catch(() => undefined);
  }

  /** An object version's header and index (src/s3/snapshot-object.ts checks them on use). */
  async getIndex(key: string): Promise<Uint8Array | undefined> {
    const path = this.indexPath(key);
    const bytes = await readWhole(path, undefined);
    if (bytes !== undefined) void touch(path);
    return bytes;
  }

  async putIndex(key: string, bytes: Uint8Array): Promise<void> {
    await this.store(this.indexPath(key), bytes, false);
  }

  /** Bytes in the cache now (a scan). */
  async sizeBytes(): Promise<number> {
    return (await this.scan()).reduce((n, f) => n + f.sizeBytes, 0);
  }

  /** Remove least recently used files until at most `targetBytes` remain. */
  async evict(targetBytes: number = Math.floor(this.maxBytes * 0.9)): Promise<void> {
    const files = await this.scan();
    files.sort((a, b) => a.mtimeMs - b.mtimeMs);
    let total = files.reduce((n, f) => n + f.sizeBytes, 0);
    for (const file of files) {
      if (total <= targetBytes) break;
      await unlink(file.path).catch(() => undefined);
      total -= file.sizeBytes;
      this.stats.evicted++;
    }
    this.approximateBytes = total;
  }

  private async store(path: string, bytes: Uint8Array, counted: boolean): Promise<void> {
    const temp = join(this.directory, 'tmp', `${process.pid}-${randomBytes(8).toString('hex')}`);
    try {
      await mkdir(join(path, '..'), { recursive: true });
      await writeFile(temp, bytes, { mode: 0o600 });
      await rename(temp, path);
      if (counted) this.stats.writes++;
    } catch {
      await unlink(temp).catch(() => undefined);
      return;
    }
    if (this.approximateBytes === undefined) this.approximateBytes = await this.sizeBytes();
    else this.approximateBytes += bytes.length;
    if (this.approximateBytes > this.maxBytes) {
      this.evicting ??= this.evict().finally(() => {
        this.evicting = undefined;
      });
      await this.evicting;
    }
  }

  private chunkPath(sha256Hex: string): string {
    return join(this.directory, 'chunks', sha256Hex.slice(0, 2), sha256Hex);
  }

  private indexPath(key: string): string {
    const name = createHash('sha256').update(key).digest('hex');
    return join(this.directory, 'indexes', name.slice(0, 2), name);
  }

  private async scan(): Promise<{ path: string; sizeBytes: number; mtimeMs: number }[]> {
    const files: { path: string; sizeBytes: number; mtimeMs: number }[] = [];
    for (const top of ['chunks', 'indexes']) {
      const root = join(this.directory, top);
      for (const fan of await readdir(root).catch(() => [] as string[])) {
        for (const name of await readdir(join(root, fan)).catch(() => [] as string[])) {
          const path = join(root, fan, name);
          const info = await stat(path).catch(() => undefined);
          if (info?.isFile()) files.push({ path, sizeBytes: info.size, mtimeMs: info.mtimeMs });
        }
      }
    }
    return files;
  }
}

function encodePart(have: Uint8Array, bytes: Uint8Array, pageSize: number): Uint8Array {
  const present = have.reduce((n, h) => n + (h ? 1 : 0), 0);
  const body = new Uint8Array(have.length + present * pageSize);
  body.set(have, 0);
  let at = have.length;
  for (let i = 0; i < have.length; i++) {
    if (!have[i]) continue;
    body.set(bytes.subarray(i * pageSize, (i + 1) * pageSize), at);
    at += pageSize;
  }
  const file = new Uint8Array(PART_HEADER_BYTES + body.length);
  const view = new DataView(file.buffer);
  file.set(PART_MAGIC, 0);
  view.setUint32(8, have.length, true);
  view.setUint32(12, pageSize, true);
  file.set(createHash('sha256').update(body).digest(), 16);
  file.set(body, PART_HEADER_BYTES);
  return file;
}

function decodePart(file: Uint8Array, storedPages: number, pageSize: number, check: PageCheck): PartialChunk | undefined {
  if (file.length < PART_HEADER_BYTES || Buffer.compare(file.subarray(0, 8), PART_MAGIC) !== 0) return undefined;
  const view = new DataView(file.buffer, file.byteOffset, file.byteLength);
  if (view.getUint32(8, true) !== storedPages || view.getUint32(12, true) !== pageSize) return undefined;
  const body = file.subarray(PART_HEADER_BYTES);
  if (Buffer.compare(createHash('sha256').update(body).digest(), file.subarray(16, 48)) !== 0) return undefined;
  if (body.length < storedPages) return undefined;
  const flags = body.subarray(0, storedPages);
  const present = flags.reduce((n, h) => n + (h ? 1 : 0), 0);
  if (body.length !== storedPages + present * pageSize) return undefined;
  const have = new Uint8Array(storedPages);
  const bytes = new Uint8Array(storedPages * pageSize);
  let at = storedPages;
  for (let i = 0; i < storedPages; i++) {
    if (!flags[i]) continue;
    const page = body.subarray(at, at + pageSize);
    at += pageSize;
    if (!check(i, page)) continue;
    bytes.set(page, i * pageSize);
    have[i] = 1;
  }
  return { have, bytes };
}

/** A whole file, or undefined when it is not there (or longer than `maxBytes`, which a damaged file may be). */
async function readWhole(path: string, expectedBytes: number | undefined): Promise<Uint8Array | undefined> {
  let file;
  try {
    file = await open(path, 'r');
  } catch {
    return undefined;
  }
  try {
    const { size } = await file.stat();
    if (expectedBytes !== undefined && size !== expectedBytes) return new Uint8Array(0);
    const bytes = new Uint8Array(size);
    let done = 0;
    while (done < size) {
      const { bytesRead } = await file.read(bytes, done, size - done, done);
      if (bytesRead === 0) break;
      done += bytesRead;
    }
    return done === size ? bytes : new Uint8Array(0);
  } catch {
    return undefined;
  } finally {
    await file.close();
  }
}

/** Mark a file as just used (the eviction's LRU order). */
async function touch(path: string): Promise<void> {
  const now = new Date();
  await utimes(path, now, now).catch(() => undefined);
}
