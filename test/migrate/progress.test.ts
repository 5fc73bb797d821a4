// What a migration's progress says while it runs and when it ends, read off
// two soft machines (soft-machine.ts: no KVM needed) migrating over real
// sockets, and printed by the CLI's own formatting: "to go" falls during a
// round, the rate is measured within the first round, no dirty rate is made
// up before one was measured, the summary says how pre-copy ended in words,
// and both sides count post-copy with the same words and the same numbers.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { formatEvent, formatMigrationProgress, formatMigrationReport } from '../../src/cli/vm-commands.js';
import type { MigrationMode } from '../../src/migrate/convergence.js';
import { DestinationMigration } from '../../src/migrate/destination-migration.js';
import { SourceMigration, type MigrationProgress } from '../../src/migrate/source-migration.js';
import { PAGE_SIZE } from '../../src/native.js';
import { SoftMachine, softMachineKind } from './soft-machine.js';
import { within } from '../helpers/waiting.js';

const WRITER_PAGES = 256;

/** Migrate a soft machine whose memory past the writer's pages holds data, sampling the source's progress every 2 ms. */
async function migrate(memoryBytes: number, mode: MigrationMode): Promise<{ samples: MigrationProgress[]; source: MigrationProgress; destination: ReturnType<DestinationMigration['progress']> }> {
  const source = SoftMachine.start({ memoryBytes, pattern: 'random', writePages: WRITER_PAGES, pagesPerTick: 8, tickMs: 2 });
  // Data (not zero) in every page the writer leaves alone: a round that moves bytes, long enough to be watched.
  source.memory.image().fill(0x5a, WRITER_PAGES * PAGE_SIZE);
  const kind = softMachineKind();
  const destination = await DestinationMigration.listen({ host: '127.0.0.1', port: 0, kind, stallTimeoutMs: 5000, reconnectDeadlineMs: 5000, progressTimeoutMs: 10_000 });
  const samples: MigrationProgress[] = [];
  try {
    const migration = new SourceMigration(source, { to: new URL(destination.url).host, mode, downtimeMs: 30, maxRounds: 3, stallTimeoutMs: 5000, progressTimeoutMs: 10_000 });
    const sampler = setInterval(() => samples.push(migration.progress()), 2);
    try {
      await within(60_000, 'the migration', migration.run());
    } finally {
      clearInterval(sampler);
    }
    await within(30_000, 'the destination', destination.done);
    return { samples, source: migration.progress(), destination: destination.progress() };
  } finally {
    destination.close();
    for (const machine of kind.built) await machine.close();
    await source.close();
  }
}

describe('migration progress, as both sides print it', { timeout: 150_000 }, () => {
  test('during the first round "to go" falls and the rate is measured; no dirty rate before one was; the summary says how pre-copy ended', async () => {
    const { samples, source } = await migrate(64 << 20, 'precopy');
    const firstRound = samples.filter((p) => p.state === 'precopy' && p.round === 0 && p.transferredBytes > 0);
    assert.ok(firstRound.length >= 3, `the first round was sampled (${firstRound.length} samples)`);
    const toGo = firstRound.map((p) => p.remainingPages);
    assert.ok(toGo.every((pages, i) => i === 0 || pages <= toGo[i - 1]!), `"to go" never rises during the round: ${toGo.join(' ')}`);
    assert.ok(toGo.at(-1)! < toGo[0]!, `"to go" falls during the round: ${toGo.join(' ')}`);
    assert.ok(firstRound.some((p) => p.rateBytesPerSecond > 0), 'a rate is shown within the first round');
    for (const p of firstRound) {
      assert.equal(p.dirtyPagesPerSecond, undefined, 'the dirty rate is not known before a round ended');
      assert.doesNotMatch(formatMigrationProgress(p), /dirtying/);
    }
    const later = samples.find((p) => p.state === 'precopy' && p.round > 0);
    if (later) assert.match(formatMigrationProgress(later), /dirtying \d+ pages\/s/);

    const report = formatMigrationReport(source).join('\n');
    assert.doesNotMatch(report, /migrated \(|, mode\)|converged\)|round\(s\)/, report);
    assert.match(report, /^migrated in [\d.]+ s, stop-and-copy (once pre-copy converged|after \d+ pre-copy rounds?)/, report);
  });

  test('post-copy: both sides print the same words for the same counts (demand reads, read-ahead reads, pages pushed)', async () => {
    const { source, destination } = await migrate(16 << 20, 'postcopy');
    const sourceLine = formatMigrationReport(source)[0]!;
    const destinationLine = formatEvent({ event: 'migration', progress: destination })[0]!;
    assert.match(sourceLine, /^migrated in [\d.]+ s, post-copy from the start \(--mode postcopy\):/, sourceLine);
    const counts = (line: string): string => /post-copy \d+ demand reads, \d+ read-ahead reads, \d+ pages pushed/.exec(line)?.[0] ?? `none in: ${line}`;
    assert.equal(counts(sourceLine), counts(destinationLine), 'the source and the destination say the same');
    assert.equal(source.postcopyDemandReads + source.postcopyReadAheadReads, source.postcopyRequests);
  });
});
