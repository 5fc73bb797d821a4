// The whole native surface, typed in one place (the C side is native/userfault.c).
// Addresses are plain numbers: x86-64 user addresses fit exactly in a double.
import { createRequire } from 'node:module';

/** Thrown by the addon when a syscall fails: `errno` is the kernel's, `syscall` names the call. */
export interface NativeSyscallError extends Error {
  code: 'ESYSCALL';
  errno: number;
  syscall: string;
}

/** An fd watch: a libuv poll handle in the loop of the thread that created it. */
export interface NativeWatch {
  readonly __nativeWatch: unique symbol;
}

/** Bytes the addon reads or writes through: Buffer, TypedArray, DataView or ArrayBuffer. */
export type ByteArg = ArrayBufferView | ArrayBuffer;

export interface NativeBinding {
  openDevUserfaultfd(flags: number): number;
  userfaultfdSyscall(flags: number): number;
  /** UFFDIO_API: returns [features the kernel grants, ioctls it supports]. */
  uffdApi(fd: number, features: bigint): [bigint, bigint];
  /** UFFDIO_REGISTER: returns the ioctls allowed on the range. */
  uffdRegister(fd: number, start: number, length: number, mode: number): bigint;
  uffdUnregister(fd: number, start: number, length: number): void;
  // Resolving ioctls return the kernel's result field: bytes done, or -errno.
  uffdCopy(fd: number, dst: number, src: ByteArg, srcOffset: number, length: number, mode: number): number;
  uffdCopyFrom(fd: number, dst: number, srcAddress: number, length: number, mode: number): number;
  uffdZeropage(fd: number, start: number, length: number, mode: number): number;
  uffdContinue(fd: number, start: number, length: number, mode: number): number;
  uffdPoison(fd: number, start: number, length: number, mode: number): number;
  /** 0, or -errno. */
  uffdWake(fd: number, start: number, length: number): number;
  /** 0, or -errno. */
  uffdWriteprotect(fd: number, start: number, length: number, mode: number): number;
  uffdMove(fd: number, dst: number, src: number, length: number, mode: number): number;

  /** read(2) into buf: bytes, or -errno (EAGAIN on an empty non-blocking fd). */
  readInto(fd: number, buf: ByteArg): number;
  /** pread(2) straight into host memory: bytes, or -errno. */
  preadAt(fd: number, address: number, length: number, offset: number): number;
  /** preadv2(RWF_NOWAIT) into buf: bytes, or -errno (-EAGAIN when the data is not in the page cache). */
  preadNoWait(fd: number, buf: ByteArg, offset: number): number;
  close(fd: number): void;
  dup(fd: number): number;
  setNonblocking(fd: number, on: boolean): void;
  /** poll(2) on one fd, blocking the calling thread: revents, 0 on timeout. */
  pollOnce(fd: number, events: number, timeoutMs: number): number;

  /** CRC32C (Castagnoli) of bytes; `initial` continues a previous result over the bytes that follow. SSE4.2 when the CPU has it. */
  crc32c(bytes: ByteArg, initial?: number): number;
  /** One CRC32C per pageSize bytes of bytes (whole pages) into out, three pages interleaved. */
  crc32cPages(bytes: ByteArg, pageSize: number, out: Uint32Array): void;
  /** CRC32C of (the range whose CRC32C is initial) + pages whose CRC32Cs are pageCrcs. */
  crc32cExtend(initial: number, pageCrcs: Uint32Array, pageSize: number): number;
  /** CRC32C(A + B) from CRC32C(A), CRC32C(B) and B's length. */
  crc32cCombine(crcA: number, crcB: number, lengthB: number): number;
  mmap(address: number, length: number, prot: number, flags: number, fd: number, offset: number): number;
  munmap(address: number, length: number): void;
  madvise(address: number, length: number, advice: number): void;
  /** madvise on libuv's thread pool: resolves when it returned, rejects with its errno. */
  madviseAsync(address: number, length: number, advice: number): Promise<void>;
  mprotect(address: number, length: number, prot: number): void;
  mremap(oldAddress: number, oldLength: number, newLength: number, flags: number, newAddress: number): number;
  /** mincore(2): one byte per page into out; never faults the pages in. */
  mincore(address: number, length: number, out: Uint8Array): void;
  memfdCreate(name: string, flags: number): number;
  /** fcntl(F_ADD_SEALS) on a memfd made with MFD_ALLOW_SEALING. */
  addSeals(fd: number, seals: number): void;
  /** An ArrayBuffer over host memory; the caller keeps the mapping alive. */
  arrayBufferAt(address: number, length: number): ArrayBuffer;
  addressOf(bytes: ByteArg): number;
  copyMemory(dst: number, src: number, length: number): void;
  /** process_vm_readv(2) of buf.length bytes: bytes, or -errno. */
  processVmReadv(pid: number, buf: ByteArg, remoteAddress: number): number;

  pidfdOpen(pid: number): number;
  gettid(): number;
  /** Pin the calling thread to one CPU; -1 for all. */
  setAffinity(cpu: number): void;
  /** CLOCK_MONOTONIC in nanoseconds, comparable across threads and processes. */
  monotonicNs(): number;

  unixListen(path: string, backlog: number): number;
  /** A connected fd, or -errno (EAGAIN when nobody waits). */
  unixAccept(fd: number): number;
  unixConnect(path: string): number;
  /** sendmsg(2) with SCM_RIGHTS: bytes sent, or -errno. */
  sendWithFds(fd: number, data: ByteArg, fds: number[]): number;
  /** recvmsg(2): [bytes or -errno, fds received]. */
  recvWithFds(fd: number, buf: ByteArg): [number, number[]];

  /** Watch fd in this thread's event loop; events are UV_READABLE | UV_WRITABLE | UV_DISCONNECT. */
  watchFd(fd: number, events: number, callback: (status: number, events: number) => void): NativeWatch;
  unwatchFd(watch: NativeWatch): void;
  /** Whether the watch keeps the event loop alive. */
  refWatch(watch: NativeWatch, ref: boolean): void;

  constants: Readonly<Record<NativeConstant, number>>;
}

export type NativeConstant =
  | 'UFFDIO_API' | 'UFFD_API' | 'PAGE_SIZE'
  | 'PROT_READ' | 'PROT_WRITE' | 'PROT_NONE'
  | 'MAP_PRIVATE' | 'MAP_SHARED' | 'MAP_ANONYMOUS' | 'MAP_FIXED' | 'MAP_NORESERVE' | 'MAP_POPULATE' | 'MAP_HUGETLB'
  | 'MREMAP_MAYMOVE' | 'MREMAP_FIXED' | 'MREMAP_DONTUNMAP'
  | 'MADV_DONTNEED' | 'MADV_REMOVE' | 'MADV_DONTFORK' | 'MADV_WILLNEED' | 'MADV_HUGEPAGE' | 'MADV_NOHUGEPAGE'
  | 'MFD_CLOEXEC' | 'MFD_HUGETLB' | 'MFD_ALLOW_SEALING' | 'F_SEAL_SEAL' | 'F_SEAL_SHRINK' | 'F_SEAL_GROW' | 'F_SEAL_WRITE' | 'F_SEAL_FUTURE_WRITE'
  | 'O_NONBLOCK' | 'O_CLOEXEC' | 'O_DIRECT'
  | 'POLLIN' | 'POLLHUP' | 'POLLERR'
  | 'UV_READABLE' | 'UV_WRITABLE' | 'UV_DISCONNECT';

const require = createRequire(import.meta.url);

function loadBinding(): NativeBinding {
  // dist/src/native.js and src/native.ts both sit two levels below the package root.
  const candidates = ['../../build/Release/userfault.node', '../build/Release/userfault.node'];
  let lastError: unknown;
  for (const candidate of candidates) {
    try {
      return require(candidate) as NativeBinding;
    } catch (error) {
      lastError = error;
    }
  }
  throw new Error('userfault native addon is not built: run `npm install` (node-gyp rebuild)', { cause: lastError });
}

export const native: NativeBinding = loadBinding();
export const PAGE_SIZE = native.constants.PAGE_SIZE;

export function isNativeSyscallError(error: unknown): error is NativeSyscallError {
  return error instanceof Error && (error as Partial<NativeSyscallError>).code === 'ESYSCALL';
}
