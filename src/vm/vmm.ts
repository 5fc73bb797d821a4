// The VMM's live object (Firecracker's Vmm): one VM, built by builder.ts
// (booted, or left restoring for an incoming migration) or restored by
// persist/restore.ts, and what it does while it lives: its vCPU threads
// (vcpu-handle.ts), pause and resume, input, snapshots, its status, and
// taking part in a live migration that the host drives (beginMigration,
// endMigration: the VM knows nothing of migration beyond migratable.ts).
// The VM's lifecycle (vm-lifecycle.ts) is the authority on what the VM may
// do next: every request that changes the VM is checked against it when it
// arrives (refused at once when it does not fit) and runs one at a time,
// after the requests before it; each vCPU's own state machine
// (vcpu-state-machine.ts, in its worker) checks the commands it is sent.
import { MessageChannel } from 'node:worker_threads';
import type { SavedDevice } from './devices/device.js';
import { InvalidStateTransitionError, VmError } from './errors.js';
import type { VcpuState } from './kvm/kvm-vcpu.js';
import type { KvmSystem } from './kvm/kvm-system.js';
import type { KvmVm } from './kvm/kvm-vm.js';
import type { GuestMemory } from './memory/guest-memory.js';
import type { LazyGuestMemory, LazyMemoryReport, LazyRestoreOptions } from './memory/lazy-guest-memory.js';
import type { SnapshotWriteSummary } from '../snapshot/index.js';
import type { MachineConfig } from './machine-config.js';
import { checkSnapshotPath, writeVmSnapshot } from './persist/vm-snapshot.js';
import type { RestoreInfo } from './persist/restore.js';
import { vmStateToJson, type VmSavedState } from './persist/vm-state.js';
import { GuestDirtyLog } from './dirty-log.js';
import type { MigrationEnd, MigrationSourceMachine } from './migratable.js';
import { PAGE_SIZE } from '../native.js';
import { downsamplePageStates, PageState, type PageStateMap } from '../pager/page-state.js';
import { vcpuWorkerFor } from './vcpu-worker-pool.js';
import { VcpuCounterBlock, type GuestExitReason, type VcpuCounters, type VcpuEvent, type VcpuWorkerData } from './vcpu-protocol.js';
import type { VcpuRunState } from './vcpu-state-machine.js';
import { KICK_SIGNAL, settledWithin, VcpuHandle } from './vcpu-handle.js';
import { VmLifecycle, vmLifecycleBusy, vmStateSavable, type VmLifecycleEvent, type VmLifecycleState } from './vm-lifecycle.js';

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

export interface VmStatus {
  state: VmLifecycleState;
  memoryBytes: number;
  /** blockedOnMemoryMs: a lazily restored (or post-copy migrated) VM's time this vCPU spent blocked on missing pages (QEMU's postcopy-blocktime, per vCPU). */
  vcpus: { id: number; state: VcpuRunState; counters: VcpuCounters; blockedOnMemoryMs?: number }[];
  exitReason: GuestExitReason | undefined;
  /** How the VM was restored (and from what), with the lazy pager's counters while it serves. */
  restore?: RestoreInfo & { memory?: LazyMemoryReport };
}

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
export const ms2 = (x: number): number => Math.round(x * 100) / 100;

export class Vmm {
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
  private restoreInfo: RestoreInfo | undefined;
  /** Set when guest memory could not be supplied: the guest's output from then on is dropped. */
  private memoryFailure: Error | undefined;
  /** The authority on what the VM may do next. */
  private readonly lifecycle = new VmLifecycle('created');
  /** The tail of the requests that change the VM: each runs after the one before it has ended. */
  private queue: Promise<unknown> = Promise.resolve();
  /** Test hooks (see VmmHooks). */
  readonly hooks: VmmHooks = {};

  /** A built VM (builder.ts buildVm): its vCPUs exist in KVM; startVcpus starts their threads. */
  constructor(
    readonly system: KvmSystem,
    readonly vm: KvmVm,
    readonly memory: GuestMemory,
    readonly machine: MachineConfig,
    private readonly console: (bytes: Uint8Array) => void,
  ) {
    this.exited = new Promise((r) => (this.resolveExited = r));
  }

  /** The VM's vCPUs, in id order (the builder sets their boot state, a restore loads theirs). */
  get vcpus(): readonly VcpuHandle[] {
    return this.handles;
  }

  /** A restore begins (builder.ts, persist/restore.ts): the VM is restoring until restored() or its close. */
  beginRestore(): void {
    this.lifecycle.transition('restore');
  }

  /**
   * A restore hands guest RAM to a pager (persist/restore.ts): `start` makes
   * it, told where to report a page the source cannot supply. The VM owns it
   * from here (its status, completeMemory, stopped with the VM); with
   * `options.prefetchAll` the pager streams every missing page once the VM
   * first resumes.
   */
  serveMemory(start: (onFailure: (error: Error & { code?: string }) => void) => LazyGuestMemory, options: LazyRestoreOptions): LazyGuestMemory {
    this.lazyOptions = options;
    const lazyMemory = start((error) => this.failMemory(error));
    this.lazyMemory = lazyMemory;
    this.stopMemory = () => lazyMemory.stop();
    return lazyMemory;
  }

  /** A restore is done (persist/restore.ts): its state is loaded, the VM is paused, ready to resume. */
  restored(info: RestoreInfo): void {
    this.restoreInfo = info;
    this.lifecycle.transition('restored');
  }

  /** Start a worker thread for each vCPU (once, as the VM is built) and wait until each is ready. */
  async startVcpus(): Promise<void> {
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

  /**
   * Send every vCPU still in its worker the stop; none is waited for (a vCPU
   * asleep on a missing page hears it only once the page comes: haltGuest).
   */
  private sendStopToVcpus(): void {
    for (const h of this.handles) if (h.state !== 'exited') void h.request({ type: 'stop' }).catch(() => {});
  }

  private onVcpuExited(): void {
    // A vCPU that left the guest for good ends the VM (a fact: allowed from any state).
    this.lifecycle.transition('guest-exit');
    // The guest signalling done on one vCPU ends the VM: stop the others.
    this.sendStopToVcpus();
    if (this.handles.every((h) => h.state === 'exited')) this.resolveExited(this.exitReasonValue ?? { type: 'stopped' });
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
    };
  }

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
  get restoreTimings(): RestoreInfo | undefined {
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
    this.sendStopToVcpus();
    this.lazyMemory?.release();
  }

  /**
   * Run a request that changes the VM. Checked against the lifecycle when it
   * arrives, so one that does not fit (a resume while a snapshot is being
   * written) is refused at once instead of waiting; then run after every
   * request before it has ended, and checked again when its turn comes (an
   * earlier one may have stopped the VM). The requests after it wait for its
   * end, or, given `heldUntil`, for that too (a migration owns the VM past
   * the answer to its start).
   */
  private serialized<T>(event: VmLifecycleEvent, run: () => Promise<T>, heldUntil?: Promise<void>): Promise<T> {
    try {
      this.lifecycle.check(event);
    } catch (error) {
      return Promise.reject(error);
    }
    const turn = this.queue.then(() => {
      this.lifecycle.check(event);
      return run();
    });
    this.queue = heldUntil ? turn.then(() => heldUntil, () => {}) : turn.catch(() => {});
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
    if (!vmStateSavable(this.state)) throw new InvalidStateTransitionError(this.state, 'save the state of');
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

  /** An outgoing migration in progress (beginMigration to endMigration): whether the VM ran before it, and the release of the request queue. */
  private migration: { wasRunning: boolean; ended: () => void } | undefined;

  /**
   * Hand this VM to an outgoing live migration, which the host drives
   * (src/vmm-host/hosted-vm.ts). The VM is `migrating` from here and
   * refuses every other request but input until endMigration(), which the
   * host calls once the migration has ended, whatever the end. Resolves with
   * the VM as a migration sees it (migratable.ts), its memory complete;
   * refused (InvalidStateTransitionError) unless the VM is paused or running.
   */
  beginMigration(): Promise<MigrationSourceMachine> {
    let ended!: () => void;
    const migrationEnded = new Promise<void>((resolve) => (ended = resolve));
    return this.serialized('migrate', async () => {
      const wasRunning = this.state === 'running';
      this.lifecycle.transition('migrate');
      this.migration = { wasRunning, ended };
      try {
        // This thread is the lazy pager: it must not read a missing page. Fill them all first.
        await this.completeMemory();
      } catch (error) {
        this.endMigration({ type: 'kept' });
        throw error;
      }
      const dirtyLog = new GuestDirtyLog(this.vm, this.memory, PAGE_SIZE);
      return {
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
      };
    }, migrationEnded);
  }

  /**
   * The outgoing migration begun by beginMigration() has ended (migratable.ts
   * MigrationEnd): moved, the guest runs there and this VM stops (its exit
   * reason 'migrated'); kept, it is as it was (running again if it ran);
   * stopped by the operator, it stays paused (it is being stopped); left past
   * the switchover, it stays migrating, keeping its memory. The requests
   * after the migration run from here.
   */
  endMigration(end: MigrationEnd): void {
    const migration = this.migration;
    if (!migration) throw new InvalidStateTransitionError(this.state, 'end the migration of');
    this.migration = undefined;
    try {
      switch (end.type) {
        case 'moved':
          this.exitReasonValue ??= { type: 'migrated', to: end.to };
          this.lifecycle.transition('migrate-done');
          this.sendStopToVcpus();
          break;
        case 'kept':
          this.lifecycle.transition('migrate-failed');
          if (migration.wasRunning) this.lifecycle.transition('resume');
          break;
        case 'stopped':
          this.lifecycle.transition('migrate-failed');
          break;
        case 'left':
          break;
        default: {
          const never: never = end;
          throw new Error(`unknown migration end ${JSON.stringify(never)}`);
        }
      }
    } finally {
      migration.ended();
    }
  }

  /** For an incoming migration's resume: whether a page is here already (pages still to come are the lazy pager's missing ones). */
  pagePresent(): (page: number) => boolean {
    const lazy = this.lazyMemory;
    return lazy ? (page) => lazy.hasPage(page) : () => true;
  }

  /** Throws InvalidStateTransitionError (naming the state) unless the lifecycle allows `event` now. */
  check(event: VmLifecycleEvent): void {
    this.lifecycle.check(event);
  }

  /**
   * Stop: refused (InvalidStateTransitionError) while an operation owns the
   * VM or once it is stopped; otherwise the VM is closed.
   */
  stop(): Promise<void> {
    this.check('stop');
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
    this.sendStopToVcpus();
    this.memoryStopped = this.stopMemory?.() ?? Promise.resolve();
    this.memoryStopped.catch(() => {}); // awaited by teardown; not an unhandled rejection meanwhile
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
    if (!(await settledWithin(this.queue, QUEUE_GRACE_MS)) && !vmLifecycleBusy(this.lifecycle.state)) this.haltGuest();
    await this.queue;
    if (this.lifecycle.allows('restore-failed')) this.lifecycle.transition('restore-failed');
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
