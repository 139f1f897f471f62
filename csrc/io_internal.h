/* io_internal.h: what io_engine.c and io_conn.c share (no Python in here).
 *
 * io_engine.c: the thread (its loop, the submit queue, start and fork), the bridges'
 * completion queues, clients and requests, descriptors, name resolution.
 * io_conn.c: one client's connection: its state machine, the in-flight FIFO, the
 * handshake, reading and writing, routing requests, and its timers. */
#ifndef BRUNO_IO_INTERNAL_H
#define BRUNO_IO_INTERNAL_H

#define _GNU_SOURCE
#include "io.h"
#include "clock.h"
#include "cluster_slot.h"
#include "resp.h"
#include "respscan.h"

#include <hiredis/hiredis.h>
#include <netdb.h>
#include <openssl/ssl.h>
#include <pthread.h>
#include <stdatomic.h>

#define READ_CHUNK 65536
#define MAX_READ_PER_PASS (4 * 1024 * 1024)
#define BACKOFF_MIN 0.05
#define BACKOFF_MAX 2.0
/* A connection that stayed ready this long before it dropped was healthy: the next
 * attempt is made at once. One that dropped sooner (a server that closes every
 * connection, a middlebox) makes the next attempt back off. */
#define HEALTHY_AFTER 1.0
#define STATS_FLUSH_EVERY 1.0
/* Commands sent and not yet answered on one connection; further requests wait (in
 * order) for room, which replies make. */
#define MAX_PIPELINE 65536
/* Name resolutions in progress at once, process-wide (one thread each). */
#define MAX_RESOLVERS 32

/* A connection's states: a name resolved (by a thread of its own), a socket connected,
 * with TLS a TLS handshake, then the Redis handshake (AUTH, SELECT, PING): ready. */
enum { ST_IDLE, ST_RESOLVING, ST_CONNECTING, ST_TLS, ST_HANDSHAKE, ST_READY, ST_BACKOFF };
enum { SLOT_USER, SLOT_HANDSHAKE, SLOT_STATS, SLOT_CLUSTER, SLOT_ASKING, SLOT_TRACK };
/* Redirects one request may follow (then the last -MOVED/-ASK is its reply). */
#define CLUSTER_MAX_REDIRECTS 16
/* -TRYAGAIN / -CLUSTERDOWN: the request is sent again after 10 ms, doubling to 200 ms,
 * while its deadline allows. */
#define CLUSTER_RETRY_MIN 0.01
#define CLUSTER_RETRY_MAX 0.2
/* A slot map is asked again at most this often (a burst of -MOVED during resharding
 * asks once). */
#define CLUSTER_REFRESH_MIN 0.1

/* One entry of the in-flight FIFO: the request whose replies come next, or NULL
 * once it was completed early (timeout, disconnect) and its replies are discarded. */
typedef struct {
    bio_req *req;
    int remaining;
    int kind;         /* SLOT_* */
    double deadline;  /* its replies are due by then, or the connection is replaced */
} slot;

/* A name being resolved by a thread of its own: getaddrinfo blocks (a silent DNS
 * server: seconds), and the I/O thread must not. The job is the resolver thread's
 * until it is handed back (E.resolved); then the I/O thread's, which frees it. */
typedef struct resolve_job {
    struct resolve_job *next;
    char *host;
    char port[16];
    int gai;                 /* getaddrinfo's result */
    struct addrinfo *res;    /* owned: its addresses */
    /* Sentinel mode (sentinels != NULL): the sentinels are asked for the primary
     * first (io_sentinel_ask), which host/port then name. */
    bio_sentinels *sentinels;  /* owned reference, or NULL */
    double deadline;         /* monotonic: when to give up asking */
    int first;               /* the sentinel to ask first (the last that answered) */
    int answered;            /* the one that answered, or -1 */
    char err[BIO_ERRLEN];    /* why none answered (then res is NULL) */
} resolve_job;

/* A sentinel client's watcher (io_sentinel.c): a thread subscribed to +switch-master
 * on one sentinel at a time. Shared by the client and the thread (refs); the last to
 * let go frees it. */
typedef struct sentinel_watch sentinel_watch;

struct bio_client {
    atomic_int refs;
    pid_t pid;
    bio_config cfg;
    bio_counters counters;
    /* Everything below belongs to the I/O thread. */
    bio_client *next;            /* engine's list of registered clients */
    int registered;
    int state;                   /* ST_* */
    int fd;
    int want_out;                /* EPOLLOUT registered */
    SSL *ssl;                    /* the connection's TLS session, or NULL (plaintext) */
    int tls_want_out;            /* the TLS handshake waits to write (else to read) */
    int tls_read_wants_out;      /* a read waits to write first (a key update) */
    int tls_write_wants_in;      /* a write waits to read first: no EPOLLOUT until then */
    int tls_broken;              /* a TLS error: no close_notify is sent */
    redisReader *reader;
    resp_scan scan;              /* the cost of the reply being received */
    char *out;                   /* bytes to write: out[pos..len) */
    size_t out_len, out_pos, out_cap;
    size_t out_secret;           /* out[0..out_secret) holds AUTH: wiped once sent */
    slot *ring;                  /* in-flight FIFO */
    size_t r_head, r_count, r_cap;
    bio_req *wait_head, *wait_tail;  /* requests waiting for a connection or for room */
    bio_req *close_req;          /* a CLOSE waiting for the final statistics flush */
    resolve_job *resolving;      /* borrowed identity of our job in progress, or NULL */
    double close_deadline;
    double hs_deadline;          /* resolve + connect + handshake must finish by then */
    double backoff, backoff_until;
    int unreachable;             /* the backoff follows a failed attempt, not a drop */
    int stats_in_flight;         /* a statistics flush awaits its replies */
    unsigned long long stats_hits_sent, stats_misses_sent;  /* what the flush on this
                                    connection carries: a cluster's, given back to its
                                    owner when a redirect answers it */
    double ready_since;
    double next_flush;
    int ever_connected;
    char last_err[BIO_ERRLEN];
    sentinel_watch *watch;       /* owned reference: sentinel mode, once connecting */
    int sentinel_first;          /* the sentinel to ask first */
    /* Cluster (io_cluster.c): cfg.cluster != BIO_CLUSTER_OFF. */
    struct bio_slot_map *map;    /* owned: the last map taken, or NULL */
    int is_cluster;              /* the server said it is a cluster node */
    int map_in_flight;           /* a CLUSTER SLOTS refresh awaits its reply */
    int map_wanted;              /* a refresh is due (a -MOVED was seen) */
    double map_asked;            /* when the last refresh was sent */
    int map_next;                /* the map's node the next attempt goes to, once the
                                    one connected to failed */
    int startup_next;            /* the startup node (0: cfg's own) tried last */
    int startup_left;            /* startup nodes this attempt may still try */
    int keep_deadline;           /* start_connect: the attempt goes on (same deadline) */
    char *first_host;            /* owned: the configured host (cfg.host moves) */
    int first_port;
    /* Cluster routing: a parent (is_cluster) holds one child client per
     * node it sent to (owned references); a child's parent is borrowed (the parent
     * outlives its children's use: every request routed holds the parent). */
    bio_client **children;
    int nchildren, children_cap;
    unsigned replica_turn;       /* read_from_replicas: round robin */
    int stats_wait;              /* a cluster's disconnect() waits for the statistics
                                    key's node to connect, to flush them */
    bio_client *parent;
    bio_req *retry_head, *retry_tail;  /* a parent's requests waiting to be sent again
                                          (-TRYAGAIN, -CLUSTERDOWN), by retry_at */
    int suspect;                 /* a child whose connection failed, not since ready:
                                    while a map names it a primary, the map is asked
                                    again (a failover under way) */
    /* Tracking (io_track.c, cfg.tracking). D, a data client (a cluster's: its nodes): */
    bio_client *tracker;         /* owned: T, its invalidation connection, or NULL */
    long long tracking_id;       /* T's id D's tracking redirects to (0: not on) */
    long long track_on_id;       /* the id a CLIENT TRACKING on in flight names */
    int track_on_in_flight;
    int track_lost;              /* tracking was on and went: a flush once it is back */
    int track_untracked;         /* and D's requests went on meanwhile, untracked */
    int track_flush;             /* gathered: BIO_FLUSH_* bits */
    char *track_keys;            /* gathered: invalidated keys (u32 length, bytes)... */
    size_t track_keys_len, track_keys_cap, track_nkeys;
    int track_hold;              /* ready, requests held until tracking is asked */
    double track_hold_until;
    int track_on_void;           /* the one in flight names a lost T */
    int track_refused;           /* the last CLIENT TRACKING on was refused */
    double track_retry_at;       /* not asked again before */
    char track_err[BIO_ERRLEN];  /* the sink's: why the server refused tracking */
    int track_err_new;           /* the sink's: to be told to the loop */
    bio_req *listen;             /* owned: the BIO_OP_LISTEN events are made after */
    /* ... and T, the tracker: */
    int push;                    /* replies after the handshake are messages */
    long long track_id;          /* its CLIENT ID */
    double track_ping_at;        /* its next PING (quiet peers are asked) */
    bio_client *owner;           /* borrowed: D (cleared when D lets go of it) */
};


typedef struct {
    pthread_mutex_t lock;
    bio_req *head, *tail;        /* submitted, not yet taken by the thread */
    resolve_job *resolved;       /* finished resolutions, not yet taken */
    int wake_pending;
    int wake_fd;
    int epfd;
    int started;
    pid_t pid;
    pthread_t thread;
    atomic_int resolvers;        /* resolver threads running */
    bio_client *clients;         /* I/O thread only */
} bio_engine;

extern bio_engine E;


/* io_engine.c */
void io_complete(bio_req *r, int status, const char *msg);  /* to its bridge */
void io_fd_register(int fd);
void io_fd_close(int fd);
void io_wake_unlock(void);  /* E.lock held: wake the thread, unlock */
int io_start_resolving(bio_client *c, char *err, size_t errlen);

/* io_conn.c */
void io_connect_to(bio_client *c, int gai, struct addrinfo *res, double now);
void io_connect_ready(bio_client *c, double now);
void io_route(bio_req *r, double now);
double io_client_timers(bio_client *c, double now);  /* when it next needs a pass */
void io_flush_out(bio_client *c, double now);
void io_do_read(bio_client *c, double now);
void io_close_socket(bio_client *c);
void io_append_stats_flush(bio_client *c, double now);
void io_tls_step(bio_client *c, double now);  /* the TLS handshake goes on */
void io_connection_failed(bio_client *c, const char *msg, double now);

/* io_sentinel.c (no Python, like the rest). */
void io_sentinel_ask(resolve_job *j);  /* on the resolver thread: may block until
                                          j->deadline; fills host/port/res or err */
void io_sentinel_resolved(bio_client *c, resolve_job *j, double now);  /* I/O thread */
int io_sentinel_check_role(bio_client *c, void *reply, char *err, size_t errlen);
void io_sentinel_handshake(bio_client *c, resp_buf *b);  /* appends ROLE */
int io_sentinel_readonly(bio_client *c, void *reply);    /* a -READONLY reply */
const char *io_sentinel_service(bio_client *c);
void io_sentinel_watch_start(bio_client *c);  /* I/O thread; idempotent */
void io_sentinel_watch_stop(bio_client *c);   /* any thread owning c; idempotent */
void io_sentinel_poll(bio_client *c, double now);  /* a +switch-master heard? */

/* io_cluster.c: Redis Cluster (docs/ARCHITECTURE.md, "Redis Cluster: routing"). The
 * slot map: which node serves each of the 16384 slots, and the nodes (primaries and
 * their replicas), as a CLUSTER SLOTS reply gave them; the I/O thread's only. */
#define BIO_CLUSTER_HOSTLEN 255     /* a host name or address, at most */
#define CLUSTER_EXTRA_CHILDREN 16   /* node connections beyond the map's nodes */
#define BIO_CLUSTER_MAX_NODES 4096  /* nodes one map may name (Redis: 1000 advised) */
#define BIO_NO_NODE 0xFFFF

typedef struct {
    char *host;                   /* owned, NUL-terminated */
    int port;
    int primary;                  /* -1: a primary; else the index of its primary */
} bio_cluster_node;

typedef struct bio_slot_map {
    uint16_t slot_node[BIO_CLUSTER_SLOTS];  /* index into nodes, or BIO_NO_NODE */
    bio_cluster_node *nodes;      /* owned */
    int nnodes, cap;
    int served;                   /* slots with a node */
} bio_slot_map;

bio_slot_map *io_slot_map_new(void);  /* empty (every slot unserved), or NULL */
void io_slot_map_free(bio_slot_map *m);
int io_slot_map_find(const bio_slot_map *m, const char *host, int port);  /* or -1 */
int io_slot_map_add(bio_slot_map *m, const char *host, size_t hostlen, int port,
                    int primary);  /* index (new or found), or -1 */
int io_slot_map_node(const bio_slot_map *m, unsigned slot);  /* primary index, or -1 */
/* Primaries ordered by their lowest slot: the lowest slot of the one after slot's
 * primary, or -1 (the last, or slot unserved). */
int io_cluster_next_primary(const bio_slot_map *m, int slot);
/* A CLUSTER SLOTS reply (a redisReply) as a new map, or NULL with err. asked_host:
 * the host the reply came from (an empty ip in it means that one). Malformed
 * replies, slots listed twice, a node both primary and replica, more than
 * BIO_CLUSTER_MAX_NODES nodes: refused. */
bio_slot_map *io_cluster_parse_slots(const void *reply, const char *asked_host, char *err,
                                     size_t errlen);
/* -MOVED slot host:port: the slot is that node's (a primary from now on, added if
 * new). Its index, or -1. */
int io_cluster_apply_moved(bio_slot_map *m, unsigned slot, const char *host, int port);

enum { IO_REDIRECT_MOVED = 1, IO_REDIRECT_ASK, IO_REDIRECT_TRYAGAIN,
       IO_REDIRECT_CLUSTERDOWN };
typedef struct {
    int kind;                     /* IO_REDIRECT_* */
    unsigned slot;                /* MOVED, ASK */
    char host[BIO_CLUSTER_HOSTLEN + 1];  /* MOVED, ASK ("" : the node that answered) */
    int port;
} io_redirect;
/* An error reply's text (without the '-'): 0 and *out for MOVED / ASK / TRYAGAIN /
 * CLUSTERDOWN, -1 for any other error (or a malformed redirect). */
int io_cluster_parse_redirect(const char *s, size_t len, io_redirect *out);
/* The connection's side (io_conn.c calls these; c->cfg.cluster != BIO_CLUSTER_OFF). */
void io_cluster_handshake(bio_client *c, resp_buf *b);  /* appends CLUSTER SLOTS */
/* The handshake's CLUSTER SLOTS reply: 0 (a map taken, or a standalone server with
 * BIO_CLUSTER_AUTO), or -1 with err (the attempt fails). */
int io_cluster_handshake_reply(bio_client *c, void *reply, char *err, size_t errlen);
/* A refresh's reply: the map replaced if it parses, else the old one kept. */
void io_cluster_map_reply(bio_client *c, void *reply);
/* A user request's reply: a -MOVED asks for a refresh (sent by io_cluster_poll). */
void io_cluster_saw_reply(bio_client *c, void *reply);
/* Ready connection: send a refresh that is due and allowed (rate, one at a time). */
void io_cluster_poll(bio_client *c, double now);
void io_cluster_reset(bio_client *c);  /* the connection closed: nothing in flight */
/* Routing (io_conn.c): a parent's request with slots goes to the child of its slot's
 * node; a child's finished request that was redirected goes again. */
int io_cluster_routes(bio_client *c, bio_req *r);  /* send_request must dispatch */
void io_cluster_quiet_children(bio_client *parent);
/* io_fanout.c: a request of several slots sent as one part per slot (dispatched),
 * and a part's completion gathered into it (completing it with its last part). */
typedef struct bio_fan bio_fan;
void io_fanout(bio_client *parent, bio_req *r, double now);
void io_fanout_part_done(bio_req *part, int status, const char *msg);
void io_cluster_dispatch(bio_client *parent, bio_req *r, double now);
int io_cluster_redirected(bio_client *child, bio_req *r, double now);  /* 1: re-sent */
void io_cluster_close_children(bio_client *parent);  /* disconnect(): all of them */
/* A cluster's own connection failed: the next attempt goes to the map's next node
 * (cfg.host/port become its), and the map is to be asked there. */
void io_cluster_next_node(bio_client *c);
/* Before any map, an attempt that failed: its next startup node (cfg.host/port become
 * it) if any is left to try in this attempt: 1, else 0. */
int io_cluster_next_startup(bio_client *c);
int io_cluster_copy_startup(bio_config *dst, const bio_config *src);  /* 0, or -1 */
void io_cluster_free_startup(bio_config *cfg);
/* io_cluster.c: the child of host:port (made and registered with the engine if new),
 * or NULL (out of memory, or already as many as the map's nodes + CLUSTER_EXTRA_
 * CHILDREN). */
bio_client *io_cluster_child(bio_client *parent, const char *host, int port);
/* The parent is let go by the I/O thread: its children are released (each then let go
 * once idle, like any client nobody holds). */
void io_cluster_release_children(bio_client *parent);
void io_cluster_free(bio_client *c);   /* the client is let go: its map */

/* Cut buf (ncmd RESP arrays of bulk strings, as resp.c builds them) into its commands:
 * offsets[k] is where command k starts, offsets[ncmd] == len. 0, or -1 if buf is not
 * exactly that. */
int io_cluster_commands(const char *buf, size_t len, size_t *offsets, int ncmd);

/* io_track.c: invalidation tracking (see its header). */
void io_track_handshake(bio_client *t, resp_buf *b);  /* T's: CLIENT ID, SUBSCRIBE */
/* T's handshake replies to those two (remaining 2, 1): 0, or -1 with err. */
int io_track_handshake_reply(bio_client *t, const void *reply, int remaining, char *err,
                             size_t errlen);
void io_track_message(bio_client *t, void *reply);  /* a reply of T once ready (taken) */
void io_track_poll(bio_client *d, double now);      /* D's timers: T up, tracking on */
int io_track_wanted(const bio_client *c);  /* c is a D whose tracking is asked for */
int io_track_reconnect(bio_client *c);  /* D must connect again: tracking lost, listened */
/* D ready, or listened to: tracking asked now, or its requests held until it is. */
void io_track_begin(bio_client *d, double now);
double io_track_hold_check(bio_client *d, double now);  /* next time due, or INFINITY */
void io_track_map_taken(bio_client *parent);  /* a cluster's new map: lost nodes gone? */
int io_track_is_message(const void *reply);  /* an invalidation message's shape? */
double io_track_ping(bio_client *t, double now);  /* T's timers: PING when due; next */
/* A reply to D's SLOT_TRACK entry (taken). */
int io_track_on_reply(bio_client *d, void *reply, int remaining, double now);
/* D's (d_closed) or T's connection went: tracking is off. */
void io_track_lost(bio_client *d, int d_closed);
void io_track_free(bio_client *d);  /* D is freed: its keys, its reference to T */
void io_track_listen(bio_client *d, bio_req *r);    /* a LISTEN: kept (the last one) */
void io_track_deliver(bio_client *d);  /* gathered keys/flush → an EVENT, if listened */
void io_track_unlisten(bio_client *d, int status);  /* its LISTEN completes */
void io_deliver(bio_req *r);  /* io_engine.c: to its bridge as it is (an EVENT) */
/* io_conn.c, for io_track.c */
void io_start_connect(bio_client *c, double now);
void io_pump_waiting(bio_client *c, double now);  /* what waits, sent (room allowing) */
/* Closed, what was on it failed (BIO_ECLOSED), idle, no backoff: a new start. */
void io_client_reset(bio_client *c);
int io_send_slot(bio_client *c, const char *buf, size_t len, int ncmd, int kind,
                 double deadline);

/* io_tls.c: a connection's TLS session (c->ssl) on its connected socket. Each call
 * returns at once; err gets the reason of a failure. */
int io_tls_begin(bio_client *c, char *err, size_t errlen);      /* 0 or -1 */
int io_tls_handshake(bio_client *c, char *err, size_t errlen);  /* 1 done, 0 waits, -1 */
/* Bytes read / written (> 0), 0 when it must wait, -1 when closed or failed. */
ssize_t io_tls_read(bio_client *c, char *buf, size_t len, char *err, size_t errlen);
ssize_t io_tls_write(bio_client *c, const char *buf, size_t len, char *err, size_t errlen);
int io_tls_pending(bio_client *c);  /* decrypted bytes wait inside OpenSSL */
void io_tls_end(bio_client *c);     /* close_notify if the session is sound; free it */

/* io_tls.c: blocking TLS sessions for the sentinel threads (never the I/O thread), on a
 * connected non-blocking socket, each call waiting with poll() until `deadline`
 * (bio_now()). After a failure (*broken set) the session is only closed. */
SSL *io_tls_blocking_connect(bio_tls *t, int fd, const char *host, double deadline,
                             char *err, size_t errlen);  /* handshake done, or NULL */
/* Bytes read (> 0), 0 when the deadline passed first (the session stays usable), or -1. */
ssize_t io_tls_blocking_read(SSL *ssl, bio_tls *t, const char *host, char *buf, size_t len,
                             double deadline, int *broken, char *err, size_t errlen);
int io_tls_blocking_write(SSL *ssl, bio_tls *t, const char *host, const char *buf,
                          size_t len, double deadline, int *broken, char *err,
                          size_t errlen);  /* 0, or -1 (*broken set) */
void io_tls_blocking_close(SSL *ssl, int broken);  /* close_notify unless broken; free */

#endif
