// The pure parts of migration: the state machines, page bitmaps, page digests, convergence.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { ConvergencePolicy } from '../../src/migrate/convergence.js';
import {
  destinationRunsGuest,
  isPastSwitchover,
  nextDestinationState,
  nextSourceState,
  sourceOwnsGuest,
  type DestinationMigrationEvent,
  type DestinationMigrationState,
  type SourceMigrationEvent,
  type SourceMigrationState,
} from '../../src/migrate/migration-state.js';
import { DIGEST_BATCH_PAGES, PageDigestTable, differingBatches } from '../../src/migrate/page-digests.js';
import { IllegalMigrationTransitionError } from '../../src/migrate/errors.js';

describe('the migration state machines', () => {
  const walkSource = (events: SourceMigrationEvent[]): SourceMigrationState[] => {
    let state: SourceMigrationState = 'idle';
    const seen: SourceMigrationState[] = [state];
    for (const event of events) seen.push((state = nextSourceState(state, event)));
    return seen;
  };
  const walkDestination = (events: DestinationMigrationEvent[]): DestinationMigrationState[] => {
    let state: DestinationMigrationState = 'listening';
    const seen: DestinationMigrationState[] = [state];
    for (const event of events) seen.push((state = nextDestinationState(state, event)));
    return seen;
  };

  test('a hybrid migration goes idle → connecting → precopy → switchover → committing → postcopy → completing → completed', () => {
    assert.deepEqual(walkSource(['start', 'connected', 'switchover', 'go-sent', 'running', 'all-sent', 'complete']), ['idle', 'connecting', 'precopy', 'switchover', 'committing', 'postcopy', 'completing', 'completed']);
  });

  test('stop-and-copy: RUNNING after GO means every page is there (completing)', () => {
    assert.deepEqual(walkSource(['start', 'connected', 'switchover', 'go-sent', 'running-all-sent', 'complete']), ['idle', 'connecting', 'precopy', 'switchover', 'committing', 'completing', 'completed']);
  });

  test('a cut with GO in flight pauses the commit; the destination\'s answer decides: GO again, running, or (the operator) taken back', () => {
    assert.equal(nextSourceState('committing', 'lost'), 'committing-paused');
    assert.equal(nextSourceState('committing-paused', 'go-sent'), 'committing');
    assert.equal(nextSourceState('committing-paused', 'running'), 'postcopy');
    assert.equal(nextSourceState('committing-paused', 'taken-back'), 'failed');
    assert.throws(() => nextSourceState('committing', 'fail'), IllegalMigrationTransitionError, 'GO sent: the source cannot just fail');
    assert.throws(() => nextSourceState('postcopy-paused', 'taken-back'), IllegalMigrationTransitionError, 'the destination runs the guest: it cannot be taken back');
    assert.equal(sourceOwnsGuest('switchover'), true);
    assert.equal(sourceOwnsGuest('committing'), false);
  });

  test('a cut during post-copy pauses it, and only a resume goes on; before GO a failure leaves the guest on the source', () => {
    assert.equal(nextSourceState('postcopy', 'lost'), 'postcopy-paused');
    assert.equal(nextSourceState('postcopy-paused', 'resumed'), 'postcopy');
    assert.throws(() => nextSourceState('postcopy', 'fail'), IllegalMigrationTransitionError, 'past switchover a migration cannot just fail');
    assert.equal(nextSourceState('switchover', 'fail'), 'failed');
    assert.equal(nextSourceState('precopy', 'fail'), 'failed');
    assert.equal(nextSourceState('precopy', 'cancel'), 'cancelled');
    assert.equal(isPastSwitchover('postcopy-paused'), true);
    assert.equal(isPastSwitchover('committing-paused'), true);
    assert.equal(isPastSwitchover('precopy'), false);
  });

  test('the destination runs the guest only from GO; after READY a cut waits for the source, a cancel or its deadline discards', () => {
    assert.deepEqual(walkDestination(['accepted', 'switchover', 'ready', 'go', 'all-in', 'verdict']), ['listening', 'receiving', 'loading', 'ready', 'postcopy', 'verifying', 'completed']);
    assert.deepEqual(walkDestination(['accepted', 'switchover', 'ready', 'lost', 'resumed', 'go-all-in', 'verdict-lost']), ['listening', 'receiving', 'loading', 'ready', 'ready-paused', 'ready', 'verifying', 'completed']);
    assert.equal(nextDestinationState('ready-paused', 'fail'), 'failed');
    assert.equal(nextDestinationState('ready-paused', 'cancel'), 'cancelled');
    assert.equal(destinationRunsGuest('ready-paused'), false);
    assert.equal(destinationRunsGuest('postcopy-paused'), true);
    assert.throws(() => nextDestinationState('ready-paused', 'go'), IllegalMigrationTransitionError, 'GO only on a live connection (after RESUMED)');
  });

  test('a destination that is loading takes the source\'s cancel (it gave up waiting for READY)', () => {
    assert.equal(nextDestinationState('loading', 'cancel'), 'cancelled');
  });

  test('illegal requests are refused naming the state: resume a completed migration, cancel after switchover', () => {
    assert.throws(() => nextSourceState('completed', 'resumed'), (e: unknown) => e instanceof IllegalMigrationTransitionError && e.code === 'EMIGRATIONSTATE' && /completed cannot take 'resumed'/.test(e.message));
    assert.throws(() => nextSourceState('postcopy', 'cancel'), /postcopy cannot take 'cancel'/);
    assert.throws(() => nextDestinationState('postcopy', 'accepted'), /destination migration that is postcopy/);
    assert.equal(nextDestinationState('listening', 'accepted'), 'receiving');
  });
});

describe('page digests', () => {
  const PAGE = 4096;
  test('equal pages recorded on both sides give equal batch digests; one changed byte names its batch', () => {
    const pages = DIGEST_BATCH_PAGES * 2 + 10;
    const sent = new PageDigestTable(pages, PAGE);
    const installed = new PageDigestTable(pages, PAGE);
    const bytes = new Uint8Array(3 * PAGE);
    for (let i = 0; i < bytes.length; i++) bytes[i] = i * 7;
    sent.record(5, bytes);
    installed.record(5, bytes);
    sent.recordZero(DIGEST_BATCH_PAGES + 1);
    installed.record(DIGEST_BATCH_PAGES + 1, new Uint8Array(PAGE));
    assert.deepEqual(differingBatches(sent.batchDigests(), installed.batchDigests()), [], 'a zero marker and an installed zero page agree');
    const changed = Uint8Array.from(bytes);
    changed[PAGE + 100]! ^= 1;
    installed.record(5, changed);
    assert.deepEqual(differingBatches(sent.batchDigests(), installed.batchDigests()), [0]);
    assert.equal(installed.recordedCount, 4);
  });

  test('a page recorded on one side only makes its batch differ', () => {
    const a = new PageDigestTable(10, PAGE);
    const b = new PageDigestTable(10, PAGE);
    a.recordZero(3);
    assert.deepEqual(differingBatches(a.batchDigests(), b.batchDigests()), [0]);
  });
});

describe('convergence', () => {
  const page = 4096;
  test('pre-copy stops when the expected downtime is under the target', () => {
    const policy = new ConvergencePolicy({ mode: 'hybrid', downtimeMs: 10, maxRounds: 10 });
    assert.deepEqual(policy.initial(), { next: 'round' });
    // 1000 bytes/ms; 2000 dirty pages = 8 MB = 8192 ms: go on.
    assert.deepEqual(policy.afterRound({ bytesSent: 1_000_000, durationMs: 1000, dirtyPages: 2000, pageSizeBytes: page }), { next: 'round' });
    // 2 dirty pages = 8 KiB at 1000 B/ms = 8.2 ms < 10.
    assert.deepEqual(policy.afterRound({ bytesSent: 1_000_000, durationMs: 1000, dirtyPages: 2, pageSizeBytes: page }), { next: 'stop-and-copy', reason: 'converged' });
  });

  test('a dirty set that stops shrinking switches hybrid to post-copy, and makes precopy stop anyway', () => {
    for (const [mode, next] of [['hybrid', 'postcopy'], ['precopy', 'stop-and-copy']] as const) {
      const policy = new ConvergencePolicy({ mode, downtimeMs: 1, maxRounds: 30 });
      const round = { bytesSent: 100_000, durationMs: 100, dirtyPages: 5000, pageSizeBytes: page };
      assert.equal(policy.afterRound(round).next, 'round');
      assert.equal(policy.afterRound(round).next, 'round');
      assert.deepEqual(policy.afterRound(round), { next, reason: 'not-converging' });
    }
  });

  test('rounds run out; pure post-copy sends nothing first', () => {
    const policy = new ConvergencePolicy({ mode: 'hybrid', downtimeMs: 1, maxRounds: 1 });
    assert.deepEqual(policy.afterRound({ bytesSent: 1000, durationMs: 10, dirtyPages: 1000, pageSizeBytes: page }), { next: 'postcopy', reason: 'rounds-exhausted' });
    assert.deepEqual(new ConvergencePolicy({ mode: 'postcopy', downtimeMs: 1, maxRounds: 1 }).initial(), { next: 'postcopy', reason: 'mode' });
    assert.throws(() => new ConvergencePolicy({ mode: 'hybrid', downtimeMs: 0, maxRounds: 1 }), RangeError);
  });
});
