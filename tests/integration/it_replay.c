/* Integration tests of `ctxhookd replay` through the real binary: the samples of
 * tests/data/events (plain JSON lines), the same traffic as kcat -J records
 * (tests/data/replay/sample.kcatJ.jsonl) and from stdin, with the --dry-run output checked field
 * by field (context gathered from the store the daemon wrote); golden files passing and failing
 * (a missing, an extra and a changed delivery, named by hook and conversation); a live replay
 * into tests/tools/webhook_sink, which checks the signatures, repeated as a no-op; dead
 * deliveries making the exit status 1; malformed and over-long lines reported with their
 * line numbers; usage and input errors with their sysexits codes; --rate pacing. */
#include <criterion/criterion.h>
#include <errno.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ctxhookd/cleanup.h"
#include "support_daemon.h"
#include "support_sink.h"

#define ACCT "12345678"
#define HOOK "ends"

static struct it_daemon d;
static struct it_peer sink;
static char secret[128];
static char sink_out[IT_PATH_MAX];
static char samples[IT_PATH_MAX], kcat_samples[IT_PATH_MAX];

static void setup(void)
{
        const char *src = getenv("CTXHOOKD_SOURCE_DIR");

        cr_assert_not_null(src, "CTXHOOKD_SOURCE_DIR is not set");
        snprintf(samples, sizeof(samples), "%s/tests/data/events/sample.jsonl", src);
        snprintf(kcat_samples, sizeof(kcat_samples), "%s/tests/data/replay/sample.kcatJ.jsonl",
                 src);
        it_make_secret(secret);
}

static void teardown(void)
{
        it_peer_cleanup(&sink);
        it_daemon_cleanup(&d);
}

TestSuite(replay, .init = setup, .fini = teardown, .timeout = 60);

/* ---- helpers ---- */

/* The config: the hook of the samples' README (conversation.end closed by SYSTEM or TIMEOUT,
 * with the agentNotes context) posting to url; quick retries, two attempts. */
static void init(const char *url)
{
        _cleanup_free_ char *hook = NULL, *conf = NULL;

        cr_assert_gt(asprintf(&hook,
                              "[hook \"" HOOK "\"]\n"
                              "on = conversation.end\n"
                              "close_reason = SYSTEM,TIMEOUT\n"
                              "namespaces = agentNotes\n"
                              "url = %s\n"
                              "secret = @SECRET@\n"
                              "max_attempts = 2\n",
                              url),
                     0);
        const char *const sections[] = {"[kafka]\n"
                                        "account = " ACCT "\n"
                                        "max_message_bytes = 1024\n"
                                        "[delivery]\n"
                                        "retry_base_ms = 10\n"
                                        "retry_max_ms = 100\n",
                                        hook, NULL};

        conf = it_config_text(&(struct it_config){.sections = sections}, 0, secret);
        cr_assert_eq(it_daemon_init(&d, conf), 0);
}

/* `ctxhookd replay -c CONF args…` in the daemon's directory. */
static struct it_result replay(const char *const *args)
{
        const char *argv[24] = {"replay", "-c", d.conf};
        struct it_result r;
        size_t n = 3;

        for (size_t i = 0; args[i]; i++)
                argv[n++] = args[i];
        argv[n] = NULL;
        cr_assert_eq(it_run(d.dir, argv, NULL, &r), 0, "cannot run ctxhookd replay");
        return r;
}

static void path_in(char *buf, const char *name)
{
        snprintf(buf, IT_PATH_MAX, "%s/%s", d.dir, name);
}

/* The lines of text as JSON values (an array); fails on a line that is not JSON. */
static json_t *json_lines(const char *text)
{
        json_t *a = json_array();

        for (const char *p = text; *p;) {
                const char *nl = strchr(p, '\n');
                size_t len = nl ? (size_t)(nl - p) : strlen(p);
                json_error_t e;
                json_t *j;

                if (len > 0) {
                        j = json_loadb(p, len, 0, &e);
                        cr_assert_not_null(j, "output line is not JSON (%s): %.*s", e.text,
                                           (int)len, p);
                        json_array_append_new(a, j);
                }
                p += len + (nl ? 1 : 0);
        }
        return a;
}

static const char *str_at(json_t *j, const char *path)
{
        json_t *v = j;
        char buf[256], *save = NULL;

        snprintf(buf, sizeof(buf), "%s", path);
        for (char *k = strtok_r(buf, ".", &save); k && v; k = strtok_r(NULL, ".", &save))
                v = json_object_get(v, k);
        return json_string_value(v);
}

static json_t *at(json_t *j, const char *path)
{
        char buf[256], *save = NULL;

        snprintf(buf, sizeof(buf), "%s", path);
        for (char *k = strtok_r(buf, ".", &save); k && j; k = strtok_r(NULL, ".", &save))
                j = json_object_get(j, k);
        return j;
}

/* The sample line n (1-based) of tests/data/events/sample.jsonl, parsed. */
static json_t *sample_line(int n)
{
        _cleanup_free_ char *text = it_read_file(samples, NULL);
        json_t *lines, *j;
        const char *p = text;

        cr_assert_not_null(text);
        for (int i = 1; i < n; i++)
                p = strchr(p, '\n') + 1;
        lines = json_loadb(p, strcspn(p, "\n"), 0, NULL);
        cr_assert_not_null(lines, "sample line %d is not JSON", n);
        if (n == 5) { /* the notification: its first change is the event's raw */
                j = json_incref(json_array_get(at(lines, "body.changes"), 0));
                json_decref(lines);
                return j;
        }
        return lines;
}

/* Checks the dry-run deliveries of the samples: exactly sample-conv-1, -4 and -6, every
 * field. ids are the expected event ids; session1 is the agentNotes session of
 * sample-conv-1, ns the namespace properties (JSON texts). */
static void check_sample_deliveries(json_t *out, const char *const ids[3], const char *url,
                                    const char *session1, const char *ns)
{
        static const char *const convs[] = {"sample-conv-1", "sample-conv-4", "sample-conv-6"};
        static const char *const reasons[] = {"SYSTEM", "TIMEOUT", "SYSTEM"};
        static const long long times[] = {1764400000201LL, 1764400005000LL, 1764400000006LL};
        static const int lines[] = {1, 5, 6};
        _cleanup_free_ char *shown = json_dumps(out, JSON_INDENT(1));

        cr_assert_eq(json_array_size(out), 3, "want 3 deliveries: %s", shown);
        for (size_t i = 0; i < 3; i++) {
                json_t *x = json_array_get(out, i), *raw = sample_line(lines[i]);
                json_t *want_ctx =
                    json_pack("{s:{s:o, s:o}}", "agentNotes", "namespace", json_loads(ns, 0, NULL),
                              "session", json_loads(i == 0 ? session1 : "{}", 0, NULL));

                cr_assert_eq(json_object_size(x), 3, "not {hook,url,body}: %s", shown);
                cr_assert_str_eq(str_at(x, "hook"), HOOK);
                cr_assert_str_eq(str_at(x, "url"), url);
                cr_assert(json_is_integer(at(x, "body.timestamp")), "%s", shown);
                cr_assert(json_is_array(at(x, "body.headers")), "%s", shown);
                cr_assert_str_eq(str_at(x, "body.payload.hook"), HOOK);
                cr_assert_str_eq(str_at(x, "body.payload.event.id"), ids[i]);
                cr_assert_str_eq(str_at(x, "body.payload.event.kind"), "conversation.end");
                cr_assert_str_eq(str_at(x, "body.payload.event.accountId"), ACCT);
                cr_assert_str_eq(str_at(x, "body.payload.event.conversationId"), convs[i]);
                cr_assert_str_eq(str_at(x, "body.payload.event.closeReason"), reasons[i]);
                cr_assert_eq(json_integer_value(at(x, "body.payload.event.time")), times[i]);
                cr_assert(json_equal(at(x, "body.payload.raw"), raw), "raw of %s: %s", convs[i],
                          shown);
                cr_assert(json_equal(at(x, "body.payload.context"), want_ctx), "context of %s: %s",
                          convs[i], shown);
                json_decref(raw);
                json_decref(want_ctx);
        }
}

static const char *const plain_ids[3] = {"replay:sample.jsonl:1", "replay:sample.jsonl:5",
                                         "replay:sample.jsonl:6"};
#define DUMMY_URL "http://127.0.0.1:9/hook"

/* ---- dry run ---- */

Test(replay, dry_run_of_the_samples)
{
        struct it_result r;
        json_t *out;

        init(DUMMY_URL);
        r = replay((const char *const[]){"--dry-run", samples, NULL});
        cr_assert_eq(r.code, 0, "exit %d: %s", r.code, r.err);
        out = json_lines(r.out);
        check_sample_deliveries(out, plain_ids, DUMMY_URL, "{}", "{}");
        cr_assert(strstr(r.err, "sample.jsonl:4: dead letter: not valid JSON"),
                  "malformed line 4 not reported: %s", r.err);
        cr_assert(strstr(r.err, "6 lines, 6 events, 3 deliveries (dry run), 3 ignored, 1 dead "
                                "letters"),
                  "summary: %s", r.err);
        /* Nothing written: not even the database was created. */
        cr_assert_neq(access(d.db, F_OK), 0, "--dry-run created %s", d.db);
        json_decref(out);
        it_result_free(&r);
}

Test(replay, dry_run_of_kcat_records_keeps_the_kafka_event_ids)
{
        static const char *const ids[3] = {"kafka:conversation-events/0/0",
                                           "kafka:conversation-events/0/4",
                                           "kafka:conversation-events/0/5"};
        struct it_result r;
        json_t *out;

        init(DUMMY_URL);
        r = replay((const char *const[]){"--dry-run", kcat_samples, NULL});
        cr_assert_eq(r.code, 0, "exit %d: %s", r.code, r.err);
        out = json_lines(r.out);
        check_sample_deliveries(out, ids, DUMMY_URL, "{}", "{}");
        cr_assert(strstr(r.err, "sample.kcatJ.jsonl:4: dead letter: not valid JSON"),
                  "malformed payload of line 4 not reported: %s", r.err);
        json_decref(out);
        it_result_free(&r);
}

Test(replay, dry_run_from_stdin_and_several_logs_in_order)
{
        _cleanup_free_ char *cmd = NULL;
        const char *bin = getenv("CTXHOOKD_BIN");
        static const char *const ids[3] = {"replay:stdin:1", "replay:stdin:5", "replay:stdin:6"};
        struct it_result r;
        json_t *out, *tail;

        cr_assert_not_null(bin);
        init(DUMMY_URL);
        cr_assert_gt(asprintf(&cmd, "'%s' replay -c '%s' --dry-run - '%s' < '%s'", bin, d.conf,
                              kcat_samples, samples),
                     0);
        cr_assert_eq(it_run_prog(d.dir, (const char *const[]){"/bin/sh", "-c", cmd, NULL},
                                 IT_CLI_TIMEOUT_MS, &r),
                     0);
        cr_assert_eq(r.code, 0, "exit %d: %s", r.code, r.err);
        out = json_lines(r.out);
        cr_assert_eq(json_array_size(out), 6, "stdin then the kcat log: %s", r.out);
        tail = json_array();
        for (size_t i = 3; i < 6; i++)
                json_array_append(tail, json_array_get(out, i));
        while (json_array_size(out) > 3)
                json_array_remove(out, 3);
        check_sample_deliveries(out, ids, DUMMY_URL, "{}", "{}");
        cr_assert_str_eq(str_at(json_array_get(tail, 0), "body.payload.event.id"),
                         "kafka:conversation-events/0/0");
        cr_assert(strstr(r.err, "stdin:4: dead letter"), "%s", r.err);
        cr_assert(strstr(r.err, "12 lines, 12 events, 6 deliveries"), "%s", r.err);
        json_decref(out);
        json_decref(tail);
        it_result_free(&r);
}

Test(replay, dry_run_gathers_context_from_the_store)
{
        _cleanup_free_ char *key_hdr = NULL;
        char key[257];
        struct it_result r;
        json_t *out;
        int code = -1;

        init(DUMMY_URL);
        cr_assert_eq(it_apikey_create(&d, ACCT, key), 0);
        cr_assert_eq(it_daemon_start(&d, NULL, NULL), 0);
        cr_assert_eq(it_call(&d, "PATCH",
                             "/v1/account/" ACCT "/agentNotes/sample-conv-1/properties", key,
                             "{\"note\":\"call back\",\"n\":2}", NULL),
                     204);
        cr_assert_eq(it_call(&d, "PATCH", "/v1/account/" ACCT "/agentNotes/properties", key,
                             "{\"team\":\"billing\"}", NULL),
                     204);
        cr_assert_eq(it_daemon_stop(&d, SIGTERM, &code), 0);
        cr_assert_eq(code, 0);

        r = replay((const char *const[]){"--dry-run", samples, NULL});
        cr_assert_eq(r.code, 0, "exit %d: %s", r.code, r.err);
        out = json_lines(r.out);
        check_sample_deliveries(out, plain_ids, DUMMY_URL, "{\"note\":\"call back\",\"n\":2}",
                                "{\"team\":\"billing\"}");
        json_decref(out);
        it_result_free(&r);
}

/* ---- golden files ---- */

/* Writes the dry-run output of the samples to dir/name and returns it. */
static char *make_golden(const char *name, char path[IT_PATH_MAX])
{
        struct it_result r = replay((const char *const[]){"--dry-run", samples, NULL});
        char *text;

        cr_assert_eq(r.code, 0, "%s", r.err);
        path_in(path, name);
        cr_assert_eq(it_write_file(path, r.out), 0);
        text = strdup(r.out);
        it_result_free(&r);
        return text;
}

/* text with its n-th line (1-based) removed or replaced by repl (NULL: removed). */
static char *edit_line(const char *text, int n, const char *repl)
{
        const char *p = text, *e;
        char *out = NULL;

        for (int i = 1; i < n; i++)
                p = strchr(p, '\n') + 1;
        e = strchr(p, '\n') + 1;
        cr_assert_gt(asprintf(&out, "%.*s%s%s", (int)(p - text), text, repl ? repl : "", e), 0);
        return out;
}

Test(replay, golden_pass_ignores_timestamps)
{
        _cleanup_free_ char *golden = NULL, *edited = NULL;
        char path[IT_PATH_MAX];
        struct it_result r;
        char *p;

        init(DUMMY_URL);
        golden = make_golden("golden.jsonl", path);
        /* A golden file made on another day: other timestamps. */
        edited = strdup(golden);
        for (p = edited; (p = strstr(p, "\"timestamp\":")); p += 12)
                memcpy(p + 12, "1000000000000", 13);
        cr_assert_eq(it_write_file(path, edited), 0);
        r = replay((const char *const[]){"--dry-run", "--expect", path, samples, NULL});
        cr_assert_eq(r.code, 0, "exit %d: %s", r.code, r.err);
        cr_assert(strstr(r.err, "0 differences (3 expected, 3 made)"), "%s", r.err);
        it_result_free(&r);
}

Test(replay, golden_missing_delivery)
{
        _cleanup_free_ char *golden = NULL, *log = NULL, *short_log = NULL;
        char path[IT_PATH_MAX], log_path[IT_PATH_MAX];
        struct it_result r;

        init(DUMMY_URL);
        golden = make_golden("golden.jsonl", path);
        /* The same log without its last line (sample-conv-6), under the same name. */
        log = it_read_file(samples, NULL);
        short_log = edit_line(log, 6, NULL);
        cr_assert_eq(mkdir(strcat(strcpy(log_path, d.dir), "/b"), 0700), 0);
        strcat(log_path, "/sample.jsonl");
        cr_assert_eq(it_write_file(log_path, short_log), 0);
        r = replay((const char *const[]){"--dry-run", "--expect", path, log_path, NULL});
        cr_assert_eq(r.code, 1, "exit %d: %s", r.code, r.err);
        cr_assert(strstr(r.err, "missing: hook " HOOK ", conversation sample-conv-6 (event "
                                "replay:sample.jsonl:6)"),
                  "%s", r.err);
        cr_assert(strstr(r.err, "1 differences"), "%s", r.err);
        it_result_free(&r);
}

Test(replay, golden_extra_delivery)
{
        _cleanup_free_ char *golden = NULL, *fewer = NULL;
        char path[IT_PATH_MAX];
        struct it_result r;

        init(DUMMY_URL);
        golden = make_golden("golden.jsonl", path);
        fewer = edit_line(golden, 2, NULL); /* sample-conv-4 */
        cr_assert_eq(it_write_file(path, fewer), 0);
        r = replay((const char *const[]){"--dry-run", "--expect", path, samples, NULL});
        cr_assert_eq(r.code, 1, "exit %d: %s", r.code, r.err);
        cr_assert(strstr(r.err, "extra: hook " HOOK ", conversation sample-conv-4"), "%s", r.err);
        cr_assert(strstr(r.err, "1 differences (2 expected, 3 made)"), "%s", r.err);
        cr_assert_null(strstr(r.err, "missing:"), "%s", r.err);
        it_result_free(&r);
}

Test(replay, golden_changed_delivery_names_the_path)
{
        _cleanup_free_ char *golden = NULL, *changed = NULL;
        char path[IT_PATH_MAX];
        struct it_result r;
        char *p;

        init(DUMMY_URL);
        golden = make_golden("golden.jsonl", path);
        changed = strdup(golden);
        /* sample-conv-1's raw closeReason, in the first line */
        p = strstr(changed, "\"end\":{\"closeReason\":\"SYSTEM\"}");
        cr_assert_not_null(p);
        memcpy(p + 22, "SYSTEX", 6);
        cr_assert_eq(it_write_file(path, changed), 0);
        r = replay((const char *const[]){"--dry-run", "--expect", path, samples, NULL});
        cr_assert_eq(r.code, 1, "exit %d: %s", r.code, r.err);
        cr_assert(strstr(r.err, "changed: hook " HOOK ", conversation sample-conv-1 (event "
                                "replay:sample.jsonl:1): body.payload.raw.end.closeReason "
                                "differs"),
                  "%s", r.err);
        cr_assert(strstr(r.err, "1 differences"), "%s", r.err);
        it_result_free(&r);
}

Test(replay, golden_file_errors)
{
        char path[IT_PATH_MAX];
        struct it_result r;

        init(DUMMY_URL);
        path_in(path, "nothere.jsonl");
        r = replay((const char *const[]){"--dry-run", "--expect", path, samples, NULL});
        cr_assert_eq(r.code, 66, "exit %d: %s", r.code, r.err);
        cr_assert(strstr(r.err, "nothere.jsonl"), "%s", r.err);
        it_result_free(&r);
        path_in(path, "bad.jsonl");
        cr_assert_eq(it_write_file(path, "{\"hook\":\"x\"}\n"), 0);
        r = replay((const char *const[]){"--dry-run", "--expect", path, samples, NULL});
        cr_assert_eq(r.code, 65, "exit %d: %s", r.code, r.err);
        cr_assert(strstr(r.err, "bad.jsonl:1:"), "%s", r.err);
        it_result_free(&r);
}

/* ---- live ---- */

static void start_sink(const char *dir, const char *const *extra, char url[128])
{
        unsigned port;

        cr_assert_eq(it_sink_start(&sink, dir, sink_out, secret, 0, extra, &port), 0);
        snprintf(url, 128, "http://127.0.0.1:%u/hook", port);
}

static json_t *sink_records(void)
{
        json_t *recs = it_sink_records(sink_out);

        cr_assert_not_null(recs, "a line of the sink's file is not JSON");
        return recs;
}

Test(replay, live_replay_delivers_signed_and_repeats_as_a_no_op)
{
        static const char *const convs[] = {"sample-conv-1", "sample-conv-4", "sample-conv-6"};
        char url[128], dir[IT_DIR_MAX], golden[IT_PATH_MAX];
        _cleanup_free_ char *gtext = NULL;
        struct it_result r;
        json_t *recs;

        /* The sink runs first (its port goes into the config), in a directory of its own. */
        cr_assert_eq(it_tmpdir(dir), 0);
        snprintf(sink_out, sizeof(sink_out), "%s/sink.jsonl", dir);
        start_sink(dir, NULL, url);
        init(url);
        gtext = make_golden("golden.jsonl", golden);

        r = replay((const char *const[]){"--expect", golden, samples, NULL});
        cr_assert_eq(r.code, 0, "exit %d: %s", r.code, r.err);
        cr_assert(strstr(r.err, "3 deliveries, 3 ignored, 1 dead letters, 0 duplicates, 0 dead "
                                "deliveries"),
                  "%s", r.err);
        cr_assert(strstr(r.err, "0 differences (3 expected, 3 made)"), "%s", r.err);
        it_result_free(&r);
        /* Replay waited for the deliveries: they are all in the sink's file now. */
        recs = sink_records();
        cr_assert_eq(json_array_size(recs), 3, "sink got %zu", json_array_size(recs));
        for (size_t i = 0; i < 3; i++) {
                json_t *rec = json_array_get(recs, i);
                bool found = false;

                cr_assert(json_is_true(json_object_get(rec, "signature_ok")), "bad signature");
                cr_assert_str_eq(str_at(rec, "method"), "POST");
                cr_assert_eq(strncmp(str_at(rec, "webhook_id"), "msg_", 4), 0);
                cr_assert_str_eq(str_at(rec, "body.payload.hook"), HOOK);
                for (size_t j = 0; j < 3; j++)
                        found |=
                            strcmp(str_at(rec, "body.payload.event.conversationId"), convs[j]) == 0;
                cr_assert(found, "unexpected conversation %s",
                          str_at(rec, "body.payload.event.conversationId"));
        }
        json_decref(recs);

        /* Again on the same database: every line is a duplicate; nothing more is sent. */
        r = replay((const char *const[]){samples, NULL});
        cr_assert_eq(r.code, 0, "exit %d: %s", r.code, r.err);
        cr_assert(strstr(r.err, "0 deliveries, 0 ignored, 0 dead letters, 6 duplicates"), "%s",
                  r.err);
        it_result_free(&r);
        it_sleep_ms(200);
        recs = sink_records();
        cr_assert_eq(json_array_size(recs), 3, "a repeated replay sent again");
        json_decref(recs);
        it_peer_cleanup(&sink);
        it_rmtree(dir);
}

Test(replay, dead_deliveries_make_the_exit_status_1)
{
        char url[128], dir[IT_DIR_MAX];
        struct it_result r;
        json_t *recs;

        cr_assert_eq(it_tmpdir(dir), 0);
        snprintf(sink_out, sizeof(sink_out), "%s/sink.jsonl", dir);
        start_sink(dir, (const char *const[]){"--status", "410", NULL}, url);
        init(url);
        r = replay((const char *const[]){samples, NULL});
        cr_assert_eq(r.code, 1, "exit %d: %s", r.code, r.err);
        cr_assert(strstr(r.err, "3 dead deliveries"), "%s", r.err);
        cr_assert(strstr(r.err, "dead delivery " HOOK "/msg_"), "%s", r.err);
        it_result_free(&r);
        recs = sink_records();
        cr_assert_eq(json_array_size(recs), 3, "410 is final: one attempt each");
        json_decref(recs);
        it_peer_cleanup(&sink);
        it_rmtree(dir);
}

/* ---- malformed input, usage ---- */

Test(replay, malformed_lines_are_counted_with_line_numbers)
{
        _cleanup_free_ char *text = NULL, *big = malloc(3000);
        char path[IT_PATH_MAX], want[256];
        struct it_result r;
        json_t *out;

        init(DUMMY_URL);
        cr_assert_not_null(big);
        memset(big, 'x', 2999);
        big[2999] = '\0';
        cr_assert_gt(
            asprintf(&text,
                     "{\"kind\":\"conversation.end\",\"conversationId\":\"c1\","
                     "\"closeReason\":\"SYSTEM\"}\r\n"
                     "{\n"
                     "\n"
                     "[1,2]\r\n"
                     "   \n"
                     "{\"kind\":\"conversation.end\",\"conversationId\":\"c2\",\"note\":\"%s\"}\n"
                     "{\"kind\":\"conversation.end\",\"conversationId\":\"%s%s%s\"}\n"
                     "{\"kind\":\"conversation.end\",\"conversationId\":\"c3\","
                     "\"closeReason\":\"TIMEOUT\"}",
                     big, big, big, big),
            0);
        path_in(path, "bad.jsonl");
        cr_assert_eq(it_write_file(path, text), 0);
        r = replay((const char *const[]){"--dry-run", path, NULL});
        cr_assert_eq(r.code, 0, "exit %d: %s", r.code, r.err);
        out = json_lines(r.out);
        cr_assert_eq(json_array_size(out), 2, "%s", r.out);
        cr_assert_str_eq(str_at(json_array_get(out, 0), "body.payload.event.conversationId"), "c1");
        cr_assert_str_eq(str_at(json_array_get(out, 1), "body.payload.event.conversationId"), "c3");
        cr_assert_str_eq(str_at(json_array_get(out, 1), "body.payload.event.id"),
                         "replay:bad.jsonl:8");
        cr_assert(strstr(r.err, "bad.jsonl:2: dead letter: not valid JSON"), "%s", r.err);
        cr_assert(strstr(r.err, "bad.jsonl:4: dead letter: "), "%s", r.err);
        cr_assert(strstr(r.err, "bad.jsonl:6: dead letter: message of"), "over 1024: %s", r.err);
        /* 2 × 1024 + 4096 bytes are read (kcat escaping); this line is longer. */
        snprintf(want, sizeof(want),
                 "bad.jsonl:7: dead letter: line of %zu bytes is over the limit",
                 strlen("{\"kind\":\"conversation.end\",\"conversationId\":\"\"}") + 3 * 2999);
        cr_assert(strstr(r.err, want), "%s", r.err);
        cr_assert(strstr(r.err, "6 lines, 2 events, 2 deliveries (dry run), 0 ignored, 4 dead "
                                "letters"),
                  "%s", r.err);
        json_decref(out);
        it_result_free(&r);
}

Test(replay, usage_and_input_errors)
{
        char missing[IT_PATH_MAX];
        struct it_result r;

        init(DUMMY_URL);
        path_in(missing, "no-such.jsonl");
        r = replay((const char *const[]){"--dry-run", samples, missing, NULL});
        cr_assert_eq(r.code, 66, "exit %d: %s", r.code, r.err);
        cr_assert(strstr(r.err, "no-such.jsonl"), "LOG not named: %s", r.err);
        cr_assert_eq(r.out_len, 0, "replayed before checking every LOG: %s", r.out);
        it_result_free(&r);
        r = replay((const char *const[]){"--dry-run", NULL});
        cr_assert_eq(r.code, 64, "no LOG: exit %d", r.code);
        it_result_free(&r);
        r = replay((const char *const[]){"--rate", "0", samples, NULL});
        cr_assert_eq(r.code, 64, "--rate 0: exit %d", r.code);
        it_result_free(&r);
        r = replay((const char *const[]){"--dry-run", "-", "-", NULL});
        cr_assert_eq(r.code, 64, "stdin twice: exit %d", r.code);
        it_result_free(&r);
        cr_assert_eq(it_run(d.dir, (const char *const[]){"run", "--dry-run", NULL}, NULL, &r), 0);
        cr_assert_eq(r.code, 64, "--dry-run without replay: exit %d", r.code);
        it_result_free(&r);
}

Test(replay, rate_paces_the_events)
{
        _cleanup_free_ char *text = NULL;
        char path[IT_PATH_MAX];
        struct it_result r;
        long long t0;
        FILE *f;
        size_t len = 0;

        init(DUMMY_URL);
        f = open_memstream(&text, &len);
        for (int i = 0; i < 10; i++)
                fprintf(f, "{\"kind\":\"conversation.end\",\"conversationId\":\"c%d\"}\n", i);
        fclose(f);
        path_in(path, "ten.jsonl");
        cr_assert_eq(it_write_file(path, text), 0);
        t0 = it_now_ms();
        r = replay((const char *const[]){"--dry-run", "--rate", "20", path, NULL});
        /* 10 events at 20/s: the last is due 450 ms after the first. */
        cr_assert_geq(it_now_ms() - t0, 450, "10 events at 20/s took %lld ms", it_now_ms() - t0);
        cr_assert_eq(r.code, 0, "%s", r.err);
        cr_assert(strstr(r.err, "10 lines, 10 events"), "%s", r.err);
        it_result_free(&r);
}
