// Shared N-API helpers of the native layer: argument checks and the one way
// a failed syscall is thrown ({errno, code: 'ESYSCALL', syscall}).
#ifndef USERFAULT_NAPI_UTIL_H
#define USERFAULT_NAPI_UTIL_H
#include <node_api.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#define UNUSED_OK __attribute__((unused))

#define CHECK_NAPI(call)                                                       \
  do {                                                                         \
    if ((call) != napi_ok) {                                                   \
      napi_throw_error(env, "EUFFDNAPI", "N-API call failed: " #call);        \
      return NULL;                                                             \
    }                                                                          \
  } while (0)

/* The error a failed syscall throws (or rejects with): code ESYSCALL, with its errno and name. */
static UNUSED_OK napi_value errno_error(napi_env env, const char *syscall_name, int err) {
  napi_value error, message, code, errno_value, syscall_value;
  char text[160];
  snprintf(text, sizeof text, "%s failed: %s", syscall_name, strerror(err));
  napi_create_string_utf8(env, text, NAPI_AUTO_LENGTH, &message);
  napi_create_string_utf8(env, "ESYSCALL", NAPI_AUTO_LENGTH, &code);
  napi_create_error(env, code, message, &error);
  napi_create_int32(env, err, &errno_value);
  napi_create_string_utf8(env, syscall_name, NAPI_AUTO_LENGTH, &syscall_value);
  napi_set_named_property(env, error, "errno", errno_value);
  napi_set_named_property(env, error, "syscall", syscall_value);
  return error;
}

static UNUSED_OK napi_value throw_errno(napi_env env, const char *syscall_name, int err) {
  napi_throw(env, errno_error(env, syscall_name, err));
  return NULL;
}

static UNUSED_OK int get_args(napi_env env, napi_callback_info info, size_t expected,
                    napi_value *argv) {
  size_t argc = expected;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok ||
      argc < expected) {
    napi_throw_type_error(env, "EUFFDARGS", "wrong number of arguments");
    return 0;
  }
  return 1;
}

static UNUSED_OK int arg_i64(napi_env env, napi_value v, int64_t *out) {
  if (napi_get_value_int64(env, v, out) != napi_ok) {
    napi_throw_type_error(env, "EUFFDARGS", "expected a number");
    return 0;
  }
  return 1;
}

static UNUSED_OK int arg_u64(napi_env env, napi_value v, uint64_t *out) {
  double d;
  if (napi_get_value_double(env, v, &d) != napi_ok || d < 0) {
    napi_throw_type_error(env, "EUFFDARGS", "expected a non-negative number");
    return 0;
  }
  *out = (uint64_t)d;
  return 1;
}

static UNUSED_OK int arg_bigint_u64(napi_env env, napi_value v, uint64_t *out) {
  bool lossless;
  napi_valuetype type;
  napi_typeof(env, v, &type);
  if (type == napi_number) return arg_u64(env, v, out);
  if (napi_get_value_bigint_uint64(env, v, out, &lossless) != napi_ok) {
    napi_throw_type_error(env, "EUFFDARGS", "expected a bigint");
    return 0;
  }
  return 1;
}

// A Buffer, TypedArray or DataView: its data pointer and length.
static UNUSED_OK int arg_bytes(napi_env env, napi_value v, uint8_t **data, size_t *len) {
  bool is;
  if (napi_is_typedarray(env, v, &is) == napi_ok && is) {
    napi_typedarray_type type;
    size_t count, offset;
    napi_value ab;
    void *p;
    napi_get_typedarray_info(env, v, &type, &count, &p, &ab, &offset);
    size_t elem = 1;
    switch (type) {
      case napi_int16_array: case napi_uint16_array: elem = 2; break;
      case napi_int32_array: case napi_uint32_array: case napi_float32_array: elem = 4; break;
      case napi_float64_array: case napi_bigint64_array: case napi_biguint64_array: elem = 8; break;
      default: elem = 1;
    }
    *data = p;
    *len = count * elem;
    return 1;
  }
  if (napi_is_dataview(env, v, &is) == napi_ok && is) {
    napi_value ab;
    size_t offset;
    void *p;
    napi_get_dataview_info(env, v, len, &p, &ab, &offset);
    *data = p;
    return 1;
  }
  if (napi_is_arraybuffer(env, v, &is) == napi_ok && is) {
    void *p;
    napi_get_arraybuffer_info(env, v, &p, len);
    *data = p;
    return 1;
  }
  napi_throw_type_error(env, "EUFFDARGS", "expected a Buffer, TypedArray or ArrayBuffer");
  return 0;
}

static UNUSED_OK napi_value num(napi_env env, double v) {
  napi_value out;
  napi_create_double(env, v, &out);
  return out;
}

static UNUSED_OK napi_value undefined(napi_env env) {
  napi_value out;
  napi_get_undefined(env, &out);
  return out;
}

static UNUSED_OK int arg_double(napi_env env, napi_value v, double *out) {
  if (napi_get_value_double(env, v, out) != napi_ok) {
    napi_throw_type_error(env, "EUFFDARGS", "expected a number");
    return 0;
  }
  return 1;
}

static UNUSED_OK void set_const(napi_env env, napi_value obj, const char *name, double value) {
  napi_set_named_property(env, obj, name, num(env, value));
}

#endif
