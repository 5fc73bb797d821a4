// The one path by which the VMM hands a buffer to a KVM ioctl. Before the
// call it checks the buffer holds at least what the kernel will copy: the
// argument size the ioctl number encodes (_IOC_SIZE; for the variable-length
// structs, kvm_cpuid2 and kvm_msrs, that is their header, and their encoders
// size the rest from the entries), or more where the kernel reads more than
// the number says (KVM_SET_XSAVE reads the whole KVM_CAP_XSAVE2 area). A
// shorter buffer would have KVM read past its end into the VMM's heap, or
// write past it. Failures become errors through kvm-errors.ts's table.
import { kvmNative } from '../../../native-kvm.js';
import { KvmArgumentTooShortError, KvmStateSizeError, kvmErrorForErrno, wrapKvm } from '../kvm-errors.js';
import { KVM, type KvmIoctlName } from './constants.js';
import { savedStructProblem, type SavedStructName } from './structs.js';

/** _IOC_SIZE(request): the argument bytes an ioctl number declares (14 bits at bit 16). */
export function iocSize(request: number): number {
  return (request >>> 16) & 0x3fff;
}

/** An ioctl with an integer argument; its non-negative result (a new fd, a capability value). */
export function kvmIoctlInt(fd: number, name: KvmIoctlName, arg: number): number {
  return wrapKvm(name, () => kvmNative.kvmIoctl(fd, KVM[name], arg, name));
}

/**
 * An ioctl on a struct the kernel reads and/or fills in place; its result.
 * `minBytes`: what the kernel copies when that is more than the ioctl number says.
 */
export function kvmIoctlBytes(fd: number, name: KvmIoctlName, bytes: Uint8Array, minBytes = 0): number {
  const r = kvmIoctlBytesResult(fd, name, bytes, minBytes);
  if (r < 0) throw kvmErrorForErrno(name, -r);
  return r;
}

/** Like kvmIoctlBytes, but the kernel's refusal comes back as -errno (E2BIG while sizing a list is an answer). */
export function kvmIoctlBytesResult(fd: number, name: KvmIoctlName, bytes: Uint8Array, minBytes = 0): number {
  const neededBytes = Math.max(iocSize(KVM[name]), minBytes);
  if (bytes.byteLength < neededBytes) throw new KvmArgumentTooShortError(name, neededBytes, bytes.byteLength);
  return kvmNative.kvmIoctlBytesResult(fd, KVM[name], bytes);
}

/** `bytes` if they can be `name`'s struct (SAVED_STRUCTS); else a KvmStateSizeError naming `field`. */
export function requireSavedStruct(name: SavedStructName, bytes: Uint8Array, field: string = name): Uint8Array {
  const problem = savedStructProblem(name, bytes.byteLength);
  if (problem !== undefined) throw new KvmStateSizeError(field, problem);
  return bytes;
}
