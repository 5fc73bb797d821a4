// The handler's log lines: one per client event, and the summary printed at shutdown.
import type { ClientSummary } from './client-session.js';
import type { HandshakeRegion } from './handshake.js';
import type { HandlerServerSummary } from './handler-server.js';

export function formatRegions(regions: readonly HandshakeRegion[]): string {
  return regions
    .map((r) => `0x${r.hostAddress.toString(16)}+${r.lengthBytes} <- offset ${r.fileOffset}`)
    .join(', ');
}

/** How a client's pages went in: "1024 pages copied", or for a client of the page cache "24 pages copied, 1000 mapped from the page cache (600 put in it)". */
function pagesServed(summary: ClientSummary, m: NonNullable<ClientSummary['metrics']>): string {
  if (!summary.pageCache) return `${m.pagesCopied + summary.probePagesCopied} pages copied`;
  return `${m.pagesCopied} pages copied, ${m.pagesMapped + summary.probePagesCopied} mapped from the page cache (${m.cacheFills} put in it)`;
}

/** "client 3: gone (hangup) after 1.2 s: 256 faults, 1024 pages copied, 12 zero pages". */
export function formatClientGone(summary: ClientSummary): string {
  const m = summary.metrics;
  const served = m
    ? `${m.faults} faults, ${pagesServed(summary, m)}, ${m.zeroPages} zero pages` +
      (m.sourceErrors ? `, ${m.sourceErrors} source errors` : '') +
      (m.unknownFaults ? `, ${m.unknownFaults} faults outside every region` : '')
    : 'never served';
  const errors = summary.errorsReported ? `, ${summary.errorsReported} errors` : '';
  return `client ${summary.id}: gone (${summary.endReason ?? summary.state}) after ${(summary.connectedMs / 1000).toFixed(1)} s: ${served}${errors}`;
}

export function formatServerSummary(summary: HandlerServerSummary): string[] {
  const t = summary.totals;
  const mapped = t.pagesMapped > 0 ? `, ${t.pagesMapped} mapped from the page cache` : '';
  const lines = [`summary: ${t.clients} clients, ${t.faults} faults, ${t.pagesCopied} pages copied${mapped}, ${t.zeroPages} zero pages from ${summary.source}`];
  for (const client of summary.clients) {
    const m = client.metrics;
    lines.push(
      `  client ${client.id}: ${m ? `${m.faults} faults served, ${pagesServed(client, m)}, ${m.zeroPages} zero pages, p99 ${m.latencyMicros.p99} µs` : 'never served'}` +
        ` (${client.endReason ?? client.state}${client.endError ? `: ${client.endError}` : ''})`,
    );
  }
  return lines;
}
