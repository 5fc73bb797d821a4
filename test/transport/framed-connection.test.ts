// The framed-connection layer over real loopback sockets: a call is answered
// by the reply carrying its id, or times out and drops the connection; a
// reply to a request never made is a protocol violation; a peer gone silent
// is noticed within the liveness limit while an idle healthy one is not; a
// payload split over many socket reads lands in place, in the buffer its
// frame was given, and stays the holder's; reading and writing push back.
import assert from 'node:assert/strict';
import { createServer, type Server, type Socket } from 'node:net';
import { after, describe, test } from 'node:test';
import { PAGES_HEADER_BYTES, concatParts, encodeMessageParts, type Message, type ProtocolError } from '../../src/protocol/index.js';
import { FramedConnection, connectForFrames, pageMessageCodec, type ConnectionEndKind, type FramedConnectionOptions } from '../../src/transport/index.js';
import { ConnectionStalledError } from '../../src/net/connection-errors.js';
import { countEventLoopTurns } from '../helpers/event-loop-turns.js';

const servers: Server[] = [];
const sockets: Socket[] = [];
after(() => {
  for (const socket of sockets) socket.destroy();
  for (const server of servers) server.close();
});

/** A listener; each accepted socket goes to `onSocket` (a framed connection, or a raw peer that misbehaves). */
async function listen(onSocket: (socket: Socket) => void): Promise<number> {
  const server = createServer((socket) => {
    sockets.push(socket);
    onSocket(socket);
  });
  servers.push(server);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return (server.address() as { port: number }).port;
}

/** A client connection reading in place (connectForFrames), wrapped on 'connect'. */
function dial(port: number, options: Partial<FramedConnectionOptions<Message>> = {}): Promise<FramedConnection<Message>> {
  return new Promise((resolve, reject) => {
    const socket = connectForFrames({ host: '127.0.0.1', port });
    sockets.push(socket);
    socket.once('error', reject);
    socket.once('connect', () => {
      const connection = new FramedConnection<Message>(socket, { name: 'test client', codec: pageMessageCodec, maxPayloadBytes: 8 << 20, ...options });
      resolve(connection);
    });
  });
}

/** A peer that answers GET_METADATA with METADATA on the request's id. */
function answering(socket: Socket): FramedConnection<Message> {
  const connection = new FramedConnection<Message>(socket, { name: 'test server', codec: pageMessageCodec, maxPayloadBytes: 8 << 20 });
  connection.on('message', (message, requestId) => {
    if (message.type === 'get-metadata') connection.write({ type: 'metadata', offset: message.offset, totalLengthBytes: 100, bytes: new Uint8Array([1, 2, 3]) }, requestId);
  });
  return connection;
}

function ended(connection: FramedConnection<Message>): Promise<{ error: Error | undefined; kind: ConnectionEndKind }> {
  return new Promise((resolve) => connection.once('end', (error, kind) => resolve({ error, kind })));
}

describe('requests and their replies', { timeout: 10_000 }, () => {
  test('a call resolves with the reply that carries its id; concurrent calls each get their own', async () => {
    const port = await listen(answering);
    const client = await dial(port, { isReply: (_message, requestId) => requestId !== 0 });
    const replies = await Promise.all([0, 10, 20].map((offset) => client.call({ type: 'get-metadata', offset, maxLengthBytes: 3 }, { expect: ['metadata'] })));
    assert.deepEqual(replies.map((reply) => reply.type === 'metadata' && reply.offset), [0, 10, 20]);
    assert.equal(client.pendingCount, 0);
    client.destroy();
  });

  test('a call left unanswered times out: it rejects with the role\'s error and the connection is dropped as lost', async () => {
    const port = await listen((socket) => new FramedConnection<Message>(socket, { name: 'mute server', codec: pageMessageCodec }));
    const client = await dial(port, { isReply: (_message, requestId) => requestId !== 0 });
    const end = ended(client);
    const started = performance.now();
    await assert.rejects(
      client.call({ type: 'get-metadata', offset: 0, maxLengthBytes: 3 }, { expect: ['metadata'], timeoutMs: 200, timeoutError: () => new Error('no METADATA in time') }),
      /no METADATA in time/,
    );
    const tookMs = performance.now() - started;
    assert.ok(tookMs >= 190 && tookMs < 2000, `timed out after ${Math.round(tookMs)} ms`);
    const { error, kind } = await end;
    assert.equal(kind, 'lost');
    assert.match(error!.message, /no METADATA in time/);
  });

  test('a reply to a request never made is a protocol violation: the connection ends and the frame is not handed on', async () => {
    const port = await listen((socket) => {
      // Unasked: a METADATA for request 99.
      socket.write(concatParts(encodeMessageParts({ type: 'metadata', offset: 0, totalLengthBytes: 3, bytes: new Uint8Array(3) }, 99)));
    });
    const client = await dial(port, { isReply: (_message, requestId) => requestId !== 0 });
    let handedOn = false;
    client.on('message', () => (handedOn = true));
    const { error, kind } = await ended(client);
    assert.equal(kind, 'violation');
    assert.equal((error as ProtocolError).code, 'EPROTO_UNSOLICITED');
    assert.match(error!.message, /request 99, which was never made/);
    assert.equal(handedOn, false);
  });

  test('a reply of a type its request does not take is a protocol violation, and the call fails with it', async () => {
    const port = await listen((socket) => {
      const connection = new FramedConnection<Message>(socket, { name: 'wrong server', codec: pageMessageCodec });
      connection.on('message', (_message, requestId) => connection.write({ type: 'pong', data: new Uint8Array(0) }, requestId));
    });
    const client = await dial(port, { isReply: (_message, requestId) => requestId !== 0 });
    await assert.rejects(client.call({ type: 'get-metadata', offset: 0, maxLengthBytes: 3 }, { expect: ['metadata'] }), (error: unknown) => (error as ProtocolError).code === 'EPROTO_MISMATCH');
  });
});

describe('liveness', { timeout: 10_000 }, () => {
  test('a peer that says nothing (not even PONG) is noticed as stalled within the limit', async () => {
    // A raw socket: it reads and never answers.
    const port = await listen((socket) => socket.resume());
    const client = await dial(port);
    const end = ended(client);
    const started = performance.now();
    client.watchLiveness(400);
    const { error, kind } = await end;
    const tookMs = performance.now() - started;
    assert.equal(kind, 'lost');
    assert.ok(error instanceof ConnectionStalledError, String(error));
    assert.ok(tookMs >= 390 && tookMs < 2000, `noticed after ${Math.round(tookMs)} ms`);
  });

  test('an idle peer that answers PINGs is kept: four limits of silence pass without an end', async () => {
    const port = await listen(answering);
    const client = await dial(port);
    let endedWith: Error | undefined | 'not ended' = 'not ended';
    client.on('end', (error) => (endedWith = error));
    client.watchLiveness(200);
    await new Promise((resolve) => setTimeout(resolve, 800));
    assert.equal(endedWith, 'not ended');
    assert.ok(client.bytesReceived > 0, 'PONGs came back');
    client.destroy();
  });
});

describe('receiving in place', { timeout: 10_000 }, () => {
  test('a 1 MiB payload written in 64 pieces arrives in the buffer allocated for its frame, and stays the holder\'s after later frames', async () => {
    const data = new Uint8Array(1 << 20).map((_, i) => (i * 7 + (i >> 10)) & 0xff);
    const frame = concatParts(encodeMessageParts({ type: 'push', offset: 0, data }, 0));
    const second = concatParts(encodeMessageParts({ type: 'push', offset: 4096, data: new Uint8Array(1 << 20).fill(0xee) }, 0));
    const port = await listen(async (socket) => {
      // Each piece its own write, a few ms apart: the reader sees the payload in many reads.
      const pieceBytes = Math.ceil(frame.length / 64);
      for (let at = 0; at < frame.length; at += pieceBytes) {
        socket.write(frame.subarray(at, at + pieceBytes));
        await new Promise((resolve) => setTimeout(resolve, 2));
      }
      socket.write(second);
    });
    let reads = 0;
    const client = await dial(port, { onReceived: () => reads++ });
    const messages: Message[] = [];
    await new Promise<void>((resolve) => client.on('message', (message) => messages.push(message) === 2 && resolve()));
    const [first] = messages;
    assert.equal(first?.type, 'push');
    const received = (first as { data: Uint8Array }).data;
    assert.ok(reads >= 8, `${reads} reads`);
    // The frame's own buffer (its header and the payload's, nothing else): not a scratch chunk, not a concatenation of reads.
    assert.equal(received.buffer.byteLength, PAGES_HEADER_BYTES + data.length);
    assert.deepEqual(received, data, 'the payload arrived whole');
    client.destroy();
  });

  test('with a slice per turn, a bulk stream read in place yields to the event loop between slices', async () => {
    const frameBytes = 16 << 10;
    const count = 256;
    const parts = Array.from({ length: count }, (_, i) => concatParts(encodeMessageParts({ type: 'push', offset: i * frameBytes, data: new Uint8Array(frameBytes) }, 0)));
    const port = await listen((socket) => socket.write(concatParts(parts)));
    const client = await dial(port);
    client.decodeInSlices(64 << 10);
    const turns = countEventLoopTurns();
    const perTurn = new Map<number, number>();
    await new Promise<void>((resolve) => {
      let seen = 0;
      client.on('message', () => {
        perTurn.set(turns.turn, (perTurn.get(turns.turn) ?? 0) + 1);
        if (++seen === count) resolve();
      });
    });
    turns.stop();
    const most = Math.max(...perTurn.values());
    // 64 KiB a turn and reads of at most 32 KiB: a few frames a turn, never the whole 4 MiB burst.
    assert.ok(most <= 8, `${most} frames decoded in one turn`);
    client.destroy();
  });
});

describe('back-pressure', { timeout: 15_000 }, () => {
  test('send() waits while the peer does not read, and resolves once it does', async () => {
    let peer!: Socket;
    const port = await listen((socket) => {
      peer = socket;
      socket.pause();
    });
    const client = await dial(port);
    const chunk = new Uint8Array(1 << 20);
    let blockedAt: number | undefined;
    for (let i = 0; i < 64 && blockedAt === undefined; i++) {
      const sent = client.send({ type: 'push', offset: i * chunk.length, data: chunk });
      const settled = await Promise.race([sent.then(() => true), new Promise((resolve) => setTimeout(() => resolve(false), 100))]);
      if (!settled) {
        blockedAt = i;
        // The peer reads again: the wait ends.
        peer.resume();
        await sent;
      }
    }
    assert.notEqual(blockedAt, undefined, 'a send waited for the kernel\'s buffer');
    client.destroy();
  });

  test('decoding chunks a slice per turn pauses the socket while the backlog is past its bound, and every frame still arrives in order', async () => {
    const frameBytes = 64 << 10;
    const count = 128;
    const accepted = new Promise<FramedConnection<Message>>((resolve) => {
      void listen((socket) => {
        const receiver = new FramedConnection<Message>(socket, { name: 'bulk receiver', codec: pageMessageCodec, maxPayloadBytes: 1 << 20 });
        receiver.decodeInSlices(64 << 10, 1 << 20);
        resolve(receiver);
      }).then((port) => dial(port)).then(async (client) => {
        for (let i = 0; i < count; i++) await client.send({ type: 'push', offset: i * frameBytes, data: new Uint8Array(frameBytes).fill(i & 0xff) });
      });
    });
    const receiver = await accepted;
    const offsets: number[] = [];
    let pausedSeen = false;
    await new Promise<void>((resolve) => {
      receiver.on('message', (message) => {
        if (receiver.socket.isPaused()) pausedSeen = true;
        offsets.push((message as { offset: number }).offset);
        if (offsets.length === count) resolve();
      });
    });
    assert.deepEqual(offsets, Array.from({ length: count }, (_, i) => i * frameBytes));
    assert.ok(pausedSeen, 'the socket was paused while the backlog was past 1 MiB');
    receiver.destroy();
  });
});
