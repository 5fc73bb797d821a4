// The built-in guest: the micro guest (guest/micro.asm) assembled with nasm
// into dist/guest/micro.elf by scripts/build-guest.sh.
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/** The package root: src/vm/boot and dist/src/vm/boot both sit below it. */
function packageRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(dir, 'package.json'))) {
    const parent = dirname(dir);
    if (parent === dir) throw new Error('cannot find the userfault package root');
    dir = parent;
  }
  return dir;
}

export const BUILTIN_GUEST_PATH = join(packageRoot(), 'dist', 'guest', 'micro.elf');

/** Whether nasm is on PATH (the guest's only build dependency). */
export function hasNasm(): boolean {
  return spawnSync('nasm', ['-v'], { stdio: 'ignore' }).status === 0;
}

/**
 * The built-in guest's path, building it first when it is missing and nasm
 * is here. Returns undefined (with the reason) when it can be neither found
 * nor built.
 */
export function ensureBuiltinGuest(): { path: string } | { path: undefined; reason: string } {
  if (existsSync(BUILTIN_GUEST_PATH)) return { path: BUILTIN_GUEST_PATH };
  if (!hasNasm()) return { path: undefined, reason: 'the micro guest is not built and nasm is missing (apt-get install -y nasm)' };
  const result = spawnSync('sh', [join(packageRoot(), 'scripts', 'build-guest.sh')], { encoding: 'utf8' });
  if (result.status !== 0) return { path: undefined, reason: `scripts/build-guest.sh failed: ${result.stderr}` };
  return { path: BUILTIN_GUEST_PATH };
}
