/* sd_notify wrappers and the watchdog's judgement; without NOTIFY_SOCKET the messages go
 * nowhere. */
#include <systemd/sd-daemon.h>
#include <time.h>

#include "ctxhookd/notify.h"

void notify_ready(const char *status)
{
        sd_notifyf(0, "READY=1\nSTATUS=%s", status);
}

void notify_status(const char *status)
{
        sd_notifyf(0, "STATUS=%s", status);
}

void notify_stopping(const char *status)
{
        sd_notifyf(0, "STOPPING=1\nSTATUS=%s", status);
}

void notify_reloading(const char *status)
{
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        sd_notifyf(0, "RELOADING=1\nMONOTONIC_USEC=%llu\nSTATUS=%s",
                   (unsigned long long)ts.tv_sec * 1000000ULL +
                       (unsigned long long)ts.tv_nsec / 1000ULL,
                   status);
}

void notify_watchdog(void)
{
        sd_notify(0, "WATCHDOG=1");
}

int64_t notify_watchdog_interval_ms(void)
{
        uint64_t usec = 0;

        if (sd_watchdog_enabled(0, &usec) <= 0)
                return 0;
        return usec < 1000 ? 1 : (int64_t)(usec / 1000);
}

int notify_stalled(const struct notify_part *parts, size_t n, int64_t now_ms, int64_t stall_ms)
{
        int worst = -1;
        int64_t worst_age = stall_ms;

        for (size_t i = 0; i < n; i++) {
                int64_t age;

                if (parts[i].since_ms == 0)
                        continue;
                age = now_ms - parts[i].since_ms;
                if (age > worst_age) {
                        worst_age = age;
                        worst = (int)i;
                }
        }
        return worst;
}
