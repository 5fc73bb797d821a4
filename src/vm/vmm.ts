// The VMM: builds a VM (KVM objects, guest RAM, in-kernel irqchip and PIT),
// boots a multiboot guest or restores a snapshot, and runs one worker thread
// per vCPU. The VM's lifecycle (vm-lifecycle.ts) is the authority on what
// the VM may do next: every request that changes the VM is checked against
// it when it arrives (refused at once when it does not fit) and runs one at
// a time, after the requests before it; each vCPU's own state machine
// (vcpu-state-machine.ts, in its worker) checks the commands it is sent.
import { readFileSync } from 'node:fs';
import { MessageChannel } from 'node:worker_threads';
import { kvmNative } from '../native-kvm.js';
import { parseMultibootImage, loadMultiboot, multibootEntryState } from './boot/multiboot.js';
import { BUILTIN_GUEST_PATH } from './boot/builtin-guest.js';
import type { SavedDevice } from './devices/device.js';
import { GuestImageNotFoundError, InvalidStateTransitionError, InvalidVmSnapshotError, VmConfigError, VmError } from './errors.js';
import { KVM_PIT_SPEAKER_DUMMY, KVM_TSS_ADDRESS, KVM_IDENTITY_MAP_ADDRESS, type KvmCapName } from './kvm/ioctls/constants.js';
import type { CpuidEntry } from './kvm/ioctls/structs.js';
import { KvmSystem } from './kvm/kvm-system.js';
import type { KvmVcpu, VcpuState } from './kvm/kvm-vcpu.js';
import type { KvmVm } from './kvm/kvm-vm.js';
import { GuestMemory, type GuestMemoryBacking } from './memory/guest-memory.js';
import { LazyGuestMemory, type LazyMemoryReport, type LazyRestoreOptions } from './memory/lazy-guest-memory.js';
import type { SnapshotFile, SnapshotWriteSummary } from '../snapshot/index.js';
import type { PageSource } from '../sources/page-source.js';
import { isPaused, sourceOwnsGuest } from '../migrate/migration-state.js';
import { MigrationStoppedError, SourceMigration, type MigrateOptions, type MigrationProgress } from '../migrate/source-migration.js';
import type { DestinationProgress } from '../migrate/destination-migration.js';
import { SnapshotCorruptError } from '../snapshot/errors.js';
import { machineConfigProblem, type MachineConfig } from './machine-config.js';
import { checkSnapshotPath, writeVmSnapshot } from './persist/vm-snapshot.js';
import type { VmRestoreSource } from './persist/restore-source.js';
import { loadGuestMemory } from './memory/eager-load.js';
import { vmStateToJson, type VmSavedState } from './persist/vm-state.js';
import { GuestDirtyLog } from './dirty-log.js';
import type { IncomingLazyMemory, IncomingMachine } from './migratable.js';
import type { LatencySummary } from '../metrics/latency-histogram.js';
import { PAGE_SIZE } from '../native.js';
import { downsamplePageStates, PageState, type PageStateMap } from '../pager/page-state.js';
import { vcpuWorkerFor } from './vcpu-worker-pool.js';
import { VcpuCounterBlock, type GuestExitReason, type VcpuCommandBody, type VcpuCounters, type VcpuEvent, type VcpuWorkerData } from './vcpu-protocol.js';
import type { VcpuRunState } from './vcpu-state-machine.js';
import { KICK_SIGNAL, settledWithin, VcpuHandle } from './vcpu-handle.js';
import { VmLifecycle, type VmLifecycleEvent, type VmLifecycleState } from './vm-lifecycle.js';

/** What a pause or resume did: the state after it, and whether it changed anything ("already paused"). */
export interface VmStateChange {
  state: VmLifecycleState;
  changed: boolean;
}

/** A snapshot being written: guest RAM bytes written so far. */
export interface SnapshotProgress {
  path: string;
  writtenBytes: number;
  totalBytes: number;
}

/** A written snapshot: the file's summary and where the time went (ms, to 0.01). */
export type VmSnapshotSummary = SnapshotWriteSummary & { pauseMs: number; saveStateMs: number; writeMs: number; durationMs: number };

/** Points where a test can hold the VMM in the middle of an operation (deterministic races). */
export interface VmmHooks {
  /** A snapshot has paused the VM and saved its state, and is about to write RAM. */
  beforeSnapshotWrite?: (path: string) => Promise<void> | void;
}

export interface VmConfig {
  /** A multiboot v1 image path, or 'builtin' for the micro guest. */
  image: string;
  memoryBytes: number;
  vcpuCount?: number;
  cmdline?: string;
  backing?: GuestMemoryBacking;
  /** Where the guest's COM1 output goes (default: discarded). */
  console?: (bytes: Uint8Array) => void;
}

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

export interface VmStatus {
  state: VmLifecycleState;
  memoryBytes: number;
  /** blockedOnMemoryMs: a lazily restored (or post-copy migrated) VM's time this vCPU spent blocked on missing pages (QEMU's postcopy-blocktime, per vCPU). */
  vcpus: { id: number; state: VcpuRunState; counters: VcpuCounters; blockedOnMemoryMs?: number }[];
  exitReason: GuestExitReason | undefined;
  /** How the VM was restored (and from what), with the lazy pager's counters while it serves. */
  restore?: RestoreTimings & { mode: 'eager' | 'lazy'; source: string; memory?: LazyMemoryReport };
  /** A live migration of this VM, out (source) or in (destination), while it runs and once it ended. */
  migration?: MigrationProgress | DestinationProgress;
}

/** Where the time of a restore went, in ms from the start of Vmm.restore. */
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

/** What the VMM needs from KVM; checked up front so a missing one is named. */
const REQUIRED_CAPS: KvmCapName[] = ['KVM_CAP_IRQCHIP', 'KVM_CAP_PIT2', 'KVM_CAP_USER_MEMORY', 'KVM_CAP_IMMEDIATE_EXIT', 'KVM_CAP_XSAVE', 'KVM_CAP_XCRS', 'KVM_CAP_VCPU_EVENTS', 'KVM_CAP_DEBUGREGS'];

/**
 * How long a stopping VM waits for each vCPU to leave the guest, and then for
 * its worker thread to end. A vCPU leaves within microseconds of its kick
 * (KVM_RUN returns -EINTR; a vCPU asleep on a missing page is let go when the
 * pager stops); this bound is for one that does not.
 */
const VCPU_STOP_GRACE_MS = 2000;

/**
 * How long a stopping VM waits for the request in progress (a pause, a
 * resume) before it stops the vCPUs that request may be waiting on.
 */
const QUEUE_GRACE_MS = 250;

/** ms to 0.01: what a performance.now() difference means here. */
const ms2 = (x: number): number => Math.round(x * 100) / 100;

export class Vmm implements IncomingMachine {
  private readonly handles: VcpuHandle[] = [];
  private exitReasonValue: GuestExitReason | undefined;
  private closing: Promise<void> | undefined;
  /** Resolves when every vCPU has left the guest for good; the first vCPU's reason. */
  readonly exited: Promise<GuestExitReason>;
  private resolveExited!: (reason: GuestExitReason) => void;
  private stopMemory: (() => Promise<void>) | undefined;
  private lazyMemory: LazyGuestMemory | undefined;
  private lazyOptions: LazyRestoreOptions | undefined;
  private prefetchAllStarted = false;
  private restoreInfo: (RestoreTimings & { mode: 'eager' | 'lazy'; source: string }) | undefined;
  /** Set when guest memory could not be supplied: the guest's output from then on is dropped. */
  private memoryFailure: Error | undefined;
  /** The authority on what the VM may do next. */
  private readonly lifecycle = new VmLifecycle('created');
  /** The tail of the requests that change the VM: each runs after the one before it has ended. */
  private queue: Promise<unknown> = Promise.resolve();
  /** Test hooks (see VmmHooks). */
  readonly hooks: VmmHooks = {};

  private constructor(
    readonly system: KvmSystem,
    readonly vm: KvmVm,
    readonly memory: GuestMemory,
    readonly machine: MachineConfig,
    private readonly console: (bytes: Uint8Array) => void,
  ) {
    this.exited = new Promise((r) => (this.resolveExited = r));
  }

  /** Build a VM, load a multiboot image and leave it created (paused at the entry point, never run). */
  static async boot(config: VmConfig): Promise<Vmm> {
    const machine: MachineConfig = { memoryBytes: config.memoryBytes, vcpuCount: config.vcpuCount ?? 1, cmdline: config.cmdline ?? '', image: '' };
    const problem = machineConfigProblem(machine);
    if (problem) throw new VmConfigError(problem.field, `is ${machine[problem.field]}; it ${problem.problem}`);
    const imagePath = config.image === 'builtin' ? BUILTIN_GUEST_PATH : config.image;
    machine.image = imagePath;
    let imageBytes: Uint8Array;
    try {
      imageBytes = readFileSync(imagePath);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') throw new GuestImageNotFoundError(imagePath, { cause: error });
      throw error;
    }
    const image = parseMultibootImage(imageBytes, imagePath);
    const vmm = Vmm.build(machine, config.backing ?? 'anonymous', config.console);
    try {
      const { entry, infoAddress } = loadMultiboot(vmm.memory, image, machine.cmdline);
      await vmm.startWorkers();
      const bsp = vmm.handles[0]!;
      const boot = multibootEntryState(entry, infoAddress, bsp.vcpu.getSregs());
      for (const handle of vmm.handles) {
        const cpuid = vmm.cpuidFor(handle.vcpu.id);
        if (handle === bsp) await handle.request({ type: 'set-boot-state', regs: boot.regs, sregs: boot.sregs, cpuid });
        else await handle.request({ type: 'set-boot-state', regs: handle.vcpu.getRegs(), sregs: handle.vcpu.getSregs(), cpuid });
      }
      return vmm;
    } catch (error) {
      await vmm.close();
      throw error;
    }
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
  static async restore(from: VmRestoreSource, options: RestoreOptions = {}): Promise<Vmm> {
    const started = performance.now() - from.openMs;
    const since = (): number => ms2(performance.now() - started);
    const { state } = from;
    const lazy = options.lazy === true ? {} : options.lazy || undefined;
    const timings: Partial<RestoreTimings> = { openedMs: since() };
    let vmm: Vmm | undefined;
    let sourceOwnedByVm = false;
    let workersStarting: Promise<void> | undefined;
    try {
      vmm = Vmm.build(state.machine, options.backing ?? 'anonymous', options.console);
      vmm.lifecycle.transition('restore');
      timings.builtMs = since();
      const built = vmm;
      // The vCPU workers take tens of ms to load; they start while the memory is checked and loaded.
      workersStarting = built.startWorkers();
      workersStarting.catch(() => {});
      if (lazy && lazy.verifyFirst && from.verifyAll) {
        await from.verifyAll();
        timings.verifiedMs = since();
      }
      if (lazy) {
        built.lazyOptions = lazy;
        sourceOwnedByVm = true;
        built.lazyMemory = LazyGuestMemory.start(built.memory, from.memory, lazy, (error) => built.failMemory(error));
        if (timings.verifiedMs !== undefined) built.lazyMemory.verifyMs = timings.verifiedMs - timings.builtMs;
        const lazyMemory = built.lazyMemory;
        built.stopMemory = () => lazyMemory.stop();
      } else {
        try {
          await loadGuestMemory(built.memory, from.memory, options.onLoadProgress);
        } catch (error) {
          throw from.explain(error as Error);
        }
        timings.verifiedMs = since();
      }
      timings.memoryMs = since();
      await workersStarting;
      await built.loadState(state);
      timings.readyMs = since();
      built.restoreInfo = { mode: lazy ? 'lazy' : 'eager', source: from.description, ...(timings as RestoreTimings) };
      built.lifecycle.transition('restored');
      return built;
    } catch (error) {
      await workersStarting?.catch(() => {});
      await vmm?.close();
      throw error;
    } finally {
      if (!sourceOwnedByVm || !vmm) await from.memory.close?.();
    }
  }

  /**
   * Load a saved state into the built machine: the in-kernel irqchip, PIT and
   * clock, every vCPU, and the board's devices (vCPU 0's worker holds them).
   * The vCPUs are paused; the schema made the saved ids exactly
   * 0..vcpuCount-1, one each.
   */
  private async loadState(state: VmSavedState): Promise<void> {
    this.vm.setPit2(state.pit2);
    this.vm.setClock(state.clock);
    this.vm.setIrqchip(state.irqchip);
    const byId = new Map(state.vcpus.map((v) => [v.id, v]));
    for (const handle of this.handles) {
      await handle.request({ type: 'restore-state', vcpu: byId.get(handle.vcpu.id)!, devices: handle.vcpu.id === 0 ? state.devices : undefined });
    }
  }

  private static build(machine: MachineConfig, backing: GuestMemoryBacking, console?: (bytes: Uint8Array) => void): Vmm {
    const problem = machineConfigProblem(machine);
    if (problem) throw new VmConfigError(problem.field, `is ${machine[problem.field]}; it ${problem.problem}`);
    const system = KvmSystem.open();
    let vm: KvmVm | undefined;
    let memory: GuestMemory | undefined;
    try {
      system.requireExtensions(REQUIRED_CAPS);
      vm = system.createVm();
      // Intel VMX needs these pages for real-mode emulation; harmless elsewhere.
      vm.setTssAddress(KVM_TSS_ADDRESS);
      vm.setIdentityMapAddress(KVM_IDENTITY_MAP_ADDRESS);
      vm.createIrqchip();
      vm.createPit2(KVM_PIT_SPEAKER_DUMMY);
      memory = GuestMemory.create(machine.memoryBytes, backing);
      for (const region of memory.regions) vm.setUserMemoryRegion(region);
      const vmm = new Vmm(system, vm, memory, machine, console ?? (() => {}));
      for (let id = 0; id < machine.vcpuCount; id++) vm.createVcpu(id);
      return vmm;
    } catch (error) {
      vm?.close();
      memory?.unmap();
      system.close();
      throw error;
    }
  }

  /** CPUID for one vCPU: what KVM supports, with this vCPU's APIC ID. */
  private cpuidFor(id: number): CpuidEntry[] {
    return this.system.supportedCpuid().map((e) => {
      if (e.function === 1) return { ...e, ebx: ((e.ebx & 0x00ffffff) | (id << 24)) >>> 0 };
      if (e.function === 0xb || e.function === 0x1f) return { ...e, edx: id };
      return e;
    });
  }

  private async startWorkers(): Promise<void> {
    const mmapSize = this.system.vcpuMmapSize();
    const xsaveBytes = this.vm.xsaveBytes();
    const vcpus = this.vm.createdVcpus;
    for (const vcpu of vcpus) {
      const doorbell = new SharedArrayBuffer(4);
      const channel = new MessageChannel();
      const counters = new VcpuCounterBlock();
      const data: VcpuWorkerData = { vcpuFd: vcpu.fd, vcpuId: vcpu.id, mmapSize, xsaveBytes, doorbell, kickSignal: KICK_SIGNAL, ownsDevices: vcpu.id === 0, port: channel.port2, counters: counters.buffer };
      const worker = vcpuWorkerFor(data, [channel.port2]);
      const handle = new VcpuHandle(vcpu, worker, channel.port1 as unknown as MessagePort, new Int32Array(doorbell), counters, (event) => this.onEvent(event));
      this.handles.push(handle);
      void handle.exited.then(() => this.onVcpuExited());
    }
    await Promise.all(this.handles.map((h) => Promise.race([h.ready, h.exited.then((r) => Promise.reject(new VmError(`vCPU worker failed to start: ${JSON.stringify(r)}`)))])));
  }

  private onEvent(event: VcpuEvent): void {
    if (event.type === 'output') {
      if (!this.memoryFailure) this.console(event.bytes);
    }
    else if (event.type === 'irq') this.vm.irqLine(event.irq, event.level);
    else if (event.type === 'exited') this.exitReasonValue ??= event.reason;
  }

  private onVcpuExited(): void {
    // A vCPU that left the guest for good ends the VM (a fact: allowed from any state).
    this.lifecycle.transition('guest-exit');
    // The guest signalling done on one vCPU ends the VM: stop the others.
    for (const h of this.handles) if (h.state !== 'exited') void h.request({ type: 'stop' }).catch(() => {});
    if (this.handles.every((h) => h.state === 'exited')) this.resolveExited(this.exitReasonValue ?? { type: 'stopped' });
  }

  /** An incoming migration's guest faults so far (post-copy): each one's wait for its page. */
  faultLatency(): LatencySummary | undefined {
    return this.lazyMemory ? this.lazyMemoryReport()?.metrics.latencyMicros : undefined;
  }

  /** The lifecycle state: created, running, paused, snapshotting, restoring, migrating or stopped. */
  get state(): VmLifecycleState {
    return this.lifecycle.state;
  }

  status(): VmStatus {
    return {
      state: this.state,
      memoryBytes: this.machine.memoryBytes,
      vcpus: this.handles.map((h) => {
        const blocked = this.lazyMemory?.report().blocktimeByThread[String(h.threadId)];
        return { id: h.vcpu.id, state: h.state, counters: h.counters, ...(blocked === undefined ? {} : { blockedOnMemoryMs: Math.round(blocked / 10) / 100 }) };
      }),
      exitReason: this.exitReasonValue,
      ...(this.restoreInfo ? { restore: { ...this.restoreInfo, ...(this.lazyMemory ? { memory: this.lazyMemory.report() } : {}) } } : {}),
      ...(this.migrationStatus ? { migration: this.migrationStatus() } : {}),
    };
  }

  /** The live migration's progress, for status (set by the migration's owner: migrate() here, the destination for an incoming VM). */
  migrationStatus: (() => MigrationProgress | DestinationProgress) | undefined;

  /** The lazy pager's counters (undefined unless restored lazily). */
  lazyMemoryReport(): LazyMemoryReport | undefined {
    return this.lazyMemory?.report();
  }

  /** The lazy pager's live counters and gauges, for /metrics (undefined unless guest RAM is served by a pager). */
  lazyMemoryMetrics(): ReturnType<LazyGuestMemory['metricsView']> | undefined {
    return this.lazyMemory?.metricsView();
  }

  /** Each vCPU's id, run state, live counters and thread id (blocktime is by thread). */
  vcpuSnapshots(): { id: number; state: VcpuRunState; counters: VcpuCounters; threadId: number }[] {
    return this.handles.map((h) => ({ id: h.vcpu.id, state: h.state, counters: h.counters, threadId: h.threadId }));
  }

  /**
   * Guest RAM's page states in at most `maxCells` cells, for a memory map:
   * the pager's states while one serves guest RAM (a lazy restore, an
   * incoming post-copy), else every page present.
   */
  pageStates(maxCells: number): PageStateMap {
    if (this.lazyMemory) return this.lazyMemory.pageStates(maxCells);
    return downsamplePageStates(new Uint8Array(this.machine.memoryBytes / PAGE_SIZE).fill(PageState.PRESENT), maxCells);
  }

  /** How the VM was restored and where the time went (undefined for a booted VM). */
  get restoreTimings(): (RestoreTimings & { mode: 'eager' | 'lazy'; source: string }) | undefined {
    return this.restoreInfo;
  }

  /** A lazily restored VM: fill every page still missing and detach the pager (resolves when done). */
  async completeMemory(): Promise<void> {
    await this.lazyMemory?.complete();
  }

  /**
   * The snapshot could not supply a page a vCPU is waiting for: the guest must
   * not run on anything else. Stop every vCPU (their requests are queued and
   * kicked), then let the waiting one go; whatever it does until it sees the
   * stop is discarded with the VM (its console output is dropped).
   */
  private failMemory(error: Error & { code?: string }): void {
    if (this.memoryFailure) return;
    this.memoryFailure = error;
    this.exitReasonValue ??= { type: 'failed', exit: `${error.code ?? error.name}: ${error.message}` };
    for (const h of this.handles) if (h.state !== 'exited') void h.request({ type: 'stop' }).catch(() => {});
    this.lazyMemory?.release();
  }

  /**
   * Run a request that changes the VM. Checked against the lifecycle when it
   * arrives, so one that does not fit (a resume while a snapshot is being
   * written) is refused at once instead of waiting; then run after every
   * request before it has ended, and checked again when its turn comes (an
   * earlier one may have stopped the VM).
   */
  private serialized<T>(event: VmLifecycleEvent, run: () => Promise<T>): Promise<T> {
    try {
      this.lifecycle.check(event);
    } catch (error) {
      return Promise.reject(error);
    }
    const turn = this.queue.then(() => {
      this.lifecycle.check(event);
      return run();
    });
    this.queue = turn.catch(() => {});
    return turn;
  }

  /** Every vCPU into the guest. "Already running" is a result (changed: false), not an error. */
  resume(): Promise<VmStateChange> {
    return this.serialized('resume', async () => {
      if (this.state === 'running') return { state: this.state, changed: false };
      await Promise.all(this.handles.map((h) => h.request({ type: 'resume' })));
      this.lifecycle.transition('resume');
      if (this.lazyOptions?.prefetchAll && !this.prefetchAllStarted) {
        this.prefetchAllStarted = true;
        // After resume() returns: queueing thousands of pages is not part of the time to resume.
        setImmediate(() => this.lazyMemory?.prefetchAll());
      }
      return { state: this.state, changed: true };
    });
  }

  /**
   * Every vCPU out of the guest, its last exit completed (KVM finished any
   * pending I/O on re-entry). "Already paused" (or created, never run) is a
   * result (changed: false).
   */
  pause(): Promise<VmStateChange> {
    return this.serialized('pause', async () => {
      if (this.state !== 'running') return { state: this.state, changed: false };
      await this.pauseVcpus();
      this.lifecycle.transition('pause');
      return { state: this.state, changed: true };
    });
  }

  private async pauseVcpus(): Promise<void> {
    await Promise.all(this.handles.map((h) => h.request({ type: 'pause' })));
  }

  /** Bytes for the guest's COM1 receiver; SerialInputFullError (nothing queued) past the bound. */
  async sendInput(bytes: Uint8Array): Promise<void> {
    this.lifecycle.check('input');
    await this.handles[0]!.request({ type: 'input', bytes });
  }

  /** The complete state of the VM, memory apart. Only while no vCPU runs (created, paused, or inside a snapshot). */
  async saveState(): Promise<VmSavedState> {
    if (!['created', 'paused', 'snapshotting', 'migrating'].includes(this.state)) throw new InvalidStateTransitionError(this.state, 'save the state of');
    const msrCandidates = this.system.msrIndexList();
    const msrIndices = this.handles[0]!.vcpu.readableMsrs(msrCandidates);
    const vcpus: VcpuState[] = [];
    let devices: SavedDevice[] = [];
    for (const h of this.handles) {
      const saved = await h.request<{ vcpu: VcpuState; devices?: SavedDevice[] }>({ type: 'save-state', msrIndices });
      vcpus.push(saved.vcpu);
      if (saved.devices) devices = saved.devices;
    }
    return { machine: this.machine, vcpus, irqchip: this.vm.getIrqchip(), pit2: this.vm.getPit2(), clock: this.vm.getClock(), devices };
  }

  /**
   * Pause (if running), write state and memory to `path`; the VM stays
   * paused, also when the write fails. The path is checked first
   * (persist/vm-snapshot.ts checkSnapshotPath): a refused one leaves the VM
   * as it was. While the snapshot is written the VM is `snapshotting` and
   * refuses every other request but input.
   */
  snapshot(path: string): Promise<VmSnapshotSummary> {
    return this.serialized('snapshot', async () => {
      checkSnapshotPath(path);
      const started = performance.now();
      const wasRunning = this.state === 'running';
      this.lifecycle.transition('snapshot');
      try {
        if (wasRunning) await this.pauseVcpus();
        const pausedAt = performance.now();
        const state = await this.saveState();
        const savedAt = performance.now();
        await this.hooks.beforeSnapshotWrite?.(path);
        // This thread is the lazy pager: it must not touch a missing page. Fill them all first.
        await this.completeMemory();
        this.snapshotProgressValue = { path, writtenBytes: 0, totalBytes: this.memory.lengthBytes };
        const summary = await writeVmSnapshot(path, state, this.memory, (writtenBytes, totalBytes) => {
          this.snapshotProgressValue = { path, writtenBytes, totalBytes };
        });
        const done = performance.now();
        if (this.lifecycle.allows('snapshot-done')) this.lifecycle.transition('snapshot-done');
        return { ...summary, pauseMs: ms2(pausedAt - started), saveStateMs: ms2(savedAt - pausedAt), writeMs: ms2(done - savedAt), durationMs: ms2(done - started) };
      } catch (error) {
        if (this.lifecycle.allows('snapshot-failed')) this.lifecycle.transition('snapshot-failed');
        throw error;
      } finally {
        this.snapshotProgressValue = undefined;
      }
    });
  }

  private snapshotProgressValue: SnapshotProgress | undefined;

  /** The snapshot being written now (GET /snapshot, for a progress display), or undefined. */
  get snapshotProgress(): SnapshotProgress | undefined {
    return this.snapshotProgressValue;
  }

  /**
   * Live-migrate this VM to a destination VMM (`vm receive`): pre-copy while
   * it runs, then post-copy or stop-and-copy (source-migration.ts). The VM is
   * `migrating` meanwhile and refuses every other request but input. On
   * success the guest runs there and this VM stops (its exit reason
   * 'migrated'); a failure or cancel before switchover leaves it as it was.
   */
  migrate(options: MigrateOptions): Promise<MigrationProgress> {
    return this.serialized('migrate', async () => {
      const wasRunning = this.state === 'running';
      this.lifecycle.transition('migrate');
      let migration: SourceMigration | undefined;
      try {
        // This thread is the lazy pager: it must not read a missing page. Fill them all first.
        await this.completeMemory();
        const dirtyLog = new GuestDirtyLog(this.vm, this.memory, PAGE_SIZE);
        migration = new SourceMigration({
          memory: this.memory,
          describe: () => this.machine,
          startDirtyLog: () => dirtyLog.start(),
          collectDirtyPages: (bitmap) => dirtyLog.collect(bitmap),
          stopDirtyLog: () => dirtyLog.stop(),
          pauseVcpus: () => this.pauseVcpus(),
          resumeVcpus: async () => {
            if (wasRunning) await Promise.all(this.handles.map((h) => h.request({ type: 'resume' })));
          },
          saveState: async () => vmStateToJson(await this.saveState()),
        }, options);
        this.sourceMigration = migration;
        const m = migration;
        m.on('waiting', () => {
          for (const waiter of this.operatorWaiters.splice(0)) waiter(m.progress());
        });
        this.migrationStatus = () => m.progress();
        this.migrationRun = migration.run();
        this.migrationRun.catch(() => {});
        const report = await this.migrationRun;
        this.exitReasonValue ??= { type: 'migrated', to: options.to };
        this.lifecycle.transition('migrate-done');
        for (const h of this.handles) if (h.state !== 'exited') void h.request({ type: 'stop' }).catch(() => {});
        return report;
      } catch (error) {
        // Past GO the guest is (or may be) the destination's: this side stays migrating, keeping its memory.
        if (migration && !sourceOwnsGuest(migration.state)) throw error;
        this.lifecycle.transition('migrate-failed');
        // Stopped by the operator while paused: the guest was left to the destination; the VM ends (stop()).
        if (wasRunning && !(error instanceof MigrationStoppedError)) this.lifecycle.transition('resume');
        throw error;
      }
    });
  }

  /** For an incoming migration's resume: whether a page is here already (pages still to come are the lazy pager's missing ones). */
  pagePresent(): (page: number) => boolean {
    const lazy = this.lazyMemory;
    return lazy ? (page) => lazy.hasPage(page) : () => true;
  }

  /** `vm migrate --resume`: reconnect a paused migration now; resolves with its final report, or its progress if it gives up again. */
  resumeMigration(): Promise<MigrationProgress> {
    if (!this.sourceMigration || !this.migrationRun) throw new InvalidStateTransitionError(this.state, 'resume the migration of');
    this.sourceMigration.requestResume();
    // The answer waits for the next outcome: its end, or its giving up again.
    return Promise.race([this.migrationRun, new Promise<MigrationProgress>((resolve) => this.operatorWaiters.push(resolve))]);
  }

  /**
   * `vm migrate --abandon`: a migration that lost its connection with GO in
   * flight (committing-paused) takes the guest back; it runs here again.
   */
  async abandonMigration(): Promise<void> {
    if (!this.sourceMigration) throw new InvalidStateTransitionError(this.state, 'abandon the migration of');
    await this.sourceMigration.requestAbandon();
    await this.migrationRun?.catch(() => {});
  }

  /**
   * The outgoing migration's end: its final report, or (it failed) its
   * error — or its progress as soon as it gave up reconnecting and waits
   * for the operator (--resume, --abandon, or vm stop), so that a caller
   * waiting on it is told the truth rather than left hanging.
   */
  migrationOutcome(run: Promise<MigrationProgress> | undefined = this.migrationRun): Promise<MigrationProgress> {
    if (!run) return Promise.reject(new InvalidStateTransitionError(this.state, 'follow the migration of'));
    return Promise.race([run, this.migrationWaitsForOperator()]);
  }

  /** Resolves with the outgoing migration's progress once it waits for the operator (now, or the next time). */
  private migrationWaitsForOperator(): Promise<MigrationProgress> {
    const migration = this.sourceMigration;
    if (migration?.waitingForOperator) return Promise.resolve(migration.progress());
    return new Promise((resolve) => this.operatorWaiters.push(resolve));
  }

  private operatorWaiters: Array<(progress: MigrationProgress) => void> = [];

  /** The outgoing migration's run (its final report, or its failure). */
  private migrationRun: Promise<MigrationProgress> | undefined;

  /** Cancel the outgoing migration (before switchover only; MigrationError after). */
  cancelMigration(): void {
    if (!this.sourceMigration) throw new InvalidStateTransitionError(this.state, 'cancel the migration of');
    this.sourceMigration.cancel();
  }

  private sourceMigration: SourceMigration | undefined;

  /**
   * Build the machine an incoming live migration describes and start its
   * vCPU workers. The VM is `restoring`: its memory arrives over the
   * migration (pre-copy writes it in place), then its state (completeIncoming).
   */
  static async createIncoming(machine: MachineConfig, options: { console?: (bytes: Uint8Array) => void; backing?: GuestMemoryBacking } = {}): Promise<Vmm> {
    const vmm = Vmm.build(machine, options.backing ?? 'anonymous', options.console);
    try {
      vmm.lifecycle.transition('restore');
      await vmm.startWorkers();
      return vmm;
    } catch (error) {
      await vmm.close();
      throw error;
    }
  }

  /**
   * An incoming migration's switchover: pages still to come (post-copy) are
   * served by a pager from `lazy.source`, those already here are present; the
   * saved state is loaded and the VM is paused, ready to resume.
   */
  async completeIncoming(state: VmSavedState, from: string, lazy?: IncomingLazyMemory): Promise<void> {
    const started = performance.now();
    if (lazy) {
      const lazyMemory = LazyGuestMemory.start(this.memory, lazy.source, { prefetch: false, presentPages: lazy.presentPages }, (error) => this.failMemory(error));
      this.lazyMemory = lazyMemory;
      this.stopMemory = () => lazyMemory.stop();
    }
    const memoryMs = ms2(performance.now() - started);
    await this.loadState(state);
    this.restoreInfo = { mode: lazy ? 'lazy' : 'eager', source: from, openedMs: 0, builtMs: 0, memoryMs, readyMs: ms2(performance.now() - started) };
    this.lifecycle.transition('restored');
  }

  /** Throws InvalidStateTransitionError (naming the state) unless the lifecycle allows `event` now. */
  check(event: VmLifecycleEvent): void {
    // A migrating VM stops only when its migration, paused by a cut, allows it (vm stop is its way out).
    if (event === 'stop' && this.state === 'migrating' && this.sourceMigration && isPaused(this.sourceMigration.state)) return;
    this.lifecycle.check(event);
  }

  /**
   * Stop: refused (InvalidStateTransitionError) while an operation owns the
   * VM or once it is stopped; otherwise the VM is closed.
   */
  stop(): Promise<void> {
    this.check('stop');
    if (this.state === 'migrating') return this.stopMigrating();
    return this.close();
  }

  /** Resolves when guest memory has stopped being served (haltGuest started it). */
  private memoryStopped: Promise<void> | undefined;

  /**
   * Send every vCPU the stop, then stop serving guest memory and let go of
   * every thread asleep on a page: the VM is going away, its memory no longer
   * matters. Once; neither waits.
   *
   * The stop is sent, not awaited: a vCPU asleep on a missing page hears it
   * only once the page is answered, which may be never (a page server that
   * stopped answering). Worse, the kick that comes with it wakes a vCPU whose
   * wait is a kernel-mode access (KVM's emulator reading guest RAM), and x86
   * retries such a fault at once unless the signal is fatal: the vCPU thread
   * re-faults without end, each retry a new message for the pager, both
   * threads spinning until the page comes. Stopping the pager and
   * unregistering guest RAM (LazyGuestMemory.stop) ends that: the retry finds
   * plain memory (zero), the access completes, and KVM sees the pending kick
   * before it would enter the guest again: the guest runs no further
   * instruction on memory it was never given.
   */
  private haltGuest(): void {
    if (this.memoryStopped) return;
    for (const h of this.handles) if (h.state !== 'exited') void h.request({ type: 'stop' }).catch(() => {});
    this.memoryStopped = this.stopMemory?.() ?? Promise.resolve();
    this.memoryStopped.catch(() => {}); // awaited by teardown; not an unhandled rejection meanwhile
  }

  /**
   * Stop while an outgoing migration is paused by a cut: the operator gives up
   * on it (the destination has the guest, or it is lost with it). The
   * migration ends first — it holds the request queue close() waits for.
   */
  private async stopMigrating(): Promise<void> {
    this.sourceMigration!.stop();
    await this.migrationRun?.catch(() => {});
    await this.close();
  }

  /**
   * Stop every vCPU, end the workers, free KVM objects and memory. Waits for
   * the request in progress first (a snapshot reads guest RAM; unmapping it
   * under the writer would crash the process), so it ends the VM after it;
   * a pause or resume that does not end in a moment (a vCPU held on a page
   * that never comes) is ended by the stop instead. Every wait on a vCPU is
   * bounded (VCPU_STOP_GRACE_MS), and `exited` resolves by the end.
   */
  close(): Promise<void> {
    this.closing ??= this.teardown();
    return this.closing;
  }

  private async teardown(): Promise<void> {
    // A pause, resume or input in progress waits for its vCPUs' replies, and a
    // vCPU held on a page that never comes never replies: if the request
    // before this one has not ended in a moment, the vCPUs are stopped and
    // guest memory let go now, so that it ends. Not while an operation owns
    // the VM (a snapshot being written reads guest RAM on this thread).
    if (!(await settledWithin(this.queue, QUEUE_GRACE_MS)) && !['snapshotting', 'migrating', 'restoring'].includes(this.lifecycle.state)) this.haltGuest();
    await this.queue;
    const state = this.lifecycle.state;
    if (state === 'restoring') this.lifecycle.transition('restore-failed');
    else if (this.lifecycle.allows('stop')) this.lifecycle.transition('stop');
    this.haltGuest();
    await Promise.all(this.handles.map((h) => h.end(VCPU_STOP_GRACE_MS)));
    await this.memoryStopped;
    this.vm.close();
    this.memory.unmap();
    this.system.close();
    // Every vCPU has ended, or did not within its bounds (then its worker
    // never says so): the VM has exited either way.
    this.resolveExited(this.exitReasonValue ?? { type: 'stopped' });
  }
}
