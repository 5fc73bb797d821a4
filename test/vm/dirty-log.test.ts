// KVM's dirty log on the real VM: the pages the guest writes, and nothing else.
// Needs /dev/kvm and the micro guest.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { PageBitmap } from '../../src/pager/page-bitmap.js';
import { bootVm } from '../../src/vm/builder.js';
import { ConsoleCapture, kvmSkipReason } from './helpers.js';

const skip = kvmSkipReason();
const MiB = 1 << 20;
/** The writer's region starts at 2 MiB of guest RAM (guest/micro.asm): page 512. */
const WRITER_FIRST_PAGE = 512;

describe('KVM dirty logging', { skip, timeout: 60_000 }, () => {
  test('the log reports the pages the guest writes; once cleared, a paused guest dirties nothing', async () => {
    const console = new ConsoleCapture();
    const vmm = await bootVm({ image: 'builtin', memoryBytes: 16 * MiB, cmdline: 'workload=writer mem=4 rate=0 pattern=seq hb=5', console: console.sink });
    try {
      const region = vmm.memory.regions[0]!;
      const pages = region.lengthBytes / 4096;
      const mode = vmm.vm.startDirtyLog(region);
      const read = (): PageBitmap => {
        const bitmap = new PageBitmap(pages);
        vmm.vm.getDirtyLog(region.slot, bitmap.bytes);
        if (mode === 'manual-protect') vmm.vm.clearDirtyLog(region.slot, 0, pages, bitmap.bytes);
        return bitmap;
      };
      if (mode === 'manual-protect') assert.equal(read().count(), pages, 'INITIALLY_SET: every page starts dirty (nothing was write-protected up front)');
      else read();
      await vmm.resume();
      await console.waitFor(/hb 2 /);
      await vmm.pause();
      const dirty = read();
      const writerPages = [...dirty.pages()].filter((p) => p >= WRITER_FIRST_PAGE && p < WRITER_FIRST_PAGE + 1024);
      assert.equal(writerPages.length, 1024, 'every page of the 4 MiB the writer rewrites is dirty');
      assert.ok(dirty.count() < 1024 + 64, `only the writer's pages and a few of the guest's own (${dirty.count()})`);
      assert.equal(read().count(), 0, 'a paused guest dirtied nothing since the last read');
      vmm.vm.stopDirtyLog(region);
    } finally {
      await vmm.close();
    }
  });
});
