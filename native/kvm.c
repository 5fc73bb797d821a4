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

static napi_value kvm_throw(napi_env env, const char *what, const char *name, int err) {
  napi_value error, message, code, errno_value, syscall_value;
  char call[96], text[200];
  snprintf(call, sizeof call, "%s(%s)", what, name);
  snprintf(text, sizeof text, "%s failed: %s", call, strerror(err));
  napi_create_string_utf8(env, text, NAPI_AUTO_LENGTH, &message);
  napi_create_string_utf8(env, "ESYSCALL", NAPI_AUTO_LENGTH, &code);
  napi_create_error(env, code, message, &error);
  napi_create_int32(env, err, &errno_value);
  napi_create_string_utf8(env, call, NAPI_AUTO_LENGTH, &syscall_value);
  napi_set_named_property(env, error, "errno", errno_value);
  napi_set_named_property(env, error, "syscall", syscall_value);
  napi_throw(env, error);
  return NULL;
}

static int kvm_args(napi_env env, napi_callback_info info, size_t expected, napi_value *argv) {
  size_t argc = expected;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < expected) {
    napi_throw_type_error(env, "EUFFDARGS", "wrong number of arguments");
    return 0;
  }
  return 1;
}

static int kvm_arg_num(napi_env env, napi_value v, double *out) {
  if (napi_get_value_double(env, v, out) != napi_ok) {
    napi_throw_type_error(env, "EUFFDARGS", "expected a number");
    return 0;
  }
  return 1;
}

// The name is only for the error message: "ioctl(KVM_SET_SREGS)".
static int kvm_arg_name(napi_env env, napi_value v, char *out, size_t size) {
  size_t len;
  if (napi_get_value_string_utf8(env, v, out, size, &len) != napi_ok) {
    napi_throw_type_error(env, "EUFFDARGS", "expected a string");
    return 0;
  }
  return 1;
}

static int kvm_arg_bytes(napi_env env, napi_value v, void **data, size_t *len) {
  bool is;
  if (napi_is_typedarray(env, v, &is) == napi_ok && is) {
    napi_typedarray_type type;
    size_t count, offset;
    napi_value ab;
    napi_get_typedarray_info(env, v, &type, &count, data, &ab, &offset);
    if (type != napi_uint8_array && type != napi_int8_array && type != napi_uint8_clamped_array) {
      napi_throw_type_error(env, "EUFFDARGS", "expected a Buffer or Uint8Array");
      return 0;
    }
    *len = count;
    return 1;
  }
  napi_throw_type_error(env, "EUFFDARGS", "expected a Buffer or Uint8Array");
  return 0;
}

static napi_value kvm_num(napi_env env, double v) {
  napi_value out;
  napi_create_double(env, v, &out);
  return out;
}

// kvmOpen() -> fd of /dev/kvm.
static napi_value KvmOpen(napi_env env, napi_callback_info info) {
  int fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
  if (fd < 0) return kvm_throw(env, "open", "/dev/kvm", errno);
  return kvm_num(env, fd);
}

// kvmIoctl(fd, request, arg, name) -> the ioctl's non-negative result. For
// requests whose argument is an integer (KVM_CREATE_VM, KVM_CHECK_EXTENSION,
// KVM_CREATE_VCPU, KVM_SET_TSS_ADDR, KVM_CREATE_IRQCHIP, ...).
static napi_value KvmIoctl(napi_env env, napi_callback_info info) {
  napi_value argv[4];
  double fd, request, arg;
  char name[64];
  if (!kvm_args(env, info, 4, argv) || !kvm_arg_num(env, argv[0], &fd) ||
      !kvm_arg_num(env, argv[1], &request) || !kvm_arg_num(env, argv[2], &arg) ||
      !kvm_arg_name(env, argv[3], name, sizeof name))
    return NULL;
  int r = ioctl((int)fd, (unsigned long)request, (unsigned long)arg);
  if (r < 0) return kvm_throw(env, "ioctl", name, errno);
  return kvm_num(env, r);
}

// kvmIoctlBytes(fd, request, bytes, name) -> result. The kernel reads and/or
// writes the struct in `bytes` in place; the caller sized it.
static napi_value KvmIoctlBytes(napi_env env, napi_callback_info info) {
  napi_value argv[4];
  double fd, request;
  void *data;
  size_t len;
  char name[64];
  if (!kvm_args(env, info, 4, argv) || !kvm_arg_num(env, argv[0], &fd) ||
      !kvm_arg_num(env, argv[1], &request) || !kvm_arg_bytes(env, argv[2], &data, &len) ||
      !kvm_arg_name(env, argv[3], name, sizeof name))
    return NULL;
  int r = ioctl((int)fd, (unsigned long)request, data);
  if (r < 0) return kvm_throw(env, "ioctl", name, errno);
  return kvm_num(env, r);
}

// kvmIoctlBytesResult(fd, request, bytes) -> result, or -errno. For calls whose
// failure is an answer, not an error (KVM_GET_SUPPORTED_CPUID's E2BIG asking for
// a bigger buffer, probing one MSR).
static napi_value KvmIoctlBytesResult(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  double fd, request;
  void *data;
  size_t len;
  if (!kvm_args(env, info, 3, argv) || !kvm_arg_num(env, argv[0], &fd) ||
      !kvm_arg_num(env, argv[1], &request) || !kvm_arg_bytes(env, argv[2], &data, &len))
    return NULL;
  int r = ioctl((int)fd, (unsigned long)request, data);
  return kvm_num(env, r < 0 ? -errno : r);
}

// kvmRun(vcpuFd) -> 0, or -EINTR / -EAGAIN when a kick (signal or
// immediate_exit) ended it before or during guest execution. Blocks the
// calling thread for as long as the guest runs without a userspace exit.
static napi_value KvmRun(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  double fd;
  if (!kvm_args(env, info, 1, argv) || !kvm_arg_num(env, argv[0], &fd)) return NULL;
  int r = ioctl((int)fd, KVM_RUN, 0);
  if (r < 0) {
    int err = errno;
    if (err == EINTR || err == EAGAIN) return kvm_num(env, -err);
    return kvm_throw(env, "ioctl", "KVM_RUN", err);
  }
  return kvm_num(env, r);
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
  if (!kvm_args(env, info, 1, argv) || !kvm_arg_num(env, argv[0], &signo)) return NULL;
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
  if (!kvm_args(env, info, 2, argv) || !kvm_arg_num(env, argv[0], &tid) ||
      !kvm_arg_num(env, argv[1], &signo))
    return NULL;
  if (syscall(SYS_tgkill, getpid(), (pid_t)tid, (int)signo) < 0)
    return kvm_throw(env, "tgkill", "kick", errno);
  napi_value out;
  napi_get_undefined(env, &out);
  return out;
}

static void kvm_const(napi_env env, napi_value obj, const char *name, double v) {
  napi_value value;
  napi_create_double(env, v, &value);
  napi_set_named_property(env, obj, name, value);
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
  kvm_const(env, c, "SIGRTMIN", SIGRTMIN);
  kvm_const(env, c, "EINTR", EINTR);
  kvm_const(env, c, "EAGAIN", EAGAIN);
  kvm_const(env, c, "E2BIG", E2BIG);
  kvm_const(env, c, "ENOENT", ENOENT);
  napi_set_named_property(env, exports, "kvmConstants", c);
}
