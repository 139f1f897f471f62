/* bridge.c: the per-event-loop bridge between the I/O thread and asyncio.
 *
 * Each event loop that awaits Redis results gets one LoopBridge: a bio_bridge
 * (completion queue + eventfd) whose eventfd is registered with loop.add_reader.
 * The I/O thread pushes finished requests and writes the eventfd once per batch;
 * the reader callback (_drain) takes the whole batch and calls each request's
 * on_done on the loop's thread, with the GIL: that is where replies become Python
 * objects and awaitables are resolved.
 *
 * Bridges are found by loop (module state dict keyed by id(loop), checked through
 * a weak reference). When a loop is gone or closed its bridge is retired: its
 * reader is removed and it is kept on a list until the requests still holding it
 * have come back, which are then dropped without touching the dead loop. */
#include "bridge.h"

#include <errno.h>
#include <stdio.h>
#include <unistd.h>

#define BRIDGE_FLUSH_MIN 16
#define BRIDGE_FLUSH_MAX 256
#include <string.h>

typedef struct {
    PyObject_HEAD
    bio_bridge *b;        /* owned C reference */
    PyObject *loop_wr;    /* owned: weak reference to the loop */
    int retired;          /* loop gone: completions are dropped, not delivered */
    /* Requests made during this loop iteration, handed over together by _flush
     * (scheduled with call_soon): one lock and one wake-up per batch. */
    bio_req *pend_head, *pend_tail;
    int pend_count;
    int flush_scheduled;
    int plain_future;     /* the loop's create_future is asyncio's own */
    bruno_state *st;      /* borrowed */
} LoopBridge;

static void
fail_list(bio_req *r, int status, const char *msg)
{
    while (r) {
        bio_req *next = r->next;
        r->status = status;
        snprintf(r->err, sizeof r->err, "%s", msg);
        r->on_done(r);
        r = next;
    }
}

static int
submit_pending(LoopBridge *self)
{
    bio_req *head = self->pend_head, *tail = self->pend_tail;
    self->pend_head = self->pend_tail = NULL;
    self->pend_count = 0;
    if (head != NULL && bio_submit_list(head, tail) < 0) {
        fail_list(head, BIO_ECONN, "cannot start the I/O thread");
    }
    return 0;
}

static PyObject *
bridge_flush(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    LoopBridge *self = (LoopBridge *)op;
    self->flush_scheduled = 0;
    submit_pending(self);
    Py_RETURN_NONE;
}

bio_bridge *
bruno_bridge_c(PyObject *bridge)
{
    return ((LoopBridge *)bridge)->b;
}

/* Drop finished requests nobody can receive (their loop is gone). */
static void
drop_list(bio_req *r)
{
    fail_list(r, BIO_EDROPPED, "event loop closed");
}

static int sweep_retired(bruno_state *st);

static PyObject *
bridge_drain(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    LoopBridge *self = (LoopBridge *)op;
    bio_req *r = bio_bridge_take(self->b);
    while (r) {
        bio_req *next = r->next;
        r->on_done(r);
        r = next;
    }
    /* Requests of closed loops that came back meanwhile are released here, by
     * whichever loop is still working. */
    if (PyList_GET_SIZE(self->st->retired_bridges) > 0 && sweep_retired(self->st) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

/* The bridge's loop (new reference), or NULL (no exception) once it is gone. */
static PyObject *
bridge_loop(LoopBridge *self)
{
    PyObject *loop;
    if (PyWeakref_GetRef(self->loop_wr, &loop) < 0) {
        PyErr_Clear();
        return NULL;
    }
    return loop;
}

/* Is this bridge's loop gone or closed? */
static int
bridge_dead(LoopBridge *self)
{
    PyObject *loop = bridge_loop(self);
    if (loop == NULL || self->b->pid != bio_pid()) {
        Py_XDECREF(loop);
        return 1;
    }
    PyObject *closed = PyObject_CallMethodNoArgs(loop, self->st->str_is_closed);
    Py_DECREF(loop);
    if (closed == NULL) {
        PyErr_Clear();
        return 1;
    }
    int dead = PyObject_IsTrue(closed);
    Py_DECREF(closed);
    return dead != 0;
}

static void
bridge_retire(LoopBridge *self)
{
    if (self->retired) {
        return;
    }
    self->retired = 1;
    bio_req *pending = self->pend_head;
    self->pend_head = self->pend_tail = NULL;
    self->pend_count = 0;
    drop_list(pending);
    PyObject *loop = bridge_loop(self);
    if (loop != NULL && self->b->pid == bio_pid()) {
        PyObject *r = PyObject_CallMethod(loop, "remove_reader", "i", self->b->efd);
        if (r == NULL) {
            PyErr_Clear();
        }
        Py_XDECREF(r);
    }
    Py_XDECREF(loop);
}


/* Retire bridges of dead loops; forget retired ones nothing refers to any more.
 *
 * Python code runs in here — is_closed() and remove_reader() of the loops, and
 * dropping requests runs their completion callbacks and the __del__ of what they
 * held — and that code may sweep again (a key's __del__ running asyncio.run() on
 * another cache, say). So both sweeps walk a snapshot that holds a reference to
 * every bridge it lists, look the bridge up again before changing a container, and
 * retire a bridge once. */
static int
sweep(bruno_state *st)
{
    PyObject *snapshot = PyDict_Items(st->bridges);  /* [(key, bridge)], owned */
    if (snapshot == NULL) {
        return -1;
    }
    int rc = 0;
    for (Py_ssize_t i = 0; rc == 0 && i < PyList_GET_SIZE(snapshot); i++) {
        PyObject *pair = PyList_GET_ITEM(snapshot, i);
        PyObject *key = PyTuple_GET_ITEM(pair, 0);
        LoopBridge *b = (LoopBridge *)PyTuple_GET_ITEM(pair, 1);  /* held by snapshot */
        if (b->retired || !bridge_dead(b)) {
            continue;
        }
        PyObject *current = PyDict_GetItemWithError(st->bridges, key);  /* borrowed */
        if (current == (PyObject *)b) {
            rc = PyDict_DelItem(st->bridges, key);
        }
        else if (current == NULL && PyErr_Occurred()) {
            rc = -1;
        }
        if (rc == 0 && !b->retired) {
            rc = PyList_Append(st->retired_bridges, (PyObject *)b);
            if (rc == 0) {
                bridge_retire(b);  /* runs Python code; b stays alive (snapshot) */
            }
        }
    }
    Py_DECREF(snapshot);
    return rc < 0 ? -1 : sweep_retired(st);
}

/* Retired bridges: drop what came back; forget those no request holds (and, in a
 * forked child, those of the parent: nothing will come back through them here). */
static int
sweep_retired(bruno_state *st)
{
    PyObject *snapshot = PyList_GetSlice(st->retired_bridges, 0,
                                          PyList_GET_SIZE(st->retired_bridges));
    if (snapshot == NULL) {
        return -1;
    }
    int rc = 0;
    for (Py_ssize_t i = 0; rc == 0 && i < PyList_GET_SIZE(snapshot); i++) {
        LoopBridge *b = (LoopBridge *)PyList_GET_ITEM(snapshot, i);  /* held by snapshot */
        int ours = b->b->pid == bio_pid();
        if (ours) {
            drop_list(bio_bridge_take(b->b));  /* runs Python code */
        }
        if (ours && atomic_load(&b->b->refs) > 1) {
            continue;  /* requests still out there */
        }
        PyObject *list = st->retired_bridges;
        for (Py_ssize_t j = 0; j < PyList_GET_SIZE(list); j++) {
            if (PyList_GET_ITEM(list, j) == (PyObject *)b) {
                rc = PyList_SetSlice(list, j, j + 1, NULL);
                break;
            }
        }
    }
    Py_DECREF(snapshot);
    return rc;
}

int
bruno_bridge_plain_future(PyObject *bridge)
{
    return ((LoopBridge *)bridge)->plain_future;
}

PyObject *
bruno_bridge_loop(PyObject *bridge)  /* new reference */
{
    return bridge_loop((LoopBridge *)bridge);
}

int
bruno_bridge_submit(PyObject *bridge, bio_req *r, Py_ssize_t in_flight)
{
    LoopBridge *self = (LoopBridge *)bridge;
    r->next = NULL;
    if (in_flight <= 1 && self->pend_head == NULL) {
        if (bio_submit(r) < 0) {
            PyErr_SetFromErrno(PyExc_OSError);
            return -1;
        }
        return 0;
    }
    if (self->pend_tail) {
        self->pend_tail->next = r;
    }
    else {
        self->pend_head = r;
    }
    self->pend_tail = r;
    /* Half of what is in flight: two batches alternate, Redis working on one while
     * this loop produces the other. */
    Py_ssize_t flush_at = in_flight / 2;
    flush_at = flush_at < BRIDGE_FLUSH_MIN ? BRIDGE_FLUSH_MIN
             : flush_at > BRIDGE_FLUSH_MAX ? BRIDGE_FLUSH_MAX : flush_at;
    if (++self->pend_count >= flush_at) {
        /* A full batch: hand it over now, so that Redis works on it while this
         * loop iteration goes on producing the next one. */
        submit_pending(self);
        return 0;
    }
    if (!self->flush_scheduled) {
        PyObject *loop = bridge_loop(self);
        PyObject *cb = loop ? PyObject_GetAttrString(bridge, "_flush") : NULL;
        PyObject *h = cb ? PyObject_CallMethod(loop, "call_soon", "O", cb) : NULL;
        Py_XDECREF(cb);
        Py_XDECREF(loop);
        if (h == NULL) {
            /* Cannot schedule (loop closing): hand everything over right away. */
            PyErr_Clear();
            submit_pending(self);
            return 0;
        }
        Py_DECREF(h);
        self->flush_scheduled = 1;
    }
    return 0;
}

int
bruno_bridge_serves(PyObject *bridge, PyObject *loop)
{
    LoopBridge *self = (LoopBridge *)bridge;
    if (self->retired || self->b->pid != bio_pid()) {
        return 0;
    }
    PyObject *own = bridge_loop(self);
    Py_XDECREF(own);  /* only its identity is compared */
    return own == loop;
}

PyObject *
bruno_bridge_for_loop(bruno_state *st, PyObject *loop)
{
    PyObject *key = PyLong_FromVoidPtr(loop);
    if (key == NULL) {
        return NULL;
    }
    LoopBridge *found = (LoopBridge *)PyDict_GetItemWithError(st->bridges, key);
    if (found != NULL && bruno_bridge_serves((PyObject *)found, loop)) {
        Py_DECREF(key);
        return Py_NewRef(found);
    }
    if (PyErr_Occurred() || sweep(st) < 0) {
        Py_DECREF(key);
        return NULL;
    }
    LoopBridge *self = PyObject_GC_New(LoopBridge, st->LoopBridgeType);
    if (self == NULL) {
        Py_DECREF(key);
        return NULL;
    }
    self->st = st;
    self->retired = 0;
    self->loop_wr = NULL;
    self->pend_head = self->pend_tail = NULL;
    self->pend_count = 0;
    self->flush_scheduled = 0;
    self->plain_future = 0;
    {
        PyObject *cf = PyObject_GetAttrString((PyObject *)Py_TYPE(loop), "create_future");
        if (cf == NULL) {
            PyErr_Clear();
        }
        self->plain_future = cf != NULL && cf == st->base_create_future;
        Py_XDECREF(cf);
    }
    self->b = bio_bridge_new();
    if (self->b == NULL) {
        PyErr_SetFromErrno(PyExc_OSError);
        goto fail;
    }
    PyObject_GC_Track(self);
    self->loop_wr = PyWeakref_NewRef(loop, NULL);
    if (self->loop_wr == NULL) {
        goto fail;
    }
    PyObject *drain = PyObject_GetAttrString((PyObject *)self, "_drain");
    if (drain == NULL) {
        goto fail;
    }
    PyObject *r = PyObject_CallMethod(loop, "add_reader", "iO", self->b->efd, drain);
    Py_DECREF(drain);
    if (r == NULL) {
        goto fail;
    }
    Py_DECREF(r);
    /* The calls above ran Python code, which may have made a bridge for this loop
     * meanwhile (or left another in the dict): keep one, retire the other. */
    LoopBridge *other = (LoopBridge *)PyDict_GetItemWithError(st->bridges, key);
    if (other == NULL && PyErr_Occurred()) {
        goto fail;
    }
    if (other != NULL) {
        Py_INCREF(other);
        int keep_other = bruno_bridge_serves((PyObject *)other, loop);
        LoopBridge *loser = keep_other ? self : other;
        int rc = PyList_Append(st->retired_bridges, (PyObject *)loser);
        if (rc == 0) {
            bridge_retire(loser);  /* runs Python code; both are held */
        }
        if (keep_other) {
            Py_DECREF(key);
            Py_DECREF(self);
            if (rc < 0) {
                Py_DECREF(other);
                return NULL;
            }
            return (PyObject *)other;
        }
        Py_DECREF(other);
        if (rc < 0) {
            goto fail;
        }
    }
    if (PyDict_SetItem(st->bridges, key, (PyObject *)self) < 0) {
        goto fail;
    }
    Py_DECREF(key);
    return (PyObject *)self;
fail:
    Py_DECREF(key);
    Py_DECREF(self);
    return NULL;
}

static int
bridge_traverse(PyObject *op, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(op));
    Py_VISIT(((LoopBridge *)op)->loop_wr);
    return 0;
}

static void
bridge_dealloc(PyObject *op)
{
    LoopBridge *self = (LoopBridge *)op;
    PyTypeObject *tp = Py_TYPE(op);
    PyObject_GC_UnTrack(op);
    Py_CLEAR(self->loop_wr);
    if (self->b != NULL) {
        bio_bridge_decref(self->b);
    }
    PyObject_GC_Del(op);
    Py_DECREF(tp);
}

static PyMethodDef bridge_methods[] = {
    {"_drain", bridge_drain, METH_NOARGS,
     "_drain($self, /)\n--\n\nResolve every request the I/O thread finished."},
    {"_flush", bridge_flush, METH_NOARGS,
     "_flush($self, /)\n--\n\nHand this iteration's requests to the I/O thread."},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot bridge_slots[] = {
    {Py_tp_doc, "Completion queue between the Redis I/O thread and one event loop."},
    {Py_tp_dealloc, bridge_dealloc},
    {Py_tp_traverse, bridge_traverse},
    {Py_tp_methods, bridge_methods},
    {0, NULL},
};

static PyType_Spec bridge_spec = {
    .name = "bruno_memory_c._core.LoopBridge",
    .basicsize = sizeof(LoopBridge),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE |
             Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = bridge_slots,
};

int
bruno_bridge_init(PyObject *module, bruno_state *st)
{
    st->LoopBridgeType = (PyTypeObject *)PyType_FromModuleAndSpec(module, &bridge_spec, NULL);
    if (st->LoopBridgeType == NULL) {
        return -1;
    }
    st->bridges = PyDict_New();
    st->retired_bridges = PyList_New(0);
    if (st->bridges == NULL || st->retired_bridges == NULL) {
        return -1;
    }
    return 0;
}
