// Messages of every type, and hostile byte streams, for the protocol tests.
import { encodeMessage, type Message } from '../../src/protocol/index.js';

const PAGE = 4096;

/** A recognisable run of pages: byte i of page p is (p * 31 + i) & 0xff. */
export function pages(firstPage: number, pageCount: number): Uint8Array {
  const bytes = new Uint8Array(pageCount * PAGE);
  for (let p = 0; p < pageCount; p++) {
    for (let i = 0; i < PAGE; i++) bytes[p * PAGE + i] = ((firstPage + p) * 31 + i) & 0xff;
  }
  return bytes;
}

export const SESSION_ID = Uint8Array.from({ length: 16 }, (_, i) => 0xa0 + i);
export const IMAGE_ID = Uint8Array.from({ length: 16 }, (_, i) => i * 7);

/** One message of every type (both PING and PONG, PAGES, CHECKED_PAGES and PUSH), with the requestId each is sent with. */
export const EVERY_MESSAGE: ReadonlyArray<{ requestId: number; message: Message }> = [
  { requestId: 0, message: { type: 'hello', version: 2, minVersion: 2, role: 'page-client-urgent', sessionId: SESSION_ID, maxPayloadBytes: 4 * 1024 * 1024 + 4096, features: 0 } },
  { requestId: 0, message: { type: 'hello', version: 2, minVersion: 2, role: 'page-server', sessionId: SESSION_ID, maxPayloadBytes: 2 * 1024 * 1024 + 16, features: 0 } },
  { requestId: 7, message: { type: 'error', code: 'OUT_OF_RANGE', text: 'offset 0x10000000 is past the 64 MiB image — ünïcödé' } },
  { requestId: 0, message: { type: 'error', code: 'BAD_FRAME', text: '' } },
  { requestId: 1, message: { type: 'ping', data: Uint8Array.of(1, 2, 3, 4, 5, 6, 7, 8) } },
  { requestId: 1, message: { type: 'pong', data: Uint8Array.of(1, 2, 3, 4, 5, 6, 7, 8) } },
  { requestId: 2, message: { type: 'get-info' } },
  {
    requestId: 2,
    message: { type: 'info', imageSizeBytes: 2 ** 40, pageSizeBytes: PAGE, hasMetadata: true, hasZeroMap: true, metadataLengthBytes: 1234, maxReadBytes: 2 * 1024 * 1024, imageId: IMAGE_ID, pageChecksum: 'crc32c' },
  },
  { requestId: 3, message: { type: 'get-metadata', offset: 1000, maxLengthBytes: 65536 } },
  { requestId: 3, message: { type: 'metadata', offset: 1000, totalLengthBytes: 1234, bytes: new TextEncoder().encode('{"kind":"userfault-vm"}') } },
  { requestId: 4, message: { type: 'get-zero-map', firstPage: 2 ** 33, pageCount: 13 } },
  { requestId: 4, message: { type: 'zero-map', firstPage: 2 ** 33, pageCount: 13, bitmap: Uint8Array.of(0b1010_0101, 0b0001_1111) } },
  { requestId: 0xffff_ffff, message: { type: 'read', offset: 2 ** 45, lengthBytes: 2 * 1024 * 1024, priority: 'background' } },
  { requestId: 5, message: { type: 'read', offset: 8 * PAGE, lengthBytes: 2 * PAGE, priority: 'demand' } },
  { requestId: 5, message: { type: 'pages', offset: 8 * PAGE, data: pages(8, 2) } },
  { requestId: 5, message: { type: 'checked-pages', offset: 8 * PAGE, checksums: Uint32Array.of(0xdeadbeef, 0x0123abcd), data: pages(8, 2) } },
  { requestId: 0, message: { type: 'cancel', readRequestId: 5 } },
  { requestId: 0, message: { type: 'push', offset: 3 * PAGE, data: pages(3, 1) } },
];

/** Every sample message as one byte stream, and where each frame ends. */
export function everyMessageStream(): { stream: Uint8Array; frameEnds: number[] } {
  const frames = EVERY_MESSAGE.map(({ message, requestId }) => encodeMessage(message, requestId));
  const stream = new Uint8Array(frames.reduce((n, f) => n + f.length, 0));
  const frameEnds: number[] = [];
  let at = 0;
  for (const frame of frames) {
    stream.set(frame, at);
    at += frame.length;
    frameEnds.push(at);
  }
  return { stream, frameEnds };
}

const ascii = (text: string): Uint8Array => new TextEncoder().encode(text);

/**
 * Bytes a page server may be sent by something that is not a page client,
 * and what the frame decoder must call each. None allocates its announced
 * payload: each is refused at its header (or, for the zeros, decodes to a
 * frame whose type is refused).
 */
export const HOSTILE_STREAMS: ReadonlyArray<{ name: string; bytes: Uint8Array; decoderCode?: string; messageCode?: string }> = [
  // 'GE' 'T ' '/ HT' 'TP/1' ...: payload length "TP/1" = 0x312f5054, ~800 MiB.
  { name: 'an HTTP request', bytes: ascii('GET / HTTP/1.1\r\nHost: localhost\r\n\r\n'), decoderCode: 'EPROTO_OVERSIZED' },
  // A TLS ClientHello whose random starts with a zero byte: its length field reads 0x303fc (small
  // enough), but flags 0x0201 set must-understand bit 0.
  { name: 'a TLS ClientHello', bytes: Uint8Array.of(0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03, 0x00, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a), decoderCode: 'EPROTO_FLAGS' },
  // 'SSH-' '2.0-' 'Open': a payload of 0x6e65704f bytes.
  { name: 'an SSH banner', bytes: ascii('SSH-2.0-OpenSSH_9.6\r\n'), decoderCode: 'EPROTO_OVERSIZED' },
  { name: 'a header announcing 4 GiB', bytes: Uint8Array.of(0x06, 0x01, 0, 0, 1, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0), decoderCode: 'EPROTO_OVERSIZED' },
  // Sixteen zero bytes are a well-formed frame (the CRC32 of nothing is 0) of type 0, which no version defines.
  { name: 'sixteen zero bytes', bytes: new Uint8Array(16), messageCode: 'EPROTO_UNKNOWN_TYPE' },
  { name: 'a migration frame this version does not speak', bytes: Uint8Array.of(0x00, 0x02, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0), messageCode: 'EPROTO_UNKNOWN_TYPE' },
];
