// Pushed updates to every page, and what a slow or vanished page may cost: at most its bound, then it is dropped.
import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:http';
import { connect, type Socket } from 'node:net';
import { describe, test } from 'node:test';
import { SseBroadcaster } from '../../src/dashboard/sse-broadcaster.js';
import { closeHttp, listenHttp } from '../../src/net/http-server.js';
import { until as untilWithin } from '../helpers/waiting.js';

async function serve(sse: SseBroadcaster): Promise<{ server: Server; port: number }> {
  const server = createServer((req, res) => {
    sse.add(res, [{ event: 'frame', data: '{"seq":0}' }]);
  });
  return { server, port: (await listenHttp(server, { host: '127.0.0.1', port: 0 })).port };
}

function open(port: number): { socket: Socket; received: () => string } {
  const socket = connect(port, '127.0.0.1');
  let text = '';
  socket.on('data', (c) => (text += c.toString('utf8')));
  socket.on('error', () => {});
  socket.write('GET /events HTTP/1.1\r\nhost: x\r\n\r\n');
  return { socket, received: () => text };
}

/** This file's waits: 10 s, polled every 10 ms. */
const until = (what: string, check: () => boolean): Promise<void> => untilWithin(what, check, 10_000, 10);

describe('server-sent events', { timeout: 60_000 }, () => {
  test('a page gets the latest frame first, then every update; a multi-line payload stays one event', async () => {
    const sse = new SseBroadcaster();
    const { server, port } = await serve(sse);
    const page = open(port);
    await until('the stream', () => sse.stats.clients === 1);
    sse.send('frame', '{"seq":1}\n{"more":true}');
    await until('two frames', () => page.received().includes('"more"'));
    assert.match(page.received(), /text\/event-stream/);
    assert.match(page.received(), /event: frame\ndata: \{"seq":0\}\n\n/);
    assert.match(page.received(), /event: frame\ndata: \{"seq":1\}\ndata: \{"more":true\}\n\n/);
    page.socket.destroy();
    await until('the vanished page to be forgotten', () => sse.stats.clients === 0);
    sse.close();
    await closeHttp(server);
  });

  test('a page that stops reading is dropped once its unsent updates pass the bound; a reading page goes on', async () => {
    const maxBufferedBytes = 256 << 10;
    const sse = new SseBroadcaster({ maxBufferedBytes });
    const { server, port } = await serve(sse);
    const stuck = open(port);
    await until('the first stream', () => sse.stats.clients === 1);
    stuck.socket.pause(); // never reads again: the kernel's buffers fill, then Node's
    const reader = open(port);
    await until('the second stream', () => sse.stats.clients === 2);
    const update = JSON.stringify({ pad: 'x'.repeat(32 << 10) });
    let sent = 0;
    const started = Date.now();
    while (sse.stats.dropped === 0) {
      assert.ok(Date.now() - started < 30_000, `not dropped after ${sent} updates`);
      sse.send('frame', update);
      sent++;
      await new Promise((r) => setTimeout(r, 2));
    }
    assert.deepEqual(sse.stats, { clients: 1, dropped: 1 });
    await until('the reader to have everything', () => (reader.received().match(/event: frame/g)?.length ?? 0) === sent + 1);
    reader.socket.destroy();
    stuck.socket.destroy();
    sse.close();
    await closeHttp(server);
  });

  test('one page more than the limit is answered 503', async () => {
    const sse = new SseBroadcaster({ maxClients: 2 });
    const { server, port } = await serve(sse);
    const pages = [open(port), open(port)];
    await until('two streams', () => sse.stats.clients === 2);
    const third = open(port);
    await until('the refusal', () => /^HTTP\/1\.1 503/.test(third.received()));
    assert.match(third.received(), /at most 2 dashboards at once/);
    for (const page of [...pages, third]) page.socket.destroy();
    sse.close();
    await closeHttp(server);
  });
});
