// The handler server in this process; its clients are fixture processes that
// play Firecracker. A client blocks in the kernel on its own faults, never the
// test: the server's event loop is this one, and it never touches their memory.
import assert from 'node:assert/strict';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, test, type TestContext } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { HandlerServer, openMemoryFile, startHandlerServer, type ClientSummary, type HandlerServerOptions } from '../../src/handler/index.js';
import { PAGE_SIZE } from '../../src/native.js';
import { SharedPageCache } from '../../src/pager/page-cache.js';
import { SnapshotFile } from '../../src/snapshot/index.js';
import type { PageSource } from '../../src/sources/page-source.js';
import { FILE_PAGES, openUffdCount, spawnClient, tempDir, uffdSkipReason, writeMemoryFiles } from './helpers.js';

const skip = uffdSkipReason();
const TEST_TIMEOUT_MS = 60_000;

interface Recorded {
  type: 'connected' | 'ready' | 'notice' | 'error' | 'gone';
  id: number;
  message?: string;
  code?: string;
  summary?: ClientSummary;
}

/** A server on a fresh socket, with every client event recorded; closed when the test ends. */
async function serve(
  t: TestContext,
  source: PageSource,
  options: Partial<HandlerServerOptions> = {},
): Promise<{ server: HandlerServer; socketPath: string; events: Recorded[]; gone: (id: number) => Promise<ClientSummary> }> {
  const socketPath = join(tempDir(t), 'handler.sock');
  const server = await startHandlerServer({ socketPath, source, ...options });
  t.after(() => server.close());
  const events: Recorded[] = [];
  server.on('client-connected', (c) => events.push({ type: 'connected', id: c.id }));
  server.on('client-ready', (c) => events.push({ type: 'ready', id: c.id }));
  server.on('client-notice', (c, message) => events.push({ type: 'notice', id: c.id, message }));
  server.on('client-error', (c, e) => events.push({ type: 'error', id: c.id, message: e.message, code: (e as { code?: string }).code }));
  server.on('client-gone', (c, summary) => events.push({ type: 'gone', id: c.id, summary }));
  const gone = (id: number): Promise<ClientSummary> =>
    new Promise((resolve) => {
      const found = events.find((e) => e.type === 'gone' && e.id === id);
      if (found) return resolve(found.summary!);
      const listener = (c: { id: number }, summary: ClientSummary): void => {
        if (c.id !== id) return;
        server.off('client-gone', listener);
        resolve(summary);
      };
      server.on('client-gone', listener);
    });
  return { server, socketPath, events, gone };
}

async function openFile(t: TestContext, kind: 'snapshot' | 'raw'): Promise<PageSource> {
  const files = await writeMemoryFiles(tempDir(t));
  const { source, kind: opened } = await openMemoryFile(kind === 'snapshot' ? files.snapshotPath : files.rawPath, 'auto');
  assert.equal(opened, kind);
  t.after(() => source.close?.());
  return source;
}

/**
 * A client that exits is seen either by its socket hanging up or by a COPY
 * answering ESRCH (a read-ahead that finished after the process was gone),
 * whichever the event loop meets first.
 */
function assertClientLeft(summary: ClientSummary): void {
  assert.ok(summary.endReason === 'hangup' || summary.endReason === 'exited', `end reason ${summary.endReason}`);
}

function assertAllPagesMatch(result: Record<string, unknown> | undefined, pages: number): void {
  assert.ok(result, 'the client printed no result');
  assert.equal(result.pages, pages);
  assert.deepEqual(result.badPages, [], `bad pages: ${JSON.stringify(result)}`);
  assert.equal(result.badCount, 0);
}

describe('the page-fault handler server', { skip, timeout: TEST_TIMEOUT_MS }, () => {
  test('a client is served every page of its memory from a snapshot', async (t) => {
    const source = await openFile(t, 'snapshot');
    const { server, socketPath, events, gone } = await serve(t, source);
    const client = spawnClient(t, { socketPath, pageCount: 256, filePage: 128, send: 'one-message' });
    assertAllPagesMatch(await client.waitForEvent('result'), 256);
    const summary = await gone(1);
    assertClientLeft(summary);
    assert.deepEqual(summary.regions, [{ hostAddress: client.event('sent')!.address, lengthBytes: 256 * PAGE_SIZE, fileOffset: 128 * PAGE_SIZE, pageSizeBytes: PAGE_SIZE }]);
    // Every page was filled once: copied, or mapped as the zero page (every 8th page of the image is zero).
    const m = summary.metrics!;
    assert.ok(m.faults > 0);
    assert.equal(m.pagesCopied + m.zeroPages + summary.probePagesCopied, 256);
    assert.equal(summary.probePagesCopied, 2, 'the probe copies the first and last page of the region');
    // (less the probe's pages: the region's last page is one of the zero pages, and the probe copies it.)
    assert.equal(m.zeroPages, 31);
    assert.deepEqual(events.map((e) => e.type), ['connected', 'ready', 'gone']);
    assert.equal(server.clients.length, 0);
  });

  test('a client is served from a raw memory file, with its regions in any order of the file', async (t) => {
    const source = await openFile(t, 'raw');
    const { socketPath, gone } = await serve(t, source);
    const client = spawnClient(t, { socketPath, pageCount: 128, filePage: 512, send: 'one-message', swapHalves: true });
    assertAllPagesMatch(await client.waitForEvent('result'), 128);
    const summary = await gone(1);
    assert.equal(summary.regions.length, 2);
    assert.equal(summary.metrics!.pagesCopied + summary.metrics!.zeroPages + summary.probePagesCopied, 128);
  });

  for (const send of ['fd-later', 'fd-first', 'json-split'] as const) {
    test(`a client whose uffd and JSON arrive apart (${send}) is served`, async (t) => {
      const source = await openFile(t, 'raw');
      const { socketPath, events, gone } = await serve(t, source);
      const client = spawnClient(t, { socketPath, pageCount: 64, filePage: 0, send });
      assertAllPagesMatch(await client.waitForEvent('result'), 64);
      assertClientLeft((await gone(1)));
      assert.deepEqual(events.filter((e) => e.type === 'notice' || e.type === 'error'), []);
    });
  }

  for (const [form, pageSizeField] of [['Firecracker before 1.8 (page_size_kib, in bytes)', 'page_size_kib'], ['Firecracker 1.8+ (page_size and page_size_kib, both bytes)', 'both']] as const) {
    test(`the handshake ${form} is served like page_size`, async (t) => {
      const source = await openFile(t, 'snapshot');
      const { socketPath, events, gone } = await serve(t, source);
      const client = spawnClient(t, { socketPath, pageCount: 64, filePage: 64, send: 'one-message', pageSizeField });
      assertAllPagesMatch(await client.waitForEvent('result'), 64);
      assertClientLeft((await gone(1)));
      assert.deepEqual(events.filter((e) => e.type === 'error'), []);
    });
  }

  test('three clients at once are each served their own part of the file', async (t) => {
    const source = await openFile(t, 'snapshot');
    const { server, socketPath, gone } = await serve(t, source);
    const clients = [0, 1, 2].map((i) =>
      spawnClient(t, { socketPath, pageCount: 256, filePage: i * 256 + 64, send: i === 1 ? 'json-split' : 'one-message' }, 20_000, `client ${i}`),
    );
    // All three are connected and being served before any has finished.
    const results = await Promise.all(clients.map((c) => c.waitForEvent('result')));
    for (const result of results) assertAllPagesMatch(result, 256);
    const summaries = await Promise.all([1, 2, 3].map(gone));
    for (const summary of summaries) {
      assertClientLeft(summary);
      assert.equal(summary.metrics!.pagesCopied + summary.metrics!.zeroPages + summary.probePagesCopied, 256);
    }
    const total = server.summary();
    assert.equal(total.totals.clients, 3);
    assert.equal(total.totals.pagesCopied + total.totals.zeroPages, 3 * 256);
  });

  describe('a lying client is refused, logged with its id, and the others are served', () => {
    const cases = [
      { lie: 'garbage-json', code: 'EHANDSHAKE', message: /handshake refused: the handshake is not JSON/ },
      { lie: 'beyond-file', code: 'EHANDSHAKE', message: /handshake refused: region 0: .* past the end of the 4194304-byte memory file/ },
      { lie: 'alias', code: 'EHANDSHAKE', message: /regions 0 and 1 both show memory-file offset 2097152/ },
      { lie: 'deep-json', code: 'EHANDSHAKE', message: /nests arrays or objects more than 4 deep/ },
      { lie: 'other-uffd', code: 'EOTHERUFFD', message: /region 0: address 0x[0-9a-f]+ is registered with another userfaultfd/ },
      { lie: 'outside-mapping', code: 'EUNREGISTERED', message: /region 0: address 0x[0-9a-f]+ is not registered with the client's userfaultfd/ },
      { lie: 'not-a-uffd', code: 'ENOTUFFD', message: /not a userfaultfd \(it is \/dev\/null\)/ },
    ] as const;
    for (const { lie, code, message } of cases) {
      test(`a client that sends ${lie}`, async (t) => {
        const source = await openFile(t, 'raw');
        const { server, socketPath, events, gone } = await serve(t, source);
        const uffdsBefore = openUffdCount();
        const good = spawnClient(t, { socketPath, pageCount: 256, filePage: 0, send: 'one-message' }, 20_000, 'good client');
        await good.waitForEvent('sent');
        const liar = spawnClient(t, { socketPath, pageCount: 64, filePage: 512, send: 'one-message', lie, filePages: FILE_PAGES }, 20_000, 'liar');
        // The liar is told nothing (the protocol has no reply) but sees its socket close.
        assert.deepEqual(await liar.waitForEvent('closed-by-server'), { event: 'closed-by-server', recv: 0 });
        const liarSummary = await gone(2);
        assert.equal(liarSummary.endReason, 'refused');
        assert.match(liarSummary.endError!, message);
        const error = events.find((e) => e.type === 'error' && e.id === 2);
        assert.equal(error?.code, code);
        assertAllPagesMatch(await good.waitForEvent('result'), 256);
        assertClientLeft((await gone(1)));
        assert.deepEqual(events.filter((e) => e.type === 'error').map((e) => e.id), [2]);
        assert.equal(server.clients.length, 0);
        assert.equal(openUffdCount(), uffdsBefore, 'every uffd received was closed');
      });
    }
  });

  test(
    'a region with an unregistered hole in its middle: the registered pages are served and the failed copy is logged',
    async (t) => {
      const source = await openFile(t, 'raw');
      const { socketPath, events } = await serve(t, source);
      // 24 pages touched in order: read-ahead windows of 1, 2, 4, 8, 16 pages; the last one crosses page 24.
      const client = spawnClient(t, { socketPath, pageCount: 24, filePage: 0, send: 'one-message', lie: 'hole-in-region' }, 3_000, 'client with a hole');
      assertAllPagesMatch(await client.waitForEvent('result', 3_000), 24);
      assert.ok(events.some((e) => e.type === 'error' && e.id === 1 && e.code === 'ENOENT'), 'the ENOENT is logged');
    },
  );

  test('a client touching a corrupt snapshot page dies with SIGBUS, the error is logged with its id, and the others are served', async (t) => {
    const dir = tempDir(t);
    const files = await writeMemoryFiles(dir);
    // Flip a byte of image page 300 where the file stores it.
    const snapshot = await SnapshotFile.open(files.snapshotPath);
    const info = snapshot.pageInfo(300 * PAGE_SIZE);
    await snapshot.close();
    assert.equal(info.type, 'data');
    const bytes = readFileSync(files.snapshotPath);
    bytes[(info as { fileOffset: number }).fileOffset + 100]! ^= 0xff;
    writeFileSync(files.snapshotPath, bytes);
    const { source } = await openMemoryFile(files.snapshotPath, 'snapshot');
    t.after(() => source.close?.());
    const { socketPath, events, gone } = await serve(t, source, { prefetch: false });

    const victim = spawnClient(t, { socketPath, pageCount: 64, filePage: 256, send: 'one-message' }, 20_000, 'victim');
    // Page 44 of its memory is image page 300: it reads 0..43 and dies there, never seeing made-up data.
    assert.deepEqual(await victim.exit, { code: null, signal: 'SIGBUS' });
    assert.equal(victim.event('result'), undefined);
    const victimSummary = await gone(1);
    assertClientLeft(victimSummary);
    const errors = events.filter((e) => e.type === 'error' && e.id === 1);
    assert.ok(errors.length >= 1);
    assert.equal(errors[0]!.code, 'ESOURCE');
    assert.match(errors[0]!.message!, /reading 4096 bytes at offset 1228800: .*page 300/);

    const good = spawnClient(t, { socketPath, pageCount: 64, filePage: 0, send: 'one-message' }, 20_000, 'good client');
    assertAllPagesMatch(await good.waitForEvent('result'), 64);
    assertClientLeft(await gone(2));
  });

  test('a client that hangs up mid-handshake, or never sends its uffd, is dropped', async (t) => {
    const source = await openFile(t, 'raw');
    const { socketPath, gone } = await serve(t, source, { handshakeTimeoutMs: 300 });
    const { native } = await import('../../src/native.js');
    const half = native.unixConnect(socketPath);
    native.sendWithFds(half, new TextEncoder().encode('[{"base_host_virt_addr": 4096, "si'), []);
    native.close(half);
    const first = await gone(1);
    assert.equal(first.endReason, 'hangup');
    assert.match(first.endError!, /the handshake stopped after \d+ bytes, before its array closed/);

    const noFd = native.unixConnect(socketPath);
    t.after(() => native.close(noFd));
    native.sendWithFds(noFd, new TextEncoder().encode('[{"base_host_virt_addr": 4096, "size": 4096, "offset": 0, "page_size": 4096}]'), []);
    const second = await gone(2);
    assert.equal(second.endReason, 'refused');
    assert.match(second.endError!, /no userfaultfd arrived within 300 ms/);
  });

  test('a client killed while blocked on a slow fault is cleaned up, and the others are served', async (t) => {
    const files = await writeMemoryFiles(tempDir(t));
    const { source: file } = await openMemoryFile(files.rawPath, 'raw');
    t.after(() => file.close?.());
    // Reads from the second half of the file take 150 ms each; the first half is fast.
    const slowFrom = (FILE_PAGES / 2) * PAGE_SIZE;
    let slowReadsInFlight = 0;
    const source: PageSource = {
      sizeBytes: file.sizeBytes,
      description: 'slow raw file',
      read: async (offset, length, target) => {
        if (offset < slowFrom) return file.read(offset, length, target);
        slowReadsInFlight++;
        try {
          await sleep(150);
          return await file.read(offset, length, target);
        } finally {
          slowReadsInFlight--;
        }
      },
    };
    const { server, socketPath, gone } = await serve(t, source, { prefetch: false });
    const uffdsBefore = openUffdCount();
    const doomed = spawnClient(t, { socketPath, pageCount: 256, filePage: FILE_PAGES / 2, send: 'one-message' }, 20_000, 'doomed client');
    await doomed.waitForEvent('sent');
    await waitFor(() => server.clients.some((c) => c.id === 1 && c.state === 'serving') && slowReadsInFlight > 0, 'a slow read for the doomed client');
    doomed.kill('SIGKILL');
    const good = spawnClient(t, { socketPath, pageCount: 256, filePage: 0, send: 'one-message' }, 20_000, 'good client');
    const doomedSummary = await gone(1);
    assertClientLeft(doomedSummary);
    assert.ok(doomedSummary.metrics!.faults < 256, 'the doomed client died before it was served everything');
    assertAllPagesMatch(await good.waitForEvent('result'), 256);
    assertClientLeft((await gone(2)));
    assert.equal(server.clients.length, 0);
    assert.equal(openUffdCount(), uffdsBefore);
    assert.deepEqual(await doomed.exit, { code: null, signal: 'SIGKILL' });
  });

  test('closing the server ends its clients and removes the socket file', async (t) => {
    const source = await openFile(t, 'raw');
    const { server, socketPath, gone } = await serve(t, source);
    // A connection that never finishes its handshake keeps a session open.
    const { native } = await import('../../src/native.js');
    const idle = native.unixConnect(socketPath);
    t.after(() => native.close(idle));
    await waitFor(() => server.clients.length === 1, 'the connection to be accepted');
    assert.ok(existsSync(socketPath));
    const summary = await server.close();
    assert.equal((await gone(1)).endReason, 'server-closed');
    assert.equal(summary.clients.length, 1);
    assert.equal(existsSync(socketPath), false);
  });

  test('a stale socket file is replaced; a live server\'s is not', async (t) => {
    const source = await openFile(t, 'raw');
    const { socketPath } = await serve(t, source);
    await assert.rejects(startHandlerServer({ socketPath, source }), { code: 'EADDRINUSE', message: /another server is listening/ });

    const { native } = await import('../../src/native.js');
    const stalePath = join(tempDir(t), 'stale.sock');
    native.close(native.unixListen(stalePath, 1)); // a server that died without removing its socket file
    const replacing = await startHandlerServer({ socketPath: stalePath, source });
    const client = spawnClient(t, { socketPath: stalePath, pageCount: 16, filePage: 0, send: 'one-message' });
    assertAllPagesMatch(await client.waitForEvent('result'), 16);
    await replacing.close();
    assert.equal(existsSync(stalePath), false);

    const filePath = join(tempDir(t), 'not-a-socket');
    writeFileSync(filePath, 'keep me');
    await assert.rejects(startHandlerServer({ socketPath: filePath, source }), { code: 'EADDRINUSE', message: /exists and is not a socket/ });
    assert.equal(readFileSync(filePath, 'utf8'), 'keep me');
  });
});

async function waitFor(condition: () => boolean, what: string, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(5);
  }
}

describe('the handler server\'s page cache (zero-copy restore for clients that ask)', { skip, timeout: TEST_TIMEOUT_MS }, () => {
  async function serveWithCache(t: TestContext): Promise<Awaited<ReturnType<typeof serve>> & { cache: SharedPageCache }> {
    const source = await openFile(t, 'snapshot');
    const cache = SharedPageCache.create(source.sizeBytes, source.description);
    const served = await serve(t, source, { pageCache: cache });
    // After the server (t.after runs in reverse order of registration).
    t.after(() => cache.close());
    return { ...served, cache };
  }

  test('a client that asks maps the cache: the first reads and checks each page into it, the next reads nothing, and no client\'s stores reach another', async (t) => {
    const { socketPath, events, gone, cache } = await serveWithCache(t);
    const first = spawnClient(t, { socketPath, pageCount: 256, filePage: 128, send: 'one-message', pageCache: 'ask', store: true });
    assert.equal((await first.waitForEvent('page-cache'))!.sizeBytes, FILE_PAGES * PAGE_SIZE);
    assertAllPagesMatch(await first.waitForEvent('result'), 256);
    assert.equal(first.event('stored')!.ok, true, 'the client\'s stores are in its memory');
    const one = await gone(1);
    assertClientLeft(one);
    assert.equal(one.pageCache, true);
    // 224 data pages (every 8th is zero), each put in the cache once, by the
    // probe or the pager; and the region's last page, a zero page, by the probe.
    assert.equal(one.probePagesCopied, 2);
    assert.equal(one.metrics!.cacheFills + one.probePagesCopied, 225, `fills ${one.metrics!.cacheFills}, probe ${one.probePagesCopied}`);
    assert.equal(cache.filledPageCount(), 225);

    const second = spawnClient(t, { socketPath, pageCount: 256, filePage: 128, send: 'one-message', pageCache: 'ask' }, 20_000, 'second client');
    assertAllPagesMatch(await second.waitForEvent('result'), 256);
    const two = await gone(2);
    assert.equal(two.metrics!.sourceReads, 0, 'the second client\'s pages all came from the cache');
    assert.equal(two.metrics!.cacheFills, 0);
    assert.equal(two.metrics!.pagesCopied, 0, 'read, not written: mapped, not copied');
    assert.equal(two.metrics!.pagesMapped + two.probePagesCopied, 225);
    assert.deepEqual(events.filter((e) => e.type === 'error'), []);
  });

  test('a Firecracker client of the same server is served by copy, as before', async (t) => {
    const { socketPath, gone } = await serveWithCache(t);
    const client = spawnClient(t, { socketPath, pageCount: 64, filePage: 0, send: 'one-message' });
    assertAllPagesMatch(await client.waitForEvent('result'), 64);
    const summary = await gone(1);
    assert.equal(summary.pageCache, false);
    assert.equal(summary.metrics!.pagesMapped, 0);
  });

  test('a client that leaves MINOR out of its registration gets it from the server (else cache pages would map before their bytes are in), and is served right', async (t) => {
    const { socketPath, events, gone } = await serveWithCache(t);
    // A first client fills the cache, so the second's pages are all there and only MINOR faults would reach the server.
    assertAllPagesMatch(await spawnClient(t, { socketPath, pageCount: 64, filePage: 0, send: 'one-message', pageCache: 'ask' }).waitForEvent('result'), 64);
    const client = spawnClient(t, { socketPath, pageCount: 64, filePage: 0, send: 'one-message', pageCache: 'missing-only' }, 20_000, 'missing-only client');
    assertAllPagesMatch(await client.waitForEvent('result'), 64);
    const summary = await gone(2);
    assert.ok(summary.metrics!.pagesMapped > 0, 'its faults came to the server as MINOR faults');
    assert.deepEqual(events.filter((e) => e.type === 'error'), []);
  });

  test('a client that asks for the cache but describes memory that cannot be a mapping of it is refused, and the next client is served', async (t) => {
    const { socketPath, events, gone } = await serveWithCache(t);
    const refused = spawnClient(t, { socketPath, pageCount: 64, filePage: 0, send: 'one-message', pageCache: 'anonymous' });
    await refused.waitForEvent('closed-by-server');
    const summary = await gone(1);
    assert.equal(summary.endReason, 'refused');
    assert.equal(events.find((e) => e.type === 'error' && e.id === 1)?.code, 'ENOTMINOR');
    assert.match(summary.endError!, /cannot be registered in MINOR mode: it is not a mapping of the page cache/);
    const next = spawnClient(t, { socketPath, pageCount: 64, filePage: 0, send: 'one-message', pageCache: 'ask' }, 20_000, 'next client');
    assertAllPagesMatch(await next.waitForEvent('result'), 64);
  });

  test('a server without a page cache refuses the request, naming the flag', async (t) => {
    const source = await openFile(t, 'snapshot');
    const { socketPath, events, gone } = await serve(t, source);
    const client = spawnClient(t, { socketPath, pageCount: 64, filePage: 0, send: 'one-message', pageCache: 'ask' });
    await client.waitForEvent('closed-by-server');
    const summary = await gone(1);
    assert.equal(summary.endReason, 'refused');
    assert.equal(events.find((e) => e.type === 'error')?.code, 'EHANDSHAKE');
    assert.match(summary.endError!, /this server keeps no page cache \(start it with --page-cache\)/);
  });
});
