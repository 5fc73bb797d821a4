// Addresses of page servers: "HOST:PORT" to listen on, "tcp://HOST:PORT" to
// connect to, and whether a host is this machine's loopback. Pure.
import { isIP } from 'node:net';
import { UserfaultError } from '../errors.js';

/** A listen address or page URL that cannot be parsed. Code EUSAGE. */
export class AddressError extends UserfaultError {
  override readonly code = 'EUSAGE';
  constructor(readonly text: string, reason: string) {
    super(`${JSON.stringify(text)} is not a ${reason}`);
  }
}

export interface HostPort {
  /** An IP address or a host name, without brackets. */
  host: string;
  port: number;
}

/** "127.0.0.1:7000", "[::1]:7000", "localhost:0". */
export function parseHostPort(text: string, what = 'HOST:PORT address'): HostPort {
  const match = /^(?:\[([^\]]+)\]|([^:[\]]+)):(\d{1,5})$/.exec(text.trim());
  if (!match) throw new AddressError(text, `${what} (examples: 127.0.0.1:7000, [::1]:7000)`);
  const host = (match[1] ?? match[2])!;
  const port = Number(match[3]);
  if (port > 65535) throw new AddressError(text, `${what}: port ${port} is past 65535`);
  if (match[1] !== undefined && isIP(host) !== 6) throw new AddressError(text, `${what}: only IPv6 addresses go in brackets`);
  return { host, port };
}

/** "tcp://HOST:PORT" (port 1..65535). */
export function parsePageUrl(url: string): HostPort {
  const match = /^tcp:\/\/(.+)$/.exec(url.trim());
  if (!match) throw new AddressError(url, 'page server URL (tcp://HOST:PORT)');
  const address = parseHostPort(match[1]!, 'page server URL (tcp://HOST:PORT)');
  if (address.port === 0) throw new AddressError(url, 'page server URL: port 0 names no server');
  return address;
}

export function formatHostPort({ host, port }: HostPort): string {
  return isIP(host) === 6 ? `[${host}]:${port}` : `${host}:${port}`;
}

/**
 * Whether `host` only reaches this machine: "localhost", 127.0.0.0/8, ::1 and
 * ::ffff:127.0.0.0/104. Anything else (0.0.0.0 and :: included: they listen
 * on every interface; any other name: it may resolve anywhere) is remote.
 */
export function isLoopbackHost(host: string): boolean {
  const lower = host.toLowerCase();
  if (lower === 'localhost') return true;
  if (isIP(lower) === 4) return lower.startsWith('127.');
  if (isIP(lower) === 6) {
    if (lower === '::1' || lower === '0:0:0:0:0:0:0:1') return true;
    const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/.exec(lower);
    return mapped !== null && mapped[1]!.startsWith('127.');
  }
  return false;
}
