// The source side of a live migration: the guest runs here until switchover.
//
//   connect     main and urgent connections, one session; BEGIN (the machine) → ACCEPT
//   pre-copy    round 0 sends every page (zero pages as markers), each later round the pages
//               KVM's dirty log (and the VMM's own writes) say changed; the convergence policy
//               decides after each round: another, stop-and-copy, or post-copy
//   switchover  pause; the last dirty set; the VM state; stop-and-copy sends the dirty pages
//               then SWITCHOVER, post-copy sends the dirty list (DIRTY: the destination must not
//               keep its copy) then SWITCHOVER; RUNNING back means the guest runs there
//   post-copy   READs answered (urgent: demanded, main: background), every page not yet sent
//               pushed on main starting next to the latest demanded one; ALL_SENT at the end
//   complete    the destination's COMPLETE carries the digests of what it installed; compared
//               with what was sent, batch by batch → VERIFIED
//
// Before switchover a failure or a cancel leaves the guest running here, as if
// nothing happened. After it, the guest's only complete copy is split between
// the two sides: this side keeps the guest's memory until the destination
// confirms completion.
import { EventEmitter } from 'node:events';
import { PAGE_SIZE } from '../native.js';
import type { ReadMessage } from '../protocol/index.js';
import { MAX_READ_BYTES } from '../protocol/wire.js';
import type { MigrationSourceMachine } from '../vm/migratable.js';
import { ConvergencePolicy, type MigrationMode, type SwitchoverDecision } from './convergence.js';
import { isFinal, isPastSwitchover, isPaused, nextSourceState, sourceAllows, sourceOwnsGuest, type SourceMigrationEvent, type SourceMigrationState } from './migration-state.js';
import { PageBitmap } from '../pager/page-bitmap.js';
import { PageDigestTable, differingBatches } from './page-digests.js';
import { connectChannel, newSessionId, parseMigrationAddress, type MigrationSecurity } from './transport/channels.js';
import { RequestIds } from '../transport/index.js';
import { DEFAULT_STALL_TIMEOUT_MS, type AnyMessage, type MigrationConnection } from './transport/migration-connection.js';
import { ConnectionEndedError } from '../net/connection-errors.js';
import { errorSummary, MigrationCancelledError, MigrationConnectionLostError, MigrationError, MigrationRefusedError, MigrationStalledError, MigrationStoppedError, MigrationTakenBackError, MigrationVerificationError } from './errors.js';

export interface MigrateOptions {
  /** The destination, HOST:PORT or tcp://HOST:PORT (`vm receive --listen`). */
  to: string;
  /** Default 'hybrid'. */
  mode?: MigrationMode;
  /** Default 300 ms. */
  downtimeMs?: number;
  /** Default 10. */
  maxRounds?: number;
  connectTimeoutMs?: number;
  /** After a cut in post-copy, how long to keep reconnecting before waiting for `--resume` (default 60 s). */
  reconnectDeadlineMs?: number;
  /** TLS-PSK on both connections (the destination must hold the same key). */
  security?: MigrationSecurity;
  /** A connection that carries nothing for this long (pings unanswered) counts as cut (default 10 s). */
  stallTimeoutMs?: number;
  /**
   * How long the destination may take to answer BEGIN, SWITCHOVER, GO or
   * RESUME while its connections stay alive (default 60 s): past it the wait
   * ends as a cut would.
   */
  progressTimeoutMs?: number;
}

/** Where the guest-stopped time went, ms (the VMM's clock). */
export interface DowntimeBreakdown {
  /** The vCPUs out of the guest. */
  pauseMs: number;
  /** The last dirty-log read. */
  finalSyncMs: number;
  /** The VM state saved and encoded. */
  stateEncodeMs: number;
  /** Stop-and-copy's pages, the dirty list and the state written. */
  sendMs: number;
  /** The destination: state loaded (its own clock). */
  destinationLoadMs: number;
  /** The destination: vCPUs running (its own clock). */
  destinationResumeMs: number;
  /** From the pause to RUNNING: what the guest could not run for. */
  totalMs: number;
}

export interface MigrationProgress {
  role: 'source';
  state: SourceMigrationState;
  mode: MigrationMode;
  /** Pre-copy rounds done. */
  round: number;
  guestPages: number;
  /** Bytes written on both connections. */
  transferredBytes: number;
  /**
   * Pages still to send. Pre-copy, during a round: the rest of that round's
   * pages (those the guest dirties meanwhile are known when the round ends);
   * between rounds and at switchover: the dirty ones; post-copy: the pages
   * not yet sent.
   */
  remainingPages: number;
  /** Bytes per second: over the round under way (pre-copy; the last round's in its first moments), or since switchover (post-copy). */
  rateBytesPerSecond: number;
  /** Pages the guest dirtied per second during the last round; undefined until the first round ends (the dirty log is read at a round's end). */
  dirtyPagesPerSecond: number | undefined;
  dataPagesSent: number;
  zeroPagesSent: number;
  /** Post-copy READs answered: on the urgent connection (the destination's guest faults) and on the main one (its read-ahead). */
  postcopyRequests: number;
  postcopyDemandReads: number;
  postcopyReadAheadReads: number;
  /** Post-copy pages pushed unasked: as data, and as zero markers (the destination counts both as pushed). */
  pushedPages: number;
  pushedZeroPages: number;
  elapsedMs: number;
  expectedDowntimeMs: number | undefined;
  /** Why pre-copy stopped, once it did. */
  switchoverReason?: string;
  /** Post-copy cuts survived, and how long the last one took to recover from (ms, loss to RESUMED). */
  recoveries?: number;
  lastRecoveryMs?: number;
  downtime?: DowntimeBreakdown;
  /** Every page the destination installed matches what was sent (known at completion). */
  verified?: boolean;
  differingBatches?: number;
  /** Who runs the guest now: this side, the destination, or not known (GO sent, its answer lost with a cut). */
  guestOwner: 'source' | 'destination' | 'unknown';
  error?: { code: string; message: string };
  /** The connection loss that paused the migration (past GO), while it is paused. */
  connectionLost?: { code: string; message: string };
  /** Why the last reconnect attempt failed (a refusal, no answer), while paused. */
  reconnectError?: { code: string; message: string };
  /** Paused and past its reconnect deadline: it waits for `vm migrate --resume` (or, committing-paused, `--abandon`). */
  waitingForOperator?: boolean;
}

interface PendingComplete {
  digests: Uint8Array[];
  requestId: number;
}

const CHUNK_PAGES = 512;
const PUSH_RUN_PAGES = 64;

export interface SourceMigrationEvents {
  state: [state: SourceMigrationState];
  /** Paused past the reconnect deadline: it waits for the operator. */
  waiting: [];
}

export class SourceMigration extends EventEmitter<SourceMigrationEvents> {
  private stateValue: SourceMigrationState = 'idle';
  private readonly started = performance.now();
  private readonly mode: MigrationMode;
  private readonly policy: ConvergencePolicy;
  private readonly pages: number;
  private readonly digests: PageDigestTable;
  private main: MigrationConnection | undefined;
  private urgent: MigrationConnection | undefined;
  /** The session's request ids: they keep rising across reconnects (the destination refuses one not past the last as a replay). */
  private readonly requestIds = new RequestIds();
  /** The machine's dirty log is on (pre-copy started it; off once the guest runs on the destination). */
  private tracking = false;
  /** Pages changed since they were last sent. */
  private pending: PageBitmap;
  /** Post-copy: pages the destination still needs from here. */
  private toSend: PageBitmap | undefined;
  private pushCursor = 0;
  private cancelRequested: Error | undefined;
  private failure: Error | undefined;
  private completion: { resolve: (complete: PendingComplete) => void; reject: (error: Error) => void } | undefined;
  /** COMPLETE heard, not yet answered (it may come before RUNNING is handled, or before the push ends). */
  private pendingComplete: PendingComplete | undefined;
  /** GO's answer, once GO is sent. */
  private runningReply: Promise<AnyMessage> | undefined;
  /** The switchover's clock, for the downtime once RUNNING is heard. */
  private switchoverTimes: { started: number; paused: number; synced: number; encoded: number; ready: number; loadMicros: number } | undefined;
  private connectionLost: Error | undefined;
  private reconnectError: Error | undefined;
  private gaveUpReconnecting = false;
  private readonly progressTimeoutMs: number;
  private readonly zeroPage = Buffer.alloc(PAGE_SIZE);
  private readonly stats = { round: 0, dataPagesSent: 0, zeroPagesSent: 0, postcopyRequests: 0, postcopyDemandReads: 0, pushedPages: 0, pushedZeroPages: 0, rateBytesPerSecond: 0, dirtyPagesPerSecond: 0, recoveries: 0 };
  /** The pre-copy round under way: its pages, those sent so far, and where its clock and byte count started (for progress()). */
  private currentRound: { pages: number; sentPages: number; startedAt: number; bytesAtStart: number } | undefined;
  private switchoverReason: string | undefined;
  private downtime: DowntimeBreakdown | undefined;
  private verified: { ok: boolean; differing: number } | undefined;
  private postcopyStartedAt = 0;
  private readonly address: { host: string; port: number };
  private readonly sessionId = newSessionId();
  private resumeRequested: (() => void) | undefined;
  private lostAt: number | undefined;
  private lastRecoveryMs: number | undefined;
  private postcopyBytesAtStart = 0;

  constructor(private readonly target: MigrationSourceMachine, private readonly options: MigrateOptions) {
    super();
    this.mode = options.mode ?? 'hybrid';
    this.policy = new ConvergencePolicy({ mode: this.mode, downtimeMs: options.downtimeMs ?? 300, maxRounds: options.maxRounds ?? 10 });
    this.pages = target.memory.lengthBytes / PAGE_SIZE;
    this.digests = new PageDigestTable(this.pages, PAGE_SIZE);
    this.pending = new PageBitmap(this.pages);
    this.address = parseMigrationAddress(options.to);
    this.progressTimeoutMs = options.progressTimeoutMs ?? 60_000;
  }

  get state(): SourceMigrationState {
    return this.stateValue;
  }

  progress(): MigrationProgress {
    const remaining = this.toSend ? this.toSend.count() : this.pending.count();
    const round = this.currentRound;
    const roundMs = round ? performance.now() - round.startedAt : 0;
    // A round's own rate once it has run long enough to mean something; the last round's before that.
    const precopyRate = round && roundMs >= 50 ? ((this.main?.bytesSent ?? 0) - round.bytesAtStart) / roundMs * 1000 : this.stats.rateBytesPerSecond;
    const progress: MigrationProgress = {
      role: 'source',
      state: this.stateValue,
      mode: this.mode,
      round: this.stats.round,
      guestPages: this.pages,
      transferredBytes: (this.main?.bytesSent ?? 0) + (this.urgent?.bytesSent ?? 0),
      remainingPages: round ? round.pages - round.sentPages : this.stats.round === 0 && !this.toSend && this.stateValue === 'precopy' ? this.pages : remaining,
      rateBytesPerSecond: Math.round(this.postcopyStartedAt ? this.postcopyRate() : precopyRate),
      dirtyPagesPerSecond: this.stats.round > 0 ? Math.round(this.stats.dirtyPagesPerSecond) : undefined,
      dataPagesSent: this.stats.dataPagesSent,
      zeroPagesSent: this.stats.zeroPagesSent,
      postcopyRequests: this.stats.postcopyRequests,
      postcopyDemandReads: this.stats.postcopyDemandReads,
      postcopyReadAheadReads: this.stats.postcopyRequests - this.stats.postcopyDemandReads,
      pushedPages: this.stats.pushedPages,
      pushedZeroPages: this.stats.pushedZeroPages,
      elapsedMs: round2(performance.now() - this.started),
      expectedDowntimeMs: isPastSwitchover(this.stateValue) ? undefined : finiteOr(round2(this.policy.expectedDowntimeMs(this.pending.count(), PAGE_SIZE))),
      guestOwner: sourceOwnsGuest(this.stateValue) ? 'source' : this.stateValue === 'committing' || this.stateValue === 'committing-paused' ? 'unknown' : 'destination',
    };
    if (isPaused(this.stateValue)) {
      if (this.connectionLost) progress.connectionLost = errorSummary(this.connectionLost);
      if (this.reconnectError) progress.reconnectError = errorSummary(this.reconnectError);
      if (this.gaveUpReconnecting) progress.waitingForOperator = true;
    }
    if (this.switchoverReason) progress.switchoverReason = this.switchoverReason;
    if (this.stats.recoveries) {
      progress.recoveries = this.stats.recoveries;
      if (this.lastRecoveryMs !== undefined) progress.lastRecoveryMs = this.lastRecoveryMs;
    }
    if (this.downtime) progress.downtime = this.downtime;
    if (this.verified) {
      progress.verified = this.verified.ok;
      progress.differingBatches = this.verified.differing;
    }
    if (this.failure && sourceOwnsGuest(this.stateValue)) progress.error = errorSummary(this.failure);
    return progress;
  }

  /**
   * Cancel: before switchover the migration stops and the guest keeps running
   * here; after it there is nothing to cancel (the guest runs there), and the
   * request is refused.
   */
  cancel(reason = 'cancelled on the source'): void {
    if (!sourceOwnsGuest(this.stateValue) || this.stateValue === 'switchover') throw new MigrationError(`the migration is ${this.stateValue}: past switchover it cannot be cancelled (the guest is, or may be, the destination's)`);
    if (isFinal(this.stateValue)) throw new MigrationError(`the migration is already ${this.stateValue}`);
    this.cancelRequested = new MigrationCancelledError(reason);
    // A send may be waiting for a destination that stopped reading: ending the connections ends the wait.
    this.main?.destroy(this.cancelRequested);
    this.urgent?.destroy(this.cancelRequested);
  }

  /**
   * Run the migration to its end: resolves at completion; rejects with the
   * guest running here when it fails or is cancelled before GO (or the
   * operator takes it back, requestAbandon()). From GO on it never fails on
   * its own: a cut pauses it and it reconnects to learn the destination's
   * side (the commit in migration-state.ts and docs/migration.md).
   */
  async run(): Promise<MigrationProgress> {
    this.move('start');
    try {
      await this.connect();
      await this.call({ type: 'mig-begin', mode: this.mode, pageSizeBytes: PAGE_SIZE, memoryBytes: this.target.memory.lengthBytes, machineJson: JSON.stringify(this.target.describe()) }, 'mig-accept', this.progressTimeoutMs);
      this.move('connected');
      const decision = await this.precopy();
      await this.switchover(decision);
    } catch (caught) {
      const error = this.cancelRequested ?? this.failure ?? (caught as Error);
      this.failure = error;
      // GO never left: the guest is this side's, and runs on here.
      await this.abandon(error);
      throw error;
    }
    try {
      await this.handOver();
      return this.progress();
    } finally {
      this.stopTracking();
    }
  }

  /** Both connections, one session (the same session id on every reconnect). */
  private async connect(): Promise<void> {
    const timeout = this.options.connectTimeoutMs ?? 5000;
    const main = await connectChannel(this.address, 'main', this.sessionId, timeout, this.options.security, this.requestIds);
    main.pageSizeBytes = PAGE_SIZE;
    let urgent: MigrationConnection;
    try {
      urgent = await connectChannel(this.address, 'urgent', this.sessionId, timeout, this.options.security, this.requestIds);
    } catch (error) {
      main.destroy();
      throw error;
    }
    this.main = main;
    this.urgent = urgent;
    const stallMs = this.options.stallTimeoutMs ?? DEFAULT_STALL_TIMEOUT_MS;
    // Pre-copy's stream and the push queue on main: the peer's pongs there may wait behind them, so
    // hearing the peer on urgent (which carries no bulk data) also says main's peer is alive.
    main.watchLiveness(stallMs, { companion: urgent });
    urgent.watchLiveness(stallMs);
    this.listen(main);
    this.listen(urgent);
  }

  /**
   * From GO to the end: wait for RUNNING, push what the destination still
   * lacks, hear its COMPLETE and answer VERIFIED — and after any cut,
   * reconnect and learn from the destination where it stands (recover()).
   */
  private async handOver(): Promise<void> {
    for (;;) {
      try {
        switch (this.stateValue) {
          case 'committing':
            await this.awaitRunning();
            break;
          case 'postcopy':
            await this.postcopy();
            break;
          case 'completing':
            await this.awaitCompletion();
            break;
          case 'committing-paused':
          case 'postcopy-paused':
            await this.recover();
            break;
          case 'completed':
            return;
          default:
            // Taken back by the operator (the guest runs here again), or a state handOver never enters.
            throw this.failure ?? new MigrationError(`the migration is ${this.stateValue}`);
        }
      } catch (error) {
        if (isPaused(this.stateValue)) continue;
        throw error;
      }
    }
  }

  /** GO's answer: the guest runs on the destination. */
  private async awaitRunning(): Promise<void> {
    const running = (await this.runningReply!) as Extract<AnyMessage, { type: 'mig-running' }>;
    this.runningHeard(running.resumeMicros);
  }

  private runningHeard(resumeMicros: number | undefined): void {
    const ended = this.switchoverTimes;
    if (ended && !this.downtime) {
      const tRunning = performance.now();
      this.downtime = {
        pauseMs: round2(ended.paused - ended.started),
        finalSyncMs: round2(ended.synced - ended.paused),
        stateEncodeMs: round2(ended.encoded - ended.synced),
        sendMs: round2(ended.ready - ended.encoded - ended.loadMicros / 1000),
        destinationLoadMs: round2(ended.loadMicros / 1000),
        destinationResumeMs: round2((resumeMicros ?? 0) / 1000),
        totalMs: round2(tRunning - ended.started),
      };
    }
    this.stopTracking();
    this.move(this.toSend ? 'running' : 'running-all-sent');
  }

  /**
   * Reconnect with backoff until the deadline (options.reconnectDeadlineMs),
   * then wait for a resume request (requestResume) and try again: past GO a
   * migration cannot just fail. On the new connections RESUME asks where the
   * destination stands. Committing (GO may have been lost): RESUMED says
   * whether it runs the guest; if not, GO goes again. In post-copy: its
   * bitmap (QEMU's RECV_BITMAP) says what it has; every page it lacks is sent
   * again, and it re-sends the READs it still waits on. Every failed attempt
   * is kept (reconnectError, in status): a refusal is not swallowed.
   */
  private async recover(): Promise<void> {
    this.stats.recoveries++;
    for (;;) {
      const deadline = performance.now() + (this.options.reconnectDeadlineMs ?? 60_000);
      let delayMs = 50;
      while (performance.now() < deadline && isPaused(this.stateValue)) {
        try {
          await this.connect();
          if (!isPaused(this.stateValue)) return;
          const resumed = (await this.call({ type: 'mig-resume' }, 'mig-resumed', this.progressTimeoutMs)) as Extract<AnyMessage, { type: 'mig-resumed' }>;
          if (resumed.pageCount !== this.pages) throw new MigrationRefusedError(`RESUMED describes ${resumed.pageCount} pages; the guest has ${this.pages}`);
          this.reconnectError = undefined;
          this.lastRecoveryMs = round2(performance.now() - (this.lostAt ?? performance.now()));
          this.resumedWith(resumed);
          return;
        } catch (error) {
          if (!isPaused(this.stateValue)) return;
          this.reconnectError = error as Error;
          this.main?.destroy();
          this.urgent?.destroy();
          await new Promise((r) => setTimeout(r, delayMs));
          delayMs = Math.min(1000, delayMs * 2);
        }
      }
      if (!isPaused(this.stateValue)) return;
      // Past the deadline: stay paused (nothing is lost on either side) until someone asks to resume (or to take the guest back).
      this.gaveUpReconnecting = true;
      const asked = new Promise<void>((resolve) => (this.resumeRequested = resolve));
      this.emit('waiting');
      await asked;
      this.gaveUpReconnecting = false;
    }
  }

  /** RESUMED heard on new connections: go on from where the destination stands. */
  private resumedWith(resumed: Extract<AnyMessage, { type: 'mig-resumed' }>): void {
    const has = new PageBitmap(this.pages, resumed.bitmap);
    if (this.stateValue === 'committing-paused' && !resumed.running) {
      // GO was lost with the cut: the destination holds the state, ready; send GO again.
      this.sendGo();
      return;
    }
    if (!resumed.running) throw new MigrationRefusedError('the destination says it does not run the guest, though it answered RUNNING before');
    // Whatever it lacks goes again (stop-and-copy sent everything before SWITCHOVER: it lacks nothing).
    const missing = new PageBitmap(this.pages);
    for (let page = 0; page < this.pages; page++) if (!has.get(page)) missing.set(page);
    if (this.toSend) this.toSend = missing;
    else if (missing.count() > 0) throw new MigrationRefusedError(`the destination lacks ${missing.count()} page(s) after a stop-and-copy that sent them all`);
    if (this.stateValue === 'committing-paused') this.runningHeard(undefined);
    else this.move(this.toSend && this.toSend.count() > 0 ? 'resumed' : 'resumed-all-sent');
  }

  /** Paused past the reconnect deadline, waiting for `--resume`, `--abandon` or `vm stop`. */
  get waitingForOperator(): boolean {
    return this.gaveUpReconnecting && isPaused(this.stateValue);
  }

  /**
   * `vm stop` while paused by a cut: this side gives up (run() rejects with
   * MigrationStoppedError). Its guest is not resumed: past GO it is, or may
   * be, the destination's.
   */
  stop(): void {
    if (!sourceAllows(this.stateValue, 'stop')) throw new MigrationError(`the migration is ${this.stateValue}: only a migration paused by a cut can be stopped`);
    this.failure = new MigrationStoppedError(this.stateValue);
    this.move('stop');
    this.main?.destroy();
    this.urgent?.destroy();
    const resume = this.resumeRequested;
    this.resumeRequested = undefined;
    resume?.();
  }

  /** `vm migrate --resume`: try reconnecting again now (after the automatic attempts gave up). */
  requestResume(): void {
    if (!isPaused(this.stateValue)) throw new MigrationError(`the migration is ${this.stateValue}: only a migration paused by a cut resumes`);
    const resume = this.resumeRequested;
    this.resumeRequested = undefined;
    resume?.();
  }

  /**
   * `vm migrate --abandon`: the operator says the destination is gone for
   * good while this side does not know whether it read GO (committing-paused):
   * the guest resumes here. Refused in any other state — after the
   * destination said it runs the guest, resuming here would run it twice.
   */
  async requestAbandon(): Promise<void> {
    if (this.stateValue !== 'committing-paused') {
      throw new MigrationError(`the migration is ${this.stateValue}: only a migration that lost its connection with GO in flight (committing-paused) can be taken back${this.stateValue === 'postcopy-paused' ? ' — the destination runs the guest' : ''}`);
    }
    this.failure = new MigrationTakenBackError();
    this.move('taken-back');
    this.main?.destroy();
    this.urgent?.destroy();
    await this.target.resumeVcpus();
    const resume = this.resumeRequested;
    this.resumeRequested = undefined;
    resume?.();
    // A destination still waiting (ready-paused) discards what it loaded now rather than at its deadline.
    await this.tellCancelled(this.failure.message);
  }

  // ---- pre-copy ----------------------------------------------------------------

  private async precopy(): Promise<SwitchoverDecision> {
    let decision = this.policy.initial();
    if (decision.next === 'postcopy') return decision;
    this.target.startDirtyLog();
    this.tracking = true;
    // Arm the log (manual protect starts with every page set: clear them all),
    // then send every page: round 0 is the full pass.
    this.collectDirty(new PageBitmap(this.pages));
    let toSend = new PageBitmap(this.pages);
    toSend.setAll();
    for (;;) {
      this.checkCancelled();
      const roundStarted = performance.now();
      const bytesBefore = this.main!.bytesSent;
      this.currentRound = { pages: toSend.count(), sentPages: 0, startedAt: roundStarted, bytesAtStart: bytesBefore };
      try {
        await this.sendPages(toSend, this.stats.round);
      } finally {
        this.currentRound = undefined;
      }
      const durationMs = performance.now() - roundStarted;
      this.pending = new PageBitmap(this.pages);
      this.collectDirty(this.pending);
      const bytesSent = this.main!.bytesSent - bytesBefore;
      this.stats.rateBytesPerSecond = durationMs > 0 ? (bytesSent / durationMs) * 1000 : 0;
      this.stats.dirtyPagesPerSecond = durationMs > 0 ? (this.pending.count() / durationMs) * 1000 : 0;
      await this.main!.send({ type: 'mig-round', round: this.stats.round, pagesSent: toSend.count(), dirtyPages: this.pending.count() });
      this.stats.round++;
      decision = this.policy.afterRound({ bytesSent, durationMs, dirtyPages: this.pending.count(), pageSizeBytes: PAGE_SIZE });
      if (decision.next !== 'round') return decision;
      toSend = this.pending;
      this.pending = new PageBitmap(this.pages);
    }
  }

  /** The machine's dirty log (re-armed for the pages it reports), into `into`. */
  private collectDirty(into: PageBitmap): void {
    if (this.tracking) this.target.collectDirtyPages(into.bytes);
  }

  private stopTracking(): void {
    if (!this.tracking) return;
    this.target.stopDirtyLog();
    this.tracking = false;
  }

  /**
   * Send these pages as they are now: runs of data as PAGES, runs of zero as
   * ZERO markers. The bytes are copied out of guest RAM first: the guest may
   * write a page while its frame waits in the socket, and the frame's CRC
   * must match what goes on the wire (the dirty log sends the new contents
   * again later).
   */
  private async sendPages(pages: PageBitmap, round: number): Promise<void> {
    const image = this.target.memory.image();
    for (const [first, count] of pages.runs(CHUNK_PAGES)) {
      this.checkCancelled();
      const chunk = Buffer.from(image.subarray(first * PAGE_SIZE, (first + count) * PAGE_SIZE));
      for (const run of this.zeroAndDataRuns(chunk, first)) {
        if (run.zero) {
          for (let p = run.firstPage; p < run.firstPage + run.pageCount; p++) this.digests.recordZero(p);
          this.stats.zeroPagesSent += run.pageCount;
          await this.main!.send({ type: 'mig-zero', firstPage: run.firstPage, pageCount: run.pageCount, round });
        } else {
          const checksums = this.digests.record(run.firstPage, run.data);
          this.stats.dataPagesSent += run.pageCount;
          await this.main!.send({ type: 'mig-pages', firstPage: run.firstPage, pageCount: run.pageCount, round, checksums, data: run.data });
        }
      }
      if (this.currentRound) this.currentRound.sentPages += count;
    }
  }

  /** `chunk` (pages from `firstPage` on) cut into runs that are all zero or all data. */
  private *zeroAndDataRuns(chunk: Buffer, firstPage: number): Generator<{ firstPage: number; pageCount: number; zero: boolean; data: Buffer }> {
    const count = chunk.length / PAGE_SIZE;
    let runStart = 0;
    while (runStart < count) {
      const zero = this.isZeroPage(chunk, runStart);
      let runEnd = runStart + 1;
      while (runEnd < count && this.isZeroPage(chunk, runEnd) === zero) runEnd++;
      yield { firstPage: firstPage + runStart, pageCount: runEnd - runStart, zero, data: chunk.subarray(runStart * PAGE_SIZE, runEnd * PAGE_SIZE) };
      runStart = runEnd;
    }
  }

  private isZeroPage(chunk: Buffer, page: number): boolean {
    return chunk.compare(this.zeroPage, 0, PAGE_SIZE, page * PAGE_SIZE, (page + 1) * PAGE_SIZE) === 0;
  }

  // ---- switchover --------------------------------------------------------------

  private async switchover(decision: SwitchoverDecision): Promise<void> {
    this.switchoverReason = decision.reason;
    this.move('switchover');
    const postcopy = decision.next === 'postcopy';
    // Post-copy after pre-copy: the pages dirtied since they were sent go to the destination as a
    // dirty list while the guest still runs here, and it drops them then (a ping's answer says it
    // has); after the pause only the few dirtied since are left to list. Dropping tens of thousands
    // of scattered pages is tens of ms the guest would otherwise be stopped for.
    let earlyDirty: PageBitmap | undefined;
    if (postcopy && this.tracking) {
      this.collectDirty(this.pending);
      earlyDirty = this.pending;
      this.pending = new PageBitmap(this.pages);
      await this.sendDirtyList(earlyDirty, 0);
      await this.main!.roundTrip();
    }
    const t0 = performance.now();
    await this.target.pauseVcpus();
    const tPaused = performance.now();
    // The last read of the dirty log. Turning the log off rebuilds KVM's memslot (tens of ms on
    // a large guest): a paused guest dirties nothing, so that waits until the guest runs again.
    this.collectDirty(this.pending);
    const tSynced = performance.now();
    const stateJson = JSON.stringify(await this.target.saveState());
    const tEncoded = performance.now();
    if (!postcopy) {
      await this.sendPages(this.pending, this.stats.round);
      this.pending = new PageBitmap(this.pages);
    } else {
      // Never sent (pure post-copy, or pages pre-copy had not reached) or changed since sent: the destination fetches them.
      this.toSend = new PageBitmap(this.pages);
      for (let page = 0; page < this.pages; page++) if (this.pending.get(page) || earlyDirty?.get(page) || this.digests.crcOf(page) === undefined) this.toSend.set(page);
      await this.sendDirtyList(this.pending, earlyDirty ? 1 : 0);
    }
    const ready = (await this.call({ type: 'mig-switchover', postcopy, stateJson }, 'mig-ready', this.progressTimeoutMs)) as Extract<AnyMessage, { type: 'mig-ready' }>;
    this.switchoverTimes = { started: t0, paused: tPaused, synced: tSynced, encoded: tEncoded, ready: performance.now(), loadMicros: ready.loadMicros };
    // GO cannot leave on a connection already over: the destination never had it, the guest resumes here.
    if (this.main!.isEnded || this.failure) throw this.failure ?? new ConnectionEndedError(this.main!.name);
    this.sendGo();
  }

  /**
   * The commit: GO is written, and from this moment the guest may be the
   * destination's — this side never resumes it on its own again. RUNNING
   * (awaitRunning) or, after a cut, RESUMED (recover) says it is.
   */
  private sendGo(): void {
    this.move('go-sent');
    this.runningReply = this.call({ type: 'mig-go' }, 'mig-running', this.progressTimeoutMs);
    // Awaited by handOver(); a cut rejects it and moves to committing-paused (lost()).
    this.runningReply.catch(() => {});
  }

  /** A dirty list, in bitmap chunks (DIRTY), before SWITCHOVER: `list` numbers it (each past the one before). */
  private async sendDirtyList(dirty: PageBitmap, list: number): Promise<void> {
    // A multiple of 8 pages, so each message's bitmap is a slice of the whole one's bytes.
    const perMessage = 1 << 20;
    for (let first = 0; first < this.pages; first += perMessage) {
      const pageCount = Math.min(perMessage, this.pages - first);
      const bitmap = dirty.bytes.subarray(first / 8, first / 8 + Math.ceil(pageCount / 8));
      if (bitmap.some((byte) => byte !== 0)) await this.main!.send({ type: 'mig-dirty', list, firstPage: first, pageCount, bitmap });
    }
  }

  // ---- post-copy ---------------------------------------------------------------

  /** Push every page the destination still needs, starting next to what it last demanded; READs are answered meanwhile (listen()). */
  private async postcopy(): Promise<void> {
    this.postcopyStartedAt = performance.now();
    this.postcopyBytesAtStart = this.main!.bytesSent + this.urgent!.bytesSent;
    const toSend = this.toSend!;
    const image = this.target.memory.image();
    for (;;) {
      if (this.stateValue !== 'postcopy') throw this.connectionLost ?? new MigrationError(`the push stopped: the migration is ${this.stateValue}`);
      // The destination has every page already (it demanded the rest): nothing left to push.
      if (this.pendingComplete) break;
      const run = this.nextPushRun(toSend);
      if (!run) break;
      const [first, count] = run;
      for (let p = first; p < first + count; p++) toSend.clear(p);
      // The guest is paused here: its memory no longer changes, so the bytes go as they are.
      const chunk = Buffer.from(image.buffer, image.byteOffset + first * PAGE_SIZE, count * PAGE_SIZE);
      for (const part of this.zeroAndDataRuns(chunk, first)) {
        if (part.zero) {
          for (let p = part.firstPage; p < part.firstPage + part.pageCount; p++) this.digests.recordZero(p);
          this.stats.zeroPagesSent += part.pageCount;
          this.stats.pushedZeroPages += part.pageCount;
          await this.main!.send({ type: 'mig-zero', firstPage: part.firstPage, pageCount: part.pageCount, round: this.stats.round });
        } else {
          const checksums = this.digests.record(part.firstPage, part.data);
          this.stats.pushedPages += part.pageCount;
          await this.main!.send({ type: 'mig-push', firstPage: part.firstPage, checksums, data: part.data });
        }
      }
      // Let READs in between pushes: a demanded page must not wait for the stream.
      await new Promise((resolve) => setImmediate(resolve));
    }
    if (this.stateValue !== 'postcopy') throw this.connectionLost ?? new MigrationError(`the push stopped: the migration is ${this.stateValue}`);
    if (!this.pendingComplete) await this.main!.send({ type: 'mig-all-sent' });
    this.move('all-sent');
  }

  /** The next run of pages still to push, from the cursor (next to the last demand), wrapping around. */
  private nextPushRun(toSend: PageBitmap): [number, number] | undefined {
    let page = toSend.nextSet(this.pushCursor);
    if (page < 0) page = toSend.nextSet(0);
    if (page < 0) return undefined;
    let count = 1;
    while (count < PUSH_RUN_PAGES && page + count < this.pages && toSend.get(page + count)) count++;
    this.pushCursor = (page + count) % this.pages;
    return [page, count];
  }

  /** A post-copy READ from the destination: the pages as they are (the guest is paused here), on the connection it came on. */
  private async answerRead(read: ReadMessage, requestId: number, from: MigrationConnection): Promise<void> {
    const end = read.offset + read.lengthBytes;
    if (read.offset % PAGE_SIZE || read.lengthBytes % PAGE_SIZE || read.lengthBytes > MAX_READ_BYTES || end > this.target.memory.lengthBytes) {
      await from.send({ type: 'error', code: 'OUT_OF_RANGE', text: `READ ${read.lengthBytes} bytes at ${read.offset} is not whole pages of the ${this.target.memory.lengthBytes}-byte guest memory` }, requestId);
      return;
    }
    if (!isPastSwitchover(this.stateValue)) {
      await from.send({ type: 'error', code: 'UNEXPECTED_MESSAGE', text: 'pages are read only after switchover' }, requestId);
      return;
    }
    this.stats.postcopyRequests++;
    if (from === this.urgent) this.stats.postcopyDemandReads++;
    const firstPage = read.offset / PAGE_SIZE;
    const data = this.target.memory.image().subarray(read.offset, end);
    const checksums = this.digests.record(firstPage, data);
    for (let p = firstPage; p < firstPage + read.lengthBytes / PAGE_SIZE; p++) this.toSend?.clear(p);
    this.pushCursor = (end / PAGE_SIZE) % this.pages;
    await from.send({ type: 'checked-pages', offset: read.offset, checksums, data }, requestId);
  }

  // ---- completion --------------------------------------------------------------

  /** The destination's COMPLETE (it may have come already, even before RUNNING was handled), then the verdict. */
  private async awaitCompletion(): Promise<void> {
    const complete = this.pendingComplete ?? (await new Promise<PendingComplete>((resolve, reject) => {
      this.completion = { resolve, reject };
    }));
    this.completion = undefined;
    this.pendingComplete = undefined;
    const differing = differingBatches(this.digests.batchDigests(), complete.digests);
    this.verified = { ok: differing.length === 0, differing: differing.length };
    // The verdict is this side's last word: lost with a cut, the destination still holds every page
    // (it says the verdict never came); this side knows, and is done either way.
    await this.main!.send({ type: 'mig-verified', ok: differing.length === 0, differingCount: differing.length, differing: differing.slice(0, 64) }, complete.requestId).catch(() => {});
    this.move('complete');
    this.main!.close();
    this.urgent?.close();
    if (differing.length > 0) throw new MigrationVerificationError(differing.length, differing);
  }

  // ---- messages ----------------------------------------------------------------

  private listen(socket: MigrationConnection): void {
    socket.on('message', (message, requestId) => {
      // A connection a reconnect replaced says nothing more; a completed migration hears nothing.
      if ((socket !== this.main && socket !== this.urgent) || isFinal(this.stateValue)) return;
      // The answers to this side's requests (ACCEPT, READY, RUNNING, RESUMED, an ERROR refusing one) are the connection's to match (call()).
      switch (message.type) {
        case 'error':
          this.lost(new MigrationRefusedError(`the destination: ${message.code}: ${message.text}`));
          return;
        case 'mig-cancel':
          this.lost(new MigrationRefusedError(`the destination cancelled: ${message.text}`));
          return;
        case 'read':
          void this.answerRead(message, requestId, socket).catch((error: Error) => this.lost(error));
          return;
        case 'cancel':
          // READs are answered at once; nothing is left to cancel.
          return;
        case 'mig-complete':
          if (!isPastSwitchover(this.stateValue)) {
            this.lost(new MigrationRefusedError('the destination sent COMPLETE before it ran the guest'));
            return;
          }
          this.pendingComplete = { digests: message.digests, requestId };
          this.completion?.resolve(this.pendingComplete);
          return;
        default:
          this.lost(new MigrationRefusedError(`the destination sent ${message.type}, which a migration source does not take`));
      }
    });
    socket.on('end', (error) => {
      if (isFinal(this.stateValue)) return;
      // A connection replaced by a reconnect ends without news.
      if (socket !== this.main && socket !== this.urgent) return;
      this.lost(error ?? new MigrationConnectionLostError(socket.name));
    });
  }

  /**
   * A request and its reply. `timeoutMs`: a destination that keeps its
   * connections alive (it answers pings) but never answers is as good as
   * gone — the wait ends as a cut would (lost()).
   */
  private async call(message: AnyMessage, expect: AnyMessage['type'], timeoutMs?: number): Promise<AnyMessage> {
    const reply = await this.main!.call(message, {
      expect: [expect],
      timeoutMs,
      timeoutError: () => new MigrationStalledError(`the destination did not answer ${message.type} within ${timeoutMs} ms`),
    });
    if (reply.type === 'error') throw new MigrationRefusedError(`the destination refused: ${reply.code}: ${reply.text}`);
    return reply;
  }

  /**
   * A connection failed, stalled or the destination gave up: every wait
   * fails with the first cause. Before GO, run() resumes the guest here;
   * from GO on, the migration pauses and recover() reconnects.
   */
  private lost(error: Error): void {
    if (isFinal(this.stateValue)) return;
    if (this.cancelRequested) error = this.cancelRequested;
    this.main?.failPending(error);
    this.completion?.reject(error);
    this.completion = undefined;
    if (sourceAllows(this.stateValue, 'lost')) {
      // The guest may run there, on pages only this side has: keep everything, reconnect.
      this.connectionLost = error;
      this.lostAt = performance.now();
      this.move('lost');
      this.main?.destroy(error);
      this.urgent?.destroy(error);
    } else if (sourceOwnsGuest(this.stateValue)) {
      this.failure ??= error;
      this.main?.destroy(error);
      this.urgent?.destroy(error);
    }
    // Paused already: a reconnect attempt that fails is recover()'s to retry (its call was rejected above).
  }

  private checkCancelled(): void {
    if (this.cancelRequested) throw this.cancelRequested;
    if (this.failure) throw this.failure;
  }

  /** Before GO: the guest resumes (or keeps running) here; the destination is told, and discards what it has. */
  private async abandon(error: Error): Promise<void> {
    this.stopTracking();
    // Paused for switchover and GO never sent: the guest resumes here.
    if (this.stateValue === 'switchover') await this.target.resumeVcpus().catch(() => {});
    const duringSwitchover = this.stateValue === 'switchover';
    if (!isFinal(this.stateValue)) this.move(error instanceof MigrationCancelledError ? 'cancel' : 'fail');
    const text = error.message.slice(0, 1000);
    if (this.main && !this.main.isEnded) {
      // Told if it still listens; a destination that does not read is not waited for.
      await Promise.race([this.main.send({ type: 'mig-cancel', text }).catch(() => {}), new Promise((r) => setTimeout(r, 1000).unref())]);
    } else if (duringSwitchover) {
      // The connection is gone: a destination that sent READY waits for this side to come back (ready-paused); tell it now.
      await this.tellCancelled(text);
    }
    this.main?.close();
    this.urgent?.close();
  }

  /** Best effort, bounded: a new main connection of this session that carries CANCEL, for a destination left waiting. */
  private async tellCancelled(text: string): Promise<void> {
    const main = await connectChannel(this.address, 'main', this.sessionId, 1000, this.options.security).catch(() => undefined);
    if (!main) return;
    await Promise.race([main.send({ type: 'mig-cancel', text: text.slice(0, 1000) }).catch(() => {}), new Promise((r) => setTimeout(r, 1000).unref())]);
    main.close();
  }

  private move(event: SourceMigrationEvent): void {
    this.stateValue = nextSourceState(this.stateValue, event);
    this.emit('state', this.stateValue);
  }

  private postcopyRate(): number {
    const seconds = (performance.now() - this.postcopyStartedAt) / 1000;
    const bytes = (this.main?.bytesSent ?? 0) + (this.urgent?.bytesSent ?? 0) - this.postcopyBytesAtStart;
    return seconds > 0 ? bytes / seconds : 0;
  }
}

function round2(x: number): number {
  return Math.round(x * 100) / 100;
}

function finiteOr(x: number): number | undefined {
  return Number.isFinite(x) ? x : undefined;
}
