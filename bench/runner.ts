// Runs one variant (a handler and a toucher, placed on CPUs) and many variants
// interleaved over rounds, so that the machine's load drifts over all of them
// alike and ratios can be taken round by round.
import { randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import type { CPrograms } from './c-programs.js';
import { BenchChild } from './child.js';
import type { PagerHostData, PagerHostMessage, PagerHostSource } from './handlers/pager-host.js';
import type { BulkStreamStats } from './handlers/bulk-stream.js';
import { cpusFor, prefetchArg, type CHandlerStats, type ReadsStreamSpec, type HandlerReport, type HandlerSpec, type Placement, type ServeMemory, type SourceKind, type ThreadCpu } from './handlers/spec.js';
import type { BenchImage } from './image.js';
import type { BenchServe } from './serve-process.js';

export interface BenchContext {
  programs: CPrograms;
  image: BenchImage;
  /** The image's bytes, shared with pager workers without copying. */
  imageMemory: SharedArrayBuffer;
  workDir: string;
  /** The delay server's socket, when the concurrency section runs. */
  delaySocket?: string;
  /** The page server serving the image (another process), when the remote section runs. */
  pageServer?: { url: string; address: string };
  /** The `userfault serve` processes, by memory file, when the firecracker section runs. */
  serve?: Map<string, BenchServe>;
  /** Upper bound for one run, in ms. */
  runTimeoutMs: number;
  log: (line: string) => void;
}

export interface ToucherSpec {
  /**
   * memfd-minor: the C handler's memfd mapped MAP_PRIVATE, registered MISSING and MINOR (ref-handler --source memfd).
   * installed: every page put in place with UFFDIO_COPY by the toucher before it touches (touchNs: first touches alone).
   */
  memory: 'uffd' | 'private' | 'eager' | 'installed' | 'memfd-minor';
  access: 'load' | 'store';
  threads: number;
  /** Time every touch (p50/p99); costs ~50 ns a touch, so only where faults dominate. */
  latency: boolean;
  /**
   * uffd: hand the uffd over with Firecracker's handshake (JSON regions, no
   * answer) instead of the bench's own; memfd-minor with page-cache: ask
   * `serve --page-cache` for its memfd first, then Firecracker's handshake.
   */
  handshake?: 'firecracker' | 'page-cache';
  /** private/eager/installed: this file from this offset instead of the image's data section. */
  file?: { path: string; offset: number };
}

/** One line of the toucher's output (bench/c/toucher.c). */
export interface ToucherResult {
  touches: number;
  threads: number;
  touchNs: number;
  eagerReadNs: number;
  /** Touching, plus the eager read when there is one. */
  totalNs: number;
  setupNs: number;
  mismatches: number;
  threadNs: number[];
  /** first: the first thread's first touch. */
  latencyNs?: { p50: number; p90: number; p99: number; max: number; mean: number; first: number };
}

export interface Variant {
  id: string;
  label: string;
  handler: HandlerSpec;
  toucher: ToucherSpec;
  placement: Placement;
  /** Pages to touch, in order. */
  order: Uint32Array;
}

export interface RunResult {
  toucher: ToucherResult;
  handler: HandlerReport;
  /** The page-protocol session id (hex) of a remote source: the page server's summary names its connections by it. */
  session?: string;
  /** What a section's observer measured around the run (runInterleaved's observe). */
  observed?: Record<string, number>;
}

let runCounter = 0;

interface StartedHandler {
  socketPath?: string;
  session?: string;
  done: Promise<HandlerReport>;
  abort: () => void;
}

async function startHandler(ctx: BenchContext, spec: HandlerSpec, cpu: number): Promise<StartedHandler> {
  const socketPath = join(ctx.workDir, `handler-${process.pid}-${runCounter}.sock`);
  const session = (spec.kind === 'pager' || spec.kind === 'lean' || spec.kind === 'c') && spec.source === 'remote' ? randomBytes(16).toString('hex') : undefined;
  switch (spec.kind) {
    case 'none':
      return { done: Promise.resolve({ kind: 'none' }), abort: () => {} };
    case 'serve': {
      const server = ctx.serve?.get(serveKey(spec.source, spec.baseline ?? false));
      if (!server) throw new Error(`this variant needs userfault serve on the ${spec.source} memory file${spec.baseline ? ' (the baseline build)' : ''}`);
      const report = server.expectClient(ctx.runTimeoutMs);
      // A run that fails leaves serve to notice the hangup; the section stops it.
      return { socketPath: server.socketPath, done: report().then((r) => ({ kind: 'serve', ...r })), abort: () => {} };
    }
    case 'c': {
      const args = ['--socket', socketPath, '--size', String(ctx.image.sizeBytes), '--image', ctx.image.path, '--image-offset', String(ctx.image.dataOffset)];
      args.push('--source', spec.source === 'raw-file' ? 'pread' : spec.source, '--prefetch', prefetchArg(spec.prefetch), '--cpu', String(cpu));
      if (spec.spinUs > 0) args.push('--spin-us', String(spec.spinUs));
      if (spec.aheadPages) args.push('--ahead-pages', String(spec.aheadPages));
      if (spec.source === 'delay') args.push('--delay-socket', requireDelaySocket(ctx));
      if (spec.source === 'remote') args.push('--server', requirePageServer(ctx).address, '--session', session!);
      const stream = spec.stream ? await startStreamClient(ctx, spec.stream) : undefined;
      const child = new BenchChild('ref-handler', ctx.programs.refHandler, args);
      try {
        await child.waitForLine(/^listening$/, 60_000);
      } catch (error) {
        stream?.kill();
        throw error;
      }
      const done = child.result<CHandlerStats & { cpu: ThreadCpu }>(ctx.runTimeoutMs).then(
        async ({ cpu, ...stats }): Promise<HandlerReport> => {
          if (!stream) return { kind: 'c', stats, cpu };
          await stream.terminate();
          const reads = await stream.result<BulkStreamStats>(10_000);
          return { kind: 'c', stats, cpu, stream: { kind: 'reads', reads, runMs: reads.ms } };
        },
        (error: unknown) => {
          stream?.kill();
          throw error;
        },
      );
      return {
        socketPath,
        session,
        done,
        abort: () => {
          child.kill();
          stream?.kill();
        },
      };
    }
    case 'pager':
    case 'lean': {
      const data: PagerHostData = {
        socketPath,
        mode: spec.kind,
        source: spec.source === 'remote'
          ? { kind: 'remote', url: requirePageServer(ctx).url, sessionId: session!, singleConnection: spec.singleConnection ?? false }
          : hostSource(ctx, spec.source),
        prefetch: spec.prefetch,
        cpu,
        wait: spec.kind === 'lean' ? spec.wait : 'event-loop',
        spinUs: spec.spinUs ?? 0,
        aheadPages: spec.kind === 'lean' ? spec.aheadPages ?? 0 : 0,
        recordWorkingSet: spec.kind === 'pager' && (spec.recordWorkingSet ?? false),
        replay: spec.kind === 'pager' ? spec.replay : undefined,
        stream: spec.kind === 'pager' ? spec.stream : undefined,
        pageCache: spec.kind === 'pager' ? spec.pageCache : undefined,
      };
      const worker = new Worker(new URL('./handlers/pager-host.js', import.meta.url), { workerData: data });
      const messages: PagerHostMessage[] = [];
      const next = (type: PagerHostMessage['type']): Promise<PagerHostMessage> =>
        new Promise((resolve, reject) => {
          const check = (): boolean => {
            const error = messages.find((m) => m.type === 'error');
            if (error) {
              reject(new Error(`pager host: ${(error as { message: string }).message}`));
              return true;
            }
            const hit = messages.find((m) => m.type === type);
            if (hit) resolve(hit);
            return hit !== undefined;
          };
          if (check()) return;
          const onMessage = (): void => {
            if (check()) cleanup();
          };
          const onExit = (code: number): void => {
            cleanup();
            if (!check()) reject(new Error(`pager host exited (code ${code}) before '${type}'`));
          };
          const onError = (error: Error): void => {
            cleanup();
            reject(error);
          };
          const cleanup = (): void => {
            worker.off('message', onMessage);
            worker.off('exit', onExit);
            worker.off('error', onError);
          };
          worker.on('message', onMessage);
          worker.on('exit', onExit);
          worker.on('error', onError);
        });
      worker.on('message', (m: PagerHostMessage) => messages.push(m));
      await next('listening');
      const done = withTimeout(next('report'), ctx.runTimeoutMs, 'pager host did not report').then(async (m) => {
        await worker.terminate();
        return (m as { report: HandlerReport }).report;
      });
      return { socketPath, session, done, abort: () => void worker.terminate() };
    }
    default: {
      const never: never = spec;
      throw new Error(`unknown handler ${JSON.stringify(never)}`);
    }
  }
}

/** Which of the firecracker section's serve processes serves a variant. */
export function serveKey(source: ServeMemory, baseline: boolean): string {
  return baseline ? `${source}-baseline` : source;
}

function requireDelaySocket(ctx: BenchContext): string {
  if (!ctx.delaySocket) throw new Error('this variant needs the delay server');
  return ctx.delaySocket;
}

/** A bulk stream from a client process of its own (handlers/stream-client.ts), streaming once this resolves. */
async function startStreamClient(ctx: BenchContext, spec: ReadsStreamSpec): Promise<BenchChild> {
  const entry = fileURLToPath(new URL('./handlers/stream-client.js', import.meta.url));
  const args = [entry, requirePageServer(ctx).url, String(spec.runPages), String(spec.inFlight)];
  if (spec.mbPerSecond) args.push(String(spec.mbPerSecond));
  const child = new BenchChild('stream-client', process.execPath, args);
  try {
    await child.waitForLine(/^streaming$/, 30_000);
  } catch (error) {
    child.kill();
    throw error;
  }
  return child;
}

function requirePageServer(ctx: BenchContext): { url: string; address: string } {
  if (!ctx.pageServer) throw new Error('this variant needs the page server');
  return ctx.pageServer;
}

function hostSource(ctx: BenchContext, kind: Exclude<SourceKind, 'remote'>): PagerHostSource {
  switch (kind) {
    case 'memory':
      return { kind, image: ctx.imageMemory };
    case 'snapshot':
      return { kind, path: ctx.image.path };
    case 'raw-file':
      return { kind, path: ctx.image.path, fileOffset: ctx.image.dataOffset, sizeBytes: ctx.image.sizeBytes };
    case 'sync-raw':
    case 'sync-snapshot':
      return { kind, path: ctx.image.path };
    case 'delay':
      return { kind, socketPath: requireDelaySocket(ctx), image: ctx.imageMemory };
    default: {
      const never: never = kind;
      throw new Error(`unknown source ${String(never)}`);
    }
  }
}

function withTimeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([
    promise,
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${what} within ${ms} ms`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

export async function runVariant(ctx: BenchContext, variant: Variant): Promise<RunResult> {
  runCounter++;
  const cpus = cpusFor(variant.placement);
  const orderPath = join(ctx.workDir, `order-${runCounter}.u32`);
  writeFileSync(orderPath, new Uint8Array(variant.order.buffer, variant.order.byteOffset, variant.order.byteLength));
  const handler = await startHandler(ctx, variant.handler, cpus.handler);
  const t = variant.toucher;
  const args = ['--memory', t.memory, '--size', String(ctx.image.sizeBytes), '--order', orderPath, '--access', t.access, '--threads', String(t.threads), '--cpu', String(cpus.toucher)];
  if (t.latency) args.push('--latency');
  if (t.handshake) args.push('--handshake', t.handshake);
  if (t.memory === 'uffd' || t.memory === 'memfd-minor') args.push('--socket', handler.socketPath!);
  else args.push('--file', t.file?.path ?? ctx.image.path, '--file-offset', String(t.file?.offset ?? ctx.image.dataOffset));
  const toucher = new BenchChild('toucher', ctx.programs.toucher, args);
  try {
    const toucherResult = await toucher.result<ToucherResult>(ctx.runTimeoutMs);
    if (toucherResult.mismatches > 0) throw new Error(`${variant.id}: ${toucherResult.mismatches} pages read back wrong`);
    const report = await handler.done;
    if (report.kind === 'c' && (report.stats.sharedPagesWritten ?? 0) > 0) {
      throw new Error(`${variant.id}: the toucher's stores reached ${report.stats.sharedPagesWritten} pages of the shared memfd`);
    }
    return { toucher: toucherResult, handler: report, session: handler.session };
  } catch (error) {
    toucher.kill();
    handler.abort();
    throw error;
  }
}

/**
 * Run every variant `rounds` times, round-robin, starting each round one
 * variant later so that none always runs first or right after the same one.
 */
export async function runInterleaved(
  ctx: BenchContext,
  section: string,
  variants: readonly Variant[],
  rounds: number,
  /** Called before each run; the function it returns, after it (say, another process's CPU time over the run). */
  observe?: () => () => Record<string, number>,
): Promise<Map<string, RunResult[]>> {
  const results = new Map<string, RunResult[]>(variants.map((v) => [v.id, []]));
  for (let round = 0; round < rounds; round++) {
    for (let i = 0; i < variants.length; i++) {
      const variant = variants[(i + round) % variants.length]!;
      const started = performance.now();
      const observed = observe?.();
      const result = await runVariant(ctx, variant);
      if (observed) result.observed = observed();
      results.get(variant.id)!.push(result);
      ctx.log(`${section} round ${round + 1}/${rounds} ${variant.id}: ${(result.toucher.totalNs / 1e6).toFixed(1)} ms touching (${((performance.now() - started) / 1000).toFixed(1)} s run)`);
    }
  }
  return results;
}
