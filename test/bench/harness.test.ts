// The bench harness: its pure parts, and a tiny full run so that it cannot rot
// (seconds, not a measurement: 2 MiB, one round).
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SECTION_NAMES, parseBenchArgs, parseSize } from '../../bench/args.js';
import { fillImage, pageTag } from '../../bench/image.js';
import { firstTouchOrder, randomOrder, threadSlicesOrder, workingSetOrder } from '../../bench/patterns.js';
import { runBench } from '../../bench/run.js';
import { kvmSkipReason } from '../vm/helpers.js';
import { checkTarget, median, pairedRatio } from '../../bench/stats.js';
import { Userfaultfd } from '../../src/uffd/userfaultfd.js';

function smokeSkipReason(): string | undefined {
  try {
    execFileSync('gcc', ['--version'], { stdio: 'ignore' });
  } catch {
    return 'gcc is not installed (the bench compiles its C programs)';
  }
  try {
    Userfaultfd.probe();
  } catch (error) {
    return `no userfaultfd here: ${(error as Error).message}`;
  }
  return undefined;
}

describe('bench arguments', () => {
  test('sizes take K, M and G suffixes and must be whole pages', () => {
    assert.equal(parseSize('256M'), 256 << 20);
    assert.equal(parseSize('1G'), 1 << 30);
    assert.equal(parseSize('64KiB'), 64 << 10);
    assert.throws(() => parseSize('1000'), /multiple of 4 KiB/);
    assert.throws(() => parseSize('lots'), /suffix/);
  });

  test('the defaults are 256 MiB, 5 rounds and every section', () => {
    const options = parseBenchArgs([]);
    assert.equal(options.sizeBytes, 256 << 20);
    assert.equal(options.rounds, 5);
    assert.deepEqual(options.sections, [...SECTION_NAMES]);
  });

  test('an unknown section is refused by name', () => {
    assert.throws(() => parseBenchArgs(['--sections', 'per-fault,warp']), /unknown section warp/);
  });
});

describe('bench patterns', () => {
  test('a random order visits every page once', () => {
    const order = randomOrder(1000, 7);
    assert.deepEqual([...order].sort((a, b) => a - b), Array.from({ length: 1000 }, (_, i) => i));
    assert.deepEqual(randomOrder(1000, 7), order);
  });

  test('a working set is 1/8 of the pages, in runs, each page once', () => {
    const order = workingSetOrder(4096, 3);
    assert.equal(order.length, 512);
    assert.equal(firstTouchOrder(order).length, order.length);
  });

  test('each thread of a sliced order stays in its own part of the memory', () => {
    const order = threadSlicesOrder(1000, 2, 100, 5);
    assert.ok(order.subarray(0, 100).every((page) => page < 500));
    assert.ok(order.subarray(100).every((page) => page >= 500 && page < 1000));
  });
});

describe('bench image', () => {
  test('every page starts with its tag and holds no zero byte', () => {
    const bytes = new Uint8Array(3 * 4096);
    fillImage(bytes, 4096, bytes.length);
    const view = new DataView(bytes.buffer);
    for (let i = 0; i < 3; i++) assert.equal(view.getBigUint64(i * 4096, true), pageTag(i + 1));
    assert.ok(bytes.every((b) => b !== 0));
  });
});

describe('bench stats', () => {
  test('ratios are taken round by round', () => {
    const ratio = pairedRatio([10, 20, 30], [5, 20, 10]);
    assert.equal(ratio.median, 2);
    assert.equal(ratio.min, 1);
    assert.equal(ratio.max, 3);
    assert.equal(median([3, 1, 2, 4]), 2.5);
  });

  test('a missed target says by how much', () => {
    const missed = checkTarget('x', pairedRatio([15], [10]), 'at-most', 1.1);
    assert.equal(missed.met, false);
    assert.ok(Math.abs(missed.shortfall - 1.5 / 1.1) < 1e-9);
    assert.equal(checkTarget('y', pairedRatio([30], [10]), 'at-least', 3).met, true);
  });
});

type RemoteRun = {
  toucher: { touches: number; touchNs: number; eagerReadNs: number; mismatches: number };
  handler: { kind: string; remote?: { urgentReadsSent: number; bulkReadsSent: number }; stream?: { reads?: { reads: number; errors: number } } };
  server?: { role: string; reads: number }[];
};

/**
 * The remote section read from the page server in another process, over one
 * connection or two as asked, and the C client spoke the protocol to it (a
 * CRC it got wrong would have ended its run).
 */
function checkRemoteRuns(all: Record<string, RemoteRun[]>): void {
  const run = (id: string): RemoteRun => all[id]![0]!;
  const roles = (r: RemoteRun): string[] => (r.server ?? []).map((c) => c.role).sort();
  // RemoteSource as shipped: an urgent and a bulk connection; the stream's reads go on the bulk one.
  const urgent = run('demand/stream-urgent');
  assert.deepEqual(roles(urgent), ['page-client-bulk', 'page-client-urgent']);
  assert.ok(urgent.handler.remote!.bulkReadsSent > 0 && urgent.handler.stream!.reads!.reads > 0);
  assert.equal(urgent.handler.stream!.reads!.errors, 0);
  // singleConnection: one connection carries both.
  const single = run('demand/stream-single');
  assert.deepEqual(roles(single), ['page-client-urgent']);
  assert.equal(single.handler.remote!.bulkReadsSent, 0);
  assert.ok(single.server![0]!.reads > 40);
  // The C client's stream runs from another client process: the C client's own session has one connection.
  const cStream = run('demand/c-stream');
  assert.deepEqual(roles(cStream), ['page-client-urgent']);
  assert.ok(cStream.handler.stream!.reads!.reads > 0);
  const c = run('sequential/c-remote');
  assert.equal(c.handler.kind, 'c');
  assert.deepEqual(roles(c), ['page-client-urgent']);
  assert.ok(c.server![0]!.reads > 0);
  // The machine's floor: the toucher installed every page itself (not timed), then touched each, and read it right.
  const floor = run('sequential/first-touch');
  assert.equal(floor.handler.kind, 'none');
  assert.equal(roles(floor).length, 0, 'the floor never talks to the page server');
  assert.ok(floor.toucher.touches > 0 && floor.toucher.touchNs > 0 && floor.toucher.eagerReadNs > 0);
  assert.equal(floor.toucher.mismatches, 0);
}

type S3Run = { touches: number; requests: number; fetchedBytes: number; store?: { requests: number; byMethod: Record<string, number>; rangeGets: number } };

/**
 * The s3 section restored from the store in another process (range GETs
 * counted by its proxy), a warm cache sent one HEAD and nothing else, and the
 * file and the page server were measured beside it.
 */
function checkS3Runs(all: Record<string, S3Run[]>): void {
  const run = (id: string): S3Run => {
    const runs = all[id];
    assert.ok(runs && runs.length === 1, `the s3 section ran ${id} once`);
    return runs[0]!;
  };
  for (const pattern of ['sequential', 'random', 'working-set']) {
    const cold = run(`${pattern}/s3-256K-pages-cold`);
    assert.ok(cold.store!.rangeGets > 0 && cold.fetchedBytes >= cold.touches * 4096, `${pattern}: a cold restore read its pages from the store`);
    const warm = run(`${pattern}/s3-256K-pages-warm`);
    assert.deepEqual(warm.store!.byMethod, { HEAD: 1 }, `${pattern}: a warm cache asks the store only whether the object is the same`);
    assert.ok(run(`${pattern}/file`).fetchedBytes >= run(`${pattern}/file`).touches * 4096);
    assert.ok(run(`${pattern}/page-server`).requests > 0);
  }
  assert.ok(run('latency/s3-256K-pages-cold-20ms').store!.rangeGets > 0);
}

type FirecrackerRun = {
  toucher: { touches: number; mismatches: number };
  handler: { kind: string; metrics?: { faults: number; pagesCopied: number; sourceReads: number }; probePagesCopied?: number; stats?: { pagesFilled?: number; sharedPagesWritten?: number } };
};

/**
 * The firecracker section's serve rows were served by `userfault serve` (a
 * client-gone line with the pager's counters for each run: the Firecracker
 * handshake was accepted and the faults went through its pager), and its C
 * handler took the same handshake.
 */
function checkFirecrackerRuns(all: Record<string, FirecrackerRun[]>): void {
  for (const pattern of ['sequential', 'random']) {
    for (const key of ['serve-raw', 'serve-snapshot', 'serve-remote']) {
      const run = all[`${pattern}/${key}`]![0]!;
      assert.equal(run.handler.kind, 'serve', `${pattern}/${key} was served by userfault serve`);
      assert.ok(run.handler.metrics!.faults > 0 && run.handler.metrics!.pagesCopied + run.handler.probePagesCopied! === run.toucher.touches, `${pattern}/${key}: serve copied every page the client stored to`);
    }
    assert.equal(all[`${pattern}/c-pread`]![0]!.handler.kind, 'c');
    assert.equal(all[`${pattern}/kernel`]![0]!.handler.kind, 'none');
    // Zero-copy rows: the lazy one filled the memfd as faults came, the other found it full; no store reached it (the runner fails a run that did).
    const lazy = all[`${pattern}/c-memfd`]![0]!.handler.stats!;
    assert.equal(lazy.pagesFilled, all[`${pattern}/c-memfd`]![0]!.toucher.touches);
    assert.equal(all[`${pattern}/c-memfd-filled`]![0]!.handler.stats!.pagesFilled, 0);
    for (const key of ['c-memfd', 'c-memfd-filled']) assert.equal(all[`${pattern}/${key}`]![0]!.handler.stats!.sharedPagesWritten, 0, `${pattern}/${key}: the client's stores never reached the shared memfd`);
  }
}

/** Processes whose parent is this one, by command line (the s3 store and the page server are children). */
function childCommands(): string[] {
  const out: string[] = [];
  for (const pid of readdirSync('/proc').filter((name) => /^\d+$/.test(name))) {
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      if (ppid === process.pid) out.push(readFileSync(`/proc/${pid}/cmdline`, 'utf8').replaceAll('\0', ' '));
    } catch {
      // Gone between the listing and the read.
    }
  }
  return out;
}

describe('bench smoke run', { skip: smokeSkipReason() }, () => {
  test('every section runs at a tiny size and writes its table and JSON; the remote one reads from a page server in another process, the s3 one from a local store it stops, the firecracker one through userfault serve', { timeout: 180_000 }, async (t) => {
    const outDir = mkdtempSync(join(tmpdir(), 'uf-bench-test-'));
    const logged: string[] = [];
    try {
      // The VM resume section runs a guest: only where /dev/kvm is (the rest runs everywhere).
      const withVm = kvmSkipReason() === undefined;
      const sections = SECTION_NAMES.filter((name) => withVm || name !== 'vm-resume');
      const options = { ...parseBenchArgs(['--size', '2M', '--rounds', '1', '--concurrency-faults', '40', '--remote-faults', '40', '--out', outDir, '--sections', sections.join(',')]) };
      const outcome = await runBench(options, (line) => logged.push(line));
      assert.deepEqual(outcome.sections.map((s) => s.name), sections);
      for (const title of ['1. Per-fault cost', '2. Lazy restore', '3. Working set', '4. Concurrency', '5a. Restore from a page server', '5b. Demand faults over the network', '7a. Lazy restore from object storage', '7b. Demand faults from object storage', ...(withVm ? ['8. VM resume'] : []), '9. The Firecracker path', 'Targets']) {
        assert.ok(outcome.text.includes(title), `the output has "${title}"`);
      }
      assert.ok(outcome.targets.length >= 10);
      const json = JSON.parse(readFileSync(outcome.jsonPath, 'utf8')) as { targets: unknown[]; sections: Record<string, { runs: Record<string, unknown[]> }> };
      assert.equal(json.targets.length, outcome.targets.length);
      assert.ok(Object.values(json.sections['per-fault']!.runs).every((runs) => runs.length === 1));
      assert.equal(outcome.targets.filter((t) => t.name.startsWith('remote:')).length, 5, "the remote section has its four targets and this machine's floor");
      checkRemoteRuns(json.sections['remote']!.runs as Record<string, RemoteRun[]>);
      assert.equal(outcome.targets.filter((t) => t.name.startsWith('s3:')).length, 5, 'the s3 section has its five targets');
      checkS3Runs(json.sections['s3']!.runs as Record<string, S3Run[]>);
      assert.equal(outcome.targets.filter((t) => t.name.startsWith('firecracker:')).length, 4, 'the firecracker section has its four targets');
      checkFirecrackerRuns(json.sections['firecracker']!.runs as Record<string, FirecrackerRun[]>);
      // The s3 section stopped its store (s3rver and its proxy) and the page server, the firecracker section its serve processes; the store's objects and the chunk caches were in the work directory, removed.
      assert.deepEqual(childCommands().filter((c) => /s3-store-main|pages serve| serve --socket/.test(c)), []);
      if (withVm) {
        // vm-resume restored its guest each way once (each ran on and verified clean, or the section threw) and left no VMM behind.
        const resumes = json.sections['vm-resume']!.runs as Record<string, { resumedMs: number; openedMs: number }[]>;
        assert.deepEqual(Object.keys(resumes).sort(), ['eager', 'lazy', 'lazy-verify-first']);
        for (const [key, runs] of Object.entries(resumes)) assert.ok(runs.length === 1 && runs[0]!.resumedMs > runs[0]!.openedMs && runs[0]!.openedMs > 0, key);
        assert.equal(outcome.targets.filter((t) => t.name.startsWith('vm-resume:')).length, 1, 'the vm-resume section has its target');
        assert.deepEqual(childCommands().filter((c) => /vmm-main|vm restore/.test(c)), []);
      } else t.diagnostic('vm-resume skipped: /dev/kvm is not available');
      const workDir = /^bench: work directory (.+)$/.exec(logged.find((line) => line.startsWith('bench: work directory ')) ?? '')?.[1];
      assert.ok(workDir !== undefined && !existsSync(workDir), `the work directory ${workDir} is gone`);
    } finally {
      rmSync(outDir, { recursive: true, force: true });
    }
  });
});
