// The batched CRC32C forms against a bit-by-bit reference: they are what every
// page check on every path uses, so a wrong split, interleave or combine
// would pass bad pages or refuse good ones.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { crc32c, crc32cCombine, crc32cExtend, crc32cPages } from '../../src/checksum/crc32c.js';

function referenceCrc32c(bytes: Uint8Array, initial = 0): number {
  let crc = ~initial >>> 0;
  for (const byte of bytes) {
    crc ^= byte;
    for (let k = 0; k < 8; k++) crc = crc & 1 ? (crc >>> 1) ^ 0x82f63b78 : crc >>> 1;
  }
  return ~crc >>> 0;
}

test('crc32c matches the reference at every length around the interleaved split, continuing an initial value', () => {
  assert.equal(crc32c(new TextEncoder().encode('123456789')), 0xe3069283, 'the standard check value');
  for (const length of [0, 1, 7, 8, 9, 3071, 3072, 3073, 3079, 4096, 12_289, 65_537, 262_149]) {
    const bytes = randomBytes(length);
    assert.equal(crc32c(bytes), referenceCrc32c(bytes), `length ${length}`);
    assert.equal(crc32c(bytes, 0xdeadbeef), referenceCrc32c(bytes, 0xdeadbeef), `length ${length} continuing`);
  }
});

test('crc32cPages gives each page its own CRC32C, for page counts that do and do not divide by three', () => {
  for (const pages of [1, 2, 3, 4, 5, 64]) {
    const bytes = randomBytes(pages * 4096);
    const crcs = crc32cPages(bytes, 4096);
    assert.equal(crcs.length, pages);
    for (let i = 0; i < pages; i++) assert.equal(crcs[i], referenceCrc32c(bytes.subarray(i * 4096, (i + 1) * 4096)), `page ${i} of ${pages}`);
  }
  assert.throws(() => crc32cPages(randomBytes(4097), 4096, new Uint32Array(2)), /whole pages/);
  assert.throws(() => crc32cPages(randomBytes(8192), 4096, new Uint32Array(1)), /one u32 per page/);
});

test('crc32cExtend and crc32cCombine give the CRC32C of the concatenation without reading it', () => {
  const prefix = randomBytes(44);
  const pages = randomBytes(5 * 4096);
  const whole = new Uint8Array([...prefix, ...pages]);
  assert.equal(crc32cExtend(crc32c(prefix), crc32cPages(pages, 4096), 4096), referenceCrc32c(whole));
  assert.equal(crc32cCombine(crc32c(prefix), crc32c(pages), pages.length), referenceCrc32c(whole));
  assert.equal(crc32cExtend(crc32c(prefix), new Uint32Array(0), 4096), crc32c(prefix), 'no pages: the prefix alone');
});
