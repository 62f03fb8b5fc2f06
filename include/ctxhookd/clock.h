/* Milliseconds of a clock: CLOCK_REALTIME for what is stored or sent (due times, timestamps),
 * CLOCK_MONOTONIC for intervals and the watchdog (a wall clock step must not look like a
 * stall), CLOCK_MONOTONIC_COARSE where a few ms of error are fine and the call is hot. */
#ifndef CTXHOOKD_CLOCK_H
#define CTXHOOKD_CLOCK_H

#include <stdint.h>
#include <time.h>

static inline int64_t clock_ms(clockid_t id)
{
        struct timespec ts;

        clock_gettime(id, &ts);
        return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static inline int64_t clock_wall_ms(void)
{
        return clock_ms(CLOCK_REALTIME);
}

static inline int64_t clock_mono_ms(void)
{
        return clock_ms(CLOCK_MONOTONIC);
}

#endif
