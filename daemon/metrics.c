/* Prometheus metrics of the process. Counters are relaxed atomics indexed by status code or
 * histogram bucket, so recording a request costs a few uncontended increments and a scrape
 * never blocks the request path. */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ctxhookd/metrics.h"

#define STATUS_SLOTS 600

static const double duration_buckets[] = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
                                          0.01,   0.025,   0.05,   0.1,   0.25,   0.5,
                                          1,      2.5,     5,      10};
#define N_BUCKETS (sizeof(duration_buckets) / sizeof(duration_buckets[0]))

static const char *const event_results[METRICS_EVENT__COUNT] = {"queued", "ignored", "dead",
                                                                "duplicate"};
static const char *const delivery_results[METRICS_DELIVERY__COUNT] = {"delivered", "retry", "dead"};
static const char *const reload_results[METRICS_RELOAD__COUNT] = {"applied", "refused"};
static const char *const gauge_names[METRICS_GAUGE__COUNT] = {
    "ctxhookd_outbox_depth", "ctxhookd_kafka_lag", "ctxhookd_dead_letters",
    "ctxhookd_store_unavailable"};
static const char *const gauge_help[METRICS_GAUGE__COUNT] = {
    "Deliveries queued in the outbox, in flight included.",
    "Messages of the assigned Kafka partitions not yet consumed.",
    "Dead letters kept (malformed events, deliveries failed for good).",
    "1 while the database cannot be reached (consumption and deliveries wait for it), else 0."};

/* One histogram: non-cumulative bucket counts (the last slot counts what is above every
 * bound, so +Inf and _count are one sum and stay consistent under concurrent updates). */
struct histogram {
        atomic_uint_fast64_t bucket[N_BUCKETS + 1];
        atomic_uint_fast64_t sum_ns;
};

struct metrics {
        atomic_uint_fast64_t http_by_status[STATUS_SLOTS];
        struct histogram http_duration;
        atomic_uint_fast64_t events[METRICS_EVENT__COUNT];
        /* Hook names, only ever appended (under hooks_lock) and published by n_hooks, so a
         * reader sees complete names without a lock and a hook keeps its counters across
         * reloads. */
        pthread_mutex_t hooks_lock;
        char *hooks[METRICS_HOOKS_MAX];
        atomic_size_t n_hooks;
        atomic_uint_fast64_t deliveries[METRICS_HOOKS_MAX][METRICS_DELIVERY__COUNT];
        struct histogram delivery_duration;
        atomic_llong gauges[METRICS_GAUGE__COUNT];
        atomic_uint_fast64_t reloads[METRICS_RELOAD__COUNT];
        double start_time;
};

struct metrics *metrics_new(void)
{
        struct metrics *m = calloc(1, sizeof(*m));
        struct timespec ts;

        if (!m)
                return NULL;
        pthread_mutex_init(&m->hooks_lock, NULL);
        clock_gettime(CLOCK_REALTIME, &ts);
        m->start_time = (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
        return m;
}

struct metrics *metrics_free(struct metrics *m)
{
        if (!m)
                return NULL;
        for (size_t i = 0; i < atomic_load(&m->n_hooks); i++)
                free(m->hooks[i]);
        pthread_mutex_destroy(&m->hooks_lock);
        free(m);
        return NULL;
}

static void histogram_observe(struct histogram *h, double seconds)
{
        size_t b = 0;

        if (seconds < 0)
                seconds = 0;
        while (b < N_BUCKETS && seconds > duration_buckets[b])
                b++;
        atomic_fetch_add_explicit(&h->bucket[b], 1, memory_order_relaxed);
        atomic_fetch_add_explicit(&h->sum_ns, (uint_fast64_t)(seconds * 1e9), memory_order_relaxed);
}

void metrics_http_request(struct metrics *m, unsigned status, double seconds)
{
        if (status < 100 || status >= STATUS_SLOTS)
                status = 0;
        atomic_fetch_add_explicit(&m->http_by_status[status], 1, memory_order_relaxed);
        histogram_observe(&m->http_duration, seconds);
}

void metrics_event(struct metrics *m, enum metrics_event_result r, unsigned long n)
{
        if ((unsigned)r < METRICS_EVENT__COUNT)
                atomic_fetch_add_explicit(&m->events[r], n, memory_order_relaxed);
}

static bool hook_known(const struct metrics *m, size_t n, const char *name, size_t *ret)
{
        for (size_t i = 0; i < n; i++)
                if (strcmp(m->hooks[i], name) == 0) {
                        if (ret)
                                *ret = i;
                        return true;
                }
        return false;
}

int metrics_set_hooks(struct metrics *m, const char *const *names, size_t n)
{
        size_t have, add = 0;
        int r = 0;

        pthread_mutex_lock(&m->hooks_lock);
        have = atomic_load_explicit(&m->n_hooks, memory_order_relaxed);
        for (size_t i = 0; i < n; i++) {
                bool repeated = false;

                for (size_t j = 0; j < i && !repeated; j++)
                        repeated = strcmp(names[i], names[j]) == 0;
                if (!repeated && !hook_known(m, have, names[i], NULL))
                        add++;
        }
        if (have + add > METRICS_HOOKS_MAX)
                r = -E2BIG;
        for (size_t i = 0; r == 0 && i < n; i++) {
                size_t now = atomic_load_explicit(&m->n_hooks, memory_order_relaxed);

                if (hook_known(m, now, names[i], NULL))
                        continue;
                m->hooks[now] = strdup(names[i]);
                if (!m->hooks[now])
                        r = -ENOMEM;
                else
                        atomic_store_explicit(&m->n_hooks, now + 1, memory_order_release);
        }
        pthread_mutex_unlock(&m->hooks_lock);
        return r;
}

void metrics_delivery(struct metrics *m, const char *hook, enum metrics_delivery_result r,
                      double seconds)
{
        size_t n = atomic_load_explicit(&m->n_hooks, memory_order_acquire), slot;

        if (!hook || !hook_known(m, n, hook, &slot) || (unsigned)r >= METRICS_DELIVERY__COUNT)
                return;
        atomic_fetch_add_explicit(&m->deliveries[slot][r], 1, memory_order_relaxed);
        histogram_observe(&m->delivery_duration, seconds);
}

void metrics_gauge_set(struct metrics *m, enum metrics_gauge g, long long value)
{
        if ((unsigned)g < METRICS_GAUGE__COUNT)
                atomic_store_explicit(&m->gauges[g], value, memory_order_relaxed);
}

long long metrics_gauge_get(struct metrics *m, enum metrics_gauge g)
{
        if ((unsigned)g >= METRICS_GAUGE__COUNT)
                return 0;
        return atomic_load_explicit(&m->gauges[g], memory_order_relaxed);
}

void metrics_reload(struct metrics *m, enum metrics_reload_result r)
{
        if ((unsigned)r < METRICS_RELOAD__COUNT)
                atomic_fetch_add_explicit(&m->reloads[r], 1, memory_order_relaxed);
}

static uint64_t load(atomic_uint_fast64_t *v)
{
        return atomic_load_explicit(v, memory_order_relaxed);
}

static int render_histogram(struct buf *out, const char *name, const char *help,
                            struct histogram *h)
{
        uint64_t cumulative = 0;
        int r;

        r = buf_printf(out, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
        for (size_t b = 0; r == 0 && b < N_BUCKETS; b++) {
                cumulative += load(&h->bucket[b]);
                r = buf_printf(out, "%s_bucket{le=\"%g\"} %llu\n", name, duration_buckets[b],
                               (unsigned long long)cumulative);
        }
        if (r < 0)
                return r;
        cumulative += load(&h->bucket[N_BUCKETS]);
        return buf_printf(out, "%s_bucket{le=\"+Inf\"} %llu\n%s_sum %.9f\n%s_count %llu\n", name,
                          (unsigned long long)cumulative, name, (double)load(&h->sum_ns) / 1e9,
                          name, (unsigned long long)cumulative);
}

/* A counter family with one series per outcome: name{result="…"}. */
static int render_by_result(struct buf *out, const char *name, const char *help,
                            const char *const *results, atomic_uint_fast64_t *values, size_t n)
{
        int r = buf_printf(out, "# HELP %s %s\n# TYPE %s counter\n", name, help, name);

        for (size_t i = 0; r == 0 && i < n; i++)
                r = buf_printf(out, "%s{result=\"%s\"} %llu\n", name, results[i],
                               (unsigned long long)load(&values[i]));
        return r;
}

/* Prometheus label values escape backslash, double quote and newline. */
static int append_label_value(struct buf *out, const char *v)
{
        int r = 0;

        for (; *v && r == 0; v++) {
                if (*v == '\\' || *v == '"')
                        r = buf_printf(out, "\\%c", *v);
                else if (*v == '\n')
                        r = buf_append_str(out, "\\n");
                else
                        r = buf_append(out, v, 1);
        }
        return r;
}

int metrics_render(struct metrics *m, struct buf *out)
{
        int r;

        r = buf_printf(out,
                       "# HELP ctxhookd_up Whether the daemon is running.\n"
                       "# TYPE ctxhookd_up gauge\nctxhookd_up 1\n"
                       "# HELP ctxhookd_start_time_seconds Start time of the process since "
                       "the Unix epoch.\n"
                       "# TYPE ctxhookd_start_time_seconds gauge\n"
                       "ctxhookd_start_time_seconds %.3f\n",
                       m->start_time);
        if (r < 0)
                return r;
        r = buf_append_str(out, "# HELP ctxhookd_http_requests_total HTTP requests answered, by "
                                "status code.\n# TYPE ctxhookd_http_requests_total counter\n");
        for (unsigned s = 0; r == 0 && s < STATUS_SLOTS; s++) {
                uint64_t n = load(&m->http_by_status[s]);
                if (n > 0)
                        r = buf_printf(out, "ctxhookd_http_requests_total{code=\"%u\"} %llu\n", s,
                                       (unsigned long long)n);
        }
        if (r == 0)
                r = render_histogram(out, "ctxhookd_http_request_duration_seconds",
                                     "Time from the first byte of a request to its response.",
                                     &m->http_duration);
        if (r == 0)
                r = render_by_result(out, "ctxhookd_events_total",
                                     "Conversation events by outcome (dead: messages that became "
                                     "dead letters; duplicate: messages recorded before).",
                                     event_results, m->events, METRICS_EVENT__COUNT);
        if (r == 0)
                r = buf_append_str(out, "# HELP ctxhookd_deliveries_total Webhook delivery "
                                        "attempts by hook and outcome.\n"
                                        "# TYPE ctxhookd_deliveries_total counter\n");
        size_t n_hooks = atomic_load_explicit(&m->n_hooks, memory_order_acquire);

        for (size_t h = 0; r == 0 && h < n_hooks; h++)
                for (size_t i = 0; r == 0 && i < METRICS_DELIVERY__COUNT; i++) {
                        r = buf_append_str(out, "ctxhookd_deliveries_total{hook=\"");
                        if (r == 0)
                                r = append_label_value(out, m->hooks[h]);
                        if (r == 0)
                                r = buf_printf(out, "\",result=\"%s\"} %llu\n", delivery_results[i],
                                               (unsigned long long)load(&m->deliveries[h][i]));
                }
        if (r == 0)
                r = render_histogram(out, "ctxhookd_delivery_duration_seconds",
                                     "Time of one webhook delivery attempt.",
                                     &m->delivery_duration);
        if (r == 0)
                r = render_by_result(out, "ctxhookd_config_reloads_total",
                                     "Configuration reloads (SIGHUP) by outcome.", reload_results,
                                     m->reloads, METRICS_RELOAD__COUNT);
        for (size_t g = 0; r == 0 && g < METRICS_GAUGE__COUNT; g++)
                r = buf_printf(
                    out, "# HELP %s %s\n# TYPE %s gauge\n%s %lld\n", gauge_names[g], gauge_help[g],
                    gauge_names[g], gauge_names[g],
                    (long long)atomic_load_explicit(&m->gauges[g], memory_order_relaxed));
        return r;
}
