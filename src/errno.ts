// Errnos: their kernel names, and the one mechanism that turns a failed
// call's errno into the typed error its caller's table names. Each kernel
// interface keeps its own table (src/uffd/errors.ts for userfaultfd and the
// syscalls around it, src/vm/kvm/kvm-errors.ts for KVM): the same number
// means different things to each (EEXIST: a page already there for
// UFFDIO_COPY, a vCPU id or memory slot taken for KVM). The lookup, the
// fallback for an errno a table does not list, and the wrapping of a native
// call's thrown {errno, syscall} are written once, here.
import { constants as osConstants } from 'node:os';
import { isNativeSyscallError } from './native.js';

/** The host's errno numbers by kernel name (ERRNO.EINVAL). */
export const ERRNO = osConstants.errno;

const ERRNO_NAMES = new Map<number, string>(Object.entries(ERRNO).map(([name, value]) => [value, name]));

/** "EINVAL", or "errno 1234" for a number the host does not name. */
export function errnoName(errno: number): string {
  return ERRNO_NAMES.get(errno) ?? `errno ${errno}`;
}

/** An error class a table names: built from the call's name, the errno and the cause. */
export type ErrnoErrorClass<T extends Error> = new (call: string, errno: number, options?: { cause?: unknown }) => T;

/** One kernel interface's errno -> error class table, with the class for every errno it does not list. */
export class ErrnoTable<T extends Error> {
  private readonly byErrno: ReadonlyMap<number, ErrnoErrorClass<T>>;

  constructor(entries: ReadonlyArray<readonly [errno: number, errorClass: ErrnoErrorClass<T>]>, private readonly fallback: ErrnoErrorClass<T>) {
    const byErrno = new Map<number, ErrnoErrorClass<T>>();
    for (const [errno, errorClass] of entries) {
      if (byErrno.has(errno)) throw new RangeError(`${errnoName(errno)} is listed twice`);
      byErrno.set(errno, errorClass);
    }
    this.byErrno = byErrno;
  }

  /** The typed error for `errno` returned by `call` (a syscall's or an ioctl's kernel name). */
  errorFor(call: string, errno: number, options?: { cause?: unknown }): T {
    const ErrorClass = this.byErrno.get(errno) ?? this.fallback;
    return new ErrorClass(call, errno, options);
  }

  /**
   * Run a native call, turning its thrown {errno, syscall} into the typed
   * error, named `call` when given (else the syscall the addon names); any
   * other exception passes through.
   */
  wrap<R>(run: () => R, call?: string): R {
    try {
      return run();
    } catch (error) {
      throw this.typed(error, call);
    }
  }

  /** wrap() for a native call that runs on libuv's thread pool and rejects instead of throwing. */
  async wrapAsync<R>(run: () => Promise<R>, call?: string): Promise<R> {
    try {
      return await run();
    } catch (error) {
      throw this.typed(error, call);
    }
  }

  private typed(error: unknown, call: string | undefined): unknown {
    return isNativeSyscallError(error) ? this.errorFor(call ?? error.syscall, error.errno, { cause: error }) : error;
  }
}
