// A page-fault handler process in the shape Firecracker's snapshot restore
// expects: it listens on a Unix socket, each client sends the regions it wants
// served and its userfaultfd, and the server fills that client's faults from
// one memory file until the client goes away. Every client is a ClientSession
// with its own Pager, all in this one event loop: nothing here blocks, and no
// thread here ever touches a client's memory.
import { EventEmitter } from 'node:events';
import { chmodSync, chownSync, lstatSync, unlinkSync } from 'node:fs';
import { native, type NativeWatch } from '../native.js';
import { PagerMetrics } from '../pager/metrics.js';
import type { SharedPageCache } from '../pager/page-cache.js';
import type { PrefetchOptions } from '../pager/readahead.js';
import type { PageSource } from '../sources/page-source.js';
import { listenReplacingStale, removeSocketFile } from '../net/unix-socket-path.js';
import { ERRNO } from '../errno.js';
import { errorForErrno } from '../uffd/errors.js';
import { ClientSession, type ClientEndReason, type ClientSummary } from './client-session.js';

export interface HandlerServerOptions {
  socketPath: string;
  /** The memory file every client's `offset`s index (see openMemoryFile). The server reads it, never closes it. */
  source: PageSource;
  prefetch?: PrefetchOptions | false;
  /** Time a client has to send both its JSON and its uffd (default 10 s). */
  handshakeTimeoutMs?: number;
  /** Check each region is registered with the client's uffd before serving (default true). */
  probeRegions?: boolean;
  /** listen(2) backlog (default 64). */
  backlog?: number;
  /**
   * Permission bits for the socket file (e.g. 0o660): connect(2) needs write
   * permission on it, so a VMM running as another user (Firecracker's jailer)
   * needs this or socketGroup. Default: what bind(2) and the umask give.
   */
  socketMode?: number;
  /** Group id to give the socket file (chown to a group this process may give files to). */
  socketGroupId?: number;
  /**
   * Keep the source's checked pages in this page cache, for clients that ask
   * for it (handshake.ts: a request before the regions): their memory is a
   * private mapping of it, every page read and checked once for all of them.
   * The server uses it, its owner closes it after the server.
   */
  pageCache?: SharedPageCache;
}

export interface HandlerServerEvents {
  'client-connected': [client: ClientSession];
  /** The client's handshake was accepted and its pager is serving. */
  'client-ready': [client: ClientSession];
  'client-notice': [client: ClientSession, message: string];
  /** A refused handshake, a lost socket, a pager error: logged, and the other clients go on. */
  'client-error': [client: ClientSession, error: Error];
  /** The client's session is over and its descriptors closed. */
  'client-gone': [client: ClientSession, summary: ClientSummary];
  /** A connection hung up without sending a byte (another server checking the socket is live): not a client, not an error. */
  'silent-connection': [client: ClientSession];
  /** accept(2) failed. */
  error: [error: Error];
}

export interface HandlerServerSummary {
  socketPath: string;
  source: string;
  /** Every client seen, the gone ones included, in order of arrival (not the silent connections). */
  clients: ClientSummary[];
  /** pagesCopied and pagesMapped (from the page cache) include the region probes' pages. silentConnections: connections that hung up without a byte (another server checking the socket is live), not clients. */
  totals: { clients: number; faults: number; pagesCopied: number; pagesMapped: number; zeroPages: number; silentConnections: number };
}

/** What the server has served, for /metrics: the sessions over, summed, and the live ones. */
export interface HandlerServerMetricsView {
  /** The pagers of every session over, added up (so the exported counters never go down). */
  gone: PagerMetrics;
  goneProbePages: number;
  endedByReason: Readonly<Record<ClientEndReason, number>>;
  live: readonly ClientSession[];
}

export class HandlerServer extends EventEmitter<HandlerServerEvents> {
  private readonly live = new Map<number, ClientSession>();
  private readonly goneSummaries = new Map<number, ClientSummary>();
  private silentConnections = 0;
  private readonly goneMetrics = new PagerMetrics();
  private goneProbePages = 0;
  private readonly endedByReason: Record<ClientEndReason, number> = { hangup: 0, exited: 0, refused: 0, failed: 0, 'server-closed': 0 };
  private nextId = 1;
  private listenWatch: NativeWatch | undefined;
  private closing: Promise<HandlerServerSummary> | undefined;

  /** @internal Use startHandlerServer. */
  constructor(
    private readonly options: HandlerServerOptions,
    private readonly listenFd: number,
    /** The socket file's inode, so close() never unlinks a file someone else put there since. */
    private readonly socketInode: number,
  ) {
    super();
  }

  get socketPath(): string {
    return this.options.socketPath;
  }

  get source(): PageSource {
    return this.options.source;
  }

  /** Clients connected now (any state short of closed). */
  get clients(): ClientSession[] {
    return [...this.live.values()];
  }

  summary(): HandlerServerSummary {
    const clients = [...this.goneSummaries.values(), ...[...this.live.values()].map((c) => c.summary())].sort((a, b) => a.id - b.id);
    const totals = { clients: clients.length, faults: 0, pagesCopied: 0, pagesMapped: 0, zeroPages: 0, silentConnections: this.silentConnections };
    for (const client of clients) {
      totals.faults += client.metrics?.faults ?? 0;
      totals.pagesCopied += (client.metrics?.pagesCopied ?? 0) + (client.pageCache ? 0 : client.probePagesCopied);
      totals.pagesMapped += (client.metrics?.pagesMapped ?? 0) + (client.pageCache ? client.probePagesCopied : 0);
      totals.zeroPages += client.metrics?.zeroPages ?? 0;
    }
    return { socketPath: this.socketPath, source: this.source.description, clients, totals };
  }

  metricsView(): HandlerServerMetricsView {
    return { gone: this.goneMetrics, goneProbePages: this.goneProbePages, endedByReason: this.endedByReason, live: this.clients };
  }

  /** Stop accepting, end every client (stopping its pager and closing its uffd), remove the socket file. */
  close(): Promise<HandlerServerSummary> {
    this.closing ??= this.shutdown();
    return this.closing;
  }

  /** @internal */
  listen(): void {
    this.listenWatch = native.watchFd(this.listenFd, native.constants.UV_READABLE, () => this.acceptAll());
  }

  private acceptAll(): void {
    if (this.closing) return;
    for (;;) {
      const fd = native.unixAccept(this.listenFd);
      if (fd < 0) {
        if (-fd === ERRNO.EAGAIN || -fd === ERRNO.ECONNABORTED) return;
        // EMFILE and friends: the connection waits in the backlog until a client leaves.
        this.emit('error', errorForErrno('accept4', -fd));
        return;
      }
      this.admit(fd);
    }
  }

  private admit(fd: number): void {
    const client = new ClientSession(this.nextId++, fd, {
      source: this.options.source,
      prefetch: this.options.prefetch,
      handshakeTimeoutMs: this.options.handshakeTimeoutMs,
      probeRegions: this.options.probeRegions,
      pageCache: this.options.pageCache,
    });
    this.live.set(client.id, client);
    client.on('ready', () => this.emit('client-ready', client));
    client.on('notice', (message) => this.emit('client-notice', client, message));
    client.on('error', (error) => this.emit('client-error', client, error));
    client.on('gone', (summary) => {
      this.live.delete(client.id);
      if (summary.silent) {
        // Connected and hung up without a word: another server's check that the socket is live, not a client.
        this.silentConnections++;
        this.emit('silent-connection', client);
        return;
      }
      this.goneSummaries.set(client.id, summary);
      if (client.pager) this.goneMetrics.add(client.pager.metrics);
      this.goneProbePages += client.probePages;
      this.endedByReason[summary.endReason ?? 'failed']++;
      this.emit('client-gone', client, summary);
    });
    this.emit('client-connected', client);
    client.start();
  }

  private async shutdown(): Promise<HandlerServerSummary> {
    if (this.listenWatch) native.unwatchFd(this.listenWatch);
    this.listenWatch = undefined;
    native.close(this.listenFd);
    removeSocketFile(this.socketPath, this.socketInode);
    await Promise.all(this.clients.map((client) => client.close()));
    return this.summary();
  }
}

/**
 * Listen on `socketPath` and serve every client that connects. A socket file
 * left by a server that died is replaced; one a live server listens on is not.
 */
export async function startHandlerServer(options: HandlerServerOptions): Promise<HandlerServer> {
  const listenFd = listenReplacingStale(options.socketPath, options.backlog ?? 64);
  // No client is accepted before the watch starts in listen() below; one that connects in
  // between waits in the backlog with the permissions it had at bind(2) time.
  try {
    if (options.socketGroupId !== undefined) chownSync(options.socketPath, -1, options.socketGroupId);
    if (options.socketMode !== undefined) chmodSync(options.socketPath, options.socketMode);
  } catch (error) {
    native.close(listenFd);
    unlinkSync(options.socketPath);
    throw error;
  }
  const server = new HandlerServer(options, listenFd, lstatSync(options.socketPath).ino);
  server.listen();
  return server;
}
