// `userfault pages serve`: a page server for a snapshot file over TCP (the
// protocol is docs/protocol.md). This file is options and printing (its log:
// src/cli/log.ts); the server is src/pages/page-server.ts.
import type { Command } from 'commander';
import { MetricsRegistry } from '../metrics/metrics-registry.js';
import { startMetricsServer, type MetricsServer } from '../metrics/metrics-server.js';
import { pageServerReporter } from '../metrics/page-server-reporter.js';
import { checkListenAddress } from '../net/http-server.js';
import { Logger, logFormatOf, logFormatOption } from './log.js';
import { UserfaultError } from '../errors.js';
import { ExitCode } from '../exit-codes.js';
import { formatHostPort, isLoopbackHost, parseHostPort } from '../net/address.js';
import {
  openSnapshotPages,
  startPageServer,
  RemoteListenRefusedError,
  type PageServer,
  type PageServerSummary,
  type ServedConnectionSummary,
  type SnapshotPages,
} from '../pages/index.js';
import { checkInputFile } from './snapshot-commands.js';

interface PagesServeOptions {
  snapshot?: string;
  listen?: string;
  allowRemote?: boolean;
  maxInFlight: string;
  maxConnections: string;
  maxConnectionsPerPeer?: string;
  idleTimeoutMs: string;
  maxQueuedReplyMib: string;
  json?: boolean;
  logFormat: string;
  metrics?: string;
  metricsAllowRemote?: boolean;
}

/** The command line is wrong: exit status 64. */
class PagesUsageError extends UserfaultError {
  override readonly code = 'EUSAGE';
}

export function registerPagesCommand(program: Command): void {
  const pages = program
    .command('pages')
    .description('serve a snapshot\'s memory pages and VM state over TCP, for restoring it lazily on another host');

  pages
    .command('serve')
    .description(
      'serve the pages, zero map and metadata (the VM state) of a snapshot to any number of clients ' +
        '(RemoteSource, `--from tcp://HOST:PORT`) until SIGINT/SIGTERM',
    )
    .option('--snapshot <file>', 'the snapshot to serve (this project\'s format; every page CRC-checked as it is read, and sent with its stored checksum for the client to check)')
    .option('--listen <host:port>', 'address to listen on, loopback unless --allow-remote (port 0: any free port)')
    .option('--allow-remote', 'allow a non-loopback --listen address: anyone who can reach it can read the VM\'s memory')
    .option('--max-in-flight <n>', 'reads served concurrently per connection before its requests wait', '16')
    .option('--max-connections <n>', 'connections at once; one more closes the one quiet longest, or is refused BUSY', '256')
    .option('--max-connections-per-peer <n>', 'connections at once from one peer address (default: half of --max-connections)')
    .option('--idle-timeout-ms <ms>', 'close a connection with nothing outstanding that sends nothing (not even a PING) for this long', '60000')
    .option('--max-queued-reply-mib <MiB>', 'reply bytes held for all clients together (reads under way, replies not taken by the kernel); one client holds at most 16 MiB', '256')
    .addOption(logFormatOption())
    .option('--json', 'the same as --log-format json')
    .option('--metrics <host:port>', 'serve the metrics (GET /metrics, Prometheus text) on this TCP address, loopback unless --metrics-allow-remote')
    .option('--metrics-allow-remote', 'allow a --metrics address other hosts can reach')
    .action(async (options: PagesServeOptions) => {
      // An error that ends it goes up to the CLI's edge (program.ts), printed as every command's is.
      await servePages(options, new Logger(logFormatOf(options)));
    });
}

async function servePages(options: PagesServeOptions, log: Logger): Promise<void> {
  if (options.snapshot === undefined) throw new PagesUsageError('give the snapshot to serve: --snapshot FILE');
  if (options.listen === undefined) throw new PagesUsageError('give the address to listen on: --listen HOST:PORT (127.0.0.1:7000; port 0 for any free port)');
  const { host, port } = parseHostPort(options.listen, '--listen HOST:PORT address');
  const remote = !isLoopbackHost(host);
  // Refused before the snapshot is opened: a wrong command line costs nothing.
  if (remote && options.allowRemote !== true) throw new RemoteListenRefusedError(host);
  const maxInFlight = Number(options.maxInFlight);
  if (!Number.isSafeInteger(maxInFlight) || maxInFlight < 1) throw new PagesUsageError(`--max-in-flight ${options.maxInFlight} is not a positive integer`);
  const positive = (flag: string, text: string | undefined): number | undefined => {
    if (text === undefined) return undefined;
    const value = Number(text);
    if (!Number.isSafeInteger(value) || value < 1) throw new PagesUsageError(`${flag} ${text} is not a positive integer`);
    return value;
  };
  const maxConnections = positive('--max-connections', options.maxConnections)!;
  const maxConnectionsPerPeer = positive('--max-connections-per-peer', options.maxConnectionsPerPeer);
  if (maxConnectionsPerPeer !== undefined && maxConnectionsPerPeer > maxConnections) {
    throw new PagesUsageError(`--max-connections-per-peer ${maxConnectionsPerPeer} is more than --max-connections ${maxConnections}`);
  }
  const idleTimeoutMs = positive('--idle-timeout-ms', options.idleTimeoutMs)!;
  const maxQueuedReplyMib = positive('--max-queued-reply-mib', options.maxQueuedReplyMib)!;
  if (maxQueuedReplyMib < 4) throw new PagesUsageError(`--max-queued-reply-mib ${maxQueuedReplyMib}: at least 4 (a 2 MiB READ's reply must fit)`);
  // One connection's bound (16 MiB) must fit in the total.
  const maxQueuedReplyBytesPerConnection = Math.min(16, maxQueuedReplyMib) * 1024 * 1024;
  if (options.metricsAllowRemote && options.metrics === undefined) throw new PagesUsageError('--metrics-allow-remote goes with --metrics HOST:PORT');
  const metricsAt = options.metrics === undefined ? undefined : checkListenAddress(options.metrics, '--metrics', {
    allowed: options.metricsAllowRemote === true,
    flag: '--metrics-allow-remote',
    what: 'anyone who can reach it reads the page server\'s metrics',
    warn: (message) => log.warn('metrics-remote', { address: options.metrics }, `warning: ${message}`),
  });

  // Listening for the signals before the listen line is printed: a supervisor
  // that stops the server the moment it reads that line gets a summary too.
  const signalled = new Promise<NodeJS.Signals>((resolve) => {
    process.once('SIGINT', resolve);
    process.once('SIGTERM', resolve);
  });
  // A missing snapshot is named the way every command names a missing input (ENOINPUT, 66).
  checkInputFile(options.snapshot);
  const snapshot = await openSnapshotPages(options.snapshot);
  let server: PageServer;
  try {
    server = await startPageServer({
      source: snapshot.source,
      pageSizeBytes: snapshot.pageSizeBytes,
      metadata: snapshot.metadata,
      zeroMap: snapshot.zeroMap,
      imageId: snapshot.imageId,
      pageChecksums: snapshot.pageChecksums,
      host,
      port,
      allowRemote: options.allowRemote === true,
      maxInFlightPerConnection: maxInFlight,
      maxConnections,
      maxConnectionsPerPeer,
      idleTimeoutMs,
      maxQueuedReplyBytes: maxQueuedReplyMib * 1024 * 1024,
      maxQueuedReplyBytesPerConnection,
    });
  } catch (error) {
    await snapshot.close();
    throw error;
  }
  describeServer(server, snapshot, options.snapshot, remote, log);
  let metricsServer: MetricsServer | undefined;
  if (metricsAt) {
    const registry = new MetricsRegistry({ components: ['page-server'] });
    registry.report(pageServerReporter(server));
    try {
      metricsServer = await startMetricsServer(registry, metricsAt);
    } catch (error) {
      await server.close();
      await snapshot.close();
      throw error; // EADDRINUSE names the address: exit 73
    }
    log.info('metrics-listening', { url: metricsServer.url }, `metrics on ${metricsServer.url}`);
  }

  const signal = await signalled;
  // A second signal while connections are flushing leaves at once.
  const forceExit = (): never => process.exit(ExitCode.SOFTWARE);
  process.once('SIGINT', forceExit);
  process.once('SIGTERM', forceExit);
  log.info('signal', { signal, clients: server.clients.length }, `${signal}: closing ${server.clients.length} clients`);
  const summary = await server.close();
  await metricsServer?.close();
  await snapshot.close();
  log.write('info', 'summary', { ...summary }, formatServerSummary(summary));
  process.off('SIGINT', forceExit);
  process.off('SIGTERM', forceExit);
}

function describeServer(server: PageServer, snapshot: SnapshotPages, path: string, remote: boolean, log: Logger): void {
  const { info } = server;
  const zeroPages = snapshot.zeroMap.zeroPageCount;
  log.info(
    'serving',
    { snapshot: path, imageSizeBytes: info.imageSizeBytes, pageSizeBytes: info.pageSizeBytes, pageCount: info.imageSizeBytes / info.pageSizeBytes, zeroPages, metadataLengthBytes: info.metadataLengthBytes, pid: process.pid },
    `serving snapshot ${path}: ${info.imageSizeBytes} bytes, ${info.imageSizeBytes / info.pageSizeBytes} pages of ${info.pageSizeBytes} (${zeroPages} zero), ` +
      `${info.metadataLengthBytes} bytes of metadata, pid ${process.pid}`,
  );
  const address = formatHostPort(server.address);
  if (remote) {
    log.warn(
      'remote-allowed',
      { address },
      `warning: --allow-remote: serving the VM's memory to the network on ${address}, with no authentication or encryption`,
    );
  }
  log.info('listening', { host: server.address.host, port: server.address.port, address, url: server.url }, `listening on ${address}`);

  server.on('client-connected', (client) => log.info('client-connected', { id: client.id, remoteAddress: client.remoteAddress }, `client ${client.id}: connected from ${client.remoteAddress}`));
  server.on('client-hello', (client) => {
    const { role, sessionId } = client.summary();
    log.info('client-hello', { id: client.id, role, sessionId }, `client ${client.id}: ${role}, session ${sessionId}`);
  });
  server.on('client-notice', (client, message) => log.info('client-notice', { id: client.id, message }, `client ${client.id}: ${message}`));
  server.on('client-error', (client, error) => log.error('client-error', { id: client.id }, error, `client ${client.id}: error: `));
  server.on('client-gone', (_client, summary) => log.info('client-gone', { ...summary }, formatClientGone(summary)));
  server.on('error', (error) => log.error('error', {}, error, 'userfault pages serve: '));
}

/** "client 3: gone (hangup) after 1.2 s: 12 requests, 10 reads, 40960 bytes served, 1 error sent". */
export function formatClientGone(summary: ServedConnectionSummary): string {
  const errors = summary.errorsSent === 1 ? '1 error sent' : `${summary.errorsSent} errors sent`;
  return `client ${summary.id}: gone (${summary.endReason ?? summary.state}${summary.endError ? `: ${summary.endError}` : ''}) after ` +
    `${(summary.connectedMs / 1000).toFixed(1)} s: ${summary.requests} requests, ${summary.reads} reads, ${summary.bytesServed} bytes served, ${errors}` +
    (summary.sourceErrors ? `, ${summary.sourceErrors} source errors` : '');
}

export function formatServerSummary(summary: PageServerSummary): string[] {
  const t = summary.totals;
  const lines = [
    `summary: ${t.clients} clients, ${t.requests} requests, ${t.reads} reads, ${t.bytesServed} bytes served, ${t.errorsSent} errors sent, ` +
      `${t.sourceErrors} source errors, from ${summary.source} on ${summary.address}`,
  ];
  for (const client of summary.clients) {
    lines.push(
      `  client ${client.id} (${client.role ?? 'no hello'}, ${client.remoteAddress}): ${client.requests} requests, ${client.reads} reads, ` +
        `${client.bytesServed} bytes served, ${client.errorsSent} errors sent (${client.endReason ?? client.state})`,
    );
  }
  return lines;
}
