/* End-to-end tests of HTTP event ingest (POST /v1/account/{acct}/events) through the real
 * ctxhookd binary, with no Kafka at all, and a webhook receiver (tests/tools/webhook_sink) that
 * checks every signature with its own OpenSSL code: an ingested event reaches its hook signed,
 * with the id the 202 named, the posted event as raw and the context written beforehand; an
 * Idempotency-Key sent twice (also across a restart) gives one webhook; refused requests (bad
 * body, wrong key, another account's event) deliver nothing and leave no dead letter. */
#include <criterion/criterion.h>
#include <criterion/logging.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ctxhookd/cleanup.h"
#include "support_daemon.h"
#include "support_sink.h"

#define ACCT    "le-ingest"
#define EVENTS  "/v1/account/" ACCT "/events"
#define WAIT_MS (30000 * it_timeout_scale())

static struct it_daemon d;
static struct it_peer sink;
static char dir[IT_DIR_MAX];
static char sink_out[IT_PATH_MAX];
static char secret[128];
static char api_key[257];

static void setup(void)
{
        char *conf = NULL;
        unsigned port;

        cr_assert_eq(it_tmpdir(dir), 0);
        snprintf(sink_out, sizeof(sink_out), "%s/sink.jsonl", dir);
        it_make_secret(secret);
        cr_assert_eq(it_sink_start(&sink, dir, sink_out, secret, 0, NULL, &port), 0,
                     "webhook_sink did not start");
        /* No [kafka] brokers: ingest over HTTP is the only way in. */
        cr_assert_gt(asprintf(&conf,
                              "%s"
                              "[hook \"on-end\"]\n"
                              "on = conversation.end\n"
                              "namespaces = agentNotes\n"
                              "url = http://127.0.0.1:%u/fn\n"
                              "secret = %s\n"
                              "timeout_ms = 5000\n",
                              it_default_config, port, secret),
                     0);
        cr_assert_eq(it_daemon_init(&d, conf), 0);
        free(conf);
        cr_assert_eq(it_apikey_create(&d, ACCT, api_key), 0);
        cr_assert_eq(it_daemon_start(&d, NULL, NULL), 0, "the daemon did not start");
}

static void teardown(void)
{
        it_daemon_cleanup(&d);
        it_peer_cleanup(&sink);
        it_rmtree(dir);
}

TestSuite(ingest, .init = setup, .fini = teardown, .timeout = 120);

/* A graceful stop that must exit 0 (the sanitizer build's verdict rides on it). */
static void finish(void)
{
        int code = -1;
        _cleanup_free_ char *log = NULL;

        cr_assert_eq(it_daemon_stop(&d, SIGTERM, &code), 0, "the daemon did not stop on SIGTERM");
        log = it_daemon_log(&d);
        cr_assert_eq(code, 0, "the daemon exited %d after SIGTERM; log:\n%s", code, log);
        code = -1;
        cr_assert_eq(it_peer_stop(&sink, SIGTERM, &code), 0);
        cr_assert_eq(code, 0, "webhook_sink exited %d", code);
}

/* POSTs body as an event with the Idempotency-Key idem (NULL = none) and key (the API key);
 * returns the status; *ret_id (may be NULL) gets the event id of a 202 (free it). */
static long post_event(const char *key, const char *idem, const char *body, char **ret_id)
{
        char line[400];
        const char *headers[] = {line, NULL};
        struct it_response r;
        long status;

        snprintf(line, sizeof(line), "Idempotency-Key: %s", idem ? idem : "");
        status = it_call_h(&d, "POST", EVENTS, key, idem ? headers : NULL, body, &r);
        cr_assert_gt(status, 0, "no response");
        if (status == 202 && ret_id) {
                json_t *v = it_response_json(&r);
                const char *id = json_string_value(json_object_get(v, "id"));

                cr_assert_not_null(id, "202 without an id: %s", r.body);
                *ret_id = strdup(id);
                json_decref(v);
        }
        if (status != 202)
                cr_assert(it_is_error_body(&r), "status %ld without a JSON message: %s", status,
                          r.body);
        it_response_free(&r);
        return status;
}

/* Every complete line of the sink's file, as a JSON array. */
static json_t *sink_records(void)
{
        json_t *recs = it_sink_records(sink_out);

        cr_assert_not_null(recs, "a line of the sink's file is not JSON");
        return recs;
}

static json_t *wait_records(size_t n)
{
        json_t *recs = NULL;

        cr_assert_eq(it_sink_wait(sink_out, n, NULL, NULL, WAIT_MS, &recs), 0,
                     "the sink did not get %zu requests in %d ms", n, WAIT_MS);
        return recs;
}

/* The value of one exact series line ("name{labels}" or "name") of /metrics; -1 if absent. */
static double metric(const char *series)
{
        struct it_response r;
        const char *p;
        double v = -1;

        cr_assert_eq(it_call(&d, "GET", "/metrics", NULL, NULL, &r), 200);
        for (p = r.body; p && (p = strstr(p, series)) != NULL; p += strlen(series))
                if ((p == r.body || p[-1] == '\n') && p[strlen(series)] == ' ') {
                        v = strtod(p + strlen(series), NULL);
                        break;
                }
        it_response_free(&r);
        return v;
}

/* Waits until nothing is left in the outbox (everything delivered). */
static void wait_outbox_empty(void)
{
        long long deadline = it_now_ms() + WAIT_MS;

        while (metric("ctxhookd_outbox_depth") != 0) {
                cr_assert(it_now_ms() < deadline, "the outbox did not drain");
                it_sleep_ms(20);
        }
}

static json_t *find_by_event_id(json_t *recs, const char *id)
{
        size_t i;
        json_t *rec;

        json_array_foreach(recs, i, rec)
        {
                json_t *v = json_object_get(it_rec_event(rec), "id");

                if (json_is_string(v) && strcmp(json_string_value(v), id) == 0)
                        return rec;
        }
        return NULL;
}

static void assert_signed(json_t *rec)
{
        _cleanup_free_ char *shown = json_dumps(rec, JSON_COMPACT);
        long long now = (long long)time(NULL);
        long long ts = json_integer_value(json_object_get(rec, "timestamp"));

        cr_assert_str_eq(json_string_value(json_object_get(rec, "method")), "POST", "%s", shown);
        cr_assert_str_eq(json_string_value(json_object_get(rec, "path")), "/fn", "%s", shown);
        cr_assert(json_is_true(json_object_get(rec, "signature_ok")), "bad signature: %s", shown);
        cr_assert(ts > now - 300 && ts <= now + 5, "webhook-timestamp %lld: %s", ts, shown);
}

#define END_PLAIN                                                                                  \
        "{\"kind\":\"conversation.end\",\"conversationId\":\"conv-1\",\"closeReason\":\"SYSTEM\"}"
#define END_FUNCTIONS                                                                              \
        "{\"general\":{\"cbotEventType\":\"AGENT_END_CONVERSATION\",\"convId\":\"conv-2\","        \
        "\"serverTimestamp\":1764400000201},\"end\":{\"closeReason\":\"AGENT\"}}"

Test(ingest, events_reach_the_hook_once_per_key)
{
        _cleanup_free_ char *id1 = NULL, *id1b = NULL, *id2 = NULL, *id3 = NULL;
        json_t *recs, *rec, *payload, *want;

        cr_assert_eq(it_call(&d, "PATCH", "/v1/account/" ACCT "/agentNotes/conv-1/properties",
                             api_key, "{\"note\":\"vip caller\"}", NULL),
                     204);
        cr_assert_eq(post_event(api_key, "order-1", END_PLAIN, &id1), 202);
        cr_assert_eq(post_event(api_key, "order-1", END_PLAIN, &id1b), 202);
        cr_assert_str_eq(id1, id1b, "a repeat must name the same event");
        cr_assert_eq(post_event(api_key, NULL, END_FUNCTIONS, &id2), 202);
        cr_assert_str_neq(id1, id2);

        recs = wait_records(2);
        wait_outbox_empty();
        json_decref(recs);
        recs = sink_records();
        cr_assert_eq(json_array_size(recs), 2, "want one webhook per event: %s",
                     json_dumps(recs, JSON_COMPACT));

        rec = find_by_event_id(recs, id1);
        cr_assert_not_null(rec, "no webhook for %s", id1);
        assert_signed(rec);
        payload = json_object_get(json_object_get(rec, "body"), "payload");
        cr_assert_str_eq(json_string_value(json_object_get(payload, "hook")), "on-end");
        cr_assert_str_eq(
            json_string_value(json_object_get(json_object_get(payload, "event"), "accountId")),
            ACCT, "an event without an account gets the path's");
        want = json_loads(END_PLAIN, 0, NULL);
        cr_assert(json_equal(json_object_get(payload, "raw"), want), "raw is not the posted event");
        json_decref(want);
        cr_assert_str_eq(
            json_string_value(json_object_get(
                json_object_get(json_object_get(json_object_get(payload, "context"), "agentNotes"),
                                "session"),
                "note")),
            "vip caller");

        rec = find_by_event_id(recs, id2);
        cr_assert_not_null(rec, "no webhook for %s", id2);
        assert_signed(rec);
        json_decref(recs);

        /* The key is durable: after a restart it still queues nothing. */
        cr_assert_eq(it_daemon_stop(&d, SIGTERM, NULL), 0);
        cr_assert_eq(it_daemon_start(&d, NULL, NULL), 0, "the daemon did not restart");
        cr_assert_eq(post_event(api_key, "order-1", END_PLAIN, NULL), 202);
        cr_assert_eq(post_event(api_key, "order-2", END_PLAIN, &id3), 202);
        recs = wait_records(3);
        wait_outbox_empty();
        json_decref(recs);
        recs = sink_records();
        cr_assert_eq(json_array_size(recs), 3, "the repeated key was delivered again: %s",
                     json_dumps(recs, JSON_COMPACT));
        cr_assert_not_null(find_by_event_id(recs, id3));
        json_decref(recs);
        finish();
}

Test(ingest, refused_requests_deliver_nothing)
{
        _cleanup_free_ char *id = NULL;
        char key2[257];
        json_t *recs;

        cr_assert_eq(post_event(api_key, "k", "{\"kind\":\"conversation.end\"", NULL), 400);
        cr_assert_eq(post_event(api_key, "k",
                                "{\"kind\":\"conversation.nope\",\"conversationId\":\"x\"}", NULL),
                     400);
        cr_assert_eq(post_event(NULL, NULL, END_PLAIN, NULL), 403);
        cr_assert_eq(it_apikey_create(&d, "someone-else", key2), 0);
        cr_assert_eq(post_event(key2, NULL, END_PLAIN, NULL), 403);
        cr_assert_eq(post_event(api_key, NULL,
                                "{\"kind\":\"conversation.end\",\"accountId\":\"someone-else\","
                                "\"conversationId\":\"x\"}",
                                NULL),
                     403);
        cr_assert_eq(it_call(&d, "GET", EVENTS, api_key, NULL, NULL), 405);

        /* One good event after them all: it alone arrives, with the key a refusal did not use. */
        cr_assert_eq(post_event(api_key, "k", END_PLAIN, &id), 202);
        recs = wait_records(1);
        wait_outbox_empty();
        json_decref(recs);
        recs = sink_records();
        cr_assert_eq(json_array_size(recs), 1, "%s", json_dumps(recs, JSON_COMPACT));
        cr_assert_not_null(find_by_event_id(recs, id));
        json_decref(recs);
        cr_assert_eq(metric("ctxhookd_dead_letters"), 0, "a refused request left a dead letter");
        cr_assert_eq(metric("ctxhookd_http_requests_total{code=\"400\"}"), 2);
        cr_assert_eq(metric("ctxhookd_http_requests_total{code=\"403\"}"), 3);
        finish();
}
