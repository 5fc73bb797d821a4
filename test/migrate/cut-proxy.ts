// A TCP proxy for migration tests: every connection through it can be cut
// at a chosen moment (both ends destroyed, as a pulled cable looks to the
// processes) or frozen (nothing forwarded, nothing closed: a blackholed link,
// which only a liveness check notices), and the bytes from the source can be
// slowed to a rate, so a post-copy lasts long enough to be cut in the middle.
import { connect, createServer, type Server, type Socket } from 'node:net';

export class CutProxy {
  private readonly pairs = new Set<[Socket, Socket]>();
  /** While frozen: connections accepted but not yet joined to the target (a SYN lost on a dead link). */
  private waiting: Array<{ client: Socket; join: () => void }> = [];
  private frozen = false;
  private readonly flows = new Set<Flow>();
  private constructor(private readonly server: Server, readonly port: number) {}
  /** Connections accepted since the start. */
  accepted = 0;
  /** Every byte each connection's client sent, in order of connections (the source's main connection first). */
  readonly recorded: Buffer[][] = [];

  /**
   * `mainLagMs`: the first connection's bytes from the client (the source's
   * main connection) and its close reach the target that much later, the
   * other connections' at once (what two TCP connections on one link may do).
   */
  static async start(target: { host: string; port: number }, options: { bytesPerSecond?: number; mainLagMs?: number } = {}): Promise<CutProxy> {
    let proxy!: CutProxy;
    const server = createServer((client) => {
      proxy.accepted++;
      const lagMs = proxy.accepted === 1 ? options.mainLagMs ?? 0 : 0;
      const record: Buffer[] = [];
      proxy.recorded.push(record);
      client.on('data', (chunk: Buffer) => record.push(chunk));
      client.pause();
      const join = (): void => {
        if (client.destroyed) return;
        const upstream = connect(target);
        const pair: [Socket, Socket] = [client, upstream];
        proxy.pairs.add(pair);
        const end = (): void => {
          proxy.pairs.delete(pair);
          client.destroy();
          upstream.destroy();
        };
        // A lagging connection's close follows its last bytes.
        client.on('error', end).on('close', lagMs ? () => setTimeout(end, lagMs + 20) : end);
        upstream.on('error', end).on('close', end);
        upstream.on('connect', () => {
          proxy.flow(client, upstream, options.bytesPerSecond, lagMs);
          proxy.flow(upstream, client, undefined);
        });
      };
      if (proxy.frozen) {
        client.on('error', () => client.destroy());
        proxy.waiting.push({ client, join });
      } else join();
    });
    await new Promise<void>((resolve) => server.listen({ host: '127.0.0.1', port: 0 }, () => resolve()));
    const address = server.address();
    proxy = new CutProxy(server, typeof address === 'object' && address ? address.port : 0);
    return proxy;
  }

  get address(): string {
    return `127.0.0.1:${this.port}`;
  }

  /** Cut every connection now; new ones are still taken (a cable plugged back in). */
  cut(): number {
    const n = this.pairs.size;
    for (const [a, b] of [...this.pairs]) {
      a.destroy();
      b.destroy();
    }
    this.pairs.clear();
    return n;
  }

  /** Stop forwarding in both directions without closing anything; new connections get no further than the proxy. */
  freeze(): number {
    this.frozen = true;
    for (const flow of this.flows) flow.from.pause();
    return this.pairs.size;
  }

  /** Forward again: what was held back flows on, connections that waited are joined. */
  thaw(): void {
    this.frozen = false;
    for (const flow of this.flows) if (!flow.pacing) flow.from.resume();
    for (const { join } of this.waiting.splice(0)) join();
  }

  close(): void {
    this.cut();
    for (const { client } of this.waiting.splice(0)) client.destroy();
    this.server.close();
  }

  /** from → to, at most bytesPerSecond (no limit when undefined), respecting the writer's buffer and the freeze. */
  private flow(from: Socket, to: Socket, bytesPerSecond: number | undefined, lagMs = 0): void {
    const flow: Flow = { from, pacing: false };
    this.flows.add(flow);
    from.on('close', () => this.flows.delete(flow));
    const resume = (): void => {
      if (!this.frozen && !flow.pacing && !to.writableNeedDrain) from.resume();
    };
    to.on('drain', resume);
    from.on('data', (chunk: Buffer) => {
      if (lagMs) {
        setTimeout(() => to.destroyed || to.write(chunk), lagMs);
        return;
      }
      const room = to.write(chunk);
      if (bytesPerSecond) {
        flow.pacing = true;
        from.pause();
        setTimeout(() => {
          flow.pacing = false;
          resume();
        }, (chunk.length / bytesPerSecond) * 1000);
      } else if (!room) from.pause();
      if (this.frozen) from.pause();
    });
    if (!this.frozen) from.resume();
  }
}

interface Flow {
  from: Socket;
  /** Paused for its rate, resumed by its own timer. */
  pacing: boolean;
}
