// A migration connection's liveness: a healthy link whose pings wait behind
// bulk data (a relay that buffers, then forwards slowly) is not taken for a
// dead one; a dead link still is, within its limit; and a send on a
// connection that ended says what ended it.
import assert from 'node:assert/strict';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { after, describe, test } from 'node:test';
import { MigrationConnection, dataCrcsOf, type AnyMessage } from '../../src/migrate/transport/migration-connection.js';
import { crc32cPages } from '../../src/checksum/crc32c.js';
import { ConnectionEndedError, ConnectionStalledError } from '../../src/net/connection-errors.js';

/** A relay that takes everything the client sends at once and forwards it at `bytesPerSecond` (what a buffering middlebox on a slow link does); the way back is immediate. `freeze()` stops both ways. */
class BufferingRelay {
  private frozen = false;
  private constructor(private readonly server: Server, readonly port: number) {}
  static async start(target: number, bytesPerSecond: number): Promise<BufferingRelay> {
    let relay!: BufferingRelay;
    const server = createServer((client) => {
      const upstream = connect({ host: '127.0.0.1', port: target });
      relaySockets.push(client, upstream);
      const queue: Buffer[] = [];
      client.on('data', (chunk: Buffer) => queue.push(chunk));
      const tickMs = 10;
      const timer = setInterval(() => {
        if (relay.frozen) return;
        let budget = (bytesPerSecond * tickMs) / 1000;
        while (budget > 0 && queue.length) {
          const head = queue[0]!;
          const take = Math.min(budget, head.length);
          upstream.write(head.subarray(0, take));
          if (take === head.length) queue.shift();
          else queue[0] = head.subarray(take);
          budget -= take;
        }
      }, tickMs);
      upstream.on('data', (chunk: Buffer) => {
        if (!relay.frozen) client.write(chunk);
      });
      const end = (): void => {
        clearInterval(timer);
        client.destroy();
        upstream.destroy();
      };
      client.on('close', end).on('error', end);
      upstream.on('close', end).on('error', end);
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
    relay = new BufferingRelay(server, (server.address() as { port: number }).port);
    return relay;
  }
  freeze(): void {
    this.frozen = true;
  }
  close(): void {
    this.server.close();
  }
}

const relaySockets: Socket[] = [];

async function pair(): Promise<{ server: Server; port: number; accepted: MigrationConnection[] }> {
  const accepted: MigrationConnection[] = [];
  const server = createServer((socket: Socket) => {
    const framed = new MigrationConnection(socket, `accepted ${accepted.length}`);
    closers.push(() => framed.destroy());
    framed.pageSizeBytes = 4096;
    // As after the HELLOs (which this test skips): frames up to 1 MiB.
    framed.maxPayloadBytes = 1 << 20;
    accepted.push(framed);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
  return { server, port: (server.address() as { port: number }).port, accepted };
}

function dial(port: number, name: string): Promise<MigrationConnection> {
  return new Promise((resolve, reject) => {
    const socket = connect({ host: '127.0.0.1', port }, () => {
      const framed = new MigrationConnection(socket, name);
      framed.maxPayloadBytes = 1 << 20;
      resolve(framed);
    });
    socket.once('error', reject);
  });
}

const closers: Array<() => void> = [];
after(() => {
  for (const close of closers) close();
  for (const socket of relaySockets) socket.destroy();
});

describe('a migration connection\'s liveness', { timeout: 30_000 }, () => {
  test('bulk data queued in a slow buffering relay does not make a healthy main connection look dead: the urgent connection, which nothing queues on, still hears the peer', async () => {
    const { server, port, accepted } = await pair();
    const relay = await BufferingRelay.start(port, 1_000_000);
    closers.push(() => server.close(), () => relay.close());
    const main = await dial(relay.port, 'main');
    const urgent = await dial(port, 'urgent');
    let ended: Error | undefined;
    main.on('end', (error) => (ended = error ?? new Error('closed')));
    main.watchLiveness(1000, { companion: urgent });
    urgent.watchLiveness(1000);
    // 3 MB of bulk frames: at 1 MB/s through the relay, a ping written behind them waits ~3 s.
    const chunk = new Uint8Array(64 << 10);
    for (let i = 0; i < 48; i++) await main.send({ type: 'push', offset: i * chunk.length, data: chunk });
    await new Promise((r) => setTimeout(r, 3000));
    assert.equal(ended, undefined, `the main connection was ended: ${ended?.message}`);
    assert.ok(accepted.length === 2);
    main.destroy();
    urgent.destroy();
  });

  test('a dead path is still noticed within the limit, with the urgent connection dead too', async () => {
    const { server, port } = await pair();
    const relay = await BufferingRelay.start(port, 10_000_000);
    closers.push(() => server.close(), () => relay.close());
    const main = await dial(relay.port, 'main');
    const urgent = await dial(relay.port, 'urgent');
    const ends = [main, urgent].map((s) => new Promise<Error | undefined>((resolve) => s.on('end', resolve)));
    main.watchLiveness(600, { companion: urgent });
    urgent.watchLiveness(600);
    relay.freeze();
    const started = performance.now();
    const [mainEnd, urgentEnd] = await Promise.all(ends);
    const tookMs = performance.now() - started;
    assert.ok(mainEnd instanceof ConnectionStalledError, `main: ${mainEnd?.message}`);
    assert.ok(urgentEnd instanceof ConnectionStalledError, `urgent: ${urgentEnd?.message}`);
    assert.ok(tookMs < 2500, `noticed after ${Math.round(tookMs)} ms`);
  });

  test('a send on a connection a stall ended says it was the stall, not merely "closed"', async () => {
    const { server, port } = await pair();
    const relay = await BufferingRelay.start(port, 10_000_000);
    closers.push(() => server.close(), () => relay.close());
    const main = await dial(relay.port, 'main');
    const ended = new Promise<Error | undefined>((resolve) => main.on('end', resolve));
    main.watchLiveness(300);
    relay.freeze();
    assert.ok((await ended) instanceof ConnectionStalledError);
    await assert.rejects(main.send({ type: 'ping', data: new Uint8Array(0) }), (error: unknown) => error instanceof ConnectionEndedError && /carried nothing for/.test(error.message) && error.cause instanceof ConnectionStalledError);
  });
});

describe('a migration connection\'s frames', { timeout: 10_000 }, () => {
  test('with CRC32C frames, PAGES arrive with each page\'s CRC32C taken by the frame\'s own check (no second pass), equal to the source\'s', async () => {
    const server = createServer();
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const accepted = new Promise<Socket>((resolve) => server.once('connection', resolve));
    const client = connect({ host: '127.0.0.1', port: (server.address() as { port: number }).port });
    const [serverSide] = await Promise.all([accepted, new Promise((resolve) => client.once('connect', resolve))]);
    const sender = new MigrationConnection(client, 'test source');
    const receiver = new MigrationConnection(serverSide, 'test destination');
    sender.frameChecksum = 'crc32c';
    sender.maxPayloadBytes = 4 << 20;
    receiver.maxPayloadBytes = 4 << 20;
    const data = new Uint8Array(6 * 4096).map((_, i) => (i * 31 + (i >> 12)) & 0xff);
    const checksums = crc32cPages(data, 4096);
    const arrived = new Promise<{ message: AnyMessage; dataCrcs: Uint32Array | undefined }>((resolve) => receiver.once('message', (message, _id, frame) => resolve({ message, dataCrcs: dataCrcsOf(frame, message) })));
    await sender.send({ type: 'mig-pages', firstPage: 10, pageCount: 6, round: 1, checksums, data });
    const { message, dataCrcs } = await arrived;
    assert.equal(message.type, 'mig-pages');
    assert.deepEqual(dataCrcs, checksums);
    sender.destroy();
    receiver.destroy();
    server.close();
  });
});
