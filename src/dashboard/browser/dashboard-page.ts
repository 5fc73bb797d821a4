// The dashboard page's script (compiled to dist/src/dashboard/browser/,
// served as /dashboard.js, a module). It opens /events and draws each frame
// the server pushes: the numbers as /metrics gave them (each element keeps
// the raw number in data-value), faults per second and the latency
// histograms with uPlot (served as /vendor/uplot.js), the guest-memory map
// on a canvas, the vCPUs and the migration. It fetches nothing else.
/// <reference lib="dom" />
import type uPlotType from 'uplot';
import type { DashboardFrame, HistogramView, MemoryMapView } from '../dashboard-frame.js';

type UPlotCtor = typeof uPlotType;
const uPlot = (globalThis as unknown as { uPlot: UPlotCtor }).uPlot;

const HISTORY = 120;
const STATE_COLORS = ['#3a4452', '#f0b429', '#35c07a', '#9b6dff', '#1c232c', '#ef4e4e'].map(hexToRgb);

function hexToRgb(hex: string): [number, number, number] {
  const n = parseInt(hex.slice(1), 16);
  return [(n >> 16) & 255, (n >> 8) & 255, n & 255];
}

function element<T extends HTMLElement = HTMLElement>(id: string): T {
  const found = document.getElementById(id);
  if (!found) throw new Error(`no #${id} on the page`);
  return found as T;
}

const integer = (n: number): string => Math.round(n).toLocaleString('en-US');

/** A number into an element: its text formatted, its value kept raw in data-value. */
function setNumber(id: string, value: number | undefined, format: (n: number) => string = integer): void {
  const el = element(id);
  el.dataset.value = value === undefined ? '' : String(value);
  el.textContent = value === undefined ? '–' : format(value);
}

function seconds(s: number | undefined): string {
  if (s === undefined) return '–';
  if (!Number.isFinite(s)) return '> 67 s';
  if (s < 1e-3) return `${Math.round(s * 1e6)} µs`;
  if (s < 1) return `${+(s * 1e3).toPrecision(3)} ms`;
  return `${+s.toPrecision(3)} s`;
}

function bytes(n: number | undefined): string {
  if (n === undefined) return '–';
  const units = ['B', 'KiB', 'MiB', 'GiB'];
  let v = n;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return `${u === 0 ? v : v.toFixed(1)} ${units[u]}`;
}

// ---- charts --------------------------------------------------------------

const rateData: [number[], number[], number[]] = [[], [], []];
let rateChart: uPlotType | undefined;
let latencyChart: uPlotType | undefined;
let bucketLabels: string[] = [];

function chartSize(id: string): { width: number; height: number } {
  const el = element(id);
  return { width: Math.max(200, el.clientWidth), height: Math.max(160, el.clientHeight - 30) };
}

function makeRateChart(): uPlotType {
  return new uPlot({
    ...chartSize('rate-chart'),
    scales: { x: { time: true }, y: { range: (_u, _min, max) => [0, max > 0 ? max * 1.1 : 1] } },
    series: [{}, { label: 'faults/s', stroke: '#4fa3ff', width: 2, fill: 'rgba(79,163,255,0.12)' }, { label: 'source reads/s', stroke: '#35c07a', width: 1.5 }],
    axes: [{ stroke: '#8a96a3', grid: { stroke: '#26303b' } }, { stroke: '#8a96a3', grid: { stroke: '#26303b' }, size: 60 }],
  }, rateData, element('rate-chart'));
}

function makeLatencyChart(buckets: number): uPlotType {
  const bars = uPlot.paths.bars!;
  const x = Array.from({ length: buckets }, (_, k) => k);
  return new uPlot({
    ...chartSize('latency-chart'),
    scales: { x: { time: false, range: [-0.5, buckets - 0.5] } },
    series: [
      { label: 'bucket', value: (_u, v) => (v === null ? '–' : `≤ ${bucketLabels[v] ?? '?'}`) },
      { label: 'faults', stroke: '#4fa3ff', fill: 'rgba(79,163,255,0.6)', paths: bars({ size: [0.45, 60], align: -1 }), points: { show: false } },
      { label: 'source reads', stroke: '#35c07a', fill: 'rgba(53,192,122,0.6)', paths: bars({ size: [0.45, 60], align: 1 }), points: { show: false } },
    ],
    axes: [
      { stroke: '#8a96a3', grid: { show: false }, values: (_u, splits) => splits.map((k) => bucketLabels[k] ?? ''), incrs: [1, 2, 4] },
      { stroke: '#8a96a3', grid: { stroke: '#26303b' }, size: 60 },
    ],
  }, [x, x.map(() => 0), x.map(() => 0)], element('latency-chart'));
}

function shortSeconds(s: number): string {
  if (!Number.isFinite(s)) return '+Inf';
  if (s < 1e-3) return `${Math.round(s * 1e6)}µs`;
  if (s < 1) return `${+(s * 1e3).toPrecision(3)}ms`;
  return `${+s.toPrecision(3)}s`;
}

function drawLatency(faults: HistogramView, reads: HistogramView): void {
  const bounds = faults.boundsSeconds.length ? faults.boundsSeconds : reads.boundsSeconds;
  if (bounds.length === 0) return;
  bucketLabels = [...bounds.map(shortSeconds), '+Inf'];
  const buckets = bounds.length + 1;
  latencyChart ??= makeLatencyChart(buckets);
  const x = Array.from({ length: buckets }, (_, k) => k);
  const counts = (h: HistogramView): number[] => x.map((k) => h.counts[k] ?? 0);
  latencyChart.setData([x, counts(faults), counts(reads)]);
}

// ---- the memory map ------------------------------------------------------

function drawMemoryMap(map: MemoryMapView | undefined): void {
  const canvas = element<HTMLCanvasElement>('memory-map');
  const scale = element('map-scale');
  if (!map) {
    scale.textContent = '(no page states from this source)';
    return;
  }
  const cells = map.states.length;
  const side = Math.max(1, Math.ceil(Math.sqrt(cells)));
  if (canvas.width !== side) {
    canvas.width = side;
    canvas.height = side;
  }
  const context = canvas.getContext('2d')!;
  const image = context.createImageData(side, side);
  for (let cell = 0; cell < side * side; cell++) {
    const state = cell < cells ? map.states.charCodeAt(cell) - 48 : 4;
    const [r, g, b] = STATE_COLORS[state] ?? STATE_COLORS[0]!;
    image.data.set([r, g, b, 255], cell * 4);
  }
  context.putImageData(image, 0, 0);
  canvas.dataset.cells = String(cells);
  canvas.dataset.states = map.states;
  const mib = (map.pagesPerCell * 4096) / (1 << 20);
  scale.textContent = `(${integer(map.pageCount)} pages; a cell is ${map.pagesPerCell} page${map.pagesPerCell === 1 ? '' : 's'}${mib >= 1 ? `, ${mib} MiB` : ''}; row by row from address 0)`;
}

// ---- the rest ------------------------------------------------------------

function drawVcpus(frame: DashboardFrame): void {
  const body = document.querySelector('#vcpus tbody')!;
  body.replaceChildren(...frame.vcpus.map((v) => {
    const row = document.createElement('tr');
    const reasons = Object.entries(v.exitsByReason).filter(([, n]) => n > 0).sort((a, b) => b[1] - a[1]).map(([r, n]) => `${r} ${integer(n)}`).join(', ');
    const cells: [string, string, number | undefined][] = [
      [`vcpu-${v.id}-id`, v.id, undefined], [`vcpu-${v.id}-state`, v.state, undefined], [`vcpu-${v.id}-exits`, integer(v.exits), v.exits],
      [`vcpu-${v.id}-exit-rate`, integer(v.exitsPerSecond), v.exitsPerSecond], [`vcpu-${v.id}-reasons`, reasons || '–', undefined],
      [`vcpu-${v.id}-kicks`, integer(v.kicks), v.kicks], [`vcpu-${v.id}-blocked`, seconds(v.blockedSeconds), v.blockedSeconds],
    ];
    for (const [id, text, value] of cells) {
      const td = document.createElement('td');
      td.id = id;
      td.textContent = text;
      if (value !== undefined) td.dataset.value = String(value);
      row.append(td);
    }
    return row;
  }));
}

/** A definition list from [term, description] pairs. */
function fillList(id: string, fields: [string, string][]): void {
  element(id).replaceChildren(...fields.flatMap(([k, v]) => {
    const dt = document.createElement('dt');
    dt.textContent = k;
    const dd = document.createElement('dd');
    dd.textContent = v;
    return [dt, dd];
  }));
}

const counts = (record: Record<string, number>): string => Object.entries(record).filter(([, n]) => n > 0).map(([k, n]) => `${k} ${integer(n)}`).join(', ') || '–';

/** What was served: faults by what they found, pages by how they were put in place; a handler's clients, a page server's reads. */
function drawServed(frame: DashboardFrame): void {
  const fields: [string, string][] = [
    ['faults found', counts(frame.faults.byKind)],
    ['pages installed', counts(frame.pagesInstalled)],
    ['source read errors', integer(frame.sourceReads.errors)],
  ];
  if (frame.handler) {
    fields.push(['clients now', counts(frame.handler.clients)]);
    fields.push(['clients ended', counts(frame.handler.ended)]);
  }
  if (frame.pageServer) {
    fields.push(['page server', `${integer(frame.pageServer.clients)} connections, ${integer(frame.pageServer.reads)} reads, ${bytes(frame.pageServer.servedBytes)} served, read p50 ${seconds(frame.pageServer.readLatency.p50Seconds)}`]);
  }
  const network = frame.networkSource;
  if (network) {
    const past = `${integer(network.outages)} outages, ${network.outageSeconds.toFixed(1)} s in all`;
    fields.push(['network source', network.unavailable ? `UNREACHABLE, ${integer(network.readsWaiting)} reads waiting (${past})` : `reachable (${past})`]);
  }
  fillList('served-fields', fields);
}

function drawMigration(frame: DashboardFrame): void {
  const m = frame.migration;
  element('migration-title').hidden = !m;
  element('migration').hidden = !m;
  if (!m) return;
  const total = m.remainingBytes === undefined ? undefined : m.transferredBytes + m.remainingBytes;
  element('migration-bar').style.width = total ? `${Math.min(100, (100 * m.transferredBytes) / total)}%` : m.state === 'completed' ? '100%' : '0%';
  const fields: [string, string][] = [
    ['role, phase', `${m.role}, ${m.state}${m.rounds ? ` (round ${m.rounds})` : ''}`],
    [m.role === 'source' ? 'sent' : 'received', bytes(m.transferredBytes)],
  ];
  if (m.remainingBytes !== undefined) fields.push(['to go', bytes(m.remainingBytes)]);
  if (m.rateBytesPerSecond !== undefined) fields.push(['rate', `${bytes(m.rateBytesPerSecond)}/s`]);
  if (m.dirtyPagesPerSecond !== undefined) fields.push(['dirty rate', `${integer(m.dirtyPagesPerSecond)} pages/s`]);
  fields.push(['pages', counts(m.pages)]);
  fields.push(['post-copy requests', integer(m.postcopyRequests)]);
  if (m.expectedDowntimeSeconds !== undefined) fields.push(['expected downtime', seconds(m.expectedDowntimeSeconds)]);
  if (m.downtimeSeconds !== undefined) fields.push(['downtime', seconds(m.downtimeSeconds)]);
  if (m.recoveries) fields.push(['recoveries', integer(m.recoveries)]);
  fields.push(['elapsed', seconds(m.elapsedSeconds)]);
  fillList('migration-fields', fields);
}

function draw(frame: DashboardFrame): void {
  setNumber('frame-seq', frame.seq);
  element('frame-time').textContent = new Date(frame.time).toLocaleTimeString('en-GB');
  element('source').textContent = frame.source;
  const error = element('error');
  error.hidden = frame.error === undefined;
  error.textContent = frame.error ? `cannot read ${frame.source}: ${frame.error}` : '';
  const state = element('vm-state');
  state.textContent = frame.vm ? `VM ${frame.vm.state}, ${bytes(frame.vm.memoryBytes)}` : frame.handler ? 'page-fault handler' : frame.pageServer ? 'page server' : '–';
  state.className = `badge ${frame.vm?.state ?? ''}`;
  element('restore').textContent = frame.restore
    ? `restored ${frame.restore.mode}, ready in ${seconds(frame.restore.readySeconds)}${frame.restore.complete ? ', memory complete' : ', filling on demand'}`
    : '';
  setNumber('faults-total', frame.faults.total);
  setNumber('faults-rate', frame.faults.perSecond);
  setNumber('latency-count', frame.faultLatency.count);
  element('latency-p50').textContent = seconds(frame.faultLatency.p50Seconds);
  element('latency-p99').textContent = seconds(frame.faultLatency.p99Seconds);
  setNumber('reads-total', frame.sourceReads.total);
  setNumber('reads-rate', frame.sourceReads.perSecond);
  setNumber('reads-in-flight', frame.sourceReads.inFlight);
  element('read-p50').textContent = seconds(frame.sourceReadLatency.p50Seconds);
  setNumber('pages-present', frame.pages?.present);
  setNumber('pages-missing', frame.pages?.missing);
  setNumber('pages-in-flight', frame.pages?.['in-flight']);
  setNumber('pages-discarded', frame.pages?.discarded);
  setNumber('pages-poisoned', frame.pages?.poisoned);
  setNumber('pages-pending', frame.pendingPages);

  if (!frame.error) {
    rateData[0].push(frame.time / 1000);
    rateData[1].push(frame.faults.perSecond);
    rateData[2].push(frame.sourceReads.perSecond);
    if (rateData[0].length > HISTORY) for (const series of rateData) series.shift();
    rateChart ??= makeRateChart();
    rateChart.setData(rateData);
    drawLatency(frame.faultLatency, frame.sourceReadLatency);
  }
  drawMemoryMap(frame.memoryMap);
  drawVcpus(frame);
  drawServed(frame);
  drawMigration(frame);
  if (frame.error !== sourceError) {
    sourceError = frame.error;
    showConnection();
  }
  document.body.dataset.seq = String(frame.seq);
}

// The badge says whether what is drawn is live: the page's stream to this
// server open, and the server still reading its source (a VM gone, a
// /metrics endpoint down: its frames carry the error, and the badge says so).
const connection = element('connection');
const events = new EventSource('/events');
let streamOpen = false;
let sourceError: string | undefined;
function showConnection(): void {
  const [text, live, title] = !streamOpen ? ['reconnecting', false, 'the page lost its stream to the dashboard server']
    : sourceError !== undefined ? ['source gone', false, sourceError]
    : ['live', true, ''];
  connection.textContent = text;
  connection.className = live ? 'badge live' : 'badge off';
  connection.title = title;
}
events.addEventListener('open', () => {
  streamOpen = true;
  showConnection();
});
events.addEventListener('error', () => {
  streamOpen = false;
  showConnection();
});
// The charts' recent past, sent once to a page opened after the dashboard started (before the latest frame).
events.addEventListener('history', (event) => {
  const points = JSON.parse((event as MessageEvent<string>).data) as Array<{ time: number; faultsPerSecond: number; sourceReadsPerSecond: number }>;
  for (const series of rateData) series.length = 0;
  for (const point of points.slice(-HISTORY)) {
    rateData[0].push(point.time / 1000);
    rateData[1].push(point.faultsPerSecond);
    rateData[2].push(point.sourceReadsPerSecond);
  }
});
events.addEventListener('frame', (event) => draw(JSON.parse((event as MessageEvent<string>).data) as DashboardFrame));
window.addEventListener('resize', () => {
  rateChart?.setSize(chartSize('rate-chart'));
  latencyChart?.setSize(chartSize('latency-chart'));
});
