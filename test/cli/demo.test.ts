// `userfault demo` interrupted, and refusing to start without room for its snapshot.
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, readdirSync, rmSync, statfsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, test, type TestContext } from 'node:test';
import { demoSnapshotBytes } from '../../src/demo/demo.js';
import { ExitCode } from '../../src/exit-codes.js';
import { CLI, jsonError, runWith } from './helpers.js';

function tempDir(t: TestContext): string {
  const dir = mkdtempSync(join(tmpdir(), 'userfault-demo-test-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** Start a demo with its temporary files in `dir`; resolve once it prints `marker`, then send `signal`. */
async function interruptDemo(t: TestContext, dir: string, args: string[], marker: RegExp, signal: NodeJS.Signals) {
  const child = spawn(process.execPath, [CLI, 'demo', ...args], { env: { ...process.env, TMPDIR: dir }, stdio: ['ignore', 'pipe', 'pipe'] });
  const limit = setTimeout(() => child.kill('SIGKILL'), 60_000);
  t.after(() => {
    clearTimeout(limit);
    child.kill('SIGKILL');
  });
  let stdout = '';
  let stderr = '';
  child.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
  const exit = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => child.once('exit', (code, sig) => resolve({ code, signal: sig })));
  await new Promise<void>((resolve, reject) => {
    child.stdout.setEncoding('utf8').on('data', (chunk: string) => {
      stdout += chunk;
      if (marker.test(stdout)) resolve();
    });
    void exit.then(() => reject(new Error(`the demo exited before ${marker}:\n${stdout}\n${stderr}`)));
  });
  const filesWhenSignalled = readdirSync(dir);
  child.kill(signal);
  const status = await exit;
  clearTimeout(limit);
  return { status, stdout, stderr, filesWhenSignalled };
}

describe('userfault demo, interrupted', { timeout: 90_000 }, () => {
  test('SIGTERM while the snapshot is being written removes it and the demo dies of the signal', async (t) => {
    const dir = tempDir(t);
    // 1 GiB takes seconds to write; the line is printed just before the first page is.
    const result = await interruptDemo(t, dir, ['--size', '1G'], /^writing a snapshot of a \d+-byte image to .*demo\.snap$/m, 'SIGTERM');
    assert.equal(result.filesWhenSignalled.length, 1, 'the demo\'s directory existed');
    assert.deepEqual(result.status, { code: null, signal: 'SIGTERM' });
    assert.match(result.stderr, /^userfault: SIGTERM: the demo was stopped and its temporary snapshot removed \[EINTERRUPTED\]$/m);
    assert.deepEqual(readdirSync(dir), [], 'nothing left behind');
  });

  test('SIGINT once the memory is restored: the snapshot is already gone, and nothing is left behind', async (t) => {
    const dir = tempDir(t);
    const result = await interruptDemo(t, dir, ['--size', '64M'], /^lazy memory ready/m, 'SIGINT');
    assert.deepEqual(result.filesWhenSignalled, [], 'removed as soon as the pager had it open');
    // The demo may finish touching before the signal lands; either way nothing is left.
    assert.ok(result.status.signal === 'SIGINT' || result.status.code === 0, JSON.stringify(result.status));
    assert.deepEqual(readdirSync(dir), []);
  });
});

describe('userfault demo on a terminal', { skip: spawnSync('script', ['--version']).status === 0 ? undefined : 'no script(1) to give the demo a terminal' }, () => {
  /** The demo under script(1): its stdout and stderr are a pseudo-terminal. */
  const onTerminal = (...args: string[]) =>
    spawnSync('script', ['-qec', [process.execPath, CLI, 'demo', ...args].map((a) => `'${a}'`).join(' '), '/dev/null'], { encoding: 'utf8', timeout: 60_000, killSignal: 'SIGKILL' });

  test('draws its progress in place while it writes and touches; under --json it draws nothing', () => {
    const text = onTerminal('--size', '64M');
    assert.equal(text.status, 0, text.stdout);
    assert.match(text.stdout, /\r\x1b\[Kwriting the snapshot: \d+ of 64 MiB \(\d+%\)/);
    assert.match(text.stdout, /\r\x1b\[Ktouching pages: \d+ of 64 MiB \(\d+%\)/);
    assert.match(text.stdout, /verify: every page matches the snapshot/);
    const json = onTerminal('--size', '64M', '--json');
    assert.equal(json.status, 0, json.stdout);
    assert.doesNotMatch(json.stdout, /writing the snapshot|\x1b/);
    assert.deepEqual((JSON.parse(json.stdout) as { badPages: number[] }).badPages, []);
  });
});

describe('userfault demo, without room for its snapshot', () => {
  test('is refused before writing anything, naming the space it needs and the directory (exit 73)', (t) => {
    const dir = tempDir(t);
    const fs = statfsSync(dir);
    const availableBytes = fs.bavail * fs.bsize;
    // A size whose snapshot does not fit, rounded to whole GiB.
    let sizeGiB = Math.ceil(availableBytes / 2 ** 30) + 1;
    while (demoSnapshotBytes(sizeGiB * 2 ** 30) <= availableBytes) sizeGiB++;
    const text = runWith({ env: { ...process.env, TMPDIR: dir } }, 'demo', '--size', `${sizeGiB}G`);
    assert.equal(text.status, ExitCode.CANT_CREATE, text.stderr);
    assert.match(text.stderr, new RegExp(`^userfault: the demo's temporary snapshot needs [\\d.]+ GiB in ${dir}, which has [\\d.]+ \\w+ free: .*TMPDIR.*--size \\[ENOSPACE\\]$`, 'm'));
    assert.deepEqual(readdirSync(dir), []);

    const json = runWith({ env: { ...process.env, TMPDIR: dir } }, 'demo', '--size', `${sizeGiB}G`, '--json');
    assert.equal(json.status, ExitCode.CANT_CREATE);
    const error = jsonError(json.stderr);
    assert.equal(error.code, 'ENOSPACE');
    assert.equal(error.directory, dir);
    assert.ok((error.neededBytes as number) > (error.availableBytes as number));
  });
});
