/* io_sentinel.c: Redis Sentinel for the I/O layer. No Python in this file (see io.h).
 *
 * How a sentinel client finds its server: start_connect (io_conn.c) always hands the
 * name to a resolver job (io_engine.c), which, on its own thread, asks the sentinels in
 * turn `SENTINEL get-master-addr-by-name <service>` over blocking sockets bounded by the
 * attempt's deadline (io_sentinel_ask), then resolves the address it got. Back on the
 * I/O thread (io_sentinel_resolved) the client connects to it as to any host, and its
 * handshake ends with `ROLE`: anything but "master" fails the attempt
 * (io_sentinel_check_role), and the next attempt asks the sentinels again.
 *
 * Failovers are followed three ways: a failed connection (the next attempt asks
 * again), a -READONLY reply (the server was demoted: the connection is dropped,
 * io_sentinel_readonly), and the watcher: a thread per client subscribed to
 * +switch-master on one sentinel at a time, which raises a flag and wakes the I/O
 * thread; io_sentinel_poll then drops the connection if the primary moved.
 *
 * Threads and sockets: a resolver job's sockets are its own, closed before it is
 * handed back. The watcher owns its socket; it stops (within WATCH_TICK, or the
 * connect it is in, at most connect_timeout) once its client lets it go — disconnect()
 * or the client freed — and frees the shared record if it is the last to hold it.
 * Every socket is listed with io_fd_register, so a forked child closes it at once.
 *
 * sentinel_ssl: bio_sentinels holds a TLS context, and every connection to a sentinel
 * (an sconn) runs a blocking TLS session on its socket (io_tls_blocking_*: poll() for
 * what OpenSSL wants, up to the same deadlines, the handshake included); a read that
 * times out leaves the session usable, a failure marks it broken (freed, never reused). */
#include "io_internal.h"
#include "respscan.h"

#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* The watcher's receive timeout: how soon it notices it should stop. */
#define WATCH_TICK 0.2
/* After losing (or failing to reach) a sentinel, the watcher waits this long before
 * trying the next, so that all sentinels down costs a few attempts a second. */
#define WATCH_RETRY 0.2
/* What a sentinel's reply may cost (it is a few short strings). */
#define SENTINEL_MAX_REPLY 65536

struct bio_sentinels {
    atomic_int refs;
    int n;
    char **hosts;            /* owned copies */
    int *ports;
    char *service;
    size_t service_len;
    char *username;          /* NULL: AUTH with password only */
    size_t username_len;
    char *password;          /* NULL: no AUTH; wiped before it is freed */
    size_t password_len;
    bio_tls *tls;            /* owned reference: sentinel_ssl, or NULL: plaintext */
};

/* A connection to a sentinel: its socket, and its TLS session with sentinel_ssl. */
typedef struct {
    int fd;
    SSL *ssl;                /* NULL: plaintext */
    int broken;              /* a TLS failure: the session is only freed */
    bio_tls *tls;            /* borrowed (the bio_sentinels' ) */
    const char *host;        /* borrowed: the sentinel's, for TLS' messages */
    resp_scan scan;          /* what the reply being received costs (hiredis 0.14 would
                              * allocate what a header declares before the bytes come) */
} sconn;

struct sentinel_watch {
    atomic_int refs;         /* the client's and the thread's */
    atomic_int stop;         /* set by the client: the thread ends */
    atomic_int switched;     /* set by the thread: a +switch-master for our service */
    pthread_mutex_t lock;    /* guards addr */
    char addr[300];          /* "host port" of the primary it announced */
    bio_sentinels *s;        /* owned reference */
    double connect_timeout;
};

/* ------------------------------------------------------------------ configuration */

static char *
copy_bytes(const char *s, size_t n)
{
    char *d = malloc(n + 1);
    if (d != NULL) {
        memcpy(d, s, n);
        d[n] = '\0';
    }
    return d;
}

bio_sentinels *
bio_sentinels_new(int n, const char *const *hosts, const int *ports, const char *service,
                  const char *username, size_t username_len, const char *password,
                  size_t password_len)
{
    bio_sentinels *s = calloc(1, sizeof *s);
    if (s == NULL) {
        return NULL;
    }
    atomic_init(&s->refs, 1);
    s->hosts = calloc((size_t)n, sizeof(char *));
    s->ports = calloc((size_t)n, sizeof(int));
    s->service_len = strlen(service);
    s->service = copy_bytes(service, s->service_len);
    int ok = s->hosts && s->ports && s->service;
    s->n = s->hosts ? n : 0;
    for (int i = 0; ok && i < n; i++) {
        s->ports[i] = ports[i];
        ok = (s->hosts[i] = strdup(hosts[i])) != NULL;
    }
    if (ok && username != NULL) {
        s->username_len = username_len;
        ok = (s->username = copy_bytes(username, username_len)) != NULL;
    }
    if (ok && password != NULL) {
        s->password_len = password_len;
        ok = (s->password = copy_bytes(password, password_len)) != NULL;
    }
    if (!ok) {
        bio_sentinels_decref(s);
        return NULL;
    }
    return s;
}

void
bio_sentinels_incref(bio_sentinels *s)
{
    atomic_fetch_add(&s->refs, 1);
}

void
bio_sentinels_decref(bio_sentinels *s)
{
    if (s == NULL || atomic_fetch_sub(&s->refs, 1) != 1) {
        return;
    }
    for (int i = 0; i < s->n; i++) {
        free(s->hosts[i]);
    }
    free(s->hosts);
    free(s->ports);
    free(s->service);
    free(s->username);
    if (s->password != NULL) {
        explicit_bzero(s->password, s->password_len);
    }
    free(s->password);
    bio_tls_decref(s->tls);
    free(s);
}

void
bio_sentinels_set_tls(bio_sentinels *s, bio_tls *t)
{
    bio_tls_incref(t);
    bio_tls_decref(s->tls);
    s->tls = t;
}

/* ------------------------------------------------------------------ blocking I/O */

/* A connected socket to host:port by `deadline` (monotonic), or -1 with err set. The
 * socket stays non-blocking; reads and writes below wait with poll(). */
static int
sock_open(const char *host, int port, double deadline, char *err, size_t errlen)
{
    char portstr[16];
    snprintf(portstr, sizeof portstr, "%d", port);
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    struct addrinfo *res = NULL;
    int gai = getaddrinfo(host, portstr, &hints, &res);
    if (gai != 0) {
        snprintf(err, errlen, "%.100s:%d: %s", host, port, gai_strerror(gai));
        return -1;
    }
    struct addrinfo *ai = res;
    for (struct addrinfo *p = res; p; p = p->ai_next) {
        if (p->ai_family == AF_INET) {  /* as open_tcp: 127.0.0.1 before ::1 */
            ai = p;
            break;
        }
    }
    int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(err, errlen, "%.100s:%d: socket: %s", host, port, strerror(errno));
        freeaddrinfo(res);
        return -1;
    }
    io_fd_register(fd);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    int rc = connect(fd, ai->ai_addr, ai->ai_addrlen);
    freeaddrinfo(res);
    if (rc < 0 && errno != EINPROGRESS) {
        snprintf(err, errlen, "%.100s:%d: %s", host, port, strerror(errno));
        io_fd_close(fd);
        return -1;
    }
    if (rc < 0) {
        struct pollfd p = {.fd = fd, .events = POLLOUT};
        for (;;) {
            double left = deadline - bio_now();
            int n = left > 0 ? poll(&p, 1, (int)ceil(left * 1000)) : 0;
            if (n < 0 && errno == EINTR) {
                continue;
            }
            if (n <= 0) {
                snprintf(err, errlen, "%.100s:%d: timeout connecting", host, port);
                io_fd_close(fd);
                return -1;
            }
            break;
        }
        int soerr = 0;
        socklen_t len = sizeof soerr;
        if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &len) < 0) {
            soerr = errno;
        }
        if (soerr != 0) {
            snprintf(err, errlen, "%.100s:%d: %s", host, port, strerror(soerr));
            io_fd_close(fd);
            return -1;
        }
    }
    return fd;
}

/* A connection to sentinel i by `deadline` (with sentinel_ssl: its TLS handshake
 * done), or -1 with err set; conn_close frees what it holds. */
static int
conn_open(bio_sentinels *s, int i, double deadline, sconn *k, char *err, size_t errlen)
{
    *k = (sconn){.fd = -1, .tls = s->tls, .host = s->hosts[i]};
    resp_scan_init(&k->scan);
    k->fd = sock_open(s->hosts[i], s->ports[i], deadline, err, errlen);
    if (k->fd < 0) {
        return -1;
    }
    if (s->tls != NULL) {
        char why[BIO_ERRLEN];
        k->ssl = io_tls_blocking_connect(s->tls, k->fd, s->hosts[i], deadline, why,
                                         sizeof why);
        if (k->ssl == NULL) {
            snprintf(err, errlen, "%.60s:%d: %.120s", s->hosts[i], s->ports[i], why);
            io_fd_close(k->fd);
            k->fd = -1;
            return -1;
        }
    }
    return 0;
}

static void
conn_close(sconn *k)
{
    io_tls_blocking_close(k->ssl, k->broken);  /* (before its socket goes) */
    k->ssl = NULL;
    if (k->fd >= 0) {
        io_fd_close(k->fd);
    }
    k->fd = -1;
}

static int
sock_send(sconn *k, const char *buf, size_t len, double deadline, char *err, size_t errlen)
{
    if (k->ssl != NULL) {
        return io_tls_blocking_write(k->ssl, k->tls, k->host, buf, len, deadline, &k->broken,
                                     err, errlen);
    }
    int fd = k->fd;
    size_t pos = 0;
    while (pos < len) {
        ssize_t n = send(fd, buf + pos, len - pos, MSG_NOSIGNAL);
        if (n > 0) {
            pos += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            struct pollfd p = {.fd = fd, .events = POLLOUT};
            double left = deadline - bio_now();
            if (left > 0 && poll(&p, 1, (int)ceil(left * 1000)) >= 0) {
                continue;
            }
            snprintf(err, errlen, "timeout writing");
            return -1;
        }
        snprintf(err, errlen, "%s", strerror(errno));
        return -1;
    }
    return 0;
}

/* n more bytes of a sentinel's into the reader, after the scanner costed them (bytes
 * plus RESP_ELEMENT_COST per declared element, each reply at most SENTINEL_MAX_REPLY,
 * and *got bytes in all): 0, or -1 with err set. */
static int
feed(sconn *k, redisReader *rd, const char *buf, size_t n, size_t *got, char *err,
     size_t errlen)
{
    *got += n;
    if (*got > SENTINEL_MAX_REPLY ||
        resp_scan_feed(&k->scan, buf, n, SENTINEL_MAX_REPLY) != RESP_SCAN_OK ||
        redisReaderFeed(rd, buf, n) != REDIS_OK) {
        snprintf(err, errlen, "protocol error");
        return -1;
    }
    return 0;
}

/* The next reply into *reply: 1, or 0 when `deadline` passed first (nothing lost: the
 * reader keeps what arrived), or -1 with err set (closed, failed, not RESP, or more
 * than SENTINEL_MAX_REPLY bytes counted in *got, which the caller resets). */
static int
sock_reply(sconn *k, redisReader *rd, void **reply, double deadline, size_t *got,
           char *err, size_t errlen)
{
    int fd = k->fd;
    for (;;) {
        *reply = NULL;
        if (redisReaderGetReply(rd, reply) != REDIS_OK) {
            snprintf(err, errlen, "protocol error");
            return -1;
        }
        if (*reply != NULL) {
            return 1;
        }
        char buf[4096];
        if (k->ssl != NULL) {
            /* (OpenSSL is asked first: it may hold decrypted bytes the socket does not
             * show; a read that waits past the deadline leaves the session sound) */
            ssize_t r = io_tls_blocking_read(k->ssl, k->tls, k->host, buf, sizeof buf,
                                             deadline, &k->broken, err, errlen);
            if (r <= 0) {
                return (int)r;
            }
            if (feed(k, rd, buf, (size_t)r, got, err, errlen) < 0) {
                return -1;
            }
            continue;
        }
        double left = deadline - bio_now();
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int n = left > 0 ? poll(&p, 1, (int)ceil(left * 1000)) : 0;
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            return 0;
        }
        ssize_t r = recv(fd, buf, sizeof buf, 0);
        if (r < 0 && (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK)) {
            continue;
        }
        if (r <= 0) {
            snprintf(err, errlen, "%s", r == 0 ? "connection closed" : strerror(errno));
            return -1;
        }
        if (feed(k, rd, buf, (size_t)r, got, err, errlen) < 0) {
            return -1;
        }
    }
}

/* A port in decimal digits only, 1 to 65535: the port, or -1. */
static int
port_of(const char *str, size_t len)
{
    if (len == 0 || len > 5) {
        return -1;
    }
    int port = 0;
    for (size_t i = 0; i < len; i++) {
        if (str[i] < '0' || str[i] > '9') {
            return -1;
        }
        port = port * 10 + (str[i] - '0');
    }
    return port >= 1 && port <= 65535 ? port : -1;
}

/* AUTH to a sentinel when it needs it: 0, or -1 with err set. */
static int
sentinel_auth(bio_sentinels *s, sconn *fd, redisReader *rd, double deadline, char *err,
              size_t errlen)
{
    if (s->password == NULL) {
        return 0;
    }
    resp_buf b;
    resp_buf_init(&b);
    if (resp_buf_reserve(&b, 128 + s->username_len + s->password_len) < 0) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    const char *argv[3] = {"AUTH", s->username ? s->username : s->password, s->password};
    size_t len[3] = {4, s->username ? s->username_len : s->password_len, s->password_len};
    resp_command(&b, s->username ? 3 : 2, argv, len);
    int rc = sock_send(fd, b.data, b.len, deadline, err, errlen);
    resp_buf_free_secret(&b);
    if (rc < 0) {
        return -1;
    }
    void *reply;
    size_t got = 0;
    rc = sock_reply(fd, rd, &reply, deadline, &got, err, errlen);
    if (rc <= 0) {
        if (rc == 0) {
            snprintf(err, errlen, "timeout reading");
        }
        return -1;
    }
    redisReply *r = reply;
    rc = 0;
    /* (as for the data connection: a password given to a sentinel that has none is
     * not a failure) */
    if (r->type == REDIS_REPLY_ERROR && !strstr(r->str, "without any password configured")) {
        snprintf(err, errlen, "AUTH: %.*s", (int)(r->len < 120 ? r->len : 120), r->str);
        rc = -1;
    }
    freeReplyObject(reply);
    return rc;
}

/* ------------------------------------------------------------------ asking */

/* Ask sentinel i for the primary: 0 with host/port set, or -1 with err set. */
static int
ask_one(bio_sentinels *s, int i, double deadline, char *host, size_t hostlen, int *port,
        char *err, size_t errlen)
{
    char why[BIO_ERRLEN];
    sconn conn, *fd = &conn;
    if (conn_open(s, i, deadline, &conn, why, sizeof why) < 0) {
        snprintf(err, errlen, "%s", why);
        return -1;
    }
    int rc = -1;
    redisReader *rd = redisReaderCreate();
    void *reply = NULL;
    if (rd == NULL) {
        snprintf(why, sizeof why, "out of memory");
        goto done;
    }
    if (sentinel_auth(s, fd, rd, deadline, why, sizeof why) < 0) {
        goto done;
    }
    resp_buf b;
    resp_buf_init(&b);
    const char *argv[3] = {"SENTINEL", "get-master-addr-by-name", s->service};
    size_t len[3] = {8, 23, s->service_len};
    resp_command(&b, 3, argv, len);
    int sent = b.oom ? -1 : sock_send(fd, b.data, b.len, deadline, why, sizeof why);
    resp_buf_free(&b);
    if (sent < 0) {
        goto done;
    }
    size_t bytes = 0;
    int got = sock_reply(fd, rd, &reply, deadline, &bytes, why, sizeof why);
    if (got <= 0) {
        if (got == 0) {
            snprintf(why, sizeof why, "timeout reading");
        }
        goto done;
    }
    redisReply *r = reply;
    if (r->type == REDIS_REPLY_ERROR) {
        snprintf(why, sizeof why, "%.*s", (int)(r->len < 120 ? r->len : 120), r->str);
    }
    else if (r->type == REDIS_REPLY_NIL) {
        snprintf(why, sizeof why, "does not know service '%.40s'", s->service);
    }
    else if (r->type != REDIS_REPLY_ARRAY || r->elements != 2 ||
             r->element[0]->type != REDIS_REPLY_STRING ||
             r->element[1]->type != REDIS_REPLY_STRING || r->element[0]->len == 0 ||
             r->element[0]->len >= hostlen || strlen(r->element[0]->str) != r->element[0]->len ||
             (*port = port_of(r->element[1]->str, r->element[1]->len)) < 0) {
        snprintf(why, sizeof why, "unexpected reply to SENTINEL get-master-addr-by-name");
    }
    else {
        memcpy(host, r->element[0]->str, r->element[0]->len + 1);
        rc = 0;
    }
done:
    if (rc < 0) {
        snprintf(err, errlen, "%.60s:%d: %.120s", s->hosts[i], s->ports[i], why);
    }
    if (reply != NULL) {
        freeReplyObject(reply);
    }
    if (rd != NULL) {
        redisReaderFree(rd);
    }
    conn_close(&conn);
    return rc;
}

void
io_sentinel_ask(resolve_job *j)
{
    bio_sentinels *s = j->sentinels;
    char errs[BIO_ERRLEN] = "";
    size_t used = 0;
    j->answered = -1;
    for (int k = 0; k < s->n; k++) {
        int i = (j->first + k) % s->n;
        /* Each sentinel gets its share of the time left: a silent one cannot use up
         * the attempt's connect_timeout before the others are asked. */
        double now = bio_now();
        double deadline = now + fmin(j->deadline - now, 3600.0) / (double)(s->n - k);
        char host[256], err[BIO_ERRLEN];
        int port;
        if (ask_one(s, i, deadline, host, sizeof host, &port, err, sizeof err) == 0) {
            char *h = strdup(host);
            if (h == NULL) {
                snprintf(j->err, sizeof j->err, "out of memory");
                return;
            }
            free(j->host);
            j->host = h;
            snprintf(j->port, sizeof j->port, "%d", port);
            j->answered = i;
            struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
            j->gai = getaddrinfo(j->host, j->port, &hints, &j->res);
            return;
        }
        if (used < sizeof errs) {
            used += (size_t)snprintf(errs + used, sizeof errs - used, "%s%s",
                                     k ? "; " : "", err);
        }
    }
    snprintf(j->err, sizeof j->err, "no sentinel answered for service '%.40s' (%.120s)",
             s->service, errs);
}

/* The job of a sentinel client came back (I/O thread): connect to the primary it
 * names, or fail the attempt with why no sentinel answered. */
void
io_sentinel_resolved(bio_client *c, resolve_job *j, double now)
{
    if (j->answered < 0) {
        io_connection_failed(c, j->err, now);
        return;
    }
    c->sentinel_first = j->answered;  /* asked first next time */
    char *h = strdup(j->host);
    if (h == NULL) {
        io_connection_failed(c, "out of memory", now);
        return;
    }
    /* From now on the client's messages (and TLS' host name) name the primary. */
    free(c->cfg.host);
    c->cfg.host = h;
    c->cfg.port = atoi(j->port);
    io_connect_to(c, j->gai, j->res, now);
}

/* ------------------------------------------------------------------ the handshake */

void
io_sentinel_handshake(bio_client *c, resp_buf *b)
{
    if (c->cfg.sentinels != NULL) {
        const char *argv[1] = {"ROLE"};
        size_t len[1] = {4};
        resp_command(b, 1, argv, len);
    }
}

int
io_sentinel_check_role(bio_client *c, void *reply, char *err, size_t errlen)
{
    redisReply *r = reply;
    if (r->type == REDIS_REPLY_ARRAY && r->elements >= 1 &&
        (r->element[0]->type == REDIS_REPLY_STRING ||
         r->element[0]->type == REDIS_REPLY_STATUS) &&
        strcmp(r->element[0]->str, "master") == 0) {
        return 0;
    }
    const char *role = r->type == REDIS_REPLY_ARRAY && r->elements >= 1 &&
                       r->element[0]->type == REDIS_REPLY_STRING ? r->element[0]->str
                       : r->type == REDIS_REPLY_ERROR ? r->str : "no role";
    snprintf(err, errlen, "%.100s:%d is not the primary of '%.40s' (ROLE: %.20s); the sentinels "
             "will be asked again", c->cfg.host, c->cfg.port, c->cfg.sentinels->service,
             role);
    return -1;
}

const char *
io_sentinel_service(bio_client *c)
{
    return c->cfg.sentinels != NULL ? c->cfg.sentinels->service : "";
}

int
io_sentinel_readonly(bio_client *c, void *reply)
{
    redisReply *r = reply;
    return c->cfg.sentinels != NULL && r->type == REDIS_REPLY_ERROR && r->len >= 8 &&
           strncmp(r->str, "READONLY", 8) == 0;
}

/* ------------------------------------------------------------------ the watcher */

static void
watch_decref(sentinel_watch *w)
{
    if (atomic_fetch_sub(&w->refs, 1) == 1) {
        bio_sentinels_decref(w->s);
        pthread_mutex_destroy(&w->lock);
        free(w);
    }
}

/* Sleep `seconds`, or less if told to stop: 1 if it was. */
static int
watch_nap(sentinel_watch *w, double seconds)
{
    double end = bio_now() + seconds;
    while (!atomic_load(&w->stop)) {
        double left = end - bio_now();
        if (left <= 0) {
            return 0;
        }
        struct timespec ts = {0, (long)(fmin(left, WATCH_TICK) * 1e9)};
        nanosleep(&ts, NULL);
    }
    return 1;
}

/* A message on the subscription: ["message", "+switch-master", "<name> <old ip>
 * <old port> <new ip> <new port>"]. Ours: note the new address, wake the I/O thread. */
static void
watch_message(sentinel_watch *w, redisReply *r)
{
    if (r->type != REDIS_REPLY_ARRAY || r->elements != 3 ||
        r->element[0]->type != REDIS_REPLY_STRING ||
        strcmp(r->element[0]->str, "message") != 0 ||
        r->element[2]->type != REDIS_REPLY_STRING) {
        return;
    }
    const char *text = r->element[2]->str;
    size_t n = w->s->service_len;
    if (strncmp(text, w->s->service, n) != 0 || text[n] != ' ') {
        return;  /* another service's */
    }
    char oldh[256], newh[256];
    int oldp, newp;
    if (sscanf(text + n + 1, "%255s %d %255s %d", oldh, &oldp, newh, &newp) != 4) {
        return;
    }
    pthread_mutex_lock(&w->lock);
    snprintf(w->addr, sizeof w->addr, "%s %d", newh, newp);
    pthread_mutex_unlock(&w->lock);
    atomic_store(&w->switched, 1);
    pthread_mutex_lock(&E.lock);
    io_wake_unlock();
}

/* Subscribed to sentinel i until it fails or we are told to stop. */
static void
watch_one(sentinel_watch *w, int i)
{
    bio_sentinels *s = w->s;
    char err[BIO_ERRLEN];
    double deadline = bio_now() + fmin(w->connect_timeout, 5.0);
    sconn conn, *fd = &conn;
    if (conn_open(s, i, deadline, &conn, err, sizeof err) < 0) {
        return;
    }
    redisReader *rd = redisReaderCreate();
    if (rd == NULL || sentinel_auth(s, fd, rd, deadline, err, sizeof err) < 0) {
        goto done;
    }
    static const char sub[] = "*2\r\n$9\r\nSUBSCRIBE\r\n$14\r\n+switch-master\r\n";
    if (sock_send(fd, sub, sizeof sub - 1, deadline, err, sizeof err) < 0) {
        goto done;
    }
    size_t bytes = 0;
    while (!atomic_load(&w->stop)) {
        void *reply;
        int rc = sock_reply(fd, rd, &reply, bio_now() + WATCH_TICK, &bytes, err,
                            sizeof err);
        if (rc < 0) {
            break;
        }
        if (rc == 1) {
            watch_message(w, reply);
            freeReplyObject(reply);
            bytes = 0;  /* the cap is per message */
        }
    }
done:
    if (rd != NULL) {
        redisReaderFree(rd);
    }
    conn_close(&conn);
}

static void *
watch_main(void *arg)
{
    sentinel_watch *w = arg;
    pthread_setname_np(pthread_self(), "bruno-sentinel");
    for (int i = 0; !atomic_load(&w->stop); i = (i + 1) % w->s->n) {
        watch_one(w, i);
        if (watch_nap(w, WATCH_RETRY)) {
            break;
        }
    }
    watch_decref(w);
    return NULL;
}

void
io_sentinel_watch_start(bio_client *c)
{
    if (c->cfg.sentinels == NULL || c->watch != NULL) {
        return;
    }
    sentinel_watch *w = calloc(1, sizeof *w);
    if (w == NULL) {
        return;  /* failovers are then followed through failures and ROLE only */
    }
    atomic_init(&w->refs, 2);
    pthread_mutex_init(&w->lock, NULL);
    w->s = c->cfg.sentinels;
    bio_sentinels_incref(w->s);
    w->connect_timeout = c->cfg.connect_timeout;
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_t t;
    int rc = pthread_create(&t, &attr, watch_main, w);
    pthread_attr_destroy(&attr);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        atomic_store(&w->refs, 1);
        watch_decref(w);
        return;
    }
    c->watch = w;
}

void
io_sentinel_watch_stop(bio_client *c)
{
    sentinel_watch *w = c->watch;
    if (w == NULL) {
        return;
    }
    c->watch = NULL;
    atomic_store(&w->stop, 1);
    watch_decref(w);
}

void
io_sentinel_poll(bio_client *c, double now)
{
    sentinel_watch *w = c->watch;
    if (w == NULL || !atomic_load(&w->switched)) {
        return;
    }
    if (c->state != ST_IDLE && c->state != ST_READY && c->state != ST_BACKOFF) {
        /* An attempt under way may have been given the old address before the
         * announcement: the flag stays until it is over, and is then checked against
         * the address it reached. */
        return;
    }
    atomic_store(&w->switched, 0);
    char addr[300], ours[300];
    pthread_mutex_lock(&w->lock);
    memcpy(addr, w->addr, sizeof addr);
    pthread_mutex_unlock(&w->lock);
    snprintf(ours, sizeof ours, "%s %d", c->cfg.host ? c->cfg.host : "", c->cfg.port);
    if (c->state == ST_BACKOFF) {
        c->backoff_until = now;  /* the new primary may be there: try it now */
        c->backoff = 0;
        return;
    }
    if (strcmp(addr, ours) == 0 || c->state != ST_READY) {
        return;  /* on the new primary already, or idle: the next attempt asks anew */
    }
    char *port = strchr(addr, ' ');
    if (port != NULL) {
        *port++ = '\0';
    }
    char msg[BIO_ERRLEN];
    snprintf(msg, sizeof msg, "Failover: the primary of '%.40s' moved to %.100s:%.8s",
             c->cfg.sentinels->service, addr, port ? port : "?");
    io_connection_failed(c, msg, now);
}
