/* awaitable.h: the object every cache method returns.
 *
 * It behaves like a coroutine (send/throw/close/__await__, am_send) but is a plain C
 * object. Two shapes:
 *   ready    the operation finished when the method was called (in-memory work):
 *            the first send returns the result through am_send, the task never suspends.
 *   pending  the result arrives later (the Redis I/O thread, via the loop bridge):
 *            the first send parks the task on a Future of the running loop; the bridge
 *            calls bruno_aw_complete()/bruno_aw_fail(), which wakes it; the next send
 *            returns the result. A cancelled waiter's late result is dropped and freed.
 */
#ifndef BRUNO_AWAITABLE_H
#define BRUNO_AWAITABLE_H

#include "module.h"

enum { AW_PENDING = 0, AW_READY = 1, AW_WAITING = 2, AW_DONE = 3 };

typedef struct {
    PyObject_HEAD
    int state;            /* AW_* */
    int started;          /* a send() has happened */
    const char *qualname; /* static string, e.g. "InMemoryCache.get" */
    PyObject *result;     /* owned, or NULL: the value the await returns */
    PyObject *exc;        /* owned, or NULL: the exception instance the await raises */
    PyObject *future;     /* owned, or NULL: the asyncio Future a task is parked on */
    PyObject *ctx;        /* owned, or NULL: state of a multi-step operation */
    PyObject *loop;       /* owned, or NULL: the loop the result is delivered on */
    int plain_future;     /* loop.create_future is asyncio's: make the Future directly */
    /* An operation made without a running loop (`asyncio.run(cache.get(k))`) starts
     * at its first send, inside the loop: `deferred` is its unsubmitted request,
     * `start` submits it (0, or -1 with an exception), `drop` frees it unsent. */
    void *deferred;
    int (*start)(PyObject *aw);
    void (*drop)(void *deferred);
    int (*traverse)(void *deferred, visitproc visit, void *arg);  /* its references */
    bruno_state *st;      /* borrowed: module state (alive as long as our type) */
} BrunoAwaitable;

/* A ready awaitable that returns `result`. Steals the reference to result (which
 * must not be NULL). Returns a new reference, or NULL (result released) on error. */
PyObject *bruno_aw_ready(bruno_state *st, const char *qualname, PyObject *result);

/* A ready awaitable that returns None. */
PyObject *bruno_aw_none(bruno_state *st, const char *qualname);

/* A ready awaitable that raises `exc` (an exception instance; reference stolen). */
PyObject *bruno_aw_error(bruno_state *st, const char *qualname, PyObject *exc);

/* A pending awaitable; complete it later with bruno_aw_complete/bruno_aw_fail.
 * It is not tracked by the collector while pending (the request's reference to it
 * keeps it alive anyway); it is tracked once resolved. */
PyObject *bruno_aw_pending(bruno_state *st, const char *qualname);

/* Give a pending awaitable work to start at its first send (made without a running
 * loop): `deferred` (taken over), how to start it, how to free it unstarted, and how
 * to show the collector the Python objects it holds. The awaitable is then tracked
 * by the collector, so a cycle through the deferred work can be collected. */
void bruno_aw_defer(BrunoAwaitable *aw, void *deferred, int (*start)(PyObject *aw),
                    void (*drop)(void *deferred),
                    int (*traverse)(void *deferred, visitproc visit, void *arg));

/* Resolve a pending awaitable (steals result / exc). Must hold the GIL; if a task is
 * parked, its Future is resolved, which schedules the task on its loop. Returns 0,
 * or -1 with an exception set (the result is stored either way). */
int bruno_aw_complete(BrunoAwaitable *aw, PyObject *result);
int bruno_aw_fail(BrunoAwaitable *aw, PyObject *exc);

#endif
