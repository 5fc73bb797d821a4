// `userfault serve` as a user runs it: a child process, clients in their own processes.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { CLI, spawnClient, spawnServe, tempDir, uffdSkipReason, writeMemoryFiles } from './helpers.js';

const skip = uffdSkipReason();

describe('userfault serve', { skip, timeout: 60_000 }, () => {
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
    await server.waitForText(/^client 2: error: handshake refused: the handshake is not JSON.* \[EHANDSHAKE\]$/m, 'stderr');
    await server.waitForText(/^client 2: gone \(refused\)/m);

    server.kill('SIGTERM');
    assert.deepEqual(await server.exit, { code: 0, signal: null });
    assert.match(server.stdout, /^SIGTERM: closing 0 clients$/m);
    assert.match(server.stdout, /^summary: 2 clients, \d+ faults, 128 pages copied, 0 zero pages from raw file/m);
    assert.match(server.stdout, /^ {2}client 1: \d+ faults served, 128 pages copied, 0 zero pages, p99 \d+ µs \((hangup|exited)\)$/m);
    assert.match(server.stdout, /^ {2}client 2: never served \(refused: handshake refused/m);
    assert.equal(existsSync(socketPath), false, 'the socket file is removed');
  });

  test('serves a snapshot, recognised by its magic, and prints a JSON summary on SIGINT', async (t) => {
    const dir = tempDir(t);
    const files = await writeMemoryFiles(dir);
    const socketPath = join(dir, 'serve.sock');
    const server = await spawnServe(t, ['--socket', socketPath, '--memory-file', files.snapshotPath, '--json']);
    assert.match(server.stdout, /^serving snapshot .*memory\.snap \(snapshot, 4194304 bytes\)/m);
    const client = spawnClient(t, { socketPath, pageCount: 64, filePage: 0, send: 'fd-later' });
    assert.equal((await client.waitForEvent('result')).badCount, 0);
    await server.waitForText(/^client 1: gone/m);
    server.kill('SIGINT');
    assert.deepEqual(await server.exit, { code: 0, signal: null });
    const summary = JSON.parse(server.stdout.trim().split('\n').at(-1)!) as { totals: { clients: number; pagesCopied: number; zeroPages: number } };
    assert.deepEqual(summary.totals.clients, 1);
    assert.equal(summary.totals.pagesCopied + summary.totals.zeroPages, 64);
    assert.equal(existsSync(socketPath), false);
  });

  test('--snapshot refuses a file that is not a snapshot, and one of --snapshot or --memory-file is required', async (t) => {
    const dir = tempDir(t);
    const files = await writeMemoryFiles(dir);
    const socketPath = join(dir, 'serve.sock');
    const run = (...args: string[]) => spawnSync(process.execPath, [CLI, 'serve', ...args], { encoding: 'utf8', timeout: 20_000, killSignal: 'SIGKILL' });
    const notSnapshot = run('--socket', socketPath, '--snapshot', files.rawPath);
    assert.equal(notSnapshot.status, 1);
    assert.match(notSnapshot.stderr, /is not a userfault snapshot .* \[ENOTSNAPSHOT\]/);
    const neither = run('--socket', socketPath);
    assert.equal(neither.status, 1);
    assert.match(neither.stderr, /--snapshot FILE or --memory-file FILE/);
    assert.equal(existsSync(socketPath), false);
  });
});
