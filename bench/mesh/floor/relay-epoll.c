/* The floor under any HTTP proxy on a machine: a byte relay on epoll that does no HTTP work at
 * all. Each client connection is paired with one backend connection (round-robin over the
 * backends given), and bytes are copied both ways as they come. Per request that is the four
 * socket calls every proxy makes (recv and send on each side) plus a share of epoll_wait, and
 * next to nothing in user space.
 *
 * SPIN_NS=N adds N ns of busy work after each recv (two per request): how a proxy's kernel
 * time grows with its user time on the same machine, at the same load.
 *
 * Usage: relay-epoll LISTEN_PORT BACKEND_PORT... (all on 127.0.0.1)
 * A benchmark tool, not a proxy: messages are assumed small (a send that would block is
 * retried at once), and a connection that fails is closed with its pair. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_FDS 65536
#define MAX_EVENTS 256

static int peer[MAX_FDS];
static char buf[65536];
static long spin_ns;

static void spin(void) {
  struct timespec start, now;
  if (spin_ns <= 0) return;
  clock_gettime(CLOCK_MONOTONIC, &start);
  do clock_gettime(CLOCK_MONOTONIC, &now);
  while ((now.tv_sec - start.tv_sec) * 1000000000L + (now.tv_nsec - start.tv_nsec) < spin_ns);
}

static struct sockaddr_in loopback(int port) {
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
  inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
  return a;
}

static int dial(int port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
  struct sockaddr_in a = loopback(port);
  if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
    if (fd >= 0) close(fd);
    return -1;
  }
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  return fd;
}

static void watch(int ep, int fd) {
  struct epoll_event ev = {.events = EPOLLIN, .data.fd = fd};
  epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
}

int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: %s LISTEN_PORT BACKEND_PORT...\n", argv[0]);
    return 2;
  }
  spin_ns = getenv("SPIN_NS") ? atol(getenv("SPIN_NS")) : 0;
  int backends = argc - 2, next = 0, one = 1;
  int listener = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
  struct sockaddr_in a = loopback(atoi(argv[1]));
  setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (bind(listener, (struct sockaddr *)&a, sizeof a) != 0 || listen(listener, 1024) != 0) {
    perror("listen");
    return 1;
  }
  int ep = epoll_create1(0);
  struct epoll_event events[MAX_EVENTS];
  watch(ep, listener);
  for (;;) {
    int n = epoll_wait(ep, events, MAX_EVENTS, -1);
    for (int i = 0; i < n; i++) {
      int fd = events[i].data.fd;
      if (fd == listener) {
        int client;
        while ((client = accept4(listener, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
          int backend = dial(atoi(argv[2 + next++ % backends]));
          if (backend < 0 || client >= MAX_FDS || backend >= MAX_FDS) {
            close(client);
            if (backend >= 0) close(backend);
            continue;
          }
          ioctl(backend, FIONBIO, &one);
          setsockopt(client, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
          peer[client] = backend;
          peer[backend] = client;
          watch(ep, client);
          watch(ep, backend);
        }
        continue;
      }
      ssize_t got = recv(fd, buf, sizeof buf, 0);
      if (got < 0 && errno == EAGAIN) continue;
      if (got <= 0) {
        close(peer[fd]);
        close(fd);
        continue;
      }
      spin();
      for (ssize_t sent = 0; sent < got;) {
        ssize_t w = send(peer[fd], buf + sent, got - sent, MSG_NOSIGNAL);
        if (w > 0) sent += w;
        else if (w < 0 && errno == EAGAIN) continue;
        else break;
      }
    }
  }
}
