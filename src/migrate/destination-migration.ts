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
//               (post-copy), the state is loaded; READY. GO: the vCPUs run; RUNNING.
//   postcopy    pages arrive on demand (READ on the urgent connection) and by push; when every
//               page is in, the pager detaches and COMPLETE carries the digests of what was
//               installed; VERIFIED closes it
//
// Before GO nothing ran here: a failure or a cancel discards the machine, and
// the guest runs on at the source. After GO a lost connection leaves the
// vCPUs blocked on their missing pages (nothing is poisoned); the source
// keeps the memory until completion.
import { EventEmitter } from 'node:events';
import { UserfaultError } from '../errors.js';
import { PAGE_SIZE } from '../native.js';
import type { LatencySummary } from '../metrics/latency-histogram.js';
import type { ErrorMessage, PagesMessage } from '../protocol/index.js';
import { Vmm } from '../vm/vmm.js';
import type { MigrationMode } from './convergence.js';
import { IncomingStream, type GuestRamTarget } from './incoming-stream.js';
import { MigrationPageSource } from './migration-page-source.js';
import { isFinal, nextDestinationState, type DestinationMigrationState, type MigrationEvent } from './migration-state.js';
import { PageBitmap } from './page-bitmap.js';
import { DIGEST_BATCH_PAGES } from './page-digests.js';
import { MigrationListener, sameSession, type AcceptedChannel, type MigrationSecurity, type SourceChannel } from './transport/channels.js';
import { DEFAULT_STALL_TIMEOUT_MS, type AnyMessage, type FramedSocket } from './transport/framed-socket.js';

export interface ReceiveOptions {
  /** Where to listen: 127.0.0.1 unless told otherwise (the caller checks loopback). */
  host: string;
  port: number;
  /** Where the guest's COM1 output goes. */
  console?: (bytes: Uint8Array) => void;
  /** TLS-PSK: only a source holding this key gets a connection. */
  security?: MigrationSecurity;
  /** A connection that carries nothing for this long (pings unanswered) counts as cut (default 10 s). */
  stallTimeoutMs?: number;
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
  error?: { code: string; message: string };
  /** Post-copy cuts survived. */
  recoveries?: number;
  /** The last connection loss and why (post-copy waits for the source to come back). */
  connectionLost?: { code: string; message: string };
}

export class IncomingMigrationError extends UserfaultError {
  override readonly code: string = 'EINCOMING';
}

export interface DestinationMigrationEvents {
  state: [state: DestinationMigrationState];
  /** A connection refused before it carried anything: a failed TLS-PSK handshake, a wrong role or version, another session. */
  refused: [peer: string, reason: string];
}

export class DestinationMigration extends EventEmitter<DestinationMigrationEvents> {
  private stateValue: DestinationMigrationState = 'listening';
  private readonly started = performance.now();
  private sessionId: Uint8Array | undefined;
  private main: FramedSocket | undefined;
  private urgent: FramedSocket | undefined;
  private vmm: Vmm | undefined;
  /** Pre-copy's stream, checked message by message before guest RAM is touched (incoming-stream.ts). */
  private readonly stream = new IncomingStream(PAGE_SIZE);
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
  private nextRequestId = 1;
  /** A reconnect's main connection came; its urgent one is taken even though one was had. */
  private reconnecting = false;
  /** COMPLETE sent, its verdict awaited: resent after a reconnect. */
  private awaitingVerdict: { requestId: number } | undefined;
  private readonly replies = new Map<number, (message: AnyMessage) => void>();
  private readonly runningSignal: Promise<Vmm>;
  private resolveRunning!: (vmm: Vmm) => void;
  private rejectRunning!: (error: Error) => void;
  private readonly doneSignal: Promise<DestinationProgress>;
  private resolveDone!: (progress: DestinationProgress) => void;
  private rejectDone!: (error: Error) => void;

  private constructor(private readonly options: ReceiveOptions, private listener?: MigrationListener) {
    super();
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
  }

  /** Listen for one incoming VM. */
  static async listen(options: ReceiveOptions): Promise<DestinationMigration> {
    const destination = new DestinationMigration(options);
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

  /** Resolves with the VMM once the guest runs here (after GO); rejects if the migration failed before. */
  get running(): Promise<Vmm> {
    return this.runningSignal;
  }

  /** Resolves once every page is in and verified; rejects on failure or a digest mismatch. */
  get done(): Promise<DestinationProgress> {
    return this.doneSignal;
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
    };
    const faults = this.pageSource && this.vmm?.lazyMemoryReport()?.metrics.latencyMicros;
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
    if (this.failure) progress.error = { code: (this.failure as { code?: string }).code ?? this.failure.name, message: this.failure.message };
    if (this.connectionError) progress.connectionLost = { code: (this.connectionError as { code?: string }).code ?? this.connectionError.name, message: this.connectionError.message };
    return progress;
  }

  /** Stop listening and end the migration (the VMM, if it runs the guest, is its owner's to close). */
  close(): void {
    this.listener?.close();
    this.listener = undefined;
    this.main?.close();
    this.urgent?.close();
  }

  // ---- connections -------------------------------------------------------------

  /**
   * Which connections this destination takes: the first session's main, then
   * that session's urgent, once each — and after a cut in post-copy, that same
   * session's main and urgent again (a reconnect; RESUME follows).
   */
  private decide(channel: SourceChannel, sessionId: Uint8Array): string | undefined {
    if (isFinal(this.stateValue)) return `this destination is ${this.stateValue}`;
    const reconnecting = this.stateValue === 'postcopy' || this.stateValue === 'postcopy-paused';
    if (channel === 'main') {
      if (!this.sessionId) return undefined;
      if (!sameSession(this.sessionId, sessionId)) return 'this destination is receiving another migration';
      if (!reconnecting) return 'this session already has its main connection';
      return undefined;
    }
    if (!this.sessionId || !sameSession(this.sessionId, sessionId)) return 'an urgent connection for a session that has no main connection here';
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
        if (this.stateValue === 'postcopy') this.move('lost');
      } else {
        this.sessionId = accepted.sessionId;
        this.main = socket;
        this.move('accepted');
      }
      socket.pageSizeBytes = PAGE_SIZE;
      // Pre-copy's stream and post-copy's push: decoded a slice at a time, so the urgent connection's pages never wait behind them.
      socket.decodeInSlices();
    } else {
      this.urgent = socket;
    }
    socket.watchLiveness(this.options.stallTimeoutMs ?? DEFAULT_STALL_TIMEOUT_MS);
    socket.on('message', (message, requestId) => this.onMessage(message, requestId, socket));
    socket.on('end', (error) => this.onEnd(socket, error));
  }

  private onEnd(socket: FramedSocket, error: Error | undefined): void {
    if (isFinal(this.stateValue)) return;
    // A connection a reconnect replaced ends without news.
    if (socket !== this.main && socket !== this.urgent) return;
    // Every page is in: the urgent connection has nothing left to carry, and the source closes it
    // with the main one once it sent its verdict (its end may be seen before the verdict is decoded).
    if (socket === this.urgent && socket !== this.main && this.awaitingVerdict && !error) return;
    const why = error ?? new IncomingMigrationError(`${socket.name} closed`);
    this.connectionError = why;
    if (this.stateValue === 'postcopy') {
      // The guest runs here on pages only the source has: wait for it (reads stay pending, vCPUs block).
      this.move('lost');
      return;
    }
    if (this.stateValue !== 'postcopy-paused') void this.fail(why);
  }

  // ---- messages ----------------------------------------------------------------

  private onMessage(message: AnyMessage, requestId: number, from: FramedSocket): void {
    switch (message.type) {
      case 'mig-begin':
        this.building = this.begin(message, requestId).catch((error: Error) => this.fail(error));
        return;
      case 'mig-pages':
        this.requireBuilt('PAGES');
        this.stream.pages(message, this.ram!);
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
        void this.go(requestId).catch((error: Error) => this.fail(error));
        return;
      case 'mig-all-sent':
        return;
      case 'mig-resume':
        void this.resume(requestId).catch((error: Error) => this.fail(error));
        return;
      case 'mig-verified':
        this.replies.get(requestId)?.(message);
        this.replies.delete(requestId);
        return;
      case 'mig-cancel':
        if (this.stateValue === 'listening' || this.stateValue === 'receiving' || this.stateValue === 'loading') void this.fail(new IncomingMigrationError(`the source cancelled: ${message.text}`), 'cancel');
        return;
      case 'pages':
      case 'push':
      case 'error':
        if (!this.pageSource) throw new IncomingMigrationError(`${message.type} before switchover`);
        this.pageSource.handle(message as PagesMessage | ErrorMessage | { type: 'push'; offset: number; data: Uint8Array }, requestId, from);
        return;
      default:
        throw new IncomingMigrationError(`the source sent ${message.type}, which a migration destination does not take`);
    }
  }

  private async begin(message: Extract<AnyMessage, { type: 'mig-begin' }>, requestId: number): Promise<void> {
    if (this.stateValue !== 'receiving') throw new IncomingMigrationError('BEGIN before the session was accepted');
    const machine = this.stream.begin(message, requestId);
    this.vmm = await Vmm.createIncoming(machine, { console: this.options.console });
    const image = this.vmm.memory.image();
    // Guest RAM is not registered yet: this thread writes pre-copy's pages in place.
    this.ram = {
      writePages: (firstPage, data) => image.set(data, firstPage * PAGE_SIZE),
      zeroPage: (page) => image.fill(0, page * PAGE_SIZE, (page + 1) * PAGE_SIZE),
    };
    this.vmm.migrationStatus = () => this.progress();
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
    if (postcopy) {
      // The dirty lists' pages were dropped as they came: missing again, they are fetched.
      const present = received.andNot(knownZero);
      this.pageSource = new MigrationPageSource(memory.lengthBytes, PAGE_SIZE, knownZero, digests, this.main!.name);
      this.pageSource.attach(this.main!, this.urgent ?? this.main!);
      await this.vmm.completeIncoming(state, `migration from ${this.main!.name}`, { source: this.pageSource, presentPages: present });
    } else {
      await this.vmm.completeIncoming(state, `migration from ${this.main!.name}`);
    }
    this.loadMs = Math.round((performance.now() - started) * 100) / 100;
    await this.main!.send({ type: 'mig-ready', loadMicros: Math.round(this.loadMs * 1000) }, requestId);
  }

  /** The source committed: the guest runs here now. */
  private async go(requestId: number): Promise<void> {
    if (this.stateValue !== 'loading' || !this.vmm) throw new IncomingMigrationError(`GO while ${this.stateValue}`);
    this.stream.request('GO', requestId);
    const started = performance.now();
    await this.vmm.resume();
    this.resumeMs = Math.round((performance.now() - started) * 100) / 100;
    this.move('resumed');
    await this.main!.send({ type: 'mig-running', resumeMicros: Math.round(this.resumeMs * 1000) }, requestId);
    this.resolveRunning(this.vmm);
    // Post-copy: wait for every page; stop-and-copy: they are all here.
    void this.finish().catch((error: Error) => this.fail(error));
  }

  /**
   * After a cut: the source is back on new connections. Answer with what is
   * here (RESUMED: a bit per page the source need not send again), re-send
   * every READ still waiting on the new connections, and COMPLETE again if
   * its verdict was lost with the old ones.
   */
  private async resume(requestId: number): Promise<void> {
    if (this.stateValue !== 'postcopy-paused' || !this.vmm || !this.pageSource || !this.urgent) {
      throw new IncomingMigrationError(`RESUME while ${this.stateValue}${this.urgent ? '' : ' (no urgent connection yet)'}`);
    }
    this.stream.request('RESUME', requestId);
    const pages = this.stream.pageCount;
    const has = new PageBitmap(pages);
    const present = this.vmm.incomingPagePresent();
    for (let page = 0; page < pages; page++) if (present(page) || this.stream.knownZero.get(page)) has.set(page);
    this.pageSource.attach(this.main!, this.urgent);
    this.reconnecting = false;
    this.move('resumed');
    this.recoveries++;
    await this.main!.send({ type: 'mig-resumed', pageCount: pages, bitmap: has.bytes.subarray(0, Math.ceil(pages / 8)) }, requestId);
    if (this.awaitingVerdict) await this.sendComplete(this.awaitingVerdict.requestId);
  }

  private sendComplete(requestId: number): Promise<void> {
    return this.main!.send({ type: 'mig-complete', batchPages: DIGEST_BATCH_PAGES, digests: this.stream.digests.batchDigests() }, requestId);
  }

  /** Every page in: detach the pager, send the digests, hear the verdict. */
  private async finish(): Promise<void> {
    if (this.postcopy) await this.vmm!.completeMemory();
    const requestId = this.nextRequestId++;
    const verdict = new Promise<AnyMessage>((resolve) => this.replies.set(requestId, resolve));
    this.awaitingVerdict = { requestId };
    // A cut now is survived: resume() sends it again.
    await this.sendComplete(requestId).catch(() => {});
    const answer = await verdict;
    this.awaitingVerdict = undefined;
    if (answer.type !== 'mig-verified') throw new IncomingMigrationError(`COMPLETE answered with ${answer.type}`);
    this.verified = { ok: answer.ok, differing: answer.differingCount };
    this.move('complete');
    this.close();
    if (answer.ok) this.resolveDone(this.progress());
    else this.rejectDone(new IncomingMigrationError(`${answer.differingCount} batch(es) of pages differ between what the source sent and what was installed here`));
  }

  /** Before GO: discard the machine (nothing ran here). After: stays (the guest runs here). */
  private async fail(error: Error, event: MigrationEvent = 'fail'): Promise<void> {
    if (isFinal(this.stateValue) || this.failure) return;
    this.failure = error;
    const beforeGo = this.stateValue === 'listening' || this.stateValue === 'receiving' || this.stateValue === 'loading';
    if (this.main && !this.main.isEnded) {
      await this.main.send({ type: 'error', code: 'BAD_REQUEST', text: error.message.slice(0, 1000) }).catch(() => {});
    }
    if (beforeGo) {
      this.move(event);
      this.close();
      this.pageSource?.close();
      await this.vmm?.close();
      this.vmm = undefined;
      this.rejectRunning(error);
    }
    this.rejectDone(error);
  }

  private move(event: MigrationEvent): void {
    this.stateValue = nextDestinationState(this.stateValue, event);
    this.emit('state', this.stateValue);
  }
}
