// Issue section 7.7: the handler process dies while its client still has
// missing pages. The kernel's own answer is silent corruption; the client's
// own uffd reference turns it into a freeze, and a watchdog on the handler's
// pidfd turns the freeze into SIGBUS or SIGKILL.
//
// Each test: `userfault serve` in a child process, a client that touches the
// first half of its memory (served), waits while the test SIGKILLs the
// server, then touches the second half.
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { describe, test, type TestContext } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import type { ClientArgs } from '../fixtures/handler-client.js';
import { ZERO_EVERY, spawnClient, spawnServe, tempDir, uffdSkipReason, writeMemoryFiles, type ChildRun } from './helpers.js';

const skip = uffdSkipReason();
const PAGES = 64;

/** Serve, connect a client with this policy, let it touch the first half, then SIGKILL the server. */
async function killHandlerUnderClient(t: TestContext, policy: NonNullable<ClientArgs['handlerDeath']>['policy']): Promise<ChildRun> {
  const dir = tempDir(t);
  const files = await writeMemoryFiles(dir);
  const socketPath = join(dir, 'serve.sock');
  const server = await spawnServe(t, ['--socket', socketPath, '--memory-file', files.rawPath, '--no-readahead']);
  const client = spawnClient(t, { socketPath, pageCount: PAGES, filePage: 0, send: 'one-message', handlerDeath: { policy, handlerPid: server.child.pid! } });
  const firstHalf = await client.waitForEvent('first-half');
  assert.equal(firstHalf.badCount, 0, `the first half is served while the handler lives: ${JSON.stringify(firstHalf)}`);
  server.kill('SIGKILL');
  assert.deepEqual(await server.exit, { code: null, signal: 'SIGKILL' });
  return client;
}

function go(client: ChildRun): void {
  client.child.stdin!.write('go\n');
}

/** Second-half pages whose image content is not zero: the ones a zero-fill corrupts. */
const DATA_PAGES_IN_SECOND_HALF = Array.from({ length: PAGES / 2 }, (_, i) => PAGES / 2 + i).filter((p) => p % ZERO_EVERY !== ZERO_EVERY - 1).length;

describe('when the handler process dies under its client', { skip, timeout: 60_000 }, () => {
  test('a client that dropped its own uffd reference reads zeroes where its data should be: silent corruption', async (t) => {
    const client = await killHandlerUnderClient(t, 'no-reference');
    go(client);
    const result = await client.waitForEvent('result');
    // The last reference closed with the handler: the kernel unregistered the
    // range, and every missing page became an ordinary anonymous page of zeroes.
    assert.equal(result.badCount, DATA_PAGES_IN_SECOND_HALF);
    assert.equal(result.zeroPagesRead, DATA_PAGES_IN_SECOND_HALF, 'every wrong page reads all zero');
    assert.deepEqual(await client.exit, { code: 0, signal: null }, 'and the client carries on as if nothing happened');
  });

  test('a client that keeps its own reference freezes on the next missing page instead', async (t) => {
    const client = await killHandlerUnderClient(t, 'freeze');
    go(client);
    await client.waitForEvent('touching');
    await sleep(500);
    assert.equal(client.event('result'), undefined, 'the touch has not completed');
    assert.equal(client.exited, false, 'the client is blocked in the kernel, alive');
    client.kill('SIGKILL');
    assert.deepEqual(await client.exit, { code: null, signal: 'SIGKILL' }, 'a frozen fault is killable');
  });

  test('with a watchdog on the handler\'s pidfd and the poison policy, the touch dies with SIGBUS', async (t) => {
    const client = await killHandlerUnderClient(t, 'poison');
    // Whether the touch comes before the watchdog sees the pidfd or after, the
    // fault waits on the client's own reference until the watchdog poisons it.
    go(client);
    assert.deepEqual(await client.exit, { code: null, signal: 'SIGBUS' });
    assert.equal(client.event('result'), undefined, 'no zeroes were ever read as data');
  });

  test('with a watchdog on the handler\'s pidfd and the kill policy, the client is SIGKILLed', async (t) => {
    const client = await killHandlerUnderClient(t, 'kill');
    // It dies waiting on stdin, before it touches anything again: the watchdog
    // acts on the handler's exit, not on a fault.
    assert.deepEqual(await client.exit, { code: null, signal: 'SIGKILL' });
    assert.deepEqual(client.signalsSent, [], 'the watchdog killed it, not the test');
    assert.equal(client.event('touching'), undefined);
  });
});
