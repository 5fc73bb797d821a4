// Opening a connection: both sides send HELLO first; the server answers the
// client's with its own, carrying the version chosen, or with an ERROR and
// closes. Pure: the decisions, not the sockets.
//
//   client                                server
//     HELLO version=max minVersion=min ─▶   version = min(client max, server max),
//           role, sessionId, maxPayload      if the client's min allows it and the role is taken
//                                       ◀─  HELLO version=minVersion=chosen, role page-server,
//                                            the same sessionId, the server's maxPayload
//                                   or  ◀─  ERROR UNSUPPORTED_VERSION | WRONG_ROLE | BAD_FRAME, close
import { ProtocolError } from './errors.js';
import type { HelloMessage } from './messages.js';
import { MAX_PROTOCOL_VERSION, MIN_PROTOCOL_VERSION, type RoleName } from './wire.js';

export interface HelloPolicy {
  /** The versions this side speaks (default: this code's, 1..1). */
  minVersion?: number;
  maxVersion?: number;
  /** The roles a peer may declare. */
  roles: readonly RoleName[];
}

/** The version both sides speak best, or the ProtocolError to answer with (its wireCode says which ERROR). */
export function negotiateVersion(peer: Pick<HelloMessage, 'version' | 'minVersion'>, policy: Pick<HelloPolicy, 'minVersion' | 'maxVersion'> = {}): number {
  const min = policy.minVersion ?? MIN_PROTOCOL_VERSION;
  const max = policy.maxVersion ?? MAX_PROTOCOL_VERSION;
  const chosen = Math.min(peer.version, max);
  if (chosen < min || chosen < peer.minVersion) {
    throw new ProtocolError(
      'EPROTO_VERSION',
      `the peer speaks versions ${peer.minVersion}..${peer.version}, this side ${min}..${max}: no version in common`,
      { field: 'version' },
    );
  }
  return chosen;
}

/** A server's check of a client's HELLO: the version to answer with. Throws ProtocolError (EPROTO_VERSION, EPROTO_ROLE). */
export function acceptHello(peer: HelloMessage, policy: HelloPolicy): number {
  const version = negotiateVersion(peer, policy);
  if (!policy.roles.includes(peer.role)) {
    throw new ProtocolError('EPROTO_ROLE', `this peer does not take ${peer.role} connections (it takes ${policy.roles.join(', ')})`, { field: 'role' });
  }
  return version;
}

/**
 * A client's check of the server's answer to `sent`: a version the client
 * offered (and only one), the role it expects, its own session id back.
 * Throws ProtocolError.
 */
export function checkHelloAnswer(answer: HelloMessage, sent: HelloMessage, expectedRole: RoleName): number {
  if (answer.version !== answer.minVersion || answer.version < sent.minVersion || answer.version > sent.version) {
    throw new ProtocolError(
      'EPROTO_VERSION',
      `the server answered with versions ${answer.minVersion}..${answer.version}; one version in ${sent.minVersion}..${sent.version} was asked for`,
      { field: 'version' },
    );
  }
  if (answer.role !== expectedRole) {
    throw new ProtocolError('EPROTO_ROLE', `the peer answered as ${answer.role}, not ${expectedRole}`, { field: 'role' });
  }
  if (!answer.sessionId.every((byte, i) => byte === sent.sessionId[i])) {
    throw new ProtocolError('EPROTO_FIELD', 'the server answered with another session id', { field: 'sessionId' });
  }
  return answer.version;
}
