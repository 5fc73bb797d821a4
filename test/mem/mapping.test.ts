// Host mappings: a discarded page reads zero on every kind of memory (on shmem
// that takes MADV_REMOVE: MADV_DONTNEED only unmaps, and the page cache gives
// the old bytes back), a discard never reaches outside its mapping, and the
// asynchronous discard lets the thread that reads the uffd give pages back
// without waiting in madvise for itself.
import assert from 'node:assert/strict';
import { after, describe, test } from 'node:test';
import { fillPattern } from '../../src/demo/pattern.js';
import { Mapping } from '../../src/mem/index.js';
import { PAGE_SIZE, native } from '../../src/native.js';
import { Pager } from '../../src/pager/index.js';
import { BufferSource } from '../../src/sources/buffer-source.js';
import { Userfaultfd } from '../../src/uffd/index.js';
import { InvalidArgumentError, wrapNativeAsync } from '../../src/uffd/errors.js';
import { Toucher } from '../helpers/toucher.js';
import { within } from '../helpers/waiting.js';

const PAGES = 16;
const SIZE = PAGES * PAGE_SIZE;

const kinds = {
  'private anonymous': () => Mapping.anonymous(SIZE),
  'shared anonymous': () => Mapping.anonymous(SIZE, { shared: true }),
  memfd: () => Mapping.memfd(SIZE, 'userfault-test'),
} as const;

const toucher = new Toucher();
after(() => toucher.terminate());

describe('a mapping', () => {
  for (const [kind, create] of Object.entries(kinds)) {
    test(`${kind}: a discarded page reads zero, and its neighbours keep their bytes`, async () => {
      const mapping = create();
      try {
        const bytes = mapping.bytes(0, SIZE);
        bytes.fill(0xab);
        mapping.discard(2 * PAGE_SIZE, PAGE_SIZE);
        assert.ok(bytes.subarray(2 * PAGE_SIZE, 3 * PAGE_SIZE).every((byte) => byte === 0), 'the discarded page reads zero');
        assert.equal(bytes[PAGE_SIZE], 0xab);
        assert.equal(bytes[3 * PAGE_SIZE], 0xab);
        bytes.fill(0xcd, 5 * PAGE_SIZE, 7 * PAGE_SIZE);
        await mapping.discardAsync(5 * PAGE_SIZE, 2 * PAGE_SIZE);
        assert.ok(bytes.subarray(5 * PAGE_SIZE, 7 * PAGE_SIZE).every((byte) => byte === 0), 'discarded asynchronously: zero');
        assert.equal(bytes[4 * PAGE_SIZE], 0xab);
      } finally {
        mapping.unmap();
      }
    });
  }

  test('a discard outside the mapping, or not of whole pages, is refused before madvise', async () => {
    const mapping = Mapping.anonymous(SIZE);
    try {
      assert.throws(() => mapping.discard(SIZE - PAGE_SIZE, 2 * PAGE_SIZE), RangeError);
      assert.throws(() => mapping.discard(-PAGE_SIZE, PAGE_SIZE), RangeError);
      assert.throws(() => mapping.discard(100, PAGE_SIZE), RangeError);
      await assert.rejects(mapping.discardAsync(0, SIZE + PAGE_SIZE), RangeError);
    } finally {
      mapping.unmap();
    }
  });

  test('an asynchronous madvise the kernel refuses rejects with the typed error of its errno', async () => {
    const mapping = Mapping.anonymous(SIZE);
    try {
      // MADV_REMOVE on private anonymous memory: EINVAL, from the thread pool, typed here.
      await assert.rejects(wrapNativeAsync(() => native.madviseAsync(mapping.address, PAGE_SIZE, native.constants.MADV_REMOVE)), (error: unknown) => error instanceof InvalidArgumentError && /madvise/.test((error as Error).message));
    } finally {
      mapping.unmap();
    }
  });

  for (const kind of ['private anonymous', 'memfd'] as const) {
    test(`${kind}: the thread that reads the uffd discards registered pages with discardAsync, and nothing blocks`, async () => {
      const image = new Uint8Array(SIZE);
      fillPattern(image, 0);
      const mapping = kinds[kind]();
      const uffd = Userfaultfd.open({ features: ['EVENT_REMOVE'] });
      // The pager reads the uffd on this thread, as a VMM's does on its main thread.
      const pager = new Pager({ uffd, source: new BufferSource(image), regions: [{ address: mapping.address, lengthBytes: SIZE, sourceOffset: 0 }], register: true, prefetch: false }).start();
      try {
        const read = (page: number) => toucher.run<number>({ op: 'read-word', address: mapping.address + page * PAGE_SIZE });
        assert.equal(await read(3), new Uint32Array(image.buffer, 3 * PAGE_SIZE, 1)[0]);
        // madvise waits until this thread reads the REMOVE event: it runs on the thread pool, and this thread's loop reads it.
        await within(5_000, 'discardAsync from the uffd reader\'s thread', mapping.discardAsync(3 * PAGE_SIZE, PAGE_SIZE));
        assert.equal(pager.snapshotMetrics().events.remove, 1, 'the REMOVE event was read and applied');
        assert.equal(await read(3), 0, 'the discarded page is a zero page now, not the source\'s again');
        assert.equal(await read(4), new Uint32Array(image.buffer, 4 * PAGE_SIZE, 1)[0]);
      } finally {
        await pager.stop();
        uffd.unregister(mapping.address, SIZE);
        uffd.close();
        mapping.unmap();
      }
    });
  }
});
