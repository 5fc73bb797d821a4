// Errors of the VMM: one base (the project's UserfaultError), one class per
// condition, a stable code, and the data needed to act on it. Messages never
// carry the code; a cause is passed at construction. What each code means for
// an exit status is src/exit-codes.ts's table; for an HTTP status on the
// control socket, src/vmm-host/control-api.ts's. KVM ioctl failures are kvm/kvm-errors.ts.
import { constants as osConstants } from 'node:os';
import { UserfaultError } from '../errors.js';

export class VmError extends UserfaultError {
  override readonly code: string = 'EVM';
}

/** /dev/kvm cannot be opened: no KVM on this host (no module, no device), or another failure than permission. */
export class KvmUnavailableError extends VmError {
  override readonly code = 'EKVMUNAVAILABLE';
  constructor(readonly errno: number, options?: { cause?: unknown }) {
    super(errno === osConstants.errno.ENOENT
      ? '/dev/kvm does not exist: this host offers no KVM (load kvm_intel or kvm_amd, or run where KVM is available)'
      : `/dev/kvm cannot be opened (errno ${errno}): KVM is not available to this process`, options);
  }
}

/** /dev/kvm exists but this user may not open it. */
export class KvmAccessDeniedError extends VmError {
  override readonly code = 'EKVMACCESS';
  constructor(readonly errno: number, options?: { cause?: unknown }) {
    super('/dev/kvm: permission denied: add this user to the kvm group (sudo usermod -aG kvm $USER, then log in again) or run as root', options);
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

/** A machine the VMM cannot build: memory or vCPU count out of range. `field` is the MachineConfig field. */
export class VmConfigError extends VmError {
  override readonly code = 'EVMCONFIG';
  constructor(readonly field: 'memoryBytes' | 'vcpuCount', readonly problem: string) {
    super(`${field} ${problem}`);
  }
}

/**
 * A request the VM lifecycle (vm-lifecycle.ts) or a vCPU's state machine
 * (vcpu-state-machine.ts) refuses in its current state: `from` is that
 * state. The control socket answers it with 409.
 */
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

/** A snapshot that cannot be restored: bad magic, version, checksum or layout (the format's error is the cause). */
export class InvalidVmSnapshotError extends VmError {
  override readonly code = 'ESNAPSHOTINVALID';
  constructor(readonly path: string, readonly reason: string, options?: { cause?: unknown }) {
    super(`snapshot ${path} cannot be restored: ${reason}`, options);
  }
}

/** The snapshot file does not exist (or cannot be opened for reading). */
export class VmSnapshotNotFoundError extends VmError {
  override readonly code = 'ENOINPUT';
  constructor(readonly path: string, options?: { cause?: unknown }) {
    super(`snapshot ${path} does not exist`, options);
  }
}

/**
 * The VM state in a snapshot's metadata breaks its schema. `field` is the
 * path to the bad value (`vcpus[1].regs`, `machine.memoryBytes`);
 * `snapshotPath` the file, once known.
 */
export class InvalidVmStateError extends VmError {
  override readonly code = 'EVMSTATE';
  constructor(readonly field: string, readonly problem: string, options?: { cause?: unknown; snapshotPath?: string }) {
    super(`${options?.snapshotPath ? `snapshot ${options.snapshotPath}: ` : ''}VM state ${field ? `${field} ` : ''}${problem}`, options);
    this.snapshotPath = options?.snapshotPath;
  }

  readonly snapshotPath: string | undefined;

  /** The same problem, naming the snapshot it was found in. */
  inSnapshot(path: string): InvalidVmStateError {
    return new InvalidVmStateError(this.field, this.problem, { snapshotPath: path, cause: this.cause });
  }
}

/** A snapshot cannot be written where asked: the path's directory is missing, or something other than a regular file is there. */
export class SnapshotPathError extends VmError {
  override readonly code = 'ECANTCREATE';
  constructor(readonly path: string, readonly problem: string, options?: { cause?: unknown }) {
    super(`cannot write the snapshot to ${path}: ${problem}`, options);
  }
}

/**
 * Serial input refused, all of it: the bytes queued for the guest's COM1
 * (which it reads at its own pace) would pass the bound.
 */
export class SerialInputFullError extends VmError {
  override readonly code = 'ESERIALFULL';
  constructor(readonly refusedBytes: number, readonly queuedBytes: number, readonly limitBytes: number) {
    super(`serial input of ${refusedBytes} bytes refused: ${queuedBytes} bytes already wait for the guest to read them, and at most ${limitBytes} may`);
  }
}

/** A command a vCPU worker refused or failed; `vcpuCode` is the worker-side error's code. */
export class VcpuCommandError extends VmError {
  override readonly code = 'EVCPU';
  constructor(readonly vcpuId: number, readonly command: string, readonly vcpuCode: string | undefined, message: string) {
    super(`vCPU ${vcpuId}: ${command}: ${message}`);
  }
}

/** No VM answers on the control socket path (nothing there, or nobody listening). */
export class NoVmListeningError extends VmError {
  override readonly code = 'ENOVM';
  constructor(readonly socketPath: string, options?: { cause?: unknown }) {
    super(`no VM is listening on ${socketPath}`, options);
  }
}

/**
 * The control socket refused a request: `status` is the HTTP status,
 * `faultCode` the server's error code. The error's own code is the server's
 * (ECONTROLAPI when it gave none), so a refusal reads and exits as the same
 * error would in the VMM.
 */
export class ControlApiError extends VmError {
  override readonly code: string;
  constructor(readonly status: number, readonly faultCode: string | undefined, message: string) {
    super(message);
    this.code = faultCode ?? 'ECONTROLAPI';
  }
}

/** A command line the VMM refuses: an option out of range, or options that contradict each other. `options` names them. */
export class VmUsageError extends VmError {
  override readonly code = 'EUSAGE';
  constructor(readonly options: readonly string[], message: string) {
    super(message);
  }
}

/** A page server that does not serve a VM this VMM can restore: no VM state, another kind of metadata, a state that fails the schema. */
export class RemoteVmRefusedError extends VmError {
  override readonly code = 'EREMOTEVM';
  constructor(readonly source: string, readonly reason: string, options?: { cause?: unknown }) {
    super(`${source} cannot be restored: ${reason}`, options);
  }
}
