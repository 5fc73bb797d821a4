// The firecracker section's handler: the real `userfault serve` on a memory
// file, in a process of its own, as a Firecracker host runs it. Started once
// per memory file for the section (a long-lived service that many restores
// connect to); every run is one client, and the `client-gone` line serve
// prints when that client hangs up carries its pager's counters.
import type { PagerMetricsSnapshot } from '../src/pager/index.js';
import { jsonEvents, startJsonService, userfaultCli, type BenchChild } from './child.js';
import type { ThreadCpu } from './handlers/spec.js';
import { processRunNs, threadCpuOf, threadCpuSince } from './handlers/thread-cpu.js';

/** What one client's run cost the serve process. */
export interface ServeRunReport {
  /** The client's pager counters (serve's client-gone line). */
  metrics: PagerMetricsSnapshot;
  /** Pages the region probe copied before the pager started. */
  probePagesCopied: number;
  /** The main thread (the event loop every client's pager runs on), over the run. */
  cpu: ThreadCpu;
  /** Every thread of the process (libuv's file readers too), over the run. */
  processRunNs: number;
}

export class BenchServe {
  private clients = 0;

  private constructor(
    private readonly child: BenchChild,
    readonly socketPath: string,
    readonly pid: number,
  ) {}

  /**
   * nodeArgs: flags for serve's node (say --cpu-prof --cpu-prof-dir DIR, to profile it).
   * distDir: the build to run (a directory holding src/cli/main.js; default this one).
   */
  static async start(memoryFile: string, socketPath: string, options: { snapshot?: boolean; from?: boolean; pageCache?: boolean; nodeArgs?: readonly string[]; distDir?: string } = {}): Promise<BenchServe> {
    // from: memoryFile is a URL (tcp://HOST:PORT of a page server).
    const memory = options.from ? ['--from', memoryFile] : [options.snapshot ? '--snapshot' : '--memory-file', memoryFile];
    const args = [...(options.nodeArgs ?? []), userfaultCli(options.distDir), 'serve', '--socket', socketPath, ...memory, ...(options.pageCache ? ['--page-cache'] : []), '--json'];
    const child = await startJsonService('userfault serve', args);
    const listening = jsonEvents(child).find((e) => e.event === 'listening') as { pid?: number } | undefined;
    if (!listening?.pid) {
      child.kill();
      throw new Error('userfault serve printed no pid in its listening line');
    }
    return new BenchServe(child, socketPath, listening.pid);
  }

  /**
   * Call before the client connects; the function it returns waits (bounded)
   * for that client's client-gone line and reports what the run cost.
   */
  expectClient(timeoutMs: number): () => Promise<ServeRunReport> {
    const id = ++this.clients;
    const cpuAtStart = threadCpuOf(this.pid, this.pid);
    const runAtStart = processRunNs(this.pid);
    return async () => {
      // The log's JSON puts the event before its fields (src/cli/log.ts).
      const gone = new RegExp(`"event":"client-gone","client":${id},`);
      await this.child.waitForLine(gone, timeoutMs);
      const cpu = threadCpuSince(cpuAtStart, threadCpuOf(this.pid, this.pid));
      const runNs = processRunNs(this.pid) - runAtStart;
      const line = jsonEvents(this.child).find((e) => e.event === 'client-gone' && e.client === id) as
        | { metrics?: PagerMetricsSnapshot; probePagesCopied: number; state: string; endReason?: string; endError?: string }
        | undefined;
      if (!line?.metrics) throw new Error(`serve client ${id} ended without serving (${line?.endReason ?? '?'}: ${line?.endError ?? 'no error'})`);
      if (line.metrics.sourceErrors > 0 || line.metrics.pagesPoisoned > 0) {
        throw new Error(`serve client ${id}: ${line.metrics.sourceErrors} source errors, ${line.metrics.pagesPoisoned} pages poisoned`);
      }
      return { metrics: line.metrics, probePagesCopied: line.probePagesCopied, cpu, processRunNs: runNs };
    };
  }

  /** SIGTERM it (serve prints its summary and, with --cpu-prof, writes its profile), bounded. */
  async stop(): Promise<void> {
    const { code, signal } = await this.child.terminate();
    if (code !== 0) throw new Error(`userfault serve exited with code ${code}, signal ${signal}`);
  }

  kill(): void {
    this.child.kill();
  }
}
