/* relay-epoll.c's byte relay on io_uring: every recv and send is a submission, and one
 * io_uring_enter per loop submits all that are queued and reaps all completions, so the
 * socket calls of several requests cross into the kernel together. Measures whether batching
 * the crossings lowers a proxy's CPU per request below the epoll floor on this machine.
 *
 * Single issuer with deferred task work (kernel >= 6.1); PLAIN=1 leaves both off.
 * Usage: relay-uring LISTEN_PORT BACKEND_PORT... (all on 127.0.0.1). Build: -luring. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <liburing.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_FDS 65536
#define BUF_BYTES 16384

enum op { ACCEPT, RECV, SEND };

static struct io_uring ring;
static int peer[MAX_FDS], filled[MAX_FDS], sent[MAX_FDS];
static char *buf[MAX_FDS];

static struct io_uring_sqe *next_sqe(void) {
  struct io_uring_sqe *sqe = io_uring_get_sqe(&ring);
  if (!sqe) {
    io_uring_submit(&ring);
    sqe = io_uring_get_sqe(&ring);
  }
  return sqe;
}

static void tag(struct io_uring_sqe *sqe, int fd, enum op op) {
  io_uring_sqe_set_data64(sqe, (uint64_t)fd << 2 | op);
}

static void queue_accept(int listener) {
  struct io_uring_sqe *sqe = next_sqe();
  io_uring_prep_accept(sqe, listener, NULL, NULL, 0);
  tag(sqe, listener, ACCEPT);
}

static void queue_recv(int fd) {
  struct io_uring_sqe *sqe = next_sqe();
  io_uring_prep_recv(sqe, fd, buf[fd], BUF_BYTES, 0);
  tag(sqe, fd, RECV);
}

/* Sends what `fd` received to its peer; its next recv waits until all of it went. */
static void queue_send(int fd) {
  struct io_uring_sqe *sqe = next_sqe();
  io_uring_prep_send(sqe, peer[fd], buf[fd] + sent[fd], filled[fd] - sent[fd], MSG_NOSIGNAL);
  tag(sqe, fd, SEND);
}

static int dial(int port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
  inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
  if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
    if (fd >= 0) close(fd);
    return -1;
  }
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  return fd;
}

/* Closes `fd`; its peer's pending recv ends (with 0) through the shutdown, closing it too. */
static void drop_fd(int fd) {
  if (peer[fd] >= 0) {
    shutdown(peer[fd], SHUT_RDWR);
    peer[peer[fd]] = -1;
  }
  close(fd);
  free(buf[fd]);
  buf[fd] = NULL;
}

int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: %s LISTEN_PORT BACKEND_PORT...\n", argv[0]);
    return 2;
  }
  int backends = argc - 2, next = 0, one = 1;
  int listener = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[1]))};
  inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
  setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (bind(listener, (struct sockaddr *)&a, sizeof a) != 0 || listen(listener, 1024) != 0) {
    perror("listen");
    return 1;
  }
  struct io_uring_params params = {0};
  if (!getenv("PLAIN")) params.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN;
  if (io_uring_queue_init_params(4096, &ring, &params) != 0) {
    perror("io_uring_queue_init_params");
    return 1;
  }
  queue_accept(listener);
  for (;;) {
    io_uring_submit_and_wait(&ring, 1);
    struct io_uring_cqe *cqe;
    unsigned head, seen = 0;
    io_uring_for_each_cqe(&ring, head, cqe) {
      seen++;
      uint64_t data = io_uring_cqe_get_data64(cqe);
      int fd = (int)(data >> 2), res = cqe->res;
      switch ((enum op)(data & 3)) {
      case ACCEPT: {
        queue_accept(listener);
        if (res < 0 || res >= MAX_FDS) break;
        int backend = dial(atoi(argv[2 + next++ % backends]));
        if (backend < 0 || backend >= MAX_FDS) {
          close(res);
          if (backend >= 0) close(backend);
          break;
        }
        setsockopt(res, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        peer[res] = backend;
        peer[backend] = res;
        buf[res] = malloc(BUF_BYTES);
        buf[backend] = malloc(BUF_BYTES);
        queue_recv(res);
        queue_recv(backend);
        break;
      }
      case RECV:
        if (res <= 0 || peer[fd] < 0) {
          drop_fd(fd);
          break;
        }
        filled[fd] = res;
        sent[fd] = 0;
        queue_send(fd);
        break;
      case SEND:
        if (res <= 0) {
          drop_fd(fd);
          break;
        }
        sent[fd] += res;
        if (sent[fd] < filled[fd]) queue_send(fd);
        else queue_recv(fd);
        break;
      }
    }
    io_uring_cq_advance(&ring, seen);
  }
}
