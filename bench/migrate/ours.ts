// One migration with this project's VMM, checked end to end: a source VMM
// runs the writer, a destination VMM (`receive`) listens on loopback, and the
// source is told to migrate either in hybrid mode with one pre-copy round and
// a 1 ms downtime target (the first full pass, then post-copy, since pre-copy
// never converges to 1 ms: what QEMU does when `migrate-start-postcopy` comes
// after its first pass) or in postcopy mode (nothing before switchover). Its
// figures are what the two VMMs report; a migration that is not completed and
// verified, or after which the guest's heartbeat is broken or its own verify
// is not clean, is an error.
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { PagerMetricsSnapshot } from '../../src/pager/metrics.js';
import type { DestinationProgress } from '../../src/migrate/destination-migration.js';
import type { MigrationProgress } from '../../src/migrate/source-migration.js';
import { controlRequest } from '../../src/vmm-host/control-api.js';
import { checkGuestVerify, heartbeatAcrossMove } from './heartbeat.js';
import { GuestProcess, ProcessGroup, sleep, withTimeout } from './guest-process.js';
import { bootPages, guestCmdline, type GuestWorkload, type MigrationFigures } from './workload.js';

const VMM_MAIN = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'src', 'vmm-host', 'vmm-main.js');

/**
 * When post-copy begins: after the first full pre-copy pass (the issue's
 * comparison), or at once (pure post-copy: every page on demand or pushed
 * after the guest moved).
 */
export type Switchover = 'first-pass' | 'immediate';

export interface RunOptions {
  workload: GuestWorkload;
  switchover: Switchover;
  /** Where sockets and logs go (removed by the caller). */
  dir: string;
  /** Heartbeats to see before migrating (the fill done, dirtying under way). */
  warmupBeats: number;
  /** Bound on the whole migration. */
  timeoutMs: number;
  /** Wraps a command so that it dies with the bench (setpriv --pdeathsig), or runs it as is. */
  wrap: (file: string, args: string[]) => [string, string[]];
}

/** How long the guest's fill takes at most: ~20 k pages/s emulated under PVM, with a wide margin. */
export function bootTimeoutMs(w: GuestWorkload): number {
  return 60_000 + ((w.regionMiB * 256) / 5_000) * 1000;
}

interface VmmEvent {
  event: string;
  [key: string]: unknown;
}

function vmmEvents(stderr: string): VmmEvent[] {
  return [...stderr.matchAll(/^vmm: (\{.*\})$/gm)].map((m) => JSON.parse(m[1]!) as VmmEvent);
}

interface VmStatusBody {
  state: string;
  vcpus: { id: number; blockedOnMemoryMs?: number }[];
  migration?: DestinationProgress;
  restore?: { memory?: { metrics?: PagerMetricsSnapshot } };
}

/** Polls the source's migration state every 10 ms until `until` settles: when each state was first seen. */
async function watchStates(sock: string, fromMs: number, until: Promise<unknown>): Promise<{ state: string; atMs: number }[]> {
  let done = false;
  void until.finally(() => {
    done = true;
  }).catch(() => {});
  const seen: { state: string; atMs: number }[] = [];
  while (!done) {
    const answer = await controlRequest(sock, 'GET', '/migrate').catch(() => undefined);
    const state = (answer?.body as { state?: string } | undefined)?.state;
    if (state && seen.at(-1)?.state !== state) seen.push({ state, atMs: performance.now() - fromMs });
    await sleep(10);
  }
  return seen;
}

export async function runOurMigration(options: RunOptions): Promise<MigrationFigures> {
  const { workload, dir } = options;
  const group = new ProcessGroup();
  const spawnVmm = (name: string, args: string[]): GuestProcess => {
    const [file, argv] = options.wrap(process.execPath, [VMM_MAIN, ...args]);
    return group.add(new GuestProcess(name, file, argv));
  };
  try {
    const srcSock = join(dir, 'ours-source.sock');
    const dstSock = join(dir, 'ours-destination.sock');
    const mem = `${workload.memoryBytes / (1 << 20)}M`;
    const source = spawnVmm('our source VMM', ['run', '--mem', mem, '--cmdline', guestCmdline(workload), '--api-sock', srcSock]);
    await source.console.waitFor(new RegExp(`^hb ${options.warmupBeats} `), bootTimeoutMs(workload), 'the source guest');
    const pages = bootPages(source.console.text);
    if (pages === undefined) throw source.failure('printed no boot line');
    const destination = spawnVmm('our destination VMM', ['receive', '--listen', '127.0.0.1:0', '--api-sock', dstSock]);
    const listening = await destination.waitForStderr(/^vmm: (\{"event":"listening".*\})$/m, 10_000);
    const url = (JSON.parse(listening[1]!) as { url: string }).url;

    const startedAt = performance.now();
    const request = options.switchover === 'immediate' ? { mode: 'postcopy' } : { mode: 'hybrid', max_rounds: 1, downtime_ms: 1 };
    const migrating = controlRequest(srcSock, 'PUT', '/migrate', { to: url.replace(/^tcp:\/\//, ''), ...request, wait: true });
    // Meanwhile, when each state began (the bench's clock): the first pass's end is the switchover.
    const states = watchStates(srcSock, startedAt, migrating);
    const answer = await withTimeout(migrating, options.timeoutMs, 'our migration');
    const wallMs = performance.now() - startedAt;
    const stateTimes = await states;
    const report = answer.body as MigrationProgress;
    if (answer.status !== 200 || report.state !== 'completed') throw new Error(`our migration did not complete (HTTP ${answer.status}): ${JSON.stringify(report)}`);
    if (report.verified !== true) throw new Error(`our migration completed unverified (${report.differingBatches ?? '?'} batches differ): ${JSON.stringify(report)}`);
    if (report.switchoverReason === 'converged') throw new Error('our migration converged in pre-copy and never entered post-copy: raise --migrate-rate');

    const sourceExit = await source.waitForExit(30_000);
    const sourceExited = vmmEvents(source.stderr).find((e) => e.event === 'exited') as { reason?: { type: string } } | undefined;
    if (sourceExit.code !== 0 || sourceExited?.reason?.type !== 'migrated') throw source.failure(`ended with code ${sourceExit.code}, reason ${JSON.stringify(sourceExited?.reason)}, not as migrated`);

    // The destination's control API opens once the guest runs there; it
    // finishes post-copy (every page in, verified) on its own time.
    await waitForSocket(dstSock, 30_000);
    let status = await vmStatus(dstSock);
    const deadline = performance.now() + 60_000;
    while (status.migration?.state !== 'completed' && performance.now() < deadline) {
      if (status.migration?.state === 'failed') break;
      await sleep(50);
      status = await vmStatus(dstSock);
    }
    const progress = status.migration;
    if (progress?.state !== 'completed' || progress.verified !== true) throw destination.failure(`migration ended ${progress?.state}, verified ${progress?.verified}`);
    if (status.state !== 'running') throw destination.failure(`the guest is ${status.state} after the move, not running`);

    const lastBefore = source.console.lastHeartbeat()?.seq ?? 0;
    await destination.console.waitFor(new RegExp(`^hb ${lastBefore + 3} `), 30_000, 'the destination guest');
    const beats = heartbeatAcrossMove(source.console, destination.console, startedAt);

    // Blocktime before quitting: the figures of the post-copy just done.
    const blocktimeMs = status.vcpus.reduce((sum, v) => sum + (v.blockedOnMemoryMs ?? 0), 0);
    const quit = await controlRequest(dstSock, 'PUT', '/serial/input', { data: 'q' });
    if (quit.status !== 204) throw destination.failure(`refused the console input (HTTP ${quit.status})`);
    const exit = await destination.waitForExit(bootTimeoutMs(workload));
    checkGuestVerify(destination.console, pages, 'our destination');
    if (exit.code !== 0) throw destination.failure(`exited with code ${exit.code}`);
    const exited = vmmEvents(destination.stderr).find((e) => e.event === 'exited') as { status?: VmStatusBody } | undefined;
    const blockedAtExit = exited?.status?.vcpus.reduce((sum, v) => sum + (v.blockedOnMemoryMs ?? 0), 0);

    // Fault to page installed, as the pager measured it on the destination
    // (whether a READ or a push brought the page): what QEMU's trace measures.
    const pager = status.restore?.memory?.metrics;
    if (!pager) throw destination.failure('reports no pager metrics after post-copy');
    return {
      vmm: 'ours',
      totalMs: report.elapsedMs,
      wallMs,
      switchoverAtMs: stateTimes.find((s) => s.state === 'switchover')?.atMs,
      downtimeMs: report.downtime?.totalMs ?? Number.NaN,
      heartbeatGapMs: beats.gapMs,
      longestHeartbeatMs: beats.longestIntervalMs,
      heartbeatPeriodMs: beats.periodMs,
      transferredBytes: report.transferredBytes,
      demandFaults: pager.faults,
      demandRequests: report.postcopyRequests,
      demandLatencyMicros: pager.faults > 0 ? pager.latencyMicros : undefined,
      vcpuBlocktimeMs: Math.max(blocktimeMs, blockedAtExit ?? 0),
      verifiedGuestPages: pages,
      raw: { source: report, destination: progress, heartbeats: beats, vcpus: status.vcpus, pager: status.restore?.memory?.metrics, sourceStates: stateTimes },
    };
  } finally {
    await group.killAll();
  }
}

async function vmStatus(sock: string): Promise<VmStatusBody> {
  const answer = await withTimeout(controlRequest(sock, 'GET', '/vm'), 10_000, 'GET /vm');
  if (answer.status !== 200) throw new Error(`GET /vm answered HTTP ${answer.status}: ${JSON.stringify(answer.body)}`);
  return answer.body as VmStatusBody;
}

async function waitForSocket(path: string, timeoutMs: number): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    try {
      await controlRequest(path, 'GET', '/vm');
      return;
    } catch (error) {
      if (performance.now() > deadline) throw new Error(`no control API at ${path} within ${timeoutMs} ms: ${(error as Error).message}`);
      await sleep(20);
    }
  }
}
