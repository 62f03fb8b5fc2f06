/* Unit tests of what only the PostgreSQL store has to get right (test_store_pg and
 * test_outbox_pg run the shared suite): several ctxhookd instances on one database (two
 * struct store on one schema stand for two hosts) opening a fresh schema together, claiming
 * the outbox together without sharing a delivery or breaking a conversation's order, taking
 * over a dead instance's lease, and reading what the other wrote without a stale cache;
 * losing the server's connections and getting them back; check-config's probe; and the
 * connection-string helpers (password masking, libpq's own validation). Each test works in a
 * schema of its own in the cluster of the ctest fixture (tests/test_pg.h). */
#define CTXHOOKD_TEST_PG 1 /* tests/test_store_backend.h: always the PostgreSQL backend */
#include <criterion/criterion.h>
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "ctxhookd/clock.h"
#include "ctxhookd/store.h"
#include "test_pg.h"
#include "test_store_backend.h"

#define T0  INT64_C(1800000000000) /* 2027-01-15T08:00:00.000Z */
#define ACC "12345678"

static char url[TEST_PG_URL_MAX];

static void setup(void)
{
        test_pg_url(url, sizeof(url));
}

static void teardown(void)
{
        test_pg_drop(url);
}

/* ---- Instances starting together ---- */

TestSuite(instances, .init = setup, .fini = teardown);

struct opener {
        const char *url;
        pthread_barrier_t *go;
        struct store *s;
        int rc;
        char msg[CH_ERROR_MAX];
};

static void *opener_main(void *arg)
{
        struct opener *o = arg;
        struct store_options opts = test_store_options(o->url, 2, 5000);
        struct ch_error err = {{0}};

        pthread_barrier_wait(o->go);
        o->rc = store_open(&opts, &o->s, &err);
        snprintf(o->msg, sizeof(o->msg), "%s", err.msg);
        return NULL;
}

Test(instances, two_opening_one_fresh_schema_together_make_one_schema)
{
        struct store_options o = test_store_options(url, 1, 5000);
        int latest = store_schema_latest(&o);

        cr_assert_geq(latest, 1);
        /* A few rounds, each on a fresh schema, to give the race a chance to show. */
        for (int round = 0; round < 5; round++) {
                char u[TEST_PG_URL_MAX], n[32];
                pthread_barrier_t go;
                struct opener op[2];
                pthread_t t[2];
                int v[2] = {-1, -1};

                test_pg_url(u, sizeof(u));
                cr_assert_eq(pthread_barrier_init(&go, NULL, 2), 0);
                for (int i = 0; i < 2; i++) {
                        op[i] = (struct opener){.url = u, .go = &go};
                        cr_assert_eq(pthread_create(&t[i], NULL, opener_main, &op[i]), 0);
                }
                for (int i = 0; i < 2; i++) {
                        pthread_join(t[i], NULL);
                        cr_assert_eq(op[i].rc, 0, "round %d: opener %d: %d %s", round, i, op[i].rc,
                                     op[i].msg);
                }
                pthread_barrier_destroy(&go);
                for (int i = 0; i < 2; i++) {
                        cr_assert_eq(store_schema_version(op[i].s, &v[i]), 0);
                        cr_assert_eq(v[i], latest, "round %d: opener %d at version %d", round, i,
                                     v[i]);
                }
                /* One schema: one version row, and what one instance writes the other reads. */
                test_pg_value(u, "SELECT count(*) FROM ctxhookd_schema", n, sizeof(n));
                cr_assert_str_eq(n, "1", "round %d: %s rows of schema version", round, n);
                cr_assert_eq(store_ns_create(op[0].s, ACC, "shared", 60, T0), 0);
                json_t *a = NULL;
                cr_assert_eq(store_ns_list(op[1].s, ACC, &a), 0);
                cr_assert_eq(json_array_size(a), 1);
                json_decref(a);
                for (int i = 0; i < 2; i++)
                        store_close(op[i].s);
                test_pg_drop(u);
        }
}

/* One instance's writes are seen by the other at once, though both asked for a read cache:
 * nothing of another host's is cached. */
Test(instances, each_reads_what_the_other_wrote_at_once)
{
        struct store *a = test_store_open(url, 2, 5000), *b = test_store_open(url, 2, 5000);
        unsigned char h1[STORE_KEY_HASH_LEN], h2[STORE_KEY_HASH_LEN], got[STORE_KEY_HASH_LEN];
        char *text = NULL;

        memset(h1, 1, sizeof(h1));
        memset(h2, 2, sizeof(h2));
        for (int round = 0; round < 3; round++) {
                json_t *v = json_integer(round);
                char want[16];

                cr_assert_eq(store_prop_put(b, ACC, "notes", "c1", "p", v, NULL, T0, NULL), 0);
                json_decref(v);
                snprintf(want, sizeof(want), "%d", round);
                for (int i = 0; i < 3; i++) { /* read again: a cache would answer now */
                        cr_assert_eq(
                            store_prop_get(a, ACC, "notes", "c1", "p", T0, &text, NULL, NULL), 0);
                        cr_assert_str_eq(text, want, "round %d, read %d", round, i);
                        free(text);
                }
                cr_assert_eq(store_key_set(b, ACC, round % 2 ? h2 : h1, T0), 0);
                for (int i = 0; i < 3; i++) {
                        cr_assert_eq(store_key_get(a, ACC, got), 0);
                        cr_assert_arr_eq(got, round % 2 ? h2 : h1, sizeof(got));
                }
        }
        cr_assert_eq(store_session_delete(b, ACC, "notes", "c1"), 0);
        cr_assert_eq(store_prop_get(a, ACC, "notes", "c1", "p", T0, &text, NULL, NULL), -ENOENT);
        store_close(a);
        store_close(b);
}

/* ---- Two instances on one outbox ---- */

#define HOOKS    2
#define CONVS    20
#define PER_PAIR 10
#define ROWS     (HOOKS * CONVS * PER_PAIR)

struct shared_log {
        pthread_mutex_t mu;
        int claimed[ROWS];       /* per delivery, how often it was claimed */
        int next[HOOKS * CONVS]; /* per queue, the sequence number expected next */
        atomic_int done;         /* deliveries completed */
        char failure[256];       /* the first failure seen */
};

struct worker {
        struct store *s;
        struct shared_log *log;
};

static void log_failure(struct shared_log *log, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void log_failure(struct shared_log *log, const char *fmt, ...)
{
        va_list ap;

        pthread_mutex_lock(&log->mu);
        if (!log->failure[0]) {
                va_start(ap, fmt);
                vsnprintf(log->failure, sizeof(log->failure), fmt, ap);
                va_end(ap);
        }
        pthread_mutex_unlock(&log->mu);
}

/* webhook ids are "<row> <hook> <conversation> <sequence in its queue>". */
static void *claim_worker(void *arg)
{
        struct worker *w = arg;
        struct shared_log *log = w->log;
        int64_t deadline = clock_mono_ms() + 60000;

        while (atomic_load(&log->done) < ROWS && !log->failure[0]) {
                struct store_delivery *d = NULL;
                size_t n = 0;
                int rc = store_outbox_claim(w->s, T0, 600000, 3, &d, &n);

                if (rc < 0) {
                        log_failure(log, "claim: %d", rc);
                        break;
                }
                if (clock_mono_ms() > deadline) {
                        log_failure(log, "not done after 60 s: %d of %d", atomic_load(&log->done),
                                    ROWS);
                        store_deliveries_free(d, n);
                        break;
                }
                /* Logged at claim time: the next of a queue is claimable only once this one is
                 * done, which happens after this. */
                pthread_mutex_lock(&log->mu);
                for (size_t i = 0; i < n; i++) {
                        int row, hook, conv, seq, q;

                        if (sscanf(d[i].webhook_id, "%d %d %d %d", &row, &hook, &conv, &seq) != 4 ||
                            row < 0 || row >= ROWS) {
                                pthread_mutex_unlock(&log->mu);
                                log_failure(log, "bad webhook id %s", d[i].webhook_id);
                                pthread_mutex_lock(&log->mu);
                                continue;
                        }
                        q = hook * CONVS + conv;
                        log->claimed[row]++;
                        if (log->next[q] != seq && !log->failure[0])
                                snprintf(log->failure, sizeof(log->failure),
                                         "queue h%d/c%d: claimed #%d while #%d was next", hook,
                                         conv, seq, log->next[q]);
                        log->next[q] = seq + 1;
                }
                pthread_mutex_unlock(&log->mu);
                for (size_t i = 0; i < n; i++) {
                        rc = store_outbox_done(w->s, d[i].id, T0);
                        if (rc < 0)
                                log_failure(log, "done(%s): %d", d[i].webhook_id, rc);
                        else
                                atomic_fetch_add(&log->done, 1);
                }
                store_deliveries_free(d, n);
                if (n == 0)
                        usleep(1000); /* every head is in the other instance's hands */
        }
        return NULL;
}

Test(instances, claiming_together_shares_nothing_and_keeps_each_conversations_order)
{
        struct store *inst[2] = {test_store_open(url, 2, 5000), test_store_open(url, 2, 5000)};
        static struct shared_log log;
        struct worker w[4];
        pthread_t t[4];
        char hook[HOOKS][8], conv[CONVS][8];
        int seq[HOOKS * CONVS] = {0};
        int64_t depth = -1;

        memset(&log, 0, sizeof(log));
        pthread_mutex_init(&log.mu, NULL);
        for (int h = 0; h < HOOKS; h++)
                snprintf(hook[h], sizeof(hook[h]), "hook%d", h);
        for (int c = 0; c < CONVS; c++)
                snprintf(conv[c], sizeof(conv[c]), "conv%d", c);
        /* Interleaved over the queues, enqueued by both instances in turn. */
        for (int row = 0; row < ROWS; row++) {
                int h = row % HOOKS, c = (row / HOOKS) % CONVS;
                char wid[64];
                struct store_enqueue it = {.hook = hook[h],
                                           .account = ACC,
                                           .conversation = conv[c],
                                           .webhook_id = wid,
                                           .body = "{}",
                                           .body_len = 2};

                snprintf(wid, sizeof(wid), "%d %d %d %d", row, h, c, seq[h * CONVS + c]++);
                cr_assert_eq(store_outbox_enqueue(inst[row % 2], NULL, &it, 1, T0), 0);
        }
        cr_assert_eq(store_outbox_depth(inst[0], &depth), 0);
        cr_assert_eq(depth, ROWS);

        for (int i = 0; i < 4; i++) {
                w[i] = (struct worker){.s = inst[i % 2], .log = &log};
                cr_assert_eq(pthread_create(&t[i], NULL, claim_worker, &w[i]), 0);
        }
        for (int i = 0; i < 4; i++)
                pthread_join(t[i], NULL);
        cr_assert_eq(log.failure[0], '\0', "%s", log.failure);
        for (int row = 0; row < ROWS; row++)
                cr_assert_eq(log.claimed[row], 1, "delivery %d claimed %d times", row,
                             log.claimed[row]);
        for (int q = 0; q < HOOKS * CONVS; q++)
                cr_assert_eq(log.next[q], PER_PAIR, "queue %d: %d of %d delivered", q, log.next[q],
                             PER_PAIR);
        cr_assert_eq(atomic_load(&log.done), ROWS);
        for (int i = 0; i < 2; i++) {
                cr_assert_eq(store_outbox_depth(inst[i], &depth), 0);
                cr_assert_eq(depth, 0);
                store_close(inst[i]);
        }
        pthread_mutex_destroy(&log.mu);
}

/* Enqueueing and claiming at the same time, from both instances, into the same few
 * conversations: a queue must never have two deliveries claimable at once (two "heads"), and
 * what one thread enqueued into a queue goes out in that order. */
#define MIX_QUEUES    5
#define MIX_ENQUEUERS 4
#define MIX_EACH      60
#define MIX_ROWS      (MIX_ENQUEUERS * MIX_EACH)

struct mix {
        pthread_mutex_t mu;
        bool in_flight[MIX_QUEUES];
        int64_t last_id[MIX_QUEUES];             /* per queue, the id claimed last */
        int next_seq[MIX_ENQUEUERS][MIX_QUEUES]; /* per enqueuer and queue, expected next */
        int claimed[MIX_ENQUEUERS][MIX_EACH];
        atomic_int enqueued, done;
        char failure[256];
};

struct mix_worker {
        struct store *s;
        struct mix *m;
        int id;
};

static void mix_fail(struct mix *m, const char *what, int a, int b)
{
        pthread_mutex_lock(&m->mu);
        if (!m->failure[0])
                snprintf(m->failure, sizeof(m->failure), "%s (%d, %d)", what, a, b);
        pthread_mutex_unlock(&m->mu);
}

static void *mix_enqueuer(void *arg)
{
        struct mix_worker *w = arg;

        for (int i = 0; i < MIX_EACH && !w->m->failure[0]; i++) {
                char wid[32], conv[16];
                int q = i % MIX_QUEUES;
                struct store_enqueue it = {.hook = "h",
                                           .account = ACC,
                                           .conversation = conv,
                                           .webhook_id = wid,
                                           .body = "{}",
                                           .body_len = 2};
                int rc;

                snprintf(conv, sizeof(conv), "c%d", q);
                snprintf(wid, sizeof(wid), "%d %d %d", w->id, i, q);
                rc = store_outbox_enqueue(w->s, NULL, &it, 1, T0);
                if (rc < 0)
                        mix_fail(w->m, "enqueue failed", w->id, rc);
                atomic_fetch_add(&w->m->enqueued, 1);
        }
        return NULL;
}

static void *mix_claimer(void *arg)
{
        struct mix_worker *w = arg;
        struct mix *m = w->m;
        int64_t deadline = clock_mono_ms() + 60000;

        while (atomic_load(&m->done) < MIX_ROWS && !m->failure[0]) {
                struct store_delivery *d = NULL;
                size_t n = 0;
                int rc = store_outbox_claim(w->s, T0, 600000, 10, &d, &n);

                if (rc < 0) {
                        mix_fail(m, "claim failed", w->id, rc);
                        break;
                }
                if (clock_mono_ms() > deadline) {
                        mix_fail(m, "not done after 60 s", atomic_load(&m->done), MIX_ROWS);
                        store_deliveries_free(d, n);
                        break;
                }
                pthread_mutex_lock(&m->mu);
                for (size_t i = 0; i < n; i++) {
                        int e, seq, q;

                        if (sscanf(d[i].webhook_id, "%d %d %d", &e, &seq, &q) != 3 || e < 0 ||
                            e >= MIX_ENQUEUERS || seq < 0 || seq >= MIX_EACH || q < 0 ||
                            q >= MIX_QUEUES) {
                                snprintf(m->failure, sizeof(m->failure), "bad webhook id %s",
                                         d[i].webhook_id);
                                continue;
                        }
                        m->claimed[e][seq]++;
                        if (m->in_flight[q] && !m->failure[0])
                                snprintf(m->failure, sizeof(m->failure),
                                         "queue c%d: %s claimed while another is in flight", q,
                                         d[i].webhook_id);
                        if (d[i].id <= m->last_id[q] && !m->failure[0])
                                snprintf(m->failure, sizeof(m->failure),
                                         "queue c%d: id %lld claimed after id %lld", q,
                                         (long long)d[i].id, (long long)m->last_id[q]);
                        if (m->next_seq[e][q] != seq && !m->failure[0])
                                snprintf(m->failure, sizeof(m->failure),
                                         "queue c%d: enqueuer %d's #%d claimed, #%d expected", q, e,
                                         seq, m->next_seq[e][q]);
                        m->in_flight[q] = true;
                        m->last_id[q] = d[i].id;
                        m->next_seq[e][q] = seq + MIX_QUEUES;
                }
                pthread_mutex_unlock(&m->mu);
                for (size_t i = 0; i < n; i++) {
                        int e, seq, q;

                        if (sscanf(d[i].webhook_id, "%d %d %d", &e, &seq, &q) != 3 || q < 0 ||
                            q >= MIX_QUEUES)
                                continue;
                        /* Cleared before done(): the next of the queue cannot be claimed
                         * before done() commits, so this never reports a false overlap. */
                        pthread_mutex_lock(&m->mu);
                        m->in_flight[q] = false;
                        pthread_mutex_unlock(&m->mu);
                        rc = store_outbox_done(w->s, d[i].id, T0);
                        if (rc < 0)
                                mix_fail(m, "done failed", (int)d[i].id, rc);
                        else
                                atomic_fetch_add(&m->done, 1);
                }
                store_deliveries_free(d, n);
                if (n == 0)
                        usleep(500);
        }
        return NULL;
}

Test(instances, enqueueing_and_claiming_together_keep_one_head_per_conversation)
{
        struct store *inst[2] = {test_store_open(url, 3, 5000), test_store_open(url, 3, 5000)};
        static struct mix m;
        struct mix_worker w[MIX_ENQUEUERS + 2];
        pthread_t t[MIX_ENQUEUERS + 2];
        int64_t depth = -1;

        memset(&m, 0, sizeof(m));
        pthread_mutex_init(&m.mu, NULL);
        for (int e = 0; e < MIX_ENQUEUERS; e++)
                for (int q = 0; q < MIX_QUEUES; q++)
                        m.next_seq[e][q] = q;
        for (int i = 0; i < MIX_ENQUEUERS + 2; i++) {
                w[i] = (struct mix_worker){.s = inst[i % 2], .m = &m, .id = i};
                cr_assert_eq(pthread_create(&t[i], NULL,
                                            i < MIX_ENQUEUERS ? mix_enqueuer : mix_claimer, &w[i]),
                             0);
        }
        for (int i = 0; i < MIX_ENQUEUERS + 2; i++)
                pthread_join(t[i], NULL);
        cr_assert_eq(m.failure[0], '\0', "%s", m.failure);
        cr_assert_eq(atomic_load(&m.enqueued), MIX_ROWS);
        for (int e = 0; e < MIX_ENQUEUERS; e++)
                for (int i = 0; i < MIX_EACH; i++)
                        cr_assert_eq(m.claimed[e][i], 1, "enqueuer %d's #%d claimed %d times", e, i,
                                     m.claimed[e][i]);
        cr_assert_eq(store_outbox_depth(inst[0], &depth), 0);
        cr_assert_eq(depth, 0);
        store_close(inst[0]);
        store_close(inst[1]);
        pthread_mutex_destroy(&m.mu);
}

/* Claims at most one delivery with the given lease; its webhook id into wid ("" if none). */
static int64_t claim_at(struct store *s, int64_t now, int64_t lease_ms, char *wid, size_t size)
{
        struct store_delivery *d = NULL;
        size_t n = 0;
        int64_t id = 0;

        cr_assert_eq(store_outbox_claim(s, now, lease_ms, 10, &d, &n), 0);
        cr_assert_leq(n, 1, "%zu claimed from one queue", n);
        wid[0] = '\0';
        if (n == 1) {
                snprintf(wid, size, "%s", d[0].webhook_id);
                id = d[0].id;
        }
        store_deliveries_free(d, n);
        return id;
}

Test(instances, a_dead_instances_lease_passes_to_another_when_it_ends)
{
        struct store *a = test_store_open(url, 1, 5000), *b = test_store_open(url, 1, 5000);
        struct store_enqueue it = {.hook = "h",
                                   .account = ACC,
                                   .conversation = "c",
                                   .webhook_id = "msg_1_h",
                                   .body = "{}",
                                   .body_len = 2};
        char wid[STORE_WEBHOOK_ID_MAX + 1];
        int64_t id, id2, due = 0;

        cr_assert_eq(store_outbox_enqueue(a, NULL, &it, 1, T0), 0);
        it.webhook_id = "msg_2_h";
        cr_assert_eq(store_outbox_enqueue(a, NULL, &it, 1, T0), 0);

        /* A claims for 1 s and then "dies": it never completes. */
        id = claim_at(a, T0, 1000, wid, sizeof(wid));
        cr_assert_str_eq(wid, "msg_1_h");
        /* Not before the lease ends, and the rest of the conversation waits too. */
        cr_assert_eq(claim_at(b, T0, 30000, wid, sizeof(wid)), 0);
        cr_assert_eq(claim_at(b, T0 + 999, 30000, wid, sizeof(wid)), 0, "claimed %s early", wid);
        cr_assert_eq(store_outbox_next_due(b, &due), 0);
        cr_assert_eq(due, T0 + 1000, "B sees the lease end at %lld", (long long)(due - T0));
        /* Then B takes over the same delivery, under the same webhook id. */
        id2 = claim_at(b, T0 + 1000, 30000, wid, sizeof(wid));
        cr_assert_eq(id2, id);
        cr_assert_str_eq(wid, "msg_1_h");
        /* A, which lost its lease, cannot take it back while B holds it. */
        cr_assert_eq(claim_at(a, T0 + 2000, 30000, wid, sizeof(wid)), 0, "A took %s back", wid);
        cr_assert_eq(store_outbox_done(b, id, T0 + 2000), 0);
        /* A's late completion finds nothing, and touches nothing else. */
        cr_assert_eq(store_outbox_done(a, id, T0 + 2001), -ENOENT);
        id2 = claim_at(a, T0 + 2001, 30000, wid, sizeof(wid));
        cr_assert_str_eq(wid, "msg_2_h");
        cr_assert_gt(id2, id);
        store_close(a);
        store_close(b);
}

/* ---- Losing the database ---- */

TestSuite(reconnect, .init = setup, .fini = teardown);

/* Asks store_health until it answers 0, for up to ms milliseconds; returns its last answer. */
static int wait_healthy(struct store *s, int64_t ms, char *why, size_t size)
{
        int64_t deadline = clock_mono_ms() + ms;
        int rc;

        for (;;) {
                rc = store_health(s, why, size);
                if (rc == 0 || clock_mono_ms() > deadline)
                        return rc;
                usleep(50 * 1000);
        }
}

Test(reconnect, terminated_connections_come_back_with_the_data)
{
        struct store *s = test_store_open(url, 3, 5000);
        json_t *v = json_string("kept");
        char why[512] = "", *text = NULL;
        int rc, ok = 0;

        cr_assert_eq(store_prop_put(s, ACC, "notes", "c1", "p", v, NULL, T0, NULL), 0);
        json_decref(v);
        cr_assert_eq(store_health(s, why, sizeof(why)), 0, "%s", why);
        /* As a restart of the server or a failover would. */
        cr_assert_geq(test_pg_terminate(url), 1, "the store had no server connection to cut");

        /* The next calls may fail (-EIO, nothing else), but not for long. */
        int64_t deadline = clock_mono_ms() + 5000;
        while (ok < 10 && clock_mono_ms() < deadline) {
                rc = store_prop_get(s, ACC, "notes", "c1", "p", T0, &text, NULL, NULL);
                if (rc == 0) {
                        cr_assert_str_eq(text, "\"kept\"");
                        free(text);
                        ok++;
                } else {
                        cr_assert_eq(rc, -EIO, "a lost connection gave %d", rc);
                        ok = 0;
                        usleep(50 * 1000);
                }
        }
        cr_assert_eq(ok, 10, "the store did not recover within 5 s");
        cr_assert_eq(wait_healthy(s, 5000, why, sizeof(why)), 0, "still unhealthy: %s", why);
        v = json_integer(2);
        cr_assert_eq(store_prop_put(s, ACC, "notes", "c1", "q", v, NULL, T0, NULL), 0);
        json_decref(v);
        store_close(s);
}

/* A role of the test's own that owns its schema, so that logins can be refused for this test
 * alone: url with user and password of that role into out. Its name into role. */
static void own_role(char *out, size_t size, char *role, size_t role_size)
{
        char schema[64], sql[512];

        test_pg_schema(url, schema, sizeof(schema));
        snprintf(role, role_size, "%s_r", schema);
        snprintf(sql, sizeof(sql),
                 "CREATE ROLE %s LOGIN PASSWORD 'Sekr1t-pw'; ALTER SCHEMA %s OWNER TO %s", role,
                 schema, role);
        test_pg_exec(url, sql);
        cr_assert_lt((size_t)snprintf(out, size, "%s&user=%s&password=Sekr1t-pw", url, role), size);
}

static void drop_role(const char *role)
{
        char schema[64], sql[512];

        test_pg_schema(url, schema, sizeof(schema));
        snprintf(sql, sizeof(sql),
                 "SET client_min_messages = warning; DROP SCHEMA IF EXISTS %s CASCADE;"
                 " DROP ROLE IF EXISTS %s",
                 schema, role);
        test_pg_exec(url, sql);
}

Test(reconnect, a_database_that_refuses_logins_is_down_with_the_reason_then_recovers)
{
        char u[TEST_PG_URL_MAX], role[96], sql[160], why[512] = "", *text = NULL;
        struct store *s;
        json_t *v = json_integer(7);
        int rc = 0;

        own_role(u, sizeof(u), role, sizeof(role));
        s = test_store_open(u, 2, 5000);
        cr_assert_eq(store_prop_put(s, ACC, "notes", "c1", "p", v, NULL, T0, NULL), 0);

        snprintf(sql, sizeof(sql), "ALTER ROLE %s NOLOGIN", role);
        test_pg_exec(url, sql);
        cr_assert_geq(test_pg_terminate(url), 1);

        /* Down: health says why (libpq's reason), and calls fail at once rather than each
         * waiting for a connection attempt. */
        int64_t deadline = clock_mono_ms() + 5000;
        while (clock_mono_ms() < deadline) {
                rc = store_health(s, why, sizeof(why));
                if (rc < 0 && strstr(why, "not permitted to log in"))
                        break;
                usleep(50 * 1000);
        }
        cr_assert_eq(rc, -EIO, "health %d while logins are refused (%s)", rc, why);
        cr_assert_not_null(strstr(why, "not permitted to log in"), "why: %s", why);
        cr_assert_null(strstr(why, "Sekr1t"), "the password shows in: %s", why);
        for (int i = 0; i < 5; i++) {
                int64_t t = clock_mono_ms();

                rc = store_prop_get(s, ACC, "notes", "c1", "p", T0, &text, NULL, NULL);
                cr_assert_eq(rc, -EIO, "a read while down: %d", rc);
                cr_assert_lt(clock_mono_ms() - t, 1500, "a call while down took %lld ms",
                             (long long)(clock_mono_ms() - t));
                rc = store_prop_put(s, ACC, "notes", "c1", "p", v, NULL, T0, NULL);
                cr_assert_eq(rc, -EIO, "a write while down: %d", rc);
        }

        snprintf(sql, sizeof(sql), "ALTER ROLE %s LOGIN", role);
        test_pg_exec(url, sql);
        cr_assert_eq(wait_healthy(s, 5000, why, sizeof(why)), 0, "not back after 5 s: %s", why);
        /* A pooled connection cut while idle may cost one more -EIO. */
        deadline = clock_mono_ms() + 5000;
        for (;;) {
                rc = store_prop_get(s, ACC, "notes", "c1", "p", T0, &text, NULL, NULL);
                if (rc != -EIO || clock_mono_ms() > deadline)
                        break;
                usleep(50 * 1000);
        }
        cr_assert_eq(rc, 0, "read after recovery: %d", rc);
        cr_assert_str_eq(text, "7");
        free(text);
        cr_assert_eq(store_prop_put(s, ACC, "notes", "c1", "p", v, NULL, T0 + 1, NULL), 0);
        json_decref(v);
        store_close(s);
        drop_role(role);
}

/* ---- check-config's probe ---- */

TestSuite(probe, .init = setup, .fini = teardown);

Test(probe, an_empty_schema_is_version_0_and_stays_empty)
{
        struct store_options o = test_store_options(url, 1, 5000);
        struct ch_error err = {{0}};
        struct store *s;
        int version = -1;
        char n[32];

        cr_assert_eq(store_probe(&o, &version, &err), 0, "%s", err.msg);
        cr_assert_eq(version, 0);
        test_pg_value(url,
                      "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid ="
                      " c.relnamespace WHERE n.nspname = current_schema()",
                      n, sizeof(n));
        cr_assert_str_eq(n, "0", "probing created %s relations", n);

        s = test_store_open(url, 1, 5000);
        store_close(s);
        version = -1;
        cr_assert_eq(store_probe(&o, &version, &err), 0, "%s", err.msg);
        cr_assert_eq(version, store_schema_latest(&o));
}

Test(probe, a_newer_schema_is_eproto_naming_both_versions)
{
        struct store_options o = test_store_options(url, 1, 5000);
        struct ch_error err = {{0}};
        char latest[16];
        int version = -1;

        store_close(test_store_open(url, 1, 5000));
        test_pg_exec(url, "UPDATE ctxhookd_schema SET version = 999");
        cr_assert_eq(store_probe(&o, &version, &err), -EPROTO);
        cr_assert_eq(version, -1, "written on failure");
        snprintf(latest, sizeof(latest), "%d", store_schema_latest(&o));
        cr_assert_not_null(strstr(err.msg, "999"), "%s", err.msg);
        cr_assert_not_null(strstr(err.msg, latest), "%s", err.msg);
}

Test(probe, an_unreachable_database_is_eio_naming_it_without_the_password)
{
        /* Port 1 on loopback: nothing listens there, the connection is refused at once. */
        static const char *const urls[] = {
            "postgresql://ctx:Sekr1t-pw@127.0.0.1:1/ctxdb",
            "postgresql://127.0.0.1:1/ctxdb?user=ctx&password=Sekr1t-pw",
            "host=127.0.0.1 port=1 dbname=ctxdb user=ctx password=Sekr1t-pw",
        };
        static const char *const shown[] = {
            "postgresql://ctx:********@127.0.0.1:1/ctxdb",
            "postgresql://127.0.0.1:1/ctxdb?user=ctx&password=********",
            "host=127.0.0.1 port=1 dbname=ctxdb user=ctx password=********",
        };

        for (size_t i = 0; i < sizeof(urls) / sizeof(urls[0]); i++) {
                struct store_options o = test_store_options(urls[i], 1, 5000);
                struct ch_error err = {{0}};
                struct store *s = NULL;
                int version = -1;

                cr_assert_eq(store_probe(&o, &version, &err), -EIO, "%s", urls[i]);
                cr_assert_eq(version, -1);
                cr_assert_not_null(strstr(err.msg, shown[i]), "%s: %s", urls[i], err.msg);
                cr_assert_null(strstr(err.msg, "Sekr1t"), "password shown: %s", err.msg);
                /* Opening says the same. */
                memset(&err, 0, sizeof(err));
                cr_assert_eq(store_open(&o, &s, &err), -EIO, "%s", urls[i]);
                cr_assert_null(s);
                cr_assert_not_null(strstr(err.msg, shown[i]), "%s: %s", urls[i], err.msg);
                cr_assert_null(strstr(err.msg, "Sekr1t"), "password shown: %s", err.msg);
        }
}

/* ---- Connection strings ---- */

static void assert_redacted(const char *in, const char *want)
{
        char out[512];

        memset(out, 'x', sizeof(out));
        store_url_redact(in, out, sizeof(out));
        cr_assert_str_eq(out, want, "redacting %s", in);
}

Test(url, redact_masks_every_kind_of_password)
{
        /* URI user info. */
        assert_redacted("postgresql://ctx:Sekr1t@db.example:5432/ctx",
                        "postgresql://ctx:********@db.example:5432/ctx");
        assert_redacted("postgres://ctx:p%40ss@db/ctx?sslmode=require",
                        "postgres://ctx:********@db/ctx?sslmode=require");
        /* A password= query parameter, anywhere among the others. */
        assert_redacted("postgresql://db/ctx?user=ctx&password=Sekr1t&sslmode=require",
                        "postgresql://db/ctx?user=ctx&password=********&sslmode=require");
        assert_redacted("postgresql://ctx:one@db/ctx?password=two",
                        "postgresql://ctx:********@db/ctx?password=********");
        /* key=value pairs, quoted or not, with blanks around '='. */
        assert_redacted("host=db user=ctx password=Sekr1t dbname=ctx",
                        "host=db user=ctx password=******** dbname=ctx");
        assert_redacted("host=db password='Sek r1t \\' x' dbname=ctx",
                        "host=db password=******** dbname=ctx");
        assert_redacted("password = Sekr1t host=db", "password=******** host=db");
        /* Nothing to hide: unchanged. */
        assert_redacted("postgresql://ctx@db/ctx", "postgresql://ctx@db/ctx");
        assert_redacted("postgresql:///ctx?host=/run/postgresql",
                        "postgresql:///ctx?host=/run/postgresql");
        assert_redacted("host=db passfile=/etc/pgpass dbname=ctx",
                        "host=db passfile=/etc/pgpass dbname=ctx");
        assert_redacted("", "");
}

Test(url, redact_never_lets_a_password_through_a_short_buffer)
{
        static const char in[] = "postgresql://ctx:Sekr1tSekr1t@db/ctx";
        char out[64];

        for (size_t size = 1; size <= sizeof(out); size++) {
                memset(out, 'x', sizeof(out));
                store_url_redact(in, out, size);
                cr_assert_lt(strlen(out), size, "not terminated within %zu bytes", size);
                cr_assert_null(strstr(out, "Sek"), "size %zu: %s", size, out);
        }
}

Test(url, check_accepts_what_libpq_accepts_and_says_why_not)
{
        static const char *const good[] = {
            "postgresql://ctx:pw@db:5432/ctx?sslmode=require",
            "postgres://db/ctx",
            "postgresql:///ctx?host=/run/postgresql",
            "host=db port=5432 dbname=ctx user=ctx",
            "",
        };
        static const struct {
                const char *url;
                const char *reason; /* part of libpq's message */
        } bad[] = {
            {"not a connection string", "missing \"=\""},
            {"host=db bogus=1", "invalid connection option \"bogus\""},
            {"postgresql://db/ctx?bogus=1", "invalid URI query parameter: \"bogus\""},
            {"host='unterminated", "unterminated quoted string"},
        };
        char why[512];

        for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
                why[0] = '\0';
                cr_assert_eq(store_url_check(good[i], why, sizeof(why)), 0, "%s: %s", good[i], why);
        }
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
                why[0] = '\0';
                cr_assert_eq(store_url_check(bad[i].url, why, sizeof(why)), -EINVAL, "%s",
                             bad[i].url);
                cr_assert_not_null(strstr(why, bad[i].reason), "%s: why is \"%s\"", bad[i].url,
                                   why);
        }
}
