// What slow or idle HTTP peers can hold, for every HTTP server here (the
// --metrics ports, the dashboard, a VMM's control socket):
//
//   headers     a connection has headersTimeoutMs from its opening (or the end
//               of its previous answer) to send a request's headers: then 408
//   request     requestTimeoutMs for the whole request, body included: then 408
//   keep-alive  an idle connection between requests closes after
//               keepAliveTimeoutMs (Node adds a second of slack)
//   connections at most maxConnections at once. At the cap a new connection
//               closes the one idle longest — idle, or still sending its
//               request — to make room: a peer that opens connections and
//               sends nothing, or dribbles its headers a byte a second, can
//               fill the table but not keep anyone out (issue 17: 16 such
//               connections locked a VMM's control socket for over 75 s).
//               Only connections being answered (a handler running, an event
//               stream) are never closed for room; when every one is, the
//               new one is answered 503.
//
// Node's own server.maxConnections is not used: it drops the new connection,
// which is the lockout. Node checks the two timeouts every
// connectionsCheckingInterval (30 s by default, which is what let the probe's
// peers linger): here a quarter of the header timeout, at most a second.
import type { IncomingMessage, Server } from 'node:http';
import type { Socket } from 'node:net';

export interface HttpBounds {
  /** Connections at once; at the cap a new one closes the connection idle longest. */
  maxConnections: number;
  /** From a connection's opening, or its previous answer, to its request's headers. */
  headersTimeoutMs: number;
  /** From a connection's opening, or its previous answer, to the end of its request. */
  requestTimeoutMs: number;
  /** An idle connection between requests. */
  keepAliveTimeoutMs: number;
}

export const DEFAULT_HTTP_BOUNDS: Readonly<HttpBounds> = {
  maxConnections: 32,
  headersTimeoutMs: 10_000,
  requestTimeoutMs: 30_000,
  keepAliveTimeoutMs: 5_000,
};

interface Tracked {
  /** When it opened, or last finished an answer (ms). */
  idleSinceMs: number;
  /** Answers not finished. */
  answering: number;
  /** Its latest request (still arriving while !complete). */
  request?: IncomingMessage;
}

/** Put `bounds` on an http.Server (before it listens). */
export function boundHttpServer(server: Server, bounds: HttpBounds): void {
  if (bounds.requestTimeoutMs < bounds.headersTimeoutMs) throw new RangeError(`requestTimeoutMs (${bounds.requestTimeoutMs}) is under headersTimeoutMs (${bounds.headersTimeoutMs})`);
  server.headersTimeout = bounds.headersTimeoutMs;
  server.requestTimeout = bounds.requestTimeoutMs;
  server.keepAliveTimeout = bounds.keepAliveTimeoutMs;
  // Read when the server starts listening (node:http's setupConnectionsTracking).
  (server as Server & { connectionsCheckingInterval: number }).connectionsCheckingInterval = Math.max(10, Math.min(1000, Math.floor(bounds.headersTimeoutMs / 4)));

  const tracked = new Map<Socket, Tracked>();
  // Every connection passes here after node:http has attached its parser.
  server.on('connection', (socket: Socket) => {
    if (tracked.size >= bounds.maxConnections && !closeIdlest(tracked)) {
      const text = `at most ${bounds.maxConnections} connections at once, all being answered; try again\n`;
      socket.end(`HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\nretry-after: 1\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: ${Buffer.byteLength(text)}\r\n\r\n${text}`, () => socket.destroy());
      return;
    }
    tracked.set(socket, { idleSinceMs: Date.now(), answering: 0 });
    socket.once('close', () => tracked.delete(socket));
  });
  // Ahead of the handler, which may finish its answer at once.
  server.prependListener('request', (req: IncomingMessage, res) => {
    const entry = tracked.get(req.socket);
    if (!entry) return;
    entry.answering++;
    entry.request = req;
    res.once('close', () => {
      entry.answering--;
      entry.idleSinceMs = Date.now();
    });
  });
}

/** Close the connection idle longest (or still sending its request); false when every one is being answered. */
function closeIdlest(tracked: Map<Socket, Tracked>): boolean {
  let idlest: Socket | undefined;
  let since = Infinity;
  for (const [socket, entry] of tracked) {
    const closable = entry.answering === 0 || (entry.request !== undefined && !entry.request.complete);
    if (closable && entry.idleSinceMs < since) {
      idlest = socket;
      since = entry.idleSinceMs;
    }
  }
  if (!idlest) return false;
  tracked.delete(idlest);
  idlest.destroy();
  return true;
}
