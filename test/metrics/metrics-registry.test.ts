// The registry: reporters' numbers, summed and merged, rendered by prom-client and read back.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { LatencyHistogram } from '../../src/stats/latency-histogram.js';
import { MetricsRegistry } from '../../src/metrics/metrics-registry.js';
import { SampleSet, parsePrometheusText } from '../../src/dashboard/prometheus-text.js';

async function scrape(registry: MetricsRegistry): Promise<{ text: string; samples: SampleSet }> {
  const text = await registry.scrape();
  return { text, samples: new SampleSet(parsePrometheusText(text)) };
}

describe('the metrics registry', () => {
  test('series with the same labels from two reporters are summed; others stay apart', async () => {
    const registry = new MetricsRegistry({ components: ['pager'], processMetrics: false });
    registry.report((sink) => sink.add('faults', 3, { kind: 'missing' }));
    registry.report((sink) => {
      sink.add('faults', 4, { kind: 'missing' });
      sink.add('faults', 1, { kind: 'in-flight' });
    });
    const { text, samples } = await scrape(registry);
    assert.match(text, /^# HELP userfault_faults_total Page faults read/m);
    assert.match(text, /^# TYPE userfault_faults_total counter$/m);
    assert.equal(samples.value('userfault_faults_total', { kind: 'missing' }), 7);
    assert.equal(samples.value('userfault_faults_total', { kind: 'in-flight' }), 1);
  });

  test('histograms are merged bucket by bucket and exported cumulative, in seconds', async () => {
    const registry = new MetricsRegistry({ components: ['pager'], processMetrics: false });
    const a = new LatencyHistogram();
    const b = new LatencyHistogram();
    a.record(3); // le 4 µs
    b.record(3);
    b.record(1500); // le 2048 µs
    registry.report((sink) => sink.histogram('faultLatency', a));
    registry.report((sink) => sink.histogram('faultLatency', b));
    const { samples } = await scrape(registry);
    const name = 'userfault_fault_latency_seconds';
    assert.equal(samples.value(`${name}_bucket`, { le: '0.000002' }), 0);
    assert.equal(samples.value(`${name}_bucket`, { le: '0.000004' }), 2);
    assert.equal(samples.value(`${name}_bucket`, { le: '0.001024' }), 2);
    assert.equal(samples.value(`${name}_bucket`, { le: '0.002048' }), 3);
    assert.equal(samples.value(`${name}_bucket`, { le: '+Inf' }), 3);
    assert.equal(samples.value(`${name}_count`), 3);
    assert.ok(Math.abs(samples.value(`${name}_sum`)! - 0.001506) < 1e-12);
  });

  test('a series is there only when a reporter wrote it; components not run are not listed', async () => {
    const registry = new MetricsRegistry({ components: ['vm'], processMetrics: false });
    const { text } = await scrape(registry);
    assert.match(text, /# TYPE userfault_vm_memory_bytes gauge/);
    assert.doesNotMatch(text, /^userfault_vm_memory_bytes /m, 'no VM reported: no sample');
    assert.doesNotMatch(text, /userfault_faults_total|userfault_page_server/, 'other components are not exported');
    registry.report((sink) => sink.add('faults', 1, { kind: 'missing' }));
    assert.doesNotMatch(await registry.scrape(), /userfault_faults_total/, 'a pager metric reported to a VM-only registry is ignored');
  });

  test('a reporter that gives a wrong label fails the scrape naming the metric', async () => {
    const registry = new MetricsRegistry({ components: ['pager'], processMetrics: false });
    registry.report((sink) => sink.add('faults', 1, { how: 'copy' }));
    await assert.rejects(registry.scrape(), /userfault_faults_total: label kind missing/);
  });

  test('process metrics come from prom-client', async () => {
    const registry = new MetricsRegistry({ components: [] });
    const { samples } = await scrape(registry);
    assert.ok(samples.has('process_cpu_user_seconds_total'));
    assert.ok(samples.has('nodejs_heap_size_used_bytes'));
  });
});
