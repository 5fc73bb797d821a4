// A TCP proxy in front of a real page server that reads the frames going
// through it and tampers with them the way an outside probe did: it flips a
// byte of the pages in READ replies and fixes the frame CRC (so only the
// snapshot's own page checksums can tell), or keeps READs from being served
// (swallowed while PINGs go through; the connection closed on each; answered
// BUSY by the proxy itself). It works at the frame level, for any protocol
// version: a hostile peer kept as a fixture, as Firecracker keeps a malicious
// uffd handler beside its good ones.
import { connect, createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { FrameDecoder, MessageType, encodeFrame, encodeMessage, type Frame } from '../../src/protocol/index.js';

export type TamperMode =
  /** Every frame forwarded as it is. */
  | 'pass'
  /** Byte 8 of each of the first `pagesToFlip` pages of every READ reply flipped, the frame CRC fixed. */
  | 'flip-pages'
  /** READs never reach the server (PINGs and the rest do): a server alive and stuck. */
  | 'swallow-reads'
  /** The connection closed whenever a READ comes. */
  | 'close-on-read'
  /** Every READ answered ERROR BUSY by the proxy. */
  | 'busy';

const PAGE_BYTES = 4096;
const MAX_FRAME_PAYLOAD_BYTES = 64 * 1024 * 1024;

export class TamperProxy {
  mode: TamperMode;
  /** READs seen (swallowed, refused or forwarded). */
  reads = 0;
  /** Pages whose bytes the proxy changed. */
  pagesFlipped = 0;
  private readonly sockets = new Set<Socket>();

  private constructor(private readonly server: Server, private readonly target: { host: string; port: number }, mode: TamperMode, private readonly pagesToFlip: number) {
    this.mode = mode;
    server.on('connection', (client) => this.join(client));
  }

  static async start(target: { host: string; port: number }, mode: TamperMode, options: { pagesToFlip?: number } = {}): Promise<TamperProxy> {
    const server = createServer();
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen({ host: '127.0.0.1', port: 0 }, () => resolve());
    });
    return new TamperProxy(server, target, mode, options.pagesToFlip ?? Infinity);
  }

  get url(): string {
    return `tcp://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
  }

  get port(): number {
    return (this.server.address() as AddressInfo).port;
  }

  async close(): Promise<void> {
    for (const socket of this.sockets) socket.destroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  private join(client: Socket): void {
    const upstream = connect(this.target);
    for (const socket of [client, upstream]) {
      this.sockets.add(socket);
      socket.on('error', () => {});
      socket.on('close', () => {
        this.sockets.delete(socket);
        client.destroy();
        upstream.destroy();
      });
    }
    const fromClient = new FrameDecoder({ maxPayloadBytes: MAX_FRAME_PAYLOAD_BYTES });
    const fromServer = new FrameDecoder({ maxPayloadBytes: MAX_FRAME_PAYLOAD_BYTES });
    client.on('data', (chunk: Buffer) => {
      const { error } = fromClient.push(chunk, (frame) => this.clientFrame(frame, client, upstream));
      if (error) client.destroy();
    });
    upstream.on('data', (chunk: Buffer) => {
      const { error } = fromServer.push(chunk, (frame) => {
        if (!client.destroyed) client.write(this.serverFrame(frame));
      });
      if (error) upstream.destroy();
    });
  }

  private clientFrame(frame: Frame, client: Socket, upstream: Socket): void {
    if (frame.type === MessageType.READ) {
      this.reads++;
      switch (this.mode) {
        case 'swallow-reads':
          return;
        case 'close-on-read':
          client.destroy();
          return;
        case 'busy':
          client.write(encodeMessage({ type: 'error', code: 'BUSY', text: 'the proxy says: busy' }, frame.requestId));
          return;
        default:
          break;
      }
    }
    if (!upstream.destroyed) upstream.write(encodeFrame(frame.type, frame.requestId, frame.payload, frame.flags));
  }

  /** A reply frame as the client gets it: re-encoded, so its CRC fits whatever the payload now holds. */
  private serverFrame(frame: Frame): Uint8Array {
    const payload = Uint8Array.from(frame.payload);
    if (this.mode === 'flip-pages') {
      // PAGES (version 1): the data from byte 16. CHECKED_PAGES: after the u32 count at 12 and the checksums.
      const view = new DataView(payload.buffer);
      const dataStart = frame.type === MessageType.PAGES ? 16
        : frame.type === MessageType.CHECKED_PAGES ? 16 + 4 * view.getUint32(12, true)
        : undefined;
      if (dataStart !== undefined) {
        for (let at = dataStart; at + PAGE_BYTES <= payload.length && this.pagesFlipped < this.pagesToFlip; at += PAGE_BYTES) {
          payload[at + 8]! ^= 0xff;
          this.pagesFlipped++;
        }
      }
    }
    return encodeFrame(frame.type, frame.requestId, payload, frame.flags);
  }
}
