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

  constructor(options: PrefetchOptions | false = {}) {
    if (options === false) {
      this.initialPages = 1;
      this.maxPages = 1;
    } else {
      this.initialPages = Math.max(1, options.initialPages ?? 1);
      this.maxPages = Math.max(this.initialPages, options.maxPages ?? 64);
    }
  }

  /** How many pages to fetch starting at `pageIndex`, the page that faulted. */
  windowFor(pageIndex: number): number {
    this.clock++;
    let stream = this.streams.find((s) => pageIndex >= s.nextPage - s.windowPages && pageIndex <= s.nextPage + s.windowPages);
    if (stream) {
      stream.windowPages = Math.min(this.maxPages, stream.windowPages * 2);
    } else {
      stream = { nextPage: 0, windowPages: this.initialPages, lastUse: 0 };
      if (this.streams.length < STREAMS) this.streams.push(stream);
      else {
        const oldest = this.streams.reduce((a, b) => (a.lastUse <= b.lastUse ? a : b));
        Object.assign(oldest, stream);
        stream = oldest;
      }
    }
    stream.nextPage = pageIndex + stream.windowPages;
    stream.lastUse = this.clock;
    return stream.windowPages;
  }
}
