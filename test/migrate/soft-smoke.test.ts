import assert from 'node:assert/strict';
import { test } from 'node:test';
import { DestinationMigration } from '../../src/migrate/destination-migration.js';
import { SourceMigration } from '../../src/migrate/source-migration.js';
import { SoftMachine, softMachineKind } from './soft-machine.js';

for (const mode of ['postcopy', 'precopy', 'hybrid'] as const) {
  test(`soft smoke ${mode}`, { timeout: 30_000 }, async () => {
    const src = SoftMachine.start({ memoryBytes: 8 << 20, pattern: 'random', writePages: 512, pagesPerTick: 16, tickMs: 5 }, 7);
    await new Promise((r) => setTimeout(r, 100));
    const kind = softMachineKind();
    const dst = await DestinationMigration.listen({ host: '127.0.0.1', port: 0, kind });
    const migration = new SourceMigration(src, { to: dst.url, mode });
    const report = await migration.run();
    const done = await dst.done;
    const incoming = kind.built[0]!;
    await new Promise((r) => setTimeout(r, 100));
    console.log(mode, report.state, report.verified, done.state, done.verified, src.heartbeats.at(-1), incoming.heartbeats.slice(0, 3), incoming.heartbeats.length);
    assert.deepEqual(await incoming.verify(), []);
    assert.equal(incoming.heartbeats[0], src.heartbeats.at(-1)! + 1);
    dst.close();
    await incoming.close();
    await src.close();
  });
}
