import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { open, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { SnapshotCorruptError, SnapshotTruncatedError, writeSnapshot } from '../../src/snapshot/index.js';
import { SourceReadError, type PageSource } from '../../src/sources/page-source.js';
import { RawFileSource } from '../../src/sources/raw-file-source.js';
import { SnapshotSource } from '../../src/sources/snapshot-source.js';
import { PAGE, TWO_REGIONS, patternImage, tempDir, twoRegionImage } from '../snapshot/fixtures.js';

async function twoRegionSource(dir: string): Promise<{ source: SnapshotSource; expected: Uint8Array; path: string }> {
  const path = join(dir, 'a.snap');
  const { written, expected } = twoRegionImage();
  await writeSnapshot(path, { ...TWO_REGIONS, content: written });
  return { source: await SnapshotSource.open(path), expected, path };
}

/** Count FileHandle.read calls (every SnapshotFile and RawFileSource read goes through it) while fn runs. */
async function countFileReads(fn: () => Promise<void>): Promise<number> {
  const probe = await open(import.meta.filename, 'r');
  const prototype = Object.getPrototypeOf(probe) as { read: (...args: unknown[]) => Promise<unknown> };
  await probe.close();
  const original = prototype.read;
  let calls = 0;
  prototype.read = function (this: unknown, ...args: unknown[]) {
    calls++;
    return original.apply(this, args);
  };
  try {
    await fn();
  } finally {
    prototype.read = original;
  }
  return calls;
}

describe('a snapshot page source', () => {
  test('reads what was saved, page by page, with gaps and zero pages as zero', async (t) => {
    const { source, expected } = await twoRegionSource(await tempDir(t));
    try {
      assert.equal(source.sizeBytes, 32 * PAGE);
      assert.match(source.description, /^snapshot .*a\.snap$/);
      for (let page = 0; page < 32; page++) {
        const target = new Uint8Array(PAGE).fill(0xee);
        await source.read(page * PAGE, PAGE, target);
        assert.deepEqual(target, expected.subarray(page * PAGE, (page + 1) * PAGE), `page ${page}`);
      }
    } finally {
      await source.close();
    }
  });

  test('isZero is true exactly for zero pages and gaps', async (t) => {
    const { source } = await twoRegionSource(await tempDir(t));
    try {
      const zero = new Set([...TWO_REGIONS.zeroPages, ...TWO_REGIONS.gapPages]);
      for (let page = 0; page < 32; page++) assert.equal(source.isZero(page * PAGE, PAGE), zero.has(page), `page ${page}`);
      assert.equal(source.isZero(16 * PAGE, 9 * PAGE), true);
    } finally {
      await source.close();
    }
  });

  test('a run of stored pages is one read, and zero pages and gaps are not read at all', async (t) => {
    const { source, expected } = await twoRegionSource(await tempDir(t));
    try {
      const target = new Uint8Array(32 * PAGE);
      // Pages 6..14 are stored and consecutive in the file.
      assert.equal(await countFileReads(() => source.read(6 * PAGE, 9 * PAGE, target)), 1);
      assert.deepEqual(target.subarray(0, 9 * PAGE), expected.subarray(6 * PAGE, 15 * PAGE));
      // Zero pages 3..5, page 15 and the gap up to page 24 (also zero).
      assert.equal(await countFileReads(() => source.read(15 * PAGE, 10 * PAGE, target)), 0);
      // The whole image: stored pages 0..2, 6..14 and 25..31 are three runs, so three reads.
      assert.equal(await countFileReads(() => source.read(0, 32 * PAGE, target)), 3);
      assert.deepEqual(target, expected);
    } finally {
      await source.close();
    }
  });

  test('a corrupt page rejects the read with SourceReadError caused by SnapshotCorruptError', async (t) => {
    const dir = await tempDir(t);
    const { source, path } = await twoRegionSource(dir);
    try {
      const dataOffset = source.snapshot.header.data.offset;
      const bytes = await readFile(path);
      bytes[dataOffset + PAGE + 1]! ^= 0x80; // stored page 1 = image page 1
      await writeFile(path, bytes);
      await assert.rejects(source.read(0, 4 * PAGE, new Uint8Array(4 * PAGE)), (error: unknown) => {
        assert.ok(error instanceof SourceReadError);
        assert.equal(error.offset, 0);
        assert.equal(error.lengthBytes, 4 * PAGE);
        assert.ok(error.cause instanceof SnapshotCorruptError);
        assert.equal(error.cause.pageIndex, 1);
        assert.equal(error.cause.imageOffset, PAGE);
        return true;
      });
      await source.read(2 * PAGE, PAGE, new Uint8Array(PAGE));
    } finally {
      await source.close();
    }
  });

  test('a truncated snapshot is refused when the source is opened', async (t) => {
    const dir = await tempDir(t);
    const { source, path } = await twoRegionSource(dir);
    await source.close();
    const bytes = await readFile(path);
    await writeFile(path, bytes.subarray(0, bytes.length - PAGE));
    await assert.rejects(SnapshotSource.open(path), SnapshotTruncatedError);
  });

  test('reads outside the image are refused', async (t) => {
    const { source } = await twoRegionSource(await tempDir(t));
    try {
      await assert.rejects(source.read(31 * PAGE, 2 * PAGE, new Uint8Array(2 * PAGE)), SourceReadError);
    } finally {
      await source.close();
    }
  });
});

describe('a raw file page source', () => {
  test('reads the file byte for byte, in one read per request', async (t) => {
    const path = join(await tempDir(t), 'guest.mem');
    const image = patternImage(64, [3]);
    await writeFile(path, image);
    const source = await RawFileSource.open(path);
    try {
      assert.equal(source.sizeBytes, 64 * PAGE);
      assert.equal((source as PageSource).isZero, undefined, 'a raw file cannot say which pages are zero');
      const target = new Uint8Array(16 * PAGE);
      assert.equal(await countFileReads(() => source.read(8 * PAGE, 16 * PAGE, target)), 1);
      assert.deepEqual(target, image.subarray(8 * PAGE, 24 * PAGE));
    } finally {
      await source.close();
    }
  });

  test('an image starting inside the file is read from its offset', async (t) => {
    const path = join(await tempDir(t), 'guest.mem');
    const image = patternImage(8);
    await writeFile(path, image);
    const source = await RawFileSource.open(path, { fileOffset: 2 * PAGE, sizeBytes: 4 * PAGE });
    try {
      const target = new Uint8Array(PAGE);
      await source.read(3 * PAGE, PAGE, target);
      assert.deepEqual(target, image.subarray(5 * PAGE, 6 * PAGE));
      await assert.rejects(source.read(4 * PAGE, PAGE, target), SourceReadError);
    } finally {
      await source.close();
    }
  });

  test('a file shorter than the size asked is refused at open', async (t) => {
    const path = join(await tempDir(t), 'guest.mem');
    await writeFile(path, patternImage(3));
    await assert.rejects(RawFileSource.open(path, { sizeBytes: 4 * PAGE }), SourceReadError);
  });
});
