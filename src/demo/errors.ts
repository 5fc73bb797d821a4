// Errors of the demo, each named after its condition, with a stable code that
// src/exit-codes.ts maps to an exit status.
import { UserfaultError } from '../errors.js';
import { formatBytes } from '../format-bytes.js';

/** A file system has less free space than the command needs to write. */
export class InsufficientSpaceError extends UserfaultError {
  override readonly code = 'ENOSPACE';
  constructor(readonly directory: string, readonly neededBytes: number, readonly availableBytes: number, what: string, hint: string) {
    super(`${what} needs ${formatBytes(neededBytes)} in ${directory}, which has ${formatBytes(availableBytes)} free: ${hint}`);
  }
}

/** The directory the demo writes its temporary snapshot in does not exist (TMPDIR names it, or the option). */
export class WorkDirectoryMissingError extends UserfaultError {
  override readonly code = 'ENOINPUT';
  constructor(readonly directory: string, readonly source: string, options?: { cause?: unknown }) {
    super(`the demo writes its temporary snapshot in ${directory} (${source}), which does not exist: create it, or point ${source === 'TMPDIR' ? 'TMPDIR' : 'it'} elsewhere`, options);
  }
}
