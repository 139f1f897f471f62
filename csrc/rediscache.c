/* rediscache.c: the RedisCache type (see rc_internal.h for its other files).
 *
 * Options (__init__, from_url), attributes, and the methods: each parses its
 * arguments and starts a call of the command table (rc_start), which returns the
 * awaitable. The same calls are exported for MultiLevelCache (rediscache.h). */
#include "rc_internal.h"
#include "respscan.h"

#include <math.h>
#include <string.h>
#include <unistd.h>

/* What one reply may cost unless max_reply_bytes says otherwise: Redis' own
 * proto-max-bulk-len (respscan.h says how a reply is costed). */
#define DEFAULT_MAX_REPLY (512ULL * 1024 * 1024)

/* A timeout option into *out, in seconds: 5 when omitted, infinite for None.
 * 0, or -1 with TypeError / ValueError. */
static int
timeout_arg(PyObject *v, const char *what, double *out)
{
    if (v == NULL || v == Py_None) {
        *out = v == NULL ? 5.0 : INFINITY;
        return 0;
    }
    double d = PyFloat_AsDouble(v);
    if (d == -1.0 && PyErr_Occurred()) {
        PyErr_Format(PyExc_TypeError, "%s must be a number or None", what);
        return -1;
    }
    if (!(d > 0)) {
        PyErr_Format(PyExc_ValueError, "%s must be > 0", what);
        return -1;
    }
    *out = d;
    return 0;
}

/* ------------------------------------------------------------------ calls */

PyObject *
bruno_rc_get(PyObject *cache, PyObject *key, int with_ttl, const char *qualname,
             const rc_hook *hook)
{
    rc_args a = {.key = key};
    return rc_start((RedisCache *)cache, RC_GET, with_ttl ? RC_F_WITH_TTL : 0, &a, qualname,
                    hook);
}

PyObject *
bruno_rc_get_many(PyObject *cache, PyObject *keys, int with_ttl, const char *qualname,
                  const rc_hook *hook)
{
    rc_args a = {.items = keys};
    return rc_start((RedisCache *)cache, RC_MGET, with_ttl ? RC_F_WITH_TTL : 0, &a, qualname,
                    hook);
}

PyObject *
bruno_rc_set(PyObject *cache, PyObject *key, PyObject *value, PyObject *ttl,
             const char *qualname, const rc_hook *hook)
{
    rc_args a = {.key = key, .value = value, .ttl = ttl};
    return rc_start((RedisCache *)cache, RC_SET, 0, &a, qualname, hook);
}

PyObject *
bruno_rc_delete(PyObject *cache, PyObject *key, const char *qualname, const rc_hook *hook)
{
    rc_args a = {.key = key};
    return rc_start((RedisCache *)cache, RC_DELETE, 0, &a, qualname, hook);
}

PyObject *
bruno_rc_exists(PyObject *cache, PyObject *key, const char *qualname, const rc_hook *hook)
{
    rc_args a = {.key = key};
    return rc_start((RedisCache *)cache, RC_EXISTS, 0, &a, qualname, hook);
}

PyObject *
bruno_rc_set_many(PyObject *cache, PyObject *items, PyObject *ttl, const char *qualname,
                  const rc_hook *hook)
{
    rc_args a = {.items = items, .ttl = ttl};
    return rc_start((RedisCache *)cache, RC_SETMANY, 0, &a, qualname, hook);
}

PyObject *
bruno_rc_clear(PyObject *cache, const char *qualname, const rc_hook *hook)
{
    rc_args a = {0};
    return rc_start((RedisCache *)cache, RC_CLEAR, 0, &a, qualname, hook);
}

PyObject *
bruno_rc_get_stats(PyObject *cache, const char *qualname, const rc_hook *hook)
{
    rc_args a = {0};
    return rc_start((RedisCache *)cache, RC_STATS, 0, &a, qualname, hook);
}

static PyObject *
connect_impl(RedisCache *self, int flags, const char *qualname)
{
    if (rc_client(self) == NULL) {  /* also forgets a parent's connection after fork */
        return NULL;
    }
    if (self->connected) {
        return bruno_aw_ready(self->st, qualname,
                              Py_NewRef(flags & RC_F_ENTER ? (PyObject *)self : Py_None));
    }
    rc_args a = {0};
    return rc_start(self, RC_CONNECT, flags, &a, qualname, NULL);
}

PyObject *
bruno_rc_connect(PyObject *cache, const char *qualname)
{
    return connect_impl((RedisCache *)cache, 0, qualname);
}

PyObject *
bruno_rc_disconnect(PyObject *cache, const char *qualname)
{
    RedisCache *self = (RedisCache *)cache;
    self->connected = 0;
    if (self->client == NULL || bio_client_pid(self->client) != bio_pid()) {
        return bruno_aw_none(self->st, qualname);
    }
    rc_args a = {0};
    return rc_start(self, RC_CLOSE, 0, &a, qualname, NULL);
}

/* ------------------------------------------------------------------ methods */

static PyObject *
rc_get(RedisCache *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    ONE_ARG("get", "key")
    return bruno_rc_get((PyObject *)self, key, 0, "RedisCache.get", NULL);
}

static PyObject *
rc_delete(RedisCache *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    ONE_ARG("delete", "key")
    return bruno_rc_delete((PyObject *)self, key, "RedisCache.delete", NULL);
}

static PyObject *
rc_exists(RedisCache *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    ONE_ARG("exists", "key")
    return bruno_rc_exists((PyObject *)self, key, "RedisCache.exists", NULL);
}

static PyObject *
rc_set(RedisCache *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    static const char *const names[] = {"key", "value", "ttl", NULL};
    PyObject *a[3];
    if (bruno_parse_args("set", args, nargs, kwnames, names, 2, a) < 0) {
        return NULL;
    }
    return bruno_rc_set((PyObject *)self, a[0], a[1], a[2], "RedisCache.set", NULL);
}

static PyObject *
rc_get_many(RedisCache *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    ONE_ARG("get_many", "keys")
    PyObject *keys = bruno_keys_tuple(key);
    if (keys == NULL) {
        return NULL;
    }
    PyObject *aw = bruno_rc_get_many((PyObject *)self, keys, 0, "RedisCache.get_many", NULL);
    Py_DECREF(keys);
    return aw;
}

static PyObject *
rc_set_many(RedisCache *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    static const char *const names[] = {"items", "ttl", NULL};
    PyObject *a[2];
    if (bruno_parse_args("set_many", args, nargs, kwnames, names, 1, a) < 0) {
        return NULL;
    }
    int mode;  /* the ttl is checked before the mapping is read */
    long long amount;
    if (rc_ttl_option(self, a[1], &mode, &amount) < 0) {
        return NULL;
    }
    PyObject *items = bruno_mapping_flat(self->st, a[0]);  /* (k0, v0, k1, v1, ...) */
    if (items == NULL) {
        return NULL;
    }
    PyObject *aw = bruno_rc_set_many((PyObject *)self, items, a[1], "RedisCache.set_many",
                                     NULL);
    Py_DECREF(items);
    return aw;
}

static PyObject *
rc_clear(RedisCache *self, PyObject *Py_UNUSED(ignored))
{
    return bruno_rc_clear((PyObject *)self, "RedisCache.clear", NULL);
}

static PyObject *
rc_get_stats(RedisCache *self, PyObject *Py_UNUSED(ignored))
{
    return bruno_rc_get_stats((PyObject *)self, "RedisCache.get_stats", NULL);
}

static PyObject *
rc_connect(RedisCache *self, PyObject *Py_UNUSED(ignored))
{
    return connect_impl(self, 0, "RedisCache.connect");
}

static PyObject *
rc_aenter(RedisCache *self, PyObject *Py_UNUSED(ignored))
{
    return connect_impl(self, RC_F_ENTER, "RedisCache.__aenter__");
}

static PyObject *
rc_disconnect(RedisCache *self, PyObject *Py_UNUSED(ignored))
{
    return bruno_rc_disconnect((PyObject *)self, "RedisCache.disconnect");
}

static PyObject *
rc_aexit(RedisCache *self, PyObject *const *Py_UNUSED(args), Py_ssize_t Py_UNUSED(nargs))
{
    return rc_disconnect(self, NULL);
}

static PyObject *
rc_stats(RedisCache *self, PyObject *Py_UNUSED(ignored))
{
    unsigned long long commands = 0, batches = 0, errors = 0, timeouts = 0, reconnects = 0;
    int up = 0;
    if (self->client != NULL) {
        bio_counters *c = bio_client_counters(self->client);
        commands = atomic_load(&c->commands);
        batches = atomic_load(&c->batches);
        errors = atomic_load(&c->errors);
        timeouts = atomic_load(&c->timeouts);
        reconnects = atomic_load(&c->reconnects);
        up = atomic_load(&c->connected);
    }
    unsigned long long total = self->hits + self->misses;
    return Py_BuildValue("{s:s,s:K,s:K,s:d,s:K,s:K,s:K,s:n,s:O,s:K,s:K}",
                         "type", "redis", "hits", self->hits, "misses", self->misses,
                         "hit_rate", total ? (double)self->hits / (double)total : 0.0,
                         "errors", errors, "timeouts", timeouts, "reconnects", reconnects,
                         "in_flight", self->in_flight,
                         "connected", up ? Py_True : Py_False,
                         "commands", commands, "batches", batches);
}

/* ------------------------------------------------------------------ construction */

PyObject *
bruno_rc_stats(PyObject *l2)
{
    return rc_stats((RedisCache *)l2, NULL);
}

static int
int_arg(PyObject *v, const char *what, long lo, long hi, int *out)
{
    if (!PyLong_Check(v) || PyBool_Check(v)) {
        PyErr_Format(PyExc_TypeError, "%s must be an int, not %.100s", what, Py_TYPE(v)->tp_name);
        return -1;
    }
    long n = PyLong_AsLong(v);
    if ((n == -1 && PyErr_Occurred()) || n < lo || n > hi) {
        PyErr_Clear();
        PyErr_Format(PyExc_ValueError, "%s must be between %ld and %ld", what, lo, hi);
        return -1;
    }
    *out = (int)n;
    return 0;
}

static int
opt_str(PyObject *v, const char *what)
{
    if (v != Py_None && !PyUnicode_Check(v)) {
        PyErr_Format(PyExc_TypeError, "%s must be a str or None, not %.100s", what,
                     Py_TYPE(v)->tp_name);
        return -1;
    }
    return 0;
}

/* A str option (str checked by the caller) as UTF-8 without NUL inside, as the OS and
 * OpenSSL take it: *out borrowed from v, *len its length (either may be NULL). None:
 * 0 with *out NULL. The one place options become C strings (rc_tls.c, rc_sentinel.c). */
int
rc_utf8_option(PyObject *v, const char *what, const char **out, Py_ssize_t *len)
{
    Py_ssize_t n = 0;
    const char *s = NULL;
    if (v != NULL && v != Py_None) {
        s = PyUnicode_AsUTF8AndSize(v, &n);
        if (s == NULL) {
            return -1;
        }
        if ((Py_ssize_t)strlen(s) != n) {
            PyErr_Format(PyExc_ValueError, "%s must not contain NUL characters", what);
            return -1;
        }
    }
    if (out != NULL) {
        *out = s;
    }
    if (len != NULL) {
        *len = n;
    }
    return 0;
}

static int
opt_count(PyObject *v, const char *what, long lo)
{
    int dummy;
    return v == Py_None ? 0 : int_arg(v, what, lo, 1L << 30, &dummy);
}

static int
rc_init(RedisCache *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"host", "port", "db", "password", "prefix", "default_ttl",
                             "max_connections", "username", "pool_size", "max_overflow",
                             "socket_timeout", "connect_timeout", "unix_socket_path",
                             "max_reply_bytes", "ssl", "ssl_ca_certs", "ssl_ca_path",
                             "ssl_certfile", "ssl_keyfile", "ssl_password", "ssl_cert_reqs",
                             "ssl_check_hostname", "ssl_min_version", "ssl_ciphers",
                             "sentinels", "service_name", "sentinel_username",
                             "sentinel_password", "sentinel_ssl", "cluster", "startup_nodes",
                             "read_from_replicas", NULL};
    PyObject *host = NULL, *port = NULL, *db = NULL, *password = Py_None, *prefix = NULL,
             *default_ttl = NULL, *max_conn = NULL, *username = Py_None, *pool_size = Py_None,
             *max_overflow = Py_None, *sock_to = NULL, *conn_to = NULL, *unix_path = Py_None,
             *max_reply = NULL;
    PyObject *tls_opt[RC_TLS_NOPTS] = {NULL};
    PyObject *sn_opt[RC_SN_NOPTS] = {NULL};
    PyObject *sn_ssl = NULL;
    PyObject *cl_opt[RC_CL_NOPTS] = {NULL};
    if (!PyArg_ParseTupleAndKeywords(
            args, kwds, "|OOOOOOO$OOOOOOOOOOOOOOOOOOOOOOOOO:RedisCache", kwlist, &host, &port, &db,
            &password, &prefix, &default_ttl, &max_conn, &username, &pool_size,
            &max_overflow, &sock_to, &conn_to, &unix_path, &max_reply,
            &tls_opt[RC_TLS_SSL], &tls_opt[RC_TLS_CA_CERTS], &tls_opt[RC_TLS_CA_PATH],
            &tls_opt[RC_TLS_CERTFILE], &tls_opt[RC_TLS_KEYFILE], &tls_opt[RC_TLS_PASSWORD],
            &tls_opt[RC_TLS_CERT_REQS], &tls_opt[RC_TLS_CHECK_HOSTNAME],
            &tls_opt[RC_TLS_MIN_VERSION], &tls_opt[RC_TLS_CIPHERS],
            &sn_opt[RC_SN_SENTINELS], &sn_opt[RC_SN_SERVICE], &sn_opt[RC_SN_USERNAME],
            &sn_opt[RC_SN_PASSWORD], &sn_ssl, &cl_opt[RC_CL_CLUSTER], &cl_opt[RC_CL_STARTUP],
            &cl_opt[RC_CL_REPLICAS])) {
        return -1;
    }
    unsigned long long max_reply_bytes = DEFAULT_MAX_REPLY;
    if (max_reply != NULL) {
        if (!PyLong_Check(max_reply) || PyBool_Check(max_reply)) {
            PyErr_Format(PyExc_TypeError, "max_reply_bytes must be an int, not %.100s",
                         Py_TYPE(max_reply)->tp_name);
            return -1;
        }
        max_reply_bytes = PyLong_AsUnsignedLongLong(max_reply);
        if (PyErr_Occurred() || max_reply_bytes < 1024 || max_reply_bytes > RESP_MAX_LIMIT) {
            PyErr_Clear();
            PyErr_Format(PyExc_ValueError, "max_reply_bytes must be between 1024 and %llu",
                         (unsigned long long)RESP_MAX_LIMIT);
            return -1;
        }
    }
    if (self->client != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "RedisCache is already initialised");
        return -1;
    }
    int iport = 6379, idb = 0;
    int has_address = host != NULL || port != NULL || unix_path != Py_None;
    if (host == NULL) {
        host = self->st->str_localhost;
    }
    if (!PyUnicode_Check(host)) {
        PyErr_Format(PyExc_TypeError, "host must be a str, not %.100s", Py_TYPE(host)->tp_name);
        return -1;
    }
    if ((port && int_arg(port, "port", 1, 65535, &iport) < 0) ||
        (db && int_arg(db, "db", 0, 1 << 20, &idb) < 0) ||
        opt_str(password, "password") < 0 || opt_str(username, "username") < 0 ||
        opt_str(unix_path, "unix_socket_path") < 0 || rc_utf8_option(host, "host", NULL, NULL) < 0 ||
        rc_utf8_option(unix_path, "unix_socket_path", NULL, NULL) < 0 ||
        (max_conn && opt_count(max_conn, "max_connections", 1) < 0) ||
        opt_count(pool_size, "pool_size", 1) < 0 ||
        opt_count(max_overflow, "max_overflow", 0) < 0) {
        return -1;
    }
    if (prefix == NULL) {
        prefix = self->st->str_default_prefix;
    }
    if (!PyUnicode_Check(prefix)) {
        PyErr_Format(PyExc_TypeError, "prefix must be a str, not %.100s", Py_TYPE(prefix)->tp_name);
        return -1;
    }
    double st_, ct;
    if (timeout_arg(sock_to, "socket_timeout", &st_) < 0 ||
        timeout_arg(conn_to, "connect_timeout", &ct) < 0) {
        return -1;
    }
    PyObject *sn_list;
    bio_sentinels *sn;
    rc_cluster_cfg cl;
    int has_sentinels = sn_opt[RC_SN_SENTINELS] != NULL && sn_opt[RC_SN_SENTINELS] != Py_None;
    if (rc_cluster_options(cl_opt, has_address, unix_path != Py_None, has_sentinels, idb,
                           &cl) < 0) {
        return -1;
    }
    if (cl.nodes != NULL) {  /* the first startup node is the one asked first */
        PyObject *first = PyTuple_GET_ITEM(cl.nodes, 0);
        host = PyTuple_GET_ITEM(first, 0);
        iport = (int)PyLong_AsLong(PyTuple_GET_ITEM(first, 1));
    }
    if (rc_sentinel_options(sn_opt, has_address, &sn_list, &sn) < 0) {
        Py_XDECREF(cl.nodes);
        return -1;
    }
    int sentinel_ssl = 0;
    if (sn_ssl != NULL && sn_ssl != Py_None && (sentinel_ssl = PyObject_IsTrue(sn_ssl)) < 0) {
        Py_XDECREF(sn_list);
        Py_XDECREF(cl.nodes);
        bio_sentinels_decref(sn);
        return -1;
    }
    if (sentinel_ssl && sn == NULL) {
        PyErr_SetString(PyExc_ValueError, "sentinel_ssl needs sentinels=[...]");
        Py_XDECREF(sn_list);
        Py_XDECREF(cl.nodes);
        bio_sentinels_decref(sn);
        return -1;
    }
    bio_tls *tls, *sn_tls;  /* last: it reads the certificate files */
    if (rc_tls_options(tls_opt, unix_path != Py_None, sentinel_ssl, &tls, &sn_tls) < 0) {
        Py_XDECREF(sn_list);
        Py_XDECREF(cl.nodes);
        bio_sentinels_decref(sn);
        return -1;
    }
    if (sn_tls != NULL) {
        bio_sentinels_set_tls(sn, sn_tls);  /* (sn is not shared yet) */
        bio_tls_decref(sn_tls);
    }
    PyObject *pbytes = PyUnicode_AsUTF8String(prefix);
    if (pbytes == NULL) {
        Py_XDECREF(sn_list);
        Py_XDECREF(cl.nodes);
        bio_sentinels_decref(sn);
        bio_tls_decref(tls);
        return -1;
    }
    PyObject *ttl = default_ttl ? default_ttl : self->st->int_3600;
    Py_XSETREF(self->default_ttl, Py_NewRef(ttl));
    int mode;
    long long amount;
    if (rc_ttl_option(self, NULL, &mode, &amount) < 0) {  /* validates default_ttl */
        Py_DECREF(pbytes);
        Py_XDECREF(sn_list);
        Py_XDECREF(cl.nodes);
        bio_sentinels_decref(sn);
        bio_tls_decref(tls);
        return -1;
    }
    bio_sentinels_decref(self->sentinel_cfg);
    self->sentinel_cfg = sn;
    Py_XSETREF(self->sentinels, sn_list ? sn_list : Py_NewRef(Py_None));
    Py_XSETREF(self->service_name, Py_NewRef(sn ? sn_opt[RC_SN_SERVICE] : Py_None));
    Py_XSETREF(self->sentinel_username,
               Py_NewRef(sn && sn_opt[RC_SN_USERNAME] ? sn_opt[RC_SN_USERNAME] : Py_None));
    Py_XSETREF(self->sentinel_password,
               Py_NewRef(sn && sn_opt[RC_SN_PASSWORD] ? sn_opt[RC_SN_PASSWORD] : Py_None));
    bio_tls_decref(self->tls);
    self->tls = tls;
    self->sentinel_ssl = sentinel_ssl;
    self->cluster_mode = cl.mode;
    self->read_from_replicas = cl.replicas;
    Py_XSETREF(self->startup_nodes, cl.nodes ? cl.nodes : Py_NewRef(Py_None));
    self->port = iport;
    self->db = idb;
    self->max_reply = max_reply_bytes;
    self->socket_timeout = st_;
    self->connect_timeout = ct;
    Py_XSETREF(self->host, Py_NewRef(host));
    Py_XSETREF(self->password, Py_NewRef(password));
    Py_XSETREF(self->username, Py_NewRef(username));
    Py_XSETREF(self->unix_socket_path, Py_NewRef(unix_path));
    Py_XSETREF(self->prefix, Py_NewRef(prefix));
    Py_XSETREF(self->prefix_bytes, pbytes);
    Py_XSETREF(self->max_connections, max_conn ? Py_NewRef(max_conn) : PyLong_FromLong(10));
    Py_XSETREF(self->pool_size, Py_NewRef(pool_size));
    Py_XSETREF(self->max_overflow, Py_NewRef(max_overflow));
    return self->max_connections ? 0 : -1;
}

static PyObject *
rc_new(PyTypeObject *type, PyObject *Py_UNUSED(args), PyObject *Py_UNUSED(kwds))
{
    bruno_state *st = bruno_state_from_type(type);
    if (st == NULL) {
        return NULL;
    }
    RedisCache *self = (RedisCache *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    self->st = st;
    self->port = 6379;
    self->socket_timeout = self->connect_timeout = 5.0;
    self->max_reply = DEFAULT_MAX_REPLY;
    self->host = Py_NewRef(st->str_localhost);
    self->password = Py_NewRef(Py_None);
    self->username = Py_NewRef(Py_None);
    self->unix_socket_path = Py_NewRef(Py_None);
    self->prefix = Py_NewRef(st->str_default_prefix);
    self->prefix_bytes = PyUnicode_AsUTF8String(self->prefix);
    self->default_ttl = Py_NewRef(st->int_3600);
    self->max_connections = PyLong_FromLong(10);
    self->pool_size = Py_NewRef(Py_None);
    self->max_overflow = Py_NewRef(Py_None);
    self->sentinels = Py_NewRef(Py_None);
    self->service_name = Py_NewRef(Py_None);
    self->sentinel_username = Py_NewRef(Py_None);
    self->sentinel_password = Py_NewRef(Py_None);
    self->startup_nodes = Py_NewRef(Py_None);
    self->cluster_mode = BIO_CLUSTER_AUTO;
    if (self->prefix_bytes == NULL || self->max_connections == NULL) {
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

/* from_url(url, **kw): the url's keywords (bruno_memory_c._urls.parse_url), those
 * given explicitly winning, passed to the class. */
static PyObject *
rc_from_url(PyObject *cls, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    if (nargs != 1) {
        PyErr_SetString(PyExc_TypeError, "from_url() takes the url as its only positional argument");
        return NULL;
    }
    PyObject *mod = PyImport_ImportModule("bruno_memory_c._urls");
    PyObject *kw = mod ? PyObject_CallMethod(mod, "parse_url", "O", args[0]) : NULL;
    Py_XDECREF(mod);
    if (kw == NULL) {
        return NULL;
    }
    PyObject *result = NULL;
    if (!PyDict_Check(kw)) {
        PyErr_SetString(PyExc_TypeError, "parse_url() must return a dict");
        goto done;
    }
    for (Py_ssize_t i = 0; kwnames != NULL && i < PyTuple_GET_SIZE(kwnames); i++) {
        if (PyDict_SetItem(kw, PyTuple_GET_ITEM(kwnames, i), args[nargs + i]) < 0) {
            goto done;
        }
    }
    PyObject *empty = PyTuple_New(0);
    if (empty != NULL) {
        result = PyObject_Call(cls, empty, kw);
        Py_DECREF(empty);
    }
done:
    Py_DECREF(kw);
    return result;
}

/* ------------------------------------------------------------------ attributes */

static PyObject *
rc_get_connected(RedisCache *self, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(self->connected);
}

static PyObject *
rc_get_stats_key(RedisCache *self, void *Py_UNUSED(closure))
{
    return PyUnicode_FromFormat("%Ustats", self->prefix);
}

static PyObject *
rc_get_socket_timeout(RedisCache *self, void *Py_UNUSED(closure))
{
    return isinf(self->socket_timeout) ? Py_NewRef(Py_None) : PyFloat_FromDouble(self->socket_timeout);
}

static PyObject *
rc_get_connect_timeout(RedisCache *self, void *Py_UNUSED(closure))
{
    return isinf(self->connect_timeout) ? Py_NewRef(Py_None) : PyFloat_FromDouble(self->connect_timeout);
}

static PyObject *
rc_get_port(RedisCache *self, void *Py_UNUSED(closure))
{
    return PyLong_FromLong(self->port);
}

static PyObject *
rc_get_db(RedisCache *self, void *Py_UNUSED(closure))
{
    return PyLong_FromLong(self->db);
}

static PyObject *
rc_get_max_reply(RedisCache *self, void *Py_UNUSED(closure))
{
    return PyLong_FromUnsignedLongLong(self->max_reply);
}

static PyObject *
rc_get_sentinel_ssl(RedisCache *self, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(self->sentinel_ssl);
}

static PyObject *
rc_get_cluster(RedisCache *self, void *Py_UNUSED(closure))
{
    return Py_NewRef(self->cluster_mode == BIO_CLUSTER_AUTO ? Py_None
                     : self->cluster_mode == BIO_CLUSTER_ON ? Py_True : Py_False);
}

static PyObject *
rc_get_read_from_replicas(RedisCache *self, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(self->read_from_replicas);
}

static PyObject *
rc_get_ssl(RedisCache *self, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(self->tls != NULL);
}

/* ------------------------------------------------------------------ lifecycle */

static int
rc_traverse(RedisCache *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->default_ttl);
    Py_VISIT(self->last_bridge);
    Py_VISIT(self->rl_holder);
    return 0;
}

static int
rc_clear_refs(RedisCache *self)
{
    Py_CLEAR(self->last_bridge);
    Py_CLEAR(self->rl_holder);
    return 0;
}

static void
rc_dealloc(RedisCache *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    if (self->weakreflist != NULL) {
        PyObject_ClearWeakRefs((PyObject *)self);
    }
    /* No request can be in flight: each holds a reference to us. Dropping our
     * client reference lets the I/O thread close the socket. */
    if (self->client != NULL && bio_client_pid(self->client) == bio_pid()) {
        bio_client_decref(self->client);
    }
    self->client = NULL;
    bio_tls_decref(self->tls);
    self->tls = NULL;
    bio_sentinels_decref(self->sentinel_cfg);
    self->sentinel_cfg = NULL;
    rc_clear_refs(self);
    rc_track_release(self);
    Py_CLEAR(self->sentinels);
    Py_CLEAR(self->service_name);
    Py_CLEAR(self->sentinel_username);
    Py_CLEAR(self->sentinel_password);
    Py_CLEAR(self->startup_nodes);
    Py_CLEAR(self->host);
    Py_CLEAR(self->password);
    Py_CLEAR(self->username);
    Py_CLEAR(self->unix_socket_path);
    Py_CLEAR(self->prefix);
    Py_CLEAR(self->prefix_bytes);
    Py_CLEAR(self->default_ttl);
    Py_CLEAR(self->max_connections);
    Py_CLEAR(self->pool_size);
    Py_CLEAR(self->max_overflow);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

/* "host:port,host:port" of a tuple of (host, port) pairs (new reference). */
static PyObject *
join_addresses(PyObject *pairs)
{
    PyObject *parts = PyList_New(0);
    for (Py_ssize_t i = 0; parts && i < PyTuple_GET_SIZE(pairs); i++) {
        PyObject *pair = PyTuple_GET_ITEM(pairs, i);
        PyObject *s = PyUnicode_FromFormat("%U:%S", PyTuple_GET_ITEM(pair, 0),
                                           PyTuple_GET_ITEM(pair, 1));
        if (s == NULL || PyList_Append(parts, s) < 0) {
            Py_XDECREF(s);
            Py_CLEAR(parts);
            break;
        }
        Py_DECREF(s);
    }
    PyObject *sep = parts ? PyUnicode_FromString(",") : NULL;
    PyObject *joined = sep ? PyUnicode_Join(sep, parts) : NULL;
    Py_XDECREF(sep);
    Py_XDECREF(parts);
    return joined;
}

static PyObject *
rc_repr(RedisCache *self)
{
    if (self->startup_nodes != Py_None) {
        /* cluster:host:port,host:port (no secrets) */
        PyObject *joined = join_addresses(self->startup_nodes);
        PyObject *r = joined ? PyUnicode_FromFormat("<%s %scluster:%U prefix=%R>",
                                                    Py_TYPE(self)->tp_name,
                                                    self->tls ? "tls:" : "", joined,
                                                    self->prefix)
                             : NULL;
        Py_XDECREF(joined);
        return r;
    }
    if (self->sentinels != Py_None) {
        /* sentinel:<service>@host:port,host:port (no secrets) */
        PyObject *joined = join_addresses(self->sentinels);
        if (joined == NULL) {
            return NULL;
        }
        PyObject *r = PyUnicode_FromFormat("<%s %ssentinel:%U@%U db=%d prefix=%R>",
                                           Py_TYPE(self)->tp_name, self->tls ? "tls:" : "",
                                           self->service_name, joined, self->db,
                                           self->prefix);
        Py_DECREF(joined);
        return r;
    }
    if (self->unix_socket_path != Py_None) {
        return PyUnicode_FromFormat("<%s unix:%U db=%d prefix=%R>", Py_TYPE(self)->tp_name,
                                    self->unix_socket_path, self->db, self->prefix);
    }
    return PyUnicode_FromFormat("<%s %s%U:%d db=%d prefix=%R>", Py_TYPE(self)->tp_name,
                                self->tls ? "tls:" : "", self->host, self->port, self->db,
                                self->prefix);
}

static PyMethodDef rc_methods[] = {
    {"connect", (PyCFunction)rc_connect, METH_NOARGS,
     "connect($self, /)\n--\n\nConnect (idempotent). Failure raises CacheError."},
    {"disconnect", (PyCFunction)rc_disconnect, METH_NOARGS,
     "disconnect($self, /)\n--\n\n"
     "Flush statistics and close; requests still in flight fail with CacheError."},
    {"get", (PyCFunction)(void (*)(void))rc_get, METH_FASTCALL | METH_KEYWORDS,
     "get($self, /, key)\n--\n\nThe value stored under key, or None (also on errors, logged)."},
    {"set", (PyCFunction)(void (*)(void))rc_set, METH_FASTCALL | METH_KEYWORDS,
     "set($self, /, key, value, ttl=None)\n--\n\n"
     "Store json.dumps(value) under prefix + str(key); a truthy ttl expires it (EX, or PX\n"
     "for a fraction of a second). Errors raise CacheError."},
    {"delete", (PyCFunction)(void (*)(void))rc_delete, METH_FASTCALL | METH_KEYWORDS,
     "delete($self, /, key)\n--\n\nTrue if the key was deleted (False on errors, logged)."},
    {"exists", (PyCFunction)(void (*)(void))rc_exists, METH_FASTCALL | METH_KEYWORDS,
     "exists($self, /, key)\n--\n\nTrue if the key exists (False on errors, logged)."},
    {"clear", (PyCFunction)rc_clear, METH_NOARGS,
     "clear($self, /)\n--\n\nDelete every key under the prefix. Errors raise CacheError."},
    {"get_many", (PyCFunction)(void (*)(void))rc_get_many, METH_FASTCALL | METH_KEYWORDS,
     "get_many($self, /, keys)\n--\n\nDict of the keys found, in one MGET ({} on errors)."},
    {"set_many", (PyCFunction)(void (*)(void))rc_set_many, METH_FASTCALL | METH_KEYWORDS,
     "set_many($self, /, items, ttl=None)\n--\n\nStore every pair in one pipeline."},
    {"get_stats", (PyCFunction)rc_get_stats, METH_NOARGS,
     "get_stats($self, /)\n--\n\n"
     "{type, size, hits, misses, hit_rate (percent), connected}, aggregated over every\n"
     "process through the hash prefix + 'stats'; {type, error} on failure."},
    {"stats", (PyCFunction)rc_stats, METH_NOARGS,
     "stats($self, /)\n--\n\n"
     "This process's counters: hits, misses, hit_rate (fraction), errors, timeouts,\n"
     "reconnects, in_flight, connected, commands, batches."},
    {"__aenter__", (PyCFunction)rc_aenter, METH_NOARGS,
     "__aenter__($self, /)\n--\n\nConnect; gives the cache."},
    {"__aexit__", (PyCFunction)(void (*)(void))rc_aexit, METH_FASTCALL,
     "__aexit__($self, *exc_info)\n--\n\nDisconnect."},
    {"from_url", (PyCFunction)(void (*)(void))rc_from_url,
     METH_FASTCALL | METH_KEYWORDS | METH_CLASS,
     "from_url($cls, url, /, **kwargs)\n--\n\n"
     "RedisCache from redis://[user:password@]host[:port][/db], unix:///path?db=N or\n"
     "redis+sentinel://host:port,host:port/service[/db] or\n"
     "redis://host:port,host:port/0?cluster=true (a Redis Cluster);\n"
     "keyword arguments override what the url says."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef rc_members[] = {
    {"host", Py_T_OBJECT_EX, offsetof(RedisCache, host), Py_READONLY, "Redis host."},
    {"password", Py_T_OBJECT_EX, offsetof(RedisCache, password), Py_READONLY, "Password, or None."},
    {"username", Py_T_OBJECT_EX, offsetof(RedisCache, username), Py_READONLY, "ACL user name, or None."},
    {"unix_socket_path", Py_T_OBJECT_EX, offsetof(RedisCache, unix_socket_path), Py_READONLY,
     "Unix socket path, or None for TCP."},
    {"prefix", Py_T_OBJECT_EX, offsetof(RedisCache, prefix), Py_READONLY, "Key prefix."},
    {"default_ttl", Py_T_OBJECT_EX, offsetof(RedisCache, default_ttl), Py_READONLY,
     "TTL used when set() gets none."},
    {"max_connections", Py_T_OBJECT_EX, offsetof(RedisCache, max_connections), Py_READONLY,
     "Accepted for compatibility: requests are multiplexed on one connection."},
    {"pool_size", Py_T_OBJECT_EX, offsetof(RedisCache, pool_size), Py_READONLY,
     "Accepted for compatibility (see max_connections)."},
    {"max_overflow", Py_T_OBJECT_EX, offsetof(RedisCache, max_overflow), Py_READONLY,
     "Accepted for compatibility (see max_connections)."},
    {"startup_nodes", Py_T_OBJECT_EX, offsetof(RedisCache, startup_nodes), Py_READONLY,
     "The cluster nodes tried at connect, a tuple of (host, port), or None."},
    {"sentinels", Py_T_OBJECT_EX, offsetof(RedisCache, sentinels), Py_READONLY,
     "The sentinels asked for the server, a tuple of (host, port), or None."},
    {"service_name", Py_T_OBJECT_EX, offsetof(RedisCache, service_name), Py_READONLY,
     "The service the sentinels name the primary of, or None."},
    {"sentinel_username", Py_T_OBJECT_EX, offsetof(RedisCache, sentinel_username),
     Py_READONLY, "ACL user name for the sentinels, or None."},
    {"sentinel_password", Py_T_OBJECT_EX, offsetof(RedisCache, sentinel_password),
     Py_READONLY, "Password for the sentinels, or None."},
    {"__weaklistoffset__", Py_T_PYSSIZET, offsetof(RedisCache, weakreflist), Py_READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyGetSetDef rc_getset[] = {
    {"port", (getter)rc_get_port, NULL, "Redis port.", NULL},
    {"db", (getter)rc_get_db, NULL, "Database number.", NULL},
    {"max_reply_bytes", (getter)rc_get_max_reply, NULL,
     "What one reply may cost: a larger one fails its request and replaces the "
     "connection.", NULL},
    {"ssl", (getter)rc_get_ssl, NULL, "Whether the connection uses TLS (ssl=True, rediss://).",
     NULL},
    {"cluster", (getter)rc_get_cluster, NULL,
     "None: whether the server is a Redis Cluster node is asked at connect; True: it "
     "must be; False: it is one server.", NULL},
    {"read_from_replicas", (getter)rc_get_read_from_replicas, NULL,
     "Whether reads go to the cluster's replicas (READONLY).", NULL},
    {"sentinel_ssl", (getter)rc_get_sentinel_ssl, NULL,
     "Whether the sentinels are asked over TLS (sentinel_ssl=True, ?sentinel_ssl=true), "
     "with the ssl_* options.", NULL},
    {"connected", (getter)rc_get_connected, NULL,
     "True after connect() until disconnect() (the reference's _connected).", NULL},
    {"_connected", (getter)rc_get_connected, NULL, "Alias of connected.", NULL},
    {"stats_key", (getter)rc_get_stats_key, NULL, "The statistics hash: prefix + 'stats'.", NULL},
    {"socket_timeout", (getter)rc_get_socket_timeout, NULL, "Seconds, or None.", NULL},
    {"connect_timeout", (getter)rc_get_connect_timeout, NULL, "Seconds, or None.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot rc_slots[] = {
    {Py_tp_doc,
     "RedisCache(host='localhost', port=6379, db=0, password=None, prefix='bruno:cache:',\n"
     "           default_ttl=3600, max_connections=10, *, username=None, pool_size=None,\n"
     "           max_overflow=None, socket_timeout=5.0, connect_timeout=5.0,\n"
     "           unix_socket_path=None, max_reply_bytes=536870912, ssl=False,\n"
     "           ssl_ca_certs=None, ssl_ca_path=None, ssl_certfile=None, ssl_keyfile=None,\n"
     "           ssl_password=None, ssl_cert_reqs='required', ssl_check_hostname=True,\n"
     "           ssl_min_version=None, ssl_ciphers=None, sentinels=None,\n"
     "           service_name=None, sentinel_username=None, sentinel_password=None,\n"
     "           sentinel_ssl=False, cluster=None, startup_nodes=None,\n"
     "           read_from_replicas=False)\n"
     "--\n\n"
     "Redis-backed cache, in C: a background I/O thread pipelines every request on one\n"
     "connection, so no request waits for (or fails for want of) a pooled connection.\n"
     "Storage is the reference's: prefix + str(key) -> json.dumps(value).\n"
     "ssl=True: TLS (OpenSSL, in the I/O thread), with redis-py's ssl_* options.\n"
     "sentinels=[...]: the server found through Redis Sentinel. A Redis Cluster is\n"
     "detected at connect (cluster=None) or named (startup_nodes=[...], cluster=True):\n"
     "each key goes to its slot's node, multi-key calls per node."},
    {Py_tp_new, rc_new},
    {Py_tp_init, rc_init},
    {Py_tp_dealloc, rc_dealloc},
    {Py_tp_traverse, rc_traverse},
    {Py_tp_clear, rc_clear_refs},
    {Py_tp_repr, rc_repr},
    {Py_tp_methods, rc_methods},
    {Py_tp_members, rc_members},
    {Py_tp_getset, rc_getset},
    {0, NULL},
};

static PyType_Spec rc_spec = {
    .name = "bruno_memory_c._core.RedisCache",
    .basicsize = sizeof(RedisCache),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC |
             Py_TPFLAGS_IMMUTABLETYPE,
    .slots = rc_slots,
};

int
bruno_redis_init(PyObject *module, bruno_state *st)
{
    st->RedisCacheType = (PyTypeObject *)PyType_FromModuleAndSpec(module, &rc_spec, NULL);
    if (st->RedisCacheType == NULL ||
        bruno_async_methods(st, st->RedisCacheType, rc_methods, bruno_async_method_names) < 0) {
        return -1;
    }
    return PyModule_AddType(module, st->RedisCacheType);
}
