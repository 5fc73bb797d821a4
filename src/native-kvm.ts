// The KVM part of the native surface (the C side is native/kvm.c), typed here
// so src/native.ts stays the userfaultfd layer's file. Same conventions: a
// failing call throws {errno, code: 'ESYSCALL', syscall: 'ioctl(KVM_...)'};
// an outcome that is an answer (an interrupted KVM_RUN) comes back as -errno.
import { native, type NativeBinding } from './native.js';

export interface KvmNativeBinding {
  /** open("/dev/kvm", O_RDWR | O_CLOEXEC): the system fd. */
  kvmOpen(): number;
  /** ioctl with an integer argument: the non-negative result (a new fd, a capability value). */
  kvmIoctl(fd: number, request: number, arg: number, name: string): number;
  /** ioctl on a struct the kernel reads and/or fills in place: the result. */
  kvmIoctlBytes(fd: number, request: number, bytes: Uint8Array, name: string): number;
  /** Like kvmIoctlBytes, but a failure comes back as -errno instead of a throw. */
  kvmIoctlBytesResult(fd: number, request: number, bytes: Uint8Array): number;
  /** KVM_RUN on the calling thread: 0 after an exit to userspace, -EINTR or -EAGAIN when kicked. */
  kvmRun(vcpuFd: number): number;
  /** Install the (empty) kick handler and unblock the signal in the calling thread. */
  kvmPrepareKick(signo: number): void;
  /** tgkill(getpid(), tid, signo). */
  kvmKick(tid: number, signo: number): void;
  kvmConstants: Readonly<Record<'SIGRTMIN' | 'EINTR' | 'EAGAIN' | 'E2BIG' | 'ENOENT', number>>;
}

export const kvmNative = native as NativeBinding & KvmNativeBinding;

if (typeof kvmNative.kvmOpen !== 'function') {
  throw new Error('the userfault addon was built without native/kvm.c: rebuild it (node-gyp rebuild)');
}
