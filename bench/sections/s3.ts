// 7. Lazy restore straight from object storage (issue 14, "Measured"; README,
// "Snapshots in object storage"): the bench image pushed to a local S3 store
// (s3rver behind a proxy that counts requests and bytes and can add latency,
// in its own process), restored by LazyMemory in this process and touched in
// three orders, against the same restore from the local file and from a page
// server (`userfault pages serve`, its own process). Per run: the open (HEAD,
// header, index) and the touches timed apart, per-fault latency (the pager's:
// fault read to page installed), and what crossed from the source (requests
// and bytes) against the bytes the guest touched; for several chunk sizes and
// both demand policies (the stored pages a fault needs, or its whole chunk as
// e2b's 4 MiB chunks are), on a cold chunk cache and on a warm one; then
// random demand faults with 20 ms added to every store request, as a cloud
// store has.
//
// Sizes are bounded so a run takes seconds: the image is at most 32 MiB, a
// run touches at most 1024 pages, one with latency at most 128 (each fault
// waits a round trip: 128 x 20 ms is 2.6 s).
import { mkdtempSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { LazyMemory, type LazyMemoryStats } from '../../src/lazy/index.js';
import type { SourceSpec } from '../../src/lazy/source-spec.js';
import { parseS3Url } from '../../src/s3/s3-url.js';
import { pushSnapshot } from '../../src/s3/snapshot-push.js';
import { LocalS3Store, storeEnv, type StoreStats } from '../../test/fixtures/s3-store.js';
import { pageTag, writeBenchImage } from '../image.js';
import { BenchPageServer } from '../page-server.js';
import { patternOrder, type PatternName } from '../patterns.js';
import { checkTarget, median, pairedRatio, perRoundValues, type TargetResult } from '../stats.js';
import { fmt, fmtInt, type Table } from '../table.js';
import type { Section } from './section.js';

const PAGE = 4096;
const MAX_IMAGE_BYTES = 32 * 1024 * 1024;
const MAX_TOUCHES = 1024;
const MAX_TOUCHES_WITH_LATENCY = 128;
const LATENCY_MS = 20;
/** The goal of the issue: fetch at most this many times the bytes the guest touched. */
const FETCH_GOAL = 1.5;
const KiB = 1024;
const CHUNKS = { '256K': 256 * KiB, '4M': 4096 * KiB } as const;
type ChunkName = keyof typeof CHUNKS;
/** What `snapshot push` and S3Source do when not told: 256 KiB chunks, demand reads fetch only the pages they need. */
const DEFAULT_CHUNK: ChunkName = '256K';
const PATTERNS: PatternName[] = ['sequential', 'random', 'working-set'];

interface S3Variant {
  key: string;
  source: 'file' | 'page server' | 'object store';
  chunk?: ChunkName;
  demand?: 'pages' | 'chunk';
  latencyMs: number;
  cache?: 'cold' | 'warm';
}

function s3(chunk: ChunkName, demand: 'pages' | 'chunk', cache: 'cold' | 'warm', latencyMs = 0): S3Variant {
  return { key: `s3-${chunk}-${demand}-${cache}${latencyMs ? `-${latencyMs}ms` : ''}`, source: 'object store', chunk, demand, latencyMs, cache };
}

/** Table a: every pattern, no latency added. */
function restoreVariants(): S3Variant[] {
  return [
    { key: 'file', source: 'file', latencyMs: 0 },
    { key: 'page-server', source: 'page server', latencyMs: 0 },
    s3(DEFAULT_CHUNK, 'pages', 'cold'),
    s3(DEFAULT_CHUNK, 'pages', 'warm'),
    // Chunk size matters little when a fault fetches only its pages (it bounds a request's span), and a lot when it fetches the chunk.
    s3('4M', 'pages', 'cold'),
    s3(DEFAULT_CHUNK, 'chunk', 'cold'),
    // e2b's layout: 4 MiB chunks, a fault fetches its whole chunk.
    s3('4M', 'chunk', 'cold'),
  ];
}

/** Table b: random demand faults, 20 ms added to every store request. */
function latencyVariants(): S3Variant[] {
  return [
    { key: 'file', source: 'file', latencyMs: 0 },
    { key: 'page-server', source: 'page server', latencyMs: 0 },
    s3(DEFAULT_CHUNK, 'pages', 'cold', LATENCY_MS),
    s3(DEFAULT_CHUNK, 'pages', 'warm', LATENCY_MS),
    s3('4M', 'chunk', 'cold', LATENCY_MS),
  ];
}

interface S3Run {
  touches: number;
  openMs: number;
  touchMs: number;
  faults: number;
  /** The pager's fault latency (fault read to page installed), us. */
  faultP50Us: number;
  faultP99Us: number;
  /** Store requests (every HEAD and GET), or the pager's source reads for the file and the page server. */
  requests: number;
  /** Bytes the store sent (index included), or the bytes the pager read from the file or the page server. */
  fetchedBytes: number;
  store?: StoreStats;
}

export const s3Section: Section = async (ctx, options) => {
  const sizeBytes = Math.min(ctx.image.sizeBytes, MAX_IMAGE_BYTES);
  const workDir = mkdtempSync(join(ctx.workDir, 's3-'));
  const image = sizeBytes === ctx.image.sizeBytes ? ctx.image : await writeBenchImage(join(workDir, 'image.snap'), sizeBytes);
  const pageCount = sizeBytes / PAGE;
  const rounds = Math.min(options.rounds, 3);
  const touches = Math.min(MAX_TOUCHES, pageCount);
  const latencyTouches = Math.min(MAX_TOUCHES_WITH_LATENCY, Math.max(1, pageCount >> 3));
  // S3Source (in the pager's worker, which takes a copy of this environment when it starts) finds the store and s3rver's credentials here.
  const env = storeEnv('http://127.0.0.1:0');
  const savedEnv = Object.fromEntries(Object.keys(env).map((name) => [name, process.env[name]]));
  let store: LocalS3Store | undefined;
  let server: BenchPageServer | undefined;
  const results = new Map<string, S3Run[]>();
  try {
    store = await LocalS3Store.start({ parentDir: workDir });
    Object.assign(process.env, storeEnv(store.endpoint));
    const chunks = new Set(Object.keys(CHUNKS) as ChunkName[]);
    for (const chunk of chunks) await pushSnapshot(image.path, parseS3Url(store.url(`bench/${chunk}`)), { endpoint: store.endpoint, chunkBytes: CHUNKS[chunk] });
    server = await BenchPageServer.start(image.path);
    ctx.log(`s3: store on ${store.endpoint}, page server pid ${server.pid}; ${fmtInt(sizeBytes >> 20)} MiB image pushed in chunks of ${[...chunks].join(', ')}`);
    const runOne = async (id: string, v: S3Variant, order: Uint32Array): Promise<void> => {
      const run = await restoreOnce(store!, server!, image.path, v, order, workDir, sizeBytes);
      results.set(id, [...(results.get(id) ?? []), run]);
      ctx.log(
        `bench: s3 ${id}: ${run.touches} touches, open ${run.openMs.toFixed(1)} ms + ${run.touchMs.toFixed(1)} ms, ${run.faults} faults (p50 ${run.faultP50Us} us), ` +
          `${run.requests} requests, ${(run.fetchedBytes / (1 << 20)).toFixed(2)} MiB`,
      );
    };
    for (let round = 0; round < rounds; round++) {
      for (const pattern of PATTERNS) {
        const order = patternOrder(pattern, pageCount, options.seed + round).subarray(0, touches);
        for (const v of restoreVariants()) await runOne(`${pattern}/${v.key}`, v, order);
      }
      const order = patternOrder('random', pageCount, options.seed + 1000 + round).subarray(0, latencyTouches);
      for (const v of latencyVariants()) await runOne(`latency/${v.key}`, v, order);
    }
  } finally {
    for (const [name, value] of Object.entries(savedEnv)) {
      if (value === undefined) delete process.env[name];
      else process.env[name] = value;
    }
    await server?.stop().catch(() => server?.kill());
    await store?.stop();
    rmSync(workDir, { recursive: true, force: true });
  }

  const summary: Record<string, unknown>[] = [];
  const targets: TargetResult[] = [];
  const perRound = (id: string, pick: (run: S3Run) => number): number[] => {
    const runs = results.get(id);
    if (!runs) throw new Error(`no runs for variant ${id}`);
    return runs.map(pick);
  };
  const ratio = (run: S3Run): number => run.fetchedBytes / (run.touches * PAGE);
  const rowOf = (table: string, group: string, v: S3Variant): string[] => {
    const id = `${group}/${v.key}`;
    const m = (pick: (run: S3Run) => number): number => median(perRound(id, pick));
    const row = {
      table,
      pattern: group === 'latency' ? 'random' : group,
      variant: v.key,
      source: v.source,
      chunk: v.chunk,
      demandFetch: v.demand,
      storeLatencyMs: v.latencyMs,
      cache: v.cache,
      touches: results.get(id)![0]!.touches,
      openMs: m((r) => r.openMs),
      touchMs: m((r) => r.touchMs),
      faults: m((r) => r.faults),
      faultP50Us: m((r) => r.faultP50Us),
      faultP99Us: m((r) => r.faultP99Us),
      requests: m((r) => r.requests),
      fetchedMiB: m((r) => r.fetchedBytes) / (1 << 20),
      fetchedPerTouched: m(ratio),
    };
    summary.push(row);
    return [
      row.pattern,
      v.source,
      v.chunk ?? '-',
      v.demand ?? '-',
      v.cache ?? '-',
      fmtInt(row.touches),
      fmt(row.openMs),
      fmt(row.touchMs),
      fmtInt(row.faults),
      fmtInt(row.faultP50Us),
      fmtInt(row.faultP99Us),
      fmtInt(row.requests),
      fmt(row.fetchedMiB, 2),
      fmt(row.fetchedPerTouched, 2),
    ];
  };
  const columns = ['pattern', 'source', 'chunk', 'demand fetch', 'cache', 'touches', 'open ms', 'touch ms', 'faults', 'fault p50 us', 'fault p99 us', 'requests', 'fetched MiB', 'fetched / touched'];
  const numeric = [false, false, false, false, false, true, true, true, true, true, true, true, true, true];

  const rowsA = PATTERNS.flatMap((pattern) => restoreVariants().map((v) => rowOf('restore', pattern, v)));
  for (const pattern of PATTERNS) {
    const cold = s3(DEFAULT_CHUNK, 'pages', 'cold').key;
    targets.push(
      checkTarget(`s3: ${pattern} restore from the store, cold cache (${DEFAULT_CHUNK} chunks, demand fetches pages): bytes fetched / bytes touched`, perRoundValues(perRound(`${pattern}/${cold}`, ratio)), 'at-most', FETCH_GOAL),
    );
  }
  // A warm cache: the store sends a HEAD (is the object the one cached?) and nothing else.
  targets.push(checkTarget(`s3: random restore on a warm chunk cache: bytes fetched / bytes touched`, perRoundValues(perRound(`random/${s3(DEFAULT_CHUNK, 'pages', 'warm').key}`, ratio)), 'at-most', 0.01));
  const tableA: Table = {
    title: `7a. Lazy restore from object storage: a ${fmtInt(sizeBytes >> 20)} MiB image, the first ${fmtInt(touches)} pages of each order touched once, LazyMemory (median of ${rounds} rounds)`,
    columns,
    numeric,
    rows: rowsA,
    notes: [
      'The store is s3rver on 127.0.0.1 behind a proxy in its own process (test/fixtures/s3-store-main.ts) that counts every request and the body bytes it sends; the page server is `userfault pages serve`, its own process.',
      'open ms: LazyMemory.create, the source opened in the pager worker (the store: HEAD, header and index; a warm cache: HEAD, the index read from the cache). touch ms: the touches, every fault served.',
      'faults and fault p50/p99: the pager\'s, from the fault read to the page installed; pages that read-ahead brought in do not fault.',
      'requests, fetched: for the store, every request and every body byte it sent (the index included); for the file and the page server, the pager\'s source reads and the bytes they read.',
      'fetched / touched: fetched bytes over 4 KiB x touches (the issue\'s goal: at most 1.5). demand fetch pages: a fault fetches only the stored pages its read needs; chunk: the whole chunk, as e2b\'s 4 MiB chunks do.',
      'cold: a new, empty chunk cache directory; warm: the same restore run once before (not counted) on the same directory, so every page touched is on disk.',
    ],
  };

  const rowsB = latencyVariants().map((v) => rowOf('latency', 'latency', v));
  const p50 = perRound(`latency/${s3(DEFAULT_CHUNK, 'pages', 'cold', LATENCY_MS).key}`, (r) => r.faultP50Us / 1000);
  targets.push(checkTarget(`s3: random demand fault from the store at ${LATENCY_MS} ms a request, cold cache: p50 / one request's ${LATENCY_MS} ms`, pairedRatio(p50, p50.map(() => LATENCY_MS)), 'at-most', 1.5));
  const tableB: Table = {
    title: `7b. Demand faults from object storage at ${LATENCY_MS} ms a store request: ${fmtInt(latencyTouches)} random pages touched (median of ${rounds} rounds)`,
    columns,
    numeric,
    rows: rowsB,
    notes: [
      `The proxy holds every store request ${LATENCY_MS} ms before passing it on, as a cloud store takes; the file and the page server (loopback, no latency added) are for reference.`,
      'A warm cache answers each fault from disk: its one store request is the HEAD at open.',
    ],
  };
  return { name: 's3', tables: [tableA, tableB], targets, summary, runs: Object.fromEntries(results) };
};

/** One restore: open, touch every page of `order` once, read the pager's figures and the store's, close. */
async function restoreOnce(store: LocalS3Store, server: BenchPageServer, imagePath: string, v: S3Variant, order: Uint32Array, workDir: string, sizeBytes: number): Promise<S3Run> {
  const cacheDir = v.source === 'object store' ? mkdtempSync(join(workDir, 'cache-')) : undefined;
  try {
    let spec: SourceSpec;
    if (v.source === 'file') spec = { kind: 'snapshot', path: imagePath };
    else if (v.source === 'page server') spec = { kind: 'remote', url: server.url };
    else spec = { kind: 's3', url: store.url(`bench/${v.chunk}`), options: { endpoint: store.endpoint, cacheDir, demandFetch: v.demand } };
    if (v.cache === 'warm') {
      await store.latency(0);
      await touch(spec, order, sizeBytes);
    }
    await store.latency(v.latencyMs);
    await store.reset();
    const run = await touch(spec, order, sizeBytes);
    await store.latency(0);
    if (v.source === 'object store') {
      const stats = await store.stats();
      run.store = stats;
      run.requests = stats.requests;
      run.fetchedBytes = stats.bytesOut;
    }
    return run;
  } finally {
    if (cacheDir) rmSync(cacheDir, { recursive: true, force: true });
  }
}

async function touch(spec: SourceSpec, order: Uint32Array, sizeBytes: number): Promise<S3Run> {
  const opening = performance.now();
  // sizeBytes given: otherwise LazyMemory opens the source once more just to learn its size.
  const memory = await LazyMemory.create({ source: spec, sizeBytes });
  let stats: LazyMemoryStats;
  let touchMs: number;
  const openMs = performance.now() - opening;
  try {
    const view = new DataView(memory.buffer);
    let wrong = -1;
    const started = performance.now();
    // Each touch reads the page's tag: a restore that installs a wrong page fails the bench, not just slows it.
    for (let i = 0; i < order.length; i++) if (view.getBigUint64(order[i]! * PAGE, true) !== pageTag(order[i]!)) wrong = order[i]!;
    touchMs = performance.now() - started;
    if (wrong >= 0) throw new Error(`the restore from ${spec.kind} installed a wrong page ${wrong}`);
    stats = await memory.stats();
  } finally {
    await memory.close();
  }
  const m = stats.metrics;
  if (m.sourceErrors > 0 || m.pagesPoisoned > 0) throw new Error(`the restore from ${spec.kind} had ${m.sourceErrors} source errors, ${m.pagesPoisoned} pages poisoned`);
  return {
    touches: order.length,
    openMs,
    touchMs,
    faults: m.faults,
    faultP50Us: m.latencyMicros.p50,
    faultP99Us: m.latencyMicros.p99,
    requests: m.sourceReads,
    fetchedBytes: m.bytesCopied,
  };
}
