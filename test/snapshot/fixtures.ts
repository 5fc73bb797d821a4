// Small snapshot images for tests: a few MiB at most, with data pages, zero pages and a gap.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { SnapshotRegionSpec } from '../../src/snapshot/index.js';

export const PAGE = 4096;

/** A temporary directory, removed when the test ends. */
export async function tempDir(t: { after(fn: () => Promise<void>): void }): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'userfault-snapshot-test-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

/** Bytes no two pages share: each page's bytes come from a generator seeded by its index. */
export function fillPage(page: Uint8Array, seed: number): void {
  let state = (seed * 2654435761 + 1) >>> 0;
  for (let index = 0; index < page.length; index++) {
    state = (state * 1103515245 + 12345) >>> 0;
    page[index] = state >>> 24;
  }
  if (page.every((byte) => byte === 0)) page[0] = 1;
}

/** An image of `pageCount` pages; the pages listed in zeroPages stay zero. */
export function patternImage(pageCount: number, zeroPages: Iterable<number> = [], pageSize = PAGE): Uint8Array {
  const image = new Uint8Array(pageCount * pageSize);
  const zeros = new Set(zeroPages);
  for (let page = 0; page < pageCount; page++) {
    if (!zeros.has(page)) fillPage(image.subarray(page * pageSize, (page + 1) * pageSize), page);
  }
  return image;
}

/**
 * 32 pages of image: region "low" = pages 0..15, a gap = pages 16..23, region "high" = pages 24..31
 * at guest physical 4 GiB. Zero pages: 3, 4, 5, 15, 24 (and the gap reads zero).
 */
export const TWO_REGIONS: { regions: SnapshotRegionSpec[]; imageSizeBytes: number; zeroPages: number[]; gapPages: number[] } = {
  regions: [
    { imageOffset: 0, lengthBytes: 16 * PAGE, name: 'low' },
    { imageOffset: 24 * PAGE, lengthBytes: 8 * PAGE, guestPhysAddress: 0x1_0000_0000n, name: 'high' },
  ],
  imageSizeBytes: 32 * PAGE,
  zeroPages: [3, 4, 5, 15, 24],
  gapPages: [16, 17, 18, 19, 20, 21, 22, 23],
};

/** The image a TWO_REGIONS snapshot reads back as: gap pages are zero whatever was there. */
export function twoRegionImage(): { written: Uint8Array; expected: Uint8Array } {
  const written = patternImage(32, TWO_REGIONS.zeroPages);
  const expected = written.slice();
  expected.fill(0, 16 * PAGE, 24 * PAGE);
  return { written, expected };
}
