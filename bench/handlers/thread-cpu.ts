// CPU time of the calling thread, from /proc (Linux): what serving cost the
// handler's own thread, apart from how long the toucher waited.
import { readFileSync, readdirSync } from 'node:fs';
import { native } from '../../src/native.js';
import type { ThreadCpu } from './spec.js';

const TICK_MS = 10; // USER_HZ is 100 on Linux

export function threadCpuNow(): ThreadCpu {
  return threadCpuOf('self', native.gettid());
}

/** CPU time of thread `tid` of process `pid` (another process's main thread: its pid twice). */
export function threadCpuOf(pid: number | 'self', tid: number): ThreadCpu {
  const [runNs] = readFileSync(`/proc/${pid}/task/${tid}/schedstat`, 'utf8').split(' ').map(Number);
  // Fields after "(comm) ": state is field 3, utime 14, stime 15 (proc(5)).
  const stat = readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const status = readFileSync(`/proc/${pid}/task/${tid}/status`, 'utf8');
  const switches = (name: string): number => Number(new RegExp(`^${name}:\\s+(\\d+)`, 'm').exec(status)?.[1] ?? Number.NaN);
  return {
    runNs: runNs!,
    userMs: Number(fields[11]) * TICK_MS,
    systemMs: Number(fields[12]) * TICK_MS,
    voluntarySwitches: switches('voluntary_ctxt_switches'),
    involuntarySwitches: switches('nonvoluntary_ctxt_switches'),
  };
}

export function threadCpuSince(start: ThreadCpu, now = threadCpuNow()): ThreadCpu {
  return {
    runNs: now.runNs - start.runNs,
    userMs: now.userMs - start.userMs,
    systemMs: now.systemMs - start.systemMs,
    voluntarySwitches: now.voluntarySwitches - start.voluntarySwitches,
    involuntarySwitches: now.involuntarySwitches - start.involuntarySwitches,
  };
}

/** Run time of every thread of process `pid` (schedstat, ns): what another process, such as the page server, spent. */
export function processRunNs(pid: number): number {
  let total = 0;
  for (const tid of readdirSync(`/proc/${pid}/task`)) {
    try {
      total += Number(readFileSync(`/proc/${pid}/task/${tid}/schedstat`, 'utf8').split(' ')[0]);
    } catch {
      // The thread ended between the listing and the read: its time is lost with it.
    }
  }
  return total;
}
