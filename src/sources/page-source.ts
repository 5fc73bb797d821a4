// A page source: where the pager gets the contents of pages it has not yet filled.
//
// The contract, for local sources (a file, memory) and network ones (a page
// server, a migration stream, object storage) alike:
//   - read() fills a page-aligned range; many reads may be in flight at once,
//     and they may complete in any order.
//   - Each read says how urgent it is (a thread is blocked on a demand read; a
//     background read is read-ahead or streaming) and may be aborted (its page
//     was discarded or filled meanwhile). A source may ignore both.
//   - A read that fails says whether trying again may help (transient) or the
//     source is gone for good (fatal). A source that loses its peer does not
//     fail reads while it reconnects: the read just takes longer, and the
//     faulting thread waits, as it must (not zeroes), up to the source's
//     deadline (RemoteSource's readDeadlineMs, S3Source's deadlineMs): then
//     the read fails and the pager poisons the page (SIGBUS, never zeroes).
//   - A source may push pages nobody asked for (post-copy's background
//     stream); the pager installs those still missing and drops the rest.
import { UserfaultError } from '../errors.js';
import type { AvailabilityEvent, AvailabilityStats } from './network/availability.js';

/** How urgent a read is: 'demand' has a thread blocked on it; 'background' is read-ahead or streaming. */
export type ReadPriority = 'demand' | 'background';

export interface ReadOptions {
  /** Default 'demand'. A source with an urgent channel sends demand reads there. */
  priority?: ReadPriority;
  /**
   * Aborted when the pager no longer needs the range (every page of it was
   * discarded, unmapped or filled by another read). The source may stop the
   * read and reject with an AbortError, or finish it; either is fine.
   */
  signal?: AbortSignal;
}

/** A page (run) a source sends without being asked; `bytes` holds whole pages from `offset`. */
export interface PushedPages {
  offset: number;
  bytes: Uint8Array;
}

/**
 * Contents of a flat memory image of `sizeBytes`, read asynchronously.
 * Offsets and lengths the pager asks for are page-aligned.
 */
export interface PageSource {
  readonly sizeBytes: number;
  /** Short human description ("snapshot /tmp/a.snap", "page server tcp://127.0.0.1:7000"). */
  readonly description: string;
  /**
   * Fill target[0, lengthBytes) with the image's bytes at [offset, offset+lengthBytes).
   * Rejects with a SourceReadError (transient or fatal), or an AbortError
   * after options.signal aborted.
   */
  read(offset: number, lengthBytes: number, target: Uint8Array, options?: ReadOptions): Promise<void>;
  /**
   * Whether [offset, offset+lengthBytes) is known to be all zeroes, so the pager
   * can map the zero page without reading. Optional; absent means "unknown".
   */
  isZero?(offset: number, lengthBytes: number): boolean;
  /**
   * Optional, isZero() for every page at once: one byte per `pageSize` page of
   * the image, 1 where isZero() would be true; undefined if it cannot say for
   * that page size. A pager starting on a large image asks this once.
   */
  zeroPageMask?(pageSize: number): Uint8Array | undefined;
  /**
   * Optional fast path: fill target now, on the caller's thread, if that
   * costs no waiting (memory, or a page-cache hit); return false to have the
   * pager fall back to read(). Saves a promise and an event-loop round per fetch.
   */
  readSync?(offset: number, lengthBytes: number, target: Uint8Array): boolean;
  /**
   * Optional one-copy path: the range's bytes where they already are (a
   * read-only view of memory the source keeps mapped, the page cache say),
   * checked, if that costs no waiting; undefined to have the pager use
   * readSync() or read(). The pager copies from the view into place and never
   * writes to it; it must stay valid until the source is closed. Throws a
   * SourceReadError as read() rejects.
   */
  mappedPages?(offset: number, lengthBytes: number): Uint8Array | undefined;
  /**
   * Optional borrowed read: resolves with the range's bytes where the source
   * already holds them (a payload as it was received), checked as read()
   * checks, instead of copying them into a target; rejects as read() does.
   * The pager installs from the view and never writes to it; the source
   * never reuses or frees that memory (it lives as long as someone holds the
   * view). A source offering it is read only this way.
   */
  readView?(offset: number, lengthBytes: number, options?: ReadOptions): Promise<Uint8Array>;
  /**
   * Optional, with readView: the caller is done with a view it gave (it will
   * not read it again), so the source may reuse that memory. A view never
   * released is only left to the garbage collector.
   */
  releaseView?(view: Uint8Array): void;
  /**
   * Optional: receive pages the source pushes unasked. Returns the function
   * that stops the listener. A pager subscribes while it runs.
   */
  onPush?(listener: (pages: PushedPages) => void): () => void;
  /**
   * Optional, a network source's (a page server, a store, a migration
   * source): its peer's outages so far and the current one
   * (src/sources/network/availability.ts).
   */
  readonly availabilityStats?: AvailabilityStats;
  /** Optional, with availabilityStats: hear the peer become unreachable, come back, or be given up. Returns the function that stops the listener. */
  onAvailability?(listener: (event: AvailabilityEvent) => void): () => void;
  close?(): void | Promise<void>;
}

/**
 * Whether trying a failed read again may help: 'transient' (a timeout, a
 * connection being re-established, a corrupt reply that a second request may
 * get right) or 'fatal' (the file is corrupt, the peer is gone for good, the
 * source was closed). The pager retries transient failures a few times and
 * gives up on fatal ones at once: their waiters get poison, never made-up data.
 */
export type SourceFailure = 'transient' | 'fatal';

/** A source whose reads fail is reported with the range it could not read. */
export class SourceReadError extends UserfaultError {
  override readonly code: string = 'ESOURCE';
  readonly failure: SourceFailure;
  /** The offset of the page known to have failed, when the source knows it (a corrupt snapshot page): the rest of the range may be fine. */
  readonly failedOffset: number | undefined;
  constructor(readonly offset: number, readonly lengthBytes: number, message: string, options?: { cause?: unknown; failure?: SourceFailure; failedOffset?: number }) {
    super(`reading ${lengthBytes} bytes at offset ${offset}: ${message}`, options);
    this.failure = options?.failure ?? 'transient';
    this.failedOffset = options?.failedOffset;
  }
}

/** The source is gone for good (its peer did not come back before the deadline, or it was closed): every later read fails too. */
export class SourceGoneError extends SourceReadError {
  override readonly code: string = 'ESOURCEGONE';
  constructor(offset: number, lengthBytes: number, message: string, options?: { cause?: unknown }) {
    super(offset, lengthBytes, message, { ...options, failure: 'fatal' });
  }
}

export function checkReadRange(source: PageSource, offset: number, lengthBytes: number): void {
  if (offset < 0 || lengthBytes < 0 || offset + lengthBytes > source.sizeBytes) {
    throw new SourceReadError(offset, lengthBytes, `outside the ${source.sizeBytes}-byte image of ${source.description}`, { failure: 'fatal' });
  }
}

/** checkReadRange, and a target too short for the read: a RangeError. */
export function checkReadRequest(source: PageSource, offset: number, lengthBytes: number, target: Uint8Array): void {
  checkReadRange(source, offset, lengthBytes);
  if (target.length < lengthBytes) throw new RangeError(`target holds ${target.length} bytes, ${lengthBytes} asked for`);
}

/** What a read rejects with once its signal aborted. */
/**
 * Why an asynchronous read must be refused before it starts — its range or
 * target is wrong (checkReadRequest), or its signal is already aborted — or
 * undefined: the check every network source makes first, as a value, so the
 * read rejects rather than throws.
 */
export function readRequestRefusal(source: PageSource, offset: number, lengthBytes: number, target: Uint8Array | undefined, signal?: AbortSignal): Error | undefined {
  try {
    // No target: a read whose bytes the source lends (readView), the range alone.
    if (target) checkReadRequest(source, offset, lengthBytes, target);
    else checkReadRange(source, offset, lengthBytes);
  } catch (error) {
    return error as Error;
  }
  return signal?.aborted ? abortedReadError() : undefined;
}

export function abortedReadError(): Error {
  return new DOMException('the read was aborted', 'AbortError');
}

/** The rejection of a read whose signal aborted (DOMException name 'AbortError', as fetch and fs use). */
export function isAbortError(error: unknown): boolean {
  return (error as { name?: string } | null)?.name === 'AbortError';
}
