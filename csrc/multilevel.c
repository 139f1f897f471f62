/* multilevel.c: MultiLevelCache, an L1 cache in front of an L2 cache, in C.
 *
 * Semantics follow bruno_memory.utils.cache.MultiLevelCache (0.1.5): get tries L1,
 * then L2 and promotes an L2 hit into L1; writes go to L1, then L2.
 *
 * Two paths, chosen per call from the levels' exact types:
 *   fast     L1 is our InMemoryCache and L2 our RedisCache (or None): everything
 *            happens here. An L1 hit is one table lookup; an L1 miss is one L2
 *            request made with a hook (rediscache.h) whose data is an ml_via (this
 *            file's record of why it asked): RedisCache calls via_done() on the
 *            awaiting loop with the typed answer (values, remaining TTLs, failure),
 *            where L2's answer is promoted into L1 in the same completion batch. GET
 *            and PTTL share a pipeline, so a promoted entry expires in L1 no later
 *            than in L2.
 *   generic  any other levels (the reference's RedisCache, an AsyncMock): the
 *            coroutines of bruno_memory_c/_multilevel.py await them exactly as the
 *            reference does (same methods, same arguments). With our L1, get() still
 *            answers an L1 hit here and hands only the miss to Python.
 *
 * Promotion races: while an L2 read of a key is in flight, a write of that key
 * through this cache (set, set_many, delete, clear) marks the read stale, and its
 * answer is then returned but not promoted (it may predate the write). `reading`
 * counts the reads in flight per key for that; clear() works by epoch: a read that
 * overlaps a clear() in any way does not promote.
 *
 * Re-entrancy: a key's __hash__/__eq__/__format__, a mapping's items() or a value's
 * JSON encoding may reassign cache.l1/cache.l2. Each method therefore holds its own
 * references to the two levels (ml_levels) for the whole call and never re-reads
 * the attributes. */
#include "awaitable.h"
#include "inmemory.h"
#include "lru.h"
#include "ml_internal.h"

#include <math.h>

/* ------------------------------------------------------------------ paths */

enum { PATH_GENERIC = 0, PATH_L1_ONLY, PATH_FAST };

/* The two levels as one call sees them (owned references) and its path. */
typedef struct {
    PyObject *l1, *l2;
    int path;
} ml_levels;

static inline void
ml_hold(MultiLevelCache *self, ml_levels *lv)
{
    lv->l1 = Py_NewRef(self->l1);
    lv->l2 = Py_NewRef(self->l2);
    if (!bruno_imc_exact(self->st, lv->l1)) {
        lv->path = PATH_GENERIC;
    }
    else if (lv->l2 == Py_None) {
        lv->path = PATH_L1_ONLY;
    }
    else {
        lv->path = bruno_rc_exact(self->st, lv->l2) ? PATH_FAST : PATH_GENERIC;
    }
}

/* Release the levels and pass `ret` through. */
static inline PyObject *
ml_release(ml_levels *lv, PyObject *ret)
{
    Py_DECREF(lv->l1);
    Py_DECREF(lv->l2);
    return ret;
}

/* The coroutine `bruno_memory_c._multilevel.<name>(self, *args)`. */
static PyObject *
ml_generic(MultiLevelCache *self, const char *name, PyObject *const *args, Py_ssize_t n)
{
    bruno_state *st = self->st;
    if (st->ml_helpers == NULL) {
        st->ml_helpers = PyImport_ImportModule("bruno_memory_c._multilevel");
        if (st->ml_helpers == NULL) {
            return NULL;
        }
    }
    PyObject *fn = PyObject_GetAttrString(st->ml_helpers, name);
    if (fn == NULL) {
        return NULL;
    }
    PyObject *argv[4] = {(PyObject *)self};
    for (Py_ssize_t i = 0; i < n; i++) {
        argv[i + 1] = args[i];
    }
    PyObject *coro = PyObject_Vectorcall(fn, argv, (size_t)n + 1, NULL);
    Py_DECREF(fn);
    return coro;
}

/* ------------------------------------------------------------------ data methods */

static PyObject *
mlc_get(MultiLevelCache *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    ONE_ARG("get", "key")
    ml_levels lv;
    ml_hold(self, &lv);
    if (!bruno_imc_exact(self->st, lv.l1)) {
        return ml_release(&lv, ml_generic(self, "get", &key, 1));
    }
    PyObject *value;
    int found = bruno_imc_lookup(lv.l1, key, &value);
    if (found < 0) {
        return ml_release(&lv, NULL);
    }
    if (found) {
        if (value != Py_None) {
            self->l1_hits++;
            return ml_release(&lv, bruno_aw_ready(self->st, "MultiLevelCache.get", value));
        }
        Py_DECREF(value);  /* a stored None is a miss, as in the reference */
    }
    if (lv.l2 == Py_None) {
        self->misses++;
        return ml_release(&lv, bruno_aw_none(self->st, "MultiLevelCache.get"));
    }
    if (lv.path != PATH_FAST) {
        return ml_release(&lv, ml_generic(self, "get_from_l2", &key, 1));
    }
    ml_via *via = ml_via_new(self, RC_GET, key, NULL);
    if (via == NULL) {
        return ml_release(&lv, NULL);
    }
    rc_hook hook;
    return ml_release(&lv, bruno_rc_get(lv.l2, key, 1, "MultiLevelCache.get",
                                        ml_hook_of(via, &hook)));
}

static PyObject *
mlc_set(MultiLevelCache *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    static const char *const names[] = {"key", "value", "ttl", NULL};
    PyObject *a[3];
    if (bruno_parse_args("set", args, nargs, kwnames, names, 2, a) < 0) {
        return NULL;
    }
    ml_levels lv;
    ml_hold(self, &lv);
    if (lv.path == PATH_GENERIC) {
        a[2] = a[2] ? a[2] : Py_None;
        return ml_release(&lv, ml_generic(self, "set", a, 3));
    }
    if (ml_note_write(self, a[0]) < 0 || ml_track_key(self, lv.l1, lv.l2, a[0]) < 0 ||
        bruno_imc_put(lv.l1, a[0], a[1], a[2]) < 0) {
        return ml_release(&lv, NULL);
    }
    if (lv.path == PATH_L1_ONLY) {
        return ml_release(&lv, bruno_aw_none(self->st, "MultiLevelCache.set"));
    }
    ml_via *via = ml_via_new(self, RC_SET, NULL, NULL);
    if (via == NULL) {
        return ml_release(&lv, NULL);
    }
    rc_hook hook;
    return ml_release(&lv, bruno_rc_set(lv.l2, a[0], a[1], a[2], "MultiLevelCache.set",
                                        ml_hook_of(via, &hook)));
}

static PyObject *
mlc_delete(MultiLevelCache *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    ONE_ARG("delete", "key")
    ml_levels lv;
    ml_hold(self, &lv);
    if (lv.path == PATH_GENERIC) {
        return ml_release(&lv, ml_generic(self, "delete", &key, 1));
    }
    if (ml_note_write(self, key) < 0) {
        return ml_release(&lv, NULL);
    }
    int deleted = bruno_imc_remove(lv.l1, key);
    if (deleted < 0) {
        return ml_release(&lv, NULL);
    }
    if (lv.path == PATH_L1_ONLY) {
        return ml_release(&lv, bruno_aw_ready(self->st, "MultiLevelCache.delete",
                                              PyBool_FromLong(deleted)));
    }
    ml_via *via = ml_via_new(self, RC_DELETE, NULL, deleted ? Py_True : NULL);
    if (via == NULL) {
        return ml_release(&lv, NULL);
    }
    rc_hook hook;
    return ml_release(&lv, bruno_rc_delete(lv.l2, key, "MultiLevelCache.delete",
                                           ml_hook_of(via, &hook)));
}

static PyObject *
mlc_exists(MultiLevelCache *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    ONE_ARG("exists", "key")
    ml_levels lv;
    ml_hold(self, &lv);
    if (lv.path == PATH_GENERIC) {
        return ml_release(&lv, ml_generic(self, "exists", &key, 1));
    }
    int found = bruno_imc_contains(lv.l1, key);
    if (found < 0) {
        return ml_release(&lv, NULL);
    }
    if (found || lv.path == PATH_L1_ONLY) {
        return ml_release(&lv, bruno_aw_ready(self->st, "MultiLevelCache.exists",
                                              PyBool_FromLong(found)));
    }
    ml_via *via = ml_via_new(self, RC_EXISTS, NULL, NULL);
    if (via == NULL) {
        return ml_release(&lv, NULL);
    }
    rc_hook hook;
    return ml_release(&lv, bruno_rc_exists(lv.l2, key, "MultiLevelCache.exists",
                                           ml_hook_of(via, &hook)));
}

static PyObject *
mlc_get_many(MultiLevelCache *self, PyObject *const *args, Py_ssize_t nargs,
             PyObject *kwnames)
{
    ONE_ARG("get_many", "keys")
    ml_levels lv;
    ml_hold(self, &lv);
    if (lv.path == PATH_GENERIC) {
        return ml_release(&lv, ml_generic(self, "get_many", &key, 1));
    }
    PyObject *keys = bruno_keys_tuple(key);
    if (keys == NULL) {
        return ml_release(&lv, NULL);
    }
    PyObject *found = bruno_imc_read_many(lv.l1, keys);
    PyObject *missing = NULL, *ret = NULL;
    if (found == NULL || (missing = PyList_New(0)) == NULL) {
        goto done;
    }
    /* The keys L1 lacks, in order, as the reference finds them (`k not in result`). */
    Py_ssize_t n = PyTuple_GET_SIZE(keys);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *k = PyTuple_GET_ITEM(keys, i);
        int in = PyDict_Contains(found, k);
        if (in < 0 || (!in && PyList_Append(missing, k) < 0)) {
            goto done;
        }
    }
    Py_ssize_t m = PyList_GET_SIZE(missing);
    if (m == 0 || lv.path == PATH_L1_ONLY) {
        self->l1_hits += (unsigned long long)(n - m);
        self->misses += (unsigned long long)m;
        ret = bruno_aw_ready(self->st, "MultiLevelCache.get_many", Py_NewRef(found));
        goto done;
    }
    Py_SETREF(missing, PyList_AsTuple(missing));
    if (missing == NULL) {
        goto done;
    }
    ml_via *via = ml_via_new(self, RC_MGET, missing, found);
    if (via != NULL) {
        rc_hook hook;
        ret = bruno_rc_get_many(lv.l2, missing, 1, "MultiLevelCache.get_many",
                                ml_hook_of(via, &hook));
        if (ret != NULL) {
            self->l1_hits += (unsigned long long)(n - m);
        }
    }
done:
    Py_XDECREF(missing);
    Py_XDECREF(found);
    Py_DECREF(keys);
    return ml_release(&lv, ret);
}

static PyObject *
mlc_set_many(MultiLevelCache *self, PyObject *const *args, Py_ssize_t nargs,
             PyObject *kwnames)
{
    static const char *const names[] = {"items", "ttl", NULL};
    PyObject *a[2];
    if (bruno_parse_args("set_many", args, nargs, kwnames, names, 1, a) < 0) {
        return NULL;
    }
    ml_levels lv;
    ml_hold(self, &lv);
    if (lv.path == PATH_GENERIC) {
        a[1] = a[1] ? a[1] : Py_None;
        return ml_release(&lv, ml_generic(self, "set_many", a, 2));
    }
    double unused;  /* the ttl is checked before the mapping is read, as in L1 */
    if (a[1] != NULL && a[1] != Py_None && bruno_seconds(a[1], "ttl", &unused) < 0) {
        return ml_release(&lv, NULL);
    }
    PyObject *flat = bruno_mapping_flat(self->st, a[0]);  /* (k0, v0, k1, v1, ...) */
    if (flat == NULL) {
        return ml_release(&lv, NULL);
    }
    PyObject *ret = NULL;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(flat); i += 2) {
        if (ml_note_write(self, PyTuple_GET_ITEM(flat, i)) < 0 ||
            ml_track_key(self, lv.l1, lv.l2, PyTuple_GET_ITEM(flat, i)) < 0) {
            goto done;
        }
    }
    if (bruno_imc_put_many(lv.l1, flat, a[1]) < 0) {
        goto done;
    }
    if (lv.path == PATH_L1_ONLY) {
        ret = bruno_aw_none(self->st, "MultiLevelCache.set_many");
        goto done;
    }
    ml_via *via = ml_via_new(self, RC_SETMANY, NULL, NULL);
    if (via != NULL) {
        rc_hook hook;
        ret = bruno_rc_set_many(lv.l2, flat, a[1], "MultiLevelCache.set_many",
                                ml_hook_of(via, &hook));
    }
done:
    Py_DECREF(flat);
    return ml_release(&lv, ret);
}

/* clear, get_stats, start and stop: in C over our own levels (so that they, too, do
 * their work when called); over any others, the coroutines of _multilevel.py. */
static PyObject *
mlc_clear(MultiLevelCache *self, PyObject *Py_UNUSED(ignored))
{
    ml_levels lv;
    ml_hold(self, &lv);
    if (lv.path == PATH_GENERIC) {
        return ml_release(&lv, ml_generic(self, "clear", NULL, 0));
    }
    ml_clear_begin(self);
    bruno_imc_clear(lv.l1);
    ml_track_cleared(self);  /* (L1 is empty: nothing is L2-backed any more) */
    if (lv.path == PATH_L1_ONLY) {
        ml_clear_end(self);
        return ml_release(&lv, bruno_aw_none(self->st, "MultiLevelCache.clear"));
    }
    ml_via *via = ml_via_new(self, RC_CLEAR, NULL, NULL);
    if (via == NULL) {
        ml_clear_end(self);
        return ml_release(&lv, NULL);
    }
    rc_hook hook;
    return ml_release(&lv, bruno_rc_clear(lv.l2, "MultiLevelCache.clear",
                                          ml_hook_of(via, &hook)));
}

static PyObject *
mlc_get_stats(MultiLevelCache *self, PyObject *Py_UNUSED(ignored))
{
    ml_levels lv;
    ml_hold(self, &lv);
    if (lv.path == PATH_GENERIC) {
        return ml_release(&lv, ml_generic(self, "get_stats", NULL, 0));
    }
    PyObject *l1_stats = bruno_imc_stats(lv.l1, 1), *ret = NULL;
    if (l1_stats == NULL) {
        return ml_release(&lv, NULL);
    }
    if (lv.path == PATH_L1_ONLY) {
        PyObject *d = Py_BuildValue("{s:s,s:O}", "type", "multi_level", "l1", l1_stats);
        ret = d ? bruno_aw_ready(self->st, "MultiLevelCache.get_stats", d) : NULL;
    }
    else {
        ml_via *via = ml_via_new(self, RC_STATS, NULL, l1_stats);
        if (via != NULL) {
            rc_hook hook;
            ret = bruno_rc_get_stats(lv.l2, "MultiLevelCache.get_stats", ml_hook_of(via, &hook));
        }
    }
    Py_DECREF(l1_stats);
    return ml_release(&lv, ret);
}

static PyObject *
mlc_start(MultiLevelCache *self, PyObject *Py_UNUSED(ignored))
{
    ml_levels lv;
    ml_hold(self, &lv);
    if (lv.path == PATH_L1_ONLY) {
        return ml_release(&lv, bruno_imc_start(lv.l1, "MultiLevelCache.start"));
    }
    PyObject *loop = NULL;
    if (lv.path == PATH_FAST) {
        loop = PyObject_CallNoArgs(self->st->get_running_loop);
        if (loop == NULL) {
            if (!PyErr_ExceptionMatches(PyExc_RuntimeError)) {
                return ml_release(&lv, NULL);
            }
            PyErr_Clear();  /* no running loop: two steps to defer, the coroutine does */
        }
    }
    if (loop == NULL) {
        return ml_release(&lv, ml_generic(self, "start", NULL, 0));
    }
    Py_DECREF(loop);
    PyObject *started = bruno_imc_start(lv.l1, "MultiLevelCache.start");  /* ready */
    if (started == NULL) {
        return ml_release(&lv, NULL);
    }
    Py_DECREF(started);
    if (ml_track_listen(self, lv.l1, lv.l2) < 0) {  /* (connected once tracked) */
        return ml_release(&lv, NULL);
    }
    return ml_release(&lv, bruno_rc_connect(lv.l2, "MultiLevelCache.start"));
}

static PyObject *
mlc_stop(MultiLevelCache *self, PyObject *Py_UNUSED(ignored))
{
    ml_levels lv;
    ml_hold(self, &lv);
    if (lv.path == PATH_GENERIC) {
        return ml_release(&lv, ml_generic(self, "stop", NULL, 0));
    }
    bruno_imc_stop(lv.l1);
    if (lv.path == PATH_L1_ONLY) {
        return ml_release(&lv, bruno_aw_none(self->st, "MultiLevelCache.stop"));
    }
    return ml_release(&lv, bruno_rc_disconnect(lv.l2, "MultiLevelCache.stop"));
}

/* ------------------------------------------------------------------ statistics */

/* level.stats() for our types, else the object's own stats() if it has one;
 * *out is NULL when there is none. 0 or -1. */
static int
level_stats(MultiLevelCache *self, PyObject *level, PyObject **out)
{
    *out = NULL;
    if (level == Py_None) {
        return 0;
    }
    if (bruno_imc_exact(self->st, level)) {
        *out = bruno_imc_stats(level, 0);
        return *out ? 0 : -1;
    }
    if (bruno_rc_exact(self->st, level)) {
        *out = bruno_rc_stats(level);
        return *out ? 0 : -1;
    }
    PyObject *fn = PyObject_GetAttrString(level, "stats");
    if (fn == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_AttributeError)) {
            return -1;
        }
        PyErr_Clear();
        return 0;  /* the reference's caches have no stats() */
    }
    *out = PyObject_CallNoArgs(fn);
    Py_DECREF(fn);
    if (*out == NULL) {
        return -1;
    }
    if (PyObject_HasAttrString(*out, "__await__")) {
        /* An async stats() (an unspecified AsyncMock, say) is not the plain call
         * stats() means: close its coroutine unawaited, report nothing. */
        PyObject *r = PyObject_HasAttrString(*out, "close")
                          ? PyObject_CallMethod(*out, "close", NULL) : NULL;
        Py_XDECREF(r);
        PyErr_Clear();
        Py_CLEAR(*out);
    }
    return 0;
}

static PyObject *
mlc_stats(MultiLevelCache *self, PyObject *Py_UNUSED(ignored))
{
    unsigned long long hits = self->l1_hits + self->l2_hits, total = hits + self->misses;
    PyObject *d = Py_BuildValue("{s:s,s:K,s:K,s:K,s:d,s:K,s:K,s:K,s:K}",
                                "type", "multi_level", "l1_hits", self->l1_hits,
                                "l2_hits", self->l2_hits, "misses", self->misses,
                                "hit_rate", total ? (double)hits / (double)total : 0.0,
                                "l2_errors", self->l2_errors, "promotions", self->promotions,
                                "invalidations", self->invalidations,
                                "l1_flushes", self->l1_flushes);
    if (d == NULL) {
        return NULL;
    }
    const char *names[2] = {"l1", "l2"};
    ml_levels lv;  /* held: a level's stats() may reassign the attributes */
    ml_hold(self, &lv);
    PyObject *levels[2] = {lv.l1, lv.l2};
    for (int i = 0; i < 2; i++) {
        PyObject *s;
        int rc = level_stats(self, levels[i], &s);
        if (rc < 0 || (s != NULL && PyDict_SetItemString(d, names[i], s) < 0)) {
            Py_XDECREF(s);
            Py_DECREF(d);
            return ml_release(&lv, NULL);
        }
        Py_XDECREF(s);
    }
    return ml_release(&lv, d);
}

/* _count(l1_hits, l2_hits, misses, l2_errors, promotions): the generic path's
 * counting. */
static PyObject *
mlc_count(MultiLevelCache *self, PyObject *const *args, Py_ssize_t nargs)
{
    unsigned long long *fields[5] = {&self->l1_hits, &self->l2_hits, &self->misses,
                                     &self->l2_errors, &self->promotions};
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "_count() takes 5 counts");
        return NULL;
    }
    unsigned long long add[5];
    for (int i = 0; i < 5; i++) {
        add[i] = PyLong_AsUnsignedLongLong(args[i]);
        if (add[i] == (unsigned long long)-1 && PyErr_Occurred()) {
            return NULL;
        }
    }
    for (int i = 0; i < 5; i++) {
        *fields[i] += add[i];
    }
    Py_RETURN_NONE;
}

/* _clear_begin() / _clear_end(): the generic path's clear() brackets itself. */
static PyObject *
mlc_clear_begin(MultiLevelCache *self, PyObject *Py_UNUSED(ignored))
{
    ml_clear_begin(self);
    Py_RETURN_NONE;
}

static PyObject *
mlc_clear_end(MultiLevelCache *self, PyObject *Py_UNUSED(ignored))
{
    ml_clear_end(self);
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------------ attributes */

static PyObject *
mlc_get_l1(MultiLevelCache *self, void *Py_UNUSED(closure))
{
    return Py_NewRef(self->l1);
}

static int
mlc_set_l1(MultiLevelCache *self, PyObject *v, void *Py_UNUSED(closure))
{
    if (v == NULL || v == Py_None) {
        PyErr_SetString(PyExc_TypeError, "l1 must be a cache, not None");
        return -1;
    }
    ml_track_levels_changed(self, 0);
    Py_SETREF(self->l1, Py_NewRef(v));
    return 0;
}

static PyObject *
mlc_get_l2(MultiLevelCache *self, void *Py_UNUSED(closure))
{
    return Py_NewRef(self->l2);
}

static int
mlc_set_l2(MultiLevelCache *self, PyObject *v, void *Py_UNUSED(closure))
{
    ml_track_levels_changed(self, 1);
    Py_SETREF(self->l2, Py_NewRef(v ? v : Py_None));  /* del cache.l2: no L2 */
    return 0;
}

static PyObject *
mlc_get_coherent(MultiLevelCache *self, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(ml_coherent(self, self->l1, self->l2));
}

static PyObject *
mlc_get_promote(MultiLevelCache *self, void *Py_UNUSED(closure))
{
    return Py_NewRef(self->promote_obj);
}

static int
mlc_set_promote(MultiLevelCache *self, PyObject *v, void *Py_UNUSED(closure))
{
    if (v == NULL) {
        PyErr_SetString(PyExc_AttributeError, "cannot delete promote_on_hit");
        return -1;
    }
    Py_SETREF(self->promote_obj, Py_NewRef(v));
    return 0;
}

/* ------------------------------------------------------------------ lifecycle */

static PyObject *
mlc_new(PyTypeObject *type, PyObject *Py_UNUSED(args), PyObject *Py_UNUSED(kwds))
{
    bruno_state *st = bruno_state_from_type(type);
    if (st == NULL) {
        return NULL;
    }
    MultiLevelCache *self = (MultiLevelCache *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    self->st = st;
    self->l1 = Py_NewRef(Py_None);
    self->l2 = Py_NewRef(Py_None);
    self->promote_obj = Py_NewRef(Py_True);
    return (PyObject *)self;
}

static int
mlc_init(MultiLevelCache *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"l1_cache", "l2_cache", "promote_on_hit", "coherent", NULL};
    PyObject *l1, *l2 = Py_None, *promote = Py_True, *coherent = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|OO$O:MultiLevelCache", kwlist, &l1, &l2,
                                     &promote, &coherent)) {
        return -1;
    }
    if (l1 == Py_None) {
        PyErr_SetString(PyExc_TypeError, "l1_cache must be a cache, not None");
        return -1;
    }
    int ours = bruno_rc_exact(self->st, l2) && bruno_imc_exact(self->st, l1);
    if (coherent != Py_None && !PyBool_Check(coherent)) {
        PyErr_Format(PyExc_TypeError, "coherent must be None, True or False, not %.100s",
                     Py_TYPE(coherent)->tp_name);
        return -1;
    }
    if (coherent == Py_True && !ours) {
        PyErr_SetString(PyExc_ValueError, "coherent=True needs bruno_memory_c's "
                        "InMemoryCache as L1 and RedisCache as L2 (Redis tells it which "
                        "keys other clients changed)");
        return -1;
    }
    self->coherent = coherent != Py_False;  /* (in effect while both levels are ours) */
    Py_SETREF(self->l1, Py_NewRef(l1));
    Py_SETREF(self->l2, Py_NewRef(l2));
    Py_SETREF(self->promote_obj, Py_NewRef(promote));
    return 0;
}

static int
mlc_traverse(MultiLevelCache *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->l1);
    Py_VISIT(self->l2);
    Py_VISIT(self->promote_obj);
    Py_VISIT(self->reading);
    Py_VISIT(self->backed);
    return 0;
}

/* Levels become None rather than NULL: code run while a cycle is collected may
 * still call a method, which then fails cleanly on the generic path. */
static int
mlc_clear_refs(MultiLevelCache *self)
{
    Py_XSETREF(self->l1, Py_NewRef(Py_None));
    Py_XSETREF(self->l2, Py_NewRef(Py_None));
    Py_XSETREF(self->promote_obj, Py_NewRef(Py_False));
    Py_CLEAR(self->reading);
    ml_track_free(self);
    return 0;
}

static void
mlc_dealloc(MultiLevelCache *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    Py_TRASHCAN_BEGIN(self, mlc_dealloc)
    if (self->weakreflist != NULL) {
        PyObject_ClearWeakRefs((PyObject *)self);
    }
    Py_CLEAR(self->l1);
    Py_CLEAR(self->l2);
    Py_CLEAR(self->promote_obj);
    Py_CLEAR(self->reading);
    ml_track_free(self);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
    Py_TRASHCAN_END
}

static PyObject *
mlc_repr(MultiLevelCache *self)
{
    ml_levels lv;  /* held: the first repr may reassign the attributes */
    ml_hold(self, &lv);
    return ml_release(&lv, PyUnicode_FromFormat("<%s l1=%R l2=%R>", Py_TYPE(self)->tp_name,
                                                lv.l1, lv.l2));
}

/* ------------------------------------------------------------------ type */

static PyMethodDef mlc_methods[] = {
    {"get", (PyCFunction)(void (*)(void))mlc_get, METH_FASTCALL | METH_KEYWORDS,
     "get($self, /, key)\n--\n\n"
     "Awaitable giving the value from L1, else from L2 (promoted into L1 when\n"
     "promote_on_hit), else None."},
    {"set", (PyCFunction)(void (*)(void))mlc_set, METH_FASTCALL | METH_KEYWORDS,
     "set($self, /, key, value, ttl=None)\n--\n\n"
     "Write value to L1, then to L2, with the same ttl. Returns an awaitable."},
    {"delete", (PyCFunction)(void (*)(void))mlc_delete, METH_FASTCALL | METH_KEYWORDS,
     "delete($self, /, key)\n--\n\n"
     "Delete key from both levels; the awaitable gives True if either had it."},
    {"exists", (PyCFunction)(void (*)(void))mlc_exists, METH_FASTCALL | METH_KEYWORDS,
     "exists($self, /, key)\n--\n\n"
     "Awaitable giving True if L1 has key, else whether L2 has it."},
    {"clear", (PyCFunction)mlc_clear, METH_NOARGS,
     "clear($self, /)\n--\n\nClear L1, then L2. Returns an awaitable."},
    {"get_many", (PyCFunction)(void (*)(void))mlc_get_many, METH_FASTCALL | METH_KEYWORDS,
     "get_many($self, /, keys)\n--\n\n"
     "Awaitable giving a dict of the keys found: L1's, then L2's for the keys L1\n"
     "lacks (promoted into L1 when promote_on_hit)."},
    {"set_many", (PyCFunction)(void (*)(void))mlc_set_many, METH_FASTCALL | METH_KEYWORDS,
     "set_many($self, /, items, ttl=None)\n--\n\n"
     "Write every (key, value) of items to L1, then to L2, with the same ttl."},
    {"get_stats", (PyCFunction)mlc_get_stats, METH_NOARGS,
     "get_stats($self, /)\n--\n\n"
     "Awaitable giving {type: 'multi_level', l1: l1.get_stats(), l2: l2.get_stats()}\n"
     "(no 'l2' without an L2)."},
    {"stats", (PyCFunction)mlc_stats, METH_NOARGS,
     "stats($self, /)\n--\n\n"
     "This cache's counters (l1_hits, l2_hits, misses, hit_rate as a fraction,\n"
     "l2_errors, promotions, invalidations, l1_flushes) with each level's own stats() under 'l1' and 'l2'."},
    {"start", (PyCFunction)mlc_start, METH_NOARGS,
     "start($self, /)\n--\n\nStart L1's cleanup and connect L2. Returns an awaitable."},
    {"stop", (PyCFunction)mlc_stop, METH_NOARGS,
     "stop($self, /)\n--\n\nStop L1's cleanup and disconnect L2. Returns an awaitable."},
    {"_count", (PyCFunction)(void (*)(void))mlc_count, METH_FASTCALL,
     "_count($self, l1_hits, l2_hits, misses, l2_errors, promotions, /)\n--\n\n"
     "Add to the counters (used by the generic path in _multilevel.py)."},
    {"_clear_begin", (PyCFunction)mlc_clear_begin, METH_NOARGS,
     "_clear_begin($self, /)\n--\n\nA clear() starts: L2 reads overlapping it do not promote."},
    {"_clear_end", (PyCFunction)mlc_clear_end, METH_NOARGS,
     "_clear_end($self, /)\n--\n\nThe clear() started by _clear_begin() is over."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef mlc_getset[] = {
    {"l1", (getter)mlc_get_l1, (setter)mlc_set_l1, "The L1 cache.", NULL},
    {"l1_cache", (getter)mlc_get_l1, (setter)mlc_set_l1, "The L1 cache (same as l1).", NULL},
    {"l2", (getter)mlc_get_l2, (setter)mlc_set_l2, "The L2 cache, or None.", NULL},
    {"l2_cache", (getter)mlc_get_l2, (setter)mlc_set_l2, "The L2 cache (same as l2).", NULL},
    {"promote_on_hit", (getter)mlc_get_promote, (setter)mlc_set_promote,
     "Whether an L2 hit is copied into L1.", NULL},
    {"coherent", (getter)mlc_get_coherent, NULL,
     "Whether other clients' writes in Redis drop L1 entries (coherent= not False,\n"
     "and both levels are bruno_memory_c's).", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMemberDef mlc_members[] = {
    {"__weaklistoffset__", Py_T_PYSSIZET, offsetof(MultiLevelCache, weakreflist), Py_READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyType_Slot mlc_slots[] = {
    {Py_tp_doc,
     "MultiLevelCache(l1_cache, l2_cache=None, promote_on_hit=True, *, coherent=None)\n"
     "--\n\n"
     "An L1 cache (usually InMemoryCache) in front of an L2 cache (usually\n"
     "RedisCache). Reads try L1, then L2; writes go to both. With our own two\n"
     "caches every operation runs in C; any other L2 with the reference's async\n"
     "methods is awaited exactly as bruno-memory awaits it. With both levels ours,\n"
     "L1 is coherent (unless coherent=False): an L1 entry is dropped when another\n"
     "client writes its key in Redis."},
    {Py_tp_new, mlc_new},
    {Py_tp_init, mlc_init},
    {Py_tp_dealloc, mlc_dealloc},
    {Py_tp_traverse, mlc_traverse},
    {Py_tp_clear, mlc_clear_refs},
    {Py_tp_repr, mlc_repr},
    {Py_tp_methods, mlc_methods},
    {Py_tp_getset, mlc_getset},
    {Py_tp_members, mlc_members},
    {0, NULL},
};

static PyType_Spec mlc_spec = {
    .name = "bruno_memory_c._core.MultiLevelCache",
    .basicsize = sizeof(MultiLevelCache),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC |
             Py_TPFLAGS_IMMUTABLETYPE,
    .slots = mlc_slots,
};

int
bruno_multilevel_init(PyObject *module, bruno_state *st)
{
    st->MultiLevelCacheType = (PyTypeObject *)PyType_FromModuleAndSpec(module, &mlc_spec, NULL);
    if (st->MultiLevelCacheType == NULL ||
        bruno_async_methods(st, st->MultiLevelCacheType, mlc_methods, bruno_async_method_names) < 0) {
        return -1;
    }
    return PyModule_AddType(module, st->MultiLevelCacheType);
}
