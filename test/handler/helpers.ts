// Shared by the handler tests: the memory files, and child processes (clients
// and CLI servers) that are always killed with SIGKILL when they overstay.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readdirSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { TestContext } from 'node:test';
import { fileURLToPath } from 'node:url';
import { fillPattern } from '../../src/demo/pattern.js';
import { PAGE_SIZE } from '../../src/native.js';
import { writeSnapshot } from '../../src/snapshot/index.js';
import { Userfaultfd } from '../../src/uffd/index.js';
import type { ClientArgs } from '../fixtures/handler-client.js';

/** The memory file: 4 MiB, every 8th page zero (so the snapshot elides them). */
export const FILE_PAGES = 1024;
export const SEED = 7;
export const ZERO_EVERY = 8;

const CLIENT = fileURLToPath(new URL('../fixtures/handler-client.js', import.meta.url));
export const CLI = fileURLToPath(new URL('../../src/cli/main.js', import.meta.url));

/** Why these tests cannot run here (no userfaultfd for this process), or undefined. */
export function uffdSkipReason(): string | undefined {
  try {
    Userfaultfd.probe();
    return undefined;
  } catch (error) {
    return (error as Error).message;
  }
}

export function tempDir(t: TestContext): string {
  const dir = mkdtempSync(join(tmpdir(), 'uf-handler-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** The image as a raw memory file and as a snapshot, in `dir`. */
export async function writeMemoryFiles(dir: string): Promise<{ rawPath: string; snapshotPath: string; image: Uint8Array }> {
  const image = new Uint8Array(FILE_PAGES * PAGE_SIZE);
  fillPattern(image, 0, SEED, ZERO_EVERY);
  const rawPath = join(dir, 'memory.raw');
  const snapshotPath = join(dir, 'memory.snap');
  writeFileSync(rawPath, image);
  await writeSnapshot(snapshotPath, { regions: [{ imageOffset: 0, lengthBytes: image.length, name: 'ram' }], content: image });
  return { rawPath, snapshotPath, image };
}

/** How many userfaultfds this process holds open. */
export function openUffdCount(): number {
  let count = 0;
  for (const fd of readdirSync('/proc/self/fd')) {
    try {
      if (readlinkSync(`/proc/self/fd/${fd}`) === 'anon_inode:[userfaultfd]') count++;
    } catch {
      // Closed while listing (the readdir's own fd).
    }
  }
  return count;
}

export interface Exit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

/** A child process with its output collected line by line, SIGKILLed at its time limit and when the test ends. */
export class ChildRun {
  readonly exit: Promise<Exit>;
  stdout = '';
  stderr = '';
  private waiters: Array<{ test: () => boolean; resolve: () => void }> = [];

  constructor(t: TestContext, readonly child: ChildProcess, readonly name: string, timeoutMs: number) {
    child.stdout!.setEncoding('utf8').on('data', (chunk: string) => {
      this.stdout += chunk;
      this.check();
    });
    child.stderr!.setEncoding('utf8').on('data', (chunk: string) => {
      this.stderr += chunk;
      this.check();
    });
    this.exit = new Promise((resolve) => child.once('exit', (code, signal) => {
      clearTimeout(limit);
      resolve({ code, signal });
      this.check();
    }));
    const limit = setTimeout(() => this.kill(), timeoutMs);
    t.after(() => {
      clearTimeout(limit);
      this.kill();
    });
  }

  get exited(): boolean {
    return this.child.exitCode !== null || this.child.signalCode !== null;
  }

  /** Signals this test sent the child (so a death can be told apart from one the test caused). */
  readonly signalsSent: NodeJS.Signals[] = [];

  kill(signal: NodeJS.Signals = 'SIGKILL'): void {
    if (this.exited) return;
    this.signalsSent.push(signal);
    this.child.kill(signal);
  }

  /** JSON lines printed so far. */
  get events(): Array<Record<string, unknown>> {
    return this.stdout.split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as Record<string, unknown>);
  }

  event(name: string): Record<string, unknown> | undefined {
    return this.events.find((e) => e.event === name);
  }

  /** Resolve when `test` holds; reject after timeoutMs or when the child exits first. */
  waitUntil(test: () => boolean, what: string, timeoutMs = 10_000): Promise<void> {
    if (test()) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const waiter = {
        test,
        resolve: () => {
          clearTimeout(timer);
          resolve();
        },
      };
      const timer = setTimeout(() => {
        this.waiters = this.waiters.filter((w) => w !== waiter);
        reject(new Error(`${this.name}: no ${what} within ${timeoutMs} ms\nstdout:\n${this.stdout}\nstderr:\n${this.stderr}`));
      }, timeoutMs);
      this.waiters.push(waiter);
      void this.exit.then(() => setImmediate(() => {
        if (!this.waiters.includes(waiter)) return;
        this.waiters = this.waiters.filter((w) => w !== waiter);
        clearTimeout(timer);
        if (test()) resolve();
        else reject(new Error(`${this.name} exited before ${what}\nstdout:\n${this.stdout}\nstderr:\n${this.stderr}`));
      }));
    });
  }

  waitForEvent(name: string, timeoutMs = 10_000): Promise<Record<string, unknown>> {
    return this.waitUntil(() => this.event(name) !== undefined, `"${name}" line`, timeoutMs).then(() => this.event(name)!);
  }

  waitForText(pattern: RegExp, stream: 'stdout' | 'stderr' = 'stdout', timeoutMs = 10_000): Promise<RegExpMatchArray> {
    return this.waitUntil(() => pattern.test(this[stream]), `${pattern} on ${stream}`, timeoutMs).then(() => this[stream].match(pattern)!);
  }

  private check(): void {
    const ready = this.waiters.filter((w) => w.test());
    this.waiters = this.waiters.filter((w) => !ready.includes(w));
    for (const w of ready) w.resolve();
  }
}

export type ClientOptions = Omit<ClientArgs, 'seed' | 'zeroEvery'> & Partial<Pick<ClientArgs, 'seed' | 'zeroEvery'>>;

/** Start a client fixture process. */
export function spawnClient(t: TestContext, options: ClientOptions, timeoutMs = 20_000, name = 'client'): ChildRun {
  const args: ClientArgs = { seed: SEED, zeroEvery: ZERO_EVERY, ...options };
  const child = spawn(process.execPath, [CLIENT, JSON.stringify(args)], { stdio: ['pipe', 'pipe', 'pipe'] });
  return new ChildRun(t, child, name, timeoutMs);
}

/** Start `userfault serve` and wait until it listens. */
export async function spawnServe(t: TestContext, args: string[], timeoutMs = 30_000): Promise<ChildRun> {
  const child = spawn(process.execPath, [CLI, 'serve', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  const run = new ChildRun(t, child, 'userfault serve', timeoutMs);
  await run.waitForText(/^serving .* on .*, pid \d+$/m);
  return run;
}
