// 3. Working-set record and replay (REAP, ASPLOS'21): one run records the
// pages a workload demands, in order; a later restore streams that set in the
// background while demand faults keep priority. Compared: the time to touch
// the working set with and without replay.
import type { HandlerSpec } from '../handlers/spec.js';
import { firstTouchOrder, patternOrder } from '../patterns.js';
import { runInterleaved, runVariant, type ToucherSpec, type Variant } from '../runner.js';
import { checkTarget, median, pairedRatio } from '../stats.js';
import { fmt, fmtInt, fmtRatio, type Table } from '../table.js';
import { RESTORE_PREFETCH } from './restore.js';
import { perRound, toJsonRuns, totalMs, type Section } from './section.js';

export const workingSetSection: Section = async (ctx, options) => {
  const pageCount = ctx.image.sizeBytes / 4096;
  const order = patternOrder('working-set', pageCount, options.seed);
  const expected = firstTouchOrder(order);
  const toucher: ToucherSpec = { memory: 'uffd', access: 'load', threads: 1, latency: false };
  const prefetch = RESTORE_PREFETCH;

  // Record twice: without read-ahead every touched page faults and is
  // recorded; with it, pages brought in by read-ahead never fault, so the
  // recording misses them.
  const record = async (withReadAhead: boolean): Promise<Uint32Array> => {
    const run = await runVariant(ctx, {
      id: `record-${withReadAhead ? 'readahead' : 'plain'}`,
      label: 'record',
      handler: { kind: 'pager', source: 'snapshot', prefetch: withReadAhead ? prefetch : false, recordWorkingSet: true },
      toucher,
      placement: 'unpinned',
      order,
    });
    if (run.handler.kind !== 'pager' || !run.handler.workingSet) throw new Error('the recording run returned no working set');
    return run.handler.workingSet;
  };
  const recorded = await record(false);
  const recordedWithReadAhead = await record(true);
  if (recorded.length !== expected.length || recorded.some((page, i) => page !== expected[i])) {
    throw new Error(`the pager recorded ${recorded.length} pages, not the ${expected.length} touched, in order`);
  }

  const defs: { key: string; label: string; spec: HandlerSpec; replayed: number }[] = [
    { key: 'demand', label: 'pager, demand faults + read-ahead', spec: { kind: 'pager', source: 'snapshot', prefetch }, replayed: 0 },
    { key: 'demand-no-readahead', label: 'pager, demand faults only', spec: { kind: 'pager', source: 'snapshot', prefetch: false }, replayed: 0 },
    { key: 'replay', label: 'pager, replay of the recorded set + demand', spec: { kind: 'pager', source: 'snapshot', prefetch, replay: recorded }, replayed: recorded.length },
    {
      key: 'replay-partial',
      label: 'pager, replay of a set recorded with read-ahead on',
      spec: { kind: 'pager', source: 'snapshot', prefetch, replay: recordedWithReadAhead },
      replayed: recordedWithReadAhead.length,
    },
    { key: 'c-demand', label: 'C reference, demand faults + read-ahead', spec: { kind: 'c', source: 'raw-file', prefetch, spinUs: 0 }, replayed: 0 },
    {
      key: 'replay-sync',
      label: 'pager, replay, bench: pread on its thread, CRC-checked',
      spec: { kind: 'pager', source: 'sync-snapshot', prefetch, replay: recorded },
      replayed: recorded.length,
    },
  ];
  const variants: Variant[] = defs.map((d) => ({ id: d.key, label: d.label, handler: d.spec, toucher, placement: 'unpinned', order }));
  const results = await runInterleaved(ctx, 'working-set', variants, options.rounds);

  const ms = (key: string): number[] => perRound(results, key, totalMs);
  const rows: string[][] = [];
  const summary: Record<string, unknown>[] = [];
  for (const d of defs) {
    const speedup = pairedRatio(ms('demand'), ms(d.key));
    const faults = median(perRound(results, d.key, (r) => (r.handler.kind === 'pager' ? r.handler.metrics.faults : r.handler.kind === 'c' ? r.handler.stats.faults : 0)));
    summary.push({ variant: d.key, label: d.label, pagesReplayed: d.replayed, ms: median(ms(d.key)), faults, speedupVsDemand: speedup });
    rows.push([d.label, fmtInt(d.replayed), fmt(median(ms(d.key))), fmtInt(faults), fmtRatio(speedup)]);
  }
  const table: Table = {
    title: `3. Working set: ${fmtInt(order.length)} pages (1/8 of the image, runs of 1-8 pages), snapshot source (median of ${options.rounds} rounds)`,
    columns: ['variant', 'pages replayed', 'time to touch ms', 'faults', 'speed / demand'],
    numeric: [false, true, true, true, true],
    rows,
    notes: [
      `Recorded without read-ahead: ${fmtInt(recorded.length)} pages, the whole set in order. With read-ahead on: ${fmtInt(recordedWithReadAhead.length)} pages ` +
        `(${fmt((100 * recordedWithReadAhead.length) / recorded.length, 0)}%): pages that read-ahead brought in never fault, so they are never recorded.`,
      'Replay starts when the restore starts (before the first touch), as after a snapshot restore.',
    ],
  };
  const targets = [checkTarget('working set: time to touch, demand faulting / replay', pairedRatio(ms('demand'), ms('replay')), 'at-least', 3)];
  return { name: 'working-set', tables: [table], targets, summary, runs: toJsonRuns(results) };
};
