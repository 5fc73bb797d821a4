import { Mapping } from '../mem/mapping.js';
import { PAGE_SIZE, native } from '../native.js';
import { SnapshotCorruptError, SnapshotError } from '../snapshot/errors.js';
import { SnapshotFile } from '../snapshot/reader.js';
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
  private dataMapping: Mapping | null | undefined;
  private residency = new Uint8Array(0);

  constructor(readonly snapshot: SnapshotFile) {
    this.sizeBytes = snapshot.imageSizeBytes;
    this.description = `snapshot ${snapshot.path}`;
  }

  /** Open and check the file (SnapshotFile.open's errors: truncation and damaged tables are refused here). */
  static async open(path: string): Promise<SnapshotSource> {
    return new SnapshotSource(await SnapshotFile.open(path));
  }

  /** Rejects with SourceReadError; its cause is the SnapshotCorruptError naming the page, or the I/O error. */
  async read(offset: number, length: number, target: Uint8Array): Promise<void> {
    checkReadRange(this, offset, length);
    try {
      await this.snapshot.readPages(offset, length, target);
    } catch (error) {
      throw this.readError(offset, length, error);
    }
  }

  /**
   * The pager's fast path: when every stored page of the range is in the page
   * cache, read and check it now (preadv2 RWF_NOWAIT); otherwise decline.
   * A corrupt page throws the same SourceReadError as read().
   */
  readSync(offset: number, length: number, target: Uint8Array): boolean {
    checkReadRange(this, offset, length);
    try {
      return this.snapshot.readPagesNow(offset, length, target, readWithoutWaiting);
    } catch (error) {
      throw this.readError(offset, length, error);
    }
  }

  /**
   * The pager's one-copy path: a run of stored pages as they sit in the page
   * cache, through a read-only shared mapping of the data section, each page
   * CRC-checked on the way. Only when the range is whole stored pages one
   * after another in the file and every one is cached (mincore: the pager's
   * thread never waits on the disk here); otherwise undefined, and the pager
   * reads as before. Installing from the view copies once (page cache to the
   * new page) instead of twice (to a buffer, then to the page). A corrupt
   * page throws the same SourceReadError as read(). The file is the restore's
   * to keep as it was: a writer that changes it under the mapping can slip a
   * page between its check and its copy, and one that truncates it raises
   * SIGBUS, as with any mapped snapshot (Firecracker maps its memory file).
   */
  mappedPages(offset: number, length: number): Uint8Array | undefined {
    checkReadRange(this, offset, length);
    const run = this.snapshot.storedRun(offset, length);
    if (!run) return undefined;
    const mapping = this.mapData();
    if (!mapping) return undefined;
    const hostPages = Math.ceil(length / PAGE_SIZE);
    if (this.residency.length < hostPages) this.residency = new Uint8Array(hostPages);
    native.mincore(mapping.address + run.dataOffset, length, this.residency);
    for (let i = 0; i < hostPages; i++) if ((this.residency[i]! & 1) === 0) return undefined;
    const view = mapping.bytes(run.dataOffset, length);
    try {
      this.snapshot.checkStoredPages(run.pageIndex, offset, view);
    } catch (error) {
      throw this.readError(offset, length, error);
    }
    return view;
  }

  private mapData(): Mapping | undefined {
    if (this.dataMapping === undefined) {
      const { fd, offset, lengthBytes } = this.snapshot.dataSection;
      try {
        this.dataMapping = lengthBytes === 0 ? null : Mapping.file(fd, lengthBytes, { shared: true, writable: false, offset });
      } catch {
        this.dataMapping = null;
      }
    }
    return this.dataMapping ?? undefined;
  }

  /** A page that fails its CRC stays corrupt however often it is read (fatal); an I/O error may pass (transient). */
  private readError(offset: number, length: number, error: unknown): SourceReadError {
    const reason = error instanceof SnapshotError ? error.message : `${(error as Error).message ?? error}`;
    const failedOffset = error instanceof SnapshotCorruptError ? error.imageOffset : undefined;
    return new SourceReadError(offset, length, `${this.description}: ${reason}`, { cause: error, failure: error instanceof SnapshotError ? 'fatal' : 'transient', failedOffset });
  }

  isZero(offset: number, length: number): boolean {
    return this.snapshot.isZero(offset, length);
  }

  zeroPageMask(pageSize: number): Uint8Array | undefined {
    return this.snapshot.zeroPageMask(pageSize);
  }

  close(): Promise<void> {
    this.dataMapping?.unmap();
    this.dataMapping = null;
    return this.snapshot.close();
  }
}

function readWithoutWaiting(fd: number, fileOffset: number, into: Uint8Array): boolean {
  return native.preadNoWait(fd, into, fileOffset) === into.length;
}
