import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile, stat, truncate, writeFile, appendFile } from 'node:fs/promises';
import { join } from 'node:path';
import {
  SnapshotCorruptError,
  SnapshotError,
  SnapshotFile,
  SnapshotFormatError,
  SnapshotTruncatedError,
  formatSnapshotReport,
  inspectSnapshot,
  writeSnapshot,
} from '../../src/snapshot/index.js';
import { PAGE, TWO_REGIONS, patternImage, tempDir, twoRegionImage } from './fixtures.js';

const METADATA = new TextEncoder().encode(JSON.stringify({ vcpus: [{ rip: '0xfff0' }], devices: ['serial'] }));

async function writeTwoRegions(dir: string, name = 'a.snap'): Promise<{ path: string; expected: Uint8Array }> {
  const path = join(dir, name);
  const { written, expected } = twoRegionImage();
  await writeSnapshot(path, { ...TWO_REGIONS, content: written, metadata: METADATA });
  return { path, expected };
}

async function withSnapshot<T>(path: string, use: (file: SnapshotFile) => Promise<T>): Promise<T> {
  const file = await SnapshotFile.open(path);
  try {
    return await use(file);
  } finally {
    await file.close();
  }
}

/** Flip one byte of a file in place. */
async function flipByte(path: string, offset: number): Promise<void> {
  const bytes = await readFile(path);
  bytes[offset]! ^= 0x10;
  await writeFile(path, bytes);
}

describe('reading a snapshot', () => {
  test('version 2 checks pages by CRC32C; a version 1 file (CRC32) still reads, and a flipped page byte is caught in either', async (t) => {
    const { crc32 } = await import('node:zlib');
    const { crc32c } = await import('../../src/checksum/crc32c.js');
    const dir = await tempDir(t);
    const { written, expected } = twoRegionImage();
    for (const version of [1, 2] as const) {
      const path = join(dir, `v${version}.snap`);
      await writeSnapshot(path, { ...TWO_REGIONS, content: written, metadata: METADATA, version });
      let flipAt = 0;
      await withSnapshot(path, async (file) => {
        assert.equal(file.header.version, version);
        const info = file.pageInfo(0) as { type: string; fileOffset: number; crc32: number };
        assert.equal(info.type, 'data');
        const page = expected.subarray(0, PAGE);
        assert.equal(info.crc32, version === 1 ? crc32(page) : crc32c(page), `version ${version} records ${version === 1 ? 'CRC32' : 'CRC32C'}`);
        const target = new Uint8Array(expected.length);
        await file.readPages(0, expected.length, target);
        assert.deepEqual(target, expected);
        flipAt = info.fileOffset + 5;
      });
      assert.equal((await inspectSnapshot(path)).pageChecksum, version === 1 ? 'CRC32' : 'CRC32C');
      await flipByte(path, flipAt);
      await withSnapshot(path, async (file) => {
        await assert.rejects(file.readPages(0, PAGE, new Uint8Array(PAGE)), (error: unknown) => error instanceof SnapshotCorruptError && error.message.includes(version === 1 ? 'CRC32 ' : 'CRC32C '));
      });
    }
    // The CRC32C is the standard one (RFC 3720's check value).
    assert.equal(crc32c(new TextEncoder().encode('123456789')), 0xe3069283);
  });

  test('a small image with zero pages, data pages and a gap reads back byte for byte', async (t) => {
    const { path, expected } = await writeTwoRegions(await tempDir(t));
    await withSnapshot(path, async (file) => {
      assert.equal(file.header.pageCount, 24);
      assert.equal(file.header.dataPageCount, 24 - TWO_REGIONS.zeroPages.length);
      assert.deepEqual(file.metadata, METADATA);
      const target = new Uint8Array(expected.length).fill(0xee);
      await file.readPages(0, expected.length, target);
      assert.deepEqual(target, expected);
    });
  });

  test('zero pages are not stored: the data section holds only the data pages', async (t) => {
    const { path } = await writeTwoRegions(await tempDir(t));
    const { size } = await stat(path);
    await withSnapshot(path, async (file) => {
      assert.equal(file.header.data.lengthBytes, 19 * PAGE);
      assert.equal(size, file.header.data.offset + 19 * PAGE + METADATA.length);
      assert.equal(file.header.data.offset % PAGE, 0);
    });
  });

  test('page info tells data, zero and gap pages apart', async (t) => {
    const { path } = await writeTwoRegions(await tempDir(t));
    await withSnapshot(path, async (file) => {
      assert.equal(file.pageInfo(0).type, 'data');
      assert.deepEqual(file.pageInfo(4 * PAGE + 17), { type: 'zero', imageOffset: 4 * PAGE, pageIndex: 4, regionIndex: 0 });
      assert.deepEqual(file.pageInfo(20 * PAGE), { type: 'gap', imageOffset: 20 * PAGE });
      assert.equal(file.pageInfo(24 * PAGE).type, 'zero');
      const info = file.pageInfo(25 * PAGE);
      assert.equal(info.type, 'data');
      if (info.type === 'data') {
        assert.equal(info.pageIndex, 17);
        assert.equal(info.regionIndex, 1);
        assert.equal(info.fileOffset, file.header.data.offset + 12 * PAGE, 'the 13th stored page: region "low" stores 12');
      }
      assert.throws(() => file.pageInfo(32 * PAGE), RangeError);
    });
  });

  test('reads at any offset and length return the image bytes', async (t) => {
    const { path, expected } = await writeTwoRegions(await tempDir(t));
    await withSnapshot(path, async (file) => {
      let seed = 7;
      const random = (limit: number): number => {
        seed = (seed * 1103515245 + 12345) >>> 0;
        return seed % limit;
      };
      for (let round = 0; round < 200; round++) {
        const offset = random(expected.length);
        const length = random(expected.length - offset + 1);
        const target = new Uint8Array(length).fill(0xee);
        await file.readPages(offset, length, target);
        assert.deepEqual(target, expected.subarray(offset, offset + length), `[${offset}, +${length})`);
      }
    });
  });

  test('isZero is true exactly for zero pages and gaps', async (t) => {
    const { path } = await writeTwoRegions(await tempDir(t));
    await withSnapshot(path, async (file) => {
      for (let page = 0; page < 32; page++) {
        const zero = TWO_REGIONS.zeroPages.includes(page) || TWO_REGIONS.gapPages.includes(page);
        assert.equal(file.isZero(page * PAGE, PAGE), zero, `page ${page}`);
      }
      assert.equal(file.isZero(3 * PAGE, 3 * PAGE), true);
      assert.equal(file.isZero(3 * PAGE, 4 * PAGE), false);
      assert.equal(file.isZero(15 * PAGE, 10 * PAGE), true, 'zero page, gap, zero page');
      assert.equal(file.isZero(0, 32 * PAGE), false);
    });
  });

  test('zeroPageMask says what isZero says, page by page, gaps included; another page size gets none', async (t) => {
    const { path } = await writeTwoRegions(await tempDir(t));
    await withSnapshot(path, async (file) => {
      const mask = file.zeroPageMask(PAGE)!;
      assert.equal(mask.length, 32);
      for (let page = 0; page < 32; page++) assert.equal(mask[page], file.isZero(page * PAGE, PAGE) ? 1 : 0, `page ${page}`);
      assert.ok(mask.includes(0) && mask.includes(1));
      assert.equal(file.zeroPageMask(2 * PAGE), undefined);
    });
  });

  test('a page size larger than the pager reads: 16 KiB pages read in 4 KiB pieces', async (t) => {
    const dir = await tempDir(t);
    const path = join(dir, 'big-pages.snap');
    const pageSize = 16384;
    const image = patternImage(8, [2], pageSize);
    await writeSnapshot(path, { pageSize, regions: [{ imageOffset: 0, lengthBytes: image.length }], content: image });
    await withSnapshot(path, async (file) => {
      assert.equal(file.pageSize, pageSize);
      for (let offset = 0; offset < image.length; offset += PAGE) {
        const target = new Uint8Array(PAGE);
        await file.readPages(offset, PAGE, target);
        assert.deepEqual(target, image.subarray(offset, offset + PAGE), `offset ${offset}`);
      }
      assert.equal(file.isZero(2 * pageSize + PAGE, PAGE), true);
    });
  });
});

describe('a damaged snapshot', () => {
  test('a flipped byte in page data is SnapshotCorruptError naming the page', async (t) => {
    const { path, expected } = await writeTwoRegions(await tempDir(t));
    const dataOffset = await withSnapshot(path, async (file) => file.header.data.offset);
    // Region "low" stores 12 pages; stored page 12 is the first of "high": image page 25, page-table index 17.
    await flipByte(path, dataOffset + 12 * PAGE + 123);
    await withSnapshot(path, async (file) => {
      const target = new Uint8Array(32 * PAGE);
      await assert.rejects(file.readPages(0, 32 * PAGE, target), (error: unknown) => {
        assert.ok(error instanceof SnapshotCorruptError);
        assert.equal(error.structure, 'page data');
        assert.equal(error.pageIndex, 17);
        assert.equal(error.imageOffset, 25 * PAGE);
        assert.equal(error.fileOffset, dataOffset + 12 * PAGE);
        assert.match(error.message, /page 17 \(image offset 0x19000\)/);
        return true;
      });
      // A part of the damaged page is refused too: the CRC covers the whole page.
      await assert.rejects(file.readPages(25 * PAGE + 4000, 10, new Uint8Array(10)), SnapshotCorruptError);
      // Every other page still reads.
      const before = new Uint8Array(25 * PAGE);
      await file.readPages(0, 25 * PAGE, before);
      assert.deepEqual(before, expected.subarray(0, 25 * PAGE));
    });
  });

  test('verifying every page reports the corrupt ones instead of throwing', async (t) => {
    const { path } = await writeTwoRegions(await tempDir(t));
    const dataOffset = await withSnapshot(path, async (file) => file.header.data.offset);
    await withSnapshot(path, async (file) => {
      assert.deepEqual(await file.verifyAll(), { ok: true, pagesChecked: 19, corruptPageCount: 0, corruptPages: [] });
    });
    await flipByte(path, dataOffset);
    await flipByte(path, dataOffset + 18 * PAGE + PAGE - 1);
    await withSnapshot(path, async (file) => {
      const report = await file.verifyAll({ chunkBytes: 3 * PAGE });
      assert.equal(report.ok, false);
      assert.equal(report.pagesChecked, 19);
      assert.deepEqual(report.corruptPages.map((page) => [page.pageIndex, page.imageOffset]), [[0, 0], [23, 31 * PAGE]]);
    });
  });

  test('a flipped byte anywhere in the header, tables or metadata is refused at open', async (t) => {
    const dir = await tempDir(t);
    const { path } = await writeTwoRegions(dir);
    const pristine = await readFile(path);
    const { tablesEnd, metadataOffset } = await withSnapshot(path, async (file) => ({
      tablesEnd: file.header.pageTable.offset + file.header.pageTable.lengthBytes,
      metadataOffset: file.header.metadata.offset,
    }));
    const damagedPath = join(dir, 'damaged.snap');
    const offsets = [...Array(tablesEnd).keys(), ...Array.from({ length: METADATA.length }, (_, index) => metadataOffset + index)];
    for (const offset of offsets) {
      const damaged = Buffer.from(pristine);
      damaged[offset]! ^= 0x01;
      await writeFile(damagedPath, damaged);
      await assert.rejects(SnapshotFile.open(damagedPath), SnapshotError, `byte ${offset} flipped`);
    }
    await writeFile(damagedPath, pristine);
    await flipByte(damagedPath, tablesEnd + 100);
    await withSnapshot(damagedPath, async () => undefined); // padding before the data carries nothing
  });

  test('a truncated file is refused at open, before any page is read', async (t) => {
    const dir = await tempDir(t);
    const { path } = await writeTwoRegions(dir);
    const pristine = await readFile(path);
    const cut = join(dir, 'cut.snap');
    const lengths = new Set<number>([0, 1, 7, 8, 100, 255, 256, 257, 300, 1000, PAGE - 1, PAGE, PAGE + 1, pristine.length - 1]);
    for (let length = 2 * PAGE; length < pristine.length; length += PAGE) lengths.add(length);
    for (const length of lengths) {
      await writeFile(cut, pristine.subarray(0, length));
      await assert.rejects(SnapshotFile.open(cut), (error: unknown) => {
        assert.ok(error instanceof SnapshotTruncatedError, `cut at ${length}: ${String(error)}`);
        assert.equal(error.actualBytes, length);
        return true;
      });
    }
  });

  test('a file truncated after it was opened fails the read as truncated', async (t) => {
    const { path } = await writeTwoRegions(await tempDir(t));
    await withSnapshot(path, async (file) => {
      await truncate(path, file.header.data.offset + 2 * PAGE);
      await assert.rejects(file.readPages(0, 16 * PAGE, new Uint8Array(16 * PAGE)), SnapshotTruncatedError);
    });
  });

  test('bytes appended to a snapshot are refused at open', async (t) => {
    const { path } = await writeTwoRegions(await tempDir(t));
    await appendFile(path, 'junk');
    await assert.rejects(SnapshotFile.open(path), (error: unknown) => error instanceof SnapshotFormatError && error.structure === 'file');
  });

  test('a file that is not a snapshot is refused by its magic', async (t) => {
    const path = join(await tempDir(t), 'not.snap');
    await writeFile(path, Buffer.alloc(PAGE, 'x'));
    await assert.rejects(SnapshotFile.open(path), (error: unknown) => error instanceof SnapshotFormatError && /bad magic/.test(error.message));
  });
});

describe('inspecting a snapshot', () => {
  test('the report counts pages, regions and metadata and survives JSON', async (t) => {
    const { path } = await writeTwoRegions(await tempDir(t));
    const report = await inspectSnapshot(path);
    assert.equal(report.version, 2);
    assert.equal(report.pageChecksum, 'CRC32C');
    assert.equal(report.pageSize, PAGE);
    assert.equal(report.imageSizeBytes, 32 * PAGE);
    assert.equal(report.gapBytes, 8 * PAGE);
    assert.equal(report.pageCount, 24);
    assert.equal(report.dataPageCount, 19);
    assert.equal(report.zeroPageCount, 5);
    assert.equal(report.metadataLengthBytes, METADATA.length);
    assert.deepEqual(report.regions[1], {
      name: 'high',
      imageOffset: 24 * PAGE,
      lengthBytes: 8 * PAGE,
      guestPhysAddress: '0x100000000',
      pageCount: 8,
      dataPageCount: 7,
      zeroPageCount: 1,
    });
    assert.equal(report.ok, true);
    assert.deepEqual(JSON.parse(JSON.stringify(report)), report);
    const text = formatSnapshotReport(report);
    assert.match(text, /pages 24: 19 stored, 5 zero/);
    assert.match(text, /19 checked, all ok/);
  });

  test('a corrupt page makes the report not ok and names the page', async (t) => {
    const { path } = await writeTwoRegions(await tempDir(t));
    const report = await inspectSnapshot(path, { verify: false });
    assert.equal(report.pages, null);
    await flipByte(path, report.layout.data.offset + 5 * PAGE);
    const damaged = await inspectSnapshot(path);
    assert.equal(damaged.ok, false);
    assert.equal(damaged.pages?.corruptPages[0]?.pageIndex, 8, 'stored page 5 is page 8, after zero pages 3, 4, 5');
    assert.match(formatSnapshotReport(damaged), /1 CORRUPT\n {4}page 8 image 0x8000/);
  });
});

describe('a missing snapshot, as a library call', () => {
  test('SnapshotFile.open of a missing file throws the library\'s own error (ENOINPUT, a UserfaultError naming the path), not Node\'s bare ENOENT', async (t) => {
    const { SnapshotFile, SnapshotNotFoundError } = await import('../../src/snapshot/index.js');
    const { UserfaultError } = await import('../../src/errors.js');
    const path = join(await tempDir(t), 'missing.snap');
    await assert.rejects(SnapshotFile.open(path), (error: unknown) => {
      assert.ok(error instanceof SnapshotNotFoundError && error instanceof UserfaultError, String(error));
      assert.equal(error.code, 'ENOINPUT');
      assert.equal(error.path, path);
      assert.equal((error.cause as { code?: string }).code, 'ENOENT');
      return true;
    });
  });
});
