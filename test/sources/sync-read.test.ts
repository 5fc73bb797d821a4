import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { RawFileSource } from '../../src/sources/raw-file-source.js';

test('a raw file in the page cache is read on the fast path (RWF_NOWAIT), and the bytes are the file\'s', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'userfault-raw-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const path = join(dir, 'mem');
  const content = Buffer.alloc(8 * 4096);
  for (let i = 0; i < content.length; i += 4) content.writeUInt32LE(i, i);
  writeFileSync(path, content); // just written: in the page cache
  const source = await RawFileSource.open(path);
  try {
    const target = Buffer.alloc(2 * 4096);
    assert.equal(source.readSync(3 * 4096, 2 * 4096, target), true);
    assert.equal(Buffer.compare(target, content.subarray(3 * 4096, 5 * 4096)), 0);
    assert.throws(() => source.readSync(7 * 4096, 2 * 4096, target), /outside/);
  } finally {
    await source.close();
  }
  assert.equal(source.readSync(0, 4096, Buffer.alloc(4096)), false, 'a closed source declines the fast path');
});
