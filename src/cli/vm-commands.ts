// `userfault vm ...`: run the micro guest (or another multiboot image) under
// the VMM with its console on the terminal, snapshot it through the control
// socket, restore it eagerly or lazily, and drive it (status, pause, resume,
// input, stop). The VMM itself is src/vm/vmm-process.ts; this file is options
// and printing.
import { InvalidArgumentError, Option, type Command } from 'commander';
import { controlRequest } from '../vm/control-api.js';
import type { LazyRestoreOptions } from '../vm/memory/lazy-guest-memory.js';
import type { VmStatus } from '../vm/vmm.js';
import { runVmmProcess, type VmmProcessEvent } from '../vm/vmm-process.js';
import { parseSize } from './parse.js';

interface CommonRunOptions {
  apiSock?: string;
  log?: string;
  json?: boolean;
  stdin: boolean;
}

interface RunOptions extends CommonRunOptions {
  guest: string;
  mem: string;
  cpus: string;
  workload?: string;
  workloadMem?: string;
  rate?: string;
  pattern?: string;
  seed?: string;
  hb?: string;
  beats?: string;
  cmdline?: string;
}

interface RestoreCliOptions extends CommonRunOptions {
  lazy?: boolean;
  prefetchAll?: boolean;
  verify: boolean;
  prefetchPages?: string;
}

export function registerVmCommands(program: Command): void {
  const vm = program
    .command('vm')
    .description('a KVM micro-VMM: run a guest, snapshot it, restore it eagerly or lazily (guest faults served by the pager)');

  vm.command('run')
    .description('boot a multiboot guest (the built-in micro guest by default) with its console on the terminal')
    .addOption(new Option('--guest <image>', '"builtin" or a multiboot v1 ELF image').default('builtin'))
    .addOption(new Option('--mem <bytes>', 'guest RAM (K/M/G suffixes)').default('256M'))
    .addOption(new Option('--cpus <n>', 'vCPUs').default('1').argParser(positiveInt('--cpus')))
    .addOption(new Option('--workload <name>', 'micro guest workload').choices(['idle', 'writer', 'verify']))
    .addOption(new Option('--workload-mem <MiB>', 'micro guest: MiB of memory the writer fills and dirties').argParser(positiveInt('--workload-mem')))
    .addOption(new Option('--rate <pages>', 'micro guest: pages dirtied per second (0: flat out)').argParser(nonNegativeInt('--rate')))
    .addOption(new Option('--pattern <order>', 'micro guest: order the writer dirties pages in').choices(['seq', 'random']))
    .addOption(new Option('--seed <n>', 'micro guest: pattern seed').argParser(nonNegativeInt('--seed')))
    .addOption(new Option('--hb <ticks>', 'micro guest: timer ticks (10 ms) between heartbeats').argParser(positiveInt('--hb')))
    .addOption(new Option('--beats <n>', 'micro guest: heartbeats before a final verify and done (0: forever)').argParser(nonNegativeInt('--beats')))
    .option('--cmdline <text>', 'the guest command line verbatim (instead of the workload options)')
    .option('--api-sock <path>', 'serve the control socket here (snapshot, pause, resume, status)')
    .option('--log <file>', 'also write the console to this file')
    .option('--no-stdin', 'do not forward the terminal to the guest\'s COM1 (by default keys go to the guest; Ctrl-C stops the VM)')
    .option('--json', 'report VMM events as JSON lines on stderr')
    .action(async (options: RunOptions) => {
      const cmdline = guestCmdline(options);
      process.exitCode = await runVmmProcess({
        command: 'run',
        image: options.guest,
        memoryBytes: parseSize(options.mem),
        vcpuCount: Number(options.cpus),
        cmdline,
        apiSock: options.apiSock,
        log: options.log,
        forwardStdin: options.stdin && process.stdin.isTTY === true,
        report: reporter(options.json),
      });
    });

  vm.command('restore <snapshot>')
    .description('restore a VM snapshot in this process and run it from where it stopped')
    .option('--lazy', 'register guest RAM with userfaultfd and resume at once; the pager fills pages on demand from the snapshot')
    .option('--prefetch-all', 'lazy: stream every page still missing in the background after the guest resumes')
    .option('--no-verify', 'lazy: do not check every page\'s CRC before the guest runs (pages are checked as they fault in; a corrupt one stops the VM)')
    .addOption(new Option('--prefetch-pages <n>', 'lazy: largest read-ahead window around a fault, in pages (1: none)').argParser(positiveInt('--prefetch-pages')))
    .option('--api-sock <path>', 'serve the control socket here')
    .option('--log <file>', 'also write the console to this file')
    .option('--no-stdin', 'do not forward the terminal to the guest\'s COM1')
    .option('--json', 'report VMM events as JSON lines on stderr')
    .action(async (snapshot: string, options: RestoreCliOptions) => {
      if (!options.lazy && (options.prefetchAll || !options.verify || options.prefetchPages)) {
        throw new InvalidArgumentError('--prefetch-all, --no-verify and --prefetch-pages apply to --lazy');
      }
      const maxPages = options.prefetchPages === undefined ? undefined : Number(options.prefetchPages);
      const lazy: LazyRestoreOptions | false = options.lazy
        ? { prefetchAll: options.prefetchAll ?? false, verify: options.verify, ...(maxPages === undefined ? {} : { prefetch: maxPages <= 1 ? false : { maxPages } }) }
        : false;
      process.exitCode = await runVmmProcess({
        command: 'restore',
        snapshotPath: snapshot,
        lazy,
        apiSock: options.apiSock,
        log: options.log,
        forwardStdin: options.stdin && process.stdin.isTTY === true,
        report: reporter(options.json),
      });
    });

  vm.command('snapshot')
    .description('pause a running VM and write its complete state and memory (through its control socket); it stays paused')
    .requiredOption('--api-sock <path>', 'the VM\'s control socket')
    .requiredOption('--out <file>', 'the snapshot file to write')
    .option('--resume', 'resume the VM once the snapshot is written')
    .option('--stop', 'stop the VM once the snapshot is written')
    .option('--json', 'print the result as JSON')
    .action(async (options: { apiSock: string; out: string; resume?: boolean; stop?: boolean; json?: boolean }) => {
      const created = await call(options.apiSock, 'PUT', '/snapshot/create', { snapshot_path: options.out });
      const summary = created as { path: string; fileSizeBytes: number; dataPageCount: number; zeroPageCount: number; pauseMs: number; saveStateMs: number; durationMs: number };
      if (options.resume) await call(options.apiSock, 'PATCH', '/vm', { state: 'Resumed' });
      if (options.stop) await call(options.apiSock, 'PUT', '/actions', { action_type: 'Stop' });
      if (options.json) console.log(JSON.stringify(summary, null, 2));
      else {
        console.log(
          `snapshot ${summary.path}: ${mb(summary.fileSizeBytes)} (${summary.dataPageCount} data pages, ${summary.zeroPageCount} zero pages not stored) ` +
            `in ${summary.durationMs.toFixed(1)} ms (pause ${summary.pauseMs.toFixed(1)} ms, state ${summary.saveStateMs.toFixed(1)} ms); ` +
            `the VM is ${options.stop ? 'stopped' : options.resume ? 'running again' : 'paused'}`,
        );
      }
    });

  vm.command('status')
    .description('the state of a running VM: vCPUs, exits, and for a lazy restore the pager\'s counters')
    .requiredOption('--api-sock <path>', 'the VM\'s control socket')
    .option('--json', 'print as JSON')
    .action(async (options: { apiSock: string; json?: boolean }) => {
      const status = (await call(options.apiSock, 'GET', '/vm')) as VmStatus;
      console.log(options.json ? JSON.stringify(status, null, 2) : formatStatus(status).join('\n'));
    });

  for (const [name, state] of [['pause', 'Paused'], ['resume', 'Resumed']] as const) {
    vm.command(name)
      .description(`${name} a running VM's vCPUs`)
      .requiredOption('--api-sock <path>', 'the VM\'s control socket')
      .action(async (options: { apiSock: string }) => {
        await call(options.apiSock, 'PATCH', '/vm', { state });
      });
  }

  vm.command('input <text>')
    .description('send bytes to the guest\'s COM1 (the micro guest: "v" verify, "q" verify and finish, "x" finish)')
    .requiredOption('--api-sock <path>', 'the VM\'s control socket')
    .action(async (text: string, options: { apiSock: string }) => {
      await call(options.apiSock, 'PUT', '/serial/input', { data: text });
    });

  vm.command('stop')
    .description('end a running VM')
    .requiredOption('--api-sock <path>', 'the VM\'s control socket')
    .action(async (options: { apiSock: string }) => {
      await call(options.apiSock, 'PUT', '/actions', { action_type: 'Stop' });
    });
}

/** The micro guest's command line from the workload options, or --cmdline verbatim. */
export function guestCmdline(options: Pick<RunOptions, 'cmdline' | 'workload' | 'workloadMem' | 'rate' | 'pattern' | 'seed' | 'hb' | 'beats'>): string {
  const pieces: [string, string | undefined][] = [
    ['workload', options.workload],
    ['mem', options.workloadMem],
    ['rate', options.rate],
    ['pattern', options.pattern],
    ['seed', options.seed],
    ['hb', options.hb],
    ['beats', options.beats],
  ];
  const given = pieces.filter(([, v]) => v !== undefined);
  if (options.cmdline !== undefined) {
    if (given.length > 0) throw new InvalidArgumentError(`--cmdline is the whole command line; drop ${given.map(([k]) => `--${k === 'mem' ? 'workload-mem' : k}`).join(', ')} or put them in it`);
    return options.cmdline;
  }
  if (given.length === 0) return 'workload=idle';
  return given.map(([k, v]) => `${k}=${v}`).join(' ');
}

async function call(socketPath: string, method: string, path: string, body?: unknown): Promise<unknown> {
  let response: { status: number; body: unknown };
  try {
    response = await controlRequest(socketPath, method, path, body);
  } catch (error) {
    const e = error as NodeJS.ErrnoException;
    if (e.code === 'ENOENT' || e.code === 'ECONNREFUSED') throw Object.assign(new Error(`no VM is listening on ${socketPath}`), { code: e.code });
    throw error;
  }
  if (response.status >= 400) {
    const fault = response.body as { fault_message?: string; code?: string } | undefined;
    throw Object.assign(new Error(fault?.fault_message ?? `HTTP ${response.status}`), { code: fault?.code });
  }
  return response.body;
}

/** VMM events: JSON lines (as vmm-main prints them), or a few readable lines with the timings. */
function reporter(json: boolean | undefined): (event: VmmProcessEvent) => void {
  if (json) return (event) => process.stderr.write(`vmm: ${JSON.stringify(event)}\n`);
  return (event) => {
    for (const line of formatEvent(event)) process.stderr.write(`vm: ${line}\n`);
  };
}

export function formatEvent(event: VmmProcessEvent): string[] {
  switch (event.event) {
    case 'running': {
      if (!event.restore) return [`running (built and loaded in ${event.readyMs.toFixed(1)} ms${event.apiSock ? `, control socket ${event.apiSock}` : ''})`];
      const r = event.restore;
      const steps = [`opened ${r.openedMs.toFixed(1)}`, `built ${r.builtMs.toFixed(1)}`];
      if (r.verifiedMs !== undefined) steps.push(`${r.mode === 'eager' ? 'memory read and checked' : 'every page checked'} ${r.verifiedMs.toFixed(1)}`);
      if (r.mode === 'lazy') steps.push(`memory registered ${r.memoryMs.toFixed(1)}`);
      steps.push(`vCPUs ready ${r.readyMs.toFixed(1)}`);
      return [`restored (${r.mode}): resumed in ${event.resumedMs.toFixed(1)} ms [${steps.join(', ')} ms]${event.apiSock ? `; control socket ${event.apiSock}` : ''}`];
    }
    case 'first-output':
      return [];
    case 'exited': {
      const { reason } = event;
      const what = reason.type === 'done' ? `the guest is done, status ${reason.status}` : reason.type === 'failed' ? `the guest failed: ${reason.exit}` : reason.type;
      const lines = [`exited after ${(event.runMs / 1000).toFixed(2)} s: ${what}`];
      const exits = event.status.vcpus.reduce((n, v) => n + v.counters.exits, 0);
      lines.push(`vCPUs: ${event.status.vcpus.length}, exits to the VMM: ${exits}`);
      const memory = event.status.restore?.memory;
      if (memory) lines.push(...formatLazyMemory(memory));
      return lines;
    }
    case 'error':
      return [`error: ${event.message}${event.code ? ` [${event.code}]` : ''}`];
    default: {
      const never: never = event;
      return [JSON.stringify(never)];
    }
  }
}

function formatLazyMemory(memory: NonNullable<NonNullable<VmStatus['restore']>['memory']>): string[] {
  const m = memory.metrics;
  const untouched = memory.pages.missing;
  return [
    `lazy memory: ${m.faults} faults served, ${m.pagesCopied} pages copied (${m.prefetchedPages} read ahead), ${m.zeroPages} zero pages, ` +
      `${untouched} of ${memory.guestPages} guest pages never filled${memory.complete ? `; complete after ${memory.completedMs} ms` : ''}`,
    `fault latency: p50 ${m.latencyMicros.p50} us, p90 ${m.latencyMicros.p90} us, p99 ${m.latencyMicros.p99} us, max ${m.latencyMicros.max} us` +
      (memory.verifyMs !== undefined ? `; CRC check before resume ${memory.verifyMs.toFixed(1)} ms` : ''),
  ];
}

function formatStatus(status: VmStatus): string[] {
  const lines = [`state: ${status.state}, memory ${mb(status.memoryBytes)}`];
  for (const v of status.vcpus) lines.push(`vCPU ${v.id}: ${v.state}, ${v.counters.exits} exits (${v.counters.ioExits} port I/O), ${v.counters.kicks} kicks`);
  if (status.exitReason) lines.push(`exit: ${JSON.stringify(status.exitReason)}`);
  if (status.restore) {
    lines.push(`restored ${status.restore.mode}, ready in ${status.restore.readyMs.toFixed(1)} ms`);
    if (status.restore.memory) lines.push(...formatLazyMemory(status.restore.memory));
  }
  return lines;
}

function mb(bytes: number): string {
  return `${(bytes / 1e6).toFixed(1)} MB`;
}

function positiveInt(flag: string): (text: string) => string {
  return (text) => {
    if (!/^\d+$/.test(text) || Number(text) < 1) throw new InvalidArgumentError(`${flag} takes a positive integer, got "${text}"`);
    return text;
  };
}

function nonNegativeInt(flag: string): (text: string) => string {
  return (text) => {
    if (!/^\d+$/.test(text)) throw new InvalidArgumentError(`${flag} takes a non-negative integer, got "${text}"`);
    return text;
  };
}
