/* rc_track.c: RedisCache's side of a coherent L1 : a C caller
 * (MultiLevelCache) listens to the invalidations of the cache's prefix; the I/O
 * thread's events (io_track.c) come back on the listening loop's bridge and are
 * handed to the listener. See rediscache.h. */
#include "bridge.h"
#include "rc_internal.h"

#include <string.h>

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

/* An event, or the LISTEN's end, on the listening loop. */
static void
track_done(bio_req *r)
{
    rc_listener *l = r->user;
    if (r->op == BIO_OP_EVENT) {
        if (r->status == BIO_OK && l->data != NULL) {
            int flush = (r->event_flush & BIO_FLUSH_DROP ? RC_FLUSH_DROP : 0) |
                        (r->event_flush & BIO_FLUSH_STALE ? RC_FLUSH_STALE : 0);
            l->on_event(l->data, r->buf, r->ncmd, flush);
        }
    }
    else {
        /* The LISTEN is over (the cache closed, or was let go): its events came
         * before it on this bridge. A later use listens again. */
        l->listening = 0;
        bruno_rc_listener_release(l);
    }
    r->user = NULL;
    bio_req_free(r);
}

int
bruno_rc_listen(PyObject *cache, rc_listener *l)
{
    if (l->listening) {
        return 0;
    }
    RedisCache *self = (RedisCache *)cache;
    bio_client *c = rc_client(self);
    int no_loop;
    PyObject *bridge = c != NULL ? rc_bridge(self, &no_loop) : NULL;
    if (bridge == NULL) {
        if (c != NULL && no_loop) {
            return 0;  /* (no loop to deliver to yet: the next use listens) */
        }
        return -1;
    }
    bio_req *r = bio_req_new(c, bruno_bridge_c(bridge), BIO_OP_LISTEN, 0);
    if (r == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    r->user = l;
    r->on_done = track_done;
    l->refs++;
    l->listening = 1;
    /* (not through the bridge's batching, nor counted in flight: it stays out) */
    if (bio_submit(r) < 0) {
        l->listening = 0;
        l->refs--;
        r->user = NULL;
        bio_req_free(r);
        PyErr_SetString(self->st->CacheError, "cannot start the I/O thread");
        return -1;
    }
    return 0;
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
