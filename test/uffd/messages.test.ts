import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { decodeMessage, decodeMessages, encodeMessage, TruncatedMessageError, type UffdEvent } from '../../src/uffd/messages.js';
import { UFFD_MSG_SIZE } from '../../src/uffd/constants.js';

const samples: Array<Exclude<UffdEvent, { type: 'unknown' }>> = [
  { type: 'pagefault', flags: 1n, address: 0x7f0012345000, write: true, writeProtect: false, minor: false, threadId: 4242 },
  { type: 'pagefault', flags: 6n, address: 0x1000, write: false, writeProtect: true, minor: true, threadId: 0 },
  { type: 'fork', uffd: 17 },
  { type: 'remap', from: 0x7f0000000000, to: 0x7e0000000000, length: 1 << 20 },
  { type: 'remove', start: 0x2000, end: 0x5000 },
  { type: 'unmap', start: 0x7f0000001000, end: 0x7f0000009000 },
];

describe('uffd message decoding', () => {
  for (const sample of samples) {
    test(`a ${sample.type} message decodes to what was encoded (${JSON.stringify(sample, (_, v) => (typeof v === 'bigint' ? `${v}n` : v))})`, () => {
      assert.deepEqual(decodeMessage(encodeMessage(sample)), sample);
    });
  }

  test('a batch read decodes every message in order', () => {
    const bytes = new Uint8Array(samples.length * UFFD_MSG_SIZE);
    samples.forEach((s, i) => bytes.set(encodeMessage(s), i * UFFD_MSG_SIZE));
    assert.deepEqual(decodeMessages(bytes), samples);
  });

  test('a batch cut at any length that is not a whole message is refused as truncated', () => {
    const bytes = new Uint8Array(2 * UFFD_MSG_SIZE);
    bytes.set(encodeMessage(samples[0]!), 0);
    bytes.set(encodeMessage(samples[2]!), UFFD_MSG_SIZE);
    for (let length = 0; length <= bytes.length; length++) {
      if (length % UFFD_MSG_SIZE === 0) assert.equal(decodeMessages(bytes, length).length, length / UFFD_MSG_SIZE);
      else assert.throws(() => decodeMessages(bytes, length), TruncatedMessageError, `length ${length}`);
    }
    for (let length = 0; length < UFFD_MSG_SIZE; length++) {
      assert.throws(() => decodeMessage(bytes.subarray(0, length)), TruncatedMessageError);
    }
  });

  test('an event the library does not know is kept with its raw bytes, not dropped', () => {
    const bytes = new Uint8Array(UFFD_MSG_SIZE);
    bytes[0] = 0x7e;
    bytes[8] = 9;
    const event = decodeMessage(bytes);
    assert.equal(event.type, 'unknown');
    assert.equal(event.type === 'unknown' && event.event, 0x7e);
    assert.equal(event.type === 'unknown' && event.raw[8], 9);
  });
});
