// Which Host and Origin headers a TCP endpoint answers (DNS rebinding, another site's script): the pure rule.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { checkHostAndOrigin, parseHostHeader, type HostPolicy } from '../../src/net/host-policy.js';

const loopback: HostPolicy = { listenHost: '127.0.0.1', remote: false };
const remote: HostPolicy = { listenHost: '0.0.0.0', remote: true, names: ['build-box'] };
const get = { method: 'GET', isPage: false };
const statusFor = (host: string | undefined, policy: HostPolicy, origin?: string, request = get): number => {
  const verdict = checkHostAndOrigin({ ...(host === undefined ? {} : { host }), ...(origin === undefined ? {} : { origin }) }, request, policy);
  return verdict.ok ? 200 : verdict.status;
};

describe('the Host header', () => {
  test('splits into a lower-case host name and a port; brackets only around IPv6; junk is undefined', () => {
    assert.deepEqual(parseHostHeader('LocalHost:7070'), { hostname: 'localhost', port: 7070 });
    assert.deepEqual(parseHostHeader('[::1]:9100'), { hostname: '::1', port: 9100 });
    assert.deepEqual(parseHostHeader('127.0.0.1'), { hostname: '127.0.0.1' });
    assert.deepEqual(parseHostHeader('localhost:'), { hostname: 'localhost' });
    for (const junk of ['', '[localhost]:80', 'a b', 'x:99999', 'x:1:2', 'user@localhost', 'localhost/evil', '[::1']) assert.equal(parseHostHeader(junk), undefined, junk);
  });

  test('a loopback server answers loopback names and addresses, with or without a port, and nothing else', () => {
    for (const host of ['localhost', 'localhost:7070', 'LOCALHOST:7070', '127.0.0.1', '127.0.0.1:7070', '[::1]', '[::1]:7070', '127.1.2.3:80']) assert.equal(statusFor(host, loopback), 200, host);
    for (const host of ['evil.example', 'evil.example:7070', '10.0.0.5:7070', 'build-box:7070', 'localhost.evil.example', '0.0.0.0:7070', '', 'a b']) assert.equal(statusFor(host, loopback), 421, host);
  });

  test('a server allowed remote also answers any IP literal, its listen address and the names given; other names still 421', () => {
    for (const host of ['localhost:9100', '10.0.0.5:9100', '[fe80::1]:9100', '0.0.0.0:9100', 'build-box', 'BUILD-BOX:9100']) assert.equal(statusFor(host, remote), 200, host);
    for (const host of ['evil.example:9100', 'build-box.evil.example', '10.0.0.5.evil.example']) assert.equal(statusFor(host, remote), 421, host);
    assert.equal(statusFor('10.0.0.5:9100', { listenHost: '10.0.0.5', remote: false }), 200, 'the exact listen address');
  });

  test('no Host at all (only HTTP/1.0 may, and no browser does) is answered', () => {
    assert.equal(statusFor(undefined, loopback), 200);
  });

  test('the refusal says which Host it was and why', () => {
    const verdict = checkHostAndOrigin({ host: 'evil.example:7070' }, get, loopback);
    assert.equal(verdict.ok, false);
    assert.match(!verdict.ok ? verdict.reason : '', /answers to localhost, 127\.0\.0\.1 or \[::1\], not Host "evil\.example:7070": .*DNS rebinding/);
  });
});

describe('the Origin header', () => {
  test('this server\'s own origin is answered, ports and case normalised', () => {
    assert.equal(statusFor('127.0.0.1:7070', loopback, 'http://127.0.0.1:7070', { method: 'POST', isPage: false }), 200);
    assert.equal(statusFor('localhost', loopback, 'http://LOCALHOST:80'), 200);
    assert.equal(statusFor('[::1]:7070', loopback, 'http://[::1]:7070'), 200);
  });

  test('another site\'s, "null", https and another port are refused 403; a GET or HEAD of a page is not', () => {
    for (const origin of ['http://evil.example', 'null', 'https://127.0.0.1:7070', 'http://127.0.0.1:7071', 'http://localhost:7070', 'not a url']) {
      assert.equal(statusFor('127.0.0.1:7070', loopback, origin), 403, origin);
    }
    assert.equal(statusFor('127.0.0.1:7070', loopback, 'http://evil.example', { method: 'GET', isPage: true }), 200);
    assert.equal(statusFor('127.0.0.1:7070', loopback, 'http://evil.example', { method: 'HEAD', isPage: true }), 200);
    assert.equal(statusFor('127.0.0.1:7070', loopback, 'http://evil.example', { method: 'POST', isPage: true }), 403);
    assert.equal(statusFor(undefined, loopback, 'http://127.0.0.1:7070'), 403, 'no Host to match');
  });
});
