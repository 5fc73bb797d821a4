// One VMM as a process: boot or restore a guest, serve the control socket,
// put the console on stdout (and a log file), and end with the guest. Both
// `userfault vm run|restore` (src/cli/vm-commands.ts) and the bare
// `node dist/src/vmm-host/vmm-main.js` call runVmmProcess; they differ only in how
// they print its events.
//
// A failure before the guest runs is thrown, not reported: the CLI prints it
// at its edge as it prints every command's, vmm-main as a `vmm:` event line.
//
// Exit status (the sysexits scheme of src/exit-codes.ts; errors mapped by
// their code through exitCodeFor):
//   the guest's done status; 0 after a Stop (control socket, Ctrl-C, SIGTERM)
//   64  a bad request: --mem 0, options out of range or contradicting each other
//   65  bad input data: a truncated or corrupt snapshot, a bad VM state in it, a bad guest image
//   66  the snapshot or guest image does not exist
//   69  KVM is missing (or lacks a capability)
//   70  the guest failed (triple fault, KVM internal error), or an unexpected error
//   73  the control socket path is taken (a file, a live VM's socket) or cannot be created
//   77  /dev/kvm: permission denied (the message says to join the kvm group)
import { appendFileSync, writeFileSync } from 'node:fs';
import { ExitCode, exitCodeFor } from '../exit-codes.js';
import { startControlApi, vmmMetrics, type ControlApi } from './control-api.js';
import type { MetricsRegistry } from '../metrics/metrics-registry.js';
import { startMetricsServer, type MetricsServer } from '../metrics/metrics-server.js';
import type { HostPort } from '../net/address.js';
import { VmUsageError } from '../vm/errors.js';
import { machineConfigProblem } from '../vm/machine-config.js';
import type { LazyRestoreOptions } from '../vm/memory/lazy-guest-memory.js';
import type { GuestExitReason } from '../vm/vcpu-protocol.js';
import { vmRestoreSourceFromNetwork, type VmRestoreSource } from '../vm/persist/restore-source.js';
import { openSourceByUrl, sourceUrlKind } from '../source-url/open-source-by-url.js';
import { openVmSnapshotSource } from '../vm/persist/vm-snapshot.js';
import type { Vmm, VmStatus } from '../vm/vmm.js';
import { bootVm } from '../vm/builder.js';
import { restoreVm } from '../vm/persist/restore.js';
import { HostedVm, type HostedVmStatus } from './hosted-vm.js';
import type { AvailabilityEvent } from '../sources/network/availability.js';
import { DestinationMigration, type DestinationProgress } from '../migrate/destination-migration.js';
import { vmMigrationKind } from '../vm/vm-migration-kind.js';
import { readPskFile } from '../migrate/transport/channels.js';

export interface VmmProcessOptions {
  command: 'run' | 'restore' | 'receive';
  /** receive: where to listen for the incoming VM. */
  listen?: { host: string; port: number };
  /** receive: the TLS-PSK key file (only a source holding the key is let in). */
  pskFile?: string;
  /** receive: a connection silent this long counts as cut. */
  stallTimeoutMs?: number;
  /** receive: after a cut past READY, how long to wait for the source to come back (ReceiveOptions). */
  reconnectDeadlineMs?: number;
  /** receive: before GO, how long the source may send nothing but pings. */
  progressTimeoutMs?: number;
  /** run: a multiboot image path or 'builtin'. */
  image?: string;
  memoryBytes?: number;
  vcpuCount?: number;
  cmdline?: string;
  /** restore: the snapshot. */
  snapshotPath?: string;
  /** restore: from a page server (tcp://HOST:PORT) or an object store (s3://BUCKET/KEY) instead. */
  fromUrl?: string;
  /** restore --from: the object store's endpoint (s3://), and how long a network source may not answer before its pages are poisoned. */
  endpoint?: string;
  sourceDeadlineMs?: number;
  /** restore: lazily, with these options (undefined or false: eager). */
  lazy?: LazyRestoreOptions | false;
  apiSock?: string;
  /** A file that gets the console too (truncated first). */
  log?: string;
  /** Where the console goes (default stdout). */
  console?: (bytes: Uint8Array) => void;
  /** Forward this process's stdin (raw, when a TTY) to COM1; Ctrl-C stops the VM. */
  forwardStdin?: boolean;
  /** Serve the metrics on this TCP address too (GET /metrics; the control socket always has them). Checked by the caller. */
  metricsListen?: HostPort;
  /** Every event the process reports (see VmmProcessEvent). */
  report: (event: VmmProcessEvent) => void;
  /** Progress of the long operations (an eager restore's load, prefetch-all); none when absent. */
  progress?: (progress: VmmProgress) => void;
}

/** A long operation's progress: guest RAM bytes done of the total. */
export interface VmmProgress {
  operation: 'load' | 'prefetch-all';
  doneBytes: number;
  totalBytes: number;
}

export type VmmProcessEvent =
  | {
      event: 'running';
      command: 'run' | 'restore' | 'receive';
      /** ms from the start until the VM was built and loaded (run) or restored (restore), paused. */
      readyMs: number;
      /** ms from the start until every vCPU was running: the time to resume (receive: its wait for the source included). */
      resumedMs: number;
      restore?: VmStatus['restore'];
      /**
       * receive: this side's own time, split from its wait: the state loaded
       * (SWITCHOVER to READY), the vCPUs started (GO to running), and the rest
       * of resumedMs, spent waiting for the source (its connection, pre-copy, GO).
       */
      incoming?: { loadMs: number; resumeMs: number; waitedMs: number };
      apiSock?: string;
    }
  /** The guest's first console bytes after the start (a restored guest's first line shows it runs). */
  | { event: 'first-output'; ms: number }
  /** --metrics: the metrics are served over TCP at this URL. */
  | { event: 'metrics-listening'; url: string }
  /** receive: listening for the incoming VM (authenticated: TLS-PSK required). */
  | { event: 'listening'; url: string; authenticated: boolean }
  /** receive: a connection refused before it carried anything (a wrong key, another session...). */
  | { event: 'connection-refused'; peer: string; reason: string }
  /**
   * restore --from, receive (post-copy): the source's peer became
   * unreachable, is still, came back, or was given up
   * (src/sources/network/availability-text.ts says it in words).
   */
  | { event: 'source'; availability: AvailabilityEvent }
  /** receive: the migration ended (every page in and verified, or not). */
  | { event: 'migration'; progress: DestinationProgress }
  | { event: 'exited'; reason: GuestExitReason; runMs: number; status: HostedVmStatus; exitCode: number };

/** An error, as the bare VMM process (vmm-main.ts) reports it: the class, its stable code, the message, the exit status, and its data fields. */
export interface VmmErrorEvent {
  event: 'error';
  name: string;
  code: string | undefined;
  message: string;
  exitCode: number;
  /** The error's own fields (path, field, option...), when it has any. */
  details?: Record<string, unknown>;
  cause?: { name: string; code: string | undefined; message: string };
}

/** ms to 0.01 since `started`. */
const msSince = (started: number): number => Math.round((performance.now() - started) * 100) / 100;

export async function runVmmProcess(options: VmmProcessOptions): Promise<number> {
  const started = performance.now();
  const ms = (): number => msSince(started);
  const { log } = options;
  // A failure before the guest runs is thrown: the caller prints it in its own shape (the CLI's edge, vmm-main's event line).
  if (log) writeFileSync(log, '');
  const host = await buildVmm(options, consoleSink(options, ms));
  const readyMs = ms();
  const { vmm } = host;

  let stopRequested = false;
  const stop = (): void => {
    stopRequested = true;
    void host.close();
  };
  let api: ControlApi | undefined;
  let metricsServer: MetricsServer | undefined;
  // One registry for both endpoints, made once the guest runs (below), or by the first scrape if that
  // comes sooner: its setup (prom-client's process metrics, a few ms) is no part of the restore.
  let registry: MetricsRegistry | undefined;
  let metrics: (() => MetricsRegistry) | undefined;
  const cleanups: (() => void)[] = [];
  try {
    // The process's own metrics (CPU, memory, event loop) included.
    metrics = options.apiSock || options.metricsListen ? () => (registry ??= vmmMetrics(host)) : undefined;
    if (options.apiSock) api = await startControlApi(host, options.apiSock, { onStop: stop, metrics });
    if (options.metricsListen) {
      // A taken port fails with EADDRINUSE, naming it (exit 73).
      metricsServer = await startMetricsServer(metrics!, options.metricsListen);
      options.report({ event: 'metrics-listening', url: metricsServer.url });
    }
    await vmm.resume();
  } catch (error) {
    await metricsServer?.close();
    await api?.close();
    await vmm.close();
    throw error;
  }
  const resumedMs = ms();
  options.report({ event: 'running', command: options.command, readyMs, resumedMs, restore: vmm.status().restore, incoming: incomingTimes(host, resumedMs), apiSock: options.apiSock });
  metrics?.();
  if (options.progress && options.lazy && options.lazy.prefetchAll) cleanups.push(followPrefetchAll(vmm, options.progress));

  const onSignal = (): void => stop();
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);
  cleanups.push(() => {
    process.off('SIGTERM', onSignal);
    process.off('SIGINT', onSignal);
  });
  if (options.forwardStdin) cleanups.push(forwardStdin(vmm, stop));

  const reason = await vmm.exited;
  for (const cleanup of cleanups) cleanup();
  await metricsServer?.close();
  await api?.close();
  await vmm.close();
  const exitCode = reason.type === 'done' ? reason.status : reason.type === 'stopped' || reason.type === 'migrated' || (stopRequested && reason.type !== 'failed') ? ExitCode.OK : ExitCode.SOFTWARE;
  options.report({ event: 'exited', reason, runMs: ms(), status: host.status(), exitCode });
  return exitCode;
}

/** receive: the destination's own load and resume times, and the rest of `resumedMs`, its wait for the source. */
function incomingTimes(host: HostedVm, resumedMs: number): { loadMs: number; resumeMs: number; waitedMs: number } | undefined {
  const progress = host.migrationProgress();
  if (progress?.role !== 'destination') return undefined;
  const loadMs = progress.loadMs ?? 0;
  const resumeMs = progress.resumeMs ?? 0;
  return { loadMs, resumeMs, waitedMs: Math.max(0, Math.round((resumedMs - loadMs - resumeMs) * 100) / 100) };
}

/** The command-line names of the machine's fields, the same for `userfault vm run` and vmm-main. */
const MACHINE_OPTIONS = { memoryBytes: '--mem', vcpuCount: '--cpus' } as const;

/**
 * Refuse --mem and --cpus values the VMM cannot build (a VmUsageError naming
 * the option: exit 64), before anything is built. --mem must be a multiple
 * of 4096 and at most 3 GiB; --cpus from 1 to 255.
 */
export function checkMachineOptions(memoryBytes: number, vcpuCount: number): void {
  const problem = machineConfigProblem({ memoryBytes, vcpuCount });
  if (!problem) return;
  const option = MACHINE_OPTIONS[problem.field];
  const value = problem.field === 'memoryBytes' ? `${memoryBytes} bytes${memoryBytes >= 1024 ? ` (${formatBytes(memoryBytes)})` : ''}` : String(vcpuCount);
  throw new VmUsageError([option], `${option} is ${value}; it ${problem.problem}`);
}

/** Bytes in binary units, as the VM commands print them: 256 MiB, 1.5 GiB, 4 KiB, 100 B. */
export function formatBytes(bytes: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let value = bytes;
  let unit = 0;
  while (Math.abs(value) >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  const text = unit === 0 || Number.isInteger(value) ? String(value) : value.toFixed(1);
  return `${text} ${units[unit]}`;
}

function consoleSink(options: VmmProcessOptions, ms: () => number): (bytes: Uint8Array) => void {
  const out = options.console ?? ((bytes: Uint8Array) => void process.stdout.write(bytes));
  let sawOutput = false;
  return (bytes) => {
    if (!sawOutput) {
      sawOutput = true;
      options.report({ event: 'first-output', ms: ms() });
    }
    out(bytes);
    if (options.log) appendFileSync(options.log, bytes);
  };
}

async function buildVmm(options: VmmProcessOptions, console: (bytes: Uint8Array) => void): Promise<HostedVm> {
  if (options.command === 'receive') {
    if (!options.listen) throw new VmUsageError(['--listen'], 'receive needs --listen HOST:PORT');
    const security = options.pskFile === undefined ? undefined : readPskFile(options.pskFile);
    const destination = await DestinationMigration.listen({
      ...options.listen,
      kind: vmMigrationKind({ console }),
      security,
      stallTimeoutMs: options.stallTimeoutMs,
      reconnectDeadlineMs: options.reconnectDeadlineMs,
      progressTimeoutMs: options.progressTimeoutMs,
    });
    destination.on('refused', (peer, reason) => options.report({ event: 'connection-refused', peer, reason }));
    destination.on('availability', (availability) => options.report({ event: 'source', availability }));
    options.report({ event: 'listening', url: destination.url, authenticated: security !== undefined });
    const report = (): void => options.report({ event: 'migration', progress: destination.progress() });
    destination.done.then(report, report);
    // The VMM is this process's once the guest runs here; the rest of the migration (post-copy) goes on meanwhile.
    return new HostedVm((await destination.running).vmm, { incoming: destination, source: () => destination.sourceAvailability });
  }
  if (options.command === 'run') {
    checkMachineOptions(options.memoryBytes ?? 32 * 2 ** 20, options.vcpuCount ?? 1);
    return new HostedVm(await bootVm({ image: options.image ?? 'builtin', memoryBytes: options.memoryBytes ?? 32 * 2 ** 20, vcpuCount: options.vcpuCount ?? 1, cmdline: options.cmdline ?? 'workload=idle', console }));
  }
  if (options.fromUrl !== undefined && options.snapshotPath !== undefined) throw new VmUsageError(['SNAPSHOT', '--from'], 'restore takes a snapshot path or --from URL, not both');
  if (options.fromUrl === undefined && options.snapshotPath === undefined) throw new VmUsageError(['SNAPSHOT', '--from'], 'restore needs a snapshot path or --from tcp://HOST:PORT');
  const from = options.fromUrl === undefined ? await openVmSnapshotSource(options.snapshotPath!) : await openUrlVmSource(options.fromUrl, options);
  const progress = options.progress;
  // A page server or store out of reach while the guest (or the eager load) waits on it is said out loud.
  const memory = from.memory;
  memory.onAvailability?.((availability) => options.report({ event: 'source', availability }));
  return new HostedVm(await restoreVm(from, {
    console,
    lazy: options.lazy || undefined,
    onLoadProgress: progress && ((doneBytes, totalBytes) => progress({ operation: 'load', doneBytes, totalBytes })),
  }), { source: () => memory.availabilityStats });
}

/** A VM served by a page server or pushed to a store: its memory from the source the URL opens, its state from that source's metadata. */
async function openUrlVmSource(url: string, options: VmmProcessOptions): Promise<VmRestoreSource> {
  const started = performance.now();
  const kind = sourceUrlKind(url);
  const memory = await openSourceByUrl(url, { endpoint: options.endpoint, deadlineMs: options.sourceDeadlineMs });
  return vmRestoreSourceFromNetwork(memory, kind, started);
}

/** prefetch-all's progress: the stored pages in guest RAM, every 200 ms until all are (or the VM ends). Returns the stop. */
function followPrefetchAll(vmm: Vmm, progress: (progress: VmmProgress) => void): () => void {
  const tick = (): void => {
    const report = vmm.lazyMemoryReport();
    if (!report) return;
    const totalBytes = report.snapshotDataPages * 4096;
    progress({ operation: 'prefetch-all', doneBytes: totalBytes - report.storedPagesPending * 4096, totalBytes });
    if (report.storedPagesPending === 0) clearInterval(timer);
  };
  const timer = setInterval(tick, 200);
  timer.unref();
  return () => clearInterval(timer);
}

const ERROR_FIELDS_SKIPPED = new Set(['name', 'message', 'stack', 'code', 'cause']);

/** An error as an event: its code, exit status, its own data fields, and its cause's code. */
export function errorEvent(error: unknown): VmmErrorEvent {
  const e = (error instanceof Error ? error : new Error(String(error))) as Error & { code?: unknown };
  const details: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(e)) {
    if (!ERROR_FIELDS_SKIPPED.has(key) && (typeof value === 'string' || typeof value === 'number' || typeof value === 'boolean' || Array.isArray(value))) details[key] = value;
  }
  const causeCode = e.cause instanceof Error ? (e.cause as { code?: unknown }).code : undefined;
  const cause = e.cause instanceof Error ? { name: e.cause.name, code: typeof causeCode === 'string' ? causeCode : undefined, message: e.cause.message } : undefined;
  return {
    event: 'error',
    name: e.name,
    code: typeof e.code === 'string' ? e.code : undefined,
    message: e.message,
    exitCode: exitCodeFor(error),
    ...(Object.keys(details).length > 0 ? { details } : {}),
    ...(cause ? { cause } : {}),
  };
}

/** stdin to COM1 (raw mode on a TTY, so keys go through as typed). Ctrl-C stops the VM. Returns the undo. */
function forwardStdin(vmm: Vmm, stop: () => void): () => void {
  const stdin = process.stdin;
  const raw = stdin.isTTY === true;
  if (raw) stdin.setRawMode(true);
  const onData = (chunk: Buffer): void => {
    if (raw && chunk.includes(0x03)) {
      stop();
      return;
    }
    // Keys while a snapshot is taken still go in (input is allowed then); a full queue drops the keys.
    if (vmm.state !== 'stopped') void vmm.sendInput(chunk).catch(() => {});
  };
  stdin.on('data', onData);
  stdin.resume();
  return () => {
    stdin.off('data', onData);
    if (raw) stdin.setRawMode(false);
    stdin.pause();
  };
}
