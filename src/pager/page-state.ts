// The life of one page of the image, as the pager sees it. Legal moves:
//
//   MISSING ──fetch──▶ IN_FLIGHT ──copied──▶ PRESENT
//      │  ▲                │  │                 │
//      │  └─ read failed ──┘  │ REMOVE          │ REMOVE (MADV_DONTNEED)
//      │     (nobody waits)   ▼                 ▼
//      │ zero page        DISCARDED ◀───────────┘
//      ▼                      │ fault: zero page (never the source: it is stale)
//   PRESENT                   ▼
//                          PRESENT
//   MISSING / IN_FLIGHT ──the source cannot supply it──▶ POISONED (SIGBUS/EFAULT on access)
//   any ──UNMAP──▶ UNMAPPED
//
// DISCARDED means "the application threw this page away": its contents are
// zero from now on, and a fill that was in flight when it happened is dropped.
// POISONED means UFFDIO_POISON was installed: the source failed for good (a
// corrupt snapshot page) or the kernel would not take the copy; an access
// gets an error, never made-up data, and no second read is tried.
import { UserfaultError } from '../errors.js';

export const PageState = {
  MISSING: 0,
  IN_FLIGHT: 1,
  PRESENT: 2,
  DISCARDED: 3,
  UNMAPPED: 4,
  POISONED: 5,
} as const;
export type PageState = (typeof PageState)[keyof typeof PageState];

export const PAGE_STATE_NAMES = ['missing', 'in-flight', 'present', 'discarded', 'unmapped', 'poisoned'] as const;

const LEGAL: ReadonlyArray<ReadonlyArray<PageState>> = [
  /* MISSING   */ [PageState.IN_FLIGHT, PageState.PRESENT, PageState.DISCARDED, PageState.UNMAPPED, PageState.POISONED],
  /* IN_FLIGHT */ [PageState.PRESENT, PageState.DISCARDED, PageState.UNMAPPED, PageState.MISSING, PageState.POISONED],
  /* PRESENT   */ [PageState.DISCARDED, PageState.UNMAPPED, PageState.PRESENT],
  /* DISCARDED */ [PageState.PRESENT, PageState.DISCARDED, PageState.UNMAPPED],
  /* UNMAPPED  */ [PageState.UNMAPPED],
  /* POISONED  */ [PageState.DISCARDED, PageState.UNMAPPED, PageState.POISONED],
];

/** LEGAL as one bit per target state, by source state: the check on every page installed allocates and searches nothing. */
const LEGAL_MASK = Uint8Array.from(LEGAL, (targets) => targets.reduce<number>((mask, to) => mask | (1 << to), 0));

export class IllegalPageTransitionError extends UserfaultError {
  override readonly code = 'EPAGESTATE';
  constructor(readonly pageIndex: number, readonly from: PageState, readonly to: PageState) {
    super(`page ${pageIndex}: illegal transition ${PAGE_STATE_NAMES[from]} -> ${PAGE_STATE_NAMES[to]}`);
  }
}

export type PageCounts = Record<'missing' | 'inFlight' | 'present' | 'discarded' | 'unmapped' | 'poisoned', number>;

const isPending = (state: number): boolean => state === PageState.MISSING || state === PageState.IN_FLIGHT;

/**
 * One state byte per page of the image, with running counts, so asking how
 * many pages are in a state (or still to be filled) costs nothing.
 *
 * `needed` marks the pages a complete restore must fill (shown by a region
 * and not known to be zero); `pendingNeeded` counts those still missing or in
 * flight, and reaching zero is what "complete" means.
 */
export class PageStateTable {
  readonly states: Uint8Array;
  private readonly counts = new Float64Array(PAGE_STATE_NAMES.length);
  private readonly needed: Uint8Array | undefined;
  private pendingNeededCount: number;

  /**
   * `from.counted`: the caller built `states` holding only MISSING and
   * PRESENT pages, `present` of the latter, and `pendingNeeded` needed pages
   * missing (startingPageStates, in a migration's downtime): not counted again.
   */
  constructor(readonly pageCount: number, from?: { states: Uint8Array; needed?: Uint8Array; counted?: { present: number; pendingNeeded: number } }, needed?: Uint8Array) {
    this.states = from ? new Uint8Array(from.states) : new Uint8Array(pageCount);
    this.needed = needed ?? from?.needed;
    this.pendingNeededCount = 0;
    const { states, counts } = this;
    if (from?.counted && !needed) {
      counts[PageState.PRESENT] = from.counted.present;
      counts[PageState.MISSING] = pageCount - from.counted.present;
      this.pendingNeededCount = this.needed ? from.counted.pendingNeeded : 0;
      return;
    }
    if (!from) {
      // All missing (0): nothing to look at but the mask (a fresh table on a large image, at every restore).
      counts[PageState.MISSING] = pageCount;
      if (this.needed) for (let i = 0; i < pageCount; i++) if (this.needed[i]) this.pendingNeededCount++;
      return;
    }
    for (let i = 0; i < states.length; i++) counts[states[i]!]!++;
    if (this.needed) for (let i = 0; i < pageCount; i++) if (this.needed[i] && isPending(states[i]!)) this.pendingNeededCount++;
  }

  get(pageIndex: number): PageState {
    return this.states[pageIndex] as PageState;
  }

  set(pageIndex: number, to: PageState): void {
    const from = this.states[pageIndex] as PageState;
    if ((LEGAL_MASK[from]! & (1 << to)) === 0) throw new IllegalPageTransitionError(pageIndex, from, to);
    if (from === to) return;
    this.states[pageIndex] = to;
    this.counts[from]!--;
    this.counts[to]!++;
    if (this.needed?.[pageIndex]) this.pendingNeededCount += (isPending(to) ? 1 : 0) - (isPending(from) ? 1 : 0);
  }

  count(state: PageState): number {
    return this.counts[state]!;
  }

  counted(): PageCounts {
    return {
      missing: this.counts[PageState.MISSING]!,
      inFlight: this.counts[PageState.IN_FLIGHT]!,
      present: this.counts[PageState.PRESENT]!,
      discarded: this.counts[PageState.DISCARDED]!,
      unmapped: this.counts[PageState.UNMAPPED]!,
      poisoned: this.counts[PageState.POISONED]!,
    };
  }

  /** Needed pages still missing or in flight (undefined when no `needed` mask was given). */
  get pendingNeeded(): number | undefined {
    return this.needed ? this.pendingNeededCount : undefined;
  }

  isNeeded(pageIndex: number): boolean {
    return this.needed ? this.needed[pageIndex] === 1 : true;
  }

  /**
   * A picture of the table in at most `maxCells` cells (a dashboard's memory
   * map): cell i covers pages [i*pagesPerCell, (i+1)*pagesPerCell), and holds
   * the state that best describes them. See downsamplePageStates.
   */
  downsample(maxCells: number): PageStateMap {
    return downsamplePageStates(this.states, maxCells);
  }

  /**
   * The state a forked child's copy starts in: pages present in the parent
   * were copied by fork; pages in flight were not, so the child must fetch them.
   */
  forkedCopy(): PageStateTable {
    const states = Uint8Array.from(this.states);
    for (let i = 0; i < states.length; i++) if (states[i] === PageState.IN_FLIGHT) states[i] = PageState.MISSING;
    return new PageStateTable(this.pageCount, { states, needed: this.needed });
  }
}

/** A page-state table shrunk to a bounded number of cells, one PageState per cell. */
export interface PageStateMap {
  pageCount: number;
  pagesPerCell: number;
  /** One PageState per cell; the last cell may cover fewer pages. */
  cells: Uint8Array;
}

/**
 * Shrink one state byte per page to at most `maxCells` cells. A cell holding
 * any page in flight shows IN_FLIGHT (a fill under way is what a restore
 * being watched is about), else any poisoned page shows POISONED (an error
 * must not be averaged away), else the state most of its pages are in
 * (a tie goes to the later state: PRESENT over MISSING).
 */
export function downsamplePageStates(states: Uint8Array, maxCells: number): PageStateMap {
  if (!Number.isSafeInteger(maxCells) || maxCells < 1) throw new RangeError(`maxCells must be a positive integer, got ${maxCells}`);
  const pageCount = states.length;
  const pagesPerCell = Math.max(1, Math.ceil(pageCount / maxCells));
  const cells = new Uint8Array(Math.ceil(pageCount / pagesPerCell));
  const counts = new Uint32Array(PAGE_STATE_NAMES.length);
  for (let cell = 0; cell < cells.length; cell++) {
    counts.fill(0);
    const end = Math.min(pageCount, (cell + 1) * pagesPerCell);
    for (let page = cell * pagesPerCell; page < end; page++) counts[states[page]!]!++;
    let chosen: number;
    if (counts[PageState.IN_FLIGHT]! > 0) chosen = PageState.IN_FLIGHT;
    else if (counts[PageState.POISONED]! > 0) chosen = PageState.POISONED;
    else {
      chosen = PageState.MISSING;
      for (const state of [PageState.PRESENT, PageState.DISCARDED, PageState.UNMAPPED]) if (counts[state]! >= counts[chosen]!) chosen = state;
    }
    cells[cell] = chosen;
  }
  return { pageCount, pagesPerCell, cells };
}
