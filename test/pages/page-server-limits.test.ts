// The page server against clients that hold on to it (issue 17, items 6 and
// 7): clients that say HELLO and go quiet, clients that ask for pages and
// never read their socket, one peer address opening every connection. Real
// TCP on 127.0.0.1 (and 127.0.0.2 as a second peer); every wait is bounded.
import { describe, test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { fillPattern } from '../../src/demo/pattern.js';
import { MetricsRegistry } from '../../src/metrics/metrics-registry.js';
import { pageServerReporter } from '../../src/metrics/page-server-reporter.js';
import type { Message } from '../../src/protocol/index.js';
import { CLOSED_SUMMARIES_KEPT, startPageServer, type PageServer, type PageServerOptions, type ServedConnectionSummary } from '../../src/pages/index.js';
import { BufferSource } from '../../src/sources/buffer-source.js';
import { RemoteSource } from '../../src/pages/remote-source.js';
import type { PageSource, ReadOptions } from '../../src/sources/page-source.js';
import { RawClient } from './raw-client.js';
import { until } from '../helpers/waiting.js';

const MiB = 1024 * 1024;

function patternImage(bytes: number): Uint8Array {
  const image = new Uint8Array(bytes);
  fillPattern(image, 0, 5);
  return image;
}

async function server(t: TestContext, options: Partial<PageServerOptions> & { source: PageSource }): Promise<PageServer> {
  const started = await startPageServer(options);
  t.after(() => started.close());
  return started;
}

async function helloClient(t: TestContext, at: PageServer, localAddress?: string): Promise<RawClient> {
  const client = await RawClient.connect(at.address.port, '127.0.0.1', localAddress);
  t.after(() => client.destroy());
  await client.hello();
  return client;
}

function isError(code: string): (r: { message: Message }) => boolean {
  return (r) => r.message.type === 'error' && r.message.code === code;
}

/** Resolves with the summaries of the connections that end, until `count` have. */
function collectGone(at: PageServer): ServedConnectionSummary[] {
  const gone: ServedConnectionSummary[] = [];
  at.on('client-gone', (_client, summary) => gone.push(summary));
  return gone;
}

/** A source whose reads wait until released. */
class GatedSource implements PageSource {
  readonly description = 'gated test source';
  readonly waiting: Array<() => void> = [];
  constructor(private readonly image: Uint8Array) {}
  get sizeBytes(): number {
    return this.image.length;
  }
  read(offset: number, lengthBytes: number, target: Uint8Array, _options?: ReadOptions): Promise<void> {
    return new Promise((resolve) => this.waiting.push(() => {
      target.set(this.image.subarray(offset, offset + lengthBytes));
      resolve();
    }));
  }
  releaseAll(): void {
    for (const release of this.waiting.splice(0)) release();
  }
}

/** The bytes of live ArrayBuffers after a full collection: what the server really holds. */
function liveArrayBufferBytes(): number {
  setFlagsFromString('--expose-gc');
  const gc = runInNewContext('gc') as () => void;
  gc();
  gc();
  return process.memoryUsage().arrayBuffers;
}

describe('the page server against clients that hold on to it', () => {
  test('clients idle after HELLO do not lock a new client out: the quietest is closed to make room, the new one is served, and the idle ones are closed after idleTimeoutMs', { timeout: 20_000 }, async (t) => {
    const image = patternImage(MiB);
    const at = await server(t, { source: new BufferSource(image), maxConnections: 8, maxConnectionsPerPeer: 8, idleTimeoutMs: 3000 });
    const gone = collectGone(at);
    const idle: RawClient[] = [];
    for (let i = 0; i < 8; i++) idle.push(await helloClient(t, at));

    const newcomer = await helloClient(t, at);
    const reply = await newcomer.request({ type: 'read', offset: 4096, lengthBytes: 8192, priority: 'demand' });
    assert.equal(reply.type, 'checked-pages');
    assert.deepEqual(reply.type === 'checked-pages' && reply.data, image.subarray(4096, 4096 + 8192));
    // The first to say HELLO had been quiet longest: it made the room, told why.
    await idle[0]!.waitClosed(2000);
    assert.ok(idle[0]!.received.some(isError('SHUTTING_DOWN')));
    assert.equal(gone.find((s) => s.endReason === 'evicted')?.id, 1);

    // The rest go once idle for idleTimeoutMs; the newcomer was busy later, so it goes last.
    for (const client of idle.slice(1)) {
      await client.waitClosed(6000);
      assert.ok(client.received.some(isError('SHUTTING_DOWN')), 'an idle connection is told it is closed (reconnect when needed)');
    }
    await until('seven connections gone as idle', () => gone.filter((s) => s.endReason === 'idle').length >= 7);
  });

  test('a client that pings, or waits for a READ, is not idle', { timeout: 20_000 }, async (t) => {
    const source = new GatedSource(patternImage(MiB));
    const at = await server(t, { source, idleTimeoutMs: 1000 });
    const pinger = await helloClient(t, at);
    const reader = await helloClient(t, at);
    const readId = reader.newRequestId();
    reader.send({ type: 'read', offset: 0, lengthBytes: 4096, priority: 'demand' }, readId);
    // Twice the idle time, a PING every 100 ms.
    for (let i = 0; i < 20; i++) {
      await pinger.request({ type: 'ping', data: new Uint8Array([i]) });
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    assert.equal(pinger.isClosed, false);
    assert.equal(reader.isClosed, false);
    source.releaseAll();
    await reader.waitFor((r) => r.requestId === readId && r.message.type === 'checked-pages', 'the PAGES');
    // Now idle: closed.
    await reader.waitClosed(3000);
    await pinger.waitClosed(3000);
  });

  test('a RemoteSource whose connections were closed as idle reconnects and reads on, no protocol violation counted', { timeout: 20_000 }, async (t) => {
    const image = patternImage(MiB);
    const at = await server(t, { source: new BufferSource(image), idleTimeoutMs: 300 });
    const gone = collectGone(at);
    const source = await RemoteSource.connect(at.url, { connectTimeoutMs: 3000 });
    t.after(() => source.close());
    const target = new Uint8Array(8192);
    await source.read(0, 8192, target);
    await until('both its connections closed as idle', () => gone.filter((s) => s.endReason === 'idle').length >= 2);
    await source.read(65536, 8192, target);
    assert.deepEqual(target, image.subarray(65536, 65536 + 8192));
    assert.equal(source.stats.protocolViolations, 0);
    assert.ok(source.stats.reconnects >= 1);
  });

  test('a stream of short connections does not grow the server: it keeps the last CLOSED_SUMMARIES_KEPT summaries, and its totals count every one', { timeout: 30_000 }, async (t) => {
    const at = await server(t, { source: new BufferSource(patternImage(MiB)) });
    const count = CLOSED_SUMMARIES_KEPT + 100;
    let closed = 0;
    at.on('client-gone', () => closed++);
    for (let batch = 0; batch < count; batch += 50) {
      const clients = await Promise.all(Array.from({ length: Math.min(50, count - batch) }, () => RawClient.connect(at.address.port)));
      for (const client of clients) client.destroy();
      await until('the batch gone', () => closed >= batch + clients.length);
    }
    const summary = at.summary();
    assert.equal(summary.clients.length, CLOSED_SUMMARIES_KEPT);
    assert.equal(summary.totals.clients, count);
    // The first closed are let go (connections of one batch may close in any order).
    assert.ok(Math.min(...summary.clients.map((c) => c.id)) > count - CLOSED_SUMMARIES_KEPT - 50);
  });

  test('one peer address at its limit cannot take the rest: its next connection is refused BUSY while another address is served', { timeout: 20_000 }, async (t) => {
    const source = new GatedSource(patternImage(MiB));
    const at = await server(t, { source, maxConnections: 8, maxConnectionsPerPeer: 2 });
    // Busy: each waits for a READ, so neither is quiet enough to close.
    for (let i = 0; i < 2; i++) {
      const busy = await helloClient(t, at);
      busy.send({ type: 'read', offset: 0, lengthBytes: 4096, priority: 'demand' }, busy.newRequestId());
    }
    await until('both READs at the source', () => source.waiting.length === 2);
    const third = await RawClient.connect(at.address.port);
    t.after(() => third.destroy());
    await assert.rejects(third.hello(), /closed before HELLO answer/);
    assert.ok(third.received.some(isError('BUSY')), `refused BUSY, received ${JSON.stringify(third.received.map((r) => r.message))}`);

    const other = await helloClient(t, at, '127.0.0.2');
    assert.equal((await other.request({ type: 'get-info' })).type, 'info');
    source.releaseAll();
  });

  test('requests past maxQueuedPerConnection are answered BUSY, so a connection never has more outstanding', { timeout: 20_000 }, async (t) => {
    const source = new GatedSource(patternImage(MiB));
    const at = await server(t, { source, maxInFlightPerConnection: 1, maxQueuedPerConnection: 2 });
    const client = await helloClient(t, at);
    const ids: number[] = [];
    for (let i = 0; i < 10; i++) {
      const id = client.newRequestId();
      ids.push(id);
      client.send({ type: 'read', offset: i * 4096, lengthBytes: 4096, priority: 'demand' }, id);
    }
    await client.waitFor(() => client.received.filter(isError('BUSY')).length === 7, '7 BUSY replies');
    source.releaseAll();
    for (const id of ids.slice(0, 3)) {
      await client.waitFor((r) => r.requestId === id && r.message.type === 'checked-pages', `PAGES ${id}`);
      source.releaseAll();
    }
  });

  test('a client that never reads holds at most maxQueuedReplyBytesPerConnection, its further READs wait, and it is closed after sendTimeoutMs', { timeout: 20_000 }, async (t) => {
    const image = patternImage(16 * MiB);
    const perConnectionBytes = 4 * MiB + 4096;
    const at = await server(t, { source: new BufferSource(image), maxQueuedReplyBytesPerConnection: perConnectionBytes, sendTimeoutMs: 1500 });
    const gone = collectGone(at);
    const hog = await helloClient(t, at);
    hog.socket.pause();
    for (let i = 0; i < 64; i++) hog.send({ type: 'read', offset: (i % 16) * MiB, lengthBytes: MiB, priority: 'background' }, hog.newRequestId());
    // The kernel's socket buffers take the first replies; then the rest are held, and nothing more starts.
    await until('the hog to hold its replies', () => at.queuedReplyBytes >= MiB);
    await new Promise((resolve) => setTimeout(resolve, 200));
    const heldAt = at.summary().totals.reads;
    await new Promise((resolve) => setTimeout(resolve, 300));
    assert.ok(at.peakQueuedReplyBytes <= perConnectionBytes, `peak ${at.peakQueuedReplyBytes} > ${perConnectionBytes}`);
    assert.equal(at.summary().totals.reads, heldAt, 'no READ starts while its replies are not taken');
    assert.ok(heldAt < 64);
    const registry = new MetricsRegistry({ components: ['page-server'] });
    registry.report(pageServerReporter(at));
    assert.match(await registry.scrape(), new RegExp(`^userfault_page_server_queued_reply_bytes ${at.queuedReplyBytes}$`, 'm'));

    const good = await helloClient(t, at);
    const started = performance.now();
    for (let i = 0; i < 4; i++) assert.equal((await good.request({ type: 'read', offset: i * MiB, lengthBytes: MiB, priority: 'demand' }, 2000)).type, 'checked-pages');
    assert.ok(performance.now() - started < 2000);

    await until('the hog closed as stalled', () => gone.some((s) => s.endReason === 'stalled'), 5000);
    await until('its bytes given back', () => at.queuedReplyBytes === 0);
  });

  test('many clients that ask for big READs and never read hold at most maxQueuedReplyBytes together, and a well-behaved client is still served promptly', { timeout: 30_000 }, async (t) => {
    const image = patternImage(16 * MiB);
    const totalBytes = 16 * MiB;
    const at = await server(t, {
      source: new BufferSource(image),
      maxConnections: 64,
      maxConnectionsPerPeer: 64,
      maxQueuedReplyBytesPerConnection: 4 * MiB + 4096,
      maxQueuedReplyBytes: totalBytes,
      evictStalledAfterMs: 500,
    });
    const baselineBytes = liveArrayBufferBytes();
    let peakSeen = 0;
    const sampler = setInterval(() => {
      peakSeen = Math.max(peakSeen, at.queuedReplyBytes);
    }, 2);
    t.after(() => clearInterval(sampler));

    const hogs: RawClient[] = [];
    // Each could hold 4 MiB (its own bound): together twice the total.
    for (let h = 0; h < 16; h++) {
      const hog = await helloClient(t, at);
      hog.socket.pause();
      for (let i = 0; i < 64; i++) hog.send({ type: 'read', offset: ((h + i) % 16) * MiB, lengthBytes: MiB, priority: 'background' }, hog.newRequestId());
      hogs.push(hog);
    }
    await until('the hogs to fill the budget', () => at.queuedReplyBytes >= totalBytes - 2 * MiB);
    const heldBytes = liveArrayBufferBytes() - baselineBytes;
    assert.ok(heldBytes < totalBytes + 16 * MiB, `the server holds ${heldBytes} bytes of buffers for clients that do not read`);

    const good = await helloClient(t, at);
    const started = performance.now();
    for (let i = 0; i < 8; i++) {
      const offset = ((i * 5) % 16) * MiB;
      const reply = await good.request({ type: 'read', offset, lengthBytes: MiB, priority: 'demand' }, 4000);
      assert.equal(reply.type, 'checked-pages');
      assert.ok(reply.type === 'checked-pages' && Buffer.from(reply.data).equals(image.subarray(offset, offset + MiB)));
    }
    const tookMs = performance.now() - started;
    assert.ok(tookMs < 4000, `8 READs took ${Math.round(tookMs)} ms`);
    // Unasked replies (each HELLO answer) are counted but not held back: they may pass the bound by their few bytes.
    const slackBytes = 17 * 64;
    assert.ok(at.peakQueuedReplyBytes <= totalBytes + slackBytes, `peak ${at.peakQueuedReplyBytes} > ${totalBytes}`);
    assert.ok(peakSeen <= totalBytes + slackBytes);
  });
});
