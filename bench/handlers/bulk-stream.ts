// A bulk stream for the remote section: the traffic of a prefetch-all of the
// whole image (background reads of the read-ahead maximum, 64 pages, as many
// in flight as the Pager lets background reads have), kept up for as long as
// the toucher runs. The pages are read and dropped, not installed: a real
// prefetch-all would run out once every page is in, and the faults after that
// would be faults on an idle network. The Pager's own prefetch (which also
// installs what it reads) is a variant of its own (pager-host.ts).
import type { PageSource } from '../../src/sources/page-source.js';
import { isAbortError } from '../../src/sources/page-source.js';

export interface BulkStreamOptions {
  /** Pages per read (default 64: the read-ahead maximum, the Pager's longest background run). */
  runPages?: number;
  /** Reads in flight (default 32: the Pager's default maxBackgroundInFlight, half of its 64). */
  inFlight?: number;
  /** Pace the reads to this rate (10^6 bytes/s); default: as fast as they come back. */
  mbPerSecond?: number;
}

export interface BulkStreamStats {
  reads: number;
  bytes: number;
  /** From start to stop. */
  ms: number;
  /** Reads that failed other than by being aborted at the stop. */
  errors: number;
  firstError?: string;
}

export interface BulkStream {
  /** Abort the reads in flight and wait for them to settle. */
  stop(): Promise<BulkStreamStats>;
}

const PAGE_BYTES = 4096;

export function startBulkStream(source: PageSource, options: BulkStreamOptions = {}): BulkStream {
  const runBytes = (options.runPages ?? 64) * PAGE_BYTES;
  const slots = options.inFlight ?? 32;
  // One controller per loop: one signal shared by every read would collect more abort listeners than Node likes.
  const controllers: AbortController[] = [];
  const stats: BulkStreamStats = { reads: 0, bytes: 0, ms: 0, errors: 0 };
  const startedAt = performance.now();
  let next = 0;
  let stopped = false;
  // Pacing: each read takes the next slot of runBytes / rate on a shared clock, and waits for it.
  const slotMs = options.mbPerSecond ? runBytes / (options.mbPerSecond * 1e3) : 0;
  let nextSlotAt = startedAt;
  const loops: Promise<void>[] = [];

  // One loop per slot, each with its own buffer: a read, then the next run of the image, wrapping at its end.
  const loop = async (): Promise<void> => {
    const controller = new AbortController();
    controllers.push(controller);
    const buffer = new Uint8Array(runBytes);
    while (!stopped) {
      if (slotMs > 0) {
        const at = Math.max(performance.now(), nextSlotAt);
        nextSlotAt = at + slotMs;
        const waitMs = at - performance.now();
        if (waitMs > 0) await new Promise((resolve) => setTimeout(resolve, waitMs));
        if (stopped) return;
      }
      const offset = next;
      const length = Math.min(runBytes, source.sizeBytes - offset);
      next = offset + length >= source.sizeBytes ? 0 : offset + length;
      try {
        await source.read(offset, length, buffer, { priority: 'background', signal: controller.signal });
        stats.reads++;
        stats.bytes += length;
      } catch (error) {
        if (stopped && isAbortError(error)) return;
        stats.errors++;
        stats.firstError ??= (error as Error).message;
        return;
      }
    }
  };
  for (let i = 0; i < slots; i++) loops.push(loop());

  return {
    async stop(): Promise<BulkStreamStats> {
      stopped = true;
      stats.ms = performance.now() - startedAt;
      for (const controller of controllers) controller.abort();
      await Promise.all(loops);
      return stats;
    },
  };
}
