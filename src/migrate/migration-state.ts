// The states of a live migration on each side, and the only legal moves
// between them, written down once. Every request and every event goes through
// nextMigrationState; a move not listed is refused with the state named.
//
// Source (the VM runs here until switchover):
//
//   idle ─start─▶ connecting ─connected─▶ precopy ──converged / rounds out──▶ switchover ─dest-running─▶ postcopy
//                    │                       │  │ (mode postcopy: at once)        │                       │  ▲
//                    │                       │  └──────────────────────────────▶──┘                       │  │ resumed
//                    └─fail/cancel───────────┴──────fail/cancel───────────────────┘                  lost │  │
//                              ▼ (the guest keeps running here)                                          ▼  │
//                      failed / cancelled                                                     postcopy-paused
//   postcopy ─all-sent + dest-verified─▶ completed        precopy mode: switchover ─dest-running─▶ completing ─▶ completed
//
// Destination (the VM runs here from switchover):
//
//   listening ─accepted─▶ receiving ─switchover─▶ loading ─resumed─▶ postcopy ─complete─▶ completed
//        │                   │                      │                  │  ▲
//        └──fail/cancel──────┴──────fail────────────┘            lost  │  │ resumed
//                 ▼ (nothing ran here: discarded)                      ▼  │
//              failed / cancelled                              postcopy-paused
//
// After switchover neither side may simply fail: the guest's only complete
// copy is split between them. A lost connection pauses post-copy (vCPUs block
// on their missing pages, nothing is poisoned) until it is resumed.
import { UserfaultError } from '../errors.js';

export type MigrationRole = 'source' | 'destination';

export type SourceMigrationState =
  | 'idle'
  | 'connecting'
  | 'precopy'
  | 'switchover'
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
  | 'postcopy'
  | 'postcopy-paused'
  | 'completed'
  | 'cancelled'
  | 'failed';

export type MigrationState = SourceMigrationState | DestinationMigrationState;

export type MigrationEvent =
  | 'start'
  | 'connected'
  | 'accepted'
  | 'switchover'
  | 'dest-running'
  | 'resumed'
  | 'lost'
  | 'all-sent'
  | 'complete'
  | 'cancel'
  | 'fail';

const SOURCE: Readonly<Record<SourceMigrationState, Partial<Record<MigrationEvent, SourceMigrationState>>>> = {
  idle: { start: 'connecting' },
  connecting: { connected: 'precopy', cancel: 'cancelled', fail: 'failed' },
  precopy: { switchover: 'switchover', cancel: 'cancelled', fail: 'failed' },
  // Paused, state sent: until the destination says it runs, the guest can still resume here.
  switchover: { 'dest-running': 'postcopy', 'all-sent': 'completing', fail: 'failed' },
  // The destination may have every page before the push reaches its end (it already had them, or demanded them).
  postcopy: { lost: 'postcopy-paused', 'all-sent': 'completing', complete: 'completed' },
  'postcopy-paused': { resumed: 'postcopy' },
  completing: { complete: 'completed', lost: 'postcopy-paused' },
  completed: {},
  cancelled: {},
  failed: {},
};

const DESTINATION: Readonly<Record<DestinationMigrationState, Partial<Record<MigrationEvent, DestinationMigrationState>>>> = {
  listening: { accepted: 'receiving', cancel: 'cancelled', fail: 'failed' },
  receiving: { switchover: 'loading', cancel: 'cancelled', fail: 'failed' },
  loading: { resumed: 'postcopy', fail: 'failed' },
  postcopy: { lost: 'postcopy-paused', complete: 'completed' },
  'postcopy-paused': { resumed: 'postcopy' },
  completed: {},
  cancelled: {},
  failed: {},
};

/** A request or event the migration's state does not allow. */
export class IllegalMigrationTransitionError extends UserfaultError {
  override readonly code = 'EMIGRATIONSTATE';
  constructor(readonly role: MigrationRole, readonly from: MigrationState, readonly event: MigrationEvent) {
    super(`a ${role} migration that is ${from} cannot take '${event}'`);
  }
}

export function nextSourceState(from: SourceMigrationState, event: MigrationEvent): SourceMigrationState {
  const to = SOURCE[from][event];
  if (to === undefined) throw new IllegalMigrationTransitionError('source', from, event);
  return to;
}

export function nextDestinationState(from: DestinationMigrationState, event: MigrationEvent): DestinationMigrationState {
  const to = DESTINATION[from][event];
  if (to === undefined) throw new IllegalMigrationTransitionError('destination', from, event);
  return to;
}

/** States past which the guest runs on the destination: the source must keep its memory until completion. */
export function isPastSwitchover(state: MigrationState): boolean {
  return state === 'postcopy' || state === 'postcopy-paused' || state === 'completing' || state === 'completed' || state === 'loading';
}

export function isFinal(state: MigrationState): boolean {
  return state === 'completed' || state === 'cancelled' || state === 'failed';
}
