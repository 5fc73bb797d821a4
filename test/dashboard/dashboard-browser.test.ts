// The dashboard in a real browser (Debian's chromium, headless, driven by
// playwright-core) while a real guest is restored lazily: the page updates by
// itself, its numbers are the VMM's /metrics, its memory map is the VMM's
// page states, it loads nothing from anywhere else, and a screenshot of it
// is saved under test-output/dashboard/. And, with no guest, the page
// against DNS rebinding (Chromium resolving an attacker's name to loopback).
//
// The browser runs as this process's user; as root Chromium refuses its
// sandbox, so it is launched with --no-sandbox (a test browser on a page of
// our own server, nothing else).
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { chromium, type Browser, type Page } from 'playwright-core';
import { SampleSet, parsePrometheusText } from '../../src/dashboard/prometheus-text.js';
import { DashboardServer } from '../../src/dashboard/dashboard-server.js';
import { metricsUrlSource } from '../../src/dashboard/dashboard-source.js';
import { MetricsRegistry } from '../../src/metrics/metrics-registry.js';
import { startMetricsServer } from '../../src/metrics/metrics-server.js';
import { controlRequest } from '../../src/vmm-host/control-api.js';
import { CLI, ChildRun } from '../handler/helpers.js';
import { cleanupList, kvmSkipReason, spawnVmm, tempDir, waitForSocket } from '../vm/helpers.js';

const CHROMIUM = spawnSync('bash', ['-c', 'command -v chromium'], { encoding: 'utf8' }).stdout.trim();
const skip = kvmSkipReason() ?? (CHROMIUM === '' ? 'no chromium (scripts/setup.sh installs Debian\'s)' : undefined);
const OUTPUT = fileURLToPath(new URL('../../../test-output/dashboard/', import.meta.url));

/** The number an element of the page holds (its data-value: the raw value, the text is formatted). */
async function pageNumber(page: Page, id: string): Promise<number> {
  const value = await page.getAttribute(`#${id}`, 'data-value');
  assert.ok(value !== null && value !== '', `#${id} holds a number`);
  return Number(value);
}

async function pageSeq(page: Page): Promise<number> {
  return Number(await page.getAttribute('body', 'data-seq'));
}

async function metrics(sock: string): Promise<SampleSet> {
  const reply = await new Promise<string>((resolve, reject) => {
    // controlRequest parses JSON; /metrics is text.
    import('node:http').then(({ request }) => {
      const req = request({ socketPath: sock, path: '/metrics' }, (res) => {
        let text = '';
        res.setEncoding('utf8').on('data', (c: string) => (text += c)).on('end', () => resolve(text));
      });
      req.on('error', reject);
      req.end();
    }, reject);
  });
  return new SampleSet(parsePrometheusText(reply));
}

describe('the dashboard in a browser, during a lazy restore', { skip, timeout: 120_000 }, () => {
  let dir = '';
  let snap = '';
  let browser: Browser | undefined;

  before(async () => {
    if (skip) return;
    dir = mkdtempSync(join(tmpdir(), 'uf-dashboard-'));
    snap = join(dir, 'vm.snap');
    const sock = join(dir, 'run.sock');
    const cleanup = cleanupList();
    // 32 MiB written once, then pages dirtied at 4000 a second: restored lazily, the guest keeps faulting for seconds.
    const run = spawnVmm(cleanup, ['run', '--mem', '64M', '--cmdline', 'workload=writer mem=32 hb=10 pattern=random seed=7 rate=4000', '--api-sock', sock]);
    try {
      await waitForSocket(sock);
      await run.console.waitFor(/fill pages=8192/, 30_000);
      assert.equal((await controlRequest(sock, 'PUT', '/snapshot/create', { snapshot_path: snap })).status, 200);
      await controlRequest(sock, 'PUT', '/actions', { action_type: 'Stop' });
      assert.equal(await run.exit, 0, run.stderr());
    } finally {
      cleanup.run();
    }
    browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'] });
  });
  after(async () => {
    await browser?.close();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  test('live numbers equal /metrics, the map is the page states, nothing from elsewhere; a screenshot', async (t) => {
    const sock = join(tempDir(t), 'lazy.sock');
    const vmm = spawnVmm(t, ['restore', snap, '--lazy', '--api-sock', sock]);
    await waitForSocket(sock);
    const dashboard = new ChildRun(t, spawn(process.execPath, [CLI, 'dashboard', '--api-sock', sock, '--listen', '127.0.0.1:0', '--interval-ms', '200', '--json'], { stdio: ['ignore', 'pipe', 'pipe'] }), 'userfault dashboard', 90_000);
    const { url } = (await dashboard.waitForEvent('listening')) as { url: string };
    assert.match(url, /^http:\/\/127\.0\.0\.1:\d+\/$/);

    const page = await browser!.newPage({ viewport: { width: 1400, height: 1000 } });
    const elsewhere: string[] = [];
    const errors: string[] = [];
    page.on('request', (request) => {
      if (!request.url().startsWith(url)) elsewhere.push(request.url());
    });
    page.on('pageerror', (error) => errors.push(error.message));
    await page.goto(url);
    // Pushed updates: the page's update count climbs and faults show without any reload.
    await page.waitForFunction(() => Number(document.body.dataset.seq) >= 3 && Number(document.getElementById('faults-total')!.dataset.value) > 0, undefined, { timeout: 15_000 });
    assert.equal(await page.textContent('#connection'), 'live');

    // Pause: nothing moves, so the page's next frames must show exactly what /metrics says.
    assert.equal((await controlRequest(sock, 'PATCH', '/vm', { state: 'Paused' })).status, 200);
    const pausedAt = await pageSeq(page);
    await page.waitForFunction((seq) => Number(document.body.dataset.seq) >= seq + 2, pausedAt, { timeout: 10_000 });
    const samples = await metrics(sock);
    const onPage = {
      faults: await pageNumber(page, 'faults-total'),
      latencyCount: await pageNumber(page, 'latency-count'),
      reads: await pageNumber(page, 'reads-total'),
      present: await pageNumber(page, 'pages-present'),
      missing: await pageNumber(page, 'pages-missing'),
      inFlight: await pageNumber(page, 'pages-in-flight'),
      pending: await pageNumber(page, 'pages-pending'),
      exits: await pageNumber(page, 'vcpu-0-exits'),
      faultRate: await pageNumber(page, 'faults-rate'),
    };
    const fromMetrics = {
      faults: samples.sum('userfault_faults_total'),
      latencyCount: samples.value('userfault_fault_latency_seconds_count'),
      reads: samples.value('userfault_source_reads_total'),
      present: samples.value('userfault_pages', { state: 'present' }),
      missing: samples.value('userfault_pages', { state: 'missing' }),
      inFlight: samples.value('userfault_pages', { state: 'in-flight' }),
      pending: samples.value('userfault_pages_pending'),
      exits: samples.sum('userfault_vcpu_exits_total', { vcpu: '0' }),
      faultRate: 0,
    };
    assert.deepEqual(onPage, fromMetrics);
    assert.ok(onPage.pending > 0 && onPage.missing > 0, `the lazy restore is still under way (${onPage.pending} pages to fill)`);
    assert.ok(onPage.faults > 1000, `the guest faulted its pages in (${onPage.faults})`);
    assert.match((await page.textContent('#vm-state')) ?? '', /^VM paused, 64\.0 MiB$/);
    assert.equal(await page.textContent('#vcpu-0-state'), 'paused');
    assert.match((await page.textContent('#restore')) ?? '', /restored lazy, ready in .*filling on demand/);
    const map = (await controlRequest(sock, 'GET', '/memory-map?cells=4096')).body as { states: string };
    assert.equal(await page.getAttribute('#memory-map', 'data-states'), map.states, 'the map on the page is the VMM\'s page states');
    assert.match(map.states, /2/);
    assert.match(map.states, /0/);

    mkdirSync(OUTPUT, { recursive: true });
    const shot = join(OUTPUT, 'lazy-restore.png');
    await page.screenshot({ path: shot, fullPage: true });
    assert.ok(statSync(shot).size > 20_000, 'a screenshot with something on it');

    // Resumed, the page moves on by itself.
    assert.equal((await controlRequest(sock, 'PATCH', '/vm', { state: 'Resumed' })).status, 200);
    await page.waitForFunction((faults) => Number(document.getElementById('faults-total')!.dataset.value) > faults, onPage.faults, { timeout: 10_000 });
    assert.deepEqual(elsewhere, [], 'everything the page loaded came from the dashboard');
    assert.deepEqual(errors, []);
    await page.close();

    await controlRequest(sock, 'PUT', '/actions', { action_type: 'Stop' });
    await vmm.exit;
    dashboard.kill('SIGTERM');
    assert.equal((await dashboard.exit).code, 0, dashboard.stderr);
  });
});

// No guest needed: a dashboard of a --metrics endpoint, and Chromium told that
// evil.example is 127.0.0.1 — what a DNS-rebinding attacker's name resolves
// to once re-pointed.
describe('the dashboard in a browser, against DNS rebinding', { skip: CHROMIUM === '' ? 'no chromium (scripts/setup.sh installs Debian\'s)' : undefined, timeout: 60_000 }, () => {
  test('the page works on 127.0.0.1 and localhost; at evil.example it is refused, and another site\'s script reads nothing', async (t) => {
    const metrics = await startMetricsServer(new MetricsRegistry({ components: ['page-server'], processMetrics: false }), { host: '127.0.0.1', port: 0 });
    t.after(() => metrics.close());
    const dashboard = await DashboardServer.start({ source: metricsUrlSource(metrics.url), listen: { host: '127.0.0.1', port: 0 }, intervalMs: 100 });
    t.after(() => dashboard.close());
    const { port } = dashboard.address;
    const browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox', '--host-resolver-rules=MAP evil.example 127.0.0.1'] });
    t.after(() => browser.close());
    const page = await browser.newPage();
    for (const origin of [`http://127.0.0.1:${port}`, `http://localhost:${port}`]) {
      const response = await page.goto(`${origin}/`);
      assert.equal(response?.status(), 200, origin);
      // The page's own EventSource and scripts are same-origin: it connects and updates.
      await page.waitForFunction(() => Number(document.body.dataset.seq) > 1, undefined, { timeout: 10_000 });
      assert.equal(await page.textContent('#connection'), 'live');
    }
    const rebound = await page.goto(`http://evil.example:${port}/`);
    assert.equal(rebound?.status(), 421);
    assert.match(await page.textContent('body') ?? '', /DNS rebinding/);
    const read = await page.evaluate(async (p) => (await fetch(`http://evil.example:${p}/frame`)).status, port);
    assert.equal(read, 421, 'the page at the rebound name reads no frame');
    // The rebound page's script asking the real server's name: a cross-origin request, its Origin is
    // http://evil.example:PORT, refused 403 (and the browser would not have shown it the answer anyway).
    const frameAnswers: { origin?: string; status: number }[] = [];
    dashboard.server.on('request', (req: IncomingMessage, res: ServerResponse) => {
      if (req.url === '/frame') res.on('finish', () => frameAnswers.push({ origin: req.headers.origin, status: res.statusCode }));
    });
    const thrown = await page.evaluate(async (p) => fetch(`http://127.0.0.1:${p}/frame`).then(() => 'read', (error: Error) => error.name), port);
    assert.equal(thrown, 'TypeError');
    assert.deepEqual(frameAnswers, [{ origin: `http://evil.example:${port}`, status: 403 }]);
  });
});

describe('the dashboard in a browser, its source gone', { skip: CHROMIUM === '' ? 'no chromium (scripts/setup.sh installs Debian\'s)' : undefined, timeout: 60_000 }, () => {
  test('the badge says "live" while the source answers and "source gone" (with the reason) once it stops, not live', async (t) => {
    const metrics = await startMetricsServer(new MetricsRegistry({ components: ['page-server'], processMetrics: false }), { host: '127.0.0.1', port: 0 });
    let metricsClosed = false;
    t.after(() => (metricsClosed ? undefined : metrics.close()));
    const dashboard = await DashboardServer.start({ source: metricsUrlSource(metrics.url), listen: { host: '127.0.0.1', port: 0 }, intervalMs: 100 });
    t.after(() => dashboard.close());
    const browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'] });
    t.after(() => browser.close());
    const page = await browser.newPage();
    await page.goto(`http://127.0.0.1:${dashboard.address.port}/`);
    await page.waitForFunction(() => document.getElementById('connection')?.textContent === 'live', undefined, { timeout: 10_000 });
    await metrics.close();
    metricsClosed = true;
    await page.waitForFunction(() => document.getElementById('connection')?.textContent === 'source gone', undefined, { timeout: 10_000 });
    assert.equal(await page.getAttribute('#connection', 'class'), 'badge off');
    assert.match(await page.getAttribute('#connection', 'title') ?? '', /\S/, 'the reason is on the badge');
  });
});
