/* Prometheus metrics of the process. Counters are relaxed atomics indexed by status code or
 * histogram bucket, so recording a request costs a few uncontended increments and a scrape
 * never blocks the request path. */
#include <errno.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <time.h>

#include "ctxhookd/metrics.h"

#define STATUS_SLOTS 600

static const double duration_buckets[] = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
                                          0.01,   0.025,   0.05,   0.1,   0.25,   0.5,
                                          1,      2.5,     5,      10};
#define N_BUCKETS (sizeof(duration_buckets) / sizeof(duration_buckets[0]))

struct metrics {
        atomic_uint_fast64_t http_by_status[STATUS_SLOTS];
        /* Non-cumulative, summed on render; the last slot counts requests above every bound,
         * so +Inf and _count are that same sum and stay consistent under concurrent updates. */
        atomic_uint_fast64_t http_bucket[N_BUCKETS + 1];
        atomic_uint_fast64_t http_sum_ns;
        double start_time;
};

struct metrics *metrics_new(void)
{
        struct metrics *m = calloc(1, sizeof(*m));
        struct timespec ts;

        if (!m)
                return NULL;
        clock_gettime(CLOCK_REALTIME, &ts);
        m->start_time = (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
        return m;
}

struct metrics *metrics_free(struct metrics *m)
{
        free(m);
        return NULL;
}

void metrics_http_request(struct metrics *m, unsigned status, double seconds)
{
        size_t b = 0;

        if (status < 100 || status >= STATUS_SLOTS)
                status = 0;
        if (seconds < 0)
                seconds = 0;
        atomic_fetch_add_explicit(&m->http_by_status[status], 1, memory_order_relaxed);
        while (b < N_BUCKETS && seconds > duration_buckets[b])
                b++;
        atomic_fetch_add_explicit(&m->http_bucket[b], 1, memory_order_relaxed);
        atomic_fetch_add_explicit(&m->http_sum_ns, (uint_fast64_t)(seconds * 1e9),
                                  memory_order_relaxed);
}

static uint64_t load(atomic_uint_fast64_t *v)
{
        return atomic_load_explicit(v, memory_order_relaxed);
}

int metrics_render(struct metrics *m, struct buf *out)
{
        uint64_t cumulative = 0;
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
        if (r < 0)
                return r;
        for (unsigned s = 0; s < STATUS_SLOTS; s++) {
                uint64_t n = load(&m->http_by_status[s]);
                if (n == 0)
                        continue;
                r = buf_printf(out, "ctxhookd_http_requests_total{code=\"%u\"} %llu\n", s,
                               (unsigned long long)n);
                if (r < 0)
                        return r;
        }
        r = buf_append_str(out, "# HELP ctxhookd_http_request_duration_seconds Time from the "
                                "first byte of a request to its response.\n"
                                "# TYPE ctxhookd_http_request_duration_seconds histogram\n");
        if (r < 0)
                return r;
        for (size_t b = 0; b < N_BUCKETS; b++) {
                cumulative += load(&m->http_bucket[b]);
                r = buf_printf(out,
                               "ctxhookd_http_request_duration_seconds_bucket{le=\"%g\"} %llu\n",
                               duration_buckets[b], (unsigned long long)cumulative);
                if (r < 0)
                        return r;
        }
        cumulative += load(&m->http_bucket[N_BUCKETS]);
        return buf_printf(out,
                          "ctxhookd_http_request_duration_seconds_bucket{le=\"+Inf\"} %llu\n"
                          "ctxhookd_http_request_duration_seconds_sum %.9f\n"
                          "ctxhookd_http_request_duration_seconds_count %llu\n",
                          (unsigned long long)cumulative, (double)load(&m->http_sum_ns) / 1e9,
                          (unsigned long long)cumulative);
}
