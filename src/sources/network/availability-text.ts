// A source's outages in words, the same for every command that says them
// (`serve`, `vm restore`, `vm receive`, `vm status`, the dashboard):
//
//   page server tcp://10.0.0.5:7000 unreachable, guest waiting (3 reads blocked), retrying until the deadline in 30.0 s (last: connect ECONNREFUSED 10.0.0.5:7000)
//   page server tcp://10.0.0.5:7000 still unreachable after 5.0 s, guest waiting (3 reads blocked), retrying until the deadline in 25.0 s
//   page server tcp://10.0.0.5:7000 reconnected after 5.3 s (3 reads waited)
//   migration source 10.0.0.4:51234 unreachable, guest waiting (1 read blocked), waiting for it to reconnect
//
// "Reads" are the source's reads waiting (RequestTable.pendingReads): each is
// one or more faulting threads (the pager reads a missing range once for
// every fault on it) or a background read.
import type { AvailabilityEvent, AvailabilityStats } from './availability.js';

/** The log line of an AvailabilityEvent. */
export function availabilityLine(event: AvailabilityEvent): string {
  switch (event.type) {
    case 'unavailable':
      return `${event.source} unreachable, ${waiting(event.readsWaiting)}, ${retrying(event.retrying, event.deadlineInMs)}${event.error ? ` (last: ${event.error})` : ''}`;
    case 'still-unavailable':
      return `${event.source} still unreachable after ${seconds(event.forMs)}, ${waiting(event.readsWaiting)}, ${retrying(event.retrying, event.deadlineInMs)}`;
    case 'restored':
      return `${event.source} reconnected after ${seconds(event.afterMs)} (${event.readsWaited === 0 ? 'no reads waited' : `${count(event.readsWaited, 'read')} waited`})`;
    case 'gone':
      return `${event.source} given up${event.afterMs === undefined ? '' : ` after ${seconds(event.afterMs)} unreachable`}: ${event.reason}` +
        (event.readsFailed === 0 ? '' : `; ${count(event.readsFailed, 'read')} failed`);
    default: {
      const never: never = event;
      return String(never);
    }
  }
}

/** The log level an event is said at: an outage is a warning, its end news, a source given up an error. */
export function availabilityLevel(event: AvailabilityEvent): 'info' | 'warn' | 'error' {
  return event.type === 'restored' ? 'info' : event.type === 'gone' ? 'error' : 'warn';
}

/**
 * The source's state for `vm status` and the dashboard while an outage
 * lasts ("page server tcp://… unreachable for 4.2 s, 3 reads waiting,
 * deadline in 25.8 s"), else what it went through; undefined for a source
 * that never lost its peer.
 */
export function availabilityStatusLine(stats: AvailabilityStats): string | undefined {
  const { current } = stats;
  if (stats.state === 'unavailable' && current) {
    return `${stats.source} unreachable for ${seconds(current.forMs)}, ${count(current.readsWaiting, 'read')} waiting` +
      (current.deadlineInMs === undefined ? '' : `, deadline in ${seconds(current.deadlineInMs)}`);
  }
  if (stats.outages === 0) return stats.state === 'gone' ? `${stats.source} gone` : undefined;
  const past = `${count(stats.outages, 'outage')}, ${seconds(stats.outageMs)} in all`;
  // Closed: done with (an eager restore's source once the memory is in), not reachable or not.
  const now = stats.state === 'available' || stats.state === 'unavailable' ? 'reachable' : stats.state;
  return `${stats.source} ${now} (${past})`;
}

function waiting(reads: number): string {
  return reads === 0 ? 'no reads waiting yet' : `guest waiting (${count(reads, 'read')} blocked)`;
}

function retrying(retries: boolean, deadlineInMs: number | undefined): string {
  const deadline = deadlineInMs === undefined ? '' : ` until the deadline in ${seconds(deadlineInMs)}`;
  return retries ? `retrying${deadline}` : `waiting for it to reconnect${deadline}`;
}

function seconds(ms: number): string {
  return `${(ms / 1000).toFixed(1)} s`;
}

function count(n: number, noun: string): string {
  return `${n} ${noun}${n === 1 ? '' : 's'}`;
}
