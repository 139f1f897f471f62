/* bridge.h: per-event-loop bridge between the I/O thread and asyncio (bridge.c). */
#ifndef BRUNO_BRIDGE_H
#define BRUNO_BRIDGE_H

#include "io.h"
#include "module.h"

/* The LoopBridge of `loop` (new reference), created and registered with
 * loop.add_reader on first use. NULL with an exception on error. */
PyObject *bruno_bridge_for_loop(bruno_state *st, PyObject *loop);

/* Submit r through this loop's bridge: at once when `now` (nothing else is in
 * flight: latency matters) and nothing waits, else batched with the other
 * requests of this loop iteration. 0, or -1 with an exception. */
int bruno_bridge_submit(PyObject *bridge, bio_req *r, int now);

/* Does this LoopBridge deliver to `loop` (alive, this process, not retired)? */
int bruno_bridge_serves(PyObject *bridge, PyObject *loop);

/* The C bridge inside a LoopBridge object (borrowed). */
bio_bridge *bruno_bridge_c(PyObject *bridge);

#endif
