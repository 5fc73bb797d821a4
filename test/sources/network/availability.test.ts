// A network source's availability: its life (open, gone, closed), and an
// outage's backoff and deadline, against real timers, each wait bounded.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { SourceGoneError } from '../../../src/sources/page-source.js';
import { SourceAvailability } from '../../../src/sources/network/availability.js';

function availability(): { availability: SourceAvailability; ended: () => number } {
  let ended = 0;
  const made = new SourceAvailability({ description: () => 'test source', onEnd: () => void ended++ });
  return { availability: made, ended: () => ended };
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

describe('a network source\'s availability', () => {
  test('given up, it ends once, and every read fails with SourceGoneError naming the source and why', () => {
    const { availability: a, ended } = availability();
    assert.equal(a.isOpen, true);
    assert.equal(a.giveUp(new Error('the image changed')), true);
    assert.equal(a.state, 'gone');
    assert.equal(a.giveUp(new Error('again')), false, 'a source is given up once');
    assert.equal(ended(), 1);
    const error = a.readError(4096, 8192);
    assert.ok(error instanceof SourceGoneError);
    assert.equal(error.failure, 'fatal');
    assert.match(error.message, /reading 8192 bytes at offset 4096: test source: the image changed/);
    // Closed after: no second end; the reason stays the first.
    assert.equal(a.close(new Error('closed')), true);
    assert.equal(a.state, 'closed');
    assert.equal(ended(), 1);
    assert.match(a.readError(0, 1).message, /the image changed/);
    assert.equal(a.close(new Error('closed')), false);
  });

  test('closed while open, it ends once, with the close as the reason', () => {
    const { availability: a, ended } = availability();
    assert.equal(a.close(new Error('the source was closed')), true);
    assert.equal(ended(), 1);
    assert.match(a.readError(0, 1).message, /test source: the source was closed/);
  });

  test('an outage\'s backoff doubles from its first delay to its most, and starts again once the peer answers', () => {
    const { availability: a } = availability();
    const outage = a.outage({ deadlineMs: 60_000, initialDelayMs: 10, maxDelayMs: 100, expired: () => new Error('expired') });
    assert.deepEqual([1, 2, 3, 4, 5, 6].map(() => outage.nextDelayMs()), [10, 20, 40, 80, 100, 100]);
    assert.equal(outage.lost(new Error('refused')), true);
    outage.restored();
    assert.equal(outage.since, undefined);
    assert.equal(outage.lastError?.message, 'refused', 'the last error is kept for later messages');
    assert.deepEqual([outage.nextDelayMs(), outage.nextDelayMs()], [10, 20]);
    outage.resetDelay();
    assert.equal(outage.nextDelayMs(), 10);
  });

  test('an outage that lasts its deadline gives the source up on its own timer, with the error it makes, not before', async () => {
    const { availability: a, ended } = availability();
    let waited = -1;
    const outage = a.outage({
      deadlineMs: 120,
      initialDelayMs: 10,
      maxDelayMs: 100,
      expired: (waitedMs, last) => {
        waited = waitedMs;
        return new Error(`gone after ${Math.round(waitedMs)} ms (last: ${last?.message})`);
      },
    });
    const started = performance.now();
    outage.lost(new Error('connection refused'));
    await sleep(40);
    assert.equal(outage.lost(new Error('connection reset')), true, 'within the deadline: keep trying');
    assert.equal(a.isOpen, true);
    for (let i = 0; i < 100 && a.isOpen; i++) await sleep(20);
    const elapsed = performance.now() - started;
    assert.equal(a.state, 'gone');
    assert.equal(ended(), 1);
    assert.ok(waited >= 120, `expired at ${waited} ms, before its deadline`);
    assert.ok(elapsed < 5_000, `gone after ${Math.round(elapsed)} ms`);
    assert.match(a.readError(0, 1).message, /gone after \d+ ms \(last: connection reset\)/);
  });

  test('a peer that answers within the deadline ends the outage: its timer does not give the source up later', async () => {
    const { availability: a } = availability();
    const outage = a.outage({ deadlineMs: 60, initialDelayMs: 10, maxDelayMs: 100, expired: () => new Error('expired') });
    outage.lost(new Error('lost'));
    await sleep(20);
    outage.restored();
    await sleep(120);
    assert.equal(a.isOpen, true);
    // A new outage counts its deadline from its own start.
    outage.lost(new Error('lost again'));
    assert.equal(a.isOpen, true);
    outage.stop();
  });

  test('a loss reported past the deadline gives the source up at once', async () => {
    const { availability: a } = availability();
    const outage = a.outage({ deadlineMs: 30, initialDelayMs: 10, maxDelayMs: 100, expired: () => new Error('expired') });
    outage.lost(new Error('lost'));
    outage.stop(); // its timer off: only the next loss can tell
    await sleep(50);
    assert.equal(a.isOpen, true);
    assert.equal(outage.lost(new Error('still lost')), false);
    assert.equal(a.state, 'gone');
    assert.equal(outage.lost(new Error('after')), false, 'a gone source counts no more losses');
  });
});
