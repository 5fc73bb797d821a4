// The page checksum of snapshot format version 2, and the wire's frame
// checksum from protocol version 3: CRC32C (Castagnoli), with the CPU's crc32
// instruction through the addon (native/crc32c.c). Every page on every path is
// checked with it, so the forms that matter are the batched ones: a run of
// pages in one call, three streams interleaved (~19 GB/s here against ~4.5
// GB/s for a call per 4 KiB page and ~3.9 GB/s for zlib's CRC32), and the
// arithmetic that derives a frame's checksum from its pages' checksums
// without reading the pages again.
import { native } from '../native.js';

/** CRC32C of bytes; `initial` (a previous result) continues it over the bytes that follow. */
export function crc32c(bytes: Uint8Array, initial = 0): number {
  return native.crc32c(bytes, initial);
}

/** One CRC32C per `pageSize` bytes of `bytes` (whole pages), into `out` (a new array by default). */
export function crc32cPages(bytes: Uint8Array, pageSize: number, out: Uint32Array = new Uint32Array(bytes.length / pageSize)): Uint32Array {
  native.crc32cPages(bytes, pageSize, out);
  return out;
}

/** The CRC32C of a range whose CRC32C is `initial`, followed by pages of `pageSize` whose own CRC32Cs are `pageCrcs`; no page byte is read. */
export function crc32cExtend(initial: number, pageCrcs: Uint32Array, pageSize: number): number {
  return native.crc32cExtend(initial, pageCrcs, pageSize);
}

/** The CRC32C of A followed by B, from CRC32C(A), CRC32C(B) and B's length. */
export function crc32cCombine(crcA: number, crcB: number, lengthB: number): number {
  return native.crc32cCombine(crcA, crcB, lengthB);
}
