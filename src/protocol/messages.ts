// The page protocol's messages: one discriminated union, one encoder and one
// decoder per type, the same field checks on both sides (a message this code
// would refuse is never sent). Layouts are drawn in wire.ts.
import { ProtocolError, type ProtocolErrorCode } from './errors.js';
import { Reader, Writer, type Context } from './codec.js';
import { concatParts, encodeFrameParts, type Frame, type FrameEncoding } from './frame-decoder.js';
import {
  CANCEL_BYTES,
  CHECKED_PAGES_HEADER_BYTES,
  ERROR_HEADER_BYTES,
  GET_METADATA_BYTES,
  GET_ZERO_MAP_BYTES,
  HELLO_BYTES,
  HELLO_MAGIC,
  IMAGE_ID_BYTES,
  INFO_BYTES,
  InfoFlag,
  KNOWN_INFO_FLAGS,
  MAX_ERROR_TEXT_BYTES,
  MAX_HELLO_BYTES,
  MAX_MAX_PAYLOAD_BYTES,
  MAX_PAGE_BYTES,
  MAX_PING_BYTES,
  MAX_READ_BYTES,
  MAX_ZERO_MAP_PAGES,
  METADATA_HEADER_BYTES,
  MIN_MAX_PAYLOAD_BYTES,
  MIN_PAGE_BYTES,
  MessageType,
  PAGES_HEADER_BYTES,
  PAGE_CHECKSUM_BYTES,
  PageChecksumCode,
  READ_BYTES,
  ReadPriorityCode,
  Role,
  SESSION_ID_BYTES,
  WireErrorCode,
  ZERO_MAP_HEADER_BYTES,
  describeType,
  roleName,
  wireErrorName,
  type PageChecksumName,
  type RoleName,
  type WireErrorName,
} from './wire.js';

export interface HelloMessage {
  type: 'hello';
  /** The highest version the sender speaks (in a server's answer: the version chosen). */
  version: number;
  /** The lowest version the sender speaks (in a server's answer: equal to version). */
  minVersion: number;
  role: RoleName;
  /** 16 bytes, chosen by the client and shared by its connections. */
  sessionId: Uint8Array;
  /** The largest payload the sender of this HELLO will receive. */
  maxPayloadBytes: number;
  /** Feature bits; none are defined in version 1. */
  features: number;
}

export interface ErrorMessage {
  type: 'error';
  code: WireErrorName;
  /** Why, for a person: at most 1 KiB of UTF-8. */
  text: string;
}

export interface PingMessage {
  type: 'ping' | 'pong';
  /** At most 64 bytes; a PONG echoes its PING's. */
  data: Uint8Array;
}

export interface GetInfoMessage {
  type: 'get-info';
}

export interface InfoMessage {
  type: 'info';
  imageSizeBytes: number;
  pageSizeBytes: number;
  hasMetadata: boolean;
  hasZeroMap: boolean;
  metadataLengthBytes: number;
  /** The longest READ the server takes. */
  maxReadBytes: number;
  /** 16 bytes naming the image's content; all zero when the server cannot say. */
  imageId: Uint8Array;
  /** The checksum the image stores for each page, which CHECKED_PAGES carries: CRC32C (snapshot format 2) or CRC32 (format 1). */
  pageChecksum: PageChecksumName;
}

export interface GetMetadataMessage {
  type: 'get-metadata';
  offset: number;
  maxLengthBytes: number;
}

export interface MetadataMessage {
  type: 'metadata';
  offset: number;
  totalLengthBytes: number;
  bytes: Uint8Array;
}

export interface GetZeroMapMessage {
  type: 'get-zero-map';
  firstPage: number;
  pageCount: number;
}

export interface ZeroMapMessage {
  type: 'zero-map';
  firstPage: number;
  pageCount: number;
  /** ceil(pageCount / 8) bytes; bit i (LSB first) set = page firstPage + i is all zero. */
  bitmap: Uint8Array;
}

export type ReadPriorityName = keyof typeof ReadPriorityCode;

export interface ReadMessage {
  type: 'read';
  offset: number;
  lengthBytes: number;
  priority: ReadPriorityName;
}

export interface PagesMessage {
  /** 'pages' answers a READ; 'push' is sent unasked (requestId 0). */
  type: 'pages' | 'push';
  offset: number;
  /** Whole pages from `offset`; its length is the message's lengthBytes. */
  data: Uint8Array;
}

/** A page server's answer to a READ: the pages, each with the checksum its image stores for it. */
export interface CheckedPagesMessage {
  type: 'checked-pages';
  offset: number;
  /** One per page, in order: the image's own (a snapshot's page table), never computed from `data` by the sender. */
  checksums: Uint32Array;
  /** Whole pages from `offset`: checksums.length pages of equal size. */
  data: Uint8Array;
}

export interface CancelMessage {
  type: 'cancel';
  /** The READ to cancel. */
  readRequestId: number;
}

export type Message =
  | HelloMessage
  | ErrorMessage
  | PingMessage
  | GetInfoMessage
  | InfoMessage
  | GetMetadataMessage
  | MetadataMessage
  | GetZeroMapMessage
  | ZeroMapMessage
  | ReadMessage
  | PagesMessage
  | CheckedPagesMessage
  | CancelMessage;

export type MessageName = Message['type'];

const TYPE_CODES: Readonly<Record<MessageName, number>> = {
  hello: MessageType.HELLO,
  error: MessageType.ERROR,
  ping: MessageType.PING,
  pong: MessageType.PONG,
  'get-info': MessageType.GET_INFO,
  info: MessageType.INFO,
  'get-metadata': MessageType.GET_METADATA,
  metadata: MessageType.METADATA,
  'get-zero-map': MessageType.GET_ZERO_MAP,
  'zero-map': MessageType.ZERO_MAP,
  read: MessageType.READ,
  pages: MessageType.PAGES,
  cancel: MessageType.CANCEL,
  push: MessageType.PUSH,
  'checked-pages': MessageType.CHECKED_PAGES,
};
const NAMES = new Map<number, MessageName>(Object.entries(TYPE_CODES).map(([name, code]) => [code, name as MessageName]));

/**
 * What a message's requestId must be: 'none' (0: HELLO, CANCEL, PUSH), a
 * request's own id or the id of the request a reply answers (never 0), or
 * 'any' (an ERROR answers a request, or with 0 the connection).
 */
export type RequestIdRule = 'none' | 'request' | 'reply' | 'any';

const REQUEST_ID_RULES: Readonly<Record<MessageName, RequestIdRule>> = {
  hello: 'none',
  error: 'any',
  ping: 'request',
  pong: 'reply',
  'get-info': 'request',
  info: 'reply',
  'get-metadata': 'request',
  metadata: 'reply',
  'get-zero-map': 'request',
  'zero-map': 'reply',
  read: 'request',
  pages: 'reply',
  cancel: 'none',
  push: 'none',
  'checked-pages': 'reply',
};

export function requestIdRule(type: MessageName): RequestIdRule {
  return REQUEST_ID_RULES[type];
}

export function typeCodeOf(type: MessageName): number {
  return TYPE_CODES[type];
}

export function messageNameOf(typeCode: number): MessageName | undefined {
  return NAMES.get(typeCode);
}

/**
 * Encode a message as the byte ranges to write (large data is not copied).
 * Throws ProtocolError for a field out of range. `encoding`: the frame's
 * checksum (the connection's, from its version; CRC32 by default).
 */
export function encodeMessageParts(message: Message, requestId: number, encoding?: FrameEncoding): Uint8Array[] {
  const typeCode = TYPE_CODES[message.type];
  const context = { frameType: typeCode, requestId };
  checkRequestId(message.type, requestId, context);
  checkFields(message, context);
  return encodeFrameParts(typeCode, requestId, encodePayload(message), 0, encoding);
}

/** Encode a message as one frame. */
export function encodeMessage(message: Message, requestId: number, encoding?: FrameEncoding): Uint8Array {
  return concatParts(encodeMessageParts(message, requestId, encoding));
}

/**
 * Decode a frame's payload into its message. Throws ProtocolError: an unknown
 * type, a payload of the wrong length, a field out of range, reserved bytes
 * set, a requestId the type does not allow. Byte fields (data, bitmap,
 * sessionId) are views of the frame's payload.
 */
export function decodeMessage(frame: Frame): Message {
  const type = NAMES.get(frame.type);
  const context = { frameType: frame.type, requestId: frame.requestId };
  if (type === undefined) {
    throw new ProtocolError('EPROTO_UNKNOWN_TYPE', `${describeType(frame.type)} is not a message of protocol version 1`, context);
  }
  checkRequestId(type, frame.requestId, context);
  const message = decodePayload(type, new Reader(frame.payload, context));
  checkFields(message, context);
  return message;
}

function checkRequestId(type: MessageName, requestId: number, context: Context): void {
  if (!Number.isInteger(requestId) || requestId < 0 || requestId > 0xffff_ffff) {
    throw new ProtocolError('EPROTO_REQUEST_ID', `requestId ${requestId} is not a u32`, context);
  }
  const rule = REQUEST_ID_RULES[type];
  if (rule === 'none' && requestId !== 0) {
    throw new ProtocolError('EPROTO_REQUEST_ID', `a ${describeType(TYPE_CODES[type])} is unsolicited: its requestId must be 0, not ${requestId}`, context);
  }
  if ((rule === 'request' || rule === 'reply') && requestId === 0) {
    const what = rule === 'request' ? 'a request needs an id its reply can echo' : 'a reply names the request it answers';
    throw new ProtocolError('EPROTO_REQUEST_ID', `${describeType(TYPE_CODES[type])} with requestId 0: ${what}`, context);
  }
}


function encodePayload(message: Message): Uint8Array[] {
  switch (message.type) {
    case 'hello': {
      const w = new Writer(HELLO_BYTES);
      w.bytes(HELLO_MAGIC);
      w.u16(message.version);
      w.u16(message.minVersion);
      w.u8(Role[message.role]);
      w.zeros(3);
      w.bytes(message.sessionId);
      w.u32(message.maxPayloadBytes);
      w.u32(message.features);
      return [w.done()];
    }
    case 'error': {
      const text = new TextEncoder().encode(message.text);
      const w = new Writer(ERROR_HEADER_BYTES);
      w.u16(WireErrorCode[message.code]);
      w.u16(text.length);
      return [w.done(), text];
    }
    case 'ping':
    case 'pong':
      return [message.data];
    case 'get-info':
      return [];
    case 'info': {
      const w = new Writer(INFO_BYTES);
      w.u64(message.imageSizeBytes);
      w.u64(message.metadataLengthBytes);
      w.u32(message.pageSizeBytes);
      w.u32((message.hasMetadata ? InfoFlag.hasMetadata : 0) | (message.hasZeroMap ? InfoFlag.hasZeroMap : 0));
      w.u32(message.maxReadBytes);
      w.u8(PageChecksumCode[message.pageChecksum]);
      w.zeros(3);
      w.bytes(message.imageId);
      return [w.done()];
    }
    case 'get-metadata': {
      const w = new Writer(GET_METADATA_BYTES);
      w.u64(message.offset);
      w.u32(message.maxLengthBytes);
      w.zeros(4);
      return [w.done()];
    }
    case 'metadata': {
      const w = new Writer(METADATA_HEADER_BYTES);
      w.u64(message.offset);
      w.u64(message.totalLengthBytes);
      return [w.done(), message.bytes];
    }
    case 'get-zero-map': {
      const w = new Writer(GET_ZERO_MAP_BYTES);
      w.u64(message.firstPage);
      w.u32(message.pageCount);
      w.zeros(4);
      return [w.done()];
    }
    case 'zero-map': {
      const w = new Writer(ZERO_MAP_HEADER_BYTES);
      w.u64(message.firstPage);
      w.u32(message.pageCount);
      w.zeros(4);
      return [w.done(), message.bitmap];
    }
    case 'read': {
      const w = new Writer(READ_BYTES);
      w.u64(message.offset);
      w.u32(message.lengthBytes);
      w.u8(ReadPriorityCode[message.priority]);
      w.zeros(3);
      return [w.done()];
    }
    case 'pages':
    case 'push': {
      const w = new Writer(PAGES_HEADER_BYTES);
      w.u64(message.offset);
      w.u32(message.data.length);
      w.zeros(4);
      return [w.done(), message.data];
    }
    case 'checked-pages': {
      const w = new Writer(CHECKED_PAGES_HEADER_BYTES + message.checksums.length * PAGE_CHECKSUM_BYTES);
      w.u64(message.offset);
      w.u32(message.data.length);
      w.u32(message.checksums.length);
      for (const checksum of message.checksums) w.u32(checksum);
      return [w.done(), message.data];
    }
    case 'cancel': {
      const w = new Writer(CANCEL_BYTES);
      w.u32(message.readRequestId);
      w.zeros(4);
      return [w.done()];
    }
    default:
      return unreachable(message);
  }
}

function decodePayload(type: MessageName, r: Reader): Message {
  switch (type) {
    case 'hello': {
      // A later version may append fields; the first 40 bytes never change.
      r.lengthBetween(HELLO_BYTES, MAX_HELLO_BYTES);
      const magic = r.bytes(HELLO_MAGIC.length);
      if (!equalBytes(magic, HELLO_MAGIC)) {
        throw new ProtocolError('EPROTO_MAGIC', `the HELLO starts with ${describeBytes(magic)}, not "USERFLT\\0": the peer does not speak this protocol`, { ...r.context, field: 'magic' });
      }
      const version = r.u16();
      const minVersion = r.u16();
      const roleCode = r.u8();
      r.reserved(3, 'reserved');
      const sessionId = r.bytes(SESSION_ID_BYTES);
      const maxPayloadBytes = r.u32();
      const features = r.u32();
      const role = roleName(roleCode);
      if (role === undefined) throw r.fieldError('role', `role ${roleCode} is not a role of this protocol`);
      return { type, version, minVersion, role, sessionId, maxPayloadBytes, features };
    }
    case 'error': {
      r.lengthAtLeast(ERROR_HEADER_BYTES);
      const codeValue = r.u16();
      const textLength = r.u16();
      if (textLength > MAX_ERROR_TEXT_BYTES) throw r.fieldError('textLengthBytes', `the ERROR text is ${textLength} bytes; at most ${MAX_ERROR_TEXT_BYTES}`);
      r.lengthExactly(ERROR_HEADER_BYTES + textLength);
      const code = wireErrorName(codeValue);
      if (code === undefined) throw r.fieldError('code', `ERROR code ${codeValue} is not one of protocol version 1`);
      let text: string;
      try {
        text = new TextDecoder('utf-8', { fatal: true }).decode(r.bytes(textLength));
      } catch {
        throw new ProtocolError('EPROTO_UTF8', 'the ERROR text is not UTF-8', { ...r.context, field: 'text' });
      }
      return { type, code, text };
    }
    case 'ping':
    case 'pong':
      r.lengthBetween(0, MAX_PING_BYTES);
      return { type, data: r.rest() };
    case 'get-info':
      r.lengthExactly(0);
      return { type };
    case 'info': {
      r.lengthExactly(INFO_BYTES);
      const imageSizeBytes = r.u64('imageSizeBytes');
      const metadataLengthBytes = r.u64('metadataLengthBytes');
      const pageSizeBytes = r.u32();
      const flags = r.u32();
      const maxReadBytes = r.u32();
      const checksumCode = r.u8();
      r.reserved(3, 'reserved');
      const imageId = r.bytes(IMAGE_ID_BYTES);
      if ((flags & ~KNOWN_INFO_FLAGS) !== 0) throw r.fieldError('flags', `INFO flags 0x${flags.toString(16)} include bits version 1 does not define`);
      const pageChecksum = checksumCode === PageChecksumCode.crc32c ? 'crc32c' : checksumCode === PageChecksumCode.crc32 ? 'crc32' : undefined;
      if (pageChecksum === undefined) {
        throw r.fieldError('pageChecksum', `INFO page checksum ${checksumCode}: 1 (CRC32) or 2 (CRC32C); a server that names none (version 1) sends pages nothing can check`);
      }
      return {
        type,
        imageSizeBytes,
        pageSizeBytes,
        hasMetadata: (flags & InfoFlag.hasMetadata) !== 0,
        hasZeroMap: (flags & InfoFlag.hasZeroMap) !== 0,
        metadataLengthBytes,
        maxReadBytes,
        imageId,
        pageChecksum,
      };
    }
    case 'get-metadata': {
      r.lengthExactly(GET_METADATA_BYTES);
      const offset = r.u64('offset');
      const maxLengthBytes = r.u32();
      r.reserved(4, 'reserved');
      return { type, offset, maxLengthBytes };
    }
    case 'metadata': {
      r.lengthAtLeast(METADATA_HEADER_BYTES);
      const offset = r.u64('offset');
      const totalLengthBytes = r.u64('totalLengthBytes');
      return { type, offset, totalLengthBytes, bytes: r.rest() };
    }
    case 'get-zero-map': {
      r.lengthExactly(GET_ZERO_MAP_BYTES);
      const firstPage = r.u64('firstPage');
      const pageCount = r.u32();
      r.reserved(4, 'reserved');
      return { type, firstPage, pageCount };
    }
    case 'zero-map': {
      r.lengthAtLeast(ZERO_MAP_HEADER_BYTES);
      const firstPage = r.u64('firstPage');
      const pageCount = r.u32();
      r.reserved(4, 'reserved');
      if (pageCount === 0 || pageCount > MAX_ZERO_MAP_PAGES) throw r.fieldError('pageCount', `a ZERO_MAP of ${pageCount} pages; 1..${MAX_ZERO_MAP_PAGES} allowed`);
      r.lengthExactly(ZERO_MAP_HEADER_BYTES + Math.ceil(pageCount / 8));
      return { type, firstPage, pageCount, bitmap: r.rest() };
    }
    case 'read': {
      r.lengthExactly(READ_BYTES);
      const offset = r.u64('offset');
      const lengthBytes = r.u32();
      const priorityCode = r.u8();
      r.reserved(3, 'reserved');
      const priority = priorityCode === ReadPriorityCode.demand ? 'demand' : priorityCode === ReadPriorityCode.background ? 'background' : undefined;
      if (priority === undefined) throw r.fieldError('priority', `READ priority ${priorityCode}; 0 (demand) or 1 (background)`);
      return { type, offset, lengthBytes, priority };
    }
    case 'pages':
    case 'push': {
      r.lengthAtLeast(PAGES_HEADER_BYTES);
      const offset = r.u64('offset');
      const lengthBytes = r.u32();
      r.reserved(4, 'reserved');
      if (lengthBytes > MAX_READ_BYTES) throw r.fieldError('lengthBytes', `${describeType(r.context.frameType)} of ${lengthBytes} bytes; at most ${MAX_READ_BYTES}`);
      r.lengthExactly(PAGES_HEADER_BYTES + lengthBytes);
      return { type, offset, data: r.rest() };
    }
    case 'checked-pages': {
      r.lengthAtLeast(CHECKED_PAGES_HEADER_BYTES);
      const offset = r.u64('offset');
      const lengthBytes = r.u32();
      const pageCount = r.u32();
      if (lengthBytes > MAX_READ_BYTES) throw r.fieldError('lengthBytes', `CHECKED_PAGES of ${lengthBytes} bytes; at most ${MAX_READ_BYTES}`);
      if (pageCount === 0 || pageCount > MAX_READ_BYTES / MIN_PAGE_BYTES) throw r.fieldError('pageCount', `CHECKED_PAGES of ${pageCount} pages; 1..${MAX_READ_BYTES / MIN_PAGE_BYTES}`);
      r.lengthExactly(CHECKED_PAGES_HEADER_BYTES + pageCount * PAGE_CHECKSUM_BYTES + lengthBytes);
      const checksums = new Uint32Array(pageCount);
      for (let i = 0; i < pageCount; i++) checksums[i] = r.u32();
      return { type, offset, checksums, data: r.rest() };
    }
    case 'cancel': {
      r.lengthExactly(CANCEL_BYTES);
      const readRequestId = r.u32();
      r.reserved(4, 'reserved');
      return { type, readRequestId };
    }
    default:
      return unreachable(type);
  }
}

/** Every field's range, checked on encode and on decode alike. */
function checkFields(message: Message, context: Context): void {
  const fail = (field: string, text: string, code: ProtocolErrorCode = 'EPROTO_FIELD'): never => {
    throw new ProtocolError(code, `${describeType(context.frameType)}: ${text}`, { ...context, field });
  };
  switch (message.type) {
    case 'hello':
      if (!isU16(message.version) || message.version < 1) fail('version', `version ${message.version}: versions start at 1`, 'EPROTO_VERSION');
      if (!isU16(message.minVersion) || message.minVersion < 1 || message.minVersion > message.version) {
        fail('minVersion', `minVersion ${message.minVersion} must be 1..version (${message.version})`, 'EPROTO_VERSION');
      }
      if (!(message.role in Role)) fail('role', `role ${String(message.role)} is not a role of this protocol`);
      if (message.sessionId.length !== SESSION_ID_BYTES) fail('sessionId', `a session id is ${SESSION_ID_BYTES} bytes, not ${message.sessionId.length}`);
      if (!isU32(message.maxPayloadBytes) || message.maxPayloadBytes < MIN_MAX_PAYLOAD_BYTES || message.maxPayloadBytes > MAX_MAX_PAYLOAD_BYTES) {
        fail('maxPayloadBytes', `maxPayloadBytes ${message.maxPayloadBytes} is outside ${MIN_MAX_PAYLOAD_BYTES}..${MAX_MAX_PAYLOAD_BYTES}`);
      }
      if (!isU32(message.features)) fail('features', `features ${message.features} is not a u32`);
      return;
    case 'error': {
      if (!(message.code in WireErrorCode)) fail('code', `${String(message.code)} is not an ERROR code`);
      const textBytes = Buffer.byteLength(message.text, 'utf8');
      if (textBytes > MAX_ERROR_TEXT_BYTES) fail('text', `the text is ${textBytes} bytes; at most ${MAX_ERROR_TEXT_BYTES}`);
      return;
    }
    case 'ping':
    case 'pong':
      if (message.data.length > MAX_PING_BYTES) fail('data', `${message.data.length} bytes; at most ${MAX_PING_BYTES}`);
      return;
    case 'get-info':
      return;
    case 'info':
      if (!isPowerOfTwo(message.pageSizeBytes) || message.pageSizeBytes < MIN_PAGE_BYTES || message.pageSizeBytes > MAX_PAGE_BYTES) {
        fail('pageSizeBytes', `page size ${message.pageSizeBytes}: a power of two, ${MIN_PAGE_BYTES}..${MAX_PAGE_BYTES}`);
      }
      if (!isSafeCount(message.imageSizeBytes) || message.imageSizeBytes % message.pageSizeBytes !== 0) {
        fail('imageSizeBytes', `image size ${message.imageSizeBytes} is not a multiple of the ${message.pageSizeBytes}-byte page below 2^53`);
      }
      if (!isSafeCount(message.metadataLengthBytes)) fail('metadataLengthBytes', `metadata length ${message.metadataLengthBytes} is not a count below 2^53`);
      if (!message.hasMetadata && message.metadataLengthBytes !== 0) fail('metadataLengthBytes', `${message.metadataLengthBytes} bytes of metadata, but the has-metadata flag is clear`);
      if (!isU32(message.maxReadBytes) || message.maxReadBytes < message.pageSizeBytes || message.maxReadBytes > MAX_READ_BYTES || message.maxReadBytes % message.pageSizeBytes !== 0) {
        fail('maxReadBytes', `maxReadBytes ${message.maxReadBytes}: whole pages, ${message.pageSizeBytes}..${MAX_READ_BYTES}`);
      }
      if (message.imageId.length !== IMAGE_ID_BYTES) fail('imageId', `an image id is ${IMAGE_ID_BYTES} bytes, not ${message.imageId.length}`);
      if (!(message.pageChecksum in PageChecksumCode)) fail('pageChecksum', `page checksum ${String(message.pageChecksum)}: crc32 or crc32c`);
      return;
    case 'get-metadata':
      if (!isSafeCount(message.offset)) fail('offset', `offset ${message.offset} is not a count below 2^53`);
      if (!isU32(message.maxLengthBytes) || message.maxLengthBytes === 0) fail('maxLengthBytes', `maxLengthBytes ${message.maxLengthBytes}: 1..2^32-1`);
      return;
    case 'metadata':
      if (!isSafeCount(message.offset) || !isSafeCount(message.totalLengthBytes)) fail('offset', 'offset and totalLengthBytes are counts below 2^53');
      if (message.offset + message.bytes.length > message.totalLengthBytes) {
        fail('offset', `${message.bytes.length} bytes at offset ${message.offset} run past the ${message.totalLengthBytes}-byte metadata`);
      }
      return;
    case 'get-zero-map':
    case 'zero-map':
      if (!isSafeCount(message.firstPage)) fail('firstPage', `page ${message.firstPage} is not a count below 2^53`);
      if (!isU32(message.pageCount) || message.pageCount === 0 || message.pageCount > MAX_ZERO_MAP_PAGES) {
        fail('pageCount', `${message.pageCount} pages; 1..${MAX_ZERO_MAP_PAGES} allowed`);
      }
      if (!isSafeCount(message.firstPage + message.pageCount)) fail('pageCount', 'firstPage + pageCount overflows');
      if (message.type === 'zero-map') {
        const bitmapBytes = Math.ceil(message.pageCount / 8);
        if (message.bitmap.length !== bitmapBytes) fail('bitmap', `${message.pageCount} pages need a ${bitmapBytes}-byte bitmap, not ${message.bitmap.length}`);
        const padBits = bitmapBytes * 8 - message.pageCount;
        if (padBits > 0 && (message.bitmap[bitmapBytes - 1]! >> (8 - padBits)) !== 0) fail('bitmap', `the bitmap's ${padBits} pad bits past page ${message.pageCount} must be 0`);
      }
      return;
    case 'read':
      checkPageRange(message.offset, message.lengthBytes, fail);
      if (message.priority !== 'demand' && message.priority !== 'background') fail('priority', `priority ${String(message.priority)}`);
      return;
    case 'pages':
    case 'push':
      checkPageRange(message.offset, message.data.length, fail);
      return;
    case 'checked-pages': {
      checkPageRange(message.offset, message.data.length, fail);
      const pageCount = message.checksums.length;
      const pageBytes = pageCount === 0 ? 0 : message.data.length / pageCount;
      if (!Number.isInteger(pageBytes) || !isPowerOfTwo(pageBytes) || pageBytes < MIN_PAGE_BYTES || pageBytes > MAX_PAGE_BYTES) {
        fail('pageCount', `${pageCount} checksums for ${message.data.length} bytes: one per page of ${MIN_PAGE_BYTES}..${MAX_PAGE_BYTES} bytes (a power of two)`);
      }
      return;
    }
    case 'cancel':
      if (!isU32(message.readRequestId) || message.readRequestId === 0) fail('readRequestId', `CANCEL of request ${message.readRequestId}: a READ's id is 1..2^32-1`);
      return;
    default:
      unreachable(message);
  }
}

function checkPageRange(offset: number, lengthBytes: number, fail: (field: string, text: string) => never): void {
  if (!isSafeCount(offset) || offset % MIN_PAGE_BYTES !== 0) fail('offset', `offset ${offset} is not a multiple of ${MIN_PAGE_BYTES} below 2^53`);
  if (!isU32(lengthBytes) || lengthBytes === 0 || lengthBytes > MAX_READ_BYTES || lengthBytes % MIN_PAGE_BYTES !== 0) {
    fail('lengthBytes', `length ${lengthBytes}: whole ${MIN_PAGE_BYTES}-byte pages, at most ${MAX_READ_BYTES}`);
  }
  if (!isSafeCount(offset + lengthBytes)) fail('lengthBytes', 'offset + lengthBytes overflows');
}

/** Reads a payload front to back; every read is bounds-checked against the payload. */
function isU16(value: number): boolean {
  return Number.isInteger(value) && value >= 0 && value <= 0xffff;
}

function isU32(value: number): boolean {
  return Number.isInteger(value) && value >= 0 && value <= 0xffff_ffff;
}

function isSafeCount(value: number): boolean {
  return Number.isSafeInteger(value) && value >= 0;
}

function isPowerOfTwo(value: number): boolean {
  return Number.isInteger(value) && value > 0 && (value & (value - 1)) === 0;
}

function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((byte, i) => byte === b[i]);
}

function describeBytes(bytes: Uint8Array): string {
  const printable = [...bytes].every((b) => b >= 0x20 && b < 0x7f);
  return printable ? JSON.stringify(String.fromCharCode(...bytes)) : `bytes ${[...bytes].map((b) => b.toString(16).padStart(2, '0')).join(' ')}`;
}

function unreachable(value: never): never {
  throw new TypeError(`unhandled message ${JSON.stringify(value)}`);
}
