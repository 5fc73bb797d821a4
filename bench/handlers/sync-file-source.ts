// Bench-only page source: the bench image read with pread(2) on the pager's
// own thread (native.preadAt), so read() has already finished when its
// promise is made. It shows what a synchronous source fast path gives the
// real Pager: FileHandle.read goes through libuv's threadpool, two thread
// hand-offs per fetch. Blocking pread is only fair because the file is in the
// page cache here; the product needs preadv2(RWF_NOWAIT) with a threadpool
// fallback (see docs/bench.md). With `checkCrc`, every page is checked
// against the snapshot's page table, as SnapshotSource does.
import { closeSync, openSync } from 'node:fs';
import { native } from '../../src/native.js';
import { SnapshotFile } from '../../src/snapshot/reader.js';
import type { PageChecksum } from '../../src/snapshot/format.js';
import { SourceReadError, checkReadRange, type PageSource } from '../../src/sources/page-source.js';

const PAGE = 4096;

export class SyncFileSource implements PageSource {
  readonly description: string;

  private constructor(
    private readonly fd: number,
    readonly sizeBytes: number,
    /** Where page i sits in the file: dataOffset + i * 4096 (the bench image stores every page). */
    private readonly dataOffset: number,
    /** The page table's CRCs, when reads are checked. */
    private readonly crc32s: Uint32Array | undefined,
    /** The page checksum of the image's format version. */
    private readonly pageChecksum: PageChecksum,
  ) {
    this.description = `bench image by pread${crc32s ? ', CRC-checked' : ''}`;
  }

  static async open(path: string, options: { checkCrc: boolean }): Promise<SyncFileSource> {
    const snapshot = await SnapshotFile.open(path);
    try {
      const { header } = snapshot;
      if (header.dataPageCount !== header.pageCount) throw new Error(`${path} elides pages; the bench image stores them all`);
      const crc32s = options.checkCrc ? Uint32Array.from(snapshot.pageTable.crc32s) : undefined;
      return new SyncFileSource(openSync(path, 'r'), header.imageSizeBytes, header.data.offset, crc32s, snapshot.pageChecksum);
    } finally {
      await snapshot.close();
    }
  }

  async read(offset: number, lengthBytes: number, target: Uint8Array): Promise<void> {
    checkReadRange(this, offset, lengthBytes);
    const n = native.preadAt(this.fd, native.addressOf(target), lengthBytes, this.dataOffset + offset);
    if (n !== lengthBytes) throw new SourceReadError(offset, lengthBytes, `pread returned ${n}`);
    if (this.crc32s) {
      for (let at = 0; at < lengthBytes; at += PAGE) {
        const index = (offset + at) / PAGE;
        if (this.pageChecksum(target.subarray(at, at + PAGE)) !== this.crc32s[index]) throw new SourceReadError(offset + at, PAGE, `page ${index} fails its CRC`);
      }
    }
  }

  close(): void {
    closeSync(this.fd);
  }
}
