// The programs in examples/ run as written, against the real kernel.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { uffdSkipReason } from '../handler/helpers.js';

const skip = uffdSkipReason();

describe('examples', { skip }, () => {
  test('examples/library.ts (the README\'s library section) runs to the end: every assertion in it holds', () => {
    const program = fileURLToPath(new URL('../../examples/library.js', import.meta.url));
    const result = spawnSync(process.execPath, [program], { encoding: 'utf8', timeout: 30_000, killSignal: 'SIGKILL' });
    assert.equal(result.status, 0, `${result.stdout}\n${result.stderr}`);
    assert.match(result.stdout, /\bMISSING_SHMEM\b/);
    assert.match(result.stdout, /^WAKE COPY ZEROPAGE/m);
    // The 15 stored pages of the 16 it reads, and at most one read-ahead window (8 pages) past them: a sweep at full speed fetches the next window too.
    const copied = Number(/^\d+ faults, (\d+) pages copied, p99 \d+ µs$/m.exec(result.stdout)?.[1]);
    assert.ok(copied >= 15 && copied <= 15 + 8, `${copied} pages copied:\n${result.stdout}`);
    assert.match(result.stdout, /^lazy memory, faults served: [1-9]\d*$/m);
  });
});
