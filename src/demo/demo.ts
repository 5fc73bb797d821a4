// The main job on a built-in default: write a snapshot of a patterned image,
// restore it lazily into this process, touch it, verify every page.
//
// The snapshot is a temporary file as large as the image (less its zero
// pages). It is removed as soon as the lazy memory has it open (the pager's
// descriptor keeps the data until the end), and on every way out before that:
// an error, or an abort (the CLI aborts on SIGINT/SIGTERM).
import { mkdtempSync, rmSync, statfsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { LazyMemory } from '../lazy/index.js';
import { PAGE_SIZE } from '../native.js';
import { PAGE_ENTRY_BYTES, writeSnapshot } from '../snapshot/index.js';
import { InsufficientSpaceError, WorkDirectoryMissingError } from './errors.js';
import { fillPattern, findPatternMismatches } from './pattern.js';

export type DemoPhase = 'write' | 'touch';

export interface DemoOptions {
  /** A positive multiple of the page size. */
  sizeBytes: number;
  pattern: 'sequential' | 'random';
  /** A line for a person (nothing under --json). */
  log: (line: string) => void;
  /** Bytes done of a phase, called often (the CLI draws it on a terminal). */
  progress?: (phase: DemoPhase, doneBytes: number, totalBytes: number) => void;
  /** Stops the demo at its next step; the temporary snapshot is removed. */
  signal?: AbortSignal;
  /** Where the temporary snapshot goes (default: the system's temporary directory). */
  directory?: string;
}

export interface DemoResult {
  sizeBytes: number;
  pattern: 'sequential' | 'random';
  snapshotBytes: number;
  /** Milliseconds, to 0.1 ms. */
  writeMs: number;
  restoreMs: number;
  touchMs: number;
  /** The first pages (at most 16) that did not match the snapshot; empty when every page did. */
  badPages: number[];
  faults: number;
  pagesCopied: number;
  zeroPages: number;
  /** Per-fault latency in whole microseconds. */
  p50Micros: number;
  p90Micros: number;
  p99Micros: number;
  maxMicros: number;
}

/** Every 16th page of the image is zero, so the snapshot stores it as a zero page. */
const ZERO_EVERY = 16;
/** Touch this many bytes between returns to the event loop (where an abort is seen). */
const TOUCH_SLICE_BYTES = 16 << 20;

/** Bytes the demo's snapshot takes on disk for an image of `sizeBytes`, rounded up generously. */
export function demoSnapshotBytes(sizeBytes: number): number {
  const pages = sizeBytes / PAGE_SIZE;
  const storedPages = pages - Math.floor(pages / ZERO_EVERY);
  return storedPages * PAGE_SIZE + pages * PAGE_ENTRY_BYTES + (1 << 20);
}

export async function runDemo(options: DemoOptions): Promise<DemoResult> {
  const { sizeBytes, signal } = options;
  if (!Number.isSafeInteger(sizeBytes) || sizeBytes <= 0 || sizeBytes % PAGE_SIZE !== 0) {
    throw new RangeError(`the demo image size ${sizeBytes} is not a positive multiple of the ${PAGE_SIZE}-byte page`);
  }
  const parent = options.directory ?? tmpdir();
  const neededBytes = demoSnapshotBytes(sizeBytes);
  let fs;
  try {
    fs = statfsSync(parent);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') throw new WorkDirectoryMissingError(parent, options.directory === undefined ? 'TMPDIR' : 'the directory given', { cause: error });
    throw error;
  }
  const availableBytes = fs.bavail * fs.bsize;
  if (availableBytes < neededBytes) {
    throw new InsufficientSpaceError(parent, neededBytes, availableBytes, 'the demo\'s temporary snapshot', 'free some, set TMPDIR to a larger file system, or give a smaller --size');
  }
  const progress = options.progress ?? (() => {});
  const dir = mkdtempSync(join(parent, 'userfault-demo-'));
  const path = join(dir, 'demo.snap');
  let removed = false;
  const removeSnapshot = (): void => {
    if (removed) return;
    removed = true;
    rmSync(dir, { recursive: true, force: true });
  };
  try {
    signal?.throwIfAborted();
    options.log(`writing a snapshot of a ${sizeBytes}-byte image to ${path}`);
    let t0 = performance.now();
    const summary = await writeSnapshot(path, {
      regions: [{ imageOffset: 0, lengthBytes: sizeBytes, name: 'demo' }],
      content: {
        read: (offset: number, length: number, target: Uint8Array) => {
          // The writer awaits each chunk: an abort lands here, and the writer removes its temporary file.
          signal?.throwIfAborted();
          fillPattern(target.subarray(0, length), offset / PAGE_SIZE, 1, ZERO_EVERY);
          progress('write', offset + length, sizeBytes);
        },
      },
    });
    const writeMs = performance.now() - t0;
    options.log(`wrote ${path}: ${summary.fileSizeBytes} bytes for a ${sizeBytes}-byte image in ${writeMs.toFixed(0)} ms`);

    signal?.throwIfAborted();
    t0 = performance.now();
    const memory = await LazyMemory.create({ source: { kind: 'snapshot', path } });
    const restoreMs = performance.now() - t0;
    try {
      // The pager holds the file open: its name is no longer needed, and nothing is left behind from here on.
      removeSnapshot();
      signal?.throwIfAborted();
      options.log(`lazy memory ready in ${restoreMs.toFixed(1)} ms at 0x${memory.address.toString(16)}; touching ${options.pattern}ly`);

      t0 = performance.now();
      const bytes = memory.bytes();
      const pages = sizeBytes / PAGE_SIZE;
      const order = options.pattern === 'sequential' ? [...Array(pages).keys()] : shuffled(pages);
      const pagesPerSlice = TOUCH_SLICE_BYTES / PAGE_SIZE;
      let sink = 0;
      for (let start = 0; start < pages; start += pagesPerSlice) {
        const end = Math.min(pages, start + pagesPerSlice);
        for (let i = start; i < end; i++) sink += bytes[order[i]! * PAGE_SIZE + 4]!;
        progress('touch', end * PAGE_SIZE, sizeBytes);
        if (end < pages) {
          await new Promise((resolve) => setImmediate(resolve));
          signal?.throwIfAborted();
        }
      }
      const touchMs = performance.now() - t0;
      void sink;
      const badPages = findPatternMismatches(bytes, 0, 1, ZERO_EVERY);
      const m = (await memory.stats()).metrics;
      const l = m.latencyMicros;
      options.log(`touched ${pages} pages in ${touchMs.toFixed(1)} ms: ${m.faults} faults, ${m.pagesCopied} pages copied in ${m.copyIoctls} ioctls, ${m.zeroPages} zero pages`);
      options.log(`fault latency p50 ${l.p50} µs, p90 ${l.p90} µs, p99 ${l.p99} µs, max ${l.max} µs`);
      options.log(badPages.length === 0 ? 'verify: every page matches the snapshot' : `verify: BAD pages ${badPages.join(', ')}`);
      return {
        sizeBytes,
        pattern: options.pattern,
        snapshotBytes: summary.fileSizeBytes,
        writeMs: round1(writeMs),
        restoreMs: round1(restoreMs),
        touchMs: round1(touchMs),
        badPages,
        faults: m.faults,
        pagesCopied: m.pagesCopied,
        zeroPages: m.zeroPages,
        p50Micros: l.p50,
        p90Micros: l.p90,
        p99Micros: l.p99,
        maxMicros: l.max,
      };
    } finally {
      await memory.close();
    }
  } finally {
    removeSnapshot();
  }
}

function round1(value: number): number {
  return Math.round(value * 10) / 10;
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
