// `userfault snapshot push` and `pull` against a local S3 store: the file
// comes back byte for byte, a corrupt snapshot is never published, a damaged
// object is never written to disk, and the store's refusals are typed errors
// with the exit statuses of src/exit-codes.ts.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ExitCode } from '../../src/exit-codes.js';
import { writeSnapshot } from '../../src/snapshot/index.js';
import { ChunkCorruptError, SnapshotObjectFormatError } from '../../src/snapshot/object-errors.js';
import { ObjectNotFoundError, S3UrlError } from '../../src/s3/errors.js';
import { S3Object } from '../../src/s3/s3-object.js';
import { parseS3Url } from '../../src/s3/s3-url.js';
import { pullSnapshot } from '../../src/s3/snapshot-pull.js';
import { pushSnapshot } from '../../src/s3/snapshot-push.js';
import { corruptStoredPage, CLI_MAIN } from '../vm/helpers.js';
import { LocalS3Store } from '../fixtures/s3-store.js';

const PAGE = 4096;

describe('snapshot push and pull', { timeout: 120_000 }, () => {
  let dir = '';
  let store: LocalS3Store;
  let snap = '';
  const cli = (...args: string[]) => spawnSync(process.execPath, [CLI_MAIN, ...args], { encoding: 'utf8', env: store.env(), timeout: 60_000, killSignal: 'SIGKILL' });

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'uf-push-'));
    store = await LocalS3Store.start();
    process.env.AWS_ACCESS_KEY_ID = 'S3RVER';
    process.env.AWS_SECRET_ACCESS_KEY = 'S3RVER';
    process.env.AWS_EC2_METADATA_DISABLED = 'true';
    // 12 MiB of image in two regions with a gap: large enough for a multipart upload of 5 MiB parts.
    const image = new Uint8Array(3200 * PAGE);
    for (let page = 0; page < 3200; page++) if (page % 3 !== 0) image.fill((page * 13) & 255 || 1, page * PAGE, page * PAGE + 2000);
    snap = join(dir, 'a.snap');
    await writeSnapshot(snap, {
      regions: [{ imageOffset: 0, lengthBytes: 1000 * PAGE, name: 'low' }, { imageOffset: 1200 * PAGE, lengthBytes: 2000 * PAGE, name: 'high', guestPhysAddress: 0x1_0000_0000 }],
      imageSizeBytes: 3200 * PAGE,
      content: image,
      metadata: Buffer.from(JSON.stringify({ note: 'kept verbatim' })),
    });
  });
  after(async () => {
    await store?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  test('push then pull gives the file back byte for byte (one PUT, and a multipart upload)', async () => {
    for (const [key, partBytes] of [['single', undefined], ['multi', 5 * 1024 * 1024]] as const) {
      const pushed = await pushSnapshot(snap, parseS3Url(store.url(key)), { endpoint: store.endpoint, partBytes, chunkBytes: 64 * 1024 });
      assert.equal(pushed.partCount > 1, partBytes !== undefined, `${key}: ${pushed.partCount} parts`);
      assert.equal(pushed.zeroPageCount, 1001, 'zero pages are not stored');
      const back = join(dir, `${key}.snap`);
      const pulled = await pullSnapshot(parseS3Url(store.url(key)), back, { endpoint: store.endpoint, requestBytes: 1024 * 1024 });
      assert.ok(pulled.requests > 3, 'many range requests');
      assert.ok(Buffer.compare(readFileSync(back), readFileSync(snap)) === 0, `${key}: identical`);
    }
  });

  test('the CLI: push and pull with --json, and inspect passes on the pulled file', () => {
    const push = cli('snapshot', 'push', snap, store.url('cli/a'), '--chunk', '1M', '--json');
    assert.equal(push.status, 0, push.stderr);
    const summary = JSON.parse(push.stdout) as { chunkBytes: number; chunkCount: number; url: string };
    assert.deepEqual({ chunkBytes: summary.chunkBytes, chunkCount: summary.chunkCount, url: summary.url }, { chunkBytes: 1 << 20, chunkCount: 12, url: store.url('cli/a') });
    const back = join(dir, 'cli.snap');
    const pull = cli('snapshot', 'pull', store.url('cli/a'), back);
    assert.equal(pull.status, 0, pull.stderr);
    assert.match(pull.stdout, /^pulled s3:\/\/snapshots\/cli\/a to .*cli\.snap: [\d.]+ MiB \(12 chunks, 1999 data pages, every page checked\) in \d+ requests/);
    assert.equal(cli('snapshot', 'inspect', back).status, 0);
  });

  test('a corrupt snapshot is refused by push: nothing is uploaded', async () => {
    const bad = join(dir, 'bad.snap');
    await writeSnapshot(bad, { regions: [{ imageOffset: 0, lengthBytes: 64 * PAGE }], content: new Uint8Array(64 * PAGE).fill(3) });
    await corruptStoredPage(bad);
    const push = cli('snapshot', 'push', bad, store.url('bad'));
    assert.equal(push.status, ExitCode.DATA, push.stderr);
    assert.match(push.stderr, /snapshot page 63 .* is corrupt: CRC32C .*\[ESNAPSHOT_CORRUPT\]/);
    await assert.rejects(S3Object.open(parseS3Url(store.url('bad')), { endpoint: store.endpoint }).head(), ObjectNotFoundError);
  });

  test('a damaged object is refused by pull: no file is left at the path', async () => {
    await pushSnapshot(snap, parseS3Url(store.url('damaged')), { endpoint: store.endpoint });
    const object = S3Object.open(parseS3Url(store.url('damaged')), { endpoint: store.endpoint });
    const bytes = await object.readRange(0, (await object.head()).sizeBytes);
    bytes[bytes.length - 5000] ^= 1;
    await object.put(bytes);
    object.close();
    const out = join(dir, 'pulled-damaged', 'x.snap');
    rmSync(join(dir, 'pulled-damaged'), { recursive: true, force: true });
    const { mkdirSync } = await import('node:fs');
    mkdirSync(join(dir, 'pulled-damaged'));
    await assert.rejects(pullSnapshot(parseS3Url(store.url('damaged')), out, { endpoint: store.endpoint, attempts: 2 }), ChunkCorruptError);
    assert.equal(existsSync(out), false);
    assert.deepEqual(readdirSync(join(dir, 'pulled-damaged')), [], 'no temporary file either');
  });

  test('a missing key, a bad URL and an object that is not a snapshot: typed errors and exit statuses', async () => {
    const missing = cli('snapshot', 'pull', store.url('nope'), join(dir, 'nope.snap'), '--json');
    assert.equal(missing.status, ExitCode.NO_INPUT, missing.stderr);
    assert.equal((JSON.parse(missing.stderr) as { error: { code: string } }).error.code, 'ES3_NOT_FOUND');
    const url = cli('snapshot', 'push', snap, 's3://Bad_Bucket/x');
    assert.equal(url.status, ExitCode.USAGE);
    assert.match(url.stderr, /is not an s3:\/\/BUCKET\/KEY URL: bucket "Bad_Bucket"/);
    assert.throws(() => parseS3Url('s3://bucket'), S3UrlError);
    await S3Object.open(parseS3Url(store.url('text')), { endpoint: store.endpoint }).put(Buffer.from('hello, not a snapshot'));
    await assert.rejects(pullSnapshot(parseS3Url(store.url('text')), join(dir, 'text.snap'), { endpoint: store.endpoint }), SnapshotObjectFormatError);
    const text = cli('snapshot', 'pull', store.url('text'), join(dir, 'text.snap'));
    assert.equal(text.status, ExitCode.DATA);
    assert.match(text.stderr, /shorter than a 128-byte header .*\[ESNAPSHOT_OBJECT\]/);
  });

  test('a store that does not answer: push fails with ES3_UNAVAILABLE (exit 69), not a hang', () => {
    const push = spawnSync(process.execPath, [CLI_MAIN, 'snapshot', 'push', snap, store.url('x'), '--endpoint', 'http://127.0.0.1:1'], { encoding: 'utf8', env: store.env(), timeout: 60_000 });
    assert.equal(push.status, ExitCode.UNAVAILABLE, push.stderr);
    assert.match(push.stderr, /the store is unavailable: .*ECONNREFUSED.*\[ES3_UNAVAILABLE\]/);
  });
});
