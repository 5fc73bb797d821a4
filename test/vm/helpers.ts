// Shared by the VM tests: what the host must offer, and a guest run with its console captured.
import { spawn, type ChildProcess } from 'node:child_process';
import { accessSync, closeSync, constants, mkdtempSync, openSync, readSync, rmSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import assert from 'node:assert/strict';
import { basename, join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { TestContext } from 'node:test';
import { ensureBuiltinGuest } from '../../src/vm/boot/builtin-guest.js';
import { PageKind, SnapshotFile, writeSnapshot } from '../../src/snapshot/index.js';
import { controlRequest } from '../../src/vmm-host/control-api.js';

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

const DIST_SRC = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'src');
const VMM_MAIN = join(DIST_SRC, 'vmm-host', 'vmm-main.js');
export const CLI_MAIN = join(DIST_SRC, 'cli', 'main.js');

/** Where a spawned process registers its kill: a test's context, or a list a hook runs later. */
export interface CleanupScope {
  after(fn: () => void): unknown;
}

/** A CleanupScope for before() hooks: run() does what was registered. */
export function cleanupList(): CleanupScope & { run(): void } {
  const fns: (() => void)[] = [];
  return { after: (fn) => fns.push(fn), run: () => fns.splice(0).forEach((fn) => fn()) };
}

export interface SpawnedVmm {
  child: ChildProcess;
  console: ConsoleCapture;
  stderr: () => string;
  exit: Promise<number | null>;
}

export interface SpawnOptions {
  /** Run it inside this network namespace (`ip netns exec NS`, which execs it: the pid is the VMM's). */
  netns?: string;
}

/** A VMM in a child process (`vmm-main.js ARGS`); its console on `console`, its `vmm: {json}` lines in stderr. */
export function spawnVmm(t: CleanupScope, args: string[], options: SpawnOptions = {}): SpawnedVmm {
  return spawnNode(t, [VMM_MAIN, ...args], options);
}

/** `userfault ARGS` in a child process. */
export function spawnCli(t: CleanupScope, args: string[]): SpawnedVmm {
  return spawnNode(t, [CLI_MAIN, ...args]);
}

/** The `vmm: {json}` events a VMM process printed on stderr. */
export function vmmEvents(stderr: string): { event: string; [key: string]: unknown }[] {
  return [...stderr.matchAll(/^vmm: (\{.*\})$/gm)].map((m) => JSON.parse(m[1]!) as { event: string });
}

/** Flip one byte inside the `which` stored (data) page of a snapshot, so only that page's CRC fails. */
export async function corruptStoredPage(path: string, which: 'first' | 'last' = 'last'): Promise<{ imageOffset: number }> {
  const file = await SnapshotFile.open(path);
  try {
    const { kinds, dataIndexes } = file.pageTable;
    let page = -1;
    for (let i = 0; i < kinds.length; i++) {
      if (kinds[i] !== PageKind.data) continue;
      page = i;
      if (which === 'first') break;
    }
    if (page < 0) throw new Error(`${path} stores no page`);
    const fileOffset = file.header.data.offset + dataIndexes[page]! * file.pageSize + 100;
    const fd = openSync(path, 'r+');
    try {
      const byte = Buffer.alloc(1);
      readSync(fd, byte, 0, 1, fileOffset);
      byte[0] ^= 0xff;
      writeSync(fd, byte, 0, 1, fileOffset);
    } finally {
      closeSync(fd);
    }
    return { imageOffset: page * file.pageSize };
  } finally {
    await file.close();
  }
}

function spawnNode(t: CleanupScope, args: string[], options: SpawnOptions = {}): SpawnedVmm {
  const [command, argv] = options.netns === undefined ? [process.execPath, args] : ['ip', ['netns', 'exec', options.netns, process.execPath, ...args]];
  const child = spawn(command, argv, { stdio: ['ignore', 'pipe', 'pipe'] });
  const console = new ConsoleCapture();
  let stderr = '';
  child.stdout!.on('data', (c: Buffer) => console.append(c.toString('latin1')));
  child.stderr!.on('data', (c: Buffer) => { stderr += c.toString('utf8'); });
  // 'close', not 'exit': by then every byte of stdout has been read (a console's last lines arrive after 'exit').
  const exit = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)));
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

/**
 * Copy a VM snapshot with its metadata's VM state changed by `change` (which
 * edits the JSON in place or returns a replacement): a real snapshot with one
 * thing wrong in it.
 */
export async function rewriteVmSnapshot(src: string, dst: string, change: (state: any) => unknown): Promise<void> { // eslint-disable-line @typescript-eslint/no-explicit-any
  const file = await SnapshotFile.open(src);
  try {
    const image = new Uint8Array(file.imageSizeBytes);
    await file.readPages(0, file.imageSizeBytes, image);
    const metadata = JSON.parse(Buffer.from(file.metadata).toString('utf8')) as { kind: string; state: unknown };
    const replaced = change(metadata.state);
    if (replaced !== undefined) metadata.state = replaced;
    await writeSnapshot(dst, {
      regions: file.regions.map((r) => ({ imageOffset: r.imageOffset, lengthBytes: r.lengthBytes, guestPhysAddress: r.guestPhysAddress, name: r.name })),
      imageSizeBytes: file.imageSizeBytes,
      content: image,
      metadata: Buffer.from(JSON.stringify(metadata), 'utf8'),
    });
  } finally {
    await file.close();
  }
}

/**
 * Boot the writer in a VMM process, snapshot it to `snapshotPath` through its
 * control socket once `hb 3` is out, stop it; the last heartbeat it printed
 * (a restore's guest must go on from the next one).
 */
export async function snapshotRunningWriter(snapshotPath: string, cmdline = 'workload=writer mem=16 hb=10 pattern=random seed=3', mem = '64M'): Promise<number> {
  const sock = join(dirname(snapshotPath), `${basename(snapshotPath)}.run.sock`);
  const cleanup = cleanupList();
  const run = spawnVmm(cleanup, ['run', '--mem', mem, '--cmdline', cmdline, '--api-sock', sock]);
  try {
    await waitForSocket(sock);
    await run.console.waitFor(/hb 3 [^\n]*\n/);
    const created = await controlRequest(sock, 'PUT', '/snapshot/create', { snapshot_path: snapshotPath });
    if (created.status !== 200) throw new Error(`the snapshot was refused (HTTP ${created.status}): ${JSON.stringify(created.body)}`);
    await controlRequest(sock, 'PUT', '/actions', { action_type: 'Stop' });
    const code = await run.exit;
    if (code !== 0) throw new Error(`the VMM exited ${code}:\n${run.stderr()}`);
    return run.console.heartbeats().at(-1)!;
  } finally {
    cleanup.run();
  }
}

/** A restored guest's heartbeats go on from the last one saved: the next first, then no gap and no repeat. */
export function assertHeartbeatContinues(heartbeats: number[], last: number, text: string): void {
  assert.ok(heartbeats.length > 0, `no heartbeat after the restore:\n${text}`);
  assert.equal(heartbeats[0], last + 1, `the first heartbeat after the restore follows the last one saved:\n${text}`);
  assert.deepEqual(heartbeats, heartbeats.map((_, i) => last + 1 + i), `the heartbeat continues from ${last}, no gap and no repeat:\n${text}`);
}
