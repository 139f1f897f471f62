/* rediscache.h: RedisCache's operations as C functions, for a C caller that wants the
 * typed answer along with the awaitable (MultiLevelCache).
 *
 * Each function does what the method of the same meaning does and returns its
 * awaitable. A caller may hand down a hook (hiredis' `fn` + `privdata`, in effect):
 * the call takes it over; its `done` runs on the awaiting loop once the request is
 * over, before the awaitable is resolved, with the typed answer; when no request is
 * made (bad input, an error) its `drop` runs before the function returns. RedisCache
 * knows nothing of its callers. */
#ifndef BRUNO_REDISCACHE_H
#define BRUNO_REDISCACHE_H

#include "module.h"

/* The operations of a RedisCache: its command table is indexed by them, and a caller
 * names what it asked with them. */
typedef enum {
    RC_CONNECT, RC_CLOSE, RC_GET, RC_SET, RC_DELETE, RC_EXISTS, RC_MGET, RC_SETMANY,
    RC_CLEAR, RC_STATS, RC_NOPS
} rc_op;

/* How a request made with a hook ended. */
typedef struct {
    int failed;              /* not answered (connection, timeout, refusal), or
                                answered with an error reply */
    const long long *pttl;   /* asked with_ttl and answered: each key's remaining life
                                in ms, as PTTL says (-1: no expiry, -2: absent); else
                                NULL */
    Py_ssize_t npttl;
} rc_answer;

typedef struct {
    /* result / exc: what the awaitable is about to be resolved with; either may be
     * replaced (exactly one non-NULL on return). Takes the data over. */
    void (*done)(void *data, const rc_answer *answer, PyObject **result, PyObject **exc);
    void (*drop)(void *data);                                  /* takes the data over */
    int (*traverse)(void *data, visitproc visit, void *arg);  /* its Python objects */
    void *data;
    const void *origin;      /* borrowed identity, or NULL: the listener (rc_listener)
                                of the caller, not told of its own write */
} rc_hook;

static inline int
bruno_rc_exact(bruno_state *st, PyObject *o)
{
    return Py_IS_TYPE(o, st->RedisCacheType);
}

/* get(key) / get_many(keys) (a non-empty tuple); with_ttl: each key's PTTL in the
 * same pipeline, for the hook's answer. */
PyObject *bruno_rc_get(PyObject *cache, PyObject *key, int with_ttl, const char *qualname,
                       const rc_hook *hook);
PyObject *bruno_rc_get_many(PyObject *cache, PyObject *keys, int with_ttl,
                            const char *qualname, const rc_hook *hook);
/* set, delete, exists, set_many (items: a flat tuple k0, v0, k1, v1, ...). */
PyObject *bruno_rc_set(PyObject *cache, PyObject *key, PyObject *value, PyObject *ttl,
                       const char *qualname, const rc_hook *hook);
PyObject *bruno_rc_delete(PyObject *cache, PyObject *key, const char *qualname,
                          const rc_hook *hook);
PyObject *bruno_rc_exists(PyObject *cache, PyObject *key, const char *qualname,
                          const rc_hook *hook);
PyObject *bruno_rc_set_many(PyObject *cache, PyObject *items, PyObject *ttl,
                            const char *qualname, const rc_hook *hook);
/* clear(), get_stats(), connect(), disconnect(). */
PyObject *bruno_rc_clear(PyObject *cache, const char *qualname, const rc_hook *hook);
PyObject *bruno_rc_get_stats(PyObject *cache, const char *qualname, const rc_hook *hook);
PyObject *bruno_rc_connect(PyObject *cache, const char *qualname);
PyObject *bruno_rc_disconnect(PyObject *cache, const char *qualname);
/* The doc-form statistics (its stats() method). */
PyObject *bruno_rc_stats(PyObject *cache);

/* Invalidations (a coherent L1): a listener hears, on the loop that listened, the keys
 * other clients wrote under the cache's prefix (`buf`: `nkeys` texts, each a u32
 * length and its bytes, as Redis names them: prefix + str(key)), or `flush` (RC_FLUSH_*
 * bits: every key may have changed, a FLUSHDB or tracking lost and back; with
 * RC_FLUSH_STALE, reads in flight may have been answered before the change or
 * untracked: they must not be promoted either).
 * Loop thread only. The caller owns one reference; the cache it listens to holds one
 * more while it keeps it. `data` is borrowed: set it to NULL before it goes (the cache
 * then lets go of it). */
#define RC_FLUSH_DROP 1
#define RC_FLUSH_STALE 2
typedef struct {
    void (*on_event)(void *data, const char *buf, int nkeys, int flush);
    void *data;
    int refs;
    const void *joined;      /* borrowed identity: the hub (of a cache) it is in */
} rc_listener;
rc_listener *bruno_rc_listener_new(void (*on_event)(void *, const char *, int, int),
                                   void *data);
void bruno_rc_listener_release(rc_listener *l);
/* Listen (cheap while listening; 0 without a running loop, to be asked again). 0/-1.
 * Several listeners of one cache share its listening; each also hears of the writes
 * made through the cache by others in this process (the server tells those to nobody
 * on this connection), once they are answered. */
int bruno_rc_listen(PyObject *cache, rc_listener *l);
/* The text Redis stores key under (prefix + str(key)): a new str, or NULL. */
PyObject *bruno_rc_key_text(PyObject *cache, PyObject *key);

#endif
