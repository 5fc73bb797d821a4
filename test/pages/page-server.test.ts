import { describe, test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import {
  FrameFlag,
  DEFAULT_SERVER_MAX_PAYLOAD_BYTES,
  MessageType,
  encodeFrame,
  encodeMessage,
  type Message,
} from '../../src/protocol/index.js';
import { openSnapshotPages, startPageServer, ZeroMap, type PageServer, type PageServerOptions, type ServedConnectionSummary } from '../../src/pages/index.js';
import { SnapshotFile } from '../../src/snapshot/index.js';
import { crc32c } from '../../src/checksum/crc32c.js';
import { BufferSource } from '../../src/sources/buffer-source.js';
import { SourceReadError, type PageSource, type ReadOptions } from '../../src/sources/page-source.js';
import { HOSTILE_STREAMS } from '../protocol/fixtures.js';
import {
  GAP_FIRST_PAGE,
  IMAGE_BYTES,
  PAGE,
  PAGE_COUNT,
  isZeroPage,
  spawnPagesServe,
  tempDir,
  writeTestSnapshot,
} from './fixtures.js';
import { RawClient, TEST_SESSION_ID, helloMessage, type Received } from './raw-client.js';
import { countEventLoopTurns } from '../helpers/event-loop-turns.js';

/** A page server over the test snapshot in this process, closed when the test ends. */
async function snapshotServer(t: TestContext, options: Partial<PageServerOptions> = {}): Promise<{ server: PageServer; image: Uint8Array; metadata: Uint8Array; path: string }> {
  const { path, image, metadata } = await writeTestSnapshot(tempDir(t));
  const pages = await openSnapshotPages(path);
  const server = await startPageServer({ source: pages.source, pageSizeBytes: pages.pageSizeBytes, metadata: pages.metadata, zeroMap: pages.zeroMap, imageId: pages.imageId, pageChecksums: pages.pageChecksums, ...options });
  t.after(async () => {
    await server.close();
    await pages.close();
  });
  return { server, image, metadata, path };
}

async function helloClient(t: TestContext, server: PageServer, role: 'page-client-urgent' | 'page-client-bulk' = 'page-client-urgent'): Promise<RawClient> {
  const client = await RawClient.connect(server.address.port);
  t.after(() => client.destroy());
  await client.hello(role);
  return client;
}

function pagesOf(reply: Message): Uint8Array {
  if (reply.type !== 'checked-pages') assert.fail(`expected CHECKED_PAGES, got ${JSON.stringify(reply)}`);
  return reply.data;
}

function errorOf(reply: Message): Extract<Message, { type: 'error' }> {
  if (reply.type !== 'error') assert.fail(`expected ERROR, got ${reply.type}`);
  return reply;
}

/** Resolves with the summary of connection `id` once it is gone. */
function goneSummary(server: PageServer, id: number, timeoutMs = 5000): Promise<ServedConnectionSummary> {
  const known = server.summary().clients.find((c) => c.id === id && c.state === 'closed');
  if (known) return Promise.resolve(known);
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`connection ${id} is not gone within ${timeoutMs} ms`)), timeoutMs);
    const listener = (_client: unknown, summary: ServedConnectionSummary): void => {
      if (summary.id !== id) return;
      clearTimeout(timer);
      server.off('client-gone', listener);
      resolve(summary);
    };
    server.on('client-gone', listener);
  });
}

/** A source whose reads wait until released, counting how many run at once. */
class GatedSource implements PageSource {
  readonly description = 'gated test source';
  running = 0;
  peakRunning = 0;
  readonly started: Array<{ offset: number; length: number; priority: string | undefined; release: () => void; signal: AbortSignal | undefined }> = [];
  constructor(private readonly image: Uint8Array) {}
  get sizeBytes(): number {
    return this.image.length;
  }
  read(offset: number, lengthBytes: number, target: Uint8Array, options?: ReadOptions): Promise<void> {
    this.running++;
    this.peakRunning = Math.max(this.peakRunning, this.running);
    return new Promise((resolve) => {
      this.started.push({
        offset,
        length: lengthBytes,
        priority: options?.priority,
        signal: options?.signal,
        release: () => {
          target.set(this.image.subarray(offset, offset + lengthBytes));
          this.running--;
          resolve();
        },
      });
    });
  }
  async waitStarted(count: number, timeoutMs = 5000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (this.started.length < count) {
      if (Date.now() > deadline) throw new Error(`${this.started.length} reads started, ${count} expected`);
      await new Promise((r) => setTimeout(r, 5));
    }
  }
}

describe('the page server', () => {
  test('HELLO is answered with the page-server role, the client\'s session id, version 2 and the server\'s payload limit', async (t) => {
    const { server } = await snapshotServer(t);
    const client = await RawClient.connect(server.address.port);
    t.after(() => client.destroy());
    const answer = await client.hello('page-client-bulk');
    assert.equal(answer.role, 'page-server');
    assert.equal(answer.version, 2);
    assert.equal(answer.minVersion, 2);
    assert.deepEqual(answer.sessionId, TEST_SESSION_ID);
    assert.equal(answer.maxPayloadBytes, DEFAULT_SERVER_MAX_PAYLOAD_BYTES);
    assert.equal(server.clients[0]!.summary().sessionId, Buffer.from(TEST_SESSION_ID).toString('hex'));
    assert.match(server.url, /^tcp:\/\/127\.0\.0\.1:\d+$/);
  });

  test('frames after the HELLOs carry CRC32C for a version-3 client and CRC32 for a version-2 one; the pages are the same', async (t) => {
    const { server, image } = await snapshotServer(t);
    const replies: Received[] = [];
    for (const version of [3, 2]) {
      const client = await RawClient.connect(server.address.port);
      t.after(() => client.destroy());
      const answer = await client.hello('page-client-urgent', { version, minVersion: 2 });
      assert.equal(answer.version, version);
      assert.equal(client.received[0]!.flags & FrameFlag.crc32c, 0, 'a HELLO is always CRC32');
      await client.request({ type: 'get-info' });
      const requestId = client.newRequestId();
      client.send({ type: 'read', offset: 0, lengthBytes: 8 * 4096, priority: 'demand' }, requestId);
      replies.push(await client.waitFor((r) => r.requestId === requestId, 'the READ reply'));
    }
    const [v3, v2] = replies;
    assert.equal(v3!.flags & FrameFlag.crc32c, FrameFlag.crc32c, 'version 3: CRC32C');
    assert.equal(v2!.flags & FrameFlag.crc32c, 0, 'version 2: CRC32');
    assert.deepEqual(pagesOf(v3!.message), image.subarray(0, 8 * 4096));
    assert.deepEqual(pagesOf(v2!.message), image.subarray(0, 8 * 4096));
  });

  test('INFO describes the image, METADATA returns the snapshot\'s metadata section in chunks, ZERO_MAP marks exactly the zero pages', async (t) => {
    const { server, metadata, path } = await snapshotServer(t);
    const client = await helloClient(t, server);
    const info = await client.request({ type: 'get-info' });
    assert.equal(info.type, 'info');
    const file = await SnapshotFile.open(path);
    const { snapshotImageId } = await import('../../src/pages/index.js');
    const imageId = snapshotImageId(file);
    await file.close();
    assert.deepEqual(info, {
      type: 'info',
      imageSizeBytes: IMAGE_BYTES,
      pageSizeBytes: PAGE,
      hasMetadata: true,
      hasZeroMap: true,
      metadataLengthBytes: metadata.length,
      maxReadBytes: 2 * 1024 * 1024,
      imageId,
      pageChecksum: 'crc32c',
    });

    const chunks: Uint8Array[] = [];
    for (let offset = 0; offset < metadata.length;) {
      const reply = await client.request({ type: 'get-metadata', offset, maxLengthBytes: 16384 });
      assert.equal(reply.type, 'metadata');
      const chunk = reply as Extract<Message, { type: 'metadata' }>;
      assert.equal(chunk.offset, offset);
      assert.equal(chunk.totalLengthBytes, metadata.length);
      assert.ok(chunk.bytes.length > 0 && chunk.bytes.length <= 16384);
      chunks.push(chunk.bytes);
      offset += chunk.bytes.length;
    }
    assert.ok(chunks.length >= 3, 'the metadata took several chunks');
    assert.deepEqual(Buffer.concat(chunks), Buffer.from(metadata));
    const pastEnd = await client.request({ type: 'get-metadata', offset: metadata.length + 1, maxLengthBytes: 10 });
    assert.equal(errorOf(pastEnd).code, 'OUT_OF_RANGE');

    // An unaligned first page and an odd count exercise the bit shifting.
    for (const [firstPage, pageCount] of [[0, PAGE_COUNT], [3, 77], [GAP_FIRST_PAGE - 5, 100]] as const) {
      const reply = await client.request({ type: 'get-zero-map', firstPage, pageCount });
      assert.equal(reply.type, 'zero-map');
      const { bitmap } = reply as Extract<Message, { type: 'zero-map' }>;
      for (let i = 0; i < pageCount; i++) {
        assert.equal((bitmap[i >> 3]! >> (i & 7)) & 1, isZeroPage(firstPage + i) ? 1 : 0, `page ${firstPage + i}`);
      }
    }
    const beyond = await client.request({ type: 'get-zero-map', firstPage: PAGE_COUNT - 1, pageCount: 2 });
    assert.equal(errorOf(beyond).code, 'OUT_OF_RANGE');
  });

  test('READ returns the image\'s bytes; past the end or off the page grid is answered OUT_OF_RANGE and the connection goes on', async (t) => {
    const { server, image } = await snapshotServer(t);
    const client = await helloClient(t, server);
    for (const [page, count] of [[0, 1], [5, 3], [GAP_FIRST_PAGE - 2, 8], [PAGE_COUNT - 512, 512]] as const) {
      const data = pagesOf(await client.request({ type: 'read', offset: page * PAGE, lengthBytes: count * PAGE, priority: 'demand' }));
      assert.deepEqual(Buffer.from(data), Buffer.from(image.subarray(page * PAGE, (page + count) * PAGE)), `pages ${page}+${count}`);
    }
    const past = errorOf(await client.request({ type: 'read', offset: IMAGE_BYTES - PAGE, lengthBytes: 2 * PAGE, priority: 'demand' }));
    assert.equal(past.code, 'OUT_OF_RANGE');
    assert.match(past.text, /past the end of the 4194304-byte image/);
    const far = errorOf(await client.request({ type: 'read', offset: 2 ** 40, lengthBytes: PAGE, priority: 'background' }));
    assert.equal(far.code, 'OUT_OF_RANGE');
    // Still served after the refusals.
    assert.equal(pagesOf(await client.request({ type: 'read', offset: PAGE, lengthBytes: PAGE, priority: 'demand' })).length, PAGE);
    assert.equal(client.isClosed, false);
  });

  test('a server with 64 KiB pages refuses READs off its page grid', async (t) => {
    const image = new Uint8Array(1 << 20).fill(7);
    const server = await startPageServer({ source: new BufferSource(image), pageSizeBytes: 65536 });
    t.after(() => server.close());
    const client = await helloClient(t, server);
    const error = errorOf(await client.request({ type: 'read', offset: 4096, lengthBytes: 65536, priority: 'demand' }));
    assert.equal(error.code, 'OUT_OF_RANGE');
    assert.match(error.text, /off the image's 65536-byte page grid/);
    assert.equal(pagesOf(await client.request({ type: 'read', offset: 65536, lengthBytes: 65536, priority: 'demand' })).length, 65536);
  });

  test('background READs start at most 512 KiB a turn of the event loop, so a demand READ on the urgent connection is read in between; each is answered once', async (t) => {
    const image = new Uint8Array(16 << 20).map((_, i) => (i * 7 + (i >> 12)) & 0xff);
    // A turn counter the event loop advances in every check phase, and the turn each source read started in.
    const turns = countEventLoopTurns();
    t.after(() => turns.stop());
    const startedIn = new Map<number, number>();
    const source: PageSource = {
      sizeBytes: image.length,
      description: 'turn-counting memory',
      read: async (offset, lengthBytes, target, options) => {
        if (options?.priority === 'background') startedIn.set(turns.turn, (startedIn.get(turns.turn) ?? 0) + 1);
        target.set(image.subarray(offset, offset + lengthBytes));
      },
    };
    const server = await startPageServer({ source, maxInFlightPerConnection: 16 });
    t.after(() => server.close());
    const bulk = await helloClient(t, server, 'page-client-bulk');
    const ids: number[] = [];
    for (let i = 0; i < 16; i++) {
      const id = bulk.newRequestId();
      ids.push(id);
      bulk.send({ type: 'read', offset: i * (256 << 10), lengthBytes: 256 << 10, priority: 'background' }, id);
    }
    await bulk.waitFor(() => bulk.received.filter((r) => r.message.type === 'checked-pages').length === 16, '16 CHECKED_PAGES', 10_000);
    const most = Math.max(...startedIn.values());
    assert.ok(most <= 2, `at most two 256 KiB background READs start in one turn, not ${most}`);
    assert.deepEqual(bulk.received.filter((r) => r.message.type === 'checked-pages').map((r) => r.requestId).sort((a, b) => a - b), ids, 'each answered once');
  });

  test('many READs in flight are each answered once, out of order as the source completes them', async (t) => {
    const image = new Uint8Array(64 * PAGE);
    for (let i = 0; i < image.length; i++) image[i] = (i * 7 + (i >> 12)) & 0xff;
    const source = new GatedSource(image);
    const server = await startPageServer({ source, maxInFlightPerConnection: 16 });
    t.after(() => server.close());
    const client = await helloClient(t, server);
    const ids: number[] = [];
    for (let page = 0; page < 16; page++) {
      const id = client.newRequestId();
      ids.push(id);
      client.send({ type: 'read', offset: page * PAGE, lengthBytes: PAGE, priority: 'demand' }, id);
    }
    await source.waitStarted(16);
    // Release last-first: the replies come back in that order.
    for (const read of [...source.started].reverse()) read.release();
    await client.waitFor(() => client.received.filter((r) => r.message.type === 'checked-pages').length === 16, '16 CHECKED_PAGES');
    const replies = client.received.filter((r) => r.message.type === 'checked-pages');
    assert.deepEqual(replies.map((r) => r.requestId), [...ids].reverse());
    for (const { requestId, message } of replies) {
      const page = ids.indexOf(requestId);
      assert.deepEqual(Buffer.from(pagesOf(message)), Buffer.from(image.subarray(page * PAGE, (page + 1) * PAGE)));
    }
    assert.equal(new Set(replies.map((r) => r.requestId)).size, 16, 'one reply each');
  });

  test('backpressure: a connection never has more than maxInFlightPerConnection reads at the source; the rest wait their turn', async (t) => {
    const source = new GatedSource(new Uint8Array(64 * PAGE));
    const server = await startPageServer({ source, maxInFlightPerConnection: 3 });
    t.after(() => server.close());
    const client = await helloClient(t, server);
    for (let page = 0; page < 20; page++) client.send({ type: 'read', offset: page * PAGE, lengthBytes: PAGE, priority: 'background' }, client.newRequestId());
    await source.waitStarted(3);
    await new Promise((r) => setTimeout(r, 100));
    assert.equal(source.started.length, 3, 'no fourth read starts while three run');
    let released = 0;
    while (client.received.filter((r) => r.message.type === 'checked-pages').length < 20) {
      while (released < source.started.length) source.started[released++]!.release();
      await new Promise((r) => setTimeout(r, 2));
    }
    assert.equal(source.peakRunning, 3);
    assert.equal(server.clients[0]!.summary().peakInFlight, 3);
    // The reads carry the priority the client asked for.
    assert.ok(source.started.every((s) => s.priority === 'background'));
  });

  test('CANCEL: a READ cancelled while it runs or waits is answered CANCELLED once, and its source read is aborted', async (t) => {
    const source = new GatedSource(new Uint8Array(64 * PAGE));
    const server = await startPageServer({ source, maxInFlightPerConnection: 1 });
    t.after(() => server.close());
    const client = await helloClient(t, server);
    const running = client.newRequestId();
    const waiting = client.newRequestId();
    client.send({ type: 'read', offset: 0, lengthBytes: PAGE, priority: 'demand' }, running);
    client.send({ type: 'read', offset: PAGE, lengthBytes: PAGE, priority: 'demand' }, waiting);
    await source.waitStarted(1);
    client.send({ type: 'cancel', readRequestId: waiting });
    client.send({ type: 'cancel', readRequestId: running });
    await client.waitFor((r) => r.requestId === running, 'the running read\'s answer');
    await client.waitFor((r) => r.requestId === waiting, 'the waiting read\'s answer');
    assert.equal(source.started[0]!.signal?.aborted, true);
    source.started[0]!.release();
    // A CANCEL of a read already answered, and of one never made, changes nothing.
    client.send({ type: 'cancel', readRequestId: running });
    client.send({ type: 'cancel', readRequestId: 999 });
    const ping = await client.request({ type: 'ping', data: Uint8Array.of(1) });
    assert.equal(ping.type, 'pong');
    const answers = client.received.filter((r) => r.requestId === running || r.requestId === waiting);
    assert.deepEqual(answers.map((r) => [r.requestId, r.message.type, (r.message as { code?: string }).code]).sort(), [
      [running, 'error', 'CANCELLED'],
      [waiting, 'error', 'CANCELLED'],
    ].sort());
    assert.equal(source.started.length, 1, 'the waiting read never reached the source');
    assert.equal(server.clients[0]!.summary().cancelled, 2);
  });

  test('PING is answered with PONG echoing its bytes', async (t) => {
    const { server } = await snapshotServer(t);
    const client = await helloClient(t, server);
    assert.deepEqual(await client.request({ type: 'ping', data: Uint8Array.of(9, 8, 7) }), { type: 'pong', data: Uint8Array.of(9, 8, 7) });
  });

  test('hostile clients are each answered with the right ERROR and dropped alone, while a good client is served throughout', async (t) => {
    const { server, image } = await snapshotServer(t, { helloTimeoutMs: 300 });
    const good = await helloClient(t, server);
    const errors: Array<{ id: number; code: string | undefined }> = [];
    server.on('client-error', (client, error) => errors.push({ id: client.id, code: (error as { code?: string }).code }));

    const cases: Array<{ name: string; act: (c: RawClient) => void; wireCode?: string; reason: string }> = [
      ...HOSTILE_STREAMS.filter((h) => h.decoderCode !== undefined).map((h) => ({
        name: h.name,
        act: (c: RawClient) => c.sendBytes(h.bytes),
        // Before HELLO the server takes small frames only (a HELLO or an ERROR): each of these announces more, so is TOO_LARGE.
        wireCode: 'TOO_LARGE',
        reason: 'protocol-error',
      })),
      { name: 'sixteen zero bytes', act: (c) => c.sendBytes(new Uint8Array(16)), wireCode: 'UNKNOWN_TYPE', reason: 'protocol-error' },
      { name: 'a wrong magic', act: (c) => c.sendBytes(helloWithMagic('NOTUFLT\0')), wireCode: 'BAD_FRAME', reason: 'protocol-error' },
      // A version-1 client would take pages without their checksums: no downgrade.
      { name: 'only version 1', act: (c) => c.send(helloMessage('page-client-urgent', { version: 1, minVersion: 1 })), wireCode: 'UNSUPPORTED_VERSION', reason: 'refused' },
      { name: 'a migration role', act: (c) => c.send(helloMessage('migration-destination')), wireCode: 'WRONG_ROLE', reason: 'refused' },
      { name: 'a READ before HELLO', act: (c) => c.send({ type: 'read', offset: 0, lengthBytes: PAGE, priority: 'demand' }, 1), wireCode: 'UNEXPECTED_MESSAGE', reason: 'protocol-error' },
      { name: 'no HELLO at all', act: () => {}, wireCode: 'UNEXPECTED_MESSAGE', reason: 'timeout' },
      { name: 'a bad CRC after HELLO', act: (c) => {
        c.send(helloMessage());
        const frame = encodeMessage({ type: 'get-info' }, 1);
        frame[12]! ^= 1;
        c.sendBytes(frame);
      }, wireCode: 'BAD_FRAME', reason: 'protocol-error' },
      { name: 'an oversized frame announced after HELLO', act: (c) => {
        c.send(helloMessage());
        c.sendBytes(encodeFrame(MessageType.READ, 1, new Uint8Array(0)).map((b, i) => (i >= 8 && i < 12 ? [0, 0, 0x40, 0][i - 8]! : b)));
      }, wireCode: 'TOO_LARGE', reason: 'protocol-error' },
      { name: 'a malformed READ after HELLO', act: (c) => {
        c.send(helloMessage());
        c.sendBytes(encodeFrame(MessageType.READ, 1, new Uint8Array(15)));
      }, wireCode: 'BAD_REQUEST', reason: 'protocol-error' },
      { name: 'a second HELLO', act: (c) => {
        c.send(helloMessage());
        c.send(helloMessage());
      }, wireCode: 'UNEXPECTED_MESSAGE', reason: 'protocol-error' },
      { name: 'a reply sent to the server', act: (c) => {
        c.send(helloMessage());
        c.send({ type: 'pages', offset: 0, data: new Uint8Array(PAGE) }, 3);
      }, wireCode: 'UNEXPECTED_MESSAGE', reason: 'protocol-error' },
      { name: 'a requestId reused while outstanding', act: (c) => {
        c.send(helloMessage());
        c.send({ type: 'read', offset: 0, lengthBytes: 2 * 1024 * 1024, priority: 'demand' }, 5);
        c.send({ type: 'read', offset: 0, lengthBytes: PAGE, priority: 'demand' }, 5);
      }, wireCode: 'BAD_REQUEST', reason: 'protocol-error' },
    ];

    // Keep the good client reading the whole image while the hostile ones come and go.
    let goodReads = 0;
    let stop = false;
    const reading = (async () => {
      while (!stop) {
        const page = goodReads % PAGE_COUNT;
        const data = pagesOf(await good.request({ type: 'read', offset: page * PAGE, lengthBytes: PAGE, priority: 'demand' }));
        assert.deepEqual(Buffer.from(data), Buffer.from(image.subarray(page * PAGE, (page + 1) * PAGE)));
        goodReads++;
      }
    })();

    for (const hostile of cases) {
      const client = await RawClient.connect(server.address.port);
      t.after(() => client.destroy());
      const id = server.summary().clients.length;
      hostile.act(client);
      await client.waitClosed(3000).catch((error: Error) => {
        throw new Error(`${hostile.name}: ${error.message}`);
      });
      const refusal = client.received.find((r) => r.message.type === 'error' && r.requestId === 0);
      assert.ok(refusal, `${hostile.name}: an ERROR says why`);
      assert.equal((refusal.message as { code: string }).code, hostile.wireCode, `${hostile.name}: ${(refusal.message as { text: string }).text}`);
      const summary = await goneSummary(server, id);
      assert.equal(summary.endReason, hostile.reason, hostile.name);
    }
    stop = true;
    await reading;
    assert.ok(goodReads > 0);
    assert.equal(good.isClosed, false, 'the good client was never dropped');
    assert.ok(errors.length >= cases.length - 1, 'each refusal is logged with its client');
    assert.ok(!errors.some((e) => e.id === 1), 'none of them is the good client\'s');
  });

  test('CHECKED_PAGES carries the snapshot\'s stored checksums (a zero page\'s for zero pages and gaps), not ones computed from the bytes sent', async (t) => {
    const { path, image } = await writeTestSnapshot(tempDir(t));
    const pages = await openSnapshotPages(path);
    // The bytes of page 5 go bad in the server's memory after the snapshot's check: what it sends no longer matches what it stored.
    const source: PageSource = {
      sizeBytes: pages.source.sizeBytes,
      description: 'a source whose page 5 goes bad after its check',
      read: async (offset, length, target) => {
        await pages.source.read(offset, length, target);
        if (offset <= 5 * PAGE && 5 * PAGE < offset + length) target[5 * PAGE - offset + 8]! ^= 0xff;
      },
    };
    const server = await startPageServer({ source, pageSizeBytes: PAGE, pageChecksums: pages.pageChecksums });
    t.after(async () => {
      await server.close();
      await pages.close();
    });
    const client = await helloClient(t, server);
    const file = await SnapshotFile.open(path);
    t.after(() => file.close());
    const zeroPageCrc = crc32c(new Uint8Array(PAGE));
    // Pages 0..7 (page 7 is zero) and 764..771 (768.. is the gap between the regions).
    for (const first of [0, 764]) {
      const reply = await client.request({ type: 'read', offset: first * PAGE, lengthBytes: 8 * PAGE, priority: 'demand' });
      assert.equal(reply.type, 'checked-pages');
      if (reply.type !== 'checked-pages') return;
      for (let i = 0; i < 8; i++) {
        const info = file.pageInfo((first + i) * PAGE);
        const stored = info.type === 'data' ? info.crc32 : zeroPageCrc;
        assert.equal(reply.checksums[i], stored, `page ${first + i} (${info.type}) carries its stored checksum`);
        const actual = crc32c(reply.data.subarray(i * PAGE, (i + 1) * PAGE));
        if (first + i === 5) assert.notEqual(actual, stored, 'the bad page goes out with the checksum it no longer matches: the client will tell');
        else assert.equal(actual, stored);
      }
      if (first === 0) assert.ok(Buffer.from(reply.data.subarray(0, 5 * PAGE)).equals(Buffer.from(image.subarray(0, 5 * PAGE))));
    }
  });

  test('a server over a source that stores no checksums sends CRC32C of the bytes it read', async (t) => {
    const image = new Uint8Array(8 * PAGE).map((_, i) => (i * 13) & 0xff);
    const server = await startPageServer({ source: new BufferSource(image) });
    t.after(() => server.close());
    const client = await helloClient(t, server);
    const info = await client.request({ type: 'get-info' });
    assert.equal(info.type === 'info' && info.pageChecksum, 'crc32c');
    const reply = await client.request({ type: 'read', offset: 2 * PAGE, lengthBytes: 3 * PAGE, priority: 'background' });
    assert.equal(reply.type, 'checked-pages');
    if (reply.type !== 'checked-pages') return;
    assert.deepEqual([...reply.checksums], [2, 3, 4].map((p) => crc32c(image.subarray(p * PAGE, (p + 1) * PAGE))));
  });

  test('a corrupt snapshot page is answered ERROR SOURCE_FAILED, never its bytes; the pages around it are served', async (t) => {
    const { path, image } = await writeTestSnapshot(tempDir(t));
    const file = await SnapshotFile.open(path);
    const info = file.pageInfo(300 * PAGE);
    await file.close();
    assert.equal(info.type, 'data');
    const bytes = readFileSync(path);
    bytes[(info as { fileOffset: number }).fileOffset + 100]! ^= 0xff;
    writeFileSync(path, bytes);
    const pages = await openSnapshotPages(path);
    const server = await startPageServer({ source: pages.source, pageSizeBytes: pages.pageSizeBytes, zeroMap: pages.zeroMap });
    t.after(async () => {
      await server.close();
      await pages.close();
    });
    const client = await helloClient(t, server);
    for (const [page, count] of [[300, 1], [296, 8]] as const) {
      const error = errorOf(await client.request({ type: 'read', offset: page * PAGE, lengthBytes: count * PAGE, priority: 'demand' }));
      assert.equal(error.code, 'SOURCE_FAILED');
      assert.match(error.text, /page 300 .* is corrupt/);
    }
    assert.ok(!client.received.some((r) => r.message.type === 'checked-pages'), 'no bytes of the corrupt page were sent');
    const next = pagesOf(await client.request({ type: 'read', offset: 301 * PAGE, lengthBytes: PAGE, priority: 'demand' }));
    assert.deepEqual(Buffer.from(next), Buffer.from(image.subarray(301 * PAGE, 302 * PAGE)));
    assert.equal(server.clients[0]!.summary().sourceErrors, 2);
  });

  test('a source failure that may pass is answered SOURCE_UNAVAILABLE (retry), a fatal one SOURCE_FAILED', async (t) => {
    let failure: 'transient' | 'fatal' = 'transient';
    const source: PageSource = {
      sizeBytes: 16 * PAGE,
      description: 'failing',
      read: async (offset, length) => {
        throw new SourceReadError(offset, length, 'disk hiccup', { failure });
      },
    };
    const server = await startPageServer({ source });
    t.after(() => server.close());
    const client = await helloClient(t, server);
    assert.equal(errorOf(await client.request({ type: 'read', offset: 0, lengthBytes: PAGE, priority: 'demand' })).code, 'SOURCE_UNAVAILABLE');
    failure = 'fatal';
    assert.equal(errorOf(await client.request({ type: 'read', offset: 0, lengthBytes: PAGE, priority: 'demand' })).code, 'SOURCE_FAILED');
  });

  test('a non-loopback address is refused without allowRemote', async () => {
    const source = new BufferSource(new Uint8Array(PAGE));
    await assert.rejects(startPageServer({ source, host: '0.0.0.0' }), (error: Error & { code?: string }) => {
      assert.equal(error.code, 'EUSAGE');
      assert.match(error.message, /0\.0\.0\.0 is not a loopback address/);
      return true;
    });
  });

  test('close() tells every client SHUTTING_DOWN, ends every connection, and the summary counts each one\'s requests, bytes and errors', async (t) => {
    const { server } = await snapshotServer(t);
    const a = await helloClient(t, server, 'page-client-urgent');
    const b = await helloClient(t, server, 'page-client-bulk');
    await a.request({ type: 'read', offset: 0, lengthBytes: 4 * PAGE, priority: 'demand' });
    await b.request({ type: 'read', offset: 0, lengthBytes: 2 * PAGE, priority: 'background' });
    await b.request({ type: 'read', offset: IMAGE_BYTES, lengthBytes: PAGE, priority: 'background' });
    const summary = await server.close();
    await a.waitClosed();
    await b.waitClosed();
    for (const client of [a, b]) {
      const last = client.received.at(-1)!;
      assert.equal(last.requestId, 0);
      assert.equal((last.message as { code?: string }).code, 'SHUTTING_DOWN');
    }
    assert.equal(summary.totals.clients, 2);
    assert.equal(summary.totals.reads, 2);
    assert.equal(summary.totals.bytesServed, 6 * PAGE);
    const [first, second] = summary.clients;
    assert.deepEqual([first!.role, first!.reads, first!.bytesServed, first!.endReason], ['page-client-urgent', 1, 4 * PAGE, 'server-closed']);
    assert.deepEqual([second!.role, second!.requests, second!.reads, second!.bytesServed, second!.errorsSent], ['page-client-bulk', 2, 1, 2 * PAGE, 2]);
    assert.ok(first!.bytesSent > 4 * PAGE);
  });

  test('a zero map of the wrong size for the image is refused at start', async () => {
    await assert.rejects(startPageServer({ source: new BufferSource(new Uint8Array(8 * PAGE)), zeroMap: new ZeroMap(4, PAGE) }), /covers 4 pages/);
  });
});

function helloWithMagic(magic: string): Uint8Array {
  const frame = encodeMessage(helloMessage(), 0);
  const payload = frame.subarray(16);
  payload.set(new TextEncoder().encode(magic), 0);
  // Re-frame with a correct CRC, so only the magic is wrong.
  return encodeFrame(MessageType.HELLO, 0, payload);
}

describe('userfault pages serve', () => {
  test('prints its real port when asked for port 0, logs each client, and prints a summary on SIGTERM', async (t) => {
    const { path } = await writeTestSnapshot(tempDir(t));
    const { run, port } = await spawnPagesServe(t, ['--snapshot', path, '--listen', '127.0.0.1:0']);
    assert.ok(port > 0);
    assert.match(run.stdout, /^serving snapshot .*vm\.snap: 4194304 bytes, 1024 pages of 4096 \(\d+ zero\), \d+ bytes of metadata, pid \d+$/m);
    assert.match(run.stdout, new RegExp(`^listening on 127\\.0\\.0\\.1:${port}$`, 'm'));
    const client = await RawClient.connect(port);
    t.after(() => client.destroy());
    await client.hello();
    await client.request({ type: 'read', offset: 0, lengthBytes: PAGE, priority: 'demand' });
    await run.waitForText(/^client 1: page-client-urgent, session [0-9a-f]{32}$/m);
    client.destroy();
    await run.waitForText(/^client 1: gone \(hangup\) after [\d.]+ s: 1 requests, 1 reads, 4096 bytes served, 0 errors sent$/m);
    run.kill('SIGTERM');
    assert.deepEqual(await run.exit, { code: 0, signal: null });
    assert.match(run.stdout, /^SIGTERM: closing 0 clients$/m);
    assert.match(run.stdout, /^summary: 1 clients, 1 requests, 1 reads, 4096 bytes served, 0 errors sent, 0 source errors, from snapshot .*vm\.snap on 127\.0\.0\.1:\d+$/m);
  });

  test('--json makes every line a JSON object in pino\'s shape, errors on stderr', async (t) => {
    const { path } = await writeTestSnapshot(tempDir(t));
    const { run, port } = await spawnPagesServe(t, ['--snapshot', path, '--listen', '127.0.0.1:0', '--json']);
    const listening = run.event('listening')!;
    assert.deepEqual([listening.host, listening.port, listening.url], ['127.0.0.1', port, `tcp://127.0.0.1:${port}`]);
    const client = await RawClient.connect(port);
    t.after(() => client.destroy());
    client.sendBytes(new TextEncoder().encode('GET / HTTP/1.1\r\n\r\n'));
    await client.waitClosed();
    await run.waitForEvent('client-gone');
    run.kill('SIGTERM');
    assert.deepEqual(await run.exit, { code: 0, signal: null });
    const lines = run.stdout.trim().split('\n');
    for (const line of lines) assert.doesNotThrow(() => JSON.parse(line), line);
    assert.deepEqual(lines.map((l) => (JSON.parse(l) as { event: string }).event), ['serving', 'listening', 'client-connected', 'client-gone', 'signal', 'summary']);
    for (const line of lines) {
      const { level, time, pid, hostname, msg } = JSON.parse(line) as Record<string, unknown>;
      assert.deepEqual([level, typeof time, pid, typeof hostname, typeof msg], [30, 'number', run.child.pid, 'string', 'string'], line);
    }
    const errors = run.stderr.trim().split('\n').map((l) => JSON.parse(l) as { event: string; level: number; error: { code: string } });
    assert.deepEqual(errors.map((e) => [e.event, e.level, e.error.code]), [['client-error', 50, 'EPROTO_OVERSIZED']]);
    const summary = run.event('summary') as unknown as { totals: { clients: number }; clients: Array<{ endReason: string }> };
    assert.equal(summary.totals.clients, 1);
    assert.equal(summary.clients[0]!.endReason, 'protocol-error');
  });

  test('a non-loopback --listen without --allow-remote is a usage error (64) saying why; with it, the log says so', async (t) => {
    const { path } = await writeTestSnapshot(tempDir(t));
    const { run } = await spawnPagesServe(t, ['--snapshot', path, '--listen', '0.0.0.0:0'], { waitListening: false });
    assert.deepEqual(await run.exit, { code: 64, signal: null });
    assert.match(run.stderr, /0\.0\.0\.0 is not a loopback address: serving pages there lets anyone who can reach it read the VM's memory.*pass --allow-remote .* \[EUSAGE\]$/m);
    const allowed = await spawnPagesServe(t, ['--snapshot', path, '--listen', '0.0.0.0:0', '--allow-remote']);
    assert.match(allowed.run.stdout, /^warning: --allow-remote: serving the VM's memory to the network on 0\.0\.0\.0:\d+, with no authentication or encryption$/m);
    allowed.run.kill('SIGTERM');
    assert.equal((await allowed.run.exit).code, 0);
  });

  test('usage and input failures exit with their sysexits status', async (t) => {
    const dir = tempDir(t);
    const cases: Array<[string[], number, RegExp]> = [
      [['--listen', '127.0.0.1:0'], 64, /--snapshot FILE/],
      [['--snapshot', `${dir}/x.snap`], 64, /--listen HOST:PORT/],
      [['--snapshot', `${dir}/x.snap`, '--listen', 'nowhere'], 64, /not a --listen HOST:PORT address/],
      [['--snapshot', `${dir}/missing.snap`, '--listen', '127.0.0.1:0'], 66, /missing\.snap does not exist \[ENOINPUT\]/],
      [['--snapshot', `${dir}/x.snap`, '--listen', '127.0.0.1:0', '--max-connections', '0'], 64, /--max-connections 0 is not a positive integer/],
      [['--snapshot', `${dir}/x.snap`, '--listen', '127.0.0.1:0', '--max-connections', '8', '--max-connections-per-peer', '9'], 64, /more than --max-connections 8/],
      [['--snapshot', `${dir}/x.snap`, '--listen', '127.0.0.1:0', '--idle-timeout-ms', 'soon'], 64, /--idle-timeout-ms soon/],
      [['--snapshot', `${dir}/x.snap`, '--listen', '127.0.0.1:0', '--max-queued-reply-mib', '2'], 64, /at least 4/],
    ];
    writeFileSync(`${dir}/garbage.snap`, Buffer.alloc(8192, 0x41));
    cases.push([['--snapshot', `${dir}/garbage.snap`, '--listen', '127.0.0.1:0'], 65, /snapshot/i]);
    for (const [args, code, message] of cases) {
      const { run } = await spawnPagesServe(t, args, { waitListening: false });
      assert.equal((await run.exit).code, code, `${args.join(' ')}: ${run.stderr}`);
      assert.match(run.stderr, message);
    }
  });
});
