/* awaitable.c: the coroutine-like object returned by every cache method.
 * See awaitable.h for the two shapes (ready, pending). am_send is the core;
 * __next__, send, throw and close are thin wrappers over it. */
#include "awaitable.h"

#include <string.h>

static const char *const REUSED_MSG = "cannot reuse already awaited coroutine";

static PySendResult aw_am_send(PyObject *op, PyObject *arg, PyObject **presult);

/* Free list of awaitable memory blocks (untracked, type reference dropped): most
 * awaitables live for one await, so recycling them saves a malloc/free pair.
 * Process-wide and protected by the GIL. */
static PyObject *aw_free[BRUNO_AW_FREELIST];
static int aw_nfree;

/* ------------------------------------------------------------------ creation */

/* Returns a new reference with all fields clear, or NULL. */
static BrunoAwaitable *
aw_alloc(bruno_state *st, const char *qualname, int state)
{
    BrunoAwaitable *aw;
    if (aw_nfree > 0) {
        /* A recycled block: aw_dealloc left every reference and deferred NULL. */
        aw = (BrunoAwaitable *)aw_free[--aw_nfree];
        (void)PyObject_Init((PyObject *)aw, st->AwaitableType);  /* increfs the type */
        aw->state = state;
        aw->started = 0;
        aw->qualname = qualname;
        aw->plain_future = 0;
        aw->st = st;
        return aw;
    }
    aw = PyObject_GC_New(BrunoAwaitable, st->AwaitableType);
    if (aw == NULL) {
        return NULL;
    }
    aw->state = state;
    aw->started = 0;
    aw->qualname = qualname;
    aw->result = NULL;
    aw->exc = NULL;
    aw->future = NULL;
    aw->ctx = NULL;
    aw->loop = NULL;
    aw->plain_future = 0;
    aw->deferred = NULL;
    aw->start = NULL;
    aw->drop = NULL;
    aw->traverse = NULL;
    aw->st = st;
    return aw;
}

PyObject *
bruno_aw_ready(bruno_state *st, const char *qualname, PyObject *result)
{
    BrunoAwaitable *aw = aw_alloc(st, qualname, AW_READY);
    if (aw == NULL) {
        Py_DECREF(result);
        return NULL;
    }
    aw->result = result;  /* stolen */
    /* Only an object that can reference others can lead back to us in a cycle: an
     * atom (None, int, str, float, ...) needs no tracking, nor a tuple the collector
     * stopped tracking (its items are atoms, and it cannot change). A container that
     * is not tracked now (a dict of atoms) may be later, once it holds us. */
    if (PyObject_IS_GC(result) &&
        !(PyTuple_CheckExact(result) && !PyObject_GC_IsTracked(result))) {
        PyObject_GC_Track(aw);
    }
    return (PyObject *)aw;
}

PyObject *
bruno_aw_none(bruno_state *st, const char *qualname)
{
    return bruno_aw_ready(st, qualname, Py_NewRef(Py_None));
}

PyObject *
bruno_aw_error(bruno_state *st, const char *qualname, PyObject *exc)
{
    BrunoAwaitable *aw = aw_alloc(st, qualname, AW_READY);
    if (aw == NULL) {
        Py_DECREF(exc);
        return NULL;
    }
    aw->exc = exc;  /* stolen */
    PyObject_GC_Track(aw);
    return (PyObject *)aw;
}

PyObject *
bruno_aw_pending(bruno_state *st, const char *qualname)
{
    return (PyObject *)aw_alloc(st, qualname, AW_PENDING);
}

/* ------------------------------------------------------------------ completion */

/* Wake a parked task: resolve its Future. A Future cancelled meanwhile refuses
 * (InvalidStateError): nobody waits for the result then. Returns 0 or -1. */
static int
aw_wake(BrunoAwaitable *aw)
{
    PyObject *fut = aw->future;  /* borrowed; we keep our reference until DONE */
    if (fut == NULL) {
        return 0;
    }
    PyObject *r = PyObject_CallMethodOneArg(fut, aw->st->str_set_result, Py_None);
    if (r == NULL) {
        if (aw->st->InvalidStateError != NULL &&
            PyErr_ExceptionMatches(aw->st->InvalidStateError)) {
            PyErr_Clear();
            return 0;
        }
        return -1;
    }
    Py_DECREF(r);
    return 0;
}

void
bruno_aw_defer(BrunoAwaitable *aw, void *deferred, int (*start)(PyObject *aw),
               void (*drop)(void *deferred),
               int (*traverse)(void *deferred, visitproc visit, void *arg))
{
    aw->deferred = deferred;
    aw->start = start;
    aw->drop = drop;
    aw->traverse = traverse;
    if (!PyObject_GC_IsTracked((PyObject *)aw)) {
        PyObject_GC_Track(aw);
    }
}

static int
aw_resolve(BrunoAwaitable *aw, PyObject *result, PyObject *exc)
{
    if (aw->state == AW_DONE || aw->state == AW_READY) {
        /* Nobody will read it (cancelled, closed) or it was already resolved:
         * drop the late result. */
        Py_XDECREF(result);
        Py_XDECREF(exc);
        return 0;
    }
    aw->result = result;
    aw->exc = exc;
    if (!PyObject_GC_IsTracked((PyObject *)aw)) {
        PyObject_GC_Track(aw);
    }
    int was_waiting = aw->state == AW_WAITING;
    aw->state = AW_READY;
    return was_waiting ? aw_wake(aw) : 0;
}

int
bruno_aw_complete(BrunoAwaitable *aw, PyObject *result)
{
    return aw_resolve(aw, result, NULL);
}

int
bruno_aw_fail(BrunoAwaitable *aw, PyObject *exc)
{
    if (exc == NULL) {
        /* The failure could not even be built (MemoryError): raise that, never an
         * awaitable with neither a result nor an exception. */
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_RuntimeError, "cache operation failed");
        }
        exc = PyErr_GetRaisedException();
        if (exc == NULL) {
            exc = Py_NewRef(PyExc_MemoryError);
        }
    }
    return aw_resolve(aw, NULL, exc);
}

/* Drop everything the awaitable holds and mark it finished. The decrefs happen
 * after the fields are cleared, so re-entrant code sees a consistent object. */
static void
aw_drop_deferred(BrunoAwaitable *aw)
{
    void *deferred = aw->deferred;
    aw->deferred = NULL;
    if (deferred != NULL) {
        aw->drop(deferred);
    }
}

static void
aw_finish(BrunoAwaitable *aw)
{
    PyObject *result = aw->result, *exc = aw->exc, *fut = aw->future, *ctx = aw->ctx;
    PyObject *loop = aw->loop;
    aw->result = aw->exc = aw->future = aw->ctx = aw->loop = NULL;
    aw->state = AW_DONE;
    aw_drop_deferred(aw);
    Py_XDECREF(loop);
    Py_XDECREF(result);
    Py_XDECREF(exc);
    Py_XDECREF(fut);
    Py_XDECREF(ctx);
}

/* ------------------------------------------------------------------ am_send */

/* Park the awaiting task on a fresh Future of the running loop.
 * Sets *presult to a new reference to the Future and returns PYGEN_NEXT. */
static PySendResult
aw_park(BrunoAwaitable *aw, PyObject **presult)
{
    if (aw->deferred != NULL) {
        /* Made outside a loop: submit now that a loop awaits it. */
        if (aw->start((PyObject *)aw) < 0) {
            *presult = NULL;
            return PYGEN_ERROR;
        }
        if (aw->state == AW_READY) {  /* completed while starting */
            return aw_am_send((PyObject *)aw, Py_None, presult);
        }
    }
    if (aw->future == NULL) {
        /* The loop that delivers the result (known when the request was made in a
         * loop), else the running one. */
        PyObject *loop = aw->loop ? Py_NewRef(aw->loop)
                                  : PyObject_CallNoArgs(aw->st->get_running_loop);
        if (loop == NULL) {
            *presult = NULL;
            return PYGEN_ERROR;
        }
        PyObject *fut;
        if (aw->plain_future) {
            /* What asyncio's create_future does, without its Python frame. */
            PyObject *args[1] = {loop};
            fut = PyObject_Vectorcall(aw->st->FutureType, args, 0, aw->st->kwnames_loop);
        }
        else {
            fut = PyObject_CallMethodNoArgs(loop, aw->st->str_create_future);
        }
        Py_DECREF(loop);
        if (fut == NULL) {
            *presult = NULL;
            return PYGEN_ERROR;
        }
        aw->future = fut;
    }
    /* The protocol Future.__await__ follows: a yielded future with
     * _asyncio_future_blocking set tells the Task to wait for it. */
    if (PyObject_SetAttr(aw->future, aw->st->str_future_blocking, Py_True) < 0) {
        *presult = NULL;
        return PYGEN_ERROR;
    }
    aw->state = AW_WAITING;
    *presult = Py_NewRef(aw->future);
    return PYGEN_NEXT;
}

static PySendResult
aw_am_send(PyObject *op, PyObject *arg, PyObject **presult)
{
    BrunoAwaitable *aw = (BrunoAwaitable *)op;
    if (!aw->started && arg != Py_None && arg != NULL && aw->state != AW_DONE) {
        PyErr_SetString(PyExc_TypeError,
                        "can't send non-None value to a just-started coroutine");
        *presult = NULL;
        return PYGEN_ERROR;
    }
    aw->started = 1;
    switch (aw->state) {
    case AW_READY:
        if (aw->exc == NULL && aw->future == NULL && aw->ctx == NULL && aw->loop == NULL &&
            aw->deferred == NULL) {
            /* In-memory work, the usual case: nothing else to let go of. */
            *presult = aw->result;  /* our reference moves to the caller */
            aw->result = NULL;
            aw->state = AW_DONE;
            return PYGEN_RETURN;
        }
        if (aw->exc != NULL) {
            PyObject *exc = aw->exc;
            aw->exc = NULL;
            aw_finish(aw);
            PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
            Py_DECREF(exc);
            *presult = NULL;
            return PYGEN_ERROR;
        }
        *presult = aw->result;  /* our reference moves to the caller */
        aw->result = NULL;
        aw_finish(aw);
        return PYGEN_RETURN;
    case AW_PENDING:
    case AW_WAITING:
        return aw_park(aw, presult);
    default:
        PyErr_SetString(PyExc_RuntimeError, REUSED_MSG);
        *presult = NULL;
        return PYGEN_ERROR;
    }
}

/* ------------------------------------------------------------------ StopIteration
 *
 * From 3.12 on, `await aw` in a coroutine reaches us through tp_iternext (the
 * interpreter's SEND uses am_send only for its own generators), so a ready result is
 * handed over as a StopIteration. Building one by calling the class (an argument
 * tuple, __new__, __init__, context chaining) costs more than the cache lookup that
 * produced the result. So:
 *   - a None result leaves tp_iternext with no exception at all (the iterator
 *     protocol's "finished, value None");
 *   - any other result is raised as an instance of a StopIteration subclass
 *     (`bruno_memory_c._core.StopIteration`) filled in directly, whose memory goes to
 *     a free list when the interpreter drops it (right after taking its value).
 * It is a StopIteration in every other respect: .value, args as a coroutine's
 * (() for None, else (value,)), pickling. */

static PyObject *stop_free[BRUNO_AW_FREELIST];  /* untracked, type reference dropped */
static int stop_nfree;

/* Raise StopIteration(result) (reference to result stolen). Returns NULL. */
static PyObject *
aw_raise_stop(bruno_state *st, PyObject *result)
{
    /* args as a coroutine's: () for None, else (result,) */
    PyObject *args = result == Py_None ? PyTuple_New(0) : PyTuple_Pack(1, result);
    if (args == NULL) {
        Py_DECREF(result);
        return NULL;
    }
    PyStopIterationObject *s;
    if (stop_nfree > 0) {
        s = (PyStopIterationObject *)stop_free[--stop_nfree];
        (void)PyObject_Init((PyObject *)s, st->StopIterationType);  /* increfs the type */
    }
    else if ((s = PyObject_GC_New(PyStopIterationObject, st->StopIterationType)) == NULL) {
        Py_DECREF(args);
        Py_DECREF(result);
        return NULL;
    }
    /* What StopIteration(result) holds: no dict, notes, traceback, context or cause. */
    memset((char *)s + sizeof(PyObject), 0, sizeof *s - sizeof(PyObject));
    s->args = args;
    s->value = result;
    PyObject_GC_Track(s);
    PyErr_SetRaisedException((PyObject *)s);
    return NULL;
}

static int
stop_traverse(PyObject *op, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(op));
    return ((PyTypeObject *)PyExc_StopIteration)->tp_traverse(op, visit, arg);
}

static void
stop_dealloc(PyObject *op)
{
    PyTypeObject *tp = Py_TYPE(op);
    PyStopIterationObject *s = (PyStopIterationObject *)op;
    PyObject_GC_UnTrack(op);
    /* Fields first cleared, then released: a value's __del__ may raise again. */
    PyObject *held[] = {s->dict, s->args, s->notes, s->traceback, s->context, s->cause,
                        s->value};
    s->dict = s->args = s->notes = s->traceback = s->context = s->cause = s->value = NULL;
    if (stop_nfree < BRUNO_AW_FREELIST) {
        stop_free[stop_nfree++] = op;  /* reused by aw_raise_stop, type set again */
    }
    else {
        PyObject_GC_Del(op);
    }
    for (size_t i = 0; i < sizeof held / sizeof held[0]; i++) {
        Py_XDECREF(held[i]);
    }
    Py_DECREF(tp);
}

/* Turn an am_send outcome into the iterator protocol: the value to yield, or NULL
 * with StopIteration(result) raised (or, when no_exc_for_none, nothing raised for a
 * None result, which tp_iternext may do). */
static PyObject *
aw_send_to_iter(BrunoAwaitable *aw, PySendResult status, PyObject *result,
                int no_exc_for_none)
{
    if (status == PYGEN_NEXT) {
        return result;
    }
    if (status == PYGEN_RETURN) {
        if (result == Py_None && no_exc_for_none) {
            Py_DECREF(result);
            return NULL;
        }
        return aw_raise_stop(aw->st, result);
    }
    return NULL;
}

static PyObject *
aw_iternext(PyObject *op)
{
    PyObject *result;
    PySendResult status = aw_am_send(op, Py_None, &result);
    return aw_send_to_iter((BrunoAwaitable *)op, status, result, 1);
}

static PyObject *
aw_send(PyObject *op, PyObject *arg)
{
    PyObject *result;
    PySendResult status = aw_am_send(op, arg, &result);
    return aw_send_to_iter((BrunoAwaitable *)op, status, result, 0);
}

/* throw(value) / throw(type[, value[, traceback]]): the operation is abandoned
 * (a late result will be dropped) and the exception propagates, as it does from a
 * coroutine that does not catch it. */
static PyObject *
aw_throw(PyObject *op, PyObject *const *args, Py_ssize_t nargs)
{
    BrunoAwaitable *aw = (BrunoAwaitable *)op;
    if (nargs < 1 || nargs > 3) {
        PyErr_Format(PyExc_TypeError, "throw expected 1 to 3 arguments, got %zd", nargs);
        return NULL;
    }
    PyObject *typ = args[0];
    PyObject *val = nargs > 1 ? args[1] : Py_None;
    PyObject *tb = nargs > 2 ? args[2] : Py_None;
    if (tb != Py_None && !PyTraceBack_Check(tb)) {
        PyErr_SetString(PyExc_TypeError, "throw() third argument must be a traceback object");
        return NULL;
    }
    PyObject *exc;
    if (PyExceptionInstance_Check(typ)) {
        if (val != Py_None) {
            PyErr_SetString(PyExc_TypeError,
                            "instance exception may not have a separate value");
            return NULL;
        }
        exc = Py_NewRef(typ);
    }
    else if (PyExceptionClass_Check(typ)) {
        /* As a coroutine's: an instance of the class (or a subclass) is raised as it
         * is; any other value is the argument of a new instance of the class. */
        int is_instance = PyExceptionInstance_Check(val) ? PyObject_IsInstance(val, typ) : 0;
        if (is_instance < 0) {
            return NULL;
        }
        if (is_instance) {
            exc = Py_NewRef(val);
        }
        else if (val == Py_None) {
            exc = PyObject_CallNoArgs(typ);
        }
        else if (PyTuple_Check(val)) {
            exc = PyObject_Call(typ, val, NULL);
        }
        else {
            exc = PyObject_CallOneArg(typ, val);
        }
        if (exc == NULL) {
            return NULL;
        }
    }
    else {
        PyErr_Format(PyExc_TypeError,
                     "exceptions must be classes or instances deriving from "
                     "BaseException, not %.100s", Py_TYPE(typ)->tp_name);
        return NULL;
    }
    if (tb != Py_None && PyException_SetTraceback(exc, tb) < 0) {
        Py_DECREF(exc);
        return NULL;
    }
    if (aw->future != NULL && aw->state == AW_WAITING) {
        PyObject *r = PyObject_CallMethod(aw->future, "cancel", NULL);
        if (r == NULL) {
            PyErr_Clear();
        }
        Py_XDECREF(r);
    }
    aw->started = 1;
    aw_finish(aw);
    if (PyErr_GivenExceptionMatches(exc, PyExc_StopIteration)) {
        /* PEP 479, as for a coroutine that does not catch it: a StopIteration leaving
         * it would read as its return value. */
        PyObject *rt = PyObject_CallFunction(PyExc_RuntimeError, "s",
                                             "coroutine raised StopIteration");
        if (rt == NULL) {
            Py_DECREF(exc);
            return NULL;
        }
        PyException_SetCause(rt, Py_NewRef(exc));
        PyException_SetContext(rt, exc);  /* steals */
        PyErr_SetObject(PyExc_RuntimeError, rt);
        Py_DECREF(rt);
        return NULL;
    }
    PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
    Py_DECREF(exc);
    return NULL;
}

static PyObject *
aw_close(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    BrunoAwaitable *aw = (BrunoAwaitable *)op;
    if (aw->future != NULL && aw->state == AW_WAITING) {
        PyObject *r = PyObject_CallMethod(aw->future, "cancel", NULL);
        if (r == NULL) {
            return NULL;
        }
        Py_DECREF(r);
    }
    aw_finish(aw);
    Py_RETURN_NONE;
}

static PyObject *
aw_await(PyObject *op)
{
    return Py_NewRef(op);
}

static PyObject *
aw_await_meth(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    return Py_NewRef(op);
}

static PyObject *
aw_get_qualname(PyObject *op, void *Py_UNUSED(closure))
{
    return PyUnicode_FromString(((BrunoAwaitable *)op)->qualname);
}

static PyObject *
aw_get_done(PyObject *op, void *Py_UNUSED(closure))
{
    BrunoAwaitable *aw = (BrunoAwaitable *)op;
    return PyBool_FromLong(aw->state == AW_READY || aw->state == AW_DONE);
}

static PyObject *
aw_repr(PyObject *op)
{
    static const char *const names[] = {"pending", "ready", "waiting", "done"};
    BrunoAwaitable *aw = (BrunoAwaitable *)op;
    return PyUnicode_FromFormat("<%s awaitable %s at %p>", aw->qualname,
                                names[aw->state], op);
}

/* ------------------------------------------------------------------ GC */

static int
aw_traverse(PyObject *op, visitproc visit, void *arg)
{
    BrunoAwaitable *aw = (BrunoAwaitable *)op;
    Py_VISIT(Py_TYPE(op));
    Py_VISIT(aw->result);
    Py_VISIT(aw->exc);
    Py_VISIT(aw->future);
    Py_VISIT(aw->ctx);
    Py_VISIT(aw->loop);
    if (aw->deferred != NULL && aw->traverse != NULL) {
        return aw->traverse(aw->deferred, visit, arg);
    }
    return 0;
}

static int
aw_clear(PyObject *op)
{
    BrunoAwaitable *aw = (BrunoAwaitable *)op;
    Py_CLEAR(aw->result);
    Py_CLEAR(aw->exc);
    Py_CLEAR(aw->future);
    Py_CLEAR(aw->ctx);
    Py_CLEAR(aw->loop);
    aw_drop_deferred(aw);
    return 0;
}

static void
aw_dealloc(PyObject *op)
{
    PyTypeObject *tp = Py_TYPE(op);
    BrunoAwaitable *aw = (BrunoAwaitable *)op;
    PyObject_GC_UnTrack(op);
    if (aw->state != AW_DONE || aw->exc != NULL || aw->future != NULL || aw->ctx != NULL ||
        aw->loop != NULL || aw->result != NULL || aw->deferred != NULL) {
        aw_clear(op);  /* (a finished awaitable, the usual case, holds nothing) */
    }
    /* No module state here: at interpreter exit the module may be gone before the
     * last awaitables are (the collector breaks cycles in any order). */
    if (aw_nfree < BRUNO_AW_FREELIST) {
        aw_free[aw_nfree++] = op;  /* recycled by aw_alloc, with its type set again */
    }
    else {
        PyObject_GC_Del(op);
    }
    Py_DECREF(tp);
}

void
bruno_awaitable_fini(bruno_state *Py_UNUSED(st))
{
    while (aw_nfree > 0) {
        PyObject_GC_Del(aw_free[--aw_nfree]);
    }
    while (stop_nfree > 0) {
        PyObject_GC_Del(stop_free[--stop_nfree]);
    }
}

/* ------------------------------------------------------------------ type */

static PyMethodDef aw_methods[] = {
    {"send", (PyCFunction)aw_send, METH_O,
     "send($self, value, /)\n--\n\nResume the operation; raises StopIteration(result) when done."},
    {"throw", (PyCFunction)(void (*)(void))aw_throw, METH_FASTCALL,
     "throw($self, typ, val=None, tb=None, /)\n--\n\nAbandon the operation and raise the exception."},
    {"close", aw_close, METH_NOARGS,
     "close($self, /)\n--\n\nAbandon the operation; a late result is dropped."},
    {"__await__", aw_await_meth, METH_NOARGS,
     "__await__($self, /)\n--\n\nReturn an iterator to be used in await expression."},
    {"__class_getitem__", Py_GenericAlias, METH_O | METH_CLASS,
     "See PEP 585 (CacheAwaitable[T] in annotations)."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef aw_getset[] = {
    {"__qualname__", aw_get_qualname, NULL, "Name of the cache operation.", NULL},
    {"__name__", aw_get_qualname, NULL, "Name of the cache operation.", NULL},
    {"done", aw_get_done, NULL, "True once the result is known.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot aw_slots[] = {
    {Py_tp_doc, "Awaitable result of a cache operation.\n\n"
                "Behaves like a coroutine: await it, or pass it to asyncio.create_task,\n"
                "gather, wait_for, shield. The operation started when the method was\n"
                "called; an awaitable that is never awaited still completes it."},
    {Py_tp_dealloc, aw_dealloc},
    {Py_tp_traverse, aw_traverse},
    {Py_tp_clear, aw_clear},
    {Py_tp_repr, aw_repr},
    {Py_tp_iter, aw_await},
    {Py_tp_iternext, aw_iternext},
    {Py_tp_methods, aw_methods},
    {Py_tp_getset, aw_getset},
    {Py_am_await, aw_await},
    {Py_am_send, aw_am_send},
    {0, NULL},
};

static PyType_Spec aw_spec = {
    .name = "bruno_memory_c._core.CacheAwaitable",
    .basicsize = sizeof(BrunoAwaitable),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE |
             Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = aw_slots,
};

static PyType_Slot stop_slots[] = {
    {Py_tp_doc, "StopIteration carrying the result of a cache operation."},
    {Py_tp_dealloc, stop_dealloc},
    {Py_tp_traverse, stop_traverse},
    {0, NULL},
};

static PyType_Spec stop_spec = {
    .name = "bruno_memory_c._core.StopIteration",
    .basicsize = sizeof(PyStopIterationObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = stop_slots,
};

int
bruno_awaitable_init(PyObject *module, bruno_state *st)
{
    st->AwaitableType = (PyTypeObject *)PyType_FromModuleAndSpec(module, &aw_spec, NULL);
    st->StopIterationType = (PyTypeObject *)PyType_FromModuleAndSpec(module, &stop_spec,
                                                                     PyExc_StopIteration);
    if (st->AwaitableType == NULL || st->StopIterationType == NULL) {
        return -1;
    }
    if (PyModule_AddType(module, st->StopIterationType) < 0) {
        return -1;
    }
    return PyModule_AddType(module, st->AwaitableType);
}
