// A state machine's legal moves, written down in one place: from each state,
// the events it takes and the state each leads to. Every change of such a
// state goes through next(); a move not in the table is refused out loud,
// naming the machine, the state and the event, never taken silently.
// (src/migrate/migration-state.ts is the largest table of this kind.)
import { UserfaultError } from './errors.js';

/** From each state, the events it takes and where each leads. A state that takes nothing is final. */
export type Transitions<State extends string, Event extends string> = Readonly<Record<State, Readonly<Partial<Record<Event, State>>>>>;

/** A move its machine's table does not list: a bug in the code that asked, not a condition to recover from. */
export class IllegalTransitionError extends UserfaultError {
  override readonly code = 'EILLEGALTRANSITION';
  constructor(readonly machine: string, readonly from: string, readonly event: string) {
    super(`${machine} that is ${from} cannot take '${event}'`);
  }
}

export class TransitionTable<State extends string, Event extends string> {
  /** `machine` names it in an error: "a chunk load", "the urgent channel". */
  constructor(readonly machine: string, readonly moves: Transitions<State, Event>) {}

  /** The state `event` leads to from `from`; throws IllegalTransitionError when the table does not list it. */
  next(from: State, event: Event): State {
    const to = this.moves[from][event];
    if (to === undefined) throw new IllegalTransitionError(this.machine, from, event);
    return to;
  }

  allows(from: State, event: Event): boolean {
    return this.moves[from][event] !== undefined;
  }

  /** States that take no event. */
  finalStates(): State[] {
    return (Object.keys(this.moves) as State[]).filter((state) => Object.keys(this.moves[state]).length === 0);
  }

  /** Every state reachable from `from`, `from` included. */
  reachableFrom(from: State): Set<State> {
    const seen = new Set<State>([from]);
    for (const state of seen) for (const to of Object.values(this.moves[state]) as State[]) seen.add(to);
    return seen;
  }
}
