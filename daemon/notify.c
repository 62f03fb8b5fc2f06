/* sd_notify wrappers; without NOTIFY_SOCKET they do nothing. */
#include <systemd/sd-daemon.h>

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
