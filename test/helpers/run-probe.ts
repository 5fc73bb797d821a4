// Run a fixture script in its own process with a hard time limit, so a thread
// stuck in the kernel fails a test instead of hanging the run.
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

export interface ProbeRun {
  status: number | null;
  signal: NodeJS.Signals | null;
  timedOut: boolean;
  lines: Array<Record<string, unknown>>;
  stderr: string;
}

export function runFixture(script: string, args: string[], timeoutMs = 20_000): ProbeRun {
  const path = fileURLToPath(new URL(`../fixtures/${script}`, import.meta.url));
  const started = Date.now();
  const child = spawnSync(process.execPath, [path, ...args], { timeout: timeoutMs, killSignal: 'SIGKILL', encoding: 'utf8' });
  const lines = child.stdout
    .split('\n')
    .filter((line) => line.startsWith('{'))
    .map((line) => JSON.parse(line) as Record<string, unknown>);
  return {
    status: child.status,
    signal: child.signal,
    timedOut: child.signal === 'SIGKILL' && Date.now() - started >= timeoutMs - 50,
    lines,
    stderr: child.stderr,
  };
}

/** The last JSON line a probe printed; fails loudly with its stderr otherwise. */
export function lastLine(run: ProbeRun): Record<string, unknown> {
  const line = run.lines.at(-1);
  if (!line) throw new Error(`the probe printed no result (status ${run.status}, signal ${run.signal}):\n${run.stderr}`);
  return line;
}
