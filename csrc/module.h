/* module.h: per-module state shared by every type of bruno_memory_c._core. */
#ifndef BRUNO_MODULE_H
#define BRUNO_MODULE_H

#include "compat.h"

#define BRUNO_AW_FREELIST 256

typedef struct {
    PyTypeObject *AwaitableType;      /* owned */
    PyTypeObject *AsyncMethodType;    /* owned: descriptor of the async methods */
    PyTypeObject *StopIterationType;  /* owned: StopIteration carrying a ready result */
    PyObject *inspect_coro_marker;    /* owned or NULL: inspect._is_coroutine_mark */
    PyObject *asyncio_coro_marker;    /* owned or NULL: asyncio.coroutines._is_coroutine */
    PyTypeObject *InMemoryCacheType;  /* owned */
    PyTypeObject *RedisCacheType;     /* owned */
    PyTypeObject *MultiLevelCacheType; /* owned */
    PyObject *ml_helpers;             /* owned or NULL: bruno_memory_c._multilevel, once used */
    PyTypeObject *LoopBridgeType;     /* owned */
    PyObject *CacheError;             /* owned: exception class */
    PyObject *bridges;                /* owned dict: id(loop) -> LoopBridge */
    PyObject *retired_bridges;        /* owned list: bridges of dead loops, draining */
    PyObject *json_dumps;             /* owned: json.dumps */
    PyObject *json_loads;             /* owned: json.loads */
    PyObject *json_encoder;           /* owned or NULL: _json encoder, json.dumps' settings */
    PyObject *json_markers;           /* owned or NULL: its circular-reference dict */
    PyObject *json_scan_once;         /* owned or NULL: _json scanner of a JSONDecoder */
    PyObject *logger;                 /* owned: logging.getLogger("bruno_memory_c") */
    PyObject *get_running_loop;       /* owned: asyncio.get_running_loop */
    PyObject *str_call_later;         /* owned: interned "call_later" */
    PyObject *str_is_closed;          /* owned: interned "is_closed" */
    PyObject *str_items;              /* owned: interned "items" */
    PyObject *str_localhost;          /* owned: "localhost" */
    PyObject *str_default_prefix;     /* owned: "bruno:cache:" */
    PyObject *int_3600;               /* owned: 3600 */
    PyObject *str_set_result;         /* owned: interned "set_result" */
    PyObject *str_create_future;      /* owned: interned "create_future" */
    PyObject *str_future_blocking;    /* owned: interned "_asyncio_future_blocking" */
    PyObject *InvalidStateError;      /* owned: asyncio.InvalidStateError */
    PyObject *FutureType;             /* owned: asyncio.Future */
    PyObject *base_create_future;     /* owned: asyncio.BaseEventLoop.create_future */
    PyObject *kwnames_loop;           /* owned: ("loop",) */
    PyObject *str_running_loop_key;   /* owned: "__asyncio_running_event_loop__" */
} bruno_state;

extern PyModuleDef bruno_module_def;

/* Module state from a type created by this module (or a subclass of one). */
static inline bruno_state *
bruno_state_from_type(PyTypeObject *tp)
{
    PyObject *mod = PyType_GetModuleByDef(tp, &bruno_module_def);
    return mod ? (bruno_state *)PyModule_GetState(mod) : NULL;
}

/* Log `fmt` % (arg, detail) (or % detail when arg is NULL) at ERROR on the module's
 * logger ("bruno_memory_c"), keeping the exception being raised, if any. The one
 * logging helper of the C code: a failure of logging itself is dropped. */
void bruno_log_error(bruno_state *st, const char *fmt, PyObject *arg, PyObject *detail);

/* Argument parsing for METH_FASTCALL | METH_KEYWORDS functions.
 * names: NULL-terminated parameter names; the first `required` are mandatory.
 * out: receives borrowed references (NULL for an omitted optional argument).
 * Returns 0, or -1 with TypeError set. */
int bruno_parse_args(const char *fname, PyObject *const *args, Py_ssize_t nargs,
                     PyObject *kwnames, const char *const *names, int required,
                     PyObject **out);

/* One argument of a METH_FASTCALL | METH_KEYWORDS method, positional or by keyword
 * (as the reference's methods take it), into a local `key`. */
#define ONE_ARG(fname, argname)                                                  \
    PyObject *key;                                                               \
    if (kwnames == NULL && nargs == 1) {                                         \
        key = args[0];                                                           \
    }                                                                            \
    else {                                                                       \
        static const char *const names[] = {argname, NULL};                      \
        if (bruno_parse_args(fname, args, nargs, kwnames, names, 1, &key) < 0) { \
            return NULL;                                                         \
        }                                                                        \
    }

/* The (key, value) pairs of a mapping (a dict, or anything with .items()) as a new
 * flat tuple (k0, v0, k1, v1, ...): a snapshot that code run later cannot change.
 * NULL with TypeError for a non-mapping or items that are not pairs. */
PyObject *bruno_mapping_flat(bruno_state *st, PyObject *mapping);

/* The keys of get_many(keys) as a new tuple (a snapshot), or NULL with TypeError
 * naming the argument's type when it is not iterable. */
PyObject *bruno_keys_tuple(PyObject *keys);

/* A number of seconds (int, float, or anything with __float__/__index__, not str):
 * >= 0 and not NaN; an int too large for a double is infinite. `what` names the
 * argument in messages. Returns 0, or -1 with TypeError/ValueError. */
int bruno_seconds(PyObject *v, const char *what, double *out);

/* Put an async-method descriptor (asyncmethod.c) in cls's dict for each entry of
 * defs (its method table) named in names (NULL-terminated): introspection then sees
 * a coroutine function. 0, or -1 with an exception. */
int bruno_async_methods(bruno_state *st, PyTypeObject *cls, PyMethodDef *defs,
                        const char *const *names);

/* The methods of the cache types that return an awaitable (the reference's
 * `async def` methods), for bruno_async_methods. */
extern const char *const bruno_async_method_names[];

/* Type registration hooks, one per file. Each returns 0 or -1 with an exception. */
int bruno_asyncmethod_init(PyObject *module, bruno_state *st);
int bruno_awaitable_init(PyObject *module, bruno_state *st);
int bruno_inmemory_init(PyObject *module, bruno_state *st);
void bruno_awaitable_fini(bruno_state *st);
int bruno_bridge_init(PyObject *module, bruno_state *st);
int bruno_redis_init(PyObject *module, bruno_state *st);
int bruno_multilevel_init(PyObject *module, bruno_state *st);

#endif
