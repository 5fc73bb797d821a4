// A VM's network source out of reach, in the vm commands' words (without
// KVM: the formatting of what a VMM reports), and in the dashboard's frame:
// `vm restore|receive` print the outage as it begins and ends, `vm status`
// shows it while it lasts, the dashboard reads it from /metrics.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { formatEvent, formatStatus } from '../../src/cli/vm-commands.js';
import type { HostedVmStatus } from '../../src/vmm-host/hosted-vm.js';
import type { AvailabilityStats } from '../../src/sources/network/availability.js';
import { buildFrame } from '../../src/dashboard/dashboard-frame.js';
import { SampleSet, parsePrometheusText } from '../../src/dashboard/prometheus-text.js';
import { MetricsRegistry } from '../../src/metrics/metrics-registry.js';
import { sourceReporter } from '../../src/metrics/source-reporter.js';

const restore = { mode: 'lazy' as const, source: 'page server tcp://10.0.0.5:7000', openedMs: 0, builtMs: 0, memoryMs: 1, readyMs: 3.1 };

function status(source: AvailabilityStats): HostedVmStatus {
  return { state: 'running', memoryBytes: 256 << 20, vcpus: [], exitReason: undefined, restore, source } as unknown as HostedVmStatus;
}

const during: AvailabilityStats = {
  source: 'page server tcp://10.0.0.5:7000', state: 'unavailable', outages: 1, outageMs: 4_210,
  current: { since: Date.now() - 4_210, forMs: 4_210, readsWaiting: 3, deadlineInMs: 25_790 },
};

describe('a VM\'s network source out of reach, in the vm commands\' words', () => {
  test('vm restore --lazy --from tcp:// prints the outage as it begins, goes on and ends', () => {
    assert.deepEqual(formatEvent({ event: 'source', availability: { type: 'unavailable', source: 'page server tcp://10.0.0.5:7000', since: Date.now(), readsWaiting: 2, retrying: true, deadlineInMs: 30_000, error: 'connect ECONNREFUSED 10.0.0.5:7000' } }),
      ['page server tcp://10.0.0.5:7000 unreachable, guest waiting (2 reads blocked), retrying until the deadline in 30.0 s (last: connect ECONNREFUSED 10.0.0.5:7000)']);
    assert.deepEqual(formatEvent({ event: 'source', availability: { type: 'still-unavailable', source: 'page server tcp://10.0.0.5:7000', since: Date.now(), forMs: 5_000, readsWaiting: 3, retrying: true, deadlineInMs: 25_000, error: undefined } }),
      ['page server tcp://10.0.0.5:7000 still unreachable after 5.0 s, guest waiting (3 reads blocked), retrying until the deadline in 25.0 s']);
    assert.deepEqual(formatEvent({ event: 'source', availability: { type: 'restored', source: 'page server tcp://10.0.0.5:7000', afterMs: 5_300, readsWaited: 3 } }),
      ['page server tcp://10.0.0.5:7000 reconnected after 5.3 s (3 reads waited)']);
    assert.deepEqual(formatEvent({ event: 'source', availability: { type: 'gone', source: 'object s3://snapshots/vm1', reason: 'it did not answer for 30001 ms', afterMs: 30_001, readsFailed: 1 } }),
      ['object s3://snapshots/vm1 given up after 30.0 s unreachable: it did not answer for 30001 ms; 1 read failed']);
  });

  test('vm status shows the outage while it lasts, and what the source went through after', () => {
    assert.match(formatStatus(status(during)).join('\n'), /^page server tcp:\/\/10\.0\.0\.5:7000 unreachable for 4\.2 s, 3 reads waiting, deadline in 25\.8 s$/m);
    const after: AvailabilityStats = { source: during.source, state: 'available', outages: 1, outageMs: 5_300, current: undefined };
    assert.match(formatStatus(status(after)).join('\n'), /^page server tcp:\/\/10\.0\.0\.5:7000 reachable \(1 outage, 5\.3 s in all\)$/m);
    const closed: AvailabilityStats = { ...after, state: 'closed' };
    assert.match(formatStatus(status(closed)).join('\n'), /^page server tcp:\/\/10\.0\.0\.5:7000 closed \(1 outage, 5\.3 s in all\)$/m, 'an eager restore\'s source, done with');
    const never: AvailabilityStats = { source: during.source, state: 'available', outages: 0, outageMs: 0, current: undefined };
    assert.doesNotMatch(formatStatus(status(never)).join('\n'), /reachable|unreachable/, 'a source that never lost its peer adds no line');
  });

  test('/metrics has the gauge and counters, and the dashboard\'s frame reads them', async () => {
    const registry = new MetricsRegistry({ components: ['pager', 'vm', 'source'], processMetrics: false });
    registry.report(sourceReporter(() => during));
    const text = await registry.scrape();
    assert.match(text, /^userfault_source_unavailable 1$/m);
    assert.match(text, /^userfault_source_outages_total 1$/m);
    assert.match(text, /^userfault_source_outage_seconds_total 4\.21$/m);
    assert.match(text, /^userfault_source_reads_waiting 3$/m);
    const frame = buildFrame({ seq: 1, time: Date.now(), source: 's', samples: new SampleSet(parsePrometheusText(text)) });
    assert.deepEqual(frame.networkSource, { unavailable: true, readsWaiting: 3, outages: 1, outageSeconds: 4.21 });
    // A process without a network source has no such series, and no line on the dashboard.
    const local = new MetricsRegistry({ components: ['pager', 'vm', 'source'], processMetrics: false });
    local.report(sourceReporter(() => undefined));
    const none = buildFrame({ seq: 1, time: Date.now(), source: 's', samples: new SampleSet(parsePrometheusText(await local.scrape())) });
    assert.equal(none.networkSource, undefined);
  });
});
