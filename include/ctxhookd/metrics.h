/* Process metrics in Prometheus text format. Updates are lock-free atomics, so the request
 * path never waits on a scrape. Families are named ctxhookd_*. */
#ifndef CTXHOOKD_METRICS_H
#define CTXHOOKD_METRICS_H

#include "ctxhookd/buf.h"

struct metrics;

/* NULL when out of memory. */
struct metrics *metrics_new(void);
/* Accepts NULL; returns NULL. */
struct metrics *metrics_free(struct metrics *m);

/* One finished HTTP request: its status code (100…599; others are counted as 0) and how
 * long it took, in seconds. */
void metrics_http_request(struct metrics *m, unsigned status, double seconds);

enum metrics_event_result {
        METRICS_EVENT_QUEUED,  /* an event that queued at least one delivery */
        METRICS_EVENT_IGNORED, /* an event no hook wanted */
        METRICS_EVENT_DEAD,    /* a message that became a dead letter */
        /* a message recorded before (its dedup key: a redelivery after a rebalance or a
         * restart, or an offset that a recreated topic reused), so nothing was queued */
        METRICS_EVENT_DUPLICATE,
        METRICS_EVENT__COUNT
};

enum metrics_delivery_result {
        METRICS_DELIVERY_DELIVERED, /* 2xx */
        METRICS_DELIVERY_RETRY,     /* failed, will be retried */
        METRICS_DELIVERY_DEAD,      /* failed for good */
        METRICS_DELIVERY__COUNT
};

enum metrics_gauge {
        METRICS_OUTBOX_DEPTH, /* ctxhookd_outbox_depth */
        METRICS_KAFKA_LAG,    /* ctxhookd_kafka_lag (sum over assigned partitions) */
        METRICS_DEAD_LETTERS, /* ctxhookd_dead_letters */
        /* ctxhookd_store_unavailable: 1 during a store outage (set by the service) */
        METRICS_STORE_UNAVAILABLE,
        METRICS_GAUGE__COUNT
};

#define METRICS_HOOKS_MAX 256

/* ctxhookd_events_total{result} += n. */
void metrics_event(struct metrics *m, enum metrics_event_result r, unsigned long n);

/* Registers hook names for ctxhookd_deliveries_total (copied; names already known are kept
 * with their counts, so a reload that keeps a hook keeps its counters, and a removed hook's
 * counters stay exported as counters should). At most METRICS_HOOKS_MAX names over the life of
 * the process. Thread-safe. 0, -E2BIG (nothing added) or -ENOMEM. */
int metrics_set_hooks(struct metrics *m, const char *const *names, size_t n);

/* One finished delivery attempt of the named hook: ctxhookd_deliveries_total{hook,result}
 * and ctxhookd_delivery_duration_seconds. Names never registered are ignored. */
void metrics_delivery(struct metrics *m, const char *hook, enum metrics_delivery_result r,
                      double seconds);

/* Sets a gauge. */
void metrics_gauge_set(struct metrics *m, enum metrics_gauge g, long long value);
long long metrics_gauge_get(struct metrics *m, enum metrics_gauge g);

enum metrics_reload_result {
        METRICS_RELOAD_APPLIED, /* the new configuration is in force */
        METRICS_RELOAD_REFUSED, /* it did not validate; the old one stays */
        METRICS_RELOAD__COUNT
};

/* ctxhookd_config_reloads_total{result} += 1. */
void metrics_reload(struct metrics *m, enum metrics_reload_result r);

/* Appends the exposition (HELP/TYPE lines, every family) to out.
 * Families: ctxhookd_http_requests_total{code}, ctxhookd_http_request_duration_seconds
 * (histogram), ctxhookd_events_total{result}, ctxhookd_deliveries_total{hook,result},
 * ctxhookd_delivery_duration_seconds (histogram), ctxhookd_outbox_depth, ctxhookd_kafka_lag,
 * ctxhookd_dead_letters, ctxhookd_store_unavailable, ctxhookd_config_reloads_total{result},
 * ctxhookd_up, ctxhookd_start_time_seconds.
 * Returns 0 or what buf_append returns. */
int metrics_render(struct metrics *m, struct buf *out);

#endif
