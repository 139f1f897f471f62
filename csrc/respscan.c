/* respscan.c: the cost of a RESP2 reply before it is parsed (see respscan.h). */
#include "respscan.h"

#include <string.h>

void
resp_scan_init(resp_scan *s)
{
    memset(s, 0, sizeof *s);
}

/* One value (a scalar, a nil, a whole array or bulk) is complete: count it in its
 * array, closing the arrays it completes; at the top level, a reply is over. */
static void
value_done(resp_scan *s)
{
    while (s->depth > 0) {
        if (--s->left[s->depth - 1] > 0) {
            return;
        }
        s->depth--;  /* that array is complete too */
    }
    s->cost = 0;  /* a whole reply: the next one starts from nothing */
}

/* A header line ended: act on its type and number. */
static int
line_done(resp_scan *s, unsigned long long max_cost)
{
    char t = s->type;
    if (t == '+' || t == '-') {
        value_done(s);
        return RESP_SCAN_OK;
    }
    if (s->digits == 0) {
        return RESP_SCAN_PROTOCOL;
    }
    if (t == ':') {
        value_done(s);
        return RESP_SCAN_OK;
    }
    if (s->negative) {  /* only -1, a nil bulk or array, is valid */
        if (s->number != 1) {
            return RESP_SCAN_PROTOCOL;
        }
        value_done(s);
        return RESP_SCAN_OK;
    }
    if (t == '$') {
        if (s->number > max_cost || s->cost + s->number > max_cost) {
            return RESP_SCAN_TOO_BIG;
        }
        s->bulk_left = s->number + 2;
        return RESP_SCAN_OK;
    }
    /* '*' */
    if (s->number > max_cost / RESP_ELEMENT_COST ||
        s->cost + s->number * RESP_ELEMENT_COST > max_cost) {
        return RESP_SCAN_TOO_BIG;
    }
    if (s->number == 0) {
        value_done(s);
        return RESP_SCAN_OK;
    }
    if (s->depth == RESP_MAX_DEPTH) {
        return RESP_SCAN_PROTOCOL;
    }
    s->cost += s->number * RESP_ELEMENT_COST;
    s->left[s->depth++] = (long long)s->number;
    return RESP_SCAN_OK;
}

int
resp_scan_feed(resp_scan *s, const char *p, size_t n, unsigned long long max_cost)
{
    const char *end = p + n;
    while (p < end) {
        if (s->bulk_left > 0) {  /* a payload: skipped, only counted */
            size_t take = (size_t)(end - p) < s->bulk_left ? (size_t)(end - p)
                                                           : (size_t)s->bulk_left;
            s->bulk_left -= take;
            s->cost += take;
            p += take;
            if (s->bulk_left == 0) {
                value_done(s);
            }
            continue;
        }
        char c = *p++;
        if (++s->cost > max_cost) {
            return RESP_SCAN_TOO_BIG;
        }
        if (!s->in_line) {
            if (c != '+' && c != '-' && c != ':' && c != '$' && c != '*') {
                return RESP_SCAN_PROTOCOL;
            }
            s->in_line = 1;
            s->type = c;
            s->digits = s->negative = s->cr = 0;
            s->number = 0;
            continue;
        }
        if (s->cr) {  /* after '\r' only '\n' may come */
            if (c != '\n') {
                return RESP_SCAN_PROTOCOL;
            }
            s->in_line = 0;
            int rc = line_done(s, max_cost);
            if (rc != RESP_SCAN_OK) {
                return rc;
            }
            continue;
        }
        if (c == '\r') {
            s->cr = 1;
            continue;
        }
        if (s->type == '+' || s->type == '-') {
            continue;  /* status and error text: only counted */
        }
        if (c == '-' && s->digits == 0 && !s->negative) {
            s->negative = 1;
            continue;
        }
        if (c < '0' || c > '9' || s->digits >= 19) {
            return RESP_SCAN_PROTOCOL;
        }
        s->number = s->number * 10 + (unsigned long long)(c - '0');
        s->digits++;
    }
    return RESP_SCAN_OK;
}
