// Opening a migration's connections. The source connects to the destination
// (`vm receive --listen`) twice, one session: the main connection (the
// handshake, pre-copy's page stream, switchover, post-copy's background push)
// and the urgent one (post-copy's demanded pages only, so a page a vCPU waits
// for never queues behind the push stream). Each opens with the page
// protocol's HELLO, both ways: the source says its role and the session, the
// destination answers with its own or an ERROR and closes.
import { randomBytes } from 'node:crypto';
import { readFileSync, statSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import * as tls from 'node:tls';
import { parsePageUrl, formatHostPort } from '../../net/address.js';
import {
  DEFAULT_MAX_PAYLOAD_BYTES,
  MAX_PROTOCOL_VERSION,
  MIN_PROTOCOL_VERSION,
  ProtocolError,
  SESSION_ID_BYTES,
  acceptHello,
  checkHelloAnswer,
  migrationFrameChecksumOf,
  type HelloMessage,
  type RoleName,
} from '../../protocol/index.js';
import { MigrationConnection, type AnyMessage } from './migration-connection.js';
import { connectForFrames, type RequestIds } from '../../transport/index.js';
import { MigrationAuthError, MigrationKeyError, MigrationPeerError } from '../errors.js';

export type SourceChannel = 'main' | 'urgent';

/**
 * Authentication: TLS with a pre-shared key (TLS-PSK; node:tls, no
 * certificates to manage). Both sides hold the same key; a peer without it,
 * or with another, fails the TLS handshake before a single frame — let alone
 * a page — is read. ECDHE-PSK gives forward secrecy; TLS 1.2, the version
 * OpenSSL's PSK callbacks serve in Node.
 */
export interface MigrationSecurity {
  psk: Uint8Array;
  /** Sent in the clear as the PSK identity (default "userfault-migration"). */
  identity?: string;
}

const PSK_CIPHERS = 'ECDHE-PSK-CHACHA20-POLY1305:PSK-AES256-GCM-SHA384';
const DEFAULT_IDENTITY = 'userfault-migration';
export const MIN_PSK_BYTES = 16;

/** The key in a --psk-file: its bytes as hex (64 hex digits for 32 bytes) or raw; at least 16 bytes. */
export function readPskFile(path: string): MigrationSecurity {
  let bytes: Uint8Array;
  let mode: number;
  try {
    mode = statSync(path).mode;
    bytes = readFileSync(path);
  } catch (error) {
    throw new MigrationKeyError(path, `cannot be read: ${(error as Error).message}`, { cause: error });
  }
  // Like ssh with a private key: a key others may read is no secret.
  if ((mode & 0o077) !== 0) throw new MigrationKeyError(path, `is open to other users (mode ${(mode & 0o777).toString(8).padStart(4, '0')}): a key must be readable by its owner only — chmod 600 ${path}`);
  const text = Buffer.from(bytes).toString('latin1').trim();
  const psk = /^[0-9a-f]+$/i.test(text) && text.length % 2 === 0 ? Buffer.from(text, 'hex') : Buffer.from(bytes);
  if (psk.length < MIN_PSK_BYTES) throw new MigrationKeyError(path, `holds ${psk.length} bytes of key; at least ${MIN_PSK_BYTES} are needed`);
  return { psk };
}

const ROLE_OF: Record<SourceChannel, RoleName> = { main: 'migration-source', urgent: 'migration-source-urgent' };

export function newSessionId(): Uint8Array {
  return new Uint8Array(randomBytes(SESSION_ID_BYTES));
}

/** "127.0.0.1:7000" or "tcp://127.0.0.1:7000". */
export function parseMigrationAddress(text: string): { host: string; port: number } {
  return parsePageUrl(text.startsWith('tcp://') ? text : `tcp://${text}`);
}

/** What answers a request of the source (matched by its id): ACCEPT, READY, RUNNING, RESUMED, a PONG, or an ERROR refusing one. */
const SOURCE_REPLIES: ReadonlySet<AnyMessage['type']> = new Set(['mig-accept', 'mig-ready', 'mig-running', 'mig-resumed', 'pong']);
/** What answers the destination's requests: COMPLETE's VERIFIED, a post-copy READ's pages, a PING's PONG. */
const DESTINATION_REPLIES: ReadonlySet<AnyMessage['type']> = new Set(['mig-verified', 'checked-pages', 'pong']);

/**
 * The source side: connect one channel to the destination and exchange
 * HELLOs (over TLS-PSK with `security`). `requestIds`: the session's, shared
 * by its connections and their reconnects.
 */
export function connectChannel(address: { host: string; port: number }, channel: SourceChannel, sessionId: Uint8Array, timeoutMs: number, security?: MigrationSecurity, requestIds?: RequestIds): Promise<MigrationConnection> {
  const where = formatHostPort(address);
  return new Promise((resolve, reject) => {
    const socket = security
      ? tls.connect({
          host: address.host,
          port: address.port,
          pskCallback: () => ({ psk: Buffer.from(security.psk), identity: security.identity ?? DEFAULT_IDENTITY }),
          ciphers: PSK_CIPHERS,
          minVersion: 'TLSv1.2',
          maxVersion: 'TLSv1.2',
          // The key authenticates the peer; there is no certificate to check.
          checkServerIdentity: () => undefined,
        })
      : // Plain TCP reads payloads in place; a TLS socket has no onread, and its frames come from 'data' chunks.
        connectForFrames({ host: address.host, port: address.port });
    let framed: MigrationConnection | undefined;
    let settled = false;
    const fail = (error: Error): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      if (framed) framed.destroy(error);
      else socket.destroy();
      reject(error);
    };
    const timer = setTimeout(() => fail(new MigrationPeerError(where, `no answer within ${timeoutMs} ms`)), timeoutMs);
    // A TLS-PSK handshake that fails is a key the destination does not hold (another --psk-file, or none): said in
    // those words, OpenSSL's own text kept as the cause.
    socket.once('error', (error) => fail(security && isTlsHandshakeError(error) ? new MigrationAuthError(where, { cause: error }) : new MigrationPeerError(where, error.message, { cause: error })));
    socket.once(security ? 'secureConnect' : 'connect', () => {
      const connection: MigrationConnection = new MigrationConnection(socket, `migration ${channel} connection to ${where}`, {
        requestIds,
        // An ERROR on an id this side is waiting on refuses that request; any other ERROR is the destination's word on the migration.
        isReply: (message, requestId): boolean => SOURCE_REPLIES.has(message.type) || (message.type === 'error' && requestId !== 0 && connection.isPending(requestId)),
      });
      framed = connection;
      const hello: HelloMessage = { type: 'hello', version: MAX_PROTOCOL_VERSION, minVersion: MIN_PROTOCOL_VERSION, role: ROLE_OF[channel], sessionId, maxPayloadBytes: DEFAULT_MAX_PAYLOAD_BYTES, features: 0 };
      framed.once('message', (answer) => {
        try {
          if (answer.type === 'error') throw new MigrationPeerError(where, `refused the ${channel} connection: ${answer.code}: ${answer.text}`);
          if (answer.type !== 'hello') throw new ProtocolError('EPROTO_UNEXPECTED', `the destination answered a HELLO with ${answer.type}`, { field: 'type' });
          const version = checkHelloAnswer(answer, hello, 'migration-destination');
          framed!.maxPayloadBytes = DEFAULT_MAX_PAYLOAD_BYTES;
          framed!.frameChecksum = migrationFrameChecksumOf(version);
          settled = true;
          clearTimeout(timer);
          resolve(framed!);
        } catch (error) {
          fail(error as Error);
        }
      });
      framed.once('end', (error) => fail(error ?? new MigrationPeerError(where, `closed the ${channel} connection during its HELLO${security ? '' : ' (a destination started with --psk-file closes a source without the key like this: give this side the same --psk-file)'}`)));
      framed.send(hello).catch(fail);
    });
  });
}

/** An error from the TLS layer itself (OpenSSL's codes), not the socket beneath it. */
function isTlsHandshakeError(error: Error): boolean {
  const code = (error as { code?: unknown }).code;
  return (typeof code === 'string' && code.startsWith('ERR_SSL')) || /SSL routines|alert|handshake/i.test(error.message);
}

export interface AcceptedChannel {
  channel: SourceChannel;
  sessionId: Uint8Array;
  socket: MigrationConnection;
  peer: string;
}

/**
 * The destination side: a listener whose connections are checked (HELLO
 * first, a migration-source role) before `decide` sees them; `decide` says
 * whether this session may have this channel now (a second migration, a
 * connection for another session, a replay are refused with its reason).
 */
export class MigrationListener {
  private readonly server: Server;

  private constructor(server: Server, readonly address: { host: string; port: number }) {
    this.server = server;
  }

  static async listen(
    address: { host: string; port: number },
    onChannel: (accepted: AcceptedChannel) => void,
    decide: (channel: SourceChannel, sessionId: Uint8Array) => string | undefined,
    options: { helloTimeoutMs?: number; security?: MigrationSecurity; onRefused?: (peer: string, reason: string) => void } = {},
  ): Promise<MigrationListener> {
    const helloTimeoutMs = options.helloTimeoutMs ?? 5000;
    const refused = options.onRefused ?? (() => {});
    const security = options.security;
    const server = security
      ? tls.createServer(
          {
            pskCallback: (_socket, identity) => (identity === (security.identity ?? DEFAULT_IDENTITY) ? Buffer.from(security.psk) : null),
            ciphers: PSK_CIPHERS,
            minVersion: 'TLSv1.2',
            maxVersion: 'TLSv1.2',
            handshakeTimeout: helloTimeoutMs,
          },
          (socket) => MigrationListener.admit(socket, onChannel, decide, helloTimeoutMs, refused),
        )
      : createServer((socket) => MigrationListener.admit(socket, onChannel, decide, helloTimeoutMs, refused));
    // A peer without the key (or without TLS) fails its handshake: refused and said so, before a byte of it is read as a frame.
    if (security) server.on('tlsClientError', (error, socket) => refused(`${socket.remoteAddress}:${socket.remotePort}`, `TLS-PSK handshake failed (no key, or another): ${error.message}`));
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen({ host: address.host, port: address.port }, () => {
        server.off('error', reject);
        resolve();
      });
    });
    const bound = server.address();
    const port = typeof bound === 'object' && bound ? bound.port : address.port;
    return new MigrationListener(server, { host: address.host, port });
  }

  get url(): string {
    return `tcp://${formatHostPort(this.address)}`;
  }

  /** Keep listening without keeping the process alive for it (a completed migration still answers a late RESUME). */
  unref(): void {
    this.server.unref();
  }

  close(): void {
    this.server.close();
  }

  private static admit(socket: Socket, onChannel: (accepted: AcceptedChannel) => void, decide: (channel: SourceChannel, sessionId: Uint8Array) => string | undefined, helloTimeoutMs: number, refused: (peer: string, reason: string) => void): void {
    const peer = `${socket.remoteAddress}:${socket.remotePort}`;
    // The destination's requests: COMPLETE (its VERIFIED), post-copy READs (their CHECKED_PAGES, or an ERROR on
    // the READ's id) and liveness PINGs, each reply matched by id.
    const framed: MigrationConnection = new MigrationConnection(socket, `migration connection from ${peer}`, {
      isReply: (message, requestId) => DESTINATION_REPLIES.has(message.type) || (message.type === 'error' && requestId !== 0 && framed.isPending(requestId)),
    });
    const timer = setTimeout(() => {
      refused(peer, `no HELLO within ${helloTimeoutMs} ms`);
      framed.destroy(new MigrationPeerError(peer, `no HELLO within ${helloTimeoutMs} ms`));
    }, helloTimeoutMs);
    const refuse = (code: 'WRONG_ROLE' | 'UNSUPPORTED_VERSION' | 'UNEXPECTED_MESSAGE' | 'BAD_REQUEST', text: string): void => {
      clearTimeout(timer);
      refused(peer, text);
      framed.send({ type: 'error', code, text }).catch(() => {}).finally(() => framed.close(new MigrationPeerError(peer, text)));
    };
    framed.once('message', (hello) => {
      if (hello.type !== 'hello') return refuse('UNEXPECTED_MESSAGE', `the first message must be HELLO, not ${hello.type}`);
      let version: number;
      try {
        // No downgrade: a migration speaks the newest version both ends have, and this end takes nothing older than its own.
        version = acceptHello(hello, { roles: ['migration-source', 'migration-source-urgent'], minVersion: MAX_PROTOCOL_VERSION });
      } catch (error) {
        const e = error as ProtocolError;
        return refuse(e.code === 'EPROTO_VERSION' ? 'UNSUPPORTED_VERSION' : 'WRONG_ROLE', e.message);
      }
      const channel: SourceChannel = hello.role === 'migration-source' ? 'main' : 'urgent';
      const refusal = decide(channel, hello.sessionId);
      if (refusal !== undefined) return refuse('BAD_REQUEST', refusal);
      clearTimeout(timer);
      const answer: HelloMessage = { type: 'hello', version, minVersion: version, role: 'migration-destination', sessionId: hello.sessionId, maxPayloadBytes: DEFAULT_MAX_PAYLOAD_BYTES, features: 0 };
      framed.maxPayloadBytes = DEFAULT_MAX_PAYLOAD_BYTES;
      const sent = framed.send(answer);
      // After the answer is encoded: a HELLO is always CRC32, every frame after it the version's checksum.
      framed.frameChecksum = migrationFrameChecksumOf(version);
      sent.then(() => onChannel({ channel, sessionId: hello.sessionId, socket: framed, peer }), () => {});
    });
    framed.once('end', () => clearTimeout(timer));
  }
}

export function sameSession(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((byte, i) => byte === b[i]);
}
