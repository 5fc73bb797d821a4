// Errors of every kind map to the exit status of their kind: a peer that is
// gone is "unavailable" (69) on every network path, a hostile stream is bad
// data (65), a migration whose check fails is a failed check (1).
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { ExitCode, exitCodeFor } from '../src/exit-codes.js';
import { MigrationPeerError, MigrationStreamError, MigrationVerificationError } from '../src/migrate/errors.js';
import { ConnectionEndedError, ConnectionLostError, ConnectionStalledError } from '../src/net/connection-errors.js';

describe('exit statuses', () => {
  test('a connection gone, stalled or ended is unavailable (69), on the page protocol and in migration alike', () => {
    for (const error of [new ConnectionLostError('page server', 'closed'), new ConnectionStalledError('migration main', 1000), new ConnectionEndedError('migration urgent')]) {
      assert.equal(exitCodeFor(error), ExitCode.UNAVAILABLE, error.message);
    }
  });

  test('an unreachable migration destination is unavailable (69), as an unreachable page server is', () => {
    assert.equal(exitCodeFor(new MigrationPeerError('127.0.0.1:7400', 'connect ECONNREFUSED')), ExitCode.UNAVAILABLE);
  });

  test('a stream that breaks the rules is bad data (65); pages that differ at the end are a failed check (1)', () => {
    assert.equal(exitCodeFor(new MigrationStreamError('order', 'PAGES after switchover')), ExitCode.DATA);
    assert.equal(exitCodeFor(new MigrationVerificationError(2, [0, 3])), ExitCode.CHECK_FAILED);
  });
});
