/* io_cluster.c: Redis Cluster in the I/O thread — the slot map and redirects (see
 * docs/ARCHITECTURE.md, "Redis Cluster: routing"). No Python in this file.
 *
 * Built so far: the map (parsed from a CLUSTER SLOTS reply, checked, looked up,
 * updated by a -MOVED), the parsing of redirect replies, and cutting a request's RESP
 * bytes into its commands. The routing that uses them is designed, not built. */
#include "io_internal.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------ the map */

void
io_slot_map_free(bio_slot_map *m)
{
    if (m == NULL) {
        return;
    }
    for (int i = 0; i < m->nnodes; i++) {
        free(m->nodes[i].host);
    }
    free(m->nodes);
    free(m);
}

bio_slot_map *
io_slot_map_new(void)
{
    bio_slot_map *m = calloc(1, sizeof *m);
    if (m == NULL) {
        return NULL;
    }
    for (int i = 0; i < BIO_CLUSTER_SLOTS; i++) {
        m->slot_node[i] = BIO_NO_NODE;
    }
    return m;
}

int
io_slot_map_find(const bio_slot_map *m, const char *host, int port)
{
    for (int i = 0; i < m->nnodes; i++) {
        if (m->nodes[i].port == port && strcmp(m->nodes[i].host, host) == 0) {
            return i;
        }
    }
    return -1;
}

/* The node host:port (added if new, as a primary unless `primary` >= 0 names its
 * primary): its index, or -1 (out of memory, or too many nodes). */
int
io_slot_map_add(bio_slot_map *m, const char *host, size_t hostlen, int port, int primary)
{
    char name[BIO_CLUSTER_HOSTLEN + 1];
    if (hostlen > BIO_CLUSTER_HOSTLEN) {
        return -1;
    }
    memcpy(name, host, hostlen);
    name[hostlen] = '\0';
    int i = io_slot_map_find(m, name, port);
    if (i >= 0) {
        return i;
    }
    if (m->nnodes >= BIO_CLUSTER_MAX_NODES) {
        return -1;
    }
    if (m->nnodes == m->cap) {
        int cap = m->cap ? m->cap * 2 : 8;
        bio_cluster_node *nodes = realloc(m->nodes, (size_t)cap * sizeof *nodes);
        if (nodes == NULL) {
            return -1;
        }
        m->nodes = nodes;
        m->cap = cap;
    }
    char *copy = strdup(name);
    if (copy == NULL) {
        return -1;
    }
    m->nodes[m->nnodes] = (bio_cluster_node){.host = copy, .port = port, .primary = primary};
    return m->nnodes++;
}

int
io_slot_map_node(const bio_slot_map *m, unsigned slot)
{
    if (m == NULL || slot >= BIO_CLUSTER_SLOTS || m->slot_node[slot] == BIO_NO_NODE) {
        return -1;
    }
    return m->slot_node[slot];
}

int
io_cluster_next_primary(const bio_slot_map *m, int slot)
{
    if (m == NULL || slot < 0 || slot >= BIO_CLUSTER_SLOTS || m->slot_node[slot] == BIO_NO_NODE) {
        return -1;
    }
    int p = m->slot_node[slot], passed = 0;
    unsigned char seen[BIO_CLUSTER_MAX_NODES] = {0};
    for (int s = 0; s < BIO_CLUSTER_SLOTS; s++) {
        int q = m->slot_node[s];
        if (q == BIO_NO_NODE || q >= BIO_CLUSTER_MAX_NODES || seen[q]) {
            continue;
        }
        seen[q] = 1;  /* s is q's lowest slot */
        if (passed) {
            return s;
        }
        passed = q == p;
    }
    return -1;
}

/* An integer element of a reply, within [lo, hi]: 0, or -1. */
static int
int_in(const redisReply *r, long long lo, long long hi, long long *out)
{
    if (r->type != REDIS_REPLY_INTEGER || r->integer < lo || r->integer > hi) {
        return -1;
    }
    *out = r->integer;
    return 0;
}

/* A node of a CLUSTER SLOTS entry: [ip, port, id?, {hostname...}?] (Redis 3 to 7).
 * Its address in *host / *hostlen / *port; 1 if the node's endpoint is unknown ("?":
 * Redis does not know how to reach it), 0, or -1 for a malformed one. An empty ip
 * means "the address you asked" (cluster-preferred-endpoint-type). */
static int
node_address(const redisReply *n, const char *asked, const char **host, size_t *hostlen,
             int *port)
{
    long long p;
    if (n->type != REDIS_REPLY_ARRAY || n->elements < 2 ||
        n->element[0]->type != REDIS_REPLY_STRING || int_in(n->element[1], 0, 65535, &p) < 0) {
        return -1;
    }
    const redisReply *ip = n->element[0];
    if (ip->len == 1 && ip->str[0] == '?') {
        return 1;
    }
    if (ip->len == 0) {
        if (asked == NULL) {
            return -1;
        }
        *host = asked;
        *hostlen = strlen(asked);
    }
    else {
        *host = ip->str;
        *hostlen = ip->len;
    }
    if (*hostlen > BIO_CLUSTER_HOSTLEN || memchr(*host, '\0', *hostlen) != NULL || p == 0) {
        return -1;  /* (port 0: a node that serves no port we could use) */
    }
    *port = (int)p;
    return 0;
}

bio_slot_map *
io_cluster_parse_slots(const void *reply, const char *asked_host, char *err, size_t errlen)
{
    const redisReply *r = reply;
    if (r->type == REDIS_REPLY_ERROR) {
        snprintf(err, errlen, "CLUSTER SLOTS: %.*s", (int)(r->len > 150 ? 150 : r->len),
                 r->str);
        return NULL;
    }
    if (r->type != REDIS_REPLY_ARRAY) {
        snprintf(err, errlen, "CLUSTER SLOTS: not an array");
        return NULL;
    }
    bio_slot_map *m = io_slot_map_new();
    if (m == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    for (size_t i = 0; i < r->elements; i++) {
        const redisReply *e = r->element[i];
        long long start, end;
        if (e->type != REDIS_REPLY_ARRAY || e->elements < 3 ||
            int_in(e->element[0], 0, BIO_CLUSTER_SLOTS - 1, &start) < 0 ||
            int_in(e->element[1], start, BIO_CLUSTER_SLOTS - 1, &end) < 0) {
            snprintf(err, errlen, "CLUSTER SLOTS: malformed entry %zu", i);
            goto fail;
        }
        const char *host;
        size_t hostlen;
        int port;
        int rc = node_address(e->element[2], asked_host, &host, &hostlen, &port);
        if (rc < 0) {
            snprintf(err, errlen, "CLUSTER SLOTS: malformed node in entry %zu", i);
            goto fail;
        }
        if (rc == 1) {
            continue;  /* a primary nobody can reach: its slots stay unserved */
        }
        int primary = io_slot_map_add(m, host, hostlen, port, -1);
        if (primary < 0) {
            snprintf(err, errlen, "CLUSTER SLOTS: too many nodes, or out of memory");
            goto fail;
        }
        if (m->nodes[primary].primary >= 0) {
            snprintf(err, errlen, "CLUSTER SLOTS: a node is both a primary and a replica");
            goto fail;
        }
        for (long long s = start; s <= end; s++) {
            if (m->slot_node[s] != BIO_NO_NODE) {
                snprintf(err, errlen, "CLUSTER SLOTS: slot %lld listed twice", s);
                goto fail;
            }
            m->slot_node[s] = (uint16_t)primary;
        }
        for (size_t j = 3; j < e->elements; j++) {
            rc = node_address(e->element[j], asked_host, &host, &hostlen, &port);
            if (rc < 0) {
                snprintf(err, errlen, "CLUSTER SLOTS: malformed replica in entry %zu", i);
                goto fail;
            }
            if (rc == 1) {
                continue;
            }
            int k = io_slot_map_add(m, host, hostlen, port, primary);
            if (k < 0) {
                snprintf(err, errlen, "CLUSTER SLOTS: too many nodes, or out of memory");
                goto fail;
            }
            if (k == primary || m->nodes[k].primary != primary) {
                snprintf(err, errlen, "CLUSTER SLOTS: a replica of two primaries");
                goto fail;
            }
        }
    }
    for (int s = 0; s < BIO_CLUSTER_SLOTS; s++) {
        m->served += m->slot_node[s] != BIO_NO_NODE;
    }
    return m;
fail:
    io_slot_map_free(m);
    return NULL;
}

int
io_cluster_apply_moved(bio_slot_map *m, unsigned slot, const char *host, int port)
{
    if (slot >= BIO_CLUSTER_SLOTS) {
        return -1;
    }
    int i = io_slot_map_add(m, host, strlen(host), port, -1);
    if (i < 0) {
        return -1;
    }
    /* A replica that was promoted (a failover): a primary from now on. */
    m->nodes[i].primary = -1;
    if (m->slot_node[slot] == BIO_NO_NODE) {
        m->served++;
    }
    m->slot_node[slot] = (uint16_t)i;
    return i;
}

/* ------------------------------------------------------------------ redirects */

/* A decimal number in s[*pos..len) up to a space or the end, within [lo, hi]. */
static int
number_at(const char *s, size_t len, size_t *pos, long lo, long hi, long *out)
{
    size_t i = *pos;
    long v = 0;
    if (i >= len || s[i] < '0' || s[i] > '9') {
        return -1;
    }
    for (; i < len && s[i] >= '0' && s[i] <= '9'; i++) {
        v = v * 10 + (s[i] - '0');
        if (v > hi) {
            return -1;
        }
    }
    if (v < lo) {
        return -1;
    }
    *pos = i;
    *out = v;
    return 0;
}

int
io_cluster_parse_redirect(const char *s, size_t len, io_redirect *out)
{
    memset(out, 0, sizeof *out);
    size_t pos;
    if (len >= 6 && memcmp(s, "MOVED ", 6) == 0) {
        out->kind = IO_REDIRECT_MOVED;
        pos = 6;
    }
    else if (len >= 4 && memcmp(s, "ASK ", 4) == 0) {
        out->kind = IO_REDIRECT_ASK;
        pos = 4;
    }
    else if (len >= 8 && memcmp(s, "TRYAGAIN", 8) == 0 && (len == 8 || s[8] == ' ')) {
        out->kind = IO_REDIRECT_TRYAGAIN;
        return 0;
    }
    else if (len >= 11 && memcmp(s, "CLUSTERDOWN", 11) == 0 && (len == 11 || s[11] == ' ')) {
        out->kind = IO_REDIRECT_CLUSTERDOWN;
        return 0;
    }
    else {
        return -1;
    }
    long slot, port;
    if (number_at(s, len, &pos, 0, BIO_CLUSTER_SLOTS - 1, &slot) < 0 || pos >= len ||
        s[pos] != ' ') {
        return -1;
    }
    pos++;
    /* host:port, the host possibly an IPv6 address (its last ':' ends it), or empty
     * (Redis 7: "the endpoint you are connected to"). */
    const char *addr = s + pos;
    size_t alen = len - pos;
    const char *colon = NULL;
    for (size_t i = 0; i < alen; i++) {
        if (addr[i] == ' ') {
            alen = i;
            break;
        }
        if (addr[i] == ':') {
            colon = addr + i;
        }
    }
    if (colon == NULL) {
        return -1;
    }
    size_t hostlen = (size_t)(colon - addr);
    size_t ppos = (size_t)(colon - s) + 1;
    if (hostlen > BIO_CLUSTER_HOSTLEN || memchr(addr, '\0', hostlen) != NULL ||
        number_at(s, (size_t)(addr - s) + alen, &ppos, 1, 65535, &port) < 0 ||
        ppos != (size_t)(addr - s) + alen) {
        return -1;
    }
    memcpy(out->host, addr, hostlen);
    out->host[hostlen] = '\0';
    out->slot = (unsigned)slot;
    out->port = (int)port;
    return 0;
}

/* ------------------------------------------------------------------ commands */

/* A CRLF-terminated decimal in buf[*pos..len), within [0, max]. */
static int
header_number(const char *buf, size_t len, size_t *pos, long long max, long long *out)
{
    size_t i = *pos;
    long long v = 0;
    if (i >= len || buf[i] < '0' || buf[i] > '9') {
        return -1;
    }
    for (; i < len && buf[i] >= '0' && buf[i] <= '9'; i++) {
        v = v * 10 + (buf[i] - '0');
        if (v > max) {
            return -1;
        }
    }
    if (i + 1 >= len || buf[i] != '\r' || buf[i + 1] != '\n') {
        return -1;
    }
    *pos = i + 2;
    *out = v;
    return 0;
}

int
io_cluster_commands(const char *buf, size_t len, size_t *offsets, int ncmd)
{
    size_t pos = 0;
    for (int k = 0; k < ncmd; k++) {
        offsets[k] = pos;
        long long argc;
        if (pos >= len || buf[pos] != '*') {
            return -1;
        }
        pos++;
        if (header_number(buf, len, &pos, INT_MAX, &argc) < 0) {
            return -1;
        }
        for (long long a = 0; a < argc; a++) {
            long long blen;
            if (pos >= len || buf[pos] != '$') {
                return -1;
            }
            pos++;
            if (header_number(buf, len, &pos, (long long)(len - pos), &blen) < 0 ||
                len - pos < (size_t)blen + 2 || buf[pos + blen] != '\r' ||
                buf[pos + blen + 1] != '\n') {
                return -1;
            }
            pos += (size_t)blen + 2;
        }
    }
    offsets[ncmd] = pos;
    return pos == len ? 0 : -1;
}

/* ------------------------------------------------------------------ the connection */

void
io_cluster_handshake(bio_client *c, resp_buf *b)
{
    if (c->parent != NULL && c->cfg.read_replicas) {
        const char *ro[1] = {"READONLY"};  /* (a node's: replicas serve reads then) */
        size_t rolen[1] = {8};
        resp_command(b, 1, ro, rolen);
    }
    if (c->cfg.cluster == BIO_CLUSTER_OFF) {
        return;
    }
    const char *argv[2] = {"CLUSTER", "SLOTS"};
    size_t len[2] = {7, 5};
    resp_command(b, 2, argv, len);
}

static void
take_map(bio_client *c, bio_slot_map *m)
{
    io_slot_map_free(c->map);
    c->map = m;
    /* A primary whose connection failed (and has not come back) still named: a
     * failover may be under way; ask again (at most every CLUSTER_REFRESH_MIN) until
     * the map names its replica, or it is back. */
    for (int i = 0; i < c->nchildren; i++) {
        bio_client *child = c->children[i];
        int k = child->suspect ? io_slot_map_find(m, child->cfg.host, child->cfg.port) : -1;
        if (k >= 0 && m->nodes[k].primary < 0) {
            c->map_wanted = 1;
        }
    }
    c->is_cluster = 1;
    atomic_store(&c->counters.standalone, 0);
    atomic_store(&c->counters.cluster_slots, m->served);
    atomic_store(&c->counters.cluster_nodes, m->nnodes);
    atomic_fetch_add(&c->counters.cluster_maps, 1);
    io_track_map_taken(c);  /* (a node lost while tracking, replaced: a flush) */
}

int
io_cluster_handshake_reply(bio_client *c, void *reply, char *err, size_t errlen)
{
    const redisReply *r = reply;
    if (r->type == REDIS_REPLY_ERROR && c->cfg.cluster == BIO_CLUSTER_AUTO) {
        /* "cluster support disabled", or a server (a proxy) that has no CLUSTER
         * command: one server, as without the option. */
        c->is_cluster = 0;
        atomic_store(&c->counters.standalone, 1);
        io_slot_map_free(c->map);
        c->map = NULL;
        atomic_store(&c->counters.cluster_slots, 0);
        atomic_store(&c->counters.cluster_nodes, 0);
        return 0;
    }
    if (r->type == REDIS_REPLY_ERROR) {
        snprintf(err, errlen, "%.60s:%d is not a Redis Cluster node (CLUSTER SLOTS: %.*s)",
                 c->cfg.host ? c->cfg.host : "?", c->cfg.port,
                 (int)(r->len > 80 ? 80 : r->len), r->str);
        return -1;
    }
    bio_slot_map *m = io_cluster_parse_slots(reply, c->cfg.host, err, errlen);
    if (m == NULL) {
        return -1;
    }
    c->map_wanted = 0;  /* (take_map asks again if a failover is still under way) */
    take_map(c, m);
    return 0;
}

void
io_cluster_map_reply(bio_client *c, void *reply)
{
    char err[BIO_ERRLEN];
    c->map_in_flight = 0;
    bio_slot_map *m = io_cluster_parse_slots(reply, c->cfg.host, err, sizeof err);
    if (m != NULL) {
        take_map(c, m);
    }
    /* (else the map we have stays: a -MOVED will ask again) */
}

void
io_cluster_saw_reply(bio_client *c, void *reply)
{
    const redisReply *r = reply;
    if (c->is_cluster && r->type == REDIS_REPLY_ERROR && r->len >= 6 &&
        memcmp(r->str, "MOVED ", 6) == 0) {
        c->map_wanted = 1;
    }
}

void
io_cluster_reset(bio_client *c)
{
    c->map_in_flight = 0;
}

void
io_cluster_release_children(bio_client *parent)
{
    for (int i = 0; i < parent->nchildren; i++) {
        parent->children[i]->parent = NULL;
        bio_client_decref(parent->children[i]);
    }
    free(parent->children);
    parent->children = NULL;
    parent->nchildren = parent->children_cap = 0;
}

void
io_cluster_free(bio_client *c)
{
    io_cluster_release_children(c);  /* (none: the I/O thread released them already) */
    io_slot_map_free(c->map);
    c->map = NULL;
    io_cluster_free_startup(&c->cfg);
    free(c->first_host);
    c->first_host = NULL;
}

int
io_cluster_copy_startup(bio_config *dst, const bio_config *src)
{
    dst->nstartup = 0;
    dst->startup_hosts = NULL;
    dst->startup_ports = NULL;
    if (src->nstartup <= 0) {
        return 0;
    }
    dst->startup_hosts = calloc((size_t)src->nstartup, sizeof(char *));
    dst->startup_ports = malloc((size_t)src->nstartup * sizeof(int));
    if (dst->startup_hosts == NULL || dst->startup_ports == NULL) {
        io_cluster_free_startup(dst);
        return -1;
    }
    dst->nstartup = src->nstartup;
    for (int i = 0; i < src->nstartup; i++) {
        dst->startup_hosts[i] = strdup(src->startup_hosts[i]);
        dst->startup_ports[i] = src->startup_ports[i];
        if (dst->startup_hosts[i] == NULL) {
            io_cluster_free_startup(dst);
            return -1;
        }
    }
    return 0;
}

void
io_cluster_free_startup(bio_config *cfg)
{
    if (cfg->startup_hosts != NULL) {
        for (int i = 0; i < cfg->nstartup; i++) {
            free(cfg->startup_hosts[i]);
        }
    }
    free(cfg->startup_hosts);
    free(cfg->startup_ports);
    cfg->startup_hosts = NULL;
    cfg->startup_ports = NULL;
    cfg->nstartup = 0;
}

int
io_cluster_next_startup(bio_client *c)
{
    if (c->cfg.cluster == BIO_CLUSTER_OFF || c->cfg.nstartup == 0 || c->map != NULL ||
        c->startup_left <= 0 || c->cfg.unix_path != NULL) {
        return 0;
    }
    if (c->first_host == NULL && (c->first_host = strdup(c->cfg.host)) == NULL) {
        return 0;
    }
    if (c->startup_next == 0) {
        c->first_port = c->cfg.port;
    }
    c->startup_next = (c->startup_next + 1) % (c->cfg.nstartup + 1);
    const char *host = c->startup_next == 0 ? c->first_host
                                            : c->cfg.startup_hosts[c->startup_next - 1];
    char *copy = strdup(host);
    if (copy == NULL) {
        return 0;
    }
    free(c->cfg.host);
    c->cfg.host = copy;
    c->cfg.port = c->startup_next == 0 ? c->first_port
                                       : c->cfg.startup_ports[c->startup_next - 1];
    c->startup_left--;
    return 1;
}

void
io_cluster_next_node(bio_client *c)
{
    if (!c->is_cluster || c->parent != NULL || c->map == NULL || c->map->nnodes == 0 ||
        c->cfg.unix_path != NULL) {
        return;
    }
    const bio_slot_map *m = c->map;
    for (int tries = 0; tries < m->nnodes; tries++) {
        c->map_next = (c->map_next + 1) % m->nnodes;
        const bio_cluster_node *n = &m->nodes[c->map_next];
        if (m->nnodes > 1 && n->port == c->cfg.port && strcmp(n->host, c->cfg.host) == 0) {
            continue;  /* the one that failed */
        }
        char *host = strdup(n->host);
        if (host != NULL) {
            free(c->cfg.host);
            c->cfg.host = host;
            c->cfg.port = n->port;
        }
        break;
    }
    c->map_wanted = 1;
}

/* The map's nodes that serve a slot, and their replicas (a -MOVED adds a node to the
 * list without taking the old one out: the list alone is no bound). */
static int
live_nodes(const bio_slot_map *m)
{
    if (m == NULL) {
        return 0;
    }
    unsigned char serves[BIO_CLUSTER_MAX_NODES] = {0};
    for (int s = 0; s < BIO_CLUSTER_SLOTS; s++) {
        if (m->slot_node[s] != BIO_NO_NODE && m->slot_node[s] < BIO_CLUSTER_MAX_NODES) {
            serves[m->slot_node[s]] = 1;
        }
    }
    int n = 0;
    for (int i = 0; i < m->nnodes && i < BIO_CLUSTER_MAX_NODES; i++) {
        int p = m->nodes[i].primary;
        n += serves[i] || (p >= 0 && p < BIO_CLUSTER_MAX_NODES && serves[p]);
    }
    return n;
}

bio_client *
io_cluster_child(bio_client *parent, const char *host, int port)
{
    for (int i = 0; i < parent->nchildren; i++) {
        bio_client *c = parent->children[i];
        if (c->cfg.port == port && strcmp(c->cfg.host, host) == 0) {
            return c;
        }
    }
    /* Bounded: the map's nodes and a few more (a -MOVED/-ASK may name a node before a
     * refresh does). Redirects to ever new addresses (a broken or hostile node) get no
     * new connection past that: the redirect's reply is then the request's answer. */
    int most = live_nodes(parent->map) + CLUSTER_EXTRA_CHILDREN;
    if (parent->nchildren >= most) {
        return NULL;
    }
    if (parent->nchildren == parent->children_cap) {
        int cap = parent->children_cap ? parent->children_cap * 2 : 8;
        bio_client **children = realloc(parent->children, (size_t)cap * sizeof *children);
        if (children == NULL) {
            return NULL;
        }
        parent->children = children;
        parent->children_cap = cap;
    }
    /* The parent's settings (credentials, TLS, timeouts), this node's address, db 0,
     * no cluster handshake of its own. */
    bio_config cfg = parent->cfg;
    cfg.host = (char *)host;
    cfg.port = port;
    cfg.unix_path = NULL;
    cfg.db = 0;
    cfg.sentinels = NULL;
    cfg.cluster = BIO_CLUSTER_OFF;
    cfg.nstartup = 0;
    bio_client *c = bio_client_new(&cfg);
    if (c == NULL) {
        return NULL;
    }
    c->parent = parent;
    parent->children[parent->nchildren++] = c;
    /* Registered like any client (epoll, timers, writes), at the end of the list:
     * the I/O thread may be walking it. */
    c->registered = 1;
    bio_client_incref(c);
    bio_client **pp = &E.clients;
    while (*pp != NULL) {
        pp = &(*pp)->next;
    }
    c->next = NULL;
    *pp = c;
    return c;
}
