import { native } from '../native.js';
import { SnapshotCorruptError, SnapshotError } from '../snapshot/errors.js';
import { SnapshotFile } from '../snapshot/reader.js';
import { PageCacheView } from './page-cache-view.js';
import { SourceReadError, checkReadRange, type PageSource } from './page-source.js';

/**
 * Pages from a snapshot file. Zero pages and gaps between regions are filled without reading (and
 * isZero lets the pager map the zero page instead); a run of stored pages is one read; every stored
 * page is checked against its CRC before read() resolves, so a corrupt page never reaches the pager.
 */
export class SnapshotSource implements PageSource {
  readonly sizeBytes: number;
  readonly description: string;
  /** The data section mapped read-only for mappedPages(); null once found unmappable (or closed). */
  private dataView: PageCacheView | null | undefined;

  constructor(readonly snapshot: SnapshotFile) {
    this.sizeBytes = snapshot.imageSizeBytes;
    this.description = `snapshot ${snapshot.path}`;
  }

  /** Open and check the file (SnapshotFile.open's errors: truncation and damaged tables are refused here). */
  static async open(path: string): Promise<SnapshotSource> {
    return new SnapshotSource(await SnapshotFile.open(path));
  }

  /** Rejects with SourceReadError; its cause is the SnapshotCorruptError naming the page, or the I/O error. */
  async read(offset: number, lengthBytes: number, target: Uint8Array): Promise<void> {
    checkReadRange(this, offset, lengthBytes);
    try {
      await this.snapshot.readPages(offset, lengthBytes, target);
    } catch (error) {
      throw this.readError(offset, lengthBytes, error);
    }
  }

  /**
   * The pager's fast path: when every stored page of the range is in the page
   * cache, read and check it now (preadv2 RWF_NOWAIT); otherwise decline.
   * A corrupt page throws the same SourceReadError as read().
   */
  readSync(offset: number, lengthBytes: number, target: Uint8Array): boolean {
    checkReadRange(this, offset, lengthBytes);
    try {
      return this.snapshot.readPagesNow(offset, lengthBytes, target, readWithoutWaiting);
    } catch (error) {
      throw this.readError(offset, lengthBytes, error);
    }
  }

  /**
   * The pager's one-copy path: a run of stored pages as they sit in the page
   * cache (a PageCacheView of the data section: whole stored pages one after
   * another in the file, every one cached), each page CRC-checked on the way;
   * otherwise undefined, and the pager reads as before. A corrupt page throws
   * the same SourceReadError as read(). See page-cache-view.ts for what a
   * writer of the mapped file can do.
   */
  mappedPages(offset: number, lengthBytes: number): Uint8Array | undefined {
    checkReadRange(this, offset, lengthBytes);
    const run = this.snapshot.storedRun(offset, lengthBytes);
    if (!run) return undefined;
    if (this.dataView === undefined) {
      const { fd, offset: dataOffset, lengthBytes: dataLengthBytes } = this.snapshot.dataSection;
      this.dataView = PageCacheView.open(fd, dataOffset, dataLengthBytes) ?? null;
    }
    const view = this.dataView?.cached(run.dataOffset, lengthBytes);
    if (!view) return undefined;
    try {
      this.snapshot.checkStoredPages(run.pageIndex, offset, view);
    } catch (error) {
      throw this.readError(offset, lengthBytes, error);
    }
    return view;
  }

  /** A page that fails its CRC stays corrupt however often it is read (fatal); an I/O error may pass (transient). */
  private readError(offset: number, length: number, error: unknown): SourceReadError {
    const reason = error instanceof SnapshotError ? error.message : `${(error as Error).message ?? error}`;
    const failedOffset = error instanceof SnapshotCorruptError ? error.imageOffset : undefined;
    return new SourceReadError(offset, length, `${this.description}: ${reason}`, { cause: error, failure: error instanceof SnapshotError ? 'fatal' : 'transient', failedOffset });
  }

  isZero(offset: number, lengthBytes: number): boolean {
    return this.snapshot.isZero(offset, lengthBytes);
  }

  zeroPageMask(pageSize: number): Uint8Array | undefined {
    return this.snapshot.zeroPageMask(pageSize);
  }

  close(): Promise<void> {
    this.dataView?.close();
    this.dataView = null;
    return this.snapshot.close();
  }
}

function readWithoutWaiting(fd: number, fileOffset: number, into: Uint8Array): boolean {
  return native.preadNoWait(fd, into, fileOffset) === into.length;
}
