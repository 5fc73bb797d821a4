// End-to-end verification of a migration: each side keeps the CRC32C of every
// page as the source last sent it (source) or as it was installed (destination:
// computed from the very bytes handed to UFFDIO_COPY or written in place).
// Each page also travels with the CRC32C the source computed from the bytes it
// read, and the destination checks it before the page lands (checkAndRecord):
// a page altered on the way is refused on arrival, not found at the end.
// At the end the tables are compared a batch at a time (a SHA-256 over the
// batch's CRCs): equal digests for every batch, and the migration is
// "verified"; a differing batch names the pages to look at. A per-page CRC
// costs far less than the copy it guards; SHA-256 runs over the CRC tables,
// 16 KiB per 4096 pages, not over the memory.
import { createHash } from 'node:crypto';
import { crc32c, crc32cPages } from '../checksum/crc32c.js';
import { firstPageMismatch } from '../pages/page-checksums.js';

export const DIGEST_BATCH_PAGES = 4096;

export class PageDigestTable {
  private readonly crcs: Uint32Array;
  /** Pages with a digest (sent, or installed). */
  private readonly recorded: Uint8Array;

  constructor(readonly pageCount: number, readonly pageSizeBytes: number) {
    this.crcs = new Uint32Array(pageCount);
    this.recorded = new Uint8Array(pageCount);
  }

  /** `bytes` holds whole pages from `firstPage`: record each one's CRC32C; returns them (what goes on the wire with the pages). */
  record(firstPage: number, bytes: Uint8Array): Uint32Array {
    const out = crc32cPages(bytes, this.pageSizeBytes);
    this.crcs.set(out, firstPage);
    this.recorded.fill(1, firstPage, firstPage + out.length);
    return out;
  }

  /**
   * Pages that arrived with the source's CRC32C each: the first page (its
   * index) whose bytes do not match, or -1 — and then, only then, each one's
   * CRC is recorded as installed.
   */
  checkAndRecord(firstPage: number, bytes: Uint8Array, checksums: Uint32Array, computed?: Uint32Array): number {
    const pages = bytes.length / this.pageSizeBytes;
    if (checksums.length !== pages) return firstPage;
    // `computed`: the bytes' CRC32Cs, already taken (the frame's check did it, a 4 KiB block a page).
    const bad = firstPageMismatch(bytes, this.pageSizeBytes, checksums, 'crc32c', computed);
    if (bad) return firstPage + bad.index;
    this.crcs.set(checksums, firstPage);
    this.recorded.fill(1, firstPage, firstPage + pages);
    return -1;
  }

  /** A page sent (or installed) as all zero. */
  recordZero(page: number): void {
    this.crcs[page] = this.zeroCrc;
    this.recorded[page] = 1;
  }

  crcOf(page: number): number | undefined {
    return this.recorded[page] ? this.crcs[page] : undefined;
  }

  get recordedCount(): number {
    let n = 0;
    for (const r of this.recorded) n += r;
    return n;
  }

  /** One SHA-256 per batch of DIGEST_BATCH_PAGES pages, over (recorded, crc) of each page. */
  batchDigests(): Uint8Array[] {
    const out: Uint8Array[] = [];
    for (let first = 0; first < this.pageCount; first += DIGEST_BATCH_PAGES) {
      const end = Math.min(this.pageCount, first + DIGEST_BATCH_PAGES);
      const hash = createHash('sha256');
      hash.update(this.recorded.subarray(first, end));
      hash.update(new Uint8Array(this.crcs.buffer, first * 4, (end - first) * 4));
      out.push(new Uint8Array(hash.digest()));
    }
    return out;
  }

  private get zeroCrc(): number {
    ZERO_CRC[this.pageSizeBytes] ??= crc32c(new Uint8Array(this.pageSizeBytes));
    return ZERO_CRC[this.pageSizeBytes]!;
  }
}

const ZERO_CRC: Record<number, number> = {};

/** Batches whose digests differ (or that one side lacks). */
export function differingBatches(a: readonly Uint8Array[], b: readonly Uint8Array[]): number[] {
  const out: number[] = [];
  for (let i = 0; i < Math.max(a.length, b.length); i++) {
    const x = a[i];
    const y = b[i];
    if (!x || !y || Buffer.compare(x, y) !== 0) out.push(i);
  }
  return out;
}
