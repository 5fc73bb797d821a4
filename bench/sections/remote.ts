// 5. Restore from anywhere (issue 9, "Measured"): the snapshot restored lazily
// from a page server over loopback TCP (the real `userfault pages serve`, in a
// process of its own) against the same restore from the local file (the
// restore section's variants) and against a minimal C client of the same
// protocol (bench/c/page-client.h); then demand-fault latency over the network
// while a bulk stream runs on the same source, with the urgent channel and
// with everything on one connection (RemoteSource singleConnection).
import { execFileSync } from 'node:child_process';
import type { HandlerSpec, ReadsStreamSpec, StreamSpec } from '../handlers/spec.js';
import { processRunNs } from '../handlers/thread-cpu.js';
import { connectionsOf, BenchPageServer } from '../page-server.js';
import { patternOrder, randomOrder, type PatternName } from '../patterns.js';
import { runInterleaved, type BenchContext, type RunResult, type ToucherSpec, type Variant } from '../runner.js';
import { checkTarget, median, pairedRatio, perRoundValues, type TargetResult } from '../stats.js';
import { fmt, fmtInt, fmtRatio, type Table } from '../table.js';
import { RESTORE_PREFETCH, restoreVariants } from './restore.js';
import { p50Us, p99Us, perRound, sourceReads, toJsonRuns, totalMs, type Section } from './section.js';

/** The bulk stream: a prefetch-all's reads (64 pages, the Pager's 32 background reads in flight). */
const STREAM_READS: ReadsStreamSpec = { kind: 'reads', runPages: 64, inFlight: 32 };
/** The same stream paced to a rate that leaves the CPUs room (10^6 bytes/s). */
const PACED_MB_PER_SECOND = 250;
const STREAM_PACED: ReadsStreamSpec = { ...STREAM_READS, mbPerSecond: PACED_MB_PER_SECOND };

interface RestoreDef {
  key: string;
  handler: string;
  source: string;
  spec: HandlerSpec;
  patterns?: PatternName[];
  /** The toucher's memory, when not uffd handed to the handler. */
  memory?: ToucherSpec['memory'];
}

/**
 * The floor under every restore's time here: the toucher's first touches of
 * pages already in place (the toucher installs them all with UFFDIO_COPY
 * first, not timed). On this VM a first touch of a newly mapped page costs
 * several µs (its memory is shadow-paged by the hypervisor), so this row says
 * how fast any restore of the image could be on this machine.
 */
const FIRST_TOUCH: RestoreDef = {
  key: 'first-touch',
  handler: 'none (the floor)',
  source: 'every page installed (UFFDIO_COPY) before the first touch; the touches alone',
  spec: { kind: 'none' },
  patterns: ['sequential'],
  memory: 'installed',
};

function restoreDefs(): RestoreDef[] {
  const prefetch = RESTORE_PREFETCH;
  const reused = (key: string): RestoreDef => {
    const d = restoreVariants().find((v) => v.key === key);
    if (!d) throw new Error(`the restore section has no variant ${key}`);
    return { key: `local-${key}`, handler: d.handler, source: d.source, spec: d.spec };
  };
  return [
    reused('pager-snapshot'),
    { key: 'remote', handler: 'pager', source: 'page server: RemoteSource, loopback TCP', spec: { kind: 'pager', source: 'remote', prefetch } },
    { key: 'c-remote', handler: 'C client', source: 'page server: one READ at a time (page-client.h)', spec: { kind: 'c', source: 'remote', prefetch, spinUs: 0 } },
    reused('c-pread'),
    FIRST_TOUCH,
  ];
}

interface DemandDef {
  key: string;
  handler: string;
  source: string;
  traffic: string;
  connections: string;
  spec: HandlerSpec;
}

function demandDefs(streamFromPage: number): DemandDef[] {
  const prefetch = RESTORE_PREFETCH;
  const remote = (stream: StreamSpec | undefined, singleConnection: boolean): HandlerSpec => ({ kind: 'pager', source: 'remote', prefetch, stream, singleConnection });
  const pagerStream: StreamSpec = { kind: 'pager', fromPage: streamFromPage };
  return [
    { key: 'local', handler: 'pager', source: 'snapshot file', traffic: 'none', connections: '-', spec: { kind: 'pager', source: 'snapshot', prefetch } },
    { key: 'idle', handler: 'pager', source: 'page server', traffic: 'none (idle network)', connections: 'urgent + bulk', spec: remote(undefined, false) },
    { key: 'c-idle', handler: 'C client', source: 'page server', traffic: 'none (idle network)', connections: '1', spec: { kind: 'c', source: 'remote', prefetch, spinUs: 0 } },
    { key: 'stream-urgent', handler: 'pager', source: 'page server', traffic: 'bulk stream, whole run', connections: 'urgent + bulk', spec: remote(STREAM_READS, false) },
    { key: 'stream-single', handler: 'pager', source: 'page server', traffic: 'bulk stream, whole run', connections: '1 (both)', spec: remote(STREAM_READS, true) },
    { key: 'paced-urgent', handler: 'pager', source: 'page server', traffic: `bulk stream paced to ${PACED_MB_PER_SECOND} MB/s`, connections: 'urgent + bulk', spec: remote(STREAM_PACED, false) },
    { key: 'paced-single', handler: 'pager', source: 'page server', traffic: `bulk stream paced to ${PACED_MB_PER_SECOND} MB/s`, connections: '1 (both)', spec: remote(STREAM_PACED, true) },
    {
      key: 'c-stream',
      handler: 'C client',
      source: 'page server',
      traffic: 'bulk stream from another process',
      connections: "1 (the stream's 2 are another client's)",
      spec: { kind: 'c', source: 'remote', prefetch, spinUs: 0, stream: STREAM_READS },
    },
    {
      key: 'c-paced',
      handler: 'C client',
      source: 'page server',
      traffic: `the same, paced to ${PACED_MB_PER_SECOND} MB/s`,
      connections: "1 (the stream's 2 are another client's)",
      spec: { kind: 'c', source: 'remote', prefetch, spinUs: 0, stream: STREAM_PACED },
    },
    { key: 'prefetch-urgent', handler: 'pager', source: 'page server', traffic: "Pager's prefetch of the rest", connections: 'urgent + bulk', spec: remote(pagerStream, false) },
    { key: 'prefetch-single', handler: 'pager', source: 'page server', traffic: "Pager's prefetch of the rest", connections: '1 (both)', spec: remote(pagerStream, true) },
  ];
}

export const remoteSection: Section = async (baseCtx, options) => {
  const pageCount = baseCtx.image.sizeBytes / 4096;
  const server = await BenchPageServer.start(baseCtx.image.path);
  const ctx: BenchContext = { ...baseCtx, pageServer: { url: server.url, address: server.address } };
  ctx.log(`remote: page server pid ${server.pid} on ${server.address}`);
  let results: Map<string, RunResult[]>;
  let summary: Awaited<ReturnType<BenchPageServer['stop']>>;
  const restore = restoreDefs();
  const restorePatterns: PatternName[] = ['sequential', 'random', 'working-set'];
  // The demand faults: random pages of the image's first quarter; the Pager's prefetch streams the other three.
  const quarter = Math.max(1, Math.floor(pageCount / 4));
  const demandOrder = randomOrder(quarter, options.seed).subarray(0, Math.min(options.remoteFaults, quarter));
  const demand = demandDefs(quarter);
  const touched = new Map<PatternName, number>();
  const wire: WireRun[] = [];
  try {
    const variants: Variant[] = [];
    const load: ToucherSpec = { memory: 'uffd', access: 'load', threads: 1, latency: false };
    for (const pattern of restorePatterns) {
      const order = patternOrder(pattern, pageCount, options.seed);
      touched.set(pattern, order.length);
      for (const d of restore.filter((v) => !v.patterns || v.patterns.includes(pattern))) {
        variants.push({ id: `${pattern}/${d.key}`, label: `${d.handler}, ${d.source}`, handler: d.spec, toucher: { ...load, memory: d.memory ?? load.memory }, placement: 'unpinned', order });
      }
    }
    for (const d of demand) {
      variants.push({ id: `demand/${d.key}`, label: `${d.handler}, ${d.source}, ${d.traffic}`, handler: d.spec, toucher: { ...load, latency: true }, placement: 'unpinned', order: demandOrder });
    }
    // The page server's CPU time over each run (all its threads: the event loop and libuv's pool).
    const observe = (): (() => Record<string, number>) => {
      const before = processRunNs(server.pid);
      return () => ({ serverCpuMs: (processRunNs(server.pid) - before) / 1e6 });
    };
    results = await runInterleaved(ctx, 'remote', variants, options.rounds, observe);
    // The wire itself, once per round, in the same run: what every figure above is read against.
    for (let round = 0; round < options.rounds; round++) wire.push(measureWire(ctx, baseCtx.image.sizeBytes));
  } finally {
    summary = await server.stop().catch((error: Error) => {
      ctx.log(`remote: the page server did not stop cleanly (its per-connection figures are missing): ${error.message}`);
      return undefined;
    });
  }
  const serverConnections = (run: RunResult) => connectionsOf(summary, run.session);

  // Table A: restore throughput.
  const targets: TargetResult[] = [];
  const rowsA: string[][] = [];
  const summaryRows: Record<string, unknown>[] = [];
  // The floor's time is its touches alone (its installing is not a restore's cost to compare).
  const restoreMs = (run: RunResult): number => (run.handler.kind === 'none' ? run.toucher.touchNs / 1e6 : totalMs(run));
  const gbps = (pattern: PatternName) => (run: RunResult): number => (touched.get(pattern)! * 4096) / (restoreMs(run) / 1000) / 1e9;
  for (const pattern of restorePatterns) {
    const ms = (key: string): number[] => perRound(results, `${pattern}/${key}`, restoreMs);
    for (const d of restore.filter((v) => !v.patterns || v.patterns.includes(pattern))) {
      const id = `${pattern}/${d.key}`;
      const speed = perRound(results, id, gbps(pattern));
      const vsLocal = pairedRatio(ms('local-pager-snapshot'), ms(d.key));
      const vsC = pairedRatio(ms('c-remote'), ms(d.key));
      const reads = median(perRound(results, id, sourceReads));
      // CPU per source read: the serving thread's, and (remote only) the page server's.
      const handlerUs = median(perRound(results, id, (r) => (r.handler.kind === 'none' ? Number.NaN : r.handler.cpu.runNs / 1000 / sourceReads(r))));
      const serverUs = median(perRound(results, id, (r) => ((r.observed?.serverCpuMs ?? Number.NaN) * 1000) / sourceReads(r)));
      const gib = (touched.get(pattern)! * 4096) / 2 ** 30;
      const handlerSecondsPerGiB = median(perRound(results, id, (r) => (r.handler.kind === 'none' ? Number.NaN : r.handler.cpu.runNs / 1e9 / gib)));
      const serverSecondsPerGiB = median(perRound(results, id, (r) => (r.observed?.serverCpuMs ?? Number.NaN) / 1000 / gib));
      const vsWire = pairedRatio(wire.map((w) => w.ms * (touched.get(pattern)! * 4096) / w.bytes), ms(d.key));
      const isRemote = d.spec.kind !== 'none' && d.spec.source === 'remote';
      const row = {
        table: 'restore',
        pattern,
        variant: d.key,
        handler: d.handler,
        source: d.source,
        ms: median(ms(d.key)),
        gbPerSecond: median(speed),
        sourceReads: reads,
        handlerCpuUsPerRead: handlerUs,
        serverCpuUsPerRead: isRemote ? serverUs : undefined,
        speedVsLocalPager: vsLocal,
        speedVsCClient: vsC,
        speedVsWire: vsWire,
        handlerCpuSecondsPerGiB: handlerSecondsPerGiB,
        serverCpuSecondsPerGiB: isRemote ? serverSecondsPerGiB : undefined,
      };
      summaryRows.push(row);
      rowsA.push([
        pattern,
        d.handler,
        d.source,
        fmt(row.ms),
        fmt(row.gbPerSecond, 2),
        fmtInt(reads),
        `${fmtInt(handlerUs)} / ${isRemote ? fmtInt(serverUs) : '-'}`,
        `${fmt(handlerSecondsPerGiB, 2)} / ${isRemote ? fmt(serverSecondsPerGiB, 2) : '-'}`,
        fmtRatio(vsLocal),
        fmtRatio(vsC),
        fmtRatio(vsWire),
      ]);
      if (pattern === 'sequential' && d.key === 'remote') {
        targets.push(checkTarget('remote: sequential restore from a page server over loopback TCP (pager, RemoteSource), GB/s (floor 0.8)', perRoundValues(speed), 'at-least', 1, ' GB/s'));
        targets.push(checkTarget('remote: sequential restore from a page server / from the local snapshot file (pager; floor 0.6x)', vsLocal, 'at-least', 0.8));
      }
      if (d === FIRST_TOUCH) {
        targets.push(checkTarget("remote: (this machine's floor, no restore is faster) the same pages touched with every one already installed, GB/s", perRoundValues(speed), 'at-least', 1, ' GB/s'));
      }
    }
    if (pattern === 'sequential' && wire.length > 0) {
      const wireGbps = wire.map((w) => w.bytes / (w.ms / 1000) / 1e9);
      const wireMs = median(wire.map((w) => (w.ms * (touched.get(pattern)! * 4096)) / w.bytes));
      const gib = (touched.get(pattern)! * 4096) / 2 ** 30;
      const receiverSeconds = median(wire.map((w) => w.receiverCpuMs / 1000 / (w.bytes / 2 ** 30)));
      const senderSeconds = median(wire.map((w) => w.senderCpuMs / 1000 / (w.bytes / 2 ** 30)));
      summaryRows.push({ table: 'restore', pattern, variant: 'wire', handler: 'C receiver', source: 'the wire', ms: wireMs, gbPerSecond: median(wireGbps), receiverCpuSecondsPerGiB: receiverSeconds, senderCpuSecondsPerGiB: senderSeconds, gib });
      rowsA.push([pattern, 'C receiver', 'the wire: one TCP stream over loopback from a C sender, 1 MiB writes (bench/c/wire.c)', fmt(wireMs), fmt(median(wireGbps), 2), '-', '-', `${fmt(receiverSeconds, 2)} / ${fmt(senderSeconds, 2)}`, '-', '-', '1.00x']);
    }
  }
  const tableA: Table = {
    title: `5a. Restore from a page server: ${fmtInt(baseCtx.image.sizeBytes / (1 << 20))} MiB over loopback TCP, read-ahead ${RESTORE_PREFETCH.initialPages}..${RESTORE_PREFETCH.maxPages} pages (median of ${options.rounds} rounds)`,
    columns: ['pattern', 'handler', 'source', 'time ms', 'GB/s', 'READs', 'CPU us/READ handler / server', 'CPU s/GiB handler / server', 'speed / local pager', 'speed / C client', 'speed / wire'],
    numeric: [false, false, false, true, true, true, true, true, true, true, true],
    rows: rowsA,
    notes: [
      'The page server is `userfault pages serve` on the bench image, a process of its own (every page CRC-checked as it reads it, as it serves any client).',
      'GB/s = 10^9 bytes of pages touched per second. READs: source reads (pager) or READ frames (C). speed / X = X time / this time, round by round.',
      "CPU us/READ: run time of the handler's serving thread, and of the page server process (all its threads), per source read.",
      '"local pager" is the restore section\'s pager from the snapshot file; C client: bench/c/page-client.h in the C handler, one READ in flight, every reply CRC-checked.',
      'CPU s/GiB: CPU seconds (user + sys) per GiB of pages touched, the handler\'s serving thread and the page server (for the wire: receiver / sender).',
      'the wire: the same bytes over one loopback TCP connection between two C processes, measured once per round after the variants; speed / wire is the wire\'s time for the pattern\'s bytes / this time.',
      'none (the floor): the toucher installs every page itself (UFFDIO_COPY from a read of the file), then the touches alone are timed: the first touch of a page already in place, which every restore pays (several us a page on this shadow-paged VM).',
    ],
  };

  // Table B: demand faults over the network, with and without a bulk stream.
  const rowsB: string[][] = [];
  const id = (key: string): string => `demand/${key}`;
  const p50 = (key: string): number[] => perRound(results, id(key), p50Us);
  const p99 = (key: string): number[] => perRound(results, id(key), p99Us);
  for (const d of demand) {
    const runs = results.get(id(d.key))!;
    const pager = (run: RunResult) => (run.handler.kind === 'pager' ? run.handler : undefined);
    const peak = median(runs.map((r) => pager(r)?.metrics.inFlightPeak ?? 1));
    const urgentReads = median(runs.map((r) => pager(r)?.remote?.urgentReadsSent ?? (r.handler.kind === 'c' ? r.handler.stats.sourceReads : Number.NaN)));
    const bulkReads = median(runs.map((r) => pager(r)?.remote?.bulkReadsSent ?? Number.NaN));
    const stream = (r: RunResult) => (r.handler.kind === 'pager' || r.handler.kind === 'c' ? r.handler.stream : undefined);
    const bulkMBps = median(runs.map((r) => streamMBps(stream(r))));
    const bulkShare = median(runs.map((r) => streamShare(stream(r))));
    const touchMs = (r: RunResult): number => r.toucher.totalNs / 1e6;
    const pagerCpu = median(runs.map((r) => (r.handler.kind === 'none' ? Number.NaN : r.handler.cpu.runNs / 1e6 / touchMs(r))));
    const serverCpu = median(runs.map((r) => (r.observed?.serverCpuMs ?? Number.NaN) / touchMs(r)));
    const pagerP50 = median(runs.map((r) => pager(r)?.metrics.latencyMicros.p50 ?? Number.NaN));
    const serverPeak = (role: string) => median(runs.map((r) => Math.max(0, ...serverConnections(r).filter((c) => c.role === role).map((c) => c.peakInFlight))));
    const row = {
      table: 'demand',
      variant: d.key,
      handler: d.handler,
      source: d.source,
      traffic: d.traffic,
      connections: d.connections,
      faults: demandOrder.length,
      p50Us: median(p50(d.key)),
      p99Us: median(p99(d.key)),
      p50VsIdle: pairedRatio(p50(d.key), p50('idle')),
      p99VsIdle: pairedRatio(p99(d.key), p99('idle')),
      pagerInFlightPeak: peak,
      urgentReadsSent: urgentReads,
      bulkReadsSent: bulkReads,
      bulkMBps,
      bulkShareOfRun: bulkShare,
      handlerCpuShare: pagerCpu,
      serverCpuShare: serverCpu,
      pagerLatencyP50Us: pagerP50,
      serverPeakInFlightUrgent: serverPeak('page-client-urgent'),
      serverPeakInFlightBulk: serverPeak('page-client-bulk'),
    };
    summaryRows.push(row);
    const isRemote = d.source === 'page server';
    rowsB.push([
      d.handler,
      d.source,
      d.traffic,
      d.connections,
      fmt(row.p50Us),
      fmt(row.p99Us),
      fmtRatio(row.p50VsIdle),
      fmtRatio(row.p99VsIdle),
      fmtInt(peak),
      isRemote ? `${fmtInt(urgentReads)} / ${fmtInt(bulkReads)}` : '-',
      fmtInt(bulkMBps),
      Number.isFinite(bulkShare) ? `${fmt(100 * bulkShare, 0)}%` : '-',
      `${fmt(100 * pagerCpu, 0)}% / ${isRemote ? `${fmt(100 * serverCpu, 0)}%` : '-'}`,
      isRemote ? `${fmtInt(row.serverPeakInFlightUrgent)} / ${fmtInt(row.serverPeakInFlightBulk)}` : '-',
    ]);
  }
  const tableB: Table = {
    title: `5b. Demand faults over the network: ${fmtInt(demandOrder.length)} random faults in the image's first quarter, while a bulk stream runs or not (median of ${options.rounds} rounds)`,
    columns: ['handler', 'source', 'bulk traffic', 'connections', 'p50 us', 'p99 us', 'p50 / idle', 'p99 / idle', 'pager in flight peak', 'READs urgent / bulk', 'bulk MB/s', 'bulk for', 'CPU handler / server', 'server peak urgent / bulk'],
    numeric: [false, false, false, false, true, true, true, true, true, true, true, true, true, true],
    rows: rowsB,
    notes: [
      'Latency is one touch as the faulting thread sees it (fault to resumed). idle: the pager from the page server with no other traffic. Read-ahead 1..64 (random faults start no stream: 1 page each).',
      `bulk stream: ${STREAM_READS.inFlight} background reads of ${STREAM_READS.runPages} pages in flight on the same RemoteSource for the whole run, round the image and dropped (a prefetch-all's traffic that never runs out).`,
      "Pager's prefetch of the rest: prefetchPages of the other 3/4 of the image, installed; \"bulk for\" is how much of the run it lasted (after it ends the network is idle).",
      'connections: urgent + bulk = RemoteSource as shipped; 1 (both) = singleConnection (demand READs queue behind the stream\'s). READs urgent / bulk: READ frames the source sent on each.',
      "CPU: the handler's serving thread (the pager's, which also runs RemoteSource) and the page server process (all its threads), as a share of the touching time; 2 vCPUs are 200%.",
      'server peak: the most READs the page server had running at once on that connection (its --max-in-flight is 16).',
    ],
  };
  targets.push(checkTarget('remote: demand-fault p50 during a bulk stream / on an idle network (pager, RemoteSource, urgent channel; floor 4x)', pairedRatio(p50('stream-urgent'), p50('idle')), 'at-most', 2));
  targets.push(checkTarget('remote: demand-fault p99 during a bulk stream, one connection / urgent + bulk connections', pairedRatio(p99('stream-single'), p99('stream-urgent')), 'at-least', 5));

  const runs = toJsonRuns(results);
  for (const [variantId, list] of results) list.forEach((run, i) => (runs[variantId]![i]!.server = serverConnections(run)));
  return { name: 'remote', tables: [tableA, tableB], targets, summary: summaryRows, runs };
};

function streamMBps(stream: { kind: string; reads?: { bytes: number; ms: number }; pagesStreamed?: number; doneMs?: number; runMs: number } | undefined): number {
  if (!stream) return Number.NaN;
  if (stream.reads) return stream.reads.bytes / 1e6 / (stream.reads.ms / 1000);
  return ((stream.pagesStreamed ?? 0) * 4096) / 1e6 / ((stream.doneMs ?? stream.runMs) / 1000);
}

/** How much of the run the bulk traffic lasted (1: all of it). */
function streamShare(stream: { kind: string; doneMs?: number; runMs: number } | undefined): number {
  if (!stream) return Number.NaN;
  if (stream.kind === 'reads' || stream.doneMs === undefined) return 1;
  return Math.min(1, stream.doneMs / stream.runMs);
}

interface WireRun {
  bytes: number;
  ms: number;
  senderCpuMs: number;
  receiverCpuMs: number;
}

/** One run of bench/c/wire.c: `bytes` over one loopback TCP connection, C to C. */
function measureWire(ctx: BenchContext, bytes: number): WireRun {
  const out = execFileSync(ctx.programs.wire, [String(bytes)], { encoding: 'utf8', timeout: ctx.runTimeoutMs });
  const run = JSON.parse(out.trim()) as WireRun;
  ctx.log(`remote wire: ${(run.bytes / (run.ms / 1000) / 1e9).toFixed(2)} GB/s`);
  return run;
}
