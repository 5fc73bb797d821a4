// `userfault serve`: a page-fault handler process for Firecracker-style clients.
// Its log is one line per event (src/cli/log.ts): text, or with --log-format
// json (--json) one JSON object per line, events on stdout and errors on
// stderr either way. --metrics HOST:PORT serves its metrics over HTTP.
import { dirname } from 'node:path';
import { Option, type Command } from 'commander';
import {
  formatClientGone,
  formatRegions,
  formatServerSummary,
  openMemoryFile,
  startHandlerServer,
  type ClientSummary,
  type HandlerServerSummary,
  type HandshakeRegion,
} from '../handler/index.js';
import { openSourceByUrl, sourceUrlKind } from '../source-url/open-source-by-url.js';
import { endpointOption } from './s3-snapshot-commands.js';
import { errnoName } from '../errno.js';
import { SharedPageCache } from '../pager/page-cache.js';
import { CannotCreateError, UsageError } from './errors.js';
import { handlerReporter } from '../metrics/handler-reporter.js';
import { sourceReporter } from '../metrics/source-reporter.js';
import { MetricsRegistry } from '../metrics/metrics-registry.js';
import { startMetricsServer, type MetricsServer } from '../metrics/metrics-server.js';
import { checkListenAddress } from '../net/http-server.js';
import type { HostPort } from '../net/address.js';
import { Logger, logAvailability, logFormatOf, logFormatOption } from './log.js';
import { roundMs } from './output.js';
import { fileModeArg, groupArg, integerArg } from './parse.js';
import { checkInputFile } from './snapshot-commands.js';

interface ServeOptions {
  socket: string;
  snapshot?: string;
  memoryFile?: string;
  from?: string;
  endpoint?: string;
  readahead: boolean;
  handshakeTimeout: number;
  socketMode?: number;
  socketGroup?: number;
  json?: boolean;
  logFormat: string;
  metrics?: string;
  metricsAllowRemote?: boolean;
  pageCache?: boolean;
}

/** sizeof(sockaddr_un.sun_path) less its terminating NUL. */
const MAX_SOCKET_PATH_BYTES = 107;

export function registerServeCommand(program: Command): void {
  program
    .command('serve')
    .description(
      'serve page faults over a Unix socket, as Firecracker\'s snapshot restore expects: each client sends a JSON array of ' +
        'regions (base_host_virt_addr, size, offset, page_size) with its userfaultfd, and is served from the memory file until it exits',
    )
    .requiredOption('--socket <path>', 'Unix socket to listen on (removed on SIGINT/SIGTERM)')
    .addOption(new Option('--snapshot <file>', 'a snapshot in this project\'s format').conflicts('memoryFile'))
    .addOption(new Option('--memory-file <file>', 'a raw memory file as Firecracker writes it (a snapshot is recognised by its magic)').conflicts('from'))
    .addOption(new Option('--from <url>', 'serve memory fetched from a page server (tcp://HOST:PORT; userfault pages serve) or object storage (s3://BUCKET/KEY; userfault snapshot push) instead of a local file').conflicts('snapshot'))
    .addOption(endpointOption())
    .option('--no-readahead', 'fetch exactly the faulting page, no read-ahead')
    .option(
      '--page-cache',
      'keep the checked pages in one sealed memfd that clients asking for it map privately (zero-copy restore, docs/handler.md): ' +
        'each page is read and checked once for every such client, and memory only read is shared between them; Firecracker clients are served as before',
    )
    .addOption(
      new Option('--handshake-timeout <ms>', 'time a client has to send its regions and userfaultfd')
        .argParser(integerArg({ min: 1, max: 2 ** 31 - 1, unit: 'milliseconds' }))
        .default(10_000, '10000'),
    )
    .addOption(new Option('--socket-mode <mode>', 'permission bits of the socket file, octal (clients need write permission to connect)').argParser(fileModeArg()))
    .addOption(new Option('--socket-group <group>', 'group of the socket file, a name or a numeric id (e.g. the jailed VMM\'s group, with --socket-mode 0660)').argParser(groupArg()))
    .addOption(logFormatOption())
    .option('--json', 'the same as --log-format json: one JSON object per line (events on stdout, errors on stderr)')
    .option('--metrics <host:port>', 'serve the metrics (GET /metrics, Prometheus text) on this TCP address, loopback unless --metrics-allow-remote')
    .option('--metrics-allow-remote', 'allow a --metrics address other hosts can reach')
    .action(async (options: ServeOptions) => {
      let pageCache: SharedPageCache | undefined;
      const path = options.snapshot ?? options.memoryFile;
      if (path === undefined && options.from === undefined) throw new UsageError('give the memory to serve: --snapshot FILE, --memory-file FILE or --from tcp://HOST:PORT or s3://BUCKET/KEY', '--snapshot');
      if (options.endpoint !== undefined && !options.from?.startsWith('s3://')) throw new UsageError('--endpoint applies to --from s3://BUCKET/KEY', '--endpoint');
      if (Buffer.byteLength(options.socket) > MAX_SOCKET_PATH_BYTES) {
        throw new CannotCreateError(options.socket, `a Unix socket path holds at most ${MAX_SOCKET_PATH_BYTES} bytes`);
      }
      if (path !== undefined) checkInputFile(path);
      const log = new Logger(logFormatOf(options));
      const metricsAt = metricsAddress(options, log);
      // Every client's faults are served from the one source: a file, a page server (both of its connections shared by all clients), or a store.
      const { source, kind } = options.from === undefined ? await openMemoryFile(path!, options.snapshot ? 'snapshot' : 'auto')
        : { kind: sourceUrlKind(options.from), source: await openSourceByUrl(options.from, { endpoint: options.endpoint }) };
      if (options.pageCache) pageCache = SharedPageCache.forImage(source.sizeBytes, source.description);
      const server = await startHandlerServer({
        socketPath: options.socket,
        source,
        prefetch: options.readahead ? {} : false,
        handshakeTimeoutMs: options.handshakeTimeout,
        socketMode: options.socketMode,
        socketGroupId: options.socketGroup,
        pageCache,
      }).catch(async (error: unknown) => {
        pageCache?.close();
        await source.close?.();
        throw listenError(options.socket, error);
      });
      server.on('client-connected', (client) => log.info('client-connected', { client: client.id }, `client ${client.id}: connected`));
      server.on('client-ready', (client) =>
        log.info('client-ready', { client: client.id, regions: client.regions.map(regionJson) }, `client ${client.id}: serving ${client.regions.length} regions: ${formatRegions(client.regions)}`),
      );
      server.on('client-notice', (client, message) => log.info('client-notice', { client: client.id, message }, `client ${client.id}: ${message}`));
      server.on('client-error', (client, error) => log.error('client-error', { client: client.id }, error, `client ${client.id}: error: `));
      server.on('client-gone', (_client, summary) => log.info('client-gone', clientJson(summary), formatClientGone(summary)));
      server.on('silent-connection', (client) => log.info('silent-connection', { client: client.id }, `connection ${client.id} hung up without a byte (another server checking that this socket is live, say): not a client`));
      server.on('error', (error) => log.error('error', {}, error, 'serve: '));
      // A page server or store out of reach is said out loud (and its return), once for every client waiting on it.
      const stopAvailability = source.onAvailability?.((event) => logAvailability(log, event));
      let metricsServer: MetricsServer | undefined;
      if (metricsAt) {
        const registry = new MetricsRegistry({ components: ['pager', 'handler', 'source'] });
        registry.report(handlerReporter(server));
        registry.report(sourceReporter(() => source.availabilityStats));
        try {
          metricsServer = await startMetricsServer(registry, metricsAt);
        } catch (error) {
          await server.close();
          pageCache?.close();
          await source.close?.();
          throw error; // EADDRINUSE names the address: exit 73, as for the socket
        }
        log.info('metrics-listening', { url: metricsServer.url }, `metrics on ${metricsServer.url}`);
      }
      // Listening for the signals before the listen line is printed: a supervisor
      // that stops the server the moment it reads that line gets a clean exit and a summary.
      const signalled = new Promise<NodeJS.Signals>((resolve) => {
        process.once('SIGINT', resolve);
        process.once('SIGTERM', resolve);
      });
      log.info(
        'listening',
        {
          socket: options.socket,
          source: source.description,
          kind,
          sizeBytes: source.sizeBytes,
          pid: process.pid,
          ...(pageCache ? { pageCache: true } : {}),
          ...(options.socketMode === undefined ? {} : { socketMode: `0${options.socketMode.toString(8)}` }),
          ...(options.socketGroup === undefined ? {} : { socketGroupId: options.socketGroup }),
        },
        `serving ${source.description} (${kind}, ${source.sizeBytes} bytes${pageCache ? ', page cache for clients that ask' : ''}) on ${options.socket}, pid ${process.pid}`,
      );

      const signal = await signalled;
      // A second signal while clients are being closed (a source read that never ends) leaves at once.
      const forceExit = (): never => process.exit(1);
      process.once('SIGINT', forceExit);
      process.once('SIGTERM', forceExit);
      log.info('closing', { signal, clients: server.clients.length }, `${signal}: closing ${server.clients.length} clients`);
      const summary = await server.close();
      await metricsServer?.close();
      stopAvailability?.();
      pageCache?.close();
      await source.close?.();
      log.write('info', 'summary', summaryJson(summary), formatServerSummary(summary));
      process.off('SIGINT', forceExit);
      process.off('SIGTERM', forceExit);
    });
}

/** --metrics HOST:PORT, checked: loopback, or another address with --metrics-allow-remote (then the log warns). */
function metricsAddress(options: ServeOptions, log: Logger): HostPort | undefined {
  if (options.metrics === undefined) {
    if (options.metricsAllowRemote) throw new UsageError('--metrics-allow-remote goes with --metrics HOST:PORT', '--metrics-allow-remote');
    return undefined;
  }
  return checkListenAddress(options.metrics, '--metrics', {
    allowed: options.metricsAllowRemote === true,
    flag: '--metrics-allow-remote',
    what: 'anyone who can reach it reads the service\'s metrics',
    warn: (message) => log.warn('metrics-remote', { address: options.metrics }, `warning: ${message}`),
  });
}

/** Addresses as hex strings (a u64 JSON cannot carry as a number in general). */
function regionJson(region: HandshakeRegion): Record<string, unknown> {
  return { hostAddress: `0x${region.hostAddress.toString(16)}`, lengthBytes: region.lengthBytes, fileOffset: region.fileOffset, pageSizeBytes: region.pageSizeBytes };
}

function clientJson(summary: ClientSummary): Record<string, unknown> {
  return {
    client: summary.id,
    state: summary.state,
    ...(summary.endReason === undefined ? {} : { endReason: summary.endReason }),
    ...(summary.endError === undefined ? {} : { endError: summary.endError }),
    regions: summary.regions.map(regionJson),
    probePagesCopied: summary.probePagesCopied,
    ...(summary.pageCache ? { pageCache: true } : {}),
    errorsReported: summary.errorsReported,
    connectedMs: roundMs(summary.connectedMs),
    ...(summary.metrics === undefined ? {} : { metrics: summary.metrics }),
  };
}

function summaryJson(summary: HandlerServerSummary): Record<string, unknown> {
  return { socketPath: summary.socketPath, source: summary.source, totals: summary.totals, clients: summary.clients.map(clientJson) };
}

/**
 * chmod/chown of the socket (--socket-mode, --socket-group) name no path; say which socket, and why.
 * (bind and listen failures already name it: src/net/unix-socket-path.ts.)
 */
function listenError(socketPath: string, error: unknown): unknown {
  const e = error as { code?: string; errno?: number; syscall?: string };
  if (e.syscall === undefined || !['chmod', 'chown'].includes(e.syscall)) return error;
  // The addon's errors carry the kernel's errno (their code is the library's class code); Node's carry the errno name.
  const errno = typeof e.errno === 'number' && e.errno > 0 ? errnoName(e.errno) : e.code ?? '';
  const reasons: Record<string, string> = {
    EACCES: `permission denied in ${dirname(socketPath)}`,
    EPERM: e.syscall === 'chown' ? 'this process may not give files to that group' : 'operation not permitted',
    EROFS: 'the file system is read-only',
  };
  return new CannotCreateError(socketPath, reasons[errno] ?? `${e.syscall} failed (${errno})`, { cause: error });
}
