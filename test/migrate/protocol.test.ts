// Live migration's message codec: pure, every message round-tripped, split and truncated at every offset, hostile bytes refused.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { FrameDecoder, ProtocolError, encodeMessage } from '../../src/protocol/index.js';
import {
  MigrationMessageType,
  decodeMigrationFrame,
  decodeMigrationMessage,
  encodeMigrationMessage,
  type MigrationMessage,
} from '../../src/migrate/protocol/messages.js';

const PAGE = 4096;
const page = (seed: number): Uint8Array => Uint8Array.from({ length: PAGE }, (_, i) => (i * 7 + seed) & 0xff);

const SAMPLES: Array<[MigrationMessage, number]> = [
  [{ type: 'mig-begin', mode: 'hybrid', pageSizeBytes: PAGE, memoryBytes: 64 << 20, machineJson: '{"memoryBytes":67108864,"vcpuCount":1,"cmdline":"workload=writer","image":"builtin"}' }, 1],
  [{ type: 'mig-accept' }, 1],
  [{ type: 'mig-pages', firstPage: 512, pageCount: 2, round: 3, checksums: Uint32Array.of(0xdeadbeef, 7), data: new Uint8Array([...page(1), ...page(2)]) }, 0],
  [{ type: 'mig-zero', firstPage: 9, pageCount: 100, round: 0 }, 0],
  [{ type: 'mig-round', round: 2, pagesSent: 16384, dirtyPages: 812 }, 0],
  [{ type: 'mig-dirty', list: 1, firstPage: 0, pageCount: 20, bitmap: Uint8Array.of(0x81, 0x00, 0x0f) }, 0],
  [{ type: 'mig-switchover', postcopy: true, stateJson: '{"version":3}' }, 7],
  [{ type: 'mig-ready', loadMicros: 1234 }, 7],
  [{ type: 'mig-go' }, 8],
  [{ type: 'mig-running', resumeMicros: 56 }, 8],
  [{ type: 'mig-all-sent' }, 0],
  [{ type: 'mig-complete', batchPages: 4096, digests: [new Uint8Array(32).fill(1), new Uint8Array(32).fill(2)] }, 9],
  [{ type: 'mig-verified', ok: false, differingCount: 2, differing: [0, 5] }, 9],
  [{ type: 'mig-cancel', text: 'operator cancelled' }, 0],
  [{ type: 'mig-resume' }, 12],
  [{ type: 'mig-resumed', pageCount: 17, running: true, bitmap: Uint8Array.of(0xff, 0x7f, 0x01) }, 12],
  [{ type: 'mig-resumed', pageCount: 9, running: false, bitmap: Uint8Array.of(0xff, 0x01) }, 12],
  [{ type: 'mig-push', firstPage: 77, checksums: Uint32Array.of(0x12345678), data: page(3) }, 0],
];

function decodeAll(bytes: Uint8Array, chunks: number[] = [bytes.length]): MigrationMessage[] {
  const decoder = new FrameDecoder({ maxPayloadBytes: 1 << 20 });
  const out: MigrationMessage[] = [];
  let at = 0;
  for (const size of chunks) {
    const { frames, error } = decoder.push(bytes.subarray(at, at + size));
    assert.equal(error, undefined);
    for (const frame of frames) out.push(decodeMigrationMessage(frame, PAGE));
    at += size;
  }
  return out;
}

describe('the migration codec', () => {
  test('every message round-trips, whole, split at every offset, and a byte at a time', () => {
    for (const [message, requestId] of SAMPLES) {
      const bytes = encodeMigrationMessage(message, requestId, PAGE);
      assert.deepEqual(decodeAll(bytes), [message], message.type);
      for (let cut = 1; cut < bytes.length; cut += Math.max(1, Math.floor(bytes.length / 97))) {
        assert.deepEqual(decodeAll(bytes, [cut, bytes.length - cut]), [message], `${message.type} split at ${cut}`);
      }
    }
    const small = encodeMigrationMessage(SAMPLES[4]![0], 0);
    assert.deepEqual(decodeAll(small, Array.from({ length: small.length }, () => 1)), [SAMPLES[4]![0]]);
  });

  test('a stream truncated at any offset yields no message, not a wrong one', () => {
    const bytes = encodeMigrationMessage(SAMPLES[2]![0], 0, PAGE);
    for (let end = 0; end < bytes.length; end += 37) {
      const decoder = new FrameDecoder({ maxPayloadBytes: 1 << 20 });
      const { frames, error } = decoder.push(bytes.subarray(0, end));
      assert.deepEqual([frames.length, error], [0, undefined], `truncated at ${end}`);
    }
  });

  test('page protocol frames on a migration connection decode too (post-copy READ, PAGES, PUSH)', () => {
    const read = encodeMessage({ type: 'read', offset: 8192, lengthBytes: PAGE, priority: 'demand' }, 3);
    const frame = new FrameDecoder({ maxPayloadBytes: 1 << 20 }).push(read).frames[0]!;
    assert.deepEqual(decodeMigrationFrame(frame), { type: 'read', offset: 8192, lengthBytes: PAGE, priority: 'demand' });
  });

  const refuse = (type: number, payload: Uint8Array, requestId: number, code: string, pageSize?: number): void => {
    assert.throws(() => decodeMigrationMessage({ type, flags: 0, requestId, payload }, pageSize), (e: unknown) => e instanceof ProtocolError && e.code === code, `${type.toString(16)} ${code}`);
  };

  test('hostile payloads are refused with typed errors: lengths, ranges, ids, unknown types', () => {
    refuse(0x02ff, new Uint8Array(0), 0, 'EPROTO_UNKNOWN_TYPE');
    refuse(MigrationMessageType.ACCEPT, new Uint8Array(0), 0, 'EPROTO_REQUEST_ID');
    refuse(MigrationMessageType.PAGES, new Uint8Array(16), 5, 'EPROTO_REQUEST_ID');
    // PAGES claiming 2 pages with one page of data.
    const pages = encodeMigrationMessage({ type: 'mig-pages', firstPage: 1, pageCount: 1, round: 0, checksums: Uint32Array.of(0), data: page(0) }, 0).subarray(16);
    new DataView(pages.buffer, pages.byteOffset).setUint32(8, 2, true);
    refuse(MigrationMessageType.PAGES, pages, 0, 'EPROTO_FIELD', PAGE);
    // A zero page count, a bitmap of the wrong length, a bad mode, a non-UTF-8 state.
    refuse(MigrationMessageType.ZERO, new Uint8Array(16), 0, 'EPROTO_FIELD');
    const dirty = new Uint8Array(16 + 2);
    new DataView(dirty.buffer).setUint32(8, 64, true);
    refuse(MigrationMessageType.DIRTY, dirty, 0, 'EPROTO_LENGTH');
    const begin = encodeMigrationMessage(SAMPLES[0]![0], 1).subarray(16);
    begin[0] = 9;
    refuse(MigrationMessageType.BEGIN, begin, 1, 'EPROTO_FIELD');
    refuse(MigrationMessageType.SWITCHOVER, Uint8Array.of(1, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xfe), 1, 'EPROTO_UTF8');
    // A reserved byte set, a verified answer that claims ok with differences.
    const round = encodeMigrationMessage(SAMPLES[4]![0], 0).subarray(16);
    round[5] = 1;
    refuse(MigrationMessageType.ROUND, round, 0, 'EPROTO_FIELD');
    refuse(MigrationMessageType.VERIFIED, Uint8Array.of(1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0), 1, 'EPROTO_FIELD');
  });

  test('nothing the decoder would refuse can be encoded', () => {
    assert.throws(() => encodeMigrationMessage({ type: 'mig-zero', firstPage: 0, pageCount: 0, round: 0 }, 0), ProtocolError);
    assert.throws(() => encodeMigrationMessage({ type: 'mig-pages', firstPage: 0, pageCount: 2, round: 0, checksums: Uint32Array.of(0, 0), data: page(0) }, 0, PAGE), ProtocolError);
    assert.throws(() => encodeMigrationMessage({ type: 'mig-pages', firstPage: 0, pageCount: 1, round: 0, checksums: Uint32Array.of(0, 0), data: page(0) }, 0, PAGE), ProtocolError, 'a checksum per page, no more');
    assert.throws(() => encodeMigrationMessage({ type: 'mig-begin', mode: 'precopy', pageSizeBytes: 1000, memoryBytes: 4096, machineJson: '{}' }, 1), ProtocolError);
    assert.throws(() => encodeMigrationMessage({ type: 'mig-accept' }, 0), ProtocolError);
  });
});
