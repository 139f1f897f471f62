/* asyncmethod.c: the descriptor of every method that returns an awaitable.
 *
 * asyncio.iscoroutinefunction, inspect.iscoroutinefunction and unittest.mock
 * (AsyncMock(spec=RedisCache), create_autospec) decide whether a method is async by
 * looking for a marker on the object they find: on the class (3.11, 3.12), or, since
 * 3.13, in the class's own dict (inspect.getattr_static). A C method descriptor
 * cannot carry a marker, so the type dicts hold this descriptor instead: it answers
 * `_is_coroutine_marker` (inspect, 3.12+) and `_is_coroutine` (asyncio) with the
 * markers those modules compare against, and otherwise behaves as a method
 * descriptor (signature, name, doc, binding).
 *
 * Speed: its type has Py_TPFLAGS_METHOD_DESCRIPTOR, so `cache.get(k)` is still
 * specialised by the interpreter as a method call that makes no bound method, and
 * the call goes through vectorcall straight to the method's C function. */
#include "module.h"

#include <string.h>

typedef struct {
    PyObject_HEAD
    PyMethodDef *def;          /* borrowed: a static method table entry */
    PyTypeObject *cls;         /* owned: the class whose dict holds us */
    PyObject *qualname;        /* owned str: "RedisCache.get" */
    vectorcallfunc vectorcall;
    bruno_state *st;           /* borrowed */
} AsyncMethod;

/* The signature part of a CPython-style docstring, "name(sig)\n--\n\ndoc". */
static const char *
doc_body(const char *doc, const char **sig_end)
{
    const char *marker = doc ? strstr(doc, ")\n--\n\n") : NULL;
    if (marker == NULL || strchr(doc, '(') == NULL || strchr(doc, '(') > marker) {
        *sig_end = NULL;
        return doc;
    }
    *sig_end = marker + 1;
    return marker + 6;
}

/* The instance a call is made on (args[0]), or NULL with TypeError. */
static inline PyObject *
am_self(AsyncMethod *m, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs >= 1 && (Py_IS_TYPE(args[0], m->cls) || PyObject_TypeCheck(args[0], m->cls))) {
        return args[0];
    }
    if (nargs < 1) {
        PyErr_Format(PyExc_TypeError, "descriptor '%s' of '%s' object needs an argument",
                     m->def->ml_name, m->cls->tp_name);
    }
    else {
        PyErr_Format(PyExc_TypeError,
                     "descriptor '%s' for '%s' objects doesn't apply to a '%.100s' object",
                     m->def->ml_name, m->cls->tp_name, Py_TYPE(args[0])->tp_name);
    }
    return NULL;
}

static int
am_no_keywords(AsyncMethod *m, PyObject *kwnames)
{
    if (kwnames != NULL && PyTuple_GET_SIZE(kwnames) > 0) {
        PyErr_Format(PyExc_TypeError, "%U() takes no keyword arguments", m->qualname);
        return -1;
    }
    return 0;
}

/* One vectorcall entry per calling convention, chosen when the descriptor is made:
 * args[0] is the instance, the method's own arguments follow. */
static PyObject *
am_call_fastkw(PyObject *op, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    AsyncMethod *m = (AsyncMethod *)op;
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    PyObject *self = am_self(m, args, nargs);
    if (self == NULL) {
        return NULL;
    }
    return ((PyCFunctionFastWithKeywords)(void (*)(void))m->def->ml_meth)(
        self, args + 1, nargs - 1, kwnames);
}

static PyObject *
am_call_fast(PyObject *op, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    AsyncMethod *m = (AsyncMethod *)op;
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    PyObject *self = am_self(m, args, nargs);
    if (self == NULL || am_no_keywords(m, kwnames) < 0) {
        return NULL;
    }
    return ((PyCFunctionFast)(void (*)(void))m->def->ml_meth)(self, args + 1, nargs - 1);
}

static PyObject *
am_call_noargs(PyObject *op, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    AsyncMethod *m = (AsyncMethod *)op;
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    PyObject *self = am_self(m, args, nargs);
    if (self == NULL || am_no_keywords(m, kwnames) < 0) {
        return NULL;
    }
    if (nargs != 1) {
        PyErr_Format(PyExc_TypeError, "%U() takes no arguments (%zd given)", m->qualname,
                     nargs - 1);
        return NULL;
    }
    return m->def->ml_meth(self, NULL);
}

static PyObject *
am_descr_get(PyObject *op, PyObject *obj, PyObject *Py_UNUSED(type))
{
    if (obj == NULL || obj == Py_None) {
        return Py_NewRef(op);  /* read from the class */
    }
    return PyMethod_New(op, obj);
}

static PyObject *
am_get_name(PyObject *op, void *Py_UNUSED(closure))
{
    return PyUnicode_FromString(((AsyncMethod *)op)->def->ml_name);
}

static PyObject *
am_get_qualname(PyObject *op, void *Py_UNUSED(closure))
{
    return Py_NewRef(((AsyncMethod *)op)->qualname);
}

static PyObject *
am_get_objclass(PyObject *op, void *Py_UNUSED(closure))
{
    return Py_NewRef((PyObject *)((AsyncMethod *)op)->cls);
}

static PyObject *
am_get_doc(PyObject *op, void *Py_UNUSED(closure))
{
    const char *end;
    const char *body = doc_body(((AsyncMethod *)op)->def->ml_doc, &end);
    return body ? PyUnicode_FromString(body) : Py_NewRef(Py_None);
}

static PyObject *
am_get_text_signature(PyObject *op, void *Py_UNUSED(closure))
{
    const char *doc = ((AsyncMethod *)op)->def->ml_doc, *end;
    (void)doc_body(doc, &end);
    if (end == NULL) {
        Py_RETURN_NONE;
    }
    const char *start = strchr(doc, '(');
    return PyUnicode_FromStringAndSize(start, end - start);
}

/* The markers asyncio and inspect compare against; AttributeError where the running
 * Python has none (inspect's is 3.12+), as for an unmarked function. */
static PyObject *
am_marker(PyObject *marker, const char *name)
{
    if (marker == NULL) {
        PyErr_SetString(PyExc_AttributeError, name);
        return NULL;
    }
    return Py_NewRef(marker);
}

static PyObject *
am_get_inspect_marker(PyObject *op, void *Py_UNUSED(closure))
{
    return am_marker(((AsyncMethod *)op)->st->inspect_coro_marker, "_is_coroutine_marker");
}

static PyObject *
am_get_asyncio_marker(PyObject *op, void *Py_UNUSED(closure))
{
    return am_marker(((AsyncMethod *)op)->st->asyncio_coro_marker, "_is_coroutine");
}

static PyObject *
am_repr(PyObject *op)
{
    AsyncMethod *m = (AsyncMethod *)op;
    return PyUnicode_FromFormat("<async method '%s' of '%s' objects>", m->def->ml_name,
                                m->cls->tp_name);
}

static PyObject *
am_reduce(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    /* Pickled as the class attribute it is, like a method descriptor. */
    AsyncMethod *m = (AsyncMethod *)op;
    PyObject *builtins = PyImport_ImportModule("builtins");
    PyObject *getattr = builtins ? PyObject_GetAttrString(builtins, "getattr") : NULL;
    Py_XDECREF(builtins);
    return getattr ? Py_BuildValue("N(Os)", getattr, m->cls, m->def->ml_name) : NULL;
}

static int
am_traverse(PyObject *op, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(op));
    Py_VISIT(((AsyncMethod *)op)->cls);
    return 0;
}

static int
am_clear(PyObject *op)
{
    Py_CLEAR(((AsyncMethod *)op)->cls);
    return 0;
}

static void
am_dealloc(PyObject *op)
{
    PyTypeObject *tp = Py_TYPE(op);
    PyObject_GC_UnTrack(op);
    am_clear(op);
    Py_CLEAR(((AsyncMethod *)op)->qualname);
    PyObject_GC_Del(op);
    Py_DECREF(tp);
}

static PyGetSetDef am_getset[] = {
    {"__name__", am_get_name, NULL, NULL, NULL},
    {"__qualname__", am_get_qualname, NULL, NULL, NULL},
    {"__objclass__", am_get_objclass, NULL, NULL, NULL},
    {"__doc__", am_get_doc, NULL, NULL, NULL},
    {"__text_signature__", am_get_text_signature, NULL, NULL, NULL},
    {"_is_coroutine_marker", am_get_inspect_marker, NULL, NULL, NULL},
    {"_is_coroutine", am_get_asyncio_marker, NULL, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef am_methods[] = {
    {"__reduce__", am_reduce, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef am_members[] = {
    {"__vectorcalloffset__", Py_T_PYSSIZET, offsetof(AsyncMethod, vectorcall), Py_READONLY,
     NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyType_Slot am_slots[] = {
    /* No Py_tp_doc: an instance's __doc__ is its method's (the getter above). */
    {Py_tp_call, PyVectorcall_Call},
    {Py_tp_descr_get, am_descr_get},
    {Py_tp_getset, am_getset},
    {Py_tp_methods, am_methods},
    {Py_tp_members, am_members},
    {Py_tp_repr, am_repr},
    {Py_tp_traverse, am_traverse},
    {Py_tp_clear, am_clear},
    {Py_tp_dealloc, am_dealloc},
    {0, NULL},
};

static PyType_Spec am_spec = {
    .name = "bruno_memory_c._core.async_method",
    .basicsize = sizeof(AsyncMethod),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE |
             Py_TPFLAGS_DISALLOW_INSTANTIATION | Py_TPFLAGS_METHOD_DESCRIPTOR |
             Py_TPFLAGS_HAVE_VECTORCALL,
    .slots = am_slots,
};

int
bruno_asyncmethod_init(PyObject *module, bruno_state *st)
{
    st->AsyncMethodType = (PyTypeObject *)PyType_FromModuleAndSpec(module, &am_spec, NULL);
    if (st->AsyncMethodType == NULL) {
        return -1;
    }
    /* The markers, under their names in each version (inspect's is
     * `_is_coroutine_marker` in 3.12, `_is_coroutine_mark` from 3.13 on); a
     * missing one is left NULL. The first name found wins. */
    static const struct { const char *module, *attr; size_t off; } markers[] = {
        {"inspect", "_is_coroutine_mark", offsetof(bruno_state, inspect_coro_marker)},
        {"inspect", "_is_coroutine_marker", offsetof(bruno_state, inspect_coro_marker)},
        {"asyncio.coroutines", "_is_coroutine", offsetof(bruno_state, asyncio_coro_marker)},
    };
    for (size_t i = 0; i < sizeof markers / sizeof markers[0]; i++) {
        if (*(PyObject **)((char *)st + markers[i].off) != NULL) {
            continue;
        }
        PyObject *mod = PyImport_ImportModule(markers[i].module);
        if (mod == NULL) {
            return -1;
        }
        PyObject *v;
        int rc = PyObject_GetOptionalAttrString(mod, markers[i].attr, &v);
        Py_DECREF(mod);
        if (rc < 0) {
            return -1;
        }
        *(PyObject **)((char *)st + markers[i].off) = v;  /* owned or NULL */
    }
    return 0;
}

int
bruno_async_methods(bruno_state *st, PyTypeObject *cls, PyMethodDef *defs,
                    const char *const *names)
{
    PyObject *dict = cls->tp_dict;  /* a heap type's own dict */
    PyObject *clsname = PyType_GetQualName(cls);
    if (clsname == NULL) {
        return -1;
    }
    int rc = 0;
    for (PyMethodDef *d = defs; rc == 0 && d->ml_name != NULL; d++) {
        int wanted = 0;
        for (const char *const *n = names; *n != NULL; n++) {
            wanted |= strcmp(*n, d->ml_name) == 0;
        }
        if (!wanted) {
            continue;
        }
        int flags = d->ml_flags & ~METH_COEXIST;
        vectorcallfunc call = flags == (METH_FASTCALL | METH_KEYWORDS) ? am_call_fastkw
                            : flags == METH_FASTCALL ? am_call_fast
                            : flags == METH_NOARGS ? am_call_noargs : NULL;
        if (call == NULL) {
            PyErr_Format(PyExc_SystemError, "%s: unsupported calling convention", d->ml_name);
            rc = -1;
            break;
        }
        AsyncMethod *m = PyObject_GC_New(AsyncMethod, st->AsyncMethodType);
        if (m == NULL) {
            rc = -1;
            break;
        }
        m->def = d;
        m->cls = (PyTypeObject *)Py_NewRef((PyObject *)cls);
        m->vectorcall = call;
        m->st = st;
        m->qualname = PyUnicode_FromFormat("%U.%s", clsname, d->ml_name);
        PyObject_GC_Track(m);
        if (m->qualname == NULL || PyDict_SetItemString(dict, d->ml_name, (PyObject *)m) < 0) {
            rc = -1;
        }
        Py_DECREF(m);
    }
    Py_DECREF(clsname);
    PyType_Modified(cls);
    return rc;
}
