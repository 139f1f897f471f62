/* resp.h: building RESP commands (arrays of bulk strings) into a growable buffer.
 *
 * The one builder of the project: RedisCache's commands (rc_commands.c) and the I/O
 * thread's own (handshake, statistics flush) are made with it. No Python in here; a
 * failed allocation makes the buffer "oom", later appends do nothing, and the
 * caller checks `oom` once at the end. */
#ifndef BRUNO_RESP_H
#define BRUNO_RESP_H

#include <stddef.h>
#include <stdint.h>

/* A command's slot (Redis Cluster) when it is not one key's: */
#define RESP_SLOT_ANY (-1)    /* no key: any node may run it */
#define RESP_SLOT_CROSS (-2)  /* keys of different slots (no node can run it) */

typedef struct {
    char *data;   /* malloc'd */
    size_t len, cap;
    int ncmd;     /* commands appended (array headers) */
    int oom;
    int16_t *slots;    /* NULL, or (resp_buf_track_slots) slots[k]: command k's slot,
                          RESP_SLOT_ANY until resp_key_slot says (malloc'd) */
    size_t slots_cap;
} resp_buf;

void resp_buf_init(resp_buf *b);
void resp_buf_free(resp_buf *b);
/* Wipe what the buffer holds (a secret), then free it. */
void resp_buf_free_secret(resp_buf *b);
/* Make room for `extra` more bytes at once (0, or -1 and oom). */
int resp_buf_reserve(resp_buf *b, size_t extra);

/* Cluster: from now on, record the slot of each command (those already appended:
 * RESP_SLOT_ANY). 0, or -1 (and oom). The slots are the caller's to take (set
 * b->slots to NULL) before resp_buf_free, which frees them. */
int resp_buf_track_slots(resp_buf *b);
/* The command begun last has a key in `slot` (bio_key_slot2: the caller computes it
 * from the key it appends); nothing when slots are not tracked. */
void resp_key_slot(resp_buf *b, int slot);

/* A command of argc arguments. */
void resp_command(resp_buf *b, int argc, const char *const *argv, const size_t *argvlen);
/* Or piece by piece: the array header (counts one command), then its bulk strings;
 * resp_bulk2 writes one bulk string made of two parts (prefix + key). */
void resp_array(resp_buf *b, size_t n);
void resp_bulk(resp_buf *b, const char *s, size_t n);
void resp_bulk2(resp_buf *b, const char *s1, size_t n1, const char *s2, size_t n2);
void resp_str(resp_buf *b, const char *s);       /* a NUL-terminated bulk string */
void resp_number(resp_buf *b, long long n);      /* an integer as a bulk string */

#endif
