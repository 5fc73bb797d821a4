// The main job on a built-in default: write a snapshot of a patterned image,
// restore it lazily into this process, touch it, verify every page.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { LazyMemory } from '../lazy/index.js';
import { PAGE_SIZE } from '../native.js';
import { writeSnapshot } from '../snapshot/index.js';
import { fillPattern, findPatternMismatches } from './pattern.js';

export interface DemoOptions {
  sizeBytes: number;
  pattern: 'sequential' | 'random';
  log: (line: string) => void;
}

export interface DemoResult {
  snapshotBytes: number;
  writeMs: number;
  restoreMs: number;
  touchMs: number;
  badPages: number[];
  faults: number;
  pagesCopied: number;
  zeroPages: number;
  p50Micros: number;
  p99Micros: number;
}

export async function runDemo(options: DemoOptions): Promise<DemoResult> {
  const dir = mkdtempSync(join(tmpdir(), 'userfault-demo-'));
  const path = join(dir, 'demo.snap');
  const zeroEvery = 16;
  try {
    let t0 = performance.now();
    const summary = await writeSnapshot(path, {
      regions: [{ imageOffset: 0, lengthBytes: options.sizeBytes, name: 'demo' }],
      content: { read: async (offset: number, length: number, target: Uint8Array) => fillPattern(target.subarray(0, length), offset / PAGE_SIZE, 1, zeroEvery) },
    });
    const writeMs = performance.now() - t0;
    options.log(`wrote ${path}: ${summary.fileSizeBytes} bytes for a ${options.sizeBytes}-byte image in ${writeMs.toFixed(0)} ms`);

    t0 = performance.now();
    const memory = await LazyMemory.create({ source: { kind: 'snapshot', path } });
    const restoreMs = performance.now() - t0;
    options.log(`lazy memory ready in ${restoreMs.toFixed(1)} ms at 0x${memory.address.toString(16)}; touching ${options.pattern}ly`);

    t0 = performance.now();
    const bytes = memory.bytes();
    const pages = options.sizeBytes / PAGE_SIZE;
    let sink = 0;
    const order = options.pattern === 'sequential' ? [...Array(pages).keys()] : shuffled(pages);
    for (const page of order) sink += bytes[page * PAGE_SIZE + 4]!;
    const touchMs = performance.now() - t0;
    const badPages = findPatternMismatches(bytes, 0, 1, zeroEvery);
    const stats = await memory.stats();
    await memory.close();
    void sink;
    const m = stats.metrics;
    options.log(`touched ${pages} pages in ${touchMs.toFixed(1)} ms: ${m.faults} faults, ${m.pagesCopied} pages copied in ${m.copyIoctls} ioctls, ${m.zeroPages} zero pages`);
    options.log(`fault latency p50 ${m.latencyMicros.p50} µs, p99 ${m.latencyMicros.p99} µs`);
    options.log(badPages.length === 0 ? 'verify: every page matches the snapshot' : `verify: BAD pages ${badPages.join(', ')}`);
    return {
      snapshotBytes: summary.fileSizeBytes,
      writeMs,
      restoreMs,
      touchMs,
      badPages,
      faults: m.faults,
      pagesCopied: m.pagesCopied,
      zeroPages: m.zeroPages,
      p50Micros: m.latencyMicros.p50,
      p99Micros: m.latencyMicros.p99,
    };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

function shuffled(n: number): number[] {
  const out = [...Array(n).keys()];
  let x = 12345;
  for (let i = n - 1; i > 0; i--) {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    const j = x % (i + 1);
    [out[i], out[j]] = [out[j]!, out[i]!];
  }
  return out;
}
