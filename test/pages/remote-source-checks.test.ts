// A remote source against a real page server (`userfault pages serve`) behind
// a hostile proxy: pages altered on the way are refused against the
// snapshot's own checksums, and every read has a deadline whatever the server
// does. Real sockets, the real server, the real pager and kernel.
import { after, describe, test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { Mapping } from '../../src/mem/index.js';
import { PAGE_SIZE } from '../../src/native.js';
import { PeerRefusedError } from '../../src/pages/index.js';
import { Pager } from '../../src/pager/index.js';
import { SourceReadError } from '../../src/sources/page-source.js';
import { PageChecksumError, SourceDeadlineError } from '../../src/sources/read-errors.js';
import { RemoteSource, type RemoteSourceOptions } from '../../src/pages/remote-source.js';
import { writeSnapshot } from '../../src/snapshot/index.js';
import { Userfaultfd } from '../../src/uffd/index.js';
import { loadGuestMemory } from '../../src/vm/memory/eager-load.js';
import { GuestMemory } from '../../src/vm/memory/guest-memory.js';
import { Toucher } from '../helpers/toucher.js';
import { FakePageServer } from './fake-page-server.js';
import { IMAGE_BYTES, PAGE, spawnPagesServe, tempDir, writeTestSnapshot } from './fixtures.js';
import { TamperProxy, type TamperMode } from './tamper-proxy.js';

const UNTOUCHED = 0xee;
const toucher = new Toucher();
after(() => toucher.terminate());

/** The test snapshot served by `pages serve` in another process, behind a proxy in this one. */
async function servedThrough(t: TestContext, mode: TamperMode, options: { pagesToFlip?: number } = {}): Promise<{ proxy: TamperProxy; image: Uint8Array }> {
  const { path, image } = await writeTestSnapshot(tempDir(t));
  const { port } = await spawnPagesServe(t, ['--snapshot', path, '--listen', '127.0.0.1:0']);
  const proxy = await TamperProxy.start({ host: '127.0.0.1', port }, mode, options);
  t.after(() => proxy.close());
  return { proxy, image };
}

async function connect(t: TestContext, url: string, options: RemoteSourceOptions = {}): Promise<RemoteSource> {
  const source = await RemoteSource.connect(url, { connectTimeoutMs: 3000, ...options });
  t.after(() => source.close());
  return source;
}

/** A pager over `source` for its first 64 pages, faults served on this thread, touched from a worker. */
function pagerOver(t: TestContext, source: RemoteSource, prefetch: ConstructorParameters<typeof Pager>[0]['prefetch'] = false): { pager: Pager; address: number; poisoned: Error[] } {
  const lengthBytes = 64 * PAGE_SIZE;
  const mapping = Mapping.anonymous(lengthBytes);
  const uffd = Userfaultfd.open({ features: ['EVENT_REMOVE', 'EVENT_UNMAP', 'EVENT_REMAP'] });
  const pager = new Pager({ uffd, source, regions: [{ address: mapping.address, lengthBytes, sourceOffset: 0 }], register: true, prefetch });
  const poisoned: Error[] = [];
  pager.on('poisoned', (_first, _count, error) => poisoned.push(error));
  pager.on('error', () => {});
  pager.start();
  t.after(async () => {
    await pager.stop();
    uffd.unregister(mapping.address, lengthBytes);
    uffd.close();
    mapping.unmap();
  });
  return { pager, address: mapping.address, poisoned };
}

/** process_vm_readv of one page: its length, or a negative errno when the page cannot be had (poisoned). */
const readPage = (address: number): Promise<number> => toucher.run<number>({ op: 'process-vm-readv', address });

describe('pages from a page server are checked against the snapshot\'s own checksums', () => {
  test('readView lends a READ\'s reply, checked: the right bytes, a view of the received payload (no copy); an altered one is refused the same way', async (t) => {
    const { proxy: honest, image } = await servedThrough(t, 'pass');
    const source = await connect(t, honest.url);
    const view = await source.readView(2 * PAGE, 8 * PAGE);
    assert.deepEqual(view, image.subarray(2 * PAGE, 10 * PAGE));
    assert.ok(view.byteOffset > 0 && view.buffer.byteLength > view.length, 'a view inside the reply\'s payload (after its header and checksums)');
    const long = await source.readView(0, 3 * 1024 * 1024);
    assert.deepEqual(long, image.subarray(0, 3 * 1024 * 1024), 'longer than one READ: read into a buffer of its own');
    const { proxy } = await servedThrough(t, 'flip-pages');
    const tampered = await connect(t, proxy.url);
    await assert.rejects(tampered.readView(PAGE, 4 * PAGE), PageChecksumError);
  });

  test('a pager over a remote source installs from borrowed replies and gives them back: every page right, reply buffers reused, none left lent', async (t) => {
    // Every page stored (no zero pages), so each window of 16 pages is one 64 KiB reply, read into a pooled buffer.
    const dir = tempDir(t);
    const path = join(dir, 'dense.snap');
    const image = new Uint8Array(64 * PAGE).map((_, i) => (i * 13 + (i >> 12) * 7 + 1) & 0xff);
    await writeSnapshot(path, { regions: [{ imageOffset: 0, lengthBytes: image.length, name: 'ram' }], imageSizeBytes: image.length, content: image });
    const { port } = await spawnPagesServe(t, ['--snapshot', path, '--listen', '127.0.0.1:0']);
    const source = await connect(t, `tcp://127.0.0.1:${port}`);
    const { pager, address } = pagerOver(t, source, { initialPages: 16, maxPages: 16 });
    for (let page = 0; page < 64; page++) {
      const words = await toucher.run<number[]>({ op: 'read-words', address: address + page * PAGE_SIZE, count: PAGE / 4 });
      assert.deepEqual(words, [...new Uint32Array(image.buffer, image.byteOffset + page * PAGE, PAGE / 4)], `page ${page}`);
    }
    await pager.stop();
    assert.ok(source.payloadPool.reused > 0, `reply buffers reused (${source.payloadPool.reused} reused, ${source.payloadPool.allocated} allocated)`);
    assert.equal(source.payloadPool.lentCount, 0, 'every borrowed reply was given back');
  });

  test('a proxy that flips byte 8 of each page and fixes the frame CRC: the read is refused naming the page, no byte reaches the target', async (t) => {
    const { proxy } = await servedThrough(t, 'flip-pages');
    const source = await connect(t, proxy.url);
    assert.equal(source.info.pageChecksum, 'crc32c', 'a format-2 snapshot\'s pages carry CRC32C');
    const target = new Uint8Array(4 * PAGE).fill(UNTOUCHED);
    await assert.rejects(source.read(PAGE, 4 * PAGE, target), (error: unknown) => {
      assert.ok(error instanceof PageChecksumError, String(error));
      assert.equal(error.code, 'ESOURCECHECKSUM');
      assert.equal(error.failure, 'fatal');
      assert.equal(error.pageOffset, PAGE);
      assert.equal(error.failedOffset, PAGE, 'the pager is told which page');
      assert.match(error.message, /the page at offset 0x1000 from page server tcp:\/\/127\.0\.0\.1:\d+ does not match its image's checksum: CRC32C 0x[0-9a-f]{8}, expected 0x[0-9a-f]{8}/);
      return true;
    });
    assert.ok(target.every((b) => b === UNTOUCHED), 'nothing of the altered reply was copied');
    assert.equal(source.stats.corruptReplies, 3, 'asked twice more, then refused');
    assert.ok(proxy.pagesFlipped >= 3);
    assert.equal(source.state, 'open', 'the source goes on: the refusal is that read\'s');
  });

  test('a format-1 snapshot\'s pages travel with its CRC32s: they read back right, and an altered one is refused', async (t) => {
    const path = join(tempDir(t), 'v1.snap');
    const image = new Uint8Array(64 * PAGE).map((_, i) => (i * 7 + (i >> 12)) & 0xff);
    await writeSnapshot(path, { regions: [{ imageOffset: 0, lengthBytes: image.length }], content: image, version: 1 });
    const { port } = await spawnPagesServe(t, ['--snapshot', path, '--listen', '127.0.0.1:0']);
    const direct = await connect(t, `tcp://127.0.0.1:${port}`);
    assert.equal(direct.info.pageChecksum, 'crc32');
    const whole = new Uint8Array(image.length);
    await direct.read(0, image.length, whole);
    assert.ok(Buffer.from(whole).equals(Buffer.from(image)));
    const proxy = await TamperProxy.start({ host: '127.0.0.1', port }, 'flip-pages');
    t.after(() => proxy.close());
    const tampered = await connect(t, proxy.url);
    await assert.rejects(tampered.read(2 * PAGE, PAGE, new Uint8Array(PAGE)), (error: unknown) => {
      assert.ok(error instanceof PageChecksumError, String(error));
      assert.match(error.message, /offset 0x2000 .* CRC32 0x/);
      return true;
    });
  });

  test('the pager never installs an altered page: the fault gets poison naming the page, and an honest page after it is served', async (t) => {
    const { proxy, image } = await servedThrough(t, 'flip-pages');
    const source = await connect(t, proxy.url);
    const { pager, address, poisoned } = pagerOver(t, source);
    assert.ok((await readPage(address + 3 * PAGE_SIZE)) < 0, 'the access to the altered page fails');
    assert.equal(pager.snapshotMetrics().pagesCopied, 0, 'nothing was installed');
    assert.equal(pager.pageCounts().poisoned, 1);
    assert.ok(poisoned[0] instanceof PageChecksumError, String(poisoned[0]));
    assert.equal((poisoned[0] as PageChecksumError).pageOffset, 3 * PAGE);
    proxy.mode = 'pass';
    assert.equal(await readPage(address + 4 * PAGE_SIZE), PAGE_SIZE);
    assert.equal(await toucher.run<number>({ op: 'read-word', address: address + 4 * PAGE_SIZE }), new DataView(image.buffer).getUint32(4 * PAGE, true));
  });
});

describe('an eager restore\'s load (vm restore --from tcp:// without --lazy) from a hostile page server', () => {
  test('altered pages: the load fails with PageChecksumError, and no altered byte is in guest memory', async (t) => {
    const { proxy, image: expected } = await servedThrough(t, 'flip-pages');
    const source = await connect(t, proxy.url);
    const memory = GuestMemory.create(IMAGE_BYTES);
    t.after(() => memory.unmap());
    await assert.rejects(loadGuestMemory(memory, source), PageChecksumError);
    // Every page the proxy passed had byte 8 flipped: each page of guest memory is the snapshot's, or still zero.
    const loaded = memory.image();
    const zeroPage = Buffer.alloc(PAGE);
    for (let page = 0; page < IMAGE_BYTES / PAGE; page++) {
      const bytes = Buffer.from(loaded.subarray(page * PAGE, (page + 1) * PAGE));
      assert.ok(bytes.equals(zeroPage) || bytes.equals(Buffer.from(expected.subarray(page * PAGE, (page + 1) * PAGE))), `page ${page} is neither the snapshot's nor untouched`);
    }
    assert.ok(proxy.pagesFlipped > 0);
  });

  test('a server that never delivers: the load fails with SourceDeadlineError after the deadline, rather than hang', async (t) => {
    const { proxy } = await servedThrough(t, 'swallow-reads');
    const source = await connect(t, proxy.url, { readDeadlineMs: 1000 });
    const memory = GuestMemory.create(IMAGE_BYTES);
    t.after(() => memory.unmap());
    const started = performance.now();
    await assert.rejects(loadGuestMemory(memory, source), SourceDeadlineError);
    assert.ok(performance.now() - started < 5000, `failed after ${Math.round(performance.now() - started)} ms`);
  });
});

describe('every read from a page server has a deadline, whatever the server does', () => {
  const BEHAVIOURS: Array<[TamperMode, string]> = [
    ['swallow-reads', 'answers PINGs but never the READ'],
    ['close-on-read', 'closes the connection on every READ'],
    ['busy', 'answers BUSY for ever'],
  ];
  for (const [mode, what] of BEHAVIOURS) {
    test(`a server that ${what}: a demand read with a 1 s deadline fails in about 1 s with SourceDeadlineError naming the page`, async (t) => {
      const { proxy, image } = await servedThrough(t, mode);
      const source = await connect(t, proxy.url, { readDeadlineMs: 1000 });
      const target = new Uint8Array(2 * PAGE).fill(UNTOUCHED);
      const started = performance.now();
      await assert.rejects(source.read(5 * PAGE, 2 * PAGE, target), (error: unknown) => {
        assert.ok(error instanceof SourceDeadlineError, String(error));
        assert.equal(error.code, 'ESOURCEDEADLINE');
        assert.equal(error.failure, 'fatal', 'a thread waits on a demand read: its page is given up');
        assert.equal(error.pageOffset, 5 * PAGE);
        assert.equal(error.deadlineMs, 1000);
        assert.ok(error.waitedMs >= 1000);
        assert.match(error.message, /the page at offset 0x5000 did not arrive within the 1000 ms deadline \(waited \d+ ms\)/);
        return true;
      });
      const waitedMs = performance.now() - started;
      assert.ok(waitedMs >= 950 && waitedMs < 4000, `failed after ${Math.round(waitedMs)} ms`);
      assert.ok(target.every((b) => b === UNTOUCHED));
      assert.ok(proxy.reads >= 1, 'the READ was sent');
      assert.equal(source.state, 'open', 'the deadline fails the read, not the source');
      // The server mends its ways: the next read is served (the connections were kept, or re-made).
      proxy.mode = 'pass';
      const next = new Uint8Array(PAGE);
      await source.read(9 * PAGE, PAGE, next);
      assert.ok(Buffer.from(next).equals(Buffer.from(image.subarray(9 * PAGE, 10 * PAGE))));
    });
  }

  test('a background read past its deadline fails transient (the pager may ask again), a read made while no server is there fails at its deadline too', async (t) => {
    const { path } = await writeTestSnapshot(tempDir(t));
    const { run, port } = await spawnPagesServe(t, ['--snapshot', path, '--listen', '127.0.0.1:0']);
    const proxy = await TamperProxy.start({ host: '127.0.0.1', port }, 'swallow-reads');
    t.after(() => proxy.close());
    const source = await connect(t, proxy.url, { readDeadlineMs: 500, reconnectDeadlineMs: 60_000 });
    await assert.rejects(source.read(0, PAGE, new Uint8Array(PAGE), { priority: 'background' }), (error: unknown) => {
      assert.ok(error instanceof SourceDeadlineError, String(error));
      assert.equal(error.failure, 'transient');
      return true;
    });
    run.kill('SIGKILL');
    await run.exit;
    const started = performance.now();
    await assert.rejects(source.read(IMAGE_BYTES - PAGE, PAGE, new Uint8Array(PAGE)), (error: unknown) => {
      assert.ok(error instanceof SourceDeadlineError, String(error));
      assert.match(error.message, /reconnecting/, 'the message says the server is not there');
      return true;
    });
    assert.ok(performance.now() - started < 4000, 'long before the 60 s reconnect deadline');
    assert.equal(source.state, 'open', 'still reconnecting');
  });

  test('a fault on a page the server never delivers is poisoned at the deadline, the pager told why', async (t) => {
    const { proxy } = await servedThrough(t, 'swallow-reads');
    const source = await connect(t, proxy.url, { readDeadlineMs: 1000 });
    const { pager, address, poisoned } = pagerOver(t, source);
    const started = performance.now();
    assert.ok((await readPage(address + 6 * PAGE_SIZE)) < 0, 'the access fails rather than waits for ever');
    const waitedMs = performance.now() - started;
    assert.ok(waitedMs >= 950 && waitedMs < 5000, `the fault waited ${Math.round(waitedMs)} ms`);
    assert.ok(poisoned[0] instanceof SourceDeadlineError, String(poisoned[0]));
    assert.equal(pager.pageCounts().poisoned, 1);
  });
});

describe('a page server and a client of page protocol version 1 are refused', () => {
  test('a version-1 page server: connecting fails with PeerRefusedError saying why, nothing is read', async (t) => {
    const fake = await FakePageServer.start({ image: new Uint8Array(16 * PAGE), reads: ['honest'], version1: true });
    t.after(() => fake.close());
    await assert.rejects(RemoteSource.connect(fake.url, { connectTimeoutMs: 2000 }), (error: unknown) => {
      assert.ok(error instanceof PeerRefusedError, String(error));
      assert.equal(error.wireCode, 'UNSUPPORTED_VERSION');
      assert.match(error.message, /the peer speaks versions 2\.\.3, this side 1\.\.1/);
      assert.match(error.message, /speaks page protocol versions 2\.\.3, where every page comes with its image's checksum/);
      return true;
    });
    assert.ok(fake.connections.every((c) => c.reads === 0));
  });

  test('a server answering a READ with version 1\'s PAGES (no checksums) is a protocol violation; its bytes are never used', async (t) => {
    const image = new Uint8Array(16 * PAGE).fill(3);
    const fake = await FakePageServer.start({ image, reads: ['unchecked-pages'] });
    t.after(() => fake.close());
    const source = await connect(t, fake.url, { maxProtocolViolations: 2 });
    const target = new Uint8Array(PAGE).fill(UNTOUCHED);
    await assert.rejects(source.read(0, PAGE, target), (error: unknown) => error instanceof SourceReadError && /answered with pages/.test(error.message));
    assert.ok(target.every((b) => b === UNTOUCHED));
    assert.equal(source.stats.protocolViolations, 2);
  });
});
