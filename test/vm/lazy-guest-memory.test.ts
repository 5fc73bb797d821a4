// Lazy guest memory let go: a VM being stopped does not wait for pages that
// will never come. Runs without KVM: a worker thread stands in for the vCPU
// thread (its access blocks in handle_userfault as a vCPU's does) and the
// pager serves from this thread, as in the VMM.
import assert from 'node:assert/strict';
import { after, describe, test } from 'node:test';
import { PAGE_SIZE } from '../../src/native.js';
import { abortedReadError, type PageSource, type ReadOptions } from '../../src/sources/page-source.js';
import { GuestMemory } from '../../src/vm/memory/guest-memory.js';
import { GuestMemoryUnavailableError, LazyGuestMemory } from '../../src/vm/memory/lazy-guest-memory.js';
import { Toucher, sleep } from '../helpers/toucher.js';
import { Worker } from 'node:worker_threads';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { rmSync } from 'node:fs';
import { kvmNative } from '../../src/native-kvm.js';
import { until, within } from '../helpers/waiting.js';

const PAGES = 64;
const SIZE = PAGES * PAGE_SIZE;

/** A page server that never answers a read (a peer stopped mid-restore); an aborted read ends as the contract says. */
class NeverAnsweringSource implements PageSource {
  readonly sizeBytes = SIZE;
  readonly description = 'a source that never answers';
  reads = 0;
  aborted = 0;
  closed = false;

  read(_offset: number, _length: number, _target: Uint8Array, options: ReadOptions = {}): Promise<void> {
    this.reads++;
    return new Promise((_resolve, reject) => {
      options.signal?.addEventListener('abort', () => {
        this.aborted++;
        reject(abortedReadError());
      }, { once: true });
    });
  }

  close(): void {
    this.closed = true;
  }
}

describe('lazy guest memory, stopped while a thread waits on a page that never comes', { timeout: 30_000 }, () => {
  const toucher = new Toucher();
  after(() => toucher.terminate());

  test('a thread kicked while its kernel-mode access waits on a page re-faults without end, and stop ends that at once', async (t) => {
    // What a vCPU does when the VMM's stop kicks it while KVM's emulator reads
    // a missing page of guest RAM: x86's fault path gives up on a kernel-mode
    // fault only for a fatal signal, so with the kick pending handle_userfault
    // returns at once and the fault is retried, each retry a new uffd message.
    const memory = GuestMemory.create(SIZE);
    const source = new NeverAnsweringSource();
    const lazy = LazyGuestMemory.start(memory, source, { prefetch: false }, () => {});
    const kickSignal = kvmNative.kvmConstants.SIGRTMIN + 2;
    const file = join(tmpdir(), `uf-kernel-access-${process.pid}.bin`);
    const worker = new Worker(new URL('./kernel-access-worker.js', import.meta.url), { workerData: { kickSignal, file } });
    t.after(async () => {
      await worker.terminate();
      rmSync(file, { force: true });
    });
    try {
      const tid = await within(10_000, 'the worker starting', new Promise<number>((resolve) => worker.on('message', (m: { type: string; tid: number }) => m.type === 'ready' && resolve(m.tid))));
      const written = new Promise<{ type: string; bytes?: number }>((resolve) => worker.on('message', (m: { type: string }) => m.type !== 'ready' && resolve(m)));
      worker.postMessage({ address: memory.regions[0]!.hostAddress + 7 * PAGE_SIZE, lengthBytes: PAGE_SIZE });
      await until('the fault to reach the pager', () => lazy.report().metrics.faults > 0);
      await sleep(50);
      assert.equal(lazy.report().metrics.faults, 1, 'before the kick the thread sleeps on its page');

      kvmNative.kvmKick(tid, kickSignal);
      await sleep(200);
      const spinning = lazy.report().metrics.faults;
      t.diagnostic(`faults read in the 200 ms after the kick: ${spinning - 1}`);

      await within(2000, 'stopping lazy guest memory', lazy.stop());
      assert.deepEqual(await within(2000, 'the kicked thread', written), { type: 'written', bytes: PAGE_SIZE }, 'the access completed, on plain memory');
      const stopped = lazy.report().metrics.faults;
      await sleep(100);
      assert.equal(lazy.report().metrics.faults, stopped, 'no fault is read after the stop');
      assert.equal(lazy.report().metrics.pagesCopied, 0, 'no page was served');
    } finally {
      await within(2000, 'stopping lazy guest memory', lazy.stop()).catch(() => {});
      memory.unmap();
    }
  });

  test('a complete() waiting for pages that never come fails when memory is stopped, instead of waiting for ever', async () => {
    const memory = GuestMemory.create(SIZE);
    const source = new NeverAnsweringSource();
    const lazy = LazyGuestMemory.start(memory, source, { prefetch: false }, () => {});
    try {
      const completing = lazy.complete();
      completing.catch(() => {});
      await until('the background reads to start', () => source.reads > 0);
      await within(2000, 'stopping lazy guest memory', lazy.stop());
      await assert.rejects(within(2000, 'complete()', completing), GuestMemoryUnavailableError);
      assert.equal(source.aborted, source.reads, 'every background read was aborted');
    } finally {
      memory.unmap();
    }
  });

  test('stop lets the waiting thread go at once (it reads zero), aborts the read, closes the source, and counts no more faults', async () => {
    const memory = GuestMemory.create(SIZE);
    const source = new NeverAnsweringSource();
    const failures: Error[] = [];
    const lazy = LazyGuestMemory.start(memory, source, { prefetch: false }, (error) => failures.push(error));
    try {
      const address = memory.regions[0]!.hostAddress + 5 * PAGE_SIZE;
      const touched = toucher.run<number>({ op: 'read-word', address });
      await until('the fault to reach the pager', () => lazy.report().metrics.faults > 0 && source.reads > 0);
      // The thread is asleep on the page; the read will never answer.
      await sleep(50);
      assert.equal(lazy.report().metrics.faults, 1, 'one fault, read once: no thread re-faults while it waits');

      await within(2000, 'stopping lazy guest memory', lazy.stop());
      assert.equal(await within(2000, 'the waiting thread', touched), 0, 'the waiting thread was let go on plain memory (zero), never on made-up data');
      assert.equal(source.aborted, source.reads, 'every read still in flight was aborted');
      assert.equal(source.closed, true);
      const report = lazy.report();
      assert.equal(report.metrics.faults, 1, 'nothing counted a fault after the stop');
      assert.equal(report.metrics.pagesCopied, 0);
      assert.deepEqual(failures, [], 'a stop is not a failed page');
    } finally {
      await within(2000, 'stopping lazy guest memory', lazy.stop()).catch(() => {});
      memory.unmap();
    }
  });
});

/** Page k of the image holds the word k + 1 (never zero), answered only when the test releases the reads. */
class HeldSource implements PageSource {
  readonly sizeBytes = SIZE;
  readonly description = 'a source held by the test';
  private readonly held: Array<() => void> = [];
  private released = false;
  /** Reads asked for, page by page. */
  readonly asked: number[] = [];

  get waiting(): number {
    return this.held.length;
  }

  read(offset: number, lengthBytes: number, target: Uint8Array): Promise<void> {
    for (let page = 0; page < lengthBytes / PAGE_SIZE; page++) this.asked.push(offset / PAGE_SIZE + page);
    return new Promise((resolve) => {
      const answer = (): void => {
        const words = new Uint32Array(target.buffer, target.byteOffset, lengthBytes / 4);
        for (let page = 0; page < lengthBytes / PAGE_SIZE; page++) words.fill(offset / PAGE_SIZE + page + 1, (page * PAGE_SIZE) / 4, ((page + 1) * PAGE_SIZE) / 4);
        resolve();
      };
      if (this.released) answer();
      else this.held.push(answer);
    });
  }

  /** Answer every read held, and every read from now on at once. */
  release(): void {
    this.released = true;
    for (const answer of this.held.splice(0)) answer();
  }
}

describe('lazy guest memory released after a failed page, with reads still in flight', { timeout: 30_000 }, () => {
  test('fills that land after the release are dropped and counted, never a process warning (RangeNotRegisteredError: UFFDIO_COPY failed)', async () => {
    // The VMM releases guest memory when a page could not be supplied (a
    // corrupt chunk under --prefetch-all): the vCPUs must go while the other
    // background reads are still out. Each of those that lands afterwards
    // finds its range unregistered (UFFDIO_COPY: ENOENT); the pages no longer
    // matter, so that is not the operator's business.
    const warnings: Error[] = [];
    const onWarning = (warning: Error): void => void warnings.push(warning);
    process.on('warning', onWarning);
    const memory = GuestMemory.create(SIZE);
    const source = new HeldSource();
    const lazy = LazyGuestMemory.start(memory, source, { prefetch: false }, () => {});
    try {
      lazy.prefetchAll();
      await until('the background reads to start', () => source.asked.length > 0);
      lazy.release();
      source.release();
      await until('the late fills to be dropped', () => lazy.report().droppedAfterRelease > 0);
      await sleep(50); // a warning is emitted on the next tick
      assert.deepEqual(warnings.map((w) => `${w.name}: ${w.message}`), [], 'no process warning');
      assert.equal(lazy.report().metrics.pagesCopied, 0, 'nothing was installed after the release');
    } finally {
      process.off('warning', onWarning);
      await within(2000, 'stopping lazy guest memory', lazy.stop()).catch(() => {});
      memory.unmap();
    }
  });
});

describe('lazy guest memory, a page given back before it arrived (a balloon inflating during a restore or post-copy)', { timeout: 30_000 }, () => {
  const toucher = new Toucher();
  after(() => toucher.terminate());

  test('it reads zero for ever after: a fill in flight when it was given back is dropped, and one not started yet is never asked for', async () => {
    const memory = GuestMemory.create(SIZE);
    const source = new HeldSource();
    const lazy = LazyGuestMemory.start(memory, source, { prefetch: false }, () => {});
    const address = memory.regions[0]!.hostAddress;
    const giveBack = (page: number) => within(5000, `giving page ${page} back`, toucher.run({ op: 'madvise-dontneed', address: address + page * PAGE_SIZE, length: PAGE_SIZE }));
    const word = (page: number) => toucher.run<number>({ op: 'read-word', address: address + page * PAGE_SIZE });
    try {
      // The stream of every page (a post-copy push, a prefetch-all), a few reads at a time, held.
      lazy.prefetchAll();
      await until('the first reads', () => source.asked.includes(1));
      // From another thread (a vCPU's): each madvise waits until this thread's pager has read its REMOVE event.
      await giveBack(1); // its read is in flight
      await giveBack(40); // its read is not started yet
      source.release();
      await within(5000, 'the restore completing', lazy.complete());
      assert.equal(await word(1), 0, 'page 1 reads zero, not the source\'s copy that arrived after it was given back');
      assert.equal(await word(40), 0, 'page 40 reads zero');
      assert.ok(!source.asked.includes(40), 'page 40 was never asked for');
      assert.equal(await word(2), 3, 'the pages around hold the source\'s');
      assert.equal(await word(41), 42);
    } finally {
      await within(2000, 'stopping lazy guest memory', lazy.stop()).catch(() => {});
      memory.unmap();
    }
  });
});
