/* Unit tests of the pipeline with a real store: every sample shape, routing, the gathered
 * context and the exact webhook body, dedup, dead letters, dry-run building, metrics. */
#include <criterion/criterion.h>
#include <errno.h>
#include <ftw.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ctxhookd/event.h"
#include "ctxhookd/pipeline.h"
#include "test_util.h"

#define NOW INT64_C(1800000000000)
#define ACC "12345678"

/* The six lines of tests/data/events/sample.jsonl (the shared samples, copied into the repo):
 * three Functions payloads (SYSTEM end, AGENT end, idle), a malformed line, a cqm
 * notification of two changes (TIMEOUT end, an open conversation), a plain SYSTEM end. */
#define N_SAMPLES 6
static char *samples[N_SAMPLES];

static void load_samples(void)
{
        const char *src = getenv("CTXHOOKD_SOURCE_DIR");
        char file[4096];
        size_t cap = 0;
        FILE *f;

        snprintf(file, sizeof(file), "%s/tests/data/events/sample.jsonl", src ? src : ".");
        f = fopen(file, "r");
        cr_assert_not_null(f, "cannot read %s (set CTXHOOKD_SOURCE_DIR)", file);
        for (size_t i = 0; i < N_SAMPLES; i++) {
                ssize_t n = getline(&samples[i], &cap, f);

                cr_assert_gt(n, 1, "%s: line %zu missing", file, i + 1);
                if (samples[i][n - 1] == '\n')
                        samples[i][n - 1] = '\0';
                cap = 0;
        }
        fclose(f);
}

static char dir[64], path[160];
static struct store *st;
static struct metrics *metrics;
static struct config cfg;
static struct config_hook hooks[2];
static char *ns_list[] = {"agentNotes", NULL};
static char *reasons[] = {"SYSTEM", "TIMEOUT", NULL};
static struct pipeline *pl;

static void setup(void)
{
        struct store_options o = {.busy_timeout_ms = 5000, .pool_size = 2, .cache_entries = 64};
        struct ch_error err = {{0}};

        strcpy(dir, "/tmp/ctxhookd-test-pipeline-XXXXXX");
        cr_assert_not_null(mkdtemp(dir));
        snprintf(path, sizeof(path), "%s/context.db", dir);
        o.path = path;
        cr_assert_eq(store_open(&o, &st, &err), 0, "%s", err.msg);
        metrics = metrics_new();
        memset(&cfg, 0, sizeof(cfg));
        memset(hooks, 0, sizeof(hooks));
        hooks[0] = (struct config_hook){
            .name = "notes-on-autoclose",
            .on = EVENT_END,
            .close_reasons = reasons,
            .namespaces = ns_list,
            .url = "http://127.0.0.1:9/fn",
            .secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            .bearer_token = "",
            .timeout_ms = 5000,
            .max_attempts = 3,
        };
        hooks[1] = (struct config_hook){
            .name = "idle",
            .on = EVENT_IDLE,
            .url = "http://127.0.0.1:9/idle",
            .secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            .bearer_token = "",
            .timeout_ms = 5000,
            .max_attempts = 3,
            .clear_after = true,
        };
        cfg.hooks = hooks;
        cfg.n_hooks = 2;
        cfg.kafka.account = ACC;
        cfg.kafka.max_message_bytes = 1 << 20;
        const char *names[] = {hooks[0].name, hooks[1].name};
        cr_assert_eq(metrics_set_hooks(metrics, names, 2), 0);
        cr_assert_eq(pipeline_new(st, metrics, &cfg, &pl), 0);
        load_samples();
}

static void teardown(void)
{
        pl = pipeline_free(pl);
        for (size_t i = 0; i < N_SAMPLES; i++) {
                free(samples[i]);
                samples[i] = NULL;
        }
        st = store_close(st);
        metrics = metrics_free(metrics);
        test_rmtree(dir);
}

TestSuite(pipeline, .init = setup, .fini = teardown);

static void merge(const char *sid, const char *json)
{
        json_t *v = json_loads(json, 0, NULL);

        cr_assert_not_null(v);
        cr_assert_eq(store_props_merge(st, ACC, "agentNotes", sid, v, NULL, NOW - 1000, NULL), 0);
        json_decref(v);
}

static struct pipeline_result process(size_t i, const char *dedup)
{
        struct pipeline_result res;
        char source[64];

        snprintf(source, sizeof(source), "kafka:conversation-events/0/%zu", i);
        cr_assert_eq(pipeline_process(pl, source, dedup ? dedup : source, samples[i],
                                      strlen(samples[i]), NOW, &res),
                     0, "sample %zu", i);
        return res;
}

/* The queued deliveries, oldest first. */
static size_t claim_all(struct store_delivery **d)
{
        size_t n = 0;

        cr_assert_eq(store_outbox_claim(st, NOW, 60000, 100, d, &n), 0);
        return n;
}

static json_t *body_of(const struct store_delivery *d)
{
        json_error_t e;
        json_t *v = json_loadb(d->body, d->body_len, 0, &e);

        cr_assert_not_null(v, "body is not JSON: %s", e.text);
        return v;
}

Test(pipeline, samples_route_gather_and_queue)
{
        struct pipeline_result r;
        struct store_delivery *d = NULL;
        size_t n;

        merge(NULL, "{\"team\":\"billing\"}");
        merge("sample-conv-1", "{\"note\":\"asked for a callback\"}");

        r = process(0, NULL);
        cr_assert_eq(r.events, 1);
        cr_assert_eq(r.deliveries, 1);
        cr_assert_eq(r.ignored, 0);
        r = process(1, NULL); /* AGENT close: no hook */
        cr_assert_eq(r.deliveries, 0);
        cr_assert_eq(r.ignored, 1);
        r = process(2, NULL); /* idle: the idle hook */
        cr_assert_eq(r.deliveries, 1);
        r = process(3, NULL);
        cr_assert(r.dead);
        cr_assert_neq(r.reason[0], '\0');
        r = process(4, NULL); /* two changes: TIMEOUT end and an open conversation */
        cr_assert_eq(r.events, 2);
        cr_assert_eq(r.deliveries, 1);
        cr_assert_eq(r.ignored, 1);
        r = process(5, NULL);
        cr_assert_eq(r.deliveries, 1);

        n = claim_all(&d);
        cr_assert_eq(n, 4);
        const char *want_conv[] = {"sample-conv-1", "sample-conv-3", "sample-conv-4",
                                   "sample-conv-6"};
        const char *want_hook[] = {"notes-on-autoclose", "idle", "notes-on-autoclose",
                                   "notes-on-autoclose"};
        for (size_t i = 0; i < n; i++) {
                cr_assert_str_eq(d[i].conversation, want_conv[i]);
                cr_assert_str_eq(d[i].hook, want_hook[i]);
                cr_assert_str_eq(d[i].account, ACC);
                cr_assert_eq(strncmp(d[i].webhook_id, "msg_", 4), 0);
                cr_assert_eq(strlen(d[i].webhook_id), 36);
        }

        /* The first body, field by field. */
        json_t *b = body_of(&d[0]);
        cr_assert_eq(json_integer_value(json_object_get(b, "timestamp")), NOW);
        cr_assert(json_is_array(json_object_get(b, "headers")));
        json_t *payload = json_object_get(b, "payload");
        cr_assert_str_eq(json_string_value(json_object_get(payload, "hook")), "notes-on-autoclose");
        json_t *ev = json_object_get(payload, "event");
        cr_assert_str_eq(json_string_value(json_object_get(ev, "id")),
                         "kafka:conversation-events/0/0");
        cr_assert_str_eq(json_string_value(json_object_get(ev, "kind")), "conversation.end");
        cr_assert_str_eq(json_string_value(json_object_get(ev, "accountId")), ACC);
        cr_assert_str_eq(json_string_value(json_object_get(ev, "conversationId")), "sample-conv-1");
        cr_assert_str_eq(json_string_value(json_object_get(ev, "closeReason")), "SYSTEM");
        cr_assert_eq(json_integer_value(json_object_get(ev, "time")), 1764400000201);
        json_t *raw_want = json_loads(samples[0], 0, NULL);
        cr_assert(json_equal(json_object_get(payload, "raw"), raw_want), "raw differs");
        json_decref(raw_want);
        json_t *ctx = json_object_get(json_object_get(payload, "context"), "agentNotes");
        json_t *want_ns = json_loads("{\"team\":\"billing\"}", 0, NULL);
        json_t *want_session = json_loads("{\"note\":\"asked for a callback\"}", 0, NULL);
        cr_assert(json_equal(json_object_get(ctx, "namespace"), want_ns));
        cr_assert(json_equal(json_object_get(ctx, "session"), want_session));
        json_decref(want_ns);
        json_decref(want_session);
        json_decref(b);

        /* The idle hook names no namespaces: an empty context. */
        b = body_of(&d[1]);
        cr_assert_eq(json_object_size(json_object_get(json_object_get(b, "payload"), "context")),
                     0);
        json_decref(b);

        /* The notification's first change: its raw is that change, its id the message's. */
        b = body_of(&d[2]);
        payload = json_object_get(b, "payload");
        ev = json_object_get(payload, "event");
        cr_assert_str_eq(json_string_value(json_object_get(ev, "closeReason")), "TIMEOUT");
        cr_assert_str_eq(json_string_value(json_object_get(
                             json_object_get(json_object_get(payload, "raw"), "result"), "convId")),
                         "sample-conv-4");
        ctx = json_object_get(json_object_get(payload, "context"), "agentNotes");
        cr_assert_eq(json_object_size(json_object_get(ctx, "session")), 0);
        json_decref(b);
        store_deliveries_free(d, n);

        /* The malformed line is a dead letter with its source and bytes. */
        json_t *dead = NULL;
        cr_assert_eq(store_dead_list(st, 0, 10, &dead), 0);
        cr_assert_eq(json_array_size(dead), 1);
        cr_assert_str_eq(json_string_value(json_object_get(json_array_get(dead, 0), "source")),
                         "kafka:conversation-events/0/3");
        cr_assert_str_eq(json_string_value(json_object_get(json_array_get(dead, 0), "raw")),
                         "not json at all");
        json_decref(dead);

        /* Metrics: 4 queued events, 2 ignored, 1 dead message. */
        struct buf out;
        buf_init(&out, 1 << 20);
        cr_assert_eq(metrics_render(metrics, &out), 0);
        cr_assert(strstr(out.data, "\nctxhookd_events_total{result=\"queued\"} 4\n"), "%s",
                  out.data);
        cr_assert(strstr(out.data, "\nctxhookd_events_total{result=\"ignored\"} 2\n"));
        cr_assert(strstr(out.data, "\nctxhookd_events_total{result=\"dead\"} 1\n"));
        buf_free(&out);
}

Test(pipeline, a_message_seen_twice_is_queued_once)
{
        struct pipeline_result r;
        int64_t depth = -1;

        r = process(0, "kafka:conversation-events/0/0");
        cr_assert_eq(r.deliveries, 1);
        cr_assert_not(r.duplicate);
        r = process(0, "kafka:conversation-events/0/0");
        cr_assert(r.duplicate);
        cr_assert_eq(r.deliveries, 0);
        cr_assert_eq(store_outbox_depth(st, &depth), 0);
        cr_assert_eq(depth, 1);
        /* A dead letter is deduplicated too. */
        r = process(3, "k3");
        cr_assert(r.dead);
        r = process(3, "k3");
        cr_assert(r.duplicate);
        int64_t n = 0;
        cr_assert_eq(store_dead_count(st, &n), 0);
        cr_assert_eq(n, 1);
        /* Skipped, but not silently: both second copies are counted. */
        struct buf out;
        buf_init(&out, 1 << 20);
        cr_assert_eq(metrics_render(metrics, &out), 0);
        cr_assert(strstr(out.data, "\nctxhookd_events_total{result=\"duplicate\"} 2\n"), "%s",
                  out.data);
        buf_free(&out);
}

Test(pipeline, build_writes_nothing_and_is_deterministic)
{
        struct pipeline_result r;
        struct pipeline_delivery *a = NULL, *b = NULL;
        size_t na = 0, nb = 0;
        int64_t depth = -1;

        cr_assert_eq(
            pipeline_build(pl, "replay:x:1", samples[4], strlen(samples[4]), NOW, &r, &a, &na), 0);
        cr_assert_eq(na, 1);
        cr_assert_eq(r.events, 2);
        cr_assert_eq(
            pipeline_build(pl, "replay:x:1", samples[4], strlen(samples[4]), NOW, &r, &b, &nb), 0);
        cr_assert_eq(nb, 1);
        cr_assert_str_eq(a[0].webhook_id, b[0].webhook_id);
        cr_assert_eq(a[0].body_len, b[0].body_len);
        cr_assert_eq(memcmp(a[0].body, b[0].body, a[0].body_len), 0);
        cr_assert_str_eq(a[0].hook->name, "notes-on-autoclose");
        cr_assert_null(a[0].clear_namespaces);
        pipeline_deliveries_free(a, na);
        pipeline_deliveries_free(b, nb);
        cr_assert_eq(store_outbox_depth(st, &depth), 0);
        cr_assert_eq(depth, 0);
        /* Another source is another event: another webhook id. */
        cr_assert_eq(
            pipeline_build(pl, "replay:x:2", samples[4], strlen(samples[4]), NOW, &r, &b, &nb), 0);
        cr_assert_eq(
            pipeline_build(pl, "replay:x:1", samples[4], strlen(samples[4]), NOW, &r, &a, &na), 0);
        cr_assert_str_neq(a[0].webhook_id, b[0].webhook_id);
        pipeline_deliveries_free(a, na);
        pipeline_deliveries_free(b, nb);
}

Test(pipeline, clear_after_names_the_namespaces_to_clear)
{
        struct pipeline_result r;
        struct pipeline_delivery *d = NULL;
        size_t n = 0;

        hooks[1].namespaces = ns_list;
        cr_assert_eq(pipeline_build(pl, "s", samples[2], strlen(samples[2]), NOW, &r, &d, &n), 0);
        cr_assert_eq(n, 1);
        cr_assert_str_eq(d[0].clear_namespaces, "[\"agentNotes\"]");
        pipeline_deliveries_free(d, n);
}

Test(pipeline, oversized_messages_are_dead_letters)
{
        struct pipeline_result r;
        char *big = malloc(2 << 20);

        memset(big, ' ', 2 << 20);
        big[0] = '{';
        big[(2 << 20) - 1] = '}';
        cr_assert_eq(pipeline_process(pl, "kafka:t/0/9", "kafka:t/0/9", big, 2 << 20, NOW, &r), 0);
        cr_assert(r.dead);
        cr_assert(strstr(r.reason, "exceeds"), "%s", r.reason);
        free(big);
}

/* Everything a store holds after the pipeline: each queued delivery (hook, conversation,
 * webhook id, body, in id order) and the dead letters, as one text. */
static char *snapshot(struct store *s)
{
        struct store_delivery *d = NULL;
        json_t *dead = NULL;
        char *out = NULL, *dead_text;
        size_t n = 0, size = 0;
        FILE *f = open_memstream(&out, &size);

        cr_assert_not_null(f);
        cr_assert_eq(store_outbox_claim(s, NOW + 1000000, 60000, 100, &d, &n), 0);
        for (size_t i = 0; i < n; i++)
                fprintf(f, "%s %s %s %.*s\n", d[i].hook, d[i].conversation, d[i].webhook_id,
                        (int)d[i].body_len, d[i].body);
        store_deliveries_free(d, n);
        cr_assert_eq(store_dead_list(s, 0, 100, &dead), 0);
        dead_text = json_dumps(dead, JSON_COMPACT | JSON_SORT_KEYS);
        fprintf(f, "%s", dead_text);
        free(dead_text);
        json_decref(dead);
        fclose(f);
        return out;
}

Test(pipeline, a_batch_records_the_same_as_one_by_one)
{
        enum { N = sizeof(samples) / sizeof(samples[0]) };
        struct store_options o = {.busy_timeout_ms = 5000, .pool_size = 2};
        struct pipeline_message msgs[N + 1];
        struct pipeline_result one[N], batch[N + 1];
        struct ch_error err = {{0}};
        struct pipeline *pl2 = NULL;
        struct store *st2 = NULL;
        char path2[192], sources[N][64];
        json_t *note;
        char *a, *b;

        merge("sample-conv-1", "{\"note\":\"asked for a callback\"}");
        for (size_t i = 0; i < N; i++)
                one[i] = process(i, NULL);

        snprintf(path2, sizeof(path2), "%s/batch.db", dir);
        o.path = path2;
        cr_assert_eq(store_open(&o, &st2, &err), 0, "%s", err.msg);
        note = json_pack("{s:s}", "note", "asked for a callback");
        cr_assert_eq(store_props_merge(st2, ACC, "agentNotes", "sample-conv-1", note, NULL,
                                       NOW - 1000, NULL),
                     0);
        json_decref(note);
        cr_assert_eq(pipeline_new(st2, NULL, &cfg, &pl2), 0);
        for (size_t i = 0; i < N; i++) {
                snprintf(sources[i], sizeof(sources[i]), "kafka:conversation-events/0/%zu", i);
                msgs[i] = (struct pipeline_message){.source = sources[i],
                                                    .dedup_key = sources[i],
                                                    .data = samples[i],
                                                    .len = strlen(samples[i])};
        }
        msgs[N] = msgs[0]; /* the same message again, within the batch */
        cr_assert_eq(pipeline_process_batch(pl2, msgs, N + 1, NOW, batch), 0);
        for (size_t i = 0; i < N; i++) {
                cr_assert_eq(batch[i].events, one[i].events, "sample %zu", i);
                cr_assert_eq(batch[i].deliveries, one[i].deliveries, "sample %zu", i);
                cr_assert_eq(batch[i].ignored, one[i].ignored, "sample %zu", i);
                cr_assert_eq(batch[i].dead, one[i].dead, "sample %zu", i);
                cr_assert_str_eq(batch[i].reason, one[i].reason, "sample %zu", i);
                cr_assert_not(batch[i].duplicate);
        }
        cr_assert(batch[N].duplicate);
        cr_assert_eq(batch[N].deliveries, 0);

        a = snapshot(st);
        b = snapshot(st2);
        cr_assert_str_eq(b, a);
        cr_assert_gt(strlen(a), 100, "nothing was queued: %s", a);
        free(a);
        free(b);
        pl2 = pipeline_free(pl2);
        st2 = store_close(st2);
}

/* A reload swaps the hooks: later messages follow the new ones; work already built used the
 * old. With the swap racing a thread that keeps processing, every message is routed by one
 * config or the other, never a mix or freed memory (which ASan would catch). */
static struct config next_cfg;
static struct config_hook next_hooks[1];
static atomic_bool racing;

static void *process_in_a_loop(void *arg)
{
        size_t *n = arg;

        while (atomic_load(&racing)) {
                struct pipeline_delivery *d = NULL;
                struct pipeline_result r;
                size_t nd = 0;

                if (pipeline_build(pl, "replay:race:1", samples[4], strlen(samples[4]), NOW, &r, &d,
                                   &nd) == 0 &&
                    nd == 1 &&
                    (strcmp(d[0].hook->name, "notes-on-autoclose") == 0 ||
                     strcmp(d[0].hook->name, "renamed") == 0))
                        (*n)++;
                else
                        (*n) = SIZE_MAX / 2; /* a mix: make the count absurd */
                pipeline_deliveries_free(d, nd);
        }
        return NULL;
}

Test(pipeline, reconfigure_switches_hooks_for_later_messages)
{
        struct pipeline_delivery *d = NULL;
        struct pipeline_result r;
        size_t nd = 0, built = 0;
        pthread_t t;

        next_cfg = cfg;
        next_hooks[0] = hooks[0];
        next_hooks[0].name = "renamed";
        next_cfg.hooks = next_hooks;
        next_cfg.n_hooks = 1;

        atomic_store(&racing, true);
        cr_assert_eq(pthread_create(&t, NULL, process_in_a_loop, &built), 0);
        for (int i = 0; i < 50; i++) {
                pipeline_reconfigure(pl, i % 2 ? &cfg : &next_cfg);
                usleep(1000);
        }
        pipeline_reconfigure(pl, &next_cfg);
        atomic_store(&racing, false);
        pthread_join(t, NULL);
        cr_assert_lt(built, SIZE_MAX / 4, "a message was routed by a mix of configs");
        cr_assert_gt(built, 0);

        cr_assert_eq(
            pipeline_build(pl, "replay:x:1", samples[4], strlen(samples[4]), NOW, &r, &d, &nd), 0);
        cr_assert_eq(nd, 1);
        cr_assert_str_eq(d[0].hook->name, "renamed");
        pipeline_deliveries_free(d, nd);
        /* The idle hook is gone: an idle event is now ignored. */
        cr_assert_eq(pipeline_build(pl, "replay:x:9",
                                    "{\"kind\":\"conversation.idle\","
                                    "\"accountId\":\"" ACC "\","
                                    "\"conversationId\":\"c9\"}",
                                    strlen("{\"kind\":\"conversation.idle\",\"accountId\":\"" ACC
                                           "\",\"conversationId\":\"c9\"}"),
                                    NOW, &r, &d, &nd),
                     0);
        cr_assert_eq(nd, 0);
        cr_assert_eq(r.ignored, 1);
        pipeline_deliveries_free(d, nd);
}
