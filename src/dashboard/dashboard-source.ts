// Where a dashboard reads from: a VMM's control socket (its /metrics and its
// guest-memory map), or any /metrics URL (`serve --metrics`, `pages serve
// --metrics`, a VMM's --metrics). Every answer is bounded in time and size: a
// source that stalls or answers without end is an error for that update, not
// a hung or swollen dashboard.
import { request, type RequestOptions } from 'node:http';
import { UserfaultError } from '../errors.js';
import type { MemoryMapView } from './dashboard-frame.js';

/** The largest answer read from a source (a VMM's /metrics is ~30 KiB). */
const MAX_ANSWER_BYTES = 8 << 20;
const TIMEOUT_MS = 5_000;

export class DashboardSourceError extends UserfaultError {
  override readonly code: string = 'EDASHBOARDSOURCE';
}

/** A --metrics-url that is not an http:// URL: the command line is wrong (exit status 64). */
export class DashboardUrlError extends DashboardSourceError {
  override readonly code = 'EUSAGE';
}

export interface DashboardSource {
  /** "control socket /tmp/vm.sock", "http://127.0.0.1:9100/metrics". */
  readonly description: string;
  metrics(): Promise<string>;
  /** Guest RAM's page states in at most `cells` cells (a VMM only). */
  memoryMap?(cells: number): Promise<MemoryMapView>;
}

export function controlSocketSource(socketPath: string): DashboardSource {
  return {
    description: `control socket ${socketPath}`,
    metrics: () => get({ socketPath, path: '/metrics' }, socketPath),
    memoryMap: async (cells) => {
      const body = JSON.parse(await get({ socketPath, path: `/memory-map?cells=${cells}` }, socketPath)) as MemoryMapView;
      if (typeof body.states !== 'string' || !/^[0-5]*$/.test(body.states)) throw new DashboardSourceError(`${socketPath}: /memory-map answered no page states`);
      return { pageCount: body.pageCount, pagesPerCell: body.pagesPerCell, states: body.states };
    },
  };
}

export function metricsUrlSource(url: string): DashboardSource {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    throw new DashboardUrlError(`--metrics-url ${url}: not a URL (http://HOST:PORT/metrics)`);
  }
  if (parsed.protocol !== 'http:') throw new DashboardUrlError(`--metrics-url ${url}: only http:// URLs (http://HOST:PORT/metrics)`);
  return {
    description: url,
    metrics: () => get({ host: parsed.hostname.replace(/^\[|\]$/g, ''), port: Number(parsed.port || 80), path: `${parsed.pathname}${parsed.search}` }, url),
  };
}

function get(options: RequestOptions, what: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const req = request({ ...options, method: 'GET', timeout: TIMEOUT_MS }, (res) => {
      const chunks: Buffer[] = [];
      let total = 0;
      res.on('data', (chunk: Buffer) => {
        total += chunk.length;
        if (total > MAX_ANSWER_BYTES) {
          req.destroy(new DashboardSourceError(`${what} answered more than ${MAX_ANSWER_BYTES} bytes`));
          return;
        }
        chunks.push(chunk);
      });
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        if (res.statusCode !== 200) reject(new DashboardSourceError(`${what}${options.path}: HTTP ${res.statusCode}: ${text.slice(0, 200)}`));
        else resolve(text);
      });
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new DashboardSourceError(`${what} did not answer within ${TIMEOUT_MS} ms`)));
    req.on('error', (error) => reject(error instanceof DashboardSourceError ? error : new DashboardSourceError(`${what}: ${error.message}`, { cause: error })));
    req.end();
  });
}
