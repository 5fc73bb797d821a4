import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { SOURCE_STATES } from '../../../src/sources/network/source-state.js';

describe('the life of a network page source', () => {
  test('an open source is given up on (gone) or closed; a gone one can still be closed', () => {
    assert.equal(SOURCE_STATES.next('open', 'gave-up'), 'gone');
    assert.equal(SOURCE_STATES.next('open', 'close'), 'closed');
    assert.equal(SOURCE_STATES.next('gone', 'close'), 'closed');
  });

  test('a source never comes back: neither gone nor closed leads to open, and closed is final', () => {
    assert.equal(SOURCE_STATES.reachableFrom('gone').has('open'), false);
    assert.deepEqual(SOURCE_STATES.finalStates(), ['closed']);
    assert.throws(() => SOURCE_STATES.next('gone', 'gave-up'), /a page source that is gone cannot take 'gave-up'/);
  });
});
