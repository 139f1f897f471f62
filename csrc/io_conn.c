/* io_conn.c: one client's connection, run by the I/O thread (see io_internal.h).
 * No Python in this file. */
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

/* connect_timeout passed in the TLS handshake (the connection's, or a connect()'s). */
#define TLS_TIMEOUT "Timeout connecting to server (no TLS handshake: is it a TLS port?)"

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

/* The counters a connection's work is counted in: its client's, or for a cluster's
 * node its parent's (what RedisCache.stats() reads). */
static bio_counters *
counters_of(bio_client *c)
{
    return c->parent != NULL ? &c->parent->counters : &c->counters;
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
    atomic_fetch_add(&counters_of(c)->commands, (unsigned long long)ncmd);
    return 0;
}

/* Cluster, after an -ASK: each command of r preceded by ASKING (whose +OK replies
 * on_reply drops), once. */
static void
send_asking(bio_client *c, bio_req *r)
{
    static const char asking[] = "*1\r\n$6\r\nASKING\r\n";
    size_t n = (size_t)r->ncmd;
    size_t *off = malloc((n + 1) * sizeof *off);
    char *buf = malloc(r->len + n * (sizeof asking - 1));
    if (off == NULL || buf == NULL || io_cluster_commands(r->buf, r->len, off, r->ncmd) < 0) {
        free(off);
        free(buf);
        io_complete(r, BIO_ECONN, off && buf ? "Protocol error: a request that is not RESP"
                                             : "out of memory");
        return;
    }
    size_t len = 0;
    for (size_t k = 0; k < n; k++) {
        memcpy(buf + len, asking, sizeof asking - 1);
        len += sizeof asking - 1;
        memcpy(buf + len, r->buf + off[k], off[k + 1] - off[k]);
        len += off[k + 1] - off[k];
    }
    r->asking = 0;
    if (send_slot(c, buf, len, 2 * r->ncmd, r, SLOT_ASKING, r->deadline) < 0) {
        io_complete(r, BIO_ECONN, "out of memory");
    }
    free(off);
    free(buf);
}

/* Put a user request on the connection (its bytes are then ours to drop). Its reply
 * is due socket_timeout from now, however long it waited to be sent. A cluster's
 * request goes to its slot's node instead; a node's keeps its bytes (a redirect
 * sends them again) and its reply is due by the request's cluster deadline at the
 * latest. */
static void
send_request(bio_client *c, bio_req *r, double now)
{
    if (io_cluster_routes(c, r)) {
        io_cluster_dispatch(c, r, now);
        return;
    }
    r->deadline = now + c->cfg.socket_timeout;
    if (c->parent != NULL && r->cluster_deadline < r->deadline) {
        r->deadline = r->cluster_deadline;
    }
    r->sent = 1;
    if (r->asking) {
        send_asking(c, r);
        return;
    }
    if (send_slot(c, r->buf, r->len, r->ncmd, r, SLOT_USER, r->deadline) < 0) {
        io_complete(r, BIO_ECONN, "out of memory");
        return;
    }
    if (c->parent == NULL) {
        free(r->buf);
        r->buf = NULL;
    }
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
        io_complete(r, status, msg);
        r = next;
    }
}

static void
fail_inflight(bio_client *c, int status, const char *msg)
{
    while (c->r_count) {
        slot *s = ring_front(c);
        if (s->req) {
            io_complete(s->req, status, msg);
        }
        ring_pop(c);
    }
}

/* Fail the requests sent on a connection that stays: their FIFO entries stay, emptied,
 * to swallow the replies still owed. */
static void
fail_sent(bio_client *c, int status, const char *msg)
{
    for (size_t i = 0; i < c->r_count; i++) {
        slot *s = &c->ring[(c->r_head + i) % c->r_cap];
        if (s->req) {
            io_complete(s->req, status, msg);
            s->req = NULL;
        }
    }
}

/* Send what waits, in order, while the pipeline has room (ready connections only). */
static void
pump_waiting(bio_client *c, double now)
{
    while (c->wait_head != NULL && c->state == ST_READY && c->close_req == NULL &&
           c->r_count < MAX_PIPELINE && !c->track_hold) {
        bio_req *r = c->wait_head;
        c->wait_head = r->next;
        if (c->wait_head == NULL) {
            c->wait_tail = NULL;
        }
        if (r->op == BIO_OP_CONNECT) {
            io_complete(r, BIO_OK, NULL);
        }
        else {
            send_request(c, r, now);
        }
    }
}

/* A flush's reply arrived, or its connection went: the owner may flush again, and a
 * cluster's disconnect() waiting for it can finish. Only the node carrying the flush
 * ends it: any other node's connection closing says nothing about it. */
static void
stats_flush_ended(bio_client *t)
{
    int carried = t->stats_in_flight;
    t->stats_in_flight = 0;
    bio_client *owner = t->parent;
    if (carried && owner != NULL && owner->stats_in_flight) {
        owner->stats_in_flight = 0;
        if (owner->close_req != NULL) {
            owner->close_deadline = 0;  /* (finished by its timers, this pass) */
        }
    }
}

/* Drop the socket and what was being read or written on it (its reader's memory
 * included); the requests in flight are the caller's to fail. */
void
io_close_socket(bio_client *c)
{
    io_tls_end(c);  /* before its socket closes */
    if (c->fd >= 0) {
        epoll_ctl(E.epfd, EPOLL_CTL_DEL, c->fd, NULL);
        io_fd_close(c->fd);
        c->fd = -1;
    }
    if (c->reader) {
        redisReaderFree(c->reader);
        c->reader = NULL;
    }
    resp_scan_init(&c->scan);
    stats_flush_ended(c);
    if (c->push && c->owner != NULL) {
        io_track_lost(c->owner, 0);  /* the tracker's connection went */
    }
    if (io_track_wanted(c)) {
        io_track_lost(c, 1);  /* the server's tracking of this connection went with it */
    }
    c->track_hold = 0;  /* (what waits, waits for the next connection) */
    io_cluster_reset(c);
    if (c->out_secret > 0) {
        explicit_bzero(c->out, c->out_secret);
        c->out_secret = 0;
    }
    c->out_len = c->out_pos = 0;
    c->want_out = 0;
    atomic_store(&c->counters.connected, 0);
}

void
io_client_reset(bio_client *c)
{
    io_close_socket(c);
    fail_inflight(c, BIO_ECLOSED, "disconnected");
    c->state = ST_IDLE;
    c->backoff = 0;
    if (c->tracker != NULL) {  /* (its tracker too: made again by the next use) */
        io_client_reset(c->tracker);
    }
}

static void
finish_close(bio_client *c, double now)
{
    bio_req *r = c->close_req;
    c->close_req = NULL;
    c->stats_wait = 0;
    io_cluster_close_children(c);
    io_track_unlisten(c, BIO_ECLOSED);  /* (a coherent cache listens again) */
    io_client_reset(c);  /* (a new start) */
    c->map_wanted = 0;  /* (a cluster's: not asked again until used again) */
    io_sentinel_watch_stop(c);  /* (started again by the next attempt) */
    if (r) {
        io_complete(r, BIO_OK, NULL);
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
    if (!was_ready && c->close_req == NULL && now < c->hs_deadline &&
        io_cluster_next_startup(c)) {
        /* A cluster's attempt before any map: the next startup node, within the
         * same connect_timeout (what waits for the attempt keeps waiting). */
        io_close_socket(c);
        fail_inflight(c, BIO_ECONN, msg);  /* (the handshake's entry, if any) */
        c->keep_deadline = 1;
        start_connect(c, now);
        return;
    }
    if (c->parent != NULL) {
        c->parent->map_wanted = 1;  /* a node failed: the cluster may have changed */
        c->suspect = 1;
    }
    io_cluster_next_node(c);  /* a cluster's own connection: another node next */
    io_close_socket(c);
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

void
io_connection_failed(bio_client *c, const char *msg, double now)
{
    connection_failed(c, msg, now);
}

/* Where a client's statistics go: its own connection, or in a cluster the child of the
 * node serving the statistics key's slot (NULL: none ready; a connection is started). */
static bio_client *
stats_target(bio_client *c, double now)
{
    if (!c->is_cluster || c->parent != NULL || c->map == NULL) {
        return c->state == ST_READY ? c : NULL;
    }
    int node = io_slot_map_node(c->map, bio_key_slot(c->cfg.stats_key,
                                                     c->cfg.stats_key_len));
    if (node < 0) {
        c->map_wanted = 1;
        return NULL;
    }
    bio_client *t = io_cluster_child(c, c->map->nodes[node].host, c->map->nodes[node].port);
    if (t == NULL || t->state != ST_READY || t->close_req != NULL) {
        if (t != NULL && t->state == ST_IDLE) {
            start_connect(t, now);  /* (ready for the next flush, or the close's) */
        }
        return NULL;
    }
    return t;
}

void
io_append_stats_flush(bio_client *c, double now)
{
    if (c->stats_in_flight) {
        return;  /* one at a time: a stalled server does not pile them up */
    }
    bio_client *t = stats_target(c, now);
    if (t == NULL) {
        return;  /* (kept for the next flush) */
    }
    unsigned long long hits = atomic_exchange(&c->counters.pending_hits, 0);
    unsigned long long misses = atomic_exchange(&c->counters.pending_misses, 0);
    if (hits == 0 && misses == 0) {
        return;
    }
    resp_buf b;
    resp_buf_init(&b);
    char num[32];
    const char *argv[4] = {"HINCRBY", c->cfg.stats_key, NULL, num};
    size_t argvlen[4] = {7, c->cfg.stats_key_len, 0, 0};
    if (hits) {
        argv[2] = "hits";
        argvlen[2] = 4;
        argvlen[3] = (size_t)snprintf(num, sizeof num, "%llu", hits);
        resp_command(&b, 4, argv, argvlen);
    }
    if (misses) {
        argv[2] = "misses";
        argvlen[2] = 6;
        argvlen[3] = (size_t)snprintf(num, sizeof num, "%llu", misses);
        resp_command(&b, 4, argv, argvlen);
    }
    if (!b.oom) {
        /* Due like any request: a server that never answers replaces the connection
         * (and a dropped cache's client is not kept waiting for it). */
        if (send_slot(t, b.data, b.len, b.ncmd, NULL, SLOT_STATS,
                      now + c->cfg.socket_timeout) == 0) {
            c->stats_in_flight = t->stats_in_flight = 1;
            t->stats_hits_sent = hits;
            t->stats_misses_sent = misses;
            b.oom = 0;
        }
        else {
            b.oom = 1;
        }
    }
    if (b.oom) {  /* not sent: given back for the next flush */
        atomic_fetch_add(&c->counters.pending_hits, hits);
        atomic_fetch_add(&c->counters.pending_misses, misses);
    }
    resp_buf_free(&b);
}

/* A cluster's map asked again (CLUSTER SLOTS) when a -MOVED said it changed: one
 * refresh at a time, at most one per CLUSTER_REFRESH_MIN. When it next needs a pass. */
static double
cluster_poll(bio_client *c, double now)
{
    if (!c->is_cluster || !c->map_wanted || c->map_in_flight || c->close_req != NULL) {
        return INFINITY;
    }
    if (now - c->map_asked < CLUSTER_REFRESH_MIN) {
        return c->map_asked + CLUSTER_REFRESH_MIN;
    }
    static const char cmd[] = "*2\r\n$7\r\nCLUSTER\r\n$5\r\nSLOTS\r\n";
    if (send_slot(c, cmd, sizeof cmd - 1, 1, NULL, SLOT_CLUSTER,
                  now + c->cfg.socket_timeout) == 0) {
        c->map_in_flight = 1;
        c->map_wanted = 0;
        c->map_asked = now;
    }
    return INFINITY;
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
    resp_buf b;
    resp_buf_init(&b);
    /* Room for all of it at once: a buffer grown by realloc would leave a copy of
     * the password in the block it frees. (Each argument: 24 bytes of header at most.) */
    if (resp_buf_reserve(&b, 256 + c->cfg.username_len + c->cfg.password_len) < 0) {
        connection_failed(c, "out of memory", now);
        return;
    }
    if (c->cfg.password) {
        if (c->cfg.username) {
            const char *argv[3] = {"AUTH", c->cfg.username, c->cfg.password};
            size_t len[3] = {4, c->cfg.username_len, c->cfg.password_len};
            resp_command(&b, 3, argv, len);
        }
        else {
            const char *argv[2] = {"AUTH", c->cfg.password};
            size_t len[2] = {4, c->cfg.password_len};
            resp_command(&b, 2, argv, len);
        }
    }
    if (c->cfg.db != 0) {
        char db[16];
        const char *argv[2] = {"SELECT", db};
        size_t len[2] = {6, (size_t)snprintf(db, sizeof db, "%d", c->cfg.db)};
        resp_command(&b, 2, argv, len);
    }
    const char *ping[1] = {"PING"};
    size_t pinglen[1] = {4};
    resp_command(&b, 1, ping, pinglen);
    io_sentinel_handshake(c, &b);  /* with sentinels: ROLE, last */
    io_cluster_handshake(c, &b);   /* cluster (or asking): CLUSTER SLOTS, last */
    io_track_handshake(c, &b);     /* a tracker: CLIENT ID, SUBSCRIBE */
    /* The socket is new: the out buffer is empty, so AUTH starts it, and is wiped
     * from it once sent (flush_out) or dropped (close_socket). */
    int rc = b.oom ? -1 : send_slot(c, b.data, b.len, b.ncmd, NULL, SLOT_HANDSHAKE,
                                    c->hs_deadline);
    if (rc == 0 && c->cfg.password) {
        c->out_secret = c->out_len;
    }
    resp_buf_free_secret(&b);
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
        atomic_fetch_add(&counters_of(c)->reconnects, 1);
    }
    c->ever_connected = 1;
    c->suspect = 0;
    atomic_store(&c->counters.connected, 1);
    if (c->push && c->owner != NULL) {
        c->track_ping_at = 0;  /* (a new connection: quiet from now) */
        io_track_poll(c->owner, now);  /* a tracker up: its client's tracking, now */
    }
    else {
        io_track_begin(c, now);  /* (tracked before what waits is sent, if wanted) */
    }
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
    io_fd_register(fd);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0 && errno != EINPROGRESS &&
        errno != EAGAIN) {
        int e = errno;
        snprintf(err, errlen, "Error %d connecting to unix socket: %s. %s.", e,
                 c->cfg.unix_path, strerror(e));
        io_fd_close(fd);
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
    io_fd_register(fd);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
    if (connect(fd, ai->ai_addr, ai->ai_addrlen) < 0 && errno != EINPROGRESS) {
        int e = errno;
        snprintf(err, errlen, "Error %d connecting to %s:%d. %s.", e, c->cfg.host,
                 c->cfg.port, strerror(e));
        io_fd_close(fd);
        return -1;
    }
    return fd;
}

/* Start connecting to these addresses (the result of a resolution). */
void
io_connect_to(bio_client *c, int gai, struct addrinfo *res, double now)
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

void
io_pump_waiting(bio_client *c, double now)
{
    pump_waiting(c, now);
}

void
io_start_connect(bio_client *c, double now)
{
    start_connect(c, now);
}

int
io_send_slot(bio_client *c, const char *buf, size_t len, int ncmd, int kind,
             double deadline)
{
    return send_slot(c, buf, len, ncmd, NULL, kind, deadline);
}

static void
start_connect(bio_client *c, double now)
{
    char err[BIO_ERRLEN];
    if (!c->keep_deadline) {  /* a new attempt (not the next startup node of one) */
        c->hs_deadline = now + c->cfg.connect_timeout;
        c->startup_left = c->cfg.nstartup;
    }
    c->keep_deadline = 0;
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
    if (c->cfg.sentinels != NULL) {
        /* The sentinels name the server (asked on a resolver thread); the watcher
         * listens for failovers from now on. */
        io_sentinel_watch_start(c);
        if (io_start_resolving(c, err, sizeof err) < 0) {
            connection_failed(c, err, now);
        }
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
        io_connect_to(c, 0, res, now);
        freeaddrinfo(res);
        return;
    }
    if (io_start_resolving(c, err, sizeof err) < 0) {
        connection_failed(c, err, now);
    }
}

void
io_connect_ready(bio_client *c, double now)
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
    if (c->cfg.tls != NULL) {
        char err[BIO_ERRLEN];
        if (io_tls_begin(c, err, sizeof err) < 0) {
            connection_failed(c, err, now);
            return;
        }
        c->state = ST_TLS;
        io_tls_step(c, now);
        return;
    }
    epoll_set(c, 0);
    start_handshake(c, now);
}

/* The TLS handshake goes on (the socket is ready for what it waited for); once done,
 * the Redis handshake starts, on the same deadline (connect_timeout). */
void
io_tls_step(bio_client *c, double now)
{
    char err[BIO_ERRLEN];
    int rc = io_tls_handshake(c, err, sizeof err);
    if (rc < 0) {
        connection_failed(c, err, now);
        return;
    }
    epoll_set(c, rc == 0 && c->tls_want_out);
    if (rc == 1) {
        start_handshake(c, now);
    }
}

/* ------------------------------------------------------------------ I/O */

void
io_flush_out(bio_client *c, double now)
{
    if (c->fd < 0 || c->state == ST_CONNECTING || c->state == ST_TLS) {
        return;
    }
    if (c->out_pos >= c->out_len) {
        /* Nothing to write: write interest only for a TLS read that waits to write (a
         * finished one must not leave EPOLLOUT set: an idle socket is always writable). */
        if (c->want_out != c->tls_read_wants_out) {
            epoll_set(c, c->tls_read_wants_out);
        }
        return;
    }
    int wrote = 0;
    while (c->out_pos < c->out_len) {
        char err[BIO_ERRLEN];
        if (c->ssl != NULL) {  /* one SSL_write per batch, as one send() without TLS */
            ssize_t n = io_tls_write(c, c->out + c->out_pos, c->out_len - c->out_pos, err,
                                     sizeof err);
            if (n > 0) {
                c->out_pos += (size_t)n;
                wrote = 1;
                continue;
            }
            if (n == 0) {
                break;
            }
            connection_failed(c, err, now);
            return;
        }
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
        snprintf(err, sizeof err, "Error while writing to the socket: %s", strerror(errno));
        connection_failed(c, err, now);
        return;
    }
    if (wrote) {
        atomic_fetch_add(&counters_of(c)->batches, 1);
    }
    if (c->out_secret > 0 && c->out_pos >= c->out_secret) {
        explicit_bzero(c->out, c->out_secret);  /* AUTH has left */
        c->out_secret = 0;
    }
    if (c->out_pos >= c->out_len) {
        c->out_pos = c->out_len = 0;
    }
    /* A TLS write that waits for a read is retried after the next read (EPOLLIN). */
    int out = (c->out_pos < c->out_len && !c->tls_write_wants_in) || c->tls_read_wants_out;
    if (out != c->want_out) {
        epoll_set(c, out);
    }
}

static int
reply_is_error(void *reply)
{
    return ((redisReply *)reply)->type == REDIS_REPLY_ERROR;
}

/* A cluster's statistics flush answered by a redirect (-MOVED: the statistics key's
 * slot moved; -ASK, -TRYAGAIN: it is migrating; -CLUSTERDOWN): that HINCRBY was not
 * applied. Its count goes back to the owner for the next flush, and the map is asked
 * again (a -MOVED applied at once): nothing else may meet that slot's -MOVED, and
 * every flush would go on being lost on the old node. */
static void
stats_redirected(bio_client *t, const slot *s, const redisReply *reply)
{
    bio_client *owner = t->parent;
    io_redirect rd;
    if (owner == NULL || reply->type != REDIS_REPLY_ERROR ||
        io_cluster_parse_redirect(reply->str, reply->len, &rd) < 0) {
        return;
    }
    /* (hits first, then misses; a flush leaves out a zero count) */
    if (s->remaining == 2 || t->stats_misses_sent == 0) {
        atomic_fetch_add(&owner->counters.pending_hits, t->stats_hits_sent);
    }
    else {
        atomic_fetch_add(&owner->counters.pending_misses, t->stats_misses_sent);
    }
    if (rd.kind == IO_REDIRECT_MOVED && owner->map != NULL) {
        io_cluster_apply_moved(owner->map, rd.slot, rd.host[0] != '\0' ? rd.host
                                                                        : t->cfg.host, rd.port);
    }
    owner->map_wanted = 1;
}

/* One reply arrived: give it to the slot at the front of the FIFO. */
static void
on_reply(bio_client *c, void *reply, double now)
{
    slot *s = ring_front(c);
    if (c->push && c->state == ST_READY && (s == NULL || io_track_is_message(reply))) {
        io_track_message(c, reply);  /* a tracker's: an invalidation (or noise) */
        return;
    }
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
    char role_err[BIO_ERRLEN];
    if (s->kind == SLOT_TRACK) {
        io_track_on_reply(c, reply, (int)s->remaining, now);
        if (--s->remaining == 0) {
            ring_pop(c);
        }
        return;
    }
    if (s->kind == SLOT_HANDSHAKE && c->push && s->remaining <= 2) {
        if (io_track_handshake_reply(c, reply, (int)s->remaining, role_err,
                                     sizeof role_err) < 0) {
            freeReplyObject(reply);
            ring_pop(c);
            connection_failed(c, role_err, now);
            return;
        }
        freeReplyObject(reply);
        if (--s->remaining == 0) {
            ring_pop(c);
            handshake_done(c, now);
        }
        return;
    }
    if (s->kind == SLOT_HANDSHAKE && s->remaining == 1 && c->cfg.sentinels != NULL) {
        /* The last handshake reply is ROLE's: the primary, or a failed attempt. */
        if (io_sentinel_check_role(c, reply, role_err, sizeof role_err) < 0) {
            freeReplyObject(reply);
            ring_pop(c);
            connection_failed(c, role_err, now);
            return;
        }
    }
    else if (s->kind == SLOT_HANDSHAKE && s->remaining == 1 &&
             c->cfg.cluster != BIO_CLUSTER_OFF) {
        /* The last handshake reply is CLUSTER SLOTS': the map, or a standalone server. */
        if (io_cluster_handshake_reply(c, reply, role_err, sizeof role_err) < 0) {
            freeReplyObject(reply);
            ring_pop(c);
            connection_failed(c, role_err, now);
            return;
        }
    }
    else if (s->kind == SLOT_HANDSHAKE && ((redisReply *)reply)->type != REDIS_REPLY_STATUS) {
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
    if (s->kind == SLOT_ASKING && s->remaining % 2 == 0) {
        freeReplyObject(reply);  /* ASKING's +OK: each command follows its own */
        s->remaining--;
        return;
    }
    if (s->kind == SLOT_USER && io_sentinel_readonly(c, reply)) {
        /* A demoted primary: drop the connection (what is in flight fails as on any
         * failure); the next attempt asks the sentinels. */
        snprintf(role_err, sizeof role_err, "READONLY: %.60s:%d is no longer the primary "
                 "of '%.40s'; the sentinels will be asked again", c->cfg.host, c->cfg.port,
                 io_sentinel_service(c));
        freeReplyObject(reply);
        connection_failed(c, role_err, now);
        return;
    }
    if (s->kind == SLOT_USER && c->cfg.cluster != BIO_CLUSTER_OFF) {
        io_cluster_saw_reply(c, reply);  /* a -MOVED: the map is asked again */
    }
    else if (s->kind == SLOT_CLUSTER) {
        io_cluster_map_reply(c, reply);  /* (then freed below: no request holds it) */
    }
    else if (s->kind == SLOT_STATS && c->parent != NULL) {
        stats_redirected(c, s, reply);
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
        stats_flush_ended(c);
    }
    if (r && (c->parent == NULL || !io_cluster_redirected(c, r, now))) {
        io_complete(r, BIO_OK, NULL);
    }
    if (kind == SLOT_HANDSHAKE) {
        handshake_done(c, now);
    }
    else if (c->close_req && c->r_count == 0 && !c->stats_in_flight && !c->stats_wait) {
        /* The last reply a disconnect() was waiting for (a cluster's flush is on its
         * node's connection: its reply, or its deadline, ends the close). */
        finish_close(c, now);
    }
    else {
        pump_waiting(c, now);  /* room in the pipeline */
    }
}

/* Bytes read from the connection: costed, parsed, and their replies delivered.
 * 0, or -1 when the connection failed (or was closed by a reply). */
static int
take_bytes(bio_client *c, const char *buf, size_t n, double now)
{
    int pushed = c->push && c->state == ST_READY;  /* (a tracker's messages) */
    if (c->r_count == 0 && !pushed) {
        /* Nothing was asked (a middlebox, a broken server): whole or partial,
         * those bytes would glue onto the next reply. */
        connection_failed(c, "Protocol error: unexpected reply", now);
        return -1;
    }
    /* What the reply will cost is checked before hiredis builds it. */
    int scan = resp_scan_feed(&c->scan, buf, n, c->cfg.max_reply);
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
        return -1;
    }
    if (redisReaderFeed(c->reader, buf, n) != REDIS_OK) {
        connection_failed(c, "Protocol error", now);
        return -1;
    }
    for (;;) {
        void *reply = NULL;
        if (redisReaderGetReply(c->reader, &reply) != REDIS_OK) {
            connection_failed(c, "Protocol error", now);
            return -1;
        }
        if (reply == NULL) {
            break;
        }
        on_reply(c, reply, now);
        if (c->fd < 0 || c->reader == NULL) {
            return -1;  /* the reply closed or failed the connection */
        }
    }
    pushed = c->push && c->state == ST_READY;  /* (its handshake may have ended) */
    if (c->r_count == 0 && !pushed && resp_scan_busy(&c->scan)) {
        /* The start of a reply nobody asked for came with the last one owed. */
        connection_failed(c, "Protocol error: unexpected reply", now);
        return -1;
    }
    return 0;
}

void
io_do_read(bio_client *c, double now)
{
    char buf[READ_CHUNK];
    size_t total = 0;
    while (c->fd >= 0 && total < MAX_READ_PER_PASS) {
        if (c->ssl != NULL) {
            /* Through TLS: until OpenSSL has nothing more (a record at a time). What
             * it holds beyond this pass's bound is read next pass (io_tls_pending). */
            char err[BIO_ERRLEN];
            ssize_t n = io_tls_read(c, buf, sizeof buf, err, sizeof err);
            if (n < 0) {
                connection_failed(c, err, now);
                return;
            }
            if (n == 0) {
                if (c->tls_read_wants_out && !c->want_out) {
                    epoll_set(c, 1);
                }
                return;
            }
            total += (size_t)n;
            if (take_bytes(c, buf, (size_t)n, now) < 0) {
                return;
            }
            continue;
        }
        ssize_t n = recv(c->fd, buf, sizeof buf, 0);
        if (n > 0) {
            total += (size_t)n;
            if (take_bytes(c, buf, (size_t)n, now) < 0) {
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
        /* Dropped before the first reply of the handshake, without a word: what a
         * TLS server does with a plaintext client. */
        const char *hint = c->state == ST_HANDSHAKE && c->cfg.tls == NULL
                           ? " (before any reply: is it a TLS port? then ssl=True or "
                             "rediss://)" : "";
        char err[BIO_ERRLEN];
        if (n == 0) {
            snprintf(err, sizeof err, "Connection closed by server.%s", hint);
        }
        else {
            snprintf(err, sizeof err, "Error while reading from the socket: %s%s",
                     strerror(errno), hint);
        }
        connection_failed(c, err, now);
        return;
    }
}

/* ------------------------------------------------------------------ routing */

void
io_route(bio_req *r, double now)
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
        io_complete(r, BIO_EFAILED, NULL);  /* its err was set by its maker */
        return;
    case BIO_OP_LISTEN:
        /* Kept on the client without a reference to it (it would keep the client
         * alive for ever): the client completes it when it is let go, or closes. */
        r->client = NULL;
        bio_client_decref(c);  /* (the engine still holds it) */
        c->cfg.tracking = 1;   /* (from now on: io_track_poll turns it on) */
        io_track_listen(c, r);
        io_track_begin(c, now);  /* (at once: what comes next is tracked) */
        return;
    case BIO_OP_CLOSE:
        io_cluster_quiet_children(c);  /* (closed by finish_close) */
        fail_waiting(c, BIO_ECLOSED, "disconnected");
        if (c->close_req) {  /* already closing: finish with the first */
            io_complete(r, BIO_OK, NULL);
            return;
        }
        c->close_req = r;
        if (c->state == ST_READY || (c->is_cluster && c->map != NULL)) {
            /* Fail the requests in flight now (their replies are discarded), send
             * the statistics, and close once their reply arrives. (A cluster's go to
             * the statistics key's node, whatever the state of its own connection.) */
            fail_sent(c, BIO_ECLOSED, "disconnected");
            io_append_stats_flush(c, now);
            if (!c->stats_in_flight && c->is_cluster &&
                (atomic_load(&c->counters.pending_hits) ||
                 atomic_load(&c->counters.pending_misses))) {
                /* A cluster's statistics node not connected yet: the close waits for
                 * it (its timers try again), as long as one reply may take. */
                c->stats_wait = 1;
                c->close_deadline = now + c->cfg.socket_timeout;
                return;
            }
            if (c->stats_in_flight) {
                c->close_deadline = now + c->cfg.socket_timeout;
                return;
            }
        }
        finish_close(c, now);
        return;
    case BIO_OP_CONNECT:
        if (c->state == ST_READY && c->close_req == NULL) {
            io_complete(r, BIO_OK, NULL);
            return;
        }
        if (c->state == ST_BACKOFF && c->backoff_until > r->deadline) {
            io_complete(r, BIO_ECONN, c->last_err);  /* no attempt before its deadline */
            return;
        }
        break;  /* an attempt is made at once, or when the backoff ends */
    default:
        if (c->map != NULL && c->close_req == NULL && io_cluster_routes(c, r)) {
            /* A cluster's keyed request goes to its node's connection, whatever the
             * state of the parent's own (it may be reconnecting to another node). */
            io_cluster_dispatch(c, r, now);
            return;
        }
        if (c->state == ST_READY && c->close_req == NULL && c->wait_head == NULL &&
            c->r_count < MAX_PIPELINE && !c->track_hold) {
            send_request(c, r, now);
            return;
        }
        if (c->state == ST_BACKOFF && c->unreachable && r->op == BIO_OP_CMD) {
            /* Fail fast while the server is known to be unreachable (the last attempt
             * to connect failed). After a working connection dropped, requests wait
             * for the attempt the backoff ends with. */
            io_complete(r, BIO_ECONN, c->last_err);
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

/* ------------------------------------------------------------------ cluster routing */

/* A request for a node (a child of a cluster client): as io_route does for a command,
 * keeping the deadline it was given. */
static void
child_route(bio_client *c, bio_req *r, double now)
{
    r->deadline = r->cluster_deadline;  /* (waiting here, after a redirect too) */
    if (c->state == ST_READY && c->close_req == NULL && c->wait_head == NULL &&
        c->r_count < MAX_PIPELINE && !c->track_hold) {
        send_request(c, r, now);
        return;
    }
    if (c->state == ST_BACKOFF && c->unreachable) {
        c->parent->map_wanted = 1;  /* (rate-limited) has its replica taken over? */
        io_complete(r, BIO_ECONN, c->last_err);
        return;
    }
    wait_push(c, r);
    if (c->state == ST_IDLE) {
        start_connect(c, now);
    }
}

/* The slot of all of r's keyed commands; RESP_SLOT_ANY if none has a key,
 * RESP_SLOT_CROSS if they are of several slots. */
static int
request_slot(const bio_req *r)
{
    int slot = RESP_SLOT_ANY;
    for (int k = 0; k < r->ncmd; k++) {
        int s = r->slots[k] == RESP_SLOT_ANY && r->route_slot >= 0 ? r->route_slot
                                                                  : r->slots[k];
        if (s == RESP_SLOT_CROSS || (s >= 0 && slot >= 0 && s != slot)) {
            return RESP_SLOT_CROSS;
        }
        if (s >= 0) {
            slot = s;
        }
    }
    return slot;
}

int
io_cluster_routes(bio_client *c, bio_req *r)
{
    return c->is_cluster && c->parent == NULL && r->slots != NULL && r->op == BIO_OP_CMD &&
           request_slot(r) != RESP_SLOT_ANY;  /* (keyless: on the parent's connection) */
}

/* read_from_replicas: the next of the primary's replicas in turn (its connection made
 * READONLY), or the primary itself when it has none or that one is known down. */
static int
pick_replica(bio_client *parent, int primary)
{
    const bio_slot_map *m = parent->map;
    int n = 0;
    for (int i = 0; i < m->nnodes; i++) {
        n += m->nodes[i].primary == primary;
    }
    if (n == 0) {
        return primary;
    }
    int k = (int)(parent->replica_turn++ % (unsigned)n);
    for (int i = 0; i < m->nnodes; i++) {
        if (m->nodes[i].primary == primary && k-- == 0) {
            bio_client *c = io_cluster_child(parent, m->nodes[i].host, m->nodes[i].port);
            if (c == NULL || c->suspect || (c->state == ST_BACKOFF && c->unreachable)) {
                return primary;
            }
            return i;
        }
    }
    return primary;
}

void
io_cluster_dispatch(bio_client *parent, bio_req *r, double now)
{
    int slot = request_slot(r);
    if (r->cluster_deadline == 0) {
        r->cluster_deadline = r->deadline;  /* io_route's: waiting + socket_timeout */
    }
    if (r->route_slot >= 0 && r->whole == NULL) {
        r->next_route = io_cluster_next_primary(parent->map, r->route_slot);
    }
    if (slot == RESP_SLOT_CROSS) {
        io_fanout(parent, r, now);  /* one part per slot, gathered */
        return;
    }
    int node = io_slot_map_node(parent->map, (unsigned)slot);
    if (node < 0) {
        parent->map_wanted = 1;
        char err[BIO_ERRLEN];
        snprintf(err, sizeof err, "CLUSTERDOWN Hash slot %d not served", slot);
        io_complete(r, BIO_ECONN, err);
        return;
    }
    if (parent->cfg.read_replicas && r->readonly && r->redirects == 0) {
        node = pick_replica(parent, node);
    }
    bio_client *child = io_cluster_child(parent, parent->map->nodes[node].host,
                                         parent->map->nodes[node].port);
    if (child == NULL) {
        io_complete(r, BIO_ECONN, "no connection for the slot's node (out of memory, "
                    "or too many nodes)");
        return;
    }
    child_route(child, r, now);
}

int
io_cluster_redirected(bio_client *c, bio_req *r, double now)
{
    bio_client *parent = c->parent;
    if (r->redirects >= CLUSTER_MAX_REDIRECTS || now >= r->cluster_deadline) {
        return 0;
    }
    io_redirect rd;
    int found = 0;
    for (int i = 0; i < r->nrep && !found; i++) {
        redisReply *rep = r->replies[i];
        found = rep->type == REDIS_REPLY_ERROR &&
                io_cluster_parse_redirect(rep->str, rep->len, &rd) == 0;
    }
    if (!found) {
        return 0;
    }
    if (rd.kind == IO_REDIRECT_TRYAGAIN || rd.kind == IO_REDIRECT_CLUSTERDOWN) {
        /* A slot migrating (keys on both sides), a failover under way: the same again
         * after a pause, to whichever node the map says then. */
        double pause = fmin(CLUSTER_RETRY_MIN * (double)(1u << (r->retries < 5 ? r->retries
                                                                            : 5)),
                            CLUSTER_RETRY_MAX);
        if (now + pause >= r->cluster_deadline) {
            return 0;
        }
        if (rd.kind == IO_REDIRECT_CLUSTERDOWN) {
            parent->map_wanted = 1;
        }
        for (int i = 0; i < r->nrep; i++) {
            freeReplyObject(r->replies[i]);
            r->replies[i] = NULL;
        }
        r->nrep = 0;
        r->retries++;
        r->retry_at = now + pause;
        r->next = NULL;  /* (a FIFO: one due behind one not yet due waits at most
                            CLUSTER_RETRY_MAX longer) */
        if (parent->retry_tail != NULL) {
            parent->retry_tail->next = r;
        }
        else {
            parent->retry_head = r;
        }
        parent->retry_tail = r;
        return 1;
    }
    const char *host = rd.host[0] != '\0' ? rd.host : c->cfg.host;
    bio_client *target = io_cluster_child(parent, host, rd.port);
    if (target == NULL) {
        return 0;
    }
    if (rd.kind == IO_REDIRECT_MOVED) {
        if (parent->map != NULL) {
            io_cluster_apply_moved(parent->map, rd.slot, host, rd.port);
        }
        parent->map_wanted = 1;
    }
    else {
        r->asking = 1;
    }
    for (int i = 0; i < r->nrep; i++) {
        freeReplyObject(r->replies[i]);
        r->replies[i] = NULL;
    }
    r->nrep = 0;
    r->redirects++;
    child_route(target, r, now);
    return 1;
}

/* The parent's requests whose pause is over go again (dispatched by their slot);
 * when it next needs a pass. */
static double
cluster_retries(bio_client *parent, double now)
{
    while (parent->retry_head != NULL && parent->retry_head->retry_at <= now) {
        bio_req *r = parent->retry_head;
        parent->retry_head = r->next;
        if (parent->retry_head == NULL) {
            parent->retry_tail = NULL;
        }
        r->next = NULL;
        io_cluster_dispatch(parent, r, now);
    }
    return parent->retry_head != NULL ? parent->retry_head->retry_at : INFINITY;
}

/* A cluster's disconnect() begins: what waits or is in flight on its nodes fails now
 * (the replies still owed are swallowed), the connections stay for the statistics. */
void
io_cluster_quiet_children(bio_client *parent)
{
    bio_req *r = parent->retry_head;
    parent->retry_head = parent->retry_tail = NULL;
    while (r != NULL) {
        bio_req *next = r->next;
        io_complete(r, BIO_ECLOSED, "disconnected");
        r = next;
    }
    for (int i = 0; i < parent->nchildren; i++) {
        bio_client *c = parent->children[i];
        fail_waiting(c, BIO_ECLOSED, "disconnected");
        fail_sent(c, BIO_ECLOSED, "disconnected");
    }
}

void
io_cluster_close_children(bio_client *parent)
{
    io_cluster_quiet_children(parent);
    for (int i = 0; i < parent->nchildren; i++) {
        bio_client *c = parent->children[i];
        io_client_reset(c);
    }
}

/* ------------------------------------------------------------------ timers */

double
io_client_timers(bio_client *c, double now)
{
    if (c->push && c->owner != NULL) {
        io_track_deliver(c->owner);  /* what this pass's messages gathered, at once */
    }
    else if (c->listen != NULL) {
        io_track_deliver(c);  /* (a flush after tracking came back, a map's) */
    }
    double next = c->retry_head != NULL ? cluster_retries(c, now) : INFINITY;
    next = fmin(next, io_track_hold_check(c, now));
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
            io_complete(r, BIO_ETIMEOUT, r->op != BIO_OP_CONNECT
                     ? "Timeout waiting for a connection"
                     : c->state == ST_TLS ? TLS_TIMEOUT : "Timeout connecting to server");
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
                    io_complete(s->req, BIO_ETIMEOUT, "Timeout reading from socket");
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
    case ST_TLS:
    case ST_HANDSHAKE:
        if (c->hs_deadline <= now) {
            connection_failed(c, c->state == ST_TLS ? TLS_TIMEOUT
                                 : c->state == ST_RESOLVING && c->cfg.sentinels != NULL
                                 ? "Timeout asking the sentinels for the primary"
                                 : "Timeout connecting to server", now);
            return now;
        }
        next = fmin(next, c->hs_deadline);
        break;
    case ST_BACKOFF:
        if (c->backoff_until <= now) {
            c->state = ST_IDLE;
            if (c->wait_head != NULL || (c->is_cluster && c->map_wanted) ||
                io_track_reconnect(c)) {
                start_connect(c, now);
                return now;
            }
        }
        else {
            next = fmin(next, c->backoff_until);
        }
        break;
    case ST_IDLE:
        /* A cluster's own connection is made again when the map must be asked (its
         * nodes' requests do not wait on it); not after a disconnect(). */
        if (c->is_cluster && c->parent == NULL && c->map_wanted && c->close_req == NULL &&
            c->ever_connected) {
            start_connect(c, now);
            return now;
        }
        if (io_track_reconnect(c)) {
            start_connect(c, now);  /* (its L1 waits for tracking to be back) */
            return now;
        }
        break;
    case ST_READY:
        if (io_track_wanted(c)) {
            io_track_poll(c, now);
        }
        if (c->push) {
            next = fmin(next, io_track_ping(c, now));
        }
        if (c->next_flush <= now) {
            io_append_stats_flush(c, now);
            c->next_flush = now + STATS_FLUSH_EVERY;
        }
        next = fmin(next, c->next_flush);
        next = fmin(next, cluster_poll(c, now));
        break;
    }
    if (c->close_req && c->stats_wait && !c->stats_in_flight && c->close_deadline > now) {
        io_append_stats_flush(c, now);  /* (its node connected meanwhile?) */
        c->stats_wait = !c->stats_in_flight;
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
