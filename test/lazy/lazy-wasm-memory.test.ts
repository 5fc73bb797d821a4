// LazyWasmMemory on the real kernel and real V8: a hand-assembled wasm module
// reads, writes and grows a memory whose pages fill on first touch, while the
// pager serves from its worker thread.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, test, type TestContext } from 'node:test';
import { fileURLToPath } from 'node:url';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { Worker } from 'node:worker_threads';
import { fillPattern, findPatternMismatches } from '../../src/demo/pattern.js';
import { LazyWasmMemory, WASM_PAGE_BYTES, type SourceSpec } from '../../src/lazy/index.js';
import { PAGE_SIZE, native } from '../../src/native.js';
import { writeSnapshot } from '../../src/snapshot/index.js';
import { Userfaultfd } from '../../src/uffd/index.js';
import { openUffdCount } from '../handler/helpers.js';
import { runFixture } from '../helpers/run-probe.js';
import type { WasmWorkerData } from '../fixtures/wasm-worker.js';
import { DATA_SEGMENT, DATA_SEGMENT_MODULE, instantiateProbe } from '../fixtures/wasm/probe-module.js';

/** What these tests need: a userfaultfd with POISON (LazyWasmMemory's close() and poison policy use it; Linux 6.6+). */
function skipReason(): string | undefined {
  try {
    const offer = Userfaultfd.probe();
    return offer.features.has('POISON') ? undefined : 'the kernel\'s userfaultfd lacks POISON (Linux 6.6+)';
  } catch (error) {
    return (error as Error).message;
  }
}
const skip = skipReason();

const W = WASM_PAGE_BYTES;
const PAGES_PER_WASM_PAGE = W / PAGE_SIZE;

function patternImage(wasmPages: number, zeroEvery = 0): SharedArrayBuffer {
  const image = new SharedArrayBuffer(wasmPages * W);
  fillPattern(new Uint8Array(image), 0, 1, zeroEvery);
  return image;
}

/** The i32 sum of the image's words in [start, end), wrapping as wasm's i32.add does. */
function expectedSum(image: ArrayBufferLike, start: number, end: number): number {
  let sum = 0;
  for (const word of new Uint32Array(image, start, (end - start) / 4)) sum = (sum + word) | 0;
  return sum;
}

async function lazyMemory(t: TestContext, options: Parameters<typeof LazyWasmMemory.create>[0]): Promise<LazyWasmMemory> {
  const lazy = await LazyWasmMemory.create(options);
  t.after(() => lazy.close());
  return lazy;
}

/** VmFlags of every VMA overlapping [start, end), from /proc/self/smaps. */
function vmFlagsOver(start: number, end: number): Array<{ start: number; perms: string; flags: string[] }> {
  const out: Array<{ start: number; perms: string; flags: string[] }> = [];
  let current: { start: number; end: number; perms: string } | undefined;
  for (const line of readFileSync('/proc/self/smaps', 'utf8').split('\n')) {
    const header = /^([0-9a-f]+)-([0-9a-f]+) (\S+)/.exec(line);
    if (header) current = { start: parseInt(header[1]!, 16), end: parseInt(header[2]!, 16), perms: header[3]! };
    else if (line.startsWith('VmFlags:') && current && current.end > start && current.start < end) {
      out.push({ start: current.start, perms: current.perms, flags: line.slice(8).trim().split(/\s+/) });
    }
  }
  return out;
}

describe('a lazy WebAssembly memory', { skip, timeout: 60_000 }, () => {
  test('wasm code reads the source\'s bytes across many pages, and its writes stay', async (t) => {
    const image = patternImage(64);
    const lazy = await lazyMemory(t, { source: { kind: 'buffer', buffer: image }, initial: 32, maximum: 64 });
    const wasm = instantiateProbe(lazy.memory);
    // Word 0 of every 4 KiB page is the page's index in the image.
    const wrong: number[] = [];
    for (let page = 0; page < 32 * PAGES_PER_WASM_PAGE; page += 3) if (wasm.load(page * PAGE_SIZE) !== page) wrong.push(page);
    assert.deepEqual(wrong, []);
    assert.equal(wasm.sum(0, 32 * W), expectedSum(image, 0, 32 * W), 'every word of 32 wasm pages, summed by wasm code');
    wasm.store(100 * PAGE_SIZE + 8, 0x5eed);
    assert.equal(wasm.load(100 * PAGE_SIZE + 8), 0x5eed);
    assert.equal(new Uint32Array(lazy.memory.buffer)[(100 * PAGE_SIZE + 8) / 4], 0x5eed, 'JS sees the store through memory.buffer');
    assert.notEqual(new Uint32Array(image)[(100 * PAGE_SIZE + 8) / 4], 0x5eed, 'the source is not written');
    const stats = await lazy.stats();
    assert.ok(stats.metrics.faults >= 1);
    assert.ok(stats.pages.present >= 32 * PAGES_PER_WASM_PAGE);
  });

  test('a page first touched after memory.grow from wasm code is filled from the source, and the memory stays where it was', async (t) => {
    const image = patternImage(64);
    const lazy = await lazyMemory(t, { source: { kind: 'buffer', buffer: image }, initial: 2, maximum: 64, prefetch: false });
    const wasm = instantiateProbe(lazy.memory);
    assert.equal(wasm.load(PAGE_SIZE), 1);
    assert.equal(wasm.grow(10), 2, 'memory.grow in wasm code returns the old size');
    assert.equal(native.addressOf(new Uint8Array(lazy.memory.buffer)), lazy.address, 'grow kept the address');
    assert.equal(wasm.load(9 * W), 9 * PAGES_PER_WASM_PAGE);
    assert.equal(wasm.sum(5 * W, 12 * W), expectedSum(image, 5 * W, 12 * W));
    // Grown from JS too; read from JS.
    lazy.memory.grow(20);
    assert.equal(lazy.wasmPageCount, 32);
    assert.equal(new Uint32Array(lazy.memory.buffer)[(31 * W + PAGE_SIZE) / 4], 31 * PAGES_PER_WASM_PAGE + 1);
    assert.deepEqual(findPatternMismatches(new Uint8Array(lazy.memory.buffer, 12 * W, 20 * W), 12 * PAGES_PER_WASM_PAGE), []);
    // The registration spans committed and uncommitted pages: the VMAs grow made read-write carry it (um) too.
    const vmas = vmFlagsOver(lazy.address, lazy.address + lazy.servedBytes);
    assert.ok(vmas.some((v) => v.perms === 'rw-p') && vmas.some((v) => v.perms === '---p'), JSON.stringify(vmas));
    for (const vma of vmas) assert.ok(vma.flags.includes('um'), `VMA at 0x${vma.start.toString(16)} (${vma.perms}) lacks um: ${vma.flags.join(' ')}`);
  });

  test('past the image, grown pages read zero, as any new wasm page does', async (t) => {
    const lazy = await lazyMemory(t, { source: { kind: 'buffer', buffer: patternImage(4) }, initial: 1, maximum: 8, prefetch: false });
    assert.equal(lazy.servedBytes, 4 * W, 'only the image\'s bytes are registered');
    const wasm = instantiateProbe(lazy.memory);
    assert.equal(wasm.grow(7), 1);
    assert.equal(wasm.load(3 * W), 3 * PAGES_PER_WASM_PAGE);
    assert.equal(wasm.sum(4 * W, 8 * W), 0);
  });

  test('a module\'s data segment lands over the source\'s bytes at instantiation: V8 writes it from this thread, the page is filled first', async (t) => {
    const image = patternImage(4);
    const lazy = await lazyMemory(t, { source: { kind: 'buffer', buffer: image }, maximum: 4, prefetch: false });
    new WebAssembly.Instance(new WebAssembly.Module(DATA_SEGMENT_MODULE), { env: { memory: lazy.memory } });
    const bytes = new Uint8Array(lazy.memory.buffer);
    const { offset } = DATA_SEGMENT;
    assert.equal(Buffer.from(bytes.subarray(offset, offset + DATA_SEGMENT.bytes.length)).toString(), DATA_SEGMENT.bytes);
    const page = offset - (offset % PAGE_SIZE);
    const source = new Uint8Array(image);
    assert.deepEqual(bytes.subarray(page, offset), source.subarray(page, offset), 'the bytes before the segment are the source\'s');
    assert.deepEqual(bytes.subarray(offset + 5, page + PAGE_SIZE), source.subarray(offset + 5, page + PAGE_SIZE), 'and those after it');
  });

  test('initial defaults to the image\'s size, and sourceOffset shifts what wasm byte 0 shows', async (t) => {
    const image = patternImage(8);
    const lazy = await lazyMemory(t, { source: { kind: 'buffer', buffer: image }, sourceOffset: 2 * W, prefetch: false });
    assert.equal(lazy.wasmPageCount, 6);
    const wasm = instantiateProbe(lazy.memory);
    assert.equal(wasm.load(0), 2 * PAGES_PER_WASM_PAGE);
    assert.equal(wasm.load(5 * W + PAGE_SIZE), 7 * PAGES_PER_WASM_PAGE + 1);
  });

  test('a snapshot and a raw memory file serve it as memory does', async (t) => {
    const dir = mkdtempSync(join(tmpdir(), 'uf-wasm-'));
    t.after(() => rmSync(dir, { recursive: true, force: true }));
    const image = new Uint8Array(patternImage(16, 5));
    const rawPath = join(dir, 'memory.raw');
    const snapshotPath = join(dir, 'memory.snap');
    writeFileSync(rawPath, image);
    await writeSnapshot(snapshotPath, { regions: [{ imageOffset: 0, lengthBytes: image.length, name: 'heap' }], content: image });
    const sources: SourceSpec[] = [{ kind: 'raw-file', path: rawPath }, { kind: 'snapshot', path: snapshotPath }];
    for (const source of sources) {
      const lazy = await LazyWasmMemory.create({ source, initial: 4, maximum: 16 });
      try {
        const wasm = instantiateProbe(lazy.memory);
        wasm.grow(12);
        assert.equal(wasm.sum(0, 16 * W), expectedSum(image.buffer, 0, 16 * W), source.kind);
        assert.deepEqual(findPatternMismatches(new Uint8Array(lazy.memory.buffer), 0, 1, 5), [], source.kind);
      } finally {
        await lazy.close();
      }
    }
  });

  test('a shared memory is served to wasm code running in another worker thread, which grows it too', async (t) => {
    const image = patternImage(32);
    const lazy = await lazyMemory(t, { source: { kind: 'buffer', buffer: image }, initial: 4, maximum: 32, shared: true, prefetch: false });
    assert.ok(lazy.memory.buffer instanceof SharedArrayBuffer);
    const workerData: WasmWorkerData = { memory: lazy.memory, growPages: 12, loads: [1 * PAGE_SIZE, 10 * W, 15 * W + 3 * PAGE_SIZE], sum: { start: 0, end: 16 * W } };
    const worker = new Worker(new URL('../fixtures/wasm-worker.js', import.meta.url), { workerData });
    const reply = await new Promise<{ grownFrom: number; loads: number[]; sum: number }>((resolve, reject) => {
      worker.once('message', resolve);
      worker.once('error', reject);
    });
    await worker.terminate();
    assert.equal(reply.grownFrom, 4);
    assert.deepEqual(reply.loads, [1, 10 * PAGES_PER_WASM_PAGE, 15 * PAGES_PER_WASM_PAGE + 3]);
    assert.equal(reply.sum, expectedSum(image, 0, 16 * W));
    assert.equal(lazy.wasmPageCount, 16, 'the growth is seen from this thread');
    assert.equal(native.addressOf(new Uint8Array(lazy.memory.buffer)), lazy.address);
  });

  test('fillAll() fills pages the memory has not grown into yet; after close() it is an ordinary memory holding the whole image', async () => {
    const image = patternImage(16);
    const lazy = await LazyWasmMemory.create({ source: { kind: 'buffer', buffer: image }, initial: 2, maximum: 16, prefetch: false });
    const wasm = instantiateProbe(lazy.memory);
    wasm.store(8, 0x5eed);
    await lazy.fillAll();
    const stats = await lazy.stats();
    assert.equal(stats.pages.present, 16 * PAGES_PER_WASM_PAGE, 'the uncommitted 14 wasm pages are in too (UFFDIO_COPY works under PROT_NONE)');
    await lazy.close();
    assert.equal(wasm.grow(14), 2);
    assert.equal(wasm.load(8), 0x5eed, 'the write stayed');
    wasm.store(8, new Uint32Array(image)[2]!);
    assert.equal(wasm.sum(0, 16 * W), expectedSum(image, 0, 16 * W));
  });

  test('an open lazy memory is never collected, so V8 never unmaps it while it is served (the pager would not hear of it)', async () => {
    setFlagsFromString('--expose-gc');
    const gc = runInNewContext('gc') as () => void;
    const refs = await (async () => {
      const lazy = await LazyWasmMemory.create({ source: { kind: 'buffer', buffer: patternImage(4) }, maximum: 8 });
      instantiateProbe(lazy.memory).load(W);
      return { lazy: new WeakRef(lazy), memory: new WeakRef(lazy.memory) };
    })();
    for (let i = 0; i < 5; i++) {
      await new Promise((resolve) => setTimeout(resolve, 20));
      gc();
    }
    const lazy = refs.lazy.deref();
    assert.ok(lazy && refs.memory.deref(), 'nothing of the caller\'s refers to it, and it is still there');
    assert.equal(instantiateProbe(lazy.memory).load(2 * W + PAGE_SIZE), 2 * PAGES_PER_WASM_PAGE + 1);
    await lazy.close();
  });

  test('close() releases everything: no userfaultfd and no thread left, whatever the policy', async () => {
    const before = openUffdCount();
    const threadsBefore = readdirSync('/proc/self/task').length;
    for (const onHandlerLost of ['poison', 'kill', 'freeze'] as const) {
      const lazy = await LazyWasmMemory.create({ source: { kind: 'buffer', buffer: patternImage(4) }, maximum: 8, onHandlerLost });
      assert.ok(openUffdCount() > before);
      instantiateProbe(lazy.memory).load(W);
      await lazy.close();
      await lazy.close(); // idempotent
      assert.equal(openUffdCount(), before, `${onHandlerLost}: a uffd stayed open`);
      await assert.rejects(lazy.stats(), /closed/);
      assert.equal(readdirSync('/proc/self/task').length, threadsBefore, `${onHandlerLost}: a pager or watchdog thread is still there`);
    }
  });

  test('what cannot be served is refused, and leaves nothing open', async () => {
    const before = openUffdCount();
    const buffer = patternImage(4);
    await assert.rejects(LazyWasmMemory.create({ source: { kind: 'buffer', buffer }, sourceOffset: 100 }), RangeError);
    await assert.rejects(LazyWasmMemory.create({ source: { kind: 'buffer', buffer }, sourceOffset: 4 * W }), /past the end of the image/);
    await assert.rejects(LazyWasmMemory.create({ source: { kind: 'buffer', buffer }, maximum: 65537 }), /wasm32 page count/);
    await assert.rejects(LazyWasmMemory.create({ source: { kind: 'buffer', buffer: new SharedArrayBuffer(PAGE_SIZE + 100) } }), /not a multiple of the 4096-byte page/);
    // V8's own refusals come through unchanged.
    await assert.rejects(LazyWasmMemory.create({ source: { kind: 'buffer', buffer }, initial: 8, maximum: 4 }), RangeError);
    await assert.rejects(LazyWasmMemory.create({ source: { kind: 'buffer', buffer }, shared: true }), TypeError);
    assert.equal(openUffdCount(), before);
  });
});

describe('the README\'s WebAssembly memory example', { skip, timeout: 60_000 }, () => {
  test('runs as written and prints what its comments say', () => {
    const root = fileURLToPath(new URL('../../../', import.meta.url));
    const readme = readFileSync(join(root, 'README.md'), 'utf8');
    const at = readme.indexOf('### WebAssembly memory');
    assert.ok(at >= 0, 'the README has the section');
    const code = /```js\n([\s\S]*?)```/.exec(readme.slice(at))?.[1];
    assert.ok(code, 'a js block in it');
    // Inside the package, so that its `import ... from 'userfault'` resolves to this build (package self-reference).
    const dir = mkdtempSync(join(root, 'dist', 'readme-example-'));
    try {
      writeFileSync(join(dir, 'example.mjs'), code);
      const run = spawnSync(process.execPath, [join(dir, 'example.mjs')], { encoding: 'utf8', timeout: 20_000, killSignal: 'SIGKILL' });
      assert.equal(run.status, 0, run.stderr);
      assert.deepEqual(run.stdout.trim().split('\n'), ['100', '245760']);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

const probe = (mode: string, timeoutMs = 15_000) => runFixture('wasm-probe.js', [mode], timeoutMs);
const phase = (run: ReturnType<typeof probe>, name: string) => run.lines.find((l) => l.phase === name);

describe('a lazy WebAssembly memory whose pager dies', { skip, timeout: 60_000 }, () => {
  test('with the poison policy, wasm code touching a missing page dies by SIGBUS instead of reading zero', () => {
    const run = probe('handler-lost-poison');
    assert.equal(run.signal, 'SIGBUS', run.stderr);
    assert.equal(phase(run, 'pager-killed')?.before, 3, 'the memory was served before');
    assert.ok(phase(run, 'touching'));
    assert.equal(phase(run, 'touched'), undefined, 'no value was read');
  });

  test('with the poison policy, a page grown into by wasm code after the pager died gets SIGBUS too', () => {
    const run = probe('handler-lost-poison-grown');
    assert.equal(run.signal, 'SIGBUS', run.stderr);
    assert.equal(phase(run, 'grown')?.previous, 4);
    assert.equal(phase(run, 'touched'), undefined);
  });

  test('with the kill policy, the process is killed as soon as its pager dies', () => {
    const run = probe('handler-lost-kill');
    assert.equal(run.signal, 'SIGKILL');
    assert.equal(run.timedOut, false, 'killed by the watchdog, not by the test bound');
    assert.equal(phase(run, 'touched'), undefined);
  });

  test('with the freeze policy, the touch waits rather than reading zero', () => {
    const run = probe('handler-lost-freeze', 2000);
    assert.equal(run.timedOut, true, 'the touch never completed');
    assert.ok(phase(run, 'touching'));
    assert.equal(phase(run, 'touched'), undefined);
  });
});

describe('a lazy WebAssembly memory after close()', { skip, timeout: 60_000 }, () => {
  test('filled pages keep their bytes and writes, pages known zero read zero (grown ones too), a page never filled raises SIGBUS — and the probe leaves no snapshot behind', () => {
    const leftovers = (): string[] => readdirSync(tmpdir()).filter((name) => name.startsWith('userfault-wasm-'));
    const before = new Set(leftovers());
    const run = probe('close-then-touch');
    assert.equal(run.signal, 'SIGBUS', run.stderr);
    assert.deepEqual(leftovers().filter((name) => !before.has(name)), [], 'a process that dies of SIGBUS leaves its temporary snapshot behind');
    assert.equal(phase(run, 'closed')?.filled, 1);
    assert.deepEqual(phase(run, 'filled-page'), { phase: 'filled-page', value: 1, written: 0x5eed });
    assert.equal(phase(run, 'known-zero-page')?.value, 0);
    assert.equal(phase(run, 'grown-known-zero-page')?.value, 0);
    assert.ok(phase(run, 'touching'));
    assert.equal(phase(run, 'touched'), undefined, 'no zero was read from a page never filled');
  });

  test('a process that never closes it exits, on its own or by process.exit: V8 unmaps the memory after the pager thread is gone, and waits for no UNMAP event', () => {
    for (const how of ['natural', 'process-exit', 'await-stats']) {
      const run = runFixture('exit-probe.js', ['wasm', how], 10_000);
      assert.equal(run.timedOut, false, `${how}: the process hung`);
      assert.equal(run.status, 0, `${how}: ${run.stderr}`);
      assert.equal(phase(run, 'served')?.value, 7 * PAGES_PER_WASM_PAGE);
      if (how === 'await-stats') assert.ok((phase(run, 'stats')?.faults as number) >= 1);
    }
  });
});
