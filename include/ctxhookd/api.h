/* The HTTP server (libmicrohttpd, internal thread pool): the Context API, /healthz, /readyz
 * and /metrics. Requests are authenticated with the account's maven-api-key, bodies are capped
 * at max_body (413), every error is JSON {"message": "..."}. */
#ifndef CTXHOOKD_API_H
#define CTXHOOKD_API_H

#include <stdbool.h>
#include <stddef.h>

#include "ctxhookd/deliver.h"
#include "ctxhookd/error.h"
#include "ctxhookd/metrics.h"
#include "ctxhookd/pipeline.h"
#include "ctxhookd/store.h"

struct api;

struct api_options {
        const char *listen; /* "host:port" (IPv4 or [IPv6]); port 0 = any free port */
        size_t max_body;    /* bytes; larger bodies get 413 */
        unsigned threads;   /* worker threads; 0 = one per CPU */
        unsigned max_connections;
        unsigned connection_timeout_s;
        const char *admin_token; /* NULL/"" = admin endpoints disabled */
        /* For the admin endpoints: a redriven event goes through the pipeline again, a
         * redriven delivery wakes the deliverer. Either may be NULL (an event redrive is then
         * refused with 503). */
        struct pipeline *pipeline;
        struct deliver *deliver;
        /* /readyz asks this too (NULL = the store alone decides): returns whether the daemon
         * is ready, else writes why not into why. */
        bool (*ready)(void *ctx, char *why, size_t why_size);
        void *ready_ctx;
};

/* Binds and starts serving with the given store and metrics (both must outlive the api).
 * On failure returns a negative code, with the reason (naming the address) in err. */
int api_start(const struct api_options *opts, struct store *store, struct metrics *metrics,
              struct api **ret, struct ch_error *err);

/* The TCP port actually bound (useful with port 0). */
unsigned api_port(const struct api *a);

/* For the watchdog: since when (CLOCK_MONOTONIC, ms) the HTTP thread that has been busy
 * longest has been inside one request's handling; 0 when every thread is waiting for work. */
int64_t api_busy_since_ms(struct api *a);

/* Stops accepting new connections, lets requests in flight finish, then stops the threads.
 * Accepts NULL; returns NULL. */
struct api *api_stop(struct api *a);

#endif
