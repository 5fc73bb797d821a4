import { open, type FileHandle } from 'node:fs/promises';
import { UserfaultError } from '../errors.js';
import { native } from '../native.js';
import { PageCacheView } from './page-cache-view.js';
import { SourceReadError, checkReadRange, type PageSource } from './page-source.js';

class FileShrankError extends UserfaultError {
  override readonly code = 'ESHRANK';
  constructor(readonly bytesRead: number) {
    super(`end of file after ${bytesRead} bytes (the file shrank)`);
  }
}

/**
 * A raw memory file: the image byte for byte, as Firecracker writes guest memory. No checksums
 * and no zero-page table, so isZero is absent ("unknown") and every page is read.
 */
export class RawFileSource implements PageSource {
  readonly description: string;
  private closed = false;
  /** The image mapped read-only for mappedPages(); null once found unmappable (or closed). */
  private view: PageCacheView | null | undefined;

  private constructor(
    readonly path: string,
    private readonly file: FileHandle,
    readonly sizeBytes: number,
    /** Where the image starts in the file. */
    readonly fileOffset: number,
  ) {
    this.description = `raw file ${path}`;
  }

  /**
   * Open a raw image. sizeBytes defaults to the file's length past fileOffset; a file too short for
   * the size asked is refused here rather than read as zeros later.
   */
  static async open(path: string, options: { sizeBytes?: number; fileOffset?: number } = {}): Promise<RawFileSource> {
    const file = await open(path, 'r');
    try {
      const fileOffset = options.fileOffset ?? 0;
      const { size } = await file.stat();
      const available = Math.max(0, size - fileOffset);
      const sizeBytes = options.sizeBytes ?? available;
      if (sizeBytes > available) {
        throw new SourceReadError(0, sizeBytes, `raw file ${path} holds ${available} bytes past offset ${fileOffset}`);
      }
      return new RawFileSource(path, file, sizeBytes, fileOffset);
    } catch (error) {
      await file.close();
      throw error;
    }
  }

  async read(offset: number, lengthBytes: number, target: Uint8Array): Promise<void> {
    checkReadRange(this, offset, lengthBytes);
    if (target.length < lengthBytes) throw new SourceReadError(offset, lengthBytes, `target holds only ${target.length} bytes`);
    let done = 0;
    try {
      while (done < lengthBytes) {
        const { bytesRead } = await this.file.read(target, done, lengthBytes - done, this.fileOffset + offset + done);
        // The length was checked at open: EOF now means the file shrank underneath us.
        if (bytesRead === 0) throw new FileShrankError(done);
        done += bytesRead;
      }
    } catch (error) {
      // A file that shrank under us stays short (fatal); an I/O error may pass.
      const shrank = error instanceof FileShrankError;
      throw new SourceReadError(offset, lengthBytes, `${this.description}: ${(error as Error).message}`, { cause: error, failure: shrank ? 'fatal' : 'transient' });
    }
  }

  /** A page-cache hit is read now (preadv2 RWF_NOWAIT); anything else goes async. */
  readSync(offset: number, lengthBytes: number, target: Uint8Array): boolean {
    checkReadRange(this, offset, lengthBytes);
    if (this.closed) return false;
    const n = native.preadNoWait(this.file.fd, target.subarray(0, lengthBytes), this.fileOffset + offset);
    return n === lengthBytes;
  }

  /** The pager's one-copy path: the range as it sits in the page cache, when all of it is there (page-cache-view.ts). */
  mappedPages(offset: number, lengthBytes: number): Uint8Array | undefined {
    checkReadRange(this, offset, lengthBytes);
    if (this.closed) return undefined;
    this.view ??= PageCacheView.open(this.file.fd, this.fileOffset, this.sizeBytes) ?? null;
    return this.view?.cached(offset, lengthBytes);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.view?.close();
    this.view = null;
    await this.file.close();
  }
}
