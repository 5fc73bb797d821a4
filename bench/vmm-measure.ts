// Measures the micro guest: boot, dirty rate, snapshot, and restore eagerly
// and lazily (the numbers in docs/vm.md):
//
//   node dist/bench/vmm-measure.js [RAM_MiB=64] [REGION_MiB=32] [--runs 3]
//        [--modes eager,lazy,lazy-noverify,lazy-prefetch-all] [--snapshot PATH] [--keep]
//
// One guest runs the writer (random pattern) and is snapshotted mid-workload;
// the snapshot is then restored `--runs` times in each mode, in this process
// (the file is in the page cache: these are warm-cache numbers). For each
// restore: time to ready and to resume, time to the guest's first heartbeat,
// the pager's counters at that heartbeat and when the guest's verify pass is
// done (after 'q'), and the verify result. Prints one JSON object; per-mode
// figures are medians over the runs.
import { rmSync } from 'node:fs';
import { parseArgs } from 'node:util';
import type { LazyMemoryReport, LazyRestoreOptions } from '../src/vm/memory/lazy-guest-memory.js';
import { openVmSnapshotSource } from '../src/vm/persist/vm-snapshot.js';
import { bootVm } from '../src/vm/builder.js';
import { restoreVm } from '../src/vm/persist/restore.js';
import type { Vmm } from '../src/vm/vmm.js';

const MiB = 1 << 20;
const { positionals, values } = parseArgs({
  allowPositionals: true,
  options: {
    runs: { type: 'string', default: '3' },
    modes: { type: 'string', default: 'eager,lazy,lazy-verify-first,lazy-prefetch-all' },
    snapshot: { type: 'string' },
    keep: { type: 'boolean', default: false },
  },
});
const memMiB = Number(positionals[0] ?? 64);
const regionMiB = Number(positionals[1] ?? 32);
const runs = Number(values.runs);
const snapPath = values.snapshot ?? `/tmp/vmm-measure-${process.pid}.snap`;
const HB_TICKS = 20;

type Mode = 'eager' | 'lazy' | 'lazy-verify-first' | 'lazy-prefetch-all';
const MODES: Record<Mode, LazyRestoreOptions | undefined> = {
  eager: undefined,
  lazy: {},
  'lazy-verify-first': { verifyFirst: true },
  'lazy-prefetch-all': { prefetchAll: true },
};

class Console {
  text = '';
  readonly sink = (b: Uint8Array): void => {
    this.text += Buffer.from(b).toString('latin1');
  };
  async wait(re: RegExp, timeoutMs = 60000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!re.test(this.text)) {
      if (Date.now() > deadline) throw new Error(`no ${re} within ${timeoutMs} ms:\n${this.text.slice(-500)}`);
      await new Promise((r) => setTimeout(r, 1));
    }
  }
  heartbeats(): number[][] {
    return [...this.text.matchAll(/hb (\d+) dirtied=(\d+) ticks=(\d+)/g)].map((x) => x.slice(1).map(Number));
  }
}

const round = (x: number, digits = 1): number => +x.toFixed(digits);

// ---- boot, dirty, snapshot ---------------------------------------------------
const guest = new Console();
let t = performance.now();
const vmm = await bootVm({ image: 'builtin', memoryBytes: memMiB * MiB, cmdline: `workload=writer mem=${regionMiB} hb=${HB_TICKS} pattern=random`, console: guest.sink });
const built = performance.now() - t;
await vmm.resume();
await guest.wait(/micro: boot/);
const firstLine = performance.now() - t;
await guest.wait(/fill pages/);
const filled = performance.now() - t;
await guest.wait(/hb 4 [^\n]*\n/);
const hbs = guest.heartbeats();
const [a, b] = [hbs[1]!, hbs[3]!];
const pagesPerSec = (b[1]! - a[1]!) / ((b[2]! - a[2]!) / 100);
const snap = await vmm.snapshot(snapPath);
const lastSaved = guest.heartbeats().at(-1)![0]!;
await vmm.close();

// ---- restores ------------------------------------------------------------------
interface RestoreRun {
  readyMs: number;
  resumedMs: number;
  firstHeartbeatMs: number;
  firstHeartbeatSeq: number;
  /** Pages dirtied per second over the first heartbeat intervals after the restore. */
  pagesDirtiedPerSecAfter: number;
  verify: string;
  /** prefetch-all: ms from the start of the restore until every stored page was in. */
  streamDoneMs?: number;
  timings: Vmm['restoreTimings'];
  atFirstHeartbeat?: Pick<LazyMemoryReport['metrics'], 'faults' | 'pagesCopied' | 'zeroPages' | 'prefetchedPages'>;
  atEnd?: LazyMemoryReport;
}

async function restoreOnce(mode: Mode): Promise<RestoreRun> {
  const out = new Console();
  const started = performance.now();
  const r = await restoreVm(await openVmSnapshotSource(snapPath), { console: out.sink, lazy: MODES[mode] });
  const readyMs = performance.now() - started;
  await r.resume();
  const resumedMs = performance.now() - started;
  let streamDoneMs: number | undefined;
  const streamed = mode === 'lazy-prefetch-all'
    ? (async () => {
        while ((r.lazyMemoryReport()?.storedPagesPending ?? 0) > 0) await new Promise((res) => setTimeout(res, 1));
        streamDoneMs = performance.now() - started;
      })()
    : Promise.resolve();
  await out.wait(/hb \d+ [^\n]*\n/);
  const firstHeartbeatMs = performance.now() - started;
  const first = r.lazyMemoryReport()?.metrics;
  await streamed;
  await out.wait(/hb \d+ [^\n]*\n[^]*hb \d+ [^\n]*\n[^]*hb \d+ [^\n]*\n/);
  const after = out.heartbeats();
  const rate = (after[2]![1]! - after[0]![1]!) / ((after[2]![2]! - after[0]![2]!) / 100);
  await r.sendInput(Buffer.from('q'));
  await r.exited;
  await r.close();
  const run: RestoreRun = {
    readyMs: round(readyMs),
    resumedMs: round(resumedMs),
    firstHeartbeatMs: round(firstHeartbeatMs),
    firstHeartbeatSeq: after[0]![0]!,
    pagesDirtiedPerSecAfter: Math.round(rate),
    verify: out.text.match(/verify [^\n]*/)?.[0] ?? 'no verify line',
    timings: r.restoreTimings,
  };
  if (streamDoneMs !== undefined) run.streamDoneMs = round(streamDoneMs);
  if (first) run.atFirstHeartbeat = { faults: first.faults, pagesCopied: first.pagesCopied, zeroPages: first.zeroPages, prefetchedPages: first.prefetchedPages };
  const end = r.lazyMemoryReport();
  if (end) run.atEnd = end;
  return run;
}

const median = (xs: number[]): number => {
  const s = [...xs].sort((p, q) => p - q);
  return s[Math.floor(s.length / 2)]!;
};

const modes = values.modes!.split(',') as Mode[];
const restores: Record<string, unknown> = {};
for (const mode of modes) {
  if (!(mode in MODES)) throw new Error(`unknown mode ${mode}; modes: ${Object.keys(MODES).join(', ')}`);
  const all: RestoreRun[] = [];
  for (let i = 0; i < runs; i++) all.push(await restoreOnce(mode));
  const pick = (f: (x: RestoreRun) => number): number => median(all.map(f));
  const lazyEnd = all.map((x) => x.atEnd).filter((x): x is LazyMemoryReport => x !== undefined);
  restores[mode] = {
    runs: all.length,
    readyMs: pick((x) => x.readyMs),
    resumedMs: pick((x) => x.resumedMs),
    resumedMsAll: all.map((x) => x.resumedMs),
    firstHeartbeatMs: pick((x) => x.firstHeartbeatMs),
    heartbeatContinues: all.every((x) => x.firstHeartbeatSeq === lastSaved + 1),
    pagesDirtiedPerSecAfterRestore: pick((x) => x.pagesDirtiedPerSecAfter),
    verify: [...new Set(all.map((x) => x.verify))],
    ...(mode === 'lazy-prefetch-all' ? { streamDoneMs: pick((x) => x.streamDoneMs ?? NaN) } : {}),
    timings: all[Math.floor(all.length / 2)]!.timings,
    ...(lazyEnd.length > 0
      ? {
          atFirstHeartbeat: all[Math.floor(all.length / 2)]!.atFirstHeartbeat,
          atVerifyDone: {
            faults: median(lazyEnd.map((x) => x.metrics.faults)),
            pagesCopied: median(lazyEnd.map((x) => x.metrics.pagesCopied)),
            zeroPages: median(lazyEnd.map((x) => x.metrics.zeroPages)),
            prefetchedPages: median(lazyEnd.map((x) => x.metrics.prefetchedPages)),
            pagesNeverFilled: median(lazyEnd.map((x) => x.pages.missing)),
            guestPages: lazyEnd[0]!.guestPages,
            snapshotDataPages: lazyEnd[0]!.snapshotDataPages,
            faultLatencyMicros: { p50: median(lazyEnd.map((x) => x.metrics.latencyMicros.p50)), p99: median(lazyEnd.map((x) => x.metrics.latencyMicros.p99)) },
            verifyMs: lazyEnd[0]!.verifyMs,
          },
        }
      : {}),
  };
}

console.log(JSON.stringify({
  memMiB, regionMiB, buildMs: round(built), firstConsoleLineMs: round(firstLine), fillDoneMs: round(filled), fillPages: regionMiB * 256,
  pagesDirtiedPerSec: Math.round(pagesPerSec),
  snapshot: { fileSizeBytes: snap.fileSizeBytes, dataPages: snap.dataPageCount, zeroPages: snap.zeroPageCount, metadataBytes: snap.metadataLengthBytes, pauseMs: round(snap.pauseMs, 2), saveStateMs: round(snap.saveStateMs), totalMs: round(snap.durationMs) },
  lastHeartbeatSaved: lastSaved,
  restores,
}, null, 1));
if (!values.keep) rmSync(snapPath, { force: true });
