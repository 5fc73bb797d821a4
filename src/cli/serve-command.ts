// `userfault serve`: a page-fault handler process for Firecracker-style clients.
import { InvalidArgumentError, Option, type Command } from 'commander';
import { formatClientGone, formatRegions, formatServerSummary, openMemoryFile, startHandlerServer } from '../handler/index.js';

interface ServeOptions {
  socket: string;
  snapshot?: string;
  memoryFile?: string;
  readahead: boolean;
  handshakeTimeout: string;
  json?: boolean;
}

export function registerServeCommand(program: Command): void {
  program
    .command('serve')
    .description(
      'serve page faults over a Unix socket, as Firecracker\'s snapshot restore expects: each client sends a JSON array of ' +
        'regions (base_host_virt_addr, size, offset, page_size) with its userfaultfd, and is served from the memory file until it exits',
    )
    .requiredOption('--socket <path>', 'Unix socket to listen on (removed on SIGINT/SIGTERM)')
    .addOption(new Option('--snapshot <file>', 'a snapshot in this project\'s format').conflicts('memoryFile'))
    .addOption(new Option('--memory-file <file>', 'a raw memory file as Firecracker writes it (a snapshot is recognised by its magic)'))
    .option('--no-readahead', 'fetch exactly the faulting page, no read-ahead')
    .option('--handshake-timeout <ms>', 'time a client has to send its regions and userfaultfd', '10000')
    .option('--json', 'print the shutdown summary as JSON')
    .action(async (options: ServeOptions) => {
      const path = options.snapshot ?? options.memoryFile;
      if (path === undefined) throw new InvalidArgumentError('give the memory to serve: --snapshot FILE or --memory-file FILE');
      const handshakeTimeoutMs = Number(options.handshakeTimeout);
      if (!Number.isSafeInteger(handshakeTimeoutMs) || handshakeTimeoutMs <= 0) {
        throw new InvalidArgumentError(`--handshake-timeout ${options.handshakeTimeout} is not a positive number of milliseconds`);
      }
      const { source, kind } = await openMemoryFile(path, options.snapshot ? 'snapshot' : 'auto');
      const server = await startHandlerServer({
        socketPath: options.socket,
        source,
        prefetch: options.readahead ? {} : false,
        handshakeTimeoutMs,
      }).catch(async (error: Error) => {
        await source.close?.();
        throw error;
      });
      const log = (line: string): void => console.log(line);
      server.on('client-connected', (client) => log(`client ${client.id}: connected`));
      server.on('client-ready', (client) => log(`client ${client.id}: serving ${client.regions.length} regions: ${formatRegions(client.regions)}`));
      server.on('client-notice', (client, message) => log(`client ${client.id}: ${message}`));
      server.on('client-error', (client, error) =>
        console.error(`client ${client.id}: error: ${error.message}${codeOf(error)}`),
      );
      server.on('client-gone', (_client, summary) => log(formatClientGone(summary)));
      server.on('error', (error) => console.error(`serve: ${error.message}${codeOf(error)}`));
      log(`serving ${source.description} (${kind}, ${source.sizeBytes} bytes) on ${options.socket}, pid ${process.pid}`);

      const signal = await new Promise<NodeJS.Signals>((resolve) => {
        process.once('SIGINT', resolve);
        process.once('SIGTERM', resolve);
      });
      // A second signal while clients are being closed (a source read that never ends) leaves at once.
      const forceExit = (): never => process.exit(1);
      process.once('SIGINT', forceExit);
      process.once('SIGTERM', forceExit);
      log(`${signal}: closing ${server.clients.length} clients`);
      const summary = await server.close();
      await source.close?.();
      if (options.json) log(JSON.stringify(summary));
      else for (const line of formatServerSummary(summary)) log(line);
      process.off('SIGINT', forceExit);
      process.off('SIGTERM', forceExit);
    });
}

function codeOf(error: Error): string {
  const code = (error as { code?: string }).code;
  return code ? ` [${code}]` : '';
}
