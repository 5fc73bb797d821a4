import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { CHANNEL_STATES } from '../../src/pages/channel-state.js';

describe("the life of a remote source's channel", () => {
  test('a channel connects, is lost, reconnects, and is connected again', () => {
    assert.equal(CHANNEL_STATES.next('connecting', 'connected'), 'connected');
    assert.equal(CHANNEL_STATES.next('connected', 'lost'), 'reconnecting');
    assert.equal(CHANNEL_STATES.next('reconnecting', 'connected'), 'connected');
  });

  test('a connection lost while the source is still opening is reconnected like any other', () => {
    assert.equal(CHANNEL_STATES.next('connecting', 'lost'), 'reconnecting');
  });

  test('a reconnecting channel has no connection to lose', () => {
    assert.equal(CHANNEL_STATES.allows('reconnecting', 'lost'), false);
  });

  test('every state closes, and a closed channel never connects again', () => {
    for (const state of ['connecting', 'connected', 'reconnecting', 'closed'] as const) assert.equal(CHANNEL_STATES.next(state, 'close'), 'closed');
    assert.deepEqual([...CHANNEL_STATES.reachableFrom('closed')], ['closed']);
    assert.throws(() => CHANNEL_STATES.next('closed', 'connected'), /a page server channel that is closed cannot take 'connected'/);
  });
});
