// `userfault vm ...`: run the micro guest (or another multiboot image) under
// the VMM with its console on the terminal, snapshot it through the control
// socket, restore it eagerly or lazily, and drive it (status, pause, resume,
// input, stop). The VMM itself is src/vmm-host/vmm-process.ts; this file is options
// and printing.
//
// An error goes up to the CLI's edge (program.ts), printed there as every
// command's is and mapped to src/exit-codes.ts's status (64 for a command
// line that is wrong, before anything is sent or built). Sizes are printed in binary units (MiB, GiB),
// times in ms to 0.1; --json numbers are rounded to 0.01.
import { resolve } from 'node:path';
import { Option, type Command } from 'commander';
import { ExitCode } from '../exit-codes.js';
import type { DestinationProgress } from '../migrate/destination-migration.js';
import type { MigrationProgress } from '../migrate/source-migration.js';
import { isLoopbackHost, parseHostPort, type HostPort } from '../net/address.js';
import { checkListenAddress } from '../net/http-server.js';
import { callControlApi } from '../vmm-host/control-api.js';
import { NoVmListeningError, VmError, VmUsageError } from '../vm/errors.js';
import type { LazyRestoreOptions } from '../vm/memory/lazy-guest-memory.js';
import type { SnapshotProgress, VmStateChange, VmSnapshotSummary } from '../vm/vmm.js';
import type { HostedVmStatus } from '../vmm-host/hosted-vm.js';
import { printWarning } from './output.js';
import { endpointArg, patternArg } from './parse.js';
import { ByteProgress, ProgressView, progressMode } from './progress.js';
import { checkMachineOptions, formatBytes, runVmmProcess, type VmmProcessEvent, type VmmProcessOptions } from '../vmm-host/vmm-process.js';
import { availabilityLine, availabilityStatusLine } from '../sources/network/availability-text.js';

interface CommonRunOptions {
  apiSock?: string;
  log?: string;
  json?: boolean;
  stdin: boolean;
  metrics?: string;
  metricsAllowRemote?: boolean;
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
  verifyFirst?: boolean;
  prefetchPages?: string;
  from?: string;
  endpoint?: string;
  sourceDeadlineMs?: string;
}

interface SocketOptions {
  apiSock: string;
  json?: boolean;
}

const METRICS_HELP = 'also serve the metrics (GET /metrics, Prometheus text) on this TCP address, loopback unless --metrics-allow-remote (the control socket has them anyway)';
const METRICS_REMOTE_HELP = 'allow a --metrics address other hosts can reach (anyone there reads the VM\'s metrics)';

/** --metrics HOST:PORT, checked: loopback, or another address with --metrics-allow-remote (and a warning). */
function metricsAddress(options: { metrics?: string; metricsAllowRemote?: boolean; json?: boolean }): HostPort | undefined {
  if (options.metrics === undefined) {
    if (options.metricsAllowRemote) throw new VmUsageError(['--metrics-allow-remote', '--metrics'], '--metrics-allow-remote goes with --metrics HOST:PORT');
    return undefined;
  }
  return checkListenAddress(options.metrics, '--metrics', {
    allowed: options.metricsAllowRemote === true,
    flag: '--metrics-allow-remote',
    what: 'anyone who can reach it reads the VM\'s metrics',
    warn: (message) => printWarning(message, options.json === true),
  });
}

/** Where the micro guest's region starts (guest/micro.asm REGION_BASE), and its largest size (MAX_PAGES). */
const MICRO_REGION_BASE_BYTES = 2 << 20;
const MICRO_REGION_MAX_MIB = 512;
const MiB = 1 << 20;

export function registerVmCommands(program: Command): void {
  const vm = program
    .command('vm')
    .description('a KVM micro-VMM: run a guest, snapshot it, restore it eagerly or lazily (guest faults served by the pager)');

  vm.command('run')
    .description('boot a multiboot guest (the built-in micro guest by default) with its console on the terminal')
    .addOption(new Option('--guest <image>', '"builtin" or a multiboot v1 ELF image').default('builtin'))
    .addOption(new Option('--mem <bytes>', 'guest RAM (K/M/G suffixes; a multiple of 4 KiB, at most 3G)').default('256M'))
    .addOption(new Option('--cpus <n>', 'vCPUs (1 to 255)').default('1'))
    .addOption(new Option('--workload <name>', 'micro guest workload').choices(['idle', 'writer', 'verify']))
    .addOption(new Option('--workload-mem <MiB>', 'micro guest: MiB of memory the writer fills and dirties (it starts at 2 MiB, so at most --mem minus 2 MiB)'))
    .addOption(new Option('--rate <pages>', 'micro guest: pages dirtied per second (0: flat out)'))
    .addOption(new Option('--pattern <order>', 'micro guest: order the writer dirties pages in, sequential (or seq) or random').argParser(patternArg))
    .addOption(new Option('--seed <n>', 'micro guest: pattern seed'))
    .addOption(new Option('--hb <ticks>', 'micro guest: timer ticks (10 ms) between heartbeats'))
    .addOption(new Option('--beats <n>', 'micro guest: heartbeats before a final verify and done (0: forever)'))
    .option('--cmdline <text>', 'the guest command line verbatim (instead of the workload options)')
    .option('--api-sock <path>', 'serve the control socket here (snapshot, pause, resume, status); a stale socket is replaced, nothing else')
    .option('--metrics <host:port>', METRICS_HELP)
    .option('--metrics-allow-remote', METRICS_REMOTE_HELP)
    .option('--log <file>', 'also write the console to this file')
    .option('--no-stdin', 'do not forward the terminal to the guest\'s COM1 (by default keys go to the guest; Ctrl-C stops the VM)')
    .option('--json', 'report VMM events as JSON lines (one object per line) on stderr')
    .action(async (options: RunOptions) => {
      await exitWith(async () => {
        const memoryBytes = sizeOption('--mem', options.mem);
        const vcpuCount = countOption('--cpus', options.cpus, 1);
        checkMachineOptions(memoryBytes, vcpuCount);
        const cmdline = guestCmdline(options, memoryBytes);
        return runVmmProcess({
          command: 'run',
          image: options.guest,
          memoryBytes,
          vcpuCount,
          cmdline,
          apiSock: options.apiSock === undefined ? undefined : resolve(options.apiSock),
          log: options.log,
          forwardStdin: options.stdin && process.stdin.isTTY === true,
          metricsListen: metricsAddress(options),
          ...vmmOutput(options.json),
        });
      });
    });

  vm.command('restore [snapshot]')
    .description('restore a VM (a snapshot file, or --from a page server or object storage) in this process and run it from where it stopped')
    .option('--from <url>', 'restore from a page server (tcp://HOST:PORT: userfault pages serve --snapshot FILE) or object storage (s3://BUCKET/KEY: userfault snapshot push) instead of a file')
    .addOption(new Option('--endpoint <url>', '--from s3://: the S3-compatible store, http(s)://HOST:PORT (default AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL, else AWS)').argParser(endpointArg))
    .option('--source-deadline-ms <ms>', '--from: how long a page may wait: for a page server, each read counted from its fault whatever the server does (gone, stuck, BUSY); for a store, how long it may not answer. Then its pages are poisoned, or an eager restore fails (default 30000)')
    .option('--lazy', 'register guest RAM with userfaultfd and resume at once; the pager fills pages on demand from the snapshot or the page server')
    .option('--prefetch-all', 'lazy: stream every page still missing in the background after the guest resumes')
    .option('--verify-first', 'lazy: read and check every page\'s CRC before the guest runs (without it each page is checked as it is installed: a corrupt one is never mapped, and stops the VM when touched)')
    .addOption(new Option('--prefetch-pages <n>', 'lazy: largest read-ahead window around a fault, in pages (1: none)'))
    .option('--api-sock <path>', 'serve the control socket here; a stale socket is replaced, nothing else')
    .option('--metrics <host:port>', METRICS_HELP)
    .option('--metrics-allow-remote', METRICS_REMOTE_HELP)
    .option('--log <file>', 'also write the console to this file')
    .option('--no-stdin', 'do not forward the terminal to the guest\'s COM1')
    .option('--json', 'report VMM events as JSON lines (one object per line) on stderr')
    .action(async (snapshot: string | undefined, options: RestoreCliOptions) => {
      await exitWith(async () => {
        if ((snapshot === undefined) === (options.from === undefined)) {
          throw new VmUsageError(['SNAPSHOT', '--from'], snapshot === undefined ? 'give a snapshot file or --from tcp://HOST:PORT or s3://BUCKET/KEY' : 'a snapshot file or --from, not both');
        }
        if (options.endpoint !== undefined && !options.from?.startsWith('s3://')) throw new VmUsageError(['--endpoint', '--from'], '--endpoint applies to --from s3://BUCKET/KEY');
        if (options.sourceDeadlineMs !== undefined && options.from === undefined) throw new VmUsageError(['--source-deadline-ms', '--from'], '--source-deadline-ms applies to --from');
        if (options.verifyFirst && options.from !== undefined) {
          throw new VmUsageError(['--verify-first', '--from'], '--verify-first checks a snapshot file before the guest runs; from a page server or object storage each page is checked as it is installed');
        }
        if (!options.lazy && (options.prefetchAll || options.verifyFirst || options.prefetchPages !== undefined)) {
          throw new VmUsageError(['--prefetch-all', '--verify-first', '--prefetch-pages', '--lazy'], '--prefetch-all, --verify-first and --prefetch-pages apply to --lazy');
        }
        const maxPages = options.prefetchPages === undefined ? undefined : countOption('--prefetch-pages', options.prefetchPages, 1);
        const lazy: LazyRestoreOptions | false = options.lazy
          ? { prefetchAll: options.prefetchAll ?? false, verifyFirst: options.verifyFirst ?? false, ...(maxPages === undefined ? {} : { prefetch: maxPages <= 1 ? false : { maxPages } }) }
          : false;
        return runVmmProcess({
          command: 'restore',
          snapshotPath: snapshot === undefined ? undefined : resolve(snapshot),
          fromUrl: options.from,
          endpoint: options.endpoint,
          sourceDeadlineMs: options.sourceDeadlineMs === undefined ? undefined : countOption('--source-deadline-ms', options.sourceDeadlineMs, 100),
          lazy,
          apiSock: options.apiSock === undefined ? undefined : resolve(options.apiSock),
          log: options.log,
          forwardStdin: options.stdin && process.stdin.isTTY === true,
          metricsListen: metricsAddress(options),
          ...vmmOutput(options.json),
        });
      });
    });

  vm.command('snapshot')
    .description('pause a running VM and write its complete state and memory (through its control socket); it stays paused unless --resume or --stop')
    .requiredOption('--api-sock <path>', 'the VM\'s control socket')
    .requiredOption('--out <file>', 'the snapshot file to write (relative to this shell\'s directory; only a regular file there is replaced)')
    .option('--resume', 'resume the VM once the snapshot is written (also when writing it failed)')
    .option('--stop', 'stop the VM once the snapshot is written (not when writing it failed)')
    .option('--json', 'print the result (or the error) as one JSON object')
    .action(async (options: SocketOptions & { out: string; resume?: boolean; stop?: boolean }) => {
      await exitWith(async () => {
        if (options.resume && options.stop) throw new VmUsageError(['--resume', '--stop'], '--resume and --stop contradict each other: choose one');
        // The VMM's working directory is not this shell's: send the path as the user means it.
        const out = resolve(options.out);
        let summary: VmSnapshotSummary | undefined;
        let failure: unknown;
        const view = new ProgressView(progressMode(options.json));
        const bar = new ByteProgress(view, `writing ${out}`);
        const poll = follow(view, async () => {
          const p = (await callControlApi(options.apiSock, 'GET', '/snapshot')) as SnapshotProgress;
          bar.update(p.writtenBytes, p.totalBytes);
        });
        try {
          summary = (await callControlApi(options.apiSock, 'PUT', '/snapshot/create', { snapshot_path: out })) as VmSnapshotSummary;
        } catch (error) {
          failure = error;
        } finally {
          await poll.stop();
          view.clear();
        }
        // No VM answered at all: there is no VM to leave in any state.
        if (failure instanceof NoVmListeningError) throw failure;
        let vmState: string = 'paused';
        if (options.resume) {
          // Resumed whether or not the snapshot was written: --resume says how the VM should be left.
          try {
            vmState = ((await callControlApi(options.apiSock, 'PATCH', '/vm', { state: 'Resumed' })) as VmStateChange).state;
          } catch (error) {
            if (!failure) throw error;
            vmState = `${await currentState(options.apiSock)} (resuming it failed too: ${(error as Error).message})`;
          }
        } else if (options.stop && !failure) {
          await callControlApi(options.apiSock, 'PUT', '/actions', { action_type: 'Stop' });
          vmState = 'stopped';
        } else if (failure) {
          vmState = await currentState(options.apiSock);
        }
        if (failure) {
          const keptRunning = options.stop ? '; not stopped, since nothing was saved' : '';
          throw new SnapshotCommandError(out, vmState, failure, keptRunning);
        }
        const s = summary!;
        if (options.json) printJson({ ...s, vmState });
        else {
          console.log(
            `snapshot ${s.path}: ${formatBytes(s.fileSizeBytes)} (${s.dataPageCount} data pages, ${s.zeroPageCount} zero pages not stored) ` +
              `in ${s.durationMs.toFixed(1)} ms (pause ${s.pauseMs.toFixed(1)} ms, state ${s.saveStateMs.toFixed(1)} ms, write ${s.writeMs.toFixed(1)} ms); ` +
              `the VM is ${vmState === 'running' ? 'running again' : vmState}`,
          );
        }
        return 0;
      });
    });

  vm.command('status')
    .description('the state of a running VM: vCPUs, exits, and for a lazy restore the pager\'s counters')
    .requiredOption('--api-sock <path>', 'the VM\'s control socket')
    .option('--json', 'print as JSON')
    .action(async (options: SocketOptions) => {
      await exitWith(async () => {
        const status = (await callControlApi(options.apiSock, 'GET', '/vm')) as HostedVmStatus;
        if (options.json) printJson(status);
        else console.log(formatStatus(status).join('\n'));
        return 0;
      });
    });

  for (const [name, state, did, already] of [['pause', 'Paused', 'paused', 'already paused'], ['resume', 'Resumed', 'resumed', 'already running']] as const) {
    vm.command(name)
      .description(`${name} a running VM's vCPUs (says what happened: "${did}" or "${already}")`)
      .requiredOption('--api-sock <path>', 'the VM\'s control socket')
      .option('--json', 'print the VM\'s state as JSON')
      .action(async (options: SocketOptions) => {
        await exitWith(async () => {
          const change = (await callControlApi(options.apiSock, 'PATCH', '/vm', { state })) as VmStateChange;
          if (options.json) printJson(change);
          else console.log(change.changed ? did : change.state === 'created' ? 'already paused (it has not run yet)' : already);
          return 0;
        });
      });
  }

  vm.command('input <text>')
    .description('send bytes to the guest\'s COM1 (the micro guest: "v" verify, "q" verify and finish, "x" finish)')
    .requiredOption('--api-sock <path>', 'the VM\'s control socket')
    .option('--json', 'print the result as JSON')
    .action(async (text: string, options: SocketOptions) => {
      await exitWith(async () => {
        if (text === '') throw new VmUsageError(['<text>'], 'vm input needs at least one byte to send');
        await callControlApi(options.apiSock, 'PUT', '/serial/input', { data: text });
        const bytes = Buffer.byteLength(text, 'utf8');
        if (options.json) printJson({ sentBytes: bytes });
        else console.log(`sent ${bytes} byte${bytes === 1 ? '' : 's'} to COM1`);
        return 0;
      });
    });

  vm.command('receive')
    .description('wait for one VM to be live-migrated here (vm migrate on its source), then run it as its VMM')
    .requiredOption('--listen <host:port>', 'where the source connects (127.0.0.1 unless --allow-remote; port 0: any)')
    .option('--allow-remote', 'listen on an address other hosts can reach (use --psk-file there)')
    .option('--psk-file <file>', 'a pre-shared key (hex or raw, at least 16 bytes; mode 0600, readable by its owner only): only a source holding the same key gets in (TLS-PSK)')
    .addOption(new Option('--stall-timeout-ms <ms>', 'a connection that carries nothing this long (pings unanswered) counts as cut').default('10000'))
    .addOption(new Option('--reconnect-deadline-ms <ms>', 'after a cut past READY, wait this long for the source to come back: GO never read, the machine is then discarded; every page in, the migration completes without its verdict').default('60000'))
    .addOption(new Option('--progress-timeout-ms <ms>', 'before GO, give up on a source that sends nothing but pings this long').default('60000'))
    .option('--api-sock <path>', 'serve the control socket here once the guest runs')
    .option('--metrics <host:port>', METRICS_HELP)
    .option('--metrics-allow-remote', METRICS_REMOTE_HELP)
    .option('--log <file>', 'also write the console to this file')
    .option('--no-stdin', 'do not forward the terminal to the guest\'s COM1')
    .option('--json', 'report VMM events as JSON lines (one object per line) on stderr')
    .action(async (options: CommonRunOptions & { listen: string; allowRemote?: boolean; pskFile?: string; stallTimeoutMs: string; reconnectDeadlineMs: string; progressTimeoutMs: string }) => {
      await exitWith(async () => {
        const listen = parseHostPort(options.listen, '--listen HOST:PORT');
        if (!isLoopbackHost(listen.host) && !options.allowRemote) {
          throw new VmUsageError(['--listen', '--allow-remote'], `--listen ${options.listen} is reachable from other hosts: add --allow-remote to mean it (and --psk-file to let only your source in)`);
        }
        if (!isLoopbackHost(listen.host)) printWarning(`listening on ${options.listen}, reachable from other hosts${options.pskFile ? '' : ', unauthenticated'}`, options.json === true);
        return runVmmProcess({
          command: 'receive',
          listen,
          pskFile: options.pskFile === undefined ? undefined : resolve(options.pskFile),
          stallTimeoutMs: countOption('--stall-timeout-ms', options.stallTimeoutMs, 100),
          reconnectDeadlineMs: countOption('--reconnect-deadline-ms', options.reconnectDeadlineMs, 100),
          progressTimeoutMs: countOption('--progress-timeout-ms', options.progressTimeoutMs, 100),
          apiSock: options.apiSock === undefined ? undefined : resolve(options.apiSock),
          log: options.log,
          forwardStdin: options.stdin && process.stdin.isTTY === true,
          metricsListen: metricsAddress(options),
          ...vmmOutput(options.json),
        });
      });
    });

  vm.command('migrate')
    .description('live-migrate a running VM to a destination waiting with vm receive: pre-copy, then post-copy (hybrid), verified end to end')
    .requiredOption('--api-sock <path>', 'the source VM\'s control socket')
    .option('--to <host:port>', 'the destination (vm receive --listen)')
    .option('--resume', 'a migration paused by a cut that gave up reconnecting: reconnect now, and follow it to its end')
    .option('--abandon', 'a migration paused with GO in flight (committing-paused) whose destination is gone for good: resume the guest here (if the destination did run it, two copies would run)')
    .addOption(new Option('--mode <mode>', 'precopy: rounds then stop-and-copy; postcopy: switch at once, fetch on demand; hybrid: rounds, then post-copy when they do not converge').choices(['precopy', 'postcopy', 'hybrid']).default('hybrid'))
    .addOption(new Option('--downtime-ms <ms>', 'pre-copy stops when the expected downtime is under this').default('300'))
    .addOption(new Option('--max-rounds <n>', 'pre-copy rounds at most (the full first pass included)').default('10'))
    .addOption(new Option('--reconnect-deadline-ms <ms>', 'after a cut past GO, keep reconnecting this long before waiting for --resume').default('60000'))
    .addOption(new Option('--stall-timeout-ms <ms>', 'a connection that carries nothing this long (pings unanswered) counts as cut: a silent link is noticed without waiting for TCP').default('10000'))
    .addOption(new Option('--progress-timeout-ms <ms>', 'a destination that keeps its connections alive but does not answer BEGIN, SWITCHOVER, GO or RESUME this long counts as cut').default('60000'))
    .option('--psk-file <file>', 'the pre-shared key the destination holds (vm receive --psk-file; mode 0600, readable by its owner only): both connections are TLS-PSK')
    .option('--json', 'print only the final report, as one JSON object')
    .action(async (options: SocketOptions & { to?: string; resume?: boolean; abandon?: boolean; mode: 'precopy' | 'postcopy' | 'hybrid'; downtimeMs: string; maxRounds: string; reconnectDeadlineMs: string; stallTimeoutMs: string; progressTimeoutMs: string; pskFile?: string }) => {
      await exitWith(async () => {
        const actions = [options.to !== undefined && '--to', options.resume && '--resume', options.abandon && '--abandon'].filter((a): a is string => typeof a === 'string');
        if (actions.length !== 1) {
          throw new VmUsageError(['--to', '--resume', '--abandon'], actions.length === 0 ? 'give the destination, --to HOST:PORT (or --resume or --abandon a paused migration)' : `${actions.join(' and ')} contradict each other: choose one`);
        }
        if (options.abandon) {
          const answer = (await callControlApi(options.apiSock, 'PUT', '/migrate/abandon', {})) as { state: string };
          if (options.json) printJson(answer);
          else console.log(`migration ${answer.state}: the guest runs here again`);
          return 0;
        }
        // A line per phase or round when stderr is not a terminal.
        const view = new ProgressView(progressMode(options.json));
        const poll = follow(view, async () => {
          const p = (await callControlApi(options.apiSock, 'GET', '/migrate')) as MigrationProgress;
          view.show(formatMigrationProgress(p), `${p.state}/${p.round}`);
        });
        let report: MigrationProgress;
        try {
          if (options.resume) report = await followResumed(options.apiSock);
          else {
            const downtimeMs = countOption('--downtime-ms', options.downtimeMs, 1);
            const maxRounds = countOption('--max-rounds', options.maxRounds, 1);
            const reconnectDeadlineMs = countOption('--reconnect-deadline-ms', options.reconnectDeadlineMs, 100);
            const stallTimeoutMs = countOption('--stall-timeout-ms', options.stallTimeoutMs, 100);
            const progressTimeoutMs = countOption('--progress-timeout-ms', options.progressTimeoutMs, 100);
            parseHostPort(options.to!.replace(/^tcp:\/\//, ''), '--to HOST:PORT');
            report = (await callControlApi(options.apiSock, 'PUT', '/migrate', {
              to: options.to,
              mode: options.mode,
              downtime_ms: downtimeMs,
              max_rounds: maxRounds,
              reconnect_deadline_ms: reconnectDeadlineMs,
              stall_timeout_ms: stallTimeoutMs,
              progress_timeout_ms: progressTimeoutMs,
              ...(options.pskFile === undefined ? {} : { psk_file: resolve(options.pskFile) }),
              wait: true,
            })) as MigrationProgress;
          }
        } finally {
          await poll.stop();
          view.end();
        }
        if (options.json) printJson(report);
        else for (const line of formatMigrationReport(report)) console.log(line);
        // Paused past its reconnect deadline: not over, and not failed — the operator decides (the lines above say how).
        if (report.waitingForOperator) return ExitCode.TEMPFAIL;
        return report.verified === false ? ExitCode.CHECK_FAILED : 0;
      });
    });

  vm.command('stop')
    .description('end a running VM')
    .requiredOption('--api-sock <path>', 'the VM\'s control socket')
    .option('--json', 'print the result as JSON')
    .action(async (options: SocketOptions) => {
      await exitWith(async () => {
        await callControlApi(options.apiSock, 'PUT', '/actions', { action_type: 'Stop' });
        if (options.json) printJson({ state: 'stopped' });
        else console.log('stopped');
        return 0;
      });
    });
}

/**
 * `vm snapshot` wrote no snapshot; `vmState` is how the VM was left. Its code
 * is the cause's (ECANTCREATE, ENOVM, ...), so text, JSON and the exit status
 * all say what went wrong, not only that the snapshot did.
 */
class SnapshotCommandError extends VmError {
  override readonly code: string;
  constructor(readonly path: string, readonly vmState: string, cause: unknown, note: string) {
    super(`snapshot failed: ${(cause as Error).message}; the VM is ${vmState}${note}`, { cause });
    const causeCode = (cause as { code?: unknown } | null)?.code;
    this.code = typeof causeCode === 'string' ? causeCode : 'ESNAPSHOTFAILED';
  }
}

/** The micro guest's command line from the workload options, or --cmdline verbatim. `memoryBytes` bounds --workload-mem. */
export function guestCmdline(options: Pick<RunOptions, 'cmdline' | 'workload' | 'workloadMem' | 'rate' | 'pattern' | 'seed' | 'hb' | 'beats'> & { mem?: string }, memoryBytes?: number): string {
  const pieces: [string, string, string | undefined][] = [
    ['workload', '--workload', options.workload],
    ['mem', '--workload-mem', options.workloadMem === undefined ? undefined : String(countOption('--workload-mem', options.workloadMem, 1))],
    ['rate', '--rate', options.rate === undefined ? undefined : String(countOption('--rate', options.rate, 0))],
    // The guest's own word for sequential is seq.
    ['pattern', '--pattern', options.pattern === 'sequential' ? 'seq' : options.pattern],
    ['seed', '--seed', options.seed === undefined ? undefined : String(countOption('--seed', options.seed, 0))],
    ['hb', '--hb', options.hb === undefined ? undefined : String(countOption('--hb', options.hb, 1))],
    ['beats', '--beats', options.beats === undefined ? undefined : String(countOption('--beats', options.beats, 0))],
  ];
  const given = pieces.filter(([, , v]) => v !== undefined);
  if (options.cmdline !== undefined) {
    if (given.length > 0) throw new VmUsageError(['--cmdline', ...given.map(([, flag]) => flag)], `--cmdline is the whole command line; drop ${given.map(([, flag]) => flag).join(', ')} or put them in it`);
    return options.cmdline;
  }
  if (options.workloadMem !== undefined && memoryBytes !== undefined) {
    const regionMiB = Number(options.workloadMem);
    const fits = Math.min(MICRO_REGION_MAX_MIB, Math.floor((memoryBytes - MICRO_REGION_BASE_BYTES) / MiB));
    if (regionMiB > fits) {
      throw new VmUsageError(['--workload-mem', '--mem'],
        `--workload-mem ${regionMiB} does not fit in --mem ${options.mem ?? formatBytes(memoryBytes)}: the region starts at 2 MiB, so at most ${Math.max(0, fits)} MiB` +
          (fits === MICRO_REGION_MAX_MIB ? ' (the micro guest\'s largest region)' : ''));
    }
  }
  if (given.length === 0) return 'workload=idle';
  return given.map(([k, , v]) => `${k}=${v}`).join(' ');
}

/** "256M", "4096", "1G" -> bytes; anything else is a usage error naming the option. */
function sizeOption(option: string, text: string): number {
  const match = /^(\d+)([KMG])?(i?B)?$/i.exec(text.trim());
  if (!match) throw new VmUsageError([option], `${option} takes a size (4096, 64M, 1G), got ${JSON.stringify(text)}`);
  const unit = { '': 1, K: 1 << 10, M: 1 << 20, G: 1 << 30 }[(match[2] ?? '').toUpperCase() as '' | 'K' | 'M' | 'G'];
  return Number(match[1]) * unit;
}

/** A whole number of at least `min`, else a usage error naming the option. */
function countOption(option: string, text: string, min: number): number {
  if (!/^\d+$/.test(text) || !Number.isSafeInteger(Number(text)) || Number(text) < min) {
    throw new VmUsageError([option], `${option} takes ${min === 0 ? 'a non-negative whole number' : min === 1 ? 'a positive whole number' : `a whole number of at least ${min}`}, got ${JSON.stringify(text)}`);
  }
  return Number(text);
}

async function currentState(socketPath: string): Promise<string> {
  try {
    return ((await callControlApi(socketPath, 'GET', '/vm')) as HostedVmStatus).state;
  } catch {
    return 'in an unknown state (its control socket stopped answering)';
  }
}

/**
 * Run a command's body; its result is the exit status. An error goes up to
 * the CLI's edge (program.ts), which prints it in the one shape every command
 * uses and maps its code to the exit status.
 */
async function exitWith(body: () => Promise<number>): Promise<void> {
  process.exitCode = await body();
}

/** JSON with every fractional number rounded to 0.01 (ms, us, rates: nothing means more digits). */
function jsonLine(value: unknown): string {
  return JSON.stringify(value, (_key, v: unknown) => (typeof v === 'number' && !Number.isInteger(v) ? Math.round(v * 100) / 100 : typeof v === 'bigint' ? v.toString() : v));
}

function printJson(value: unknown): void {
  console.log(jsonLine(value));
}

/** VMM events: one JSON object per line on stderr, or a few readable lines with the timings (around the progress line, if one is drawn). */
function reporter(json: boolean | undefined, view?: ProgressView): (event: VmmProcessEvent) => void {
  if (json) return (event) => process.stderr.write(`${jsonLine(event)}\n`);
  return (event) => {
    const lines = formatEvent(event);
    if (lines.length === 0) return;
    const write = (): void => {
      for (const line of lines) process.stderr.write(`vm: ${line}\n`);
    };
    if (view) view.around(write);
    else write();
  };
}

/**
 * What a VMM process run by this command draws: the progress of an eager
 * restore's load and of prefetch-all on stderr, the guest's console on
 * stdout around it (they share the terminal), and the VMM's event lines.
 */
function vmmOutput(json: boolean | undefined): Pick<VmmProcessOptions, 'console' | 'progress' | 'report'> {
  const view = new ProgressView(progressMode(json));
  const bars = { load: new ByteProgress(view, 'loading guest memory'), 'prefetch-all': new ByteProgress(view, 'prefetching every page') };
  return {
    console: (bytes) => view.around(() => void process.stdout.write(bytes)),
    progress: view.mode === 'off' ? undefined : (p) => {
      bars[p.operation].update(p.doneBytes, p.totalBytes);
      if (p.doneBytes >= p.totalBytes) view.end();
    },
    report: reporter(json, view),
  };
}

export function formatEvent(event: VmmProcessEvent): string[] {
  switch (event.event) {
    case 'running': {
      if (event.incoming) {
        const i = event.incoming;
        return [`running the migrated guest (${event.restore?.mode === 'lazy' ? 'post-copy: pages not here yet are fetched as the guest needs them' : 'every page arrived before it ran'}): ` +
          `this side loaded its state in ${i.loadMs.toFixed(1)} ms and started it in ${i.resumeMs.toFixed(1)} ms, after ${(i.waitedMs / 1000).toFixed(2)} s waiting for the source (its connection, pre-copy, GO)` +
          `${event.apiSock ? `; control socket ${event.apiSock}` : ''}`];
      }
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
    case 'metrics-listening':
      return [`metrics on ${event.url}`];
    case 'listening':
      return [`listening for an incoming VM on ${event.url}${event.authenticated ? ' (TLS-PSK: only a source with the key gets in)' : ' (unauthenticated: any process that reaches it can migrate a VM in)'}`];
    case 'connection-refused':
      return [`refused a connection from ${event.peer}: ${event.reason}`];
    case 'source':
      return [availabilityLine(event.availability)];
    case 'migration': {
      const p = event.progress;
      if (p.error) return [`migration in: ${p.state}: ${p.error.message}`];
      return [`migration in: ${p.state}${p.verified === undefined ? '' : p.verified ? ', every page verified' : `, ${p.differingBatches} batch(es) differ`}; ` +
        `pre-copy ${p.dataPagesReceived} data and ${p.zeroPagesReceived} zero pages in ${p.rounds} rounds, ${p.stalePages} stale; ` +
        `${postcopyWords(p.demandReads, p.backgroundReads, p.pushedPages)}${demandLatency(p)}; load ${p.loadMs ?? '-'} ms, start ${p.resumeMs ?? '-'} ms`];
    }
    case 'exited': {
      const { reason } = event;
      const what = reason.type === 'done' ? `the guest is done, status ${reason.status}`
        : reason.type === 'failed' ? `the guest failed: ${reason.exit}`
        : reason.type === 'migrated' ? `the guest migrated to ${reason.to}`
        : reason.type;
      const lines = [`exited after ${(event.runMs / 1000).toFixed(2)} s: ${what}`];
      const exits = event.status.vcpus.reduce((n, v) => n + v.counters.exits, 0);
      lines.push(`vCPUs: ${event.status.vcpus.length}, exits to the VMM: ${exits}`);
      const memory = event.status.restore?.memory;
      if (memory) lines.push(...formatLazyMemory(memory));
      return lines;
    }
    default: {
      const never: never = event;
      return [JSON.stringify(never)];
    }
  }
}

function formatLazyMemory(memory: NonNullable<NonNullable<HostedVmStatus['restore']>['memory']>): string[] {
  const m = memory.metrics;
  const untouched = memory.pages.missing;
  return [
    `lazy memory: ${m.faults} faults served, ${m.pagesCopied} pages copied (${m.prefetchedPages} read ahead), ${m.zeroPages} zero pages, ` +
      `${untouched} of ${memory.guestPages} guest pages never filled${memory.complete ? `; complete after ${memory.completedMs} ms` : ''}`,
    `fault latency: p50 ${m.latencyMicros.p50} us, p90 ${m.latencyMicros.p90} us, p99 ${m.latencyMicros.p99} us, max ${m.latencyMicros.max} us` +
      (memory.verifyMs !== undefined ? `; CRC check before resume ${memory.verifyMs.toFixed(1)} ms` : ''),
  ];
}

export function formatStatus(status: HostedVmStatus): string[] {
  const lines = [`state: ${status.state}, memory ${formatBytes(status.memoryBytes)}`];
  for (const v of status.vcpus) {
    const blocked = v.blockedOnMemoryMs === undefined ? '' : `, blocked on missing pages ${v.blockedOnMemoryMs.toFixed(1)} ms`;
    lines.push(`vCPU ${v.id}: ${v.state}, ${v.counters.exits} exits (${v.counters.ioExits} port I/O), ${v.counters.kicks} kicks${blocked}`);
  }
  if (status.exitReason) lines.push(`exit: ${JSON.stringify(status.exitReason)}`);
  if (status.restore && status.migration?.role === 'destination') {
    // A guest that arrived by live migration: where from and how, not "restored".
    lines.push(`${status.restore.source}, ${status.restore.mode === 'lazy' ? 'post-copy (pages not here yet are fetched as the guest needs them)' : 'every page arrived before it ran'}`);
    if (status.restore.memory) lines.push(...formatLazyMemory(status.restore.memory));
  } else if (status.restore) {
    lines.push(`restored ${status.restore.mode} from ${status.restore.source}, ready in ${status.restore.readyMs.toFixed(1)} ms`);
    if (status.restore.memory) lines.push(...formatLazyMemory(status.restore.memory));
  }
  // The network source's outage while it lasts (what it went through after).
  const source = status.source && availabilityStatusLine(status.source);
  if (source) lines.push(source);
  const migration = status.migration;
  if (migration?.role === 'source') lines.push(formatMigrationProgress(migration));
  else if (migration?.role === 'destination') {
    const m = migration;
    lines.push(`migration in: ${m.state}, pre-copy ${m.dataPagesReceived} data and ${m.zeroPagesReceived} zero pages, ${postcopyWords(m.demandReads, m.backgroundReads, m.pushedPages)}${demandLatency(m)}` +
      (m.verified === undefined ? '' : m.verified ? ', verified' : ', NOT verified'));
  }
  return lines;
}

function demandLatency(p: DestinationProgress): string {
  const l = p.faultLatencyMicros;
  return l && l.count ? ` (${l.count} guest faults waited p50 ${l.p50} us, p99 ${l.p99} us)` : '';
}

/**
 * Post-copy's counts in the words both sides print, so the same count reads
 * the same on each: the READs the destination sent, for its guest's faults
 * (on demand) and ahead of them (read-ahead), and the pages the source
 * pushed unasked (zero pages included).
 */
export function postcopyWords(demandReads: number, readAheadReads: number, pushedPages: number): string {
  return `post-copy ${demandReads} demand reads, ${readAheadReads} read-ahead reads, ${pushedPages} pages pushed`;
}

/** How pre-copy ended and what came next, in words (the switchover's reason and the mode). */
export function switchoverWords(p: Pick<MigrationProgress, 'mode' | 'round' | 'switchoverReason' | 'state'>): string {
  const rounds = `${p.round} pre-copy round${p.round === 1 ? '' : 's'}`;
  const next = p.mode === 'hybrid' ? 'post-copy' : 'stop-and-copy';
  switch (p.switchoverReason) {
    case 'mode':
      return 'post-copy from the start (--mode postcopy)';
    case 'converged':
      return `stop-and-copy once pre-copy converged, after ${rounds}`;
    case 'rounds-exhausted':
      return `${next} after ${rounds} (--max-rounds) without converging`;
    case 'not-converging':
      return `${next} after ${rounds}: the guest dirtied pages about as fast as they were sent`;
    default:
      return p.state;
  }
}

/** A migration paused by a cut past its reconnect deadline: where the guest is, why, and the ways out. */
function formatPausedMigration(p: MigrationProgress): string[] {
  const why = p.reconnectError ?? p.connectionLost;
  const lines = [`migration ${p.state}: the connection to the destination was lost${p.connectionLost ? ` (${p.connectionLost.message})` : ''} and reconnecting gave up${why && why !== p.connectionLost ? `; last attempt: ${why.message}` : ''}`];
  if (p.state === 'committing-paused') {
    lines.push('GO was sent and its answer lost: whether the destination runs the guest is not known; the guest is paused here, its memory kept');
    lines.push('ways out: vm migrate --resume (try again), vm migrate --abandon (the destination is gone for good: the guest resumes here), vm stop');
  } else {
    lines.push('the destination runs the guest and may still need pages only this side has: they are kept here');
    lines.push('ways out: vm migrate --resume (try again), vm stop (give up on the destination\'s missing pages)');
  }
  return lines;
}

/** Like QEMU's info migrate: phase, round, transferred / remaining, rate, dirty rate, zero pages, post-copy requests, elapsed, expected downtime. */
export function formatMigrationProgress(p: MigrationProgress): string {
  const remaining = formatBytes(p.remainingPages * 4096);
  const parts = [
    `${p.state}${p.state === 'precopy' ? ` round ${p.round + 1}` : ''}`,
    `${formatBytes(p.transferredBytes)} sent, ${remaining} to go${p.state === 'precopy' ? ' this round' : ''}`,
    `${formatBytes(p.rateBytesPerSecond)}/s`,
  ];
  // The dirty rate is measured when a round ends (the dirty log is read then): none during the first.
  if (p.state === 'precopy' && p.dirtyPagesPerSecond !== undefined) parts.push(`dirtying ${p.dirtyPagesPerSecond} pages/s`);
  parts.push(`${p.zeroPagesSent} zero pages`);
  if (p.postcopyRequests || p.pushedPages || p.pushedZeroPages) parts.push(postcopyWords(p.postcopyDemandReads, p.postcopyReadAheadReads, p.pushedPages + p.pushedZeroPages));
  parts.push(`${(p.elapsedMs / 1000).toFixed(1)} s`);
  if (p.expectedDowntimeMs !== undefined) parts.push(`expected downtime ${p.expectedDowntimeMs.toFixed(1)} ms`);
  return `migrate: ${parts.join(', ')}`;
}

export function formatMigrationReport(p: MigrationProgress): string[] {
  if (p.waitingForOperator) return formatPausedMigration(p);
  const lines = [`migrated in ${(p.elapsedMs / 1000).toFixed(2)} s, ${switchoverWords(p)}: ${formatBytes(p.transferredBytes)} sent ` +
    `(${p.dataPagesSent + p.pushedPages} data pages, ${p.zeroPagesSent} zero pages as markers); ${postcopyWords(p.postcopyDemandReads, p.postcopyReadAheadReads, p.pushedPages + p.pushedZeroPages)}`];
  const d = p.downtime;
  if (d) lines.push(`downtime ${d.totalMs.toFixed(1)} ms: pause ${d.pauseMs.toFixed(1)}, final sync ${d.finalSyncMs.toFixed(1)}, state ${d.stateEncodeMs.toFixed(1)}, send ${d.sendMs.toFixed(1)}, destination load ${d.destinationLoadMs.toFixed(1)}, resume ${d.destinationResumeMs.toFixed(1)} ms`);
  lines.push(p.verified ? 'verified: every page the destination installed matches what was sent' : `NOT verified: ${p.differingBatches ?? '?'} batch(es) of pages differ`);
  return lines;
}

/**
 * Poll the VMM every 100 ms while a request it is working on runs (a
 * snapshot, a migration) and draw what `step` reads. A failed poll (not
 * started yet, or already over: the request's answer is the last word) is
 * skipped. Nothing is polled when the view shows nothing (--json).
 */
function follow(view: ProgressView, step: () => Promise<void>): { stop(): Promise<void> } {
  let done = false;
  const loop = view.mode === 'off' ? Promise.resolve() : (async () => {
    while (!done) {
      await new Promise((r) => setTimeout(r, 100));
      if (done) break;
      try {
        await step();
      } catch {
        // Not started yet, or over.
      }
    }
  })();
  return {
    stop: async () => {
      done = true;
      await loop;
    },
  };
}

/** --resume: ask the source to reconnect now, and wait for the migration's end (its final report is the answer). */
async function followResumed(apiSock: string): Promise<MigrationProgress> {
  return (await callControlApi(apiSock, 'PUT', '/migrate/resume', { wait: true })) as MigrationProgress;
}
