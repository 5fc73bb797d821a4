// The life of one page of the image, as the pager sees it. Legal moves:
//
//   MISSING ──fetch──▶ IN_FLIGHT ──copied──▶ PRESENT
//      │                   │                    │
//      │ zero page         │ REMOVE             │ REMOVE (MADV_DONTNEED)
//      ▼                   ▼                    ▼
//   PRESENT            DISCARDED ◀──────────────┘
//                          │ fault: zero page (never the source: it is stale)
//                          ▼
//                       PRESENT
//   any ──UNMAP──▶ UNMAPPED
//
// DISCARDED means "the application threw this page away": its contents are
// zero from now on, and a fill that was in flight when it happened is dropped.

import { UserfaultError } from '../errors.js';

export const PageState = {
  MISSING: 0,
  IN_FLIGHT: 1,
  PRESENT: 2,
  DISCARDED: 3,
  UNMAPPED: 4,
} as const;
export type PageState = (typeof PageState)[keyof typeof PageState];

export const PAGE_STATE_NAMES = ['missing', 'in-flight', 'present', 'discarded', 'unmapped'] as const;

const LEGAL: ReadonlyArray<ReadonlyArray<PageState>> = [
  /* MISSING   */ [PageState.IN_FLIGHT, PageState.PRESENT, PageState.DISCARDED, PageState.UNMAPPED],
  /* IN_FLIGHT */ [PageState.PRESENT, PageState.DISCARDED, PageState.UNMAPPED, PageState.MISSING],
  /* PRESENT   */ [PageState.DISCARDED, PageState.UNMAPPED, PageState.PRESENT],
  /* DISCARDED */ [PageState.PRESENT, PageState.DISCARDED, PageState.UNMAPPED],
  /* UNMAPPED  */ [PageState.UNMAPPED],
];

export class IllegalPageTransitionError extends UserfaultError {
  override readonly code = 'EPAGESTATE';
  constructor(readonly pageIndex: number, readonly from: PageState, readonly to: PageState) {
    super(`page ${pageIndex}: illegal transition ${PAGE_STATE_NAMES[from]} -> ${PAGE_STATE_NAMES[to]}`);
  }
}

/** One state byte per page of the image. */
export class PageStateTable {
  readonly states: Uint8Array;
  constructor(readonly pageCount: number, from?: Uint8Array) {
    this.states = from ? Uint8Array.from(from) : new Uint8Array(pageCount);
  }

  get(pageIndex: number): PageState {
    return this.states[pageIndex] as PageState;
  }

  set(pageIndex: number, to: PageState): void {
    const from = this.states[pageIndex] as PageState;
    if (!LEGAL[from]!.includes(to)) throw new IllegalPageTransitionError(pageIndex, from, to);
    this.states[pageIndex] = to;
  }

  count(state: PageState): number {
    let n = 0;
    for (const s of this.states) if (s === state) n++;
    return n;
  }

  /**
   * The state a forked child's copy starts in: pages present in the parent
   * were copied by fork; pages in flight were not, so the child must fetch them.
   */
  forkedCopy(): PageStateTable {
    const child = new PageStateTable(this.pageCount, this.states);
    for (let i = 0; i < child.states.length; i++) {
      if (child.states[i] === PageState.IN_FLIGHT) child.states[i] = PageState.MISSING;
    }
    return child;
  }
}
