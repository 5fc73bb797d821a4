import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import {
  HELLO_BYTES,
  MAX_READ_BYTES,
  MAX_ZERO_MAP_PAGES,
  MessageType,
  ProtocolError,
  decodeMessage,
  encodeMessage,
  encodeMessageParts,
  messageNameOf,
  requestIdRule,
  typeCodeOf,
  type Frame,
  type Message,
} from '../../src/protocol/index.js';
import { EVERY_MESSAGE, IMAGE_ID, SESSION_ID } from './fixtures.js';

const FRAME_HEADER = 16;

/** The payload a message encodes to (a mutable copy, for corrupting). */
function payloadOf(message: Message, requestId = 1): Uint8Array {
  return encodeMessage(message, requestId).slice(FRAME_HEADER);
}

function frame(type: number, payload: Uint8Array, requestId = 1): Frame {
  return { type, flags: 0, requestId, payload };
}

function refused(f: Frame, code: string, field?: string): ProtocolError {
  let caught: unknown;
  try {
    decodeMessage(f);
  } catch (error) {
    caught = error;
  }
  assert.ok(caught instanceof ProtocolError, `expected ${code}, decoded fine`);
  assert.equal(caught.code, code, caught.message);
  if (field !== undefined) assert.equal(caught.field, field, caught.message);
  return caught;
}

function encodeRefused(message: Message, code: string, requestId = 1): ProtocolError {
  let caught: unknown;
  try {
    encodeMessage(message, requestId);
  } catch (error) {
    caught = error;
  }
  assert.ok(caught instanceof ProtocolError, `expected encode to refuse with ${code}`);
  assert.equal(caught.code, code, caught.message);
  return caught;
}

const HELLO: Message = { type: 'hello', version: 2, minVersion: 2, role: 'page-client-bulk', sessionId: SESSION_ID, maxPayloadBytes: 4 * 1024 * 1024, features: 0 };
const READ: Message = { type: 'read', offset: 4096, lengthBytes: 8192, priority: 'demand' };
const INFO: Message = { type: 'info', imageSizeBytes: 1 << 24, pageSizeBytes: 4096, hasMetadata: true, hasZeroMap: true, metadataLengthBytes: 10, maxReadBytes: 1 << 21, imageId: IMAGE_ID, pageChecksum: 'crc32c' };

describe('the page protocol messages', () => {
  test('every type has a code, a name and a requestId rule, and codes are where the ranges say', () => {
    for (const { message } of EVERY_MESSAGE) {
      const code = typeCodeOf(message.type);
      assert.equal(messageNameOf(code), message.type);
      const rule = requestIdRule(message.type);
      assert.ok(['none', 'request', 'reply', 'any'].includes(rule));
      if (['hello', 'error', 'ping', 'pong'].includes(message.type)) assert.ok(code >= 0x0001 && code <= 0x00ff, message.type);
      else assert.ok(code >= 0x0100 && code <= 0x01ff, message.type);
    }
  });

  test('byte fields decode as views of the frame, not copies', () => {
    const payload = payloadOf({ type: 'pages', offset: 0, data: new Uint8Array(4096).fill(9) });
    const message = decodeMessage(frame(MessageType.PAGES, payload));
    assert.equal(message.type, 'pages');
    assert.equal(message.type === 'pages' && message.data.buffer, payload.buffer);
  });

  test('an unknown type is refused, including the migration range this version does not speak', () => {
    for (const type of [0x0000, 0x0005, 0x00ff, 0x010b, 0x0200, 0x02ff, 0x8000, 0xffff]) {
      const error = refused(frame(type, new Uint8Array(0)), 'EPROTO_UNKNOWN_TYPE');
      assert.equal(error.wireCode, 'UNKNOWN_TYPE');
    }
  });

  test('requestId rules: HELLO, CANCEL and PUSH carry 0; requests and replies never do; ERROR either', () => {
    refused(frame(MessageType.HELLO, payloadOf(HELLO, 0), 5), 'EPROTO_REQUEST_ID');
    refused(frame(MessageType.CANCEL, payloadOf({ type: 'cancel', readRequestId: 3 }, 0), 3), 'EPROTO_REQUEST_ID');
    refused(frame(MessageType.READ, payloadOf(READ), 0), 'EPROTO_REQUEST_ID');
    refused(frame(MessageType.PAGES, payloadOf({ type: 'pages', offset: 0, data: new Uint8Array(4096) }), 0), 'EPROTO_REQUEST_ID');
    refused(frame(MessageType.GET_INFO, new Uint8Array(0), 0), 'EPROTO_REQUEST_ID');
    assert.equal(decodeMessage(frame(MessageType.ERROR, payloadOf({ type: 'error', code: 'BUSY', text: 'x' }), 0)).type, 'error');
    assert.equal(decodeMessage(frame(MessageType.ERROR, payloadOf({ type: 'error', code: 'BUSY', text: 'x' }), 9)).type, 'error');
    encodeRefused(READ, 'EPROTO_REQUEST_ID', 0);
    encodeRefused(HELLO, 'EPROTO_REQUEST_ID', 1);
    encodeRefused(READ, 'EPROTO_REQUEST_ID', 2 ** 32);
  });

  test('every fixed-length payload one byte short or long is refused as the wrong length', () => {
    const fixed: Array<[number, Message]> = [
      [MessageType.GET_INFO, { type: 'get-info' }],
      [MessageType.INFO, INFO],
      [MessageType.GET_METADATA, { type: 'get-metadata', offset: 0, maxLengthBytes: 100 }],
      [MessageType.GET_ZERO_MAP, { type: 'get-zero-map', firstPage: 0, pageCount: 8 }],
      [MessageType.READ, READ],
      [MessageType.CANCEL, { type: 'cancel', readRequestId: 1 }],
    ];
    for (const [type, message] of fixed) {
      const requestId = requestIdRule(message.type) === 'none' ? 0 : 1;
      const payload = payloadOf(message, requestId);
      const longer = new Uint8Array(payload.length + 1);
      longer.set(payload);
      refused(frame(type, longer, requestId), 'EPROTO_LENGTH', 'payloadLengthBytes');
      if (payload.length > 0) refused(frame(type, payload.subarray(0, payload.length - 1), requestId), 'EPROTO_LENGTH');
    }
  });

  test('every payload cut short at every offset is refused, never read past its end', () => {
    for (const { message, requestId } of EVERY_MESSAGE) {
      const payload = payloadOf(message, requestId);
      const type = typeCodeOf(message.type);
      for (let at = 0; at < payload.length; at++) {
        let caught: unknown;
        try {
          decodeMessage(frame(type, payload.subarray(0, at), requestId));
        } catch (error) {
          caught = error;
        }
        // PING, PONG and METADATA with fewer bytes can be valid messages; the rest must be refused.
        if (caught === undefined) {
          assert.ok(['ping', 'pong', 'metadata'].includes(message.type), `${message.type} cut at ${at} decoded`);
          continue;
        }
        assert.ok(caught instanceof ProtocolError, `${message.type} cut at ${at}: ${String(caught)}`);
        assert.ok(['EPROTO_LENGTH', 'EPROTO_FIELD', 'EPROTO_MAGIC', 'EPROTO_VERSION'].includes(caught.code), `${message.type} cut at ${at}: ${caught.code}`);
      }
    }
  });

  test('a HELLO without the magic is refused: the peer speaks something else', () => {
    const payload = payloadOf(HELLO, 0);
    payload.set(new TextEncoder().encode('USERFLT1'), 0);
    const error = refused(frame(MessageType.HELLO, payload, 0), 'EPROTO_MAGIC', 'magic');
    assert.equal(error.wireCode, 'BAD_FRAME');
    assert.match(error.message, /starts with "USERFLT1"/);
  });

  test('HELLO versions: 0 and a minimum above the maximum are refused; a later version\'s longer HELLO decodes', () => {
    const payload = payloadOf(HELLO, 0);
    const view = new DataView(payload.buffer);
    view.setUint16(8, 0, true);
    view.setUint16(10, 0, true);
    assert.equal(refused(frame(MessageType.HELLO, payload, 0), 'EPROTO_VERSION', 'version').wireCode, 'UNSUPPORTED_VERSION');
    view.setUint16(8, 2, true);
    view.setUint16(10, 3, true);
    refused(frame(MessageType.HELLO, payload, 0), 'EPROTO_VERSION', 'minVersion');
    // A version-3 peer that appends 24 bytes of its own fields.
    const later = new Uint8Array(HELLO_BYTES + 24).fill(0xee);
    later.set(payloadOf(HELLO, 0));
    new DataView(later.buffer).setUint16(8, 3, true);
    new DataView(later.buffer).setUint16(10, 2, true);
    const decoded = decodeMessage(frame(MessageType.HELLO, later, 0));
    assert.deepEqual({ ...decoded, sessionId: undefined }, { ...HELLO, version: 3, minVersion: 2, sessionId: undefined });
    refused(frame(MessageType.HELLO, new Uint8Array(1025), 0), 'EPROTO_LENGTH');
  });

  test('HELLO fields out of range: an unknown role, reserved bytes, a payload limit too small or too large', () => {
    const role = payloadOf(HELLO, 0);
    role[12] = 99;
    refused(frame(MessageType.HELLO, role, 0), 'EPROTO_FIELD', 'role');
    const reserved = payloadOf(HELLO, 0);
    reserved[14] = 1;
    refused(frame(MessageType.HELLO, reserved, 0), 'EPROTO_FIELD', 'reserved');
    for (const maxPayloadBytes of [0, 4095, 64 * 1024 * 1024 + 1, 2 ** 32 - 1]) {
      const payload = payloadOf(HELLO, 0);
      new DataView(payload.buffer).setUint32(32, maxPayloadBytes, true);
      refused(frame(MessageType.HELLO, payload, 0), 'EPROTO_FIELD', 'maxPayloadBytes');
      encodeRefused({ ...HELLO, maxPayloadBytes } as Message, 'EPROTO_FIELD', 0);
    }
    encodeRefused({ ...HELLO, sessionId: new Uint8Array(15) } as Message, 'EPROTO_FIELD', 0);
  });

  test('ERROR: an unknown code, text over 1 KiB, a text length that disagrees, text that is not UTF-8', () => {
    const unknown = payloadOf({ type: 'error', code: 'BUSY', text: 'hi' });
    new DataView(unknown.buffer).setUint16(0, 999, true);
    refused(frame(MessageType.ERROR, unknown), 'EPROTO_FIELD', 'code');
    const long = new Uint8Array(4 + 1025);
    new DataView(long.buffer).setUint16(0, 1, true);
    new DataView(long.buffer).setUint16(2, 1025, true);
    refused(frame(MessageType.ERROR, long), 'EPROTO_FIELD', 'textLengthBytes');
    const disagree = payloadOf({ type: 'error', code: 'BUSY', text: 'four' });
    refused(frame(MessageType.ERROR, disagree.subarray(0, disagree.length - 1)), 'EPROTO_LENGTH');
    const notUtf8 = payloadOf({ type: 'error', code: 'BUSY', text: 'ab' });
    notUtf8[4] = 0xff;
    refused(frame(MessageType.ERROR, notUtf8), 'EPROTO_UTF8', 'text');
    encodeRefused({ type: 'error', code: 'BUSY', text: 'é'.repeat(513) }, 'EPROTO_FIELD');
    encodeRefused({ type: 'error', code: 'NOPE' } as unknown as Message, 'EPROTO_FIELD');
    // Exactly 1 KiB is fine.
    const max = encodeMessage({ type: 'error', code: 'BUSY', text: 'x'.repeat(1024) }, 1);
    assert.equal(max.length, 16 + 4 + 1024);
  });

  test('PING carries at most 64 bytes', () => {
    refused(frame(MessageType.PING, new Uint8Array(65)), 'EPROTO_LENGTH');
    encodeRefused({ type: 'pong', data: new Uint8Array(65) }, 'EPROTO_FIELD');
  });

  test('INFO: page size, image size, flags, metadata length, maxReadBytes and offsets past 2^53 are range-checked', () => {
    const cases: Array<[Partial<Extract<Message, { type: 'info' }>>, string]> = [
      [{ pageSizeBytes: 1000 }, 'pageSizeBytes'],
      [{ pageSizeBytes: 2048 }, 'pageSizeBytes'],
      [{ pageSizeBytes: 4 * 1024 * 1024 }, 'pageSizeBytes'],
      [{ imageSizeBytes: 4096 * 3 + 1 }, 'imageSizeBytes'],
      [{ hasMetadata: false }, 'metadataLengthBytes'],
      [{ maxReadBytes: 0 }, 'maxReadBytes'],
      [{ maxReadBytes: 6000 }, 'maxReadBytes'],
      [{ maxReadBytes: 4 * 1024 * 1024 }, 'maxReadBytes'],
    ];
    for (const [change, field] of cases) {
      const bad = { ...INFO, ...change } as Message;
      encodeRefused(bad, 'EPROTO_FIELD');
      // The same message built by hand on the wire is refused by the decoder.
      const payload = payloadOf(INFO);
      const view = new DataView(payload.buffer);
      const b = bad as Extract<Message, { type: 'info' }>;
      view.setBigUint64(0, BigInt(b.imageSizeBytes), true);
      view.setUint32(16, b.pageSizeBytes >>> 0, true);
      view.setUint32(20, (b.hasMetadata ? 1 : 0) | 2, true);
      view.setUint32(24, b.maxReadBytes >>> 0, true);
      refused(frame(MessageType.INFO, payload), 'EPROTO_FIELD', field);
    }
    const flags = payloadOf(INFO);
    flags[20] = 0x07;
    refused(frame(MessageType.INFO, flags), 'EPROTO_FIELD', 'flags');
    const huge = payloadOf(INFO);
    new DataView(huge.buffer).setBigUint64(0, 2n ** 60n, true);
    refused(frame(MessageType.INFO, huge), 'EPROTO_FIELD', 'imageSizeBytes');
    const reserved = payloadOf(INFO);
    reserved[29] = 1;
    refused(frame(MessageType.INFO, reserved), 'EPROTO_FIELD', 'reserved');
  });

  test('METADATA: a chunk past the total, GET_METADATA of 0 bytes', () => {
    encodeRefused({ type: 'metadata', offset: 10, totalLengthBytes: 12, bytes: new Uint8Array(3) }, 'EPROTO_FIELD');
    const payload = payloadOf({ type: 'metadata', offset: 0, totalLengthBytes: 12, bytes: new Uint8Array(12) });
    new DataView(payload.buffer).setBigUint64(8, 11n, true);
    refused(frame(MessageType.METADATA, payload), 'EPROTO_FIELD');
    encodeRefused({ type: 'get-metadata', offset: 0, maxLengthBytes: 0 }, 'EPROTO_FIELD');
  });

  test('ZERO_MAP: page counts 0 or too many, a bitmap of the wrong length, pad bits set', () => {
    encodeRefused({ type: 'get-zero-map', firstPage: 0, pageCount: 0 }, 'EPROTO_FIELD');
    encodeRefused({ type: 'get-zero-map', firstPage: 0, pageCount: MAX_ZERO_MAP_PAGES + 1 }, 'EPROTO_FIELD');
    encodeRefused({ type: 'zero-map', firstPage: 0, pageCount: 9, bitmap: new Uint8Array(1) }, 'EPROTO_FIELD');
    const pad = payloadOf({ type: 'zero-map', firstPage: 0, pageCount: 9, bitmap: Uint8Array.of(0xff, 0x01) });
    pad[17] = 0x03;
    refused(frame(MessageType.ZERO_MAP, pad), 'EPROTO_FIELD', 'bitmap');
    const short = payloadOf({ type: 'zero-map', firstPage: 0, pageCount: 9, bitmap: Uint8Array.of(0xff, 0x01) });
    refused(frame(MessageType.ZERO_MAP, short.subarray(0, 17)), 'EPROTO_LENGTH');
    const count = payloadOf({ type: 'get-zero-map', firstPage: 0, pageCount: 1 });
    new DataView(count.buffer).setUint32(8, MAX_ZERO_MAP_PAGES + 1, true);
    refused(frame(MessageType.GET_ZERO_MAP, count), 'EPROTO_FIELD', 'pageCount');
  });

  test('READ: offsets and lengths off the 4 KiB grid, empty, over 2 MiB, an unknown priority, reserved bytes', () => {
    for (const change of [{ offset: 100 }, { lengthBytes: 0 }, { lengthBytes: 4097 }, { lengthBytes: MAX_READ_BYTES + 4096 }, { offset: 2 ** 53 }]) {
      encodeRefused({ ...READ, ...change } as Message, 'EPROTO_FIELD');
    }
    const offset = payloadOf(READ);
    offset[0] = 1;
    refused(frame(MessageType.READ, offset), 'EPROTO_FIELD', 'offset');
    const length = payloadOf(READ);
    new DataView(length.buffer).setUint32(8, MAX_READ_BYTES + 4096, true);
    refused(frame(MessageType.READ, length), 'EPROTO_FIELD', 'lengthBytes');
    const priority = payloadOf(READ);
    priority[12] = 2;
    refused(frame(MessageType.READ, priority), 'EPROTO_FIELD', 'priority');
    const reserved = payloadOf(READ);
    reserved[15] = 0x80;
    refused(frame(MessageType.READ, reserved), 'EPROTO_FIELD', 'reserved');
    const overflow = payloadOf(READ);
    new DataView(overflow.buffer).setBigUint64(0, 2n ** 64n - 4096n, true);
    refused(frame(MessageType.READ, overflow), 'EPROTO_FIELD', 'offset');
  });

  test('PAGES and PUSH: the length field must equal the data, data over 2 MiB is refused before it is looked at', () => {
    const pages = payloadOf({ type: 'pages', offset: 0, data: new Uint8Array(8192) });
    new DataView(pages.buffer).setUint32(8, 4096, true);
    refused(frame(MessageType.PAGES, pages), 'EPROTO_LENGTH');
    const push = payloadOf({ type: 'push', offset: 0, data: new Uint8Array(4096) }, 0);
    new DataView(push.buffer).setUint32(8, MAX_READ_BYTES + 4096, true);
    refused(frame(MessageType.PUSH, push, 0), 'EPROTO_FIELD', 'lengthBytes');
    encodeRefused({ type: 'pages', offset: 0, data: new Uint8Array(100) }, 'EPROTO_FIELD');
    encodeRefused({ type: 'push', offset: 0, data: new Uint8Array(0) }, 'EPROTO_FIELD', 0);
  });

  test('INFO names the page checksum: CRC32 and CRC32C decode, 0 (a version-1 INFO) and unknown codes are refused', () => {
    for (const pageChecksum of ['crc32', 'crc32c'] as const) {
      const decoded = decodeMessage(frame(MessageType.INFO, payloadOf({ ...INFO, pageChecksum } as Message)));
      assert.equal(decoded.type === 'info' && decoded.pageChecksum, pageChecksum);
    }
    for (const code of [0, 3, 0xff]) {
      const payload = payloadOf(INFO);
      payload[28] = code;
      const error = refused(frame(MessageType.INFO, payload), 'EPROTO_FIELD', 'pageChecksum');
      if (code === 0) assert.match(error.message, /names none \(version 1\)/);
    }
    encodeRefused({ ...INFO, pageChecksum: 'sha1' } as unknown as Message, 'EPROTO_FIELD');
  });

  test('CHECKED_PAGES: one checksum per page of a power-of-two size, the lengths agreeing, decoded in order', () => {
    const data = new Uint8Array(3 * 4096).fill(5);
    const message: Message = { type: 'checked-pages', offset: 4096, checksums: Uint32Array.of(1, 0xffff_ffff, 0x8000_0000), data };
    const decoded = decodeMessage(frame(MessageType.CHECKED_PAGES, payloadOf(message)));
    assert.equal(decoded.type, 'checked-pages');
    if (decoded.type !== 'checked-pages') return;
    assert.deepEqual([...decoded.checksums], [1, 0xffff_ffff, 0x8000_0000]);
    assert.equal(decoded.offset, 4096);
    assert.ok(Buffer.from(decoded.data).equals(Buffer.from(data)));
    // Two checksums for three pages: 6 KiB pages are no page size.
    encodeRefused({ ...message, checksums: Uint32Array.of(1, 2) } as Message, 'EPROTO_FIELD');
    encodeRefused({ ...message, checksums: new Uint32Array(0) } as Message, 'EPROTO_FIELD');
    const count = payloadOf(message);
    new DataView(count.buffer).setUint32(12, 2, true);
    refused(frame(MessageType.CHECKED_PAGES, count), 'EPROTO_LENGTH');
    const zero = payloadOf(message);
    new DataView(zero.buffer).setUint32(12, 0, true);
    refused(frame(MessageType.CHECKED_PAGES, zero), 'EPROTO_FIELD', 'pageCount');
    const length = payloadOf(message);
    new DataView(length.buffer).setUint32(8, 2 * 4096, true);
    refused(frame(MessageType.CHECKED_PAGES, length), 'EPROTO_LENGTH');
    refused(frame(MessageType.CHECKED_PAGES, payloadOf(message), 0), 'EPROTO_REQUEST_ID');
  });

  test('CANCEL names a READ: id 0 is refused', () => {
    encodeRefused({ type: 'cancel', readRequestId: 0 }, 'EPROTO_FIELD', 0);
    refused(frame(MessageType.CANCEL, new Uint8Array(8), 0), 'EPROTO_FIELD', 'readRequestId');
  });

  test('encodeMessageParts and encodeMessage produce the same bytes', () => {
    for (const { message, requestId } of EVERY_MESSAGE) {
      assert.deepEqual(Buffer.concat(encodeMessageParts(message, requestId)), Buffer.from(encodeMessage(message, requestId)));
    }
  });
});
