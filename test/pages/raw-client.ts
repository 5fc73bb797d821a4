// A page client that speaks the codec over a raw TCP socket and does nothing
// else, so a test can send exactly the bytes it means (hostile ones included)
// and see every frame that comes back.
import { connect, type Socket } from 'node:net';
import {
  DEFAULT_MAX_PAYLOAD_BYTES,
  FrameDecoder,
  decodeMessage,
  encodeMessage,
  type HelloMessage,
  type Message,
  type ProtocolError,
  type RoleName,
} from '../../src/protocol/index.js';

export interface Received {
  requestId: number;
  message: Message;
  /** The frame's flags (which checksum it carried). */
  flags: number;
}

export const TEST_SESSION_ID = Uint8Array.from({ length: 16 }, (_, i) => 0x10 + i);

export function helloMessage(role: RoleName = 'page-client-urgent', fields: Partial<HelloMessage> = {}): HelloMessage {
  return { type: 'hello', version: 2, minVersion: 2, role, sessionId: TEST_SESSION_ID, maxPayloadBytes: DEFAULT_MAX_PAYLOAD_BYTES, features: 0, ...fields };
}

export class RawClient {
  readonly received: Received[] = [];
  decodeError: ProtocolError | Error | undefined;
  readonly closed: Promise<void>;
  private waiters: Array<() => void> = [];
  private nextRequestId = 1;

  private constructor(readonly socket: Socket) {
    const decoder = new FrameDecoder({ maxPayloadBytes: DEFAULT_MAX_PAYLOAD_BYTES });
    socket.on('data', (chunk: Buffer) => {
      const { frames, error } = decoder.push(chunk);
      for (const frame of frames) {
        try {
          this.received.push({ requestId: frame.requestId, message: decodeMessage(frame), flags: frame.flags });
        } catch (e) {
          this.decodeError = e as Error;
        }
      }
      if (error) this.decodeError = error;
      this.wake();
    });
    socket.on('error', () => {});
    this.closed = new Promise((resolve) => socket.once('close', () => {
      this.wake();
      resolve();
    }));
  }

  /** `localAddress` picks the client's own address (127.0.0.2: another peer on loopback). */
  static connect(port: number, host = '127.0.0.1', localAddress?: string): Promise<RawClient> {
    return new Promise((resolve, reject) => {
      const socket = connect({ host, port, localAddress }, () => {
        socket.off('error', reject);
        resolve(new RawClient(socket));
      });
      socket.once('error', reject);
    });
  }

  get isClosed(): boolean {
    return this.socket.destroyed || this.socket.readyState === 'closed';
  }

  newRequestId(): number {
    return this.nextRequestId++;
  }

  send(message: Message, requestId = 0): void {
    this.socket.write(encodeMessage(message, requestId));
  }

  sendBytes(bytes: Uint8Array): void {
    this.socket.write(bytes);
  }

  /** Wait for the first received frame that `match` accepts (or the socket to close: then rejects). */
  async waitFor(match: (r: Received) => boolean, what: string, timeoutMs = 5000): Promise<Received> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const found = this.received.find(match);
      if (found) return found;
      if (this.isClosed) throw new Error(`the connection closed before ${what}; received ${JSON.stringify(this.received.map((r) => r.message.type))}`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`no ${what} within ${timeoutMs} ms`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.waiters.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
  }

  /** Send HELLO and wait for the server's. */
  async hello(role: RoleName = 'page-client-urgent', fields: Partial<HelloMessage> = {}): Promise<HelloMessage> {
    this.send(helloMessage(role, fields), 0);
    const answer = await this.waitFor((r) => r.message.type === 'hello', 'HELLO answer');
    return answer.message as HelloMessage;
  }

  /** Send a request and wait for its reply (any type with its requestId). */
  async request(message: Message, timeoutMs = 5000): Promise<Message> {
    const requestId = this.newRequestId();
    this.send(message, requestId);
    return (await this.waitFor((r) => r.requestId === requestId, `a reply to ${message.type} ${requestId}`, timeoutMs)).message;
  }

  /** Wait until the server closes the connection. */
  async waitClosed(timeoutMs = 5000): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([
      this.closed,
      new Promise((_, reject) => {
        timer = setTimeout(() => reject(new Error(`the server did not close the connection within ${timeoutMs} ms`)), timeoutMs);
      }),
    ]).finally(() => clearTimeout(timer));
  }

  destroy(): void {
    this.socket.destroy();
  }

  private wake(): void {
    const waiters = this.waiters;
    this.waiters = [];
    for (const w of waiters) w();
  }
}
