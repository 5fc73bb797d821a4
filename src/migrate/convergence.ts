// When pre-copy stops and what comes next. Pre-copy sends all RAM while the
// guest runs, then, round after round, the pages it dirtied meanwhile. Each
// round measures the bandwidth; the expected downtime of stopping now is what
// is left to send divided by it. Stop when that is under the target; when the
// rounds run out or the dirty set stops shrinking (the guest dirties as fast
// as we send), 'hybrid' switches to post-copy (the rest is fetched on demand
// and pushed in the background after the guest moves) and 'precopy' stops
// anyway and sends the rest with the guest paused. 'postcopy' sends nothing
// before switchover.

export type MigrationMode = 'precopy' | 'postcopy' | 'hybrid';

export interface ConvergenceOptions {
  mode: MigrationMode;
  /** The downtime to aim for (ms). */
  downtimeMs: number;
  /** Pre-copy rounds at most, the first full pass included. */
  maxRounds: number;
}

export interface RoundMeasure {
  /** Bytes sent in the round (zero pages count their marker only). */
  bytesSent: number;
  durationMs: number;
  /** Pages dirty once the round ended (what the next round, or switchover, must send). */
  dirtyPages: number;
  pageSizeBytes: number;
}

export type ConvergenceDecision =
  /** Another pre-copy round. */
  | { next: 'round' }
  /** Pause and send what is left, then resume on the destination with every page there. */
  | { next: 'stop-and-copy'; reason: 'converged' | 'rounds-exhausted' | 'not-converging' }
  /** Pause, send the state and the dirty list, resume on the destination; the rest comes after. */
  | { next: 'postcopy'; reason: 'mode' | 'rounds-exhausted' | 'not-converging' };

/** How pre-copy ends. */
export type SwitchoverDecision = Exclude<ConvergenceDecision, { next: 'round' }>;

export class ConvergencePolicy {
  private rounds = 0;
  private bandwidthBytesPerMs = 0;
  private readonly dirtyHistory: number[] = [];

  constructor(readonly options: ConvergenceOptions) {
    if (!(options.downtimeMs > 0)) throw new RangeError(`downtimeMs must be positive, got ${options.downtimeMs}`);
    if (!Number.isInteger(options.maxRounds) || options.maxRounds < 1) throw new RangeError(`maxRounds must be a positive integer, got ${options.maxRounds}`);
  }

  /** Before any round: pure post-copy switches at once. */
  initial(): ConvergenceDecision {
    return this.options.mode === 'postcopy' ? { next: 'postcopy', reason: 'mode' } : { next: 'round' };
  }

  /** Measured bandwidth (bytes/ms), smoothed over rounds; 0 before the first. */
  get bandwidth(): number {
    return this.bandwidthBytesPerMs;
  }

  get roundsDone(): number {
    return this.rounds;
  }

  /** The downtime (ms) stopping with `dirtyPages` left would take at the measured bandwidth. */
  expectedDowntimeMs(dirtyPages: number, pageSizeBytes: number): number {
    if (this.bandwidthBytesPerMs <= 0) return Number.POSITIVE_INFINITY;
    return (dirtyPages * pageSizeBytes) / this.bandwidthBytesPerMs;
  }

  /** A round ended: decide what comes next. */
  afterRound(round: RoundMeasure): ConvergenceDecision {
    this.rounds++;
    if (round.durationMs > 0 && round.bytesSent > 0) {
      const measured = round.bytesSent / round.durationMs;
      // Weigh the newest round most: the link and the guest both change.
      this.bandwidthBytesPerMs = this.bandwidthBytesPerMs === 0 ? measured : 0.5 * this.bandwidthBytesPerMs + 0.5 * measured;
    }
    this.dirtyHistory.push(round.dirtyPages);
    if (this.expectedDowntimeMs(round.dirtyPages, round.pageSizeBytes) <= this.options.downtimeMs) return { next: 'stop-and-copy', reason: 'converged' };
    const stalled = this.notConverging();
    if (this.rounds >= this.options.maxRounds || stalled) {
      const reason = stalled ? 'not-converging' : 'rounds-exhausted';
      return this.options.mode === 'hybrid' ? { next: 'postcopy', reason } : { next: 'stop-and-copy', reason };
    }
    return { next: 'round' };
  }

  /** The dirty set did not shrink by a tenth over the last two rounds (after the first full pass). */
  private notConverging(): boolean {
    const h = this.dirtyHistory;
    if (h.length < 3) return false;
    const [a, , c] = h.slice(-3) as [number, number, number];
    return c > a * 0.9;
  }
}
