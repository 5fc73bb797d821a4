// The destination side of a live migration (`vm receive --listen`): it waits
// for one incoming VM and becomes its VMM.
//
//   listening   one session is taken: its main connection, then its urgent one; a second
//               migration, a connection for another session or a replayed channel is refused
//   receiving   BEGIN builds the machine (nothing runs); pre-copy's PAGES are written into guest
//               RAM as they come (guest RAM is not registered yet: this thread may touch it),
//               ZERO marks pages zero, DIRTY lists pages whose copy here is stale
//   loading     SWITCHOVER: the stale pages are dropped (MADV_DONTNEED), guest RAM is registered
//               with userfaultfd and served by a pager whose source is the migration itself
//               (post-copy), the state is loaded; READY
//   ready       READY sent, GO awaited: the guest is still the source's. A cut here waits for the
//               source to come back and ask (ready-paused; RESUMED says "not running") until the
//               reconnect deadline, then discards; the source's CANCEL discards at once
//   postcopy    GO read: the guest is this side's; the vCPUs run; RUNNING. Pages arrive on demand
//               (READ on the urgent connection) and by push
//   verifying   every page in: the pager detaches and COMPLETE carries the digests of what was
//               installed; VERIFIED closes it (a verdict lost with a cut is waited for until the
//               reconnect deadline, then the migration completes saying it never came)
//
// Before GO nothing ran here: a failure or a cancel discards the machine, and
// the guest runs on at the source. After GO a lost connection leaves the
// vCPUs blocked on their missing pages (nothing is poisoned); the source
// keeps the memory until completion. The listener stays open for this
// session until the process ends: a source that lost COMPLETE or VERIFIED can
// always come back and hear it again.
import { EventEmitter } from 'node:events';
import type { AvailabilityEvent, AvailabilityStats } from '../sources/network/availability.js';
import { formatHostPort } from '../net/address.js';
import { PAGE_SIZE } from '../native.js';
import type { LatencySummary } from '../stats/latency-histogram.js';
import type { IncomingMachine, MigratableMachineKind } from '../vm/migratable.js';
import type { MigrationMode } from './convergence.js';
import { IncomingStream, type GuestRamTarget } from './incoming-stream.js';
import { MigrationPageSource } from './migration-page-source.js';
import { destinationAllows, destinationRunsGuest, isFinal, isPaused, nextDestinationState, type DestinationMigrationEvent, type DestinationMigrationState } from './migration-state.js';
import { PageBitmap } from '../pager/page-bitmap.js';
import { DIGEST_BATCH_PAGES } from './page-digests.js';
import { MigrationListener, sameSession, type AcceptedChannel, type MigrationSecurity, type SourceChannel } from './transport/channels.js';
import { DEFAULT_STALL_TIMEOUT_MS, dataCrcsOf, type AnyMessage, type MigrationConnection } from './transport/migration-connection.js';
import { RequestIds } from '../transport/index.js';
import { IncomingMigrationError, IncomingMigrationStalledError, errorSummary } from './errors.js';

export interface ReceiveOptions<Built extends IncomingMachine = IncomingMachine> {
  /** Where to listen: 127.0.0.1 unless told otherwise (the caller checks loopback). */
  host: string;
  port: number;
  /** What kind of machine comes in: how its description and state are checked, and how it is built (vm-migration-kind.ts for a VM). */
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  kind: MigratableMachineKind<any, any, Built>;
  /** TLS-PSK: only a source holding this key gets a connection. */
  security?: MigrationSecurity;
  /** A connection that carries nothing for this long (pings unanswered) counts as cut (default 10 s). */
  stallTimeoutMs?: number;
  /**
   * After a cut past READY, how long to wait for the source to come back
   * (default 60 s): READY sent but GO never read, the machine is then
   * discarded (the guest is the source's); every page in, the migration
   * completes without the source's verdict.
   */
  reconnectDeadlineMs?: number;
  /** Before GO, how long the source may send nothing but pings while this side waits on it (default 60 s). */
  progressTimeoutMs?: number;
}

export interface DestinationProgress {
  role: 'destination';
  state: DestinationMigrationState;
  mode?: MigrationMode;
  guestPages?: number;
  receivedBytes: number;
  /** Pre-copy: pages received as data and as zero markers; rounds seen. */
  dataPagesReceived: number;
  zeroPagesReceived: number;
  rounds: number;
  /** Pages dropped at switchover because the source changed them after sending. */
  stalePages: number;
  /** Post-copy. */
  demandReads: number;
  backgroundReads: number;
  pushedPages: number;
  /**
   * Post-copy: each guest fault's latency, µs, from the fault read off the uffd to its page installed
   * (by the demand READ's answer or a push that got there first) — what a vCPU waits (QEMU's postcopy-latency).
   */
  faultLatencyMicros?: LatencySummary;
  elapsedMs: number;
  /** ms from SWITCHOVER to READY, and from GO to the vCPUs running (this side's clock). */
  loadMs?: number;
  resumeMs?: number;
  verified?: boolean;
  differingBatches?: number;
  /** Every page is here but the source's verdict never came (lost with a cut, past the reconnect deadline). */
  verdictLost?: boolean;
  /** Whether this side runs the guest (it read GO). */
  runsGuest: boolean;
  error?: { code: string; message: string };
  /** Post-copy cuts survived. */
  recoveries?: number;
  /** The last connection loss and why (post-copy waits for the source to come back). */
  connectionLost?: { code: string; message: string };
}

export interface DestinationMigrationEvents {
  state: [state: DestinationMigrationState];
  /** A connection refused before it carried anything: a failed TLS-PSK handshake, a wrong role or version, another session. */
  refused: [peer: string, reason: string];
  /** Post-copy: the source's connections cut while the guest needs its pages, and back (its page source's AvailabilityEvent). */
  availability: [event: AvailabilityEvent];
}

/** States in which the session's source may connect again (a reconnect after a cut past READY). */
const RECONNECTABLE: ReadonlySet<DestinationMigrationState> = new Set(['ready', 'ready-paused', 'postcopy', 'postcopy-paused', 'verifying', 'completed']);
/** Where a reconnect leaves it, and RESUME is answered: a live state is paused by the reconnect (connectionGone) first. */
const RESUMABLE: ReadonlySet<DestinationMigrationState> = new Set(['ready-paused', 'postcopy-paused', 'verifying', 'completed']);

export class DestinationMigration<Built extends IncomingMachine = IncomingMachine> extends EventEmitter<DestinationMigrationEvents> {
  private stateValue: DestinationMigrationState = 'listening';
  private readonly started = performance.now();
  private sessionId: Uint8Array | undefined;
  private main: MigrationConnection | undefined;
  private urgent: MigrationConnection | undefined;
  private vmm: Built | undefined;
  /** Pre-copy's stream, checked message by message before guest RAM is touched (incoming-stream.ts). */
  private readonly stream: IncomingStream;
  private pageSource: MigrationPageSource | undefined;
  private postcopy = false;
  private building: Promise<void> | undefined;
  private stalePages = 0;
  private recoveries = 0;
  private loadMs: number | undefined;
  private resumeMs: number | undefined;
  private verified: { ok: boolean; differing: number } | undefined;
  private failure: Error | undefined;
  /** Why a connection ended last (a post-copy cut is not a failure, but its reason is worth seeing). */
  private connectionError: Error | undefined;
  /** This side's request ids (COMPLETE, and its connections' pings): one counter for the session's connections, so none meet. */
  private readonly requestIds = new RequestIds();
  /** A reconnect's main connection came; its urgent one is taken even though one was had. */
  private reconnecting = false;
  /** COMPLETE's request id (resent with it after a reconnect) and the wait for its verdict. */
  private verdictRequestId: number | undefined;
  private verdictWaiter: ((verdict: Extract<AnyMessage, { type: 'mig-verified' }> | undefined) => void) | undefined;
  private verdictLost = false;
  /** A deadline running while the source is away (ready-paused, or the verdict awaited). */
  private awayTimer: NodeJS.Timeout | undefined;
  /** When the source last sent a migration message (the progress deadline before GO). */
  private lastProgressAt = performance.now();
  private progressTimer: NodeJS.Timeout | undefined;
  private readonly runningSignal: Promise<Built>;
  private resolveRunning!: (vmm: Built) => void;
  private rejectRunning!: (error: Error) => void;
  private readonly doneSignal: Promise<DestinationProgress>;
  private resolveDone!: (progress: DestinationProgress) => void;
  private rejectDone!: (error: Error) => void;

  private constructor(private readonly options: ReceiveOptions<Built>, private listener?: MigrationListener) {
    super();
    this.stream = new IncomingStream(PAGE_SIZE, options.kind);
    this.runningSignal = new Promise((resolve, reject) => {
      this.resolveRunning = resolve;
      this.rejectRunning = reject;
    });
    this.doneSignal = new Promise((resolve, reject) => {
      this.resolveDone = resolve;
      this.rejectDone = reject;
    });
    // Whoever awaits them sees the failure; nobody awaiting is not an unhandled rejection.
    this.runningSignal.catch(() => {});
    this.doneSignal.catch(() => {});
    this.watchProgress();
  }

  /** Listen for one incoming VM. */
  static async listen<Built extends IncomingMachine>(options: ReceiveOptions<Built>): Promise<DestinationMigration<Built>> {
    const destination = new DestinationMigration<Built>(options);
    destination.listener = await MigrationListener.listen(
      { host: options.host, port: options.port },
      (accepted) => destination.onChannel(accepted),
      (channel, sessionId) => destination.decide(channel, sessionId),
      { security: options.security, onRefused: (peer, reason) => destination.emit('refused', peer, reason) },
    );
    return destination;
  }

  get url(): string {
    return this.listener!.url;
  }

  get state(): DestinationMigrationState {
    return this.stateValue;
  }

  /** Resolves with the machine once the guest runs here (after GO); rejects if the migration failed before. */
  get running(): Promise<Built> {
    return this.runningSignal;
  }

  /** Resolves once every page is in and verified; rejects on failure or a digest mismatch. */
  get done(): Promise<DestinationProgress> {
    return this.doneSignal;
  }

  /** Post-copy: the source's cuts while the guest needed its pages (undefined before post-copy). */
  get sourceAvailability(): AvailabilityStats | undefined {
    return this.pageSource?.availabilityStats;
  }

  progress(): DestinationProgress {
    const stats = this.pageSource?.stats;
    const progress: DestinationProgress = {
      role: 'destination',
      state: this.stateValue,
      receivedBytes: (this.main?.bytesReceived ?? 0) + (this.urgent?.bytesReceived ?? 0),
      dataPagesReceived: this.stream.stats.dataPagesReceived,
      zeroPagesReceived: this.stream.stats.zeroPagesReceived,
      rounds: this.stream.stats.rounds,
      stalePages: this.stalePages,
      demandReads: stats?.demandReads ?? 0,
      backgroundReads: stats?.backgroundReads ?? 0,
      pushedPages: (stats?.pushedPages ?? 0) + (stats?.pushedZeroPages ?? 0),
      elapsedMs: Math.round((performance.now() - this.started) * 100) / 100,
      runsGuest: destinationRunsGuest(this.stateValue),
    };
    if (this.verdictLost) progress.verdictLost = true;
    const faults = this.pageSource && this.vmm?.faultLatency();
    if (faults) progress.faultLatencyMicros = faults;
    if (this.stream.mode) progress.mode = this.stream.mode;
    if (this.stream.pageCount) progress.guestPages = this.stream.pageCount;
    if (this.loadMs !== undefined) progress.loadMs = this.loadMs;
    if (this.recoveries) progress.recoveries = this.recoveries;
    if (this.resumeMs !== undefined) progress.resumeMs = this.resumeMs;
    if (this.verified) {
      progress.verified = this.verified.ok;
      progress.differingBatches = this.verified.differing;
    }
    if (this.failure) progress.error = errorSummary(this.failure);
    if (this.connectionError && isPaused(this.stateValue)) progress.connectionLost = errorSummary(this.connectionError);
    return progress;
  }

  /** Stop listening and end the migration (the VMM, if it runs the guest, is its owner's to close). */
  close(): void {
    this.listener?.close();
    this.listener = undefined;
    this.endConnections();
  }

  private endConnections(): void {
    clearTimeout(this.awayTimer);
    clearInterval(this.progressTimer);
    this.main?.close();
    this.urgent?.close();
  }

  // ---- connections -------------------------------------------------------------

  /**
   * Which connections this destination takes: the first session's main, then
   * that session's urgent, once each — and after a cut past READY, that same
   * session's main and urgent again (a reconnect; RESUME or CANCEL follows),
   * even once completed (a source that lost the verdict asks again).
   */
  private decide(channel: SourceChannel, sessionId: Uint8Array): string | undefined {
    if (this.stateValue === 'failed' || this.stateValue === 'cancelled') return `this destination is ${this.stateValue}`;
    const ours = this.sessionId !== undefined && sameSession(this.sessionId, sessionId);
    if (channel === 'main') {
      if (!this.sessionId) return undefined;
      if (!ours) return 'this destination is receiving another migration';
      return RECONNECTABLE.has(this.stateValue) ? undefined : 'this session already has its main connection';
    }
    if (!ours) return 'an urgent connection for a session that has no main connection here';
    if (this.urgent && !this.reconnecting) return 'this session already has its urgent connection';
    return undefined;
  }

  private onChannel(accepted: AcceptedChannel): void {
    const socket = accepted.socket;
    if (accepted.channel === 'main') {
      if (this.main) {
        // A reconnect: the old connections are dead or dying (a half-open one may not know yet).
        this.reconnecting = true;
        const old = [this.main, this.urgent];
        this.main = socket;
        this.urgent = undefined;
        for (const dead of old) dead?.destroy();
        this.connectionGone(new IncomingMigrationError('the source reconnected (its old connections are gone)'));
      } else {
        this.sessionId = accepted.sessionId;
        this.main = socket;
        this.lastProgressAt = performance.now();
        this.move('accepted');
      }
      socket.pageSizeBytes = PAGE_SIZE;
      // Pre-copy's stream and post-copy's push: decoded a slice at a time, so the urgent connection's pages never wait behind them.
      socket.decodeInSlices();
    } else {
      this.urgent = socket;
    }
    socket.requestIds = this.requestIds;
    socket.watchLiveness(this.options.stallTimeoutMs ?? DEFAULT_STALL_TIMEOUT_MS);
    socket.on('message', (message, requestId, frame) => this.onMessage(message, requestId, socket, dataCrcsOf(frame, message)));
    socket.on('end', (error) => this.onEnd(socket, error));
  }

  private onEnd(socket: MigrationConnection, error: Error | undefined): void {
    // A connection a reconnect replaced ends without news.
    if (socket !== this.main && socket !== this.urgent) return;
    // Every page is in: the urgent connection has nothing left to carry, and the source closes it
    // with the main one once it sent its verdict (its end may be seen before the verdict is decoded).
    if (socket === this.urgent && socket !== this.main && this.stateValue === 'verifying' && !error) return;
    this.connectionGone(error ?? new IncomingMigrationError(`${socket.name} closed`));
  }

  /**
   * A connection is gone (or replaced). Before READY: nothing can come of this
   * session, discard. READY sent: the source may have sent GO, and will come
   * back to ask — wait, bounded. After GO: wait for the source (the guest
   * needs its pages); every page in: wait, bounded, for its verdict.
   */
  private connectionGone(why: Error): void {
    if (isFinal(this.stateValue) || isPaused(this.stateValue)) return;
    this.connectionError = why;
    if (destinationAllows(this.stateValue, 'lost')) {
      this.move('lost');
      // The guest's missing pages wait for the source to reconnect: said out loud as every network source's outage is.
      if (this.stateValue === 'postcopy-paused') this.pageSource?.connectionLost(why);
      if (this.stateValue === 'ready-paused') {
        this.awaySince(() => void this.fail(new IncomingMigrationStalledError(`the source did not come back within ${this.reconnectDeadlineMs} ms of losing its connection after READY: it still owns the guest (GO never arrived here), and what was loaded is discarded`)));
      }
      return;
    }
    if (this.stateValue === 'verifying') {
      this.awaySince(() => this.verdictWaiter?.(undefined));
      return;
    }
    void this.fail(why);
  }

  private get reconnectDeadlineMs(): number {
    return this.options.reconnectDeadlineMs ?? 60_000;
  }

  /** Start the deadline for the source to come back (once: a second loss while away keeps the first clock). */
  private awaySince(expired: () => void): void {
    if (this.awayTimer) return;
    this.awayTimer = setTimeout(() => {
      this.awayTimer = undefined;
      expired();
    }, this.reconnectDeadlineMs);
    this.awayTimer.unref();
  }

  private back(): void {
    clearTimeout(this.awayTimer);
    this.awayTimer = undefined;
  }

  /** Before GO: a source that keeps its connections alive but sends nothing else is given up on (item: a stuck or hostile source). */
  private watchProgress(): void {
    const limitMs = this.options.progressTimeoutMs ?? 60_000;
    this.progressTimer = setInterval(() => {
      const waiting = this.stateValue === 'receiving' || this.stateValue === 'ready';
      if (!waiting) return;
      const idleMs = performance.now() - this.lastProgressAt;
      if (idleMs >= limitMs) void this.fail(new IncomingMigrationStalledError(`the source sent nothing but pings for ${Math.round(idleMs)} ms while this side waited on it (${this.stateValue}): given up`));
    }, Math.max(50, Math.min(1000, Math.floor(limitMs / 4))));
    this.progressTimer.unref();
  }

  // ---- messages ----------------------------------------------------------------

  private onMessage(message: AnyMessage, requestId: number, from: MigrationConnection, dataCrcs?: Uint32Array): void {
    // A connection a reconnect replaced says nothing more.
    if (from !== this.main && from !== this.urgent) return;
    this.lastProgressAt = performance.now();
    switch (message.type) {
      case 'mig-begin':
        this.building = this.begin(message, requestId).catch((error: Error) => this.fail(error));
        return;
      case 'mig-pages':
        this.requireBuilt('PAGES');
        this.stream.pages(message, this.ram!, dataCrcs);
        return;
      case 'mig-zero':
        if (this.pageSource) {
          // Post-copy: zero pages pushed as a marker.
          if (message.firstPage + message.pageCount > this.stream.pageCount) throw new IncomingMigrationError(`ZERO for pages past guest RAM's ${this.stream.pageCount}`);
          this.pageSource.pushZero(message.firstPage, message.pageCount);
          return;
        }
        this.requireBuilt('ZERO');
        this.stream.zero(message, this.ram!);
        return;
      case 'mig-round':
        this.stream.roundEnd(message);
        return;
      case 'mig-dirty': {
        this.requireBuilt('DIRTY');
        // Dropped at once, so a source sending the list while its guest still runs (then a ping) keeps this work out of the downtime.
        const memory = this.vmm!.memory;
        for (const [first, count] of this.stream.dirtyList(message)) {
          memory.mapping.discard(first * PAGE_SIZE, count * PAGE_SIZE);
          this.stalePages += count;
        }
        return;
      }
      case 'mig-switchover':
        void this.switchover(message.postcopy, message.stateJson, requestId).catch((error: Error) => this.fail(error));
        return;
      case 'mig-go':
        this.go(requestId);
        return;
      case 'mig-all-sent':
        return;
      case 'mig-resume':
        void this.resume(requestId).catch((error: Error) => from.destroy(error));
        return;
      case 'mig-cancel':
        if (destinationRunsGuest(this.stateValue)) throw new IncomingMigrationError(`CANCEL while ${this.stateValue}: the guest runs here`);
        void this.fail(new IncomingMigrationError(`the source cancelled: ${message.text}`), 'cancel');
        return;
      case 'mig-push':
        if (!this.pageSource) throw new IncomingMigrationError(`${message.type} before switchover`);
        this.pageSource.pushed(message);
        return;
      default:
        throw new IncomingMigrationError(`the source sent ${message.type}, which a migration destination does not take`);
    }
  }

  private async begin(message: Extract<AnyMessage, { type: 'mig-begin' }>, requestId: number): Promise<void> {
    if (this.stateValue !== 'receiving') throw new IncomingMigrationError('BEGIN before the session was accepted');
    const machine = this.stream.begin(message, requestId);
    this.vmm = await this.options.kind.createIncoming(machine);
    if (this.stateValue !== 'receiving') return;
    const memory = this.vmm.memory;
    const image = memory.image();
    // Guest RAM is not registered yet: this thread writes pre-copy's pages in place. A page that was sent with data
    // and is zero now (given back by a balloon, or zeroed) is discarded rather than filled with zeroes: it reads
    // zero and holds no memory here, as it holds none at the source.
    this.ram = {
      writePages: (firstPage, data) => image.set(data, firstPage * PAGE_SIZE),
      zeroPage: (page) => memory.mapping.discard(page * PAGE_SIZE, PAGE_SIZE),
    };
    await this.main!.send({ type: 'mig-accept' }, requestId);
  }

  private ram: GuestRamTarget | undefined;

  /** Pages must not arrive while the machine is still being built (the source waits for ACCEPT). */
  private requireBuilt(what: string): void {
    if (!this.ram) throw new IncomingMigrationError(`${what} before BEGIN was accepted`);
  }

  private async switchover(postcopy: boolean, stateJson: string, requestId: number): Promise<void> {
    await this.building;
    if (!this.vmm || this.stateValue !== 'receiving') throw new IncomingMigrationError('SWITCHOVER before BEGIN was accepted');
    const started = performance.now();
    const state = this.stream.switchover({ type: 'mig-switchover', postcopy, stateJson }, requestId);
    this.move('switchover');
    this.postcopy = postcopy;
    const memory = this.vmm.memory;
    const { received, knownZero, digests } = this.stream;
    const main = this.main!;
    if (postcopy) {
      // The dirty lists' pages were dropped as they came: missing again, they are fetched.
      const present = received.andNot(knownZero);
      this.pageSource = new MigrationPageSource(memory.lengthBytes, PAGE_SIZE, knownZero, digests, formatHostPort({ host: main.socket.remoteAddress ?? 'unknown', port: main.socket.remotePort ?? 0 }));
      this.pageSource.onAvailability((event) => this.emit('availability', event));
      this.pageSource.attach(main, this.urgent ?? main);
      await this.vmm.completeIncoming(state, this.arrivedFrom(main), { source: this.pageSource, presentPages: present });
    } else {
      await this.vmm.completeIncoming(state, this.arrivedFrom(main));
    }
    // Cut (and discarded) while loading: nothing more to do.
    if (this.state !== 'loading') return;
    this.loadMs = Math.round((performance.now() - started) * 100) / 100;
    // From here the source may send GO: a cut no longer discards (the source may be committing); it is waited out.
    this.move('ready');
    await main.send({ type: 'mig-ready', loadMicros: Math.round(this.loadMs * 1000) }, requestId).catch(() => {});
  }

  /** Where the guest came from, as its restore names it (vm status: "live migration from HOST:PORT, post-copy ..."). */
  private arrivedFrom(main: MigrationConnection): string {
    return `live migration from ${main.socket.remoteAddress}:${main.socket.remotePort}`;
  }

  /**
   * GO read: the guest is this side's from this moment, whatever happens to
   * the connections (the state moves before anything is awaited).
   */
  private go(requestId: number): void {
    if (this.stateValue !== 'ready' || !this.vmm) throw new IncomingMigrationError(`GO while ${this.stateValue}`);
    this.stream.request('GO', requestId);
    this.move(this.postcopy ? 'go' : 'go-all-in');
    const vmm = this.vmm;
    const main = this.main!;
    void (async () => {
      const started = performance.now();
      await vmm.resume();
      this.resumeMs = Math.round((performance.now() - started) * 100) / 100;
      this.resolveRunning(vmm);
      // Lost with a cut, RUNNING is said again by RESUMED (running).
      await main.send({ type: 'mig-running', resumeMicros: Math.round(this.resumeMs * 1000) }, requestId).catch(() => {});
      await this.finish();
    })().catch((error: Error) => this.fail(error));
  }

  /**
   * After a cut: the source is back on new connections and asks where this
   * side stands. RESUMED says whether the guest runs here (GO was read) and
   * which pages are here (a bit per page the source need not send again);
   * every READ still waiting is re-sent on the new connections, and COMPLETE
   * again if its verdict was lost with the old ones.
   */
  private async resume(requestId: number): Promise<void> {
    if (!this.vmm || !this.urgent || !RESUMABLE.has(this.stateValue)) {
      throw new IncomingMigrationError(`RESUME while ${this.stateValue}${this.urgent ? '' : ' (no urgent connection yet)'}`);
    }
    this.stream.request('RESUME', requestId);
    const pages = this.stream.pageCount;
    const has = new PageBitmap(pages);
    const running = destinationRunsGuest(this.stateValue);
    if (this.stateValue === 'verifying' || this.stateValue === 'completed') has.setAll();
    else {
      const present = this.vmm.pagePresent();
      for (let page = 0; page < pages; page++) if (present(page) || this.stream.knownZero.get(page)) has.set(page);
    }
    this.pageSource?.attach(this.main!, this.urgent);
    this.reconnecting = false;
    this.back();
    if (destinationAllows(this.stateValue, 'resumed')) this.move('resumed');
    this.recoveries++;
    const resumed = this.main!.send({ type: 'mig-resumed', pageCount: pages, running, bitmap: has.bytes.subarray(0, Math.ceil(pages / 8)) }, requestId);
    // COMPLETE again, its verdict awaited on this connection before the source can have heard RESUMED (it may answer the COMPLETE it heard before the cut at once).
    const complete = this.verdictRequestId === undefined ? undefined : this.sendComplete(this.verdictRequestId);
    await resumed;
    await complete;
  }

  /** COMPLETE, a request of this side: its VERIFIED is matched by the connection (one for a request not made is a protocol violation). */
  private sendComplete(requestId: number): Promise<void> {
    const main = this.main!;
    main.request({ type: 'mig-complete', batchPages: DIGEST_BATCH_PAGES, digests: this.stream.digests.batchDigests() }, {
      requestId,
      expect: ['mig-verified'],
      onReply: (verified) => {
        if (main !== this.main || verified.type !== 'mig-verified') return;
        this.lastProgressAt = performance.now();
        this.verdictHeard(verified);
      },
    });
    return main.drained();
  }

  /** Every page in: detach the pager, send the digests, hear the verdict (or, the source gone past the deadline, do without). */
  private async finish(): Promise<void> {
    if (this.postcopy) {
      await this.vmm!.completeMemory();
      this.move('all-in');
    }
    const requestId = this.requestIds.next();
    this.verdictRequestId = requestId;
    const verdict = new Promise<Extract<AnyMessage, { type: 'mig-verified' }> | undefined>((resolve) => (this.verdictWaiter = resolve));
    // A cut now is survived: resume() sends it again; with no connection, the wait for the source is bounded.
    if (this.main && !this.main.isEnded) await this.sendComplete(requestId).catch(() => {});
    else this.awaySince(() => this.verdictWaiter?.(undefined));
    const answer = await verdict;
    this.verdictWaiter = undefined;
    this.back();
    if (answer) this.verdictHeard(answer);
    else {
      this.verdictLost = true;
      this.move('verdict-lost');
    }
    this.endConnections();
    // Still listening for this session (a source that lost the verdict asks again), without holding the process.
    this.listener?.unref();
    this.resolveDone(this.progress());
  }

  private verdictHeard(answer: Extract<AnyMessage, { type: 'mig-verified' }>): void {
    this.verified = { ok: answer.ok, differing: answer.differingCount };
    this.verdictLost = false;
    if (this.verdictWaiter) {
      const waiter = this.verdictWaiter;
      this.verdictWaiter = undefined;
      this.move('verdict');
      if (!answer.ok) this.rejectDone(new IncomingMigrationError(`${answer.differingCount} batch(es) of pages differ between what the source sent and what was installed here`));
      waiter(answer);
    }
  }

  /** Before GO: discard the machine (nothing ran here). After: stays (the guest runs here). */
  private async fail(error: Error, event: DestinationMigrationEvent = 'fail'): Promise<void> {
    if (isFinal(this.stateValue) || this.failure) return;
    this.failure = error;
    if (destinationRunsGuest(this.stateValue)) {
      this.rejectDone(error);
      return;
    }
    if (this.main && !this.main.isEnded && event === 'fail') {
      await Promise.race([this.main.send({ type: 'error', code: 'BAD_REQUEST', text: error.message.slice(0, 1000) }).catch(() => {}), new Promise((r) => setTimeout(r, 1000).unref())]);
    }
    if (!isFinal(this.stateValue)) this.move(destinationAllows(this.stateValue, event) ? event : 'fail');
    this.close();
    this.pageSource?.close();
    await this.vmm?.close();
    this.vmm = undefined;
    this.rejectRunning(error);
    this.rejectDone(error);
  }

  private move(event: DestinationMigrationEvent): void {
    this.stateValue = nextDestinationState(this.stateValue, event);
    this.emit('state', this.stateValue);
  }
}
