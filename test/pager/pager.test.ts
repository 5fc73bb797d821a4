// The pager against the real kernel: this thread serves, workers fault.
import assert from 'node:assert/strict';
import { after, describe, test } from 'node:test';
import { fillPattern } from '../../src/demo/pattern.js';
import { Mapping } from '../../src/mem/index.js';
import { PAGE_SIZE } from '../../src/native.js';
import { Pager, type PagerOptions } from '../../src/pager/index.js';
import { TRIGGER_HOLD_MS } from '../../src/pager/readahead-triggers.js';
import { BufferSource } from '../../src/sources/buffer-source.js';
import { FunctionSource } from '../../src/sources/function-source.js';
import { SourceGoneError, SourceReadError, type PageSource, type PushedPages, type ReadOptions } from '../../src/sources/page-source.js';
import { Userfaultfd } from '../../src/uffd/index.js';
import { Toucher, sleep } from '../helpers/toucher.js';

const PAGES = 64;
const SIZE = PAGES * PAGE_SIZE;
const image = new Uint8Array(SIZE);
fillPattern(image, 0);

const touchers = [new Toucher(), new Toucher(), new Toucher()];
after(() => Promise.all(touchers.map((t) => t.terminate())));
const [a, b, c] = touchers as [Toucher, Toucher, Toucher];

interface Rig {
  mapping: Mapping;
  uffd: Userfaultfd;
  pager: Pager;
  dispose(): Promise<void>;
}

function rig(source: PageSource, options: Partial<PagerOptions> = {}): Rig {
  const mapping = Mapping.anonymous(SIZE);
  const uffd = Userfaultfd.open({ features: ['EVENT_REMOVE', 'EVENT_UNMAP', 'EVENT_REMAP'] });
  const pager = new Pager({ uffd, source, regions: [{ address: mapping.address, lengthBytes: SIZE, sourceOffset: 0 }], register: true, ...options });
  const errors: Error[] = [];
  pager.on('error', (e) => errors.push(e));
  pager.start();
  return {
    mapping,
    uffd,
    pager,
    async dispose() {
      await pager.stop();
      // Unregister before munmap: munmap would wait for a reader of its UNMAP event.
      for (const region of pager.regions) uffd.unregister(region.address, region.lengthBytes);
      uffd.close();
      mapping.unmap();
    },
  };
}

const wordAt = (t: Toucher, address: number) => t.run<number>({ op: 'read-word', address });

describe('the pager', () => {
  test('serves every page with the source\'s contents', async () => {
    const r = rig(new BufferSource(image), { prefetch: false });
    try {
      const words = await Promise.all([0, 9, 33, 63].map((p) => wordAt(a, r.mapping.address + p * PAGE_SIZE)));
      assert.deepEqual(words, [0, 9, 33, 63]);
      assert.equal(r.pager.snapshotMetrics().pagesCopied, 4);
    } finally {
      await r.dispose();
    }
  });

  test('a slow page does not stall faults on other pages', async () => {
    let release!: () => void;
    const gate = new Promise<void>((resolve) => (release = resolve));
    const source = new FunctionSource(SIZE, async (offset, length, target) => {
      if (offset === 0) await gate;
      target.set(image.subarray(offset, offset + length));
    });
    const r = rig(source, { prefetch: false });
    try {
      const slow = wordAt(a, r.mapping.address);
      await sleep(20);
      const fast: number[] = [];
      for (let p = 1; p <= 10; p++) fast.push(await wordAt(b, r.mapping.address + p * PAGE_SIZE));
      assert.deepEqual(fast, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
      assert.equal(r.pager.pageCounts().inFlight, 1, 'page 0 is still being fetched');
      release();
      assert.equal(await slow, 0);
    } finally {
      await r.dispose();
    }
  });

  test('duplicate faults on a page in flight share one fetch', async () => {
    let release!: () => void;
    const gate = new Promise<void>((resolve) => (release = resolve));
    let reads = 0;
    const source = new FunctionSource(SIZE, async (offset, length, target) => {
      reads++;
      await gate;
      target.set(image.subarray(offset, offset + length));
    });
    const r = rig(source, { prefetch: false });
    try {
      const first = wordAt(a, r.mapping.address + 5 * PAGE_SIZE + 8);
      const second = wordAt(b, r.mapping.address + 5 * PAGE_SIZE + 16);
      for (let i = 0; i < 500 && r.pager.snapshotMetrics().faults < 2; i++) await sleep(2);
      release();
      await Promise.all([first, second]);
      const m = r.pager.snapshotMetrics();
      assert.equal(reads, 1);
      assert.equal(m.faults, 2);
      assert.equal(m.coalescedFaults, 1);
    } finally {
      await r.dispose();
    }
  });

  test('fetches overlap: with three threads faulting, three reads are in flight at once', async () => {
    // Each read waits until all three started (bounded): a loaded machine's threads may fault far apart.
    let started = 0;
    let allStarted!: () => void;
    const gate = new Promise<void>((resolve) => (allStarted = resolve));
    const source = new FunctionSource(SIZE, async (offset, length, target) => {
      if (++started === 3) allStarted();
      await Promise.race([gate, sleep(5000)]);
      target.set(image.subarray(offset, offset + length));
    });
    const r = rig(source, { prefetch: false });
    try {
      await Promise.all(touchers.map((t, i) => wordAt(t, r.mapping.address + (10 + i) * PAGE_SIZE)));
      assert.equal(r.pager.snapshotMetrics().inFlightPeak, 3);
    } finally {
      await r.dispose();
    }
  });

  test('read-ahead fetches a sequential sweep in runs, each copied by one ioctl', async () => {
    const r = rig(new BufferSource(image), { prefetch: { initialPages: 1, maxPages: 16 } });
    try {
      for (let p = 0; p < PAGES; p++) assert.equal(await wordAt(a, r.mapping.address + p * PAGE_SIZE), p);
      const m = r.pager.snapshotMetrics();
      assert.equal(m.pagesCopied, PAGES);
      // Windows of 1, 2, 4, 8 and 16 pages, three runs read ahead (the first less its trigger page, 31), and the trigger.
      assert.ok(m.copyIoctls <= 9, `${m.copyIoctls} ioctls for ${PAGES} pages`);
      assert.ok(m.prefetchedPages >= PAGES - 8);
    } finally {
      await r.dispose();
    }
  });

  test('a sweep at full read-ahead speed finds the next window already in: one window ahead, it faults once every two windows', async () => {
    const r = rig(new BufferSource(image), { prefetch: { initialPages: 1, maxPages: 4, aheadWindows: 1 } });
    try {
      for (let p = 0; p < PAGES; p++) assert.equal(await wordAt(a, r.mapping.address + p * PAGE_SIZE), p);
      const m = r.pager.snapshotMetrics();
      assert.equal(m.pagesCopied, PAGES);
      // Windows of 1, 2 and 4 pages (faults at 0, 1, 3: the third reaches the largest window, and 7-10 go ahead),
      // then a fault every 8 pages (11, 19, ... 59): 4 pages faulted, 4 ahead.
      assert.equal(m.faultsByKind.missing, 10, `${m.faultsByKind.missing} faults on missing pages (18 without the window ahead)`);
    } finally {
      await r.dispose();
    }
  });

  test('a sweep read several windows ahead never waits for a read past the ramp-up: its trigger page extends the read-ahead before it runs out', async () => {
    const r = rig(new BufferSource(image), { prefetch: { initialPages: 1, maxPages: 4, aheadWindows: 3 } });
    try {
      for (let p = 0; p < PAGES; p++) assert.equal(await wordAt(a, r.mapping.address + p * PAGE_SIZE), p);
      const m = r.pager.snapshotMetrics();
      assert.equal(m.pagesCopied, PAGES);
      // Faults at 0, 1 and 3 (the largest window: 3-6 demanded, 7-18 ahead, its trigger page 15 held back). From
      // then on the thread faults only on triggers, answered from the bytes kept (15, 27, 39, 51, 60), each
      // extending the read-ahead to 4 windows past it. Without triggers it ran off the read-ahead's end and waited
      // for a read at 19, 35 and 51: 6 faults on missing pages.
      assert.equal(m.faultsByKind.missing, 3, `${m.faultsByKind.missing} faults on missing pages (6 without triggers)`);
      assert.equal(m.faultsByKind['in-flight'], 5, `${m.faultsByKind['in-flight']} faults on triggers`);
      assert.equal(m.sourceReads, 3 + 15, 'a read per window, each read once: 3 demanded, 15 ahead');
    } finally {
      await r.dispose();
    }
  });

  test('a trigger page nobody faults on is installed once its hold time is over, from the bytes kept', async () => {
    let reads = 0;
    const source = new FunctionSource(SIZE, async (offset, length, target) => {
      reads++;
      target.set(image.subarray(offset, offset + length));
    });
    const r = rig(source, { prefetch: { initialPages: 1, maxPages: 4, aheadWindows: 3 } });
    try {
      // Up to the first read-ahead's trigger (15; see the test above) and not onto it.
      for (let p = 0; p < 15; p++) assert.equal(await wordAt(a, r.mapping.address + p * PAGE_SIZE), p);
      // Every page read so far (0-18) is in but the trigger.
      for (let i = 0; i < 500 && r.pager.snapshotMetrics().pagesCopied < 18; i++) await sleep(2);
      assert.equal(r.pager.snapshotMetrics().pagesCopied, 18);
      await sleep(TRIGGER_HOLD_MS + 50);
      const m = r.pager.snapshotMetrics();
      assert.equal(m.pagesCopied, 19, 'the trigger page went in without a fault');
      const readsBefore = reads;
      assert.equal(await wordAt(a, r.mapping.address + 15 * PAGE_SIZE), 15);
      assert.equal(r.pager.snapshotMetrics().faults, m.faults, 'no fault on it');
      assert.equal(reads, readsBefore, 'and no read of it');
    } finally {
      await r.dispose();
    }
  });

  test('a trigger page discarded while its bytes are kept reads zero: the kept bytes are dropped', async () => {
    const r = rig(new BufferSource(image), { prefetch: { initialPages: 1, maxPages: 4, aheadWindows: 3 } });
    try {
      for (let p = 0; p < 15; p++) assert.equal(await wordAt(a, r.mapping.address + p * PAGE_SIZE), p);
      await b.run({ op: 'madvise-dontneed', address: r.mapping.address + 15 * PAGE_SIZE, length: PAGE_SIZE });
      assert.equal(await wordAt(a, r.mapping.address + 15 * PAGE_SIZE), 0);
      await sleep(TRIGGER_HOLD_MS + 50);
      assert.equal(await wordAt(a, r.mapping.address + 15 * PAGE_SIZE), 0, 'still zero after the hold time');
      assert.equal(await wordAt(a, r.mapping.address + 16 * PAGE_SIZE), 16);
    } finally {
      await r.dispose();
    }
  });

  test('a thread that catches up with a stream from a slow source keeps it ahead: past the ramp-up it never faults on a missing page', async () => {
    // Reads are answered one after another, 2 ms each (a link's bandwidth, not only its latency): the thread
    // always overtakes the read-ahead and faults on pages still in flight.
    const buffer = new BufferSource(image);
    let previous = Promise.resolve();
    const readPages: number[] = [];
    const slow: PageSource = {
      description: 'slow', sizeBytes: SIZE,
      read: (offset, lengthBytes, target) => {
        readPages.push(lengthBytes / PAGE_SIZE);
        return (previous = previous.then(() => sleep(2)).then(() => buffer.read(offset, lengthBytes, target)));
      },
    };
    const r = rig(slow, { prefetch: { initialPages: 1, maxPages: 2, aheadWindows: 2 } });
    try {
      const words = await a.run<number[]>({ op: 'read-words', address: r.mapping.address, count: SIZE / 4 });
      for (let p = 0; p < PAGES; p++) assert.equal(words[p * (PAGE_SIZE / 4)], p);
      const m = r.pager.snapshotMetrics();
      assert.equal(m.pagesCopied, PAGES);
      // Faults at 0 (a window of 1) and 1 (2: the largest, read 2 windows ahead); from then on a fault is on a page
      // in flight (or, on a loaded machine, queued and not read yet), and extends the read-ahead. Without that the
      // stream drains and starts again at one page every 6 pages: 12 faults on missing pages, and a 1-page read each time.
      // (Windows start at page 1, so the one that ends at the image's end is a page.)
      assert.deepEqual([readPages[0], readPages.at(-1), readPages.reduce((a, b) => a + b, 0)], [1, 1, PAGES]);
      assert.ok(readPages.slice(1, -1).every((pages) => pages === 2), `reads of other than a window between the first and the last: ${readPages.join(' ')}`);
      assert.ok(m.faultsByKind.missing <= 4, `${m.faultsByKind.missing} faults on missing pages`);
      assert.ok(m.faultsByKind['in-flight'] > 0);
    } finally {
      await r.dispose();
    }
  });

  test('a page the application discarded is refilled with zeroes, not from the source', async () => {
    const r = rig(new BufferSource(image), { prefetch: false });
    try {
      assert.equal(await wordAt(a, r.mapping.address + 3 * PAGE_SIZE), 3);
      await b.run({ op: 'madvise-dontneed', address: r.mapping.address + 3 * PAGE_SIZE, length: PAGE_SIZE });
      assert.equal(await wordAt(a, r.mapping.address + 3 * PAGE_SIZE), 0);
      assert.equal(r.pager.snapshotMetrics().events.remove, 1);
    } finally {
      await r.dispose();
    }
  });

  test('after mremap moves the memory, faults at the new address get the right pages', async () => {
    const r = rig(new BufferSource(image), { prefetch: false });
    try {
      assert.equal(await wordAt(a, r.mapping.address + 2 * PAGE_SIZE), 2);
      const moved = await b.run<number>({ op: 'mremap', address: r.mapping.address, length: SIZE });
      assert.notEqual(moved, r.mapping.address);
      r.mapping.address = moved;
      assert.equal(await wordAt(a, moved + 2 * PAGE_SIZE), 2, 'a present page moved with its contents');
      assert.equal(await wordAt(a, moved + 40 * PAGE_SIZE), 40, 'a missing page is filled at its new address');
      assert.equal(r.pager.snapshotMetrics().events.remap, 1);
      assert.equal(r.pager.regions[0]!.address, moved);
    } finally {
      await r.dispose();
    }
  });

  test('munmap of part of the range marks those pages unmapped and the rest keeps being served', async () => {
    const r = rig(new BufferSource(image), { prefetch: false });
    try {
      await c.run({ op: 'munmap', address: r.mapping.address + 32 * PAGE_SIZE, length: 32 * PAGE_SIZE });
      assert.equal(r.pager.pageCounts().unmapped, 32);
      assert.equal(await wordAt(a, r.mapping.address + 31 * PAGE_SIZE), 31);
    } finally {
      await r.pager.stop();
      r.uffd.unregister(r.mapping.address, 32 * PAGE_SIZE);
      r.uffd.close();
      // The upper half is already unmapped; unmap what is left.
      const { native } = await import('../../src/native.js');
      native.munmap(r.mapping.address, 32 * PAGE_SIZE);
    }
  });

  test('a source that keeps failing poisons the page: the reader gets an error, not made-up data', async () => {
    const source = new FunctionSource(SIZE, async (offset, length, target) => {
      if (offset === 7 * PAGE_SIZE) throw new Error('disk on fire');
      target.set(image.subarray(offset, offset + length));
    });
    const r = rig(source, { prefetch: false, sourceRetries: 1 });
    try {
      const result = await a.run<number>({ op: 'process-vm-readv', address: r.mapping.address + 7 * PAGE_SIZE });
      assert.ok(result < 0, `the read returned ${result}`);
      assert.equal(r.pager.snapshotMetrics().sourceErrors, 2);
      assert.equal(await wordAt(a, r.mapping.address + 8 * PAGE_SIZE), 8, 'other pages are still served');
    } finally {
      await r.dispose();
    }
  });

  test('a pager that spins between faults serves the same pages, and stops spinning while reads are in flight', async () => {
    const r = rig(new BufferSource(image), { prefetch: false, spinMicros: 200 });
    try {
      for (const p of [4, 5, 6, 50]) assert.equal(await wordAt(a, r.mapping.address + p * PAGE_SIZE), p);
      assert.equal(r.pager.snapshotMetrics().pagesCopied, 4);
    } finally {
      await r.dispose();
    }
    const slow = new FunctionSource(SIZE, async (offset, length, target) => {
      await sleep(5);
      target.set(image.subarray(offset, offset + length));
    });
    const s2 = rig(slow, { prefetch: false, spinMicros: 10_000 });
    try {
      const words = await Promise.all([a, b].map((t, i) => wordAt(t, s2.mapping.address + (20 + i) * PAGE_SIZE)));
      assert.deepEqual(words, [20, 21]);
    } finally {
      await s2.dispose();
    }
  });

  test('a source with a synchronous fast path is installed without a promise round, one read per run', async () => {
    let syncReads = 0;
    const source = new BufferSource(image);
    const counting = Object.assign(Object.create(source) as BufferSource, {
      readSync(offset: number, lengthBytes: number, target: Uint8Array) {
        syncReads++;
        return source.readSync(offset, lengthBytes, target);
      },
    });
    const r = rig(counting, { prefetch: { initialPages: 1, maxPages: 8 } });
    try {
      for (let p = 0; p < 16; p++) assert.equal(await wordAt(a, r.mapping.address + p * PAGE_SIZE), p);
      const m = r.pager.snapshotMetrics();
      assert.equal(m.sourceReads, syncReads);
      assert.equal(m.inFlightPeak, 0, 'nothing went through the asynchronous path');
      assert.ok(syncReads < 16);
    } finally {
      await r.dispose();
    }
  });

  test('a recorded working set, replayed into a new restore, is in place before it is touched', async () => {
    const first = rig(new BufferSource(image), { prefetch: false, recordWorkingSet: true });
    const order = [5, 1, 40, 41, 42, 7];
    let workingSet: Uint32Array;
    try {
      for (const p of order) await wordAt(a, first.mapping.address + p * PAGE_SIZE);
      workingSet = first.pager.workingSet();
      assert.deepEqual([...workingSet], order);
    } finally {
      await first.dispose();
    }
    const second = rig(new BufferSource(image), { prefetch: false });
    try {
      second.pager.prefetchPages(workingSet);
      for (let i = 0; i < 500 && second.pager.pageCounts().present < order.length; i++) await sleep(2);
      for (const p of order) assert.equal(await wordAt(a, second.mapping.address + p * PAGE_SIZE), p);
      const m = second.pager.snapshotMetrics();
      assert.equal(m.faults, 0, 'no demand fault was needed');
      assert.equal(m.prefetchedPages, order.length);
    } finally {
      await second.dispose();
    }
  });
});

// Every way a fault can be left waiting ends in a defined state: served,
// woken to retry (and fail like any access to unmapped memory), or poisoned.
// Each test holds the fault at a known point with a gated source, and reads
// through process_vm_readv, which reports EFAULT where a load would be a
// fatal signal to this test process.
describe('a faulting thread is never left asleep', () => {
  const waiter = new Toucher();
  const mover = new Toucher();
  after(() => Promise.all([waiter.terminate(), mover.terminate()]));

  /** A source whose first read waits for release(), and says when it started. */
  function gatedSource(): { source: FunctionSource; readStarted: Promise<void>; release: () => void } {
    let release!: () => void;
    let started!: () => void;
    const gate = new Promise<void>((resolve) => (release = resolve));
    const readStarted = new Promise<void>((resolve) => (started = resolve));
    const source = new FunctionSource(SIZE, async (offset, length, target) => {
      started();
      await gate;
      target.set(image.subarray(offset, offset + length));
    });
    return { source, readStarted, release };
  }

  function within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
    let timer: NodeJS.Timeout;
    return Promise.race([
      promise.finally(() => clearTimeout(timer)),
      new Promise<T>((_, reject) => (timer = setTimeout(() => reject(new Error(`${what}: still asleep after ${ms} ms`)), ms))),
    ]);
  }

  test('a thread waiting on a page that is munmapped is woken, and its retry fails with EFAULT', { timeout: 20_000 }, async () => {
    const { source, readStarted, release } = gatedSource();
    const r = rig(source, { prefetch: false });
    try {
      const read = waiter.run<number>({ op: 'process-vm-readv', address: r.mapping.address + 5 * PAGE_SIZE });
      await readStarted;
      await mover.run({ op: 'munmap', address: r.mapping.address, length: SIZE });
      assert.equal(await within(read, 5000, 'the waiter'), -14, 'EFAULT: the memory is gone');
      release();
      assert.equal(r.pager.pageCounts().unmapped, PAGES);
    } finally {
      release();
      await r.pager.stop();
      r.uffd.close();
    }
  });

  test('a thread waiting on a page whose memory mremap moves is woken, and its retry at the old address fails with EFAULT', { timeout: 20_000 }, async () => {
    const { source, readStarted, release } = gatedSource();
    const r = rig(source, { prefetch: false });
    let moved = 0;
    try {
      const read = waiter.run<number>({ op: 'process-vm-readv', address: r.mapping.address + 9 * PAGE_SIZE });
      await readStarted;
      moved = await mover.run<number>({ op: 'mremap', address: r.mapping.address, length: SIZE });
      assert.equal(await within(read, 5000, 'the waiter'), -14, 'EFAULT: nothing is mapped at the old address');
      release();
      // The fill still lands, at the page's new address.
      assert.equal(await wordAt(a, moved + 9 * PAGE_SIZE), 9);
    } finally {
      release();
      await r.pager.stop();
      if (moved) r.uffd.unregister(moved, SIZE);
      r.uffd.close();
      if (moved) (await import('../../src/native.js')).native.munmap(moved, SIZE);
    }
  });

  test('a COPY the kernel refuses with ENOMEM (a full tmpfs) poisons the page after its retries: EFAULT, not a hang', { timeout: 20_000 }, async (t) => {
    const { execFileSync } = await import('node:child_process');
    const { mkdtempSync, openSync, ftruncateSync, closeSync, rmSync } = await import('node:fs');
    const { tmpdir } = await import('node:os');
    const { join } = await import('node:path');
    const dir = mkdtempSync(join(tmpdir(), 'uf-full-tmpfs-'));
    try {
      execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=64k', 'tmpfs', dir], { stdio: 'ignore' });
    } catch {
      rmSync(dir, { recursive: true, force: true });
      t.skip('needs to mount a small tmpfs (root)');
      return;
    }
    const fd = openSync(join(dir, 'memory'), 'w+');
    ftruncateSync(fd, SIZE);
    const mapping = Mapping.file(fd, SIZE, { shared: true });
    closeSync(fd);
    const uffd = Userfaultfd.open({ optionalFeatures: ['POISON'] });
    const pager = new Pager({ uffd, source: new BufferSource(image), regions: [{ address: mapping.address, lengthBytes: SIZE, sourceOffset: 0 }], register: true, prefetch: false });
    const errors: Error[] = [];
    pager.on('error', (e) => errors.push(e));
    pager.start();
    try {
      // The tmpfs holds 16 pages: the first 16 fit, the 17th cannot be allocated.
      for (let p = 0; p < 16; p++) assert.equal(await wordAt(a, mapping.address + p * PAGE_SIZE), p);
      const result = await within(waiter.run<number>({ op: 'process-vm-readv', address: mapping.address + 40 * PAGE_SIZE }), 5000, 'the reader of a page that cannot be allocated');
      assert.ok(result < 0, `the read returned ${result}`);
      const failure = errors.find((e) => (e as { code?: string }).code === 'EINSTALL');
      assert.ok(failure, `an EINSTALL error is reported: ${errors.map((e) => e.message).join('; ')}`);
      assert.match(failure.message, /ENOMEM/);
      assert.equal(await wordAt(a, mapping.address + 3 * PAGE_SIZE), 3, 'pages already there are still served');
    } finally {
      await pager.stop();
      uffd.unregister(mapping.address, SIZE);
      uffd.close();
      mapping.unmap();
      execFileSync('umount', [dir]);
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('the pager and what a source says', () => {
  /** A source whose reads are answered by the test, and which can push pages. */
  class ScriptedSource implements PageSource {
    readonly sizeBytes = SIZE;
    readonly description = 'scripted';
    readonly reads: Array<{ offset: number; length: number; priority?: string; signal?: AbortSignal; answer: (error?: Error) => void; target: Uint8Array }> = [];
    private listener: ((pages: PushedPages) => void) | undefined;
    private arrived: (() => void) | undefined;
    read(offset: number, lengthBytes: number, target: Uint8Array, options: ReadOptions = {}): Promise<void> {
      return new Promise((resolve, reject) => {
        const answer = (error?: Error): void => {
          if (error) return reject(error);
          target.set(image.subarray(offset, offset + lengthBytes));
          resolve();
        };
        options.signal?.addEventListener('abort', () => reject(new DOMException('aborted', 'AbortError')));
        this.reads.push({ offset, length: lengthBytes, priority: options.priority, signal: options.signal, answer, target });
        this.arrived?.();
      });
    }
    onPush(listener: (pages: PushedPages) => void): () => void {
      this.listener = listener;
      return () => (this.listener = undefined);
    }
    push(page: number, count = 1): void {
      this.listener?.({ offset: page * PAGE_SIZE, bytes: image.slice(page * PAGE_SIZE, (page + count) * PAGE_SIZE) });
    }
    private taken = 0;
    /** The next read the pager made that the test has not taken yet (waiting for it if need be). */
    async nextRead(): Promise<ScriptedSource['reads'][number]> {
      while (this.reads.length === this.taken) await new Promise<void>((resolve) => (this.arrived = resolve));
      return this.reads[this.taken++]!;
    }
  }

  test('a read carries its priority: a fault\'s read is demand, a replay\'s background', async () => {
    const source = new ScriptedSource();
    const r = rig(source, { prefetch: false });
    try {
      const word = wordAt(a, r.mapping.address + 2 * PAGE_SIZE);
      const demand = await source.nextRead();
      assert.equal(demand.priority, 'demand');
      demand.answer();
      assert.equal(await word, 2);
      r.pager.prefetchPages([10]);
      const background = await source.nextRead();
      assert.equal(background.priority, 'background');
      background.answer();
    } finally {
      await r.dispose();
    }
  });

  test('pushed pages are installed where missing and dropped where present; a read whose pages all arrived by push is aborted', async () => {
    const source = new ScriptedSource();
    const r = rig(source, { prefetch: false });
    const installed: number[] = [];
    r.pager.on('installed', (first, count, how) => how === 'push' && installed.push(...Array.from({ length: count }, (_, i) => first + i)));
    try {
      const word = wordAt(a, r.mapping.address + 20 * PAGE_SIZE);
      const read = await source.nextRead();
      // The page the thread waits on arrives by push before its read is answered.
      source.push(20);
      assert.equal(await word, 20, 'the waiter was woken by the pushed page');
      assert.equal(read.signal?.aborted, true, 'the read nobody needs any more was aborted');
      source.push(20);
      source.push(30, 2);
      assert.deepEqual(installed, [20, 30, 31]);
      const m = r.pager.snapshotMetrics();
      assert.equal(m.pushedPages, 3);
      assert.equal(m.pushedPagesDropped, 1, 'the second push of page 20 was dropped');
      assert.equal(m.readsAborted, 1);
      assert.equal(await wordAt(b, r.mapping.address + 31 * PAGE_SIZE), 31, 'no fault needed for a pushed page');
      assert.equal(m.faults, 1);
    } finally {
      await r.dispose();
    }
  });

  test('complete is emitted once every page not known to be zero is in', async () => {
    const zeroSecondHalf = new BufferSource(image);
    const source = Object.assign(Object.create(zeroSecondHalf) as BufferSource, {
      isZero: (offset: number) => offset >= SIZE / 2,
    });
    const r = rig(source, { prefetch: false });
    try {
      let completions = 0;
      r.pager.on('complete', () => completions++);
      assert.equal(r.pager.pendingPages, PAGES / 2);
      r.pager.prefetchAll();
      for (let i = 0; i < 500 && completions === 0; i++) await sleep(2);
      assert.equal(completions, 1);
      assert.equal(r.pager.isComplete, true);
      assert.equal(r.pager.pageCounts().present, PAGES / 2, 'known-zero pages were not filled');
    } finally {
      await r.dispose();
    }
  });

  test('a fatal failure naming its page poisons that page alone; the rest of the run is served', async () => {
    let reads = 0;
    const source = new FunctionSource(SIZE, async (offset, length, target) => {
      reads++;
      const bad = 12 * PAGE_SIZE;
      if (offset <= bad && bad < offset + length) throw new SourceReadError(offset, length, 'page 12 is corrupt', { failure: 'fatal', failedOffset: bad });
      target.set(image.subarray(offset, offset + length));
    });
    const r = rig(source, { prefetch: { initialPages: 8, maxPages: 8 } });
    const poisoned: number[] = [];
    r.pager.on('poisoned', (first, count) => poisoned.push(...Array.from({ length: count }, (_, i) => first + i)));
    try {
      // A fault on page 10 reads 10..17 in one run; page 12 fails it.
      assert.equal(await wordAt(a, r.mapping.address + 10 * PAGE_SIZE), 10);
      assert.deepEqual(poisoned, [12], 'only the bad page is poisoned, though nobody waited on it');
      assert.ok((await a.run<number>({ op: 'process-vm-readv', address: r.mapping.address + 12 * PAGE_SIZE })) < 0, 'the bad page reads as an error');
      for (const p of [11, 13, 17]) assert.equal(await wordAt(a, r.mapping.address + p * PAGE_SIZE), p);
      const m = r.pager.snapshotMetrics();
      assert.equal(m.sourceErrors, 1, 'the bad page was read once, never again');
      assert.equal(m.pagesPoisoned, 1);
      assert.equal(r.pager.pageCounts().poisoned, 1);
      assert.ok(reads <= 9, `${reads} reads`);
    } finally {
      await r.dispose();
    }
  });

  test('a transient failure is retried after a pause and the waiter gets the page', async () => {
    let failures = 0;
    const source = new FunctionSource(SIZE, async (offset, length, target) => {
      if (failures < 2) {
        failures++;
        throw new SourceReadError(offset, length, 'connection reset', { failure: 'transient' });
      }
      target.set(image.subarray(offset, offset + length));
    });
    const r = rig(source, { prefetch: false, sourceRetries: 2 });
    try {
      assert.equal(await wordAt(a, r.mapping.address + 6 * PAGE_SIZE), 6);
      assert.equal(r.pager.snapshotMetrics().sourceErrors, 2);
      assert.equal(r.pager.pageCounts().poisoned, 0);
    } finally {
      await r.dispose();
    }
  });

  test('with sourceLost freeze, a source gone for good leaves the waiter waiting instead of poisoning it', async () => {
    const source = new FunctionSource(SIZE, async (offset, length) => {
      throw new SourceGoneError(offset, length, 'the page server did not come back');
    });
    const r = rig(source, { prefetch: false, sourceLost: 'freeze' });
    try {
      const read = a.run<number>({ op: 'process-vm-readv', address: r.mapping.address + 3 * PAGE_SIZE });
      let settled = false;
      void read.then(() => (settled = true));
      for (let i = 0; i < 100 && r.pager.snapshotMetrics().sourceErrors === 0; i++) await sleep(2);
      await sleep(50);
      assert.equal(settled, false, 'the waiter is still waiting');
      assert.equal(r.pager.pageCounts().poisoned, 0);
      // Its owner decides: here, unregistering lets it go.
      r.uffd.unregister(r.mapping.address, SIZE);
      assert.equal(await read, PAGE_SIZE);
    } finally {
      await r.pager.stop();
      r.uffd.close();
      r.mapping.unmap();
    }
  });
});
