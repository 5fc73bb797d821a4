// The /dev/kvm file descriptor: capabilities, host-wide lists, and VM creation.
import { constants as osConstants } from 'node:os';
import { kvmNative } from '../../native-kvm.js';
import { isNativeSyscallError, native } from '../../native.js';
import { KvmAccessDeniedError, KvmCapabilityMissingError, KvmUnavailableError, VmError } from '../errors.js';
import { KVM_API_VERSION, KVM_CAP, type KvmCapName } from './ioctls/constants.js';
import { kvmIoctlBytes, kvmIoctlBytesResult, kvmIoctlInt } from './ioctls/ioctl.js';
import { kvmErrorForErrno } from './kvm-errors.js';
import { cpuidBuffer, decodeCpuid, decodeMsrList, msrListBuffer, type CpuidEntry } from './ioctls/structs.js';
import { KvmVm } from './kvm-vm.js';

const { errno } = osConstants;

export class KvmSystem {
  private closed = false;
  private cachedCpuid: CpuidEntry[] | undefined;
  private cachedMsrs: number[] | undefined;

  private constructor(readonly fd: number) {}

  /** Open /dev/kvm and check the API version. */
  static open(): KvmSystem {
    let fd: number;
    try {
      fd = kvmNative.kvmOpen();
    } catch (error) {
      if (!isNativeSyscallError(error)) throw error;
      // EACCES is the usual one: /dev/kvm is root:kvm 0660 and the user is not in the group.
      if (error.errno === errno.EACCES || error.errno === errno.EPERM) throw new KvmAccessDeniedError(error.errno, { cause: error });
      throw new KvmUnavailableError(error.errno, { cause: error });
    }
    const system = new KvmSystem(fd);
    const version = system.ioctl('KVM_GET_API_VERSION', 0);
    if (version !== KVM_API_VERSION) {
      system.close();
      throw new VmError(`KVM API version ${version}, expected ${KVM_API_VERSION}`);
    }
    return system;
  }

  /** KVM_CHECK_EXTENSION: 0 when absent, else the capability's value (often 1). */
  checkExtension(cap: KvmCapName): number {
    return this.ioctl('KVM_CHECK_EXTENSION', KVM_CAP[cap]);
  }

  /** Throws KvmCapabilityMissingError naming the first capability the host lacks. */
  requireExtensions(caps: readonly KvmCapName[]): void {
    for (const cap of caps) if (this.checkExtension(cap) <= 0) throw new KvmCapabilityMissingError(cap);
  }

  /** KVM_GET_VCPU_MMAP_SIZE: bytes to map from each vCPU fd (kvm_run and its I/O data page). */
  vcpuMmapSize(): number {
    return this.ioctl('KVM_GET_VCPU_MMAP_SIZE', 0);
  }

  /** KVM_GET_SUPPORTED_CPUID, growing the buffer while the kernel answers E2BIG. */
  supportedCpuid(): CpuidEntry[] {
    if (this.cachedCpuid) return this.cachedCpuid;
    for (let capacity = 64; capacity <= 4096; capacity *= 2) {
      const bytes = cpuidBuffer(capacity);
      const r = kvmIoctlBytesResult(this.fd, 'KVM_GET_SUPPORTED_CPUID', bytes);
      if (r === -kvmNative.kvmConstants.E2BIG) continue;
      if (r < 0) throw kvmErrorForErrno('KVM_GET_SUPPORTED_CPUID', -r);
      this.cachedCpuid = decodeCpuid(bytes);
      return this.cachedCpuid;
    }
    throw new VmError('KVM_GET_SUPPORTED_CPUID wants more than 4096 entries');
  }

  /** KVM_GET_MSR_INDEX_LIST: every MSR the host can save and restore for a guest. */
  msrIndexList(): number[] {
    if (this.cachedMsrs) return this.cachedMsrs;
    // A first call with room for none answers E2BIG and writes the count it needs.
    const probe = msrListBuffer(0);
    const r = kvmIoctlBytesResult(this.fd, 'KVM_GET_MSR_INDEX_LIST', probe);
    if (r < 0 && r !== -kvmNative.kvmConstants.E2BIG) throw kvmErrorForErrno('KVM_GET_MSR_INDEX_LIST', -r);
    const needed = new DataView(probe.buffer).getUint32(0, true);
    const bytes = msrListBuffer(needed);
    kvmIoctlBytes(this.fd, 'KVM_GET_MSR_INDEX_LIST', bytes);
    this.cachedMsrs = decodeMsrList(bytes);
    return this.cachedMsrs;
  }

  /** KVM_CREATE_VM (machine type 0: the default x86 VM). */
  createVm(): KvmVm {
    this.assertOpen();
    const vmFd = this.ioctl('KVM_CREATE_VM', 0);
    return new KvmVm(this, vmFd);
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    native.close(this.fd);
  }

  private ioctl(name: 'KVM_GET_API_VERSION' | 'KVM_CHECK_EXTENSION' | 'KVM_GET_VCPU_MMAP_SIZE' | 'KVM_CREATE_VM', arg: number): number {
    this.assertOpen();
    return kvmIoctlInt(this.fd, name, arg);
  }

  private assertOpen(): void {
    if (this.closed) throw new VmError('KvmSystem is closed');
  }
}
