/* rc_track.c: RedisCache's side of a coherent L1: C callers (MultiLevelCache) listen to
 * the invalidations of the cache's prefix. The cache's *hub* holds its listeners and
 * its one listening (a BIO_OP_LISTEN on the loop's bridge): the I/O thread's events
 * (io_track.c) come back on that bridge and are handed to every listener. Writes made
 * through this cache are not told by the server (NOLOOP: the connection's own), so the
 * hub tells the other listeners of them itself, once answered. See rediscache.h. */
#include "bridge.h"
#include "rc_internal.h"

#include <stdint.h>
#include <string.h>

/* Owned by the cache (one reference) and by its LISTEN while one is out (another): the
 * LISTEN ends on the loop after the cache may be gone. */
typedef struct rc_hub {
    int refs;
    bruno_state *st;         /* borrowed while the cache lives (NULL after): to log */
    bio_req *current;        /* borrowed identity: the LISTEN out (this process's), or
                                NULL; another loop's use listens again (replacing it) */
    bio_bridge *bridge;      /* borrowed identity: its bridge (held by it) */
    pid_t pid;               /* the process that made it (a forked child listens anew) */
    int telling;             /* hub_tell under way: the list is not compacted */
    rc_listener **ls;        /* owned references (PyMem) */
    int n, cap;
} rc_hub;

rc_listener *
bruno_rc_listener_new(void (*on_event)(void *data, const char *buf, int nkeys, int flush),
                      void *data)
{
    rc_listener *l = PyMem_Calloc(1, sizeof *l);
    if (l == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    l->on_event = on_event;
    l->data = data;
    l->refs = 1;
    return l;
}

void
bruno_rc_listener_release(rc_listener *l)
{
    if (l != NULL && --l->refs == 0) {
        PyMem_Free(l);
    }
}

/* Listeners whose owner went (data NULL) are let go. */
static void
hub_prune(rc_hub *h)
{
    if (h->telling) {
        return;  /* (a handler listening again: later) */
    }
    int kept = 0;
    for (int i = 0; i < h->n; i++) {
        if (h->ls[i]->data != NULL) {
            h->ls[kept++] = h->ls[i];
        }
        else {
            h->ls[i]->joined = NULL;
            bruno_rc_listener_release(h->ls[i]);
        }
    }
    h->n = kept;
}

static void
hub_release(rc_hub *h)
{
    if (h != NULL && --h->refs == 0) {
        for (int i = 0; i < h->n; i++) {
            h->ls[i]->joined = NULL;
            bruno_rc_listener_release(h->ls[i]);
        }
        PyMem_Free(h->ls);
        PyMem_Free(h);
    }
}

/* Every listener but `origin` hears (buf, nkeys, flush). A listener's handler may
 * drop the last reference to its owner (and release the listener): each is held. */
static void
hub_tell(rc_hub *h, const void *origin, const char *buf, int nkeys, int flush)
{
    h->refs++;
    h->telling++;
    for (int i = 0; i < h->n; i++) {
        rc_listener *l = h->ls[i];
        if (l != origin && l->data != NULL) {
            l->refs++;
            l->on_event(l->data, buf, nkeys, flush);
            bruno_rc_listener_release(l);
        }
    }
    h->telling--;
    hub_prune(h);
    hub_release(h);
}

/* An event, or the LISTEN's end, on the listening loop. */
static void
track_done(bio_req *r)
{
    rc_hub *h = r->user;
    if (r->op == BIO_OP_EVENT) {
        if (r->err[0] != '\0' && h->st != NULL) {
            PyObject *why = PyUnicode_DecodeUTF8(r->err, (Py_ssize_t)strlen(r->err),
                                                 "replace");
            if (why != NULL) {
                bruno_log_error(h->st, "Coherent L1 off: the server refused invalidation "
                                "tracking (other clients' writes do not drop L1 entries; "
                                "asked again every second): %s", NULL, why);
                Py_DECREF(why);
            }
            PyErr_Clear();
        }
        if (r->status == BIO_OK) {
            int flush = (r->event_flush & BIO_FLUSH_DROP ? RC_FLUSH_DROP : 0) |
                        (r->event_flush & BIO_FLUSH_STALE ? RC_FLUSH_STALE : 0);
            hub_tell(h, NULL, r->buf, r->ncmd, flush);
        }
    }
    else {
        /* The LISTEN is over (the cache closed or was let go, another loop listened,
         * its loop closed): its events came before it on this bridge. */
        if (h->current == r) {
            h->current = NULL;  /* (a later use listens again) */
        }
        hub_release(h);
    }
    r->user = NULL;
    bio_req_free(r);
}

int
bruno_rc_listen(PyObject *cache, rc_listener *l)
{
    RedisCache *self = (RedisCache *)cache;
    rc_hub *h = self->hub;
    if (h == NULL) {
        if ((h = PyMem_Calloc(1, sizeof *h)) == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        h->refs = 1;  /* the cache's */
        h->st = self->st;
        self->hub = h;
    }
    if (h->current != NULL && h->pid != bio_pid()) {
        h->current = NULL;  /* (a forked child: the parent's LISTEN is not ours) */
    }
    if (l->joined != h) {
        hub_prune(h);
        if (h->n == h->cap) {
            int cap = h->cap ? 2 * h->cap : 4;
            rc_listener **ls = PyMem_Realloc(h->ls, (size_t)cap * sizeof *ls);
            if (ls == NULL) {
                PyErr_NoMemory();
                return -1;
            }
            h->ls = ls;
            h->cap = cap;
        }
        h->ls[h->n++] = l;
        l->refs++;
        l->joined = h;
    }
    bio_client *c = rc_client(self);
    int no_loop;
    PyObject *bridge = c != NULL ? rc_bridge(self, &no_loop) : NULL;
    if (bridge == NULL) {
        if (c != NULL && no_loop) {
            return 0;  /* (no loop to deliver to yet: the next use listens) */
        }
        return -1;
    }
    bio_bridge *b = bruno_bridge_c(bridge);
    if (h->current != NULL && h->bridge == b) {
        return 0;  /* (every L2 use asks: this is the common case) */
    }
    /* First, or on another loop than the LISTEN out (which this one replaces: events
     * go to the loop in use). */
    bio_req *r = bio_req_new(c, b, BIO_OP_LISTEN, 0);
    if (r == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    r->user = h;
    r->on_done = track_done;
    h->refs++;
    /* (not through the bridge's batching, nor counted in flight: it stays out) */
    if (bio_submit(r) < 0) {
        h->refs--;
        r->user = NULL;
        bio_req_free(r);
        PyErr_SetString(self->st->CacheError, "cannot start the I/O thread");
        return -1;
    }
    h->current = r;
    h->bridge = b;
    h->pid = bio_pid();
    return 0;
}

void
rc_track_release(RedisCache *self)
{
    rc_hub *h = self->hub;
    self->hub = NULL;
    if (h != NULL) {
        h->st = NULL;
    }
    hub_release(h);
}

int
rc_track_wants(RedisCache *self, int op)
{
    return self->hub != NULL && self->hub->n > 0 &&
           (op == RC_SET || op == RC_DELETE || op == RC_SETMANY);
}

/* Append key's Redis text (u32 length, UTF-8 bytes) to *buf. 0 or -1 (an exception). */
static int
pack_key(RedisCache *self, PyObject *key, char **buf, size_t *len, size_t *cap)
{
    PyObject *text = bruno_rc_key_text((PyObject *)self, key);
    PyObject *bytes = text != NULL ? PyUnicode_AsEncodedString(text, "utf-8",
                                                                "surrogateescape") : NULL;
    Py_XDECREF(text);
    if (bytes == NULL) {
        return -1;
    }
    size_t n = (size_t)PyBytes_GET_SIZE(bytes);
    int rc = -1;
    if (n <= UINT32_MAX) {
        if (*len + 4 + n > *cap) {
            size_t want = (*cap ? *cap : 64);
            while (want < *len + 4 + n) {
                want *= 2;
            }
            char *grown = PyMem_Realloc(*buf, want);
            if (grown == NULL) {
                PyErr_NoMemory();
                Py_DECREF(bytes);
                return -1;
            }
            *buf = grown;
            *cap = want;
        }
        uint32_t n32 = (uint32_t)n;
        memcpy(*buf + *len, &n32, 4);
        memcpy(*buf + *len + 4, PyBytes_AS_STRING(bytes), n);
        *len += 4 + n;
        rc = 0;
    }
    Py_DECREF(bytes);
    return rc;
}

void
rc_track_written(RedisCache *self, rc_call *call)
{
    rc_hub *h = self->hub;
    if (h == NULL || h->n == 0 || (h->n == 1 && h->ls[0] == call->hook.origin)) {
        return;
    }
    PyObject *saved = PyErr_GetRaisedException();
    if (call->op == RC_CLEAR) {
        hub_tell(h, call->hook.origin, NULL, 0, RC_FLUSH_DROP | RC_FLUSH_STALE);
    }
    else if (call->written != NULL) {
        char *buf = NULL;
        size_t len = 0, cap = 0;
        int n = 0, failed = 0;
        if (call->op == RC_SETMANY) {
            for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(call->written) && !failed; i += 2) {
                failed = pack_key(self, PyTuple_GET_ITEM(call->written, i), &buf, &len,
                                  &cap) < 0;
                n++;
            }
        }
        else {
            failed = pack_key(self, call->written, &buf, &len, &cap) < 0;
            n = 1;
        }
        /* (a key whose text cannot be made was not written: its call failed on it; any
         * other failure, out of memory, drops everything instead) */
        hub_tell(h, call->hook.origin, failed ? NULL : buf, failed ? 0 : n,
                 failed ? RC_FLUSH_DROP | RC_FLUSH_STALE : 0);
        PyMem_Free(buf);
    }
    PyErr_SetRaisedException(saved);
}

PyObject *
bruno_rc_key_text(PyObject *cache, PyObject *key)
{
    RedisCache *self = (RedisCache *)cache;
    PyObject *s = PyUnicode_CheckExact(key) ? Py_NewRef(key) : PyObject_Format(key, NULL);
    if (s == NULL) {
        return NULL;
    }
    PyObject *text = PyUnicode_Concat(self->prefix, s);
    Py_DECREF(s);
    return text;
}
