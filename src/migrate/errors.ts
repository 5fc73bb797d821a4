// Every error of live migration, one base (MigrationError, itself a
// UserfaultError): a caller catches migration's failures as one kind and
// tells them apart by class and stable `code`. Grouped by where they arise:
// the connections, the protocol and stream, the pages, each side. A
// connection that is gone (closed, reset, stalled) is every network path's
// own ConnectionLostError (net/connection-errors.ts), not a migration error.
import { UserfaultError } from '../errors.js';
import { DIGEST_BATCH_PAGES } from './page-digests.js';
import type { MigrationEvent, MigrationRole, MigrationState, SourceMigrationState } from './migration-state.js';

/** An error as a migration's progress reports it (status, GET /migrate): its stable code, or its class name, and its message. */
export function errorSummary(error: Error): { code: string; message: string } {
  return { code: (error as { code?: string }).code ?? error.name, message: error.message };
}

/** Anything that went wrong with a live migration. */
export class MigrationError extends UserfaultError {
  override readonly code: string = 'EMIGRATION';
}

/** A --psk-file that cannot serve as a key. */
export class MigrationKeyError extends MigrationError {
  override readonly code = 'EUSAGE';
  constructor(readonly path: string, reason: string, options?: { cause?: unknown }) {
    super(`the key file ${path} ${reason}`, options);
  }
}

/** The TLS-PSK handshake failed: the destination holds another key, or none. */
export class MigrationAuthError extends MigrationError {
  override readonly code = 'EMIGRATIONAUTH';
  constructor(readonly address: string, options?: { cause?: unknown }) {
    super(`migration peer ${address} refused this side's key: the destination holds a different --psk-file, or none (both sides need the same key)`, options);
  }
}

/** The destination did not answer, or refused the connection. */
export class MigrationPeerError extends MigrationError {
  override readonly code = 'EMIGRATIONPEER';
  constructor(readonly address: string, readonly reason: string, options?: { cause?: unknown }) {
    super(`migration peer ${address}: ${reason}`, options);
  }
}

/** A request or event the migration's state does not allow. */
export class IllegalMigrationTransitionError extends MigrationError {
  override readonly code = 'EMIGRATIONSTATE';
  constructor(readonly role: MigrationRole, readonly from: MigrationState, readonly event: MigrationEvent) {
    super(`a ${role} migration that is ${from} cannot take '${event}'`);
  }
}

/** A stream that breaks the migration's rules (order, ranges, the machine): refused before its bytes land. */
export class MigrationStreamError extends MigrationError {
  override readonly code = 'EMIGRATIONSTREAM';
  constructor(readonly rule: string, message: string, options?: { cause?: unknown }) {
    super(`the migration stream: ${message}`, options);
  }
}

/** A reply on a migration connection that answers no READ, or not the one it names. */
export class MigrationReplyError extends MigrationError {
  override readonly code = 'EMIGRATIONREPLY';
}

/** A page whose bytes do not match the CRC32C the source computed for it: altered on the way, refused. */
export class MigrationPageChecksumError extends MigrationReplyError {
  constructor(readonly page: number) {
    super(`page ${page} arrived with bytes that do not match the CRC32C the source computed for it: altered on the way, not installed`);
  }
}

export class IncomingMigrationError extends MigrationError {
  override readonly code: string = 'EINCOMING';
}

/** The source sent nothing but pings for too long before GO, or did not come back after a cut. */
export class IncomingMigrationStalledError extends IncomingMigrationError {
  override readonly code = 'EINCOMINGSTALLED';
}

/** The destination refused or failed (its ERROR or CANCEL), or broke the protocol. */
export class MigrationRefusedError extends MigrationError {
  override readonly code = 'EMIGRATIONREFUSED';
}

export class MigrationCancelledError extends MigrationError {
  override readonly code = 'EMIGRATIONCANCELLED';
}

/** A connection of the migration closed (by the peer, or a reset) without another cause. */
export class MigrationConnectionLostError extends MigrationError {
  override readonly code = 'EMIGRATIONLOST';
  constructor(readonly connection: string) {
    super(`the ${connection} closed`);
  }
}

/** The destination kept its connections alive but did not answer a request in time. */
export class MigrationStalledError extends MigrationError {
  override readonly code = 'EMIGRATIONSTALLED';
}

/** The operator took the guest back (`vm migrate --abandon`): it runs here again. */
export class MigrationTakenBackError extends MigrationError {
  override readonly code = 'EMIGRATIONTAKENBACK';
  constructor() {
    super('the guest was taken back by the operator (vm migrate --abandon) while it was not known whether the destination had read GO: it runs here again');
  }
}

/** `vm stop` while the migration was paused by a cut: this side ends; the guest is the destination's (or lost with it). */
export class MigrationStoppedError extends MigrationError {
  override readonly code = 'EMIGRATIONSTOPPED';
  constructor(state: SourceMigrationState) {
    super(`stopped by the operator while ${state}: this side's copy of the guest is discarded${state === 'committing-paused' ? ' (whether the destination read GO is not known)' : ' (the destination runs the guest, and may still need pages that were only here)'}`);
  }
}

/** What the destination installed differs from what was sent. */
export class MigrationVerificationError extends MigrationError {
  override readonly code = 'EMIGRATIONVERIFY';
  constructor(readonly differingCount: number, readonly differing: number[]) {
    super(`${differingCount} batch(es) of ${DIGEST_BATCH_PAGES} pages differ between what was sent and what the destination installed (the first: ${differing.slice(0, 8).join(', ')})`);
  }
}
