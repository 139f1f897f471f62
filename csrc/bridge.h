/* bridge.h: per-event-loop bridge between the I/O thread and asyncio (bridge.c). */
#ifndef BRUNO_BRIDGE_H
#define BRUNO_BRIDGE_H

#include "io.h"
#include "module.h"

/* The LoopBridge of `loop` (new reference), created and registered with
 * loop.add_reader on first use. NULL with an exception on error. */
PyObject *bruno_bridge_for_loop(bruno_state *st, PyObject *loop);

/* Does this LoopBridge deliver to `loop` (alive, this process, not retired)? */
int bruno_bridge_serves(PyObject *bridge, PyObject *loop);

/* The C bridge inside a LoopBridge object (borrowed). */
bio_bridge *bruno_bridge_c(PyObject *bridge);

#endif
