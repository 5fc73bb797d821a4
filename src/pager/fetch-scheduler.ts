// What the pager reads next. Demand fetches (a thread is asleep on their first
// page) go before background ones (read-ahead streams, working-set replay,
// prefetch-all, retries nobody waits for), and background reads take at most
// `maxBackgroundInFlight` of the in-flight slots, so a demand fault never
// queues behind a long replay — neither here nor in a thread pool or a network
// channel below the source.
import { PAGE_SIZE as PAGE_BYTES } from '../native.js';

/** One source read: `pageCount` pages of the image from `sourceOffset`. */
export interface Fetch {
  sourceOffset: number;
  pageCount: number;
  /** A thread waits on it (demand) or nobody does yet (background). */
  demand: boolean;
  /** Source reads of this range that failed so far. */
  attempts: number;
  /** Copies of it the kernel refused with an unexpected errno, retried so far. */
  installAttempts: number;
  /** The bytes read, once read. */
  buffer?: Uint8Array;
  /** The buffer is the source's (PageSource.mappedPages), read-only: never pooled, never written. */
  borrowed?: boolean;
  /** Where to resume installing after the kernel refused part way (EAGAIN, or a retried errno). */
  resumeAtPage?: number;
  /** Aborts the read when none of its pages is in flight any more. */
  abort?: AbortController;
  /**
   * Its pages are already in flight for it (a demand fetch, a retry). An
   * unclaimed one (replay, prefetch-all) is trimmed to the pages still
   * missing when it is started.
   */
  claimed?: boolean;
  /**
   * With a shared page cache: the pages are about to be written (a write
   * fault asked for them, or read ahead of one), so each gets its private copy
   * now (UFFDIO_COPY) instead of the cache page mapped read-only (CONTINUE)
   * and a copy-on-write fault in the kernel right after.
   */
  forWrite?: boolean;
}

export function newFetch(sourceOffset: number, pageCount: number, demand: boolean, options: { attempts?: number; claimed?: boolean; forWrite?: boolean } = {}): Fetch {
  return { sourceOffset, pageCount, demand, attempts: options.attempts ?? 0, installAttempts: 0, claimed: options.claimed ?? false, forWrite: options.forWrite ?? false };
}

export class FetchScheduler {
  private readonly demandQueue: Fetch[] = [];
  private backgroundQueue: Fetch[] = [];
  private backgroundHead = 0;
  /** Reads started and not finished (the asynchronous ones; a synchronous read finishes before it is counted). */
  readonly active = new Set<Fetch>();
  /** Of those, the ones started as background reads (a fetch's demand flag may not change the count later). */
  private readonly activeBackground = new Set<Fetch>();

  constructor(
    readonly maxInFlight: number,
    readonly maxBackgroundInFlight: number,
    /** Longest run one background fetch may cover (the read-ahead maximum). */
    readonly maxRunPages: number,
  ) {}

  get inFlight(): number {
    return this.active.size;
  }

  /** Background fetches queued and not started. */
  get backgroundQueued(): number {
    return this.backgroundQueue.length - this.backgroundHead;
  }

  queueDemand(fetch: Fetch): void {
    fetch.demand = true;
    this.demandQueue.push(fetch);
  }

  queueBackground(fetch: Fetch): void {
    fetch.demand = false;
    this.backgroundQueue.push(fetch);
  }

  /** Queue image pages for the background, in order; consecutive indices become one run (up to maxRunPages). */
  queueBackgroundPages(pageIndices: Iterable<number>): void {
    let runStart = -1;
    let runLength = 0;
    for (const index of pageIndices) {
      if (runLength > 0 && index === runStart + runLength && runLength < this.maxRunPages) {
        runLength++;
        continue;
      }
      if (runLength > 0) this.queueBackground(newFetch(runStart * PAGE_BYTES, runLength, false));
      runStart = index;
      runLength = 1;
    }
    if (runLength > 0) this.queueBackground(newFetch(runStart * PAGE_BYTES, runLength, false));
  }

  /** A fault on a page whose background fetch is still queued: that fetch moves to the demand queue. */
  promote(pageIndex: number): boolean {
    const offset = pageIndex * PAGE_BYTES;
    for (let i = this.backgroundHead; i < this.backgroundQueue.length; i++) {
      const fetch = this.backgroundQueue[i]!;
      if (offset >= fetch.sourceOffset && offset < fetch.sourceOffset + fetch.pageCount * PAGE_BYTES) {
        this.backgroundQueue.splice(i, 1);
        this.queueDemand(fetch);
        return true;
      }
    }
    return false;
  }

  /**
   * The next fetch to start, or undefined when none may start now. `prepare`
   * turns a queued fetch into the one to read (trimmed to the pages still
   * missing, marked in flight), or undefined when nothing of it is left to read.
   */
  next(prepare: (fetch: Fetch) => Fetch | undefined): Fetch | undefined {
    if (this.inFlight >= this.maxInFlight) return undefined;
    while (this.demandQueue.length > 0) {
      const fetch = prepare(this.demandQueue.shift()!);
      if (fetch) return fetch;
    }
    while (this.activeBackground.size < this.maxBackgroundInFlight && this.backgroundHead < this.backgroundQueue.length) {
      const queued = this.backgroundQueue[this.backgroundHead++]!;
      if (this.backgroundHead > 1024 && this.backgroundHead * 2 > this.backgroundQueue.length) {
        // Drop the consumed head now and then: the queue of a prefetch-all can hold every page of the image.
        this.backgroundQueue = this.backgroundQueue.slice(this.backgroundHead);
        this.backgroundHead = 0;
      }
      const fetch = prepare(queued);
      if (fetch) return fetch;
    }
    return undefined;
  }

  /** Put a trimmed-off tail back at the head of the background queue (it stays in order). */
  requeueBackgroundFront(fetch: Fetch): void {
    fetch.demand = false;
    if (this.backgroundHead > 0) this.backgroundQueue[--this.backgroundHead] = fetch;
    else this.backgroundQueue.unshift(fetch);
  }

  started(fetch: Fetch): void {
    this.active.add(fetch);
    if (!fetch.demand) this.activeBackground.add(fetch);
  }

  finished(fetch: Fetch): void {
    this.active.delete(fetch);
    this.activeBackground.delete(fetch);
  }

  /** Drop everything queued (the pager stopped). Reads in flight finish on their own. */
  clear(): void {
    this.demandQueue.length = 0;
    this.backgroundQueue = [];
    this.backgroundHead = 0;
  }
}
