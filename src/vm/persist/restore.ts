// The one VM restore (Firecracker's persist.rs): a built machine, a saved
// state, and the pages of its memory image from a page source, some perhaps
// in guest RAM already. A snapshot file, a page server and object storage
// (restoreVm, over a VmRestoreSource: restore-source.ts) and an incoming live
// migration at its switchover (restoreInto, through vm-migration-kind.ts:
// pre-copy put pages in place, post-copy serves the rest) are the same
// restore: guest memory first (read in now, eager; or served by a pager as
// the vCPUs touch it, lazy), then the state, and the VM is paused, ready to
// resume.
import type { PageSource } from '../../sources/page-source.js';
import { buildVm } from '../builder.js';
import type { GuestMemoryBacking } from '../memory/guest-memory.js';
import { loadGuestMemory } from '../memory/eager-load.js';
import { LazyGuestMemory, type LazyRestoreOptions } from '../memory/lazy-guest-memory.js';
import { ms2, type Vmm } from '../vmm.js';
import type { VmRestoreSource } from './restore-source.js';
import type { VmSavedState } from './vm-state.js';
import type { PageBits } from '../../pager/index.js';

export interface RestoreOptions {
  console?: (bytes: Uint8Array) => void;
  backing?: GuestMemoryBacking;
  /**
   * Lazy restore: register guest RAM with userfaultfd and let a pager in this
   * thread fill pages from the snapshot as the vCPUs touch them, instead of
   * reading all of it before the guest runs. `true` takes the defaults.
   */
  lazy?: boolean | LazyRestoreOptions;
  /** An eager restore: told the bytes of guest RAM loaded so far, after each chunk. */
  onLoadProgress?: (loadedBytes: number, totalBytes: number) => void;
}

/** Where the time of a restore went, in ms from its start (restoreVm: from opening the source). */
export interface RestoreTimings {
  /** Snapshot opened, its tables and the VM state checked. */
  openedMs: number;
  /** KVM objects and guest RAM built (the vCPU workers start loading from here, alongside what follows). */
  builtMs: number;
  /** Every stored page's CRC checked (eager: while copying into guest RAM; lazy: only with verify). */
  verifiedMs?: number;
  /** Guest memory filled (eager) or registered with the pager serving it (lazy). */
  memoryMs: number;
  /** irqchip, PIT, clock, vCPUs and UART restored: ready to resume. */
  readyMs: number;
}

/** How a VM was restored: its timings, eager or lazy, and from what. */
export type RestoreInfo = RestoreTimings & { mode: 'eager' | 'lazy'; source: string };

/** What a restore puts into a built machine: the saved state, and where the pages of its memory come from. */
export interface VmImage {
  /** Where it comes from, for status and messages ("snapshot /tmp/vm.snap", "migration from tcp://…"). */
  readonly description: string;
  readonly state: VmSavedState;
  /** The pages not yet in guest RAM; absent: guest RAM holds them all already (a migration's pre-copy or stop-and-copy wrote it). */
  readonly memory?: PageSource;
  /** Pages in guest RAM already (a migration's pre-copy wrote them): a lazy restore's pager never fetches them. Default: none. */
  readonly presentPages?: PageBits;
  /** Check every stored page before the guest runs (VmRestoreSource.verifyAll); lazy with verifyFirst only. */
  verifyAll?(): Promise<void>;
  /** The error to report for a failed read of guest memory (VmRestoreSource.explain). */
  explain?(error: Error): Error;
}

/**
 * Build the machine a restore source describes, load its state, and leave
 * it paused. The source's state was checked when it was opened (vm-state.ts's
 * schema, every kernel struct's size included), before any KVM object
 * exists. Eager (default): every page is read into guest RAM (a snapshot's
 * CRCs checked as it is) before any vCPU runs. Lazy: guest RAM is
 * registered with userfaultfd and served by a pager on this thread while the
 * vCPUs run (see memory/lazy-guest-memory.ts), each page checked as it is
 * installed; with verifyFirst a source that can check every page without
 * copying (a snapshot file) does so before the guest runs. The source is the VM's from here on: closed with it, or now if
 * the restore fails.
 */
export async function restoreVm(from: VmRestoreSource, options: RestoreOptions = {}): Promise<Vmm> {
  const startedMs = performance.now() - from.openMs;
  const since = (): number => ms2(performance.now() - startedMs);
  const lazy = options.lazy === true ? {} : options.lazy || undefined;
  const openedMs = since();
  let vmm: Vmm | undefined;
  let sourceOwnedByVm = false;
  let vcpusStarting: Promise<void> | undefined;
  try {
    vmm = buildVm(from.state.machine, options.backing ?? 'anonymous', options.console);
    vmm.beginRestore();
    const builtMs = since();
    // The vCPU workers take tens of ms to load; they start while the memory is checked and loaded.
    vcpusStarting = vmm.startVcpus();
    vcpusStarting.catch(() => {});
    await restoreInto(vmm, from, {
      lazy,
      onLoadProgress: options.onLoadProgress,
      vcpusStarting,
      startedMs,
      timings: { openedMs, builtMs },
      onSourceServed: () => (sourceOwnedByVm = true),
    });
    return vmm;
  } catch (error) {
    await vcpusStarting?.catch(() => {});
    await vmm?.close();
    throw error;
  } finally {
    if (!sourceOwnedByVm || !vmm) await from.memory.close?.();
  }
}

export interface RestoreIntoOptions {
  /** Serve the pages lazily (a pager), with these options; undefined: read them all in now. */
  lazy?: LazyRestoreOptions;
  /** An eager restore: told the bytes of guest RAM loaded so far, after each chunk. */
  onLoadProgress?: (loadedBytes: number, totalBytes: number) => void;
  /** The vCPU workers starting alongside (awaited before the state is loaded); absent: started already. */
  vcpusStarting?: Promise<void>;
  /** performance.now() at the restore's start: the timings count from here. */
  startedMs: number;
  /** The timings before this step (opening the source, building the machine). */
  timings: Pick<RestoreTimings, 'openedMs' | 'builtMs'>;
  /** Called as a pager takes the image's page source over (it closes it from then on). */
  onSourceServed?: () => void;
}

/**
 * Restore `image` into a built VM that is restoring (builder.ts): guest
 * memory from its page source (none: it is all in place), then the saved
 * state; the VM ends paused, ready to resume, its restore's timings in its
 * status. A failure leaves the VM restoring: the caller closes it.
 */
export async function restoreInto(vmm: Vmm, image: VmImage, options: RestoreIntoOptions): Promise<void> {
  const since = (): number => ms2(performance.now() - options.startedMs);
  const { lazy } = options;
  const timings: Partial<RestoreTimings> = { ...options.timings };
  if (lazy && lazy.verifyFirst && image.verifyAll) {
    await image.verifyAll();
    timings.verifiedMs = since();
  }
  const source = image.memory;
  if (source && lazy) {
    options.onSourceServed?.();
    const pagerOptions = image.presentPages ? { ...lazy, presentPages: image.presentPages } : lazy;
    const lazyMemory = vmm.serveMemory((onFailure) => LazyGuestMemory.start(vmm.memory, source, pagerOptions, onFailure), lazy);
    if (timings.verifiedMs !== undefined) lazyMemory.verifyMs = timings.verifiedMs - timings.builtMs!;
  } else if (source) {
    try {
      await loadGuestMemory(vmm.memory, source, options.onLoadProgress);
    } catch (error) {
      throw image.explain ? image.explain(error as Error) : error;
    }
    timings.verifiedMs = since();
  }
  timings.memoryMs = since();
  await options.vcpusStarting;
  await loadState(vmm, image.state);
  timings.readyMs = since();
  vmm.restored({ mode: source && lazy ? 'lazy' : 'eager', source: image.description, ...(timings as RestoreTimings) });
}

/**
 * Load a saved state into the built machine: the in-kernel irqchip, PIT and
 * clock, every vCPU, and the board's devices (vCPU 0's worker holds them).
 * The vCPUs are paused; the schema made the saved ids exactly
 * 0..vcpuCount-1, one each.
 */
async function loadState(vmm: Vmm, state: VmSavedState): Promise<void> {
  vmm.vm.setPit2(state.pit2);
  vmm.vm.setClock(state.clock);
  vmm.vm.setIrqchip(state.irqchip);
  const byId = new Map(state.vcpus.map((v) => [v.id, v]));
  for (const handle of vmm.vcpus) {
    await handle.request({ type: 'restore-state', vcpu: byId.get(handle.vcpu.id)!, devices: handle.vcpu.id === 0 ? state.devices : undefined });
  }
}
