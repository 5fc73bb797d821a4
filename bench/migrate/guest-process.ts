// A VMM process (ours or QEMU) whose stdout is the guest's console: lines
// timed as they arrive, stderr kept, the exit awaited within a bound, and
// killed on every path out (`kill` is idempotent; `ProcessGroup` kills what
// is left of a run).
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { TimedConsole } from './heartbeat.js';

export interface ProcessExit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

export class GuestProcess {
  readonly console = new TimedConsole();
  readonly exited: Promise<ProcessExit>;
  private stderrText = '';
  private readonly child: ChildProcess;
  private exit: ProcessExit | undefined;
  private stderrWaiters: { pattern: RegExp; resolve: (m: RegExpMatchArray) => void }[] = [];

  constructor(readonly name: string, file: string, args: readonly string[], options: { stdin?: boolean } = {}) {
    this.child = spawn(file, args, { stdio: [options.stdin ? 'pipe' : 'ignore', 'pipe', 'pipe'] });
    this.child.stdout!.setEncoding('latin1').on('data', (chunk: string) => this.console.append(chunk));
    this.child.stderr!.setEncoding('utf8').on('data', (chunk: string) => {
      this.stderrText += chunk;
      this.stderrWaiters = this.stderrWaiters.filter((w) => {
        const m = this.stderrText.match(w.pattern);
        if (m) w.resolve(m);
        return !m;
      });
    });
    this.child.stdin?.on('error', () => {});
    this.exited = new Promise((resolve) => {
      this.child.once('error', (error) => {
        this.stderrText += `\nspawn: ${error.message}`;
        this.exit ??= { code: null, signal: null };
        resolve(this.exit);
      });
      // 'close': every stdout byte has been read by then.
      this.child.once('close', (code, signal) => {
        this.exit ??= { code, signal };
        resolve(this.exit);
      });
    });
  }

  get pid(): number | undefined {
    return this.child.pid;
  }

  get stderr(): string {
    return this.stderrText;
  }

  get running(): boolean {
    return this.exit === undefined && this.child.exitCode === null && this.child.signalCode === null;
  }

  write(text: string): void {
    if (!this.child.stdin) throw new Error(`${this.name}: no stdin`);
    this.child.stdin.write(text);
  }

  /** Resolves when stderr matches (already or later); rejects on exit or timeout. */
  waitForStderr(pattern: RegExp, timeoutMs: number): Promise<RegExpMatchArray> {
    const m = this.stderrText.match(pattern);
    if (m) return Promise.resolve(m);
    return new Promise((resolve, reject) => {
      const waiter = {
        pattern,
        resolve: (match: RegExpMatchArray) => {
          clearTimeout(timer);
          resolve(match);
        },
      };
      const timer = setTimeout(() => {
        this.stderrWaiters = this.stderrWaiters.filter((w) => w !== waiter);
        reject(this.failure(`printed nothing matching ${pattern} within ${timeoutMs} ms`));
      }, timeoutMs);
      this.stderrWaiters.push(waiter);
      void this.exited.then((exit) => {
        if (!this.stderrWaiters.includes(waiter)) return;
        clearTimeout(timer);
        this.stderrWaiters = this.stderrWaiters.filter((w) => w !== waiter);
        reject(this.failure(`exited (code ${exit.code}, signal ${exit.signal}) before printing ${pattern}`));
      });
    });
  }

  /** The exit within `timeoutMs`; killed and an error past it. */
  async waitForExit(timeoutMs: number): Promise<ProcessExit> {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        this.kill();
        reject(this.failure(`did not exit within ${timeoutMs} ms`));
      }, timeoutMs);
    });
    try {
      return await Promise.race([this.exited, timeout]);
    } finally {
      clearTimeout(timer);
    }
  }

  kill(): void {
    if (this.running) this.child.kill('SIGKILL');
  }

  failure(what: string): Error {
    return new Error(`${this.name} ${what}\nconsole: ${this.console.tail()}\nstderr: ${this.stderrText.slice(-2000)}`);
  }
}

/** The processes of one run: whatever is still running when it ends is killed and reaped. */
export class ProcessGroup {
  private readonly processes: GuestProcess[] = [];

  add<T extends GuestProcess>(process: T): T {
    this.processes.push(process);
    return process;
  }

  async killAll(): Promise<void> {
    for (const p of this.processes) p.kill();
    await Promise.all(this.processes.map((p) => p.waitForExit(10_000).catch(() => undefined)));
  }
}

/** `promise`, or an error naming `what` after `ms`. */
export function withTimeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([
    promise,
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${what}: not within ${ms} ms`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Wraps a command so that it is killed when the bench dies, however it dies (setpriv --pdeathsig KILL). */
export function deathSignalWrapper(): (file: string, args: string[]) => [string, string[]] {
  const has = spawnSync('setpriv', ['--help'], { encoding: 'utf8' }).stdout?.includes('--pdeathsig') ?? false;
  return has ? (file, args) => ['setpriv', ['--pdeathsig', 'KILL', file, ...args]] : (file, args) => [file, args];
}
