// `userfault vm ...` end to end: run a guest briefly, snapshot it through the
// control socket, restore it lazily and drive it, all through the CLI.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { accessSync, constants, existsSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { guestCmdline } from '../../src/cli/vm-commands.js';
import { SnapshotFile } from '../../src/snapshot/index.js';
import { CLI_MAIN, kvmSkipReason, spawnCli, tempDir, waitForSocket } from './helpers.js';

const skip = kvmSkipReason();

function cli(args: string[], options: { cwd?: string; uid?: number; gid?: number } = {}): { status: number | null; stdout: string; stderr: string } {
  const result = spawnSync(process.execPath, [CLI_MAIN, ...args], { encoding: 'utf8', timeout: 20000, ...options });
  return { status: result.status, stdout: result.stdout, stderr: result.stderr };
}

/** Every line of `text` parsed as a JSON object (a line that is not one fails the test). */
function jsonLines(text: string): { [key: string]: unknown }[] {
  return text.split('\n').filter((line) => line !== '').map((line) => {
    const value = JSON.parse(line) as unknown;
    assert.ok(typeof value === 'object' && value !== null && !Array.isArray(value), `a JSON object per line: ${line}`);
    return value as { [key: string]: unknown };
  });
}

/** Why the nobody user cannot be used to get EACCES from /dev/kvm here, or undefined. */
function nobodySkipReason(): string | undefined {
  if (process.getuid?.() !== 0) return 'needs root to run a command as nobody';
  const probe = spawnSync(process.execPath, ['-e', 'require("fs").openSync("/dev/kvm", "r+")'], { uid: 65534, gid: 65534, encoding: 'utf8' });
  if (probe.status === 0) return '/dev/kvm is open to everyone here';
  if (!/EACCES/.test(probe.stderr)) return `nobody cannot run node here: ${probe.stderr.split('\n')[0]}`;
  try {
    accessSync(CLI_MAIN, constants.R_OK);
  } catch {
    return 'the CLI is not readable';
  }
  return undefined;
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
    assert.equal(notLazy.status, 64);
    assert.match(notLazy.stderr, /apply to --lazy/);
    // Nothing to check up front on a page server or a store: refused, not silently ignored.
    for (const from of ['tcp://127.0.0.1:9', 's3://bucket/key']) {
      const remote = cli(['vm', 'restore', '--from', from, '--lazy', '--verify-first']);
      assert.equal(remote.status, 64, remote.stderr);
      assert.match(remote.stderr, /--verify-first checks a snapshot file/);
    }
  });

  test('--mem 0, --mem that is not whole pages or over 3 GiB, --cpus 0: refused as usage (64) naming the option, before any VM exists', () => {
    for (const [args, pattern] of [
      [['--mem', '0'], /^userfault: --mem is 0 bytes; it must be a positive number of bytes \[EUSAGE\]$/m],
      [['--mem', '4097'], /--mem is 4097 bytes \(4\.0 KiB\); it must be a multiple of 4096 bytes/],
      [['--mem', '4G'], /--mem is 4294967296 bytes \(4 GiB\); it must be at most 3 GiB/],
      [['--mem', 'lots'], /--mem takes a size \(4096, 64M, 1G\), got "lots"/],
      [['--cpus', '0'], /--cpus takes a positive whole number, got "0"/],
      [['--cpus', '300'], /--cpus is 300; it must be at most 255/],
    ] as const) {
      const result = cli(['vm', 'run', ...args]);
      assert.equal(result.status, 64, `${args.join(' ')}: ${result.stderr}`);
      assert.match(result.stderr, pattern);
    }
  });

  test('--workload-mem that does not fit in --mem is refused naming both, not clamped', () => {
    const result = cli(['vm', 'run', '--mem', '32M', '--workload', 'writer', '--workload-mem', '64']);
    assert.equal(result.status, 64, result.stderr);
    assert.match(result.stderr, /--workload-mem 64 does not fit in --mem 32M: the region starts at 2 MiB, so at most 30 MiB/);
    assert.equal(guestCmdline({ workload: 'writer', workloadMem: '30' }, 32 << 20), 'workload=writer mem=30');
    assert.throws(() => guestCmdline({ workloadMem: '600' }, 2 * 2 ** 30), /at most 512 MiB \(the micro guest's largest region\)/);
  });

  test('--resume with --stop, and empty input, are refused as usage (64) before the VM is asked', () => {
    const both = cli(['vm', 'snapshot', '--api-sock', '/nonexistent/vm.sock', '--out', 'x.snap', '--resume', '--stop']);
    assert.equal(both.status, 64, both.stderr);
    assert.match(both.stderr, /--resume and --stop contradict each other/);
    const empty = cli(['vm', 'input', '', '--api-sock', '/nonexistent/vm.sock']);
    assert.equal(empty.status, 64, empty.stderr);
    assert.match(empty.stderr, /needs at least one byte/);
  });

  test('with --json, errors are JSON too', () => {
    const run = cli(['vm', 'run', '--mem', '0', '--json']);
    assert.equal(run.status, 64);
    assert.deepEqual(jsonLines(run.stderr).map((line) => ({ code: (line.error as { code: string }).code, exitStatus: (line.error as { exitStatus: number }).exitStatus })), [{ code: 'EUSAGE', exitStatus: 64 }]);
    const status = cli(['vm', 'status', '--api-sock', '/nonexistent/vm.sock', '--json']);
    assert.equal(status.status, 69);
    assert.equal(status.stdout, '');
    const error = jsonLines(status.stderr)[0]!.error as { code: string; message: string };
    assert.equal(error.code, 'ENOVM');
    assert.equal(error.message, 'no VM is listening on /nonexistent/vm.sock');
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
    // KVM's PIT delivers the ticks it held while the VM was paused: the guest beats several times at
    // once after a resume. Let that catch-up reach the console before the state is saved.
    const beats = run.console.heartbeats().at(-1) ?? 0;
    await run.console.waitFor(new RegExp(`hb ${beats + 2} `));

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
    assert.match(lazyStatus.stdout, /restored lazy from snapshot \S+vm\.snap, ready in [\d.]+ ms/);
    assert.match(lazyStatus.stdout, /lazy memory: [1-9]\d* faults served/);
    const input = cli(['vm', 'input', 'q', '--api-sock', sock2]);
    assert.equal(input.status, 0, `${input.stderr}\nthe VMM said:\n${restored.stderr()}`);
    assert.equal(input.stdout, 'sent 1 byte to COM1\n');
    assert.equal(await restored.exit, 0, restored.stderr());
    assert.equal(restored.console.heartbeats()[0], last + 1);
    assert.match(restored.console.text, /verify pages=2048 bad=0/);
    assert.match(restored.stderr(), /^vm: restored \(lazy\): resumed in [\d.]+ ms \[opened [\d.]+, built [\d.]+, memory registered [\d.]+, vCPUs ready [\d.]+ ms\]/m);
    assert.match(restored.stderr(), /^vm: lazy memory: [1-9]\d* faults served, [1-9]\d* pages copied/m);
    assert.match(restored.stderr(), /^vm: fault latency: p50 \d+ us/m);
  });
});

describe('userfault vm: snapshots, JSON and errors through the CLI', { skip, timeout: 90000 }, () => {
  test('vm run --json prints one JSON object per line on stderr, numbers rounded; vm snapshot --out REL writes where the caller is', async (t) => {
    const dir = tempDir(t);
    const callerDir = tempDir(t);
    const sock = join(dir, 'vm.sock');
    const run = spawnCli(t, ['vm', 'run', '--mem', '16M', '--workload', 'writer', '--workload-mem', '4', '--hb', '5', '--api-sock', sock, '--json']);
    await waitForSocket(sock);
    await run.console.waitFor(/hb 1 /);
    const snapshot = cli(['vm', 'snapshot', '--api-sock', sock, '--out', 'rel.snap', '--resume', '--json'], { cwd: callerDir });
    assert.equal(snapshot.status, 0, snapshot.stderr);
    const [summary] = jsonLines(snapshot.stdout);
    assert.equal(summary!.path, join(callerDir, 'rel.snap'), 'resolved against the caller\'s directory');
    assert.equal(summary!.vmState, 'running');
    assert.ok(existsSync(join(callerDir, 'rel.snap')));
    assert.doesNotMatch(snapshot.stdout, /\d\.\d{3,}/, 'no number carries more than two decimals');
    assert.deepEqual(cli(['vm', 'stop', '--api-sock', sock]), { status: 0, stdout: 'stopped\n', stderr: '' });
    assert.equal(await run.exit, 0, run.stderr());
    const events = jsonLines(run.stderr());
    assert.deepEqual(events.map((e) => e.event).sort(), ['exited', 'first-output', 'running']);
    assert.doesNotMatch(run.stderr(), /^vmm: /m);
    assert.doesNotMatch(run.stderr(), /\d\.\d{3,}/, 'ms to 0.01, not 15 digits');
  });

  test('a snapshot that fails after the pause: --resume resumes the VM anyway, the exit is non-zero, the error names the user\'s path', async (t) => {
    const dir = tempDir(t);
    const sock = join(dir, 'vm.sock');
    const run = spawnCli(t, ['vm', 'run', '--mem', '16M', '--workload', 'idle', '--hb', '5', '--api-sock', sock]);
    await waitForSocket(sock);
    // /proc exists and is a directory, so the path passes the check; no file can be created in it.
    const resumed = cli(['vm', 'snapshot', '--api-sock', sock, '--out', '/proc/vm.snap', '--resume']);
    assert.equal(resumed.status, 73, resumed.stderr);
    assert.match(resumed.stderr, /^userfault: snapshot failed: cannot write the snapshot to \/proc\/vm\.snap: no file can be created there; the VM is running \[ECANTCREATE\]$/m);
    assert.doesNotMatch(resumed.stderr, /\.tmp/, 'the writer\'s temporary file is not the user\'s business');
    assert.match(cli(['vm', 'status', '--api-sock', sock]).stdout, /^state: running/);

    const stays = cli(['vm', 'snapshot', '--api-sock', sock, '--out', '/proc/vm.snap', '--stop']);
    assert.equal(stays.status, 73);
    assert.match(stays.stderr, /the VM is paused; not stopped, since nothing was saved/);
    assert.match(cli(['vm', 'status', '--api-sock', sock]).stdout, /^state: paused/);

    const refused = cli(['vm', 'snapshot', '--api-sock', sock, '--out', join(dir, 'missing', 'vm.snap'), '--json']);
    assert.equal(refused.status, 73);
    const error = jsonLines(refused.stderr)[0]!.error as { code: string; message: string };
    assert.equal(error.code, 'ECANTCREATE', 'the cause\'s code, as the text line says');
    assert.match(String(error.message), new RegExp(`cannot write the snapshot to ${join(dir, 'missing', 'vm.snap')}: its directory`));
    assert.equal(cli(['vm', 'stop', '--api-sock', sock]).status, 0);
    assert.equal(await run.exit, 0, run.stderr());
  });

  test('a snapshot written through the CLI verifies clean', async (t) => {
    const dir = tempDir(t);
    const sock = join(dir, 'vm.sock');
    const snap = join(dir, 'vm.snap');
    const run = spawnCli(t, ['vm', 'run', '--mem', '16M', '--workload', 'writer', '--workload-mem', '4', '--hb', '5', '--api-sock', sock]);
    await waitForSocket(sock);
    await run.console.waitFor(/hb 1 /);
    const snapshot = cli(['vm', 'snapshot', '--api-sock', sock, '--out', snap, '--stop']);
    assert.equal(snapshot.status, 0, snapshot.stderr);
    assert.equal(await run.exit, 0);
    const file = await SnapshotFile.open(snap);
    try {
      assert.equal((await file.verifyAll()).ok, true);
    } finally {
      await file.close();
    }
  });

  test('/dev/kvm permission denied: exit 77 and the hint to join the kvm group', { skip: nobodySkipReason() }, () => {
    const result = cli(['vm', 'run', '--mem', '16M'], { uid: 65534, gid: 65534, cwd: '/tmp' });
    assert.equal(result.status, 77, result.stderr);
    assert.match(result.stderr, /\/dev\/kvm: permission denied: add this user to the kvm group .* or run as root \[EKVMACCESS\]/);
  });
});
