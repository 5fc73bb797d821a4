// CRC32C (Castagnoli) of a byte range: the page checksum of snapshot format
// version 2. With SSE4.2 (every x86-64 CPU since 2008) it is the CPU's own
// crc32 instruction, 8 bytes at a time, ~3x zlib's CRC32 on a 4 KiB page
// here; without it, a table. The only computation in the addon: it is the
// one thing on the lazy-restore hot path that JavaScript cannot do at the
// copy's speed. Registered from userfault.c's Init by register_crc32c().
#include <node_api.h>

#include "napi-util.h"

#include <stdint.h>
#include <string.h>

static uint32_t table[256];

static void build_table(void) {
  for (uint32_t i = 0; i < 256; i++) {
    uint32_t c = i;
    for (int k = 0; k < 8; k++) c = c & 1 ? (c >> 1) ^ 0x82F63B78u : c >> 1;
    table[i] = c;
  }
}

static uint32_t crc32c_table(uint32_t crc, const uint8_t *p, size_t n) {
  while (n--) crc = table[(crc ^ *p++) & 0xff] ^ (crc >> 8);
  return crc;
}

#if defined(__x86_64__)
#include <nmmintrin.h>
__attribute__((target("sse4.2"))) static uint32_t crc32c_sse42(uint32_t crc, const uint8_t *p, size_t n) {
  uint64_t c = crc;
  while (n >= 8) {
    uint64_t v;
    memcpy(&v, p, 8);
    c = _mm_crc32_u64(c, v);
    p += 8;
    n -= 8;
  }
  uint32_t c32 = (uint32_t)c;
  while (n--) c32 = _mm_crc32_u8(c32, *p++);
  return c32;
}
#endif

static uint32_t (*crc32c_impl)(uint32_t, const uint8_t *, size_t) = crc32c_table;

// crc32c(bytes[, initial]) -> the CRC32C of bytes (initial: a previous
// result, to continue over a following range).
static napi_value Crc32c(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 1) {
    napi_throw_type_error(env, "EUFFDARGS", "crc32c(bytes[, initial])");
    return NULL;
  }
  uint8_t *data;
  size_t len;
  if (!arg_bytes(env, argv[0], &data, &len)) return NULL;
  uint64_t initial = 0;
  if (argc >= 2 && !arg_u64(env, argv[1], &initial)) return NULL;
  uint32_t crc = ~(uint32_t)initial;
  crc = crc32c_impl(crc, data, len);
  return num(env, (double)(uint32_t)~crc);
}

void register_crc32c(napi_env env, napi_value exports) {
  build_table();
#if defined(__x86_64__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("sse4.2")) crc32c_impl = crc32c_sse42;
#endif
  napi_property_descriptor fns[] = {
      {"crc32c", NULL, Crc32c, NULL, NULL, NULL, napi_default, NULL},
  };
  napi_define_properties(env, exports, 1, fns);
}
