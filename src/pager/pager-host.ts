// The one way a host runs a pager: LazyMemory's worker, each client session of
// the handler service, and the VMM's lazy guest memory all start, stop and
// hear from their pager through this, so the order of teardown and the
// meaning of each event are written once.
//
// Teardown order (each step needs the one before):
//   1. the pager stops: no new ioctl on the uffd, reads in flight aborted and settled
//   2. the ranges the host registered are unregistered (waiters still asleep
//      wake and retry as plain memory; nothing can be filled any more)
//   3. the uffd closes — never before the pager is done with it: a COPY on a
//      closed descriptor number could land in whichever uffd took the number next
//   4. the source closes (a file, a connection), if the host gave it away
import type { PageSource } from '../sources/page-source.js';
import type { Userfaultfd } from '../uffd/userfaultfd.js';
import type { PagerRegion } from './address-map.js';
import { Pager, type InstallHow, type PagerOptions } from './pager.js';

export interface PagerHostOptions extends PagerOptions {
  /** Unregister the regions when stopping (the host registered them; default false). */
  unregisterOnStop?: boolean;
  /** Close the uffd when stopping (default true). */
  closeUffd?: boolean;
  /** Close the source when stopping (default false: a shared source outlives one host). */
  closeSource?: boolean;
}

/** What a host hears. Every callback is optional; an error with no listener becomes a process warning. */
export interface PagerHostListener {
  /** Something went wrong that did not stop serving (a read that will be retried, an odd errno). */
  error?(error: Error): void;
  /** Pages the source could not supply were poisoned: an access to them gets SIGBUS/EFAULT. */
  poisoned?(firstPageIndex: number, pageCount: number, error: Error): void;
  installed?(firstPageIndex: number, pageCount: number, how: InstallHow): void;
  /** Every needed page is in. */
  complete?(): void;
  /**
   * Serving is over on its own: 'exit' (the served address space is gone) or
   * 'failed' (the uffd cannot be read any more). stop() is still the host's to call.
   */
  ended?(reason: 'exit' | 'failed', error?: Error): void;
}

export class PagerHost {
  readonly pager: Pager;
  private stopping: Promise<void> | undefined;
  private unregistered = false;

  private constructor(private readonly options: PagerHostOptions, listener: PagerHostListener) {
    this.pager = new Pager(options);
    const pager = this.pager;
    pager.on('error', (error) => (listener.error ? listener.error(error) : process.emitWarning(error)));
    pager.on('poisoned', (first, count, error) => listener.poisoned?.(first, count, error));
    if (listener.installed) pager.on('installed', (first, count, how) => listener.installed!(first, count, how));
    pager.on('complete', () => listener.complete?.());
    pager.on('exit', () => listener.ended?.('exit'));
    pager.on('failed', (error) => (listener.ended ? listener.ended('failed', error) : process.emitWarning(error)));
  }

  /** Build the pager and start serving from this thread's event loop. */
  static start(options: PagerHostOptions, listener: PagerHostListener = {}): PagerHost {
    const host = new PagerHost(options, listener);
    host.pager.start();
    return host;
  }

  get uffd(): Userfaultfd {
    return this.options.uffd;
  }

  get source(): PageSource {
    return this.options.source;
  }

  get regions(): readonly PagerRegion[] {
    return this.pager.regions;
  }

  /**
   * Unregister the regions now, while the pager may still run: every thread
   * asleep on a page wakes and retries as ordinary memory (a VMM lets a vCPU
   * go this way after a page could not be supplied and the VM is stopping).
   */
  unregister(): void {
    if (this.unregistered || this.uffd.isClosed) return;
    this.unregistered = true;
    for (const region of this.pager.regions) this.uffd.unregister(region.address, region.lengthBytes);
  }

  /** Stop serving and release what the host gave away, in the order above. Idempotent. */
  stop(): Promise<void> {
    this.stopping ??= (async () => {
      await this.pager.stop();
      try {
        if (this.options.unregisterOnStop && this.pager.status !== 'exited') this.unregister();
      } finally {
        if (this.options.closeUffd ?? true) this.uffd.close();
        if (this.options.closeSource) await this.options.source.close?.();
      }
    })();
    return this.stopping;
  }
}
