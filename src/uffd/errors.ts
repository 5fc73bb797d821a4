// One base class, a subclass per condition, a stable code, and the data needed to recover.
import { constants as osConstants } from 'node:os';
import { UserfaultError } from '../errors.js';
import { isNativeSyscallError } from '../native.js';

const E = osConstants.errno;

export { UserfaultError };

/** A syscall or ioctl failed with an errno that has no more specific class. */
export class SyscallError extends UserfaultError {
  override readonly code: string = 'ESYSCALL';
  /** `meaning` says what the errno means for this call, when the name alone would mislead. */
  constructor(readonly syscall: string, readonly errno: number, options?: { cause?: unknown; meaning?: string }) {
    super(`${syscall} failed: ${options?.meaning ? `${options.meaning} (${errnoName(errno)})` : errnoName(errno)}`, options);
  }
}

/** The kernel does not offer a feature or ioctl the caller asked for. */
export class FeatureUnavailableError extends UserfaultError {
  override readonly code = 'EFEATURE';
  constructor(readonly missing: string[], detail = '') {
    super(`the kernel's userfaultfd lacks: ${missing.join(', ')}${detail ? ` (${detail})` : ''}`);
  }
}

/** No permission to create a userfaultfd (see the README: /dev/userfaultfd, vm.unprivileged_userfaultfd). */
export class PermissionDeniedError extends SyscallError {
  override readonly code = 'EPERM';
}

/**
 * ENOENT from a uffd ioctl: the range is not registered with this uffd (or was
 * unmapped) — or, for UFFDIO_WRITEPROTECT, not registered in the mode the
 * ioctl needs (`requiredMode`: WP).
 */
export class RangeNotRegisteredError extends SyscallError {
  override readonly code = 'ENOENT';
  constructor(syscall: string, errno: number, options?: { cause?: unknown; requiredMode?: 'WP' }) {
    const meaning = options?.requiredMode
      ? `the range is not registered in ${options.requiredMode} mode (register it with ['${options.requiredMode}'], alone or with MISSING)`
      : 'the range is not registered with this userfaultfd';
    super(syscall, errno, { cause: options?.cause, meaning });
    this.requiredMode = options?.requiredMode;
  }
  readonly requiredMode: 'WP' | undefined;
}

/** ESRCH: the address space the uffd served is gone (its process exited). */
export class AddressSpaceGoneError extends SyscallError {
  override readonly code = 'ESRCH';
}

/** EFAULT: an address the kernel had to read or write was bad. */
export class BadAddressError extends SyscallError {
  override readonly code = 'EFAULT';
}

/** EINVAL: a misaligned or out-of-range argument, or a mode the range was not registered for. */
export class InvalidArgumentError extends SyscallError {
  override readonly code = 'EINVAL';
}

/** EEXIST where the caller demanded a fresh fill: the page is already present. */
export class PageExistsError extends SyscallError {
  override readonly code = 'EEXIST';
}

const errnoNames = new Map<number, string>(Object.entries(E).map(([name, value]) => [value, name]));

export function errnoName(errno: number): string {
  return errnoNames.get(errno) ?? `errno ${errno}`;
}

/** The typed error for an errno returned by `syscall`. */
export function errorForErrno(syscall: string, errno: number, cause?: unknown): SyscallError {
  const options = cause === undefined ? undefined : { cause };
  switch (errno) {
    case E.EPERM:
    case E.EACCES:
      return new PermissionDeniedError(syscall, errno, options);
    case E.ENOENT:
      // mwriteprotect_range answers ENOENT for a VMA without VM_UFFD_WP, registered or not.
      return new RangeNotRegisteredError(syscall, errno, { ...options, requiredMode: syscall === 'UFFDIO_WRITEPROTECT' ? 'WP' : undefined });
    case E.ESRCH:
      return new AddressSpaceGoneError(syscall, errno, options);
    case E.EFAULT:
      return new BadAddressError(syscall, errno, options);
    case E.EINVAL:
      return new InvalidArgumentError(syscall, errno, options);
    case E.EEXIST:
      return new PageExistsError(syscall, errno, options);
    default:
      return new SyscallError(syscall, errno, options);
  }
}

/** Run a native call, turning its thrown {errno, syscall} into a typed error. */
export function wrapNative<T>(call: () => T): T {
  try {
    return call();
  } catch (error) {
    if (isNativeSyscallError(error)) throw errorForErrno(error.syscall, error.errno, error);
    throw error;
  }
}

export const ERRNO = E;
