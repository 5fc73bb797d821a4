// Two ways a network source's read fails that are neither the peer gone nor a
// corrupt file: the page did not arrive in time, or it arrived altered. Both
// are SourceReadErrors, so the pager acts on them as on any failed read
// (poison for a fatal one, a retry for a transient one), and both name the
// page.
import { SourceReadError, type SourceFailure } from './page-source.js';

/**
 * A read was not answered within its deadline (RemoteSourceOptions.readDeadlineMs,
 * `--source-deadline-ms`), counted from the read's request whatever the
 * server did meanwhile: answered PINGs but not the READ, closed the
 * connection on every READ, answered BUSY, or was not there at all.
 * `failedOffset` is the first page of the read still missing.
 */
export class SourceDeadlineError extends SourceReadError {
  override readonly code = 'ESOURCEDEADLINE';
  constructor(
    offset: number,
    lengthBytes: number,
    readonly pageOffset: number,
    readonly deadlineMs: number,
    readonly waitedMs: number,
    what: string,
    options: { failure: SourceFailure; cause?: unknown },
  ) {
    super(offset, lengthBytes, `the page at offset 0x${pageOffset.toString(16)} did not arrive within the ${deadlineMs} ms deadline (waited ${Math.round(waitedMs)} ms): ${what}`, { ...options, failedOffset: pageOffset });
  }
}

/**
 * A page arrived whose bytes do not match the checksum its image stores for it
 * (sent with it, CHECKED_PAGES): it was altered after it was saved, on the
 * server or on the way. Never installed; fatal for that page.
 */
export class PageChecksumError extends SourceReadError {
  override readonly code = 'ESOURCECHECKSUM';
  constructor(
    offset: number,
    lengthBytes: number,
    readonly pageOffset: number,
    readonly algorithm: string,
    readonly expectedChecksum: number,
    readonly actualChecksum: number,
    from: string,
  ) {
    super(
      offset,
      lengthBytes,
      `the page at offset 0x${pageOffset.toString(16)} from ${from} does not match its image's checksum: ${algorithm.toUpperCase()} ${hex32(actualChecksum)}, expected ${hex32(expectedChecksum)}; refused, never installed`,
      { failure: 'fatal', failedOffset: pageOffset },
    );
  }
}

function hex32(value: number): string {
  return `0x${value.toString(16).padStart(8, '0')}`;
}
