// What the soft machine's main side and its vCPU worker share: the control
// words, the worker's data, and the page pattern both write and check.

export const Control = {
  /** RunState: the main side's request. */
  RUN: 0,
  /** 1 while the worker is parked (its writes are done and their dirty bits set). */
  PAUSED: 1,
  HEARTBEAT: 2,
  RNG: 3,
  CURSOR: 4,
  /** 1: set a dirty bit per page written (the dirty log is on). */
  TRACK: 5,
} as const;
export const CONTROL_WORDS = 8;

export const RunState = { PAUSED: 0, RUNNING: 1, EXIT: 2 } as const;

export interface SoftVcpuData {
  address: number;
  memoryBytes: number;
  pageSizeBytes: number;
  control: SharedArrayBuffer;
  versions: SharedArrayBuffer;
  dirty: SharedArrayBuffer;
  pattern: 'random' | 'sequential';
  /** Pages from 0 the writer writes (its working set). */
  writePages: number;
  /** Every this many page operations one gives its page back instead (MADV_DONTNEED, a balloon inflating); 0: never. */
  giveBackEvery: number;
  pagesPerTick: number;
  tickMs: number;
}

/**
 * A version with this bit: the page was given back (discarded, as a balloon
 * inflating does) after the version in the other bits, and reads zero until
 * the writer takes it back with the next version. Versions go on counting
 * across a discard, so a stale copy of an old version never passes for the
 * page's new contents.
 */
export const GIVEN_BACK = 0x8000_0000;

/** Page `page` at `version`: its index, its version, then words derived from both (version 0: never written, all zero; given back: all zero). */
export function writeSoftPage(words: Uint32Array, at: number, pageWords: number, page: number, version: number): void {
  if (version === 0 || version >= GIVEN_BACK) {
    words.fill(0, at, at + pageWords);
    return;
  }
  words[at] = page;
  words[at + 1] = version;
  let x = (Math.imul(page, 0x9e3779b1) ^ Math.imul(version, 0x85ebca6b)) >>> 0 || 1;
  for (let i = 2; i < pageWords; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    words[at + i] = x >>> 0;
  }
}

/** Whether page `page` holds exactly what the writer wrote at `version` (zero when never written): compared with the page writeSoftPage makes. */
export function checkSoftPage(words: Uint32Array, at: number, pageWords: number, page: number, version: number, scratch = new Uint32Array(pageWords)): boolean {
  writeSoftPage(scratch, 0, pageWords, page, version);
  for (let i = 0; i < pageWords; i++) if (words[at + i] !== scratch[i]) return false;
  return true;
}
