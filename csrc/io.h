/* io.h: the background I/O thread (no Python in here).
 *
 * One thread per process multiplexes every Redis connection with epoll. Callers
 * (holding the GIL, but that is their business) hand it requests: RESP bytes for one
 * or more commands plus opaque pointers. Everything submitted since the thread's last
 * pass goes out in one write per connection (automatic pipelining); replies are
 * parsed by hiredis' reader and matched to requests in FIFO order. A finished
 * request is pushed on its bridge's completion queue and the bridge's eventfd is
 * written, once per batch. The thread never dereferences the opaque pointers.
 *
 * Every request has a deadline: a command's reply is due socket_timeout after it is
 * sent, and waiting to be sent (for a connection, within connect_timeout, or for room
 * in the pipeline) is bounded too; a connection that fails fails its in-flight
 * requests; the thread reconnects when a request needs it, backing off after
 * failures. What each
 * resource may cost and who frees it on every path: docs/ARCHITECTURE.md, "Failure
 * model".
 */
#ifndef BRUNO_IO_H
#define BRUNO_IO_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

typedef struct bio_bridge bio_bridge;
typedef struct bio_client bio_client;
typedef struct bio_req bio_req;

/* Outcome of a request. */
enum {
    BIO_OK = 0,        /* every reply arrived (a reply may itself be a Redis error) */
    BIO_ETIMEOUT,      /* no complete answer within socket_timeout */
    BIO_ECONN,         /* could not connect, or the connection failed */
    BIO_ECLOSED,       /* disconnect() was called while it was pending */
    BIO_EDROPPED,      /* set by a bridge: its loop is gone, nobody can await it */
    BIO_EFAILED,       /* could not be sent (BIO_OP_FAIL): err says why */
};

/* What a request asks of the I/O thread. */
enum {
    BIO_OP_CMD = 0,    /* send buf (ncmd commands), collect ncmd replies */
    BIO_OP_CONNECT,    /* complete once connected (or failed) */
    BIO_OP_CLOSE,      /* flush statistics, fail what is pending, close */
    BIO_OP_FAIL,       /* nothing to send: complete at once with BIO_EFAILED and err */
    BIO_OP_LISTEN,     /* tracking: deliver invalidations as BIO_OP_EVENT requests with
                          this one's bridge, user and on_done, until the client closes
                          or another LISTEN replaces it (then it completes) */
    BIO_OP_EVENT,      /* made by the I/O thread: buf holds `ncmd` invalidated keys (u32
                          length, bytes)..., event_flush says "drop them all"; err, if
                          set, why the server refused tracking (told once) */
};

/* A BIO_OP_EVENT's flush: every L2-backed entry is to be dropped (DROP), and (STALE)
 * the reads in flight are not to be promoted (they may have been answered untracked,
 * or before the change). */
#define BIO_FLUSH_DROP 1
#define BIO_FLUSH_STALE 2

#define BIO_ERRLEN 200

struct bio_req {
    bio_req *next;            /* queue link: submit queue, then completion queue */
    bio_client *client;       /* reference held by the request */
    bio_bridge *bridge;       /* reference held by the request: where it completes */
    int op;                   /* BIO_OP_* */
    int ncmd;                 /* commands in buf, replies expected */
    char *buf;                /* RESP bytes (malloc'd, owned; freed once written) */
    size_t len;
    int16_t *slots;           /* NULL, or (Redis Cluster) each command's slot, or
                                 RESP_SLOT_ANY / RESP_SLOT_CROSS (malloc'd, owned; set
                                 by the maker from resp_buf.slots) */
    /* Redis Cluster routing (the I/O thread's): redirects followed, an -ASK to honour
     * at the next send, the deadline no re-send may pass. */
    int redirects;
    int asking;
    double cluster_deadline;
    int retries;              /* -TRYAGAIN / -CLUSTERDOWN: sent again after a pause */
    double retry_at;
    /* Keyless commands go to the primary of this slot (-1: none; the submitter's);
     * next_route is then the lowest slot of the primary after it (primaries ordered
     * by their lowest slot), or -1: the last (set by the I/O thread). */
    int route_slot;
    int next_route;
    int event_flush;          /* BIO_OP_EVENT: BIO_FLUSH_* bits, or 0 (keys) */
    int readonly;             /* reads only (GET, PTTL, EXISTS, MGET): with
                                 read_replicas, a replica may answer (the submitter's) */
    /* A request of several slots (the whole) is sent as parts of one slot each
     * (io_fanout.c): a part's whole, and its commands' places in it (cmd, sub)
     * (owned); the whole's gathering state (owned). I/O thread only. */
    bio_req *whole;
    int *unit_map;
    struct bio_fan *fan;
    void **replies;           /* redisReply *[ncmd] (owned), filled by the thread */
    int nrep;                 /* replies received */
    double deadline;          /* monotonic seconds; set by the I/O thread (route, send) */
    int status;               /* BIO_OK or BIO_E* */
    int sent;                 /* its commands went out (so they may have run) */
    char err[BIO_ERRLEN];     /* message when status != BIO_OK */
    /* The submitter's, opaque to the I/O thread (which never reads them): its data,
     * and the function the loop bridge calls with the finished request. */
    void *user;
    void (*on_done)(bio_req *r);
};

/* A completion queue with an eventfd: one per event loop. */
struct bio_bridge {
    pthread_mutex_t lock;
    bio_req *head, *tail;     /* completed requests, oldest first */
    int efd;                  /* eventfd: readable while completions wait */
    atomic_int refs;
    pid_t pid;                /* process that created it (a forked child makes its own) */
};

/* TLS (io_tls.c). A bio_tls is a client-side TLS context: made on the caller's
 * thread from the files its options name (read at once), then shared read-only by
 * the connections of every client configured with it. */
typedef struct bio_tls bio_tls;

enum { BIO_TLS_VERIFY_NONE = 0, BIO_TLS_VERIFY_REQUIRED = 2 };

typedef struct {
    const char *ca_file;      /* NULL: ca_path, or the system's CA certificates */
    const char *ca_path;      /* a directory of hashed CA certificates, or NULL */
    const char *cert_file;    /* the client's certificate chain (mutual TLS), or NULL */
    const char *key_file;     /* its private key (NULL: in cert_file) */
    const char *key_password; /* the key's password, or NULL */
    size_t key_password_len;
    int verify;               /* BIO_TLS_VERIFY_* */
    int check_hostname;       /* the certificate must name the host (when verifying) */
    int min_version;          /* 0: TLS 1.2; else 0x301 (TLS 1.0) ... 0x304 (TLS 1.3) */
    const char *ciphers;      /* OpenSSL cipher list for TLS <= 1.2, or NULL */
} bio_tls_options;

/* One reference, or NULL with err saying which option, which file and why. */
bio_tls *bio_tls_new(const bio_tls_options *o, char *err, size_t errlen);
void bio_tls_incref(bio_tls *t);
void bio_tls_decref(bio_tls *t);

/* Sentinel (io_sentinel.c): where to ask for the primary of a service. Made on the
 * caller's thread (copies of everything it is given), then shared read-only, reference
 * counted, by the client, its resolver jobs and its watcher thread. */
typedef struct bio_sentinels bio_sentinels;

/* One reference, or NULL (out of memory). hosts[i]:ports[i] are the sentinels, asked
 * in turn; username/password (binary-safe, NULL for none) authenticate to them. */
bio_sentinels *bio_sentinels_new(int n, const char *const *hosts, const int *ports,
                                 const char *service, const char *username,
                                 size_t username_len, const char *password,
                                 size_t password_len);
/* sentinel_ssl: the sentinels are asked over TLS with t (a reference is taken). Only
 * before s is shared. */
void bio_sentinels_set_tls(bio_sentinels *s, bio_tls *t);
void bio_sentinels_incref(bio_sentinels *s);
void bio_sentinels_decref(bio_sentinels *s);

typedef struct {
    char *host;               /* owned copies */
    int port;
    char *unix_path;          /* NULL for TCP */
    char *username;           /* NULL: AUTH with password only (binary-safe: see _len) */
    size_t username_len;
    char *password;           /* NULL: no AUTH */
    size_t password_len;
    int db;
    double connect_timeout;
    double socket_timeout;
    char *stats_key;          /* prefix + "stats" */
    size_t stats_key_len;
    unsigned long long max_reply;  /* what one reply may cost (bytes; see resp_scan) */
    bio_tls *tls;             /* NULL: plaintext; else TLS with it (the client holds a
                                 reference of its own) */
    bio_sentinels *sentinels; /* NULL: host/port (or unix_path) is the server; else the
                                 sentinels name it (host/port unused; the client holds a
                                 reference of its own) */
    int cluster;              /* BIO_CLUSTER_*: whether the server is a cluster node
                                 (io_cluster.c) */
    int nstartup;             /* cluster: more nodes to try, in turn, when host:port
                                 cannot be reached (startup_nodes after the first;
                                 copied, owned by the client's copy) */
    char **startup_hosts;
    int *startup_ports;
    int tracking;             /* a coherent L1's: invalidations tracked (io_track.c) */
    int read_replicas;        /* cluster: reads (GET, PTTL, EXISTS, MGET) go to the slot's
                                 replicas (READONLY), round robin */
} bio_config;

enum {
    BIO_CLUSTER_OFF = 0,      /* a standalone server (cluster=False) */
    BIO_CLUSTER_AUTO,         /* ask at connect (cluster=None): CLUSTER SLOTS in the
                                 handshake; "cluster support disabled" means standalone */
    BIO_CLUSTER_ON,           /* a cluster node, or the connection fails (cluster=True) */
};

/* Local, process-wide counters of a client, read by RedisCache.stats(). */
typedef struct {
    atomic_ullong commands;   /* commands written */
    atomic_ullong batches;    /* write() batches that carried them */
    atomic_ullong errors;     /* requests that failed (timeout, connection) */
    atomic_ullong timeouts;
    atomic_ullong reconnects; /* successful connections after the first */
    atomic_int connected;     /* 1 while a connection is ready */
    /* Cluster (written by the I/O thread, for tests and statistics): the slots the
     * last map served and the nodes it named (0, 0 for a standalone server), and the
     * maps taken (CLUSTER SLOTS answered: at connect, then each refresh). */
    atomic_ullong invalidations;  /* invalidation messages received (tracking) */
    atomic_ullong tracking_losses;  /* times tracking came back after a loss */
    atomic_int tracking;      /* 1 once the server tracks for us */
    atomic_int standalone;    /* cluster=None: the server said it is no cluster node */
    atomic_int cluster_slots;
    atomic_int cluster_nodes;
    atomic_ullong cluster_maps;
    atomic_ullong pending_hits;    /* not yet sent with HINCRBY */
    atomic_ullong pending_misses;
} bio_counters;

double bio_now(void);

/* The current process id, cached (getpid() is a system call) and refreshed in a
 * forked child by a pthread_atfork handler. */
pid_t bio_pid(void);

/* Hand a list of requests (linked through next, oldest first) to the I/O thread in
 * one go: one lock, at most one wake-up. Returns 0, or -1 (errno) with nothing taken. */
int bio_submit_list(bio_req *head, bio_req *tail);

/* Bridges. bio_bridge_new returns one reference (efd created), or NULL (errno). */
bio_bridge *bio_bridge_new(void);
void bio_bridge_incref(bio_bridge *b);
void bio_bridge_decref(bio_bridge *b);
/* Take every completed request (oldest first, linked through next) and reset the
 * eventfd. Called by the loop thread. */
bio_req *bio_bridge_take(bio_bridge *b);

/* Clients. bio_client_new copies cfg (one reference); NULL on allocation failure. */
bio_client *bio_client_new(const bio_config *cfg);
void bio_client_incref(bio_client *c);
void bio_client_decref(bio_client *c);
bio_counters *bio_client_counters(bio_client *c);
pid_t bio_client_pid(bio_client *c);

/* Requests. */
bio_req *bio_req_new(bio_client *c, bio_bridge *b, int op, int ncmd);
void bio_req_free(bio_req *r);  /* frees buffers and replies, drops references */

/* Hand a request to the I/O thread (started on first use, and again in a forked
 * child). Never blocks on the network. Returns 0, or -1 if the thread cannot be
 * started (errno set); the request is then not taken. */
int bio_submit(bio_req *r);

#endif
