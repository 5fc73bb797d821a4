// The control socket of a running VMM: HTTP/JSON over a Unix socket, in the
// manner of Firecracker's API. It serves a HostedVm (hosted-vm.ts): the VM's
// own requests go to its Vmm, the migration routes to the host, which drives
// the migration.
//
//   GET   /vm                 -> 200 {state, memoryBytes, vcpus, exitReason, restore?}
//   PATCH /vm {"state": "Paused" | "Resumed"}   (PUT accepted too)
//                             -> 200 {state, changed}   (changed: false for "already paused")
//   PUT   /snapshot/create {"snapshot_path": ABSOLUTE PATH}
//                             -> 200 {path, fileSizeBytes, ..., pauseMs, saveStateMs, writeMs, durationMs}
//                             (pauses the VM; it stays paused, also when the write fails)
//   PUT   /serial/input {"data": "text"}        -> 204 (bytes for COM1)
//   PUT   /actions {"action_type": "Stop"}      -> 204 (ends the VM)
//   PUT   /migrate {"to": "HOST:PORT", "mode": "precopy"|"postcopy"|"hybrid",
//                   "downtime_ms": N, "max_rounds": N, "wait": BOOL}
//                             -> 202 {state} (the migration runs on; GET /migrate follows it),
//                                or with wait, 200 the final report once it ended (an error status if it failed)
//   GET   /migrate            -> 200 the migration's progress (source or destination), 404 if none
//   PUT   /migrate/cancel     -> 200 {state} (before switchover only; 409 after)
//   PUT   /migrate/resume     -> 200 {state} (a migration paused by a cut: reconnect now)
//   PUT   /migrate/abandon    -> 200 {state} (paused with GO in flight, committing-paused: the guest
//                             resumes here; only when the destination is known to be gone for good)
//   GET   /snapshot           -> 200 the snapshot being written now ({path, writtenBytes, totalBytes}), 404 if none
//   GET   /metrics            -> 200 the VMM's metrics, Prometheus text format (src/metrics/catalog.ts; docs/metrics.md)
//   GET   /memory-map?cells=N -> 200 {pageCount, pagesPerCell, states: "0122…"} guest RAM's page states in at most
//                                N cells (1..MAX_MAP_CELLS, default 4096), one digit a cell: src/pager/page-state.ts's
//                                PageState (0 missing, 1 in flight, 2 present, 3 discarded, 4 unmapped, 5 poisoned)
//
// Errors: {fault_message, code} with the status HTTP_STATUS below gives the
// code: 400 a malformed request, 404 an unknown path, 405 a known path with
// a method it does not take (the Allow header lists those), 409 a request the
// VM's lifecycle does not allow in its current state (the message names
// the state: "cannot resume a VM that is snapshotting"), 413 a body over
// MAX_BODY_BYTES or serial input over the UART's bound, 500 anything else.
//
// What a peer can make the VMM hold is bounded: MAX_CONNECTIONS connections,
// each with headers of at most MAX_HEADER_BYTES and a body of at most
// MAX_BODY_BYTES (a larger body is answered 413 as soon as it is seen and
// the rest discarded unread into memory), and slow peers time out; at the
// cap a new connection closes the idlest one (idle, or still sending its
// request), so idle or slow peers cannot lock the socket out
// (src/net/connection-bounds.ts). Every error, a malformed request line
// included, is answered on its own connection: nothing a client sends ends
// the VMM. No Host check: a Unix socket is out of a web page's reach (no DNS
// rebinding there).
import { createServer, request, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { lstatSync } from 'node:fs';
import { isAbsolute } from 'node:path';
import { boundHttpServer, type HttpBounds } from '../net/connection-bounds.js';
import { answerClientErrors } from '../net/http-server.js';
import { listenReplacingStale, removeSocketFile } from '../net/unix-socket-path.js';
import { ControlApiError, NoVmListeningError, VmError } from '../vm/errors.js';
import type { HostedVm } from './hosted-vm.js';
import { parseMigrationAddress, readPskFile } from '../migrate/transport/channels.js';
import { MetricsRegistry, PROMETHEUS_CONTENT_TYPE, registryOf, type RegistryRef } from '../metrics/metrics-registry.js';
import { vmReporter } from '../metrics/vm-reporter.js';
import { sourceReporter } from '../metrics/source-reporter.js';

/** The largest request body (the serial input's JSON is the big one: its 1 MiB bound, escaped). */
export const MAX_BODY_BYTES = 4 << 20;
export const MAX_HEADER_BYTES = 16 << 10;
export const MAX_HEADERS = 64;
export const MAX_CONNECTIONS = 16;
/** A peer has this long to send its headers, and its whole request (a 4 MiB body); an idle one stays this long. */
const CONTROL_HTTP_BOUNDS: HttpBounds = { maxConnections: MAX_CONNECTIONS, headersTimeoutMs: 10_000, requestTimeoutMs: 60_000, keepAliveTimeoutMs: 5_000 };

/** A malformed request: bad JSON, a missing or ill-typed field. */
export class BadControlRequestError extends VmError {
  override readonly code = 'EBADREQUEST';
  constructor(readonly field: string | undefined, message: string) {
    super(message);
  }
}

/** The request's body is over MAX_BODY_BYTES. */
export class RequestBodyTooLargeError extends VmError {
  override readonly code = 'EBODYTOOLARGE';
  constructor(readonly limitBytes: number, readonly declaredBytes?: number) {
    super(`the request body is over the ${limitBytes}-byte limit${declaredBytes === undefined ? '' : ` (${declaredBytes} bytes declared)`}`);
  }
}

/** No such route (or not with this method). */
export class UnknownRouteError extends VmError {
  override readonly code = 'ENOROUTE';
  constructor(readonly method: string, readonly path: string) {
    super(`no route ${method} ${path}`);
  }
}

/** A path the API has, asked with a method it does not take there. */
export class MethodNotAllowedError extends VmError {
  override readonly code = 'EMETHOD';
  constructor(readonly method: string, readonly path: string, readonly allowed: readonly string[]) {
    super(`${path} takes ${allowed.join(', ')}, not ${method}`);
  }
}

/** The methods of each path (a request for a path here with another method is answered 405). */
const ROUTE_METHODS: Readonly<Record<string, readonly string[]>> = {
  '/vm': ['GET', 'PATCH', 'PUT'],
  '/snapshot': ['GET'],
  '/snapshot/create': ['PUT'],
  '/serial/input': ['PUT'],
  '/migrate': ['GET', 'PUT'],
  '/migrate/resume': ['PUT'],
  '/migrate/cancel': ['PUT'],
  '/migrate/abandon': ['PUT'],
  '/actions': ['PUT'],
  '/metrics': ['GET'],
  '/memory-map': ['GET'],
};

/** The most cells GET /memory-map draws guest RAM in (a 64 KiB answer at most). */
export const MAX_MAP_CELLS = 65536;

/** The one table from an error's code to the HTTP status it is answered with; anything else is 500. */
const HTTP_STATUS: Readonly<Record<string, number>> = {
  EBADREQUEST: 400,
  ECANTCREATE: 400,
  ENOROUTE: 404,
  EMETHOD: 405,
  ESTATE: 409,
  EMIGRATION: 409,
  EUSAGE: 400,
  EBODYTOOLARGE: 413,
  ESERIALFULL: 413,
};

export interface ControlApiOptions {
  /** Called for PUT /actions Stop once it is allowed and answered (the embedding program ends the VMM its way; default host.close()). */
  onStop?: () => void;
  /** The process's metrics (GET /metrics); default: a registry of this VMM's alone, made on the first GET. */
  metrics?: RegistryRef;
  /** Connections and timeouts (default CONTROL_HTTP_BOUNDS; tests shorten them). */
  bounds?: Partial<HttpBounds>;
}

/** A listening control socket. */
export interface ControlApi {
  readonly server: Server;
  readonly socketPath: string;
  /** Stop listening, end open connections, remove the socket file (if it is still ours). */
  close(): Promise<void>;
}

/**
 * Serve `host` (a VM and its migrations) on `socketPath`. A stale socket there (its VMM died) is
 * replaced; anything else — a regular file, a live VMM's socket — is refused
 * (SocketPathInUseError, src/net/unix-socket-path.ts).
 */
export async function startControlApi(host: HostedVm, socketPath: string, options: ControlApiOptions = {}): Promise<ControlApi> {
  const fd = listenReplacingStale(socketPath, 16);
  const inode = lstatSync(socketPath).ino;
  let own: MetricsRegistry | undefined;
  const metrics = options.metrics ?? (() => (own ??= vmmMetrics(host, { processMetrics: false })));
  const server = createServer({ maxHeaderSize: MAX_HEADER_BYTES }, (req, res) => {
    route(host, req, res, options, metrics).catch((error: unknown) => replyError(res, error));
  });
  server.maxHeadersCount = MAX_HEADERS;
  boundHttpServer(server, { ...CONTROL_HTTP_BOUNDS, ...options.bounds });
  // A request Node cannot parse (bad request line, headers over the limit): answered and closed; the VMM goes on.
  answerClientErrors(server);
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen({ fd }, () => {
      server.off('error', reject);
      resolve();
    });
  });
  // After listening, a failed accept (EMFILE) is the server's to survive, not the process's to die of.
  server.on('error', () => {});
  let closing: Promise<void> | undefined;
  return {
    server,
    socketPath,
    close: () => {
      closing ??= new Promise<void>((resolve) => {
        server.close(() => resolve());
        // Answers being written (a migration's final report) get a moment to go out; idle connections end now.
        server.closeIdleConnections();
        setTimeout(() => server.closeAllConnections(), 1000).unref();
        removeSocketFile(socketPath, inode);
      });
      return closing;
    },
  };
}

/** A registry of one VMM's metrics: the VM, its pager, its migration (and, by default, the process's). */
export function vmmMetrics(host: HostedVm, options: { processMetrics?: boolean } = {}): MetricsRegistry {
  const registry = new MetricsRegistry({ components: ['pager', 'vm', 'migration', 'source'], processMetrics: options.processMetrics });
  registry.report(vmReporter(host.vmm, () => host.migrationProgress()));
  registry.report(sourceReporter(() => host.sourceAvailability()));
  return registry;
}

async function route(host: HostedVm, req: IncomingMessage, res: ServerResponse, options: ControlApiOptions, metrics: RegistryRef): Promise<void> {
  const method = req.method ?? 'GET';
  const [path, query] = (req.url ?? '/').split('?') as [string, string | undefined];
  const body = await readJson(req, res);
  if (body === TOO_LARGE) return;
  if (path === '/vm' && method === 'GET') return reply(res, 200, host.status());
  if (path === '/metrics' && method === 'GET') {
    const text = await registryOf(metrics).scrape();
    res.writeHead(200, { 'content-type': PROMETHEUS_CONTENT_TYPE }).end(text);
    return;
  }
  if (path === '/memory-map' && method === 'GET') {
    const cellsText = new URLSearchParams(query ?? '').get('cells') ?? '4096';
    const cells = Number(cellsText);
    if (!/^\d+$/.test(cellsText) || cells < 1 || cells > MAX_MAP_CELLS) throw new BadControlRequestError('cells', `cells must be a whole number from 1 to ${MAX_MAP_CELLS}, got ${JSON.stringify(cellsText.slice(0, 20))}`);
    const map = host.vmm.pageStates(cells);
    return reply(res, 200, { pageCount: map.pageCount, pagesPerCell: map.pagesPerCell, states: Buffer.from(map.cells.map((state) => 0x30 + state)).toString('latin1') });
  }
  if (path === '/snapshot' && method === 'GET') {
    const progress = host.vmm.snapshotProgress;
    if (!progress) throw new UnknownRouteError(method, path);
    return reply(res, 200, progress);
  }
  if (path === '/vm' && (method === 'PATCH' || method === 'PUT')) {
    const state = field(body, 'state');
    if (state === 'Paused') return reply(res, 200, await host.vmm.pause());
    if (state === 'Resumed') return reply(res, 200, await host.vmm.resume());
    throw new BadControlRequestError('state', `state must be "Paused" or "Resumed", got ${JSON.stringify(state) ?? 'nothing'}`);
  }
  if (path === '/snapshot/create' && method === 'PUT') {
    const snapshotPath = field(body, 'snapshot_path');
    if (typeof snapshotPath !== 'string' || snapshotPath === '') throw new BadControlRequestError('snapshot_path', 'snapshot_path (a path) is required');
    // The VMM's working directory is not the caller's: a relative path would land somewhere the caller did not mean.
    if (!isAbsolute(snapshotPath)) throw new BadControlRequestError('snapshot_path', `snapshot_path must be absolute, got ${JSON.stringify(snapshotPath)}`);
    return reply(res, 200, await host.vmm.snapshot(snapshotPath));
  }
  if (path === '/serial/input' && method === 'PUT') {
    const data = field(body, 'data');
    if (typeof data !== 'string') throw new BadControlRequestError('data', 'data (a string) is required');
    await host.vmm.sendInput(Buffer.from(data, 'utf8'));
    return reply(res, 204);
  }
  if (path === '/migrate' && method === 'PUT') {
    const to = field(body, 'to');
    if (typeof to !== 'string' || to === '') throw new BadControlRequestError('to', 'to (HOST:PORT of the destination) is required');
    const mode = field(body, 'mode') ?? 'hybrid';
    if (mode !== 'precopy' && mode !== 'postcopy' && mode !== 'hybrid') throw new BadControlRequestError('mode', `mode must be precopy, postcopy or hybrid, got ${JSON.stringify(mode)}`);
    const downtimeMs = optionalNumber(body, 'downtime_ms', 1, 600_000);
    const maxRounds = optionalNumber(body, 'max_rounds', 1, 1000);
    parseMigrationAddress(to);
    const pskFile = field(body, 'psk_file');
    if (pskFile !== undefined && (typeof pskFile !== 'string' || !isAbsolute(pskFile))) throw new BadControlRequestError('psk_file', 'psk_file must be an absolute path');
    const security = pskFile === undefined ? undefined : readPskFile(pskFile);
    const reconnectDeadlineMs = optionalNumber(body, 'reconnect_deadline_ms', 100, 24 * 3600_000);
    const stallTimeoutMs = optionalNumber(body, 'stall_timeout_ms', 100, 3600_000);
    const progressTimeoutMs = optionalNumber(body, 'progress_timeout_ms', 100, 24 * 3600_000);
    host.check('migrate');
    const running = host.migrate({ to, mode, downtimeMs, maxRounds, security, reconnectDeadlineMs, stallTimeoutMs, progressTimeoutMs });
    // With "wait": true the answer is the final report (the VMM ends after a completed migration: this is the last
    // word) — or the progress of a migration paused past its reconnect deadline, which waits for the operator.
    if (field(body, 'wait') === true) return reply(res, 200, await host.migrationOutcome(running));
    // Otherwise it runs on; its end is in GET /migrate (and the VMM's log).
    running.catch(() => {});
    return reply(res, 202, { state: 'migrating' });
  }
  if (path === '/migrate' && method === 'GET') {
    const status = host.status().migration;
    if (!status) throw new UnknownRouteError(method, path);
    return reply(res, 200, status);
  }
  if (path === '/migrate/resume' && method === 'PUT') {
    const run = host.resumeMigration();
    if (field(body, 'wait') === true) return reply(res, 200, await run);
    return reply(res, 200, { state: host.status().migration?.state });
  }
  if (path === '/migrate/abandon' && method === 'PUT') {
    await host.abandonMigration();
    return reply(res, 200, { state: host.status().migration?.state });
  }
  if (path === '/migrate/cancel' && method === 'PUT') {
    host.cancelMigration();
    return reply(res, 200, { state: host.status().migration?.state });
  }
  if (path === '/actions' && method === 'PUT') {
    const action = field(body, 'action_type');
    if (action !== 'Stop') throw new BadControlRequestError('action_type', `unknown action_type ${JSON.stringify(action) ?? '(none)'}`);
    host.check('stop');
    reply(res, 204);
    if (options.onStop) options.onStop();
    else void host.close();
    return;
  }
  const allowed = Object.prototype.hasOwnProperty.call(ROUTE_METHODS, path) ? ROUTE_METHODS[path] : undefined;
  if (allowed) throw new MethodNotAllowedError(method, path, allowed);
  throw new UnknownRouteError(method, path);
}

/** body[name] when present: a number in [min, max], else a BadControlRequestError naming it. */
function optionalNumber(body: unknown, name: string, min: number, max: number): number | undefined {
  const value = field(body, name);
  if (value === undefined) return undefined;
  if (typeof value !== 'number' || !Number.isFinite(value) || value < min || value > max) throw new BadControlRequestError(name, `${name} must be a number from ${min} to ${max}, got ${JSON.stringify(value)}`);
  return value;
}

const TOO_LARGE = Symbol('too large');

/**
 * The body as JSON ({} when empty). Over MAX_BODY_BYTES — by its
 * content-length before a byte is read, or as it arrives — it is answered
 * 413 at once and the rest is read and dropped (answering and closing while
 * the peer still writes would lose the answer).
 */
function readJson(req: IncomingMessage, res: ServerResponse): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const declared = req.headers['content-length'] === undefined ? undefined : Number(req.headers['content-length']);
    let over = false;
    const tooLarge = (): void => {
      over = true;
      replyError(res, new RequestBodyTooLargeError(MAX_BODY_BYTES, declared), { close: true });
      resolve(TOO_LARGE);
    };
    if (declared !== undefined && declared > MAX_BODY_BYTES) tooLarge();
    const chunks: Buffer[] = [];
    let total = 0;
    req.on('data', (chunk: Buffer) => {
      if (over) return; // read and dropped
      total += chunk.length;
      if (total > MAX_BODY_BYTES) {
        chunks.length = 0;
        tooLarge();
        return;
      }
      chunks.push(chunk);
    });
    req.on('end', () => {
      if (over) return;
      if (total === 0) return resolve({});
      try {
        resolve(JSON.parse(Buffer.concat(chunks).toString('utf8')) as unknown);
      } catch {
        reject(new BadControlRequestError(undefined, 'the request body is not JSON'));
      }
    });
    // The peer went away mid-body: nothing to answer (reply() sees the response destroyed).
    req.on('error', reject);
    req.on('close', () => {
      if (!req.complete && !over) reject(new BadControlRequestError(undefined, 'the connection closed before the request was complete'));
    });
  });
}

function field(body: unknown, name: string): unknown {
  if (typeof body !== 'object' || body === null || Array.isArray(body)) throw new BadControlRequestError(undefined, 'the request body must be a JSON object');
  return Object.prototype.hasOwnProperty.call(body, name) ? (body as Record<string, unknown>)[name] : undefined;
}

function replyError(res: ServerResponse, error: unknown, options: { close?: boolean } = {}): void {
  const e = error as Error & { code?: unknown };
  const code = typeof e?.code === 'string' ? e.code : undefined;
  const status = (code === undefined ? undefined : HTTP_STATUS[code]) ?? 500;
  const headers = error instanceof MethodNotAllowedError ? { allow: error.allowed.join(', ') } : undefined;
  reply(res, status, { fault_message: e?.message ?? String(error), code }, { ...options, headers });
}

function reply(res: ServerResponse, status: number, body?: unknown, options: { close?: boolean; headers?: Record<string, string> } = {}): void {
  if (res.headersSent || res.destroyed) return;
  const headers: Record<string, string> = { ...(options.close ? { connection: 'close' } : {}), ...options.headers };
  if (body === undefined) {
    res.writeHead(status, headers).end();
    return;
  }
  const text = JSON.stringify(body, (_k, v: unknown) => (typeof v === 'bigint' ? v.toString() : v));
  res.writeHead(status, { ...headers, 'content-type': 'application/json' }).end(text);
}

/** A raw client for the control socket (tests): the status and the parsed body (or its text when not JSON). */
export async function controlRequest(socketPath: string, method: string, path: string, body?: unknown): Promise<{ status: number; body: unknown }> {
  return new Promise((resolve, reject) => {
    const req = request({ socketPath, method, path, headers: { 'content-type': 'application/json' } }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('error', reject);
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        let parsed: unknown = text || undefined;
        try {
          if (text) parsed = JSON.parse(text) as unknown;
        } catch {
          // Not JSON (a 400 from the HTTP parser): the text itself.
        }
        resolve({ status: res.statusCode ?? 0, body: parsed });
      });
    });
    req.on('error', reject);
    req.end(body === undefined ? undefined : JSON.stringify(body));
  });
}

/**
 * The client the CLI uses: the reply's body on success; NoVmListeningError
 * when nothing answers at the path; ControlApiError (the HTTP status and
 * the server's fault code) for a refused request.
 */
export async function callControlApi(socketPath: string, method: string, path: string, body?: unknown): Promise<unknown> {
  let response: { status: number; body: unknown };
  try {
    response = await controlRequest(socketPath, method, path, body);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ECONNREFUSED' || code === 'ENOTSOCK' || code === 'ENOTDIR') throw new NoVmListeningError(socketPath, { cause: error });
    throw error;
  }
  if (response.status >= 400) {
    const fault = (typeof response.body === 'object' && response.body !== null ? response.body : {}) as { fault_message?: unknown; code?: unknown };
    throw new ControlApiError(
      response.status,
      typeof fault.code === 'string' ? fault.code : undefined,
      typeof fault.fault_message === 'string' ? fault.fault_message : `the VM answered HTTP ${response.status}`,
    );
  }
  return response.body;
}
