// Discards (a balloon giving pages back) racing the pager's fills, on the real
// kernel with the real Pager: issue 21's race tests at the userfaultfd level.
// Each race runs in its own process with a hard bound (a wrong answer may be
// a thread asleep forever), on private anonymous memory (MADV_DONTNEED) and on
// a memfd (MADV_REMOVE), 5,000 iterations each: 10,000 per race. A race that
// never hit its window would prove nothing, so each asserts that it did.
//
// Stale: a page that reads the source's bytes after the discard returned to
// the discarding thread and before anyone wrote it. DISCARD_RACE_ITERATIONS
// sets the iterations per memory kind (a soak run).
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { lastLine, runFixture } from '../helpers/run-probe.js';
import type { Tally } from '../fixtures/discard-race-probe.js';

const ITERATIONS = Number(process.env.DISCARD_RACE_ITERATIONS ?? 5000);
/** Seconds, not minutes: each run takes about 2-4 s here; the bound only catches a hang. */
const BOUND_MS = 60_000 + ITERATIONS * 10;

interface RaceResult extends Tally {
  ms: number;
}

function race(name: string, memory: 'anonymous' | 'memfd', t: { diagnostic(message: string): void }): RaceResult {
  const run = runFixture('discard-race-probe.js', [name, memory, String(ITERATIONS)], BOUND_MS);
  assert.equal(run.timedOut, false, `${name} on ${memory} hung (killed at ${BOUND_MS} ms)`);
  const result = lastLine(run) as unknown as RaceResult & { error?: string };
  assert.equal(result.error, undefined, result.error);
  assert.equal(run.status, 0, run.stderr);
  t.diagnostic(`${name} on ${memory}: ${result.iterations} iterations, ${result.hits} in the window, ${result.eagain} EAGAIN, ${result.ms} ms`);
  assert.equal(result.iterations, ITERATIONS);
  assert.deepEqual(result.failures, [], 'the first wrong answers');
  assert.equal(result.stale, 0, 'no page read the source after its discard returned');
  assert.equal(result.wrong, 0, 'no page torn, zeroed or overwritten wrongly');
  assert.equal(result.extraReads, 0, 'a discarded page is never read from the source again');
  assert.deepEqual(result.errors, [], 'the pager reported nothing');
  return result;
}

for (const memory of ['anonymous', 'memfd'] as const) {
  describe(`discard races on ${memory} memory`, () => {
    test('discard during fill: the page reads zero after the discard, and a later touch reads zero without a source read', (t) => {
      const result = race('discard-during-fill', memory, t);
      // A third of the iterations release the fill only after the discard returned: certainly late, certainly dropped.
      assert.ok(result.hits >= ITERATIONS / 3, `${result.hits} fills dropped because their page was discarded while they were in flight`);
      assert.ok(result.eagain > 0, 'some fills met the REMOVE unread (UFFDIO_COPY answered EAGAIN)');
    });

    test('discard during push: pages the pager installs on its own (pushed or prefetched) read zero once discarded', (t) => {
      const result = race('discard-during-push', memory, t);
      // A fifth release a prefetch only after the discard returned.
      assert.ok(result.hits >= ITERATIONS / 5, `${result.hits} pushed or prefetched pages dropped because of the discard`);
      assert.ok(result.eagain > 0, 'some pushes met the REMOVE unread (EAGAIN)');
    });

    test('deflate during fetch: a page discarded and taken back while its old fetch is out reads zero, keeps what the guest wrote, and the late fetch is dropped', (t) => {
      const result = race('deflate-during-fetch', memory, t);
      assert.equal(result.hits, ITERATIONS, 'every late fetch result arrived and was dropped');
    });

    test('REMOVE pending while UFFDIO_COPY runs: EAGAIN, the event read, the states read again; the discarded page zero, the rest of the run the source', (t) => {
      const result = race('remove-during-copy', memory, t);
      assert.ok(result.eagain > 0, 'the kernel refused copies while the REMOVE was unread');
      // Each iteration releases its read with the REMOVE queued (polled for); only a poll that gave up misses.
      assert.ok(result.hits >= ITERATIONS / 2, `${result.hits} iterations whose COPY got EAGAIN`);
    });
  });
}

describe('no self-deadlock', () => {
  test('discards from a worker during a lazy restore return promptly while faults and a background fill are served', (t) => {
    const run = runFixture('discard-race-probe.js', ['lazy-discards', '2000', '7'], 60_000);
    assert.equal(run.timedOut, false, 'a discard blocked');
    const result = lastLine(run);
    assert.equal(run.status, 0, run.stderr);
    t.diagnostic(JSON.stringify(result));
    assert.equal(result.discards, 2000);
    assert.equal(result.removeEvents, 2000, 'every discard was seen by the pager');
    assert.ok((result.faults as number) >= 2000, 'faults were served all along');
    assert.equal(result.stale, 0, 'every discarded page reads zero');
    assert.equal(result.wrong, 0, 'every other page holds the image');
    // Most of a second of background fill (16384 pages from memory) runs meanwhile: no discard waits for all of it
    // (before the pager gave its event loop a turn between slices of synchronous reads, one waited ~900 ms here).
    assert.ok((result.maxDiscardMs as number) < 250, `the slowest discard took ${result.maxDiscardMs} ms`);
  });

  test('why the rule exists: a discard issued on the thread that reads the uffd never returns', () => {
    const run = runFixture('discard-race-probe.js', ['self-discard'], 1500);
    assert.equal(run.timedOut, true, 'madvise waited for its own REMOVE event to be read');
    assert.ok(run.lines.some((line) => line.phase === 'discarding'));
    assert.equal(run.lines.find((line) => line.phase === 'discarded'), undefined);
  });
});
