/* resp.c: building RESP commands (see resp.h). */
#define _GNU_SOURCE
#include "resp.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void
resp_buf_init(resp_buf *b)
{
    b->data = NULL;
    b->len = b->cap = 0;
    b->ncmd = 0;
    b->oom = 0;
    b->slots = NULL;
    b->slots_cap = 0;
}

void
resp_buf_free(resp_buf *b)
{
    free(b->data);
    free(b->slots);
    resp_buf_init(b);
}

/* Room for the slot of command k. 0, or -1 (oom set). */
static int
slots_room(resp_buf *b, size_t k)
{
    if (k < b->slots_cap) {
        return 0;
    }
    size_t cap = b->slots_cap ? b->slots_cap * 2 : 8;
    while (cap <= k) {
        cap *= 2;
    }
    int16_t *slots = realloc(b->slots, cap * sizeof *slots);
    if (slots == NULL) {
        b->oom = 1;
        return -1;
    }
    b->slots = slots;
    b->slots_cap = cap;
    return 0;
}

int
resp_buf_track_slots(resp_buf *b)
{
    if (b->slots != NULL) {
        return 0;
    }
    if (slots_room(b, (size_t)b->ncmd) < 0) {
        return -1;
    }
    for (int k = 0; k < b->ncmd; k++) {
        b->slots[k] = RESP_SLOT_ANY;
    }
    return 0;
}

void
resp_key_slot(resp_buf *b, int slot)
{
    if (b->slots == NULL || b->ncmd == 0) {
        return;
    }
    int16_t *s = &b->slots[b->ncmd - 1];
    if (*s == RESP_SLOT_ANY) {
        *s = (int16_t)slot;
    }
    else if (*s != slot) {
        *s = RESP_SLOT_CROSS;
    }
}

void
resp_buf_free_secret(resp_buf *b)
{
    if (b->data != NULL) {
        explicit_bzero(b->data, b->len);
    }
    resp_buf_free(b);
}

int
resp_buf_reserve(resp_buf *b, size_t extra)
{
    if (b->oom) {
        return -1;
    }
    if (b->len + extra <= b->cap) {
        return 0;
    }
    size_t cap = b->cap ? b->cap : 128;
    while (cap < b->len + extra) {
        cap *= 2;
    }
    char *d = realloc(b->data, cap);
    if (d == NULL) {
        b->oom = 1;
        return -1;
    }
    b->data = d;
    b->cap = cap;
    return 0;
}

static void
append(resp_buf *b, const char *s, size_t n)
{
    if (resp_buf_reserve(b, n) == 0) {
        memcpy(b->data + b->len, s, n);
        b->len += n;
    }
}

/* "<c><n>\r\n" without snprintf (this is on every request's path). */
static void
header(resp_buf *b, char c, size_t n)
{
    char tmp[24], *p = tmp + sizeof tmp;
    *--p = '\n';
    *--p = '\r';
    do {
        *--p = (char)('0' + n % 10);
        n /= 10;
    } while (n);
    *--p = c;
    append(b, p, (size_t)(tmp + sizeof tmp - p));
}

void
resp_array(resp_buf *b, size_t n)
{
    header(b, '*', n);
    if (b->slots != NULL) {
        if (slots_room(b, (size_t)b->ncmd) < 0) {
            return;
        }
        b->slots[b->ncmd] = RESP_SLOT_ANY;
    }
    b->ncmd++;
}

void
resp_bulk2(resp_buf *b, const char *s1, size_t n1, const char *s2, size_t n2)
{
    if (resp_buf_reserve(b, 24 + n1 + n2 + 2) < 0) {
        return;
    }
    header(b, '$', n1 + n2);
    append(b, s1, n1);
    append(b, s2, n2);
    append(b, "\r\n", 2);
}

void
resp_bulk(resp_buf *b, const char *s, size_t n)
{
    resp_bulk2(b, s, n, "", 0);
}

void
resp_str(resp_buf *b, const char *s)
{
    resp_bulk(b, s, strlen(s));
}

void
resp_number(resp_buf *b, long long n)
{
    char num[32];
    int len = snprintf(num, sizeof num, "%lld", n);
    resp_bulk(b, num, (size_t)len);
}

void
resp_command(resp_buf *b, int argc, const char *const *argv, const size_t *argvlen)
{
    resp_array(b, (size_t)argc);
    for (int i = 0; i < argc; i++) {
        resp_bulk(b, argv[i], argvlen[i]);
    }
}
