// A machine for migration tests on a host without KVM (vm/migratable.ts): its
// guest RAM is a real GuestMemory (an anonymous mapping, registered with the
// real userfaultfd and served by the real pager on a post-copy destination),
// its one vCPU a worker thread that writes it like the micro guest's writer
// (soft-vcpu-worker.ts), its dirty log the bits that worker sets after each
// write (KVM's log is not there to read), its state JSON. Everything between
// two of them — sockets, frames, the commit, recovery, the pager, the
// digests — is the real migration, so the commit can be cut at every frame
// here and in CI, where /dev/kvm may be absent.
import { EventEmitter } from 'node:events';
import { Worker } from 'node:worker_threads';
import { PAGE_SIZE } from '../../src/native.js';
import { UserfaultError } from '../../src/errors.js';
import type { LatencySummary } from '../../src/stats/latency-histogram.js';
import { GuestMemory } from '../../src/vm/memory/guest-memory.js';
import { LazyGuestMemory } from '../../src/vm/memory/lazy-guest-memory.js';
import type { IncomingLazyMemory, IncomingMachine, MigratableMachineKind, MigrationSourceMachine } from '../../src/vm/migratable.js';
import { CONTROL_WORDS, Control, GIVEN_BACK, RunState, checkSoftPage, type SoftVcpuData } from './soft-machine-layout.js';

export interface SoftMachineConfig {
  kind: 'soft-writer';
  memoryBytes: number;
  pattern: 'random' | 'sequential';
  writePages: number;
  pagesPerTick: number;
  tickMs: number;
  /** Every this many page operations one gives its page back (a balloon inflating; the next write takes it back); absent or 0: never. */
  giveBackEvery?: number;
}

export interface SoftMachineState {
  heartbeat: number;
  rng: number;
  cursor: number;
  /** Each page's last version, base64 of a Uint32Array. */
  versions: string;
}

export class SoftMachineError extends UserfaultError {
  override readonly code = 'ESOFTMACHINE';
}

const WORKER_URL = new URL('./soft-vcpu-worker.js', import.meta.url);

export class SoftMachine extends EventEmitter<{ heartbeat: [beat: number] }> implements MigrationSourceMachine, IncomingMachine {
  readonly memory: GuestMemory;
  private readonly control = new Int32Array(new SharedArrayBuffer(CONTROL_WORDS * 4));
  private readonly versions: Uint32Array;
  private readonly dirty: Uint8Array;
  private readonly worker: Worker;
  private lazy: LazyGuestMemory | undefined;
  private closed = false;
  /** Every heartbeat this machine's vCPU gave, in order. */
  readonly heartbeats: number[] = [];
  memoryFailure: Error | undefined;

  private constructor(readonly config: SoftMachineConfig, options: { seed?: number } = {}) {
    super();
    this.memory = GuestMemory.create(config.memoryBytes);
    const pages = config.memoryBytes / PAGE_SIZE;
    this.versions = new Uint32Array(new SharedArrayBuffer(pages * 4));
    this.dirty = new Uint8Array(new SharedArrayBuffer(Math.ceil(pages / 8)));
    this.control[Control.RNG] = options.seed ?? 1;
    const data: SoftVcpuData = {
      address: this.memory.regions[0]!.hostAddress,
      memoryBytes: config.memoryBytes,
      pageSizeBytes: PAGE_SIZE,
      control: this.control.buffer as SharedArrayBuffer,
      versions: this.versions.buffer as SharedArrayBuffer,
      dirty: this.dirty.buffer as SharedArrayBuffer,
      pattern: config.pattern,
      writePages: config.writePages,
      giveBackEvery: config.giveBackEvery ?? 0,
      pagesPerTick: config.pagesPerTick,
      tickMs: config.tickMs,
    };
    this.worker = new Worker(WORKER_URL, { workerData: data });
    this.worker.on('message', (beat: number) => {
      this.heartbeats.push(beat);
      this.emit('heartbeat', beat);
    });
  }

  /** A machine built for an incoming migration: paused until its state is loaded and it is resumed. */
  static incoming(config: SoftMachineConfig): SoftMachine {
    return new SoftMachine(config);
  }

  /** A machine whose writer runs from the start. */
  static start(config: Omit<SoftMachineConfig, 'kind'>, seed = 1): SoftMachine {
    const machine = new SoftMachine({ kind: 'soft-writer', ...config }, { seed });
    void machine.resume();
    return machine;
  }

  get running(): boolean {
    return !this.closed && Atomics.load(this.control, Control.RUN) === RunState.RUNNING;
  }

  get heartbeat(): number {
    return Atomics.load(this.control, Control.HEARTBEAT);
  }

  // ---- the source's side -------------------------------------------------------

  describe(): SoftMachineConfig {
    return this.config;
  }

  startDirtyLog(): void {
    this.dirty.fill(0);
    Atomics.store(this.control, Control.TRACK, 1);
  }

  collectDirtyPages(bitmap: Uint8Array): void {
    for (let i = 0; i < this.dirty.length; i++) {
      const bits = Atomics.exchange(this.dirty, i, 0);
      if (bits) bitmap[i]! |= bits;
    }
  }

  stopDirtyLog(): void {
    Atomics.store(this.control, Control.TRACK, 0);
  }

  async pauseVcpus(): Promise<void> {
    Atomics.store(this.control, Control.RUN, RunState.PAUSED);
    Atomics.notify(this.control, Control.RUN);
    while (Atomics.load(this.control, Control.PAUSED) !== 1) {
      // Atomics.waitAsync is in Node 20 (V8), not in the ES2022 lib this project compiles against.
      const wait = (Atomics as unknown as { waitAsync(a: Int32Array, i: number, v: number, t: number): { async: boolean; value: Promise<unknown> | string } }).waitAsync(this.control, Control.PAUSED, 0, 1000);
      if (wait.async) await wait.value;
    }
  }

  async resumeVcpus(): Promise<void> {
    await this.resume();
  }

  async saveState(): Promise<SoftMachineState> {
    return {
      heartbeat: Atomics.load(this.control, Control.HEARTBEAT),
      rng: Atomics.load(this.control, Control.RNG),
      cursor: Atomics.load(this.control, Control.CURSOR),
      versions: Buffer.from(this.versions.buffer, this.versions.byteOffset, this.versions.byteLength).toString('base64'),
    };
  }

  // ---- the destination's side --------------------------------------------------

  async completeIncoming(state: SoftMachineState, from: string, lazy?: IncomingLazyMemory): Promise<void> {
    if (lazy) {
      this.lazy = LazyGuestMemory.start(this.memory, lazy.source, { prefetch: false, presentPages: lazy.presentPages }, (error) => {
        this.memoryFailure ??= error;
      });
    }
    this.control[Control.HEARTBEAT] = state.heartbeat;
    this.control[Control.RNG] = state.rng;
    this.control[Control.CURSOR] = state.cursor;
    this.versions.set(new Uint32Array(new Uint8Array(Buffer.from(state.versions, 'base64')).buffer));
    void from;
  }

  async resume(): Promise<void> {
    Atomics.store(this.control, Control.RUN, RunState.RUNNING);
    Atomics.notify(this.control, Control.RUN);
  }

  completeMemory(): Promise<void> {
    return this.lazy ? this.lazy.complete() : Promise.resolve();
  }

  pagePresent(): (page: number) => boolean {
    const lazy = this.lazy;
    return lazy ? (page) => lazy.hasPage(page) : () => true;
  }

  faultLatency(): LatencySummary | undefined {
    return this.lazy?.report().metrics.latencyMicros;
  }

  /**
   * The guest's own check, run once its memory is complete (the vCPU paused):
   * the pages that differ from what the writer last wrote (stale, wrong, or
   * written where it never wrote).
   */
  /** The pages its writer gave back and has not taken again. */
  givenBackPages(): number[] {
    const pages: number[] = [];
    for (let page = 0; page < this.versions.length; page++) if (Atomics.load(this.versions, page) >= GIVEN_BACK) pages.push(page);
    return pages;
  }

  async verify(): Promise<number[]> {
    await this.pauseVcpus();
    await this.completeMemory();
    const image = this.memory.image();
    const words = new Uint32Array(image.buffer, image.byteOffset, image.byteLength / 4);
    const pageWords = PAGE_SIZE / 4;
    const bad: number[] = [];
    const scratch = new Uint32Array(pageWords);
    for (let page = 0; page < this.versions.length; page++) {
      if (!checkSoftPage(words, page * pageWords, pageWords, page, this.versions[page]!, scratch)) bad.push(page);
    }
    return bad;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    Atomics.store(this.control, Control.RUN, RunState.EXIT);
    Atomics.notify(this.control, Control.RUN);
    // A vCPU blocked on a missing page is released when the pager stops (the range unregistered).
    await this.lazy?.stop().catch(() => {});
    await this.worker.terminate();
    this.memory.unmap();
  }
}

/** The soft machine as a migration destination builds it. */
export function softMachineKind(): MigratableMachineKind<SoftMachineConfig, SoftMachineState, SoftMachine> & { built: SoftMachine[] } {
  const built: SoftMachine[] = [];
  return {
    built,
    parseMachine(json) {
      const c = json as Partial<SoftMachineConfig> | null;
      if (!c || c.kind !== 'soft-writer' || !Number.isSafeInteger(c.memoryBytes) || c.memoryBytes! <= 0 || c.memoryBytes! % PAGE_SIZE !== 0 || c.memoryBytes! > 256 << 20) {
        throw new SoftMachineError(`not a soft machine: ${JSON.stringify(json).slice(0, 200)}`);
      }
      return c as SoftMachineConfig;
    },
    parseState(json, machine) {
      const s = json as Partial<SoftMachineState> | null;
      if (!s || typeof s.versions !== 'string' || Buffer.from(s.versions, 'base64').length !== (machine.memoryBytes / PAGE_SIZE) * 4) throw new SoftMachineError('a soft machine state for another machine');
      return s as SoftMachineState;
    },
    async createIncoming(machine) {
      const incoming = SoftMachine.incoming(machine);
      built.push(incoming);
      return incoming;
    },
  };
}
