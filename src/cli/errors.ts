// Errors of the command line itself, each named after its condition, with a
// stable code that src/exit-codes.ts maps to an exit status. Messages name
// the user's option or file; they never carry the code (the CLI prints it
// beside the message).
import { UserfaultError } from '../errors.js';

/** The command line is wrong: options that contradict each other, or one that is missing. */
export class UsageError extends UserfaultError {
  override readonly code = 'EUSAGE';
  constructor(message: string, readonly option?: string) {
    super(message);
  }
}

/** A file named on the command line does not exist, or is not a file that can be read as input. */
export class InputNotFoundError extends UserfaultError {
  override readonly code = 'ENOINPUT';
  constructor(readonly path: string, readonly reason: 'does not exist' | 'is a directory' | 'is not a regular file', options?: { cause?: unknown }) {
    super(`${path} ${reason}`, options);
  }
}

/** An output (a file, a socket) cannot be created where the user asked for it. */
export class CannotCreateError extends UserfaultError {
  override readonly code = 'ECANTCREATE';
  constructor(readonly path: string, readonly reason: string, options?: { cause?: unknown }) {
    super(`cannot create ${path}: ${reason}`, options);
  }
}

/** A SIGINT or SIGTERM ended the command before it finished. */
export class InterruptedError extends UserfaultError {
  override readonly code = 'EINTERRUPTED';
  constructor(readonly signal: NodeJS.Signals, what: string) {
    super(`${signal}: ${what}`);
  }
}
