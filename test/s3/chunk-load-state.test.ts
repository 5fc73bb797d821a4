import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { CHUNK_LOAD_STATES, type ChunkLoadState } from '../../src/s3/chunk-load-state.js';

describe("the life of an S3Source chunk load", () => {
  test('a load found in a cache is done without a request; one missed is queued, sent, and delivered', () => {
    assert.equal(CHUNK_LOAD_STATES.next('cache', 'cache-hit'), 'done');
    assert.equal(CHUNK_LOAD_STATES.next('cache', 'cache-missed'), 'queued');
    assert.equal(CHUNK_LOAD_STATES.next('queued', 'sent'), 'fetching');
    assert.equal(CHUNK_LOAD_STATES.next('fetching', 'delivered'), 'done');
  });

  test('a failed or corrupt fetch is queued again, and refused once its retries are spent', () => {
    assert.equal(CHUNK_LOAD_STATES.next('fetching', 'retry'), 'queued');
    assert.equal(CHUNK_LOAD_STATES.next('fetching', 'refused'), 'failed');
  });

  test('a load nobody waits for is dropped before it is sent, never while it is being fetched', () => {
    assert.equal(CHUNK_LOAD_STATES.next('cache', 'dropped'), 'dropped');
    assert.equal(CHUNK_LOAD_STATES.next('queued', 'dropped'), 'dropped');
    assert.equal(CHUNK_LOAD_STATES.allows('fetching', 'dropped'), false);
  });

  test('a load is never sent twice at once, and nothing is delivered to a load not being fetched', () => {
    assert.equal(CHUNK_LOAD_STATES.allows('fetching', 'sent'), false);
    for (const state of ['cache', 'queued', 'done', 'failed', 'dropped'] as const) assert.equal(CHUNK_LOAD_STATES.allows(state, 'delivered'), false, state);
  });

  test('every load that is still live fails when the source gives up, and every load ends done, failed or dropped', () => {
    const live: ChunkLoadState[] = ['cache', 'queued', 'fetching'];
    for (const state of live) assert.equal(CHUNK_LOAD_STATES.next(state, 'source-gone'), 'failed');
    assert.deepEqual(CHUNK_LOAD_STATES.finalStates().sort(), ['done', 'dropped', 'failed']);
    for (const state of live) assert.ok([...CHUNK_LOAD_STATES.reachableFrom(state)].some((to) => CHUNK_LOAD_STATES.finalStates().includes(to)), state);
  });
});
