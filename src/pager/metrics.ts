// What the pager did, cheap to update on the fault path. These counters are
// the pager's part of the one metrics model: the JSON status shows their
// snapshot(), and src/metrics/pager-reporter.ts exports the same objects to
// Prometheus (names in src/metrics/catalog.ts).
import { LatencyHistogram, type LatencySummary } from '../stats/latency-histogram.js';
import type { PageCounts } from './page-state.js';

/**
 * What a fault found, by the state of its page when its message was read: a
 * missing page (a read starts, or the zero page for a known-zero one), one
 * already in flight (coalesced), present (the message raced the fill: a wake),
 * discarded (the zero page), poisoned, outside every region (or unmapped),
 * a MINOR fault (CONTINUE), a write-protect fault (unprotected).
 */
export const FAULT_KINDS = ['missing', 'in-flight', 'present', 'discarded', 'poisoned', 'outside', 'minor', 'write-protect'] as const;
export type FaultKind = (typeof FAULT_KINDS)[number];

export interface PagerMetricsSnapshot {
  /** Page-fault messages read from the uffd. */
  faults: number;
  /** The same faults by what they found (sums to faults). */
  faultsByKind: Record<FaultKind, number>;
  /** Faults on a page already being fetched: served by that fetch. */
  coalescedFaults: number;
  /** Of those, faults whose page was in flight because of read-ahead or replay. */
  prefetchHits: number;
  /** Pages resolved with the zero page (known-zero or discarded). */
  zeroPages: number;
  pagesCopied: number;
  bytesCopied: number;
  /** Pages mapped from a shared page cache with UFFDIO_CONTINUE (zero-copy restore; not in pagesCopied). */
  pagesMapped: number;
  /** Pages this pager put in the shared page cache (read, checked, written once for every restore). */
  cacheFills: number;
  /** Faults answered by a wake alone: the page was already there (EEXIST). */
  wakes: number;
  /** Pages copied ahead of any fault (read-ahead and replay). */
  prefetchedPages: number;
  /** COPY ioctls issued (a contiguous run is one ioctl; CONTINUE ones with a page cache). */
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
  /** Per source read, µs, from the read started to its bytes in hand (a synchronous read included). */
  sourceReadLatencyMicros: LatencySummary;
}

/** A pager's live numbers (the gauges), beside its counters. */
export interface PagerGauges {
  pages: PageCounts;
  pendingPages: number;
  readsInFlight: number;
}

export class PagerMetrics {
  faults = 0;
  readonly faultsByKind: Record<FaultKind, number> = Object.fromEntries(FAULT_KINDS.map((kind) => [kind, 0])) as Record<FaultKind, number>;
  prefetchHits = 0;
  zeroPages = 0;
  pagesCopied = 0;
  bytesCopied = 0;
  pagesMapped = 0;
  cacheFills = 0;
  wakes = 0;
  prefetchedPages = 0;
  copyIoctls = 0;
  sourceReads = 0;
  sourceErrors = 0;
  copyRetries = 0;
  pagesPoisoned = 0;
  pushedPages = 0;
  pushedPagesDropped = 0;
  readsAborted = 0;
  inFlightPeak = 0;
  readonly events = { remove: 0, unmap: 0, remap: 0, fork: 0, unknown: 0 };
  readonly latency = new LatencyHistogram();
  readonly sourceReadLatency = new LatencyHistogram();

  /** A fault message was read; `kind` is what it found. */
  fault(kind: FaultKind): void {
    this.faults++;
    this.faultsByKind[kind]++;
  }

  /** Coalesced faults are the in-flight ones: one count, read two ways. */
  get coalescedFaults(): number {
    return this.faultsByKind['in-flight'];
  }

  get unknownFaults(): number {
    return this.faultsByKind.outside;
  }

  recordLatencyMicros(micros: number): void {
    this.latency.record(micros);
  }

  recordSourceReadMicros(micros: number): void {
    this.sourceReadLatency.record(micros);
  }

  /**
   * Add another pager's counts to these (a handler service keeps the sum of
   * its gone clients this way, so its exported counters never go down).
   * inFlightPeak takes the larger.
   */
  add(other: PagerMetrics): void {
    const counts = ['faults', 'prefetchHits', 'zeroPages', 'pagesCopied', 'bytesCopied', 'pagesMapped', 'cacheFills', 'wakes', 'prefetchedPages', 'copyIoctls', 'sourceReads',
      'sourceErrors', 'copyRetries', 'pagesPoisoned', 'pushedPages', 'pushedPagesDropped', 'readsAborted'] as const;
    for (const name of counts) this[name] += other[name];
    for (const kind of FAULT_KINDS) this.faultsByKind[kind] += other.faultsByKind[kind];
    for (const event of Object.keys(this.events) as (keyof PagerMetrics['events'])[]) this.events[event] += other.events[event];
    this.inFlightPeak = Math.max(this.inFlightPeak, other.inFlightPeak);
    this.latency.add(other.latency);
    this.sourceReadLatency.add(other.sourceReadLatency);
  }

  snapshot(): PagerMetricsSnapshot {
    return {
      faults: this.faults,
      faultsByKind: { ...this.faultsByKind },
      coalescedFaults: this.coalescedFaults,
      prefetchHits: this.prefetchHits,
      zeroPages: this.zeroPages,
      pagesCopied: this.pagesCopied,
      bytesCopied: this.bytesCopied,
      pagesMapped: this.pagesMapped,
      cacheFills: this.cacheFills,
      wakes: this.wakes,
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
      sourceReadLatencyMicros: this.sourceReadLatency.summary(),
    };
  }
}
