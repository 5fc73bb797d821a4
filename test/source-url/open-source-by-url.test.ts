// openSourceByUrl: the one dispatch from a URL to a page source, against a
// real page server and a local S3 store; a URL it cannot open refused with a
// typed error before anything is contacted.
import { after, before, describe, test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AddressError } from '../../src/net/address.js';
import { startPageServer, type PageServer } from '../../src/pages/index.js';
import { S3UrlError } from '../../src/s3/errors.js';
import { parseS3Url } from '../../src/s3/s3-url.js';
import { pushSnapshot } from '../../src/s3/snapshot-push.js';
import { writeSnapshot } from '../../src/snapshot/index.js';
import { SourceUrlError } from '../../src/source-url/errors.js';
import { openSourceByUrl, sourceUrlKind } from '../../src/source-url/open-source-by-url.js';
import { BufferSource } from '../../src/sources/buffer-source.js';
import { SourceGoneError } from '../../src/sources/page-source.js';
import { LocalS3Store } from '../fixtures/s3-store.js';

const PAGE = 4096;
const PAGES = 64;

function image(seed: number): Uint8Array {
  const bytes = new Uint8Array(PAGES * PAGE);
  for (let page = 0; page < PAGES; page++) if (page % 4 !== 3) bytes.fill((page * 7 + seed) & 255 || 1, page * PAGE, (page + 1) * PAGE);
  return bytes;
}

async function pageServer(t: TestContext, bytes: Uint8Array): Promise<PageServer> {
  const server = await startPageServer({ source: new BufferSource(bytes) });
  t.after(() => server.close());
  return server;
}

describe('the kind of source a URL names', () => {
  test('tcp:// is a page server and s3:// an object store, whatever the case of the scheme', () => {
    assert.equal(sourceUrlKind('tcp://127.0.0.1:7000'), 'page-server');
    assert.equal(sourceUrlKind('TCP://[::1]:7000'), 'page-server');
    assert.equal(sourceUrlKind('s3://snapshots/vm1'), 'object-store');
  });

  test('any other scheme, a bare path and no URL at all are refused with SourceUrlError (EUSAGE), naming the schemes taken', () => {
    for (const url of ['http://127.0.0.1:7000', 'file:///tmp/a.snap', '/tmp/a.snap', '127.0.0.1:7000', '']) {
      assert.throws(() => sourceUrlKind(url), (error: unknown) => {
        assert.ok(error instanceof SourceUrlError, `${JSON.stringify(url)}: ${String(error)}`);
        assert.equal(error.code, 'EUSAGE');
        assert.equal(error.url, url);
        assert.match(error.message, /tcp:\/\/HOST:PORT .*s3:\/\/BUCKET\/KEY/);
        return true;
      });
    }
  });
});

describe('openSourceByUrl', { timeout: 60_000 }, () => {
  test('a URL it cannot open is refused, typed, before anything is contacted', async () => {
    // Port 1 on loopback: nothing listens there, so a contact would fail otherwise (PeerUnavailableError), not as these do.
    await assert.rejects(openSourceByUrl('http://127.0.0.1:1'), SourceUrlError);
    await assert.rejects(openSourceByUrl('tcp://127.0.0.1'), AddressError);
    await assert.rejects(openSourceByUrl('s3://Bad_Bucket/key'), S3UrlError);
    await assert.rejects(openSourceByUrl('tcp://127.0.0.1:1', { kinds: ['object-store'] }), { name: 'SourceUrlError', message: /names a page server \(tcp:\/\/\); only an object store \(s3:\/\/\) is taken/ });
    await assert.rejects(openSourceByUrl('s3://snapshots/x', { kinds: ['page-server'] }), { name: 'SourceUrlError', message: /names an object store \(s3:\/\/\); only a page server \(tcp:\/\/\) is taken/ });
    await assert.rejects(openSourceByUrl('tcp://127.0.0.1:1', { endpoint: 'http://127.0.0.1:9000' }), { name: 'SourceUrlError', message: /endpoint applies to s3:\/\// });
  });

  test('tcp:// opens a RemoteSource on the page server, whose reads are its image; deadlineMs bounds both of its deadlines', async (t) => {
    const bytes = image(1);
    const server = await pageServer(t, bytes);
    const source = await openSourceByUrl(server.url, { deadlineMs: 4_321, remote: { connectTimeoutMs: 3_000, readDeadlineMs: 1 } });
    t.after(() => source.close());
    assert.equal(source.description, `page server ${server.url}`);
    assert.equal(source.sizeBytes, bytes.length);
    const target = new Uint8Array(bytes.length);
    await source.read(0, bytes.length, target);
    assert.ok(Buffer.from(target).equals(Buffer.from(bytes)));
    const { settings } = source as import('../../src/pages/remote-source.js').RemoteSource;
    assert.equal(settings.readDeadlineMs, 4_321, 'deadlineMs wins over the remote options\' readDeadlineMs');
    assert.equal(settings.reconnectDeadlineMs, 4_321);
    assert.equal(settings.connectTimeoutMs, 3_000, 'the remote options reach the source');
  });

  test('tcp:// loads no S3 code: the object store\'s source (and with it the AWS SDK) is imported only for s3://', async (t) => {
    const server = await pageServer(t, image(2));
    const moduleUrl = new URL('../../src/source-url/open-source-by-url.js', import.meta.url).href;
    // A resolve hook in a child process reports every module it loads.
    const hook = 'let port; export function initialize(data) { port = data.port; } ' +
      'export async function resolve(specifier, context, next) { const found = await next(specifier, context); port.postMessage(found.url); return found; }';
    const script = `
      import { register } from 'node:module';
      import { MessageChannel } from 'node:worker_threads';
      const { port1, port2 } = new MessageChannel();
      const loaded = [];
      port1.on('message', (url) => loaded.push(url));
      register('data:text/javascript,' + encodeURIComponent(${JSON.stringify(hook)}), { data: { port: port2 }, transferList: [port2] });
      const { openSourceByUrl } = await import(${JSON.stringify(moduleUrl)});
      const source = await openSourceByUrl(${JSON.stringify(server.url)});
      await source.read(0, 4096, new Uint8Array(4096));
      await source.close();
      await new Promise((resolve) => setTimeout(resolve, 100));
      port1.close();
      process.stdout.write(JSON.stringify(loaded));
    `;
    const child = spawn(process.execPath, ['--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (chunk: Buffer) => { stdout += chunk.toString(); });
    child.stderr.on('data', (chunk: Buffer) => { stderr += chunk.toString(); });
    const timer = setTimeout(() => child.kill('SIGKILL'), 20_000);
    const code = await new Promise<number | null>((resolve) => child.once('exit', resolve));
    clearTimeout(timer);
    assert.equal(code, 0, `the child failed: ${stderr}`);
    const loaded = JSON.parse(stdout) as string[];
    assert.ok(loaded.some((url) => url.endsWith('/pages/remote-source.js')), 'the hook saw the remote source load');
    assert.deepEqual(loaded.filter((url) => url.includes('/s3/') || url.includes('aws-sdk')), []);
  });

  describe('s3://', { timeout: 120_000 }, () => {
    let dir = '';
    let store: LocalS3Store;
    const bytes = image(3);

    before(async () => {
      dir = mkdtempSync(join(tmpdir(), 'uf-open-source-'));
      store = await LocalS3Store.start();
      process.env.AWS_ACCESS_KEY_ID = 'S3RVER';
      process.env.AWS_SECRET_ACCESS_KEY = 'S3RVER';
      process.env.AWS_EC2_METADATA_DISABLED = 'true';
      const snap = join(dir, 'a.snap');
      await writeSnapshot(snap, { regions: [{ imageOffset: 0, lengthBytes: bytes.length, name: 'ram' }], content: bytes });
      await pushSnapshot(snap, parseS3Url(store.url('a')), { endpoint: store.endpoint, chunkBytes: 64 * 1024 });
    });
    after(async () => {
      await store?.stop();
      if (dir) rmSync(dir, { recursive: true, force: true });
    });

    test('opens an S3Source at the endpoint given, whose reads are the pushed image', async (t) => {
      const source = await openSourceByUrl(store.url('a'), { endpoint: store.endpoint, s3: { cacheDir: false } });
      t.after(() => source.close());
      assert.equal(source.description.startsWith(`object ${store.url('a')}`), true, source.description);
      const target = new Uint8Array(bytes.length);
      await source.read(0, bytes.length, target, { priority: 'background' });
      assert.ok(Buffer.from(target).equals(Buffer.from(bytes)));
    });

    test('deadlineMs bounds how long the store may not answer: a frozen store makes a read fail gone within it', async (t) => {
      // Each request's own timeout long enough for the opening's requests on a loaded machine; the deadline shorter.
      const source = await openSourceByUrl(store.url('a'), { endpoint: store.endpoint, deadlineMs: 600, s3: { cacheDir: false, requestTimeoutMs: 2_000 } });
      t.after(async () => {
        await store.thaw();
        await source.close();
      });
      await store.freeze();
      const started = performance.now();
      await assert.rejects(source.read(0, PAGE, new Uint8Array(PAGE)), SourceGoneError);
      const waited = performance.now() - started;
      // The first failed request (2 s in) starts the deadline, which then runs 600 ms; a loaded machine gets slack above.
      assert.ok(waited >= 2_500 && waited < 15_000, `failed after ${Math.round(waited)} ms`);
    });
  });
});
