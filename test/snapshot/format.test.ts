import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import {
  HEADER_LENGTH_BYTES,
  PageKind,
  PageTable,
  SnapshotCorruptError,
  SnapshotError,
  SnapshotFormatError,
  SnapshotTruncatedError,
  SnapshotVersionError,
  decodeHeader,
  decodePageTable,
  decodeRegionTable,
  encodeHeader,
  encodePageTable,
  encodeRegionTable,
  findRegionIndex,
  isAllZero,
  planSnapshot,
  type SnapshotHeader,
} from '../../src/snapshot/index.js';
import { crc32 } from 'node:zlib';
import { PAGE, TWO_REGIONS } from './fixtures.js';

/** A consistent header for the TWO_REGIONS layout with 20 stored pages and 100 bytes of metadata. */
function sampleHeader(overrides: Partial<SnapshotHeader> = {}): Omit<SnapshotHeader, 'headerLengthBytes'> {
  const plan = planSnapshot(TWO_REGIONS);
  const dataLengthBytes = 20 * PAGE;
  return {
    version: 1,
    pageSize: PAGE,
    flags: 0,
    regionCount: 2,
    imageSizeBytes: TWO_REGIONS.imageSizeBytes,
    fileSizeBytes: plan.dataOffset + dataLengthBytes + 100,
    pageCount: 24,
    dataPageCount: 20,
    regionTable: { offset: plan.regionTableOffset, lengthBytes: 128, crc32: 0x1234 },
    pageTable: { offset: plan.pageTableOffset, lengthBytes: 24 * 16, crc32: 0x5678 },
    data: { offset: plan.dataOffset, lengthBytes: dataLengthBytes },
    metadata: { offset: plan.dataOffset + dataLengthBytes, lengthBytes: 100, crc32: 0x9abc },
    ...overrides,
  };
}

describe('snapshot header', () => {
  test('a header survives encoding and decoding', () => {
    const header = sampleHeader();
    const bytes = encodeHeader(header);
    assert.equal(bytes.length, HEADER_LENGTH_BYTES);
    assert.deepEqual(decodeHeader(bytes), { ...header, headerLengthBytes: HEADER_LENGTH_BYTES });
  });

  test('decoding fails as truncated at every truncation offset', () => {
    const bytes = encodeHeader(sampleHeader());
    for (let length = 0; length < bytes.length; length++) {
      assert.throws(
        () => decodeHeader(bytes.subarray(0, length)),
        (error: unknown) => error instanceof SnapshotTruncatedError && error.actualBytes === length && error.structure === 'header',
        `a header cut at ${length} bytes`,
      );
    }
  });

  test('a flipped byte anywhere in the header is refused, and past the magic it reads as corruption', () => {
    const bytes = encodeHeader(sampleHeader());
    for (let offset = 0; offset < bytes.length; offset++) {
      const damaged = bytes.slice();
      damaged[offset]! ^= 0x40;
      const expected = offset < 8 ? SnapshotFormatError : offset >= 12 && offset < 16 ? SnapshotError : SnapshotCorruptError;
      assert.throws(() => decodeHeader(damaged), expected, `byte ${offset} flipped`);
    }
  });

  test('a file that does not start with the magic is not a snapshot', () => {
    const bytes = new TextEncoder().encode('\x7fELF and the rest of some other file');
    assert.throws(() => decodeHeader(bytes), (error: unknown) => error instanceof SnapshotFormatError && /bad magic/.test(error.message));
  });

  test('a well-formed header of a newer version is refused as a version, not as corruption', () => {
    const bytes = encodeHeader(sampleHeader({ version: 3 }));
    assert.throws(() => decodeHeader(bytes), (error: unknown) => error instanceof SnapshotVersionError && error.version === 3);
  });

  test('unknown flags, a bad page size and inconsistent sections are refused', () => {
    const plan = planSnapshot(TWO_REGIONS);
    const cases: [string, Partial<SnapshotHeader>][] = [
      ['flags', { flags: 1 }],
      ['page size', { pageSize: 3000 }],
      ['page size', { pageSize: 2048 }],
      ['overlap', { pageTable: { offset: plan.regionTableOffset + 64, lengthBytes: 24 * 16, crc32: 0 } }],
      ['past the', { fileSizeBytes: 4096 }],
      ['page-aligned', { data: { offset: plan.dataOffset + 8, lengthBytes: 20 * PAGE } }],
      ['data section', { dataPageCount: 19 }],
      ['region table', { regionCount: 3 }],
    ];
    for (const [words, override] of cases) {
      assert.throws(
        () => decodeHeader(encodeHeader(sampleHeader(override))),
        (error: unknown) => error instanceof SnapshotFormatError && error.message.includes(words),
        JSON.stringify(override),
      );
    }
  });
});

describe('snapshot region and page tables', () => {
  const plan = planSnapshot(TWO_REGIONS);
  const regionBytes = encodeRegionTable(plan.regions);
  const table = new PageTable(plan.pageCount);
  for (let index = 0, data = 0; index < plan.pageCount; index++) {
    if (index % 3 === 0) continue;
    table.kinds[index] = PageKind.data;
    table.crc32s[index] = 0xdead0000 + index;
    table.dataIndexes[index] = data++;
  }
  const pageBytes = encodePageTable(table);
  const header = decodeHeader(
    encodeHeader(
      sampleHeader({
        dataPageCount: table.dataPageCount,
        regionTable: { offset: plan.regionTableOffset, lengthBytes: regionBytes.length, crc32: crc32(regionBytes) },
        pageTable: { offset: plan.pageTableOffset, lengthBytes: pageBytes.length, crc32: crc32(pageBytes) },
        data: { offset: plan.dataOffset, lengthBytes: table.dataPageCount * PAGE },
        metadata: { offset: plan.dataOffset + table.dataPageCount * PAGE, lengthBytes: 0, crc32: 0 },
        fileSizeBytes: plan.dataOffset + table.dataPageCount * PAGE,
      }),
    ),
  );

  test('regions survive encoding and decoding, names and 64-bit guest addresses included', () => {
    const regions = decodeRegionTable(regionBytes, header);
    assert.deepEqual(regions, plan.regions);
    assert.equal(regions[1]!.guestPhysAddress, 0x1_0000_0000);
    assert.equal(regions[0]!.guestPhysAddress, 0, 'the guest address defaults to the image offset');
    assert.deepEqual(regions.map((region) => region.name), ['low', 'high']);
  });

  test('the page table survives encoding and decoding', () => {
    const decoded = decodePageTable(pageBytes, header);
    assert.deepEqual(decoded.kinds, table.kinds);
    assert.deepEqual(decoded.crc32s, table.crc32s);
    assert.deepEqual(decoded.dataIndexes, table.dataIndexes);
  });

  test('a flipped byte in either table is SnapshotCorruptError naming the table', () => {
    for (const [structure, bytes, decode] of [
      ['region table', regionBytes, () => decodeRegionTable],
      ['page table', pageBytes, () => decodePageTable],
    ] as const) {
      for (let offset = 0; offset < bytes.length; offset += 7) {
        const damaged = bytes.slice();
        damaged[offset]! ^= 1;
        assert.throws(
          () => decode()(damaged, header),
          (error: unknown) => error instanceof SnapshotCorruptError && error.structure === structure,
          `${structure} byte ${offset}`,
        );
      }
    }
  });

  test('a table cut short is SnapshotTruncatedError', () => {
    assert.throws(() => decodePageTable(pageBytes.subarray(0, pageBytes.length - 1), header), SnapshotTruncatedError);
    assert.throws(() => decodeRegionTable(regionBytes.subarray(0, 10), header), SnapshotTruncatedError);
  });

  test('image offsets find their region, and gaps find none', () => {
    const { regions } = plan;
    assert.equal(findRegionIndex(regions, 0), 0);
    assert.equal(findRegionIndex(regions, 16 * PAGE - 1), 0);
    assert.equal(findRegionIndex(regions, 16 * PAGE), -1);
    assert.equal(findRegionIndex(regions, 23 * PAGE + 5), -1);
    assert.equal(findRegionIndex(regions, 24 * PAGE), 1);
    assert.equal(findRegionIndex(regions, 32 * PAGE - 1), 1);
  });
});

describe('snapshot regions a writer asks for', () => {
  const refuse = (problem: RegExp, options: Parameters<typeof planSnapshot>[0]): void => {
    assert.throws(() => planSnapshot(options), (error: unknown) => error instanceof SnapshotFormatError && problem.test(error.message));
  };

  test('overlapping regions are refused, in whatever order they are given', () => {
    refuse(/overlaps/, { regions: [{ imageOffset: 8 * PAGE, lengthBytes: 4 * PAGE }, { imageOffset: 0, lengthBytes: 9 * PAGE }] });
    refuse(/overlaps/, { regions: [{ imageOffset: 0, lengthBytes: PAGE }, { imageOffset: 0, lengthBytes: PAGE }] });
  });

  test('misaligned regions are refused', () => {
    refuse(/starts at image offset 100/, { regions: [{ imageOffset: 100, lengthBytes: PAGE }] });
    refuse(/4097 bytes long/, { regions: [{ imageOffset: 0, lengthBytes: PAGE + 1 }] });
    refuse(/0 bytes long/, { regions: [{ imageOffset: 0, lengthBytes: 0 }] });
    refuse(/guest physical address 0x1001/, { regions: [{ imageOffset: 0, lengthBytes: PAGE, guestPhysAddress: 0x1001 }] });
    refuse(/guest physical address .* below 2\^53/, { regions: [{ imageOffset: 0, lengthBytes: PAGE, guestPhysAddress: 1n << 60n }] });
    refuse(/not a multiple of the 16384-byte page size/, { pageSize: 16384, regions: [{ imageOffset: PAGE, lengthBytes: 16384 }] });
  });

  test('a page size that is not a power of two from 4 KiB to 1 GiB is refused', () => {
    for (const pageSize of [0, 512, 4095, 6144, 2 ** 31]) refuse(/page size/, { pageSize, regions: [] });
  });

  test('regions past the image, and names too long, are refused', () => {
    refuse(/past the 4096-byte image/, { imageSizeBytes: PAGE, regions: [{ imageOffset: 0, lengthBytes: 2 * PAGE }] });
    refuse(/name is 33 bytes/, { regions: [{ imageOffset: 0, lengthBytes: PAGE, name: 'x'.repeat(33) }] });
  });

  test('the data section starts page-aligned after the tables', () => {
    const plan = planSnapshot({ pageSize: 2 ** 21, regions: [{ imageOffset: 0, lengthBytes: 2 ** 22 }] });
    assert.equal(plan.dataOffset, 2 ** 21);
    assert.equal(plan.pageCount, 2);
  });

  test('zero detection sees a single set byte', () => {
    const page = new Uint8Array(PAGE);
    assert.equal(isAllZero(page), true);
    page[PAGE - 1] = 1;
    assert.equal(isAllZero(page), false);
  });
});
