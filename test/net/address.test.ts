import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { AddressError, formatHostPort, isLoopbackHost, parseHostPort, parsePageUrl } from '../../src/net/address.js';

describe('page server addresses', () => {
  test('HOST:PORT and [IPv6]:PORT parse; anything else is a usage error naming the form', () => {
    assert.deepEqual(parseHostPort('127.0.0.1:7000'), { host: '127.0.0.1', port: 7000 });
    assert.deepEqual(parseHostPort('[::1]:0'), { host: '::1', port: 0 });
    assert.deepEqual(parseHostPort('localhost:65535'), { host: 'localhost', port: 65535 });
    for (const bad of ['127.0.0.1', ':7000', '127.0.0.1:', '127.0.0.1:65536', '::1:7000', '[localhost]:7000', 'a:b:7000', '127.0.0.1:-1']) {
      assert.throws(() => parseHostPort(bad), (error: unknown) => error instanceof AddressError && error.code === 'EUSAGE', bad);
    }
  });

  test('page URLs are tcp://HOST:PORT with a real port', () => {
    assert.deepEqual(parsePageUrl('tcp://10.0.0.2:7000'), { host: '10.0.0.2', port: 7000 });
    assert.deepEqual(parsePageUrl('tcp://[fe80::1]:7000'), { host: 'fe80::1', port: 7000 });
    assert.throws(() => parsePageUrl('tcp://127.0.0.1:0'), /port 0 names no server/);
    assert.throws(() => parsePageUrl('http://127.0.0.1:7000'), /tcp:\/\/HOST:PORT/);
    assert.equal(formatHostPort({ host: '::1', port: 7 }), '[::1]:7');
    assert.equal(formatHostPort({ host: '127.0.0.1', port: 7 }), '127.0.0.1:7');
  });

  test('loopback is localhost, 127/8, ::1 and IPv4-mapped 127/8; every other address and name is remote', () => {
    for (const host of ['localhost', 'LOCALHOST', '127.0.0.1', '127.1.2.3', '::1', '0:0:0:0:0:0:0:1', '::ffff:127.0.0.1']) assert.equal(isLoopbackHost(host), true, host);
    for (const host of ['0.0.0.0', '::', '10.0.0.1', '192.168.1.1', '::ffff:10.0.0.1', 'example.com', 'localhost.example.com', '128.0.0.1']) assert.equal(isLoopbackHost(host), false, host);
  });
});
