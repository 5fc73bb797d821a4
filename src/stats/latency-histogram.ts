// Latencies in whole microseconds, cheap to record on a hot path, read two
// ways from the one record: as percentiles that never contradict each other
// or the maximum (the JSON status and the CLI print those), and as
// Prometheus buckets (the /metrics endpoints export those).
//
// Percentiles come from log-linear buckets (HdrHistogram's layout, in a few
// lines): every value below 256 µs has its own bucket; above, each power of
// two is cut into 128 buckets, so a bucket is at most 1/128 (0.8%) of its
// values wide. 2,560 counters cover 1 µs .. 60 s. Written here rather than
// taken from hdr-histogram-js, whose import alone cost 60-100 ms of every
// process's start (measured: `node -e "require('hdr-histogram-js')"`).
//
// The Prometheus buckets are exponential from 1 µs, doubling: le = 1 µs,
// 2 µs, 4 µs, …, 2^26 µs (67 s), then +Inf. A fault served from the page
// cache takes a few µs and one over the network a few ms; prom-client's
// default buckets start at 5 ms and would put every local fault in the first one.

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
  private readonly bucketCounts = new Float64Array(LATENCY_BUCKET_BOUNDS_MICROS.length + 1);
  private total = 0;
  private sum = 0;
  private maxValue = 0;

  /** Clamped to 1 µs .. 60 s. */
  record(micros: number): void {
    const value = Math.max(1, Math.min(MAX_MICROS, Math.round(micros)));
    this.counts[bucketOf(value)]!++;
    // The first bound >= value: ceil(log2(value)), exact for integers.
    this.bucketCounts[32 - Math.clz32(value - 1)]!++;
    this.total++;
    this.sum += value;
    if (value > this.maxValue) this.maxValue = value;
  }

  get count(): number {
    return this.total;
  }

  /** Add everything `other` recorded to this one (a handler's clients, summed). */
  add(other: LatencyHistogram): void {
    for (let k = 0; k < BUCKETS; k++) this.counts[k]! += other.counts[k]!;
    for (let k = 0; k < this.bucketCounts.length; k++) this.bucketCounts[k]! += other.bucketCounts[k]!;
    this.total += other.total;
    this.sum += other.sum;
    if (other.maxValue > this.maxValue) this.maxValue = other.maxValue;
  }

  buckets(): LatencyBuckets {
    return { counts: Array.from(this.bucketCounts), sumMicros: this.sum, count: this.total };
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
