import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile, readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import {
  SnapshotFile,
  SnapshotFormatError,
  SnapshotWriteError,
  SnapshotWriter,
  writeSnapshot,
} from '../../src/snapshot/index.js';
import { BufferSource } from '../../src/sources/buffer-source.js';
import { FunctionSource } from '../../src/sources/function-source.js';
import { PAGE, TWO_REGIONS, fillPage, patternImage, tempDir, twoRegionImage } from './fixtures.js';

describe('writing a snapshot', () => {
  test('an image read through a page source is saved exactly like the same bytes', async (t) => {
    const dir = await tempDir(t);
    const { written } = twoRegionImage();
    await writeSnapshot(join(dir, 'bytes.snap'), { ...TWO_REGIONS, content: written });
    await writeSnapshot(join(dir, 'source.snap'), { ...TWO_REGIONS, content: new BufferSource(written), chunkBytes: 3 * PAGE });
    assert.deepEqual(await readFile(join(dir, 'source.snap')), await readFile(join(dir, 'bytes.snap')));
  });

  test('a mostly-zero 16 MiB image makes a small file, read in 1 MiB chunks from a function', async (t) => {
    const dir = await tempDir(t);
    const path = join(dir, 'sparse.snap');
    const pages = 4096;
    const stored = new Set([0, 1, 2, 1000, 4095]);
    const requests: number[] = [];
    const content = new FunctionSource(pages * PAGE, (offset, length, target) => {
      requests.push(length);
      target.fill(0, 0, length);
      for (let page = offset / PAGE; page < (offset + length) / PAGE; page++) {
        if (stored.has(page)) fillPage(target.subarray(page * PAGE - offset, page * PAGE - offset + PAGE), page);
      }
    });
    const summary = await writeSnapshot(path, { regions: [{ imageOffset: 0, lengthBytes: pages * PAGE }], content });
    assert.equal(summary.dataPageCount, 5);
    assert.equal(summary.zeroPageCount, pages - 5);
    assert.deepEqual(new Set(requests), new Set([1 << 20]));
    assert.equal((await stat(path)).size, summary.fileSizeBytes);
    assert.ok(summary.fileSizeBytes < 100 * 1024, `${summary.fileSizeBytes} bytes`);
    const file = await SnapshotFile.open(path);
    try {
      const page = new Uint8Array(PAGE);
      const expected = new Uint8Array(PAGE);
      await file.readPages(1000 * PAGE, PAGE, page);
      fillPage(expected, 1000);
      assert.deepEqual(page, expected);
    } finally {
      await file.close();
    }
  });

  test('a snapshot with no regions is valid and empty', async (t) => {
    const path = join(await tempDir(t), 'empty.snap');
    const summary = await writeSnapshot(path, { regions: [], imageSizeBytes: 2 * PAGE, content: new Uint8Array(0) });
    assert.equal(summary.pageCount, 0);
    const file = await SnapshotFile.open(path);
    try {
      assert.equal(file.isZero(0, 2 * PAGE), true);
      const target = new Uint8Array(2 * PAGE).fill(1);
      await file.readPages(0, 2 * PAGE, target);
      assert.ok(target.every((byte) => byte === 0));
    } finally {
      await file.close();
    }
  });

  test('overlapping or misaligned regions are refused before any file exists', async (t) => {
    const dir = await tempDir(t);
    const content = patternImage(8);
    for (const regions of [
      [{ imageOffset: 0, lengthBytes: 4 * PAGE }, { imageOffset: 2 * PAGE, lengthBytes: 4 * PAGE }],
      [{ imageOffset: 512, lengthBytes: PAGE }],
      [{ imageOffset: 0, lengthBytes: PAGE + 512 }],
    ]) {
      await assert.rejects(writeSnapshot(join(dir, 'bad.snap'), { regions, content }), SnapshotFormatError);
    }
    assert.deepEqual(await readdir(dir), []);
  });

  test('an image shorter than its regions is refused and leaves nothing behind', async (t) => {
    const dir = await tempDir(t);
    const regions = [{ imageOffset: 0, lengthBytes: 8 * PAGE }];
    await assert.rejects(writeSnapshot(join(dir, 'short.snap'), { regions, content: patternImage(7) }), SnapshotFormatError);
    assert.deepEqual(await readdir(dir), []);
  });

  test('a failing content reader leaves an existing snapshot untouched and no temporary file', async (t) => {
    const dir = await tempDir(t);
    const path = join(dir, 'a.snap');
    const { written } = twoRegionImage();
    await writeSnapshot(path, { ...TWO_REGIONS, content: written });
    const before = await readFile(path);
    const failing = new FunctionSource(written.length, (offset) => {
      if (offset >= 24 * PAGE) throw new Error('the source went away');
    });
    await assert.rejects(writeSnapshot(path, { ...TWO_REGIONS, content: failing, chunkBytes: PAGE }), /the source went away/);
    assert.deepEqual(await readdir(dir), ['a.snap']);
    assert.deepEqual(await readFile(path), before);
  });
});

describe('the streaming snapshot writer', () => {
  const regions = [
    { imageOffset: 0, lengthBytes: 4 * PAGE },
    { imageOffset: 8 * PAGE, lengthBytes: 2 * PAGE },
  ];

  test('pages are taken in image order, region after region, and the writer says where it is', async (t) => {
    const dir = await tempDir(t);
    const image = patternImage(10, [1]);
    const writer = await SnapshotWriter.create(join(dir, 's.snap'), { regions });
    assert.equal(writer.nextImageOffset, 0);
    await writer.writePages(0, image.subarray(0, 3 * PAGE));
    assert.equal(writer.nextImageOffset, 3 * PAGE);
    await writer.writePages(3 * PAGE, image.subarray(3 * PAGE, 4 * PAGE));
    assert.equal(writer.nextImageOffset, 8 * PAGE, 'the gap is skipped');
    await writer.writePages(8 * PAGE, image.subarray(8 * PAGE, 10 * PAGE));
    assert.equal(writer.nextImageOffset, undefined);
    const summary = await writer.finish({ metadata: Uint8Array.of(1, 2, 3) });
    assert.equal(summary.dataPageCount, 5);
    const file = await SnapshotFile.open(join(dir, 's.snap'));
    try {
      const target = new Uint8Array(10 * PAGE);
      await file.readPages(0, 10 * PAGE, target);
      const expected = image.slice();
      expected.fill(0, 4 * PAGE, 8 * PAGE);
      assert.deepEqual(target, expected);
      assert.deepEqual(file.metadata, Uint8Array.of(1, 2, 3));
    } finally {
      await file.close();
    }
  });

  test('out-of-order pages, ragged lengths, runs past a region and an early finish are refused', async (t) => {
    const dir = await tempDir(t);
    const writer = await SnapshotWriter.create(join(dir, 's.snap'), { regions });
    const pages = (count: number): Uint8Array => patternImage(count);
    const refused = (expectedImageOffset: number | undefined, pattern: RegExp) => (error: unknown) =>
      error instanceof SnapshotWriteError && error.expectedImageOffset === expectedImageOffset && pattern.test(error.message);
    await assert.rejects(writer.writePages(PAGE, pages(1)), refused(0, /image order/));
    await assert.rejects(writer.writePages(0, new Uint8Array(100)), refused(0, /whole number/));
    await assert.rejects(writer.writePages(0, pages(5)), refused(0, /past the end of the region/));
    await writer.writePages(0, pages(4));
    await assert.rejects(writer.finish(), refused(8 * PAGE, /before every page/));
    // A refused call leaves the writer usable.
    await writer.writePages(8 * PAGE, pages(2));
    await assert.rejects(writer.writePages(10 * PAGE, pages(1)), refused(undefined, /already written/));
    await writer.finish();
    await assert.rejects(writer.writePages(0, pages(1)), /finished/);
  });

  test('a second call while one is in flight is refused', async (t) => {
    const dir = await tempDir(t);
    const writer = await SnapshotWriter.create(join(dir, 's.snap'), { regions });
    const first = writer.writePages(0, patternImage(2));
    await assert.rejects(writer.writePages(2 * PAGE, patternImage(2)), /in flight/);
    await first;
    await writer.abort();
    assert.deepEqual(await readdir(dir), []);
  });
});
