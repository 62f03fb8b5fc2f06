/* Unit tests of the Kafka consumer against a real-protocol broker: librdkafka's mock cluster,
 * started in the test process, fed by a librdkafka producer (and kcat, when installed). The
 * consumer drives the real pipeline into a real store in a fresh mkdtemp directory; its one hook
 * points nowhere, since no deliverer runs: what the consumer did is read back from the outbox,
 * the dead letters and the group's committed offsets. Covered: messages become outbox rows in
 * order per conversation; offsets are committed only once the store has recorded the message
 * (a store held locked by another connection is retried, nothing skipped, nothing committed
 * meanwhile) and a restart of the group resumes right there; malformed and empty messages
 * become dead letters without stopping consumption; back-pressure pauses at outbox_max and
 * resumes as the outbox drains; the embedded broker; readiness follows the assignment; bad
 * librdkafka properties are refused naming the key, never a secret value. A lost database is
 * played by the store's own backend with faults injected at its operation table
 * (daemon/store_backend.h): consumption pauses, the log says so once, the store is asked about
 * once a second (no tight loop), and everything produced meanwhile is recorded, in order and
 * once, after it answers again; a held lock that the store's health check survives is no
 * outage; back-pressure and an outage pausing at once resume only when both are over. */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <jansson.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

#include "ctxhookd/clock.h"
#include "ctxhookd/buf.h"
#include "ctxhookd/config.h"
#include "ctxhookd/consumer.h"
#include "ctxhookd/log.h"
#include "ctxhookd/metrics.h"
#include "ctxhookd/pipeline.h"
#include "ctxhookd/store.h"
#include "store_backend.h"
#include "test_util.h"

#define PARTS   4
#define ACC     "12345678"
#define SECRET  "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
#define WAIT_MS 15000

static char dir[64];
static char db_path[128];
static char topic[64];
static char group[64];
static char bootstrap[128];
static rd_kafka_t *mock_rk;
static rd_kafka_mock_cluster_t *mock;
static rd_kafka_t *producer;
static struct config *cfg;
static struct store *st;
static struct metrics *metrics;
static struct pipeline *pl;
static struct consumer *cons;

static void sleep_ms(long ms)
{
        struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};

        nanosleep(&ts, NULL);
}

static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
        (void)rk;
        (void)opaque;
        cr_assert_eq(m->err, RD_KAFKA_RESP_ERR_NO_ERROR, "producing failed: %s",
                     rd_kafka_err2str(m->err));
}

static rd_kafka_t *new_producer(const char *boot)
{
        rd_kafka_conf_t *conf = rd_kafka_conf_new();
        char why[512];
        rd_kafka_t *rk;

        cr_assert_eq(rd_kafka_conf_set(conf, "bootstrap.servers", boot, why, sizeof(why)),
                     RD_KAFKA_CONF_OK, "%s", why);
        cr_assert_eq(rd_kafka_conf_set(conf, "linger.ms", "1", why, sizeof(why)), RD_KAFKA_CONF_OK,
                     "%s", why);
        rd_kafka_conf_set_dr_msg_cb(conf, on_delivery);
        rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, why, sizeof(why));
        cr_assert_not_null(rk, "%s", why);
        return rk;
}

static void setup(void)
{
        rd_kafka_conf_t *conf = rd_kafka_conf_new();
        char why[512];

        /* CTXHOOKD_TEST_KAFKA_DEBUG=cgrp,fetch (librdkafka debug contexts) shows what the
         * consumer and librdkafka do. */
        log_set_level(getenv("CTXHOOKD_TEST_KAFKA_DEBUG") ? LOG_LEVEL_DEBUG : LOG_LEVEL_NOTICE);
        strcpy(dir, "/tmp/ctxhookd-test-consumer-XXXXXX");
        cr_assert_not_null(mkdtemp(dir));
        snprintf(db_path, sizeof(db_path), "%s/context.db", dir);
        snprintf(topic, sizeof(topic), "conversation-events-%d", (int)getpid());
        snprintf(group, sizeof(group), "ctxhookd-test-%d", (int)getpid());

        /* Quiet: this handle only hosts the cluster and has no bootstrap.servers. */
        cr_assert_eq(rd_kafka_conf_set(conf, "log_level", "4", why, sizeof(why)), RD_KAFKA_CONF_OK);
        mock_rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, why, sizeof(why));
        cr_assert_not_null(mock_rk, "%s", why);
        mock = rd_kafka_mock_cluster_new(mock_rk, 1);
        cr_assert_not_null(mock);
        cr_assert_eq(rd_kafka_mock_topic_create(mock, topic, PARTS, 1), 0);
        snprintf(bootstrap, sizeof(bootstrap), "%s", rd_kafka_mock_cluster_bootstraps(mock));
        producer = new_producer(bootstrap);
        metrics = metrics_new();
        cr_assert_not_null(metrics);
}

static void teardown(void)
{
        cons = consumer_stop(cons);
        pl = pipeline_free(pl);
        st = store_close(st);
        cfg = config_free(cfg);
        metrics = metrics_free(metrics);
        if (producer)
                rd_kafka_destroy(producer);
        if (mock)
                rd_kafka_mock_cluster_destroy(mock);
        if (mock_rk)
                rd_kafka_destroy(mock_rk);
        test_rmtree(dir);
}

TestSuite(consumer, .init = setup, .fini = teardown, .timeout = 60);

/* Loads a configuration through config.c: brokers, the test's topic and group, extra [kafka]
 * lines, and one hook on conversation.end whose URL points nowhere.
 *
 * Every test passes a short session timeout to librdkafka: the mock broker lets a group that
 * changes membership (a member leaves, or rejoins because the topic appeared) wait the session
 * timeout less a second before it assigns again, 44 s with the default. It must stay above the
 * mock's 3 s initial rebalance delay, during which a first JoinGroup waits without heartbeats. */
static void load_config(const char *brokers, const char *kafka_extra)
{
        const char *debug = getenv("CTXHOOKD_TEST_KAFKA_DEBUG");
        struct ch_error err = {{0}};
        char text[4096], debug_line[256] = "";
        int rc;

        if (debug)
                snprintf(debug_line, sizeof(debug_line), "debug = %s\n", debug);
        snprintf(text, sizeof(text),
                 "[kafka]\nbrokers = %s\ntopic = %s\ngroup = %s\naccount = " ACC "\n"
                 "session.timeout.ms = 4500\nheartbeat.interval.ms = 500\n%s%s"
                 "[hook \"h\"]\non = conversation.end\nurl = http://127.0.0.1:9/nowhere\n"
                 "secret = " SECRET "\n",
                 brokers, topic, group, debug_line, kafka_extra ? kafka_extra : "");
        rc = config_load_string(text, "test.conf", &cfg, &err);
        cr_assert_eq(rc, 0, "config: %s", err.msg);
}

/* Opens the store at path (busy_ms: how long a write waits for a lock) and a pipeline on it. */
static void open_store(const char *path, int busy_ms)
{
        struct store_options o = {.path = path, .busy_timeout_ms = busy_ms, .pool_size = 2};
        struct ch_error err = {{0}};
        int rc;

        rc = store_open(&o, &st, &err);
        cr_assert_eq(rc, 0, "store_open: %s", err.msg);
        rc = pipeline_new(st, metrics, cfg, &pl);
        cr_assert_eq(rc, 0, "pipeline_new: %d", rc);
}

static void start(void)
{
        struct ch_error err = {{0}};
        int rc = consumer_start(cfg, pl, st, NULL, metrics, &cons, &err);

        cr_assert_eq(rc, 0, "consumer_start: %d %s", rc, err.msg);
        cr_assert_not_null(cons);
}

static void produce_raw(rd_kafka_t *rk, const char *key, const char *value)
{
        rd_kafka_resp_err_t e;

        e = rd_kafka_producev(rk, RD_KAFKA_V_TOPIC(cfg ? cfg->kafka.topic : topic),
                              RD_KAFKA_V_KEY(key, strlen(key)),
                              RD_KAFKA_V_VALUE((void *)value, value ? strlen(value) : 0),
                              RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_END);
        cr_assert_eq(e, 0, "produce: %s", rd_kafka_err2str(e));
}

/* One plain conversation.end event of conversation conv-<conv>, numbered seq. */
static void produce_event(rd_kafka_t *rk, int conv, int seq)
{
        char key[32], value[512];

        snprintf(key, sizeof(key), "conv-%d", conv);
        snprintf(value, sizeof(value),
                 "{\"kind\":\"conversation.end\",\"accountId\":\"" ACC "\",\"conversationId\":"
                 "\"%s\",\"closeReason\":\"SYSTEM\",\"time\":1800000000000,\"seq\":%d}",
                 key, seq);
        produce_raw(rk, key, value);
}

static void flush(rd_kafka_t *rk)
{
        cr_assert_eq(rd_kafka_flush(rk, 10000), 0);
        cr_assert_eq(rd_kafka_outq_len(rk), 0);
}

static int64_t depth(void)
{
        int64_t d = -1;

        cr_assert_eq(store_outbox_depth(st, &d), 0);
        return d;
}

/* Waits until the outbox holds exactly n deliveries. */
static void wait_depth(int64_t n)
{
        int64_t until = clock_wall_ms() + WAIT_MS;

        while (depth() != n && clock_wall_ms() < until)
                sleep_ms(20);
        cr_assert_eq(depth(), n, "outbox depth %" PRId64 ", expected %" PRId64, depth(), n);
}

static void wait_ready(void)
{
        int64_t until = clock_wall_ms() + WAIT_MS;

        while (!consumer_ready(cons) && clock_wall_ms() < until)
                sleep_ms(20);
        cr_assert(consumer_ready(cons), "no partitions assigned after %d ms", WAIT_MS);
}

/* The number in the "seq" member of the event inside a delivery's body. */
static int body_seq(const struct store_delivery *d)
{
        json_error_t e;
        json_t *body = json_loadb(d->body, d->body_len, 0, &e);
        json_t *seq;
        int v;

        cr_assert_not_null(body, "body is not JSON: %s", e.text);
        seq = json_object_get(json_object_get(json_object_get(body, "payload"), "raw"), "seq");
        cr_assert(json_is_integer(seq), "no payload.raw.seq in %.*s", (int)d->body_len, d->body);
        v = (int)json_integer_value(seq);
        json_decref(body);
        return v;
}

/* Claims and completes deliveries until n have been done, checking that each conversation's
 * events come out numbered 0, 1, 2, … (n_conv conversations). Returns how many were done. */
static int drain(int n, int n_conv)
{
        int next[64] = {0};
        int done = 0;
        int64_t until = clock_wall_ms() + 20000;

        cr_assert_leq(n_conv, 64);
        while (done < n && clock_wall_ms() < until) {
                struct store_delivery *d = NULL;
                size_t got = 0;

                cr_assert_eq(store_outbox_claim(st, clock_wall_ms(), 60000, 100, &d, &got), 0);
                for (size_t i = 0; i < got; i++) {
                        int conv = -1, seq = body_seq(&d[i]);

                        cr_assert_eq(sscanf(d[i].conversation, "conv-%d", &conv), 1);
                        cr_assert(conv >= 0 && conv < n_conv, "conversation %s", d[i].conversation);
                        cr_assert_eq(seq, next[conv], "%s: event %d delivered before event %d",
                                     d[i].conversation, seq, next[conv]);
                        next[conv]++;
                        cr_assert_eq(store_outbox_done(st, d[i].id, clock_wall_ms()), 0);
                        done++;
                }
                store_deliveries_free(d, got);
                if (got == 0)
                        sleep_ms(20);
        }
        return done;
}

/* The group's committed offset of each partition, asked of the broker by a client of the same
 * group that does not join it. RD_KAFKA_OFFSET_INVALID when nothing is committed. */
static void committed(const char *grp, int64_t out[PARTS])
{
        rd_kafka_conf_t *conf = rd_kafka_conf_new();
        rd_kafka_topic_partition_list_t *parts = rd_kafka_topic_partition_list_new(PARTS);
        char why[512];
        rd_kafka_t *rk;

        cr_assert_eq(rd_kafka_conf_set(conf, "bootstrap.servers", bootstrap, why, sizeof(why)),
                     RD_KAFKA_CONF_OK);
        cr_assert_eq(rd_kafka_conf_set(conf, "group.id", grp, why, sizeof(why)), RD_KAFKA_CONF_OK);
        rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, why, sizeof(why));
        cr_assert_not_null(rk, "%s", why);
        for (int p = 0; p < PARTS; p++)
                rd_kafka_topic_partition_list_add(parts, topic, p);
        cr_assert_eq(rd_kafka_committed(rk, parts, 10000), 0);
        for (int p = 0; p < PARTS; p++) {
                cr_assert_eq(parts->elems[p].err, 0);
                out[parts->elems[p].partition] = parts->elems[p].offset;
        }
        rd_kafka_topic_partition_list_destroy(parts);
        rd_kafka_destroy(rk);
}

/* Asserts that the group has committed exactly up to the end of every partition. */
static void assert_committed_to_end(void)
{
        int64_t c[PARTS];

        committed(group, c);
        for (int p = 0; p < PARTS; p++) {
                int64_t low, high;

                cr_assert_eq(
                    rd_kafka_query_watermark_offsets(producer, topic, p, &low, &high, 10000), 0);
                cr_assert_eq(c[p], high > 0 ? high : RD_KAFKA_OFFSET_INVALID,
                             "partition %d: committed %" PRId64 ", end %" PRId64, p, c[p], high);
        }
}

/* The value of a gauge in the metrics exposition. */
static long long gauge(const char *name)
{
        struct buf b;
        char pat[96];
        const char *at;
        long long v;

        buf_init(&b, 1 << 20);
        cr_assert_eq(metrics_render(metrics, &b), 0);
        snprintf(pat, sizeof(pat), "\n%s ", name);
        at = strstr(b.data, pat);
        cr_assert_not_null(at, "no %s in the metrics", name);
        v = strtoll(at + strlen(pat), NULL, 10);
        buf_free(&b);
        return v;
}

Test(consumer, messages_become_outbox_rows_in_order_per_conversation)
{
        load_config(bootstrap, NULL);
        open_store(db_path, 5000);
        start();
        cr_assert_str_eq(consumer_bootstrap(cons), bootstrap);
        wait_ready();

        /* 8 conversations spread over the partitions, 6 events each, interleaved. */
        for (int seq = 0; seq < 6; seq++)
                for (int conv = 0; conv < 8; conv++)
                        produce_event(producer, conv, seq);
        flush(producer);
        wait_depth(48);
        cr_assert_eq(drain(48, 8), 48);
        cr_assert_eq(depth(), 0);

        /* The thread reports progress while idle, and the lag is gone. */
        sleep_ms(1200);
        struct timespec mono;
        clock_gettime(CLOCK_MONOTONIC, &mono);
        cr_assert_geq(consumer_last_progress_ms(cons),
                      (int64_t)mono.tv_sec * 1000 + mono.tv_nsec / 1000000 - 1000);
        cr_assert_eq(gauge("ctxhookd_kafka_lag"), 0);
}

Test(consumer, restart_resumes_at_the_committed_offset)
{
        char db2[160];

        load_config(bootstrap, NULL);
        open_store(db_path, 5000);
        start();
        for (int i = 0; i < 12; i++)
                produce_event(producer, i % 3, i / 3);
        flush(producer);
        wait_depth(12);
        cons = consumer_stop(cons);
        /* Stopping committed everything that was recorded: up to the end of each partition. */
        assert_committed_to_end();

        /* The same group on a fresh store: had it started anywhere before the committed
         * offsets, the old messages would show up here as new (this store never saw their
         * dedup keys); had it skipped, the new ones would be missing. */
        for (int i = 0; i < 6; i++)
                produce_event(producer, 3 + i % 2, i / 2);
        flush(producer);
        pl = pipeline_free(pl);
        st = store_close(st);
        snprintf(db2, sizeof(db2), "%s/second.db", dir);
        open_store(db2, 5000);
        start();
        wait_depth(6);
        sleep_ms(1000);
        cr_assert_eq(depth(), 6, "messages before the committed offset were read again");
        cr_assert_eq(drain(6, 5), 6);
        cons = consumer_stop(cons);
        assert_committed_to_end();
}

Test(consumer, store_failure_retries_the_same_message_and_commits_nothing_meanwhile)
{
        int64_t c[PARTS];
        sqlite3 *db = NULL;
        char *msg = NULL;
        long long lag = 0;
        int64_t until;

        /* Commit stored offsets every 200 ms: one stored too early would be visible at once. */
        load_config(bootstrap, "auto.commit.interval.ms = 200\n");
        open_store(db_path, 100);
        start();
        wait_ready();

        /* Another connection holds the write lock: every write of the store fails (-EIO)
         * after its 100 ms busy timeout. */
        cr_assert_eq(sqlite3_open(db_path, &db), SQLITE_OK);
        cr_assert_eq(sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, &msg), SQLITE_OK, "%s", msg);
        for (int seq = 0; seq < 5; seq++)
                produce_event(producer, 0, seq);
        flush(producer);

        /* The consumer keeps failing on the first message: nothing recorded, nothing
         * committed, and the lag shows the waiting messages. */
        until = clock_wall_ms() + 8000;
        while (lag < 4 && clock_wall_ms() < until) {
                sleep_ms(100);
                lag = gauge("ctxhookd_kafka_lag");
        }
        cr_assert_geq(lag, 4, "lag %lld while 5 messages wait", lag);
        sleep_ms(1000);
        cr_assert_eq(depth(), 0);
        committed(group, c);
        for (int p = 0; p < PARTS; p++)
                cr_assert_eq(c[p], RD_KAFKA_OFFSET_INVALID,
                             "partition %d committed at %" PRId64 " before anything was recorded",
                             p, c[p]);
        cr_assert(consumer_ready(cons));

        /* The lock goes away: every message is recorded, in order, none skipped. */
        cr_assert_eq(sqlite3_exec(db, "ROLLBACK", NULL, NULL, &msg), SQLITE_OK, "%s", msg);
        sqlite3_close(db);
        wait_depth(5);
        cr_assert_eq(drain(5, 1), 5);
        until = clock_wall_ms() + 5000;
        while (gauge("ctxhookd_kafka_lag") != 0 && clock_wall_ms() < until)
                sleep_ms(100);
        cr_assert_eq(gauge("ctxhookd_kafka_lag"), 0);
        cons = consumer_stop(cons);
        assert_committed_to_end();
}

/* A store failure while a batch spans several partitions: none of them may skip or repeat a
 * message once the store is back. */
Test(consumer, store_failure_holds_back_every_partition_of_the_batch)
{
        sqlite3 *db = NULL;
        char *msg = NULL;
        int64_t c[PARTS];

        load_config(bootstrap, "auto.commit.interval.ms = 200\n");
        open_store(db_path, 100);
        start();
        wait_ready();

        cr_assert_eq(sqlite3_open(db_path, &db), SQLITE_OK);
        cr_assert_eq(sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, &msg), SQLITE_OK, "%s", msg);
        for (int seq = 0; seq < 5; seq++)
                for (int conv = 0; conv < 8; conv++)
                        produce_event(producer, conv, seq);
        flush(producer);
        sleep_ms(1500);
        cr_assert_eq(depth(), 0);
        committed(group, c);
        for (int p = 0; p < PARTS; p++)
                cr_assert_eq(c[p], RD_KAFKA_OFFSET_INVALID, "partition %d committed at %" PRId64, p,
                             c[p]);

        cr_assert_eq(sqlite3_exec(db, "ROLLBACK", NULL, NULL, &msg), SQLITE_OK, "%s", msg);
        sqlite3_close(db);
        wait_depth(40);
        sleep_ms(500);
        cr_assert_eq(depth(), 40, "a message was recorded twice");
        cr_assert_eq(drain(40, 8), 40);
        cons = consumer_stop(cons);
        assert_committed_to_end();
}

/* Thousands of messages, taken in batches: every one is queued exactly once and in order per
 * conversation, and the offsets committed reach the end of every partition. */
Test(consumer, thousands_of_messages_are_queued_exactly_once)
{
        enum { N_CONV = 50, PER_CONV = 60, N = N_CONV * PER_CONV };

        load_config(bootstrap, NULL);
        open_store(db_path, 5000);
        /* Produced before the consumer starts, so that it finds them waiting and batches. */
        for (int seq = 0; seq < PER_CONV; seq++)
                for (int conv = 0; conv < N_CONV; conv++)
                        produce_event(producer, conv, seq);
        flush(producer);
        start();
        wait_depth(N);
        sleep_ms(500);
        cr_assert_eq(depth(), N, "more deliveries than messages");
        cr_assert_eq(drain(N, N_CONV), N);
        cr_assert_eq(depth(), 0);
        cons = consumer_stop(cons);
        assert_committed_to_end();
}

Test(consumer, malformed_and_empty_messages_become_dead_letters)
{
        json_t *list = NULL;
        char prefix[128];
        int64_t dead = -1;

        load_config(bootstrap, NULL);
        open_store(db_path, 5000);
        start();
        /* All on one key: one partition, so the good ones after the bad prove consumption
         * went on past them. */
        produce_event(producer, 0, 0);
        produce_raw(producer, "conv-0", "{\"kind\": not json");
        produce_raw(producer, "conv-0", NULL);
        produce_event(producer, 0, 1);
        flush(producer);
        wait_depth(2);
        cr_assert_eq(store_dead_count(st, &dead), 0);
        cr_assert_eq(dead, 2);
        cr_assert_eq(store_dead_list(st, 0, 10, &list), 0);
        cr_assert_eq(json_array_size(list), 2);
        snprintf(prefix, sizeof(prefix), "kafka:%s/", topic);
        for (size_t i = 0; i < 2; i++) {
                const char *source =
                    json_string_value(json_object_get(json_array_get(list, i), "source"));

                cr_assert_not_null(source);
                cr_assert_eq(strncmp(source, prefix, strlen(prefix)), 0, "source %s", source);
        }
        cr_assert_str_eq(json_string_value(json_object_get(json_array_get(list, 0), "raw")),
                         "{\"kind\": not json");
        json_decref(list);
        cr_assert_eq(drain(2, 1), 2);
        cons = consumer_stop(cons);
        assert_committed_to_end();
}

Test(consumer, back_pressure_pauses_and_resumes)
{
        int64_t held, max = 5;

        load_config(bootstrap, NULL);
        cfg->delivery.outbox_max = max; /* config.c allows ≥ 100; small keeps the test quick */
        open_store(db_path, 5000);
        start();
        wait_ready();

        for (int conv = 0; conv < 10; conv++)
                produce_event(producer, conv, 0);
        flush(producer);
        /* Above outbox_max the consumer pauses (it looks every 200 ms, so it may have
         * recorded all ten first, or fewer). */
        {
                int64_t until = clock_wall_ms() + WAIT_MS;

                while (depth() <= max && clock_wall_ms() < until)
                        sleep_ms(20);
        }
        sleep_ms(600);
        held = depth();
        cr_assert(held > max && held <= 10, "depth %" PRId64, held);

        /* While paused, new messages stay in Kafka. */
        for (int i = 0; i < 30; i++)
                produce_event(producer, i % 10, 1 + i / 10);
        flush(producer);
        sleep_ms(1500);
        cr_assert_eq(depth(), held, "consumed while paused: depth %" PRId64 " → %" PRId64, held,
                     depth());
        cr_assert(consumer_ready(cons));

        /* Draining below 90% resumes, as often as needed, until all 40 are through. */
        cr_assert_eq(drain(40, 10), 40);
        cr_assert_eq(depth(), 0);
        cons = consumer_stop(cons);
        assert_committed_to_end();
}

Test(consumer, embedded_broker_consumes_what_is_produced_there)
{
        const rd_kafka_metadata_t *md = NULL;
        rd_kafka_topic_t *rkt;
        rd_kafka_t *p;
        const char *boot;
        int port = 0;

        load_config("embedded", NULL);
        open_store(db_path, 5000);
        start();
        boot = consumer_bootstrap(cons);
        cr_assert_not_null(boot);
        cr_assert_eq(sscanf(boot, "127.0.0.1:%d", &port), 1, "bootstrap %s", boot);
        cr_assert(port > 0 && port < 65536);
        cr_assert_str_neq(boot, bootstrap);

        p = new_producer(boot);
        rkt = rd_kafka_topic_new(p, topic, NULL);
        cr_assert_eq(rd_kafka_metadata(p, 0, rkt, &md, 10000), 0);
        cr_assert_eq(md->topic_cnt, 1);
        cr_assert_eq(md->topics[0].err, 0);
        cr_assert_eq(md->topics[0].partition_cnt, 4);
        rd_kafka_metadata_destroy(md);
        rd_kafka_topic_destroy(rkt);

        for (int i = 0; i < 8; i++)
                produce_event(p, i % 4, i / 4);
        flush(p);
        rd_kafka_destroy(p);
        wait_ready();
        wait_depth(8);

        /* The command the notice suggests, when kcat is installed. */
        if (system("command -v kcat >/dev/null 2>&1") == 0) {
                char file[128], cmd[512];
                FILE *f;

                snprintf(file, sizeof(file), "%s/event.json", dir);
                f = fopen(file, "w");
                cr_assert_not_null(f);
                fprintf(f, "{\"kind\":\"conversation.end\",\"accountId\":\"" ACC "\","
                           "\"conversationId\":\"conv-7\",\"closeReason\":\"SYSTEM\","
                           "\"seq\":0}");
                fclose(f);
                snprintf(cmd, sizeof(cmd), "kcat -P -b %s -t %s -k conv-7 %s", boot, topic, file);
                cr_assert_eq(system(cmd), 0, "%s failed", cmd);
                wait_depth(9);
        }
        cons = consumer_stop(cons);
}

/* Waits until cond holds, polling every 20 ms, at most WAIT_MS. */
#define WAIT_FOR(cond)                                                                             \
        do {                                                                                       \
                int64_t until_ = clock_wall_ms() + WAIT_MS;                                        \
                while (!(cond) && clock_wall_ms() < until_)                                        \
                        sleep_ms(20);                                                              \
                cr_assert((cond), "timed out waiting for %s", #cond);                              \
        } while (0)

Test(consumer, ready_only_while_partitions_are_assigned)
{
        struct ch_error err = {{0}};
        struct pipeline *pl2 = NULL;
        struct consumer *cons2 = NULL;
        int rc;

        /* A topic of one partition, which the broker says does not exist yet: the consumer
         * gets no partition. Extra keys reach librdkafka: metadata is refreshed every 300 ms
         * instead of every 5 minutes. */
        snprintf(topic, sizeof(topic), "single-%d", (int)getpid());
        cr_assert_eq(rd_kafka_mock_topic_create(mock, topic, 1, 1), 0);
        rd_kafka_mock_topic_set_error(mock, topic, RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART);
        load_config(bootstrap, "topic.metadata.refresh.interval.ms = 300\n");
        open_store(db_path, 5000);
        start();
        sleep_ms(1500);
        cr_assert_not(consumer_ready(cons), "ready without any partition");

        rd_kafka_mock_topic_set_error(mock, topic, RD_KAFKA_RESP_ERR_NO_ERROR);
        wait_ready();

        /* A second member of the group: after the rebalance one of them has the partition and
         * is ready, the other has none and is not. */
        cr_assert_eq(pipeline_new(st, metrics, cfg, &pl2), 0);
        rc = consumer_start(cfg, pl2, st, NULL, metrics, &cons2, &err);
        cr_assert_eq(rc, 0, "%s", err.msg);
        WAIT_FOR(!consumer_ready(cons)); /* revoked for the rebalance */
        /* The group may settle through more than one rebalance on a loaded machine, so no
         * moment is picked: for a second, the two are never ready at once, and in the end
         * exactly one is. */
        for (int i = 0; i < 100; i++) {
                cr_assert_not(consumer_ready(cons) && consumer_ready(cons2),
                              "both members ready with one partition");
                sleep_ms(10);
        }
        WAIT_FOR(consumer_ready(cons) + consumer_ready(cons2) == 1);

        produce_event(producer, 0, 0);
        flush(producer);
        wait_depth(1);
        cons2 = consumer_stop(cons2);
        cr_assert_null(cons2);
        pl2 = pipeline_free(pl2);
        cons = consumer_stop(cons);
        cr_assert_null(consumer_stop(NULL));
}

/* consumer_start with one extra librdkafka property: fails with -EINVAL, leaving *ret alone,
 * and returns the message. */
static void refused(const char *key, const char *value, char *msg, size_t size)
{
        struct config_kv kv = {(char *)key, (char *)value};
        struct config_kv *saved = cfg->kafka.extra;
        size_t n_saved = cfg->kafka.n_extra;
        struct consumer *c = (struct consumer *)&kv; /* any non-NULL marker */
        struct ch_error err = {{0}};
        int rc;

        cfg->kafka.extra = &kv;
        cfg->kafka.n_extra = 1;
        rc = consumer_start(cfg, pl, st, NULL, metrics, &c, &err);
        cfg->kafka.extra = saved;
        cfg->kafka.n_extra = n_saved;
        cr_assert_eq(rc, -EINVAL, "%s = %s: %d", key, value, rc);
        cr_assert_eq(c, (struct consumer *)&kv, "*ret written on failure");
        snprintf(msg, size, "%s", err.msg);
}

Test(consumer, bad_properties_are_refused_naming_the_key)
{
        char msg[CH_ERROR_MAX];

        load_config(bootstrap, NULL);
        open_store(db_path, 5000);

        refused("no.such.property", "1", msg, sizeof(msg));
        cr_assert(strstr(msg, "[kafka] no.such.property"), "%s", msg);

        refused("auto.offset.reset", "sideways", msg, sizeof(msg));
        cr_assert(strstr(msg, "[kafka] auto.offset.reset: "), "%s", msg);
        cr_assert(strstr(msg, "sideways"), "librdkafka's reason is missing: %s", msg);

        refused("ssl.key.password.typo", "hunter2", msg, sizeof(msg));
        cr_assert(strstr(msg, "ssl.key.password.typo"), "%s", msg);
        cr_assert_null(strstr(msg, "hunter2"), "a secret value in a message: %s", msg);

        refused("enable.auto.offset.store", "true", msg, sizeof(msg));
        cr_assert(strstr(msg, "enable.auto.offset.store"), "%s", msg);
}

/* ---- a lost database ---- */

/* The store's backend with faults: while `store_down` is set, every call of the threads under
 * test that the consumer makes (recording, the outbox depth, the health check) fails as a
 * backend that lost its database does, and is counted. The test's own thread reads the real
 * store meanwhile. */
static struct store_ops faulty_ops;
static const struct store_ops *real_ops;
static atomic_bool store_down;
static atomic_int pings_failed, calls_failed;
static _Thread_local bool test_thread;

#define DOWN_WHY "test: connection to server at \"127.0.0.1\", port 9 failed: refused"

static bool fail_now(void)
{
        return atomic_load(&store_down) && !test_thread;
}

static int faulty_ping(void *impl, char *why, size_t why_size)
{
        if (!fail_now())
                return real_ops->ping(impl, why, why_size);
        atomic_fetch_add(&pings_failed, 1);
        if (why)
                snprintf(why, why_size, "%s", DOWN_WHY);
        return -EIO;
}

static int faulty_enqueue_many(void *impl, const struct store_message *msgs, size_t n,
                               int64_t now_ms, int *results)
{
        if (!fail_now())
                return real_ops->outbox_enqueue_many(impl, msgs, n, now_ms, results);
        atomic_fetch_add(&calls_failed, 1);
        return -EIO;
}

static int faulty_depth(void *impl, int64_t *ret)
{
        if (!fail_now())
                return real_ops->outbox_depth(impl, ret);
        atomic_fetch_add(&calls_failed, 1);
        return -EIO;
}

static void inject_faults(void)
{
        real_ops = st->ops;
        faulty_ops = *real_ops;
        faulty_ops.ping = faulty_ping;
        faulty_ops.outbox_enqueue_many = faulty_enqueue_many;
        faulty_ops.outbox_depth = faulty_depth;
        st->ops = &faulty_ops;
        test_thread = true;
}

/* stderr (the log) goes to a file of the test's directory from here on. */
static char log_path[160];

static void capture_log(void)
{
        int fd;

        snprintf(log_path, sizeof(log_path), "%s/stderr.log", dir);
        fd = open(log_path, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND, 0600);
        cr_assert_geq(fd, 0);
        cr_assert_eq(dup2(fd, STDERR_FILENO), STDERR_FILENO);
        close(fd);
}

/* How many lines of the log so far contain needle. */
static int log_count(const char *needle)
{
        char line[4096];
        FILE *f = fopen(log_path, "r");
        int n = 0;

        cr_assert_not_null(f);
        while (fgets(line, sizeof(line), f))
                n += strstr(line, needle) != NULL;
        fclose(f);
        return n;
}

Test(consumer, lost_store_pauses_consumption_and_resumes_by_itself)
{
        char why[256] = "";
        int calls, pings;

        load_config(bootstrap, "auto.commit.interval.ms = 200\n");
        open_store(db_path, 5000);
        inject_faults();
        capture_log();
        start();
        wait_ready();
        for (int seq = 0; seq < 3; seq++)
                for (int conv = 0; conv < 4; conv++)
                        produce_event(producer, conv, seq);
        flush(producer);
        wait_depth(12);

        /* The database goes away. Even before a message needs it, the consumer notices (its
         * outbox depth check) and pauses. */
        atomic_store(&store_down, true);
        WAIT_FOR(consumer_store_unavailable(cons, why, sizeof(why)));
        cr_assert_str_eq(why, DOWN_WHY);
        for (int seq = 3; seq < 6; seq++)
                for (int conv = 0; conv < 4; conv++)
                        produce_event(producer, conv, seq);
        flush(producer);

        /* Over 3.5 s: nothing recorded, the store asked about once a second (not in a tight
         * loop, and nothing retried against it), one log line, readiness kept (the partitions
         * stay assigned, only paused). */
        atomic_store(&pings_failed, 0);
        atomic_store(&calls_failed, 0);
        sleep_ms(3500);
        pings = atomic_load(&pings_failed);
        calls = atomic_load(&calls_failed);
        cr_assert(pings >= 2 && pings <= 5, "%d health checks in 3.5 s, want about one a second",
                  pings);
        cr_assert_eq(calls, 0, "%d store calls while paused", calls);
        cr_assert_eq(depth(), 12, "recorded while the store was down");
        cr_assert(consumer_ready(cons));
        cr_assert_eq(log_count("kafka: store unavailable (" DOWN_WHY "): consumption paused"), 1);
        cr_assert_eq(log_count("consumption resumed"), 0);
        cr_assert_eq(log_count("recording"), 0, "a failed batch was logged: no outage path");

        /* Back: within about a second everything produced meanwhile is recorded, once, in
         * order per conversation; the log says so once. */
        atomic_store(&store_down, false);
        wait_depth(24);
        sleep_ms(500);
        cr_assert_eq(depth(), 24, "a message was recorded twice");
        cr_assert_not(consumer_store_unavailable(cons, why, sizeof(why)));
        cr_assert_eq(log_count("kafka: store available again: consumption resumed"), 1);
        cr_assert_eq(log_count("store unavailable"), 1);
        cr_assert_eq(drain(24, 4), 24);
        cons = consumer_stop(cons);
        assert_committed_to_end();
}

/* The store fails a batch while messages of several partitions are in it: the outage begins
 * there (no depth check came first), nothing is skipped or repeated after. */
Test(consumer, outage_found_by_a_failed_batch_skips_nothing)
{
        load_config(bootstrap, "auto.commit.interval.ms = 200\n");
        open_store(db_path, 5000);
        inject_faults();
        capture_log();
        /* Produced before the consumer starts, so that its first batch meets the outage. */
        for (int seq = 0; seq < 5; seq++)
                for (int conv = 0; conv < 8; conv++)
                        produce_event(producer, conv, seq);
        flush(producer);
        atomic_store(&store_down, true);
        start();
        WAIT_FOR(consumer_store_unavailable(cons, NULL, 0));
        sleep_ms(1500);
        cr_assert_eq(depth(), 0);
        cr_assert_eq(log_count("consumption paused"), 1);

        atomic_store(&store_down, false);
        wait_depth(40);
        sleep_ms(500);
        cr_assert_eq(depth(), 40, "a message was recorded twice");
        cr_assert_eq(drain(40, 8), 40);
        cr_assert_eq(log_count("consumption resumed"), 1);
        cons = consumer_stop(cons);
        assert_committed_to_end();
}

/* A write lock held past the busy timeout fails the batch but the store still answers its
 * health check: that is retried with back-off, and is no outage. */
Test(consumer, a_held_lock_is_no_outage)
{
        sqlite3 *db = NULL;
        char *msg = NULL;

        load_config(bootstrap, NULL);
        open_store(db_path, 100);
        capture_log();
        start();
        wait_ready();
        cr_assert_eq(sqlite3_open(db_path, &db), SQLITE_OK);
        cr_assert_eq(sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, &msg), SQLITE_OK, "%s", msg);
        produce_event(producer, 0, 0);
        flush(producer);
        {
                int64_t until = clock_wall_ms() + WAIT_MS;

                while (log_count("recording the message failed") == 0 && clock_wall_ms() < until)
                        sleep_ms(50);
        }
        cr_assert_geq(log_count("recording the message failed"), 1);
        cr_assert_not(consumer_store_unavailable(cons, NULL, 0));
        cr_assert_eq(log_count("store unavailable"), 0);
        cr_assert_eq(sqlite3_exec(db, "ROLLBACK", NULL, NULL, &msg), SQLITE_OK, "%s", msg);
        sqlite3_close(db);
        wait_depth(1);
        cons = consumer_stop(cons);
}

/* Back-pressure and an outage pausing at once: the store coming back does not resume while the
 * outbox is still over outbox_max, and draining it does. */
Test(consumer, outage_and_back_pressure_resume_only_when_both_are_over)
{
        int64_t held, max = 5;

        load_config(bootstrap, NULL);
        cfg->delivery.outbox_max = max;
        open_store(db_path, 5000);
        inject_faults();
        capture_log();
        start();
        wait_ready();
        for (int conv = 0; conv < 10; conv++)
                produce_event(producer, conv, 0);
        flush(producer);
        WAIT_FOR(log_count("Kafka consumption paused") == 1);
        sleep_ms(300);
        held = depth();
        cr_assert(held > max, "depth %" PRId64, held);

        atomic_store(&store_down, true);
        WAIT_FOR(consumer_store_unavailable(cons, NULL, 0));
        for (int i = 0; i < 20; i++)
                produce_event(producer, i % 10, 1 + i / 10);
        flush(producer);
        atomic_store(&store_down, false);
        WAIT_FOR(!consumer_store_unavailable(cons, NULL, 0));
        cr_assert_eq(log_count("store available again; consumption stays paused"), 1);
        cr_assert_eq(log_count("store available again: consumption resumed"), 0);
        sleep_ms(1500);
        cr_assert_eq(depth(), held, "consumed while the outbox was over outbox_max");

        cr_assert_eq(drain(30, 10), 30);
        cr_assert_eq(depth(), 0);
        cons = consumer_stop(cons);
        assert_committed_to_end();
}
