// Entry point of a pager worker thread: serves one uffd from a SourceSpec.
// The memory's owner (another thread) touches the memory and sleeps in the
// kernel on a fault; this thread's event loop answers it.
import { parentPort, workerData } from 'node:worker_threads';
import type { MessagePort } from 'node:worker_threads';
import { PagerHost, type Pager, type PagerRegion, type PrefetchOptions } from '../pager/index.js';
import { Userfaultfd, type FeatureName } from '../uffd/index.js';
import { openSource, type SourceSpec } from './source-spec.js';

export interface PagerWorkerData {
  uffdFd: number;
  features: FeatureName[];
  regions: PagerRegion[];
  source: SourceSpec;
  prefetch: PrefetchOptions | false;
  recordWorkingSet: boolean;
  /** Image pages to stream in the background, in order (working-set replay). */
  replay?: Uint32Array;
  /** Held open while this worker lives: its closing tells the watchdog the handler is gone. */
  lifeline?: MessagePort;
}

export type PagerWorkerRequest = { type: 'metrics' } | { type: 'working-set' } | { type: 'prefetch-all' } | { type: 'stop' };
export type PagerWorkerReply =
  | { type: 'ready' }
  | { type: 'metrics'; metrics: ReturnType<Pager['snapshotMetrics']>; pages: ReturnType<Pager['pageCounts']> }
  | { type: 'working-set'; pages: Uint32Array }
  | { type: 'error'; message: string; code?: string }
  | { type: 'stopped' };

async function main(): Promise<void> {
  const data = workerData as PagerWorkerData;
  const port = parentPort!;
  const send = (reply: PagerWorkerReply): void => port.postMessage(reply);
  data.lifeline?.start();
  const uffd = Userfaultfd.adopt(data.uffdFd, data.features);
  const source = await openSource(data.source);
  const reportError = (error: Error): void => send({ type: 'error', message: error.message, code: (error as { code?: string }).code });
  // The owner unregisters its own range (it keeps its own uffd reference); this worker closes its duplicate and the source.
  const host = PagerHost.start(
    { uffd, source, regions: data.regions, prefetch: data.prefetch, recordWorkingSet: data.recordWorkingSet, closeUffd: true, closeSource: true },
    { error: reportError, poisoned: (_first, _count, error) => reportError(error), ended: (_reason, error) => error && reportError(error) },
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
      case 'stop':
        void host.stop().then(() => {
          send({ type: 'stopped' });
          port.close();
          data.lifeline?.close();
        });
        return;
      default: {
        const never: never = request;
        throw new Error(`unknown request ${JSON.stringify(never)}`);
      }
    }
  });
  send({ type: 'ready' });
}

main().catch((error: Error) => {
  parentPort?.postMessage({ type: 'error', message: error.message, code: (error as { code?: string }).code } satisfies PagerWorkerReply);
  process.exit(1);
});
