// What every bench section produces, and helpers they share.
import type { ServedConnectionSummary } from '../../src/pages/index.js';
import type { BenchOptions, SectionName } from '../args.js';
import type { HandlerReport } from '../handlers/spec.js';
import type { BenchContext, RunResult, ToucherResult } from '../runner.js';
import type { TargetResult } from '../stats.js';
import type { Table } from '../table.js';

export interface SectionResult {
  name: SectionName;
  tables: Table[];
  targets: TargetResult[];
  /** One object per table row, with the medians (for the JSON). */
  summary: Record<string, unknown>[];
  /** Every run, by variant id, in round order (JsonRun; the migrate section's runs are its own MigrationFigures). */
  runs: Record<string, readonly object[]>;
}

export type Section = (ctx: BenchContext, options: BenchOptions) => Promise<SectionResult>;

/** A run as stored in the results JSON (a working set is stored as its length). */
export interface JsonRun {
  toucher: ToucherResult;
  handler: Omit<HandlerReport, 'workingSet'> & { workingSetPages?: number };
  /** A remote source's session id, and what the page server says each of its connections did. */
  session?: string;
  server?: ServedConnectionSummary[];
  observed?: Record<string, number>;
}

export function toJsonRuns(results: Map<string, RunResult[]>): Record<string, JsonRun[]> {
  const out: Record<string, JsonRun[]> = {};
  for (const [id, runs] of results) {
    out[id] = runs.map(({ toucher, handler, session, observed }) => {
      if (handler.kind === 'pager' && handler.workingSet) {
        const { workingSet, ...rest } = handler;
        return { toucher, handler: { ...rest, workingSetPages: workingSet.length }, session, observed };
      }
      return { toucher, handler, session, observed };
    });
  }
  return out;
}

/** One number per round for a variant. */
export function perRound(results: Map<string, RunResult[]>, id: string, pick: (run: RunResult) => number): number[] {
  const runs = results.get(id);
  if (!runs) throw new Error(`no runs for variant ${id}`);
  return runs.map(pick);
}

export const totalMs = (run: RunResult): number => run.toucher.totalNs / 1e6;
export const p50Us = (run: RunResult): number => (run.toucher.latencyNs?.p50 ?? Number.NaN) / 1000;
export const p99Us = (run: RunResult): number => (run.toucher.latencyNs?.p99 ?? Number.NaN) / 1000;
export const faultsPerSecond = (run: RunResult): number => run.toucher.touches / (run.toucher.touchNs / 1e9);

/** Source reads the handler made (what a slow source pays for). */
export function sourceReads(run: RunResult): number {
  const h = run.handler;
  switch (h.kind) {
    case 'pager':
      return h.metrics.sourceReads;
    case 'lean':
    case 'c':
      return h.stats.sourceReads;
    case 'serve':
      return h.metrics.sourceReads;
    case 'none':
      return 0;
    default: {
      const never: never = h;
      throw new Error(`unknown report ${JSON.stringify(never)}`);
    }
  }
}

/** The serving thread's CPU time per fault, in microseconds. */
export function handlerCpuPerFault(run: RunResult): { totalUs: number; userUs: number; systemUs: number } {
  const h = run.handler;
  if (h.kind === 'none') return { totalUs: Number.NaN, userUs: Number.NaN, systemUs: Number.NaN };
  const faults = run.toucher.touches;
  return { totalUs: h.cpu.runNs / 1000 / faults, userUs: (h.cpu.userMs * 1000) / faults, systemUs: (h.cpu.systemMs * 1000) / faults };
}
