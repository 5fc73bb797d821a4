// A page server that speaks the codec honestly up to READ and then, per
// connection, answers READs the way its script says: honestly, or with one of
// the lies a broken or hostile server tells. Kept as a fixture beside the real
// server, as Firecracker keeps a malicious uffd handler beside its good ones.
import { createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import {
  FrameDecoder,
  PAGE_SERVICE_VERSION,
  PRE_HELLO_MAX_PAYLOAD_BYTES,
  ProtocolError,
  acceptHello,
  decodeMessage,
  encodeFrame,
  encodeMessage,
  type HelloMessage,
  type Message,
  type RoleName,
  type WireErrorName,
} from '../../src/protocol/index.js';
import { computedPageChecksums } from '../../src/pages/page-checksums.js';

export type ReadBehaviour =
  /** CHECKED_PAGES with the right bytes and checksums. */
  | 'honest'
  /** The right checksums, byte 8 of the first page flipped, and a frame CRC taken over that: only the page checksum can tell. */
  | 'flips-a-byte'
  /** A version-1 PAGES reply (no checksums). */
  | 'unchecked-pages'
  /** ERROR BUSY, every time. */
  | 'busy'
  /** Closes the connection on every READ. */
  | 'closes-on-read'
  /** The right reply frame with one data byte flipped after its CRC was taken. */
  | 'bad-crc'
  /** PAGES one page shorter than asked. */
  | 'wrong-length'
  /** PAGES for the page after the one asked. */
  | 'wrong-offset'
  /** A frame of a type no version defines, with the READ's requestId and a good CRC. */
  | 'unknown-type'
  /** PAGES for a requestId never used. */
  | 'unsolicited'
  /** An INFO where PAGES belongs. */
  | 'wrong-type'
  /** Never answers a READ, nor anything after it (the connection stays up). */
  | 'silent'
  /** Never answers a READ, but answers PINGs: alive, and stuck. */
  | 'stalls-reads';

export interface FakeServerScript {
  /** The image served honestly. */
  image: Uint8Array;
  /** How each connection (in order of arrival, both roles) answers its READs; past the end, the last entry. */
  reads: ReadBehaviour[];
  /** Called before an honest PAGES is sent (a test checks its target is still untouched here). */
  beforeHonestReply?: (offset: number, lengthBytes: number) => void;
  /** Never answer GET_INFO (the connection stays up). */
  ignoreGetInfo?: boolean;
  /** Answer HELLO with this ERROR instead. */
  refuseHello?: WireErrorName;
  /** Send these PUSHes (requestId 0) right after answering GET_INFO on urgent connections. */
  pushes?: Array<{ offset: number; data: Uint8Array }>;
  /** Answer HELLOs as a version-1 page server does (it speaks 1..1 only). */
  version1?: boolean;
}

/** The bytes the lies carry: recognisably not the image. */
export const LIE_BYTE = 0x66;

export class FakePageServer {
  readonly connections: Array<{ role: RoleName | undefined; behaviour: ReadBehaviour; reads: number }> = [];
  private readonly sockets = new Set<Socket>();

  private constructor(private readonly server: Server, private readonly script: FakeServerScript) {
    server.on('connection', (socket) => this.serve(socket));
  }

  static async start(script: FakeServerScript, port = 0): Promise<FakePageServer> {
    const server = createServer();
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen({ host: '127.0.0.1', port }, () => resolve());
    });
    return new FakePageServer(server, script);
  }

  get port(): number {
    return (this.server.address() as AddressInfo).port;
  }

  get url(): string {
    return `tcp://127.0.0.1:${this.port}`;
  }

  async close(): Promise<void> {
    for (const socket of this.sockets) socket.destroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  private serve(socket: Socket): void {
    this.sockets.add(socket);
    socket.on('close', () => this.sockets.delete(socket));
    socket.on('error', () => {});
    const index = this.connections.length;
    const behaviour = this.script.reads[Math.min(index, this.script.reads.length - 1)]!;
    const record = { role: undefined as RoleName | undefined, behaviour, reads: 0 };
    this.connections.push(record);
    const decoder = new FrameDecoder({ maxPayloadBytes: PRE_HELLO_MAX_PAYLOAD_BYTES });
    const send = (message: Message, requestId: number): void => {
      if (!socket.destroyed) socket.write(encodeMessage(message, requestId));
    };
    const image = this.script.image;
    socket.on('data', (chunk: Buffer) => {
      const { error } = decoder.push(chunk, (frame) => {
        const message = decodeMessage(frame);
        const id = frame.requestId;
        switch (message.type) {
          case 'hello': {
            record.role = message.role;
            decoder.maxPayloadBytes = 64 * 1024;
            if (this.script.refuseHello) {
              send({ type: 'error', code: this.script.refuseHello, text: 'this fake refuses you' }, 0);
              socket.end();
              return;
            }
            if (this.script.version1) {
              // What a version-1 server did with any HELLO: negotiate within 1..1.
              try {
                acceptHello(message, { roles: ['page-client-urgent', 'page-client-bulk'], minVersion: 1, maxVersion: 1 });
              } catch (refusal) {
                send({ type: 'error', code: (refusal as ProtocolError).wireCode, text: (refusal as ProtocolError).message }, 0);
                socket.end();
                return;
              }
            }
            const answer: HelloMessage = { ...message, version: PAGE_SERVICE_VERSION, minVersion: PAGE_SERVICE_VERSION, role: 'page-server', maxPayloadBytes: 64 * 1024 };
            send(answer, 0);
            return;
          }
          case 'get-info':
            if (this.script.ignoreGetInfo) return;
            send({ type: 'info', imageSizeBytes: image.length, pageSizeBytes: 4096, hasMetadata: false, hasZeroMap: false, metadataLengthBytes: 0, maxReadBytes: 1 << 21, imageId: new Uint8Array(16), pageChecksum: 'crc32c' }, id);
            if (record.role === 'page-client-urgent') for (const push of this.script.pushes ?? []) send({ type: 'push', offset: push.offset, data: push.data }, 0);
            return;
          case 'read':
            record.reads++;
            this.answerRead(socket, behaviour, id, message.offset, message.lengthBytes);
            return;
          case 'ping':
            if (behaviour === 'silent' && record.reads > 0) return;
            send({ type: 'pong', data: message.data }, id);
            return;
          default:
            return;
        }
      });
      if (error) socket.destroy();
    });
  }

  private answerRead(socket: Socket, behaviour: ReadBehaviour, requestId: number, offset: number, lengthBytes: number): void {
    const lie = new Uint8Array(lengthBytes).fill(LIE_BYTE);
    const write = (bytes: Uint8Array): void => {
      if (!socket.destroyed) socket.write(bytes);
    };
    const data = this.script.image.subarray(offset, offset + lengthBytes);
    const checksums = computedPageChecksums().of(offset, data, 4096);
    switch (behaviour) {
      case 'honest':
        this.script.beforeHonestReply?.(offset, lengthBytes);
        write(encodeMessage({ type: 'checked-pages', offset, checksums, data }, requestId));
        return;
      case 'flips-a-byte': {
        const altered = Uint8Array.from(data);
        altered[8]! ^= 0xff;
        write(encodeMessage({ type: 'checked-pages', offset, checksums, data: altered }, requestId));
        return;
      }
      case 'unchecked-pages':
        write(encodeMessage({ type: 'pages', offset, data }, requestId));
        return;
      case 'busy':
        write(encodeMessage({ type: 'error', code: 'BUSY', text: 'busy, for ever' }, requestId));
        return;
      case 'closes-on-read':
        socket.destroy();
        return;
      case 'bad-crc': {
        const frame = encodeMessage({ type: 'checked-pages', offset, checksums, data }, requestId);
        frame[frame.length - 1]! ^= 0x01;
        write(frame);
        return;
      }
      case 'wrong-length':
        // One page short, or one page long when a page was asked for.
        write(encodeMessage(lengthBytes > 4096
          ? { type: 'checked-pages', offset, checksums: checksums.subarray(1), data: lie.subarray(0, lengthBytes - 4096) }
          : { type: 'checked-pages', offset, checksums: Uint32Array.of(0, 0), data: new Uint8Array(2 * 4096).fill(LIE_BYTE) }, requestId));
        return;
      case 'wrong-offset':
        write(encodeMessage({ type: 'checked-pages', offset: offset + 4096, checksums, data: lie }, requestId));
        return;
      case 'unknown-type':
        write(encodeFrame(0x01ff, requestId, lie));
        return;
      case 'unsolicited':
        write(encodeMessage({ type: 'checked-pages', offset, checksums, data: lie }, requestId + 1000));
        return;
      case 'wrong-type':
        write(encodeMessage({ type: 'info', imageSizeBytes: this.script.image.length, pageSizeBytes: 4096, hasMetadata: false, hasZeroMap: false, metadataLengthBytes: 0, maxReadBytes: 4096, imageId: new Uint8Array(16), pageChecksum: 'crc32c' }, requestId));
        return;
      case 'silent':
      case 'stalls-reads':
        return;
      default: {
        const never: never = behaviour;
        throw new TypeError(`unknown behaviour ${String(never)}`);
      }
    }
  }
}
