// The layout check LazyWasmMemory makes before registering V8's memory: pure, over maps text.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { describe, test } from 'node:test';
import { native } from '../../src/native.js';
import { V8_WASM32_GUARDED_BYTES_FROM_BASE, checkWasmReservation, parseProcMaps } from '../../src/lazy/index.js';
import { MEMORY_A, MEMORY_B, TWO_GUARDED_MEMORIES, UNGUARDED, UNGUARDED_MEMORY } from '../fixtures/wasm/proc-maps.js';

const GiB = 1024 ** 3;

describe('/proc/self/maps', () => {
  test('a line is parsed into addresses, permissions, inode and path (paths with spaces kept whole)', () => {
    const [anon, file] = parseProcMaps('7f5308f30000-7f5308f60000 rw-p 00000000 00:00 0 \n7f57-7f58 r-xp 014c4000 fe:00 260689                     /opt/my dir/node\n');
    assert.deepEqual(anon, { start: 0x7f5308f30000, end: 0x7f5308f60000, perms: 'rw-p', inode: 0, path: '' });
    assert.deepEqual(file, { start: 0x7f57, end: 0x7f58, perms: 'r-xp', inode: 260689, path: '/opt/my dir/node' });
  });

  test('a line that is not a maps line is refused, not skipped', () => {
    assert.throws(() => parseProcMaps('garbage\n'), SyntaxError);
  });
});

describe('the guarded wasm32 reservation', () => {
  test('each of two memories V8 made back to back passes, though their VMAs merged across the boundary', () => {
    const maps = parseProcMaps(TWO_GUARDED_MEMORIES);
    assert.deepEqual(checkWasmReservation(maps, MEMORY_A.base, MEMORY_A.committedBytes), { ok: true });
    assert.deepEqual(checkWasmReservation(maps, MEMORY_B.base, MEMORY_B.committedBytes), { ok: true });
  });

  test('a memory reserved only up to its maximum (no guard regions: its growth may move it) is refused', () => {
    const result = checkWasmReservation(parseProcMaps(UNGUARDED_MEMORY), UNGUARDED.base, UNGUARDED.committedBytes);
    assert.equal(result.ok, false);
    assert.equal(!result.ok && result.problem, 'room-accessible');
    assert.equal(!result.ok && result.address, UNGUARDED.base + 0x100000);
  });

  test('a hole inside the 8 GiB after the base is refused', () => {
    const text = TWO_GUARDED_MEMORIES.split('\n').filter((l) => !l.startsWith('7f5588f50000')).join('\n');
    const result = checkWasmReservation(parseProcMaps(text), MEMORY_A.base, MEMORY_A.committedBytes);
    assert.deepEqual(result, { ok: false, problem: 'hole', address: MEMORY_A.base + MEMORY_A.committedBytes });
  });

  test('a file mapping, a shared mapping or committed pages that are not read-write are refused', () => {
    const base = 0x7f0000000000;
    const end = (base + V8_WASM32_GUARDED_BYTES_FROM_BASE).toString(16);
    const check = (text: string) => checkWasmReservation(parseProcMaps(text), base, 65536);
    assert.equal((check(`7f0000000000-${end} rw-p 00000000 fe:00 12 /tmp/f\n`) as { problem: string }).problem, 'not-private-anonymous');
    assert.equal((check(`7f0000000000-7f0000010000 rw-s 00000000 00:01 7 /dev/zero (deleted)\n7f0000010000-${end} ---p 00000000 00:00 0\n`) as { problem: string }).problem, 'not-private-anonymous');
    assert.equal((check(`7f0000000000-7f0000010000 r--p 00000000 00:00 0\n7f0000010000-${end} ---p 00000000 00:00 0\n`) as { problem: string }).problem, 'committed-not-read-write');
    assert.deepEqual(check(`7f0000000000-7f0000010000 rw-p 00000000 00:00 0 [anon:wasm]\n7f0000010000-${end} ---p 00000000 00:00 0\n`), { ok: true });
  });

  test('a base off a 64 KiB boundary is refused', () => {
    assert.equal((checkWasmReservation(parseProcMaps(TWO_GUARDED_MEMORIES), MEMORY_A.base + 4096, 0) as { problem: string }).problem, 'unaligned-base');
  });

  test('this V8 makes every wasm32 memory that way: with a maximum or without, shared or not, after grow too', () => {
    const memories = [new WebAssembly.Memory({ initial: 2, maximum: 16 }), new WebAssembly.Memory({ initial: 0 }), new WebAssembly.Memory({ initial: 1, maximum: 4, shared: true })];
    for (const memory of memories) {
      const base = native.addressOf(new Uint8Array(memory.buffer));
      const maps = () => parseProcMaps(readFileSync('/proc/self/maps', 'utf8'));
      assert.deepEqual(checkWasmReservation(maps(), base, memory.buffer.byteLength), { ok: true });
      memory.grow(2);
      assert.equal(native.addressOf(new Uint8Array(memory.buffer)), base, 'grow kept the address');
      assert.deepEqual(checkWasmReservation(maps(), base, memory.buffer.byteLength), { ok: true });
      // The 2 GiB before the base are PROT_NONE as well (the negative guard).
      const before = maps().find((e) => e.start < base && e.end >= base);
      assert.ok(before && before.perms === '---p' && base - before.start >= 2 * GiB, 'a negative guard precedes the base');
    }
  });
});
