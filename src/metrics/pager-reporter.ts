// The pager's part of the metrics model: its counters (PagerMetrics) and, for
// a live pager, its page states, as the catalog's metrics.
import type { PagerGauges, PagerMetrics } from '../pager/metrics.js';
import { FAULT_KINDS } from '../pager/metrics.js';
import type { PageCounts } from '../pager/page-state.js';
import type { MetricsSink } from './metrics-registry.js';

const PAGE_COUNT_LABELS: ReadonlyArray<[keyof PageCounts, string]> = [
  ['missing', 'missing'], ['inFlight', 'in-flight'], ['present', 'present'], ['discarded', 'discarded'], ['unmapped', 'unmapped'], ['poisoned', 'poisoned'],
];

/** The counters and histograms of one pager (or of a sum of them). */
export function reportPagerCounters(sink: MetricsSink, m: PagerMetrics): void {
  for (const kind of FAULT_KINDS) sink.add('faults', m.faultsByKind[kind], { kind });
  // pagesCopied counts every UFFDIO_COPY'd page, pushed ones included.
  sink.add('pagesInstalled', m.pagesCopied - m.pushedPages, { how: 'copy' });
  sink.add('pagesInstalled', m.pushedPages, { how: 'push' });
  sink.add('pagesInstalled', m.zeroPages, { how: 'zero' });
  sink.add('pagesInstalled', m.wakes, { how: 'wake' });
  sink.add('pagesInstalled', m.pagesMapped, { how: 'cache' });
  sink.add('pageCacheFills', m.cacheFills);
  sink.add('copiedBytes', m.bytesCopied);
  sink.add('prefetchedPages', m.prefetchedPages);
  sink.add('prefetchHits', m.prefetchHits);
  sink.add('copyIoctls', m.copyIoctls);
  sink.add('copyRetries', m.copyRetries);
  sink.add('sourceReads', m.sourceReads);
  sink.add('sourceReadErrors', m.sourceErrors);
  sink.add('sourceReadsAborted', m.readsAborted);
  sink.add('pagesPoisoned', m.pagesPoisoned);
  sink.add('pushedPagesDropped', m.pushedPagesDropped);
  for (const [event, count] of Object.entries(m.events)) sink.add('uffdEvents', count, { event });
  sink.histogram('faultLatency', m.latency);
  sink.histogram('sourceReadLatency', m.sourceReadLatency);
}

/** A pager's gauges: pages by state, pending, reads in flight. */
export function reportPagerGauges(sink: MetricsSink, gauges: PagerGauges): void {
  for (const [key, state] of PAGE_COUNT_LABELS) sink.add('pages', gauges.pages[key], { state });
  sink.add('pagesPending', gauges.pendingPages);
  sink.add('sourceReadsInFlight', gauges.readsInFlight);
}
