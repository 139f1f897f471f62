/* clock.h: a POSIX clock as seconds in a double (no Python: io.c uses it too). */
#ifndef BRUNO_CLOCK_H
#define BRUNO_CLOCK_H

#include <time.h>

static inline double
bruno_clock_seconds(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

#endif
