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

/* Appends the exposition (HELP/TYPE lines, every family) to out.
 * Families: ctxhookd_http_requests_total{code}, ctxhookd_http_request_duration_seconds
 * (histogram), ctxhookd_up, ctxhookd_start_time_seconds.
 * Returns 0 or what buf_append returns. */
int metrics_render(struct metrics *m, struct buf *out);

#endif
