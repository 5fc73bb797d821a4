// 5. Lazy restore straight from object storage (docs/s3.md): the bench
// image pushed to a local S3 store (s3rver behind a proxy that counts
// requests and can add latency, in its own process), restored by LazyMemory
// in this process and touched in three orders, against the same restore from
// the local file and from a page server. Per run: time, first-touch latency
// (p50/p99: the touches that faulted dominate), range requests and bytes the
// store sent against the bytes touched, for several chunk spans and for both
// demand policies (only the pages a fault needs, or its whole chunk as e2b's
// 4 MiB chunks do); with 20 ms added to every store request, as a cloud
// store has; and a restore on a warm chunk cache.
//
// Sizes are bounded so a run takes seconds: the image is at most 32 MiB, and
// a run with latency touches at most 256 pages (each fault waits one round trip).
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { LazyMemory } from '../../src/lazy/index.js';
import type { SourceSpec } from '../../src/lazy/source-spec.js';
import { parseS3Url } from '../../src/s3/s3-url.js';
import { pushSnapshot } from '../../src/s3/snapshot-push.js';
import { LocalS3Store, storeEnv } from '../../test/fixtures/s3-store.js';
import { writeBenchImage } from '../image.js';
import { patternOrder, type PatternName } from '../patterns.js';
import { checkTarget, median, pairedRatio, type TargetResult } from '../stats.js';
import { fmt, fmtInt, type Table } from '../table.js';
import type { Section } from './section.js';

const MAX_IMAGE_BYTES = 32 * 1024 * 1024;
const MAX_TOUCHES = 4096;
const MAX_TOUCHES_WITH_LATENCY = 256;
const LATENCY_MS = 20;
const CHUNKS = ['64K', '256K', '1M', '4M'] as const;
const KiB = 1024;
const CHUNK_BYTES: Record<(typeof CHUNKS)[number], number> = { '64K': 64 * KiB, '256K': 256 * KiB, '1M': 1024 * KiB, '4M': 4096 * KiB };

interface S3Variant {
  key: string;
  source: 'file' | 'page server' | 'object store';
  chunk?: (typeof CHUNKS)[number];
  demand?: 'pages' | 'chunk';
  latencyMs: number;
  cache: 'cold' | 'warm' | '-';
}

function variants(): S3Variant[] {
  const list: S3Variant[] = [
    { key: 'file', source: 'file', latencyMs: 0, cache: '-' },
    { key: 'page-server', source: 'page server', latencyMs: 0, cache: '-' },
  ];
  for (const chunk of CHUNKS) for (const demand of ['pages', 'chunk'] as const) list.push({ key: `s3-${chunk}-${demand}`, source: 'object store', chunk, demand, latencyMs: 0, cache: 'cold' });
  list.push({ key: 's3-256K-pages-20ms', source: 'object store', chunk: '256K', demand: 'pages', latencyMs: LATENCY_MS, cache: 'cold' });
  list.push({ key: 's3-4M-chunk-20ms', source: 'object store', chunk: '4M', demand: 'chunk', latencyMs: LATENCY_MS, cache: 'cold' });
  list.push({ key: 's3-256K-pages-20ms-warm', source: 'object store', chunk: '256K', demand: 'pages', latencyMs: LATENCY_MS, cache: 'warm' });
  return list;
}

interface S3Run {
  touches: number;
  ms: number;
  p50Us: number;
  p99Us: number;
  requests: number;
  fetchedBytes: number;
}

export const s3Section: Section = async (ctx, options) => {
  const sizeBytes = Math.min(ctx.image.sizeBytes, MAX_IMAGE_BYTES);
  const workDir = mkdtempSync(join(ctx.workDir, 's3-'));
  const image = sizeBytes === ctx.image.sizeBytes ? ctx.image : await writeBenchImage(join(workDir, 'image.snap'), sizeBytes);
  const pageCount = sizeBytes / 4096;
  const rounds = Math.min(options.rounds, 3);
  const store = await LocalS3Store.start();
  const savedEnv = { ...process.env };
  Object.assign(process.env, storeEnv(store.endpoint));
  let pageServer: ChildProcess | undefined;
  const results = new Map<string, S3Run[]>();
  try {
    for (const chunk of CHUNKS) await pushSnapshot(image.path, parseS3Url(store.url(`bench/${chunk}`)), { endpoint: store.endpoint, chunkBytes: CHUNK_BYTES[chunk] });
    const served = await startPageServer(image.path);
    pageServer = served.child;
    const patterns: PatternName[] = ['sequential', 'random', 'working-set'];
    for (let round = 0; round < rounds; round++) {
      for (const pattern of patterns) {
        const fullOrder = patternOrder(pattern, pageCount, options.seed + round);
        for (const v of variants()) {
          const order = fullOrder.subarray(0, Math.min(fullOrder.length, v.latencyMs > 0 ? Math.min(MAX_TOUCHES_WITH_LATENCY, pageCount / 8) : MAX_TOUCHES));
          const cacheDir = join(workDir, `cache-${round}-${pattern}-${v.chunk}`);
          let spec: SourceSpec;
          if (v.source === 'file') spec = { kind: 'snapshot', path: image.path };
          else if (v.source === 'page server') spec = { kind: 'remote', url: served.url };
          else spec = { kind: 's3', url: store.url(`bench/${v.chunk}`), options: { endpoint: store.endpoint, cacheDir: v.cache === 'cold' ? mkdtempSync(join(workDir, 'cold-')) : cacheDir, demandFetch: v.demand } };
          if (v.cache === 'warm') {
            // Warm the cache with the same restore first (not counted).
            await store.latency(0);
            await touch(spec, order);
          }
          await store.latency(v.latencyMs);
          await store.reset();
          const run = await touch(spec, order);
          const stats = await store.stats();
          run.requests = v.source === 'object store' ? stats.requests : Number.NaN;
          run.fetchedBytes = v.source === 'object store' ? stats.bytesOut : Number.NaN;
          const id = `${pattern}/${v.key}`;
          results.set(id, [...(results.get(id) ?? []), run]);
          ctx.log(`bench: s3 ${id}: ${run.touches} touches in ${run.ms.toFixed(1)} ms, ${run.requests} requests, ${(run.fetchedBytes / (1 << 20)).toFixed(2)} MiB`);
        }
      }
    }
    await store.latency(0);
  } finally {
    process.env = savedEnv;
    pageServer?.kill('SIGKILL');
    await store.stop();
    rmSync(workDir, { recursive: true, force: true });
  }

  const rows: string[][] = [];
  const summary: Record<string, unknown>[] = [];
  const targets: TargetResult[] = [];
  const ratioOf = (id: string): number[] => results.get(id)!.map((r) => r.fetchedBytes / (r.touches * 4096));
  for (const pattern of ['sequential', 'random', 'working-set'] as const) {
    for (const v of variants()) {
      const runs = results.get(`${pattern}/${v.key}`)!;
      const row = {
        pattern,
        variant: v.key,
        source: v.source,
        chunk: v.chunk ?? '-',
        demand: v.demand ?? '-',
        latencyMs: v.latencyMs,
        cache: v.cache,
        touches: runs[0]!.touches,
        ms: median(runs.map((r) => r.ms)),
        p50Us: median(runs.map((r) => r.p50Us)),
        p99Us: median(runs.map((r) => r.p99Us)),
        requests: median(runs.map((r) => r.requests)),
        fetchedMiB: median(runs.map((r) => r.fetchedBytes)) / (1 << 20),
        fetchedPerTouched: median(ratioOf(`${pattern}/${v.key}`)),
      };
      summary.push(row);
      rows.push([
        pattern, v.source, v.chunk ?? '-', v.demand ?? '-', String(v.latencyMs), v.cache, fmtInt(row.touches), fmt(row.ms), fmtInt(row.p50Us), fmtInt(row.p99Us),
        Number.isNaN(row.requests) ? '-' : fmtInt(row.requests), Number.isNaN(row.fetchedMiB) ? '-' : fmt(row.fetchedMiB, 2), Number.isNaN(row.fetchedPerTouched) ? '-' : fmt(row.fetchedPerTouched, 2),
      ]);
    }
    const asRatio = (values: number[]) => pairedRatio(values, values.map(() => 1));
    targets.push(checkTarget(`${pattern} restore from the store (256 KiB chunks, demand pages): bytes fetched / bytes touched`, asRatio(ratioOf(`${pattern}/s3-256K-pages`)), 'at-most', 1.5));
    targets.push(checkTarget(`${pattern} restore on a warm chunk cache: bytes fetched / bytes touched`, asRatio(ratioOf(`${pattern}/s3-256K-pages-20ms-warm`)), 'at-most', 0.01));
  }
  const table: Table = {
    title: `5. Lazy restore from object storage: a ${fmtInt(sizeBytes / (1 << 20))} MiB image, LazyMemory, first touch of each page (median of ${rounds} rounds)`,
    columns: ['pattern', 'source', 'chunk', 'demand fetch', 'store ms/req', 'cache', 'touches', 'ms', 'p50 us', 'p99 us', 'requests', 'fetched MiB', 'fetched/touched'],
    numeric: [false, false, false, false, true, false, true, true, true, true, true, true, true],
    rows,
    notes: [
      `The store is s3rver on 127.0.0.1 behind a proxy; "store ms/req" is latency the proxy adds to every request. Runs with latency touch the first ${Math.min(MAX_TOUCHES_WITH_LATENCY, pageCount / 8)} pages of the order, the others at most ${MAX_TOUCHES}.`,
      '"demand fetch" pages: a fault fetches only the stored pages it needs; chunk: its whole chunk. Requests and bytes count everything the store sent (HEAD, the index, pages).',
      'A warm cache is the same restore run once before on the same chunk cache directory.',
    ],
  };
  return { name: 's3', tables: [table], targets, summary, runs: {} };
};

async function touch(spec: SourceSpec, order: Uint32Array): Promise<S3Run> {
  const memory = await LazyMemory.create({ source: spec });
  try {
    const bytes = memory.bytes();
    const latencies = new Float64Array(order.length);
    let sink = 0;
    const started = performance.now();
    for (let i = 0; i < order.length; i++) {
      const before = performance.now();
      sink ^= bytes[order[i]! * 4096]!;
      latencies[i] = performance.now() - before;
    }
    const ms = performance.now() - started;
    if (sink === -1) throw new Error('unreachable');
    latencies.sort();
    const at = (q: number): number => latencies[Math.min(latencies.length - 1, Math.floor(q * latencies.length))]! * 1000;
    return { touches: order.length, ms, p50Us: at(0.5), p99Us: at(0.99), requests: 0, fetchedBytes: 0 };
  } finally {
    await memory.close();
  }
}

async function startPageServer(snapshot: string): Promise<{ child: ChildProcess; url: string }> {
  const cli = fileURLToPath(new URL('../../src/cli/main.js', import.meta.url));
  const child = spawn(process.execPath, [cli, 'pages', 'serve', '--snapshot', snapshot, '--listen', '127.0.0.1:0', '--json'], { stdio: ['ignore', 'pipe', 'inherit'] });
  const url = await new Promise<string>((resolve, reject) => {
    let text = '';
    const timer = setTimeout(() => reject(new Error(`the page server did not listen: ${text}`)), 10_000);
    child.stdout!.setEncoding('utf8').on('data', (chunk: string) => {
      text += chunk;
      const m = /"url":"(tcp:\/\/[^"]+)"/.exec(text);
      if (m) {
        clearTimeout(timer);
        resolve(m[1]!);
      }
    });
  });
  return { child, url };
}
