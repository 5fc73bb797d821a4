import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { ProtocolError, acceptHello, checkHelloAnswer, negotiateVersion, type HelloMessage } from '../../src/protocol/index.js';
import { SESSION_ID } from './fixtures.js';

const CLIENT: HelloMessage = { type: 'hello', version: 1, minVersion: 1, role: 'page-client-urgent', sessionId: SESSION_ID, maxPayloadBytes: 4 << 20, features: 0 };
const SERVER: HelloMessage = { ...CLIENT, role: 'page-server' };
const PAGE_ROLES = ['page-client-urgent', 'page-client-bulk'] as const;

function refusedWith(fn: () => unknown, code: string, wireCode: string): void {
  assert.throws(fn, (error: unknown) => {
    assert.ok(error instanceof ProtocolError);
    assert.equal(error.code, code);
    assert.equal(error.wireCode, wireCode);
    return true;
  });
}

describe('opening a connection', () => {
  test('the best version both sides speak is chosen', () => {
    assert.equal(negotiateVersion({ version: 1, minVersion: 1 }), 1);
    assert.equal(negotiateVersion({ version: 5, minVersion: 1 }), 2, 'this code speaks 1..2 by default (live migration\'s range)');
    assert.equal(negotiateVersion({ version: 5, minVersion: 2 }, { minVersion: 1, maxVersion: 3 }), 3);
  });

  test('a client that only speaks later versions is answered UNSUPPORTED_VERSION, naming both ranges', () => {
    refusedWith(() => negotiateVersion({ version: 4, minVersion: 3 }), 'EPROTO_VERSION', 'UNSUPPORTED_VERSION');
    assert.throws(() => negotiateVersion({ version: 4, minVersion: 3 }), /the peer speaks versions 3\.\.4, this side 1\.\.2/);
  });

  test('a server takes page clients and answers WRONG_ROLE to migration roles and to another server', () => {
    assert.equal(acceptHello(CLIENT, { roles: PAGE_ROLES }), 1);
    assert.equal(acceptHello({ ...CLIENT, role: 'page-client-bulk' }, { roles: PAGE_ROLES }), 1);
    for (const role of ['migration-source', 'migration-destination', 'page-server'] as const) {
      refusedWith(() => acceptHello({ ...CLIENT, role }, { roles: PAGE_ROLES }), 'EPROTO_ROLE', 'WRONG_ROLE');
    }
  });

  test('a client checks the answer: one version it offered, the server role, its own session id', () => {
    assert.equal(checkHelloAnswer(SERVER, CLIENT, 'page-server'), 1);
    refusedWith(() => checkHelloAnswer({ ...SERVER, version: 2, minVersion: 1 }, CLIENT, 'page-server'), 'EPROTO_VERSION', 'UNSUPPORTED_VERSION');
    refusedWith(() => checkHelloAnswer({ ...SERVER, version: 2, minVersion: 2 }, CLIENT, 'page-server'), 'EPROTO_VERSION', 'UNSUPPORTED_VERSION');
    refusedWith(() => checkHelloAnswer({ ...SERVER, role: 'page-client-bulk' }, CLIENT, 'page-server'), 'EPROTO_ROLE', 'WRONG_ROLE');
    refusedWith(() => checkHelloAnswer({ ...SERVER, sessionId: new Uint8Array(16) }, CLIENT, 'page-server'), 'EPROTO_FIELD', 'BAD_REQUEST');
  });
});
