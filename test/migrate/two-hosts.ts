// Two "hosts" on one machine: two network namespaces, each with its own
// network stack, joined by a point-to-point link that can add latency and
// loss and can be blackholed. The link is scripts/netns/impaired-link.py (two
// TUN devices and a userspace wire) because this kernel has no netem; the
// TCP stacks on both sides still see real delay, loss and retransmission.
//
// Namespaces are deleted on every way out: close() (the tests' after hook),
// the process's exit, SIGINT/SIGTERM, and — for a run killed outright — at the
// next start, which removes the namespaces of test processes no longer alive.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { accessSync, constants } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { createInterface } from 'node:readline';

const LINK_SCRIPT = fileURLToPath(new URL('../../../scripts/netns/impaired-link.py', import.meta.url));
const NAME_PREFIX = 'ufmig';
const OWNED = new RegExp(`^${NAME_PREFIX}-[sd](\\d+)-\\d+$`);

/** Why two-host tests cannot run here (not root, no `ip`, no TUN), or undefined when they can. */
export function twoHostsSkipReason(): string | undefined {
  if (process.getuid?.() !== 0) return 'network namespaces need root';
  if (spawnSync('ip', ['netns', 'list']).status !== 0) return '`ip netns` is not available (scripts/setup.sh installs iproute2)';
  if (spawnSync('python3', ['--version']).status !== 0) return 'python3 is not available (scripts/setup.sh installs it)';
  try {
    accessSync('/dev/net/tun', constants.R_OK | constants.W_OK);
  } catch {
    return '/dev/net/tun is not available';
  }
  return undefined;
}

export interface Host {
  /** The namespace's name (`ip netns exec NAME ...`). */
  netns: string;
  /** Its address on the link. */
  address: string;
}

export interface LinkStats {
  forwarded: number;
  dropped: number;
  bytes: number;
  writeErrors: number;
}

let sequence = 0;
const live = new Set<TwoHosts>();

function ip(...args: string[]): void {
  const result = spawnSync('ip', args, { encoding: 'utf8', timeout: 10_000 });
  if (result.status !== 0) throw new Error(`ip ${args.join(' ')}: ${result.stderr.trim() || `exit ${result.status}`}`);
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Namespaces left by test processes that were killed before they could clean up. */
function removeStale(): void {
  const list = spawnSync('ip', ['netns', 'list'], { encoding: 'utf8' }).stdout;
  for (const line of list.split('\n')) {
    const name = line.split(' ')[0]!;
    const m = OWNED.exec(name);
    if (m && !alive(Number(m[1]))) spawnSync('ip', ['netns', 'del', name]);
  }
}

function removeAllSync(): void {
  for (const hosts of live) hosts.closeSync();
}

let hooked = false;
function hookExit(): void {
  if (hooked) return;
  hooked = true;
  process.once('exit', removeAllSync);
  for (const signal of ['SIGINT', 'SIGTERM'] as const) {
    process.once(signal, () => {
      removeAllSync();
      process.exit(128 + (signal === 'SIGINT' ? 2 : 15));
    });
  }
}

export class TwoHosts {
  private closed = false;

  private constructor(
    readonly source: Host,
    readonly destination: Host,
    private readonly link: ChildProcess,
    private readonly lines: AsyncIterator<string>,
  ) {}

  /** Two namespaces and the link between them, `delayMs` each way and `loss` (0..1) per packet. */
  static async create(options: { delayMs?: number; loss?: number } = {}): Promise<TwoHosts> {
    removeStale();
    hookExit();
    const id = `${process.pid}-${sequence++}`;
    const source: Host = { netns: `${NAME_PREFIX}-s${id}`, address: '10.77.0.1' };
    const destination: Host = { netns: `${NAME_PREFIX}-d${id}`, address: '10.77.0.2' };
    // TUN names: at most 15 bytes.
    const tun = { source: `ufs${id}`.slice(0, 15), destination: `ufd${id}`.slice(0, 15) };
    const link = spawn('python3', [LINK_SCRIPT, '--a', tun.source, '--b', tun.destination, '--delay-ms', String(options.delayMs ?? 0), '--loss', String(options.loss ?? 0)], { stdio: ['pipe', 'pipe', 'pipe'] });
    let stderr = '';
    link.stderr!.on('data', (c: Buffer) => { stderr += c.toString(); });
    const lines = createInterface({ input: link.stdout! })[Symbol.asyncIterator]();
    const hosts = new TwoHosts(source, destination, link, lines);
    live.add(hosts);
    try {
      const ready = await Promise.race([
        lines.next(),
        new Promise<never>((_, reject) => setTimeout(() => reject(new Error(`the impaired link did not start: ${stderr}`)), 10_000).unref()),
        new Promise<never>((_, reject) => link.once('exit', (code) => reject(new Error(`the impaired link exited ${code}: ${stderr}`)))),
      ]);
      if (ready.done || !(JSON.parse(ready.value) as { ready?: string[] }).ready) throw new Error(`the impaired link did not start: ${stderr}`);
      for (const [host, device, peer] of [[source, tun.source, destination], [destination, tun.destination, source]] as const) {
        ip('netns', 'add', host.netns);
        ip('link', 'set', device, 'netns', host.netns);
        ip('-n', host.netns, 'addr', 'add', host.address, 'peer', peer.address, 'dev', device);
        ip('-n', host.netns, 'link', 'set', device, 'up');
        ip('-n', host.netns, 'link', 'set', 'lo', 'up');
      }
    } catch (error) {
      hosts.closeSync();
      throw error;
    }
    return hosts;
  }

  /** Change the link's delay (ms, each way) and loss (0..1). */
  async impair(delayMs: number, loss: number): Promise<void> {
    await this.command(`set ${delayMs} ${loss}`);
  }

  /** Drop every packet (on) or none (off) — nothing is closed: a dead link. */
  async blackhole(on: boolean): Promise<void> {
    await this.command(`blackhole ${on ? 'on' : 'off'}`);
  }

  async stats(): Promise<LinkStats> {
    return (await this.command('stats')) as unknown as LinkStats;
  }

  /** Ends the link and deletes both namespaces (the processes in them are the caller's to end). */
  closeSync(): void {
    if (this.closed) return;
    this.closed = true;
    live.delete(this);
    this.link.stdin!.end();
    this.link.kill('SIGKILL');
    for (const host of [this.source, this.destination]) spawnSync('ip', ['netns', 'del', host.netns]);
  }

  private async command(line: string): Promise<Record<string, unknown>> {
    if (this.closed) throw new Error('the link is closed');
    this.link.stdin!.write(`${line}\n`);
    const answer = await this.lines.next();
    if (answer.done) throw new Error(`the impaired link ended before answering ${line}`);
    const parsed = JSON.parse(answer.value) as Record<string, unknown>;
    if (parsed.ok !== true) throw new Error(`the impaired link refused ${line}: ${String(parsed.error)}`);
    return parsed;
  }
}
