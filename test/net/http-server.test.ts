// The read-only HTTP endpoints (--metrics, the dashboard) under a hostile peer: every bad request refused out loud.
import assert from 'node:assert/strict';
import { connect } from 'node:net';
import { after, before, describe, test } from 'node:test';
import { closeHttp, createBoundedHttpServer, listenHttp, sendText, checkListenAddress } from '../../src/net/http-server.js';
import { getWith, statusOf } from './hostile-clients.js';

/** Send raw bytes; resolve with everything the server answered until it closed (or 2 s passed). */
function raw(port: number, request: string | Buffer): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = connect(port, '127.0.0.1');
    let answer = '';
    const timer = setTimeout(() => socket.destroy(), 2000);
    socket.on('data', (chunk) => (answer += chunk.toString('latin1')));
    socket.on('error', reject);
    socket.on('close', () => {
      clearTimeout(timer);
      resolve(answer);
    });
    socket.end(request);
  });
}


describe('a bounded HTTP endpoint', { timeout: 30_000 }, () => {
  const server = createBoundedHttpServer({ routes: { '/metrics': { methods: ['GET'], handle: (_req, res) => sendText(res, 200, 'userfault_x 1\n') } } });
  let port = 0;
  before(async () => {
    port = (await listenHttp(server, { host: '127.0.0.1', port: 0 })).port;
  });
  after(() => closeHttp(server));

  test('GET answers; HEAD gives the headers without the body', async () => {
    const get = await raw(port, 'GET /metrics HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n');
    assert.equal(statusOf(get), 200);
    assert.match(get, /\r\n\r\nuserfault_x 1\n$/);
    const head = await raw(port, 'HEAD /metrics HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n');
    assert.equal(statusOf(head), 200);
    assert.doesNotMatch(head, /userfault_x/);
  });

  test('an unknown path is 404 naming the paths there are; a wrong method 405 with Allow', async () => {
    const missing = await raw(port, 'GET /etc/passwd HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n');
    assert.equal(statusOf(missing), 404);
    assert.match(missing, /no such path: \/etc\/passwd \(there are: \/metrics\)/);
    const post = await raw(port, 'DELETE /metrics HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n');
    assert.equal(statusOf(post), 405);
    assert.match(post, /\r\nallow: GET, HEAD\r\n/i);
  });

  test('a request with a body is 413 and closed; headers over 8 KiB 431; a garbage request line 400', async () => {
    const body = await raw(port, `GET /metrics HTTP/1.1\r\nhost: localhost\r\ncontent-length: 100000\r\n\r\n${'x'.repeat(1000)}`);
    assert.equal(statusOf(body), 413);
    const chunked = await raw(port, 'GET /metrics HTTP/1.1\r\nhost: localhost\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n');
    assert.equal(statusOf(chunked), 413);
    const headers = await raw(port, `GET /metrics HTTP/1.1\r\nhost: localhost\r\nx-big: ${'a'.repeat(20_000)}\r\n\r\n`);
    assert.equal(statusOf(headers), 431);
    assert.equal(statusOf(await raw(port, '\x00\x01\x02 garbage\r\n\r\n')), 400);
  });

  test('the server is still there for a well-behaved client after all that', async () => {
    assert.equal(statusOf(await raw(port, 'GET /metrics HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n')), 200);
  });
});

describe('a bounded HTTP endpoint and the Host it is asked by', { timeout: 30_000 }, () => {
  const routes = { '/metrics': { methods: ['GET' as const], handle: (_req: unknown, res: Parameters<typeof sendText>[0]) => sendText(res, 200, 'userfault_x 1\n') } };

  test('on loopback: a Host naming another server is 421 before any path is looked at; localhost, 127.0.0.1 and [::1] are answered', async (t) => {
    const server = createBoundedHttpServer({ routes });
    const { port } = await listenHttp(server, { host: '127.0.0.1', port: 0 });
    t.after(() => closeHttp(server));
    const refused = await getWith({ port }, '/nowhere', { host: 'evil.example' });
    assert.equal(statusOf(refused), 421);
    assert.doesNotMatch(refused, /\/metrics/, 'not even the list of paths');
    assert.match(refused, /\r\nconnection: close\r\n/i);
    for (const host of ['localhost', `localhost:${port}`, '127.0.0.1', `[::1]:${port}`]) assert.equal(statusOf(await getWith({ port }, '/metrics', { host })), 200, host);
  });

  test('listening on every interface: IP literals and the machine\'s name are answered, another name is still 421', async (t) => {
    const server = createBoundedHttpServer({ routes, hostNames: ['build-box'] });
    const { port } = await listenHttp(server, { host: '0.0.0.0', port: 0 });
    t.after(() => closeHttp(server));
    for (const host of ['127.0.0.1', `10.1.2.3:${port}`, `build-box:${port}`]) assert.equal(statusOf(await getWith({ port }, '/metrics', { host })), 200, host);
    assert.equal(statusOf(await getWith({ port }, '/metrics', { host: `evil.example:${port}` })), 421);
  });

  test('HTTP/1.0 without a Host is answered (no browser sends that); HTTP/1.1 without one is 400', async (t) => {
    const server = createBoundedHttpServer({ routes });
    const { port } = await listenHttp(server, { host: '127.0.0.1', port: 0 });
    t.after(() => closeHttp(server));
    assert.match(await raw(port, 'GET /metrics HTTP/1.0\r\n\r\n'), /^HTTP\/1\.1 200 [^]*userfault_x 1/);
    assert.equal(statusOf(await raw(port, 'GET /metrics HTTP/1.1\r\nconnection: close\r\n\r\n')), 400);
  });
});

describe('listen addresses', () => {
  test('loopback is the rule; another address needs its flag, and then the log is told', () => {
    const warnings: string[] = [];
    const policy = (allowed: boolean) => ({ allowed, flag: '--metrics-allow-remote', what: 'anyone there reads the metrics', warn: (m: string) => warnings.push(m) });
    assert.deepEqual(checkListenAddress('127.0.0.1:9100', '--metrics', policy(false)), { host: '127.0.0.1', port: 9100 });
    assert.deepEqual(checkListenAddress('[::1]:0', '--metrics', policy(false)), { host: '::1', port: 0 });
    assert.throws(() => checkListenAddress('0.0.0.0:9100', '--metrics', policy(false)), { code: 'EUSAGE', message: /--metrics 0\.0\.0\.0:9100 is reachable from other hosts: anyone there reads the metrics; add --metrics-allow-remote/ });
    assert.equal(warnings.length, 0);
    checkListenAddress('0.0.0.0:9100', '--metrics', policy(true));
    assert.match(warnings[0]!, /--metrics 0\.0\.0\.0:9100: reachable from other hosts/);
    assert.throws(() => checkListenAddress('nowhere', '--metrics', policy(true)), { code: 'EUSAGE' });
  });
});
