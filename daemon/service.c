/* Wiring of the daemon's parts and its life cycle. Signals are blocked in every thread and
 * taken synchronously by the main thread with sigtimedwait(), so no code runs in signal
 * context; the sweeper thread deletes expired Context API data on a timer. */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "ctxhookd/api.h"
#include "ctxhookd/consumer.h"
#include "ctxhookd/deliver.h"
#include "ctxhookd/log.h"
#include "ctxhookd/metrics.h"
#include "ctxhookd/notify.h"
#include "ctxhookd/pipeline.h"
#include "ctxhookd/service.h"
#include "ctxhookd/store.h"

/* How long deliveries in flight may take to finish on SIGTERM (systemd's TimeoutStopSec is
 * 30 s). */
#define STOP_GRACE_MS 5000

struct sweeper {
        pthread_t thread;
        pthread_mutex_t lock;
        pthread_cond_t wake;
        bool stop;
        struct store *store;
        long long interval_s;
        long long retention_s;
};

long long service_now_ms(void)
{
        struct timespec ts;

        clock_gettime(CLOCK_REALTIME, &ts);
        return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void *sweeper_main(void *arg)
{
        struct sweeper *sw = arg;

        pthread_mutex_lock(&sw->lock);
        while (!sw->stop) {
                struct timespec until;
                int64_t deleted = 0;
                int r;

                clock_gettime(CLOCK_MONOTONIC, &until);
                until.tv_sec += sw->interval_s;
                while (!sw->stop &&
                       pthread_cond_timedwait(&sw->wake, &sw->lock, &until) != ETIMEDOUT)
                        ;
                if (sw->stop)
                        break;
                pthread_mutex_unlock(&sw->lock);
                r = store_sweep(sw->store, service_now_ms(), &deleted);
                if (r < 0)
                        log_warning("sweeper: deleting expired data failed: %s", strerror(-r));
                else if (deleted > 0)
                        log_info("sweeper: deleted %lld expired rows", (long long)deleted);
                r = store_dedup_expire(sw->store, service_now_ms() - sw->retention_s * 1000,
                                       &deleted);
                if (r < 0)
                        log_warning("sweeper: forgetting old dedup keys failed: %s", strerror(-r));
                else if (deleted > 0)
                        log_debug("sweeper: forgot %lld dedup keys", (long long)deleted);
                pthread_mutex_lock(&sw->lock);
        }
        pthread_mutex_unlock(&sw->lock);
        return NULL;
}

static int sweeper_start(struct sweeper *sw, struct store *store, const struct config *cfg)
{
        pthread_condattr_t attr;
        int r;

        sw->stop = false;
        sw->store = store;
        sw->interval_s = cfg->store.sweep_interval_s;
        sw->retention_s = cfg->delivery.retention_s;
        pthread_mutex_init(&sw->lock, NULL);
        pthread_condattr_init(&attr);
        pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
        pthread_cond_init(&sw->wake, &attr);
        pthread_condattr_destroy(&attr);
        r = pthread_create(&sw->thread, NULL, sweeper_main, sw);
        if (r != 0) {
                pthread_cond_destroy(&sw->wake);
                pthread_mutex_destroy(&sw->lock);
                return -r;
        }
        return 0;
}

static void sweeper_stop(struct sweeper *sw)
{
        pthread_mutex_lock(&sw->lock);
        sw->stop = true;
        pthread_cond_signal(&sw->wake);
        pthread_mutex_unlock(&sw->lock);
        pthread_join(sw->thread, NULL);
        pthread_cond_destroy(&sw->wake);
        pthread_mutex_destroy(&sw->lock);
}

/* Blocks until SIGTERM or SIGINT arrives; SIGHUP is acknowledged and ignored for now (only
 * hooks will be reloadable, and there are none yet). Returns the signal number. */
static int wait_for_stop(const sigset_t *set)
{
        for (;;) {
                siginfo_t info;
                int sig = sigwaitinfo(set, &info);

                if (sig < 0) {
                        if (errno == EINTR)
                                continue;
                        log_error("waiting for signals failed: %s", strerror(errno));
                        return SIGTERM;
                }
                if (sig == SIGHUP) {
                        log_notice("SIGHUP received: nothing is reloadable yet; the listen "
                                   "address and store path need a restart");
                        continue;
                }
                return sig;
        }
}

/* "listening on http://HOST:PORT" with the port actually bound, which differs from the
 * configured one when that was 0. listen is a validated "host:port". */
static void format_listening(const char *listen, unsigned port, char *out, size_t size)
{
        const char *colon = strrchr(listen, ':');
        int host_len = colon ? (int)(colon - listen) : (int)strlen(listen);

        snprintf(out, size, "listening on http://%.*s:%u", host_len, listen, port);
}

/* The parts of a running daemon, in the order they start; they stop in reverse. */
struct service {
        const struct config *cfg;
        struct store *store;
        struct metrics *metrics;
        struct pipeline *pipeline;
        struct deliver *deliver;
        struct consumer *consumer;
        struct api *api;
        struct sweeper sweeper;
        bool sweeper_running;
};

/* /readyz: with Kafka configured, ready once partitions are assigned. */
static bool service_ready(void *ctx, char *why, size_t why_size)
{
        struct service *sv = ctx;

        if (sv->consumer && !consumer_ready(sv->consumer)) {
                snprintf(why, why_size, "no Kafka partitions assigned yet");
                return false;
        }
        return true;
}

static int service_start(struct service *sv, const struct config *cfg)
{
        struct store_options sopts = {
            .path = cfg->store.path,
            .busy_timeout_ms = (int)cfg->store.busy_timeout_ms,
            .pool_size = (unsigned)cfg->store.pool_size,
            .cache_entries = (unsigned)cfg->store.cache_entries,
        };
        struct ch_error err = {{0}};
        const char *hook_names[CONFIG_HOOKS_MAX];
        int r;

        sv->cfg = cfg;
        r = store_open(&sopts, &sv->store, &err);
        if (r < 0) {
                log_error("cannot open the store: %s", err.msg);
                return r;
        }
        sv->metrics = metrics_new();
        if (!sv->metrics)
                return -ENOMEM;
        for (size_t i = 0; i < cfg->n_hooks; i++)
                hook_names[i] = cfg->hooks[i].name;
        r = metrics_set_hooks(sv->metrics, hook_names, cfg->n_hooks);
        if (r < 0)
                return r;
        r = pipeline_new(sv->store, sv->metrics, cfg, &sv->pipeline);
        if (r < 0)
                return r;
        r = deliver_start(cfg, sv->store, sv->metrics, &sv->deliver, &err);
        if (r < 0) {
                log_error("cannot start the delivery thread: %s", err.msg);
                return r;
        }
        if (cfg->kafka.brokers[0]) {
                r = consumer_start(cfg, sv->pipeline, sv->store, sv->deliver, sv->metrics,
                                   &sv->consumer, &err);
                if (r < 0) {
                        log_error("cannot start the Kafka consumer: %s", err.msg);
                        return r;
                }
                log_notice("consuming topic %s from %s as group %s", cfg->kafka.topic,
                           consumer_bootstrap(sv->consumer), cfg->kafka.group);
        } else {
                log_notice("no [kafka] brokers configured: not consuming from Kafka");
        }
        struct api_options aopts = {
            .listen = cfg->api.listen,
            .max_body = (size_t)cfg->api.max_body,
            .threads = (unsigned)cfg->api.threads,
            .max_connections = (unsigned)cfg->api.max_connections,
            .connection_timeout_s = (unsigned)cfg->api.connection_timeout_s,
            .admin_token = cfg->api.admin_token,
            .pipeline = sv->pipeline,
            .deliver = sv->deliver,
            .ready = service_ready,
            .ready_ctx = sv,
        };
        r = api_start(&aopts, sv->store, sv->metrics, &sv->api, &err);
        if (r < 0) {
                log_error("cannot start the HTTP server: %s", err.msg);
                return r;
        }
        r = sweeper_start(&sv->sweeper, sv->store, cfg);
        if (r < 0) {
                log_error("cannot start the sweeper thread: %s", strerror(-r));
                return r;
        }
        sv->sweeper_running = true;
        return 0;
}

/* Stops in the order that loses nothing: no new requests, no new messages (final offsets are
 * committed), then deliveries in flight get a grace period (the rest are claimed again after
 * a restart), then the store closes. */
static void service_stop(struct service *sv)
{
        if (sv->sweeper_running)
                sweeper_stop(&sv->sweeper);
        sv->api = api_stop(sv->api);
        sv->consumer = consumer_stop(sv->consumer);
        sv->deliver = deliver_stop(sv->deliver, STOP_GRACE_MS);
        sv->pipeline = pipeline_free(sv->pipeline);
        sv->metrics = metrics_free(sv->metrics);
        sv->store = store_close(sv->store);
}

int service_run(const struct config *cfg)
{
        struct service sv = {0};
        char status[256];
        sigset_t set;
        int r, sig;

        /* Block before any thread exists, so every thread inherits the mask and the signals
         * reach only sigwaitinfo() below. */
        sigemptyset(&set);
        sigaddset(&set, SIGTERM);
        sigaddset(&set, SIGINT);
        sigaddset(&set, SIGHUP);
        pthread_sigmask(SIG_BLOCK, &set, NULL);
        /* A client closing its socket early must not kill the process. */
        signal(SIGPIPE, SIG_IGN);

        r = service_start(&sv, cfg);
        if (r < 0) {
                if (r == -ENOMEM)
                        log_error("out of memory");
                notify_stopping("failed to start");
                service_stop(&sv);
                return r;
        }
        format_listening(cfg->api.listen, api_port(sv.api), status, sizeof(status));
        log_notice("%s (store %s)", status, cfg->store.path);
        notify_ready(status);

        sig = wait_for_stop(&set);
        log_notice("%s received, shutting down", sig == SIGINT ? "SIGINT" : "SIGTERM");
        notify_stopping("shutting down");
        service_stop(&sv);
        log_notice("stopped");
        return 0;
}
