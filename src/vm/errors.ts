// Errors of the VMM: one base (the project's UserfaultError), one class per
// condition, a stable code, and the data needed to act on it.
import { UserfaultError } from '../uffd/errors.js';

export class VmError extends UserfaultError {
  override readonly code: string = 'EVM';
}

/** /dev/kvm cannot be opened (no KVM module, or no permission). */
export class KvmUnavailableError extends VmError {
  override readonly code = 'EKVMUNAVAILABLE';
  constructor(readonly errno: number, options?: { cause?: unknown }) {
    super(`/dev/kvm cannot be opened (errno ${errno}): KVM is not available to this process`, options);
  }
}

/** The host's KVM lacks a capability the VMM needs. */
export class KvmCapabilityMissingError extends VmError {
  override readonly code = 'EKVMCAP';
  constructor(readonly capability: string) {
    super(`KVM lacks ${capability}`);
  }
}

/** The guest image path does not exist. */
export class GuestImageNotFoundError extends VmError {
  override readonly code = 'EIMAGENOTFOUND';
  constructor(readonly path: string, options?: { cause?: unknown }) {
    super(`guest image not found: ${path}`, options);
  }
}

/** The guest image is not something the loader can boot; `offset` points at the bad bytes when known. */
export class InvalidGuestImageError extends VmError {
  override readonly code = 'EIMAGEINVALID';
  constructor(readonly reason: string, readonly offset?: number, readonly path?: string) {
    super(`invalid guest image${path ? ` ${path}` : ''}: ${reason}${offset === undefined ? '' : ` (at byte ${offset})`}`);
  }
}

/** The guest image does not fit in guest memory. */
export class GuestMemoryTooSmallError extends VmError {
  override readonly code = 'EGUESTMEM';
  constructor(readonly neededBytes: number, readonly memoryBytes: number) {
    super(`the guest needs memory up to ${neededBytes} bytes; it has ${memoryBytes}`);
  }
}

/** A request the vCPU or VM state machine refuses in its current state. */
export class InvalidStateTransitionError extends VmError {
  override readonly code = 'ESTATE';
  constructor(readonly from: string, readonly request: string) {
    super(`cannot ${request} a VM that is ${from}`);
  }
}

/** The guest stopped in a way that is a failure: triple fault, KVM internal error, failed entry. */
export class GuestFailedError extends VmError {
  override readonly code = 'EGUESTFAILED';
  constructor(readonly vcpuId: number, readonly exit: string) {
    super(`vCPU ${vcpuId} stopped: ${exit}`);
  }
}

/** A snapshot that cannot be restored: bad magic, version, checksum or layout. */
export class InvalidVmSnapshotError extends VmError {
  override readonly code = 'ESNAPSHOTINVALID';
  constructor(readonly path: string, readonly reason: string) {
    super(`snapshot ${path} cannot be restored: ${reason}`);
  }
}
