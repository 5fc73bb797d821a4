// Entry point of a pager worker thread: serves one uffd from a SourceSpec.
// The memory's owner (another thread) touches the memory and sleeps in the
// kernel on a fault; this thread's event loop answers it. The owner's side of
// this protocol is PagerThread (pager-thread.ts).
import { parentPort, workerData } from 'node:worker_threads';
import type { MessagePort } from 'node:worker_threads';
import { PAGE_SIZE } from '../native.js';
import { PagerHost, PageState, SharedPageCache, type PageCacheHandle, type Pager, type PagerRegion, type PrefetchOptions } from '../pager/index.js';
import { Userfaultfd, type FeatureName } from '../uffd/index.js';
import { installInRun } from './install-runs.js';
import { openSource, type SourceSpec } from './source-spec.js';
import type { AvailabilityEvent } from '../sources/network/availability.js';

export interface PagerWorkerData {
  uffdFd: number;
  features: FeatureName[];
  regions: PagerRegion[];
  source: SourceSpec;
  prefetch: PrefetchOptions | false;
  recordWorkingSet: boolean;
  /** Image pages to stream in the background, in order (working-set replay). */
  replay?: Uint32Array;
  /** A shared page cache to serve from (zero-copy restore); attached here, closed when this worker stops. */
  pageCache?: PageCacheHandle;
  /** Held open while this worker lives: its closing tells the watchdog the handler is gone. */
  lifeline?: MessagePort;
}

export type PagerWorkerRequest =
  | { type: 'metrics' }
  | { type: 'working-set' }
  | { type: 'prefetch-all' }
  /** Fill every needed page; answered with 'filled' once all are in (or serving ended first). */
  | { type: 'fill-all' }
  /** zeroFillKnownZero: see PagerStopOptions. */
  | { type: 'stop'; zeroFillKnownZero?: boolean };
export type PagerWorkerReply =
  | { type: 'ready' }
  | { type: 'metrics'; metrics: ReturnType<Pager['snapshotMetrics']>; pages: ReturnType<Pager['pageCounts']> }
  | { type: 'working-set'; pages: Uint32Array }
  | { type: 'filled'; complete: boolean }
  | { type: 'error'; message: string; code?: string }
  /** The source's peer out of reach, or back (a network source: AvailabilityEvent), as it happens. */
  | { type: 'availability'; event: AvailabilityEvent }
  | { type: 'stopped'; zeroFilledPages: number };

async function main(): Promise<void> {
  const data = workerData as PagerWorkerData;
  const port = parentPort!;
  const send = (reply: PagerWorkerReply): void => port.postMessage(reply);
  data.lifeline?.start();
  const uffd = Userfaultfd.adopt(data.uffdFd, data.features);
  const source = await openSource(data.source);
  // The owner's share for this worker: closed here when the pager stops; if this worker fails to start or dies, the owner releases it.
  const pageCache = data.pageCache ? SharedPageCache.adopt(data.pageCache) : undefined;
  // The owner hears a network source's outages as they happen (unless its own thread waits in a fault meanwhile).
  source.onAvailability?.((event) => send({ type: 'availability', event }));
  const reportError = (error: Error): void => send({ type: 'error', message: error.message, code: (error as { code?: string }).code });
  let fillWaiting = false;
  const answerFill = (complete: boolean): void => {
    if (!fillWaiting) return;
    fillWaiting = false;
    send({ type: 'filled', complete });
  };
  // The owner unregisters its own range (it keeps its own uffd reference).
  // This worker closes its duplicate and the source itself, after the
  // optional zero fill (which needs both), so not through the host.
  const host = PagerHost.start(
    { uffd, source, pageCache, regions: data.regions, prefetch: data.prefetch, recordWorkingSet: data.recordWorkingSet, closeUffd: false, closeSource: false },
    {
      error: reportError,
      poisoned: (_first, _count, error) => reportError(error),
      complete: () => answerFill(true),
      ended: (_reason, error) => {
        if (error) reportError(error);
        answerFill(false);
      },
    },
  );
  const pager = host.pager;
  if (data.replay) pager.prefetchPages(data.replay);
  port.on('message', (request: PagerWorkerRequest) => {
    switch (request.type) {
      case 'metrics':
        send({ type: 'metrics', metrics: pager.snapshotMetrics(), pages: pager.pageCounts() });
        return;
      case 'working-set':
        send({ type: 'working-set', pages: pager.workingSet() });
        return;
      case 'prefetch-all':
        pager.prefetchAll();
        return;
      case 'fill-all':
        fillWaiting = true;
        if (pager.status !== 'running') answerFill(pager.isComplete);
        else if (pager.isComplete) answerFill(true);
        else pager.prefetchAll();
        return;
      case 'stop':
        void (async () => {
          try {
            await host.stop();
          } catch (error) {
            reportError(error as Error);
          }
          let zeroFilledPages = 0;
          try {
            if (request.zeroFillKnownZero) zeroFilledPages = zeroFillKnownZero(pager, uffd);
          } catch (error) {
            reportError(error as Error);
          } finally {
            uffd.close();
            pageCache?.close();
          }
          try {
            await source.close?.();
          } catch (error) {
            reportError(error as Error);
          }
          answerFill(false);
          send({ type: 'stopped', zeroFilledPages });
          port.close();
          data.lifeline?.close();
        })();
        return;
      default: {
        const never: never = request;
        throw new Error(`unknown request ${JSON.stringify(never)}`);
      }
    }
  });
  send({ type: 'ready' });
}

/**
 * After the pager stopped (nothing else installs any more): the zero page for
 * every page still without contents that is known to read zero — the source
 * says it is zero, or the application discarded it (MADV_DONTNEED: zero from
 * then on). Returns the pages it installed.
 */
function zeroFillKnownZero(pager: Pager, uffd: Userfaultfd): number {
  let installed = 0;
  for (const region of pager.regions) {
    const firstIndex = region.sourceOffset / PAGE_SIZE;
    const pageCount = region.lengthBytes / PAGE_SIZE;
    let runStart = -1;
    const flush = (end: number): void => {
      if (runStart < 0) return;
      installed += installInRun(uffd, region.address + runStart * PAGE_SIZE, (end - runStart) * PAGE_SIZE, 'zero') / PAGE_SIZE;
      runStart = -1;
    };
    for (let i = 0; i < pageCount; i++) {
      const index = firstIndex + i;
      const state = pager.states.get(index);
      const knownZero =
        state === PageState.DISCARDED ||
        ((state === PageState.MISSING || state === PageState.IN_FLIGHT) && pager.source.isZero?.(index * PAGE_SIZE, PAGE_SIZE) === true);
      if (knownZero && runStart < 0) runStart = i;
      else if (!knownZero) flush(i);
    }
    flush(pageCount);
  }
  return installed;
}

main().catch((error: Error) => {
  parentPort?.postMessage({ type: 'error', message: error.message, code: (error as { code?: string }).code } satisfies PagerWorkerReply);
  process.exit(1);
});
