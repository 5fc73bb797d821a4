// The faulting side of an in-process test: a worker that touches memory while
// the test's main thread runs the pager.
import { Worker } from 'node:worker_threads';

export class Toucher {
  private readonly worker = new Worker(new URL('../fixtures/toucher-worker.js', import.meta.url));
  private nextId = 0;
  run<T = unknown>(request: Record<string, unknown>): Promise<T> {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      const onReply = (reply: { id: number; ok: boolean; value?: T; error?: string }): void => {
        if (reply.id !== id) return;
        this.worker.off('message', onReply);
        if (reply.ok) resolve(reply.value as T);
        else reject(new Error(reply.error));
      };
      this.worker.on('message', onReply);
      this.worker.postMessage({ ...request, id });
    });
  }
  async terminate(): Promise<void> {
    await this.worker.terminate();
  }
}

/** Resolve after `ms`, for bounded polling. */
export const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));
