// The chunk cache on disk: content-addressed, checked on every read, bounded
// by LRU eviction, and shared safely by processes that use it at once.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ChunkCache } from '../../src/sources/chunk-cache.js';

const sha = (bytes: Uint8Array): string => createHash('sha256').update(bytes).digest('hex');

function tempCache(t: { after(fn: () => void): void }): string {
  const dir = mkdtempSync(join(tmpdir(), 'uf-cache-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

describe('chunk cache', () => {
  test('a chunk put is got back by its SHA-256; an unknown one is a miss', async (t) => {
    const cache = new ChunkCache({ directory: tempCache(t), maxBytes: 1 << 20 });
    const bytes = new Uint8Array(8192).fill(9);
    await cache.put(sha(bytes), bytes);
    assert.deepEqual(await cache.get(sha(bytes), bytes.length), bytes);
    assert.equal(await cache.get(sha(new Uint8Array(1)), 1), undefined);
    assert.deepEqual({ hits: cache.stats.hits, misses: cache.stats.misses }, { hits: 1, misses: 1 });
  });

  test('a file damaged on disk (a flipped byte, a short file) is a miss and is removed, never returned', async (t) => {
    const directory = tempCache(t);
    const cache = new ChunkCache({ directory, maxBytes: 1 << 20 });
    const bytes = new Uint8Array(8192).fill(5);
    const name = sha(bytes);
    const path = join(directory, 'chunks', name.slice(0, 2), name);
    for (const damage of [(b: Uint8Array) => { b[100] ^= 1; return b; }, (b: Uint8Array) => b.subarray(0, 4096)]) {
      await cache.put(name, bytes);
      writeFileSync(path, damage(bytes.slice()));
      assert.equal(await cache.get(name, bytes.length), undefined);
      assert.deepEqual(readdirSync(dirname(path)), [], 'the damaged file is gone');
    }
    assert.equal(cache.stats.damaged, 2);
  });

  test('past its bound the least recently used chunks are evicted', async (t) => {
    const cache = new ChunkCache({ directory: tempCache(t), maxBytes: 10 * 65536 });
    const chunks = Array.from({ length: 12 }, (_, i) => new Uint8Array(65536).fill(i + 1));
    for (const [i, bytes] of chunks.entries()) {
      await cache.put(sha(bytes), bytes);
      // mtime has a resolution: make the order unambiguous.
      await new Promise((r) => setTimeout(r, 15));
      if (i === 1) await cache.get(sha(chunks[0]!), 65536); // chunk 0 used again: it stays
    }
    assert.ok(await cache.sizeBytes() <= 10 * 65536, 'within the bound');
    assert.ok(await cache.get(sha(chunks[0]!), 65536), 'recently used: kept');
    assert.equal(await cache.get(sha(chunks[1]!), 65536), undefined, 'least recently used: evicted');
    assert.ok(await cache.get(sha(chunks[11]!), 65536), 'the newest: kept');
    assert.ok(cache.stats.evicted >= 2);
  });

  test('four processes using one directory at once under a tight bound: every hit is the exact chunk, nothing fails', async (t) => {
    const directory = tempCache(t);
    const hammer = join(dirname(fileURLToPath(import.meta.url)), '..', 'fixtures', 'cache-hammer.js');
    const runs = [1, 2, 3, 4].map((seed) => new Promise<{ hits: number; wrong: number; evicted: number }>((resolve, reject) => {
      const child = spawn(process.execPath, [hammer, directory, String(8 * 65536), String(seed), '400'], { stdio: ['ignore', 'pipe', 'pipe'] });
      let out = '';
      let err = '';
      child.stdout.on('data', (c: Buffer) => { out += c; });
      child.stderr.on('data', (c: Buffer) => { err += c; });
      const timer = setTimeout(() => child.kill('SIGKILL'), 60_000);
      child.on('exit', (code) => {
        clearTimeout(timer);
        if (code === 0) resolve(JSON.parse(out) as { hits: number; wrong: number; evicted: number });
        else reject(new Error(`hammer ${seed} exited ${code}: ${err}`));
      });
    }));
    const results = await Promise.all(runs);
    assert.equal(results.reduce((n, r) => n + r.wrong, 0), 0, JSON.stringify(results));
    assert.ok(results.reduce((n, r) => n + r.hits, 0) > 0, 'the processes found each other\'s chunks');
    assert.ok(results.reduce((n, r) => n + r.evicted, 0) > 0, 'the bound was enforced');
    assert.ok(await new ChunkCache({ directory, maxBytes: 8 * 65536 }).sizeBytes() <= 8 * 65536 + 4 * 65536, 'at most a chunk over per writer in flight');
    assert.deepEqual(readdirSync(join(directory, 'tmp')), [], 'no temporary file left');
  });
});
