// Pages from a page server over TCP (`userfault pages serve`; the protocol is
// docs/protocol.md): a PageSource like any other, so the pager, LazyMemory and
// the VMM restore from another host as they do from a file.
//
// Two connections, one session: demand reads go on the urgent one, background
// reads on the bulk one, so a page a vCPU waits for never queues behind a
// read-ahead stream (QEMU's postcopy-preempt channel does the same). Each
// carries many READs at once; the server answers them in any order.
//
// A READ's life (its states are every network request's: the table in
// src/sources/network/request-state.ts; the request table there coalesces,
// counts waiters and delivers):
//
//   queued ──sent──▶ sent ──CHECKED_PAGES, every page's checksum right──▶ done (copied to every waiting target)
//     ▲                │ ├──a page's checksum wrong──▶ queued again (maxCorruptRetries), then failed (PageChecksumError)
//     │                │ └──ERROR──▶ failed (SOURCE_FAILED fatal, SOURCE_UNAVAILABLE transient) or queued again (BUSY)
//     └──connection lost (re-sent on the next)
//   every waiter aborted or past its deadline ─▶ dropped (CANCEL sent if it was; its answer is still awaited, then dropped)
//
// Every page comes with the checksum its image stores for it (a snapshot's
// page table, CHECKED_PAGES), and is checked against it before a byte of it
// is copied anywhere: a page altered on the server or on the way (a proxy
// that fixes the frame CRC) is refused, naming the page, never installed.
//
// Every read has a deadline (readDeadlineMs), counted from its request and
// independent of the connections: a server that answers PINGs but not the
// READ, closes the connection on every READ, answers BUSY for ever or is not
// there at all makes the read fail with SourceDeadlineError once it passes
// (fatal for a demand read, whose pages the pager then poisons; transient for
// a background one, which the pager may ask again, as demand if a thread now
// waits on it). The reconnect logic below goes on meanwhile.
//
// A lost connection is not a failed read: its reads go back to the queue and
// the channel reconnects with backoff (10 ms doubling to 1 s); only a server
// that has not come back within reconnectDeadlineMs of the loss makes the
// source gone (SourceGoneError, fatal, for every read). A reply that breaks
// the protocol (bad CRC, wrong length, unknown type, a reply to nothing) is
// never copied anywhere: its connection is dropped and the reads re-sent on a
// new one, and a peer that keeps doing it (maxProtocolViolations connections
// in a row) is given up on as gone.
import { randomBytes } from 'node:crypto';
import {
  CHECKED_PAGES_HEADER_BYTES,
  DEFAULT_MAX_PAYLOAD_BYTES,
  PAGE_CHECKSUM_BYTES,
  PayloadPool,
  ProtocolError,
  SESSION_ID_BYTES,
  ZERO_MAP_HEADER_BYTES,
  METADATA_HEADER_BYTES,
  MAX_ZERO_MAP_PAGES,
  type CheckedPagesMessage,
  type ErrorMessage,
  type InfoMessage,
  type RoleName,
} from '../protocol/index.js';
import { parsePageUrl, formatHostPort } from '../net/address.js';
import { ClientConnection, type ConnectionLoss } from './client-connection.js';
import { ImageChangedError, PeerUnavailableError } from './errors.js';
import { ZeroMap } from './zero-map.js';
import { firstPageMismatch } from './page-checksums.js';
import { SourceReadError, readRequestRefusal, type PageSource, type ReadOptions, type ReadPriority } from '../sources/page-source.js';
import { PageChecksumError, SourceDeadlineError } from '../sources/read-errors.js';
import { SourceAvailability, type AvailabilityEvent, type AvailabilityStats, type Outage } from '../sources/network/availability.js';
import { RequestTable, type NetworkRequest, type PendingRead } from '../sources/network/request-table.js';
import type { SourceState } from '../sources/network/source-state.js';
import { CHANNEL_STATES, type ChannelState } from './channel-state.js';
import { ConnectionLostError, ConnectionStalledError } from '../net/connection-errors.js';

export interface RemoteSourceOptions {
  /** How long a lost server has to come back before every read fails with SourceGoneError (default 30 s). */
  reconnectDeadlineMs?: number;
  /**
   * How long one read may wait for its pages, counted from its request,
   * whatever the connections do meanwhile (default 30 s): then it fails with
   * SourceDeadlineError, fatal for a demand read, transient for a background
   * one. `--source-deadline-ms`.
   */
  readDeadlineMs?: number;
  /** Times a READ whose pages fail their checksums is sent again before the read fails with PageChecksumError (default 2). */
  maxCorruptRetries?: number;
  /** One connection attempt: TCP connect plus HELLO (default 5 s). */
  connectTimeoutMs?: number;
  /** First wait between reconnect attempts, doubled each time up to reconnectMaxDelayMs (defaults 10 ms, 1 s). */
  reconnectInitialDelayMs?: number;
  reconnectMaxDelayMs?: number;
  /** READs outstanding per connection; more wait here, where a cancel costs nothing (default 32). */
  maxInFlightPerConnection?: number;
  /** A connection with requests outstanding and nothing received for this long (PINGs unanswered too) is dropped and re-made (default 15 s). */
  idleTimeoutMs?: number;
  /**
   * A READ unanswered this long on a connection that still answers PINGs is
   * given up on there: the connection is dropped and its reads re-sent on a
   * new one (default 60 s). A server's source may be slow; one that never
   * answers is broken.
   */
  requestTimeoutMs?: number;
  /** Connections in a row dropped for protocol violations before the peer is given up on (default 3). */
  maxProtocolViolations?: number;
  /** The largest metadata accepted (default 64 MiB). */
  maxMetadataBytes?: number;
  /** The largest payload this client receives (default 4 MiB + 4 KiB). */
  maxPayloadBytes?: number;
  /** 16 bytes; default random. */
  sessionId?: Uint8Array;
  /**
   * Send background reads on the urgent connection too, and open no bulk one
   * (default false). For the bench's comparison of one connection against
   * two (docs/bench.md, section 5): a demand read then queues behind the
   * background stream, as it would without the urgent channel.
   */
  singleConnection?: boolean;
}

export interface RemoteSourceStats {
  /** READ requests written (re-sends after a reconnect included). */
  readsSent: number;
  /** Reads that joined a READ already in flight for the same range. */
  coalesced: number;
  cancelsSent: number;
  /** Connections made after the first two. */
  reconnects: number;
  /** Connections dropped for a protocol violation. */
  protocolViolations: number;
  /** Replies refused because a page did not match its checksum. */
  corruptReplies: number;
  /** Reads failed at their deadline. */
  deadlinesPassed: number;
  bytesReceived: number;
  /** Per channel: READs sent on it. */
  urgentReadsSent: number;
  bulkReadsSent: number;
}

/** One READ on the wire: a page-aligned range, and every read waiting for it (its state: the request table's). */
interface WireRead extends NetworkRequest<Uint8Array> {
  readonly offset: number;
  readonly lengthBytes: number;
  readonly channel: Channel;
  /** What the READ says on the wire (its channel's, unless singleConnection puts both on one). */
  readonly priority: ReadPriority;
  /** The connection and id it was sent with, while 'sent'. */
  connection: ClientConnection<WireRead> | undefined;
  requestId: number;
  /** Replies refused for a page that failed its checksum, and others the server gave (for a deadline error's text). */
  corruptReplies: number;
  busyReplies: number;
  sends: number;
}

type ReadOperation = PendingRead<Uint8Array>;

/**
 * One of the two connections' worth of state: its fetches (queued and sent),
 * its current connection, and its reconnect loop. Its states and their moves
 * are the table in channel-state.ts.
 */
class Channel {
  /** Moved only through CHANNEL_STATES. */
  private stateValue: ChannelState = 'connecting';
  connection: ClientConnection<WireRead> | undefined;
  readonly queue: WireRead[] = [];
  /** The server out of reach on this channel: backoff between reconnects, and the reconnect deadline. */
  private readonly outage: Outage;
  private retryTimer: NodeJS.Timeout | undefined;
  private keepalive: NodeJS.Timeout | undefined;

  constructor(readonly role: RoleName, private readonly source: RemoteSource) {
    const { settings } = source;
    this.outage = source.availability.outage({
      deadlineMs: settings.reconnectDeadlineMs,
      initialDelayMs: settings.reconnectInitialDelayMs,
      maxDelayMs: settings.reconnectMaxDelayMs,
      expired: (waitedMs, last) => new PeerUnavailableError(
        source.url,
        `the ${this.name} connection was lost and the server did not come back within ${Math.round(waitedMs)} ms` + (last ? ` (last: ${last.message})` : ''),
        { cause: last },
      ),
    });
  }

  get name(): string {
    return this.role === 'page-client-urgent' ? 'urgent' : 'bulk';
  }

  /** Connect (HELLO, INFO) once; rejects as open() does. */
  async connect(): Promise<InfoMessage> {
    // Declared first: the connection may end (and say so) before open() resolves.
    let connection: ClientConnection<WireRead> | undefined = undefined;
    connection = await ClientConnection.open<WireRead>(
      {
        host: this.source.address.host,
        port: this.source.address.port,
        url: this.source.url,
        role: this.role,
        sessionId: this.source.sessionId,
        timeoutMs: this.source.settings.connectTimeoutMs,
        maxPayloadBytes: this.source.settings.maxPayloadBytes,
        payloadPool: this.source.payloadPool,
      },
      {
        onReadReply: (fetch, reply, dataCrcs) => this.source.onReadReply(fetch, reply, dataCrcs),
        onEnd: (loss) => {
          if (connection) this.onEnd(connection, loss);
        },
        onReceived: (lengthBytes) => {
          this.source.stats.bytesReceived += lengthBytes;
        },
      },
    );
    const opened = connection;
    let info: InfoMessage;
    try {
      info = (await opened.call({ type: 'get-info' }, 'info')) as InfoMessage;
    } catch (error) {
      opened.close(error as Error);
      throw error;
    }
    if (opened.state !== 'ready') throw new ConnectionLostError('page server', 'lost right after its INFO');
    this.connection = opened;
    this.startKeepalive(opened);
    return info;
  }

  /** Called when the first connection and its INFO are accepted, or a reconnect's INFO matched. */
  connected(): void {
    this.stateValue = CHANNEL_STATES.next(this.stateValue, 'connected');
    this.outage.restored();
    this.flush();
  }

  /** Send queued fetches while the connection has room. */
  flush(): void {
    const { connection } = this;
    if (connection === undefined || connection.state !== 'ready') return;
    while (this.queue.length > 0 && connection.outstandingCount < this.source.settings.maxInFlightPerConnection) {
      const fetch = this.queue.shift()!;
      this.source.table.move(fetch, 'sent');
      fetch.connection = connection;
      fetch.requestId = connection.sendRead(fetch, { type: 'read', offset: fetch.offset, lengthBytes: fetch.lengthBytes, priority: fetch.priority });
      fetch.sends++;
      this.source.countSent(this);
    }
  }

  enqueue(fetch: WireRead): void {
    this.queue.push(fetch);
    this.flush();
  }

  /** A queued fetch nobody waits for leaves the queue (it may be out of it, waiting out a BUSY's pause). */
  dequeue(fetch: WireRead): void {
    const at = this.queue.indexOf(fetch);
    if (at !== -1) this.queue.splice(at, 1);
  }

  /** A sent fetch nobody waits for: CANCEL on the wire (its answer is still awaited there, then dropped). */
  cancel(fetch: WireRead): boolean {
    if (fetch.connection) {
      fetch.connection.cancelRead(fetch.requestId);
      this.source.stats.cancelsSent++;
    }
    return true;
  }

  /** Put a sent fetch back at the front of the queue (a server BUSY after its pause, an unasked CANCELLED, a corrupt reply). */
  requeue(fetch: WireRead): void {
    if (fetch.state === 'sent') this.source.table.move(fetch, 'retry');
    fetch.connection = undefined;
    this.queue.unshift(fetch);
    this.flush();
  }

  close(): void {
    this.stateValue = CHANNEL_STATES.next(this.stateValue, 'close');
    clearTimeout(this.retryTimer);
    this.outage.stop();
    this.queue.length = 0;
    clearInterval(this.keepalive);
    const connection = this.connection;
    this.connection = undefined;
    connection?.close();
  }

  private onEnd(connection: ClientConnection<WireRead>, loss: ConnectionLoss): void {
    if (this.connection !== connection) return;
    this.connection = undefined;
    clearInterval(this.keepalive);
    if (loss.kind === 'closed' || this.source.state !== 'open') return;
    this.stateValue = CHANNEL_STATES.next(this.stateValue, 'lost');
    // Every READ the server had not answered goes back to the front of the queue, in the order it was sent.
    const unanswered = connection.unansweredReads().filter((fetch) => fetch.state === 'sent' && fetch.connection === connection);
    for (const fetch of unanswered) {
      this.source.table.move(fetch, 'retry');
      fetch.connection = undefined;
    }
    this.queue.unshift(...unanswered);
    if (loss.kind === 'violation') {
      this.source.stats.protocolViolations++;
      if (this.source.noteViolation(loss.error)) return;
    }
    if (this.outage.lost(loss.error)) this.scheduleReconnect();
  }

  private scheduleReconnect(): void {
    clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(() => void this.reconnect(), this.outage.nextDelayMs());
  }

  private async reconnect(): Promise<void> {
    if (this.source.state !== 'open' || this.connection) return;
    let info: InfoMessage;
    try {
      info = await this.connect();
    } catch (error) {
      if (this.source.state !== 'open') return;
      if (error instanceof ProtocolError && this.source.noteViolation(error)) return;
      if (this.outage.lost(error as Error)) this.scheduleReconnect();
      return;
    }
    if (this.source.state !== 'open') {
      this.close();
      return;
    }
    const changed = this.source.compareInfo(info);
    if (changed) {
      this.close();
      this.source.goneFor(new ImageChangedError(this.source.url, changed));
      return;
    }
    this.source.stats.reconnects++;
    this.connected();
  }

  /** How the channel is doing, for a deadline error's text. */
  describe(): string {
    const last = this.outage.lastError;
    const state = this.connection?.state === 'ready' ? 'connected' : `reconnecting${last ? ` (last: ${last.message})` : ''}`;
    return `its ${this.name} connection is ${state}`;
  }

  /**
   * While requests are outstanding: a PING after a third of the idle time
   * without a frame, and the connection dropped (and re-made) after all of
   * it. A server that stopped answering is then a lost connection, not a
   * read that never ends.
   */
  private startKeepalive(connection: ClientConnection<WireRead>): void {
    clearInterval(this.keepalive);
    const { idleTimeoutMs, requestTimeoutMs } = this.source.settings;
    this.keepalive = setInterval(() => {
      if (connection.outstandingCount === 0) return;
      const quietMs = performance.now() - connection.lastReceivedAt;
      const oldestMs = connection.oldestReadAgeMs();
      if (quietMs >= idleTimeoutMs) connection.abandon(new ConnectionStalledError('page server', Math.round(quietMs), `carried nothing for ${Math.round(quietMs)} ms with requests outstanding`));
      else if (oldestMs >= requestTimeoutMs) connection.abandon(new ConnectionStalledError('page server', Math.round(oldestMs), `left a READ unanswered for ${Math.round(oldestMs)} ms`));
      else if (quietMs >= idleTimeoutMs / 3) connection.ping();
    }, Math.max(10, Math.floor(Math.min(idleTimeoutMs, requestTimeoutMs) / 6)));
    this.keepalive.unref();
  }
}

/**
 * A PageSource reading from a page server (`tcp://HOST:PORT`). Its metadata
 * (a VM snapshot's VM state) and zero map are fetched when it connects.
 */
export class RemoteSource implements PageSource {
  readonly description: string;
  readonly address: { host: string; port: number };
  readonly sessionId: Uint8Array;
  readonly settings: Required<Omit<RemoteSourceOptions, 'sessionId'>>;
  readonly stats: RemoteSourceStats = { readsSent: 0, coalesced: 0, cancelsSent: 0, reconnects: 0, protocolViolations: 0, corruptReplies: 0, deadlinesPassed: 0, bytesReceived: 0, urgentReadsSent: 0, bulkReadsSent: 0 };
  /** The image's metadata (empty when the server has none). */
  metadata: Uint8Array = new Uint8Array(0);
  info!: InfoMessage;
  zeroMap: ZeroMap | undefined;
  /** @internal Open, gone or closed; each channel's outage gives it up past the reconnect deadline, and is said out loud (onAvailability). */
  readonly availability = new SourceAvailability({ description: () => this.description, onEnd: () => this.ended(), readsWaiting: () => this.table.pendingReads });
  /** @internal Every READ live, by channel and range: a read of a range already asked joins it. */
  readonly table = new RequestTable<WireRead, Uint8Array>({ dequeue: (fetch) => fetch.channel.dequeue(fetch), cancel: (fetch) => fetch.channel.cancel(fetch) });
  private readonly urgent: Channel;
  private readonly bulk: Channel;
  private violationsInARow = 0;
  private chunkBytes = 0;
  /** @internal The buffers READ replies are read into, reused once the pager released the views it borrowed. */
  readonly payloadPool = new PayloadPool();

  private constructor(readonly url: string, options: RemoteSourceOptions) {
    this.address = parsePageUrl(url);
    this.description = `page server tcp://${formatHostPort(this.address)}`;
    this.sessionId = options.sessionId ?? new Uint8Array(randomBytes(SESSION_ID_BYTES));
    if (this.sessionId.length !== SESSION_ID_BYTES) throw new RangeError(`a session id is ${SESSION_ID_BYTES} bytes`);
    this.settings = {
      reconnectDeadlineMs: options.reconnectDeadlineMs ?? 30_000,
      readDeadlineMs: options.readDeadlineMs ?? 30_000,
      maxCorruptRetries: options.maxCorruptRetries ?? 2,
      connectTimeoutMs: options.connectTimeoutMs ?? 5_000,
      reconnectInitialDelayMs: options.reconnectInitialDelayMs ?? 10,
      reconnectMaxDelayMs: options.reconnectMaxDelayMs ?? 1_000,
      maxInFlightPerConnection: options.maxInFlightPerConnection ?? 32,
      idleTimeoutMs: options.idleTimeoutMs ?? 15_000,
      requestTimeoutMs: options.requestTimeoutMs ?? 60_000,
      maxProtocolViolations: options.maxProtocolViolations ?? 3,
      maxMetadataBytes: options.maxMetadataBytes ?? 64 * 1024 * 1024,
      maxPayloadBytes: options.maxPayloadBytes ?? DEFAULT_MAX_PAYLOAD_BYTES,
      singleConnection: options.singleConnection ?? false,
    };
    if (!(this.settings.readDeadlineMs > 0) || !Number.isFinite(this.settings.readDeadlineMs)) throw new RangeError(`readDeadlineMs ${this.settings.readDeadlineMs}: a positive number of milliseconds`);
    if (!Number.isSafeInteger(this.settings.maxCorruptRetries) || this.settings.maxCorruptRetries < 0) throw new RangeError(`maxCorruptRetries ${this.settings.maxCorruptRetries}: a count`);
    this.urgent = new Channel('page-client-urgent', this);
    this.bulk = this.settings.singleConnection ? this.urgent : new Channel('page-client-bulk', this);
  }

  /**
   * Connect both channels, and fetch the image's description, metadata and
   * zero map. Rejects with PeerUnavailableError (nothing answered),
   * PeerRefusedError (the server refused the HELLO) or ProtocolError.
   */
  static async connect(url: string, options: RemoteSourceOptions = {}): Promise<RemoteSource> {
    const source = new RemoteSource(url, options);
    try {
      await source.open();
    } catch (error) {
      await source.close();
      throw error;
    }
    return source;
  }

  get sizeBytes(): number {
    return this.info.imageSizeBytes;
  }

  get pageSizeBytes(): number {
    return this.info.pageSizeBytes;
  }

  get state(): SourceState {
    return this.availability.state;
  }

  /** The server's outages so far (a connection lost until it is back), and the current one. */
  get availabilityStats(): AvailabilityStats {
    return this.availability.availabilityStats;
  }

  /** Hear the server become unreachable, come back, or be given up (AvailabilityEvent). */
  onAvailability(listener: (event: AvailabilityEvent) => void): () => void {
    return this.availability.onAvailability(listener);
  }

  read(offset: number, lengthBytes: number, target: Uint8Array, options: ReadOptions = {}): Promise<void> {
    const refusal = this.refusal(offset, lengthBytes, target, options.signal);
    if (refusal) return Promise.reject(refusal);
    if (lengthBytes === 0) return Promise.resolve();
    const operation = { offset, lengthBytes, target };
    return this.readParts(offset, lengthBytes, options, (fetch, data) => this.deliver(operation, fetch, data));
  }

  /** Why a read must be refused before it starts (the source closed or gone, then readRequestRefusal's reasons), or undefined. */
  private refusal(offset: number, lengthBytes: number, target: Uint8Array | undefined, signal: AbortSignal | undefined): Error | undefined {
    if (!this.availability.isOpen) return this.availability.readError(offset, lengthBytes);
    return readRequestRefusal(this, offset, lengthBytes, target, signal);
  }

  /** A read of [offset, +lengthBytes), refusal() passed, through the request table: `onPart` gets each READ's checked bytes as they come. */
  private readParts(offset: number, lengthBytes: number, options: ReadOptions, onPart: (fetch: WireRead, data: Uint8Array) => void): Promise<void> {
    const { signal } = options;
    const priority: ReadPriority = options.priority ?? 'demand';
    return this.table.read({
      offset,
      lengthBytes,
      priority,
      signal,
      deadlineMs: this.settings.readDeadlineMs,
      onDeadline: (read) => this.deadlinePassed(read),
      onPart: (fetch, data) => onPart(fetch as WireRead, data),
    }, (read) => {
      // Whole pages on the wire: an unaligned read is served from the pages around it.
      const page = this.info.pageSizeBytes;
      const first = Math.floor(offset / page) * page;
      const end = Math.ceil((offset + lengthBytes) / page) * page;
      for (let at = first; at < end; at += this.chunkBytes) this.table.join(read, this.fetchFor(at, Math.min(this.chunkBytes, end - at), priority));
    });
  }

  /**
   * read() without the copy: a range that one READ covers resolves with a
   * view of that READ's reply (its payload buffer, allocated for that frame
   * alone and never reused), each page checked against its image's checksum
   * like any reply; a longer or unaligned range is read into a buffer of its own.
   */
  readView(offset: number, lengthBytes: number, options: ReadOptions = {}): Promise<Uint8Array> {
    const refusal = this.refusal(offset, lengthBytes, undefined, options.signal);
    if (refusal) return Promise.reject(refusal);
    const page = this.info.pageSizeBytes;
    // One READ covers it (read() splits a range into READs of chunkBytes from its first page on).
    if (lengthBytes === 0 || offset % page !== 0 || lengthBytes % page !== 0 || lengthBytes > this.chunkBytes) {
      const target = new Uint8Array(lengthBytes);
      return this.read(offset, lengthBytes, target, options).then(() => target);
    }
    let view: Uint8Array | undefined;
    return this.readParts(offset, lengthBytes, options, (fetch, data) => {
      view = data.subarray(offset - fetch.offset, offset - fetch.offset + lengthBytes);
      this.payloadPool.retain(view);
    }).then(() => view!, (error: unknown) => {
      // Delivered, then failed (aborted, past its deadline) before the caller saw it: nobody will release it.
      if (view) this.payloadPool.release(view);
      throw error;
    });
  }

  /** The caller is done with a view readView gave: its reply's buffer may be reused for another reply. */
  releaseView(view: Uint8Array): void {
    this.payloadPool.release(view);
  }

  isZero(offset: number, lengthBytes: number): boolean {
    return this.zeroMap?.isZero(offset, lengthBytes) ?? false;
  }

  /** End both connections; every read still waiting rejects with SourceGoneError. */
  async close(): Promise<void> {
    this.availability.close(new ConnectionLostError('page server', 'closed: the source was closed'));
  }

  // Called by the channels.

  /** @internal */
  onReadReply(fetch: WireRead, reply: CheckedPagesMessage | ErrorMessage, dataCrcs?: Uint32Array): void {
    if (fetch.state !== 'sent') return;
    if (reply.type !== 'error') {
      this.violationsInARow = 0;
      // Every page against the checksum its image stores, before a byte of any is copied.
      const page = this.info.pageSizeBytes;
      const bad = firstPageMismatch(reply.data, page, reply.checksums, this.info.pageChecksum, dataCrcs);
      if (bad) return this.corruptReply(fetch, fetch.offset + bad.index * page, bad.expected, bad.actual);
      this.table.deliver(fetch, reply.data);
      fetch.channel.flush();
      return;
    }
    switch (reply.code) {
      case 'CANCELLED':
      case 'BUSY':
      case 'SHUTTING_DOWN':
        // Not asked for, or not now: try again (after a pause when the server is busy).
        if (reply.code === 'BUSY') {
          fetch.busyReplies++;
          this.table.move(fetch, 'retry');
          fetch.connection = undefined;
          // Dropped meanwhile (nobody waits) or failed (the source gone): not queued any more.
          setTimeout(() => (fetch.state === 'queued' ? fetch.channel.requeue(fetch) : undefined), 20);
        } else {
          fetch.channel.requeue(fetch);
        }
        return;
      default: {
        const failure = reply.code === 'SOURCE_UNAVAILABLE' ? 'transient' : 'fatal';
        this.table.fail(fetch, (operation) => new SourceReadError(operation.offset, operation.lengthBytes, `${this.description}: ${reply.code}: ${reply.text}`, { failure }));
        fetch.channel.flush();
      }
    }
  }

  /**
   * A reply with a page that fails its checksum: nothing of it is used. The
   * READ is sent again (a page garbled in the server's memory may come right),
   * then the read fails for good, naming the page.
   */
  private corruptReply(fetch: WireRead, pageOffset: number, expected: number, actual: number): void {
    this.stats.corruptReplies++;
    if (fetch.corruptReplies++ < this.settings.maxCorruptRetries) {
      fetch.channel.requeue(fetch);
      return;
    }
    this.table.fail(fetch, (operation) => new PageChecksumError(operation.offset, operation.lengthBytes, pageOffset, this.info.pageChecksum, expected, actual, this.description));
    fetch.channel.flush();
  }

  /** A read's deadline passed: it fails (with this), whatever state its fetches are in (they are dropped or cancelled if nobody else waits). */
  private deadlinePassed(operation: ReadOperation): SourceDeadlineError {
    this.stats.deadlinesPassed++;
    // The first page still missing; what its fetch went through, for the message.
    let first: WireRead | undefined;
    for (const fetch of operation.requests as Set<WireRead>) if (first === undefined || fetch.offset < first.offset) first = fetch;
    const pageOffset = Math.max(operation.offset, first?.offset ?? operation.offset);
    const what = first === undefined
      ? `${this.description}`
      : `${this.description}: its READ was sent ${first.sends} time(s), answered BUSY ${first.busyReplies} time(s), refused ${first.corruptReplies} time(s) for a bad checksum; ${first.channel.describe()}`;
    return new SourceDeadlineError(
      operation.offset,
      operation.lengthBytes,
      pageOffset,
      this.settings.readDeadlineMs,
      performance.now() - operation.startedAt,
      what,
      // A thread waits on a demand read: its pages are given up (poisoned). A background read may be asked again.
      { failure: operation.priority === 'demand' ? 'fatal' : 'transient' },
    );
  }

  /** @internal Count a connection lost to a violation; true when that was one too many and the source is now gone. */
  noteViolation(error: Error): boolean {
    this.violationsInARow++;
    if (this.violationsInARow < this.settings.maxProtocolViolations) return false;
    this.goneFor(new ProtocolError(
      error instanceof ProtocolError ? error.code : 'EPROTO_UNEXPECTED',
      `the page server at ${this.url} broke the protocol on ${this.violationsInARow} connections in a row; giving up on it (last: ${error.message})`,
      {},
      { cause: error },
    ));
    return true;
  }

  /** @internal How a reconnect's INFO differs from the first, or undefined. */
  compareInfo(info: InfoMessage): string | undefined {
    const before = this.info;
    if (info.imageSizeBytes !== before.imageSizeBytes) return `its image is ${info.imageSizeBytes} bytes, it was ${before.imageSizeBytes}`;
    if (info.pageSizeBytes !== before.pageSizeBytes) return `its pages are ${info.pageSizeBytes} bytes, they were ${before.pageSizeBytes}`;
    if (!equalBytes(info.imageId, before.imageId)) return `its image id is ${hex(info.imageId)}, it was ${hex(before.imageId)}`;
    if (info.maxReadBytes < this.chunkBytes) return `it takes READs of at most ${info.maxReadBytes} bytes, it took ${before.maxReadBytes}`;
    if (info.pageChecksum !== before.pageChecksum) return `its pages' checksum is ${info.pageChecksum}, it was ${before.pageChecksum}`;
    return undefined;
  }

  /** @internal */
  goneFor(error: Error): void {
    this.availability.giveUp(error);
  }

  /** @internal */
  countSent(channel: Channel): void {
    this.stats.readsSent++;
    if (channel === this.urgent) this.stats.urgentReadsSent++;
    else this.stats.bulkReadsSent++;
  }

  private async open(): Promise<void> {
    const [info, bulkInfo] = await Promise.all([this.urgent.connect(), this.bulk === this.urgent ? undefined : this.bulk.connect()]);
    this.info = info;
    const changed = bulkInfo && this.compareInfo(bulkInfo);
    if (changed) throw new ImageChangedError(this.url, `the two connections disagree: ${changed}`);
    const connection = this.urgent.connection!;
    // Whole pages, within the server's READ limit and this side's payload limit (each page comes with its checksum).
    const page = info.pageSizeBytes;
    const pagesFitting = Math.floor((this.settings.maxPayloadBytes - CHECKED_PAGES_HEADER_BYTES) / (page + PAGE_CHECKSUM_BYTES));
    this.chunkBytes = Math.min(Math.floor(info.maxReadBytes / page), pagesFitting) * page;
    if (this.chunkBytes < page) throw new ProtocolError('EPROTO_FIELD', `a ${page}-byte page does not fit this client's ${this.settings.maxPayloadBytes}-byte payload limit`);
    if (info.hasMetadata) this.metadata = await this.fetchMetadata(connection, info.metadataLengthBytes);
    if (info.hasZeroMap) this.zeroMap = await this.fetchZeroMap(connection, info);
    this.urgent.connected();
    if (this.bulk !== this.urgent) this.bulk.connected();
  }

  private async fetchMetadata(connection: ClientConnection<WireRead>, totalLengthBytes: number): Promise<Uint8Array> {
    if (totalLengthBytes > this.settings.maxMetadataBytes) {
      throw new ProtocolError('EPROTO_FIELD', `the server's metadata is ${totalLengthBytes} bytes; at most ${this.settings.maxMetadataBytes} are taken`, { field: 'metadataLengthBytes' });
    }
    const metadata = new Uint8Array(totalLengthBytes);
    const chunk = this.settings.maxPayloadBytes - METADATA_HEADER_BYTES;
    for (let offset = 0; offset < totalLengthBytes;) {
      const reply = await connection.call({ type: 'get-metadata', offset, maxLengthBytes: Math.min(chunk, totalLengthBytes - offset) }, 'metadata');
      if (reply.type !== 'metadata') throw new ProtocolError('EPROTO_MISMATCH', `GET_METADATA answered with ${reply.type}`);
      if (reply.offset !== offset || reply.totalLengthBytes !== totalLengthBytes || reply.bytes.length === 0 || offset + reply.bytes.length > totalLengthBytes) {
        throw new ProtocolError('EPROTO_MISMATCH', `GET_METADATA at ${offset} of ${totalLengthBytes} answered with ${reply.bytes.length} bytes at ${reply.offset} of ${reply.totalLengthBytes}`);
      }
      metadata.set(reply.bytes, offset);
      offset += reply.bytes.length;
    }
    return metadata;
  }

  private async fetchZeroMap(connection: ClientConnection<WireRead>, info: InfoMessage): Promise<ZeroMap> {
    const pageCount = info.imageSizeBytes / info.pageSizeBytes;
    const map = new ZeroMap(pageCount, info.pageSizeBytes);
    // Whole bytes of bitmap per request, within both limits.
    // The replies come to this side: its payload limit bounds the bitmap.
    const perRequest = Math.min(MAX_ZERO_MAP_PAGES, (this.settings.maxPayloadBytes - ZERO_MAP_HEADER_BYTES) * 8);
    for (let firstPage = 0; firstPage < pageCount; firstPage += perRequest) {
      const count = Math.min(perRequest, pageCount - firstPage);
      const reply = await connection.call({ type: 'get-zero-map', firstPage, pageCount: count }, 'zero-map');
      if (reply.type !== 'zero-map' || reply.firstPage !== firstPage || reply.pageCount !== count) {
        throw new ProtocolError('EPROTO_MISMATCH', `GET_ZERO_MAP of pages ${firstPage}+${count} answered with ${reply.type === 'zero-map' ? `pages ${reply.firstPage}+${reply.pageCount}` : reply.type}`);
      }
      map.assign(firstPage, count, reply.bitmap);
    }
    return map;
  }

  /** The fetch of [offset, +length) a read of `priority` joins, or a new one. */
  private fetchFor(offset: number, lengthBytes: number, priority: ReadPriority): WireRead {
    const range = `${offset}+${lengthBytes}`;
    // A demand read joins only a fetch on the urgent channel: one queued behind bulk data would wait for it.
    const existing = this.table.get(`${this.urgent.name}:${range}`) ?? (priority === 'background' ? this.table.get(`${this.bulk.name}:${range}`) : undefined);
    if (existing) {
      this.stats.coalesced++;
      return existing;
    }
    const channel = priority === 'demand' ? this.urgent : this.bulk;
    const fetch: WireRead = { key: `${channel.name}:${range}`, offset, lengthBytes, channel, priority, state: 'queued', connection: undefined, requestId: 0, waiters: new Set(), corruptReplies: 0, busyReplies: 0, sends: 0 };
    this.table.add(fetch);
    channel.enqueue(fetch);
    return fetch;
  }

  /** Copy a fetch's checked bytes into the part of the operation's target they cover. */
  private deliver(operation: { readonly offset: number; readonly lengthBytes: number; readonly target: Uint8Array }, fetch: WireRead, data: Uint8Array): void {
    const start = Math.max(fetch.offset, operation.offset);
    const end = Math.min(fetch.offset + fetch.lengthBytes, operation.offset + operation.lengthBytes);
    operation.target.set(data.subarray(start - fetch.offset, end - fetch.offset), start - operation.offset);
  }

  /** The source gave up or closed: every read still waiting fails (SourceGoneError), and both connections end. */
  private ended(): void {
    this.table.failAll((operation) => this.availability.readError(operation.offset, operation.lengthBytes));
    this.urgent.close();
    this.bulk.close();
  }
}

function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((byte, i) => byte === b[i]);
}

function hex(bytes: Uint8Array): string {
  return Buffer.from(bytes).toString('hex');
}
