// The payload pool: a buffer is reused only once every holder released it, so
// a view a page source lent out is never overwritten by a later frame.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { PayloadPool } from '../../src/protocol/index.js';

describe('the payload pool', () => {
  test('a released buffer is reused for the next payload of its size class; a small payload is never pooled', () => {
    const pool = new PayloadPool();
    const first = pool.take(260 * 1024);
    assert.equal(first.length, 260 * 1024);
    pool.release(first);
    const second = pool.take(257 * 1024);
    assert.equal(second.buffer, first.buffer, 'the same class (320 KiB) reuses the buffer');
    assert.equal(pool.reused, 1);
    const small = pool.take(100);
    pool.release(small);
    assert.notEqual(pool.take(100).buffer, small.buffer);
  });

  test('a retained buffer is not reused until its last holder released it', () => {
    const pool = new PayloadPool();
    const payload = pool.take(64 * 1024);
    const view = payload.subarray(4096, 8192);
    pool.retain(view);
    pool.release(payload);
    assert.notEqual(pool.take(64 * 1024).buffer, payload.buffer, 'still held by the view');
    pool.release(view);
    assert.equal(pool.take(64 * 1024).buffer, payload.buffer, 'free once the view is released');
    assert.equal(pool.lentCount, 2);
  });

  test('releasing memory the pool never lent, or twice, changes nothing', () => {
    const pool = new PayloadPool();
    pool.release(new Uint8Array(64 * 1024));
    const payload = pool.take(64 * 1024);
    pool.release(payload);
    pool.release(payload);
    assert.equal(pool.take(64 * 1024).buffer, payload.buffer);
    assert.notEqual(pool.take(64 * 1024).buffer, payload.buffer, 'not handed out twice');
  });

  test('the free list is bounded: past maxFreeBytes a released buffer is left to the GC', () => {
    const pool = new PayloadPool(128 * 1024);
    const held = [pool.take(64 * 1024), pool.take(64 * 1024), pool.take(64 * 1024)];
    for (const payload of held) pool.release(payload);
    assert.equal(pool.take(64 * 1024).buffer, held[1]!.buffer);
    assert.equal(pool.take(64 * 1024).buffer, held[0]!.buffer);
    assert.ok(!held.slice(0, 2).some((p) => p.buffer === pool.take(64 * 1024).buffer), 'the third was not kept');
  });

  test('a buffer whose holder never releases it is not kept alive by the pool', async () => {
    setFlagsFromString('--expose-gc');
    const gc = runInNewContext('gc') as () => void;
    const pool = new PayloadPool();
    let lost: Uint8Array | undefined = pool.take(256 * 1024);
    const ref = new WeakRef(lost.buffer);
    lost = undefined;
    for (let i = 0; i < 10 && ref.deref() !== undefined; i++) {
      await new Promise((resolve) => setImmediate(resolve));
      gc();
    }
    assert.equal(ref.deref(), undefined, 'collected: the pool holds no strong reference to a lent buffer');
    assert.equal(pool.lentCount, 1, 'still counted as lent (it was never given back)');
  });
});
