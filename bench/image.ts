// The bench image: every page carries a tag in its first 8 bytes (the toucher
// checks it on every touch) and non-zero filler, so a snapshot of it stores
// every page and its data section is the image byte for byte. That lets the C
// handler pread it and the kernel mmap it at the data section's offset.
//
//   page i:  0          8                                     4096
//            +----------+-------------------------------------+
//            | tag(i)   | filler(i) repeated                  |
//            +----------+-------------------------------------+
//   tag(i) = ((i + 1) * 0x9E3779B97F4A7C15 mod 2^64) | 1      (bench/c/bench-common.h: page_tag)
//   filler(i) = ((i * 31 + 7) & 0xff) | 1
import { SnapshotFile, writeSnapshot } from '../src/snapshot/index.js';

export const PAGE_BYTES = 4096;
const TAG_MULTIPLIER = 0x9e3779b97f4a7c15n;
const U64_MASK = (1n << 64n) - 1n;

/** The first 8 bytes of image page `index`, as a u64. */
export function pageTag(index: number): bigint {
  return ((BigInt(index + 1) * TAG_MULTIPLIER) & U64_MASK) | 1n;
}

/** Write image page `index` into `target` at `offset`. */
export function fillPage(target: Uint8Array, offset: number, index: number): void {
  target.fill(((index * 31 + 7) & 0xff) | 1, offset + 8, offset + PAGE_BYTES);
  new DataView(target.buffer, target.byteOffset + offset, 8).setBigUint64(0, pageTag(index), true);
}

/** Image bytes [imageOffset, imageOffset + length) into target (both page-aligned). */
export function fillImage(target: Uint8Array, imageOffset: number, length: number): void {
  for (let done = 0; done < length; done += PAGE_BYTES) fillPage(target, done, (imageOffset + done) / PAGE_BYTES);
}

export interface BenchImage {
  /** The snapshot file (project format, one region, no zero pages). */
  path: string;
  sizeBytes: number;
  /** Where the image starts in the file: the data section (page-aligned). */
  dataOffset: number;
}

/** Write the bench image as a snapshot; its data section is the raw image. */
export async function writeBenchImage(path: string, sizeBytes: number): Promise<BenchImage> {
  await writeSnapshot(path, {
    regions: [{ imageOffset: 0, lengthBytes: sizeBytes, name: 'bench' }],
    content: { read: (imageOffset, length, target) => fillImage(target, imageOffset, length) },
    chunkBytes: 4 << 20,
  });
  const file = await SnapshotFile.open(path);
  try {
    if (file.header.dataPageCount !== sizeBytes / PAGE_BYTES) {
      throw new Error(`bench image ${path} stores ${file.header.dataPageCount} pages, expected every one of ${sizeBytes / PAGE_BYTES}`);
    }
    return { path, sizeBytes, dataOffset: file.header.data.offset };
  } finally {
    await file.close();
  }
}
