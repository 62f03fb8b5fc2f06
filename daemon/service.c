/* Wiring of the daemon's parts and its life cycle. Signals are blocked in every thread and
 * taken synchronously by the main thread with sigtimedwait(), so no code runs in signal
 * context. Between signals the main thread is the watchdog: each tick it asks every worker
 * thread (HTTP, consumer, delivery, sweeper) when it last made progress and sends systemd
 * WATCHDOG=1 only when none is stuck, and it keeps STATUS= up to date. SIGHUP reloads the
 * config file: hooks, [log], [delivery] and [kafka] account/max_message_bytes change live,
 * everything else keeps its running value and the log says it needs a restart. The sweeper
 * thread deletes expired Context API data on a timer. A store that cannot be reached stops
 * nothing: the consumer and the deliverer wait for it and resume by themselves, STATUS= and
 * ctxhookd_store_unavailable say so meanwhile (from what those threads saw: the main thread
 * never waits on the store), and /readyz answers 503. */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "ctxhookd/clock.h"
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
/* Without a systemd watchdog, a thread stuck this long is still logged. */
#define STALL_LOG_MS 60000
/* A thread is stalled after half the watchdog interval, but never sooner than this: the
 * delivery thread goes round its loop once a second when idle, the consumer ten times. */
#define STALL_MIN_MS 3000
/* The main thread's tick: watchdog pings and STATUS= updates. */
#define TICK_MAX_MS 1000
#define TICK_MIN_MS 50

struct sweeper {
        pthread_t thread;
        pthread_mutex_t lock;
        pthread_cond_t wake;
        bool stop;
        struct store *store;
        long long interval_s;
        _Atomic long long retention_s; /* [delivery] retention_s: a reload changes it */
        _Atomic int64_t busy_since_ms; /* CLOCK_MONOTONIC; 0 while waiting (watchdog) */
        bool failing;                  /* the last sweep failed: logged once until one works */
};

long long service_now_ms(void)
{
        return clock_wall_ms();
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
                atomic_store(&sw->busy_since_ms, clock_mono_ms());
                r = store_sweep(sw->store, service_now_ms(), &deleted);
                if (r < 0 && !sw->failing)
                        log_warning("sweeper: deleting expired data failed: %s; trying again "
                                    "every %lld s",
                                    strerror(-r), sw->interval_s);
                else if (r == 0 && deleted > 0)
                        log_info("sweeper: deleted %lld expired rows", (long long)deleted);
                if (r == 0) {
                        r = store_dedup_expire(
                            sw->store, service_now_ms() - atomic_load(&sw->retention_s) * 1000,
                            &deleted);
                        if (r < 0 && !sw->failing)
                                log_warning("sweeper: forgetting old dedup keys failed: %s",
                                            strerror(-r));
                        else if (r == 0 && deleted > 0)
                                log_debug("sweeper: forgot %lld dedup keys", (long long)deleted);
                }
                if (r == 0 && sw->failing)
                        log_notice("sweeper: works again");
                sw->failing = r < 0;
                atomic_store(&sw->busy_since_ms, 0);
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
        sw->failing = false;
        sw->store = store;
        sw->interval_s = cfg->store.sweep_interval_s;
        atomic_store(&sw->retention_s, cfg->delivery.retention_s);
        atomic_store(&sw->busy_since_ms, 0);
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
        const struct config *cfg; /* as started: what needs a restart comes from here */
        struct config *reloaded;  /* the config in force since the last reload, or NULL */
        struct store *store;
        struct metrics *metrics;
        struct pipeline *pipeline;
        struct deliver *deliver;
        struct consumer *consumer;
        struct api *api;
        struct sweeper sweeper;
        bool sweeper_running;

        char listening[128];   /* "listening on http://…" */
        char store_what[1200]; /* store_describe(): never a password */
        char status[1024];     /* the last STATUS= sent */
        char refused[256];     /* why the last reload was refused; "" after one that applied */
        int64_t watchdog_ms;   /* systemd's WatchdogSec, 0 = none */
        int stalled;           /* index of the stalled part being reported, -1 = none */
};

/* The config whose live options are in force. */
static const struct config *service_config(const struct service *sv)
{
        return sv->reloaded ? sv->reloaded : sv->cfg;
}

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
        struct store_options sopts;
        struct ch_error err = {{0}};
        int r;

        sv->cfg = cfg;
        config_store_options(cfg, &sopts);
        store_describe(&sopts, sv->store_what, sizeof(sv->store_what));
        r = store_open(&sopts, &sv->store, &err);
        if (r < 0) {
                log_error("cannot open the store: %s", err.msg);
                return r;
        }
        sv->metrics = metrics_new();
        if (!sv->metrics)
                return -ENOMEM;
        /* The hooks' names reach the metrics through deliver_start, as on every reload. */
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
        /* threads = 0 is one per CPU, which suits SQLite (a read costs CPU, not waiting). A
         * PostgreSQL call waits for the network and the server: a thread per pooled
         * connection keeps the pool busy (with one per CPU, two here, one instance served 5.5k
         * to 17k GET/s, with 8 a steady 22k; tests/bench/pg_bench.sh). */
        unsigned api_threads = (unsigned)cfg->api.threads;
        if (api_threads == 0 && strcmp(cfg->store.backend, "postgresql") == 0) {
                long cpus = sysconf(_SC_NPROCESSORS_ONLN);

                api_threads = (unsigned)cfg->store.pool_size;
                if (cpus > (long)api_threads)
                        api_threads = (unsigned)cpus;
        }
        struct api_options aopts = {
            .listen = cfg->api.listen,
            .max_body = (size_t)cfg->api.max_body,
            .threads = api_threads,
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
        int64_t t0 = clock_mono_ms(), t_api, t_consumer, t_deliver;

        if (sv->sweeper_running)
                sweeper_stop(&sv->sweeper);
        sv->api = api_stop(sv->api);
        t_api = clock_mono_ms();
        sv->consumer = consumer_stop(sv->consumer);
        t_consumer = clock_mono_ms();
        sv->deliver = deliver_stop(sv->deliver, STOP_GRACE_MS);
        t_deliver = clock_mono_ms();
        /* Where a slow stop spent its time, against TimeoutStopSec. */
        log_info("stop: HTTP closed after %" PRId64 " ms, Kafka consumer closed (offsets "
                 "committed) after %" PRId64 " ms, deliveries in flight settled after %" PRId64
                 " ms",
                 t_api - t0, t_consumer - t_api, t_deliver - t_consumer);
        sv->pipeline = pipeline_free(sv->pipeline);
        sv->metrics = metrics_free(sv->metrics);
        sv->store = store_close(sv->store);
        sv->reloaded = config_free(sv->reloaded);
}

/* "a, b, c" of the hooks of `of` that `in` has (want_in) or lacks (!want_in). */
static void hook_names_where(const struct config *of, const struct config *in, bool want_in,
                             char *out, size_t size)
{
        size_t len = 0;

        out[0] = '\0';
        for (size_t i = 0; i < of->n_hooks && len < size; i++) {
                bool found = false;

                for (size_t j = 0; j < in->n_hooks && !found; j++)
                        found = strcmp(of->hooks[i].name, in->hooks[j].name) == 0;
                if (found != want_in)
                        continue;
                len += (size_t)snprintf(out + len, size - len, "%s%s", len ? ", " : "",
                                        of->hooks[i].name);
        }
        if (!out[0])
                snprintf(out, size, "none");
}

static void log_lines(int level, const char *prefix, const char *text)
{
        while (*text) {
                const char *nl = strchr(text, '\n');
                int n = nl ? (int)(nl - text) : (int)strlen(text);

                log_msg(level, "%s%.*s", prefix, n, text);
                text += n + (nl ? 1 : 0);
        }
}

/* Whether the consumer or the deliverer found the store gone; why gets the reason (one line,
 * as every store reason is: a line break would end STATUS=). */
static bool store_unavailable(struct service *sv, char *why, size_t why_size)
{
        return (sv->consumer && consumer_store_unavailable(sv->consumer, why, why_size)) ||
               (sv->deliver && deliver_store_unavailable(sv->deliver, why, why_size));
}

/* STATUS=: where it listens, what it consumes, how much waits. Sent when it changes. */
static void update_status(struct service *sv)
{
        char text[sizeof(sv->status)];
        long long depth = metrics_gauge_get(sv->metrics, METRICS_OUTBOX_DEPTH);
        long long dead = metrics_gauge_get(sv->metrics, METRICS_DEAD_LETTERS);
        char kafka[512], why[256];
        bool down = store_unavailable(sv, why, sizeof(why));

        metrics_gauge_set(sv->metrics, METRICS_STORE_UNAVAILABLE, down);
        if (down)
                snprintf(kafka, sizeof(kafka), "store unavailable (%s): %sdeliveries waiting", why,
                         sv->consumer ? "consumption paused, " : "");
        else if (!sv->consumer)
                snprintf(kafka, sizeof(kafka), "not consuming from Kafka");
        else if (consumer_ready(sv->consumer))
                snprintf(kafka, sizeof(kafka), "consuming %s", sv->cfg->kafka.topic);
        else
                snprintf(kafka, sizeof(kafka), "waiting for partitions of %s",
                         sv->cfg->kafka.topic);
        snprintf(text, sizeof(text), "%s; %s; outbox %lld queued, %lld dead letters%s%s",
                 sv->listening, kafka, depth, dead,
                 sv->refused[0] ? "; last reload refused, the running configuration stays: " : "",
                 sv->refused);
        if (strcmp(text, sv->status) == 0)
                return;
        snprintf(sv->status, sizeof(sv->status), "%s", text);
        notify_status(sv->status);
}

/* SIGHUP: reads the file the daemon started with again. A config that does not validate, or
 * whose hooks cannot be set up, is refused as a whole and the running one stays in force.
 * Order matters: the deliverer learns new hooks before the pipeline queues work for them. */
static void service_reload(struct service *sv)
{
        const struct config *running = service_config(sv);
        const char *path = strcmp(sv->cfg->source, "<embedded>") == 0 ? NULL : sv->cfg->source;
        struct config *next = NULL;
        struct ch_error err = {{0}}, notes = {{0}};
        char added[512], removed[512];
        int r;

        notify_reloading("reloading the configuration");
        log_notice("SIGHUP: reloading the configuration from %s", sv->cfg->source);
        r = config_load(path, &next, &err);
        if (r < 0) {
                log_lines(LOG_LEVEL_ERR, "reload refused: ", err.msg);
                goto refused;
        }
        r = config_keep_restart_options(next, running, &notes);
        if (r < 0) {
                snprintf(err.msg, sizeof(err.msg), "out of memory");
                log_error("reload refused: out of memory");
                goto refused;
        }
        log_lines(LOG_LEVEL_WARNING, "reload: ", notes.msg);
        if (sv->deliver) {
                r = deliver_reconfigure(sv->deliver, next, &err);
                if (r < 0) {
                        log_error("reload refused: %s", err.msg);
                        goto refused;
                }
        }
        pipeline_reconfigure(sv->pipeline, next);
        if (sv->consumer)
                consumer_set_outbox_max(sv->consumer, next->delivery.outbox_max);
        atomic_store(&sv->sweeper.retention_s, next->delivery.retention_s);
        log_set_level(log_level_from_string(next->log.level));

        hook_names_where(next, running, false, added, sizeof(added));
        hook_names_where(running, next, false, removed, sizeof(removed));
        log_notice("configuration reloaded: %zu hook(s); added: %s; removed: %s; log level %s",
                   next->n_hooks, added, removed, next->log.level);
        if (strcmp(removed, "none") != 0)
                log_warning("reload: queued deliveries of removed hooks (%s) become dead letters "
                            "when they fall due; add the hook back and redrive them to send them",
                            removed);
        /* Nothing uses the previous config any more: the deliverer and the pipeline have both
         * switched. The one the daemon started with stays: restart-only parts read it. */
        config_free(sv->reloaded);
        sv->reloaded = next;
        sv->refused[0] = '\0';
        metrics_reload(sv->metrics, METRICS_RELOAD_APPLIED);
        update_status(sv);
        notify_ready(sv->status);
        return;

refused:
        config_free(next);
        metrics_reload(sv->metrics, METRICS_RELOAD_REFUSED);
        /* Shown in STATUS= (one line: the first problem) until a reload applies. */
        snprintf(sv->refused, sizeof(sv->refused), "%.*s", (int)strcspn(err.msg, "\n"), err.msg);
        update_status(sv);
        notify_ready(sv->status);
}

/* The watchdog's tick: WATCHDOG=1 only while no thread is stuck; a stall (and its end) is
 * logged once. Without a systemd watchdog, stalls are still logged after STALL_LOG_MS. */
static void watchdog_tick(struct service *sv)
{
        struct notify_part parts[4];
        size_t n = 0;
        int64_t now = clock_mono_ms(), limit = STALL_LOG_MS;
        int stalled;

        if (sv->watchdog_ms)
                limit = sv->watchdog_ms / 2 > STALL_MIN_MS ? sv->watchdog_ms / 2 : STALL_MIN_MS;
        parts[n++] = (struct notify_part){"HTTP", api_busy_since_ms(sv->api)};
        if (sv->consumer)
                parts[n++] =
                    (struct notify_part){"Kafka consumer", consumer_last_progress_ms(sv->consumer)};
        parts[n++] = (struct notify_part){"delivery", deliver_last_progress_ms(sv->deliver)};
        parts[n++] = (struct notify_part){"sweeper", atomic_load(&sv->sweeper.busy_since_ms)};
        stalled = notify_stalled(parts, n, now, limit);
        if (stalled >= 0 && sv->stalled < 0)
                log_error("watchdog: the %s thread has made no progress for %" PRId64 " ms%s",
                          parts[stalled].name, now - parts[stalled].since_ms,
                          sv->watchdog_ms ? "; no longer telling systemd that all is well" : "");
        else if (stalled < 0 && sv->stalled >= 0)
                log_notice("watchdog: every thread makes progress again");
        sv->stalled = stalled;
        if (stalled < 0 && sv->watchdog_ms)
                notify_watchdog();
}

/* The tick: a quarter of the watchdog interval, so a ping is never late, within bounds. */
static int64_t tick_ms(const struct service *sv)
{
        int64_t t = sv->watchdog_ms ? sv->watchdog_ms / 4 : TICK_MAX_MS;

        return t < TICK_MIN_MS ? TICK_MIN_MS : t > TICK_MAX_MS ? TICK_MAX_MS : t;
}

/* Until SIGTERM or SIGINT: reloads on SIGHUP, ticks in between. Returns the signal. */
static int service_loop(struct service *sv, const sigset_t *set)
{
        for (;;) {
                int64_t t = tick_ms(sv);
                struct timespec timeout = {t / 1000, (long)(t % 1000) * 1000000L};
                siginfo_t info;
                int sig = sigtimedwait(set, &info, &timeout);

                if (sig < 0 && errno != EAGAIN && errno != EINTR) {
                        log_error("waiting for signals failed: %s", strerror(errno));
                        return SIGTERM;
                }
                if (sig == SIGHUP)
                        service_reload(sv);
                else if (sig > 0)
                        return sig;
                watchdog_tick(sv);
                update_status(sv);
        }
}

int service_run(const struct config *cfg)
{
        struct service sv = {.stalled = -1};
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
        format_listening(cfg->api.listen, api_port(sv.api), sv.listening, sizeof(sv.listening));
        log_notice("%s (store %s)", sv.listening, sv.store_what);
        sv.watchdog_ms = notify_watchdog_interval_ms();
        if (sv.watchdog_ms > 0)
                log_info("watchdog: systemd expects a sign of life every %" PRId64 " ms",
                         sv.watchdog_ms);
        update_status(&sv);
        notify_ready(sv.status);

        sig = service_loop(&sv, &set);
        log_notice("%s received, shutting down", sig == SIGINT ? "SIGINT" : "SIGTERM");
        notify_stopping("shutting down");
        service_stop(&sv);
        log_notice("stopped");
        return 0;
}
