import { describe, test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { ImageChangedError, PeerRefusedError, PeerUnavailableError, startPageServer, type PageServer } from '../../src/pages/index.js';
import { ProtocolError } from '../../src/protocol/index.js';
import { SnapshotFile, writeSnapshot } from '../../src/snapshot/index.js';
import { SourceGoneError, SourceReadError, isAbortError, type PageSource, type ReadOptions } from '../../src/sources/page-source.js';
import { RemoteSource, type RemoteSourceOptions } from '../../src/pages/remote-source.js';
import { FakePageServer, LIE_BYTE, type ReadBehaviour } from './fake-page-server.js';
import { IMAGE_BYTES, PAGE, PAGE_COUNT, isZeroPage, spawnPagesServe, tempDir, writeTestSnapshot } from './fixtures.js';

const UNTOUCHED = 0xee;

async function connect(t: TestContext, url: string, options: RemoteSourceOptions = {}): Promise<RemoteSource> {
  const source = await RemoteSource.connect(url, { connectTimeoutMs: 3000, ...options });
  t.after(() => source.close());
  return source;
}

function page(image: Uint8Array, index: number, count = 1): Buffer {
  return Buffer.from(image.subarray(index * PAGE, (index + count) * PAGE));
}

/** Resolves after `ms`; for bounding waits, never for ordering. */
const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** Reads of background priority wait until released; demand reads are served at once. */
class BulkGate implements PageSource {
  readonly description = 'bulk-gated test source';
  readonly held: Array<() => void> = [];
  readonly seen: Array<{ offset: number; priority: string | undefined; aborted: () => boolean }> = [];
  constructor(private readonly image: Uint8Array, private readonly holdPriority: 'background' | 'all' = 'background') {}
  get sizeBytes(): number {
    return this.image.length;
  }
  read(offset: number, lengthBytes: number, target: Uint8Array, options?: ReadOptions): Promise<void> {
    this.seen.push({ offset, priority: options?.priority, aborted: () => options?.signal?.aborted === true });
    const fill = (): void => target.set(this.image.subarray(offset, offset + lengthBytes));
    if (this.holdPriority === 'background' && options?.priority !== 'background') {
      fill();
      return Promise.resolve();
    }
    return new Promise((resolve) => this.held.push(() => {
      fill();
      resolve();
    }));
  }
  releaseAll(): void {
    for (const release of this.held.splice(0)) release();
  }
}

async function inProcessServer(t: TestContext, source: PageSource, maxInFlightPerConnection = 16): Promise<PageServer> {
  const server = await startPageServer({ source, maxInFlightPerConnection });
  t.after(() => server.close());
  return server;
}

function patterned(pageCount: number): Uint8Array {
  const image = new Uint8Array(pageCount * PAGE);
  for (let i = 0; i < image.length; i += 4) image[i] = (i >> 12) & 0xff;
  return image;
}

describe('a remote source against a page server in another process', () => {
  test('every page of the image reads back equal, isZero is right for every page, and the metadata is the snapshot\'s', async (t) => {
    const { path, image, metadata } = await writeTestSnapshot(tempDir(t));
    const { port } = await spawnPagesServe(t, ['--snapshot', path, '--listen', '127.0.0.1:0']);
    const source = await connect(t, `tcp://127.0.0.1:${port}`);
    assert.equal(source.sizeBytes, IMAGE_BYTES);
    assert.equal(source.pageSizeBytes, PAGE);
    assert.equal(source.description, `page server tcp://127.0.0.1:${port}`);
    assert.deepEqual(Buffer.from(source.metadata), Buffer.from(metadata));
    for (let p = 0; p < PAGE_COUNT; p++) assert.equal(source.isZero(p * PAGE, PAGE), isZeroPage(p), `isZero of page ${p}`);

    // Every page at once, half of them as background reads: many in flight on both connections.
    const target = new Uint8Array(IMAGE_BYTES).fill(UNTOUCHED);
    await Promise.all(Array.from({ length: PAGE_COUNT }, (_, p) =>
      source.read(p * PAGE, PAGE, target.subarray(p * PAGE, (p + 1) * PAGE), { priority: p % 2 === 0 ? 'demand' : 'background' })));
    assert.ok(Buffer.from(target).equals(Buffer.from(image)), 'the whole image, page by page');
    assert.equal(source.stats.urgentReadsSent, PAGE_COUNT / 2);
    assert.equal(source.stats.bulkReadsSent, PAGE_COUNT / 2);

    // The whole image in one read is split at the server's 2 MiB READ limit; an unaligned read is served from whole pages.
    const whole = new Uint8Array(IMAGE_BYTES);
    await source.read(0, IMAGE_BYTES, whole);
    assert.ok(Buffer.from(whole).equals(Buffer.from(image)));
    const odd = new Uint8Array(10_000);
    await source.read(5 * PAGE + 123, odd.length, odd);
    assert.ok(Buffer.from(odd).equals(Buffer.from(image.subarray(5 * PAGE + 123, 5 * PAGE + 123 + odd.length))));
  });

  test('reads outside the image are refused at once, fatal, without a request', async (t) => {
    const { path } = await writeTestSnapshot(tempDir(t));
    const { port } = await spawnPagesServe(t, ['--snapshot', path, '--listen', '127.0.0.1:0']);
    const source = await connect(t, `tcp://127.0.0.1:${port}`);
    const sent = source.stats.readsSent;
    await assert.rejects(source.read(IMAGE_BYTES - PAGE, 2 * PAGE, new Uint8Array(2 * PAGE)), (error: unknown) => error instanceof SourceReadError && error.failure === 'fatal');
    assert.equal(source.stats.readsSent, sent);
  });

  test('the page server killed mid-read and restarted on the same port: the pending reads complete with the right bytes', async (t) => {
    const { path, image } = await writeTestSnapshot(tempDir(t));
    const first = await spawnPagesServe(t, ['--snapshot', path, '--listen', '127.0.0.1:0', '--max-in-flight', '1']);
    const source = await connect(t, `tcp://127.0.0.1:${first.port}`, { maxInFlightPerConnection: 4 });
    const target = new Uint8Array(IMAGE_BYTES).fill(UNTOUCHED);
    let done = 0;
    let doneAtKill = -1;
    const reads = Array.from({ length: PAGE_COUNT / 4 }, (_, i) =>
      source.read(i * 4 * PAGE, 4 * PAGE, target.subarray(i * 4 * PAGE, (i + 1) * 4 * PAGE), { priority: i % 3 === 0 ? 'background' : 'demand' }).then(() => {
        done++;
        // Kill it the moment the first read is back: the rest are in flight or queued.
        if (doneAtKill === -1) {
          doneAtKill = done;
          first.run.kill('SIGKILL');
        }
      }));
    await first.run.exit;
    await sleep(300);
    assert.ok(done < reads.length, `reads are still pending while the server is down (${done} of ${reads.length} done)`);
    // A read made while the server is down waits too.
    const late = new Uint8Array(PAGE);
    const lateRead = source.read(17 * PAGE, PAGE, late);
    const second = await spawnPagesServe(t, ['--snapshot', path, '--listen', `127.0.0.1:${first.port}`]);
    assert.equal(second.port, first.port);
    await Promise.all([...reads, lateRead]);
    assert.ok(Buffer.from(target).equals(Buffer.from(image)), 'every page, with the right bytes');
    assert.ok(late.every((b, i) => b === image[17 * PAGE + i]));
    assert.ok(source.stats.reconnects >= 2, `both connections were re-made (${source.stats.reconnects})`);
    assert.equal(source.state, 'open');
  });

  test('a server that never comes back: waiting reads reject with SourceGoneError after the deadline, and so does every later read', async (t) => {
    const { path } = await writeTestSnapshot(tempDir(t));
    const { run, port } = await spawnPagesServe(t, ['--snapshot', path, '--listen', '127.0.0.1:0']);
    const source = await connect(t, `tcp://127.0.0.1:${port}`, { reconnectDeadlineMs: 500 });
    await source.read(0, PAGE, new Uint8Array(PAGE));
    run.kill('SIGKILL');
    await run.exit;
    const started = performance.now();
    const target = new Uint8Array(PAGE).fill(UNTOUCHED);
    await assert.rejects(source.read(PAGE, PAGE, target), (error: unknown) => {
      assert.ok(error instanceof SourceGoneError, String(error));
      assert.equal(error.failure, 'fatal');
      assert.match(error.message, /did not come back within \d+ ms/);
      assert.ok(error.cause instanceof PeerUnavailableError);
      return true;
    });
    const waitedMs = performance.now() - started;
    assert.ok(waitedMs < 5000, `rejected within the deadline's bound (${Math.round(waitedMs)} ms)`);
    assert.ok(target.every((b) => b === UNTOUCHED));
    assert.equal(source.state, 'gone');
    await assert.rejects(source.read(0, PAGE, new Uint8Array(PAGE)), SourceGoneError);
  });

  test('a corrupt page is a fatal SourceReadError for that read only; the source goes on', async (t) => {
    const { path, image } = await writeTestSnapshot(tempDir(t));
    const file = await SnapshotFile.open(path);
    const info = file.pageInfo(300 * PAGE);
    await file.close();
    const bytes = readFileSync(path);
    bytes[(info as { fileOffset: number }).fileOffset + 7]! ^= 0x10;
    writeFileSync(path, bytes);
    const { port } = await spawnPagesServe(t, ['--snapshot', path, '--listen', '127.0.0.1:0']);
    const source = await connect(t, `tcp://127.0.0.1:${port}`);
    const target = new Uint8Array(4 * PAGE).fill(UNTOUCHED);
    await assert.rejects(source.read(298 * PAGE, 4 * PAGE, target), (error: unknown) => {
      assert.ok(error instanceof SourceReadError && !(error instanceof SourceGoneError), String(error));
      assert.equal(error.failure, 'fatal');
      assert.match(error.message, /SOURCE_FAILED: .*page 300/);
      return true;
    });
    assert.ok(target.every((b) => b === UNTOUCHED), 'no byte of the failed read was written');
    const next = new Uint8Array(PAGE);
    await source.read(302 * PAGE, PAGE, next);
    assert.ok(Buffer.from(next).equals(page(image, 302)));
    assert.equal(source.state, 'open');
  });

  test('a server restarted with another image is refused: reads fail with SourceGoneError caused by ImageChangedError', async (t) => {
    const dir = tempDir(t);
    const { path } = await writeTestSnapshot(dir);
    const other = join(dir, 'other.snap');
    await writeSnapshot(other, { regions: [{ imageOffset: 0, lengthBytes: IMAGE_BYTES }], content: new Uint8Array(IMAGE_BYTES).fill(3) });
    const first = await spawnPagesServe(t, ['--snapshot', path, '--listen', '127.0.0.1:0']);
    const source = await connect(t, `tcp://127.0.0.1:${first.port}`);
    first.run.kill('SIGKILL');
    await first.run.exit;
    const reading = source.read(0, PAGE, new Uint8Array(PAGE));
    await spawnPagesServe(t, ['--snapshot', other, '--listen', `127.0.0.1:${first.port}`]);
    await assert.rejects(reading, (error: unknown) => {
      assert.ok(error instanceof SourceGoneError);
      assert.ok(error.cause instanceof ImageChangedError, String(error.cause));
      assert.match(error.message, /now serves another image: its image id is/);
      return true;
    });
  });
});

describe('a remote source\'s two connections', () => {
  test('a demand read completes while the bulk connection is full of background reads the server holds', async (t) => {
    const image = patterned(64);
    const gate = new BulkGate(image);
    // Four reads per connection at the server: with one connection, the held background reads would block the demand read.
    const server = await inProcessServer(t, gate, 4);
    const source = await connect(t, server.url);
    const background = Array.from({ length: 12 }, (_, i) => source.read(i * PAGE, PAGE, new Uint8Array(PAGE), { priority: 'background' }));
    let backgroundDone = 0;
    for (const read of background) void read.then(() => backgroundDone++);
    while (gate.held.length < 4) await sleep(5);
    const demand = new Uint8Array(2 * PAGE);
    await source.read(40 * PAGE, 2 * PAGE, demand, { priority: 'demand' });
    assert.ok(Buffer.from(demand).equals(page(image, 40, 2)));
    assert.equal(backgroundDone, 0, 'the background reads are still held');
    const byRole = Object.fromEntries(server.summary().clients.map((c) => [c.role, c]));
    assert.equal(byRole['page-client-urgent']!.reads, 1);
    assert.equal(byRole['page-client-bulk']!.sessionId, byRole['page-client-urgent']!.sessionId, 'one session on both');
    assert.ok(gate.seen.filter((s) => s.priority === 'background').length >= 4);
    // Release the held reads; the rest follow.
    while (backgroundDone < 12) {
      gate.releaseAll();
      await sleep(5);
    }
    await Promise.all(background);
  });

  test('duplicate reads of a range in flight are coalesced into one READ; a demand read does not join a background one', async (t) => {
    const image = patterned(16);
    const gate = new BulkGate(image, 'all');
    const server = await inProcessServer(t, gate);
    const source = await connect(t, server.url);
    const targets = Array.from({ length: 4 }, () => new Uint8Array(PAGE));
    const reads = [
      source.read(3 * PAGE, PAGE, targets[0]!, { priority: 'demand' }),
      source.read(3 * PAGE, PAGE, targets[1]!, { priority: 'demand' }),
      source.read(3 * PAGE, PAGE, targets[2]!, { priority: 'background' }),
    ];
    const bulkOnly = source.read(5 * PAGE, PAGE, new Uint8Array(PAGE), { priority: 'background' });
    const demandBesideBulk = source.read(5 * PAGE, PAGE, targets[3]!, { priority: 'demand' });
    while (gate.held.length < 3) await sleep(5);
    gate.releaseAll();
    await Promise.all([...reads, bulkOnly, demandBesideBulk]);
    assert.equal(source.stats.coalesced, 2, 'the second demand and the background read joined the first');
    assert.equal(source.stats.readsSent, 3);
    for (const target of targets.slice(0, 3)) assert.ok(Buffer.from(target).equals(page(image, 3)));
    assert.ok(Buffer.from(targets[3]!).equals(page(image, 5)));
  });

  test('an aborted read rejects with AbortError and its READ is cancelled on the wire; a coalesced twin still completes', async (t) => {
    const image = patterned(16);
    const gate = new BulkGate(image, 'all');
    const server = await inProcessServer(t, gate);
    const source = await connect(t, server.url);
    const alone = new AbortController();
    const aloneTarget = new Uint8Array(PAGE).fill(UNTOUCHED);
    const aloneRead = source.read(2 * PAGE, PAGE, aloneTarget, { signal: alone.signal });
    const twin = new AbortController();
    const twinRead = source.read(4 * PAGE, PAGE, new Uint8Array(PAGE), { signal: twin.signal });
    const keeper = new Uint8Array(PAGE);
    const keeperRead = source.read(4 * PAGE, PAGE, keeper);
    while (gate.held.length < 2) await sleep(5);
    alone.abort();
    twin.abort();
    await assert.rejects(aloneRead, (error: unknown) => isAbortError(error) && error instanceof DOMException);
    await assert.rejects(twinRead, (error: unknown) => isAbortError(error));
    assert.equal(source.stats.cancelsSent, 1, 'only the read nobody else waits for is cancelled');
    while (!gate.seen[0]!.aborted()) await sleep(5);
    gate.releaseAll();
    await keeperRead;
    assert.ok(Buffer.from(keeper).equals(page(image, 4)));
    assert.ok(aloneTarget.every((b) => b === UNTOUCHED));
    await assert.rejects(source.read(0, PAGE, new Uint8Array(PAGE), { signal: AbortSignal.abort() }), (error: unknown) => isAbortError(error));
    assert.equal(server.summary().totals.reads, 2);
    assert.equal(server.clients.find((c) => c.summary().role === 'page-client-urgent')!.summary().cancelled, 1);
  });

  test('close() ends both connections and rejects pending reads with SourceGoneError', async (t) => {
    const gate = new BulkGate(patterned(8), 'all');
    const server = await inProcessServer(t, gate);
    const source = await connect(t, server.url);
    const pending = source.read(0, PAGE, new Uint8Array(PAGE));
    while (gate.held.length < 1) await sleep(5);
    await source.close();
    await assert.rejects(pending, SourceGoneError);
    await assert.rejects(source.read(0, PAGE, new Uint8Array(PAGE)), /the source was closed/);
    while (server.clients.length > 0) await sleep(5);
    gate.releaseAll();
  });

  test('connecting where no server listens, or to one that never answers, rejects with PeerUnavailableError; a server refusing the HELLO with PeerRefusedError', async (t) => {
    const fake = await FakePageServer.start({ image: patterned(4), reads: ['honest'] });
    const port = fake.port;
    await fake.close();
    await assert.rejects(RemoteSource.connect(`tcp://127.0.0.1:${port}`, { connectTimeoutMs: 1000 }), (error: unknown) => {
      assert.ok(error instanceof PeerUnavailableError, String(error));
      assert.equal(error.code, 'EPEERUNAVAILABLE');
      assert.match(error.message, /ECONNREFUSED/);
      return true;
    });
    const refusing = await FakePageServer.start({ image: patterned(4), reads: ['honest'], refuseHello: 'UNSUPPORTED_VERSION' });
    t.after(() => refusing.close());
    await assert.rejects(RemoteSource.connect(refusing.url, { connectTimeoutMs: 1000 }), (error: unknown) => {
      assert.ok(error instanceof PeerRefusedError, String(error));
      assert.equal(error.wireCode, 'UNSUPPORTED_VERSION');
      return true;
    });
    await assert.rejects(RemoteSource.connect('http://127.0.0.1:80'), /not a page server URL/);
    const mute = await FakePageServer.start({ image: patterned(4), reads: ['honest'], ignoreGetInfo: true });
    t.after(() => mute.close());
    const started = performance.now();
    await assert.rejects(RemoteSource.connect(mute.url, { connectTimeoutMs: 300 }), (error: unknown) => {
      assert.ok(error instanceof PeerUnavailableError, String(error));
      assert.match(error.message, /no answer to get-info within 300 ms/);
      return true;
    });
    assert.ok(performance.now() - started < 3000);
  });
});

describe('a remote source facing a lying page server', () => {
  const LIES: ReadBehaviour[] = ['bad-crc', 'wrong-length', 'wrong-offset', 'unknown-type', 'unsolicited', 'wrong-type', 'unchecked-pages'];

  for (const lie of LIES) {
    test(`a reply with ${lie} is refused before it reaches the target; the read completes from a reconnect to an honest server`, async (t) => {
      const image = patterned(16);
      const untouchedWhenHonest: boolean[] = [];
      const target = new Uint8Array(2 * PAGE).fill(UNTOUCHED);
      // Both first connections lie (which arrives first is up to the kernel); every later one is honest.
      const fake = await FakePageServer.start({ image, reads: [lie, lie, 'honest'], beforeHonestReply: () => untouchedWhenHonest.push(target.every((b) => b === UNTOUCHED)) });
      t.after(() => fake.close());
      const source = await connect(t, fake.url, { reconnectDeadlineMs: 5000 });
      await source.read(6 * PAGE, 2 * PAGE, target);
      assert.deepEqual(untouchedWhenHonest, [true], 'the lie never reached the target');
      assert.ok(Buffer.from(target).equals(page(image, 6, 2)));
      assert.ok(!target.includes(LIE_BYTE) || image.includes(LIE_BYTE));
      assert.equal(source.stats.protocolViolations, 1);
      assert.ok(source.stats.reconnects >= 1);
      assert.equal(source.state, 'open');
    });
  }

  test('a peer that keeps lying is given up on: the read fails fatal, its target untouched', async (t) => {
    const image = patterned(16);
    const fake = await FakePageServer.start({ image, reads: ['bad-crc', 'wrong-length', 'unsolicited', 'unknown-type', 'wrong-offset'] });
    t.after(() => fake.close());
    const source = await connect(t, fake.url, { maxProtocolViolations: 3, reconnectDeadlineMs: 10_000 });
    const target = new Uint8Array(PAGE).fill(UNTOUCHED);
    await assert.rejects(source.read(0, PAGE, target), (error: unknown) => {
      assert.ok(error instanceof SourceGoneError, String(error));
      assert.equal(error.failure, 'fatal');
      assert.ok(error.cause instanceof ProtocolError);
      assert.match(error.message, /broke the protocol on 3 connections in a row/);
      return true;
    });
    assert.ok(target.every((b) => b === UNTOUCHED));
    assert.equal(source.stats.protocolViolations, 3);
    assert.equal(source.state, 'gone');
  });

  for (const [behaviour, option] of [['silent', 'idleTimeoutMs'], ['stalls-reads', 'requestTimeoutMs']] as const) {
    test(`a server that ${behaviour === 'silent' ? 'goes silent (PINGs unanswered too)' : 'answers PINGs but never the READ'} is dropped after ${option} and the read re-sent`, async (t) => {
      const image = patterned(16);
      const fake = await FakePageServer.start({ image, reads: [behaviour, behaviour, 'honest'] });
      t.after(() => fake.close());
      const source = await connect(t, fake.url, { [option]: 300 });
      const target = new Uint8Array(PAGE);
      await source.read(9 * PAGE, PAGE, target);
      assert.ok(Buffer.from(target).equals(page(image, 9)));
      assert.equal(source.stats.protocolViolations, 0, 'a lost connection, not a violation');
      assert.ok(source.stats.reconnects >= 1);
    });
  }

  test('a PUSH from a page server is a violation, never delivered: its pages carry no checksums', async (t) => {
    const image = patterned(16);
    const fake = await FakePageServer.start({ image, reads: ['honest'], pushes: [{ offset: 2 * PAGE, data: page(image, 2) }] });
    t.after(() => fake.close());
    const source = await connect(t, fake.url, { maxProtocolViolations: 1000 });
    assert.equal('onPush' in source, false, 'a remote source pushes nothing to the pager');
    // The push follows the INFO of every urgent connection; each one ends it, and the reconnect pushes again.
    while (source.stats.protocolViolations < 2) await sleep(5);
    assert.equal(source.state, 'open');
  });
});
