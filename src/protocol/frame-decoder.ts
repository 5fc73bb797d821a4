// Frames in and out of a byte stream (the layout is drawn in wire.ts). Pure:
// the caller reads the socket and pushes what it got.
import { crc32 } from 'node:zlib';
import { crc32c, crc32cExtend, crc32cPages } from '../checksum/crc32c.js';
import { ProtocolError } from './errors.js';
import { uninitialized } from './payload-pool.js';
import { CRC_BLOCK_BYTES, FRAME_HEADER_BYTES, FrameField, FrameFlag, KNOWN_FLAGS, MUST_UNDERSTAND_FLAGS_MASK, describeType, type FrameChecksum } from './wire.js';

/** One frame, its CRC checked. `payload` stays valid: the decoder never reuses a buffer it handed out. */
export interface Frame {
  readonly type: number;
  readonly flags: number;
  readonly requestId: number;
  readonly payload: Uint8Array;
  /**
   * A CRC32C frame's: the CRC32C of each of the payload's last
   * floor(length / CRC_BLOCK_BYTES) blocks of CRC_BLOCK_BYTES, computed while
   * checking the frame (the pages of a CHECKED_PAGES or PUSH end its payload,
   * so their checks need no second pass). Undefined for a CRC32 frame.
   */
  readonly blockCrcs?: Uint32Array;
}

/**
 * What one push produced: the frames completed, in order, and the error that
 * stopped decoding, if one did. Frames before the error are good and are
 * returned; after an error the decoder is failed and every later push returns
 * the same error (framing is lost: nothing after it can be trusted).
 */
export interface FrameDecodeResult {
  frames: Frame[];
  error: ProtocolError | undefined;
}

export interface FrameDecoderOptions {
  /** The largest payload accepted; a header announcing more fails the decoder at once. */
  maxPayloadBytes: number;
  /**
   * The caller reuses the buffer of every chunk it pushes (a socket reading
   * into a buffer of its own): a frame wholly inside a chunk is then copied
   * out, never handed over as a view of it. Default false.
   */
  transientChunks?: boolean;
  /** Where a payload assembled across pushes is allocated (a PayloadPool's take); default a fresh, unzeroed buffer. */
  allocate?: (lengthBytes: number) => Uint8Array;
}

/**
 * Frames from a stream pushed in pieces of any size. It resumes mid-header and
 * mid-payload, holds at most one frame's bytes (a frame wholly inside a pushed
 * chunk is a view of it, not a copy), and allocates a payload buffer only after
 * the header announcing it passed the size limit.
 */
export class FrameDecoder {
  private readonly header = new Uint8Array(FRAME_HEADER_BYTES);
  private headerFilled = 0;
  /** The frame being assembled across pushes, once its header is complete. */
  private partial: { type: number; flags: number; requestId: number; crc32: number; payload: Uint8Array; filled: number } | undefined;
  private failure: ProtocolError | undefined;
  private limit: number;
  private framesDecoded = 0;
  private onFrame: ((frame: Frame) => void) | undefined;

  private readonly transientChunks: boolean;
  private readonly allocate: (lengthBytes: number) => Uint8Array;

  constructor(options: FrameDecoderOptions) {
    this.limit = options.maxPayloadBytes;
    this.transientChunks = options.transientChunks ?? false;
    this.allocate = options.allocate ?? uninitialized;
  }

  /**
   * Where the next bytes of the stream belong when a frame's payload is being
   * assembled: the rest of that payload, so a reader can have the kernel put
   * them there (no copy); then it calls payloadReceived(). Undefined between
   * payloads: read into a buffer and push() it.
   */
  payloadWindow(): Uint8Array | undefined {
    if (this.failure || !this.partial) return undefined;
    return this.partial.payload.subarray(this.partial.filled);
  }

  /** `lengthBytes` bytes were read into the window payloadWindow() gave; completes the frame when they were its last. */
  payloadReceived(lengthBytes: number, onFrame?: (frame: Frame) => void): FrameDecodeResult {
    const frames: Frame[] = [];
    this.onFrame = onFrame;
    const { partial } = this;
    if (this.failure || !partial) return { frames, error: this.failure };
    if (lengthBytes < 0 || partial.filled + lengthBytes > partial.payload.length) throw new RangeError(`${lengthBytes} bytes do not fit the payload's ${partial.payload.length - partial.filled} left`);
    partial.filled += lengthBytes;
    if (partial.filled < partial.payload.length) return { frames, error: undefined };
    this.partial = undefined;
    return { frames, error: this.complete(partial.type, partial.flags, partial.requestId, partial.crc32, partial.payload, frames) };
  }

  /** The payload limit. A receiver starts small (only a HELLO can come first) and raises it once the peer is known. */
  get maxPayloadBytes(): number {
    return this.limit;
  }

  set maxPayloadBytes(value: number) {
    this.limit = value;
  }

  /** Bytes held towards the next frame (header and payload). */
  get bufferedBytes(): number {
    return this.partial ? FRAME_HEADER_BYTES + this.partial.filled : this.headerFilled;
  }

  get failed(): ProtocolError | undefined {
    return this.failure;
  }

  /**
   * Feed the next bytes read. Bytes still needed are copied, so the caller may
   * reuse `chunk`'s buffer. With `onFrame`, each frame is handed over as soon
   * as it is decoded, before the next is looked at (and `frames` stays empty):
   * a HELLO handled there can raise maxPayloadBytes for the frames after it
   * in the same chunk.
   */
  push(chunk: Uint8Array, onFrame?: (frame: Frame) => void): FrameDecodeResult {
    const frames: Frame[] = [];
    this.onFrame = onFrame;
    if (this.failure) return { frames, error: this.failure };
    let at = 0;
    while (at < chunk.length) {
      if (this.partial) {
        const { partial } = this;
        const take = Math.min(partial.payload.length - partial.filled, chunk.length - at);
        partial.payload.set(chunk.subarray(at, at + take), partial.filled);
        partial.filled += take;
        at += take;
        if (partial.filled < partial.payload.length) break;
        this.partial = undefined;
        const error = this.complete(partial.type, partial.flags, partial.requestId, partial.crc32, partial.payload, frames);
        if (error) return { frames, error };
        continue;
      }
      if (this.headerFilled === 0 && chunk.length - at >= FRAME_HEADER_BYTES) {
        // The common case: a header wholly in this chunk is read in place.
        const header = chunk.subarray(at, at + FRAME_HEADER_BYTES);
        at += FRAME_HEADER_BYTES;
        const error = this.startFrame(header, chunk, at, frames);
        if (error) return { frames, error };
        if (this.partial) at = chunk.length;
        else at += readU32(header, FrameField.payloadLength);
        continue;
      }
      const take = Math.min(FRAME_HEADER_BYTES - this.headerFilled, chunk.length - at);
      this.header.set(chunk.subarray(at, at + take), this.headerFilled);
      this.headerFilled += take;
      at += take;
      if (this.headerFilled < FRAME_HEADER_BYTES) break;
      this.headerFilled = 0;
      const error = this.startFrame(this.header, chunk, at, frames);
      if (error) return { frames, error };
      if (this.partial) at = chunk.length;
      else at += readU32(this.header, FrameField.payloadLength);
    }
    return { frames, error: undefined };
  }

  /**
   * The stream ended. Returns the truncation error if it ended inside a frame
   * (a clean end between frames returns undefined).
   */
  end(): ProtocolError | undefined {
    if (this.failure) return this.failure;
    const buffered = this.bufferedBytes;
    if (buffered === 0) return undefined;
    const what = this.partial
      ? `${describeType(this.partial.type)} frame after ${this.partial.filled} of its ${this.partial.payload.length} payload bytes`
      : `frame header after ${buffered} of its ${FRAME_HEADER_BYTES} bytes`;
    return this.fail(new ProtocolError('EPROTO_TRUNCATED', `the stream ended inside a ${what}`, this.partial ? { frameType: this.partial.type, requestId: this.partial.requestId } : {}));
  }

  /**
   * A header is complete: check it, then take its payload from `chunk` at
   * `at` if it is all there (a view), or start assembling it (a copy).
   */
  private startFrame(header: Uint8Array, chunk: Uint8Array, at: number, frames: Frame[]): ProtocolError | undefined {
    const type = readU16(header, FrameField.type);
    const flags = readU16(header, FrameField.flags);
    const requestId = readU32(header, FrameField.requestId);
    const payloadLength = readU32(header, FrameField.payloadLength);
    const payloadCrc32 = readU32(header, FrameField.payloadCrc32);
    const context = { frameType: type, requestId };
    if (payloadLength > this.limit) {
      return this.fail(new ProtocolError(
        'EPROTO_OVERSIZED',
        `a ${describeType(type)} frame announces a ${payloadLength}-byte payload; at most ${this.limit} are taken`,
        { ...context, field: 'payloadLengthBytes' },
      ));
    }
    const unknownFlags = flags & MUST_UNDERSTAND_FLAGS_MASK & ~KNOWN_FLAGS;
    if (unknownFlags !== 0) {
      return this.fail(new ProtocolError('EPROTO_FLAGS', `a ${describeType(type)} frame has must-understand flags 0x${unknownFlags.toString(16)} this version does not know`, { ...context, field: 'flags' }));
    }
    if (chunk.length - at >= payloadLength) {
      // A plain Uint8Array view whatever the chunk's class (a socket's Buffer), so decoded fields compare equal to any
      // Uint8Array; a copy when the chunk's buffer is about to be reused.
      const inChunk = new Uint8Array(chunk.buffer, chunk.byteOffset + at, payloadLength);
      return this.complete(type, flags, requestId, payloadCrc32, this.transientChunks ? inChunk.slice() : inChunk, frames);
    }
    // Not zeroed: every byte is written from the stream before the frame is complete.
    const payload = this.allocate(payloadLength);
    const available = chunk.subarray(at);
    payload.set(available);
    this.partial = { type, flags, requestId, crc32: payloadCrc32, payload, filled: available.length };
    return undefined;
  }

  private complete(type: number, flags: number, requestId: number, expectedCrc32: number, payload: Uint8Array, frames: Frame[]): ProtocolError | undefined {
    let blockCrcs: Uint32Array | undefined;
    let actualCrc32: number;
    if (flags & FrameFlag.crc32c) {
      // The leading remainder, then the whole blocks that end the payload in one batched pass, combined.
      const head = payload.length % CRC_BLOCK_BYTES;
      blockCrcs = crc32cPages(payload.subarray(head), CRC_BLOCK_BYTES);
      actualCrc32 = crc32cExtend(crc32c(payload.subarray(0, head)), blockCrcs, CRC_BLOCK_BYTES);
    } else {
      actualCrc32 = crc32(payload);
    }
    if (actualCrc32 !== expectedCrc32) {
      return this.fail(new ProtocolError(
        'EPROTO_CRC',
        `frame ${this.framesDecoded + 1} (${describeType(type)}, request ${requestId}, ${payload.length} bytes) fails its ${flags & FrameFlag.crc32c ? 'CRC32C' : 'CRC32'}: ` +
          `0x${hex32(actualCrc32)}, the header says 0x${hex32(expectedCrc32)}`,
        { frameType: type, requestId, field: 'payloadCrc32' },
      ));
    }
    this.framesDecoded++;
    const frame: Frame = blockCrcs ? { type, flags, requestId, payload, blockCrcs } : { type, flags, requestId, payload };
    if (this.onFrame) this.onFrame(frame);
    else frames.push(frame);
    return undefined;
  }

  private fail(error: ProtocolError): ProtocolError {
    this.failure = error;
    this.partial = undefined;
    this.headerFilled = 0;
    return error;
  }
}

/**
 * How a frame is checksummed: zlib's CRC32 (the default, and every HELLO) or
 * CRC32C, which sets the frame's CRC32C flag. `lastPartCrcs`, with CRC32C:
 * the CRC32C of each CRC_BLOCK_BYTES block of the last payload part (pages
 * whose checksums the sender holds, and which it knows match the bytes it
 * sends): the frame's checksum is derived from them without reading the part.
 */
export interface FrameEncoding {
  checksum: FrameChecksum;
  lastPartCrcs?: Uint32Array;
}

/**
 * A frame as the byte ranges to write, in order: the header, then `payload`'s
 * parts as given (so a 2 MiB page run is written from where it lies, not copied).
 */
export function encodeFrameParts(type: number, requestId: number, payload: readonly Uint8Array[], flags = 0, encoding: FrameEncoding = { checksum: 'crc32' }): Uint8Array[] {
  let lengthBytes = 0;
  let checksum = 0;
  // Empty parts are left out: node's crc32() of an empty TextEncoder result
  // (a view with no backing store) returns 0 whatever the running value.
  const parts = payload.filter((part) => part.length > 0);
  // The flag says which checksum the frame carries, whatever `flags` held (a frame re-encoded by a relay).
  flags = encoding.checksum === 'crc32c' ? flags | FrameFlag.crc32c : flags & ~FrameFlag.crc32c;
  if (encoding.checksum === 'crc32c') {
    const known = encoding.lastPartCrcs;
    const last = parts[parts.length - 1];
    const derived = known !== undefined && last !== undefined && last.length === known.length * CRC_BLOCK_BYTES;
    for (let i = 0; i < parts.length; i++) {
      const part = parts[i]!;
      lengthBytes += part.length;
      checksum = derived && i === parts.length - 1 ? crc32cExtend(checksum, known, CRC_BLOCK_BYTES) : crc32c(part, checksum);
    }
  } else {
    for (const part of parts) {
      lengthBytes += part.length;
      checksum = crc32(part, checksum);
    }
  }
  const header = new Uint8Array(FRAME_HEADER_BYTES);
  const view = new DataView(header.buffer);
  view.setUint16(FrameField.type, type, true);
  view.setUint16(FrameField.flags, flags, true);
  view.setUint32(FrameField.requestId, requestId, true);
  view.setUint32(FrameField.payloadLength, lengthBytes, true);
  view.setUint32(FrameField.payloadCrc32, checksum, true);
  return [header, ...parts];
}

/** A frame as one buffer. */
export function encodeFrame(type: number, requestId: number, payload: Uint8Array, flags = 0, encoding?: FrameEncoding): Uint8Array {
  return concatParts(encodeFrameParts(type, requestId, [payload], flags, encoding));
}

export function concatParts(parts: readonly Uint8Array[]): Uint8Array {
  let length = 0;
  for (const part of parts) length += part.length;
  const out = new Uint8Array(length);
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.length;
  }
  return out;
}

function readU16(bytes: Uint8Array, at: number): number {
  return bytes[at]! | (bytes[at + 1]! << 8);
}

function readU32(bytes: Uint8Array, at: number): number {
  return (bytes[at]! | (bytes[at + 1]! << 8) | (bytes[at + 2]! << 16) | (bytes[at + 3]! << 24)) >>> 0;
}

function hex32(value: number): string {
  return value.toString(16).padStart(8, '0');
}

