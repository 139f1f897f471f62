/* lru.c: the LRU/TTL table under InMemoryCache. See lru.h for the contract. */
#include "lru.h"
#include "clock.h"

#include <math.h>
#include <string.h>
#include <time.h>

#define LRU_MIN_BUCKETS 8
#define LRU_MAX_RESTARTS 100

double
lru_now(void)
{
    return bruno_clock_seconds(CLOCK_MONOTONIC);
}

double lru_coarse_margin = 0;
static clockid_t coarse_clock = CLOCK_MONOTONIC;

void
lru_clock_init(void)
{
#ifdef CLOCK_MONOTONIC_COARSE
    struct timespec res;
    if (clock_getres(CLOCK_MONOTONIC_COARSE, &res) == 0 && res.tv_sec == 0 &&
        res.tv_nsec <= 20000000) {
        coarse_clock = CLOCK_MONOTONIC_COARSE;
        /* Two ticks of slack: the lag is at most one tick plus update jitter. */
        lru_coarse_margin = 2 * (double)res.tv_nsec * 1e-9;
    }
#endif
}

double
lru_now_coarse(void)
{
    return bruno_clock_seconds(coarse_clock);
}

int
lru_init(lru_table *t)
{
    t->buckets = PyMem_Calloc(LRU_MIN_BUCKETS, sizeof(lru_node *));
    if (t->buckets == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    t->mask = LRU_MIN_BUCKETS - 1;
    t->size = 0;
    t->list.prev = t->list.next = &t->list;
    t->list.chain = NULL;
    t->list.key = t->list.value = NULL;
    t->version = 0;
    return 0;
}

void
lru_fini(lru_table *t)
{
    if (t->buckets == NULL) {
        return;
    }
    lru_node *chain = lru_detach_all(t);
    PyMem_Free(t->buckets);
    t->buckets = NULL;
    lru_free_chain(chain);
}

/* Exact str keys compare without calling Python code. */
static inline int
unicode_eq(PyObject *a, PyObject *b)
{
    Py_ssize_t len = PyUnicode_GET_LENGTH(a);
    if (len != PyUnicode_GET_LENGTH(b) || PyUnicode_KIND(a) != PyUnicode_KIND(b)) {
        return 0;
    }
    return memcmp(PyUnicode_DATA(a), PyUnicode_DATA(b), (size_t)len * PyUnicode_KIND(a)) == 0;
}

int
lru_lookup(lru_table *t, PyObject *key, Py_hash_t hash, lru_node **out)
{
    int restarts = 0;
    int key_is_str = PyUnicode_CheckExact(key);
restart:
    for (lru_node *n = t->buckets[(size_t)hash & t->mask]; n != NULL; n = n->chain) {
        if (n->key == key) {
            *out = n;
            return 0;
        }
        if (n->hash != hash) {
            continue;
        }
        PyObject *nkey = n->key;
        if (key_is_str && PyUnicode_CheckExact(nkey)) {
            if (unicode_eq(nkey, key)) {
                *out = n;
                return 0;
            }
            continue;
        }
        /* __eq__ may run any code, including code that changes this table or
         * frees this node: hold the key, and restart if the table changed. */
        uint64_t version = t->version;
        Py_INCREF(nkey);
        int cmp = PyObject_RichCompareBool(nkey, key, Py_EQ);
        Py_DECREF(nkey);
        if (cmp < 0) {
            *out = NULL;
            return -1;
        }
        if (version != t->version) {
            if (++restarts > LRU_MAX_RESTARTS) {
                PyErr_SetString(PyExc_RuntimeError,
                                "cache changed size during key comparison");
                *out = NULL;
                return -1;
            }
            goto restart;
        }
        if (cmp) {
            *out = n;
            return 0;
        }
    }
    *out = NULL;
    return 0;
}

/* Double the bucket array when the load factor reaches 1. Runs no Python code. */
static int
lru_grow(lru_table *t)
{
    size_t nb = (t->mask + 1) * 2;
    lru_node **buckets = PyMem_Calloc(nb, sizeof(lru_node *));
    if (buckets == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (size_t i = 0; i <= t->mask; i++) {
        lru_node *n = t->buckets[i];
        while (n != NULL) {
            lru_node *next = n->chain;
            size_t j = (size_t)n->hash & (nb - 1);
            n->chain = buckets[j];
            buckets[j] = n;
            n = next;
        }
    }
    PyMem_Free(t->buckets);
    t->buckets = buckets;
    t->mask = nb - 1;
    t->version++;
    return 0;
}

/* Fill node n with a new entry and link it as the most recently used. */
static void
lru_link_new(lru_table *t, lru_node *n, PyObject *key, Py_hash_t hash, PyObject *value,
             double expiry)
{
    n->hash = hash;
    n->expiry = expiry;
    n->key = Py_NewRef(key);
    n->value = Py_NewRef(value);
    size_t b = (size_t)hash & t->mask;
    n->chain = t->buckets[b];
    t->buckets[b] = n;
    n->prev = t->list.prev;
    n->next = &t->list;
    t->list.prev->next = n;
    t->list.prev = n;
    t->size++;
    t->version++;
}

lru_node *
lru_insert(lru_table *t, PyObject *key, Py_hash_t hash, PyObject *value, double expiry)
{
    if (t->size > t->mask && lru_grow(t) < 0) {
        return NULL;
    }
    lru_node *n = PyMem_Malloc(sizeof(lru_node));
    if (n == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    lru_link_new(t, n, key, hash, value, expiry);
    return n;
}

void
lru_replace_oldest(lru_table *t, PyObject *key, Py_hash_t hash, PyObject *value,
                   double expiry, PyObject **old_key, PyObject **old_value)
{
    lru_node *n = t->list.next;
    lru_unlink(t, n);
    *old_key = n->key;
    *old_value = n->value;
    lru_link_new(t, n, key, hash, value, expiry);
}

void
lru_unlink(lru_table *t, lru_node *n)
{
    lru_node **pp = &t->buckets[(size_t)n->hash & t->mask];
    while (*pp != n) {
        pp = &(*pp)->chain;
    }
    *pp = n->chain;
    n->prev->next = n->next;
    n->next->prev = n->prev;
    n->prev = n->next = n->chain = NULL;
    t->size--;
    t->version++;
}

void
lru_node_free(lru_node *n)
{
    PyObject *key = n->key, *value = n->value;
    PyMem_Free(n);
    Py_DECREF(value);
    Py_DECREF(key);
}

lru_node *
lru_detach_all(lru_table *t)
{
    lru_node *first = t->size ? t->list.next : NULL;
    if (first != NULL) {
        t->list.prev->next = NULL;  /* terminate the chain at the MRU node */
    }
    memset(t->buckets, 0, (t->mask + 1) * sizeof(lru_node *));
    t->list.prev = t->list.next = &t->list;
    t->size = 0;
    t->version++;
    return first;
}

void
lru_free_chain(lru_node *chain)
{
    while (chain != NULL) {
        lru_node *next = chain->next;
        lru_node_free(chain);
        chain = next;
    }
}

int
lru_check(lru_table *t)
{
    size_t count = 0;
    lru_node *prev = &t->list;
    for (lru_node *n = t->list.next; n != &t->list; n = n->next) {
        if (n->prev != prev) {
            PyErr_SetString(PyExc_AssertionError, "lru: broken prev link");
            return -1;
        }
        if (n->key == NULL || n->value == NULL) {
            PyErr_SetString(PyExc_AssertionError, "lru: node without key or value");
            return -1;
        }
        if (Py_REFCNT(n->key) < 1 || Py_REFCNT(n->value) < 1) {
            PyErr_SetString(PyExc_AssertionError, "lru: node holds a freed object");
            return -1;
        }
        if (isnan(n->expiry)) {
            PyErr_SetString(PyExc_AssertionError, "lru: NaN expiry");
            return -1;
        }
        /* The node must be reachable from its bucket. */
        lru_node *c = t->buckets[(size_t)n->hash & t->mask];
        while (c != NULL && c != n) {
            c = c->chain;
        }
        if (c == NULL) {
            PyErr_SetString(PyExc_AssertionError, "lru: listed node missing from index");
            return -1;
        }
        if (++count > t->size) {
            PyErr_SetString(PyExc_AssertionError, "lru: list longer than size");
            return -1;
        }
        prev = n;
    }
    if (t->list.prev != prev) {
        PyErr_SetString(PyExc_AssertionError, "lru: broken tail link");
        return -1;
    }
    if (count != t->size) {
        PyErr_SetString(PyExc_AssertionError, "lru: list shorter than size");
        return -1;
    }
    size_t indexed = 0;
    for (size_t i = 0; i <= t->mask; i++) {
        for (lru_node *c = t->buckets[i]; c != NULL; c = c->chain) {
            if (((size_t)c->hash & t->mask) != i) {
                PyErr_SetString(PyExc_AssertionError, "lru: node in the wrong bucket");
                return -1;
            }
            if (++indexed > t->size) {
                PyErr_SetString(PyExc_AssertionError, "lru: index larger than size");
                return -1;
            }
        }
    }
    if (indexed != t->size) {
        PyErr_SetString(PyExc_AssertionError, "lru: index smaller than size");
        return -1;
    }
    return 0;
}
