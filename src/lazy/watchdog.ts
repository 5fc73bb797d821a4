// What an owner does when the thread or process that served its faults dies.
//
// The kernel's own answer is the dangerous one: when the last reference to a
// uffd closes, it unregisters the ranges and every missing page reads ZERO.
// An owner that keeps its own reference turns that into a freeze (faults wait
// forever); the watchdog turns the freeze into something the owner chose.
export type HandlerLostPolicy =
  /** Keep waiting: faulting threads stay blocked (killable). */
  | 'freeze'
  /** Answer every later fault with UFFDIO_POISON: the toucher gets SIGBUS, a syscall EFAULT. */
  | 'poison'
  /** SIGKILL the owning process: nothing runs on with missing memory. */
  | 'kill';

export interface WatchdogWorkerData {
  /** The owner's own reference to the uffd. */
  uffdFd: number;
  policy: HandlerLostPolicy;
  /** Closes when an in-process handler (a worker) dies. */
  lifeline?: import('node:worker_threads').MessagePort;
  /** A pidfd that turns readable when an out-of-process handler exits. */
  handlerPidfd?: number;
  /**
   * The ranges registered with the uffd. A fault the dead handler had already
   * read will never be read again: on takeover the watchdog wakes every thread
   * waiting in these ranges, so each faults anew into the policy.
   */
  regions: ReadonlyArray<{ address: number; lengthBytes: number }>;
}
