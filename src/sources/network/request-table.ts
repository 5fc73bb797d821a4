// What every network source (RemoteSource, S3Source, the migration's page
// source) does between a caller's read and its peer's answer, written once:
//
//   - a read (PendingRead) waits for one or more requests (a READ on the
//     wire, a range request for a chunk), each keyed by what it asks for;
//   - a read asking for what a live request already asks joins it
//     (coalescing): one request, many waiters;
//   - a request answered delivers to every read waiting for it (the source
//     says how: a copy into the read's target, a chunk kept for a copy
//     later), and a read all of whose requests delivered resolves;
//   - a read that ends otherwise (aborted, past its deadline, failed) lets go
//     of its requests, and a request nobody waits for any more is dropped
//     before it is sent, or cancelled on the wire after (when the peer can be
//     told to stop; otherwise it runs on and what it brings is kept);
//   - the source gone or closed fails every request and every read at once.
//
// A request's states and moves are the table in request-state.ts; nothing
// here knows a protocol: the source supplies the send queue's dequeue and the
// wire's cancel (RequestTableHooks), and the value a request delivers.
import { abortedReadError, type ReadPriority } from '../page-source.js';
import { LIVE_REQUEST_STATES, REQUEST_STATES, type RequestEvent, type RequestState } from './request-state.js';

/** One request to the peer; a source's own request type adds what it asks for. */
export interface NetworkRequest<Value> {
  /** What it asks for ("urgent:4096+8192", "w12"): a read asking the same joins it. */
  readonly key: string;
  /** Moved only by RequestTable.move, through REQUEST_STATES. */
  state: RequestState;
  /** The reads waiting for it; empty once it ended. */
  readonly waiters: Set<PendingRead<Value>>;
}

/** What the source does for the table: the two places a request nobody waits for must be let go of. */
export interface RequestTableHooks<Request> {
  /** A queued request nobody waits for: take it out of the send queue (it may not be in one, waiting out a retry's pause). */
  dequeue(request: Request): void;
  /**
   * A sent request nobody waits for: tell the peer to stop (CANCEL) and
   * return true, its answer then dropped; or return false to let it finish
   * (an HTTP range request, whose bytes are kept).
   */
  cancel(request: Request): boolean;
}

export interface PendingReadOptions<Value> {
  readonly offset: number;
  readonly lengthBytes: number;
  readonly priority: ReadPriority;
  /** Aborted: the read rejects with an AbortError and lets go of its requests. */
  readonly signal?: AbortSignal;
  /**
   * Fail the read this long after it was asked, whatever its requests are
   * doing meanwhile, with the error onDeadline makes (RemoteSource's
   * readDeadlineMs). Absent: no deadline of its own.
   */
  readonly deadlineMs?: number;
  onDeadline?(read: PendingRead<Value>): Error;
  /** One of its requests delivered `value` (checked): take the part of it this read covers. */
  onPart(request: NetworkRequest<Value>, value: Value): void;
  /** Every request delivered: the last step before the read resolves (a copy of what was gathered). */
  onComplete?(): void;
}

/** A caller's read: the requests it waits for, its deadline and abort, and its promise, settled once. */
export class PendingRead<Value> {
  readonly offset: number;
  readonly lengthBytes: number;
  readonly priority: ReadPriority;
  readonly startedAt = performance.now();
  /** The requests it still waits for (delivered ones leave). */
  readonly requests = new Set<NetworkRequest<Value>>();
  private settledValue = false;
  private deadlineTimer: NodeJS.Timeout | undefined;
  private readonly abortListener: (() => void) | undefined;

  /** @internal Made by RequestTable.read. */
  constructor(
    private readonly table: RequestTable<NetworkRequest<Value>, Value>,
    private readonly options: PendingReadOptions<Value>,
    private readonly resolve: () => void,
    private readonly reject: (error: Error) => void,
  ) {
    this.offset = options.offset;
    this.lengthBytes = options.lengthBytes;
    this.priority = options.priority;
    if (options.signal) {
      this.abortListener = () => this.settle(abortedReadError());
      options.signal.addEventListener('abort', this.abortListener, { once: true });
    }
    if (options.deadlineMs !== undefined) this.armDeadline(options.deadlineMs);
  }

  get settled(): boolean {
    return this.settledValue;
  }

  /** Resolve (no error) or reject, once; every request it still waits for is let go of (dropped or cancelled if nobody else waits). */
  settle(error: Error | undefined): void {
    if (this.settledValue) return;
    this.settledValue = true;
    this.table.readSettled();
    clearTimeout(this.deadlineTimer);
    if (this.abortListener) this.options.signal?.removeEventListener('abort', this.abortListener);
    for (const request of this.requests) this.table.release(this, request);
    this.requests.clear();
    if (error) return this.reject(error);
    try {
      this.options.onComplete?.();
    } catch (copyError) {
      return this.reject(copyError as Error);
    }
    this.resolve();
  }

  /** @internal A request it waits for delivered. */
  delivered(request: NetworkRequest<Value>, value: Value): void {
    if (this.settledValue || !this.requests.delete(request)) return;
    this.options.onPart(request, value);
    if (this.requests.size === 0) this.settle(undefined);
  }

  private armDeadline(leftMs: number): void {
    this.deadlineTimer = setTimeout(() => {
      this.deadlineTimer = undefined;
      if (this.settledValue) return;
      // A timer may fire a fraction of a millisecond before performance.now() says the time is up: wait the rest.
      const rest = this.options.deadlineMs! - (performance.now() - this.startedAt);
      if (rest > 0) return this.armDeadline(Math.ceil(rest));
      this.settle(this.options.onDeadline?.(this) ?? new Error(`the read was not answered within ${this.options.deadlineMs} ms`));
    }, leftMs);
  }
}

/** The live requests of one source, by key, and the reads waiting for them. */
export class RequestTable<Request extends NetworkRequest<Value>, Value> {
  private readonly byKey = new Map<string, Request>();
  private pendingReadCount = 0;

  constructor(private readonly hooks: RequestTableHooks<Request>) {}

  get size(): number {
    return this.byKey.size;
  }

  /** Callers' reads not settled yet: what waits on the peer (an outage's "reads waiting"). */
  get pendingReads(): number {
    return this.pendingReadCount;
  }

  /** @internal A read of this table settled. */
  readSettled(): void {
    this.pendingReadCount--;
  }

  /** The live request asking for `key`, if any. */
  get(key: string): Request | undefined {
    return this.byKey.get(key);
  }

  /** Every live request (local, queued or sent). */
  requests(): IterableIterator<Request> {
    return this.byKey.values();
  }

  /**
   * A read: `start` joins it to its requests (join); it resolves once every
   * one delivered, and rejects when one fails, its signal aborts or its
   * deadline passes. A read that joined nothing resolves at once.
   */
  read(options: PendingReadOptions<Value>, start: (read: PendingRead<Value>) => void): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      this.pendingReadCount++;
      const read = new PendingRead<Value>(this as unknown as RequestTable<NetworkRequest<Value>, Value>, options, resolve, reject);
      try {
        start(read);
      } catch (error) {
        read.settle(error as Error);
        return;
      }
      if (read.requests.size === 0) read.settle(undefined);
    });
  }

  /** A new request, live from now on (state 'local' or 'queued'); its key must be free. */
  add(request: Request): Request {
    if (request.state !== 'local' && request.state !== 'queued') throw new RangeError(`request ${request.key} is added ${request.state}, not local or queued`);
    if (this.byKey.has(request.key)) throw new RangeError(`request ${request.key} is in the table already`);
    this.byKey.set(request.key, request);
    return request;
  }

  /** `read` waits for `request` too. */
  join(read: PendingRead<Value>, request: Request): void {
    if (read.settled || read.requests.has(request)) return;
    request.waiters.add(read);
    read.requests.add(request);
  }

  /** Move a request by REQUEST_STATES; one that ended leaves the table. */
  move(request: Request, event: RequestEvent): void {
    request.state = REQUEST_STATES.next(request.state, event);
    if (!LIVE_REQUEST_STATES.includes(request.state) && this.byKey.get(request.key) === request) this.byKey.delete(request.key);
  }

  /** The request answered (and its answer checked): it is done, and each read waiting takes its part of `value`. */
  deliver(request: Request, value: Value, event: 'delivered' | 'local-hit' = 'delivered'): void {
    this.move(request, event);
    const waiters = [...request.waiters];
    request.waiters.clear();
    for (const read of waiters) read.delivered(request, value);
  }

  /** The request failed for good (event 'refused'): every read waiting for it fails, each with the error `errorFor` makes for it. */
  fail(request: Request, errorFor: (read: PendingRead<Value>) => Error): void {
    this.move(request, 'refused');
    const waiters = [...request.waiters];
    request.waiters.clear();
    for (const read of waiters) read.settle(errorFor(read));
  }

  /** The source gave up or closed: every live request fails, and every read waiting fails with the error `errorFor` makes for it. */
  failAll(errorFor: (read: PendingRead<Value>) => Error): void {
    const reads = new Set<PendingRead<Value>>();
    for (const request of [...this.byKey.values()]) {
      this.move(request, 'source-gone');
      for (const read of request.waiters) reads.add(read);
      request.waiters.clear();
    }
    for (const read of reads) read.settle(errorFor(read));
  }

  /** @internal `read` no longer waits for `request`: one nobody waits for is dropped (not yet sent) or cancelled (sent, when the peer can stop). */
  release(read: PendingRead<Value>, request: Request): void {
    if (!request.waiters.delete(read) || request.waiters.size > 0) return;
    switch (request.state) {
      case 'local':
        this.move(request, 'dropped');
        return;
      case 'queued':
        this.hooks.dequeue(request);
        this.move(request, 'dropped');
        return;
      case 'sent':
        if (this.hooks.cancel(request)) this.move(request, 'cancelled');
        return;
      default:
        return;
    }
  }
}
