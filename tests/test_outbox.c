/* Unit tests of the store's outbox, dead letters and dedup keys (the second half of store.h),
 * built twice: against real SQLite files in a fresh mkdtemp directory per test (test_outbox),
 * and with -DCTXHOOKD_TEST_PG against PostgreSQL in a fresh schema per test (test_outbox_pg,
 * tests/test_pg.h). The enqueue → claim → done round trip, dedup, per-(hook, conversation)
 * order under leases and retries, lease expiry, dead letters (listing, redrive, delete),
 * clearing the delivered conversation's notes (through the read cache, on SQLite), durability
 * across reopen and racing claimers on both backends; the SQLite lock and the migration from
 * the first SQLite schema version only on SQLite. sqlite3.h (libpq) is used only to tamper
 * with a database by hand; the backend table only to read the cache's change counter. */
#include <criterion/criterion.h>
#include <errno.h>
#include <ftw.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ctxhookd/store.h"
#include "test_util.h"
#include "store_backend.h"
#include "test_store_backend.h"

#define T0  INT64_C(1800000000000) /* 2027-01-15T08:00:00.000Z */
#define ACC "12345678"

static char dir[64];
/* What the test's store opens: the SQLite file, or the URL of the test's PostgreSQL schema. */
static char where[1024];
static struct store *st;

static void setup(void)
{
        strcpy(dir, "/tmp/ctxhookd-test-outbox-XXXXXX");
        cr_assert_not_null(mkdtemp(dir));
        test_store_where(dir, "context.db", where, sizeof(where));
        st = test_store_open(where, 4, 5000);
}

static void teardown(void)
{
        st = store_close(st);
        test_store_drop(where);
        test_rmtree(dir);
}

/* The read cache's change counter of Context API data; 0 when the backend keeps none (then
 * the store caches nothing, which is what the PostgreSQL backend must do). */
static uint64_t data_gen(void)
{
        if (!st->ops->gen_load)
                return 0;
        return st->ops->gen_load(st->impl, STORE_GEN_DATA);
}

/* Queues one delivery whose webhook id and body name it: body = {"w":"<webhook_id>"}. */
static void enqueue_to(struct store *s, const char *hook, const char *conv, const char *wid,
                       int64_t now)
{
        char body[128];
        struct store_enqueue it = {
            .hook = hook, .account = ACC, .conversation = conv, .webhook_id = wid, .body = body};
        int rc;

        it.body_len = (size_t)snprintf(body, sizeof(body), "{\"w\":\"%s\"}", wid);
        rc = store_outbox_enqueue(s, NULL, &it, 1, now);
        cr_assert_eq(rc, 0, "enqueue %s: %d", wid, rc);
}

static void enqueue(const char *hook, const char *conv, const char *wid, int64_t now)
{
        enqueue_to(st, hook, conv, wid, now);
}

/* Claims up to limit deliveries and describes them as "wid wid …" (in claim order); the
 * deliveries go to *ret (may be NULL: then they are freed). */
static char *claim(int64_t now, int64_t lease_ms, size_t limit, struct store_delivery **ret,
                   size_t *ret_n)
{
        struct store_delivery *d = NULL;
        char *out = calloc(1, 4096);
        size_t n = 99;
        int rc = store_outbox_claim(st, now, lease_ms, limit, &d, &n);

        cr_assert_eq(rc, 0, "claim: %d", rc);
        cr_assert_leq(n, limit);
        for (size_t i = 0; i < n; i++) {
                if (i > 0)
                        strcat(out, " ");
                strcat(out, d[i].webhook_id);
        }
        if (ret) {
                *ret = d;
                *ret_n = n;
        } else {
                store_deliveries_free(d, n);
        }
        return out;
}

static void assert_claim(int64_t now, size_t limit, const char *want)
{
        char *got = claim(now, 30000, limit, NULL, NULL);

        cr_assert_str_eq(got, want, "claim at T0%+lld: got \"%s\", want \"%s\"",
                         (long long)(now - T0), got, want);
        free(got);
}

/* Claims exactly one delivery, which must be wid, and returns its id. */
static int64_t claim_one(int64_t now, int64_t lease_ms, const char *wid)
{
        struct store_delivery *d = NULL;
        size_t n = 0;
        char *got = claim(now, lease_ms, 1, &d, &n);
        int64_t id;

        cr_assert_str_eq(got, wid, "claimed \"%s\", want \"%s\"", got, wid);
        id = d[0].id;
        store_deliveries_free(d, n);
        free(got);
        return id;
}

static int64_t depth(void)
{
        int64_t n = -1;

        cr_assert_eq(store_outbox_depth(st, &n), 0);
        return n;
}

static int64_t dead_count(void)
{
        int64_t n = -1;

        cr_assert_eq(store_dead_count(st, &n), 0);
        return n;
}

static json_t *J(const char *text)
{
        json_error_t e;
        json_t *v = json_loads(text, JSON_DECODE_ANY, &e);

        cr_assert_not_null(v, "bad test JSON %s: %s", text, e.text);
        return v;
}

/* Compares a JSON value with the expected text exactly, member order included. */
static void assert_json_text(json_t *v, const char *want)
{
        char *got = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);

        cr_assert_str_eq(got, want, "got %s, want %s", got, want);
        free(got);
}

static void assert_dead_list(int64_t after, int64_t limit, const char *want)
{
        json_t *a = NULL;
        int rc = store_dead_list(st, after, limit, &a);

        cr_assert_eq(rc, 0, "dead_list: %d", rc);
        assert_json_text(a, want);
        json_decref(a);
}

/* ---- Round trip ---- */

TestSuite(outbox, .init = setup, .fini = teardown);

Test(outbox, enqueue_claim_done_round_trip_keeps_every_field)
{
        static const char body[] = "{\"payload\":{\"note\":\"caf\xc3\xa9\"}}";
        struct store_enqueue it = {.hook = "notes-on-autoclose",
                                   .account = ACC,
                                   .conversation = "conv-1",
                                   .webhook_id = "msg_ev1_notes-on-autoclose",
                                   .body = body,
                                   .body_len = sizeof(body) - 1};
        struct store_delivery *d = NULL;
        size_t n = 0;

        cr_assert_eq(depth(), 0);
        cr_assert_eq(store_outbox_enqueue(st, "kafka:events/0/17", &it, 1, T0), 0);
        cr_assert_eq(depth(), 1);
        cr_assert_eq(store_outbox_claim(st, T0 + 5, 30000, 10, &d, &n), 0);
        cr_assert_eq(n, 1);
        cr_assert_gt(d[0].id, 0);
        cr_assert_str_eq(d[0].hook, "notes-on-autoclose");
        cr_assert_str_eq(d[0].account, ACC);
        cr_assert_str_eq(d[0].conversation, "conv-1");
        cr_assert_str_eq(d[0].webhook_id, "msg_ev1_notes-on-autoclose");
        cr_assert_eq(d[0].body_len, sizeof(body) - 1);
        cr_assert_eq(memcmp(d[0].body, body, sizeof(body)), 0, "body (NUL-terminated) differs");
        cr_assert_eq(d[0].attempts, 0);
        cr_assert_eq(d[0].created_ms, T0);
        int64_t id = d[0].id;
        store_deliveries_free(d, n);

        /* In flight: still queued, not claimable again. */
        cr_assert_eq(depth(), 1);
        assert_claim(T0 + 10, 10, "");
        cr_assert_eq(store_outbox_done(st, id, T0 + 20), 0);
        cr_assert_eq(depth(), 0);
        cr_assert_eq(store_outbox_done(st, id, T0 + 20), -ENOENT);
        assert_claim(T0 + 40000, 10, "");
}

Test(outbox, one_enqueue_queues_all_items_in_order)
{
        struct store_enqueue items[3];
        static const char *const hooks[] = {"h1", "h2", "h1"};
        static const char *const wids[] = {"w1", "w2", "w3"};
        struct store_delivery *d = NULL;
        size_t n = 0;

        for (int i = 0; i < 3; i++)
                items[i] = (struct store_enqueue){.hook = hooks[i],
                                                  .account = ACC,
                                                  .conversation = i == 2 ? "c2" : "c1",
                                                  .webhook_id = wids[i],
                                                  .body = "{}",
                                                  .body_len = 2};
        cr_assert_eq(store_outbox_enqueue(st, NULL, items, 3, T0), 0);
        cr_assert_eq(depth(), 3);
        free(claim(T0, 1000, 10, &d, &n));
        cr_assert_eq(n, 3);
        /* Same due time: oldest (lowest id) first, and ids follow the items' order. */
        for (int i = 0; i < 3; i++)
                cr_assert_str_eq(d[i].webhook_id, wids[i]);
        cr_assert_lt(d[0].id, d[1].id);
        cr_assert_lt(d[1].id, d[2].id);
        store_deliveries_free(d, n);
}

Test(outbox, empty_body_round_trips)
{
        struct store_enqueue it = {
            .hook = "h", .account = ACC, .conversation = "", .webhook_id = "w", .body = ""};
        struct store_delivery *d = NULL;
        size_t n = 0;

        cr_assert_eq(store_outbox_enqueue(st, NULL, &it, 1, T0), 0);
        free(claim(T0, 1000, 1, &d, &n));
        cr_assert_eq(n, 1);
        cr_assert_eq(d[0].body_len, 0);
        cr_assert_str_eq(d[0].body, "");
        cr_assert_str_eq(d[0].conversation, "");
        store_deliveries_free(d, n);
}

/* ---- Dedup ---- */

Test(outbox, a_repeated_dedup_key_writes_nothing)
{
        struct store_enqueue it = {.hook = "h",
                                   .account = ACC,
                                   .conversation = "c",
                                   .webhook_id = "second",
                                   .body = "{}",
                                   .body_len = 2};

        cr_assert_eq(store_outbox_enqueue(st, "kafka:t/0/42", &it, 1, T0), 0);
        it.webhook_id = "third";
        cr_assert_eq(store_outbox_enqueue(st, "kafka:t/0/42", &it, 1, T0 + 1), -EEXIST);
        cr_assert_eq(depth(), 1);
        /* An event no hook wanted is still recorded as seen. */
        cr_assert_eq(store_outbox_enqueue(st, "kafka:t/0/43", NULL, 0, T0), 0);
        cr_assert_eq(store_outbox_enqueue(st, "kafka:t/0/43", &it, 1, T0), -EEXIST);
        cr_assert_eq(depth(), 1);
        /* Dead letters share the key space: a message is either queued or dead, once. */
        cr_assert_eq(store_dead_add(st, "kafka:t/0/42", "kafka:t/0/42", "bad", "x", 1, T0),
                     -EEXIST);
        cr_assert_eq(dead_count(), 0);
        cr_assert_eq(store_dead_add(st, "kafka:t/0/44", "kafka:t/0/44", "bad", "x", 1, T0), 0);
        cr_assert_eq(store_dead_add(st, "kafka:t/0/44", "kafka:t/0/44", "bad", "x", 1, T0),
                     -EEXIST);
        cr_assert_eq(store_outbox_enqueue(st, "kafka:t/0/44", &it, 1, T0), -EEXIST);
        cr_assert_eq(dead_count(), 1);
        cr_assert_eq(depth(), 1);
        /* Without a key nothing is deduplicated. */
        cr_assert_eq(store_outbox_enqueue(st, NULL, &it, 1, T0), 0);
        cr_assert_eq(store_outbox_enqueue(st, NULL, &it, 1, T0), 0);
        cr_assert_eq(depth(), 3);

        st = store_close(st);
        st = test_store_open(where, 1, 5000);
        cr_assert_eq(store_outbox_enqueue(st, "kafka:t/0/42", &it, 1, T0 + 2), -EEXIST);
        cr_assert_eq(store_outbox_enqueue(st, "kafka:t/0/45", &it, 1, T0 + 2), 0);
        cr_assert_eq(depth(), 4);
}

/* ---- Batches ---- */

Test(outbox, enqueue_many_records_each_message_in_order_in_one_go)
{
        struct store_enqueue old = {.hook = "h",
                                    .account = ACC,
                                    .conversation = "c0",
                                    .webhook_id = "w0",
                                    .body = "{}",
                                    .body_len = 2};
        struct store_enqueue two[] = {
            {.hook = "h",
             .account = ACC,
             .conversation = "c1",
             .webhook_id = "w1",
             .body = "1",
             .body_len = 1},
            {.hook = "h",
             .account = ACC,
             .conversation = "c2",
             .webhook_id = "w2",
             .body = "2",
             .body_len = 1},
        };
        struct store_enqueue w3 = {.hook = "h",
                                   .account = ACC,
                                   .conversation = "c3",
                                   .webhook_id = "w3",
                                   .body = "3",
                                   .body_len = 1};
        struct store_enqueue w4 = w3, w5 = w3;
        const struct store_message msgs[] = {
            {.dedup_key = "k/1", .items = two, .n_items = 2},
            {.dedup_key = "old", .items = &w3, .n_items = 1}, /* seen before the batch */
            {.dedup_key = "k/1", .items = &w4, .n_items = 1}, /* seen earlier in the batch */
            {.dedup_key = "k/3",
             .dead_source = "kafka:t/0/3",
             .dead_reason = "bad",
             .raw = "xyz",
             .raw_len = 3},
            {.dedup_key = "k/4"}, /* no hook wanted it */
            {.items = &w5, .n_items = 1},
            {.dedup_key = "k/4", .dead_source = "s", .dead_reason = "r", .raw = "q", .raw_len = 1},
        };
        const int want[] = {0, -EEXIST, -EEXIST, 0, 0, 0, -EEXIST};
        int results[7] = {9, 9, 9, 9, 9, 9, 9};
        struct store_delivery *d = NULL;
        json_t *dead = NULL;
        size_t n = 0;

        w4.webhook_id = "w4";
        w5.webhook_id = "w5";
        w5.conversation = "c1";
        cr_assert_eq(store_outbox_enqueue(st, "old", &old, 1, T0), 0);
        cr_assert_eq(store_outbox_enqueue_many(st, msgs, 7, T0 + 1, results), 0);
        for (size_t i = 0; i < 7; i++)
                cr_assert_eq(results[i], want[i], "message %zu: %d, want %d", i, results[i],
                             want[i]);
        cr_assert_eq(depth(), 4); /* w0 w1 w2 w5 */
        cr_assert_eq(dead_count(), 1);
        cr_assert_eq(store_dead_list(st, 0, 10, &dead), 0);
        cr_assert_str_eq(json_string_value(json_object_get(json_array_get(dead, 0), "source")),
                         "kafka:t/0/3");
        cr_assert_str_eq(json_string_value(json_object_get(json_array_get(dead, 0), "raw")), "xyz");
        json_decref(dead);

        /* Ids follow the batch order; w5 waits behind w1 in conversation c1. */
        cr_assert_eq(store_outbox_claim(st, T0 + 1, 30000, 10, &d, &n), 0);
        cr_assert_eq(n, 3);
        cr_assert_str_eq(d[0].webhook_id, "w0");
        cr_assert_str_eq(d[1].webhook_id, "w1");
        cr_assert_str_eq(d[2].webhook_id, "w2");
        cr_assert_lt(d[0].id, d[1].id);
        cr_assert_lt(d[1].id, d[2].id);
        cr_assert_eq(store_outbox_done(st, d[1].id, T0 + 2), 0);
        store_deliveries_free(d, n);
        assert_claim(T0 + 2, 10, "w5");

        /* Every key of the batch is recorded. */
        cr_assert_eq(store_outbox_enqueue(st, "k/1", NULL, 0, T0 + 3), -EEXIST);
        cr_assert_eq(store_outbox_enqueue(st, "k/3", NULL, 0, T0 + 3), -EEXIST);
        cr_assert_eq(store_outbox_enqueue(st, "k/4", NULL, 0, T0 + 3), -EEXIST);
        /* An empty batch is nothing to do. */
        cr_assert_eq(store_outbox_enqueue_many(st, NULL, 0, T0, NULL), 0);
}

/* A trigger that makes every insert into the dead letters fail, and its removal. */
#ifdef CTXHOOKD_TEST_PG
#define REFUSE_DEAD_LETTERS_SQL                                                                    \
        "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS "                            \
        "$$BEGIN RAISE EXCEPTION 'refused'; END$$; "                                               \
        "CREATE TRIGGER refuse BEFORE INSERT ON dead_letters FOR EACH ROW EXECUTE FUNCTION "       \
        "refuse()"
#define ACCEPT_DEAD_LETTERS_SQL "DROP TRIGGER refuse ON dead_letters"
#else
#define REFUSE_DEAD_LETTERS_SQL                                                                    \
        "CREATE TRIGGER refuse BEFORE INSERT ON dead_letters BEGIN "                               \
        "SELECT RAISE(ABORT, 'refused'); END"
#define ACCEPT_DEAD_LETTERS_SQL "DROP TRIGGER refuse"
#endif

/* A failure part-way through a batch (here a trigger that refuses dead letters, after the
 * batch's first message has been written) undoes the whole batch. */
Test(outbox, a_failing_batch_writes_nothing)
{
        struct store_enqueue it = {.hook = "h",
                                   .account = ACC,
                                   .conversation = "c",
                                   .webhook_id = "w",
                                   .body = "{}",
                                   .body_len = 2};
        const struct store_message msgs[] = {
            {.dedup_key = "k/1", .items = &it, .n_items = 1},
            {.dedup_key = "k/2"},
            {.dedup_key = "k/3", .dead_source = "s", .dead_reason = "r", .raw = "x", .raw_len = 1},
        };
        int results[3] = {9, 9, 9};

        test_store_raw_sql(where, REFUSE_DEAD_LETTERS_SQL);
        cr_assert_eq(store_outbox_enqueue_many(st, msgs, 3, T0, results), -EIO);
        cr_assert_eq(results[0], 9, "results written although the batch failed");
        cr_assert_eq(depth(), 0);
        cr_assert_eq(dead_count(), 0);

        /* Nor were the dedup keys kept: the same batch goes through once the cause is gone. */
        test_store_raw_sql(where, ACCEPT_DEAD_LETTERS_SQL);
        cr_assert_eq(store_outbox_enqueue_many(st, msgs, 3, T0, results), 0);
        for (size_t i = 0; i < 3; i++)
                cr_assert_eq(results[i], 0, "message %zu", i);
        cr_assert_eq(depth(), 1);
        cr_assert_eq(dead_count(), 1);
}

/* A write lock held elsewhere (SQLite's on the database; on PostgreSQL one on the dedup keys'
 * table): the batch fails as a whole after the busy timeout. */
Test(outbox, a_batch_blocked_by_a_lock_fails_and_records_no_key)
{
        struct store_options o = test_store_options(where, 1, 50);
        const struct store_message msgs[] = {{.dedup_key = "k/1"}, {.dedup_key = "k/2"}};
        struct ch_error err = {{0}};
        struct store *s2 = NULL;
        int results[2] = {9, 9};

        cr_assert_eq(store_open(&o, &s2, &err), 0, "%s", err.msg);
#ifdef CTXHOOKD_TEST_PG
        PGconn *c = test_pg_connect(where);
        test_pg_run(c, "BEGIN; LOCK TABLE dedup IN EXCLUSIVE MODE", NULL, 0);
#else
        sqlite3 *db = NULL;
        char *msg = NULL;
        cr_assert_eq(sqlite3_open(where, &db), SQLITE_OK);
        cr_assert_eq(sqlite3_exec(db, "BEGIN EXCLUSIVE", NULL, NULL, &msg), SQLITE_OK, "%s", msg);
#endif
        cr_assert_eq(store_outbox_enqueue_many(s2, msgs, 2, T0, results), -EIO);
        cr_assert_eq(results[0], 9);
#ifdef CTXHOOKD_TEST_PG
        test_pg_run(c, "ROLLBACK", NULL, 0);
        PQfinish(c);
#else
        cr_assert_eq(sqlite3_exec(db, "ROLLBACK", NULL, NULL, &msg), SQLITE_OK, "%s", msg);
        sqlite3_close(db);
#endif
        cr_assert_eq(store_outbox_enqueue_many(s2, msgs, 2, T0, results), 0);
        cr_assert_eq(results[0], 0);
        cr_assert_eq(results[1], 0);
        s2 = store_close(s2);
}

/* Bad input anywhere in a batch refuses the whole batch before anything is written. */
Test(outbox, a_batch_with_a_bad_message_is_refused)
{
        struct store_enqueue it = {.hook = "h",
                                   .account = ACC,
                                   .conversation = "c",
                                   .webhook_id = "w",
                                   .body = "{}",
                                   .body_len = 2};
        struct store_message msgs[] = {
            {.dedup_key = "k/1", .items = &it, .n_items = 1},
            {.dedup_key = "k/2", .dead_source = "s", .dead_reason = NULL},
        };
        int results[2];

        cr_assert_eq(store_outbox_enqueue_many(st, msgs, 2, T0, results), -EINVAL);
        msgs[1] = (struct store_message){
            .dead_source = "s", .dead_reason = "r", .items = &it, .n_items = 1};
        cr_assert_eq(store_outbox_enqueue_many(st, msgs, 2, T0, results), -EINVAL);
        msgs[1] = (struct store_message){.items = NULL, .n_items = 1};
        cr_assert_eq(store_outbox_enqueue_many(st, msgs, 2, T0, results), -EINVAL);
        cr_assert_eq(store_outbox_enqueue_many(st, msgs, 2, T0, NULL), -EINVAL);
        cr_assert_eq(depth(), 0);
        cr_assert_eq(store_outbox_enqueue(st, "k/1", &it, 1, T0), 0, "k/1 was recorded");
}

Test(outbox, dedup_expire_forgets_old_keys_only)
{
        int64_t deleted = -1;

        cr_assert_eq(store_outbox_enqueue(st, "a", NULL, 0, T0), 0);
        cr_assert_eq(store_outbox_enqueue(st, "b", NULL, 0, T0 + 10), 0);
        cr_assert_eq(store_dead_add(st, "c", "http", "bad", "x", 1, T0 + 20), 0);
        cr_assert_eq(store_dedup_expire(st, T0 + 10, &deleted), 0);
        cr_assert_eq(deleted, 1, "only the key recorded before T0+10 goes: %lld",
                     (long long)deleted);
        cr_assert_eq(store_outbox_enqueue(st, "a", NULL, 0, T0 + 30), 0);
        cr_assert_eq(store_outbox_enqueue(st, "b", NULL, 0, T0 + 30), -EEXIST);
        cr_assert_eq(store_dedup_expire(st, T0 + 21, &deleted), 0);
        cr_assert_eq(deleted, 2);
        cr_assert_eq(store_outbox_enqueue(st, "b", NULL, 0, T0 + 30), 0);
        cr_assert_eq(store_outbox_enqueue(st, "c", NULL, 0, T0 + 30), 0);
        /* Expiring keys leaves the dead letter and the queue alone. */
        cr_assert_eq(dead_count(), 1);
        cr_assert_eq(store_dedup_expire(st, T0, NULL), 0);
}

Test(outbox, dedup_expire_works_through_many_batches)
{
        int64_t deleted = -1;
        char key[32];

        for (int i = 0; i < 12001; i++) {
                snprintf(key, sizeof(key), "k%d", i);
                cr_assert_eq(store_outbox_enqueue(st, key, NULL, 0, T0 + i % 7), 0);
        }
        cr_assert_eq(store_outbox_enqueue(st, "late", NULL, 0, T0 + 100), 0);
        cr_assert_eq(store_dedup_expire(st, T0 + 7, &deleted), 0);
        cr_assert_eq(deleted, 12001);
        cr_assert_eq(store_outbox_enqueue(st, "k12000", NULL, 0, T0 + 200), 0);
        cr_assert_eq(store_outbox_enqueue(st, "late", NULL, 0, T0 + 200), -EEXIST);
}

/* ---- Order, leases, retries ---- */

Test(outbox, only_the_oldest_of_a_hook_and_conversation_is_claimable)
{
        enqueue("h1", "c1", "a1", T0);
        enqueue("h1", "c1", "a2", T0);
        enqueue("h1", "c2", "b1", T0);
        enqueue("h2", "c1", "x1", T0);
        enqueue("h1", "c2", "b2", T0);

        /* The heads only; a leased head holds back its own queue and no other. */
        int64_t a1 = claim_one(T0, 30000, "a1");
        assert_claim(T0, 10, "b1 x1");
        assert_claim(T0, 10, "");
        cr_assert_eq(store_outbox_done(st, a1, T0 + 1), 0);
        assert_claim(T0 + 1, 10, "a2");
        cr_assert_eq(depth(), 4);
}

Test(outbox, a_retry_pending_head_holds_back_only_its_own_queue)
{
        enqueue("h1", "c1", "a1", T0);
        enqueue("h1", "c1", "a2", T0);
        enqueue("h1", "c2", "b1", T0);
        enqueue("h2", "c1", "x1", T0);

        int64_t a1 = claim_one(T0, 30000, "a1");
        cr_assert_eq(store_outbox_retry(st, a1, 1, T0 + 5000, "HTTP 503"), 0);
        /* Not due yet: a2 must not overtake it, the other queues flow. */
        assert_claim(T0 + 100, 10, "b1 x1");
        assert_claim(T0 + 4999, 10, "");

        struct store_delivery *d = NULL;
        size_t n = 0;
        char *got = claim(T0 + 5000, 30000, 10, &d, &n);

        cr_assert_str_eq(got, "a1", "due at exactly next_attempt_ms: %s", got);
        cr_assert_eq(d[0].id, a1);
        cr_assert_eq(d[0].attempts, 1);
        cr_assert_eq(d[0].created_ms, T0);
        store_deliveries_free(d, n);
        free(got);
        cr_assert_eq(store_outbox_done(st, a1, T0 + 5001), 0);
        assert_claim(T0 + 5001, 10, "a2");
}

Test(outbox, an_expired_lease_makes_the_delivery_claimable_again)
{
        enqueue("h", "c", "w1", T0);
        enqueue("h", "c", "w2", T0);
        int64_t id = claim_one(T0, 1000, "w1");

        assert_claim(T0 + 999, 10, "");
        cr_assert_eq(claim_one(T0 + 1000, 1000, "w1"), id);
        /* The new lease runs from the new claim. */
        assert_claim(T0 + 1999, 10, "");
        cr_assert_eq(claim_one(T0 + 2000, 1000, "w1"), id);
}

Test(outbox, oldest_due_first_and_the_limit_holds)
{
        enqueue("h", "c1", "w1", T0);
        enqueue("h", "c2", "w2", T0);
        enqueue("h", "c3", "w3", T0);
        enqueue("h", "c4", "w4", T0 + 50);
        int64_t w1 = claim_one(T0, 1000, "w1");
        int64_t w2 = claim_one(T0, 1000, "w2");

        cr_assert_eq(store_outbox_retry(st, w1, 1, T0 + 300, NULL), 0);
        cr_assert_eq(store_outbox_retry(st, w2, 1, T0 + 100, "timeout"), 0);
        assert_claim(T0 + 1000, 2, "w3 w4");
        assert_claim(T0 + 1000, 2, "w2 w1");
}

Test(outbox, retry_and_dead_of_a_missing_delivery_fail)
{
        cr_assert_eq(store_outbox_retry(st, 12345, 1, T0, "x"), -ENOENT);
        cr_assert_eq(store_outbox_dead(st, 12345, "x", T0), -ENOENT);
        cr_assert_eq(dead_count(), 0);
        cr_assert_eq(store_dead_delete(st, 12345), -ENOENT);
}

Test(outbox, depth_and_next_due)
{
        int64_t due = -1;

        cr_assert_eq(store_outbox_next_due(st, &due), -ENOENT);
        cr_assert_eq(due, -1, "written on failure");
        enqueue("h", "c", "w1", T0 + 10);
        enqueue("h", "c", "w2", T0 + 20);
        enqueue("h", "d", "w3", T0 + 30);
        cr_assert_eq(store_outbox_next_due(st, &due), 0);
        cr_assert_eq(due, T0 + 10);
        cr_assert_eq(depth(), 3);

        /* In flight: its queue is next due when its lease would run out (a claimer that died
         * is taken over then), and the rows behind it do not count. */
        int64_t w1 = claim_one(T0 + 10, 60000, "w1");
        cr_assert_eq(store_outbox_next_due(st, &due), 0);
        cr_assert_eq(due, T0 + 30);
        int64_t w3 = claim_one(T0 + 30, 60000, "w3");
        cr_assert_eq(store_outbox_next_due(st, &due), 0);
        cr_assert_eq(due, T0 + 10 + 60000);
        cr_assert_eq(depth(), 3, "in flight deliveries are counted");

        cr_assert_eq(store_outbox_retry(st, w1, 1, T0 + 7000, "503"), 0);
        cr_assert_eq(store_outbox_next_due(st, &due), 0);
        cr_assert_eq(due, T0 + 7000);
        cr_assert_eq(store_outbox_done(st, w3, T0 + 40), 0);
        cr_assert_eq(store_outbox_dead(st, w1, "gone", T0 + 50), 0);
        cr_assert_eq(store_outbox_next_due(st, &due), 0);
        cr_assert_eq(due, T0 + 20, "w2 became its queue's head");
        cr_assert_eq(depth(), 1);
}

/* ---- Dead letters ---- */

Test(outbox, dead_moves_the_delivery_with_its_reason)
{
        struct store_enqueue it = {.hook = "h1",
                                   .account = ACC,
                                   .conversation = "c1",
                                   .webhook_id = "msg_1_h1",
                                   .body = "{\"a\":1}",
                                   .body_len = 7};

        cr_assert_eq(store_outbox_enqueue(st, NULL, &it, 1, T0), 0);
        enqueue("h1", "c1", "next", T0);
        int64_t id = claim_one(T0, 30000, "msg_1_h1");

        cr_assert_eq(store_outbox_retry(st, id, 3, T0 + 1000, "HTTP 500"), 0);
        cr_assert_eq(store_outbox_dead(st, id, "HTTP 410 Gone", T0 + 5000), 0);
        cr_assert_eq(depth(), 1);
        cr_assert_eq(dead_count(), 1);
        assert_dead_list(
            0, 100,
            "[{\"id\":1,\"source\":\"delivery:h1/msg_1_h1\",\"reason\":\"HTTP 410 "
            "Gone\",\"received\":\"2027-01-15T08:00:05.000Z\",\"raw\":\"{\\\"a\\\":1}\"}]");
        /* The next delivery of the conversation is no longer held back. */
        assert_claim(T0 + 5000, 10, "next");
        cr_assert_eq(store_outbox_dead(st, id, "again", T0), -ENOENT);
        cr_assert_eq(dead_count(), 1);
}

Test(outbox, dead_letters_list_in_pages_with_lossy_text)
{
        static const char bad[] = "a\xff"
                                  "b\0c\xe2\x82"
                                  "d\xed\xa0\x80"
                                  "e\xc3\xa9";

        cr_assert_eq(
            store_dead_add(st, NULL, "kafka:events/3/7", "not JSON", bad, sizeof(bad) - 1, T0), 0);
        cr_assert_eq(store_dead_add(st, NULL, "http", "no conversation id", "{}", 2, T0 + 1), 0);
        cr_assert_eq(store_dead_add(st, NULL, "replay:f\xffile:3", "x", NULL, 0, T0 + 2), 0);
        cr_assert_eq(dead_count(), 3);
        assert_dead_list(0, 1,
                         "[{\"id\":1,\"source\":\"kafka:events/3/7\",\"reason\":\"not JSON\","
                         "\"received\":\"2027-01-15T08:00:00.000Z\",\"raw\":\"a\xef\xbf\xbd"
                         "b\\u0000c\xef\xbf\xbd"
                         "d\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"
                         "e\xc3\xa9\"}]");
        assert_dead_list(1, 1000,
                         "[{\"id\":2,\"source\":\"http\",\"reason\":\"no conversation id\","
                         "\"received\":\"2027-01-15T08:00:00.001Z\",\"raw\":\"{}\"},"
                         "{\"id\":3,\"source\":\"replay:f\xef\xbf\xbd"
                         "ile:3\",\"reason\":\"x\","
                         "\"received\":\"2027-01-15T08:00:00.002Z\",\"raw\":\"\"}]");
        assert_dead_list(3, 10, "[]");
        assert_dead_list(-5, 2,
                         "[{\"id\":1,\"source\":\"kafka:events/3/7\",\"reason\":\"not "
                         "JSON\",\"received\":\"2027-01-15T08:00:00.000Z\",\"raw\":\"a\xef"
                         "\xbf\xbd"
                         "b\\u0000c\xef\xbf\xbd"
                         "d\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"
                         "e\xc3\xa9\"},{\"id\":2,\"source\":\"http\",\"reason\":\"no "
                         "conversation id\",\"received\":\"2027-01-15T08:00:00.001Z\","
                         "\"raw\":\"{}\"}]");
}

Test(outbox, lossy_text_replaces_each_maximal_ill_formed_subpart)
{
        static const struct {
                const char *in;
                size_t len;
                const char *want; /* JSON text */
        } cases[] = {
            {"plain", 5, "\"plain\""},
            {"\xe2\x82", 2, "\"\xef\xbf\xbd\""},             /* truncated: one U+FFFD */
            {"\xf0\x9f\x98x", 4, "\"\xef\xbf\xbdx\""},       /* truncated 4-byte form */
            {"\xc0\xaf", 2, "\"\xef\xbf\xbd\xef\xbf\xbd\""}, /* overlong */
            {"\xf4\x90\x80\x80", 4,
             "\"\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\""}, /* > U+10FFFF */
            {"\xf0\x9f\x98\x80", 4, "\"\xf0\x9f\x98\x80\""},          /* U+1F600 kept */
            {"\x80", 1, "\"\xef\xbf\xbd\""},
            {"a\0b", 3, "\"a\\u0000b\""},
        };

        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                json_t *v = store_json_lossy(cases[i].in, cases[i].len);

                cr_assert_not_null(v, "case %zu", i);
                assert_json_text(v, cases[i].want);
                json_decref(v);
        }
}

Test(outbox, redriving_a_delivery_queues_it_at_the_end_of_its_queue)
{
        static const char *const clear = "[\"notes\"]";
        struct store_enqueue it = {.hook = "h1",
                                   .account = ACC,
                                   .conversation = "c1",
                                   .webhook_id = "msg_1_h1",
                                   .body = "{\"n\":1}",
                                   .body_len = 7,
                                   .clear_namespaces = clear};
        char *raw = (char *)"untouched", *source = (char *)"untouched";
        size_t raw_len = 4242;
        struct store_delivery *d = NULL;
        size_t n = 0;

        cr_assert_eq(store_outbox_enqueue(st, NULL, &it, 1, T0), 0);
        enqueue("h1", "c1", "msg_2_h1", T0);
        int64_t id = claim_one(T0, 30000, "msg_1_h1");
        cr_assert_eq(store_outbox_dead(st, id, "HTTP 400", T0 + 10), 0);
        enqueue("h1", "c1", "msg_3_h1", T0 + 20);

        cr_assert_eq(store_dead_redrive(st, 1, T0 + 100, &raw, &raw_len, &source), 1);
        cr_assert_str_eq(raw, "untouched");
        cr_assert_str_eq(source, "untouched");
        cr_assert_eq(raw_len, 4242);
        cr_assert_eq(dead_count(), 0);
        cr_assert_eq(depth(), 3);
        cr_assert_eq(store_dead_redrive(st, 1, T0 + 100, &raw, &raw_len, &source), -ENOENT);

        assert_claim(T0 + 100, 10, "msg_2_h1");
        int64_t w2 = claim_one(T0 + 31000, 30000, "msg_2_h1");
        cr_assert_eq(store_outbox_done(st, w2, T0 + 31000), 0);
        int64_t w3 = claim_one(T0 + 31000, 30000, "msg_3_h1");
        cr_assert_eq(store_outbox_done(st, w3, T0 + 31000), 0);
        free(claim(T0 + 31000, 30000, 10, &d, &n));
        cr_assert_eq(n, 1);
        cr_assert_str_eq(d[0].webhook_id, "msg_1_h1");
        cr_assert_gt(d[0].id, w3, "a new row at the end");
        cr_assert_str_eq(d[0].body, "{\"n\":1}");
        cr_assert_eq(d[0].body_len, 7);
        cr_assert_eq(d[0].attempts, 0);
        cr_assert_eq(d[0].created_ms, T0 + 100);
        cr_assert_str_eq(d[0].account, ACC);
        cr_assert_str_eq(d[0].conversation, "c1");
        store_deliveries_free(d, n);
}

Test(outbox, redriving_an_event_hands_back_its_bytes_and_keeps_the_letter)
{
        static const char raw_in[] = "{\"x\":\0\xff\xfe}";
        char *raw = NULL, *source = NULL;
        size_t raw_len = 0;

        cr_assert_eq(store_dead_add(st, "kafka:t/1/9", "kafka:t/1/9", "bad JSON", raw_in,
                                    sizeof(raw_in) - 1, T0),
                     0);
        for (int i = 0; i < 2; i++) {
                cr_assert_eq(store_dead_redrive(st, 1, T0 + 1, &raw, &raw_len, &source), 0);
                cr_assert_eq(raw_len, sizeof(raw_in) - 1);
                cr_assert_eq(memcmp(raw, raw_in, sizeof(raw_in)), 0,
                             "bytes (and the final NUL) differ");
                cr_assert_str_eq(source, "kafka:t/1/9");
                free(raw);
                free(source);
                /* The letter stays until the caller has processed the message again. */
                cr_assert_eq(dead_count(), 1);
        }
        cr_assert_eq(depth(), 0);
        cr_assert_eq(store_dead_delete(st, 1), 0);
        raw = source = NULL;
        cr_assert_eq(store_dead_redrive(st, 1, T0 + 1, &raw, &raw_len, &source), -ENOENT);
        cr_assert_null(raw);
        cr_assert_eq(dead_count(), 0);
        /* The dedup key stays: the message is processed again by the caller, not by Kafka. */
        cr_assert_eq(store_outbox_enqueue(st, "kafka:t/1/9", NULL, 0, T0), -EEXIST);
}

Test(outbox, delete_removes_one_dead_letter)
{
        cr_assert_eq(store_dead_add(st, NULL, "a", "r", "1", 1, T0), 0);
        cr_assert_eq(store_dead_add(st, NULL, "b", "r", "2", 1, T0), 0);
        cr_assert_eq(store_dead_delete(st, 1), 0);
        cr_assert_eq(store_dead_delete(st, 1), -ENOENT);
        cr_assert_eq(dead_count(), 1);
        assert_dead_list(0, 10,
                         "[{\"id\":2,\"source\":\"b\",\"reason\":\"r\",\"received\":"
                         "\"2027-01-15T08:00:00.000Z\",\"raw\":\"2\"}]");
        /* Ids are never reused, so a listed id cannot come to mean another letter. */
        cr_assert_eq(store_dead_delete(st, 2), 0);
        cr_assert_eq(store_dead_add(st, NULL, "c", "r", "3", 1, T0), 0);
        assert_dead_list(0, 10,
                         "[{\"id\":3,\"source\":\"c\",\"reason\":\"r\",\"received\":"
                         "\"2027-01-15T08:00:00.000Z\",\"raw\":\"3\"}]");
}

Test(outbox, outbox_ids_are_never_reused)
{
        enqueue("h", "c", "w1", T0);
        int64_t id = claim_one(T0, 1000, "w1");

        cr_assert_eq(store_outbox_done(st, id, T0), 0);
        st = store_close(st);
        st = test_store_open(where, 2, 5000);
        enqueue("h", "c", "w2", T0);
        cr_assert_gt(claim_one(T0, 1000, "w2"), id);
        /* A late done() of the old id must not touch the new row. */
        cr_assert_eq(store_outbox_done(st, id, T0), -ENOENT);
        cr_assert_eq(depth(), 1);
}

/* ---- Clearing the delivered conversation's notes ---- */

static void put(const char *account, const char *ns, const char *sid, const char *name,
                const char *value)
{
        json_t *v = J(value);

        cr_assert_eq(store_prop_put(st, account, ns, sid, name, v, NULL, T0, NULL), 0);
        json_decref(v);
}

static void assert_props(const char *account, const char *ns, const char *sid, const char *want)
{
        json_t *o = NULL;

        cr_assert_eq(store_props_get(st, account, ns, sid, NULL, T0 + 100, &o, NULL), 0);
        json_t *w = J(want);
        char *got = json_dumps(o, JSON_COMPACT | JSON_SORT_KEYS);
        cr_assert(json_equal(o, w), "%s/%s/%s: got %s, want %s", account, ns, sid ? sid : "-", got,
                  want);
        free(got);
        json_decref(w);
        json_decref(o);
}

Test(outbox, done_clears_the_conversations_notes_in_the_listed_namespaces_only)
{
        struct store_enqueue it = {.hook = "h",
                                   .account = ACC,
                                   .conversation = "conv1",
                                   .webhook_id = "w",
                                   .body = "{}",
                                   .body_len = 2,
                                   .clear_namespaces = "[\"notes\",\"extra\",\"absent\"]"};
        char etag_before[STORE_ETAG_MAX], etag_after[STORE_ETAG_MAX], *text = NULL;
        json_t *o = NULL, *sessions = NULL;

        cr_assert_eq(store_session_create(st, ACC, "notes", "conv1", 3600, T0), 0);
        put(ACC, "notes", "conv1", "note", "\"call back\"");
        put(ACC, "notes", "conv1", "agent", "\"a17\"");
        put(ACC, "extra", "conv1", "x", "1");
        put(ACC, "other", "conv1", "keep", "2");
        put(ACC, "notes", "conv2", "keep", "3");
        put(ACC, "notes", NULL, "keep", "4");
        put("87654321", "notes", "conv1", "keep", "5");
        cr_assert_eq(store_props_get(st, ACC, "notes", "conv1", NULL, T0, &o, etag_before), 0);
        json_decref(o);
        /* Load the property into the read cache (the second read is served from it). */
        for (int i = 0; i < 2; i++) {
                cr_assert_eq(
                    store_prop_get(st, ACC, "notes", "conv1", "note", T0 + 1, &text, NULL, NULL),
                    0);
                cr_assert_str_eq(text, "\"call back\"");
                free(text);
        }

        uint64_t gen = data_gen();
        cr_assert_eq(store_outbox_enqueue(st, NULL, &it, 1, T0), 0);
        int64_t id = claim_one(T0, 1000, "w");
        cr_assert_eq(store_outbox_retry(st, id, 1, T0, "x"), 0);
        id = claim_one(T0, 1000, "w");
        cr_assert_eq(data_gen(), gen, "queue writes must not flush the read cache");
        cr_assert_eq(store_outbox_done(st, id, T0 + 50), 0);
        if (st->ops->gen_load) /* a backend that caches must flush what the clear deleted */
                cr_assert_neq(data_gen(), gen);

        cr_assert_eq(store_prop_get(st, ACC, "notes", "conv1", "note", T0 + 51, &text, NULL, NULL),
                     -ENOENT, "a cached value survived the clear");
        assert_props(ACC, "notes", "conv1", "{}");
        assert_props(ACC, "extra", "conv1", "{}");
        assert_props(ACC, "other", "conv1", "{\"keep\":2}");
        assert_props(ACC, "notes", "conv2", "{\"keep\":3}");
        assert_props(ACC, "notes", NULL, "{\"keep\":4}");
        assert_props("87654321", "notes", "conv1", "{\"keep\":5}");
        /* The session stays with its TTL, under a new ETag. */
        cr_assert_eq(store_props_get(st, ACC, "notes", "conv1", NULL, T0 + 60, &o, etag_after), 0);
        json_decref(o);
        cr_assert_neq(etag_after[0], '\0', "the session is gone");
        cr_assert_str_neq(etag_after, etag_before);
        cr_assert_eq(store_session_list(st, ACC, "notes", T0 + 60, &sessions), 0);
        json_t *conv1 = NULL, *s;
        size_t i;
        json_array_foreach(sessions, i, s)
        {
                if (strcmp(json_string_value(json_object_get(s, "sessionId")), "conv1") == 0)
                        conv1 = s;
        }
        cr_assert_not_null(conv1);
        cr_assert_eq(json_integer_value(json_object_get(conv1, "ttlSecond")), 3600);
        json_decref(sessions);
        cr_assert_eq(depth(), 0);
}

Test(outbox, done_without_clear_namespaces_keeps_notes_and_cache)
{
        char *text = NULL;

        put(ACC, "notes", "conv1", "note", "\"keep me\"");
        enqueue("h", "conv1", "w", T0);
        uint64_t gen = data_gen();
        int64_t id = claim_one(T0, 1000, "w");
        cr_assert_eq(store_outbox_done(st, id, T0), 0);
        cr_assert_eq(data_gen(), gen);
        cr_assert_eq(store_prop_get(st, ACC, "notes", "conv1", "note", T0, &text, NULL, NULL), 0);
        cr_assert_str_eq(text, "\"keep me\"");
        free(text);
}

/* ---- Durability ---- */

Test(outbox, queued_and_leased_state_survives_reopen)
{
        enqueue("h", "c1", "w1", T0);
        enqueue("h", "c2", "w2", T0);
        int64_t id = claim_one(T0, 10000, "w1");

        st = store_close(st);
        st = test_store_open(where, 1, 5000);
        cr_assert_eq(depth(), 2);
        assert_claim(T0 + 1, 10, "w2");
        cr_assert_eq(claim_one(T0 + 10000, 10000, "w1"), id);
}

/* ---- Argument checks ---- */

Test(outbox, bad_arguments_are_refused_without_changes)
{
        char long_hook[STORE_HOOK_MAX + 2], long_key[STORE_DEDUP_KEY_MAX + 2];
        char long_ns_list[128];
        struct store_enqueue ok = {.hook = "h",
                                   .account = ACC,
                                   .conversation = "c",
                                   .webhook_id = "w",
                                   .body = "{}",
                                   .body_len = 2};
        struct store_enqueue items[2] = {ok, ok};
        struct store_delivery *d = NULL;
        char *raw = NULL, *source = NULL;
        size_t n = 0, raw_len = 0;

        memset(long_hook, 'h', sizeof(long_hook) - 1);
        long_hook[sizeof(long_hook) - 1] = '\0';
        memset(long_key, 'k', sizeof(long_key) - 1);
        long_key[sizeof(long_key) - 1] = '\0';
        snprintf(long_ns_list, sizeof(long_ns_list), "[\"%.65s\"]",
                 "nnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnn");

        /* A bad second item refuses the whole call, including the dedup key. */
        items[1].hook = long_hook;
        cr_assert_eq(store_outbox_enqueue(st, "k", items, 2, T0), -EINVAL);
        items[1] = ok;
        items[1].webhook_id = NULL;
        cr_assert_eq(store_outbox_enqueue(st, "k", items, 2, T0), -EINVAL);
        items[1] = ok;
        items[1].body = NULL;
        cr_assert_eq(store_outbox_enqueue(st, "k", items, 2, T0), -EINVAL);
        items[1] = ok;
        items[1].conversation = "bad\xff";
        cr_assert_eq(store_outbox_enqueue(st, "k", items, 2, T0), -EINVAL);
        static const char *const bad_lists[] = {"notjson", "{}", "[1]", "[\"a\",null]", "\"ns\""};
        for (size_t i = 0; i < sizeof(bad_lists) / sizeof(bad_lists[0]); i++) {
                items[1] = ok;
                items[1].clear_namespaces = bad_lists[i];
                cr_assert_eq(store_outbox_enqueue(st, "k", items, 2, T0), -EINVAL, "%s",
                             bad_lists[i]);
        }
        items[1].clear_namespaces = long_ns_list;
        cr_assert_eq(store_outbox_enqueue(st, "k", items, 2, T0), -EINVAL);
        cr_assert_eq(store_outbox_enqueue(st, long_key, &ok, 1, T0), -EINVAL);
        cr_assert_eq(store_outbox_enqueue(st, "k", NULL, 1, T0), -EINVAL);
        cr_assert_eq(store_outbox_enqueue(st, "k", &ok, 1, -1), -EINVAL);
        cr_assert_eq(store_outbox_enqueue(NULL, "k", &ok, 1, T0), -EINVAL);
        cr_assert_eq(depth(), 0);
        /* The key was not recorded by any of the refused calls. */
        cr_assert_eq(store_outbox_enqueue(st, "k", &ok, 1, T0), 0);
        long_key[STORE_DEDUP_KEY_MAX] = '\0';
        cr_assert_eq(store_outbox_enqueue(st, long_key, &ok, 1, T0), 0, "the maximum fits");

        cr_assert_eq(store_outbox_claim(st, T0, 0, 10, &d, &n), -EINVAL);
        cr_assert_eq(store_outbox_claim(st, T0, 1000, 0, &d, &n), -EINVAL);
        cr_assert_eq(store_outbox_claim(st, -1, 1000, 10, &d, &n), -EINVAL);
        cr_assert_eq(store_outbox_claim(st, T0, INT64_MAX, 10, &d, &n), -EINVAL);
        cr_assert_eq(store_outbox_claim(st, T0, 1000, 10, NULL, &n), -EINVAL);
        cr_assert_null(d);
        cr_assert_eq(store_outbox_retry(st, 1, -1, T0, NULL), -EINVAL);
        cr_assert_eq(store_outbox_dead(st, 1, NULL, T0), -EINVAL);
        cr_assert_eq(store_dead_add(st, NULL, NULL, "r", "x", 1, T0), -EINVAL);
        cr_assert_eq(store_dead_add(st, NULL, "s", NULL, "x", 1, T0), -EINVAL);
        cr_assert_eq(store_dead_add(st, NULL, "s", "r", NULL, 1, T0), -EINVAL);
        cr_assert_eq(store_dead_add(st, long_hook, "s", "r", "x", 1, T0), 0);
        json_t *a = NULL;
        cr_assert_eq(store_dead_list(st, 0, 0, &a), -EINVAL);
        cr_assert_eq(store_dead_list(st, 0, 1001, &a), -EINVAL);
        cr_assert_null(a);
        /* Without somewhere to put an event's bytes, nothing is redriven or deleted. */
        cr_assert_eq(store_dead_redrive(st, 1, T0, NULL, &raw_len, &source), -EINVAL);
        cr_assert_eq(store_dead_redrive(st, 1, T0, &raw, &raw_len, NULL), -EINVAL);
        cr_assert_eq(dead_count(), 1);
        int64_t deleted = -1;
        cr_assert_eq(store_dedup_expire(st, -1, &deleted), 0);
        cr_assert_eq(deleted, 0);
        cr_assert_eq(store_dedup_expire(NULL, T0, NULL), -EINVAL);
        cr_assert_eq(depth(), 2);
}

/* ---- Concurrency ---- */

#define RACE_ROWS 1500

struct claimer {
        struct store *s;
        int *seen; /* per webhook number, how often it was claimed */
        pthread_mutex_t *mu;
        int failures;
        char msg[128];
};

static void *claimer_main(void *arg)
{
        struct claimer *c = arg;

        for (;;) {
                struct store_delivery *d = NULL;
                size_t n = 0;
                int rc = store_outbox_claim(c->s, T0, 600000, 7, &d, &n);

                if (rc < 0) {
                        c->failures++;
                        snprintf(c->msg, sizeof(c->msg), "claim: %d", rc);
                        return NULL;
                }
                if (n == 0)
                        return NULL;
                pthread_mutex_lock(c->mu);
                for (size_t i = 0; i < n; i++)
                        c->seen[atoi(d[i].webhook_id)]++;
                pthread_mutex_unlock(c->mu);
                store_deliveries_free(d, n);
        }
}

static void race(struct store *a, struct store *b)
{
        struct store_enqueue items[100];
        char wids[RACE_ROWS][16], convs[RACE_ROWS][16];
        pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
        int *seen = calloc(RACE_ROWS, sizeof(int));
        struct claimer c[4];
        pthread_t t[4];

        /* Every row its own queue, so every row is claimable at once. */
        for (int i = 0; i < RACE_ROWS; i += 100) {
                for (int j = 0; j < 100; j++) {
                        snprintf(wids[i + j], sizeof(wids[0]), "%d", i + j);
                        snprintf(convs[i + j], sizeof(convs[0]), "c%d", i + j);
                        items[j] = (struct store_enqueue){.hook = "h",
                                                          .account = ACC,
                                                          .conversation = convs[i + j],
                                                          .webhook_id = wids[i + j],
                                                          .body = "{}",
                                                          .body_len = 2};
                }
                cr_assert_eq(store_outbox_enqueue(st, NULL, items, 100, T0), 0);
        }
        for (int i = 0; i < 4; i++) {
                c[i] = (struct claimer){.s = i % 2 ? b : a, .seen = seen, .mu = &mu};
                cr_assert_eq(pthread_create(&t[i], NULL, claimer_main, &c[i]), 0);
        }
        for (int i = 0; i < 4; i++) {
                pthread_join(t[i], NULL);
                cr_assert_eq(c[i].failures, 0, "%s", c[i].msg);
        }
        for (int i = 0; i < RACE_ROWS; i++)
                cr_assert_eq(seen[i], 1, "delivery %d claimed %d times", i, seen[i]);
        free(seen);
}

Test(outbox, racing_claimers_on_one_handle_never_share_a_delivery)
{
        race(st, st);
}

Test(outbox, racing_claimers_on_two_handles_never_share_a_delivery)
{
        struct store *other = test_store_open(where, 2, 5000);

        race(st, other);
        store_close(other);
}

/* ---- Migration ---- */

/* SQLite only: the PostgreSQL backend started at the outbox's schema, so it has no database of
 * the first version to migrate. */
#ifndef CTXHOOKD_TEST_PG
/* The schema of version 1 as the Context API release created it. */
static const char schema_v1[] =
    "CREATE TABLE namespaces (account TEXT NOT NULL, name TEXT NOT NULL,"
    " created_at INTEGER NOT NULL, ttl_s INTEGER, PRIMARY KEY (account, name)) STRICT,"
    " WITHOUT ROWID;"
    "CREATE TABLE sessions (account TEXT NOT NULL, ns TEXT NOT NULL, sid TEXT NOT NULL,"
    " created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL, ttl_s INTEGER,"
    " etag INTEGER NOT NULL, PRIMARY KEY (account, ns, sid), FOREIGN KEY (account, ns)"
    " REFERENCES namespaces (account, name) ON DELETE CASCADE) STRICT, WITHOUT ROWID;"
    "CREATE TABLE properties (account TEXT NOT NULL, ns TEXT NOT NULL, sid TEXT NOT NULL,"
    " name TEXT NOT NULL, value TEXT NOT NULL, updated_at INTEGER NOT NULL,"
    " etag INTEGER NOT NULL, PRIMARY KEY (account, ns, sid, name), FOREIGN KEY (account, ns,"
    " sid) REFERENCES sessions (account, ns, sid) ON DELETE CASCADE) STRICT, WITHOUT ROWID;"
    "CREATE TABLE api_keys (account TEXT NOT NULL PRIMARY KEY, key_hash BLOB NOT NULL,"
    " created_at INTEGER NOT NULL) STRICT, WITHOUT ROWID;"
    "INSERT INTO namespaces VALUES ('12345678', 'notes', 1800000000000, NULL);"
    "INSERT INTO sessions VALUES ('12345678', 'notes', 'conv1', 1800000000000,"
    " 1800000000000, NULL, 77);"
    "INSERT INTO properties VALUES ('12345678', 'notes', 'conv1', 'n', '\"old\"',"
    " 1800000000000, 78);"
    "PRAGMA user_version = 1;";

Test(outbox, a_version_1_database_is_migrated_keeping_its_data)
{
        char p[200], *text = NULL, *msg = NULL;
        struct store *s2;
        sqlite3 *db = NULL;
        int version = 0;

        snprintf(p, sizeof(p), "%s/v1.db", dir);
        cr_assert_eq(sqlite3_open(p, &db), SQLITE_OK);
        cr_assert_eq(sqlite3_exec(db, schema_v1, NULL, NULL, &msg), SQLITE_OK, "%s", msg);
        sqlite3_close(db);

        s2 = test_store_open(p, 2, 5000);
        cr_assert_eq(store_schema_version(s2, &version), 0);
        cr_assert_eq(version, 2);
        cr_assert_eq(store_prop_get(s2, ACC, "notes", "conv1", "n", T0, &text, NULL, NULL), 0);
        cr_assert_str_eq(text, "\"old\"");
        free(text);
        enqueue_to(s2, "h", "conv1", "w", T0);
        int64_t n = -1;
        cr_assert_eq(store_outbox_depth(s2, &n), 0);
        cr_assert_eq(n, 1);
        cr_assert_eq(store_dead_add(s2, "k", "http", "r", "x", 1, T0), 0);
        s2 = store_close(s2);

        /* Opening again does not migrate twice. */
        s2 = test_store_open(p, 1, 5000);
        cr_assert_eq(store_schema_version(s2, &version), 0);
        cr_assert_eq(version, 2);
        cr_assert_eq(store_outbox_depth(s2, &n), 0);
        cr_assert_eq(n, 1);
        store_close(s2);
}
#endif
