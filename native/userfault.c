// userfault native layer: thin N-API wrappers over syscalls and ioctls.
//
// Rules for this file: no policy, no formatting, no state beyond what a handle
// needs. Every failing syscall throws an Error carrying {errno, code, syscall};
// calls whose failure is an expected outcome on the hot path (UFFDIO_COPY and
// friends, read on a non-blocking fd) return the kernel's own result instead
// (a byte count, or a negative errno) so TypeScript decides what it means.
// Host addresses travel as JS numbers: x86-64 user addresses are below 2^47,
// well inside the 2^53 range a double holds exactly.
#define _GNU_SOURCE
#include <node_api.h>
#include <uv.h>

#include "napi-util.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

// Debian 12's kernel headers predate these (Linux 6.6 and 6.8); the ABI is fixed.
#ifndef UFFDIO_POISON
struct uffdio_poison {
  struct uffdio_range range;
  __u64 mode;
  __s64 updated;
};
#define _UFFDIO_POISON (0x08)
#define UFFDIO_POISON _IOWR(UFFDIO, _UFFDIO_POISON, struct uffdio_poison)
#endif
#ifndef UFFDIO_MOVE
struct uffdio_move {
  __u64 dst;
  __u64 src;
  __u64 len;
  __u64 mode;
  __s64 move;
};
#define _UFFDIO_MOVE (0x05)
#define UFFDIO_MOVE _IOWR(UFFDIO, _UFFDIO_MOVE, struct uffdio_move)
#endif
#ifndef USERFAULTFD_IOC_NEW
#define USERFAULTFD_IOC 0xAA
#define USERFAULTFD_IOC_NEW _IO(USERFAULTFD_IOC, 0x00)
#endif
#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif

// ---- userfaultfd --------------------------------------------------------

// openDevUserfaultfd(flags) -> fd. The /dev/userfaultfd path (Linux 6.1+) is
// governed by the device node's permissions, not vm.unprivileged_userfaultfd.
static napi_value OpenDevUserfaultfd(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  int64_t flags;
  if (!get_args(env, info, 1, argv) || !arg_i64(env, argv[0], &flags)) return NULL;
  int dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
  if (dev < 0) return throw_errno(env, "open(/dev/userfaultfd)", errno);
  int fd = ioctl(dev, USERFAULTFD_IOC_NEW, (int)flags);
  int err = errno;
  close(dev);
  if (fd < 0) return throw_errno(env, "ioctl(USERFAULTFD_IOC_NEW)", err);
  return num(env, fd);
}

static napi_value UserfaultfdSyscall(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  int64_t flags;
  if (!get_args(env, info, 1, argv) || !arg_i64(env, argv[0], &flags)) return NULL;
  int fd = (int)syscall(SYS_userfaultfd, (int)flags);
  if (fd < 0) return throw_errno(env, "userfaultfd", errno);
  return num(env, fd);
}

// uffdApi(fd, features: bigint) -> [features: bigint, ioctls: bigint]
static napi_value UffdApi(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  int64_t fd;
  uint64_t features;
  if (!get_args(env, info, 2, argv) || !arg_i64(env, argv[0], &fd) ||
      !arg_bigint_u64(env, argv[1], &features))
    return NULL;
  struct uffdio_api api = {.api = UFFD_API, .features = features};
  if (ioctl((int)fd, UFFDIO_API, &api) < 0) return throw_errno(env, "ioctl(UFFDIO_API)", errno);
  napi_value out, f, i;
  napi_create_array_with_length(env, 2, &out);
  napi_create_bigint_uint64(env, api.features, &f);
  napi_create_bigint_uint64(env, api.ioctls, &i);
  napi_set_element(env, out, 0, f);
  napi_set_element(env, out, 1, i);
  return out;
}

// uffdRegister(fd, start, len, mode) -> ioctls: bigint
static napi_value UffdRegister(napi_env env, napi_callback_info info) {
  napi_value argv[4];
  int64_t fd, mode;
  uint64_t start, len;
  if (!get_args(env, info, 4, argv) || !arg_i64(env, argv[0], &fd) ||
      !arg_u64(env, argv[1], &start) || !arg_u64(env, argv[2], &len) ||
      !arg_i64(env, argv[3], &mode))
    return NULL;
  struct uffdio_register reg = {.range = {.start = start, .len = len}, .mode = (uint64_t)mode};
  if (ioctl((int)fd, UFFDIO_REGISTER, &reg) < 0)
    return throw_errno(env, "ioctl(UFFDIO_REGISTER)", errno);
  napi_value out;
  napi_create_bigint_uint64(env, reg.ioctls, &out);
  return out;
}

static napi_value UffdUnregister(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  int64_t fd;
  uint64_t start, len;
  if (!get_args(env, info, 3, argv) || !arg_i64(env, argv[0], &fd) ||
      !arg_u64(env, argv[1], &start) || !arg_u64(env, argv[2], &len))
    return NULL;
  struct uffdio_range range = {.start = start, .len = len};
  if (ioctl((int)fd, UFFDIO_UNREGISTER, &range) < 0)
    return throw_errno(env, "ioctl(UFFDIO_UNREGISTER)", errno);
  return undefined(env);
}

// The resolving ioctls below return one number: the kernel's result field
// (bytes done, or -errno) when it wrote one, else -errno of the ioctl. A
// partial copy thus shows as 0 < result < len (the ioctl itself said EAGAIN).
static double resolve_result(int rc, int err, int64_t field) {
  if (rc == 0) return (double)field;
  if (field != 0) return (double)field;
  return -(double)err;
}

// uffdCopy(fd, dst, src: bytes, srcOffset, len, mode) -> result
static napi_value UffdCopy(napi_env env, napi_callback_info info) {
  napi_value argv[6];
  int64_t fd, mode;
  uint64_t dst, src_offset, len;
  uint8_t *src;
  size_t src_len;
  if (!get_args(env, info, 6, argv) || !arg_i64(env, argv[0], &fd) ||
      !arg_u64(env, argv[1], &dst) || !arg_bytes(env, argv[2], &src, &src_len) ||
      !arg_u64(env, argv[3], &src_offset) || !arg_u64(env, argv[4], &len) ||
      !arg_i64(env, argv[5], &mode))
    return NULL;
  if (src_offset + len > src_len) {
    napi_throw_range_error(env, "EUFFDARGS", "copy source is shorter than len");
    return NULL;
  }
  struct uffdio_copy copy = {
      .dst = dst, .src = (uint64_t)(uintptr_t)(src + src_offset), .len = len, .mode = (uint64_t)mode};
  int rc = ioctl((int)fd, UFFDIO_COPY, &copy);
  return num(env, resolve_result(rc, errno, copy.copy));
}

// uffdCopyFrom(fd, dst, srcAddress, len, mode) -> result (source is host memory)
static napi_value UffdCopyFrom(napi_env env, napi_callback_info info) {
  napi_value argv[5];
  int64_t fd, mode;
  uint64_t dst, src, len;
  if (!get_args(env, info, 5, argv) || !arg_i64(env, argv[0], &fd) ||
      !arg_u64(env, argv[1], &dst) || !arg_u64(env, argv[2], &src) ||
      !arg_u64(env, argv[3], &len) || !arg_i64(env, argv[4], &mode))
    return NULL;
  struct uffdio_copy copy = {.dst = dst, .src = src, .len = len, .mode = (uint64_t)mode};
  int rc = ioctl((int)fd, UFFDIO_COPY, &copy);
  return num(env, resolve_result(rc, errno, copy.copy));
}

// Shared shape for (fd, start, len, mode) resolving ioctls.
static int range_args(napi_env env, napi_callback_info info, int64_t *fd, uint64_t *start,
                      uint64_t *len, int64_t *mode) {
  napi_value argv[4];
  return get_args(env, info, 4, argv) && arg_i64(env, argv[0], fd) &&
         arg_u64(env, argv[1], start) && arg_u64(env, argv[2], len) &&
         arg_i64(env, argv[3], mode);
}

static napi_value UffdZeropage(napi_env env, napi_callback_info info) {
  int64_t fd, mode;
  uint64_t start, len;
  if (!range_args(env, info, &fd, &start, &len, &mode)) return NULL;
  struct uffdio_zeropage z = {.range = {.start = start, .len = len}, .mode = (uint64_t)mode};
  int rc = ioctl((int)fd, UFFDIO_ZEROPAGE, &z);
  return num(env, resolve_result(rc, errno, z.zeropage));
}

static napi_value UffdContinue(napi_env env, napi_callback_info info) {
  int64_t fd, mode;
  uint64_t start, len;
  if (!range_args(env, info, &fd, &start, &len, &mode)) return NULL;
  struct uffdio_continue c = {.range = {.start = start, .len = len}, .mode = (uint64_t)mode};
  int rc = ioctl((int)fd, UFFDIO_CONTINUE, &c);
  return num(env, resolve_result(rc, errno, c.mapped));
}

static napi_value UffdPoison(napi_env env, napi_callback_info info) {
  int64_t fd, mode;
  uint64_t start, len;
  if (!range_args(env, info, &fd, &start, &len, &mode)) return NULL;
  struct uffdio_poison p = {.range = {.start = start, .len = len}, .mode = (uint64_t)mode};
  int rc = ioctl((int)fd, UFFDIO_POISON, &p);
  return num(env, resolve_result(rc, errno, p.updated));
}

// WAKE and WRITEPROTECT report no byte count: 0 on success, -errno on failure.
static napi_value UffdWake(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  int64_t fd;
  uint64_t start, len;
  if (!get_args(env, info, 3, argv) || !arg_i64(env, argv[0], &fd) ||
      !arg_u64(env, argv[1], &start) || !arg_u64(env, argv[2], &len))
    return NULL;
  struct uffdio_range range = {.start = start, .len = len};
  int rc = ioctl((int)fd, UFFDIO_WAKE, &range);
  return num(env, rc == 0 ? 0 : -errno);
}

static napi_value UffdWriteprotect(napi_env env, napi_callback_info info) {
  int64_t fd, mode;
  uint64_t start, len;
  if (!range_args(env, info, &fd, &start, &len, &mode)) return NULL;
  struct uffdio_writeprotect wp = {.range = {.start = start, .len = len}, .mode = (uint64_t)mode};
  int rc = ioctl((int)fd, UFFDIO_WRITEPROTECT, &wp);
  return num(env, rc == 0 ? 0 : -errno);
}

// uffdMove(fd, dst, src, len, mode) -> result
static napi_value UffdMove(napi_env env, napi_callback_info info) {
  napi_value argv[5];
  int64_t fd, mode;
  uint64_t dst, src, len;
  if (!get_args(env, info, 5, argv) || !arg_i64(env, argv[0], &fd) ||
      !arg_u64(env, argv[1], &dst) || !arg_u64(env, argv[2], &src) ||
      !arg_u64(env, argv[3], &len) || !arg_i64(env, argv[4], &mode))
    return NULL;
  struct uffdio_move m = {.dst = dst, .src = src, .len = len, .mode = (uint64_t)mode};
  int rc = ioctl((int)fd, UFFDIO_MOVE, &m);
  return num(env, resolve_result(rc, errno, m.move));
}

// ---- plain fd I/O -------------------------------------------------------

// readInto(fd, buf) -> bytes read, or -errno (EAGAIN on an empty non-blocking fd).
static napi_value ReadInto(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  int64_t fd;
  uint8_t *buf;
  size_t len;
  if (!get_args(env, info, 2, argv) || !arg_i64(env, argv[0], &fd) ||
      !arg_bytes(env, argv[1], &buf, &len))
    return NULL;
  ssize_t n;
  do n = read((int)fd, buf, len); while (n < 0 && errno == EINTR);
  return num(env, n < 0 ? -errno : (double)n);
}

// preadAt(fd, address, len, offset) -> bytes read or -errno: read a file straight into host memory.
static napi_value PreadAt(napi_env env, napi_callback_info info) {
  napi_value argv[4];
  int64_t fd, offset;
  uint64_t addr, len;
  if (!get_args(env, info, 4, argv) || !arg_i64(env, argv[0], &fd) ||
      !arg_u64(env, argv[1], &addr) || !arg_u64(env, argv[2], &len) ||
      !arg_i64(env, argv[3], &offset))
    return NULL;
  ssize_t n;
  do n = pread((int)fd, (void *)(uintptr_t)addr, len, offset); while (n < 0 && errno == EINTR);
  return num(env, n < 0 ? -errno : (double)n);
}

// preadNoWait(fd, buf, offset) -> bytes read, or -errno: preadv2 with
// RWF_NOWAIT, which answers -EAGAIN instead of waiting for the disk, so a
// pager can read page-cache hits on its own thread and go async otherwise.
static napi_value PreadNoWait(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  int64_t fd, offset;
  uint8_t *buf;
  size_t len;
  if (!get_args(env, info, 3, argv) || !arg_i64(env, argv[0], &fd) ||
      !arg_bytes(env, argv[1], &buf, &len) || !arg_i64(env, argv[2], &offset))
    return NULL;
  struct iovec iov = {.iov_base = buf, .iov_len = len};
  ssize_t n;
  do n = preadv2((int)fd, &iov, 1, offset, RWF_NOWAIT); while (n < 0 && errno == EINTR);
  return num(env, n < 0 ? -errno : (double)n);
}

static napi_value Close(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  int64_t fd;
  if (!get_args(env, info, 1, argv) || !arg_i64(env, argv[0], &fd)) return NULL;
  if (close((int)fd) < 0) return throw_errno(env, "close", errno);
  return undefined(env);
}

static napi_value Dup(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  int64_t fd;
  if (!get_args(env, info, 1, argv) || !arg_i64(env, argv[0], &fd)) return NULL;
  int out = fcntl((int)fd, F_DUPFD_CLOEXEC, 0);
  if (out < 0) return throw_errno(env, "dup", errno);
  return num(env, out);
}

// setNonblocking(fd, on)
static napi_value SetNonblocking(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  int64_t fd;
  bool on;
  if (!get_args(env, info, 2, argv) || !arg_i64(env, argv[0], &fd)) return NULL;
  napi_get_value_bool(env, argv[1], &on);
  int flags = fcntl((int)fd, F_GETFL);
  if (flags < 0) return throw_errno(env, "fcntl(F_GETFL)", errno);
  flags = on ? (flags | O_NONBLOCK) : (flags & ~O_NONBLOCK);
  if (fcntl((int)fd, F_SETFL, flags) < 0) return throw_errno(env, "fcntl(F_SETFL)", errno);
  return undefined(env);
}

// pollOnce(fd, events, timeoutMs) -> revents (0 on timeout). Blocks the calling thread.
static napi_value PollOnce(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  int64_t fd, events, timeout;
  if (!get_args(env, info, 3, argv) || !arg_i64(env, argv[0], &fd) ||
      !arg_i64(env, argv[1], &events) || !arg_i64(env, argv[2], &timeout))
    return NULL;
  struct pollfd p = {.fd = (int)fd, .events = (short)events};
  int rc;
  do rc = poll(&p, 1, (int)timeout); while (rc < 0 && errno == EINTR);
  if (rc < 0) return throw_errno(env, "poll", errno);
  return num(env, rc == 0 ? 0 : p.revents);
}

// ---- memory -------------------------------------------------------------

static napi_value Mmap(napi_env env, napi_callback_info info) {
  napi_value argv[6];
  int64_t prot, flags, fd, offset;
  uint64_t addr, len;
  if (!get_args(env, info, 6, argv) || !arg_u64(env, argv[0], &addr) ||
      !arg_u64(env, argv[1], &len) || !arg_i64(env, argv[2], &prot) ||
      !arg_i64(env, argv[3], &flags) || !arg_i64(env, argv[4], &fd) ||
      !arg_i64(env, argv[5], &offset))
    return NULL;
  void *p = mmap((void *)(uintptr_t)addr, len, (int)prot, (int)flags, (int)fd, offset);
  if (p == MAP_FAILED) return throw_errno(env, "mmap", errno);
  return num(env, (double)(uintptr_t)p);
}

static napi_value Munmap(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  uint64_t addr, len;
  if (!get_args(env, info, 2, argv) || !arg_u64(env, argv[0], &addr) ||
      !arg_u64(env, argv[1], &len))
    return NULL;
  if (munmap((void *)(uintptr_t)addr, len) < 0) return throw_errno(env, "munmap", errno);
  return undefined(env);
}

static napi_value Madvise(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  uint64_t addr, len;
  int64_t advice;
  if (!get_args(env, info, 3, argv) || !arg_u64(env, argv[0], &addr) ||
      !arg_u64(env, argv[1], &len) || !arg_i64(env, argv[2], &advice))
    return NULL;
  if (madvise((void *)(uintptr_t)addr, len, (int)advice) < 0)
    return throw_errno(env, "madvise", errno);
  return undefined(env);
}

/*
 * madviseAsync(address, length, advice) -> Promise: madvise on libuv's thread
 * pool. With UFFD_FEATURE_EVENT_REMOVE, MADV_DONTNEED/MADV_REMOVE on a
 * registered range waits in the kernel until its REMOVE event is read from
 * the uffd: a thread that also reads that uffd (a VMM's main thread) must
 * not be the one waiting.
 */
typedef struct {
  napi_async_work work;
  napi_deferred deferred;
  uint64_t addr, len;
  int advice;
  int err;
} madvise_job_t;

static void madvise_execute(napi_env env, void *data) {
  (void)env;
  madvise_job_t *job = data;
  job->err = madvise((void *)(uintptr_t)job->addr, job->len, job->advice) < 0 ? errno : 0;
}

static void madvise_complete(napi_env env, napi_status status, void *data) {
  madvise_job_t *job = data;
  if (status == napi_ok && job->err == 0) {
    napi_value result;
    napi_get_undefined(env, &result);
    napi_resolve_deferred(env, job->deferred, result);
  } else {
    napi_reject_deferred(env, job->deferred, errno_error(env, "madvise", status == napi_ok ? job->err : ECANCELED));
  }
  napi_delete_async_work(env, job->work);
  free(job);
}

static napi_value MadviseAsync(napi_env env, napi_callback_info info) {
  napi_value argv[3], promise, name;
  uint64_t addr, len;
  int64_t advice;
  if (!get_args(env, info, 3, argv) || !arg_u64(env, argv[0], &addr) ||
      !arg_u64(env, argv[1], &len) || !arg_i64(env, argv[2], &advice))
    return NULL;
  madvise_job_t *job = calloc(1, sizeof *job);
  if (!job) return throw_errno(env, "madvise", ENOMEM);
  job->addr = addr;
  job->len = len;
  job->advice = (int)advice;
  if (napi_create_promise(env, &job->deferred, &promise) != napi_ok ||
      napi_create_string_utf8(env, "userfault:madvise", NAPI_AUTO_LENGTH, &name) != napi_ok ||
      napi_create_async_work(env, NULL, name, madvise_execute, madvise_complete, job, &job->work) != napi_ok) {
    free(job);
    napi_throw_error(env, "EUFFDNAPI", "N-API call failed: madviseAsync");
    return NULL;
  }
  if (napi_queue_async_work(env, job->work) != napi_ok) {
    napi_delete_async_work(env, job->work);
    free(job);
    napi_throw_error(env, "EUFFDNAPI", "N-API call failed: napi_queue_async_work");
    return NULL;
  }
  return promise;
}

static napi_value Mprotect(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  uint64_t addr, len;
  int64_t prot;
  if (!get_args(env, info, 3, argv) || !arg_u64(env, argv[0], &addr) ||
      !arg_u64(env, argv[1], &len) || !arg_i64(env, argv[2], &prot))
    return NULL;
  if (mprotect((void *)(uintptr_t)addr, len, (int)prot) < 0)
    return throw_errno(env, "mprotect", errno);
  return undefined(env);
}

// mremap(oldAddr, oldLen, newLen, flags, newAddr) -> address
static napi_value Mremap(napi_env env, napi_callback_info info) {
  napi_value argv[5];
  uint64_t old_addr, old_len, new_len, new_addr;
  int64_t flags;
  if (!get_args(env, info, 5, argv) || !arg_u64(env, argv[0], &old_addr) ||
      !arg_u64(env, argv[1], &old_len) || !arg_u64(env, argv[2], &new_len) ||
      !arg_i64(env, argv[3], &flags) || !arg_u64(env, argv[4], &new_addr))
    return NULL;
  void *p = mremap((void *)(uintptr_t)old_addr, old_len, new_len, (int)flags,
                   (void *)(uintptr_t)new_addr);
  if (p == MAP_FAILED) return throw_errno(env, "mremap", errno);
  return num(env, (double)(uintptr_t)p);
}

// mincore(addr, len, out: Uint8Array) — residency without touching (never faults).
static napi_value Mincore(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  uint64_t addr, len;
  uint8_t *out;
  size_t out_len;
  if (!get_args(env, info, 3, argv) || !arg_u64(env, argv[0], &addr) ||
      !arg_u64(env, argv[1], &len) || !arg_bytes(env, argv[2], &out, &out_len))
    return NULL;
  size_t pages = (len + 4095) / 4096;
  if (out_len < pages) {
    napi_throw_range_error(env, "EUFFDARGS", "mincore vector is too short");
    return NULL;
  }
  if (mincore((void *)(uintptr_t)addr, len, out) < 0) return throw_errno(env, "mincore", errno);
  return undefined(env);
}

// addSeals(fd, seals): fcntl(F_ADD_SEALS) on a memfd made with MFD_ALLOW_SEALING.
static napi_value AddSeals(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  int64_t fd, seals;
  if (!get_args(env, info, 2, argv) || !arg_i64(env, argv[0], &fd) || !arg_i64(env, argv[1], &seals)) return NULL;
  if (fcntl((int)fd, F_ADD_SEALS, (int)seals) < 0) return throw_errno(env, "fcntl(F_ADD_SEALS)", errno);
  return undefined(env);
}

static napi_value MemfdCreate(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  char name[250];
  size_t name_len;
  int64_t flags;
  if (!get_args(env, info, 2, argv)) return NULL;
  if (napi_get_value_string_utf8(env, argv[0], name, sizeof name, &name_len) != napi_ok) {
    napi_throw_type_error(env, "EUFFDARGS", "expected a name");
    return NULL;
  }
  if (!arg_i64(env, argv[1], &flags)) return NULL;
  int fd = memfd_create(name, (unsigned)flags);
  if (fd < 0) return throw_errno(env, "memfd_create", errno);
  return num(env, fd);
}

// arrayBufferAt(addr, len) -> ArrayBuffer over host memory the caller owns.
// No finalizer: the mapping's lifetime belongs to the TypeScript Mapping.
static napi_value ArrayBufferAt(napi_env env, napi_callback_info info) {
  napi_value argv[2], out;
  uint64_t addr, len;
  if (!get_args(env, info, 2, argv) || !arg_u64(env, argv[0], &addr) ||
      !arg_u64(env, argv[1], &len))
    return NULL;
  CHECK_NAPI(napi_create_external_arraybuffer(env, (void *)(uintptr_t)addr, len, NULL, NULL, &out));
  return out;
}

static napi_value AddressOf(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  uint8_t *data;
  size_t len;
  if (!get_args(env, info, 1, argv) || !arg_bytes(env, argv[0], &data, &len)) return NULL;
  return num(env, (double)(uintptr_t)data);
}

// copyMemory(dst, src, len): memcpy between host addresses (may fault: caller's thread blocks).
static napi_value CopyMemory(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  uint64_t dst, src, len;
  if (!get_args(env, info, 3, argv) || !arg_u64(env, argv[0], &dst) ||
      !arg_u64(env, argv[1], &src) || !arg_u64(env, argv[2], &len))
    return NULL;
  memcpy((void *)(uintptr_t)dst, (void *)(uintptr_t)src, len);
  return undefined(env);
}

// processVmReadv(pid, localBuf, remoteAddr) -> bytes or -errno
static napi_value ProcessVmReadv(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  int64_t pid;
  uint8_t *buf;
  size_t len;
  uint64_t remote;
  if (!get_args(env, info, 3, argv) || !arg_i64(env, argv[0], &pid) ||
      !arg_bytes(env, argv[1], &buf, &len) || !arg_u64(env, argv[2], &remote))
    return NULL;
  struct iovec local_iov = {.iov_base = buf, .iov_len = len};
  struct iovec remote_iov = {.iov_base = (void *)(uintptr_t)remote, .iov_len = len};
  ssize_t n = process_vm_readv((pid_t)pid, &local_iov, 1, &remote_iov, 1, 0);
  return num(env, n < 0 ? -errno : (double)n);
}

// ---- processes and threads ---------------------------------------------

static napi_value PidfdOpen(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  int64_t pid;
  if (!get_args(env, info, 1, argv) || !arg_i64(env, argv[0], &pid)) return NULL;
  int fd = (int)syscall(SYS_pidfd_open, (pid_t)pid, 0);
  if (fd < 0) return throw_errno(env, "pidfd_open", errno);
  return num(env, fd);
}

static napi_value Gettid(napi_env env, napi_callback_info info) {
  (void)info;
  return num(env, (double)syscall(SYS_gettid));
}

// setAffinity(cpu): pin the calling thread to one CPU (-1: all CPUs).
static napi_value SetAffinity(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  int64_t cpu;
  if (!get_args(env, info, 1, argv) || !arg_i64(env, argv[0], &cpu)) return NULL;
  cpu_set_t set;
  CPU_ZERO(&set);
  if (cpu < 0) {
    long n = sysconf(_SC_NPROCESSORS_CONF);
    for (long i = 0; i < n && i < CPU_SETSIZE; i++) CPU_SET(i, &set);
  } else {
    CPU_SET((int)cpu, &set);
  }
  if (sched_setaffinity(0, sizeof set, &set) < 0) return throw_errno(env, "sched_setaffinity", errno);
  return undefined(env);
}

// monotonicNs() -> bigint nanoseconds (CLOCK_MONOTONIC), for timing across threads.
static napi_value MonotonicNs(napi_env env, napi_callback_info info) {
  (void)info;
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return num(env, (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec);
}

// ---- Unix sockets with SCM_RIGHTS -----------------------------------------

static int fill_sockaddr(napi_env env, napi_value v, struct sockaddr_un *addr) {
  size_t len;
  memset(addr, 0, sizeof *addr);
  addr->sun_family = AF_UNIX;
  if (napi_get_value_string_utf8(env, v, addr->sun_path, sizeof addr->sun_path, &len) != napi_ok) {
    napi_throw_type_error(env, "EUFFDARGS", "expected a socket path");
    return 0;
  }
  if (len >= sizeof addr->sun_path - 1) {
    napi_throw_range_error(env, "EUFFDARGS", "socket path is too long");
    return 0;
  }
  return 1;
}

// unixListen(path, backlog) -> fd (non-blocking, SOCK_STREAM)
static napi_value UnixListen(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  int64_t backlog;
  struct sockaddr_un addr;
  if (!get_args(env, info, 2, argv) || !fill_sockaddr(env, argv[0], &addr) ||
      !arg_i64(env, argv[1], &backlog))
    return NULL;
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return throw_errno(env, "socket", errno);
  if (bind(fd, (struct sockaddr *)&addr, sizeof addr) < 0) {
    int err = errno;
    close(fd);
    return throw_errno(env, "bind", err);
  }
  if (listen(fd, (int)backlog) < 0) {
    int err = errno;
    close(fd);
    return throw_errno(env, "listen", err);
  }
  return num(env, fd);
}

// unixAccept(fd) -> new fd (non-blocking), or -errno (EAGAIN when none waits)
static napi_value UnixAccept(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  int64_t fd;
  if (!get_args(env, info, 1, argv) || !arg_i64(env, argv[0], &fd)) return NULL;
  int c = accept4((int)fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
  return num(env, c < 0 ? -errno : c);
}

// unixConnect(path) -> fd (blocking)
static napi_value UnixConnect(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  struct sockaddr_un addr;
  if (!get_args(env, info, 1, argv) || !fill_sockaddr(env, argv[0], &addr)) return NULL;
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return throw_errno(env, "socket", errno);
  if (connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0) {
    int err = errno;
    close(fd);
    return throw_errno(env, "connect", err);
  }
  return num(env, fd);
}

// sendWithFds(fd, data, fds: number[]) -> bytes sent or -errno
static napi_value SendWithFds(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  int64_t fd;
  uint8_t *data;
  size_t len;
  uint32_t nfds;
  if (!get_args(env, info, 3, argv) || !arg_i64(env, argv[0], &fd) ||
      !arg_bytes(env, argv[1], &data, &len))
    return NULL;
  if (napi_get_array_length(env, argv[2], &nfds) != napi_ok || nfds > 16) {
    napi_throw_type_error(env, "EUFFDARGS", "expected an array of at most 16 fds");
    return NULL;
  }
  int fds[16];
  for (uint32_t i = 0; i < nfds; i++) {
    napi_value v;
    int64_t x;
    napi_get_element(env, argv[2], i, &v);
    if (!arg_i64(env, v, &x)) return NULL;
    fds[i] = (int)x;
  }
  char control[CMSG_SPACE(sizeof fds)];
  memset(control, 0, sizeof control);
  struct iovec iov = {.iov_base = data, .iov_len = len};
  struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1};
  if (nfds > 0) {
    msg.msg_control = control;
    msg.msg_controllen = CMSG_SPACE(nfds * sizeof(int));
    struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg);
    cmsg->cmsg_level = SOL_SOCKET;
    cmsg->cmsg_type = SCM_RIGHTS;
    cmsg->cmsg_len = CMSG_LEN(nfds * sizeof(int));
    memcpy(CMSG_DATA(cmsg), fds, nfds * sizeof(int));
  }
  ssize_t n;
  do n = sendmsg((int)fd, &msg, MSG_NOSIGNAL); while (n < 0 && errno == EINTR);
  return num(env, n < 0 ? -errno : (double)n);
}

// recvWithFds(fd, buf) -> [bytes or -errno, fds: number[]]
static napi_value RecvWithFds(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  int64_t fd;
  uint8_t *buf;
  size_t len;
  if (!get_args(env, info, 2, argv) || !arg_i64(env, argv[0], &fd) ||
      !arg_bytes(env, argv[1], &buf, &len))
    return NULL;
  char control[CMSG_SPACE(16 * sizeof(int))];
  struct iovec iov = {.iov_base = buf, .iov_len = len};
  struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control,
                       .msg_controllen = sizeof control};
  ssize_t n;
  do n = recvmsg((int)fd, &msg, MSG_CMSG_CLOEXEC); while (n < 0 && errno == EINTR);
  napi_value out, fds_out;
  napi_create_array_with_length(env, 2, &out);
  napi_create_array(env, &fds_out);
  napi_set_element(env, out, 0, num(env, n < 0 ? -errno : (double)n));
  if (n >= 0) {
    uint32_t count = 0;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
      if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
      size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      int *p = (int *)CMSG_DATA(c);
      for (size_t i = 0; i < k; i++) napi_set_element(env, fds_out, count++, num(env, p[i]));
    }
  }
  napi_set_element(env, out, 1, fds_out);
  return out;
}

// ---- event-loop integration: a libuv poll handle on an fd -----------------
//
// The handle lives in the loop of the thread that created it (main or a
// worker), so a pager reacts to uffd readability without blocking its thread.

typedef struct {
  uv_poll_t poll;
  napi_env env;
  napi_ref callback;
  napi_async_context async_context;
  int closed;
} fd_watch_t;

static void watch_on_close(uv_handle_t *handle) {
  fd_watch_t *w = handle->data;
  free(w);
}

static void watch_on_event(uv_poll_t *handle, int status, int events) {
  fd_watch_t *w = handle->data;
  if (w->closed) return;
  napi_env env = w->env;
  napi_handle_scope scope;
  napi_open_handle_scope(env, &scope);
  napi_value cb, global, args[2], result;
  napi_get_reference_value(env, w->callback, &cb);
  napi_get_global(env, &global);
  napi_create_int32(env, status, &args[0]);
  napi_create_int32(env, events, &args[1]);
  // make_callback runs microtasks after the call, as a libuv callback in Node should.
  napi_status st = napi_make_callback(env, w->async_context, global, cb, 2, args, &result);
  if (st == napi_pending_exception) {
    napi_value exc;
    napi_get_and_clear_last_exception(env, &exc);
    napi_fatal_exception(env, exc);
  }
  napi_close_handle_scope(env, scope);
}

static void watch_finalize(napi_env env, void *data, void *hint) {
  (void)env; (void)hint;
  fd_watch_t *w = data;
  if (!w->closed) {
    w->closed = 1;
    uv_close((uv_handle_t *)&w->poll, watch_on_close);
  }
}

// watchFd(fd, events, callback(status, events)) -> handle; events: 1 readable, 2 writable, 4 disconnect
static napi_value WatchFd(napi_env env, napi_callback_info info) {
  napi_value argv[3], handle;
  int64_t fd, events;
  if (!get_args(env, info, 3, argv) || !arg_i64(env, argv[0], &fd) ||
      !arg_i64(env, argv[1], &events))
    return NULL;
  uv_loop_t *loop;
  CHECK_NAPI(napi_get_uv_event_loop(env, &loop));
  fd_watch_t *w = calloc(1, sizeof *w);
  w->env = env;
  int rc = uv_poll_init(loop, &w->poll, (int)fd);
  if (rc < 0) {
    free(w);
    return throw_errno(env, "uv_poll_init", -rc);
  }
  w->poll.data = w;
  CHECK_NAPI(napi_create_reference(env, argv[2], 1, &w->callback));
  napi_value resource_name;
  napi_create_string_utf8(env, "userfault:fd-watch", NAPI_AUTO_LENGTH, &resource_name);
  CHECK_NAPI(napi_async_init(env, NULL, resource_name, &w->async_context));
  rc = uv_poll_start(&w->poll, (int)events, watch_on_event);
  if (rc < 0) {
    napi_delete_reference(env, w->callback);
    w->closed = 1;
    uv_close((uv_handle_t *)&w->poll, watch_on_close);
    return throw_errno(env, "uv_poll_start", -rc);
  }
  CHECK_NAPI(napi_create_object(env, &handle));
  CHECK_NAPI(napi_wrap(env, handle, w, watch_finalize, NULL, NULL));
  return handle;
}

// unwatchFd(handle): stop and close; safe to call twice.
static napi_value UnwatchFd(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  fd_watch_t *w;
  if (!get_args(env, info, 1, argv)) return NULL;
  if (napi_remove_wrap(env, argv[0], (void **)&w) != napi_ok || w == NULL) return undefined(env);
  if (!w->closed) {
    w->closed = 1;
    uv_poll_stop(&w->poll);
    napi_delete_reference(env, w->callback);
    napi_async_destroy(env, w->async_context);
    uv_close((uv_handle_t *)&w->poll, watch_on_close);
  }
  return undefined(env);
}

// unrefWatch(handle, ref: bool): whether the watch keeps the loop alive.
static napi_value RefWatch(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  fd_watch_t *w;
  bool ref;
  if (!get_args(env, info, 2, argv)) return NULL;
  if (napi_unwrap(env, argv[0], (void **)&w) != napi_ok || w == NULL || w->closed) return undefined(env);
  napi_get_value_bool(env, argv[1], &ref);
  if (ref) uv_ref((uv_handle_t *)&w->poll); else uv_unref((uv_handle_t *)&w->poll);
  return undefined(env);
}

// ---- constants the TypeScript side cannot know without the C headers ----


static napi_value Init(napi_env env, napi_value exports) {
  napi_property_descriptor fns[] = {
#define FN(js, c) {js, NULL, c, NULL, NULL, NULL, napi_default, NULL}
      FN("openDevUserfaultfd", OpenDevUserfaultfd),
      FN("userfaultfdSyscall", UserfaultfdSyscall),
      FN("uffdApi", UffdApi),
      FN("uffdRegister", UffdRegister),
      FN("uffdUnregister", UffdUnregister),
      FN("uffdCopy", UffdCopy),
      FN("uffdCopyFrom", UffdCopyFrom),
      FN("uffdZeropage", UffdZeropage),
      FN("uffdContinue", UffdContinue),
      FN("uffdPoison", UffdPoison),
      FN("uffdWake", UffdWake),
      FN("uffdWriteprotect", UffdWriteprotect),
      FN("uffdMove", UffdMove),
      FN("readInto", ReadInto),
      FN("preadAt", PreadAt),
      FN("preadNoWait", PreadNoWait),
      FN("close", Close),
      FN("dup", Dup),
      FN("setNonblocking", SetNonblocking),
      FN("pollOnce", PollOnce),
      FN("mmap", Mmap),
      FN("munmap", Munmap),
      FN("madvise", Madvise),
      FN("madviseAsync", MadviseAsync),
      FN("mprotect", Mprotect),
      FN("mremap", Mremap),
      FN("mincore", Mincore),
      FN("memfdCreate", MemfdCreate),
      FN("addSeals", AddSeals),
      FN("arrayBufferAt", ArrayBufferAt),
      FN("addressOf", AddressOf),
      FN("copyMemory", CopyMemory),
      FN("processVmReadv", ProcessVmReadv),
      FN("pidfdOpen", PidfdOpen),
      FN("gettid", Gettid),
      FN("setAffinity", SetAffinity),
      FN("monotonicNs", MonotonicNs),
      FN("unixListen", UnixListen),
      FN("unixAccept", UnixAccept),
      FN("unixConnect", UnixConnect),
      FN("sendWithFds", SendWithFds),
      FN("recvWithFds", RecvWithFds),
      FN("watchFd", WatchFd),
      FN("unwatchFd", UnwatchFd),
      FN("refWatch", RefWatch),
#undef FN
  };
  napi_define_properties(env, exports, sizeof fns / sizeof fns[0], fns);

  napi_value c;
  napi_create_object(env, &c);
  set_const(env, c, "UFFDIO_API", UFFDIO_API);
  set_const(env, c, "UFFD_API", UFFD_API);
  set_const(env, c, "PAGE_SIZE", (double)sysconf(_SC_PAGESIZE));
  set_const(env, c, "PROT_READ", PROT_READ);
  set_const(env, c, "PROT_WRITE", PROT_WRITE);
  set_const(env, c, "PROT_NONE", PROT_NONE);
  set_const(env, c, "MAP_PRIVATE", MAP_PRIVATE);
  set_const(env, c, "MAP_SHARED", MAP_SHARED);
  set_const(env, c, "MAP_ANONYMOUS", MAP_ANONYMOUS);
  set_const(env, c, "MAP_FIXED", MAP_FIXED);
  set_const(env, c, "MAP_NORESERVE", MAP_NORESERVE);
  set_const(env, c, "MAP_POPULATE", MAP_POPULATE);
  set_const(env, c, "MAP_HUGETLB", MAP_HUGETLB);
  set_const(env, c, "MREMAP_MAYMOVE", MREMAP_MAYMOVE);
  set_const(env, c, "MREMAP_FIXED", MREMAP_FIXED);
  set_const(env, c, "MREMAP_DONTUNMAP", 4);
  set_const(env, c, "MADV_DONTNEED", MADV_DONTNEED);
  set_const(env, c, "MADV_REMOVE", MADV_REMOVE);
  set_const(env, c, "MADV_DONTFORK", MADV_DONTFORK);
  set_const(env, c, "MADV_WILLNEED", MADV_WILLNEED);
  set_const(env, c, "MADV_HUGEPAGE", MADV_HUGEPAGE);
  set_const(env, c, "MADV_NOHUGEPAGE", MADV_NOHUGEPAGE);
  set_const(env, c, "MFD_CLOEXEC", MFD_CLOEXEC);
  set_const(env, c, "MFD_HUGETLB", MFD_HUGETLB);
  set_const(env, c, "MFD_ALLOW_SEALING", MFD_ALLOW_SEALING);
  set_const(env, c, "F_SEAL_SEAL", F_SEAL_SEAL);
  set_const(env, c, "F_SEAL_SHRINK", F_SEAL_SHRINK);
  set_const(env, c, "F_SEAL_GROW", F_SEAL_GROW);
  set_const(env, c, "F_SEAL_WRITE", F_SEAL_WRITE);
  set_const(env, c, "F_SEAL_FUTURE_WRITE", F_SEAL_FUTURE_WRITE);
  set_const(env, c, "O_NONBLOCK", O_NONBLOCK);
  set_const(env, c, "O_CLOEXEC", O_CLOEXEC);
  set_const(env, c, "O_DIRECT", O_DIRECT);
  set_const(env, c, "POLLIN", POLLIN);
  set_const(env, c, "POLLHUP", POLLHUP);
  set_const(env, c, "POLLERR", POLLERR);
  set_const(env, c, "UV_READABLE", UV_READABLE);
  set_const(env, c, "UV_WRITABLE", UV_WRITABLE);
  set_const(env, c, "UV_DISCONNECT", UV_DISCONNECT);
  napi_set_named_property(env, exports, "constants", c);
  { extern void register_kvm(napi_env, napi_value); register_kvm(env, exports); } // native/kvm.c
  { extern void register_crc32c(napi_env, napi_value); register_crc32c(env, exports); } // native/crc32c.c
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, Init)
