// `userfault vm ...` end to end: run a guest briefly, snapshot it through the
// control socket, restore it lazily and drive it, all through the CLI.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { statSync } from 'node:fs';
import { join } from 'node:path';
import { guestCmdline } from '../../src/cli/vm-commands.js';
import { CLI_MAIN, kvmSkipReason, spawnCli, tempDir, waitForSocket } from './helpers.js';

const skip = kvmSkipReason();

function cli(args: string[]): { status: number | null; stdout: string; stderr: string } {
  const result = spawnSync(process.execPath, [CLI_MAIN, ...args], { encoding: 'utf8', timeout: 20000 });
  return { status: result.status, stdout: result.stdout, stderr: result.stderr };
}

describe('userfault vm: options', () => {
  test('the workload options make the micro guest\'s command line; --cmdline is taken verbatim and alone', () => {
    assert.equal(guestCmdline({}), 'workload=idle');
    assert.equal(guestCmdline({ workload: 'writer', workloadMem: '16', pattern: 'random', rate: '1000', hb: '10' }), 'workload=writer mem=16 rate=1000 pattern=random hb=10');
    assert.equal(guestCmdline({ cmdline: 'workload=verify mem=4' }), 'workload=verify mem=4');
    assert.throws(() => guestCmdline({ cmdline: 'workload=idle', workloadMem: '4' }), /--workload-mem/);
  });

  test('a bad option is refused with the reason, before any VM exists', () => {
    const bad = cli(['vm', 'run', '--workload', 'sleeper']);
    assert.notEqual(bad.status, 0);
    assert.match(bad.stderr, /Allowed choices are idle, writer, verify/);
    const notLazy = cli(['vm', 'restore', '/nonexistent.snap', '--prefetch-all']);
    assert.notEqual(notLazy.status, 0);
    assert.match(notLazy.stderr, /apply to --lazy/);
  });

  test('talking to a socket nobody serves says so', () => {
    const result = cli(['vm', 'status', '--api-sock', '/nonexistent/vm.sock']);
    assert.equal(result.status, 69, 'unavailable (sysexits EX_UNAVAILABLE)');
    assert.match(result.stderr, /no VM is listening on \/nonexistent\/vm\.sock \[ENOVM\]/);
  });
});

describe('userfault vm: a guest through the CLI', { skip, timeout: 60000 }, () => {
  test('vm run: the writer runs its beats, verifies and finishes; the console is on stdout', async (t) => {
    const run = spawnCli(t, ['vm', 'run', '--mem', '16M', '--workload', 'writer', '--workload-mem', '4', '--hb', '5', '--beats', '3']);
    assert.equal(await run.exit, 0, run.stderr());
    assert.match(run.console.text, /micro: boot workload=writer mem=4/);
    assert.deepEqual(run.console.heartbeats(), [1, 2, 3]);
    assert.match(run.console.text, /verify pages=1024 bad=0/);
    assert.match(run.stderr(), /^vm: running \(built and loaded in [\d.]+ ms\)$/m);
    assert.match(run.stderr(), /^vm: exited after [\d.]+ s: the guest is done, status 0$/m);
  });

  test('vm run with a missing image: a clean error and exit 66', async (t) => {
    const run = spawnCli(t, ['vm', 'run', '--guest', '/nonexistent/guest.elf', '--mem', '16M']);
    assert.equal(await run.exit, 66, 'no input (sysexits EX_NOINPUT)');
    assert.match(run.stderr(), /EIMAGENOTFOUND/);
  });

  test('vm snapshot through the socket, vm restore --lazy, vm status / input: timings and faults printed', async (t) => {
    const dir = tempDir(t);
    const sock = join(dir, 'run.sock');
    const snap = join(dir, 'vm.snap');
    const run = spawnCli(t, ['vm', 'run', '--mem', '32M', '--workload', 'writer', '--workload-mem', '8', '--hb', '10', '--pattern', 'random', '--api-sock', sock, '--log', join(dir, 'console.log')]);
    await waitForSocket(sock);
    await run.console.waitFor(/hb 2 [^\n]*\n/);
    const status = cli(['vm', 'status', '--api-sock', sock]);
    assert.equal(status.status, 0, status.stderr);
    assert.match(status.stdout, /^state: running/);
    assert.match(status.stdout, /^state: running, memory 32 MiB$/m);
    assert.deepEqual(cli(['vm', 'pause', '--api-sock', sock]), { status: 0, stdout: 'paused\n', stderr: '' });
    assert.deepEqual(cli(['vm', 'pause', '--api-sock', sock]), { status: 0, stdout: 'already paused\n', stderr: '' });
    assert.match(cli(['vm', 'status', '--api-sock', sock]).stdout, /^state: paused/);
    assert.deepEqual(cli(['vm', 'resume', '--api-sock', sock, '--json']), { status: 0, stdout: '{"state":"running","changed":true}\n', stderr: '' });
    assert.deepEqual(cli(['vm', 'resume', '--api-sock', sock]), { status: 0, stdout: 'already running\n', stderr: '' });

    const snapshot = cli(['vm', 'snapshot', '--api-sock', sock, '--out', snap, '--stop']);
    assert.equal(snapshot.status, 0, snapshot.stderr);
    assert.match(snapshot.stdout, /^snapshot .*vm\.snap: [\d.]+ MiB \(\d+ data pages, \d+ zero pages not stored\) in [\d.]+ ms .*the VM is stopped$/m);
    assert.equal(await run.exit, 0, run.stderr());
    assert.ok(statSync(snap).size > 8 << 20);
    const last = run.console.heartbeats().at(-1)!;
    assert.equal(statSync(join(dir, 'console.log')).size, Buffer.byteLength(run.console.text, 'latin1'));

    const sock2 = join(dir, 'lazy.sock');
    const restored = spawnCli(t, ['vm', 'restore', snap, '--lazy', '--api-sock', sock2]);
    await waitForSocket(sock2);
    await restored.console.waitFor(new RegExp(`hb ${last + 1} `));
    const lazyStatus = cli(['vm', 'status', '--api-sock', sock2]);
    assert.match(lazyStatus.stdout, /restored lazy, ready in [\d.]+ ms/);
    assert.match(lazyStatus.stdout, /lazy memory: [1-9]\d* faults served/);
    const input = cli(['vm', 'input', 'q', '--api-sock', sock2]);
    assert.equal(input.status, 0, `${input.stderr}\nthe VMM said:\n${restored.stderr()}`);
    assert.equal(input.stdout, 'sent 1 byte to COM1\n');
    assert.equal(await restored.exit, 0, restored.stderr());
    assert.equal(restored.console.heartbeats()[0], last + 1);
    assert.match(restored.console.text, /verify pages=2048 bad=0/);
    assert.match(restored.stderr(), /^vm: restored \(lazy\): resumed in [\d.]+ ms \[opened [\d.]+, built [\d.]+, every page checked [\d.]+, memory registered [\d.]+, vCPUs ready [\d.]+ ms\]/m);
    assert.match(restored.stderr(), /^vm: lazy memory: [1-9]\d* faults served, [1-9]\d* pages copied/m);
    assert.match(restored.stderr(), /^vm: fault latency: p50 \d+ us/m);
  });
});
