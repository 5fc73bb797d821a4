// Live migration's messages: the page protocol's frames (src/protocol/wire.ts)
// with types in the range it keeps for migration, 0x0200..0x02ff. Pure: bytes
// in, typed messages out, every field range-checked the same way on encode and
// decode. Post-copy's page requests are the page protocol's own READ, PAGES
// and PUSH, on the same connections (decodeMigrationFrame takes both kinds).
//
//   BEGIN 0x0200 (source → destination, a request)      the machine to build
//     0  u8    mode  0 precopy 1 postcopy 2 hybrid
//     1  u8[3] r
//     4  u32   pageSizeBytes
//     8  u64   memoryBytes
//    16  u8[]  machine config, JSON (<= 64 KiB): what MachineConfig holds
//   ACCEPT 0x0201 (reply)                                 empty: the destination built the machine
//
//   PAGES 0x0202 (source → destination)                   pre-copy: guest pages as they are now
//     0  u64   firstPage   8 u32 pageCount   12 u32 round
//    16  u32[pageCount] checksums   the CRC32C of each page, computed by the source from the bytes it
//                                   read; the destination checks each before the page lands
//    16 + 4 × pageCount  u8[pageCount × pageSize] data
//   ZERO 0x0203                                           pre-copy: pages that are all zero now (a marker, no data)
//     0  u64   firstPage   8 u32 pageCount   12 u32 round
//   ROUND 0x0204                                          a pre-copy round ended
//     0  u32   round   4 u32 r   8 u64 pagesSent   16 u64 dirtyPages (left for the next round or switchover)
//   DIRTY 0x0205                                          at switchover: pages written since they were last
//     0  u64   firstPage   8 u32 pageCount   12 u32 r       sent; the destination must not keep its copy
//    16  u8[ceil(pageCount/8)] bitmap (bit i, LSB first: page firstPage+i)
//   SWITCHOVER 0x0206 (a request)                         the guest is paused here: its state
//     0  u8    postcopy  1: pages are still missing, fetch them; 0: every page has been sent
//     1  u8[3] r
//     4  u32   r
//     8  u8[]  VM state JSON (vm-state.ts; <= the receiver's max payload)
//   READY 0x020c (reply)                                  the destination loaded the state; its vCPUs do not run yet
//     0  u32   loadMicros
//   GO 0x020d (a request)                                 the source commits: it will never resume the guest itself
//   RUNNING 0x0207 (reply)                                the guest runs on the destination
//     0  u32   resumeMicros (GO received → vCPUs running)
//
// READY and GO make the commit explicit: the source owns the guest until it
// sends GO, the destination from the moment it reads GO. A connection lost
// before GO was sent leaves the guest to resume on the source (the
// destination never runs it without GO); lost with GO in flight, the source
// does not know and asks on reconnecting (RESUME → RESUMED says `running`).
//   ALL_SENT 0x0208                                       post-copy: every page has been sent (pushed or answered)
//   COMPLETE 0x0209 (destination → source, a request)      every page is in; the digests of what it installed
//     0  u32   batchCount   4 u32 batchPages   8 u8[batchCount × 32] SHA-256 per batch (page-digests.ts)
//   VERIFIED 0x020a (reply)
//     0  u8    ok   1 u8[3] r   4 u32 differingCount   8 u32[min(differingCount, 64)] the first differing batches
//   CANCEL 0x020b (either side)                           the migration is off (before switchover only)
//     0  u16   textLengthBytes (<= 1024)   2 u8[] text, UTF-8
//   PUSH 0x0210 (source → destination)                    post-copy: pages sent unasked, checked like PAGES
//     0  u64   firstPage   8 u32 pageCount   12 u32 r   16 u32[pageCount] checksums   then the data
//   (a post-copy READ is answered with the page protocol's CHECKED_PAGES: a checksum per page too)
//   RESUME 0x020e (a request, on a new main connection)    the migration goes on after a cut past READY
//   RESUMED 0x020f (reply)                                 what the destination has (QEMU's RECV_BITMAP): the source
//     0  u32   pageCount                                    sends every page whose bit is clear
//     4  u8    running  1: it read GO and runs the guest; 0: it did not (READY sent, GO never read:
//                       the source sends GO again, or takes the guest back and sends CANCEL)
//     5  u8[3] r
//     8  u8[ceil(pageCount/8)] bitmap
import { ProtocolError, Reader, Writer, concatParts, decodeMessage, encodeFrameParts, type Context, type Frame, type FrameEncoding, type Message } from '../../protocol/index.js';
import { describeType } from '../../protocol/wire.js';
import type { MigrationMode } from '../convergence.js';

export const MigrationMessageType = {
  BEGIN: 0x0200,
  ACCEPT: 0x0201,
  PAGES: 0x0202,
  ZERO: 0x0203,
  ROUND: 0x0204,
  DIRTY: 0x0205,
  SWITCHOVER: 0x0206,
  RUNNING: 0x0207,
  ALL_SENT: 0x0208,
  COMPLETE: 0x0209,
  VERIFIED: 0x020a,
  CANCEL: 0x020b,
  READY: 0x020c,
  GO: 0x020d,
  RESUME: 0x020e,
  RESUMED: 0x020f,
  PUSH: 0x0210,
} as const;

export const MAX_MACHINE_JSON_BYTES = 64 * 1024;
export const MAX_CANCEL_TEXT_BYTES = 1024;
export const MAX_LISTED_BATCHES = 64;
/** The most pages one PAGES or PUSH carries. */
export const MAX_RUN_PAGES = 4096;
const DIGEST_BYTES = 32;
const MODES: readonly MigrationMode[] = ['precopy', 'postcopy', 'hybrid'];

export type MigrationMessage =
  | { type: 'mig-begin'; mode: MigrationMode; pageSizeBytes: number; memoryBytes: number; machineJson: string }
  | { type: 'mig-accept' }
  | { type: 'mig-pages'; firstPage: number; pageCount: number; round: number; checksums: Uint32Array; data: Uint8Array }
  | { type: 'mig-push'; firstPage: number; checksums: Uint32Array; data: Uint8Array }
  | { type: 'mig-zero'; firstPage: number; pageCount: number; round: number }
  | { type: 'mig-round'; round: number; pagesSent: number; dirtyPages: number }
  /** `list`: each dirty list a number past the one before (the early one while the guest still runs, then the final one), its chunks ascending. */
  | { type: 'mig-dirty'; list: number; firstPage: number; pageCount: number; bitmap: Uint8Array }
  | { type: 'mig-switchover'; postcopy: boolean; stateJson: string }
  | { type: 'mig-ready'; loadMicros: number }
  | { type: 'mig-go' }
  | { type: 'mig-running'; resumeMicros: number }
  | { type: 'mig-all-sent' }
  | { type: 'mig-complete'; batchPages: number; digests: Uint8Array[] }
  | { type: 'mig-verified'; ok: boolean; differingCount: number; differing: number[] }
  | { type: 'mig-cancel'; text: string }
  | { type: 'mig-resume' }
  | { type: 'mig-resumed'; pageCount: number; running: boolean; bitmap: Uint8Array };

export type MigrationMessageName = MigrationMessage['type'];

const TYPE_CODES: Readonly<Record<MigrationMessageName, number>> = {
  'mig-begin': MigrationMessageType.BEGIN,
  'mig-accept': MigrationMessageType.ACCEPT,
  'mig-pages': MigrationMessageType.PAGES,
  'mig-push': MigrationMessageType.PUSH,
  'mig-zero': MigrationMessageType.ZERO,
  'mig-round': MigrationMessageType.ROUND,
  'mig-dirty': MigrationMessageType.DIRTY,
  'mig-switchover': MigrationMessageType.SWITCHOVER,
  'mig-running': MigrationMessageType.RUNNING,
  'mig-ready': MigrationMessageType.READY,
  'mig-go': MigrationMessageType.GO,
  'mig-resume': MigrationMessageType.RESUME,
  'mig-resumed': MigrationMessageType.RESUMED,
  'mig-all-sent': MigrationMessageType.ALL_SENT,
  'mig-complete': MigrationMessageType.COMPLETE,
  'mig-verified': MigrationMessageType.VERIFIED,
  'mig-cancel': MigrationMessageType.CANCEL,
};
const NAMES = new Map<number, MigrationMessageName>(Object.entries(TYPE_CODES).map(([name, code]) => [code, name as MigrationMessageName]));
const TYPE_LABELS = new Map<number, string>(Object.entries(MigrationMessageType).map(([name, code]) => [code, `MIG_${name}`]));

/** Requests carry an id their reply echoes; the rest are unsolicited (0). */
const REQUESTS = new Set<MigrationMessageName>(['mig-begin', 'mig-switchover', 'mig-go', 'mig-complete', 'mig-resume']);
const REPLIES = new Set<MigrationMessageName>(['mig-accept', 'mig-ready', 'mig-running', 'mig-verified', 'mig-resumed']);

function label(type: number): string {
  return TYPE_LABELS.get(type) ?? describeType(type);
}

export function isMigrationType(typeCode: number): boolean {
  return typeCode >= 0x0200 && typeCode <= 0x02ff;
}

/** A frame of either protocol on a migration connection: migration's own types, or the page protocol's (HELLO, ERROR, READ, PAGES, PUSH, ...). */
export function decodeMigrationFrame(frame: Frame): MigrationMessage | Message {
  return isMigrationType(frame.type) ? decodeMigrationMessage(frame) : decodeMessage(frame);
}

export function encodeMigrationMessageParts(message: MigrationMessage, requestId: number, pageSizeBytes?: number, encoding?: FrameEncoding): Uint8Array[] {
  const typeCode = TYPE_CODES[message.type];
  const context = { frameType: typeCode, requestId };
  checkRequestId(message.type, requestId, context);
  checkFields(message, context, pageSizeBytes);
  return encodeFrameParts(typeCode, requestId, encodePayload(message), 0, encoding);
}

export function encodeMigrationMessage(message: MigrationMessage, requestId: number, pageSizeBytes?: number): Uint8Array {
  return concatParts(encodeMigrationMessageParts(message, requestId, pageSizeBytes));
}

/**
 * Decode a migration frame. `pageSizeBytes` (known once BEGIN was read)
 * makes PAGES' data length checked against its page count.
 */
export function decodeMigrationMessage(frame: Frame, pageSizeBytes?: number): MigrationMessage {
  const type = NAMES.get(frame.type);
  const context = { frameType: frame.type, requestId: frame.requestId };
  if (type === undefined) throw new ProtocolError('EPROTO_UNKNOWN_TYPE', `${label(frame.type)} is not a migration message of protocol version 1`, context);
  checkRequestId(type, frame.requestId, context);
  const message = decodePayload(type, new Reader(frame.payload, context), context);
  checkFields(message, context, pageSizeBytes);
  return message;
}

function checkRequestId(type: MigrationMessageName, requestId: number, context: Context): void {
  if (!Number.isInteger(requestId) || requestId < 0 || requestId > 0xffff_ffff) throw new ProtocolError('EPROTO_REQUEST_ID', `requestId ${requestId} is not a u32`, context);
  const needsId = REQUESTS.has(type) || REPLIES.has(type);
  if (needsId && requestId === 0) throw new ProtocolError('EPROTO_REQUEST_ID', `${label(context.frameType)} with requestId 0: it is a request or the reply to one`, context);
  if (!needsId && requestId !== 0) throw new ProtocolError('EPROTO_REQUEST_ID', `a ${label(context.frameType)} is unsolicited: its requestId must be 0, not ${requestId}`, context);
}

function encodePayload(message: MigrationMessage): Uint8Array[] {
  switch (message.type) {
    case 'mig-begin': {
      const json = new TextEncoder().encode(message.machineJson);
      const w = new Writer(16);
      w.u8(MODES.indexOf(message.mode));
      w.zeros(3);
      w.u32(message.pageSizeBytes);
      w.u64(message.memoryBytes);
      return [w.done(), json];
    }
    case 'mig-accept':
    case 'mig-all-sent':
    case 'mig-go':
    case 'mig-resume':
      return [];
    case 'mig-resumed': {
      const w = new Writer(8);
      w.u32(message.pageCount);
      w.u8(message.running ? 1 : 0);
      w.zeros(3);
      return [w.done(), message.bitmap];
    }
    case 'mig-pages': {
      const w = new Writer(16 + message.checksums.length * 4);
      w.u64(message.firstPage);
      w.u32(message.pageCount);
      w.u32(message.round);
      for (const checksum of message.checksums) w.u32(checksum);
      return [w.done(), message.data];
    }
    case 'mig-push': {
      const w = new Writer(16 + message.checksums.length * 4);
      w.u64(message.firstPage);
      w.u32(message.checksums.length);
      w.zeros(4);
      for (const checksum of message.checksums) w.u32(checksum);
      return [w.done(), message.data];
    }
    case 'mig-zero': {
      const w = new Writer(16);
      w.u64(message.firstPage);
      w.u32(message.pageCount);
      w.u32(message.round);
      return [w.done()];
    }
    case 'mig-round': {
      const w = new Writer(24);
      w.u32(message.round);
      w.zeros(4);
      w.u64(message.pagesSent);
      w.u64(message.dirtyPages);
      return [w.done()];
    }
    case 'mig-dirty': {
      const w = new Writer(16);
      w.u64(message.firstPage);
      w.u32(message.pageCount);
      w.u8(message.list);
      w.zeros(3);
      return [w.done(), message.bitmap];
    }
    case 'mig-switchover': {
      const w = new Writer(8);
      w.u8(message.postcopy ? 1 : 0);
      w.zeros(7);
      return [w.done(), new TextEncoder().encode(message.stateJson)];
    }
    case 'mig-ready': {
      const w = new Writer(4);
      w.u32(message.loadMicros);
      return [w.done()];
    }
    case 'mig-running': {
      const w = new Writer(4);
      w.u32(message.resumeMicros);
      return [w.done()];
    }
    case 'mig-complete': {
      const w = new Writer(8);
      w.u32(message.digests.length);
      w.u32(message.batchPages);
      return [w.done(), ...message.digests];
    }
    case 'mig-verified': {
      const listed = message.differing.slice(0, MAX_LISTED_BATCHES);
      const w = new Writer(8 + listed.length * 4);
      w.u8(message.ok ? 1 : 0);
      w.zeros(3);
      w.u32(message.differingCount);
      for (const batch of listed) w.u32(batch);
      return [w.done()];
    }
    case 'mig-cancel': {
      const text = new TextEncoder().encode(message.text);
      const w = new Writer(2);
      w.u16(text.length);
      return [w.done(), text];
    }
    default:
      return unreachable(message);
  }
}

function decodePayload(type: MigrationMessageName, r: Reader, context: Context): MigrationMessage {
  switch (type) {
    case 'mig-begin': {
      r.lengthBetween(16, 16 + MAX_MACHINE_JSON_BYTES);
      const modeCode = r.u8();
      r.reserved(3, 'reserved');
      const pageSizeBytes = r.u32();
      const memoryBytes = r.u64('memoryBytes');
      const mode = MODES[modeCode];
      if (mode === undefined) throw r.fieldError('mode', `mode ${modeCode} is not one of ${MODES.join(', ')}`);
      return { type, mode, pageSizeBytes, memoryBytes, machineJson: utf8(r.rest(), context, 'machine') };
    }
    case 'mig-accept':
    case 'mig-all-sent':
    case 'mig-go':
    case 'mig-resume':
      r.lengthExactly(0);
      return { type };
    case 'mig-resumed': {
      r.lengthAtLeast(8);
      const pageCount = r.u32();
      const running = r.u8();
      r.reserved(3, 'reserved');
      if (running > 1) throw r.fieldError('running', `running is ${running}, not 0 or 1`);
      r.lengthExactly(8 + Math.ceil(pageCount / 8));
      return { type, pageCount, running: running === 1, bitmap: r.rest() };
    }
    case 'mig-pages': {
      r.lengthAtLeast(16);
      const firstPage = r.u64('firstPage');
      const pageCount = r.u32();
      const round = r.u32();
      if (pageCount < 1 || pageCount > MAX_RUN_PAGES) throw r.fieldError('pageCount', `pageCount ${pageCount} is not 1..${MAX_RUN_PAGES}`);
      r.lengthAtLeast(16 + pageCount * 4);
      const checksums = new Uint32Array(pageCount);
      for (let i = 0; i < pageCount; i++) checksums[i] = r.u32();
      return { type, firstPage, pageCount, round, checksums, data: r.rest() };
    }
    case 'mig-push': {
      r.lengthAtLeast(16);
      const firstPage = r.u64('firstPage');
      const pageCount = r.u32();
      r.reserved(4, 'reserved');
      if (pageCount < 1 || pageCount > MAX_RUN_PAGES) throw r.fieldError('pageCount', `pageCount ${pageCount} is not 1..${MAX_RUN_PAGES}`);
      r.lengthAtLeast(16 + pageCount * 4);
      const checksums = new Uint32Array(pageCount);
      for (let i = 0; i < pageCount; i++) checksums[i] = r.u32();
      return { type, firstPage, checksums, data: r.rest() };
    }
    case 'mig-zero': {
      r.lengthExactly(16);
      const firstPage = r.u64('firstPage');
      const pageCount = r.u32();
      return { type, firstPage, pageCount, round: r.u32() };
    }
    case 'mig-round': {
      r.lengthExactly(24);
      const round = r.u32();
      r.reserved(4, 'reserved');
      return { type, round, pagesSent: r.u64('pagesSent'), dirtyPages: r.u64('dirtyPages') };
    }
    case 'mig-dirty': {
      r.lengthAtLeast(16);
      const firstPage = r.u64('firstPage');
      const pageCount = r.u32();
      const list = r.u8();
      r.reserved(3, 'reserved');
      r.lengthExactly(16 + Math.ceil(pageCount / 8));
      return { type, list, firstPage, pageCount, bitmap: r.rest() };
    }
    case 'mig-switchover': {
      r.lengthAtLeast(8);
      const flag = r.u8();
      r.reserved(7, 'reserved');
      if (flag > 1) throw r.fieldError('postcopy', `postcopy is ${flag}, not 0 or 1`);
      return { type, postcopy: flag === 1, stateJson: utf8(r.rest(), context, 'state') };
    }
    case 'mig-ready': {
      r.lengthExactly(4);
      return { type, loadMicros: r.u32() };
    }
    case 'mig-running': {
      r.lengthExactly(4);
      return { type, resumeMicros: r.u32() };
    }
    case 'mig-complete': {
      r.lengthAtLeast(8);
      const batchCount = r.u32();
      const batchPages = r.u32();
      r.lengthExactly(8 + batchCount * DIGEST_BYTES);
      const digests: Uint8Array[] = [];
      for (let i = 0; i < batchCount; i++) digests.push(r.bytes(DIGEST_BYTES));
      return { type, batchPages, digests };
    }
    case 'mig-verified': {
      r.lengthAtLeast(8);
      const flag = r.u8();
      r.reserved(3, 'reserved');
      const differingCount = r.u32();
      const listed = Math.min(differingCount, MAX_LISTED_BATCHES);
      r.lengthExactly(8 + listed * 4);
      if (flag > 1) throw r.fieldError('ok', `ok is ${flag}, not 0 or 1`);
      const differing: number[] = [];
      for (let i = 0; i < listed; i++) differing.push(r.u32());
      return { type, ok: flag === 1, differingCount, differing };
    }
    case 'mig-cancel': {
      r.lengthAtLeast(2);
      const length = r.u16();
      if (length > MAX_CANCEL_TEXT_BYTES) throw r.fieldError('textLengthBytes', `the CANCEL text is ${length} bytes; at most ${MAX_CANCEL_TEXT_BYTES}`);
      r.lengthExactly(2 + length);
      return { type, text: utf8(r.bytes(length), context, 'text') };
    }
    default:
      return unreachable(type);
  }
}

/** The checks both sides make: a message this code would refuse is never sent. */
function checkFields(message: MigrationMessage, context: Context, pageSizeBytes?: number): void {
  const fail = (field: string, text: string): never => {
    throw new ProtocolError('EPROTO_FIELD', `${label(context.frameType)}: ${text}`, { ...context, field });
  };
  const pageCountOk = (field: string, count: number, max = 1 << 20): void => {
    if (!Number.isInteger(count) || count < 1 || count > max) fail(field, `${field} ${count} is not 1..${max}`);
  };
  switch (message.type) {
    case 'mig-begin':
      if (!Number.isInteger(message.pageSizeBytes) || message.pageSizeBytes < 4096 || message.pageSizeBytes > 2 << 20 || (message.pageSizeBytes & (message.pageSizeBytes - 1)) !== 0) {
        fail('pageSizeBytes', `page size ${message.pageSizeBytes} is not a power of two from 4 KiB to 2 MiB`);
      }
      if (!Number.isSafeInteger(message.memoryBytes) || message.memoryBytes <= 0 || message.memoryBytes % message.pageSizeBytes !== 0) fail('memoryBytes', `memory ${message.memoryBytes} is not a positive multiple of the page`);
      if (new TextEncoder().encode(message.machineJson).length > MAX_MACHINE_JSON_BYTES) fail('machine', `the machine JSON is longer than ${MAX_MACHINE_JSON_BYTES} bytes`);
      return;
    case 'mig-pages':
      pageCountOk('pageCount', message.pageCount, MAX_RUN_PAGES);
      if (message.checksums.length !== message.pageCount) fail('checksums', `${message.pageCount} pages need ${message.pageCount} checksums, not ${message.checksums.length}`);
      if (pageSizeBytes !== undefined && message.data.length !== message.pageCount * pageSizeBytes) {
        fail('data', `${message.pageCount} pages need ${message.pageCount * pageSizeBytes} bytes of data, not ${message.data.length}`);
      }
      return;
    case 'mig-push':
      pageCountOk('pageCount', message.checksums.length, MAX_RUN_PAGES);
      if (pageSizeBytes !== undefined && message.data.length !== message.checksums.length * pageSizeBytes) {
        fail('data', `${message.checksums.length} pages need ${message.checksums.length * pageSizeBytes} bytes of data, not ${message.data.length}`);
      }
      return;
    case 'mig-zero':
      pageCountOk('pageCount', message.pageCount);
      return;
    case 'mig-dirty':
      if (!Number.isInteger(message.list) || message.list < 0 || message.list > 0xff) fail('list', `list ${message.list} is not a u8`);
      pageCountOk('pageCount', message.pageCount, 1 << 25);
      if (message.bitmap.length !== Math.ceil(message.pageCount / 8)) fail('bitmap', `${message.pageCount} pages need a ${Math.ceil(message.pageCount / 8)}-byte bitmap, not ${message.bitmap.length}`);
      return;
    case 'mig-complete':
      if (!Number.isInteger(message.batchPages) || message.batchPages < 1) fail('batchPages', `batchPages ${message.batchPages} is not positive`);
      if (message.digests.length > 1 << 16) fail('batchCount', `${message.digests.length} batches; at most ${1 << 16}`);
      if (message.digests.some((d) => d.length !== DIGEST_BYTES)) fail('digests', `a digest is not ${DIGEST_BYTES} bytes`);
      return;
    case 'mig-verified':
      if (!Number.isInteger(message.differingCount) || message.differingCount < 0 || message.differingCount > 0xffff_ffff) fail('differingCount', `differingCount ${message.differingCount} is not a u32`);
      if (message.ok && message.differingCount !== 0) fail('ok', 'a verified migration has no differing batch');
      return;
    case 'mig-cancel':
      if (new TextEncoder().encode(message.text).length > MAX_CANCEL_TEXT_BYTES) fail('text', `the CANCEL text is longer than ${MAX_CANCEL_TEXT_BYTES} bytes`);
      return;
    case 'mig-resumed':
      if (message.bitmap.length !== Math.ceil(message.pageCount / 8)) fail('bitmap', `${message.pageCount} pages need a ${Math.ceil(message.pageCount / 8)}-byte bitmap, not ${message.bitmap.length}`);
      return;
    case 'mig-accept':
    case 'mig-round':
    case 'mig-switchover':
    case 'mig-ready':
    case 'mig-go':
    case 'mig-running':
    case 'mig-all-sent':
    case 'mig-resume':
      return;
    default:
      unreachable(message);
  }
}

function utf8(bytes: Uint8Array, context: Context, field: string): string {
  try {
    return new TextDecoder('utf-8', { fatal: true }).decode(bytes);
  } catch {
    throw new ProtocolError('EPROTO_UTF8', `${label(context.frameType)}: the ${field} text is not UTF-8`, { ...context, field });
  }
}

function unreachable(value: never): never {
  throw new TypeError(`unhandled migration message ${JSON.stringify(value)}`);
}
