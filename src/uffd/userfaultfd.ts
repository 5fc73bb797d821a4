// The userfaultfd kernel object: one instance per uffd file descriptor.
import { native, type ByteArg, type NativeWatch } from '../native.js';
import {
  FEATURE_NAMES,
  UFFD_FEATURE,
  UFFD_MSG_SIZE,
  UFFD_USER_MODE_ONLY,
  UFFDIO_CONTINUE_MODE_DONTWAKE,
  UFFDIO_CONTINUE_MODE_WP,
  UFFDIO_COPY_MODE_DONTWAKE,
  UFFDIO_COPY_MODE_WP,
  UFFDIO_IOCTL_BIT,
  UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES,
  UFFDIO_MOVE_MODE_DONTWAKE,
  UFFDIO_POISON_MODE_DONTWAKE,
  UFFDIO_REGISTER_MODE,
  UFFDIO_WRITEPROTECT_MODE_DONTWAKE,
  UFFDIO_WRITEPROTECT_MODE_WP,
  UFFDIO_ZEROPAGE_MODE_DONTWAKE,
  type FeatureName,
  type IoctlName,
  type RegisterModeName,
} from './constants.js';
import { ERRNO } from '../errno.js';
import {
  FeatureUnavailableError,
  UserfaultError,
  errorForErrno,
  wrapNative,
} from './errors.js';
import { decodeMessages, type UffdEvent } from './messages.js';

/** What the kernel offers, learned by UFFDIO_API on a throwaway fd. */
export interface KernelOffer {
  /** Named features the kernel offers. */
  features: Set<FeatureName>;
  /** The raw mask, unknown bits included (kept opaque, never an error). */
  rawFeatures: bigint;
  ioctls: Set<IoctlName>;
  rawIoctls: bigint;
  /** How a uffd could be created: the /dev/userfaultfd node or the syscall. */
  via: OpenVia;
}

export type OpenVia = 'device' | 'syscall';

export interface OpenOptions {
  /** Features that must be granted; open fails naming those the kernel lacks. */
  features?: readonly FeatureName[];
  /** Features taken when offered and silently left out otherwise. */
  optionalFeatures?: readonly FeatureName[];
  /** UFFD_USER_MODE_ONLY: kernel-mode accesses get EFAULT instead of a fault. Never for KVM guest RAM. */
  userModeOnly?: boolean;
  /** O_NONBLOCK on the fd (default true: the pager reads in batches until EAGAIN). */
  nonBlocking?: boolean;
  /** How to create the fd; 'auto' tries /dev/userfaultfd, then the syscall. */
  via?: OpenVia | 'auto';
}

/** Outcome of a resolving ioctl (COPY, ZEROPAGE, CONTINUE, POISON, MOVE). Expected outcomes are values. */
export type ResolveResult =
  /** The whole range was resolved. */
  | { status: 'done'; bytes: number }
  /** Part of the range was resolved before the kernel stopped (EAGAIN after progress). */
  | { status: 'partial'; bytes: number }
  /** EAGAIN with no progress: events are pending (mmap_changing); read them, then retry. */
  | { status: 'retry'; bytes: 0 }
  /** EEXIST: the first page of the range is already present. */
  | { status: 'exists'; bytes: 0 };

export interface RegisteredRange {
  start: number;
  length: number;
  modes: readonly RegisterModeName[];
  /** Ioctls the kernel allows on this range (depends on memory type and mode). */
  ioctls: Set<IoctlName>;
}

export class Userfaultfd {
  private closed = false;
  private readonly readBuffer: Uint8Array;
  private watchHandle: NativeWatch | undefined;

  private constructor(
    /** The file descriptor (non-negative while open). */
    readonly fd: number,
    /** Features granted on this fd (raw mask). */
    readonly rawFeatures: bigint,
    /** Ioctls UFFDIO_API reported. */
    readonly rawIoctls: bigint,
    readonly userModeOnly: boolean,
    readMessages = 64,
  ) {
    this.readBuffer = new Uint8Array(readMessages * UFFD_MSG_SIZE);
  }

  /** Create a uffd, trying /dev/userfaultfd first unless told otherwise. */
  static create(flags: number, via: OpenVia | 'auto' = 'auto'): { fd: number; via: OpenVia } {
    if (via === 'device') return { fd: wrapNative(() => native.openDevUserfaultfd(flags)), via };
    if (via === 'syscall') return { fd: wrapNative(() => native.userfaultfdSyscall(flags)), via };
    try {
      return { fd: wrapNative(() => native.openDevUserfaultfd(flags)), via: 'device' };
    } catch (deviceError) {
      try {
        return { fd: wrapNative(() => native.userfaultfdSyscall(flags)), via: 'syscall' };
      } catch (syscallError) {
        throw new UserfaultError(
          'cannot create a userfaultfd: /dev/userfaultfd and the userfaultfd syscall both refused ' +
            '(grant access to /dev/userfaultfd, or set vm.unprivileged_userfaultfd=1, or run with CAP_SYS_PTRACE)',
          { cause: new AggregateError([deviceError, syscallError]) },
        );
      }
    }
  }

  /**
   * What this kernel offers. The kernel takes UFFDIO_API once per fd, so the
   * probe asks for nothing on a throwaway fd and reads back the full offer.
   */
  static probe(via: OpenVia | 'auto' = 'auto'): KernelOffer {
    const created = Userfaultfd.create(native.constants.O_CLOEXEC, via);
    try {
      const [rawFeatures, rawIoctls] = wrapNative(() => native.uffdApi(created.fd, 0n));
      return {
        rawFeatures,
        rawIoctls,
        features: featureSet(rawFeatures),
        ioctls: ioctlSet(rawIoctls),
        via: created.via,
      };
    } finally {
      native.close(created.fd);
    }
  }

  /** Open a uffd with the features asked for; fails naming any the kernel lacks. */
  static open(options: OpenOptions = {}): Userfaultfd {
    const required = options.features ?? [];
    const offer = Userfaultfd.probe(options.via);
    const missing = required.filter((name) => !offer.features.has(name));
    if (missing.length > 0) throw new FeatureUnavailableError(missing);
    const wanted = [...required, ...(options.optionalFeatures ?? []).filter((name) => offer.features.has(name))];
    let mask = 0n;
    for (const name of wanted) mask |= UFFD_FEATURE[name];

    let flags = native.constants.O_CLOEXEC;
    if (options.nonBlocking ?? true) flags |= native.constants.O_NONBLOCK;
    if (options.userModeOnly) flags |= UFFD_USER_MODE_ONLY;
    const created = Userfaultfd.create(flags, options.via ?? offer.via);
    try {
      const [granted, ioctls] = wrapNative(() => native.uffdApi(created.fd, mask));
      const lacking = wanted.filter((name) => (granted & UFFD_FEATURE[name]) === 0n);
      if (lacking.length > 0) throw new FeatureUnavailableError(lacking, 'offered by the probe but not granted');
      return new Userfaultfd(created.fd, granted, ioctls, options.userModeOnly ?? false);
    } catch (error) {
      native.close(created.fd);
      throw error;
    }
  }

  /**
   * Adopt a uffd whose UFFDIO_API handshake another party already did: one
   * received over a socket, or the new uffd of a FORK event. `features` is
   * what the caller knows was negotiated (the kernel offers no way to ask).
   */
  static adopt(fd: number, features: readonly FeatureName[] = [], options: { nonBlocking?: boolean } = {}): Userfaultfd {
    let mask = 0n;
    for (const name of features) mask |= UFFD_FEATURE[name];
    if (options.nonBlocking ?? true) wrapNative(() => native.setNonblocking(fd, true));
    return new Userfaultfd(fd, mask, 0n, false);
  }

  /** Named features granted on this fd. */
  get features(): Set<FeatureName> {
    return featureSet(this.rawFeatures);
  }

  has(feature: FeatureName): boolean {
    return (this.rawFeatures & UFFD_FEATURE[feature]) !== 0n;
  }

  register(start: number, length: number, modes: readonly RegisterModeName[] = ['MISSING']): RegisteredRange {
    this.assertOpen();
    let mode = 0;
    for (const name of modes) mode |= UFFDIO_REGISTER_MODE[name];
    const ioctls = wrapNative(() => native.uffdRegister(this.fd, start, length, mode));
    return { start, length, modes: [...modes], ioctls: ioctlSet(ioctls) };
  }

  unregister(start: number, length: number): void {
    this.assertOpen();
    wrapNative(() => native.uffdUnregister(this.fd, start, length));
  }

  /** UFFDIO_COPY from bytes in this process (`length` defaults to the rest of `src`). */
  copy(dst: number, src: ByteArg, options: { srcOffset?: number; length?: number; writeProtect?: boolean; dontWake?: boolean } = {}): ResolveResult {
    const srcOffset = options.srcOffset ?? 0;
    const length = options.length ?? byteLength(src) - srcOffset;
    const mode = (options.dontWake ? UFFDIO_COPY_MODE_DONTWAKE : 0) | (options.writeProtect ? UFFDIO_COPY_MODE_WP : 0);
    return this.result('UFFDIO_COPY', length, native.uffdCopy(this.fd, dst, src, srcOffset, length, mode));
  }

  /** UFFDIO_COPY from a host address (e.g. another mapping of this process). */
  copyFromAddress(dst: number, srcAddress: number, length: number, options: { writeProtect?: boolean; dontWake?: boolean } = {}): ResolveResult {
    const mode = (options.dontWake ? UFFDIO_COPY_MODE_DONTWAKE : 0) | (options.writeProtect ? UFFDIO_COPY_MODE_WP : 0);
    return this.result('UFFDIO_COPY', length, native.uffdCopyFrom(this.fd, dst, srcAddress, length, mode));
  }

  /** UFFDIO_ZEROPAGE: map the shared zero page (reads zero, copy-on-write). */
  zeropage(start: number, length: number, options: { dontWake?: boolean } = {}): ResolveResult {
    const mode = options.dontWake ? UFFDIO_ZEROPAGE_MODE_DONTWAKE : 0;
    return this.result('UFFDIO_ZEROPAGE', length, native.uffdZeropage(this.fd, start, length, mode));
  }

  /** UFFDIO_CONTINUE: map the page-cache page for a MINOR fault. */
  continue(start: number, length: number, options: { writeProtect?: boolean; dontWake?: boolean } = {}): ResolveResult {
    const mode = (options.dontWake ? UFFDIO_CONTINUE_MODE_DONTWAKE : 0) | (options.writeProtect ? UFFDIO_CONTINUE_MODE_WP : 0);
    return this.result('UFFDIO_CONTINUE', length, native.uffdContinue(this.fd, start, length, mode));
  }

  /** UFFDIO_POISON: later accesses get SIGBUS (user) or EFAULT/EIO (kernel) instead of data. */
  poison(start: number, length: number, options: { dontWake?: boolean } = {}): ResolveResult {
    const mode = options.dontWake ? UFFDIO_POISON_MODE_DONTWAKE : 0;
    return this.result('UFFDIO_POISON', length, native.uffdPoison(this.fd, start, length, mode));
  }

  /** UFFDIO_MOVE: move pages from src into the hole at dst without copying. */
  move(dst: number, src: number, length: number, options: { dontWake?: boolean; allowSrcHoles?: boolean } = {}): ResolveResult {
    const mode = (options.dontWake ? UFFDIO_MOVE_MODE_DONTWAKE : 0) | (options.allowSrcHoles ? UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES : 0);
    return this.result('UFFDIO_MOVE', length, native.uffdMove(this.fd, dst, src, length, mode));
  }

  /** UFFDIO_WAKE: wake threads waiting on faults in the range (after DONTWAKE resolutions). */
  wake(start: number, length: number): void {
    const rc = native.uffdWake(this.fd, start, length);
    if (rc < 0) throw errorForErrno('UFFDIO_WAKE', -rc);
  }

  /** UFFDIO_WRITEPROTECT: protect (or unprotect, waking writers unless dontWake) the range. */
  writeProtect(start: number, length: number, options: { protect: boolean; dontWake?: boolean }): 'done' | 'retry' {
    const mode = (options.protect ? UFFDIO_WRITEPROTECT_MODE_WP : 0) | (options.dontWake ? UFFDIO_WRITEPROTECT_MODE_DONTWAKE : 0);
    const rc = native.uffdWriteprotect(this.fd, start, length, mode);
    if (rc === 0) return 'done';
    if (-rc === ERRNO.EAGAIN) return 'retry';
    throw errorForErrno('UFFDIO_WRITEPROTECT', -rc);
  }

  /**
   * Read every message ready now, without blocking (the fd is non-blocking).
   * Returns [] when none is pending.
   */
  readEvents(): UffdEvent[] {
    this.assertOpen();
    const events: UffdEvent[] = [];
    for (;;) {
      const n = native.readInto(this.fd, this.readBuffer);
      if (n < 0) {
        if (-n === ERRNO.EAGAIN) return events;
        throw errorForErrno('read(userfaultfd)', -n);
      }
      if (n === 0) return events;
      for (const event of decodeMessages(this.readBuffer, n)) events.push(event);
      if (n < this.readBuffer.length) return events;
    }
  }

  /** Block this thread until the uffd is readable or the timeout passes; true when readable. */
  waitReadable(timeoutMs: number): boolean {
    const revents = native.pollOnce(this.fd, native.constants.POLLIN, timeoutMs);
    if (revents & native.constants.POLLERR) throw new UserfaultError('poll reported POLLERR on the userfaultfd');
    return (revents & native.constants.POLLIN) !== 0;
  }

  /**
   * Call `onReadable` from this thread's event loop whenever the uffd has
   * messages. The watch does not keep the loop alive unless `ref` is set.
   */
  watch(onReadable: () => void, options: { ref?: boolean; onError?: (error: Error) => void } = {}): void {
    this.assertOpen();
    if (this.watchHandle) throw new UserfaultError('this userfaultfd is already watched');
    this.watchHandle = native.watchFd(this.fd, native.constants.UV_READABLE, (status) => {
      if (status >= 0) {
        onReadable();
        return;
      }
      // Never throw from a libuv callback: that is a fatal exception for the whole process.
      const error = errorForErrno('uv_poll(userfaultfd)', -status);
      if (options.onError) options.onError(error);
      else process.emitWarning(error);
    });
    if (!options.ref) native.refWatch(this.watchHandle, false);
  }

  unwatch(): void {
    if (this.watchHandle) native.unwatchFd(this.watchHandle);
    this.watchHandle = undefined;
  }

  /** Another fd on the same uffd (the memory owner's own reference; see lazy/). */
  duplicate(): number {
    return wrapNative(() => native.dup(this.fd));
  }

  get isClosed(): boolean {
    return this.closed;
  }

  /**
   * Close the fd. When this was the last reference, the kernel unregisters
   * every range and waiting faults are retried as plain faults: anonymous
   * memory then reads ZERO, which is why owners keep their own reference.
   */
  close(): void {
    if (this.closed) return;
    this.unwatch();
    this.closed = true;
    native.close(this.fd);
  }

  private assertOpen(): void {
    if (this.closed) throw new UserfaultError('userfaultfd is closed');
  }

  private result(ioctl: string, length: number, raw: number): ResolveResult {
    if (raw >= 0) {
      if (raw >= length) return { status: 'done', bytes: raw };
      return { status: 'partial', bytes: raw };
    }
    const errno = -raw;
    if (errno === ERRNO.EAGAIN) return { status: 'retry', bytes: 0 };
    if (errno === ERRNO.EEXIST) return { status: 'exists', bytes: 0 };
    throw errorForErrno(ioctl, errno);
  }
}

export function featureSet(mask: bigint): Set<FeatureName> {
  return new Set(FEATURE_NAMES.filter((name) => (mask & UFFD_FEATURE[name]) !== 0n));
}

export function ioctlSet(mask: bigint): Set<IoctlName> {
  const names = Object.keys(UFFDIO_IOCTL_BIT) as IoctlName[];
  return new Set(names.filter((name) => (mask & (1n << BigInt(UFFDIO_IOCTL_BIT[name]))) !== 0n));
}

function byteLength(bytes: ByteArg): number {
  return bytes.byteLength;
}
