/* Unit tests of the metrics exposition: counts by code, a consistent histogram. */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "ctxhookd/metrics.h"

static unsigned long long value_of(const char *text, const char *series)
{
        const char *p = strstr(text, series);
        unsigned long long v = 0;

        cr_assert_not_null(p, "series %s missing in:\n%s", series, text);
        cr_assert_eq(sscanf(p + strlen(series), " %llu", &v), 1);
        return v;
}

Test(metrics, counts_by_status_and_histogram)
{
        struct metrics *m = metrics_new();
        struct buf out;

        cr_assert_not_null(m);
        metrics_http_request(m, 200, 0.0002);
        metrics_http_request(m, 200, 0.003);
        metrics_http_request(m, 404, 0.02);
        metrics_http_request(m, 503, 30.0); /* above every bucket */
        metrics_http_request(m, 42, 0.001); /* not an HTTP status: counted as code 0 */
        buf_init(&out, 1 << 20);
        cr_assert_eq(metrics_render(m, &out), 0);
        cr_assert_eq(value_of(out.data, "ctxhookd_http_requests_total{code=\"200\"}"), 2);
        cr_assert_eq(value_of(out.data, "ctxhookd_http_requests_total{code=\"404\"}"), 1);
        cr_assert_eq(value_of(out.data, "ctxhookd_http_requests_total{code=\"503\"}"), 1);
        cr_assert_eq(value_of(out.data, "ctxhookd_http_requests_total{code=\"0\"}"), 1);
        cr_assert_null(strstr(out.data, "code=\"500\""));
        cr_assert_eq(
            value_of(out.data, "ctxhookd_http_request_duration_seconds_bucket{le=\"0.00025\"}"), 1);
        cr_assert_eq(
            value_of(out.data, "ctxhookd_http_request_duration_seconds_bucket{le=\"0.005\"}"), 3);
        cr_assert_eq(value_of(out.data, "ctxhookd_http_request_duration_seconds_bucket{le=\"10\"}"),
                     4);
        cr_assert_eq(
            value_of(out.data, "ctxhookd_http_request_duration_seconds_bucket{le=\"+Inf\"}"), 5);
        cr_assert_eq(value_of(out.data, "ctxhookd_http_request_duration_seconds_count"), 5);
        cr_assert(strstr(out.data, "# TYPE ctxhookd_http_request_duration_seconds histogram\n"));
        cr_assert(strstr(out.data, "# TYPE ctxhookd_http_requests_total counter\n"));
        double sum = 0;
        const char *p = strstr(out.data, "ctxhookd_http_request_duration_seconds_sum ");
        cr_assert_not_null(p);
        cr_assert_eq(sscanf(p, "ctxhookd_http_request_duration_seconds_sum %lf", &sum), 1);
        cr_assert_float_eq(sum, 30.0242, 1e-6);
        buf_free(&out);
        metrics_free(m);
}

Test(metrics, render_respects_buffer_cap)
{
        struct metrics *m = metrics_new();
        struct buf out;

        buf_init(&out, 64);
        cr_assert_eq(metrics_render(m, &out), -E2BIG);
        cr_assert_null(out.data);
        metrics_free(m);
}
