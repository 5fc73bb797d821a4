// One migration connection: a TCP socket carrying the page protocol's frames
// (migration's own types and the page service's), decoded as they arrive and
// checked before anything acts on them. Writes respect the socket's buffer
// (send() resolves once the kernel has room), so a pre-copy stream cannot
// pile up gigabytes in the VMM's heap. The peer is not trusted: a frame that
// fails its CRC or its codec ends the connection with the ProtocolError, and
// nothing it carried is used. A peer gone silent (a blackholed link, a host
// that lost power: TCP alone would retransmit for minutes) is noticed by
// watchLiveness(), which pings when nothing has come for a while and ends the
// connection when the silence lasts; PING and PONG are this layer's own, never
// seen by the migration above it. A PING written behind megabytes of bulk
// data (a pre-copy stream, through a relay that buffers) waits behind them,
// so silence alone would call a slow healthy link dead: bytes this side had
// queued leaving the socket (the peer, or a relay, took them) count as proof
// of life, and so does hearing from a companion connection of the same
// session that bulk data never queues on (the urgent one).
import { EventEmitter } from 'node:events';
import type { Socket } from 'node:net';
import {
  CRC_BLOCK_BYTES,
  FrameDecoder,
  FrameFlag,
  PRE_HELLO_MAX_PAYLOAD_BYTES,
  ProtocolError,
  decodeMessage,
  encodeMessageParts,
  type Frame,
  type FrameChecksum,
  type Message,
} from '../../protocol/index.js';
import { decodeMigrationMessage, encodeMigrationMessageParts, isMigrationType, type MigrationMessage } from '../protocol/messages.js';
import { ConnectionEndedError, ConnectionStalledError } from '../../net/connection-errors.js';

export type AnyMessage = MigrationMessage | Message;

/** How long a migration connection may carry nothing before it counts as cut, unless told otherwise. */
export const DEFAULT_STALL_TIMEOUT_MS = 10_000;

export interface FramedSocketEvents {
  /**
   * A frame, decoded and checked. `dataCrcs`: for a message that ends with
   * pages (PAGES, PUSH, CHECKED_PAGES) in a CRC32C frame, the CRC32C of each
   * 4 KiB of its data, computed while the frame was checked: its pages'
   * checks need not read them again.
   */
  message: [message: AnyMessage, requestId: number, dataCrcs: Uint32Array | undefined];
  /** The connection is over (closed by either side, failed, or a protocol violation: `error` says which). */
  end: [error: Error | undefined];
}

const isMigration = (message: AnyMessage): message is MigrationMessage => message.type.startsWith('mig-');

export class FramedSocket extends EventEmitter<FramedSocketEvents> {
  private readonly decoder = new FrameDecoder({ maxPayloadBytes: PRE_HELLO_MAX_PAYLOAD_BYTES });
  private ended = false;
  private drainWaiters: Array<() => void> = [];
  bytesSent = 0;
  bytesReceived = 0;
  /** Known once both sides agreed (pre-copy PAGES are checked against it). */
  pageSizeBytes: number | undefined;
  /** The checksum of the frames this side sends: CRC32 until the HELLOs chose version 2 (then set by channels.ts). */
  frameChecksum: FrameChecksum = 'crc32';
  private lastHeardAt = performance.now();
  /** When bytes this side had queued (the kernel's buffer full) last left: the path takes them. */
  private lastDrainedAt = 0;
  /** Since when a write is waiting for room in the kernel's buffer (undefined: nothing waits). */
  private blockedSince: number | undefined;
  /** Why the connection ended, for the error a later send gets. */
  private endError: Error | undefined;
  /** A connection of the same session whose hearing also counts (watchLiveness). */
  private companion: FramedSocket | undefined;
  /** Set by decodeInSlices(): chunks waiting to be decoded, a turn of the event loop at a time. */
  private backlog: { chunks: Buffer[]; bytes: number; scheduled: boolean; sliceBytes: number; pauseAboveBytes: number } | undefined;
  private livenessTimer: NodeJS.Timeout | undefined;
  private nextPingId = 1;
  /** roundTrip()s waiting for their PONG, by ping id. */
  private readonly roundTrips = new Map<number, { resolve: () => void; reject: (error: Error) => void }>();

  constructor(readonly socket: Socket, readonly name: string) {
    super();
    socket.setNoDelay(true);
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.on('drain', () => {
      this.lastDrainedAt = performance.now();
      this.blockedSince = undefined;
      this.releaseDrainWaiters();
    });
    socket.on('error', (error) => this.finish(error));
    socket.on('close', () => {
      // What arrived before the peer closed is still its word (a last verdict, say): decode it first.
      if (this.backlog) this.decodeSlice(Infinity);
      this.finish(undefined);
    });
  }

  /** The largest payload this side takes from now on (raised after the HELLOs). */
  set maxPayloadBytes(value: number) {
    this.decoder.maxPayloadBytes = value;
  }

  get isEnded(): boolean {
    return this.ended;
  }

  /** Write a message; resolves when the socket can take more (its buffer drained), rejects once the connection is over. */
  async send(message: AnyMessage, requestId = 0): Promise<void> {
    if (this.ended) throw new ConnectionEndedError(this.name, this.endError);
    const encoding = { checksum: this.frameChecksum, lastPartCrcs: pageCrcsOf(message) };
    const parts = isMigration(message) ? encodeMigrationMessageParts(message, requestId, this.pageSizeBytes, encoding) : encodeMessageParts(message as Message, requestId, encoding);
    let full = false;
    for (const part of parts) {
      this.bytesSent += part.length;
      full = !this.socket.write(part) || full;
    }
    if (full) {
      this.blockedSince ??= performance.now();
      await this.drained();
    }
  }

  /**
   * End the connection with a ConnectionStalledError once nothing at all has
   * arrived for silenceLimitMs. A quarter of that into a silence this side
   * pings (every peer answers), so a healthy but idle peer is never mistaken
   * for a dead one.
   */
  watchLiveness(silenceLimitMs: number, options: { companion?: FramedSocket } = {}): void {
    clearInterval(this.livenessTimer);
    if (this.ended) return;
    this.companion = options.companion;
    const intervalMs = Math.max(10, Math.floor(silenceLimitMs / 4));
    this.lastHeardAt = performance.now();
    this.livenessTimer = setInterval(() => {
      const now = performance.now();
      const silentMs = now - this.lastHeardAt;
      // Alive: heard from the peer, or what this side queued is leaving (a PING behind it is not lost,
      // only late), or the session's other connection hears the peer while this one has nothing stuck.
      const stuck = this.blockedSince !== undefined && now - Math.max(this.blockedSince, this.lastDrainedAt) >= silenceLimitMs;
      const companionHeardAt = this.companion && !this.companion.ended ? this.companion.lastHeardAt : 0;
      const lifeMs = now - Math.max(this.lastHeardAt, this.lastDrainedAt, stuck ? 0 : companionHeardAt);
      if (lifeMs >= silenceLimitMs) this.destroy(new ConnectionStalledError(this.name, Math.round(Math.min(silentMs, lifeMs))));
      else if (silentMs >= intervalMs) this.send({ type: 'ping', data: new Uint8Array(0) }, this.nextPingId++).catch(() => {});
    }, intervalMs);
    this.livenessTimer.unref();
  }

  /**
   * Decode what arrives at most `sliceBytes` per turn of the event loop, for a
   * bulk connection whose backlog must not hold up another connection's frames
   * (libuv reads up to 2 MiB from one socket per turn, and handing each frame
   * to the pager costs more than reading it; a demanded page waiting behind
   * that on the urgent connection would wait tens of ms). Past
   * `pauseAboveBytes` waiting, reading pauses: the peer's writes back up into
   * TCP, never into this heap.
   */
  decodeInSlices(sliceBytes = 128 << 10, pauseAboveBytes = 4 << 20): void {
    this.backlog ??= { chunks: [], bytes: 0, scheduled: false, sliceBytes, pauseAboveBytes };
  }

  /**
   * A PING and its PONG: resolves once the peer has handled everything sent
   * before it (frames are handled in order), rejects if the connection ends first.
   */
  roundTrip(): Promise<void> {
    const id = this.nextPingId++;
    return new Promise((resolve, reject) => {
      this.roundTrips.set(id, { resolve, reject });
      this.send({ type: 'ping', data: new Uint8Array(0) }, id).catch((error: Error) => {
        this.roundTrips.delete(id);
        reject(error);
      });
    });
  }

  /** End the connection (flushing what was written). */
  close(error?: Error): void {
    if (this.ended) return;
    this.socket.end();
    // A peer that does not close its side in time is not waited for.
    setTimeout(() => this.socket.destroy(), 1000).unref();
    this.finish(error);
  }

  /** Drop the connection at once, without flushing (a cut, a hostile peer). */
  destroy(error?: Error): void {
    this.socket.destroy();
    this.finish(error);
  }

  private drained(): Promise<void> {
    if (this.ended) return Promise.reject(new ConnectionEndedError(this.name, this.endError));
    return new Promise((resolve, reject) => {
      this.drainWaiters.push(() => (this.ended ? reject(new ConnectionEndedError(this.name, this.endError)) : resolve()));
    });
  }

  private releaseDrainWaiters(): void {
    const waiters = this.drainWaiters.splice(0);
    for (const waiter of waiters) waiter();
  }

  private onData(chunk: Buffer): void {
    if (this.ended) return;
    this.bytesReceived += chunk.length;
    this.lastHeardAt = performance.now();
    const backlog = this.backlog;
    if (!backlog) {
      this.decode(chunk);
      return;
    }
    backlog.chunks.push(chunk);
    backlog.bytes += chunk.length;
    if (backlog.bytes > backlog.pauseAboveBytes) this.socket.pause();
    this.scheduleSlice();
  }

  private scheduleSlice(): void {
    const backlog = this.backlog!;
    if (backlog.scheduled || backlog.chunks.length === 0) return;
    backlog.scheduled = true;
    setImmediate(() => {
      backlog.scheduled = false;
      this.decodeSlice();
    });
  }

  private decodeSlice(sliceBytes = this.backlog!.sliceBytes): void {
    const backlog = this.backlog!;
    let decoded = 0;
    while (!this.ended && backlog.chunks.length > 0 && decoded < sliceBytes) {
      const chunk = backlog.chunks.shift()!;
      backlog.bytes -= chunk.length;
      decoded += chunk.length;
      this.decode(chunk);
    }
    if (this.ended) {
      backlog.chunks.length = 0;
      backlog.bytes = 0;
    }
    if (backlog.bytes <= backlog.pauseAboveBytes / 2 && this.socket.isPaused() && !this.ended) this.socket.resume();
    this.scheduleSlice();
  }

  private decode(chunk: Buffer): void {
    const { error } = this.decoder.push(chunk, (frame) => {
      if (this.ended) return;
      let message: AnyMessage;
      try {
        // A migration stream is strict: any flag but the checksum's is a frame this side did not mean to take.
        if ((frame.flags & ~FrameFlag.crc32c) !== 0) throw new ProtocolError('EPROTO_FLAGS', `a frame with flags 0x${frame.flags.toString(16)}: a migration connection takes only CRC32C (0x${FrameFlag.crc32c.toString(16)})`, { frameType: frame.type, requestId: frame.requestId, field: 'flags' });
        // PAGES' data length is checked against the page size once it is agreed.
        message = isMigrationType(frame.type) ? decodeMigrationMessage(frame, this.pageSizeBytes) : decodeMessage(frame);
      } catch (decodeError) {
        this.destroy(decodeError as Error);
        return;
      }
      if (message.type === 'ping') {
        this.send({ type: 'pong', data: message.data }, frame.requestId).catch(() => {});
        return;
      }
      if (message.type === 'pong') {
        const waiter = this.roundTrips.get(frame.requestId);
        this.roundTrips.delete(frame.requestId);
        waiter?.resolve();
        return;
      }
      try {
        this.emit('message', message, frame.requestId, dataCrcsOf(frame, message));
      } catch (handlerError) {
        // The connection boundary: whatever a handler throws ends this connection alone.
        this.destroy(handlerError as Error);
      }
    });
    if (error) this.destroy(error);
  }

  private finish(error: Error | undefined): void {
    if (this.ended) return;
    this.ended = true;
    this.endError = error;
    clearInterval(this.livenessTimer);
    for (const waiter of this.roundTrips.values()) waiter.reject(new ConnectionEndedError(this.name, error));
    this.roundTrips.clear();
    this.releaseDrainWaiters();
    this.emit('end', error);
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

/** The frame's block CRC32Cs that cover exactly the message's data (its last bytes), if the decoder computed them. */
function dataCrcsOf(frame: Frame, message: AnyMessage): Uint32Array | undefined {
  if (!frame.blockCrcs || !('data' in message) || message.data.length % CRC_BLOCK_BYTES !== 0) return undefined;
  const blocks = message.data.length / CRC_BLOCK_BYTES;
  return frame.blockCrcs.length >= blocks ? frame.blockCrcs.subarray(frame.blockCrcs.length - blocks) : undefined;
}
