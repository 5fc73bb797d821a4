// The snapshot object layout as pure functions: a snapshot file laid out as an
// object and decoded back, every truncation and every flipped byte of its
// header and index refused with a typed error, reads planned piece by piece.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { writeSnapshot, SnapshotFile } from '../../src/snapshot/index.js';
import { OBJECT_HEADER_BYTES, SnapshotObjectLayout, decodeObjectHeader, encodeObjectHeader, type SnapshotObjectHeader } from '../../src/snapshot/object-layout.js';
import { SnapshotError } from '../../src/snapshot/errors.js';
import { SnapshotObjectFormatError, SnapshotObjectVersionError } from '../../src/snapshot/object-errors.js';
import { prepareSnapshotObject } from '../../src/s3/snapshot-push.js';

const PAGE = 4096;

/** A snapshot with two regions and a gap, zero pages here and there, metadata; its object bytes for a chunk span of `chunkBytes`. */
async function objectBytes(chunkBytes: number): Promise<{ bytes: Uint8Array; image: Uint8Array; path: string; cleanup: () => void }> {
  const dir = mkdtempSync(join(tmpdir(), 'uf-object-'));
  const image = new Uint8Array(96 * PAGE);
  for (let page = 0; page < 96; page++) if (page % 5 !== 0) image.fill((page * 7) & 255 || 1, page * PAGE, page * PAGE + 300);
  const path = join(dir, 'a.snap');
  await writeSnapshot(path, {
    regions: [{ imageOffset: 0, lengthBytes: 32 * PAGE, name: 'low' }, { imageOffset: 48 * PAGE, lengthBytes: 48 * PAGE, name: 'high' }],
    imageSizeBytes: 96 * PAGE,
    content: image,
    metadata: Buffer.from('{"kind":"test"}'),
  });
  // Bytes in the gap are not part of the image: they read as zero.
  image.fill(0, 32 * PAGE, 48 * PAGE);
  const prepared = await prepareSnapshotObject(path, { chunkBytes });
  const bytes = await prepared.bytesAt(0, prepared.sizeBytes);
  await prepared.close();
  return { bytes, image, path, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

function decode(bytes: Uint8Array): SnapshotObjectLayout {
  const header = decodeObjectHeader(bytes, { objectSizeBytes: bytes.length });
  return SnapshotObjectLayout.decode(header, bytes.subarray(OBJECT_HEADER_BYTES, OBJECT_HEADER_BYTES + header.index.lengthBytes));
}

/** The image as the layout reads it back from the object's chunks. */
function readImage(layout: SnapshotObjectLayout, bytes: Uint8Array, offset: number, length: number): Uint8Array {
  const out = new Uint8Array(length).fill(0xaa);
  for (const piece of layout.planRead(offset, length)) {
    if (piece.type === 'zero') out.fill(0, piece.targetOffset, piece.targetOffset + piece.lengthBytes);
    else {
      const range = layout.chunkRange(piece.chunk);
      out.set(bytes.subarray(range.offset + piece.chunkOffset, range.offset + piece.chunkOffset + piece.lengthBytes), piece.targetOffset);
    }
  }
  return out;
}

describe('snapshot object layout', () => {
  test('a snapshot laid out as an object decodes to its regions, page table, chunks and metadata, and every range reads back as the image', async (t) => {
    const { bytes, image, path, cleanup } = await objectBytes(8 * PAGE);
    t.after(cleanup);
    const layout = decode(bytes);
    const file = await SnapshotFile.open(path);
    t.after(() => file.close());
    assert.deepEqual(layout.regions, file.regions);
    assert.deepEqual(layout.pageTable.kinds, file.pageTable.kinds);
    assert.equal(Buffer.from(layout.metadata).toString(), '{"kind":"test"}');
    assert.equal(layout.chunks.chunkCount, 10, '80 pages in chunks of 8');
    assert.equal(layout.header.data.lengthBytes, file.header.data.lengthBytes, 'zero pages are not stored');
    for (const [offset, length] of [[0, 96 * PAGE], [5 * PAGE, PAGE], [31 * PAGE, 18 * PAGE], [100, 5000], [40 * PAGE, PAGE], [95 * PAGE, PAGE]] as const) {
      assert.deepEqual(readImage(layout, bytes, offset, length), image.subarray(offset, offset + length), `[${offset}, +${length})`);
    }
    assert.equal(layout.isZero(32 * PAGE, 16 * PAGE), true, 'the gap');
    assert.equal(layout.isZero(0, PAGE), true, 'page 0 is a zero page');
    assert.equal(layout.isZero(0, 2 * PAGE), false);
    assert.deepEqual(layout.chunksOf(6 * PAGE, 4 * PAGE), [0, 1], 'a read across a chunk boundary needs both');
  });

  test('the object header truncated at every length is refused with a SnapshotObjectFormatError', async (t) => {
    const { bytes, cleanup } = await objectBytes(16 * PAGE);
    t.after(cleanup);
    for (let length = 0; length < OBJECT_HEADER_BYTES; length++) {
      assert.throws(() => decodeObjectHeader(bytes.subarray(0, length)), SnapshotObjectFormatError, `${length} bytes`);
    }
  });

  test('every flipped byte of the header or index is refused with a typed snapshot error, never decoded', async (t) => {
    const { bytes, cleanup } = await objectBytes(16 * PAGE);
    t.after(cleanup);
    const header = decodeObjectHeader(bytes);
    const indexEnd = OBJECT_HEADER_BYTES + header.index.lengthBytes;
    for (let at = 0; at < indexEnd; at += at < OBJECT_HEADER_BYTES ? 1 : 7) {
      const bad = bytes.slice(0, indexEnd);
      bad[at] ^= 0x01;
      assert.throws(() => decode(Buffer.concat([bad, bytes.subarray(indexEnd)])), (e: unknown) => e instanceof SnapshotError, `byte ${at}`);
    }
  });

  test('the index truncated at every length is refused', async (t) => {
    const { bytes, cleanup } = await objectBytes(16 * PAGE);
    t.after(cleanup);
    const header = decodeObjectHeader(bytes);
    for (let length = 0; length < header.index.lengthBytes; length += 13) {
      assert.throws(() => SnapshotObjectLayout.decode(header, bytes.subarray(OBJECT_HEADER_BYTES, OBJECT_HEADER_BYTES + length)), SnapshotObjectFormatError);
    }
  });

  test('a well-formed header that lies about sizes is refused before anything is allocated from it', async (t) => {
    const { bytes, cleanup } = await objectBytes(16 * PAGE);
    t.after(cleanup);
    const header = decodeObjectHeader(bytes);
    const lie = (change: Partial<SnapshotObjectHeader>, message: RegExp, options: { objectSizeBytes?: number; maxIndexBytes?: number } = {}): void => {
      const encoded = encodeObjectHeader({ ...header, ...change });
      assert.throws(() => decodeObjectHeader(encoded, options), (e: unknown) => e instanceof SnapshotObjectFormatError && message.test(e.message));
    };
    lie({ index: { ...header.index, lengthBytes: 2 ** 40 } }, /an index of 1099511627776 bytes/);
    lie({}, /the store says the object is 100 bytes.*truncated/, { objectSizeBytes: 100 });
    lie({}, /an index of \d+ bytes \(this reader takes 256 to 1000\)/, { maxIndexBytes: 1000 });
    lie({ objectSizeBytes: header.objectSizeBytes + PAGE }, /the object is \d+ bytes, its data ends at/);
    lie({ chunkPages: 0 }, /a chunk of 0 pages/);
    lie({ chunkPages: 1 << 20 }, /not between one page and/);
    lie({ pageSize: 3000 }, /page size 3000/);
    lie({ chunkCount: 2 ** 40 }, /chunks do not fit/);
    lie({ data: { ...header.data, offset: header.data.offset + PAGE } }, /the data starts at/);
    assert.throws(() => decodeObjectHeader(encodeObjectHeader({ ...header, version: 7 })), SnapshotObjectVersionError);
    assert.throws(() => decodeObjectHeader(Buffer.from('UFSNAP\0\x01'.padEnd(200, 'x'))), /bad magic .*a snapshot file\? push it/);
  });

  test('a chunk table that disagrees with the page table is refused', async (t) => {
    const { bytes, cleanup } = await objectBytes(8 * PAGE);
    t.after(cleanup);
    const header = decodeObjectHeader(bytes);
    const index = bytes.slice(OBJECT_HEADER_BYTES, OBJECT_HEADER_BYTES + header.index.lengthBytes);
    const layout = SnapshotObjectLayout.decode(header, index);
    // Chunk 1's stored-page count, with the index CRC fixed up: only the table's own check can catch it.
    const chunkTableAt = 256 + layout.snapshotHeader.regionTable.lengthBytes + layout.snapshotHeader.pageTable.lengthBytes;
    index[chunkTableAt + 48 + 8] ^= 0x01;
    const { crc32 } = await import('node:zlib');
    assert.throws(() => SnapshotObjectLayout.decode({ ...header, index: { ...header.index, crc32: crc32(index) } }, index), /chunk table: chunk 1 says/);
  });
});
