// What the pager did, cheap to update on the fault path.
import { LatencyHistogram, type LatencySummary } from './latency-histogram.js';

export interface PagerMetricsSnapshot {
  /** Page-fault messages read from the uffd. */
  faults: number;
  /** Faults on a page already being fetched: served by that fetch. */
  coalescedFaults: number;
  /** Of those, faults whose page was in flight because of read-ahead or replay. */
  prefetchHits: number;
  /** Pages resolved with the zero page (known-zero or discarded). */
  zeroPages: number;
  pagesCopied: number;
  bytesCopied: number;
  /** Pages copied ahead of any fault (read-ahead and replay). */
  prefetchedPages: number;
  /** COPY ioctls issued (a contiguous run is one ioctl). */
  copyIoctls: number;
  sourceReads: number;
  sourceErrors: number;
  /** COPY answered EAGAIN (events pending) and was retried. */
  copyRetries: number;
  /** Faults outside every known region. */
  unknownFaults: number;
  /** Pages given up and poisoned (the source failed for good, or the kernel refused the copy). */
  pagesPoisoned: number;
  /** Pages the source pushed unasked: installed (still missing) and dropped (already there or discarded). */
  pushedPages: number;
  pushedPagesDropped: number;
  /** Reads aborted because none of their pages was needed any more. */
  readsAborted: number;
  events: { remove: number; unmap: number; remap: number; fork: number; unknown: number };
  inFlightPeak: number;
  /**
   * Per-fault latency in whole microseconds, from the message being read to the page being resolved.
   */
  latencyMicros: LatencySummary;
}

export class PagerMetrics {
  faults = 0;
  coalescedFaults = 0;
  prefetchHits = 0;
  zeroPages = 0;
  pagesCopied = 0;
  bytesCopied = 0;
  prefetchedPages = 0;
  copyIoctls = 0;
  sourceReads = 0;
  sourceErrors = 0;
  copyRetries = 0;
  unknownFaults = 0;
  pagesPoisoned = 0;
  pushedPages = 0;
  pushedPagesDropped = 0;
  readsAborted = 0;
  inFlightPeak = 0;
  readonly events = { remove: 0, unmap: 0, remap: 0, fork: 0, unknown: 0 };
  private readonly latency = new LatencyHistogram();

  recordLatencyMicros(micros: number): void {
    this.latency.record(micros);
  }

  snapshot(): PagerMetricsSnapshot {
    return {
      faults: this.faults,
      coalescedFaults: this.coalescedFaults,
      prefetchHits: this.prefetchHits,
      zeroPages: this.zeroPages,
      pagesCopied: this.pagesCopied,
      bytesCopied: this.bytesCopied,
      prefetchedPages: this.prefetchedPages,
      copyIoctls: this.copyIoctls,
      sourceReads: this.sourceReads,
      sourceErrors: this.sourceErrors,
      copyRetries: this.copyRetries,
      unknownFaults: this.unknownFaults,
      pagesPoisoned: this.pagesPoisoned,
      pushedPages: this.pushedPages,
      pushedPagesDropped: this.pushedPagesDropped,
      readsAborted: this.readsAborted,
      events: { ...this.events },
      inFlightPeak: this.inFlightPeak,
      latencyMicros: this.latency.summary(),
    };
  }
}
