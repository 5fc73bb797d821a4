// The memory-snapshot file format: pure functions over bytes. File I/O lives in reader.ts and writer.ts.
//
// A snapshot holds a flat memory image of `imageSizeBytes` (like Firecracker's guest memory file: a
// client asks for an offset in this image). Regions say which parts of the image exist; a gap between
// regions reads as zero. Every page of every region has one page-table entry; pages that are all
// zero are not stored, so a pager maps the zero page for them without reading.
//
//   file offset                                                       little-endian throughout
//   0                 +---------------------------------------------+
//                     | header (256 bytes)                          |  magic, version, page size, counts,
//                     |   ... header CRC32 in its last 4 bytes      |  offset/length/CRC32 of each section
//   256               +---------------------------------------------+
//                     | region table: regionCount x 64 bytes        |  sorted by imageOffset, page-aligned,
//                     |                                             |  non-overlapping
//                     +---------------------------------------------+
//                     | page table: pageCount x 16 bytes            |  one entry per page of each region,
//                     |                                             |  in region order: kind, CRC32, data index
//                     +---------------------------------------------+
//                     | zero padding to a multiple of pageSize      |
//   dataOffset        +---------------------------------------------+
//                     | page data: dataPageCount x pageSize         |  stored pages in page-table order,
//                     |                                             |  page-aligned (pread / O_DIRECT)
//   metadataOffset    +---------------------------------------------+
//                     | metadata: arbitrary bytes (VMM state, JSON) |  may be empty
//   fileSizeBytes     +---------------------------------------------+
//
//   header                                   region table entry (64 bytes)
//     0  u8[8] magic "UFSNAP\0\x01"            0  u64 imageOffset
//     8  u32   version (2; 1 still read)        8  u64 lengthBytes
//    12  u32   headerLengthBytes (256)         16  u64 guestPhysAddress (informational)
//    16  u32   pageSize (power of two >= 4096) 24  u64 firstPageIndex (its first page-table entry)
//    20  u32   flags (0: none defined)         32  u8[32] name, UTF-8, NUL-padded
//    24  u32   regionCount
//    28  u32   reserved (0)                  page table entry (16 bytes)
//    32  u64   imageSizeBytes                   0  u8  kind: 0 zero (not stored), 1 data
//    40  u64   fileSizeBytes                    1  u8[3] reserved (0)
//    48  u64   pageCount                        4  u32 checksum of the page's bytes (0 for zero pages)
//    56  u64   dataPageCount                    8  u64 data index: the page is at
//    64  u64   regionTable.offset                      dataOffset + index * pageSize (0 for zero pages)
//    72  u64   regionTable.lengthBytes
//    80  u64   pageTable.offset              The k-th data page in page-table order has data index k,
//    88  u64   pageTable.lengthBytes         so consecutive data pages are consecutive in the file
//    96  u64   data.offset                   and a run of them is one read.
//   104  u64   data.lengthBytes
//   112  u64   metadata.offset               Every later version keeps magic, version and
//   120  u64   metadata.lengthBytes          headerLengthBytes at offsets 0, 8, 12 and the header
//   128  u32   regionTable CRC32             CRC32 in the header's last 4 bytes, so a reader can tell
//   132  u32   pageTable CRC32               "corrupt" from "newer than me".
//   136  u32   metadata CRC32
//   140  u8[112] reserved (0)
//   252  u32   header CRC32 of bytes [0, 252)
//
// CRC32 is zlib's (IEEE 802.3), as computed by node:zlib crc32() (Node 20.15 and later): the header's
// and the sections'. A page's checksum is CRC32C (Castagnoli, the CPU's crc32 instruction) from
// version 2 on, CRC32 in version 1: the only difference between the two versions.
import { crc32 } from 'node:zlib';
import { crc32c, crc32cPages } from '../checksum/crc32c.js';
import {
  SnapshotCorruptError,
  SnapshotFormatError,
  SnapshotTruncatedError,
  SnapshotVersionError,
  type SnapshotStructure,
} from './errors.js';

/** "UFSNAP\0\x01": the last byte belongs to the magic; the format version is the u32 after it. */
export const SNAPSHOT_MAGIC: Uint8Array = Uint8Array.of(0x55, 0x46, 0x53, 0x4e, 0x41, 0x50, 0x00, 0x01);
export const SNAPSHOT_VERSION = 2;
export const SUPPORTED_SNAPSHOT_VERSIONS: readonly number[] = [1, 2];
export const HEADER_LENGTH_BYTES = 256;
export const REGION_ENTRY_BYTES = 64;
export const PAGE_ENTRY_BYTES = 16;
export const REGION_NAME_MAX_BYTES = 32;
export const DEFAULT_SNAPSHOT_PAGE_SIZE = 4096;
export const MIN_SNAPSHOT_PAGE_SIZE = 4096;
/** 1 GiB, the largest x86-64 huge page. */
export const MAX_SNAPSHOT_PAGE_SIZE = 1 << 30;

/** Kind byte of a page-table entry. */
export const PageKind = { zero: 0, data: 1 } as const;
export type PageKind = (typeof PageKind)[keyof typeof PageKind];

// Header field offsets (version 1).
const H = {
  magic: 0,
  version: 8,
  headerLength: 12,
  pageSize: 16,
  flags: 20,
  regionCount: 24,
  imageSize: 32,
  fileSize: 40,
  pageCount: 48,
  dataPageCount: 56,
  regionTableOffset: 64,
  regionTableLength: 72,
  pageTableOffset: 80,
  pageTableLength: 88,
  dataOffset: 96,
  dataLength: 104,
  metadataOffset: 112,
  metadataLength: 120,
  regionTableCrc: 128,
  pageTableCrc: 132,
  metadataCrc: 136,
  headerCrc: HEADER_LENGTH_BYTES - 4,
} as const;

/** Where a section sits in the file. */
export interface SnapshotSection {
  readonly offset: number;
  readonly lengthBytes: number;
}

export interface ChecksummedSection extends SnapshotSection {
  readonly crc32: number;
}

export interface SnapshotHeader {
  readonly version: number;
  readonly headerLengthBytes: number;
  readonly pageSize: number;
  readonly flags: number;
  readonly regionCount: number;
  readonly imageSizeBytes: number;
  readonly fileSizeBytes: number;
  /** Page-table entries: every page of every region. */
  readonly pageCount: number;
  /** Pages stored in the data section (the rest are zero). */
  readonly dataPageCount: number;
  readonly regionTable: ChecksummedSection;
  readonly pageTable: ChecksummedSection;
  readonly data: SnapshotSection;
  readonly metadata: ChecksummedSection;
}

/** A region as a caller describes it to the writer. */
export interface SnapshotRegionSpec {
  /** Where the region starts in the flat image; a multiple of the page size. */
  readonly imageOffset: number;
  /** A non-zero multiple of the page size. */
  readonly lengthBytes: number;
  /**
   * Guest physical address of the region's first byte; informational (the VMM maps regions back by
   * it). Default: imageOffset. A number, like the VMM's GuestPhysAddress; a bigint is accepted too.
   */
  readonly guestPhysAddress?: number | bigint;
  /** At most 32 bytes of UTF-8, no NUL. */
  readonly name?: string;
}

/** A region as the file records it. */
export interface SnapshotRegion {
  readonly imageOffset: number;
  readonly lengthBytes: number;
  /** A u64 on disk; every x86-64 guest physical address fits a double exactly. */
  readonly guestPhysAddress: number;
  /** '' when the region has no name. */
  readonly name: string;
  /** Index of the region's first page in the page table. */
  readonly firstPageIndex: number;
  readonly pageCount: number;
}

/** The page table, decoded into parallel arrays indexed by page-table index. */
export class PageTable {
  readonly kinds: Uint8Array;
  readonly crc32s: Uint32Array;
  /** For data pages: the page's index in the data section. */
  readonly dataIndexes: Float64Array;
  constructor(readonly pageCount: number) {
    this.kinds = new Uint8Array(pageCount);
    this.crc32s = new Uint32Array(pageCount);
    this.dataIndexes = new Float64Array(pageCount);
  }
  get dataPageCount(): number {
    let count = 0;
    for (let index = 0; index < this.pageCount; index++) count += this.kinds[index] === PageKind.data ? 1 : 0;
    return count;
  }
}

/** The layout a writer commits to before it writes any page (everything but data and metadata lengths). */
export interface SnapshotPlan {
  readonly pageSize: number;
  readonly imageSizeBytes: number;
  readonly regions: readonly SnapshotRegion[];
  readonly pageCount: number;
  readonly regionTableOffset: number;
  readonly pageTableOffset: number;
  readonly dataOffset: number;
}

/** A page's checksum, as a page table of some format version records it. */
export type PageChecksum = (bytes: Uint8Array) => number;

/** The page checksum of a format version: CRC32C from version 2 on, zlib's CRC32 in version 1. */
export function pageChecksumOf(version: number): PageChecksum {
  return version >= 2 ? crc32c : crc32;
}

/** The checksum of each `pageSize` page of `bytes` (whole pages) as a format version records it, in one pass: CRC32C's is batched. */
export function pageChecksumsOf(version: number, bytes: Uint8Array, pageSize: number, out: Uint32Array = new Uint32Array(bytes.length / pageSize)): Uint32Array {
  if (version >= 2) return crc32cPages(bytes, pageSize, out);
  for (let i = 0; i < out.length && (i + 1) * pageSize <= bytes.length; i++) out[i] = crc32(bytes.subarray(i * pageSize, (i + 1) * pageSize));
  return out;
}

/** Its name, for reports. */
export function pageChecksumName(version: number): 'CRC32C' | 'CRC32' {
  return version >= 2 ? 'CRC32C' : 'CRC32';
}

const zeroPages = new Map<number, Buffer>();

/** Whether bytes are all zero (a memcmp against a shared zero buffer). */
export function isAllZero(bytes: Uint8Array): boolean {
  let zeros = zeroPages.get(bytes.length);
  if (zeros === undefined) {
    if (bytes.length > MAX_SNAPSHOT_PAGE_SIZE) return bytes.every((byte) => byte === 0);
    zeros = Buffer.alloc(bytes.length);
    zeroPages.set(bytes.length, zeros);
  }
  return Buffer.compare(zeros, bytes) === 0;
}

export function checkPageSize(pageSize: number, structure: SnapshotStructure = 'header'): void {
  if (!Number.isInteger(pageSize) || pageSize < MIN_SNAPSHOT_PAGE_SIZE || pageSize > MAX_SNAPSHOT_PAGE_SIZE || (pageSize & (pageSize - 1)) !== 0) {
    throw new SnapshotFormatError(structure, `page size ${pageSize} is not a power of two between ${MIN_SNAPSHOT_PAGE_SIZE} and ${MAX_SNAPSHOT_PAGE_SIZE}`);
  }
}

/**
 * Check a writer's regions and lay out the file. Regions may be given in any order; the file keeps
 * them sorted by imageOffset. `imageSizeBytes` defaults to the end of the last region.
 */
export function planSnapshot(options: {
  regions: readonly SnapshotRegionSpec[];
  pageSize?: number;
  imageSizeBytes?: number;
}): SnapshotPlan {
  const pageSize = options.pageSize ?? DEFAULT_SNAPSHOT_PAGE_SIZE;
  checkPageSize(pageSize, 'region table');
  const specs = [...options.regions].sort((a, b) => a.imageOffset - b.imageOffset);
  const regions: SnapshotRegion[] = [];
  let pageCount = 0;
  for (const spec of specs) {
    const lengthBytes = spec.lengthBytes;
    const guestPhysAddress = Number(spec.guestPhysAddress ?? spec.imageOffset);
    if (!Number.isSafeInteger(guestPhysAddress) || BigInt(guestPhysAddress) !== BigInt(spec.guestPhysAddress ?? spec.imageOffset)) {
      throw new SnapshotFormatError('region table', `guest physical address ${spec.guestPhysAddress} is not an integer below 2^53`);
    }
    const region: SnapshotRegion = {
      imageOffset: spec.imageOffset,
      lengthBytes,
      guestPhysAddress,
      name: spec.name ?? '',
      firstPageIndex: pageCount,
      pageCount: Number.isSafeInteger(lengthBytes) && lengthBytes > 0 ? Math.floor(lengthBytes / pageSize) : 0,
    };
    regions.push(region);
    pageCount += region.pageCount;
  }
  const last = regions.at(-1);
  const imageSizeBytes = options.imageSizeBytes ?? (last === undefined ? 0 : last.imageOffset + last.lengthBytes);
  validateRegions(regions, pageSize, imageSizeBytes, 'region table');
  const regionTableOffset = HEADER_LENGTH_BYTES;
  const pageTableOffset = regionTableOffset + regions.length * REGION_ENTRY_BYTES;
  const dataOffset = alignUp(pageTableOffset + pageCount * PAGE_ENTRY_BYTES, pageSize);
  return { pageSize, imageSizeBytes, regions, pageCount, regionTableOffset, pageTableOffset, dataOffset };
}

/**
 * The rules regions obey, for the writer (before anything is written) and the reader (after the
 * region table's CRC matched, so a failure here means a writer broke the rules).
 */
export function validateRegions(
  regions: readonly SnapshotRegion[],
  pageSize: number,
  imageSizeBytes: number,
  structure: SnapshotStructure,
): void {
  const fail = (problem: string): never => {
    throw new SnapshotFormatError(structure, problem);
  };
  let previousEnd = 0;
  let pageIndex = 0;
  regions.forEach((region, index) => {
    const label = `region ${index}${region.name ? ` (${region.name})` : ''}`;
    const { imageOffset, lengthBytes } = region;
    if (!Number.isSafeInteger(imageOffset) || imageOffset < 0 || imageOffset % pageSize !== 0) {
      fail(`${label} starts at image offset ${imageOffset}, not a multiple of the ${pageSize}-byte page size`);
    }
    if (!Number.isSafeInteger(lengthBytes) || lengthBytes <= 0 || lengthBytes % pageSize !== 0) {
      fail(`${label} is ${lengthBytes} bytes long, not a non-zero multiple of the ${pageSize}-byte page size`);
    }
    if (!Number.isSafeInteger(region.guestPhysAddress) || region.guestPhysAddress < 0 || region.guestPhysAddress % pageSize !== 0) {
      fail(`${label} has guest physical address 0x${region.guestPhysAddress.toString(16)}, not page-aligned`);
    }
    if (imageOffset < previousEnd) {
      fail(`${label} at image offset 0x${imageOffset.toString(16)} overlaps the region before it (which ends at 0x${previousEnd.toString(16)})`);
    }
    if (imageOffset + lengthBytes > imageSizeBytes) {
      fail(`${label} ends at 0x${(imageOffset + lengthBytes).toString(16)}, past the ${imageSizeBytes}-byte image`);
    }
    const nameBytes = Buffer.byteLength(region.name, 'utf8');
    if (nameBytes > REGION_NAME_MAX_BYTES || region.name.includes('\0')) {
      fail(`${label} name is ${nameBytes} bytes of UTF-8 (at most ${REGION_NAME_MAX_BYTES}, no NUL)`);
    }
    if (region.firstPageIndex !== pageIndex || region.pageCount !== lengthBytes / pageSize) {
      fail(`${label} says its pages start at page-table index ${region.firstPageIndex}, but the regions before it hold ${pageIndex} pages`);
    }
    previousEnd = imageOffset + lengthBytes;
    pageIndex += region.pageCount;
  });
  // After the regions: a misaligned region makes a misaligned default image size, and the region is the cause.
  if (!Number.isSafeInteger(imageSizeBytes) || imageSizeBytes < 0 || imageSizeBytes % pageSize !== 0) {
    fail(`image size ${imageSizeBytes} is not a multiple of the ${pageSize}-byte page size`);
  }
}

// ---- header ----

/** The header's bytes; headerLengthBytes and the header CRC are the encoder's to fill in. */
export function encodeHeader(header: Omit<SnapshotHeader, 'headerLengthBytes'>): Uint8Array {
  const bytes = new Uint8Array(HEADER_LENGTH_BYTES);
  const view = viewOf(bytes);
  bytes.set(SNAPSHOT_MAGIC, H.magic);
  view.setUint32(H.version, header.version, true);
  view.setUint32(H.headerLength, HEADER_LENGTH_BYTES, true);
  view.setUint32(H.pageSize, header.pageSize, true);
  view.setUint32(H.flags, header.flags, true);
  view.setUint32(H.regionCount, header.regionCount, true);
  setU64(view, H.imageSize, header.imageSizeBytes);
  setU64(view, H.fileSize, header.fileSizeBytes);
  setU64(view, H.pageCount, header.pageCount);
  setU64(view, H.dataPageCount, header.dataPageCount);
  setU64(view, H.regionTableOffset, header.regionTable.offset);
  setU64(view, H.regionTableLength, header.regionTable.lengthBytes);
  setU64(view, H.pageTableOffset, header.pageTable.offset);
  setU64(view, H.pageTableLength, header.pageTable.lengthBytes);
  setU64(view, H.dataOffset, header.data.offset);
  setU64(view, H.dataLength, header.data.lengthBytes);
  setU64(view, H.metadataOffset, header.metadata.offset);
  setU64(view, H.metadataLength, header.metadata.lengthBytes);
  view.setUint32(H.regionTableCrc, header.regionTable.crc32, true);
  view.setUint32(H.pageTableCrc, header.pageTable.crc32, true);
  view.setUint32(H.metadataCrc, header.metadata.crc32, true);
  view.setUint32(H.headerCrc, crc32(bytes.subarray(0, H.headerCrc)), true);
  return bytes;
}

/**
 * Decode and check a header from the first bytes of a file. Order matters: magic, then length,
 * then the CRC, then the version, so a flipped bit in the version field reads as corruption and
 * only a well-formed newer file reads as "unsupported version".
 */
export function decodeHeader(bytes: Uint8Array): SnapshotHeader {
  const magicBytes = Math.min(bytes.length, SNAPSHOT_MAGIC.length);
  for (let index = 0; index < magicBytes; index++) {
    if (bytes[index] !== SNAPSHOT_MAGIC[index]) {
      throw new SnapshotFormatError('header', `bad magic ${Buffer.from(bytes.subarray(0, magicBytes)).toString('hex')} (not a userfault snapshot)`);
    }
  }
  if (bytes.length < H.headerLength + 4) throw new SnapshotTruncatedError('header', HEADER_LENGTH_BYTES, bytes.length);
  const view = viewOf(bytes);
  const headerLengthBytes = view.getUint32(H.headerLength, true);
  if (headerLengthBytes < H.metadataCrc + 8 || headerLengthBytes % 8 !== 0 || headerLengthBytes > 65536) {
    // Not a length any version would write: the field itself is damaged.
    throw new SnapshotFormatError('header', `header length ${headerLengthBytes} is impossible`);
  }
  if (bytes.length < headerLengthBytes) throw new SnapshotTruncatedError('header', headerLengthBytes, bytes.length);
  const crcOffset = headerLengthBytes - 4;
  const expectedCrc32 = view.getUint32(crcOffset, true);
  const actualCrc32 = crc32(bytes.subarray(0, crcOffset));
  if (expectedCrc32 !== actualCrc32) {
    throw new SnapshotCorruptError({ structure: 'header', fileOffset: 0, expectedCrc32, actualCrc32 });
  }
  const version = view.getUint32(H.version, true);
  if (!SUPPORTED_SNAPSHOT_VERSIONS.includes(version)) throw new SnapshotVersionError(version, SUPPORTED_SNAPSHOT_VERSIONS);
  if (headerLengthBytes !== HEADER_LENGTH_BYTES) {
    throw new SnapshotFormatError('header', `a version ${version} header is ${HEADER_LENGTH_BYTES} bytes, this one says ${headerLengthBytes}`);
  }
  const pageSize = view.getUint32(H.pageSize, true);
  checkPageSize(pageSize, 'header');
  const flags = view.getUint32(H.flags, true);
  if (flags !== 0) throw new SnapshotFormatError('header', `unknown flags 0x${flags.toString(16)}`);
  const u64 = (offset: number, field: string): number => getU64(view, offset, field);
  const header: SnapshotHeader = {
    version,
    headerLengthBytes,
    pageSize,
    flags,
    regionCount: view.getUint32(H.regionCount, true),
    imageSizeBytes: u64(H.imageSize, 'image size'),
    fileSizeBytes: u64(H.fileSize, 'file size'),
    pageCount: u64(H.pageCount, 'page count'),
    dataPageCount: u64(H.dataPageCount, 'data page count'),
    regionTable: {
      offset: u64(H.regionTableOffset, 'region table offset'),
      lengthBytes: u64(H.regionTableLength, 'region table length'),
      crc32: view.getUint32(H.regionTableCrc, true),
    },
    pageTable: {
      offset: u64(H.pageTableOffset, 'page table offset'),
      lengthBytes: u64(H.pageTableLength, 'page table length'),
      crc32: view.getUint32(H.pageTableCrc, true),
    },
    data: { offset: u64(H.dataOffset, 'data offset'), lengthBytes: u64(H.dataLength, 'data length') },
    metadata: {
      offset: u64(H.metadataOffset, 'metadata offset'),
      lengthBytes: u64(H.metadataLength, 'metadata length'),
      crc32: view.getUint32(H.metadataCrc, true),
    },
  };
  checkHeaderLayout(header);
  return header;
}

/** The header's sizes agree with each other and its sections fit the file without overlapping. */
function checkHeaderLayout(header: SnapshotHeader): void {
  const fail = (problem: string): never => {
    throw new SnapshotFormatError('header', problem);
  };
  const { pageSize } = header;
  if (header.imageSizeBytes % pageSize !== 0) fail(`image size ${header.imageSizeBytes} is not a multiple of the page size ${pageSize}`);
  if (header.pageCount > header.imageSizeBytes / pageSize) fail(`${header.pageCount} pages do not fit a ${header.imageSizeBytes}-byte image`);
  if (header.dataPageCount > header.pageCount) fail(`${header.dataPageCount} data pages but only ${header.pageCount} pages`);
  if (header.regionTable.lengthBytes !== header.regionCount * REGION_ENTRY_BYTES) {
    fail(`region table is ${header.regionTable.lengthBytes} bytes, ${header.regionCount} regions need ${header.regionCount * REGION_ENTRY_BYTES}`);
  }
  if (header.pageTable.lengthBytes !== header.pageCount * PAGE_ENTRY_BYTES) {
    fail(`page table is ${header.pageTable.lengthBytes} bytes, ${header.pageCount} pages need ${header.pageCount * PAGE_ENTRY_BYTES}`);
  }
  if (header.data.lengthBytes !== header.dataPageCount * pageSize) {
    fail(`data section is ${header.data.lengthBytes} bytes, ${header.dataPageCount} pages need ${header.dataPageCount * pageSize}`);
  }
  if (header.data.offset % pageSize !== 0) fail(`data offset ${header.data.offset} is not page-aligned`);
  const sections: [string, SnapshotSection][] = [
    ['header', { offset: 0, lengthBytes: header.headerLengthBytes }],
    ['region table', header.regionTable],
    ['page table', header.pageTable],
    ['page data', header.data],
    ['metadata', header.metadata],
  ];
  sections.sort((a, b) => a[1].offset - b[1].offset);
  let previous: [string, SnapshotSection] | undefined;
  for (const entry of sections) {
    const [name, section] = entry;
    const end = section.offset + section.lengthBytes;
    if (end > header.fileSizeBytes) fail(`${name} [${section.offset}, ${end}) runs past the ${header.fileSizeBytes}-byte file`);
    if (previous !== undefined && section.lengthBytes > 0 && previous[1].offset + previous[1].lengthBytes > section.offset) {
      fail(`${name} at ${section.offset} overlaps ${previous[0]}`);
    }
    if (section.lengthBytes > 0 || name === 'header') previous = entry;
  }
}

// ---- region table ----

export function encodeRegionTable(regions: readonly SnapshotRegion[]): Uint8Array {
  const bytes = new Uint8Array(regions.length * REGION_ENTRY_BYTES);
  const view = viewOf(bytes);
  regions.forEach((region, index) => {
    const base = index * REGION_ENTRY_BYTES;
    setU64(view, base, region.imageOffset);
    setU64(view, base + 8, region.lengthBytes);
    setU64(view, base + 16, region.guestPhysAddress);
    setU64(view, base + 24, region.firstPageIndex);
    Buffer.from(bytes.buffer, bytes.byteOffset + base + 32, REGION_NAME_MAX_BYTES).write(region.name, 'utf8');
  });
  return bytes;
}

/** Decode the region table (the bytes at header.regionTable) and check its CRC and rules. */
export function decodeRegionTable(bytes: Uint8Array, header: SnapshotHeader): SnapshotRegion[] {
  checkSection(bytes, 'region table', header.regionTable);
  const view = viewOf(bytes);
  const regions: SnapshotRegion[] = [];
  for (let index = 0; index < header.regionCount; index++) {
    const base = index * REGION_ENTRY_BYTES;
    const lengthBytes = getU64(view, base + 8, 'region length', 'region table');
    const nameField = bytes.subarray(base + 32, base + 32 + REGION_NAME_MAX_BYTES);
    const nameEnd = nameField.indexOf(0);
    regions.push({
      imageOffset: getU64(view, base, 'region offset', 'region table'),
      lengthBytes,
      guestPhysAddress: getU64(view, base + 16, 'region guest physical address', 'region table'),
      firstPageIndex: getU64(view, base + 24, 'region first page', 'region table'),
      name: Buffer.from(nameEnd === -1 ? nameField : nameField.subarray(0, nameEnd)).toString('utf8'),
      pageCount: lengthBytes / header.pageSize,
    });
  }
  validateRegions(regions, header.pageSize, header.imageSizeBytes, 'region table');
  const last = regions.at(-1);
  const pageCount = last === undefined ? 0 : last.firstPageIndex + last.pageCount;
  if (pageCount !== header.pageCount) {
    throw new SnapshotFormatError('region table', `regions hold ${pageCount} pages, the header says ${header.pageCount}`);
  }
  return regions;
}

// ---- page table ----

export function encodePageTable(table: PageTable): Uint8Array {
  const bytes = new Uint8Array(table.pageCount * PAGE_ENTRY_BYTES);
  const view = viewOf(bytes);
  for (let index = 0; index < table.pageCount; index++) {
    const base = index * PAGE_ENTRY_BYTES;
    view.setUint8(base, table.kinds[index]!);
    view.setUint32(base + 4, table.crc32s[index]!, true);
    setU64(view, base + 8, table.dataIndexes[index]!);
  }
  return bytes;
}

/** Decode the page table (the bytes at header.pageTable) and check its CRC and rules. */
export function decodePageTable(bytes: Uint8Array, header: SnapshotHeader): PageTable {
  checkSection(bytes, 'page table', header.pageTable);
  const view = viewOf(bytes);
  const table = new PageTable(header.pageCount);
  let dataPages = 0;
  for (let index = 0; index < header.pageCount; index++) {
    const base = index * PAGE_ENTRY_BYTES;
    const kind = view.getUint8(base);
    const crc = view.getUint32(base + 4, true);
    const dataIndex = getU64(view, base + 8, 'page data index', 'page table');
    switch (kind) {
      case PageKind.zero:
        if (crc !== 0 || dataIndex !== 0) throw new SnapshotFormatError('page table', `zero page ${index} has a CRC or data index`);
        break;
      case PageKind.data:
        if (dataIndex !== dataPages) {
          throw new SnapshotFormatError('page table', `data page ${index} has data index ${dataIndex}, expected ${dataPages} (stored pages are in page order)`);
        }
        dataPages++;
        break;
      default:
        throw new SnapshotFormatError('page table', `page ${index} has unknown kind ${kind}`);
    }
    table.kinds[index] = kind;
    table.crc32s[index] = crc;
    table.dataIndexes[index] = dataIndex;
  }
  if (dataPages !== header.dataPageCount) {
    throw new SnapshotFormatError('page table', `${dataPages} data pages, the header says ${header.dataPageCount}`);
  }
  return table;
}

/** Check a metadata blob (the bytes at header.metadata) against its CRC. */
export function checkMetadata(bytes: Uint8Array, header: SnapshotHeader): void {
  checkSection(bytes, 'metadata', header.metadata);
}

// ---- lookups ----

/** Index of the region holding imageOffset, or -1 when it falls in a gap. Regions are sorted. */
export function findRegionIndex(regions: readonly SnapshotRegion[], imageOffset: number): number {
  let low = 0;
  let high = regions.length - 1;
  while (low <= high) {
    const middle = (low + high) >>> 1;
    const region = regions[middle]!;
    if (imageOffset < region.imageOffset) high = middle - 1;
    else if (imageOffset >= region.imageOffset + region.lengthBytes) low = middle + 1;
    else return middle;
  }
  return -1;
}

/** Where the region after the gap at imageOffset starts (imageSizeBytes if none). */
export function nextRegionStart(regions: readonly SnapshotRegion[], imageOffset: number, imageSizeBytes: number): number {
  for (const region of regions) if (region.imageOffset > imageOffset) return region.imageOffset;
  return imageSizeBytes;
}

// ---- helpers ----

export function alignUp(value: number, alignment: number): number {
  return Math.ceil(value / alignment) * alignment;
}

function checkSection(bytes: Uint8Array, structure: SnapshotStructure, section: ChecksummedSection): void {
  if (bytes.length < section.lengthBytes) throw new SnapshotTruncatedError(structure, section.lengthBytes, bytes.length);
  const actualCrc32 = crc32(bytes.subarray(0, section.lengthBytes));
  if (actualCrc32 !== section.crc32) {
    throw new SnapshotCorruptError({ structure, fileOffset: section.offset, expectedCrc32: section.crc32, actualCrc32 });
  }
}

function viewOf(bytes: Uint8Array): DataView {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

function setU64(view: DataView, offset: number, value: number): void {
  view.setBigUint64(offset, BigInt(value), true);
}

function getU64(view: DataView, offset: number, field: string, structure: SnapshotStructure = 'header'): number {
  // Two u32 halves, no BigInt: a page table has one of these per page, and open() decodes them all.
  const high = view.getUint32(offset + 4, true);
  if (high > 0x1f_ffff) {
    throw new SnapshotFormatError(structure, `${field} 0x${view.getBigUint64(offset, true).toString(16)} is beyond 2^53`);
  }
  return high * 0x1_0000_0000 + view.getUint32(offset, true);
}
