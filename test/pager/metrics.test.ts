// The pager's latency summary: percentiles and max agree with each other.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
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

  test('no fault: zeros', () => {
    assert.deepEqual(latencies([]), { count: 0, p50: 0, p90: 0, p99: 0, max: 0, mean: 0 });
  });
});
