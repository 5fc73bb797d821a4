// `userfault snapshot inspect FILE`: what a snapshot holds, as a plain JSON-safe object, and as text.
import { SnapshotFile, type SnapshotVerifyReport } from './reader.js';
import { PageKind, pageChecksumName } from './format.js';

export interface SnapshotSectionReport {
  readonly offset: number;
  readonly lengthBytes: number;
}

export interface SnapshotRegionReport {
  readonly name: string;
  readonly imageOffset: number;
  readonly lengthBytes: number;
  /** Hex ("0x100000"): a u64 that JSON cannot carry as a number. */
  readonly guestPhysAddress: string;
  readonly pageCount: number;
  readonly dataPageCount: number;
  readonly zeroPageCount: number;
}

/** A page whose CRC did not match, as the report shows it. */
export interface CorruptPageReport {
  readonly pageIndex: number;
  readonly imageOffset: number;
  readonly fileOffset: number;
  /** CRC32s as 8 hex digits ("0x1a232a09"): checksums are compared, not counted. */
  readonly expectedCrc32: string;
  readonly actualCrc32: string;
}

export interface SnapshotPagesReport {
  readonly ok: boolean;
  readonly pagesChecked: number;
  readonly corruptPageCount: number;
  /** The first corrupt pages found (at most 64). */
  readonly corruptPages: readonly CorruptPageReport[];
}

export interface SnapshotReport {
  readonly path: string;
  readonly fileSizeBytes: number;
  readonly version: number;
  /** The page checksum its version records: CRC32C (version 2 on) or CRC32 (version 1). */
  readonly pageChecksum: 'CRC32C' | 'CRC32';
  readonly pageSize: number;
  readonly imageSizeBytes: number;
  /** Image bytes no region covers (they read as zero). */
  readonly gapBytes: number;
  readonly pageCount: number;
  readonly dataPageCount: number;
  readonly zeroPageCount: number;
  readonly metadataLengthBytes: number;
  readonly regions: readonly SnapshotRegionReport[];
  readonly layout: {
    readonly header: SnapshotSectionReport;
    readonly regionTable: SnapshotSectionReport;
    readonly pageTable: SnapshotSectionReport;
    readonly data: SnapshotSectionReport;
    readonly metadata: SnapshotSectionReport;
  };
  /** Header, tables and metadata always passed (open refuses otherwise); null when pages were not verified. */
  readonly pages: SnapshotPagesReport | null;
  /** Every checksum that was checked matched. */
  readonly ok: boolean;
}

/**
 * Open a snapshot, describe it, and (unless verify is false) check every page's CRC. A damaged
 * header or table throws the typed error from SnapshotFile.open; damaged pages are in the report.
 */
export async function inspectSnapshot(path: string, options: { verify?: boolean } = {}): Promise<SnapshotReport> {
  const file = await SnapshotFile.open(path);
  try {
    const { header } = file;
    const pages = options.verify === false ? null : pagesReport(await file.verifyAll());
    const regions = file.regions.map((region): SnapshotRegionReport => {
      let dataPageCount = 0;
      for (let page = 0; page < region.pageCount; page++) {
        if (file.pageTable.kinds[region.firstPageIndex + page] === PageKind.data) dataPageCount++;
      }
      return {
        name: region.name,
        imageOffset: region.imageOffset,
        lengthBytes: region.lengthBytes,
        guestPhysAddress: `0x${region.guestPhysAddress.toString(16)}`,
        pageCount: region.pageCount,
        dataPageCount,
        zeroPageCount: region.pageCount - dataPageCount,
      };
    });
    const section = ({ offset, lengthBytes }: SnapshotSectionReport): SnapshotSectionReport => ({ offset, lengthBytes });
    return {
      path,
      fileSizeBytes: header.fileSizeBytes,
      version: header.version,
      pageChecksum: pageChecksumName(header.version),
      pageSize: header.pageSize,
      imageSizeBytes: header.imageSizeBytes,
      gapBytes: header.imageSizeBytes - header.pageCount * header.pageSize,
      pageCount: header.pageCount,
      dataPageCount: header.dataPageCount,
      zeroPageCount: header.pageCount - header.dataPageCount,
      metadataLengthBytes: header.metadata.lengthBytes,
      regions,
      layout: {
        header: { offset: 0, lengthBytes: header.headerLengthBytes },
        regionTable: section(header.regionTable),
        pageTable: section(header.pageTable),
        data: section(header.data),
        metadata: section(header.metadata),
      },
      pages,
      ok: pages === null || pages.ok,
    };
  } finally {
    await file.close();
  }
}

function pagesReport(verified: SnapshotVerifyReport): SnapshotPagesReport {
  return {
    ok: verified.ok,
    pagesChecked: verified.pagesChecked,
    corruptPageCount: verified.corruptPageCount,
    corruptPages: verified.corruptPages.map((page) => ({
      pageIndex: page.pageIndex,
      imageOffset: page.imageOffset,
      fileOffset: page.fileOffset,
      expectedCrc32: crcHex(page.expectedCrc32),
      actualCrc32: crcHex(page.actualCrc32),
    })),
  };
}

function crcHex(crc: number): string {
  return `0x${crc.toString(16).padStart(8, '0')}`;
}

/** The report as the text `userfault snapshot inspect` prints. */
export function formatSnapshotReport(report: SnapshotReport): string {
  const hex = (value: number): string => `0x${value.toString(16)}`;
  const lines = [
    `snapshot ${report.path}`,
    `  format version ${report.version} (page checksums ${report.pageChecksum}), page size ${report.pageSize}, file ${report.fileSizeBytes} bytes`,
    `  image ${report.imageSizeBytes} bytes (${hex(report.imageSizeBytes)}), ${report.gapBytes} bytes outside any region`,
    `  pages ${report.pageCount}: ${report.dataPageCount} stored, ${report.zeroPageCount} zero`,
    `  metadata ${report.metadataLengthBytes} bytes`,
    `  regions ${report.regions.length}:`,
    ...report.regions.map(
      (region, index) =>
        `    ${index} ${region.name || '-'}  image [${hex(region.imageOffset)}, ${hex(region.imageOffset + region.lengthBytes)})  ` +
        `guest ${region.guestPhysAddress}  ${region.pageCount} pages (${region.dataPageCount} stored, ${region.zeroPageCount} zero)`,
    ),
    `  layout: ${Object.entries(report.layout).map(([name, section]) => `${name} @${section.offset}+${section.lengthBytes}`).join(', ')}`,
    '  checksums: header, region table, page table, metadata ok',
  ];
  if (report.pages === null) {
    lines.push('  pages: not verified');
  } else if (report.pages.ok) {
    lines.push(`  pages: ${report.pages.pagesChecked} checked, all ok`);
  } else {
    lines.push(`  pages: ${report.pages.pagesChecked} checked, ${report.pages.corruptPageCount} CORRUPT`);
    for (const page of report.pages.corruptPages) {
      lines.push(`    page ${page.pageIndex} image ${hex(page.imageOffset)} file ${hex(page.fileOffset)}: ${report.pageChecksum} ${page.actualCrc32}, expected ${page.expectedCrc32}`);
    }
  }
  return lines.join('\n');
}
