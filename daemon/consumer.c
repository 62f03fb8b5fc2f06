/* The Kafka consumer thread: one librdkafka high-level consumer in one group, subscribed to
 * [kafka] topic. When a message arrives, whatever librdkafka already holds is taken with it
 * (up to BATCH_MAX messages or BATCH_MAX_BYTES, never waiting) and the batch goes through
 * pipeline_process_batch(): one store transaction, because one per message would cap ingest at
 * the store's transaction rate. Only once the outcome is recorded is the offset after the
 * batch's last message of each of its partitions stored (a partition's messages arrive in
 * order; enable.auto.offset.store=false); stored offsets are committed by librdkafka's
 * auto-commit, on every revocation and once more, synchronously, at shutdown: at-least-once,
 * with the store's dedup key ("kafka:topic/partition/offset") making a repeat a no-op. When the
 * store fails, nothing of the batch is acknowledged: each of its partitions is sought back to
 * its first message in the batch, and until it is recorded no later message of those
 * partitions is processed, so nothing is skipped. Then, when store_health() says the database
 * itself is gone (an outage, not a lock held too long), the whole assignment is paused, the
 * outage is logged once, the store is asked again every second and consumption resumes by
 * itself when it answers; otherwise the thread backs off (500 ms doubling to 5 s) and tries
 * again. Every 200 ms the outbox depth is checked against [delivery] outbox_max and the
 * assignment paused or resumed (back-pressure); every second the lag (high watermark −
 * position, summed over the assignment) is published. brokers = "embedded" runs librdkafka's
 * mock cluster in-process, a real-protocol broker for trials. This thread is a top layer: it
 * logs. */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

#include "ctxhookd/clock.h"
#include "ctxhookd/cleanup.h"
#include "ctxhookd/consumer.h"
#include "ctxhookd/log.h"

#define POLL_MS           100 /* how soon a stop request is noticed */
#define PRESSURE_EVERY_MS 200
#define LAG_EVERY_MS      1000
#define BACKOFF_FIRST_MS  500
#define BACKOFF_MAX_MS    5000
#define STORE_CHECK_MS    1000 /* how often a lost store is asked again */
#define WHY_MAX           256
/* How long a seek may take: waiting for it means that no message librdkafka pre-fetched from
 * the old position is handed out afterwards. */
#define SEEK_WAIT_MS    2000
#define RESEEK_EVERY_MS 1000 /* see hold_blocks() */
#define EMBEDDED        "embedded"
#define EMBEDDED_PARTS  4
#define SOURCE_MAX      (STORE_DEDUP_KEY_MAX - 1)
/* A batch: what librdkafka already holds when a message arrives, recorded in one store
 * transaction (one each would cap ingest at the store's ~20k transactions/s). */
#define BATCH_MAX       256
#define BATCH_MAX_BYTES (4 << 20)

/* A partition whose message at `offset` could not be recorded: nothing after it may be
 * processed until it has been. */
struct hold {
        int32_t partition;
        int64_t offset;
        int64_t sought_ms; /* when it was last sought back to offset (monotonic) */
};

/* A partition's share of a batch. */
struct batch_part {
        const char *topic; /* owned by the batch's messages */
        int32_t partition;
        int64_t first;
        int64_t last;
};

struct consumer {
        const struct config *cfg;
        struct pipeline *pipeline;
        struct store *store;
        struct deliver *deliver;
        struct metrics *metrics;
        char *bootstrap;
        rd_kafka_t *mock_rk; /* owns the embedded cluster */
        rd_kafka_mock_cluster_t *mock;
        rd_kafka_t *rk;
        pthread_t thread;
        bool started;
        atomic_bool stop;
        atomic_bool ready;
        atomic_bool fatal;                /* raised by librdkafka (error callback or poll) */
        _Atomic int64_t last_progress_ms; /* CLOCK_MONOTONIC */
        _Atomic int64_t outbox_max;       /* [delivery] outbox_max, changed by a reload */

        /* The store outage as other threads see it (STATUS=): since when, and why. */
        pthread_mutex_t outage_lock;
        bool outage;
        char outage_why[WHY_MAX];

        /* Owned by the consumer thread (librdkafka's callbacks run on it, from poll/close). */
        bool fatal_seen;
        bool paused;            /* by back-pressure */
        bool store_down;        /* by a store outage; the assignment is paused while either holds */
        int64_t store_check_ms; /* when to ask the lost store again (monotonic) */
        bool depth_failing;
        int64_t backoff_ms; /* the next back-off after a store failure */
        struct hold *holds;
        size_t n_holds;
        size_t cap_holds;

        /* The batch being collected: its messages in arrival order, and per partition its
         * first and last offset in it. */
        rd_kafka_message_t *batch[BATCH_MAX];
        size_t n_batch;
        size_t batch_bytes;
        struct batch_part parts[BATCH_MAX];
        size_t n_parts;
        struct pipeline_message msgs[BATCH_MAX];
        struct pipeline_result results[BATCH_MAX];
        char sources[BATCH_MAX][SOURCE_MAX + 1];
};

/* librdkafka's own log lines (syslog levels), from any of its threads: log_msg is one write. */
static void on_log(const rd_kafka_t *rk, int level, const char *fac, const char *buf)
{
        (void)rk;
        if (level < LOG_LEVEL_ERR)
                level = LOG_LEVEL_ERR;
        log_msg(level, "kafka: %s: %s", fac, buf);
}

/* Errors librdkafka reports outside any message (brokers down, authentication, fatal). Most
 * are transient and librdkafka retries them itself; a fatal one ends consumption, which the
 * thread notices at its next turn. */
static void on_error(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
        struct consumer *c = opaque;

        (void)rk;
        if (err == RD_KAFKA_RESP_ERR__FATAL) {
                atomic_store(&c->fatal, true);
                return; /* logged once, with the underlying error, by enter_fatal() */
        }
        if (err == RD_KAFKA_RESP_ERR__TRANSPORT || err == RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN)
                log_warning("kafka: %s: %s", rd_kafka_err2name(err), reason);
        else
                log_error("kafka: %s: %s", rd_kafka_err2name(err), reason);
}

/* ---- holds ---- */

static struct hold *hold_find(struct consumer *c, int32_t partition)
{
        for (size_t i = 0; i < c->n_holds; i++)
                if (c->holds[i].partition == partition)
                        return &c->holds[i];
        return NULL;
}

static void hold_drop(struct consumer *c, int32_t partition)
{
        struct hold *h = hold_find(c, partition);

        if (h)
                *h = c->holds[--c->n_holds];
}

/* Remembers that partition must go on at offset. Without memory the synchronous seek alone
 * has to be trusted; the partition then still resumes at offset unless the seek timed out. */
static void hold_set(struct consumer *c, int32_t partition, int64_t offset)
{
        struct hold *h = hold_find(c, partition);

        if (!h) {
                if (c->n_holds == c->cap_holds) {
                        size_t cap = c->cap_holds ? c->cap_holds * 2 : 8;
                        struct hold *n = realloc(c->holds, cap * sizeof(*n));

                        if (!n) {
                                log_warning("kafka: out of memory remembering partition %" PRId32
                                            " must resume at offset %" PRId64,
                                            partition, offset);
                                return;
                        }
                        c->holds = n;
                        c->cap_holds = cap;
                }
                h = &c->holds[c->n_holds++];
                h->partition = partition;
        }
        h->offset = offset;
        h->sought_ms = clock_mono_ms();
}

static void hold_drop_list(struct consumer *c, const rd_kafka_topic_partition_list_t *parts)
{
        for (int i = 0; i < parts->cnt; i++)
                hold_drop(c, parts->elems[i].partition);
}

/* Seeks partition back to offset, waiting until librdkafka has dropped what it had pre-fetched
 * after it. */
static void seek_back(struct consumer *c, const char *topic, int32_t partition, int64_t offset)
{
        rd_kafka_topic_partition_list_t *parts = rd_kafka_topic_partition_list_new(1);
        rd_kafka_error_t *e;

        if (!parts) {
                log_warning("kafka: out of memory seeking %s/%" PRId32 " back", topic, partition);
                return;
        }
        rd_kafka_topic_partition_list_add(parts, topic, partition)->offset = offset;
        e = rd_kafka_seek_partitions(c->rk, parts, SEEK_WAIT_MS);
        if (e) {
                log_warning("kafka: seeking %s/%" PRId32 " back to offset %" PRId64
                            " failed: %s; later messages of it are held back until it is read",
                            topic, partition, offset, rd_kafka_error_string(e));
                rd_kafka_error_destroy(e);
        } else if (parts->elems[0].err) {
                log_warning("kafka: seeking %s/%" PRId32 " back to offset %" PRId64
                            " failed: %s; later messages of it are held back until it is read",
                            topic, partition, offset, rd_kafka_err2str(parts->elems[0].err));
        }
        rd_kafka_topic_partition_list_destroy(parts);
}

/* Whether a message must be passed over because an earlier message of its partition still
 * waits to be recorded. That happens when a seek timed out or when a pause and resume start
 * fetching at the position after the failed message; the partition is then sought back again
 * (at most once a second), and the passed-over message comes again in turn. */
static bool hold_blocks(struct consumer *c, const char *topic, int32_t partition, int64_t offset)
{
        struct hold *h = hold_find(c, partition);
        int64_t now;

        if (!h || h->offset == offset)
                return false;
        now = clock_mono_ms();
        if (now - h->sought_ms >= RESEEK_EVERY_MS) {
                h->sought_ms = now;
                seek_back(c, topic, partition, h->offset);
        }
        return true;
}

/* ---- back-pressure and lag ---- */

static void pause_or_resume(struct consumer *c, rd_kafka_topic_partition_list_t *parts, bool pause)
{
        rd_kafka_resp_err_t e;

        e = pause ? rd_kafka_pause_partitions(c->rk, parts)
                  : rd_kafka_resume_partitions(c->rk, parts);
        if (e)
                log_warning("kafka: %s partitions failed: %s", pause ? "pausing" : "resuming",
                            rd_kafka_err2str(e));
}

/* Sets the two reasons to pause and pauses or resumes the assignment when that makes it
 * change between consuming and not. */
static void set_paused(struct consumer *c, bool pressure, bool store_down)
{
        rd_kafka_topic_partition_list_t *parts = NULL;
        bool was = c->paused || c->store_down, now = pressure || store_down;

        c->paused = pressure;
        c->store_down = store_down;
        if (was == now || rd_kafka_assignment(c->rk, &parts))
                return;
        if (parts->cnt > 0)
                pause_or_resume(c, parts, now);
        rd_kafka_topic_partition_list_destroy(parts);
}

static void outage_publish(struct consumer *c, bool outage, const char *why)
{
        pthread_mutex_lock(&c->outage_lock);
        c->outage = outage;
        snprintf(c->outage_why, sizeof(c->outage_why), "%s", why);
        pthread_mutex_unlock(&c->outage_lock);
}

/* After a store call failed with r: when the database itself does not answer, the outage
 * begins: the assignment is paused and the log says so, once. Returns whether it did; false
 * means a passing failure (a lock held past the busy timeout …) that a retry may get past. */
static bool store_outage_begins(struct consumer *c, int r)
{
        char why[WHY_MAX] = "";

        if (r != -EIO)
                return false;
        if (c->store_down)
                return true;
        if (store_health(c->store, why, sizeof(why)) == 0)
                return false;
        set_paused(c, c->paused, true);
        c->store_check_ms = clock_mono_ms() + STORE_CHECK_MS;
        c->backoff_ms = 0;
        outage_publish(c, true, why[0] ? why : "no reason given");
        log_warning("kafka: store unavailable (%s): consumption paused; nothing is skipped, it "
                    "resumes by itself once the store answers (asked every %d ms)",
                    why[0] ? why : "no reason given", STORE_CHECK_MS);
        return true;
}

/* During an outage, every STORE_CHECK_MS: resumes consumption once the store answers. */
static void store_outage_check(struct consumer *c, int64_t now)
{
        char why[WHY_MAX] = "";

        if (!c->store_down || now < c->store_check_ms)
                return;
        c->store_check_ms = now + STORE_CHECK_MS;
        if (store_health(c->store, why, sizeof(why)) < 0)
                return;
        set_paused(c, c->paused, false);
        outage_publish(c, false, "");
        if (c->paused)
                log_notice("kafka: store available again; consumption stays paused until the "
                           "outbox drains below 90%% of [delivery] outbox_max");
        else
                log_notice("kafka: store available again: consumption resumed");
}

static void check_pressure(struct consumer *c)
{
        int64_t max = atomic_load(&c->outbox_max);
        int64_t depth;
        bool pause;
        int r;

        if (c->store_down)
                return; /* the depth cannot be read; the outage check resumes first */
        r = store_outbox_depth(c->store, &depth);
        if (r < 0 && store_outage_begins(c, r))
                return;
        if (r < 0) {
                if (!c->depth_failing)
                        log_warning("kafka: reading the outbox depth failed: %s; consumption "
                                    "stays %s until it can be read",
                                    strerror(-r), c->paused ? "paused" : "running");
                c->depth_failing = true;
                return;
        }
        c->depth_failing = false;

        if (!c->paused && depth > max)
                pause = true;
        else if (c->paused && depth * 10 < max * 9)
                pause = false;
        else
                return;
        set_paused(c, pause, c->store_down);
        if (pause)
                log_notice("outbox holds %" PRId64 " deliveries, more than [delivery] "
                           "outbox_max = %" PRId64 ": Kafka consumption paused until it drops "
                           "below 90%% of that",
                           depth, max);
        else
                log_notice("outbox down to %" PRId64 " deliveries: Kafka consumption resumed",
                           depth);
}

/* The lag from what librdkafka already knows (no request to the broker): the high watermark of
 * the last fetch response minus the position. A seek forgets the position, so a partition held
 * at a message that failed counts from that message. A partition that has returned no message
 * since it was assigned has no position yet and is left out, and while paused no fetches
 * refresh the watermark: the gauge then shows the lag as it was when consumption paused. */
static void update_lag(struct consumer *c)
{
        rd_kafka_topic_partition_list_t *parts = NULL;
        long long lag = 0;

        if (!c->metrics)
                return;
        if (rd_kafka_assignment(c->rk, &parts))
                return;
        if (rd_kafka_position(c->rk, parts) == RD_KAFKA_RESP_ERR_NO_ERROR) {
                for (int i = 0; i < parts->cnt; i++) {
                        const rd_kafka_topic_partition_t *p = &parts->elems[i];
                        const struct hold *h = hold_find(c, p->partition);
                        int64_t low, high, pos = h ? h->offset : p->offset;

                        if (p->err || pos < 0)
                                continue;
                        if (rd_kafka_get_watermark_offsets(c->rk, p->topic, p->partition, &low,
                                                           &high))
                                continue;
                        if (high > pos)
                                lag += high - pos;
                }
        }
        rd_kafka_topic_partition_list_destroy(parts);
        metrics_gauge_set(c->metrics, METRICS_KAFKA_LAG, lag);
}

/* ---- rebalancing ---- */

static void update_ready(struct consumer *c)
{
        rd_kafka_topic_partition_list_t *parts = NULL;
        bool ready = false;

        if (!rd_kafka_assignment(c->rk, &parts)) {
                ready = parts->cnt > 0 && !c->fatal_seen;
                rd_kafka_topic_partition_list_destroy(parts);
        }
        atomic_store(&c->ready, ready);
}

static void log_assign_error(const char *what, rd_kafka_resp_err_t e, rd_kafka_error_t *error)
{
        if (error) {
                log_error("kafka: %s failed: %s", what, rd_kafka_error_string(error));
                rd_kafka_error_destroy(error);
        } else if (e) {
                log_error("kafka: %s failed: %s", what, rd_kafka_err2str(e));
        }
}

/* Runs on the consumer thread (from rd_kafka_consumer_poll or rd_kafka_consumer_close). Eager
 * protocol: the whole assignment is replaced; cooperative (partition.assignment.strategy =
 * cooperative-sticky among the extra keys): only the listed partitions come or go. Before
 * partitions go, the offsets stored for them are committed, so their next owner starts right
 * after the last recorded message. */
static void on_rebalance(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                         rd_kafka_topic_partition_list_t *parts, void *opaque)
{
        struct consumer *c = opaque;
        bool cooperative = strcmp(rd_kafka_rebalance_protocol(rk), "COOPERATIVE") == 0;
        rd_kafka_resp_err_t e = RD_KAFKA_RESP_ERR_NO_ERROR;
        rd_kafka_error_t *error = NULL;

        switch (err) {
        case RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS:
                if (cooperative)
                        error = rd_kafka_incremental_assign(rk, parts);
                else
                        e = rd_kafka_assign(rk, parts);
                if (error || e) {
                        log_assign_error("assigning partitions", e, error);
                        break;
                }
                /* Starting at the committed offsets: no hold from a previous owner applies. */
                hold_drop_list(c, parts);
                if ((c->paused || c->store_down) && parts->cnt > 0)
                        pause_or_resume(c, parts, true);
                log_info("kafka: %d partition(s) of %s assigned (%s rebalancing)", parts->cnt,
                         c->cfg->kafka.topic, cooperative ? "cooperative" : "eager");
                break;
        case RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS:
                if (!rd_kafka_assignment_lost(rk) && !c->fatal_seen) {
                        e = rd_kafka_commit(rk, NULL, 0);
                        if (e && e != RD_KAFKA_RESP_ERR__NO_OFFSET)
                                log_warning("kafka: committing offsets before a rebalance "
                                            "failed: %s; the next owner may see some messages "
                                            "again (they are deduplicated)",
                                            rd_kafka_err2str(e));
                        e = RD_KAFKA_RESP_ERR_NO_ERROR;
                }
                if (cooperative)
                        error = rd_kafka_incremental_unassign(rk, parts);
                else
                        e = rd_kafka_assign(rk, NULL);
                log_assign_error("revoking partitions", e, error);
                if (cooperative)
                        hold_drop_list(c, parts);
                else
                        c->n_holds = 0;
                log_info("kafka: %d partition(s) of %s revoked%s", parts->cnt, c->cfg->kafka.topic,
                         rd_kafka_assignment_lost(rk) ? " (lost)" : "");
                break;
        default:
                log_error("kafka: rebalancing failed: %s", rd_kafka_err2str(err));
                if (cooperative)
                        error = rd_kafka_incremental_unassign(rk, parts);
                else
                        e = rd_kafka_assign(rk, NULL);
                log_assign_error("dropping the assignment", e, error);
                c->n_holds = 0;
                break;
        }
        update_ready(c);
}

/* ---- messages ---- */

static void enter_fatal(struct consumer *c)
{
        char reason[512];
        rd_kafka_resp_err_t e;

        if (c->fatal_seen)
                return;
        c->fatal_seen = true;
        atomic_store(&c->fatal, true);
        atomic_store(&c->ready, false);
        e = rd_kafka_fatal_error(c->rk, reason, sizeof(reason));
        log_error("kafka: fatal consumer error %s: %s; consumption has stopped for good. The "
                  "daemon keeps running (Context API, deliveries of what is queued) but "
                  "reports not ready; restart it to consume again",
                  rd_kafka_err2name(e), e ? reason : "(unknown)");
}

/* Waits before the same message is tried again, waking for a stop request. */
static void back_off(struct consumer *c)
{
        int64_t until = clock_mono_ms() + c->backoff_ms;

        while (!atomic_load(&c->stop) && clock_mono_ms() < until) {
                struct timespec ts = {0, POLL_MS * 1000000L};

                nanosleep(&ts, NULL);
                atomic_store(&c->last_progress_ms, clock_mono_ms());
        }
        c->backoff_ms = c->backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : c->backoff_ms * 2;
}

/* Stores the offset after the batch's last message of each of its partitions. */
static void store_offsets(struct consumer *c)
{
        rd_kafka_topic_partition_list_t *parts = rd_kafka_topic_partition_list_new((int)c->n_parts);
        rd_kafka_resp_err_t e;

        if (!parts) {
                /* Not acknowledged: after a restart the messages come again and are dedup
                 * no-ops. */
                log_warning("kafka: out of memory storing offsets");
                return;
        }
        for (size_t i = 0; i < c->n_parts; i++)
                rd_kafka_topic_partition_list_add(parts, c->parts[i].topic, c->parts[i].partition)
                    ->offset = c->parts[i].last + 1;
        e = rd_kafka_offsets_store(c->rk, parts);
        /* __STATE: the partition was revoked meanwhile; its next owner reads the messages again
         * and finds them recorded. */
        for (int i = 0; i < parts->cnt; i++) {
                rd_kafka_resp_err_t pe = e ? e : parts->elems[i].err;

                if (pe)
                        log_debug("kafka: storing offset %" PRId64 " of %s/%" PRId32 " failed: %s",
                                  parts->elems[i].offset, parts->elems[i].topic,
                                  parts->elems[i].partition, rd_kafka_err2str(pe));
        }
        rd_kafka_topic_partition_list_destroy(parts);
}

static struct batch_part *part_find(struct consumer *c, const char *topic, int32_t partition)
{
        for (size_t i = 0; i < c->n_parts; i++)
                if (c->parts[i].partition == partition && strcmp(c->parts[i].topic, topic) == 0)
                        return &c->parts[i];
        return NULL;
}

/* A message that carries an error rather than an event. */
static void handle_error(struct consumer *c, const rd_kafka_message_t *m)
{
        /* Only with enable.partition.eof = true among the extra keys; nothing to do. */
        if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF)
                return;
        if (m->err == RD_KAFKA_RESP_ERR__FATAL) {
                enter_fatal(c);
                return;
        }
        if (m->rkt)
                log_warning("kafka: consuming %s/%" PRId32 " failed: %s",
                            rd_kafka_topic_name(m->rkt), m->partition, rd_kafka_message_errstr(m));
        else
                log_warning("kafka: consuming failed: %s", rd_kafka_message_errstr(m));
}

/* Takes m over: adds it to the batch, or destroys it (an error, or held back). */
static void batch_add(struct consumer *c, rd_kafka_message_t *m)
{
        struct batch_part *part;
        const char *topic;

        if (m->err) {
                handle_error(c, m);
                rd_kafka_message_destroy(m);
                return;
        }
        topic = rd_kafka_topic_name(m->rkt);
        part = part_find(c, topic, m->partition);
        /* Once a partition's first message in the batch has passed its hold, the ones after
         * it follow in order. One at or before the batch's last of its partition (fetched
         * again after a rebalance) is either in the batch or was recorded before it: a repeat,
         * dropped. */
        if (part ? m->offset <= part->last : hold_blocks(c, topic, m->partition, m->offset)) {
                rd_kafka_message_destroy(m);
                return;
        }
        if (!part) {
                part = &c->parts[c->n_parts++];
                part->topic = topic;
                part->partition = m->partition;
                part->first = m->offset;
        }
        part->last = m->offset;
        c->batch[c->n_batch++] = m;
        c->batch_bytes += m->len;
}

/* Adds m, then whatever librdkafka already holds, without waiting, up to the batch limits. */
static void batch_collect(struct consumer *c, rd_kafka_message_t *m)
{
        batch_add(c, m);
        while (c->n_batch < BATCH_MAX && c->batch_bytes < BATCH_MAX_BYTES && !c->fatal_seen &&
               !atomic_load(&c->stop)) {
                m = rd_kafka_consumer_poll(c->rk, 0);
                if (!m)
                        break;
                batch_add(c, m);
        }
}

static void batch_clear(struct consumer *c)
{
        for (size_t i = 0; i < c->n_batch; i++)
                rd_kafka_message_destroy(c->batch[i]);
        c->n_batch = 0;
        c->batch_bytes = 0;
        c->n_parts = 0;
}

/* Records the batch through the pipeline and acknowledges it; when the store fails, nothing of
 * it is acknowledged: each of its partitions is sought back to its first message in the batch
 * and held there, and the thread backs off before trying again. */
static void batch_process(struct consumer *c)
{
        bool wake = false;
        int r;

        if (c->n_batch == 0)
                return;
        for (size_t i = 0; i < c->n_batch; i++) {
                const rd_kafka_message_t *m = c->batch[i];

                snprintf(c->sources[i], sizeof(c->sources[i]), "kafka:%s/%" PRId32 "/%" PRId64,
                         rd_kafka_topic_name(m->rkt), m->partition, m->offset);
                c->msgs[i] = (struct pipeline_message){
                    .source = c->sources[i],
                    .dedup_key = c->sources[i],
                    .data = m->payload ? m->payload : "",
                    .len = m->len,
                };
        }
        /* A message that slipped through the pause of an outage waits for the store too. */
        r = c->store_down ? -EIO
                          : pipeline_process_batch(c->pipeline, c->msgs, c->n_batch,
                                                   clock_wall_ms(), c->results);
        if (r < 0) {
                for (size_t i = 0; i < c->n_parts; i++) {
                        const struct batch_part *p = &c->parts[i];

                        hold_set(c, p->partition, p->first);
                        seek_back(c, p->topic, p->partition, p->first);
                }
                if (store_outage_begins(c, r)) {
                        batch_clear(c);
                        return;
                }
                if (c->backoff_ms < BACKOFF_FIRST_MS)
                        c->backoff_ms = BACKOFF_FIRST_MS;
                log_warning("%s%s: recording %s failed (%s): not acknowledged, trying again in "
                            "%" PRId64 " ms",
                            c->sources[0], c->n_batch > 1 ? " and later messages" : "",
                            c->n_batch > 1 ? "them" : "the message", strerror(-r), c->backoff_ms);
                batch_clear(c);
                back_off(c);
                return;
        }
        c->backoff_ms = 0;
        for (size_t i = 0; i < c->n_parts; i++)
                hold_drop(c, c->parts[i].partition);
        store_offsets(c);
        for (size_t i = 0; i < c->n_batch; i++) {
                if (c->results[i].dead)
                        log_warning("%s: dead letter: %s", c->sources[i], c->results[i].reason);
                if (c->results[i].deliveries > 0)
                        wake = true;
        }
        batch_clear(c);
        if (wake && c->deliver)
                deliver_wake(c->deliver);
}

/* ---- the thread ---- */

/* Leaves the group. The final offsets are committed by close itself: the revoke it triggers
 * commits in on_rebalance, and enable.auto.commit commits what is stored. No commit of our own
 * before it: a synchronous commit while the group is rebalancing (another instance just left)
 * fails with "rebalance in progress" and leaves librdkafka mid-assignment, after which close
 * hung in the revoke's assign or aborted on its !assignment_in_progress assertion (seen in 3 of
 * 10 runs of it_multi; the same assertion as librdkafka issue #4792). */
static void shut_down(struct consumer *c)
{
        rd_kafka_resp_err_t e;

        e = rd_kafka_consumer_close(c->rk);
        if (e && !c->fatal_seen)
                log_warning("kafka: closing the consumer failed: %s", rd_kafka_err2str(e));
        rd_kafka_destroy(c->rk);
        c->rk = NULL;
        atomic_store(&c->ready, false);
}

static void *consumer_main(void *arg)
{
        struct consumer *c = arg;
        int64_t next_pressure = 0, next_lag = 0;

        while (!atomic_load(&c->stop)) {
                rd_kafka_message_t *m;
                int64_t now = clock_mono_ms();

                atomic_store(&c->last_progress_ms, now);
                if (atomic_load(&c->fatal))
                        enter_fatal(c);
                if (c->fatal_seen) {
                        /* Alive but idle (so the watchdog sees progress): the daemon stays
                         * up, not ready. */
                        struct timespec ts = {0, POLL_MS * 1000000L};

                        nanosleep(&ts, NULL);
                        continue;
                }
                store_outage_check(c, now);
                if (now >= next_pressure) {
                        check_pressure(c);
                        next_pressure = now + PRESSURE_EVERY_MS;
                }
                if (now >= next_lag) {
                        update_lag(c);
                        next_lag = now + LAG_EVERY_MS;
                }
                m = rd_kafka_consumer_poll(c->rk, POLL_MS);
                if (!m)
                        continue;
                batch_collect(c, m);
                batch_process(c);
        }
        shut_down(c);
        return NULL;
}

/* ---- configuration ---- */

/* Keys whose value must never appear in a message: the words config.c masks, and then some.
 * Errs on the side of hiding (ssl.key.location is hidden too). */
static bool key_is_secret(const char *key)
{
        static const char *const words[] = {"password", "secret", "key",
                                            "token",    "jaas",   "oauthbearer.config"};

        for (size_t i = 0; i < sizeof(words) / sizeof(words[0]); i++)
                if (strstr(key, words[i]))
                        return true;
        return false;
}

/* Settings ctxhookd owns, as config.c refuses them too: the [kafka] options that set them, or
 * what at-least-once rests on. Checked again here because a struct config may be built without
 * config.c. */
static bool key_is_managed(const char *key)
{
        static const char *const keys[] = {"bootstrap.servers", "metadata.broker.list", "group.id",
                                           "enable.auto.offset.store", "enable.auto.commit"};

        for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++)
                if (strcmp(key, keys[i]) == 0)
                        return true;
        return false;
}

static int conf_set(rd_kafka_conf_t *conf, const char *key, const char *value, struct ch_error *err)
{
        char why[512];
        rd_kafka_conf_res_t res;

        res = rd_kafka_conf_set(conf, key, value, why, sizeof(why));
        if (res == RD_KAFKA_CONF_OK)
                return 0;
        /* librdkafka quotes the rejected value in some of its messages. */
        if (key_is_secret(key))
                ch_error_set(err, "[kafka] %s: %s", key,
                             res == RD_KAFKA_CONF_UNKNOWN
                                 ? "not a librdkafka configuration property"
                                 : "librdkafka rejects the value (not shown: the key looks "
                                   "secret)");
        else
                ch_error_set(err, "[kafka] %s: %s", key, why);
        return -EINVAL;
}

/* The consumer's configuration. Tunable defaults first, so that [kafka] extra keys may change
 * them, then the settings ctxhookd owns:
 * - auto.offset.reset = earliest: a group without committed offsets (a new group, or offsets
 *   expired on the broker) starts at the beginning of the topic, so no event is lost; a
 *   repeat is harmless (dedup).
 * - Memory stays bounded while consumption is paused or slow: at most
 *   queued.max.messages.kbytes = 16384 (16 MiB) pre-fetched for the whole consumer, in fetches
 *   of at most fetch.max.bytes = 4 MiB (≥ the default message.max.bytes; librdkafka still
 *   fetches a larger single message whole). queued.min.messages keeps librdkafka's default
 *   (100000): librdkafka 2.0 stops fetching a partition for a whole second once its queue
 *   reaches that count, and a low count (10000 was tried) capped a plain consumer at ~30k
 *   messages/s; 16 MiB is the bound that applies first with conversation events.
 * - With brokers = embedded, fetch.wait.max.ms = 10: the mock broker holds an empty fetch for
 *   the whole wait (500 ms by default) instead of answering when data arrives, as a real
 *   broker does, which would make every trial event wait up to half a second.
 * - enable.auto.offset.store = false: an offset is stored only after pipeline_process().
 * - enable.auto.commit = true: librdkafka commits the stored offsets every
 *   auto.commit.interval.ms (5 s by default); revocations and shutdown also commit
 *   synchronously. */
static int make_conf(struct consumer *c, rd_kafka_conf_t **ret, struct ch_error *err)
{
        static const char *const defaults[][2] = {
            {"client.id", "ctxhookd"},
            {"auto.offset.reset", "earliest"},
            {"queued.max.messages.kbytes", "16384"},
            {"fetch.max.bytes", "4194304"},
        };
        rd_kafka_conf_t *conf = rd_kafka_conf_new();
        int r = 0;

        if (!conf) {
                ch_error_set(err, "Kafka consumer: out of memory");
                return -ENOMEM;
        }
        for (size_t i = 0; r == 0 && i < sizeof(defaults) / sizeof(defaults[0]); i++)
                r = conf_set(conf, defaults[i][0], defaults[i][1], err);
        if (r == 0 && c->mock)
                r = conf_set(conf, "fetch.wait.max.ms", "10", err);
        for (size_t i = 0; r == 0 && i < c->cfg->kafka.n_extra; i++) {
                const struct config_kv *kv = &c->cfg->kafka.extra[i];

                if (key_is_managed(kv->key)) {
                        ch_error_set(err,
                                     "[kafka] %s: set by ctxhookd itself (brokers, group, and "
                                     "offsets stored only once an event is recorded)",
                                     kv->key);
                        r = -EINVAL;
                        break;
                }
                r = conf_set(conf, kv->key, kv->value, err);
        }
        if (r == 0)
                r = conf_set(conf, "bootstrap.servers", c->bootstrap, err);
        if (r == 0)
                r = conf_set(conf, "group.id", c->cfg->kafka.group, err);
        if (r == 0)
                r = conf_set(conf, "enable.auto.offset.store", "false", err);
        if (r == 0)
                r = conf_set(conf, "enable.auto.commit", "true", err);
        if (r < 0) {
                rd_kafka_conf_destroy(conf);
                return r;
        }
        rd_kafka_conf_set_log_cb(conf, on_log);
        rd_kafka_conf_set_error_cb(conf, on_error);
        rd_kafka_conf_set_rebalance_cb(conf, on_rebalance);
        rd_kafka_conf_set_opaque(conf, c);
        *ret = conf;
        return 0;
}

/* The in-process broker of brokers = "embedded": one mock broker, the topic created with
 * EMBEDDED_PARTS partitions. It keeps messages in memory, only about 5 MB per partition. */
static int embedded_start(struct consumer *c, struct ch_error *err)
{
        rd_kafka_conf_t *conf = rd_kafka_conf_new();
        const char *topic = c->cfg->kafka.topic;
        rd_kafka_resp_err_t e;
        char why[512];

        if (!conf) {
                ch_error_set(err, "embedded Kafka broker: out of memory");
                return -ENOMEM;
        }
        rd_kafka_conf_set_log_cb(conf, on_log);
        /* The helper handle only hosts the cluster and never connects anywhere: its notice
         * that no bootstrap.servers is configured would only confuse. */
        if (rd_kafka_conf_set(conf, "client.id", "ctxhookd-embedded-broker", why, sizeof(why)) !=
                RD_KAFKA_CONF_OK ||
            rd_kafka_conf_set(conf, "log_level", "4", why, sizeof(why)) != RD_KAFKA_CONF_OK) {
                rd_kafka_conf_destroy(conf);
                ch_error_set(err, "embedded Kafka broker: %s", why);
                return -EINVAL;
        }
        c->mock_rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, why, sizeof(why));
        if (!c->mock_rk) {
                rd_kafka_conf_destroy(conf);
                ch_error_set(err, "embedded Kafka broker: %s", why);
                return -EIO;
        }
        c->mock = rd_kafka_mock_cluster_new(c->mock_rk, 1);
        if (!c->mock) {
                ch_error_set(err, "embedded Kafka broker: cannot start the mock cluster");
                return -EIO;
        }
        e = rd_kafka_mock_topic_create(c->mock, topic, EMBEDDED_PARTS, 1);
        if (e) {
                ch_error_set(err, "embedded Kafka broker: creating topic %s failed: %s", topic,
                             rd_kafka_err2str(e));
                return -EIO;
        }
        c->bootstrap = strdup(rd_kafka_mock_cluster_bootstraps(c->mock));
        if (!c->bootstrap) {
                ch_error_set(err, "embedded Kafka broker: out of memory");
                return -ENOMEM;
        }
        log_notice("embedded Kafka broker (for trials) at %s, topic %s; produce with: "
                   "kcat -P -b %s -t %s (it keeps only about 5 MB per partition, in memory)",
                   c->bootstrap, topic, c->bootstrap, topic);
        return 0;
}

static int subscribe(struct consumer *c, struct ch_error *err)
{
        rd_kafka_topic_partition_list_t *topics = rd_kafka_topic_partition_list_new(1);
        rd_kafka_resp_err_t e;

        if (!topics) {
                ch_error_set(err, "Kafka consumer: out of memory");
                return -ENOMEM;
        }
        rd_kafka_topic_partition_list_add(topics, c->cfg->kafka.topic, RD_KAFKA_PARTITION_UA);
        e = rd_kafka_subscribe(c->rk, topics);
        rd_kafka_topic_partition_list_destroy(topics);
        if (e) {
                ch_error_set(err, "Kafka consumer: subscribing to %s failed: %s",
                             c->cfg->kafka.topic, rd_kafka_err2str(e));
                return -EINVAL;
        }
        return 0;
}

static void consumer_stopp(struct consumer **c)
{
        consumer_stop(*c);
}

int consumer_start(const struct config *cfg, struct pipeline *pipeline, struct store *store,
                   struct deliver *deliver, struct metrics *metrics, struct consumer **ret,
                   struct ch_error *err)
{
        _cleanup_(consumer_stopp) struct consumer *c = NULL;
        rd_kafka_conf_t *conf = NULL;
        char why[512];
        int r;

        if (!cfg->kafka.brokers || !cfg->kafka.brokers[0]) {
                ch_error_set(err, "[kafka] brokers is empty: no Kafka to consume from");
                return -EINVAL;
        }
        c = calloc(1, sizeof(*c));
        if (!c) {
                ch_error_set(err, "Kafka consumer: out of memory");
                return -ENOMEM;
        }
        c->cfg = cfg;
        c->pipeline = pipeline;
        c->store = store;
        c->deliver = deliver;
        c->metrics = metrics;
        atomic_init(&c->stop, false);
        atomic_init(&c->ready, false);
        atomic_init(&c->fatal, false);
        atomic_init(&c->last_progress_ms, clock_mono_ms());
        atomic_init(&c->outbox_max, cfg->delivery.outbox_max);
        pthread_mutex_init(&c->outage_lock, NULL);

        if (strcmp(cfg->kafka.brokers, EMBEDDED) == 0) {
                r = embedded_start(c, err);
                if (r < 0)
                        return r;
        } else {
                c->bootstrap = strdup(cfg->kafka.brokers);
                if (!c->bootstrap) {
                        ch_error_set(err, "Kafka consumer: out of memory");
                        return -ENOMEM;
                }
        }

        r = make_conf(c, &conf, err);
        if (r < 0)
                return r;
        c->rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, why, sizeof(why));
        if (!c->rk) {
                /* Only a successful rd_kafka_new() takes the configuration over. */
                rd_kafka_conf_destroy(conf);
                ch_error_set(err, "Kafka consumer: %s", why);
                return -EINVAL;
        }
        conf = NULL;
        /* The main queue (error callback, rebalances) is served by rd_kafka_consumer_poll. */
        rd_kafka_poll_set_consumer(c->rk);
        r = subscribe(c, err);
        if (r < 0)
                return r;

        r = -pthread_create(&c->thread, NULL, consumer_main, c);
        if (r < 0) {
                ch_error_set(err, "Kafka consumer: cannot start its thread: %s", strerror(-r));
                return r;
        }
        c->started = true;
        *ret = TAKE_PTR(c);
        return 0;
}

const char *consumer_bootstrap(const struct consumer *c)
{
        return c->bootstrap;
}

bool consumer_ready(const struct consumer *c)
{
        return atomic_load(&c->ready);
}

void consumer_set_outbox_max(struct consumer *c, int64_t outbox_max)
{
        atomic_store(&c->outbox_max, outbox_max);
}

bool consumer_store_unavailable(struct consumer *c, char *why, size_t why_size)
{
        bool outage;

        pthread_mutex_lock(&c->outage_lock);
        outage = c->outage;
        if (outage && why && why_size > 0)
                snprintf(why, why_size, "%s", c->outage_why);
        pthread_mutex_unlock(&c->outage_lock);
        return outage;
}

int64_t consumer_last_progress_ms(const struct consumer *c)
{
        return atomic_load(&c->last_progress_ms);
}

struct consumer *consumer_stop(struct consumer *c)
{
        if (!c)
                return NULL;
        if (c->started) {
                atomic_store(&c->stop, true);
                pthread_join(c->thread, NULL); /* the thread commits, closes and destroys rk */
        } else if (c->rk) {
                rd_kafka_consumer_close(c->rk);
                rd_kafka_destroy(c->rk);
        }
        if (c->mock)
                rd_kafka_mock_cluster_destroy(c->mock);
        if (c->mock_rk)
                rd_kafka_destroy(c->mock_rk);
        free(c->holds);
        free(c->bootstrap);
        pthread_mutex_destroy(&c->outage_lock);
        free(c);
        return NULL;
}
