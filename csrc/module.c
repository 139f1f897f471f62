/* module.c: module init (multi-phase, per-module state), CacheError, argument
 * parsing shared by the types. Kept thin: each type lives in its own file. */
#include "module.h"
#include "lru.h"
#include "codec.h"

#include <math.h>
#include <string.h>

int
bruno_seconds(PyObject *ttl, const char *what, double *out)
{
    double v;
    if (PyFloat_CheckExact(ttl)) {
        v = PyFloat_AS_DOUBLE(ttl);
    }
    else if (PyLong_Check(ttl)) {
        v = PyLong_AsDouble(ttl);
        if (v == -1.0 && PyErr_Occurred()) {
            if (!PyErr_ExceptionMatches(PyExc_OverflowError)) {
                return -1;
            }
            /* Too large for a double: only its sign matters (an int's layout is
             * not ours to read; it changed in 3.12). */
            PyErr_Clear();
            int overflow;
            (void)PyLong_AsLongLongAndOverflow(ttl, &overflow);
            v = overflow < 0 ? -INFINITY : INFINITY;
        }
    }
    else if (PyFloat_Check(ttl) ||
             (Py_TYPE(ttl)->tp_as_number != NULL &&
              (Py_TYPE(ttl)->tp_as_number->nb_float != NULL ||
               Py_TYPE(ttl)->tp_as_number->nb_index != NULL) &&
              !PyUnicode_Check(ttl))) {
        v = PyFloat_AsDouble(ttl);
        if (v == -1.0 && PyErr_Occurred()) {
            return -1;
        }
    }
    else {
        PyErr_Format(PyExc_TypeError, "%s must be a number or None, not %.100s",
                     what, Py_TYPE(ttl)->tp_name);
        return -1;
    }
    if (isnan(v)) {
        PyErr_Format(PyExc_ValueError, "%s must not be NaN", what);
        return -1;
    }
    if (v < 0) {
        PyErr_Format(PyExc_ValueError, "%s must be >= 0", what);
        return -1;
    }
    *out = v;
    return 0;
}

PyObject *
bruno_keys_tuple(PyObject *keys)
{
    if (PyTuple_CheckExact(keys)) {
        return Py_NewRef(keys);
    }
    if (Py_TYPE(keys)->tp_iter == NULL && !PySequence_Check(keys)) {
        /* Not iterable at all: say what was expected. (An iterable whose iteration
         * raises, TypeError included, raises that, as the reference lets it.) */
        PyErr_Format(PyExc_TypeError, "get_many() expects an iterable of keys, not %.100s",
                     Py_TYPE(keys)->tp_name);
        return NULL;
    }
    return PySequence_Tuple(keys);
}

PyObject *
bruno_mapping_flat(bruno_state *st, PyObject *mapping)
{
    PyObject *snap;
    if (PyDict_CheckExact(mapping)) {
        Py_ssize_t pos = 0, i = 0;
        PyObject *k, *v;
        snap = PyTuple_New(2 * PyDict_GET_SIZE(mapping));
        if (snap == NULL) {
            return NULL;
        }
        while (PyDict_Next(mapping, &pos, &k, &v)) {  /* runs no Python code */
            PyTuple_SET_ITEM(snap, i++, Py_NewRef(k));
            PyTuple_SET_ITEM(snap, i++, Py_NewRef(v));
        }
        return snap;
    }
    PyObject *items = PyObject_GetAttr(mapping, st->str_items);
    if (items == NULL) {
        if (PyErr_ExceptionMatches(PyExc_AttributeError)) {
            PyErr_Format(PyExc_TypeError, "set_many() expects a mapping, not %.100s",
                         Py_TYPE(mapping)->tp_name);
        }
        return NULL;
    }
    PyObject *view = PyObject_CallNoArgs(items);
    Py_DECREF(items);
    PyObject *list = view ? PySequence_List(view) : NULL;
    Py_XDECREF(view);
    if (list == NULL) {
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(list);
    snap = PyTuple_New(2 * n);
    for (Py_ssize_t i = 0; snap != NULL && i < n; i++) {
        PyObject *pair = PyList_GET_ITEM(list, i);
        if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2) {
            PyErr_SetString(PyExc_TypeError, "set_many() mapping items must be (key, value) pairs");
            Py_CLEAR(snap);
            break;
        }
        PyTuple_SET_ITEM(snap, 2 * i, Py_NewRef(PyTuple_GET_ITEM(pair, 0)));
        PyTuple_SET_ITEM(snap, 2 * i + 1, Py_NewRef(PyTuple_GET_ITEM(pair, 1)));
    }
    Py_DECREF(list);
    return snap;
}

void
bruno_log_error(bruno_state *st, const char *fmt, PyObject *arg, PyObject *detail)
{
    PyObject *saved = PyErr_GetRaisedException();
    PyObject *r = arg != NULL
        ? PyObject_CallMethod(st->logger, "error", "sOO", fmt, arg, detail)
        : PyObject_CallMethod(st->logger, "error", "sO", fmt, detail);
    if (r == NULL) {
        PyErr_Clear();
    }
    Py_XDECREF(r);
    PyErr_SetRaisedException(saved);
}

int
bruno_parse_args(const char *fname, PyObject *const *args, Py_ssize_t nargs,
                 PyObject *kwnames, const char *const *names, int required,
                 PyObject **out)
{
    int total = 0;
    while (names[total] != NULL) {
        total++;
    }
    if (nargs > total) {
        PyErr_Format(PyExc_TypeError, "%s() takes at most %d arguments (%zd given)",
                     fname, total, nargs);
        return -1;
    }
    for (int i = 0; i < total; i++) {
        out[i] = i < nargs ? args[i] : NULL;
    }
    if (kwnames != NULL) {
        Py_ssize_t nkw = PyTuple_GET_SIZE(kwnames);
        for (Py_ssize_t k = 0; k < nkw; k++) {
            PyObject *name = PyTuple_GET_ITEM(kwnames, k);
            int found = -1;
            for (int i = 0; i < total; i++) {
                if (PyUnicode_CompareWithASCIIString(name, names[i]) == 0) {
                    found = i;
                    break;
                }
            }
            if (found < 0) {
                PyErr_Format(PyExc_TypeError, "%s() got an unexpected keyword argument '%U'",
                             fname, name);
                return -1;
            }
            if (out[found] != NULL) {
                PyErr_Format(PyExc_TypeError, "%s() got multiple values for argument '%s'",
                             fname, names[found]);
                return -1;
            }
            out[found] = args[nargs + k];
        }
    }
    for (int i = 0; i < required; i++) {
        if (out[i] == NULL) {
            PyErr_Format(PyExc_TypeError, "%s() missing required argument '%s'",
                         fname, names[i]);
            return -1;
        }
    }
    return 0;
}

const char *const bruno_async_method_names[] = {
    "get", "set", "delete", "exists", "clear", "get_many", "set_many", "get_stats",
    "start", "stop", "connect", "disconnect", "__aenter__", "__aexit__", NULL,
};

/* The class the caches raise: CacheError, or after install() a subclass of it that
 * also derives from bruno_memory.exceptions.CacheError. */
static PyObject *
get_cache_error(PyObject *module, PyObject *Py_UNUSED(ignored))
{
    return Py_NewRef(((bruno_state *)PyModule_GetState(module))->CacheError);
}

static PyObject *
set_cache_error(PyObject *module, PyObject *cls)
{
    bruno_state *st = PyModule_GetState(module);
    if (!PyType_Check(cls) || !PyType_IsSubtype((PyTypeObject *)cls,
                                                (PyTypeObject *)st->CacheError)) {
        PyErr_SetString(PyExc_TypeError, "_set_cache_error: not a subclass of CacheError");
        return NULL;
    }
    Py_SETREF(st->CacheError, Py_NewRef(cls));
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"_get_cache_error", get_cache_error, METH_NOARGS,
     "_get_cache_error()\n--\n\nInternal: the exception class the caches raise."},
    {"_set_cache_error", set_cache_error, METH_O,
     "_set_cache_error(cls, /)\n--\n\nInternal: raise cls (a CacheError subclass) instead."},
    {NULL, NULL, 0, NULL},
};

/* *out = module.attr (new reference). 0 or -1. */
static int
import_attr(const char *module, const char *attr, PyObject **out)
{
    PyObject *m = PyImport_ImportModule(module);
    if (m == NULL) {
        return -1;
    }
    *out = PyObject_GetAttrString(m, attr);
    Py_DECREF(m);
    return *out ? 0 : -1;
}

static int
module_exec(PyObject *module)
{
    bruno_state *st = PyModule_GetState(module);
    st->CacheError = PyErr_NewExceptionWithDoc(
        "bruno_memory_c._core.CacheError",
        "Raised when a cache operation fails (Redis unreachable, a value JSON\n"
        "cannot encode, ...).", NULL, NULL);
    if (st->CacheError == NULL || PyModule_AddObjectRef(module, "CacheError", st->CacheError) < 0) {
        return -1;
    }
    PyObject *asyncio = PyImport_ImportModule("asyncio");
    if (asyncio == NULL) {
        return -1;
    }
    st->get_running_loop = PyObject_GetAttrString(asyncio, "get_running_loop");
    Py_DECREF(asyncio);
    if (st->get_running_loop == NULL) {
        return -1;
    }
    if ((st->str_call_later = PyUnicode_InternFromString("call_later")) == NULL ||
        (st->str_is_closed = PyUnicode_InternFromString("is_closed")) == NULL ||
        (st->str_items = PyUnicode_InternFromString("items")) == NULL) {
        return -1;
    }
    if ((st->str_localhost = PyUnicode_InternFromString("localhost")) == NULL ||
        (st->str_default_prefix = PyUnicode_InternFromString("bruno:cache:")) == NULL ||
        (st->int_3600 = PyLong_FromLong(3600)) == NULL ||
        (st->str_set_result = PyUnicode_InternFromString("set_result")) == NULL ||
        (st->str_create_future = PyUnicode_InternFromString("create_future")) == NULL ||
        (st->str_future_blocking =
             PyUnicode_InternFromString("_asyncio_future_blocking")) == NULL) {
        return -1;
    }
    if (import_attr("asyncio", "Future", &st->FutureType) < 0 ||
        import_attr("asyncio.base_events", "BaseEventLoop", &st->base_create_future) < 0 ||
        (st->kwnames_loop = Py_BuildValue("(s)", "loop")) == NULL ||
        (st->str_running_loop_key =
             PyUnicode_InternFromString("__asyncio_running_event_loop__")) == NULL) {
        return -1;
    }
    Py_SETREF(st->base_create_future,
              PyObject_GetAttrString(st->base_create_future, "create_future"));
    if (st->base_create_future == NULL) {
        return -1;
    }
    if (import_attr("asyncio", "InvalidStateError", &st->InvalidStateError) < 0 ||
        import_attr("json", "dumps", &st->json_dumps) < 0 ||
        import_attr("json", "loads", &st->json_loads) < 0) {
        return -1;
    }
    if (bruno_codec_init(st) < 0) {
        return -1;
    }
    PyObject *logging = PyImport_ImportModule("logging");
    if (logging == NULL) {
        return -1;
    }
    st->logger = PyObject_CallMethod(logging, "getLogger", "s", "bruno_memory_c");
    Py_DECREF(logging);
    if (st->logger == NULL) {
        return -1;
    }
    if (bruno_asyncmethod_init(module, st) < 0 ||
        bruno_awaitable_init(module, st) < 0 || bruno_inmemory_init(module, st) < 0 ||
        bruno_bridge_init(module, st) < 0 || bruno_redis_init(module, st) < 0 ||
        bruno_multilevel_init(module, st) < 0) {
        return -1;
    }
    return 0;
}

static int
module_traverse(PyObject *module, visitproc visit, void *arg)
{
    bruno_state *st = PyModule_GetState(module);
    Py_VISIT(st->AwaitableType);
    Py_VISIT(st->AsyncMethodType);
    Py_VISIT(st->StopIterationType);
    Py_VISIT(st->inspect_coro_marker);
    Py_VISIT(st->asyncio_coro_marker);
    Py_VISIT(st->InMemoryCacheType);
    Py_VISIT(st->CacheError);
    Py_VISIT(st->get_running_loop);
    Py_VISIT(st->RedisCacheType);
    Py_VISIT(st->MultiLevelCacheType);
    Py_VISIT(st->ml_helpers);
    Py_VISIT(st->LoopBridgeType);
    Py_VISIT(st->bridges);
    Py_VISIT(st->retired_bridges);
    Py_VISIT(st->json_dumps);
    Py_VISIT(st->json_loads);
    Py_VISIT(st->logger);
    Py_VISIT(st->json_encoder);
    Py_VISIT(st->json_markers);
    Py_VISIT(st->json_scan_once);
    return 0;
}

static int
module_clear(PyObject *module)
{
    bruno_state *st = PyModule_GetState(module);
    Py_CLEAR(st->AwaitableType);
    Py_CLEAR(st->AsyncMethodType);
    Py_CLEAR(st->StopIterationType);
    Py_CLEAR(st->inspect_coro_marker);
    Py_CLEAR(st->asyncio_coro_marker);
    Py_CLEAR(st->InMemoryCacheType);
    Py_CLEAR(st->CacheError);
    Py_CLEAR(st->get_running_loop);
    Py_CLEAR(st->str_call_later);
    Py_CLEAR(st->str_is_closed);
    Py_CLEAR(st->str_items);
    Py_CLEAR(st->str_localhost);
    Py_CLEAR(st->str_default_prefix);
    Py_CLEAR(st->int_3600);
    Py_CLEAR(st->RedisCacheType);
    Py_CLEAR(st->MultiLevelCacheType);
    Py_CLEAR(st->ml_helpers);
    Py_CLEAR(st->LoopBridgeType);
    Py_CLEAR(st->bridges);
    Py_CLEAR(st->retired_bridges);
    Py_CLEAR(st->json_dumps);
    Py_CLEAR(st->json_loads);
    Py_CLEAR(st->logger);
    Py_CLEAR(st->str_set_result);
    Py_CLEAR(st->str_create_future);
    Py_CLEAR(st->str_future_blocking);
    Py_CLEAR(st->InvalidStateError);
    Py_CLEAR(st->FutureType);
    Py_CLEAR(st->base_create_future);
    Py_CLEAR(st->kwnames_loop);
    Py_CLEAR(st->str_running_loop_key);
    bruno_codec_clear(st);
    bruno_awaitable_fini(st);
    return 0;
}

static void
module_free(void *module)
{
    module_clear((PyObject *)module);
}

static PyModuleDef_Slot module_slots[] = {
    {Py_mod_exec, module_exec},
    {0, NULL},
};

PyModuleDef bruno_module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "bruno_memory_c._core",
    .m_doc = "C core of bruno_memory_c: the cache types and their awaitable.",
    .m_size = sizeof(bruno_state),
    .m_slots = module_slots,
    .m_methods = module_methods,
    .m_traverse = module_traverse,
    .m_clear = module_clear,
    .m_free = module_free,
};

PyMODINIT_FUNC
PyInit__core(void)
{
    lru_clock_init();
    return PyModuleDef_Init(&bruno_module_def);
}
