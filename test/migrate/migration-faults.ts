// One migration between two soft machines (soft-machine.ts) through a frame
// proxy with one fault in it, run to where both sides have settled, and what
// each side ended with: the fault-injection suite's single case. The checks
// every case shares are here too: never two running copies (sampled all
// along), and the survivor's memory exactly what its writer last wrote, its
// heartbeat without gap or repeat.
import assert from 'node:assert/strict';
import { DestinationMigration, type DestinationProgress } from '../../src/migrate/destination-migration.js';
import { SourceMigration, type MigrationProgress } from '../../src/migrate/source-migration.js';
import type { MigrationMode } from '../../src/migrate/convergence.js';
import type { MigrationSecurity } from '../../src/migrate/transport/channels.js';
import { MigrationMessageType } from '../../src/migrate/protocol/messages.js';
import { MessageType } from '../../src/protocol/wire.js';
import { FrameProxy, type FrameFault } from './frame-proxy.js';
import type { AvailabilityEvent } from '../../src/sources/network/availability.js';
import { SoftMachine, softMachineKind, type SoftMachineConfig } from './soft-machine.js';
import { within } from '../helpers/waiting.js';

/** The frames a fault can be placed at: the migration's own type codes, and the page protocol's for post-copy's page replies. */
export const FRAME = {
  SWITCHOVER: MigrationMessageType.SWITCHOVER,
  RUNNING: MigrationMessageType.RUNNING,
  COMPLETE: MigrationMessageType.COMPLETE,
  VERIFIED: MigrationMessageType.VERIFIED,
  READY: MigrationMessageType.READY,
  GO: MigrationMessageType.GO,
  /** Pre-copy's pages. */
  PAGES: MigrationMessageType.PAGES,
  /** Post-copy: a READ's answer (CHECKED_PAGES). */
  PAGES_REPLY: MessageType.CHECKED_PAGES,
  /** Post-copy: pages pushed unasked (MIG_PUSH). */
  PUSH: MigrationMessageType.PUSH,
} as const;

export interface FaultCase {
  mode: MigrationMode;
  fault?: FrameFault;
  /** The destination's deadline for a source that does not come back (ms). */
  destinationDeadlineMs?: number;
  /** The source's reconnect deadline (ms). */
  sourceDeadlineMs?: number;
  /** TLS-PSK on both connections (the proxy must then run raw: `fault.afterBytes`). */
  security?: MigrationSecurity;
  /** The soft machine's writer, over the default (say, a balloon: giveBackEvery). */
  machine?: Partial<Omit<SoftMachineConfig, 'kind'>>;
  /** Called with the survivor once it was seen running on, before its memory is verified (which reads every page). */
  inspect?: (survivor: SoftMachine) => Promise<void>;
  /** Called once the source's run ended or paused for the operator (an operator's action). */
  operator?: (migration: SourceMigration, destination: DestinationMigration<SoftMachine>) => Promise<void>;
}

export interface FaultOutcome {
  /** Where the guest runs at the end. */
  runsOn: 'source' | 'destination' | 'nowhere';
  source: MigrationProgress;
  sourceError: Error | undefined;
  destination: DestinationProgress;
  /** Moments both copies ran at once (must be 0). */
  bothRunning: number;
  /**
   * The destination runs the guest but waits, paused, for pages only a source
   * that is gone for good had (its vCPUs blocked; nothing poisoned): the
   * truth of an unhealed cut after GO, whose way out is the operator's.
   */
  stranded: boolean;
  proxy: FrameProxy;
  /** What the destination said of its source's outages (a cut in post-copy: unavailable, then restored when it reconnects). */
  availability: AvailabilityEvent[];
}

const CONFIG = { memoryBytes: 8 << 20, pattern: 'random' as const, writePages: 1024, pagesPerTick: 24, tickMs: 2 };

export async function runFaultCase(c: FaultCase, seed: number): Promise<FaultOutcome> {
  const source = SoftMachine.start({ ...CONFIG, ...c.machine }, seed);
  const kind = softMachineKind();
  const destination = await DestinationMigration.listen({ host: '127.0.0.1', port: 0, kind, stallTimeoutMs: 1000, reconnectDeadlineMs: c.destinationDeadlineMs ?? 4000, progressTimeoutMs: 5000, security: c.security });
  const availability: AvailabilityEvent[] = [];
  destination.on('availability', (event) => availability.push(event));
  const target = new URL(destination.url);
  const proxy = await FrameProxy.start({ host: target.hostname, port: Number(target.port) }, c.fault);
  let bothRunning = 0;
  const sampler = setInterval(() => {
    if (source.running && kind.built.some((m) => m.running)) bothRunning++;
  }, 2);
  try {
    // Let the writer dirty some pages first (a count of beats, not a time: a loaded machine writes slower), so
    // pre-copy has runs of pages and rounds to do.
    await within(10_000, 'the source writer\'s first beats', new Promise<void>((resolve) => {
      const check = (): void => {
        if (source.heartbeat < 20) return;
        source.off('heartbeat', check);
        resolve();
      };
      source.on('heartbeat', check);
      check();
    }));
    const migration = new SourceMigration(source, {
      to: proxy.address,
      mode: c.mode,
      downtimeMs: 30,
      maxRounds: 4,
      stallTimeoutMs: 1000,
      reconnectDeadlineMs: c.sourceDeadlineMs ?? 4000,
      progressTimeoutMs: 5000,
      security: c.security,
    });
    let sourceError: Error | undefined;
    const run = migration.run().catch((error: Error) => {
      sourceError = error;
    });
    const waiting = new Promise<void>((resolve) => migration.once('waiting', () => resolve()));
    await within(30_000, `the source's run (${proxy.log.slice(-12).join(' ')})`, Promise.race([run, waiting]));
    if (c.operator) {
      await c.operator(migration, destination);
      await within(10_000, 'the source after the operator', run);
    }
    // The destination settles: done or failed — or, its source gone for good after GO, paused for ever.
    const sourceGone = (): boolean => ['completed', 'failed', 'cancelled'].includes(migration.state);
    const strandedThere = new Promise<void>((resolve) => {
      const check = setInterval(() => {
        if (destination.state === 'postcopy-paused' && sourceGone()) {
          clearInterval(check);
          resolve();
        }
      }, 20);
      void destination.done.finally(() => clearInterval(check)).catch(() => {});
    });
    await within((c.destinationDeadlineMs ?? 4000) + 5000, `the destination (${destination.state})`, Promise.race([destination.done.then(() => {}, () => {}), strandedThere]));
    clearInterval(sampler);
    const incoming = kind.built[0];
    const runsOn = source.running ? 'source' : incoming?.running ? 'destination' : 'nowhere';
    const stranded = destination.state === 'postcopy-paused';
    const outcome: FaultOutcome = { runsOn, source: migration.progress(), sourceError, destination: destination.progress(), bothRunning, stranded, proxy, availability };
    await checkSurvivor(outcome, source, incoming, c.inspect);
    return outcome;
  } finally {
    clearInterval(sampler);
    destination.close();
    proxy.close();
    for (const machine of kind.built) await machine.close();
    await source.close();
  }
}

/** The survivor holds exactly what its writer wrote, and its heartbeat went on without a gap or a repeat. */
async function checkSurvivor(outcome: FaultOutcome, source: SoftMachine, incoming: SoftMachine | undefined, inspect?: (survivor: SoftMachine) => Promise<void>): Promise<void> {
  assert.equal(outcome.bothRunning, 0, 'two running copies of the guest');
  if (outcome.runsOn === 'nowhere') return;
  if (outcome.stranded) {
    // It cannot run on, and says why; its memory is checked once complete, which it cannot be.
    assert.ok(outcome.destination.connectionLost, 'the stranded destination says its connection was lost');
    return;
  }
  const survivor = outcome.runsOn === 'source' ? source : incoming!;
  // A few more beats, so a copy that runs is seen to run on.
  const before = survivor.heartbeat;
  await within(10_000, 'heartbeats from the survivor', new Promise<void>((resolve) => {
    const check = (): void => {
      if (survivor.heartbeat >= before + 3) {
        survivor.off('heartbeat', check);
        resolve();
      }
    };
    survivor.on('heartbeat', check);
    check();
  }));
  await inspect?.(survivor);
  assert.deepEqual(await survivor.verify(), [], `pages of the ${outcome.runsOn} that differ from what its writer wrote`);
  const beats = outcome.runsOn === 'source' ? source.heartbeats : [...source.heartbeats, ...incoming!.heartbeats];
  assert.deepEqual(beats, beats.map((_, i) => beats[0]! + i), 'the heartbeat went on without a gap or a repeat');
}

