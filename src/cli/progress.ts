// Progress of a long operation, the one way every command shows it (writing
// a snapshot, an eager restore, prefetch-all, a migration, the demo):
//
//   on a terminal   one line on stderr, redrawn in place (\r, erase to the
//                   end of the line), at most ten times a second
//   not a terminal  a plain line when something worth a line changed (a
//                   tenth more done, a new migration phase or round), so a
//                   log file gets a few lines, not a line a frame
//   --json          nothing: stdout and stderr carry only the JSON; or, for
//                   the commands that say so (snapshot push, pull), a JSON
//                   line on stderr where a plain line would be:
//                   {"progress":{"operation","doneBytes","totalBytes"}}
//
// Other output to the same terminal goes through around(), which takes the
// line away, writes, and draws it again, so the two never tangle.

export type ProgressMode = 'tty' | 'lines' | 'json' | 'off';

/** The mode for a command: off under --json, else by whether the stream is a terminal. */
export function progressMode(json: boolean | undefined, stream: NodeJS.WriteStream = process.stderr): ProgressMode {
  if (json) return 'off';
  return stream.isTTY === true ? 'tty' : 'lines';
}

const REDRAW_MS = 100;

export class ProgressView {
  private line = '';
  private shown = false;
  private lastDraw = 0;
  private lastKey: string | undefined;

  constructor(readonly mode: ProgressMode, private readonly stream: NodeJS.WritableStream = process.stderr) {}

  /**
   * The operation's state now. On a terminal the line is redrawn (unless the
   * last draw was under 100 ms ago; `force` draws anyway); as plain lines it
   * is printed when `key` differs from the last one printed.
   */
  show(line: string, key: string, force = false, data?: Record<string, unknown>): void {
    this.line = line;
    if (this.mode === 'off') return;
    if (this.mode === 'lines' || this.mode === 'json') {
      if (key === this.lastKey) return;
      this.lastKey = key;
      this.stream.write(this.mode === 'json' ? `${JSON.stringify({ progress: data ?? { message: line } })}\n` : `${line}\n`);
      return;
    }
    const now = performance.now();
    if (!force && this.shown && now - this.lastDraw < REDRAW_MS) return;
    this.lastDraw = now;
    this.shown = true;
    this.stream.write(`\r\x1b[K${line}`);
  }

  /** Write something else to the terminal: the progress line is cleared first and drawn again after. */
  around(write: () => void): void {
    if (this.mode !== 'tty' || !this.shown) return write();
    this.stream.write('\r\x1b[K');
    write();
    this.stream.write(this.line);
  }

  /** Take the line away (the operation's own output follows). */
  clear(): void {
    if (this.mode === 'tty' && this.shown) this.stream.write('\r\x1b[K');
    this.shown = false;
  }

  /** The operation ended: on a terminal the last line stays, followed by a newline. */
  end(): void {
    if (this.mode === 'tty' && this.shown) {
      this.stream.write(`\r\x1b[K${this.line}\n`);
      this.shown = false;
    }
  }
}

/** Bytes as MiB, whole. */
const mib = (bytes: number): string => (bytes / (1 << 20)).toFixed(0);

/**
 * Progress of an operation over bytes: "writing the snapshot: 12 of 64 MiB (18%)",
 * with the rate once there is one. Plain lines come at every tenth.
 */
export class ByteProgress {
  private readonly started = performance.now();

  constructor(private readonly view: ProgressView, private readonly label: string) {}

  update(doneBytes: number, totalBytes: number): void {
    const percent = totalBytes > 0 ? Math.floor((100 * doneBytes) / totalBytes) : 100;
    const seconds = (performance.now() - this.started) / 1000;
    const rate = seconds > 0.2 && doneBytes > 0 ? `, ${mib(doneBytes / seconds)} MiB/s` : '';
    this.view.show(`${this.label}: ${mib(doneBytes)} of ${mib(totalBytes)} MiB (${percent}%)${rate}`, String(Math.floor(percent / 10)), doneBytes >= totalBytes, { operation: this.label, doneBytes, totalBytes });
  }

  end(): void {
    this.view.end();
  }
}
