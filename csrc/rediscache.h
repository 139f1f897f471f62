/* rediscache.h: what MultiLevelCache (multilevel.c) asks of a RedisCache L2.
 *
 * The requests below are the methods of the same meaning with one addition: a
 * `via`, the MultiLevelCache's record of why it asked (an ml_via, multilevel.c).
 * The call always takes the via over: it travels with the request, and rc_done
 * hands it to bruno_mlc_l2_done() on the awaiting loop, before the awaitable is
 * resolved; when no request is made (bad input, nothing to write, an error) it is
 * given back through bruno_mlc_via_drop() before the call returns. */
#ifndef BRUNO_REDISCACHE_H
#define BRUNO_REDISCACHE_H

#include "io.h"
#include "module.h"

typedef struct ml_via ml_via;

static inline int
bruno_rc_exact(bruno_state *st, PyObject *o)
{
    return Py_IS_TYPE(o, st->RedisCacheType);
}

/* get(key), with the key's remaining time to live (PTTL) in the same pipeline. */
PyObject *bruno_rc_fetch(PyObject *l2, PyObject *key, const char *qualname, ml_via *via);

/* get_many(keys) for a non-empty tuple, with each key's PTTL in the same pipeline. */
PyObject *bruno_rc_fetch_many(PyObject *l2, PyObject *keys, const char *qualname,
                              ml_via *via);

/* set, delete, exists and set_many, arguments as the methods take them. */
PyObject *bruno_rc_set(PyObject *l2, PyObject *key, PyObject *value, PyObject *ttl,
                       const char *qualname, ml_via *via);
PyObject *bruno_rc_delete(PyObject *l2, PyObject *key, const char *qualname, ml_via *via);
PyObject *bruno_rc_exists(PyObject *l2, PyObject *key, const char *qualname, ml_via *via);
PyObject *bruno_rc_set_many(PyObject *l2, PyObject *flat, PyObject *ttl,
                            const char *qualname, ml_via *via);

/* clear() and get_stats(), and connect()/disconnect() (no via: nothing to learn). */
PyObject *bruno_rc_clear(PyObject *l2, const char *qualname, ml_via *via);
PyObject *bruno_rc_get_stats(PyObject *l2, const char *qualname, ml_via *via);
PyObject *bruno_rc_connect(PyObject *l2, const char *qualname);
PyObject *bruno_rc_disconnect(PyObject *l2, const char *qualname);

/* The doc-form statistics of a RedisCache (its stats() method). */
PyObject *bruno_rc_stats(PyObject *l2);

/* Implemented by multilevel.c. r is the finished request (status and replies);
 * *result / *exc are what the awaitable is about to be resolved with (either may
 * be replaced; exactly one is non-NULL on return). Takes the via over. */
void bruno_mlc_l2_done(ml_via *via, bio_req *r, int kind, PyObject **result,
                       PyObject **exc);
void bruno_mlc_via_drop(ml_via *via);
int bruno_mlc_via_traverse(ml_via *via, visitproc visit, void *arg);

/* Request kinds as bruno_mlc_l2_done sees them. */
enum {
    RC_GET = 3, RC_SET, RC_DELETE, RC_EXISTS, RC_MGET, RC_SETMANY, RC_CLEAR, RC_STATS,
};

#endif
