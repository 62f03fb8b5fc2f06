/* Unit tests of the metrics exposition: every family, consistent histograms, label escaping. */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ctxhookd/metrics.h"

/* The value of the sample line "series value" (a whole line, not a HELP text mentioning it). */
static unsigned long long value_of(const char *text, const char *series)
{
        char needle[512];
        const char *p;
        unsigned long long v = 0;

        snprintf(needle, sizeof(needle), "\n%s ", series);
        p = strstr(text, needle);
        cr_assert_not_null(p, "series %s missing in:\n%s", series, text);
        cr_assert_eq(sscanf(p + strlen(needle), "%llu", &v), 1);
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

Test(metrics, pipeline_families)
{
        struct metrics *m = metrics_new();
        const char *hooks[] = {"notes-on-autoclose", "we\"ird\\hook"};
        struct buf out;

        cr_assert_eq(metrics_set_hooks(m, hooks, 2), 0);
        metrics_event(m, METRICS_EVENT_QUEUED, 3);
        metrics_event(m, METRICS_EVENT_IGNORED, 1);
        metrics_event(m, METRICS_EVENT_DEAD, 2);
        metrics_delivery(m, "notes-on-autoclose", METRICS_DELIVERY_DELIVERED, 0.004);
        metrics_delivery(m, "notes-on-autoclose", METRICS_DELIVERY_RETRY, 0.5);
        metrics_delivery(m, "we\"ird\\hook", METRICS_DELIVERY_DEAD, 0.02);
        metrics_delivery(m, "never-registered", METRICS_DELIVERY_DEAD, 0.02); /* ignored */
        metrics_gauge_set(m, METRICS_OUTBOX_DEPTH, 42);
        metrics_gauge_set(m, METRICS_KAFKA_LAG, 7);
        metrics_gauge_set(m, METRICS_DEAD_LETTERS, 2);
        buf_init(&out, 1 << 20);
        cr_assert_eq(metrics_render(m, &out), 0);
        cr_assert_eq(value_of(out.data, "ctxhookd_events_total{result=\"queued\"}"), 3);
        cr_assert_eq(value_of(out.data, "ctxhookd_events_total{result=\"ignored\"}"), 1);
        cr_assert_eq(value_of(out.data, "ctxhookd_events_total{result=\"dead\"}"), 2);
        cr_assert_eq(value_of(out.data, "ctxhookd_deliveries_total{hook=\"notes-on-autoclose\","
                                        "result=\"delivered\"}"),
                     1);
        cr_assert_eq(value_of(out.data, "ctxhookd_deliveries_total{hook=\"notes-on-autoclose\","
                                        "result=\"retry\"}"),
                     1);
        /* Label values are escaped as the exposition format requires. */
        cr_assert_eq(
            value_of(out.data,
                     "ctxhookd_deliveries_total{hook=\"we\\\"ird\\\\hook\",result=\"dead\"}"),
            1);
        cr_assert_eq(value_of(out.data, "ctxhookd_delivery_duration_seconds_count"), 3);
        cr_assert_eq(value_of(out.data, "ctxhookd_delivery_duration_seconds_bucket{le=\"0.005\"}"),
                     1);
        cr_assert_eq(value_of(out.data, "ctxhookd_outbox_depth"), 42);
        cr_assert_eq(value_of(out.data, "ctxhookd_kafka_lag"), 7);
        cr_assert_eq(value_of(out.data, "ctxhookd_dead_letters"), 2);
        cr_assert(strstr(out.data, "# TYPE ctxhookd_outbox_depth gauge\n"));
        cr_assert(strstr(out.data, "# TYPE ctxhookd_delivery_duration_seconds histogram\n"));
        /* Every sample line belongs to a family announced by a TYPE line before it. */
        char *copy = strdup(out.data), *save = NULL, fam[128] = "";
        for (char *l = strtok_r(copy, "\n", &save); l; l = strtok_r(NULL, "\n", &save)) {
                if (strncmp(l, "# TYPE ", 7) == 0) {
                        sscanf(l + 7, "%127s", fam);
                        continue;
                }
                if (l[0] == '#')
                        continue;
                cr_assert_eq(strncmp(l, fam, strlen(fam)), 0, "'%s' outside family %s", l, fam);
        }
        free(copy);
        buf_free(&out);
        metrics_free(m);
}

Test(metrics, too_many_hooks_are_refused)
{
        struct metrics *m = metrics_new();
        char names[METRICS_HOOKS_MAX + 1][16];
        const char *ptrs[METRICS_HOOKS_MAX + 1];
        struct buf out;

        for (size_t i = 0; i <= METRICS_HOOKS_MAX; i++) {
                snprintf(names[i], sizeof(names[i]), "h%zu", i);
                ptrs[i] = names[i];
        }
        cr_assert_eq(metrics_set_hooks(m, ptrs, METRICS_HOOKS_MAX + 1), -E2BIG);
        /* Refused as a whole: nothing was registered. */
        metrics_delivery(m, "h0", METRICS_DELIVERY_DELIVERED, 0.1);
        buf_init(&out, 1 << 22);
        cr_assert_eq(metrics_render(m, &out), 0);
        cr_assert_null(strstr(out.data, "hook=\"h0\""));
        buf_free(&out);
        cr_assert_eq(metrics_set_hooks(m, ptrs, METRICS_HOOKS_MAX), 0);
        /* A repeat of known names adds nothing, so it still fits; one more name does not. */
        cr_assert_eq(metrics_set_hooks(m, ptrs, METRICS_HOOKS_MAX), 0);
        cr_assert_eq(metrics_set_hooks(m, &ptrs[METRICS_HOOKS_MAX], 1), -E2BIG);
        metrics_free(m);
}

/* A reload registers the new set of hooks: a hook that stays keeps its counts, a removed one
 * keeps its (final) counts, a new one starts at zero. */
Test(metrics, hooks_registered_again_keep_their_counters)
{
        struct metrics *m = metrics_new();
        const char *before[] = {"a", "b"}, *after[] = {"b", "c"};
        struct buf out;

        cr_assert_eq(metrics_set_hooks(m, before, 2), 0);
        metrics_delivery(m, "a", METRICS_DELIVERY_DELIVERED, 0.01);
        metrics_delivery(m, "b", METRICS_DELIVERY_DELIVERED, 0.01);
        cr_assert_eq(metrics_set_hooks(m, after, 2), 0);
        metrics_delivery(m, "b", METRICS_DELIVERY_DELIVERED, 0.01);
        metrics_delivery(m, "c", METRICS_DELIVERY_RETRY, 0.01);
        buf_init(&out, 1 << 20);
        cr_assert_eq(metrics_render(m, &out), 0);
        cr_assert_eq(
            value_of(out.data, "ctxhookd_deliveries_total{hook=\"a\",result=\"delivered\"}"), 1);
        cr_assert_eq(
            value_of(out.data, "ctxhookd_deliveries_total{hook=\"b\",result=\"delivered\"}"), 2);
        cr_assert_eq(value_of(out.data, "ctxhookd_deliveries_total{hook=\"c\",result=\"retry\"}"),
                     1);
        cr_assert_eq(
            value_of(out.data, "ctxhookd_deliveries_total{hook=\"c\",result=\"delivered\"}"), 0);
        cr_assert_eq(value_of(out.data, "ctxhookd_delivery_duration_seconds_count"), 4);
        buf_free(&out);
        metrics_free(m);
}
