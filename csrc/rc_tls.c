/* rc_tls.c: RedisCache's TLS options (redis-py's names) into a TLS context of the
 * I/O layer (io.h: bio_tls_new, which reads the files at once). See rc_internal.h. */
#include "rc_internal.h"

#include <string.h>

/* A str option (None: NULL) as UTF-8 without NUL inside; *out borrowed from v. */
static int
opt_text(PyObject *v, const char *what, const char **out)
{
    *out = NULL;
    if (v == NULL || v == Py_None) {
        return 0;
    }
    if (PyBytes_Check(v) && strcmp(what, "ssl_password") == 0) {
        *out = PyBytes_AS_STRING(v);
        return 0;
    }
    if (!PyUnicode_Check(v)) {
        PyErr_Format(PyExc_TypeError, "%s must be a str or None, not %.100s", what,
                     Py_TYPE(v)->tp_name);
        return -1;
    }
    return rc_utf8_option(v, what, out, NULL);
}

/* ValueError("<what>, not <repr of v>"); -1. A repr that fails or cannot be UTF-8
 * encoded (a lone surrogate) is left out rather than formatted. */
static int
bad_value(PyObject *v, const char *what)
{
    PyObject *r = PyObject_Repr(v);
    const char *text = r != NULL ? PyUnicode_AsUTF8(r) : NULL;
    if (text == NULL) {
        PyErr_Clear();
        text = "that";
    }
    PyErr_Format(PyExc_ValueError, "%s, not %.100s", what, text);
    Py_XDECREF(r);
    return -1;
}

/* ssl_cert_reqs: "none" / "optional" / "required" (any case), or ssl.CERT_NONE (0),
 * CERT_OPTIONAL (1), CERT_REQUIRED (2). A client that gets no certificate from the
 * server fails either way, so "optional" verifies as "required" does (as in
 * Python's ssl module). */
static int
cert_reqs(PyObject *v, int *verify)
{
    *verify = BIO_TLS_VERIFY_REQUIRED;
    if (v == NULL || v == Py_None) {
        return 0;
    }
    if (PyUnicode_Check(v)) {
        const char *s = PyUnicode_AsUTF8(v);
        if (s == NULL) {
            return -1;
        }
        if (strcasecmp(s, "none") == 0) {
            *verify = BIO_TLS_VERIFY_NONE;
            return 0;
        }
        if (strcasecmp(s, "optional") == 0 || strcasecmp(s, "required") == 0) {
            return 0;
        }
    }
    else if (PyLong_Check(v) && !PyBool_Check(v)) {  /* ssl.VerifyMode is an int */
        long n = PyLong_AsLong(v);
        if (n == -1 && PyErr_Occurred()) {
            PyErr_Clear();
        }
        else if (n >= 0 && n <= 2) {
            *verify = n == 0 ? BIO_TLS_VERIFY_NONE : BIO_TLS_VERIFY_REQUIRED;
            return 0;
        }
    }
    return bad_value(v, "ssl_cert_reqs must be 'none', 'optional' or 'required' "
                        "(or ssl.CERT_NONE/CERT_OPTIONAL/CERT_REQUIRED)");
}

/* ssl_min_version: None (TLS 1.2), an ssl.TLSVersion (an int: 0x301 ... 0x304), or
 * "TLSv1" / "TLSv1.1" / "TLSv1.2" / "TLSv1.3" ("TLSv1_2" too). */
static int
min_version(PyObject *v, int *out)
{
    static const struct {
        const char *name;
        int version;
    } names[] = {{"TLSv1", 0x301}, {"TLSv1.0", 0x301}, {"TLSv1_0", 0x301},
                 {"TLSv1.1", 0x302}, {"TLSv1_1", 0x302}, {"TLSv1.2", 0x303},
                 {"TLSv1_2", 0x303}, {"TLSv1.3", 0x304}, {"TLSv1_3", 0x304}};
    *out = 0;
    if (v == NULL || v == Py_None) {
        return 0;
    }
    if (PyUnicode_Check(v)) {
        const char *s = PyUnicode_AsUTF8(v);
        if (s == NULL) {
            return -1;
        }
        for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
            if (strcasecmp(s, names[i].name) == 0) {
                *out = names[i].version;
                return 0;
            }
        }
    }
    else if (PyLong_Check(v) && !PyBool_Check(v)) {
        long n = PyLong_AsLong(v);
        if (n == -1 && PyErr_Occurred()) {
            PyErr_Clear();
        }
        else if (n >= 0x301 && n <= 0x304) {
            *out = (int)n;
            return 0;
        }
    }
    return bad_value(v, "ssl_min_version must be None, an ssl.TLSVersion from TLSv1 to "
                        "TLSv1_3, or a name such as 'TLSv1.2'");
}

int
rc_tls_options(PyObject *const opt[RC_TLS_NOPTS], int unix_socket, int for_sentinels,
               bio_tls **out, bio_tls **sentinel_out)
{
    *out = NULL;
    *sentinel_out = NULL;
    PyObject *ssl = opt[RC_TLS_SSL];
    int on = 0;
    if (ssl != NULL && ssl != Py_None && (on = PyObject_IsTrue(ssl)) < 0) {
        return -1;
    }
    bio_tls_options o = {0};
    int check_hostname = 1;
    PyObject *ch = opt[RC_TLS_CHECK_HOSTNAME];
    if (ch != NULL && ch != Py_None && (check_hostname = PyObject_IsTrue(ch)) < 0) {
        return -1;
    }
    /* Every option is checked, whether or not ssl is on: a typo fails either way. */
    if (opt_text(opt[RC_TLS_CA_CERTS], "ssl_ca_certs", &o.ca_file) < 0 ||
        opt_text(opt[RC_TLS_CA_PATH], "ssl_ca_path", &o.ca_path) < 0 ||
        opt_text(opt[RC_TLS_CERTFILE], "ssl_certfile", &o.cert_file) < 0 ||
        opt_text(opt[RC_TLS_KEYFILE], "ssl_keyfile", &o.key_file) < 0 ||
        opt_text(opt[RC_TLS_PASSWORD], "ssl_password", &o.key_password) < 0 ||
        opt_text(opt[RC_TLS_CIPHERS], "ssl_ciphers", &o.ciphers) < 0 ||
        cert_reqs(opt[RC_TLS_CERT_REQS], &o.verify) < 0 ||
        min_version(opt[RC_TLS_MIN_VERSION], &o.min_version) < 0) {
        return -1;
    }
    if (!on && !for_sentinels) {
        return 0;
    }
    if (on && unix_socket) {
        PyErr_SetString(PyExc_ValueError, "ssl is for TCP connections: Redis serves unix "
                        "sockets in plaintext (unix_socket_path and ssl=True)");
        return -1;
    }
    if (o.key_password != NULL) {
        PyObject *pw = opt[RC_TLS_PASSWORD];
        o.key_password_len = PyBytes_Check(pw) ? (size_t)PyBytes_GET_SIZE(pw)
                                               : strlen(o.key_password);
    }
    o.check_hostname = check_hostname;
    /* (The GIL stays held: o points into the option objects, and the files are
     * small.) */
    char err[BIO_ERRLEN + 512];
    bio_tls *t = bio_tls_new(&o, err, sizeof err);
    if (t == NULL) {
        PyErr_SetString(strcmp(err, "out of memory") == 0 ? PyExc_MemoryError
                                                            : PyExc_ValueError, err);
        return -1;
    }
    /* sentinel_ssl: the sentinels share the data connection's context, or, with ssl
     * off, have this one of their own (made from the same ssl_* options). */
    if (for_sentinels) {
        if (on) {
            bio_tls_incref(t);
        }
        *sentinel_out = t;
    }
    if (on) {
        *out = t;
    }
    return 0;
}
