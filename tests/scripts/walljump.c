/* A wall-clock shim for the monotonic-clock test (dropin/test_readme_claims.py,
 * README "Differences from bruno-memory", 2), compiled by the walljump fixture
 * (dropin/conftest.py) and loaded with LD_PRELOAD into tests/scripts/wall_clock_jump.py.
 *
 * Shifts what the process reads from the wall clock (clock_gettime on CLOCK_REALTIME and
 * its variants, gettimeofday, time) by an offset the script sets at run time with
 * walljump_set_offset(seconds); CLOCK_MONOTONIC passes through untouched. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdatomic.h>
#include <stddef.h>
#include <sys/time.h>
#include <time.h>

static _Atomic long long offset_ns;  /* added to every wall-clock reading */

void walljump_set_offset(double seconds) { atomic_store(&offset_ns, (long long)(seconds * 1e9)); }

static int (*real_clock_gettime)(clockid_t, struct timespec *);

static int is_wall_clock(clockid_t id)
{
    return id == CLOCK_REALTIME || id == CLOCK_REALTIME_COARSE || id == CLOCK_TAI;
}

int clock_gettime(clockid_t id, struct timespec *ts)
{
    if (real_clock_gettime == NULL) {
        real_clock_gettime = (int (*)(clockid_t, struct timespec *))dlsym(RTLD_NEXT, "clock_gettime");
    }
    int rc = real_clock_gettime(id, ts);
    if (rc == 0 && is_wall_clock(id)) {
        long long ns = (long long)ts->tv_sec * 1000000000LL + ts->tv_nsec + atomic_load(&offset_ns);
        ts->tv_sec = (time_t)(ns / 1000000000LL);
        ts->tv_nsec = (long)(ns % 1000000000LL);
    }
    return rc;
}

int gettimeofday(struct timeval *restrict tv, void *restrict tz)
{
    (void)tz;
    struct timespec ts;
    int rc = clock_gettime(CLOCK_REALTIME, &ts);
    if (rc == 0) {
        tv->tv_sec = ts.tv_sec;
        tv->tv_usec = ts.tv_nsec / 1000;
    }
    return rc;
}

time_t time(time_t *out)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    if (out != NULL) {
        *out = ts.tv_sec;
    }
    return ts.tv_sec;
}
