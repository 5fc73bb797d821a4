// Pages some thread is asleep on: the pager read a fault for the page and has
// not resolved it yet. Every path that settles a page (a copy, the zero page,
// poison, a wake) settles its waiters here, which is also where fault latency
// is taken: from the first fault message read to the resolution.
export class FaultWaiters {
  /** When the first unresolved fault for a page was read (performance.now()), by image page index. */
  private readonly since = new Map<number, number>();
  /**
   * With the faulting threads' ids (UFFD_FEATURE_THREAD_ID): which thread
   * waits on which page since when, so each thread's blocked time is known
   * (QEMU's postcopy-blocktime, per vCPU). A thread waits on one page at a time.
   */
  private readonly threads = new Map<number, Array<{ threadId: number; since: number }>>();
  private readonly blockedMicros = new Map<number, number>();

  /** A fault for `pageIndex` was read at `now` (a second fault on the same page keeps the first time). */
  add(pageIndex: number, now: number, threadId = 0): void {
    if (!this.since.has(pageIndex)) this.since.set(pageIndex, now);
    if (threadId === 0) return;
    const waiting = this.threads.get(pageIndex);
    if (!waiting) this.threads.set(pageIndex, [{ threadId, since: now }]);
    else if (!waiting.some((w) => w.threadId === threadId)) waiting.push({ threadId, since: now });
  }

  /** Microseconds each thread (by id) spent waiting on pages, resolved ones only. */
  blocktime(): Map<number, number> {
    return new Map(this.blockedMicros);
  }

  has(pageIndex: number): boolean {
    return this.since.has(pageIndex);
  }

  /** The page was resolved: its waiters are gone; returns how long the first waited (µs), if any did. */
  settle(pageIndex: number): number | undefined {
    const since = this.since.get(pageIndex);
    if (since === undefined) return undefined;
    this.since.delete(pageIndex);
    const now = performance.now();
    const waiting = this.threads.get(pageIndex);
    if (waiting) {
      this.threads.delete(pageIndex);
      for (const w of waiting) this.blockedMicros.set(w.threadId, (this.blockedMicros.get(w.threadId) ?? 0) + (now - w.since) * 1000);
    }
    return (now - since) * 1000;
  }

  /** Forget a page's waiters without resolving it (its memory is gone: they were woken to fail). */
  drop(pageIndex: number): void {
    this.since.delete(pageIndex);
    this.threads.delete(pageIndex);
  }

  /** The pages waited on now, as a copy (safe to settle while iterating). */
  pages(): number[] {
    return [...this.since.keys()];
  }

  get size(): number {
    return this.since.size;
  }
}
