// A dashboard frame is what /metrics said, with rates against the frame before.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { buildFrame, histogramView } from '../../src/dashboard/dashboard-frame.js';
import { SampleSet, parsePrometheusText } from '../../src/dashboard/prometheus-text.js';
import { LatencyHistogram } from '../../src/stats/latency-histogram.js';
import { MetricsRegistry } from '../../src/metrics/metrics-registry.js';

async function samplesOf(report: Parameters<MetricsRegistry['report']>[0]): Promise<SampleSet> {
  const registry = new MetricsRegistry({ components: ['pager', 'vm', 'migration'], processMetrics: false });
  registry.report(report);
  return new SampleSet(parsePrometheusText(await registry.scrape()));
}

describe('dashboard frames', () => {
  test('faults per second and vCPU exits per second come from the scrape before', async () => {
    const first = buildFrame({ seq: 1, time: 10_000, source: 's', samples: await samplesOf((sink) => {
      sink.add('faults', 100, { kind: 'missing' });
      sink.add('vcpuState', 1, { vcpu: 0, state: 'running' });
      sink.add('vcpuExits', 50, { vcpu: 0, reason: 'io' });
    }) });
    assert.equal(first.faults.perSecond, 0, 'no rate from one scrape');
    const second = buildFrame({ seq: 2, time: 10_500, source: 's', previous: first, samples: await samplesOf((sink) => {
      sink.add('faults', 300, { kind: 'missing' });
      sink.add('faults', 20, { kind: 'in-flight' });
      sink.add('vcpuState', 1, { vcpu: 0, state: 'running' });
      sink.add('vcpuExits', 80, { vcpu: 0, reason: 'io' });
      sink.add('vcpuExits', 2, { vcpu: 0, reason: 'intr' });
    }) });
    assert.equal(second.faults.total, 320);
    assert.equal(second.faults.perSecond, 440);
    assert.deepEqual(second.faults.byKind, { missing: 300, 'in-flight': 20 });
    assert.deepEqual(second.vcpus.map((v) => [v.id, v.state, v.exits, v.exitsPerSecond]), [['0', 'running', 82, 64]]);
  });

  test('the latency histogram comes back per bucket, with the buckets the median and p99 fall in', async () => {
    const h = new LatencyHistogram();
    for (let i = 0; i < 98; i++) h.record(10); // le 16 µs
    h.record(3000); // le 4096 µs
    h.record(5000); // le 8192 µs
    const view = histogramView(await samplesOf((sink) => sink.histogram('faultLatency', h)), 'userfault_fault_latency_seconds');
    assert.equal(view.count, 100);
    assert.equal(view.counts.reduce((a, b) => a + b, 0), 100);
    assert.equal(view.counts[4], 98);
    assert.equal(view.p50Seconds, 0.000016);
    assert.equal(view.p99Seconds, 0.004096);
  });

  test('a migration, a VM state and page counts come through as they were exported', async () => {
    const frame = buildFrame({ seq: 1, time: 0, source: 's', samples: await samplesOf((sink) => {
      sink.add('vmState', 1, { state: 'migrating' });
      sink.add('vmMemory', 1 << 26);
      sink.add('pages', 10, { state: 'present' });
      sink.add('pages', 5, { state: 'missing' });
      sink.add('pagesPending', 4);
      sink.add('migrationState', 1, { role: 'source', state: 'precopy' });
      sink.add('migrationTransferredBytes', 4096, { role: 'source' });
      sink.add('migrationRemainingBytes', 8192, { role: 'source' });
      sink.add('migrationDirtyRate', 7, { role: 'source' });
    }) });
    assert.deepEqual(frame.vm, { state: 'migrating', memoryBytes: 1 << 26 });
    assert.deepEqual(frame.pages, { present: 10, missing: 5 });
    assert.equal(frame.pendingPages, 4);
    assert.equal(frame.migration?.state, 'precopy');
    assert.equal(frame.migration?.remainingBytes, 8192);
    assert.equal(frame.migration?.dirtyPagesPerSecond, 7);
    assert.equal(frame.migration?.downtimeSeconds, undefined);
  });
});
