// Latencies in whole microseconds, cheap to record on a hot path, read two
// ways from the one record: as percentiles that never contradict each other
// or the maximum (the JSON status and the CLI print those), and as
// Prometheus buckets (the /metrics endpoints export those).
//
// The buckets are exponential from 1 µs, doubling: le = 1 µs, 2 µs, 4 µs, …,
// 2^26 µs (67 s), then +Inf. A fault served from the page cache takes a few
// µs and one over the network a few ms; prom-client's default buckets start
// at 5 ms and would put every local fault in the first one.
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

/** Upper bounds of the buckets, µs: 2^0 .. 2^26 (the +Inf bucket is implied). */
export const LATENCY_BUCKET_BOUNDS_MICROS: readonly number[] = Array.from({ length: 27 }, (_, k) => 2 ** k);
/** The same bounds in seconds, as Prometheus's `le` (2^k / 10^6: the nearest double to each, printed short). */
export const LATENCY_BUCKET_BOUNDS_SECONDS: readonly number[] = LATENCY_BUCKET_BOUNDS_MICROS.map((micros) => micros / 1e6);

/** What a Prometheus histogram needs: per-bucket counts (not cumulative), their sum and count. */
export interface LatencyBuckets {
  /** counts[k]: values in (bound[k-1], bound[k]] µs; one more entry past the last bound (+Inf). */
  counts: number[];
  sumMicros: number;
  count: number;
}

const MAX_MICROS = 60_000_000;

export class LatencyHistogram {
  private readonly histogram = hdr.build({ lowestDiscernibleValue: 1, highestTrackableValue: MAX_MICROS, numberOfSignificantValueDigits: 2 });
  private readonly bucketCounts = new Float64Array(LATENCY_BUCKET_BOUNDS_MICROS.length + 1);
  private sumMicros = 0;

  /** Clamped to 1 µs .. 60 s. */
  record(micros: number): void {
    const value = Math.max(1, Math.min(MAX_MICROS, Math.round(micros)));
    this.histogram.recordValue(value);
    // The first bound >= value: ceil(log2(value)), exact for integers.
    this.bucketCounts[32 - Math.clz32(value - 1)]!++;
    this.sumMicros += value;
  }

  get count(): number {
    return this.histogram.totalCount;
  }

  /** Add everything `other` recorded to this one (a handler's clients, summed). */
  add(other: LatencyHistogram): void {
    this.histogram.add(other.histogram);
    for (let k = 0; k < this.bucketCounts.length; k++) this.bucketCounts[k]! += other.bucketCounts[k]!;
    this.sumMicros += other.sumMicros;
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

  buckets(): LatencyBuckets {
    return { counts: Array.from(this.bucketCounts), sumMicros: this.sumMicros, count: this.histogram.totalCount };
  }
}
