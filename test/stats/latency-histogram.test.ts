// The one latency record, read as percentiles and as Prometheus buckets.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { LATENCY_BUCKET_BOUNDS_MICROS, LATENCY_BUCKET_BOUNDS_SECONDS, LatencyHistogram } from '../../src/stats/latency-histogram.js';

/** The bucket index a value landed in. */
function bucketOf(micros: number): number {
  const h = new LatencyHistogram();
  h.record(micros);
  return h.buckets().counts.findIndex((c) => c === 1);
}

describe('latency histogram buckets', () => {
  test('bounds double from 1 µs to 2^26 µs, and in seconds print as Prometheus expects', () => {
    assert.equal(LATENCY_BUCKET_BOUNDS_MICROS[0], 1);
    assert.equal(LATENCY_BUCKET_BOUNDS_MICROS.at(-1), 2 ** 26);
    for (let k = 1; k < LATENCY_BUCKET_BOUNDS_MICROS.length; k++) assert.equal(LATENCY_BUCKET_BOUNDS_MICROS[k], 2 * LATENCY_BUCKET_BOUNDS_MICROS[k - 1]!);
    assert.deepEqual(LATENCY_BUCKET_BOUNDS_SECONDS.slice(0, 3).map(String), ['0.000001', '0.000002', '0.000004']);
    assert.equal(String(LATENCY_BUCKET_BOUNDS_SECONDS[10]), '0.001024');
  });

  test('a value goes in the first bucket whose bound is at least the value (le semantics)', () => {
    assert.equal(bucketOf(0), 0, 'clamped to 1 µs');
    assert.equal(bucketOf(1), 0);
    assert.equal(bucketOf(2), 1);
    assert.equal(bucketOf(3), 2);
    assert.equal(bucketOf(4), 2);
    assert.equal(bucketOf(5), 3);
    assert.equal(bucketOf(1024), 10);
    assert.equal(bucketOf(1025), 11);
    assert.equal(bucketOf(60_000_000), 26);
    assert.equal(bucketOf(1e12), 26, 'clamped to 60 s');
  });

  test('sum and count agree with the percentiles; add() merges both views', () => {
    const a = new LatencyHistogram();
    const b = new LatencyHistogram();
    for (const v of [10, 20, 30]) a.record(v);
    for (const v of [1000, 2000]) b.record(v);
    a.add(b);
    const buckets = a.buckets();
    assert.equal(buckets.count, 5);
    assert.equal(buckets.sumMicros, 3060);
    assert.equal(buckets.counts.reduce((x, y) => x + y, 0), 5);
    const summary = a.summary();
    assert.equal(summary.count, 5);
    assert.equal(summary.max, 2000);
    assert.equal(summary.p50, 30);
  });
});
