// One post-copy migration with QEMU, checked end to end, the same guest and
// workload as ours: a source QEMU runs the writer, a destination QEMU waits
// (-incoming defer) on loopback. Both get postcopy-ram and postcopy-blocktime
// (and events, so that the bench hears the end of the first pass at once);
// the source gets downtime-limit 1 ms (pre-copy never stops on its own) and
// no bandwidth cap (QEMU's default caps pre-copy at 128 MiB/s; ours has no
// cap). When the first pass ends (MIGRATION_PASS 2: the dirty bitmap synced
// after it), migrate-start-postcopy. A migration that does not complete, or
// never entered post-copy, or after which the guest's heartbeat is broken or
// its own verify is not clean, is an error.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { LatencyHistogram, type LatencySummary } from '../../src/stats/latency-histogram.js';
import { demandTraceArgs, parseDemandTrace } from '../qemu/postcopy-trace.js';
import { guestStatusFromExit, qemuArgs, type QemuAccel } from '../qemu/qemu-args.js';
import { QmpClient, type QmpEvent } from '../qemu/qmp-client.js';
import { checkGuestVerify, heartbeatAcrossMove } from './heartbeat.js';
import { GuestProcess, ProcessGroup, sleep } from './guest-process.js';
import { bootTimeoutMs, type RunOptions } from './ours.js';
import { bootPages, guestCmdline, type MigrationFigures } from './workload.js';

export interface QemuRunOptions extends RunOptions {
  binary: string;
  accel: QemuAccel;
  kernel: string;
}

/** query-migrate's answer, the fields the bench reads (QEMU 7.2's MigrationInfo). */
export interface QemuMigrationInfo {
  status: string;
  'total-time'?: number;
  downtime?: number;
  'setup-time'?: number;
  ram?: { transferred: number; total: number; 'postcopy-requests': number; 'dirty-sync-count': number; 'precopy-bytes'?: number; 'postcopy-bytes'?: number; 'downtime-bytes'?: number; mbps?: number };
  'postcopy-blocktime'?: number;
  'postcopy-vcpu-blocktime'?: number[];
  'socket-address'?: { type: string; host?: string; port?: string }[];
  'error-desc'?: string;
}

const DONE_STATES = new Set(['completed', 'failed', 'cancelled']);

/**
 * QEMU converged in pre-copy before migrate-start-postcopy took effect: it
 * checks for the request between iterations of up to 50 ms of sending
 * (ram_save_iterate's MAX_WAIT), and a small dirty set goes out in less. Not
 * a failed migration: no post-copy to measure (the section tries again).
 */
export class ConvergedInPrecopyError extends Error {
  readonly code = 'ECONVERGEDINPRECOPY';
  constructor(readonly statuses: string[]) {
    super(`QEMU completed in pre-copy and never entered post-copy (statuses ${statuses.join(' > ')}): a higher --migrate-rate or more --migrate-mem leaves more after the first pass`);
  }
}

export async function runQemuMigration(options: QemuRunOptions): Promise<MigrationFigures> {
  const { workload, dir } = options;
  const group = new ProcessGroup();
  const clients: QmpClient[] = [];
  const spawnQemu = (name: string, args: string[]): GuestProcess => {
    const [file, argv] = options.wrap(options.binary, args);
    return group.add(new GuestProcess(name, file, argv, { stdin: true }));
  };
  try {
    const machine = { accel: options.accel, memoryBytes: workload.memoryBytes, kernel: options.kernel, append: guestCmdline(workload) };
    const srcQmp = join(dir, 'qemu-source.qmp');
    const dstQmp = join(dir, 'qemu-destination.qmp');
    const traceFile = join(dir, 'qemu-destination.trace');
    const source = spawnQemu('QEMU source', qemuArgs({ ...machine, qmpSocket: srcQmp }));
    await source.console.waitFor(new RegExp(`^hb ${options.warmupBeats} `), bootTimeoutMs(workload), 'the QEMU source guest');
    const pages = bootPages(source.console.text);
    if (pages === undefined) throw source.failure('printed no boot line');
    const destination = spawnQemu('QEMU destination', qemuArgs({ ...machine, qmpSocket: dstQmp, incoming: true, extra: demandTraceArgs(traceFile) }));
    const src = await QmpClient.connect(srcQmp);
    clients.push(src);
    const dst = await QmpClient.connect(dstQmp);
    clients.push(dst);

    const capabilities = ['postcopy-ram', 'postcopy-blocktime', 'events'].map((capability) => ({ capability, state: true }));
    await src.execute('migrate-set-capabilities', { capabilities });
    await dst.execute('migrate-set-capabilities', { capabilities });
    await src.execute('migrate-set-parameters', { 'downtime-limit': 1, 'max-bandwidth': 2 ** 40, 'max-postcopy-bandwidth': 0 });
    await dst.execute('migrate-incoming', { uri: 'tcp:127.0.0.1:0' });
    const incoming = await dst.execute<QemuMigrationInfo>('query-migrate');
    const port = incoming['socket-address']?.find((a) => a.type === 'inet')?.port;
    if (!port) throw new Error(`the QEMU destination reports no listening port: ${JSON.stringify(incoming)}`);

    const statuses: string[] = [];
    const isDone = (e: QmpEvent): boolean => e.name === 'MIGRATION' && DONE_STATES.has(String(e.data.status));
    const startedAt = performance.now();
    await src.execute('migrate', { uri: `tcp:127.0.0.1:${port}` });
    if (options.switchover === 'first-pass') {
      // The end of the first pass: the bitmap sync that follows it is pass 2.
      const firstPass = await Promise.race([
        src.waitForEvent((e) => e.name === 'MIGRATION_PASS' && Number(e.data.pass) >= 2, options.timeoutMs, 'end of the first pass (MIGRATION_PASS 2)'),
        src.waitForEvent(isDone, options.timeoutMs, 'migration end'),
      ]);
      if (firstPass.name === 'MIGRATION') throw new Error(`QEMU's migration ended ${String(firstPass.data.status)} before its first pass did`);
    }
    // Immediate: QEMU switches at its first iteration, before it sends a page.
    await src.execute('migrate-start-postcopy');
    const switchoverAtMs = performance.now() - startedAt;
    const end = await src.waitForEvent(isDone, options.timeoutMs, 'migration end (MIGRATION completed)');
    const wallMs = end.atMs - startedAt;
    for (const e of src.events) if (e.name === 'MIGRATION') statuses.push(String(e.data.status));
    const info = await src.execute<QemuMigrationInfo>('query-migrate');
    if (info.status !== 'completed') throw new Error(`QEMU's migration ended ${info.status}: ${info['error-desc'] ?? JSON.stringify(info)}`);
    if (!statuses.includes('postcopy-active')) throw new ConvergedInPrecopyError(statuses);

    // The destination has the blocktime once it has placed every page.
    let dstInfo = await dst.execute<QemuMigrationInfo>('query-migrate');
    const deadline = performance.now() + 60_000;
    while (!DONE_STATES.has(dstInfo.status) && performance.now() < deadline) {
      await sleep(50);
      dstInfo = await dst.execute<QemuMigrationInfo>('query-migrate');
    }
    if (dstInfo.status !== 'completed') throw destination.failure(`incoming migration ended ${dstInfo.status}`);
    const running = await dst.execute<{ running: boolean; status: string }>('query-status');
    if (!running.running) throw destination.failure(`the guest is ${running.status} after the move, not running`);

    const lastBefore = source.console.lastHeartbeat()?.seq ?? 0;
    await destination.console.waitFor(new RegExp(`^hb ${lastBefore + 3} `), 30_000, 'the QEMU destination guest');
    const beats = heartbeatAcrossMove(source.console, destination.console, startedAt);

    destination.write('q');
    const exit = await destination.waitForExit(bootTimeoutMs(workload));
    checkGuestVerify(destination.console, pages, 'the QEMU destination');
    const status = guestStatusFromExit(exit.code);
    if (status !== 0) throw destination.failure(`exited with code ${exit.code} (guest status ${status}), not 1 (status 0)`);
    await src.execute('quit').catch(() => undefined);
    await source.waitForExit(10_000);

    const trace = parseDemandTrace(readFileSync(traceFile, 'utf8'));
    if (trace.unresolved > 0) throw new Error(`QEMU's trace shows ${trace.unresolved} demanded pages never placed`);
    const latency = summarize(trace.latenciesMicros);
    const perVcpu = dstInfo['postcopy-vcpu-blocktime'] ?? [];
    return {
      vmm: 'qemu',
      totalMs: info['total-time'] ?? Number.NaN,
      wallMs,
      switchoverAtMs,
      downtimeMs: info.downtime ?? Number.NaN,
      heartbeatGapMs: beats.gapMs,
      longestHeartbeatMs: beats.longestIntervalMs,
      heartbeatPeriodMs: beats.periodMs,
      transferredBytes: info.ram?.transferred ?? Number.NaN,
      demandFaults: trace.latenciesMicros.length,
      demandRequests: info.ram?.['postcopy-requests'] ?? Number.NaN,
      demandLatencyMicros: latency,
      vcpuBlocktimeMs: perVcpu.reduce((a, b) => a + b, 0),
      verifiedGuestPages: pages,
      raw: { source: info, destination: dstInfo, statuses, heartbeats: beats, tracedDemandPages: trace.latenciesMicros.length, qemuVersion: src.version },
    };
  } finally {
    for (const client of clients) client.close();
    await group.killAll();
  }
}

/** The same summary our destination reports (HDR histogram, two significant digits). */
function summarize(micros: readonly number[]): LatencySummary | undefined {
  if (micros.length === 0) return undefined;
  const histogram = new LatencyHistogram();
  for (const m of micros) histogram.record(m);
  return histogram.summary();
}
