// The fault-injection suite: a live migration cut before and after every
// frame of its commit (SWITCHOVER, READY, GO, RUNNING, COMPLETE, VERIFIED),
// in post-copy and in stop-and-copy, the link back at once. Whatever the
// frame: never two running copies; exactly one copy runs at the end, where
// the commit says it must (the source until GO left, the destination from
// GO on), its memory exactly what its writer wrote and its heartbeat
// continuous; and both sides say the truth about it. Then the faults that do
// not heal: the link cut for good with GO in flight (the source says it does
// not know, waits for the operator, who takes the guest back), a blackhole
// across the commit, a cut mid-pre-copy and mid-push. The rest of the matrix
// (every frame × every mode × every fault) runs with UF_FAULT_MATRIX=full; a
// seed (printed) picks which extra cases run otherwise.
//
// The machines are soft ones (soft-machine.ts: real guest RAM, the real
// userfaultfd and pager, a worker for a vCPU) so that this runs where
// /dev/kvm does not; test/migrate/recovery.test.ts runs the VMM processes.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import type { MigrationMode } from '../../src/migrate/convergence.js';
import { FRAME, runFaultCase, type FaultOutcome } from './migration-faults.js';
import type { Direction, Fault } from './frame-proxy.js';
import { MigrationStoppedError, MigrationTakenBackError } from '../../src/migrate/errors.js';
import { availabilityLine } from '../../src/sources/network/availability-text.js';

const COMMIT: Array<{ name: keyof typeof FRAME; direction: Direction }> = [
  { name: 'SWITCHOVER', direction: 'to-destination' },
  { name: 'READY', direction: 'to-source' },
  { name: 'GO', direction: 'to-destination' },
  { name: 'RUNNING', direction: 'to-source' },
  { name: 'COMPLETE', direction: 'to-source' },
  { name: 'VERIFIED', direction: 'to-destination' },
];

/**
 * Where the guest must run after a healed cut at a frame: the source while
 * GO has not left it (a cut before READY arrives, or READY's arrival racing
 * the cut, abandons; GO written into a socket that is then cut is "in
 * flight", and the destination is asked), the destination from GO on.
 */
function expectedOwner(frame: keyof typeof FRAME, where: 'before' | 'after'): 'source' | 'destination' {
  if (frame === 'SWITCHOVER') return 'source';
  if (frame === 'READY' && where === 'before') return 'source';
  return 'destination';
}

function assertTruthful(outcome: FaultOutcome, mode: MigrationMode): void {
  const { source, destination } = outcome;
  if (outcome.runsOn === 'source') {
    assert.equal(source.state, 'failed', 'the source says the migration failed');
    assert.equal(source.guestOwner, 'source');
    assert.ok(outcome.sourceError, 'the source\'s run ended with the error');
    assert.ok(destination.state === 'failed' || destination.state === 'cancelled', `the destination discarded what it had (it says ${destination.state})`);
    assert.equal(destination.runsGuest, false);
  } else {
    assert.equal(source.state, 'completed', `the source completed (${outcome.sourceError?.message ?? ''})`);
    assert.equal(source.verified, true, 'every page verified');
    assert.equal(source.guestOwner, 'destination');
    assert.equal(destination.state, 'completed');
    assert.equal(destination.runsGuest, true);
    // VERIFIED itself lost: the destination says the verdict never came; otherwise it heard it.
    assert.ok(destination.verified === true || destination.verdictLost === true, `the destination's verdict: ${JSON.stringify(destination)}`);
  }
  void mode;
}

const MODES: MigrationMode[] = ['postcopy', 'precopy'];

describe('a migration cut at any frame of its commit strands no guest and runs it once', { timeout: 600_000 }, () => {
  for (const mode of MODES) {
    for (const frame of COMMIT) {
      for (const where of ['before', 'after'] as const) {
        const owner = expectedOwner(frame.name, where);
        test(`${mode}: cut ${where} ${frame.name}, link back at once → the guest runs on the ${owner}, once, its memory intact`, async (t) => {
          const outcome = await runFaultCase({
            mode,
            fault: { direction: frame.direction, frameType: FRAME[frame.name], where, fault: 'cut-heal' },
            // VERIFIED lost: the destination waits this long for the source to say it again.
            destinationDeadlineMs: 1500,
          }, 100 + COMMIT.indexOf(frame));
          assert.ok(outcome.proxy.fired, `the fault fired (frames seen: ${outcome.proxy.log.join(' ')})`);
          assert.equal(outcome.runsOn, owner, `the guest runs on the ${owner} (frames: ${outcome.proxy.log.slice(-16).join(' ')})`);
          assertTruthful(outcome, mode);
          t.diagnostic(`source ${outcome.source.state}${outcome.source.recoveries ? ` after ${outcome.source.recoveries} recovery` : ''}, destination ${outcome.destination.state}`);
        });
      }
    }
  }
});

describe('faults that do not heal leave one side that says so, its guest intact', { timeout: 120_000 }, () => {
  test('GO in flight and the link gone for good: the source does not know, says so, waits for the operator; --abandon resumes the guest there; the destination discards at its deadline', async () => {
    const outcome = await runFaultCase({
      mode: 'postcopy',
      fault: { direction: 'to-destination', frameType: FRAME.GO, where: 'before', fault: 'cut-forever' },
      sourceDeadlineMs: 800,
      destinationDeadlineMs: 1500,
      async operator(migration) {
        const paused = migration.progress();
        assert.equal(paused.state, 'committing-paused');
        assert.equal(paused.guestOwner, 'unknown');
        assert.equal(paused.waitingForOperator, true);
        assert.ok(paused.reconnectError, 'why reconnecting failed is kept');
        await migration.requestAbandon();
      },
    }, 201);
    assert.equal(outcome.runsOn, 'source');
    assert.ok(outcome.sourceError instanceof MigrationTakenBackError, String(outcome.sourceError));
    assert.equal(outcome.destination.state, 'failed', 'the destination gave up on the source at its deadline');
    assert.equal(outcome.destination.runsGuest, false);
  });

  test('RUNNING lost and the link gone for good: the destination runs the guest; the source waits, its memory kept, and cannot take it back', async () => {
    const outcome = await runFaultCase({
      mode: 'precopy',
      fault: { direction: 'to-source', frameType: FRAME.RUNNING, where: 'before', fault: 'cut-forever' },
      sourceDeadlineMs: 800,
      destinationDeadlineMs: 1500,
      async operator(migration) {
        assert.equal(migration.progress().state, 'committing-paused');
        // GO reached it: abandoning would run the guest twice — but this side cannot know; the operator is
        // told exactly that. Here the operator stops the source instead.
        migration.stop();
      },
    }, 202);
    assert.equal(outcome.runsOn, 'destination');
    assert.ok(outcome.sourceError instanceof MigrationStoppedError, String(outcome.sourceError));
    assert.equal(outcome.destination.runsGuest, true);
    assert.equal(outcome.destination.verdictLost, true, 'every page is there; the verdict never came, and it says so');
  });

  test('a 2 s blackhole across GO (nothing closes): the silence is noticed, both sides reconnect once it passes, the guest runs on the destination', async () => {
    const outcome = await runFaultCase({
      mode: 'postcopy',
      fault: { direction: 'to-destination', frameType: FRAME.GO, where: 'before', fault: 'blackhole', blackholeMs: 2000 },
    }, 203);
    assert.equal(outcome.runsOn, 'destination');
    assertTruthful(outcome, 'postcopy');
  });

  test('a cut in the middle of post-copy (the third page reply lost): recovered, every page verified', async () => {
    const outcome = await runFaultCase({
      mode: 'postcopy',
      // The destination pulls what it lacks while the source pushes (which wins is timing): a page reply is sure to come.
      fault: { direction: 'to-destination', frameType: FRAME.PAGES_REPLY, occurrence: 3, where: 'before', fault: 'cut-heal' },
    }, 204);
    assert.ok(outcome.proxy.fired, `the cut came mid-post-copy (frames: ${outcome.proxy.log.slice(-20).join(' ')})`);
    assert.equal(outcome.runsOn, 'destination');
    assert.ok((outcome.source.recoveries ?? 0) >= 1);
    assertTruthful(outcome, 'postcopy');
    // The destination said the cut out loud while its guest waited, and the source's return.
    const said = outcome.availability.map((event) => event.type);
    assert.deepEqual([said[0], said.at(-1)], ['unavailable', 'restored'], `the destination's outage events: ${said.join(', ')}`);
    assert.match(availabilityLine(outcome.availability[0]!), /^migration source 127\.0\.0\.1:\d+ unreachable, (guest waiting \(\d+ reads? blocked\)|no reads waiting yet), waiting for it to reconnect \(last: .+\)$/);
    assert.match(availabilityLine(outcome.availability.at(-1)!), /^migration source 127\.0\.0\.1:\d+ reconnected after \d+\.\d s \(/);
  });

  test('a cut in the middle of pre-copy: the migration fails and the guest runs on at the source', async () => {
    const outcome = await runFaultCase({
      mode: 'precopy',
      fault: { direction: 'to-destination', frameType: FRAME.PAGES, occurrence: 5, where: 'before', fault: 'cut-heal' },
    }, 205);
    assert.ok(outcome.proxy.fired, `the cut came mid-pre-copy (frames: ${outcome.proxy.log.slice(-20).join(' ')})`);
    assert.equal(outcome.runsOn, 'source');
    assertTruthful(outcome, 'precopy');
  });
});

describe('a page altered on the way (its frame CRC fixed) never lands', { timeout: 60_000 }, () => {
  test('in pre-copy: the destination refuses it naming the page, the migration fails, the guest runs on at the source', async () => {
    const outcome = await runFaultCase({ mode: 'precopy', fault: { direction: 'to-destination', frameType: FRAME.PAGES, occurrence: 5, where: 'before', fault: 'tamper' } }, 301);
    assert.ok(outcome.proxy.fired);
    assert.equal(outcome.runsOn, 'source');
    assert.match(outcome.destination.error?.message ?? '', /page \d+ arrived with bytes that do not match the CRC32C the source computed/);
    assertTruthful(outcome, 'precopy');
  });

  for (const [what, frameType] of [['a demanded page (CHECKED_PAGES)', FRAME.PAGES_REPLY], ['a pushed page (PUSH)', FRAME.PUSH]] as const) {
    test(`in post-copy, ${what}: refused before install, the connection dropped, the page sent again; every page verified, the guest's memory exact`, async () => {
      const outcome = await runFaultCase({ mode: 'postcopy', fault: { direction: 'to-destination', frameType, occurrence: 2, where: 'before', fault: 'tamper' } }, 302);
      // Refused (a reconnect, the page sent again), or dropped unread (a push got there first and the READ
      // was cancelled): either way the altered bytes never land — the verify and the guest's own check say so.
      assert.equal(outcome.runsOn, 'destination');
      assertTruthful(outcome, 'postcopy');
    });
  }
});

describe('under TLS-PSK, where frames cannot be seen: faults at byte offsets', { timeout: 60_000 }, () => {
  const security = { psk: new Uint8Array(32).fill(0x5a) };
  for (const [fault, afterBytes, mode] of [['cut-heal', 60_000, 'postcopy'], ['cut-heal', 400_000, 'precopy'], ['blackhole', 100_000, 'postcopy']] as const) {
    test(`${mode}: ${fault} once ${afterBytes} bytes went to the destination → one copy runs, where the commit says, its memory intact`, async () => {
      const outcome = await runFaultCase({ mode, security, fault: { direction: 'to-destination', frameType: 0, afterBytes, where: 'before', fault, blackholeMs: 1500 } }, 401);
      assert.ok(outcome.proxy.fired, 'the fault fired');
      assert.notEqual(outcome.runsOn, 'nowhere');
      assertTruthful(outcome, mode);
    });
  }
});

// The rest of the matrix: every mode, fault and frame (UF_FAULT_MATRIX=full), or a few picked by a seed.
const FAULTS: Fault[] = ['cut-heal', 'cut-forever', 'blackhole'];
const matrix = [] as Array<{ mode: MigrationMode; frame: (typeof COMMIT)[number]; where: 'before' | 'after'; fault: Fault }>;
for (const mode of ['postcopy', 'precopy', 'hybrid'] as MigrationMode[]) {
  for (const frame of COMMIT) for (const where of ['before', 'after'] as const) for (const fault of FAULTS) matrix.push({ mode, frame, where, fault });
}
const full = process.env.UF_FAULT_MATRIX === 'full';
const seed = Number(process.env.UF_FAULT_SEED ?? Date.now() % 100_000);
const picked = full ? matrix : pick(matrix, 4, seed);

describe(`the fault matrix (${full ? 'all' : `4 picked by seed ${seed}`} of ${matrix.length} cases)`, { timeout: 1_800_000 }, () => {
  for (const { mode, frame, where, fault } of picked) {
    test(`${mode}: ${fault} ${where} ${frame.name} → one copy at most runs; a healed one runs where the commit says; the unhealed side says so`, async (t) => {
      const outcome = await runFaultCase({
        mode,
        fault: { direction: frame.direction, frameType: FRAME[frame.name], where, fault, blackholeMs: 1500 },
        // Past a blackhole, both sides must still be trying: it heals by itself; cut for good, the deadline passes.
        sourceDeadlineMs: fault === 'blackhole' ? 4000 : 1000,
        destinationDeadlineMs: 1500,
        // Unhealed: the operator asks the destination (`vm status` there) what it did, then acts: it discarded the
        // guest (GO never read) → take it back here (--abandon); it runs the guest → stop this side (vm stop).
        operator: async (migration, destination) => {
          if (!migration.waitingForOperator) return;
          const deadline = Date.now() + 10_000;
          while (!['failed', 'cancelled', 'postcopy', 'postcopy-paused', 'verifying', 'completed'].includes(destination.state) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
          if (migration.state === 'committing-paused' && !destination.progress().runsGuest) await migration.requestAbandon();
          else migration.stop();
        },
      }, seed);
      t.diagnostic(`outcome runsOn=${outcome.runsOn} stranded=${outcome.stranded} bothRunning=${outcome.bothRunning} source=${outcome.source.state} destination=${outcome.destination.state}`);
      if (fault !== 'cut-forever') {
        assert.equal(outcome.stranded, false, 'a fault that heals strands nothing');
        assert.equal(outcome.runsOn, expectedOwner(frame.name, where));
        assertTruthful(outcome, mode);
      } else {
        // Unhealed: the guest is on one side only, which says so: the source (before GO left), or the destination
        // (GO read) — running, or waiting for pages only the gone source had.
        assert.notEqual(outcome.runsOn, 'nowhere', 'a guest runs somewhere');
        if (outcome.runsOn === 'destination') assert.equal(outcome.destination.runsGuest, true);
        else assert.equal(outcome.source.guestOwner, 'source');
      }
    });
  }
});

function pick<T>(items: T[], count: number, seedValue: number): T[] {
  let x = seedValue >>> 0 || 1;
  const out: T[] = [];
  const pool = [...items];
  while (out.length < count && pool.length) {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    out.push(pool.splice(x % pool.length, 1)[0]!);
  }
  return out;
}
