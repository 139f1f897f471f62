/* lru.h: hash index + recency list + expiry for Python keys and values.
 *
 * A chained hash table of nodes that are also linked, least recently used first,
 * on a doubly linked list. Nodes own their key and value. The table never calls
 * Python code except in lru_lookup (a key's __eq__); removal of a known node is
 * by pointer and runs no Python code. Freeing a node (lru_node_free) releases its
 * key and value, which may run arbitrary code (__del__): callers unlink first, so
 * that the table is consistent whenever Python code can run.
 *
 * Re-entrancy: a key's __eq__ may mutate the table. lru_lookup notices through
 * `version` (bumped on every insertion, removal, clear and resize) and restarts.
 */
#ifndef BRUNO_LRU_H
#define BRUNO_LRU_H

#include "module.h"
#include <math.h>
#include <stdint.h>

typedef struct lru_node {
    struct lru_node *prev;   /* recency list: towards the least recently used */
    struct lru_node *next;   /* recency list: towards the most recently used */
    struct lru_node *chain;  /* next node in the same hash bucket */
    Py_hash_t hash;
    double expiry;           /* monotonic seconds; INFINITY: never expires */
    PyObject *key;           /* owned */
    PyObject *value;         /* owned */
} lru_node;

typedef struct {
    lru_node **buckets;      /* owned array of 1 << shift chain heads */
    size_t mask;             /* number of buckets - 1 */
    size_t size;             /* number of nodes */
    lru_node list;           /* sentinel: list.next is the LRU node, list.prev the MRU */
    uint64_t version;        /* bumped on every structural change */
} lru_table;

/* Monotonic clock in seconds (CLOCK_MONOTONIC). */
double lru_now(void);

/* The coarse clock (CLOCK_MONOTONIC_COARSE, same timebase, updated every tick,
 * about 5 ns to read instead of about 25 here) and how far it may lag behind
 * lru_now(). lru_coarse_margin is 0 where there is no coarse clock, and then
 * lru_now_coarse() reads the precise clock. */
extern double lru_coarse_margin;
double lru_now_coarse(void);
void lru_clock_init(void);

/* How far the coarse clock may lag the precise one for lru_expired's shortcut. It
 * lags by a tick on a quiet machine, but by more on a loaded VM whose timekeeping
 * tick is late (an entry stored with ttl=0 was once still returned under
 * AddressSanitizer with the old bound of two ticks): a second is beyond any lag. */
#define LRU_COARSE_LAG_MAX 1.0

/* Has `expiry` passed? `*coarse` caches one coarse reading per operation (start
 * it at -1). The coarse clock settles most cases: it never runs ahead of the
 * precise one and lags it by less than LRU_COARSE_LAG_MAX, so only an expiry
 * within that window costs a precise reading. The answer is the precise clock's:
 * expiry < now. */
static inline int
lru_expired(double expiry, double *coarse)
{
    if (expiry == INFINITY) {
        return 0;
    }
    if (*coarse < 0) {
        *coarse = lru_now_coarse();
    }
    if (expiry < *coarse) {
        return 1;
    }
    if (expiry >= *coarse + LRU_COARSE_LAG_MAX && lru_coarse_margin > 0) {
        return 0;
    }
    return expiry < lru_now();
}

int lru_init(lru_table *t);                 /* 0, or -1 with MemoryError */
void lru_fini(lru_table *t);                /* frees all nodes (may run Python code) */

/* Find the node whose key equals `key`. *out = node or NULL. 0, or -1 on error
 * (an exception from __eq__, or RuntimeError if the table keeps changing). */
int lru_lookup(lru_table *t, PyObject *key, Py_hash_t hash, lru_node **out);

/* Insert a key known to be absent as the most recently used node. Takes new
 * references to key and value. Runs no Python code. Returns the node, or NULL
 * with MemoryError (table unchanged). */
lru_node *lru_insert(lru_table *t, PyObject *key, Py_hash_t hash, PyObject *value,
                     double expiry);

/* Evict the least recently used node and reuse its memory for a new entry (a key
 * known to be absent), linked as the most recently used. The evicted key and value
 * are handed to the caller (*old_key, *old_value: owned references) to release once
 * its state is consistent. Runs no Python code. The table must not be empty. */
void lru_replace_oldest(lru_table *t, PyObject *key, Py_hash_t hash, PyObject *value,
                        double expiry, PyObject **old_key, PyObject **old_value);

/* Remove a node from the index and the list (no Python code runs). The node still
 * owns its key and value: release them with lru_node_free once the caller's own
 * state is consistent. */
void lru_unlink(lru_table *t, lru_node *n);

/* Release a node's key and value and free it. May run arbitrary Python code. */
void lru_node_free(lru_node *n);

static inline void
lru_touch(lru_table *t, lru_node *n)
{
    if (t->list.prev == n) {
        return;  /* already the most recently used */
    }
    n->prev->next = n->next;
    n->next->prev = n->prev;
    n->prev = t->list.prev;
    n->next = &t->list;
    t->list.prev->next = n;
    t->list.prev = n;
}

static inline lru_node *
lru_oldest(lru_table *t)
{
    return t->size ? t->list.next : NULL;
}

/* Detach every node: the table is empty afterwards and the nodes form a
 * NULL-terminated chain through `next`, returned for lru_free_chain. */
lru_node *lru_detach_all(lru_table *t);
void lru_free_chain(lru_node *chain);

/* Check every invariant; returns 0, or -1 with AssertionError describing the first
 * broken one. Used by debug builds after each mutation and by the tests. */
int lru_check(lru_table *t);

#ifdef BRUNO_DEBUG
/* Full checks are O(size): run them while the table is small enough for the
 * debug test suite to stay fast (the suite's big tables are checked explicitly). */
#define LRU_ASSERT_CONSISTENT(t)                                        \
    do {                                                                \
        if ((t)->size <= 512 && lru_check(t) < 0) {                     \
            PyErr_WriteUnraisable(NULL);                                \
            Py_FatalError("lru table inconsistent");                    \
        }                                                               \
    } while (0)
#else
#define LRU_ASSERT_CONSISTENT(t) ((void)0)
#endif

#endif
