// Plain-text tables for the terminal (and for docs/bench.md, which quotes them).
import type { Ratio, TargetResult } from './stats.js';

export interface Table {
  title: string;
  columns: string[];
  /** Columns aligned right (numbers). */
  numeric: boolean[];
  rows: string[][];
  notes: string[];
}

export function formatTable(table: Table): string {
  const widths = table.columns.map((c, i) => Math.max(c.length, ...table.rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]): string =>
    cells
      .map((cell, i) => (table.numeric[i] ? cell.padStart(widths[i]!) : cell.padEnd(widths[i]!)))
      .join('  ')
      .trimEnd();
  const out = [table.title, line(table.columns), widths.map((w) => '-'.repeat(w)).join('  ')];
  for (const row of table.rows) out.push(line(row));
  for (const note of table.notes) out.push(`  ${note}`);
  return out.join('\n');
}

export function fmt(value: number, digits = 1): string {
  if (!Number.isFinite(value)) return '-';
  return value.toFixed(digits);
}

/** 12345678 -> "12,345,678". */
export function fmtInt(value: number): string {
  if (!Number.isFinite(value)) return '-';
  return Math.round(value).toLocaleString('en-US');
}

export function fmtRatio(ratio: Ratio | undefined, unit = 'x'): string {
  if (!ratio || !Number.isFinite(ratio.median)) return '-';
  return ratio.rounds > 1 ? `${ratio.median.toFixed(2)}${unit} (${ratio.min.toFixed(2)}-${ratio.max.toFixed(2)})` : `${ratio.median.toFixed(2)}${unit}`;
}

export function targetsTable(targets: readonly TargetResult[]): Table {
  return {
    title: 'Targets (ratios taken round by round, median and range)',
    columns: ['target', 'measured', 'wanted', 'met'],
    numeric: [false, true, true, false],
    rows: targets.map((t) => [
      t.name,
      fmtRatio(t.ratio, t.unit),
      `${t.comparison === 'at-most' ? '<=' : '>='} ${t.target}${t.unit}`,
      t.met ? 'yes' : `no (off by ${t.shortfall.toFixed(2)}x)`,
    ]),
    notes: [],
  };
}
