// A WebAssembly.Memory whose pages fill on first touch from a page source —
// touched by wasm code, by JS through memory.buffer, or by the kernel — and
// whose pages committed later by memory.grow (called from JS or from wasm
// code) are served the same way, with no step in between.
//
// How: V8 makes a wasm32 memory as one PROT_NONE reservation with the
// committed pages mprotected read-write (wasm-reservation.ts draws it), and
// grows it by mprotecting more of it, in place. The range the image covers is
// registered MISSING once, at creation, over committed and uncommitted pages
// alike: userfaultfd_register needs VM_MAYWRITE, not VM_WRITE, and a private
// anonymous PROT_NONE mapping has it; mprotect keeps a VMA's uffd flags and
// context through the splits and merges it makes (split_vma copies them, a
// merge needs the same context), and smaps shows "um" on the VMAs grow made
// read-write. So a page grow commits faults into the pager like any other,
// and a page the pager read ahead before the grow (UFFDIO_COPY works into the
// PROT_NONE part) is simply there. Wasm page N shows image bytes at N x 64 KiB
// (+ sourceOffset); bytes past the image are not registered and read zero,
// as a new wasm page does.
//
// The pager runs in a worker thread (PagerThread, shared with LazyMemory):
// the thread running the wasm code sleeps in the kernel on a fault. The front
// end (the uffd, the calls that reach the pager, the order of close) is
// LazyFront's, shared with LazyMemory too.
//
// Kernel and V8 behaviour this file is built around (measured; docs/lazy-memory.md):
//   - V8 unmaps the memory at isolate teardown, which comes after worker
//     threads have ended. With EVENT_UNMAP, that munmap sleeps in
//     userfaultfd_event_wait_completion until a handler reads the event — at
//     process exit, forever. So this uffd does not ask for EVENT_UNMAP.
//   - Without it the pager would not hear of an unmap, and UFFDIO_COPY checks
//     only that the target VMA is registered with *some* uffd of the process:
//     a stale fill could land in a later lazy memory mapped at the same
//     address. So V8 must never unmap the memory while it is served: the
//     pager thread keeps this object (and so the Memory) reachable until
//     close(), and V8's only munmap before close() is the one at teardown,
//     when the pager is gone.
//   - The memory outlives close() (it is V8's): unregistering would let every
//     page never filled read ZERO. close() first poisons them (the poison
//     marker survives unregister and mprotect), so a later touch gets SIGBUS,
//     never made-up zeros; pages known to be zero get the zero page instead.
//   - A poisoned page raises SIGBUS in wasm code too: V8's trap handler takes
//     SIGSEGV only, so it is not turned into a catchable trap.
import { readFileSync } from 'node:fs';
import { PAGE_SIZE, native } from '../native.js';
import type { PrefetchOptions } from '../pager/index.js';
import { wrapNative, type FeatureName, type Userfaultfd } from '../uffd/index.js';
import { WasmPagesTouchedError, WasmReservationError } from './errors.js';
import { poisonPagesWithoutContents } from './install-runs.js';
import { LazyFront, serveLazyRange } from './lazy-front.js';
import type { PagerStopOptions, PagerThread } from './pager-thread.js';
import { imageSizeBytes, type SourceSpec } from './source-spec.js';
import type { HandlerLostPolicy } from './watchdog.js';
import { WASM32_MAX_PAGES, WASM_PAGE_BYTES, checkWasmReservation, parseProcMaps } from './wasm-reservation.js';

export interface LazyWasmMemoryOptions {
  source: SourceSpec;
  /** Wasm pages (64 KiB) the memory starts with (default: enough for the image, at most `maximum`). */
  initial?: number;
  /**
   * The most wasm pages it may grow to, as in WebAssembly.Memory (default:
   * none, the engine's 65536). Not needed for growth in place: every guarded
   * wasm32 memory grows in place. Required by V8 with `shared`.
   */
  maximum?: number;
  /** A shared memory (its buffer a SharedArrayBuffer), for wasm threads in workers; served by the same pager. */
  shared?: boolean;
  /** Image offset that wasm byte 0 shows (default 0); a multiple of the page size. */
  sourceOffset?: number;
  prefetch?: PrefetchOptions | false;
  recordWorkingSet?: boolean;
  /** Image pages to stream in the background, in order, after start (a recorded working set). */
  replay?: Uint32Array;
  /** What happens to faults if the pager thread dies (default 'poison'). */
  onHandlerLost?: HandlerLostPolicy;
  /** UFFD_USER_MODE_ONLY: kernel accesses (read(2) into the memory) get EFAULT instead of a fault. */
  userModeOnly?: boolean;
}

// No EVENT_UNMAP (see above). POISON is required: close() and the 'poison'
// policy both depend on it (Linux 6.6 and later).
const FEATURES: FeatureName[] = ['EVENT_REMOVE', 'EVENT_REMAP', 'POISON'];
const OPTIONAL: FeatureName[] = ['THREAD_ID'];

/**
 * close() stops the pager and lets go of the uffd. The memory stays V8's:
 * pages that were filled keep their contents (and the writes to them), pages
 * known to be zero read zero, and every page never filled is poisoned — a
 * touch gets SIGBUS, never zero. After fillAll(), nothing is poisoned.
 * prefetchAll() fills pages the memory has not grown into too.
 */
export class LazyWasmMemory extends LazyFront {
  private constructor(
    /** The memory to import into wasm modules (or use through memory.buffer). */
    readonly memory: WebAssembly.Memory,
    /** Host address of wasm byte 0; it stays through every grow. */
    readonly address: number,
    /** Bytes from the base registered with the uffd: the part of the image the memory can show. */
    readonly servedBytes: number,
    /** The owner's own reference: faults wait rather than read zero if the pager dies. */
    uffd: Userfaultfd,
    pager: PagerThread,
  ) {
    super(uffd, pager, 'lazy WebAssembly memory');
    // Open, this object and its Memory stay reachable whatever the caller
    // keeps (see above): V8 must not unmap a memory while it is served.
    pager.retain(this);
  }

  static async create(options: LazyWasmMemoryOptions): Promise<LazyWasmMemory> {
    const sourceOffset = options.sourceOffset ?? 0;
    if (!Number.isSafeInteger(sourceOffset) || sourceOffset < 0 || sourceOffset % PAGE_SIZE !== 0) {
      throw new RangeError(`sourceOffset ${sourceOffset} is not a non-negative multiple of the ${PAGE_SIZE}-byte page`);
    }
    if (options.maximum !== undefined) checkPages('maximum', options.maximum);
    if (options.initial !== undefined) checkPages('initial', options.initial);
    const shownBytes = (await imageSizeBytes(options.source)) - sourceOffset;
    if (shownBytes <= 0) throw new RangeError(`sourceOffset ${sourceOffset} is at or past the end of the image`);
    const maximumPages = options.maximum ?? WASM32_MAX_PAGES;
    const servedBytes = Math.min(shownBytes, maximumPages * WASM_PAGE_BYTES);
    if (servedBytes % PAGE_SIZE !== 0) {
      throw new RangeError(`the image shows ${servedBytes} bytes from sourceOffset, not a multiple of the ${PAGE_SIZE}-byte page: its last page could not be served`);
    }
    const initial = options.initial ?? Math.min(maximumPages, Math.ceil(shownBytes / WASM_PAGE_BYTES));
    const descriptor: WebAssembly.MemoryDescriptor = { initial, shared: options.shared ?? false };
    if (options.maximum !== undefined) descriptor.maximum = options.maximum;
    // Nobody else holds this memory yet: nothing can touch it before it is registered.
    const memory = new WebAssembly.Memory(descriptor);
    const address = addressOfMemory(memory);
    const committedBytes = memory.buffer.byteLength;
    const layout = checkWasmReservation(parseProcMaps(readFileSync('/proc/self/maps', 'utf8')), address, committedBytes);
    if (!layout.ok) throw new WasmReservationError(layout.problem, address, layout.address, layout.entry);
    const touched = residentPageOffsets(address, Math.min(committedBytes, servedBytes));
    if (touched.length > 0) throw new WasmPagesTouchedError(touched);

    // V8 already makes its reservation VM_DONTCOPY (smaps shows "dc"); said
      // again here so it holds whatever V8 does: a child forked without exec
    // would otherwise read the unfilled pages of its copy as zero.
    wrapNative(() => native.madvise(address, servedBytes, native.constants.MADV_DONTFORK));
    // On a failure the uffd is closed (the kernel unregisters the range) and the memory dropped untouched.
    const { uffd, pager } = await serveLazyRange({ ...options, address, lengthBytes: servedBytes, sourceOffset, features: FEATURES, optionalFeatures: OPTIONAL });
    return new LazyWasmMemory(memory, address, servedBytes, uffd, pager);
  }

  /** Wasm pages the memory has now. */
  get wasmPageCount(): number {
    return this.memory.buffer.byteLength / WASM_PAGE_BYTES;
  }

  protected override stopOptions(): PagerStopOptions {
    return { zeroFillKnownZero: true };
  }

  protected override releaseRange(): void {
    // Still registered, and nobody installs any more. Poison what has no
    // contents, then unregister (threads asleep on those pages wake into the
    // poison).
    poisonPagesWithoutContents(this.uffd, this.address, this.servedBytes);
    this.uffd.unregister(this.address, this.servedBytes);
  }
}

function checkPages(name: string, pages: number): void {
  if (!Number.isSafeInteger(pages) || pages < 0 || pages > WASM32_MAX_PAGES) {
    throw new RangeError(`${name} ${pages} is not a wasm32 page count (0 to ${WASM32_MAX_PAGES})`);
  }
}

/** The host address of wasm byte 0 (through a view: the addon takes a SharedArrayBuffer's that way). */
function addressOfMemory(memory: WebAssembly.Memory): number {
  return native.addressOf(new Uint8Array(memory.buffer));
}

/** Byte offsets of the pages of [address, address+lengthBytes) that are resident. */
function residentPageOffsets(address: number, lengthBytes: number): number[] {
  if (lengthBytes === 0) return [];
  const residency = new Uint8Array(lengthBytes / PAGE_SIZE);
  wrapNative(() => native.mincore(address, lengthBytes, residency));
  const offsets: number[] = [];
  residency.forEach((r, i) => r & 1 && offsets.push(i * PAGE_SIZE));
  return offsets;
}
