// Every ioctl of the userfaultfd library against the real kernel. Faults are
// raised by a worker thread; this thread plays the handler.
import assert from 'node:assert/strict';
import { after, describe, test } from 'node:test';
import { readFileSync, writeFileSync } from 'node:fs';
import { HUGE_PAGE_SIZE, Mapping } from '../../src/mem/index.js';
import { PAGE_SIZE, native } from '../../src/native.js';
import {
  FeatureUnavailableError,
  InvalidArgumentError,
  RangeNotRegisteredError,
  Userfaultfd,
  type FeatureName,
  type UffdEvent,
} from '../../src/uffd/index.js';
import { Toucher, sleep } from '../helpers/toucher.js';

const offer = Userfaultfd.probe();
const needs = (...features: FeatureName[]): string | false => {
  const missing = features.filter((f) => !offer.features.has(f));
  return missing.length ? `the kernel lacks ${missing.join(', ')}` : false;
};

/** Wait (bounded) until the uffd yields a message, and return all it has. */
async function nextEvents(uffd: Userfaultfd, timeoutMs = 5000): Promise<UffdEvent[]> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const events = uffd.readEvents();
    if (events.length > 0) return events;
    if (Date.now() > deadline) throw new Error('no uffd message within the bound');
    await sleep(2);
  }
}

const toucher = new Toucher();
after(() => toucher.terminate());

describe('opening a userfaultfd', () => {
  test('the probe reports the offer and how a uffd was created', () => {
    assert.ok(offer.via === 'device' || offer.via === 'syscall');
    assert.ok(offer.features.size > 0);
    assert.ok(offer.ioctls.has('REGISTER') && offer.ioctls.has('API'));
  });

  test('asking for a feature the kernel does not offer fails naming it', () => {
    assert.throws(
      () => Userfaultfd.open({ features: ['EVENT_REMOVE', 'NO_SUCH_FEATURE' as FeatureName] }),
      (error: unknown) => error instanceof FeatureUnavailableError && error.missing.join() === 'NO_SUCH_FEATURE',
    );
  });

  test('optional features are granted when offered and the fd is usable', () => {
    const uffd = Userfaultfd.open({ optionalFeatures: ['THREAD_ID', 'EVENT_REMOVE'] });
    assert.equal(uffd.has('THREAD_ID'), offer.features.has('THREAD_ID'));
    uffd.close();
    assert.equal(uffd.isClosed, true);
  });

  test('both the /dev/userfaultfd path and the syscall create a uffd (root may use either)', () => {
    for (const via of ['device', 'syscall'] as const) {
      const uffd = Userfaultfd.open({ via });
      assert.ok(uffd.fd >= 0);
      uffd.close();
    }
  });
});

describe('resolving ioctls on anonymous memory', () => {
  test('COPY fills a missing page; a second COPY reports the page exists; ZEROPAGE maps zeroes', () => {
    const mapping = Mapping.anonymous(4 * PAGE_SIZE);
    const uffd = Userfaultfd.open();
    try {
      const range = uffd.register(mapping.address, mapping.lengthBytes, ['MISSING']);
      assert.ok(range.ioctls.has('COPY') && range.ioctls.has('ZEROPAGE') && range.ioctls.has('WAKE'));
      const page = Buffer.alloc(PAGE_SIZE, 0x42);
      assert.deepEqual(uffd.copy(mapping.address, page), { status: 'done', bytes: PAGE_SIZE });
      assert.deepEqual(uffd.copy(mapping.address, page), { status: 'exists', bytes: 0 });
      assert.deepEqual(uffd.zeropage(mapping.address + PAGE_SIZE, PAGE_SIZE), { status: 'done', bytes: PAGE_SIZE });
      assert.equal(mapping.bytes()[0], 0x42);
      assert.equal(mapping.bytes()[PAGE_SIZE], 0);
      uffd.wake(mapping.address, mapping.lengthBytes);
    } finally {
      uffd.close();
      mapping.unmap();
    }
  });

  test('a COPY that runs into a present page reports the bytes done as partial, not an error', () => {
    const mapping = Mapping.anonymous(4 * PAGE_SIZE);
    const uffd = Userfaultfd.open();
    try {
      uffd.register(mapping.address, mapping.lengthBytes);
      uffd.zeropage(mapping.address + 2 * PAGE_SIZE, PAGE_SIZE);
      const result = uffd.copy(mapping.address, Buffer.alloc(4 * PAGE_SIZE, 1));
      assert.deepEqual(result, { status: 'partial', bytes: 2 * PAGE_SIZE });
    } finally {
      uffd.close();
      mapping.unmap();
    }
  });

  test('COPY into memory that is not registered is a RangeNotRegisteredError (ENOENT)', () => {
    const mapping = Mapping.anonymous(PAGE_SIZE);
    const uffd = Userfaultfd.open();
    try {
      assert.throws(() => uffd.copy(mapping.address, Buffer.alloc(PAGE_SIZE)), RangeNotRegisteredError);
    } finally {
      uffd.close();
      mapping.unmap();
    }
  });

  test('WRITEPROTECT on a range registered without WP mode says the range lacks WP mode, not that it is unregistered', () => {
    const mapping = Mapping.anonymous(PAGE_SIZE);
    const uffd = Userfaultfd.open();
    try {
      uffd.register(mapping.address, PAGE_SIZE, ['MISSING']);
      assert.throws(
        () => uffd.writeProtect(mapping.address, PAGE_SIZE, { protect: true }),
        (error: unknown) => error instanceof RangeNotRegisteredError && error.requiredMode === 'WP' && /not registered in WP mode/.test(error.message),
      );
      assert.throws(() => uffd.copy(mapping.address + PAGE_SIZE, Buffer.alloc(PAGE_SIZE)), /the range is not registered with this userfaultfd \(ENOENT\)/);
    } finally {
      uffd.close();
      mapping.unmap();
    }
  });

  test('a misaligned COPY is an InvalidArgumentError (EINVAL)', () => {
    const mapping = Mapping.anonymous(2 * PAGE_SIZE);
    const uffd = Userfaultfd.open();
    try {
      uffd.register(mapping.address, mapping.lengthBytes);
      assert.throws(() => uffd.copy(mapping.address + 100, Buffer.alloc(PAGE_SIZE)), InvalidArgumentError);
    } finally {
      uffd.close();
      mapping.unmap();
    }
  });

  test('a fault from another thread arrives as a pagefault event with its thread id, and COPY wakes it', async () => {
    const mapping = Mapping.anonymous(4 * PAGE_SIZE);
    const uffd = Userfaultfd.open({ features: ['THREAD_ID'] });
    try {
      uffd.register(mapping.address, mapping.lengthBytes);
      const read = toucher.run<number>({ op: 'read-word', address: mapping.address + PAGE_SIZE });
      const [event] = await nextEvents(uffd);
      assert.equal(event?.type, 'pagefault');
      assert.ok(event?.type === 'pagefault' && event.address === mapping.address + PAGE_SIZE && !event.write && event.threadId > 0);
      const page = Buffer.alloc(PAGE_SIZE);
      page.writeUInt32LE(0xfeedbeef, 0);
      assert.equal(uffd.copy(mapping.address + PAGE_SIZE, page).status, 'done');
      assert.equal(await read, 0xfeedbeef);
    } finally {
      uffd.close();
      mapping.unmap();
    }
  });

  test('COPY answers retry (EAGAIN) while an UNMAP event is pending, and succeeds once it is read', async (t) => {
    const skip = needs('EVENT_UNMAP');
    if (skip) return t.skip(skip);
    const mapping = Mapping.anonymous(8 * PAGE_SIZE);
    const uffd = Userfaultfd.open({ features: ['EVENT_UNMAP'] });
    try {
      uffd.register(mapping.address, mapping.lengthBytes);
      // munmap of the last page raises mmap_changing, queues the UNMAP event and
      // waits in the kernel until the event is read.
      const unmapped = toucher.run({ op: 'munmap', address: mapping.address + 7 * PAGE_SIZE, length: PAGE_SIZE });
      for (let i = 0; i < 5000 && native.pollOnce(uffd.fd, native.constants.POLLIN, 0) === 0; i++) await sleep(1);
      const result = uffd.copy(mapping.address, Buffer.alloc(PAGE_SIZE, 9));
      assert.equal(result.status, 'retry');
      const events = await nextEvents(uffd);
      assert.deepEqual(events, [{ type: 'unmap', start: mapping.address + 7 * PAGE_SIZE, end: mapping.address + 8 * PAGE_SIZE }]);
      await unmapped;
      let after = uffd.copy(mapping.address, Buffer.alloc(PAGE_SIZE, 9));
      for (let i = 0; i < 100 && after.status === 'retry'; i++) {
        await sleep(1);
        after = uffd.copy(mapping.address, Buffer.alloc(PAGE_SIZE, 9));
      }
      assert.equal(after.status, 'done');
    } finally {
      uffd.unregister(mapping.address, 7 * PAGE_SIZE);
      uffd.close();
      native.munmap(mapping.address, 7 * PAGE_SIZE);
    }
  });

  test('POISON makes a page an error for readers instead of data', (t) => {
    const skip = needs('POISON');
    if (skip) return t.skip(skip);
    const mapping = Mapping.anonymous(2 * PAGE_SIZE);
    const uffd = Userfaultfd.open({ features: ['POISON'] });
    try {
      uffd.register(mapping.address, mapping.lengthBytes);
      assert.equal(uffd.poison(mapping.address, PAGE_SIZE).status, 'done');
      // Reading it through the kernel (no SIGBUS in this process) fails.
      const result = native.processVmReadv(process.pid, Buffer.alloc(PAGE_SIZE), mapping.address);
      assert.ok(result < 0, `process_vm_readv of a poisoned page returned ${result}`);
    } finally {
      uffd.close();
      mapping.unmap();
    }
  });

  test('MOVE moves a page into the registered hole without copying; the source becomes empty', (t) => {
    const skip = needs('MOVE');
    if (skip) return t.skip(skip);
    const source = Mapping.anonymous(PAGE_SIZE);
    const target = Mapping.anonymous(PAGE_SIZE);
    const uffd = Userfaultfd.open({ features: ['MOVE'] });
    try {
      source.bytes().fill(0x77);
      uffd.register(target.address, PAGE_SIZE);
      assert.deepEqual(uffd.move(target.address, source.address, PAGE_SIZE), { status: 'done', bytes: PAGE_SIZE });
      assert.equal(target.bytes()[123], 0x77);
      assert.equal(source.residentPageCount(), 0);
    } finally {
      uffd.close();
      source.unmap();
      target.unmap();
    }
  });
});

describe('shmem and hugetlbfs memory', () => {
  test('MISSING mode on a memfd (shmem): COPY fills the page cache, seen through a second mapping', (t) => {
    const skip = needs('MISSING_SHMEM');
    if (skip) return t.skip(skip);
    const memfd = Mapping.memfd(4 * PAGE_SIZE);
    const other = memfd.alias();
    const uffd = Userfaultfd.open({ features: ['MISSING_SHMEM'] });
    try {
      uffd.register(memfd.address, memfd.lengthBytes, ['MISSING']);
      assert.equal(uffd.copy(memfd.address + PAGE_SIZE, Buffer.alloc(PAGE_SIZE, 0x61)).status, 'done');
      assert.equal(other.bytes()[PAGE_SIZE + 9], 0x61);
    } finally {
      uffd.close();
      other.unmap();
      memfd.unmap();
    }
  });

  test('MISSING mode on hugetlbfs: one COPY fills a whole 2 MiB page', (t) => {
    const skip = needs('MISSING_HUGETLBFS');
    if (skip) return t.skip(skip);
    const reserved = reserveHugePages(2);
    if (!reserved) return t.skip('no huge pages reserved (vm.nr_hugepages is 0 and cannot be raised without root)');
    let mapping: Mapping | undefined;
    const uffd = Userfaultfd.open({ features: ['MISSING_HUGETLBFS'] });
    try {
      mapping = Mapping.anonymous(HUGE_PAGE_SIZE, { hugetlb: true });
      const range = uffd.register(mapping.address, mapping.lengthBytes, ['MISSING']);
      assert.ok(range.ioctls.has('COPY'));
      assert.throws(() => uffd.copy(mapping!.address, Buffer.alloc(PAGE_SIZE)), InvalidArgumentError, 'a 4 KiB copy into a huge page is refused');
      assert.equal(uffd.copy(mapping.address, Buffer.alloc(HUGE_PAGE_SIZE, 0x48)).status, 'done');
      assert.equal(mapping.bytes()[HUGE_PAGE_SIZE - 1], 0x48);
    } finally {
      uffd.close();
      mapping?.unmap();
      reserved();
    }
  });
});

/** Raise vm.nr_hugepages by `count` for one test; returns the undo, or undefined when not possible. */
function reserveHugePages(count: number): (() => void) | undefined {
  const path = '/proc/sys/vm/nr_hugepages';
  try {
    const before = Number(readFileSync(path, 'utf8'));
    writeFileSync(path, String(before + count));
    if (Number(readFileSync(path, 'utf8')) < before + count) {
      writeFileSync(path, String(before));
      return undefined;
    }
    return () => writeFileSync(path, String(before));
  } catch {
    return undefined;
  }
}

describe('write-protect and minor modes', () => {
  test('a write to a write-protected page is a WP fault; lifting the protection lets the writer go on', async (t) => {
    const skip = needs('PAGEFAULT_FLAG_WP');
    if (skip) return t.skip(skip);
    const mapping = Mapping.anonymous(2 * PAGE_SIZE);
    const uffd = Userfaultfd.open({ features: ['PAGEFAULT_FLAG_WP'] });
    try {
      uffd.register(mapping.address, mapping.lengthBytes, ['MISSING', 'WP']);
      assert.equal(uffd.copy(mapping.address, Buffer.alloc(PAGE_SIZE, 1), { writeProtect: true }).status, 'done');
      const write = toucher.run({ op: 'write-word', address: mapping.address, value: 5 });
      const [event] = await nextEvents(uffd);
      assert.ok(event?.type === 'pagefault' && event.writeProtect && event.write);
      assert.equal(uffd.writeProtect(mapping.address, PAGE_SIZE, { protect: false }), 'done');
      await write;
      assert.equal(new Uint32Array(mapping.buffer(), 0, 1)[0], 5);
    } finally {
      uffd.close();
      mapping.unmap();
    }
  });

  test('on a memfd, a MINOR fault is resolved with CONTINUE from the page cache', async (t) => {
    const skip = needs('MINOR_SHMEM');
    if (skip) return t.skip(skip);
    const memfd = Mapping.memfd(2 * PAGE_SIZE);
    const view = memfd.alias();
    const uffd = Userfaultfd.open({ features: ['MINOR_SHMEM'] });
    try {
      memfd.bytes().fill(0x2b, 0, PAGE_SIZE); // in the page cache, not yet mapped at `view`
      const range = uffd.register(view.address, view.lengthBytes, ['MINOR']);
      assert.ok(range.ioctls.has('CONTINUE'));
      const read = toucher.run<number>({ op: 'read-word', address: view.address });
      const [event] = await nextEvents(uffd);
      assert.ok(event?.type === 'pagefault' && event.minor);
      assert.equal(uffd.continue(view.address, PAGE_SIZE).status, 'done');
      assert.equal(await read, 0x2b2b2b2b);
    } finally {
      uffd.close();
      view.unmap();
      memfd.unmap();
    }
  });
});

describe('memory helpers', () => {
  test('residency comes from mincore and does not fault pages in', () => {
    const mapping = Mapping.anonymous(8 * PAGE_SIZE);
    try {
      assert.equal(mapping.residentPageCount(), 0);
      mapping.bytes()[3 * PAGE_SIZE] = 1;
      assert.deepEqual([...mapping.residency()].map((b) => b & 1), [0, 0, 0, 1, 0, 0, 0, 0]);
      mapping.discard(3 * PAGE_SIZE, PAGE_SIZE);
      assert.equal(mapping.residentPageCount(), 0);
    } finally {
      mapping.unmap();
    }
  });

  test('a mapping length that is not a whole number of pages is refused', () => {
    assert.throws(() => Mapping.anonymous(100), RangeError);
  });
});
