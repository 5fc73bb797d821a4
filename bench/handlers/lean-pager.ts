// Bench-only pager prototype ("lean pager"): the pager's fault path reduced to
// what the C reference does (read messages, pick the read-ahead window, one
// COPY), written in JS on the native surface, with a synchronous source
// (memory, or pread into a scratch buffer) and a choice of how to wait:
//
//   poll        block this thread in poll(2) on the uffd, like the C handler
//               (a native wait helper, the thread given over to serving)
//   event-loop  a libuv poll handle, as the real Pager waits
//   + spinUs    busy-poll the uffd that long after each fault before waiting
//
// Comparing it with the real Pager and with the C handler splits the pager's
// per-fault cost into waiting, event-loop machinery and bookkeeping. It
// serves MISSING faults only (no events, no background queue): not for use.
import { native } from '../../src/native.js';
import { ReadAhead, type PrefetchOptions } from '../../src/pager/readahead.js';
import { UFFD_MSG_SIZE } from '../../src/uffd/constants.js';
import { ERRNO } from '../../src/errno.js';
import { decodeMessages } from '../../src/uffd/messages.js';

const PAGE = 4096;

export type LeanSource = { kind: 'memory'; image: Uint8Array } | { kind: 'raw-file'; fd: number; fileOffset: number };
export type LeanWait = 'poll' | 'event-loop';

export interface LeanPagerOptions {
  uffdFd: number;
  /** The toucher's connection: end of file there ends serving. */
  connFd: number;
  base: number;
  sizeBytes: number;
  source: LeanSource;
  prefetch: PrefetchOptions | false;
  wait: LeanWait;
  /** Busy-poll the uffd this long after the last fault before waiting. */
  spinUs: number;
  /**
   * Async read-ahead: once a stream's window has reached its maximum, keep
   * filling up to this many pages past it whenever no fault is waiting.
   */
  aheadPages?: number;
}

export interface LeanPagerStats {
  faults: number;
  sourceReads: number;
  copyIoctls: number;
  pagesCopied: number;
  wakes: number;
  /** Times the thread went back to waiting (poll(2) or the event loop). */
  sleeps: number;
  /** Faults served while busy-polling. */
  spinHits: number;
  aheadPages: number;
}

export async function runLeanPager(options: LeanPagerOptions): Promise<LeanPagerStats> {
  const core = new LeanCore(options);
  if (options.wait === 'poll') {
    core.runBlocking();
    return core.stats;
  }
  await core.runOnEventLoop();
  return core.stats;
}

class LeanCore {
  readonly stats: LeanPagerStats = { faults: 0, sourceReads: 0, copyIoctls: 0, pagesCopied: 0, wakes: 0, sleeps: 0, spinHits: 0, aheadPages: 0 };
  private readonly pageCount: number;
  private readonly readAhead: ReadAhead;
  private readonly filled: Uint8Array;
  private readonly messages = new Uint8Array(64 * UFFD_MSG_SIZE);
  private readonly scratch: Buffer;
  private readonly scratchAddress: number;
  private readonly spinNs: number;
  private readonly aheadBudget: number;
  private aheadNext = 0;
  private aheadLimit = 0;

  constructor(private readonly options: LeanPagerOptions) {
    this.pageCount = options.sizeBytes / PAGE;
    this.readAhead = new ReadAhead(options.prefetch);
    this.filled = new Uint8Array(this.pageCount);
    this.scratch = Buffer.allocUnsafeSlow(this.readAhead.maxPages * PAGE);
    this.scratchAddress = native.addressOf(this.scratch);
    this.spinNs = options.spinUs * 1000;
    this.aheadBudget = options.aheadPages ?? 0;
  }

  /** Wait in poll(2) on this thread; checks for the toucher's hang-up after 20 ms idle. */
  runBlocking(): void {
    const probe = new Uint8Array(1);
    for (;;) {
      this.serveUntilIdle();
      this.stats.sleeps++;
      if (native.pollOnce(this.options.uffdFd, native.constants.POLLIN, 20) !== 0) continue;
      const n = native.readInto(this.options.connFd, probe);
      if (n === 0 || (n < 0 && n !== -ERRNO.EAGAIN)) return;
    }
  }

  /** Wait in this thread's event loop, through a libuv poll handle as the Pager does. */
  runOnEventLoop(): Promise<void> {
    const C = native.constants;
    const watch = native.watchFd(this.options.uffdFd, C.UV_READABLE, () => {
      this.serveUntilIdle();
      this.stats.sleeps++;
    });
    const probe = new Uint8Array(64);
    return new Promise((resolve) => {
      const hangUp = native.watchFd(this.options.connFd, C.UV_READABLE | C.UV_DISCONNECT, () => {
        const n = native.readInto(this.options.connFd, probe);
        if (n > 0 || n === -ERRNO.EAGAIN) return;
        native.unwatchFd(hangUp);
        native.unwatchFd(watch);
        resolve();
      });
      this.serveUntilIdle();
    });
  }

  /** Serve faults, then read ahead, then spin, until nothing is left to do. */
  private serveUntilIdle(): void {
    for (;;) {
      if (this.drain() > 0) continue;
      if (this.readAheadStep()) continue;
      if (this.spinNs > 0) {
        const since = native.monotonicNs();
        let served = 0;
        while ((served = this.drain()) === 0 && native.monotonicNs() - since < this.spinNs);
        if (served > 0) {
          this.stats.spinHits += served;
          continue;
        }
      }
      return;
    }
  }

  /** Serve every fault ready now; returns how many. */
  private drain(): number {
    let served = 0;
    for (;;) {
      const n = native.readInto(this.options.uffdFd, this.messages);
      if (n < 0) {
        if (n === -ERRNO.EAGAIN) return served;
        throw new Error(`read(uffd): errno ${-n}`);
      }
      if (n === 0) return served;
      for (const event of decodeMessages(this.messages, n)) {
        if (event.type !== 'pagefault') continue;
        this.serveFault(event.address);
        served++;
      }
      if (n < this.messages.length) return served;
    }
  }

  private serveFault(address: number): void {
    this.stats.faults++;
    const page = Math.floor((address - this.options.base) / PAGE);
    if (this.filled[page]) {
      this.wake(page);
      return;
    }
    const window = this.readAhead.windowFor(page);
    let count = 1;
    while (count < window && page + count < this.pageCount && !this.filled[page + count]) count++;
    this.fill(page, count);
    if (this.aheadBudget > 0 && window === this.readAhead.maxPages) {
      this.aheadNext = Math.max(this.aheadNext, page + count);
      this.aheadLimit = Math.min(this.pageCount, page + count + this.aheadBudget);
    }
  }

  /** One window of async read-ahead, if one is due; returns whether it did any. */
  private readAheadStep(): boolean {
    while (this.aheadNext < this.aheadLimit && this.filled[this.aheadNext]) this.aheadNext++;
    if (this.aheadNext >= this.aheadLimit) return false;
    let count = 1;
    while (count < this.readAhead.maxPages && this.aheadNext + count < this.aheadLimit && !this.filled[this.aheadNext + count]) count++;
    this.fill(this.aheadNext, count);
    this.stats.aheadPages += count;
    this.aheadNext += count;
    return true;
  }

  /** COPY pages [page, page+count) from the source. */
  private fill(page: number, count: number): void {
    const { source, uffdFd, base } = this.options;
    this.stats.sourceReads++;
    let src: Uint8Array = this.scratch;
    let srcOffset = 0;
    if (source.kind === 'memory') {
      src = source.image;
      srcOffset = page * PAGE;
    } else {
      const n = native.preadAt(source.fd, this.scratchAddress, count * PAGE, source.fileOffset + page * PAGE);
      if (n !== count * PAGE) throw new Error(`pread of ${count} pages at page ${page} returned ${n}`);
    }
    let done = 0;
    while (done < count) {
      this.stats.copyIoctls++;
      const rc = native.uffdCopy(uffdFd, base + (page + done) * PAGE, src, srcOffset + done * PAGE, (count - done) * PAGE, 0);
      if (rc > 0) {
        const pages = rc / PAGE;
        this.filled.fill(1, page + done, page + done + pages);
        this.stats.pagesCopied += pages;
        done += pages;
      } else if (rc === -ERRNO.EEXIST) {
        this.filled[page + done] = 1;
        this.wake(page + done);
        done++;
      } else if (rc !== -ERRNO.EAGAIN) {
        throw new Error(`UFFDIO_COPY at page ${page + done}: errno ${-rc}`);
      }
    }
  }

  private wake(page: number): void {
    this.stats.wakes++;
    const rc = native.uffdWake(this.options.uffdFd, this.options.base + page * PAGE, PAGE);
    if (rc < 0) throw new Error(`UFFDIO_WAKE: errno ${-rc}`);
  }
}
