import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { IllegalTransitionError, TransitionTable } from '../src/transition-table.js';

describe('a transition table', () => {
  const door = new TransitionTable<'open' | 'shut' | 'gone', 'push' | 'pull' | 'burn'>('a door', {
    open: { push: 'shut', burn: 'gone' },
    shut: { pull: 'open', burn: 'gone' },
    gone: {},
  });

  test('a listed move leads where the table says', () => {
    assert.equal(door.next('open', 'push'), 'shut');
    assert.equal(door.next('shut', 'pull'), 'open');
    assert.equal(door.allows('open', 'push'), true);
  });

  test('a move not listed is refused, naming the machine, the state and the event', () => {
    assert.equal(door.allows('open', 'pull'), false);
    assert.throws(() => door.next('open', 'pull'), (error: unknown) =>
      error instanceof IllegalTransitionError && error.code === 'EILLEGALTRANSITION' && error.message === "a door that is open cannot take 'pull'");
  });

  test('its final states take nothing, and what each state can reach is known', () => {
    assert.deepEqual(door.finalStates(), ['gone']);
    assert.deepEqual([...door.reachableFrom('shut')].sort(), ['gone', 'open', 'shut']);
  });
});
