// A page server that goes away under a RemoteSource and comes back on the
// same port: the outage is said (an 'unavailable' event within a second, with
// the reads waiting) and its end (restored, with how long it took), and
// counted; real `userfault pages serve` processes, real sockets.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { RemoteSource } from '../../src/pages/remote-source.js';
import type { AvailabilityEvent } from '../../src/sources/network/availability.js';
import { availabilityLine } from '../../src/sources/network/availability-text.js';
import { PAGE, spawnPagesServe, tempDir, writeTestSnapshot } from './fixtures.js';

/** The first event of `type` heard, or a rejection naming what was heard after `ms`. */
function next(events: AvailabilityEvent[], type: AvailabilityEvent['type'], ms: number): Promise<AvailabilityEvent> {
  const started = performance.now();
  return new Promise((resolve, reject) => {
    const poll = setInterval(() => {
      const found = events.find((e) => e.type === type);
      if (found) {
        clearInterval(poll);
        resolve(found);
      } else if (performance.now() - started > ms) {
        clearInterval(poll);
        reject(new Error(`no '${type}' within ${ms} ms; heard ${JSON.stringify(events)}`));
      }
    }, 5);
  });
}

describe('a page server outage under a RemoteSource', () => {
  test('killed: unavailable within a second with the reads waiting; restarted on its port: restored, the reads served, the outage counted', async (t) => {
    const { path, image } = await writeTestSnapshot(tempDir(t));
    const first = await spawnPagesServe(t, ['--snapshot', path, '--listen', '127.0.0.1:0']);
    const source = await RemoteSource.connect(`tcp://127.0.0.1:${first.port}`, { connectTimeoutMs: 3000, reconnectDeadlineMs: 30_000, readDeadlineMs: 30_000 });
    t.after(() => source.close());
    const events: AvailabilityEvent[] = [];
    source.onAvailability((event) => events.push(event));
    assert.equal(source.availabilityStats.state, 'available');

    first.run.kill('SIGKILL');
    await first.run.exit;
    const killedAt = performance.now();
    // Reads made while it is down wait for it (a guest's faults would).
    const target = new Uint8Array(3 * PAGE);
    const reads = [0, 1, 2].map((i) => source.read((10 + i * 7) * PAGE, PAGE, target.subarray(i * PAGE, (i + 1) * PAGE)));
    const down = await next(events, 'unavailable', 1_000);
    assert.ok(performance.now() - killedAt < 1_000, 'said within a second of the kill');
    assert.match(availabilityLine(down), new RegExp(`^page server tcp://127\\.0\\.0\\.1:${first.port} unreachable, (guest waiting \\(\\d reads? blocked\\)|no reads waiting yet), retrying until the deadline in (29|30)\\.\\d s`));
    // The reads are counted by the time the outage is checked on.
    await new Promise((resolve) => setTimeout(resolve, 200));
    const during = source.availabilityStats;
    assert.equal(during.state, 'unavailable');
    assert.equal(during.current?.readsWaiting, 3, 'the three reads wait');
    assert.equal(during.outages, 1);

    const second = await spawnPagesServe(t, ['--snapshot', path, '--listen', `127.0.0.1:${first.port}`]);
    assert.equal(second.port, first.port);
    const up = await next(events, 'restored', 5_000);
    assert.ok(up.type === 'restored');
    assert.ok(up.afterMs >= 200 && up.afterMs < 10_000, `back after ${up.afterMs} ms`);
    assert.equal(up.readsWaited, 3);
    assert.match(availabilityLine(up), new RegExp(`^page server tcp://127\\.0\\.0\\.1:${first.port} reconnected after \\d+\\.\\d s \\(3 reads waited\\)$`));
    await Promise.all(reads);
    for (let i = 0; i < 3; i++) assert.deepEqual(target.subarray(i * PAGE, (i + 1) * PAGE), image.subarray((10 + i * 7) * PAGE, (11 + i * 7) * PAGE));
    const after = source.availabilityStats;
    assert.equal(after.state, 'available');
    assert.equal(after.outages, 1);
    assert.ok(after.outageMs >= up.afterMs - 1);
  });

  test('killed for good: gone at the deadline, said once, with the reads that failed', async (t) => {
    const { path } = await writeTestSnapshot(tempDir(t));
    const server = await spawnPagesServe(t, ['--snapshot', path, '--listen', '127.0.0.1:0']);
    const source = await RemoteSource.connect(`tcp://127.0.0.1:${server.port}`, { connectTimeoutMs: 3000, reconnectDeadlineMs: 600, readDeadlineMs: 30_000 });
    t.after(() => source.close());
    const events: AvailabilityEvent[] = [];
    source.onAvailability((event) => events.push(event));
    server.run.kill('SIGKILL');
    await server.run.exit;
    const read = source.read(0, PAGE, new Uint8Array(PAGE)).then(() => 'read', (error: Error) => error.name);
    const gone = await next(events, 'gone', 5_000);
    assert.equal(await read, 'SourceGoneError');
    assert.ok(gone.type === 'gone');
    assert.equal(gone.readsFailed, 1);
    assert.match(availabilityLine(gone), /given up after 0\.\d s unreachable: .*did not come back within \d+ ms.*; 1 read failed$/);
    assert.equal(events.filter((e) => e.type === 'gone').length, 1);
    assert.equal(source.availabilityStats.state, 'gone');
  });
});
