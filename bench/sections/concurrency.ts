// 4. Concurrency: two faulting threads and a source with a fixed latency per
// read (the delay server). A handler that keeps fetches in flight finishes in
// about (faults per thread) x latency; one that fetches one page at a time
// (the naive C handler) in (all faults) x latency.
import type { HandlerSpec } from '../handlers/spec.js';
import { threadSlicesOrder } from '../patterns.js';
import { runInterleaved, type Variant } from '../runner.js';
import { checkTarget, median, pairedRatio } from '../stats.js';
import { fmt, fmtInt, fmtRatio, type Table } from '../table.js';
import { perRound, sourceReads, toJsonRuns, totalMs, type Section } from './section.js';

export const concurrencySection: Section = async (ctx, options) => {
  const pageCount = ctx.image.sizeBytes / 4096;
  const perThread = Math.min(options.concurrencyFaults, Math.floor(pageCount / 2));
  const defs: { key: string; label: string; threads: number; spec: HandlerSpec }[] = [
    { key: 'pager-1', label: 'pager', threads: 1, spec: { kind: 'pager', source: 'delay', prefetch: false } },
    { key: 'pager-2', label: 'pager', threads: 2, spec: { kind: 'pager', source: 'delay', prefetch: false } },
    { key: 'c-1', label: 'naive C (one fetch at a time)', threads: 1, spec: { kind: 'c', source: 'delay', prefetch: false, spinUs: 0 } },
    { key: 'c-2', label: 'naive C (one fetch at a time)', threads: 2, spec: { kind: 'c', source: 'delay', prefetch: false, spinUs: 0 } },
  ];
  const variants: Variant[] = defs.map((d) => ({
    id: d.key,
    label: `${d.label}, ${d.threads} thread(s)`,
    handler: d.spec,
    toucher: { memory: 'uffd', access: 'load', threads: d.threads, latency: false },
    placement: 'unpinned',
    // Thread t of N touches perThread random pages of its own 1/2 of the memory.
    order: threadSlicesOrder(pageCount, 2, perThread, options.seed).subarray(0, d.threads * perThread),
  }));
  const results = await runInterleaved(ctx, 'concurrency', variants, options.rounds);

  const ms = (key: string): number[] => perRound(results, key, totalMs);
  const rows: string[][] = [];
  const summary: Record<string, unknown>[] = [];
  for (const d of defs) {
    const fetches = median(perRound(results, d.key, sourceReads));
    const sumMs = (fetches * options.delayUs) / 1000;
    const overlap = median(perRound(results, d.key, (r) => (sourceReads(r) * options.delayUs) / 1000 / totalMs(r)));
    const peak = median(perRound(results, d.key, (r) => (r.handler.kind === 'pager' ? r.handler.metrics.inFlightPeak : 1)));
    const vsOne = pairedRatio(ms(d.key), ms(d.key.replace(/-\d$/, '-1')));
    summary.push({ variant: d.key, label: d.label, threads: d.threads, fetches, sumOfLatenciesMs: sumMs, ms: median(ms(d.key)), overlap, inFlightPeak: peak, timeVsOneThread: vsOne });
    rows.push([d.label, String(d.threads), fmtInt(fetches), fmt(sumMs), fmt(median(ms(d.key))), fmt(overlap, 2), fmtInt(peak), fmtRatio(vsOne)]);
  }
  const table: Table = {
    title: `4. Concurrency: ${fmtInt(perThread)} random faults per thread, source latency ${options.delayUs} us per read, no read-ahead (median of ${options.rounds} rounds)`,
    columns: ['handler', 'threads', 'fetches', 'sum of latencies ms', 'total ms', 'overlap', 'in flight peak', 'time / 1 thread'],
    numeric: [false, true, true, true, true, true, true, true],
    rows,
    notes: [
      'overlap = sum of fetch latencies / total time: the fetches in flight on average (at most the number of faulting threads here).',
      'time / 1 thread: with 2 threads doing twice the faults, ~1.0 when fetches overlap, ~2.0 when they queue.',
    ],
  };
  const targets = [checkTarget('concurrency: pager time with 2 faulting threads / with 1 (2x the faults; their sum would be 2.0)', pairedRatio(ms('pager-2'), ms('pager-1')), 'at-most', 1.2)];
  return { name: 'concurrency', tables: [table], targets, summary, runs: toJsonRuns(results) };
};
