/* Load generator of the event pipeline benchmark (tests/bench/pipeline_bench.sh): a librdkafka
 * producer writing COUNT plain conversation events ({"kind":"conversation.end","accountId",
 * "conversationId":"c-<i>","closeReason":"SYSTEM","time":<ms>,"pad":"…"}, padded to --size
 * bytes, keyed by conversation id so they spread over the partitions) either as fast as it can
 * or paced at --rate events per second. "time" is the wall clock in milliseconds when the event
 * is handed to librdkafka, so a receiver can tell the event's latency. Paced, it sends without
 * lingering (linger.ms = 0) so that the producer adds no batching delay of its own. At the end
 * it waits for every delivery report and reads the topic's low and high watermarks, so the
 * caller can check that the broker kept everything (librdkafka's mock cluster drops the oldest
 * messages of a partition beyond about 5 MB).
 *
 * Usage: kafka_produce -b BROKERS -t TOPIC -n COUNT [--rate PER_S] [--size BYTES] [--first I]
 * Prints one line: produced=N failed=F seconds=S rate=R partitions=P low=L high=H
 * (low and high summed over the partitions). Exits 0 when every message was delivered, 1 when
 * some were not, 64 on usage errors. */
#include <errno.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <librdkafka/rdkafka.h>

#include "bench_util.h"

#define SIZE_MAX_BYTES 65536
#define FLUSH_MS       30000
#define WATERMARK_MS   5000

static long long delivered, failed;

static void usage(void)
{
        fprintf(stderr, "usage: kafka_produce -b BROKERS -t TOPIC -n COUNT [--rate PER_S] "
                        "[--size BYTES] [--first I]\n");
}

/* Runs on the thread calling rd_kafka_poll/flush, never concurrently with itself. */
static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
        (void)rk;
        (void)opaque;
        if (m->err) {
                if (failed == 0)
                        fprintf(stderr, "kafka_produce: delivery failed: %s\n",
                                rd_kafka_err2str(m->err));
                failed++;
        } else {
                delivered++;
        }
}

static int conf_set(rd_kafka_conf_t *conf, const char *key, const char *value)
{
        char why[512];

        if (rd_kafka_conf_set(conf, key, value, why, sizeof(why)) == RD_KAFKA_CONF_OK)
                return 0;
        fprintf(stderr, "kafka_produce: %s: %s\n", key, why);
        return -EINVAL;
}

/* The event for conversation c-<i>, padded to size bytes when it is shorter. */
static int format_event(char *buf, size_t cap, long long i, long long size, size_t *ret_len)
{
        static const char pad_open[] = ",\"pad\":\"";
        int n;

        n = snprintf(buf, cap,
                     "{\"kind\":\"conversation.end\",\"accountId\":\"12345678\","
                     "\"conversationId\":\"c-%lld\",\"closeReason\":\"SYSTEM\",\"time\":%lld",
                     i, wall_ms());
        if (n < 0 || (size_t)n + 2 >= cap)
                return -ENOBUFS;
        /* n bytes so far, then pad_open, the padding, '"' and '}' make size bytes. */
        if ((long long)n + (long long)sizeof(pad_open) + 1 < size) {
                size_t pad = (size_t)(size - n - (long long)sizeof(pad_open) - 1);

                if ((size_t)n + sizeof(pad_open) + pad + 2 >= cap)
                        return -ENOBUFS;
                memcpy(buf + n, pad_open, sizeof(pad_open) - 1);
                n += (int)sizeof(pad_open) - 1;
                memset(buf + n, 'x', pad);
                n += (int)pad;
                buf[n++] = '"';
        }
        buf[n++] = '}';
        buf[n] = '\0';
        *ret_len = (size_t)n;
        return 0;
}

/* Sum of the low and high watermarks over the topic's partitions, asked of the broker. */
static int watermarks(rd_kafka_t *rk, const char *topic, int *ret_parts, long long *ret_low,
                      long long *ret_high)
{
        const struct rd_kafka_metadata *md = NULL;
        rd_kafka_topic_t *rkt = rd_kafka_topic_new(rk, topic, NULL);
        long long low_sum = 0, high_sum = 0;
        rd_kafka_resp_err_t e;
        int parts;

        if (!rkt)
                return -ENOMEM;
        e = rd_kafka_metadata(rk, 0, rkt, &md, WATERMARK_MS);
        rd_kafka_topic_destroy(rkt);
        if (e || md->topic_cnt != 1 || md->topics[0].err) {
                fprintf(stderr, "kafka_produce: no metadata for %s: %s\n", topic,
                        rd_kafka_err2str(e                    ? e
                                         : md->topic_cnt == 1 ? md->topics[0].err
                                                              : e));
                if (md)
                        rd_kafka_metadata_destroy(md);
                return -EIO;
        }
        parts = md->topics[0].partition_cnt;
        for (int i = 0; i < parts; i++) {
                int64_t low, high;

                e = rd_kafka_query_watermark_offsets(rk, topic, md->topics[0].partitions[i].id,
                                                     &low, &high, WATERMARK_MS);
                if (e) {
                        fprintf(stderr, "kafka_produce: watermarks of %s/%d: %s\n", topic, i,
                                rd_kafka_err2str(e));
                        rd_kafka_metadata_destroy(md);
                        return -EIO;
                }
                low_sum += low;
                high_sum += high;
        }
        rd_kafka_metadata_destroy(md);
        *ret_parts = parts;
        *ret_low = low_sum;
        *ret_high = high_sum;
        return 0;
}

int main(int argc, char **argv)
{
        const char *brokers = NULL, *topic = NULL;
        long long count = -1, rate = 0, size = 300, first = 0, low = -1, high = -1;
        int parts = 0, r = 0;
        rd_kafka_conf_t *conf;
        rd_kafka_t *rk;
        char why[512], *buf;
        double t0, elapsed;
        struct timespec start;

        for (int i = 1; i < argc; i++) {
                const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;

                if (!v) {
                        usage();
                        return 64;
                }
                i++;
                if (strcmp(a, "-b") == 0)
                        brokers = v;
                else if (strcmp(a, "-t") == 0)
                        topic = v;
                else if (strcmp(a, "-n") == 0)
                        r = parse_ll(v, 1, 100000000, &count);
                else if (strcmp(a, "--rate") == 0)
                        r = parse_ll(v, 1, 10000000, &rate);
                else if (strcmp(a, "--size") == 0)
                        r = parse_ll(v, 1, SIZE_MAX_BYTES, &size);
                else if (strcmp(a, "--first") == 0)
                        r = parse_ll(v, 0, INT64_MAX / 2, &first);
                else
                        r = -EINVAL;
                if (r < 0) {
                        fprintf(stderr, "kafka_produce: bad %s '%s'\n", a, v);
                        usage();
                        return 64;
                }
        }
        if (!brokers || !topic || count < 0) {
                usage();
                return 64;
        }

        conf = rd_kafka_conf_new();
        /* Bulk: big batches, so that the mock broker keeps few message sets per partition (it
         * looks an offset up by walking them). Paced: every event goes out at once. */
        if (conf_set(conf, "bootstrap.servers", brokers) < 0 ||
            conf_set(conf, "client.id", "kafka_produce") < 0 ||
            conf_set(conf, "linger.ms", rate ? "0" : "20") < 0 ||
            conf_set(conf, "batch.num.messages", "10000") < 0 ||
            conf_set(conf, "batch.size", "1000000") < 0 ||
            conf_set(conf, "queue.buffering.max.messages", "1000000") < 0 ||
            conf_set(conf, "queue.buffering.max.kbytes", "1048576") < 0) {
                rd_kafka_conf_destroy(conf);
                return 64;
        }
        rd_kafka_conf_set_dr_msg_cb(conf, on_delivery);
        rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, why, sizeof(why));
        if (!rk) {
                fprintf(stderr, "kafka_produce: rd_kafka_new: %s\n", why);
                rd_kafka_conf_destroy(conf);
                return 1;
        }
        conf = NULL; /* owned by rk */

        buf = malloc(SIZE_MAX_BYTES + 256);
        if (!buf) {
                rd_kafka_destroy(rk);
                return 1;
        }
        clock_gettime(CLOCK_MONOTONIC, &start);
        t0 = mono_s();
        for (long long i = 0; i < count && r == 0; i++) {
                char key[32];
                size_t len;
                rd_kafka_resp_err_t e;

                if (rate) {
                        long long ns = i * 1000000000LL / rate;
                        struct timespec due = {
                            .tv_sec = start.tv_sec + (time_t)(ns / 1000000000LL),
                            .tv_nsec = start.tv_nsec + (long)(ns % 1000000000LL),
                        };

                        if (due.tv_nsec >= 1000000000L) {
                                due.tv_sec++;
                                due.tv_nsec -= 1000000000L;
                        }
                        while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &due, NULL) == EINTR)
                                ;
                }
                r = format_event(buf, SIZE_MAX_BYTES + 256, first + i, size, &len);
                if (r < 0)
                        break;
                snprintf(key, sizeof(key), "c-%lld", first + i);
                for (;;) {
                        e = rd_kafka_producev(
                            rk, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_KEY(key, strlen(key)),
                            RD_KAFKA_V_VALUE(buf, len), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                            RD_KAFKA_V_END);
                        if (e != RD_KAFKA_RESP_ERR__QUEUE_FULL)
                                break;
                        rd_kafka_poll(rk, 10);
                }
                if (e) {
                        fprintf(stderr, "kafka_produce: producev: %s\n", rd_kafka_err2str(e));
                        r = -EIO;
                        break;
                }
                rd_kafka_poll(rk, 0);
        }
        free(buf);
        if (rd_kafka_flush(rk, FLUSH_MS) != RD_KAFKA_RESP_ERR_NO_ERROR)
                fprintf(stderr, "kafka_produce: %d message(s) still unsent after %d ms\n",
                        rd_kafka_outq_len(rk), FLUSH_MS);
        elapsed = mono_s() - t0;
        if (watermarks(rk, topic, &parts, &low, &high) < 0)
                r = -EIO;
        rd_kafka_destroy(rk);

        printf("produced=%lld failed=%lld seconds=%.3f rate=%.0f partitions=%d low=%lld "
               "high=%lld\n",
               delivered, failed, elapsed, elapsed > 0 ? (double)delivered / elapsed : 0.0, parts,
               low, high);
        return r == 0 && failed == 0 && delivered == count ? 0 : 1;
}
