/* The running daemon: opens the store, starts the HTTP server and the sweeper, tells the
 * service manager, waits for SIGTERM/SIGINT, and takes everything down in order. */
#ifndef CTXHOOKD_SERVICE_H
#define CTXHOOKD_SERVICE_H

#include "ctxhookd/config.h"

/* Runs until SIGTERM or SIGINT. Returns 0 after a clean shutdown, -EADDRINUSE/-EACCES/… when
 * the listener cannot be opened, or -EIO (etc.) when the store cannot be opened; the reason
 * has been logged. Must be called before any other thread exists: it blocks the handled
 * signals for the whole process. */
int service_run(const struct config *cfg);

/* Milliseconds since the Unix epoch (CLOCK_REALTIME). */
long long service_now_ms(void);

#endif
