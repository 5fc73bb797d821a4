// docs/metrics.md, generated from the catalog: every metric with its type,
// labels and meaning, by the process that exports it. test/metrics/catalog.test.ts
// checks the file is this text, so the two cannot drift; after changing the
// catalog, `node dist/src/metrics/metrics-doc.js --write` rewrites it.
import { writeFileSync } from 'node:fs';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { METRICS, type MetricComponent, type MetricDefinition } from './catalog.js';
import { LATENCY_BUCKET_BOUNDS_SECONDS } from '../stats/latency-histogram.js';

const SECTIONS: ReadonlyArray<[MetricComponent, string, string]> = [
  ['pager', 'The pager', 'Exported by a VMM whose guest RAM a pager serves (a lazy restore, an incoming post-copy migration), and by `userfault serve` (summed over its clients, the ones gone included).'],
  ['vm', 'The VMM', 'Exported by every VMM (`userfault vm run|restore|receive`).'],
  ['migration', 'Live migration', 'Exported by a VMM while it migrates a VM out (`role="source"`) or in (`role="destination"`), and after.'],
  ['handler', 'The page-fault handler service', 'Exported by `userfault serve` (with the pager\'s metrics above).'],
  ['page-server', 'The page server', 'Exported by `userfault pages serve`.'],
  ['source', 'A network source', 'Exported by a process whose pages come over the network: `userfault serve --from tcp://…|s3://…`, a VMM restoring lazily with `--from` (its source outlives the restore), a VMM receiving a post-copy migration. Each outage is also logged as it begins and as it ends (docs/handler.md, docs/vm.md).'],
];

function labelsCell(definition: MetricDefinition): string {
  const entries = Object.entries(definition.labels);
  if (entries.length === 0) return '';
  return entries.map(([name, values]) => `\`${name}\`: ${typeof values === 'string' ? values : values.map((v) => `\`${v}\``).join(', ')}`).join('; ');
}

export function renderMetricsDoc(): string {
  const lines = [
    '# Metrics',
    '',
    '<!-- Generated from src/metrics/catalog.ts by src/metrics/metrics-doc.ts; test/metrics/catalog.test.ts checks it. Do not edit by hand. -->',
    '',
    'Every userfault process that runs for long exports its metrics in the Prometheus text format',
    '(version 0.0.4, rendered by prom-client):',
    '',
    '- a VMM on its control socket, `GET /metrics` (`curl --unix-socket /tmp/vm.sock http://localhost/metrics`),',
    '  and on a TCP port with `--metrics 127.0.0.1:PORT` (`vm run`, `vm restore`, `vm receive`);',
    '- `userfault serve` and `userfault pages serve` with `--metrics 127.0.0.1:PORT`.',
    '',
    'A `--metrics` address is loopback unless `--metrics-allow-remote` is given (the process then warns in its log).',
    'The endpoint answers `GET /metrics` (and `HEAD`) only: another path is 404, another method 405, a request',
    'with a body 413, headers over 8 KiB 431.',
    '',
    'It answers only a `Host` that names it: `localhost`, a loopback address (`127.0.0.1`, `[::1]`) or the address',
    'it listens on, with or without a port; with `--metrics-allow-remote` also any IP address and the machine\'s',
    'host name (`os.hostname()`). Any other name is refused 421 with the reason: a web page whose name its owner',
    're-points at 127.0.0.1 (DNS rebinding) would otherwise read the metrics through a visitor\'s browser, and',
    'the `Host` header is the one thing such a page cannot forge. So scrape it by address, or by that host name;',
    'a Prometheus target `localhost:PORT` or `127.0.0.1:PORT` is fine. A request without `Host` (HTTP/1.0; no',
    'browser sends one) is answered; HTTP/1.1 requires one (400). A request with an `Origin` other than the',
    'endpoint itself (another site\'s script) is refused 403. The control socket has no such check: a Unix',
    'socket is out of a web page\'s reach.',
    '',
    'Slow or idle peers cannot keep a scrape out (src/net/connection-bounds.ts): a connection has 10 s for its',
    'headers and 30 s for its request (408 after), an idle one closes after 5 s, and at most 32 are open: at the',
    'cap a new connection closes the one idle longest (idle, or still sending its request), so only requests',
    'being answered are never closed for room (503 when all 32 are). A VMM\'s control socket is bounded the same',
    'way (16 connections, 60 s for a request).',
    '',
    'Names follow Prometheus\'s conventions: the `userfault_` prefix, base units (`_seconds`, `_bytes`), `_total` on',
    'counters. Every label has a closed set of values (listed below); none carries an address, a client or a path,',
    'so the number of series stays bounded (`vcpu` grows with the VM, to 255 at most). A series is there only while',
    'its component is: a VMM that is not restoring lazily has no pager series.',
    '',
    `Latency histograms have exponential buckets from 1 µs, doubling: \`le\` = ${LATENCY_BUCKET_BOUNDS_SECONDS.slice(0, 4).join(', ')}, …,`,
    `${LATENCY_BUCKET_BOUNDS_SECONDS.at(-1)} seconds and \`+Inf\` (a fault served from the page cache takes microseconds; prom-client's`,
    'default buckets start at 5 ms).',
    '',
    'Besides these, each process exports prom-client\'s standard process and Node.js metrics (`process_cpu_seconds_total`,',
    '`process_resident_memory_bytes`, `process_open_fds`, `nodejs_eventloop_lag_seconds`, `nodejs_heap_size_used_bytes`, …).',
  ];
  for (const [component, title, intro] of SECTIONS) {
    lines.push('', `## ${title}`, '', intro, '', '| metric | type | labels | meaning |', '|---|---|---|---|');
    for (const definition of Object.values(METRICS).filter((d) => d.component === component)) {
      lines.push(`| \`${definition.name}\` | ${definition.type} | ${labelsCell(definition)} | ${definition.help.replace(/\|/g, '\\|')} |`);
    }
  }
  return `${lines.join('\n')}\n`;
}

/** docs/metrics.md in this checkout. */
export const METRICS_DOC_PATH = fileURLToPath(new URL('../../../docs/metrics.md', import.meta.url));

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  if (process.argv.includes('--write')) writeFileSync(METRICS_DOC_PATH, renderMetricsDoc());
  else process.stdout.write(renderMetricsDoc());
}
