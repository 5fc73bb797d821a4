// Reading snapshot files: the I/O edge over format.ts. Opening checks everything but the page data
// (header, tables, metadata, file length), so a damaged or truncated file is refused before any of
// its pages is used; each page's CRC is checked when the page is read.
import { open, type FileHandle } from 'node:fs/promises';
import { SnapshotCorruptError, SnapshotFormatError, SnapshotNotFoundError, SnapshotTruncatedError } from './errors.js';
import {
  MAX_SNAPSHOT_PAGE_SIZE,
  PageKind,
  checkMetadata,
  decodeHeader,
  decodePageTable,
  decodeRegionTable,
  findRegionIndex,
  nextRegionStart,
  pageChecksumName,
  pageChecksumOf,
  pageChecksumsOf,
  type PageChecksum,
  type PageTable,
  type SnapshotHeader,
  type SnapshotRegion,
  type SnapshotSection,
} from './format.js';

/** What the snapshot holds for one page of the image. */
export type PageInfo =
  /** No region covers the page: it reads as zero. */
  | { readonly type: 'gap'; readonly imageOffset: number }
  /** The page was all zero when saved and is not stored. */
  | { readonly type: 'zero'; readonly imageOffset: number; readonly pageIndex: number; readonly regionIndex: number }
  | {
      readonly type: 'data';
      readonly imageOffset: number;
      readonly pageIndex: number;
      readonly regionIndex: number;
      readonly fileOffset: number;
      readonly crc32: number;
    };

/** A page whose bytes do not match its CRC. */
export interface CorruptPage {
  readonly pageIndex: number;
  readonly imageOffset: number;
  readonly fileOffset: number;
  readonly expectedCrc32: number;
  readonly actualCrc32: number;
}

export interface SnapshotVerifyReport {
  readonly ok: boolean;
  readonly pagesChecked: number;
  readonly corruptPageCount: number;
  /** The first corrupt pages found (at most 64). */
  readonly corruptPages: readonly CorruptPage[];
}

const MAX_LISTED_CORRUPT_PAGES = 64;
/** The largest single read; FileHandle.read takes at most 2 GiB - 1. */
const MAX_READ_BYTES = Math.max(1 << 30, MAX_SNAPSHOT_PAGE_SIZE);
/** Longest header any version may have (format.ts refuses longer). */
const MAX_HEADER_BYTES = 65536;

export class SnapshotFile {
  private closed = false;
  /** Reused by checkPages: one checksum per page of the longest run checked so far. */
  private checksumScratch = new Uint32Array(64);
  /** The page checksum of this file's version (CRC32C from version 2 on, CRC32 in version 1). */
  readonly pageChecksum: PageChecksum;

  private constructor(
    readonly path: string,
    private readonly file: FileHandle,
    readonly header: SnapshotHeader,
    readonly regions: readonly SnapshotRegion[],
    readonly pageTable: PageTable,
    /** The metadata blob (its CRC already checked); empty when none was saved. */
    readonly metadata: Uint8Array,
  ) {
    this.pageChecksum = pageChecksumOf(header.version);
  }

  /**
   * Open and check a snapshot: header, region table, page table and metadata against their CRCs,
   * and the file's length against the header's. Throws SnapshotTruncatedError, SnapshotCorruptError,
   * SnapshotVersionError or SnapshotFormatError.
   */
  static async open(path: string): Promise<SnapshotFile> {
    const file = await open(path, 'r').catch((error: NodeJS.ErrnoException) => {
      // Named as the library's own error, as a missing input (not Node's bare ENOENT).
      if (error.code === 'ENOENT') throw new SnapshotNotFoundError(path, 'does not exist', { cause: error });
      throw error;
    });
    try {
      const { size } = await file.stat();
      const header = decodeHeader(await readSection(file, { offset: 0, lengthBytes: Math.min(size, MAX_HEADER_BYTES) }));
      if (size < header.fileSizeBytes) throw new SnapshotTruncatedError('file', header.fileSizeBytes, size);
      if (size > header.fileSizeBytes) {
        throw new SnapshotFormatError('file', `the file is ${size} bytes, its header says ${header.fileSizeBytes} (bytes were appended)`);
      }
      const regions = decodeRegionTable(await readSection(file, header.regionTable), header);
      const pageTable = decodePageTable(await readSection(file, header.pageTable), header);
      const metadata = await readSection(file, header.metadata);
      checkMetadata(metadata, header);
      return new SnapshotFile(path, file, header, regions, pageTable, metadata);
    } catch (error) {
      await file.close();
      throw error;
    }
  }

  get pageSize(): number {
    return this.header.pageSize;
  }

  get imageSizeBytes(): number {
    return this.header.imageSizeBytes;
  }

  /** What is stored for the page holding imageOffset. */
  pageInfo(imageOffset: number): PageInfo {
    this.checkRange(imageOffset, 1);
    const { pageSize } = this;
    const pageStart = Math.floor(imageOffset / pageSize) * pageSize;
    const regionIndex = findRegionIndex(this.regions, pageStart);
    if (regionIndex === -1) return { type: 'gap', imageOffset: pageStart };
    const region = this.regions[regionIndex]!;
    const pageIndex = region.firstPageIndex + (pageStart - region.imageOffset) / pageSize;
    if (this.pageTable.kinds[pageIndex] === PageKind.zero) return { type: 'zero', imageOffset: pageStart, pageIndex, regionIndex };
    return {
      type: 'data',
      imageOffset: pageStart,
      pageIndex,
      regionIndex,
      fileOffset: this.fileOffsetOf(pageIndex),
      crc32: this.pageTable.crc32s[pageIndex]!,
    };
  }

  /**
   * Where [imageOffset, imageOffset+length) lies in the data section, when it
   * is whole stored pages of one region, one after another in the file (a run
   * of data pages is: they are stored in page order), else undefined. For a
   * reader that maps the data section (SnapshotSource) and copies from it.
   */
  storedRun(imageOffset: number, length: number): { pageIndex: number; dataOffset: number } | undefined {
    this.checkRange(imageOffset, length);
    const { pageSize } = this;
    if (imageOffset % pageSize !== 0 || length % pageSize !== 0 || length === 0) return undefined;
    const regionIndex = findRegionIndex(this.regions, imageOffset);
    if (regionIndex === -1) return undefined;
    const region = this.regions[regionIndex]!;
    if (imageOffset + length > region.imageOffset + region.lengthBytes) return undefined;
    const pageIndex = region.firstPageIndex + (imageOffset - region.imageOffset) / pageSize;
    const { kinds, dataIndexes } = this.pageTable;
    const pages = length / pageSize;
    for (let i = 0; i < pages; i++) if (kinds[pageIndex + i] !== PageKind.data) return undefined;
    // Consecutive data pages have consecutive data indexes (decodePageTable checks the order).
    return { pageIndex, dataOffset: dataIndexes[pageIndex]! * pageSize };
  }

  /** The data section's place in the file (page-aligned), for a reader that maps it. */
  get dataSection(): { fd: number; offset: number; lengthBytes: number } {
    return { fd: this.file.fd, offset: this.header.data.offset, lengthBytes: this.header.data.lengthBytes };
  }

  /** Check `bytes`, the stored pages from pageIndex on (a run storedRun() gave), against their CRCs: SnapshotCorruptError naming the first bad one. */
  checkStoredPages(pageIndex: number, imageOffset: number, bytes: Uint8Array): void {
    this.checkPages(pageIndex, imageOffset, bytes);
  }

  /**
   * One byte per page of `pageSize` over the whole image, 1 where isZero() would say so
   * (a gap or a zero page): a pager asks once at start instead of once per page.
   * Undefined for another page size than the snapshot's.
   */
  zeroPageMask(pageSize: number): Uint8Array | undefined {
    if (pageSize !== this.pageSize) return undefined;
    const mask = new Uint8Array(this.imageSizeBytes / pageSize).fill(1);
    const kinds = this.pageTable.kinds;
    for (const region of this.regions) {
      const firstImagePage = region.imageOffset / pageSize;
      for (let i = 0; i < region.pageCount; i++) if (kinds[region.firstPageIndex + i] !== PageKind.zero) mask[firstImagePage + i] = 0;
    }
    return mask;
  }

  /** Whether every byte of [imageOffset, imageOffset+length) is a gap or a zero page. */
  isZero(imageOffset: number, length: number): boolean {
    this.checkRange(imageOffset, length);
    const { pageSize, regions } = this;
    const end = imageOffset + length;
    let position = imageOffset;
    while (position < end) {
      const regionIndex = findRegionIndex(regions, position);
      if (regionIndex === -1) {
        position = nextRegionStart(regions, position, this.imageSizeBytes);
        continue;
      }
      const region = regions[regionIndex]!;
      const regionEnd = Math.min(end, region.imageOffset + region.lengthBytes);
      let pageIndex = region.firstPageIndex + Math.floor((position - region.imageOffset) / pageSize);
      for (let pageStart = region.imageOffset + (pageIndex - region.firstPageIndex) * pageSize; pageStart < regionEnd; pageStart += pageSize) {
        if (this.pageTable.kinds[pageIndex++] !== PageKind.zero) return false;
      }
      position = regionEnd;
    }
    return true;
  }

  /**
   * Fill target[0, length) with the image's bytes at [imageOffset, imageOffset+length). Gaps and
   * zero pages are filled without reading; a run of stored pages is one read. Every stored page is
   * checked against its CRC, and a mismatch throws SnapshotCorruptError naming the page (target's
   * contents are then unspecified). Any range works; page-aligned ranges read straight into target.
   */
  async readPages(imageOffset: number, length: number, target: Uint8Array): Promise<void> {
    const plan = this.readPlan(imageOffset, length, target);
    for (let step = plan.next(); !step.done; step = plan.next()) await this.readAt(step.value.fileOffset, step.value.into);
  }

  /**
   * readPages without waiting: `readNow(fd, fileOffset, into)` fills `into`
   * if it can do so at once (a page-cache hit) and returns false otherwise;
   * then this returns false and the caller uses readPages. CRCs are checked
   * the same way. (The reader does no I/O of its own here, so inspecting a
   * file never needs the native addon.)
   */
  readPagesNow(imageOffset: number, length: number, target: Uint8Array, readNow: (fd: number, fileOffset: number, into: Uint8Array) => boolean): boolean {
    if (this.closed) return false;
    const plan = this.readPlan(imageOffset, length, target);
    for (let step = plan.next(); !step.done; step = plan.next()) {
      if (!readNow(this.file.fd, step.value.fileOffset, step.value.into)) {
        plan.return();
        return false;
      }
    }
    return true;
  }

  /**
   * The reads readPages needs, as a generator: it yields each file range to
   * read into `into`, and once resumed (the bytes are there) checks them and
   * fills zero pages and gaps. One plan serves the waiting and the non-waiting reader.
   */
  private *readPlan(imageOffset: number, length: number, target: Uint8Array): Generator<{ fileOffset: number; into: Uint8Array }, void, void> {
    this.checkRange(imageOffset, length);
    if (target.length < length) throw new RangeError(`target holds ${target.length} bytes, ${length} asked for`);
    const { pageSize, regions } = this;
    const { kinds, dataIndexes } = this.pageTable;
    const end = imageOffset + length;
    let position = imageOffset;
    while (position < end) {
      const regionIndex = findRegionIndex(regions, position);
      if (regionIndex === -1) {
        const stop = Math.min(end, nextRegionStart(regions, position, this.imageSizeBytes));
        target.fill(0, position - imageOffset, stop - imageOffset);
        position = stop;
        continue;
      }
      const region = regions[regionIndex]!;
      const regionEnd = Math.min(end, region.imageOffset + region.lengthBytes);
      const pageIndex = region.firstPageIndex + Math.floor((position - region.imageOffset) / pageSize);
      const pageStart = region.imageOffset + (pageIndex - region.firstPageIndex) * pageSize;
      let count = 1;
      if (kinds[pageIndex] === PageKind.zero) {
        while (pageStart + count * pageSize < regionEnd && kinds[pageIndex + count] === PageKind.zero) count++;
        const stop = Math.min(regionEnd, pageStart + count * pageSize);
        target.fill(0, position - imageOffset, stop - imageOffset);
        position = stop;
      } else if (position === pageStart && pageStart + pageSize <= end) {
        // Whole stored pages: extend the run while the next page is stored right after this one.
        while (
          pageStart + (count + 1) * pageSize <= regionEnd &&
          (count + 1) * pageSize <= MAX_READ_BYTES &&
          kinds[pageIndex + count] === PageKind.data &&
          dataIndexes[pageIndex + count] === dataIndexes[pageIndex]! + count
        ) {
          count++;
        }
        const into = target.subarray(position - imageOffset, position - imageOffset + count * pageSize);
        yield { fileOffset: this.fileOffsetOf(pageIndex), into };
        this.checkPages(pageIndex, pageStart, into);
        position = pageStart + count * pageSize;
      } else {
        // Part of a stored page: its CRC covers the whole page, so read all of it aside.
        const page = new Uint8Array(pageSize);
        yield { fileOffset: this.fileOffsetOf(pageIndex), into: page };
        this.checkPage(pageIndex, pageStart, page);
        const stop = Math.min(end, pageStart + pageSize);
        target.set(page.subarray(position - pageStart, stop - pageStart), position - imageOffset);
        position = stop;
      }
    }
  }

  /** Read every stored page and check its CRC; corruption is reported, not thrown. */
  async verifyAll(options: { chunkBytes?: number } = {}): Promise<SnapshotVerifyReport> {
    const { pageSize } = this;
    const { kinds } = this.pageTable;
    const pagesPerChunk = Math.max(1, Math.floor((options.chunkBytes ?? 1 << 20) / pageSize));
    const chunk = new Uint8Array(pagesPerChunk * pageSize);
    const actualScratch = new Uint32Array(pagesPerChunk);
    const corruptPages: CorruptPage[] = [];
    let corruptPageCount = 0;
    let pagesChecked = 0;
    // Stored pages sit in the data section in page-table order, so the section is read front to back.
    const batch: { pageIndex: number; imageOffset: number }[] = [];
    const flush = async (): Promise<void> => {
      if (batch.length === 0) return;
      const first = batch[0]!;
      const bytes = chunk.subarray(0, batch.length * pageSize);
      await this.readAt(this.fileOffsetOf(first.pageIndex), bytes);
      const actual = pageChecksumsOf(this.header.version, bytes, pageSize, actualScratch);
      batch.forEach(({ pageIndex, imageOffset }, index) => {
        const expectedCrc32 = this.pageTable.crc32s[pageIndex]!;
        const actualCrc32 = actual[index]!;
        if (actualCrc32 !== expectedCrc32) {
          corruptPageCount++;
          if (corruptPages.length < MAX_LISTED_CORRUPT_PAGES) {
            corruptPages.push({ pageIndex, imageOffset, fileOffset: this.fileOffsetOf(pageIndex), expectedCrc32, actualCrc32 });
          }
        }
      });
      pagesChecked += batch.length;
      batch.length = 0;
    };
    for (const region of this.regions) {
      for (let page = 0; page < region.pageCount; page++) {
        const pageIndex = region.firstPageIndex + page;
        if (kinds[pageIndex] !== PageKind.data) continue;
        batch.push({ pageIndex, imageOffset: region.imageOffset + page * pageSize });
        if (batch.length === pagesPerChunk) await flush();
      }
    }
    await flush();
    return { ok: corruptPageCount === 0, pagesChecked, corruptPageCount, corruptPages };
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.file.close();
  }

  private fileOffsetOf(pageIndex: number): number {
    return this.header.data.offset + this.pageTable.dataIndexes[pageIndex]! * this.pageSize;
  }

  /** checkPage for a run of stored pages from pageIndex on, their checksums computed in one batched pass. */
  private checkPages(pageIndex: number, imageOffset: number, bytes: Uint8Array): void {
    const { pageSize } = this;
    const count = bytes.length / pageSize;
    if (this.checksumScratch.length < count) this.checksumScratch = new Uint32Array(count);
    const actual = pageChecksumsOf(this.header.version, bytes, pageSize, this.checksumScratch.subarray(0, count));
    const expected = this.pageTable.crc32s;
    for (let i = 0; i < count; i++) {
      if (actual[i] !== expected[pageIndex + i]) this.checkPage(pageIndex + i, imageOffset + i * pageSize, bytes.subarray(i * pageSize, (i + 1) * pageSize));
    }
  }

  private checkPage(pageIndex: number, imageOffset: number, bytes: Uint8Array): void {
    const expectedCrc32 = this.pageTable.crc32s[pageIndex]!;
    const actualCrc32 = this.pageChecksum(bytes);
    if (actualCrc32 !== expectedCrc32) {
      throw new SnapshotCorruptError({
        structure: 'page data',
        fileOffset: this.fileOffsetOf(pageIndex),
        expectedCrc32,
        actualCrc32,
        pageIndex,
        imageOffset,
        checksum: pageChecksumName(this.header.version),
      });
    }
  }

  private checkRange(imageOffset: number, length: number): void {
    if (!Number.isSafeInteger(imageOffset) || !Number.isSafeInteger(length) || imageOffset < 0 || length < 0 || imageOffset + length > this.imageSizeBytes) {
      throw new RangeError(`[${imageOffset}, ${imageOffset + length}) is outside the ${this.imageSizeBytes}-byte image of ${this.path}`);
    }
  }

  private async readAt(fileOffset: number, into: Uint8Array): Promise<void> {
    if (this.closed) throw new Error(`snapshot ${this.path} is closed`);
    await readExactly(this.file, fileOffset, into, this.header.fileSizeBytes);
  }
}

/** Read a whole section; a short file was already refused, so a short read means it shrank since. */
async function readSection(file: FileHandle, section: SnapshotSection): Promise<Uint8Array> {
  const bytes = new Uint8Array(section.lengthBytes);
  await readExactly(file, section.offset, bytes, section.offset + section.lengthBytes);
  return bytes;
}

async function readExactly(file: FileHandle, fileOffset: number, into: Uint8Array, expectedFileSize: number): Promise<void> {
  let done = 0;
  while (done < into.length) {
    const { bytesRead } = await file.read(into, done, into.length - done, fileOffset + done);
    if (bytesRead === 0) throw new SnapshotTruncatedError('file', expectedFileSize, fileOffset + done);
    done += bytesRead;
  }
}
