// 1. Per-fault cost: 4 KiB faults resolved one by one (no read-ahead) from an
// in-memory image, the pager against the C reference handler, for each way of
// waiting and each placement of the two threads.
import type { HandlerSpec, Placement } from '../handlers/spec.js';
import { patternOrder, type PatternName } from '../patterns.js';
import { runInterleaved, type ToucherSpec, type Variant } from '../runner.js';
import { checkTarget, median, pairedRatio, type TargetResult } from '../stats.js';
import { fmt, fmtInt, fmtRatio, type Table } from '../table.js';
import { faultsPerSecond, handlerCpuPerFault, p50Us, p99Us, perRound, toJsonRuns, type Section } from './section.js';

/** p50 of the pager / the C handler waiting alike, at most (issue 22: the lean prototype reaches 1.17-1.20x). */
const PER_FAULT_VS_C = 1.2;

interface FaultVariant {
  key: string;
  handler: string;
  waits: string;
  placement: Placement;
  spec: HandlerSpec;
  /** The C variant that waits the same way, for the ratio column. */
  cAlike?: string;
  /** How both wait, in the target's words. */
  alike?: string;
}

function faultVariants(spinUs: number): FaultVariant[] {
  const c = (spin: number): HandlerSpec => ({ kind: 'c', source: 'memory', prefetch: false, spinUs: spin });
  const pager = (spin: number): HandlerSpec => ({ kind: 'pager', source: 'memory', prefetch: false, spinUs: spin });
  const lean = (wait: 'poll' | 'event-loop', spin: number): HandlerSpec => ({ kind: 'lean', source: 'memory', prefetch: false, wait, spinUs: spin });
  const spinning = `spin ${spinUs} us, then`;
  return [
    { key: 'c-sleep-cross', handler: 'C reference', waits: 'poll (sleeps)', placement: 'cross-cpu', spec: c(0) },
    { key: 'pager-sleep-cross', handler: 'pager', waits: 'event loop (sleeps in epoll)', placement: 'cross-cpu', spec: pager(0), cAlike: 'c-sleep-cross', alike: 'both sleep (C in poll, pager in epoll), cross-CPU' },
    { key: 'c-sleep-same', handler: 'C reference', waits: 'poll (sleeps)', placement: 'same-cpu', spec: c(0) },
    { key: 'pager-sleep-same', handler: 'pager', waits: 'event loop (sleeps in epoll)', placement: 'same-cpu', spec: pager(0), cAlike: 'c-sleep-same', alike: 'both sleep (C in poll, pager in epoll), same CPU' },
    { key: 'c-spin-cross', handler: 'C reference', waits: `${spinning} poll`, placement: 'cross-cpu', spec: c(spinUs) },
    { key: 'pager-spin-cross', handler: 'pager + bench spinner', waits: `${spinning} epoll`, placement: 'cross-cpu', spec: pager(spinUs), cAlike: 'c-spin-cross', alike: `both spin ${spinUs} us then sleep, cross-CPU` },
    { key: 'lean-poll-cross', handler: 'lean JS prototype', waits: 'poll (sleeps)', placement: 'cross-cpu', spec: lean('poll', 0), cAlike: 'c-sleep-cross' },
    { key: 'lean-poll-same', handler: 'lean JS prototype', waits: 'poll (sleeps)', placement: 'same-cpu', spec: lean('poll', 0), cAlike: 'c-sleep-same' },
    { key: 'lean-loop-same', handler: 'lean JS prototype', waits: 'event loop (sleeps in epoll)', placement: 'same-cpu', spec: lean('event-loop', 0), cAlike: 'c-sleep-same' },
    { key: 'lean-spin-cross', handler: 'lean JS prototype', waits: `${spinning} poll`, placement: 'cross-cpu', spec: lean('poll', spinUs), cAlike: 'c-spin-cross' },
  ];
}

export const perFaultSection: Section = async (ctx, options) => {
  const pageCount = ctx.image.sizeBytes / 4096;
  const toucher: ToucherSpec = { memory: 'uffd', access: 'load', threads: 1, latency: true };
  const defs = faultVariants(options.spinUs);
  const patterns: PatternName[] = ['sequential', 'random'];
  const variants: Variant[] = [];
  for (const pattern of patterns) {
    const order = patternOrder(pattern, pageCount, options.seed);
    for (const d of defs) {
      variants.push({ id: `${pattern}/${d.key}`, label: `${d.handler}, ${d.waits}, ${d.placement}`, handler: d.spec, toucher, placement: d.placement, order });
    }
  }
  const results = await runInterleaved(ctx, 'per-fault', variants, options.rounds);

  const rows: string[][] = [];
  const summary: Record<string, unknown>[] = [];
  const targets: TargetResult[] = [];
  for (const pattern of patterns) {
    const id = (key: string): string => `${pattern}/${key}`;
    const p50 = (key: string): number[] => perRound(results, id(key), p50Us);
    for (const d of defs) {
      const vsC = d.cAlike ? pairedRatio(p50(d.key), p50(d.cAlike)) : undefined;
      const row = {
        pattern,
        variant: d.key,
        handler: d.handler,
        waits: d.waits,
        placement: d.placement,
        p50Us: median(p50(d.key)),
        p99Us: median(perRound(results, id(d.key), p99Us)),
        faultsPerSecond: median(perRound(results, id(d.key), faultsPerSecond)),
        p50VsCAlike: vsC,
        handlerCpuUsPerFault: median(perRound(results, id(d.key), (r) => handlerCpuPerFault(r).totalUs)),
        handlerUserUsPerFault: median(perRound(results, id(d.key), (r) => handlerCpuPerFault(r).userUs)),
        handlerSystemUsPerFault: median(perRound(results, id(d.key), (r) => handlerCpuPerFault(r).systemUs)),
      };
      summary.push(row);
      rows.push([
        pattern,
        d.handler,
        d.waits,
        d.placement,
        fmt(row.p50Us),
        fmt(row.p99Us, 0),
        fmtInt(row.faultsPerSecond),
        fmtRatio(vsC),
        `${fmt(row.handlerCpuUsPerFault)} (${fmt(row.handlerUserUsPerFault)}+${fmt(row.handlerSystemUsPerFault)})`,
      ]);
    }
    for (const d of defs.filter((v) => v.alike)) {
      targets.push(checkTarget(`per-fault p50, ${pattern}: pager / C, ${d.alike}`, pairedRatio(p50(d.key), p50(d.cAlike!)), 'at-most', PER_FAULT_VS_C));
    }
    const pagers = defs.filter((v) => v.handler.startsWith('pager'));
    const best = pagers.reduce((a, b) => (median(p50(a.key)) <= median(p50(b.key)) ? a : b));
    targets.push(
      checkTarget(`per-fault p50, ${pattern}: C poll-and-sleep (cross-CPU) / pager's best (${best.waits}, ${best.placement})`, pairedRatio(p50('c-sleep-cross'), p50(best.key)), 'at-least', 2),
    );
  }
  const table: Table = {
    title: `1. Per-fault cost: ${fmtInt(pageCount)} faults of 4 KiB, no read-ahead, image in memory (median of ${options.rounds} rounds)`,
    columns: ['pattern', 'handler', 'waits by', 'CPUs', 'p50 us', 'p99 us', 'faults/s', 'p50 / C waiting alike', 'handler CPU us/fault (user+sys)'],
    numeric: [false, false, false, false, true, true, true, true, true],
    rows,
    notes: [
      'cross-cpu: toucher on CPU 0, handler on CPU 1; same-cpu: both on CPU 1. Latency is one touch, timed by the faulting thread.',
      'lean JS prototype: bench/handlers/lean-pager.ts, the fault path cut to what the C handler does, in JS (not the product).',
      'handler CPU: run time of the serving thread while serving, per fault (spinning counts); user/system split from tick counts.',
    ],
  };
  return { name: 'per-fault', tables: [table], targets, summary, runs: toJsonRuns(results) };
};
