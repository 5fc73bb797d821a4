// `userfault pages serve`: a page server for a snapshot file over TCP (the
// protocol is docs/protocol.md). This file is options and printing; the
// server is src/pages/page-server.ts.
import type { Command } from 'commander';
import { UserfaultError } from '../errors.js';
import { ExitCode, exitCodeFor } from '../exit-codes.js';
import {
  formatHostPort,
  isLoopbackHost,
  openSnapshotPages,
  parseHostPort,
  startPageServer,
  RemoteListenRefusedError,
  type PageServer,
  type PageServerSummary,
  type ServedConnectionSummary,
  type SnapshotPages,
} from '../pages/index.js';

interface PagesServeOptions {
  snapshot?: string;
  listen?: string;
  allowRemote?: boolean;
  maxInFlight: string;
  json?: boolean;
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
    .option('--snapshot <file>', 'the snapshot to serve (this project\'s format; every page CRC-checked as it is read)')
    .option('--listen <host:port>', 'address to listen on, loopback unless --allow-remote (port 0: any free port)')
    .option('--allow-remote', 'allow a non-loopback --listen address: anyone who can reach it can read the VM\'s memory')
    .option('--max-in-flight <n>', 'reads served concurrently per connection before its requests wait', '16')
    .option('--json', 'print every line as a JSON object')
    .action(async (options: PagesServeOptions) => {
      const log = new Log(options.json === true);
      try {
        await servePages(options, log);
      } catch (error) {
        log.failure(error);
        process.exitCode = exitCodeFor(error);
      }
    });
}

async function servePages(options: PagesServeOptions, log: Log): Promise<void> {
  if (options.snapshot === undefined) throw new PagesUsageError('give the snapshot to serve: --snapshot FILE');
  if (options.listen === undefined) throw new PagesUsageError('give the address to listen on: --listen HOST:PORT (127.0.0.1:7000; port 0 for any free port)');
  const { host, port } = parseHostPort(options.listen, '--listen HOST:PORT address');
  const remote = !isLoopbackHost(host);
  // Refused before the snapshot is opened: a wrong command line costs nothing.
  if (remote && options.allowRemote !== true) throw new RemoteListenRefusedError(host);
  const maxInFlight = Number(options.maxInFlight);
  if (!Number.isSafeInteger(maxInFlight) || maxInFlight < 1) throw new PagesUsageError(`--max-in-flight ${options.maxInFlight} is not a positive integer`);

  // Listening for the signals before the listen line is printed: a supervisor
  // that stops the server the moment it reads that line gets a summary too.
  const signalled = new Promise<NodeJS.Signals>((resolve) => {
    process.once('SIGINT', resolve);
    process.once('SIGTERM', resolve);
  });
  const snapshot = await openSnapshotPages(options.snapshot);
  let server: PageServer;
  try {
    server = await startPageServer({
      source: snapshot.source,
      pageSizeBytes: snapshot.pageSizeBytes,
      metadata: snapshot.metadata,
      zeroMap: snapshot.zeroMap,
      imageId: snapshot.imageId,
      host,
      port,
      allowRemote: options.allowRemote === true,
      maxInFlightPerConnection: maxInFlight,
    });
  } catch (error) {
    await snapshot.close();
    throw error;
  }
  describeServer(server, snapshot, options.snapshot, remote, log);

  const signal = await signalled;
  // A second signal while connections are flushing leaves at once.
  const forceExit = (): never => process.exit(ExitCode.SOFTWARE);
  process.once('SIGINT', forceExit);
  process.once('SIGTERM', forceExit);
  log.event('signal', { signal, clients: server.clients.length }, `${signal}: closing ${server.clients.length} clients`);
  const summary = await server.close();
  await snapshot.close();
  log.summary(summary);
  process.off('SIGINT', forceExit);
  process.off('SIGTERM', forceExit);
}

function describeServer(server: PageServer, snapshot: SnapshotPages, path: string, remote: boolean, log: Log): void {
  const { info } = server;
  const zeroPages = snapshot.zeroMap.zeroPageCount;
  log.event(
    'serving',
    { snapshot: path, imageSizeBytes: info.imageSizeBytes, pageSizeBytes: info.pageSizeBytes, pageCount: info.imageSizeBytes / info.pageSizeBytes, zeroPages, metadataLengthBytes: info.metadataLengthBytes, pid: process.pid },
    `serving snapshot ${path}: ${info.imageSizeBytes} bytes, ${info.imageSizeBytes / info.pageSizeBytes} pages of ${info.pageSizeBytes} (${zeroPages} zero), ` +
      `${info.metadataLengthBytes} bytes of metadata, pid ${process.pid}`,
  );
  const address = formatHostPort(server.address);
  if (remote) {
    log.event(
      'remote-allowed',
      { address },
      `warning: --allow-remote: serving the VM's memory to the network on ${address}, with no authentication or encryption`,
    );
  }
  log.event('listening', { host: server.address.host, port: server.address.port, address, url: server.url }, `listening on ${address}`);

  server.on('client-connected', (client) => log.event('client-connected', { id: client.id, remoteAddress: client.remoteAddress }, `client ${client.id}: connected from ${client.remoteAddress}`));
  server.on('client-hello', (client) => {
    const { role, sessionId } = client.summary();
    log.event('client-hello', { id: client.id, role, sessionId }, `client ${client.id}: ${role}, session ${sessionId}`);
  });
  server.on('client-notice', (client, message) => log.event('client-notice', { id: client.id, message }, `client ${client.id}: ${message}`));
  server.on('client-error', (client, error) => {
    const code = (error as { code?: string }).code;
    log.event('client-error', { id: client.id, message: error.message, code }, `client ${client.id}: error: ${error.message}${code ? ` [${code}]` : ''}`, 'stderr');
  });
  server.on('client-gone', (_client, summary) => log.event('client-gone', { ...summary }, formatClientGone(summary)));
  server.on('error', (error) => log.failure(error));
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

/** Text lines, or one JSON object a line with `--json`. */
class Log {
  constructor(private readonly json: boolean) {}

  event(event: string, fields: Record<string, unknown>, text: string, stream: 'stdout' | 'stderr' = 'stdout'): void {
    if (this.json) console.log(JSON.stringify({ event, ...fields }));
    else if (stream === 'stderr') console.error(text);
    else console.log(text);
  }

  summary(summary: PageServerSummary): void {
    if (this.json) console.log(JSON.stringify({ event: 'summary', ...summary }));
    else for (const line of formatServerSummary(summary)) console.log(line);
  }

  failure(error: unknown): void {
    const e = error as Error & { code?: string };
    const exitCode = exitCodeFor(error);
    if (this.json) console.log(JSON.stringify({ event: 'error', message: e.message, code: e.code, exitCode }));
    console.error(`userfault pages serve: ${e.message ?? e}${e.code ? ` [${e.code}]` : ''}`);
  }
}
