/* A PostgreSQL server lost under a running daemon, and back: ctxhookd (backend = postgresql)
 * on a cluster of this test's own (tools/pg start; the shared fixture cluster is never stopped),
 * consuming a mock Kafka cluster and delivering to a webhook sink that takes SINK_DELAY_MS to
 * answer. With a note written and the first events' calls in flight, the server is halted
 * (tools/pg halt), so that their success cannot be recorded: the Context API answers 503 with a
 * JSON message, /readyz 503 with {"status":"unavailable"} and the database error naming the
 * server, STATUS= and ctxhookd_store_unavailable say so, the log says consumption and delivery
 * paused, once each, and stays quiet; events produced meanwhile wait in Kafka. Once the server
 * is resumed on the same port (tools/pg resume), the daemon recovers by itself within seconds:
 * /readyz 200, the note still there, the log says consumption resumed, and every event (before,
 * during and after the outage) is delivered, at least once, each with one webhook-id of its
 * own: the calls whose outcome was lost go out again, with the same webhook-id, once their
 * lease runs out. */
#include <criterion/criterion.h>
#include <criterion/logging.h>
#include <errno.h>
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

#define ACCT  "12345678"
#define TOPIC "conversation-events"
#define GROUP "it-pgloss"
#define NOTE  "/v1/account/" ACCT "/agentNotes/c-1/properties/note"
#define CONVS 10
/* Events produced before, during and after the outage: one per conversation each time. */
#define N_BEFORE 10
#define N_DURING 10
#define N_AFTER  10
/* The sink takes SINK_DELAY_MS to take a call (record it and answer), and a call may take
 * HOOK_TIMEOUT_MS (its claim's lease is that plus 10 s): the server is halted IN_FLIGHT_MS after
 * the first events are queued, their calls out, and halting takes far less than the rest, so
 * those calls finish during the outage. */
#define SINK_DELAY_MS   (4000 * it_timeout_scale())
#define IN_FLIGHT_MS    (1000 * it_timeout_scale())
#define HOOK_TIMEOUT_MS (8000 * it_timeout_scale())
#define N_ALL           (N_BEFORE + N_DURING + N_AFTER)

#define WAIT_MS    (60000 * it_timeout_scale())
#define RECOVER_MS (10000 * it_timeout_scale()) /* "within a few seconds", with room */

static struct it_daemon d;
static struct it_peer kafka, sink;
static struct it_notify notify;
static bool notifying;
static char dir[IT_DIR_MAX];
static char pg_dir[IT_PATH_MAX];
static char pg_url[512];
static char sink_out[IT_PATH_MAX];
static char secret[128];
static char bootstrap[256];
static unsigned sink_port;

/* tools/pg CMD pg_dir; the test fails unless it exits 0. Its stdout (the URL for start) goes to
 * out. */
static void pg_tool(const char *cmd, char *out, size_t size)
{
        const char *src = getenv("CTXHOOKD_SOURCE_DIR");
        char tool[IT_PATH_MAX];
        const char *argv[] = {tool, cmd, pg_dir, NULL};
        struct it_result r;

        cr_assert_not_null(src, "CTXHOOKD_SOURCE_DIR is not set (run through ctest)");
        snprintf(tool, sizeof(tool), "%s/tools/pg", src);
        cr_assert_eq(it_run_prog(NULL, argv, 120000, &r), 0, "cannot run %s", tool);
        cr_assert_eq(r.code, 0, "tools/pg %s %s exited %d:\n%s", cmd, pg_dir, r.code, r.err);
        if (out)
                snprintf(out, size, "%.*s", (int)strcspn(r.out, "\n"), r.out);
        it_result_free(&r);
}

static void setup(void)
{
        cr_assert_eq(it_tmpdir(dir), 0);
        snprintf(pg_dir, sizeof(pg_dir), "%s/pg", dir);
        snprintf(sink_out, sizeof(sink_out), "%s/sink.jsonl", dir);
        it_make_secret(secret);
        pg_url[0] = '\0';
}

static void teardown(void)
{
        it_daemon_cleanup(&d);
        it_peer_cleanup(&sink);
        it_peer_cleanup(&kafka);
        if (notifying)
                it_notify_stop(&notify);
        notifying = false;
        /* Stops the server (halted or not) and removes its data. */
        if (pg_url[0]) {
                const char *src = getenv("CTXHOOKD_SOURCE_DIR");
                char tool[IT_PATH_MAX];
                const char *argv[] = {tool, "stop", pg_dir, NULL};
                struct it_result r;

                snprintf(tool, sizeof(tool), "%s/tools/pg", src ? src : ".");
                if (it_run_prog(NULL, argv, 120000, &r) == 0)
                        it_result_free(&r);
        }
        it_rmtree(dir);
}

TestSuite(pgloss, .init = setup, .fini = teardown, .timeout = 300);

/* Events seq from..to-1, of conversations "c-%02d" (seq % CONVS), keyed by conversation. */
static void produce(int from, int to)
{
        cr_assert_eq(it_kcat_produce_ends(dir, bootstrap, TOPIC, ACCT, "c-", 2, CONVS, from, to), 0,
                     "kcat could not produce");
}

/* A record of an event with seq < limit (arg: the limit). */
static bool seq_below(json_t *rec, const void *arg)
{
        long long s = it_rec_seq(rec);

        return it_rec_ok(rec) && s >= 0 && s < *(const int *)arg;
}

/* How many distinct events below limit the sink got, answered 2xx and well signed. */
static int distinct_delivered(json_t *recs, int limit)
{
        bool seen[N_ALL] = {false};
        int n = 0;

        for (size_t i = 0; i < json_array_size(recs); i++) {
                json_t *rec = json_array_get(recs, i);
                long long s = it_rec_seq(rec);

                if (it_rec_ok(rec) && s >= 0 && s < limit && !seen[s]) {
                        seen[s] = true;
                        n++;
                }
        }
        return n;
}

/* Waits until every event below limit was delivered; returns all records. */
static json_t *wait_delivered(int limit)
{
        long long deadline = it_now_ms() + WAIT_MS;
        json_t *recs;

        for (;;) {
                recs = it_sink_records(sink_out);
                cr_assert_not_null(recs, "the sink's file is not JSON lines");
                if (distinct_delivered(recs, limit) == limit)
                        return recs;
                if (it_now_ms() > deadline)
                        break;
                json_decref(recs);
                it_sleep_ms(100);
        }
        it_daemon_print_log_tail(&d, 6000);
        cr_assert_fail("%d of the %d events delivered", distinct_delivered(recs, limit), limit);
        return NULL;
}

/* How many lines of text contain needle. */
static int count_lines(const char *text, const char *needle)
{
        int n = 0;

        for (const char *p = text; *p;) {
                size_t len = strcspn(p, "\n");
                const char *hit = strstr(p, needle);

                if (hit && hit < p + len)
                        n++;
                p += len + (p[len] ? 1 : 0);
        }
        return n;
}

/* Waits until the daemon's log has a line with needle. */
static void wait_log(const char *needle, int timeout_ms)
{
        long long deadline = it_now_ms() + timeout_ms;

        for (;;) {
                _cleanup_free_ char *log = it_daemon_log(&d);

                if (strstr(log, needle))
                        return;
                if (it_now_ms() > deadline)
                        break;
                it_sleep_ms(50);
        }
        it_daemon_print_log_tail(&d, 6000);
        cr_assert_fail("the log never said \"%s\"", needle);
}

/* The value of the sample name{labels} (NULL-terminated name, value… pairs; NULL: none) in
 * /metrics. */
static double metric_l(const char *name, const char *const *labels)
{
        struct prom_exposition *e = NULL;
        const struct prom_sample *s;
        struct it_response r;
        char why[256];
        double v;

        cr_assert_eq(it_call(&d, "GET", "/metrics", NULL, NULL, &r), 200, "GET /metrics");
        cr_assert_eq(prom_parse(r.body, r.body_len, &e, why, sizeof(why)), 0, "/metrics: %s", why);
        s = prom_sample(e, name, labels);
        cr_assert_not_null(s, "no sample %s in:\n%s", name, r.body);
        v = s->value;
        prom_free(e);
        it_response_free(&r);
        return v;
}

static double metric(const char *name)
{
        return metric_l(name, NULL);
}

Test(pgloss, lost_database_pauses_everything_and_recovers_by_itself)
{
        _cleanup_free_ char *conf = NULL, *consumer = NULL, *store = NULL, *log = NULL;
        char key[257], port[16], env_notify[IT_PATH_MAX + 32];
        const char *env[] = {env_notify, NULL};
        const char *kafka_args[] = {"--topic", TOPIC, "--partitions", "4", NULL};
        const char *pg_port;
        struct it_response r;
        json_t *body, *recs;
        off_t log_at_halt;
        long long t_resume;
        long status_down;
        size_t n_before;
        int code = -1, before = N_BEFORE, during = N_BEFORE + N_DURING;

        /* The peers: a PostgreSQL server of this test's own, Kafka, the webhook receiver. */
        pg_tool("start", pg_url, sizeof(pg_url));
        cr_assert(strncmp(pg_url, "postgresql://", 13) == 0, "tools/pg start printed '%s'", pg_url);
        pg_port = strrchr(pg_url, ':');
        cr_assert_not_null(pg_port);
        snprintf(port, sizeof(port), "%.*s", (int)strcspn(pg_port + 1, "/"), pg_port + 1);
        cr_assert_eq(it_peer_start(&kafka, dir, "mock_kafka", kafka_args), 0);
        snprintf(bootstrap, sizeof(bootstrap), "%s", kafka.line);
        {
                char delay[16];
                const char *sink_args[] = {"--delay-ms", delay, NULL};

                snprintf(delay, sizeof(delay), "%d", SINK_DELAY_MS);
                cr_assert_eq(it_sink_start(&sink, dir, sink_out, secret, 0, sink_args, &sink_port),
                             0);
        }

        /* The daemon: one hook that gathers the notes, retries quickly. */
        consumer = it_kafka_section(bootstrap, TOPIC, GROUP, ACCT, 6000);
        cr_assert_gt(asprintf(&store, "backend = postgresql\nurl = %s\n", pg_url), 0);
        {
                const char *sections[] = {consumer,
                                          "[delivery]\nretry_base_ms = 100\nretry_max_ms = 1000\n",
                                          "[hook \"h\"]\non = conversation.end\n"
                                          "namespaces = agentNotes\nurl = @URL@/fn\n"
                                          "secret = @SECRET@\ntimeout_ms = @TIMEOUT@\n",
                                          NULL};
                const struct it_config c = {
                    .store_extra = store, .level = "info", .sections = sections};

                _cleanup_free_ char *text = it_config_text(&c, sink_port, secret);
                char timeout[16];

                snprintf(timeout, sizeof(timeout), "%d", HOOK_TIMEOUT_MS);
                conf = it_replace_all(text, "@TIMEOUT@", timeout);
        }
        cr_assert_eq(it_daemon_init(&d, conf), 0);
        cr_assert_eq(it_notify_start(&notify, d.dir), 0);
        notifying = true;
        snprintf(env_notify, sizeof(env_notify), "NOTIFY_SOCKET=%s", notify.path);
        cr_assert_eq(it_apikey_create(&d, ACCT, key), 0);
        cr_assert_eq(it_daemon_start(&d, env, NULL), 0);
        cr_assert_eq(it_daemon_wait_ready(&d, WAIT_MS), 0, "/readyz never answered 200");

        /* Before: a note, and events queued whose calls are out (the sink answers later). */
        cr_assert_eq(it_call(&d, "PUT", NOTE, key, "\"kept through the outage\"", NULL), 204);
        cr_assert_eq(metric("ctxhookd_store_unavailable"), 0);
        produce(0, N_BEFORE);
        {
                static const char *const queued[] = {"result", "queued", NULL};
                long long deadline = it_now_ms() + WAIT_MS;

                while (metric_l("ctxhookd_events_total", queued) < N_BEFORE &&
                       it_now_ms() < deadline)
                        it_sleep_ms(20);
                cr_assert_eq(metric_l("ctxhookd_events_total", queued), N_BEFORE);
        }
        it_sleep_ms(IN_FLIGHT_MS);

        /* The server goes away. */
        {
                _cleanup_free_ char *l = it_daemon_log(&d);

                log_at_halt = (off_t)strlen(l);
        }
        pg_tool("halt", NULL, 0);
        recs = it_sink_records(sink_out);
        cr_assert_eq(json_array_size(recs), 0,
                     "a call was answered before the server was down: nothing in flight");
        json_decref(recs);
        wait_log("kafka: store unavailable (", WAIT_MS);
        wait_log("consumption paused", WAIT_MS);

        /* The Context API: 503 with a JSON message. */
        cr_assert_eq(it_call(&d, "GET", NOTE, key, NULL, &r), 503, "GET of the note: %s", r.body);
        cr_assert(it_is_error_body(&r), "not a JSON error: %s", r.body);
        cr_assert(strstr(r.body, "store unavailable"), "%s", r.body);
        it_response_free(&r);
        cr_assert_eq(it_call(&d, "PUT", NOTE, key, "\"lost\"", &r), 503, "PUT: %s", r.body);
        cr_assert(it_is_error_body(&r), "not a JSON error: %s", r.body);
        it_response_free(&r);

        /* /readyz: 503 naming the database server and libpq's reason. */
        cr_assert_eq(it_call(&d, "GET", "/readyz", NULL, NULL, &r), 503, "/readyz: %s", r.body);
        body = it_response_json(&r);
        cr_assert_not_null(body, "/readyz: not JSON: %s", r.body);
        cr_assert_str_eq(it_rec_str(body, "status"), "unavailable", "%s", r.body);
        cr_assert_eq(strncmp(it_rec_str(body, "reason"), "store: ", 7), 0, "%s", r.body);
        cr_assert(strstr(it_rec_str(body, "reason"), "127.0.0.1") &&
                      strstr(it_rec_str(body, "reason"), port),
                  "the reason does not name the server 127.0.0.1:%s: %s", port, r.body);
        cr_assert(it_rec_str(body, "message")[0], "no message: %s", r.body);
        json_decref(body);
        it_response_free(&r);

        /* STATUS= and the gauge say so too. */
        status_down = it_notify_wait(&notify, "store unavailable (", 0, WAIT_MS);
        cr_assert_geq(status_down, 0, "STATUS= never said the store is unavailable");
        {
                _cleanup_free_ char *msg = NULL;

                pthread_mutex_lock(&notify.lock);
                msg = strdup(notify.msgs[status_down].text);
                pthread_mutex_unlock(&notify.lock);
                cr_assert_not_null(msg);
                cr_assert(strstr(msg, port) && strstr(msg, "consumption paused"), "%s", msg);
                cr_assert_null(strchr(msg, '\n'), "STATUS= split over lines: %s", msg);
        }
        cr_assert_eq(metric("ctxhookd_store_unavailable"), 1);

        /* The calls in flight at the halt are answered, too late to be recorded. Events produced
         * meanwhile wait; nothing else is delivered, the daemon keeps quiet. */
        recs = wait_delivered(N_BEFORE);
        json_decref(recs);
        wait_log("delivery: store unavailable (", WAIT_MS);
        recs = it_sink_records(sink_out);
        n_before = json_array_size(recs);
        json_decref(recs);
        produce(N_BEFORE, N_BEFORE + N_DURING);
        it_sleep_ms(3000);
        recs = it_sink_records(sink_out);
        cr_assert_eq(it_recs_count(recs, seq_below, &during) -
                         it_recs_count(recs, seq_below, &before),
                     0, "an event of the outage was delivered while the database was down");
        cr_assert_geq(json_array_size(recs), n_before);
        json_decref(recs);
        {
                _cleanup_free_ char *l = it_daemon_log(&d);
                const char *since = l + log_at_halt;
                /* Requests answered 5xx are logged one line each: the test made four. */
                int lines = count_lines(since, "<"),
                    requests = count_lines(since, "GET ") + count_lines(since, "PUT ");

                cr_assert_eq(count_lines(since, "consumption paused"), 1, "%s", since);
                cr_assert_leq(count_lines(since, "delivery: store unavailable"), 1, "%s", since);
                cr_assert_leq(lines - requests, 8, "the log is flooded during the outage:\n%s",
                              since);
        }
        cr_assert_eq(it_daemon_wait_exit(&d, 0), -ETIMEDOUT, "the daemon exited");

        /* The server is back on the same port: the daemon recovers by itself. */
        pg_tool("resume", NULL, 0);
        t_resume = it_now_ms();
        while (it_call(&d, "GET", "/readyz", NULL, NULL, NULL) != 200 &&
               it_now_ms() < t_resume + RECOVER_MS)
                it_sleep_ms(100);
        cr_assert_eq(it_call(&d, "GET", "/readyz", NULL, NULL, NULL), 200,
                     "/readyz not 200 %lld ms after the database came back",
                     it_now_ms() - t_resume);
        cr_log_info("/readyz 200 %lld ms after the database came back", it_now_ms() - t_resume);
        wait_log("store available again: consumption resumed", RECOVER_MS);
        cr_assert_eq(it_call(&d, "GET", NOTE, key, NULL, &r), 200, "GET of the note: %s", r.body);
        cr_assert_str_eq(r.body, "\"kept through the outage\"");
        it_response_free(&r);

        produce(N_BEFORE + N_DURING, N_ALL);
        recs = wait_delivered(N_ALL);
        /* At least once, and a repeat (a call whose outcome could not be recorded) carries the
         * same webhook-id; two events never share one. */
        {
                const char *ids[N_ALL] = {NULL};

                for (size_t i = 0; i < json_array_size(recs); i++) {
                        json_t *rec = json_array_get(recs, i);
                        long long s = it_rec_seq(rec);
                        const char *id = it_rec_str(rec, "webhook_id");

                        cr_assert(s >= 0 && s < N_ALL, "an event never produced: seq %lld", s);
                        cr_assert(id[0], "no webhook-id");
                        if (ids[s])
                                cr_assert_str_eq(ids[s], id, "event %lld came with two ids", s);
                        ids[s] = id;
                }
                for (int i = 0; i < N_ALL; i++)
                        for (int j = i + 1; j < N_ALL; j++)
                                cr_assert_str_neq(ids[i], ids[j], "events %d and %d share %s", i, j,
                                                  ids[i]);
                cr_log_info("%zu requests for %d events", json_array_size(recs), N_ALL);
                /* The calls in flight at the halt went out again. */
                cr_assert_gt(json_array_size(recs), (size_t)N_ALL,
                             "no call was repeated: the outage lost no outcome?");
        }
        json_decref(recs);
        /* The gauge follows within the daemon's one-second tick. */
        {
                long long deadline = it_now_ms() + 3000 * it_timeout_scale();

                while (metric("ctxhookd_store_unavailable") != 0 && it_now_ms() < deadline)
                        it_sleep_ms(100);
                cr_assert_eq(metric("ctxhookd_store_unavailable"), 0);
        }
        cr_assert_geq(
            it_notify_wait(&notify, "; consuming " TOPIC ";", (size_t)status_down + 1, WAIT_MS), 0,
            "STATUS= does not say it consumes again");

        cr_assert_eq(it_daemon_stop(&d, SIGTERM, &code), 0);
        log = it_daemon_log(&d);
        cr_assert_eq(code, 0, "exit %d after SIGTERM; log:\n%s", code, log);
        cr_assert(it_log_lines_prefixed(log));
        cr_assert_eq(count_lines(log, "consumption paused"), 1, "%s", log);
        cr_assert_eq(count_lines(log, "consumption resumed"), 1, "%s", log);
        cr_assert_eq(count_lines(log, "delivery: store available again: deliveries resumed; "), 1,
                     "%s", log);
        cr_assert_eq(count_lines(log, "could not be recorded meanwhile"), 1, "%s", log);
}
