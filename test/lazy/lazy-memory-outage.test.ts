// LazyMemory over a page server that goes away and comes back on its port:
// its owner hears the outage as it begins and as it ends (the source lives in
// the pager's worker thread; its events cross to this one), and the memory
// fills right after. A real `userfault pages serve`, real userfaultfd.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { LazyMemory } from '../../src/lazy/index.js';
import type { AvailabilityEvent } from '../../src/sources/network/availability.js';
import { availabilityLine } from '../../src/sources/network/availability-text.js';
import { spawnPagesServe, tempDir, writeTestSnapshot } from '../pages/fixtures.js';

async function heard(events: AvailabilityEvent[], type: AvailabilityEvent['type'], ms: number): Promise<AvailabilityEvent> {
  const started = performance.now();
  for (;;) {
    const found = events.find((e) => e.type === type);
    if (found) return found;
    if (performance.now() - started > ms) throw new Error(`no '${type}' within ${ms} ms; heard ${JSON.stringify(events)}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

describe('lazy memory over a page server that goes away', { timeout: 60_000 }, () => {
  test('its owner hears "unreachable" within a second of the kill and "reconnected after" once it is back; every page right', async (t) => {
    const { path, image } = await writeTestSnapshot(tempDir(t));
    const first = await spawnPagesServe(t, ['--snapshot', path, '--listen', '127.0.0.1:0']);
    const url = `tcp://127.0.0.1:${first.port}`;
    const memory = await LazyMemory.create({ source: { kind: 'remote', url, options: { reconnectDeadlineMs: 30_000, readDeadlineMs: 30_000 } }, prefetch: false });
    try {
      const events: AvailabilityEvent[] = [];
      memory.onAvailability((event) => events.push(event));
      first.run.kill('SIGKILL');
      await first.run.exit;
      // The pager fills in the background; this thread touches nothing, so it hears the outage while it lasts.
      const filled = memory.fillAll();
      const down = await heard(events, 'unavailable', 1_000);
      assert.match(availabilityLine(down), new RegExp(`^page server ${url.replace(/\./g, '\\.')} unreachable, `));
      await new Promise((resolve) => setTimeout(resolve, 300));
      await spawnPagesServe(t, ['--snapshot', path, '--listen', `127.0.0.1:${first.port}`]);
      const up = await heard(events, 'restored', 10_000);
      assert.match(availabilityLine(up), new RegExp(`^page server ${url.replace(/\./g, '\\.')} reconnected after \\d+\\.\\d s \\(`));
      await filled;
      assert.ok(Buffer.from(memory.bytes()).equals(Buffer.from(image)), 'every page, with the right bytes');
    } finally {
      await memory.close();
    }
  });
});
