// Adaptive read-ahead: a fault that continues a recent stream doubles that
// stream's window (up to the maximum); a fault anywhere else starts a new
// stream at the initial window. A few streams are tracked so that two threads
// sweeping different areas do not reset each other. A stream at its full
// window is read further ahead, `aheadWindows` windows past the fault; its
// next fault is expected on the page the pager holds back part way into that
// read-ahead (readahead-triggers.ts), or, failing that, where it ends.

export interface PrefetchOptions {
  /** Pages fetched for a fault that starts no stream (1: only the faulting page). */
  initialPages?: number;
  /** Largest window, reached by a stream of sequential faults. */
  maxPages?: number;
  /**
   * Windows read in the background past the demand window once a stream runs
   * at its largest window (default 16: 4 MiB with 64-page windows). One
   * window ahead hides the copy of the next window behind the thread's work
   * on this one; several hide a source's round trip too, and the source has
   * that many reads to work on meanwhile (measured on the bench's sequential
   * restore, 256 KiB windows, one-window reads: 1 ahead 0.42-0.49 GB/s from
   * the snapshot file and 0.20-0.24 from a page server; 8 ahead 0.51-0.62 and
   * 0.29-0.32; with the pager's reads of 8 windows from a lending source, 16
   * ahead 0.38 GB/s remote, 0.66x the local restore, against 0.35 and 0.61x
   * for 8 in runs of 4). From two windows on, the page half the depth before
   * the read-ahead's end is its trigger (readahead-triggers.ts): the thread's
   * fault there extends it, so the thread never runs off its end.
   */
  aheadWindows?: number;
}

interface Stream {
  /** Page index just past the last run fetched for this stream. */
  nextPage: number;
  windowPages: number;
  lastUse: number;
}

const STREAMS = 8;

export class ReadAhead {
  readonly initialPages: number;
  readonly maxPages: number;
  readonly aheadWindows: number;
  private readonly streams: Stream[] = [];
  /** The stream of the last windowFor(). */
  private current: Stream | undefined;
  private clock = 0;
  private fullSpeed = false;

  constructor(options: PrefetchOptions | false = {}) {
    if (options === false) {
      this.initialPages = 1;
      this.maxPages = 1;
      this.aheadWindows = 0;
    } else {
      this.initialPages = Math.max(1, options.initialPages ?? 1);
      this.maxPages = Math.max(this.initialPages, options.maxPages ?? 64);
      this.aheadWindows = Math.max(0, Math.floor(options.aheadWindows ?? 16));
    }
  }

  /**
   * How many pages to fetch starting at `pageIndex`, the page that faulted.
   * Runs on every fault: plain loops, and a stream that is replaced is reused
   * in place, so a fault allocates nothing here.
   */
  windowFor(pageIndex: number): number {
    this.clock++;
    const streams = this.streams;
    let stream: Stream | undefined;
    for (let i = 0; i < streams.length; i++) {
      const s = streams[i]!;
      // A stream at its largest window was read ahead: a fault anywhere in that read-ahead (a page queued and
      // not read yet) continues it too, rather than starting a new one at one page.
      const behind = s.windowPages === this.maxPages ? (this.aheadWindows + 1) * s.windowPages : s.windowPages;
      if (pageIndex >= s.nextPage - behind && pageIndex <= s.nextPage + s.windowPages) {
        stream = s;
        break;
      }
    }
    const continued = stream !== undefined;
    if (stream) {
      stream.windowPages = Math.min(this.maxPages, stream.windowPages * 2);
    } else {
      if (streams.length < STREAMS) {
        stream = { nextPage: 0, windowPages: 0, lastUse: 0 };
        streams.push(stream);
      } else {
        stream = streams[0]!;
        for (let i = 1; i < streams.length; i++) if (streams[i]!.lastUse < stream.lastUse) stream = streams[i]!;
      }
      stream.windowPages = this.initialPages;
    }
    // Never back over what was read ahead already.
    stream.nextPage = continued ? Math.max(stream.nextPage, pageIndex + stream.windowPages) : pageIndex + stream.windowPages;
    stream.lastUse = this.clock;
    this.current = stream;
    this.fullSpeed = continued && this.maxPages > 1 && stream.windowPages === this.maxPages;
    return stream.windowPages;
  }

  /**
   * A fault on `pageIndex`, a page already in flight: when it lies in the
   * read-ahead of a stream at its largest window (the thread caught up with
   * the pages still coming), that stream becomes the current one and the page
   * its read-ahead ends at is returned, to be extended from; otherwise -1.
   */
  caughtUp(pageIndex: number): number {
    if (this.maxPages <= 1 || this.aheadWindows === 0) return -1;
    const zone = (this.aheadWindows + 1) * this.maxPages;
    for (let i = 0; i < this.streams.length; i++) {
      const s = this.streams[i]!;
      if (s.windowPages === this.maxPages && pageIndex < s.nextPage && pageIndex >= s.nextPage - zone) {
        s.lastUse = ++this.clock;
        this.current = s;
        return s.nextPage;
      }
    }
    return -1;
  }

  /** The stream of the last windowFor() is read ahead up to `endPage` (exclusive): its next fault is expected there. */
  readAheadTo(endPage: number): void {
    if (this.current && endPage > this.current.nextPage) this.current.nextPage = endPage;
  }

  /**
   * The last windowFor() continued a stream at its largest window: a thread
   * sweeping memory in order, whose next window is worth fetching before it
   * faults there (read-ahead off, maxPages 1, never says so).
   */
  get atFullSpeed(): boolean {
    return this.fullSpeed;
  }
}
