// One progress display for every long operation: redrawn in place on a
// terminal, a plain line when something worth a line changed otherwise,
// nothing under --json; and the commands that use it.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { after, before, describe, test } from 'node:test';
import { ByteProgress, ProgressView } from '../../src/cli/progress.js';
import { controlRequest } from '../../src/vmm-host/control-api.js';
import { CLI_MAIN, cleanupList, kvmSkipReason, spawnCli, spawnVmm, waitForSocket } from '../vm/helpers.js';

/** A stream that keeps what is written to it. */
function sink(): { stream: Writable; text: () => string } {
  let text = '';
  const stream = new Writable({ write: (chunk: Buffer, _encoding, done) => { text += chunk.toString('utf8'); done(); } });
  return { stream, text: () => text };
}

describe('the progress view', () => {
  test('on a terminal: one line redrawn in place, other output around it, a newline at the end', () => {
    const out = sink();
    const view = new ProgressView('tty', out.stream);
    view.show('step 1', 'a', true);
    view.show('step 2', 'a'); // within 100 ms of the last draw: not drawn
    view.show('step 3', 'b', true);
    view.around(() => out.stream.write('guest says hi\n'));
    view.end();
    assert.equal(out.text(), '\r\x1b[Kstep 1\r\x1b[Kstep 3\r\x1b[Kguest says hi\nstep 3\r\x1b[Kstep 3\n');
  });

  test('not a terminal: a line when the key changes; nothing to clear or end', () => {
    const out = sink();
    const view = new ProgressView('lines', out.stream);
    const bar = new ByteProgress(view, 'writing x');
    for (let done = 0; done <= 100; done += 5) bar.update(done << 20, 100 << 20);
    view.around(() => out.stream.write('other\n'));
    view.clear();
    view.end();
    const lines = out.text().trim().split('\n');
    assert.deepEqual(lines.filter((l) => l !== 'other').map((l) => /\((\d+)%\)/.exec(l)?.[1]), ['0', '10', '20', '30', '40', '50', '60', '70', '80', '90', '100']);
    assert.match(lines[0]!, /^writing x: 0 of 100 MiB \(0%\)$/);
    assert.doesNotMatch(out.text(), /\x1b/);
  });

  test('under --json: nothing at all', () => {
    const out = sink();
    const view = new ProgressView('off', out.stream);
    new ByteProgress(view, 'x').update(1, 2);
    view.around(() => out.stream.write('passed through\n'));
    view.end();
    assert.equal(out.text(), 'passed through\n');
  });
});

const skip = kvmSkipReason();

describe('progress of the VM commands', { skip, timeout: 120_000 }, () => {
  let dir = '';
  let snap = '';
  let sock = '';
  const cleanup = cleanupList();

  before(async () => {
    if (skip) return;
    dir = mkdtempSync(join(tmpdir(), 'uf-progress-'));
    snap = join(dir, 'vm.snap');
    sock = join(dir, 'run.sock');
    // 256 MiB written by the guest: a snapshot of it takes long enough to be followed.
    const run = spawnVmm(cleanup, ['run', '--mem', '256M', '--cmdline', 'workload=writer mem=192 hb=10', '--api-sock', sock]);
    await waitForSocket(sock);
    await run.console.waitFor(/fill pages=49152/, 60_000);
  });
  after(() => {
    cleanup.run();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  test('vm snapshot: plain progress lines on stderr when it is not a terminal, none with --json', () => {
    const text = spawnSync(process.execPath, [CLI_MAIN, 'vm', 'snapshot', '--api-sock', sock, '--out', snap, '--resume'], { encoding: 'utf8', timeout: 60_000 });
    assert.equal(text.status, 0, text.stderr);
    assert.match(text.stdout, /^snapshot .*vm\.snap: /m);
    assert.match(text.stderr, /^writing .*vm\.snap: \d+ of 256 MiB \(\d+%\)/m);
    assert.doesNotMatch(text.stderr, /\x1b/);
    const json = spawnSync(process.execPath, [CLI_MAIN, 'vm', 'snapshot', '--api-sock', sock, '--out', snap, '--resume', '--json'], { encoding: 'utf8', timeout: 60_000 });
    assert.equal(json.status, 0, json.stderr);
    assert.equal(json.stderr, '');
    assert.ok(JSON.parse(json.stdout).fileSizeBytes > 0);
  });

  test('vm restore, eager: loading guest memory shows its progress; lazy --prefetch-all follows the stream to the end', async (t) => {
    const eager = spawnCli(t, ['vm', 'restore', snap, '--no-stdin', '--api-sock', join(dir, 'eager.sock')]);
    await eager.console.waitFor(/^hb /m, 30_000);
    assert.match(eager.stderr(), /^loading guest memory: \d+ of 256 MiB \(100%\)/m);
    assert.match(eager.stderr(), /^vm: restored \(eager\)/m);
    await controlRequest(join(dir, 'eager.sock'), 'PUT', '/actions', { action_type: 'Stop' });
    assert.equal(await eager.exit, 0, eager.stderr());

    const lazy = spawnCli(t, ['vm', 'restore', snap, '--lazy', '--prefetch-all', '--no-stdin', '--api-sock', join(dir, 'lazy.sock')]);
    const deadline = Date.now() + 30_000;
    while (!/^prefetching every page: \d+ of \d+ MiB \(100%\)/m.test(lazy.stderr())) {
      assert.ok(Date.now() < deadline, `no end of prefetch-all:\n${lazy.stderr()}`);
      await new Promise((r) => setTimeout(r, 50));
    }
    await controlRequest(join(dir, 'lazy.sock'), 'PUT', '/actions', { action_type: 'Stop' });
    assert.equal(await lazy.exit, 0, lazy.stderr());
  });
});
