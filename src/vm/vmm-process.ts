// One VMM as a process: boot or restore a guest, serve the control socket,
// put the console on stdout (and a log file), and end with the guest. Both
// `userfault vm run|restore` (src/cli/vm-commands.ts) and the bare
// `node dist/src/vm/vmm-main.js` call runVmmProcess; they differ only in how
// they print its events.
//
// Exit codes: the guest's done status; 0 after a Stop (control socket, Ctrl-C,
// SIGTERM); 70 when the guest failed; 64 for a bad request (bad image, bad
// or corrupted snapshot, bad option).
import { appendFileSync, writeFileSync } from 'node:fs';
import type { Server } from 'node:http';
import { startControlApi } from './control-api.js';
import { VmError } from './errors.js';
import type { LazyRestoreOptions } from './memory/lazy-guest-memory.js';
import type { GuestExitReason } from './vcpu-protocol.js';
import { Vmm, type VmStatus } from './vmm.js';

export interface VmmProcessOptions {
  command: 'run' | 'restore';
  /** run: a multiboot image path or 'builtin'. */
  image?: string;
  memoryBytes?: number;
  vcpuCount?: number;
  cmdline?: string;
  /** restore: the snapshot. */
  snapshotPath?: string;
  /** restore: lazily, with these options (undefined or false: eager). */
  lazy?: LazyRestoreOptions | false;
  apiSock?: string;
  /** A file that gets the console too (truncated first). */
  log?: string;
  /** Where the console goes (default stdout). */
  console?: (bytes: Uint8Array) => void;
  /** Forward this process's stdin (raw, when a TTY) to COM1; Ctrl-C stops the VM. */
  forwardStdin?: boolean;
  /** Every event the process reports (see VmmProcessEvent). */
  report: (event: VmmProcessEvent) => void;
}

export type VmmProcessEvent =
  | {
      event: 'running';
      command: 'run' | 'restore';
      /** ms from the start until the VM was built and loaded (run) or restored (restore), paused. */
      readyMs: number;
      /** ms from the start until every vCPU was running: the time to resume. */
      resumedMs: number;
      restore?: VmStatus['restore'];
      apiSock?: string;
    }
  /** The guest's first console bytes after the start (a restored guest's first line shows it runs). */
  | { event: 'first-output'; ms: number }
  | { event: 'exited'; reason: GuestExitReason; runMs: number; status: VmStatus; exitCode: number }
  | { event: 'error'; name: string; code: string | undefined; message: string; exitCode: number };

export const EXIT_GUEST_FAILED = 70;
export const EXIT_BAD_REQUEST = 64;

export async function runVmmProcess(options: VmmProcessOptions): Promise<number> {
  const started = performance.now();
  const ms = (): number => +(performance.now() - started).toFixed(2);
  const { log } = options;
  if (log) writeFileSync(log, '');
  const out = options.console ?? ((bytes: Uint8Array) => void process.stdout.write(bytes));
  let sawOutput = false;
  const console = (bytes: Uint8Array): void => {
    if (!sawOutput) {
      sawOutput = true;
      options.report({ event: 'first-output', ms: ms() });
    }
    out(bytes);
    if (log) appendFileSync(log, bytes);
  };

  let vmm: Vmm;
  try {
    if (options.command === 'run') {
      vmm = await Vmm.boot({ image: options.image ?? 'builtin', memoryBytes: options.memoryBytes ?? 32 * 2 ** 20, vcpuCount: options.vcpuCount ?? 1, cmdline: options.cmdline ?? 'workload=idle', console });
    } else {
      if (!options.snapshotPath) throw new VmError('restore needs a snapshot path');
      vmm = await Vmm.restore(options.snapshotPath, { console, lazy: options.lazy || undefined });
    }
  } catch (error) {
    return failed(options, error);
  }
  const readyMs = ms();

  let stopRequested = false;
  const stop = (): void => {
    stopRequested = true;
    void vmm.close();
  };
  let server: Server | undefined;
  const cleanups: (() => void)[] = [];
  try {
    if (options.apiSock) server = await startControlApi(vmm, options.apiSock, { onStop: stop });
    await vmm.resume();
  } catch (error) {
    server?.close();
    await vmm.close();
    return failed(options, error);
  }
  options.report({ event: 'running', command: options.command, readyMs, resumedMs: ms(), restore: vmm.status().restore, apiSock: options.apiSock });

  const onSignal = (): void => stop();
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);
  cleanups.push(() => {
    process.off('SIGTERM', onSignal);
    process.off('SIGINT', onSignal);
  });
  if (options.forwardStdin) cleanups.push(forwardStdin(vmm, stop));

  const reason = await vmm.exited;
  for (const cleanup of cleanups) cleanup();
  server?.close();
  await vmm.close();
  const exitCode = reason.type === 'done' ? reason.status : reason.type === 'stopped' || (stopRequested && reason.type !== 'failed') ? 0 : EXIT_GUEST_FAILED;
  options.report({ event: 'exited', reason, runMs: ms(), status: vmm.status(), exitCode });
  return exitCode;
}

function failed(options: VmmProcessOptions, error: unknown): number {
  const e = error as Error & { code?: string };
  const exitCode = e instanceof VmError ? EXIT_BAD_REQUEST : EXIT_GUEST_FAILED;
  options.report({ event: 'error', name: e.name, code: e.code, message: e.message, exitCode });
  return exitCode;
}

/** stdin to COM1 (raw mode on a TTY, so keys go through as typed). Ctrl-C stops the VM. Returns the undo. */
function forwardStdin(vmm: Vmm, stop: () => void): () => void {
  const stdin = process.stdin;
  const raw = stdin.isTTY === true;
  if (raw) stdin.setRawMode(true);
  const onData = (chunk: Buffer): void => {
    if (raw && chunk.includes(0x03)) {
      stop();
      return;
    }
    if (vmm.state !== 'exited') void vmm.sendInput(chunk).catch(() => {});
  };
  stdin.on('data', onData);
  stdin.resume();
  return () => {
    stdin.off('data', onData);
    if (raw) stdin.setRawMode(false);
    stdin.pause();
  };
}
