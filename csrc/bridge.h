/* bridge.h: per-event-loop bridge between the I/O thread and asyncio (bridge.c). */
#ifndef BRUNO_BRIDGE_H
#define BRUNO_BRIDGE_H

#include "io.h"
#include "module.h"

/* The LoopBridge of `loop` (new reference), created and registered with
 * loop.add_reader on first use. NULL with an exception on error. */
PyObject *bruno_bridge_for_loop(bruno_state *st, PyObject *loop);

/* Submit r through this loop's bridge: at once when it is the only request in
 * flight (latency matters), else batched with the other requests of this loop
 * iteration, a batch going out when it holds half of what is in flight or when the
 * iteration ends. 0, or -1 with an exception. */
int bruno_bridge_submit(PyObject *bridge, bio_req *r, Py_ssize_t in_flight);

/* Does this LoopBridge deliver to `loop` (alive, this process, not retired)? */
int bruno_bridge_serves(PyObject *bridge, PyObject *loop);

/* The loop a LoopBridge delivers to (new reference), or NULL if it is gone. */
PyObject *bruno_bridge_loop(PyObject *bridge);

/* Does the bridge's loop make its futures with asyncio's own create_future? */
int bruno_bridge_plain_future(PyObject *bridge);

/* The C bridge inside a LoopBridge object (borrowed). */
bio_bridge *bruno_bridge_c(PyObject *bridge);

#endif
