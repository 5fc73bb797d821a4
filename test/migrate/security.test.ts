// Authenticated peers and the handshake's refusals: TLS-PSK on both
// migration connections (a wrong key or none is refused before a single page
// moves), and the HELLO checks (another session, a second migration, an
// urgent connection for nobody, a version older than this end's).
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { chmodSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { controlRequest } from '../../src/vmm-host/control-api.js';
import { DestinationMigration } from '../../src/migrate/destination-migration.js';
import { connectChannel, newSessionId, readPskFile } from '../../src/migrate/transport/channels.js';
import { ProtocolError, acceptHello } from '../../src/protocol/index.js';
import type { MigrationProgress } from '../../src/migrate/source-migration.js';
import { vmMigrationKind } from '../../src/vm/vm-migration-kind.js';
import { MigrationAuthError, MigrationKeyError } from '../../src/migrate/errors.js';
import { ExitCode, exitCodeFor } from '../../src/exit-codes.js';
import { softMachineKind } from './soft-machine.js';
import { kvmSkipReason, spawnCli, spawnVmm, tempDir, waitForSocket } from '../vm/helpers.js';

const skip = kvmSkipReason();

function keyFile(dir: string, name: string): string {
  const path = join(dir, name);
  writeFileSync(path, `${randomBytes(32).toString('hex')}\n`, { mode: 0o600 });
  return path;
}

describe('authenticated migration (TLS-PSK)', { skip, timeout: 120_000 }, () => {
  test('with the same key on both sides the migration completes, verified', async (t) => {
    const dir = tempDir(t);
    const key = keyFile(dir, 'key');
    const srcSock = join(dir, 'src.sock');
    const src = spawnVmm(t, ['run', '--mem', '32M', '--cmdline', 'workload=writer mem=8 hb=10 pattern=random seed=31', '--api-sock', srcSock]);
    const dst = spawnCli(t, ['vm', 'receive', '--listen', '127.0.0.1:0', '--psk-file', key, '--json', '--no-stdin']);
    await waitForSocket(srcSock);
    await src.console.waitFor(/hb 2 /);
    let address = '';
    for (let i = 0; i < 500 && !address; i++) {
      const line = dst.stderr().split('\n').find((l) => l.includes('"listening"'));
      if (line) address = (JSON.parse(line) as { url: string; authenticated: boolean }).url.replace('tcp://', '');
      else await new Promise((r) => setTimeout(r, 20));
    }
    assert.match(dst.stderr(), /"authenticated":true/);
    const migrate = spawnCli(t, ['vm', 'migrate', '--api-sock', srcSock, '--to', address, '--psk-file', key, '--mode', 'hybrid', '--json']);
    assert.equal(await migrate.exit, 0, migrate.stderr());
    const report = JSON.parse(migrate.console.text.trim()) as MigrationProgress;
    assert.deepEqual([report.state, report.verified], ['completed', true]);
    assert.equal(await src.exit, 0);
    dst.child.kill('SIGTERM');
  });

  test('a source with another key, or with none, is refused before a single page moves, and its guest runs on', async (t) => {
    const dir = tempDir(t);
    const srcSock = join(dir, 'src.sock');
    const src = spawnVmm(t, ['run', '--mem', '32M', '--cmdline', 'workload=writer mem=8 hb=10 pattern=random seed=32', '--api-sock', srcSock]);
    const dst = spawnCli(t, ['vm', 'receive', '--listen', '127.0.0.1:0', '--psk-file', keyFile(dir, 'right'), '--json', '--no-stdin']);
    await waitForSocket(srcSock);
    await src.console.waitFor(/hb 2 /);
    let address = '';
    for (let i = 0; i < 500 && !address; i++) {
      const line = dst.stderr().split('\n').find((l) => l.includes('"listening"'));
      if (line) address = (JSON.parse(line) as { url: string }).url.replace('tcp://', '');
      else await new Promise((r) => setTimeout(r, 20));
    }
    for (const withKey of [keyFile(dir, 'wrong'), undefined]) {
      const migrate = spawnCli(t, ['vm', 'migrate', '--api-sock', srcSock, '--to', address, ...(withKey ? ['--psk-file', withKey] : []), '--json']);
      assert.notEqual(await migrate.exit, 0, 'the migration failed');
      const progress = (await controlRequest(srcSock, 'GET', '/migrate')).body as MigrationProgress;
      assert.equal(progress.state, 'failed');
      assert.equal(progress.dataPagesSent + progress.zeroPagesSent, 0, 'not a page was sent');
      assert.equal(((await controlRequest(srcSock, 'GET', '/vm')).body as { state: string }).state, 'running');
    }
    for (let i = 0; i < 200 && (dst.stderr().match(/"connection-refused"/g) ?? []).length < 2; i++) await new Promise((r) => setTimeout(r, 20));
    const refusals = dst.stderr().split('\n').filter((l) => l.includes('"connection-refused"')).map((l) => JSON.parse(l) as { reason: string });
    assert.ok(refusals.length >= 2, `the destination logged the refusals: ${dst.stderr()}`);
    for (const refusal of refusals) assert.match(refusal.reason, /TLS-PSK handshake failed/);
    assert.doesNotMatch(dst.stderr(), /"event":"running"/, 'no VM came in');
    await controlRequest(srcSock, 'PUT', '/serial/input', { data: 'q' });
    assert.equal(await src.exit, 0);
    assert.match(src.console.text, /verify pages=2048 bad=0/);
    dst.child.kill('SIGTERM');
  });
});

describe('the migration handshake refuses', () => {
  test('a second migration, another session\'s urgent connection, a replay of a taken channel', async () => {
    const destination = await DestinationMigration.listen({ host: '127.0.0.1', port: 0, kind: vmMigrationKind() });
    const refusals: string[] = [];
    destination.on('refused', (_peer, reason) => refusals.push(reason));
    const address = { host: '127.0.0.1', port: Number(destination.url.split(':').at(-1)) };
    try {
      const session = newSessionId();
      const main = await connectChannel(address, 'main', session, 2000);
      await assert.rejects(connectChannel(address, 'main', newSessionId(), 2000), /refused the main connection: BAD_REQUEST: this destination is receiving another migration/);
      await assert.rejects(connectChannel(address, 'urgent', newSessionId(), 2000), /an urgent connection for a session that has no main connection here/);
      await assert.rejects(connectChannel(address, 'main', session, 2000), /this session already has its main connection/);
      const urgent = await connectChannel(address, 'urgent', session, 2000);
      await assert.rejects(connectChannel(address, 'urgent', session, 2000), /this session already has its urgent connection/);
      assert.equal(refusals.length, 4, refusals.join('\n'));
      main.close();
      urgent.close();
    } finally {
      destination.close();
    }
  });

  test('no downgrade: a peer offering only versions older than this end\'s is refused', () => {
    const hello = { type: 'hello' as const, version: 1, minVersion: 1, role: 'migration-source' as const, sessionId: newSessionId(), maxPayloadBytes: 1 << 20, features: 0 };
    assert.throws(() => acceptHello(hello, { roles: ['migration-source'], minVersion: 2, maxVersion: 2 }), (e: unknown) => e instanceof ProtocolError && e.code === 'EPROTO_VERSION');
    assert.equal(acceptHello(hello, { roles: ['migration-source'], minVersion: 1 }), 1);
  });

  test('a key file too short, or unreadable, is refused naming it', (t) => {
    const dir = tempDir(t);
    const short = join(dir, 'short');
    writeFileSync(short, 'abcd', { mode: 0o600 });
    assert.throws(() => readPskFile(short), /the key file .*short holds 2 bytes of key; at least 16 are needed/);
    assert.throws(() => readPskFile(join(dir, 'absent')), /cannot be read/);
  });

  test('a key file other users may read is refused, saying why and how to fix it (as ssh refuses such a key)', (t) => {
    const dir = tempDir(t);
    const open = join(dir, 'open.psk');
    writeFileSync(open, `${randomBytes(32).toString('hex')}\n`, { mode: 0o644 });
    chmodSync(open, 0o644);
    assert.throws(() => readPskFile(open), (error: unknown) => error instanceof MigrationKeyError && error.code === 'EUSAGE' && /is open to other users \(mode 0644\).*chmod 600/.test(error.message));
    chmodSync(open, 0o600);
    assert.equal(readPskFile(open).psk.length, 32);
  });

  test('a wrong key is refused in plain words (exit status 77), and a source without a key is told to give one', async (t) => {
    const dir = tempDir(t);
    const destination = await DestinationMigration.listen({ host: '127.0.0.1', port: 0, kind: softMachineKind(), security: readPskFile(keyFile(dir, 'right')) });
    t.after(() => destination.close());
    const address = { host: '127.0.0.1', port: Number(destination.url.split(':').at(-1)) };
    await assert.rejects(connectChannel(address, 'main', newSessionId(), 3000, readPskFile(keyFile(dir, 'wrong'))), (error: unknown) => {
      assert.ok(error instanceof MigrationAuthError, String(error));
      assert.match(error.message, /refused this side's key: the destination holds a different --psk-file, or none/);
      assert.doesNotMatch(error.message, /SSL routines|0A0003FC/, 'OpenSSL\'s text is the cause, not the message');
      assert.equal(exitCodeFor(error), ExitCode.NO_PERMISSION);
      return true;
    });
    await assert.rejects(connectChannel(address, 'main', newSessionId(), 3000), /give this side the same --psk-file/);
  });
});
