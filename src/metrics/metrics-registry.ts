// The one metrics model of a process: every component that runs in it
// (its pagers, the VM, a migration, the handler service, the page server)
// registers a reporter, and a scrape asks each for its numbers as they are
// now and exports them in the Prometheus text format through prom-client.
//
// Components keep their own counters, cheap to bump on their hot paths (a
// fault costs a few µs; a prom-client lookup per increment would be a large
// share of that), and never hold prom-client objects: a reporter reads them
// at scrape time. Several reporters may add to the same series (the pagers
// of a handler's clients): counters and gauges with the same labels are
// summed, histograms merged bucket by bucket.
import client from 'prom-client';
import { METRICS, type MetricComponent, type MetricDefinition, type MetricId } from './catalog.js';
import { LATENCY_BUCKET_BOUNDS_SECONDS, type LatencyHistogram } from '../stats/latency-histogram.js';

export type Labels = Readonly<Record<string, string | number>>;

/** What a reporter writes into during a scrape. */
export interface MetricsSink {
  /** Add `value` to a counter or gauge series (series with the same labels from several reporters are summed). */
  add(id: MetricId, value: number, labels?: Labels): void;
  /** Merge a latency histogram into a histogram metric. */
  histogram(id: MetricId, histogram: LatencyHistogram): void;
}

/** Called at every scrape; reads the component's counters and writes them into the sink. */
export type MetricsReporter = (sink: MetricsSink) => void;

export interface MetricsRegistryOptions {
  /** The components whose metrics this process exports (the others are not listed at all). */
  components: readonly MetricComponent[];
  /** Also export prom-client's process and Node.js metrics (process_cpu_seconds_total, nodejs_heap_size_used_bytes, ...). Default true. */
  processMetrics?: boolean;
}

/** The Prometheus text format's content type (version 0.0.4). */
export const PROMETHEUS_CONTENT_TYPE = client.Registry.PROMETHEUS_CONTENT_TYPE;

interface Series {
  labels: Record<string, string>;
  value: number;
}

interface MergedHistogram {
  counts: number[];
  sumMicros: number;
  count: number;
}

/** One scrape's numbers, by metric id. */
class Scrape implements MetricsSink {
  readonly series = new Map<MetricId, Map<string, Series>>();
  readonly histograms = new Map<MetricId, MergedHistogram>();

  constructor(private readonly exported: ReadonlySet<MetricId>) {}

  add(id: MetricId, value: number, labels: Labels = {}): void {
    if (!this.exported.has(id)) return;
    const definition = METRICS[id];
    const names = Object.keys(definition.labels);
    const normalized: Record<string, string> = {};
    for (const name of names) {
      const label = labels[name];
      if (label === undefined) throw new Error(`${definition.name}: label ${name} missing`);
      normalized[name] = String(label);
    }
    if (Object.keys(labels).length !== names.length) throw new Error(`${definition.name}: labels ${Object.keys(labels).join(',')}, defined ${names.join(',')}`);
    const key = names.map((name) => normalized[name]).join('\u0000');
    let table = this.series.get(id);
    if (!table) this.series.set(id, (table = new Map()));
    const existing = table.get(key);
    if (existing) existing.value += value;
    else table.set(key, { labels: normalized, value });
  }

  histogram(id: MetricId, histogram: LatencyHistogram): void {
    if (!this.exported.has(id)) return;
    const buckets = histogram.buckets();
    const merged = this.histograms.get(id);
    if (!merged) {
      this.histograms.set(id, { counts: buckets.counts, sumMicros: buckets.sumMicros, count: buckets.count });
      return;
    }
    for (let k = 0; k < merged.counts.length; k++) merged.counts[k]! += buckets.counts[k]!;
    merged.sumMicros += buckets.sumMicros;
    merged.count += buckets.count;
  }
}

/** A registry, or how to make it on first use (a VMM makes its own only once the guest runs: prom-client's setup costs ms). */
export type RegistryRef = MetricsRegistry | (() => MetricsRegistry);

export function registryOf(ref: RegistryRef): MetricsRegistry {
  return typeof ref === 'function' ? ref() : ref;
}

export class MetricsRegistry {
  /** The prom-client registry the text is rendered from. */
  readonly prometheus = new client.Registry();
  private readonly reporters = new Set<MetricsReporter>();
  private readonly exported: ReadonlySet<MetricId>;
  private current: Scrape | undefined;
  private queue: Promise<unknown> = Promise.resolve();

  constructor(options: MetricsRegistryOptions) {
    const ids = (Object.keys(METRICS) as MetricId[]).filter((id) => options.components.includes(METRICS[id].component));
    this.exported = new Set(ids);
    for (const id of ids) this.define(id, METRICS[id]);
    if (options.processMetrics ?? true) client.collectDefaultMetrics({ register: this.prometheus });
  }

  /** Add a reporter; returns the function that removes it. */
  report(reporter: MetricsReporter): () => void {
    this.reporters.add(reporter);
    return () => this.reporters.delete(reporter);
  }

  /** The text a GET /metrics answers with. Scrapes run one at a time. */
  scrape(): Promise<string> {
    const run = this.queue.then(async () => {
      const scrape = new Scrape(this.exported);
      for (const reporter of this.reporters) reporter(scrape);
      this.current = scrape;
      try {
        return await this.prometheus.metrics();
      } finally {
        this.current = undefined;
      }
    });
    this.queue = run.catch(() => {});
    return run;
  }

  private define(id: MetricId, definition: MetricDefinition): void {
    if (!client.validateMetricName(definition.name)) throw new Error(`${definition.name} is not a Prometheus metric name`);
    // Every metric is a collector prom-client renders like its own: a series
    // is there exactly when a reporter wrote it this scrape (prom-client's
    // Counter would print a 0 for a component that is not running, and its
    // Histogram takes one observation at a time, where these arrive already
    // bucketed from each pager's LatencyHistogram).
    const current = (): Scrape | undefined => this.current;
    const collector = definition.type === 'histogram'
      ? histogramCollector(definition, () => current()?.histograms.get(id))
      : scalarCollector(definition, () => current()?.series.get(id)?.values() ?? []);
    this.prometheus.registerMetric(collector as unknown as client.Metric);
  }
}

/** A counter or gauge: the series the reporters wrote. */
function scalarCollector(definition: MetricDefinition, current: () => Iterable<Series>) {
  return {
    name: definition.name,
    help: definition.help,
    type: definition.type,
    aggregator: 'sum',
    reset() {},
    async get() {
      return { name: definition.name, help: definition.help, type: definition.type, aggregator: 'sum', values: [...current()].map((s) => ({ labels: s.labels, value: s.value })) };
    },
  };
}

/** A prom-client metric (name, help, type, get) serving merged LatencyHistogram buckets as seconds. */
function histogramCollector(definition: MetricDefinition, current: () => MergedHistogram | undefined) {
  return {
    name: definition.name,
    help: definition.help,
    type: 'histogram',
    aggregator: 'sum',
    reset() {},
    async get() {
      const merged = current() ?? { counts: new Array<number>(LATENCY_BUCKET_BOUNDS_SECONDS.length + 1).fill(0), sumMicros: 0, count: 0 };
      const values: { metricName: string; labels: Record<string, string | number>; value: number }[] = [];
      let cumulative = 0;
      LATENCY_BUCKET_BOUNDS_SECONDS.forEach((le, k) => {
        cumulative += merged.counts[k]!;
        values.push({ metricName: `${definition.name}_bucket`, labels: { le }, value: cumulative });
      });
      values.push({ metricName: `${definition.name}_bucket`, labels: { le: '+Inf' }, value: merged.count });
      values.push({ metricName: `${definition.name}_sum`, labels: {}, value: merged.sumMicros / 1e6 });
      values.push({ metricName: `${definition.name}_count`, labels: {}, value: merged.count });
      return { name: definition.name, help: definition.help, type: 'histogram', values, aggregator: 'sum' };
    },
  };
}
