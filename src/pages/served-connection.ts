// One client connection of the page server: the requests it has queued and
// in flight, over a framed connection (transport/framed-connection.ts: the
// socket, its decoder, PINGs answered, the bytes the kernel has not taken). Every byte it sends is treated as
// hostile: lengths are bounded before anything is allocated, every field is
// range-checked against the image before it is used, and whatever goes wrong
// ends this connection only.
//
// The states and their legal moves, in one place:
//
//   awaiting-hello ──valid HELLO──▶ serving
//         │                           │
//         └── refused / timeout / hangup / protocol error / server closing ──▶ closing ──socket closed──▶ closed
//             idle / evicted for room / busy on arrival / stalled (never reads)
//
// Backpressure: at most maxInFlight reads of a connection run at the source;
// further requests wait in its queue. The socket is paused (requests stay in
// the kernel's buffer and TCP pushes back on the client) while that queue
// holds maxQueued requests or the replies fill the socket's write buffer. The
// queue is there so that a CANCEL or PING sent behind a burst of READs is
// still read and answered while the reads run: pausing the moment the
// in-flight limit is reached would leave every CANCEL unread until a read
// completed, which is when it no longer helps. One socket read may decode
// past the bound: the requests past it are answered BUSY, so a connection
// never has more than maxInFlight + maxQueued requests outstanding.
//
// Memory: a request starts only when the server's ReplyBudget has room for
// its reply (reply-budget.ts): a reply's bytes are held from the moment its
// read starts until the kernel has taken the last of them from the socket. A
// client that asks and never reads thus stops being served (its requests
// wait, then its socket is not read), not the server; and it is closed when
// its socket takes nothing for sendTimeoutMs (as nginx's send_timeout), or
// sooner if it holds more than its fair share while others wait for room.
//
// Liveness: a serving connection with nothing queued, running or unwritten
// that has sent no frame (a request, a PING) for idleTimeoutMs is closed with
// ERROR SHUTTING_DOWN (as HTTP/2's GOAWAY on an idle connection: reconnect
// when needed); the server sweeps for these (checkLiveness).
import type { LatencyHistogram } from '../stats/latency-histogram.js';
import { EventEmitter } from 'node:events';
import type { Socket } from 'node:net';
import {
  CHECKED_PAGES_HEADER_BYTES,
  CRC_BLOCK_BYTES,
  MIN_PAGE_SERVICE_VERSION,
  PAGE_CHECKSUM_BYTES,
  PAGE_SERVICE_VERSION,
  PRE_HELLO_MAX_PAYLOAD_BYTES,
  ProtocolError,
  ZERO_MAP_HEADER_BYTES,
  METADATA_HEADER_BYTES,
  MAX_ERROR_TEXT_BYTES,
  FRAME_HEADER_BYTES,
  acceptHello,
  frameChecksumOf,
  type Frame,
  type HelloMessage,
  type InfoMessage,
  type Message,
  type ReadMessage,
  type RoleName,
  type WireErrorName,
} from '../protocol/index.js';
import { SourceReadError, isAbortError, type PageSource } from '../sources/page-source.js';
import { FramedConnection, pageMessageCodec, type ConnectionEndKind } from '../transport/index.js';
import type { BudgetHolder, ReplyBudget } from './reply-budget.js';
import type { ZeroMap } from './zero-map.js';
import type { PageChecksums } from './page-checksums.js';

/** What every connection of one server serves. */
export interface PageService {
  source: PageSource;
  info: InfoMessage;
  metadata: Uint8Array;
  zeroMap: ZeroMap | undefined;
  /** The checksums sent with the pages of every READ (CHECKED_PAGES); info.pageChecksum names their algorithm. */
  pageChecksums: PageChecksums;
  /** The largest payload this server receives (announced in its HELLO). */
  receiveMaxPayloadBytes: number;
  maxInFlight: number;
  /** Requests a connection may have waiting for an in-flight slot before its socket is paused. */
  maxQueued: number;
  helloTimeoutMs: number;
  /** A serving connection with nothing outstanding that sends no frame for this long is closed. */
  idleTimeoutMs: number;
  /** A connection whose socket takes none of its reply bytes for this long is closed. */
  sendTimeoutMs: number;
  /** The server's bound on reply bytes held, shared by every connection. */
  budget: ReplyBudget;
  /** Every connection's successful source reads, timed (the server's read-latency metric). */
  readLatency: LatencyHistogram;
}

export type ServedConnectionState = 'awaiting-hello' | 'serving' | 'closing' | 'closed';

const LEGAL_MOVES: Readonly<Record<ServedConnectionState, readonly ServedConnectionState[]>> = {
  'awaiting-hello': ['serving', 'closing'],
  serving: ['closing'],
  closing: ['closed'],
  closed: [],
};

export type ConnectionEndReason =
  /** The client closed its end. */
  | 'hangup'
  /** Its HELLO was refused (wrong magic, version or role). */
  | 'refused'
  /** It sent no HELLO in time. */
  | 'timeout'
  /** It broke the protocol (bad frame, malformed message, a message not allowed). */
  | 'protocol-error'
  /** The socket failed, or this code did. */
  | 'failed'
  /** The server shut down. */
  | 'server-closed'
  /** It sent no frame for idleTimeoutMs with nothing outstanding. */
  | 'idle'
  /** Closed, quiet, to make room for a new connection when the server (or its peer address) was at its limit. */
  | 'evicted'
  /** Refused on arrival: the server (or its peer address) was at its limit and no connection was quiet. */
  | 'busy'
  /** Its socket took none of its replies for sendTimeoutMs, or it held more than its share while others waited. */
  | 'stalled';

/** The roles a page server takes. Migration roles are refused (WRONG_ROLE) until a server speaks them. */
const PAGE_CLIENT_ROLES: readonly RoleName[] = ['page-client-urgent', 'page-client-bulk'];

export interface ServedConnectionSummary {
  id: number;
  /** "127.0.0.1:54012". */
  remoteAddress: string;
  role: RoleName | undefined;
  /** The session id in hex (a client's urgent and bulk connections share it). */
  sessionId: string | undefined;
  state: ServedConnectionState;
  endReason: ConnectionEndReason | undefined;
  endError: string | undefined;
  connectedMs: number;
  /** Requests received (READ, GET_*, PING, CANCEL). */
  requests: number;
  reads: number;
  /** Page bytes sent in PAGES replies. */
  bytesServed: number;
  /** Every byte written, frame headers included. */
  bytesSent: number;
  /** ERROR replies sent (out-of-range requests, source failures, cancellations, the refusal that ended it). */
  errorsSent: number;
  cancelled: number;
  sourceErrors: number;
  /** The most reads that were in flight at once. */
  peakInFlight: number;
}

interface QueuedRequest {
  requestId: number;
  message: Exclude<Message, { type: 'hello' | 'error' | 'ping' | 'pong' | 'cancel' | 'info' | 'metadata' | 'zero-map' | 'pages' | 'push' | 'checked-pages' }>;
}

interface RunningRead {
  controller: AbortController;
  /** Its one reply was sent (PAGES, or an ERROR: CANCELLED included). */
  answered: boolean;
  /** Budget held for its reply until the reply is written or the read abandoned; 0 once given back. */
  reservedBytes: number;
}

export interface ServedConnectionEvents {
  hello: [];
  notice: [message: string];
  error: [error: Error];
  gone: [summary: ServedConnectionSummary];
}

/** How long a closing connection may take to flush its last frames before it is destroyed. */
const CLOSE_FLUSH_MS = 2000;

const EMPTY = new Uint8Array(0);
/** Background READs one connection starts per turn of the event loop before it lets demand READs in (yieldToDemand). */
const BACKGROUND_TURN_BUDGET_BYTES = 512 * 1024;

export class ServedConnection extends EventEmitter<ServedConnectionEvents> {
  private stateValue: ServedConnectionState = 'awaiting-hello';
  /** The framed connection under this role: socket, decoder, writes and what the kernel has not taken of them. */
  private readonly link: FramedConnection<Message>;
  private readonly queue: QueuedRequest[] = [];
  /** requestIds queued or in flight: a second request with one of them is a protocol violation. */
  private readonly outstanding = new Set<number>();
  private readonly running = new Map<number, RunningRead>();
  private peerMaxPayloadBytes = PRE_HELLO_MAX_PAYLOAD_BYTES;
  private readonly startedAt = performance.now();
  private endedAt: number | undefined;
  private helloTimer: NodeJS.Timeout | undefined;
  /** A pump() is due once the frames of the current socket read are all queued. */
  private pumpScheduled = false;
  /** Bytes of background READs started since the last yield to demand (yieldToDemand). */
  private backgroundTurnBytes = 0;
  private yieldScheduled = false;
  /** This connection as the ReplyBudget sees it. */
  private readonly holder: BudgetHolder = {
    onRoom: () => this.guard(() => this.pump()),
    // The stall clock: the last time the kernel took one of this connection's writes, or its first unwritten byte was queued.
    stalledForMs: (nowMs) => (this.stateValue === 'serving' && this.link.unflushedBytes > 0 ? nowMs - this.link.lastWriteProgressAt : undefined),
    evict: (reason) => this.guard(() => this.cutOff(reason)),
  };
  private readonly stats = { requests: 0, reads: 0, bytesServed: 0, errorsSent: 0, cancelled: 0, sourceErrors: 0, peakInFlight: 0 };
  private role: RoleName | undefined;
  private sessionId: string | undefined;
  private endReason: ConnectionEndReason | undefined;
  private endError: string | undefined;
  readonly remoteAddress: string;
  /** The peer's address without its port: what the per-peer connection limit counts. */
  readonly peerHost: string;

  constructor(readonly id: number, socket: Socket, private readonly service: PageService) {
    super();
    this.peerHost = socket.remoteAddress ?? '?';
    this.remoteAddress = `${this.peerHost}:${socket.remotePort ?? '?'}`;
    this.link = new FramedConnection<Message>(socket, {
      name: `page client ${this.remoteAddress}`,
      codec: pageMessageCodec,
      // A page server asks its clients nothing: every frame is a request (a PONG among them is out of place).
      isReply: () => false,
      // Until its HELLO a PING is a first frame out of place; after it, answered by the layer (and counted as a request).
      answersPings: false,
      // A client that broke the protocol is told why (an ERROR on request 0) before the connection closes.
      goodbye: (error) => {
        this.stats.errorsSent++;
        return { type: 'error', code: error.wireCode, text: boundedText(error.message, MAX_ERROR_TEXT_BYTES) };
      },
      // Every frame's bytes are held in the server's reply budget until the kernel takes them (or they go with the socket).
      onQueued: (bytes) => this.service.budget.charge(this.holder, bytes),
      onFlushed: (bytes) => {
        this.service.budget.release(this.holder, bytes);
        if (this.stateValue === 'serving') this.guard(() => this.pump());
      },
    });
  }

  get state(): ServedConnectionState {
    return this.stateValue;
  }

  /** Reply bytes this connection holds now: reads under way and replies the kernel has not taken. */
  get queuedReplyBytes(): number {
    return this.service.budget.heldBy(this.holder);
  }

  /**
   * How long it has been quiet, if closing it would lose nothing: still
   * without HELLO, or serving with nothing queued, running or unwritten.
   * undefined for a connection doing something.
   */
  quietForMs(nowMs: number): number | undefined {
    if (this.stateValue === 'awaiting-hello') return nowMs - this.startedAt;
    if (this.stateValue === 'serving' && this.isIdle) return nowMs - this.link.lastFrameAt;
    return undefined;
  }

  /** Close it if it has been idle for idleTimeoutMs, or its socket has taken nothing for sendTimeoutMs (the server's sweep calls this). */
  checkLiveness(nowMs: number): void {
    if (this.stateValue !== 'serving') return;
    const { idleTimeoutMs, sendTimeoutMs } = this.service;
    if (this.link.unflushedBytes > 0 && nowMs - this.link.lastWriteProgressAt >= sendTimeoutMs) {
      this.cutOff(`its socket took none of its ${this.link.unflushedBytes} unwritten reply bytes for ${sendTimeoutMs} ms`);
    } else if (this.isIdle && nowMs - this.link.lastFrameAt >= idleTimeoutMs) {
      const why = `no request for ${idleTimeoutMs} ms: this idle connection is closed (reconnect when needed)`;
      this.sendError(0, 'SHUTTING_DOWN', why);
      this.finish('idle', why);
    }
  }

  /** Close this quiet connection to make room for a new one. */
  evictForRoom(why: string): void {
    if (this.stateValue !== 'awaiting-hello' && this.stateValue !== 'serving') return;
    this.sendError(0, 'SHUTTING_DOWN', why);
    this.finish('evicted', why);
  }

  /** Refuse this new connection: there is no room for it. */
  refuseBusy(why: string): void {
    if (this.stateValue !== 'awaiting-hello') return;
    this.sendError(0, 'BUSY', why);
    this.finish('busy', why);
  }

  private get isIdle(): boolean {
    return this.queue.length === 0 && this.running.size === 0 && this.link.unflushedBytes === 0;
  }

  start(): void {
    const { link } = this;
    link.on('message', (message, requestId, frame) => this.guard(() => this.onMessage(message, requestId, frame)));
    link.on('end', (error, kind) => this.guard(() => this.onLinkEnd(error, kind)));
    link.on('closed', () => this.onClose());
    link.on('drain', () => this.guard(() => this.pump()));
    this.helloTimer = setTimeout(() => this.guard(() => {
      if (this.stateValue !== 'awaiting-hello') return;
      this.sendError(0, 'UNEXPECTED_MESSAGE', `no HELLO within ${this.service.helloTimeoutMs} ms`);
      this.finish('timeout', `no HELLO within ${this.service.helloTimeoutMs} ms`);
    }), this.service.helloTimeoutMs);
  }

  /** End the connection: the client is told the server is going away, and reads still running are abandoned. */
  close(): void {
    if (this.stateValue === 'closing' || this.stateValue === 'closed') return;
    this.sendError(0, 'SHUTTING_DOWN', 'the page server is shutting down');
    this.finish('server-closed');
  }

  summary(): ServedConnectionSummary {
    return {
      id: this.id,
      remoteAddress: this.remoteAddress,
      role: this.role,
      sessionId: this.sessionId,
      state: this.stateValue,
      endReason: this.endReason,
      endError: this.endError,
      connectedMs: Math.round((this.endedAt ?? performance.now()) - this.startedAt),
      ...this.stats,
      // PINGs are answered by the connection layer; each is a request all the same.
      requests: this.stats.requests + this.link.pingsAnswered,
      bytesSent: this.link.bytesSent,
    };
  }

  private move(to: ServedConnectionState): void {
    if (!LEGAL_MOVES[this.stateValue].includes(to)) throw new Error(`connection ${this.id}: ${this.stateValue} -> ${to} is not a legal move`);
    this.stateValue = to;
  }

  /** The connection boundary: whatever this code throws ends this client alone, logged. */
  private guard(fn: () => void): void {
    try {
      fn();
    } catch (error) {
      this.emit('error', error as Error);
      if (this.stateValue === 'awaiting-hello' || this.stateValue === 'serving') {
        this.sendError(0, 'INTERNAL', `the server failed serving this connection: ${(error as Error).message}`);
        this.finish('failed', (error as Error).message);
      }
    }
  }

  /** The connection is over for the layer: the peer closed it or broke the protocol, the socket failed, or this side closed it. */
  private onLinkEnd(error: Error | undefined, kind: ConnectionEndKind): void {
    if (this.stateValue !== 'awaiting-hello' && this.stateValue !== 'serving') return;
    if (kind === 'violation') {
      // The layer said why to the client (goodbye) before closing.
      this.emit('error', error!);
      this.finish('protocol-error', error!.message);
      return;
    }
    const code = (error as NodeJS.ErrnoException | undefined)?.code;
    // A reset or a broken pipe is a client that went away; anything else is reported.
    if (error === undefined || code === 'ECONNRESET' || code === 'EPIPE') {
      this.finish('hangup', error?.message ?? this.link.truncation()?.message);
      return;
    }
    this.emit('error', error);
    this.finish('failed', error.message);
  }

  private onClose(): void {
    if (this.stateValue === 'closed') return;
    if (this.stateValue !== 'closing') this.finish('hangup');
    this.move('closed');
    this.endedAt = performance.now();
    this.emit('gone', this.summary());
  }

  /** One request, decoded and either answered at once or queued (the queue is pumped once the socket read's frames are all in). */
  private onMessage(message: Message, requestId: number, frame: Frame): void {
    if (this.stateValue !== 'awaiting-hello' && this.stateValue !== 'serving') return;
    this.schedulePump();
    if (this.stateValue === 'awaiting-hello') {
      if (message.type !== 'hello') return this.refuse(new ProtocolError('EPROTO_UNEXPECTED', `the first frame must be a HELLO, not ${message.type}`, { frameType: frame.type, requestId }));
      return this.onHello(message);
    }
    switch (message.type) {
      case 'ping':
        // Answered by the connection layer once serving (answersPings): never seen here.
        return;
      case 'cancel':
        this.stats.requests++;
        this.onCancel(message.readRequestId);
        return;
      case 'error':
        // A client reporting a problem with what it was sent; it closes next.
        this.emit('notice', `the client reports ${message.code}: ${message.text}`);
        return;
      case 'get-info':
      case 'get-metadata':
      case 'get-zero-map':
      case 'read':
        this.stats.requests++;
        if (this.outstanding.has(requestId)) {
          return this.refuse(new ProtocolError('EPROTO_REQUEST_ID', `request ${requestId} is already outstanding`, { frameType: frame.type, requestId }));
        }
        if (this.queue.length >= this.service.maxQueued) {
          // Decoded from the socket read that filled the queue (the socket is paused now): answered, not held.
          this.sendError(requestId, 'BUSY', `${this.queue.length} requests of this connection are waiting already`);
          return;
        }
        this.outstanding.add(requestId);
        this.queue.push({ requestId, message });
        return;
      case 'hello':
        return this.refuse(new ProtocolError('EPROTO_UNEXPECTED', 'a second HELLO on one connection', { frameType: frame.type, requestId }));
      case 'pong':
      case 'info':
      case 'metadata':
      case 'zero-map':
      case 'pages':
      case 'push':
      case 'checked-pages':
        return this.refuse(new ProtocolError('EPROTO_UNEXPECTED', `a page server is not sent ${message.type} messages`, { frameType: frame.type, requestId }));
      default: {
        const never: never = message;
        throw new TypeError(`unhandled message ${JSON.stringify(never)}`);
      }
    }
  }

  private onHello(hello: HelloMessage): void {
    let version: number;
    try {
      // Version 2 on: a version-1 client would take pages without their checksums.
      version = acceptHello(hello, { roles: PAGE_CLIENT_ROLES, minVersion: MIN_PAGE_SERVICE_VERSION, maxVersion: PAGE_SERVICE_VERSION });
    } catch (error) {
      if (!(error instanceof ProtocolError)) throw error;
      this.role = hello.role;
      this.sendError(0, error.wireCode, error.message);
      this.emit('error', error);
      this.finish('refused', error.message);
      return;
    }
    clearTimeout(this.helloTimer);
    this.role = hello.role;
    this.sessionId = Buffer.from(hello.sessionId).toString('hex');
    this.peerMaxPayloadBytes = hello.maxPayloadBytes;
    this.link.maxPayloadBytes = this.service.receiveMaxPayloadBytes;
    this.link.answersPings = true;
    this.move('serving');
    this.send({
      type: 'hello',
      version,
      minVersion: version,
      role: 'page-server',
      sessionId: hello.sessionId,
      maxPayloadBytes: this.service.receiveMaxPayloadBytes,
      features: 0,
    }, 0);
    // After the answer: a HELLO always carries CRC32, so a peer of any version can read it.
    this.link.frameChecksum = frameChecksumOf(version);
    this.emit('hello');
  }

  private onCancel(readRequestId: number): void {
    const queuedAt = this.queue.findIndex((q) => q.requestId === readRequestId && q.message.type === 'read');
    if (queuedAt !== -1) {
      this.queue.splice(queuedAt, 1);
      this.outstanding.delete(readRequestId);
      this.stats.cancelled++;
      this.sendError(readRequestId, 'CANCELLED', 'cancelled before it was read');
      return;
    }
    const running = this.running.get(readRequestId);
    if (running === undefined || running.answered) return;
    // The source may stop early or finish; either way the one reply is this.
    running.answered = true;
    running.controller.abort();
    this.stats.cancelled++;
    this.sendError(readRequestId, 'CANCELLED', 'cancelled while it was being read');
  }

  /** Start queued requests while the connection and the server's budget have room; pause the socket while its queue is full. */
  private pump(): void {
    while (this.stateValue === 'serving' && this.queue.length > 0 && !this.link.writeBlocked) {
      const next = this.queue[0]!;
      if (next.message.type === 'read' && this.running.size >= this.service.maxInFlight) break;
      if (next.message.type === 'read' && next.message.priority === 'background' && this.backgroundTurnBytes >= BACKGROUND_TURN_BUDGET_BYTES) {
        this.yieldToDemand();
        break;
      }
      // No room: it waits for this connection's replies to drain, or for the budget's onRoom.
      const costBytes = this.replyCostBytes(next);
      if (this.service.budget.take(this.holder, costBytes) !== 'taken') break;
      this.queue.shift();
      if (next.message.type === 'read' && next.message.priority === 'background') this.backgroundTurnBytes += next.message.lengthBytes;
      this.serve(next, costBytes);
    }
    const full = this.queue.length >= this.service.maxQueued || this.link.writeBlocked;
    if (this.stateValue !== 'serving' && this.stateValue !== 'awaiting-hello') return;
    if (full) this.link.pauseReading();
    else this.link.resumeReading();
  }

  /**
   * Background READs whose pages are in the page cache are answered in the
   * turn that reads them (no thread pool in between), so one socket read of
   * sixteen READs is ~4 ms of checking and writing before the event loop
   * looks at another socket. Past BACKGROUND_TURN_BUDGET_BYTES in a turn the
   * rest waits for the turn's check phase: a demand READ that came on the
   * urgent connection meanwhile is read, and served, first.
   */
  private yieldToDemand(): void {
    if (this.yieldScheduled) return;
    this.yieldScheduled = true;
    setImmediate(() => {
      this.yieldScheduled = false;
      this.backgroundTurnBytes = 0;
      this.guard(() => this.pump());
    });
  }

  private schedulePump(): void {
    if (this.pumpScheduled) return;
    this.pumpScheduled = true;
    queueMicrotask(() => {
      this.pumpScheduled = false;
      this.guard(() => this.pump());
    });
  }

  /** The most bytes the reply to `request` can take, its frame header included: what is held for it before it starts. */
  private replyCostBytes({ message }: QueuedRequest): number {
    const { info } = this.service;
    switch (message.type) {
      case 'read':
        // A READ past maxReadBytes is answered with an ERROR.
        return FRAME_HEADER_BYTES + Math.max(checkedPagesPayloadBytes(Math.min(message.lengthBytes, info.maxReadBytes), info.pageSizeBytes), SMALL_REPLY_BYTES);
      case 'get-metadata':
        return FRAME_HEADER_BYTES + Math.max(METADATA_HEADER_BYTES + this.metadataChunkBytes(message.offset, message.maxLengthBytes), SMALL_REPLY_BYTES);
      case 'get-zero-map':
        return FRAME_HEADER_BYTES + Math.max(ZERO_MAP_HEADER_BYTES + Math.ceil(message.pageCount / 8), SMALL_REPLY_BYTES);
      case 'get-info':
        return FRAME_HEADER_BYTES + SMALL_REPLY_BYTES;
      default: {
        const never: never = message;
        throw new TypeError(`unhandled request ${JSON.stringify(never)}`);
      }
    }
  }

  /** A METADATA reply's length: what was asked, what is left, what fits the client's limit, and at most maxReadBytes (the client asks again for the rest). */
  private metadataChunkBytes(offset: number, maxLengthBytes: number): number {
    const { metadata, info } = this.service;
    return Math.max(0, Math.min(maxLengthBytes, metadata.length - offset, this.peerMaxPayloadBytes - METADATA_HEADER_BYTES, info.maxReadBytes));
  }

  private serve(request: QueuedRequest, costBytes: number): void {
    const { requestId, message } = request;
    const { info } = this.service;
    if (message.type !== 'read') {
      // Answered at once: what was held for it becomes the reply written (send counts it until the kernel takes it).
      this.service.budget.release(this.holder, costBytes);
    }
    switch (message.type) {
      case 'get-info':
        this.outstanding.delete(requestId);
        this.send(info, requestId);
        return;
      case 'get-metadata': {
        this.outstanding.delete(requestId);
        const { metadata } = this.service;
        if (message.offset > metadata.length) {
          this.sendError(requestId, 'OUT_OF_RANGE', `metadata offset ${message.offset} is past its ${metadata.length} bytes`);
          return;
        }
        const lengthBytes = this.metadataChunkBytes(message.offset, message.maxLengthBytes);
        this.send({ type: 'metadata', offset: message.offset, totalLengthBytes: metadata.length, bytes: metadata.subarray(message.offset, message.offset + lengthBytes) }, requestId);
        return;
      }
      case 'get-zero-map': {
        this.outstanding.delete(requestId);
        const { zeroMap } = this.service;
        if (zeroMap === undefined) {
          this.sendError(requestId, 'BAD_REQUEST', 'this server has no zero map (its INFO says so)');
          return;
        }
        if (message.firstPage + message.pageCount > zeroMap.pageCount) {
          this.sendError(requestId, 'OUT_OF_RANGE', `pages [${message.firstPage}, ${message.firstPage + message.pageCount}) are past the image's ${zeroMap.pageCount}`);
          return;
        }
        if (ZERO_MAP_HEADER_BYTES + Math.ceil(message.pageCount / 8) > this.peerMaxPayloadBytes) {
          this.sendError(requestId, 'TOO_LARGE', `a map of ${message.pageCount} pages would pass the ${this.peerMaxPayloadBytes}-byte limit of this client's HELLO`);
          return;
        }
        this.send({ type: 'zero-map', firstPage: message.firstPage, pageCount: message.pageCount, bitmap: zeroMap.slice(message.firstPage, message.pageCount) }, requestId);
        return;
      }
      case 'read':
        this.startRead(requestId, message, costBytes);
        return;
      default: {
        const never: never = message;
        throw new TypeError(`unhandled request ${JSON.stringify(never)}`);
      }
    }
  }

  private startRead(requestId: number, read: ReadMessage, costBytes: number): void {
    const { info, source, budget } = this.service;
    const refuse = (code: WireErrorName, text: string): void => {
      budget.release(this.holder, costBytes);
      this.outstanding.delete(requestId);
      this.sendError(requestId, code, text);
    };
    if (read.offset % info.pageSizeBytes !== 0 || read.lengthBytes % info.pageSizeBytes !== 0) {
      return refuse('OUT_OF_RANGE', `[${read.offset}, +${read.lengthBytes}) is off the image's ${info.pageSizeBytes}-byte page grid`);
    }
    if (read.offset + read.lengthBytes > info.imageSizeBytes) {
      return refuse('OUT_OF_RANGE', `[${read.offset}, ${read.offset + read.lengthBytes}) is past the end of the ${info.imageSizeBytes}-byte image`);
    }
    if (read.lengthBytes > info.maxReadBytes) return refuse('TOO_LARGE', `a READ of ${read.lengthBytes} bytes; this server reads at most ${info.maxReadBytes}`);
    if (checkedPagesPayloadBytes(read.lengthBytes, info.pageSizeBytes) > this.peerMaxPayloadBytes) {
      return refuse('TOO_LARGE', `${read.lengthBytes} bytes would pass the ${this.peerMaxPayloadBytes}-byte limit of this client's HELLO`);
    }
    this.stats.reads++;
    const running: RunningRead = { controller: new AbortController(), answered: false, reservedBytes: costBytes };
    /** Give back what was held for the reply: just before the reply is written (which counts itself), or when the read is abandoned. */
    const unreserve = (): void => {
      budget.release(this.holder, running.reservedBytes);
      running.reservedBytes = 0;
    };
    this.running.set(requestId, running);
    this.stats.peakInFlight = Math.max(this.stats.peakInFlight, this.running.size);
    let target: Uint8Array = EMPTY;
    let reading: Promise<void>;
    const readStarted = performance.now();
    try {
      // Pages wholly in the page cache are sent from there (checked by the source on the way): no read
      // into a buffer, no buffer. The view lives as long as the source, which outlives every connection.
      const mapped = source.mappedPages?.(read.offset, read.lengthBytes);
      if (mapped) {
        target = mapped;
        reading = Promise.resolve();
      } else {
        // Every byte is written by the source before the reply is sent, so the buffer need not be zeroed.
        target = Buffer.allocUnsafeSlow(read.lengthBytes);
        // A demand READ is a guest waiting: served here and now when the source can (a page-cache hit),
        // not queued behind a bulk stream's reads in libuv's four-thread pool.
        reading = read.priority === 'demand' && source.readSync?.(read.offset, read.lengthBytes, target)
          ? Promise.resolve()
          : source.read(read.offset, read.lengthBytes, target, { priority: read.priority, signal: running.controller.signal });
      }
    } catch (error) {
      reading = Promise.reject(error);
    }
    reading.then(
      () => this.guard(() => {
        this.service.readLatency.record((performance.now() - readStarted) * 1000);
        if (running.answered || this.stateValue !== 'serving') return;
        running.answered = true;
        unreserve();
        this.stats.bytesServed += read.lengthBytes;
        const checksums = this.service.pageChecksums.of(read.offset, target, info.pageSizeBytes);
        // The image's checksums are the bytes' own: the source checked each stored page against them as it read it.
        const pageCrcs = this.service.pageChecksums.algorithm === 'crc32c' && info.pageSizeBytes === CRC_BLOCK_BYTES ? checksums : undefined;
        this.send({ type: 'checked-pages', offset: read.offset, checksums, data: target }, requestId, pageCrcs);
      }),
      (error: unknown) => this.guard(() => {
        if (running.answered || this.stateValue !== 'serving') return;
        running.answered = true;
        unreserve();
        if (isAbortError(error)) {
          this.sendError(requestId, 'CANCELLED', 'the source abandoned the read');
          return;
        }
        this.stats.sourceErrors++;
        this.emit('notice', `READ [${read.offset}, +${read.lengthBytes}) failed: ${(error as Error).message}`);
        if (error instanceof SourceReadError) {
          this.sendError(requestId, error.failure === 'fatal' ? 'SOURCE_FAILED' : 'SOURCE_UNAVAILABLE', error.message);
        } else {
          this.sendError(requestId, 'INTERNAL', `the source failed: ${(error as Error).message ?? error}`);
        }
      }),
    ).finally(() => this.guard(() => {
      // Cancelled, or the connection closed: the target buffer is free only now that the source is done with it.
      if (running.reservedBytes > 0) unreserve();
      this.running.delete(requestId);
      this.outstanding.delete(requestId);
      this.pump();
    }));
  }

  /** The connection cannot go on: say why (an ERROR on requestId 0), then close. */
  private refuse(error: ProtocolError): void {
    if (this.stateValue !== 'awaiting-hello' && this.stateValue !== 'serving') return;
    // Said to the client (the goodbye), then onLinkEnd finishes it.
    this.link.violation(error);
  }

  private finish(reason: ConnectionEndReason, error?: string): void {
    if (this.stateValue === 'closing' || this.stateValue === 'closed') return;
    this.move('closing');
    this.endReason = reason;
    this.endError = error;
    clearTimeout(this.helloTimer);
    this.service.budget.withdraw(this.holder);
    for (const running of this.running.values()) {
      running.answered = true;
      running.controller.abort();
    }
    this.queue.length = 0;
    this.outstanding.clear();
    // Flush what was written (the ERROR saying why), then close; a peer that never reads is cut off.
    this.link.close(undefined, 'closed', CLOSE_FLUSH_MS);
  }

  /**
   * Close a connection that does not read what it is sent, at once: no
   * goodbye (it would not read it) and no flush time (its buffers are what is
   * to be freed).
   */
  private cutOff(why: string): void {
    if (this.stateValue !== 'serving' && this.stateValue !== 'awaiting-hello') return;
    this.finish('stalled', why);
    this.link.destroy();
  }

  private sendError(requestId: number, code: WireErrorName, text: string): void {
    this.stats.errorsSent++;
    this.send({ type: 'error', code, text: boundedText(text, MAX_ERROR_TEXT_BYTES) }, requestId);
  }

  /**
   * `pageCrcs`: the CRC32Cs of the pages that end the message (a
   * CHECKED_PAGES' own, when its image's checksum is CRC32C and its pages are
   * CRC_BLOCK_BYTES): a CRC32C frame's checksum is derived from them, and the
   * pages are never read to checksum the frame.
   */
  private send(message: Message, requestId: number, pageCrcs?: Uint32Array): void {
    this.link.write(message, requestId, pageCrcs);
  }
}

/** The payload of a CHECKED_PAGES answering a READ of `lengthBytes`: header, a checksum per page, the pages. */
export function checkedPagesPayloadBytes(lengthBytes: number, pageSizeBytes: number): number {
  return CHECKED_PAGES_HEADER_BYTES + (lengthBytes / pageSizeBytes) * PAGE_CHECKSUM_BYTES + lengthBytes;
}

/** The most an INFO or any ERROR reply takes (an ERROR's text is at most MAX_ERROR_TEXT_BYTES): what is held for a small reply. */
const SMALL_REPLY_BYTES = 4 + MAX_ERROR_TEXT_BYTES;

/** `text` cut to at most `maxBytes` of UTF-8, never inside a character. */
export function boundedText(text: string, maxBytes: number): string {
  if (Buffer.byteLength(text, 'utf8') <= maxBytes) return text;
  const ellipsis = '…';
  let cut = text.slice(0, maxBytes);
  while (Buffer.byteLength(cut + ellipsis, 'utf8') > maxBytes) cut = cut.slice(0, -1);
  return cut + ellipsis;
}
