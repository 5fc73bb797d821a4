// A QMP client over a Unix socket: the greeting, qmp_capabilities, commands
// answered by id, events kept (with the host's arrival time) and waited for.
// Every wait is bounded.
import { connect, type Socket } from 'node:net';
import { decodeQmpLine, encodeQmpCommand, LineSplitter, type QmpMessage, type QmpVersion } from './qmp-protocol.js';

/** QEMU answered a command with an error. */
export class QmpCommandError extends Error {
  readonly code = 'EQMPCOMMAND';
  constructor(readonly command: string, readonly errorClass: string, readonly description: string) {
    super(`QMP ${command}: ${errorClass}: ${description}`);
  }
}

export interface QmpEvent {
  name: string;
  data: Record<string, unknown>;
  /** performance.now() when it arrived. */
  atMs: number;
}

interface Pending {
  command: string;
  resolve: (value: unknown) => void;
  reject: (error: Error) => void;
  timer: NodeJS.Timeout;
}

export class QmpClient {
  readonly events: QmpEvent[] = [];
  private readonly pending = new Map<number, Pending>();
  private eventWaiters: { match: (e: QmpEvent) => boolean; resolve: (e: QmpEvent) => void }[] = [];
  private nextId = 1;
  private closedError: Error | undefined;
  private closeWaiters: ((error: Error) => void)[] = [];

  private constructor(private readonly socket: Socket, readonly version: QmpVersion) {}

  /** Connect (retrying while QEMU has not made the socket yet), read the greeting, leave capabilities negotiation. */
  static async connect(path: string, timeoutMs = 10_000): Promise<QmpClient> {
    const deadline = performance.now() + timeoutMs;
    for (;;) {
      try {
        return await QmpClient.tryConnect(path, Math.max(100, deadline - performance.now()));
      } catch (error) {
        const code = (error as NodeJS.ErrnoException).code;
        if ((code !== 'ENOENT' && code !== 'ECONNREFUSED') || performance.now() > deadline) throw error;
        await new Promise((r) => setTimeout(r, 20));
      }
    }
  }

  private static tryConnect(path: string, timeoutMs: number): Promise<QmpClient> {
    return new Promise((resolve, reject) => {
      const socket = connect(path);
      const splitter = new LineSplitter();
      let client: QmpClient | undefined;
      const timer = setTimeout(() => {
        socket.destroy();
        reject(new Error(`QMP ${path}: no greeting within ${timeoutMs} ms`));
      }, timeoutMs);
      socket.setEncoding('utf8');
      socket.on('data', (chunk: string) => {
        for (const line of splitter.push(chunk)) {
          let message: QmpMessage;
          try {
            message = decodeQmpLine(line);
          } catch (error) {
            socket.destroy(error as Error);
            return;
          }
          if (client) client.onMessage(message);
          else if (message.type === 'greeting') {
            clearTimeout(timer);
            client = new QmpClient(socket, message.version);
            client.execute('qmp_capabilities').then(() => resolve(client!), reject);
          }
        }
      });
      socket.on('error', (error) => {
        clearTimeout(timer);
        if (client) client.onClose(error);
        else reject(error);
      });
      socket.on('close', () => {
        clearTimeout(timer);
        if (client) client.onClose(new Error(`QMP ${path}: connection closed`));
        else reject(new Error(`QMP ${path}: closed before the greeting`));
      });
    });
  }

  execute<T = unknown>(command: string, args?: Record<string, unknown>, timeoutMs = 10_000): Promise<T> {
    if (this.closedError) return Promise.reject(this.closedError);
    const id = this.nextId++;
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new Error(`QMP ${command}: no answer within ${timeoutMs} ms`));
      }, timeoutMs);
      this.pending.set(id, { command, resolve: resolve as (value: unknown) => void, reject, timer });
      this.socket.write(encodeQmpCommand(id, command, args));
    });
  }

  /** The first event (already arrived or still to come) that `match` accepts. */
  waitForEvent(match: (e: QmpEvent) => boolean, timeoutMs: number, what: string): Promise<QmpEvent> {
    const seen = this.events.find(match);
    if (seen) return Promise.resolve(seen);
    return this.nextEvent(match, timeoutMs, what);
  }

  /** The next event to arrive that `match` accepts. */
  nextEvent(match: (e: QmpEvent) => boolean, timeoutMs: number, what: string): Promise<QmpEvent> {
    if (this.closedError) return Promise.reject(this.closedError);
    return new Promise((resolve, reject) => {
      const waiter = {
        match,
        resolve: (e: QmpEvent) => {
          clearTimeout(timer);
          this.closeWaiters = this.closeWaiters.filter((w) => w !== onClose);
          resolve(e);
        },
      };
      const onClose = (error: Error): void => {
        clearTimeout(timer);
        reject(error);
      };
      const timer = setTimeout(() => {
        this.eventWaiters = this.eventWaiters.filter((w) => w !== waiter);
        this.closeWaiters = this.closeWaiters.filter((w) => w !== onClose);
        reject(new Error(`QMP: no ${what} within ${timeoutMs} ms`));
      }, timeoutMs);
      this.eventWaiters.push(waiter);
      this.closeWaiters.push(onClose);
    });
  }

  close(): void {
    this.socket.destroy();
  }

  private onMessage(message: QmpMessage): void {
    switch (message.type) {
      case 'greeting':
        return;
      case 'return':
      case 'error': {
        const pending = message.id === undefined ? undefined : this.pending.get(message.id);
        if (!pending) return;
        this.pending.delete(message.id!);
        clearTimeout(pending.timer);
        if (message.type === 'return') pending.resolve(message.value);
        else pending.reject(new QmpCommandError(pending.command, message.errorClass, message.description));
        return;
      }
      case 'event': {
        const event: QmpEvent = { name: message.name, data: message.data, atMs: performance.now() };
        this.events.push(event);
        this.eventWaiters = this.eventWaiters.filter((w) => {
          if (!w.match(event)) return true;
          w.resolve(event);
          return false;
        });
        return;
      }
      default: {
        const never: never = message;
        throw new Error(`unknown QMP message ${JSON.stringify(never)}`);
      }
    }
  }

  private onClose(error: Error): void {
    if (this.closedError) return;
    this.closedError = error;
    for (const pending of this.pending.values()) {
      clearTimeout(pending.timer);
      pending.reject(new Error(`QMP ${pending.command}: ${error.message}`));
    }
    this.pending.clear();
    for (const w of this.closeWaiters.splice(0)) w(error);
    this.eventWaiters = [];
  }
}
