// `userfault dashboard`: a live web page of a VMM (its control socket) or of
// any /metrics endpoint (`serve --metrics`, `pages serve --metrics`), until
// SIGINT/SIGTERM. The server is src/dashboard/dashboard-server.ts.
import { resolve } from 'node:path';
import { Option, type Command } from 'commander';
import { controlSocketSource, metricsUrlSource } from '../dashboard/dashboard-source.js';
import { DashboardServer } from '../dashboard/dashboard-server.js';
import { checkListenAddress } from '../net/http-server.js';
import { UsageError } from './errors.js';
import { Logger } from './log.js';
import { integerArg } from './parse.js';

interface DashboardOptions {
  apiSock?: string;
  metricsUrl?: string;
  listen: string;
  allowRemote?: boolean;
  intervalMs: number;
  json?: boolean;
}

export function registerDashboardCommand(program: Command): void {
  program
    .command('dashboard')
    .description('a live web page of a VM (faults per second, latency histograms, a map of guest memory by page state, vCPUs, migration) or of any --metrics endpoint')
    .addOption(new Option('--api-sock <path>', 'the VM\'s control socket (its /metrics and its memory map)').conflicts('metricsUrl'))
    .option('--metrics-url <url>', 'instead, any /metrics endpoint: http://127.0.0.1:PORT/metrics (serve --metrics, pages serve --metrics, vm … --metrics)')
    .addOption(new Option('--listen <host:port>', 'where the page is served (loopback unless --allow-remote; port 0: any free port)').default('127.0.0.1:7070'))
    .option('--allow-remote', 'allow a --listen address other hosts can reach (anyone there sees the VM\'s metrics and memory map)')
    .addOption(new Option('--interval-ms <ms>', 'time between updates').argParser(integerArg({ min: 100, max: 60_000, unit: 'milliseconds' })).default(500, '500'))
    .option('--json', 'log one JSON object per line (as serve --log-format json)')
    .action(async (options: DashboardOptions) => {
      const log = new Logger(options.json ? 'json' : 'text');
      if ((options.apiSock === undefined) === (options.metricsUrl === undefined)) {
        throw new UsageError('give what to show: --api-sock PATH (a VM) or --metrics-url http://HOST:PORT/metrics', '--api-sock');
      }
      const listen = checkListenAddress(options.listen, '--listen', {
        allowed: options.allowRemote === true,
        flag: '--allow-remote',
        what: 'anyone who can reach it sees the metrics and the memory map',
        warn: (message) => log.warn('remote-allowed', { listen: options.listen }, `warning: ${message}`),
      });
      const source = options.apiSock !== undefined ? controlSocketSource(resolve(options.apiSock)) : metricsUrlSource(options.metricsUrl!);
      const signalled = new Promise<NodeJS.Signals>((done) => {
        process.once('SIGINT', done);
        process.once('SIGTERM', done);
      });
      const dashboard = await DashboardServer.start({ source, listen, intervalMs: options.intervalMs });
      const first = dashboard.latest;
      log.info('listening', { url: dashboard.url, source: source.description }, `dashboard of ${source.description} on ${dashboard.url}`);
      if (first?.error) log.warn('source-error', { message: first.error }, `warning: ${first.error} (the page shows it, and updates once the source answers)`);
      const signal = await signalled;
      log.info('closing', { signal, pages: dashboard.streams.clients }, `${signal}: closing`);
      await dashboard.close();
    });
}
