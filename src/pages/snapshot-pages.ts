// What a page server serves for a snapshot file: its flat image through
// SnapshotSource (every stored page CRC-checked on read, so a corrupt page is
// an ERROR SOURCE_FAILED, never bad bytes), its zero map from the page table,
// its metadata section (a VM snapshot's VM state), an id of its content, and
// the page table's checksums, which travel with the pages (CHECKED_PAGES) so
// the client checks each page against the snapshot itself.
import { createHash } from 'node:crypto';
import type { SnapshotFile } from '../snapshot/reader.js';
import { SnapshotSource } from '../sources/snapshot-source.js';
import { IMAGE_ID_BYTES } from '../protocol/index.js';
import { ZeroMap } from './zero-map.js';
import { snapshotPageChecksums, type PageChecksums } from './page-checksums.js';

export interface SnapshotPages {
  source: SnapshotSource;
  pageSizeBytes: number;
  metadata: Uint8Array;
  zeroMap: ZeroMap;
  imageId: Uint8Array;
  /** The page table's checksums, sent with every page. */
  pageChecksums: PageChecksums;
  close(): Promise<void>;
}

/** Open and check a snapshot (SnapshotFile.open's errors) and derive what the server needs from it. */
export async function openSnapshotPages(path: string): Promise<SnapshotPages> {
  const source = await SnapshotSource.open(path);
  const file = source.snapshot;
  return {
    source,
    pageSizeBytes: file.pageSize,
    metadata: file.metadata,
    zeroMap: ZeroMap.fromSnapshot(file),
    imageId: snapshotImageId(file),
    pageChecksums: snapshotPageChecksums(file),
    close: () => source.close(),
  };
}

/**
 * 16 bytes naming a snapshot's content: a hash of its sizes and of the CRCs of
 * its tables. The page table holds every stored page's CRC, so two snapshots
 * with one id hold the same pages; a server restarted on the same file gives
 * the same id, one restarted on another file (almost surely) does not.
 */
export function snapshotImageId(file: SnapshotFile): Uint8Array {
  const h = file.header;
  const identity = [h.version, h.pageSize, h.imageSizeBytes, h.pageCount, h.dataPageCount, h.regionTable.crc32, h.pageTable.crc32, h.metadata.crc32, h.metadata.lengthBytes].join(',');
  return new Uint8Array(createHash('sha256').update(`userfault-image-v1:${identity}`).digest().subarray(0, IMAGE_ID_BYTES));
}
