/* respscan.h: what a RESP2 reply will cost, known before the parser builds it.
 *
 * hiredis' reader (0.14) trusts the lengths a server declares: `*100000000\r\n` makes
 * it allocate an array of 100 million element pointers at once, and every element
 * becomes a reply object of its own, so 12 MB of `:1\r\n` cost ~210 MB. The scanner
 * walks the same bytes first, incrementally, without allocating, and adds up what the
 * reply being received costs: its bytes on the wire plus REPLY_ELEMENT_COST per array
 * element (a declared element counts when its array header arrives). Above the limit
 * the connection is dropped before hiredis sees the bytes. No Python in here. */
#ifndef BRUNO_RESPSCAN_H
#define BRUNO_RESPSCAN_H

#include <stddef.h>

/* What an array element costs on top of its bytes: a pointer in its array and a
 * reply object (hiredis 0.14: 48 bytes + malloc overhead). */
#define RESP_ELEMENT_COST 64
/* Nesting of arrays hiredis 0.14 parses (its task stack holds 9: 8 arrays and a
 * scalar). */
#define RESP_MAX_DEPTH 8
/* The largest limit the arithmetic below takes without overflow (RedisCache refuses
 * a larger max_reply_bytes). */
#define RESP_MAX_LIMIT (1ULL << 60)

typedef struct {
    unsigned long long cost;          /* of the reply being received so far */
    unsigned long long bulk_left;     /* payload bytes (and CRLF) still to skip */
    long long left[RESP_MAX_DEPTH];   /* elements still to come at each open array */
    int depth;                        /* open arrays */
    int in_line;                      /* inside a header line */
    char type;                        /* its type byte */
    int digits;                       /* length header: digits seen */
    int negative;
    unsigned long long number;
    int cr;                           /* the line's '\r' was seen */
} resp_scan;

enum { RESP_SCAN_OK = 0, RESP_SCAN_TOO_BIG, RESP_SCAN_PROTOCOL };

void resp_scan_init(resp_scan *s);

/* Inside a reply (part of one was seen)? */
static inline int
resp_scan_busy(const resp_scan *s)
{
    return s->in_line || s->bulk_left > 0 || s->depth > 0;
}

/* Scan n more bytes. RESP_SCAN_OK, or RESP_SCAN_TOO_BIG when the reply being received
 * costs more than max_cost, or RESP_SCAN_PROTOCOL for bytes that are not RESP2. */
int resp_scan_feed(resp_scan *s, const char *p, size_t n, unsigned long long max_cost);

#endif
