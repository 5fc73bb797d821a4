// The life of a network page source (RemoteSource, S3Source, the migration's
// post-copy source), written down once for all of them (availability.ts
// moves it):
//
//   open ──the peer or store failed for good (deadline passed, image changed, refused)──▶ gone
//     │                                                                                   │
//     └──────────────────────────────close()──────────────────────────▶ closed ◀──close()─┘
//
// Reads are taken only while open; gone and closed reject every read with
// SourceGoneError (gone with the reason the source was given up on).
import { TransitionTable } from '../../transition-table.js';

export type SourceState = 'open' | 'gone' | 'closed';
export type SourceEvent = 'gave-up' | 'close';

export const SOURCE_STATES = new TransitionTable<SourceState, SourceEvent>('a page source', {
  open: { 'gave-up': 'gone', close: 'closed' },
  gone: { close: 'closed' },
  closed: {},
});
