// The dashboard's server without a browser: over --metrics-url it shows a
// real page server's work, answers only its own paths, and says so when its
// source goes away (then carries on when it is back).
import assert from 'node:assert/strict';
import { request } from 'node:http';
import { describe, test } from 'node:test';
import type { DashboardFrame } from '../../src/dashboard/dashboard-frame.js';
import { DashboardServer } from '../../src/dashboard/dashboard-server.js';
import { metricsUrlSource } from '../../src/dashboard/dashboard-source.js';
import { MetricsRegistry } from '../../src/metrics/metrics-registry.js';
import { startMetricsServer } from '../../src/metrics/metrics-server.js';
import { pageServerReporter } from '../../src/metrics/page-server-reporter.js';
import { startPageServer } from '../../src/pages/page-server.js';
import { BufferSource } from '../../src/sources/buffer-source.js';
import { RemoteSource } from '../../src/pages/remote-source.js';
import { getWith, occupy, statusOf } from '../net/hostile-clients.js';

function get(url: string, method = 'GET'): Promise<{ status: number; headers: Record<string, unknown>; text: string }> {
  return new Promise((resolve, reject) => {
    const req = request(url, { method }, (res) => {
      let text = '';
      res.setEncoding('utf8').on('data', (c: string) => (text += c)).on('end', () => resolve({ status: res.statusCode!, headers: res.headers, text }));
    });
    req.on('error', reject);
    req.end();
  });
}

async function frameWhere(dashboard: DashboardServer, what: string, check: (frame: DashboardFrame) => boolean): Promise<DashboardFrame> {
  const deadline = Date.now() + 10_000;
  for (;;) {
    const frame = dashboard.latest;
    if (frame && check(frame)) return frame;
    if (Date.now() > deadline) throw new Error(`no frame with ${what}; last: ${JSON.stringify(frame)}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

describe('the dashboard server', { timeout: 60_000 }, () => {
  test('shows a page server\'s reads from its --metrics endpoint, serves its own files, refuses the rest', async (t) => {
    const image = new Uint8Array(64 * 4096).map((_, i) => (i >> 12) + 1);
    const pages = await startPageServer({ source: new BufferSource(image) });
    t.after(() => pages.close());
    const registry = new MetricsRegistry({ components: ['page-server'], processMetrics: false });
    registry.report(pageServerReporter(pages));
    const metrics = await startMetricsServer(registry, { host: '127.0.0.1', port: 0 });
    t.after(() => metrics.close());
    const dashboard = await DashboardServer.start({ source: metricsUrlSource(metrics.url), listen: { host: '127.0.0.1', port: 0 }, intervalMs: 100 });
    t.after(() => dashboard.close());

    const client = await RemoteSource.connect(pages.url);
    t.after(() => client.close());
    for (let page = 0; page < 5; page++) await client.read(page * 4096, 4096, new Uint8Array(4096));
    const frame = await frameWhere(dashboard, '5 reads', (f) => f.pageServer?.reads === 5);
    assert.equal(frame.pageServer!.servedBytes, 5 * 4096);
    assert.equal(frame.pageServer!.readLatency.count, 5);
    assert.equal(frame.vm, undefined);
    assert.equal(frame.memoryMap, undefined, 'a /metrics URL has no memory map');

    const index = await get(dashboard.url);
    assert.equal(index.status, 200);
    assert.match(String(index.headers['content-security-policy']), /default-src 'self'/);
    assert.match(index.text, /<script src="\/vendor\/uplot\.js"><\/script>/);
    const uplot = await get(`${dashboard.url}vendor/uplot.js`);
    assert.equal(uplot.status, 200);
    assert.match(uplot.text, /uPlot/);
    assert.equal((await get(`${dashboard.url}dashboard.js`)).status, 200);
    const latest = JSON.parse((await get(`${dashboard.url}frame`)).text) as DashboardFrame;
    assert.ok(latest.seq >= frame.seq);
    assert.equal((await get(`${dashboard.url}../../etc/passwd`)).status, 404);
    assert.equal((await get(`${dashboard.url}node_modules/uplot/package.json`)).status, 404);
    const post = await get(dashboard.url, 'POST');
    assert.equal(post.status, 405);
    assert.equal(post.headers.allow, 'GET, HEAD');
  });

  test('a source that goes away is an error on the page, and the page carries on once it is back', async (t) => {
    const registry = new MetricsRegistry({ components: ['page-server'], processMetrics: false });
    let metrics = await startMetricsServer(registry, { host: '127.0.0.1', port: 0 });
    const { port } = metrics.address;
    const dashboard = await DashboardServer.start({ source: metricsUrlSource(metrics.url), listen: { host: '127.0.0.1', port: 0 }, intervalMs: 100 });
    t.after(() => dashboard.close());
    await frameWhere(dashboard, 'a first good frame', (f) => f.error === undefined);
    await metrics.close();
    const broken = await frameWhere(dashboard, 'an error', (f) => f.error !== undefined);
    assert.match(broken.error!, /ECONNREFUSED/);
    metrics = await startMetricsServer(registry, { host: '127.0.0.1', port });
    t.after(() => metrics.close());
    await frameWhere(dashboard, 'a good frame again', (f) => f.error === undefined && f.seq > broken.seq);
  });

  test('a page opened later gets the charts\' recent past first (one history event, the frames before the latest), then the latest frame', async (t) => {
    const registry = new MetricsRegistry({ components: ['page-server'], processMetrics: false });
    const metrics = await startMetricsServer(registry, { host: '127.0.0.1', port: 0 });
    t.after(() => metrics.close());
    const dashboard = await DashboardServer.start({ source: metricsUrlSource(metrics.url), listen: { host: '127.0.0.1', port: 0 }, intervalMs: 20 });
    t.after(() => dashboard.close());
    await frameWhere(dashboard, 'six polls', (f) => f.seq >= 6);
    const port = new URL(dashboard.url).port;
    const stream = await getWith({ port: Number(port) }, '/events', { host: `127.0.0.1:${port}` }, 300);
    const history = /event: history\ndata: (.*)\n/.exec(stream);
    assert.ok(history, `a history event: ${stream.slice(0, 300)}`);
    const points = JSON.parse(history[1]!) as Array<{ time: number; faultsPerSecond: number; sourceReadsPerSecond: number }>;
    assert.ok(points.length >= 5, `${points.length} points`);
    assert.ok(points.every((p, i) => i === 0 || p.time >= points[i - 1]!.time), 'oldest first');
    assert.ok(stream.indexOf('event: history') < stream.indexOf('event: frame'), 'the history before the latest frame');
    const frame = JSON.parse(/event: frame\ndata: (.*)\n/.exec(stream)![1]!) as DashboardFrame;
    assert.ok(frame.time > points.at(-1)!.time, 'the latest frame is not in the history');
  });

  test('a page reached by DNS rebinding is refused 421, a cross-origin stream 403; the page\'s own requests are answered', async (t) => {
    const metrics = await startMetricsServer(new MetricsRegistry({ components: ['page-server'], processMetrics: false }), { host: '127.0.0.1', port: 0 });
    t.after(() => metrics.close());
    const dashboard = await DashboardServer.start({ source: metricsUrlSource(metrics.url), listen: { host: '127.0.0.1', port: 0 }, intervalMs: 100 });
    t.after(() => dashboard.close());
    const { port } = dashboard.address;
    const self = `127.0.0.1:${port}`;
    for (const path of ['/', '/frame', '/events']) {
      const rebound = await getWith({ port }, path, { host: `evil.example:${port}` });
      assert.equal(statusOf(rebound), 421, path);
      assert.doesNotMatch(rebound, /userfault dashboard|"seq"|text\/event-stream/);
    }
    // What the page itself sends: the document, then same-origin requests (a browser adds Origin to some of them).
    assert.equal(statusOf(await getWith({ port }, '/', { host: self })), 200);
    assert.equal(statusOf(await getWith({ port }, '/frame', { host: `localhost:${port}`, origin: `http://localhost:${port}` })), 200);
    const stream = await getWith({ port }, '/events', { host: self, origin: `http://${self}` }, 300);
    assert.equal(statusOf(stream), 200);
    // Another site's script: refused before anything is read (its own page it may link to).
    assert.equal(statusOf(await getWith({ port }, '/events', { host: self, origin: 'http://evil.example' })), 403);
    assert.equal(statusOf(await getWith({ port }, '/frame', { host: self, origin: 'null' })), 403);
    assert.equal(statusOf(await getWith({ port }, '/', { host: self, origin: 'http://evil.example' })), 200);
  });

  test('32 idle and slow connections do not keep the page from being answered within 2 s', async (t) => {
    const metrics = await startMetricsServer(new MetricsRegistry({ components: ['page-server'], processMetrics: false }), { host: '127.0.0.1', port: 0 });
    t.after(() => metrics.close());
    const dashboard = await DashboardServer.start({ source: metricsUrlSource(metrics.url), listen: { host: '127.0.0.1', port: 0 }, intervalMs: 100 });
    t.after(() => dashboard.close());
    const hostile = await occupy({ port: dashboard.address.port }, { idle: 32, slow: 32 });
    t.after(() => hostile.close());
    await new Promise((r) => setTimeout(r, 200));
    const started = Date.now();
    assert.equal(statusOf(await getWith({ port: dashboard.address.port }, '/frame', { host: 'localhost' })), 200);
    assert.ok(Date.now() - started < 2000);
  });
});
