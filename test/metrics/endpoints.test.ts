// Every /metrics endpoint, scraped after real work: a lazy restore of a real
// guest (the VMM's control socket and its --metrics port), a Firecracker-style
// client's faults (`serve --metrics`), a RemoteSource's reads (`pages serve
// --metrics`). The numbers must be the operations performed, as the JSON
// status and the summaries of the same processes count them.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { SampleSet, parsePrometheusText } from '../../src/dashboard/prometheus-text.js';
import type { DestinationProgress } from '../../src/migrate/destination-migration.js';
import type { MigrationProgress } from '../../src/migrate/source-migration.js';
import { MetricsRegistry } from '../../src/metrics/metrics-registry.js';
import { startMetricsServer } from '../../src/metrics/metrics-server.js';
import { RemoteSource } from '../../src/pages/remote-source.js';
import { controlRequest } from '../../src/vmm-host/control-api.js';
import type { VmStatus } from '../../src/vm/vmm.js';
import { CLI, ChildRun, spawnClient, uffdSkipReason, writeMemoryFiles, tempDir as handlerTempDir } from '../handler/helpers.js';
import { PAGE, spawnPagesServe, tempDir as pagesTempDir, writeTestSnapshot } from '../pages/fixtures.js';
import { CutProxy } from '../migrate/cut-proxy.js';
import * as pair from '../migrate/vmm-pair.js';
import { getWith, occupy, statusOf } from '../net/hostile-clients.js';
import { cleanupList, kvmSkipReason, snapshotRunningWriter, spawnVmm, tempDir, vmmEvents, waitForSocket } from '../vm/helpers.js';

/** GET a URL (http://…) or a path on a control socket; the body as text and its content type. */
function get(target: { url: string } | { socketPath: string; path: string }): Promise<{ status: number; type: string; text: string }> {
  return new Promise((resolve, reject) => {
    const options = 'url' in target ? new URL(target.url) : { socketPath: target.socketPath, path: target.path };
    const req = request(options, (res) => {
      let text = '';
      res.setEncoding('utf8').on('data', (c: string) => (text += c));
      res.on('end', () => resolve({ status: res.statusCode!, type: String(res.headers['content-type']), text }));
    });
    req.on('error', reject);
    req.end();
  });
}

async function scrape(target: { url: string } | { socketPath: string; path: string }): Promise<SampleSet> {
  const answer = await get(target);
  assert.equal(answer.status, 200, answer.text);
  assert.equal(answer.type, 'text/plain; version=0.0.4; charset=utf-8');
  return new SampleSet(parsePrometheusText(answer.text));
}

/** The userfault_ samples, as comparable lines. */
const userfaultLines = (samples: SampleSet, text: string): string[] =>
  parsePrometheusText(text).filter((s) => s.name.startsWith('userfault_') && samples.has(s.name)).map((s) => `${s.name}${JSON.stringify(s.labels)} ${s.value}`).sort();

const kvmSkip = kvmSkipReason();

describe('a VMM\'s metrics', { skip: kvmSkip, timeout: 120_000 }, () => {
  let dir = '';
  let snap = '';
  let last = 0;

  before(async () => {
    if (kvmSkip) return;
    dir = mkdtempSync(join(tmpdir(), 'uf-metrics-'));
    snap = join(dir, 'vm.snap');
    last = await snapshotRunningWriter(snap);
  });
  after(() => {
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  test('a lazy restore: the control socket and the --metrics port say what the pager and the vCPUs did, as GET /vm does', async (t) => {
    const sock = join(tempDir(t), 'lazy.sock');
    const vmm = spawnVmm(t, ['restore', snap, '--lazy', '--api-sock', sock, '--metrics', '127.0.0.1:0']);
    await waitForSocket(sock);
    await vmm.console.waitFor(new RegExp(`hb ${last + 2} `));
    const url = (vmmEvents(vmm.stderr()).find((e) => e.event === 'metrics-listening') as { url?: string } | undefined)?.url;
    assert.match(url ?? '', /^http:\/\/127\.0\.0\.1:\d+\/metrics$/);

    // Paused, nothing moves: every endpoint must give the same numbers as the status.
    assert.equal((await controlRequest(sock, 'PATCH', '/vm', { state: 'Paused' })).status, 200);
    const status = (await controlRequest(sock, 'GET', '/vm')).body as VmStatus & { restore: NonNullable<VmStatus['restore']> };
    const memory = status.restore.memory!;
    const m = memory.metrics;
    const viaSocket = await get({ socketPath: sock, path: '/metrics' });
    const samples = new SampleSet(parsePrometheusText(viaSocket.text));
    const viaTcp = await get({ url: url! });
    assert.deepEqual(userfaultLines(samples, viaTcp.text), userfaultLines(samples, viaSocket.text), 'the TCP port and the control socket export one registry');
    assert.ok(samples.has('process_cpu_user_seconds_total'), 'and the process\'s own metrics');

    assert.ok(m.faults > 0, 'the guest faulted on its RAM');
    assert.equal(samples.sum('userfault_faults_total'), m.faults);
    for (const [kind, count] of Object.entries(m.faultsByKind)) assert.equal(samples.value('userfault_faults_total', { kind }), count, kind);
    assert.equal(samples.value('userfault_pages_installed_total', { how: 'copy' }), m.pagesCopied - m.pushedPages);
    assert.equal(samples.value('userfault_pages_installed_total', { how: 'zero' }), m.zeroPages);
    assert.equal(samples.value('userfault_copied_bytes_total'), m.bytesCopied);
    assert.equal(samples.value('userfault_copied_bytes_total'), m.pagesCopied * 4096);
    assert.equal(samples.value('userfault_source_reads_total'), m.sourceReads);
    assert.equal(samples.value('userfault_fault_latency_seconds_count'), m.latencyMicros.count);
    assert.equal(samples.value('userfault_source_read_latency_seconds_count'), m.sourceReads);
    assert.ok(Math.abs(samples.value('userfault_fault_latency_seconds_sum')! - (m.latencyMicros.mean * m.latencyMicros.count) / 1e6) < 0.001 + m.latencyMicros.count * 1e-6);
    // Pages by state: the 64 MiB of guest RAM, every one of its pages counted once.
    const pages = { missing: memory.pages.missing, 'in-flight': memory.pages.inFlight, present: memory.pages.present, discarded: memory.pages.discarded, unmapped: memory.pages.unmapped, poisoned: memory.pages.poisoned };
    for (const [state, count] of Object.entries(pages)) assert.equal(samples.value('userfault_pages', { state }), count, state);
    assert.equal(samples.sum('userfault_pages'), (64 << 20) / 4096);
    assert.equal(samples.value('userfault_pages_pending'), memory.storedPagesPending);

    assert.equal(samples.value('userfault_vm_state', { state: 'paused' }), 1);
    assert.equal(samples.all('userfault_vm_state').length, 1);
    assert.equal(samples.value('userfault_vm_memory_bytes'), 64 << 20);
    assert.equal(samples.value('userfault_restore_ready_seconds', { mode: 'lazy' }), status.restore.readyMs / 1000);
    const vcpu = status.vcpus[0]!;
    assert.equal(samples.value('userfault_vcpu_state', { vcpu: '0', state: 'paused' }), 1);
    assert.ok(vcpu.counters.exits > 0);
    assert.equal(samples.sum('userfault_vcpu_exits_total', { vcpu: '0' }), vcpu.counters.exits);
    assert.equal(samples.value('userfault_vcpu_exits_total', { vcpu: '0', reason: 'io' }), vcpu.counters.ioExits);
    assert.equal(samples.value('userfault_vcpu_kicks_total', { vcpu: '0' }), vcpu.counters.kicks);
    assert.ok(vcpu.blockedOnMemoryMs! > 0);
    assert.ok(Math.abs(samples.value('userfault_vcpu_blocked_seconds_total', { vcpu: '0' })! - vcpu.blockedOnMemoryMs! / 1000) < 1e-5);

    assert.equal((await controlRequest(sock, 'PATCH', '/vm', { state: 'Resumed' })).status, 200);
    assert.equal((await controlRequest(sock, 'PUT', '/serial/input', { data: 'q' })).status, 204);
    assert.equal(await vmm.exit, 0, vmm.stderr());
    assert.match(vmm.console.text, /verify pages=4096 bad=0/);
  });

  test('vCPU counters are live: a kick shows in /metrics at once, though the guest prints nothing', async (t) => {
    const sock = join(tempDir(t), 'idle.sock');
    // Idle, a heartbeat every 100 s: no console output, so no message from the vCPU worker for a long while.
    const vmm = spawnVmm(t, ['run', '--mem', '16M', '--cmdline', 'workload=idle hb=10000', '--api-sock', sock]);
    await waitForSocket(sock);
    await new Promise((r) => setTimeout(r, 300));
    const kicks = async (): Promise<number | undefined> => (await scrape({ socketPath: sock, path: '/metrics' })).value('userfault_vcpu_kicks_total', { vcpu: '0' });
    const before = await kicks();
    assert.equal(before, 0);
    for (let i = 1; i <= 3; i++) {
      assert.equal((await controlRequest(sock, 'PUT', '/serial/input', { data: 'z' })).status, 204);
      assert.equal(await kicks(), i, `kick ${i}, the moment the input was taken`);
    }
    const status = (await controlRequest(sock, 'GET', '/vm')).body as VmStatus;
    assert.equal(status.vcpus[0]!.counters.kicks, 3, 'GET /vm reads the same shared counters');
    await controlRequest(sock, 'PUT', '/actions', { action_type: 'Stop' });
    assert.equal(await vmm.exit, 0, vmm.stderr());
  });

  test('GET /memory-map draws guest RAM in at most the cells asked for; a bad count is 400', async (t) => {
    const sock = join(tempDir(t), 'map.sock');
    const vmm = spawnVmm(t, ['restore', snap, '--lazy', '--api-sock', sock]);
    await waitForSocket(sock);
    await vmm.console.waitFor(new RegExp(`hb ${last + 1} `));
    await controlRequest(sock, 'PATCH', '/vm', { state: 'Paused' });
    type MapAnswer = { pageCount: number; pagesPerCell: number; states: string };
    const small = (await controlRequest(sock, 'GET', '/memory-map?cells=64')).body as MapAnswer;
    assert.deepEqual([small.pageCount, small.pagesPerCell], [16384, 256]);
    assert.match(small.states, /^[0-5]{64}$/);
    // One page a cell: the map is the pager's page states, exactly.
    const full = (await controlRequest(sock, 'GET', '/memory-map?cells=16384')).body as MapAnswer;
    const pages = ((await controlRequest(sock, 'GET', '/vm')).body as VmStatus).restore!.memory!.pages;
    assert.equal(full.pagesPerCell, 1);
    assert.equal(full.states.match(/2/g)?.length, pages.present, 'the pages the guest touched are present');
    assert.equal(full.states.match(/0/g)?.length, pages.missing, 'the rest of a lazy restore is missing');
    for (const cells of ['0', '65537', 'x', '1.5']) assert.equal((await controlRequest(sock, 'GET', `/memory-map?cells=${cells}`)).status, 400, cells);
    assert.equal((await controlRequest(sock, 'DELETE', '/metrics')).status, 405);
    await controlRequest(sock, 'PUT', '/actions', { action_type: 'Stop' });
    await vmm.exit;
  });
});

const uffdSkip = uffdSkipReason();

/** A JSON log line's field, once the process printed it. */
async function logged(run: ChildRun, event: string): Promise<Record<string, unknown>> {
  return run.waitForEvent(event, 15_000);
}

describe('a live migration\'s metrics', { skip: kvmSkip, timeout: 120_000 }, () => {
  test('both sides: state, bytes, pages by kind, post-copy requests and downtime, as GET /migrate says', async (t) => {
    const dir = tempDir(t);
    const { run: src, sock: srcSock } = await pair.source(t, dir, 'workload=writer mem=16 hb=10 pattern=random seed=5');
    const { run: dst, sock: dstSock, host, port } = await pair.destination(t, dir);
    // Paced, so the post-copy push is caught in the middle; frozen there, nothing moves while both are read.
    const proxy = await CutProxy.start({ host, port: Number(port) }, { bytesPerSecond: 8e6 });
    t.after(() => proxy.close());
    assert.equal((await controlRequest(srcSock, 'PUT', '/migrate', { to: proxy.address, mode: 'postcopy' })).status, 202);
    const progress = async (sock: string): Promise<MigrationProgress> => (await controlRequest(sock, 'GET', '/migrate')).body as MigrationProgress;
    await pair.until('post-copy with pages pushed', async () => {
      const p = await progress(srcSock);
      return p.state === 'postcopy' && p.pushedPages > 200;
    });
    proxy.freeze();
    await new Promise((r) => setTimeout(r, 500));
    const p = await progress(srcSock);
    const source = await scrape({ socketPath: srcSock, path: '/metrics' });
    const role = { role: 'source' };
    assert.equal(source.value('userfault_migration_state', { ...role, state: 'postcopy' }), 1);
    assert.equal(source.all('userfault_migration_state').filter((s) => s.value === 1).length, 1, 'one state at a time');
    assert.equal(source.value('userfault_migration_transferred_bytes_total', role), p.transferredBytes);
    assert.ok(p.transferredBytes > 200 * 4096);
    assert.equal(source.value('userfault_migration_remaining_bytes', role), p.remainingPages * 4096);
    assert.equal(source.value('userfault_migration_pages_total', { ...role, kind: 'pushed' }), p.pushedPages);
    assert.equal(source.value('userfault_migration_pages_total', { ...role, kind: 'zero' }), p.zeroPagesSent);
    assert.equal(source.value('userfault_migration_postcopy_requests_total', role), p.postcopyRequests);
    assert.ok(p.downtime, 'switchover done');
    assert.equal(source.value('userfault_migration_downtime_seconds', role), p.downtime!.totalMs / 1000);
    proxy.thaw();

    assert.equal(await src.exit, 0, src.stderr());
    await pair.until('the destination\'s verdict', async () => vmmEvents(dst.stderr()).some((e) => e.event === 'migration'));
    const d = (await controlRequest(dstSock, 'GET', '/migrate')).body as DestinationProgress;
    assert.equal(d.state, 'completed');
    const destination = await scrape({ socketPath: dstSock, path: '/metrics' });
    const dRole = { role: 'destination' };
    assert.equal(destination.value('userfault_migration_state', { ...dRole, state: 'completed' }), 1);
    assert.equal(destination.value('userfault_migration_transferred_bytes_total', dRole), d.receivedBytes);
    assert.equal(destination.value('userfault_migration_pages_total', { ...dRole, kind: 'pushed' }), d.pushedPages);
    assert.equal(destination.value('userfault_migration_postcopy_requests_total', dRole), d.demandReads);
    assert.ok(d.demandReads > 0, 'the guest faulted on pages still at the source');
    // The guest's memory came in through the pager: its pages are all present now.
    assert.equal(destination.value('userfault_pages', { state: 'missing' }) ?? 0, 0);
    await controlRequest(dstSock, 'PUT', '/serial/input', { data: 'q' });
    assert.equal(await dst.exit, 0, dst.stderr());
    assert.match(dst.console.text, /verify pages=4096 bad=0/);
  });
});

describe('userfault serve --metrics', { skip: uffdSkip, timeout: 60_000 }, () => {
  test('a client\'s faults, its pages and its end are what the scrape says, and stay counted once it is gone', async (t) => {
    const dir = handlerTempDir(t);
    const files = await writeMemoryFiles(dir);
    const socketPath = join(dir, 'serve.sock');
    const child = spawn(process.execPath, [CLI, 'serve', '--socket', socketPath, '--snapshot', files.snapshotPath, '--metrics', '127.0.0.1:0', '--log-format', 'json'], { stdio: ['ignore', 'pipe', 'pipe'] });
    const server = new ChildRun(t, child, 'userfault serve', 30_000);
    const { url } = (await logged(server, 'metrics-listening')) as { url: string };
    await logged(server, 'listening');
    const empty = await scrape({ url });
    assert.equal(empty.sum('userfault_faults_total'), 0);
    assert.equal(empty.sum('userfault_handler_clients'), 0);

    const client = spawnClient(t, { socketPath, pageCount: 128, filePage: 256, send: 'one-message' }, 20_000);
    assert.equal((await client.waitForEvent('result')).badCount, 0);
    const gone = (await logged(server, 'client-gone')) as { endReason: string; probePagesCopied: number; metrics: { faults: number; pagesCopied: number; zeroPages: number; latencyMicros: { count: number } } };
    const samples = await scrape({ url });
    assert.ok(gone.metrics.faults > 0);
    assert.equal(samples.sum('userfault_faults_total'), gone.metrics.faults);
    assert.equal(samples.value('userfault_pages_installed_total', { how: 'copy' }), gone.metrics.pagesCopied);
    assert.equal(samples.value('userfault_pages_installed_total', { how: 'zero' }), gone.metrics.zeroPages);
    assert.equal(samples.value('userfault_handler_probe_pages_copied_total'), gone.probePagesCopied);
    // The client touched each of its 128 pages once: every one was copied, zero-filled or probed.
    assert.equal(gone.metrics.pagesCopied + gone.metrics.zeroPages + gone.probePagesCopied, 128);
    assert.equal(samples.value('userfault_fault_latency_seconds_count'), gone.metrics.latencyMicros.count);
    assert.equal(samples.value('userfault_handler_clients_ended_total', { reason: gone.endReason }), 1);
    assert.equal(samples.sum('userfault_handler_clients_ended_total'), 1);
    assert.equal(samples.sum('userfault_handler_clients'), 0);
    assert.equal(samples.has('userfault_pages'), false, 'no live pager, no page gauges');

    server.kill('SIGTERM');
    assert.deepEqual(await server.exit, { code: 0, signal: null });
  });

  test('a non-loopback --metrics needs --metrics-allow-remote (64); with it the log warns', async (t) => {
    const dir = handlerTempDir(t);
    const files = await writeMemoryFiles(dir);
    const refused = spawn(process.execPath, [CLI, 'serve', '--socket', join(dir, 'a.sock'), '--memory-file', files.rawPath, '--metrics', '0.0.0.0:0'], { stdio: ['ignore', 'pipe', 'pipe'] });
    const run = new ChildRun(t, refused, 'serve', 20_000);
    assert.equal((await run.exit).code, 64);
    assert.match(run.stderr, /--metrics 0\.0\.0\.0:0 is reachable from other hosts: .*; add --metrics-allow-remote to mean it \[EUSAGE\]/);
    const allowed = spawn(process.execPath, [CLI, 'serve', '--socket', join(dir, 'b.sock'), '--memory-file', files.rawPath, '--metrics', '0.0.0.0:0', '--metrics-allow-remote', '--log-format', 'json'], { stdio: ['ignore', 'pipe', 'pipe'] });
    const ok = new ChildRun(t, allowed, 'serve', 20_000);
    const warning = await logged(ok, 'metrics-remote');
    await logged(ok, 'listening');
    assert.equal(warning.level, 40);
    assert.match(String(warning.msg), /^warning: --metrics 0\.0\.0\.0:0: reachable from other hosts/);
    ok.kill('SIGTERM');
    assert.equal((await ok.exit).code, 0);
  });
});

describe('userfault pages serve --metrics', { timeout: 60_000 }, () => {
  test('a RemoteSource\'s reads are the scrape\'s reads, bytes and connections', async (t) => {
    const { path } = await writeTestSnapshot(pagesTempDir(t));
    const { run, port } = await spawnPagesServe(t, ['--snapshot', path, '--listen', '127.0.0.1:0', '--json', '--metrics', '127.0.0.1:0']);
    const { url } = (await run.waitForEvent('metrics-listening')) as { url: string };
    const source = await RemoteSource.connect(`tcp://127.0.0.1:${port}`);
    t.after(() => source.close());
    // Three reads of data pages (no zero page: the client would not ask for those).
    const reads: Array<[number, number, 'demand' | 'background']> = [[0, PAGE, 'demand'], [8 * PAGE, 3 * PAGE, 'background'], [16 * PAGE, 7 * PAGE, 'demand']];
    for (const [offset, length, priority] of reads) await source.read(offset, length, new Uint8Array(length), { priority });
    const samples = await scrape({ url });
    assert.equal(samples.value('userfault_page_server_reads_total'), reads.length);
    assert.equal(samples.value('userfault_page_server_served_bytes_total'), reads.reduce((n, [, length]) => n + length, 0));
    assert.equal(samples.value('userfault_page_server_read_latency_seconds_count'), reads.length);
    const connections = samples.value('userfault_page_server_connections_total')!;
    assert.ok(connections >= 1 && connections <= 2, `${connections} connections (the urgent one, and the bulk one once used)`);
    assert.equal(samples.value('userfault_page_server_clients'), connections);
    assert.equal(samples.value('userfault_page_server_errors_sent_total'), 0);
    await source.close();
    await run.waitForEvent('client-gone');
    await run.waitUntil(() => run.events.filter((e) => e.event === 'client-gone').length === connections, 'every connection gone');
    const after = await scrape({ url });
    assert.equal(after.value('userfault_page_server_clients'), 0);
    assert.equal(after.value('userfault_page_server_reads_total'), reads.length, 'counters stay once the connections are gone');
    run.kill('SIGTERM');
    assert.equal((await run.exit).code, 0);
  });
});


describe('a --metrics endpoint against a hostile web page and slow peers', { timeout: 30_000 }, () => {
  test('a Host naming another server (DNS rebinding) is refused 421, a cross-origin Origin 403; loopback Hosts are answered', async (t) => {
    const metrics = await startMetricsServer(new MetricsRegistry({ components: ['page-server'], processMetrics: false }), { host: '127.0.0.1', port: 0 });
    t.after(() => metrics.close());
    const { port } = metrics.address;
    const rebound = await getWith({ port }, '/metrics', { host: `evil.example:${port}` });
    assert.equal(statusOf(rebound), 421);
    assert.match(rebound, /\r\n\r\n.*evil\.example.*DNS rebinding/s);
    assert.doesNotMatch(rebound, /userfault_/);
    for (const host of ['localhost', `localhost:${port}`, `127.0.0.1:${port}`, `[::1]:${port}`]) {
      assert.equal(statusOf(await getWith({ port }, '/metrics', { host })), 200, host);
    }
    const crossOrigin = await getWith({ port }, '/metrics', { host: `127.0.0.1:${port}`, origin: 'http://evil.example' });
    assert.equal(statusOf(crossOrigin), 403);
    assert.equal(statusOf(await getWith({ port }, '/metrics', { host: `127.0.0.1:${port}`, origin: `http://127.0.0.1:${port}` })), 200);
  });

  test('16 idle and 16 slow connections do not keep a scrape from being answered within 2 s', async (t) => {
    const metrics = await startMetricsServer(new MetricsRegistry({ components: ['page-server'], processMetrics: false }), { host: '127.0.0.1', port: 0 });
    t.after(() => metrics.close());
    const hostile = await occupy({ port: metrics.address.port }, { idle: 16, slow: 16 });
    t.after(() => hostile.close());
    await new Promise((r) => setTimeout(r, 200));
    const started = Date.now();
    const answer = await getWith({ port: metrics.address.port }, '/metrics', { host: 'localhost' }, 2000);
    assert.equal(statusOf(answer), 200, `answered ${JSON.stringify(answer.slice(0, 80))} after ${Date.now() - started} ms`);
    assert.ok(Date.now() - started < 2000);
  });
});
