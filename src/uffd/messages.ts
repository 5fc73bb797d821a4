// Pure decoding of struct uffd_msg (32 bytes, packed):
//
//   0      1      2       4       8                16               24        32
//   +------+------+-------+-------+----------------+----------------+---------+
//   |event | res1 | res2  | res3  | arg word 0     | arg word 1     | word 2  |
//   +------+------+-------+-------+----------------+----------------+---------+
//   PAGEFAULT: flags(u64) address(u64) ptid(u32)   FORK: ufd(u32)
//   REMAP: from to len                             REMOVE/UNMAP: start end
import { UserfaultError } from '../errors.js';
import {
  UFFD_EVENT_FORK,
  UFFD_EVENT_PAGEFAULT,
  UFFD_EVENT_REMAP,
  UFFD_EVENT_REMOVE,
  UFFD_EVENT_UNMAP,
  UFFD_MSG_SIZE,
  UFFD_PAGEFAULT_FLAG_MINOR,
  UFFD_PAGEFAULT_FLAG_WP,
  UFFD_PAGEFAULT_FLAG_WRITE,
} from './constants.js';

export interface PagefaultEvent {
  type: 'pagefault';
  /** Faulting address (page-aligned unless UFFD_FEATURE_EXACT_ADDRESS). */
  address: number;
  write: boolean;
  /** Write to a write-protected page (WP mode). */
  writeProtect: boolean;
  /** Minor fault: page in page cache, missing from the page table (MINOR mode). */
  minor: boolean;
  /** Faulting thread id, with UFFD_FEATURE_THREAD_ID; 0 otherwise. */
  threadId: number;
  /** Raw flags, including bits this library does not name. */
  flags: bigint;
}
/** The process forked: `uffd` is a new userfaultfd for the child's copy of the ranges. */
export interface ForkEvent { type: 'fork'; uffd: number }
/** mremap moved [from, from+length) to [to, to+length). */
export interface RemapEvent { type: 'remap'; from: number; to: number; length: number }
/** MADV_DONTNEED/MADV_REMOVE discarded [start, end): those pages now read zero if refilled. */
export interface RemoveEvent { type: 'remove'; start: number; end: number }
/** munmap of [start, end). */
export interface UnmapEvent { type: 'unmap'; start: number; end: number }
/** An event this library does not know: kept, not dropped. */
export interface UnknownEvent { type: 'unknown'; event: number; raw: Uint8Array }

export type UffdEvent = PagefaultEvent | ForkEvent | RemapEvent | RemoveEvent | UnmapEvent | UnknownEvent;

export class TruncatedMessageError extends UserfaultError {
  override readonly code = 'ETRUNCATED';
  constructor(readonly lengthBytes: number) {
    super(`uffd message buffer of ${lengthBytes} bytes is not a whole number of ${UFFD_MSG_SIZE}-byte messages`);
  }
}

function u64(view: DataView, offset: number): number {
  // Addresses and lengths fit in 2^53 on x86-64 user space.
  return Number(view.getBigUint64(offset, true));
}

/** Decode the message at `offset` in `bytes`. */
export function decodeMessage(bytes: Uint8Array, offset = 0): UffdEvent {
  if (bytes.length - offset < UFFD_MSG_SIZE) throw new TruncatedMessageError(bytes.length - offset);
  const view = new DataView(bytes.buffer, bytes.byteOffset + offset, UFFD_MSG_SIZE);
  const event = view.getUint8(0);
  switch (event) {
    case UFFD_EVENT_PAGEFAULT: {
      const flags = view.getBigUint64(8, true);
      return {
        type: 'pagefault',
        flags,
        address: u64(view, 16),
        write: (flags & UFFD_PAGEFAULT_FLAG_WRITE) !== 0n,
        writeProtect: (flags & UFFD_PAGEFAULT_FLAG_WP) !== 0n,
        minor: (flags & UFFD_PAGEFAULT_FLAG_MINOR) !== 0n,
        threadId: view.getUint32(24, true),
      };
    }
    case UFFD_EVENT_FORK:
      return { type: 'fork', uffd: view.getUint32(8, true) };
    case UFFD_EVENT_REMAP:
      return { type: 'remap', from: u64(view, 8), to: u64(view, 16), length: u64(view, 24) };
    case UFFD_EVENT_REMOVE:
      return { type: 'remove', start: u64(view, 8), end: u64(view, 16) };
    case UFFD_EVENT_UNMAP:
      return { type: 'unmap', start: u64(view, 8), end: u64(view, 16) };
    default:
      return { type: 'unknown', event, raw: bytes.slice(offset, offset + UFFD_MSG_SIZE) };
  }
}

/** Decode `lengthBytes` bytes of messages, as returned by one read(2). */
export function decodeMessages(bytes: Uint8Array, lengthBytes = bytes.length): UffdEvent[] {
  if (lengthBytes % UFFD_MSG_SIZE !== 0) throw new TruncatedMessageError(lengthBytes);
  const events: UffdEvent[] = [];
  for (let offset = 0; offset < lengthBytes; offset += UFFD_MSG_SIZE) events.push(decodeMessage(bytes, offset));
  return events;
}

/** Encode an event as the kernel would (for fixtures and tests). */
export function encodeMessage(event: Exclude<UffdEvent, UnknownEvent>): Uint8Array {
  const bytes = new Uint8Array(UFFD_MSG_SIZE);
  const view = new DataView(bytes.buffer);
  switch (event.type) {
    case 'pagefault':
      view.setUint8(0, UFFD_EVENT_PAGEFAULT);
      view.setBigUint64(8, event.flags, true);
      view.setBigUint64(16, BigInt(event.address), true);
      view.setUint32(24, event.threadId, true);
      break;
    case 'fork':
      view.setUint8(0, UFFD_EVENT_FORK);
      view.setUint32(8, event.uffd, true);
      break;
    case 'remap':
      view.setUint8(0, UFFD_EVENT_REMAP);
      view.setBigUint64(8, BigInt(event.from), true);
      view.setBigUint64(16, BigInt(event.to), true);
      view.setBigUint64(24, BigInt(event.length), true);
      break;
    case 'remove':
    case 'unmap':
      view.setUint8(0, event.type === 'remove' ? UFFD_EVENT_REMOVE : UFFD_EVENT_UNMAP);
      view.setBigUint64(8, BigInt(event.start), true);
      view.setBigUint64(16, BigInt(event.end), true);
      break;
    default: {
      const never: never = event;
      throw new Error(`unencodable event ${JSON.stringify(never)}`);
    }
  }
  return bytes;
}
