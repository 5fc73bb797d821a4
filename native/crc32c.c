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

// Three ranges of equal length at once. The crc32 instruction's latency is 3
// cycles and its throughput 1, so one stream uses a third of the unit: three
// independent streams fill it (~3x one stream's speed on long ranges).
#if defined(__x86_64__)
__attribute__((target("sse4.2"))) static void crc32c_sse42_x3(uint32_t crc[3], const uint8_t *a, const uint8_t *b, const uint8_t *c, size_t n) {
  uint64_t ca = crc[0], cb = crc[1], cc = crc[2];
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t va, vb, vc;
    memcpy(&va, a + i, 8);
    memcpy(&vb, b + i, 8);
    memcpy(&vc, c + i, 8);
    ca = _mm_crc32_u64(ca, va);
    cb = _mm_crc32_u64(cb, vb);
    cc = _mm_crc32_u64(cc, vc);
  }
  crc[0] = (uint32_t)ca;
  crc[1] = (uint32_t)cb;
  crc[2] = (uint32_t)cc;
  if (i < n) {
    crc[0] = crc32c_sse42(crc[0], a + i, n - i);
    crc[1] = crc32c_sse42(crc[1], b + i, n - i);
    crc[2] = crc32c_sse42(crc[2], c + i, n - i);
  }
}
#endif

static void crc32c_table_x3(uint32_t crc[3], const uint8_t *a, const uint8_t *b, const uint8_t *c, size_t n) {
  crc[0] = crc32c_table(crc[0], a, n);
  crc[1] = crc32c_table(crc[1], b, n);
  crc[2] = crc32c_table(crc[2], c, n);
}

static void (*crc32c_x3_impl)(uint32_t[3], const uint8_t *, const uint8_t *, const uint8_t *, size_t) = crc32c_table_x3;

// Combining: CRC(A || B) from CRC(A), CRC(B) and B's length, as zlib's
// crc32_combine does it (arithmetic on polynomials over GF(2) modulo the
// reflected Castagnoli polynomial). Lets a sender derive a frame's checksum
// from the pages' own checksums without reading the pages again, and a
// receiver check a frame from the page checksums it computes anyway.
#define POLY 0x82F63B78u
static uint32_t x2n_table[32];

// a * b modulo the polynomial (reflected: bit 31 is x^0).
static uint32_t multmodp(uint32_t a, uint32_t b) {
  uint32_t m = 1u << 31, p = 0;
  for (;;) {
    if (a & m) {
      p ^= b;
      if ((a & (m - 1)) == 0) break;
    }
    m >>= 1;
    b = b & 1 ? (b >> 1) ^ POLY : b >> 1;
  }
  return p;
}

// x^(n * 2^k) modulo the polynomial.
static uint32_t x2nmodp(uint64_t n, unsigned k) {
  uint32_t p = 1u << 31;
  while (n) {
    if (n & 1) p = multmodp(x2n_table[k & 31], p);
    n >>= 1;
    k++;
  }
  return p;
}

static uint32_t combine(uint32_t crc_a, uint32_t crc_b, uint64_t len_b) {
  return multmodp(x2nmodp(len_b, 3), crc_a) ^ crc_b;
}

static void build_x2n_table(void) {
  uint32_t p = 1u << 30; // x^1
  x2n_table[0] = p;
  for (int n = 1; n < 32; n++) x2n_table[n] = p = multmodp(p, p);
}

// The CRC32C (final value) of data, continuing `initial` (a final value too).
// Long ranges are split in three, run interleaved, and combined.
static uint32_t crc32c_of(uint32_t initial, const uint8_t *data, size_t len) {
  if (len < 3 * 1024) return ~crc32c_impl(~initial, data, len);
  size_t third = (len / 3) & ~(size_t)7;
  uint32_t crc[3] = {~initial, ~0u, ~0u};
  crc32c_x3_impl(crc, data, data + third, data + 2 * third, third);
  uint32_t c = ~crc32c_impl(crc[2], data + 3 * third, len - 3 * third);
  return combine(combine(~crc[0], ~crc[1], third), c, len - 2 * third);
}

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
  return num(env, (double)crc32c_of((uint32_t)initial, data, len));
}

// crc32cPages(bytes, pageSize, out: Uint32Array) -> undefined: out[i] = the
// CRC32C of the i-th pageSize bytes (bytes.length / pageSize pages, at most
// out.length), three pages at a time.
static napi_value Crc32cPages(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  if (!get_args(env, info, 3, argv)) return NULL;
  uint8_t *data, *out_bytes;
  size_t len, out_len;
  uint64_t page_size;
  if (!arg_bytes(env, argv[0], &data, &len) || !arg_u64(env, argv[1], &page_size) || !arg_bytes(env, argv[2], &out_bytes, &out_len)) return NULL;
  if (page_size == 0 || len % page_size != 0 || out_len / 4 < len / page_size) {
    napi_throw_range_error(env, "EUFFDARGS", "crc32cPages: bytes must be whole pages and out must hold one u32 per page");
    return NULL;
  }
  size_t pages = len / page_size;
  uint32_t *out = (uint32_t *)out_bytes;
  size_t i = 0;
  for (; i + 3 <= pages; i += 3) {
    uint32_t crc[3] = {~0u, ~0u, ~0u};
    const uint8_t *p = data + i * page_size;
    crc32c_x3_impl(crc, p, p + page_size, p + 2 * page_size, page_size);
    out[i] = ~crc[0];
    out[i + 1] = ~crc[1];
    out[i + 2] = ~crc[2];
  }
  for (; i < pages; i++) out[i] = ~crc32c_impl(~0u, data + i * page_size, page_size);
  return NULL;
}

// crc32cExtend(initial, pageCrcs: Uint32Array, pageSize) -> the CRC32C of
// (the range whose CRC is `initial`) followed by pages whose own CRC32Cs are
// pageCrcs: no page byte is read.
static napi_value Crc32cExtend(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  if (!get_args(env, info, 3, argv)) return NULL;
  uint64_t initial, page_size;
  uint8_t *crc_bytes;
  size_t crc_len;
  if (!arg_u64(env, argv[0], &initial) || !arg_bytes(env, argv[1], &crc_bytes, &crc_len) || !arg_u64(env, argv[2], &page_size)) return NULL;
  const uint32_t *crcs = (const uint32_t *)crc_bytes;
  uint32_t shift = x2nmodp(page_size, 3);
  uint32_t crc = (uint32_t)initial;
  for (size_t i = 0; i < crc_len / 4; i++) crc = multmodp(shift, crc) ^ crcs[i];
  return num(env, (double)crc);
}

// crc32cCombine(crcA, crcB, lengthB) -> the CRC32C of A followed by B.
static napi_value Crc32cCombine(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  if (!get_args(env, info, 3, argv)) return NULL;
  uint64_t a, b, len_b;
  if (!arg_u64(env, argv[0], &a) || !arg_u64(env, argv[1], &b) || !arg_u64(env, argv[2], &len_b)) return NULL;
  return num(env, (double)combine((uint32_t)a, (uint32_t)b, len_b));
}

void register_crc32c(napi_env env, napi_value exports) {
  build_table();
  build_x2n_table();
#if defined(__x86_64__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("sse4.2")) {
    crc32c_impl = crc32c_sse42;
    crc32c_x3_impl = crc32c_sse42_x3;
  }
#endif
  napi_property_descriptor fns[] = {
      {"crc32c", NULL, Crc32c, NULL, NULL, NULL, napi_default, NULL},
      {"crc32cPages", NULL, Crc32cPages, NULL, NULL, NULL, napi_default, NULL},
      {"crc32cExtend", NULL, Crc32cExtend, NULL, NULL, NULL, napi_default, NULL},
      {"crc32cCombine", NULL, Crc32cCombine, NULL, NULL, NULL, napi_default, NULL},
  };
  napi_define_properties(env, exports, sizeof fns / sizeof fns[0], fns);
}
