// What a migration test starts from: a source VMM running the writer, once
// its first heartbeats are out, and a destination VMM listening on
// 127.0.0.1; and a bounded wait for a condition.
import { join } from 'node:path';
import { kvmSkipReason, spawnVmm, vmmEvents, waitForSocket, type CleanupScope, type SpawnedVmm } from '../vm/helpers.js';

export { kvmSkipReason };

/** A source VMM running the writer (by default 16 MiB of a 64 MiB guest, random pages), once its first heartbeats are out. */
export async function source(
  t: CleanupScope,
  dir: string,
  cmdline = 'workload=writer mem=16 hb=10 pattern=random seed=11',
  options: { mem?: string } = {},
): Promise<{ run: SpawnedVmm; sock: string }> {
  const sock = join(dir, 'source.sock');
  const run = spawnVmm(t, ['run', '--mem', options.mem ?? '64M', '--cmdline', cmdline, '--api-sock', sock]);
  await waitForSocket(sock);
  await run.console.waitFor(/hb 2 /);
  return { run, sock };
}

/** `vm receive` on 127.0.0.1 (any port), its control socket, the URL it listens on and its host and port. */
export async function destination(t: CleanupScope, dir: string, extraArgs: string[] = []): Promise<{ run: SpawnedVmm; sock: string; url: string; host: string; port: number }> {
  const sock = join(dir, 'destination.sock');
  const run = spawnVmm(t, ['receive', '--listen', '127.0.0.1:0', '--api-sock', sock, ...extraArgs]);
  const deadline = Date.now() + 10_000;
  for (;;) {
    const listening = vmmEvents(run.stderr()).find((e) => e.event === 'listening') as { url: string } | undefined;
    if (listening) {
      const [host, port] = listening.url.replace('tcp://', '').split(':') as [string, string];
      return { run, sock, url: listening.url, host, port: Number(port) };
    }
    if (Date.now() > deadline) throw new Error(`vm receive did not listen:\n${run.stderr()}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Poll `check` every 20 ms until it holds; an error naming `what` past the bound. */
export async function until(what: string, check: () => Promise<boolean>, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`no ${what} within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 20));
  }
}
