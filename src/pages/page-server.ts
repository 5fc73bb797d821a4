// The page server: serves one image's pages, its metadata and its zero map
// to any number of clients over TCP (the protocol is src/protocol/, drawn in
// docs/protocol.md). Each connection is a ServedConnection; this file is
// listening, the loopback rule, and the summary.
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
  type InfoMessage,
} from '../protocol/index.js';
import { LatencyHistogram } from '../metrics/latency-histogram.js';
import type { PageSource } from '../sources/page-source.js';
import { formatHostPort, isLoopbackHost } from './address.js';
import { PageServerError, RemoteListenRefusedError } from './errors.js';
import { ServedConnection, type PageService, type ServedConnectionSummary } from './served-connection.js';
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
  /** Requests a connection may have waiting; then its socket is not read until they start (default 64). */
  maxQueuedPerConnection?: number;
  /** The longest READ taken (default 2 MiB, the protocol's maximum). */
  maxReadBytes?: number;
  /** The largest payload this server receives (default 64 KiB: it is sent only requests). */
  maxPayloadBytes?: number;
  /** Time a client has to send its HELLO (default 10 s). */
  helloTimeoutMs?: number;
  /** Connections at once; more are refused by the kernel's accept queue (default 256). */
  maxConnections?: number;
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
  /** Every connection seen, the closed ones included, in order of arrival. */
  clients: ServedConnectionSummary[];
  totals: { clients: number; requests: number; reads: number; bytesServed: number; bytesSent: number; errorsSent: number; cancelled: number; sourceErrors: number };
}

export class PageServer extends EventEmitter<PageServerEvents> {
  private readonly live = new Map<number, ServedConnection>();
  private readonly gone = new Map<number, ServedConnectionSummary>();
  private nextId = 1;
  private closing: Promise<PageServerSummary> | undefined;
  private readonly listening: { host: string; port: number };

  /** @internal Use startPageServer. */
  constructor(private readonly server: Server, private readonly service: PageService) {
    super();
    const address = server.address() as AddressInfo;
    this.listening = { host: address.address, port: address.port };
    server.on('connection', (socket) => this.admit(socket));
    server.on('error', (error) => this.emit('error', error));
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
    const totals = { clients: clients.length, requests: 0, reads: 0, bytesServed: 0, bytesSent: 0, errorsSent: 0, cancelled: 0, sourceErrors: 0 };
    for (const client of clients) {
      totals.requests += client.requests;
      totals.reads += client.reads;
      totals.bytesServed += client.bytesServed;
      totals.bytesSent += client.bytesSent;
      totals.errorsSent += client.errorsSent;
      totals.cancelled += client.cancelled;
      totals.sourceErrors += client.sourceErrors;
    }
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
    this.live.set(client.id, client);
    client.on('hello', () => this.emit('client-hello', client));
    client.on('notice', (message) => this.emit('client-notice', client, message));
    client.on('error', (error) => this.emit('client-error', client, error));
    client.on('gone', (summary) => {
      this.live.delete(client.id);
      this.gone.set(client.id, summary);
      this.emit('client-gone', client, summary);
    });
    this.emit('client-connected', client);
    client.start();
  }

  private async shutdown(): Promise<PageServerSummary> {
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

/**
 * Listen and serve. A host that is not loopback is refused unless
 * allowRemote is set (RemoteListenRefusedError, code EUSAGE).
 */
export async function startPageServer(options: PageServerOptions): Promise<PageServer> {
  const host = options.host ?? '127.0.0.1';
  if (!isLoopbackHost(host) && options.allowRemote !== true) throw new RemoteListenRefusedError(host);
  const service = pageService(options);
  const server = createServer({ noDelay: true });
  server.maxConnections = options.maxConnections ?? 256;
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen({ host, port: options.port ?? 0 }, () => {
      server.off('error', reject);
      resolve();
    });
  });
  return new PageServer(server, service);
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
  return {
    source,
    pageChecksums,
    metadata,
    zeroMap,
    receiveMaxPayloadBytes,
    maxInFlight,
    maxQueued,
    helloTimeoutMs: options.helloTimeoutMs ?? 10_000,
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
