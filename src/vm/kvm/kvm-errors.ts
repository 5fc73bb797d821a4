// What a failed KVM call means, decided once: the errno -> error table for
// every ioctl (and the kvm_run mmap) the VMM makes. KVM's errnos mean KVM
// things (EINVAL: a value or state the kernel refuses; EEXIST: the vCPU id or
// memory slot is taken; ENXIO/ENOTTY: this host's KVM lacks the ioctl), not
// what the same numbers mean to userfaultfd, so KVM has its own table
// instead of src/uffd/errors.ts's (the mechanism, src/errno.ts, is shared).
import { ERRNO as E, ErrnoTable, errnoName } from '../../errno.js';
import { VmError } from '../errors.js';

/** A KVM ioctl failed. `ioctl` is the kernel's name (KVM_SET_REGS), `errno` what it returned. */
export class KvmIoctlError extends VmError {
  override readonly code: string = 'EKVMIOCTL';
  constructor(readonly ioctl: string, readonly errno: number, options?: { cause?: unknown }, detail = '') {
    super(`${ioctl} failed: ${errnoName(errno)}${detail ? ` (${detail})` : ''}`, options);
  }
}

/** EINVAL: KVM refused the value or state it was given (a saved blob it does not accept, a bad register). */
export class KvmInvalidArgumentError extends KvmIoctlError {
  override readonly code = 'EKVMINVAL';
}

/** EFAULT: KVM could not read or write the buffer or guest address it was handed. */
export class KvmBadAddressError extends KvmIoctlError {
  override readonly code = 'EKVMFAULT';
}

/** EEXIST / EBUSY: the vCPU id, memory slot or device already exists, or the object is in use. */
export class KvmBusyError extends KvmIoctlError {
  override readonly code = 'EKVMBUSY';
}

/** E2BIG: more entries than KVM takes in one call (CPUID, MSRs). */
export class KvmTooManyEntriesError extends KvmIoctlError {
  override readonly code = 'EKVM2BIG';
}

/** ENOTTY / ENXIO / EOPNOTSUPP / ENOSYS: this host's KVM does not offer the ioctl. */
export class KvmIoctlUnsupportedError extends KvmIoctlError {
  override readonly code = 'EKVMNOTSUP';
}

/** ENOMEM: the kernel ran out of memory for the VM. */
export class KvmOutOfMemoryError extends KvmIoctlError {
  override readonly code = 'EKVMNOMEM';
}

/** EPERM / EACCES on an ioctl (not on opening /dev/kvm: that is KvmAccessDeniedError). */
export class KvmPermissionError extends KvmIoctlError {
  override readonly code = 'EKVMPERM';
}

/** The one table. An errno not listed is a plain KvmIoctlError. */
const KVM_ERRNOS = new ErrnoTable<KvmIoctlError>([
  [E.EINVAL, KvmInvalidArgumentError],
  [E.EFAULT, KvmBadAddressError],
  [E.EEXIST, KvmBusyError],
  [E.EBUSY, KvmBusyError],
  [E.E2BIG, KvmTooManyEntriesError],
  [E.ENOTTY, KvmIoctlUnsupportedError],
  [E.ENXIO, KvmIoctlUnsupportedError],
  [E.EOPNOTSUPP, KvmIoctlUnsupportedError],
  [E.ENOSYS, KvmIoctlUnsupportedError],
  [E.ENOMEM, KvmOutOfMemoryError],
  [E.EPERM, KvmPermissionError],
  [E.EACCES, KvmPermissionError],
], KvmIoctlError);

/** The typed error for `errno` from `ioctl`. */
export function kvmErrorForErrno(ioctl: string, errno: number, options?: { cause?: unknown }): KvmIoctlError {
  return KVM_ERRNOS.errorFor(ioctl, errno, options);
}

/** Run a native KVM call, turning its thrown {errno, syscall} into the typed error for `ioctl`. */
export function wrapKvm<T>(ioctl: string, call: () => T): T {
  return KVM_ERRNOS.wrap(call, ioctl);
}

/**
 * A buffer shorter than what the kernel reads or writes for this ioctl: KVM
 * would copy past its end, into whatever the VMM's heap holds there. Refused
 * before the ioctl is made.
 */
export class KvmArgumentTooShortError extends VmError {
  override readonly code = 'EKVMARGSIZE';
  constructor(readonly ioctl: string, readonly neededBytes: number, readonly actualBytes: number) {
    super(`${ioctl} needs a buffer of at least ${neededBytes} bytes, was given ${actualBytes}`);
  }
}

/** A piece of saved state is not the size of the kernel struct it goes back into: refused before KVM reads it. */
export class KvmStateSizeError extends VmError {
  override readonly code = 'EKVMSTATESIZE';
  constructor(readonly field: string, readonly problem: string) {
    super(`saved ${field} ${problem}`);
  }
}
