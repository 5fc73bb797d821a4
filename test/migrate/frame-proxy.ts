// A TCP proxy for migration tests that sees frames: the page protocol's
// 16-byte header (type u16 at 0, payload length u32 at 8) in both directions,
// forwarded a whole frame at a time, so a fault can be placed exactly before
// or after one frame of the migration (the n-th of a type, on any of the
// session's connections):
//
//   cut-heal     every connection cut at once (as a pulled cable looks to the processes);
//                new ones are taken (the cable back)
//   cut-forever  every connection cut, and every new one reset as it arrives
//   blackhole    nothing forwarded and nothing closed for a while (a dead path only a
//                liveness check notices), then everything held flows on
//   tamper       the frame's last payload byte flipped (inside a page, for a frame of pages)
//                and its frame CRC fixed: a liar the transport's check cannot see
//
// "after" means the frame reached the peer's socket and nothing after it did.
// Frames cannot be seen under TLS-PSK (the bytes are encrypted): there the
// proxy runs raw and the fault fires at a byte offset instead (`afterBytes`).
import { connect, createServer, type Server, type Socket } from 'node:net';
import { crc32 } from 'node:zlib';
import { crc32c } from '../../src/checksum/crc32c.js';
import { FrameFlag } from '../../src/protocol/index.js';

export type Direction = 'to-destination' | 'to-source';
export type Fault = 'cut-heal' | 'cut-forever' | 'blackhole' | 'tamper';

export interface FrameFault {
  direction: Direction;
  /** The frame type that fires the fault; 0 with `afterBytes` (raw mode, TLS). */
  frameType: number;
  /** Raw mode: fire once this many bytes went that way (over all connections); frames are not parsed. */
  afterBytes?: number;
  /** The n-th frame of that type in that direction, over all connections (default 1). */
  occurrence?: number;
  where: 'before' | 'after';
  fault: Fault;
  /** blackhole: how long (default 3000 ms). */
  blackholeMs?: number;
}

const HEADER_BYTES = 16;

interface Pair {
  client: Socket;
  upstream: Socket;
}

export class FrameProxy {
  private readonly pairs = new Set<Pair>();
  private refusing = false;
  /** While set, nothing is forwarded (a blackhole, or the moment between a frame delivered and the cut). */
  private holding = false;
  private readonly held: Array<() => void> = [];
  private seen = 0;
  /** When the fault fired (performance.now()), if it did. */
  firedAt: number | undefined;
  accepted = 0;
  /** Frame types seen in each direction, in order (for a failing test's message). */
  readonly log: string[] = [];

  private constructor(private readonly server: Server, readonly port: number, private readonly fault: FrameFault | undefined) {}

  static async start(target: { host: string; port: number }, fault?: FrameFault): Promise<FrameProxy> {
    let proxy!: FrameProxy;
    const server = createServer((client) => proxy.accept(client, target));
    await new Promise<void>((resolve) => server.listen({ host: '127.0.0.1', port: 0 }, () => resolve()));
    const address = server.address();
    proxy = new FrameProxy(server, typeof address === 'object' && address ? address.port : 0, fault);
    return proxy;
  }

  get address(): string {
    return `127.0.0.1:${this.port}`;
  }

  get fired(): boolean {
    return this.firedAt !== undefined;
  }

  close(): void {
    this.refusing = true;
    this.cutAll();
    this.server.close();
  }

  private accept(client: Socket, target: { host: string; port: number }): void {
    this.accepted++;
    client.on('error', () => client.destroy());
    if (this.refusing) {
      client.resetAndDestroy();
      return;
    }
    const upstream = connect(target);
    const pair: Pair = { client, upstream };
    this.pairs.add(pair);
    const end = (): void => {
      this.pairs.delete(pair);
      client.destroy();
      upstream.destroy();
    };
    client.on('close', end);
    upstream.on('error', end).on('close', end);
    this.relay(client, upstream, 'to-destination');
    this.relay(upstream, client, 'to-source');
  }

  private bytesSeen = 0;

  private relay(from: Socket, to: Socket, direction: Direction): void {
    if (this.fault?.afterBytes !== undefined) {
      from.on('data', (chunk: Buffer) => this.rawChunk(chunk, to, direction));
      return;
    }
    let buffered: Buffer = Buffer.alloc(0);
    from.on('data', (chunk: Buffer) => {
      buffered = buffered.length ? Buffer.concat([buffered, chunk]) : chunk;
      for (;;) {
        if (buffered.length < HEADER_BYTES) return;
        const frameBytes = HEADER_BYTES + buffered.readUInt32LE(8);
        if (buffered.length < frameBytes) return;
        const frame = buffered.subarray(0, frameBytes);
        buffered = buffered.subarray(frameBytes);
        this.frame(frame, to, direction);
      }
    });
  }

  private frame(frame: Buffer, to: Socket, direction: Direction): void {
    const type = frame.readUInt16LE(0);
    const forward = (): void => {
      if (!to.destroyed) to.write(frame);
    };
    if (this.holding) {
      this.held.push(forward);
      return;
    }
    this.log.push(`${direction === 'to-destination' ? '>' : '<'}${type.toString(16)}`);
    const f = this.fault;
    if (!f || this.fired || f.direction !== direction || f.frameType !== type || ++this.seen !== (f.occurrence ?? 1)) {
      forward();
      return;
    }
    this.firedAt = performance.now();
    if (f.fault === 'tamper') {
      const altered = Buffer.from(frame);
      altered[altered.length - 1]! ^= 0x01;
      // The frame's checksum fixed in its own kind (the header's flag says which), so only the page's own check can tell.
      const payload = altered.subarray(HEADER_BYTES);
      altered.writeUInt32LE(altered.readUInt16LE(2) & FrameFlag.crc32c ? crc32c(payload) : crc32(payload), 12);
      if (!to.destroyed) to.write(altered);
      return;
    }
    if (f.where === 'before') {
      if (f.fault === 'blackhole') this.held.push(forward);
      this.apply(f);
      return;
    }
    // After: this frame reaches the peer, nothing behind it does.
    forward();
    this.holding = true;
    setTimeout(() => {
      this.holding = false;
      this.apply(f);
    }, 30);
  }

  /** Raw mode: chunks as they come; the fault fires before the chunk that crosses `afterBytes`. */
  private rawChunk(chunk: Buffer, to: Socket, direction: Direction): void {
    const forward = (): void => {
      if (!to.destroyed) to.write(chunk);
    };
    if (this.holding) {
      this.held.push(forward);
      return;
    }
    const f = this.fault!;
    if (this.fired || f.direction !== direction || (this.bytesSeen += chunk.length) < f.afterBytes!) {
      forward();
      return;
    }
    this.firedAt = performance.now();
    if (f.fault === 'blackhole') this.held.push(forward);
    this.apply(f);
  }

  private apply(f: FrameFault): void {
    if (f.fault === 'blackhole') {
      this.holding = true;
      for (const { client, upstream } of this.pairs) {
        client.pause();
        upstream.pause();
      }
      setTimeout(() => {
        this.holding = false;
        for (const { client, upstream } of this.pairs) {
          client.resume();
          upstream.resume();
        }
        for (const forward of this.held.splice(0)) forward();
      }, f.blackholeMs ?? 3000);
      return;
    }
    this.held.length = 0;
    if (f.fault === 'cut-forever') this.refusing = true;
    this.cutAll();
  }

  private cutAll(): void {
    for (const { client, upstream } of [...this.pairs]) {
      client.destroy();
      upstream.destroy();
    }
    this.pairs.clear();
  }
}
