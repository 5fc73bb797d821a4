// Access patterns: the order in which the toucher visits pages, as image page
// indices. Pure and seeded, so every variant of a run sees the same order.

export type PatternName = 'sequential' | 'random' | 'working-set';

/** mulberry32: a small seeded PRNG, uniform in [0, 1). */
export function prng(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function shuffle(values: Uint32Array, random: () => number): Uint32Array {
  for (let i = values.length - 1; i > 0; i--) {
    const j = Math.floor(random() * (i + 1));
    const t = values[i]!;
    values[i] = values[j]!;
    values[j] = t;
  }
  return values;
}

/** Every page once, front to back. */
export function sequentialOrder(pageCount: number): Uint32Array {
  const order = new Uint32Array(pageCount);
  for (let i = 0; i < pageCount; i++) order[i] = i;
  return order;
}

/** Every page once, in a random order. */
export function randomOrder(pageCount: number, seed: number): Uint32Array {
  return shuffle(sequentialOrder(pageCount), prng(seed));
}

/**
 * A working set like a restored function's (REAP): about `fraction` of the
 * pages, as runs of 1..maxRunPages consecutive pages at random places, the
 * runs visited in a random order and each run front to back. Fixed by `seed`.
 */
export function workingSetOrder(pageCount: number, seed: number, fraction = 1 / 8, maxRunPages = 8): Uint32Array {
  const random = prng(seed);
  const taken = new Uint8Array(pageCount);
  const runs: [number, number][] = [];
  const target = Math.max(1, Math.floor(pageCount * fraction));
  let pages = 0;
  for (let attempts = 0; pages < target && attempts < pageCount * 4; attempts++) {
    const length = Math.min(target - pages, 1 + Math.floor(random() * maxRunPages));
    const start = Math.floor(random() * (pageCount - length + 1));
    let free = true;
    for (let i = start; i < start + length && free; i++) free = taken[i] === 0;
    if (!free) continue;
    taken.fill(1, start, start + length);
    runs.push([start, length]);
    pages += length;
  }
  const runOrder = shuffle(sequentialOrder(runs.length), random);
  const order = new Uint32Array(pages);
  let at = 0;
  for (const r of runOrder) {
    const [start, length] = runs[r]!;
    for (let i = 0; i < length; i++) order[at++] = start + i;
  }
  return order;
}

/**
 * For `threads` faulting threads: thread t touches `perThread` random pages of
 * its own 1/threads of the memory. The slices are concatenated in thread order
 * (the toucher gives thread t the t-th contiguous slice).
 */
export function threadSlicesOrder(pageCount: number, threads: number, perThread: number, seed: number): Uint32Array {
  const order = new Uint32Array(threads * perThread);
  for (let t = 0; t < threads; t++) {
    const first = Math.floor((pageCount * t) / threads);
    const span = Math.floor((pageCount * (t + 1)) / threads) - first;
    if (perThread > span) throw new RangeError(`${perThread} pages per thread do not fit in ${span} pages`);
    const pages = randomOrder(span, seed + t).subarray(0, perThread);
    for (let i = 0; i < perThread; i++) order[t * perThread + i] = first + pages[i]!;
  }
  return order;
}

export function patternOrder(name: PatternName, pageCount: number, seed: number): Uint32Array {
  switch (name) {
    case 'sequential':
      return sequentialOrder(pageCount);
    case 'random':
      return randomOrder(pageCount, seed);
    case 'working-set':
      return workingSetOrder(pageCount, seed);
    default: {
      const never: never = name;
      throw new RangeError(`unknown pattern ${String(never)}`);
    }
  }
}

/** Distinct pages in first-touch order (what a pager recording faults without read-ahead sees). */
export function firstTouchOrder(order: Uint32Array): Uint32Array {
  const seen = new Set<number>();
  const out: number[] = [];
  for (const page of order) {
    if (seen.has(page)) continue;
    seen.add(page);
    out.push(page);
  }
  return Uint32Array.from(out);
}
