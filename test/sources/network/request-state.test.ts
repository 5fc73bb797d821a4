import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { LIVE_REQUEST_STATES, REQUEST_STATES } from '../../../src/sources/network/request-state.js';

describe('the life of a network request', () => {
  test('a request found where the source keeps what it fetched is done without the peer; one missed is queued, sent, and delivered', () => {
    assert.equal(REQUEST_STATES.next('local', 'local-hit'), 'done');
    assert.equal(REQUEST_STATES.next('local', 'local-miss'), 'queued');
    assert.equal(REQUEST_STATES.next('queued', 'sent'), 'sent');
    assert.equal(REQUEST_STATES.next('sent', 'delivered'), 'done');
  });

  test('a request lost with its connection, answered busy or corrupt is queued again; one the peer refuses fails', () => {
    assert.equal(REQUEST_STATES.next('sent', 'retry'), 'queued');
    assert.equal(REQUEST_STATES.next('sent', 'refused'), 'failed');
  });

  test('a request nobody waits for is dropped before it is sent, and cancelled after', () => {
    assert.equal(REQUEST_STATES.next('local', 'dropped'), 'dropped');
    assert.equal(REQUEST_STATES.next('queued', 'dropped'), 'dropped');
    assert.equal(REQUEST_STATES.allows('sent', 'dropped'), false);
    assert.equal(REQUEST_STATES.next('sent', 'cancelled'), 'dropped');
    assert.equal(REQUEST_STATES.allows('queued', 'cancelled'), false);
  });

  test('a request is never sent twice at once, and nothing is delivered to one not on the wire', () => {
    assert.equal(REQUEST_STATES.allows('sent', 'sent'), false);
    for (const state of ['local', 'queued', 'done', 'failed', 'dropped'] as const) assert.equal(REQUEST_STATES.allows(state, 'delivered'), false, state);
  });

  test('every live request fails when the source gives up, and every request ends done, failed or dropped', () => {
    for (const state of LIVE_REQUEST_STATES) assert.equal(REQUEST_STATES.next(state, 'source-gone'), 'failed');
    assert.deepEqual(REQUEST_STATES.finalStates().sort(), ['done', 'dropped', 'failed']);
    const final = REQUEST_STATES.finalStates();
    for (const state of LIVE_REQUEST_STATES) assert.ok([...REQUEST_STATES.reachableFrom(state)].some((to) => final.includes(to)), state);
    assert.deepEqual([...LIVE_REQUEST_STATES].sort(), (['local', 'queued', 'sent'] as const).filter((state) => !final.includes(state)).sort());
  });

  test('a move the table does not list is refused naming the machine', () => {
    assert.throws(() => REQUEST_STATES.next('done', 'retry'), /a network request that is done cannot take 'retry'/);
  });
});
