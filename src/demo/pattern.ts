// A reproducible test image: every page carries its index and a checksum of
// its own words, so a page in the wrong place, stale or zeroed shows at once.
import { PAGE_SIZE } from '../native.js';

const WORDS = PAGE_SIZE / 4;

/** Fill `target` with the pattern for image pages starting at `firstPage`. Every `zeroEvery`-th page is left zero. */
export function fillPattern(target: Uint8Array, firstPage: number, seed = 1, zeroEvery = 0): void {
  const words = new Uint32Array(target.buffer, target.byteOffset, target.byteLength / 4);
  for (let p = 0; p < target.byteLength / PAGE_SIZE; p++) {
    const page = firstPage + p;
    const base = p * WORDS;
    if (zeroEvery > 0 && page % zeroEvery === zeroEvery - 1) {
      words.fill(0, base, base + WORDS);
      continue;
    }
    let x = (Math.imul(page + 1, 0x9e3779b1) ^ seed) >>> 0;
    for (let w = 0; w < WORDS; w++) {
      // xorshift32: cheap, and different on every page and word.
      x ^= x << 13;
      x ^= x >>> 17;
      x ^= x << 5;
      words[base + w] = x >>> 0;
    }
    words[base] = page;
  }
}

/** A small checksum of one page (FNV-1a over its words). */
export function pageChecksum(bytes: Uint8Array, offset: number): number {
  const words = new Uint32Array(bytes.buffer, bytes.byteOffset + offset, WORDS);
  let h = 0x811c9dc5;
  for (let w = 0; w < WORDS; w++) h = Math.imul(h ^ words[w]!, 0x01000193) >>> 0;
  return h;
}

/** Pages of `actual` (image pages from firstPage) that differ from the pattern. */
export function findPatternMismatches(actual: Uint8Array, firstPage: number, seed = 1, zeroEvery = 0, limit = 16): number[] {
  const expected = new Uint8Array(PAGE_SIZE);
  const bad: number[] = [];
  for (let p = 0; p < actual.byteLength / PAGE_SIZE; p++) {
    fillPattern(expected, firstPage + p, seed, zeroEvery);
    if (pageChecksum(actual, p * PAGE_SIZE) !== pageChecksum(expected, 0) || !equalPage(actual, p * PAGE_SIZE, expected)) {
      bad.push(firstPage + p);
      if (bad.length >= limit) break;
    }
  }
  return bad;
}

function equalPage(a: Uint8Array, offset: number, b: Uint8Array): boolean {
  return Buffer.compare(a.subarray(offset, offset + PAGE_SIZE), b) === 0;
}
