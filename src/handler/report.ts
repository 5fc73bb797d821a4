// The handler's log lines: one per client event, and the summary printed at shutdown.
import type { ClientSummary } from './client-session.js';
import type { HandshakeRegion } from './handshake.js';
import type { HandlerServerSummary } from './handler-server.js';

export function formatRegions(regions: readonly HandshakeRegion[]): string {
  return regions
    .map((r) => `0x${r.hostAddress.toString(16)}+${r.lengthBytes} <- offset ${r.fileOffset}`)
    .join(', ');
}

/** "client 3: gone (hangup) after 1.2 s: 256 faults, 1024 pages copied, 12 zero pages". */
export function formatClientGone(summary: ClientSummary): string {
  const m = summary.metrics;
  const served = m
    ? `${m.faults} faults, ${m.pagesCopied + summary.probePagesCopied} pages copied, ${m.zeroPages} zero pages` +
      (m.sourceErrors ? `, ${m.sourceErrors} source errors` : '') +
      (m.unknownFaults ? `, ${m.unknownFaults} faults outside every region` : '')
    : 'never served';
  const errors = summary.errorsReported ? `, ${summary.errorsReported} errors` : '';
  return `client ${summary.id}: gone (${summary.endReason ?? summary.state}) after ${(summary.connectedMs / 1000).toFixed(1)} s: ${served}${errors}`;
}

export function formatServerSummary(summary: HandlerServerSummary): string[] {
  const t = summary.totals;
  const lines = [`summary: ${t.clients} clients, ${t.faults} faults, ${t.pagesCopied} pages copied, ${t.zeroPages} zero pages from ${summary.source}`];
  for (const client of summary.clients) {
    const m = client.metrics;
    lines.push(
      `  client ${client.id}: ${m ? `${m.faults} faults served, ${m.pagesCopied + client.probePagesCopied} pages copied, ${m.zeroPages} zero pages, p99 ${m.latencyMicros.p99} µs` : 'never served'}` +
        ` (${client.endReason ?? client.state}${client.endError ? `: ${client.endError}` : ''})`,
    );
  }
  return lines;
}
