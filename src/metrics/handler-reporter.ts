// `userfault serve`'s part of the metrics model: its clients, and their
// pagers summed (the sessions over included, so counters never go down).
import type { ClientEndReason, ClientState } from '../handler/client-session.js';
import type { HandlerServer } from '../handler/handler-server.js';
import type { Exactly, HANDLER_CLIENT_END_REASONS, HANDLER_CLIENT_STATES } from './catalog.js';
import type { MetricsReporter } from './metrics-registry.js';
import { reportPagerCounters, reportPagerGauges } from './pager-reporter.js';

// The catalog's label sets for the handler name exactly its states (every
// one but closed) and end reasons: a compile error here when they drift.
const clientStatesMatch: Exactly<typeof HANDLER_CLIENT_STATES, Exclude<ClientState, 'closed'>> = true;
const clientEndReasonsMatch: Exactly<typeof HANDLER_CLIENT_END_REASONS, ClientEndReason> = true;
void clientStatesMatch;
void clientEndReasonsMatch;

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
