// The page server: serves one image's pages, its metadata and its zero map
// to any number of clients over TCP (the protocol is src/protocol/, drawn in
// docs/protocol.md). Each connection is a ServedConnection; this file is
// listening, the loopback rule, admission, the liveness sweep and the summary.
//
// Admission: at most maxConnections connections at once, and at most
// maxConnectionsPerPeer from one peer address, so one host cannot take every
// slot. A connection that would pass either limit makes room by closing the
// connection (of all, or of that peer) that has been quiet longest, if one is:
// still without HELLO, or idle with nothing outstanding (as a web server's
// keep-alive connections are the first to go when it is full). With none
// quiet it is refused: ERROR BUSY, then closed. Node's own limit
// (server.maxConnections, past which it drops a connection as it is
// accepted) is twice maxConnections: a backstop for connections refused or
// closing that have not finished closing.
//
// A sweep, a few times per shortest timeout, closes connections idle for
// idleTimeoutMs or stalled for sendTimeoutMs, and takes back room from
// stalled connections when others wait for it (reply-budget.ts).
import { EventEmitter } from 'node:events';
import { createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import {
  DEFAULT_SERVER_MAX_PAYLOAD_BYTES,
  IMAGE_ID_BYTES,
  MAX_MAX_PAYLOAD_BYTES,
  MAX_PAGE_BYTES,
  MAX_READ_BYTES,
  MIN_MAX_PAYLOAD_BYTES,
  MIN_PAGE_BYTES,
  FRAME_HEADER_BYTES,
  MAX_ZERO_MAP_PAGES,
  ZERO_MAP_HEADER_BYTES,
  type InfoMessage,
} from '../protocol/index.js';
import { LatencyHistogram } from '../stats/latency-histogram.js';
import type { PageSource } from '../sources/page-source.js';
import { formatHostPort, isLoopbackHost } from '../net/address.js';
import { PageServerError, RemoteListenRefusedError } from './errors.js';
import { ReplyBudget } from './reply-budget.js';
import { ServedConnection, checkedPagesPayloadBytes, type PageService, type ServedConnectionSummary } from './served-connection.js';
import { ZeroMap } from './zero-map.js';
import { computedPageChecksums, type PageChecksums } from './page-checksums.js';

export interface PageServerOptions {
  /** The image. The server reads it, never closes it. */
  source: PageSource;
  /** The source's page size (default 4096): READs must be whole pages of it. */
  pageSizeBytes?: number;
  /** Served by GET_METADATA (a VM snapshot's VM state); default none. */
  metadata?: Uint8Array;
  /** Pages known to be zero. Default: built from source.isZero when the source has it; `false` for none. */
  zeroMap?: ZeroMap | false;
  /** 16 bytes naming the image's content, so a reconnecting client can tell another image (default: all zero, unknown). */
  imageId?: Uint8Array;
  /**
   * The checksums the image stores for its pages, sent with every page
   * (a snapshot's: SnapshotPages.pageChecksums). Default: CRC32C of the bytes
   * as read, for a source that stores none (memory, a raw file).
   */
  pageChecksums?: PageChecksums;
  /** Default 127.0.0.1. */
  host?: string;
  /** Default 0: any free port (see `address`). */
  port?: number;
  /** Required for any host that is not loopback: the protocol has no authentication or encryption. */
  allowRemote?: boolean;
  /** Reads run concurrently per connection up to this; more wait in its queue (default 16). */
  maxInFlightPerConnection?: number;
  /** Requests a connection may have waiting; then its socket is not read until they start, and requests past it are answered BUSY (default 64). */
  maxQueuedPerConnection?: number;
  /** The longest READ taken (default 2 MiB, the protocol's maximum). */
  maxReadBytes?: number;
  /** The largest payload this server receives (default 64 KiB: it is sent only requests). */
  maxPayloadBytes?: number;
  /** Time a client has to send its HELLO (default 10 s). */
  helloTimeoutMs?: number;
  /** Connections at once; one more closes the connection quiet longest, or is refused BUSY (default 256). */
  maxConnections?: number;
  /** Connections at once from one peer address (default half of maxConnections): one host cannot take every slot. */
  maxConnectionsPerPeer?: number;
  /** A connection with nothing outstanding that sends no frame (a request, a PING) for this long is closed, SHUTTING_DOWN (default 60 s). */
  idleTimeoutMs?: number;
  /** A connection whose socket takes none of its replies for this long is closed (default 30 s). */
  sendTimeoutMs?: number;
  /** Reply bytes one connection may hold (reads under way and replies the kernel has not taken); then its requests wait (default 16 MiB). */
  maxQueuedReplyBytesPerConnection?: number;
  /** Reply bytes all connections together may hold, shared fairly (default 256 MiB). */
  maxQueuedReplyBytes?: number;
  /** While connections wait for room, one over its fair share whose socket took nothing for this long is closed (default 1 s). */
  evictStalledAfterMs?: number;
}

export interface PageServerEvents {
  'client-connected': [client: ServedConnection];
  /** Its HELLO was accepted. */
  'client-hello': [client: ServedConnection];
  'client-notice': [client: ServedConnection, message: string];
  /** A refused HELLO, a protocol violation, a socket error: logged, the connection closed, the others go on. */
  'client-error': [client: ServedConnection, error: Error];
  'client-gone': [client: ServedConnection, summary: ServedConnectionSummary];
  /** The listening socket failed. */
  error: [error: Error];
}

export interface PageServerSummary {
  /** "127.0.0.1:7000". */
  address: string;
  source: string;
  /** The open connections and the last CLOSED_SUMMARIES_KEPT closed ones, in order of arrival. */
  clients: ServedConnectionSummary[];
  /** Over every connection seen, the ones whose summaries were let go included. */
  totals: PageServerTotals;
}

export interface PageServerTotals { clients: number; requests: number; reads: number; bytesServed: number; bytesSent: number; errorsSent: number; cancelled: number; sourceErrors: number }

/** Closed connections whose summaries are kept; older ones count in the totals only, so a stream of short connections cannot grow the server. */
export const CLOSED_SUMMARIES_KEPT = 1024;

export class PageServer extends EventEmitter<PageServerEvents> {
  private readonly live = new Map<number, ServedConnection>();
  private readonly gone = new Map<number, ServedConnectionSummary>();
  /** The closed connections whose summaries were let go. */
  private readonly forgotten: PageServerTotals = { clients: 0, requests: 0, reads: 0, bytesServed: 0, bytesSent: 0, errorsSent: 0, cancelled: 0, sourceErrors: 0 };
  private nextId = 1;
  private closing: Promise<PageServerSummary> | undefined;
  private readonly listening: { host: string; port: number };
  private readonly sweepTimer: NodeJS.Timeout;

  /** @internal Use startPageServer. */
  constructor(private readonly server: Server, private readonly service: PageService, private readonly limits: AdmissionLimits) {
    super();
    const address = server.address() as AddressInfo;
    this.listening = { host: address.address, port: address.port };
    server.on('connection', (socket) => this.admit(socket));
    server.on('error', (error) => this.emit('error', error));
    const sweepMs = Math.min(1000, Math.max(10, Math.floor(Math.min(service.idleTimeoutMs, service.sendTimeoutMs, service.budget.limits.evictStalledAfterMs) / 4)));
    this.sweepTimer = setInterval(() => this.sweep(), sweepMs);
    this.sweepTimer.unref();
  }

  /** Reply bytes every connection holds now (reads under way, replies the kernel has not taken): at most maxQueuedReplyBytes, but for the small unasked replies (PONG, ERROR). */
  get queuedReplyBytes(): number {
    return this.service.budget.queuedBytes;
  }

  /** The most reply bytes held at once since the start. */
  get peakQueuedReplyBytes(): number {
    return this.service.budget.peakQueuedBytes;
  }

  /** Where it listens: with port 0, the port the kernel chose. */
  get address(): { host: string; port: number } {
    return { ...this.listening };
  }

  /** "tcp://127.0.0.1:7000", what a RemoteSource connects to. */
  get url(): string {
    return `tcp://${formatHostPort(this.address)}`;
  }

  get info(): InfoMessage {
    return this.service.info;
  }

  get clients(): ServedConnection[] {
    return [...this.live.values()];
  }

  /** How long the server's source reads took (every connection's, since the start). */
  get readLatency(): LatencyHistogram {
    return this.service.readLatency;
  }

  summary(): PageServerSummary {
    const clients = [...this.gone.values(), ...[...this.live.values()].map((c) => c.summary())].sort((a, b) => a.id - b.id);
    const totals = { ...this.forgotten };
    for (const client of clients) addTo(totals, client);
    return { address: formatHostPort(this.address), source: this.service.source.description, clients, totals };
  }

  /** Stop accepting, tell every client the server is going away, and wait until every connection is closed. */
  close(): Promise<PageServerSummary> {
    this.closing ??= this.shutdown();
    return this.closing;
  }

  private admit(socket: Socket): void {
    if (this.closing) {
      socket.destroy();
      return;
    }
    const client = new ServedConnection(this.nextId++, socket, this.service);
    const refusal = this.makeRoomFor(client);
    this.live.set(client.id, client);
    client.on('hello', () => this.emit('client-hello', client));
    client.on('notice', (message) => this.emit('client-notice', client, message));
    client.on('error', (error) => this.emit('client-error', client, error));
    client.on('gone', (summary) => {
      this.live.delete(client.id);
      this.gone.set(client.id, summary);
      if (this.gone.size > CLOSED_SUMMARIES_KEPT) {
        const [oldestId, oldest] = this.gone.entries().next().value as [number, ServedConnectionSummary];
        addTo(this.forgotten, oldest);
        this.gone.delete(oldestId);
      }
      this.emit('client-gone', client, summary);
    });
    this.emit('client-connected', client);
    client.start();
    if (refusal !== undefined) client.refuseBusy(refusal);
  }

  /** Make room for `client` under both limits by closing the quietest connection; what to refuse it with when none is quiet. */
  private makeRoomFor(client: ServedConnection): string | undefined {
    const nowMs = performance.now();
    const open = [...this.live.values()].filter((c) => c.state === 'awaiting-hello' || c.state === 'serving');
    const samePeer = open.filter((c) => c.peerHost === client.peerHost);
    const limits: Array<{ among: ServedConnection[]; max: number; what: string }> = [
      { among: samePeer, max: this.limits.maxConnectionsPerPeer, what: `${this.limits.maxConnectionsPerPeer} connections from ${client.peerHost}` },
      { among: open, max: this.limits.maxConnections, what: `${this.limits.maxConnections} connections` },
    ];
    for (const { among, max, what } of limits) {
      if (among.length < max) continue;
      let quietest: ServedConnection | undefined;
      let quietestMs = -1;
      for (const c of among) {
        const quietMs = c.quietForMs(nowMs);
        if (quietMs !== undefined && quietMs > quietestMs) {
          quietest = c;
          quietestMs = quietMs;
        }
      }
      if (quietest === undefined) return `the server has ${what} open, every one busy: retry later`;
      quietest.evictForRoom(`closed after ${Math.round(quietestMs)} ms quiet to make room for a new connection (the server has ${what} open)`);
      // The one closed counted under both limits (it is gone from `open` for the next).
      open.splice(open.indexOf(quietest), 1);
    }
    return undefined;
  }

  private sweep(): void {
    const nowMs = performance.now();
    for (const client of this.live.values()) client.checkLiveness(nowMs);
    this.service.budget.relievePressure(nowMs);
  }

  private async shutdown(): Promise<PageServerSummary> {
    clearInterval(this.sweepTimer);
    const stopped = new Promise<void>((resolve) => this.server.close(() => resolve()));
    const clients = this.clients;
    const allGone = Promise.all(clients.map((client) => new Promise<void>((resolve) => {
      if (client.state === 'closed') resolve();
      else client.once('gone', () => resolve());
    })));
    for (const client of clients) client.close();
    await Promise.all([stopped, allGone]);
    return this.summary();
  }
}

function addTo(totals: PageServerTotals, client: ServedConnectionSummary): void {
  totals.clients++;
  totals.requests += client.requests;
  totals.reads += client.reads;
  totals.bytesServed += client.bytesServed;
  totals.bytesSent += client.bytesSent;
  totals.errorsSent += client.errorsSent;
  totals.cancelled += client.cancelled;
  totals.sourceErrors += client.sourceErrors;
}

/**
 * Listen and serve. A host that is not loopback is refused unless
 * allowRemote is set (RemoteListenRefusedError, code EUSAGE).
 */
export async function startPageServer(options: PageServerOptions): Promise<PageServer> {
  const host = options.host ?? '127.0.0.1';
  if (!isLoopbackHost(host) && options.allowRemote !== true) throw new RemoteListenRefusedError(host);
  const service = pageService(options);
  const limits = admissionLimits(options);
  const server = createServer({ noDelay: true });
  server.maxConnections = 2 * limits.maxConnections;
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen({ host, port: options.port ?? 0 }, () => {
      server.off('error', reject);
      resolve();
    });
  });
  return new PageServer(server, service, limits);
}

interface AdmissionLimits {
  maxConnections: number;
  maxConnectionsPerPeer: number;
}

function admissionLimits(options: PageServerOptions): AdmissionLimits {
  const maxConnections = options.maxConnections ?? 256;
  if (!Number.isSafeInteger(maxConnections) || maxConnections < 1) throw new PageServerError(`maxConnections ${maxConnections}: at least 1`);
  const maxConnectionsPerPeer = options.maxConnectionsPerPeer ?? Math.max(1, Math.floor(maxConnections / 2));
  if (!Number.isSafeInteger(maxConnectionsPerPeer) || maxConnectionsPerPeer < 1 || maxConnectionsPerPeer > maxConnections) {
    throw new PageServerError(`maxConnectionsPerPeer ${maxConnectionsPerPeer}: 1..maxConnections (${maxConnections})`);
  }
  return { maxConnections, maxConnectionsPerPeer };
}

function pageService(options: PageServerOptions): PageService {
  const { source } = options;
  const pageSizeBytes = options.pageSizeBytes ?? 4096;
  const fail = (message: string): never => {
    throw new PageServerError(message);
  };
  if (pageSizeBytes < MIN_PAGE_BYTES || pageSizeBytes > MAX_PAGE_BYTES || (pageSizeBytes & (pageSizeBytes - 1)) !== 0) {
    fail(`page size ${pageSizeBytes}: a power of two, ${MIN_PAGE_BYTES}..${MAX_PAGE_BYTES}`);
  }
  if (source.sizeBytes % pageSizeBytes !== 0) fail(`the ${source.sizeBytes}-byte image of ${source.description} is not whole ${pageSizeBytes}-byte pages`);
  const maxReadBytes = options.maxReadBytes ?? MAX_READ_BYTES;
  if (maxReadBytes < pageSizeBytes || maxReadBytes > MAX_READ_BYTES || maxReadBytes % pageSizeBytes !== 0) {
    fail(`maxReadBytes ${maxReadBytes}: whole pages, ${pageSizeBytes}..${MAX_READ_BYTES}`);
  }
  const receiveMaxPayloadBytes = options.maxPayloadBytes ?? DEFAULT_SERVER_MAX_PAYLOAD_BYTES;
  if (receiveMaxPayloadBytes < MIN_MAX_PAYLOAD_BYTES || receiveMaxPayloadBytes > MAX_MAX_PAYLOAD_BYTES) {
    fail(`maxPayloadBytes ${receiveMaxPayloadBytes}: ${MIN_MAX_PAYLOAD_BYTES}..${MAX_MAX_PAYLOAD_BYTES}`);
  }
  const maxInFlight = options.maxInFlightPerConnection ?? 16;
  if (!Number.isSafeInteger(maxInFlight) || maxInFlight < 1) fail(`maxInFlightPerConnection ${maxInFlight}: at least 1`);
  const maxQueued = options.maxQueuedPerConnection ?? 64;
  if (!Number.isSafeInteger(maxQueued) || maxQueued < 1) fail(`maxQueuedPerConnection ${maxQueued}: at least 1`);
  const imageId = options.imageId ?? new Uint8Array(IMAGE_ID_BYTES);
  if (imageId.length !== IMAGE_ID_BYTES) fail(`an image id is ${IMAGE_ID_BYTES} bytes, not ${imageId.length}`);
  const pageCount = source.sizeBytes / pageSizeBytes;
  let zeroMap: ZeroMap | undefined;
  if (options.zeroMap instanceof ZeroMap) {
    if (options.zeroMap.pageCount !== pageCount || options.zeroMap.pageSizeBytes !== pageSizeBytes) {
      fail(`the zero map covers ${options.zeroMap.pageCount} pages of ${options.zeroMap.pageSizeBytes} bytes; the image has ${pageCount} of ${pageSizeBytes}`);
    }
    zeroMap = options.zeroMap;
  } else if (options.zeroMap !== false && source.isZero) {
    zeroMap = ZeroMap.fromPredicate(pageCount, pageSizeBytes, (offset, length) => source.isZero!(offset, length));
  }
  const metadata = options.metadata ?? new Uint8Array(0);
  const pageChecksums = options.pageChecksums ?? computedPageChecksums();
  const positive = (name: string, value: number): number => {
    if (!Number.isSafeInteger(value) || value < 1) fail(`${name} ${value}: a positive integer`);
    return value;
  };
  const helloTimeoutMs = positive('helloTimeoutMs', options.helloTimeoutMs ?? 10_000);
  const idleTimeoutMs = positive('idleTimeoutMs', options.idleTimeoutMs ?? 60_000);
  const sendTimeoutMs = positive('sendTimeoutMs', options.sendTimeoutMs ?? 30_000);
  const evictStalledAfterMs = positive('evictStalledAfterMs', options.evictStalledAfterMs ?? 1000);
  // The largest reply this server sends (METADATA is cut to maxReadBytes): every connection must be able to hold one.
  const largestReplyBytes = FRAME_HEADER_BYTES + Math.max(checkedPagesPayloadBytes(maxReadBytes, pageSizeBytes), ZERO_MAP_HEADER_BYTES + MAX_ZERO_MAP_PAGES / 8);
  const maxPerConnectionBytes = positive('maxQueuedReplyBytesPerConnection', options.maxQueuedReplyBytesPerConnection ?? 16 * 1024 * 1024);
  const maxTotalBytes = positive('maxQueuedReplyBytes', options.maxQueuedReplyBytes ?? 256 * 1024 * 1024);
  if (maxPerConnectionBytes < largestReplyBytes) fail(`maxQueuedReplyBytesPerConnection ${maxPerConnectionBytes}: at least the largest reply, ${largestReplyBytes} bytes`);
  if (maxTotalBytes < maxPerConnectionBytes) fail(`maxQueuedReplyBytes ${maxTotalBytes}: at least maxQueuedReplyBytesPerConnection (${maxPerConnectionBytes})`);
  return {
    source,
    pageChecksums,
    metadata,
    zeroMap,
    receiveMaxPayloadBytes,
    maxInFlight,
    maxQueued,
    helloTimeoutMs,
    idleTimeoutMs,
    sendTimeoutMs,
    budget: new ReplyBudget({ maxTotalBytes, maxPerConnectionBytes, evictStalledAfterMs }),
    readLatency: new LatencyHistogram(),
    info: {
      type: 'info',
      imageSizeBytes: source.sizeBytes,
      pageSizeBytes,
      hasMetadata: metadata.length > 0,
      hasZeroMap: zeroMap !== undefined,
      metadataLengthBytes: metadata.length,
      maxReadBytes,
      imageId,
      pageChecksum: pageChecksums.algorithm,
    },
  };
}
