// One update of the dashboard: what a scrape of /metrics (and the memory
// map) says, shaped for the page, with rates taken against the scrape
// before. Pure: the page shows exactly the numbers /metrics gave (the
// browser test checks this), nothing is counted twice.
import { METRICS } from '../metrics/catalog.js';
import { LATENCY_BUCKET_BOUNDS_SECONDS } from '../stats/latency-histogram.js';
import type { SampleSet } from './prometheus-text.js';

/** A latency histogram as the page draws it: per-bucket counts (not cumulative), the +Inf bucket last. */
export interface HistogramView {
  boundsSeconds: readonly number[];
  counts: number[];
  count: number;
  sumSeconds: number;
  /** The upper bound of the bucket the median / 99th percentile falls in (undefined with no observation). */
  p50Seconds?: number;
  p99Seconds?: number;
}

export interface VcpuView {
  id: string;
  state: string;
  exits: number;
  exitsPerSecond: number;
  exitsByReason: Record<string, number>;
  kicks: number;
  blockedSeconds: number;
}

export interface MigrationView {
  role: string;
  state: string;
  transferredBytes: number;
  remainingBytes?: number;
  rateBytesPerSecond?: number;
  dirtyPagesPerSecond?: number;
  rounds: number;
  postcopyRequests: number;
  pages: Record<string, number>;
  elapsedSeconds: number;
  downtimeSeconds?: number;
  expectedDowntimeSeconds?: number;
  recoveries: number;
}

export interface MemoryMapView {
  pageCount: number;
  pagesPerCell: number;
  /** One digit a cell: a PageState (src/pager/page-state.ts). */
  states: string;
}

export interface DashboardFrame {
  /** Frames since the dashboard started (the page shows it; a test waits on it). */
  seq: number;
  /** When the scrape was taken, ms since the epoch. */
  time: number;
  source: string;
  /** Set when the source could not be read this time (the rest is then empty). */
  error?: string;
  vm?: { state: string; memoryBytes: number };
  restore?: { mode: string; readySeconds: number; complete: boolean };
  faults: { total: number; perSecond: number; byKind: Record<string, number> };
  pagesInstalled: Record<string, number>;
  /** Pages of the image by state (a pager serves memory: a lazy restore, post-copy, serve). */
  pages?: Record<string, number>;
  pendingPages?: number;
  sourceReads: { total: number; perSecond: number; inFlight: number; errors: number };
  faultLatency: HistogramView;
  sourceReadLatency: HistogramView;
  vcpus: VcpuView[];
  migration?: MigrationView;
  handler?: { clients: Record<string, number>; ended: Record<string, number> };
  pageServer?: { clients: number; reads: number; servedBytes: number; readLatency: HistogramView };
  /** The network source pages come from (a page server, a store, a migration source): whether its peer is unreachable now, and its outages. */
  networkSource?: { unavailable: boolean; readsWaiting: number; outages: number; outageSeconds: number };
  memoryMap?: MemoryMapView;
}

function byLabel(samples: SampleSet, name: string, label: string, match: Record<string, string> = {}): Record<string, number> {
  const out: Record<string, number> = {};
  for (const s of samples.all(name, match)) {
    const key = s.labels[label];
    if (key !== undefined) out[key] = (out[key] ?? 0) + s.value;
  }
  return out;
}

/** A histogram's buckets from its cumulative `le` series. */
export function histogramView(samples: SampleSet, name: string): HistogramView {
  const bounds = LATENCY_BUCKET_BOUNDS_SECONDS;
  const cumulative = new Map<string, number>();
  for (const s of samples.all(`${name}_bucket`)) cumulative.set(s.labels.le!, (cumulative.get(s.labels.le!) ?? 0) + s.value);
  const count = samples.sum(`${name}_count`);
  const counts: number[] = [];
  let previous = 0;
  for (const le of bounds) {
    const c = cumulative.get(String(le)) ?? previous;
    counts.push(c - previous);
    previous = c;
  }
  counts.push(Math.max(0, count - previous));
  const view: HistogramView = { boundsSeconds: bounds, counts, count, sumSeconds: samples.sum(`${name}_sum`) };
  const quantile = (q: number): number | undefined => {
    if (count === 0) return undefined;
    let seen = 0;
    for (let k = 0; k < counts.length; k++) {
      seen += counts[k]!;
      if (seen >= q * count) return k < bounds.length ? bounds[k] : Infinity;
    }
    return Infinity;
  };
  const p50 = quantile(0.5);
  const p99 = quantile(0.99);
  if (p50 !== undefined) view.p50Seconds = p50;
  if (p99 !== undefined) view.p99Seconds = p99;
  return view;
}

const perSecond = (now: number, before: number | undefined, seconds: number): number => (before === undefined || seconds <= 0 ? 0 : Math.max(0, (now - before) / seconds));

/** The frame a scrape makes; `previous` (the last frame) gives the rates. */
export function buildFrame(input: { seq: number; time: number; source: string; samples: SampleSet; memoryMap?: MemoryMapView; previous?: DashboardFrame }): DashboardFrame {
  const { samples, previous } = input;
  const seconds = previous && !previous.error ? (input.time - previous.time) / 1000 : 0;
  const faultsByKind = byLabel(samples, METRICS.faults.name, 'kind');
  const faultsTotal = Object.values(faultsByKind).reduce((a, b) => a + b, 0);
  const sourceReads = samples.sum(METRICS.sourceReads.name);
  const frame: DashboardFrame = {
    seq: input.seq,
    time: input.time,
    source: input.source,
    faults: { total: faultsTotal, perSecond: perSecond(faultsTotal, previous?.faults.total, seconds), byKind: faultsByKind },
    pagesInstalled: byLabel(samples, METRICS.pagesInstalled.name, 'how'),
    sourceReads: {
      total: sourceReads,
      perSecond: perSecond(sourceReads, previous?.sourceReads.total, seconds),
      inFlight: samples.sum(METRICS.sourceReadsInFlight.name),
      errors: samples.sum(METRICS.sourceReadErrors.name),
    },
    faultLatency: histogramView(samples, METRICS.faultLatency.name),
    sourceReadLatency: histogramView(samples, METRICS.sourceReadLatency.name),
    vcpus: [],
  };
  if (samples.has(METRICS.pages.name)) {
    frame.pages = byLabel(samples, METRICS.pages.name, 'state');
    frame.pendingPages = samples.sum(METRICS.pagesPending.name);
  }
  const vmState = samples.all(METRICS.vmState.name).find((s) => s.value === 1);
  if (vmState) frame.vm = { state: vmState.labels.state!, memoryBytes: samples.sum(METRICS.vmMemory.name) };
  const ready = samples.all(METRICS.restoreReady.name)[0];
  if (ready) frame.restore = { mode: ready.labels.mode!, readySeconds: ready.value, complete: samples.sum(METRICS.restoreComplete.name) === 1 };
  for (const s of samples.all(METRICS.vcpuState.name)) {
    if (s.value !== 1) continue;
    const vcpu = s.labels.vcpu!;
    const exitsByReason = byLabel(samples, METRICS.vcpuExits.name, 'reason', { vcpu });
    const exits = Object.values(exitsByReason).reduce((a, b) => a + b, 0);
    const before = previous?.vcpus.find((v) => v.id === vcpu)?.exits;
    frame.vcpus.push({
      id: vcpu,
      state: s.labels.state!,
      exits,
      exitsPerSecond: perSecond(exits, before, seconds),
      exitsByReason,
      kicks: samples.sum(METRICS.vcpuKicks.name, { vcpu }),
      blockedSeconds: samples.sum(METRICS.vcpuBlocked.name, { vcpu }),
    });
  }
  frame.vcpus.sort((a, b) => Number(a.id) - Number(b.id));
  const migration = samples.all(METRICS.migrationState.name).find((s) => s.value === 1);
  if (migration) {
    const role = { role: migration.labels.role! };
    const optional = (name: string): number | undefined => samples.value(name, role);
    const view: MigrationView = {
      role: role.role,
      state: migration.labels.state!,
      transferredBytes: samples.sum(METRICS.migrationTransferredBytes.name, role),
      rounds: samples.sum(METRICS.migrationRounds.name, role),
      postcopyRequests: samples.sum(METRICS.migrationPostcopyRequests.name, role),
      pages: byLabel(samples, METRICS.migrationPages.name, 'kind', role),
      elapsedSeconds: samples.sum(METRICS.migrationElapsed.name, role),
      recoveries: samples.sum(METRICS.migrationRecoveries.name, role),
    };
    const fields: [keyof MigrationView, string][] = [
      ['remainingBytes', METRICS.migrationRemainingBytes.name], ['rateBytesPerSecond', METRICS.migrationRate.name], ['dirtyPagesPerSecond', METRICS.migrationDirtyRate.name],
      ['downtimeSeconds', METRICS.migrationDowntime.name], ['expectedDowntimeSeconds', METRICS.migrationExpectedDowntime.name],
    ];
    for (const [field, name] of fields) {
      const value = optional(name);
      if (value !== undefined) (view as unknown as Record<string, number>)[field] = value;
    }
    frame.migration = view;
  }
  if (samples.has(METRICS.handlerClients.name)) {
    frame.handler = { clients: byLabel(samples, METRICS.handlerClients.name, 'state'), ended: byLabel(samples, METRICS.handlerClientsEnded.name, 'reason') };
  }
  if (samples.has(METRICS.pageServerClients.name)) {
    frame.pageServer = {
      clients: samples.sum(METRICS.pageServerClients.name),
      reads: samples.sum(METRICS.pageServerReads.name),
      servedBytes: samples.sum(METRICS.pageServerServedBytes.name),
      readLatency: histogramView(samples, METRICS.pageServerReadLatency.name),
    };
  }
  if (samples.has(METRICS.sourceUnavailable.name)) {
    frame.networkSource = {
      unavailable: samples.sum(METRICS.sourceUnavailable.name) > 0,
      readsWaiting: samples.sum(METRICS.sourceReadsWaiting.name),
      outages: samples.sum(METRICS.sourceOutages.name),
      outageSeconds: samples.sum(METRICS.sourceOutageSeconds.name),
    };
  }
  if (input.memoryMap) frame.memoryMap = input.memoryMap;
  return frame;
}
