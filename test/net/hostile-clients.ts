// Hostile HTTP peers, as a probe of issue 17 drove them: connections opened
// and left idle (nothing sent), and connections that dribble their headers a
// byte at a time and never finish. Real sockets, TCP or Unix.
import { connect, type Socket } from 'node:net';

export type Target = { port: number; host?: string } | { socketPath: string };

function open(target: Target): Socket {
  return 'socketPath' in target ? connect(target.socketPath) : connect(target.port, target.host ?? '127.0.0.1');
}

/** Connections that hold a place and send nothing, or a header byte every `dribbleMs`. close() ends them all. */
export async function occupy(target: Target, counts: { idle: number; slow: number }, dribbleMs = 1000): Promise<{ sockets: Socket[]; answers: Map<Socket, string>; close(): void }> {
  const sockets: Socket[] = [];
  const answers = new Map<Socket, string>();
  const timers: NodeJS.Timeout[] = [];
  const request = 'GET / HTTP/1.1\r\nhost: localhost\r\nx-slow: ' + 'a'.repeat(10_000);
  const opened: Promise<void>[] = [];
  for (let i = 0; i < counts.idle + counts.slow; i++) {
    const socket = open(target);
    socket.on('error', () => {});
    // Read what comes (a 408, the end) so a close is seen: `answers` has it.
    socket.setEncoding('latin1').on('data', (chunk: string) => answers.set(socket, (answers.get(socket) ?? '') + chunk));
    sockets.push(socket);
    opened.push(new Promise((resolve) => socket.once('connect', resolve).once('close', resolve)));
    if (i >= counts.idle) {
      let at = 0;
      const timer = setInterval(() => {
        if (!socket.destroyed && socket.writable) socket.write(request[at++ % request.length]!);
      }, dribbleMs);
      timers.push(timer);
      socket.write(request[at++]!);
    }
  }
  await Promise.all(opened);
  return {
    sockets,
    answers,
    close: () => {
      for (const timer of timers) clearInterval(timer);
      for (const socket of sockets) socket.destroy();
    },
  };
}

/** Send raw bytes; resolve with everything answered until the server closed, or `timeoutMs` passed. */
export function rawExchange(target: Target, request: string | Buffer, timeoutMs = 2000): Promise<string> {
  return new Promise((resolve) => {
    const socket = open(target);
    let answer = '';
    const timer = setTimeout(() => socket.destroy(), timeoutMs);
    socket.on('data', (chunk: Buffer) => (answer += chunk.toString('latin1')));
    socket.on('error', () => {});
    socket.on('close', () => {
      clearTimeout(timer);
      resolve(answer);
    });
    socket.end(request);
  });
}

export const statusOf = (answer: string): number => Number(/^HTTP\/1\.[01] (\d{3})/.exec(answer)?.[1]);

/** A GET with the given headers, the connection closed after it; resolves with the raw answer. */
export function getWith(target: Target, path: string, headers: Record<string, string>, timeoutMs = 2000): Promise<string> {
  const lines = Object.entries(headers).map(([name, value]) => `${name}: ${value}\r\n`).join('');
  return rawExchange(target, `GET ${path} HTTP/1.1\r\n${lines}connection: close\r\n\r\n`, timeoutMs);
}
