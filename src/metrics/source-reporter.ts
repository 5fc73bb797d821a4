// A network source's part of the metrics model: its peer's outages
// (src/sources/network/availability.ts counts them), for whichever process
// reads it: `serve --from`, a VMM restoring lazily from a URL or receiving a
// post-copy migration.
import type { AvailabilityStats } from '../sources/network/availability.js';
import type { MetricsReporter, MetricsSink } from './metrics-registry.js';

/** The outages of `stats`' source, as the catalog's source metrics. */
export function reportSourceAvailability(sink: MetricsSink, stats: AvailabilityStats): void {
  sink.add('sourceUnavailable', stats.state === 'unavailable' ? 1 : 0);
  sink.add('sourceOutages', stats.outages);
  sink.add('sourceOutageSeconds', stats.outageMs / 1000);
  sink.add('sourceReadsWaiting', stats.current?.readsWaiting ?? 0);
}

/** A reporter of the source `stats` returns now; nothing while there is none (a local file, no post-copy yet). */
export function sourceReporter(stats: () => AvailabilityStats | undefined): MetricsReporter {
  return (sink) => {
    const now = stats();
    if (now) reportSourceAvailability(sink, now);
  };
}
