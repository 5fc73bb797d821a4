// scripts/setup.sh on a machine that lacks the build tools: it asks Debian for
// exactly the missing ones (SETUP_DRY_RUN prints them and stops).
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';

const setup = fileURLToPath(new URL('../../../scripts/setup.sh', import.meta.url));

/** Run setup.sh with PATH holding only `commands` (besides what the script itself uses). */
function dryRun(commands: string[]): string {
  const bin = mkdtempSync(join(tmpdir(), 'userfault-setup-'));
  try {
    for (const command of ['bash', 'dirname', 'id', 'env', ...commands]) {
      const found = spawnSync('bash', ['-c', `command -v ${command}`], { encoding: 'utf8' }).stdout.trim();
      if (found) symlinkSync(found, join(bin, command));
    }
    const result = spawnSync(join(bin, 'bash'), [setup], { encoding: 'utf8', env: { PATH: bin, SETUP_DRY_RUN: '1' }, timeout: 10_000 });
    assert.equal(result.status, 0, result.stderr);
    return result.stdout.trim();
  } finally {
    rmSync(bin, { recursive: true, force: true });
  }
}

describe('scripts/setup.sh', () => {
  test('on a bare machine it would install nasm, python3, make, gcc, g++, iproute2 and chromium', () => {
    assert.equal(dryRun([]), 'setup: would install from Debian: nasm python3 make gcc g++ iproute2 chromium');
  });

  test('it asks only for what is missing', () => {
    // Debian package <- the command setup.sh looks for.
    const packages: [string, string][] = [['nasm', 'nasm'], ['python3', 'python3'], ['make', 'make'], ['gcc', 'gcc'], ['g++', 'g++'], ['iproute2', 'ip'], ['chromium', 'chromium']];
    const have = packages.filter(([, c]) => spawnSync('bash', ['-c', `command -v ${c}`]).status === 0).map(([, c]) => c);
    const expected = packages.filter(([, c]) => !have.includes(c) || c === 'g++').map(([p]) => p);
    assert.equal(dryRun(have.filter((c) => c !== 'g++')), `setup: would install from Debian: ${expected.join(' ')}`);
  });
});

describe('scripts/build-guest.sh', () => {
  test('builds the guest without a word on stdout (npm run demo printed its path as a stray line)', () => {
    const buildGuest = fileURLToPath(new URL('../../../scripts/build-guest.sh', import.meta.url));
    const result = spawnSync('sh', [buildGuest], { encoding: 'utf8', timeout: 30_000 });
    if (result.status !== 0 && /nasm: not found|nasm: command not found/.test(result.stderr)) return;
    assert.equal(result.status, 0, result.stderr);
    assert.equal(result.stdout, '');
  });
});
