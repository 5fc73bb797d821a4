// Worker-thread entry that serves one toucher: it listens on a Unix socket,
// receives the toucher's uffd and region, then runs either the real Pager on
// this thread's event loop (as LazyMemory's pager worker does) or the
// bench-only lean pager. When the toucher hangs up it reports and ends.
import { openSync, closeSync } from 'node:fs';
import { parentPort, workerData } from 'node:worker_threads';
import { native } from '../../src/native.js';
import { Pager, SharedPageCache, type PrefetchOptions } from '../../src/pager/index.js';
import type { PageSource } from '../../src/sources/page-source.js';
import { BufferSource } from '../../src/sources/buffer-source.js';
import { RawFileSource } from '../../src/sources/raw-file-source.js';
import { RemoteSource } from '../../src/pages/remote-source.js';
import { SnapshotSource } from '../../src/sources/snapshot-source.js';
import { ERRNO } from '../../src/errno.js';
import { Userfaultfd } from '../../src/uffd/userfaultfd.js';
import { startBulkStream } from './bulk-stream.js';
import { DelayedSource } from './delayed-source.js';
import { SyncFileSource } from './sync-file-source.js';
import type { HandlerReport, StreamReport, StreamSpec } from './spec.js';
import { runLeanPager, type LeanSource, type LeanWait } from './lean-pager.js';
import { threadCpuNow, threadCpuSince } from './thread-cpu.js';

export type PagerHostSource =
  | { kind: 'memory'; image: SharedArrayBuffer }
  | { kind: 'snapshot'; path: string }
  | { kind: 'raw-file'; path: string; fileOffset: number; sizeBytes: number }
  | { kind: 'sync-raw' | 'sync-snapshot'; path: string }
  | { kind: 'delay'; socketPath: string; image: SharedArrayBuffer }
  | { kind: 'remote'; url: string; sessionId: string; singleConnection: boolean };

export interface PagerHostData {
  socketPath: string;
  mode: 'pager' | 'lean';
  source: PagerHostSource;
  prefetch: PrefetchOptions | false;
  /** CPU to pin this thread to, or -1. */
  cpu: number;
  /** How the lean pager waits (the real Pager always waits in the event loop). */
  wait: LeanWait;
  spinUs: number;
  /** The lean pager's async read-ahead (the real Pager's is PrefetchOptions.aheadWindows). */
  aheadPages: number;
  recordWorkingSet: boolean;
  replay?: Uint32Array;
  stream?: StreamSpec;
  /** Serve through a shared page cache, its memfd sent to the toucher first: empty, or filled before the toucher comes. */
  pageCache?: 'empty' | 'filled';
}

export type PagerHostMessage = { type: 'listening' } | { type: 'report'; report: HandlerReport } | { type: 'error'; message: string };

const C = native.constants;

/** Resolve on the fd's next readable (or hang-up) event in this thread's loop. */
function readable(fd: number): Promise<void> {
  return new Promise((resolve) => {
    const watch = native.watchFd(fd, C.UV_READABLE | C.UV_DISCONNECT, () => {
      native.unwatchFd(watch);
      resolve();
    });
  });
}

async function openPagerSource(source: PagerHostSource): Promise<PageSource> {
  switch (source.kind) {
    case 'memory':
      return new BufferSource(source.image, 'bench image in memory');
    case 'snapshot':
      return SnapshotSource.open(source.path);
    case 'raw-file':
      return RawFileSource.open(source.path, { fileOffset: source.fileOffset, sizeBytes: source.sizeBytes });
    case 'sync-raw':
    case 'sync-snapshot':
      return SyncFileSource.open(source.path, { checkCrc: source.kind === 'sync-snapshot' });
    case 'delay':
      return DelayedSource.connect(source.socketPath, new Uint8Array(source.image));
    case 'remote':
      return RemoteSource.connect(source.url, { sessionId: Buffer.from(source.sessionId, 'hex'), singleConnection: source.singleConnection });
    default: {
      const never: never = source;
      throw new Error(`unknown source ${JSON.stringify(never)}`);
    }
  }
}

/** Accept the toucher (sending it `memoryFd` first, for it to map) and receive [address, length] with its uffd. */
async function acceptToucher(listenFd: number, memoryFd?: number): Promise<{ conn: number; uffdFd: number; address: number; lengthBytes: number }> {
  let conn: number;
  for (;;) {
    conn = native.unixAccept(listenFd);
    if (conn >= 0) break;
    if (conn !== -ERRNO.EAGAIN) throw new Error(`accept: errno ${-conn}`);
    await readable(listenFd);
  }
  if (memoryFd !== undefined && native.sendWithFds(conn, Uint8Array.of(0x6d), [memoryFd]) !== 1) throw new Error('could not send the toucher its memory');
  const region = new Uint8Array(16);
  for (;;) {
    const [n, fds] = native.recvWithFds(conn, region);
    if (n === 16 && fds.length === 1) {
      const view = new DataView(region.buffer);
      return { conn, uffdFd: fds[0]!, address: Number(view.getBigUint64(0, true)), lengthBytes: Number(view.getBigUint64(8, true)) };
    }
    if (n !== -ERRNO.EAGAIN) throw new Error(`the toucher sent ${n} bytes and ${fds.length} fds, expected its region and uffd`);
    await readable(conn);
  }
}

/** Resolve when the peer hangs up (end of file on the connection). */
function hangUp(conn: number): Promise<void> {
  const probe = new Uint8Array(64);
  return new Promise((resolve) => {
    const watch = native.watchFd(conn, C.UV_READABLE | C.UV_DISCONNECT, () => {
      const n = native.readInto(conn, probe);
      if (n > 0 || n === -ERRNO.EAGAIN) return;
      native.unwatchFd(watch);
      resolve();
    });
  });
}

/**
 * Start the bulk traffic of a StreamSpec: the bench's stream of reads on the
 * source (bulk-stream.ts), or the Pager's own prefetch of the pages from
 * fromPage to the end, timed by the pages it installs.
 */
function startStream(pager: Pager, source: PageSource, spec: StreamSpec): { stop(): Promise<StreamReport> } {
  const startedAt = performance.now();
  switch (spec.kind) {
    case 'reads': {
      const stream = startBulkStream(source, { runPages: spec.runPages, inFlight: spec.inFlight, mbPerSecond: spec.mbPerSecond });
      return {
        async stop() {
          const reads = await stream.stop();
          return { kind: 'reads', reads, runMs: reads.ms };
        },
      };
    }
    case 'pager': {
      const pageCount = source.sizeBytes / 4096;
      const wanted = pageCount - spec.fromPage;
      let installed = 0;
      let doneMs: number | undefined;
      const onInstalled = (first: number, count: number): void => {
        const end = first + count;
        if (end <= spec.fromPage) return;
        installed += end - Math.max(first, spec.fromPage);
        if (installed >= wanted && doneMs === undefined) doneMs = performance.now() - startedAt;
      };
      pager.on('installed', onInstalled);
      pager.prefetchPages(Array.from({ length: wanted }, (_, i) => spec.fromPage + i));
      return {
        async stop() {
          const runMs = performance.now() - startedAt;
          pager.off('installed', onInstalled);
          return { kind: 'pager', pagesStreamed: installed, doneMs, runMs };
        },
      };
    }
    default: {
      const never: never = spec;
      throw new Error(`unknown stream ${JSON.stringify(never)}`);
    }
  }
}

/** A later restore's cache: every page read (and checked) from the source before the toucher comes. */
async function fillCache(cache: SharedPageCache, source: PageSource): Promise<void> {
  const chunk = new Uint8Array(2 << 20);
  for (let offset = 0; offset < source.sizeBytes; offset += chunk.length) {
    const length = Math.min(chunk.length, source.sizeBytes - offset);
    await source.read(offset, length, chunk.subarray(0, length));
    cache.fill(offset / 4096, length / 4096, chunk);
  }
}

async function main(): Promise<void> {
  const data = workerData as PagerHostData;
  const port = parentPort!;
  if (data.cpu >= 0) native.setAffinity(data.cpu);
  const source = data.mode === 'pager' ? await openPagerSource(data.source) : undefined;
  const pageCache = data.pageCache ? SharedPageCache.create(source!.sizeBytes, 'bench') : undefined;
  if (data.pageCache === 'filled') await fillCache(pageCache!, source!);
  const listenFd = native.unixListen(data.socketPath, 1);
  port.postMessage({ type: 'listening' } satisfies PagerHostMessage);
  const toucher = await acceptToucher(listenFd, pageCache?.fd);
  native.close(listenFd);
  const ack = Uint8Array.of(0x73);
  const cpuAtStart = threadCpuNow();

  if (data.mode === 'lean') {
    let leanSource: LeanSource;
    let fileFd: number | undefined;
    if (data.source.kind === 'memory') leanSource = { kind: 'memory', image: new Uint8Array(data.source.image) };
    else if (data.source.kind === 'raw-file') {
      fileFd = openSync(data.source.path, 'r');
      leanSource = { kind: 'raw-file', fd: fileFd, fileOffset: data.source.fileOffset };
    } else throw new Error(`the lean pager reads memory or a raw file, not ${data.source.kind}`);
    native.sendWithFds(toucher.conn, ack, []);
    const stats = await runLeanPager({
      uffdFd: toucher.uffdFd,
      connFd: toucher.conn,
      base: toucher.address,
      sizeBytes: toucher.lengthBytes,
      source: leanSource,
      prefetch: data.prefetch,
      wait: data.wait,
      spinUs: data.spinUs,
      aheadPages: data.aheadPages,
    });
    const cpu = threadCpuSince(cpuAtStart);
    if (fileFd !== undefined) closeSync(fileFd);
    native.close(toucher.uffdFd);
    native.close(toucher.conn);
    port.postMessage({ type: 'report', report: { kind: 'lean', stats, cpu } } satisfies PagerHostMessage);
    return;
  }

  const uffd = Userfaultfd.adopt(toucher.uffdFd, []);
  const pager = new Pager({
    uffd,
    source: source!,
    spinMicros: data.spinUs,
    regions: [{ address: toucher.address, lengthBytes: toucher.lengthBytes, sourceOffset: 0 }],
    prefetch: data.prefetch,
    recordWorkingSet: data.recordWorkingSet,
    pageCache,
  });
  const errors: string[] = [];
  pager.on('error', (error) => errors.push(error.message));
  pager.start();
  if (data.replay) pager.prefetchPages(data.replay);
  const stream = data.stream ? startStream(pager, source!, data.stream) : undefined;
  const done = hangUp(toucher.conn);
  native.sendWithFds(toucher.conn, ack, []);
  await done;
  const cpu = threadCpuSince(cpuAtStart);
  const streamReport = await stream?.stop();
  await pager.stop();
  const report: HandlerReport = {
    kind: 'pager',
    metrics: pager.snapshotMetrics(),
    workingSet: data.recordWorkingSet ? pager.workingSet() : undefined,
    errors,
    cpu,
    remote: source instanceof RemoteSource ? { ...source.stats } : undefined,
    stream: streamReport,
  };
  uffd.close();
  pageCache?.close();
  await source!.close?.();
  native.close(toucher.conn);
  port.postMessage({ type: 'report', report } satisfies PagerHostMessage);
}

main().catch((error: Error) => {
  parentPort?.postMessage({ type: 'error', message: error.stack ?? error.message } satisfies PagerHostMessage);
});
