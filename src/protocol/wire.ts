// The page protocol on the wire: constants and layouts, drawn once here and in
// docs/protocol.md. Pure: nothing in src/protocol/ touches a socket.
//
// A connection carries frames, in both directions. Little-endian throughout.
//
//   frame                                  (16-byte header, then the payload)
//     0  u16  type                          MessageType below; ranges leave room for migration
//     2  u16  flags                         bits 0..7: must-understand (a receiver refuses a frame
//                                           with one it does not know); bits 8..15: may be ignored.
//                                           bit 1 CRC32C: payloadCrc32 holds the payload's CRC32C
//                                           (Castagnoli), not zlib's CRC32; sent from page service
//                                           version 3 on, after the HELLOs (a HELLO never has it).
//                                           (Bit 0 stays unassigned: a TLS record's version byte puts
//                                           it there, so a TLS peer on a plain port is refused at once.)
//     4  u32  requestId                     a request's id, echoed by its reply; 0 = unsolicited
//     8  u32  payloadLengthBytes            at most the receiver's maxPayloadBytes (from its HELLO);
//                                           a frame announcing more is refused before any allocation
//    12  u32  payloadCrc32                  zlib CRC32 (IEEE 802.3) of the payload bytes, or their
//                                           CRC32C with flag bit 1. CRC32C is the pages' own checksum
//                                           (snapshot format 2): a sender derives a frame's from its
//                                           pages' and a receiver gets the pages' on the way (below).
//    16  ...  payload
//
//   type ranges                             0x0000          never valid
//                                           0x0001..0x00ff  connection: HELLO, ERROR, PING, PONG
//                                           0x0100..0x01ff  page service (this file)
//                                           0x0200..0x02ff  reserved: live migration (pre-copy page
//                                                           streams, dirty lists, received bitmaps,
//                                                           switchover, device state)
//                                           0x8000..0xffff  reserved: experiments, never standardised
//
//   payloads (offsets within the payload; "r" = reserved, sent as 0 and refused otherwise)
//
//   HELLO 0x0001 (requestId 0)              the first frame on every connection, both ways
//     0  u8[8] magic "USERFLT\0"
//     8  u16   version        the highest version the sender speaks; in the server's answer, the one chosen
//    10  u16   minVersion     the lowest it speaks; in the answer, equal to version
//    12  u8    role           Role below
//    13  u8[3] r
//    16  u8[16] sessionId     chosen by the client, the same on all its connections; echoed by the server
//    32  u32   maxPayloadBytes the largest payload the SENDER will receive (4 KiB..64 MiB)
//    36  u32   features       bits; none defined in version 1 (ignored when unknown; the answer holds
//                             the ones both sides take)
//    40  ...   later versions append fields here; a version-1 receiver ignores them (at most 1 KiB)
//
//   ERROR 0x0002                            the reply to a request (its requestId), or about the
//     0  u16   code  WireErrorCode          connection (requestId 0; the sender closes after it)
//     2  u16   textLengthBytes (<= 1024)
//     4  u8[]  text, UTF-8
//
//   PING 0x0003 / PONG 0x0004               keepalive; PONG echoes the PING's requestId and bytes
//     0  u8[]  opaque (<= 64 bytes)
//
//   GET_INFO 0x0100 -> INFO 0x0101          empty request
//     0  u64   imageSizeBytes      a multiple of pageSizeBytes
//     8  u64   metadataLengthBytes 0 when there is none
//    16  u32   pageSizeBytes       a power of two, 4 KiB..2 MiB
//    20  u32   flags               bit 0: has metadata; bit 1: has a zero map
//    24  u32   maxReadBytes        the longest READ the server takes (a multiple of the page, <= 2 MiB)
//    28  u8    pageChecksum        the image's own page checksum: 1 CRC32 (snapshot format 1),
//                                  2 CRC32C (format 2); 0 is refused (a version-1 INFO)
//    29  u8[3] r
//    32  u8[16] imageId            identifies the image's content (all zero: unknown), so a client that
//                                  reconnects can tell a restarted server serving another image
//
//   GET_METADATA 0x0102 -> METADATA 0x0103  the image's metadata (a VM snapshot's VM state), by chunks
//     0  u64   offset                        0  u64  offset (as asked)
//     8  u32   maxLengthBytes (> 0)          8  u64  totalLengthBytes
//    12  u32   r                            16  u8[] bytes: min(maxLengthBytes, total - offset) of them
//
//   GET_ZERO_MAP 0x0104 -> ZERO_MAP 0x0105  which pages are known to be all zero
//     0  u64   firstPage                     0  u64  firstPage (as asked)
//     8  u32   pageCount (1..MAX_ZERO_MAP_PAGES) 8  u32  pageCount (as asked)
//    12  u32   r                            12  u32  r
//                                           16  u8[ceil(pageCount/8)] bitmap: bit i (LSB first in
//                                               byte i>>3) set = page firstPage+i is zero; pad bits 0
//
//   READ 0x0106 -> CHECKED_PAGES 0x010a     exactly one reply per READ, in any order. A page server
//                  or ERROR                 answers CHECKED_PAGES (page service version 2); live
//                                           migration's source answers PAGES (below).
//     0  u64   offset (page-aligned)         0  u64  offset (as asked)
//     8  u32   lengthBytes (page-aligned,    8  u32  lengthBytes (as asked)
//              1 page..MAX_READ_BYTES)      12  u32  r
//    12  u8    priority 0 demand 1 background 16 u8[lengthBytes] data
//    13  u8[3] r
//
//   CANCEL 0x0108 (requestId 0, no reply of its own)
//     0  u32   requestId of a READ: answered ERROR CANCELLED if its PAGES were not sent yet
//     4  u32   r
//
//   PUSH 0x0109 (requestId 0)               pages sent unasked (post-copy); the PAGES layout
//     0  u64 offset   8 u32 lengthBytes   12 u32 r   16 u8[lengthBytes] data
//
//   CHECKED_PAGES 0x010a (a READ's reply)   the pages with the checksums the image stores for them,
//     0  u64   offset (as asked)            read by the server from its table (a snapshot's page
//     8  u32   lengthBytes (as asked)       table), never computed from the bytes it sends: the
//    12  u32   pageCount                    client checks each page against its own before using it,
//    16  u32[pageCount] checksums           so a page altered anywhere between the disk and the
//    16+4*pageCount u8[lengthBytes] data    client (the server's memory, a proxy) is refused.
//                                           A page the image stores as zero has the checksum of a
//                                           zero page. pageCount = lengthBytes / INFO pageSizeBytes.

export const FRAME_HEADER_BYTES = 16;

/** Frame header field offsets. */
export const FrameField = { type: 0, flags: 2, requestId: 4, payloadLength: 8, payloadCrc32: 12 } as const;

/** Flags bits a receiver must understand to read the frame. */
export const MUST_UNDERSTAND_FLAGS_MASK = 0x00ff;
export const FrameFlag = {
  /** payloadCrc32 is the payload's CRC32C (page service version 3 on). Not bit 0: see the layout above. */
  crc32c: 0x0002,
} as const;
/** Flags bits this code knows. */
export const KNOWN_FLAGS = FrameFlag.crc32c;
/**
 * The block whose CRC32C a receiver computes on the way while checking a
 * CRC32C frame, over the payload's last whole blocks (Frame.blockCrcs): the
 * pages a frame carries sit at its end, so a 4 KiB page's check is then a
 * comparison, not a second pass over its bytes.
 */
export const CRC_BLOCK_BYTES = 4096;
/** A frame's checksum: zlib's CRC32 (versions 1 and 2, and every HELLO) or CRC32C (page service version 3 on). */
export type FrameChecksum = 'crc32' | 'crc32c';

/** "USERFLT\0": the first 8 bytes of every HELLO payload. */
export const HELLO_MAGIC: Uint8Array = Uint8Array.of(0x55, 0x53, 0x45, 0x52, 0x46, 0x4c, 0x54, 0x00);
export const PROTOCOL_VERSION = 1;
/**
 * The versions of live migration's roles this code speaks: 2 is 1 with
 * CRC32C frames after the HELLOs (derived from the pages' own CRC32Cs, as
 * the page service's version 3 does).
 */
export const MIN_PROTOCOL_VERSION = 1;
export const MAX_PROTOCOL_VERSION = 2;
/** The frame checksum of a live migration version. */
export function migrationFrameChecksumOf(version: number): FrameChecksum {
  return version >= 2 ? 'crc32c' : 'crc32';
}
/**
 * The page service's version (roles page-client-*, page-server): 3, where
 * frames after the HELLOs carry CRC32C; from 2 on a READ is answered
 * CHECKED_PAGES, each page with the checksum its image stores. Version 1
 * carries no page checksums, and a client that accepted it would install
 * whatever bytes arrived, so there is no downgrade to it. (Live migration's
 * roles keep MIN/MAX_PROTOCOL_VERSION above.)
 */
export const PAGE_SERVICE_VERSION = 3;
/**
 * The oldest page service version spoken: 2 has every page checksummed as 3
 * does, only its frames carry zlib's CRC32, which costs a second pass over
 * every byte (3's CRC32C frames are derived from the pages' own checksums).
 */
export const MIN_PAGE_SERVICE_VERSION = 2;
/** The frame checksum of a page service version. */
export function frameChecksumOf(version: number): FrameChecksum {
  return version >= 3 ? 'crc32c' : 'crc32';
}

/** Message type codes; the ranges are drawn above. */
export const MessageType = {
  HELLO: 0x0001,
  ERROR: 0x0002,
  PING: 0x0003,
  PONG: 0x0004,
  GET_INFO: 0x0100,
  INFO: 0x0101,
  GET_METADATA: 0x0102,
  METADATA: 0x0103,
  GET_ZERO_MAP: 0x0104,
  ZERO_MAP: 0x0105,
  READ: 0x0106,
  PAGES: 0x0107,
  CANCEL: 0x0108,
  PUSH: 0x0109,
  CHECKED_PAGES: 0x010a,
} as const;
export type MessageTypeCode = (typeof MessageType)[keyof typeof MessageType];

/** First type code of the range kept for live migration. */
export const MIGRATION_TYPE_FIRST = 0x0200;
export const MIGRATION_TYPE_LAST = 0x02ff;

/** What a connection is for, as each side declares in its HELLO. */
export const Role = {
  /** A page client's demand reads: a thread is blocked on every one. */
  'page-client-urgent': 1,
  /** A page client's background reads (read-ahead, streaming). */
  'page-client-bulk': 2,
  /** The answer of a page server. */
  'page-server': 3,
  /** Live migration (src/migrate): the side sending the VM (its main connection), and the side receiving it. */
  'migration-source': 16,
  'migration-destination': 17,
  /** The source's second connection, for post-copy's demanded pages only (a vCPU waits on each). */
  'migration-source-urgent': 18,
} as const;
export type RoleName = keyof typeof Role;

/**
 * ERROR codes. Stable: new codes come with a new protocol version, so a
 * version-1 receiver refuses a code it does not know.
 */
export const WireErrorCode = {
  /** The byte stream cannot be read as frames (CRC mismatch, unknown must-understand flag, garbage); the connection closes. */
  BAD_FRAME: 1,
  /** No version both sides speak; the text names the ones the sender speaks. */
  UNSUPPORTED_VERSION: 2,
  /** The sender does not take connections of that role. */
  WRONG_ROLE: 3,
  /** A message not allowed now (anything before HELLO, a second HELLO, a reply sent to a server). */
  UNEXPECTED_MESSAGE: 4,
  /** A type code the receiver does not know. */
  UNKNOWN_TYPE: 5,
  /** A message whose payload is malformed: wrong length, a field out of its range, reserved bytes set. */
  BAD_REQUEST: 6,
  /** A well-formed request for bytes the image does not have (past its end, off its page grid). */
  OUT_OF_RANGE: 7,
  /** A frame larger than the receiver's maxPayloadBytes. */
  TOO_LARGE: 8,
  /** The server's source cannot deliver the range and will not (a corrupt page): do not retry. */
  SOURCE_FAILED: 9,
  /** The server's source failed in a way that may pass (an I/O error): a retry may succeed. */
  SOURCE_UNAVAILABLE: 10,
  /** Too many requests; retry later. */
  BUSY: 11,
  /** The READ was cancelled before its pages were sent. */
  CANCELLED: 12,
  /** The server is going away; reconnect. */
  SHUTTING_DOWN: 13,
  /** A bug in the sender. */
  INTERNAL: 14,
} as const;
export type WireErrorName = keyof typeof WireErrorCode;
export type WireErrorCodeValue = (typeof WireErrorCode)[WireErrorName];

const ERROR_NAMES = new Map<number, WireErrorName>(Object.entries(WireErrorCode).map(([name, code]) => [code, name as WireErrorName]));
const ROLE_NAMES = new Map<number, RoleName>(Object.entries(Role).map(([name, code]) => [code, name as RoleName]));
const TYPE_NAMES = new Map<number, string>(Object.entries(MessageType).map(([name, code]) => [code, name]));

export function wireErrorName(code: number): WireErrorName | undefined {
  return ERROR_NAMES.get(code);
}

export function roleName(code: number): RoleName | undefined {
  return ROLE_NAMES.get(code);
}

/** "READ", or "type 0x1234" for a code this version does not know. */
export function describeType(type: number): string {
  return TYPE_NAMES.get(type) ?? `type 0x${type.toString(16).padStart(4, '0')}`;
}

// Limits. Every length a peer sends is checked against one of these before it is used.

export const HELLO_BYTES = 40;
/** A HELLO from a later version may be longer; never more than this. */
export const MAX_HELLO_BYTES = 1024;
export const SESSION_ID_BYTES = 16;
export const IMAGE_ID_BYTES = 16;
export const ERROR_HEADER_BYTES = 4;
export const MAX_ERROR_TEXT_BYTES = 1024;
export const MAX_PING_BYTES = 64;
export const INFO_BYTES = 48;
export const GET_METADATA_BYTES = 16;
export const METADATA_HEADER_BYTES = 16;
export const GET_ZERO_MAP_BYTES = 16;
export const ZERO_MAP_HEADER_BYTES = 16;
export const READ_BYTES = 16;
export const PAGES_HEADER_BYTES = 16;
export const CANCEL_BYTES = 8;
export const CHECKED_PAGES_HEADER_BYTES = 16;
/** Bytes of one page's checksum in CHECKED_PAGES. */
export const PAGE_CHECKSUM_BYTES = 4;

/** The smallest page the protocol knows; READ offsets and lengths are multiples of it at least. */
export const MIN_PAGE_BYTES = 4096;
/** The largest page the protocol serves (a 2 MiB huge page: one READ). */
export const MAX_PAGE_BYTES = 2 * 1024 * 1024;
/** The longest READ (and PUSH): 2 MiB, so one reply never holds a connection for long. */
export const MAX_READ_BYTES = 2 * 1024 * 1024;
/** Pages one ZERO_MAP may describe: a 1 MiB bitmap, 32 GiB of 4 KiB pages. */
export const MAX_ZERO_MAP_PAGES = 8 * 1024 * 1024;
/**
 * The least maxPayloadBytes a HELLO may announce: enough for any ERROR and
 * every request. A side that announces less than a full READ's reply
 * (MAX_READ_BYTES + 16) asks for shorter READs; a server only ever receives
 * requests, so it announces little.
 */
export const MIN_MAX_PAYLOAD_BYTES = 4096;
/** The most a HELLO may announce; a peer asking to be sent more is refused. */
export const MAX_MAX_PAYLOAD_BYTES = 64 * 1024 * 1024;
/** What a client announces by default: a 2 MiB READ's reply with room, or a 4 MiB metadata chunk. */
export const DEFAULT_MAX_PAYLOAD_BYTES = 4 * 1024 * 1024 + 4096;
/** What a page server announces by default: it receives only requests (and, later, migration's page streams). */
export const DEFAULT_SERVER_MAX_PAYLOAD_BYTES = 64 * 1024;
/** A frame received before the peer's HELLO is at most this (it can only be a HELLO or an ERROR). */
export const PRE_HELLO_MAX_PAYLOAD_BYTES = MAX_HELLO_BYTES + ERROR_HEADER_BYTES + MAX_ERROR_TEXT_BYTES;

/** INFO flags bits. */
export const InfoFlag = { hasMetadata: 1 << 0, hasZeroMap: 1 << 1 } as const;
export const KNOWN_INFO_FLAGS = InfoFlag.hasMetadata | InfoFlag.hasZeroMap;

/** INFO's pageChecksum byte: the checksum the image stores for each page. */
export const PageChecksumCode = { crc32: 1, crc32c: 2 } as const;
export type PageChecksumName = keyof typeof PageChecksumCode;

/** READ priority byte. */
export const ReadPriorityCode = { demand: 0, background: 1 } as const;
