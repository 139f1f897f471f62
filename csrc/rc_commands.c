/* rc_commands.c: RedisCache's command table (see rc_internal.h).
 *
 * One entry per operation: how its commands are built from the method's arguments,
 * how its replies become the result, and what a failure gives. Storage is the
 * reference's (bruno_memory.utils.cache.RedisCache 0.1.5): key prefix + format(key),
 * value json.dumps text, SET EX (PX for fractions), statistics in the hash prefix +
 * "stats".
 *
 * Adding an operation: an rc_op in rediscache.h, a build and a decode here, an entry
 * in rc_commands[] at the bottom, and a method in rediscache.c calling rc_start. */
#include "cluster_slot.h"
#include "codec.h"
#include "rc_internal.h"

#include <math.h>
#include <string.h>

#define SCAN_COUNT "1000"

/* ------------------------------------------------------------------ values and keys */

int
rc_ttl_option(RedisCache *self, PyObject *ttl, int *mode, long long *amount)
{
    /* ttl (None: default_ttl) as an expiry option: *mode 0 = none, 1 = EX seconds,
     * 2 = PX milliseconds. A falsy ttl stores without expiry, as in the reference. */
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

/* format(key) in UTF-8, as the reference's f"{prefix}{key}" spells it; *holder
 * receives the str owning the bytes (new reference). NULL with an exception. */
static const char *
key_text(PyObject *key, Py_ssize_t *len, PyObject **holder)
{
    PyObject *s = PyUnicode_CheckExact(key) ? Py_NewRef(key) : PyObject_Format(key, NULL);
    return s ? utf8_held(s, len, holder) : NULL;
}

static void
append_key_text(RedisCache *self, resp_buf *b, const char *text, Py_ssize_t len)
{
    const char *prefix = PyBytes_AS_STRING(self->prefix_bytes);
    size_t plen = (size_t)PyBytes_GET_SIZE(self->prefix_bytes);
    resp_bulk2(b, prefix, plen, text, (size_t)len);
    if (b->slots != NULL) {  /* Redis Cluster: the slot of prefix + key */
        resp_key_slot(b, (int)bio_key_slot2(prefix, plen, text, (size_t)len));
    }
}

/* A key that cannot become text (its str() raises, or the text is not UTF-8
 * encodable): as in the reference, whose key building sits inside its try, a read
 * gives its failure value and a write raises CacheError, logged either way, and
 * nothing is sent. An exception that is not an Exception (KeyboardInterrupt, ...)
 * propagates: -1. Else 0, with the reason in built->why (and, for the log, ascii(key)
 * as the subject: its str() is what failed, and a lone surrogate in a log record
 * breaks UTF-8 log handlers). */
static int
unsendable_key(rc_call *call, PyObject *key, rc_built *built)
{
    if (!PyErr_ExceptionMatches(PyExc_Exception)) {
        return -1;
    }
    PyObject *exc = PyErr_GetRaisedException();
    PyObject *text = PyObject_Str(exc);
    Py_DECREF(exc);
    const char *msg = text ? PyUnicode_AsUTF8(text) : NULL;
    PyErr_Clear();
    snprintf(built->why, sizeof built->why, "%s", msg ? msg : "key cannot be formatted");
    Py_XDECREF(text);
    PyObject *shown = PyObject_ASCII(key);
    if (shown == NULL) {
        PyErr_Clear();
        shown = PyUnicode_FromFormat("<%s object>", Py_TYPE(key)->tp_name);
        if (shown == NULL) {
            return -1;
        }
    }
    Py_XSETREF(call->subject, shown);
    built->unsendable = 1;
    return 0;
}

/* CMD prefix+key (and with RC_F_WITH_TTL a PTTL of the key): get, delete, exists. */
static int
build_key_command(rc_call *call, const char *cmd, PyObject *key, resp_buf *b,
                  rc_built *built)
{
    Py_ssize_t len;
    PyObject *holder;
    Py_XSETREF(call->subject, Py_NewRef(key));  /* for the error log */
    const char *text = key_text(key, &len, &holder);  /* formatted once */
    if (text == NULL) {
        return unsendable_key(call, key, built);
    }
    for (int i = 0; i < (call->flags & RC_F_WITH_TTL ? 2 : 1); i++) {
        resp_array(b, 2);
        resp_str(b, i == 0 ? cmd : "PTTL");
        append_key_text(call->cache, b, text, len);
    }
    Py_DECREF(holder);
    return 0;
}

/* SET prefix+key json [EX n | PX ms]. A value json.dumps cannot encode, or a key
 * that cannot become text, is a CacheError at once (built->raise). 0 or -1. */
static int
append_set(rc_call *call, resp_buf *b, PyObject *key, PyObject *value, int mode,
           long long amount, rc_built *built)
{
    RedisCache *self = call->cache;
    PyObject *json = bruno_json_dumps(self->st, value), *holder = NULL;
    Py_ssize_t vlen;
    const char *text = json ? utf8_held(json, &vlen, &holder) : NULL;
    Py_ssize_t klen;
    PyObject *kholder = NULL;
    const char *ktext = text ? key_text(key, &klen, &kholder) : NULL;
    if (ktext == NULL) {
        Py_XDECREF(holder);
        int value_failed = text == NULL;
        if (value_failed && !PyErr_ExceptionMatches(PyExc_TypeError) &&
            !PyErr_ExceptionMatches(PyExc_ValueError) &&
            !PyErr_ExceptionMatches(PyExc_RecursionError) &&
            !PyErr_ExceptionMatches(PyExc_OverflowError)) {
            return -1;
        }
        if (!value_failed && !PyErr_ExceptionMatches(PyExc_Exception)) {
            return -1;  /* KeyboardInterrupt and the like propagate */
        }
        PyObject *exc = PyErr_GetRaisedException();
        PyObject *s = PyObject_Str(exc);
        Py_DECREF(exc);
        const char *msg = s ? PyUnicode_AsUTF8(s) : NULL;
        PyErr_Clear();
        if (!value_failed) {  /* the log names ascii(key): its str() is what failed */
            PyObject *shown = PyObject_ASCII(key);
            PyErr_Clear();
            Py_XSETREF(call->subject, shown);
        }
        (void)rc_failure(call, call->op, msg ? msg : "cannot encode", &built->raise);
        Py_XDECREF(s);
        return built->raise ? 0 : -1;
    }
    resp_array(b, mode ? 5 : 3);
    resp_str(b, "SET");
    append_key_text(self, b, ktext, klen);
    resp_bulk(b, text, (size_t)vlen);
    Py_DECREF(holder);
    Py_DECREF(kholder);
    if (mode) {
        resp_str(b, mode == 1 ? "EX" : "PX");
        resp_number(b, amount);
    }
    return 0;
}

/* SCAN cursor MATCH <prefix with glob characters escaped>* COUNT n */
static void
append_scan(RedisCache *self, resp_buf *b, const char *cursor, size_t cursor_len)
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
    resp_array(b, 6);
    resp_str(b, "SCAN");
    resp_bulk(b, cursor, cursor_len);
    resp_str(b, "MATCH");
    resp_bulk(b, pat, k);
    resp_str(b, "COUNT");
    resp_str(b, SCAN_COUNT);
    if (pat != small) {
        free(pat);
    }
}

/* ------------------------------------------------------------------ results */

PyObject *
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

PyObject *
rc_failure(rc_call *call, int op, const char *what, PyObject **exc)
{
    RedisCache *self = call->cache;
    const rc_command *cmd = &rc_commands[op];
    PyObject *text = PyUnicode_DecodeUTF8(what, (Py_ssize_t)strlen(what), "replace");
    if (text == NULL) {
        return NULL;
    }
    if (op == RC_CLOSE) {
        self->connected = 0;
    }
    if (cmd->log != NULL) {
        bruno_log_error(self->st, cmd->log, cmd->logs_key ? (call->subject ? call->subject : Py_None)
                                             : NULL, text);
    }
    PyObject *result = NULL;
    switch (cmd->fail) {
    case RC_FAIL_NONE:
        result = Py_NewRef(Py_None);
        break;
    case RC_FAIL_FALSE:
        result = Py_NewRef(Py_False);
        break;
    case RC_FAIL_DICT:
        result = PyDict_New();
        break;
    case RC_FAIL_ERROR_DICT:
        result = Py_BuildValue("{s:s,s:O}", "type", "redis", "error", text);
        break;
    default:
        *exc = rc_error(self, cmd->raise, what);
        break;
    }
    Py_DECREF(text);
    return result;
}

/* The failure of a call whose reply was an error (WRONGTYPE, OOM, ...). */
static PyObject *
error_reply(rc_call *call, redisReply *rep, PyObject **exc)
{
    char what[BIO_ERRLEN];
    if (rep != NULL && rep->type == REDIS_REPLY_ERROR) {
        snprintf(what, sizeof what, "%.*s", (int)rep->len, rep->str);
    }
    else {
        snprintf(what, sizeof what, "unexpected reply");
    }
    return rc_failure(call, call->op, what, exc);
}

void
rc_count(RedisCache *self, int hit)
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

/* Nobody will read the result (its awaitable was cancelled or closed) nor hear of it
 * (no hook): decoding values can be skipped. */
static int
unread(rc_call *call)
{
    return call->aw != NULL && call->aw->state == AW_DONE && call->hook.done == NULL;
}

/* JSON text from Redis -> a value (new reference); text that is not JSON gives None,
 * the error logged (the reference's behaviour). NULL only for other errors. */
static PyObject *
decode_value(rc_call *call, redisReply *rep)
{
    PyObject *v = bruno_json_loads(call->cache->st, rep->str, rep->len);
    if (v != NULL || !PyErr_ExceptionMatches(PyExc_Exception)) {
        return v;
    }
    PyObject *exc = PyErr_GetRaisedException();
    PyObject *s = PyObject_Str(exc);
    Py_DECREF(exc);
    PyErr_Clear();
    bruno_log_error(call->cache->st, "Error decoding cached value: %s", NULL, s ? s : Py_None);
    Py_XDECREF(s);
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------------ connect, close */

static int
build_nothing(rc_call *call, const rc_args *args, resp_buf *b, rc_built *built)
{
    (void)call, (void)args, (void)b, (void)built;
    return 0;
}

static PyObject *
decode_connect(rc_call *call, bio_req *r, PyObject **exc, int *pending)
{
    (void)r, (void)exc, (void)pending;
    call->cache->connected = 1;
    return Py_NewRef(call->flags & RC_F_ENTER ? (PyObject *)call->cache : Py_None);
}

static PyObject *
decode_close(rc_call *call, bio_req *r, PyObject **exc, int *pending)
{
    (void)r, (void)exc, (void)pending;
    call->cache->connected = 0;
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------------ get, delete, exists */

static int
build_get(rc_call *call, const rc_args *args, resp_buf *b, rc_built *built)
{
    return build_key_command(call, "GET", args->key, b, built);
}

static PyObject *
decode_get(rc_call *call, bio_req *r, PyObject **exc, int *pending)
{
    (void)pending;
    redisReply *rep = r->replies[0];
    if (rep->type == REDIS_REPLY_NIL) {
        rc_count(call->cache, 0);
        Py_RETURN_NONE;
    }
    if (rep->type != REDIS_REPLY_STRING) {
        return error_reply(call, rep, exc);
    }
    rc_count(call->cache, 1);
    return unread(call) ? Py_NewRef(Py_None) : decode_value(call, rep);
}

static int
build_delete(rc_call *call, const rc_args *args, resp_buf *b, rc_built *built)
{
    return build_key_command(call, "DEL", args->key, b, built);
}

static int
build_exists(rc_call *call, const rc_args *args, resp_buf *b, rc_built *built)
{
    return build_key_command(call, "EXISTS", args->key, b, built);
}

static PyObject *
decode_bool(rc_call *call, bio_req *r, PyObject **exc, int *pending)
{
    (void)pending;
    redisReply *rep = r->replies[0];
    if (rep->type != REDIS_REPLY_INTEGER) {
        return error_reply(call, rep, exc);
    }
    return PyBool_FromLong(rep->integer > 0);
}

/* ------------------------------------------------------------------ set, set_many */

static int
build_set(rc_call *call, const rc_args *args, resp_buf *b, rc_built *built)
{
    int mode;
    long long amount = 0;
    if (rc_ttl_option(call->cache, args->ttl, &mode, &amount) < 0) {
        return -1;
    }
    Py_XSETREF(call->subject, Py_NewRef(args->key));  /* for the error log */
    return append_set(call, b, args->key, args->value, mode, amount, built);
}

static PyObject *
decode_set(rc_call *call, bio_req *r, PyObject **exc, int *pending)
{
    (void)pending;
    redisReply *rep = r->replies[0];
    return rep->type == REDIS_REPLY_STATUS ? Py_NewRef(Py_None) : error_reply(call, rep, exc);
}

static int
build_set_many(rc_call *call, const rc_args *args, resp_buf *b, rc_built *built)
{
    int mode;
    long long amount = 0;
    if (rc_ttl_option(call->cache, args->ttl, &mode, &amount) < 0) {
        return -1;
    }
    Py_ssize_t n = PyTuple_GET_SIZE(args->items) / 2;
    if (n == 0) {
        built->ready = Py_NewRef(Py_None);
        return 0;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        /* nothing is written when one value cannot be encoded */
        if (append_set(call, b, PyTuple_GET_ITEM(args->items, 2 * i),
                       PyTuple_GET_ITEM(args->items, 2 * i + 1), mode, amount, built) < 0) {
            return -1;
        }
        if (built->raise != NULL) {
            return 0;
        }
    }
    return 0;
}

static PyObject *
decode_set_many(rc_call *call, bio_req *r, PyObject **exc, int *pending)
{
    (void)pending;
    int failed = 0;
    redisReply *first = NULL;
    for (int i = 0; i < r->nrep; i++) {
        redisReply *e = r->replies[i];
        if (e->type != REDIS_REPLY_STATUS) {
            failed++;
            first = first != NULL ? first : e;
        }
    }
    if (failed == 0) {
        Py_RETURN_NONE;
    }
    /* (in a cluster, one node's failure costs its keys only: the others are written) */
    char what[BIO_ERRLEN];
    snprintf(what, sizeof what, "%d of %d keys were not written: %.*s", failed, r->nrep,
             first->type == REDIS_REPLY_ERROR ? (int)first->len : 16,
             first->type == REDIS_REPLY_ERROR ? first->str : "unexpected reply");
    return rc_failure(call, call->op, what, exc);
}

/* ------------------------------------------------------------------ get_many */

static int
build_get_many(rc_call *call, const rc_args *args, resp_buf *b, rc_built *built)
{
    PyObject *keys = args->items;
    Py_ssize_t n = PyTuple_GET_SIZE(keys);
    Py_XSETREF(call->subject, Py_NewRef(keys));
    if (n == 0) {
        built->ready = PyDict_New();
        return built->ready ? 0 : -1;
    }
    /* Each key is formatted once, also when its PTTL follows. */
    struct { const char *text; Py_ssize_t len; PyObject *holder; } *ref =
        PyMem_Malloc((size_t)n * sizeof *ref);
    if (ref == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        ref[i].text = key_text(PyTuple_GET_ITEM(keys, i), &ref[i].len, &ref[i].holder);
        if (ref[i].text == NULL) {
            while (--i >= 0) {
                Py_DECREF(ref[i].holder);
            }
            PyMem_Free(ref);
            int rc = unsendable_key(call, keys, built);
            return rc;
        }
    }
    resp_array(b, (size_t)n + 1);
    resp_str(b, "MGET");
    for (Py_ssize_t i = 0; i < n; i++) {
        append_key_text(call->cache, b, ref[i].text, ref[i].len);
    }
    for (Py_ssize_t i = 0; (call->flags & RC_F_WITH_TTL) && i < n; i++) {
        resp_array(b, 2);
        resp_str(b, "PTTL");
        append_key_text(call->cache, b, ref[i].text, ref[i].len);
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_DECREF(ref[i].holder);
    }
    PyMem_Free(ref);
    return 0;
}

static PyObject *
decode_get_many(rc_call *call, bio_req *r, PyObject **exc, int *pending)
{
    (void)pending;
    PyObject *keys = call->subject;  /* the tuple of the keys asked */
    redisReply *rep = r->replies[0];
    if (rep->type != REDIS_REPLY_ARRAY || (Py_ssize_t)rep->elements != PyTuple_GET_SIZE(keys)) {
        return error_reply(call, rep, exc);
    }
    /* In a cluster, keys whose node failed have an error reply: they are missing
     * from the result (not counted as misses) and the failure is logged once. */
    size_t failed = 0;
    redisReply *first = NULL;
    for (size_t i = 0; i < rep->elements; i++) {
        if (rep->element[i]->type == REDIS_REPLY_ERROR) {
            failed++;
            first = first != NULL ? first : rep->element[i];
        }
    }
    if (failed > 0) {
        PyObject *text = PyUnicode_FromFormat("%zu of %zu keys not read: %.150s", failed,
                                              rep->elements, first->str);
        if (text != NULL) {
            bruno_log_error(call->cache->st, rc_commands[call->op].log, NULL, text);
            Py_DECREF(text);
        }
        PyErr_Clear();
    }
    if (unread(call)) {
        for (size_t i = 0; i < rep->elements; i++) {  /* nobody reads: count only */
            if (rep->element[i]->type != REDIS_REPLY_ERROR) {
                rc_count(call->cache, rep->element[i]->type == REDIS_REPLY_STRING);
            }
        }
        Py_RETURN_NONE;
    }
    PyObject *d = PyDict_New();
    if (d == NULL) {
        return NULL;
    }
    Py_INCREF(keys);  /* a key's __eq__ may do anything */
    for (size_t i = 0; i < rep->elements; i++) {
        redisReply *e = rep->element[i];
        if (e->type != REDIS_REPLY_STRING) {
            if (e->type != REDIS_REPLY_ERROR) {
                rc_count(call->cache, 0);
            }
            continue;
        }
        rc_count(call->cache, 1);
        PyObject *v = bruno_json_loads(call->cache->st, e->str, e->len);
        if (v == NULL || PyDict_SetItem(d, PyTuple_GET_ITEM(keys, (Py_ssize_t)i), v) < 0) {
            /* As the reference: a bad value fails the whole call ({}). */
            Py_XDECREF(v);
            Py_DECREF(d);
            Py_DECREF(keys);
            if (!PyErr_ExceptionMatches(PyExc_Exception)) {
                return NULL;
            }
            PyObject *err = PyErr_GetRaisedException();
            PyObject *s = PyObject_Str(err);
            Py_DECREF(err);
            PyErr_Clear();
            const char *what = s ? PyUnicode_AsUTF8(s) : NULL;
            PyErr_Clear();
            PyObject *res = rc_failure(call, call->op, what ? what : "cannot decode", exc);
            Py_XDECREF(s);
            return res;
        }
        Py_DECREF(v);
    }
    Py_DECREF(keys);
    return d;
}

/* ------------------------------------------------------------------ SCAN loops */

/* Where a SCAN loop (clear(), get_stats()'s count) is: the steps it may still take
 * and its last cursor, bits reversed. A server that answers with a non-zero cursor for
 * ever (broken or hostile) must not keep it going:
 *   - Redis iterates in reverse binary order, so a cursor read bit-reversed grows at
 *     every step until the final 0, whatever resizes and rehashing happen meanwhile: a
 *     cursor that does not is an error at once;
 *   - and the steps are capped: each SCAN ... COUNT 1000 returns about 1000 keys or
 *     visits 10,000 buckets, so even a table of 2^32 buckets takes about 430,000
 *     steps; the cap is 2^20 plus one per 100 keys of DBSIZE. */
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

/* In a cluster, where a SCAN loop over the primaries goes after this one: the lowest
 * slot of the next primary (-1: none). It must be past the slot this one was reached
 * by, so that a map that keeps changing (resharding, a broken node) cannot make the
 * loop go round: at most one loop per slot. */
static int
next_primary(const rc_call *call, const bio_req *r)
{
    return call->route >= 0 && r->next_route > call->route ? r->next_route : -1;
}

/* SCAN reply: [cursor, [keys...]] with bulk-string keys. 0, or -1. */
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
            return -1;
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

/* ------------------------------------------------------------------ clear */

/* The first step is DBSIZE + SCAN 0; then [DEL keys] SCAN cursor while the cursor is
 * not 0; then a last DEL of what the last SCAN found. An abandoned clear (its
 * awaitable cancelled or closed) stops at its next step: what the steps already
 * taken deleted stays deleted. */
static int
build_clear(rc_call *call, const rc_args *args, resp_buf *b, rc_built *built)
{
    (void)args, (void)built;
    resp_array(b, 1);
    resp_str(b, "DBSIZE");  /* the cap on the SCAN steps (scan_start) */
    append_scan(call->cache, b, "0", 1);
    call->flags |= RC_F_FIRST;
    if (b->slots != NULL) {
        call->route = 0;  /* a cluster's: primary after primary, from slot 0's */
    }
    return 0;
}

static PyObject *
decode_clear(rc_call *call, bio_req *r, PyObject **exc, int *pending)
{
    for (int i = 0; i < r->nrep; i++) {
        redisReply *rep = r->replies[i];
        if (rep->type == REDIS_REPLY_ERROR) {
            return error_reply(call, rep, exc);
        }
    }
    redisReply *last = r->replies[r->nrep - 1], *cursor, *keys;
    if (call->flags & RC_F_LAST) {
        return last->type == REDIS_REPLY_INTEGER ? Py_NewRef(Py_None)
                                                 : rc_failure(call, call->op, "unexpected DEL reply", exc);
    }
    if (scan_parts(last, &cursor, &keys) < 0) {
        return rc_failure(call, call->op, "unexpected SCAN reply", exc);
    }
    if (call->flags & (RC_F_FIRST | RC_F_NODE)) {
        redisReply *dbsize = r->replies[r->nrep - 2];
        if (dbsize->type != REDIS_REPLY_INTEGER) {
            return rc_failure(call, call->op, "unexpected DBSIZE reply", exc);
        }
        call->scan = scan_start(dbsize->integer);
    }
    if (call->aw->state == AW_DONE) {
        Py_RETURN_NONE;  /* abandoned: no further step */
    }
    int next = cursor_done(cursor) ? next_primary(call, r) : -1;
    if (keys->elements == 0 && cursor_done(cursor) && next < 0) {
        Py_RETURN_NONE;
    }
    const char *stuck = cursor_done(cursor) ? NULL : scan_advance(&call->scan, cursor);
    if (stuck != NULL) {
        return rc_failure(call, call->op, stuck, exc);
    }
    resp_buf b;
    rc_buf_init(call->cache, &b);
    if (keys->elements > 0) {
        resp_array(&b, keys->elements + 1);
        resp_str(&b, "DEL");
        for (size_t i = 0; i < keys->elements; i++) {
            resp_bulk(&b, keys->element[i]->str, keys->element[i]->len);
            resp_key_slot(&b, (int)bio_key_slot(keys->element[i]->str, keys->element[i]->len));
        }
    }
    int flags = call->flags & ~(RC_F_FIRST | RC_F_NODE);
    if (!cursor_done(cursor)) {
        append_scan(call->cache, &b, cursor->str, cursor->len);
    }
    else if (next >= 0) {
        call->route = next;
        resp_array(&b, 1);
        resp_str(&b, "DBSIZE");
        append_scan(call->cache, &b, "0", 1);
        flags |= RC_F_NODE;
    }
    else {
        flags |= RC_F_LAST;
    }
    if (rc_continue(r, flags, &b) < 0) {
        return NULL;
    }
    *pending = 1;
    return NULL;
}

/* ------------------------------------------------------------------ get_stats */

/* The first step is this process's pending increments (HINCRBY, so that the answer
 * includes them), HGETALL of the hash, DBSIZE and SCAN 0; then SCAN until the cursor
 * is 0, counting the prefix's keys. */
static int
build_stats(rc_call *call, const rc_args *args, resp_buf *b, rc_built *built)
{
    (void)args, (void)built;
    RedisCache *self = call->cache;
    bio_counters *c = bio_client_counters(self->client);
    call->hits = atomic_exchange(&c->pending_hits, 0);
    call->misses = atomic_exchange(&c->pending_misses, 0);
    const char *prefix = PyBytes_AS_STRING(self->prefix_bytes);
    size_t plen = (size_t)PyBytes_GET_SIZE(self->prefix_bytes);
    for (int i = 0; i < 2; i++) {
        unsigned long long v = i == 0 ? call->hits : call->misses;
        if (v == 0) {
            continue;
        }
        resp_array(b, 4);
        resp_str(b, "HINCRBY");
        resp_bulk2(b, prefix, plen, "stats", 5);
        if (b->slots != NULL) {
            resp_key_slot(b, (int)bio_key_slot2(prefix, plen, "stats", 5));
        }
        resp_str(b, i == 0 ? "hits" : "misses");
        resp_number(b, (long long)v);
    }
    resp_array(b, 2);
    resp_str(b, "HGETALL");
    resp_bulk2(b, prefix, plen, "stats", 5);
    if (b->slots != NULL) {
        resp_key_slot(b, (int)bio_key_slot2(prefix, plen, "stats", 5));
    }
    resp_array(b, 1);
    resp_str(b, "DBSIZE");  /* the cap on the SCAN steps (scan_start) */
    append_scan(self, b, "0", 1);
    call->flags |= RC_F_FIRST;
    if (b->slots != NULL) {
        call->route = 0;  /* a cluster's: primary after primary, from slot 0's */
    }
    return 0;
}

static PyObject *
decode_stats(rc_call *call, bio_req *r, PyObject **exc, int *pending)
{
    RedisCache *self = call->cache;
    if (call->aw->state == AW_DONE) {
        Py_RETURN_NONE;  /* abandoned (cancelled, closed): stop scanning */
    }
    redisReply *scan = r->replies[r->nrep - 1], *cursor, *keys;
    if (call->flags & RC_F_FIRST) {
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
            return error_reply(call, h->type == REDIS_REPLY_ERROR ? h : NULL, exc);
        }
        if (dbsize->type != REDIS_REPLY_INTEGER) {
            return rc_failure(call, call->op, "unexpected DBSIZE reply", exc);
        }
        call->hits = (unsigned long long)hits;  /* from now on: the totals */
        call->misses = (unsigned long long)misses;
        call->size = 0;
        call->scan = scan_start(dbsize->integer);
    }
    else if (call->flags & RC_F_NODE) {
        redisReply *dbsize = r->replies[r->nrep - 2];
        if (dbsize->type != REDIS_REPLY_INTEGER) {
            return rc_failure(call, call->op, "unexpected DBSIZE reply", exc);
        }
        call->scan = scan_start(dbsize->integer);
    }
    if (scan->type == REDIS_REPLY_ERROR) {
        return error_reply(call, scan, exc);
    }
    if (scan_parts(scan, &cursor, &keys) < 0) {
        return rc_failure(call, call->op, "unexpected SCAN reply", exc);
    }
    call->size += (long long)keys->elements;
    int next = cursor_done(cursor) ? next_primary(call, r) : -1;
    if (!cursor_done(cursor) || next >= 0) {
        const char *stuck = cursor_done(cursor) ? NULL : scan_advance(&call->scan, cursor);
        if (stuck != NULL) {
            return rc_failure(call, call->op, stuck, exc);
        }
        resp_buf b;
        rc_buf_init(self, &b);
        int flags = call->flags & ~(RC_F_FIRST | RC_F_NODE);
        if (next >= 0) {
            call->route = next;
            resp_array(&b, 1);
            resp_str(&b, "DBSIZE");
            append_scan(self, &b, "0", 1);
            flags |= RC_F_NODE;
        }
        else {
            append_scan(self, &b, cursor->str, cursor->len);
        }
        if (rc_continue(r, flags, &b) < 0) {
            return NULL;
        }
        *pending = 1;
        return NULL;
    }
    long long hits = (long long)call->hits, misses = (long long)call->misses;
    /* In doubles: counters another client wrote may be anything, up to LLONG_MAX
     * each, whose sum a long long cannot hold. */
    double total = (double)hits + (double)misses;
    PyObject *rate = PyFloat_FromDouble(total > 0 ? (double)hits / total * 100 : 0.0);
    PyObject *rounded = rate ? PyObject_CallMethod(rate, "__round__", "i", 2) : NULL;
    Py_XDECREF(rate);
    if (rounded == NULL) {
        return NULL;
    }
    return Py_BuildValue("{s:s,s:L,s:L,s:L,s:N,s:O}", "type", "redis", "size", call->size,
                         "hits", hits, "misses", misses, "hit_rate", rounded,
                         "connected", self->connected ? Py_True : Py_False);
}

/* ------------------------------------------------------------------ the table */

const rc_command rc_commands[RC_NOPS] = {
    /*            I/O op           on failure          the error log (key?)          raised as */
    [RC_CONNECT] = {BIO_OP_CONNECT, RC_FAIL_RAISE, "Failed to connect to Redis: %s", 0,
                    "Redis connection failed: ", build_nothing, decode_connect},
    [RC_CLOSE] = {BIO_OP_CLOSE, RC_FAIL_NONE, NULL, 0, NULL, build_nothing, decode_close},
    [RC_GET] = {BIO_OP_CMD, RC_FAIL_NONE, "Error getting key %s: %s", 1, NULL,
                build_get, decode_get},
    [RC_SET] = {BIO_OP_CMD, RC_FAIL_RAISE, "Error setting key %s: %s", 1,
                "Failed to set cache key: ", build_set, decode_set},
    [RC_DELETE] = {BIO_OP_CMD, RC_FAIL_FALSE, "Error deleting key %s: %s", 1, NULL,
                   build_delete, decode_bool},
    [RC_EXISTS] = {BIO_OP_CMD, RC_FAIL_FALSE, "Error checking key %s: %s", 1, NULL,
                   build_exists, decode_bool},
    [RC_MGET] = {BIO_OP_CMD, RC_FAIL_DICT, "Error getting multiple keys: %s", 0, NULL,
                 build_get_many, decode_get_many},
    [RC_SETMANY] = {BIO_OP_CMD, RC_FAIL_RAISE, "Error setting multiple keys: %s", 0,
                    "Failed to set multiple keys: ", build_set_many, decode_set_many},
    [RC_CLEAR] = {BIO_OP_CMD, RC_FAIL_RAISE, "Error clearing cache: %s", 0,
                  "Failed to clear cache: ", build_clear, decode_clear},
    [RC_STATS] = {BIO_OP_CMD, RC_FAIL_ERROR_DICT, "Error getting stats: %s", 0, NULL,
                  build_stats, decode_stats},
};
