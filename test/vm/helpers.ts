// Shared by the VM tests: what the host must offer, and a guest run with its console captured.
import { spawn, type ChildProcess } from 'node:child_process';
import { accessSync, constants, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { TestContext } from 'node:test';
import { ensureBuiltinGuest } from '../../src/vm/boot/builtin-guest.js';

/** Why KVM tests cannot run here, or undefined when they can. */
export function kvmSkipReason(): string | undefined {
  try {
    accessSync('/dev/kvm', constants.R_OK | constants.W_OK);
  } catch {
    return '/dev/kvm is not available to this process';
  }
  const guest = ensureBuiltinGuest();
  return guest.path === undefined ? guest.reason : undefined;
}

export function tempDir(t: TestContext): string {
  const dir = mkdtempSync(join(tmpdir(), 'uf-vm-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** Collects console text; `waitFor` resolves when a pattern shows up. */
export class ConsoleCapture {
  text = '';
  private waiters: { pattern: RegExp; resolve: (m: RegExpMatchArray) => void }[] = [];

  readonly sink = (bytes: Uint8Array): void => this.append(Buffer.from(bytes).toString('latin1'));

  append(chunk: string): void {
    this.text += chunk;
    this.waiters = this.waiters.filter((w) => {
      const m = this.text.match(w.pattern);
      if (m) w.resolve(m);
      return !m;
    });
  }

  waitFor(pattern: RegExp, timeoutMs = 15000): Promise<RegExpMatchArray> {
    const m = this.text.match(pattern);
    if (m) return Promise.resolve(m);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no ${pattern} on the console within ${timeoutMs} ms; got:\n${this.text.slice(-2000)}`)), timeoutMs);
      this.waiters.push({ pattern, resolve: (x) => { clearTimeout(timer); resolve(x); } });
    });
  }

  /** Heartbeat sequence numbers, in order of appearance. */
  heartbeats(): number[] {
    return [...this.text.matchAll(/^hb (\d+) /gm)].map((m) => Number(m[1]));
  }
}

const VMM_MAIN = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'src', 'vm', 'vmm-main.js');

/** A VMM in a child process; its console on `console`, its `vmm:` lines on `events`. */
export function spawnVmm(t: TestContext, args: string[]): { child: ChildProcess; console: ConsoleCapture; stderr: () => string; exit: Promise<number | null> } {
  const child = spawn(process.execPath, [VMM_MAIN, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  const console = new ConsoleCapture();
  let stderr = '';
  child.stdout!.on('data', (c: Buffer) => console.append(c.toString('latin1')));
  child.stderr!.on('data', (c: Buffer) => { stderr += c.toString('utf8'); });
  const exit = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  t.after(() => { if (child.exitCode === null) child.kill('SIGKILL'); });
  return { child, console, stderr: () => stderr, exit };
}

export async function waitForSocket(path: string, timeoutMs = 10000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      accessSync(path);
      return;
    } catch {
      if (Date.now() > deadline) throw new Error(`no control socket at ${path}`);
      await new Promise((r) => setTimeout(r, 20));
    }
  }
}
