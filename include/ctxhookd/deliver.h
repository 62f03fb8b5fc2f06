/* The delivery thread: claims due deliveries from the outbox and POSTs them to their hooks'
 * webhooks through one libcurl multi handle (keep-alive, at most max_in_flight at once),
 * signed per Standard Webhooks (webhook-id stays the same across retries, webhook-timestamp
 * is the attempt's). 2xx → done (and clear_after); network errors, time-outs, 408, 429 and
 * 5xx → retry with exponential back-off and full jitter, honouring Retry-After (seconds or an
 * HTTP date), capped at retry_max_ms; other statuses or max_attempts → dead letter. */
#ifndef CTXHOOKD_DELIVER_H
#define CTXHOOKD_DELIVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ctxhookd/config.h"
#include "ctxhookd/error.h"
#include "ctxhookd/metrics.h"
#include "ctxhookd/store.h"

struct deliver;

/* Starts the thread. cfg (its hooks and [delivery] options) must outlive it. */
int deliver_start(const struct config *cfg, struct store *store, struct metrics *metrics,
                  struct deliver **ret, struct ch_error *err);

/* New deliveries were queued: look now instead of at the next timer. Thread-safe, cheap. */
void deliver_wake(struct deliver *d);

/* Whether deliveries wait because the store cannot be reached (store_health() failed after a
 * store call did); the reason goes to why (may be NULL) then. Thread-safe (for STATUS=). */
bool deliver_store_unavailable(struct deliver *d, char *why, size_t why_size);

/* When (CLOCK_MONOTONIC, ms) the thread last went round its loop; it does at least once a
 * second when healthy (for the watchdog). */
int64_t deliver_last_progress_ms(const struct deliver *d);

/* Makes cfg's hooks and [delivery] back-off options the ones used from the next claim on
 * ([delivery] max_in_flight stays). Calls in flight finish with what they started with; a
 * queued delivery of a hook cfg lacks becomes a dead letter when claimed (redrivable once the
 * hook is back). Waits until the delivery thread has taken cfg, after which the thread no
 * longer uses the config it had: the caller may free that one. On failure (a bad signing
 * secret, -EINVAL; -E2BIG, -ENOMEM) err says why and nothing changed. */
int deliver_reconfigure(struct deliver *d, const struct config *cfg, struct ch_error *err);

/* Stops claiming, lets calls in flight finish for up to grace_ms, then abandons the rest
 * (their lease expires and they are claimed again after a restart: at-least-once), and joins
 * the thread. Accepts NULL; returns NULL. */
struct deliver *deliver_stop(struct deliver *d, int64_t grace_ms);

/* The back-off before attempt number `attempt` (1 = the first retry): a uniformly random
 * time in [0, min(retry_max_ms, retry_base_ms * 2^(attempt-1))], or retry_after_ms (capped at
 * retry_max_ms) when the server asked for it (retry_after_ms ≥ 0). Exposed for tests. */
int64_t deliver_backoff_ms(int64_t attempt, int64_t retry_base_ms, int64_t retry_max_ms,
                           int64_t retry_after_ms);

/* Retry-After header value (delta-seconds or an IMF-fixdate) → milliseconds from now_ms, or -1
 * when absent/unparseable. Exposed for tests. */
int64_t deliver_parse_retry_after(const char *value, int64_t now_ms);

#endif
