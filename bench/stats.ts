// Summaries over rounds. On a shared machine one run says little; the median
// over rounds, and ratios taken round by round between variants that ran
// side by side, say more.

export function median(values: readonly number[]): number {
  if (values.length === 0) return Number.NaN;
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}

export interface Ratio {
  /** Median of the per-round ratios. */
  median: number;
  min: number;
  max: number;
  rounds: number;
}

/** Values of one variant, one per round, summarised like a ratio (for a target on an absolute figure). */
export function perRoundValues(values: readonly number[]): Ratio {
  return { median: median(values), min: Math.min(...values), max: Math.max(...values), rounds: values.length };
}

/** a[i] / b[i] for each round i both ran, summarised. */
export function pairedRatio(a: readonly number[], b: readonly number[]): Ratio {
  const n = Math.min(a.length, b.length);
  const ratios: number[] = [];
  for (let i = 0; i < n; i++) ratios.push(a[i]! / b[i]!);
  return { median: median(ratios), min: Math.min(...ratios), max: Math.max(...ratios), rounds: n };
}

export type Comparison = 'at-most' | 'at-least';

export interface TargetResult {
  /** What is compared, in words. */
  name: string;
  ratio: Ratio;
  comparison: Comparison;
  target: number;
  met: boolean;
  /** How far off, as a factor (1 when met): measured/target for at-most, target/measured for at-least. */
  shortfall: number;
  /** What the figures are in: 'x' for a ratio (the default), or a unit (' GB/s'). */
  unit: string;
}

export function checkTarget(name: string, ratio: Ratio, comparison: Comparison, target: number, unit = 'x'): TargetResult {
  const met = comparison === 'at-most' ? ratio.median <= target : ratio.median >= target;
  const shortfall = met ? 1 : comparison === 'at-most' ? ratio.median / target : target / ratio.median;
  return { name, ratio, comparison, target, met, shortfall, unit };
}
