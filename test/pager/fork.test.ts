// FORK: a process with registered memory forks; the child's faults arrive on a
// new uffd, which the pager adopts and serves with the parent's page states.
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { fillPattern } from '../../src/demo/pattern.js';
import { PAGE_SIZE, native } from '../../src/native.js';
import { Pager } from '../../src/pager/index.js';
import { BufferSource } from '../../src/sources/buffer-source.js';
import { Userfaultfd } from '../../src/uffd/index.js';
import { sleep } from '../helpers/toucher.js';

const PAGES = 16;

test('after fork, the child\'s faults are served from the source and its parent\'s pages stay as they were', { timeout: 30_000 }, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'userfault-fork-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const binary = join(dir, 'fork-client');
  const sourceFile = fileURLToPath(new URL('../../../test/fixtures/c/fork-client.c', import.meta.url));
  const cc = spawnSync('cc', ['-O1', '-o', binary, sourceFile], { encoding: 'utf8' });
  if (cc.error || cc.status !== 0) return t.skip(`no C compiler to build the forking client: ${cc.error?.message ?? cc.stderr}`);

  const image = new Uint8Array(PAGES * PAGE_SIZE);
  fillPattern(image, 0);
  const socketPath = join(dir, 'sock');
  const listener = native.unixListen(socketPath, 1);
  const client = spawn(binary, [socketPath], { stdio: ['ignore', 'pipe', 'inherit'] });
  const killTimer = setTimeout(() => client.kill('SIGKILL'), 20_000);
  let output = '';
  client.stdout.on('data', (chunk: Buffer) => (output += chunk.toString()));
  const exited = new Promise<number | null>((resolve) => client.on('exit', resolve));

  // Accept the client and receive its JSON and uffd (bounded polling on non-blocking fds).
  let connection = -1;
  for (let i = 0; i < 2000 && connection < 0; i++) {
    connection = native.unixAccept(listener);
    if (connection < 0) await sleep(5);
  }
  assert.ok(connection >= 0, 'the client connected');
  const buffer = Buffer.alloc(4096);
  let received: [number, number[]] = [-11, []];
  for (let i = 0; i < 2000 && received[0] < 0; i++) {
    received = native.recvWithFds(connection, buffer);
    if (received[0] < 0) await sleep(5);
  }
  const [{ base_host_virt_addr: address, size }] = JSON.parse(buffer.subarray(0, received[0]).toString()) as Array<{ base_host_virt_addr: number; size: number }>;
  assert.equal(received[1].length, 1, 'the uffd came with the JSON');

  const uffd = Userfaultfd.adopt(received[1][0]!, ['EVENT_FORK']);
  const pager = new Pager({ uffd, source: new BufferSource(image), regions: [{ address: address!, lengthBytes: size!, sourceOffset: 0 }], prefetch: false });
  const forks: Pager[] = [];
  pager.on('fork', (child) => forks.push(child));
  pager.start();
  const status = await exited;
  clearTimeout(killTimer);
  await pager.stop();
  uffd.close();
  native.close(connection);
  native.close(listener);

  assert.equal(status, 0);
  assert.deepEqual(JSON.parse(output.trim()), { parentPage0: 0, childExit: 0, parentBad: 0 });
  assert.equal(pager.snapshotMetrics().events.fork, 1);
  assert.equal(forks.length, 1);
  const child = forks[0]!.snapshotMetrics();
  assert.equal(child.faults, PAGES - 1, 'the child faulted on every page but the one its parent had filled');
  assert.equal(pager.snapshotMetrics().faults, PAGES, 'the parent faulted on page 0 before the fork and on the rest after');
});
