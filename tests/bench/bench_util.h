/* Small helpers shared by the benchmark programs in tests/bench/: strict number parsing for
 * their options and the two clocks they measure with. Header-only: each benchmark is its own
 * program. */
#ifndef CTXHOOKD_BENCH_UTIL_H
#define CTXHOOKD_BENCH_UTIL_H

#include <errno.h>
#include <stdlib.h>
#include <time.h>

/* s as a decimal in [min, max] → *ret; -EINVAL for anything else (empty, trailing text). */
static inline int parse_ll(const char *s, long long min, long long max, long long *ret)
{
        char *end;
        long long v;

        if (!s)
                return -EINVAL;
        errno = 0;
        v = strtoll(s, &end, 10);
        if (errno != 0 || end == s || *end != '\0' || v < min || v > max)
                return -EINVAL;
        *ret = v;
        return 0;
}

/* Seconds of CLOCK_MONOTONIC, for durations. */
static inline double mono_s(void)
{
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Milliseconds since the Unix epoch, for timestamps carried in events. */
static inline long long wall_ms(void)
{
        struct timespec ts;

        clock_gettime(CLOCK_REALTIME, &ts);
        return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

#endif
