/* Baseline of the event pipeline benchmark (tests/bench/pipeline_bench.sh): a plain librdkafka
 * high-level consumer with the consumer settings ctxhookd uses (daemon/consumer.c: earliest
 * offsets, at most 16 MiB pre-fetched, 4 MiB fetches, offsets stored by hand after
 * each message with one rd_kafka_offsets_store() call as the daemon does, auto-commit on) in a
 * group of its own, reading COUNT messages of the topic as fast as it can and doing nothing
 * else with them. Whatever the daemon's ingest rate falls short of this rate is the cost of
 * ctxhookd's own work per event (parse, route, build the webhook body, the store transaction),
 * since both read the same broker on the same machine.
 *
 * -X KEY=VALUE sets any librdkafka property after those (as [kafka] extra keys do for the
 * daemon), e.g. queued.max.messages.kbytes=65536 to see what the daemon's queue limit costs, or
 * fetch.wait.max.ms=5 to keep librdkafka's mock broker from holding an empty fetch for the
 * whole 500 ms default (a real broker answers as soon as data arrives; the mock does not).
 *
 * With --latency it also reads each message's "time" (milliseconds, as kafka_produce writes
 * it) and reports how long after that each message came out of rd_kafka_consumer_poll(): the
 * part of the event-to-webhook latency that Kafka and librdkafka alone account for.
 *
 * Usage: bare_consumer -b BROKERS -t TOPIC -g GROUP -n COUNT [-X KEY=VALUE]... [--latency]
 *                      [--timeout S]
 * Prints "assigned P" on stdout when the group gives it partitions (a producer may start then),
 * and at the end one line: consumed=N join_s=J read_s=R rate=M [p50_ms= p99_ms= max_ms=]
 * (join_s: start to first message; rate: messages per second from the first to the last).
 * Exits 0 when COUNT messages were read, 2 on timeout (default 60 s), 64 on usage errors. */
#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <librdkafka/rdkafka.h>

#include "bench_util.h"

#define POLL_MS   100
#define EXTRA_MAX 32

static void usage(void)
{
        fprintf(stderr, "usage: bare_consumer -b BROKERS -t TOPIC -g GROUP -n COUNT "
                        "[-X KEY=VALUE]... [--latency] [--timeout S]\n");
}

static int cmp_ll(const void *a, const void *b)
{
        long long x = *(const long long *)a, y = *(const long long *)b;

        return (x > y) - (x < y);
}

/* Index of the pct-th percentile of n sorted values (nearest rank). */
static long long rank(long long n, long long pct)
{
        return (n * pct + 99) / 100 - 1;
}

/* Eager assignment as the daemon does it, announced on stdout. */
static void on_rebalance(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                         rd_kafka_topic_partition_list_t *parts, void *opaque)
{
        (void)opaque;
        if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
                rd_kafka_assign(rk, parts);
                printf("assigned %d\n", parts->cnt);
                fflush(stdout);
        } else {
                rd_kafka_assign(rk, NULL);
        }
}

static int conf_set(rd_kafka_conf_t *conf, const char *key, const char *value)
{
        char why[512];

        if (rd_kafka_conf_set(conf, key, value, why, sizeof(why)) == RD_KAFKA_CONF_OK)
                return 0;
        fprintf(stderr, "bare_consumer: %s: %s\n", key, why);
        return -EINVAL;
}

/* Each "key=value" of -X, after the daemon's settings so that it may change them. */
static int conf_set_extra(rd_kafka_conf_t *conf, const char *const *extra, size_t n)
{
        for (size_t i = 0; i < n; i++) {
                const char *eq = strchr(extra[i], '=');
                char key[256];
                int r;

                if ((size_t)(eq - extra[i]) >= sizeof(key))
                        return -EINVAL;
                memcpy(key, extra[i], (size_t)(eq - extra[i]));
                key[eq - extra[i]] = '\0';
                r = conf_set(conf, key, eq + 1);
                if (r < 0)
                        return r;
        }
        return 0;
}

/* The same offset store the daemon makes after every message (consumer.c store_offset). */
static void store_offset(rd_kafka_t *rk, const char *topic, int32_t partition, int64_t next)
{
        rd_kafka_topic_partition_list_t *parts = rd_kafka_topic_partition_list_new(1);

        if (!parts)
                return;
        rd_kafka_topic_partition_list_add(parts, topic, partition)->offset = next;
        rd_kafka_offsets_store(rk, parts);
        rd_kafka_topic_partition_list_destroy(parts);
}

/* The "time" member of a kafka_produce event, -1 when there is none. A plain scan: parsing the
 * JSON would make this baseline slower than what it stands for. */
static long long event_time(const rd_kafka_message_t *m)
{
        static const char needle[] = "\"time\":";
        const char *p = m->payload;
        size_t n = m->len, k = sizeof(needle) - 1;

        for (size_t i = 0; p && i + k < n; i++) {
                if (memcmp(p + i, needle, k) == 0) {
                        long long v = 0;
                        size_t j = i + k;

                        if (j >= n || p[j] < '0' || p[j] > '9')
                                return -1;
                        for (; j < n && p[j] >= '0' && p[j] <= '9'; j++)
                                v = v * 10 + (p[j] - '0');
                        return v;
                }
        }
        return -1;
}

int main(int argc, char **argv)
{
        const char *brokers = NULL, *topic = NULL, *group = NULL;
        long long count = -1, timeout_s = 60, n = 0, *lat = NULL, n_lat = 0;
        const char *extra[EXTRA_MAX];
        size_t n_extra = 0;
        bool latency = false;
        double t_start, t_first = 0, t_last = 0, deadline;
        rd_kafka_conf_t *conf;
        rd_kafka_topic_partition_list_t *topics;
        rd_kafka_t *rk;
        char why[512];
        int r = 0;

        for (int i = 1; i < argc; i++) {
                const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;

                if (strcmp(a, "--latency") == 0) {
                        latency = true;
                        continue;
                }
                if (!v) {
                        usage();
                        return 64;
                }
                i++;
                if (strcmp(a, "-b") == 0)
                        brokers = v;
                else if (strcmp(a, "-t") == 0)
                        topic = v;
                else if (strcmp(a, "-g") == 0)
                        group = v;
                else if (strcmp(a, "-n") == 0)
                        r = parse_ll(v, 1, 100000000, &count);
                else if (strcmp(a, "-X") == 0 && strchr(v, '=') && n_extra < EXTRA_MAX)
                        extra[n_extra++] = v;
                else if (strcmp(a, "--timeout") == 0)
                        r = parse_ll(v, 1, 86400, &timeout_s);
                else
                        r = -EINVAL;
                if (r < 0) {
                        fprintf(stderr, "bare_consumer: bad %s '%s'\n", a, v);
                        usage();
                        return 64;
                }
        }
        if (!brokers || !topic || !group || count < 0) {
                usage();
                return 64;
        }
        if (latency) {
                lat = malloc((size_t)count * sizeof(*lat));
                if (!lat) {
                        fprintf(stderr, "bare_consumer: out of memory\n");
                        return 1;
                }
        }

        conf = rd_kafka_conf_new();
        /* daemon/consumer.c make_conf(), with a client id and group of its own. */
        if (conf_set(conf, "client.id", "bare_consumer") < 0 ||
            conf_set(conf, "auto.offset.reset", "earliest") < 0 ||
            conf_set(conf, "queued.max.messages.kbytes", "16384") < 0 ||
            conf_set(conf, "fetch.max.bytes", "4194304") < 0 ||
            conf_set(conf, "bootstrap.servers", brokers) < 0 ||
            conf_set(conf, "group.id", group) < 0 ||
            conf_set(conf, "enable.auto.offset.store", "false") < 0 ||
            conf_set(conf, "enable.auto.commit", "true") < 0 ||
            conf_set_extra(conf, extra, n_extra) < 0) {
                rd_kafka_conf_destroy(conf);
                free(lat);
                return 64;
        }
        rd_kafka_conf_set_rebalance_cb(conf, on_rebalance);
        rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, why, sizeof(why));
        if (!rk) {
                fprintf(stderr, "bare_consumer: rd_kafka_new: %s\n", why);
                rd_kafka_conf_destroy(conf);
                free(lat);
                return 1;
        }
        conf = NULL; /* owned by rk */
        rd_kafka_poll_set_consumer(rk);
        topics = rd_kafka_topic_partition_list_new(1);
        rd_kafka_topic_partition_list_add(topics, topic, RD_KAFKA_PARTITION_UA);
        if (rd_kafka_subscribe(rk, topics)) {
                fprintf(stderr, "bare_consumer: cannot subscribe to %s\n", topic);
                rd_kafka_topic_partition_list_destroy(topics);
                rd_kafka_destroy(rk);
                free(lat);
                return 1;
        }
        rd_kafka_topic_partition_list_destroy(topics);

        t_start = mono_s();
        deadline = t_start + (double)timeout_s;
        while (n < count && mono_s() < deadline) {
                rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, POLL_MS);

                if (!m)
                        continue;
                if (m->err) {
                        if (m->err != RD_KAFKA_RESP_ERR__PARTITION_EOF)
                                fprintf(stderr, "bare_consumer: %s\n", rd_kafka_message_errstr(m));
                        rd_kafka_message_destroy(m);
                        continue;
                }
                if (latency) {
                        long long t = event_time(m);

                        if (t >= 0)
                                lat[n_lat++] = wall_ms() - t;
                }
                store_offset(rk, topic, m->partition, m->offset + 1);
                rd_kafka_message_destroy(m);
                t_last = mono_s();
                if (n++ == 0)
                        t_first = t_last;
        }
        rd_kafka_consumer_close(rk);
        rd_kafka_destroy(rk);

        printf("consumed=%lld join_s=%.3f read_s=%.3f rate=%.0f", n, n ? t_first - t_start : 0.0,
               n ? t_last - t_first : 0.0,
               n > 1 && t_last > t_first ? (double)(n - 1) / (t_last - t_first) : 0.0);
        if (latency && n_lat > 0) {
                qsort(lat, (size_t)n_lat, sizeof(*lat), cmp_ll);
                printf(" p50_ms=%lld p99_ms=%lld max_ms=%lld", lat[rank(n_lat, 50)],
                       lat[rank(n_lat, 99)], lat[n_lat - 1]);
        }
        printf("\n");
        free(lat);
        if (n < count) {
                fprintf(stderr, "bare_consumer: read %lld of %lld messages in %lld s\n", n, count,
                        timeout_s);
                return 2;
        }
        return 0;
}
