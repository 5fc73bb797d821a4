// The seed thread's semantics, shown on the real kernel (MISSION.md, issue #2 section 7).
// Each case runs in its own process with a hard bound: a wrong answer may be a hang.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { lastLine, runFixture } from '../helpers/run-probe.js';

const probe = (mode: string, timeoutMs?: number) => runFixture('seed-probe.js', [mode], timeoutMs);

describe('the seed\'s access paths', () => {
  test('a user-mode load and store on missing pages are resolved by the pager', () => {
    const result = lastLine(probe('user-access'));
    assert.equal(result.firstWord, 5, 'page 5 read back its own index from the source');
    assert.deepEqual(result.bad, [], 'every touched page matches the source');
    assert.equal(result.storeKept, true, 'a store to a missing page lands after the fill');
    assert.ok((result.faults as number) >= 2);
  });

  test('a kernel copy inside read(2) into registered memory is intercepted and resolved', () => {
    const result = lastLine(probe('kernel-read'));
    assert.equal(result.outcome, 'served');
    assert.equal(result.bytesRead, 3 * 4096);
    assert.equal(result.copied, true, 'the file data arrived');
    assert.equal(result.headKept, true, 'the part of the page read(2) did not cover holds source data');
    assert.ok((result.faults as number) >= 3, 'the kernel-mode faults went through the pager');
  });

  test('with UFFD_USER_MODE_ONLY the same read(2) fails with EFAULT instead of faulting', () => {
    assert.deepEqual(lastLine(probe('kernel-read-user-mode-only')), { outcome: 'error', code: 'EFAULT' });
  });

  test('an O_DIRECT read into registered memory (get_user_pages) is intercepted and resolved', (t) => {
    const result = lastLine(probe('o-direct'));
    if (result.outcome === 'error' && result.code === 'EINVAL') {
      t.skip('the temp filesystem refuses O_DIRECT');
      return;
    }
    assert.equal(result.outcome, 'served');
    assert.equal(result.contentsMatch, true);
    assert.ok((result.faults as number) >= 1);
  });

  test('reading a missing page through /proc/self/mem gets EIO, not a hang (the caller cannot wait)', () => {
    const run = probe('proc-self-mem', 10_000);
    assert.equal(run.timedOut, false);
    // Observed on Linux 6.x: access_remote_vm runs without FAULT_FLAG_ALLOW_RETRY, so
    // handle_userfault refuses to wait and the read fails; the pager never sees a fault.
    assert.deepEqual(lastLine(run), { outcome: 'error', code: 'EIO', faults: 0 });
  });

  test('process_vm_readv of a missing page is served by the pager (it may wait)', () => {
    const run = probe('process-vm-readv', 10_000);
    assert.equal(run.timedOut, false);
    assert.deepEqual(lastLine(run), { outcome: 'served', bytes: 4096, firstWord: 3, faults: 1 });
  });

  test('while a fault is held unresolved, other threads still mmap, munmap and fault elsewhere', () => {
    const result = lastLine(probe('lock-not-held'));
    assert.equal(result.heldStillWaiting, true, 'the held fault was still unresolved while the others ran');
    assert.equal(result.otherWord, 7, 'a fault on another page was served meanwhile');
    assert.equal(result.heldWord, 0, 'the held fault completed once released');
    assert.ok((result.othersMs as number) < 5000, 'nobody waited on the held fault');
  });

  test('a page discarded (MADV_DONTNEED) while its fill is in flight reads zero, never the stale source data', () => {
    const result = lastLine(probe('discard-during-fill'));
    assert.equal(result.removeEvents, 1, 'the pager saw the REMOVE event');
    assert.equal(result.seenByFaulting, 0, 'the waiting thread was answered with the zero page');
    assert.equal(result.nonZeroWordsAfter, 0, 'the late fill was dropped');
  });
});

describe('a handler that dies', () => {
  test('with the poison policy, the next touch of a missing page dies by SIGBUS instead of reading zero', () => {
    const run = probe('handler-lost-poison', 10_000);
    assert.equal(run.signal, 'SIGBUS', run.stderr);
    assert.equal(run.lines.find((l) => l.phase === 'touched'), undefined, 'no value was read');
  });

  test('with the kill policy, the owner is killed as soon as its pager dies', () => {
    const run = probe('handler-lost-kill', 10_000);
    assert.equal(run.signal, 'SIGKILL');
    assert.equal(run.timedOut, false, 'killed by the watchdog, not by the test bound');
    assert.equal(run.lines.find((l) => l.phase === 'touched'), undefined);
  });

  test('a fault the pager had already read when it died gets the poison policy too: SIGBUS, not a freeze', () => {
    const run = probe('handler-lost-mid-fault-poison', 10_000);
    assert.equal(run.timedOut, false, 'the faulting thread was not left asleep');
    assert.equal(run.signal, 'SIGBUS', run.stderr);
    assert.ok(run.lines.find((l) => l.phase === 'touching'), 'it was blocked in the touch');
    assert.equal(run.lines.find((l) => l.phase === 'touched'), undefined, 'no value was read');
  });

  test('a fault the pager had already read when it died gets the kill policy too', () => {
    const run = probe('handler-lost-mid-fault-kill', 10_000);
    assert.equal(run.timedOut, false, 'killed by the watchdog, not by the test bound');
    assert.equal(run.signal, 'SIGKILL');
    assert.equal(run.lines.find((l) => l.phase === 'touched'), undefined);
  });

  test('with the owner\'s reference alone, the touch freezes rather than reading zero', () => {
    const run = probe('handler-lost-freeze', 1500);
    assert.equal(run.timedOut, true, 'the touch never completed');
    assert.equal(run.lines.find((l) => l.phase === 'touched'), undefined);
  });
});
