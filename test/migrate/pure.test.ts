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
import { PageBitmap } from '../../src/migrate/page-bitmap.js';
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

describe('page bitmaps', () => {
  test('set, get, count, and the pages and runs in order', () => {
    const b = new PageBitmap(200);
    for (const p of [0, 1, 2, 7, 8, 63, 64, 65, 199]) b.set(p);
    assert.equal(b.count(), 9);
    assert.deepEqual([...b.pages()], [0, 1, 2, 7, 8, 63, 64, 65, 199]);
    assert.deepEqual([...b.runs()], [[0, 3], [7, 2], [63, 3], [199, 1]]);
    assert.deepEqual([...b.runs(2)], [[0, 2], [2, 1], [7, 2], [63, 2], [65, 1], [199, 1]]);
    b.clear(64);
    assert.equal(b.get(64), false);
    assert.equal(b.bytes.length, 32, 'whole u64 words, as KVM_GET_DIRTY_LOG writes them');
  });

  test('setAll sets exactly pageCount pages; or merges', () => {
    const a = new PageBitmap(70);
    a.setAll();
    assert.equal(a.count(), 70);
    const b = new PageBitmap(70);
    b.set(3);
    const c = new PageBitmap(70);
    c.set(69);
    b.or(c);
    assert.deepEqual([...b.pages()], [3, 69]);
  });

  test('nextSet finds the first set page at or after a page, across empty bytes, and -1 past the last', () => {
    const b = new PageBitmap(1000);
    for (const page of [0, 7, 8, 500, 999]) b.set(page);
    assert.deepEqual([0, 1, 8, 9, 500, 501, 999, 1000].map((from) => b.nextSet(from)), [0, 7, 8, 500, 500, 999, 999, -1]);
    // The same answers as a walk of pages(), from every starting point.
    const pages = [...b.pages()];
    for (let from = 0; from < 1000; from++) assert.equal(b.nextSet(from), pages.find((p) => p >= from) ?? -1, `from ${from}`);
    assert.equal(new PageBitmap(64).nextSet(0), -1);
  });

  test('toByteMask and andNot say, page by page, what get() says', () => {
    const received = new PageBitmap(131);
    const zero = new PageBitmap(131);
    for (let page = 0; page < 131; page++) {
      if (page % 3 !== 0) received.set(page);
      if (page % 5 === 0 || page === 130) zero.set(page);
    }
    const mask = zero.toByteMask();
    assert.equal(mask.length, 131);
    const present = received.andNot(zero);
    for (let page = 0; page < 131; page++) {
      assert.equal(mask[page], zero.get(page) ? 1 : 0, `mask ${page}`);
      assert.equal(present.get(page), received.get(page) && !zero.get(page), `present ${page}`);
    }
    assert.equal(received.get(1), true, 'andNot leaves its operands alone');
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
