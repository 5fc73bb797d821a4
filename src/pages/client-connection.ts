// One TCP connection of a page client (RemoteSource): HELLO, then requests
// with their ids, and every frame that comes back checked before anything
// acts on it. The peer is not trusted: a frame with a bad CRC, of an unknown
// type, a reply to a request never made or one that does not match its
// request (another offset, another length, the wrong type, a checksum count
// that is not one per page) is a protocol violation; the connection reports
// it and is dropped, and nothing the frame carried is used. (The pages'
// checksums themselves are checked by the source, which knows the algorithm.)
//
//   opening ──TCP connected, HELLO sent──▶ hello ──server HELLO checked──▶ ready ──▶ closed
//      └───── refused / timeout / lost / violation ─────────────────┴────────────────┘
import { connect, type Socket } from 'node:net';
import {
  DEFAULT_MAX_PAYLOAD_BYTES,
  CRC_BLOCK_BYTES,
  FrameDecoder,
  MIN_PAGE_SERVICE_VERSION,
  PAGE_SERVICE_VERSION,
  PRE_HELLO_MAX_PAYLOAD_BYTES,
  ProtocolError,
  checkHelloAnswer,
  decodeMessage,
  describeType,
  encodeMessageParts,
  frameChecksumOf,
  type CheckedPagesMessage,
  type ErrorMessage,
  type Frame,
  type FrameChecksum,
  type PayloadPool,
  type HelloMessage,
  type InfoMessage,
  type Message,
  type MessageName,
  type RoleName,
} from '../protocol/index.js';
import { PeerRefusedError, PeerUnavailableError } from './errors.js';
import { ConnectionLostError } from '../net/connection-errors.js';

export type ClientConnectionState = 'opening' | 'hello' | 'ready' | 'closed';

/**
 * Why a connection ended: 'lost' (the socket closed or failed, the server
 * said it is going away, or went quiet), 'violation' (the peer broke the
 * protocol: the source counts these and gives up on a peer that keeps doing
 * it), 'closed' (this side closed it).
 */
export type ConnectionLoss = { kind: 'lost' | 'violation' | 'closed'; error: Error };

/** A READ as a connection knows it: the offset and length its reply must carry. */
export interface ReadRequest {
  readonly offset: number;
  readonly lengthBytes: number;
}

export interface ClientConnectionHandlers<R extends ReadRequest> {
  /**
   * A READ's reply, already checked against the request: CHECKED_PAGES with
   * its offset, length and one checksum per page, or an ERROR. `dataCrcs`: the
   * CRC32C of each CRC_BLOCK_BYTES block of the reply's data, computed while
   * its frame was checked (a CRC32C frame; undefined otherwise).
   */
  onReadReply(read: R, reply: CheckedPagesMessage | ErrorMessage, dataCrcs?: Uint32Array): void;
  /** Called once, when the connection ends for any reason. */
  onEnd(loss: ConnectionLoss): void;
  /** Bytes arrived (for statistics). */
  onReceived?(lengthBytes: number): void;
}

type Outstanding<R> =
  | { kind: 'call'; expect: MessageName; resolve: (message: Message) => void; reject: (error: Error) => void }
  | { kind: 'read'; read: R; cancelled: boolean; sentAt: number }
  | { kind: 'ping' };

export interface OpenOptions {
  host: string;
  port: number;
  /** For messages: "tcp://127.0.0.1:7000". */
  url: string;
  role: RoleName;
  sessionId: Uint8Array;
  /** Connect plus HELLO. */
  timeoutMs: number;
  maxPayloadBytes?: number;
  /**
   * Where large payloads are read into (default: a buffer per frame). The
   * connection holds a READ reply's payload while onReadReply runs; a handler
   * that keeps a view of it retains it in the pool and releases it when done.
   * Other payloads are never given back to the pool.
   */
  payloadPool?: PayloadPool;
}

/** A read smaller than this goes to the scratch chunk and is copied from there, rather than costing a read of its own. */
const MIN_DIRECT_READ_BYTES = 4096;
/** The socket's read buffer between payloads: headers, small frames, the start of a large payload. */
const SCRATCH_BYTES = 32 * 1024;
/** What the bulk connection reads per turn of the event loop before the urgent one is looked at (SocketReceive.received). */
const BULK_TURN_BUDGET_BYTES = 512 * 1024;

/**
 * A connection's receiving end, given to the socket before the connection
 * exists (net.connect's onread): the kernel reads a large payload straight
 * into the buffer the decoder allocated for it, so its bytes are not read
 * into a chunk and copied from there; everything else lands in one reused
 * scratch chunk (the decoder then copies what it keeps). One copy from the
 * kernel, none in between. TLS sockets have no onread: no page client uses TLS.
 */
class SocketReceive {
  readonly scratch = Buffer.allocUnsafe(SCRATCH_BYTES);
  connection: ClientConnection<ReadRequest> | undefined;
  socket: Socket | undefined;
  private turnBytes = 0;
  private yielding = false;

  /** turnBudgetBytes: how much one turn of the event loop may read before the socket yields to the others (Infinity: never). */
  constructor(private readonly turnBudgetBytes: number) {}

  nextBuffer(): Uint8Array {
    return this.connection?.readTarget(this.scratch) ?? this.scratch;
  }

  /**
   * Returns false to stop reading for the rest of this turn once the
   * connection read its budget: libuv reads a readable socket up to 32 times
   * in a row, which on a bulk stream is 8 MiB of frames to check and deliver
   * (~25 ms here) before the urgent connection's demanded page is even read.
   * Reading starts again in the same turn's check phase, after every other
   * socket that was ready has had its go.
   */
  received(lengthBytes: number, buffer: Uint8Array): boolean {
    this.connection?.onRead(lengthBytes, buffer, this.scratch);
    this.turnBytes += lengthBytes;
    if (this.turnBytes < this.turnBudgetBytes) return true;
    this.turnBytes = 0;
    if (!this.yielding) {
      this.yielding = true;
      setImmediate(() => {
        this.yielding = false;
        // Socket.read(0) restarts the handle's reading (its _read), which returning false stopped.
        if (this.socket && !this.socket.destroyed) this.socket.read(0);
      });
    }
    return false;
  }
}

export class ClientConnection<R extends ReadRequest> {
  private stateValue: ClientConnectionState = 'opening';
  private readonly decoder: FrameDecoder;
  private readonly outstanding = new Map<number, Outstanding<R>>();
  private nextRequestId = 1;
  private helloWaiter: { sent: HelloMessage; resolve: (hello: HelloMessage) => void; reject: (error: Error) => void } | undefined;
  private ended = false;
  /** performance.now() of the last frame received. */
  lastReceivedAt = performance.now();
  /** The server's HELLO maxPayloadBytes: no frame sent may be larger. */
  peerMaxPayloadBytes = PRE_HELLO_MAX_PAYLOAD_BYTES;
  bytesReceived = 0;
  /** CRC32 until the HELLOs chose version 3 or later. */
  private frameChecksum: FrameChecksum = 'crc32';
  /** The server's INFO, once a GET_INFO on this connection was answered. */
  info: InfoMessage | undefined;

  private constructor(private readonly socket: Socket, private readonly receive: SocketReceive, private readonly options: OpenOptions, private readonly handlers: ClientConnectionHandlers<R>) {
    socket.setNoDelay(true);
    const pool = options.payloadPool;
    this.decoder = new FrameDecoder({ maxPayloadBytes: PRE_HELLO_MAX_PAYLOAD_BYTES, transientChunks: true, allocate: pool ? (length) => pool.take(length) : undefined });
    receive.connection = this;
    socket.on('error', (error) => this.end({ kind: 'lost', error }));
    socket.on('close', () => this.end({ kind: 'lost', error: new ConnectionLostError('page server', 'closed') }));
  }

  /**
   * Connect and exchange HELLOs. Rejects with PeerUnavailableError (nothing
   * answered in time), PeerRefusedError (the server answered ERROR) or
   * ProtocolError (it answered something else).
   */
  static open<R extends ReadRequest>(options: OpenOptions, handlers: ClientConnectionHandlers<R>): Promise<ClientConnection<R>> {
    return new Promise((resolve, reject) => {
      const receive = new SocketReceive(options.role === 'page-client-bulk' ? BULK_TURN_BUDGET_BYTES : Infinity);
      const socket = connect({
        host: options.host,
        port: options.port,
        onread: { buffer: () => receive.nextBuffer(), callback: (bytes, buffer) => receive.received(bytes, buffer) },
      });
      receive.socket = socket;
      let connection: ClientConnection<R> | undefined;
      const timer = setTimeout(() => {
        const error = new PeerUnavailableError(options.url, `no answer within ${options.timeoutMs} ms`);
        if (connection) connection.close(error);
        else socket.destroy();
        reject(error);
      }, options.timeoutMs);
      const failConnect = (error: Error): void => {
        clearTimeout(timer);
        reject(new PeerUnavailableError(options.url, error.message, { cause: error }));
      };
      socket.once('error', failConnect);
      socket.once('connect', () => {
        socket.off('error', failConnect);
        connection = new ClientConnection(socket, receive, options, handlers);
        connection.hello().then(
          () => {
            clearTimeout(timer);
            resolve(connection!);
          },
          (error: Error) => {
            clearTimeout(timer);
            connection!.close(error);
            reject(error);
          },
        );
      });
    });
  }

  get state(): ClientConnectionState {
    return this.stateValue;
  }

  /** Requests sent and not yet answered (cancelled READs included: the server still answers them). */
  get outstandingCount(): number {
    return this.outstanding.size;
  }

  /**
   * A request whose one reply is a message of type `expect` (or an ERROR,
   * which rejects with PeerRefusedError). A server that does not answer within
   * `timeoutMs` is dropped as lost (the call rejects with PeerUnavailableError).
   */
  call(message: Message, expect: MessageName, timeoutMs = this.options.timeoutMs): Promise<Message> {
    return new Promise((resolve, reject) => {
      if (this.stateValue !== 'ready') {
        reject(new ConnectionLostError('page server', `is ${this.stateValue}`));
        return;
      }
      const requestId = this.allocateRequestId();
      const timer = setTimeout(() => this.abandon(new PeerUnavailableError(this.options.url, `no answer to ${message.type} within ${timeoutMs} ms`)), timeoutMs);
      this.outstanding.set(requestId, {
        kind: 'call',
        expect,
        resolve: (reply) => {
          clearTimeout(timer);
          resolve(reply);
        },
        reject: (error) => {
          clearTimeout(timer);
          reject(error);
        },
      });
      this.send(message, requestId);
    });
  }

  /** Send a READ; its reply goes to onReadReply. Returns its requestId (for cancel). */
  sendRead(read: R, message: Message & { type: 'read' }): number {
    const requestId = this.allocateRequestId();
    this.outstanding.set(requestId, { kind: 'read', read, cancelled: false, sentAt: performance.now() });
    this.send(message, requestId);
    return requestId;
  }

  /** Ask the server to drop a READ. Its reply (ERROR CANCELLED, or the PAGES if already sent) is still expected, and then discarded. */
  cancelRead(requestId: number): void {
    const outstanding = this.outstanding.get(requestId);
    if (outstanding?.kind !== 'read' || outstanding.cancelled) return;
    outstanding.cancelled = true;
    this.send({ type: 'cancel', readRequestId: requestId }, 0);
  }

  /** Send a PING unless one is outstanding. */
  ping(): void {
    if (this.stateValue !== 'ready') return;
    for (const o of this.outstanding.values()) if (o.kind === 'ping') return;
    const requestId = this.allocateRequestId();
    this.outstanding.set(requestId, { kind: 'ping' });
    this.send({ type: 'ping', data: new Uint8Array(0) }, requestId);
  }

  /** How long the oldest unanswered READ has waited (0 with none). */
  oldestReadAgeMs(): number {
    let oldest = Infinity;
    for (const o of this.outstanding.values()) if (o.kind === 'read' && o.sentAt < oldest) oldest = o.sentAt;
    return oldest === Infinity ? 0 : performance.now() - oldest;
  }

  /** The READs sent and not answered, cancelled ones left out: what must be re-sent on a new connection. */
  unansweredReads(): R[] {
    const reads: R[] = [];
    for (const o of this.outstanding.values()) if (o.kind === 'read' && !o.cancelled) reads.push(o.read);
    return reads;
  }

  close(error: Error = new ConnectionLostError('page server', 'closed by the client')): void {
    this.end({ kind: 'closed', error });
  }

  /** Drop the connection as lost (a server gone quiet): its owner reconnects, as after any loss. */
  abandon(error: Error): void {
    this.end({ kind: 'lost', error });
  }

  private hello(): Promise<HelloMessage> {
    const sent: HelloMessage = {
      type: 'hello',
      // Version 2 on: a version-1 server sends pages without their checksums.
      version: PAGE_SERVICE_VERSION,
      minVersion: MIN_PAGE_SERVICE_VERSION,
      role: this.options.role,
      sessionId: this.options.sessionId,
      maxPayloadBytes: this.options.maxPayloadBytes ?? DEFAULT_MAX_PAYLOAD_BYTES,
      features: 0,
    };
    this.stateValue = 'hello';
    return new Promise((resolve, reject) => {
      this.helloWaiter = { sent, resolve, reject };
      this.send(sent, 0);
    });
  }

  private allocateRequestId(): number {
    // Ids wrap at 2^32 - 1 and skip 0 and any still outstanding.
    for (;;) {
      const id = this.nextRequestId;
      this.nextRequestId = id >= 0xffff_ffff ? 1 : id + 1;
      if (!this.outstanding.has(id)) return id;
    }
  }

  private send(message: Message, requestId: number): void {
    if (this.socket.destroyed || this.socket.writableEnded) return;
    const parts = encodeMessageParts(message, requestId, { checksum: this.frameChecksum });
    this.socket.cork();
    for (const part of parts) this.socket.write(part);
    this.socket.uncork();
  }

  /** @internal Where the socket's next read goes: the rest of the payload being received, when it is long enough to be worth a read of its own. */
  readTarget(scratch: Uint8Array): Uint8Array {
    const window = this.decoder.payloadWindow();
    return window !== undefined && window.length >= MIN_DIRECT_READ_BYTES ? window : scratch;
  }

  /** @internal `lengthBytes` arrived in `buffer`: the scratch chunk, or the payload window readTarget() gave. */
  onRead(lengthBytes: number, buffer: Uint8Array, scratch: Uint8Array): void {
    if (this.ended) return;
    this.lastReceivedAt = performance.now();
    this.bytesReceived += lengthBytes;
    this.handlers.onReceived?.(lengthBytes);
    const onFrame = (frame: Frame): void => {
      if (!this.ended) this.onFrame(frame);
    };
    const { error } = buffer === scratch ? this.decoder.push(buffer.subarray(0, lengthBytes), onFrame) : this.decoder.payloadReceived(lengthBytes, onFrame);
    if (error) this.violation(error);
  }

  private onFrame(frame: Frame): void {
    let message: Message;
    try {
      message = decodeMessage(frame);
    } catch (error) {
      if (error instanceof ProtocolError) return this.violation(error);
      throw error;
    }
    const context = { frameType: frame.type, requestId: frame.requestId };
    if (this.stateValue === 'hello') return this.onHelloAnswer(message, context);
    if (frame.requestId === 0) {
      switch (message.type) {
        case 'error':
          // The server ends the connection (shutting down, or it disliked something we sent).
          return this.end({ kind: message.code === 'SHUTTING_DOWN' ? 'lost' : 'violation', error: new ConnectionLostError('page server', `closed by the server: ${message.code}: ${message.text}`) });
        case 'push':
          // A PUSH carries no checksums: nothing could tell its pages from altered ones. A page server never sends one.
          return this.violation(new ProtocolError('EPROTO_UNEXPECTED', `a PUSH of ${message.data.length} bytes at ${message.offset}: a page server sends pages only with their checksums, in answer to a READ`, context));
        default:
          return this.violation(new ProtocolError('EPROTO_UNEXPECTED', `an unsolicited ${message.type} from the page server`, context));
      }
    }
    const outstanding = this.outstanding.get(frame.requestId);
    if (outstanding === undefined) {
      return this.violation(new ProtocolError('EPROTO_UNSOLICITED', `a ${describeType(frame.type)} for request ${frame.requestId}, which was never made or is already answered`, context));
    }
    switch (outstanding.kind) {
      case 'call':
        if (message.type !== outstanding.expect && message.type !== 'error') {
          return this.violation(new ProtocolError('EPROTO_MISMATCH', `request ${frame.requestId} was answered with ${message.type}, not ${outstanding.expect}`, context));
        }
        this.outstanding.delete(frame.requestId);
        if (message.type === 'info') this.info = message;
        if (message.type === 'error') outstanding.reject(new PeerRefusedError(this.options.url, message.code, message.text));
        else outstanding.resolve(message);
        return;
      case 'ping':
        if (message.type !== 'pong' && message.type !== 'error') return this.violation(new ProtocolError('EPROTO_MISMATCH', `a PING was answered with ${message.type}`, context));
        this.outstanding.delete(frame.requestId);
        return;
      case 'read': {
        const { read } = outstanding;
        if (message.type === 'checked-pages') {
          // Checked before a byte is used: the reply must be for exactly the range asked, a checksum for each page.
          if (message.offset !== read.offset || message.data.length !== read.lengthBytes) {
            return this.violation(new ProtocolError(
              'EPROTO_MISMATCH',
              `READ ${frame.requestId} asked for ${read.lengthBytes} bytes at ${read.offset}; the reply holds ${message.data.length} at ${message.offset}`,
              context,
            ));
          }
          const pageSizeBytes = this.info?.pageSizeBytes;
          if (pageSizeBytes === undefined || message.checksums.length * pageSizeBytes !== read.lengthBytes) {
            return this.violation(new ProtocolError(
              'EPROTO_MISMATCH',
              `READ ${frame.requestId} of ${read.lengthBytes} bytes was answered with ${message.checksums.length} checksums; one per ${pageSizeBytes ?? '?'}-byte page was due`,
              { ...context, field: 'pageCount' },
            ));
          }
        } else if (message.type !== 'error') {
          return this.violation(new ProtocolError('EPROTO_MISMATCH', `READ ${frame.requestId} was answered with ${message.type}`, context));
        }
        this.outstanding.delete(frame.requestId);
        if (!outstanding.cancelled) this.handlers.onReadReply(read, message, message.type === 'checked-pages' ? dataBlockCrcs(frame, message.data.length) : undefined);
        // A READ's reply is handled by now: the connection's hold on its payload ends (a handler that kept a
        // view of it retained it). Any other reply's payload goes on to a promise and is left to the GC.
        this.options.payloadPool?.release(frame.payload);
        return;
      }
      default: {
        const never: never = outstanding;
        throw new TypeError(`unhandled request kind ${JSON.stringify(never)}`);
      }
    }
  }

  private onHelloAnswer(message: Message, context: { frameType: number; requestId: number }): void {
    const waiter = this.helloWaiter!;
    this.helloWaiter = undefined;
    if (message.type === 'error') {
      // Most likely a version-1 server: say what this side needs, not just that the versions differ.
      const text = message.code === 'UNSUPPORTED_VERSION'
        ? `${message.text} (this client speaks page protocol versions ${MIN_PAGE_SERVICE_VERSION}..${PAGE_SERVICE_VERSION}, where every page comes with its image's checksum; a page server of an older version sends pages nothing could check)`
        : message.text;
      const error = new PeerRefusedError(this.options.url, message.code, text);
      waiter.reject(error);
      return this.end({ kind: 'violation', error });
    }
    if (message.type !== 'hello') {
      const error = new ProtocolError('EPROTO_UNEXPECTED', `the page server answered HELLO with ${message.type}`, context);
      waiter.reject(error);
      return this.violation(error);
    }
    try {
      checkHelloAnswer(message, waiter.sent, 'page-server');
    } catch (error) {
      waiter.reject(error as Error);
      return this.violation(error as ProtocolError);
    }
    this.peerMaxPayloadBytes = message.maxPayloadBytes;
    this.decoder.maxPayloadBytes = waiter.sent.maxPayloadBytes;
    this.frameChecksum = frameChecksumOf(message.version);
    this.stateValue = 'ready';
    waiter.resolve(message);
  }

  private violation(error: ProtocolError): void {
    this.end({ kind: 'violation', error });
  }

  private end(loss: ConnectionLoss): void {
    if (this.ended) return;
    this.ended = true;
    this.stateValue = 'closed';
    this.socket.destroy();
    if (this.helloWaiter) {
      this.helloWaiter.reject(loss.error);
      this.helloWaiter = undefined;
    }
    for (const o of this.outstanding.values()) if (o.kind === 'call') o.reject(loss.error);
    this.handlers.onEnd(loss);
  }
}

/** The frame's block CRC32Cs that cover exactly its last `dataBytes` (whole blocks), if the decoder computed them. */
function dataBlockCrcs(frame: Frame, dataBytes: number): Uint32Array | undefined {
  const blocks = dataBytes / CRC_BLOCK_BYTES;
  if (!frame.blockCrcs || !Number.isInteger(blocks) || frame.blockCrcs.length < blocks) return undefined;
  return frame.blockCrcs.subarray(frame.blockCrcs.length - blocks);
}
