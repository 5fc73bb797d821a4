// The wire itself: one TCP stream over loopback, a C sender and a C receiver
// (two processes), 1 MiB writes and reads, nothing checked or copied beyond
// what the kernel does. What every network figure of the bench is read
// against: the most one connection of this machine carries.
//
//   wire BYTES  ->  {"bytes":N,"ms":T,"senderCpuMs":S,"receiverCpuMs":R}
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define CHUNK (1 << 20)

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static double cpu_ms(int who) {
  struct rusage ru;
  getrusage(who, &ru);
  return (ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1e3 + (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e3;
}

static void die(const char *what) {
  perror(what);
  exit(1);
}

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: wire BYTES\n");
    return 64;
  }
  long long total = atoll(argv[1]);
  int listener = socket(AF_INET, SOCK_STREAM, 0);
  if (listener < 0) die("socket");
  struct sockaddr_in addr = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t len = sizeof addr;
  if (bind(listener, (struct sockaddr *)&addr, sizeof addr) || listen(listener, 1) || getsockname(listener, (struct sockaddr *)&addr, &len)) die("listen");
  pid_t sender = fork();
  if (sender < 0) die("fork");
  if (sender == 0) {
    int fd = accept(listener, NULL, NULL);
    if (fd < 0) die("accept");
    char *buf = malloc(CHUNK);
    memset(buf, 0x5a, CHUNK);
    for (long long sent = 0; sent < total;) {
      ssize_t n = write(fd, buf, total - sent < CHUNK ? (size_t)(total - sent) : CHUNK);
      if (n <= 0) die("write");
      sent += n;
    }
    close(fd);
    _exit(0);
  }
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0 || connect(fd, (struct sockaddr *)&addr, sizeof addr)) die("connect");
  char *buf = malloc(CHUNK);
  double start = 0, cpu_start = cpu_ms(RUSAGE_SELF);
  long long received = 0;
  while (received < total) {
    ssize_t n = read(fd, buf, CHUNK);
    if (n <= 0) die("read");
    if (received == 0) start = now_ms();
    received += n;
  }
  double ms = now_ms() - start;
  double receiver_cpu = cpu_ms(RUSAGE_SELF) - cpu_start;
  int status;
  waitpid(sender, &status, 0);
  printf("{\"bytes\":%lld,\"ms\":%.3f,\"senderCpuMs\":%.3f,\"receiverCpuMs\":%.3f}\n", received, ms, cpu_ms(RUSAGE_CHILDREN), receiver_cpu);
  return 0;
}
