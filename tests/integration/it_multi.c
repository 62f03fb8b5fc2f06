/* Several ctxhookd instances sharing one PostgreSQL database, as in a deployment behind a load
 * balancer: two daemons A and B with the same config (backend = postgresql on one fresh schema,
 * the same Kafka cluster and consumer group, one hook to one webhook receiver), differing only in
 * their API port. Notes written through one are read through the other at once, with the same
 * ETags, and If-Match and key rotation hold across them; the group splits the partitions and
 * every event is delivered exactly once, per conversation in order, with both instances doing
 * part of the work and gathering notes the other wrote; and when one instance is SIGKILLed
 * midway, the other takes over its partitions and, once the leases of its claims run out, its
 * deliveries, so every event still arrives, a repeat only for a call that was in flight in the
 * killed process and always with the same webhook-id. Every instance still running at the end
 * must stop on SIGTERM with exit 0, also while the group rebalances because the other one just
 * left. Event counts shrink under valgrind ($CTXHOOKD_TIMEOUT_SCALE), waits grow. */
#include <criterion/criterion.h>
#include <criterion/logging.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "test_pg.h"
#include "ctxhookd/cleanup.h"
#include "support_daemon.h"
#include "support_prom.h"
#include "support_sink.h"

#define ACCT       "12345678"
#define TOPIC      "conversation-events"
#define GROUP      "it-multi"
#define PFX        "/v1/account/" ACCT
#define PARTITIONS 4
#define CONVS      100
#define EVENTS     3000
#define IN_FLIGHT  16   /* [delivery] max_in_flight of each instance */
#define HOOK_MS    5000 /* the hook's timeout_ms: a claim's lease is this + 10 s */

/* Generous, for the sanitizer build on a loaded 2-core machine; the tests wait for conditions,
 * never a fixed time. The deliveries' waits cover a whole run of EVENTS at a few hundred a
 * second; the take-over waits for a Kafka session time-out and a lease. */
#define READY_MS   (30000 * it_timeout_scale())
#define DELIVER_MS (120000 * it_timeout_scale())

static struct it_daemon inst[2]; /* A and B */
static const char *const inst_name[2] = {"A", "B"};
static struct it_peer kafka, sink;
static char dir[IT_DIR_MAX];
static char sink_out[IT_PATH_MAX];
static char secret[128];
static char api_key[257];
static char bootstrap[256];
static char pg_url[1024];
static unsigned sink_port;

/* Where each event (by its seq) sits in Kafka, read back from the topic with kcat. */
struct placed {
        int partition;
        long long offset;
        char conv[32];
};

static void setup(void)
{
        cr_assert_eq(it_tmpdir(dir), 0);
        snprintf(sink_out, sizeof(sink_out), "%s/sink.jsonl", dir);
        it_make_secret(secret);
        sink_port = 0;
        pg_url[0] = '\0';
        cr_assert_eq(test_pg_url(pg_url, sizeof(pg_url)), 0, "no fresh PostgreSQL schema");
}

static void teardown(void)
{
        for (int i = 0; i < 2; i++)
                it_daemon_cleanup(&inst[i]);
        it_peer_cleanup(&sink);
        it_peer_cleanup(&kafka);
        if (pg_url[0])
                test_pg_drop(pg_url);
        it_rmtree(dir);
}

TestSuite(multi, .init = setup, .fini = teardown, .timeout = 400);

/* EVENTS, or a tenth of that and no less than 4 per conversation under valgrind. */
static int events_n(void)
{
        int n = EVENTS / it_timeout_scale();

        return n < 4 * CONVS ? 4 * CONVS : n;
}

static long long wall_ms(void)
{
        struct timespec ts;

        clock_gettime(CLOCK_REALTIME, &ts);
        return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- peers and the two daemons ---- */

static void start_kafka(void)
{
        char n[16];
        const char *args[] = {"--topic", TOPIC, "--partitions", n, NULL};

        snprintf(n, sizeof(n), "%d", PARTITIONS);
        cr_assert_eq(it_peer_start(&kafka, dir, "mock_kafka", args), 0, "mock_kafka did not start");
        snprintf(bootstrap, sizeof(bootstrap), "%s", kafka.line);
        cr_assert(strncmp(bootstrap, "127.0.0.1:", 10) == 0, "mock_kafka printed '%s'", bootstrap);
}

static void start_sink(const char *const *extra)
{
        cr_assert_eq(it_sink_start(&sink, dir, sink_out, secret, 0, extra, &sink_port), 0,
                     "webhook_sink did not start");
}

/* The one config of both instances: any free API port, the shared schema, and, with Kafka, the
 * shared consumer group (a member that dies is noticed after 4 s) and one hook gathering
 * agentNotes. Nothing else differs between A and B, not even a directory name. */
static char *make_config(bool with_kafka)
{
        _cleanup_free_ char *consumer = NULL;
        char *text = NULL, *with_url, url[64];
        size_t len = 0;
        FILE *f = open_memstream(&text, &len);

        cr_assert_not_null(f);
        fprintf(f,
                "[api]\n"
                "listen = 127.0.0.1:0\n"
                "threads = 2\n"
                "[store]\n"
                "backend = postgresql\n"
                "url = %s\n"
                "sweep_interval_s = 1\n"
                "[log]\n"
                "level = info\n",
                pg_url);
        if (with_kafka) {
                consumer = it_kafka_section(bootstrap, TOPIC, GROUP, ACCT, 4000);
                fprintf(f,
                        "%s"
                        "[delivery]\n"
                        "retry_base_ms = 100\n"
                        "retry_max_ms = 1000\n"
                        "max_in_flight = %d\n"
                        "[hook \"h\"]\n"
                        "on = conversation.end\n"
                        "namespaces = agentNotes\n"
                        "url = @URL@/fn\n"
                        "secret = %s\n"
                        "timeout_ms = %d\n",
                        consumer, IN_FLIGHT, secret, HOOK_MS);
        }
        cr_assert_eq(fclose(f), 0);
        snprintf(url, sizeof(url), "http://127.0.0.1:%u", sink_port);
        with_url = it_replace_all(text, "@URL@", url);
        free(text);
        return with_url;
}

/* Starts A and B on the same config, with an API key made by `ctxhookd apikey create` on the
 * shared database before either runs, and waits until both answer /readyz. */
static void start_pair(bool with_kafka)
{
        _cleanup_free_ char *conf = make_config(with_kafka);

        for (int i = 0; i < 2; i++)
                cr_assert_eq(it_daemon_init(&inst[i], conf), 0);
        cr_assert_eq(it_apikey_create(&inst[0], ACCT, api_key), 0);
        for (int i = 0; i < 2; i++)
                cr_assert_eq(it_daemon_start(&inst[i], NULL, NULL), 0, "%s did not start",
                             inst_name[i]);
        for (int i = 0; i < 2; i++) {
                int r = it_daemon_wait_ready(&inst[i], READY_MS);

                if (r < 0)
                        it_daemon_print_log_tail(&inst[i], 6000);
                cr_assert_eq(r, 0, "%s: /readyz did not answer 200", inst_name[i]);
        }
}

/* The partitions the daemon holds now, by its log: "kafka: N partition(s) of TOPIC assigned"
 * and "… revoked" lines (eager rebalancing revokes all it holds, cooperative lists each
 * change; either way the sum is what it holds). */
static int partitions_held(const struct it_daemon *d)
{
        _cleanup_free_ char *log = it_daemon_log(d);
        const char *p = log;
        int held = 0;

        while ((p = strstr(p, "kafka: ")) != NULL) {
                char what[32] = "";
                int n = 0;

                p += strlen("kafka: ");
                if (sscanf(p, "%d partition(s) of " TOPIC " %31s", &n, what) != 2)
                        continue;
                if (strcmp(what, "assigned") == 0)
                        held += n;
                else if (strcmp(what, "revoked") == 0)
                        held -= n;
        }
        return held;
}

/* Waits until the running instances (alive[i]) hold all the partitions between them, each at
 * least one. */
static void wait_split(const bool alive[2])
{
        long long deadline = it_now_ms() + READY_MS;
        int held[2] = {0, 0};

        for (;;) {
                bool ok = true;
                int sum = 0;

                for (int i = 0; i < 2; i++) {
                        held[i] = alive[i] ? partitions_held(&inst[i]) : 0;
                        sum += held[i];
                        if (alive[i] && held[i] <= 0)
                                ok = false;
                }
                if (ok && sum == PARTITIONS)
                        break;
                if (it_now_ms() > deadline) {
                        for (int i = 0; i < 2; i++)
                                if (alive[i])
                                        it_daemon_print_log_tail(&inst[i], 4000);
                        cr_assert_fail("the group did not settle: A holds %d, B %d of %d "
                                       "partitions",
                                       held[0], held[1], PARTITIONS);
                }
                it_sleep_ms(50);
        }
        cr_log_info("partitions: A %d, B %d", held[0], held[1]);
}

/* A graceful stop of a running instance: exit 0 (the sanitizer build's leak verdict). */
static void stop_inst(int i)
{
        int code = -1;
        _cleanup_free_ char *log = NULL;

        cr_assert_eq(it_daemon_stop(&inst[i], SIGTERM, &code), 0, "%s did not stop on SIGTERM",
                     inst_name[i]);
        log = it_daemon_log(&inst[i]);
        cr_assert_eq(code, 0, "%s exited %d after SIGTERM; log:\n%s", inst_name[i], code, log);
        cr_assert(it_log_lines_prefixed(log), "%s: log lines without the <N> prefix", inst_name[i]);
}

static void stop_peers(void)
{
        int code = -1;

        cr_assert_eq(it_peer_stop(&sink, SIGTERM, &code), 0);
        cr_assert_eq(code, 0, "webhook_sink exited %d", code);
        if (kafka.pid > 0) {
                code = -1;
                cr_assert_eq(it_peer_stop(&kafka, SIGTERM, &code), 0);
                cr_assert_eq(code, 0, "mock_kafka exited %d", code);
        }
}

/* ---- metrics ---- */

/* The value of the sample name{labels} (NULL-terminated name, value… pairs) in the instance's
 * /metrics, parsed strictly. */
static double metric(int i, const char *name, const char *const *labels)
{
        struct it_response r;
        struct prom_exposition *e = NULL;
        const struct prom_sample *s;
        char why[256];
        double v;

        cr_assert_eq(it_call(&inst[i], "GET", "/metrics", NULL, NULL, &r), 200, "%s: GET /metrics",
                     inst_name[i]);
        cr_assert_eq(prom_parse(r.body, r.body_len, &e, why, sizeof(why)), 0, "%s: /metrics: %s",
                     inst_name[i], why);
        s = prom_sample(e, name, labels);
        cr_assert_not_null(s, "%s: no sample %s in:\n%s", inst_name[i], name, r.body);
        v = s->value;
        prom_free(e);
        it_response_free(&r);
        return v;
}

static double delivered(int i)
{
        static const char *const l[] = {"hook", "h", "result", "delivered", NULL};

        return metric(i, "ctxhookd_deliveries_total", l);
}

static double deliveries(int i, const char *result)
{
        const char *const l[] = {"hook", "h", "result", result, NULL};

        return metric(i, "ctxhookd_deliveries_total", l);
}

static double events_queued(int i)
{
        static const char *const l[] = {"result", "queued", NULL};

        return metric(i, "ctxhookd_events_total", l);
}

/* Waits until the instance's outbox gauge (the shared outbox, read every second) is 0. */
static void wait_outbox_empty(int i)
{
        long long deadline = it_now_ms() + DELIVER_MS;
        double v;

        for (;;) {
                v = metric(i, "ctxhookd_outbox_depth", NULL);
                if (v == 0)
                        return;
                if (it_now_ms() > deadline)
                        break;
                it_sleep_ms(100);
        }
        it_daemon_print_log_tail(&inst[i], 6000);
        cr_assert_fail("%s: the outbox still holds %g deliveries", inst_name[i], v);
}

/* ---- the Context API ---- */

static long call(int i, const char *method, const char *path, const char *key,
                 const char *const *headers, const char *body, struct it_response *ret)
{
        return it_call_h(&inst[i], method, path, key, headers, body, ret);
}

/* GET through instance i: asserts 200 and returns the body (parsed) and the ETag. */
static json_t *get_json(int i, const char *path, char etag[256])
{
        struct it_response r;
        long s = call(i, "GET", path, api_key, NULL, NULL, &r);
        json_t *j;

        cr_assert_eq(s, 200, "%s: GET %s answered %ld: %s", inst_name[i], path, s,
                     s > 0 ? r.body : "(nothing)");
        j = it_response_json(&r);
        cr_assert_not_null(j, "%s: GET %s: not JSON: %s", inst_name[i], path, r.body);
        if (etag)
                snprintf(etag, 256, "%s", r.etag);
        it_response_free(&r);
        return j;
}

static void assert_json(json_t *got, const char *want_text, const char *what)
{
        json_error_t e;
        json_t *want = json_loads(want_text, JSON_DECODE_ANY, &e);
        _cleanup_free_ char *shown = json_dumps(got, JSON_COMPACT | JSON_ENCODE_ANY);

        cr_assert_not_null(want, "bad expected JSON %s", want_text);
        cr_assert(json_equal(got, want), "%s: got %s, want %s", what, shown ? shown : "?",
                  want_text);
        json_decref(want);
}

static void expect_status(int i, const char *method, const char *path, const char *key,
                          const char *const *headers, const char *body, long want)
{
        struct it_response r;
        long s = call(i, method, path, key, headers, body, &r);

        cr_assert_eq(s, want, "%s: %s %s answered %ld, want %ld: %s", inst_name[i], method, path, s,
                     want, s > 0 ? r.body : "(nothing)");
        if (s > 0)
                it_response_free(&r);
}

/* ---- events ---- */

/* Produces events seq from..to-1 of conversation "m-%03d" (seq % CONVS), keyed by conversation
 * so that each conversation stays in one partition. */
static void produce(int from, int to)
{
        cr_assert_eq(it_kcat_produce_ends(dir, bootstrap, TOPIC, ACCT, "m-", 3, CONVS, from, to), 0,
                     "kcat could not produce");
}

/* Reads the whole topic back with kcat: where every event seq 0..n-1 is. Each exactly once. */
static struct placed *read_topic(int n)
{
        const char *argv[] = {"kcat",      "-C", "-b", bootstrap, "-t",           TOPIC, "-o",
                              "beginning", "-e", "-q", "-f",      "%p\t%o\t%s\n", NULL};
        struct placed *at = calloc((size_t)n, sizeof(*at));
        struct it_result res;
        int found = 0;

        cr_assert_not_null(at);
        for (int i = 0; i < n; i++)
                at[i].partition = -1;
        cr_assert_eq(it_run_prog(dir, argv, 60000 * it_timeout_scale(), &res), 0);
        cr_assert_eq(res.code, 0, "kcat -C exited %d: %s", res.code, res.err);
        for (char *save = NULL, *line = strtok_r(res.out, "\n", &save); line;
             line = strtok_r(NULL, "\n", &save)) {
                int part, used = 0;
                long long off;
                json_error_t e;
                json_t *ev;
                long long seq;

                cr_assert_eq(sscanf(line, "%d\t%lld\t%n", &part, &off, &used), 2, "kcat: %s", line);
                ev = json_loads(line + used, 0, &e);
                cr_assert_not_null(ev, "kcat: %s", line);
                seq = json_integer_value(json_object_get(ev, "seq"));
                cr_assert(seq >= 0 && seq < n, "kcat: unknown event %s", line);
                cr_assert_eq(at[seq].partition, -1, "event %lld twice in the topic", seq);
                at[seq].partition = part;
                at[seq].offset = off;
                snprintf(at[seq].conv, sizeof(at[seq].conv), "%s",
                         json_string_value(json_object_get(ev, "conversationId")));
                json_decref(ev);
                found++;
        }
        it_result_free(&res);
        cr_assert_eq(found, n, "the topic holds %d of the %d events", found, n);
        return at;
}

/* Lines in the sink's file so far: one per request (cheap, unlike parsing them). */
static size_t sink_lines(void)
{
        _cleanup_free_ char *text = it_read_file(sink_out, NULL);
        size_t n = 0;

        for (const char *p = text; p && (p = strchr(p, '\n')) != NULL; p++)
                n++;
        return n;
}

/* Checks what every record must be: a signed POST answered 2xx, of a known event, whose event
 * id names the Kafka message it came from. Returns the event's seq. */
static long long check_record(json_t *rec, const struct placed *at, int n)
{
        _cleanup_free_ char *shown = json_dumps(rec, JSON_COMPACT);
        json_t *event = it_rec_event(rec);
        long long seq = it_rec_seq(rec);
        char want_id[128];

        cr_assert(it_rec_ok(rec), "a request not answered 2xx or badly signed: %s", shown);
        cr_assert(it_rec_str(rec, "webhook_id")[0], "no webhook-id: %s", shown);
        cr_assert(seq >= 0 && seq < n, "an event never produced was delivered: %s", shown);
        snprintf(want_id, sizeof(want_id), "kafka:%s/%d/%lld", TOPIC, at[seq].partition,
                 at[seq].offset);
        cr_assert_str_eq(it_rec_str(event, "id"), want_id, "event %lld: %s", seq, shown);
        cr_assert_str_eq(it_rec_str(event, "conversationId"), at[seq].conv, "event %lld: %s", seq,
                         shown);
        return seq;
}

static int cmp_str(const void *a, const void *b)
{
        return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* ids[0..n): no two the same (a sorted copy is compared neighbour by neighbour). */
static void assert_distinct(const char **ids, int n)
{
        _cleanup_free_ const char **sorted = malloc((size_t)n * sizeof(*sorted));

        cr_assert_not_null(sorted);
        memcpy(sorted, ids, (size_t)n * sizeof(*sorted));
        qsort(sorted, (size_t)n, sizeof(*sorted), cmp_str);
        for (int k = 1; k < n; k++)
                cr_assert_str_neq(sorted[k - 1], sorted[k], "two events share webhook-id %s",
                                  sorted[k]);
}

/* ---- tests ---- */

/* The Context API through two instances on one database: what A writes, B reads at once with
 * the same ETag and vice versa; If-Match with an ETag one instance gave is honoured by the
 * other (an edit through B makes A's stale tag fail with 412); deletes through B are gone for
 * A; and a key made while both run replaces the old one on both at once (no instance keeps a
 * revoked key alive). */
Test(multi, notes_shared_between_instances)
{
        static const char note[] = PFX "/agentNotes/conv-1/properties/note";
        static const char session[] = PFX "/agentNotes/conv-1/properties";
        char etag_a[256], etag_b[256], stale[256], if_match[300], new_key[257];
        const char *const cond[] = {if_match, NULL};
        json_t *j;

        start_sink(NULL);
        start_pair(false);

        expect_status(0, "PUT", note, api_key, NULL, "\"hello\"", 204);
        j = get_json(1, note, etag_b);
        assert_json(j, "\"hello\"", "B reads the note A wrote");
        json_decref(j);
        j = get_json(0, note, etag_a);
        json_decref(j);
        cr_assert(etag_a[0], "no ETag from A");
        cr_assert_str_eq(etag_a, etag_b, "A and B give one property two ETags");
        snprintf(stale, sizeof(stale), "%s", etag_a);

        expect_status(0, "PATCH", session, api_key, NULL, "{\"a\":1,\"b\":\"x\"}", 204);
        j = get_json(1, session, etag_b);
        assert_json(j, "{\"note\":\"hello\",\"a\":1,\"b\":\"x\"}", "B reads A's PATCH");
        json_decref(j);
        j = get_json(0, session, etag_a);
        json_decref(j);
        cr_assert(etag_a[0], "no session ETag from A");
        cr_assert_str_eq(etag_a, etag_b, "A and B give one session two ETags");

        /* Two agents, one on each instance, editing the same note. */
        snprintf(if_match, sizeof(if_match), "If-Match: %s", stale);
        expect_status(1, "PUT", note, api_key, cond, "\"by B\"", 204);
        expect_status(0, "PUT", note, api_key, cond, "\"by A\"", 412);
        j = get_json(0, note, etag_a);
        assert_json(j, "\"by B\"", "A reads B's edit, its own stale edit refused");
        json_decref(j);
        cr_assert_str_neq(etag_a, stale, "the ETag did not change with B's edit");
        j = get_json(1, note, etag_b);
        json_decref(j);
        cr_assert_str_eq(etag_a, etag_b, "A and B disagree on the ETag after B's edit");
        snprintf(if_match, sizeof(if_match), "If-Match: %s", etag_b);
        expect_status(0, "PUT", note, api_key, cond, "\"by A\"", 204);
        j = get_json(1, note, NULL);
        assert_json(j, "\"by A\"", "B reads A's conditional edit");
        json_decref(j);

        expect_status(1, "DELETE", note, api_key, NULL, NULL, 204);
        expect_status(0, "GET", note, api_key, NULL, NULL, 404);
        j = get_json(0, session, NULL);
        assert_json(j, "{\"a\":1,\"b\":\"x\"}", "A after B deleted the note");
        json_decref(j);
        expect_status(1, "DELETE", PFX "/agentNotes", api_key, NULL, NULL, 204);
        j = get_json(0, PFX, NULL);
        assert_json(j, "[]", "A lists namespaces after B deleted the only one");
        json_decref(j);
        j = get_json(0, session, NULL);
        assert_json(j, "{}", "A reads the session of a namespace B deleted");
        json_decref(j);

        /* A new key, made while both run, revokes the old one on both at once. */
        cr_assert_eq(it_apikey_create(&inst[1], ACCT, new_key), 0);
        cr_assert_str_neq(new_key, api_key);
        for (int i = 0; i < 2; i++) {
                expect_status(i, "GET", PFX, api_key, NULL, NULL, 403);
                expect_status(i, "GET", PFX, new_key, NULL, NULL, 200);
        }

        stop_inst(0);
        stop_inst(1);
        stop_peers();
}

/* The normal case: the group splits the partitions between A and B, notes are written half
 * through each, then a few thousand events of 100 conversations are produced. Every Kafka
 * message is delivered exactly once (one request per event, one webhook-id per event, no other
 * request), with the notes of its conversation whichever instance wrote them, per conversation
 * in event order; both instances delivered some, together exactly as many as there are
 * events, none retried, and together they queued each event once. */
Test(multi, events_split_and_delivered_once)
{
        static const bool both[2] = {true, true};
        const int n = events_n();
        _cleanup_free_ struct placed *at = NULL;
        _cleanup_free_ const char **ids = calloc((size_t)n, sizeof(char *));
        _cleanup_free_ long long *last = malloc(CONVS * sizeof(long long));
        long long deadline, t0;
        double got[2] = {0, 0}, queued[2];
        json_t *recs, *rec;
        size_t i;

        cr_assert(ids && last);
        start_kafka();
        start_sink(NULL);
        start_pair(true);
        wait_split(both);

        /* Each conversation's note, written through A for even ones, B for odd ones. */
        for (int c = 0; c < CONVS; c++) {
                char path[128], body[64];

                snprintf(path, sizeof(path), PFX "/agentNotes/m-%03d/properties/by", c);
                snprintf(body, sizeof(body), "\"%s\"", inst_name[c % 2]);
                expect_status(c % 2, "PUT", path, api_key, NULL, body, 204);
        }

        t0 = it_now_ms();
        produce(0, n);
        at = read_topic(n);

        deadline = it_now_ms() + DELIVER_MS;
        for (;;) {
                got[0] = delivered(0);
                got[1] = delivered(1);
                if (got[0] + got[1] >= n)
                        break;
                if (it_now_ms() > deadline) {
                        it_daemon_print_log_tail(&inst[0], 4000);
                        it_daemon_print_log_tail(&inst[1], 4000);
                        cr_assert_fail("%g + %g of %d events delivered in time", got[0], got[1], n);
                }
                it_sleep_ms(100);
        }
        wait_outbox_empty(0);
        wait_outbox_empty(1);
        cr_log_info("%d events delivered in %lld ms: A %g, B %g", n, it_now_ms() - t0, got[0],
                    got[1]);

        recs = it_sink_records(sink_out);
        cr_assert_not_null(recs);
        for (int c = 0; c < CONVS; c++)
                last[c] = -1;
        json_array_foreach(recs, i, rec)
        {
                long long seq = check_record(rec, at, n);
                int conv = (int)(seq % CONVS);
                json_t *notes = json_object_get(
                    json_object_get(json_object_get(it_rec_payload(rec), "context"), "agentNotes"),
                    "session");
                char want[64];

                cr_assert_null(ids[seq], "event %lld delivered twice: webhook-ids %s and %s", seq,
                               ids[seq] ? ids[seq] : "", it_rec_str(rec, "webhook_id"));
                ids[seq] = it_rec_str(rec, "webhook_id");
                cr_assert_gt(seq, last[conv],
                             "conversation m-%03d: event %lld delivered after event %lld", conv,
                             seq, last[conv]);
                last[conv] = seq;
                snprintf(want, sizeof(want), "{\"by\":\"%s\"}", inst_name[conv % 2]);
                assert_json(notes, want, "the conversation's notes in the delivery");
        }
        for (int k = 0; k < n; k++)
                cr_assert_not_null(ids[k], "event %d (partition %d offset %lld) not delivered", k,
                                   at[k].partition, at[k].offset);
        cr_assert_eq(json_array_size(recs), (size_t)n, "%zu requests for %d events",
                     json_array_size(recs), n);
        assert_distinct(ids, n);

        for (int k = 0; k < 2; k++) {
                got[k] = delivered(k);
                queued[k] = events_queued(k);
                cr_assert_gt(got[k], 0, "%s delivered nothing (A %g, B %g)", inst_name[k], got[0],
                             got[1]);
                cr_assert_eq(deliveries(k, "retry"), 0, "%s retried a delivery", inst_name[k]);
                cr_assert_eq(deliveries(k, "dead"), 0, "%s dead-lettered a delivery", inst_name[k]);
        }
        cr_assert_eq(got[0] + got[1], n, "A delivered %g and B %g of %d events", got[0], got[1], n);
        cr_assert_eq(queued[0] + queued[1], n, "A queued %g and B %g of %d events", queued[0],
                     queued[1], n);
        cr_assert_gt(queued[0], 0, "A consumed nothing");
        cr_assert_gt(queued[1], 0, "B consumed nothing");
        json_decref(recs);

        /* One after the other, as a rolling restart or `systemctl stop` on both hosts does: A
         * leaves the group, so B is stopped while the group rebalances, and must still exit
         * 0 in time. */
        stop_inst(0);
        stop_inst(1);
        stop_peers();
}

/* How many of the events seq 0..n-1 the sink has answered 2xx at least once. */
static int events_seen(int n)
{
        json_t *recs = it_sink_records(sink_out), *rec;
        _cleanup_free_ bool *seen = calloc((size_t)n, sizeof(bool));
        int count = 0;
        size_t i;

        cr_assert(recs && seen);
        json_array_foreach(recs, i, rec)
        {
                long long seq = it_rec_seq(rec);

                if (seq >= 0 && seq < n && it_rec_2xx(rec) && !seen[seq]) {
                        seen[seq] = true;
                        count++;
                }
        }
        json_decref(recs);
        return count;
}

/* A crash: while A and B work through a few thousand events (the receiver takes 20 ms per
 * call, so calls are in flight), A is SIGKILLed. B takes A's partitions over (the group notices
 * A's death) and, once their leases run out, A's claimed deliveries: every event is delivered,
 * each always with the one webhook-id of its Kafka message; an event delivered twice is one
 * that A had sent before it died (no more of them than A had in flight), and per conversation
 * the deliveries stay in event order (a repeat coming right after the first attempt). */
Test(multi, killed_instance_work_taken_over)
{
        static const char *const slow[] = {"--delay-ms", "20", NULL};
        static const bool survivor_only[2] = {false, true};
        const int n = events_n();
        _cleanup_free_ struct placed *at = NULL;
        _cleanup_free_ const char **ids = calloc((size_t)n, sizeof(char *));
        _cleanup_free_ long long *first_ms = calloc((size_t)n, sizeof(long long));
        _cleanup_free_ long long *last = malloc(CONVS * sizeof(long long));
        long long deadline, kill_wall, kill_mono, took;
        double b_before, b_after;
        size_t lines_at_kill, i, dups = 0;
        int code = -1, seen;
        json_t *recs, *rec;

        cr_assert(ids && first_ms && last);
        start_kafka();
        start_sink(slow);
        start_pair(true);
        wait_split((const bool[2]){true, true});

        produce(0, n);
        at = read_topic(n);

        /* Midway: the sink has seen a quarter, and A has done part of it. */
        deadline = it_now_ms() + DELIVER_MS;
        while (sink_lines() < (size_t)n / 4 || delivered(0) == 0) {
                if (it_now_ms() > deadline) {
                        it_daemon_print_log_tail(&inst[0], 6000);
                        it_daemon_print_log_tail(&inst[1], 6000);
                        cr_assert_fail("the sink got %zu of %d requests in time (A delivered "
                                       "%.0f)",
                                       sink_lines(), n, delivered(0));
                }
                it_sleep_ms(20);
        }
        b_before = delivered(1);
        kill_wall = wall_ms();
        kill_mono = it_now_ms();
        cr_assert_eq(it_daemon_stop(&inst[0], SIGKILL, &code), 0);
        cr_assert_eq(code, 128 + SIGKILL);
        lines_at_kill = sink_lines();
        cr_assert_lt(lines_at_kill, (size_t)n,
                     "every event was delivered before the kill; nothing to take over");

        /* B alone: all partitions, then every event. */
        wait_split(survivor_only);
        deadline = it_now_ms() + DELIVER_MS;
        while ((seen = events_seen(n)) < n) {
                if (it_now_ms() > deadline) {
                        it_daemon_print_log_tail(&inst[1], 6000);
                        cr_assert_fail("%d of %d events delivered %lld ms after A was killed", seen,
                                       n, it_now_ms() - kill_mono);
                }
                it_sleep_ms(250);
        }
        took = it_now_ms() - kill_mono;
        wait_outbox_empty(1);

        recs = it_sink_records(sink_out);
        cr_assert_not_null(recs);
        for (int c = 0; c < CONVS; c++)
                last[c] = -1;
        json_array_foreach(recs, i, rec)
        {
                long long seq = check_record(rec, at, n);
                int conv = (int)(seq % CONVS);
                const char *wid = it_rec_str(rec, "webhook_id");

                if (!ids[seq]) {
                        ids[seq] = wid;
                        first_ms[seq] = it_rec_int(rec, "received_ms");
                        cr_assert_gt(seq, last[conv],
                                     "conversation m-%03d: event %lld delivered after event "
                                     "%lld",
                                     conv, seq, last[conv]);
                        last[conv] = seq;
                        continue;
                }
                dups++;
                cr_assert_str_eq(wid, ids[seq], "event %lld delivered with two webhook-ids", seq);
                /* A repeat is of a call A had made: the sink saw it by the time A died (give
                 * or take a request still in the socket), and it comes back right after it,
                 * before the conversation's next event. */
                cr_assert_leq(first_ms[seq], kill_wall + 2000,
                              "event %lld delivered twice, first %lld ms after A was killed", seq,
                              first_ms[seq] - kill_wall);
                cr_assert_eq(seq, last[conv],
                             "conversation m-%03d: event %lld repeated after event %lld", conv, seq,
                             last[conv]);
        }
        for (int k = 0; k < n; k++)
                cr_assert_not_null(ids[k], "event %d (partition %d offset %lld) never delivered", k,
                                   at[k].partition, at[k].offset);
        assert_distinct(ids, n);
        cr_assert_leq(dups, (size_t)IN_FLIGHT,
                      "%zu repeats, more than the %d calls A could have had in flight", dups,
                      IN_FLIGHT);
        b_after = delivered(1);
        cr_assert_gt(b_after, b_before, "B delivered nothing after A died");
        cr_assert_eq(deliveries(1, "dead"), 0, "B dead-lettered a delivery");
        cr_log_info("take-over: A killed after %zu of %d requests; all %d delivered %lld ms "
                    "later; %zu repeats (A's calls in flight); B delivered %g before, %g after",
                    lines_at_kill, n, n, took, dups, b_before, b_after - b_before);
        json_decref(recs);

        stop_inst(1);
        stop_peers();
}
