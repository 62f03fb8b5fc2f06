/* Operations of the real daemon as systemd runs it: SIGHUP reloads (hooks change while a call
 * is in flight and the API stays up; restart-only options are named and kept; a config that
 * fails validation is refused and the old one stays), the sd_notify protocol on a stand-in
 * notification socket (READY=1 and STATUS=, RELOADING=1 … READY=1, WATCHDOG=1, STOPPING=1),
 * the watchdog going quiet while a thread is really stuck (a write lock held on the database
 * by another process) and speaking again afterwards, and a SIGTERM under load that loses and
 * repeats no delivery. */
#include <criterion/criterion.h>
#include <criterion/logging.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ctxhookd/cleanup.h"
#include "support_daemon.h"
#include "support_sink.h"

#define ACCT    "12345678"
#define TOPIC   "conversation-events"
#define EVENTS  "/v1/account/" ACCT "/events"
#define WAIT_MS (30000 * it_timeout_scale())

static struct it_daemon d;
static struct it_peer sink, kafka;
static struct it_notify notify;
static char dir[IT_DIR_MAX];
static char sink_out[IT_PATH_MAX];
static char secret[128];
static char api_key[257];
static unsigned sink_port;

static void setup(void)
{
        cr_assert_eq(it_tmpdir(dir), 0);
        snprintf(sink_out, sizeof(sink_out), "%s/sink.jsonl", dir);
        it_make_secret(secret);
        sink_port = 0;
}

static void teardown(void)
{
        it_daemon_cleanup(&d);
        it_peer_cleanup(&sink);
        it_peer_cleanup(&kafka);
        it_notify_stop(&notify);
        it_rmtree(dir);
}

TestSuite(ops, .init = setup, .fini = teardown, .timeout = 240);

static void start_sink(const char *delay_ms)
{
        const char *args[] = {"--delay-ms", delay_ms, NULL};

        cr_assert_eq(it_sink_start(&sink, dir, sink_out, secret, 0, args, &sink_port), 0,
                     "webhook_sink did not start");
}

/* The daemon's config: the API at listen, the store in its directory (with store_extra
 * lines), the log level, the given extra lines (sections of their own) and hooks; @URL@ is the
 * sink, @SECRET@ the key. */
static char *make_config(const char *listen, const char *level, const char *store_extra,
                         const char *extra, const char *hooks)
{
        const char *const sections[] = {extra, hooks, NULL};
        struct it_config c = {
            .listen = listen, .level = level, .store_extra = store_extra, .sections = sections};

        return it_config_text(&c, sink_port, secret);
}

/* Replaces the daemon's config file (as an operator editing it would). */
static void rewrite_config(const char *text)
{
        _cleanup_free_ char *t = it_subst_dir(text, d.dir);

        cr_assert_eq(it_write_file(d.conf, t), 0);
}

static void start_daemon(const char *config, const char *const *env)
{
        cr_assert_eq(it_daemon_init(&d, config), 0);
        cr_assert_eq(it_apikey_create(&d, ACCT, api_key), 0);
        cr_assert_eq(it_daemon_start(&d, env, NULL), 0, "the daemon did not start");
}

static void post_end_event(const char *conv)
{
        char body[256];
        struct it_response r = {0};
        long status;

        snprintf(body, sizeof(body),
                 "{\"kind\":\"conversation.end\",\"accountId\":\"" ACCT "\","
                 "\"conversationId\":\"%s\",\"closeReason\":\"SYSTEM\"}",
                 conv);
        status = it_call(&d, "POST", EVENTS, api_key, body, &r);
        cr_assert_eq(status, 202, "ingest of %s: %ld %s", conv, status, r.body ? r.body : "");
        it_response_free(&r);
}

/* The log since the daemon started, and whether it contains needle. */
static bool log_has(const char *needle)
{
        _cleanup_free_ char *log = it_daemon_log(&d);

        return strstr(log, needle) != NULL;
}

static void wait_log(const char *needle)
{
        long long deadline = it_now_ms() + WAIT_MS;

        while (!log_has(needle)) {
                if (it_now_ms() > deadline) {
                        _cleanup_free_ char *log = it_daemon_log(&d);

                        cr_assert_fail("no '%s' in the log:\n%s", needle, log);
                }
                it_sleep_ms(20);
        }
}

struct delivery {
        const char *conv;
        const char *path; /* NULL = any path */
};

/* A 2xx, well signed record of the conversation at the path. */
static bool is_delivery(json_t *rec, const void *arg)
{
        const struct delivery *q = arg;

        return it_rec_ok(rec) &&
               strcmp(it_rec_str(it_rec_event(rec), "conversationId"), q->conv) == 0 &&
               (!q->path || strcmp(it_rec_str(rec, "path"), q->path) == 0);
}

/* The sink's 2xx records of conversation conv at path (NULL = any path). */
static size_t delivered(const char *conv, const char *path)
{
        json_t *recs = it_sink_records(sink_out);
        size_t n;

        cr_assert_not_null(recs);
        n = it_recs_count(recs, is_delivery, &(struct delivery){conv, path});
        json_decref(recs);
        return n;
}

static void wait_delivered(const char *conv, const char *path)
{
        const struct delivery q = {conv, path};
        json_t *recs = NULL;
        int r = it_sink_wait(sink_out, 1, is_delivery, &q, WAIT_MS, &recs);

        if (r < 0) {
                _cleanup_free_ char *log = it_daemon_log(&d);

                cr_assert_fail("%s never delivered to %s; log:\n%s", conv, path, log);
        }
        json_decref(recs);
}

static long long metric(const char *series)
{
        struct it_response r = {0};
        const char *p;
        long long v = -1;

        cr_assert_eq(it_call(&d, "GET", "/metrics", NULL, NULL, &r), 200);
        p = strstr(r.body, series);
        if (p)
                v = strtoll(p + strlen(series), NULL, 10);
        it_response_free(&r);
        return v;
}

/* The counter once it reaches want, or its value after WAIT_MS: the daemon counts a delivery
 * after the sink's answer has come back and is stored, a moment after the sink's record (long
 * enough to see under valgrind). */
static long long metric_reaches(const char *series, long long want)
{
        long long deadline = it_now_ms() + WAIT_MS;

        for (;;) {
                long long v = metric(series);

                if (v == want || it_now_ms() > deadline)
                        return v;
                it_sleep_ms(50);
        }
}

static void stop_daemon(void)
{
        int code = -1;

        cr_assert_eq(it_daemon_stop(&d, SIGTERM, &code), 0, "no exit after SIGTERM");
        cr_assert_eq(code, 0, "exit code %d after SIGTERM", code);
}

static const char hook_a[] = "[hook \"a\"]\n"
                             "on = conversation.end\n"
                             "url = @URL@/a\n"
                             "secret = @SECRET@\n";

Test(ops, reload_changes_hooks_while_a_call_is_in_flight_and_the_api_stays_up)
{
        static const char hooks_after[] = "[hook \"a\"]\n"
                                          "on = conversation.end\n"
                                          "url = @URL@/a2\n"
                                          "secret = @SECRET@\n"
                                          "[hook \"b\"]\n"
                                          "on = conversation.end\n"
                                          "url = @URL@/b\n"
                                          "secret = @SECRET@\n";
        _cleanup_free_ char *before = NULL, *after = NULL;
        pid_t pid;

        start_sink("2500"); /* every answer takes 2.5 s: the first call is in flight for long */
        before = make_config("127.0.0.1:0", "debug", "", "", hook_a);
        start_daemon(before, NULL);
        pid = d.pid;
        post_end_event("conv-1");
        /* The call is out (the sink answers only after its delay). */
        wait_log("(conversation conv-1): attempt 1");

        /* Hooks change, the log level drops to info, and the listen address (restart-only)
         * changes too. */
        after = make_config("127.0.0.1:1", "info", "", "", hooks_after);
        rewrite_config(after);
        cr_assert_eq(kill(d.pid, SIGHUP), 0);
        wait_log("configuration reloaded: 2 hook(s); added: b; removed: none; log level info");
        cr_assert(log_has("reload: [api] listen: \"127.0.0.1:0\" → \"127.0.0.1:1\" needs a "
                          "restart; \"127.0.0.1:0\" stays in force"));
        /* The API never closed: same process, same port, and it answers while the call of the
         * old hook is still out. */
        cr_assert_eq(d.pid, pid);
        cr_assert_eq(it_call(&d, "GET", "/healthz", NULL, NULL, NULL), 200);
        cr_assert_eq(delivered("conv-1", NULL), 0, "the first call was not in flight any more");

        post_end_event("conv-2");
        wait_delivered("conv-1", "/a");
        wait_delivered("conv-2", "/a2");
        wait_delivered("conv-2", "/b");
        /* The call in flight was neither dropped nor sent twice, and nothing went elsewhere. */
        cr_assert_eq(delivered("conv-1", NULL), 1);
        cr_assert_eq(delivered("conv-2", NULL), 2);
        cr_assert_not(log_has("abandoned"));
        cr_assert_eq(metric("ctxhookd_config_reloads_total{result=\"applied\"} "), 1);
        cr_assert_eq(
            metric_reaches("ctxhookd_deliveries_total{hook=\"b\",result=\"delivered\"} ", 1), 1);
        cr_assert_eq(
            metric_reaches("ctxhookd_deliveries_total{hook=\"a\",result=\"delivered\"} ", 2), 2);
        /* The new log level is in force: debug lines stop. */
        {
                _cleanup_free_ char *log = it_daemon_log(&d);
                const char *reloaded = strstr(log, "configuration reloaded");

                cr_assert_not_null(reloaded);
                cr_assert_null(strstr(reloaded, "\n<7>"), "debug lines after the reload:\n%s",
                               reloaded);
        }
        stop_daemon();
}

Test(ops, a_config_that_fails_validation_is_refused_and_the_old_one_stays)
{
        static const char broken[] = "[hook \"a\"]\n"
                                     "on = conversation.end\n"
                                     "url = @URL@/elsewhere\n"
                                     "secret = @SECRET@\n"
                                     "max_attempts = 0\n"
                                     "[hook \"c\"]\n"
                                     "on = conversation.nope\n";
        _cleanup_free_ char *good = NULL, *bad = NULL;
        char where[IT_PATH_MAX + 64];

        start_sink("0");
        good = make_config("127.0.0.1:0", "debug", "", "", hook_a);
        start_daemon(good, NULL);
        bad = make_config("127.0.0.1:0", "debug", "", "", broken);
        rewrite_config(bad);
        cr_assert_eq(kill(d.pid, SIGHUP), 0);
        /* Every problem, with its line: the config's 7 fixed lines come first. */
        snprintf(where, sizeof(where), "reload refused: %s:12: [hook \"a\"] max_attempts:", d.conf);
        wait_log(where);
        snprintf(where, sizeof(where), "reload refused: %s:14: [hook \"c\"] on:", d.conf);
        cr_assert(log_has(where), "no line for %s", where);
        cr_assert_not(log_has("configuration reloaded"));
        cr_assert_eq(metric("ctxhookd_config_reloads_total{result=\"refused\"} "), 1);
        cr_assert_eq(metric("ctxhookd_config_reloads_total{result=\"applied\"} "), 0);

        /* The running config is untouched: events still go to /a. */
        post_end_event("conv-1");
        wait_delivered("conv-1", "/a");
        cr_assert_eq(delivered("conv-1", "/elsewhere"), 0);

        /* Mended, the next SIGHUP applies it. */
        rewrite_config(good);
        cr_assert_eq(kill(d.pid, SIGHUP), 0);
        wait_log("configuration reloaded: 1 hook(s); added: none; removed: none");
        stop_daemon();
}

/* The longest gap between consecutive WATCHDOG=1 messages arriving in [from_ms, to_ms]. */
static long long longest_gap(long long from_ms, long long to_ms)
{
        static long long at[IT_NOTIFY_MAX];
        size_t n = it_notify_times(&notify, "WATCHDOG=1", 0, at, IT_NOTIFY_MAX);
        long long prev = from_ms, gap = 0;

        for (size_t i = 0; i < n && i < IT_NOTIFY_MAX; i++) {
                if (at[i] < from_ms || at[i] > to_ms)
                        continue;
                if (at[i] - prev > gap)
                        gap = at[i] - prev;
                prev = at[i];
        }
        return to_ms - prev > gap ? to_ms - prev : gap;
}

Test(ops, notify_protocol_and_a_watchdog_that_stops_while_a_thread_is_stuck)
{
        char env_socket[160];
        const char *env[] = {env_socket, "WATCHDOG_USEC=2000000", NULL};
        _cleanup_free_ char *conf = NULL;
        static const char request[] = "PATCH /v1/account/" ACCT "/notes/properties HTTP/1.1\r\n"
                                      "Host: x\r\nContent-Type: application/json\r\n"
                                      "Content-Length: 11\r\nmaven-api-key: %s\r\n"
                                      "Connection: close\r\n\r\n{\"k\":\"v1\"}\n";
        char req[1024], ready[160];
        long long t_lock, t_unlock;
        long idx, reload_at;
        int fd;

        start_sink("0");
        cr_assert_eq(it_notify_start(&notify, dir), 0);
        snprintf(env_socket, sizeof(env_socket), "NOTIFY_SOCKET=%s", notify.path);
        /* Statements wait up to 8 s for a lock: long enough to look stuck to the watchdog
         * (stall after max(1 s, 3 s) with WatchdogSec=2s), short of failing. */
        conf = make_config("127.0.0.1:0", "debug", "busy_timeout_ms = 8000\n", "", hook_a);
        start_daemon(conf, env);

        snprintf(ready, sizeof(ready), "READY=1\nSTATUS=listening on http://127.0.0.1:%u;", d.port);
        cr_assert_geq(it_notify_wait(&notify, ready, 0, WAIT_MS), 0, "no READY=1 with STATUS");
        cr_assert_geq(it_notify_wait(&notify,
                                     "not consuming from Kafka; outbox 0 queued, 0 dead "
                                     "letters",
                                     0, WAIT_MS),
                      0);
        /* Healthy: a ping every quarter of the interval. */
        it_sleep_ms(2500);
        cr_assert_geq(it_notify_count(&notify, "WATCHDOG=1", 0), 3);
        cr_assert_leq(longest_gap(it_now_ms() - 2000, it_now_ms()), 1200);

        /* A reload is bracketed by RELOADING=1 … READY=1. */
        reload_at = (long)it_notify_n(&notify);
        cr_assert_eq(kill(d.pid, SIGHUP), 0);
        idx = it_notify_wait(&notify, "RELOADING=1\nMONOTONIC_USEC=", (size_t)reload_at, WAIT_MS);
        cr_assert_geq(idx, 0, "no RELOADING=1");
        cr_assert_geq(it_notify_wait(&notify, "READY=1", (size_t)idx + 1, WAIT_MS), 0,
                      "no READY=1 after the reload");

        /* A real stall: the database is locked elsewhere and a PATCH waits inside an HTTP
         * thread (so does the delivery thread's next claim). */
        snprintf(req, sizeof(req), request, api_key);
        fd = it_tcp_connect(d.port);
        cr_assert_geq(fd, 0);
        t_lock = it_now_ms();
        {
                /* Take the lock first, then send: hold it on this thread while the request
                 * waits, in two steps so the request goes out after the lock is held. */
                sqlite3 *h = NULL;

                cr_assert_eq(sqlite3_open(d.db, &h), SQLITE_OK);
                cr_assert_eq(sqlite3_exec(h, "BEGIN IMMEDIATE", NULL, NULL, NULL), SQLITE_OK);
                cr_assert_eq(it_write_all(fd, req, strlen(req)), 0);
                it_sleep_ms(6000);
                t_unlock = it_now_ms();
                cr_assert_eq(sqlite3_exec(h, "ROLLBACK", NULL, NULL, NULL), SQLITE_OK);
                sqlite3_close(h);
        }
        {
                _cleanup_free_ char *answer = it_read_all(fd, 10000, NULL);

                cr_assert_not_null(answer);
                cr_assert_eq(strncmp(answer, "HTTP/1.1 204", 12), 0, "PATCH got: %s", answer);
                close(fd);
        }
        /* The pings stopped for the stall (≥ 6 s locked − 3 s grace), and resume. */
        cr_assert_geq(longest_gap(t_lock, t_unlock), 2500, "the watchdog kept pinging");
        cr_assert_geq(it_notify_wait(&notify, "WATCHDOG=1", it_notify_n(&notify), 3000), 0,
                      "the pings did not resume");
        wait_log("has made no progress for");
        wait_log("watchdog: every thread makes progress again");
        cr_assert(log_has("watchdog: the HTTP thread") || log_has("watchdog: the delivery thread"));

        /* STOPPING=1 on SIGTERM. */
        reload_at = (long)it_notify_n(&notify);
        stop_daemon();
        cr_assert_geq(it_notify_wait(&notify, "STOPPING=1", (size_t)reload_at, 2000), 0);
}

/* ---- SIGTERM under load ---- */

#define LOAD_EVENTS 1500

Test(ops, sigterm_under_load_loses_and_repeats_nothing)
{
        static const char hooks[] = "[hook \"h\"]\n"
                                    "on = conversation.end\n"
                                    "url = @URL@/fn\n"
                                    "secret = @SECRET@\n";
        _cleanup_free_ char *kafka_section = NULL, *extra = NULL;
        const char *kafka_args[] = {"--topic", TOPIC, "--partitions", "4", NULL};
        _cleanup_free_ char *conf = NULL;
        char *text = NULL;
        size_t len = 0;
        FILE *f = open_memstream(&text, &len);
        json_t *recs, *rec;
        size_t i, seen = 0, repeats = 0;
        bool got[LOAD_EVENTS] = {false};
        long long t0, deadline;

        cr_assert_eq(it_peer_start(&kafka, dir, "mock_kafka", kafka_args), 0);
        start_sink("20");
        kafka_section = it_kafka_section(kafka.line, TOPIC, "it-ops", ACCT, 4000);
        cr_assert_gt(asprintf(&extra,
                              "%s[delivery]\nmax_in_flight = 8\nretry_base_ms = 100\n"
                              "retry_max_ms = 1000\n",
                              kafka_section),
                     0);
        conf = make_config("127.0.0.1:0", "debug", "", extra, hooks);
        start_daemon(conf, NULL);

        cr_assert_not_null(f);
        for (int k = 0; k < LOAD_EVENTS; k++)
                fprintf(f,
                        "{\"kind\":\"conversation.end\",\"accountId\":\"" ACCT "\","
                        "\"conversationId\":\"c%d\",\"closeReason\":\"SYSTEM\",\"seq\":%d}\n",
                        k % 97, k);
        fclose(f);
        cr_assert_eq(it_kcat_produce(dir, kafka.line, TOPIC, text), 0);
        free(text);

        /* Stop while a good part of the work is still queued and calls are out. */
        deadline = it_now_ms() + WAIT_MS;
        while ((recs = it_sink_records(sink_out)) && json_array_size(recs) < 150 &&
               it_now_ms() < deadline) {
                json_decref(recs);
                it_sleep_ms(20);
        }
        cr_assert_lt(json_array_size(recs), LOAD_EVENTS, "all delivered before the stop");
        json_decref(recs);
        t0 = it_now_ms();
        stop_daemon();
        cr_log_info("SIGTERM under load: exit 0 after %lld ms", it_now_ms() - t0);
        cr_assert(log_has("stopped"));
        cr_assert_not(log_has("abandoned"), "a call in flight was abandoned, not finished");

        /* Restart: the rest goes out, and nothing twice. */
        cr_assert_eq(it_daemon_start(&d, NULL, NULL), 0, "no restart");
        deadline = it_now_ms() + 2 * WAIT_MS;
        for (;;) {
                recs = it_sink_records(sink_out);
                cr_assert_not_null(recs);
                if (json_array_size(recs) >= LOAD_EVENTS || it_now_ms() > deadline)
                        break;
                json_decref(recs);
                it_sleep_ms(100);
        }
        json_array_foreach(recs, i, rec)
        {
                long long seq = json_integer_value(
                    json_object_get(json_object_get(it_rec_payload(rec), "raw"), "seq"));

                cr_assert(it_rec_ok(rec), "a delivery failed or was badly signed");
                cr_assert(seq >= 0 && seq < LOAD_EVENTS, "unknown event delivered");
                if (got[seq])
                        repeats++;
                got[seq] = true;
        }
        for (int k = 0; k < LOAD_EVENTS; k++)
                seen += got[k];
        json_decref(recs);
        cr_assert_eq(seen, LOAD_EVENTS, "%zu of %d events delivered", seen, LOAD_EVENTS);
        cr_assert_eq(repeats, 0, "%zu deliveries repeated after a graceful stop", repeats);
        stop_daemon();
}
