// Putting the zero page or poison into every page of a range that has no
// contents, leaving pages that have some alone. Used once a pager has
// stopped, by an owner whose memory outlives the pager (a WebAssembly.Memory
// stays V8's): unregistering would otherwise let every page never filled read
// ZERO. Both ioctls install only where the page table entry is none
// (mfill_atomic_pte_* refuse a present or swapped entry with EEXIST), so a
// page that holds data is never clobbered, whatever mincore said about it.
import { PAGE_SIZE, native } from '../native.js';
import { UserfaultError, wrapNative } from '../uffd/errors.js';
import type { Userfaultfd } from '../uffd/index.js';

/** How often one run may meet EAGAIN (mmap_changing: a non-cooperative event not yet read) before giving up. */
const MAX_RETRIES = 100;

/**
 * UFFDIO_ZEROPAGE or UFFDIO_POISON over [start, start+lengthBytes), page by
 * page past the ones that exist. Returns the bytes installed. The range must
 * be registered with `uffd`; nobody else may be installing meanwhile.
 */
export function installInRun(uffd: Userfaultfd, start: number, lengthBytes: number, how: 'zero' | 'poison'): number {
  const end = start + lengthBytes;
  let at = start;
  let installed = 0;
  let retries = 0;
  while (at < end) {
    const result = how === 'zero' ? uffd.zeropage(at, end - at) : uffd.poison(at, end - at);
    switch (result.status) {
      case 'done':
      case 'partial':
        installed += result.bytes;
        at += result.bytes;
        break;
      case 'exists':
        at += PAGE_SIZE;
        break;
      case 'retry':
        // No pager reads the uffd any more: read the pending events here (a
        // REMOVE or REMAP that blocks its caller until someone does), then retry.
        if (++retries > MAX_RETRIES) throw new UserfaultError(`UFFDIO_${how === 'zero' ? 'ZEROPAGE' : 'POISON'} kept meeting EAGAIN at 0x${at.toString(16)}`);
        uffd.readEvents();
        break;
      default: {
        const never: never = result;
        throw new UserfaultError(`unknown result ${JSON.stringify(never)}`);
      }
    }
  }
  return installed;
}

/**
 * Poison every page of [start, start+lengthBytes) that is not resident, in
 * runs found by mincore(2) (which never faults a page in). Returns the bytes
 * poisoned.
 */
export function poisonPagesWithoutContents(uffd: Userfaultfd, start: number, lengthBytes: number): number {
  const pageCount = lengthBytes / PAGE_SIZE;
  const residency = new Uint8Array(pageCount);
  wrapNative(() => native.mincore(start, lengthBytes, residency));
  let poisoned = 0;
  let runStart = -1;
  for (let i = 0; i <= pageCount; i++) {
    const resident = i === pageCount || (residency[i]! & 1) === 1;
    if (!resident && runStart < 0) runStart = i;
    else if (resident && runStart >= 0) {
      poisoned += installInRun(uffd, start + runStart * PAGE_SIZE, (i - runStart) * PAGE_SIZE, 'poison');
      runStart = -1;
    }
  }
  return poisoned;
}
