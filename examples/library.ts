// The library, one example each. The README shows this file as it is, and
// test/cli/examples.test.ts runs it (node dist/examples/library.js), so it stays true.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { open, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { LazyMemory, Mapping, Pager, SnapshotSource, Userfaultfd, writeSnapshot } from 'userfault';

const PAGE = 4096;
const dir = mkdtempSync(join(tmpdir(), 'userfault-example-'));
const snapshotPath = join(dir, 'vm.snap');
const image = new Uint8Array(64 * PAGE).map((_, i) => i >> 12); // page n holds the byte n
await writeSnapshot(snapshotPath, { regions: [{ imageOffset: 0, lengthBytes: image.length }], content: image });

// What the kernel offers (UFFDIO_API on a throwaway fd).
console.log([...Userfaultfd.probe().features].join(' ')); // PAGEFAULT_FLAG_WP EVENT_FORK ... POISON WP_ASYNC MOVE

// Open, naming required and optional features; fails with FeatureUnavailableError naming what is missing.
const uffd = Userfaultfd.open({ features: ['PAGEFAULT_FLAG_WP'], optionalFeatures: ['THREAD_ID', 'MOVE'] });

// MISSING mode: a page is missing until a resolving ioctl fills it (here ahead of any fault).
const mem = Mapping.anonymous(16 * PAGE); // also Mapping.memfd(), Mapping.file(), mapping.alias()
const range = uffd.register(mem.address, mem.lengthBytes, ['MISSING']);
console.log([...range.ioctls].join(' ')); // WAKE COPY ZEROPAGE MOVE POISON: what this range allows
// Expected outcomes are values; real failures throw typed errors (RangeNotRegisteredError for ENOENT,
// AddressSpaceGoneError ESRCH, BadAddressError EFAULT, InvalidArgumentError EINVAL, each with .code, .errno, .syscall).
assert.deepEqual(uffd.copy(mem.address, new Uint8Array(PAGE).fill(1)), { status: 'done', bytes: PAGE });
assert.deepEqual(uffd.copy(mem.address, new Uint8Array(2 * PAGE)), { status: 'exists', bytes: 0 }); // EEXIST; 'partial' carries the bytes done
assert.equal(uffd.zeropage(mem.address + PAGE, PAGE).status, 'done'); // 'retry' while events are pending (EAGAIN)
assert.equal(uffd.poison(mem.address + 2 * PAGE, PAGE).status, 'done'); // touching that page now raises SIGBUS
if (uffd.has('MOVE')) {
  const donor = Mapping.anonymous(PAGE);
  donor.bytes().fill(7);
  assert.equal(uffd.move(mem.address + 3 * PAGE, donor.address, PAGE).status, 'done'); // the page itself, not a copy
  donor.unmap();
}
uffd.wake(mem.address, mem.lengthBytes); // wakes threads waiting on pages resolved with { dontWake: true }
assert.deepEqual(uffd.readEvents(), []); // [{ type: 'pagefault', address, write, writeProtect, minor, threadId }, { type: 'remove', start, end }, ...]
uffd.unregister(mem.address, mem.lengthBytes);
mem.unmap();

// WP mode: write-protect present pages; a write then faults (writeProtect: true) until they are unprotected.
const wp = Mapping.anonymous(4 * PAGE);
wp.bytes().fill(5); // present first (a missing page is protected only with WP_UNPOPULATED)
uffd.register(wp.address, wp.lengthBytes, ['WP']);
assert.equal(uffd.writeProtect(wp.address, wp.lengthBytes, { protect: true }), 'done');
assert.equal(uffd.writeProtect(wp.address, wp.lengthBytes, { protect: false }), 'done'); // and wakes any writer
uffd.unregister(wp.address, wp.lengthBytes);
wp.unmap();

// MINOR mode (shmem, hugetlbfs): the page cache holds the data; CONTINUE maps it into the faulting view.
const shared = Mapping.memfd(4 * PAGE);
const view = shared.alias(); // a second mapping of the same memfd
shared.bytes().fill(9); // fills the page cache through the first view
uffd.register(view.address, view.lengthBytes, ['MINOR']);
assert.equal(uffd.continue(view.address, PAGE).status, 'done');
assert.equal(view.bytes()[0], 9); // mapped now, so this touch does not fault
uffd.unregister(view.address, view.lengthBytes);
view.unmap();
shared.unmap();

// A pager in this thread's event loop serves the faults of other threads (never of this one: it would deadlock).
const served = Mapping.anonymous(image.length);
uffd.register(served.address, served.lengthBytes, ['MISSING']);
const source = await SnapshotSource.open(snapshotPath);
const pager = new Pager({
  uffd, source, regions: [{ address: served.address, lengthBytes: served.lengthBytes, sourceOffset: 0 }],
  prefetch: { initialPages: 1, maxPages: 8, aheadWindows: 2 }, recordWorkingSet: true, // a stream at 8 pages is read 2 windows further ahead
  spinMicros: 50, // optional: poll the uffd briefly before sleeping
}).start();
// Another thread touches the memory: write(2) on libuv's thread pool reads it in the kernel, which faults.
const copy = await open(join(dir, 'copy.bin'), 'w');
await copy.write(served.bytes(0, 16 * PAGE));
await copy.close();
assert.deepEqual(await readFile(join(dir, 'copy.bin')), Buffer.from(image.subarray(0, 16 * PAGE)));
const metrics = pager.snapshotMetrics(); // faults, coalescedFaults, prefetchHits, pagesCopied, latencyMicros { p50, p90, p99, max }, ...
console.log(`${metrics.faults} faults, ${metrics.pagesCopied} pages copied, p99 ${metrics.latencyMicros.p99} µs`);
const workingSet = pager.workingSet(); // pages in first-touch order: a later restore's pager.prefetchPages(workingSet) streams them ahead
assert.equal(workingSet[0], 0);
await pager.stop();
uffd.unregister(served.address, served.lengthBytes);
served.unmap();
uffd.close();
await source.close();

// Lazy memory: the pager runs in a worker thread, so this thread may touch the memory.
const lazy = await LazyMemory.create({ source: { kind: 'snapshot', path: snapshotPath }, onHandlerLost: 'poison' });
assert.equal(lazy.bytes()[12 * PAGE], 12); // blocks this thread in the kernel until the worker fills the page
console.log(`lazy memory, faults served: ${(await lazy.stats()).metrics.faults}`);
await lazy.close();
rmSync(dir, { recursive: true });
