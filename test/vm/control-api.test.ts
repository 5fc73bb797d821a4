// The control socket as a hostile peer sees it: bodies, headers and
// connections are bounded, malformed requests are answered and never end
// the VMM, serial input is bounded and survives a snapshot, a snapshot path
// only replaces a regular file, and a socket path only replaces a stale
// socket. One VMM (an idle 16 MiB guest) serves most tests.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, lstatSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { request } from 'node:http';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { controlRequest, MAX_BODY_BYTES, startControlApi } from '../../src/vmm-host/control-api.js';
import type { HostedVm } from '../../src/vmm-host/hosted-vm.js';
import { SERIAL_INPUT_LIMIT_BYTES } from '../../src/vm/devices/serial/uart16550.js';
import { getWith, occupy, statusOf } from '../net/hostile-clients.js';
import { cleanupList, kvmSkipReason, spawnVmm, tempDir, vmmEvents, waitForSocket, type SpawnedVmm } from './helpers.js';

const skip = kvmSkipReason();

/** Send raw bytes on the socket; the first `maxBytes` of what comes back (or all of it when the server closes). */
function rawExchange(sock: string, bytes: string | Buffer, maxBytes = 4096, timeoutMs = 10000): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = connect(sock);
    let text = '';
    const timer = setTimeout(() => {
      socket.destroy();
      resolve(text);
    }, timeoutMs);
    socket.on('data', (c: Buffer) => {
      text += c.toString('latin1');
      if (text.length >= maxBytes || /\r\n\r\n/.test(text)) {
        clearTimeout(timer);
        socket.destroy();
        resolve(text);
      }
    });
    socket.on('error', (e) => {
      clearTimeout(timer);
      if (text) resolve(text);
      else reject(e);
    });
    socket.on('close', () => {
      clearTimeout(timer);
      resolve(text);
    });
    socket.write(bytes);
  });
}

/** Peak resident memory of a process (VmHWM), bytes. */
function peakRssBytes(pid: number): number {
  const m = /^VmHWM:\s+(\d+) kB$/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return Number(m![1]) * 1024;
}

async function vmState(sock: string): Promise<string> {
  const reply = await controlRequest(sock, 'GET', '/vm');
  assert.equal(reply.status, 200);
  return (reply.body as { state: string }).state;
}

describe('the control socket under abuse', { skip, timeout: 120000 }, () => {
  let dir = '';
  let sock = '';
  let vmm: SpawnedVmm;
  const cleanup = cleanupList();

  before(async () => {
    if (skip) return;
    dir = mkdtempSync(join(tmpdir(), 'uf-vm-api-'));
    sock = join(dir, 'vm.sock');
    vmm = spawnVmm(cleanup, ['run', '--mem', '16M', '--cmdline', 'workload=idle hb=5', '--api-sock', sock]);
    await waitForSocket(sock);
  });
  after(() => {
    cleanup.run();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  test('16 idle and 16 slow connections do not lock the socket out: a new request is answered within 2 s', async (t) => {
    const hostile = await occupy({ socketPath: sock }, { idle: 16, slow: 16 });
    t.after(() => hostile.close());
    await new Promise((r) => setTimeout(r, 200));
    for (let round = 0; round < 3; round++) {
      const started = Date.now();
      const answer = await getWith({ socketPath: sock }, '/vm', { host: 'localhost' }, 2000);
      assert.equal(statusOf(answer), 200, `round ${round}: answered ${JSON.stringify(answer.slice(0, 80))} after ${Date.now() - started} ms`);
      assert.ok(Date.now() - started < 2000);
    }
  });

  test('a body declared over the limit is refused 413 before a byte of it is read', async () => {
    const reply = await rawExchange(sock, `PUT /serial/input HTTP/1.1\r\nhost: vm\r\ncontent-type: application/json\r\ncontent-length: ${384 << 20}\r\n\r\n{"data":"`);
    assert.match(reply, /^HTTP\/1\.1 413 /);
    assert.equal(await vmState(sock), 'running');
  });

  test('a 64 MiB chunked body is refused 413 as it arrives, and the VMM\'s memory does not grow with it', async () => {
    const peakBefore = peakRssBytes(vmm.child.pid!);
    const status = await new Promise<number>((resolve, reject) => {
      const req = request({ socketPath: sock, method: 'PUT', path: '/serial/input' }, (res) => {
        res.resume();
        res.on('end', () => resolve(res.statusCode ?? 0));
      });
      req.on('error', reject);
      const chunk = Buffer.alloc(1 << 20, 0x61);
      for (let i = 0; i < 64; i++) req.write(chunk);
      req.end();
    });
    assert.equal(status, 413);
    const grown = peakRssBytes(vmm.child.pid!) - peakBefore;
    assert.ok(grown < MAX_BODY_BYTES + (16 << 20), `the VMM's peak RSS grew ${grown >> 20} MiB for a 64 MiB body`);
    assert.equal(await vmState(sock), 'running');
  });

  test('garbage, a request line Node cannot parse, headers over 16 KiB: each answered on its own connection; the VMM goes on', async () => {
    assert.match(await rawExchange(sock, 'hello there\r\n\r\n'), /^HTTP\/1\.1 400 /);
    assert.match(await rawExchange(sock, Buffer.from([0, 1, 2, 0xff, 0xfe, 13, 10, 13, 10])), /^HTTP\/1\.1 400 /);
    assert.match(await rawExchange(sock, `GET /vm HTTP/1.1\r\nhost: vm\r\nx-big: ${'a'.repeat(20 << 10)}\r\n\r\n`), /^HTTP\/1\.1 431 /);
    const many = Array.from({ length: 2000 }, (_, i) => `x-h${i}: 1\r\n`).join('');
    assert.match(await rawExchange(sock, `GET /vm HTTP/1.1\r\nhost: vm\r\n${many}\r\n`), /^HTTP\/1\.1 (200|431) /);
    assert.equal(await vmState(sock), 'running');
  });

  test('a peer that hangs up mid-body, and bodies that are not JSON objects, do not hurt the VMM', async () => {
    await new Promise<void>((resolve) => {
      const socket = connect(sock, () => {
        socket.write('PUT /serial/input HTTP/1.1\r\nhost: vm\r\ncontent-length: 1000\r\n\r\n{"data":"abc');
        setTimeout(() => {
          socket.destroy();
          resolve();
        }, 50);
      });
    });
    const notJson = await rawExchange(sock, 'PUT /vm HTTP/1.1\r\nhost: vm\r\ncontent-length: 5\r\n\r\n{{{{{', 65536);
    assert.match(notJson, /^HTTP\/1\.1 400 /);
    assert.deepEqual(await controlRequest(sock, 'PATCH', '/vm', ['Paused']), { status: 400, body: { fault_message: 'the request body must be a JSON object', code: 'EBADREQUEST' } });
    assert.deepEqual(await controlRequest(sock, 'GET', '/nowhere'), { status: 404, body: { fault_message: 'no route GET /nowhere', code: 'ENOROUTE' } });
    assert.equal(await vmState(sock), 'running');
  });

  test('a snapshot path that is a device node, a FIFO, a symlink or a directory, or in a missing directory, or relative, is refused naming it; nothing is replaced and the VM keeps running', async (t) => {
    const here = tempDir(t);
    const device = join(here, 'full');
    assert.equal(spawnSync('mknod', [device, 'c', '1', '7']).status, 0, 'mknod (needs root)');
    const fifo = join(here, 'fifo');
    assert.equal(spawnSync('mkfifo', [fifo]).status, 0);
    const link = join(here, 'link.snap');
    writeFileSync(join(here, 'target'), 'keep');
    symlinkSync(join(here, 'target'), link);
    const directory = join(here, 'dir');
    mkdirSync(directory);
    const cases: [string, RegExp][] = [
      [device, /it is a character device; only a regular file is replaced/],
      [fifo, /it is a FIFO/],
      [link, /it is a symbolic link/],
      [directory, /it is a directory/],
      [join(here, 'missing', 'vm.snap'), new RegExp(`its directory ${join(here, 'missing')} does not exist`)],
    ];
    for (const [path, why] of cases) {
      const reply = await controlRequest(sock, 'PUT', '/snapshot/create', { snapshot_path: path });
      assert.equal(reply.status, 400, path);
      const body = reply.body as { fault_message: string; code: string };
      assert.equal(body.code, 'ECANTCREATE');
      assert.ok(body.fault_message.startsWith(`cannot write the snapshot to ${path}: `), body.fault_message);
      assert.match(body.fault_message, why);
      assert.equal(await vmState(sock), 'running', 'a refused path leaves the VM as it was');
    }
    assert.ok(lstatSync(device).isCharacterDevice(), 'the device node is still one');
    assert.ok(lstatSync(fifo).isFIFO());
    assert.ok(lstatSync(link).isSymbolicLink());
    assert.equal(readFileSync(join(here, 'target'), 'utf8'), 'keep');
    const relative = await controlRequest(sock, 'PUT', '/snapshot/create', { snapshot_path: 'vm.snap' });
    assert.deepEqual(relative, { status: 400, body: { fault_message: 'snapshot_path must be absolute, got "vm.snap"', code: 'EBADREQUEST' } });
  });

  test('a regular file at the snapshot path is replaced', async (t) => {
    const path = join(tempDir(t), 'old.snap');
    writeFileSync(path, 'an old snapshot');
    const created = await controlRequest(sock, 'PUT', '/snapshot/create', { snapshot_path: path });
    assert.equal(created.status, 200, JSON.stringify(created.body));
    assert.ok(lstatSync(path).size > 4096);
    assert.deepEqual(await controlRequest(sock, 'PATCH', '/vm', { state: 'Resumed' }), { status: 200, body: { state: 'running', changed: true } });
  });

  test('serial input is bounded at 1 MiB queued (413 past it, nothing queued), and a full queue survives a snapshot and a restore', async (t) => {
    const here = tempDir(t);
    const snap = join(here, 'queued.snap');
    assert.equal((await controlRequest(sock, 'PATCH', '/vm', { state: 'Paused' })).status, 200);
    // 'a' means nothing to the micro guest: it reads one byte per heartbeat and ignores it.
    const fill = SERIAL_INPUT_LIMIT_BYTES - 100;
    assert.equal((await controlRequest(sock, 'PUT', '/serial/input', { data: 'a'.repeat(fill) })).status, 204);
    const over = await controlRequest(sock, 'PUT', '/serial/input', { data: 'a'.repeat(200) });
    assert.equal(over.status, 413);
    assert.deepEqual(over.body, { fault_message: `serial input of 200 bytes refused: ${fill} bytes already wait for the guest to read them, and at most ${SERIAL_INPUT_LIMIT_BYTES} may`, code: 'ESERIALFULL' });
    assert.equal((await controlRequest(sock, 'PUT', '/serial/input', { data: 'a'.repeat(100) })).status, 204, 'what fits still goes in');
    const created = await controlRequest(sock, 'PUT', '/snapshot/create', { snapshot_path: snap });
    assert.equal(created.status, 200, JSON.stringify(created.body));
    assert.equal((await controlRequest(sock, 'PATCH', '/vm', { state: 'Resumed' })).status, 200);

    const sock2 = join(here, 'restored.sock');
    const restored = spawnVmm(t, ['restore', snap, '--api-sock', sock2]);
    await waitForSocket(sock2);
    const running = vmmEvents(restored.stderr());
    assert.ok(!running.some((e) => e.event === 'error'), restored.stderr());
    // The guest reads about 20 bytes a second: the restored queue is still (nearly) full.
    const again = await controlRequest(sock2, 'PUT', '/serial/input', { data: 'a'.repeat(4096) });
    assert.equal(again.status, 413, JSON.stringify(again.body));
    const queued = Number(/(\d+) bytes already wait/.exec((again.body as { fault_message: string }).fault_message)![1]);
    assert.ok(queued > SERIAL_INPUT_LIMIT_BYTES - 1000, `${queued} bytes queued after the restore`);
    assert.equal(await vmState(sock2), 'running', 'the control socket answers with a full queue');
    await controlRequest(sock2, 'PUT', '/actions', { action_type: 'Stop' });
    assert.equal(await restored.exit, 0, restored.stderr());
  });
});

// The same abuse where /dev/kvm is missing: the socket's HTTP server in front
// of a stand-in VMM that only answers GET /vm (the one request made).
describe('the control socket\'s HTTP server against idle and slow peers', { timeout: 30000 }, () => {
  test('32 idle and slow connections (twice the cap) do not keep a new request from being answered within 2 s', async (t) => {
    const dir = mkdtempSync(join(tmpdir(), 'uf-vm-api-'));
    t.after(() => rmSync(dir, { recursive: true, force: true }));
    const socketPath = join(dir, 'vm.sock');
    const standIn = { status: () => ({ state: 'Running' }) } as unknown as HostedVm;
    const api = await startControlApi(standIn, socketPath);
    t.after(() => api.close());
    const hostile = await occupy({ socketPath }, { idle: 16, slow: 16 });
    t.after(() => hostile.close());
    await new Promise((r) => setTimeout(r, 200));
    for (let round = 0; round < 3; round++) {
      const started = Date.now();
      const answer = await getWith({ socketPath }, '/vm', { host: 'localhost' }, 2000);
      assert.equal(statusOf(answer), 200, `round ${round}: answered ${JSON.stringify(answer.slice(0, 80))} after ${Date.now() - started} ms`);
      assert.match(answer, /"state":"Running"/);
      assert.ok(Date.now() - started < 2000);
    }
  });

  test('an idle connection is answered 408 and closed after the header timeout', async (t) => {
    const dir = mkdtempSync(join(tmpdir(), 'uf-vm-api-'));
    t.after(() => rmSync(dir, { recursive: true, force: true }));
    const socketPath = join(dir, 'vm.sock');
    const api = await startControlApi({ status: () => ({ state: 'Running' }) } as unknown as HostedVm, socketPath, { bounds: { headersTimeoutMs: 300, requestTimeoutMs: 600 } });
    t.after(() => api.close());
    const started = Date.now();
    const answer = await rawExchange(socketPath, Buffer.alloc(0), 4096, 5000);
    assert.match(answer, /^HTTP\/1\.1 408 /);
    assert.ok(Date.now() - started < 2000, `closed after ${Date.now() - started} ms`);
  });
});

describe('the control socket path', { skip, timeout: 60000 }, () => {
  test('a regular file at --api-sock is refused (exit 73) and left as it was', async (t) => {
    const path = join(tempDir(t), 'not-a-socket');
    writeFileSync(path, 'precious');
    const run = spawnVmm(t, ['run', '--mem', '16M', '--api-sock', path]);
    assert.equal(await run.exit, 73, run.stderr());
    assert.match(run.stderr(), /cannot listen on .*not-a-socket: the path exists and is not a socket/);
    assert.equal(readFileSync(path, 'utf8'), 'precious');
  });

  test('a second VM on a live VM\'s socket is refused (exit 73) and the first keeps its socket; a stale socket is replaced', async (t) => {
    const sock = join(tempDir(t), 'vm.sock');
    const first = spawnVmm(t, ['run', '--mem', '16M', '--cmdline', 'workload=idle hb=5', '--api-sock', sock]);
    await waitForSocket(sock);
    const inode = lstatSync(sock).ino;
    const second = spawnVmm(t, ['run', '--mem', '16M', '--api-sock', sock]);
    assert.equal(await second.exit, 73, second.stderr());
    assert.match(second.stderr(), /another server is listening on it/);
    assert.equal(lstatSync(sock).ino, inode);
    assert.equal(await vmState(sock), 'running', 'the first VM still answers on its socket');

    first.child.kill('SIGKILL');
    await first.exit;
    assert.ok(existsSync(sock), 'a killed VMM leaves its socket behind');
    const third = spawnVmm(t, ['run', '--mem', '16M', '--cmdline', 'workload=idle hb=5', '--api-sock', sock]);
    // (Not by the inode: tmpfs hands the new socket file the old one's number.)
    const deadline = Date.now() + 15000;
    while (!vmmEvents(third.stderr()).some((e) => e.event === 'running' || e.event === 'error') && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    assert.ok(vmmEvents(third.stderr()).some((e) => e.event === 'running'), third.stderr());
    assert.equal(await vmState(sock), 'running', 'the stale socket was replaced');
    await controlRequest(sock, 'PUT', '/actions', { action_type: 'Stop' });
    assert.equal(await third.exit, 0, third.stderr());
    assert.ok(!existsSync(sock), 'the socket file is removed when the VMM ends');
  });
});
