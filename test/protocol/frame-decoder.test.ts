import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { crc32 } from 'node:zlib';
import {
  DEFAULT_MAX_PAYLOAD_BYTES,
  FRAME_HEADER_BYTES,
  FrameDecoder,
  FrameFlag,
  MessageType,
  ProtocolError,
  concatParts,
  decodeMessage,
  encodeFrame,
  encodeMessage,
  encodeMessageParts,
  type Frame,
  type Message,
} from '../../src/protocol/index.js';
import { crc32cPages } from '../../src/checksum/crc32c.js';
import { EVERY_MESSAGE, HOSTILE_STREAMS, everyMessageStream } from './fixtures.js';

const LIMITS = { maxPayloadBytes: DEFAULT_MAX_PAYLOAD_BYTES };

function decodeAll(frames: Frame[]): Array<{ requestId: number; message: Message }> {
  return frames.map((frame) => ({ requestId: frame.requestId, message: decodeMessage(frame) }));
}

function pushAll(decoder: FrameDecoder, pieces: Uint8Array[]): Frame[] {
  const frames: Frame[] = [];
  for (const piece of pieces) {
    const result = decoder.push(piece);
    assert.equal(result.error, undefined, result.error?.message);
    frames.push(...result.frames);
  }
  return frames;
}

function assertProtocolError(error: unknown, code: string): asserts error is ProtocolError {
  assert.ok(error instanceof ProtocolError, `expected a ProtocolError ${code}, got ${String(error)}`);
  assert.equal(error.code, code, error.message);
}

describe('the frame decoder', () => {
  test('every message survives a round trip through encode, the decoder and decode', () => {
    const { stream } = everyMessageStream();
    const frames = pushAll(new FrameDecoder(LIMITS), [stream]);
    assert.deepEqual(decodeAll(frames), EVERY_MESSAGE);
  });

  test('a stream split into two pieces at every offset decodes the same frames, each when its last byte arrives', () => {
    const { stream, frameEnds } = everyMessageStream();
    for (let at = 0; at <= stream.length; at++) {
      const decoder = new FrameDecoder(LIMITS);
      const first = decoder.push(stream.subarray(0, at));
      assert.equal(first.error, undefined);
      assert.equal(first.frames.length, frameEnds.filter((end) => end <= at).length, `split at ${at}`);
      const second = decoder.push(stream.subarray(at));
      assert.equal(second.error, undefined);
      assert.deepEqual(decodeAll([...first.frames, ...second.frames]), EVERY_MESSAGE, `split at ${at}`);
      assert.equal(decoder.bufferedBytes, 0);
      assert.equal(decoder.end(), undefined);
    }
  });

  test('fed one byte at a time, it decodes the same frames, holding at most one frame\'s bytes', () => {
    const { stream, frameEnds } = everyMessageStream();
    const decoder = new FrameDecoder(LIMITS);
    const frames: Frame[] = [];
    let frameStart = 0;
    for (let i = 0; i < stream.length; i++) {
      const result = decoder.push(stream.subarray(i, i + 1));
      assert.equal(result.error, undefined);
      frames.push(...result.frames);
      if (frameEnds.includes(i + 1)) {
        assert.equal(result.frames.length, 1, `a frame completes at byte ${i + 1}`);
        frameStart = i + 1;
      } else {
        assert.equal(result.frames.length, 0);
      }
      assert.equal(decoder.bufferedBytes, i + 1 - frameStart);
    }
    assert.deepEqual(decodeAll(frames), EVERY_MESSAGE);
  });

  test('a reused receive buffer does not corrupt bytes already pushed', () => {
    const { stream } = everyMessageStream();
    const decoder = new FrameDecoder(LIMITS);
    const buffer = new Uint8Array(1000);
    const frames: Frame[] = [];
    for (let at = 0; at < stream.length; at += buffer.length) {
      const piece = stream.subarray(at, at + buffer.length);
      buffer.set(piece);
      const result = decoder.push(buffer.subarray(0, piece.length));
      // Frames wholly inside one push are views of it: copy them before the buffer is reused, as a caller that reuses must.
      frames.push(...result.frames.map((f) => ({ ...f, payload: f.payload.slice() })));
      buffer.fill(0xa5);
    }
    assert.deepEqual(decodeAll(frames), EVERY_MESSAGE);
  });

  test('truncated at every offset: the complete frames come out, the rest is incomplete, and end() says truncated', () => {
    const { stream, frameEnds } = everyMessageStream();
    for (let at = 0; at < stream.length; at++) {
      const decoder = new FrameDecoder(LIMITS);
      const result = decoder.push(stream.subarray(0, at));
      assert.equal(result.error, undefined, `truncated at ${at}`);
      assert.equal(result.frames.length, frameEnds.filter((end) => end <= at).length);
      const ended = decoder.end();
      if (at === 0 || frameEnds.includes(at)) {
        assert.equal(ended, undefined, `a clean end at ${at}`);
      } else {
        assertProtocolError(ended, 'EPROTO_TRUNCATED');
        assert.equal(ended.wireCode, 'BAD_FRAME');
      }
    }
  });

  test('end() names what was cut: a header, or a payload with its type', () => {
    const frame = encodeMessage({ type: 'read', offset: 0, lengthBytes: 4096, priority: 'demand' }, 9);
    const inHeader = new FrameDecoder(LIMITS);
    inHeader.push(frame.subarray(0, 5));
    assert.match(inHeader.end()!.message, /inside a frame header after 5 of its 16 bytes/);
    const inPayload = new FrameDecoder(LIMITS);
    inPayload.push(frame.subarray(0, FRAME_HEADER_BYTES + 3));
    const error = inPayload.end()!;
    assert.match(error.message, /inside a READ frame after 3 of its 16 payload bytes/);
    assert.equal(error.requestId, 9);
  });

  test('a payload whose CRC32 does not match is refused, naming both checksums; the frames before it are returned', () => {
    const good = encodeMessage({ type: 'get-info' }, 1);
    const bad = encodeMessage({ type: 'read', offset: 4096, lengthBytes: 4096, priority: 'demand' }, 2);
    bad[FRAME_HEADER_BYTES + 1]! ^= 0x01;
    const decoder = new FrameDecoder(LIMITS);
    const result = decoder.push(Uint8Array.from([...good, ...bad]));
    assert.equal(result.frames.length, 1);
    assertProtocolError(result.error, 'EPROTO_CRC');
    assert.equal(result.error.wireCode, 'BAD_FRAME');
    assert.equal(result.error.requestId, 2);
    assert.match(result.error.message, /fails its CRC32: 0x[0-9a-f]{8}, the header says 0x[0-9a-f]{8}/);
    // Framing is lost: the decoder stays failed.
    const later = decoder.push(good);
    assert.deepEqual(later.frames, []);
    assert.equal(later.error, result.error);
    assert.equal(decoder.end(), result.error);
  });

  test('a CRC mismatch split across pushes is refused the same', () => {
    const bad = encodeMessage({ type: 'pages', offset: 0, data: new Uint8Array(8192).fill(3) }, 4);
    bad[bad.length - 1]! ^= 0x80;
    for (const at of [1, FRAME_HEADER_BYTES, FRAME_HEADER_BYTES + 1, bad.length - 1]) {
      const decoder = new FrameDecoder(LIMITS);
      assert.equal(decoder.push(bad.subarray(0, at)).error, undefined);
      assertProtocolError(decoder.push(bad.subarray(at)).error, 'EPROTO_CRC');
    }
  });

  test('a frame announcing more than the limit is refused at its header, before its payload arrives', () => {
    const decoder = new FrameDecoder({ maxPayloadBytes: 1024 });
    const header = encodeFrame(MessageType.PAGES, 1, new Uint8Array(1025)).subarray(0, FRAME_HEADER_BYTES);
    const result = decoder.push(header);
    assertProtocolError(result.error, 'EPROTO_OVERSIZED');
    assert.equal(result.error.wireCode, 'TOO_LARGE');
    assert.equal(result.error.field, 'payloadLengthBytes');
    assert.match(result.error.message, /announces a 1025-byte payload; at most 1024/);
    assert.equal(decoder.bufferedBytes, 0);
    // Exactly the limit is fine.
    assert.equal(new FrameDecoder({ maxPayloadBytes: 1024 }).push(encodeFrame(MessageType.PING, 1, new Uint8Array(1024))).frames.length, 1);
  });

  test('the limit can be raised once the peer is known (a small one before its HELLO)', () => {
    const decoder = new FrameDecoder({ maxPayloadBytes: 64 });
    assert.equal(decoder.push(encodeMessage({ type: 'get-info' }, 1)).frames.length, 1);
    decoder.maxPayloadBytes = 1 << 20;
    assert.equal(decoder.push(encodeMessage({ type: 'pages', offset: 0, data: new Uint8Array(4096) }, 2)).frames.length, 1);
  });

  test('an unknown must-understand flag is refused; an unknown may-ignore flag is not', () => {
    const strict = encodeFrame(MessageType.GET_INFO, 1, new Uint8Array(0), 0x0004);
    assertProtocolError(new FrameDecoder(LIMITS).push(strict).error, 'EPROTO_FLAGS');
    const lenient = encodeFrame(MessageType.GET_INFO, 1, new Uint8Array(0), 0x0400);
    const result = new FrameDecoder(LIMITS).push(lenient);
    assert.equal(result.error, undefined);
    assert.equal(result.frames[0]!.flags, 0x0400);
    assert.deepEqual(decodeMessage(result.frames[0]!), { type: 'get-info' });
  });

  test('hostile byte streams are refused with a typed code, never by allocating what they announce', () => {
    for (const hostile of HOSTILE_STREAMS) {
      const decoder = new FrameDecoder(LIMITS);
      const result = decoder.push(hostile.bytes);
      if (hostile.decoderCode) {
        assertProtocolError(result.error, hostile.decoderCode);
        assert.equal(result.frames.length, 0, hostile.name);
      } else {
        assert.equal(result.error, undefined, hostile.name);
        assert.throws(() => decodeMessage(result.frames[0]!), (error: unknown) => {
          assertProtocolError(error, hostile.messageCode!);
          return true;
        }, hostile.name);
      }
    }
  });

  test('encodeMessageParts writes large data from where it lies and checksums all the parts', () => {
    const data = new Uint8Array(2 * 4096).fill(0x5c);
    const parts = encodeMessageParts({ type: 'pages', offset: 4096, data }, 3);
    assert.equal(parts[parts.length - 1], data, 'the data is not copied');
    const header = new DataView(parts[0]!.buffer, parts[0]!.byteOffset, FRAME_HEADER_BYTES);
    const payload = Buffer.concat(parts.slice(1));
    assert.equal(header.getUint32(8, true), payload.length);
    assert.equal(header.getUint32(12, true), crc32(payload));
  });
});

describe('the frame decoder with a per-frame callback', () => {
  test('a limit raised for one frame applies to the next frame of the same chunk', () => {
    const hello = encodeMessage({ type: 'get-info' }, 1);
    const big = encodeMessage({ type: 'pages', offset: 0, data: new Uint8Array(8192) }, 2);
    const decoder = new FrameDecoder({ maxPayloadBytes: 64 });
    const seen: number[] = [];
    const result = decoder.push(Uint8Array.from([...hello, ...big]), (frame) => {
      seen.push(frame.requestId);
      decoder.maxPayloadBytes = 1 << 20;
    });
    assert.equal(result.error, undefined);
    assert.deepEqual(result.frames, []);
    assert.deepEqual(seen, [1, 2]);
    // Without the callback the whole chunk is decoded under the first limit.
    const eager = new FrameDecoder({ maxPayloadBytes: 64 }).push(Uint8Array.from([...hello, ...big]));
    assert.equal(eager.frames.length, 1);
    assert.equal(eager.error?.code, 'EPROTO_OVERSIZED');
  });
});

describe('CRC32C frames (page service version 3)', () => {
  const pages = new Uint8Array(5 * 4096).map((_, i) => (i * 7 + (i >> 12)) & 0xff);
  const checksums = crc32cPages(pages, 4096);
  const message: Message = { type: 'checked-pages', offset: 8192, checksums, data: pages };

  test('a CRC32C frame carries the flag, decodes to the same message, and hands over its pages\' CRC32Cs from the check', () => {
    const frame = encodeMessage(message, 7, { checksum: 'crc32c' });
    assert.equal(new DataView(frame.buffer, frame.byteOffset).getUint16(2, true) & FrameFlag.crc32c, FrameFlag.crc32c);
    const [decoded] = pushAll(new FrameDecoder(LIMITS), [frame.subarray(0, 100), frame.subarray(100)]);
    assert.deepEqual(decodeMessage(decoded!), message);
    assert.deepEqual(decoded!.blockCrcs, checksums, 'the last five 4 KiB blocks are the five pages');
    const crc32Frame = pushAll(new FrameDecoder(LIMITS), [encodeMessage(message, 7)]);
    assert.equal(crc32Frame[0]!.blockCrcs, undefined, 'a CRC32 frame computes no page CRCs');
  });

  test('a sender that knows its pages\' CRC32Cs derives the frame\'s checksum from them: the same bytes as reading the pages', () => {
    const derived = concatParts(encodeMessageParts(message, 7, { checksum: 'crc32c', lastPartCrcs: checksums }));
    const read = encodeMessage(message, 7, { checksum: 'crc32c' });
    assert.deepEqual(derived, read);
  });

  test('a page altered after its CRC32C was taken fails the derived frame checksum: the frame is refused, nothing decoded', () => {
    const altered = pages.slice();
    altered[3 * 4096 + 8]! ^= 0xff;
    const frame = concatParts(encodeMessageParts({ ...message, data: altered }, 7, { checksum: 'crc32c', lastPartCrcs: checksums }));
    const result = new FrameDecoder(LIMITS).push(frame);
    assertProtocolError(result.error, 'EPROTO_CRC');
    assert.match(result.error.message, /fails its CRC32C/);
    assert.equal(result.frames.length, 0);
  });

  test('a relay re-encoding a CRC32C frame with CRC32 clears the flag: the frame stays valid', () => {
    const [decoded] = pushAll(new FrameDecoder(LIMITS), [encodeMessage(message, 7, { checksum: 'crc32c' })]);
    const reencoded = encodeFrame(decoded!.type, decoded!.requestId, decoded!.payload, decoded!.flags);
    const [again] = pushAll(new FrameDecoder(LIMITS), [reencoded]);
    assert.equal(again!.flags & FrameFlag.crc32c, 0);
    assert.deepEqual(decodeMessage(again!), message);
  });
});

describe('reading payloads in place', () => {
  const data = new Uint8Array(64 * 1024).map((_, i) => i & 0xff);
  const frame = encodeMessage({ type: 'pages', offset: 0, data }, 3, { checksum: 'crc32c' });

  test('after a header, the payload\'s window takes the rest of its bytes where they belong; the frame completes on the last', () => {
    const decoder = new FrameDecoder({ ...LIMITS, transientChunks: true });
    assert.equal(decoder.payloadWindow(), undefined, 'no payload under way');
    const first = frame.subarray(0, 1000);
    assert.equal(decoder.push(first).frames.length, 0);
    let at = 1000;
    const frames: Frame[] = [];
    for (let window = decoder.payloadWindow(); window; window = decoder.payloadWindow()) {
      const take = Math.min(window.length, 7000);
      window.set(frame.subarray(at, at + take));
      at += take;
      const result = decoder.payloadReceived(take);
      assert.equal(result.error, undefined);
      frames.push(...result.frames);
    }
    assert.equal(at, frame.length);
    assert.equal(frames.length, 1);
    assert.deepEqual(decodeMessage(frames[0]!), { type: 'pages', offset: 0, data });
    assert.throws(() => { decoder.push(frame.subarray(0, 40)); decoder.payloadReceived(1 << 20); }, RangeError, 'more than the window is refused');
  });

  test('with transient chunks, a frame wholly inside a chunk is a copy: reusing the chunk does not change it', () => {
    const small = encodeMessage({ type: 'ping', data: Uint8Array.of(1, 2, 3) }, 9);
    const chunk = new Uint8Array(small);
    const [kept] = new FrameDecoder({ ...LIMITS, transientChunks: true }).push(chunk).frames;
    const [view] = new FrameDecoder(LIMITS).push(chunk).frames;
    chunk.fill(0);
    assert.deepEqual(decodeMessage(kept!), { type: 'ping', data: Uint8Array.of(1, 2, 3) });
    assert.notDeepEqual(view!.payload, kept!.payload, 'without the option, the frame is a view of the chunk');
  });

  test('a payload whose in-place bytes fail the CRC is refused like any other', () => {
    const decoder = new FrameDecoder(LIMITS);
    decoder.push(frame.subarray(0, 100));
    const window = decoder.payloadWindow()!;
    window.set(frame.subarray(100));
    window[window.length - 1]! ^= 1;
    assertProtocolError(decoder.payloadReceived(window.length).error, 'EPROTO_CRC');
  });
});
