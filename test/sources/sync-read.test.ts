import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { RawFileSource } from '../../src/sources/raw-file-source.js';

test('a raw file in the page cache is read on the fast path (RWF_NOWAIT), and the bytes are the file\'s', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'userfault-raw-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const path = join(dir, 'mem');
  const content = Buffer.alloc(8 * 4096);
  for (let i = 0; i < content.length; i += 4) content.writeUInt32LE(i, i);
  writeFileSync(path, content); // just written: in the page cache
  const source = await RawFileSource.open(path);
  try {
    const target = Buffer.alloc(2 * 4096);
    assert.equal(source.readSync(3 * 4096, 2 * 4096, target), true);
    assert.equal(Buffer.compare(target, content.subarray(3 * 4096, 5 * 4096)), 0);
    assert.throws(() => source.readSync(7 * 4096, 2 * 4096, target), /outside/);
  } finally {
    await source.close();
  }
  assert.equal(source.readSync(0, 4096, Buffer.alloc(4096)), false, 'a closed source declines the fast path');
});

test('a snapshot in the page cache is read on the fast path with every CRC checked; a corrupt page throws as read() does', async (t) => {
  const { writeSnapshot, SnapshotCorruptError } = await import('../../src/snapshot/index.js');
  const { SnapshotSource } = await import('../../src/sources/snapshot-source.js');
  const { SourceReadError } = await import('../../src/sources/page-source.js');
  const { fillPattern } = await import('../../src/demo/pattern.js');
  const { readFileSync } = await import('node:fs');
  const dir = mkdtempSync(join(tmpdir(), 'userfault-snapsync-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const path = join(dir, 'image.snap');
  const image = new Uint8Array(16 * 4096);
  fillPattern(image, 0, 1, 4); // every 4th page zero: not stored
  await writeSnapshot(path, { regions: [{ imageOffset: 0, lengthBytes: image.length }], content: image });

  const source = await SnapshotSource.open(path);
  try {
    const fast = Buffer.alloc(8 * 4096);
    assert.equal(source.readSync(2 * 4096, 8 * 4096, fast), true);
    assert.equal(Buffer.compare(fast, image.subarray(2 * 4096, 10 * 4096)), 0);
  } finally {
    await source.close();
  }

  const bytes = readFileSync(path);
  const probe = await SnapshotSource.open(path);
  const info = probe.snapshot.pageInfo(5 * 4096) as { fileOffset: number };
  await probe.close();
  bytes[info.fileOffset + 7]! ^= 0x01;
  writeFileSync(path, bytes);
  const damaged = await SnapshotSource.open(path);
  try {
    assert.throws(
      () => damaged.readSync(4 * 4096, 4 * 4096, Buffer.alloc(4 * 4096)),
      (error: unknown) => error instanceof SourceReadError && error.cause instanceof SnapshotCorruptError,
    );
  } finally {
    await damaged.close();
  }
});

test('a run of cached stored pages comes as a checked view of the mapped file (one copy); a zero page in the range, a corrupt page or a closed source do not', async (t) => {
  const { writeSnapshot, SnapshotCorruptError } = await import('../../src/snapshot/index.js');
  const { SnapshotSource } = await import('../../src/sources/snapshot-source.js');
  const { SourceReadError } = await import('../../src/sources/page-source.js');
  const { fillPattern } = await import('../../src/demo/pattern.js');
  const { readFileSync } = await import('node:fs');
  const dir = mkdtempSync(join(tmpdir(), 'userfault-snapmap-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const path = join(dir, 'image.snap');
  const image = new Uint8Array(16 * 4096);
  fillPattern(image, 0, 1, 4); // every 4th page zero: not stored
  await writeSnapshot(path, { regions: [{ imageOffset: 0, lengthBytes: image.length }], content: image });
  const PAGE = 4096;

  const source = await SnapshotSource.open(path);
  // A run of stored pages between two zero ones.
  const zero = Array.from({ length: 16 }, (_, page) => source.isZero(page * PAGE, PAGE));
  const first = zero.findIndex((z, page) => !z && zero[page + 1] === false && zero[page + 2] === false);
  assert.ok(first >= 0 && zero.includes(true), 'the image has zero pages and a run of three stored ones');
  const zeroPage = zero.indexOf(true);
  try {
    const view = source.mappedPages(first * PAGE, 3 * PAGE)!;
    assert.ok(view, 'a cached run is mapped');
    assert.equal(view.length, 3 * PAGE);
    assert.equal(Buffer.compare(Buffer.from(view), Buffer.from(image.subarray(first * PAGE, (first + 3) * PAGE))), 0, 'the view holds the image\'s bytes');
    assert.equal(source.mappedPages(zeroPage * PAGE, PAGE), undefined, 'a zero page is not stored: nothing to map');
    assert.equal(source.mappedPages(0, 16 * PAGE), undefined, 'a range with zero pages in it is not one run');
    assert.throws(() => source.mappedPages(15 * PAGE, 2 * PAGE), /outside/);
  } finally {
    await source.close();
  }
  assert.equal(source.mappedPages(first * PAGE, PAGE), undefined, 'a closed source maps nothing');

  const bytes = readFileSync(path);
  const probe = await SnapshotSource.open(path);
  const info = probe.snapshot.pageInfo((first + 1) * PAGE) as { fileOffset: number };
  await probe.close();
  bytes[info.fileOffset + 9]! ^= 0x10;
  writeFileSync(path, bytes);
  const damaged = await SnapshotSource.open(path);
  try {
    assert.throws(
      () => damaged.mappedPages(first * PAGE, 3 * PAGE),
      (error: unknown) => error instanceof SourceReadError && error.failure === 'fatal' && error.cause instanceof SnapshotCorruptError && error.cause.imageOffset === (first + 1) * PAGE,
    );
  } finally {
    await damaged.close();
  }
});

test('a raw file\'s cached range comes as a view of the mapped file, at any file offset; not past the image, not once closed', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'userfault-rawmap-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const path = join(dir, 'mem');
  const content = Buffer.alloc(100 + 8 * 4096);
  for (let i = 0; i + 4 <= content.length; i += 4) content.writeUInt32LE(i * 7, i);
  writeFileSync(path, content);
  // The image starts 100 bytes in: the mapping is page-aligned, the view is not.
  const source = await RawFileSource.open(path, { fileOffset: 100 });
  try {
    const view = source.mappedPages(2 * 4096, 3 * 4096)!;
    assert.ok(view);
    assert.equal(Buffer.compare(Buffer.from(view), content.subarray(100 + 2 * 4096, 100 + 5 * 4096)), 0);
    assert.throws(() => source.mappedPages(7 * 4096, 2 * 4096), /outside/);
  } finally {
    await source.close();
  }
  assert.equal(source.mappedPages(0, 4096), undefined);
});
