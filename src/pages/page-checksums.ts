// The checksums a page server sends with its pages (CHECKED_PAGES), and the
// client's check of them. The point is end to end: the checksum of a page is
// the one its image stores (a snapshot's page table, written when the page was
// saved), so a page altered anywhere after that (on the server's disk, in its
// memory, by a proxy that fixes the frame CRC) fails on the client, before
// a byte of it reaches guest memory. The frame CRC only covers one hop.
import { pageChecksumOf, pageChecksumsOf } from '../snapshot/format.js';
import type { SnapshotFile } from '../snapshot/reader.js';
import { CRC_BLOCK_BYTES, type PageChecksumName } from '../protocol/index.js';

/** Where a page server gets the checksums of the pages it sends. */
export interface PageChecksums {
  readonly algorithm: PageChecksumName;
  /**
   * The checksum of each `pageSizeBytes` page of [offset, offset + data.length),
   * `data` being those pages as the server read them. A source that stores
   * checksums returns its own and ignores `data`.
   */
  of(offset: number, data: Uint8Array, pageSizeBytes: number): Uint32Array;
}

/** The function of a checksum name: the snapshot format's own (CRC32C is format 2's, CRC32 format 1's). */
export function pageChecksumFunction(algorithm: PageChecksumName): (bytes: Uint8Array) => number {
  return pageChecksumOf(algorithm === 'crc32c' ? 2 : 1);
}

/**
 * The checksums a snapshot stores: its page table's, one per stored page; a
 * page it stores as zero (or a gap between its regions) has the checksum of a
 * zero page. Never computed from the bytes read: a page that went bad on disk
 * is caught by the server's own read (SOURCE_FAILED), one that goes bad after
 * it by the client.
 */
export function snapshotPageChecksums(file: SnapshotFile): PageChecksums {
  const algorithm: PageChecksumName = file.header.version >= 2 ? 'crc32c' : 'crc32';
  const zeroPageChecksum = pageChecksumFunction(algorithm)(new Uint8Array(file.pageSize));
  const { crc32s } = file.pageTable;
  return {
    algorithm,
    of(offset, data, pageSizeBytes) {
      if (pageSizeBytes !== file.pageSize) throw new RangeError(`the snapshot's pages are ${file.pageSize} bytes, not ${pageSizeBytes}`);
      const checksums = new Uint32Array(data.length / pageSizeBytes);
      for (let i = 0; i < checksums.length; i++) {
        const info = file.pageInfo(offset + i * pageSizeBytes);
        checksums[i] = info.type === 'data' ? crc32s[info.pageIndex]! : zeroPageChecksum;
      }
      return checksums;
    },
  };
}

/**
 * For a source that stores no checksums (memory, a raw file): CRC32C of the
 * bytes as the server read them. That covers the way from the server's
 * memory to the client, not the source's own storage.
 */
export function computedPageChecksums(): PageChecksums {
  return {
    algorithm: 'crc32c',
    of(_offset, data, pageSizeBytes) {
      return pageChecksumsOf(2, data, pageSizeBytes);
    },
  };
}

/** A page whose bytes do not match the checksum sent with it. */
export interface PageMismatch {
  /** Its index among the pages of `data`. */
  index: number;
  expected: number;
  actual: number;
}

/**
 * The first page of `data` whose checksum is not the expected one, or
 * undefined when every page matches. `dataCrcs`: the CRC32C of each
 * CRC_BLOCK_BYTES block of `data`, already computed (the frame decoder's, as
 * it checked a CRC32C frame): with 4 KiB pages checked by CRC32C they are the
 * pages' checksums, and the check reads no byte again.
 */
export function firstPageMismatch(data: Uint8Array, pageSizeBytes: number, expected: Uint32Array, algorithm: PageChecksumName, dataCrcs?: Uint32Array): PageMismatch | undefined {
  const computed = algorithm === 'crc32c' && pageSizeBytes === CRC_BLOCK_BYTES && dataCrcs?.length === expected.length && data.length === expected.length * pageSizeBytes;
  const actual = computed ? dataCrcs : pageChecksumsOf(algorithm === 'crc32c' ? 2 : 1, data.subarray(0, expected.length * pageSizeBytes), pageSizeBytes);
  for (let index = 0; index < expected.length; index++) {
    if (actual[index] !== expected[index]) return { index, expected: expected[index]!, actual: actual[index]! };
  }
  return undefined;
}
