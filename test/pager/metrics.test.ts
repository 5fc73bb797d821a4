// The pager's latency summary: percentiles and max agree with each other,
// and with the exact percentiles of what was recorded.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { LatencyHistogram } from '../../src/stats/latency-histogram.js';
import { PagerMetrics, type PagerMetricsSnapshot } from '../../src/pager/metrics.js';

function latencies(values: readonly number[]): PagerMetricsSnapshot['latencyMicros'] {
  const metrics = new PagerMetrics();
  for (const value of values) metrics.recordLatencyMicros(value);
  return metrics.snapshot().latencyMicros;
}

function assertOrdered(l: { p50: number; p90: number; p99: number; max: number }, what: string): void {
  assert.ok(l.p50 <= l.p90 && l.p90 <= l.p99 && l.p99 <= l.max, `${what}: p50 ${l.p50} <= p90 ${l.p90} <= p99 ${l.p99} <= max ${l.max}`);
}

describe('pager metrics', () => {
  test('one fault of 1001 µs: every percentile is 1001, not its bucket\'s top (1003) above the max', () => {
    const l = latencies([1001]);
    assert.deepEqual({ p50: l.p50, p90: l.p90, p99: l.p99, max: l.max, count: l.count }, { p50: 1001, p90: 1001, p99: 1001, max: 1001, count: 1 });
  });

  test('130, 257 and 1001 µs: p50 <= p90 <= p99 <= max', () => {
    const l = latencies([130, 1001, 257]);
    assertOrdered(l, '130, 257, 1001');
    assert.equal(l.max, 1001);
    assert.ok(l.mean > 130 && l.mean < 1001 && Number.isInteger(l.mean * 10), `mean ${l.mean}, to 0.1 µs`);
  });

  test('for many sets of latencies the order holds', () => {
    let x = 42;
    for (let run = 0; run < 200; run++) {
      const values: number[] = [];
      for (let i = 0; i < 1 + (run % 50); i++) {
        x = (Math.imul(x, 1103515245) + 12345) >>> 0;
        values.push(1 + (x % (run % 2 ? 100_000 : 2_000)));
      }
      assertOrdered(latencies(values), `run ${run}`);
    }
  });

  test('each percentile is within 0.8% of the exact one (nearest rank), from 1 µs to 60 s', () => {
    let x = 7;
    for (const spread of [300, 5_000, 200_000, 60_000_000]) {
      const histogram = new LatencyHistogram();
      const values: number[] = [];
      for (let i = 0; i < 5000; i++) {
        x = (Math.imul(x, 1103515245) + 12345) >>> 0;
        const value = 1 + (x % spread);
        values.push(value);
        histogram.record(value);
      }
      values.sort((a, b) => a - b);
      const summary = histogram.summary();
      for (const q of [50, 90, 99] as const) {
        const exact = values[Math.ceil((q / 100) * values.length) - 1]!;
        const got = summary[`p${q}`];
        assert.ok(got >= exact && got <= exact * (1 + 1 / 128), `spread ${spread}: p${q} ${got}, exact ${exact}`);
      }
      assert.equal(summary.max, values.at(-1));
      assert.equal(summary.count, 5000);
    }
  });

  test('values past 60 s count as 60 s; below 1 µs as 1 µs', () => {
    const histogram = new LatencyHistogram();
    histogram.record(1e9);
    histogram.record(0.2);
    assert.deepEqual([histogram.summary().max, histogram.summary().p50], [60_000_000, 1]);
  });

  test('no fault: zeros', () => {
    assert.deepEqual(latencies([]), { count: 0, p50: 0, p90: 0, p99: 0, max: 0, mean: 0 });
  });
});
