// Pages some thread is asleep on: the pager read a fault for the page and has
// not resolved it yet. Every path that settles a page (a copy, the zero page,
// poison, a wake) settles its waiters here, which is also where fault latency
// is taken: from the first fault message read to the resolution.
export class FaultWaiters {
  /** When the first unresolved fault for a page was read (performance.now()), by image page index. */
  private readonly since = new Map<number, number>();

  /** A fault for `pageIndex` was read at `now` (a second fault on the same page keeps the first time). */
  add(pageIndex: number, now: number): void {
    if (!this.since.has(pageIndex)) this.since.set(pageIndex, now);
  }

  has(pageIndex: number): boolean {
    return this.since.has(pageIndex);
  }

  /** The page was resolved: its waiters are gone; returns how long the first waited (µs), if any did. */
  settle(pageIndex: number): number | undefined {
    const since = this.since.get(pageIndex);
    if (since === undefined) return undefined;
    this.since.delete(pageIndex);
    return (performance.now() - since) * 1000;
  }

  /** Forget a page's waiters without resolving it (its memory is gone: they were woken to fail). */
  drop(pageIndex: number): void {
    this.since.delete(pageIndex);
  }

  /** The pages waited on now, as a copy (safe to settle while iterating). */
  pages(): number[] {
    return [...this.since.keys()];
  }

  get size(): number {
    return this.since.size;
  }
}
