// `userfault dashboard`: a web page of a VMM (or any /metrics endpoint),
// live. One poll loop reads the source every intervalMs (its /metrics, and a
// VMM's memory map), turns it into a frame (dashboard-frame.ts) and pushes
// the frame to every open page over server-sent events; the page draws it
// with uPlot, served from this server (node_modules, never a CDN).
//
//   GET /                   the page (static/index.html)
//   GET /dashboard.js       its script (browser/dashboard-page.ts, compiled)
//   GET /dashboard.css
//   GET /vendor/uplot.js    uPlot's IIFE build, and /vendor/uplot.css
//   GET /events             text/event-stream: a "history" event (the rate chart's recent points), then a "frame" event per update (JSON), the latest first
//   GET /frame              the latest frame, JSON
//
// Everything else is refused (src/net/http-server.ts), and so is any request
// whose Host does not name this server (a page of another site that reached
// it by DNS rebinding: it would read the memory map) or that another site's
// script sends (its Origin; GET / alone, the page, may be linked to). The
// page's own requests are same-origin. It may load nothing from anywhere else
// (Content-Security-Policy default-src 'self').
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import type { Server, ServerResponse } from 'node:http';
import { fileURLToPath } from 'node:url';
import { closeHttp, createBoundedHttpServer, listenHttp, sendText, type BoundedHttpServerOptions, type HttpRoute } from '../net/http-server.js';
import { formatHostPort, type HostPort } from '../net/address.js';
import { buildFrame, type DashboardFrame, type MemoryMapView } from './dashboard-frame.js';
import type { DashboardSource } from './dashboard-source.js';
import { SampleSet, parsePrometheusText } from './prometheus-text.js';
import { SseBroadcaster, type SseOptions, type SseStats } from './sse-broadcaster.js';

export interface DashboardServerOptions {
  source: DashboardSource;
  listen: HostPort;
  /** Time between updates (default 500 ms). */
  intervalMs?: number;
  /** Cells of the memory map (default 4096: a 64 × 64 grid). */
  mapCells?: number;
  sse?: SseOptions;
  /** Connection bounds (default 64 connections, http-server.ts's timeouts) and host names taken when listening remotely. */
  http?: Pick<BoundedHttpServerOptions, 'bounds' | 'hostNames'>;
}

interface Asset {
  contentType: string;
  body: Buffer;
}

const require = createRequire(import.meta.url);
/** src/dashboard/static, beside this module's source (dist/src/dashboard -> ../../../src/dashboard/static). */
const STATIC_DIR = fileURLToPath(new URL('../../../src/dashboard/static/', import.meta.url));

function loadAssets(): Record<string, Asset> {
  const asset = (path: string, contentType: string): Asset => ({ contentType, body: readFileSync(path) });
  return {
    '/': asset(`${STATIC_DIR}index.html`, 'text/html; charset=utf-8'),
    '/dashboard.css': asset(`${STATIC_DIR}dashboard.css`, 'text/css; charset=utf-8'),
    '/dashboard.js': asset(fileURLToPath(new URL('./browser/dashboard-page.js', import.meta.url)), 'text/javascript; charset=utf-8'),
    '/vendor/uplot.js': asset(require.resolve('uplot/dist/uPlot.iife.min.js'), 'text/javascript; charset=utf-8'),
    '/vendor/uplot.css': asset(require.resolve('uplot/dist/uPlot.min.css'), 'text/css; charset=utf-8'),
  };
}

const SECURITY_HEADERS = {
  'content-security-policy': "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
  'x-content-type-options': 'nosniff',
  'referrer-policy': 'no-referrer',
};

/** Chart points kept for a page opened later: the page's own chart holds as many (120 frames, a minute at the default 500 ms). */
export const HISTORY_POINTS = 120;

/** One frame's point on the page's rate chart. */
export interface ChartPoint {
  time: number;
  faultsPerSecond: number;
  sourceReadsPerSecond: number;
}

export class DashboardServer {
  private readonly sse: SseBroadcaster;
  private latestFrame: DashboardFrame | undefined;
  private readonly chartHistory: ChartPoint[] = [];
  private seq = 0;
  private timer: NodeJS.Timeout | undefined;
  private closed = false;
  private polling: Promise<void> = Promise.resolve();

  private constructor(
    readonly server: Server,
    readonly address: HostPort,
    private readonly options: DashboardServerOptions,
    sse: SseBroadcaster,
  ) {
    this.sse = sse;
  }

  static async start(options: DashboardServerOptions): Promise<DashboardServer> {
    const assets = loadAssets();
    const sse = new SseBroadcaster(options.sse);
    let dashboard: DashboardServer | undefined;
    const routes: Record<string, HttpRoute> = {};
    for (const [path, asset] of Object.entries(assets)) {
      routes[path] = { methods: ['GET'], page: path === '/', handle: (_req, res) => sendAsset(res, asset) };
    }
    routes['/events'] = {
      methods: ['GET'],
      handle: (_req, res) => {
        // A page opened now gets the charts' recent past first (one small event), then the latest frame.
        const latest = dashboard?.latest;
        const history = dashboard?.history ?? [];
        sse.add(res, [
          ...(history.length > 0 ? [{ event: 'history', data: JSON.stringify(history) }] : []),
          ...(latest ? [{ event: 'frame', data: JSON.stringify(latest) }] : []),
        ]);
      },
    };
    routes['/frame'] = {
      methods: ['GET'],
      handle: (_req, res) => sendText(res, 200, JSON.stringify(dashboard?.latest ?? null), { contentType: 'application/json' }),
    };
    const server = createBoundedHttpServer({ routes, hostNames: options.http?.hostNames, bounds: { maxConnections: 64, ...options.http?.bounds } });
    const address = await listenHttp(server, options.listen, '--listen');
    dashboard = new DashboardServer(server, address, options, sse);
    await dashboard.poll();
    dashboard.schedule();
    return dashboard;
  }

  /** "http://127.0.0.1:7070/". */
  get url(): string {
    return `http://${formatHostPort(this.address)}/`;
  }

  /** The charts' points of the frames before the latest (at most HISTORY_POINTS), oldest first: what a page opened now has not seen. */
  get history(): readonly ChartPoint[] {
    return this.chartHistory;
  }

  get latest(): DashboardFrame | undefined {
    return this.latestFrame;
  }

  get streams(): SseStats {
    return this.sse.stats;
  }

  async close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.timer);
    await this.polling;
    this.sse.close();
    await closeHttp(this.server);
  }

  private schedule(): void {
    if (this.closed) return;
    this.timer = setTimeout(() => {
      this.polling = this.poll().finally(() => this.schedule());
    }, this.options.intervalMs ?? 500);
  }

  /** Read the source once and push the frame it makes (or the error). Never throws. */
  private async poll(): Promise<void> {
    const { source } = this.options;
    const time = Date.now();
    let frame: DashboardFrame;
    try {
      const [text, memoryMap] = await Promise.all([source.metrics(), source.memoryMap?.(this.options.mapCells ?? 4096) ?? Promise.resolve(undefined as MemoryMapView | undefined)]);
      frame = buildFrame({ seq: ++this.seq, time, source: source.description, samples: new SampleSet(parsePrometheusText(text)), memoryMap, previous: this.latestFrame });
    } catch (error) {
      frame = { ...emptyFrame(++this.seq, time, source.description), error: (error as Error).message };
    }
    if (this.closed) return;
    const previous = this.latestFrame;
    if (previous && !previous.error) {
      this.chartHistory.push({ time: previous.time, faultsPerSecond: previous.faults.perSecond, sourceReadsPerSecond: previous.sourceReads.perSecond });
      if (this.chartHistory.length > HISTORY_POINTS) this.chartHistory.shift();
    }
    this.latestFrame = frame;
    this.sse.send('frame', JSON.stringify(frame));
  }
}

function emptyFrame(seq: number, time: number, source: string): DashboardFrame {
  const histogram = { boundsSeconds: [], counts: [], count: 0, sumSeconds: 0 };
  return {
    seq, time, source,
    faults: { total: 0, perSecond: 0, byKind: {} },
    pagesInstalled: {},
    sourceReads: { total: 0, perSecond: 0, inFlight: 0, errors: 0 },
    faultLatency: histogram,
    sourceReadLatency: histogram,
    vcpus: [],
  };
}

function sendAsset(res: ServerResponse, asset: Asset): void {
  res.writeHead(200, { 'content-type': asset.contentType, 'content-length': asset.body.length, 'cache-control': 'no-cache', ...SECURITY_HEADERS });
  res.end(asset.body);
}
