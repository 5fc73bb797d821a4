// The VM's lifecycle, written down once: which requests a VM takes in each
// state and where they lead. The Vmm asks this table before it does
// anything that changes the VM, so a request that does not fit the state is
// refused out loud (InvalidStateTransitionError; 409 on the control socket)
// instead of racing whatever is in progress — a resume while RAM is being
// written to a snapshot would otherwise restart the guest under the writer.
//
//   created ──restore──▶ restoring ──restored──▶ paused
//      │                     │ restore-failed          │ ▲
//      │ resume              ▼                  resume │ │ pause
//      └──────────────▶ stopped            ┌──────────▼─┴─┐
//                            ▲             │    running   │
//   snapshot (created, paused, running)    └──────────────┘
//      ──▶ snapshotting ──snapshot-done / snapshot-failed──▶ paused
//   migrate (paused, running) ──▶ migrating ──migrate-done──▶ stopped
//                                          └─migrate-failed─▶ paused
//   stop: from created, paused, running ──▶ stopped
//   guest-exit (a fact, not a request): from any state ──▶ stopped
//
// created is a VM built and loaded whose vCPUs never ran (a boot ends
// there; a restore passes through it). snapshotting, restoring and migrating
// are busy: an operation owns the VM and every other request is refused
// until it ends, except input, which queues bytes for the guest and changes
// nothing the operation reads (the UART's state is saved before RAM is
// written). stopped is final.
import { InvalidStateTransitionError } from './errors.js';

export type VmLifecycleState = 'created' | 'running' | 'paused' | 'snapshotting' | 'restoring' | 'migrating' | 'stopped';

export type VmLifecycleEvent =
  | 'restore'
  | 'restored'
  | 'restore-failed'
  | 'resume'
  | 'pause'
  | 'snapshot'
  | 'snapshot-done'
  | 'snapshot-failed'
  | 'migrate'
  | 'migrate-done'
  | 'migrate-failed'
  | 'input'
  | 'stop'
  | 'guest-exit';

const TRANSITIONS: Readonly<Record<VmLifecycleState, Partial<Record<VmLifecycleEvent, VmLifecycleState>>>> = {
  created: { restore: 'restoring', resume: 'running', pause: 'created', snapshot: 'snapshotting', input: 'created', stop: 'stopped', 'guest-exit': 'stopped' },
  restoring: { restored: 'paused', 'restore-failed': 'stopped', 'guest-exit': 'stopped' },
  paused: { resume: 'running', pause: 'paused', snapshot: 'snapshotting', migrate: 'migrating', input: 'paused', stop: 'stopped', 'guest-exit': 'stopped' },
  running: { resume: 'running', pause: 'paused', snapshot: 'snapshotting', migrate: 'migrating', input: 'running', stop: 'stopped', 'guest-exit': 'stopped' },
  snapshotting: { 'snapshot-done': 'paused', 'snapshot-failed': 'paused', input: 'snapshotting', 'guest-exit': 'stopped' },
  migrating: { 'migrate-done': 'stopped', 'migrate-failed': 'paused', input: 'migrating', 'guest-exit': 'stopped' },
  stopped: { 'guest-exit': 'stopped' },
};

/**
 * What each state says of the VM beyond where it may go: `savable`, its
 * vCPUs are out of the guest and its state is loaded (the state can be
 * saved: a created VM, a paused one, one a snapshot or a migration paused);
 * `busy`, an operation owns the VM (the requests are refused until it ends).
 */
const STATE_FACTS: Readonly<Record<VmLifecycleState, { savable: boolean; busy: boolean }>> = {
  created: { savable: true, busy: false },
  restoring: { savable: false, busy: true },
  paused: { savable: true, busy: false },
  running: { savable: false, busy: false },
  snapshotting: { savable: true, busy: true },
  migrating: { savable: true, busy: true },
  stopped: { savable: false, busy: false },
};

/** Whether the VM's state can be saved in `state` (no vCPU runs, the state is loaded). */
export function vmStateSavable(state: VmLifecycleState): boolean {
  return STATE_FACTS[state].savable;
}

/** Whether an operation (a snapshot, a restore, a migration) owns the VM in `state`. */
export function vmLifecycleBusy(state: VmLifecycleState): boolean {
  return STATE_FACTS[state].busy;
}

/** Where `event` leads from `state`, or undefined when the lifecycle does not allow it. */
export function vmLifecycleNext(state: VmLifecycleState, event: VmLifecycleEvent): VmLifecycleState | undefined {
  return TRANSITIONS[state][event];
}

/** Every event the lifecycle takes in `state` (for messages and tests). */
export function vmLifecycleEvents(state: VmLifecycleState): VmLifecycleEvent[] {
  return Object.keys(TRANSITIONS[state]) as VmLifecycleEvent[];
}

/** The words a refusal uses for a request ("cannot resume a VM that is snapshotting"). */
const REQUEST_WORDS: Partial<Record<VmLifecycleEvent, string>> = {
  snapshot: 'snapshot',
  input: 'send input to',
  migrate: 'migrate',
};

/**
 * One VM's lifecycle state. `transition` is the only way it changes; it
 * throws InvalidStateTransitionError (naming the current state) for an event
 * the table does not allow from here. `onChange` sees every change.
 */
export class VmLifecycle {
  private current: VmLifecycleState;

  constructor(initial: VmLifecycleState = 'created', private readonly onChange?: (from: VmLifecycleState, to: VmLifecycleState, event: VmLifecycleEvent) => void) {
    this.current = initial;
  }

  get state(): VmLifecycleState {
    return this.current;
  }

  /** Whether `event` is allowed now. */
  allows(event: VmLifecycleEvent): boolean {
    return vmLifecycleNext(this.current, event) !== undefined;
  }

  /** Throws InvalidStateTransitionError unless `event` is allowed now; changes nothing. */
  check(event: VmLifecycleEvent): VmLifecycleState {
    const next = vmLifecycleNext(this.current, event);
    if (next === undefined) throw new InvalidStateTransitionError(this.current, REQUEST_WORDS[event] ?? event);
    return next;
  }

  /** Take `event`: the new state, or InvalidStateTransitionError when not allowed now. */
  transition(event: VmLifecycleEvent): VmLifecycleState {
    const next = this.check(event);
    const from = this.current;
    this.current = next;
    if (next !== from) this.onChange?.(from, next, event);
    return next;
  }
}
