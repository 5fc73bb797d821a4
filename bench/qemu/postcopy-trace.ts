// Demand-fault latency of a QEMU post-copy destination, from its own trace.
// QEMU 7.2's query-migrate has no latency figures (postcopy-latency and its
// distribution came in 9.x), so the bench enables two trace events on the
// destination (log backend, `-msg timestamp=on`):
//
//   postcopy_page_req_add  a faulted page is queued as requested, its request
//                          about to go to the source (migrate_send_rp_req_pages)
//   postcopy_page_req_del  that page has been placed (UFFDIO_COPY done, the
//                          faulting threads woken: qemu_ufd_copy_ioctl)
//
// Lines look like `TID@SECONDS.MICROS:postcopy_page_req_add new page req 0x7f25... total 1`.
// The latency of a demand fault is del - add for the same host address: what
// a vCPU waiting on that page waits for, like our destination's demand READ
// round trip.

export interface DemandTrace {
  /** One latency per demanded page that was placed, µs. */
  latenciesMicros: number[];
  /** Pages requested and never placed (a broken migration would leave some). */
  unresolved: number;
}

const LINE = /^\d+@(\d+)\.(\d{6}):postcopy_page_req_(add|del) (?:new|resolved) page req (0x[0-9a-f]+)/;

export function parseDemandTrace(text: string): DemandTrace {
  const open = new Map<string, number>();
  const latenciesMicros: number[] = [];
  for (const line of text.split('\n')) {
    const m = LINE.exec(line);
    if (!m) continue;
    const micros = Number(m[1]) * 1e6 + Number(m[2]);
    const address = m[4]!;
    if (m[3] === 'add') {
      if (!open.has(address)) open.set(address, micros);
    } else {
      const at = open.get(address);
      if (at === undefined) continue;
      open.delete(address);
      latenciesMicros.push(micros - at);
    }
  }
  return { latenciesMicros, unresolved: open.size };
}

/**
 * The trace options that produce those lines into `file`. One -trace with a
 * pattern (it also enables postcopy_page_req_sync, which the parser skips):
 * a second -trace option would send its events to stderr.
 */
export function demandTraceArgs(file: string): string[] {
  return ['-msg', 'timestamp=on', '-trace', `enable=postcopy_page_req_*,file=${file}`];
}
