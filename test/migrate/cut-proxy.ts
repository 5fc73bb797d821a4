// A TCP proxy for migration tests: every connection through it can be cut
// at a chosen moment (both ends destroyed, as a pulled cable looks to the
// processes), and the bytes from the source can be slowed to a rate, so a
// post-copy lasts long enough to be cut in the middle.
import { connect, createServer, type Server, type Socket } from 'node:net';

export class CutProxy {
  private readonly pairs = new Set<[Socket, Socket]>();
  private constructor(private readonly server: Server, readonly port: number) {}
  /** Connections accepted since the start. */
  accepted = 0;
  /** Every byte each connection's client sent, in order of connections (the source's main connection first). */
  readonly recorded: Buffer[][] = [];

  static async start(target: { host: string; port: number }, options: { bytesPerSecond?: number } = {}): Promise<CutProxy> {
    let proxy!: CutProxy;
    const server = createServer((client) => {
      proxy.accepted++;
      const record: Buffer[] = [];
      proxy.recorded.push(record);
      client.on('data', (chunk: Buffer) => record.push(chunk));
      client.pause();
      const upstream = connect(target);
      const pair: [Socket, Socket] = [client, upstream];
      proxy.pairs.add(pair);
      const end = (): void => {
        proxy.pairs.delete(pair);
        client.destroy();
        upstream.destroy();
      };
      client.on('error', end).on('close', end);
      upstream.on('error', end).on('close', end);
      upstream.on('connect', () => {
        pipeSlowly(client, upstream, options.bytesPerSecond);
        upstream.pipe(client);
      });
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

  close(): void {
    this.cut();
    this.server.close();
  }
}

/** from → to, at most bytesPerSecond (no limit when undefined): each chunk written, then reading pauses for its share of a second. */
function pipeSlowly(from: Socket, to: Socket, bytesPerSecond: number | undefined): void {
  if (!bytesPerSecond) {
    from.pipe(to);
    from.resume();
    return;
  }
  from.on('data', (chunk: Buffer) => {
    to.write(chunk);
    from.pause();
    setTimeout(() => from.resume(), (chunk.length / bytesPerSecond) * 1000);
  });
  from.resume();
}
