// `userfault serve`'s part of the metrics model: its clients, and their
// pagers summed (the sessions over included, so counters never go down).
import type { HandlerServer } from '../handler/handler-server.js';
import type { MetricsReporter } from './metrics-registry.js';
import { reportPagerCounters, reportPagerGauges } from './pager-reporter.js';

export function handlerReporter(server: HandlerServer): MetricsReporter {
  return (sink) => {
    const view = server.metricsView();
    const connected = { handshaking: 0, starting: 0, serving: 0, closing: 0 };
    let probePages = view.goneProbePages;
    reportPagerCounters(sink, view.gone);
    for (const client of view.live) {
      if (client.state !== 'closed') connected[client.state]++;
      probePages += client.probePages;
      const pager = client.pager;
      if (!pager) continue;
      reportPagerCounters(sink, pager.metrics);
      reportPagerGauges(sink, { pages: pager.pageCounts(), pendingPages: pager.pendingPages, readsInFlight: pager.readsInFlight });
    }
    for (const [state, count] of Object.entries(connected)) sink.add('handlerClients', count, { state });
    for (const [reason, count] of Object.entries(view.endedByReason)) sink.add('handlerClientsEnded', count, { reason });
    sink.add('handlerProbePages', probePages);
  };
}
