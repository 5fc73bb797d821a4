// Server-sent events to every open page. Updates are pushed as they are made
// (one poll of the source, any number of pages); a page that reads slowly,
// or stopped reading without closing, must not make the server hold its
// updates without end:
//
//   - each client's unsent bytes (Node's buffer and the socket's) are bounded
//     by maxBufferedBytes: the update that would pass the bound drops the
//     client instead (it reconnects, as EventSource does, and starts fresh);
//   - at most maxClients streams are open; one more is answered 503;
//   - a comment line every heartbeatMs finds connections that are gone.
import type { ServerResponse } from 'node:http';

export interface SseOptions {
  /** Default 32. */
  maxClients?: number;
  /** Default 1 MiB. */
  maxBufferedBytes?: number;
  /** Default 15 s. */
  heartbeatMs?: number;
}

export interface SseStats {
  clients: number;
  /** Clients dropped because they did not keep up. */
  dropped: number;
}

export class SseBroadcaster {
  private readonly clients = new Set<ServerResponse>();
  private readonly maxClients: number;
  private readonly maxBufferedBytes: number;
  private readonly heartbeat: NodeJS.Timeout;
  private droppedCount = 0;

  constructor(options: SseOptions = {}) {
    this.maxClients = options.maxClients ?? 32;
    this.maxBufferedBytes = options.maxBufferedBytes ?? 1 << 20;
    this.heartbeat = setInterval(() => this.broadcastRaw(': heartbeat\n\n'), options.heartbeatMs ?? 15_000);
    this.heartbeat.unref();
  }

  get stats(): SseStats {
    return { clients: this.clients.size, dropped: this.droppedCount };
  }

  /** Take a request as an event stream (after `first`, if given, is sent to it alone, in order). False when full (answered 503). */
  add(res: ServerResponse, first: ReadonlyArray<{ event: string; data: string }> = []): boolean {
    if (this.clients.size >= this.maxClients) {
      res.writeHead(503, { 'content-type': 'text/plain; charset=utf-8', 'retry-after': '5', connection: 'close' }).end(`at most ${this.maxClients} dashboards at once\n`);
      return false;
    }
    res.writeHead(200, { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-store', connection: 'keep-alive', 'x-accel-buffering': 'no' });
    // EventSource reconnects after this many ms when the stream ends (a dropped client comes back).
    res.write('retry: 1000\n\n');
    this.clients.add(res);
    res.on('close', () => this.clients.delete(res));
    for (const { event, data } of first) this.write(res, format(event, data));
    return true;
  }

  send(event: string, data: string): void {
    this.broadcastRaw(format(event, data));
  }

  /** End every stream. */
  close(): void {
    clearInterval(this.heartbeat);
    for (const res of this.clients) res.end();
    this.clients.clear();
  }

  private broadcastRaw(text: string): void {
    for (const res of this.clients) this.write(res, text);
  }

  private write(res: ServerResponse, text: string): void {
    // writableLength: bytes in the response's buffer and its socket's, not yet handed to the kernel.
    if (res.writableLength + Buffer.byteLength(text) > this.maxBufferedBytes) {
      this.clients.delete(res);
      this.droppedCount++;
      res.destroy();
      return;
    }
    res.write(text);
  }
}

/** One event: its name, and its data split into `data:` lines (a newline inside would end the field). */
function format(event: string, data: string): string {
  return `event: ${event}\n${data.split('\n').map((line) => `data: ${line}`).join('\n')}\n\n`;
}
