// The remote section's page server: the real `userfault pages serve` on the
// bench image, in a process of its own (its CPU is not the toucher's or the
// pager's), on loopback. Started once for the section; every run connects
// with its own session id, and the summary the server prints when it stops
// says what each connection of each session did (reads, peak in flight).
import type { PageServerSummary, ServedConnectionSummary } from '../src/pages/index.js';
import { jsonEvents, startJsonService, userfaultCli, type BenchChild } from './child.js';

export class BenchPageServer {
  private constructor(
    private readonly child: BenchChild,
    /** "127.0.0.1:PORT" */
    readonly address: string,
    readonly pid: number,
  ) {}

  get url(): string {
    return `tcp://${this.address}`;
  }

  /** nodeArgs: flags for the server's node (say --cpu-prof, which NODE_OPTIONS does not take). */
  static async start(snapshotPath: string, options: { maxInFlight?: number; nodeArgs?: readonly string[] } = {}): Promise<BenchPageServer> {
    const args = [...(options.nodeArgs ?? []), userfaultCli(), 'pages', 'serve', '--snapshot', snapshotPath, '--listen', '127.0.0.1:0', '--json'];
    if (options.maxInFlight !== undefined) args.push('--max-in-flight', String(options.maxInFlight));
    const child = await startJsonService('pages serve', args);
    const events = jsonEvents(child);
    const listening = events.find((e) => e.event === 'listening') as { address: string } | undefined;
    const serving = events.find((e) => e.event === 'serving') as { pid: number } | undefined;
    if (!listening) {
      child.kill();
      throw new Error('pages serve printed no listening address');
    }
    return new BenchPageServer(child, listening.address, serving?.pid ?? 0);
  }

  /** SIGTERM it, and return its summary: every connection it served. */
  async stop(): Promise<PageServerSummary | undefined> {
    await this.child.terminate();
    const summary = jsonEvents(this.child).find((e) => e.event === 'summary');
    return summary as PageServerSummary | undefined;
  }

  kill(): void {
    this.child.kill();
  }
}

/** The server's connections of one session (a run's RemoteSource or C client). */
export function connectionsOf(summary: PageServerSummary | undefined, session: string | undefined): ServedConnectionSummary[] {
  if (!summary || !session) return [];
  return summary.clients.filter((c) => c.sessionId === session);
}
