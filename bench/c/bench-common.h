// Shared by the bench's C programs (toucher, ref-handler, delay-server).
// bench/image.ts computes the same page tag in TypeScript: keep them in step.
#ifndef BENCH_COMMON_H
#define BENCH_COMMON_H
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#define PAGE 4096u

// The first 8 bytes of image page `index` (little-endian u64): never zero, so
// the snapshot stores every page and a wrong page or a zero fill is caught.
static inline uint64_t page_tag(uint64_t index) {
  return ((index + 1) * 0x9E3779B97F4A7C15ull) | 1;
}

static inline uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static inline void cpu_relax(void) { __builtin_ia32_pause(); }

static inline void die(const char *what) {
  fprintf(stderr, "%s: %s\n", what, strerror(errno));
  exit(2);
}

// One message of `length` bytes with `fd` attached (SCM_RIGHTS): what sendmsg returns.
static inline ssize_t send_with_fd(int sock, const void *bytes, size_t length, int fd) {
  struct iovec iov = {.iov_base = (void *)bytes, .iov_len = length};
  char control[CMSG_SPACE(sizeof(int))];
  memset(control, 0, sizeof control);
  struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control, .msg_controllen = sizeof control};
  struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg);
  cmsg->cmsg_level = SOL_SOCKET;
  cmsg->cmsg_type = SCM_RIGHTS;
  cmsg->cmsg_len = CMSG_LEN(sizeof(int));
  memcpy(CMSG_DATA(cmsg), &fd, sizeof(int));
  return sendmsg(sock, &msg, MSG_NOSIGNAL);
}

// One message into `buffer` and the fd attached to it (close-on-exec): the fd, or -1 if none came;
// *received is what recvmsg returned.
static inline int receive_with_fd(int sock, void *buffer, size_t capacity, ssize_t *received) {
  struct iovec iov = {.iov_base = buffer, .iov_len = capacity};
  char control[CMSG_SPACE(sizeof(int))];
  struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control, .msg_controllen = sizeof control};
  *received = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
  if (*received <= 0) return -1;
  struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg);
  if (!cmsg || cmsg->cmsg_type != SCM_RIGHTS) return -1;
  int fd;
  memcpy(&fd, CMSG_DATA(cmsg), sizeof fd);
  return fd;
}

static inline void pin_to_cpu(int cpu) {
  if (cpu < 0) return;
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  if (sched_setaffinity(0, sizeof set, &set) < 0) die("sched_setaffinity");
}

// Adaptive read-ahead, the same rules as src/pager/readahead.ts: a fault that
// continues one of the last 8 streams doubles that stream's window (up to
// max); any other fault starts a stream at the initial window. A fault that
// continues a stream already at max is "at full speed": the handler fetches
// the window after it too, behind the faulting one (src/pager/pager.ts:
// readAheadOfStream).
#define RA_STREAMS 8
typedef struct {
  int64_t next_page, window_pages;
  uint64_t last_use;
} ra_stream_t;
typedef struct {
  int64_t initial_pages, max_pages;
  ra_stream_t streams[RA_STREAMS];
  int count;
  uint64_t clock;
  int full_speed; // the last ra_window_for continued a stream at max
} readahead_t;

static inline void ra_init(readahead_t *ra, int64_t initial_pages, int64_t max_pages) {
  memset(ra, 0, sizeof *ra);
  ra->initial_pages = initial_pages < 1 ? 1 : initial_pages;
  ra->max_pages = max_pages < ra->initial_pages ? ra->initial_pages : max_pages;
}

static inline int64_t ra_window_for(readahead_t *ra, int64_t page) {
  ra->clock++;
  ra_stream_t *s = NULL;
  for (int i = 0; i < ra->count; i++) {
    ra_stream_t *c = &ra->streams[i];
    if (page >= c->next_page - c->window_pages && page <= c->next_page + c->window_pages) {
      s = c;
      break;
    }
  }
  int continued = s != NULL;
  if (s) {
    s->window_pages = s->window_pages * 2 > ra->max_pages ? ra->max_pages : s->window_pages * 2;
  } else {
    if (ra->count < RA_STREAMS) {
      s = &ra->streams[ra->count++];
    } else {
      s = &ra->streams[0];
      for (int i = 1; i < RA_STREAMS; i++)
        if (ra->streams[i].last_use < s->last_use) s = &ra->streams[i];
    }
    s->window_pages = ra->initial_pages;
  }
  s->next_page = page + s->window_pages;
  s->last_use = ra->clock;
  ra->full_speed = continued && ra->max_pages > 1 && s->window_pages == ra->max_pages;
  return s->window_pages;
}

#endif
