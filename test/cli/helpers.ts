// Running the CLI as a user would: a child process, its output and status.
import { spawnSync, type SpawnSyncOptions } from 'node:child_process';
import assert from 'node:assert/strict';
import { fileURLToPath } from 'node:url';

export const CLI = fileURLToPath(new URL('../../src/cli/main.js', import.meta.url));

export interface CliResult {
  status: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** `userfault ARGS...`, SIGKILLed if it overstays 60 s. */
export function run(...args: string[]): CliResult {
  return runWith({}, ...args);
}

export function runWith(options: SpawnSyncOptions, ...args: string[]): CliResult {
  const result = spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', timeout: 60_000, killSignal: 'SIGKILL', ...options });
  return { status: result.status, signal: result.signal, stdout: String(result.stdout), stderr: String(result.stderr) };
}

/** The one JSON error object a failed --json command prints on stderr. */
export function jsonError(stderr: string): { code: string; message: string; exitStatus: number; [field: string]: unknown } {
  const lines = stderr.trim().split('\n');
  assert.equal(lines.length, 1, `one line on stderr, got:\n${stderr}`);
  const parsed = JSON.parse(lines[0]!) as { error: { code: string; message: string; exitStatus: number } };
  assert.ok(parsed.error, `an {"error": ...} object: ${stderr}`);
  return parsed.error;
}
