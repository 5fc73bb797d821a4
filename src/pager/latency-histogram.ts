// Latencies in whole microseconds, cheap to record on a hot path, summarised
// as percentiles that never contradict each other or the maximum.
//
// Log-linear buckets (HdrHistogram's layout, in a few lines): every value
// below 256 µs has its own bucket; above, each power of two is cut into 128
// buckets, so a bucket is at most 1/128 (0.8%) of its values wide. 2,560
// counters cover 1 µs .. 60 s. Written here rather than taken from
// hdr-histogram-js, whose import alone cost 60-100 ms of every process's
// start (measured: `node -e "require('hdr-histogram-js')"`).

export interface LatencySummary {
  count: number;
  p50: number;
  p90: number;
  p99: number;
  max: number;
  /** To 0.1 µs. */
  mean: number;
}

const MAX_MICROS = 60_000_000;
const SUB_BITS = 7;
const SUB_BUCKETS = 1 << SUB_BITS;
/** Values below this have a bucket each. */
const EXACT_BELOW = 2 * SUB_BUCKETS;
const EXACT_BITS = SUB_BITS + 1;
const BUCKETS = EXACT_BELOW + (32 - Math.clz32(MAX_MICROS) - EXACT_BITS) * SUB_BUCKETS;

function bucketOf(value: number): number {
  if (value < EXACT_BELOW) return value;
  const exponent = 31 - Math.clz32(value);
  return EXACT_BELOW + (exponent - EXACT_BITS) * SUB_BUCKETS + ((value >>> (exponent - SUB_BITS)) - SUB_BUCKETS);
}

/** The largest value a bucket holds. */
function highestIn(bucket: number): number {
  if (bucket < EXACT_BELOW) return bucket;
  const exponent = EXACT_BITS + Math.floor((bucket - EXACT_BELOW) / SUB_BUCKETS);
  const sub = ((bucket - EXACT_BELOW) % SUB_BUCKETS) + SUB_BUCKETS;
  return (sub + 1) * 2 ** (exponent - SUB_BITS) - 1;
}

export class LatencyHistogram {
  private readonly counts = new Float64Array(BUCKETS);
  private total = 0;
  private sum = 0;
  private maxValue = 0;

  /** Clamped to 1 µs .. 60 s. */
  record(micros: number): void {
    const value = Math.max(1, Math.min(MAX_MICROS, Math.round(micros)));
    this.counts[bucketOf(value)]!++;
    this.total++;
    this.sum += value;
    if (value > this.maxValue) this.maxValue = value;
  }

  get count(): number {
    return this.total;
  }

  /** Always p50 <= p90 <= p99 <= max: within 0.8% of the exact percentile, and never above the largest latency recorded. */
  summary(): LatencySummary {
    if (this.total === 0) return { count: 0, p50: 0, p90: 0, p99: 0, max: 0, mean: 0 };
    return {
      count: this.total,
      p50: this.percentile(50),
      p90: this.percentile(90),
      p99: this.percentile(99),
      max: this.maxValue,
      mean: Math.round((this.sum / this.total) * 10) / 10,
    };
  }

  /** The smallest bucket top at or below which q% of the values lie, clamped to the maximum. */
  private percentile(q: number): number {
    const wanted = Math.max(1, Math.ceil((q / 100) * this.total));
    let seen = 0;
    for (let bucket = 0; bucket < BUCKETS; bucket++) {
      seen += this.counts[bucket]!;
      if (seen >= wanted) return Math.min(highestIn(bucket), this.maxValue);
    }
    return this.maxValue;
  }
}
