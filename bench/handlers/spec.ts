// What serves the toucher's faults in one bench run, and where the threads sit.
import type { PagerMetricsSnapshot, PrefetchOptions } from '../../src/pager/index.js';
import type { RemoteSourceStats } from '../../src/pages/remote-source.js';
import type { BulkStreamStats } from './bulk-stream.js';
import type { LeanPagerStats, LeanWait } from './lean-pager.js';

/**
 * Where a page comes from. memory: the image held in memory; snapshot: the
 * snapshot file through SnapshotSource (every page CRC-checked); raw-file: the
 * same file's data section through RawFileSource, unchecked (what the C
 * handler preads); sync-raw / sync-snapshot: the same bytes by pread on the
 * pager's thread, unchecked / CRC-checked (bench/handlers/sync-file-source.ts);
 * delay: the image in memory after a round trip to the delay server; remote:
 * RemoteSource to the bench's page server (`userfault pages serve` in another
 * process, over loopback TCP).
 */
export type SourceKind = 'memory' | 'snapshot' | 'raw-file' | 'sync-raw' | 'sync-snapshot' | 'delay' | 'remote';

/**
 * Traffic on a remote source's bulk connection while the toucher faults.
 * reads: a prefetch-all's reads kept up for the whole run and dropped
 * (bulk-stream.ts); pager: the Pager's own prefetch of the image from
 * `fromPage` to its end (installed, so it ends when they are all in).
 * mbPerSecond paces the reads (default: as fast as they come back).
 */
export type ReadsStreamSpec = { kind: 'reads'; runPages: number; inFlight: number; mbPerSecond?: number };
export type StreamSpec = ReadsStreamSpec | { kind: 'pager'; fromPage: number };

export type HandlerSpec =
  /**
   * The real Pager (src/pager), in a worker thread, on its event loop. With
   * spinUs, the bench busy-polls the uffd from a setImmediate after each
   * fault (armed by the source's reads) before the loop goes back to epoll:
   * spin-then-park without changing the Pager.
   */
  | {
      kind: 'pager';
      source: SourceKind;
      prefetch: PrefetchOptions | false;
      spinUs?: number;
      recordWorkingSet?: boolean;
      replay?: Uint32Array;
      /** remote: demand and background reads on one connection (RemoteSource singleConnection). */
      singleConnection?: boolean;
      /** remote: a bulk stream while the toucher runs. */
      stream?: StreamSpec;
      /**
       * Zero-copy restore (LazyMemoryOptions.pageCache's path): the handler
       * hands the toucher (memory 'memfd-minor') a SharedPageCache's memfd
       * first, empty (a first restore: every page read, checked and put in the
       * cache, in the time) or filled before the run (a later restore).
       */
      pageCache?: 'empty' | 'filled';
    }
  /**
   * Bench-only prototype (bench/handlers/lean-pager.ts): the fault path cut
   * down to what the C handler does, in JS on the native surface, with a
   * synchronous source, waiting in poll(2) or in the event loop.
   */
  | { kind: 'lean'; source: 'memory' | 'raw-file'; prefetch: PrefetchOptions | false; wait: LeanWait; spinUs: number; aheadPages?: number }
  /**
   * The C reference handler (bench/c/ref-handler.c), a process of its own; mmap: COPY straight from a mapping of the file;
   * memfd: the pages put in a memfd's page cache the toucher maps MAP_PRIVATE (toucher memory 'memfd-minor') and mapped
   * with UFFDIO_CONTINUE, filled as faults come (memfd) or before the run (memfd-filled: a later restore of the same snapshot);
   * remote: one READ at a time to the bench's page server (bench/c/page-client.h).
   */
  | {
      kind: 'c';
      source: 'memory' | 'raw-file' | 'mmap' | 'delay' | 'remote' | 'memfd' | 'memfd-filled';
      prefetch: PrefetchOptions | false;
      spinUs: number;
      aheadPages?: number;
      /** remote: a bulk stream from another client process (stream-client.ts) to the same server while the C client serves. */
      stream?: ReadsStreamSpec;
    }
  /**
   * The real `userfault serve` (bench/serve-process.ts), a process of its own
   * started by the firecracker section, on the image as a raw memory file or
   * as the CRC-checked snapshot; the toucher speaks Firecracker's handshake.
   */
  | { kind: 'serve'; source: ServeMemory; /** serve from another build (--serve-baseline): before and after a change, in one run. */ baseline?: boolean }
  /** No handler: the kernel's own demand paging, or eager reading. */
  | { kind: 'none' };

/** raw / snapshot: a file on this host; remote: `serve --from tcp://` the bench's page server (the snapshot, over loopback). */
/** snapshot-cache: the snapshot with --page-cache (clients ask for the cache first). */
export type ServeMemory = 'raw' | 'snapshot' | 'remote' | 'snapshot-cache';

/**
 * cross-cpu: toucher on CPU 0, handler on CPU 1 (every fault wakes a thread on
 * the other CPU). same-cpu: both on CPU 1. unpinned: the scheduler decides.
 */
export type Placement = 'cross-cpu' | 'same-cpu' | 'unpinned';

export function cpusFor(placement: Placement): { toucher: number; handler: number } {
  switch (placement) {
    case 'cross-cpu':
      return { toucher: 0, handler: 1 };
    case 'same-cpu':
      return { toucher: 1, handler: 1 };
    case 'unpinned':
      return { toucher: -1, handler: -1 };
    default: {
      const never: never = placement;
      throw new RangeError(`unknown placement ${String(never)}`);
    }
  }
}

/** What the C reference handler prints when the toucher hangs up. */
export interface CHandlerStats {
  faults: number;
  messages: number;
  batches: number;
  sourceReads: number;
  copyIoctls: number;
  pagesCopied: number;
  wakes: number;
  eexist: number;
  eagain: number;
  sleeps: number;
  spinHits: number;
  aheadPages?: number;
  /** remote: bytes of frames received from the page server. */
  bytesReceived?: number;
  /** memfd: pages put in the memfd's page cache during the run (the fill), and memfd pages the toucher's stores reached (must be 0). */
  pagesFilled?: number;
  sharedPagesWritten?: number;
}

/**
 * CPU time of the serving thread while it served (from /proc: schedstat's
 * run time, stat's user and system ticks, and its context switches).
 */
export interface ThreadCpu {
  runNs: number;
  userMs: number;
  systemMs: number;
  voluntarySwitches: number;
  involuntarySwitches: number;
}

/** What a handler reports after a run. */
export type HandlerReport =
  | {
      kind: 'pager';
      metrics: PagerMetricsSnapshot;
      workingSet?: Uint32Array;
      spinHits?: number;
      errors: string[];
      cpu: ThreadCpu;
      /** A remote source's counters (reads per connection, bytes). */
      remote?: RemoteSourceStats;
      stream?: StreamReport;
    }
  | { kind: 'lean'; stats: LeanPagerStats; cpu: ThreadCpu }
  | { kind: 'c'; stats: CHandlerStats; cpu: ThreadCpu; stream?: StreamReport }
  /** cpu: serve's main thread (every client's pager runs there); processRunNs: all its threads. */
  | { kind: 'serve'; metrics: PagerMetricsSnapshot; probePagesCopied: number; cpu: ThreadCpu; processRunNs: number }
  | { kind: 'none' };

/** What a bulk stream did during a run (StreamSpec). */
export interface StreamReport {
  kind: StreamSpec['kind'];
  /** reads: the stream's reads; pager: its pages, by the pages installed from fromPage on. */
  reads?: BulkStreamStats;
  pagesStreamed?: number;
  /** pager: ms from the start until its last page was in (undefined: it did not finish before the toucher did). */
  doneMs?: number;
  /** From the stream's start to the toucher's hang-up. */
  runMs: number;
}

export function prefetchArg(prefetch: PrefetchOptions | false): string {
  if (prefetch === false) return '1,1';
  const initial = Math.max(1, prefetch.initialPages ?? 1);
  return `${initial},${Math.max(initial, prefetch.maxPages ?? 64)}`;
}
