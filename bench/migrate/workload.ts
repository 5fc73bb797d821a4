// The guest both VMMs migrate, and what one migration reports, whichever VMM
// ran it. The guest is the project's micro guest (guest/micro.asm), booted
// from the very same image by both: the writer workload fills its region once,
// then dirties pages in order (seq) or at random (random) at `rate` pages per
// second, with a heartbeat every `hb` timer ticks.
import type { LatencySummary } from '../../src/stats/latency-histogram.js';

export type DirtyPattern = 'sequential' | 'random';

export interface GuestWorkload {
  /** Guest RAM. */
  memoryBytes: number;
  /** The writer's region (mem=, MiB): RAM less the image, its tables and room QEMU's firmware keeps. */
  regionMiB: number;
  pattern: DirtyPattern;
  /** Pages dirtied per second (the guest's rate=). */
  ratePagesPerSecond: number;
  /** PIT ticks per second (hz=) and ticks between heartbeats (hb=). */
  hz: number;
  hbTicks: number;
  seed: number;
}

/** The multiboot command line both VMMs hand the guest. */
export function guestCmdline(w: GuestWorkload): string {
  const pattern = w.pattern === 'sequential' ? 'seq' : 'random';
  return `workload=writer mem=${w.regionMiB} rate=${w.ratePagesPerSecond} pattern=${pattern} seed=${w.seed} hz=${w.hz} hb=${w.hbTicks}`;
}

/**
 * The writer's region for a RAM size: everything above the guest's 2 MiB
 * base, less 8 MiB (SeaBIOS keeps tables at the top of RAM under QEMU, and
 * both sides must dirty the same pages), at most the guest's 512 MiB.
 */
export function regionMiBFor(memoryBytes: number): number {
  const mib = Math.floor(memoryBytes / (1 << 20));
  const region = Math.min(512, mib - 2 - 8);
  if (region < 1) throw new RangeError(`guest RAM of ${mib} MiB leaves no room for the writer's region (at least 11 MiB)`);
  return region;
}

/** The guest's boot line: `micro: boot workload=writer mem=M pages=P`. */
export function bootPages(text: string): number | undefined {
  const m = /^micro: boot workload=\S+ mem=\d+ pages=(\d+)/m.exec(text);
  return m ? Number(m[1]) : undefined;
}

export type Vmm = 'ours' | 'qemu';

/** One verified migration's figures, the same for both VMMs (each from its own reports where it has them). */
export interface MigrationFigures {
  vmm: Vmm;
  /** From the migrate command to completion, as the VMM reports it (ours: elapsedMs; QEMU: total-time). */
  totalMs: number;
  /** The same span on the bench's clock: the command sent to the source's answer (ours) or its 'completed' event (QEMU). */
  wallMs: number;
  /** The first pass to switchover (from the command), bench's clock. */
  switchoverAtMs: number | undefined;
  /** Guest stopped, as the VMM's clock says (ours: downtime.totalMs; QEMU: downtime). */
  downtimeMs: number;
  /** Host time between the source's last heartbeat and the destination's first. */
  heartbeatGapMs: number;
  /** The longest heartbeat interval from the migrate command on. */
  longestHeartbeatMs: number;
  /** The heartbeat period before the migration (median). */
  heartbeatPeriodMs: number;
  /** Bytes the source sent (ours: both connections, framing included; QEMU: ram.transferred). */
  transferredBytes: number;
  /** Faults on missing pages the destination handled during post-copy (ours: the pager's faults; QEMU: pages its trace shows requested). */
  demandFaults: number;
  /** Post-copy page requests the source served (ours: postcopyRequests, read-ahead included; QEMU: ram.postcopy-requests). */
  demandRequests: number;
  /** Demand-fault latency, µs, fault to page installed: ours from the destination pager; QEMU from its trace (page requested to page placed). */
  demandLatencyMicros: LatencySummary | undefined;
  /** Time vCPUs were blocked on missing pages, ms, summed over vCPUs (QEMU's postcopy-vcpu-blocktime). */
  vcpuBlocktimeMs: number;
  /** Pages the guest's own verify checked after the move (bad=0 or the run is an error). */
  verifiedGuestPages: number;
  /** Everything else each VMM reported (for the JSON). */
  raw: Record<string, unknown>;
}
