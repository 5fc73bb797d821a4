// Latencies in whole microseconds, cheap to record on a hot path, summarised
// as percentiles that never contradict each other or the maximum.
import * as hdr from 'hdr-histogram-js';

export interface LatencySummary {
  count: number;
  p50: number;
  p90: number;
  p99: number;
  max: number;
  /** To 0.1 µs. */
  mean: number;
}

export class LatencyHistogram {
  private readonly histogram = hdr.build({ lowestDiscernibleValue: 1, highestTrackableValue: 60_000_000, numberOfSignificantValueDigits: 2 });

  /** Clamped to 1 µs .. 60 s. */
  record(micros: number): void {
    this.histogram.recordValue(Math.max(1, Math.min(60_000_000, Math.round(micros))));
  }

  get count(): number {
    return this.histogram.totalCount;
  }

  /** Always p50 <= p90 <= p99 <= max: percentiles are exact to two significant digits and never above the largest latency recorded. */
  summary(): LatencySummary {
    const h = this.histogram;
    // getValueAtPercentile answers with the highest value its bucket stands for (1001 µs recorded
    // alone reads back as 1003), while maxValue is the largest value recorded exactly: clamp, so a
    // percentile never claims a latency above every one that was seen.
    const percentile = (q: number): number => Math.min(h.getValueAtPercentile(q), h.maxValue);
    return {
      count: h.totalCount,
      p50: percentile(50),
      p90: percentile(90),
      p99: percentile(99),
      max: h.maxValue,
      mean: h.totalCount ? Math.round(h.mean * 10) / 10 : 0,
    };
  }
}
