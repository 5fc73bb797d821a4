import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { decodeExit, describeExit } from '../../src/vm/kvm/exits.js';

function runPage(reason: number, fill: (v: DataView) => void): Uint8Array {
  const run = new Uint8Array(8192);
  const v = new DataView(run.buffer);
  v.setUint32(8, reason, true);
  fill(v);
  return run;
}

describe('VM exits decoded from kvm_run', () => {
  test('a rep outsb of 16 bytes is one io exit whose data points into the page', () => {
    const run = runPage(2, (v) => {
      v.setUint8(32, 1);
      v.setUint8(33, 1);
      v.setUint16(34, 0x3f8, true);
      v.setUint32(36, 16, true);
      v.setBigUint64(40, 4096n, true);
    });
    run.set(Buffer.from('hb 1 dirtied=12\n'), 4096);
    const exit = decodeExit(run);
    assert.equal(exit.type, 'io');
    if (exit.type !== 'io') return;
    assert.deepEqual([exit.direction, exit.size, exit.port, exit.count], ['out', 1, 0x3f8, 16]);
    assert.equal(Buffer.from(exit.data).toString(), 'hb 1 dirtied=12\n');
    exit.data[0] = 0x41;
    assert.equal(run[4096], 0x41, 'an in exit is answered by writing the same bytes');
  });

  test('io data outside the mapping is an error, not a wild read', () => {
    const run = runPage(2, (v) => {
      v.setUint8(33, 4);
      v.setUint32(36, 1, true);
      v.setBigUint64(40, 8190n, true);
    });
    assert.throws(() => decodeExit(run), RangeError);
  });

  test('an emulation failure carries its data words', () => {
    const run = runPage(17, (v) => {
      v.setUint32(32, 1, true);
      v.setUint32(36, 2, true);
      v.setBigUint64(40, 1n, true);
      v.setBigUint64(48, 0xcfn, true);
    });
    const exit = decodeExit(run);
    assert.deepEqual(exit, { type: 'internal-error', suberror: 1, data: [1n, 0xcfn] });
    assert.match(describeExit(exit), /suberror 1/);
  });

  test('hlt, shutdown and an unknown reason', () => {
    assert.deepEqual(decodeExit(runPage(5, () => {})), { type: 'hlt' });
    assert.deepEqual(decodeExit(runPage(8, () => {})), { type: 'shutdown' });
    assert.equal(decodeExit(runPage(99, () => {})).type, 'unknown');
  });
});
