// The guest's console as the host received it, line by line with the time
// each line ended, and what its heartbeats say about a migration: the micro
// guest prints `hb SEQ dirtied=D ticks=T` every `hb` timer ticks, so the
// heartbeats of the source and of the destination must form one sequence (no
// gap, no repeat), and the host-time interval across the move is the
// downtime as the guest's output shows it.

export interface ConsoleLine {
  text: string;
  /** performance.now() when its newline arrived. */
  atMs: number;
}

export interface Heartbeat {
  seq: number;
  atMs: number;
}

/** Collects a console's lines as they arrive; `waitFor` resolves when a line matches. */
export class TimedConsole {
  readonly lines: ConsoleLine[] = [];
  /** The bytes after the last newline (a line the guest had not finished). */
  partial = '';
  private waiters: { pattern: RegExp; resolve: (line: ConsoleLine) => void }[] = [];

  append(chunk: string, atMs = performance.now()): void {
    const parts = (this.partial + chunk).split('\n');
    this.partial = parts.pop()!;
    for (const text of parts) {
      const line = { text: text.replace(/\r$/, ''), atMs };
      this.lines.push(line);
      this.waiters = this.waiters.filter((w) => {
        if (!w.pattern.test(line.text)) return true;
        w.resolve(line);
        return false;
      });
    }
  }

  find(pattern: RegExp): ConsoleLine | undefined {
    return this.lines.find((line) => pattern.test(line.text));
  }

  /** The first line (already here or still to come) matching `pattern`. */
  waitFor(pattern: RegExp, timeoutMs: number, what = 'the console'): Promise<ConsoleLine> {
    const seen = this.find(pattern);
    if (seen) return Promise.resolve(seen);
    return new Promise((resolve, reject) => {
      const waiter = {
        pattern,
        resolve: (line: ConsoleLine) => {
          clearTimeout(timer);
          resolve(line);
        },
      };
      const timer = setTimeout(() => {
        this.waiters = this.waiters.filter((w) => w !== waiter);
        reject(new Error(`no line matching ${pattern} on ${what} within ${timeoutMs} ms; last lines:\n${this.tail()}`));
      }, timeoutMs);
      this.waiters.push(waiter);
    });
  }

  heartbeats(): Heartbeat[] {
    return heartbeatsOf(this.lines);
  }

  lastHeartbeat(): Heartbeat | undefined {
    return this.heartbeats().at(-1);
  }

  tail(count = 5): string {
    return [...this.lines.slice(-count).map((l) => l.text), this.partial].filter(Boolean).join('\n');
  }

  get text(): string {
    return this.lines.map((l) => `${l.text}\n`).join('') + this.partial;
  }
}

export function heartbeatsOf(lines: readonly ConsoleLine[]): Heartbeat[] {
  const beats: Heartbeat[] = [];
  for (const line of lines) {
    const m = /^hb (\d+) /.exec(line.text);
    if (m) beats.push({ seq: Number(m[1]), atMs: line.atMs });
  }
  return beats;
}

/**
 * The lines of one guest that moved from `source` to `destination`: a line
 * the source's guest had begun when it was paused is finished on the
 * destination, so the source's unfinished bytes go in front of the
 * destination's first line.
 */
export function joinConsoles(source: TimedConsole, destination: TimedConsole): ConsoleLine[] {
  const after = destination.lines.map((l) => ({ ...l }));
  if (source.partial && after.length > 0) after[0] = { ...after[0]!, text: source.partial + after[0]!.text };
  return [...source.lines, ...after];
}

export interface HeartbeatAcrossMove {
  /** Heartbeats seen before (on the source) and after (on the destination) the move. */
  beforeCount: number;
  afterCount: number;
  /** The last heartbeat the source printed and the first the destination printed. */
  lastBefore: number;
  firstAfter: number;
  /** When they arrived, ms after `fromMs` (the migrate command). */
  lastBeforeAtMs: number;
  firstAfterAtMs: number;
  /** Host time from the source's last heartbeat to the destination's first: the move as the guest's output shows it. */
  gapMs: number;
  /** The longest interval between consecutive heartbeats from `fromMs` on (post-copy stalls show here too). */
  longestIntervalMs: number;
  /** The median interval before `fromMs` (the heartbeat's own period as it ran). */
  periodMs: number;
}

export class HeartbeatError extends Error {
  readonly code = 'EHEARTBEAT';
}

/**
 * Checks that the heartbeats before and after the move form one sequence,
 * without gap or repeat, and measures the interval across it. `fromMs` is
 * when the migration began (for the longest interval and the period).
 */
export function heartbeatAcrossMove(source: TimedConsole, destination: TimedConsole, fromMs: number): HeartbeatAcrossMove {
  const before = source.heartbeats();
  const joined = heartbeatsOf(joinConsoles(source, destination));
  const after = joined.slice(before.length);
  if (before.length === 0 || after.length === 0) throw new HeartbeatError(`heartbeats on both sides wanted: ${before.length} on the source, ${after.length} on the destination`);
  for (let i = 1; i < joined.length; i++) {
    if (joined[i]!.seq !== joined[i - 1]!.seq + 1) {
      const where = i === before.length ? 'across the move' : i < before.length ? 'on the source' : 'on the destination';
      throw new HeartbeatError(`heartbeat ${joined[i - 1]!.seq} is followed by ${joined[i]!.seq} ${where}: the guest's sequence has a gap or a repeat`);
    }
  }
  const last = before.at(-1)!;
  const first = after[0]!;
  let longest = 0;
  const periods: number[] = [];
  for (let i = 1; i < joined.length; i++) {
    const interval = joined[i]!.atMs - joined[i - 1]!.atMs;
    if (joined[i]!.atMs >= fromMs) longest = Math.max(longest, interval);
    else periods.push(interval);
  }
  periods.sort((a, b) => a - b);
  return {
    beforeCount: before.length,
    afterCount: after.length,
    lastBefore: last.seq,
    firstAfter: first.seq,
    lastBeforeAtMs: last.atMs - fromMs,
    firstAfterAtMs: first.atMs - fromMs,
    gapMs: first.atMs - last.atMs,
    longestIntervalMs: longest,
    periodMs: periods.length ? periods[periods.length >> 1]! : Number.NaN,
  };
}

/** The guest's own verify line (`verify pages=P bad=B`), required clean. */
export function checkGuestVerify(console: TimedConsole, expectedPages: number, who: string): void {
  const lines = console.lines.filter((l) => /^verify pages=/.test(l.text));
  const last = lines.at(-1);
  if (!last) throw new HeartbeatError(`${who}: the guest printed no verify line; last lines:\n${console.tail()}`);
  const m = /^verify pages=(\d+) bad=(\d+)/.exec(last.text);
  if (!m || Number(m[1]) !== expectedPages || Number(m[2]) !== 0) {
    throw new HeartbeatError(`${who}: the guest's verify is not clean: "${last.text}" (wanted pages=${expectedPages} bad=0); ${console.lines.filter((l) => l.text.startsWith('bad ')).map((l) => l.text).join('; ')}`);
  }
}
