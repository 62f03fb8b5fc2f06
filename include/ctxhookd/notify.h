/* The service manager protocol (libsystemd sd_notify): READY=1 once listening, STATUS=,
 * STOPPING=1 on every exit path. Harmless no-ops when not run by systemd. */
#ifndef CTXHOOKD_NOTIFY_H
#define CTXHOOKD_NOTIFY_H

void notify_ready(const char *status);
void notify_status(const char *status);
void notify_stopping(const char *status);

#endif
