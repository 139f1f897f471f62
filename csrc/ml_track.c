/* ml_track.c: a coherent L1 : MultiLevelCache drops the L1
 * entries other clients overwrote in Redis. The L2 RedisCache listens to the
 * invalidations of its prefix (rc_track.c, io_track.c); here, which L1 keys are
 * L2-backed under which Redis key text, and what an invalidation does to them. */
#include "inmemory.h"
#include "ml_internal.h"

#include <stdint.h>
#include <string.h>

static void on_event(void *data, const char *buf, int nkeys, int flush);

int
ml_coherent(MultiLevelCache *self, PyObject *l1, PyObject *l2)
{
    return self->coherent && bruno_rc_exact(self->st, l2) && bruno_imc_exact(self->st, l1);
}

/* Listen (again) if coherent: at each L2 use, which is cheap once listening. */
static int
listen_l2(MultiLevelCache *self, PyObject *l2)
{
    if (self->listener == NULL &&
        (self->listener = bruno_rc_listener_new(on_event, self)) == NULL) {
        return -1;
    }
    return bruno_rc_listen(l2, self->listener);
}

int
ml_track_listen(MultiLevelCache *self, PyObject *l1, PyObject *l2)
{
    return ml_coherent(self, l1, l2) ? listen_l2(self, l2) : 0;
}

/* Drop from `backed` what L1 no longer holds nor reads, when it has outgrown L1 (so it
 * stays within a small multiple of L1's size). */
static int
prune(MultiLevelCache *self, PyObject *l1)
{
    PyObject *texts = PyDict_Keys(self->backed);
    if (texts == NULL) {
        return -1;
    }
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(texts); i++) {
        PyObject *text = PyList_GET_ITEM(texts, i);
        if (self->backed == NULL) {
            break;  /* (forgotten meanwhile: a level reassigned by a key's __eq__) */
        }
        PyObject *keys = PyDict_GetItemWithError(self->backed, text);
        if (keys == NULL) {
            PyErr_Clear();
            continue;
        }
        Py_INCREF(keys);  /* (held: a key's __eq__ may change `backed`) */
        int keep = 0;
        for (Py_ssize_t k = 0; k < PyList_GET_SIZE(keys) && !keep; k++) {
            PyObject *key = PyList_GET_ITEM(keys, k);
            keep = bruno_imc_contains(l1, key) > 0 ||
                   (self->reading != NULL && PyDict_Contains(self->reading, key) > 0);
            PyErr_Clear();
        }
        Py_DECREF(keys);
        if (!keep && PyDict_DelItem(self->backed, text) < 0) {
            PyErr_Clear();
        }
    }
    Py_DECREF(texts);
    self->backed_limit = self->backed != NULL ? 2 * PyDict_GET_SIZE(self->backed) + 1024
                                              : 1024;
    return 0;
}

int
ml_track_key(MultiLevelCache *self, PyObject *l1, PyObject *l2, PyObject *key)
{
    if (!ml_coherent(self, l1, l2)) {
        return 0;
    }
    if (listen_l2(self, l2) < 0) {
        return -1;
    }
    if (self->backed == NULL) {
        if ((self->backed = PyDict_New()) == NULL) {
            return -1;
        }
        self->backed_limit = 1024;
    }
    if (PyDict_GET_SIZE(self->backed) >= self->backed_limit && prune(self, l1) < 0) {
        return -1;  /* (before adding: the key being added may not be in L1 yet) */
    }
    PyObject *text = bruno_rc_key_text(l2, key);
    if (text == NULL) {
        PyErr_Clear();  /* (the L2 call fails on the same key, as it says) */
        return 0;
    }
    PyObject *keys = PyDict_GetItemWithError(self->backed, text);  /* borrowed */
    int rc = 0;
    if (keys == NULL && !PyErr_Occurred()) {
        keys = PyList_New(1);
        if (keys != NULL) {
            PyList_SET_ITEM(keys, 0, Py_NewRef(key));
            rc = PyDict_SetItem(self->backed, text, keys);
            Py_DECREF(keys);
        }
        else {
            rc = -1;
        }
    }
    else if (keys != NULL) {
        /* (two keys whose str() is one text: both dropped by its invalidation) */
        int known = 0;
        for (Py_ssize_t k = 0; k < PyList_GET_SIZE(keys) && !known; k++) {
            known = PyList_GET_ITEM(keys, k) == key;
        }
        if (!known && PyList_GET_SIZE(keys) < 8) {
            rc = PyList_Append(keys, key);
        }
    }
    else {
        rc = -1;
    }
    Py_DECREF(text);
    return rc;
}

/* Drop one text's keys from L1; `stale`: reads of them in flight will not promote. */
static void
drop_text(MultiLevelCache *self, PyObject *l1, PyObject *text, int stale)
{
    if (self->backed == NULL) {
        return;  /* (forgotten meanwhile) */
    }
    PyObject *keys = PyDict_GetItemWithError(self->backed, text);
    if (keys == NULL) {
        PyErr_Clear();
        return;
    }
    Py_INCREF(keys);
    (void)PyDict_DelItem(self->backed, text);
    PyErr_Clear();
    for (Py_ssize_t k = 0; k < PyList_GET_SIZE(keys); k++) {
        PyObject *key = PyList_GET_ITEM(keys, k);
        if (bruno_imc_remove(l1, key) < 0 || (stale && ml_note_write(self, key) < 0)) {
            PyErr_Clear();
        }
    }
    Py_DECREF(keys);
    PyErr_Clear();
}

static void
on_event(void *data, const char *buf, int nkeys, int flush)
{
    MultiLevelCache *self = data;
    Py_INCREF(self);  /* (held: a key's __eq__ may drop the last other reference) */
    PyObject *saved = PyErr_GetRaisedException();
    PyObject *l1 = Py_NewRef(self->l1);  /* (held: a key's __eq__ may reassign it) */
    if (flush & RC_FLUSH_STALE) {
        self->clear_epoch += 2;  /* (every read in flight: no promotion) */
    }
    if (self->backed != NULL && bruno_imc_exact(self->st, l1)) {
        if (flush) {
            PyObject *texts = PyDict_Keys(self->backed);
            for (Py_ssize_t i = 0; texts != NULL && i < PyList_GET_SIZE(texts); i++) {
                drop_text(self, l1, PyList_GET_ITEM(texts, i), 0);
            }
            Py_XDECREF(texts);
            self->l1_flushes++;
        }
        size_t pos = 0;
        for (int i = 0; !flush && i < nkeys; i++) {
            uint32_t len;
            memcpy(&len, buf + pos, 4);
            PyObject *text = PyUnicode_DecodeUTF8(buf + pos + 4, (Py_ssize_t)len,
                                                  "surrogateescape");
            pos += 4 + len;
            if (text != NULL) {
                drop_text(self, l1, text, 1);
                Py_DECREF(text);
            }
            PyErr_Clear();
        }
    }
    self->invalidations += flush ? 0 : (unsigned long long)nkeys;
    Py_DECREF(l1);
    PyErr_SetRaisedException(saved);
    Py_DECREF(self);
}

void
ml_track_cleared(MultiLevelCache *self)
{
    /* (reads overlapping the clear do not promote: ml_clear_begin) */
    if (self->backed != NULL) {
        PyDict_Clear(self->backed);
    }
}

void
ml_track_levels_changed(MultiLevelCache *self, int l2_changed)
{
    if (l2_changed && self->backed != NULL && PyDict_GET_SIZE(self->backed) > 0) {
        /* (what the old L2 backed is no longer watched) */
        on_event(self, NULL, 0, RC_FLUSH_DROP | RC_FLUSH_STALE);
    }
    ml_track_free(self);
}

void
ml_track_free(MultiLevelCache *self)
{
    if (self->listener != NULL) {
        self->listener->data = NULL;  /* (events still on their way find nobody) */
        bruno_rc_listener_release(self->listener);
        self->listener = NULL;
    }
    Py_CLEAR(self->backed);
}
