/* inmemory.h: InMemoryCache's operations as C functions, for MultiLevelCache.
 *
 * Each takes an object of exactly our InMemoryCache type (checked by the caller with
 * bruno_imc_exact) and does what the method of the same meaning does, counters
 * included, without making an awaitable. Keys are hashed and ttls validated before
 * anything changes: a call that fails changes nothing. */
#ifndef BRUNO_INMEMORY_H
#define BRUNO_INMEMORY_H

#include "module.h"

static inline int
bruno_imc_exact(bruno_state *st, PyObject *o)
{
    return Py_IS_TYPE(o, st->InMemoryCacheType);
}

/* get(key): 1 and *value (new reference) on a hit, 0 on a miss, -1 on error. */
int bruno_imc_lookup(PyObject *l1, PyObject *key, PyObject **value);

/* set(key, value, ttl); ttl NULL or None means default_ttl. 0 or -1. */
int bruno_imc_put(PyObject *l1, PyObject *key, PyObject *value, PyObject *ttl);

/* Store a value read from a lower level: the default ttl, but expiring no later
 * than `until` (lru_now() timebase; INFINITY: no bound). 0 or -1. */
int bruno_imc_promote(PyObject *l1, PyObject *key, PyObject *value, double until);

/* delete(key) / exists(key): 1 or 0, or -1 on error. */
int bruno_imc_remove(PyObject *l1, PyObject *key);
int bruno_imc_contains(PyObject *l1, PyObject *key);

/* get_many over a tuple of keys: a new dict of the keys found, or NULL. */
PyObject *bruno_imc_read_many(PyObject *l1, PyObject *keys);

/* set_many(items, ttl) with items a flat tuple (k0, v0, k1, v1, ...). 0 or -1. */
int bruno_imc_put_many(PyObject *l1, PyObject *flat, PyObject *ttl);

/* clear(), and the statistics dict: get_stats()'s (percent = 1, hit_rate in
 * percent) or stats()'s (percent = 0, a fraction). */
void bruno_imc_clear(PyObject *l1);
PyObject *bruno_imc_stats(PyObject *l1, int percent);

/* start(): the awaitable start() returns (its qualname given). Outside a running
 * loop, the cleanup is armed at the awaitable's first send, in the awaiting loop.
 * stop(): ends the cleanup at once. */
PyObject *bruno_imc_start(PyObject *l1, const char *qualname);
void bruno_imc_stop(PyObject *l1);

#endif
