// The bench's C programs, compiled at run time with gcc into the run's work
// directory (no build step of their own, and always from the current source).
import { execFileSync } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

export interface CPrograms {
  toucher: string;
  refHandler: string;
  delayServer: string;
  /** The wire itself: a C sender and receiver over loopback TCP (bench/c/wire.c). */
  wire: string;
}

/** bench/c in the source tree (this file runs from dist/bench/). */
export function cSourceDir(): string {
  const here = dirname(fileURLToPath(import.meta.url));
  return join(here, '..', '..', 'bench', 'c');
}

export function buildCPrograms(outDir: string): CPrograms {
  const src = cSourceDir();
  const build = (name: string): string => {
    const out = join(outDir, name);
    try {
      execFileSync('gcc', ['-O2', '-g', '-Wall', '-Wextra', '-Werror', '-pthread', '-o', out, join(src, `${name}.c`)], { stdio: ['ignore', 'pipe', 'pipe'] });
    } catch (error) {
      const stderr = (error as { stderr?: Buffer }).stderr?.toString() ?? '';
      throw new Error(`gcc could not build bench/c/${name}.c (the bench needs gcc and the kernel headers):\n${stderr || (error as Error).message}`, { cause: error });
    }
    return out;
  };
  return { toucher: build('toucher'), refHandler: build('ref-handler'), delayServer: build('delay-server'), wire: build('wire') };
}
