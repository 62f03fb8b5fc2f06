/* The service manager protocol (libsystemd sd_notify): READY=1 once listening, STATUS= lines
 * saying what the daemon does, RELOADING=1 … READY=1 around a reload, STOPPING=1 on every exit
 * path, and WATCHDOG=1 while every thread makes progress. Harmless no-ops when not run by
 * systemd. The watchdog's judgement is a pure function (notify_stalled), so its logic is tested
 * with injected stalls. */
#ifndef CTXHOOKD_NOTIFY_H
#define CTXHOOKD_NOTIFY_H

#include <stddef.h>
#include <stdint.h>

void notify_ready(const char *status);
void notify_status(const char *status);
void notify_stopping(const char *status);
/* RELOADING=1 with MONOTONIC_USEC= (which newer systemd wants with it) and STATUS=. */
void notify_reloading(const char *status);
/* WATCHDOG=1. */
void notify_watchdog(void);

/* The watchdog interval systemd set for this process (WatchdogSec=, passed as $WATCHDOG_USEC
 * and $WATCHDOG_PID), in ms; 0 when there is none. */
int64_t notify_watchdog_interval_ms(void);

/* One thread the watchdog vouches for. since_ms (CLOCK_MONOTONIC) is when it last showed
 * progress: a loop thread stamps it every round; a thread that waits for work without a
 * time-out (an HTTP worker) stamps it when work starts and sets 0 while it waits. */
struct notify_part {
        const char *name;
        int64_t since_ms; /* 0 = waiting for work: never a stall */
};

/* The index of the part that has gone longest without progress, when that is more than
 * stall_ms; -1 when every part is fine. */
int notify_stalled(const struct notify_part *parts, size_t n, int64_t now_ms, int64_t stall_ms);

#endif
