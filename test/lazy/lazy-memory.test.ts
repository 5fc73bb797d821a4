// LazyMemory in this process: the pager in its worker thread, this thread touching.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { describe, test } from 'node:test';
import { fillPattern } from '../../src/demo/pattern.js';
import { LazyMemory, SourceSpecError, type SourceSpec } from '../../src/lazy/index.js';
import { FunctionSource } from '../../src/sources/function-source.js';
import { PAGE_SIZE } from '../../src/native.js';
import { openUffdCount } from '../handler/helpers.js';
import { runFixture } from '../helpers/run-probe.js';

const PAGES = 32;

/** The VmFlags line /proc/self/smaps shows for the mapping that starts at `address`. */
function vmFlagsAt(address: number): string[] {
  const smaps = readFileSync('/proc/self/smaps', 'utf8').split('\n');
  const start = address.toString(16);
  const header = smaps.findIndex((line) => line.startsWith(`${start}-`));
  assert.ok(header >= 0, `no mapping at 0x${start} in /proc/self/smaps`);
  const flags = smaps.slice(header + 1).find((line) => line.startsWith('VmFlags:'));
  return (flags ?? '').replace('VmFlags:', '').trim().split(/\s+/);
}

describe('lazy memory', () => {
  test('a child forked without exec does not inherit the range (MADV_DONTFORK): it could only read unfilled pages as zero', async () => {
    const image = new SharedArrayBuffer(PAGES * PAGE_SIZE);
    fillPattern(new Uint8Array(image), 0);
    const memory = await LazyMemory.create({ source: { kind: 'buffer', buffer: image } });
    try {
      const flags = vmFlagsAt(memory.address);
      assert.ok(flags.includes('dc'), `VmFlags ${flags.join(' ')} lack dc (do not copy on fork)`);
      assert.ok(flags.includes('um'), `VmFlags ${flags.join(' ')} lack um (userfaultfd missing mode)`);
      // The memory itself is served as before.
      assert.equal(new Uint32Array(memory.buffer, 7 * PAGE_SIZE, 1)[0], 7);
    } finally {
      await memory.close();
    }
  });

  test('close() leaves no userfaultfd open, whatever the policy (the watchdog\'s reference included)', async () => {
    const before = openUffdCount();
    for (const onHandlerLost of ['poison', 'kill', 'freeze'] as const) {
      const memory = await LazyMemory.create({ source: { kind: 'zero', sizeBytes: PAGES * PAGE_SIZE }, onHandlerLost });
      assert.equal(new Uint8Array(memory.buffer)[3 * PAGE_SIZE], 0);
      await memory.close();
      assert.equal(openUffdCount(), before, `${onHandlerLost}: a uffd stayed open`);
    }
  });

  test('a process that leaves a lazy memory open still exits on its own, and waits for an answer it awaits', () => {
    for (const how of ['natural', 'await-stats']) {
      const run = runFixture('exit-probe.js', ['buffer', how], 10_000);
      assert.equal(run.timedOut, false, `${how}: the idle pager kept the process alive`);
      assert.equal(run.status, 0, `${how}: ${run.stderr}`);
      assert.equal(run.lines.find((l) => l.phase === 'served')?.value, 7 * 16);
      if (how === 'await-stats') assert.ok(run.lines.some((l) => l.phase === 'stats'), 'the awaited answer came');
    }
  });
});

describe('lazy memory from a page server', () => {
  test('{ kind: "remote" } fills this process\'s memory over TCP from a page server in another process', async (t) => {
    const { spawn } = await import('node:child_process');
    const { mkdtempSync, rmSync } = await import('node:fs');
    const { tmpdir } = await import('node:os');
    const { join } = await import('node:path');
    const { fileURLToPath } = await import('node:url');
    const { writeSnapshot } = await import('../../src/snapshot/index.js');
    const { findPatternMismatches } = await import('../../src/demo/pattern.js');
    const dir = mkdtempSync(join(tmpdir(), 'uf-lazy-remote-'));
    t.after(() => rmSync(dir, { recursive: true, force: true }));
    const image = new Uint8Array(256 * PAGE_SIZE);
    fillPattern(image, 0, 1, 8);
    const snap = join(dir, 'image.snap');
    await writeSnapshot(snap, { regions: [{ imageOffset: 0, lengthBytes: image.length, name: 'ram' }], content: image });
    const cli = fileURLToPath(new URL('../../src/cli/main.js', import.meta.url));
    const server = spawn(process.execPath, [cli, 'pages', 'serve', '--snapshot', snap, '--listen', '127.0.0.1:0', '--json'], { stdio: ['ignore', 'pipe', 'inherit'] });
    t.after(() => server.kill('SIGKILL'));
    const url = await new Promise<string>((resolve, reject) => {
      let text = '';
      const timer = setTimeout(() => reject(new Error(`no listening line: ${text}`)), 10_000);
      server.stdout!.setEncoding('utf8').on('data', (chunk: string) => {
        text += chunk;
        const m = /"url":"(tcp:\/\/[^"]+)"/.exec(text);
        if (m) {
          clearTimeout(timer);
          resolve(m[1]!);
        }
      });
    });
    const memory = await LazyMemory.create({ source: { kind: 'remote', url } });
    try {
      assert.equal(memory.sizeBytes, image.length);
      assert.deepEqual(findPatternMismatches(memory.bytes(), 0, 1, 8), [], 'every page matches the image');
      const stats = await memory.stats();
      assert.ok(stats.metrics.faults > 0);
      assert.ok(stats.metrics.zeroPages > 0, 'zero pages are known from the server\'s zero map and never read');
    } finally {
      await memory.close();
    }
  });
});

describe('LazyMemory\'s source', () => {
  test('a PageSource object (a FunctionSource) is refused with SourceSpecError saying how to describe it, before any thread starts', async () => {
    const source = new FunctionSource(16 * PAGE_SIZE, (_offset, _length, target) => {
      target.fill(1);
    });
    await assert.rejects(LazyMemory.create({ source: source as unknown as SourceSpec }), (error: unknown) => {
      assert.ok(error instanceof SourceSpecError, String(error));
      assert.equal(error.code, 'EUSAGE');
      assert.match(error.message, /a PageSource object .* was passed as the source: LazyMemory's pager runs in a worker thread/);
      assert.match(error.message, /kind: 'module', url \} whose createSource\(\) makes any PageSource \(a FunctionSource too\)/);
      return true;
    });
    await assert.rejects(LazyMemory.create({ source: { kind: 'tape' } as unknown as SourceSpec }), /"tape" is not a kind of source description/);
  });
});
