// 9. The Firecracker path: what a Firecracker host runs. The toucher plays
// Firecracker restoring a snapshot with a UFFD backend: it makes its own
// userfaultfd, registers its anonymous memory, sends the region list and the
// uffd over a Unix socket with Firecracker's handshake, and stores to every
// page (the guest writing its memory), checking each page's tag. Served by the
// real `userfault serve` in a process of its own (a raw memory file, and the
// CRC-checked snapshot), against the same toucher on a MAP_PRIVATE mapping of
// the file (Firecracker's File backend: the kernel's own paging) and against
// the bench's C handler given the same handshake and read-ahead.
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { BenchOptions } from '../args.js';
import type { HandlerSpec, ServeMemory } from '../handlers/spec.js';
import { BenchPageServer } from '../page-server.js';
import { patternOrder, type PatternName } from '../patterns.js';
import { runInterleaved, serveKey, type BenchContext, type RunResult, type ToucherSpec, type Variant } from '../runner.js';
import { BenchServe } from '../serve-process.js';
import { checkTarget, median, pairedRatio, type TargetResult } from '../stats.js';
import { fmt, fmtInt, fmtRatio, type Table } from '../table.js';
import { RESTORE_PREFETCH } from './restore.js';
import { p99Us, perRound, sourceReads, toJsonRuns, totalMs, type Section } from './section.js';

interface FirecrackerVariant {
  key: string;
  handler: string;
  memory: string;
  spec: HandlerSpec;
  toucher: Partial<ToucherSpec>;
}

/** The section's targets (issue 22), as ratios taken round by round. */
export const FIRECRACKER_TARGETS = {
  snapshotVsKernel: 1.0,
  rawVsKernel: 1.3,
  randomVsC: 0.9,
};

interface FirecrackerPattern {
  name: string;
  order: PatternName;
  access: 'load' | 'store';
  /** Only these variants (by key); default every one. */
  only?: readonly string[];
}

/** The variants of the loads pattern (the rest measure stores only). */
const LOAD_VARIANTS = ['serve-raw', 'kernel', 'c-pread', 'c-memfd', 'c-memfd-filled', 'pager-cache', 'pager-cache-filled', 'serve-cache'] as const;

function defsOf(defs: readonly FirecrackerVariant[], pattern: FirecrackerPattern): FirecrackerVariant[] {
  return defs.filter((d) => !pattern.only || pattern.only.includes(d.key));
}

function variants(rawPath: string, baseline: boolean): FirecrackerVariant[] {
  const prefetch = RESTORE_PREFETCH;
  const firecracker: Partial<ToucherSpec> = { memory: 'uffd', handshake: 'firecracker' };
  const baselineRows: FirecrackerVariant[] = !baseline ? [] : [
    { key: 'serve-raw-baseline', handler: 'userfault serve (baseline build)', memory: 'raw memory file', spec: { kind: 'serve', source: 'raw', baseline }, toucher: firecracker },
    { key: 'serve-snapshot-baseline', handler: 'userfault serve (baseline build)', memory: 'snapshot, CRC-checked', spec: { kind: 'serve', source: 'snapshot', baseline }, toucher: firecracker },
  ];
  return [
    ...baselineRows,
    { key: 'serve-raw', handler: 'userfault serve', memory: 'raw memory file', spec: { kind: 'serve', source: 'raw' }, toucher: firecracker },
    { key: 'serve-snapshot', handler: 'userfault serve', memory: 'snapshot, CRC-checked', spec: { kind: 'serve', source: 'snapshot' }, toucher: firecracker },
    { key: 'serve-remote', handler: 'userfault serve --from tcp://', memory: 'snapshot, from a page server (loopback)', spec: { kind: 'serve', source: 'remote' }, toucher: firecracker },
    // What the other sections measure: the Pager in a worker thread of the bench, the bench's own handover (no JSON, an answer awaited).
    { key: 'pager-raw', handler: 'pager in the bench (worker)', memory: 'raw (RawFileSource)', spec: { kind: 'pager', source: 'raw-file', prefetch }, toucher: { memory: 'uffd' } },
    { key: 'kernel', handler: 'kernel MAP_PRIVATE (File backend)', memory: 'raw memory file', spec: { kind: 'none' }, toucher: { memory: 'private', file: { path: rawPath, offset: 0 } } },
    { key: 'c-pread', handler: 'C reference', memory: 'raw (pread)', spec: { kind: 'c', source: 'raw-file', prefetch, spinUs: 0 }, toucher: firecracker },
    { key: 'c-mmap', handler: 'C reference', memory: 'raw (mmap: one copy)', spec: { kind: 'c', source: 'mmap', prefetch, spinUs: 0 }, toucher: firecracker },
    // Zero-copy restore: MINOR faults on a MAP_PRIVATE mapping of the handler's memfd, answered with UFFDIO_CONTINUE (not Firecracker's handshake: the handler hands the client its memory first).
    { key: 'c-memfd', handler: 'C, memfd + CONTINUE', memory: 'raw, filled as faults come', spec: { kind: 'c', source: 'memfd', prefetch, spinUs: 0 }, toucher: { memory: 'memfd-minor' } },
    { key: 'c-memfd-filled', handler: 'C, memfd + CONTINUE', memory: 'raw, filled before (a later restore)', spec: { kind: 'c', source: 'memfd-filled', prefetch, spinUs: 0 }, toucher: { memory: 'memfd-minor' } },
    // The same with the product's path (LazyMemoryOptions.pageCache): the Pager over a SharedPageCache, from the CRC-checked snapshot.
    { key: 'pager-cache', handler: 'pager (worker), shared page cache', memory: 'snapshot, filled as faults come', spec: { kind: 'pager', source: 'snapshot', prefetch, pageCache: 'empty' }, toucher: { memory: 'memfd-minor' } },
    { key: 'pager-cache-filled', handler: 'pager (worker), shared page cache', memory: 'snapshot, filled before (a later restore)', spec: { kind: 'pager', source: 'snapshot', prefetch, pageCache: 'filled' }, toucher: { memory: 'memfd-minor' } },
    // The service: one serve --page-cache for the section, so its cache is filled by the first round's run and later rounds are later restores.
    { key: 'serve-cache', handler: 'userfault serve --page-cache', memory: 'snapshot, filled by round 1', spec: { kind: 'serve', source: 'snapshot-cache' }, toucher: { memory: 'memfd-minor', handshake: 'page-cache' } },
  ];
}

export const firecrackerSection: Section = async (ctx, options) => {
  const pageCount = ctx.image.sizeBytes / 4096;
  // Firecracker's memory file is the guest's memory byte for byte: the image, raw.
  const rawPath = join(ctx.workDir, 'memory.raw');
  writeFileSync(rawPath, new Uint8Array(ctx.imageMemory));
  const baseline = options.serveBaseline !== undefined;
  const defs = variants(rawPath, baseline);
  // Stores, sequential and random (a guest writing its memory); and loads in order, where a zero-copy install can win (a read maps the shared page).
  const patterns: FirecrackerPattern[] = [
    { name: 'sequential', order: 'sequential', access: 'store' },
    { name: 'random', order: 'random', access: 'store' },
    { name: 'sequential loads', order: 'sequential', access: 'load', only: LOAD_VARIANTS },
  ];
  // Every touch timed (~50 ns each, a few % of the kernel's time per page): the first one shows a handler's start-up.
  const runs: Variant[] = [];
  for (const pattern of patterns) {
    const order = patternOrder(pattern.order, pageCount, options.seed);
    const base: ToucherSpec = { memory: 'uffd', access: pattern.access, threads: 1, latency: true };
    for (const d of defsOf(defs, pattern)) {
      runs.push({ id: `${pattern.name}/${d.key}`, label: `${d.handler}, ${d.memory}`, handler: d.spec, toucher: { ...base, ...d.toucher }, placement: 'unpinned', order });
    }
  }

  const results = await withServe(ctx, rawPath, options, () => runInterleaved(ctx, 'firecracker', runs, options.rounds));

  const rows: string[][] = [];
  const summary: Record<string, unknown>[] = [];
  const targets: TargetResult[] = [];
  const mib = ctx.image.sizeBytes / (1 << 20);
  for (const p of patterns) {
    const pattern = p.name;
    const ms = (key: string): number[] => perRound(results, `${pattern}/${key}`, totalMs);
    for (const d of defsOf(defs, p)) {
      const id = `${pattern}/${d.key}`;
      const vsKernel = pairedRatio(ms('kernel'), ms(d.key));
      const vsC = pairedRatio(ms('c-pread'), ms(d.key));
      const cpuUs = median(perRound(results, id, (r) => handlerCpuUsPerPage(r, pageCount)));
      const reads = median(perRound(results, id, sourceReads));
      const firstUs = median(perRound(results, id, (r) => (r.toucher.latencyNs?.first ?? Number.NaN) / 1000));
      const p99 = median(perRound(results, id, p99Us));
      // serve against the same serve from the baseline build (--serve-baseline), round by round.
      const hasBaseline = baseline && d.spec.kind === 'serve' && !d.spec.baseline && results.has(`${pattern}/${d.key}-baseline`);
      const vsBaseline = hasBaseline ? pairedRatio(ms(`${d.key}-baseline`), ms(d.key)) : undefined;
      const row = { pattern, variant: d.key, handler: d.handler, memory: d.memory, ms: median(ms(d.key)), speedVsKernel: vsKernel, speedVsC: vsC, speedVsBaseline: vsBaseline, firstTouchUs: firstUs, p99Us: p99, handlerCpuUsPerPage: cpuUs, sourceReads: reads };
      summary.push(row);
      rows.push([
        pattern, d.handler, d.memory, fmt(row.ms), fmtInt(mib / (row.ms / 1000)), fmtRatio(vsKernel), fmtRatio(vsC), ...(baseline ? [vsBaseline ? fmtRatio(vsBaseline) : '-'] : []),
        fmtInt(firstUs), fmtInt(p99), Number.isNaN(cpuUs) ? '-' : fmt(cpuUs, 2), d.spec.kind === 'none' ? '-' : fmtInt(reads),
      ]);
    }
  }
  const seq = (key: string): number[] => perRound(results, `sequential/${key}`, totalMs);
  const rnd = (key: string): number[] => perRound(results, `random/${key}`, totalMs);
  targets.push(checkTarget('firecracker: serve, CRC-checked snapshot, sequential stores, speed / kernel MAP_PRIVATE', pairedRatio(seq('kernel'), seq('serve-snapshot')), 'at-least', FIRECRACKER_TARGETS.snapshotVsKernel));
  targets.push(checkTarget('firecracker: serve, raw memory file, sequential stores, speed / kernel MAP_PRIVATE', pairedRatio(seq('kernel'), seq('serve-raw')), 'at-least', FIRECRACKER_TARGETS.rawVsKernel));
  // The wire-speed issue's: the same restore through serve --from a page server against serve from the snapshot file.
  targets.push(checkTarget('firecracker: serve --from tcp:// (a page server), sequential stores, speed / serve from the local snapshot file (floor 0.6x)', pairedRatio(seq('serve-snapshot'), seq('serve-remote')), 'at-least', 0.8));
  targets.push(checkTarget('firecracker: serve, raw memory file, random stores, speed / C handler (pread, same read-ahead)', pairedRatio(rnd('c-pread'), rnd('serve-raw')), 'at-least', FIRECRACKER_TARGETS.randomVsC));

  const table: Table = {
    title: `9. The Firecracker path: a ${fmtInt(mib)} MiB guest's memory restored through \`userfault serve\` (Firecracker's handshake), every page stored to (or loaded) once (median of ${options.rounds} rounds)`,
    columns: ['pattern', 'handler', 'memory file', 'time ms', 'MiB/s', 'speed / kernel', 'speed / C', ...(baseline ? ['speed / baseline'] : []), 'first touch us', 'p99 us', 'handler CPU us/page', 'source reads'],
    numeric: [false, false, false, true, true, true, true, ...(baseline ? [true] : []), true, true, true, true],
    rows,
    notes: [
      'The client (bench/c/toucher.c --handshake firecracker) makes its uffd, registers its memory, sends the JSON regions and the uffd in one message and starts storing at once: serve\'s handshake, probe and pager start are in the time.',
      `serve: one process per memory file for the section (a service many restores connect to), read-ahead ${RESTORE_PREFETCH.initialPages}..${RESTORE_PREFETCH.maxPages} (its default); the C handler gets the same read-ahead. kernel: MAP_PRIVATE of the raw file, stores copy page-cache pages.`,
      'pager in the bench: the Pager in a worker thread of the bench with the bench\'s own handover, as sections 1-3 run it: what differs from serve is the process, the handshake and the start-up.',
      'first store: the first touch\'s latency (serve\'s handshake, probe and pager start are in it); p99: of every touch.',
      'C, memfd + CONTINUE: the handler hands the client a memfd it maps MAP_PRIVATE (registered MISSING and MINOR); each window is put in the memfd\'s page cache where it is not yet (one copy, counted) and mapped with UFFDIO_CONTINUE (no copy); a store then copies the page (copy-on-write), and the run fails if any store reached the memfd. "filled before": every page was in it already (a later restore of a snapshot an earlier one filled).',
      ...(baseline ? [`baseline build: ${options.serveBaseline} (speed / baseline: serve of that build over this one, round by round).`] : []),
      'speed / X = X time / this time, round by round: median (min-max). handler CPU: serve\'s main thread (its event loop) or the C handler\'s thread, per page of the guest. The files are in the page cache. Threads are not pinned.',
    ],
  };
  return { name: 'firecracker', tables: [table], targets, summary, runs: toJsonRuns(results) };
};

/** Start serve on the raw file and on the snapshot for the section (and from the baseline build), and stop them after it (profiles are written on stop). */
async function withServe<T>(ctx: BenchContext, rawPath: string, options: BenchOptions, body: () => Promise<T>): Promise<T> {
  const started: BenchServe[] = [];
  let pageServer: BenchPageServer | undefined;
  const profileDir = options.serveProfileDir;
  const nodeArgs = (name: string): string[] => {
    if (!profileDir) return [];
    mkdirSync(profileDir, { recursive: true });
    return ['--cpu-prof', `--cpu-prof-dir=${profileDir}`, `--cpu-prof-name=serve-${name}-${process.pid}.cpuprofile`];
  };
  try {
    ctx.serve = new Map();
    // The remote variant's page server: `userfault pages serve` on the snapshot, a process of its own.
    pageServer = await BenchPageServer.start(ctx.image.path);
    for (const baseline of options.serveBaseline === undefined ? [false] : [false, true]) {
      for (const source of (baseline ? ['raw', 'snapshot'] : ['raw', 'snapshot', 'remote', 'snapshot-cache']) as ServeMemory[]) {
        const key = serveKey(source, baseline);
        const memory = source === 'raw' ? rawPath : source === 'remote' ? pageServer.url : ctx.image.path;
        const server = await BenchServe.start(memory, join(ctx.workDir, `serve-${key}.sock`), {
          snapshot: source === 'snapshot' || source === 'snapshot-cache',
          pageCache: source === 'snapshot-cache',
          from: source === 'remote',
          nodeArgs: nodeArgs(key),
          distDir: baseline ? options.serveBaseline : undefined,
        });
        started.push(server);
        ctx.serve.set(key, server);
      }
    }
    const result = await body();
    await Promise.all(started.splice(0).map((s) => s.stop()));
    await pageServer.stop();
    pageServer = undefined;
    if (profileDir) ctx.log(`firecracker: serve's CPU profiles are in ${profileDir}`);
    return result;
  } finally {
    for (const s of started) s.kill();
    pageServer?.kill();
    ctx.serve = undefined;
  }
}

function handlerCpuUsPerPage(run: RunResult, pageCount: number): number {
  const h = run.handler;
  return h.kind === 'none' ? Number.NaN : h.cpu.runNs / 1000 / pageCount;
}
