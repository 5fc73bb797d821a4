// The README's commands, run as a user would.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { fillPattern } from '../../src/demo/pattern.js';
import { writeSnapshot } from '../../src/snapshot/index.js';

const cli = fileURLToPath(new URL('../../src/cli/main.js', import.meta.url));
const run = (...args: string[]) => spawnSync(process.execPath, [cli, ...args], { encoding: 'utf8', timeout: 60_000, killSignal: 'SIGKILL' });
const dir = mkdtempSync(join(tmpdir(), 'userfault-cli-'));
after(() => rmSync(dir, { recursive: true, force: true }));

describe('userfault CLI', () => {
  test('demo restores a snapshot lazily and finds every page intact', () => {
    const result = run('demo', '--size', '8M', '--pattern', 'random', '--json');
    assert.equal(result.status, 0, result.stderr);
    const report = JSON.parse(result.stdout) as { badPages: number[]; faults: number; pagesCopied: number; zeroPages: number };
    assert.deepEqual(report.badPages, []);
    assert.ok(report.faults > 0);
    assert.equal(report.pagesCopied + report.zeroPages, 2048);
  });

  test('probe lists the kernel\'s userfaultfd features', () => {
    const result = run('probe', '--json');
    assert.equal(result.status, 0, result.stderr);
    const report = JSON.parse(result.stdout) as { features: string[]; ioctls: string[] };
    assert.ok(report.features.includes('EVENT_REMOVE'));
    assert.ok(report.ioctls.includes('REGISTER'));
  });

  test('snapshot inspect verifies a good snapshot and flags a corrupt page with exit status 1', async () => {
    const path = join(dir, 'small.snap');
    const image = new Uint8Array(16 * 4096);
    fillPattern(image, 0);
    await writeSnapshot(path, { regions: [{ imageOffset: 0, lengthBytes: image.length }], content: image });
    const good = run('snapshot', 'inspect', path);
    assert.equal(good.status, 0, good.stderr);
    assert.match(good.stdout, /16/);

    const bytes = readFileSync(path);
    bytes[bytes.length - 100]! ^= 0xff; // inside the last stored page
    writeFileSync(path, bytes);
    const bad = run('snapshot', 'inspect', path, '--json');
    assert.equal(bad.status, 1);
    const report = JSON.parse(bad.stdout) as { ok: boolean };
    assert.equal(report.ok, false);
  });

  test('snapshot inspect of a truncated file fails with a clear error naming the problem', async () => {
    const path = join(dir, 'truncated.snap');
    const image = new Uint8Array(8 * 4096);
    fillPattern(image, 0);
    await writeSnapshot(path, { regions: [{ imageOffset: 0, lengthBytes: image.length }], content: image });
    writeFileSync(path, readFileSync(path).subarray(0, 5000));
    const result = run('snapshot', 'inspect', path);
    assert.equal(result.status, 1);
    assert.match(result.stderr, /^userfault: .*trunc/i);
  });
});
