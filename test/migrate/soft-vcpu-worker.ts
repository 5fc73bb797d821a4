// The soft machine's one "vCPU": a worker thread that writes guest RAM the
// way the micro guest's writer workload does — a page at a time, each page
// self-describing (its index, its version, then words derived from both), a
// version per page remembered in shared memory (the guest's own memory of
// what it wrote), a heartbeat per tick — so that a migration's every page
// can be checked against what the writer last wrote, and a stale page (an
// old version) or a wrong one is caught. Its writes touch guest RAM directly:
// on a destination in post-copy a missing page blocks this thread in the
// kernel's userfault until the pager on the main thread installs it, as a
// vCPU blocks in KVM_RUN. Control is a few shared words (RUN, PAUSED, ...)
// with Atomics, so a pause needs no message the blocked thread cannot read.
import { parentPort, workerData } from 'node:worker_threads';
import { native } from '../../src/native.js';
import { Control, GIVEN_BACK, RunState, writeSoftPage, type SoftVcpuData } from './soft-machine-layout.js';

const data = workerData as SoftVcpuData;
const control = new Int32Array(data.control);
const versions = new Uint32Array(data.versions);
const dirty = new Uint8Array(data.dirty);
const words = new Uint32Array(native.arrayBufferAt(data.address, data.memoryBytes));
const pageWords = data.pageSizeBytes / 4;
/** Page operations so far (giveBackEvery counts them). */
let operations = 0;

function nextPage(): number {
  if (data.pattern === 'sequential') {
    const page = Atomics.load(control, Control.CURSOR) % data.writePages;
    Atomics.store(control, Control.CURSOR, page + 1);
    return page;
  }
  // xorshift32 over the shared word, so the sequence goes on after a migration.
  let x = Atomics.load(control, Control.RNG) >>> 0 || 0x9e3779b9;
  x ^= x << 13;
  x >>>= 0;
  x ^= x >>> 17;
  x ^= x << 5;
  x >>>= 0;
  Atomics.store(control, Control.RNG, x | 0);
  return x % data.writePages;
}

for (;;) {
  const run = Atomics.load(control, Control.RUN);
  if (run === RunState.EXIT) break;
  if (run === RunState.PAUSED) {
    Atomics.store(control, Control.PAUSED, 1);
    Atomics.notify(control, Control.PAUSED);
    Atomics.wait(control, Control.RUN, RunState.PAUSED);
    Atomics.store(control, Control.PAUSED, 0);
    continue;
  }
  for (let i = 0; i < data.pagesPerTick; i++) {
    const page = nextPage();
    const last = versions[page]!;
    if (data.giveBackEvery > 0 && ++operations % data.giveBackEvery === 0 && last !== 0 && last < GIVEN_BACK) {
      // A balloon inflating: the page goes back to the host, and reads zero from now on. On a registered range
      // madvise waits until the pager has read the REMOVE event (this thread is not the one that reads it).
      native.madvise(data.address + page * data.pageSizeBytes, data.pageSizeBytes, native.constants.MADV_DONTNEED);
      Atomics.store(versions, page, (last | GIVEN_BACK) >>> 0);
    } else {
      // Taking a given-back page again (deflating) is a write of its next version.
      const version = (last & ~GIVEN_BACK) + 1;
      writeSoftPage(words, page * pageWords, pageWords, page, version);
      Atomics.store(versions, page, version);
    }
    // After the write or the discard: a dirty-log read that misses this bit sees it next time (the page is sent again).
    if (Atomics.load(control, Control.TRACK) === 1) Atomics.or(dirty, page >> 3, 1 << (page & 7));
  }
  const beat = Atomics.add(control, Control.HEARTBEAT, 1) + 1;
  parentPort!.postMessage(beat);
  Atomics.wait(control, Control.RUN, RunState.RUNNING, data.tickMs);
}
