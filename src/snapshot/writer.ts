// Writing snapshot files: the I/O edge over format.ts. A file appears at its path complete or not
// at all (written to a temporary name, fsynced, renamed, directory fsynced).
import { randomBytes } from 'node:crypto';
import { open, rename, unlink, type FileHandle } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { crc32 } from 'node:zlib';
import { SnapshotFormatError, SnapshotWriteError } from './errors.js';
import {
  PAGE_ENTRY_BYTES,
  PageKind,
  PageTable,
  REGION_ENTRY_BYTES,
  SNAPSHOT_VERSION,
  SUPPORTED_SNAPSHOT_VERSIONS,
  encodeHeader,
  encodePageTable,
  encodeRegionTable,
  isAllZero,
  pageChecksumOf,
  type PageChecksum,
  planSnapshot,
  type SnapshotPlan,
  type SnapshotRegion,
  type SnapshotRegionSpec,
} from './format.js';

export interface SnapshotWriterOptions {
  readonly regions: readonly SnapshotRegionSpec[];
  /** Default 4096. */
  readonly pageSize?: number;
  /** Size of the flat image; default: the end of the last region. */
  readonly imageSizeBytes?: number;
  /** The format version to write: SNAPSHOT_VERSION (default), or 1 for a reader that predates it. */
  readonly version?: number;
}

/** Anything that can fill `target` with the image's bytes at [imageOffset, imageOffset+length); a PageSource is one. */
export interface ImageReader {
  read(imageOffset: number, length: number, target: Uint8Array): void | Promise<void>;
}

/** The image to save: the flat image itself (indexed by image offset), or a reader of it. */
export type SnapshotContent = Uint8Array | ImageReader;

export interface WriteSnapshotOptions extends SnapshotWriterOptions {
  readonly content: SnapshotContent;
  /** Opaque bytes stored beside the memory (the VMM's vCPU and device state). */
  readonly metadata?: Uint8Array;
  /** Bytes read from an ImageReader per call; default 1 MiB, rounded down to whole pages. */
  readonly chunkBytes?: number;
  /** Told after every chunk: image bytes written so far of the regions' total. */
  readonly onProgress?: (writtenBytes: number, totalBytes: number) => void;
}

export interface SnapshotWriteSummary {
  readonly path: string;
  readonly fileSizeBytes: number;
  readonly pageSize: number;
  readonly imageSizeBytes: number;
  readonly pageCount: number;
  readonly dataPageCount: number;
  readonly zeroPageCount: number;
  readonly metadataLengthBytes: number;
}

const DEFAULT_CHUNK_BYTES = 1 << 20;

/** Save an image as a snapshot file in one call; memory use is one chunk, whatever the image size. */
export async function writeSnapshot(path: string, options: WriteSnapshotOptions): Promise<SnapshotWriteSummary> {
  const { content } = options;
  const writer = await SnapshotWriter.create(path, options);
  try {
    const { pageSize } = writer.plan;
    const chunkBytes = Math.max(pageSize, Math.floor((options.chunkBytes ?? DEFAULT_CHUNK_BYTES) / pageSize) * pageSize);
    const scratch = content instanceof Uint8Array ? undefined : new Uint8Array(chunkBytes);
    const totalBytes = writer.plan.regions.reduce((n, r) => n + r.lengthBytes, 0);
    let writtenBytes = 0;
    for (const region of writer.plan.regions) {
      const end = region.imageOffset + region.lengthBytes;
      if (content instanceof Uint8Array && content.length < end) {
        throw new SnapshotFormatError('page data', `the image is ${content.length} bytes, region ${region.name || region.imageOffset} ends at ${end}`);
      }
      for (let imageOffset = region.imageOffset; imageOffset < end; imageOffset += chunkBytes) {
        const length = Math.min(chunkBytes, end - imageOffset);
        let bytes: Uint8Array;
        if (scratch === undefined) {
          bytes = (content as Uint8Array).subarray(imageOffset, imageOffset + length);
        } else {
          bytes = scratch.subarray(0, length);
          await (content as ImageReader).read(imageOffset, length, bytes);
        }
        await writer.writePages(imageOffset, bytes);
        writtenBytes += length;
        options.onProgress?.(writtenBytes, totalBytes);
      }
    }
    return await writer.finish({ metadata: options.metadata });
  } catch (error) {
    try {
      await writer.abort();
    } catch (abortError) {
      throw new AggregateError([error, abortError], `writing snapshot ${path} failed, and so did removing its temporary file`);
    }
    throw error;
  }
}

/**
 * The states of a streaming writer:
 *   writing --writePages/finish in flight--> busy --done--> writing | finished
 *   busy --an I/O error--> failed;   writing | failed --abort--> aborted
 */
type WriterState = 'writing' | 'busy' | 'failed' | 'finished' | 'aborted';

/**
 * A snapshot written page by page, in image order, for images too large to hold twice: the pages
 * go to the file as they come, and only the page table (16 bytes a page) stays in memory.
 * Call writePages for every page of every region, in ascending image order, awaiting each call;
 * the bytes must not change until the call resolves (their CRC is taken before they are written).
 */
export class SnapshotWriter {
  private state: WriterState = 'writing';
  private readonly pageTable: PageTable;
  private regionIndex = 0;
  /** Next image offset to be written; undefined once every region is complete. */
  private next: number | undefined;
  private dataPageCount = 0;
  private readonly pageChecksum: PageChecksum;

  private constructor(
    /** Final path; the file lives at tempPath until finish renames it. */
    readonly path: string,
    readonly tempPath: string,
    readonly plan: SnapshotPlan,
    private readonly file: FileHandle,
    /** The format version written. */
    readonly version: number,
  ) {
    this.pageTable = new PageTable(plan.pageCount);
    this.pageChecksum = pageChecksumOf(version);
    this.next = plan.regions[0]?.imageOffset;
  }

  /** Check the regions (SnapshotFormatError before any file exists) and open a temporary file beside path. */
  static async create(path: string, options: SnapshotWriterOptions): Promise<SnapshotWriter> {
    const version = options.version ?? SNAPSHOT_VERSION;
    if (!SUPPORTED_SNAPSHOT_VERSIONS.includes(version)) throw new RangeError(`snapshot format version ${version}: this writer writes ${SUPPORTED_SNAPSHOT_VERSIONS.join(' or ')}`);
    const plan = planSnapshot(options);
    const tempPath = join(dirname(path), `.${basename(path)}.${process.pid}-${randomBytes(6).toString('hex')}.tmp`);
    const file = await open(tempPath, 'wx');
    return new SnapshotWriter(path, tempPath, plan, file, version);
  }

  get regions(): readonly SnapshotRegion[] {
    return this.plan.regions;
  }

  /** Where the next writePages must start; undefined when every page has been written. */
  get nextImageOffset(): number | undefined {
    return this.next;
  }

  /** Write whole pages at imageOffset (which must be nextImageOffset), within one region. */
  async writePages(imageOffset: number, bytes: Uint8Array): Promise<void> {
    this.enter(imageOffset);
    const { pageSize, regions, dataOffset } = this.plan;
    const refuse = (detail: string): never => {
      this.state = 'writing';
      throw new SnapshotWriteError(this.next, imageOffset, detail);
    };
    if (this.next === undefined) refuse('every page of every region is already written');
    if (imageOffset !== this.next) refuse(`pages must be written in image order; the next is at 0x${this.next!.toString(16)}`);
    const region = regions[this.regionIndex]!;
    const regionEnd = region.imageOffset + region.lengthBytes;
    if (bytes.length === 0 || bytes.length % pageSize !== 0) refuse(`${bytes.length} bytes is not a whole number of ${pageSize}-byte pages`);
    if (imageOffset + bytes.length > regionEnd) refuse(`${bytes.length} bytes run past the end of the region at 0x${regionEnd.toString(16)}`);

    try {
      // Consecutive data pages of this call are consecutive in the file: one writev for them all.
      const runs: Uint8Array[] = [];
      const firstDataIndex = this.dataPageCount;
      let pageIndex = region.firstPageIndex + (imageOffset - region.imageOffset) / pageSize;
      let runStart = -1;
      for (let offset = 0; offset < bytes.length; offset += pageSize, pageIndex++) {
        const page = bytes.subarray(offset, offset + pageSize);
        if (isAllZero(page)) {
          if (runStart !== -1) runs.push(bytes.subarray(runStart, offset));
          runStart = -1;
          continue; // the PageTable arrays start zeroed: kind zero, CRC 0, data index 0
        }
        this.pageTable.kinds[pageIndex] = PageKind.data;
        this.pageTable.crc32s[pageIndex] = this.pageChecksum(page);
        this.pageTable.dataIndexes[pageIndex] = this.dataPageCount++;
        if (runStart === -1) runStart = offset;
      }
      if (runStart !== -1) runs.push(bytes.subarray(runStart));
      if (runs.length > 0) await writeAll(this.file, runs, dataOffset + firstDataIndex * pageSize);
    } catch (error) {
      this.state = 'failed';
      throw error;
    }
    this.next = imageOffset + bytes.length;
    if (this.next === regionEnd) this.next = regions[++this.regionIndex]?.imageOffset;
    this.state = 'writing';
  }

  /** Write the tables, metadata and header, fsync, and rename the file into place. */
  async finish(options: { metadata?: Uint8Array } = {}): Promise<SnapshotWriteSummary> {
    this.enter(undefined);
    if (this.next !== undefined) {
      this.state = 'writing';
      throw new SnapshotWriteError(this.next, undefined, `finish before every page was written: the next is at image offset 0x${this.next.toString(16)}`);
    }
    const { plan } = this;
    const metadata = options.metadata ?? new Uint8Array(0);
    const dataLengthBytes = this.dataPageCount * plan.pageSize;
    const metadataOffset = plan.dataOffset + dataLengthBytes;
    const fileSizeBytes = metadataOffset + metadata.length;
    try {
      const regionTable = encodeRegionTable(plan.regions);
      const pageTable = encodePageTable(this.pageTable);
      const header = encodeHeader({
        version: this.version,
        pageSize: plan.pageSize,
        flags: 0,
        regionCount: plan.regions.length,
        imageSizeBytes: plan.imageSizeBytes,
        fileSizeBytes,
        pageCount: plan.pageCount,
        dataPageCount: this.dataPageCount,
        regionTable: { offset: plan.regionTableOffset, lengthBytes: plan.regions.length * REGION_ENTRY_BYTES, crc32: crc32(regionTable) },
        pageTable: { offset: plan.pageTableOffset, lengthBytes: plan.pageCount * PAGE_ENTRY_BYTES, crc32: crc32(pageTable) },
        data: { offset: plan.dataOffset, lengthBytes: dataLengthBytes },
        metadata: { offset: metadataOffset, lengthBytes: metadata.length, crc32: crc32(metadata) },
      });
      if (metadata.length > 0) await writeAll(this.file, [metadata], metadataOffset);
      await writeAll(this.file, [pageTable], plan.pageTableOffset);
      await writeAll(this.file, [regionTable], plan.regionTableOffset);
      await writeAll(this.file, [header], 0);
      // The padding before the data, and the whole data section when no page was stored, were never written.
      await this.file.truncate(fileSizeBytes);
      await this.file.sync();
      await this.file.close();
      await rename(this.tempPath, this.path);
      await syncDirectory(dirname(this.path));
    } catch (error) {
      this.state = 'failed';
      throw error;
    }
    this.state = 'finished';
    return {
      path: this.path,
      fileSizeBytes,
      pageSize: plan.pageSize,
      imageSizeBytes: plan.imageSizeBytes,
      pageCount: plan.pageCount,
      dataPageCount: this.dataPageCount,
      zeroPageCount: plan.pageCount - this.dataPageCount,
      metadataLengthBytes: metadata.length,
    };
  }

  /** Close and remove the temporary file; the path is left as it was. */
  async abort(): Promise<void> {
    if (this.state === 'aborted') return;
    if (this.state === 'busy' || this.state === 'finished') {
      throw new SnapshotWriteError(this.next, undefined, `cannot abort a writer that is ${this.state}`);
    }
    this.state = 'aborted';
    // finish may have closed the handle before it failed; FileHandle.close resolves when already closed.
    await this.file.close();
    await unlink(this.tempPath).catch((error: NodeJS.ErrnoException) => {
      if (error.code !== 'ENOENT') throw error; // finish's rename may already have moved it
    });
  }

  private enter(imageOffset: number | undefined): void {
    if (this.state !== 'writing') {
      throw new SnapshotWriteError(this.next, imageOffset, this.state === 'busy' ? 'another call is still in flight (await each call)' : `the writer is ${this.state}`);
    }
    this.state = 'busy';
  }
}

/** Positional writev of every byte, resuming after short writes. */
async function writeAll(file: FileHandle, buffers: Uint8Array[], position: number): Promise<void> {
  let pending = buffers.filter((buffer) => buffer.length > 0);
  while (pending.length > 0) {
    const total = pending.reduce((sum, buffer) => sum + buffer.length, 0);
    const { bytesWritten } = await file.writev(pending, position);
    if (bytesWritten === total) return;
    if (bytesWritten <= 0) throw new Error(`writev at ${position} wrote ${bytesWritten} of ${total} bytes`);
    position += bytesWritten;
    let skip = bytesWritten;
    const rest: Uint8Array[] = [];
    for (const buffer of pending) {
      if (skip >= buffer.length) {
        skip -= buffer.length;
        continue;
      }
      rest.push(skip > 0 ? buffer.subarray(skip) : buffer);
      skip = 0;
    }
    pending = rest;
  }
}

async function syncDirectory(path: string): Promise<void> {
  const directory = await open(path, 'r');
  try {
    await directory.sync();
  } finally {
    await directory.close();
  }
}
