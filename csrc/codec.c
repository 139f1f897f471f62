/* codec.c: JSON through the stdlib's C accelerators (see codec.h). */
#include "codec.h"

#include <string.h>

int
bruno_codec_init(bruno_state *st)
{
    /* Same construction as json.JSONEncoder.iterencode(o, _one_shot=True) with
     * json.dumps' defaults; if the accelerators are missing, fall back. */
    PyObject *jenc = PyImport_ImportModule("json.encoder");
    PyObject *jdec = jenc ? PyImport_ImportModule("json.decoder") : NULL;
    if (jdec == NULL) {
        Py_XDECREF(jenc);
        return -1;
    }
    PyObject *make = PyObject_GetAttrString(jenc, "c_make_encoder");
    PyObject *esc = PyObject_GetAttrString(jenc, "c_encode_basestring_ascii");
    PyObject *cls = PyObject_GetAttrString(jenc, "JSONEncoder");
    PyObject *dec_cls = PyObject_GetAttrString(jdec, "JSONDecoder");
    PyObject *c_scanner = PyObject_GetAttrString(jdec, "c_scanstring");
    Py_DECREF(jenc);
    Py_DECREF(jdec);
    if (make == NULL || esc == NULL || cls == NULL || dec_cls == NULL || c_scanner == NULL) {
        goto done;
    }
    if (make != Py_None && esc != Py_None && c_scanner != Py_None) {
        PyObject *proto = PyObject_CallNoArgs(cls);
        PyObject *dflt = proto ? PyObject_GetAttrString(proto, "default") : NULL;
        Py_XDECREF(proto);
        st->json_markers = PyDict_New();
        if (dflt != NULL && st->json_markers != NULL) {
            st->json_encoder = PyObject_CallFunction(make, "OOOOssOOO", st->json_markers, dflt,
                                                     esc, Py_None, ": ", ", ", Py_False,
                                                     Py_False, Py_True);
        }
        Py_XDECREF(dflt);
        PyObject *decoder = PyObject_CallNoArgs(dec_cls);
        if (decoder != NULL) {
            st->json_scan_once = PyObject_GetAttrString(decoder, "scan_once");
            Py_DECREF(decoder);
        }
    }
    PyErr_Clear();  /* no accelerators: the fallbacks serve */
done:
    Py_XDECREF(make);
    Py_XDECREF(esc);
    Py_XDECREF(cls);
    Py_XDECREF(dec_cls);
    Py_XDECREF(c_scanner);
    return PyErr_Occurred() ? -1 : 0;
}

void
bruno_codec_clear(bruno_state *st)
{
    Py_CLEAR(st->json_encoder);
    Py_CLEAR(st->json_markers);
    Py_CLEAR(st->json_scan_once);
}

PyObject *
bruno_json_dumps(bruno_state *st, PyObject *value)
{
    /* The encoder's circular-reference markers are shared: a re-entrant call
     * (an object's hook encoding into the cache) takes the stdlib path. */
    if (st->json_encoder == NULL || PyDict_GET_SIZE(st->json_markers) != 0) {
        return PyObject_CallOneArg(st->json_dumps, value);
    }
    if (PyUnicode_Check(value)) {
        return PyObject_CallOneArg(st->json_dumps, value);  /* encode_basestring_ascii */
    }
    PyObject *zero = PyLong_FromLong(0);
    if (zero == NULL) {
        return NULL;
    }
    PyObject *chunks = PyObject_CallFunctionObjArgs(st->json_encoder, value, zero, NULL);
    Py_DECREF(zero);
    if (chunks == NULL) {
        PyDict_Clear(st->json_markers);  /* an error may leave markers behind */
        return NULL;
    }
    PyObject *empty = PyUnicode_New(0, 0);
    PyObject *text = empty ? PyUnicode_Join(empty, chunks) : NULL;
    Py_XDECREF(empty);
    Py_DECREF(chunks);
    return text;
}

static int
plain_start(unsigned char c)
{
    return c == '{' || c == '[' || c == '"' || c == '-' || (c >= '0' && c <= '9') ||
           c == 't' || c == 'f' || c == 'n' || c == 'N' || c == 'I';
}

PyObject *
bruno_json_loads(bruno_state *st, const char *data, size_t len)
{
    /* Fast path: UTF-8 text starting with a value (no BOM, no UTF-16/32, no
     * leading space) that the scanner consumes entirely. */
    if (st->json_scan_once != NULL && len > 0 && plain_start((unsigned char)data[0]) &&
        (len < 4 || memchr(data, 0, 4) == NULL)) {
        PyObject *text = PyUnicode_DecodeUTF8(data, (Py_ssize_t)len, "surrogatepass");
        if (text != NULL) {
            PyObject *pair = PyObject_CallFunction(st->json_scan_once, "On", text, (Py_ssize_t)0);
            Py_ssize_t n = PyUnicode_GET_LENGTH(text);
            Py_DECREF(text);
            if (pair != NULL && PyTuple_Check(pair) && PyTuple_GET_SIZE(pair) == 2 &&
                PyLong_Check(PyTuple_GET_ITEM(pair, 1)) &&
                PyLong_AsSsize_t(PyTuple_GET_ITEM(pair, 1)) == n) {
                PyObject *value = Py_NewRef(PyTuple_GET_ITEM(pair, 0));
                Py_DECREF(pair);
                return value;
            }
            Py_XDECREF(pair);
        }
        PyErr_Clear();  /* trailing data, an error: json.loads decides */
    }
    PyObject *bytes = PyBytes_FromStringAndSize(data, (Py_ssize_t)len);
    if (bytes == NULL) {
        return NULL;
    }
    PyObject *value = PyObject_CallOneArg(st->json_loads, bytes);
    Py_DECREF(bytes);
    return value;
}
