// LazyMemory in this process: the pager in its worker thread, this thread touching.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { describe, test } from 'node:test';
import { fillPattern } from '../../src/demo/pattern.js';
import { LazyMemory } from '../../src/lazy/index.js';
import { PAGE_SIZE } from '../../src/native.js';
import { openUffdCount } from '../handler/helpers.js';
import { runFixture } from '../helpers/run-probe.js';

const PAGES = 32;

/** The VmFlags line /proc/self/smaps shows for the mapping that starts at `address`. */
function vmFlagsAt(address: number): string[] {
  const smaps = readFileSync('/proc/self/smaps', 'utf8').split('\n');
  const start = address.toString(16);
  const header = smaps.findIndex((line) => line.startsWith(`${start}-`));
  assert.ok(header >= 0, `no mapping at 0x${start} in /proc/self/smaps`);
  const flags = smaps.slice(header + 1).find((line) => line.startsWith('VmFlags:'));
  return (flags ?? '').replace('VmFlags:', '').trim().split(/\s+/);
}

describe('lazy memory', () => {
  test('a child forked without exec does not inherit the range (MADV_DONTFORK): it could only read unfilled pages as zero', async () => {
    const image = new SharedArrayBuffer(PAGES * PAGE_SIZE);
    fillPattern(new Uint8Array(image), 0);
    const memory = await LazyMemory.create({ source: { kind: 'buffer', buffer: image } });
    try {
      const flags = vmFlagsAt(memory.address);
      assert.ok(flags.includes('dc'), `VmFlags ${flags.join(' ')} lack dc (do not copy on fork)`);
      assert.ok(flags.includes('um'), `VmFlags ${flags.join(' ')} lack um (userfaultfd missing mode)`);
      // The memory itself is served as before.
      assert.equal(new Uint32Array(memory.buffer, 7 * PAGE_SIZE, 1)[0], 7);
    } finally {
      await memory.close();
    }
  });

  test('close() leaves no userfaultfd open, whatever the policy (the watchdog\'s reference included)', async () => {
    const before = openUffdCount();
    for (const onHandlerLost of ['poison', 'kill', 'freeze'] as const) {
      const memory = await LazyMemory.create({ source: { kind: 'zero', sizeBytes: PAGES * PAGE_SIZE }, onHandlerLost });
      assert.equal(new Uint8Array(memory.buffer)[3 * PAGE_SIZE], 0);
      await memory.close();
      assert.equal(openUffdCount(), before, `${onHandlerLost}: a uffd stayed open`);
    }
  });

  test('a process that leaves a lazy memory open still exits on its own, and waits for an answer it awaits', () => {
    for (const how of ['natural', 'await-stats']) {
      const run = runFixture('exit-probe.js', ['buffer', how], 10_000);
      assert.equal(run.timedOut, false, `${how}: the idle pager kept the process alive`);
      assert.equal(run.status, 0, `${how}: ${run.stderr}`);
      assert.equal(run.lines.find((l) => l.phase === 'served')?.value, 7 * 16);
      if (how === 'await-stats') assert.ok(run.lines.some((l) => l.phase === 'stats'), 'the awaited answer came');
    }
  });
});
