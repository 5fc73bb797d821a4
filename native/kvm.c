// userfault native layer, KVM part: thin N-API wrappers over /dev/kvm ioctls.
//
// Same rules as userfault.c: no policy, no struct layouts beyond what the
// kernel call needs, errors thrown as {errno, code: 'ESYSCALL', syscall}. The
// ioctl numbers and every struct layout live in TypeScript
// (src/vm/kvm/ioctls/constants.ts and the codecs beside it): here a KVM ioctl is
// a request number and either an integer or a byte buffer the kernel reads or
// fills in place. Registered from userfault.c's Init by register_kvm().
#define _GNU_SOURCE
#include <node_api.h>

#include "napi-util.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>

// Errors name the ioctl: "ioctl(KVM_SET_SREGS) failed: ...".
static napi_value kvm_throw(napi_env env, const char *what, const char *name, int err) {
  char call[96];
  snprintf(call, sizeof call, "%s(%s)", what, name);
  return throw_errno(env, call, err);
}

// The name is only for the error message.
static int kvm_arg_name(napi_env env, napi_value v, char *out, size_t size) {
  size_t len;
  if (napi_get_value_string_utf8(env, v, out, size, &len) != napi_ok) {
    napi_throw_type_error(env, "EUFFDARGS", "expected a string");
    return 0;
  }
  return 1;
}

// kvmOpen() -> fd of /dev/kvm.
static napi_value KvmOpen(napi_env env, napi_callback_info info) {
  int fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
  if (fd < 0) return kvm_throw(env, "open", "/dev/kvm", errno);
  return num(env, fd);
}

// kvmIoctl(fd, request, arg, name) -> the ioctl's non-negative result. For
// requests whose argument is an integer (KVM_CREATE_VM, KVM_CHECK_EXTENSION,
// KVM_CREATE_VCPU, KVM_SET_TSS_ADDR, KVM_CREATE_IRQCHIP, ...).
static napi_value KvmIoctl(napi_env env, napi_callback_info info) {
  napi_value argv[4];
  double fd, request, arg;
  char name[64];
  if (!get_args(env, info, 4, argv) || !arg_double(env, argv[0], &fd) ||
      !arg_double(env, argv[1], &request) || !arg_double(env, argv[2], &arg) ||
      !kvm_arg_name(env, argv[3], name, sizeof name))
    return NULL;
  int r;
  // A signal (a profiler's SIGPROF, say) can interrupt KVM_CREATE_VM and friends: ask again,
  // as rust-vmm's kvm-ioctls does. KVM_RUN is not here: its EINTR is a kick (kvmRun).
  do r = ioctl((int)fd, (unsigned long)request, (unsigned long)arg); while (r < 0 && errno == EINTR);
  if (r < 0) return kvm_throw(env, "ioctl", name, errno);
  return num(env, r);
}

// kvmIoctlBytes(fd, request, bytes, name) -> result. The kernel reads and/or
// writes the struct in `bytes` in place; the caller sized it.
static napi_value KvmIoctlBytes(napi_env env, napi_callback_info info) {
  napi_value argv[4];
  double fd, request;
  uint8_t *data;
  size_t len;
  char name[64];
  if (!get_args(env, info, 4, argv) || !arg_double(env, argv[0], &fd) ||
      !arg_double(env, argv[1], &request) || !arg_bytes(env, argv[2], &data, &len) ||
      !kvm_arg_name(env, argv[3], name, sizeof name))
    return NULL;
  int r;
  do r = ioctl((int)fd, (unsigned long)request, data); while (r < 0 && errno == EINTR);
  if (r < 0) return kvm_throw(env, "ioctl", name, errno);
  return num(env, r);
}

// kvmIoctlBytesResult(fd, request, bytes) -> result, or -errno. For calls whose
// failure is an answer, not an error (KVM_GET_SUPPORTED_CPUID's E2BIG asking for
// a bigger buffer, probing one MSR).
static napi_value KvmIoctlBytesResult(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  double fd, request;
  uint8_t *data;
  size_t len;
  if (!get_args(env, info, 3, argv) || !arg_double(env, argv[0], &fd) ||
      !arg_double(env, argv[1], &request) || !arg_bytes(env, argv[2], &data, &len))
    return NULL;
  int r;
  do r = ioctl((int)fd, (unsigned long)request, data); while (r < 0 && errno == EINTR);
  return num(env, r < 0 ? -errno : r);
}

// kvmRun(vcpuFd) -> 0, or -EINTR / -EAGAIN when a kick (signal or
// immediate_exit) ended it before or during guest execution. Blocks the
// calling thread for as long as the guest runs without a userspace exit.
static napi_value KvmRun(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  double fd;
  if (!get_args(env, info, 1, argv) || !arg_double(env, argv[0], &fd)) return NULL;
  int r = ioctl((int)fd, KVM_RUN, 0);
  if (r < 0) {
    int err = errno;
    if (err == EINTR || err == EAGAIN) return num(env, -err);
    return kvm_throw(env, "ioctl", "KVM_RUN", err);
  }
  return num(env, r);
}

// The kick signal's handler does nothing: its delivery alone makes a blocked
// KVM_RUN return -EINTR (the kernel checks signal_pending() in its run loop).
// No SA_RESTART, so KVM_RUN is not restarted behind our back.
static void kick_handler(int signo) { (void)signo; }

// kvmPrepareKick(signo): install the handler (process-wide, idempotent) and
// unblock the signal in the calling thread, the vCPU thread that will be kicked.
static napi_value KvmPrepareKick(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  double signo;
  if (!get_args(env, info, 1, argv) || !arg_double(env, argv[0], &signo)) return NULL;
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = kick_handler;
  sigemptyset(&sa.sa_mask);
  if (sigaction((int)signo, &sa, NULL) < 0) return kvm_throw(env, "sigaction", "kick", errno);
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, (int)signo);
  int err = pthread_sigmask(SIG_UNBLOCK, &set, NULL);
  if (err != 0) return kvm_throw(env, "pthread_sigmask", "kick", err);
  napi_value out;
  napi_get_undefined(env, &out);
  return out;
}

// kvmKick(tid, signo): tgkill one thread of this process.
static napi_value KvmKick(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  double tid, signo;
  if (!get_args(env, info, 2, argv) || !arg_double(env, argv[0], &tid) ||
      !arg_double(env, argv[1], &signo))
    return NULL;
  if (syscall(SYS_tgkill, getpid(), (pid_t)tid, (int)signo) < 0)
    return kvm_throw(env, "tgkill", "kick", errno);
  napi_value out;
  napi_get_undefined(env, &out);
  return out;
}

void register_kvm(napi_env env, napi_value exports) {
  napi_property_descriptor fns[] = {
#define FN(js, c) {js, NULL, c, NULL, NULL, NULL, napi_default, NULL}
      FN("kvmOpen", KvmOpen),
      FN("kvmIoctl", KvmIoctl),
      FN("kvmIoctlBytes", KvmIoctlBytes),
      FN("kvmIoctlBytesResult", KvmIoctlBytesResult),
      FN("kvmRun", KvmRun),
      FN("kvmPrepareKick", KvmPrepareKick),
      FN("kvmKick", KvmKick),
#undef FN
  };
  napi_define_properties(env, exports, sizeof fns / sizeof fns[0], fns);
  napi_value c;
  napi_create_object(env, &c);
  // glibc reserves the first real-time signals for itself; SIGRTMIN is the
  // first one left to applications.
  set_const(env, c, "SIGRTMIN", SIGRTMIN);
  set_const(env, c, "EINTR", EINTR);
  set_const(env, c, "EAGAIN", EAGAIN);
  set_const(env, c, "E2BIG", E2BIG);
  set_const(env, c, "ENOENT", ENOENT);
  napi_set_named_property(env, exports, "kvmConstants", c);
}
