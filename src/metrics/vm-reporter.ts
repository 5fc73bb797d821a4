// The VMM's part of the metrics model: the VM, its vCPUs (their counters are
// live: read from the memory the vCPU threads add to), the pager serving
// guest RAM during a lazy restore or an incoming post-copy, and a migration.
import type { DestinationProgress } from '../migrate/destination-migration.js';
import type { MigrationProgress } from '../migrate/source-migration.js';
import { PAGE_SIZE } from '../native.js';
import type { PagerGauges, PagerMetrics } from '../pager/metrics.js';
import { VCPU_EXIT_REASONS, type VcpuCounters } from '../vm/vcpu-protocol.js';
import type { VcpuRunState } from '../vm/vcpu-state-machine.js';
import type { VmLifecycleState } from '../vm/vm-lifecycle.js';
import type { MetricsReporter, MetricsSink } from './metrics-registry.js';
import { reportPagerCounters, reportPagerGauges } from './pager-reporter.js';

/**
 * What this reporter reads of a VMM (the Vmm of vm/vmm.ts offers it). Named
 * here, by its shape, so the metrics layer depends on the VM's own types
 * only, never on the VMM class or on wherever the VMM host keeps it.
 */
export interface VmMetricsView {
  readonly state: VmLifecycleState;
  readonly machine: { readonly memoryBytes: number };
  lazyMemoryMetrics(): { metrics: PagerMetrics; gauges: PagerGauges; blocktimeByThread: ReadonlyMap<number, number> } | undefined;
  vcpuSnapshots(): ReadonlyArray<{ id: number; state: VcpuRunState; counters: VcpuCounters; threadId: number }>;
  readonly restoreTimings: { readonly readyMs: number; readonly mode: 'eager' | 'lazy' } | undefined;
}

/** `migration`: the live migration of this VM, out or in (its host follows it; the VM does not), if any. */
export function vmReporter(vmm: VmMetricsView, migration?: () => MigrationProgress | DestinationProgress | undefined): MetricsReporter {
  return (sink) => {
    sink.add('vmState', 1, { state: vmm.state });
    sink.add('vmMemory', vmm.machine.memoryBytes);
    const lazy = vmm.lazyMemoryMetrics();
    for (const vcpu of vmm.vcpuSnapshots()) {
      sink.add('vcpuState', 1, { vcpu: vcpu.id, state: vcpu.state });
      for (const reason of VCPU_EXIT_REASONS) sink.add('vcpuExits', vcpu.counters.exitsByReason[reason], { vcpu: vcpu.id, reason });
      sink.add('vcpuKicks', vcpu.counters.kicks, { vcpu: vcpu.id });
      sink.add('vcpuBlocked', (lazy?.blocktimeByThread.get(vcpu.threadId) ?? 0) / 1e6, { vcpu: vcpu.id });
    }
    const restore = vmm.restoreTimings;
    if (restore) {
      sink.add('restoreReady', restore.readyMs / 1000, { mode: restore.mode });
      sink.add('restoreComplete', lazy === undefined || lazy.gauges.pendingPages === 0 ? 1 : 0, { mode: restore.mode });
    }
    if (lazy) {
      reportPagerCounters(sink, lazy.metrics);
      reportPagerGauges(sink, lazy.gauges);
    }
    const progress = migration?.();
    if (progress) reportMigration(sink, progress);
  };
}

/** A migration's progress, either side, as the migration metrics. */
export function reportMigration(sink: MetricsSink, p: MigrationProgress | DestinationProgress): void {
  const role = p.role;
  sink.add('migrationState', 1, { role, state: p.state });
  sink.add('migrationElapsed', p.elapsedMs / 1000, { role });
  sink.add('migrationRecoveries', p.recoveries ?? 0, { role });
  if (p.role === 'source') {
    sink.add('migrationTransferredBytes', p.transferredBytes, { role });
    sink.add('migrationRemainingBytes', p.remainingPages * PAGE_SIZE, { role });
    sink.add('migrationRate', p.rateBytesPerSecond, { role });
    if (p.dirtyPagesPerSecond !== undefined) sink.add('migrationDirtyRate', p.dirtyPagesPerSecond, { role });
    sink.add('migrationRounds', p.round, { role });
    sink.add('migrationPages', p.dataPagesSent, { role, kind: 'data' });
    sink.add('migrationPages', p.zeroPagesSent, { role, kind: 'zero' });
    sink.add('migrationPages', p.pushedPages, { role, kind: 'pushed' });
    sink.add('migrationPostcopyRequests', p.postcopyRequests, { role });
    if (p.expectedDowntimeMs !== undefined) sink.add('migrationExpectedDowntime', p.expectedDowntimeMs / 1000, { role });
    if (p.downtime) sink.add('migrationDowntime', p.downtime.totalMs / 1000, { role });
    return;
  }
  sink.add('migrationTransferredBytes', p.receivedBytes, { role });
  sink.add('migrationRounds', p.rounds, { role });
  sink.add('migrationPages', p.dataPagesReceived, { role, kind: 'data' });
  sink.add('migrationPages', p.zeroPagesReceived, { role, kind: 'zero' });
  sink.add('migrationPages', p.pushedPages, { role, kind: 'pushed' });
  sink.add('migrationPages', p.stalePages, { role, kind: 'stale' });
  sink.add('migrationPostcopyRequests', p.demandReads, { role });
}
