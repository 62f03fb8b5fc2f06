/* End-to-end tests of the event pipeline through the real ctxhookd binary and real peers: a
 * Kafka broker in its own process (tests/tools/mock_kafka, librdkafka's mock cluster), events
 * produced by kcat, and a webhook receiver (tests/tools/webhook_sink) that checks every
 * signature with its own OpenSSL code and records every request. They check what the hooks
 * receive field by field (event, raw, gathered context), routing by kind and close reason,
 * retries (receiver down, 503, Retry-After), dead letters and their admin endpoints (list,
 * page, redrive, delete, authorisation), per-conversation order under retries, clear_after,
 * the embedded broker, and that nothing is lost when the daemon is SIGKILLed twice while it
 * works through a few thousand events. Every test ends with a graceful stop that must exit 0
 * (in the sanitizer build that carries LeakSanitizer's verdict). */
#include <criterion/criterion.h>
#include <criterion/logging.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "ctxhookd/cleanup.h"
#include "support_daemon.h"
#include "support_sink.h"

#define ACCT  "12345678"
#define TOPIC "conversation-events"
#define ADMIN "it-admin-token-0123456789abcdef"
#define PFX   "/v1/account/" ACCT

/* Generous, for the sanitizer build on a loaded machine; the tests wait for conditions, they
 * never sleep a fixed time to let something happen. */
#define WAIT_MS  (30000 * it_timeout_scale())
#define READY_MS (20000 * it_timeout_scale())

static struct it_daemon d;
static struct it_peer kafka, sink;
static char dir[IT_DIR_MAX];
static char sink_out[IT_PATH_MAX];
static char secret[128];
static char api_key[257];
static char bootstrap[256];
static unsigned sink_port;

/* The events of /work/shared/data/events/sample.jsonl (tests/data/events/sample.jsonl). */
static const char *const samples[] = {
    "{\"general\":{\"cbotEventType\":\"SYSTEM_END_CONVERSATION\",\"type\":\"UPSERT\",\"convId\":"
    "\"sample-conv-1\",\"dialogId\":\"sample-conv-1\",\"startTs\":1764400000001,"
    "\"serverTimestamp\":1764400000201,\"oldConvState\":\"OPEN\",\"newConvState\":\"CLOSE\","
    "\"lastMessageComposer\":\"consumer\",\"lastMessageTs\":1764400000101},\"end\":{"
    "\"closeReason\":\"SYSTEM\"}}",
    "{\"general\":{\"cbotEventType\":\"AGENT_END_CONVERSATION\",\"type\":\"UPSERT\",\"convId\":"
    "\"sample-conv-2\",\"dialogId\":\"sample-conv-2\",\"startTs\":1764400000002,"
    "\"serverTimestamp\":1764400000202,\"oldConvState\":\"OPEN\",\"newConvState\":\"CLOSE\","
    "\"lastMessageComposer\":\"consumer\",\"lastMessageTs\":1764400000102},\"end\":{"
    "\"closeReason\":\"AGENT\"}}",
    "{\"general\":{\"cbotEventType\":\"CONSUMER_NON_RESPONSIVE\",\"type\":\"UPSERT\",\"convId\":"
    "\"sample-conv-3\",\"dialogId\":\"sample-conv-3\",\"startTs\":1764400000003,"
    "\"serverTimestamp\":1764400000203,\"oldConvState\":\"OPEN\",\"newConvState\":\"OPEN\","
    "\"lastMessageComposer\":\"consumer\",\"lastMessageTs\":1764400000103}}",
    "not json at all",
    "{\"kind\":\"notification\",\"type\":\"cqm.ExConversationChangeNotification\",\"body\":{"
    "\"changes\":[{\"type\":\"UPSERT\",\"result\":{\"convId\":\"sample-conv-4\","
    "\"conversationDetails\":{\"brandId\":\"12345678\",\"skillId\":\"77\",\"state\":\"CLOSE\","
    "\"stage\":\"CLOSE\",\"closeReason\":\"TIMEOUT\",\"startTs\":1764400000000,"
    "\"metaDataLastUpdateTs\":1764400005000}}},{\"type\":\"UPSERT\",\"result\":{\"convId\":"
    "\"sample-conv-5\",\"conversationDetails\":{\"brandId\":\"12345678\",\"skillId\":\"77\","
    "\"state\":\"OPEN\",\"stage\":\"OPEN\",\"startTs\":1764400000000}}}]}}",
    "{\"kind\":\"conversation.end\",\"accountId\":\"12345678\",\"conversationId\":"
    "\"sample-conv-6\",\"closeReason\":\"SYSTEM\",\"time\":1764400000006}",
};
#define N_SAMPLES (sizeof(samples) / sizeof(samples[0]))

/* ---- fixture ---- */

static void setup(void)
{
        cr_assert_eq(it_tmpdir(dir), 0);
        snprintf(sink_out, sizeof(sink_out), "%s/sink.jsonl", dir);
        it_make_secret(secret);
}

static void teardown(void)
{
        it_daemon_cleanup(&d);
        it_peer_cleanup(&sink);
        it_peer_cleanup(&kafka);
        it_rmtree(dir);
}

TestSuite(pipeline, .init = setup, .fini = teardown, .timeout = 240);

static void start_kafka(int partitions)
{
        char n[16];
        const char *args[] = {"--topic", TOPIC, "--partitions", n, NULL};

        snprintf(n, sizeof(n), "%d", partitions);
        cr_assert_eq(it_peer_start(&kafka, dir, "mock_kafka", args), 0, "mock_kafka did not start");
        snprintf(bootstrap, sizeof(bootstrap), "%s", kafka.line);
        cr_assert(strncmp(bootstrap, "127.0.0.1:", 10) == 0, "mock_kafka printed '%s'", bootstrap);
}

/* Starts the sink with extra options (NULL-terminated, may be NULL); on the port of the last
 * sink when there was one, so that a restart keeps the hooks' URL valid. */
static void start_sink(const char *const *extra)
{
        cr_assert_eq(it_sink_start(&sink, dir, sink_out, secret, sink_port, extra, &sink_port), 0,
                     "webhook_sink did not start");
}

static void stop_sink(void)
{
        int code = -1;

        cr_assert_eq(it_peer_stop(&sink, SIGTERM, &code), 0);
        cr_assert_eq(code, 0, "webhook_sink exited %d", code);
}

/* The daemon's config: loopback API on any port, the admin token (unless admin is false),
 * Kafka at `brokers` with quick group rebalances (a SIGKILLed member is noticed after 4 s),
 * the given [delivery] lines and hooks. In hooks, @URL@ becomes the sink's base URL and
 * @SECRET@ the signing secret. */
static char *make_config(const char *brokers, bool admin, const char *delivery, const char *hooks)
{
        _cleanup_free_ char *consumer = it_kafka_section(brokers, TOPIC, "it-pipeline", ACCT, 4000);
        const char *const sections[] = {consumer, "[delivery]\n", delivery, hooks, NULL};
        struct it_config c = {.api_extra = admin ? "admin_token = " ADMIN "\n" : NULL,
                              .sections = sections};

        return it_config_text(&c, sink_port, secret);
}

static void start_daemon(const char *config)
{
        cr_assert_eq(it_daemon_init(&d, config), 0);
        cr_assert_eq(it_apikey_create(&d, ACCT, api_key), 0);
        cr_assert_eq(it_daemon_start(&d, NULL, NULL), 0, "the daemon did not start");
}

/* Waits for /readyz to answer 200 (partitions assigned). Returns whether it did. */
static bool wait_ready(void)
{
        return it_daemon_wait_ready(&d, READY_MS) == 0;
}

static void produce(const char *text)
{
        cr_assert_eq(it_kcat_produce(dir, bootstrap, TOPIC, text), 0, "kcat could not produce");
}

/* A graceful stop of everything that runs: exit codes 0, and the daemon's log format. */
static void finish(void)
{
        int code = -1;
        char *log;

        cr_assert_eq(it_daemon_stop(&d, SIGTERM, &code), 0, "the daemon did not stop on SIGTERM");
        log = it_daemon_log(&d);
        cr_assert_eq(code, 0, "the daemon exited %d after SIGTERM; log:\n%s", code, log);
        cr_assert(it_log_lines_prefixed(log), "log lines without the <N> prefix");
        free(log);
        if (sink.pid > 0 && !sink.exited)
                stop_sink();
        code = -1;
        cr_assert_eq(it_peer_stop(&kafka, SIGTERM, &code), 0);
        cr_assert_eq(code, 0, "mock_kafka exited %d", code);
}

/* ---- the sink's records ---- */

/* Every complete line of the sink's file, as a JSON array. */
static json_t *sink_records(void)
{
        json_t *recs = it_sink_records(sink_out);

        cr_assert_not_null(recs, "a line of the sink's file is not JSON");
        return recs;
}

/* The conversation of the event delivered. */
static const char *rec_conv(json_t *rec)
{
        return it_rec_str(it_rec_event(rec), "conversationId");
}

/* Whether the sink answered 2xx (the signature is checked on its own, by assert_signed). */
static bool answered_2xx(json_t *rec, const void *unused)
{
        (void)unused;
        return it_rec_2xx(rec);
}

static bool for_conversation(json_t *rec, const void *conv)
{
        return strcmp(rec_conv(rec), conv) == 0;
}

/* Waits until the sink has recorded n requests that match (NULL: any); returns all records. */
static json_t *wait_sink(size_t n, it_rec_match_fn *match, const void *arg, int timeout_ms)
{
        json_t *recs = NULL;
        int r = it_sink_wait(sink_out, n, match, arg, timeout_ms, &recs);

        if (r < 0)
                it_daemon_print_log_tail(&d, 6000);
        cr_assert_eq(r, 0, "the sink did not get %zu such requests within %d ms (see above)", n,
                     timeout_ms);
        return recs;
}

/* Waits until the sink has answered n requests with 2xx; returns all records. */
static json_t *wait_ok(size_t n, int timeout_ms)
{
        return wait_sink(n, answered_2xx, NULL, timeout_ms);
}

/* Waits until the sink has recorded at least n requests (whatever it answered). */
static json_t *wait_records(size_t n, int timeout_ms)
{
        return wait_sink(n, NULL, NULL, timeout_ms);
}

/* Waits until the sink has recorded a request for the conversation. */
static void wait_conversation_record(const char *conv)
{
        json_decref(wait_sink(1, for_conversation, conv, WAIT_MS));
}

/* Asserts the things every request must have: POST of JSON, a webhook-id, a fresh
 * webhook-timestamp, and a signature the sink verified. */
static void assert_signed(json_t *rec)
{
        long long now = (long long)time(NULL), ts = it_rec_int(rec, "timestamp");
        _cleanup_free_ char *shown = json_dumps(rec, JSON_COMPACT);

        cr_assert_str_eq(it_rec_str(rec, "method"), "POST", "%s", shown);
        cr_assert(strncmp(it_rec_str(rec, "content_type"), "application/json", 16) == 0,
                  "Content-Type: %s", shown);
        cr_assert(it_rec_str(rec, "webhook_id")[0], "no webhook-id: %s", shown);
        cr_assert(ts > now - 300 && ts <= now + 5, "webhook-timestamp %lld, now %lld: %s", ts, now,
                  shown);
        cr_assert(json_is_true(json_object_get(rec, "signature_ok")), "bad signature: %s", shown);
        cr_assert(json_is_object(json_object_get(rec, "body")), "body not a JSON object: %s",
                  shown);
}

/* ---- metrics and admin ---- */

static char *get_metrics(void)
{
        struct it_response r;

        cr_assert_eq(it_call(&d, "GET", "/metrics", NULL, NULL, &r), 200);
        free(r.headers);
        return r.body;
}

/* Sum of the samples of family `name` (exact, e.g. "ctxhookd_events_total") whose labels
 * include every comma-separated `k="v"` of labels (NULL: any); -1 when there is none. */
static double metric(const char *text, const char *name, const char *labels)
{
        size_t nlen = strlen(name);
        double sum = 0;
        bool found = false;

        for (const char *p = text; p && *p;) {
                size_t n = strcspn(p, "\n");
                _cleanup_free_ char *line = strndup(p, n);
                const char *rest = line + nlen;

                p += n + (p[n] ? 1 : 0);
                if (line[0] == '#' || strncmp(line, name, nlen) != 0 ||
                    (*rest != '{' && *rest != ' '))
                        continue;
                if (labels) {
                        _cleanup_free_ char *want = strdup(labels);
                        const char *close = strchr(rest, '}');
                        bool all = *rest == '{' && close;

                        for (char *save = NULL, *l = strtok_r(want, ",", &save); all && l;
                             l = strtok_r(NULL, ",", &save)) {
                                const char *at = strstr(rest, l);

                                all = at && at < close;
                        }
                        if (!all)
                                continue;
                }
                rest = *rest == '{' ? strchr(rest, '}') + 1 : rest;
                sum += strtod(rest, NULL);
                found = true;
        }
        return found ? sum : -1;
}

/* Waits until the metric equals want; asserts it. */
static void wait_metric(const char *name, const char *labels, double want)
{
        long long deadline = it_now_ms() + WAIT_MS;
        _cleanup_free_ char *text = NULL;
        double v;

        for (;;) {
                free(text);
                text = get_metrics();
                v = metric(text, name, labels);
                if (v == want || it_now_ms() > deadline)
                        break;
                it_sleep_ms(50);
        }
        cr_assert_eq(v, want, "%s{%s} is %g, want %g; metrics:\n%s", name, labels ? labels : "", v,
                     want, text);
}

static long admin(const char *method, const char *path, const char *token, struct it_response *ret)
{
        char auth[256];
        const char *headers[] = {auth, NULL};

        if (token)
                snprintf(auth, sizeof(auth), "Authorization: Bearer %s", token);
        return it_call_h(&d, method, path, NULL, token ? headers : NULL, NULL, ret);
}

/* GET /admin/dead-letters…: the items array (a new reference). */
static json_t *dead_letters(const char *query)
{
        char path[256];
        struct it_response r;
        json_t *j, *items;
        long s;

        snprintf(path, sizeof(path), "/admin/dead-letters%s", query);
        s = admin("GET", path, ADMIN, &r);
        cr_assert_eq(s, 200, "GET %s: %ld %s", path, s, r.body);
        j = it_response_json(&r);
        items = json_object_get(j, "items");
        cr_assert(json_is_array(items), "GET %s: %s", path, r.body);
        json_incref(items);
        json_decref(j);
        it_response_free(&r);
        return items;
}

/* Waits until the list holds n dead letters; returns them. */
static json_t *wait_dead_letters(size_t n)
{
        long long deadline = it_now_ms() + WAIT_MS;
        json_t *items;

        for (;;) {
                items = dead_letters("");
                if (json_array_size(items) == n || it_now_ms() > deadline)
                        break;
                json_decref(items);
                it_sleep_ms(50);
        }
        if (json_array_size(items) != n)
                it_daemon_print_log_tail(&d, 6000);
        cr_assert_eq(json_array_size(items), n, "%zu dead letters, want %zu: %s",
                     json_array_size(items), n, json_dumps(items, JSON_COMPACT));
        return items;
}

/* ---- the Context API ---- */

static void context_patch(const char *path, const char *body)
{
        struct it_response r;
        long s = it_call(&d, "PATCH", path, api_key, body, &r);

        cr_assert_eq(s, 204, "PATCH %s: %ld %s", path, s, r.body);
        it_response_free(&r);
}

static json_t *context_get(const char *path)
{
        struct it_response r;
        long s = it_call(&d, "GET", path, api_key, NULL, &r);
        json_t *j;

        cr_assert_eq(s, 200, "GET %s: %ld %s", path, s, r.body);
        j = it_response_json(&r);
        cr_assert_not_null(j, "GET %s: %s", path, r.body);
        it_response_free(&r);
        return j;
}

/* ---- JSON ---- */

static json_t *parse(const char *text)
{
        json_error_t e;
        json_t *j = json_loads(text, JSON_DECODE_ANY, &e);

        cr_assert_not_null(j, "bad JSON in the test: %s: %s", e.text, text);
        return j;
}

/* what: a string naming the value, for the failure message. */
#define assert_json_eq(got, want_text, what)                                                       \
        do {                                                                                       \
                json_t *want_ = parse(want_text);                                                  \
                _cleanup_free_ char *got_ = json_dumps((got), JSON_COMPACT | JSON_ENCODE_ANY);     \
                cr_assert(json_equal((got), want_), "%s: got %s, want %s", (what),                 \
                          got_ ? got_ : "(nothing)", (want_text));                                 \
                json_decref(want_);                                                                \
        } while (0)

/* A plain event; reason NULL = none; seq identifies it in the records. */
static void plain_event(FILE *f, const char *kind, const char *conv, const char *reason,
                        long long time_ms, int seq)
{
        fprintf(f, "%s\t{\"kind\":\"%s\",\"accountId\":\"" ACCT "\",\"conversationId\":\"%s\",",
                conv, kind, conv);
        if (reason)
                fprintf(f, "\"closeReason\":\"%s\",", reason);
        fprintf(f, "\"time\":%lld,\"seq\":%d}\n", time_ms, seq);
}

/* The delivery record with this event id and hook (path), or NULL. */
static json_t *find_delivery(json_t *recs, const char *path, const char *event_id)
{
        size_t i;
        json_t *rec;

        json_array_foreach(recs, i, rec)
        {
                if (it_rec_2xx(rec) && strcmp(it_rec_str(rec, "path"), path) == 0 &&
                    strcmp(it_rec_str(it_rec_event(rec), "id"), event_id) == 0)
                        return rec;
        }
        return NULL;
}

static const char hook_autoclose[] = "[hook \"notes-on-autoclose\"]\n"
                                     "on = conversation.end\n"
                                     "close_reason = SYSTEM,TIMEOUT\n"
                                     "namespaces = agentNotes\n"
                                     "url = @URL@/fn\n"
                                     "secret = @SECRET@\n"
                                     "bearer_token = it-bearer-42\n"
                                     "timeout_ms = 5000\n";

/* ---- tests ---- */

/* The sample file end to end: exactly sample-conv-1, -4 and -6 reach the hook, each once,
 * signed, with the bearer token, the normalised event, the raw event (for the notification:
 * its change) and the agentNotes written through the Context API beforehand; the malformed
 * line is a dead letter with a reason; the metrics count what happened. */
Test(pipeline, samples_end_to_end)
{
        _cleanup_free_ char *conf = NULL, *text = NULL, *m = NULL;
        size_t len = 0;
        FILE *f;
        json_t *recs, *items, *item, *notification, *raw4, *rec;
        size_t i;
        struct {
                const char *conv, *id, *reason, *session;
                long long time;
                int line;
        } want[] = {
            {"sample-conv-1", "kafka:" TOPIC "/0/0", "SYSTEM",
             "{\"note\":\"wants a callback\",\"priority\":2}", 1764400000201LL, 0},
            {"sample-conv-4", "kafka:" TOPIC "/0/4", "TIMEOUT", "{}", 1764400005000LL, 4},
            {"sample-conv-6", "kafka:" TOPIC "/0/5", "SYSTEM", "{}", 1764400000006LL, 5},
        };

        /* One partition: the offsets, and so the event ids, are known. */
        start_kafka(1);
        start_sink(NULL);
        conf = make_config(bootstrap, true, "retry_base_ms = 100\n", hook_autoclose);
        start_daemon(conf);
        cr_assert(wait_ready(), "/readyz did not answer 200 with the partitions assigned");

        context_patch(PFX "/agentNotes/sample-conv-1/properties",
                      "{\"note\":\"wants a callback\",\"priority\":2}");
        context_patch(PFX "/agentNotes/properties", "{\"team\":\"billing\"}");
        context_patch(PFX "/agentNotes/sample-conv-2/properties", "{\"note\":\"not sent\"}");

        f = open_memstream(&text, &len);
        for (i = 0; i < N_SAMPLES; i++)
                fprintf(f, "k%zu\t%s\n", i, samples[i]);
        fclose(f);
        produce(text);

        /* Everything consumed (3 queued, 3 ignored, 1 dead) and the outbox drained: no more
         * deliveries can come after this. */
        wait_metric("ctxhookd_events_total", "result=\"queued\"", 3);
        wait_metric("ctxhookd_events_total", "result=\"ignored\"", 3);
        wait_metric("ctxhookd_events_total", "result=\"dead\"", 1);
        wait_metric("ctxhookd_deliveries_total", "hook=\"notes-on-autoclose\",result=\"delivered\"",
                    3);
        wait_metric("ctxhookd_outbox_depth", NULL, 0);
        wait_metric("ctxhookd_dead_letters", NULL, 1);
        m = get_metrics();
        cr_assert_eq(metric(m, "ctxhookd_delivery_duration_seconds_count", NULL), 3,
                     "delivery duration histogram: %s", m);
        cr_assert_geq(metric(m, "ctxhookd_kafka_lag", NULL), 0, "no ctxhookd_kafka_lag: %s", m);

        recs = sink_records();
        cr_assert_eq(json_array_size(recs), 3, "want exactly 3 deliveries: %s",
                     json_dumps(recs, JSON_INDENT(1)));
        notification = parse(samples[4]);
        raw4 = json_object_get(json_object_get(notification, "body"), "changes");
        for (size_t k = 0; k < 3; k++) {
                json_t *found = NULL, *payload, *event, *raw_want;
                char ctx[512];

                json_array_foreach(recs, i, rec) if (strcmp(rec_conv(rec), want[k].conv) == 0)
                    found = rec;
                cr_assert_not_null(found, "no delivery for %s", want[k].conv);
                assert_signed(found);
                cr_assert_eq(it_rec_int(found, "status"), 200);
                cr_assert_str_eq(it_rec_str(found, "path"), "/fn");
                cr_assert_str_eq(it_rec_str(found, "authorization"), "Bearer it-bearer-42");
                cr_assert(
                    json_is_integer(json_object_get(json_object_get(found, "body"), "timestamp")),
                    "body.timestamp");
                assert_json_eq(json_object_get(json_object_get(found, "body"), "headers"), "[]",
                               "body.headers");
                payload = it_rec_payload(found);
                cr_assert_str_eq(it_rec_str(payload, "hook"), "notes-on-autoclose");
                event = json_object_get(payload, "event");
                cr_assert_str_eq(it_rec_str(event, "id"), want[k].id);
                cr_assert_str_eq(it_rec_str(event, "kind"), "conversation.end");
                cr_assert_str_eq(it_rec_str(event, "accountId"), ACCT);
                cr_assert_str_eq(it_rec_str(event, "conversationId"), want[k].conv);
                cr_assert_str_eq(it_rec_str(event, "closeReason"), want[k].reason);
                cr_assert_eq(json_integer_value(json_object_get(event, "time")), want[k].time,
                             "%s: time", want[k].conv);
                raw_want = want[k].line == 4 ? json_incref(json_array_get(raw4, 0))
                                             : parse(samples[want[k].line]);
                cr_assert(json_equal(json_object_get(payload, "raw"), raw_want), "%s: raw %s",
                          want[k].conv, json_dumps(json_object_get(payload, "raw"), JSON_COMPACT));
                json_decref(raw_want);
                snprintf(ctx, sizeof(ctx),
                         "{\"agentNotes\":{\"namespace\":{\"team\":\"billing\"},\"session\":%s}}",
                         want[k].session);
                assert_json_eq(json_object_get(payload, "context"), ctx, want[k].conv);
        }

        items = wait_dead_letters(1);
        item = json_array_get(items, 0);
        cr_assert(json_integer_value(json_object_get(item, "id")) > 0, "dead letter id");
        cr_assert_str_eq(it_rec_str(item, "source"), "kafka:" TOPIC "/0/3");
        cr_assert(strlen(it_rec_str(item, "reason")) > 3, "dead letter without a reason: %s",
                  json_dumps(item, JSON_COMPACT));
        cr_assert_not_null(json_object_get(item, "received"), "no 'received'");
        cr_assert_str_eq(it_rec_str(item, "raw"), "not json at all");
        json_decref(items);
        json_decref(recs);
        json_decref(notification);
        finish();
}

/* Routing by kind and close reason with four hooks: an idle event, an agent close, a
 * notification with three changes (ids #1, #2; one change from another account), a close by
 * the consumer, and a kind no hook wants. */
Test(pipeline, routing_by_kind_and_close_reason)
{
        static const char hooks[] = "[hook \"idle\"]\n"
                                    "on = conversation.idle\n"
                                    "url = @URL@/idle\n"
                                    "secret = @SECRET@\n"
                                    "[hook \"agent-close\"]\n"
                                    "on = conversation.end\n"
                                    "close_reason = AGENT\n"
                                    "url = @URL@/agent\n"
                                    "secret = @SECRET@\n"
                                    "[hook \"any-end\"]\n"
                                    "on = conversation.end\n"
                                    "url = @URL@/end\n"
                                    "secret = @SECRET@\n"
                                    "[hook \"new\"]\n"
                                    "on = conversation.new\n"
                                    "url = @URL@/new\n"
                                    "secret = @SECRET@\n";
        static const char *const events[] = {
            "{\"general\":{\"cbotEventType\":\"CONSUMER_NON_RESPONSIVE\",\"convId\":\"r-idle\","
            "\"serverTimestamp\":1764400100000}}",
            "{\"general\":{\"cbotEventType\":\"AGENT_END_CONVERSATION\",\"convId\":\"r-agent\","
            "\"serverTimestamp\":1764400100001},\"end\":{\"closeReason\":\"AGENT\"}}",
            "{\"type\":\"cqm.ExConversationChangeNotification\",\"body\":{\"changes\":["
            "{\"type\":\"UPSERT\",\"result\":{\"convId\":\"r-n1\",\"conversationDetails\":{"
            "\"brandId\":\"12345678\",\"state\":\"CLOSE\",\"stage\":\"CLOSE\",\"closeReason\":"
            "\"TIMEOUT\",\"startTs\":1764400000000,\"metaDataLastUpdateTs\":1764400100002}}},"
            "{\"type\":\"UPSERT\",\"result\":{\"convId\":\"r-n2\",\"conversationDetails\":{"
            "\"brandId\":\"999\",\"state\":\"CLOSE\",\"stage\":\"CLOSE\",\"closeReason\":"
            "\"AGENT\",\"startTs\":1764400000000,\"metaDataLastUpdateTs\":1764400100003}}},"
            "{\"type\":\"UPSERT\",\"result\":{\"convId\":\"r-n3\",\"conversationDetails\":{"
            "\"brandId\":\"12345678\",\"state\":\"OPEN\",\"stage\":\"OPEN\",\"startTs\":"
            "1764400100004}}}]}}",
            "{\"kind\":\"conversation.end\",\"accountId\":\"12345678\",\"conversationId\":"
            "\"r-consumer\",\"closeReason\":\"CONSUMER\",\"time\":1764400100005}",
            "{\"kind\":\"conversation.ttr\",\"accountId\":\"12345678\",\"conversationId\":"
            "\"r-ttr\",\"time\":1764400100006}",
        };
        static const struct {
                const char *path, *hook, *id, *conv, *kind, *account, *reason;
                long long time;
                int event, change; /* change -1: raw is the whole event */
        } want[] = {
            {"/idle", "idle", "kafka:" TOPIC "/0/0", "r-idle", "conversation.idle", ACCT, NULL,
             1764400100000LL, 0, -1},
            {"/agent", "agent-close", "kafka:" TOPIC "/0/1", "r-agent", "conversation.end", ACCT,
             "AGENT", 1764400100001LL, 1, -1},
            {"/end", "any-end", "kafka:" TOPIC "/0/1", "r-agent", "conversation.end", ACCT, "AGENT",
             1764400100001LL, 1, -1},
            {"/end", "any-end", "kafka:" TOPIC "/0/2", "r-n1", "conversation.end", ACCT, "TIMEOUT",
             1764400100002LL, 2, 0},
            {"/agent", "agent-close", "kafka:" TOPIC "/0/2#1", "r-n2", "conversation.end", "999",
             "AGENT", 1764400100003LL, 2, 1},
            {"/end", "any-end", "kafka:" TOPIC "/0/2#1", "r-n2", "conversation.end", "999", "AGENT",
             1764400100003LL, 2, 1},
            {"/new", "new", "kafka:" TOPIC "/0/2#2", "r-n3", "conversation.new", ACCT, NULL,
             1764400100004LL, 2, 2},
            {"/end", "any-end", "kafka:" TOPIC "/0/3", "r-consumer", "conversation.end", ACCT,
             "CONSUMER", 1764400100005LL, 3, -1},
        };
        _cleanup_free_ char *conf = NULL, *text = NULL;
        size_t len = 0, nwant = sizeof(want) / sizeof(want[0]);
        FILE *f;
        json_t *recs;
        struct it_response r;
        long s;

        start_kafka(1);
        start_sink(NULL);
        conf = make_config(bootstrap, false, "retry_base_ms = 100\n", hooks);
        start_daemon(conf);
        wait_ready();

        f = open_memstream(&text, &len);
        for (size_t i = 0; i < sizeof(events) / sizeof(events[0]); i++)
                fprintf(f, "r%zu\t%s\n", i, events[i]);
        fclose(f);
        produce(text);

        wait_metric("ctxhookd_events_total", "result=\"queued\"", 6);
        wait_metric("ctxhookd_events_total", "result=\"ignored\"", 1);
        wait_metric("ctxhookd_deliveries_total", "hook=\"any-end\",result=\"delivered\"", 4);
        wait_metric("ctxhookd_deliveries_total", "hook=\"agent-close\",result=\"delivered\"", 2);
        wait_metric("ctxhookd_deliveries_total", "hook=\"idle\",result=\"delivered\"", 1);
        wait_metric("ctxhookd_deliveries_total", "hook=\"new\",result=\"delivered\"", 1);
        wait_metric("ctxhookd_outbox_depth", NULL, 0);

        recs = sink_records();
        cr_assert_eq(json_array_size(recs), nwant, "want exactly %zu deliveries: %s", nwant,
                     json_dumps(recs, JSON_INDENT(1)));
        for (size_t k = 0; k < nwant; k++) {
                json_t *rec = find_delivery(recs, want[k].path, want[k].id);
                json_t *event, *reason, *raw_want;

                cr_assert_not_null(rec, "no delivery of %s to %s", want[k].id, want[k].path);
                assert_signed(rec);
                cr_assert(json_is_null(json_object_get(rec, "authorization")),
                          "Authorization sent without a bearer_token: %s",
                          it_rec_str(rec, "authorization"));
                cr_assert_str_eq(it_rec_str(it_rec_payload(rec), "hook"), want[k].hook);
                event = it_rec_event(rec);
                cr_assert_str_eq(it_rec_str(event, "kind"), want[k].kind, "%s", want[k].id);
                cr_assert_str_eq(it_rec_str(event, "conversationId"), want[k].conv);
                cr_assert_str_eq(it_rec_str(event, "accountId"), want[k].account, "%s", want[k].id);
                reason = json_object_get(event, "closeReason");
                if (want[k].reason)
                        cr_assert_str_eq(it_rec_str(event, "closeReason"), want[k].reason);
                else
                        cr_assert(json_is_null(reason) ||
                                      (json_is_string(reason) && !*json_string_value(reason)),
                                  "%s: closeReason of an event without one", want[k].id);
                cr_assert_eq(json_integer_value(json_object_get(event, "time")), want[k].time,
                             "%s: time", want[k].id);
                raw_want = parse(events[want[k].event]);
                if (want[k].change >= 0) {
                        json_t *c = json_array_get(
                            json_object_get(json_object_get(raw_want, "body"), "changes"),
                            (size_t)want[k].change);

                        json_incref(c);
                        json_decref(raw_want);
                        raw_want = c;
                }
                cr_assert(json_equal(json_object_get(it_rec_payload(rec), "raw"), raw_want),
                          "%s: raw %s", want[k].id,
                          json_dumps(json_object_get(it_rec_payload(rec), "raw"), JSON_COMPACT));
                json_decref(raw_want);
                assert_json_eq(json_object_get(it_rec_payload(rec), "context"), "{}", want[k].id);
        }
        /* One event to two hooks: two messages, two webhook-ids. */
        cr_assert_str_neq(
            it_rec_str(find_delivery(recs, "/agent", "kafka:" TOPIC "/0/1"), "webhook_id"),
            it_rec_str(find_delivery(recs, "/end", "kafka:" TOPIC "/0/1"), "webhook_id"));

        /* No admin_token: the admin endpoints are off, whatever token comes. */
        s = admin("GET", "/admin/dead-letters", "anything-at-all-0123456789", &r);
        cr_assert(s == 404 || s == 403, "admin endpoint without admin_token answered %ld: %s", s,
                  r.body);
        it_response_free(&r);
        json_decref(recs);
        finish();
}

/* The receiver is down (connection refused) at first, then answers 503 twice, then 200: the
 * delivery arrives once it can, every attempt with the same webhook-id and payload, and then
 * no more. */
Test(pipeline, retries_until_the_receiver_is_up)
{
        static const char *const fail2[] = {"--fail-first", "2", NULL};
        static const char hooks[] = "[hook \"h\"]\n"
                                    "on = conversation.end\n"
                                    "url = @URL@/fn\n"
                                    "secret = @SECRET@\n"
                                    "timeout_ms = 2000\n"
                                    "max_attempts = 100\n";
        _cleanup_free_ char *conf = NULL, *text = NULL, *m = NULL;
        size_t len = 0, i;
        FILE *f;
        json_t *recs, *rec, *first;

        start_kafka(2);
        sink_port = it_closed_port();
        cr_assert_neq(sink_port, 0, "no closed port found");
        conf = make_config(bootstrap, false, "retry_base_ms = 100\nretry_max_ms = 400\n", hooks);
        start_daemon(conf);
        wait_ready();

        f = open_memstream(&text, &len);
        plain_event(f, "conversation.end", "down-1", "SYSTEM", 1764400200000LL, 1);
        fclose(f);
        produce(text);

        /* Attempts fail while nobody listens... */
        {
                long long deadline = it_now_ms() + WAIT_MS;
                double retries;

                do {
                        free(m);
                        m = get_metrics();
                        retries =
                            metric(m, "ctxhookd_deliveries_total", "hook=\"h\",result=\"retry\"");
                        if (retries >= 2)
                                break;
                        it_sleep_ms(50);
                } while (it_now_ms() < deadline);
                cr_assert_geq(retries, 2, "no retries counted while the receiver was down: %s", m);
                cr_assert_leq(metric(m, "ctxhookd_deliveries_total", "hook=\"h\",result=\"dead\""),
                              0, "a network error made a dead letter: %s", m);
        }
        /* ...and once it listens (and fails twice more), the delivery arrives. */
        start_sink(fail2);
        recs = wait_ok(1, WAIT_MS);
        wait_metric("ctxhookd_deliveries_total", "hook=\"h\",result=\"delivered\"", 1);
        wait_metric("ctxhookd_outbox_depth", NULL, 0);
        json_decref(recs);
        recs = sink_records();
        cr_assert_eq(json_array_size(recs), 3, "want 503, 503, 200: %s",
                     json_dumps(recs, JSON_INDENT(1)));
        first = json_array_get(recs, 0);
        json_array_foreach(recs, i, rec)
        {
                assert_signed(rec);
                cr_assert_eq(it_rec_int(rec, "status"), i < 2 ? 503 : 200);
                cr_assert_eq(it_rec_int(rec, "attempt"), (long long)i + 1,
                             "the sink saw another webhook-id: %s",
                             json_dumps(recs, JSON_INDENT(1)));
                cr_assert_str_eq(it_rec_str(rec, "webhook_id"), it_rec_str(first, "webhook_id"));
                cr_assert(json_equal(it_rec_payload(rec), it_rec_payload(first)),
                          "the payload changed between attempts");
        }
        cr_assert_str_eq(rec_conv(first), "down-1");
        json_decref(recs);
        finish();
}

/* clear_after: the gathered session notes are deleted once, and only once, the delivery
 * succeeded; namespace-level notes and other conversations' notes stay. The first attempt is
 * answered 429 with Retry-After: 2, which also shows that the daemon waits that long (its own
 * back-off would be at most 50 ms). */
Test(pipeline, context_and_clear_after_success)
{
        static const char *const opts[] = {"--fail-first", "1", "--retry-after", "2", NULL};
        static const char hooks[] = "[hook \"clear\"]\n"
                                    "on = conversation.end\n"
                                    "namespaces = agentNotes,botState\n"
                                    "url = @URL@/fn\n"
                                    "secret = @SECRET@\n"
                                    "clear_after = true\n";
        static const char ctx_want[] = "{\"agentNotes\":{\"namespace\":{\"team\":\"billing\"},"
                                       "\"session\":{\"note\":\"callback\",\"priority\":2}},"
                                       "\"botState\":{\"namespace\":{},\"session\":{\"step\":3}}}";
        _cleanup_free_ char *conf = NULL, *text = NULL;
        size_t len = 0;
        FILE *f;
        json_t *recs, *j, *a, *b;
        long long gap, deadline;

        start_kafka(2);
        start_sink(opts);
        conf = make_config(bootstrap, false, "retry_base_ms = 50\nretry_max_ms = 5000\n", hooks);
        start_daemon(conf);
        wait_ready();

        context_patch(PFX "/agentNotes/ctx-1/properties", "{\"note\":\"callback\",\"priority\":2}");
        context_patch(PFX "/agentNotes/properties", "{\"team\":\"billing\"}");
        context_patch(PFX "/botState/ctx-1/properties", "{\"step\":3}");
        context_patch(PFX "/agentNotes/ctx-2/properties", "{\"note\":\"keep me\"}");

        f = open_memstream(&text, &len);
        plain_event(f, "conversation.idle", "ctx-2", NULL, 1764400300000LL, 1);
        plain_event(f, "conversation.end", "ctx-1", "SYSTEM", 1764400300001LL, 2);
        fclose(f);
        produce(text);

        /* The first attempt failed: the notes must still be there. */
        recs = wait_records(1, WAIT_MS);
        cr_assert_eq(it_rec_int(json_array_get(recs, 0), "status"), 429);
        json_decref(recs);
        j = context_get(PFX "/agentNotes/ctx-1/properties");
        assert_json_eq(j, "{\"note\":\"callback\",\"priority\":2}",
                       "session notes cleared before the delivery succeeded");
        json_decref(j);

        recs = wait_ok(1, WAIT_MS);
        cr_assert_eq(json_array_size(recs), 2, "%s", json_dumps(recs, JSON_INDENT(1)));
        a = json_array_get(recs, 0);
        b = json_array_get(recs, 1);
        assert_signed(a);
        assert_signed(b);
        cr_assert_str_eq(it_rec_str(a, "webhook_id"), it_rec_str(b, "webhook_id"));
        gap = it_rec_int(b, "received_ms") - it_rec_int(a, "received_ms");
        cr_assert_geq(gap, 1900, "Retry-After: 2 not honoured: the retry came after %lld ms", gap);
        assert_json_eq(json_object_get(it_rec_payload(b), "context"), ctx_want, "context");
        cr_assert_str_eq(rec_conv(b), "ctx-1");

        /* Cleared after success (soon, not necessarily before the 200 reached the sink). */
        deadline = it_now_ms() + WAIT_MS;
        for (;;) {
                j = context_get(PFX "/agentNotes/ctx-1/properties");
                if (json_object_size(j) == 0 || it_now_ms() > deadline)
                        break;
                json_decref(j);
                it_sleep_ms(50);
        }
        assert_json_eq(j, "{}", "agentNotes of ctx-1 after the delivery");
        json_decref(j);
        j = context_get(PFX "/botState/ctx-1/properties");
        assert_json_eq(j, "{}", "botState of ctx-1 after the delivery");
        json_decref(j);
        j = context_get(PFX "/agentNotes/properties");
        assert_json_eq(j, "{\"team\":\"billing\"}", "namespace-level notes must stay");
        json_decref(j);
        j = context_get(PFX "/agentNotes/ctx-2/properties");
        assert_json_eq(j, "{\"note\":\"keep me\"}", "notes of an undelivered conversation");
        json_decref(j);
        json_decref(recs);
        finish();
}

/* A 404 is final: one attempt, then a dead letter naming the status. After the receiver is
 * fixed, a redrive delivers it with the same webhook-id and the dead letter is gone. */
Test(pipeline, dead_letter_on_404_then_redrive)
{
        static const char *const s404[] = {"--status", "404", NULL};
        static const char hooks[] = "[hook \"h\"]\n"
                                    "on = conversation.end\n"
                                    "url = @URL@/fn\n"
                                    "secret = @SECRET@\n"
                                    "max_attempts = 5\n";
        _cleanup_free_ char *conf = NULL, *text = NULL, *dumped = NULL;
        char path[128];
        size_t len = 0;
        FILE *f;
        json_t *recs, *items, *item;
        long long id;
        struct it_response r;
        long s;

        start_kafka(2);
        start_sink(s404);
        conf = make_config(bootstrap, true, "retry_base_ms = 50\nretry_max_ms = 200\n", hooks);
        start_daemon(conf);
        wait_ready();

        f = open_memstream(&text, &len);
        plain_event(f, "conversation.end", "dl-1", "SYSTEM", 1764400400000LL, 1);
        fclose(f);
        produce(text);

        items = wait_dead_letters(1);
        item = json_array_get(items, 0);
        id = json_integer_value(json_object_get(item, "id"));
        dumped = json_dumps(item, JSON_COMPACT);
        cr_assert(id > 0, "%s", dumped);
        cr_assert(strstr(it_rec_str(item, "reason"), "404"), "the reason does not name the 404: %s",
                  dumped);
        cr_assert(it_rec_str(item, "source")[0], "no source: %s", dumped);
        cr_assert_not_null(json_object_get(item, "received"), "%s", dumped);
        cr_assert(strstr(dumped, "dl-1"), "the dead letter's raw does not show the event: %s",
                  dumped);
        wait_metric("ctxhookd_deliveries_total", "hook=\"h\",result=\"dead\"", 1);
        wait_metric("ctxhookd_dead_letters", NULL, 1);
        wait_metric("ctxhookd_outbox_depth", NULL, 0);
        recs = sink_records();
        cr_assert_eq(json_array_size(recs), 1, "a 404 was retried: %s",
                     json_dumps(recs, JSON_INDENT(1)));
        assert_signed(json_array_get(recs, 0));

        /* The receiver is fixed; a redrive with a wrong token does nothing, with the right one
         * delivers. */
        stop_sink();
        start_sink(NULL);
        snprintf(path, sizeof(path), "/admin/dead-letters/%lld/redrive", id);
        s = admin("POST", path, "wrong-token-0123456789abcdef", &r);
        cr_assert_eq(s, 403, "redrive with a wrong token: %ld %s", s, r.body);
        it_response_free(&r);
        s = admin("POST", path, NULL, &r);
        cr_assert_eq(s, 401, "redrive without a token: %ld %s", s, r.body);
        it_response_free(&r);
        json_decref(items);
        items = dead_letters("");
        cr_assert_eq(json_array_size(items), 1, "a refused redrive changed the dead letters");
        s = admin("POST", path, ADMIN, &r);
        cr_assert(s >= 200 && s < 300, "redrive: %ld %s", s, r.body);
        it_response_free(&r);

        json_decref(recs);
        recs = wait_ok(1, WAIT_MS);
        cr_assert_eq(json_array_size(recs), 2, "%s", json_dumps(recs, JSON_INDENT(1)));
        assert_signed(json_array_get(recs, 1));
        cr_assert_str_eq(it_rec_str(json_array_get(recs, 1), "webhook_id"),
                         it_rec_str(json_array_get(recs, 0), "webhook_id"),
                         "a redriven delivery must keep its webhook-id");
        cr_assert_str_eq(rec_conv(json_array_get(recs, 1)), "dl-1");
        json_decref(items);
        items = wait_dead_letters(0);
        wait_metric("ctxhookd_dead_letters", NULL, 0);
        wait_metric("ctxhookd_deliveries_total", "hook=\"h\",result=\"delivered\"", 1);
        s = admin("POST", path, ADMIN, &r);
        cr_assert_eq(s, 404, "redrive of a redriven dead letter: %ld %s", s, r.body);
        it_response_free(&r);
        json_decref(items);
        json_decref(recs);
        finish();
}

/* The admin endpoints on dead events: authorisation, paging, 404s, delete, and redrive of a
 * message that is still malformed (it becomes a dead letter again). */
Test(pipeline, admin_dead_letters)
{
        static const char *const bad[] = {"garbage-1", "{\"kind\":\"conversation.end\"}", "[1,2"};
        static const char hooks[] = "[hook \"h\"]\n"
                                    "on = conversation.end\n"
                                    "url = @URL@/fn\n"
                                    "secret = @SECRET@\n";
        _cleanup_free_ char *conf = NULL, *text = NULL;
        char path[128], q[64];
        size_t len = 0;
        long long ids[3];
        FILE *f;
        json_t *items, *page;
        struct it_response r;
        long s;

        start_kafka(1);
        start_sink(NULL);
        conf = make_config(bootstrap, true, "retry_base_ms = 100\n", hooks);
        start_daemon(conf);
        wait_ready();

        f = open_memstream(&text, &len);
        for (size_t i = 0; i < 3; i++)
                fprintf(f, "b%zu\t%s\n", i, bad[i]);
        fclose(f);
        produce(text);

        items = wait_dead_letters(3);
        wait_metric("ctxhookd_events_total", "result=\"dead\"", 3);
        wait_metric("ctxhookd_dead_letters", NULL, 3);
        for (size_t i = 0; i < 3; i++) {
                json_t *it = json_array_get(items, i);
                char src[64];

                ids[i] = json_integer_value(json_object_get(it, "id"));
                snprintf(src, sizeof(src), "kafka:" TOPIC "/0/%zu", i);
                cr_assert_str_eq(it_rec_str(it, "source"), src);
                cr_assert_str_eq(it_rec_str(it, "raw"), bad[i]);
                cr_assert(strlen(it_rec_str(it, "reason")) > 3, "no reason: %s",
                          json_dumps(it, JSON_COMPACT));
                if (i > 0)
                        cr_assert_gt(ids[i], ids[i - 1], "dead letters not listed by id");
        }
        cr_assert_str_neq(it_rec_str(json_array_get(items, 0), "reason"),
                          it_rec_str(json_array_get(items, 1), "reason"),
                          "two different faults, one reason");
        json_decref(items);

        /* Authorisation: every endpoint. */
        s = admin("GET", "/admin/dead-letters", NULL, &r);
        cr_assert_eq(s, 401, "no token: %ld %s", s, r.body);
        cr_assert(it_is_error_body(&r));
        it_response_free(&r);
        s = admin("GET", "/admin/dead-letters", "wrong-token-0123456789abcdef", &r);
        cr_assert_eq(s, 403, "wrong token: %ld %s", s, r.body);
        cr_assert(it_is_error_body(&r));
        it_response_free(&r);
        s = admin("GET", "/admin/dead-letters", ADMIN "x", &r);
        cr_assert_eq(s, 403, "token with a suffix: %ld %s", s, r.body);
        it_response_free(&r);
        {
                const char *hdr[] = {"Authorization: Basic " ADMIN, NULL};

                s = it_call_h(&d, "GET", "/admin/dead-letters", NULL, hdr, NULL, &r);
                cr_assert(s == 401 || s == 403, "Basic auth: %ld %s", s, r.body);
                it_response_free(&r);
        }
        snprintf(path, sizeof(path), "/admin/dead-letters/%lld", ids[0]);
        s = admin("DELETE", path, NULL, &r);
        cr_assert_eq(s, 401, "DELETE without a token: %ld", s);
        it_response_free(&r);
        s = admin("DELETE", path, "wrong-token-0123456789abcdef", &r);
        cr_assert_eq(s, 403, "DELETE with a wrong token: %ld", s);
        it_response_free(&r);
        items = dead_letters("");
        cr_assert_eq(json_array_size(items), 3, "an unauthorised DELETE deleted");
        json_decref(items);

        /* Paging. */
        page = dead_letters("?limit=2");
        cr_assert_eq(json_array_size(page), 2);
        cr_assert_eq(json_integer_value(json_object_get(json_array_get(page, 1), "id")), ids[1]);
        json_decref(page);
        snprintf(q, sizeof(q), "?limit=2&after=%lld", ids[1]);
        page = dead_letters(q);
        cr_assert_eq(json_array_size(page), 1);
        cr_assert_eq(json_integer_value(json_object_get(json_array_get(page, 0), "id")), ids[2]);
        json_decref(page);
        snprintf(q, sizeof(q), "?after=%lld", ids[2]);
        page = dead_letters(q);
        cr_assert_eq(json_array_size(page), 0);
        json_decref(page);
        s = admin("GET", "/admin/dead-letters?limit=0", ADMIN, &r);
        cr_assert_eq(s, 400, "limit=0: %ld", s);
        it_response_free(&r);
        s = admin("GET", "/admin/dead-letters?limit=abc", ADMIN, &r);
        cr_assert_eq(s, 400, "limit=abc: %ld", s);
        it_response_free(&r);

        /* Unknown ids. */
        s = admin("DELETE", "/admin/dead-letters/999999", ADMIN, &r);
        cr_assert_eq(s, 404, "DELETE unknown: %ld", s);
        cr_assert(it_is_error_body(&r));
        it_response_free(&r);
        s = admin("POST", "/admin/dead-letters/999999/redrive", ADMIN, &r);
        cr_assert_eq(s, 404, "redrive unknown: %ld", s);
        it_response_free(&r);
        s = admin("DELETE", "/admin/dead-letters/abc", ADMIN, &r);
        cr_assert_eq(s, 404, "DELETE abc: %ld", s);
        it_response_free(&r);

        /* Delete. */
        s = admin("DELETE", path, ADMIN, &r);
        cr_assert(s == 204 || s == 200, "DELETE: %ld %s", s, r.body);
        it_response_free(&r);
        items = dead_letters("");
        cr_assert_eq(json_array_size(items), 2);
        cr_assert_eq(json_integer_value(json_object_get(json_array_get(items, 0), "id")), ids[1]);
        json_decref(items);
        s = admin("DELETE", path, ADMIN, &r);
        cr_assert_eq(s, 404, "DELETE twice: %ld", s);
        it_response_free(&r);
        wait_metric("ctxhookd_dead_letters", NULL, 2);

        /* Redrive of a still malformed event: processed again, dead again, not lost. */
        snprintf(path, sizeof(path), "/admin/dead-letters/%lld/redrive", ids[2]);
        s = admin("POST", path, ADMIN, &r);
        cr_assert(s >= 200 && s < 300, "redrive: %ld %s", s, r.body);
        it_response_free(&r);
        items = dead_letters("");
        cr_assert_eq(json_array_size(items), 2, "%s", json_dumps(items, JSON_COMPACT));
        cr_assert_str_eq(it_rec_str(json_array_get(items, 1), "raw"), bad[2]);
        json_decref(items);

        items = sink_records();
        cr_assert_eq(json_array_size(items), 0, "a malformed event was delivered");
        json_decref(items);
        finish();
}

/* Per hook, one conversation's deliveries go out in event order, and while its first one is
 * held back by failures (429 + Retry-After: 2, twice) the later ones wait, and other
 * conversations, including events produced during the hold, keep flowing. */
Test(pipeline, conversation_order_under_retries)
{
        static const char *const opts[] = {"--fail-conversation", "ord-1:2", "--retry-after", "2",
                                           NULL};
        static const char hooks[] = "[hook \"h\"]\n"
                                    "on = conversation.end,conversation.routing,"
                                    "conversation.participants\n"
                                    "url = @URL@/fn\n"
                                    "secret = @SECRET@\n"
                                    "max_attempts = 20\n";
        static const char *const ord_kinds[] = {"conversation.routing", "conversation.participants",
                                                "conversation.routing", "conversation.end"};
        _cleanup_free_ char *conf = NULL, *text1 = NULL, *text2 = NULL;
        size_t len = 0, i;
        FILE *f;
        json_t *recs, *rec;
        long long first_ok_n = -1, last_fail_ms = 0, first_fail_ms = 0;
        int next_seq = 0, fails = 0;
        char conv[32];

        start_kafka(4);
        start_sink(opts);
        conf = make_config(bootstrap, false,
                           "retry_base_ms = 50\nretry_max_ms = 5000\nmax_in_flight = 8\n", hooks);
        start_daemon(conf);
        wait_ready();

        f = open_memstream(&text1, &len);
        for (int k = 0; k < 4; k++)
                plain_event(f, ord_kinds[k], "ord-1", k == 3 ? "SYSTEM" : NULL, 1764400500000LL + k,
                            k);
        for (int c = 1; c <= 4; c++) {
                snprintf(conv, sizeof(conv), "o-%d", c);
                plain_event(f, "conversation.routing", conv, NULL, 1764400500100LL, 0);
                plain_event(f, "conversation.end", conv, "SYSTEM", 1764400500101LL, 1);
        }
        fclose(f);
        produce(text1);

        /* ord-1 is now held; these are produced during the hold. */
        wait_conversation_record("ord-1");
        len = 0;
        f = open_memstream(&text2, &len);
        for (int c = 5; c <= 8; c++) {
                snprintf(conv, sizeof(conv), "o-%d", c);
                plain_event(f, "conversation.routing", conv, NULL, 1764400500200LL, 0);
                plain_event(f, "conversation.end", conv, "SYSTEM", 1764400500201LL, 1);
        }
        fclose(f);
        produce(text2);

        recs = wait_ok(4 + 16, WAIT_MS);
        wait_metric("ctxhookd_outbox_depth", NULL, 0);
        json_decref(recs);
        recs = sink_records();

        json_array_foreach(recs, i, rec)
        {
                long long seq = json_integer_value(
                    json_object_get(json_object_get(it_rec_payload(rec), "raw"), "seq"));

                assert_signed(rec);
                if (strcmp(rec_conv(rec), "ord-1") != 0)
                        continue;
                if (!it_rec_2xx(rec)) {
                        /* Only the first event is attempted while it fails. */
                        cr_assert_eq(seq, 0,
                                     "ord-1 event %lld was sent while event 0 was "
                                     "failing: %s",
                                     seq, json_dumps(recs, JSON_INDENT(1)));
                        cr_assert_eq(next_seq, 0);
                        if (fails++ == 0)
                                first_fail_ms = it_rec_int(rec, "received_ms");
                        last_fail_ms = it_rec_int(rec, "received_ms");
                        continue;
                }
                cr_assert_eq(seq, next_seq, "ord-1 delivered out of order: %s",
                             json_dumps(recs, JSON_INDENT(1)));
                cr_assert_str_eq(it_rec_str(it_rec_event(rec), "kind"), ord_kinds[seq]);
                if (next_seq == 0)
                        first_ok_n = it_rec_int(rec, "n");
                next_seq++;
        }
        cr_assert_eq(next_seq, 4, "ord-1: %d of 4 delivered", next_seq);
        cr_assert_eq(fails, 2, "the sink failed ord-1 %d times, want 2", fails);
        cr_assert_geq(last_fail_ms - first_fail_ms, 1900, "Retry-After: 2 not honoured");

        /* Every other conversation: both events, in order, all before ord-1 got through. */
        for (int c = 1; c <= 8; c++) {
                int expect = 0;

                snprintf(conv, sizeof(conv), "o-%d", c);
                json_array_foreach(recs, i, rec)
                {
                        if (strcmp(rec_conv(rec), conv) != 0)
                                continue;
                        cr_assert(it_rec_2xx(rec), "%s failed", conv);
                        cr_assert_eq(json_integer_value(json_object_get(
                                         json_object_get(it_rec_payload(rec), "raw"), "seq")),
                                     expect, "%s out of order", conv);
                        cr_assert_lt(it_rec_int(rec, "n"), first_ok_n,
                                     "%s waited for the held conversation ord-1: %s", conv,
                                     json_dumps(recs, JSON_INDENT(1)));
                        expect++;
                }
                cr_assert_eq(expect, 2, "%s: %d deliveries, want 2", conv, expect);
        }
        json_decref(recs);
        finish();
}

/* The embedded broker: brokers = embedded logs its address, and events produced there are
 * delivered. */
Test(pipeline, embedded_broker)
{
        _cleanup_free_ char *conf = NULL, *text = NULL;
        size_t len = 0;
        long long deadline;
        FILE *f;
        json_t *recs;

        start_sink(NULL);
        conf = make_config("embedded", false, "retry_base_ms = 100\n", hook_autoclose);
        start_daemon(conf);
        deadline = it_now_ms() + WAIT_MS;
        for (;;) {
                _cleanup_free_ char *log = it_daemon_log(&d);
                const char *p = strstr(log, "embedded Kafka broker");
                const char *at = p ? strstr(p, " at 127.0.0.1:") : NULL;

                if (at && strchr(at, '\n')) {
                        at += 4;
                        snprintf(bootstrap, sizeof(bootstrap), "%.*s", (int)strcspn(at, ", \n"),
                                 at);
                        break;
                }
                cr_assert_lt(it_now_ms(), deadline, "no 'embedded Kafka broker … at' line:\n%s",
                             log);
                it_sleep_ms(20);
        }
        wait_ready();
        f = open_memstream(&text, &len);
        fprintf(f, "k\t%s\n", samples[5]);
        fclose(f);
        produce(text);
        recs = wait_ok(1, WAIT_MS);
        cr_assert_eq(json_array_size(recs), 1);
        assert_signed(json_array_get(recs, 0));
        cr_assert_str_eq(rec_conv(json_array_get(recs, 0)), "sample-conv-6");
        json_decref(recs);
        {
                int code = -1;

                cr_assert_eq(it_daemon_stop(&d, SIGTERM, &code), 0);
                cr_assert_eq(code, 0, "the daemon exited %d", code);
                stop_sink();
        }
}

#define CRASH_EVENTS 3000
#define CRASH_CONVS  300

static void crash_chunk(int from, int to)
{
        _cleanup_free_ char *text = NULL;
        size_t len = 0;
        FILE *f = open_memstream(&text, &len);
        char conv[32];

        for (int i = from; i < to; i++) {
                snprintf(conv, sizeof(conv), "crash-%03d", i % CRASH_CONVS);
                plain_event(f, "conversation.end", conv, "SYSTEM", 1764400600000LL + i, i);
        }
        fclose(f);
        produce(text);
}

static void kill_and_restart(void)
{
        int code = -1;

        cr_assert_eq(it_daemon_stop(&d, SIGKILL, &code), 0);
        cr_assert_eq(code, 128 + SIGKILL);
        cr_assert_eq(it_daemon_start(&d, NULL, NULL), 0, "the daemon did not restart");
}

/* At-least-once across crashes: 3000 events of 300 conversations, the daemon SIGKILLed twice
 * while it works and restarted on the same database; in the end every event was delivered,
 * a repeat always with the same webhook-id. */
Test(pipeline, nothing_lost_when_killed)
{
        static const char hooks[] = "[hook \"h\"]\n"
                                    "on = conversation.end\n"
                                    "close_reason = SYSTEM\n"
                                    "url = @URL@/fn\n"
                                    "secret = @SECRET@\n";
        _cleanup_free_ char *conf = NULL;
        _cleanup_free_ char **ids = calloc(CRASH_EVENTS, sizeof(char *));
        long long deadline;
        size_t i, missing = 0, dups = 0, seen = 0;
        json_t *recs = NULL, *rec;

        cr_assert_not_null(ids);
        start_kafka(4);
        start_sink(NULL);
        conf = make_config(bootstrap, false,
                           "retry_base_ms = 100\nretry_max_ms = 1000\nmax_in_flight = 16\n", hooks);
        start_daemon(conf);

        crash_chunk(0, 1000);
        json_decref(wait_ok(300, 60000 * it_timeout_scale()));
        kill_and_restart();
        crash_chunk(1000, 2000);
        json_decref(wait_ok(1300, 60000 * it_timeout_scale()));
        kill_and_restart();
        crash_chunk(2000, CRASH_EVENTS);

        deadline = it_now_ms() + 90000 * it_timeout_scale();
        for (;;) {
                bool *got = calloc(CRASH_EVENTS, sizeof(bool));

                cr_assert_not_null(got);
                json_decref(recs);
                recs = sink_records();
                seen = 0;
                json_array_foreach(recs, i, rec)
                {
                        long long seq = json_integer_value(
                            json_object_get(json_object_get(it_rec_payload(rec), "raw"), "seq"));

                        if (it_rec_2xx(rec) && seq >= 0 && seq < CRASH_EVENTS && !got[seq]) {
                                got[seq] = true;
                                seen++;
                        }
                }
                free(got);
                if (seen == CRASH_EVENTS || it_now_ms() > deadline)
                        break;
                it_sleep_ms(250);
        }

        /* ids[seq]: the webhook-id of the event's first delivery (borrowed from recs). */
        json_array_foreach(recs, i, rec)
        {
                long long seq = json_integer_value(
                    json_object_get(json_object_get(it_rec_payload(rec), "raw"), "seq"));
                const char *wid = it_rec_str(rec, "webhook_id");

                cr_assert(json_is_true(json_object_get(rec, "signature_ok")), "bad signature");
                cr_assert(seq >= 0 && seq < CRASH_EVENTS, "unknown event delivered");
                if (!it_rec_2xx(rec))
                        continue;
                if (ids[seq]) {
                        dups++;
                        cr_assert_str_eq(ids[seq], wid,
                                         "event %lld delivered twice with two "
                                         "webhook-ids",
                                         seq);
                } else {
                        ids[seq] = (char *)wid;
                }
        }
        for (size_t k = 0; k < CRASH_EVENTS; k++)
                if (!ids[k])
                        missing++;
        if (missing)
                it_daemon_print_log_tail(&d, 6000);
        cr_assert_eq(missing, 0, "%zu of %d events never delivered", missing, CRASH_EVENTS);
        cr_log_info("crash test: %d events delivered, %zu repeats after the two SIGKILLs",
                    CRASH_EVENTS, dups);
        wait_metric("ctxhookd_outbox_depth", NULL, 0);
        json_decref(recs);
        finish();
}
