// One client of the handler: its socket, the uffd it sent, and the pager that
// serves its faults, all driven from the server's event loop.
//
// The states and their legal moves, in one place:
//
//   handshaking ──JSON complete + uffd received──▶ starting ──regions probed, pager started──▶ serving
//   (a page-cache request, answered with the memfd, stays in handshaking: the array and uffd follow)
//        │                                            │                                         │
//        └──── refused / hangup / timeout ────────────┴──── hangup / exit (ESRCH) / close ───────┘
//                                                     ▼
//                                                  closing ──pager stopped, fds closed──▶ closed
//
// "The client exited" shows up two ways: its socket hangs up (the process
// died and the kernel closed its end), or a resolving ioctl says ESRCH (its
// address space is gone; the pager emits 'exit'). Either ends the session.
import { EventEmitter } from 'node:events';
import { readlinkSync } from 'node:fs';
import { PAGE_SIZE, native, type NativeWatch } from '../native.js';
import { PagerHost } from '../pager/pager-host.js';
import type { PagerRegion } from '../pager/pager.js';
import type { PagerMetrics, PagerMetricsSnapshot } from '../pager/metrics.js';
import type { Pager } from '../pager/pager.js';
import type { PrefetchOptions } from '../pager/readahead.js';
import type { SharedPageCache } from '../pager/page-cache.js';
import type { PageSource } from '../sources/page-source.js';
import { ERRNO, errnoName } from '../errno.js';
import { AddressSpaceGoneError, InvalidArgumentError, RangeNotRegisteredError, SyscallError, UserfaultError } from '../uffd/errors.js';
import { Userfaultfd } from '../uffd/userfaultfd.js';
import {
  ClientSocketError,
  HandshakeRefusedError,
  HandshakeTimeoutError,
  MissingUffdError,
  NotAUserfaultfdError,
  RegionNotMinorError,
  RegionNotRegisteredError,
  RegionOnAnotherUffdError,
} from './errors.js';
import { HandshakeDecoder, pageCacheReply, type HandshakeLimits, type HandshakeProblem, type HandshakeRegion } from './handshake.js';

export type ClientState = 'handshaking' | 'starting' | 'serving' | 'closing' | 'closed';

const LEGAL_MOVES: Readonly<Record<ClientState, readonly ClientState[]>> = {
  handshaking: ['starting', 'closing'],
  starting: ['serving', 'closing'],
  serving: ['closing'],
  closing: ['closed'],
  closed: [],
};

export type ClientEndReason =
  /** The client closed its socket: it exited, or gave up on us. */
  | 'hangup'
  /** Its address space is gone (ESRCH from the uffd). */
  | 'exited'
  /** Its handshake, descriptor or regions were refused. */
  | 'refused'
  /** Its socket or uffd failed in a way that cannot be served through. */
  | 'failed'
  /** The server shut down. */
  | 'server-closed';

export interface ClientSummary {
  id: number;
  state: ClientState;
  endReason?: ClientEndReason;
  /** The error that ended the session, if one did. */
  endError?: string;
  regions: readonly HandshakeRegion[];
  /** Pages the region probe copied before the pager started (the pager's metrics do not count them). */
  probePagesCopied: number;
  /** Errors reported while serving (source failures and the like) that did not end the session. */
  errorsReported: number;
  connectedMs: number;
  /** It connected and hung up without sending a byte (another server checking whether the socket is live, say): not a client. */
  silent: boolean;
  /** It asked for the page cache, and its memory is a private mapping of it. */
  pageCache: boolean;
  /** Undefined until a pager ran. */
  metrics?: PagerMetricsSnapshot;
}

export interface ClientSessionOptions {
  source: PageSource;
  prefetch?: PrefetchOptions | false;
  /** Time from connecting to having both the JSON and the uffd (default 10 s). */
  handshakeTimeoutMs?: number;
  /** COPY the first and last page of every region before serving, to catch regions the client never registered (default true). */
  probeRegions?: boolean;
  /** The server's page cache, for clients that ask for it (zero-copy restore); shared by every client, never closed here. */
  pageCache?: SharedPageCache;
}

export interface ClientSessionEvents {
  /** The pager is serving the client's faults. */
  ready: [];
  /** Something odd but harmless (bytes after the handshake, an extra descriptor). */
  notice: [message: string];
  /** An error: one that ended the session (then 'gone' follows) or one the pager reported and served through. */
  error: [error: Error];
  /** The session is over and every descriptor of it closed. */
  gone: [summary: ClientSummary];
}

const DEFAULT_HANDSHAKE_TIMEOUT_MS = 10_000;
const UFFD_LINK_TARGET = 'anon_inode:[userfaultfd]';
/** One receive buffer for every session: reads are synchronous and the decoder copies what it keeps. */
const receiveBuffer = new Uint8Array(64 * 1024);

export class ClientSession extends EventEmitter<ClientSessionEvents> {
  private stateValue: ClientState = 'handshaking';
  private readonly limits: HandshakeLimits;
  /** The current decoder: a new one for the array after a request. */
  private decoder: HandshakeDecoder;
  /** Bytes the current decoder has been given. */
  private decoderBytes = 0;
  /** The client asked for the page cache and was given its memfd. */
  private usesPageCache = false;
  private readonly startedAt = performance.now();
  private endedAt: number | undefined;
  private socketWatch: NativeWatch | undefined;
  private uffdFd: number | undefined;
  private uffd: Userfaultfd | undefined;
  private host: PagerHost | undefined;
  /** The start-up (probe and pager creation) while it runs: the uffd must not close under it. */
  private starting: Promise<void> | undefined;
  private regionsValue: HandshakeRegion[] | undefined;
  private bytesReceived = 0;
  private ignoredBytes = 0;
  private errorsReported = 0;
  private probePagesCopied = 0;
  private endReason: ClientEndReason | undefined;
  private endError: Error | undefined;
  private readonly handshakeTimer: NodeJS.Timeout;
  private readonly goneSignal: Promise<ClientSummary>;

  constructor(
    readonly id: number,
    private readonly socketFd: number,
    private readonly options: ClientSessionOptions,
  ) {
    super();
    this.limits = { pageSizeBytes: PAGE_SIZE, memoryFileSizeBytes: options.source.sizeBytes };
    this.decoder = new HandshakeDecoder(this.limits);
    const timeoutMs = options.handshakeTimeoutMs ?? DEFAULT_HANDSHAKE_TIMEOUT_MS;
    this.handshakeTimer = setTimeout(() => {
      if (this.stateValue !== 'handshaking') return;
      const error = this.decoder.isComplete ? new MissingUffdError('timeout', timeoutMs) : new HandshakeTimeoutError(timeoutMs, this.bytesReceived);
      this.end('refused', error);
    }, timeoutMs);
    this.handshakeTimer.unref();
    this.goneSignal = new Promise((resolve) => this.once('gone', resolve));
  }

  get state(): ClientState {
    return this.stateValue;
  }

  /** The regions, once the handshake is accepted. */
  get regions(): readonly HandshakeRegion[] {
    return this.regionsValue ?? [];
  }

  /** Resolves when the session is closed. */
  get gone(): Promise<ClientSummary> {
    return this.goneSignal;
  }

  /** Closing or closed. */
  get isOver(): boolean {
    return this.stateValue === 'closing' || this.stateValue === 'closed';
  }

  /** Start reading the socket (after the server has attached its listeners). */
  start(): this {
    this.socketWatch = native.watchFd(this.socketFd, native.constants.UV_READABLE | native.constants.UV_DISCONNECT, (status, events) =>
      this.atBoundary(() => this.onSocket(status, events)),
    );
    return this;
  }

  /**
   * The connection boundary: whatever this client sends, nothing it causes may
   * throw out of a libuv callback (that is fatal to the whole process and
   * every other client). A throw ends this session alone.
   */
  private atBoundary(step: () => void): void {
    try {
      step();
    } catch (error) {
      const failure = error instanceof Error ? error : new UserfaultError(`client ${this.id}: ${String(error)}`);
      try {
        this.end('failed', failure);
      } catch {
        // end() itself failed (an 'error' listener threw): the session is already closing.
      }
    }
  }

  summary(): ClientSummary {
    return {
      id: this.id,
      state: this.stateValue,
      endReason: this.endReason,
      endError: this.endError?.message,
      regions: this.regions,
      probePagesCopied: this.probePagesCopied,
      errorsReported: this.errorsReported,
      connectedMs: (this.endedAt ?? performance.now()) - this.startedAt,
      silent: this.endReason === 'hangup' && this.bytesReceived === 0 && this.regions.length === 0,
      pageCache: this.usesPageCache,
      metrics: this.host?.pager.snapshotMetrics(),
    };
  }

  /** The client's pager once it started (its counters stay readable after it stopped). */
  get pager(): Pager | undefined {
    return this.host?.pager;
  }

  /** Pages the region probe copied before the pager started. */
  get probePages(): number {
    return this.probePagesCopied;
  }

  /** How the session ended, once it did. */
  get ended(): ClientEndReason | undefined {
    return this.endReason;
  }

  /** End the session (the server is shutting down); resolves when its descriptors are closed. */
  close(): Promise<ClientSummary> {
    this.end('server-closed');
    return this.goneSignal;
  }

  // ---- the socket ------------------------------------------------------------

  private onSocket(status: number, events: number): void {
    if (this.isOver) return;
    if (status < 0) {
      this.end('failed', new ClientSocketError('uv_poll', -status, errnoName(-status)));
      return;
    }
    for (;;) {
      const [n, fds] = native.recvWithFds(this.socketFd, receiveBuffer);
      for (const fd of fds) this.receiveFd(fd);
      if (this.isOver) return;
      if (n > 0) {
        this.receiveBytes(receiveBuffer.subarray(0, n));
        if (this.isOver) return;
        continue;
      }
      if (n === 0) {
        this.hangup();
        return;
      }
      if (-n === ERRNO.EAGAIN) break;
      this.end('failed', new ClientSocketError('recvmsg', -n, errnoName(-n)));
      return;
    }
    // EPOLLRDHUP without a readable EOF does not happen on a Unix stream
    // socket, but if it ever did, the peer is still gone.
    if (events & native.constants.UV_DISCONNECT) this.hangup();
  }

  private receiveFd(fd: number): void {
    if (this.stateValue !== 'handshaking' || this.uffdFd !== undefined) {
      native.close(fd);
      this.emit('notice', `closed an extra descriptor the client sent (${describeFd(fd)})`);
      return;
    }
    const target = describeFd(fd);
    if (target !== UFFD_LINK_TARGET) {
      native.close(fd);
      this.end('refused', new NotAUserfaultfdError(target));
      return;
    }
    this.uffdFd = fd;
    this.maybeStart();
  }

  private receiveBytes(bytes: Uint8Array): void {
    this.bytesReceived += bytes.length;
    this.decode(bytes);
  }

  private decode(bytes: Uint8Array): void {
    if (this.decoder.isComplete) {
      this.ignore(bytes);
      return;
    }
    const seenBefore = this.decoderBytes;
    this.decoderBytes += bytes.length;
    const parse = this.decoder.push(bytes);
    if (!parse.complete) return;
    if (parse.errors.length > 0) {
      this.end('refused', new HandshakeRefusedError(parse.errors));
      return;
    }
    const rest = bytes.subarray(parse.lengthBytes - seenBefore);
    if (parse.request === 'page-cache') {
      this.grantPageCache();
      if (this.isOver) return;
      // The regions come next, in a decoder of their own.
      this.decoder = new HandshakeDecoder(this.limits);
      this.decoderBytes = 0;
      if (rest.length > 0) this.decode(rest);
      return;
    }
    this.regionsValue = parse.regions;
    this.ignore(rest);
    this.maybeStart();
  }

  /** A page-cache request: answered with the sealed memfd, once, if this server keeps a page cache. */
  private grantPageCache(): void {
    const cache = this.options.pageCache;
    const refuse = (message: string): void => this.end('refused', new HandshakeRefusedError([{ code: 'EHANDSHAKE_REQUEST', message } satisfies HandshakeProblem]));
    if (!cache) return refuse('this server keeps no page cache (start it with --page-cache)');
    if (this.usesPageCache) return refuse('the page cache was asked for twice');
    const reply = pageCacheReply(cache.sizeBytes);
    const sent = native.sendWithFds(this.socketFd, reply, [cache.sealForSharing()]);
    if (sent !== reply.length) {
      this.end('failed', new ClientSocketError('sendmsg', sent < 0 ? -sent : ERRNO.EAGAIN, sent < 0 ? errnoName(-sent) : `sent ${sent} of ${reply.length} bytes`));
      return;
    }
    this.usesPageCache = true;
  }

  /** Bytes after the handshake: Firecracker sends none, except whitespace (a separate sendmsg carrying the uffd needs one byte). */
  private ignore(bytes: Uint8Array): void {
    let meaningful = 0;
    for (const byte of bytes) if (byte !== 0x20 && byte !== 0x0a && byte !== 0x0d && byte !== 0x09) meaningful++;
    if (meaningful > 0 && this.ignoredBytes === 0) this.emit('notice', `ignoring bytes sent after the handshake (the protocol has none)`);
    this.ignoredBytes += meaningful;
  }

  private hangup(): void {
    if (this.stateValue !== 'handshaking') {
      this.end('hangup');
      return;
    }
    // Not a word before hanging up: a check that the socket is live (listenReplacingStale's), not a client that failed.
    if (this.bytesReceived === 0) {
      this.end('hangup');
      return;
    }
    const parse = this.decoder.end();
    if (parse.complete && parse.errors.length > 0) this.end('hangup', new HandshakeRefusedError(parse.errors));
    else this.end('hangup', new MissingUffdError('hangup'));
  }

  // ---- serving ---------------------------------------------------------------

  private maybeStart(): void {
    if (this.stateValue !== 'handshaking' || this.regionsValue === undefined || this.uffdFd === undefined) return;
    this.move('starting');
    clearTimeout(this.handshakeTimer);
    // The client did UFFDIO_API; which features it asked for cannot be read back
    // from the fd, so none are assumed (the pager serves whatever events it
    // reads). POISON is the exception: UFFDIO_POISON works on any uffd of a
    // kernel that has it, negotiated or not, and without it a page whose source
    // read keeps failing would leave the client's faulting thread asleep forever
    // instead of giving it SIGBUS.
    this.uffd = Userfaultfd.adopt(this.uffdFd, kernelHasPoison() ? ['POISON'] : []);
    this.starting = this.serve(this.uffd, this.regionsValue).catch((error: Error) => this.end('failed', error));
  }

  private async serve(uffd: Userfaultfd, regions: readonly HandshakeRegion[]): Promise<void> {
    const pageCache = this.usesPageCache ? this.options.pageCache : undefined;
    if (this.options.probeRegions ?? true) {
      const outcome = await probeRegions(uffd, this.options.source, regions, pageCache, () => this.stateValue === 'starting', () => this.probePagesCopied++);
      if (this.stateValue !== 'starting') return;
      if (outcome.type === 'gone') {
        this.end('exited');
        return;
      }
      if (outcome.type === 'unregistered') {
        this.end('refused', outcome.error);
        return;
      }
    }
    const pagerRegions: PagerRegion[] = regions.map((r) => ({ address: r.hostAddress, lengthBytes: r.lengthBytes, sourceOffset: r.fileOffset }));
    this.move('serving');
    // The source is the server's, shared by every client: it stays open.
    this.host = PagerHost.start(
      { uffd, source: this.options.source, pageCache, regions: pagerRegions, prefetch: this.options.prefetch, closeUffd: true, closeSource: false },
      {
        error: (error) => this.pagerError(error),
        poisoned: (_first, _count, error) => this.pagerError(error),
        // 'exit': its address space is gone; 'failed': its uffd cannot be read (EBADF, EINVAL on an fd whose UFFDIO_API was never done).
        ended: (reason, error) => this.end(reason === 'exit' ? 'exited' : 'failed', error),
      },
    );
    // start() serves faults already queued, and may learn right there that the client is gone.
    if (this.stateValue === 'serving') this.emit('ready');
  }

  private pagerError(error: Error): void {
    if (this.isOver) return;
    this.errorsReported++;
    this.emit('error', error);
  }

  // ---- the end ---------------------------------------------------------------

  private end(reason: ClientEndReason, error?: Error): void {
    if (this.isOver) return;
    this.move('closing');
    this.endReason = reason;
    this.endError = error;
    clearTimeout(this.handshakeTimer);
    if (this.socketWatch) native.unwatchFd(this.socketWatch);
    this.socketWatch = undefined;
    void this.release();
    if (error) this.emit('error', error);
  }

  private async release(): Promise<void> {
    try {
      // The probe and the reads in flight finish before the uffd closes: a
      // COPY on a closed descriptor number could land in whichever uffd
      // (another client's) took the number next.
      await this.starting;
      await this.host?.stop();
    } finally {
      if (this.uffd && !this.uffd.isClosed) this.uffd.close();
      else if (!this.uffd && this.uffdFd !== undefined) native.close(this.uffdFd);
      native.close(this.socketFd);
      this.endedAt = performance.now();
      this.move('closed');
      this.emit('gone', this.summary());
    }
  }

  private move(to: ClientState): void {
    if (!LEGAL_MOVES[this.stateValue].includes(to)) {
      throw new UserfaultError(`client ${this.id}: cannot move from ${this.stateValue} to ${to}`);
    }
    this.stateValue = to;
  }
}

type ProbeOutcome = { type: 'ok' } | { type: 'gone' } | { type: 'unregistered'; error: RegionNotRegisteredError | RegionOnAnotherUffdError | RegionNotMinorError };

/**
 * Check that every region is registered with the client's uffd, by serving
 * its first and last page now, then asking the kernel whose registration it is.
 *
 * UFFDIO_COPY is the one ioctl that looks up the client's VMA and changes
 * nothing the pager would not have done anyway: ENOENT means the range is not
 * registered (outside the mapping, or never registered); EEXIST means the page
 * is already there. But COPY only checks that *some* uffd owns the VMA
 * (validate_dst_vma tests vm_userfaultfd_ctx.ctx for non-NULL): through a
 * second uffd of the same process it succeeds, and the region's faults would
 * go to a uffd nobody reads. UFFDIO_REGISTER tells the two apart: on a VMA
 * another uffd owns it fails with EBUSY; on one this uffd owns in MISSING mode
 * already it changes nothing (the kernel skips a VMA whose flags already hold
 * the mode). Nothing cheaper and non-destructive exists: WAKE checks no VMA,
 * ZEROPAGE would plant zeroes.
 *
 * A client of the page cache must have every region registered MINOR as
 * well: without it, the kernel maps a cache page on its own as soon as the
 * page is in the cache, which is before its bytes are (a fill's copy faults
 * in the page zeroed first). The server does not take the client's word for
 * it: it registers each whole region MISSING and MINOR itself, through the
 * client's uffd (a no-op where the client did; the kernel refuses MINOR on
 * memory that is not shared memory, EINVAL: refused, it cannot be a mapping
 * of the cache; EBUSY: another uffd's). Then the probe pages go into the
 * cache and are mapped with UFFDIO_CONTINUE, the way the client is served.
 */
async function probeRegions(
  uffd: Userfaultfd,
  source: PageSource,
  regions: readonly HandshakeRegion[],
  pageCache: SharedPageCache | undefined,
  wanted: () => boolean,
  copied: () => void,
): Promise<ProbeOutcome> {
  const page = new Uint8Array(PAGE_SIZE);
  if (pageCache) {
    for (const [index, region] of regions.entries()) {
      try {
        uffd.register(region.hostAddress, region.lengthBytes, ['MISSING', 'MINOR']);
      } catch (error) {
        if (error instanceof AddressSpaceGoneError) return { type: 'gone' };
        if (error instanceof SyscallError && error.errno === ERRNO.EBUSY) return { type: 'unregistered', error: new RegionOnAnotherUffdError(index, region.hostAddress, { cause: error }) };
        if (error instanceof InvalidArgumentError) return { type: 'unregistered', error: new RegionNotMinorError(index, region.hostAddress, { cause: error }) };
        if (error instanceof SyscallError) return { type: 'unregistered', error: new RegionNotRegisteredError(index, region.hostAddress, { cause: error }) };
        throw error;
      }
    }
  }
  for (const [index, region] of regions.entries()) {
    const last = region.lengthBytes - PAGE_SIZE;
    for (const offset of last > 0 ? [0, last] : [0]) {
      const address = region.hostAddress + offset;
      const bytes = await probePage(source, region.fileOffset + offset, page);
      if (!wanted()) return { type: 'ok' };
      try {
        let status: string;
        if (pageCache) {
          const page = (region.fileOffset + offset) / PAGE_SIZE;
          pageCache.fill(page, 1, bytes);
          status = uffd.continue(address, PAGE_SIZE).status;
        } else {
          status = uffd.copy(address, bytes).status;
        }
        // 'retry' (events pending) proves nothing either way; the pager will meet the page if it matters.
        if (status === 'done') copied();
      } catch (error) {
        if (error instanceof AddressSpaceGoneError) return { type: 'gone' };
        if (error instanceof RangeNotRegisteredError) return { type: 'unregistered', error: new RegionNotRegisteredError(index, address, { cause: error }) };
        throw error;
      }
      if (pageCache) continue; // registered above, whole
      try {
        uffd.register(address, PAGE_SIZE, ['MISSING']);
      } catch (error) {
        if (error instanceof AddressSpaceGoneError) return { type: 'gone' };
        if (error instanceof SyscallError && error.errno === ERRNO.EBUSY) {
          return { type: 'unregistered', error: new RegionOnAnotherUffdError(index, address, { cause: error }) };
        }
        throw error;
      }
    }
  }
  return { type: 'ok' };
}

/**
 * A probe page from the source, by its fast paths when it has them (a view of
 * the page cache, a read that does not wait): the client is storing already
 * (Firecracker resumes right after sending the handshake), and a thread-pool
 * round trip per probed page is the first fault's latency. Else read() it.
 */
function probePage(source: PageSource, offset: number, page: Uint8Array): Uint8Array | Promise<Uint8Array> {
  const view = source.mappedPages?.(offset, PAGE_SIZE);
  if (view) return view;
  if (source.readSync?.(offset, PAGE_SIZE, page)) return page;
  return source.read(offset, PAGE_SIZE, page).then(() => page);
}

let poisonOffered: boolean | undefined;

function kernelHasPoison(): boolean {
  poisonOffered ??= Userfaultfd.probe().features.has('POISON');
  return poisonOffered;
}

function describeFd(fd: number): string {
  try {
    return readlinkSync(`/proc/self/fd/${fd}`);
  } catch (error) {
    return `unknown (${(error as Error).message})`;
  }
}
