// The vCPU's lifecycle, written down once. A vCPU worker is in exactly one
// state; a request not listed for that state is refused out loud.
//
//            resume                 guest done / fatal exit / stop
//   paused ─────────▶ running ───────────────────────────────────▶ exited
//     ▲  ◀───────────    │                                           ▲
//     │      pause       │                                           │
//     └── save/restore   └───────────────────────────────────────────┘
//         (paused only)                      stop (from paused too)
import { InvalidStateTransitionError } from './errors.js';

export type VcpuRunState = 'paused' | 'running' | 'exited';
export type VcpuRequest = 'resume' | 'pause' | 'save-state' | 'restore-state' | 'input' | 'stop' | 'guest-exit';

const TRANSITIONS: Readonly<Record<VcpuRunState, Partial<Record<VcpuRequest, VcpuRunState>>>> = {
  paused: { resume: 'running', pause: 'paused', 'save-state': 'paused', 'restore-state': 'paused', input: 'paused', stop: 'exited' },
  running: { pause: 'paused', resume: 'running', input: 'running', stop: 'exited', 'guest-exit': 'exited' },
  exited: {},
};

/** The state `request` leads to from `state`; throws InvalidStateTransitionError when not allowed. */
export function nextVcpuState(state: VcpuRunState, request: VcpuRequest): VcpuRunState {
  const next = TRANSITIONS[state][request];
  if (next === undefined) throw new InvalidStateTransitionError(state, request);
  return next;
}

/**
 * The main thread's copy of a worker's state, moved by what the worker
 * reports (it applied a request to its own copy with nextVcpuState): `to`
 * when a request in the table leads there from `from`, or `to` is `from`
 * (an 'exited' event after the state event that said so); otherwise
 * InvalidStateTransitionError, naming `from`: a worker reporting a move its
 * table does not have is a bug, not a state.
 */
export function reportedVcpuState(from: VcpuRunState, to: VcpuRunState): VcpuRunState {
  if (to === from || Object.values(TRANSITIONS[from]).includes(to)) return to;
  throw new InvalidStateTransitionError(from, `report ${to} for`);
}
