// A small HTTP server for the read-only endpoints a hostile peer may reach
// (a --metrics port, the dashboard): a fixed table of paths, each with the
// methods it answers; everything else refused out loud, and nothing a peer
// sends can make the process hold much:
//
//   unknown path           404, naming the paths there are
//   known path, wrong verb 405 with Allow
//   a request body         413 and the connection closed (these endpoints take none)
//   headers over 8 KiB     431 (Node's parser), a bad request line 400
//   slow headers/request   408 after 10 s / 30 s
//   more than maxConnections at once: the kernel's accept queue holds the rest
//
// Pure policy over node:http; the handlers are the callers'.
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { UserfaultError } from '../errors.js';
import { formatHostPort, isLoopbackHost, parseHostPort, type HostPort } from '../pages/address.js';

export const HTTP_MAX_HEADER_BYTES = 8 << 10;
const HEADERS_TIMEOUT_MS = 10_000;
const REQUEST_TIMEOUT_MS = 30_000;

export interface HttpRoute {
  /** GET routes answer HEAD too (Node sends the headers, not the body). */
  methods: readonly ('GET' | 'POST')[];
  handle(req: IncomingMessage, res: ServerResponse, url: URL): void | Promise<void>;
}

export interface BoundedHttpServerOptions {
  routes: Readonly<Record<string, HttpRoute>>;
  /** Connections at once (default 32). */
  maxConnections?: number;
}

export function createBoundedHttpServer(options: BoundedHttpServerOptions): Server {
  const server = createServer({ maxHeaderSize: HTTP_MAX_HEADER_BYTES, headersTimeout: HEADERS_TIMEOUT_MS, requestTimeout: REQUEST_TIMEOUT_MS }, (req, res) => {
    void answer(options.routes, req, res).catch((error: unknown) => {
      if (!res.headersSent) sendText(res, 500, `internal error: ${(error as Error).message ?? String(error)}\n`);
      else res.destroy();
    });
  });
  server.maxHeadersCount = 64;
  server.maxConnections = options.maxConnections ?? 32;
  server.on('clientError', (error: Error & { code?: string }, socket: Socket) => {
    if (!socket.writable) return socket.destroy();
    const status = error.code === 'HPE_HEADER_OVERFLOW' ? '431 Request Header Fields Too Large' : error.code === 'ERR_HTTP_REQUEST_TIMEOUT' ? '408 Request Timeout' : '400 Bad Request';
    socket.end(`HTTP/1.1 ${status}\r\nconnection: close\r\ncontent-length: 0\r\n\r\n`);
  });
  return server;
}

async function answer(routes: Readonly<Record<string, HttpRoute>>, req: IncomingMessage, res: ServerResponse): Promise<void> {
  const method = req.method ?? 'GET';
  let url: URL;
  try {
    url = new URL(req.url ?? '/', 'http://localhost');
  } catch {
    return sendText(res, 400, 'a malformed request target\n', { close: true });
  }
  const hasBody = (req.headers['content-length'] !== undefined && req.headers['content-length'] !== '0') || req.headers['transfer-encoding'] !== undefined;
  if (hasBody) return sendText(res, 413, 'these endpoints take no request body\n', { close: true });
  const route = Object.prototype.hasOwnProperty.call(routes, url.pathname) ? routes[url.pathname] : undefined;
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
    ...(options.close ? { connection: 'close' } : {}),
    ...options.headers,
  });
  res.end(text);
}

/** Listen on host:port (port 0: any free one); resolves with the address listened on. */
export async function listenHttp(server: Server, address: HostPort): Promise<HostPort> {
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen({ host: address.host, port: address.port }, () => {
      server.off('error', reject);
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
