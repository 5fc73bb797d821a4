// One migration connection: the framed connection of transport/ carrying the
// page protocol's frames and the migration's own, decoded as they arrive and
// checked before anything acts on them. What is a migration's here: its
// messages (migration-message frames decoded with the agreed page size), its
// strictness (no flag but the checksum's) and the page checksums a sender
// holds for what it sends. Framing, back-pressure, liveness (ping, stall,
// the companion rule) and request matching are the layer's
// (transport/framed-connection.ts).
import type { Socket } from 'node:net';
import {
  CRC_BLOCK_BYTES,
  FrameFlag,
  ProtocolError,
  decodeMessage,
  encodeMessageParts,
  type Frame,
  type FrameEncoding,
  type Message,
} from '../../protocol/index.js';
import { FramedConnection, dataBlockCrcs, type FrameCodec, type RequestIds } from '../../transport/index.js';
import { decodeMigrationMessage, encodeMigrationMessageParts, isMigrationType, type MigrationMessage } from '../protocol/messages.js';

export type AnyMessage = MigrationMessage | Message;

/** How long a migration connection may carry nothing before it counts as cut, unless told otherwise. */
export const DEFAULT_STALL_TIMEOUT_MS = 10_000;

const isMigration = (message: AnyMessage): message is MigrationMessage => message.type.startsWith('mig-');

/** A migration stream's frames: its own types and the page service's, PAGES checked against the page size once it is agreed. */
class MigrationCodec implements FrameCodec<AnyMessage> {
  pageSizeBytes: number | undefined;

  decode(frame: Frame): AnyMessage {
    // A migration stream is strict: any flag but the checksum's is a frame this side did not mean to take.
    if ((frame.flags & ~FrameFlag.crc32c) !== 0) throw new ProtocolError('EPROTO_FLAGS', `a frame with flags 0x${frame.flags.toString(16)}: a migration connection takes only CRC32C (0x${FrameFlag.crc32c.toString(16)})`, { frameType: frame.type, requestId: frame.requestId, field: 'flags' });
    return isMigrationType(frame.type) ? decodeMigrationMessage(frame, this.pageSizeBytes) : decodeMessage(frame);
  }

  encode(message: AnyMessage, requestId: number, encoding: FrameEncoding): Uint8Array[] {
    return isMigration(message) ? encodeMigrationMessageParts(message, requestId, this.pageSizeBytes, encoding) : encodeMessageParts(message, requestId, encoding);
  }
}

export class MigrationConnection extends FramedConnection<AnyMessage> {
  private readonly codec: MigrationCodec;

  constructor(socket: Socket, name: string, options: { requestIds?: RequestIds; isReply?: (message: AnyMessage, requestId: number) => boolean } = {}) {
    const codec = new MigrationCodec();
    super(socket, { name, codec, ...options });
    this.codec = codec;
  }

  /** Known once both sides agreed (pre-copy PAGES are checked against it). */
  get pageSizeBytes(): number | undefined {
    return this.codec.pageSizeBytes;
  }

  set pageSizeBytes(value: number | undefined) {
    this.codec.pageSizeBytes = value;
  }

  /** Write a message; resolves when the socket can take more (its buffer drained), rejects once the connection is over. */
  override send(message: AnyMessage, requestId = 0): Promise<void> {
    return super.send(message, requestId, pageCrcsOf(message));
  }
}

/**
 * The CRC32Cs of the pages that end a message, when the sender holds them
 * and they are the bytes' own (the source computes them from the very bytes
 * it sends): a CRC32C frame's checksum is then derived, not read.
 */
function pageCrcsOf(message: AnyMessage): Uint32Array | undefined {
  switch (message.type) {
    case 'mig-pages':
    case 'mig-push':
    case 'checked-pages':
      return message.data.length === message.checksums.length * CRC_BLOCK_BYTES ? message.checksums : undefined;
    default:
      return undefined;
  }
}

/**
 * For a message that ends with pages (PAGES, PUSH, CHECKED_PAGES) in a
 * CRC32C frame: the CRC32C of each 4 KiB of its data, computed while the
 * frame was checked, so its pages' checks need not read them again.
 */
export function dataCrcsOf(frame: Frame, message: AnyMessage): Uint32Array | undefined {
  return 'data' in message ? dataBlockCrcs(frame, message.data.length) : undefined;
}
