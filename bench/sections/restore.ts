// 2. Lazy restore throughput: the snapshot restored on demand with read-ahead,
// by the pager and by the C handler with the same read-ahead, against the
// kernel's own demand paging of the same bytes (MAP_PRIVATE of the file in the
// page cache, loads and stores) and against reading it all first.
import type { PrefetchOptions } from '../../src/pager/index.js';
import type { HandlerSpec } from '../handlers/spec.js';
import { patternOrder, type PatternName } from '../patterns.js';
import { runInterleaved, type ToucherSpec, type Variant } from '../runner.js';
import { checkTarget, median, pairedRatio, type TargetResult } from '../stats.js';
import { fmt, fmtInt, fmtRatio, type Table } from '../table.js';
import { perRound, toJsonRuns, totalMs, type Section } from './section.js';

/** The pager's default read-ahead (src/pager/readahead.ts), given to every handler here. */
export const RESTORE_PREFETCH: PrefetchOptions = { initialPages: 1, maxPages: 64, aheadWindows: 16 };
/** The same async read-ahead for the C and lean handlers: the pager's windows ahead of a stream at its full window. */
export const AHEAD_PAGES = RESTORE_PREFETCH.aheadWindows! * RESTORE_PREFETCH.maxPages!;

export interface RestoreVariant {
  /** Only in these patterns (async read-ahead only changes sequential sweeps). */
  patterns?: PatternName[];
  key: string;
  handler: string;
  source: string;
  spec: HandlerSpec;
  toucher: Partial<ToucherSpec>;
}

export function restoreVariants(): RestoreVariant[] {
  const prefetch = RESTORE_PREFETCH;
  return [
    { key: 'pager-snapshot', handler: 'pager', source: 'snapshot file, CRC-checked', spec: { kind: 'pager', source: 'snapshot', prefetch }, toucher: {} },
    { key: 'pager-raw', handler: 'pager', source: 'raw file (RawFileSource)', spec: { kind: 'pager', source: 'raw-file', prefetch }, toucher: {} },
    { key: 'pager-sync-snapshot', handler: 'pager', source: 'bench: pread on its thread, CRC-checked', spec: { kind: 'pager', source: 'sync-snapshot', prefetch }, toucher: {} },
    { key: 'pager-sync-raw', handler: 'pager', source: 'bench: pread on its thread', spec: { kind: 'pager', source: 'sync-raw', prefetch }, toucher: {} },
    { key: 'c-pread', handler: 'C reference', source: 'raw file (pread)', spec: { kind: 'c', source: 'raw-file', prefetch, spinUs: 0 }, toucher: {} },
    { key: 'lean-raw', handler: 'lean JS prototype', source: 'raw file (pread), poll', spec: { kind: 'lean', source: 'raw-file', prefetch, wait: 'poll', spinUs: 0 }, toucher: {} },
    {
      key: 'c-pread-ahead',
      patterns: ['sequential'],
      handler: 'C reference',
      source: `pread + async read-ahead ${AHEAD_PAGES} pages`,
      spec: { kind: 'c', source: 'raw-file', prefetch, spinUs: 0, aheadPages: AHEAD_PAGES },
      toucher: {},
    },
    {
      key: 'c-mmap-ahead',
      patterns: ['sequential'],
      handler: 'C reference',
      source: `mmap of the file (one copy) + async read-ahead ${AHEAD_PAGES}`,
      spec: { kind: 'c', source: 'mmap', prefetch, spinUs: 0, aheadPages: AHEAD_PAGES },
      toucher: {},
    },
    {
      key: 'lean-raw-ahead',
      patterns: ['sequential'],
      handler: 'lean JS prototype',
      source: `pread + async read-ahead ${AHEAD_PAGES} pages`,
      spec: { kind: 'lean', source: 'raw-file', prefetch, wait: 'poll', spinUs: 0, aheadPages: AHEAD_PAGES },
      toucher: {},
    },
    { key: 'kernel-load', handler: 'kernel MAP_PRIVATE', source: 'page cache, loads', spec: { kind: 'none' }, toucher: { memory: 'private', access: 'load' } },
    { key: 'kernel-store', handler: 'kernel MAP_PRIVATE', source: 'page cache, stores', spec: { kind: 'none' }, toucher: { memory: 'private', access: 'store' } },
    { key: 'eager', handler: 'eager read()', source: 'whole file, then touch', spec: { kind: 'none' }, toucher: { memory: 'eager' } },
  ];
}

export const restoreSection: Section = async (ctx, options) => {
  const pageCount = ctx.image.sizeBytes / 4096;
  const base: ToucherSpec = { memory: 'uffd', access: 'load', threads: 1, latency: false };
  const defs = restoreVariants();
  const patterns: PatternName[] = ['sequential', 'random', 'working-set'];
  const variants: Variant[] = [];
  const touched = new Map<PatternName, number>();
  for (const pattern of patterns) {
    const order = patternOrder(pattern, pageCount, options.seed);
    touched.set(pattern, order.length);
    for (const d of defs.filter((v) => !v.patterns || v.patterns.includes(pattern))) {
      variants.push({ id: `${pattern}/${d.key}`, label: `${d.handler}, ${d.source}`, handler: d.spec, toucher: { ...base, ...d.toucher }, placement: 'unpinned', order });
    }
  }
  const results = await runInterleaved(ctx, 'restore', variants, options.rounds);

  const rows: string[][] = [];
  const summary: Record<string, unknown>[] = [];
  const targets: TargetResult[] = [];
  for (const pattern of patterns) {
    const ms = (key: string): number[] => perRound(results, `${pattern}/${key}`, totalMs);
    const mib = (touched.get(pattern)! * 4096) / (1 << 20);
    for (const d of defs.filter((v) => !v.patterns || v.patterns.includes(pattern))) {
      const vsC = pairedRatio(ms('c-pread'), ms(d.key));
      const vsKernelStores = pairedRatio(ms('kernel-store'), ms(d.key));
      const row = { pattern, variant: d.key, handler: d.handler, source: d.source, ms: median(ms(d.key)), pagesTouched: touched.get(pattern), speedVsC: vsC, speedVsKernelStores: vsKernelStores };
      summary.push(row);
      rows.push([pattern, d.handler, d.source, fmt(row.ms), fmtInt(mib / (row.ms / 1000)), fmtRatio(vsC), fmtRatio(vsKernelStores)]);
    }
    if (pattern === 'sequential') {
      for (const key of ['pager-snapshot', 'pager-raw']) {
        const d = defs.find((v) => v.key === key)!;
        // The pager reads a sequential stream AHEAD_PAGES ahead (PrefetchOptions.aheadWindows): so does c-pread-ahead.
        targets.push(checkTarget(`sequential restore, pager (${d.source}) speed / C with the same read-ahead`, pairedRatio(ms('c-pread-ahead'), ms(key)), 'at-least', 0.9));
        targets.push(checkTarget(`sequential restore, pager (${d.source}) speed / kernel MAP_PRIVATE stores`, pairedRatio(ms('kernel-store'), ms(key)), 'at-least', 1.0));
      }
    }
  }
  const table: Table = {
    title: `2. Lazy restore of a ${fmtInt(ctx.image.sizeBytes / (1 << 20))} MiB snapshot, read-ahead ${RESTORE_PREFETCH.initialPages}..${RESTORE_PREFETCH.maxPages} pages (median of ${options.rounds} rounds)`,
    columns: ['pattern', 'handler', 'source', 'time ms', 'MiB/s', 'speed / C', 'speed / kernel stores'],
    numeric: [false, false, false, true, true, true, true],
    rows,
    notes: [
      'Time is the toucher touching every page of the pattern once (eager: the read included). speed / X = X time / this time, round by round.',
      'random: every page once in random order; working-set: 1/8 of the pages, runs of 1-8 pages in random order.',
      'The file is in the page cache (it was just written and read). Threads are not pinned.',
      '"bench:" sources and the lean JS prototype are bench-only (bench/handlers/): what a synchronous source and a blocking wait would give.',
    ],
  };
  return { name: 'restore', tables: [table], targets, summary, runs: toJsonRuns(results) };
};
