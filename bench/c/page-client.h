// A minimal page-protocol client (docs/protocol.md, src/protocol/wire.ts;
// version 2): one TCP connection, HELLO, GET_INFO, then one READ at a time,
// every CHECKED_PAGES reply checked (frame CRC32, type, requestId, offset,
// length, and each page against the checksum its snapshot stores for it, as
// RemoteSource does) before a byte of it is used. What the C handler (ref-handler.c --source remote) fetches
// with, to show what the page protocol costs without the JS client around it.
//
//   frame:  u16 type | u16 flags | u32 requestId | u32 payloadLength | u32 payloadCrc32 | payload
//   HELLO   0x0001  magic "USERFLT\0", u16 version, u16 minVersion, u8 role, u8[3] 0,
//                   u8[16] sessionId, u32 maxPayloadBytes, u32 features          (40 bytes)
//   INFO    0x0101  u64 imageSize, u64 metadataLength, u32 pageSize, u32 flags,
//                   u32 maxReadBytes, u8 pageChecksum (1 CRC32, 2 CRC32C), u8[3] 0,
//                   u8[16] imageId                                                (48 bytes)
//   READ    0x0106  u64 offset, u32 length, u8 priority, u8[3] 0                  (16 bytes)
//   CHECKED_PAGES 0x010a  u64 offset, u32 length, u32 pageCount,
//                   u32[pageCount] checksums, data                (16 + 4 * pageCount + length)
//
// Little-endian throughout (x86-64: the structs below are the wire, memcpy'd).
#ifndef PAGE_CLIENT_H
#define PAGE_CLIENT_H
#include "bench-common.h"

#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

enum {
  PC_HELLO = 0x0001, PC_ERROR = 0x0002, PC_GET_INFO = 0x0100, PC_INFO = 0x0101, PC_READ = 0x0106, PC_CHECKED_PAGES = 0x010a,
  PC_VERSION = 2, PC_CHECKSUM_CRC32 = 1, PC_CHECKSUM_CRC32C = 2,
  PC_ROLE_URGENT = 1, PC_ROLE_SERVER = 3,
  PC_HEADER_BYTES = 16, PC_HELLO_BYTES = 40, PC_INFO_BYTES = 48, PC_READ_BYTES = 16, PC_PAGES_HEADER_BYTES = 16,
};
// What this client announces it receives: a 2 MiB READ's reply with room (src/protocol/wire.ts DEFAULT_MAX_PAYLOAD_BYTES).
#define PC_MAX_PAYLOAD_BYTES (4u * 1024 * 1024 + 4096)

// CRC32 (IEEE 802.3, zlib's crc32), slicing by 8: ~1 cycle a byte, about what
// zlib 1.2.13 does, without needing zlib's headers to build.
static uint32_t pc_crc_table[8][256];

static void pc_crc_init(void) {
  for (uint32_t i = 0; i < 256; i++) {
    uint32_t c = i;
    for (int k = 0; k < 8; k++) c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
    pc_crc_table[0][i] = c;
  }
  for (uint32_t i = 0; i < 256; i++)
    for (int t = 1; t < 8; t++) pc_crc_table[t][i] = (pc_crc_table[t - 1][i] >> 8) ^ pc_crc_table[0][pc_crc_table[t - 1][i] & 0xff];
}

static uint32_t pc_crc32(const uint8_t *p, size_t n) {
  uint32_t c = 0xFFFFFFFFu;
  for (; n >= 8; n -= 8, p += 8) {
    uint64_t v;
    memcpy(&v, p, 8);
    v ^= c;
    c = pc_crc_table[7][v & 0xff] ^ pc_crc_table[6][(v >> 8) & 0xff] ^ pc_crc_table[5][(v >> 16) & 0xff] ^ pc_crc_table[4][(v >> 24) & 0xff] ^
        pc_crc_table[3][(v >> 32) & 0xff] ^ pc_crc_table[2][(v >> 40) & 0xff] ^ pc_crc_table[1][(v >> 48) & 0xff] ^ pc_crc_table[0][v >> 56];
  }
  while (n--) c = pc_crc_table[0][(c ^ *p++) & 0xff] ^ (c >> 8);
  return c ^ 0xFFFFFFFFu;
}

// CRC32C (Castagnoli), the page checksum of snapshot format 2: the CPU's
// crc32 instruction 8 bytes at a time (native/crc32c.c does the same), a
// bitwise loop without SSE4.2.
__attribute__((target("sse4.2"))) static uint32_t pc_crc32c_sse42(const uint8_t *p, size_t n) {
  uint64_t c = 0xFFFFFFFFu;
  for (; n >= 8; n -= 8, p += 8) {
    uint64_t v;
    memcpy(&v, p, 8);
    c = __builtin_ia32_crc32di(c, v);
  }
  uint32_t c32 = (uint32_t)c;
  while (n--) c32 = __builtin_ia32_crc32qi(c32, *p++);
  return c32 ^ 0xFFFFFFFFu;
}

static uint32_t pc_crc32c(const uint8_t *p, size_t n) {
  if (__builtin_cpu_supports("sse4.2")) return pc_crc32c_sse42(p, n);
  uint32_t c = 0xFFFFFFFFu;
  while (n--) {
    c ^= *p++;
    for (int k = 0; k < 8; k++) c = c & 1 ? 0x82F63B78u ^ (c >> 1) : c >> 1;
  }
  return c ^ 0xFFFFFFFFu;
}

typedef struct __attribute__((packed)) {
  uint16_t type, flags;
  uint32_t request_id, payload_length, payload_crc32;
} pc_header_t;

typedef struct {
  int fd;
  uint32_t next_id;
  uint64_t image_bytes, page_bytes, max_read_bytes;
  uint8_t page_checksum; // PC_CHECKSUM_CRC32 or PC_CHECKSUM_CRC32C, from the INFO
  uint8_t *payload; // the last frame's payload (PC_MAX_PAYLOAD_BYTES)
  uint64_t reads, bytes_received;
} page_client_t;

static void pc_fail(const char *what) {
  fprintf(stderr, "page client: %s\n", what);
  exit(2);
}

static void pc_write_all(int fd, const void *buf, size_t n) {
  for (size_t done = 0; done < n;) {
    ssize_t w = send(fd, (const uint8_t *)buf + done, n - done, MSG_NOSIGNAL);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) die("send to the page server");
    done += w;
  }
}

static void pc_read_all(int fd, void *buf, size_t n) {
  for (size_t done = 0; done < n;) {
    ssize_t r = recv(fd, (uint8_t *)buf + done, n - done, 0);
    if (r < 0 && errno == EINTR) continue;
    if (r == 0) pc_fail("the page server closed the connection");
    if (r < 0) die("recv from the page server");
    done += r;
  }
}

static void pc_send(page_client_t *pc, uint16_t type, uint32_t request_id, const void *payload, uint32_t length) {
  pc_header_t h = {.type = type, .flags = 0, .request_id = request_id, .payload_length = length, .payload_crc32 = pc_crc32(payload, length)};
  uint8_t frame[PC_HEADER_BYTES + PC_HELLO_BYTES];
  if (length > sizeof frame - PC_HEADER_BYTES) pc_fail("request too long");
  memcpy(frame, &h, PC_HEADER_BYTES);
  if (length) memcpy(frame + PC_HEADER_BYTES, payload, length);
  pc_write_all(pc->fd, frame, PC_HEADER_BYTES + length);
}

// Receive one frame into pc->payload; its header is returned. The length is
// checked before anything is read into the buffer, the CRC before it is used.
static pc_header_t pc_receive(page_client_t *pc) {
  pc_header_t h;
  pc_read_all(pc->fd, &h, PC_HEADER_BYTES);
  if (h.payload_length > PC_MAX_PAYLOAD_BYTES) pc_fail("a frame longer than this client's maxPayloadBytes");
  if (h.flags & 0xff) pc_fail("a frame with a must-understand flag");
  pc_read_all(pc->fd, pc->payload, h.payload_length);
  if (pc_crc32(pc->payload, h.payload_length) != h.payload_crc32) pc_fail("a frame whose payload fails its CRC32");
  pc->bytes_received += PC_HEADER_BYTES + h.payload_length;
  if (h.type == PC_ERROR && h.payload_length >= 4) {
    uint16_t code, text_length;
    memcpy(&code, pc->payload, 2);
    memcpy(&text_length, pc->payload + 2, 2);
    if (text_length > h.payload_length - 4) text_length = (uint16_t)(h.payload_length - 4);
    fprintf(stderr, "page client: the server answered request %u with ERROR %u: %.*s\n", h.request_id, code, text_length, (const char *)pc->payload + 4);
    exit(2);
  }
  return h;
}

// "HOST:PORT" (IPv4 or a name).
static int pc_connect_tcp(const char *address) {
  char host[256];
  const char *colon = strrchr(address, ':');
  if (!colon || (size_t)(colon - address) >= sizeof host) pc_fail("--server wants HOST:PORT");
  memcpy(host, address, colon - address);
  host[colon - address] = 0;
  struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *res;
  if (getaddrinfo(host, colon + 1, &hints, &res) != 0) pc_fail("cannot resolve the page server's address");
  int fd = socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) die("socket");
  if (connect(fd, res->ai_addr, res->ai_addrlen) < 0) die("connect to the page server");
  freeaddrinfo(res);
  int one = 1;
  // A READ is one small frame: Nagle would only hold it back.
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  return fd;
}

// Connect, HELLO as an urgent page client with this session id, GET_INFO; the image must be `image_bytes`.
static void pc_open(page_client_t *pc, const char *address, const uint8_t session_id[16], uint64_t image_bytes) {
  pc_crc_init();
  memset(pc, 0, sizeof *pc);
  pc->payload = malloc(PC_MAX_PAYLOAD_BYTES);
  if (!pc->payload) die("malloc");
  pc->fd = pc_connect_tcp(address);
  pc->next_id = 1;

  uint8_t hello[PC_HELLO_BYTES] = {'U', 'S', 'E', 'R', 'F', 'L', 'T', 0};
  uint16_t version = PC_VERSION;
  uint32_t max_payload = PC_MAX_PAYLOAD_BYTES, features = 0;
  memcpy(hello + 8, &version, 2);
  memcpy(hello + 10, &version, 2);
  hello[12] = PC_ROLE_URGENT;
  memcpy(hello + 16, session_id, 16);
  memcpy(hello + 32, &max_payload, 4);
  memcpy(hello + 36, &features, 4);
  pc_send(pc, PC_HELLO, 0, hello, sizeof hello);
  pc_header_t h = pc_receive(pc);
  uint16_t got_version, got_min;
  memcpy(&got_version, pc->payload + 8, 2);
  memcpy(&got_min, pc->payload + 10, 2);
  if (h.type != PC_HELLO || h.request_id != 0 || h.payload_length < PC_HELLO_BYTES || memcmp(pc->payload, hello, 8) != 0) pc_fail("the server did not answer with a HELLO");
  if (got_version != PC_VERSION || got_min != PC_VERSION || pc->payload[12] != PC_ROLE_SERVER || memcmp(pc->payload + 16, session_id, 16) != 0) {
    pc_fail("the server's HELLO is not version 2, a page server, with this session id");
  }

  uint32_t id = pc->next_id++;
  pc_send(pc, PC_GET_INFO, id, NULL, 0);
  h = pc_receive(pc);
  if (h.type != PC_INFO || h.request_id != id || h.payload_length != PC_INFO_BYTES) pc_fail("GET_INFO was not answered with an INFO");
  uint32_t page_bytes, max_read;
  memcpy(&pc->image_bytes, pc->payload, 8);
  memcpy(&page_bytes, pc->payload + 16, 4);
  memcpy(&max_read, pc->payload + 24, 4);
  pc->page_bytes = page_bytes;
  pc->max_read_bytes = max_read;
  pc->page_checksum = pc->payload[28];
  if (pc->page_checksum != PC_CHECKSUM_CRC32 && pc->page_checksum != PC_CHECKSUM_CRC32C) pc_fail("the server's INFO names no page checksum this client knows");
  if (pc->image_bytes != image_bytes) pc_fail("the server's image is not the size of the toucher's memory");
  if (page_bytes != PAGE || max_read < PAGE || max_read % PAGE) pc_fail("the server's pages are not 4 KiB, or its READ limit is not whole pages");
}

// READ [offset, +length) at demand priority and wait for its CHECKED_PAGES (one
// READ in flight: the naive client). Returns the checked data, valid until the next call.
static const uint8_t *pc_read(page_client_t *pc, uint64_t offset, uint32_t length) {
  uint32_t page_count = length / PAGE;
  uint32_t data_start = PC_PAGES_HEADER_BYTES + 4 * page_count;
  if (length > pc->max_read_bytes || data_start + length > PC_MAX_PAYLOAD_BYTES) pc_fail("a READ longer than the server takes");
  uint8_t read[PC_READ_BYTES] = {0};
  memcpy(read, &offset, 8);
  memcpy(read + 8, &length, 4);
  uint32_t id = pc->next_id++;
  if (pc->next_id == 0) pc->next_id = 1;
  pc_send(pc, PC_READ, id, read, sizeof read);
  pc_header_t h = pc_receive(pc);
  uint64_t got_offset;
  uint32_t got_length, got_count;
  memcpy(&got_offset, pc->payload, 8);
  memcpy(&got_length, pc->payload + 8, 4);
  memcpy(&got_count, pc->payload + 12, 4);
  if (h.type != PC_CHECKED_PAGES || h.request_id != id) pc_fail("a READ was answered with something other than its CHECKED_PAGES");
  if (h.payload_length != data_start + length || got_offset != offset || got_length != length || got_count != page_count) pc_fail("a CHECKED_PAGES reply for another range than the READ's");
  const uint8_t *data = pc->payload + data_start;
  for (uint32_t i = 0; i < page_count; i++) {
    uint32_t expected;
    memcpy(&expected, pc->payload + PC_PAGES_HEADER_BYTES + 4 * i, 4);
    uint32_t actual = pc->page_checksum == PC_CHECKSUM_CRC32C ? pc_crc32c(data + (size_t)i * PAGE, PAGE) : pc_crc32(data + (size_t)i * PAGE, PAGE);
    if (actual != expected) pc_fail("a page that does not match its snapshot's checksum");
  }
  pc->reads++;
  return data;
}

#endif
