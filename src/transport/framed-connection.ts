// One framed connection: a socket, its frame decoder, what it writes and how
// fast, whether the peer is still there, and which reply answers which
// request. The page client's connection, the page server's and the
// migration's are this, with a role on top (pages/client-connection.ts,
// pages/served-connection.ts, migrate/transport/migration-connection.ts): the
// role says which messages it takes, which are replies and what a refusal
// means; everything below that is here, once.
//
// Receiving. A TCP socket made by connectForFrames() reads in place: the
// kernel writes a large payload straight into the buffer the decoder
// allocated for its frame (net's `onread` with a buffer this side supplies),
// everything else lands in one reused scratch chunk that the decoder copies
// from. Any other socket (one a server accepted, which net gives no `onread`;
// a TLS socket, which has none at all: the migration's --psk-file path) is
// read from its 'data' chunks, and a frame wholly inside a chunk is a view of
// that chunk. Either way a payload's buffer is the frame's own: allocated for
// it, never reused by this layer, alive as long as whoever holds the frame.
//
// Back-pressure. decodeInSlices() bounds what one turn of the event loop
// decodes, so a bulk connection's backlog does not hold up another
// connection's frames: reading in place, the socket stops reading for the
// turn once it read its slice (the rest waits in the kernel, and TCP pushes
// back on the peer); reading chunks, they queue and are decoded a slice per
// turn, and the socket pauses past a bound, so the peer's writes back up into
// TCP, never into this heap. Writes say when the socket's buffer is full
// (send() resolves once it drained).
//
// Liveness. watchLiveness() pings when nothing has come for a while and ends
// the connection (ConnectionStalledError) when the silence lasts. A PING
// written behind megabytes of bulk data waits behind them, so silence alone
// would call a slow healthy link dead: bytes this side had queued leaving the
// socket (the peer, or a relay, took them) count as proof of life, and so
// does hearing from a companion connection of the same session that bulk data
// never queues on. PING and PONG are this layer's own once answersPings is
// set: the role above never sees them.
//
// Requests. request() and call() give a request its id (never 0, never one
// still outstanding; optionally from a counter shared by a session's
// connections) and match the reply by it. Which frames are replies is the
// role's to say (isReply); a reply to no outstanding request, or of a type
// its request does not take, is a protocol violation: the peer is not
// trusted, the connection ends and nothing the frame carried is used.
import { EventEmitter } from 'node:events';
import { connect, type Socket } from 'node:net';
import {
  CRC_BLOCK_BYTES,
  FrameDecoder,
  PRE_HELLO_MAX_PAYLOAD_BYTES,
  ProtocolError,
  decodeMessage,
  describeType,
  encodeMessageParts,
  type Frame,
  type FrameChecksum,
  type FrameEncoding,
  type Message,
} from '../protocol/index.js';
import { ConnectionEndedError, ConnectionStalledError } from '../net/connection-errors.js';

/** How a role's messages become frames and back. decode() throws a ProtocolError for a frame its role does not take. */
export interface FrameCodec<M extends { type: string }> {
  decode(frame: Frame): M;
  encode(message: M, requestId: number, encoding: FrameEncoding): Uint8Array[];
}

/**
 * Why a connection ended: 'lost' (the socket closed or failed, the peer went
 * quiet, a request went unanswered), 'violation' (the peer broke the
 * protocol), 'closed' (this side closed it).
 */
export type ConnectionEndKind = 'lost' | 'violation' | 'closed';

export interface FramedConnectionEvents<M> {
  /** A frame, decoded and checked, that is neither a reply this layer matched nor a PING or PONG it handled. */
  message: [message: M, requestId: number, frame: Frame];
  /** The connection is over, once; `error` says why (undefined: the peer closed it between frames, or this side did without a reason). */
  end: [error: Error | undefined, kind: ConnectionEndKind];
  /** The socket is closed (after 'end'): nothing more is written or read. */
  closed: [];
  /** The socket's write buffer drained: a writer that was told to wait may write again. */
  drain: [];
}

export interface FramedConnectionOptions<M extends { type: string }> {
  /** For messages: "migration main connection to 10.0.0.2:7000". */
  name: string;
  codec: FrameCodec<M>;
  /** The largest payload taken before the peer is known (default: a HELLO's, or an ERROR's). */
  maxPayloadBytes?: number;
  /** Which frames answer a request of this side (matched by id). Default: a PONG. */
  isReply?: (message: M, requestId: number) => boolean;
  /** The message written before the connection closes on a protocol violation (an ERROR saying why), if any. */
  goodbye?: (error: ProtocolError) => M | undefined;
  /** Request ids drawn from this counter (a session's connections share one, so ids keep rising across reconnects). */
  requestIds?: RequestIds;
  /** Answer PINGs (with PONG) without the role seeing them; the role may switch it on later (after its HELLO). Default true. */
  answersPings?: boolean;
  /** Bytes handed to the socket (a budget holding them until the kernel takes them). */
  onQueued?: (lengthBytes: number) => void;
  /** Bytes the kernel took, or dropped with the socket (every byte onQueued counted is given back once). */
  onFlushed?: (lengthBytes: number) => void;
  /** Bytes arrived (statistics). */
  onReceived?: (lengthBytes: number) => void;
  /**
   * Where a payload assembled across reads is allocated (a PayloadPool's
   * take, lent to the frame; the role gives it back once the frame is
   * handled). Default: a fresh buffer per frame.
   */
  allocatePayload?: (lengthBytes: number) => Uint8Array;
}

/** Request ids: 1 to 2^32 - 1, then round again; never 0 (a frame that answers nothing). */
export class RequestIds {
  private nextId = 1;
  next(): number {
    const id = this.nextId;
    this.nextId = id >= 0xffff_ffff ? 1 : id + 1;
    return id;
  }
}

export interface RequestOptions<M, C> {
  /** The message types that answer it (an ERROR always may). */
  expect: readonly string[];
  /** Its reply, once, when it comes; not called if the connection ends first. */
  onReply?: (reply: M, frame: Frame) => void;
  /** What the role keeps with it (pending() lists it). */
  context?: C;
  /** No reply within this long: the connection is dropped as lost with timeoutError() (a peer that answers pings but not requests is as good as gone). */
  timeoutMs?: number;
  timeoutError?: () => Error;
  /** Use this id (the role's own counter gave it); by default the connection's counter does. */
  requestId?: number;
}

interface Outstanding<M, C> {
  readonly type: string;
  readonly expect: readonly string[];
  readonly sentAt: number;
  readonly context: C | undefined;
  readonly onReply: ((reply: M, frame: Frame) => void) | undefined;
  readonly onEnd: ((error: Error) => void) | undefined;
  timer: NodeJS.Timeout | undefined;
}

/** A request sent and not yet answered. */
export interface PendingRequest<C> {
  readonly requestId: number;
  readonly type: string;
  readonly sentAt: number;
  readonly context: C | undefined;
}

/** A read smaller than this goes to the scratch chunk and is copied from there, rather than costing a read of its own. */
const MIN_DIRECT_READ_BYTES = 4096;
/** The socket's read buffer between payloads: headers, small frames, the start of a large payload. */
const SCRATCH_BYTES = 32 * 1024;
/** How long close() waits for the peer to take what was written before the socket is destroyed. */
const DEFAULT_CLOSE_FLUSH_MS = 1000;
/** How long a goodbye (the ERROR saying why a violation ends the connection) may take to leave. */
const GOODBYE_FLUSH_MS = 2000;

/**
 * A socket's receiving end when it reads in place, given to the socket before
 * the connection exists (net.connect's onread): the kernel reads a large
 * payload straight into the buffer the decoder allocated for it; everything
 * else lands in one reused scratch chunk (the decoder copies what it keeps).
 * One copy from the kernel, none in between.
 */
class InPlaceReceive {
  readonly scratch = Buffer.allocUnsafe(SCRATCH_BYTES);
  connection: Pick<FramedConnection<{ type: string }>, 'readTarget' | 'onRead'> | undefined;
  socket: Socket | undefined;
  /** How much one turn of the event loop may read before the socket yields to the others (decodeInSlices). */
  turnBudgetBytes = Infinity;
  private turnBytes = 0;
  private yielding = false;

  nextBuffer(): Uint8Array {
    return this.connection?.readTarget(this.scratch) ?? this.scratch;
  }

  /**
   * Returns false to stop reading for the rest of this turn once the
   * connection read its budget: libuv reads a readable socket up to 32 times
   * in a row, which on a bulk stream is 8 MiB of frames to check and deliver
   * (~25 ms here) before another connection's demanded page is even read.
   * Reading starts again in the same turn's check phase, after every other
   * socket that was ready has had its go.
   */
  received(lengthBytes: number, buffer: Uint8Array): boolean {
    // The socket is wrapped on 'connect', before this side sent anything: the peer has nothing to answer yet.
    this.connection?.onRead(lengthBytes, buffer, this.scratch);
    this.turnBytes += lengthBytes;
    if (this.turnBytes < this.turnBudgetBytes) return true;
    this.turnBytes = 0;
    if (!this.yielding) {
      this.yielding = true;
      setImmediate(() => {
        this.yielding = false;
        // Socket.read(0) restarts the handle's reading (its _read), which returning false stopped.
        if (this.socket && !this.socket.destroyed && !this.socket.isPaused()) this.socket.read(0);
      });
    }
    return false;
  }
}

const inPlaceReceivers = new WeakMap<Socket, InPlaceReceive>();

/**
 * A TCP connection whose FramedConnection reads frames' payloads in place
 * (net.connect with `onread`). Wrap it in its FramedConnection on 'connect'.
 */
export function connectForFrames(options: { host: string; port: number }): Socket {
  const receive = new InPlaceReceive();
  const socket = connect({
    host: options.host,
    port: options.port,
    onread: { buffer: () => receive.nextBuffer(), callback: (bytes, buffer) => receive.received(bytes, buffer) },
  });
  receive.socket = socket;
  inPlaceReceivers.set(socket, receive);
  return socket;
}

export class FramedConnection<M extends { type: string }, C = unknown> extends EventEmitter<FramedConnectionEvents<M>> {
  readonly name: string;
  private readonly decoder: FrameDecoder;
  private readonly receive: InPlaceReceive | undefined;
  private readonly outstanding = new Map<number, Outstanding<M, C>>();
  /**
   * Where this connection's request ids come from. A session's connections
   * may share one (set before the first request): ids then never meet across
   * them, and a request the role re-sends with its id on a new connection
   * (a destination's COMPLETE) meets no ping of that connection's.
   */
  requestIds: RequestIds;
  private ended = false;
  private endErrorValue: Error | undefined;
  /** The checksum of the frames this side sends: CRC32 until the role's HELLOs chose CRC32C. */
  frameChecksum: FrameChecksum = 'crc32';
  /** PINGs are answered here, unseen by the role. */
  answersPings: boolean;
  bytesSent = 0;
  bytesReceived = 0;
  /** PINGs this side answered. */
  pingsAnswered = 0;
  /** performance.now() of the last bytes received. */
  lastHeardAt = performance.now();
  /** performance.now() of the last frame received (a PING included). */
  lastFrameAt = performance.now();
  /** Bytes handed to the socket that the kernel has not taken yet. */
  unflushedBytes = 0;
  /** The last time the kernel took some of this side's bytes, or the first of them was queued. */
  lastWriteProgressAt = performance.now();
  /** When bytes this side had queued (the kernel's buffer full) last left: the path takes them. */
  private lastDrainedAt = 0;
  /** Since when a write is waiting for room in the kernel's buffer (undefined: nothing waits). */
  private blockedSince: number | undefined;
  private drainWaiters: Array<() => void> = [];
  /** The socket closed: what it had not written was given back, and late write callbacks are ignored. */
  private unflushedReleased = false;
  /** A connection of the same session whose hearing also counts (watchLiveness). */
  private companion: FramedConnection<M, C> | undefined;
  private livenessTimer: NodeJS.Timeout | undefined;
  private closeTimer: NodeJS.Timeout | undefined;
  /** Reading chunks with decodeInSlices(): those waiting to be decoded, a slice per turn of the event loop. */
  private backlog: { chunks: Buffer[]; bytes: number; scheduled: boolean; sliceBytes: number; pauseAboveBytes: number } | undefined;
  /** Why reading is paused: the backlog is full, or the role asked (pauseReading). */
  private readonly pausedBy = new Set<'backlog' | 'role'>();

  constructor(readonly socket: Socket, private readonly options: FramedConnectionOptions<M>) {
    super();
    this.name = options.name;
    this.requestIds = options.requestIds ?? new RequestIds();
    this.answersPings = options.answersPings ?? true;
    this.receive = inPlaceReceivers.get(socket);
    // Reading into a scratch chunk that is reused: what the decoder keeps of it is copied.
    this.decoder = new FrameDecoder({ maxPayloadBytes: options.maxPayloadBytes ?? PRE_HELLO_MAX_PAYLOAD_BYTES, transientChunks: this.receive !== undefined, allocate: options.allocatePayload });
    // Frames are written whole; Nagle would only hold a demanded page back.
    socket.setNoDelay(true);
    if (this.receive) this.receive.connection = this;
    else socket.on('data', (chunk: Buffer) => this.onChunk(chunk));
    socket.on('drain', () => {
      this.lastDrainedAt = performance.now();
      this.blockedSince = undefined;
      this.releaseDrainWaiters();
      this.emit('drain');
    });
    socket.on('error', (error) => this.finish(error, 'lost'));
    // What arrived before the peer closed is still its word (a last verdict, say): decoded first.
    socket.on('end', () => this.peerClosed());
    socket.on('close', () => {
      this.peerClosed();
      clearTimeout(this.closeTimer);
      // The socket's buffers are gone with it: what the kernel never took is given back.
      if (!this.unflushedReleased) {
        this.unflushedReleased = true;
        const dropped = this.unflushedBytes;
        this.unflushedBytes = 0;
        if (dropped > 0) this.options.onFlushed?.(dropped);
      }
      this.emit('closed');
    });
  }

  get isEnded(): boolean {
    return this.ended;
  }

  /** Why it ended, once it has. */
  get endError(): Error | undefined {
    return this.endErrorValue;
  }

  /** The largest payload this side takes (raised once the peer is known). */
  get maxPayloadBytes(): number {
    return this.decoder.maxPayloadBytes;
  }

  set maxPayloadBytes(value: number) {
    this.decoder.maxPayloadBytes = value;
  }

  /** The socket's buffer is full: a writer should wait for 'drain'. */
  get writeBlocked(): boolean {
    return this.socket.writableNeedDrain;
  }

  /** The truncation, if the stream ended inside a frame (what the peer left half sent). */
  truncation(): ProtocolError | undefined {
    return this.decoder.end();
  }

  /**
   * Write a message as one frame. Returns false when the socket's buffer is
   * full (wait for 'drain', or use send()), and when the connection is over
   * (nothing is written). `pageCrcs`: the CRC32Cs of the pages that end the
   * message, when the sender holds them and they are the bytes' own: a CRC32C
   * frame's checksum is derived from them, not read.
   */
  write(message: M, requestId = 0, pageCrcs?: Uint32Array): boolean {
    const { socket } = this;
    if (socket.destroyed || socket.writableEnded) return false;
    const parts = this.options.codec.encode(message, requestId, { checksum: this.frameChecksum, lastPartCrcs: pageCrcs });
    let frameBytes = 0;
    for (const part of parts) frameBytes += part.length;
    this.options.onQueued?.(frameBytes);
    if (this.unflushedBytes === 0) this.lastWriteProgressAt = performance.now();
    this.unflushedBytes += frameBytes;
    this.bytesSent += frameBytes;
    let room = true;
    socket.cork();
    for (const part of parts) room = socket.write(part, () => this.flushed(part.length)) && room;
    socket.uncork();
    if (!room) this.blockedSince ??= performance.now();
    return room;
  }

  /** Write a message; resolves when the socket can take more (its buffer drained), rejects once the connection is over. */
  async send(message: M, requestId = 0, pageCrcs?: Uint32Array): Promise<void> {
    if (this.ended) throw new ConnectionEndedError(this.name, this.endErrorValue);
    if (!this.write(message, requestId, pageCrcs)) await this.drained();
  }

  /** Resolves once the socket's buffer has room; rejects if the connection ends first. */
  drained(): Promise<void> {
    if (this.ended) return Promise.reject(new ConnectionEndedError(this.name, this.endErrorValue));
    if (!this.socket.writableNeedDrain) return Promise.resolve();
    return new Promise((resolve, reject) => {
      this.drainWaiters.push(() => (this.ended ? reject(new ConnectionEndedError(this.name, this.endErrorValue)) : resolve()));
    });
  }

  // ---- requests ---------------------------------------------------------------

  /** Requests sent and not yet answered. */
  get pendingCount(): number {
    return this.outstanding.size;
  }

  isPending(requestId: number): boolean {
    return this.outstanding.has(requestId);
  }

  /** What the role keeps with an outstanding request. */
  pendingContext(requestId: number): C | undefined {
    return this.outstanding.get(requestId)?.context;
  }

  *pending(): IterableIterator<PendingRequest<C>> {
    for (const [requestId, o] of this.outstanding) yield { requestId, type: o.type, sentAt: o.sentAt, context: o.context };
  }

  /**
   * Send a request; its reply goes to onReply. Returns its id. Nothing is
   * sent on a connection that is over (the id is returned all the same: the
   * role hears of the end through 'end').
   */
  request(message: M, options: RequestOptions<M, C>): number {
    return this.register(message, options, undefined);
  }

  /**
   * A request and its one reply: resolves with the reply (one of `expect`, or
   * an ERROR: what a refusal means is the role's to say), rejects if the
   * connection ends first (with what ended it) or the reply does not come in
   * time (the connection is then dropped as lost).
   */
  call(message: M, options: Omit<RequestOptions<M, C>, 'onReply'>): Promise<M> {
    return new Promise((resolve, reject) => {
      if (this.ended) {
        reject(new ConnectionEndedError(this.name, this.endErrorValue));
        return;
      }
      this.register(message, { ...options, onReply: resolve }, reject);
    });
  }

  /** A PING and its PONG: resolves once the peer has handled everything sent before it (frames are handled in order). */
  roundTrip(timeoutMs?: number): Promise<void> {
    return this.call({ type: 'ping', data: new Uint8Array(0) } as unknown as M, { expect: ['pong'], timeoutMs }).then(() => undefined);
  }

  /** Send a PING unless one is outstanding (a keepalive: its PONG is proof of life, nothing more). */
  ping(): void {
    if (this.ended) return;
    for (const o of this.outstanding.values()) if (o.type === 'ping') return;
    this.request({ type: 'ping', data: new Uint8Array(0) } as unknown as M, { expect: ['pong'] });
  }

  /** Fail every request still waiting with `error` (the role's reason, when it knows better than the socket). */
  failPending(error: Error): void {
    const waiting = [...this.outstanding.values()];
    this.outstanding.clear();
    for (const o of waiting) {
      clearTimeout(o.timer);
      o.onEnd?.(error);
    }
  }

  private register(message: M, options: RequestOptions<M, C>, onEnd: ((error: Error) => void) | undefined): number {
    const requestId = options.requestId ?? this.allocateRequestId();
    // Two requests under one id would take each other's replies.
    if (this.outstanding.has(requestId)) throw new RangeError(`${this.name}: request ${requestId} is already outstanding`);
    const o: Outstanding<M, C> = { type: message.type, expect: options.expect, sentAt: performance.now(), context: options.context, onReply: options.onReply, onEnd, timer: undefined };
    if (options.timeoutMs !== undefined) {
      const { timeoutMs } = options;
      o.timer = setTimeout(() => {
        if (this.outstanding.get(requestId) !== o) return;
        this.destroy(options.timeoutError?.() ?? new ConnectionStalledError(this.name, timeoutMs, `left ${message.type} unanswered for ${timeoutMs} ms`), 'lost');
      }, timeoutMs);
      o.timer.unref();
    }
    this.outstanding.set(requestId, o);
    if (!this.ended) {
      this.send(message, requestId).catch((error: Error) => {
        if (this.outstanding.get(requestId) !== o) return;
        this.outstanding.delete(requestId);
        clearTimeout(o.timer);
        onEnd?.(error);
      });
    }
    return requestId;
  }

  private allocateRequestId(): number {
    for (;;) {
      const id = this.requestIds.next();
      if (!this.outstanding.has(id)) return id;
    }
  }

  // ---- liveness ---------------------------------------------------------------

  /**
   * End the connection with a ConnectionStalledError once nothing at all has
   * arrived for silenceLimitMs. A quarter of that into a silence this side
   * pings (every peer answers), so a healthy but idle peer is never mistaken
   * for a dead one.
   */
  watchLiveness(silenceLimitMs: number, options: { companion?: FramedConnection<M, C> } = {}): void {
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
      if (lifeMs >= silenceLimitMs) this.destroy(new ConnectionStalledError(this.name, Math.round(Math.min(silentMs, lifeMs))), 'lost');
      else if (silentMs >= intervalMs) this.ping();
    }, intervalMs);
    this.livenessTimer.unref();
  }

  // ---- reading ----------------------------------------------------------------

  /**
   * Decode what arrives at most `sliceBytes` per turn of the event loop, for a
   * bulk connection whose backlog must not hold up another connection's
   * frames (libuv reads up to 2 MiB from one socket per turn, and handing
   * each frame on costs more than reading it). Reading chunks, past
   * `pauseAboveBytes` waiting the socket pauses; reading in place, nothing
   * waits in this heap at all (the socket stops reading for the turn).
   */
  decodeInSlices(sliceBytes = 128 << 10, pauseAboveBytes = 4 << 20): void {
    if (this.receive) this.receive.turnBudgetBytes = sliceBytes;
    else this.backlog ??= { chunks: [], bytes: 0, scheduled: false, sliceBytes, pauseAboveBytes };
  }

  /** Stop reading (the role's queue is full: requests stay in the kernel's buffer, and TCP pushes back on the peer). */
  pauseReading(): void {
    this.pause('role');
  }

  resumeReading(): void {
    this.unpause('role');
  }

  /** @internal Where the socket's next read goes: the rest of the payload being received, when it is long enough to be worth a read of its own. */
  readTarget(scratch: Uint8Array): Uint8Array {
    const window = this.decoder.payloadWindow();
    return window !== undefined && window.length >= MIN_DIRECT_READ_BYTES ? window : scratch;
  }

  /** @internal `lengthBytes` arrived in `buffer`: the scratch chunk, or the payload window readTarget() gave. */
  onRead(lengthBytes: number, buffer: Uint8Array, scratch: Uint8Array): void {
    if (this.ended) return;
    this.heard(lengthBytes);
    const { error } = buffer === scratch ? this.decoder.push(buffer.subarray(0, lengthBytes), this.onFrame) : this.decoder.payloadReceived(lengthBytes, this.onFrame);
    if (error) this.violation(error);
  }

  private heard(lengthBytes: number): void {
    this.bytesReceived += lengthBytes;
    this.lastHeardAt = performance.now();
    this.options.onReceived?.(lengthBytes);
  }

  private onChunk(chunk: Buffer): void {
    if (this.ended) return;
    this.heard(chunk.length);
    const backlog = this.backlog;
    if (!backlog) {
      this.decode(chunk);
      return;
    }
    backlog.chunks.push(chunk);
    backlog.bytes += chunk.length;
    if (backlog.bytes > backlog.pauseAboveBytes) this.pause('backlog');
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
    if (backlog.bytes <= backlog.pauseAboveBytes / 2 && !this.ended) this.unpause('backlog');
    this.scheduleSlice();
  }

  private decode(chunk: Uint8Array): void {
    const { error } = this.decoder.push(chunk, this.onFrame);
    if (error) this.violation(error);
  }

  private pause(by: 'backlog' | 'role'): void {
    this.pausedBy.add(by);
    this.socket.pause();
  }

  private unpause(by: 'backlog' | 'role'): void {
    if (!this.pausedBy.delete(by) || this.pausedBy.size > 0 || this.ended) return;
    this.socket.resume();
  }

  /** Frame by frame, as each is decoded: a HELLO handled here can raise the payload limit for the frames behind it in the same read. */
  private readonly onFrame = (frame: Frame): void => {
    if (this.ended) return;
    this.lastFrameAt = performance.now();
    let message: M;
    try {
      message = this.options.codec.decode(frame);
    } catch (error) {
      if (error instanceof ProtocolError) this.violation(error);
      else this.destroy(error as Error, 'lost');
      return;
    }
    const { requestId } = frame;
    try {
      if (this.answersPings && message.type === 'ping') {
        this.pingsAnswered++;
        this.write({ type: 'pong', data: (message as unknown as { data: Uint8Array }).data } as unknown as M, requestId);
        return;
      }
      if ((this.options.isReply ?? isPong)(message, requestId)) {
        this.matchReply(message, frame);
        return;
      }
      this.emit('message', message, requestId, frame);
    } catch (error) {
      // The connection boundary: whatever a role's handler throws ends this connection alone.
      if (error instanceof ProtocolError) this.violation(error);
      else this.destroy(error as Error, 'lost');
    }
  };

  private matchReply(reply: M, frame: Frame): void {
    const { requestId } = frame;
    const context = { frameType: frame.type, requestId };
    const o = this.outstanding.get(requestId);
    if (o === undefined) {
      return this.violation(new ProtocolError('EPROTO_UNSOLICITED', `a ${describeType(frame.type)} for request ${requestId}, which was never made or is already answered`, context));
    }
    if (reply.type !== 'error' && !o.expect.includes(reply.type)) {
      return this.violation(new ProtocolError('EPROTO_MISMATCH', `request ${requestId} (${o.type}) was answered with ${reply.type}, not ${o.expect.join(' or ')}`, context));
    }
    clearTimeout(o.timer);
    // Still outstanding while the role checks the reply: one it refuses ends the connection with the
    // request listed among those unanswered (to be sent again elsewhere), not lost with the frame.
    o.onReply?.(reply, frame);
    if (this.outstanding.get(requestId) === o) this.outstanding.delete(requestId);
  }

  // ---- ending -----------------------------------------------------------------

  /** The peer broke the protocol: nothing more of it is read; the role's goodbye (if any) is flushed, then the connection closes. */
  violation(error: ProtocolError): void {
    if (this.ended) return;
    const goodbye = this.options.goodbye?.(error);
    if (goodbye === undefined) {
      this.destroy(error, 'violation');
      return;
    }
    this.write(goodbye, 0);
    this.close(error, 'violation', GOODBYE_FLUSH_MS);
  }

  /** End the connection, flushing what was written first (a peer that does not take it within flushMs is not waited for). */
  close(error?: Error, kind: ConnectionEndKind = 'closed', flushMs = DEFAULT_CLOSE_FLUSH_MS): void {
    if (this.ended) return;
    this.socket.end();
    // Read on to the peer's end (or the timer), so the socket closes.
    this.pausedBy.clear();
    this.socket.resume();
    this.closeTimer = setTimeout(() => this.socket.destroy(), flushMs);
    this.closeTimer.unref();
    this.finish(error, kind);
  }

  /** Drop the connection at once, without flushing (a cut, a hostile peer, a peer that does not read). */
  destroy(error?: Error, kind: ConnectionEndKind = error ? 'lost' : 'closed'): void {
    this.socket.destroy();
    this.finish(error, kind);
  }

  private peerClosed(): void {
    if (this.ended) return;
    if (this.backlog) this.decodeSlice(Infinity);
    this.finish(undefined, 'lost');
  }

  private flushed(bytes: number): void {
    if (this.unflushedReleased) return;
    this.unflushedBytes -= bytes;
    this.lastWriteProgressAt = performance.now();
    this.options.onFlushed?.(bytes);
  }

  private releaseDrainWaiters(): void {
    const waiters = this.drainWaiters.splice(0);
    for (const waiter of waiters) waiter();
  }

  private finish(error: Error | undefined, kind: ConnectionEndKind): void {
    if (this.ended) return;
    this.ended = true;
    this.endErrorValue = error;
    clearInterval(this.livenessTimer);
    if (this.backlog) {
      this.backlog.chunks.length = 0;
      this.backlog.bytes = 0;
    }
    this.releaseDrainWaiters();
    this.emit('end', error, kind);
    // After the role heard why (it may have failed its requests with its own reason already).
    this.failPending(error ?? new ConnectionEndedError(this.name));
  }
}

function isPong(message: { type: string }): boolean {
  return message.type === 'pong';
}

/** The page protocol's messages as a FrameCodec (for a role that takes any of them, and checks which itself). */
export const pageMessageCodec: FrameCodec<Message> = {
  decode: decodeMessage,
  encode: encodeMessageParts,
};

/** The frame's block CRC32Cs that cover exactly its last `dataBytes` (whole blocks), if the decoder computed them (a CRC32C frame). */
export function dataBlockCrcs(frame: Frame, dataBytes: number): Uint32Array | undefined {
  const blocks = dataBytes / CRC_BLOCK_BYTES;
  if (!frame.blockCrcs || !Number.isInteger(blocks) || frame.blockCrcs.length < blocks) return undefined;
  return frame.blockCrcs.subarray(frame.blockCrcs.length - blocks);
}
