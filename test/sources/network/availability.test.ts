// A network source's availability: its life (open, gone, closed), and an
// outage's backoff and deadline, against real timers, each wait bounded.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { SourceGoneError } from '../../../src/sources/page-source.js';
import { SourceAvailability, type AvailabilityEvent } from '../../../src/sources/network/availability.js';
import { availabilityLine, availabilityStatusLine } from '../../../src/sources/network/availability-text.js';

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

/** A source whose outages are heard: its events in order, and the reads it says are waiting. */
function observed(options: { reportEveryMs?: number; announceAfterMs?: number } = {}): { availability: SourceAvailability; events: AvailabilityEvent[]; setWaiting: (n: number) => void } {
  let waiting = 0;
  const made = new SourceAvailability({ description: () => 'page server tcp://127.0.0.1:7000', onEnd: () => {}, readsWaiting: () => waiting, reportEveryMs: options.reportEveryMs, announceAfterMs: options.announceAfterMs ?? 0 });
  const events: AvailabilityEvent[] = [];
  made.onAvailability((event) => events.push(event));
  return { availability: made, events, setWaiting: (n) => void (waiting = n) };
}

describe('an outage said out loud', () => {
  test('the first path lost makes the source unavailable (with the reads waiting and the deadline), said once; the peer back, restored with how long it took', async () => {
    const { availability: a, events, setWaiting } = observed();
    const outage = a.outage({ deadlineMs: 30_000, initialDelayMs: 10, maxDelayMs: 100, expired: () => new Error('expired') });
    assert.equal(a.availabilityStats.state, 'available');
    setWaiting(2);
    outage.lost(new Error('connect ECONNREFUSED 127.0.0.1:7000'));
    outage.lost(new Error('connect ECONNREFUSED 127.0.0.1:7000'));
    assert.equal(events.length, 1, 'said once, not at every failed attempt');
    const down = events[0]!;
    assert.equal(down.type, 'unavailable');
    assert.ok(down.type === 'unavailable');
    assert.equal(down.readsWaiting, 2);
    assert.equal(down.retrying, true);
    assert.ok(down.deadlineInMs! > 29_000 && down.deadlineInMs! <= 30_000, `deadline in ${down.deadlineInMs} ms`);
    assert.ok(Math.abs(down.since - Date.now()) < 1_000);
    assert.equal(availabilityLine(down), 'page server tcp://127.0.0.1:7000 unreachable, guest waiting (2 reads blocked), retrying until the deadline in 30.0 s (last: connect ECONNREFUSED 127.0.0.1:7000)');
    const during = a.availabilityStats;
    assert.equal(during.state, 'unavailable');
    assert.equal(during.outages, 1);
    assert.equal(during.current?.readsWaiting, 2);
    assert.match(availabilityStatusLine(during)!, /^page server tcp:\/\/127\.0\.0\.1:7000 unreachable for 0\.\d s, 2 reads waiting, deadline in (29\.\d|30\.0) s$/);
    setWaiting(3);
    await sleep(120);
    outage.lost(new Error('connect ECONNREFUSED 127.0.0.1:7000'));
    setWaiting(1);
    outage.restored();
    assert.equal(events.length, 2);
    const up = events[1]!;
    assert.ok(up.type === 'restored');
    assert.ok(up.afterMs >= 100 && up.afterMs < 2_000, `after ${up.afterMs} ms`);
    assert.equal(up.readsWaited, 3, 'the most reads waiting at once');
    assert.match(availabilityLine(up), /^page server tcp:\/\/127\.0\.0\.1:7000 reconnected after 0\.\d s \(3 reads waited\)$/);
    const after = a.availabilityStats;
    assert.equal(after.state, 'available');
    assert.equal(after.current, undefined);
    assert.equal(after.outages, 1);
    assert.ok(after.outageMs >= 100, `${after.outageMs} ms in all`);
    assert.match(availabilityStatusLine(after)!, /reachable \(1 outage, 0\.\d s in all\)$/);
    outage.restored();
    assert.equal(events.length, 2, 'a path back that was not lost says nothing');
  });

  test('with two paths, the source is unavailable from the first lost to the last back', () => {
    const { availability: a, events } = observed();
    const urgent = a.outage({ deadlineMs: 30_000, initialDelayMs: 10, maxDelayMs: 100, expired: () => new Error('expired') });
    const bulk = a.outage({ deadlineMs: 30_000, initialDelayMs: 10, maxDelayMs: 100, expired: () => new Error('expired') });
    urgent.lost(new Error('reset'));
    bulk.lost(new Error('reset'));
    urgent.restored();
    assert.deepEqual(events.map((e) => e.type), ['unavailable']);
    assert.equal(a.availabilityStats.state, 'unavailable');
    bulk.restored();
    assert.deepEqual(events.map((e) => e.type), ['unavailable', 'restored']);
    urgent.lost(new Error('reset'));
    urgent.restored();
    assert.deepEqual(events.map((e) => e.type), ['unavailable', 'restored', 'unavailable', 'restored']);
    assert.equal(a.availabilityStats.outages, 2);
  });

  test('an outage that goes on is said again every reportEveryMs; one past its deadline says the source is gone, with the reads that failed', async () => {
    const { availability: a, events, setWaiting } = observed({ reportEveryMs: 50 });
    const outage = a.outage({ deadlineMs: 300, initialDelayMs: 10, maxDelayMs: 100, expired: (waited) => new Error(`not back within ${Math.round(waited)} ms`) });
    setWaiting(1);
    outage.lost(new Error('refused'));
    for (let i = 0; i < 200 && a.isOpen; i++) await sleep(10);
    assert.equal(a.state, 'gone');
    const types = events.map((e) => e.type);
    assert.equal(types[0], 'unavailable');
    assert.equal(types.at(-1), 'gone');
    const again = events.filter((e) => e.type === 'still-unavailable');
    assert.ok(again.length >= 2 && again.length <= 7, `${again.length} reminders in 300 ms at one per 50 ms`);
    assert.match(availabilityLine(again[0]!), /^page server tcp:\/\/127\.0\.0\.1:7000 still unreachable after 0\.\d s, guest waiting \(1 read blocked\), retrying until the deadline in 0\.\d s$/);
    const gone = events.at(-1)!;
    assert.ok(gone.type === 'gone');
    assert.equal(gone.readsFailed, 1);
    assert.ok(gone.afterMs! >= 300);
    assert.match(availabilityLine(gone), /^page server tcp:\/\/127\.0\.0\.1:7000 given up after 0\.\d s unreachable: not back within \d+ ms; 1 read failed$/);
    assert.equal(a.availabilityStats.state, 'gone');
    assert.equal(a.availabilityStats.current, undefined);
    const count = events.length;
    await sleep(120);
    assert.equal(events.length, count, 'nothing said after the source is gone');
  });

  test('a peer that reconnects to this side (a migration source): no deadline here, and the words say it waits for the peer', () => {
    let waiting = 1;
    const a = new SourceAvailability({ description: () => 'migration source 10.0.0.4:51234', onEnd: () => {}, readsWaiting: () => waiting, announceAfterMs: 0 });
    const events: AvailabilityEvent[] = [];
    a.onAvailability((event) => events.push(event));
    const cut = a.outage({ deadlineMs: Infinity, retrying: false, initialDelayMs: 0, maxDelayMs: 0, expired: () => new Error('never') });
    assert.equal(cut.lost(new Error('migration connection from 10.0.0.4:51234 reset')), true);
    assert.equal(availabilityLine(events[0]!), 'migration source 10.0.0.4:51234 unreachable, guest waiting (1 read blocked), waiting for it to reconnect (last: migration connection from 10.0.0.4:51234 reset)');
    assert.equal(a.isOpen, true);
    waiting = 0;
    cut.restored();
    assert.match(availabilityLine(events[1]!), /^migration source 10\.0\.0\.4:51234 reconnected after 0\.0 s \(1 read waited\)$/);
    // Closed in an outage: counted, not said (the caller closed it).
    cut.lost(new Error('reset'));
    a.close(new Error('the migration ended'));
    assert.deepEqual(events.map((e) => e.type), ['unavailable', 'restored', 'unavailable']);
    assert.equal(a.availabilityStats.state, 'closed');
    assert.equal(a.availabilityStats.outages, 2);
  });

  test('an outage shorter than announceAfterMs (default 200 ms) is counted, not said; a longer one is said once it lasted that long, with the reads waiting by then', async () => {
    let waiting = 0;
    const a = new SourceAvailability({ description: () => 'object s3://snapshots/vm1', onEnd: () => {}, readsWaiting: () => waiting });
    const events: AvailabilityEvent[] = [];
    a.onAvailability((event) => events.push(event));
    const outage = a.outage({ deadlineMs: 30_000, initialDelayMs: 10, maxDelayMs: 100, expired: () => new Error('expired') });
    outage.lost(new Error('HTTP 503 SlowDown'));
    await sleep(20);
    outage.restored();
    await sleep(250);
    assert.equal(events.length, 0, 'a blip is not said');
    assert.equal(a.availabilityStats.outages, 1, 'but counted');
    outage.lost(new Error('connect ECONNREFUSED'));
    waiting = 2; // the faults that come after the loss
    await sleep(120);
    assert.equal(events.length, 0, 'not yet');
    for (let i = 0; i < 100 && events.length === 0; i++) await sleep(10);
    assert.equal(events[0]?.type, 'unavailable');
    assert.equal(events[0]?.type === 'unavailable' && events[0].readsWaiting, 2, 'the reads waiting by the time it is said');
    outage.restored();
    assert.deepEqual(events.map((e) => e.type), ['unavailable', 'restored']);
    assert.equal(a.availabilityStats.outages, 2);
  });
});
