/* ml_l2.c: MultiLevelCache's L2 requests on the fast path (see multilevel.c for the
 * paths and ml_internal.h for what is shared).
 *
 * Each L2 request carries an ml_via as its hook's data. RedisCache calls via_done()
 * with the typed answer on the awaiting loop, where an L2 hit is promoted into L1 in
 * the same completion batch, or via_drop() when the request was never made or sent. */
#include "inmemory.h"
#include "lru.h"
#include "ml_internal.h"

#include <math.h>

/* ------------------------------------------------------------------ reads in flight */

static int
reading_add(MultiLevelCache *self, PyObject *key, long delta)
{
    if (self->reading == NULL && (self->reading = PyDict_New()) == NULL) {
        return -1;
    }
    PyObject *cur = PyDict_GetItemWithError(self->reading, key);  /* borrowed */
    if (cur == NULL && PyErr_Occurred()) {
        return -1;
    }
    long v = (cur ? PyLong_AsLong(cur) : 0) + delta;
    if (v < 2) {
        return cur ? PyDict_DelItem(self->reading, key) : 0;
    }
    PyObject *o = PyLong_FromLong(v);
    if (o == NULL) {
        return -1;
    }
    int rc = PyDict_SetItem(self->reading, key, o);
    Py_DECREF(o);
    return rc;
}

/* A write of key through this cache: reads of it in flight must not promote. */
int
ml_note_write(MultiLevelCache *self, PyObject *key)
{
    if (self->reading == NULL || PyDict_GET_SIZE(self->reading) == 0) {
        return 0;
    }
    PyObject *cur = PyDict_GetItemWithError(self->reading, key);
    if (cur == NULL) {
        return PyErr_Occurred() ? -1 : 0;
    }
    long v = PyLong_AsLong(cur);
    return v & 1 ? 0 : reading_add(self, key, 1);
}

/* A read of key is over: returns 1 when it may promote (no write since), else 0. */
static int
reading_end(MultiLevelCache *self, PyObject *key)
{
    if (self->reading == NULL) {
        return 0;
    }
    PyObject *cur = PyDict_GetItemWithError(self->reading, key);
    if (cur == NULL) {
        PyErr_Clear();
        return 0;
    }
    int fresh = !(PyLong_AsLong(cur) & 1);
    if (reading_add(self, key, -2) < 0) {
        PyErr_Clear();
    }
    return fresh;
}

/* A clear() starts / ends: no L2 read that overlaps one promotes (see promote()). */
void
ml_clear_begin(MultiLevelCache *self)
{
    self->clear_epoch++;
    self->clears_running++;
}

void
ml_clear_end(MultiLevelCache *self)
{
    if (self->clears_running > 0) {
        self->clears_running--;
    }
    self->clear_epoch++;
}

/* ------------------------------------------------------------------ vias */

/* The reads of the first n keys of a via's keys (a key for RC_GET, a tuple for
 * RC_MGET) are over, unanswered: they never promote. Keeps the exception raised. */
static void
reads_end(MultiLevelCache *self, int op, PyObject *keys, Py_ssize_t n)
{
    PyObject *saved = PyErr_GetRaisedException();
    if (op == RC_GET && n > 0) {
        (void)reading_end(self, keys);
    }
    for (Py_ssize_t i = 0; op == RC_MGET && i < n; i++) {
        (void)reading_end(self, PyTuple_GET_ITEM(keys, i));
    }
    PyErr_SetRaisedException(saved);
}

/* A via for op; for reads, key is a key (RC_GET) or a tuple of keys (RC_MGET)
 * whose reads are counted from now. NULL with an exception. */
ml_via *
ml_via_new(MultiLevelCache *self, int op, PyObject *keys, PyObject *partial)
{
    ml_via *via = PyMem_Malloc(sizeof *via);
    if (via == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    Py_ssize_t counted = 0;
    Py_ssize_t reads = op == RC_GET ? 1 : op == RC_MGET ? PyTuple_GET_SIZE(keys) : 0;
    for (; counted < reads; counted++) {
        PyObject *key = op == RC_GET ? keys : PyTuple_GET_ITEM(keys, counted);
        if (reading_add(self, key, 2) < 0) {
            goto fail;
        }
        if (ml_track_key(self, self->l1, self->l2, key) < 0) {
            counted++;  /* (its read is counted: given back below) */
            goto fail;
        }
    }
    via->mlc = (MultiLevelCache *)Py_NewRef(self);
    via->keys = reads > 0 ? Py_NewRef(keys) : NULL;
    via->partial = Py_XNewRef(partial);
    via->issued = lru_now();
    via->epoch = self->clear_epoch;
    via->op = op;
    return via;

fail:
    reads_end(self, op, keys, counted);
    PyMem_Free(via);
    return NULL;
}

static void
via_free(ml_via *via)
{
    MultiLevelCache *self = via->mlc;
    PyObject *keys = via->keys, *partial = via->partial;
    PyMem_Free(via);
    Py_XDECREF(keys);
    Py_XDECREF(partial);
    Py_DECREF(self);
}

/* The hook's drop: the request was never made (or never sent). */
static void
via_drop(void *data)
{
    ml_via *via = data;
    PyObject *saved = PyErr_GetRaisedException();
    Py_ssize_t n = via->op == RC_GET ? 1 : via->op == RC_MGET ? PyTuple_GET_SIZE(via->keys) : 0;
    reads_end(via->mlc, via->op, via->keys, n);
    if (via->op == RC_CLEAR) {
        ml_clear_end(via->mlc);
    }
    via_free(via);
    PyErr_SetRaisedException(saved);
}

static int
via_traverse(void *data, visitproc visit, void *arg)
{
    ml_via *via = data;
    Py_VISIT((PyObject *)via->mlc);
    Py_VISIT(via->keys);
    Py_VISIT(via->partial);
    return 0;
}

/* The hook of a request made for this via (the request takes the via over). */
static void via_done(void *data, const rc_answer *answer, PyObject **result, PyObject **exc);

const rc_hook *
ml_hook_of(ml_via *via, rc_hook *hook)
{
    hook->done = via_done;
    hook->drop = via_drop;
    hook->traverse = via_traverse;
    hook->data = via;
    hook->origin = via->mlc->listener;  /* (its own writes: its L1 holds them already) */
    return hook;
}

/* ------------------------------------------------------------------ L2 answers */

static void
log_promotion_error(MultiLevelCache *self)
{
    PyObject *v = PyErr_GetRaisedException();
    bruno_log_error(self->st, "Error promoting a value into L1: %r", NULL, v ? v : Py_None);
    Py_XDECREF(v);
}

/* Promote key -> value into L1 if it may (pttl: its remaining life in L2, in ms, as
 * PTTL said; NULL if unknown; via: when asked). */
static void
promote(MultiLevelCache *self, PyObject *key, PyObject *value, const long long *pttl,
        ml_via *via, int fresh)
{
    if (!fresh || via->epoch != self->clear_epoch || self->clears_running || pttl == NULL) {
        return;
    }
    int wanted = PyObject_IsTrue(self->promote_obj);  /* tested per use, as the reference */
    if (wanted <= 0) {
        PyErr_Clear();
        return;
    }
    double until;
    if (*pttl == -1) {
        until = INFINITY;  /* no expiry in L2: L1's default ttl alone */
    }
    else if (*pttl > 0) {
        /* Redis measured the remaining time after we asked: counting it from when
         * we asked makes L1 expire no later than L2. */
        until = via->issued + (double)*pttl / 1000.0;
        if (until <= lru_now()) {
            return;  /* a late await: already gone from L2 */
        }
    }
    else {
        return;  /* expired (-2) or expiring now (0) */
    }
    PyObject *l1 = Py_NewRef(self->l1);  /* the key's __eq__ may reassign cache.l1 */
    if (bruno_imc_exact(self->st, l1)) {
        if (bruno_imc_promote(l1, key, value, until) < 0) {
            log_promotion_error(self);
        }
        else {
            self->promotions++;
        }
    }
    Py_DECREF(l1);
}

/* The hook's done: L2's answer, on the awaiting loop, before the caller's awaitable is
 * resolved with *result / *exc (which may be replaced here). */
static void
via_done(void *data, const rc_answer *answer, PyObject **result, PyObject **exc)
{
    ml_via *via = data;
    MultiLevelCache *self = via->mlc;
    if (answer->failed) {
        self->l2_errors++;
    }
    if (via->op == RC_GET) {
        int fresh = reading_end(self, via->keys);
        PyObject *v = *result;
        if (v != NULL && v != Py_None) {
            self->l2_hits++;
            promote(self, via->keys, v, answer->npttl > 0 ? &answer->pttl[0] : NULL, via,
                    fresh);
        }
        else {
            self->misses++;
        }
    }
    else if (via->op == RC_MGET) {
        PyObject *keys = via->keys, *found = *result;  /* found: dict, or None */
        Py_ssize_t n = PyTuple_GET_SIZE(keys);
        for (Py_ssize_t i = 0; i < n; i++) {
            PyObject *key = PyTuple_GET_ITEM(keys, i);
            int fresh = reading_end(self, key);
            PyObject *v = found && PyDict_CheckExact(found)
                              ? PyDict_GetItemWithError(found, key) : NULL;  /* borrowed */
            if (v == NULL) {
                PyErr_Clear();
                self->misses++;
                continue;
            }
            self->l2_hits++;
            Py_INCREF(v);
            promote(self, key, v, answer->npttl > i ? &answer->pttl[i] : NULL, via, fresh);
            Py_DECREF(v);
        }
        /* The answer: L1's dict updated with L2's, as the reference builds it. */
        if (found != NULL && PyDict_CheckExact(found) && via->partial != NULL) {
            if (PyDict_Update(via->partial, found) < 0) {
                Py_CLEAR(*result);
                *exc = PyErr_GetRaisedException();  /* the awaiting task gets the error */
            }
            else {
                Py_SETREF(*result, Py_NewRef(via->partial));
            }
        }
    }
    else if (via->op == RC_DELETE && via->partial == Py_True && *result != NULL) {
        Py_SETREF(*result, Py_NewRef(Py_True));  /* l1_result or l2_result */
    }
    else if (via->op == RC_CLEAR) {
        ml_clear_end(self);
    }
    else if (via->op == RC_STATS && *result != NULL) {
        PyObject *d = Py_BuildValue("{s:s,s:O,s:O}", "type", "multi_level", "l1",
                                    via->partial, "l2", *result);
        Py_SETREF(*result, d);
        if (d == NULL) {
            *exc = PyErr_GetRaisedException();
        }
    }
    via_free(via);
}
