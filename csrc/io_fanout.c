/* io_fanout.c: a cluster request whose commands are of several slots, split into one
 * part per slot and gathered back (I/O thread only; see docs/ARCHITECTURE.md "Redis
 * Cluster: routing").
 *
 * A request (the *whole*) is cut into units: each command of one slot is a unit; a
 * command whose keys are of several slots — MGET, DEL, UNLINK, EXISTS, TOUCH — is cut
 * into one command per key (GET for MGET), each a unit; a keyless command (SCAN,
 * DBSIZE) is of the request's route_slot, or of its first keyed command's slot. Units
 * of one slot make one *part*, an ordinary single-slot request dispatched by
 * io_cluster_dispatch (so -MOVED, -ASK, retries and deadlines are the part's), whose
 * completion comes back here instead of to a bridge (io_complete). Each unit's reply
 * goes to its place in the whole: a plain unit's as it is, a cut MGET's into an array
 * in the keys' order, a cut DEL's (...) added into one integer. A part that failed
 * (connection, timeout) gives each of its units an error reply with its message. When
 * every part is in, the whole completes: BIO_OK with a reply per command, unless every
 * unit failed, when it fails as its first part did. */
#include "io_internal.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

enum { CUT_NONE, CUT_ARRAY, CUT_SUM };  /* how a command's units come back together */

struct bio_fan {
    int parts_left;
    int units, failed;       /* units, and units whose part failed */
    int oom;                 /* a part or a reply could not be made */
    int status;              /* the first failed part's status and message */
    char err[BIO_ERRLEN];
};

/* One unit: command `cmd` of the whole (its element `sub` when cut, else -1), its
 * slot and its bytes (in the whole's buffer, or made for the cut). */
typedef struct {
    int slot;
    int cmd;
    int sub;
    int kind;                /* CUT_*: how a cut command's units come back */
    int count;               /* a cut command's units */
    const char *bytes;
    size_t len;
    char *owned;             /* made for a cut command (else NULL) */
} unit;

static redisReply *
reply_new(int type)
{
    redisReply *r = calloc(1, sizeof *r);
    if (r != NULL) {
        r->type = type;
    }
    return r;
}

static redisReply *
error_reply(const char *msg)
{
    redisReply *r = reply_new(REDIS_REPLY_ERROR);
    if (r == NULL) {
        return NULL;
    }
    r->len = strlen(msg);
    if ((r->str = malloc(r->len + 1)) == NULL) {
        free(r);
        return NULL;
    }
    memcpy(r->str, msg, r->len + 1);
    return r;
}

/* The arguments of one command (a RESP array of bulk strings as resp.c writes it,
 * checked whole by io_cluster_commands), at most max of them: their count. */
static int
command_args(const char *p, size_t len, const char **argv, size_t *argl, int max)
{
    const char *end = p + len;
    long argc = strtol(p + 1, NULL, 10);
    if (argc > max) {
        argc = max;
    }
    const char *q = memchr(p, '\n', len) + 1;
    for (long a = 0; a < argc && q < end; a++) {
        long n = strtol(q + 1, NULL, 10);  /* $n\r\n */
        q = (const char *)memchr(q, '\n', (size_t)(end - q)) + 1;
        argv[a] = q;
        argl[a] = (size_t)n;
        q += n + 2;
    }
    return (int)argc;
}

/* How a command of several slots is cut: CUT_ARRAY / CUT_SUM and the name of each
 * unit's command, or CUT_NONE (it cannot be). */
static int
cut_kind(const char *name, size_t len, const char **unit_name)
{
    static const struct { const char *name; const char *unit; int kind; } cuts[] = {
        {"MGET", "GET", CUT_ARRAY}, {"DEL", "DEL", CUT_SUM}, {"UNLINK", "UNLINK", CUT_SUM},
        {"EXISTS", "EXISTS", CUT_SUM}, {"TOUCH", "TOUCH", CUT_SUM},
    };
    for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
        if (strlen(cuts[i].name) == len && strncasecmp(cuts[i].name, name, len) == 0) {
            *unit_name = cuts[i].unit;
            return cuts[i].kind;
        }
    }
    return CUT_NONE;
}

static int
unit_order(const void *a, const void *b)
{
    const unit *x = a, *y = b;
    if (x->slot != y->slot) {
        return x->slot < y->slot ? -1 : 1;
    }
    if (x->cmd != y->cmd) {  /* (units of one slot keep the request's order) */
        return x->cmd < y->cmd ? -1 : 1;
    }
    return (x->sub > y->sub) - (x->sub < y->sub);
}

static void
free_units(unit *u, int n)
{
    for (int i = 0; u != NULL && i < n; i++) {
        free(u[i].owned);
    }
    free(u);
}

/* Cut r into units (a new array in *out), their count; or -1 with err. */
static int
cut_units(bio_req *r, unit **out, char *err, size_t errlen)
{
    int cap = r->ncmd, n = 0, argmax = 0;
    size_t *offs = malloc(((size_t)r->ncmd + 1) * sizeof *offs);
    unit *u = malloc((size_t)cap * sizeof *u);
    const char **argv = NULL;
    size_t *argl = NULL;
    if (offs == NULL || u == NULL) {
        goto oom;
    }
    if (io_cluster_commands(r->buf, r->len, offs, r->ncmd) < 0) {
        snprintf(err, errlen, "cannot split the request into its commands");
        goto fail;
    }
    int first_slot = r->route_slot;  /* a keyless command's */
    for (int k = 0; k < r->ncmd && first_slot < 0; k++) {
        first_slot = r->slots[k] >= 0 ? r->slots[k] : -1;
    }
    for (int k = 0; k < r->ncmd; k++) {
        const char *p = r->buf + offs[k];
        size_t len = offs[k + 1] - offs[k];
        if (r->slots[k] != RESP_SLOT_CROSS) {
            u[n++] = (unit){r->slots[k] >= 0 ? r->slots[k] : first_slot, k, -1, CUT_NONE, 0,
                            p, len, NULL};
            continue;
        }
        int argc = (int)strtol(p + 1, NULL, 10);
        if (argc < 2) {
            snprintf(err, errlen, "cannot split the request into its commands");
            goto fail;
        }
        if (argc > argmax) {
            free(argv);
            free(argl);
            argmax = argc;
            argv = malloc((size_t)argc * sizeof *argv);
            argl = malloc((size_t)argc * sizeof *argl);
            if (argv == NULL || argl == NULL) {
                goto oom;
            }
        }
        command_args(p, len, argv, argl, argc);
        const char *name;
        int kind = cut_kind(argv[0], argl[0], &name);
        if (kind == CUT_NONE) {
            snprintf(err, errlen, "CROSSSLOT Keys in request don't hash to the same slot "
                     "(%.*s cannot be split by slot)", (int)(argl[0] < 32 ? argl[0] : 32),
                     argv[0]);
            goto fail;
        }
        if (n + argc - 1 + (r->ncmd - k - 1) > cap) {
            cap = n + argc - 1 + (r->ncmd - k - 1);
            unit *bigger = realloc(u, (size_t)cap * sizeof *u);
            if (bigger == NULL) {
                goto oom;
            }
            u = bigger;
        }
        for (int a = 1; a < argc; a++) {
            resp_buf b;
            resp_buf_init(&b);
            const char *cv[2] = {name, argv[a]};
            size_t cl[2] = {strlen(name), argl[a]};
            resp_command(&b, 2, cv, cl);
            if (b.oom) {
                resp_buf_free(&b);
                goto oom;
            }
            u[n++] = (unit){(int)bio_key_slot(argv[a], argl[a]), k, a - 1, kind, argc - 1,
                            b.data, b.len, b.data};
            b.data = NULL;
            resp_buf_free(&b);
        }
    }
    free(offs);
    free(argv);
    free(argl);
    *out = u;
    return n;
oom:
    snprintf(err, errlen, "out of memory");
fail:
    free(offs);
    free(argv);
    free(argl);
    free_units(u, n);
    return -1;
}

/* The whole's replies made ready for its units: an array of the keys' count for a cut
 * MGET (its elements filled as they come), a 0 integer for a cut DEL (...). */
static int
prepare_replies(bio_req *r, const unit *u, int n)
{
    r->nrep = r->ncmd;  /* (NULL replies are freed as nothing) */
    for (int i = 0; i < n; i++) {
        if (u[i].kind == CUT_NONE || r->replies[u[i].cmd] != NULL) {
            continue;
        }
        redisReply *rep = reply_new(u[i].kind == CUT_ARRAY ? REDIS_REPLY_ARRAY
                                                           : REDIS_REPLY_INTEGER);
        if (rep == NULL) {
            return -1;
        }
        r->replies[u[i].cmd] = rep;
        if (u[i].kind == CUT_ARRAY) {
            if ((rep->element = calloc((size_t)u[i].count, sizeof *rep->element)) == NULL) {
                return -1;
            }
            rep->elements = (size_t)u[i].count;
        }
    }
    return 0;
}

/* One slot's units as a part of r (NULL: out of memory). */
static bio_req *
part_new(bio_req *r, const unit *u, int n)
{
    bio_req *p = bio_req_new(r->client, NULL, BIO_OP_CMD, n);
    if (p == NULL) {
        return NULL;
    }
    size_t len = 0;
    for (int i = 0; i < n; i++) {
        len += u[i].len;
    }
    p->buf = malloc(len);
    p->slots = malloc((size_t)n * sizeof *p->slots);
    p->unit_map = malloc(2 * (size_t)n * sizeof *p->unit_map);
    if (p->buf == NULL || p->slots == NULL || p->unit_map == NULL) {
        bio_req_free(p);
        return NULL;
    }
    for (int i = 0; i < n; i++) {
        memcpy(p->buf + p->len, u[i].bytes, u[i].len);
        p->len += u[i].len;
        p->slots[i] = (int16_t)u[i].slot;
        p->unit_map[2 * i] = u[i].cmd;
        p->unit_map[2 * i + 1] = u[i].sub;
    }
    p->whole = r;
    p->readonly = r->readonly;
    p->deadline = r->deadline;
    p->cluster_deadline = r->cluster_deadline;
    return p;
}

static void
fan_finish(bio_req *r)
{
    bio_fan *f = r->fan;
    r->fan = NULL;
    if (f->failed > 0 && f->failed < f->units) {
        atomic_fetch_add(&r->client->counters.errors, 1);  /* (a partial failure) */
    }
    if (f->oom) {
        io_complete(r, BIO_EFAILED, "out of memory");
    }
    else if (f->failed == f->units) {
        io_complete(r, f->status, f->err);
    }
    else {
        io_complete(r, BIO_OK, NULL);
    }
    free(f);
}

void
io_fanout(bio_client *parent, bio_req *r, double now)
{
    char err[BIO_ERRLEN];
    unit *u = NULL;
    int n = cut_units(r, &u, err, sizeof err);
    if (n < 0) {
        io_complete(r, BIO_EFAILED, err);
        return;
    }
    qsort(u, (size_t)n, sizeof *u, unit_order);
    int nparts = 0;
    for (int i = 0; i < n; i++) {
        nparts += i == 0 || u[i].slot != u[i - 1].slot;
    }
    bio_fan *f = calloc(1, sizeof *f);
    bio_req **parts = malloc((size_t)nparts * sizeof *parts);
    if (f == NULL || parts == NULL || (r->fan = f, prepare_replies(r, u, n) < 0)) {
        r->fan = NULL;
        free(f);
        free(parts);
        free_units(u, n);
        io_complete(r, BIO_EFAILED, "out of memory");
        return;
    }
    f->units = n;
    f->status = BIO_OK;
    int made = 0;
    for (int i = 0, j; i < n; i = j) {
        for (j = i + 1; j < n && u[j].slot == u[i].slot; j++) {
        }
        bio_req *p = part_new(r, u + i, j - i);
        if (p == NULL) {
            f->oom = 1;
            continue;
        }
        parts[made++] = p;
    }
    free_units(u, n);
    f->parts_left = made;
    if (made == 0) {
        free(parts);
        fan_finish(r);
        return;
    }
    /* (a part may finish at once, the last one finishing r: r is not touched after) */
    for (int i = 0; i < made; i++) {
        io_cluster_dispatch(parent, parts[i], now);
    }
    free(parts);
}

void
io_fanout_part_done(bio_req *p, int status, const char *msg)
{
    bio_req *r = p->whole;
    bio_fan *f = r->fan;
    if (status != BIO_OK) {
        f->failed += p->ncmd;
        if (f->status == BIO_OK) {
            f->status = status;
            snprintf(f->err, sizeof f->err, "%s", msg != NULL ? msg : p->err);
        }
    }
    r->sent |= p->sent;
    const char *why = msg != NULL ? msg : p->err[0] ? p->err : "failed";
    for (int i = 0; i < p->ncmd; i++) {
        int cmd = p->unit_map[2 * i], sub = p->unit_map[2 * i + 1];
        redisReply *rep = NULL;
        if (status == BIO_OK && i < p->nrep) {
            rep = p->replies[i];
            p->replies[i] = NULL;
        }
        if (rep == NULL) {
            rep = error_reply(status == BIO_OK ? "no reply" : why);
        }
        if (rep == NULL) {
            f->oom = 1;
            continue;
        }
        redisReply *acc = r->replies[cmd];
        if (sub < 0) {
            freeReplyObject(acc);
            r->replies[cmd] = rep;
        }
        else if (acc->type == REDIS_REPLY_ARRAY) {
            if (rep->type == REDIS_REPLY_ERROR && rep->len >= 9 &&
                memcmp(rep->str, "WRONGTYPE", 9) == 0) {
                /* MGET answers nil for a key of another type: so does its cut */
                freeReplyObject(rep);
                rep = reply_new(REDIS_REPLY_NIL);
                if (rep == NULL) {
                    f->oom = 1;
                    continue;
                }
            }
            acc->element[sub] = rep;
        }
        else if (acc->type == REDIS_REPLY_INTEGER && rep->type == REDIS_REPLY_INTEGER) {
            acc->integer += rep->integer;
            freeReplyObject(rep);
        }
        else if (acc->type == REDIS_REPLY_INTEGER) {
            r->replies[cmd] = rep;  /* a failed unit: the command's answer is its error */
            freeReplyObject(acc);
        }
        else {
            freeReplyObject(rep);  /* (already an error) */
        }
    }
    bio_req_free(p);
    if (--f->parts_left == 0) {
        fan_finish(r);
    }
}
