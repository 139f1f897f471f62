/* codec.h: values <-> JSON text, exactly as json.dumps writes and json.loads reads.
 *
 * The stdlib's own C accelerators (_json's encoder and scanner) do the work, called
 * directly: json.dumps/json.loads spend more time in their Python wrappers (argument
 * handling, a fresh encoder per call, bytes decoding) than in the C that does the
 * encoding. Anything unusual falls back to json.dumps/json.loads themselves, so
 * output and errors are the stdlib's to the byte. */
#ifndef BRUNO_CODEC_H
#define BRUNO_CODEC_H

#include "module.h"

int bruno_codec_init(bruno_state *st);
void bruno_codec_clear(bruno_state *st);

/* json.dumps(value) as a str (new reference), or NULL with the exception. */
PyObject *bruno_json_dumps(bruno_state *st, PyObject *value);

/* json.loads(bytes(data[:len])) (new reference), or NULL with the exception. */
PyObject *bruno_json_loads(bruno_state *st, const char *data, size_t len);

#endif
