// The life of one S3Source load (a whole chunk, or a run of a chunk's pages
// for a demand read), written down once; S3Source moves a load only through
// this table.
//
//   cache ──cache-missed──▶ queued ──sent──▶ fetching ──delivered (checked)──▶ done
//     │                      ▲  │              │  │
//     ├──cache-hit──▶ done   │  └─dropped─▶    │  └──refused (corrupt past maxCorruptRetries)──▶ failed
//     └──dropped──▶ dropped  └────retry────────┘      (the store unavailable, or a corrupt answer: after a pause)
//                           (nobody waits any more)
//   cache / queued / fetching ──source-gone (the source gave up or was closed)──▶ failed
//
// A load being fetched is never dropped: the request goes on (other loads of
// it may be wanted) and what it brings is kept.
import { TransitionTable } from '../transition-table.js';

export type ChunkLoadState = 'cache' | 'queued' | 'fetching' | 'done' | 'failed' | 'dropped';
export type ChunkLoadEvent = 'cache-hit' | 'cache-missed' | 'sent' | 'delivered' | 'retry' | 'refused' | 'dropped' | 'source-gone';

export const CHUNK_LOAD_STATES = new TransitionTable<ChunkLoadState, ChunkLoadEvent>('a chunk load', {
  // Looking in this process's memory and the host's chunk cache.
  cache: { 'cache-hit': 'done', 'cache-missed': 'queued', dropped: 'dropped', 'source-gone': 'failed' },
  // In the demand or background queue, or waiting out a retry's pause.
  queued: { sent: 'fetching', dropped: 'dropped', 'source-gone': 'failed' },
  // A range request in flight.
  fetching: { delivered: 'done', retry: 'queued', refused: 'failed', 'source-gone': 'failed' },
  done: {},
  failed: {},
  dropped: {},
});
