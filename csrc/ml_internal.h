/* ml_internal.h: what MultiLevelCache's two files share.
 *
 *   multilevel.c  the type: paths, data methods, statistics, attributes, lifecycle
 *   ml_l2.c       its L2 requests on the fast path: reads in flight, vias (why a
 *                 request was made: its hook's data) and L2's answers (promotion)
 */
#ifndef BRUNO_ML_INTERNAL_H
#define BRUNO_ML_INTERNAL_H

#include "module.h"
#include "rediscache.h"

typedef struct {
    PyObject_HEAD
    PyObject *l1;            /* owned: the L1 cache */
    PyObject *l2;            /* owned: the L2 cache, or None */
    PyObject *promote_obj;   /* owned: promote_on_hit as given (tested when used) */
    unsigned long long l1_hits, l2_hits, misses, l2_errors, promotions;
    unsigned long long clear_epoch;  /* bumped when a clear() starts and ends */
    int clears_running;      /* clear() calls under way */
    PyObject *reading;       /* owned dict or NULL: key -> int, 2 per L2 read in
                                flight (fast path), + 1 once the key was written */
    /* Coherent L1 (ml_track.c) */
    int coherent;            /* asked for: invalidations from L2 drop L1 entries (in
                                effect while both levels are ours: ml_coherent) */
    PyObject *backed;        /* owned dict or NULL: Redis key text -> list of the L1
                                keys under it that came from or went to L2 */
    Py_ssize_t backed_limit; /* prune `backed` past this size */
    rc_listener *listener;   /* owned reference, or NULL */
    unsigned long long invalidations, l1_flushes;
    PyObject *weakreflist;
    bruno_state *st;         /* borrowed: module state, alive while our type is */
} MultiLevelCache;

/* Why an L2 request was made: the data of its hook. */
typedef struct {
    MultiLevelCache *mlc;    /* owned */
    PyObject *keys;          /* owned or NULL: the key (get), or the tuple of keys
                                asked of L2 (get_many); their reads are counted */
    PyObject *partial;       /* owned or NULL: L1's part of the answer (get_many: the
                                dict; delete: True when L1 deleted the key; get_stats:
                                L1's get_stats() dict) */
    double issued;           /* when the request was made (monotonic seconds) */
    unsigned long long epoch;  /* clear_epoch when the request was made */
    int op;                  /* the rc_op asked of L2 */
} ml_via;

/* A write of key through this cache: reads of it in flight must not promote. 0 or -1. */
int ml_note_write(MultiLevelCache *self, PyObject *key);

/* ml_track.c: key (a read asked of L2, or a write through the cache) is L2-backed
 * under its Redis key text; the cache listens. 0 or -1. */
int ml_track_key(MultiLevelCache *self, PyObject *l1, PyObject *l2, PyObject *key);
void ml_track_free(MultiLevelCache *self);  /* its listener detached, its map */
void ml_track_cleared(MultiLevelCache *self);  /* clear(): L1 emptied */
/* Listen to L2's invalidations now if coherent (start()). 0 or -1. */
int ml_track_listen(MultiLevelCache *self, PyObject *l1, PyObject *l2);
/* Coherence in effect: asked for (coherent= not False) and both levels ours. */
int ml_coherent(MultiLevelCache *self, PyObject *l1, PyObject *l2);
/* A level is replaced: the L2-backed keys are forgotten (dropped from L1 too when it is
 * L2 that changes), the listener detached (the next use listens to the new L2). */
void ml_track_levels_changed(MultiLevelCache *self, int l2_changed);

/* A clear() starts / ends: no L2 read that overlaps one promotes. */
void ml_clear_begin(MultiLevelCache *self);
void ml_clear_end(MultiLevelCache *self);

/* A via for op (an rc_op); for reads, keys is the key (RC_GET) or the tuple of keys
 * (RC_MGET) whose reads are counted from now; partial is L1's part of the answer.
 * NULL with an exception. */
ml_via *ml_via_new(MultiLevelCache *self, int op, PyObject *keys, PyObject *partial);

/* Fill and return `hook` for a request made for via: RedisCache then owns the via
 * and calls its done (L2's typed answer, on the awaiting loop) or its drop. */
const rc_hook *ml_hook_of(ml_via *via, rc_hook *hook);

#endif
