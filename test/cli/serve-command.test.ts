// `userfault serve` as a user runs it: a child process, clients in their own processes.
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { chmodSync, existsSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { describe, test, type TestContext } from 'node:test';
import { ExitCode } from '../../src/exit-codes.js';
import { CLI, ChildRun, spawnClient, spawnServe, tempDir, uffdSkipReason, writeMemoryFiles } from '../handler/helpers.js';
import { jsonError } from './helpers.js';

const skip = uffdSkipReason();

const runServe = (...args: string[]) => spawnSync(process.execPath, [CLI, 'serve', ...args], { encoding: 'utf8', timeout: 20_000, killSignal: 'SIGKILL' });

/** `userfault serve --json ...`, once its "listening" line is out. */
async function spawnServeJson(t: TestContext, args: string[]): Promise<ChildRun> {
  const child = spawn(process.execPath, [CLI, 'serve', ...args, '--json'], { stdio: ['ignore', 'pipe', 'pipe'] });
  const server = new ChildRun(t, child, 'userfault serve --json', 30_000);
  await server.waitForText(/^\{"level":30,.*"event":"listening",.*\}$/m);
  return server;
}

/** The handler tests' memory files in a fresh directory, and `userfault pages serve` on their snapshot (its tcp:// URL). */
async function pageServerOnMemoryFiles(t: TestContext): Promise<{ dir: string; url: string }> {
  const dir = tempDir(t);
  const files = await writeMemoryFiles(dir);
  const pages = spawn(process.execPath, [CLI, 'pages', 'serve', '--snapshot', files.snapshotPath, '--listen', '127.0.0.1:0', '--json'], { stdio: ['ignore', 'pipe', 'pipe'] });
  const pageServer = new ChildRun(t, pages, 'userfault pages serve', 30_000);
  const listening = await pageServer.waitForText(/^\{.*"event":"listening".*"url":"(tcp:\/\/127\.0\.0\.1:\d+)".*\}$/m);
  return { dir, url: listening[1]! };
}

function jsonLines(text: string): Array<Record<string, unknown>> {
  return text.split('\n').filter((line) => line !== '').map((line) => JSON.parse(line) as Record<string, unknown>);
}

/** A group other than this process's own, that this process may give files to (root: any; else one it is in). */
function otherGroup(): { name: string; gid: number } | undefined {
  const groups = readFileSync('/etc/group', 'utf8').split('\n').map((line) => line.split(':')).filter((f) => f.length >= 3 && /^\d+$/.test(f[2]!));
  const allowed = process.getuid!() === 0 ? groups : groups.filter((f) => process.getgroups!().includes(Number(f[2])));
  const pick = allowed.find((f) => Number(f[2]) !== process.getgid!() && Number(f[2]) !== 0);
  return pick ? { name: pick[0]!, gid: Number(pick[2]) } : undefined;
}

describe('userfault serve', { skip, timeout: 60_000 }, () => {
  test('--from a page server in another process: a Firecracker-style client is served over TCP, every page right', async (t) => {
    const { dir, url } = await pageServerOnMemoryFiles(t);
    const socketPath = join(dir, 'serve.sock');
    const server = await spawnServeJson(t, ['--socket', socketPath, '--from', url]);
    const event = jsonLines(server.stdout).find((e) => e.event === 'listening')!;
    assert.equal(event.kind, 'page-server');
    assert.match(String(event.source), /^page server tcp:\/\/127\.0\.0\.1:\d+$/);
    // Two clients at once, from different parts of the image; zero pages come as zero pages, data over TCP.
    const clients = [0, 1].map((i) => spawnClient(t, { socketPath, pageCount: 256, filePage: 128 + i * 384, send: 'one-message' }, 20_000, `client ${i}`));
    for (const client of clients) {
      const result = await client.waitForEvent('result');
      assert.equal(result.badCount, 0, JSON.stringify(result));
    }
    server.kill('SIGTERM');
    assert.deepEqual(await server.exit, { code: 0, signal: null });
  });

  test('--from a page server with --page-cache: the first client\'s pages come over TCP into the cache, the next client\'s from the cache alone', async (t) => {
    const { dir, url } = await pageServerOnMemoryFiles(t);
    const socketPath = join(dir, 'serve.sock');
    const server = await spawnServeJson(t, ['--socket', socketPath, '--from', url, '--page-cache']);
    assert.equal(jsonLines(server.stdout).find((e) => e.event === 'listening')!.pageCache, true);
    for (const name of ['first client', 'second client']) {
      const client = spawnClient(t, { socketPath, pageCount: 256, filePage: 128, send: 'one-message', pageCache: 'ask' }, 20_000, name);
      const result = await client.waitForEvent('result');
      assert.equal(result.badCount, 0, `${name}: ${JSON.stringify(result)}`);
      await client.exit;
    }
    server.kill('SIGTERM');
    assert.deepEqual(await server.exit, { code: 0, signal: null });
    const gone = jsonLines(server.stdout).filter((e) => e.event === 'client-gone') as Array<{ pageCache?: boolean; metrics: { sourceReads: number; cacheFills: number; pagesMapped: number } }>;
    assert.equal(gone.length, 2);
    assert.ok(gone.every((client) => client.pageCache === true));
    assert.ok(gone[0]!.metrics.sourceReads > 0 && gone[0]!.metrics.cacheFills > 0, 'the first client\'s pages came from the page server');
    assert.equal(gone[1]!.metrics.sourceReads, 0, 'the second client\'s came from the cache alone');
    assert.equal(gone[1]!.metrics.cacheFills, 0);
    assert.equal(gone[1]!.metrics.pagesMapped, gone[0]!.metrics.pagesMapped);
  });

  test('serves clients, logs each client event, refuses a liar on stderr, and on SIGTERM prints a summary and removes its socket', async (t) => {
    const dir = tempDir(t);
    const files = await writeMemoryFiles(dir);
    const socketPath = join(dir, 'serve.sock');
    const server = await spawnServe(t, ['--socket', socketPath, '--memory-file', files.rawPath]);
    assert.match(server.stdout, /^serving raw file .*memory\.raw \(raw, 4194304 bytes\) on .*serve\.sock, pid \d+$/m);

    const good = spawnClient(t, { socketPath, pageCount: 128, filePage: 256, send: 'one-message' }, 20_000, 'good client');
    const result = await good.waitForEvent('result');
    assert.equal(result.badCount, 0, JSON.stringify(result));
    await server.waitForText(/^client 1: gone \((hangup|exited)\) after [\d.]+ s: \d+ faults, \d+ pages copied, \d+ zero pages$/m);
    assert.match(server.stdout, /^client 1: connected$/m);
    assert.match(server.stdout, /^client 1: serving 1 regions: 0x[0-9a-f]+\+524288 <- offset 1048576$/m);

    const liar = spawnClient(t, { socketPath, pageCount: 16, filePage: 0, send: 'one-message', lie: 'garbage-json' }, 20_000, 'liar');
    await liar.waitForEvent('closed-by-server');
    await server.waitForText(/^client 2: error: handshake refused: .*the handshake is not JSON.* \[EHANDSHAKE\]$/m, 'stderr');
    await server.waitForText(/^client 2: gone \(refused\)/m);

    server.kill('SIGTERM');
    assert.deepEqual(await server.exit, { code: 0, signal: null });
    assert.match(server.stdout, /^SIGTERM: closing 0 clients$/m);
    assert.match(server.stdout, /^summary: 2 clients, \d+ faults, 128 pages copied, 0 zero pages from raw file/m);
    assert.match(server.stdout, /^ {2}client 1: \d+ faults served, 128 pages copied, 0 zero pages, p99 \d+ µs \((hangup|exited)\)$/m);
    assert.match(server.stdout, /^ {2}client 2: never served \(refused: handshake refused/m);
    assert.equal(existsSync(socketPath), false, 'the socket file is removed');
  });

  test('--json: every log line is one JSON object, events on stdout and errors on stderr, the summary last', async (t) => {
    const dir = tempDir(t);
    const files = await writeMemoryFiles(dir);
    const socketPath = join(dir, 'serve.sock');
    const server = await spawnServeJson(t, ['--socket', socketPath, '--memory-file', files.snapshotPath]);
    const client = spawnClient(t, { socketPath, pageCount: 64, filePage: 0, send: 'fd-later' });
    assert.equal((await client.waitForEvent('result')).badCount, 0);
    await server.waitForText(/"event":"client-gone"/);
    const liar = spawnClient(t, { socketPath, pageCount: 16, filePage: 0, send: 'one-message', lie: 'garbage-json' }, 20_000, 'liar');
    await liar.waitForEvent('closed-by-server');
    await server.waitForText(/"event":"client-error"/, 'stderr');
    await server.waitForText(/"event":"client-gone","client":2/);
    server.kill('SIGINT');
    assert.deepEqual(await server.exit, { code: 0, signal: null });

    const events = jsonLines(server.stdout);
    assert.deepEqual(events.map((e) => e.event), ['listening', 'client-connected', 'client-ready', 'client-gone', 'client-connected', 'client-gone', 'closing', 'summary']);
    const [listening, , ready, gone] = events;
    assert.equal(listening!.socket, socketPath);
    assert.equal(listening!.kind, 'snapshot');
    assert.equal(listening!.sizeBytes, 4194304);
    assert.deepEqual((ready!.regions as Array<Record<string, unknown>>)[0]!.lengthBytes, 64 * 4096);
    assert.match((ready!.regions as Array<Record<string, unknown>>)[0]!.hostAddress as string, /^0x[0-9a-f]+$/);
    assert.ok(Number.isInteger((gone!.connectedMs as number) * 10), 'milliseconds to 0.1');
    const summary = events.at(-1) as { totals: { clients: number; pagesCopied: number; zeroPages: number } };
    assert.equal(summary.totals.clients, 2);
    assert.equal(summary.totals.pagesCopied + summary.totals.zeroPages, 64);

    const errors = jsonLines(server.stderr);
    assert.equal(errors.length, 1);
    assert.equal(errors[0]!.event, 'client-error');
    assert.equal(errors[0]!.client, 2);
    assert.equal((errors[0]!.error as { code: string }).code, 'EHANDSHAKE');
    assert.equal(existsSync(socketPath), false);
  });

  test('a second serve refused on a live socket is not a client of the first: no error, no client in its summary, one silent connection', async (t) => {
    const dir = tempDir(t);
    const files = await writeMemoryFiles(dir);
    const socketPath = join(dir, 'serve.sock');
    const server = await spawnServeJson(t, ['--socket', socketPath, '--memory-file', files.rawPath]);
    const second = runServe('--socket', socketPath, '--memory-file', files.rawPath);
    assert.equal(second.status, 73, second.stderr);
    assert.match(second.stderr, /another server is listening on it/);
    await server.waitForText(/"event":"silent-connection"/);
    server.kill('SIGINT');
    assert.deepEqual(await server.exit, { code: 0, signal: null });
    const events = jsonLines(server.stdout);
    assert.deepEqual(events.map((e) => e.event), ['listening', 'client-connected', 'silent-connection', 'closing', 'summary']);
    const summary = events.at(-1) as { clients: unknown[]; totals: { clients: number; silentConnections: number } };
    assert.deepEqual(summary.clients, []);
    assert.equal(summary.totals.clients, 0);
    assert.equal(summary.totals.silentConnections, 1);
    assert.equal(server.stderr, '', 'nothing said as an error');
  });

  test('--socket-mode and --socket-group are applied to the socket, so a VMM of another user in that group can connect', async (t) => {
    const group = otherGroup();
    if (!group) return t.skip('no group this process may give files to besides its own');
    const dir = tempDir(t);
    chmodSync(dir, 0o711); // the other user must reach the socket
    const files = await writeMemoryFiles(dir);
    const socketPath = join(dir, 'serve.sock');
    const server = await spawnServeJson(t, ['--socket', socketPath, '--memory-file', files.rawPath, '--socket-mode', '0660', '--socket-group', group.name]);
    const stats = statSync(socketPath);
    assert.ok(stats.isSocket());
    assert.equal(stats.mode & 0o7777, 0o660);
    assert.equal(stats.gid, group.gid);
    const listening = jsonLines(server.stdout)[0]!;
    assert.equal(listening.socketMode, '0660');
    assert.equal(listening.socketGroupId, group.gid);

    if (process.getuid!() === 0) {
      // A jailed VMM: another uid, the socket's group. connect(2) needs write permission on the socket.
      const connect = (gid: number) => spawnSync(process.execPath, ['-e', `require('net').connect(${JSON.stringify(socketPath)}).on('connect', () => process.exit(0)).on('error', (e) => { console.log(e.code); process.exit(3); })`], { uid: 65534, gid, encoding: 'utf8', timeout: 10_000 });
      const member = connect(group.gid);
      assert.equal(member.status, 0, `a member of ${group.name} connects: ${member.stdout}${member.stderr}`);
      const stranger = connect(65534);
      assert.equal(stranger.status, 3);
      assert.match(stranger.stdout, /EACCES/);
    }
    server.kill('SIGTERM');
    assert.equal((await server.exit).code, 0);
  });

  test('refusals: not a snapshot 65, no memory file 64, a missing one 66, a socket in a missing directory 73 naming the path, a zero timeout 64', async (t) => {
    const dir = tempDir(t);
    const files = await writeMemoryFiles(dir);
    const socketPath = join(dir, 'serve.sock');
    const notSnapshot = runServe('--socket', socketPath, '--snapshot', files.rawPath);
    assert.equal(notSnapshot.status, ExitCode.DATA);
    assert.match(notSnapshot.stderr, /is not a userfault snapshot .* \[ENOTSNAPSHOT\]/);
    const neither = runServe('--socket', socketPath);
    assert.equal(neither.status, ExitCode.USAGE);
    assert.match(neither.stderr, /--snapshot FILE, --memory-file FILE or --from tcp:\/\/HOST:PORT/);
    const missing = runServe('--socket', socketPath, '--memory-file', join(dir, 'nope.raw'));
    assert.equal(missing.status, ExitCode.NO_INPUT);
    assert.match(missing.stderr, /nope\.raw does not exist \[ENOINPUT\]/);

    const noDir = runServe('--socket', '/no/dir/x.sock', '--memory-file', files.rawPath);
    assert.equal(noDir.status, ExitCode.CANT_CREATE);
    assert.match(noDir.stderr, /^userfault: cannot listen on \/no\/dir\/x\.sock: its directory does not exist \[ECANTCREATE\]$/m);
    const noDirJson = runServe('--socket', '/no/dir/x.sock', '--memory-file', files.rawPath, '--json');
    assert.equal(noDirJson.status, ExitCode.CANT_CREATE);
    assert.equal(jsonError(noDirJson.stderr).path, '/no/dir/x.sock');

    for (const [flag, value, why] of [['--handshake-timeout', '0', /from 1 to/], ['--handshake-timeout', '1.5', /whole number of milliseconds/], ['--socket-mode', '999', /octal file mode/], ['--socket-group', 'no-such-group-here', /no group named/]] as const) {
      const bad = runServe('--socket', socketPath, '--memory-file', files.rawPath, flag, value);
      assert.equal(bad.status, ExitCode.USAGE, `${flag} ${value}: ${bad.stderr}`);
      assert.match(bad.stderr, new RegExp(`option '${flag} <\\w+>' argument '${value.replace('.', '\\.')}' is invalid`));
      assert.match(bad.stderr, why);
    }
    assert.equal(existsSync(socketPath), false);
  });
});
