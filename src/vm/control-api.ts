// The control socket of a running VMM: HTTP/JSON over a Unix socket, in the
// manner of Firecracker's API.
//
//   GET   /vm                 -> 200 {state, memoryBytes, vcpus, exitReason}
//   PATCH /vm {"state": "Paused" | "Resumed"}   (PUT accepted too) -> 204
//   PUT   /snapshot/create {"snapshot_path": P} -> 200 {sizeBytes, durationMs, ...}
//                             (pauses the VM; it stays paused)
//   PUT   /serial/input {"data": "text"}        -> 204 (bytes for COM1)
//   PUT   /actions {"action_type": "Stop"}      -> 204 (ends the VM)
// Errors: 400 {fault_message, code} for a refused or malformed request,
// 404 for an unknown route.
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { unlinkSync } from 'node:fs';
import type { Vmm } from './vmm.js';

export interface ControlApiOptions {
  /** Called for PUT /actions Stop (the embedding program ends the VMM its way). */
  onStop?: () => void;
}

export async function startControlApi(vmm: Vmm, socketPath: string, options: ControlApiOptions = {}): Promise<Server> {
  try {
    unlinkSync(socketPath);
  } catch {
    // no stale socket
  }
  const server = createServer((req, res) => {
    void route(vmm, req, res, options).catch((error: Error & { code?: string }) => reply(res, 400, { fault_message: error.message, code: error.code }));
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(socketPath, () => resolve());
  });
  return server;
}

async function route(vmm: Vmm, req: IncomingMessage, res: ServerResponse, options: ControlApiOptions): Promise<void> {
  const path = (req.url ?? '/').split('?')[0];
  const body = await readJson(req);
  if (path === '/vm' && req.method === 'GET') return reply(res, 200, vmm.status());
  if (path === '/vm' && (req.method === 'PATCH' || req.method === 'PUT')) {
    const state = (body as { state?: string }).state;
    if (state === 'Paused') await vmm.pause();
    else if (state === 'Resumed') await vmm.resume();
    else return reply(res, 400, { fault_message: `state must be "Paused" or "Resumed", got ${JSON.stringify(state)}` });
    return reply(res, 204);
  }
  if (path === '/snapshot/create' && req.method === 'PUT') {
    const snapshotPath = (body as { snapshot_path?: string }).snapshot_path;
    if (typeof snapshotPath !== 'string' || snapshotPath === '') return reply(res, 400, { fault_message: 'snapshot_path is required' });
    return reply(res, 200, await vmm.snapshot(snapshotPath));
  }
  if (path === '/serial/input' && req.method === 'PUT') {
    const data = (body as { data?: string }).data;
    if (typeof data !== 'string') return reply(res, 400, { fault_message: 'data (a string) is required' });
    await vmm.sendInput(Buffer.from(data, 'utf8'));
    return reply(res, 204);
  }
  if (path === '/actions' && req.method === 'PUT') {
    const action = (body as { action_type?: string }).action_type;
    if (action !== 'Stop') return reply(res, 400, { fault_message: `unknown action_type ${JSON.stringify(action)}` });
    reply(res, 204);
    options.onStop?.();
    return;
  }
  return reply(res, 404, { fault_message: `no route ${req.method} ${path}` });
}

async function readJson(req: IncomingMessage): Promise<unknown> {
  const chunks: Buffer[] = [];
  for await (const chunk of req) chunks.push(chunk as Buffer);
  if (chunks.length === 0) return {};
  const text = Buffer.concat(chunks).toString('utf8');
  try {
    return JSON.parse(text) as unknown;
  } catch {
    throw Object.assign(new Error('the request body is not JSON'), { code: 'EBADJSON' });
  }
}

function reply(res: ServerResponse, status: number, body?: unknown): void {
  if (res.headersSent) return;
  if (body === undefined) {
    res.writeHead(status).end();
    return;
  }
  const text = JSON.stringify(body, (_k, v: unknown) => (typeof v === 'bigint' ? v.toString() : v));
  res.writeHead(status, { 'content-type': 'application/json' }).end(text);
}

/** A small client for the control socket (tests, the CLI). */
export async function controlRequest(socketPath: string, method: string, path: string, body?: unknown): Promise<{ status: number; body: unknown }> {
  const { request } = await import('node:http');
  return new Promise((resolve, reject) => {
    const req = request({ socketPath, method, path, headers: { 'content-type': 'application/json' } }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        resolve({ status: res.statusCode ?? 0, body: text ? (JSON.parse(text) as unknown) : undefined });
      });
    });
    req.on('error', reject);
    req.end(body === undefined ? undefined : JSON.stringify(body));
  });
}
