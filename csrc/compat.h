/* compat.h: the one place that knows which CPython version it is built for.
 *
 * The code is written against the newest API of the supported range (3.11, 3.12,
 * 3.13) and nothing deprecated in any of them; for the older versions this file
 * supplies the newer calls, built from public API that those versions have.
 * docs/ARCHITECTURE.md ("Python versions") lists every version-specific spot. */
#ifndef BRUNO_COMPAT_H
#define BRUNO_COMPAT_H

#ifndef PY_SSIZE_T_CLEAN
#define PY_SSIZE_T_CLEAN
#endif
#include <Python.h>
#include <stddef.h>  /* offsetof, for member tables */

#if PY_VERSION_HEX < 0x030B0000
#error "bruno_memory_c needs CPython 3.11 or newer"
#endif

#if PY_VERSION_HEX < 0x030C0000
/* 3.12 replaced the (type, value, traceback) triple by the exception instance. */
static inline PyObject *
PyErr_GetRaisedException(void)
{
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    if (type == NULL) {
        return NULL;
    }
    PyErr_NormalizeException(&type, &value, &tb);
    if (tb != NULL && value != NULL) {
        PyException_SetTraceback(value, tb);
    }
    Py_XDECREF(type);
    Py_XDECREF(tb);
    return value;
}

static inline void
PyErr_SetRaisedException(PyObject *exc)  /* steals exc; NULL clears */
{
    if (exc == NULL) {
        PyErr_Clear();
        return;
    }
    PyErr_Restore(Py_NewRef((PyObject *)Py_TYPE(exc)), exc, PyException_GetTraceback(exc));
}

/* 3.12 moved the member types into Python.h under these names (structmember.h's
 * spellings are deprecated there). */
#include <structmember.h>
#define Py_T_OBJECT_EX T_OBJECT_EX
#define Py_T_PYSSIZET T_PYSSIZET
#define Py_READONLY READONLY
#endif

#if PY_VERSION_HEX < 0x030D0000
/* 3.13 gave the fast-call function types public names. */
typedef _PyCFunctionFast PyCFunctionFast;
typedef _PyCFunctionFastWithKeywords PyCFunctionFastWithKeywords;

/* 3.13: an attribute that may be missing, without raising AttributeError. */
static inline int
PyObject_GetOptionalAttrString(PyObject *obj, const char *name, PyObject **result)
{
    *result = PyObject_GetAttrString(obj, name);
    if (*result != NULL) {
        return 1;
    }
    if (PyErr_ExceptionMatches(PyExc_AttributeError)) {
        PyErr_Clear();
        return 0;
    }
    return -1;
}

/* 3.13 deprecated PyWeakref_GetObject (a borrowed reference) for this. */
static inline int
PyWeakref_GetRef(PyObject *ref, PyObject **pobj)
{
    if (ref == NULL || !PyWeakref_Check(ref)) {
        *pobj = NULL;
        PyErr_SetString(PyExc_TypeError, "expected a weakref");
        return -1;
    }
    PyObject *obj = PyWeakref_GetObject(ref);
    if (obj == NULL) {
        *pobj = NULL;
        return -1;
    }
    if (obj == Py_None) {
        *pobj = NULL;
        return 0;
    }
    *pobj = Py_NewRef(obj);
    return 1;
}
#endif

#endif
