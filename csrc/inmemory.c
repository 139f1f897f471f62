/* inmemory.c: InMemoryCache, an LRU + TTL cache of Python objects, in C.
 *
 * Semantics follow bruno_memory.utils.cache.InMemoryCache (0.1.5) exactly, counters
 * included; SPEC.md lists the deliberate differences (input checks, a monotonic
 * clock). Every method does its work when called and returns a ready awaitable.
 *
 * Re-entrancy: Python code can run in a key's __hash__/__eq__ (lookup) and in the
 * __del__ of a released key or value. Each method hashes and validates before it
 * changes anything, and releases references only after the table is consistent. */
#include "inmemory.h"

#include "awaitable.h"
#include "lru.h"

#include <math.h>

typedef struct {
    PyObject_HEAD
    lru_table table;
    Py_ssize_t max_size;
    double default_ttl;              /* seconds; INFINITY when default_ttl is None */
    double cleanup_interval;         /* seconds */
    PyObject *default_ttl_obj;       /* owned: default_ttl as given (None or a number) */
    PyObject *cleanup_interval_obj;  /* owned: cleanup_interval as given */
    unsigned long long hits, misses, evictions, expirations;
    PyObject *loop;                  /* owned or NULL: loop the periodic cleanup runs on */
    PyObject *timer;                 /* owned or NULL: its pending TimerHandle */
    PyObject *cleanup_cb;            /* owned or NULL: callable bound to a weakref of self */
    PyObject *weakreflist;           /* managed by PyObject_ClearWeakRefs */
    bruno_state *st;                 /* borrowed: module state, alive while our type is */
} InMemoryCache;

/* ------------------------------------------------------------------ helpers */

/* A ttl argument as seconds: None gives `dflt`; a number must be >= 0 and not NaN.
 * `what` names the argument in messages. Returns 0, or -1 with TypeError/ValueError. */
static int
ttl_seconds(PyObject *ttl, double dflt, const char *what, double *out)
{
    if (ttl == NULL || ttl == Py_None) {
        *out = dflt;
        return 0;
    }
    return bruno_seconds(ttl, what, out);
}

/* Past this ttl (seconds), an expiry is computed from the coarse clock: the entry
 * may then expire up to lru_coarse_margin (two ticks, ~8 ms) early, under 1% of its
 * life, never late; a write saves the ~20 ns of a precise reading. */
#define COARSE_TTL 1.0

static inline double
expiry_for(double ttl)
{
    if (isinf(ttl)) {
        return INFINITY;
    }
    return (ttl >= COARSE_TTL ? lru_now_coarse() : lru_now()) + ttl;
}

static inline int
is_expired(lru_node *n, double *coarse)
{
    return lru_expired(n->expiry, coarse);
}

/* Evict least recently used entries while over max_size. */
static void
imc_evict(InMemoryCache *self)
{
    while ((Py_ssize_t)self->table.size > self->max_size) {
        lru_node *old = lru_oldest(&self->table);
        lru_unlink(&self->table, old);
        self->evictions++;
        LRU_ASSERT_CONSISTENT(&self->table);
        lru_node_free(old);  /* may re-enter; the loop re-reads the size */
    }
}

/* Store one entry (hash already known) expiring at `expiry` (lru_now() timebase,
 * INFINITY for never). Returns 0 or -1. */
static int
imc_store(InMemoryCache *self, PyObject *key, Py_hash_t hash, PyObject *value, double expiry)
{
    lru_node *n;
    if (lru_lookup(&self->table, key, hash, &n) < 0) {
        return -1;
    }
    if (n != NULL) {
        PyObject *old = n->value;
        n->value = Py_NewRef(value);
        n->expiry = expiry;
        lru_touch(&self->table, n);
        imc_evict(self);
        LRU_ASSERT_CONSISTENT(&self->table);
        Py_DECREF(old);  /* last: may run __del__ */
        imc_evict(self);
        return 0;
    }
    if ((Py_ssize_t)self->table.size >= self->max_size && self->table.size > 0) {
        /* Full: the new entry takes over the least recently used node. The
         * reference inserts and then evicts the oldest; the outcome is the same. */
        PyObject *old_key, *old_value;
        lru_replace_oldest(&self->table, key, hash, value, expiry, &old_key, &old_value);
        self->evictions++;
        imc_evict(self);  /* max_size may have been lowered */
        LRU_ASSERT_CONSISTENT(&self->table);
        Py_DECREF(old_value);  /* last: may run __del__ */
        Py_DECREF(old_key);
        /* A __del__ may have lowered max_size: the reference's eviction loop
         * re-reads it after each deletion, and so do we. */
        imc_evict(self);
        return 0;
    }
    if (lru_insert(&self->table, key, hash, value, expiry) == NULL) {
        return -1;
    }
    imc_evict(self);
    LRU_ASSERT_CONSISTENT(&self->table);
    return 0;
}

/* Look a key up as get() does, counting hits, misses and expirations.
 * *value receives a new reference, or NULL on a miss. Returns 0 or -1. */
static int
imc_read(InMemoryCache *self, PyObject *key, Py_hash_t hash, double *coarse, PyObject **value)
{
    lru_node *n;
    *value = NULL;
    if (lru_lookup(&self->table, key, hash, &n) < 0) {
        return -1;
    }
    if (n == NULL) {
        self->misses++;
        return 0;
    }
    if (is_expired(n, coarse)) {
        lru_unlink(&self->table, n);
        self->expirations++;
        self->misses++;
        LRU_ASSERT_CONSISTENT(&self->table);
        lru_node_free(n);
        return 0;
    }
    lru_touch(&self->table, n);
    self->hits++;
    *value = Py_NewRef(n->value);
    return 0;
}

/* ------------------------------------------------------------------ operations */

/* get(key): 1 with *value, 0 on a miss, -1 on error (inlined into get()). */
static inline int
imc_lookup(InMemoryCache *self, PyObject *key, PyObject **value)
{
    Py_hash_t hash = PyObject_Hash(key);
    if (hash == -1) {
        *value = NULL;
        return -1;
    }
    double coarse = -1;
    if (imc_read(self, key, hash, &coarse, value) < 0) {
        return -1;
    }
    return *value != NULL;
}

int
bruno_imc_lookup(PyObject *l1, PyObject *key, PyObject **value)
{
    return imc_lookup((InMemoryCache *)l1, key, value);
}

/* Store with the key and value held: re-entrant code must not free them under us. */
static inline int
imc_store_held(InMemoryCache *self, PyObject *key, Py_hash_t hash, PyObject *value,
               double expiry)
{
    Py_INCREF(key);
    Py_INCREF(value);
    int rc = imc_store(self, key, hash, value, expiry);
    Py_DECREF(value);
    Py_DECREF(key);
    return rc;
}

/* set(key, value, ttl) (inlined into set()). */
static inline int
imc_put(InMemoryCache *self, PyObject *key, PyObject *value, PyObject *ttl)
{
    double secs;
    if (ttl_seconds(ttl, self->default_ttl, "ttl", &secs) < 0) {
        return -1;
    }
    Py_hash_t hash = PyObject_Hash(key);
    if (hash == -1) {
        return -1;
    }
    return imc_store_held(self, key, hash, value, expiry_for(secs));
}

int
bruno_imc_put(PyObject *l1, PyObject *key, PyObject *value, PyObject *ttl)
{
    return imc_put((InMemoryCache *)l1, key, value, ttl);
}

int
bruno_imc_promote(PyObject *l1, PyObject *key, PyObject *value, double until)
{
    InMemoryCache *self = (InMemoryCache *)l1;
    Py_hash_t hash = PyObject_Hash(key);
    if (hash == -1) {
        return -1;
    }
    double expiry = expiry_for(self->default_ttl);
    return imc_store_held(self, key, hash, value, until < expiry ? until : expiry);
}

/* Hash and look up one key: *n is its node or NULL. Returns 0, or -1 on error. */
static int
imc_find(InMemoryCache *self, PyObject *key, lru_node **n)
{
    Py_hash_t hash = PyObject_Hash(key);
    if (hash == -1) {
        return -1;
    }
    return lru_lookup(&self->table, key, hash, n);
}

int
bruno_imc_remove(PyObject *l1, PyObject *key)
{
    InMemoryCache *self = (InMemoryCache *)l1;
    lru_node *n;
    if (imc_find(self, key, &n) < 0) {
        return -1;
    }
    if (n == NULL) {
        return 0;
    }
    /* As in the reference, an entry that has expired but is still stored is
     * deleted and reported as deleted. */
    lru_unlink(&self->table, n);
    LRU_ASSERT_CONSISTENT(&self->table);
    lru_node_free(n);
    return 1;
}

int
bruno_imc_contains(PyObject *l1, PyObject *key)
{
    InMemoryCache *self = (InMemoryCache *)l1;
    lru_node *n;
    if (imc_find(self, key, &n) < 0) {
        return -1;
    }
    if (n == NULL) {
        return 0;
    }
    double coarse = -1;
    if (is_expired(n, &coarse)) {
        lru_unlink(&self->table, n);
        self->expirations++;
        LRU_ASSERT_CONSISTENT(&self->table);
        lru_node_free(n);
        return 0;
    }
    return 1;  /* exists() does not change recency (reference) */
}

void
bruno_imc_clear(PyObject *l1)
{
    InMemoryCache *self = (InMemoryCache *)l1;
    lru_node *chain = lru_detach_all(&self->table);
    LRU_ASSERT_CONSISTENT(&self->table);
    lru_free_chain(chain);
}

#define SMALL_BATCH 128

/* Hashes of n keys taken every `step` items of a tuple, in `small` when they fit,
 * else in PyMem memory the caller frees. NULL with an exception (an unhashable key
 * fails the call before any change). */
static Py_hash_t *
hash_all(PyObject *tuple, Py_ssize_t n, Py_ssize_t step, Py_hash_t *small)
{
    Py_hash_t *hashes = n <= SMALL_BATCH ? small : PyMem_Malloc((size_t)n * sizeof(Py_hash_t));
    if (hashes == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        hashes[i] = PyObject_Hash(PyTuple_GET_ITEM(tuple, i * step));
        if (hashes[i] == -1) {
            if (hashes != small) {
                PyMem_Free(hashes);
            }
            return NULL;
        }
    }
    return hashes;
}

PyObject *
bruno_imc_read_many(PyObject *l1, PyObject *tuple)
{
    InMemoryCache *self = (InMemoryCache *)l1;
    Py_ssize_t n = PyTuple_GET_SIZE(tuple);
    Py_hash_t small[SMALL_BATCH];
    Py_hash_t *hashes = hash_all(tuple, n, 1, small);
    if (hashes == NULL) {
        return NULL;
    }
    PyObject *result = PyDict_New();
    for (Py_ssize_t i = 0; result != NULL && i < n; i++) {
        PyObject *key = PyTuple_GET_ITEM(tuple, i), *value;
        /* A clock reading per key: Python code run for an earlier one (a key's
         * __eq__, a value's __del__) may take any time, and an entry that expired
         * meanwhile must not be returned. */
        double coarse = -1;
        if (imc_read(self, key, hashes[i], &coarse, &value) < 0) {
            Py_CLEAR(result);
            break;
        }
        if (value == NULL) {
            continue;
        }
        /* A stored None counts as absent here, as in the reference. */
        int rc = value == Py_None ? 0 : PyDict_SetItem(result, key, value);
        Py_DECREF(value);
        if (rc < 0) {
            Py_CLEAR(result);
        }
    }
    if (hashes != small) {
        PyMem_Free(hashes);
    }
    return result;
}

int
bruno_imc_put_many(PyObject *l1, PyObject *flat, PyObject *ttl)
{
    InMemoryCache *self = (InMemoryCache *)l1;
    double secs;
    if (ttl_seconds(ttl, self->default_ttl, "ttl", &secs) < 0) {
        return -1;
    }
    Py_ssize_t n = PyTuple_GET_SIZE(flat) / 2;
    Py_hash_t small[SMALL_BATCH];
    Py_hash_t *hashes = hash_all(flat, n, 2, small);
    if (hashes == NULL) {
        return -1;
    }
    int rc = 0;
    double expiry = expiry_for(secs);
    for (Py_ssize_t i = 0; rc == 0 && i < n; i++) {
        /* The snapshot tuple holds key and value for the whole loop. */
        rc = imc_store(self, PyTuple_GET_ITEM(flat, 2 * i), hashes[i],
                       PyTuple_GET_ITEM(flat, 2 * i + 1), expiry);
    }
    if (hashes != small) {
        PyMem_Free(hashes);
    }
    return rc;
}

/* ------------------------------------------------------------------ data methods */

static PyObject *
imc_get(InMemoryCache *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    ONE_ARG("get", "key")
    PyObject *value;
    int found = imc_lookup(self, key, &value);
    if (found < 0) {
        return NULL;
    }
    if (!found) {
        return bruno_aw_none(self->st, "InMemoryCache.get");
    }
    return bruno_aw_ready(self->st, "InMemoryCache.get", value);
}

static PyObject *
imc_set(InMemoryCache *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    static const char *const names[] = {"key", "value", "ttl", NULL};
    PyObject *a[3];
    if (bruno_parse_args("set", args, nargs, kwnames, names, 2, a) < 0 ||
        imc_put(self, a[0], a[1], a[2]) < 0) {
        return NULL;
    }
    return bruno_aw_none(self->st, "InMemoryCache.set");
}

static PyObject *
imc_delete(InMemoryCache *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    ONE_ARG("delete", "key")
    int rc = bruno_imc_remove((PyObject *)self, key);
    if (rc < 0) {
        return NULL;
    }
    return bruno_aw_ready(self->st, "InMemoryCache.delete", PyBool_FromLong(rc));
}

static PyObject *
imc_exists(InMemoryCache *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    ONE_ARG("exists", "key")
    int rc = bruno_imc_contains((PyObject *)self, key);
    if (rc < 0) {
        return NULL;
    }
    return bruno_aw_ready(self->st, "InMemoryCache.exists", PyBool_FromLong(rc));
}

static PyObject *
imc_clear(InMemoryCache *self, PyObject *Py_UNUSED(ignored))
{
    bruno_imc_clear((PyObject *)self);
    return bruno_aw_none(self->st, "InMemoryCache.clear");
}

static PyObject *
imc_get_many(InMemoryCache *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    ONE_ARG("get_many", "keys")
    /* A private tuple: code run by __eq__/__del__ cannot change what we iterate. */
    PyObject *tuple = bruno_keys_tuple(key);
    if (tuple == NULL) {
        return NULL;
    }
    PyObject *result = bruno_imc_read_many((PyObject *)self, tuple);
    Py_DECREF(tuple);
    if (result == NULL) {
        return NULL;
    }
    return bruno_aw_ready(self->st, "InMemoryCache.get_many", result);
}

static PyObject *
imc_set_many(InMemoryCache *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    static const char *const names[] = {"items", "ttl", NULL};
    PyObject *a[2];
    if (bruno_parse_args("set_many", args, nargs, kwnames, names, 1, a) < 0) {
        return NULL;
    }
    double ttl;  /* validated before the mapping is read, as before */
    if (ttl_seconds(a[1], self->default_ttl, "ttl", &ttl) < 0) {
        return NULL;
    }
    PyObject *snap = bruno_mapping_flat(self->st, a[0]);  /* (k0, v0, k1, v1, ...) */
    if (snap == NULL) {
        return NULL;
    }
    int rc = bruno_imc_put_many((PyObject *)self, snap, a[1]);
    Py_DECREF(snap);
    if (rc < 0) {
        return NULL;
    }
    return bruno_aw_none(self->st, "InMemoryCache.set_many");
}

/* ------------------------------------------------------------------ statistics */

/* The counters as a new dict; hit_rate as a percentage rounded to 2 decimals
 * (get_stats, reference form) or as a fraction (stats, doc form). */
static PyObject *
imc_stats_dict(InMemoryCache *self, int percent)
{
    unsigned long long total = self->hits + self->misses;
    double rate = 0.0;
    PyObject *hit_rate;
    if (total > 0) {
        rate = (double)self->hits / (double)total;
    }
    if (percent) {
        /* Python's round(x, 2), so the figure equals the reference's exactly. */
        PyObject *f = PyFloat_FromDouble(rate * 100);
        if (f == NULL) {
            return NULL;
        }
        hit_rate = PyObject_CallMethod(f, "__round__", "i", 2);
        Py_DECREF(f);
    }
    else {
        hit_rate = PyFloat_FromDouble(rate);
    }
    if (hit_rate == NULL) {
        return NULL;
    }
    PyObject *d = Py_BuildValue(
        "{s:s,s:n,s:n,s:K,s:K,s:N,s:K,s:K}",
        "type", "in_memory",
        "size", (Py_ssize_t)self->table.size,
        "max_size", self->max_size,
        "hits", self->hits,
        "misses", self->misses,
        "hit_rate", hit_rate,
        "evictions", self->evictions,
        "expirations", self->expirations);
    return d;
}

static PyObject *
imc_get_stats(InMemoryCache *self, PyObject *Py_UNUSED(ignored))
{
    PyObject *d = imc_stats_dict(self, 1);
    if (d == NULL) {
        return NULL;
    }
    return bruno_aw_ready(self->st, "InMemoryCache.get_stats", d);
}

static PyObject *
imc_stats(InMemoryCache *self, PyObject *Py_UNUSED(ignored))
{
    return imc_stats_dict(self, 0);
}

PyObject *
bruno_imc_stats(PyObject *l1, int percent)
{
    return imc_stats_dict((InMemoryCache *)l1, percent);
}

/* ------------------------------------------------------------------ cleanup */

/* Remove every expired entry; returns how many. */
static Py_ssize_t
imc_remove_expired(InMemoryCache *self)
{
    double now = lru_now();
    lru_node *chain = NULL;
    Py_ssize_t removed = 0;
    lru_node *n = self->table.list.next;
    while (n != &self->table.list) {
        lru_node *next = n->next;
        if (n->expiry < now) {
            lru_unlink(&self->table, n);
            n->next = chain;
            chain = n;
            removed++;
        }
        n = next;
    }
    self->expirations += (unsigned long long)removed;
    LRU_ASSERT_CONSISTENT(&self->table);
    lru_free_chain(chain);
    return removed;
}

static int imc_arm_timer(InMemoryCache *self);

/* The TimerHandle callback; `wr` is a weak reference to the cache, so a started
 * cache that is dropped without stop() is still freed (its timer then cancelled). */
static PyObject *
imc_cleanup_fire(PyObject *wr, PyObject *Py_UNUSED(ignored))
{
    PyObject *obj;
    int alive = PyWeakref_GetRef(wr, &obj);
    if (alive <= 0) {
        return alive < 0 ? NULL : Py_NewRef(Py_None);
    }
    InMemoryCache *self = (InMemoryCache *)obj;  /* owned */
    Py_CLEAR(self->timer);  /* this one has fired */
    imc_remove_expired(self);
    int rc = 0;
    /* Re-arm unless stop() ran meanwhile, or start() already armed a new timer. */
    if (self->loop != NULL && self->timer == NULL) {
        rc = imc_arm_timer(self);
    }
    Py_DECREF(self);
    if (rc < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyMethodDef cleanup_def = {
    "_cleanup", imc_cleanup_fire, METH_NOARGS, "Remove expired entries, then re-arm."};

static int
imc_arm_timer(InMemoryCache *self)
{
    /* The validated delay as a float: the loop adds it to loop.time(), which a
     * Decimal or Fraction interval would not survive. */
    PyObject *delay = PyFloat_FromDouble(self->cleanup_interval);
    if (delay == NULL) {
        return -1;
    }
    PyObject *timer = PyObject_CallMethodObjArgs(self->loop, self->st->str_call_later,
                                                 delay, self->cleanup_cb, NULL);
    Py_DECREF(delay);
    if (timer == NULL) {
        return -1;
    }
    Py_XSETREF(self->timer, timer);
    return 0;
}

/* Is the loop still open? A loop that is closed, or half torn down by the
 * collector (a cycle through it being cleared: its attributes are gone), never
 * runs its timers again. */
static int
loop_open(PyObject *loop)
{
    PyObject *closed = loop ? PyObject_CallMethod(loop, "is_closed", NULL) : NULL;
    if (closed == NULL) {
        PyErr_Clear();
        return 0;
    }
    int open = closed == Py_False;
    Py_DECREF(closed);
    return open;
}

/* Cancel the pending cleanup timer, if any. Safe from dealloc and tp_clear: the
 * exception being raised (if any) is kept; the timer of a loop that will never run
 * it again is only dropped; a failure of cancel() on a live loop is reported as
 * unraisable without naming the (possibly dying) cache. */
static void
imc_cancel_timer(InMemoryCache *self)
{
    PyObject *timer = self->timer;
    self->timer = NULL;
    if (timer == NULL) {
        return;
    }
    PyObject *saved = PyErr_GetRaisedException();
    /* By name, not through the module state: at interpreter exit the module may
     * be gone before this cache. */
    PyObject *r = loop_open(self->loop) ? PyObject_CallMethod(timer, "cancel", NULL)
                                        : Py_NewRef(Py_None);
    if (r == NULL) {
        PyErr_WriteUnraisable(NULL);
    }
    Py_XDECREF(r);
    Py_DECREF(timer);
    PyErr_SetRaisedException(saved);
}

/* Arm the periodic cleanup on `loop` (reference stolen). 0 or -1. */
static int
imc_start_on(InMemoryCache *self, PyObject *loop)
{
    if (self->loop == loop && self->timer != NULL) {
        Py_DECREF(loop);  /* already running on this loop */
        return 0;
    }
    /* Not started, or started on another (possibly closed) loop: arm here. */
    imc_cancel_timer(self);
    Py_XSETREF(self->loop, loop);
    if (self->cleanup_cb == NULL) {
        PyObject *wr = PyWeakref_NewRef((PyObject *)self, NULL);
        if (wr == NULL) {
            goto fail;
        }
        self->cleanup_cb = PyCFunction_New(&cleanup_def, wr);
        Py_DECREF(wr);
        if (self->cleanup_cb == NULL) {
            goto fail;
        }
    }
    if (imc_arm_timer(self) < 0) {
        goto fail;
    }
    return 0;
fail:
    Py_CLEAR(self->loop);
    return -1;
}

/* start() made outside a running loop (`asyncio.run(cache.start())`): it arms the
 * cleanup at its first send, in the loop that awaits it. */
static int
start_deferred(PyObject *awobj)
{
    BrunoAwaitable *aw = (BrunoAwaitable *)awobj;
    InMemoryCache *self = aw->deferred;  /* owned by the awaitable */
    PyObject *loop = PyObject_CallNoArgs(self->st->get_running_loop);
    if (loop == NULL) {
        /* Still no running loop (a send() outside one): the work stays deferred, so
         * that awaiting it later in a loop does it, as RedisCache's does. */
        return -1;
    }
    aw->deferred = NULL;
    int rc = imc_start_on(self, loop);
    Py_DECREF(self);
    if (rc < 0) {
        return -1;
    }
    return bruno_aw_complete(aw, Py_NewRef(Py_None));
}

static void
drop_deferred(void *self)
{
    Py_DECREF((PyObject *)self);
}

static int
traverse_deferred(void *self, visitproc visit, void *arg)
{
    Py_VISIT((PyObject *)self);
    return 0;
}

PyObject *
bruno_imc_start(PyObject *l1, const char *qualname)
{
    InMemoryCache *self = (InMemoryCache *)l1;
    PyObject *loop = PyObject_CallNoArgs(self->st->get_running_loop);
    if (loop == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_RuntimeError)) {
            return NULL;
        }
        PyErr_Clear();
        PyObject *aw = bruno_aw_pending(self->st, qualname);
        if (aw != NULL) {
            bruno_aw_defer((BrunoAwaitable *)aw, Py_NewRef(self), start_deferred,
                           drop_deferred, traverse_deferred);
        }
        return aw;
    }
    if (imc_start_on(self, loop) < 0) {
        return NULL;
    }
    return bruno_aw_none(self->st, qualname);
}

static PyObject *
imc_start(InMemoryCache *self, PyObject *Py_UNUSED(ignored))
{
    return bruno_imc_start((PyObject *)self, "InMemoryCache.start");
}

void
bruno_imc_stop(PyObject *l1)
{
    InMemoryCache *self = (InMemoryCache *)l1;
    imc_cancel_timer(self);
    Py_CLEAR(self->loop);
}

static PyObject *
imc_stop(InMemoryCache *self, PyObject *Py_UNUSED(ignored))
{
    bruno_imc_stop((PyObject *)self);
    return bruno_aw_none(self->st, "InMemoryCache.stop");
}

/* ------------------------------------------------------------------ debug */

static PyObject *
imc_check(InMemoryCache *self, PyObject *Py_UNUSED(ignored))
{
    if (lru_check(&self->table) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------------ attributes */

static PyObject *
imc_get_max_size(InMemoryCache *self, void *Py_UNUSED(closure))
{
    return PyLong_FromSsize_t(self->max_size);
}

static int
parse_max_size(PyObject *v, Py_ssize_t *out)
{
    if (!PyLong_Check(v) || PyBool_Check(v)) {
        PyErr_Format(PyExc_TypeError, "max_size must be an int, not %.100s",
                     Py_TYPE(v)->tp_name);
        return -1;
    }
    int overflow;
    long long n = PyLong_AsLongLongAndOverflow(v, &overflow);
    if (n == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (overflow < 0 || (overflow == 0 && n < 1)) {
        PyErr_SetString(PyExc_ValueError, "max_size must be >= 1");
        return -1;
    }
    *out = (overflow > 0 || n > PY_SSIZE_T_MAX) ? PY_SSIZE_T_MAX : (Py_ssize_t)n;
    return 0;
}

static int
imc_set_max_size(InMemoryCache *self, PyObject *v, void *Py_UNUSED(closure))
{
    if (v == NULL) {
        PyErr_SetString(PyExc_AttributeError, "cannot delete max_size");
        return -1;
    }
    /* As in the reference, a smaller max_size takes effect at the next set(). */
    return parse_max_size(v, &self->max_size);
}

static PyObject *
imc_get_default_ttl(InMemoryCache *self, void *Py_UNUSED(closure))
{
    return Py_NewRef(self->default_ttl_obj);
}

static int
imc_set_default_ttl(InMemoryCache *self, PyObject *v, void *Py_UNUSED(closure))
{
    if (v == NULL) {
        PyErr_SetString(PyExc_AttributeError, "cannot delete default_ttl");
        return -1;
    }
    double ttl;
    if (ttl_seconds(v, INFINITY, "default_ttl", &ttl) < 0) {
        return -1;
    }
    self->default_ttl = ttl;
    Py_SETREF(self->default_ttl_obj, Py_NewRef(v));
    return 0;
}

static PyObject *
imc_get_cleanup_interval(InMemoryCache *self, void *Py_UNUSED(closure))
{
    return Py_NewRef(self->cleanup_interval_obj);
}

static PyObject *
imc_get_running(InMemoryCache *self, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(self->timer != NULL);
}

/* ------------------------------------------------------------------ lifecycle */

static PyObject *
imc_new(PyTypeObject *type, PyObject *Py_UNUSED(args), PyObject *Py_UNUSED(kwds))
{
    bruno_state *st = bruno_state_from_type(type);
    if (st == NULL) {
        return NULL;
    }
    InMemoryCache *self = (InMemoryCache *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    self->st = st;
    self->max_size = 1000;
    self->default_ttl = 3600;
    self->cleanup_interval = 60;
    self->default_ttl_obj = PyLong_FromLong(3600);
    self->cleanup_interval_obj = PyLong_FromLong(60);
    if (self->default_ttl_obj == NULL || self->cleanup_interval_obj == NULL ||
        lru_init(&self->table) < 0) {
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

static int
imc_init(InMemoryCache *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"max_size", "default_ttl", "cleanup_interval", NULL};
    PyObject *max_size = NULL, *default_ttl = NULL, *interval = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|OOO:InMemoryCache", kwlist,
                                     &max_size, &default_ttl, &interval)) {
        return -1;
    }
    Py_ssize_t size = 1000;
    double ttl = 3600, every = 60;
    if (max_size != NULL && parse_max_size(max_size, &size) < 0) {
        return -1;
    }
    if (default_ttl != NULL && ttl_seconds(default_ttl, INFINITY, "default_ttl", &ttl) < 0) {
        return -1;
    }
    if (interval != NULL) {
        if (interval == Py_None) {
            PyErr_SetString(PyExc_TypeError, "cleanup_interval must be a number, not None");
            return -1;
        }
        if (ttl_seconds(interval, 0, "cleanup_interval", &every) < 0) {
            return -1;
        }
        if (every <= 0) {
            PyErr_SetString(PyExc_ValueError, "cleanup_interval must be > 0");
            return -1;
        }
    }
    self->max_size = size;
    self->default_ttl = ttl;
    self->cleanup_interval = every;
    if (default_ttl != NULL) {
        Py_SETREF(self->default_ttl_obj, Py_NewRef(default_ttl));
    }
    if (interval != NULL) {
        Py_SETREF(self->cleanup_interval_obj, Py_NewRef(interval));
    }
    return 0;
}

static int
imc_traverse(InMemoryCache *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->default_ttl_obj);
    Py_VISIT(self->cleanup_interval_obj);
    Py_VISIT(self->loop);
    Py_VISIT(self->timer);
    Py_VISIT(self->cleanup_cb);
    if (self->table.buckets != NULL) {
        for (lru_node *n = self->table.list.next; n != &self->table.list; n = n->next) {
            Py_VISIT(n->key);
            Py_VISIT(n->value);
        }
    }
    return 0;
}

static int
imc_clear_refs(InMemoryCache *self)
{
    imc_cancel_timer(self);
    Py_CLEAR(self->loop);
    Py_CLEAR(self->cleanup_cb);
    if (self->table.buckets != NULL) {
        lru_free_chain(lru_detach_all(&self->table));
    }
    return 0;
}

static void
imc_dealloc(InMemoryCache *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    /* Caches stored in caches free each other recursively: the trashcan bounds
     * the C stack depth, as for any container. */
    Py_TRASHCAN_BEGIN(self, imc_dealloc)
    if (self->weakreflist != NULL) {
        PyObject_ClearWeakRefs((PyObject *)self);
    }
    imc_clear_refs(self);
    lru_fini(&self->table);
    Py_CLEAR(self->default_ttl_obj);
    Py_CLEAR(self->cleanup_interval_obj);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
    Py_TRASHCAN_END
}

static PyObject *
imc_repr(InMemoryCache *self)
{
    return PyUnicode_FromFormat("<%s size=%zu max_size=%zd>", Py_TYPE(self)->tp_name,
                                self->table.size, self->max_size);
}

/* ------------------------------------------------------------------ type */

static PyMethodDef imc_methods[] = {
    {"get", (PyCFunction)(void (*)(void))imc_get, METH_FASTCALL | METH_KEYWORDS,
     "get($self, /, key)\n--\n\n"
     "Return an awaitable giving the value stored under key, or None when absent\n"
     "or expired. A hit makes the key the most recently used."},
    {"set", (PyCFunction)(void (*)(void))imc_set, METH_FASTCALL | METH_KEYWORDS,
     "set($self, /, key, value, ttl=None)\n--\n\n"
     "Store value under key (by reference). ttl is in seconds (int or float);\n"
     "None means default_ttl, and default_ttl None means no expiry. Past max_size\n"
     "entries the least recently used one is evicted. Returns an awaitable."},
    {"delete", (PyCFunction)(void (*)(void))imc_delete, METH_FASTCALL | METH_KEYWORDS,
     "delete($self, /, key)\n--\n\nRemove key; the awaitable gives True if it was stored."},
    {"exists", (PyCFunction)(void (*)(void))imc_exists, METH_FASTCALL | METH_KEYWORDS,
     "exists($self, /, key)\n--\n\n"
     "Awaitable giving True if key is stored and not expired (recency unchanged)."},
    {"clear", (PyCFunction)imc_clear, METH_NOARGS,
     "clear($self, /)\n--\n\nRemove every entry; statistics are kept. Returns an awaitable."},
    {"get_many", (PyCFunction)(void (*)(void))imc_get_many, METH_FASTCALL | METH_KEYWORDS,
     "get_many($self, /, keys)\n--\n\n"
     "Awaitable giving a dict of the keys found (a stored None counts as absent)."},
    {"set_many", (PyCFunction)(void (*)(void))imc_set_many, METH_FASTCALL | METH_KEYWORDS,
     "set_many($self, /, items, ttl=None)\n--\n\n"
     "Store every (key, value) of the mapping items with the same ttl."},
    {"get_stats", (PyCFunction)imc_get_stats, METH_NOARGS,
     "get_stats($self, /)\n--\n\n"
     "Awaitable giving {type, size, max_size, hits, misses, hit_rate, evictions,\n"
     "expirations}; hit_rate is a percentage rounded to 2 decimals."},
    {"stats", (PyCFunction)imc_stats, METH_NOARGS,
     "stats($self, /)\n--\n\n"
     "The same counters as get_stats(), returned directly, with hit_rate as a\n"
     "fraction between 0 and 1."},
    {"start", (PyCFunction)imc_start, METH_NOARGS,
     "start($self, /)\n--\n\n"
     "Remove expired entries every cleanup_interval seconds on the running loop.\n"
     "Idempotent. Returns an awaitable."},
    {"stop", (PyCFunction)imc_stop, METH_NOARGS,
     "stop($self, /)\n--\n\nEnd the periodic cleanup. Idempotent. Returns an awaitable."},
    {"_check_consistency", (PyCFunction)imc_check, METH_NOARGS,
     "_check_consistency($self, /)\n--\n\n"
     "Verify every invariant of the table; raises AssertionError if one is broken."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef imc_getset[] = {
    {"max_size", (getter)imc_get_max_size, (setter)imc_set_max_size,
     "Maximum number of entries (>= 1).", NULL},
    {"default_ttl", (getter)imc_get_default_ttl, (setter)imc_set_default_ttl,
     "TTL in seconds used when set() gets ttl=None; None means no expiry.", NULL},
    {"cleanup_interval", (getter)imc_get_cleanup_interval, NULL,
     "Seconds between two sweeps of the periodic cleanup.", NULL},
    {"running", (getter)imc_get_running, NULL,
     "True while the periodic cleanup is scheduled.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMemberDef imc_members[] = {
    {"__weaklistoffset__", Py_T_PYSSIZET, offsetof(InMemoryCache, weakreflist), Py_READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyType_Slot imc_slots[] = {
    {Py_tp_doc,
     "InMemoryCache(max_size=1000, default_ttl=3600, cleanup_interval=60)\n"
     "--\n\n"
     "In-memory LRU cache with TTL, in C.\n\n"
     "Keys are any hashable objects; values are stored by reference. Every data\n"
     "method returns an awaitable whose work is already done when it returns.\n\n"
     "max_size: maximum number of entries (int >= 1).\n"
     "default_ttl: seconds an entry lives when set() gets no ttl (None: forever).\n"
     "cleanup_interval: seconds between sweeps of expired entries after start()."},
    {Py_tp_new, imc_new},
    {Py_tp_init, imc_init},
    {Py_tp_dealloc, imc_dealloc},
    {Py_tp_traverse, imc_traverse},
    {Py_tp_clear, imc_clear_refs},
    {Py_tp_repr, imc_repr},
    {Py_tp_methods, imc_methods},
    {Py_tp_getset, imc_getset},
    {Py_tp_members, imc_members},
    {0, NULL},
};

static PyType_Spec imc_spec = {
    .name = "bruno_memory_c._core.InMemoryCache",
    .basicsize = sizeof(InMemoryCache),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC |
             Py_TPFLAGS_IMMUTABLETYPE,
    .slots = imc_slots,
};

int
bruno_inmemory_init(PyObject *module, bruno_state *st)
{
    st->InMemoryCacheType = (PyTypeObject *)PyType_FromModuleAndSpec(module, &imc_spec, NULL);
    if (st->InMemoryCacheType == NULL ||
        bruno_async_methods(st, st->InMemoryCacheType, imc_methods, bruno_async_method_names) < 0) {
        return -1;
    }
    return PyModule_AddType(module, st->InMemoryCacheType);
}
