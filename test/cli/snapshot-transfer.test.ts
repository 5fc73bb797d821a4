// `userfault snapshot push` and `pull` against a local S3-compatible store, as
// a user runs them: their progress on stderr (a line a tenth when stderr is
// not a terminal; JSON lines under --json, the result alone on stdout), and a
// push to a bucket the store does not have says so.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { writeSnapshot } from '../../src/snapshot/index.js';
import { LocalS3Store } from '../fixtures/s3-store.js';
import { runWith } from './helpers.js';

const dir = mkdtempSync(join(tmpdir(), 'userfault-transfer-'));
const snapshot = join(dir, 'vm.snap');
let store: LocalS3Store;

before(async () => {
  store = await LocalS3Store.start({ parentDir: dir });
  const image = new Uint8Array(8 << 20).map((_, i) => (i >> 12) & 0xff);
  await writeSnapshot(snapshot, { regions: [{ imageOffset: 0, lengthBytes: image.length }], content: image });
});
after(async () => {
  await store?.stop();
  rmSync(dir, { recursive: true, force: true });
});

const cli = (...args: string[]): ReturnType<typeof runWith> => runWith({ env: store.env(), timeout: 60_000 }, ...args);

interface ProgressLine {
  operation: string;
  doneBytes: number;
  totalBytes: number;
}

function progressLines(stderr: string): ProgressLine[] {
  return stderr.trim().split('\n').map((line) => {
    const parsed = JSON.parse(line) as { progress?: ProgressLine };
    assert.ok(parsed.progress, `only progress lines on stderr: ${line}`);
    return parsed.progress;
  });
}

describe('snapshot push and pull show their progress', { timeout: 120_000 }, () => {
  test('push: the page check, then the upload, a line each tenth, each ending at 100%', () => {
    const result = cli('snapshot', 'push', snapshot, store.url('vm1'));
    assert.equal(result.status, 0, result.stderr);
    assert.match(result.stdout, /^pushed /);
    assert.match(result.stderr, new RegExp(`^checking every page of ${snapshot}: 8 of 8 MiB \\(100%\\)`, 'm'));
    assert.match(result.stderr, /^uploading to s3:\/\/snapshots\/vm1: 0 of 8 MiB \(0%\)$/m);
    assert.match(result.stderr, /^uploading to s3:\/\/snapshots\/vm1: 8 of 8 MiB \(100%\)/m);
  });

  test('push --json: the result alone on stdout, progress as JSON lines on stderr', () => {
    const result = cli('snapshot', 'push', snapshot, store.url('vm2'), '--json');
    assert.equal(result.status, 0, result.stderr);
    assert.equal((JSON.parse(result.stdout) as { url: string }).url, store.url('vm2'));
    const lines = progressLines(result.stderr);
    const upload = lines.filter((l) => l.operation.startsWith('uploading'));
    assert.ok(lines.some((l) => l.operation.startsWith('checking')) && upload.length > 0, JSON.stringify(lines));
    assert.equal(upload.at(-1)!.doneBytes, upload.at(-1)!.totalBytes);
  });

  test('pull, text and --json: the download\'s progress to 100%', () => {
    const text = cli('snapshot', 'pull', store.url('vm1'), join(dir, 'back.snap'));
    assert.equal(text.status, 0, text.stderr);
    assert.match(text.stderr, /^downloading s3:\/\/snapshots\/vm1: 8 of 8 MiB \(100%\)/m);
    const json = cli('snapshot', 'pull', store.url('vm1'), join(dir, 'back2.snap'), '--json');
    assert.equal(json.status, 0, json.stderr);
    const last = progressLines(json.stderr).at(-1)!;
    assert.deepEqual([last.operation, last.doneBytes], ['downloading s3://snapshots/vm1', last.totalBytes]);
  });

  test('push to a bucket the store does not have says so, naming the bucket', () => {
    const result = cli('snapshot', 'push', snapshot, 's3://no-such-bucket/vm1');
    assert.equal(result.status, 66, result.stderr);
    assert.match(result.stderr, /^userfault: s3:\/\/no-such-bucket\/vm1: the store has no bucket "no-such-bucket" .*\[ES3_NOT_FOUND\]$/m);
    assert.doesNotMatch(result.stderr, /no such object/);
  });
});
