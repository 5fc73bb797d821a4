// A page server with a fixed latency and no bandwidth limit: each 8-byte
// request (an id) is echoed back DELAY_US later, whatever else is pending.
// It stands in for a remote source in the concurrency bench, where what counts
// is how many fetches a handler keeps in flight.
//
//   delay-server --socket PATH --delay-us N
//
// One thread: ppoll with a nanosecond timeout (timer slack set to 1 ns) until
// the oldest request is due; requests are due in arrival order, so a FIFO is
// a timer queue. Prints "listening" when ready; runs until killed.
#include "bench-common.h"

#include <poll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define MAX_CONNS 16
#define QUEUE 65536

typedef struct {
  int conn;
  uint32_t generation; // of the connection slot, so a reused slot never gets an old reply
  uint64_t id, due_ns;
} request_t;

static request_t queue[QUEUE];
static size_t head, tail;

int main(int argc, char **argv) {
  const char *path = NULL;
  uint64_t delay_ns = 200000;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : "";
    if (!strcmp(a, "--socket")) path = v, i++;
    else if (!strcmp(a, "--delay-us")) delay_ns = strtoull(v, NULL, 0) * 1000, i++;
    else { fprintf(stderr, "delay-server: unknown argument %s\n", a); return 2; }
  }
  if (!path) { fprintf(stderr, "delay-server: --socket is required\n"); return 2; }
  prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);
  int listener = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  struct sockaddr_un addr = {.sun_family = AF_UNIX};
  strncpy(addr.sun_path, path, sizeof addr.sun_path - 1);
  unlink(path);
  if (bind(listener, (struct sockaddr *)&addr, sizeof addr) < 0) die("bind");
  if (listen(listener, MAX_CONNS) < 0) die("listen");
  printf("listening\n");
  fflush(stdout);

  struct pollfd fds[MAX_CONNS + 1];
  uint8_t partial[MAX_CONNS + 1][8];
  size_t partial_len[MAX_CONNS + 1];
  uint32_t generation[MAX_CONNS + 1] = {0};
  int nfds = 1;
  fds[0] = (struct pollfd){.fd = listener, .events = POLLIN};
  for (;;) {
    struct timespec timeout, *tp = NULL;
    if (head != tail) {
      uint64_t now = now_ns(), due = queue[head % QUEUE].due_ns;
      uint64_t wait = due > now ? due - now : 0;
      timeout = (struct timespec){.tv_sec = wait / 1000000000ull, .tv_nsec = wait % 1000000000ull};
      tp = &timeout;
    }
    if (ppoll(fds, nfds, tp, NULL) < 0 && errno != EINTR) die("ppoll");
    if (fds[0].revents & POLLIN) {
      int slot = 1;
      while (slot < nfds && fds[slot].fd >= 0) slot++;
      if (slot <= MAX_CONNS) {
        int c = accept4(listener, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
        if (c >= 0) {
          partial_len[slot] = 0;
          generation[slot]++;
          fds[slot] = (struct pollfd){.fd = c, .events = POLLIN};
          if (slot == nfds) nfds++;
        }
      }
    }
    for (int i = 1; i < nfds; i++) {
      if (!(fds[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
      uint8_t buf[4096];
      ssize_t n = read(fds[i].fd, buf, sizeof buf);
      if (n <= 0) {
        if (n < 0 && errno == EAGAIN) continue;
        close(fds[i].fd);
        fds[i].fd = -1; // ignored by ppoll; replies to it are dropped below
        continue;
      }
      uint64_t now = now_ns();
      for (ssize_t k = 0; k < n; k++) {
        partial[i][partial_len[i]++] = buf[k];
        if (partial_len[i] < 8) continue;
        partial_len[i] = 0;
        if (tail - head == QUEUE) { fprintf(stderr, "delay-server: queue full\n"); exit(2); }
        request_t *r = &queue[tail++ % QUEUE];
        r->conn = i;
        r->generation = generation[i];
        memcpy(&r->id, partial[i], 8);
        r->due_ns = now + delay_ns;
      }
    }
    uint64_t now = now_ns();
    while (head != tail && queue[head % QUEUE].due_ns <= now) {
      request_t *r = &queue[head++ % QUEUE];
      if (fds[r->conn].fd < 0 || generation[r->conn] != r->generation) continue;
      if (write(fds[r->conn].fd, &r->id, 8) != 8) die("write reply");
    }
  }
}
