/* Support for integration tests that deliver webhooks: a signing secret, tests/tools/
 * webhook_sink started on a port of its own or a given one, a port where no receiver listens,
 * config templating, the records the sink writes (one JSON line per request it got) read,
 * counted and waited for, and a stand-in for systemd's notification socket that collects what
 * the daemon sends with sd_notify (READY=1, STATUS=, WATCHDOG=1 …) with the time each message
 * arrived. Like support_daemon.c, functions return 0 or a negative errno code and print what
 * went wrong to stderr. */
#ifndef CTXHOOKD_IT_SUPPORT_SINK_H
#define CTXHOOKD_IT_SUPPORT_SINK_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>

#include <jansson.h>

#include "support_daemon.h"

/* "whsec_" + base64 of 32 random bytes. */
void it_make_secret(char out[128]);

/* Starts webhook_sink in dir (it_peer_start), recording into out_file and checking signatures
 * with secret, on port (0: any free port; a restarted sink takes its old port so that the
 * hooks' URLs stay valid), with extra_args (NULL-terminated, may be NULL) after those. The
 * port it listens on goes to *ret_port. -EPROTO (printed) when it prints no port, or not the
 * one asked for. */
int it_sink_start(struct it_peer *p, const char *dir, const char *out_file, const char *secret,
                  unsigned port, const char *const *extra_args, unsigned *ret_port);

/* A loopback port that nothing listens on (for a receiver that is down); 0 when none could be
 * found (printed). */
unsigned it_closed_port(void);

/* Every occurrence of from in text replaced by to; malloc'ed. */
char *it_replace_all(const char *text, const char *from, const char *to);

/* A daemon config for the tests that deliver: what varies from one test to the next. */
struct it_config {
        const char *listen;          /* [api] listen; NULL: 127.0.0.1:0 (any free port) */
        const char *api_extra;       /* more [api] lines, such as "admin_token = …\n" */
        const char *store_extra;     /* more [store] lines */
        const char *level;           /* [log] level; NULL: debug */
        const char *const *sections; /* then these texts in turn ([kafka], [delivery], hooks
                                      * …), NULL-terminated; NULL entries before the end are
                                      * not allowed, "" is */
};

/* The config text "[api] listen, threads = 2, api_extra; [store] path = @DIR@/ctxhookd.db,
 * store_extra; [log] level" and the sections, with "@URL@" replaced by
 * http://127.0.0.1:sink_port and "@SECRET@" by secret (unless NULL) throughout; @DIR@ is left
 * for it_daemon_init. Without the extras, the first 7 lines are always those, so that a test
 * can name the line of what follows. malloc'ed. */
char *it_config_text(const struct it_config *c, unsigned sink_port, const char *secret);

/* A [kafka] section for a consumer: brokers, topic, group and account, and quick group
 * rebalances (session.timeout.ms as given, a heartbeat every 300 ms). malloc'ed. */
char *it_kafka_section(const char *brokers, const char *topic, const char *group,
                       const char *account, int session_timeout_ms);

/* Every complete line of the sink's file as a JSON array (empty when there is no file yet);
 * NULL when a line is not JSON (printed). */
json_t *it_sink_records(const char *path);

/* Accessors of one record: whether it was answered 2xx with a good signature (it_rec_ok) or
 * answered 2xx whatever the signature (it_rec_2xx), its payload (body.payload) and the event
 * in it, and an integer or string member of any object (0 or "" when absent). */
bool it_rec_ok(json_t *rec);
bool it_rec_2xx(json_t *rec);
json_t *it_rec_payload(json_t *rec);
json_t *it_rec_event(json_t *rec);
long long it_rec_int(json_t *obj, const char *key);
/* The number of an event made by it_kcat_produce_ends (payload.raw.seq); -1 when it has none. */
long long it_rec_seq(json_t *rec);
const char *it_rec_str(json_t *obj, const char *key);

/* Which records count: a predicate with an argument of its own. */
typedef bool it_rec_match_fn(json_t *rec, const void *arg);

/* How many records of the array match (match NULL: every record). */
size_t it_recs_count(json_t *recs, it_rec_match_fn *match, const void *arg);

/* Waits up to timeout_ms until at least n records of the sink's file at path match (match
 * NULL: any record); then *ret_recs gets all the records (json_decref them). -ETIMEDOUT when
 * they do not come (how many did, and every record, are printed); -EBADMSG at a line that is
 * not JSON. */
int it_sink_wait(const char *path, size_t n, it_rec_match_fn *match, const void *arg,
                 int timeout_ms, json_t **ret_recs);

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
