// Which turn of the event loop it is: a counter advanced once in every check
// phase (setImmediate), for tests that show work is spread over turns.
export interface TurnCounter {
  /** Turns begun since the counter started. */
  readonly turn: number;
  stop(): void;
}

export function countEventLoopTurns(): TurnCounter {
  let turn = 0;
  let ticking = true;
  const tick = (): void => {
    turn++;
    if (ticking) setImmediate(tick);
  };
  setImmediate(tick);
  return {
    get turn() {
      return turn;
    },
    stop() {
      ticking = false;
    },
  };
}
