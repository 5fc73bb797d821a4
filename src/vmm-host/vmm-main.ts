// A bare VMM process (the tests spawn it; `userfault vm run|restore` is the
// same thing with a friendlier command line, src/cli/vm-commands.ts):
//
//   node dist/src/vmm-host/vmm-main.js run [--image builtin|FILE] [--mem 32M] [--cpus 1]
//        [--cmdline "workload=writer mem=16"] [--api-sock PATH] [--log FILE]
//   node dist/src/vmm-host/vmm-main.js restore SNAPSHOT | --from tcp://HOST:PORT|s3://BUCKET/KEY [--endpoint URL]
//        [--source-deadline-ms MS] [--lazy [--prefetch-all] [--verify-first] [--prefetch-pages N]] [--api-sock PATH] [--log FILE]
//   node dist/src/vmm-host/vmm-main.js receive --listen HOST:PORT [--stall-timeout-ms MS] [--api-sock PATH] [--log FILE]
//   any of them: [--metrics HOST:PORT] (GET /metrics over TCP; loopback only here)
//
// The guest's console goes to stdout (and to --log). The VMM's own lines go
// to stderr as `vmm: {json}` (see VmmProcessEvent). Exit codes: vmm-process.ts.
import { parseArgs } from 'node:util';
import { exitCodeFor } from '../exit-codes.js';
import { VmUsageError } from '../vm/errors.js';
import { prewarmVcpuWorkers } from '../vm/vcpu-worker-pool.js';
import { parseHostPort } from '../net/address.js';
import { checkListenAddress } from '../net/http-server.js';

function parseBytes(option: string, text: string): number {
  const m = /^(\d+)([KMG]?)i?B?$/i.exec(text.trim());
  if (!m) throw new VmUsageError([option], `${option} takes a size (4096, 64M, 1G), got ${JSON.stringify(text)}`);
  const unit = { '': 1, K: 2 ** 10, M: 2 ** 20, G: 2 ** 30 }[m[2]!.toUpperCase() as '' | 'K' | 'M' | 'G'];
  return Number(m[1]) * unit;
}

function parseCount(option: string, text: string): number {
  if (!/^\d+$/.test(text)) throw new VmUsageError([option], `${option} takes a whole number, got ${JSON.stringify(text)}`);
  return Number(text);
}

const say = (event: object): void => {
  process.stderr.write(`vmm: ${JSON.stringify(event)}\n`);
};

async function main(argv: string[]): Promise<number> {
  const { positionals, values } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      image: { type: 'string', default: 'builtin' },
      mem: { type: 'string', default: '32M' },
      cpus: { type: 'string', default: '1' },
      cmdline: { type: 'string', default: 'workload=idle' },
      'api-sock': { type: 'string' },
      log: { type: 'string' },
      lazy: { type: 'boolean', default: false },
      'prefetch-all': { type: 'boolean', default: false },
      'verify-first': { type: 'boolean', default: false },
      'prefetch-pages': { type: 'string' },
      from: { type: 'string' },
      endpoint: { type: 'string' },
      'source-deadline-ms': { type: 'string' },
      listen: { type: 'string' },
      'stall-timeout-ms': { type: 'string' },
      'reconnect-deadline-ms': { type: 'string' },
      'progress-timeout-ms': { type: 'string' },
      metrics: { type: 'string' },
    },
  });
  const [command, snapshotPath] = positionals as [string | undefined, string | undefined];
  const ok = command === 'run'
    || (command === 'restore' && (snapshotPath !== undefined) !== (values.from !== undefined))
    || (command === 'receive' && values.listen !== undefined);
  if (!ok) throw new VmUsageError([], 'usage: vmm-main.js run [options] | restore SNAPSHOT|--from tcp://HOST:PORT|s3://BUCKET/KEY [--lazy] [options] | receive --listen HOST:PORT');
  const maxPages = values['prefetch-pages'] === undefined ? undefined : parseCount('--prefetch-pages', values['prefetch-pages']);
  const { runVmmProcess } = await import('./vmm-process.js');
  return runVmmProcess({
    command: command as 'run' | 'restore' | 'receive',
    image: values.image,
    memoryBytes: parseBytes('--mem', values.mem!),
    vcpuCount: parseCount('--cpus', values.cpus!),
    cmdline: values.cmdline,
    snapshotPath,
    fromUrl: values.from,
    endpoint: values.endpoint,
    sourceDeadlineMs: values['source-deadline-ms'] === undefined ? undefined : parseCount('--source-deadline-ms', values['source-deadline-ms']),
    listen: values.listen === undefined ? undefined : parseHostPort(values.listen, '--listen HOST:PORT'),
    stallTimeoutMs: values['stall-timeout-ms'] === undefined ? undefined : parseCount('--stall-timeout-ms', values['stall-timeout-ms']),
    reconnectDeadlineMs: values['reconnect-deadline-ms'] === undefined ? undefined : parseCount('--reconnect-deadline-ms', values['reconnect-deadline-ms']),
    progressTimeoutMs: values['progress-timeout-ms'] === undefined ? undefined : parseCount('--progress-timeout-ms', values['progress-timeout-ms']),
    lazy: values.lazy
      ? { prefetchAll: values['prefetch-all'], verifyFirst: values['verify-first'], prefetch: maxPages === undefined ? undefined : maxPages <= 1 ? false : { maxPages } }
      : false,
    apiSock: values['api-sock'],
    metricsListen: values.metrics === undefined ? undefined : checkListenAddress(values.metrics, '--metrics', { allowed: false, flag: 'userfault vm … --metrics-allow-remote', what: 'the bare VMM serves metrics on loopback only', warn: () => {} }),
    log: values.log,
    report: say,
  });
}

// The first vCPU's worker loads on the other core while this thread loads the VMM (vmm-process.js and
// all it imports, tens of ms: imported on first use for that reason; see vcpu-worker-pool.ts).
prewarmVcpuWorkers(1);
main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  async (error: unknown) => {
    const { errorEvent } = await import('./vmm-process.js');
    // parseArgs' own errors (an unknown option) carry ERR_PARSE_ARGS_* codes: usage.
    const usage = typeof (error as { code?: unknown }).code === 'string' && (error as { code: string }).code.startsWith('ERR_PARSE_ARGS');
    const event = errorEvent(error);
    say(usage ? { ...event, exitCode: 64 } : event);
    process.exit(usage ? 64 : exitCodeFor(error));
  },
);
