/*
 * relay: a TCP relay that delays every byte by a fixed one-way delay, to put a WAN hop between
 * two programs on one machine (there is no netem here). Benchmark helper, not part of respguard.
 *
 *   relay --listen [HOST:]PORT --target HOST:PORT --delay-ms MS [--connect-rtt]
 *
 * For each accepted connection it connects to the target and forwards bytes both ways. A chunk
 * read at time t is written on at t + delay, in order (a direction's chunks leave in the order
 * they arrived; a chunk is never written before the ones ahead of it). So a request/reply round
 * trip through the relay costs 2 * delay. TCP_NODELAY is set on both sides. A half-close (EOF
 * from one side) is delivered, after the same delay, as shutdown(SHUT_WR) to the other side;
 * an error or reset on either side closes both (the other side with a reset, after the delay).
 * A direction holding more than 4 MiB stops reading its source until it is below 1 MiB again
 * (bounded memory, TCP back-pressure).
 *
 * One thread, epoll, a timerfd armed (absolute, nanoseconds) for the oldest undelivered chunk:
 * since the delay is fixed, chunks fall due in arrival order, so one FIFO of all chunks of all
 * connections is the timer queue.
 *
 * The kernel completes the client's TCP handshake with the relay at once, so by default a new
 * connection's handshake crosses the hop for free. --connect-rtt charges it: the relay connects
 * to the target three one-way delays after accepting, so the client's first bytes reach the
 * target 1.5 round trips after its connect(), as across a real hop (exact for protocols where
 * the client speaks first, as Redis and TLS do).
 *
 * Prints "relay listening on HOST:PORT" on stdout when ready.
 * Stops on SIGINT or SIGTERM.
 *
 * Build: cc -O2 -o relay bench/relay.c
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#define READ_SIZE 65536
#define HIGH_WATER (4u << 20)
#define LOW_WATER (1u << 20)

struct chunk {
    struct chunk *next;             /* in its direction's queue */
    struct chunk *tprev, *tnext;    /* in the global time queue while not yet due */
    struct dir *dir;
    uint64_t due_ns;
    size_t len, off;
    bool eof;                       /* the source's EOF: shutdown(dst, SHUT_WR) */
    bool reset;                     /* the source failed: close both, dst with a reset */
    bool due;
    unsigned char data[];
};

struct side {
    int fd;
    struct pair *p;
    int idx;        /* 0: accepted client, 1: target */
    uint32_t events;/* registered epoll events */
    bool registered;/* in the epoll set (a side with nothing to wait for is taken out, so a
                       level-triggered EPOLLHUP cannot spin) */
};

struct dir {
    struct pair *p;
    int src, dst;   /* side indices */
    struct chunk *head, *tail;
    size_t queued;  /* bytes in the queue */
    bool read_eof;  /* EOF seen from src */
    bool paused;    /* not reading src: queue above HIGH_WATER */
    bool blocked;   /* dst returned EAGAIN: waiting for EPOLLOUT */
    bool done;      /* EOF delivered to dst */
    bool reset_queued;
};

struct pair {
    struct side s[2];
    struct dir d[2];  /* d[0]: client -> target, d[1]: target -> client */
    bool connecting;
    bool waiting;   /* --connect-rtt: in the connect queue, no target socket yet */
    bool closed;
    uint64_t connect_at;
    struct pair *cprev, *cnext; /* connect queue */
    struct pair *next_free;
};

static int epfd, tfd, lfd;
static uint64_t delay_ns;
static struct chunk *tq_head, *tq_tail; /* global time queue, oldest first */
static struct pair *to_free;
static struct pair *cq_head, *cq_tail; /* --connect-rtt: pairs waiting to connect, oldest first */
static bool connect_rtt;
static struct sockaddr_storage target_addr;
static socklen_t target_len;
static volatile sig_atomic_t stop;
static unsigned long n_pairs, n_open;

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void die(const char *what)
{
    perror(what);
    exit(1);
}

static void arm_timer(void)
{
    struct itimerspec its = {0};
    uint64_t at = 0;
    if (tq_head)
        at = tq_head->due_ns;
    if (cq_head && (!at || cq_head->connect_at < at))
        at = cq_head->connect_at;
    if (at) {
        its.it_value.tv_sec = (time_t)(at / 1000000000ull);
        its.it_value.tv_nsec = (long)(at % 1000000000ull);
        if (its.it_value.tv_sec == 0 && its.it_value.tv_nsec == 0)
            its.it_value.tv_nsec = 1;
    }
    if (timerfd_settime(tfd, TFD_TIMER_ABSTIME, &its, NULL) < 0)
        die("timerfd_settime");
}

static void tq_remove(struct chunk *c)
{
    if (c->tprev)
        c->tprev->tnext = c->tnext;
    else
        tq_head = c->tnext;
    if (c->tnext)
        c->tnext->tprev = c->tprev;
    else
        tq_tail = c->tprev;
    c->tprev = c->tnext = NULL;
}

static void update_events(struct side *s)
{
    struct pair *p = s->p;
    uint32_t ev = 0;
    if (p->closed || s->fd < 0)
        return;
    if (s->idx == 1 && p->connecting) {
        ev = EPOLLOUT;
    } else {
        struct dir *out = &p->d[s->idx];     /* s is its source */
        struct dir *in = &p->d[1 - s->idx];  /* s is its destination */
        if (!out->read_eof && !out->paused)
            ev |= EPOLLIN;
        if (in->blocked)
            ev |= EPOLLOUT;
    }
    if (ev == 0) {
        if (s->registered && epoll_ctl(epfd, EPOLL_CTL_DEL, s->fd, NULL) < 0)
            die("epoll_ctl del");
        s->registered = false;
        s->events = 0;
        return;
    }
    if (s->registered && ev == s->events)
        return;
    struct epoll_event e = {.events = ev, .data.ptr = s};
    if (epoll_ctl(epfd, s->registered ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, s->fd, &e) < 0)
        die("epoll_ctl");
    s->registered = true;
    s->events = ev;
}

static void close_pair(struct pair *p)
{
    if (p->closed)
        return;
    p->closed = true;
    if (p->waiting) {
        if (p->cprev)
            p->cprev->cnext = p->cnext;
        else
            cq_head = p->cnext;
        if (p->cnext)
            p->cnext->cprev = p->cprev;
        else
            cq_tail = p->cprev;
        p->waiting = false;
    }
    for (int i = 0; i < 2; i++) {
        struct chunk *c = p->d[i].head;
        while (c) {
            struct chunk *n = c->next;
            if (!c->due)
                tq_remove(c);
            free(c);
            c = n;
        }
        p->d[i].head = p->d[i].tail = NULL;
        if (p->s[i].fd >= 0) {
            if (p->s[i].registered)
                epoll_ctl(epfd, EPOLL_CTL_DEL, p->s[i].fd, NULL);
            close(p->s[i].fd);
            p->s[i].fd = -1;
        }
    }
    n_open--;
    p->next_free = to_free; /* freed after the current batch of events */
    to_free = p;
}

static void maybe_finish(struct pair *p)
{
    if (p->d[0].done && p->d[1].done)
        close_pair(p);
}

static void free_queue(struct dir *d)
{
    struct chunk *c = d->head;
    while (c) {
        struct chunk *n = c->next;
        if (!c->due)
            tq_remove(c);
        free(c);
        c = n;
    }
    d->head = d->tail = NULL;
    d->queued = 0;
}

static void enqueue(struct dir *d, struct chunk *c);

/* Side i failed (reset, write error): nothing more can be written to it, and after the delay
 * the other side is closed with a reset (what it would have seen across a real hop). Bytes
 * read from i before the failure are still delivered first. */
static void side_error(struct pair *p, int i)
{
    if (p->closed)
        return;
    struct dir *in = &p->d[1 - i], *out = &p->d[i];
    free_queue(in);
    in->done = true;
    in->blocked = false;
    in->paused = false;
    in->read_eof = true; /* stop reading the other side: its bytes have nowhere to go */
    if (!out->reset_queued) {
        struct chunk *c = calloc(1, sizeof *c);
        if (!c)
            die("calloc");
        c->reset = true;
        out->reset_queued = true;
        out->read_eof = true;
        enqueue(out, c);
    }
    update_events(&p->s[0]);
    update_events(&p->s[1]);
}

/* Writes the due chunks at the head of d to its destination. */
static void flush(struct dir *d)
{
    struct pair *p = d->p;
    struct side *dst = &p->s[d->dst];
    if (p->closed || p->connecting)
        return;
    while (d->head && d->head->due) {
        struct chunk *c = d->head;
        if (c->reset) {
            struct linger lg = {.l_onoff = 1, .l_linger = 0};
            setsockopt(dst->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
            close_pair(p);
            return;
        }
        if (c->eof) {
            shutdown(dst->fd, SHUT_WR);
            d->done = true;
            d->head = c->next;
            if (!d->head)
                d->tail = NULL;
            free(c);
            maybe_finish(p);
            return;
        }
        ssize_t n = send(dst->fd, c->data + c->off, c->len - c->off, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                if (!d->blocked) {
                    d->blocked = true;
                    update_events(dst);
                }
                return;
            }
            if (errno == EINTR)
                continue;
            side_error(p, d->dst);
            return;
        }
        c->off += (size_t)n;
        d->queued -= (size_t)n;
        if (c->off < c->len)
            continue;
        d->head = c->next;
        if (!d->head)
            d->tail = NULL;
        free(c);
    }
    if (d->blocked) {
        d->blocked = false;
        update_events(dst);
    }
    if (d->paused && d->queued < LOW_WATER) {
        d->paused = false;
        update_events(&p->s[d->src]);
    }
}

static void enqueue(struct dir *d, struct chunk *c)
{
    c->dir = d;
    c->due_ns = now_ns() + delay_ns;
    c->next = NULL;
    if (d->tail)
        d->tail->next = c;
    else
        d->head = c;
    d->tail = c;
    d->queued += c->len;
    c->tnext = NULL;
    c->tprev = tq_tail;
    if (tq_tail)
        tq_tail->tnext = c;
    else
        tq_head = c;
    tq_tail = c;
    if (tq_head == c)
        arm_timer();
}

static void on_readable(struct side *s)
{
    static unsigned char buf[READ_SIZE];
    struct pair *p = s->p;
    struct dir *d = &p->d[s->idx];
    for (int rounds = 0; rounds < 16 && !p->closed && !d->read_eof && !d->paused; rounds++) {
        ssize_t n = recv(s->fd, buf, sizeof buf, 0);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return;
            if (errno == EINTR)
                continue;
            side_error(p, s->idx);
            return;
        }
        struct chunk *c = malloc(sizeof *c + (size_t)n);
        if (!c)
            die("malloc");
        memset(c, 0, sizeof *c);
        if (n == 0) {
            c->eof = true;
            d->read_eof = true;
            update_events(s);
        } else {
            memcpy(c->data, buf, (size_t)n);
            c->len = (size_t)n;
        }
        enqueue(d, c);
        if (d->queued > HIGH_WATER) {
            d->paused = true;
            update_events(s);
        }
        if ((size_t)n < sizeof buf)
            return;
    }
}

static void set_sock_opts(int fd)
{
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

static void add_side(struct side *s, uint32_t ev)
{
    struct epoll_event e = {.events = ev, .data.ptr = s};
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, s->fd, &e) < 0)
        die("epoll_ctl add");
    s->events = ev;
    s->registered = true;
}

/* Opens the target connection of p (at accept, or with --connect-rtt one round trip later). */
static void start_connect(struct pair *p)
{
    int ufd = socket(target_addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (ufd < 0) {
        fprintf(stderr, "relay: socket: %s\n", strerror(errno));
        close_pair(p);
        return;
    }
    set_sock_opts(ufd);
    p->s[1].fd = ufd;
    int rc = connect(ufd, (struct sockaddr *)&target_addr, target_len);
    if (rc < 0 && errno != EINPROGRESS) {
        fprintf(stderr, "relay: connect: %s\n", strerror(errno));
        close_pair(p);
        return;
    }
    add_side(&p->s[1], rc < 0 ? EPOLLOUT : EPOLLIN);
    if (rc == 0) {
        p->connecting = false;
        flush(&p->d[0]);
    }
}

static void on_accept(void)
{
    for (;;) {
        int cfd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (cfd < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
                return;
            if (errno == EMFILE || errno == ENFILE) {
                fprintf(stderr, "relay: accept: %s\n", strerror(errno));
                return;
            }
            if (errno == ECONNABORTED)
                continue;
            die("accept");
        }
        set_sock_opts(cfd);
        struct pair *p = calloc(1, sizeof *p);
        if (!p)
            die("calloc");
        for (int i = 0; i < 2; i++) {
            p->s[i].p = p;
            p->s[i].idx = i;
            p->d[i].p = p;
            p->d[i].src = i;
            p->d[i].dst = 1 - i;
        }
        p->s[0].fd = cfd;
        p->s[1].fd = -1;
        p->connecting = true; /* until the target connection is up, nothing is written to it */
        n_pairs++;
        n_open++;
        /* The client's bytes are read and delayed while the target connection is made. */
        add_side(&p->s[0], EPOLLIN);
        if (!connect_rtt) {
            start_connect(p);
            continue;
        }
        /* The TCP handshake across the hop costs one round trip before the client's first
         * byte leaves: connect to the target 3 one-way delays after accept, so that byte
         * arrives at 1.5 round trips, as it would after a real SYN, SYN-ACK. */
        p->waiting = true;
        p->connect_at = now_ns() + 3 * delay_ns;
        p->cprev = cq_tail;
        if (cq_tail)
            cq_tail->cnext = p;
        else
            cq_head = p;
        cq_tail = p;
        if (cq_head == p)
            arm_timer();
    }
}

static void on_side(struct side *s, uint32_t ev)
{
    struct pair *p = s->p;
    if (p->closed)
        return;
    if (s->idx == 1 && p->connecting) {
        int err = 0;
        socklen_t len = sizeof err;
        getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err) {
            fprintf(stderr, "relay: connect to target: %s\n", strerror(err));
            close_pair(p);
            return;
        }
        p->connecting = false;
        update_events(s);
        flush(&p->d[0]);
        return;
    }
    if (ev & EPOLLERR) {
        /* Read what arrived before the error; the read that fails calls side_error. */
        struct dir *out = &p->d[s->idx];
        if (!out->read_eof && !out->paused)
            on_readable(s);
        if (!p->closed)
            side_error(p, s->idx);
        return;
    }
    if (ev & (EPOLLIN | EPOLLHUP))
        on_readable(s);
    if (p->closed)
        return;
    if (ev & EPOLLOUT)
        flush(&p->d[1 - s->idx]);
    /* A side whose reading is over and that nothing waits to write to is out of the epoll set
     * now (update_events), so an EPOLLHUP on it does not repeat. */
}

static void on_timer(void)
{
    uint64_t expirations;
    if (read(tfd, &expirations, sizeof expirations) < 0 && errno != EAGAIN)
        die("read timerfd");
    uint64_t now = now_ns();
    while (cq_head && cq_head->connect_at <= now) {
        struct pair *p = cq_head;
        cq_head = p->cnext;
        if (cq_head)
            cq_head->cprev = NULL;
        else
            cq_tail = NULL;
        p->cprev = p->cnext = NULL;
        p->waiting = false;
        start_connect(p);
    }
    /* Mark every chunk now due, then flush each direction that has one. A direction may be
     * flushed more than once; flush is idempotent. */
    while (tq_head && tq_head->due_ns <= now) {
        struct chunk *c = tq_head;
        tq_remove(c);
        c->due = true;
        struct dir *d = c->dir;
        flush(d); /* may free c and even close the pair (which frees its other chunks) */
    }
    arm_timer();
}

static void on_signal(int sig)
{
    (void)sig;
    stop = 1;
}

static int parse_hostport(const char *s, const char *default_host, struct sockaddr_storage *out,
                          socklen_t *outlen)
{
    char host[256];
    const char *port;
    const char *colon = strrchr(s, ':');
    if (colon) {
        size_t hl = (size_t)(colon - s);
        if (hl >= sizeof host)
            return -1;
        memcpy(host, s, hl);
        host[hl] = 0;
        port = colon + 1;
    } else {
        snprintf(host, sizeof host, "%s", default_host);
        port = s;
    }
    if (host[0] == '[') { /* [::1] */
        size_t hl = strlen(host);
        memmove(host, host + 1, hl);
        if (hl >= 2 && host[hl - 2] == ']')
            host[hl - 2] = 0;
    }
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV}, *res;
    int rc = getaddrinfo(host[0] ? host : default_host, port, &hints, &res);
    if (rc != 0) {
        fprintf(stderr, "relay: %s: %s\n", s, gai_strerror(rc));
        return -1;
    }
    memcpy(out, res->ai_addr, res->ai_addrlen);
    *outlen = res->ai_addrlen;
    freeaddrinfo(res);
    return 0;
}

static void usage(void)
{
    fprintf(stderr, "usage: relay --listen [HOST:]PORT --target HOST:PORT --delay-ms MS [--connect-rtt]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    const char *listen_s = NULL, *target_s = NULL;
    double delay_ms = -1;
    for (int i = 1; i < argc; i++) {
        if (i + 1 < argc && strcmp(argv[i], "--listen") == 0)
            listen_s = argv[++i];
        else if (i + 1 < argc && strcmp(argv[i], "--target") == 0)
            target_s = argv[++i];
        else if (i + 1 < argc && strcmp(argv[i], "--delay-ms") == 0)
            delay_ms = strtod(argv[++i], NULL);
        else if (strcmp(argv[i], "--connect-rtt") == 0)
            connect_rtt = true;
        else
            usage();
    }
    if (!listen_s || !target_s || delay_ms < 0)
        usage();
    delay_ns = (uint64_t)(delay_ms * 1e6 + 0.5);

    struct sockaddr_storage laddr;
    socklen_t llen;
    if (parse_hostport(listen_s, "127.0.0.1", &laddr, &llen) < 0 ||
        parse_hostport(target_s, "127.0.0.1", &target_addr, &target_len) < 0)
        return 2;

    signal(SIGPIPE, SIG_IGN);
    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0); /* wake on time: the delay is the point */

    lfd = socket(laddr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (lfd < 0)
        die("socket");
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(lfd, (struct sockaddr *)&laddr, llen) < 0)
        die("bind");
    if (listen(lfd, 4096) < 0)
        die("listen");
    struct sockaddr_storage bound;
    socklen_t blen = sizeof bound;
    getsockname(lfd, (struct sockaddr *)&bound, &blen);
    char hbuf[128], pbuf[16];
    getnameinfo((struct sockaddr *)&bound, blen, hbuf, sizeof hbuf, pbuf, sizeof pbuf,
                NI_NUMERICHOST | NI_NUMERICSERV);

    epfd = epoll_create1(EPOLL_CLOEXEC);
    tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    if (epfd < 0 || tfd < 0)
        die("epoll/timerfd");
    struct epoll_event e = {.events = EPOLLIN, .data.ptr = &lfd};
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, lfd, &e) < 0)
        die("epoll_ctl listen");
    e.data.ptr = &tfd;
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, tfd, &e) < 0)
        die("epoll_ctl timer");

    printf("relay listening on %s:%s, target %s, one-way delay %.3f ms%s\n", hbuf, pbuf, target_s,
           delay_ms, connect_rtt ? ", TCP handshake round trip charged" : "");
    fflush(stdout);

    struct epoll_event evs[256];
    while (!stop) {
        int n = epoll_wait(epfd, evs, 256, -1);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            die("epoll_wait");
        }
        for (int i = 0; i < n; i++) {
            void *ptr = evs[i].data.ptr;
            if (ptr == &lfd)
                on_accept();
            else if (ptr == &tfd)
                on_timer();
            else
                on_side(ptr, evs[i].events);
        }
        while (to_free) {
            struct pair *p = to_free;
            to_free = p->next_free;
            free(p);
        }
    }
    fprintf(stderr, "relay: %lu connections relayed, %lu open at exit\n", n_pairs, n_open);
    return 0;
}
