// The errors every network path uses for a connection that is gone: the page
// protocol's client and its remote source, and live migration's connections.
// One type, so a caller tells "the peer or the path is gone" (retry,
// reconnect, wait) from a refusal or a protocol violation (do not) without
// knowing which protocol it spoke.
import { UserfaultError } from '../errors.js';

/** A connection closed, reset or given up on: the peer, or the path to it, is gone. */
export class ConnectionLostError extends UserfaultError {
  override readonly code: string = 'ECONNLOST';
  constructor(readonly connection: string, reason: string, options?: { cause?: unknown }) {
    super(`the ${connection} connection: ${reason}`, options);
  }
}

/** Nothing arrived on a connection for longer than its liveness limit (not even an answer to a ping). */
export class ConnectionStalledError extends ConnectionLostError {
  override readonly code = 'ESTALLED';
  constructor(connection: string, readonly silentMs: number, what = `carried nothing for ${silentMs} ms (not even an answer to a ping): the peer or the path to it is gone`) {
    super(connection, what);
  }
}

/** A send on a connection that is over; `cause` is what ended it (a stall, a reset, a protocol error), when known. */
export class ConnectionEndedError extends ConnectionLostError {
  override readonly code = 'ECONNENDED';
  constructor(connection: string, cause?: Error) {
    super(connection, `is closed${cause ? ` (${cause.message})` : ''}`, cause ? { cause } : undefined);
  }
}
