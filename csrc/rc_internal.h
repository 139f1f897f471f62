/* rc_internal.h: what the files of RedisCache share.
 *
 *   rediscache.c    the type: options (__init__, from_url), attributes, the methods
 *                   (each a line: its arguments, then rc_start)
 *   rc_commands.c   the command table: per operation, how its commands are built, how
 *                   its replies are decoded, what its failure gives (one entry each)
 *   rc_request.c    request plumbing: the client, the running loop's bridge, starting
 *                   (now, or deferred until awaited), continuing multi-step operations,
 *                   and completing on the awaiting loop (rc_done), hooks included
 *
 * Layers call downward only: multilevel.c -> rediscache.h -> (these) -> io.h. */
#ifndef BRUNO_RC_INTERNAL_H
#define BRUNO_RC_INTERNAL_H

#include "awaitable.h"
#include "io.h"
#include "rediscache.h"
#include "resp.h"

#include <hiredis/hiredis.h>

typedef struct {
    PyObject_HEAD
    bio_client *client;          /* owned C reference, or NULL before first use */
    PyObject *host;              /* owned str */
    int port;
    int db;
    PyObject *password;          /* owned str or None */
    PyObject *username;          /* owned str or None */
    PyObject *unix_socket_path;  /* owned str or None */
    PyObject *prefix;            /* owned str */
    PyObject *prefix_bytes;      /* owned bytes: prefix in UTF-8 */
    PyObject *default_ttl;       /* owned: None or a number, as given */
    PyObject *max_connections;   /* owned: as given (requests are multiplexed) */
    PyObject *pool_size;         /* owned: as given, or None */
    PyObject *max_overflow;      /* owned: as given, or None */
    double socket_timeout;       /* seconds; INFINITY for None */
    double connect_timeout;
    unsigned long long max_reply;  /* max_reply_bytes */
    bio_tls *tls;                /* owned C reference, or NULL: plaintext */
    PyObject *sentinels;         /* owned tuple of (host, port) tuples, or None */
    PyObject *service_name;      /* owned str, or None */
    PyObject *sentinel_username; /* owned str, or None */
    PyObject *sentinel_password; /* owned str, or None */
    bio_sentinels *sentinel_cfg; /* owned C reference, or NULL: no sentinels */
    int sentinel_ssl;            /* the sentinels are asked over TLS */
    int cluster_mode;            /* BIO_CLUSTER_OFF / AUTO (cluster=None) / ON */
    PyObject *startup_nodes;     /* owned tuple of (host, port) tuples, or None */
    int read_from_replicas;
    int connected;               /* connect() succeeded and no disconnect() since */
    unsigned long long hits, misses;  /* this process's counts */
    Py_ssize_t in_flight;        /* submitted, not yet finished (delivered) */
    PyObject *last_bridge;       /* owned LoopBridge of the last loop used, or NULL */
    PyObject *rl_holder;         /* owned, or NULL: asyncio's running-loop holder seen
                                    with last_bridge (identity check; see rc_bridge) */
    struct rc_hub *hub;          /* owned reference, or NULL: its listeners (rc_track.c) */
    PyObject *weakreflist;
    bruno_state *st;             /* borrowed */
} RedisCache;

/* Flags of a call. */
enum {
    RC_F_AUTOCONNECT = 1 << 0,   /* the cache was not connected when called */
    RC_F_ENTER = 1 << 1,         /* connect() for __aenter__: gives the cache */
    RC_F_WITH_TTL = 1 << 2,      /* get/get_many: each key's PTTL follows (for a hook) */
    RC_F_FIRST = 1 << 3,         /* the first step of clear()/get_stats() */
    RC_F_LAST = 1 << 4,          /* the last step of clear() (DEL only) */
    RC_F_NODE = 1 << 5,          /* a SCAN loop's first step on the next primary
                                    (DBSIZE + SCAN 0) */
};

/* Where a SCAN loop (clear(), get_stats()'s count) is: see rc_commands.c. */
typedef struct {
    long long left;              /* steps it may still take */
    unsigned long long rev;      /* its last cursor, bits reversed */
} scan_pos;

/* One call of a RedisCache operation, from the method to the awaitable's result.
 * Owned by its request (bio_req.user) while one is out; a multi-step operation hands
 * it from one request to the next. */
typedef struct {
    RedisCache *cache;           /* owned */
    BrunoAwaitable *aw;          /* owned once the request is submitted (a deferred
                                    request is held by its awaitable instead) */
    int op;                      /* rc_op */
    int flags;                   /* RC_F_* */
    rc_hook hook;                /* a C caller's hook (hook.done NULL: none) */
    PyObject *subject;           /* owned or NULL: what the error log names (the key, or
                                    its ascii()), or get_many's tuple of keys */
    /* clear() and get_stats() */
    scan_pos scan;
    unsigned long long hits, misses;  /* get_stats: the pending increments it carries
                                         (given back if never sent), then the totals */
    long long size;              /* get_stats: keys counted so far */
    int route;                   /* clear(), get_stats(): in a cluster, the SCAN goes to
                                    the primary of this slot (-1: not routed) */
    PyObject *written;           /* owned or NULL: set/delete's key, set_many's flat
                                    items, when the cache has listeners to tell */
} rc_call;

/* The arguments of a method, as the command table's builders take them (borrowed;
 * NULL where the operation has none). */
typedef struct {
    PyObject *key;
    PyObject *value;
    PyObject *ttl;
    PyObject *items;             /* get_many: tuple of keys; set_many: flat (k, v, ...) */
} rc_args;

/* What a builder made of its call. */
typedef struct {
    PyObject *ready;             /* owned or NULL: the result is known without Redis */
    PyObject *raise;             /* owned or NULL: the call fails at once with this */
    int unsendable;              /* a key could not become text: fail with `why` */
    char why[BIO_ERRLEN];
} rc_built;

/* What a failed call gives (the reference's error semantics). */
enum { RC_FAIL_NONE, RC_FAIL_FALSE, RC_FAIL_DICT, RC_FAIL_RAISE, RC_FAIL_ERROR_DICT };

/* One operation of the command table. */
typedef struct {
    int bio_op;                  /* BIO_OP_CMD, BIO_OP_CONNECT, BIO_OP_CLOSE */
    int fail;                    /* RC_FAIL_* */
    const char *log;             /* the error log, NULL for none */
    int logs_key;                /* the log names the call's subject first ("Error
                                    getting key %s: %s"), else the error only */
    const char *raise;           /* RC_FAIL_RAISE: the CacheError's prefix */
    /* Append the call's commands to b: 0, or -1 with an exception; a result known at
     * once, a failure at once, or an unsendable key are said in *built. */
    int (*build)(rc_call *call, const rc_args *args, resp_buf *b, rc_built *built);
    /* Every reply arrived: the result (new reference), or NULL with *exc (or an
     * exception); *pending = 1 when the call went on with a follow-up request. */
    PyObject *(*decode)(rc_call *call, bio_req *r, PyObject **exc, int *pending);
} rc_command;

extern const rc_command rc_commands[RC_NOPS];

/* rc_commands.c */
int rc_ttl_option(RedisCache *self, PyObject *ttl, int *mode, long long *amount);
/* The failure result of a call, as the table's entry for `op` says (the call's own,
 * or RC_CONNECT for a method that had to connect first): logged, then a new
 * reference, or NULL with *exc set (RC_FAIL_RAISE). `what` may be cut inside a UTF-8
 * sequence. */
PyObject *rc_failure(rc_call *call, int op, const char *what, PyObject **exc);
/* CacheError(prefix + detail), an instance (new reference). */
PyObject *rc_error(RedisCache *self, const char *prefix, const char *detail);
/* Count a get's hit or miss (this process, and the next statistics flush). */
void rc_count(RedisCache *self, int hit);

/* rediscache.c: a str option as a C string for the OS or OpenSSL (no NUL inside);
 * None gives NULL. 0, or -1 with ValueError naming it. */
int rc_utf8_option(PyObject *v, const char *what, const char **out, Py_ssize_t *len);

/* rc_tls.c: the TLS keyword arguments, in this order (borrowed, NULL if omitted). */
enum {
    RC_TLS_SSL, RC_TLS_CA_CERTS, RC_TLS_CA_PATH, RC_TLS_CERTFILE, RC_TLS_KEYFILE,
    RC_TLS_PASSWORD, RC_TLS_CERT_REQS, RC_TLS_CHECK_HOSTNAME, RC_TLS_MIN_VERSION,
    RC_TLS_CIPHERS, RC_TLS_NOPTS
};
/* Check them all; with ssl true, *out is a new TLS context (its files read now); with
 * for_sentinels (sentinel_ssl), *sentinel_out is a reference to it too, or, with ssl
 * off, to a context of the sentinels' own made from the same options. 0, or -1 with
 * TypeError / ValueError (naming the option and the file). */
int rc_tls_options(PyObject *const opt[RC_TLS_NOPTS], int unix_socket, int for_sentinels,
                   bio_tls **out, bio_tls **sentinel_out);

/* rc_sentinel.c: the Sentinel keyword arguments, in this order (borrowed, NULL if
 * omitted). */
enum { RC_SN_SENTINELS, RC_SN_SERVICE, RC_SN_USERNAME, RC_SN_PASSWORD, RC_SN_NOPTS };
/* Check them all (has_address: host, port or unix_socket_path was given); with
 * sentinels, *list is a new tuple of (host, port) tuples and *out a new reference.
 * 0, or -1 with TypeError / ValueError. */
int rc_sentinel_options(PyObject *const opt[RC_SN_NOPTS], int has_address, PyObject **list,
                        bio_sentinels **out);

/* rc_cluster.c: the Cluster keyword arguments, in this order (borrowed, NULL if
 * omitted), and what they make. */
enum { RC_CL_CLUSTER, RC_CL_STARTUP, RC_CL_REPLICAS, RC_CL_NOPTS };
typedef struct {
    int mode;                    /* BIO_CLUSTER_OFF / AUTO / ON */
    PyObject *nodes;             /* new tuple of (host, port) tuples, or NULL */
    int replicas;                /* read_from_replicas */
} rc_cluster_cfg;
/* Check them against each other and the address options (host/port given, a unix
 * socket, sentinels, db). 0, or -1 with TypeError / ValueError. */
int rc_cluster_options(PyObject *const opt[RC_CL_NOPTS], int has_address, int has_unix,
                       int has_sentinels, int db, rc_cluster_cfg *out);

/* rc_sentinel.c: a list of (host, port) pairs (sentinels=, startup_nodes=; `each` names
 * one in messages) as a new tuple of (str, int) tuples, 1 to max of them; or NULL with
 * TypeError / ValueError. */
PyObject *rc_address_list(PyObject *v, const char *option, const char *each, int max);

/* rc_track.c: a write of this process through the cache (its call ends): the other
 * listeners hear of it (the server does not tell this connection's own writes). */
void rc_track_written(RedisCache *self, rc_call *call);
int rc_track_wants(RedisCache *self, int op);  /* keep the call's written keys? */
void rc_track_release(RedisCache *self);       /* the cache goes: its hub */

/* rc_request.c */
bio_client *rc_client(RedisCache *self);
/* The bridge of the running loop (borrowed), or NULL: *no_loop set when no loop runs
 * (no exception), else an exception. */
PyObject *rc_bridge(RedisCache *self, int *no_loop);
/* A command buffer for self's requests: it records each command's slot when the cache
 * may be a Redis Cluster's (cluster=None or True). */
void rc_buf_init(RedisCache *self, resp_buf *b);
/* Make a call of `op` and start it; returns its awaitable (new reference), or NULL
 * with an exception. Takes the hook over (its drop runs if no request is made). */
PyObject *rc_start(RedisCache *self, int op, int flags, const rc_args *args,
                   const char *qualname, const rc_hook *hook);
/* A multi-step operation's next request, with the commands in b (taken), carrying
 * the call on (r, the finished request, lets go of it). 0, or -1 with an exception. */
int rc_continue(bio_req *r, int flags, resp_buf *b);

#endif
