// Whether a network source's peer is there, written once for every network
// source: the source's life (open, gone, closed: source-state.ts), and each
// outage of a path to the peer (a page server's connection, the object
// store) with its backoff between attempts and its deadline.
//
//   open ──an outage past its deadline, or the peer failed for good──▶ gone ──close()──▶ closed
//     └─────────────────────────────close()────────────────────────────────────────────▶ closed
//
// While open, a lost peer is not a failed read: reads wait (the faulting
// thread with them, as it must) while the source tries again, after
// initialDelayMs, doubling to maxDelayMs; an outage that lasts deadlineMs
// gives the source up. Gone or closed, every read still waiting, and every
// read after, fails with SourceGoneError naming why.
import { SourceGoneError } from '../page-source.js';
import { SOURCE_STATES, type SourceState } from './source-state.js';

export interface SourceAvailabilityOptions {
  /** The source, for errors ("page server tcp://127.0.0.1:7000"). */
  readonly description: () => string;
  /**
   * Called once, when the source stops being open (gone or closed): fail
   * every read waiting, each with readError (RequestTable.failAll), and let
   * go of the peer (connections, requests, timers).
   */
  readonly onEnd: () => void;
}

/** A network source's life: open, gone (given up, with why), closed. */
export class SourceAvailability {
  private stateValue: SourceState = 'open';
  private reasonValue: Error | undefined;

  constructor(private readonly options: SourceAvailabilityOptions) {}

  get state(): SourceState {
    return this.stateValue;
  }

  get isOpen(): boolean {
    return this.stateValue === 'open';
  }

  /** Why the source is gone or closed. */
  get reason(): Error | undefined {
    return this.reasonValue;
  }

  /** Give the source up for `error` (every waiting read fails); false when it was not open. */
  giveUp(error: Error): boolean {
    if (this.stateValue !== 'open') return false;
    this.stateValue = SOURCE_STATES.next(this.stateValue, 'gave-up');
    this.reasonValue = error;
    this.options.onEnd();
    return true;
  }

  /** Close it; when it was open, every waiting read fails, with `reason`. False when it was closed already. */
  close(reason: Error): boolean {
    if (this.stateValue === 'closed') return false;
    const wasOpen = this.stateValue === 'open';
    this.stateValue = SOURCE_STATES.next(this.stateValue, 'close');
    if (wasOpen) {
      this.reasonValue ??= reason;
      this.options.onEnd();
    }
    return true;
  }

  /** What a read of [offset, +lengthBytes) fails with once the source is not open. */
  readError(offset: number, lengthBytes: number): SourceGoneError {
    const reason = this.reasonValue?.message ?? 'the source is gone';
    return new SourceGoneError(offset, lengthBytes, `${this.options.description()}: ${reason}`, { cause: this.reasonValue });
  }

  /** An outage tracker for one path to the peer; its deadline gives this source up. */
  outage(options: OutageOptions): Outage {
    return new Outage(this, options);
  }
}

export interface OutageOptions {
  /** How long the peer may stay unreachable before the source is given up. */
  readonly deadlineMs: number;
  /** The first wait before trying again, doubled each time up to maxDelayMs. */
  readonly initialDelayMs: number;
  readonly maxDelayMs: number;
  /** The error the source is given up with once the deadline passed (PeerUnavailableError, StoreUnavailableError). */
  expired(waitedMs: number, last: Error | undefined): Error;
}

/**
 * One path to the peer being unreachable: since when, the last error, the
 * backoff between attempts, and the deadline, which a timer watches too, so
 * a peer whose attempts all wait in their pause still runs out of time.
 */
export class Outage {
  private sinceValue: number | undefined;
  private lastValue: Error | undefined;
  private delayMs: number;
  private timer: NodeJS.Timeout | undefined;

  /** @internal Made by SourceAvailability.outage. */
  constructor(private readonly availability: SourceAvailability, private readonly options: OutageOptions) {
    this.delayMs = options.initialDelayMs;
  }

  /** performance.now() when it began, while it lasts. */
  get since(): number | undefined {
    return this.sinceValue;
  }

  /** The last error seen, kept after the outage ended too (for a later message). */
  get lastError(): Error | undefined {
    return this.lastValue;
  }

  /** The wait before the next attempt: initialDelayMs, then doubled each time up to maxDelayMs, until reset or restored. */
  nextDelayMs(): number {
    const delay = this.delayMs;
    this.delayMs = Math.min(this.delayMs * 2, this.options.maxDelayMs);
    return delay;
  }

  /** Start the backoff schedule again (a success that is not the end of an outage: a corrupt answer's retries). */
  resetDelay(): void {
    this.delayMs = this.options.initialDelayMs;
  }

  /**
   * The peer failed to answer: the outage begins (its deadline counted from
   * now) or goes on. Past its deadline the source is given up here and then;
   * returns false when it was (or is not open).
   */
  lost(error: Error | undefined): boolean {
    if (!this.availability.isOpen) return false;
    if (error) this.lastValue = error;
    this.sinceValue ??= performance.now();
    if (this.expireIfDue()) return false;
    this.timer ??= setTimeout(() => this.check(), Math.max(1, Math.ceil(this.options.deadlineMs - (performance.now() - this.sinceValue))));
    return true;
  }

  /** The peer answered: the outage is over; the backoff starts again. */
  restored(): void {
    this.sinceValue = undefined;
    this.delayMs = this.options.initialDelayMs;
    this.stop();
  }

  /** Stop watching the deadline (the source closed). */
  stop(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
  }

  private check(): void {
    this.timer = undefined;
    if (this.sinceValue === undefined || !this.availability.isOpen || this.expireIfDue()) return;
    // A timer may fire a fraction early: wait the rest.
    this.timer = setTimeout(() => this.check(), Math.max(1, Math.ceil(this.options.deadlineMs - (performance.now() - this.sinceValue))));
  }

  private expireIfDue(): boolean {
    const waitedMs = performance.now() - this.sinceValue!;
    if (waitedMs < this.options.deadlineMs) return false;
    this.stop();
    this.availability.giveUp(this.options.expired(waitedMs, this.lastValue));
    return true;
  }
}
