/* The watchdog's judgement (notify_stalled) with injected stalls, and the sd_notify messages
 * as a service manager receives them on $NOTIFY_SOCKET. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "ctxhookd/notify.h"

Test(notify, no_part_stalled_when_all_made_progress_recently)
{
        const struct notify_part parts[] = {
            {"HTTP", 0}, {"Kafka consumer", 9900}, {"delivery", 9500}, {"sweeper", 0}};

        cr_assert_eq(notify_stalled(parts, 4, 10000, 1000), -1);
        /* Exactly at the limit is not yet a stall. */
        cr_assert_eq(notify_stalled(parts, 4, 10500, 1000), -1);
}

Test(notify, an_injected_stall_is_found_and_idle_parts_never_stall)
{
        struct notify_part parts[] = {
            {"HTTP", 0}, {"Kafka consumer", 10000}, {"delivery", 10000}, {"sweeper", 0}};

        /* Idle (0) for ever is fine; the delivery thread stops stamping at 10 000. */
        parts[1].since_ms = 20000;
        cr_assert_eq(notify_stalled(parts, 4, 20100, 5000), 2);
        /* An HTTP request stuck for longer than the delivery thread is the one named. */
        parts[0].since_ms = 9000;
        cr_assert_eq(notify_stalled(parts, 4, 20100, 5000), 0);
        /* Once it moves again, nothing is stalled. */
        parts[0].since_ms = 0;
        parts[2].since_ms = 20050;
        cr_assert_eq(notify_stalled(parts, 4, 20100, 5000), -1);
        cr_assert_eq(notify_stalled(parts, 0, 20100, 5000), -1);
}

/* A datagram socket standing in for systemd's notification socket. */
static int listen_notify(char path[108])
{
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        char dir[] = "/tmp/ctxhookd-test-notify-XXXXXX";
        int fd;

        cr_assert_not_null(mkdtemp(dir));
        snprintf(path, 108, "%s/notify", dir);
        snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
        fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        cr_assert_geq(fd, 0);
        cr_assert_eq(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
        cr_assert_eq(setenv("NOTIFY_SOCKET", path, 1), 0);
        return fd;
}

static void receive(int fd, char *buf, size_t size)
{
        struct timeval tv = {2, 0};
        ssize_t n;

        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
        n = recv(fd, buf, size - 1, 0);
        cr_assert_gt(n, 0, "no notification arrived");
        buf[n] = '\0';
}

static void cleanup_notify(int fd, const char *path)
{
        char dir[108];

        close(fd);
        unlink(path);
        snprintf(dir, sizeof(dir), "%s", path);
        *strrchr(dir, '/') = '\0';
        rmdir(dir);
        unsetenv("NOTIFY_SOCKET");
}

Test(notify, messages_reach_the_service_manager)
{
        char path[108], msg[512];
        int fd = listen_notify(path);

        notify_ready("listening on http://127.0.0.1:1");
        receive(fd, msg, sizeof(msg));
        cr_assert_str_eq(msg, "READY=1\nSTATUS=listening on http://127.0.0.1:1");
        notify_reloading("reloading");
        receive(fd, msg, sizeof(msg));
        cr_assert_eq(strncmp(msg, "RELOADING=1\nMONOTONIC_USEC=", 27), 0, "%s", msg);
        cr_assert(strtoull(msg + 27, NULL, 10) > 0, "%s", msg);
        cr_assert(strstr(msg, "\nSTATUS=reloading"), "%s", msg);
        notify_watchdog();
        receive(fd, msg, sizeof(msg));
        cr_assert_str_eq(msg, "WATCHDOG=1");
        notify_stopping("shutting down");
        receive(fd, msg, sizeof(msg));
        cr_assert_str_eq(msg, "STOPPING=1\nSTATUS=shutting down");
        cleanup_notify(fd, path);
}

Test(notify, watchdog_interval_comes_from_the_environment)
{
        char pid[32];

        unsetenv("WATCHDOG_USEC");
        unsetenv("WATCHDOG_PID");
        cr_assert_eq(notify_watchdog_interval_ms(), 0);
        setenv("WATCHDOG_USEC", "20000000", 1);
        cr_assert_eq(notify_watchdog_interval_ms(), 20000);
        /* Meant for another process (a parent that forked us): not ours. */
        setenv("WATCHDOG_PID", "1", 1);
        cr_assert_eq(notify_watchdog_interval_ms(), 0);
        snprintf(pid, sizeof(pid), "%d", (int)getpid());
        setenv("WATCHDOG_PID", pid, 1);
        cr_assert_eq(notify_watchdog_interval_ms(), 20000);
        unsetenv("WATCHDOG_USEC");
        unsetenv("WATCHDOG_PID");
}
