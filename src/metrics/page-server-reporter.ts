// `userfault pages serve`'s part of the metrics model: its connections and what they were served.
import type { PageServer } from '../pages/page-server.js';
import type { MetricsReporter } from './metrics-registry.js';

export function pageServerReporter(server: PageServer): MetricsReporter {
  return (sink) => {
    const { totals } = server.summary();
    sink.add('pageServerClients', server.clients.length);
    sink.add('pageServerConnections', totals.clients);
    sink.add('pageServerRequests', totals.requests);
    sink.add('pageServerReads', totals.reads);
    sink.add('pageServerServedBytes', totals.bytesServed);
    sink.add('pageServerSentBytes', totals.bytesSent);
    sink.add('pageServerErrorsSent', totals.errorsSent);
    sink.add('pageServerCancelled', totals.cancelled);
    sink.add('pageServerSourceErrors', totals.sourceErrors);
    sink.add('pageServerQueuedReplyBytes', server.queuedReplyBytes);
    sink.histogram('pageServerReadLatency', server.readLatency);
  };
}
