// The destination's post-copy page source, over real migration connections on
// loopback TCP: every page is checked against the CRC32C the source computed
// for it before a byte reaches the pager (a page altered by a relay that fixes
// the frame checksum is refused naming it, its read's target untouched, and
// the read is asked again on the next connection); a READ's reply is matched
// by the connection, as every request on a framed connection is (a reply to a
// cancelled read is dropped, one to no request ends the connection).
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { after, describe, test } from 'node:test';
import { MigrationPageSource } from '../../src/migrate/migration-page-source.js';
import { PageBitmap } from '../../src/pager/page-bitmap.js';
import { PageDigestTable } from '../../src/migrate/page-digests.js';
import { MigrationConnection, type AnyMessage } from '../../src/migrate/transport/migration-connection.js';
import { FramedConnection } from '../../src/transport/index.js';
import { crc32c } from '../../src/checksum/crc32c.js';
import { MigrationPageChecksumError } from '../../src/migrate/errors.js';
import { DEFAULT_MAX_PAYLOAD_BYTES, MAX_PROTOCOL_VERSION, ProtocolError, migrationFrameChecksumOf } from '../../src/protocol/index.js';
import { until } from '../helpers/waiting.js';

const PAGE = 4096;
const PAGES = 16;

const servers: Server[] = [];
const sockets: Socket[] = [];
after(() => {
  for (const socket of sockets) socket.destroy();
  for (const server of servers) server.close();
});

interface Link {
  /** The destination's end, as channels.ts makes it: CHECKED_PAGES, PONG and an ERROR on a pending id are replies. */
  destination: MigrationConnection;
  /** The source's end: what the test answers with. */
  source: MigrationConnection;
  /** READs the source end received, in order. */
  reads: Array<{ offset: number; lengthBytes: number; requestId: number }>;
}

/** A migration connection over loopback TCP, both ends real, as they are once their HELLOs agreed. */
async function link(): Promise<Link> {
  const server = createServer();
  servers.push(server);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
  const accepted = once(server, 'connection') as Promise<[Socket]>;
  const client = connect({ host: '127.0.0.1', port: (server.address() as { port: number }).port });
  await once(client, 'connect');
  const [socket] = await accepted;
  sockets.push(client, socket);
  const destination: MigrationConnection = new MigrationConnection(socket, 'test destination', {
    isReply: (message, requestId) => message.type === 'checked-pages' || message.type === 'pong' || (message.type === 'error' && requestId !== 0 && destination.isPending(requestId)),
  });
  const source = new MigrationConnection(client, 'test source');
  // What both ends set once their HELLOs agreed (transport/channels.ts).
  for (const end of [destination, source]) {
    end.maxPayloadBytes = DEFAULT_MAX_PAYLOAD_BYTES;
    end.frameChecksum = migrationFrameChecksumOf(MAX_PROTOCOL_VERSION);
  }
  const reads: Link['reads'] = [];
  source.on('message', (message: AnyMessage, requestId: number) => {
    if (message.type === 'read') reads.push({ offset: message.offset, lengthBytes: message.lengthBytes, requestId });
  });
  return { destination, source, reads };
}

/**
 * Answer with the frame checksum computed over the bytes as they are: what a
 * relay that alters a page and fixes the frame's CRC sends (a derived CRC
 * would not match the altered bytes, and the frame would fail first).
 */
function sendRecomputed(connection: MigrationConnection, message: AnyMessage, requestId: number): Promise<void> {
  return FramedConnection.prototype.send.call(connection, message, requestId, undefined);
}

function pageOf(value: number): Uint8Array {
  return new Uint8Array(PAGE).fill(value);
}

describe('the post-copy page source', () => {
  test('a demanded page whose bytes do not match its checksum ends the connection naming it, the read\'s target untouched; asked again on the next connection, the right page is taken', async () => {
    const digests = new PageDigestTable(PAGES, PAGE);
    const source = new MigrationPageSource(PAGES * PAGE, PAGE, new PageBitmap(PAGES), digests, 'test');
    const first = await link();
    source.attach(first.destination, first.destination);
    const target = new Uint8Array(PAGE);
    const read = source.read(3 * PAGE, PAGE, target);
    await until('the READ', () => first.reads.length === 1);
    assert.deepEqual({ offset: first.reads[0]!.offset, lengthBytes: first.reads[0]!.lengthBytes }, { offset: 3 * PAGE, lengthBytes: PAGE });
    const good = pageOf(7);
    const altered = pageOf(7);
    altered[100] = 8;
    const ended = once(first.destination, 'end');
    await sendRecomputed(first.source, { type: 'checked-pages', offset: 3 * PAGE, checksums: Uint32Array.of(crc32c(good)), data: altered }, first.reads[0]!.requestId);
    const [error] = (await ended) as [Error | undefined];
    assert.ok(error instanceof MigrationPageChecksumError && error.page === 3, `the connection ended naming page 3: ${error?.message}`);
    assert.ok(target.every((byte) => byte === 0), 'nothing of the altered page reached the target');
    assert.equal(digests.crcOf(3), undefined, 'not recorded as installed');
    assert.equal(source.outstandingReads, 1, 'the read still waits: a cut is not a failed read');

    // The source reconnects: the READ goes again on the new connection and its right answer is taken.
    source.connectionLost(error);
    const second = await link();
    source.attach(second.destination, second.destination);
    await until('the READ sent again', () => second.reads.length === 1);
    await second.source.send({ type: 'checked-pages', offset: 3 * PAGE, checksums: Uint32Array.of(crc32c(good)), data: good }, second.reads[0]!.requestId);
    await read;
    assert.deepEqual(target, good);
    assert.equal(digests.crcOf(3), crc32c(good));
    source.close();
  });

  test('the answer to a cancelled read is dropped, and a CHECKED_PAGES that answers no request ends the connection as unsolicited', async () => {
    const source = new MigrationPageSource(PAGES * PAGE, PAGE, new PageBitmap(PAGES), new PageDigestTable(PAGES, PAGE), 'test');
    const { destination, source: sourceEnd, reads } = await link();
    source.attach(destination, destination);
    const controller = new AbortController();
    const cancelled = source.read(5 * PAGE, PAGE, new Uint8Array(PAGE), { signal: controller.signal, priority: 'background' });
    await until('the READ', () => reads.length === 1);
    controller.abort();
    await assert.rejects(cancelled);
    const page = pageOf(5);
    await sourceEnd.send({ type: 'checked-pages', offset: 5 * PAGE, checksums: Uint32Array.of(crc32c(page)), data: page }, reads[0]!.requestId);
    // A read asked after it is answered on the same connection: the late answer above was dropped, not taken for it.
    const target = new Uint8Array(PAGE);
    const later = source.read(6 * PAGE, PAGE, target);
    await until('the second READ', () => reads.length === 2);
    const six = pageOf(6);
    await sourceEnd.send({ type: 'checked-pages', offset: 6 * PAGE, checksums: Uint32Array.of(crc32c(six)), data: six }, reads[1]!.requestId);
    await later;
    assert.deepEqual(target, six);
    assert.equal(destination.isEnded, false);

    const ended = once(destination, 'end');
    await sourceEnd.send({ type: 'checked-pages', offset: 7 * PAGE, checksums: Uint32Array.of(crc32c(six)), data: six }, 4242);
    const [error] = (await ended) as [Error | undefined];
    assert.ok(error instanceof ProtocolError && error.code === 'EPROTO_UNSOLICITED', `ended as unsolicited: ${error?.message}`);
    source.close();
  });

  test('a pushed run with one altered page is refused whole, naming that page; nothing of it is handed to the pager', () => {
    const source = new MigrationPageSource(PAGES * PAGE, PAGE, new PageBitmap(PAGES), new PageDigestTable(PAGES, PAGE), 'test');
    const pushed: unknown[] = [];
    source.onPush((pages) => pushed.push(pages));
    const pages = [pageOf(1), pageOf(2), pageOf(3)];
    const checksums = Uint32Array.from(pages.map((p) => crc32c(p)));
    const data = new Uint8Array(3 * PAGE);
    pages.forEach((p, i) => data.set(p, i * PAGE));
    data[PAGE + 5] = 9;
    assert.throws(() => source.pushed({ type: 'mig-push', firstPage: 4, checksums, data }), (error: unknown) => error instanceof MigrationPageChecksumError && error.page === 5);
    assert.equal(pushed.length, 0);
  });
});
