/* rc_sentinel.c: RedisCache's Sentinel options (sentinels=, service_name=,
 * sentinel_username=, sentinel_password=) into the I/O layer's bio_sentinels (io.h).
 * See rc_internal.h. */
#include "rc_internal.h"

#include <string.h>

/* Sentinels one cache may name (each is asked in turn). */
#define MAX_SENTINELS 64

/* A str option without NUL inside: its UTF-8 (borrowed from v) and length. */
static int
text(PyObject *v, const char *what, const char **out, Py_ssize_t *len)
{
    if (!PyUnicode_Check(v)) {
        PyErr_Format(PyExc_TypeError, "%s must be a str, not %.100s", what,
                     Py_TYPE(v)->tp_name);
        return -1;
    }
    return rc_utf8_option(v, what, out, len);
}

/* One address: a (host, port) pair (`each` names it: "sentinel", "startup node"). Its
 * normalised tuple (new reference). */
static PyObject *
one_address(PyObject *item, const char *each)
{
    if (PyUnicode_Check(item) || PyBytes_Check(item) || !PySequence_Check(item)) {
        PyErr_Format(PyExc_TypeError, "each %s must be a (host, port) pair, not %.100s", each,
                     Py_TYPE(item)->tp_name);
        return NULL;
    }
    PyObject *pair = PySequence_Tuple(item);
    if (pair == NULL) {
        return NULL;
    }
    if (PyTuple_GET_SIZE(pair) != 2) {
        PyErr_Format(PyExc_ValueError, "each %s must be a (host, port) pair, not %zd items",
                     each, PyTuple_GET_SIZE(pair));
        Py_DECREF(pair);
        return NULL;
    }
    PyObject *host = PyTuple_GET_ITEM(pair, 0), *port = PyTuple_GET_ITEM(pair, 1);
    const char *h;
    Py_ssize_t n;
    char what[48];
    snprintf(what, sizeof what, "a %s's host", each);
    if (text(host, what, &h, &n) < 0) {
        Py_DECREF(pair);
        return NULL;
    }
    if (n == 0 || n > 255) {
        PyErr_Format(PyExc_ValueError, "a %s's host must be 1 to 255 characters", each);
        Py_DECREF(pair);
        return NULL;
    }
    if (!PyLong_Check(port) || PyBool_Check(port)) {
        PyErr_Format(PyExc_TypeError, "a %s's port must be an int, not %.100s", each,
                     Py_TYPE(port)->tp_name);
        Py_DECREF(pair);
        return NULL;
    }
    long p = PyLong_AsLong(port);
    if ((p == -1 && PyErr_Occurred()) || p < 1 || p > 65535) {
        PyErr_Clear();
        PyErr_Format(PyExc_ValueError, "a %s's port must be between 1 and 65535", each);
        Py_DECREF(pair);
        return NULL;
    }
    return pair;
}

PyObject *
rc_address_list(PyObject *v, const char *option, const char *each, int max)
{
    if (PyUnicode_Check(v) || PyBytes_Check(v) || PyDict_Check(v)) {
        PyErr_Format(PyExc_TypeError, "%s must be a list of (host, port) pairs, not %.100s",
                     option, Py_TYPE(v)->tp_name);
        return NULL;
    }
    char msg[80];
    snprintf(msg, sizeof msg, "%s must be a list of (host, port) pairs", option);
    PyObject *fast = PySequence_Fast(v, msg);
    if (fast == NULL) {
        return NULL;
    }
    /* A tuple of our own: reading a pair may run Python code (its __iter__, __len__)
     * that changes the caller's list under us. */
    PyObject *seq = PySequence_Tuple(fast);
    Py_DECREF(fast);
    if (seq == NULL) {
        return NULL;
    }
    Py_ssize_t n = PyTuple_GET_SIZE(seq);
    if (n < 1 || n > max) {
        PyErr_Format(PyExc_ValueError, "%s must name 1 to %d %ss", option, max, each);
        Py_DECREF(seq);
        return NULL;
    }
    PyObject *pairs = PyTuple_New(n);
    for (Py_ssize_t i = 0; pairs != NULL && i < n; i++) {
        PyObject *pair = one_address(PyTuple_GET_ITEM(seq, i), each);
        if (pair == NULL) {
            Py_CLEAR(pairs);
            break;
        }
        PyTuple_SET_ITEM(pairs, i, pair);
    }
    Py_DECREF(seq);
    return pairs;
}

int
rc_sentinel_options(PyObject *const opt[RC_SN_NOPTS], int has_address, PyObject **list,
                    bio_sentinels **out)
{
    *list = NULL;
    *out = NULL;
    PyObject *sentinels = opt[RC_SN_SENTINELS], *service = opt[RC_SN_SERVICE],
             *user = opt[RC_SN_USERNAME], *password = opt[RC_SN_PASSWORD];
    int on = sentinels != NULL && sentinels != Py_None;
    int has_service = service != NULL && service != Py_None;
    const char *u = NULL, *pw = NULL, *svc = NULL;
    Py_ssize_t ulen = 0, pwlen = 0, svclen = 0;
    if ((user != NULL && user != Py_None && text(user, "sentinel_username", &u, &ulen) < 0) ||
        (password != NULL && password != Py_None &&
         text(password, "sentinel_password", &pw, &pwlen) < 0) ||
        (has_service && text(service, "service_name", &svc, &svclen) < 0)) {
        return -1;
    }
    if (!on) {
        if (has_service || u != NULL || pw != NULL) {
            PyErr_SetString(PyExc_ValueError, has_service
                            ? "service_name needs sentinels=[(host, port), ...]"
                            : "sentinel_username/sentinel_password need sentinels=[...]");
            return -1;
        }
        return 0;
    }
    if (has_address) {
        PyErr_SetString(PyExc_ValueError, "sentinels name the server: give either "
                        "sentinels or host/port/unix_socket_path, not both");
        return -1;
    }
    if (!has_service || svclen == 0) {
        PyErr_SetString(PyExc_ValueError, "sentinels need service_name (the name the "
                        "sentinels monitor, e.g. 'mymaster')");
        return -1;
    }
    PyObject *pairs = rc_address_list(sentinels, "sentinels", "sentinel", MAX_SENTINELS);
    if (pairs == NULL) {
        return -1;
    }
    Py_ssize_t n = PyTuple_GET_SIZE(pairs);
    const char *hosts[MAX_SENTINELS];
    int ports[MAX_SENTINELS];
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *pair = PyTuple_GET_ITEM(pairs, i);
        hosts[i] = PyUnicode_AsUTF8(PyTuple_GET_ITEM(pair, 0));  /* checked */
        ports[i] = (int)PyLong_AsLong(PyTuple_GET_ITEM(pair, 1));
    }
    *out = bio_sentinels_new((int)n, hosts, ports, svc, u, (size_t)ulen, pw, (size_t)pwlen);
    if (*out == NULL) {
        Py_DECREF(pairs);
        PyErr_NoMemory();
        return -1;
    }
    *list = pairs;
    return 0;
}
