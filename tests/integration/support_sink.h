/* Support for integration tests that deliver webhooks: a signing secret, config templating,
 * the records tests/tools/webhook_sink writes (one JSON line per request it got), and a
 * stand-in for systemd's notification socket that collects what the daemon sends with
 * sd_notify (READY=1, STATUS=, WATCHDOG=1 …) with the time each message arrived. */
#ifndef CTXHOOKD_IT_SUPPORT_SINK_H
#define CTXHOOKD_IT_SUPPORT_SINK_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>

#include <jansson.h>

#include "support_daemon.h"

/* "whsec_" + base64 of 32 random bytes. */
void it_make_secret(char out[128]);

/* Every occurrence of from in text replaced by to; malloc'ed. */
char *it_replace_all(const char *text, const char *from, const char *to);

/* Every complete line of the sink's file as a JSON array (empty when there is no file yet);
 * NULL when a line is not JSON (printed). */
json_t *it_sink_records(const char *path);

/* Accessors of one record: whether it was answered 2xx with a good signature, its payload
 * (body.payload), and a string member of any object ("" when absent). */
bool it_rec_ok(json_t *rec);
json_t *it_rec_payload(json_t *rec);
const char *it_rec_str(json_t *obj, const char *key);

/* ---- the service manager's side of sd_notify ---- */

#define IT_NOTIFY_MAX 4096

struct it_notify_msg {
        long long at_ms; /* it_now_ms() on arrival */
        char *text;
};

struct it_notify {
        int fd;
        char path[108];
        pthread_t thread;
        bool running;
        pthread_mutex_t lock;
        struct it_notify_msg msgs[IT_NOTIFY_MAX];
        size_t n;
};

/* Binds a datagram socket at dir/notify and collects every message on a thread. The daemon
 * gets "NOTIFY_SOCKET=<n->path>" in its environment. */
int it_notify_start(struct it_notify *n, const char *dir);
void it_notify_stop(struct it_notify *n);

/* How many messages so far contain needle (a line such as "WATCHDOG=1" or a prefix such as
 * "STATUS=listening"); when first_after >= 0, only those from index first_after on. */
size_t it_notify_count(struct it_notify *n, const char *needle, size_t first_after);

/* Waits up to timeout_ms for a message (index ≥ from) containing needle; returns its index or
 * -1. */
long it_notify_wait(struct it_notify *n, const char *needle, size_t from, int timeout_ms);

/* The arrival times of the messages containing needle, from index `from` on, into at (at most
 * max); returns how many. */
size_t it_notify_times(struct it_notify *n, const char *needle, size_t from, long long *at,
                       size_t max);

/* The number of messages so far. */
size_t it_notify_n(struct it_notify *n);

#endif
