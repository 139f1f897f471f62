/* cluster_slot.h: the Redis Cluster hash slot of a key (no Python in here).
 *
 * As Redis defines it (cluster.c keyHashSlot): CRC16 (XMODEM: polynomial 0x1021, initial
 * value 0, no reflection, no final xor) of the key modulo 16384; if the key holds a '{'
 * followed, later, by a '}' with at least one byte between them, only the bytes between
 * the first '{' and the first '}' after it are hashed (a "hash tag"): "{user1}.a" and
 * "{user1}.b" share a slot, while "{}x", "x{" and "}{" hash whole. Computed over the key
 * as stored (prefix + key). */
#ifndef BRUNO_CLUSTER_SLOT_H
#define BRUNO_CLUSTER_SLOT_H

#include <stddef.h>
#include <stdint.h>

#define BIO_CLUSTER_SLOTS 16384

uint16_t bio_crc16(const char *buf, size_t len);
/* The slot (0..16383) of the key key[0..len). */
unsigned bio_key_slot(const char *key, size_t len);
/* The slot of the key made of two parts, a + b (prefix + key), without joining them. */
unsigned bio_key_slot2(const char *a, size_t alen, const char *b, size_t blen);

#endif
