/* io_engine.c: the background I/O thread. No Python in this file (see io.h).
 *
 * Threads: the submitters (Python threads) touch only the submit queue (E.lock),
 * the bridges' queues (bridge->lock) and the atomics; resolver threads (one per name
 * resolution in progress) touch only their job and, to hand it back, E.lock;
 * everything else in a client belongs to the I/O thread (io_conn.c). */
#include "io_internal.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
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

bio_engine E = {.lock = PTHREAD_MUTEX_INITIALIZER, .wake_fd = -1, .epfd = -1};

/* Every descriptor this file opens (sockets, epoll, eventfds), so that a forked child
 * can close the parent's: otherwise the child would keep the parent's connections to
 * Redis open for as long as it lives (the parent's disconnect() then ends nothing).
 * Locked around fork() by the atfork handlers, so the child sees a whole list. */
static struct {
    pthread_mutex_t lock;
    int *fds;
    size_t n, cap;
} FDS = {.lock = PTHREAD_MUTEX_INITIALIZER};

void
io_fd_register(int fd)
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
void
io_fd_close(int fd)
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
    io_fd_register(b->efd);
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
            io_fd_close(b->efd);
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
    if (cfg->tls != NULL) {
        bio_tls_incref(cfg->tls);
    }
    if (cfg->sentinels != NULL) {
        bio_sentinels_incref(cfg->sentinels);
        c->cfg.cluster = BIO_CLUSTER_OFF;  /* (a Sentinel service is one server) */
    }
    int startup = io_cluster_copy_startup(&c->cfg, cfg);
    if (startup < 0 || (cfg->host && !c->cfg.host) || (cfg->unix_path && !c->cfg.unix_path) ||
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
        if (c->ssl != NULL) {
            SSL_free(c->ssl);  /* no close_notify: this may be any thread */
        }
        if (c->fd >= 0) {
            io_fd_close(c->fd);
        }
        bio_tls_decref(c->cfg.tls);
        io_sentinel_watch_stop(c);
        bio_sentinels_decref(c->cfg.sentinels);
        io_cluster_free(c);
        free(c->track_keys);  /* (io_track_free took the tracker, in the I/O thread) */
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
    r->route_slot = r->next_route = -1;
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
    free(r->slots);
    free(r->unit_map);
    free(r->fan);
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

void
io_deliver(bio_req *r)
{
    bridge_push(r->bridge, r);  /* (its buf is the loop's to read) */
}

/* Finish a request: its bridge's loop will pick it up. */
void
io_complete(bio_req *r, int status, const char *msg)
{
    if (r->whole != NULL) {
        io_fanout_part_done(r, status, msg);  /* a part: gathered into its whole */
        return;
    }
    r->status = status;
    if (status != BIO_OK) {
        if (msg != NULL) {  /* (NULL: r->err already says it) */
            snprintf(r->err, sizeof r->err, "%s", msg);
        }
        if (r->client != NULL) {  /* (a LISTEN holds none) */
            atomic_fetch_add(&r->client->counters.errors, 1);
            if (status == BIO_ETIMEOUT) {
                atomic_fetch_add(&r->client->counters.timeouts, 1);
            }
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

/* ------------------------------------------------------------------ resolution */

void
io_wake_unlock(void)
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
    if (j->sentinels != NULL) {
        io_sentinel_ask(j);  /* the sentinels name the host, then it is resolved */
    }
    else {
        struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
        j->gai = getaddrinfo(j->host, j->port, &hints, &j->res);
    }
    pthread_mutex_lock(&E.lock);
    j->next = E.resolved;
    E.resolved = j;
    atomic_fetch_sub(&E.resolvers, 1);
    io_wake_unlock();
    return NULL;
}

static void
job_free(resolve_job *j)
{
    if (j->res != NULL) {
        freeaddrinfo(j->res);
    }
    bio_sentinels_decref(j->sentinels);
    free(j->host);
    free(j);
}

/* Resolve c's host on a thread of its own; c waits in ST_RESOLVING (bounded by its
 * hs_deadline) unless it already waits for one. 0, or -1 with err set. */
int
io_start_resolving(bio_client *c, char *err, size_t errlen)
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
    if (c->cfg.sentinels != NULL) {
        /* It ends a little before the attempt does, to say why itself. */
        j->sentinels = c->cfg.sentinels;
        bio_sentinels_incref(j->sentinels);
        j->deadline = c->hs_deadline - 0.05 * c->cfg.connect_timeout;
        j->first = c->sentinel_first;
    }
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
            if (c->state == ST_RESOLVING && j->sentinels != NULL) {
                io_sentinel_resolved(c, j, now);
            }
            else if (c->state == ST_RESOLVING) {
                io_connect_to(c, j->gai, j->res, now);
            }
            break;
        }
        job_free(j);  /* nobody waits any more: dropped */
        j = next;
    }
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
        io_route(r, now);
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
        io_append_stats_flush(c, now);
        io_flush_out(c, now);
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
                    io_connect_ready(c, now);
                }
                continue;
            }
            if (c->state == ST_TLS) {
                io_tls_step(c, now);
                continue;
            }
            if ((ev & (EPOLLIN | EPOLLERR | EPOLLHUP)) ||
                ((ev & EPOLLOUT) && c->tls_read_wants_out)) {
                io_do_read(c, now);
            }
        }
        /* Write what this pass produced (one write per connection), run timers,
         * and let go of clients nobody uses any more. */
        double next = INFINITY;
        bio_client **pp = &E.clients;
        while (*pp) {
            bio_client *c = *pp;
            if (io_tls_pending(c) && c->state != ST_TLS) {
                io_do_read(c, now);  /* decrypted bytes left from the last pass's bound */
            }
            io_sentinel_poll(c, now);  /* a failover announced by the watcher */
            io_flush_out(c, now);
            next = fmin(next, io_client_timers(c, now));
            if (io_tls_pending(c)) {
                next = now;
            }
            io_flush_out(c, now);
            if (client_finished(c, now)) {
                *pp = c->next;
                io_close_socket(c);
                io_cluster_release_children(c);  /* (a cluster's: let go in turn) */
                io_track_free(c);  /* (its tracker: let go in turn) */
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
        io_fd_register(E.epfd);
    }
    if (E.wake_fd < 0 && (E.wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) >= 0) {
        io_fd_register(E.wake_fd);
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
        if (E.epfd >= 0 && epoll_ctl(E.epfd, EPOLL_CTL_ADD, E.wake_fd, &ev) < 0) {
            io_fd_close(E.wake_fd);  /* (kept, if made, for the next try otherwise) */
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
    io_wake_unlock();
    return 0;
}
