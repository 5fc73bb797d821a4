// A page source with network-like latency: each read is a round trip to the
// delay server (bench/c/delay-server.c), then the bytes come from the image in
// memory. Many reads can be outstanding on the one connection.
import { connect, type Socket } from 'node:net';
import { SourceReadError, checkReadRange, type PageSource } from '../../src/sources/page-source.js';

export class DelayedSource implements PageSource {
  readonly sizeBytes: number;
  readonly description: string;
  private nextId = 0;
  private readonly pending = new Map<number, { resolve: () => void; reject: (error: Error) => void }>();
  private received: Buffer = Buffer.alloc(0);

  private constructor(private readonly socket: Socket, private readonly image: Uint8Array) {
    this.sizeBytes = image.length;
    this.description = `delayed image (${socket.remoteAddress ?? 'delay server'})`;
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.on('error', (error) => this.failAll(error));
    socket.on('close', () => this.failAll(new Error('delay server closed the connection')));
  }

  static connect(socketPath: string, image: Uint8Array): Promise<DelayedSource> {
    return new Promise((resolve, reject) => {
      const socket = connect(socketPath);
      socket.once('error', reject);
      socket.once('connect', () => {
        socket.off('error', reject);
        socket.setNoDelay?.(true);
        resolve(new DelayedSource(socket, image));
      });
    });
  }

  read(offset: number, lengthBytes: number, target: Uint8Array): Promise<void> {
    checkReadRange(this, offset, lengthBytes);
    const id = this.nextId++;
    const request = Buffer.alloc(8);
    request.writeBigUInt64LE(BigInt(id));
    return new Promise<void>((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.socket.write(request);
    }).then(
      () => {
        target.set(this.image.subarray(offset, offset + lengthBytes));
      },
      (error: Error) => {
        throw new SourceReadError(offset, lengthBytes, error.message, { cause: error });
      },
    );
  }

  close(): void {
    this.socket.destroy();
  }

  private onData(chunk: Buffer): void {
    this.received = this.received.length ? Buffer.concat([this.received, chunk]) : chunk;
    let at = 0;
    for (; at + 8 <= this.received.length; at += 8) {
      const id = Number(this.received.readBigUInt64LE(at));
      const waiter = this.pending.get(id);
      this.pending.delete(id);
      waiter?.resolve();
    }
    this.received = this.received.subarray(at);
  }

  private failAll(error: Error): void {
    for (const waiter of this.pending.values()) waiter.reject(error);
    this.pending.clear();
  }
}
