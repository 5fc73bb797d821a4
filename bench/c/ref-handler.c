// The C reference handler: one pthread (the main one) that waits on the uffd,
// reads fault messages in batches and answers each with UFFDIO_COPY. It is
// what the pager is measured against, so it stays minimal and does no more
// than the pager promises: the same adaptive read-ahead (bench-common.h), a
// window that stops at the first page already filled, one COPY per window.
//
//   ref-handler --socket PATH --size BYTES
//               --source memory|pread|mmap|delay|remote|memfd|memfd-filled --image FILE [--image-offset N]
//               [--delay-socket PATH]        delay: ask the delay server before each fetch
//               [--server HOST:PORT]         remote: the page server to READ from
//               [--session HEX32]            remote: the HELLO's session id (default zeros)
//               [--prefetch INITIAL,MAX]     read-ahead window in pages (default 1,1: none)
//               [--spin-us N]                busy-poll the uffd this long before sleeping in poll
//               [--ahead-pages N]            async read-ahead: once a stream's window is at its
//                                            maximum, fill up to N pages past it while idle
//               [--cpu N]
//
// memory: the image is read into memory at start and COPY takes pages straight
// from it. pread: each window is pread from the file into a buffer, then
// copied. mmap: COPY takes pages straight from a shared mapping of the file
// (one copy, page cache to the new page, instead of pread's two). delay: like memory, after a round trip to the delay server (the
// "naive" handler: one fetch at a time, however slow the source). remote: each
// window is one READ to a page server (page-client.h: the real protocol, every
// reply CRC-checked), one at a time, and COPY takes the pages from the reply.
//
// memfd (toucher --memory memfd-minor): the handler sends the toucher a memfd
// first, which the toucher maps MAP_PRIVATE and registers MISSING and MINOR;
// each window is put in the memfd's page cache (one copy from the file, where
// not there yet) and mapped with UFFDIO_CONTINUE (no copy); memfd-filled
// starts with every page in it (a later restore of a snapshot an earlier one
// filled). At the end it counts memfd pages the toucher's stores reached
// (sharedPagesWritten: must be 0).
//
// Prints "listening" when ready for the toucher, and one JSON line of counts
// when the toucher hangs up.
#include "bench-common.h"
#include "page-client.h"

#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

enum source_kind { SOURCE_MEMORY, SOURCE_PREAD, SOURCE_MMAP, SOURCE_DELAY, SOURCE_REMOTE, SOURCE_MEMFD };

static struct {
  uint64_t faults, messages, reads, batches, copy_ioctls, pages_copied, wakes, eexist, eagain;
  uint64_t sleeps, spin_hits, ahead_pages;
  uint64_t pages_filled, shared_pages_written;
} stats;

static int uffd, image_fd = -1, delay_sock = -1;
static enum source_kind source_kind = SOURCE_MEMORY;
static uint8_t *image, *scratch, *filled;
static uint64_t base, size_bytes, page_count;
static off_t image_offset;
static readahead_t ra;
static uint64_t ahead_budget, ahead_next, ahead_limit;
static page_client_t remote;
// memfd: the snapshot's pages in a memfd's page cache, shared (MAP_SHARED here,
// MAP_PRIVATE in the toucher); cached[p]: page p is in it.
static int memfd = -1;
static uint8_t *memfd_map, *cached;

static int listen_on(const char *path) {
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) die("socket");
  struct sockaddr_un addr = {.sun_family = AF_UNIX};
  strncpy(addr.sun_path, path, sizeof addr.sun_path - 1);
  unlink(path);
  if (bind(fd, (struct sockaddr *)&addr, sizeof addr) < 0) die("bind");
  if (listen(fd, 1) < 0) die("listen");
  return fd;
}

static int connect_to(const char *path) {
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) die("socket");
  struct sockaddr_un addr = {.sun_family = AF_UNIX};
  strncpy(addr.sun_path, path, sizeof addr.sun_path - 1);
  if (connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0) die("connect delay server");
  return fd;
}

// The toucher's uffd and region: the bench's own [address, length] (answered
// with one byte), or Firecracker's JSON region list (toucher --handshake
// firecracker; nothing answered). Returns whether to answer.
static int receive_uffd(int sock) {
  char buffer[1024];
  ssize_t n;
  uffd = receive_with_fd(sock, buffer, sizeof buffer - 1, &n);
  if (n <= 0) die("recvmsg uffd");
  if (uffd < 0) { fprintf(stderr, "ref-handler: no uffd received\n"); exit(2); }
  uint64_t length;
  int answer = buffer[0] != '[';
  if (answer) {
    uint64_t region[2];
    if (n != (ssize_t)sizeof region) { fprintf(stderr, "ref-handler: a %zd-byte handover\n", n); exit(2); }
    memcpy(region, buffer, sizeof region);
    base = region[0];
    length = region[1];
  } else {
    // One region, sent in one message (the toucher's): enough of JSON for the bench.
    buffer[n] = 0;
    const char *at = strstr(buffer, "\"base_host_virt_addr\":"), *len = strstr(buffer, "\"size\":");
    if (!at || !len) { fprintf(stderr, "ref-handler: cannot read the region list %s\n", buffer); exit(2); }
    base = strtoull(at + strlen("\"base_host_virt_addr\":"), NULL, 10);
    length = strtoull(len + strlen("\"size\":"), NULL, 10);
  }
  if (length != size_bytes) { fprintf(stderr, "ref-handler: region of %llu bytes, expected %llu\n", (unsigned long long)length, (unsigned long long)size_bytes); exit(2); }
  int flags = fcntl(uffd, F_GETFL);
  fcntl(uffd, F_SETFL, flags | O_NONBLOCK);
  return answer;
}

// Blocking round trip to the delay server (8-byte id out, the same 8 bytes back).
static void delay_round_trip(uint64_t id) {
  if (write(delay_sock, &id, sizeof id) != sizeof id) die("write delay server");
  uint64_t back;
  size_t got = 0;
  while (got < sizeof back) {
    ssize_t n = read(delay_sock, (uint8_t *)&back + got, sizeof back - got);
    if (n <= 0) die("read delay server");
    got += n;
  }
}

static void wake_page(uint64_t page) {
  struct uffdio_range range = {.start = base + page * PAGE, .len = PAGE};
  if (ioctl(uffd, UFFDIO_WAKE, &range) < 0) die("UFFDIO_WAKE");
  stats.wakes++;
}

static void fill_memfd(uint64_t page, uint64_t count);

// One install ioctl for `count` pages from `page` (src: their bytes, for a
// COPY): the bytes it did (it may stop part way), rc and errno as the ioctl left them.
typedef int64_t (*install_fn)(uint64_t page, uint64_t count, const uint8_t *src, int *rc);

static int64_t copy_pages(uint64_t page, uint64_t count, const uint8_t *src, int *rc) {
  struct uffdio_copy copy = {.dst = base + page * PAGE, .src = (uint64_t)(uintptr_t)src, .len = count * PAGE, .mode = 0};
  *rc = ioctl(uffd, UFFDIO_COPY, &copy);
  return copy.copy;
}

static int64_t continue_pages(uint64_t page, uint64_t count, const uint8_t *src, int *rc) {
  (void)src;
  struct uffdio_continue cont = {.range = {.start = base + page * PAGE, .len = count * PAGE}, .mode = 0};
  *rc = ioctl(uffd, UFFDIO_CONTINUE, &cont);
  return cont.mapped;
}

// Install [page, page+count) with `install`, as the pager does: partial
// progress goes on from where it stopped, a page already there (EEXIST) is
// marked and its waiters woken, EAGAIN is tried again.
static void install_run(uint64_t page, uint64_t count, const uint8_t *src, install_fn install, const char *what) {
  uint64_t done = 0;
  while (done < count) {
    stats.copy_ioctls++;
    int rc;
    int64_t bytes = install(page + done, count - done, src ? src + done * PAGE : NULL, &rc);
    if (bytes > 0) {
      uint64_t pages = (uint64_t)bytes / PAGE;
      for (uint64_t k = 0; k < pages; k++) filled[page + done + k] = 1;
      stats.pages_copied += pages;
      done += pages;
      continue;
    }
    if (rc < 0 && errno == EEXIST) {
      stats.eexist++;
      filled[page + done] = 1;
      wake_page(page + done);
      done++;
      continue;
    }
    if (rc < 0 && errno == EAGAIN) { stats.eagain++; continue; }
    die(what);
  }
}

// COPY pages [page, page+count) from the source.
static void fill(uint64_t page, uint64_t count) {
  const uint8_t *src;
  if (source_kind == SOURCE_REMOTE && count * PAGE > remote.max_read_bytes) {
    // Longer than the server's READ limit: one READ per part.
    uint64_t part = remote.max_read_bytes / PAGE;
    for (uint64_t done = 0; done < count; done += part) fill(page + done, count - done < part ? count - done : part);
    return;
  }
  if (source_kind == SOURCE_MEMFD) {
    fill_memfd(page, count);
    return;
  }
  stats.reads++;
  switch (source_kind) {
    case SOURCE_PREAD: {
      size_t done = 0, want = count * PAGE;
      while (done < want) {
        ssize_t n = pread(image_fd, scratch + done, want - done, image_offset + page * PAGE + done);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) die("pread");
        done += n;
      }
      src = scratch;
      break;
    }
    case SOURCE_DELAY:
      delay_round_trip(page);
      src = image + page * PAGE;
      break;
    case SOURCE_REMOTE:
      src = pc_read(&remote, page * PAGE, (uint32_t)(count * PAGE));
      break;
    default:
      src = image + page * PAGE;
  }
  install_run(page, count, src, copy_pages, "UFFDIO_COPY");
}

// memfd: put the pages in the memfd's page cache (one copy, from the file)
// where they are not yet, then map them into the toucher with UFFDIO_CONTINUE
// (no copy).
static void fill_memfd(uint64_t page, uint64_t count) {
  for (uint64_t k = 0; k < count; k++) {
    if (cached[page + k]) continue;
    uint64_t run = 1;
    while (k + run < count && !cached[page + k + run]) run++;
    stats.reads++;
    size_t done = 0, want = run * PAGE;
    while (done < want) {
      ssize_t n = pread(image_fd, memfd_map + (page + k) * PAGE + done, want - done, image_offset + (page + k) * PAGE + done);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) die("pread into memfd");
      done += n;
    }
    for (uint64_t j = 0; j < run; j++) cached[page + k + j] = 1;
    stats.pages_filled += run;
    k += run - 1;
  }
  install_run(page, count, NULL, continue_pages, "UFFDIO_CONTINUE");
}

static void fill_memfd_all(void) {
  for (uint64_t done = 0; done < size_bytes;) {
    ssize_t n = pread(image_fd, memfd_map + done, size_bytes - done, image_offset + done);
    if (n <= 0) die("fill memfd");
    done += n;
  }
  memset(cached, 1, page_count);
}

static void serve_fault(uint64_t address) {
  stats.faults++;
  uint64_t page = (address - base) / PAGE;
  if (address < base || page >= page_count) { fprintf(stderr, "ref-handler: fault outside the region\n"); exit(2); }
  if (filled[page]) {
    // A fault read after an earlier window of this batch filled its page.
    wake_page(page);
    return;
  }
  int64_t window = ra_window_for(&ra, (int64_t)page);
  uint64_t count = 1;
  while ((int64_t)count < window && page + count < page_count && !filled[page + count]) count++;
  fill(page, count);
  if (ra.full_speed && (int64_t)count == window) {
    // The window after this one, as the pager does for a stream at full speed (bench-common.h).
    uint64_t next = page + count, more = 0;
    while ((int64_t)more < window && next + more < page_count && !filled[next + more]) more++;
    if (more > 0) fill(next, more);
    count += more;
  }
  if (ahead_budget > 0 && window == ra.max_pages) {
    if (page + count > ahead_next) ahead_next = page + count;
    ahead_limit = page + count + ahead_budget < page_count ? page + count + ahead_budget : page_count;
  }
}

// One window of async read-ahead when one is due; returns whether it did any.
static int read_ahead_step(void) {
  while (ahead_next < ahead_limit && filled[ahead_next]) ahead_next++;
  if (ahead_next >= ahead_limit) return 0;
  uint64_t count = 1;
  while ((int64_t)count < ra.max_pages && ahead_next + count < ahead_limit && !filled[ahead_next + count]) count++;
  fill(ahead_next, count);
  stats.ahead_pages += count;
  ahead_next += count;
  return 1;
}

// Read every message ready now; returns how many faults were served.
static uint64_t drain(void) {
  static struct uffd_msg msgs[64];
  uint64_t served = 0;
  for (;;) {
    ssize_t n = read(uffd, msgs, sizeof msgs);
    if (n < 0) {
      if (errno == EAGAIN) return served;
      if (errno == EINTR) continue;
      die("read uffd");
    }
    if (n == 0) return served;
    stats.batches++;
    size_t k = n / sizeof msgs[0];
    stats.messages += k;
    for (size_t i = 0; i < k; i++)
      if (msgs[i].event == UFFD_EVENT_PAGEFAULT) { serve_fault(msgs[i].arg.pagefault.address); served++; }
    if ((size_t)n < sizeof msgs) return served;
  }
}

// CPU time of this thread: schedstat's run time, user/system time, switches.
typedef struct {
  uint64_t run_ns;
  double user_ms, system_ms;
  long voluntary, involuntary;
} thread_cpu_t;

static thread_cpu_t thread_cpu_now(void) {
  thread_cpu_t t = {0};
  FILE *f = fopen("/proc/thread-self/schedstat", "r");
  if (f) {
    unsigned long long run = 0;
    if (fscanf(f, "%llu", &run) == 1) t.run_ns = run;
    fclose(f);
  }
  struct rusage ru;
  if (getrusage(RUSAGE_THREAD, &ru) == 0) {
    t.user_ms = ru.ru_utime.tv_sec * 1e3 + ru.ru_utime.tv_usec / 1e3;
    t.system_ms = ru.ru_stime.tv_sec * 1e3 + ru.ru_stime.tv_usec / 1e3;
    t.voluntary = ru.ru_nvcsw;
    t.involuntary = ru.ru_nivcsw;
  }
  return t;
}

static void send_memfd(int sock) {
  char byte = 'm';
  if (send_with_fd(sock, &byte, 1, memfd) != 1) die("sendmsg memfd");
}

static int peer_gone(int sock) {
  char byte;
  ssize_t n = recv(sock, &byte, 1, MSG_DONTWAIT);
  return n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK);
}

int main(int argc, char **argv) {
  const char *socket_path = NULL, *image_path = NULL, *delay_path = NULL, *server = NULL, *source = "memory";
  uint8_t session_id[16] = {0};
  int64_t ra_initial = 1, ra_max = 1, spin_us = 0;
  int cpu = -1;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : "";
    if (!strcmp(a, "--socket")) socket_path = v, i++;
    else if (!strcmp(a, "--size")) size_bytes = strtoull(v, NULL, 0), i++;
    else if (!strcmp(a, "--source")) source = v, i++;
    else if (!strcmp(a, "--image")) image_path = v, i++;
    else if (!strcmp(a, "--image-offset")) image_offset = strtoll(v, NULL, 0), i++;
    else if (!strcmp(a, "--delay-socket")) delay_path = v, i++;
    else if (!strcmp(a, "--server")) server = v, i++;
    else if (!strcmp(a, "--session")) {
      for (int k = 0; k < 16 && v[2 * k] && v[2 * k + 1]; k++) sscanf(v + 2 * k, "%2hhx", &session_id[k]);
      i++;
    }
    else if (!strcmp(a, "--prefetch")) { sscanf(v, "%lld,%lld", (long long *)&ra_initial, (long long *)&ra_max); i++; }
    else if (!strcmp(a, "--spin-us")) spin_us = atoll(v), i++;
    else if (!strcmp(a, "--ahead-pages")) ahead_budget = strtoull(v, NULL, 0), i++;
    else if (!strcmp(a, "--cpu")) cpu = atoi(v), i++;
    else { fprintf(stderr, "ref-handler: unknown argument %s\n", a); return 2; }
  }
  if (!socket_path || !image_path || size_bytes == 0 || size_bytes % PAGE) {
    fprintf(stderr, "ref-handler: --socket, --image and a page-multiple --size are required\n");
    return 2;
  }
  if (!strcmp(source, "pread")) source_kind = SOURCE_PREAD;
  else if (!strcmp(source, "delay")) source_kind = SOURCE_DELAY;
  else if (!strcmp(source, "mmap")) source_kind = SOURCE_MMAP;
  else if (!strcmp(source, "remote")) source_kind = SOURCE_REMOTE;
  else if (!strcmp(source, "memfd") || !strcmp(source, "memfd-filled")) source_kind = SOURCE_MEMFD;
  else if (strcmp(source, "memory")) { fprintf(stderr, "ref-handler: unknown source %s\n", source); return 2; }
  page_count = size_bytes / PAGE;
  ra_init(&ra, ra_initial, ra_max);
  filled = calloc(page_count, 1);
  scratch = malloc((size_t)ra.max_pages * PAGE);
  image_fd = open(image_path, O_RDONLY | O_CLOEXEC);
  if (image_fd < 0) die("open image");
  if (source_kind == SOURCE_MEMFD) {
    memfd = memfd_create("bench-snapshot", MFD_CLOEXEC);
    if (memfd < 0) die("memfd_create");
    if (ftruncate(memfd, (off_t)size_bytes) < 0) die("ftruncate memfd");
    memfd_map = mmap(NULL, size_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
    if (memfd_map == MAP_FAILED) die("mmap memfd");
    cached = calloc(page_count, 1);
    // memfd-filled: the pages are in already, as for a later restore of a snapshot an earlier one filled.
    if (!strcmp(source, "memfd-filled")) fill_memfd_all();
  } else if (source_kind == SOURCE_MMAP) {
    image = mmap(NULL, size_bytes, PROT_READ, MAP_SHARED, image_fd, image_offset);
    if (image == MAP_FAILED) die("mmap image file");
  } else if (source_kind == SOURCE_REMOTE) {
    if (!server) { fprintf(stderr, "ref-handler: --source remote needs --server HOST:PORT\n"); return 2; }
    pc_open(&remote, server, session_id, size_bytes);
  } else if (source_kind != SOURCE_PREAD) {
    image = mmap(NULL, size_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    if (image == MAP_FAILED) die("mmap image");
    for (uint64_t done = 0; done < size_bytes;) {
      ssize_t n = pread(image_fd, image + done, size_bytes - done, image_offset + done);
      if (n <= 0) die("read image");
      done += n;
    }
  }
  if (source_kind == SOURCE_DELAY) {
    if (!delay_path) { fprintf(stderr, "ref-handler: --source delay needs --delay-socket\n"); return 2; }
    delay_sock = connect_to(delay_path);
  }
  pin_to_cpu(cpu);
  int listener = listen_on(socket_path);
  printf("listening\n");
  fflush(stdout);
  int sock = accept4(listener, NULL, NULL, SOCK_CLOEXEC);
  if (sock < 0) die("accept");
  if (source_kind == SOURCE_MEMFD) send_memfd(sock);
  if (receive_uffd(sock) && write(sock, "s", 1) != 1) die("ack");
  thread_cpu_t cpu_start = thread_cpu_now();

  const uint64_t spin_ns = (uint64_t)spin_us * 1000;
  for (;;) {
    if (drain() > 0) continue;
    if (read_ahead_step()) continue;
    if (spin_ns > 0) {
      // Busy-poll: a fault that arrives while spinning is served without the
      // wake-up of a sleeping thread (the cross-CPU IPI and the scheduler).
      uint64_t idle_since = now_ns();
      uint64_t served;
      while ((served = drain()) == 0 && now_ns() - idle_since < spin_ns) cpu_relax();
      if (served) { stats.spin_hits += served; continue; }
    }
    struct pollfd p[2] = {{.fd = uffd, .events = POLLIN}, {.fd = sock, .events = POLLIN}};
    stats.sleeps++;
    if (poll(p, 2, -1) < 0) {
      if (errno == EINTR) continue;
      die("poll");
    }
    if (p[0].revents & POLLIN) drain();
    if ((p[1].revents & (POLLIN | POLLHUP)) && peer_gone(sock)) break;
  }
  thread_cpu_t cpu_end = thread_cpu_now();
  if (source_kind == SOURCE_MEMFD) {
    // The toucher stored 0x5a at byte 8 of its pages (copy-on-write); no image page has that byte there (bench/image.ts).
    for (uint64_t p = 0; p < page_count; p++)
      if (cached[p] && memfd_map[p * PAGE + 8] == 0x5a) stats.shared_pages_written++;
  }
  printf("{\"cpu\":{\"runNs\":%llu,\"userMs\":%.3f,\"systemMs\":%.3f,\"voluntarySwitches\":%ld,\"involuntarySwitches\":%ld},",
         (unsigned long long)(cpu_end.run_ns - cpu_start.run_ns), cpu_end.user_ms - cpu_start.user_ms, cpu_end.system_ms - cpu_start.system_ms,
         cpu_end.voluntary - cpu_start.voluntary, cpu_end.involuntary - cpu_start.involuntary);
  printf("\"faults\":%llu,\"messages\":%llu,\"batches\":%llu,\"sourceReads\":%llu,\"copyIoctls\":%llu,\"pagesCopied\":%llu,"
         "\"wakes\":%llu,\"eexist\":%llu,\"eagain\":%llu,\"sleeps\":%llu,\"spinHits\":%llu,\"aheadPages\":%llu,\"bytesReceived\":%llu,\"pagesFilled\":%llu,\"sharedPagesWritten\":%llu}\n",
         (unsigned long long)stats.faults, (unsigned long long)stats.messages, (unsigned long long)stats.batches,
         (unsigned long long)stats.reads, (unsigned long long)stats.copy_ioctls, (unsigned long long)stats.pages_copied,
         (unsigned long long)stats.wakes, (unsigned long long)stats.eexist, (unsigned long long)stats.eagain,
         (unsigned long long)stats.sleeps, (unsigned long long)stats.spin_hits, (unsigned long long)stats.ahead_pages,
         (unsigned long long)remote.bytes_received, (unsigned long long)stats.pages_filled, (unsigned long long)stats.shared_pages_written);
  return 0;
}
