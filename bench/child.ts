// A bench child process: started, waited for a "listening" line if it serves,
// its stdout lines collected, bounded in time, and never left behind.
import { spawn, type ChildProcess } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

export class BenchChild {
  private readonly lines: string[] = [];
  private stderr = '';
  private partial = '';
  private lineWaiters: { pattern: RegExp; resolve: () => void }[] = [];
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  private readonly process: ChildProcess;

  constructor(readonly name: string, file: string, args: readonly string[]) {
    this.process = spawn(file, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    this.process.stdout!.setEncoding('utf8').on('data', (chunk: string) => {
      const parts = (this.partial + chunk).split('\n');
      this.partial = parts.pop()!;
      for (const line of parts) this.lines.push(line);
      this.lineWaiters = this.lineWaiters.filter((w) => {
        const hit = this.lines.some((line) => w.pattern.test(line));
        if (hit) w.resolve();
        return !hit;
      });
    });
    this.process.stderr!.setEncoding('utf8').on('data', (chunk: string) => {
      this.stderr += chunk;
    });
    this.exited = new Promise((resolve, reject) => {
      this.process.once('error', reject);
      // 'close', not 'exit': 'exit' can come before the last stdout chunk (the JSON result) is read.
      this.process.once('close', (code, signal) => resolve({ code, signal }));
    });
  }

  /** Resolve when a stdout line matches; reject if the child exits first or time runs out. */
  waitForLine(pattern: RegExp, timeoutMs: number): Promise<void> {
    if (this.lines.some((line) => pattern.test(line))) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(this.failure(`no line matching ${pattern} within ${timeoutMs} ms`)), timeoutMs);
      this.lineWaiters.push({ pattern, resolve: () => { clearTimeout(timer); resolve(); } });
      void this.exited.then(({ code, signal }) => {
        clearTimeout(timer);
        reject(this.failure(`exited (code ${code}, signal ${signal}) before printing a line matching ${pattern}`));
      }, reject);
    });
  }

  /** Wait for exit (code 0) within timeoutMs, then parse the last stdout line as JSON. */
  async result<T>(timeoutMs: number): Promise<T> {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        this.kill();
        reject(this.failure(`did not finish within ${timeoutMs} ms`));
      }, timeoutMs);
    });
    try {
      const { code, signal } = await Promise.race([this.exited, timeout]);
      if (code !== 0) throw this.failure(`exited with code ${code}, signal ${signal}`);
    } finally {
      clearTimeout(timer);
    }
    if (this.partial) this.lines.push(this.partial);
    const last = [...this.lines].reverse().find((line) => line.startsWith('{'));
    if (last === undefined) throw this.failure('printed no JSON result');
    return JSON.parse(last) as T;
  }

  /** The stdout lines so far. */
  get output(): readonly string[] {
    return this.lines;
  }

  /** SIGTERM, and wait for the exit (SIGKILL after timeoutMs). */
  async terminate(timeoutMs = 10_000): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    if (this.process.exitCode !== null || this.process.signalCode !== null) return this.exited;
    this.process.kill('SIGTERM');
    const timer = setTimeout(() => this.kill(), timeoutMs);
    try {
      return await this.exited;
    } finally {
      clearTimeout(timer);
      if (this.partial) this.lines.push(this.partial);
      this.partial = '';
    }
  }

  kill(): void {
    if (this.process.exitCode === null && this.process.signalCode === null) this.process.kill('SIGKILL');
  }

  private failure(what: string): Error {
    const out = this.lines.slice(-5).join('\n');
    return new Error(`${this.name} ${what}\nstdout: ${out}\nstderr: ${this.stderr.slice(-2000)}`);
  }
}

/** The `userfault` command of a build (a directory holding src/cli/main.js; default this one). */
export function userfaultCli(distDir?: string): string {
  return join(distDir ?? join(dirname(fileURLToPath(import.meta.url)), '..'), 'src', 'cli', 'main.js');
}

/**
 * A `userfault` service run with --json (`pages serve`, `serve`), once its
 * log says "listening"; killed if it never does. `args` are node's: flags
 * (say --cpu-prof), the CLI, then its arguments.
 */
export async function startJsonService(name: string, args: readonly string[]): Promise<BenchChild> {
  const child = new BenchChild(name, process.execPath, [...args]);
  try {
    await child.waitForLine(/"event":"listening"/, 30_000);
  } catch (error) {
    child.kill();
    throw error;
  }
  return child;
}

/** The JSON lines a child printed, parsed (every other line left out). */
export function jsonEvents(child: BenchChild): Array<Record<string, unknown>> {
  const events: Array<Record<string, unknown>> = [];
  for (const line of child.output) {
    if (!line.startsWith('{')) continue;
    try {
      events.push(JSON.parse(line) as Record<string, unknown>);
    } catch {
      // Not a log line.
    }
  }
  return events;
}
