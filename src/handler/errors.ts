// Why the handler refused or dropped a client. The protocol has no reply
// channel, so these end up in the server's log and its 'client-error' events.
import { UserfaultError } from '../uffd/errors.js';
import type { HandshakeProblem } from './handshake.js';

export class HandlerError extends UserfaultError {
  override readonly code: string = 'EHANDLER';
}

/** The client's handshake was refused; `problems` names each region and field at fault. */
export class HandshakeRefusedError extends HandlerError {
  override readonly code = 'EHANDSHAKE';
  constructor(readonly problems: readonly HandshakeProblem[]) {
    // Each problem's code is in `problems`; the message is for people.
    super(`handshake refused: ${problems.map((p) => p.message).join('; ')}`);
  }
}

/** The handshake completed but no userfaultfd came with it or after it. */
export class MissingUffdError extends HandlerError {
  override readonly code = 'ENOUFFD';
  constructor(readonly why: 'hangup' | 'timeout', timeoutMs?: number) {
    super(why === 'hangup'
      ? 'the client hung up without sending a userfaultfd'
      : `no userfaultfd arrived within ${timeoutMs} ms of connecting`);
  }
}

/** The client did not finish its handshake in time. */
export class HandshakeTimeoutError extends HandlerError {
  override readonly code = 'ETIMEDOUT';
  constructor(readonly timeoutMs: number, readonly bytesSeen: number) {
    super(`the handshake did not complete within ${timeoutMs} ms (${bytesSeen} bytes received)`);
  }
}

/** The descriptor the client sent is something else (`target` is what /proc says it is). */
export class NotAUserfaultfdError extends HandlerError {
  override readonly code = 'ENOTUFFD';
  constructor(readonly target: string) {
    super(`the descriptor the client sent is not a userfaultfd (it is ${target})`);
  }
}

/**
 * A region the client described is not registered with the uffd it sent: it
 * lies outside the client's mapping, or the client never registered it.
 * UFFDIO_COPY into it said ENOENT.
 */
export class RegionNotRegisteredError extends HandlerError {
  override readonly code = 'EUNREGISTERED';
  constructor(readonly region: number, readonly address: number, options?: { cause?: unknown }) {
    super(`region ${region}: address 0x${address.toString(16)} is not registered with the client's userfaultfd ` +
      '(outside its mapping, or never registered)', options);
  }
}

/**
 * A region is registered, but with another userfaultfd than the one the client
 * sent (UFFDIO_REGISTER through the client's uffd said EBUSY): its faults would
 * never reach this handler.
 */
export class RegionOnAnotherUffdError extends HandlerError {
  override readonly code = 'EOTHERUFFD';
  constructor(readonly region: number, readonly address: number, options?: { cause?: unknown }) {
    super(`region ${region}: address 0x${address.toString(16)} is registered with another userfaultfd than the one the client sent ` +
      '(its faults would never arrive here)', options);
  }
}

/**
 * A client that asked for the page cache described a region the kernel will
 * not register in MINOR mode (UFFDIO_REGISTER said EINVAL): it is not shared
 * memory, so it cannot be the private mapping of the page cache's memfd the
 * client was to make, and the server could not keep it from mapping cache
 * pages before their bytes are in.
 */
export class RegionNotMinorError extends HandlerError {
  override readonly code = 'ENOTMINOR';
  constructor(readonly region: number, readonly address: number, options?: { cause?: unknown }) {
    super(`region ${region}: address 0x${address.toString(16)} cannot be registered in MINOR mode: it is not a mapping of the page cache ` +
      '(a client that asks for it maps the memfd MAP_PRIVATE at its regions\' offsets)', options);
  }
}

/** recvmsg on the client's socket failed. */
export class ClientSocketError extends HandlerError {
  override readonly code = 'ESOCKET';
  constructor(readonly syscall: string, readonly errno: number, detail: string) {
    super(`${syscall} on the client socket failed: ${detail}`);
  }
}

/** The path given as a snapshot is not in this project's format. */
export class NotASnapshotError extends HandlerError {
  override readonly code = 'ENOTSNAPSHOT';
  constructor(readonly path: string) {
    super(`${path} is not a userfault snapshot (its first bytes are not the snapshot magic); ` +
      'serve a raw memory file with --memory-file');
  }
}
