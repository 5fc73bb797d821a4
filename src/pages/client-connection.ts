// One TCP connection of a page client (RemoteSource), a role over the
// framed-connection layer (transport/: the socket read in place, request ids,
// reply matching, pings): HELLO, then requests, and every frame that comes
// back checked before anything acts on it. The peer is not trusted: a frame
// with a bad CRC, of an unknown type, a reply to a request never made or one
// that does not match its request (another offset, another length, the wrong
// type, a checksum count that is not one per page) is a protocol violation;
// the connection reports it and is dropped, and nothing the frame carried is
// used. (The pages' checksums themselves are checked by the source, which
// knows the algorithm.)
//
//   opening ──TCP connected, HELLO sent──▶ hello ──server HELLO checked──▶ ready ──▶ closed
//      └───── refused / timeout / lost / violation ─────────────────┴────────────────┘
import type { Socket } from 'node:net';
import {
  DEFAULT_MAX_PAYLOAD_BYTES,
  PRE_HELLO_MAX_PAYLOAD_BYTES,
  MIN_PAGE_SERVICE_VERSION,
  PAGE_SERVICE_VERSION,
  ProtocolError,
  checkHelloAnswer,
  frameChecksumOf,
  type CheckedPagesMessage,
  type ErrorMessage,
  type Frame,
  type PayloadPool,
  type HelloMessage,
  type InfoMessage,
  type Message,
  type MessageName,
  type RoleName,
} from '../protocol/index.js';
import { FramedConnection, connectForFrames, dataBlockCrcs, pageMessageCodec, type ConnectionEndKind } from '../transport/index.js';
import { PeerRefusedError, PeerUnavailableError } from './errors.js';
import { ConnectionLostError } from '../net/connection-errors.js';

export type ClientConnectionState = 'opening' | 'hello' | 'ready' | 'closed';

/**
 * Why a connection ended: 'lost' (the socket closed or failed, the server
 * said it is going away, or went quiet), 'violation' (the peer broke the
 * protocol: the source counts these and gives up on a peer that keeps doing
 * it), 'closed' (this side closed it).
 */
export type ConnectionLoss = { kind: ConnectionEndKind; error: Error };

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

/** What this role keeps with a READ it sent (the layer keeps the id, the time and the reply's matching). */
interface SentRead<R> {
  read: R;
  cancelled: boolean;
}

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

/** What the bulk connection decodes per turn of the event loop before the urgent one is looked at (the layer's decodeInSlices). */
const BULK_TURN_BUDGET_BYTES = 512 * 1024;

export class ClientConnection<R extends ReadRequest> {
  private stateValue: ClientConnectionState = 'opening';
  /** The framed connection under this role: socket, decoder, request ids and reply matching. */
  private readonly link: FramedConnection<Message, SentRead<R>>;
  private helloWaiter: { sent: HelloMessage; resolve: (hello: HelloMessage) => void; reject: (error: Error) => void } | undefined;
  /** The server's HELLO maxPayloadBytes: no frame sent may be larger. */
  peerMaxPayloadBytes = PRE_HELLO_MAX_PAYLOAD_BYTES;
  /** The server's INFO, once a GET_INFO on this connection was answered. */
  info: InfoMessage | undefined;

  private constructor(socket: Socket, private readonly options: OpenOptions, private readonly handlers: ClientConnectionHandlers<R>) {
    this.link = new FramedConnection<Message, SentRead<R>>(socket, {
      name: 'page server',
      codec: pageMessageCodec,
      // After the HELLOs every frame with a request id answers one of this side's; a page server sends nothing else but an ERROR on id 0.
      isReply: (_message, requestId) => requestId !== 0 && this.stateValue !== 'hello',
      // A page server never pings its client: a PING is a frame out of place.
      answersPings: false,
      onReceived: (lengthBytes) => handlers.onReceived?.(lengthBytes),
      allocatePayload: options.payloadPool ? (lengthBytes) => options.payloadPool!.take(lengthBytes) : undefined,
    });
    // The bulk connection yields to the urgent one every BULK_TURN_BUDGET_BYTES.
    if (options.role === 'page-client-bulk') this.link.decodeInSlices(BULK_TURN_BUDGET_BYTES);
    this.link.on('message', (message, requestId, frame) => this.onMessage(message, requestId, frame));
    this.link.on('end', (error, kind) => this.onEnd(kind, error ?? new ConnectionLostError('page server', 'closed')));
  }

  /**
   * Connect and exchange HELLOs. Rejects with PeerUnavailableError (nothing
   * answered in time), PeerRefusedError (the server answered ERROR) or
   * ProtocolError (it answered something else).
   */
  static open<R extends ReadRequest>(options: OpenOptions, handlers: ClientConnectionHandlers<R>): Promise<ClientConnection<R>> {
    return new Promise((resolve, reject) => {
      // Plain TCP: a READ's pages are read straight into the buffer their frame was given.
      const socket = connectForFrames({ host: options.host, port: options.port });
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
        connection = new ClientConnection(socket, options, handlers);
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
    return this.link.pendingCount;
  }

  /** performance.now() of the last bytes received. */
  get lastReceivedAt(): number {
    return this.link.lastHeardAt;
  }

  get bytesReceived(): number {
    return this.link.bytesReceived;
  }

  /**
   * A request whose one reply is a message of type `expect` (or an ERROR,
   * which rejects with PeerRefusedError). A server that does not answer within
   * `timeoutMs` is dropped as lost (the call rejects with PeerUnavailableError).
   */
  async call(message: Message, expect: MessageName, timeoutMs = this.options.timeoutMs): Promise<Message> {
    if (this.stateValue !== 'ready') throw new ConnectionLostError('page server', `is ${this.stateValue}`);
    const reply = await this.link.call(message, { expect: [expect], timeoutMs, timeoutError: () => new PeerUnavailableError(this.options.url, `no answer to ${message.type} within ${timeoutMs} ms`) });
    if (reply.type === 'error') throw new PeerRefusedError(this.options.url, reply.code, reply.text);
    if (reply.type === 'info') this.info = reply;
    return reply;
  }

  /** Send a READ; its reply goes to onReadReply. Returns its requestId (for cancel). */
  sendRead(read: R, message: Message & { type: 'read' }): number {
    const sent: SentRead<R> = { read, cancelled: false };
    return this.link.request(message, { expect: ['checked-pages'], context: sent, onReply: (reply, frame) => this.onReadReply(sent, reply, frame) });
  }

  /** Ask the server to drop a READ. Its reply (ERROR CANCELLED, or the PAGES if already sent) is still expected, and then discarded. */
  cancelRead(requestId: number): void {
    const sent = this.link.pendingContext(requestId);
    if (sent === undefined || sent.cancelled) return;
    sent.cancelled = true;
    this.link.write({ type: 'cancel', readRequestId: requestId }, 0);
  }

  /** Send a PING unless one is outstanding. */
  ping(): void {
    if (this.stateValue === 'ready') this.link.ping();
  }

  /** How long the oldest unanswered READ has waited (0 with none). */
  oldestReadAgeMs(): number {
    let oldest = Infinity;
    for (const p of this.link.pending()) if (p.context !== undefined && p.sentAt < oldest) oldest = p.sentAt;
    return oldest === Infinity ? 0 : performance.now() - oldest;
  }

  /** The READs sent and not answered, cancelled ones left out: what must be re-sent on a new connection. */
  unansweredReads(): R[] {
    const reads: R[] = [];
    for (const { context } of this.link.pending()) if (context !== undefined && !context.cancelled) reads.push(context.read);
    return reads;
  }

  close(error: Error = new ConnectionLostError('page server', 'closed by the client')): void {
    this.link.destroy(error, 'closed');
  }

  /** Drop the connection as lost (a server gone quiet): its owner reconnects, as after any loss. */
  abandon(error: Error): void {
    this.link.destroy(error, 'lost');
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
      this.link.write(sent, 0);
    });
  }

  /** A frame that answers none of this side's requests: the HELLO's answer, or the server's word on request 0. */
  private onMessage(message: Message, requestId: number, frame: Frame): void {
    const context = { frameType: frame.type, requestId };
    if (this.stateValue === 'hello') return this.onHelloAnswer(message, context);
    switch (message.type) {
      case 'error':
        // The server ends the connection (shutting down, or it disliked something we sent).
        return this.link.destroy(new ConnectionLostError('page server', `closed by the server: ${message.code}: ${message.text}`), message.code === 'SHUTTING_DOWN' ? 'lost' : 'violation');
      case 'push':
        // A PUSH carries no checksums: nothing could tell its pages from altered ones. A page server never sends one.
        return this.link.violation(new ProtocolError('EPROTO_UNEXPECTED', `a PUSH of ${message.data.length} bytes at ${message.offset}: a page server sends pages only with their checksums, in answer to a READ`, context));
      default:
        return this.link.violation(new ProtocolError('EPROTO_UNEXPECTED', `an unsolicited ${message.type} from the page server`, context));
    }
  }

  private onReadReply(sent: SentRead<R>, message: Message, frame: Frame): void {
    const { read } = sent;
    const context = { frameType: frame.type, requestId: frame.requestId };
    if (message.type === 'checked-pages') {
      // Checked before a byte is used: the reply must be for exactly the range asked, a checksum for each page.
      if (message.offset !== read.offset || message.data.length !== read.lengthBytes) {
        return this.link.violation(new ProtocolError(
          'EPROTO_MISMATCH',
          `READ ${frame.requestId} asked for ${read.lengthBytes} bytes at ${read.offset}; the reply holds ${message.data.length} at ${message.offset}`,
          context,
        ));
      }
      const pageSizeBytes = this.info?.pageSizeBytes;
      if (pageSizeBytes === undefined || message.checksums.length * pageSizeBytes !== read.lengthBytes) {
        return this.link.violation(new ProtocolError(
          'EPROTO_MISMATCH',
          `READ ${frame.requestId} of ${read.lengthBytes} bytes was answered with ${message.checksums.length} checksums; one per ${pageSizeBytes ?? '?'}-byte page was due`,
          { ...context, field: 'pageCount' },
        ));
      }
    } else if (message.type !== 'error') {
      return this.link.violation(new ProtocolError('EPROTO_MISMATCH', `READ ${frame.requestId} was answered with ${message.type}`, context));
    }
    if (!sent.cancelled) this.handlers.onReadReply(read, message, message.type === 'checked-pages' ? dataBlockCrcs(frame, message.data.length) : undefined);
    // A READ's reply is handled by now: the connection's hold on its payload ends (a handler that kept a
    // view of it retained it). Any other reply's payload goes on to a promise and is left to the GC.
    this.options.payloadPool?.release(frame.payload);
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
      return this.link.destroy(error, 'violation');
    }
    if (message.type !== 'hello') {
      const error = new ProtocolError('EPROTO_UNEXPECTED', `the page server answered HELLO with ${message.type}`, context);
      waiter.reject(error);
      return this.link.violation(error);
    }
    try {
      checkHelloAnswer(message, waiter.sent, 'page-server');
    } catch (error) {
      waiter.reject(error as Error);
      return this.link.violation(error as ProtocolError);
    }
    this.peerMaxPayloadBytes = message.maxPayloadBytes;
    this.link.maxPayloadBytes = waiter.sent.maxPayloadBytes;
    this.link.frameChecksum = frameChecksumOf(message.version);
    this.stateValue = 'ready';
    waiter.resolve(message);
  }

  private onEnd(kind: ConnectionEndKind, error: Error): void {
    this.stateValue = 'closed';
    if (this.helloWaiter) {
      this.helloWaiter.reject(error);
      this.helloWaiter = undefined;
    }
    // Its READs are still listed (unansweredReads) while the owner hears of the loss; its calls fail with the loss's cause after.
    this.handlers.onEnd({ kind, error });
    this.link.failPending(error);
  }
}
