// 8. VM resume: how long a restored micro guest waits before it runs. A
// guest of --size RAM whose writer filled half of it is snapshotted once;
// every round restores it with `userfault vm restore` (the CLI, in a process
// of its own, as a user runs it) three ways: lazy (each page CRC-checked as
// it is installed: a corrupt page is never mapped), lazy --verify-first (the
// whole snapshot checked before the guest runs: the default until this
// issue), and eager (every page read and checked into guest RAM first).
//
// The figure is the VMM's own clock, from opening the snapshot to the vCPUs
// running (`resumedMs`), with its steps; and, for scale, the wall time from
// spawning the process to the guest's first console line (Node's start and
// the module load included). Every restored guest must run on (a heartbeat
// past the snapshot's) and its own verify of its memory must be clean.
import { accessSync, constants, mkdtempSync, rmSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ensureBuiltinGuest } from '../../src/vm/boot/builtin-guest.js';
import { controlRequest } from '../../src/vmm-host/control-api.js';
import { checkGuestVerify } from '../migrate/heartbeat.js';
import { deathSignalWrapper, GuestProcess, ProcessGroup } from '../migrate/guest-process.js';
import { checkTarget, median, type Ratio, type TargetResult } from '../stats.js';
import { fmt, fmtInt, type Table } from '../table.js';
import type { Section } from './section.js';

const DIST = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'src');
const VMM_MAIN = join(DIST, 'vmm-host', 'vmm-main.js');
const CLI_MAIN = join(DIST, 'cli', 'main.js');
/** The target: the guest runs within this many ms of the restore starting. */
const TARGET_RESUME_MS = 20;

interface ResumeVariant {
  key: string;
  label: string;
  args: string[];
}

const VARIANTS: ResumeVariant[] = [
  { key: 'lazy', label: 'lazy, each page checked as installed', args: ['--lazy'] },
  { key: 'lazy-verify-first', label: 'lazy --verify-first (whole file checked first)', args: ['--lazy', '--verify-first'] },
  { key: 'eager', label: 'eager (every page read and checked first)', args: [] },
];

/** What one restore's `running` event says, and the bench's own clock. */
export interface ResumeRun {
  resumedMs: number;
  readyMs: number;
  openedMs: number;
  builtMs: number;
  memoryMs: number;
  verifiedMs?: number;
  /** Spawn to the guest's first console line, by the bench's clock. */
  firstOutputWallMs: number;
}

interface RunningEvent {
  event: 'running';
  readyMs: number;
  resumedMs: number;
  restore: { openedMs: number; builtMs: number; memoryMs: number; readyMs: number; verifiedMs?: number };
}

const ratioOf = (values: number[]): Ratio => ({ median: median(values), min: Math.min(...values), max: Math.max(...values), rounds: values.length });

export const vmResumeSection: Section = async (ctx, options) => {
  try {
    accessSync('/dev/kvm', constants.R_OK | constants.W_OK);
  } catch {
    throw new Error('the vm-resume section needs /dev/kvm');
  }
  const guest = ensureBuiltinGuest();
  if (guest.path === undefined) throw new Error(`the vm-resume section needs the micro guest: ${guest.reason}`);
  const wrap = deathSignalWrapper();
  const dir = mkdtempSync(join(ctx.workDir, 'vm-resume-'));
  const group = new ProcessGroup();
  const spawnNode = (name: string, script: string, args: string[]): GuestProcess => {
    const [file, argv] = wrap(process.execPath, [script, ...args]);
    return group.add(new GuestProcess(name, file, argv));
  };
  const memMiB = Math.max(16, Math.floor(options.sizeBytes / (1 << 20)));
  const fillMiB = Math.floor(memMiB / 2);
  const fillPages = (fillMiB << 20) / 4096;
  const snapshot = join(dir, 'vm.snap');
  const runs = new Map<string, ResumeRun[]>(VARIANTS.map((v) => [v.key, []]));
  try {
    // The snapshot: the writer's fill done, a few heartbeats in.
    const runSock = join(dir, 'run.sock');
    const source = spawnNode('the VM to snapshot', VMM_MAIN, ['run', '--mem', `${memMiB}M`, '--cmdline', `workload=writer mem=${fillMiB} hb=10 seed=${options.seed}`, '--api-sock', runSock]);
    await source.console.waitFor(/^hb 3 /, 60_000 + fillPages, 'the guest to snapshot');
    const saved = await controlRequest(runSock, 'PUT', '/snapshot/create', { snapshot_path: snapshot });
    if (saved.status !== 200) throw source.failure(`refused the snapshot (HTTP ${saved.status}): ${JSON.stringify(saved.body)}`);
    const lastBeat = source.console.lastHeartbeat()?.seq ?? 0;
    await controlRequest(runSock, 'PUT', '/actions', { action_type: 'Stop' });
    await source.waitForExit(30_000);
    ctx.log(`bench: vm-resume: a ${memMiB} MiB guest, ${fillMiB} MiB written, snapshotted after heartbeat ${lastBeat}`);

    for (let round = 1; round <= options.rounds; round++) {
      for (const variant of VARIANTS) {
        const sock = join(dir, `${variant.key}-${round}.sock`);
        const started = performance.now();
        const vm = spawnNode(`vm restore ${variant.args.join(' ')}`, CLI_MAIN, ['vm', 'restore', snapshot, ...variant.args, '--api-sock', sock, '--no-stdin', '--json']);
        const running = JSON.parse((await vm.waitForStderr(/^(\{"event":"running".*\})$/m, 60_000))[1]!) as RunningEvent;
        const first = await vm.console.waitFor(/./, 30_000, 'the restored guest');
        // The guest runs on from where it was saved, and its memory is the one it wrote.
        await vm.console.waitFor(new RegExp(`^hb ${lastBeat + 1} `), 30_000, 'the restored guest');
        const quit = await controlRequest(sock, 'PUT', '/serial/input', { data: 'q' });
        if (quit.status !== 204) throw vm.failure(`refused the console input (HTTP ${quit.status})`);
        const exit = await vm.waitForExit(60_000 + fillPages);
        checkGuestVerify(vm.console, fillPages, `the guest restored ${variant.key}`);
        if (exit.code !== 0) throw vm.failure(`exited with code ${exit.code}`);
        const r = running.restore;
        const run: ResumeRun = { resumedMs: running.resumedMs, readyMs: running.readyMs, openedMs: r.openedMs, builtMs: r.builtMs, memoryMs: r.memoryMs, verifiedMs: r.verifiedMs, firstOutputWallMs: first.atMs - started };
        runs.get(variant.key)!.push(run);
        ctx.log(`vm-resume round ${round}/${options.rounds} ${variant.key}: resumed in ${fmt(run.resumedMs)} ms (first output ${fmt(run.firstOutputWallMs)} ms after spawn)`);
      }
    }
  } finally {
    await group.killAll();
    rmSync(dir, { recursive: true, force: true });
  }

  const rows: string[][] = [];
  const summary: Record<string, unknown>[] = [];
  const med = (key: string, pick: (r: ResumeRun) => number | undefined): number => median(runs.get(key)!.map(pick).filter((v): v is number => v !== undefined));
  for (const variant of VARIANTS) {
    const list = runs.get(variant.key)!;
    const resumed = list.map((r) => r.resumedMs);
    const row = {
      variant: variant.key,
      resumedMs: median(resumed),
      resumedMinMs: Math.min(...resumed),
      resumedMaxMs: Math.max(...resumed),
      openedMs: med(variant.key, (r) => r.openedMs),
      builtMs: med(variant.key, (r) => r.builtMs - r.openedMs),
      checkedMs: med(variant.key, (r) => (r.verifiedMs === undefined ? undefined : r.verifiedMs - r.builtMs)),
      memoryMs: med(variant.key, (r) => r.memoryMs - (r.verifiedMs ?? r.builtMs)),
      stateMs: med(variant.key, (r) => r.readyMs - r.memoryMs),
      resumeMs: med(variant.key, (r) => r.resumedMs - r.readyMs),
      firstOutputWallMs: med(variant.key, (r) => r.firstOutputWallMs),
    };
    summary.push(row);
    rows.push([
      variant.label,
      `${fmt(row.resumedMs)} (${fmt(row.resumedMinMs)}-${fmt(row.resumedMaxMs)})`,
      fmt(row.openedMs),
      fmt(row.builtMs),
      Number.isNaN(row.checkedMs) ? '-' : fmt(row.checkedMs),
      fmt(row.memoryMs),
      fmt(row.stateMs),
      fmt(row.resumeMs),
      fmtInt(row.firstOutputWallMs),
    ]);
  }
  const targets: TargetResult[] = [
    checkTarget(`vm-resume: lazy restore of a ${memMiB} MiB guest, ms until it runs (each page checked as installed)`, ratioOf(runs.get('lazy')!.map((r) => r.resumedMs)), 'at-most', TARGET_RESUME_MS, ' ms'),
  ];
  const table: Table = {
    title: `8. VM resume: a ${memMiB} MiB micro guest (${fillMiB} MiB written) restored by \`userfault vm restore\`, ms (median of ${options.rounds} rounds)`,
    columns: ['restore', 'until the guest runs', 'open', 'build', 'check', 'memory', 'state', 'resume', 'spawn to first output'],
    numeric: [false, true, true, true, true, true, true, true, true],
    rows,
    notes: [
      '"until the guest runs" is the VMM\'s clock from opening the snapshot to the vCPUs running (resumedMs), min-max in brackets; the steps are its parts: open the file and check its tables, build the KVM VM, check every page (--verify-first; eager: read and check into RAM), register guest RAM with userfaultfd and start the pager (lazy), load the vCPU and device state, start the control socket and resume.',
      '"spawn to first output" is the bench\'s clock, from spawning the process to the guest\'s first console line: Node\'s start and the CLI\'s module load are in it.',
      'Each restored guest ran on past the snapshot\'s last heartbeat and its own verify of the memory it wrote was clean.',
    ],
  };
  return { name: 'vm-resume', tables: [table], targets, summary, runs: Object.fromEntries(runs) };
};
