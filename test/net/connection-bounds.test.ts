// What idle and slow HTTP peers can hold (src/net/connection-bounds.ts), on a
// real node:http server: at the cap the idlest connection makes room, only
// connections being answered are kept, and every kind of slowness times out.
import assert from 'node:assert/strict';
import { createServer, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { describe, test, type TestContext } from 'node:test';
import { boundHttpServer, DEFAULT_HTTP_BOUNDS, type HttpBounds } from '../../src/net/connection-bounds.js';
import { getWith, occupy, statusOf } from './hostile-clients.js';
import { until as untilWithin } from '../helpers/waiting.js';

/** A server whose /hold requests are answered only when release() is called; everything else at once. */
async function serve(t: TestContext, bounds: Partial<HttpBounds>): Promise<{ server: Server; port: number; held: ServerResponse[]; release(): void }> {
  const held: ServerResponse[] = [];
  const server = createServer((req, res) => {
    if (req.url === '/hold') held.push(res);
    else res.end('ok\n');
  });
  boundHttpServer(server, { ...DEFAULT_HTTP_BOUNDS, ...bounds });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const release = (): void => {
    for (const res of held.splice(0)) res.end('released\n');
  };
  t.after(() => {
    release();
    server.closeAllConnections();
    server.close();
  });
  return { server, port: (server.address() as AddressInfo).port, held, release };
}

const closed = (socket: Socket): boolean => socket.destroyed || socket.readableEnded;
const tick = (ms = 100): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** This file's waits: 3 s unless told, polled every 20 ms. */
const until = (what: string, check: () => boolean, timeoutMs = 3000): Promise<void> => untilWithin(what, check, timeoutMs, 20);

describe('connection bounds', { timeout: 30_000 }, () => {
  test('at the cap a new connection closes the one idle longest; the others stay open', async (t) => {
    const { port } = await serve(t, { maxConnections: 4 });
    const sockets: Socket[] = [];
    for (let i = 0; i < 4; i++) {
      sockets.push(...(await occupy({ port }, { idle: 1, slow: 0 })).sockets);
      t.after(() => sockets.forEach((s) => s.destroy()));
      await tick(20);
    }
    assert.equal(statusOf(await getWith({ port }, '/', { host: 'localhost' })), 200);
    await until('the oldest closed', () => closed(sockets[0]!));
    await tick();
    assert.deepEqual(sockets.slice(1).map(closed), [false, false, false]);
  });

  test('a peer still sending its request body makes room too; one being answered is kept; all being answered, one more is 503', async (t) => {
    const { port, held, release } = await serve(t, { maxConnections: 2 });
    // Requests sent without closing the sending side (a half-close would end a held answer).
    const peers = await occupy({ port }, { idle: 2, slow: 0 });
    t.after(() => peers.close());
    const [holding, slowBody] = peers.sockets as [Socket, Socket];
    holding.write('GET /hold HTTP/1.1\r\nhost: localhost\r\n\r\n');
    slowBody.write('POST /hold HTTP/1.1\r\nhost: localhost\r\ncontent-length: 1000\r\n\r\nab');
    await until('both requests in', () => held.length === 2);
    assert.equal(statusOf(await getWith({ port }, '/', { host: 'localhost' })), 200);
    await until('the slow body closed', () => closed(slowBody));
    assert.equal(closed(holding), false);
    // Two answers held now: nothing to close for room.
    const second = (await occupy({ port }, { idle: 1, slow: 0 }));
    t.after(() => second.close());
    second.sockets[0]!.write('GET /hold HTTP/1.1\r\nhost: localhost\r\n\r\n');
    await until('a second /hold in', () => held.length === 3);
    const refused = await getWith({ port }, '/', { host: 'localhost' });
    assert.equal(statusOf(refused), 503);
    assert.match(refused, /at most 2 connections at once, all being answered/);
    release();
    await until('the held answers out', () => statusOf(peers.answers.get(holding) ?? '') === 200 && statusOf(second.answers.get(second.sockets[0]!) ?? '') === 200);
    assert.equal(statusOf(await getWith({ port }, '/', { host: 'localhost' })), 200);
  });

  test('idle and dribbling peers are answered 408 after the header timeout; an idle keep-alive connection is closed', async (t) => {
    const { port } = await serve(t, { headersTimeoutMs: 300, requestTimeoutMs: 600, keepAliveTimeoutMs: 100 });
    const started = Date.now();
    const hostile = await occupy({ port }, { idle: 1, slow: 1 }, 50);
    t.after(() => hostile.close());
    for (const [i, socket] of hostile.sockets.entries()) {
      await until(`${i ? 'the dribbler' : 'the idle one'} answered 408 and closed`, () => statusOf(hostile.answers.get(socket) ?? '') === 408 && closed(socket));
    }
    assert.ok(Date.now() - started < 2000, `after ${Date.now() - started} ms`);
    const keepAlive = await occupy({ port }, { idle: 1, slow: 0 });
    t.after(() => keepAlive.close());
    const socket = keepAlive.sockets[0]!;
    socket.write('GET / HTTP/1.1\r\nhost: localhost\r\n\r\n');
    await until('answered', () => statusOf(keepAlive.answers.get(socket) ?? '') === 200);
    const answeredAt = Date.now();
    // Node closes it keepAliveTimeoutMs and a second of its own slack after the answer.
    await until('the keep-alive connection closed', () => closed(socket), 3000);
    assert.ok(Date.now() - answeredAt < 2000, `closed after ${Date.now() - answeredAt} ms`);
    assert.doesNotMatch(keepAlive.answers.get(socket)!, /408/);
  });

  test('a request timeout under the header timeout is refused', () => {
    assert.throws(() => boundHttpServer(createServer(), { ...DEFAULT_HTTP_BOUNDS, headersTimeoutMs: 1000, requestTimeoutMs: 500 }), RangeError);
  });
});
