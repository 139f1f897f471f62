/* rediscache.c: RedisCache, a Redis-backed cache over the background I/O thread.
 *
 * Storage layout is the reference's (bruno_memory.utils.cache.RedisCache 0.1.5):
 * key prefix + format(key), value json.dumps text, SET EX (PX for fractions),
 * statistics in the hash prefix + "stats". Each method builds its RESP commands,
 * submits one request and returns a pending awaitable; rc_done (run by the loop
 * bridge on the awaiting loop) turns the replies into the result. */
#include "awaitable.h"
#include "bridge.h"
#include "codec.h"
#include "io.h"
#include "rediscache.h"
#include "respscan.h"

#include <hiredis/hiredis.h>
#include <math.h>
#include <unistd.h>

#define SCAN_COUNT "1000"
/* What one reply may cost unless max_reply_bytes says otherwise: Redis' own
 * proto-max-bulk-len (respscan.h says how a reply is costed). */
#define DEFAULT_MAX_REPLY (512ULL * 1024 * 1024)

enum {
    K_CONNECT = 1, K_CLOSE, K_GET, K_SET, K_DELETE, K_EXISTS, K_MGET, K_SETMANY,
    K_CLEAR, K_STATS, K_STATS_SCAN,
    K_AUTOCONNECT = 0x100,  /* flag: the cache was not connected when called */
    K_ENTER = 0x200,        /* flag: connect() for __aenter__, returns the cache */
    K_WITH_TTL = 0x400,     /* flag: PTTL of each key follows (MultiLevelCache) */
    K_FIRST = 0x800,        /* flag: clear()'s first step (DBSIZE + SCAN) */
    K_LAST = 0x1000,        /* flag: clear()'s last step (DEL only) */
};
_Static_assert((int)K_GET == RC_GET && (int)K_SET == RC_SET && (int)K_DELETE == RC_DELETE &&
                   (int)K_EXISTS == RC_EXISTS && (int)K_MGET == RC_MGET &&
                   (int)K_SETMANY == RC_SETMANY && (int)K_CLEAR == RC_CLEAR &&
                   (int)K_STATS == RC_STATS,
               "request kinds shared with multilevel.c");

typedef struct {
    PyObject_HEAD
    bio_client *client;          /* owned C reference, or NULL before first use */
    PyObject *host;              /* owned str */
    int port;
    int db;
    PyObject *password;          /* owned str or None */
    PyObject *username;          /* owned str or None */
    PyObject *unix_socket_path;  /* owned str or None */
    PyObject *prefix;            /* owned str */
    PyObject *prefix_bytes;      /* owned bytes: prefix in UTF-8 */
    PyObject *default_ttl;       /* owned: None or a number, as given */
    PyObject *max_connections;   /* owned: as given (requests are multiplexed) */
    PyObject *pool_size;         /* owned: as given, or None */
    PyObject *max_overflow;      /* owned: as given, or None */
    double socket_timeout;       /* seconds; INFINITY for None */
    double connect_timeout;
    int connected;               /* connect() succeeded and no disconnect() since */
    unsigned long long hits, misses;  /* this process's counts */
    Py_ssize_t in_flight;        /* submitted, not yet finished (delivered) */
    unsigned long long max_reply;  /* max_reply_bytes */
    PyObject *last_bridge;       /* owned LoopBridge of the last loop used, or NULL */
    PyObject *rl_holder;         /* owned, or NULL: asyncio's running-loop holder seen
                                    with last_bridge (identity check; see rc_bridge) */
    PyObject *weakreflist;
    bruno_state *st;             /* borrowed */
} RedisCache;

static PyObject *rc_error(RedisCache *self, const char *prefix, const char *detail);

/* ------------------------------------------------------------------ helpers */

static double
timeout_arg(PyObject *v, const char *what, int *err)
{
    if (v == NULL) {
        return 5.0;
    }
    if (v == Py_None) {
        return INFINITY;
    }
    double d = PyFloat_AsDouble(v);
    if (d == -1.0 && PyErr_Occurred()) {
        PyErr_Format(PyExc_TypeError, "%s must be a number or None", what);
        *err = 1;
        return 0;
    }
    if (!(d > 0)) {
        PyErr_Format(PyExc_ValueError, "%s must be > 0", what);
        *err = 1;
        return 0;
    }
    return d;
}

/* ttl (None: default_ttl) as an expiry option: *mode 0 = none, 1 = EX secs, 2 = PX ms.
 * Falsy ttl stores without expiry, as in the reference. */
static int
ttl_option(RedisCache *self, PyObject *ttl, int *mode, long long *amount)
{
    if (ttl == NULL || ttl == Py_None) {
        ttl = self->default_ttl;
    }
    *mode = 0;
    if (ttl == Py_None) {
        return 0;
    }
    double v;
    if (bruno_seconds(ttl, "ttl", &v) < 0) {
        return -1;
    }
    if (v == 0 || v > 1e15) {
        return 0;  /* falsy: no expiry; beyond any real horizon: none either */
    }
    if (v == floor(v)) {
        *mode = 1;
        *amount = (long long)v;
    }
    else {
        *mode = 2;
        *amount = (long long)ceil(v * 1000.0);
    }
    return 0;
}

/* The UTF-8 of str s (reference stolen): *holder keeps s, which owns the bytes. */
static const char *
utf8_held(PyObject *s, Py_ssize_t *len, PyObject **holder)
{
    const char *text = PyUnicode_AsUTF8AndSize(s, len);
    if (text == NULL) {
        Py_DECREF(s);
        return NULL;
    }
    *holder = s;
    return text;
}

/* format(key) in UTF-8, as the reference's f"{prefix}{key}" spells it.
 * *holder receives the str owning the bytes (new reference). */
static const char *
key_text(PyObject *key, Py_ssize_t *len, PyObject **holder)
{
    PyObject *s;
    if (PyUnicode_CheckExact(key)) {
        s = Py_NewRef(key);
    }
    else {
        s = PyObject_Format(key, NULL);
        if (s == NULL) {
            return NULL;
        }
    }
    return utf8_held(s, len, holder);
}

/* Append the bulk string prefix + key text. */
static void
append_key_text(RedisCache *self, bio_buf *b, const char *text, Py_ssize_t len)
{
    bio_buf_bulk2(b, PyBytes_AS_STRING(self->prefix_bytes),
                  (size_t)PyBytes_GET_SIZE(self->prefix_bytes), text, (size_t)len);
}

/* Append the bulk string prefix + format(key). Returns 0 or -1. */
static int
append_key(RedisCache *self, bio_buf *b, PyObject *key)
{
    Py_ssize_t len;
    PyObject *holder;
    const char *text = key_text(key, &len, &holder);
    if (text == NULL) {
        return -1;
    }
    append_key_text(self, b, text, len);
    Py_DECREF(holder);
    return 0;
}

static void
append_str(bio_buf *b, const char *s)
{
    bio_buf_bulk(b, s, strlen(s));
}

/* SCAN cursor MATCH <prefix with glob characters escaped>* COUNT n */
static void
append_scan(RedisCache *self, bio_buf *b, const char *cursor, size_t cursor_len)
{
    const char *p = PyBytes_AS_STRING(self->prefix_bytes);
    size_t n = (size_t)PyBytes_GET_SIZE(self->prefix_bytes);
    char small[256];
    char *pat = 2 * n + 2 <= sizeof small ? small : malloc(2 * n + 2);
    if (pat == NULL) {
        b->oom = 1;
        return;
    }
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (p[i] == '*' || p[i] == '?' || p[i] == '[' || p[i] == ']' || p[i] == '\\') {
            pat[k++] = '\\';
        }
        pat[k++] = p[i];
    }
    pat[k++] = '*';
    bio_buf_array(b, 6);
    append_str(b, "SCAN");
    bio_buf_bulk(b, cursor, cursor_len);
    append_str(b, "MATCH");
    bio_buf_bulk(b, pat, k);
    append_str(b, "COUNT");
    append_str(b, SCAN_COUNT);
    if (pat != small) {
        free(pat);
    }
}

/* json.dumps(value) as UTF-8; *holder owns the bytes. NULL with the exception. */
static const char *
encode_value(RedisCache *self, PyObject *value, Py_ssize_t *len, PyObject **holder)
{
    PyObject *s = bruno_json_dumps(self->st, value);
    if (s == NULL) {
        return NULL;
    }
    return utf8_held(s, len, holder);
}

/* ------------------------------------------------------------------ client */

static bio_client *
rc_client(RedisCache *self)
{
    if (self->client != NULL && bio_client_pid(self->client) != bio_pid()) {
        /* A forked child: the parent's connection is not ours. Leave it alone
         * (the C reference is abandoned) and start afresh. */
        self->client = NULL;
        self->connected = 0;
        self->in_flight = 0;
        Py_CLEAR(self->last_bridge);
        Py_CLEAR(self->rl_holder);
    }
    if (self->client != NULL) {
        return self->client;
    }
    bio_config cfg = {0};
    cfg.port = self->port;
    cfg.db = self->db;
    cfg.connect_timeout = self->connect_timeout;
    cfg.socket_timeout = self->socket_timeout;
    cfg.max_reply = self->max_reply;
    cfg.host = (char *)PyUnicode_AsUTF8(self->host);
    if (cfg.host == NULL) {
        return NULL;
    }
    if (self->unix_socket_path != Py_None &&
        (cfg.unix_path = (char *)PyUnicode_AsUTF8(self->unix_socket_path)) == NULL) {
        return NULL;
    }
    Py_ssize_t n;
    if (self->password != Py_None &&
        (cfg.password = (char *)PyUnicode_AsUTF8AndSize(self->password, &n)) == NULL) {
        return NULL;
    }
    cfg.password_len = self->password != Py_None ? (size_t)n : 0;
    if (self->username != Py_None &&
        (cfg.username = (char *)PyUnicode_AsUTF8AndSize(self->username, &n)) == NULL) {
        return NULL;
    }
    cfg.username_len = self->username != Py_None ? (size_t)n : 0;
    size_t plen = (size_t)PyBytes_GET_SIZE(self->prefix_bytes);
    char *key = malloc(plen + 6);
    if (key == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    memcpy(key, PyBytes_AS_STRING(self->prefix_bytes), plen);
    memcpy(key + plen, "stats", 5);
    cfg.stats_key = key;
    cfg.stats_key_len = plen + 5;
    self->client = bio_client_new(&cfg);
    free(key);
    if (self->client == NULL) {
        PyErr_NoMemory();
    }
    return self->client;
}

/* The bridge of the running loop (borrowed from self->last_bridge), or NULL with
 * *no_loop set when no loop runs (no exception), or NULL with an exception. */
static PyObject *
rc_bridge(RedisCache *self, int *no_loop)
{
    *no_loop = 0;
    /* Fast path. asyncio.get_running_loop() costs a getpid() system call on 3.11.
     * Its C implementation keeps the running loop in an immutable holder object in
     * the thread state dict, replaced whenever a loop starts or stops in the thread:
     * the same holder object as last time means the same running loop. (Where the
     * holder is not found, e.g. on later Pythons, the slow path serves.) */
    PyObject *tsdict = PyThreadState_GetDict();
    PyObject *holder = tsdict ? PyDict_GetItemWithError(tsdict, self->st->str_running_loop_key)
                              : NULL;  /* borrowed */
    if (holder != NULL && holder == self->rl_holder && self->last_bridge != NULL) {
        return self->last_bridge;
    }
    PyErr_Clear();
    /* Held from here: the calls below run Python code, which may start or stop a loop
     * in this thread and so replace (and free) the holder in the dict. */
    Py_XINCREF(holder);
    PyObject *loop = PyObject_CallNoArgs(self->st->get_running_loop);
    if (loop == NULL) {
        Py_XDECREF(holder);
        if (PyErr_ExceptionMatches(PyExc_RuntimeError)) {
            PyErr_Clear();
            *no_loop = 1;
        }
        return NULL;
    }
    if (self->last_bridge == NULL || !bruno_bridge_serves(self->last_bridge, loop)) {
        PyObject *bridge = bruno_bridge_for_loop(self->st, loop);
        if (bridge == NULL) {
            Py_DECREF(loop);
            Py_XDECREF(holder);
            return NULL;
        }
        Py_XSETREF(self->last_bridge, bridge);
    }
    Py_DECREF(loop);
    Py_XSETREF(self->rl_holder, holder);  /* our reference moves in */
    return self->last_bridge;
}

static void rc_done(bio_req *r);

/* Hand r to the I/O thread through the running loop's bridge. However many are in
 * flight, it is taken: past what one connection pipelines, the I/O thread keeps
 * requests waiting, in order (no loop needs to run for them to move on). 0 or -1. */
static int
rc_submit(RedisCache *self, bio_req *r, PyObject *bridge)
{
    self->in_flight++;
    if (bruno_bridge_submit(bridge, r, self->in_flight) < 0) {
        self->in_flight--;
        return -1;
    }
    return 0;
}

/* Free a request that was never submitted (its references included). */
static void
drop_unsent(void *p)
{
    bio_req *r = p;
    Py_XDECREF((PyObject *)r->ctx);
    r->ctx = NULL;
    if (r->via != NULL) {
        ml_via *via = r->via;
        r->via = NULL;
        bruno_mlc_via_drop(via);
    }
    bio_req_free(r);
}

/* The Python objects a request not yet submitted holds, for the collector. */
static int
traverse_unsent(void *p, visitproc visit, void *arg)
{
    bio_req *r = p;
    Py_VISIT((PyObject *)r->ctx);
    return r->via != NULL ? bruno_mlc_via_traverse(r->via, visit, arg) : 0;
}

/* Start a deferred request: the awaitable is being awaited in a loop now. */
static int
start_deferred(PyObject *awobj)
{
    BrunoAwaitable *aw = (BrunoAwaitable *)awobj;
    bio_req *r = aw->deferred;
    RedisCache *self = (RedisCache *)r->ctx;
    int no_loop;
    PyObject *bridge = rc_bridge(self, &no_loop);
    if (bridge == NULL) {
        if (no_loop) {
            PyErr_SetString(PyExc_RuntimeError, "no running event loop");
        }
        return -1;
    }
    if (bio_client_pid(r->client) != bio_pid()) {
        /* Made before a fork, awaited in the child: the parent's client is not served
         * here. The request goes to this process's (the parent's reference is
         * abandoned, as rc_client abandons the parent's client). */
        bio_client *own = rc_client(self);
        if (own == NULL) {
            return -1;
        }
        r->client = own;
        bio_client_incref(own);
    }
    aw->deferred = NULL;
    Py_XSETREF(aw->loop, bruno_bridge_loop(bridge));
    aw->plain_future = bruno_bridge_plain_future(bridge);
    r->bridge = bruno_bridge_c(bridge);
    bio_bridge_incref(r->bridge);
    r->user = Py_NewRef(awobj);
    if (rc_submit(self, r, bridge) < 0) {
        Py_DECREF(awobj);
        r->user = NULL;
        drop_unsent(r);
        return -1;
    }
    return 0;
}

/* Make a request of `kind` from the commands in b (taken), submit it, and return
 * its pending awaitable. Without a running loop the request waits in the
 * awaitable until it is awaited. With `failure` (op BIO_OP_FAIL) the request fails
 * with that message without being sent, and comes back as any failed request. */
static PyObject *
rc_request(RedisCache *self, const char *qualname, int kind, int op, bio_buf *b,
           ml_via *via, const char *failure)
{
    bio_client *client = b->oom ? NULL : rc_client(self);
    if (client == NULL) {
        if (b->oom) {
            PyErr_NoMemory();
        }
        bio_buf_free(b);
        if (via != NULL) {
            bruno_mlc_via_drop(via);
        }
        return NULL;
    }
    if (!self->connected && op == BIO_OP_CMD) {
        kind |= K_AUTOCONNECT;
    }
    bio_req *r = bio_req_new(client, NULL, op, b->ncmd);
    if (r == NULL) {
        bio_buf_free(b);
        if (via != NULL) {
            bruno_mlc_via_drop(via);
        }
        return PyErr_NoMemory();
    }
    r->via = via;  /* from here on, drop_unsent gives it back */
    r->buf = b->data;
    r->len = b->len;
    b->data = NULL;
    bio_buf_free(b);
    r->kind = kind;
    r->on_done = rc_done;
    r->ctx = Py_NewRef(self);
    if (failure != NULL) {
        snprintf(r->err, sizeof r->err, "%s", failure);
    }
    PyObject *awobj = bruno_aw_pending(self->st, qualname);
    if (awobj == NULL) {
        drop_unsent(r);
        return NULL;
    }
    BrunoAwaitable *aw = (BrunoAwaitable *)awobj;
    bruno_aw_defer(aw, r, start_deferred, drop_unsent, traverse_unsent);
    int no_loop;
    PyObject *bridge = rc_bridge(self, &no_loop);
    if (bridge == NULL) {
        if (no_loop) {
            return awobj;  /* started by its first send */
        }
        Py_DECREF(awobj);
        return NULL;
    }
    if (start_deferred(awobj) < 0) {
        Py_DECREF(awobj);
        return NULL;
    }
    return awobj;
}

/* ------------------------------------------------------------------ completion */

static void
log_error(RedisCache *self, const char *fmt, PyObject *arg)
{
    PyObject *saved = PyErr_GetRaisedException();
    PyObject *r = PyObject_CallMethod(self->st->logger, "error", "sO", fmt, arg);
    if (r == NULL) {
        PyErr_Clear();
    }
    Py_XDECREF(r);
    PyErr_SetRaisedException(saved);
}

/* Log the exception being raised (which is cleared) with fmt % str(exception). */
static void
log_current_error(RedisCache *self, const char *fmt)
{
    PyObject *value = PyErr_GetRaisedException();
    PyObject *s = value ? PyObject_Str(value) : NULL;
    PyErr_Clear();
    log_error(self, fmt, s ? s : Py_None);
    Py_XDECREF(s);
    Py_XDECREF(value);
}

static void
log_error2(RedisCache *self, const char *fmt, PyObject *key, PyObject *detail)
{
    PyObject *saved = PyErr_GetRaisedException();
    PyObject *r = PyObject_CallMethod(self->st->logger, "error", "sOO", fmt,
                                      key ? key : Py_None, detail);
    if (r == NULL) {
        PyErr_Clear();
    }
    Py_XDECREF(r);
    PyErr_SetRaisedException(saved);
}

/* CacheError(prefix + detail), as an exception instance (new reference). */
static PyObject *
rc_error(RedisCache *self, const char *prefix, const char *detail)
{
    /* (detail may have been cut short in the middle of a UTF-8 sequence) */
    PyObject *text = PyUnicode_DecodeUTF8(detail, (Py_ssize_t)strlen(detail), "replace");
    PyObject *msg = text ? PyUnicode_FromFormat("%s%U", prefix, text) : NULL;
    Py_XDECREF(text);
    if (msg == NULL) {
        return NULL;
    }
    PyObject *exc = PyObject_CallOneArg(self->st->CacheError, msg);
    Py_DECREF(msg);
    return exc;
}

static PyObject *
reply_error_text(redisReply *rep)
{
    return PyUnicode_DecodeUTF8(rep->str, (Py_ssize_t)rep->len, "replace");
}

/* JSON text from Redis -> Python value (new reference), or NULL with exception. */
static PyObject *
decode_value(RedisCache *self, redisReply *rep)
{
    return bruno_json_loads(self->st, rep->str, rep->len);
}

static void
count(RedisCache *self, int hit)
{
    bio_counters *c = bio_client_counters(self->client);
    if (hit) {
        self->hits++;
        atomic_fetch_add(&c->pending_hits, 1);
    }
    else {
        self->misses++;
        atomic_fetch_add(&c->pending_misses, 1);
    }
}

/* What a failed request gives, per method (the reference's error semantics). */
static PyObject *
failed_result(RedisCache *self, int kind, const char *what, PyObject *key, PyObject **exc)
{
    PyObject *text = PyUnicode_DecodeUTF8(what, (Py_ssize_t)strlen(what), "replace");
    if (text == NULL) {
        return NULL;
    }
    switch (kind) {
    case K_GET:
        log_error2(self, "Error getting key %s: %s", key, text);
        Py_DECREF(text);
        Py_RETURN_NONE;
    case K_MGET:
        log_error(self, "Error getting multiple keys: %s", text);
        Py_DECREF(text);
        return PyDict_New();
    case K_DELETE:
        log_error2(self, "Error deleting key %s: %s", key, text);
        Py_DECREF(text);
        Py_RETURN_FALSE;
    case K_EXISTS:
        log_error2(self, "Error checking key %s: %s", key, text);
        Py_DECREF(text);
        Py_RETURN_FALSE;
    case K_SET:
        log_error2(self, "Error setting key %s: %s", key, text);
        *exc = rc_error(self, "Failed to set cache key: ", what);
        break;
    case K_SETMANY:
        log_error(self, "Error setting multiple keys: %s", text);
        *exc = rc_error(self, "Failed to set multiple keys: ", what);
        break;
    case K_CLEAR:
        log_error(self, "Error clearing cache: %s", text);
        *exc = rc_error(self, "Failed to clear cache: ", what);
        break;
    case K_STATS:
    case K_STATS_SCAN:
        log_error(self, "Error getting stats: %s", text);
        return Py_BuildValue("{s:s,s:N}", "type", "redis", "error", text);
    default:  /* connect(), or a method that had to connect first */
        log_error(self, "Failed to connect to Redis: %s", text);
        *exc = rc_error(self, "Redis connection failed: ", what);
        break;
    }
    Py_DECREF(text);
    return NULL;
}

/* A follow-up request for a multi-step operation, reusing the awaitable; the
 * finished request `prev` hands its via (if any) over to it. */
static int
rc_continue(RedisCache *self, BrunoAwaitable *aw, bio_req *prev, int kind, bio_buf *b)
{
    int no_loop;
    PyObject *bridge = rc_bridge(self, &no_loop);  /* the loop draining us */
    if (bridge == NULL) {
        bio_buf_free(b);
        if (no_loop) {
            PyErr_SetString(PyExc_RuntimeError, "no running event loop");
        }
        return -1;
    }
    bio_req *r = bio_req_new(self->client, bruno_bridge_c(bridge), BIO_OP_CMD, b->ncmd);
    if (r == NULL || b->oom) {
        bio_req_free(r);
        bio_buf_free(b);
        PyErr_NoMemory();
        return -1;
    }
    r->buf = b->data;
    r->len = b->len;
    b->data = NULL;
    bio_buf_free(b);
    r->kind = kind;
    r->on_done = rc_done;
    r->ctx = Py_NewRef(self);
    r->user = Py_NewRef(aw);
    r->via = prev->via;
    prev->via = NULL;
    if (rc_submit(self, r, bridge) < 0) {
        prev->via = r->via;
        r->via = NULL;
        Py_DECREF(aw);
        Py_DECREF(self);
        r->user = r->ctx = NULL;
        bio_req_free(r);
        return -1;
    }
    return 0;
}

/* SCAN reply: [cursor, [keys...]]. Returns 0 and fills cursor/keys, or -1. */
static int
scan_parts(redisReply *rep, redisReply **cursor, redisReply **keys)
{
    if (rep->type != REDIS_REPLY_ARRAY || rep->elements != 2 ||
        rep->element[0]->type != REDIS_REPLY_STRING ||
        rep->element[1]->type != REDIS_REPLY_ARRAY) {
        return -1;
    }
    for (size_t i = 0; i < rep->element[1]->elements; i++) {
        if (rep->element[1]->element[i]->type != REDIS_REPLY_STRING) {
            return -1;  /* keys are bulk strings */
        }
    }
    *cursor = rep->element[0];
    *keys = rep->element[1];
    return 0;
}

static int
cursor_done(redisReply *cursor)
{
    return cursor->len == 1 && cursor->str[0] == '0';
}

/* Where a SCAN loop (clear(), get_stats()'s count) is: the steps it may still take
 * and its last cursor, bits reversed. A server that answers with a non-zero cursor for
 * ever (broken or hostile) must not keep it going:
 *   - Redis iterates in reverse binary order, so a cursor read bit-reversed grows at
 *     every step until the final 0, whatever resizes and rehashing happen meanwhile: a
 *     cursor that does not is an error at once;
 *   - and the steps are capped: each SCAN ... COUNT 1000 returns about 1000 keys or
 *     visits 10,000 buckets, so even a table of 2^32 buckets takes about 430,000
 *     steps; the cap is 2^20 plus one per 100 keys of DBSIZE. */
typedef struct {
    long long left;
    unsigned long long rev;
} scan_pos;

static scan_pos
scan_start(long long dbsize)
{
    scan_pos pos = {(1LL << 20) + (dbsize > 0 ? dbsize / 100 : 0), 0};
    return pos;
}

/* Take one more step from `cursor` (a SCAN reply's, not "0"): NULL, or why not. */
static const char *
scan_advance(scan_pos *pos, redisReply *cursor)
{
    if (cursor->len == 0 || cursor->len > 20) {
        return "unexpected SCAN cursor";
    }
    unsigned long long v = 0;
    for (size_t i = 0; i < cursor->len; i++) {
        char c = cursor->str[i];
        if (c < '0' || c > '9' || v > (~0ULL - 9) / 10) {
            return "unexpected SCAN cursor";
        }
        v = v * 10 + (unsigned long long)(c - '0');
    }
    unsigned long long rev = 0;
    for (int i = 0; i < 64; i++, v >>= 1) {
        rev = (rev << 1) | (v & 1);
    }
    if (rev <= pos->rev) {
        return "SCAN cursor did not advance";
    }
    if (--pos->left <= 0) {
        return "SCAN did not finish (more steps than any keyspace needs)";
    }
    pos->rev = rev;
    return NULL;
}

/* clear(): the first step is DBSIZE + SCAN 0, then [DEL keys] SCAN cursor while the
 * cursor is not 0, then a last DEL of what the last SCAN found. aw->ctx holds the
 * steps left (a Python int). An abandoned clear (its awaitable cancelled or closed)
 * stops at its next step: what the steps already taken deleted stays deleted.
 * Returns a new reference (None when done), or NULL with *exc or an exception;
 * *pending = 1 when a follow-up was submitted. */
static PyObject *
clear_step(RedisCache *self, BrunoAwaitable *aw, bio_req *r, PyObject **exc, int *pending)
{
    for (int i = 0; i < r->nrep; i++) {
        redisReply *rep = r->replies[i];
        if (rep->type == REDIS_REPLY_ERROR) {
            PyObject *t = reply_error_text(rep);
            PyObject *res = failed_result(self, K_CLEAR, t ? PyUnicode_AsUTF8(t) : "", NULL, exc);
            Py_XDECREF(t);
            return res;
        }
    }
    redisReply *last = r->replies[r->nrep - 1], *cursor, *keys;
    if (r->kind & K_LAST) {
        if (last->type != REDIS_REPLY_INTEGER) {
            return failed_result(self, K_CLEAR, "unexpected DEL reply", NULL, exc);
        }
        Py_RETURN_NONE;
    }
    if (scan_parts(last, &cursor, &keys) < 0) {
        return failed_result(self, K_CLEAR, "unexpected SCAN reply", NULL, exc);
    }
    scan_pos pos;
    if (r->kind & K_FIRST) {
        redisReply *dbsize = r->replies[0];
        if (dbsize->type != REDIS_REPLY_INTEGER) {
            return failed_result(self, K_CLEAR, "unexpected DBSIZE reply", NULL, exc);
        }
        pos = scan_start(dbsize->integer);
    }
    else if (aw->ctx == NULL || !PyArg_ParseTuple(aw->ctx, "LK", &pos.left, &pos.rev)) {
        return NULL;
    }
    if (aw->state == AW_DONE) {
        Py_RETURN_NONE;  /* abandoned: no further step */
    }
    if (keys->elements == 0 && cursor_done(cursor)) {
        Py_RETURN_NONE;
    }
    const char *stuck = cursor_done(cursor) ? NULL : scan_advance(&pos, cursor);
    if (stuck != NULL) {
        return failed_result(self, K_CLEAR, stuck, NULL, exc);
    }
    PyObject *state = Py_BuildValue("(LK)", pos.left, pos.rev);
    if (state == NULL) {
        return NULL;
    }
    Py_XSETREF(aw->ctx, state);
    bio_buf b;
    bio_buf_init(&b);
    if (keys->elements > 0) {
        bio_buf_array(&b, keys->elements + 1);
        append_str(&b, "DEL");
        for (size_t i = 0; i < keys->elements; i++) {
            bio_buf_bulk(&b, keys->element[i]->str, keys->element[i]->len);
        }
    }
    int kind = K_CLEAR;
    if (!cursor_done(cursor)) {
        append_scan(self, &b, cursor->str, cursor->len);
    }
    else {
        kind |= K_LAST;
    }
    if (rc_continue(self, aw, r, kind, &b) < 0) {
        return NULL;
    }
    *pending = 1;
    return NULL;
}

/* get_stats()'s error dict (logged): the text of an error reply `rep`, else `what`. */
static PyObject *
stats_failed(RedisCache *self, redisReply *rep, const char *what)
{
    PyObject *t = rep != NULL && rep->type == REDIS_REPLY_ERROR ? reply_error_text(rep) : NULL;
    const char *detail = t != NULL ? PyUnicode_AsUTF8(t) : what;
    PyObject *unused = NULL;
    PyObject *d = detail != NULL ? failed_result(self, K_STATS, detail, NULL, &unused) : NULL;
    Py_XDECREF(t);
    return d;
}

/* get_stats(): [HINCRBY...]* HGETALL SCAN, then SCAN until the cursor is 0.
 * aw->ctx is a list [hits, misses, size]. */
static PyObject *
stats_step(RedisCache *self, BrunoAwaitable *aw, bio_req *r, int *pending)
{
    redisReply *scan = r->replies[r->nrep - 1], *cursor, *keys;
    PyObject *acc = aw->ctx;
    if ((r->kind & 0xff) == K_STATS) {
        redisReply *h = r->replies[r->nrep - 3], *dbsize = r->replies[r->nrep - 2];
        long long hits = 0, misses = 0;
        if (h->type == REDIS_REPLY_ARRAY) {
            for (size_t i = 0; i + 1 < h->elements; i += 2) {
                redisReply *f = h->element[i], *v = h->element[i + 1];
                if (f->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING) {
                    continue;
                }
                long long n = strtoll(v->str, NULL, 10);
                if (f->len == 4 && memcmp(f->str, "hits", 4) == 0) {
                    hits = n;
                }
                else if (f->len == 6 && memcmp(f->str, "misses", 6) == 0) {
                    misses = n;
                }
            }
        }
        else if (h->type == REDIS_REPLY_ERROR && strncmp(h->str, "WRONGTYPE", 9) == 0) {
            /* A user value sits at prefix + "stats": the persisted counters are
             * unavailable; report this process's own. */
            hits = (long long)self->hits;
            misses = (long long)self->misses;
        }
        else {
            return stats_failed(self, h, "unexpected HGETALL reply");
        }
        if (dbsize->type != REDIS_REPLY_INTEGER) {
            return stats_failed(self, NULL, "unexpected DBSIZE reply");
        }
        scan_pos pos = scan_start(dbsize->integer);
        acc = Py_BuildValue("[LLiLK]", hits, misses, 0, pos.left, pos.rev);
        if (acc == NULL) {
            return NULL;
        }
        Py_XSETREF(aw->ctx, acc);
    }
    if (scan->type == REDIS_REPLY_ERROR) {
        return stats_failed(self, scan, NULL);
    }
    if (scan_parts(scan, &cursor, &keys) < 0) {
        return stats_failed(self, NULL, "unexpected SCAN reply");
    }
    long long size = PyLong_AsLongLong(PyList_GET_ITEM(acc, 2)) + (long long)keys->elements;
    PyObject *sz = PyLong_FromLongLong(size);
    if (sz == NULL) {
        return NULL;
    }
    PyList_SetItem(acc, 2, sz);
    if (!cursor_done(cursor)) {
        scan_pos pos = {PyLong_AsLongLong(PyList_GET_ITEM(acc, 3)),
                        PyLong_AsUnsignedLongLong(PyList_GET_ITEM(acc, 4))};
        const char *stuck = scan_advance(&pos, cursor);
        if (stuck != NULL) {
            return stats_failed(self, NULL, stuck);
        }
        PyObject *left = PyLong_FromLongLong(pos.left);
        PyObject *rev = PyLong_FromUnsignedLongLong(pos.rev);
        if (left == NULL || rev == NULL) {
            Py_XDECREF(left);
            Py_XDECREF(rev);
            return NULL;
        }
        PyList_SetItem(acc, 3, left);
        PyList_SetItem(acc, 4, rev);
        bio_buf b;
        bio_buf_init(&b);
        append_scan(self, &b, cursor->str, cursor->len);
        if (rc_continue(self, aw, r, K_STATS_SCAN, &b) < 0) {
            return NULL;
        }
        *pending = 1;
        return NULL;
    }
    long long hits = PyLong_AsLongLong(PyList_GET_ITEM(acc, 0));
    long long misses = PyLong_AsLongLong(PyList_GET_ITEM(acc, 1));
    /* In doubles: counters another client wrote may be anything, up to LLONG_MAX
     * each, whose sum a long long cannot hold. */
    double total = (double)hits + (double)misses;
    PyObject *rate = PyFloat_FromDouble(total > 0 ? (double)hits / total * 100 : 0.0);
    if (rate == NULL) {
        return NULL;
    }
    PyObject *rounded = PyObject_CallMethod(rate, "__round__", "i", 2);
    Py_DECREF(rate);
    if (rounded == NULL) {
        return NULL;
    }
    return Py_BuildValue("{s:s,s:L,s:L,s:L,s:N,s:O}", "type", "redis", "size", size,
                         "hits", hits, "misses", misses, "hit_rate", rounded,
                         "connected", self->connected ? Py_True : Py_False);
}

/* The result of a successful round trip (all replies present). */
static PyObject *
ok_result(RedisCache *self, BrunoAwaitable *aw, bio_req *r, PyObject **exc, int *pending)
{
    int kind = r->kind & 0xff;
    redisReply *rep = r->nrep > 0 ? r->replies[0] : NULL;
    switch (kind) {
    case K_CONNECT:
        self->connected = 1;
        if (r->kind & K_ENTER) {
            return Py_NewRef(self);
        }
        Py_RETURN_NONE;
    case K_CLOSE:
        self->connected = 0;
        Py_RETURN_NONE;
    case K_GET:
        if (rep->type == REDIS_REPLY_NIL) {
            count(self, 0);
            Py_RETURN_NONE;
        }
        if (rep->type == REDIS_REPLY_STRING) {
            count(self, 1);
            if (aw->state == AW_DONE && r->via == NULL) {
                Py_RETURN_NONE;  /* nobody will read it (nor promote it): skip decoding */
            }
            PyObject *v = decode_value(self, rep);
            if (v == NULL) {
                /* Stored text that is not JSON: None, and the error logged. */
                log_current_error(self, "Error decoding cached value: %s");
                Py_RETURN_NONE;
            }
            return v;
        }
        break;
    case K_SET:
        if (rep->type == REDIS_REPLY_STATUS) {
            Py_RETURN_NONE;
        }
        break;
    case K_DELETE:
    case K_EXISTS:
        if (rep->type == REDIS_REPLY_INTEGER) {
            return PyBool_FromLong(rep->integer > 0);
        }
        break;
    case K_MGET: {
        PyObject *keys = aw->ctx;  /* tuple of the requested keys; NULL once abandoned */
        if (keys == NULL && rep->type == REDIS_REPLY_ARRAY) {
            for (size_t i = 0; i < rep->elements; i++) {  /* nobody reads: count only */
                count(self, rep->element[i]->type == REDIS_REPLY_STRING);
            }
            Py_RETURN_NONE;
        }
        if (keys == NULL || rep->type != REDIS_REPLY_ARRAY ||
            (Py_ssize_t)rep->elements != PyTuple_GET_SIZE(keys)) {
            break;
        }
        PyObject *d = PyDict_New();
        if (d == NULL) {
            return NULL;
        }
        Py_INCREF(keys);  /* a key's __eq__ may close the awaitable, freeing ctx */
        for (size_t i = 0; i < rep->elements; i++) {
            redisReply *e = rep->element[i];
            if (e->type != REDIS_REPLY_STRING) {
                count(self, 0);
                continue;
            }
            count(self, 1);
            PyObject *v = decode_value(self, e);
            if (v == NULL || PyDict_SetItem(d, PyTuple_GET_ITEM(keys, (Py_ssize_t)i), v) < 0) {
                /* As the reference: a bad value fails the whole call ({}). */
                Py_XDECREF(v);
                Py_DECREF(d);
                Py_DECREF(keys);
                log_current_error(self, "Error getting multiple keys: %s");
                return PyDict_New();
            }
            Py_DECREF(v);
        }
        Py_DECREF(keys);
        return d;
    }
    case K_SETMANY:
        for (int i = 0; i < r->nrep; i++) {
            redisReply *e = r->replies[i];
            if (e->type == REDIS_REPLY_ERROR) {
                PyObject *t = reply_error_text(e);
                PyObject *res = failed_result(self, K_SETMANY, t ? PyUnicode_AsUTF8(t) : "",
                                              NULL, exc);
                Py_XDECREF(t);
                return res;
            }
        }
        Py_RETURN_NONE;
    case K_CLEAR:
        return clear_step(self, aw, r, exc, pending);
    case K_STATS:
    case K_STATS_SCAN:
        if (aw->state == AW_DONE) {
            Py_RETURN_NONE;  /* abandoned (cancelled, closed): stop scanning */
        }
        return stats_step(self, aw, r, pending);
    }
    /* A Redis error reply (WRONGTYPE, OOM, ...) or an unexpected reply type. */
    const char *what = "unexpected reply";
    PyObject *t = NULL;
    if (rep != NULL && rep->type == REDIS_REPLY_ERROR) {
        t = reply_error_text(rep);
        what = t ? PyUnicode_AsUTF8(t) : "error";
    }
    PyObject *res = failed_result(self, kind, what, kind == K_MGET ? NULL : aw->ctx, exc);
    Py_XDECREF(t);
    return res;
}

/* The Python error being raised, as an exception instance for the awaiting task. */
static PyObject *
fetch_error(RedisCache *self)
{
    PyObject *value = PyErr_GetRaisedException();
    return value ? value : rc_error(self, "internal error: ", "no result");
}

/* Called by the loop bridge, on the awaiting loop, for each finished request. */
static void
rc_done(bio_req *r)
{
    BrunoAwaitable *aw = (BrunoAwaitable *)r->user;  /* owned */
    RedisCache *self = (RedisCache *)r->ctx;         /* owned */
    r->user = r->ctx = NULL;
    self->in_flight--;
    PyObject *exc = NULL, *result = NULL;
    int pending = 0;
    int kind = r->kind & 0xff;
    if (kind == K_STATS && r->status != BIO_OK && !r->sent && aw->ctx != NULL &&
        PyTuple_Check(aw->ctx)) {
        /* The pending statistics it carried never left: they are pending again. */
        unsigned long long hits, misses;
        if (PyArg_ParseTuple(aw->ctx, "KK", &hits, &misses)) {
            bio_counters *c = bio_client_counters(self->client);
            atomic_fetch_add(&c->pending_hits, hits);
            atomic_fetch_add(&c->pending_misses, misses);
        }
        PyErr_Clear();
    }
    if (r->status == BIO_EDROPPED) {
        /* Its loop is gone, so nobody can be waiting: drop it quietly. */
        result = Py_NewRef(Py_None);
    }
    else if (r->status == BIO_OK) {
        if (r->kind & K_AUTOCONNECT) {
            self->connected = 1;  /* connected on the way, as the reference's connect() */
        }
        result = ok_result(self, aw, r, &exc, &pending);
    }
    else if (kind == K_CONNECT ||
             ((r->kind & K_AUTOCONNECT) && !(r->via != NULL && kind != K_SET &&
                                             kind != K_SETMANY))) {
        /* As the reference: a method that had to connect first raises the
         * connection failure. (A MultiLevelCache's reads never raise for their
         * L2: they fall through to the usual failure result below.) */
        result = failed_result(self, K_CONNECT, r->err, NULL, &exc);
    }
    else if (kind == K_CLOSE) {
        self->connected = 0;
        result = Py_NewRef(Py_None);
    }
    else {
        result = failed_result(self, kind, r->err, aw->ctx, &exc);
    }
    if (result != NULL || exc != NULL) {
        PyErr_Clear();  /* a secondary failure while building the answer */
    }
    if (r->via != NULL) {
        ml_via *via = r->via;
        r->via = NULL;
        if (result == NULL && exc == NULL) {
            exc = fetch_error(self);
        }
        bruno_mlc_l2_done(via, r, kind, &result, &exc);
    }
    if (!pending) {
        if (result == NULL && exc == NULL) {
            exc = fetch_error(self);  /* a Python error while converting */
        }
        int rc = result != NULL ? bruno_aw_complete(aw, result) : bruno_aw_fail(aw, exc);
        if (rc < 0) {
            PyErr_Clear();  /* e.g. the loop closed under a parked task */
        }
    }
    bio_req_free(r);
    Py_DECREF(aw);
    Py_DECREF(self);
}

/* ------------------------------------------------------------------ methods */

/* What a request could not be made for gives its via back. */
static PyObject *
no_request(PyObject *ret, ml_via *via)
{
    if (via != NULL) {
        bruno_mlc_via_drop(via);
    }
    return ret;
}

/* A read whose key cannot become text (str() or format() raised, or the text is not
 * UTF-8 encodable): as in the reference, whose key building sits inside its try, the
 * method gives its failure value (None / False / {}) and the error is logged — the
 * request takes the normal way back, failed without being sent (so a
 * MultiLevelCache counts it as an L2 failure too). An exception that is not an
 * Exception (KeyboardInterrupt, ...) propagates. ctx: what the log names. */
static PyObject *
rc_unsendable(RedisCache *self, const char *qualname, int kind, ml_via *via, PyObject *ctx)
{
    if (!PyErr_ExceptionMatches(PyExc_Exception)) {
        return no_request(NULL, via);
    }
    PyObject *exc = PyErr_GetRaisedException();
    PyObject *text = PyObject_Str(exc);
    Py_DECREF(exc);
    const char *msg = text ? PyUnicode_AsUTF8(text) : NULL;
    if (msg == NULL) {
        PyErr_Clear();
        msg = "key cannot be formatted";
    }
    /* What the log names: ascii(key) — its str() is what failed, and a lone
     * surrogate in a log record breaks UTF-8 log handlers. */
    PyObject *shown = PyObject_ASCII(ctx);
    if (shown == NULL) {
        PyErr_Clear();
        shown = PyUnicode_FromFormat("<%s object>", Py_TYPE(ctx)->tp_name);
    }
    bio_buf b;
    bio_buf_init(&b);
    PyObject *aw = shown ? rc_request(self, qualname, kind, BIO_OP_FAIL, &b, via, msg)
                         : no_request(NULL, via);
    Py_XDECREF(text);
    if (aw != NULL) {
        ((BrunoAwaitable *)aw)->ctx = shown;  /* reference moves in */
    }
    else {
        Py_XDECREF(shown);
    }
    return aw;
}

/* A one-key command, NAME prefix+key, and with K_WITH_TTL a PTTL of the key. */
static PyObject *
rc_key_command(RedisCache *self, const char *qualname, const char *cmd, int kind,
               PyObject *key, ml_via *via)
{
    Py_ssize_t len;
    PyObject *holder;
    const char *text = key_text(key, &len, &holder);  /* formatted once */
    if (text == NULL) {
        return rc_unsendable(self, qualname, kind, via, key);
    }
    bio_buf b;
    bio_buf_init(&b);
    for (int i = 0; i < (kind & K_WITH_TTL ? 2 : 1); i++) {
        bio_buf_array(&b, 2);
        append_str(&b, i == 0 ? cmd : "PTTL");
        append_key_text(self, &b, text, len);
    }
    Py_DECREF(holder);
    PyObject *aw = rc_request(self, qualname, kind, BIO_OP_CMD, &b, via, NULL);
    if (aw != NULL) {
        ((BrunoAwaitable *)aw)->ctx = Py_NewRef(key);  /* for the error log */
    }
    return aw;
}

static PyObject *
rc_get(RedisCache *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    ONE_ARG("get", "key")
    return rc_key_command(self, "RedisCache.get", "GET", K_GET, key, NULL);
}

static PyObject *
rc_delete(RedisCache *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    ONE_ARG("delete", "key")
    return rc_key_command(self, "RedisCache.delete", "DEL", K_DELETE, key, NULL);
}

static PyObject *
rc_exists(RedisCache *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    ONE_ARG("exists", "key")
    return rc_key_command(self, "RedisCache.exists", "EXISTS", K_EXISTS, key, NULL);
}

PyObject *
bruno_rc_fetch(PyObject *l2, PyObject *key, const char *qualname, ml_via *via)
{
    return rc_key_command((RedisCache *)l2, qualname, "GET", K_GET | K_WITH_TTL, key, via);
}

PyObject *
bruno_rc_delete(PyObject *l2, PyObject *key, const char *qualname, ml_via *via)
{
    return rc_key_command((RedisCache *)l2, qualname, "DEL", K_DELETE, key, via);
}

PyObject *
bruno_rc_exists(PyObject *l2, PyObject *key, const char *qualname, ml_via *via)
{
    return rc_key_command((RedisCache *)l2, qualname, "EXISTS", K_EXISTS, key, via);
}

/* SET prefix+key json [EX n | PX ms] appended to b. Returns 0, 1 when the value
 * cannot be encoded (*exc set to a CacheError), or -1 on another error. */
static int
append_set(RedisCache *self, bio_buf *b, PyObject *key, PyObject *value, int mode,
           long long amount, int kind, PyObject **exc)
{
    Py_ssize_t vlen;
    PyObject *holder;
    const char *text = encode_value(self, value, &vlen, &holder);
    if (text == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_TypeError) &&
            !PyErr_ExceptionMatches(PyExc_ValueError) &&
            !PyErr_ExceptionMatches(PyExc_RecursionError) &&
            !PyErr_ExceptionMatches(PyExc_OverflowError)) {
            return -1;
        }
        PyObject *val = PyErr_GetRaisedException();
        PyObject *s = val ? PyObject_Str(val) : NULL;
        const char *msg = s ? PyUnicode_AsUTF8(s) : NULL;
        PyErr_Clear();
        (void)failed_result(self, kind, msg ? msg : "cannot encode value", key, exc);
        Py_XDECREF(s);
        Py_XDECREF(val);
        return *exc ? 1 : -1;
    }
    bio_buf_array(b, mode ? 5 : 3);
    append_str(b, "SET");
    if (append_key(self, b, key) < 0) {
        Py_DECREF(holder);
        if (!PyErr_ExceptionMatches(PyExc_Exception)) {
            return -1;  /* KeyboardInterrupt and the like propagate */
        }
        PyObject *val = PyErr_GetRaisedException();
        PyObject *s = PyObject_Str(val);
        Py_DECREF(val);
        const char *msg = s ? PyUnicode_AsUTF8(s) : NULL;
        PyErr_Clear();
        (void)failed_result(self, kind, msg ? msg : "key cannot be formatted", key, exc);
        Py_XDECREF(s);
        return *exc ? 1 : -1;
    }
    bio_buf_bulk(b, text, (size_t)vlen);
    Py_DECREF(holder);
    if (mode) {
        char num[32];
        int n = snprintf(num, sizeof num, "%lld", amount);
        append_str(b, mode == 1 ? "EX" : "PX");
        bio_buf_bulk(b, num, (size_t)n);
    }
    return 0;
}

PyObject *
bruno_rc_set(PyObject *l2, PyObject *key, PyObject *value, PyObject *ttl,
             const char *qualname, ml_via *via)
{
    RedisCache *self = (RedisCache *)l2;
    int mode;
    long long amount = 0;
    if (ttl_option(self, ttl, &mode, &amount) < 0) {
        return no_request(NULL, via);
    }
    bio_buf b;
    bio_buf_init(&b);
    PyObject *exc = NULL;
    int rc = append_set(self, &b, key, value, mode, amount, K_SET, &exc);
    if (rc != 0) {
        bio_buf_free(&b);
        return no_request(rc < 0 ? NULL : bruno_aw_error(self->st, qualname, exc), via);
    }
    PyObject *aw = rc_request(self, qualname, K_SET, BIO_OP_CMD, &b, via, NULL);
    if (aw != NULL) {
        ((BrunoAwaitable *)aw)->ctx = Py_NewRef(key);  /* for the error log */
    }
    return aw;
}

static PyObject *
rc_set(RedisCache *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    static const char *const names[] = {"key", "value", "ttl", NULL};
    PyObject *a[3];
    if (bruno_parse_args("set", args, nargs, kwnames, names, 2, a) < 0) {
        return NULL;
    }
    return bruno_rc_set((PyObject *)self, a[0], a[1], a[2], "RedisCache.set", NULL);
}

/* MGET of a non-empty key tuple (stolen), and with K_WITH_TTL a PTTL per key. */
static PyObject *
rc_mget(RedisCache *self, PyObject *keys, int kind, const char *qualname, ml_via *via)
{
    Py_ssize_t n = PyTuple_GET_SIZE(keys);
    /* Each key is formatted once, also when its PTTL follows. */
    struct { const char *text; Py_ssize_t len; PyObject *holder; } *ref =
        PyMem_Malloc((size_t)n * sizeof *ref);
    if (ref == NULL) {
        Py_DECREF(keys);
        return no_request(PyErr_NoMemory(), via);
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        ref[i].text = key_text(PyTuple_GET_ITEM(keys, i), &ref[i].len, &ref[i].holder);
        if (ref[i].text == NULL) {
            while (--i >= 0) {
                Py_DECREF(ref[i].holder);
            }
            PyMem_Free(ref);
            PyObject *aw = rc_unsendable(self, qualname, kind, via, keys);
            Py_DECREF(keys);
            return aw;
        }
    }
    bio_buf b;
    bio_buf_init(&b);
    bio_buf_array(&b, (size_t)n + 1);
    append_str(&b, "MGET");
    for (Py_ssize_t i = 0; i < n; i++) {
        append_key_text(self, &b, ref[i].text, ref[i].len);
    }
    for (Py_ssize_t i = 0; (kind & K_WITH_TTL) && i < n; i++) {
        bio_buf_array(&b, 2);
        append_str(&b, "PTTL");
        append_key_text(self, &b, ref[i].text, ref[i].len);
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_DECREF(ref[i].holder);
    }
    PyMem_Free(ref);
    PyObject *aw = rc_request(self, qualname, kind, BIO_OP_CMD, &b, via, NULL);
    if (aw == NULL) {
        Py_DECREF(keys);
        return NULL;
    }
    ((BrunoAwaitable *)aw)->ctx = keys;  /* stolen */
    return aw;
}

static PyObject *
rc_get_many(RedisCache *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    ONE_ARG("get_many", "keys")
    PyObject *keys = bruno_keys_tuple(key);
    if (keys == NULL) {
        return NULL;
    }
    if (PyTuple_GET_SIZE(keys) == 0) {
        Py_DECREF(keys);
        PyObject *d = PyDict_New();
        return d ? bruno_aw_ready(self->st, "RedisCache.get_many", d) : NULL;
    }
    return rc_mget(self, keys, K_MGET, "RedisCache.get_many", NULL);
}

PyObject *
bruno_rc_fetch_many(PyObject *l2, PyObject *keys, const char *qualname, ml_via *via)
{
    return rc_mget((RedisCache *)l2, Py_NewRef(keys), K_MGET | K_WITH_TTL, qualname, via);
}

PyObject *
bruno_rc_set_many(PyObject *l2, PyObject *items, PyObject *ttl, const char *qualname,
                  ml_via *via)
{
    RedisCache *self = (RedisCache *)l2;
    int mode;
    long long amount = 0;
    if (ttl_option(self, ttl, &mode, &amount) < 0) {
        return no_request(NULL, via);
    }
    Py_ssize_t n = PyTuple_GET_SIZE(items) / 2;
    if (n == 0) {
        return no_request(bruno_aw_none(self->st, qualname), via);
    }
    bio_buf b;
    bio_buf_init(&b);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *exc = NULL;
        int rc = append_set(self, &b, PyTuple_GET_ITEM(items, 2 * i),
                            PyTuple_GET_ITEM(items, 2 * i + 1), mode, amount,
                            K_SETMANY, &exc);
        if (rc != 0) {  /* nothing is written when one value cannot be encoded */
            bio_buf_free(&b);
            return no_request(rc < 0 ? NULL : bruno_aw_error(self->st, qualname, exc), via);
        }
    }
    return rc_request(self, qualname, K_SETMANY, BIO_OP_CMD, &b, via, NULL);
}

static PyObject *
rc_set_many(RedisCache *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    static const char *const names[] = {"items", "ttl", NULL};
    PyObject *a[2];
    if (bruno_parse_args("set_many", args, nargs, kwnames, names, 1, a) < 0) {
        return NULL;
    }
    int mode;  /* the ttl is checked before the mapping is read */
    long long amount;
    if (ttl_option(self, a[1], &mode, &amount) < 0) {
        return NULL;
    }
    PyObject *items = bruno_mapping_flat(self->st, a[0]);  /* (k0, v0, k1, v1, ...) */
    if (items == NULL) {
        return NULL;
    }
    PyObject *aw = bruno_rc_set_many((PyObject *)self, items, a[1], "RedisCache.set_many",
                                     NULL);
    Py_DECREF(items);
    return aw;
}

PyObject *
bruno_rc_clear(PyObject *l2, const char *qualname, ml_via *via)
{
    RedisCache *self = (RedisCache *)l2;
    bio_buf b;
    bio_buf_init(&b);
    bio_buf_array(&b, 1);
    append_str(&b, "DBSIZE");  /* bounds the SCAN steps (scan_start) */
    append_scan(self, &b, "0", 1);
    return rc_request(self, qualname, K_CLEAR | K_FIRST, BIO_OP_CMD, &b, via, NULL);
}

static PyObject *
rc_clear(RedisCache *self, PyObject *Py_UNUSED(ignored))
{
    return bruno_rc_clear((PyObject *)self, "RedisCache.clear", NULL);
}

PyObject *
bruno_rc_get_stats(PyObject *l2, const char *qualname, ml_via *via)
{
    RedisCache *self = (RedisCache *)l2;
    if (rc_client(self) == NULL) {
        return no_request(NULL, via);
    }
    bio_counters *c = bio_client_counters(self->client);
    unsigned long long hits = atomic_exchange(&c->pending_hits, 0);
    unsigned long long misses = atomic_exchange(&c->pending_misses, 0);
    bio_buf b;
    bio_buf_init(&b);
    const char *stats_key = PyBytes_AS_STRING(self->prefix_bytes);
    size_t plen = (size_t)PyBytes_GET_SIZE(self->prefix_bytes);
    char num[32];
    /* Flush this process's pending increments first, in the same pipeline. */
    for (int i = 0; i < 2; i++) {
        unsigned long long v = i == 0 ? hits : misses;
        if (v == 0) {
            continue;
        }
        bio_buf_array(&b, 4);
        append_str(&b, "HINCRBY");
        bio_buf_bulk2(&b, stats_key, plen, "stats", 5);
        append_str(&b, i == 0 ? "hits" : "misses");
        bio_buf_bulk(&b, num, (size_t)snprintf(num, sizeof num, "%llu", v));
    }
    bio_buf_array(&b, 2);
    append_str(&b, "HGETALL");
    bio_buf_bulk2(&b, stats_key, plen, "stats", 5);
    bio_buf_array(&b, 1);
    append_str(&b, "DBSIZE");  /* bounds the SCAN steps (scan_start) */
    append_scan(self, &b, "0", 1);
    PyObject *aw = rc_request(self, qualname, K_STATS, BIO_OP_CMD, &b, via, NULL);
    if (aw != NULL && (hits || misses)) {
        /* What it took, given back if it is never sent (see rc_done). */
        ((BrunoAwaitable *)aw)->ctx = Py_BuildValue("(KK)", hits, misses);
    }
    else if (aw == NULL) {
        atomic_fetch_add(&c->pending_hits, hits);
        atomic_fetch_add(&c->pending_misses, misses);
    }
    return aw;
}

static PyObject *
rc_get_stats(RedisCache *self, PyObject *Py_UNUSED(ignored))
{
    return bruno_rc_get_stats((PyObject *)self, "RedisCache.get_stats", NULL);
}

static PyObject *
rc_connect_impl(RedisCache *self, int flags, const char *qualname)
{
    if (rc_client(self) == NULL) {  /* also forgets a parent's connection after fork */
        return NULL;
    }
    if (self->connected) {
        return bruno_aw_ready(self->st, qualname,
                              Py_NewRef(flags & K_ENTER ? (PyObject *)self : Py_None));
    }
    bio_buf b;
    bio_buf_init(&b);
    return rc_request(self, qualname, K_CONNECT | flags, BIO_OP_CONNECT, &b, NULL, NULL);
}

static PyObject *
rc_connect(RedisCache *self, PyObject *Py_UNUSED(ignored))
{
    return rc_connect_impl(self, 0, "RedisCache.connect");
}

PyObject *
bruno_rc_connect(PyObject *l2, const char *qualname)
{
    return rc_connect_impl((RedisCache *)l2, 0, qualname);
}

static PyObject *
rc_aenter(RedisCache *self, PyObject *Py_UNUSED(ignored))
{
    return rc_connect_impl(self, K_ENTER, "RedisCache.__aenter__");
}

static PyObject *rc_disconnect_impl(RedisCache *self, const char *qualname);

static PyObject *
rc_disconnect(RedisCache *self, PyObject *Py_UNUSED(ignored))
{
    return rc_disconnect_impl(self, "RedisCache.disconnect");
}

PyObject *
bruno_rc_disconnect(PyObject *l2, const char *qualname)
{
    return rc_disconnect_impl((RedisCache *)l2, qualname);
}

static PyObject *
rc_disconnect_impl(RedisCache *self, const char *qualname)
{
    if (self->client == NULL || bio_client_pid(self->client) != bio_pid()) {
        self->connected = 0;
        return bruno_aw_none(self->st, qualname);
    }
    self->connected = 0;
    bio_buf b;
    bio_buf_init(&b);
    return rc_request(self, qualname, K_CLOSE, BIO_OP_CLOSE, &b, NULL, NULL);
}

static PyObject *
rc_aexit(RedisCache *self, PyObject *const *Py_UNUSED(args), Py_ssize_t Py_UNUSED(nargs))
{
    return rc_disconnect(self, NULL);
}

static PyObject *
rc_stats(RedisCache *self, PyObject *Py_UNUSED(ignored))
{
    unsigned long long commands = 0, batches = 0, errors = 0, timeouts = 0, reconnects = 0;
    int up = 0;
    if (self->client != NULL) {
        bio_counters *c = bio_client_counters(self->client);
        commands = atomic_load(&c->commands);
        batches = atomic_load(&c->batches);
        errors = atomic_load(&c->errors);
        timeouts = atomic_load(&c->timeouts);
        reconnects = atomic_load(&c->reconnects);
        up = atomic_load(&c->connected);
    }
    unsigned long long total = self->hits + self->misses;
    return Py_BuildValue("{s:s,s:K,s:K,s:d,s:K,s:K,s:K,s:n,s:O,s:K,s:K}",
                         "type", "redis", "hits", self->hits, "misses", self->misses,
                         "hit_rate", total ? (double)self->hits / (double)total : 0.0,
                         "errors", errors, "timeouts", timeouts, "reconnects", reconnects,
                         "in_flight", self->in_flight,
                         "connected", up ? Py_True : Py_False,
                         "commands", commands, "batches", batches);
}

/* ------------------------------------------------------------------ construction */

PyObject *
bruno_rc_stats(PyObject *l2)
{
    return rc_stats((RedisCache *)l2, NULL);
}

static int
int_arg(PyObject *v, const char *what, long lo, long hi, int *out)
{
    if (!PyLong_Check(v) || PyBool_Check(v)) {
        PyErr_Format(PyExc_TypeError, "%s must be an int, not %.100s", what, Py_TYPE(v)->tp_name);
        return -1;
    }
    long n = PyLong_AsLong(v);
    if ((n == -1 && PyErr_Occurred()) || n < lo || n > hi) {
        PyErr_Clear();
        PyErr_Format(PyExc_ValueError, "%s must be between %ld and %ld", what, lo, hi);
        return -1;
    }
    *out = (int)n;
    return 0;
}

static int
opt_str(PyObject *v, const char *what)
{
    if (v != Py_None && !PyUnicode_Check(v)) {
        PyErr_Format(PyExc_TypeError, "%s must be a str or None, not %.100s", what,
                     Py_TYPE(v)->tp_name);
        return -1;
    }
    return 0;
}

/* Host names and socket paths go to the OS as C strings: no NUL inside. */
static int
no_nul(PyObject *v, const char *what)
{
    if (v == Py_None) {
        return 0;
    }
    Py_ssize_t n;
    const char *s = PyUnicode_AsUTF8AndSize(v, &n);
    if (s == NULL) {
        return -1;
    }
    if ((Py_ssize_t)strlen(s) != n) {
        PyErr_Format(PyExc_ValueError, "%s must not contain NUL characters", what);
        return -1;
    }
    return 0;
}

static int
opt_count(PyObject *v, const char *what, long lo)
{
    int dummy;
    return v == Py_None ? 0 : int_arg(v, what, lo, 1L << 30, &dummy);
}

static int
rc_init(RedisCache *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"host", "port", "db", "password", "prefix", "default_ttl",
                             "max_connections", "username", "pool_size", "max_overflow",
                             "socket_timeout", "connect_timeout", "unix_socket_path",
                             "max_reply_bytes", NULL};
    PyObject *host = NULL, *port = NULL, *db = NULL, *password = Py_None, *prefix = NULL,
             *default_ttl = NULL, *max_conn = NULL, *username = Py_None, *pool_size = Py_None,
             *max_overflow = Py_None, *sock_to = NULL, *conn_to = NULL, *unix_path = Py_None,
             *max_reply = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|OOOOOOO$OOOOOOO:RedisCache", kwlist, &host,
                                     &port, &db, &password, &prefix, &default_ttl, &max_conn,
                                     &username, &pool_size, &max_overflow, &sock_to, &conn_to,
                                     &unix_path, &max_reply)) {
        return -1;
    }
    unsigned long long max_reply_bytes = DEFAULT_MAX_REPLY;
    if (max_reply != NULL) {
        if (!PyLong_Check(max_reply) || PyBool_Check(max_reply)) {
            PyErr_Format(PyExc_TypeError, "max_reply_bytes must be an int, not %.100s",
                         Py_TYPE(max_reply)->tp_name);
            return -1;
        }
        max_reply_bytes = PyLong_AsUnsignedLongLong(max_reply);
        if (PyErr_Occurred() || max_reply_bytes < 1024 || max_reply_bytes > RESP_MAX_LIMIT) {
            PyErr_Clear();
            PyErr_Format(PyExc_ValueError, "max_reply_bytes must be between 1024 and %llu",
                         (unsigned long long)RESP_MAX_LIMIT);
            return -1;
        }
    }
    if (self->client != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "RedisCache is already initialised");
        return -1;
    }
    int iport = 6379, idb = 0, err = 0;
    if (host == NULL) {
        host = self->st->str_localhost;
    }
    if (!PyUnicode_Check(host)) {
        PyErr_Format(PyExc_TypeError, "host must be a str, not %.100s", Py_TYPE(host)->tp_name);
        return -1;
    }
    if ((port && int_arg(port, "port", 1, 65535, &iport) < 0) ||
        (db && int_arg(db, "db", 0, 1 << 20, &idb) < 0) ||
        opt_str(password, "password") < 0 || opt_str(username, "username") < 0 ||
        opt_str(unix_path, "unix_socket_path") < 0 || no_nul(host, "host") < 0 ||
        no_nul(unix_path, "unix_socket_path") < 0 ||
        (max_conn && opt_count(max_conn, "max_connections", 1) < 0) ||
        opt_count(pool_size, "pool_size", 1) < 0 ||
        opt_count(max_overflow, "max_overflow", 0) < 0) {
        return -1;
    }
    if (prefix == NULL) {
        prefix = self->st->str_default_prefix;
    }
    if (!PyUnicode_Check(prefix)) {
        PyErr_Format(PyExc_TypeError, "prefix must be a str, not %.100s", Py_TYPE(prefix)->tp_name);
        return -1;
    }
    double st_ = timeout_arg(sock_to, "socket_timeout", &err);
    double ct = err ? 0 : timeout_arg(conn_to, "connect_timeout", &err);
    if (err) {
        return -1;
    }
    PyObject *pbytes = PyUnicode_AsUTF8String(prefix);
    if (pbytes == NULL) {
        return -1;
    }
    PyObject *ttl = default_ttl ? default_ttl : self->st->int_3600;
    Py_XSETREF(self->default_ttl, Py_NewRef(ttl));
    int mode;
    long long amount;
    if (ttl_option(self, NULL, &mode, &amount) < 0) {  /* validates default_ttl */
        Py_DECREF(pbytes);
        return -1;
    }
    self->port = iport;
    self->db = idb;
    self->max_reply = max_reply_bytes;
    self->socket_timeout = st_;
    self->connect_timeout = ct;
    Py_XSETREF(self->host, Py_NewRef(host));
    Py_XSETREF(self->password, Py_NewRef(password));
    Py_XSETREF(self->username, Py_NewRef(username));
    Py_XSETREF(self->unix_socket_path, Py_NewRef(unix_path));
    Py_XSETREF(self->prefix, Py_NewRef(prefix));
    Py_XSETREF(self->prefix_bytes, pbytes);
    Py_XSETREF(self->max_connections, max_conn ? Py_NewRef(max_conn) : PyLong_FromLong(10));
    Py_XSETREF(self->pool_size, Py_NewRef(pool_size));
    Py_XSETREF(self->max_overflow, Py_NewRef(max_overflow));
    return self->max_connections ? 0 : -1;
}

static PyObject *
rc_new(PyTypeObject *type, PyObject *Py_UNUSED(args), PyObject *Py_UNUSED(kwds))
{
    bruno_state *st = bruno_state_from_type(type);
    if (st == NULL) {
        return NULL;
    }
    RedisCache *self = (RedisCache *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    self->st = st;
    self->port = 6379;
    self->socket_timeout = self->connect_timeout = 5.0;
    self->max_reply = DEFAULT_MAX_REPLY;
    self->host = Py_NewRef(st->str_localhost);
    self->password = Py_NewRef(Py_None);
    self->username = Py_NewRef(Py_None);
    self->unix_socket_path = Py_NewRef(Py_None);
    self->prefix = Py_NewRef(st->str_default_prefix);
    self->prefix_bytes = PyUnicode_AsUTF8String(self->prefix);
    self->default_ttl = Py_NewRef(st->int_3600);
    self->max_connections = PyLong_FromLong(10);
    self->pool_size = Py_NewRef(Py_None);
    self->max_overflow = Py_NewRef(Py_None);
    if (self->prefix_bytes == NULL || self->max_connections == NULL) {
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

/* from_url(url, **kw): the url's keywords (bruno_memory_c._urls.parse_url), those
 * given explicitly winning, passed to the class. */
static PyObject *
rc_from_url(PyObject *cls, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    if (nargs != 1) {
        PyErr_SetString(PyExc_TypeError, "from_url() takes the url as its only positional argument");
        return NULL;
    }
    PyObject *mod = PyImport_ImportModule("bruno_memory_c._urls");
    PyObject *kw = mod ? PyObject_CallMethod(mod, "parse_url", "O", args[0]) : NULL;
    Py_XDECREF(mod);
    if (kw == NULL) {
        return NULL;
    }
    PyObject *result = NULL;
    if (!PyDict_Check(kw)) {
        PyErr_SetString(PyExc_TypeError, "parse_url() must return a dict");
        goto done;
    }
    for (Py_ssize_t i = 0; kwnames != NULL && i < PyTuple_GET_SIZE(kwnames); i++) {
        if (PyDict_SetItem(kw, PyTuple_GET_ITEM(kwnames, i), args[nargs + i]) < 0) {
            goto done;
        }
    }
    PyObject *empty = PyTuple_New(0);
    if (empty != NULL) {
        result = PyObject_Call(cls, empty, kw);
        Py_DECREF(empty);
    }
done:
    Py_DECREF(kw);
    return result;
}

/* ------------------------------------------------------------------ attributes */

static PyObject *
rc_get_connected(RedisCache *self, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(self->connected);
}

static PyObject *
rc_get_stats_key(RedisCache *self, void *Py_UNUSED(closure))
{
    return PyUnicode_FromFormat("%Ustats", self->prefix);
}

static PyObject *
rc_get_socket_timeout(RedisCache *self, void *Py_UNUSED(closure))
{
    return isinf(self->socket_timeout) ? Py_NewRef(Py_None) : PyFloat_FromDouble(self->socket_timeout);
}

static PyObject *
rc_get_connect_timeout(RedisCache *self, void *Py_UNUSED(closure))
{
    return isinf(self->connect_timeout) ? Py_NewRef(Py_None) : PyFloat_FromDouble(self->connect_timeout);
}

static PyObject *
rc_get_port(RedisCache *self, void *Py_UNUSED(closure))
{
    return PyLong_FromLong(self->port);
}

static PyObject *
rc_get_db(RedisCache *self, void *Py_UNUSED(closure))
{
    return PyLong_FromLong(self->db);
}

static PyObject *
rc_get_max_reply(RedisCache *self, void *Py_UNUSED(closure))
{
    return PyLong_FromUnsignedLongLong(self->max_reply);
}

/* ------------------------------------------------------------------ lifecycle */

static int
rc_traverse(RedisCache *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->default_ttl);
    Py_VISIT(self->last_bridge);
    Py_VISIT(self->rl_holder);
    return 0;
}

static int
rc_clear_refs(RedisCache *self)
{
    Py_CLEAR(self->last_bridge);
    Py_CLEAR(self->rl_holder);
    return 0;
}

static void
rc_dealloc(RedisCache *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    if (self->weakreflist != NULL) {
        PyObject_ClearWeakRefs((PyObject *)self);
    }
    /* No request can be in flight: each holds a reference to us. Dropping our
     * client reference lets the I/O thread close the socket. */
    if (self->client != NULL && bio_client_pid(self->client) == bio_pid()) {
        bio_client_decref(self->client);
    }
    self->client = NULL;
    rc_clear_refs(self);
    Py_CLEAR(self->host);
    Py_CLEAR(self->password);
    Py_CLEAR(self->username);
    Py_CLEAR(self->unix_socket_path);
    Py_CLEAR(self->prefix);
    Py_CLEAR(self->prefix_bytes);
    Py_CLEAR(self->default_ttl);
    Py_CLEAR(self->max_connections);
    Py_CLEAR(self->pool_size);
    Py_CLEAR(self->max_overflow);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

static PyObject *
rc_repr(RedisCache *self)
{
    if (self->unix_socket_path != Py_None) {
        return PyUnicode_FromFormat("<%s unix:%U db=%d prefix=%R>", Py_TYPE(self)->tp_name,
                                    self->unix_socket_path, self->db, self->prefix);
    }
    return PyUnicode_FromFormat("<%s %U:%d db=%d prefix=%R>", Py_TYPE(self)->tp_name,
                                self->host, self->port, self->db, self->prefix);
}

static PyMethodDef rc_methods[] = {
    {"connect", (PyCFunction)rc_connect, METH_NOARGS,
     "connect($self, /)\n--\n\nConnect (idempotent). Failure raises CacheError."},
    {"disconnect", (PyCFunction)rc_disconnect, METH_NOARGS,
     "disconnect($self, /)\n--\n\n"
     "Flush statistics and close; requests still in flight fail with CacheError."},
    {"get", (PyCFunction)(void (*)(void))rc_get, METH_FASTCALL | METH_KEYWORDS,
     "get($self, /, key)\n--\n\nThe value stored under key, or None (also on errors, logged)."},
    {"set", (PyCFunction)(void (*)(void))rc_set, METH_FASTCALL | METH_KEYWORDS,
     "set($self, /, key, value, ttl=None)\n--\n\n"
     "Store json.dumps(value) under prefix + str(key); a truthy ttl expires it (EX, or PX\n"
     "for a fraction of a second). Errors raise CacheError."},
    {"delete", (PyCFunction)(void (*)(void))rc_delete, METH_FASTCALL | METH_KEYWORDS,
     "delete($self, /, key)\n--\n\nTrue if the key was deleted (False on errors, logged)."},
    {"exists", (PyCFunction)(void (*)(void))rc_exists, METH_FASTCALL | METH_KEYWORDS,
     "exists($self, /, key)\n--\n\nTrue if the key exists (False on errors, logged)."},
    {"clear", (PyCFunction)rc_clear, METH_NOARGS,
     "clear($self, /)\n--\n\nDelete every key under the prefix. Errors raise CacheError."},
    {"get_many", (PyCFunction)(void (*)(void))rc_get_many, METH_FASTCALL | METH_KEYWORDS,
     "get_many($self, /, keys)\n--\n\nDict of the keys found, in one MGET ({} on errors)."},
    {"set_many", (PyCFunction)(void (*)(void))rc_set_many, METH_FASTCALL | METH_KEYWORDS,
     "set_many($self, /, items, ttl=None)\n--\n\nStore every pair in one pipeline."},
    {"get_stats", (PyCFunction)rc_get_stats, METH_NOARGS,
     "get_stats($self, /)\n--\n\n"
     "{type, size, hits, misses, hit_rate (percent), connected}, aggregated over every\n"
     "process through the hash prefix + 'stats'; {type, error} on failure."},
    {"stats", (PyCFunction)rc_stats, METH_NOARGS,
     "stats($self, /)\n--\n\n"
     "This process's counters: hits, misses, hit_rate (fraction), errors, timeouts,\n"
     "reconnects, in_flight, connected, commands, batches."},
    {"__aenter__", (PyCFunction)rc_aenter, METH_NOARGS,
     "__aenter__($self, /)\n--\n\nConnect; gives the cache."},
    {"__aexit__", (PyCFunction)(void (*)(void))rc_aexit, METH_FASTCALL,
     "__aexit__($self, *exc_info)\n--\n\nDisconnect."},
    {"from_url", (PyCFunction)(void (*)(void))rc_from_url,
     METH_FASTCALL | METH_KEYWORDS | METH_CLASS,
     "from_url($cls, url, /, **kwargs)\n--\n\n"
     "RedisCache from redis://[user:password@]host[:port][/db] or unix:///path?db=N;\n"
     "keyword arguments override what the url says."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef rc_members[] = {
    {"host", Py_T_OBJECT_EX, offsetof(RedisCache, host), Py_READONLY, "Redis host."},
    {"password", Py_T_OBJECT_EX, offsetof(RedisCache, password), Py_READONLY, "Password, or None."},
    {"username", Py_T_OBJECT_EX, offsetof(RedisCache, username), Py_READONLY, "ACL user name, or None."},
    {"unix_socket_path", Py_T_OBJECT_EX, offsetof(RedisCache, unix_socket_path), Py_READONLY,
     "Unix socket path, or None for TCP."},
    {"prefix", Py_T_OBJECT_EX, offsetof(RedisCache, prefix), Py_READONLY, "Key prefix."},
    {"default_ttl", Py_T_OBJECT_EX, offsetof(RedisCache, default_ttl), Py_READONLY,
     "TTL used when set() gets none."},
    {"max_connections", Py_T_OBJECT_EX, offsetof(RedisCache, max_connections), Py_READONLY,
     "Accepted for compatibility: requests are multiplexed on one connection."},
    {"pool_size", Py_T_OBJECT_EX, offsetof(RedisCache, pool_size), Py_READONLY,
     "Accepted for compatibility (see max_connections)."},
    {"max_overflow", Py_T_OBJECT_EX, offsetof(RedisCache, max_overflow), Py_READONLY,
     "Accepted for compatibility (see max_connections)."},
    {"__weaklistoffset__", Py_T_PYSSIZET, offsetof(RedisCache, weakreflist), Py_READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyGetSetDef rc_getset[] = {
    {"port", (getter)rc_get_port, NULL, "Redis port.", NULL},
    {"db", (getter)rc_get_db, NULL, "Database number.", NULL},
    {"max_reply_bytes", (getter)rc_get_max_reply, NULL,
     "What one reply may cost: a larger one fails its request and replaces the "
     "connection.", NULL},
    {"connected", (getter)rc_get_connected, NULL,
     "True after connect() until disconnect() (the reference's _connected).", NULL},
    {"_connected", (getter)rc_get_connected, NULL, "Alias of connected.", NULL},
    {"stats_key", (getter)rc_get_stats_key, NULL, "The statistics hash: prefix + 'stats'.", NULL},
    {"socket_timeout", (getter)rc_get_socket_timeout, NULL, "Seconds, or None.", NULL},
    {"connect_timeout", (getter)rc_get_connect_timeout, NULL, "Seconds, or None.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot rc_slots[] = {
    {Py_tp_doc,
     "RedisCache(host='localhost', port=6379, db=0, password=None, prefix='bruno:cache:',\n"
     "           default_ttl=3600, max_connections=10, *, username=None, pool_size=None,\n"
     "           max_overflow=None, socket_timeout=5.0, connect_timeout=5.0,\n"
     "           unix_socket_path=None, max_reply_bytes=536870912)\n"
     "--\n\n"
     "Redis-backed cache, in C: a background I/O thread pipelines every request on one\n"
     "connection, so no request waits for (or fails for want of) a pooled connection.\n"
     "Storage is the reference's: prefix + str(key) -> json.dumps(value)."},
    {Py_tp_new, rc_new},
    {Py_tp_init, rc_init},
    {Py_tp_dealloc, rc_dealloc},
    {Py_tp_traverse, rc_traverse},
    {Py_tp_clear, rc_clear_refs},
    {Py_tp_repr, rc_repr},
    {Py_tp_methods, rc_methods},
    {Py_tp_members, rc_members},
    {Py_tp_getset, rc_getset},
    {0, NULL},
};

static PyType_Spec rc_spec = {
    .name = "bruno_memory_c._core.RedisCache",
    .basicsize = sizeof(RedisCache),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC |
             Py_TPFLAGS_IMMUTABLETYPE,
    .slots = rc_slots,
};

int
bruno_redis_init(PyObject *module, bruno_state *st)
{
    st->RedisCacheType = (PyTypeObject *)PyType_FromModuleAndSpec(module, &rc_spec, NULL);
    if (st->RedisCacheType == NULL ||
        bruno_async_methods(st, st->RedisCacheType, rc_methods, bruno_async_method_names) < 0) {
        return -1;
    }
    return PyModule_AddType(module, st->RedisCacheType);
}
