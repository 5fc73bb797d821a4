// The programs in examples/ run as written, against the real kernel.
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { writeSnapshot } from '../../src/snapshot/index.js';
import { CLI } from './helpers.js';
import { uffdSkipReason } from '../handler/helpers.js';

const skip = uffdSkipReason();

describe('examples', { skip }, () => {
  test('examples/library.ts (the README\'s library section) runs to the end: every assertion in it holds', () => {
    const program = fileURLToPath(new URL('../../examples/library.js', import.meta.url));
    const result = spawnSync(process.execPath, [program], { encoding: 'utf8', timeout: 30_000, killSignal: 'SIGKILL' });
    assert.equal(result.status, 0, `${result.stdout}\n${result.stderr}`);
    assert.match(result.stdout, /\bMISSING_SHMEM\b/);
    assert.match(result.stdout, /^WAKE COPY ZEROPAGE/m);
    // 16 pages touched in order, one of them stored as zero (mapped, not copied): 15 copied, and up to the read-ahead
    // a stream at its full window fetches behind the last fault (aheadWindows 2: two windows of 8 pages).
    const copied = Number(/^\d+ faults, (\d+) pages copied, p99 \d+ µs$/m.exec(result.stdout)?.[1]);
    assert.ok(copied >= 15 && copied <= 15 + 2 * 8, `pages copied: ${copied}`);
    assert.match(result.stdout, /^lazy memory, faults served: [1-9]\d*$/m);
  });

  test('examples/firecracker-client.ts plays Firecracker against userfault serve: every page it touches is the snapshot\'s', async (t) => {
    const dir = mkdtempSync(join(tmpdir(), 'userfault-fc-client-'));
    t.after(() => rmSync(dir, { recursive: true, force: true }));
    const snapshot = join(dir, 'demo.snap');
    const image = new Uint8Array(256 * 4096).map((_, i) => (i * 7 + (i >> 12)) & 0xff);
    await writeSnapshot(snapshot, { regions: [{ imageOffset: 0, lengthBytes: image.length }], content: image });
    const socket = join(dir, 'uffd.sock');
    const serve = spawn(process.execPath, [CLI, 'serve', '--socket', socket, '--snapshot', snapshot], { stdio: ['ignore', 'pipe', 'pipe'] });
    const killer = setTimeout(() => serve.kill('SIGKILL'), 30_000);
    const exited = new Promise<number | null>((resolve) => serve.on('exit', (code) => resolve(code)));
    try {
      let out = '';
      await new Promise<void>((resolve, reject) => {
        serve.stdout!.on('data', (chunk: Buffer) => {
          out += chunk.toString();
          if (/^serving /m.test(out)) resolve();
        });
        serve.on('exit', () => reject(new Error(`serve exited: ${out}`)));
      });
      const program = fileURLToPath(new URL('../../examples/firecracker-client.js', import.meta.url));
      const client = spawnSync(process.execPath, [program, socket, snapshot], { encoding: 'utf8', timeout: 20_000, killSignal: 'SIGKILL' });
      assert.equal(client.status, 0, `${client.stdout}\n${client.stderr}`);
      assert.match(client.stdout, /^256 pages touched through serve in [\d.]+ ms, 0 differ from the snapshot$/m);
    } finally {
      serve.kill('SIGTERM');
      assert.equal(await exited, 0);
      clearTimeout(killer);
    }
  });
});
