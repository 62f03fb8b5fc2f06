/* Microbenchmark of the store's outbox on a temporary SQLite file: enqueueing one small
 * delivery per call with a Kafka-style dedup key (the ingest path), claiming and completing
 * deliveries, the cost of a claim while a large backlog waits behind heads that are retry-
 * pending, of depth/next_due, and of expiring dedup keys. Prints figures; never fails on timing.
 *
 * Usage: outbox_bench [DELIVERIES]   (default 100000) */
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "ctxhookd/store.h"

#define T0 INT64_C(1800000000000)

static double now_s(void)
{
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int die(const char *what, int rc)
{
        fprintf(stderr, "outbox_bench: %s failed: %d\n", what, rc);
        return 1;
}

static const char body[] =
    "{\"timestamp\":1800000000000,\"headers\":[],\"payload\":{\"hook\":\"notes\","
    "\"event\":{\"id\":\"e1\",\"kind\":\"conversation.end\",\"accountId\":\"12345678\","
    "\"conversationId\":\"conv\",\"closeReason\":\"SYSTEM\",\"time\":1800000000000},"
    "\"raw\":{},\"context\":{\"agentNotes\":{\"namespace\":{},\"session\":{}}}}}";

static int enqueue_n(struct store *s, int n, int conversations, const char *key_prefix, double *t)
{
        char conv[32], wid[64], key[64];
        struct store_enqueue it = {.hook = "notes",
                                   .account = "12345678",
                                   .conversation = conv,
                                   .webhook_id = wid,
                                   .body = body,
                                   .body_len = sizeof(body) - 1};
        double start = now_s();

        for (int i = 0; i < n; i++) {
                int rc;

                snprintf(conv, sizeof(conv), "conv-%d", i % conversations);
                snprintf(wid, sizeof(wid), "msg_%d_notes", i);
                snprintf(key, sizeof(key), "%s/%d", key_prefix, i);
                rc = store_outbox_enqueue(s, key, &it, 1, T0);
                if (rc < 0)
                        return die("enqueue", rc);
        }
        *t = now_s() - start;
        return 0;
}

/* Enqueues n deliveries `per_call` at a time (one transaction each, one dedup key per call):
 * what grouping several messages into one transaction would gain. */
static int enqueue_grouped(struct store *s, int n, int per_call, double *t)
{
        struct store_enqueue *items = calloc((size_t)per_call, sizeof(*items));
        char(*convs)[32] = calloc((size_t)per_call, 32), (*wids)[64] = calloc((size_t)per_call, 64);
        double start = now_s();
        char key[64];

        if (!items || !convs || !wids)
                return die("calloc", -12);
        for (int i = 0; i < n; i += per_call) {
                int rc;

                for (int j = 0; j < per_call; j++) {
                        snprintf(convs[j], sizeof(convs[j]), "conv-%d", (i + j) % 10000);
                        snprintf(wids[j], sizeof(wids[j]), "grouped_%d", i + j);
                        items[j] = (struct store_enqueue){.hook = "notes",
                                                          .account = "12345678",
                                                          .conversation = convs[j],
                                                          .webhook_id = wids[j],
                                                          .body = body,
                                                          .body_len = sizeof(body) - 1};
                }
                snprintf(key, sizeof(key), "kafka:events/2/%d", i);
                rc = store_outbox_enqueue(s, key, items, (size_t)per_call, T0);
                if (rc < 0)
                        return die("grouped enqueue", rc);
        }
        *t = now_s() - start;
        free(items);
        free(convs);
        free(wids);
        return 0;
}

/* Claims batches of up to `batch` and completes each delivery, until the outbox is empty. */
static int drain(struct store *s, size_t batch, int64_t *ret_n, double *t)
{
        double start = now_s();
        int64_t total = 0;

        for (;;) {
                struct store_delivery *d = NULL;
                size_t n = 0;
                int rc = store_outbox_claim(s, T0 + 1, 60000, batch, &d, &n);

                if (rc < 0)
                        return die("claim", rc);
                if (n == 0)
                        break;
                for (size_t i = 0; i < n; i++) {
                        rc = store_outbox_done(s, d[i].id, T0 + 1);
                        if (rc < 0)
                                return die("done", rc);
                }
                total += (int64_t)n;
                store_deliveries_free(d, n);
        }
        *t = now_s() - start;
        *ret_n = total;
        return 0;
}

static int rm_entry(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
        (void)sb;
        (void)flag;
        (void)ftw;
        return remove(p);
}

static int run(const char *path, int n)
{
        struct store_options o = {.path = path, .busy_timeout_ms = 5000, .pool_size = 4};
        struct ch_error err = {{0}};
        struct store *s = NULL;
        int64_t drained = 0, v = 0, deleted = 0;
        double t;
        int rc, reps = 1000;

        rc = store_open(&o, &s, &err);
        if (rc < 0) {
                fprintf(stderr, "outbox_bench: %s\n", err.msg);
                return 1;
        }

        if (enqueue_n(s, n, 10000, "kafka:events/0", &t))
                return 1;
        printf("  enqueue (1 delivery, dedup key)   %8.2f µs per call (%.0f/s)\n", t / n * 1e6,
               n / t);

        t = now_s();
        for (int i = 0; i < reps; i++) {
                rc = store_outbox_depth(s, &v);
                if (rc == 0)
                        rc = store_outbox_next_due(s, &v);
                if (rc < 0)
                        return die("depth/next_due", rc);
        }
        t = now_s() - t;
        printf("  depth + next_due, %d queued  %8.2f µs per pair\n", n, t / reps * 1e6);

        if (drain(s, 64, &drained, &t))
                return 1;
        printf("  claim (batches of 64) + done      %8.2f µs per delivery (%.0f/s)\n",
               t / (double)drained * 1e6, (double)drained / t);

        if (enqueue_grouped(s, n / 64 * 64, 64, &t))
                return 1;
        printf("  enqueue, 64 deliveries per call     %8.2f µs per delivery (%.0f/s)\n",
               t / (n / 64 * 64) * 1e6, (n / 64 * 64) / t);
        if (drain(s, 64, &drained, &t))
                return 1;

        /* A backlog behind heads that wait for a retry: claims must not wade through it. */
        if (enqueue_n(s, n, 100, "kafka:events/1", &t))
                return 1;
        for (;;) {
                struct store_delivery *d = NULL;
                size_t k = 0;

                rc = store_outbox_claim(s, T0 + 1, 60000, 64, &d, &k);
                if (rc < 0)
                        return die("claim", rc);
                for (size_t i = 0; i < k; i++) {
                        rc = store_outbox_retry(s, d[i].id, 1, T0 + 3600000, "HTTP 503");
                        if (rc < 0)
                                return die("retry", rc);
                }
                store_deliveries_free(d, k);
                if (k == 0)
                        break;
        }
        t = now_s();
        for (int i = 0; i < reps; i++) {
                struct store_delivery *d = NULL;
                size_t k = 0;

                rc = store_outbox_claim(s, T0 + 2, 60000, 64, &d, &k);
                if (rc < 0 || k != 0)
                        return die("claim behind the backlog", rc < 0 ? rc : (int)k);
                store_deliveries_free(d, k);
        }
        t = now_s() - t;
        printf("  empty claim, %d waiting behind 100 retry-pending heads %8.2f µs\n", n,
               t / reps * 1e6);

        t = now_s();
        rc = store_dedup_expire(s, T0 + 1, &deleted);
        if (rc < 0)
                return die("dedup_expire", rc);
        t = now_s() - t;
        printf("  dedup_expire of %lld keys            %8.2f ms\n", (long long)deleted, t * 1e3);
        store_close(s);
        return 0;
}

int main(int argc, char **argv)
{
        char dir[] = "/tmp/ctxhookd-outbox-bench-XXXXXX", path[128];
        int n = argc > 1 ? atoi(argv[1]) : 100000, rc;

        if (n < 100) {
                fprintf(stderr, "usage: outbox_bench [DELIVERIES ≥ 100]\n");
                return 64;
        }
        if (!mkdtemp(dir)) {
                perror("outbox_bench: mkdtemp");
                return 1;
        }
        snprintf(path, sizeof(path), "%s/bench.db", dir);
        printf("outbox_bench: %d deliveries, SQLite WAL, synchronous=NORMAL\n", n);
        rc = run(path, n);
        nftw(dir, rm_entry, 8, FTW_DEPTH | FTW_PHYS);
        return rc;
}
