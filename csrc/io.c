/* io.c: the background I/O thread. No Python in this file (see io.h).
 *
 * Threads: the submitters (Python threads) touch only the submit queue (E.lock),
 * the bridges' queues (bridge->lock) and the atomics; resolver threads (one per name
 * resolution in progress) touch only their job and, to hand it back, E.lock;
 * everything else in a client belongs to the I/O thread. */
#define _GNU_SOURCE
#include "io.h"
#include "clock.h"
#include "respscan.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <hiredis/hiredis.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define READ_CHUNK 65536
#define MAX_READ_PER_PASS (4 * 1024 * 1024)
#define BACKOFF_MIN 0.05
#define BACKOFF_MAX 2.0
/* A connection that stayed ready this long before it dropped was healthy: the next
 * attempt is made at once. One that dropped sooner (a server that closes every
 * connection, a middlebox) makes the next attempt back off. */
#define HEALTHY_AFTER 1.0
#define STATS_FLUSH_EVERY 1.0
/* Commands sent and not yet answered on one connection; further requests wait (in
 * order) for room, which replies make. */
#define MAX_PIPELINE 65536
/* Name resolutions in progress at once, process-wide (one thread each). */
#define MAX_RESOLVERS 32

enum { ST_IDLE, ST_RESOLVING, ST_CONNECTING, ST_HANDSHAKE, ST_READY, ST_BACKOFF };
enum { SLOT_USER, SLOT_HANDSHAKE, SLOT_STATS };

/* One entry of the in-flight FIFO: the request whose replies come next, or NULL
 * once it was completed early (timeout, disconnect) and its replies are discarded. */
typedef struct {
    bio_req *req;
    int remaining;
    int kind;         /* SLOT_* */
    double deadline;  /* its replies are due by then, or the connection is replaced */
} slot;

/* A name being resolved by a thread of its own: getaddrinfo blocks (a silent DNS
 * server: seconds), and the I/O thread must not. The job is the resolver thread's
 * until it is handed back (E.resolved); then the I/O thread's, which frees it. */
typedef struct resolve_job {
    struct resolve_job *next;
    char *host;
    char port[16];
    int gai;                 /* getaddrinfo's result */
    struct addrinfo *res;    /* owned: its addresses */
} resolve_job;

struct bio_client {
    atomic_int refs;
    pid_t pid;
    bio_config cfg;
    bio_counters counters;
    /* Everything below belongs to the I/O thread. */
    bio_client *next;            /* engine's list of registered clients */
    int registered;
    int state;                   /* ST_* */
    int fd;
    int want_out;                /* EPOLLOUT registered */
    redisReader *reader;
    resp_scan scan;              /* the cost of the reply being received */
    char *out;                   /* bytes to write: out[pos..len) */
    size_t out_len, out_pos, out_cap;
    size_t out_secret;           /* out[0..out_secret) holds AUTH: wiped once sent */
    slot *ring;                  /* in-flight FIFO */
    size_t r_head, r_count, r_cap;
    bio_req *wait_head, *wait_tail;  /* requests waiting for a connection or for room */
    bio_req *close_req;          /* a CLOSE waiting for the final statistics flush */
    resolve_job *resolving;      /* borrowed identity of our job in progress, or NULL */
    double close_deadline;
    double hs_deadline;          /* resolve + connect + handshake must finish by then */
    double backoff, backoff_until;
    int unreachable;             /* the backoff follows a failed attempt, not a drop */
    int stats_in_flight;         /* a statistics flush awaits its replies */
    double ready_since;
    double next_flush;
    int ever_connected;
    char last_err[BIO_ERRLEN];
};

static struct {
    pthread_mutex_t lock;
    bio_req *head, *tail;        /* submitted, not yet taken by the thread */
    resolve_job *resolved;       /* finished resolutions, not yet taken */
    int wake_pending;
    int wake_fd;
    int epfd;
    int started;
    pid_t pid;
    pthread_t thread;
    atomic_int resolvers;        /* resolver threads running */
    bio_client *clients;         /* I/O thread only */
} E = {.lock = PTHREAD_MUTEX_INITIALIZER, .wake_fd = -1, .epfd = -1};

/* Every descriptor this file opens (sockets, epoll, eventfds), so that a forked child
 * can close the parent's: otherwise the child would keep the parent's connections to
 * Redis open for as long as it lives (the parent's disconnect() then ends nothing).
 * Locked around fork() by the atfork handlers, so the child sees a whole list. */
static struct {
    pthread_mutex_t lock;
    int *fds;
    size_t n, cap;
} FDS = {.lock = PTHREAD_MUTEX_INITIALIZER};

static void
fd_register(int fd)
{
    pthread_mutex_lock(&FDS.lock);
    if (FDS.n == FDS.cap) {
        size_t cap = FDS.cap ? FDS.cap * 2 : 64;
        int *fds = realloc(FDS.fds, cap * sizeof *fds);
        if (fds == NULL) {  /* unlisted: only a child would miss closing it */
            pthread_mutex_unlock(&FDS.lock);
            return;
        }
        FDS.fds = fds;
        FDS.cap = cap;
    }
    FDS.fds[FDS.n++] = fd;
    pthread_mutex_unlock(&FDS.lock);
}

/* close(fd), taking it off the list. */
static void
fd_close(int fd)
{
    pthread_mutex_lock(&FDS.lock);
    for (size_t i = 0; i < FDS.n; i++) {
        if (FDS.fds[i] == fd) {
            FDS.fds[i] = FDS.fds[--FDS.n];
            break;
        }
    }
    close(fd);
    pthread_mutex_unlock(&FDS.lock);
}

static pid_t cached_pid;
static pthread_once_t pid_once = PTHREAD_ONCE_INIT;

static void
fork_prepare(void)
{
    pthread_mutex_lock(&FDS.lock);
}

static void
fork_parent(void)
{
    pthread_mutex_unlock(&FDS.lock);
}

static void
fork_child(void)
{
    cached_pid = getpid();
    for (size_t i = 0; i < FDS.n; i++) {
        close(FDS.fds[i]);
    }
    FDS.n = 0;
    pthread_mutex_init(&FDS.lock, NULL);
}

static void
pid_init(void)
{
    cached_pid = getpid();
    pthread_atfork(fork_prepare, fork_parent, fork_child);
}

pid_t
bio_pid(void)
{
    pthread_once(&pid_once, pid_init);
    return cached_pid;
}

double
bio_now(void)
{
    return bruno_clock_seconds(CLOCK_MONOTONIC);
}

/* ------------------------------------------------------------------ buffers */

void
bio_buf_init(bio_buf *b)
{
    b->data = NULL;
    b->len = b->cap = 0;
    b->ncmd = 0;
    b->oom = 0;
}

void
bio_buf_free(bio_buf *b)
{
    free(b->data);
    bio_buf_init(b);
}

static int
buf_reserve(bio_buf *b, size_t extra)
{
    if (b->oom) {
        return -1;
    }
    if (b->len + extra <= b->cap) {
        return 0;
    }
    size_t cap = b->cap ? b->cap : 128;
    while (cap < b->len + extra) {
        cap *= 2;
    }
    char *d = realloc(b->data, cap);
    if (d == NULL) {
        b->oom = 1;
        return -1;
    }
    b->data = d;
    b->cap = cap;
    return 0;
}

static void
buf_append(bio_buf *b, const char *s, size_t n)
{
    if (buf_reserve(b, n) == 0) {
        memcpy(b->data + b->len, s, n);
        b->len += n;
    }
}

/* "<c><n>\r\n" without snprintf (this is on every request's path). */
static void
buf_header(bio_buf *b, char c, size_t n)
{
    char tmp[24], *p = tmp + sizeof tmp;
    *--p = '\n';
    *--p = '\r';
    do {
        *--p = (char)('0' + n % 10);
        n /= 10;
    } while (n);
    *--p = c;
    buf_append(b, p, (size_t)(tmp + sizeof tmp - p));
}

void
bio_buf_array(bio_buf *b, size_t n)
{
    buf_header(b, '*', n);
    b->ncmd++;
}

void
bio_buf_bulk2(bio_buf *b, const char *s1, size_t n1, const char *s2, size_t n2)
{
    if (buf_reserve(b, 24 + n1 + n2 + 2) < 0) {
        return;
    }
    buf_header(b, '$', n1 + n2);
    buf_append(b, s1, n1);
    buf_append(b, s2, n2);
    buf_append(b, "\r\n", 2);
}

void
bio_buf_bulk(bio_buf *b, const char *s, size_t n)
{
    bio_buf_bulk2(b, s, n, "", 0);
}

void
bio_buf_command(bio_buf *b, int argc, const char *const *argv, const size_t *argvlen)
{
    bio_buf_array(b, (size_t)argc);
    for (int i = 0; i < argc; i++) {
        bio_buf_bulk(b, argv[i], argvlen[i]);
    }
}

/* ------------------------------------------------------------------ bridges */

bio_bridge *
bio_bridge_new(void)
{
    bio_bridge *b = calloc(1, sizeof *b);
    if (b == NULL) {
        return NULL;
    }
    b->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (b->efd < 0) {
        free(b);
        return NULL;
    }
    fd_register(b->efd);
    pthread_mutex_init(&b->lock, NULL);
    atomic_init(&b->refs, 1);
    b->pid = bio_pid();
    return b;
}

void
bio_bridge_incref(bio_bridge *b)
{
    atomic_fetch_add(&b->refs, 1);
}

void
bio_bridge_decref(bio_bridge *b)
{
    if (atomic_fetch_sub(&b->refs, 1) == 1) {
        if (b->pid == bio_pid()) {  /* (a forked child's copy was closed at the fork) */
            fd_close(b->efd);
        }
        pthread_mutex_destroy(&b->lock);
        free(b);
    }
}

bio_req *
bio_bridge_take(bio_bridge *b)
{
    uint64_t v;
    while (read(b->efd, &v, sizeof v) < 0 && errno == EINTR) {
    }
    pthread_mutex_lock(&b->lock);
    bio_req *list = b->head;
    b->head = b->tail = NULL;
    pthread_mutex_unlock(&b->lock);
    return list;
}

static void
bridge_push(bio_bridge *b, bio_req *r)
{
    r->next = NULL;
    pthread_mutex_lock(&b->lock);
    int was_empty = b->head == NULL;
    if (b->tail) {
        b->tail->next = r;
    }
    else {
        b->head = r;
    }
    b->tail = r;
    if (was_empty) {
        /* Under the lock: once it is released, the loop may take r and free it,
         * and with r the last reference keeping b (and its eventfd) alive. */
        uint64_t one = 1;
        while (write(b->efd, &one, sizeof one) < 0 && errno == EINTR) {
        }
    }
    pthread_mutex_unlock(&b->lock);
}

/* ------------------------------------------------------------------ clients */

static char *
dup_or_null(const char *s)
{
    return s ? strdup(s) : NULL;
}

static char *
dup_bytes(const char *s, size_t n)
{
    if (s == NULL) {
        return NULL;
    }
    char *d = malloc(n + 1);
    if (d != NULL) {
        memcpy(d, s, n);
        d[n] = '\0';
    }
    return d;
}

bio_client *
bio_client_new(const bio_config *cfg)
{
    bio_client *c = calloc(1, sizeof *c);
    if (c == NULL) {
        return NULL;
    }
    c->fd = -1;  /* before anything can fail: freeing closes fd if >= 0 */
    atomic_init(&c->refs, 1);
    c->pid = bio_pid();
    c->cfg = *cfg;
    c->cfg.host = dup_or_null(cfg->host);
    c->cfg.unix_path = dup_or_null(cfg->unix_path);
    c->cfg.username = dup_bytes(cfg->username, cfg->username_len);
    c->cfg.password = dup_bytes(cfg->password, cfg->password_len);
    c->cfg.stats_key = malloc(cfg->stats_key_len + 1);
    if ((cfg->host && !c->cfg.host) || (cfg->unix_path && !c->cfg.unix_path) ||
        (cfg->username && !c->cfg.username) || (cfg->password && !c->cfg.password) ||
        !c->cfg.stats_key) {
        bio_client_decref(c);
        return NULL;
    }
    memcpy(c->cfg.stats_key, cfg->stats_key, cfg->stats_key_len);
    c->cfg.stats_key[cfg->stats_key_len] = '\0';
    c->state = ST_IDLE;
    resp_scan_init(&c->scan);
    return c;
}

void
bio_client_incref(bio_client *c)
{
    atomic_fetch_add(&c->refs, 1);
}

void
bio_client_decref(bio_client *c)
{
    if (atomic_fetch_sub(&c->refs, 1) == 1) {
        if (c->fd >= 0) {
            fd_close(c->fd);
        }
        if (c->reader) {
            redisReaderFree(c->reader);
        }
        if (c->out != NULL) {
            explicit_bzero(c->out, c->out_secret);
        }
        free(c->out);
        free(c->ring);
        free(c->cfg.host);
        free(c->cfg.unix_path);
        free(c->cfg.username);
        if (c->cfg.password != NULL) {
            explicit_bzero(c->cfg.password, c->cfg.password_len);
        }
        free(c->cfg.password);
        free(c->cfg.stats_key);
        free(c);
    }
}

bio_counters *
bio_client_counters(bio_client *c)
{
    return &c->counters;
}

pid_t
bio_client_pid(bio_client *c)
{
    return c->pid;
}

/* ------------------------------------------------------------------ requests */

bio_req *
bio_req_new(bio_client *c, bio_bridge *b, int op, int ncmd)
{
    bio_req *r = calloc(1, sizeof *r);
    if (r == NULL) {
        return NULL;
    }
    if (ncmd > 0) {
        r->replies = calloc((size_t)ncmd, sizeof(void *));
        if (r->replies == NULL) {
            free(r);
            return NULL;
        }
    }
    r->op = op;
    r->ncmd = ncmd;
    r->client = c;
    bio_client_incref(c);
    r->bridge = b;
    if (b) {
        bio_bridge_incref(b);
    }
    return r;
}

void
bio_req_free(bio_req *r)
{
    if (r == NULL) {
        return;
    }
    free(r->buf);
    for (int i = 0; i < r->nrep; i++) {
        freeReplyObject(r->replies[i]);
    }
    free(r->replies);
    if (r->client) {
        bio_client_decref(r->client);
    }
    if (r->bridge) {
        bio_bridge_decref(r->bridge);
    }
    free(r);
}

/* Finish a request: its bridge's loop will pick it up. */
static void
complete(bio_req *r, int status, const char *msg)
{
    r->status = status;
    if (status != BIO_OK) {
        if (msg != NULL) {  /* (NULL: r->err already says it) */
            snprintf(r->err, sizeof r->err, "%s", msg);
        }
        atomic_fetch_add(&r->client->counters.errors, 1);
        if (status == BIO_ETIMEOUT) {
            atomic_fetch_add(&r->client->counters.timeouts, 1);
        }
    }
    free(r->buf);
    r->buf = NULL;
    if (r->bridge) {
        bridge_push(r->bridge, r);
    }
    else {
        bio_req_free(r);
    }
}

/* ------------------------------------------------------------------ FIFO */

static int
ring_push(bio_client *c, bio_req *r, int remaining, int kind, double deadline)
{
    if (c->r_count == c->r_cap) {
        size_t cap = c->r_cap ? c->r_cap * 2 : 64;
        slot *ring = malloc(cap * sizeof(slot));
        if (ring == NULL) {
            return -1;
        }
        for (size_t i = 0; i < c->r_count; i++) {
            ring[i] = c->ring[(c->r_head + i) % c->r_cap];
        }
        free(c->ring);
        c->ring = ring;
        c->r_cap = cap;
        c->r_head = 0;
    }
    slot *s = &c->ring[(c->r_head + c->r_count) % c->r_cap];
    s->req = r;
    s->remaining = remaining;
    s->kind = kind;
    s->deadline = deadline;
    c->r_count++;
    return 0;
}

static slot *
ring_front(bio_client *c)
{
    return c->r_count ? &c->ring[c->r_head] : NULL;
}

static void
ring_pop(bio_client *c)
{
    c->r_head = (c->r_head + 1) % c->r_cap;
    c->r_count--;
}

static int
out_append(bio_client *c, const char *data, size_t len)
{
    if (c->out_len + len > c->out_cap) {
        size_t cap = c->out_cap ? c->out_cap : 16384;
        while (cap < c->out_len + len) {
            cap *= 2;
        }
        char *out = realloc(c->out, cap);
        if (out == NULL) {
            return -1;
        }
        c->out = out;
        c->out_cap = cap;
    }
    memcpy(c->out + c->out_len, data, len);
    c->out_len += len;
    return 0;
}

/* Queue the bytes of buf as `ncmd` commands of a slot whose replies are due by
 * `deadline`. */
static int
send_slot(bio_client *c, const char *buf, size_t len, int ncmd, bio_req *r, int kind,
          double deadline)
{
    /* The slot first: bytes sent without one would shift every later reply. */
    if (ring_push(c, r, ncmd, kind, deadline) < 0) {
        return -1;
    }
    if (out_append(c, buf, len) < 0) {
        c->r_count--;  /* take the slot back */
        return -1;
    }
    atomic_fetch_add(&c->counters.commands, (unsigned long long)ncmd);
    return 0;
}

/* Put a user request on the connection (its bytes are then ours to drop). Its reply
 * is due socket_timeout from now, however long it waited to be sent. */
static void
send_request(bio_client *c, bio_req *r, double now)
{
    r->deadline = now + c->cfg.socket_timeout;
    r->sent = 1;
    if (send_slot(c, r->buf, r->len, r->ncmd, r, SLOT_USER, r->deadline) < 0) {
        complete(r, BIO_ECONN, "out of memory");
        return;
    }
    free(r->buf);
    r->buf = NULL;
}

/* ------------------------------------------------------------------ connection */

static void start_connect(bio_client *c, double now);

static void
epoll_set(bio_client *c, int out)
{
    struct epoll_event ev = {.events = EPOLLIN | (out ? EPOLLOUT : 0), .data.ptr = c};
    if (epoll_ctl(E.epfd, EPOLL_CTL_MOD, c->fd, &ev) < 0) {
        epoll_ctl(E.epfd, EPOLL_CTL_ADD, c->fd, &ev);
    }
    c->want_out = out;
}

static void
wait_push(bio_client *c, bio_req *r)
{
    r->next = NULL;
    if (c->wait_tail) {
        c->wait_tail->next = r;
    }
    else {
        c->wait_head = r;
    }
    c->wait_tail = r;
}

static void
fail_waiting(bio_client *c, int status, const char *msg)
{
    bio_req *r = c->wait_head;
    c->wait_head = c->wait_tail = NULL;
    while (r) {
        bio_req *next = r->next;
        complete(r, status, msg);
        r = next;
    }
}

static void
fail_inflight(bio_client *c, int status, const char *msg)
{
    while (c->r_count) {
        slot *s = ring_front(c);
        if (s->req) {
            complete(s->req, status, msg);
        }
        ring_pop(c);
    }
}

/* Send what waits, in order, while the pipeline has room (ready connections only). */
static void
pump_waiting(bio_client *c, double now)
{
    while (c->wait_head != NULL && c->state == ST_READY && c->close_req == NULL &&
           c->r_count < MAX_PIPELINE) {
        bio_req *r = c->wait_head;
        c->wait_head = r->next;
        if (c->wait_head == NULL) {
            c->wait_tail = NULL;
        }
        if (r->op == BIO_OP_CONNECT) {
            complete(r, BIO_OK, NULL);
        }
        else {
            send_request(c, r, now);
        }
    }
}

/* Drop the socket and what was being read or written on it (its reader's memory
 * included); the requests in flight are the caller's to fail. */
static void
close_socket(bio_client *c)
{
    if (c->fd >= 0) {
        epoll_ctl(E.epfd, EPOLL_CTL_DEL, c->fd, NULL);
        fd_close(c->fd);
        c->fd = -1;
    }
    if (c->reader) {
        redisReaderFree(c->reader);
        c->reader = NULL;
    }
    resp_scan_init(&c->scan);
    c->stats_in_flight = 0;
    if (c->out_secret > 0) {
        explicit_bzero(c->out, c->out_secret);
        c->out_secret = 0;
    }
    c->out_len = c->out_pos = 0;
    c->want_out = 0;
    atomic_store(&c->counters.connected, 0);
}

static void
finish_close(bio_client *c, double now)
{
    bio_req *r = c->close_req;
    c->close_req = NULL;
    close_socket(c);
    fail_inflight(c, BIO_ECLOSED, "disconnected");
    c->state = ST_IDLE;
    c->backoff = 0;  /* a new start */
    if (r) {
        complete(r, BIO_OK, NULL);
    }
    if (c->wait_head != NULL) {
        /* Requests made after the disconnect() (a reconnect): a connect() among them
         * has its connect_timeout from now, not from when it waited for the close. */
        for (bio_req *w = c->wait_head; w; w = w->next) {
            if (w->op == BIO_OP_CONNECT) {
                w->deadline = now + c->cfg.connect_timeout;
            }
        }
        start_connect(c, now);
    }
}

/* The connection failed (or could not be made): fail what was sent on it (and, when
 * connecting failed, what waited for it), then back off before the next attempt —
 * unless it had been ready and healthy, which makes the next attempt immediate.
 * Attempts are made only when a request needs one: an idle cache stays idle. */
static void
connection_failed(bio_client *c, const char *msg, double now)
{
    int was_ready = c->state == ST_READY;
    snprintf(c->last_err, sizeof c->last_err, "%s", msg);
    close_socket(c);
    fail_inflight(c, BIO_ECONN, msg);
    if (c->close_req) {
        finish_close(c, now);
        return;
    }
    if (!was_ready) {
        fail_waiting(c, BIO_ECONN, msg);  /* they waited for this attempt */
    }
    if (was_ready && now - c->ready_since >= HEALTHY_AFTER) {
        c->backoff = 0;
        c->state = ST_IDLE;
        if (c->wait_head != NULL) {
            start_connect(c, now);  /* requests that were waiting for room */
        }
        return;
    }
    c->backoff = c->backoff <= 0 ? BACKOFF_MIN : fmin(c->backoff * 2, BACKOFF_MAX);
    c->backoff_until = now + c->backoff;
    c->unreachable = !was_ready;
    c->state = ST_BACKOFF;
}

static void
append_stats_flush(bio_client *c, double now)
{
    if (c->stats_in_flight) {
        return;  /* one at a time: a stalled server does not pile them up */
    }
    unsigned long long hits = atomic_exchange(&c->counters.pending_hits, 0);
    unsigned long long misses = atomic_exchange(&c->counters.pending_misses, 0);
    if (hits == 0 && misses == 0) {
        return;
    }
    bio_buf b;
    bio_buf_init(&b);
    char num[32];
    const char *argv[4] = {"HINCRBY", c->cfg.stats_key, NULL, num};
    size_t argvlen[4] = {7, c->cfg.stats_key_len, 0, 0};
    if (hits) {
        argv[2] = "hits";
        argvlen[2] = 4;
        argvlen[3] = (size_t)snprintf(num, sizeof num, "%llu", hits);
        bio_buf_command(&b, 4, argv, argvlen);
    }
    if (misses) {
        argv[2] = "misses";
        argvlen[2] = 6;
        argvlen[3] = (size_t)snprintf(num, sizeof num, "%llu", misses);
        bio_buf_command(&b, 4, argv, argvlen);
    }
    if (!b.oom) {
        /* Due like any request: a server that never answers replaces the connection
         * (and a dropped cache's client is not kept waiting for it). */
        if (send_slot(c, b.data, b.len, b.ncmd, NULL, SLOT_STATS,
                      now + c->cfg.socket_timeout) == 0) {
            c->stats_in_flight = 1;
        }
    }
    bio_buf_free(&b);
}

/* Connected (TCP or unix socket): send AUTH/SELECT/PING and wait for the replies. */
static void
start_handshake(bio_client *c, double now)
{
    c->reader = redisReaderCreate();
    if (c->reader == NULL) {
        connection_failed(c, "out of memory", now);
        return;
    }
    bio_buf b;
    bio_buf_init(&b);
    /* Room for all of it at once: a buffer grown by realloc would leave a copy of
     * the password in the block it frees. (Each argument: 24 bytes of header at most.) */
    if (buf_reserve(&b, 256 + c->cfg.username_len + c->cfg.password_len) < 0) {
        connection_failed(c, "out of memory", now);
        return;
    }
    if (c->cfg.password) {
        if (c->cfg.username) {
            const char *argv[3] = {"AUTH", c->cfg.username, c->cfg.password};
            size_t len[3] = {4, c->cfg.username_len, c->cfg.password_len};
            bio_buf_command(&b, 3, argv, len);
        }
        else {
            const char *argv[2] = {"AUTH", c->cfg.password};
            size_t len[2] = {4, c->cfg.password_len};
            bio_buf_command(&b, 2, argv, len);
        }
    }
    if (c->cfg.db != 0) {
        char db[16];
        const char *argv[2] = {"SELECT", db};
        size_t len[2] = {6, (size_t)snprintf(db, sizeof db, "%d", c->cfg.db)};
        bio_buf_command(&b, 2, argv, len);
    }
    const char *ping[1] = {"PING"};
    size_t pinglen[1] = {4};
    bio_buf_command(&b, 1, ping, pinglen);
    /* The socket is new: the out buffer is empty, so AUTH starts it, and is wiped
     * from it once sent (flush_out) or dropped (close_socket). */
    int rc = b.oom ? -1 : send_slot(c, b.data, b.len, b.ncmd, NULL, SLOT_HANDSHAKE,
                                    c->hs_deadline);
    if (rc == 0 && c->cfg.password) {
        c->out_secret = c->out_len;
    }
    if (b.data != NULL) {
        explicit_bzero(b.data, b.len);
    }
    bio_buf_free(&b);
    if (rc < 0) {
        connection_failed(c, "out of memory", now);
        return;
    }
    c->state = ST_HANDSHAKE;
}

static void
handshake_done(bio_client *c, double now)
{
    c->state = ST_READY;
    c->ready_since = now;
    c->next_flush = now + STATS_FLUSH_EVERY;
    if (c->ever_connected) {
        atomic_fetch_add(&c->counters.reconnects, 1);
    }
    c->ever_connected = 1;
    atomic_store(&c->counters.connected, 1);
    pump_waiting(c, now);
}

/* A non-blocking socket connecting to a unix path: fd, or -1 with err set. */
static int
open_unix(bio_client *c, char *err, size_t errlen)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(c->cfg.unix_path) >= sizeof sa.sun_path) {
        snprintf(err, errlen, "unix socket path too long");
        return -1;
    }
    strcpy(sa.sun_path, c->cfg.unix_path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(err, errlen, "socket: %s", strerror(errno));
        return -1;
    }
    fd_register(fd);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0 && errno != EINPROGRESS &&
        errno != EAGAIN) {
        int e = errno;
        snprintf(err, errlen, "Error %d connecting to unix socket: %s. %s.", e,
                 c->cfg.unix_path, strerror(e));
        fd_close(fd);
        return -1;
    }
    return fd;
}

/* A non-blocking TCP socket connecting to the first IPv4 address of res (else its
 * first): "localhost" often lists ::1 first, and redis binds 127.0.0.1. */
static int
open_tcp(bio_client *c, struct addrinfo *res, char *err, size_t errlen)
{
    struct addrinfo *ai = res;
    for (struct addrinfo *p = res; p; p = p->ai_next) {
        if (p->ai_family == AF_INET) {
            ai = p;
            break;
        }
    }
    int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(err, errlen, "socket: %s", strerror(errno));
        return -1;
    }
    fd_register(fd);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
    if (connect(fd, ai->ai_addr, ai->ai_addrlen) < 0 && errno != EINPROGRESS) {
        int e = errno;
        snprintf(err, errlen, "Error %d connecting to %s:%d. %s.", e, c->cfg.host,
                 c->cfg.port, strerror(e));
        fd_close(fd);
        return -1;
    }
    return fd;
}

/* Start connecting to these addresses (the result of a resolution). */
static void
connect_to(bio_client *c, int gai, struct addrinfo *res, double now)
{
    char err[BIO_ERRLEN];
    if (gai != 0) {
        snprintf(err, sizeof err, "Error connecting to %s:%d: %s", c->cfg.host, c->cfg.port,
                 gai_strerror(gai));
        connection_failed(c, err, now);
        return;
    }
    int fd = open_tcp(c, res, err, sizeof err);
    if (fd < 0) {
        connection_failed(c, err, now);
        return;
    }
    c->fd = fd;
    c->state = ST_CONNECTING;
    epoll_set(c, 1);  /* writable once connected */
}

/* ------------------------------------------------------------------ resolution */

static void
wake_io_thread_locked_then_unlock(void)
{
    int wake = !E.wake_pending;
    E.wake_pending = 1;
    pthread_mutex_unlock(&E.lock);
    if (wake) {
        uint64_t one = 1;
        while (write(E.wake_fd, &one, sizeof one) < 0 && errno == EINTR) {
        }
    }
}

static void *
resolver_main(void *arg)
{
    resolve_job *j = arg;
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    j->gai = getaddrinfo(j->host, j->port, &hints, &j->res);
    pthread_mutex_lock(&E.lock);
    j->next = E.resolved;
    E.resolved = j;
    atomic_fetch_sub(&E.resolvers, 1);
    wake_io_thread_locked_then_unlock();
    return NULL;
}

static void
job_free(resolve_job *j)
{
    if (j->res != NULL) {
        freeaddrinfo(j->res);
    }
    free(j->host);
    free(j);
}

/* Resolve c's host on a thread of its own; c waits in ST_RESOLVING (bounded by its
 * hs_deadline) unless it already waits for one. 0, or -1 with err set. */
static int
start_resolving(bio_client *c, char *err, size_t errlen)
{
    c->state = ST_RESOLVING;
    if (c->resolving != NULL) {
        return 0;  /* an earlier attempt's resolution is still running: wait for it */
    }
    if (atomic_fetch_add(&E.resolvers, 1) >= MAX_RESOLVERS) {
        atomic_fetch_sub(&E.resolvers, 1);
        snprintf(err, errlen, "Error connecting to %s:%d: too many name resolutions in "
                 "progress", c->cfg.host, c->cfg.port);
        return -1;
    }
    resolve_job *j = calloc(1, sizeof *j);
    if (j == NULL || (j->host = strdup(c->cfg.host)) == NULL) {
        free(j);
        atomic_fetch_sub(&E.resolvers, 1);
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    snprintf(j->port, sizeof j->port, "%d", c->cfg.port);
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_t t;
    int rc = pthread_create(&t, &attr, resolver_main, j);
    pthread_attr_destroy(&attr);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        job_free(j);
        atomic_fetch_sub(&E.resolvers, 1);
        snprintf(err, errlen, "Error connecting to %s:%d: cannot start a resolver: %s",
                 c->cfg.host, c->cfg.port, strerror(rc));
        return -1;
    }
    c->resolving = j;
    return 0;
}

/* Resolutions that finished: give each to the client still waiting for it. */
static void
take_resolved(resolve_job *j, double now)
{
    while (j) {
        resolve_job *next = j->next;
        for (bio_client *c = E.clients; c; c = c->next) {
            if (c->resolving != j) {
                continue;
            }
            c->resolving = NULL;
            if (c->state == ST_RESOLVING) {
                connect_to(c, j->gai, j->res, now);
            }
            break;
        }
        job_free(j);  /* nobody waits any more: dropped */
        j = next;
    }
}

static void
start_connect(bio_client *c, double now)
{
    char err[BIO_ERRLEN];
    c->hs_deadline = now + c->cfg.connect_timeout;
    if (c->cfg.unix_path) {
        int fd = open_unix(c, err, sizeof err);
        if (fd < 0) {
            connection_failed(c, err, now);
            return;
        }
        c->fd = fd;
        c->state = ST_CONNECTING;
        epoll_set(c, 1);
        return;
    }
    /* A numeric address needs no resolving (and getaddrinfo does not block then). */
    char port[16];
    snprintf(port, sizeof port, "%d", c->cfg.port);
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_NUMERICHOST | AI_NUMERICSERV};
    struct addrinfo *res = NULL;
    int gai = getaddrinfo(c->cfg.host, port, &hints, &res);
    if (gai == 0) {
        connect_to(c, 0, res, now);
        freeaddrinfo(res);
        return;
    }
    if (start_resolving(c, err, sizeof err) < 0) {
        connection_failed(c, err, now);
    }
}

static void
connect_ready(bio_client *c, double now)
{
    int soerr = 0;
    socklen_t len = sizeof soerr;
    if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &soerr, &len) < 0) {
        soerr = errno;
    }
    if (soerr != 0) {
        char err[BIO_ERRLEN];
        if (c->cfg.unix_path) {
            snprintf(err, sizeof err, "Error %d connecting to unix socket: %s. %s.", soerr,
                     c->cfg.unix_path, strerror(soerr));
        }
        else {
            snprintf(err, sizeof err, "Error %d connecting to %s:%d. %s.", soerr,
                     c->cfg.host, c->cfg.port, strerror(soerr));
        }
        connection_failed(c, err, now);
        return;
    }
    epoll_set(c, 0);
    start_handshake(c, now);
}

/* ------------------------------------------------------------------ I/O */

static void
flush_out(bio_client *c, double now)
{
    if (c->fd < 0 || c->state == ST_CONNECTING || c->out_pos >= c->out_len) {
        return;
    }
    int wrote = 0;
    while (c->out_pos < c->out_len) {
        ssize_t n = send(c->fd, c->out + c->out_pos, c->out_len - c->out_pos, MSG_NOSIGNAL);
        if (n > 0) {
            c->out_pos += (size_t)n;
            wrote = 1;
            continue;
        }
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            break;
        }
        char err[BIO_ERRLEN];
        snprintf(err, sizeof err, "Error while writing to the socket: %s", strerror(errno));
        connection_failed(c, err, now);
        return;
    }
    if (wrote) {
        atomic_fetch_add(&c->counters.batches, 1);
    }
    if (c->out_secret > 0 && c->out_pos >= c->out_secret) {
        explicit_bzero(c->out, c->out_secret);  /* AUTH has left */
        c->out_secret = 0;
    }
    if (c->out_pos >= c->out_len) {
        c->out_pos = c->out_len = 0;
        if (c->want_out) {
            epoll_set(c, 0);
        }
    }
    else if (!c->want_out) {
        epoll_set(c, 1);
    }
}

static int
reply_is_error(void *reply)
{
    return ((redisReply *)reply)->type == REDIS_REPLY_ERROR;
}

/* One reply arrived: give it to the slot at the front of the FIFO. */
static void
on_reply(bio_client *c, void *reply, double now)
{
    slot *s = ring_front(c);
    if (s == NULL) {
        /* Nothing was asked: the stream cannot be trusted any more. */
        freeReplyObject(reply);
        connection_failed(c, "Protocol error: unexpected reply", now);
        return;
    }
    if (s->kind == SLOT_HANDSHAKE && reply_is_error(reply) &&
        strstr(((redisReply *)reply)->str, "without any password configured") != NULL) {
        /* A password given to a server that requires none: redis-py connects
         * anyway, and so do we. */
        ((redisReply *)reply)->type = REDIS_REPLY_STATUS;
    }
    if (s->kind == SLOT_HANDSHAKE && ((redisReply *)reply)->type != REDIS_REPLY_STATUS) {
        /* AUTH and SELECT answer +OK, PING +PONG: anything else is a refusal, or not
         * a Redis server. */
        char err[BIO_ERRLEN];
        if (reply_is_error(reply)) {
            snprintf(err, sizeof err, "%.*s", (int)((redisReply *)reply)->len,
                     ((redisReply *)reply)->str);
        }
        else {
            snprintf(err, sizeof err, "Protocol error: unexpected reply to the handshake");
        }
        freeReplyObject(reply);
        ring_pop(c);  /* its other replies will never be read */
        connection_failed(c, err, now);
        return;
    }
    if (s->req) {
        s->req->replies[s->req->nrep++] = reply;
    }
    else {
        freeReplyObject(reply);
    }
    if (--s->remaining > 0) {
        return;
    }
    bio_req *r = s->req;
    int kind = s->kind;
    ring_pop(c);
    if (kind == SLOT_STATS) {
        c->stats_in_flight = 0;
    }
    if (r) {
        complete(r, BIO_OK, NULL);
    }
    if (kind == SLOT_HANDSHAKE) {
        handshake_done(c, now);
    }
    else if (c->close_req && c->r_count == 0) {
        finish_close(c, now);  /* the last reply a disconnect() was waiting for */
    }
    else {
        pump_waiting(c, now);  /* room in the pipeline */
    }
}

static void
do_read(bio_client *c, double now)
{
    char buf[READ_CHUNK];
    size_t total = 0;
    while (c->fd >= 0 && total < MAX_READ_PER_PASS) {
        ssize_t n = recv(c->fd, buf, sizeof buf, 0);
        if (n > 0) {
            total += (size_t)n;
            if (c->r_count == 0) {
                /* Nothing was asked (a middlebox, a broken server): whole or partial,
                 * those bytes would glue onto the next reply. */
                connection_failed(c, "Protocol error: unexpected reply", now);
                return;
            }
            /* What the reply will cost is checked before hiredis builds it. */
            int scan = resp_scan_feed(&c->scan, buf, (size_t)n, c->cfg.max_reply);
            if (scan != RESP_SCAN_OK) {
                char err[BIO_ERRLEN];
                if (scan == RESP_SCAN_TOO_BIG) {
                    snprintf(err, sizeof err, "Protocol error: reply larger than "
                             "max_reply_bytes (%llu)", c->cfg.max_reply);
                }
                else {
                    snprintf(err, sizeof err, "Protocol error: invalid reply");
                }
                connection_failed(c, err, now);
                return;
            }
            if (redisReaderFeed(c->reader, buf, (size_t)n) != REDIS_OK) {
                connection_failed(c, "Protocol error", now);
                return;
            }
            for (;;) {
                void *reply = NULL;
                if (redisReaderGetReply(c->reader, &reply) != REDIS_OK) {
                    connection_failed(c, "Protocol error", now);
                    return;
                }
                if (reply == NULL) {
                    break;
                }
                on_reply(c, reply, now);
                if (c->fd < 0 || c->reader == NULL) {
                    return;  /* the reply closed or failed the connection */
                }
            }
            if (c->r_count == 0 && resp_scan_busy(&c->scan)) {
                /* The start of a reply nobody asked for came with the last one owed. */
                connection_failed(c, "Protocol error: unexpected reply", now);
                return;
            }
            if ((size_t)n < sizeof buf) {
                return;
            }
            continue;
        }
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            return;
        }
        char err[BIO_ERRLEN];
        if (n == 0) {
            snprintf(err, sizeof err, "Connection closed by server.");
        }
        else {
            snprintf(err, sizeof err, "Error while reading from the socket: %s",
                     strerror(errno));
        }
        connection_failed(c, err, now);
        return;
    }
}

/* ------------------------------------------------------------------ routing */

static void
route(bio_req *r, double now)
{
    bio_client *c = r->client;
    if (!c->registered) {
        c->registered = 1;
        bio_client_incref(c);
        c->next = E.clients;
        E.clients = c;
    }
    /* How long it may wait to be sent. A CONNECT: connect_timeout. A command waits
     * for a connection (each attempt ends within connect_timeout) or for room in the
     * pipeline (the requests ahead end within their socket_timeout); the deadline
     * below only bounds the sum of both. Once sent, its reply is due within
     * socket_timeout (send_request). */
    r->deadline = now + c->cfg.connect_timeout +
                  (r->op == BIO_OP_CONNECT ? 0 : c->cfg.socket_timeout);
    switch (r->op) {
    case BIO_OP_FAIL:
        complete(r, BIO_EFAILED, NULL);  /* its err was set by its maker */
        return;
    case BIO_OP_CLOSE:
        fail_waiting(c, BIO_ECLOSED, "disconnected");
        if (c->close_req) {  /* already closing: finish with the first */
            complete(r, BIO_OK, NULL);
            return;
        }
        c->close_req = r;
        if (c->state == ST_READY) {
            /* Fail the requests in flight now (their replies are discarded), send
             * the statistics, and close once their reply arrives. */
            for (size_t i = 0; i < c->r_count; i++) {
                slot *s = &c->ring[(c->r_head + i) % c->r_cap];
                if (s->req) {
                    complete(s->req, BIO_ECLOSED, "disconnected");
                    s->req = NULL;
                }
            }
            size_t before = c->r_count;
            append_stats_flush(c, now);
            if (c->r_count > before) {
                c->close_deadline = now + c->cfg.socket_timeout;
                return;
            }
        }
        finish_close(c, now);
        return;
    case BIO_OP_CONNECT:
        if (c->state == ST_READY && c->close_req == NULL) {
            complete(r, BIO_OK, NULL);
            return;
        }
        if (c->state == ST_BACKOFF && c->backoff_until > r->deadline) {
            complete(r, BIO_ECONN, c->last_err);  /* no attempt before its deadline */
            return;
        }
        break;  /* an attempt is made at once, or when the backoff ends */
    default:
        if (c->state == ST_READY && c->close_req == NULL && c->wait_head == NULL &&
            c->r_count < MAX_PIPELINE) {
            send_request(c, r, now);
            return;
        }
        if (c->state == ST_BACKOFF && c->unreachable && r->op == BIO_OP_CMD) {
            /* Fail fast while the server is known to be unreachable (the last attempt
             * to connect failed). After a working connection dropped, requests wait
             * for the attempt the backoff ends with. */
            complete(r, BIO_ECONN, c->last_err);
            return;
        }
        break;
    }
    /* Wait, in order: for the connection (made now if nothing is under way), for
     * room in the pipeline, or for the disconnect() under way to finish. */
    wait_push(c, r);
    if (c->state == ST_IDLE) {
        start_connect(c, now);
    }
}

/* ------------------------------------------------------------------ timers */

static double
client_timers(bio_client *c, double now)
{
    double next = INFINITY;
    /* Requests waiting for a connection or for room. */
    bio_req **pp = &c->wait_head, *prev = NULL;
    while (*pp) {
        bio_req *r = *pp;
        if (r->op == BIO_OP_CONNECT && c->close_req != NULL) {
            /* Behind a disconnect(): its connect_timeout starts with its attempt
             * (finish_close), the close itself being bounded by socket_timeout. */
            prev = r;
            pp = &r->next;
            continue;
        }
        if (r->deadline <= now) {
            *pp = r->next;
            if (c->wait_tail == r) {
                c->wait_tail = prev;
            }
            complete(r, BIO_ETIMEOUT, r->op == BIO_OP_CONNECT
                     ? "Timeout connecting to server" : "Timeout waiting for a connection");
            continue;
        }
        next = fmin(next, r->deadline);
        prev = r;
        pp = &r->next;
    }
    /* Replies due: one not complete by its deadline means the connection is stalled
     * (or trickling): every request on it fails and it is replaced. */
    slot *front = ring_front(c);
    if (front != NULL && c->state == ST_READY) {
        if (front->deadline <= now) {
            for (size_t i = 0; i < c->r_count; i++) {
                slot *s = &c->ring[(c->r_head + i) % c->r_cap];
                if (s->req != NULL && s->deadline <= now) {
                    complete(s->req, BIO_ETIMEOUT, "Timeout reading from socket");
                    s->req = NULL;
                }
            }
            connection_failed(c, "Timeout reading from socket", now);
            return now;
        }
        next = fmin(next, front->deadline);
    }
    switch (c->state) {
    case ST_RESOLVING:
    case ST_CONNECTING:
    case ST_HANDSHAKE:
        if (c->hs_deadline <= now) {
            connection_failed(c, "Timeout connecting to server", now);
            return now;
        }
        next = fmin(next, c->hs_deadline);
        break;
    case ST_BACKOFF:
        if (c->backoff_until <= now) {
            c->state = ST_IDLE;
            if (c->wait_head != NULL) {
                start_connect(c, now);
                return now;
            }
        }
        else {
            next = fmin(next, c->backoff_until);
        }
        break;
    case ST_READY:
        if (c->next_flush <= now) {
            append_stats_flush(c, now);
            c->next_flush = now + STATS_FLUSH_EVERY;
        }
        next = fmin(next, c->next_flush);
        break;
    }
    if (c->close_req) {
        if (c->close_deadline <= now) {
            finish_close(c, now);
        }
        else {
            next = fmin(next, c->close_deadline);
        }
    }
    return next;
}

/* ------------------------------------------------------------------ thread */

static void
take_submitted(double now)
{
    uint64_t v;
    while (read(E.wake_fd, &v, sizeof v) < 0 && errno == EINTR) {
    }
    pthread_mutex_lock(&E.lock);
    bio_req *r = E.head;
    resolve_job *resolved = E.resolved;
    E.head = E.tail = NULL;
    E.resolved = NULL;
    E.wake_pending = 0;
    pthread_mutex_unlock(&E.lock);
    take_resolved(resolved, now);
    while (r) {
        bio_req *next = r->next;
        route(r, now);
        r = next;
    }
}

/* A client nobody holds any more (its cache was freed) is let go once nothing is
 * left on it; a ready one sends its last statistics first. */
static int
client_finished(bio_client *c, double now)
{
    if (atomic_load(&c->refs) != 1 || c->wait_head != NULL || c->close_req != NULL) {
        return 0;
    }
    if (c->r_count == 0 && c->state == ST_READY && c->counters.pending_hits +
        c->counters.pending_misses > 0) {
        append_stats_flush(c, now);
        flush_out(c, now);
    }
    return c->r_count == 0;
}

static void *
io_main(void *arg)
{
    (void)arg;
    pthread_setname_np(pthread_self(), "bruno-io");
    struct epoll_event events[64];
    int timeout_ms = 0;
    for (;;) {
        int n = epoll_wait(E.epfd, events, 64, timeout_ms);
        double now = bio_now();
        for (int i = 0; i < n; i++) {
            bio_client *c = events[i].data.ptr;
            if (c == NULL) {
                take_submitted(now);
                continue;
            }
            if (c->fd < 0) {
                continue;
            }
            uint32_t ev = events[i].events;
            if (c->state == ST_CONNECTING) {
                if (ev & (EPOLLOUT | EPOLLERR | EPOLLHUP)) {
                    connect_ready(c, now);
                }
                continue;
            }
            if (ev & (EPOLLIN | EPOLLERR | EPOLLHUP)) {
                do_read(c, now);
            }
        }
        /* Write what this pass produced (one write per connection), run timers,
         * and let go of clients nobody uses any more. */
        double next = INFINITY;
        bio_client **pp = &E.clients;
        while (*pp) {
            bio_client *c = *pp;
            flush_out(c, now);
            next = fmin(next, client_timers(c, now));
            flush_out(c, now);
            if (client_finished(c, now)) {
                *pp = c->next;
                close_socket(c);
                bio_client_decref(c);
                continue;
            }
            pp = &c->next;
        }
        if (isinf(next)) {
            timeout_ms = 1000;
        }
        else {
            double ms = ceil((next - bio_now()) * 1000.0);
            timeout_ms = ms < 0 ? 0 : ms > 1000 ? 1000 : (int)ms;
        }
    }
    return NULL;
}

static int
engine_start(void)
{
    pid_t pid = bio_pid();
    if (E.started && E.pid == pid) {
        return 0;
    }
    if (E.started) {
        /* A forked child: the parent's threads do not exist here. Start afresh; the
         * parent's clients, queues and resolutions are left alone (never touched
         * again), their descriptors already closed at the fork (fork_child). */
        pthread_mutex_init(&E.lock, NULL);
        E.wake_fd = E.epfd = -1;
        E.head = E.tail = NULL;
        E.resolved = NULL;
        E.wake_pending = 0;
        E.clients = NULL;
        atomic_store(&E.resolvers, 0);
        E.started = 0;
    }
    if (E.epfd < 0 && (E.epfd = epoll_create1(EPOLL_CLOEXEC)) >= 0) {
        fd_register(E.epfd);
    }
    if (E.wake_fd < 0 && (E.wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) >= 0) {
        fd_register(E.wake_fd);
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
        if (E.epfd >= 0 && epoll_ctl(E.epfd, EPOLL_CTL_ADD, E.wake_fd, &ev) < 0) {
            fd_close(E.wake_fd);  /* (kept, if made, for the next try otherwise) */
            E.wake_fd = -1;
        }
    }
    if (E.epfd < 0 || E.wake_fd < 0) {
        return -1;
    }
    /* The thread must not take signals meant for the interpreter's main thread. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    int rc = pthread_create(&E.thread, &attr, io_main, NULL);
    pthread_attr_destroy(&attr);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        errno = rc;
        return -1;
    }
    E.pid = pid;
    E.started = 1;
    return 0;
}

int
bio_submit(bio_req *r)
{
    r->next = NULL;
    return bio_submit_list(r, r);
}

int
bio_submit_list(bio_req *head, bio_req *tail)
{
    /* Callers are serialised by the GIL, so starting the engine needs no lock. */
    if (engine_start() < 0) {
        return -1;
    }
    tail->next = NULL;
    pthread_mutex_lock(&E.lock);
    if (E.tail) {
        E.tail->next = head;
    }
    else {
        E.head = head;
    }
    E.tail = tail;
    wake_io_thread_locked_then_unlock();
    return 0;
}
