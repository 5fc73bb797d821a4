// The image the page-server and remote-source tests serve: 4 MiB of patterned
// pages (src/demo/pattern.ts: every page carries its index), every 8th page
// zero, a 256 KiB gap between two regions (reads as zero), and 40 KiB of VM
// state as metadata (so it takes more than one small GET_METADATA chunk).
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { TestContext } from 'node:test';
import { fileURLToPath } from 'node:url';
import { fillPattern } from '../../src/demo/pattern.js';
import { writeSnapshot } from '../../src/snapshot/index.js';
import { ChildRun } from '../handler/helpers.js';

export const PAGE = 4096;
export const PAGE_COUNT = 1024;
export const IMAGE_BYTES = PAGE * PAGE_COUNT;
export const SEED = 11;
export const ZERO_EVERY = 8;
/** Pages 768..831 are in no region. */
export const GAP_FIRST_PAGE = 768;
export const GAP_PAGE_COUNT = 64;

export const CLI = fileURLToPath(new URL('../../src/cli/main.js', import.meta.url));

export function tempDir(t: TestContext): string {
  const dir = mkdtempSync(join(tmpdir(), 'uf-pages-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

export function isZeroPage(page: number): boolean {
  return page % ZERO_EVERY === ZERO_EVERY - 1 || (page >= GAP_FIRST_PAGE && page < GAP_FIRST_PAGE + GAP_PAGE_COUNT);
}

/** The image as a reader sees it. */
export function expectedImage(): Uint8Array {
  const image = new Uint8Array(IMAGE_BYTES);
  fillPattern(image, 0, SEED, ZERO_EVERY);
  image.fill(0, GAP_FIRST_PAGE * PAGE, (GAP_FIRST_PAGE + GAP_PAGE_COUNT) * PAGE);
  return image;
}

export function metadataBytes(): Uint8Array {
  const state = { kind: 'userfault-vm', state: { registers: Array.from({ length: 2000 }, (_, i) => ({ index: i, value: `0x${(i * 2654435761 >>> 0).toString(16)}` })) } };
  return new TextEncoder().encode(JSON.stringify(state));
}

export async function writeTestSnapshot(dir: string): Promise<{ path: string; image: Uint8Array; metadata: Uint8Array }> {
  const path = join(dir, 'vm.snap');
  const image = expectedImage();
  const metadata = metadataBytes();
  await writeSnapshot(path, {
    regions: [
      { imageOffset: 0, lengthBytes: GAP_FIRST_PAGE * PAGE, name: 'low' },
      { imageOffset: (GAP_FIRST_PAGE + GAP_PAGE_COUNT) * PAGE, lengthBytes: (PAGE_COUNT - GAP_FIRST_PAGE - GAP_PAGE_COUNT) * PAGE, name: 'high' },
    ],
    imageSizeBytes: IMAGE_BYTES,
    content: image,
    metadata,
  });
  return { path, image, metadata };
}

/** `userfault pages serve` in a child process, SIGKILLed when the test ends. Resolves once it prints its listen line. */
export async function spawnPagesServe(t: TestContext, args: string[], options: { timeoutMs?: number; waitListening?: boolean } = {}): Promise<{ run: ChildRun; port: number }> {
  const child = spawn(process.execPath, [CLI, 'pages', 'serve', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  const run = new ChildRun(t, child, 'userfault pages serve', options.timeoutMs ?? 60_000);
  if (options.waitListening === false) return { run, port: 0 };
  const json = args.includes('--json');
  if (json) {
    const event = await run.waitForEvent('listening');
    return { run, port: event.port as number };
  }
  const match = await run.waitForText(/^listening on [^\n]*:(\d+)$/m);
  return { run, port: Number(match[1]) };
}
