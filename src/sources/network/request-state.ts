// The life of one request a network source makes of its peer (a page
// server's READ, an object store's range request for a chunk or some of its
// pages, a migration's post-copy READ), written down once for all of them;
// the request table (request-table.ts) moves a request only through this
// table.
//
//   local ──local-hit (memory, the disk cache)──▶ done
//     │ └──dropped (nobody waits)──▶ dropped
//     └──local-miss──▶ queued ──sent──▶ sent ──delivered (checked)──▶ done
//                        ▲  │             │ ├──refused (the peer's error, corrupt past the retries)──▶ failed
//                        │  └─dropped─▶   │ └──cancelled (nobody waits; the peer told to stop)──▶ dropped
//                        └────retry───────┘   (the connection lost, the peer busy or unavailable, a corrupt answer)
//   local / queued / sent ──source-gone (the source gave up or was closed)──▶ failed
//
// A source whose peer cannot be told to stop (an HTTP range request) lets a
// sent request nobody waits for run on, and keeps what it brings; one whose
// peer can (a READ, by CANCEL) cancels it.
import { TransitionTable } from '../../transition-table.js';

export type RequestState = 'local' | 'queued' | 'sent' | 'done' | 'failed' | 'dropped';
export type RequestEvent = 'local-hit' | 'local-miss' | 'sent' | 'delivered' | 'retry' | 'refused' | 'dropped' | 'cancelled' | 'source-gone';

export const REQUEST_STATES = new TransitionTable<RequestState, RequestEvent>('a network request', {
  // Looking where the source keeps what it fetched before (S3Source: its memory, the host's chunk cache).
  local: { 'local-hit': 'done', 'local-miss': 'queued', dropped: 'dropped', 'source-gone': 'failed' },
  // Waiting for room on its connection (or out a retry's pause).
  queued: { sent: 'sent', dropped: 'dropped', 'source-gone': 'failed' },
  // On the wire.
  sent: { delivered: 'done', retry: 'queued', refused: 'failed', cancelled: 'dropped', 'source-gone': 'failed' },
  done: {},
  failed: {},
  dropped: {},
});

/** The states a request is live in: it is in its table, and reads may join it. */
export const LIVE_REQUEST_STATES: readonly RequestState[] = ['local', 'queued', 'sent'];
