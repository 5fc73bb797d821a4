// The states of a live migration on each side, and the only legal moves
// between them, written down once. Every request and every event goes through
// nextSourceState / nextDestinationState; a move not listed is refused with
// the state named. Who owns the guest in each state is written here too: the
// rest of the code asks these tables (ownsGuest, runsGuest, …), never a list
// of its own.
//
// The commit (docs/migration.md draws it with every cut point): the source
// owns the guest until it sends GO; the destination owns it from the moment
// it reads GO. Between the two the source does not know (GO may be lost with
// a cut): it is "committing", and after a cut "committing-paused", and it
// resumes the guest only once the destination said it never read GO (or the
// operator says the destination is gone for good: `vm migrate --abandon`).
// The destination, after READY, waits for GO or for the source to come back
// and ask; it runs the guest only on GO.
//
// Source (the VM runs here until GO):
//
//   idle ─start─▶ connecting ─connected─▶ precopy ─switchover─▶ switchover ─go-sent─▶ committing
//                    │                       │                      │                   │  ▲
//                    └──fail/cancel──────────┴──fail/cancel─────────┘ fail          lost│  │go-sent (RESUMED: not running)
//                              ▼ (the guest keeps or resumes running here)              ▼  │
//                      failed / cancelled ◀─────────taken-back (operator: --abandon)── committing-paused
//
//   committing / committing-paused ─running─▶ postcopy            (pages still missing there)
//                                  ─running-all-sent─▶ completing (stop-and-copy: every page sent)
//   postcopy ─all-sent─▶ completing ─complete─▶ completed
//   postcopy / completing ─lost─▶ postcopy-paused ─resumed─▶ postcopy (─resumed-all-sent─▶ completing:
//                                                                      the destination lacks nothing)
//   committing-paused / postcopy-paused ─stop─▶ failed   (`vm stop`: the operator ends this side)
//
// Destination (the VM runs here from GO):
//
//   listening ─accepted─▶ receiving ─switchover─▶ loading ─ready─▶ ready ─go─▶ postcopy ─all-in─▶ verifying ─verdict─▶ completed
//        │                   │                      │              │  ▲   └─go-all-in (stop-and-copy)─▶┘      └─verdict-lost─▶┘
//        └──fail/cancel──────┴──────fail/cancel─────┘         lost │  │ resumed (RESUMED: not running)
//                 ▼ (nothing ran here: discarded)                  ▼  │
//              failed / cancelled ◀──────fail (deadline) / cancel── ready-paused
//   postcopy ─lost─▶ postcopy-paused ─resumed─▶ postcopy;  postcopy-paused ─all-in─▶ verifying
//
// After GO neither side may simply fail: the guest's only complete copy is
// split between them. A lost connection pauses post-copy (vCPUs block on
// their missing pages, nothing is poisoned) until the source is back.
import { IllegalMigrationTransitionError } from './errors.js';

export type MigrationRole = 'source' | 'destination';

export type SourceMigrationState =
  | 'idle'
  | 'connecting'
  | 'precopy'
  | 'switchover'
  | 'committing'
  | 'committing-paused'
  | 'postcopy'
  | 'postcopy-paused'
  | 'completing'
  | 'completed'
  | 'cancelled'
  | 'failed';

export type DestinationMigrationState =
  | 'listening'
  | 'receiving'
  | 'loading'
  | 'ready'
  | 'ready-paused'
  | 'postcopy'
  | 'postcopy-paused'
  | 'verifying'
  | 'completed'
  | 'cancelled'
  | 'failed';

export type MigrationState = SourceMigrationState | DestinationMigrationState;

export type SourceMigrationEvent =
  | 'start'
  | 'connected'
  | 'switchover'
  | 'go-sent'
  | 'running'
  | 'running-all-sent'
  | 'lost'
  | 'resumed'
  | 'resumed-all-sent'
  | 'all-sent'
  | 'complete'
  | 'taken-back'
  | 'stop'
  | 'cancel'
  | 'fail';

export type DestinationMigrationEvent =
  | 'accepted'
  | 'switchover'
  | 'ready'
  | 'go'
  | 'go-all-in'
  | 'lost'
  | 'resumed'
  | 'all-in'
  | 'verdict'
  | 'verdict-lost'
  | 'cancel'
  | 'fail';

export type MigrationEvent = SourceMigrationEvent | DestinationMigrationEvent;

const SOURCE: Readonly<Record<SourceMigrationState, Partial<Record<SourceMigrationEvent, SourceMigrationState>>>> = {
  idle: { start: 'connecting' },
  connecting: { connected: 'precopy', cancel: 'cancelled', fail: 'failed' },
  precopy: { switchover: 'switchover', cancel: 'cancelled', fail: 'failed' },
  // Paused, state sent, READY awaited: the guest is still this side's and resumes here on any failure.
  switchover: { 'go-sent': 'committing', fail: 'failed' },
  // GO sent, RUNNING awaited: whether the destination runs the guest is not known here.
  committing: { running: 'postcopy', 'running-all-sent': 'completing', lost: 'committing-paused' },
  // Cut while committing: reconnect and ask (RESUMED says whether the destination runs it).
  'committing-paused': { 'go-sent': 'committing', running: 'postcopy', 'running-all-sent': 'completing', 'taken-back': 'failed', stop: 'failed' },
  // The destination may have every page before the push reaches its end (it already had them, or demanded them).
  postcopy: { lost: 'postcopy-paused', 'all-sent': 'completing', complete: 'completed' },
  // `vm stop` while paused: the operator gives up on the destination (the guest is there, or lost with it).
  'postcopy-paused': { resumed: 'postcopy', 'resumed-all-sent': 'completing', stop: 'failed' },
  completing: { complete: 'completed', lost: 'postcopy-paused' },
  completed: {},
  cancelled: {},
  failed: {},
};

const DESTINATION: Readonly<Record<DestinationMigrationState, Partial<Record<DestinationMigrationEvent, DestinationMigrationState>>>> = {
  listening: { accepted: 'receiving', cancel: 'cancelled', fail: 'failed' },
  receiving: { switchover: 'loading', cancel: 'cancelled', fail: 'failed' },
  // The source may give up while this side loads (its READY wait ran out): a cancel discards the machine.
  loading: { ready: 'ready', cancel: 'cancelled', fail: 'failed' },
  // READY sent: the guest is the source's until GO; a cut here waits for the source to come back and ask.
  ready: { go: 'postcopy', 'go-all-in': 'verifying', lost: 'ready-paused', cancel: 'cancelled', fail: 'failed' },
  'ready-paused': { resumed: 'ready', cancel: 'cancelled', fail: 'failed' },
  postcopy: { lost: 'postcopy-paused', 'all-in': 'verifying' },
  // Every page may come in while paused (pushed before the cut, installed after it).
  'postcopy-paused': { resumed: 'postcopy', 'all-in': 'verifying' },
  // Every page is here and COMPLETE sent: the source is needed only for its verdict.
  verifying: { verdict: 'completed', 'verdict-lost': 'completed' },
  completed: {},
  cancelled: {},
  failed: {},
};

export function nextSourceState(from: SourceMigrationState, event: SourceMigrationEvent): SourceMigrationState {
  const to = SOURCE[from][event];
  if (to === undefined) throw new IllegalMigrationTransitionError('source', from, event);
  return to;
}

export function nextDestinationState(from: DestinationMigrationState, event: DestinationMigrationEvent): DestinationMigrationState {
  const to = DESTINATION[from][event];
  if (to === undefined) throw new IllegalMigrationTransitionError('destination', from, event);
  return to;
}

export function sourceAllows(state: SourceMigrationState, event: SourceMigrationEvent): boolean {
  return SOURCE[state][event] !== undefined;
}

export function destinationAllows(state: DestinationMigrationState, event: DestinationMigrationEvent): boolean {
  return DESTINATION[state][event] !== undefined;
}

/**
 * The source still owns the guest: it may resume it here (a failure, a
 * cancel). False from GO on, including while it does not know whether GO
 * arrived.
 */
export function sourceOwnsGuest(state: SourceMigrationState): boolean {
  return state === 'idle' || state === 'connecting' || state === 'precopy' || state === 'switchover' || state === 'failed' || state === 'cancelled';
}

/**
 * Past the commit on the source (GO sent): it keeps the guest's memory
 * until the destination confirms completion, and never fails on its own.
 */
export function isPastSwitchover(state: MigrationState): boolean {
  return state === 'committing' || state === 'committing-paused' || state === 'postcopy' || state === 'postcopy-paused' || state === 'completing' || state === 'completed';
}

/** The destination runs the guest (it read GO). */
export function destinationRunsGuest(state: DestinationMigrationState): boolean {
  return state === 'postcopy' || state === 'postcopy-paused' || state === 'verifying' || state === 'completed';
}

/** A connection lost in this state is waited out (the peer reconnects), not a failure. */
export function isPaused(state: MigrationState): boolean {
  return state === 'committing-paused' || state === 'postcopy-paused' || state === 'ready-paused';
}

export function isFinal(state: MigrationState): boolean {
  return state === 'completed' || state === 'cancelled' || state === 'failed';
}
