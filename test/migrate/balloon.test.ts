// Ballooning during live migration, with the soft machine (soft-machine.ts:
// real guest RAM, the real userfaultfd and pager, the real migration): its
// writer gives pages back as it runs (MADV_DONTNEED from its vCPU thread, as
// a balloon inflating; its next write to the page takes it back, deflating)
// and remembers which, so its verify holds a given-back page to "reads zero"
// and every other page to "holds what I last wrote". Migrated in every mode,
// and with a cut in the middle of post-copy, no page given back ever comes
// back with the source's old bytes: a discard on the source is a change the
// dirty log sends again (as zero), and one on the destination while pages are
// still coming is a REMOVE the pager applies before any later copy into the
// page (LazyGuestMemory asks for REMOVE events).
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import type { MigrationMode } from '../../src/migrate/convergence.js';
import { FRAME, runFaultCase } from './migration-faults.js';

/** One page operation in 8 gives its page back: the writer's working set is 1,024 pages, 24 operations a tick. */
const BALLOON = { giveBackEvery: 8 };

describe('a guest whose balloon inflates and deflates as it runs', { timeout: 120_000 }, () => {
  for (const mode of ['precopy', 'postcopy', 'hybrid'] as MigrationMode[]) {
    test(`migrates in ${mode}: every page what its writer last wrote, every page it gave back zero`, async () => {
      let givenBack = 0;
      let residentGivenBack = -1;
      const outcome = await runFaultCase({
        mode,
        machine: BALLOON,
        // Before the verify reads every page: which pages given back still hold memory at the destination.
        inspect: async (survivor) => {
          await survivor.pauseVcpus();
          const pages = survivor.givenBackPages();
          const resident = survivor.memory.mapping.residency();
          givenBack = pages.length;
          residentGivenBack = pages.filter((page) => (resident[page]! & 1) === 1).length;
        },
      }, 601);
      // runFaultCase checked the survivor's memory page by page against the writer's record (given back: zero).
      assert.equal(outcome.runsOn, 'destination');
      assert.equal(outcome.sourceError, undefined);
      assert.ok(givenBack > 0, 'the guest had pages given back when it was checked');
      // Pre-copy: a page sent with data and given back later arrives as a zero marker, and is discarded here rather
      // than filled with zeroes. (In post-copy a zero page pushed is still installed as a page of zeroes.)
      if (mode === 'precopy') assert.equal(residentGivenBack, 0, `${residentGivenBack} of ${givenBack} pages given back hold memory at the destination`);
    });
  }

  test('cut in the middle of post-copy and recovered: still no given-back page comes back stale', async () => {
    const outcome = await runFaultCase({
      mode: 'postcopy',
      machine: BALLOON,
      fault: { direction: 'to-destination', frameType: FRAME.PAGES_REPLY, occurrence: 3, where: 'before', fault: 'cut-heal' },
    }, 602);
    assert.ok(outcome.proxy.fired, `the cut came mid-post-copy (frames: ${outcome.proxy.log.slice(-20).join(' ')})`);
    assert.equal(outcome.runsOn, 'destination');
    assert.ok((outcome.source.recoveries ?? 0) >= 1);
  });
});
