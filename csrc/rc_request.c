/* rc_request.c: RedisCache's request plumbing (see rc_internal.h).
 *
 * A method's call (rc_call) is built by its command table entry, made into one
 * request of the I/O thread (bio_req, whose user data is the call) and submitted
 * through the running loop's bridge — or, with no running loop (`asyncio.run(
 * cache.get(k))` evaluates the call first), kept in its awaitable until that is
 * awaited. The bridge's drain calls rc_done on the awaiting loop: the table's decode
 * makes the result (a multi-step operation may go on with another request, carrying
 * the call), a caller's hook hears the typed answer, and the awaitable is resolved. */
#include "bridge.h"
#include "rc_internal.h"

#include <math.h>
#include <string.h>

/* ------------------------------------------------------------------ client */

bio_client *
rc_client(RedisCache *self)
{
    if (self->client != NULL && bio_client_pid(self->client) != bio_pid()) {
        /* A forked child: the parent's connection is not ours. Leave it alone
         * (the C reference is abandoned) and start afresh. */
        self->client = NULL;
        self->connected = 0;
        self->in_flight = 0;
        Py_CLEAR(self->last_bridge);
        Py_CLEAR(self->rl_holder);
    }
    if (self->client != NULL) {
        return self->client;
    }
    bio_config cfg = {0};
    cfg.port = self->port;
    cfg.db = self->db;
    cfg.connect_timeout = self->connect_timeout;
    cfg.socket_timeout = self->socket_timeout;
    cfg.max_reply = self->max_reply;
    cfg.tls = self->tls;
    cfg.sentinels = self->sentinel_cfg;
    cfg.cluster = self->cluster_mode;
    cfg.read_replicas = self->read_from_replicas;
    const char *hosts[64];  /* (rc_cluster.c's MAX_STARTUP_NODES) */
    int ports[64];
    if (self->startup_nodes != Py_None) {
        Py_ssize_t n = PyTuple_GET_SIZE(self->startup_nodes);
        for (Py_ssize_t i = 1; i < n && i <= 64; i++) {
            PyObject *pair = PyTuple_GET_ITEM(self->startup_nodes, i);
            hosts[i - 1] = PyUnicode_AsUTF8(PyTuple_GET_ITEM(pair, 0));  /* (checked) */
            ports[i - 1] = (int)PyLong_AsLong(PyTuple_GET_ITEM(pair, 1));
        }
        cfg.nstartup = (int)n - 1;
        cfg.startup_hosts = (char **)hosts;
        cfg.startup_ports = ports;
    }
    cfg.host = (char *)PyUnicode_AsUTF8(self->host);
    if (cfg.host == NULL) {
        return NULL;
    }
    if (self->unix_socket_path != Py_None &&
        (cfg.unix_path = (char *)PyUnicode_AsUTF8(self->unix_socket_path)) == NULL) {
        return NULL;
    }
    Py_ssize_t n;
    if (self->password != Py_None &&
        (cfg.password = (char *)PyUnicode_AsUTF8AndSize(self->password, &n)) == NULL) {
        return NULL;
    }
    cfg.password_len = self->password != Py_None ? (size_t)n : 0;
    if (self->username != Py_None &&
        (cfg.username = (char *)PyUnicode_AsUTF8AndSize(self->username, &n)) == NULL) {
        return NULL;
    }
    cfg.username_len = self->username != Py_None ? (size_t)n : 0;
    size_t plen = (size_t)PyBytes_GET_SIZE(self->prefix_bytes);
    char *key = malloc(plen + 6);
    if (key == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    memcpy(key, PyBytes_AS_STRING(self->prefix_bytes), plen);
    memcpy(key + plen, "stats", 5);
    cfg.stats_key = key;
    cfg.stats_key_len = plen + 5;
    self->client = bio_client_new(&cfg);
    free(key);
    if (self->client == NULL) {
        PyErr_NoMemory();
    }
    return self->client;
}

/* The bridge of the running loop (borrowed from self->last_bridge), or NULL with
 * *no_loop set when no loop runs (no exception), or NULL with an exception. */
PyObject *
rc_bridge(RedisCache *self, int *no_loop)
{
    *no_loop = 0;
    /* Fast path. asyncio.get_running_loop() costs a getpid() system call on 3.11.
     * Its C implementation keeps the running loop in an immutable holder object in
     * the thread state dict, replaced whenever a loop starts or stops in the thread:
     * the same holder object as last time means the same running loop. (Where the
     * holder is not found, e.g. on later Pythons, the slow path serves.) */
    PyObject *tsdict = PyThreadState_GetDict();
    PyObject *holder = tsdict ? PyDict_GetItemWithError(tsdict, self->st->str_running_loop_key)
                              : NULL;  /* borrowed */
    if (holder != NULL && holder == self->rl_holder && self->last_bridge != NULL) {
        return self->last_bridge;
    }
    PyErr_Clear();
    /* Held from here: the calls below run Python code, which may start or stop a loop
     * in this thread and so replace (and free) the holder in the dict. */
    Py_XINCREF(holder);
    PyObject *loop = PyObject_CallNoArgs(self->st->get_running_loop);
    if (loop == NULL) {
        Py_XDECREF(holder);
        if (PyErr_ExceptionMatches(PyExc_RuntimeError)) {
            PyErr_Clear();
            *no_loop = 1;
        }
        return NULL;
    }
    if (self->last_bridge == NULL || !bruno_bridge_serves(self->last_bridge, loop)) {
        PyObject *bridge = bruno_bridge_for_loop(self->st, loop);
        if (bridge == NULL) {
            Py_DECREF(loop);
            Py_XDECREF(holder);
            return NULL;
        }
        Py_XSETREF(self->last_bridge, bridge);
    }
    Py_DECREF(loop);
    Py_XSETREF(self->rl_holder, holder);  /* our reference moves in */
    return self->last_bridge;
}

void
rc_buf_init(RedisCache *self, resp_buf *b)
{
    resp_buf_init(b);
    if (self->cluster_mode == BIO_CLUSTER_ON ||
        (self->cluster_mode == BIO_CLUSTER_AUTO &&
         (self->client == NULL ||
          !atomic_load_explicit(&bio_client_counters(self->client)->standalone,
                                memory_order_relaxed)))) {
        resp_buf_track_slots(b);  /* (out of memory: b->oom, the request is not made) */
    }
}

/* ------------------------------------------------------------------ calls */

static rc_call *
call_new(RedisCache *self, int op, int flags, const rc_hook *hook)
{
    rc_call *call = PyMem_Calloc(1, sizeof *call);
    if (call == NULL) {
        if (hook != NULL && hook->drop != NULL) {
            hook->drop(hook->data);
        }
        PyErr_NoMemory();
        return NULL;
    }
    call->cache = (RedisCache *)Py_NewRef(self);
    call->op = op;
    call->flags = flags;
    call->route = -1;
    if (hook != NULL) {
        call->hook = *hook;  /* taken over */
    }
    return call;
}

/* Let go of a call: its references, and its hook's data when nobody heard of it. */
static void
call_free(rc_call *call)
{
    PyObject *saved = PyErr_GetRaisedException();
    if (call->hook.drop != NULL) {
        call->hook.drop(call->hook.data);
    }
    Py_XDECREF(call->subject);
    Py_XDECREF(call->written);
    Py_XDECREF((PyObject *)call->aw);
    Py_DECREF(call->cache);
    PyMem_Free(call);
    PyErr_SetRaisedException(saved);
}

static void rc_done(bio_req *r);

/* The request carrying `call`, from the commands in b (taken). NULL with an
 * exception (the call is the caller's still). */
static bio_req *
request_new(rc_call *call, bio_bridge *bridge, resp_buf *b, const char *failure)
{
    int bio_op = failure != NULL ? BIO_OP_FAIL : rc_commands[call->op].bio_op;
    bio_req *r = b->oom ? NULL : bio_req_new(call->cache->client, bridge, bio_op, b->ncmd);
    if (r == NULL) {
        resp_buf_free(b);
        PyErr_NoMemory();
        return NULL;
    }
    r->buf = b->data;
    r->len = b->len;
    r->slots = b->slots;  /* (NULL unless the cache may be a cluster's) */
    r->route_slot = call->route;
    r->readonly = call->op == RC_GET || call->op == RC_EXISTS || call->op == RC_MGET;
    b->data = NULL;
    b->slots = NULL;
    resp_buf_free(b);
    r->user = call;
    r->on_done = rc_done;
    if (failure != NULL) {
        snprintf(r->err, sizeof r->err, "%s", failure);
    }
    return r;
}

/* Hand r to the I/O thread through the running loop's bridge. However many are in
 * flight, it is taken: past what one connection pipelines, the I/O thread keeps
 * requests waiting, in order (no loop needs to run for them to move on). 0 or -1. */
static int
rc_submit(RedisCache *self, bio_req *r, PyObject *bridge)
{
    self->in_flight++;
    if (bruno_bridge_submit(bridge, r, self->in_flight) < 0) {
        self->in_flight--;
        return -1;
    }
    return 0;
}

/* A request never submitted: freed with its call (an awaitable's deferred work). */
static void
drop_unsent(void *p)
{
    bio_req *r = p;
    rc_call *call = r->user;
    r->user = NULL;
    bio_req_free(r);
    call_free(call);
}

/* The Python objects a request not yet submitted holds, for the collector. */
static int
traverse_unsent(void *p, visitproc visit, void *arg)
{
    rc_call *call = ((bio_req *)p)->user;
    Py_VISIT((PyObject *)call->cache);
    Py_VISIT(call->subject);
    return call->hook.traverse != NULL ? call->hook.traverse(call->hook.data, visit, arg) : 0;
}

/* Start a deferred request: the awaitable is being awaited in a loop now. */
static int
start_deferred(PyObject *awobj)
{
    BrunoAwaitable *aw = (BrunoAwaitable *)awobj;
    bio_req *r = aw->deferred;
    rc_call *call = r->user;
    RedisCache *self = call->cache;
    int no_loop;
    PyObject *bridge = rc_bridge(self, &no_loop);
    if (bridge == NULL) {
        if (no_loop) {
            PyErr_SetString(PyExc_RuntimeError, "no running event loop");
        }
        return -1;  /* (still deferred: a later await in a loop starts it) */
    }
    if (bio_client_pid(r->client) != bio_pid()) {
        /* Made before a fork, awaited in the child: the parent's client is not served
         * here. The request goes to this process's (the parent's reference is
         * abandoned, as rc_client abandons the parent's client). */
        bio_client *own = rc_client(self);
        if (own == NULL) {
            return -1;
        }
        r->client = own;
        bio_client_incref(own);
    }
    aw->deferred = NULL;
    Py_XSETREF(aw->loop, bruno_bridge_loop(bridge));
    aw->plain_future = bruno_bridge_plain_future(bridge);
    r->bridge = bruno_bridge_c(bridge);
    bio_bridge_incref(r->bridge);
    call->aw = (BrunoAwaitable *)Py_NewRef(awobj);
    if (rc_submit(self, r, bridge) < 0) {
        drop_unsent(r);
        return -1;
    }
    return 0;
}

PyObject *
rc_start(RedisCache *self, int op, int flags, const rc_args *args, const char *qualname,
         const rc_hook *hook)
{
    if (!self->connected && rc_commands[op].bio_op == BIO_OP_CMD) {
        flags |= RC_F_AUTOCONNECT;
    }
    rc_call *call = call_new(self, op, flags, hook);
    if (call == NULL) {
        return NULL;
    }
    if (rc_track_wants(self, op)) {  /* (told to the cache's other listeners) */
        call->written = Py_NewRef(op == RC_SETMANY ? args->items : args->key);
    }
    PyObject *known = NULL;  /* the awaitable of an answer known without Redis */
    bio_req *r = NULL;
    resp_buf b;
    rc_buf_init(self, &b);
    rc_built built = {0};
    if (rc_client(self) == NULL || rc_commands[op].build(call, args, &b, &built) < 0) {
        goto out;
    }
    if (built.ready != NULL || built.raise != NULL) {
        known = built.ready ? bruno_aw_ready(self->st, qualname, built.ready)
                            : bruno_aw_error(self->st, qualname, built.raise);
        goto out;
    }
    if (built.unsendable) {
        resp_buf_free(&b);  /* nothing to send: it fails on the normal way back */
    }
    r = request_new(call, NULL, &b, built.unsendable ? built.why : NULL);  /* takes b */
out:
    if (r == NULL) {
        resp_buf_free(&b);
        call_free(call);
        return known;
    }
    PyObject *awobj = bruno_aw_pending(self->st, qualname);
    if (awobj == NULL) {
        drop_unsent(r);
        return NULL;
    }
    bruno_aw_defer((BrunoAwaitable *)awobj, r, start_deferred, drop_unsent, traverse_unsent);
    int no_loop;
    if (rc_bridge(self, &no_loop) == NULL) {
        if (no_loop) {
            return awobj;  /* started by its first send */
        }
        Py_DECREF(awobj);
        return NULL;
    }
    if (start_deferred(awobj) < 0) {
        Py_DECREF(awobj);
        return NULL;
    }
    return awobj;
}

int
rc_continue(bio_req *prev, int flags, resp_buf *b)
{
    rc_call *call = prev->user;
    int no_loop;
    PyObject *bridge = rc_bridge(call->cache, &no_loop);  /* the loop draining us */
    if (bridge == NULL) {
        resp_buf_free(b);
        if (no_loop) {
            PyErr_SetString(PyExc_RuntimeError, "no running event loop");
        }
        return -1;
    }
    bio_req *r = request_new(call, bruno_bridge_c(bridge), b, NULL);
    if (r == NULL) {
        return -1;
    }
    if (rc_submit(call->cache, r, bridge) < 0) {
        r->user = NULL;
        bio_req_free(r);
        return -1;
    }
    call->flags = flags;
    prev->user = NULL;  /* the call goes on with r */
    return 0;
}

/* ------------------------------------------------------------------ completion */

/* How the request went, for a caller's hook: failed, and the PTTL replies (a new
 * array in *pttl, or NULL). */
static int
answer_of(rc_call *call, bio_req *r, rc_answer *answer, long long **pttl)
{
    answer->failed = r->status != BIO_OK;
    for (int i = 0; !answer->failed && i < r->nrep; i++) {
        answer->failed = ((redisReply *)r->replies[i])->type == REDIS_REPLY_ERROR;
    }
    answer->pttl = *pttl = NULL;
    answer->npttl = 0;
    if (answer->failed || !(call->flags & RC_F_WITH_TTL) || r->nrep < 2) {
        return 0;
    }
    Py_ssize_t n = r->nrep - 1;  /* GET or MGET, then one PTTL per key */
    *pttl = PyMem_Malloc((size_t)n * sizeof **pttl);
    if (*pttl == NULL) {
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        redisReply *rep = r->replies[1 + i];
        (*pttl)[i] = rep->type == REDIS_REPLY_INTEGER ? rep->integer : -2;
    }
    answer->pttl = *pttl;
    answer->npttl = n;
    return 0;
}

/* Called by the loop bridge, on the awaiting loop, for each finished request. */
static void
rc_done(bio_req *r)
{
    rc_call *call = r->user;
    RedisCache *self = call->cache;
    BrunoAwaitable *aw = call->aw;
    self->in_flight--;
    PyObject *exc = NULL, *result = NULL;
    int pending = 0;
    if (call->op == RC_STATS && r->status != BIO_OK && !r->sent && (call->hits || call->misses)) {
        /* The pending statistics it carried never left: they are pending again. */
        bio_counters *c = bio_client_counters(self->client);
        atomic_fetch_add(&c->pending_hits, call->hits);
        atomic_fetch_add(&c->pending_misses, call->misses);
    }
    if (r->status == BIO_EDROPPED) {
        result = Py_NewRef(Py_None);  /* its loop is gone: nobody waits; quietly */
    }
    else if (r->status == BIO_OK) {
        if (call->flags & RC_F_AUTOCONNECT) {
            self->connected = 1;  /* connected on the way, as the reference's connect() */
        }
        result = rc_commands[call->op].decode(call, r, &exc, &pending);
    }
    else if (call->op == RC_CONNECT ||
             ((call->flags & RC_F_AUTOCONNECT) && r->status != BIO_EFAILED &&
              !(call->hook.done != NULL && call->op != RC_SET && call->op != RC_SETMANY))) {
        /* As the reference: a method that had to connect first raises the connection
         * failure. (Reads made for a caller with a hook — MultiLevelCache's, which
         * never raise for their L2 — take the method's failure value instead.) */
        result = rc_failure(call, RC_CONNECT, r->err, &exc);
    }
    else {
        result = rc_failure(call, call->op, r->err, &exc);
    }
    if (result != NULL || exc != NULL) {
        PyErr_Clear();  /* a secondary failure while building the answer */
    }
    else if (!pending) {
        exc = PyErr_GetRaisedException();  /* a Python error while converting */
    }
    if (!pending && self->hub != NULL && r->status != BIO_EDROPPED &&
        (call->written != NULL || call->op == RC_CLEAR)) {
        rc_track_written(self, call);  /* (answered or not: it may have been done) */
    }
    if (!pending && call->hook.done != NULL) {
        rc_answer answer;
        long long *pttl;
        if (answer_of(call, r, &answer, &pttl) < 0) {
            PyErr_Clear();
        }
        void (*done)(void *, const rc_answer *, PyObject **, PyObject **) = call->hook.done;
        call->hook.done = NULL;
        call->hook.drop = NULL;  /* done takes the data over */
        done(call->hook.data, &answer, &result, &exc);
        PyMem_Free(pttl);
    }
    if (!pending) {
        if (result == NULL && exc == NULL) {
            exc = PyErr_GetRaisedException();
        }
        int rc = result != NULL ? bruno_aw_complete(aw, result) : bruno_aw_fail(aw, exc);
        if (rc < 0) {
            PyErr_Clear();  /* e.g. the loop closed under a parked task */
        }
    }
    /* The call goes on with the next request (rc_continue took it), or ends here. */
    rc_call *left = r->user;
    r->user = NULL;
    bio_req_free(r);
    if (left != NULL) {
        call_free(left);
    }
}
