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
//
// An outage is said out loud here, once for every kind of source: the first
// path lost makes the source unavailable ('unavailable' once it lasted
// announceAfterMs, then 'still-unavailable' every reportEveryMs while it
// lasts), the last one back makes it available again ('restored', with how
// long it took, when its start was said), and a source given up says so
// ('gone'). A blip shorter than announceAfterMs (a connection re-made at
// once, one request of many failing while the rest succeed) is counted but
// not said. The same outages are counted (availabilityStats) for /metrics and
// `vm status`; the CLI's logs print the events in the words of
// availability-text.ts.
import { SourceGoneError } from '../page-source.js';
import { SOURCE_STATES, type SourceState } from './source-state.js';

/** What the operator hears of a source's peer (AvailabilityStats counts the same). */
export type AvailabilityEvent =
  | {
      /** The first path to the peer was lost: reads wait (the guest with them) while the source tries again. */
      readonly type: 'unavailable';
      readonly source: string;
      /** When it began, ms since the epoch. */
      readonly since: number;
      /** Reads of the source waiting now (a demand read is a faulting thread, or several coalesced). */
      readonly readsWaiting: number;
      /** Whether this side tries again (a page server, a store); false when it waits for the peer to come back (a migration source). */
      readonly retrying: boolean;
      /** The time left before the source is given up; undefined when there is no deadline. */
      readonly deadlineInMs: number | undefined;
      /** Why, in the last error's words. */
      readonly error: string | undefined;
    }
  | {
      /** The outage goes on (said every reportEveryMs). */
      readonly type: 'still-unavailable';
      readonly source: string;
      readonly since: number;
      readonly forMs: number;
      readonly readsWaiting: number;
      readonly retrying: boolean;
      readonly deadlineInMs: number | undefined;
      readonly error: string | undefined;
    }
  | {
      /** Every path is back. */
      readonly type: 'restored';
      readonly source: string;
      readonly afterMs: number;
      /** The most reads waiting at once during the outage. */
      readonly readsWaited: number;
    }
  | {
      /** The source was given up (its deadline passed, the peer refused, its image changed): every read waiting fails. */
      readonly type: 'gone';
      readonly source: string;
      readonly reason: string;
      /** How long the outage it ended lasted, when it ended one. */
      readonly afterMs: number | undefined;
      readonly readsFailed: number;
    };

export type AvailabilityEventType = AvailabilityEvent['type'];

/** A source's peer now: reachable, not (an outage under way), given up, or the source closed. */
export type AvailabilityState = 'available' | 'unavailable' | 'gone' | 'closed';

/** The outages of one source so far, and the current one. */
export interface AvailabilityStats {
  readonly source: string;
  readonly state: AvailabilityState;
  /** Outages begun (the current one included). */
  readonly outages: number;
  /** Their total length, the current one's time so far included. */
  readonly outageMs: number;
  /** The current outage: when it began (ms since the epoch), for how long, the reads waiting, the deadline. */
  readonly current: { readonly since: number; readonly forMs: number; readonly readsWaiting: number; readonly deadlineInMs: number | undefined } | undefined;
}

/** What a source that can lose its peer offers its callers (every network source; PageSource has them as optional members). */
export interface ObservableAvailability {
  readonly availabilityStats: AvailabilityStats;
  /** Hear every AvailabilityEvent from now on; returns the function that stops the listener. */
  onAvailability(listener: (event: AvailabilityEvent) => void): () => void;
}

/** How often an outage that goes on is said again. */
export const DEFAULT_OUTAGE_REPORT_EVERY_MS = 5_000;
/** How long an outage lasts before it is said: a connection re-made at once, or one request of many failing, is a blip, counted only. */
export const DEFAULT_OUTAGE_ANNOUNCE_AFTER_MS = 200;

export interface SourceAvailabilityOptions {
  /** The source, for errors ("page server tcp://127.0.0.1:7000"). */
  readonly description: () => string;
  /**
   * Called once, when the source stops being open (gone or closed): fail
   * every read waiting, each with readError (RequestTable.failAll), and let
   * go of the peer (connections, requests, timers).
   */
  readonly onEnd: () => void;
  /** Reads of the source waiting now (RequestTable.pendingReads), for the events and stats. */
  readonly readsWaiting?: () => number;
  /** How often an outage that goes on is said again ('still-unavailable'; default 5 s). */
  readonly reportEveryMs?: number;
  /**
   * How long an outage lasts before it is said ('unavailable'; its end is
   * said only then too); default 200 ms. Shorter ones are counted only.
   */
  readonly announceAfterMs?: number;
}

/** A network source's life: open, gone (given up, with why), closed. */
export class SourceAvailability implements ObservableAvailability {
  private stateValue: SourceState = 'open';
  private reasonValue: Error | undefined;
  private readonly listeners = new Set<(event: AvailabilityEvent) => void>();
  /** The paths lost now; the source is unavailable while there is one. */
  private readonly lostPaths = new Set<Outage>();
  private outageCount = 0;
  private pastOutageMs = 0;
  /** The current outage: its start (performance.now() and the epoch), the most reads waiting in it, and whether it was said. */
  private current: { startedAt: number; since: number; readsWaited: number; announced: boolean } | undefined;
  private announceTimer: NodeJS.Timeout | undefined;
  private reportTimer: NodeJS.Timeout | undefined;

  constructor(private readonly options: SourceAvailabilityOptions) {}

  onAvailability(listener: (event: AvailabilityEvent) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  get availabilityStats(): AvailabilityStats {
    const now = performance.now();
    const current = this.current;
    const state: AvailabilityState = this.stateValue === 'open' ? (current ? 'unavailable' : 'available') : this.stateValue;
    return {
      source: this.options.description(),
      state,
      outages: this.outageCount,
      outageMs: this.pastOutageMs + (current ? now - current.startedAt : 0),
      current: current && { since: current.since, forMs: now - current.startedAt, readsWaiting: this.readsWaiting(), deadlineInMs: this.deadlineInMs(now) },
    };
  }

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
    const readsFailed = this.readsWaiting();
    const afterMs = this.endOutage();
    this.options.onEnd();
    this.emit({ type: 'gone', source: this.options.description(), reason: error.message, afterMs, readsFailed });
    return true;
  }

  /** Close it; when it was open, every waiting read fails, with `reason`. False when it was closed already. */
  close(reason: Error): boolean {
    if (this.stateValue === 'closed') return false;
    const wasOpen = this.stateValue === 'open';
    this.stateValue = SOURCE_STATES.next(this.stateValue, 'close');
    if (wasOpen) {
      this.reasonValue ??= reason;
      this.endOutage();
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

  /** @internal A path was lost: the first one makes the source unavailable. */
  pathLost(path: Outage): void {
    this.lostPaths.add(path);
    const waiting = this.readsWaiting();
    if (this.current) {
      this.current.readsWaited = Math.max(this.current.readsWaited, waiting);
      return;
    }
    this.current = { startedAt: performance.now(), since: Date.now(), readsWaited: waiting, announced: false };
    this.outageCount++;
    const after = this.options.announceAfterMs ?? DEFAULT_OUTAGE_ANNOUNCE_AFTER_MS;
    if (after <= 0) return this.announce();
    this.announceTimer = setTimeout(() => this.announce(), after);
    this.announceTimer.unref();
  }

  /** @internal A path is back: the last one makes the source available again. */
  pathRestored(path: Outage): void {
    if (!this.lostPaths.delete(path) || this.lostPaths.size > 0 || !this.current) return;
    const readsWaited = Math.max(this.current.readsWaited, this.readsWaiting());
    const announced = this.current.announced;
    const afterMs = this.endOutage()!;
    if (announced) this.emit({ type: 'restored', source: this.options.description(), afterMs, readsWaited });
  }

  /** The outage lasted announceAfterMs (or is said at once): 'unavailable', then a reminder every reportEveryMs. */
  private announce(): void {
    this.announceTimer = undefined;
    const current = this.current;
    if (!current || !this.isOpen) return;
    current.announced = true;
    const now = performance.now();
    const waiting = this.readsWaiting();
    current.readsWaited = Math.max(current.readsWaited, waiting);
    this.emit({ type: 'unavailable', source: this.options.description(), since: current.since, readsWaiting: waiting, retrying: this.retrying(), deadlineInMs: this.deadlineInMs(now), error: this.lastError() });
    const every = this.options.reportEveryMs ?? DEFAULT_OUTAGE_REPORT_EVERY_MS;
    this.reportTimer = setInterval(() => this.stillUnavailable(), every);
    this.reportTimer.unref();
  }

  private stillUnavailable(): void {
    const current = this.current;
    if (!current || !this.isOpen) return;
    const now = performance.now();
    const waiting = this.readsWaiting();
    current.readsWaited = Math.max(current.readsWaited, waiting);
    this.emit({ type: 'still-unavailable', source: this.options.description(), since: current.since, forMs: now - current.startedAt, readsWaiting: waiting, retrying: this.retrying(), deadlineInMs: this.deadlineInMs(now), error: this.lastError() });
  }

  /** The last error of a path lost now. */
  private lastError(): string | undefined {
    for (const path of this.lostPaths) if (path.lastError) return path.lastError.message;
    return undefined;
  }

  /** The current outage is over (restored, given up or closed): counted, its timer stopped; returns how long it lasted. */
  private endOutage(): number | undefined {
    clearTimeout(this.announceTimer);
    this.announceTimer = undefined;
    clearInterval(this.reportTimer);
    this.reportTimer = undefined;
    const current = this.current;
    this.current = undefined;
    this.lostPaths.clear();
    if (!current) return undefined;
    const lastedMs = performance.now() - current.startedAt;
    this.pastOutageMs += lastedMs;
    return lastedMs;
  }

  private readsWaiting(): number {
    return this.options.readsWaiting?.() ?? 0;
  }

  private retrying(): boolean {
    for (const path of this.lostPaths) if (path.retrying) return true;
    return false;
  }

  /** The soonest deadline of the paths lost, from `now`; undefined when none has one. */
  private deadlineInMs(now: number): number | undefined {
    let soonest: number | undefined;
    for (const path of this.lostPaths) {
      const left = path.deadlineInMs(now);
      if (left !== undefined) soonest = Math.min(soonest ?? left, left);
    }
    return soonest;
  }

  private emit(event: AvailabilityEvent): void {
    for (const listener of [...this.listeners]) {
      try {
        listener(event);
      } catch (error) {
        // A listener's bug must not break the source's state (this runs inside its connection and timer callbacks).
        queueMicrotask(() => {
          throw error;
        });
      }
    }
  }
}

export interface OutageOptions {
  /** How long the peer may stay unreachable before the source is given up; Infinity: no deadline (someone else decides). */
  readonly deadlineMs: number;
  /** Whether this side tries again (default true); false when it waits for the peer to come back (a migration source reconnects to its destination). */
  readonly retrying?: boolean;
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

  get retrying(): boolean {
    return this.options.retrying ?? true;
  }

  /** The time left before the deadline gives the source up, from `now`; undefined when not lost or there is no deadline. */
  deadlineInMs(now = performance.now()): number | undefined {
    if (this.sinceValue === undefined || !Number.isFinite(this.options.deadlineMs)) return undefined;
    return Math.max(0, this.options.deadlineMs - (now - this.sinceValue));
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
    this.availability.pathLost(this);
    if (!Number.isFinite(this.options.deadlineMs)) return true;
    this.timer ??= setTimeout(() => this.check(), Math.max(1, Math.ceil(this.options.deadlineMs - (performance.now() - this.sinceValue))));
    return true;
  }

  /** The peer answered: the outage is over; the backoff starts again. */
  restored(): void {
    const wasLost = this.sinceValue !== undefined;
    this.sinceValue = undefined;
    this.delayMs = this.options.initialDelayMs;
    this.stop();
    if (wasLost) this.availability.pathRestored(this);
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
    if (!Number.isFinite(this.options.deadlineMs)) return false;
    const waitedMs = performance.now() - this.sinceValue!;
    if (waitedMs < this.options.deadlineMs) return false;
    this.stop();
    this.availability.giveUp(this.options.expired(waitedMs, this.lastValue));
    return true;
  }
}
