// 6. Live migration against QEMU's post-copy (issue 10, "Measured against
// QEMU"): the same micro guest image, writer workload and RAM, dirtying at a
// set rate in order or at random, migrated over loopback by this project's
// VMM and by Debian's qemu-system-x86 (installed here when missing), rounds
// interleaved. Post-copy starts after the first full pass (the issue's
// comparison) or at once (pure post-copy, where both have many demand
// faults). Every migration is checked end to end (bench/migrate/ours.ts,
// bench/migrate/qemu.ts); a failed one ends the bench with its error.
import { accessSync, constants, mkdtempSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { deathSignalWrapper } from '../migrate/guest-process.js';
import { ensureBuiltinGuest } from '../../src/vm/boot/builtin-guest.js';
import type { MigrateOptions } from '../migrate/options.js';
import { runOurMigration, type RunOptions, type Switchover } from '../migrate/ours.js';
import { ConvergedInPrecopyError, runQemuMigration } from '../migrate/qemu.js';
import { regionMiBFor, type DirtyPattern, type GuestWorkload, type MigrationFigures, type Vmm } from '../migrate/workload.js';
import { ensureQemu, qemuKvmUsable } from '../qemu/install.js';
import type { QemuAccel } from '../qemu/qemu-args.js';
import { checkTarget, median, pairedRatio, perRoundValues, type Ratio, type TargetResult } from '../stats.js';
import { fmt, fmtInt, fmtRatio, type Table } from '../table.js';
import type { Section, SectionResult } from './section.js';

/** The guest's timer and heartbeat: a beat every tick at 100 Hz, so the gap is measured to ~10 ms. */
const HZ = 100;
const HB_TICKS = 1;
/** Heartbeats before migrating: the fill done and the dirtying under way for a second. */
const WARMUP_BEATS = 100;
/** QEMU runs before giving up on catching it in post-copy after its first pass. */
const CONVERGED_ATTEMPTS = 5;

const SWITCHOVER_LABEL: Record<Switchover, string> = {
  'first-pass': 'post-copy after the first pass',
  immediate: 'pure post-copy (switch at once)',
};

/** What runs on each side, for the notes. */
const SIDES: Record<Switchover, { ours: string; qemu: string }> = {
  'first-pass': {
    ours: 'ours: PUT /migrate mode=hybrid max_rounds=1 downtime_ms=1 (one full pass, then post-copy)',
    qemu: 'QEMU: postcopy-ram + postcopy-blocktime, downtime-limit 1 ms, max-bandwidth unlimited, migrate-start-postcopy on MIGRATION_PASS 2 (the first pass done)',
  },
  immediate: {
    ours: 'ours: PUT /migrate mode=postcopy (nothing sent before switchover)',
    qemu: 'QEMU: postcopy-ram + postcopy-blocktime, migrate-start-postcopy right after migrate (it switches before its first page)',
  },
};

export interface MigrationRunRecord extends MigrationFigures {
  round: number;
  pattern: DirtyPattern;
  switchover: Switchover;
  /** The bench's time for the whole run: boot, migration, checks (every attempt). */
  runSeconds: number;
  /** Runs it took: QEMU may converge in pre-copy before post-copy begins (ConvergedInPrecopyError), and is run again. */
  attempts: number;
}

export const migrateSection: Section = async (ctx, options) => {
  const m: MigrateOptions = options.migrate;
  try {
    accessSync('/dev/kvm', constants.R_OK | constants.W_OK);
  } catch {
    throw new Error('the migrate section needs /dev/kvm (our VMM runs the guest with KVM)');
  }
  const guest = ensureBuiltinGuest();
  if (guest.path === undefined) throw new Error(`the migrate section needs the micro guest: ${guest.reason}`);
  const qemu = ensureQemu(ctx.log);
  const accel: QemuAccel = m.qemuAccel === 'auto' ? (qemuKvmUsable(qemu.binary) ? 'kvm' : 'tcg') : m.qemuAccel;
  ctx.log(`bench: migrate: ${qemu.version}, -accel ${accel}`);

  const dir = mkdtempSync(join(ctx.workDir, 'migrate-'));
  // Children die with the bench (pdeathsig); the directory goes on a signal too.
  const onSignal = (signal: NodeJS.Signals): void => {
    rmSync(dir, { recursive: true, force: true });
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    process.kill(process.pid, signal);
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  const wrap = deathSignalWrapper();
  const records: MigrationRunRecord[] = [];
  try {
    const regionMiB = regionMiBFor(m.memoryBytes);
    for (let round = 0; round < options.rounds; round++) {
      for (const pattern of m.patterns) {
        for (const switchover of m.switchovers) {
          const workload: GuestWorkload = { memoryBytes: m.memoryBytes, regionMiB, pattern, ratePagesPerSecond: m.ratePagesPerSecond, hz: HZ, hbTicks: HB_TICKS, seed: options.seed + round };
          // Who goes first alternates, so that neither always runs on a machine the other just warmed (or loaded).
          const order: Vmm[] = round % 2 === 0 ? ['ours', 'qemu'] : ['qemu', 'ours'];
          for (const vmm of order) {
            const started = performance.now();
            let figures: MigrationFigures | undefined;
            let attempts = 0;
            while (!figures) {
              attempts++;
              const runDir = mkdtempSync(join(dir, `${vmm}-`));
              const run: RunOptions = { workload, switchover, dir: runDir, warmupBeats: WARMUP_BEATS, timeoutMs: migrationTimeoutMs(m), wrap };
              try {
                figures = vmm === 'ours' ? await runOurMigration(run) : await runQemuMigration({ ...run, binary: qemu.binary, accel, kernel: guest.path });
              } catch (error) {
                if (error instanceof ConvergedInPrecopyError && attempts < CONVERGED_ATTEMPTS) {
                  ctx.log(`migrate round ${round + 1} ${pattern} ${switchover} qemu: converged in pre-copy before post-copy began; again (${attempts}/${CONVERGED_ATTEMPTS})`);
                  continue;
                }
                throw new Error(`migrate round ${round + 1} ${pattern} ${switchover} ${vmm}: ${(error as Error).message}`, { cause: error });
              } finally {
                rmSync(runDir, { recursive: true, force: true });
              }
            }
            const runSeconds = (performance.now() - started) / 1000;
            records.push({ ...figures, round, pattern, switchover, runSeconds, attempts });
            ctx.log(`migrate round ${round + 1}/${options.rounds} ${pattern} ${switchover} ${vmm}: ${fmt(figures.wallMs, 0)} ms total, heartbeat gap ${fmt(figures.heartbeatGapMs, 0)} ms, ${figures.demandFaults} demand faults (${runSeconds.toFixed(1)} s run)`);
          }
        }
      }
    }
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    rmSync(dir, { recursive: true, force: true });
  }
  return summarize(records, m, options.rounds, { version: qemu.version, accel });
};

/** Bound on one migration: pure post-copy of all RAM at a few MB/s would still finish. */
function migrationTimeoutMs(m: MigrateOptions): number {
  return 120_000 + (m.memoryBytes / (1 << 20)) * 1_000;
}

type Pick = (f: MigrationFigures) => number;

const PICKS = {
  total: (f) => f.wallMs,
  switchAt: (f) => f.switchoverAtMs ?? Number.NaN,
  downtime: (f) => f.downtimeMs,
  gap: (f) => f.heartbeatGapMs,
  longest: (f) => f.longestHeartbeatMs,
  mib: (f) => f.transferredBytes / (1 << 20),
  faults: (f) => f.demandFaults,
  requests: (f) => f.demandRequests,
  p50: (f) => (f.demandLatencyMicros ? f.demandLatencyMicros.p50 / 1000 : Number.NaN),
  p99: (f) => (f.demandLatencyMicros ? f.demandLatencyMicros.p99 / 1000 : Number.NaN),
  blocktime: (f) => f.vcpuBlocktimeMs,
} satisfies Record<string, Pick>;

type Column = keyof typeof PICKS;
const COLUMNS: { key: Column; title: string; digits: number }[] = [
  { key: 'total', title: 'total ms', digits: 0 },
  { key: 'switchAt', title: 'switch at ms', digits: 0 },
  { key: 'downtime', title: 'downtime ms', digits: 1 },
  { key: 'gap', title: 'hb gap ms', digits: 0 },
  { key: 'longest', title: 'longest hb ms', digits: 0 },
  { key: 'mib', title: 'MiB sent', digits: 1 },
  { key: 'faults', title: 'faults', digits: 0 },
  { key: 'requests', title: 'requests', digits: 0 },
  { key: 'p50', title: 'p50 ms', digits: 2 },
  { key: 'p99', title: 'p99 ms', digits: 2 },
  { key: 'blocktime', title: 'blocktime ms', digits: 0 },
];
/** The columns a ratio row shows (the rest are counts or context). */
const RATIO_COLUMNS = new Set<Column>(['total', 'downtime', 'gap', 'longest', 'mib', 'p50', 'p99', 'blocktime']);

/** A median that skips rounds without the figure (no demand fault: no latency). */
function medianOf(values: number[]): number {
  return median(values.filter((v) => Number.isFinite(v)));
}

/** The tables, targets and JSON of a set of runs (also to print them again from a results file's runs). */
export function summarize(records: MigrationRunRecord[], m: MigrateOptions, rounds: number, qemu: { version: string; accel: QemuAccel }): SectionResult {
  const tables: Table[] = [];
  const targets: TargetResult[] = [];
  const summary: Record<string, unknown>[] = [];
  const runs: Record<string, MigrationRunRecord[]> = {};
  const omitted: string[] = [];
  const versionShort = /QEMU emulator version (\S+)/.exec(qemu.version)?.[1] ?? qemu.version;
  const regionMiB = regionMiBFor(m.memoryBytes);
  for (const switchover of m.switchovers) {
    const rows: string[][] = [];
    for (const pattern of m.patterns) {
      const of = (vmm: Vmm): MigrationRunRecord[] => records.filter((r) => r.switchover === switchover && r.pattern === pattern && r.vmm === vmm).sort((a, b) => a.round - b.round);
      const ours = of('ours');
      const theirs = of('qemu');
      runs[`${switchover}/${pattern}/ours`] = ours;
      runs[`${switchover}/${pattern}/qemu`] = theirs;
      const values = (list: MigrationRunRecord[], key: Column): number[] => list.map(PICKS[key]);
      const ratio = (key: Column): Ratio => pairedRatio(values(ours, key), values(theirs, key));
      for (const [vmm, list] of [['ours', ours], ['qemu', theirs]] as const) {
        const medians = Object.fromEntries(COLUMNS.map((c) => [c.key, medianOf(values(list, c.key))]));
        const engine = vmm === 'ours' ? { accel: 'kvm' } : { accel: qemu.accel, version: qemu.version };
        summary.push({ switchover, pattern, vmm, ...engine, rounds: list.length, attempts: list.map((r) => r.attempts), ...medians });
        rows.push([pattern, vmm === 'ours' ? 'ours' : `QEMU ${versionShort} (${qemu.accel})`, ...COLUMNS.map((c) => (c.key === 'faults' || c.key === 'requests' ? fmtInt(medians[c.key]!) : fmt(medians[c.key]!, c.digits)))]);
      }
      // The median only: the ranges are in the targets table and the JSON, and would make this one too wide to read.
      rows.push([pattern, 'ours / QEMU', ...COLUMNS.map((c) => (RATIO_COLUMNS.has(c.key) ? fmtRatio({ ...ratio(c.key), rounds: 1 }) : ''))]);

      const label = `migrate ${pattern}, ${switchover === 'first-pass' ? 'post-copy after the first pass' : 'pure post-copy'}`;
      // Issue 19's targets, with the floor each must hold in any case.
      targets.push(checkTarget(`${label}: total time / QEMU's (floor 1.0x)`, ratio('total'), 'at-most', 0.8));
      targets.push(checkTarget(`${label}: guest-visible downtime (heartbeat gap) / QEMU's (floor 1.5x)`, ratio('gap'), 'at-most', 1.0));
      targets.push(checkTarget(`${label}: downtime on our VMM's clock (floor 10 ms)`, perRoundValues(values(ours, 'downtime')), 'at-most', 5, ' ms'));
      const latencyEverywhere = [...ours, ...theirs].every((r) => r.demandLatencyMicros !== undefined);
      if (latencyEverywhere) targets.push(checkTarget(`${label}: p99 demand-fault latency / QEMU's (floor 1.5x)`, ratio('p99'), 'at-most', 1.0));
      else omitted.push(`${label}: p99 latency not compared (${theirs.some((r) => !r.demandLatencyMicros) ? 'QEMU' : 'ours'} had no demand fault in a round)`);
    }
    const sides = SIDES[switchover];
    tables.push({
      title: `6. Live migration, ${SWITCHOVER_LABEL[switchover]}: ${fmtInt(m.memoryBytes / (1 << 20))} MiB micro guest, writer dirtying ${fmtInt(m.ratePagesPerSecond)} pages/s of ${regionMiB} MiB, loopback, ours against QEMU (median of ${rounds} rounds)`,
      columns: ['pattern', 'VMM', ...COLUMNS.map((c) => c.title)],
      numeric: [false, false, ...COLUMNS.map(() => true)],
      rows,
      notes: [
        sides.ours,
        sides.qemu,
        `Both boot dist/guest/micro.elf (multiboot) with one vCPU; ours with KVM, QEMU with -accel ${qemu.accel} (${qemu.version}). Rounds interleaved, who goes first alternating.`,
        'total: migrate command to the source\'s completion (ours: its answer, after the destination verified every page; QEMU: its MIGRATION completed event), on the bench\'s clock. switch at: when the first pass ended.',
        'downtime: guest stopped, each VMM\'s own clock. hb gap: host time from the source\'s last heartbeat line to the destination\'s first (a beat every 10 ms tick); longest hb: the longest interval from the migrate command on (post-copy stalls show there).',
        'MiB sent: ours both connections with framing; QEMU ram.transferred. faults: demand faults the destination served (ours: pager faults; QEMU: pages its trace shows requested). requests: page requests the source served (ours includes read-ahead).',
        'p50/p99: fault to page installed (ours: the destination pager; QEMU 7.2 has no latency in query-migrate: its postcopy_page_req_add/del trace). blocktime: vCPU time blocked on missing pages (ours: blockedOnMemoryMs; QEMU: postcopy-vcpu-blocktime).',
        'p50/p99 are medians over the rounds that had demand faults (a round with one or two faults gives p99 = its worst). ours / QEMU: ratios taken round by round, their median.',
      ],
    });
  }
  if (omitted.length) tables.at(-1)!.notes.push(...omitted.map((o) => `Target left out: ${o}.`));
  return { name: 'migrate', tables, targets, summary, runs };
}
