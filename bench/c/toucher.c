// The faulting side of every bench run, the same for every handler: maps the
// memory one of four ways, touches pages in a given order from 1..N threads,
// and prints one JSON line with the times.
//
//   toucher --memory uffd|private|eager|installed|memfd-minor --size BYTES --order FILE
//           [--socket PATH]              uffd: hand the uffd to the handler listening there
//           [--file PATH --file-offset N] private/eager/installed: the image file and where the image starts
//           [--access load|store] [--threads N] [--cpu N] [--latency]
//           [--handshake bench|firecracker|page-cache] uffd, memfd-minor: how the memory, its uffd and layout travel
//
// uffd: anonymous memory registered MISSING; the uffd and [address, length]
// go to the handler over a Unix socket (SCM_RIGHTS), which answers one byte
// when it serves. The toucher closes the socket when done: the handler's cue
// to report and exit. With --handshake firecracker it speaks Firecracker's
// protocol instead (what `userfault serve` takes, docs/handler.md): one
// sendmsg of the JSON region list with the uffd, no answer waited for (the
// protocol has none: the first touch simply sleeps until the handler serves),
// and the toucher keeps its own uffd reference, as Firecracker does. private: MAP_PRIVATE of the file (the kernel's own
// demand paging; loads map page-cache pages, stores copy them). eager: read
// the whole file into anonymous memory first (counted in the total).
// installed: every page of the file put in place with UFFDIO_COPY by the
// toucher itself before the first touch (counted in the total, as eager):
// the touches alone are the floor under any restore's time on this machine.
// memfd-minor: the handler's memfd mapped MAP_PRIVATE, registered MISSING and
// MINOR: the bench's handover sends it first (ref-handler, the bench's
// pager); --handshake page-cache asks `userfault serve --page-cache` for it
// ({"page_cache": true}, answered with a JSON line and the memfd), then
// speaks Firecracker's protocol.
//
// The order file is u32 little-endian page indices; thread t of N touches the
// t-th contiguous slice. Every touch checks the page's tag (bench-common.h).
#include "bench-common.h"

#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <pthread.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

typedef struct {
  const uint32_t *order;
  size_t count;
  uint32_t *latency_ns; // NULL unless --latency
  uint64_t start_ns, end_ns;
  uint64_t mismatches;
} slice_t;

static uint8_t *base;
static int store_access;
static int pin_cpu = -1;
static pthread_barrier_t start_barrier;

static void *touch_slice(void *arg) {
  slice_t *s = arg;
  pin_to_cpu(pin_cpu);
  pthread_barrier_wait(&start_barrier);
  s->start_ns = now_ns();
  uint64_t bad = 0;
  for (size_t i = 0; i < s->count; i++) {
    uint64_t index = s->order[i];
    volatile uint8_t *page = base + index * PAGE;
    uint64_t before = s->latency_ns ? now_ns() : 0;
    if (store_access) page[8] = 0x5a;
    else (void)*(volatile uint64_t *)page;
    if (s->latency_ns) s->latency_ns[i] = (uint32_t)(now_ns() - before);
    // The tag is read outside the timed touch (the page is present by now).
    if (*(volatile uint64_t *)page != page_tag(index)) {
      if (bad < 8) fprintf(stderr, "toucher: page %llu holds %llx, not %llx (touch %zu)\n", (unsigned long long)index, (unsigned long long)*(volatile uint64_t *)page, (unsigned long long)page_tag(index), i);
      bad++;
    }
  }
  s->end_ns = now_ns();
  s->mismatches = bad;
  return NULL;
}

static int cmp_u32(const void *a, const void *b) {
  uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
  return x < y ? -1 : x > y;
}

static uint32_t *read_order(const char *path, size_t *count) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) die("open order");
  struct stat st;
  if (fstat(fd, &st) < 0) die("fstat order");
  uint32_t *order = malloc(st.st_size ? st.st_size : 4);
  size_t done = 0;
  while (done < (size_t)st.st_size) {
    ssize_t n = read(fd, (uint8_t *)order + done, st.st_size - done);
    if (n <= 0) die("read order");
    done += n;
  }
  close(fd);
  *count = st.st_size / 4;
  return order;
}

static void pread_all(int fd, uint8_t *into, size_t length, off_t offset) {
  size_t done = 0;
  while (done < length) {
    ssize_t n = pread(fd, into + done, length - done, offset + done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) die("pread image");
    done += n;
  }
}

static int connect_handler(const char *socket_path) {
  int sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (sock < 0) die("socket");
  struct sockaddr_un addr = {.sun_family = AF_UNIX};
  strncpy(addr.sun_path, socket_path, sizeof addr.sun_path - 1);
  if (connect(sock, (struct sockaddr *)&addr, sizeof addr) < 0) die("connect handler");
  return sock;
}

// Hand the uffd to the handler on `sock` and wait for its "serving" byte.
static void hand_over_on(int sock, int uffd, uint64_t address, uint64_t length) {
  uint64_t region[2] = {address, length};
  if (send_with_fd(sock, region, sizeof region, uffd) != (ssize_t)sizeof region) die("sendmsg uffd");
  char ack;
  if (read(sock, &ack, 1) != 1) die("read handler ack");
}

static int hand_over(const char *socket_path, int uffd, uint64_t address, uint64_t length) {
  int sock = connect_handler(socket_path);
  hand_over_on(sock, uffd, address, length);
  return sock;
}

// memfd-minor: the handler's memfd (the snapshot's pages, filled by it), received first.
static int receive_memfd(int sock) {
  char byte;
  ssize_t received;
  int fd = receive_with_fd(sock, &byte, 1, &received);
  if (received != 1) die("recvmsg memfd");
  if (fd < 0) { fprintf(stderr, "toucher: no memfd received\n"); exit(2); }
  return fd;
}

// Firecracker's handshake (GuestRegionUffdMapping in its persist.rs, 1.8 and
// later: page_size and the deprecated page_size_kib, both in bytes), the JSON
// and the uffd in one message, nothing read back.
static void send_regions(int sock, int uffd, uint64_t address, uint64_t length) {
  char json[256];
  int n = snprintf(json, sizeof json, "[{\"base_host_virt_addr\":%llu,\"size\":%llu,\"offset\":0,\"page_size\":%u,\"page_size_kib\":%u}]",
                   (unsigned long long)address, (unsigned long long)length, PAGE, PAGE);
  if (send_with_fd(sock, json, (size_t)n, uffd) != n) die("sendmsg regions and uffd");
}

static int hand_over_firecracker(const char *socket_path, int uffd, uint64_t address, uint64_t length) {
  int sock = connect_handler(socket_path);
  send_regions(sock, uffd, address, length);
  return sock;
}

// `userfault serve --page-cache`'s request (docs/handler.md): the answer is one
// JSON line with the sealed memfd on it.
static int ask_page_cache(int sock) {
  const char request[] = "{\"page_cache\": true}";
  if (write(sock, request, sizeof request - 1) != (ssize_t)(sizeof request - 1)) die("send page-cache request");
  char line[256];
  size_t used = 0;
  int fd = -1;
  while (used == 0 || line[used - 1] != '\n') {
    ssize_t received;
    int got = receive_with_fd(sock, line + used, sizeof line - 1 - used, &received);
    if (received <= 0) { fprintf(stderr, "toucher: the handler refused the page-cache request\n"); exit(2); }
    if (got >= 0) fd = got;
    used += (size_t)received;
    if (used >= sizeof line - 1) { fprintf(stderr, "toucher: page-cache answer too long\n"); exit(2); }
  }
  if (fd < 0) { fprintf(stderr, "toucher: the page-cache answer came without a memfd\n"); exit(2); }
  return fd;
}

int main(int argc, char **argv) {
  const char *memory = NULL, *order_path = NULL, *socket_path = NULL, *file_path = NULL;
  uint64_t size = 0;
  off_t file_offset = 0;
  int threads = 1, latency = 0, firecracker = 0, page_cache = 0;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : "";
    if (!strcmp(a, "--memory")) memory = v, i++;
    else if (!strcmp(a, "--size")) size = strtoull(v, NULL, 0), i++;
    else if (!strcmp(a, "--order")) order_path = v, i++;
    else if (!strcmp(a, "--socket")) socket_path = v, i++;
    else if (!strcmp(a, "--file")) file_path = v, i++;
    else if (!strcmp(a, "--file-offset")) file_offset = strtoll(v, NULL, 0), i++;
    else if (!strcmp(a, "--access")) store_access = !strcmp(v, "store"), i++;
    else if (!strcmp(a, "--threads")) threads = atoi(v), i++;
    else if (!strcmp(a, "--cpu")) pin_cpu = atoi(v), i++;
    else if (!strcmp(a, "--latency")) latency = 1;
    else if (!strcmp(a, "--handshake")) firecracker = !strcmp(v, "firecracker"), page_cache = !strcmp(v, "page-cache"), i++;
    else { fprintf(stderr, "toucher: unknown argument %s\n", a); return 2; }
  }
  if (!memory || !order_path || size == 0 || size % PAGE || threads < 1) {
    fprintf(stderr, "toucher: --memory, --order and a page-multiple --size are required\n");
    return 2;
  }
  size_t count;
  uint32_t *order = read_order(order_path, &count);
  for (size_t i = 0; i < count; i++)
    if ((uint64_t)order[i] * PAGE >= size) { fprintf(stderr, "toucher: page %u is outside the memory\n", order[i]); return 2; }

  uint64_t setup_start = now_ns(), eager_ns = 0;
  int sock = -1;
  if (!strcmp(memory, "uffd")) {
    base = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (base == MAP_FAILED) die("mmap anonymous");
    int uffd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
    if (uffd < 0) die("userfaultfd");
    struct uffdio_api api = {.api = UFFD_API, .features = 0};
    if (ioctl(uffd, UFFDIO_API, &api) < 0) die("UFFDIO_API");
    struct uffdio_register reg = {.range = {.start = (uint64_t)(uintptr_t)base, .len = size}, .mode = UFFDIO_REGISTER_MODE_MISSING};
    if (ioctl(uffd, UFFDIO_REGISTER, &reg) < 0) die("UFFDIO_REGISTER");
    if (!socket_path) { fprintf(stderr, "toucher: --memory uffd needs --socket\n"); return 2; }
    if (firecracker) {
      sock = hand_over_firecracker(socket_path, uffd, (uint64_t)(uintptr_t)base, size);
    } else {
      sock = hand_over(socket_path, uffd, (uint64_t)(uintptr_t)base, size);
      close(uffd); // the handler's reference keeps the registration alive
    }
  } else if (!strcmp(memory, "memfd-minor")) {
    // The handler's memfd mapped MAP_PRIVATE: faults on it are MISSING (not in
    // its page cache yet) or MINOR (in it, not mapped here), both answered with
    // UFFDIO_CONTINUE (or a copy, for a store); a store never reaches the memfd.
    if (!socket_path) { fprintf(stderr, "toucher: --memory memfd-minor needs --socket\n"); return 2; }
    sock = connect_handler(socket_path);
    int memfd = page_cache ? ask_page_cache(sock) : receive_memfd(sock);
    base = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_NORESERVE, memfd, 0);
    if (base == MAP_FAILED) die("mmap memfd");
    close(memfd);
    int uffd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
    if (uffd < 0) die("userfaultfd");
    struct uffdio_api api = {.api = UFFD_API, .features = UFFD_FEATURE_MINOR_SHMEM};
    if (ioctl(uffd, UFFDIO_API, &api) < 0) die("UFFDIO_API (MINOR_SHMEM)");
    struct uffdio_register reg = {.range = {.start = (uint64_t)(uintptr_t)base, .len = size}, .mode = UFFDIO_REGISTER_MODE_MISSING | UFFDIO_REGISTER_MODE_MINOR};
    if (ioctl(uffd, UFFDIO_REGISTER, &reg) < 0) die("UFFDIO_REGISTER (MISSING|MINOR)");
    if (page_cache) {
      send_regions(sock, uffd, (uint64_t)(uintptr_t)base, size); // Firecracker's way: no answer, and the toucher keeps its uffd
    } else {
      hand_over_on(sock, uffd, (uint64_t)(uintptr_t)base, size);
      close(uffd);
    }
  } else {
    if (!file_path) { fprintf(stderr, "toucher: --memory %s needs --file\n", memory); return 2; }
    int fd = open(file_path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) die("open image");
    if (!strcmp(memory, "private")) {
      base = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, file_offset);
      if (base == MAP_FAILED) die("mmap file");
    } else if (!strcmp(memory, "eager")) {
      uint64_t t0 = now_ns();
      base = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
      if (base == MAP_FAILED) die("mmap anonymous");
      pread_all(fd, base, size, file_offset);
      eager_ns = now_ns() - t0;
    } else if (!strcmp(memory, "installed")) {
      // Every page put in place by UFFDIO_COPY, as a handler would, before the
      // first touch: what is left to time is a first touch of a page already
      // in the page table, which no restore can avoid (on this VM, whose
      // memory is shadow-paged, several µs a page).
      uint64_t t0 = now_ns();
      base = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
      if (base == MAP_FAILED) die("mmap anonymous");
      int uffd = (int)syscall(SYS_userfaultfd, O_CLOEXEC);
      if (uffd < 0) die("userfaultfd");
      struct uffdio_api api = {.api = UFFD_API, .features = 0};
      if (ioctl(uffd, UFFDIO_API, &api) < 0) die("UFFDIO_API");
      struct uffdio_register reg = {.range = {.start = (uint64_t)(uintptr_t)base, .len = size}, .mode = UFFDIO_REGISTER_MODE_MISSING};
      if (ioctl(uffd, UFFDIO_REGISTER, &reg) < 0) die("UFFDIO_REGISTER");
      const size_t chunk = 2u << 20;
      uint8_t *buffer = malloc(chunk);
      if (!buffer) die("malloc");
      for (size_t at = 0; at < size; at += chunk) {
        size_t n = size - at < chunk ? size - at : chunk;
        pread_all(fd, buffer, n, file_offset + at);
        struct uffdio_copy copy = {.dst = (uint64_t)(uintptr_t)(base + at), .src = (uint64_t)(uintptr_t)buffer, .len = n, .mode = 0};
        if (ioctl(uffd, UFFDIO_COPY, &copy) < 0) die("UFFDIO_COPY");
      }
      free(buffer);
      close(uffd);
      eager_ns = now_ns() - t0;
    } else {
      fprintf(stderr, "toucher: unknown memory %s\n", memory);
      return 2;
    }
    close(fd);
  }
  uint64_t setup_ns = now_ns() - setup_start - eager_ns;

  slice_t *slices = calloc(threads, sizeof *slices);
  pthread_t *tids = calloc(threads, sizeof *tids);
  pthread_barrier_init(&start_barrier, NULL, threads + 1);
  for (int t = 0; t < threads; t++) {
    size_t from = count * t / threads, to = count * (t + 1) / threads;
    slices[t].order = order + from;
    slices[t].count = to - from;
    if (latency) slices[t].latency_ns = calloc(to - from + 1, sizeof(uint32_t));
    if (pthread_create(&tids[t], NULL, touch_slice, &slices[t]) != 0) die("pthread_create");
  }
  pthread_barrier_wait(&start_barrier);
  for (int t = 0; t < threads; t++) pthread_join(tids[t], NULL);
  if (sock >= 0) close(sock);
  // From the first thread's first touch to the last thread's last: the main
  // thread may well run only after the touching is over.
  uint64_t first = UINT64_MAX, last = 0;
  for (int t = 0; t < threads; t++) {
    if (slices[t].start_ns < first) first = slices[t].start_ns;
    if (slices[t].end_ns > last) last = slices[t].end_ns;
  }
  uint64_t touch_ns = last - first;

  uint64_t mismatches = 0;
  for (int t = 0; t < threads; t++) mismatches += slices[t].mismatches;
  printf("{\"touches\":%zu,\"threads\":%d,\"touchNs\":%llu,\"eagerReadNs\":%llu,\"totalNs\":%llu,\"setupNs\":%llu,\"mismatches\":%llu,\"threadNs\":[",
         count, threads, (unsigned long long)touch_ns, (unsigned long long)eager_ns,
         (unsigned long long)(touch_ns + eager_ns), (unsigned long long)setup_ns, (unsigned long long)mismatches);
  for (int t = 0; t < threads; t++) printf("%s%llu", t ? "," : "", (unsigned long long)(slices[t].end_ns - slices[t].start_ns));
  printf("]");
  if (latency && count > 0) {
    uint32_t *all = malloc(count * sizeof(uint32_t));
    size_t k = 0;
    uint64_t sum = 0;
    for (int t = 0; t < threads; t++)
      for (size_t i = 0; i < slices[t].count; i++) sum += all[k++] = slices[t].latency_ns[i];
    qsort(all, count, sizeof(uint32_t), cmp_u32);
#define PCT(p) all[(size_t)((double)(count - 1) * (p))]
    // first: the first thread's first touch (with a handler that starts serving after the handover: its start-up).
    printf(",\"latencyNs\":{\"p50\":%u,\"p90\":%u,\"p99\":%u,\"max\":%u,\"mean\":%.1f,\"first\":%u}", PCT(0.50), PCT(0.90), PCT(0.99),
           all[count - 1], (double)sum / count, slices[0].count ? slices[0].latency_ns[0] : 0);
  }
  printf("}\n");
  fflush(stdout);
  return mismatches ? 3 : 0;
}
