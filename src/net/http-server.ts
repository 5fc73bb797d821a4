// A small HTTP server for the read-only endpoints a hostile peer may reach
// (a --metrics port, the dashboard): a fixed table of paths, each with the
// methods it answers; everything else refused out loud, and nothing a peer
// sends can make the process hold much:
//
//   a Host not naming this server  421 (DNS rebinding; host-policy.ts)
//   another site's Origin          403 (but a GET of a page)
//   unknown path                   404, naming the paths there are
//   known path, wrong verb         405 with Allow
//   a request body                 413 and the connection closed (these endpoints take none)
//   headers over 8 KiB             431 (Node's parser), a bad request line 400
//   slow headers/request           408 after 10 s / 30 s
//   idle or slow peers at the cap  the idlest closed for a new one (connection-bounds.ts)
//
// Pure policy over node:http; the handlers are the callers'.
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { hostname } from 'node:os';
import type { AddressInfo, Socket } from 'node:net';
import { UserfaultError } from '../errors.js';
import { formatHostPort, isLoopbackHost, parseHostPort, type HostPort } from '../net/address.js';
import { boundHttpServer, DEFAULT_HTTP_BOUNDS, type HttpBounds } from './connection-bounds.js';
import { checkHostAndOrigin, type HostPolicy } from './host-policy.js';

export const HTTP_MAX_HEADER_BYTES = 8 << 10;

export interface HttpRoute {
  /** GET routes answer HEAD too (Node sends the headers, not the body). */
  methods: readonly ('GET' | 'POST')[];
  handle(req: IncomingMessage, res: ServerResponse, url: URL): void | Promise<void>;
  /** A document a browser may be sent to from another site (the dashboard's page): a GET of it is answered whatever its Origin. */
  page?: boolean;
}

export interface BoundedHttpServerOptions {
  routes: Readonly<Record<string, HttpRoute>>;
  /** Connections at once and timeouts (default DEFAULT_HTTP_BOUNDS: 32 connections, 10 s for headers, 30 s a request, 5 s idle). */
  bounds?: Partial<HttpBounds>;
  /**
   * Host names taken besides loopback and the listen address when the
   * server listens on an address other hosts reach (default: this machine's
   * host name). See host-policy.ts.
   */
  hostNames?: readonly string[];
}

export function createBoundedHttpServer(options: BoundedHttpServerOptions): Server {
  // Set once the server listens (listenHttp): which Hosts it answers depends on where.
  let policy: HostPolicy | undefined;
  const server = createServer({ maxHeaderSize: HTTP_MAX_HEADER_BYTES }, (req, res) => {
    void answer(options.routes, policy, req, res).catch((error: unknown) => {
      if (!res.headersSent) sendText(res, 500, `internal error: ${(error as Error).message ?? String(error)}\n`);
      else res.destroy();
    });
  });
  server.maxHeadersCount = 64;
  boundHttpServer(server, { ...DEFAULT_HTTP_BOUNDS, ...options.bounds });
  server.on('listening', () => {
    const bound = server.address() as AddressInfo | string;
    // On a Unix socket (a path) no web page reaches it: the loopback rule is plenty.
    const listenHost = typeof bound === 'string' ? 'localhost' : bound.address;
    policy = { listenHost, remote: !isLoopbackHost(listenHost), names: (options.hostNames ?? [hostname()]).map((name) => name.toLowerCase()) };
  });
  answerClientErrors(server);
  return server;
}

/** A request Node cannot parse (bad request line, headers over the limit, too slow): answered and closed; the server goes on. */
export function answerClientErrors(server: Server): void {
  server.on('clientError', (error: Error & { code?: string }, socket: Socket) => {
    if (!socket.writable) return socket.destroy();
    const status = error.code === 'HPE_HEADER_OVERFLOW' ? '431 Request Header Fields Too Large' : error.code === 'ERR_HTTP_REQUEST_TIMEOUT' ? '408 Request Timeout' : '400 Bad Request';
    socket.end(`HTTP/1.1 ${status}\r\nconnection: close\r\ncontent-length: 0\r\n\r\n`);
  });
}

async function answer(routes: Readonly<Record<string, HttpRoute>>, policy: HostPolicy | undefined, req: IncomingMessage, res: ServerResponse): Promise<void> {
  const method = req.method ?? 'GET';
  let url: URL;
  try {
    url = new URL(req.url ?? '/', 'http://localhost');
  } catch {
    return sendText(res, 400, 'a malformed request target\n', { close: true });
  }
  const route = Object.prototype.hasOwnProperty.call(routes, url.pathname) ? routes[url.pathname] : undefined;
  // Before anything else, the 404's list of paths included: a page of another site learns nothing here.
  if (!policy) return sendText(res, 503, 'not listening yet\n', { close: true });
  const verdict = checkHostAndOrigin(req.headers, { method, isPage: route?.page === true }, policy);
  if (!verdict.ok) return sendText(res, verdict.status, `${verdict.reason}\n`, { close: true });
  const hasBody = (req.headers['content-length'] !== undefined && req.headers['content-length'] !== '0') || req.headers['transfer-encoding'] !== undefined;
  if (hasBody) return sendText(res, 413, 'these endpoints take no request body\n', { close: true });
  if (!route) return sendText(res, 404, `no such path: ${url.pathname.slice(0, 200)} (there are: ${Object.keys(routes).join(', ')})\n`);
  const allowed = route.methods.includes('GET') ? [...route.methods, 'HEAD'] : [...route.methods];
  if (!allowed.includes(method)) return sendText(res, 405, `${url.pathname} answers ${allowed.join(', ')}, not ${method.slice(0, 20)}\n`, { headers: { allow: allowed.join(', ') } });
  await route.handle(req, res, url);
}

export function sendText(res: ServerResponse, status: number, text: string, options: { close?: boolean; headers?: Record<string, string>; contentType?: string } = {}): void {
  if (res.headersSent || res.destroyed) return;
  res.writeHead(status, {
    'content-type': options.contentType ?? 'text/plain; charset=utf-8',
    'content-length': Buffer.byteLength(text),
    'cache-control': 'no-store',
    'x-content-type-options': 'nosniff',
    ...(options.close ? { connection: 'close' } : {}),
    ...options.headers,
  });
  res.end(text);
}

/** Listen on host:port (port 0: any free one); resolves with the address listened on. */
/** The address a `--option HOST:PORT` names is taken by another process. Code EADDRINUSE (exit 73). */
export class ListenAddressInUseError extends UserfaultError {
  override readonly code = 'EADDRINUSE';
  constructor(readonly option: string, readonly address: string, options?: { cause?: unknown }) {
    super(`${option} ${address}: the address is in use (another process listens there); choose another port, or port 0 for any free one`, options);
  }
}

/** Listen on `address`; a taken address is named by the option the user gave it with (`option`, e.g. --metrics). */
export async function listenHttp(server: Server, address: HostPort, option?: string): Promise<HostPort> {
  await new Promise<void>((resolve, reject) => {
    const refused = (error: Error & { code?: string }): void => {
      reject(option !== undefined && error.code === 'EADDRINUSE' ? new ListenAddressInUseError(option, formatHostPort(address), { cause: error }) : error);
    };
    server.once('error', refused);
    server.listen({ host: address.host, port: address.port }, () => {
      server.off('error', refused);
      resolve();
    });
  });
  // After listening, a failed accept (EMFILE) is the server's to survive, not the process's to die of.
  server.on('error', () => {});
  const bound = server.address() as AddressInfo;
  return { host: bound.address, port: bound.port };
}

/** Close a server and every connection it has (an SSE stream included). */
export function closeHttp(server: Server): Promise<void> {
  return new Promise((resolve) => {
    server.close(() => resolve());
    server.closeAllConnections();
  });
}

/** A listen address that is not loopback, given without the flag that says it is meant. Code EUSAGE (exit 64). */
export class RemoteListenNotAllowedError extends UserfaultError {
  override readonly code = 'EUSAGE';
  constructor(readonly option: string, readonly address: string, readonly flag: string, what: string) {
    super(`${option} ${address} is reachable from other hosts: ${what}; add ${flag} to mean it`);
  }
}

/**
 * Parse a `--option HOST:PORT` listen address. Loopback is the rule: any
 * other host needs `allowed` (the command's explicit flag, named by `flag`),
 * and then `warn` is told, so the process says so in its log.
 */
export function checkListenAddress(text: string, option: string, policy: { allowed: boolean; flag: string; what: string; warn: (message: string) => void }): HostPort {
  const address = parseHostPort(text, `${option} HOST:PORT address`);
  if (isLoopbackHost(address.host)) return address;
  if (!policy.allowed) throw new RemoteListenNotAllowedError(option, formatHostPort(address), policy.flag, policy.what);
  policy.warn(`${option} ${formatHostPort(address)}: reachable from other hosts (${policy.flag}): ${policy.what}`);
  return address;
}
