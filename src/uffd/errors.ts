// One base class, a subclass per condition, a stable code, and the data needed to recover.
import { ERRNO as E, ErrnoTable, errnoName } from '../errno.js';
import { UserfaultError } from '../errors.js';

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
    // mwriteprotect_range answers ENOENT for a VMA without VM_UFFD_WP, registered or not.
    const requiredMode = options?.requiredMode ?? (syscall === 'UFFDIO_WRITEPROTECT' ? 'WP' : undefined);
    const meaning = requiredMode
      ? `the range is not registered in ${requiredMode} mode (register it with ['${requiredMode}'], alone or with MISSING)`
      : 'the range is not registered with this userfaultfd';
    super(syscall, errno, { cause: options?.cause, meaning });
    this.requiredMode = requiredMode;
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

/** userfaultfd's table (and the syscalls around it: accept4, recvmsg, read). An errno not listed is a plain SyscallError. */
const UFFD_ERRNOS = new ErrnoTable<SyscallError>([
  [E.EPERM, PermissionDeniedError],
  [E.EACCES, PermissionDeniedError],
  [E.ENOENT, RangeNotRegisteredError],
  [E.ESRCH, AddressSpaceGoneError],
  [E.EFAULT, BadAddressError],
  [E.EINVAL, InvalidArgumentError],
  [E.EEXIST, PageExistsError],
], SyscallError);

/** The typed error for an errno returned by `syscall`. */
export function errorForErrno(syscall: string, errno: number, cause?: unknown): SyscallError {
  return UFFD_ERRNOS.errorFor(syscall, errno, cause === undefined ? undefined : { cause });
}

/** Run a native call, turning its thrown {errno, syscall} into a typed error. */
export function wrapNative<T>(call: () => T): T {
  return UFFD_ERRNOS.wrap(call);
}

/** wrapNative() for a native call that returns a promise (it rejects with {errno, syscall}). */
export function wrapNativeAsync<T>(call: () => Promise<T>): Promise<T> {
  return UFFD_ERRNOS.wrapAsync(call);
}
