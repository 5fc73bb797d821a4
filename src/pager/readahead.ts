// Adaptive read-ahead: a fault that continues a recent stream doubles that
// stream's window (up to the maximum); a fault anywhere else starts a new
// stream at the initial window. A few streams are tracked so that two threads
// sweeping different areas do not reset each other.

export interface PrefetchOptions {
  /** Pages fetched for a fault that starts no stream (1: only the faulting page). */
  initialPages?: number;
  /** Largest window, reached by a stream of sequential faults. */
  maxPages?: number;
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
  private readonly streams: Stream[] = [];
  private clock = 0;
  private fullSpeed = false;

  constructor(options: PrefetchOptions | false = {}) {
    if (options === false) {
      this.initialPages = 1;
      this.maxPages = 1;
    } else {
      this.initialPages = Math.max(1, options.initialPages ?? 1);
      this.maxPages = Math.max(this.initialPages, options.maxPages ?? 64);
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
      if (pageIndex >= s.nextPage - s.windowPages && pageIndex <= s.nextPage + s.windowPages) {
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
    stream.nextPage = pageIndex + stream.windowPages;
    stream.lastUse = this.clock;
    this.fullSpeed = continued && this.maxPages > 1 && stream.windowPages === this.maxPages;
    return stream.windowPages;
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
