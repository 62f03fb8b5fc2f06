/* GET /metrics of the real ctxhookd binary, parsed with the strict exposition parser of
 * support_prom.c and checked against what the test made the daemon do. One test drives a known
 * mix of traffic (Context API answers 200, 204, 403 and 404, event ingest over HTTP with a
 * repeated Idempotency-Key and a refused event, Kafka events produced with kcat that queue,
 * are ignored or are malformed, a hook whose receiver is down) and then requires exact values:
 * the per-code request counts as deltas between two scrapes, every request of the test (the
 * scrapes included) in the duration histogram, events by outcome, deliveries per hook and
 * outcome, the delivery histogram, the outbox back at 0 and the dead-letter gauge equal to
 * what the admin endpoint lists. Another checks the families of a daemon that has done
 * nothing. The parser itself is tested first, on a valid text and on broken ones it must
 * refuse, so that "the exposition parses" means something. */
#include <criterion/criterion.h>
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ctxhookd/cleanup.h"
#include "support_daemon.h"
#include "support_prom.h"
#include "support_sink.h"

#define ACCT       "12345678"
#define TOPIC      "conversation-events"
#define ADMIN      "it-metrics-admin-token-0123456789"
#define PFX        "/v1/account/" ACCT
#define HOOK_END   "notes.on-end"
#define HOOK_IDLE  "idle-down"
#define WAIT_MS    30000
#define READY_MS   20000
#define CODES      600
#define METRICS_CT "text/plain; version=0.0.4"

/* ---- the parser on its own ---- */

static struct prom_exposition *parse_ok(const char *text)
{
        struct prom_exposition *e = NULL;
        char why[600];
        int r = prom_parse(text, strlen(text), &e, why, sizeof(why));

        cr_assert_eq(r, 0, "a valid exposition was refused: %s\n%s", why, text);
        return e;
}

static double value_of(const struct prom_exposition *e, const char *name, const char *const *labels)
{
        const struct prom_sample *s = prom_sample(e, name, labels);

        cr_assert_not_null(s, "no sample %s%s%s%s", name, labels && labels[0] ? "{" : "",
                           labels && labels[0] ? labels[0] : "", labels && labels[0] ? "…}" : "");
        return s->value;
}

#define L(...) ((const char *const[]){__VA_ARGS__, NULL})

Test(prom, accepts_valid_text)
{
        static const char text[] =
            "# a comment, then blank lines are ignored\n"
            "\n"
            "# HELP t_requests_total Requests, with a \\\\ backslash and a \\n newline.\n"
            "# TYPE t_requests_total counter\n"
            "t_requests_total{code=\"200\",path=\"/a\\\"b\\\\c\\nd\"} 3\n"
            "t_requests_total{ code = \"404\" , } 1 1700000000000\n"
            "# TYPE t_gauge gauge\n"
            "# HELP t_gauge A gauge: \"quoted\" is fine in HELP.\n"
            "t_gauge -2.5e3\n"
            "# HELP t_dur Durations.\n"
            "# TYPE t_dur histogram\n"
            "t_dur_bucket{hook=\"a\",le=\"0.1\"} 1\n"
            "t_dur_bucket{hook=\"a\",le=\"1\"} 3\n"
            "t_dur_bucket{hook=\"a\",le=\"+Inf\"} 4\n"
            "t_dur_sum{hook=\"a\"} 2.75\n"
            "t_dur_count{hook=\"a\"} 4\n"
            "t_dur_bucket{le=\"1\",hook=\"b\"} 0\n"
            "t_dur_bucket{hook=\"b\",le=\"+Inf\"} 0\n"
            "t_dur_sum{hook=\"b\"} 0\n"
            "t_dur_count{hook=\"b\"} 0\n"
            "# HELP t_empty No samples yet.\n"
            "# TYPE t_empty counter\n"
            "# HELP t_odd:name_x Colons are allowed in metric names.\n"
            "# TYPE t_odd:name_x gauge\n"
            "t_odd:name_x NaN\n";
        struct prom_exposition *e = parse_ok(text);
        const struct prom_family *f;
        const struct prom_sample *s;

        cr_assert_eq(e->n_families, 5);
        f = prom_family(e, "t_requests_total");
        cr_assert_not_null(f);
        cr_assert_eq(f->type, PROM_COUNTER);
        cr_assert_str_eq(f->help, "Requests, with a \\ backslash and a \n newline.");
        cr_assert_eq(f->n_samples, 2);
        s = prom_sample(e, "t_requests_total", L("path", "/a\"b\\c\nd", "code", "200"));
        cr_assert_not_null(s, "the escaped label value was not decoded");
        cr_assert_eq(s->value, 3);
        cr_assert(!s->has_timestamp);
        s = prom_sample(e, "t_requests_total", L("code", "404"));
        cr_assert_not_null(s);
        cr_assert(s->has_timestamp && s->timestamp == 1700000000000LL);
        cr_assert_null(prom_sample(e, "t_requests_total", L("code", "200")),
                       "a subset of the labels must not match");
        cr_assert_eq(prom_family(e, "t_gauge")->type, PROM_GAUGE);
        cr_assert_str_eq(prom_family(e, "t_gauge")->help, "A gauge: \"quoted\" is fine in HELP.");
        cr_assert_eq(value_of(e, "t_gauge", NULL), -2500);
        cr_assert_eq(prom_family(e, "t_dur")->type, PROM_HISTOGRAM);
        cr_assert_eq(prom_family(e, "t_dur")->n_samples, 9);
        cr_assert_eq(value_of(e, "t_dur_bucket", L("hook", "a", "le", "1")), 3);
        cr_assert_eq(value_of(e, "t_dur_count", L("hook", "a")), 4);
        cr_assert_eq(value_of(e, "t_dur_sum", L("hook", "a")), 2.75);
        cr_assert_eq(prom_family(e, "t_empty")->n_samples, 0);
        cr_assert(isnan(value_of(e, "t_odd:name_x", NULL)));
        prom_free(e);

        /* Nothing at all is a valid (empty) exposition. */
        e = parse_ok("");
        cr_assert_eq(e->n_families, 0);
        prom_free(e);
}

#define GAUGE_X "# HELP x X.\n# TYPE x gauge\n"
#define HIST_H  "# HELP h H.\n# TYPE h histogram\n"

Test(prom, refuses_broken_text)
{
        static const struct {
                const char *what, *text, *reason;
                unsigned line;
        } cases[] = {
            {"missing TYPE", "# HELP x X.\nx 1\n", "before a TYPE line", 2},
            {"missing TYPE, no samples", "# HELP x X.\n", "no TYPE line", 1},
            {"missing HELP", "# TYPE x gauge\nx 1\n", "before a HELP line", 2},
            {"missing HELP, no samples", "# TYPE x gauge\n", "no HELP line", 1},
            {"no HELP or TYPE at all", "x 1\n", "without HELP and TYPE", 1},
            {"histogram without TYPE", "# HELP h H.\nh_bucket{le=\"+Inf\"} 1\n", "has no TYPE", 2},
            {"second HELP", GAUGE_X "# HELP x again\nx 1\n", "second HELP", 3},
            {"second TYPE", GAUGE_X "# TYPE x counter\nx 1\n", "second TYPE", 3},
            {"TYPE after the samples", "# HELP x X.\n# TYPE x gauge\nx 1\n# TYPE x gauge\n",
             "second TYPE", 4},
            {"HELP after the samples", "# TYPE x gauge\n# HELP x X.\nx 1\n# HELP x X.\n",
             "second HELP", 4},
            {"duplicate family",
             GAUGE_X "x{a=\"1\"} 1\n# HELP y Y.\n# TYPE y gauge\ny 1\n# HELP x X.\n", "second time",
             7},
            {"family split by another",
             GAUGE_X "x{a=\"1\"} 1\n# HELP y Y.\n# TYPE y gauge\ny 1\nx{a=\"2\"} 2\n",
             "outside that family's group", 7},
            {"unknown type", "# HELP x X.\n# TYPE x gauges\nx 1\n", "unknown type", 2},
            {"text after the type", "# HELP x X.\n# TYPE x gauge x\n", "after the type", 2},
            {"repeated series", GAUGE_X "x{a=\"1\",b=\"2\"} 1\nx{b=\"2\",a=\"1\"} 2\n", "repeats",
             4},
            {"repeated series without labels", GAUGE_X "x 1\nx 2\n", "repeats", 4},
            {"non-cumulative buckets",
             HIST_H "h_bucket{le=\"0.1\"} 3\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 3\n"
                    "h_sum 1\nh_count 3\n",
             "not cumulative", 4},
            {"le not increasing",
             HIST_H "h_bucket{le=\"1\"} 1\nh_bucket{le=\"0.5\"} 1\nh_bucket{le=\"+Inf\"} 1\n"
                    "h_sum 1\nh_count 1\n",
             "does not increase", 4},
            {"le repeated (a repeated series)",
             HIST_H "h_bucket{le=\"1\"} 1\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 1\n"
                    "h_sum 1\nh_count 1\n",
             "repeats", 4},
            {"no +Inf bucket", HIST_H "h_bucket{le=\"1\"} 1\nh_sum 1\nh_count 1\n", "+Inf", 3},
            {"+Inf differs from _count",
             HIST_H "h_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count 3\n",
             "_count 3 differs", 3},
            {"no _sum", HIST_H "h_bucket{le=\"+Inf\"} 2\nh_count 2\n", "no _sum", 3},
            {"no _count", HIST_H "h_bucket{le=\"+Inf\"} 2\nh_sum 2\n", "no _count", 3},
            {"no buckets", HIST_H "h_sum 2\nh_count 2\n", "without buckets", 3},
            {"bucket without le", HIST_H "h_bucket 2\n", "without an le label", 3},
            {"le not a number", HIST_H "h_bucket{le=\"big\"} 2\n", "not a number", 3},
            {"_count with le", HIST_H "h_count{le=\"1\"} 2\n", "with an le label", 3},
            {"histogram base name as a sample", HIST_H "h 1\n", "without HELP and TYPE", 3},
            {"negative counter", "# HELP c C.\n# TYPE c counter\nc -1\n", "not a count", 3},
            {"bad escape in a label value", GAUGE_X "x{a=\"\\q\"} 1\n", "bad escape", 3},
            {"\\\" escape in HELP", "# HELP x say \\\"hi\\\"\n# TYPE x gauge\n", "bad escape", 1},
            {"bad escape in HELP", "# HELP x a \\t b\n# TYPE x gauge\n", "bad escape", 1},
            {"lone backslash ending a label value", GAUGE_X "x{a=\"b\\\"} 1\n", "not terminated",
             3},
            {"unterminated label value", GAUGE_X "x{a=\"b} 1\n", "not terminated", 3},
            {"unquoted label value", GAUGE_X "x{a=b} 1\n", "not quoted", 3},
            {"missing }", GAUGE_X "x{a=\"b\" 1\n", "expected \",\" or \"}\"", 3},
            {"label without =", GAUGE_X "x{a \"b\"} 1\n", "expected \"=\"", 3},
            {"bad label name", GAUGE_X "x{1a=\"b\"} 1\n", "label name", 3},
            {"reserved label name", GAUGE_X "x{__name__=\"x\"} 1\n", "reserved", 3},
            {"label given twice", GAUGE_X "x{a=\"1\",a=\"2\"} 1\n", "twice", 3},
            {"label value not UTF-8", GAUGE_X "x{a=\"\xff\"} 1\n", "UTF-8", 3},
            {"bad metric name in a sample", GAUGE_X "1x 1\n", "expected a metric name", 3},
            {"bad character in a name", GAUGE_X "x-y 1\n", "bad character", 3},
            {"bad metric name in HELP", "# HELP 1x X.\n", "valid metric name", 1},
            {"bad metric name in TYPE", "# TYPE x- gauge\n", "bad character", 1},
            {"no value", GAUGE_X "x\n", "no value", 3},
            {"value not a number", GAUGE_X "x abc\n", "not a number", 3},
            {"hexadecimal value", GAUGE_X "x 0x10\n", "not a number", 3},
            {"two dots", GAUGE_X "x 1.2.3\n", "not a number", 3},
            {"bad timestamp", GAUGE_X "x 1 1.5\n", "not a timestamp", 3},
            {"text after the timestamp", GAUGE_X "x 1 2 3\n", "after the timestamp", 3},
            {"no blank after the labels", GAUGE_X "x{a=\"1\"}1\n", "blank after the labels", 3},
            {"no final line feed", GAUGE_X "x 1", "line feed", 3},
            {"carriage return", GAUGE_X "x 1\r\n", "carriage return", 3},
        };

        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                struct prom_exposition *e = NULL;
                char why[600], at[32];
                int r = prom_parse(cases[i].text, strlen(cases[i].text), &e, why, sizeof(why));

                cr_expect_eq(r, -EINVAL, "%s: accepted (%d):\n%s", cases[i].what, r, cases[i].text);
                if (r == 0) {
                        prom_free(e);
                        continue;
                }
                snprintf(at, sizeof(at), "line %u: ", cases[i].line);
                cr_expect(strncmp(why, at, strlen(at)) == 0 && strstr(why, cases[i].reason),
                          "%s: reason '%s', want '%s…%s'", cases[i].what, why, at, cases[i].reason);
        }
        {
                static const char nul[] = GAUGE_X "x 1\n\0\n";
                struct prom_exposition *e = NULL;
                char why[600];

                cr_assert_eq(prom_parse(nul, sizeof(nul) - 1, &e, why, sizeof(why)), -EINVAL,
                             "a NUL byte was accepted");
                cr_assert(strstr(why, "NUL"), "%s", why);
        }
}

/* ---- the daemon ---- */

static struct it_daemon d;
static struct it_peer kafka, sink;
static char dir[IT_DIR_MAX];
static char sink_out[IT_PATH_MAX];
static char secret[128];
static char api_key[257];
static char bootstrap[256];

/* Every request the test makes after the first scrape, by the status it got. */
static unsigned long tally[CODES];

static void setup(void)
{
        cr_assert_eq(it_tmpdir(dir), 0);
        snprintf(sink_out, sizeof(sink_out), "%s/sink.jsonl", dir);
        it_make_secret(secret);
        memset(tally, 0, sizeof(tally));
}

static void teardown(void)
{
        it_daemon_cleanup(&d);
        it_peer_cleanup(&sink);
        it_peer_cleanup(&kafka);
        it_rmtree(dir);
}

TestSuite(metrics, .init = setup, .fini = teardown, .timeout = 240);

/* One request, which must answer want; counted in the tally. ret (may be NULL) gets the
 * response. */
static void call(const char *method, const char *path, const char *key, const char *const *headers,
                 const char *body, long want, struct it_response *ret)
{
        struct it_response r = {0};
        long s = it_call_h(&d, method, path, key, headers, body, &r);

        cr_assert_gt(s, 0, "%s %s: no response", method, path);
        if (s < CODES)
                tally[s]++;
        cr_assert_eq(s, want, "%s %s: %ld, want %ld: %s", method, path, s, want, r.body);
        if (ret)
                *ret = r;
        else
                it_response_free(&r);
}

/* GET /metrics (counted), checked for its Content-Type and parsed; the raw text in *ret_text
 * (may be NULL; free it). */
static struct prom_exposition *scrape(char **ret_text)
{
        struct it_response r;
        struct prom_exposition *e = NULL;
        char why[600];
        int rc;

        call("GET", "/metrics", NULL, NULL, NULL, 200, &r);
        cr_assert_str_eq(r.content_type, METRICS_CT, "Content-Type of /metrics");
        rc = prom_parse(r.body, r.body_len, &e, why, sizeof(why));
        cr_assert_eq(rc, 0, "the exposition does not parse: %s\n%s", why, r.body);
        if (ret_text)
                *ret_text = TAKE_PTR(r.body);
        it_response_free(&r);
        return e;
}

/* The value of a sample that must exist. */
static double need(const struct prom_exposition *e, const char *name, const char *const *labels)
{
        const struct prom_sample *s = prom_sample(e, name, labels);

        cr_assert_not_null(s, "no sample %s with the labels %s%s%s%s", name,
                           labels && labels[0] ? labels[0] : "(none)",
                           labels && labels[0] ? "=" : "", labels && labels[0] ? labels[1] : "",
                           labels && labels[0] && labels[2] ? ",…" : "");
        return s->value;
}

/* The value of a sample, 0 when absent (a counter not yet exposed). */
static double have(const struct prom_exposition *e, const char *name, const char *const *labels)
{
        const struct prom_sample *s = prom_sample(e, name, labels);

        return s ? s->value : 0;
}

/* The families DESIGN.md promises, with their types; every family's name, HELP and counters'
 * suffix follow the conventions. */
static void assert_families(const struct prom_exposition *e, const char *text)
{
        static const struct {
                const char *name;
                enum prom_type type;
        } want[] = {
            {"ctxhookd_events_total", PROM_COUNTER},
            {"ctxhookd_deliveries_total", PROM_COUNTER},
            {"ctxhookd_outbox_depth", PROM_GAUGE},
            {"ctxhookd_http_requests_total", PROM_COUNTER},
            {"ctxhookd_http_request_duration_seconds", PROM_HISTOGRAM},
            {"ctxhookd_delivery_duration_seconds", PROM_HISTOGRAM},
            {"ctxhookd_kafka_lag", PROM_GAUGE},
            {"ctxhookd_dead_letters", PROM_GAUGE},
        };

        for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
                const struct prom_family *f = prom_family(e, want[i].name);

                cr_assert_not_null(f, "no family %s in:\n%s", want[i].name, text);
                cr_assert_eq(f->type, want[i].type, "%s is a %s, want a %s", want[i].name,
                             prom_type_name(f->type), prom_type_name(want[i].type));
        }
        for (size_t i = 0; i < e->n_families; i++) {
                const struct prom_family *f = &e->families[i];
                size_t n = strlen(f->name);

                cr_assert(strncmp(f->name, "ctxhookd_", 9) == 0, "family %s is not ctxhookd_*",
                          f->name);
                cr_assert(f->help && strlen(f->help) > 3, "family %s has no real HELP text",
                          f->name);
                if (f->type == PROM_COUNTER)
                        cr_assert(n > 6 && strcmp(f->name + n - 6, "_total") == 0,
                                  "counter %s does not end with _total", f->name);
        }
        /* The label sets DESIGN.md names, on every sample of those families. */
        for (size_t i = 0; i < prom_family(e, "ctxhookd_events_total")->n_samples; i++) {
                const struct prom_sample *s = &prom_family(e, "ctxhookd_events_total")->samples[i];

                cr_assert(s->n_labels == 1 && prom_label(s, "result"), "events_total labels");
        }
        for (size_t i = 0; i < prom_family(e, "ctxhookd_http_requests_total")->n_samples; i++) {
                const struct prom_sample *s =
                    &prom_family(e, "ctxhookd_http_requests_total")->samples[i];
                const char *code = prom_label(s, "code");

                cr_assert(s->n_labels == 1 && code && strlen(code) == 3 && code[0] >= '1' &&
                              code[0] <= '5' && strspn(code, "0123456789") == 3,
                          "http_requests_total sample with labels other than a code: line %u",
                          s->line);
        }
        for (size_t i = 0; i < prom_family(e, "ctxhookd_deliveries_total")->n_samples; i++) {
                const struct prom_sample *s =
                    &prom_family(e, "ctxhookd_deliveries_total")->samples[i];

                cr_assert(s->n_labels == 2 && prom_label(s, "hook") && prom_label(s, "result"),
                          "deliveries_total labels: line %u", s->line);
        }
        for (size_t i = 0; i < 3; i++) {
                static const char *const gauges[] = {"ctxhookd_outbox_depth", "ctxhookd_kafka_lag",
                                                     "ctxhookd_dead_letters"};
                const struct prom_family *f = prom_family(e, gauges[i]);

                cr_assert(f->n_samples == 1 && f->samples[0].n_labels == 0,
                          "%s: want one sample without labels", gauges[i]);
                cr_assert_geq(f->samples[0].value, 0, "%s is negative", gauges[i]);
        }
}

/* Between two scrapes a histogram's buckets (same bounds) only grow; returns the growth of
 * _count and, in *ret_sum, of _sum. */
static double histogram_growth(const struct prom_exposition *a, const struct prom_exposition *b,
                               const char *name, double *ret_sum)
{
        const struct prom_family *fa = prom_family(a, name), *fb = prom_family(b, name);
        char bucket[128], count[128], sum[128];

        snprintf(bucket, sizeof(bucket), "%s_bucket", name);
        snprintf(count, sizeof(count), "%s_count", name);
        snprintf(sum, sizeof(sum), "%s_sum", name);
        cr_assert_eq(fa->n_samples, fb->n_samples, "%s changed shape between scrapes", name);
        for (size_t i = 0; i < fa->n_samples; i++) {
                const struct prom_sample *sa = &fa->samples[i], *sb = &fb->samples[i];

                cr_assert_str_eq(sa->name, sb->name);
                if (strcmp(sa->name, bucket) == 0)
                        cr_assert_str_eq(prom_label(sa, "le"), prom_label(sb, "le"),
                                         "%s: the bucket bounds changed", name);
                if (strcmp(sa->name, sum) != 0)
                        cr_assert_geq(sb->value, sa->value, "%s{le=\"%s\"} went down", sa->name,
                                      prom_label(sa, "le") ? prom_label(sa, "le") : "");
        }
        *ret_sum = need(b, sum, NULL) - need(a, sum, NULL);
        return need(b, count, NULL) - need(a, count, NULL);
}

/* Every ctxhookd_http_requests_total{code} grew by exactly what the tally says, from scrape a
 * (counted in b) to scrape b (counted in the tally, but not in b itself: a request is counted
 * once answered). */
static void assert_http_deltas(const struct prom_exposition *a, const struct prom_exposition *b,
                               const char *text)
{
        const struct prom_family *fb = prom_family(b, "ctxhookd_http_requests_total");
        unsigned long total = 0;
        double dsum, dcount;

        cr_assert_geq(tally[200], 2, "the tally must hold both scrapes");
        tally[200]--;
        for (unsigned code = 100; code < CODES; code++) {
                char c[8];
                double delta;

                snprintf(c, sizeof(c), "%u", code);
                delta = have(b, "ctxhookd_http_requests_total", L("code", c)) -
                        have(a, "ctxhookd_http_requests_total", L("code", c));
                cr_assert_eq(delta, (double)tally[code],
                             "ctxhookd_http_requests_total{code=\"%u\"} grew by %g, but the test "
                             "made %lu such requests; exposition:\n%s",
                             code, delta, tally[code], text);
                total += tally[code];
        }
        /* Nothing outside 100…599 either. */
        for (size_t i = 0; i < fb->n_samples; i++) {
                unsigned code = (unsigned)strtoul(prom_label(&fb->samples[i], "code"), NULL, 10);

                cr_assert(code >= 100 && code < CODES, "code %u counted", code);
        }
        dcount = histogram_growth(a, b, "ctxhookd_http_request_duration_seconds", &dsum);
        cr_assert_eq(dcount, (double)total,
                     "the request duration histogram counted %g requests, the test made %lu",
                     dcount, total);
        cr_assert_gt(dsum, 0, "the request durations summed to %g", dsum);
        cr_assert_lt(dsum, 600, "the request durations summed to %g s", dsum);
}

/* ---- the traffic test ---- */

static void post_event(const char *idem, const char *body, long want)
{
        char line[256];
        const char *headers[] = {line, NULL};

        snprintf(line, sizeof(line), "Idempotency-Key: %s", idem ? idem : "");
        call("POST", PFX "/events", api_key, idem ? headers : NULL, body, want, NULL);
}

#define PLAIN_END(conv)                                                                            \
        "{\"kind\":\"conversation.end\",\"accountId\":\"" ACCT "\",\"conversationId\":\"" conv     \
        "\",\"closeReason\":\"SYSTEM\",\"time\":1764400000000}"

/* What the traffic must come to once everything is processed. */
#define KAFKA_END     3
#define KAFKA_IDLE    1
#define KAFKA_IGNORED 2
#define KAFKA_BAD     1
#define INGESTED      4
#define QUEUED        (KAFKA_END + KAFKA_IDLE + INGESTED)
#define DELIVERED     (KAFKA_END + INGESTED)
#define DEAD_LETTERS  (KAFKA_BAD + KAFKA_IDLE)

static bool settled(const struct prom_exposition *e, size_t sink_ok)
{
        return have(e, "ctxhookd_events_total", L("result", "queued")) == QUEUED &&
               have(e, "ctxhookd_events_total", L("result", "ignored")) == KAFKA_IGNORED &&
               have(e, "ctxhookd_events_total", L("result", "dead")) == KAFKA_BAD &&
               have(e, "ctxhookd_deliveries_total", L("hook", HOOK_END, "result", "delivered")) ==
                   DELIVERED &&
               have(e, "ctxhookd_deliveries_total", L("hook", HOOK_IDLE, "result", "dead")) ==
                   KAFKA_IDLE &&
               have(e, "ctxhookd_outbox_depth", NULL) == 0 &&
               have(e, "ctxhookd_dead_letters", NULL) == DEAD_LETTERS &&
               have(e, "ctxhookd_kafka_lag", NULL) == 0 && sink_ok == DELIVERED;
}

static size_t sink_ok_count(void)
{
        json_t *recs = it_sink_records(sink_out), *rec;
        size_t i, n = 0;

        cr_assert_not_null(recs, "a line of the sink's file is not JSON");
        json_array_foreach(recs, i, rec)
        {
                cr_assert(json_is_true(json_object_get(rec, "signature_ok")), "bad signature");
                if (it_rec_2xx(rec))
                        n++;
        }
        json_decref(recs);
        return n;
}

/* The config: HOOK_END delivers ends to the sink, HOOK_IDLE idles to down_port, where nothing
 * listens (one attempt, then a dead letter). */
static char *make_config(unsigned sink_port, unsigned down_port)
{
        _cleanup_free_ char *hooks = NULL, *consumer = it_kafka_section(bootstrap, TOPIC,
                                                                        "it-metrics", ACCT, 6000);

        cr_assert_gt(asprintf(&hooks,
                              "[hook \"" HOOK_END "\"]\n"
                              "on = conversation.end\n"
                              "url = @URL@/fn\n"
                              "secret = @SECRET@\n"
                              "[hook \"" HOOK_IDLE "\"]\n"
                              "on = conversation.idle\n"
                              "url = http://127.0.0.1:%u/idle\n"
                              "secret = @SECRET@\n"
                              "max_attempts = 1\n"
                              "timeout_ms = 2000\n",
                              down_port),
                     0);
        const char *const sections[] = {consumer, "[delivery]\nretry_base_ms = 100\n", hooks, NULL};
        struct it_config c = {.api_extra = "admin_token = " ADMIN "\n", .sections = sections};

        return it_config_text(&c, sink_port, secret);
}

Test(metrics, exposition_counts_what_happened)
{
        const char *kafka_args[] = {"--topic", TOPIC, "--partitions", "1", NULL};
        _cleanup_free_ char *conf = NULL, *text = NULL, *produced = NULL, *last_text = NULL;
        struct prom_exposition *first, *last = NULL;
        struct it_response r;
        char auth[128];
        const char *admin_headers[] = {auth, NULL};
        unsigned sink_port, down_port = it_closed_port();
        long long deadline;
        json_t *j, *items;
        size_t plen = 0;
        FILE *f;

        cr_assert_eq(it_peer_start(&kafka, dir, "mock_kafka", kafka_args), 0);
        snprintf(bootstrap, sizeof(bootstrap), "%s", kafka.line);
        cr_assert_neq(down_port, 0, "no closed port found");
        cr_assert_eq(it_sink_start(&sink, dir, sink_out, secret, 0, NULL, &sink_port), 0,
                     "webhook_sink did not start");
        conf = make_config(sink_port, down_port);
        cr_assert_eq(it_daemon_init(&d, conf), 0);
        cr_assert_eq(it_apikey_create(&d, ACCT, api_key), 0);
        cr_assert_eq(it_daemon_start(&d, NULL, NULL), 0, "the daemon did not start");
        cr_assert_eq(it_daemon_wait_ready(&d, READY_MS), 0,
                     "/readyz did not answer 200 with the partitions assigned");

        /* From the first scrape on, the tally holds every request, the first scrape too: a
         * request is counted once answered, so a scrape shows the ones before it only. */
        memset(tally, 0, sizeof(tally));
        first = scrape(&text);
        assert_families(first, text);
        cr_assert_eq(need(first, "ctxhookd_events_total", L("result", "queued")), 0);
        cr_assert_eq(need(first, "ctxhookd_events_total", L("result", "ignored")), 0);
        cr_assert_eq(need(first, "ctxhookd_events_total", L("result", "dead")), 0);
        cr_assert_eq(need(first, "ctxhookd_dead_letters", NULL), 0);
        cr_assert_eq(need(first, "ctxhookd_delivery_duration_seconds_count", NULL), 0);
        for (size_t h = 0; h < 2; h++)
                for (size_t k = 0; k < 3; k++) {
                        static const char *const results[] = {"delivered", "retry", "dead"};
                        const char *hook = h ? HOOK_IDLE : HOOK_END;

                        cr_assert_eq(need(first, "ctxhookd_deliveries_total",
                                          L("hook", hook, "result", results[k])),
                                     0, "a hook's counters exist, at 0, from the start");
                }

        /* The Context API: 204, 200 ×5, 403 ×3, 404 ×2, and /healthz. */
        call("PUT", PFX "/agentNotes/properties/note", api_key, NULL, "\"hello\"", 204, NULL);
        for (int i = 0; i < 5; i++)
                call("GET", PFX "/agentNotes/properties/note", api_key, NULL, NULL, 200, NULL);
        for (int i = 0; i < 3; i++)
                call("GET", PFX "/agentNotes/properties/note", NULL, NULL, NULL, 403, NULL);
        for (int i = 0; i < 2; i++)
                call("GET", PFX "/agentNotes/properties/nothing-here", api_key, NULL, NULL, 404,
                     NULL);
        call("GET", "/healthz", NULL, NULL, NULL, 200, NULL);

        /* Ingest: four events, a repeat of the first key (not counted again), one refused. */
        post_event("m-1", PLAIN_END("ing-1"), 202);
        post_event("m-2", PLAIN_END("ing-2"), 202);
        post_event(NULL, PLAIN_END("ing-3"), 202);
        post_event("m-4", PLAIN_END("ing-4"), 202);
        post_event("m-1", PLAIN_END("ing-1"), 202);
        post_event("m-5", "{\"kind\":\"conversation.end\"", 400);

        /* Kafka: three ends, an idle whose hook's receiver is down (one attempt, then a dead
         * letter), two kinds no hook wants, one message that is not JSON. */
        f = open_memstream(&produced, &plen);
        cr_assert_not_null(f);
        for (int i = 1; i <= KAFKA_END; i++)
                fprintf(f,
                        "k%d\t{\"kind\":\"conversation.end\",\"accountId\":\"" ACCT "\","
                        "\"conversationId\":\"kf-%d\",\"closeReason\":\"SYSTEM\",\"time\":%lld}\n",
                        i, i, 1764400000000LL + i);
        fprintf(f, "ki\t{\"kind\":\"conversation.idle\",\"accountId\":\"" ACCT "\","
                   "\"conversationId\":\"kf-idle\",\"time\":1764400000000}\n");
        fprintf(f, "kn1\t{\"kind\":\"conversation.new\",\"accountId\":\"" ACCT "\","
                   "\"conversationId\":\"kf-new-1\",\"time\":1764400000000}\n");
        fprintf(f, "kn2\t{\"kind\":\"conversation.routing\",\"accountId\":\"" ACCT "\","
                   "\"conversationId\":\"kf-new-2\",\"time\":1764400000000}\n");
        fprintf(f, "kb\tnot json at all\n");
        fclose(f);
        cr_assert_eq(it_kcat_produce(dir, bootstrap, TOPIC, produced), 0, "kcat failed");

        /* Scrape until everything is processed; every scrape is counted in the tally. */
        deadline = it_now_ms() + WAIT_MS;
        for (;;) {
                size_t ok = sink_ok_count();

                last = prom_free(last);
                free(last_text);
                last_text = NULL;
                last = scrape(&last_text);
                if (settled(last, ok))
                        break;
                if (it_now_ms() > deadline) {
                        it_daemon_print_log_tail(&d, 6000);
                        cr_assert_fail("the metrics did not settle (sink got %zu deliveries, want "
                                       "%d); last exposition:\n%s",
                                       ok, DELIVERED, last_text);
                }
                it_sleep_ms(50);
        }
        last = prom_free(last);

        /* The dead letters listed by the admin endpoint. */
        snprintf(auth, sizeof(auth), "Authorization: Bearer " ADMIN);
        call("GET", "/admin/dead-letters", NULL, admin_headers, NULL, 200, &r);
        j = it_response_json(&r);
        items = json_object_get(j, "items");
        cr_assert(json_is_array(items), "%s", r.body);
        cr_assert_eq(json_array_size(items), DEAD_LETTERS, "dead letters listed: %s", r.body);
        it_response_free(&r);

        free(last_text);
        last_text = NULL;
        last = scrape(&last_text);
        assert_families(last, last_text);
        assert_http_deltas(first, last, last_text);
        cr_assert_eq(need(last, "ctxhookd_dead_letters", NULL), (double)json_array_size(items),
                     "ctxhookd_dead_letters differs from GET /admin/dead-letters");
        json_decref(j);
        cr_assert_eq(need(last, "ctxhookd_events_total", L("result", "queued")), QUEUED, "%s",
                     last_text);
        cr_assert_eq(need(last, "ctxhookd_events_total", L("result", "ignored")), KAFKA_IGNORED);
        cr_assert_eq(need(last, "ctxhookd_events_total", L("result", "dead")), KAFKA_BAD,
                     "a refused ingest request is not a dead letter and not a dead event");
        cr_assert_eq(
            need(last, "ctxhookd_deliveries_total", L("hook", HOOK_END, "result", "delivered")),
            DELIVERED);
        cr_assert_eq(
            need(last, "ctxhookd_deliveries_total", L("hook", HOOK_END, "result", "retry")), 0);
        cr_assert_eq(need(last, "ctxhookd_deliveries_total", L("hook", HOOK_END, "result", "dead")),
                     0);
        cr_assert_eq(
            need(last, "ctxhookd_deliveries_total", L("hook", HOOK_IDLE, "result", "delivered")),
            0);
        cr_assert_eq(
            need(last, "ctxhookd_deliveries_total", L("hook", HOOK_IDLE, "result", "retry")), 0);
        cr_assert_eq(
            need(last, "ctxhookd_deliveries_total", L("hook", HOOK_IDLE, "result", "dead")),
            KAFKA_IDLE);
        cr_assert_eq(prom_family(last, "ctxhookd_deliveries_total")->n_samples, 6,
                     "want 2 hooks × 3 results:\n%s", last_text);
        {
                double dsum, dcount = histogram_growth(first, last,
                                                       "ctxhookd_delivery_duration_seconds", &dsum);

                cr_assert_eq(dcount, DELIVERED + KAFKA_IDLE,
                             "the delivery histogram counted %g attempts, want %d", dcount,
                             DELIVERED + KAFKA_IDLE);
                cr_assert_gt(dsum, 0);
        }
        cr_assert_eq(need(last, "ctxhookd_outbox_depth", NULL), 0);
        cr_assert_eq(need(last, "ctxhookd_kafka_lag", NULL), 0);
        cr_assert_eq(sink_ok_count(), DELIVERED, "the sink got other deliveries than counted");
        prom_free(first);
        prom_free(last);

        {
                int code = -1;

                cr_assert_eq(it_daemon_stop(&d, SIGTERM, &code), 0);
                cr_assert_eq(code, 0, "the daemon exited %d after SIGTERM", code);
                code = -1;
                cr_assert_eq(it_peer_stop(&sink, SIGTERM, &code), 0);
                cr_assert_eq(code, 0, "webhook_sink exited %d", code);
                code = -1;
                cr_assert_eq(it_peer_stop(&kafka, SIGTERM, &code), 0);
                cr_assert_eq(code, 0, "mock_kafka exited %d", code);
        }
}

/* A daemon without Kafka or hooks that has done nothing: every family is there, at 0, and a
 * scrape counts exactly itself in the next one. */
Test(metrics, fresh_daemon_and_one_scrape)
{
        _cleanup_free_ char *t1 = NULL, *t2 = NULL;
        struct prom_exposition *a, *b;

        cr_assert_eq(it_daemon_init(&d, it_default_config), 0);
        cr_assert_eq(it_daemon_start(&d, NULL, NULL), 0, "the daemon did not start");
        memset(tally, 0, sizeof(tally));
        a = scrape(&t1);
        b = scrape(&t2);
        assert_families(a, t1);
        assert_families(b, t2);
        cr_assert_eq(prom_family(a, "ctxhookd_deliveries_total")->n_samples, 0,
                     "deliveries of hooks that do not exist:\n%s", t1);
        cr_assert_eq(prom_family(a, "ctxhookd_http_requests_total")->n_samples, 0,
                     "requests counted before the first one:\n%s", t1);
        cr_assert_eq(need(a, "ctxhookd_http_request_duration_seconds_count", NULL), 0);
        cr_assert_eq(need(a, "ctxhookd_http_request_duration_seconds_bucket", L("le", "+Inf")), 0);
        for (size_t i = 0; i < 4; i++) {
                static const char *const results[] = {"queued", "ignored", "dead", "duplicate"};

                cr_assert_eq(need(a, "ctxhookd_events_total", L("result", results[i])), 0);
        }
        cr_assert_eq(need(a, "ctxhookd_outbox_depth", NULL), 0);
        cr_assert_eq(need(a, "ctxhookd_kafka_lag", NULL), 0);
        cr_assert_eq(need(a, "ctxhookd_dead_letters", NULL), 0);
        /* The second scrape shows the first one, and nothing else. */
        assert_http_deltas(a, b, t2);
        cr_assert_eq(need(b, "ctxhookd_http_requests_total", L("code", "200")), 1, "%s", t2);
        prom_free(a);
        prom_free(b);
        {
                int code = -1;

                cr_assert_eq(it_daemon_stop(&d, SIGTERM, &code), 0);
                cr_assert_eq(code, 0, "the daemon exited %d after SIGTERM", code);
        }
}
