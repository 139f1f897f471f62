/* io_track.c: server-assisted invalidation for a coherent L1 (see docs/ARCHITECTURE.md
 * "Coherent L1: the invalidation path"). I/O thread only.
 *
 * A data client D with cfg.tracking owns a *tracker* T: a client of the same server
 * whose handshake is [AUTH], PING, CLIENT ID, SUBSCRIBE __redis__:invalidate, and
 * whose replies after it are messages, not answers (T->push). Once T is ready and
 * knows its id, D sends CLIENT TRACKING on REDIRECT <id> BCAST PREFIX <prefix> NOLOOP
 * (a SLOT_TRACK entry); from its +OK on, every write under the prefix by another
 * connection comes to T as ["message", "__redis__:invalidate", [keys]] (nil: a flush
 * of the database). Keys are gathered on D (track_keys: length-prefixed texts) and
 * a flush noted (track_flush); a loss of either connection (or of D's tracking) is a
 * flush too, noted when tracking is back, since what happened meanwhile is unknown.
 * What was gathered goes to the loop as a BIO_OP_EVENT request made after the
 * client's BIO_OP_LISTEN (its bridge, user, on_done), once per pass of the I/O
 * thread at most: never one per key.
 *
 * In a cluster every node's connection (a child) is a D with its own T on that node
 * (REDIRECT names a client of the same server); what they gather goes to the parent,
 * the *sink*, which holds the LISTEN. The parent's own connection does not track.
 *
 * A D that became ready while tracking is wanted and not on holds its requests
 * (track_hold) until CLIENT TRACKING on is sent ahead of them, so that what it reads is
 * covered from the first reply; the hold ends anyway when T cannot connect, after
 * connect_timeout, or just before a held request's deadline (then as after a loss: a
 * flush once tracking is on). */
#include "io_internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TRACK_CHANNEL "__redis__:invalidate"
#define TRACK_KEYS_MAX (64u << 20)  /* bytes of keys gathered before a flush instead */
#define TRACK_RETRY 1.0             /* seconds between CLIENT TRACKING tries once refused */
#define TRACK_PING_EVERY 10.0       /* a quiet tracker is asked PING (a dead peer seen) */
#define TRACK_HOLD_MARGIN 0.005     /* a held request is let go this long before its deadline */

int
io_track_wanted(const bio_client *c)
{
    if (c->parent != NULL) {
        return c->parent->cfg.tracking;
    }
    return c->cfg.tracking && !c->is_cluster && !c->push;
}

/* Where D's invalidations are gathered and delivered: a node's at its cluster's. */
static bio_client *
sink_of(bio_client *d)
{
    return d->parent != NULL ? d->parent : d;
}

int
io_track_reconnect(bio_client *c)
{
    /* A listened-to D whose tracking was lost comes back by itself: until it does, the
     * L1 may serve what others changed meanwhile (nothing else may use this
     * connection: L1 hits do not). */
    if (!io_track_wanted(c) || !c->track_lost || c->close_req != NULL ||
        sink_of(c)->listen == NULL) {
        return 0;
    }
    /* (a cluster's node the map no longer names: its slots are served elsewhere) */
    return c->parent == NULL || c->parent->map == NULL ||
           io_slot_map_find(c->parent->map, c->cfg.host, c->cfg.port) >= 0;
}

static void
keys_reset(bio_client *d)
{
    free(d->track_keys);
    d->track_keys = NULL;
    d->track_keys_len = d->track_keys_cap = 0;
    d->track_nkeys = 0;
}

/* Every L2-backed entry is to be dropped; `stale`: and the reads in flight are not to
 * be promoted (they may have been answered before the change). Keys gathered are
 * dropped with the rest, their reads' staleness kept. */
static void
flush_note(bio_client *d, int stale)
{
    if (d->track_nkeys > 0) {
        stale = 1;
    }
    keys_reset(d);
    d->track_flush |= BIO_FLUSH_DROP | (stale ? BIO_FLUSH_STALE : 0);
}

/* A key invalidated: its text appended (u32 length, bytes), or, past the bound, the
 * keys dropped for a flush (what they would have dropped, and more). */
static void
keys_add(bio_client *d, const char *key, size_t len)
{
    if (d->track_flush) {
        return;  /* (a flush drops them all anyway) */
    }
    size_t need = d->track_keys_len + 4 + len;
    if (need > TRACK_KEYS_MAX || len > UINT32_MAX) {
        flush_note(d, 1);
        return;
    }
    if (need > d->track_keys_cap) {
        size_t cap = d->track_keys_cap ? d->track_keys_cap : 256;
        while (cap < need) {
            cap *= 2;
        }
        char *buf = realloc(d->track_keys, cap);
        if (buf == NULL) {
            flush_note(d, 1);  /* (out of memory: dropping everything is safe) */
            return;
        }
        d->track_keys = buf;
        d->track_keys_cap = cap;
    }
    uint32_t n = (uint32_t)len;
    memcpy(d->track_keys + d->track_keys_len, &n, 4);
    memcpy(d->track_keys + d->track_keys_len + 4, key, len);
    d->track_keys_len = need;
    d->track_nkeys++;
}

void
io_track_lost(bio_client *d, int d_closed)
{
    if (d->tracking_id != 0 || d->track_on_in_flight) {
        d->track_lost = 1;  /* (told as a flush once tracking is back) */
    }
    /* D's own connection gone, what it read went with it (what comes next waits for
     * tracking: the hold); T's gone, D goes on reading untracked meanwhile. */
    d->track_untracked = d_closed ? 0 : d->track_lost;
    d->tracking_id = 0;
    if (d_closed) {
        d->track_on_in_flight = d->track_on_void = 0;  /* (its reply will not come) */
    }
    else if (d->track_on_in_flight) {
        d->track_on_void = 1;  /* (its +OK names the lost T: it means nothing) */
    }
}

/* ------------------------------------------------------------------ the tracker */

void
io_track_handshake(bio_client *t, resp_buf *b)
{
    if (!t->push) {
        return;
    }
    const char *id[2] = {"CLIENT", "ID"};
    size_t idlen[2] = {6, 2};
    resp_command(b, 2, id, idlen);
    const char *sub[2] = {"SUBSCRIBE", TRACK_CHANNEL};
    size_t sublen[2] = {9, sizeof TRACK_CHANNEL - 1};
    resp_command(b, 2, sub, sublen);
}

int
io_track_handshake_reply(bio_client *t, const void *reply, int remaining, char *err,
                         size_t errlen)
{
    const redisReply *r = reply;
    if (remaining == 2) {  /* CLIENT ID */
        if (r->type != REDIS_REPLY_INTEGER || r->integer <= 0) {
            snprintf(err, errlen, "CLIENT ID: %.*s", r->type == REDIS_REPLY_ERROR
                     ? (int)(r->len > 80 ? 80 : r->len) : 14,
                     r->type == REDIS_REPLY_ERROR ? r->str : "not an integer");
            return -1;
        }
        t->track_id = r->integer;
        return 0;
    }
    /* SUBSCRIBE: ["subscribe", channel, 1] */
    if (r->type != REDIS_REPLY_ARRAY || r->elements != 3 ||
        r->element[0]->type != REDIS_REPLY_STRING || r->element[0]->len != 9 ||
        memcmp(r->element[0]->str, "subscribe", 9) != 0) {
        snprintf(err, errlen, "SUBSCRIBE %s: unexpected reply", TRACK_CHANNEL);
        return -1;
    }
    return 0;
}

void
io_track_message(bio_client *t, void *reply)
{
    redisReply *r = reply;
    bio_client *d = t->owner != NULL ? sink_of(t->owner) : NULL;
    if (d != NULL && io_track_is_message(r)) {
        redisReply *keys = r->element[2];
        atomic_fetch_add(&d->counters.invalidations, 1);
        if (keys->type == REDIS_REPLY_ARRAY) {
            for (size_t i = 0; i < keys->elements; i++) {
                if (keys->element[i]->type == REDIS_REPLY_STRING) {
                    keys_add(d, keys->element[i]->str, keys->element[i]->len);
                }
            }
        }
        else {
            flush_note(d, 1);  /* nil: FLUSHDB / FLUSHALL */
        }
    }
    freeReplyObject(reply);
}

/* T, made (and registered with the engine) on first need: D's settings and current
 * address, db 0, no cluster, no sentinels of its own (D's address is what they
 * named). NULL: out of memory. */
static bio_client *
tracker_of(bio_client *d)
{
    if (d->tracker != NULL) {
        return d->tracker;
    }
    bio_config cfg = d->cfg;
    cfg.db = 0;
    cfg.sentinels = NULL;
    cfg.cluster = BIO_CLUSTER_OFF;
    cfg.nstartup = 0;
    cfg.tracking = 0;
    bio_client *t = bio_client_new(&cfg);
    if (t == NULL) {
        return NULL;
    }
    t->push = 1;
    t->owner = d;
    t->registered = 1;
    bio_client_incref(t);  /* the engine's */
    bio_client **pp = &E.clients;
    while (*pp != NULL) {
        pp = &(*pp)->next;
    }
    t->next = NULL;
    *pp = t;
    d->tracker = t;  /* (D's reference: bio_client_new's) */
    return t;
}

/* ------------------------------------------------------------------ D's side */

/* What D must do for its tracking now (from its timers, ready or not). */
void
io_track_poll(bio_client *d, double now)
{
    if (d->parent == NULL && d->is_cluster) {
        for (int i = 0; i < d->nchildren; i++) {  /* (a cluster: its nodes track) */
            io_track_poll(d->children[i], now);
        }
        return;
    }
    if (!io_track_wanted(d) || d->close_req != NULL || d->state != ST_READY) {
        return;
    }
    bio_client *t = tracker_of(d);
    if (t == NULL) {
        return;
    }
    if (d->cfg.unix_path == NULL && d->cfg.host != NULL && t->cfg.host != NULL &&
        (t->cfg.port != d->cfg.port || strcmp(t->cfg.host, d->cfg.host) != 0)) {
        /* D moved (a Sentinel failover, a cluster parent's next node): T follows, and
         * what it heard from the old server is no guide (a loss: a flush). */
        char *host = strdup(d->cfg.host);
        if (host == NULL) {
            return;
        }
        io_client_reset(t);
        free(t->cfg.host);
        t->cfg.host = host;
        t->cfg.port = d->cfg.port;
        io_track_lost(d, 1);
    }
    if (t->state == ST_IDLE) {
        io_start_connect(t, now);  /* (again after a loss: D is in use) */
        return;
    }
    if (t->state != ST_READY || d->track_on_in_flight || d->tracking_id == t->track_id ||
        now < d->track_retry_at) {
        return;
    }
    /* T is up with an id D does not redirect to yet (first time, or T reconnected):
     * (re)start tracking towards it. */
    const char *prefix = d->cfg.stats_key;
    size_t plen = d->cfg.stats_key_len - 5;  /* (stats_key is prefix + "stats") */
    char id[32];
    size_t idlen = (size_t)snprintf(id, sizeof id, "%lld", t->track_id);
    resp_buf b;
    resp_buf_init(&b);
    const char *off[3] = {"CLIENT", "TRACKING", "off"};
    size_t offlen[3] = {6, 8, 3};
    resp_command(&b, 3, off, offlen);
    const char *on[9] = {"CLIENT", "TRACKING", "on", "REDIRECT", id, "BCAST", "PREFIX",
                         prefix, "NOLOOP"};
    size_t onlen[9] = {6, 8, 2, 8, idlen, 5, 6, plen, 6};
    resp_command(&b, 9, on, onlen);
    if (!b.oom && io_send_slot(d, b.data, b.len, b.ncmd, SLOT_TRACK,
                               now + d->cfg.socket_timeout) == 0) {
        d->track_on_in_flight = 1;
        d->track_on_id = t->track_id;
        if (d->track_hold) {  /* (what waited goes after it: tracked) */
            d->track_hold = 0;
            io_pump_waiting(d, now);
        }
    }
    resp_buf_free(&b);
}

void
io_track_begin(bio_client *d, double now)
{
    if (d->parent == NULL && d->is_cluster) {
        for (int i = 0; i < d->nchildren; i++) {
            io_track_begin(d->children[i], now);
        }
        return;
    }
    if (!io_track_wanted(d) || d->state != ST_READY || d->close_req != NULL) {
        return;
    }
    io_track_poll(d, now);
    if (d->tracking_id == 0 && !d->track_on_in_flight) {
        d->track_hold = 1;  /* (until T is up, or cannot be) */
        d->track_hold_until = now + d->cfg.connect_timeout;
    }
}

double
io_track_hold_check(bio_client *d, double now)
{
    if (!d->track_hold) {
        return INFINITY;
    }
    /* Due: connect_timeout after it began, or just before a held request's deadline
     * (no request fails for tracking's sake: it goes untracked instead). */
    double due = d->track_hold_until;
    for (bio_req *r = d->wait_head; r != NULL; r = r->next) {
        due = fmin(due, r->deadline - TRACK_HOLD_MARGIN);
    }
    bio_client *t = d->tracker;
    int t_failed = t == NULL || t->state == ST_BACKOFF || t->state == ST_IDLE;
    if (t_failed || now >= due || d->state != ST_READY || d->close_req != NULL) {
        /* No tracking to go first: what waits goes untracked, and a flush follows once
         * tracking is on (as after a loss). */
        d->track_hold = 0;
        d->track_lost = 1;
        d->track_untracked = 1;
        io_pump_waiting(d, now);
        return INFINITY;
    }
    return due;
}

int
io_track_on_reply(bio_client *d, void *reply, int remaining, double now)
{
    redisReply *r = reply;
    if (d->push) {
        freeReplyObject(reply);  /* (a tracker's PING answered) */
        return 0;
    }
    if (remaining == 1) {  /* CLIENT TRACKING on's */
        bio_client *sink = sink_of(d);
        bio_client *t = d->tracker;
        int void_ = d->track_on_void || t == NULL || t->state != ST_READY ||
                    t->track_id != d->track_on_id;
        d->track_on_in_flight = d->track_on_void = 0;
        if (void_) {
            /* T was lost while it was in flight: tracking is not on (the next poll
             * asks again, towards T's new id); the loss stays to be told. */
        }
        else if (r->type == REDIS_REPLY_STATUS) {
            d->tracking_id = d->track_on_id;
            d->track_refused = 0;
            atomic_store(&sink->counters.tracking, 1);
            if (d->track_lost) {
                /* What happened meanwhile is unknown: a flush, before the replies
                 * that follow on this connection (they are tracked) reach the loop. */
                d->track_lost = 0;
                flush_note(sink, d->track_untracked);
                d->track_untracked = 0;
                atomic_fetch_add(&sink->counters.tracking_losses, 1);
                io_track_deliver(sink);
            }
        }
        else {
            /* Refused (a server without it, an ACL, a proxy): D goes on untracked,
             * asked again at most every TRACK_RETRY (a flush once it works); the loop
             * is told once per refusal. */
            if (!d->track_refused) {
                snprintf(sink->track_err, sizeof sink->track_err, "CLIENT TRACKING: %.*s",
                         r->type == REDIS_REPLY_ERROR ? (int)(r->len > 150 ? 150 : r->len)
                         : 16, r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply");
                sink->track_err_new = 1;
            }
            d->track_refused = 1;
            d->track_retry_at = now + TRACK_RETRY;
            d->track_lost = 1;
            d->track_untracked = 1;
        }
    }
    freeReplyObject(reply);
    return 0;
}

int
io_track_is_message(const void *reply)
{
    const redisReply *r = reply;
    return r->type == REDIS_REPLY_ARRAY && r->elements == 3 &&
           r->element[0]->type == REDIS_REPLY_STRING && r->element[0]->len == 7 &&
           memcmp(r->element[0]->str, "message", 7) == 0;
}

double
io_track_ping(bio_client *t, double now)
{
    if (t->track_ping_at == 0) {
        t->track_ping_at = now + TRACK_PING_EVERY;
    }
    if (now >= t->track_ping_at && t->r_count == 0) {
        /* Messages are all a tracker hears: a peer gone without a word (a partition,
         * a proxy) would go unseen. Its answer is due within socket_timeout. */
        const char *ping[1] = {"PING"};
        size_t pinglen[1] = {4};
        resp_buf b;
        resp_buf_init(&b);
        resp_command(&b, 1, ping, pinglen);
        if (!b.oom) {
            (void)io_send_slot(t, b.data, b.len, 1, SLOT_TRACK, now + t->cfg.socket_timeout);
        }
        resp_buf_free(&b);
        t->track_ping_at = now + TRACK_PING_EVERY;
    }
    return t->track_ping_at;
}

void
io_track_map_taken(bio_client *parent)
{
    /* A node lost while tracking that the new map no longer names a primary (its
     * replica took over, or it left): "back" is its successor's tracking, which its
     * first requests had (the hold). What it heard before is no guide: a flush. */
    for (int i = 0; i < parent->nchildren; i++) {
        bio_client *c = parent->children[i];
        if (!c->track_lost || c->state == ST_READY) {
            continue;
        }
        int k = io_slot_map_find(parent->map, c->cfg.host, c->cfg.port);
        if (k < 0 || parent->map->nodes[k].primary >= 0) {
            c->track_lost = 0;
            flush_note(parent, 0);
            atomic_fetch_add(&parent->counters.tracking_losses, 1);
        }
    }
}

void
io_track_listen(bio_client *d, bio_req *r)
{
    io_track_unlisten(d, BIO_OK);  /* (replaced) */
    d->listen = r;
}

void
io_track_unlisten(bio_client *d, int status)
{
    bio_req *r = d->listen;
    d->listen = NULL;
    if (r != NULL) {
        io_complete(r, status, status == BIO_OK ? NULL : "disconnected");
    }
}

void
io_track_deliver(bio_client *d)
{
    d = sink_of(d);
    if (d->listen == NULL || (!d->track_flush && d->track_nkeys == 0 && !d->track_err_new)) {
        return;
    }
    bio_req *e = bio_req_new(d, d->listen->bridge, BIO_OP_EVENT, 0);
    if (e == NULL) {
        return;  /* (kept: the next pass tries again) */
    }
    e->event_flush = d->track_flush;  /* (BIO_FLUSH_* bits) */
    e->ncmd = (int)(d->track_flush ? 0 : d->track_nkeys);
    if (!d->track_flush) {
        e->buf = d->track_keys;  /* (taken) */
        e->len = d->track_keys_len;
        d->track_keys = NULL;
    }
    keys_reset(d);
    d->track_flush = 0;
    if (d->track_err_new) {
        d->track_err_new = 0;
        snprintf(e->err, sizeof e->err, "%s", d->track_err);  /* (told once) */
    }
    e->user = d->listen->user;
    e->on_done = d->listen->on_done;
    e->status = BIO_OK;
    if (e->bridge != NULL) {
        io_deliver(e);
    }
    else {
        bio_req_free(e);
    }
}

void
io_track_free(bio_client *d)
{
    io_track_unlisten(d, BIO_ECLOSED);
    keys_reset(d);
    if (d->tracker != NULL) {
        d->tracker->owner = NULL;
        bio_client_decref(d->tracker);
        d->tracker = NULL;
    }
}
