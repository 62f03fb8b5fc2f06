/* Unit tests of the store, built twice: against real SQLite files in a fresh mkdtemp directory
 * per test (test_store), and with -DCTXHOOKD_TEST_PG against PostgreSQL in a fresh schema per
 * test (test_store_pg, in the cluster of the ctest fixture pg_cluster_start: tests/test_pg.h).
 * Opening and schema migration, API keys, namespaces, properties (every kind of JSON value),
 * ETags and If-Match, TTL expiry by moving the caller's clock, sweeping, paging, concurrent
 * use from several threads, and that a failed write leaves nothing behind, on both backends;
 * the few tests about SQLite's files and locks only on SQLite. The file is driven through the
 * public store.h; sqlite3.h (libpq) appears only to tamper with a database from outside the
 * store, as another process would, and the backend table only to reach a failure that
 * store.c's own argument checks would otherwise catch first. */
#include <criterion/criterion.h>
#include <errno.h>
#include <ftw.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
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
        strcpy(dir, "/tmp/ctxhookd-test-store-XXXXXX");
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

/* Parses JSON text (any value, NULs allowed) or fails the test. */
static json_t *J(const char *text)
{
        json_error_t e;
        json_t *v = json_loads(text, JSON_DECODE_ANY | JSON_ALLOW_NUL, &e);

        cr_assert_not_null(v, "bad test JSON %s: %s", text, e.text);
        return v;
}

/* Compact, key-sorted text of a JSON value, for comparisons (caller frees). */
static char *dump(const json_t *v)
{
        char *s = json_dumps(v, JSON_COMPACT | JSON_SORT_KEYS | JSON_ENCODE_ANY);

        cr_assert_not_null(s);
        return s;
}

static void assert_json(json_t *v, const char *want)
{
        json_t *w = J(want);
        char *got = dump(v);

        cr_assert(json_equal(v, w), "got %s, want %s", got, want);
        free(got);
        json_decref(w);
}

static char *props_text(const char *ns, const char *sid, int64_t now, char etag[STORE_ETAG_MAX])
{
        json_t *o = NULL;
        char *s;
        int rc = store_props_get(st, ACC, ns, sid, NULL, now, &o, etag);

        cr_assert_eq(rc, 0, "props_get %s/%s: %d", ns, sid ? sid : "(default)", rc);
        s = dump(o);
        json_decref(o);
        return s;
}

static void assert_props(const char *ns, const char *sid, int64_t now, const char *want)
{
        json_t *o = NULL;

        cr_assert_eq(store_props_get(st, ACC, ns, sid, NULL, now, &o, NULL), 0);
        assert_json(o, want);
        json_decref(o);
}

static void merge(const char *ns, const char *sid, const char *obj, int64_t now)
{
        json_t *v = J(obj);
        int rc = store_props_merge(st, ACC, ns, sid, v, NULL, now, NULL);

        cr_assert_eq(rc, 0, "merge %s into %s/%s: %d", obj, ns, sid ? sid : "-", rc);
        json_decref(v);
}

static void put(const char *ns, const char *sid, const char *name, const char *value, int64_t now)
{
        json_t *v = J(value);
        int rc = store_prop_put(st, ACC, ns, sid, name, v, NULL, now, NULL);

        cr_assert_eq(rc, 0, "put %s=%s: %d", name, value, rc);
        json_decref(v);
}

static void assert_array(int rc, json_t *a, const char *want)
{
        cr_assert_eq(rc, 0, "listing failed: %d", rc);
        assert_json(a, want);
        json_decref(a);
}

static void assert_session_ids(const char *ns, int64_t page, int64_t per_page, int64_t now,
                               const char *want)
{
        json_t *a = NULL;
        int rc = store_session_ids(st, ACC, ns, page, per_page, now, &a);

        assert_array(rc, a, want);
}

#ifdef CTXHOOKD_TEST_PG
/* The postgresql backend records its schema version in a table (daemon/store_pg.c). */
#define NEWER_VERSION_SQL "UPDATE ctxhookd_schema SET version = 999"
#else
#define NEWER_VERSION_SQL "PRAGMA user_version = 999"
#endif

/* ---- Opening and schema ---- */

TestSuite(open, .init = setup, .fini = teardown);

Test(open, creates_the_database_at_the_latest_schema)
{
        struct store_options o = test_store_options(where, 1, 1000);
        int version = -1;

        cr_assert_eq(store_schema_version(st, &version), 0);
        cr_assert_geq(version, 1);
        cr_assert_eq(version, store_schema_latest(&o));
        cr_assert_eq(store_ping(st), 0);
#ifdef CTXHOOKD_TEST_PG
        {
                char n[32];

                /* In the URL's schema, not anywhere else. */
                test_pg_value(where,
                              "SELECT count(*) FROM pg_tables WHERE schemaname = current_schema()",
                              n, sizeof(n));
                cr_assert_geq(atoi(n), 4, "only %s tables in the test's schema", n);
        }
#else
        {
                sqlite3 *db = NULL;
                sqlite3_stmt *q = NULL;

                cr_assert_eq(sqlite3_open(where, &db), SQLITE_OK);
                cr_assert_eq(sqlite3_prepare_v2(db, "PRAGMA journal_mode", -1, &q, NULL),
                             SQLITE_OK);
                cr_assert_eq(sqlite3_step(q), SQLITE_ROW);
                cr_assert_str_eq((const char *)sqlite3_column_text(q, 0), "wal");
                sqlite3_finalize(q);
                cr_assert_eq(sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &q, NULL),
                             SQLITE_OK);
                cr_assert_eq(sqlite3_step(q), SQLITE_ROW);
                cr_assert_eq(sqlite3_column_int(q, 0), version);
                sqlite3_finalize(q);
                sqlite3_close(db);
        }
#endif
}

Test(open, reopening_is_idempotent_and_keeps_data)
{
        int v1 = 0, v2 = 0;
        char *text = NULL;

        cr_assert_eq(store_schema_version(st, &v1), 0);
        put("notes", "conv1", "n", "{\"k\":[1,2]}", T0);
        st = store_close(st);
        st = test_store_open(where, 2, 1000);
        st = store_close(st);
        st = test_store_open(where, 1, 1000);
        cr_assert_eq(store_schema_version(st, &v2), 0);
        cr_assert_eq(v1, v2);
        cr_assert_eq(store_prop_get(st, ACC, "notes", "conv1", "n", T0, &text, NULL, NULL), 0);
        cr_assert_str_eq(text, "{\"k\":[1,2]}");
        free(text);
}

Test(open, migrates_an_existing_empty_database)
{
        char p[sizeof(where)];
        struct store *s2;
        int version = 0;

        /* A database that has something else in it but none of the store's tables. */
        test_store_where(dir, "old.db", p, sizeof(p));
        test_store_raw_sql(p, "CREATE TABLE unrelated (x INTEGER)");
        s2 = test_store_open(p, 1, 1000);
        cr_assert_eq(store_schema_version(s2, &version), 0);
        cr_assert_geq(version, 1);
        cr_assert_eq(store_ns_create(s2, ACC, "ns", -1, T0), 0);
        store_close(s2);
        test_store_drop(p);
}

Test(open, refuses_a_database_from_a_newer_version)
{
        struct store_options o = test_store_options(where, 2, 1000);
        struct ch_error err = {{0}};
        struct store *s2 = NULL;
        int rc;

        st = store_close(st);
        test_store_raw_sql(where, NEWER_VERSION_SQL);
        rc = store_open(&o, &s2, &err);
        cr_assert_lt(rc, 0);
        cr_assert_null(s2);
        cr_assert_not_null(strstr(err.msg, where), "message does not name the database: %s",
                           err.msg);
        cr_assert_not_null(strstr(err.msg, "999"), "message: %s", err.msg);
        cr_assert_not_null(strstr(err.msg, "newer"), "message: %s", err.msg);
}

#ifndef CTXHOOKD_TEST_PG
Test(open, unopenable_path_fails_naming_it)
{
        struct ch_error err = {{0}};
        struct store *s2 = NULL;
        char file[200], p[260];
        struct store_options o = {.path = p, .busy_timeout_ms = 100, .pool_size = 1};
        FILE *f;
        int rc;

        /* A path below a regular file cannot be created even by root. */
        snprintf(file, sizeof(file), "%s/plainfile", dir);
        f = fopen(file, "w");
        cr_assert_not_null(f);
        fclose(f);
        snprintf(p, sizeof(p), "%s/context.db", file);
        rc = store_open(&o, &s2, &err);
        cr_assert_lt(rc, 0);
        cr_assert_null(s2);
        cr_assert_not_null(strstr(err.msg, p), "message does not name the file: %s", err.msg);
}
#endif

Test(open, bad_options_are_refused)
{
        struct ch_error err = {{0}};
        struct store *s2 = NULL;
        struct store_options none = test_store_options(NULL, 1, 0);
        struct store_options nopool = test_store_options(where, 0, 0);

        cr_assert_eq(store_open(&none, &s2, &err), -EINVAL);
        cr_assert_eq(store_open(&nopool, &s2, &err), -EINVAL);
        cr_assert_null(s2);
        cr_assert_null(store_close(NULL));
}

static void *open_thread(void *arg)
{
        struct store_options o = test_store_options(arg, 2, 10000);
        struct ch_error err = {{0}};
        struct store *s = NULL;
        intptr_t rc = store_open(&o, &s, &err);

        if (rc == 0)
                rc = store_ns_create(s, ACC, "together", -1, T0);
        store_close(s);
        return (void *)rc;
}

Test(open, concurrent_first_opens_all_succeed)
{
        pthread_t t[6];
        char p[sizeof(where)];
        struct store *s2;
        json_t *a = NULL;

        test_store_where(dir, "fresh.db", p, sizeof(p));
        for (size_t i = 0; i < 6; i++)
                cr_assert_eq(pthread_create(&t[i], NULL, open_thread, p), 0);
        for (size_t i = 0; i < 6; i++) {
                void *rc;
                pthread_join(t[i], &rc);
                cr_assert_eq((intptr_t)rc, 0, "opener %zu failed: %d", i, (int)(intptr_t)rc);
        }
        s2 = test_store_open(p, 1, 1000);
        cr_assert_eq(store_ns_list(s2, ACC, &a), 0);
        cr_assert_eq(json_array_size(a), 1);
        json_decref(a);
        store_close(s2);
        test_store_drop(p);
}

/* Another connection, outside the store (the CLI, say, or another instance), takes the lock
 * that writers of properties wait for and holds it: SQLite's write lock on the database, a
 * PostgreSQL lock on the properties table that lets readers through. */
static void *hold_write_lock(void)
{
#ifdef CTXHOOKD_TEST_PG
        PGconn *c = test_pg_connect(where);

        test_pg_run(c, "BEGIN; LOCK TABLE properties IN EXCLUSIVE MODE", NULL, 0);
        return c;
#else
        sqlite3 *db = NULL;

        cr_assert_eq(sqlite3_open(where, &db), SQLITE_OK);
        cr_assert_eq(sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL), SQLITE_OK);
        return db;
#endif
}

static void release_write_lock(void *holder)
{
#ifdef CTXHOOKD_TEST_PG
        test_pg_run(holder, "COMMIT", NULL, 0);
        PQfinish(holder);
#else
        cr_assert_eq(sqlite3_exec(holder, "COMMIT", NULL, NULL, NULL), SQLITE_OK);
        sqlite3_close(holder);
#endif
}

Test(open, a_held_write_lock_gives_eio_after_the_busy_timeout)
{
        struct store *s2 = test_store_open(where, 1, 50);
        json_t *v = json_integer(1);
        char *text = NULL;
        void *lock;

        lock = hold_write_lock();
        cr_assert_eq(store_prop_put(s2, ACC, "ns", NULL, "p", v, NULL, T0, NULL), -EIO);
        /* Reads are not blocked by a writer (SQLite in WAL mode; PostgreSQL's MVCC). */
        cr_assert_eq(store_prop_get(s2, ACC, "ns", NULL, "p", T0, &text, NULL, NULL), -ENOENT);
        release_write_lock(lock);
        /* The failure released everything: the next write goes through. */
        cr_assert_eq(store_prop_put(s2, ACC, "ns", NULL, "p", v, NULL, T0, NULL), 0);
        cr_assert_eq(store_prop_get(s2, ACC, "ns", NULL, "p", T0, &text, NULL, NULL), 0);
        cr_assert_str_eq(text, "1");
        free(text);
        json_decref(v);
        store_close(s2);
}

/* ---- API keys ---- */

TestSuite(keys, .init = setup, .fini = teardown);

Test(keys, set_get_replace)
{
        unsigned char h1[STORE_KEY_HASH_LEN], h2[STORE_KEY_HASH_LEN], got[STORE_KEY_HASH_LEN];

        memset(h1, 0xA1, sizeof(h1));
        memset(h2, 0x5B, sizeof(h2));
        h2[0] = 0;
        memset(got, 0, sizeof(got));
        cr_assert_eq(store_key_get(st, ACC, got), -ENOENT);
        cr_assert_eq(store_key_set(st, ACC, h1, T0), 0);
        cr_assert_eq(store_key_get(st, ACC, got), 0);
        cr_assert_arr_eq(got, h1, sizeof(h1));
        cr_assert_eq(store_key_get(st, "87654321", got), -ENOENT);
        /* A new key revokes the old one. */
        cr_assert_eq(store_key_set(st, ACC, h2, T0 + 1), 0);
        cr_assert_eq(store_key_get(st, ACC, got), 0);
        cr_assert_arr_eq(got, h2, sizeof(h2));
}

Test(keys, a_key_written_by_another_handle_is_seen_at_once)
{
        unsigned char h[STORE_KEY_HASH_LEN], h2[STORE_KEY_HASH_LEN], got[STORE_KEY_HASH_LEN];
        struct store *cli;

        memset(h, 7, sizeof(h));
        memset(h2, 9, sizeof(h2));
        cr_assert_eq(store_key_get(st, ACC, got), -ENOENT); /* warm every cache there is */
        cli = test_store_open(where, 1, 1000);              /* as `ctxhookd apikey create` does */
        cr_assert_eq(store_key_set(cli, ACC, h, T0), 0);
        for (int i = 0; i < 8; i++) { /* whichever pooled connection answers */
                cr_assert_eq(store_key_get(st, ACC, got), 0);
                cr_assert_arr_eq(got, h, sizeof(h));
        }
        cr_assert_eq(store_key_set(cli, ACC, h2, T0), 0);
        store_close(cli);
        for (int i = 0; i < 8; i++) {
                cr_assert_eq(store_key_get(st, ACC, got), 0);
                cr_assert_arr_eq(got, h2, sizeof(h2));
        }
}

/* ---- Namespaces ---- */

TestSuite(ns, .init = setup, .fini = teardown);

Test(ns, create_is_idempotent_and_lists_by_name_with_shape)
{
        json_t *a = NULL;

        cr_assert_eq(store_ns_create(st, ACC, "b_notes", -1, T0), 0);
        cr_assert_eq(store_ns_create(st, ACC, "a_notes", 3600, T0 + 1), 0);
        cr_assert_eq(store_ns_create(st, ACC, "Z", 0, T0 + 2), 0);
        cr_assert_eq(store_ns_create(st, ACC, "b_notes", -1, T0 + 5000), 0); /* again */
        cr_assert_eq(store_ns_create(st, "other", "c", -1, T0), 0);
        cr_assert_eq(store_ns_list(st, ACC, &a), 0);
        assert_array(0, a,
                     "[{\"name\":\"Z\",\"createdAt\":\"2027-01-15T08:00:00.002Z\"},"
                     " {\"name\":\"a_notes\",\"createdAt\":\"2027-01-15T08:00:00.001Z\","
                     "  \"ttlSecond\":3600},"
                     " {\"name\":\"b_notes\",\"createdAt\":\"2027-01-15T08:00:00.000Z\"}]");
        cr_assert_eq(store_ns_list(st, "nobody", &a), 0);
        assert_array(0, a, "[]");
}

Test(ns, ttl_is_set_kept_and_cleared)
{
        json_t *a = NULL;

        cr_assert_eq(store_ns_create(st, ACC, "n", 60, T0), 0);
        cr_assert_eq(store_ns_create(st, ACC, "n", -1, T0), 0); /* leaves it */
        cr_assert_eq(store_ns_list(st, ACC, &a), 0);
        cr_assert_eq(json_integer_value(json_object_get(json_array_get(a, 0), "ttlSecond")), 60);
        json_decref(a);
        cr_assert_eq(store_ns_create(st, ACC, "n", 120, T0), 0);
        cr_assert_eq(store_ns_list(st, ACC, &a), 0);
        cr_assert_eq(json_integer_value(json_object_get(json_array_get(a, 0), "ttlSecond")), 120);
        json_decref(a);
        cr_assert_eq(store_ns_create(st, ACC, "n", 0, T0), 0); /* forever */
        cr_assert_eq(store_ns_list(st, ACC, &a), 0);
        cr_assert_null(json_object_get(json_array_get(a, 0), "ttlSecond"));
        json_decref(a);
}

Test(ns, writes_create_the_namespace)
{
        json_t *a = NULL;

        put("implicit", "s1", "k", "1", T0);
        cr_assert_eq(store_ns_list(st, ACC, &a), 0);
        assert_array(0, a, "[{\"name\":\"implicit\",\"createdAt\":\"2027-01-15T08:00:00.000Z\"}]");
}

Test(ns, delete_removes_everything_in_it_and_only_that)
{
        json_t *a = NULL;
        char *text = NULL;

        cr_assert_eq(store_ns_create(st, ACC, "gone", 100, T0), 0);
        merge("gone", NULL, "{\"a\":1}", T0);
        merge("gone", "s1", "{\"b\":2}", T0);
        cr_assert_eq(store_session_create(st, ACC, "gone", "s2", 50, T0), 0);
        merge("kept", "s1", "{\"c\":3}", T0);
        merge("gone", "s1", "{\"x\":1}", T0); /* same sid elsewhere stays apart */

        cr_assert_eq(store_ns_delete(st, ACC, "gone"), 0);
        cr_assert_eq(store_ns_delete(st, ACC, "gone"), 0);  /* again: fine */
        cr_assert_eq(store_ns_delete(st, ACC, "never"), 0); /* never existed: fine */
        cr_assert_eq(store_ns_list(st, ACC, &a), 0);
        cr_assert_eq(json_array_size(a), 1);
        cr_assert_str_eq(json_string_value(json_object_get(json_array_get(a, 0), "name")), "kept");
        json_decref(a);
        assert_props("gone", NULL, T0, "{}");
        assert_props("gone", "s1", T0, "{}");
        assert_props("kept", "s1", T0, "{\"c\":3}");
        cr_assert_eq(store_prop_get(st, ACC, "gone", "s1", "b", T0, &text, NULL, NULL), -ENOENT);
        assert_session_ids("gone", 0, 100, T0, "[]");
        /* Recreated by a write, it has neither the old TTL nor the old sessions. */
        merge("gone", "s3", "{\"d\":4}", T0);
        cr_assert_eq(store_ns_list(st, ACC, &a), 0);
        cr_assert_null(json_object_get(json_array_get(a, 0), "ttlSecond"));
        json_decref(a);
        assert_session_ids("gone", 0, 100, T0, "[\"s3\"]");
        /* Without a TTL it lives forever. */
        assert_props("gone", "s3", T0 + INT64_C(1000000000000), "{\"d\":4}");
}

/* ---- Properties ---- */

TestSuite(props, .init = setup, .fini = teardown);

Test(props, merge_upserts_and_keeps_the_others)
{
        merge("n", "s", "{\"a\":1,\"b\":2}", T0);
        merge("n", "s", "{\"b\":{\"deep\":[true]},\"c\":\"x\"}", T0 + 1);
        assert_props("n", "s", T0 + 2, "{\"a\":1,\"b\":{\"deep\":[true]},\"c\":\"x\"}");
        merge("n", "s", "{}", T0 + 3);
        assert_props("n", "s", T0 + 3, "{\"a\":1,\"b\":{\"deep\":[true]},\"c\":\"x\"}");
        /* The namespace level is the default session, apart from the others. */
        merge("n", NULL, "{\"top\":1}", T0);
        assert_props("n", STORE_DEFAULT_SESSION, T0, "{\"top\":1}");
        assert_props("n", "s", T0, "{\"a\":1,\"b\":{\"deep\":[true]},\"c\":\"x\"}");
}

Test(props, any_json_value_round_trips)
{
        static const char *const values[] = {
            "\"a\\u0000b\"",
            "\"é€😀\"",
            "\"\"",
            "\"quote \\\" backslash \\\\ newline \\n tab \\t\"",
            "{\"x\":{\"y\":[1,2,{\"z\":null}]},\"ü\":\"\\u0000\"}",
            "[1,\"two\",3.5,[],{}]",
            "true",
            "false",
            "null",
            "0",
            "-1234567890123456789",
            "3.141592653589793",
            "1e+300",
            "-0.5",
        };
        char name[16];

        for (size_t i = 0; i < sizeof(values) / sizeof(values[0]); i++) {
                snprintf(name, sizeof(name), "v%zu", i);
                put("vals", "s", name, values[i], T0);
        }
        for (size_t i = 0; i < sizeof(values) / sizeof(values[0]); i++) {
                json_t *want = J(values[i]), *got, *all = NULL;
                char *text = NULL;
                size_t len = 0;

                snprintf(name, sizeof(name), "v%zu", i);
                cr_assert_eq(store_prop_get(st, ACC, "vals", "s", name, T0, &text, &len, NULL), 0);
                cr_assert_eq(strlen(text), len, "raw NUL in stored text of %s", values[i]);
                got = J(text);
                cr_assert(json_equal(got, want), "%s came back as %s", values[i], text);
                cr_assert_eq(store_props_get(st, ACC, "vals", "s", NULL, T0, &all, NULL), 0);
                cr_assert(json_equal(json_object_get(all, name), want), "%s in object", values[i]);
                json_decref(all);
                json_decref(got);
                json_decref(want);
                free(text);
        }
}

Test(props, large_values_round_trip)
{
        const size_t big = 300 * 1024;
        char *text = NULL, *s = malloc(big + 1);
        json_t *v;
        size_t len = 0;

        cr_assert_not_null(s);
        for (size_t i = 0; i < big; i++)
                s[i] = (char)('a' + i % 26);
        s[big] = '\0';
        v = json_string(s);
        /* Bigger than any reusable buffer, then medium, then small again. */
        cr_assert_eq(store_prop_put(st, ACC, "n", "s", "big", v, NULL, T0, NULL), 0);
        json_decref(v);
        s[40000] = '\0';
        v = json_string(s);
        cr_assert_eq(store_prop_put(st, ACC, "n", "s", "mid", v, NULL, T0, NULL), 0);
        json_decref(v);
        put("n", "s", "small", "[1]", T0);
        cr_assert_eq(store_prop_get(st, ACC, "n", "s", "big", T0, &text, &len, NULL), 0);
        cr_assert_eq(len, big + 2);
        cr_assert_eq(text[0], '"');
        cr_assert_eq(memcmp(text + 1, "abcdefghijklmnopqrstuvwxyzabc", 29), 0);
        cr_assert_eq(text[big + 1], '"');
        free(text);
        cr_assert_eq(store_prop_get(st, ACC, "n", "s", "mid", T0, &text, &len, NULL), 0);
        cr_assert_eq(len, 40002);
        free(text);
        cr_assert_eq(store_prop_get(st, ACC, "n", "s", "small", T0, &text, &len, NULL), 0);
        cr_assert_str_eq(text, "[1]");
        free(text);
        free(s);
}

Test(props, nul_and_unicode_survive_byte_exact)
{
        json_t *all = NULL, *v;
        char *text = NULL;

        put("u", NULL, "nul", "\"a\\u0000b\"", T0);
        put("u", NULL, "uni", "\"é€😀\"", T0);
        cr_assert_eq(store_prop_get(st, ACC, "u", NULL, "nul", T0, &text, NULL, NULL), 0);
        cr_assert_str_eq(text, "\"a\\u0000b\"");
        free(text);
        cr_assert_eq(store_prop_get(st, ACC, "u", NULL, "uni", T0, &text, NULL, NULL), 0);
        cr_assert_str_eq(text, "\"é€😀\"");
        free(text);
        cr_assert_eq(store_props_get(st, ACC, "u", NULL, NULL, T0, &all, NULL), 0);
        v = json_object_get(all, "nul");
        cr_assert_eq(json_string_length(v), 3);
        cr_assert_eq(memcmp(json_string_value(v), "a\0b", 3), 0);
        cr_assert_str_eq(json_string_value(json_object_get(all, "uni")), "é€😀");
        json_decref(all);
}

Test(props, single_property_text_is_the_compact_dump_in_order)
{
        char *text = NULL;
        size_t len = 0;

        put("n", "s", "obj", "{ \"b\" : 1, \"a\" : [ 1, 2 ] }", T0);
        cr_assert_eq(store_prop_get(st, ACC, "n", "s", "obj", T0, &text, &len, NULL), 0);
        cr_assert_str_eq(text, "{\"b\":1,\"a\":[1,2]}");
        cr_assert_eq(len, strlen("{\"b\":1,\"a\":[1,2]}"));
        free(text);
        text = NULL;
        cr_assert_eq(store_prop_get(st, ACC, "n", "s", "nope", T0, &text, NULL, NULL), -ENOENT);
        cr_assert_eq(store_prop_get(st, ACC, "n", "other", "obj", T0, &text, NULL, NULL), -ENOENT);
        cr_assert_null(text); /* untouched on failure */
}

Test(props, include_filters_names)
{
        const char *const inc[] = {"a", "c", "missing", NULL};
        const char *const none[] = {NULL};
        json_t *o = NULL;
        char etag[STORE_ETAG_MAX], etag_all[STORE_ETAG_MAX];

        merge("n", "s", "{\"a\":1,\"b\":2,\"c\":[3]}", T0);
        cr_assert_eq(store_props_get(st, ACC, "n", "s", inc, T0, &o, etag), 0);
        assert_json(o, "{\"a\":1,\"c\":[3]}");
        json_decref(o);
        free(props_text("n", "s", T0, etag_all));
        cr_assert_str_eq(etag, etag_all);
        cr_assert_eq(store_props_get(st, ACC, "n", "s", none, T0, &o, NULL), 0);
        assert_json(o, "{}");
        json_decref(o);
}

Test(props, put_and_delete)
{
        char *text = NULL;

        put("n", "s", "a", "1", T0);
        put("n", "s", "a", "[2]", T0 + 1);
        put("n", "s", "b", "3", T0 + 1);
        cr_assert_eq(store_prop_get(st, ACC, "n", "s", "a", T0 + 2, &text, NULL, NULL), 0);
        cr_assert_str_eq(text, "[2]");
        free(text);
        cr_assert_eq(store_prop_delete(st, ACC, "n", "s", "a", NULL, T0 + 3), 0);
        assert_props("n", "s", T0 + 3, "{\"b\":3}");
        /* Deleting what is missing is fine, and creates nothing. */
        cr_assert_eq(store_prop_delete(st, ACC, "n", "s", "a", NULL, T0 + 3), 0);
        cr_assert_eq(store_prop_delete(st, ACC, "elsewhere", "x", "a", NULL, T0), 0);
        cr_assert_eq(store_props_clear(st, ACC, "elsewhere", "x", NULL, T0), 0);
        cr_assert_eq(store_session_delete(st, ACC, "elsewhere", "x"), 0);
        {
                json_t *a = NULL;
                cr_assert_eq(store_ns_list(st, ACC, &a), 0);
                assert_array(0, a, "[{\"name\":\"n\",\"createdAt\":\"2027-01-15T08:00:00.000Z\"}]");
        }
}

Test(props, clear_keeps_the_session_and_its_ttl)
{
        json_t *a = NULL;

        cr_assert_eq(store_session_create(st, ACC, "n", "s", 100, T0), 0);
        merge("n", "s", "{\"a\":1,\"b\":2}", T0);
        merge("n", "t", "{\"c\":3}", T0);
        cr_assert_eq(store_props_clear(st, ACC, "n", "s", NULL, T0 + 1), 0);
        assert_props("n", "s", T0 + 1, "{}");
        assert_props("n", "t", T0 + 1, "{\"c\":3}");
        cr_assert_eq(store_session_list(st, ACC, "n", T0 + 1, &a), 0);
        assert_array(0, a,
                     "[{\"sessionId\":\"s\",\"createdAt\":\"2027-01-15T08:00:00.000Z\","
                     "  \"ttlSecond\":100},"
                     " {\"sessionId\":\"t\",\"createdAt\":\"2027-01-15T08:00:00.000Z\","
                     "  \"ttlSecond\":0}]");
        /* The TTL still applies to what is written next. */
        merge("n", "s", "{\"d\":4}", T0 + 1000);
        assert_props("n", "s", T0 + 100999, "{\"d\":4}");
        assert_props("n", "s", T0 + 101000, "{}");
}

Test(props, limits_are_refused_without_changes)
{
        char long_name[STORE_NAME_MAX + 2], max_name[STORE_NAME_MAX + 1], long_ns[66];
        json_t *v = json_true(), *obj;
        char *text = NULL;

        memset(long_name, 'n', sizeof(long_name) - 1);
        long_name[sizeof(long_name) - 1] = '\0';
        memset(max_name, 'm', sizeof(max_name) - 1);
        max_name[sizeof(max_name) - 1] = '\0';
        memset(long_ns, 's', sizeof(long_ns) - 1);
        long_ns[sizeof(long_ns) - 1] = '\0';

        cr_assert_eq(store_prop_put(st, ACC, "n", "s", long_name, v, NULL, T0, NULL), -EINVAL);
        cr_assert_eq(store_prop_put(st, ACC, "n", long_name, "p", v, NULL, T0, NULL), -EINVAL);
        cr_assert_eq(store_prop_put(st, ACC, long_ns, "s", "p", v, NULL, T0, NULL), -EINVAL);
        cr_assert_eq(store_prop_put(st, long_ns, "n", "s", "p", v, NULL, T0, NULL), -EINVAL);
        cr_assert_eq(store_prop_put(st, ACC, "n", "s", "bad\xff", v, NULL, T0, NULL), -EINVAL);
        cr_assert_eq(store_prop_put(st, ACC, "n", "s", "\xed\xa0\x80", v, NULL, T0, NULL),
                     -EINVAL); /* a UTF-16 surrogate */
        cr_assert_eq(store_prop_put(st, ACC, "n", "s", "p", v, NULL, -1, NULL), -EINVAL);
        cr_assert_eq(store_ns_create(st, ACC, "n", INT64_MAX, T0), -EINVAL);
        cr_assert_eq(store_props_merge(st, ACC, "n", "s", v, NULL, T0, NULL), -EINVAL);
        cr_assert_eq(store_prop_put(st, ACC, NULL, "s", "p", v, NULL, T0, NULL), -EINVAL);
        /* Nothing above created anything. */
        {
                json_t *a = NULL;
                cr_assert_eq(store_ns_list(st, ACC, &a), 0);
                assert_array(0, a, "[]");
        }
        /* The limits themselves are fine. */
        cr_assert_eq(store_prop_put(st, ACC, "n", max_name, max_name, v, NULL, T0, NULL), 0);
        cr_assert_eq(store_prop_get(st, ACC, "n", max_name, max_name, T0, &text, NULL, NULL), 0);
        cr_assert_str_eq(text, "true");
        free(text);
        obj = json_object();
        json_object_set_new(obj, "é", json_integer(1));
        cr_assert_eq(store_props_merge(st, ACC, "n", "s", obj, NULL, T0, NULL), 0);
        json_decref(obj);
        json_decref(v);
}

/* Builds {"a": 5, "<300 n's>": 1, "z": 1}: valid up to a name the store cannot hold. */
static json_t *merge_with_bad_middle(void)
{
        char long_name[STORE_NAME_MAX + 45];
        json_t *o = json_object();

        memset(long_name, 'n', sizeof(long_name) - 1);
        long_name[sizeof(long_name) - 1] = '\0';
        json_object_set_new(o, "a", json_integer(5));
        json_object_set_new(o, long_name, json_integer(1));
        json_object_set_new(o, "z", json_integer(1));
        return o;
}

Test(props, failed_merge_changes_nothing)
{
        char before[STORE_ETAG_MAX], after[STORE_ETAG_MAX];
        json_t *bad = merge_with_bad_middle(), *a = NULL, *nul_key = json_object();
        char *t1, *t2;

        merge("n", "s", "{\"a\":1,\"b\":2}", T0);
        t1 = props_text("n", "s", T0, before);
        cr_assert_eq(store_props_merge(st, ACC, "n", "s", bad, NULL, T0 + 1, NULL), -EINVAL);
        json_object_setn_new(nul_key, "x\0y", 3, json_integer(1));
        cr_assert_eq(store_props_merge(st, ACC, "n", "s", nul_key, NULL, T0 + 1, NULL), -EINVAL);
        /* The backend's own check, inside its transaction, once "a" is already written. */
        cr_assert_eq(st->ops->props_merge(st->impl, ACC, "n", "s", bad, NULL, T0 + 1, NULL),
                     -EINVAL);
        cr_assert_eq(st->ops->props_merge(st->impl, ACC, "fresh", "s", bad, NULL, T0 + 1, NULL),
                     -EINVAL);
        t2 = props_text("n", "s", T0 + 1, after);
        cr_assert_str_eq(t1, t2);
        cr_assert_str_eq(before, after);
        cr_assert_eq(store_ns_list(st, ACC, &a), 0);
        cr_assert_eq(json_array_size(a), 1, "a failed merge created a namespace");
        json_decref(a);
        free(t1);
        free(t2);
        json_decref(bad);
        json_decref(nul_key);
}

/* ---- ETags ---- */

TestSuite(etag, .init = setup, .fini = teardown);

Test(etag, every_write_changes_the_tags)
{
        char m1[STORE_ETAG_MAX], m2[STORE_ETAG_MAX], p1[STORE_ETAG_MAX], p2[STORE_ETAG_MAX];
        char g[STORE_ETAG_MAX], s1[STORE_ETAG_MAX], s2[STORE_ETAG_MAX], s3[STORE_ETAG_MAX];
        json_t *v = json_integer(1), *obj = J("{\"a\":1}");
        char *text;

        cr_assert_eq(store_props_merge(st, ACC, "n", "s", obj, NULL, T0, m1), 0);
        cr_assert_eq(m1[0], '"');
        cr_assert_eq(m1[strlen(m1) - 1], '"');
        cr_assert_gt(strlen(m1), 2);
        free(props_text("n", "s", T0, g));
        cr_assert_str_eq(g, m1);
        /* The same content written again is still a new version. */
        cr_assert_eq(store_props_merge(st, ACC, "n", "s", obj, NULL, T0, m2), 0);
        cr_assert_str_neq(m1, m2);

        cr_assert_eq(store_prop_put(st, ACC, "n", "s", "p", v, NULL, T0, p1), 0);
        cr_assert_eq(store_prop_get(st, ACC, "n", "s", "p", T0, &text, NULL, g), 0);
        free(text);
        cr_assert_str_eq(g, p1);
        free(props_text("n", "s", T0, s1));
        cr_assert_str_neq(s1, m2, "a property write must change the session's ETag");
        cr_assert_eq(store_prop_put(st, ACC, "n", "s", "p", v, NULL, T0, p2), 0);
        cr_assert_str_neq(p1, p2);
        free(props_text("n", "s", T0, s2));
        cr_assert_str_neq(s1, s2);
        cr_assert_eq(store_prop_delete(st, ACC, "n", "s", "p", NULL, T0), 0);
        free(props_text("n", "s", T0, s3));
        cr_assert_str_neq(s2, s3);
        cr_assert_eq(store_props_clear(st, ACC, "n", "s", NULL, T0), 0);
        free(props_text("n", "s", T0, s1));
        cr_assert_str_neq(s1, s3);
        /* A missing session has no ETag. */
        free(props_text("n", "nosuch", T0, g));
        cr_assert_str_eq(g, "");
        json_decref(v);
        json_decref(obj);
}

Test(etag, if_match_guards_session_writes)
{
        char e[STORE_ETAG_MAX], e2[STORE_ETAG_MAX], list[3 * STORE_ETAG_MAX + 16];
        json_t *obj = J("{\"b\":2}");
        char *before, *after;

        merge("n", "s", "{\"a\":1}", T0);
        before = props_text("n", "s", T0, e);
        cr_assert_eq(store_props_merge(st, ACC, "n", "s", obj, "\"0123456789abcdef\"", T0, NULL),
                     -ECANCELED);
        cr_assert_eq(store_props_clear(st, ACC, "n", "s", "\"nope\"", T0), -ECANCELED);
        snprintf(list, sizeof(list), "W/%s", e); /* weak tags never match If-Match */
        cr_assert_eq(store_props_merge(st, ACC, "n", "s", obj, list, T0, NULL), -ECANCELED);
        after = props_text("n", "s", T0, e2);
        cr_assert_str_eq(before, after);
        cr_assert_str_eq(e, e2);
        free(after);
        /* A list that contains the current tag matches. */
        snprintf(list, sizeof(list), "\"xx\", %s", e);
        cr_assert_eq(store_props_merge(st, ACC, "n", "s", obj, list, T0, e2), 0);
        cr_assert_str_neq(e, e2);
        /* The old tag no longer does. */
        cr_assert_eq(store_props_merge(st, ACC, "n", "s", obj, e, T0, NULL), -ECANCELED);
        cr_assert_eq(store_props_merge(st, ACC, "n", "s", obj, "*", T0, NULL), 0);
        /* "*" needs the thing to exist. */
        cr_assert_eq(store_props_merge(st, ACC, "n", "new", obj, "*", T0, NULL), -ECANCELED);
        cr_assert_eq(store_props_clear(st, ACC, "n", "new", "*", T0), -ECANCELED);
        assert_session_ids("n", 0, 100, T0, "[\"s\"]");
        free(props_text("n", "s", T0, e));
        cr_assert_eq(store_props_clear(st, ACC, "n", "s", e, T0), 0);
        assert_props("n", "s", T0, "{}");
        free(before);
        json_decref(obj);
}

Test(etag, if_match_guards_property_writes)
{
        char p[STORE_ETAG_MAX], s[STORE_ETAG_MAX];
        json_t *v2 = json_integer(2);
        char *text = NULL;

        put("n", "s", "p", "1", T0);
        cr_assert_eq(store_prop_get(st, ACC, "n", "s", "p", T0, &text, NULL, p), 0);
        free(text);
        free(props_text("n", "s", T0, s));
        /* The session's tag is not the property's. */
        cr_assert_eq(store_prop_put(st, ACC, "n", "s", "p", v2, "\"ffffffffffffffff\"", T0, NULL),
                     -ECANCELED);
        cr_assert_eq(store_prop_delete(st, ACC, "n", "s", "p", "\"ffffffffffffffff\"", T0),
                     -ECANCELED);
        cr_assert_eq(store_prop_get(st, ACC, "n", "s", "p", T0, &text, NULL, NULL), 0);
        cr_assert_str_eq(text, "1");
        free(text);
        /* Missing properties match no If-Match, not even "*". */
        cr_assert_eq(store_prop_put(st, ACC, "n", "s", "q", v2, "*", T0, NULL), -ECANCELED);
        cr_assert_eq(store_prop_put(st, ACC, "brandnew", "s", "q", v2, "*", T0, NULL), -ECANCELED);
        {
                json_t *a = NULL; /* the refused write did not leave its namespace behind */
                cr_assert_eq(store_ns_list(st, ACC, &a), 0);
                cr_assert_eq(json_array_size(a), 1);
                json_decref(a);
        }
        cr_assert_eq(store_prop_delete(st, ACC, "n", "s", "q", "*", T0), -ECANCELED);
        cr_assert_eq(store_prop_delete(st, ACC, "n", "zz", "q", p, T0), -ECANCELED);
        cr_assert_eq(store_prop_get(st, ACC, "n", "s", "q", T0, &text, NULL, NULL), -ENOENT);
        cr_assert_eq(store_prop_put(st, ACC, "n", "s", "p", v2, p, T0, s), 0);
        cr_assert_str_neq(p, s);
        cr_assert_eq(store_prop_put(st, ACC, "n", "s", "p", v2, p, T0, NULL), -ECANCELED);
        cr_assert_eq(store_prop_delete(st, ACC, "n", "s", "p", s, T0), 0);
        cr_assert_eq(store_prop_get(st, ACC, "n", "s", "p", T0, &text, NULL, NULL), -ENOENT);
        json_decref(v2);
}

Test(etag, a_recreated_session_or_property_gets_a_new_tag)
{
        char s1[STORE_ETAG_MAX], s2[STORE_ETAG_MAX], p1[STORE_ETAG_MAX], p2[STORE_ETAG_MAX];
        json_t *v = json_integer(1);

        cr_assert_eq(store_prop_put(st, ACC, "n", "s", "p", v, NULL, T0, p1), 0);
        free(props_text("n", "s", T0, s1));
        cr_assert_eq(store_session_delete(st, ACC, "n", "s"), 0);
        cr_assert_eq(store_prop_put(st, ACC, "n", "s", "p", v, NULL, T0, p2), 0);
        free(props_text("n", "s", T0, s2));
        cr_assert_str_neq(p1, p2);
        cr_assert_str_neq(s1, s2);
        cr_assert_eq(store_prop_delete(st, ACC, "n", "s", "p", p1, T0), -ECANCELED);
        json_decref(v);
}

/* In a child process (a daemon restart): recreates session "s" and reports the new tag. */
static void tag_after_restart(char out[STORE_ETAG_MAX])
{
        int fds[2], status = 0;
        pid_t pid;

        cr_assert_eq(pipe(fds), 0);
        pid = fork();
        cr_assert_geq(pid, 0);
        if (pid == 0) {
                struct store_options o = test_store_options(where, 1, 5000);
                struct ch_error err;
                char tag[STORE_ETAG_MAX] = "";
                struct store *s = NULL;
                json_t *v = json_integer(1);

                if (store_open(&o, &s, &err) < 0 || store_session_delete(s, ACC, "n", "s") < 0 ||
                    store_prop_put(s, ACC, "n", "s", "p", v, NULL, T0, tag) < 0)
                        _exit(1);
                store_close(s);
                _exit(write(fds[1], tag, sizeof(tag)) == (ssize_t)sizeof(tag) ? 0 : 1);
        }
        close(fds[1]);
        cr_assert_eq(read(fds[0], out, STORE_ETAG_MAX), STORE_ETAG_MAX);
        close(fds[0]);
        cr_assert_eq(waitpid(pid, &status, 0), pid);
        cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

Test(etag, tags_do_not_repeat_across_restarts)
{
        char a[STORE_ETAG_MAX], b[STORE_ETAG_MAX];

        st = store_close(st); /* no database connection crosses a fork */
        tag_after_restart(a);
        tag_after_restart(b);
        cr_assert_gt(strlen(a), 2);
        cr_assert_str_neq(a, b);
}

Test(etag, matching_rules)
{
        cr_assert(store_etag_matches("\"abc\"", "\"abc\""));
        cr_assert(store_etag_matches(" \"x\" ,\"abc\"", "\"abc\""));
        cr_assert(store_etag_matches("*", "\"abc\""));
        cr_assert(store_etag_matches("abc", "\"abc\"")); /* unquoted, tolerated */
        cr_assert_not(store_etag_matches("W/\"abc\"", "\"abc\""));
        cr_assert_not(store_etag_matches("\"abcd\"", "\"abc\""));
        cr_assert_not(store_etag_matches("\"ab\"", "\"abc\""));
        cr_assert_not(store_etag_matches("", "\"abc\""));
        cr_assert_not(store_etag_matches("\"abc", "\"abc\""));
}

/* ---- TTL ---- */

TestSuite(ttl, .init = setup, .fini = teardown);

/* Every read the store offers sees nothing of namespace ns / session sid at now. */
static void assert_nothing_visible(const char *ns, const char *sid, const char *prop, int64_t now)
{
        const char *const inc[] = {prop, NULL};
        char etag[STORE_ETAG_MAX];
        char *text = NULL;
        json_t *a = NULL;

        cr_assert_eq(store_prop_get(st, ACC, ns, sid, prop, now, &text, NULL, NULL), -ENOENT);
        cr_assert_eq(store_props_get(st, ACC, ns, sid, inc, now, &a, etag), 0);
        assert_json(a, "{}");
        json_decref(a);
        cr_assert_str_eq(etag, "");
        free(props_text(ns, sid, now, etag));
        cr_assert_str_eq(etag, "");
        assert_props(ns, sid, now, "{}");
        assert_session_ids(ns, 0, 100, now, "[]");
        cr_assert_eq(store_session_props(st, ACC, ns, 0, 100, now, &a), 0);
        assert_array(0, a, "[]");
        cr_assert_eq(store_session_list(st, ACC, ns, now, &a), 0);
        assert_array(0, a, "[]");
}

Test(ttl, namespace_ttl_expires_properties_and_sessions)
{
        char *text = NULL;

        cr_assert_eq(store_ns_create(st, ACC, "n", 10, T0), 0);
        put("n", NULL, "p", "1", T0);
        put("n", "s", "p", "2", T0);
        cr_assert_eq(store_prop_get(st, ACC, "n", NULL, "p", T0 + 9999, &text, NULL, NULL), 0);
        free(text);
        assert_session_ids("n", 0, 100, T0 + 9999, "[\"__default__\",\"s\"]");
        assert_nothing_visible("n", NULL, "p", T0 + 10000);
        assert_nothing_visible("n", "s", "p", T0 + 10000);
        /* Still there underneath until swept: the clock going back shows it. */
        assert_props("n", "s", T0, "{\"p\":2}");
}

Test(ttl, each_property_expires_after_its_own_last_write)
{
        cr_assert_eq(store_ns_create(st, ACC, "n", 10, T0), 0);
        put("n", "s", "old", "1", T0);
        put("n", "s", "new", "2", T0 + 5000);
        assert_props("n", "s", T0 + 10000, "{\"new\":2}");
        assert_session_ids("n", 0, 100, T0 + 14999, "[\"s\"]");
        assert_nothing_visible("n", "s", "new", T0 + 15000);
}

Test(ttl, a_session_ttl_overrides_the_namespace_ttl)
{
        json_t *a = NULL;

        cr_assert_eq(store_ns_create(st, ACC, "n", 10, T0), 0);
        cr_assert_eq(store_session_create(st, ACC, "n", "long", 100, T0), 0);
        cr_assert_eq(store_session_create(st, ACC, "n", "forever", 0, T0), 0);
        cr_assert_eq(store_session_create(st, ACC, "n", "inherit", -1, T0), 0);
        put("n", "long", "p", "1", T0);
        put("n", "forever", "p", "2", T0);
        put("n", "inherit", "p", "3", T0);
        cr_assert_eq(store_session_list(st, ACC, "n", T0, &a), 0);
        assert_array(0, a,
                     "[{\"sessionId\":\"forever\",\"createdAt\":\"2027-01-15T08:00:00.000Z\","
                     "\"ttlSecond\":0},"
                     "{\"sessionId\":\"inherit\",\"createdAt\":\"2027-01-15T08:00:00.000Z\","
                     "\"ttlSecond\":10},"
                     "{\"sessionId\":\"long\",\"createdAt\":\"2027-01-15T08:00:00.000Z\","
                     "\"ttlSecond\":100}]");
        assert_session_ids("n", 0, 100, T0 + 50000, "[\"forever\",\"long\"]");
        assert_props("n", "long", T0 + 99999, "{\"p\":1}");
        assert_props("n", "long", T0 + 100000, "{}");
        assert_props("n", "forever", T0 + INT64_C(100000000000), "{\"p\":2}");
        assert_props("n", "inherit", T0 + 10000, "{}");
        /* Setting the session TTL again without a value keeps it. */
        cr_assert_eq(store_session_create(st, ACC, "n", "long", -1, T0 + 1), 0);
        assert_props("n", "long", T0 + 99999, "{\"p\":1}");
}

Test(ttl, a_namespace_ttl_change_applies_at_once)
{
        put("n", "s", "p", "1", T0);
        assert_props("n", "s", T0 + 3600000, "{\"p\":1}");
        cr_assert_eq(store_ns_create(st, ACC, "n", 60, T0 + 1), 0);
        assert_props("n", "s", T0 + 59999, "{\"p\":1}");
        assert_props("n", "s", T0 + 60000, "{}");
}

Test(ttl, writing_to_an_expired_session_starts_it_afresh)
{
        json_t *a = NULL;
        char *text = NULL;

        cr_assert_eq(store_ns_create(st, ACC, "n", 10, T0), 0);
        merge("n", "s", "{\"old\":1}", T0);
        merge("n", "s", "{\"new\":2}", T0 + 20000);
        assert_props("n", "s", T0 + 20000, "{\"new\":2}");
        cr_assert_eq(store_prop_get(st, ACC, "n", "s", "old", T0 + 20000, &text, NULL, NULL),
                     -ENOENT);
        cr_assert_eq(store_session_list(st, ACC, "n", T0 + 20000, &a), 0);
        assert_array(0, a,
                     "[{\"sessionId\":\"s\",\"createdAt\":\"2027-01-15T08:00:20.000Z\","
                     "\"ttlSecond\":10}]");
        /* The expired data is gone for good, not merely hidden. */
        assert_props("n", "s", T0 + 20000 - 1, "{\"new\":2}");
}

Test(ttl, if_match_against_an_expired_thing_fails)
{
        char e[STORE_ETAG_MAX], p[STORE_ETAG_MAX];
        json_t *v = json_integer(9), *obj = J("{\"q\":1}");

        cr_assert_eq(store_ns_create(st, ACC, "n", 10, T0), 0);
        cr_assert_eq(store_prop_put(st, ACC, "n", "s", "p", v, NULL, T0, p), 0);
        free(props_text("n", "s", T0, e));
        cr_assert_eq(store_props_merge(st, ACC, "n", "s", obj, e, T0 + 10000, NULL), -ECANCELED);
        cr_assert_eq(store_props_clear(st, ACC, "n", "s", e, T0 + 10000), -ECANCELED);
        cr_assert_eq(store_prop_put(st, ACC, "n", "s", "p", v, p, T0 + 10000, NULL), -ECANCELED);
        cr_assert_eq(store_prop_delete(st, ACC, "n", "s", "p", "*", T0 + 10000), -ECANCELED);
        /* And the refused writes did not purge it either. */
        assert_props("n", "s", T0, "{\"p\":9}");
        json_decref(obj);
        json_decref(v);
}

Test(ttl, sweep_deletes_and_counts_expired_rows)
{
        int64_t deleted = -1;

        cr_assert_eq(store_ns_create(st, ACC, "short", 10, T0), 0);
        merge("short", NULL, "{\"a\":1,\"b\":2}", T0);         /* 2 props + session */
        merge("short", "s1", "{\"a\":1,\"b\":2,\"c\":3}", T0); /* 3 props + session */
        cr_assert_eq(store_session_create(st, ACC, "short", "keep", 0, T0), 0);
        merge("short", "keep", "{\"k\":1}", T0);
        merge("short", "mixed", "{\"a\":1}", T0);
        merge("short", "mixed", "{\"b\":2}", T0 + 8000); /* a expires, b and session live */
        merge("forever", "s1", "{\"x\":1}", T0);

        cr_assert_eq(store_sweep(st, T0 + 9999, &deleted), 0);
        cr_assert_eq(deleted, 0);
        cr_assert_eq(store_sweep(st, T0 + 10000, &deleted), 0);
        cr_assert_eq(deleted, 2 + 1 + 3 + 1 + 1, "deleted %lld", (long long)deleted);
        cr_assert_eq(store_sweep(st, T0 + 10000, &deleted), 0);
        cr_assert_eq(deleted, 0);
        /* Looking from before the expiry shows what was really deleted. */
        assert_props("short", NULL, T0, "{}");
        assert_props("short", "s1", T0, "{}");
        assert_props("short", "mixed", T0, "{\"b\":2}");
        assert_props("short", "keep", T0, "{\"k\":1}");
        assert_props("forever", "s1", T0, "{\"x\":1}");
        assert_session_ids("short", 0, 100, T0, "[\"keep\",\"mixed\"]");
        cr_assert_eq(store_sweep(st, T0 + 18000, NULL), 0);
        assert_props("short", "mixed", T0, "{}");
}

Test(ttl, sweep_works_through_many_batches)
{
        const int n = 1234;
        int64_t deleted = 0;
        json_t *v = json_integer(1);
        char sid[16];

        cr_assert_eq(store_ns_create(st, ACC, "n", 1, T0), 0);
        for (int i = 0; i < n; i++) {
                snprintf(sid, sizeof(sid), "s%05d", i);
                cr_assert_eq(store_prop_put(st, ACC, "n", sid, "p", v, NULL, T0, NULL), 0);
        }
        put("n", "late", "p", "1", T0 + 1000);
        cr_assert_eq(store_sweep(st, T0 + 1000, &deleted), 0);
        cr_assert_eq(deleted, 2 * n, "deleted %lld", (long long)deleted);
        assert_session_ids("n", 0, 1000, T0, "[\"late\"]");
        json_decref(v);
}

/* ---- Sessions and paging ---- */

TestSuite(sessions, .init = setup, .fini = teardown);

Test(sessions, ids_are_paged_with_default_first)
{
        json_t *a = NULL;

        merge("n", "b", "{\"x\":1}", T0);
        merge("n", "a", "{\"x\":2}", T0);
        merge("n", NULL, "{\"x\":3}", T0);
        merge("n", "c", "{\"x\":4}", T0);
        merge("n", "A", "{\"x\":5}", T0);
        merge("n", "0", "{\"x\":6}", T0);
        assert_session_ids("n", 0, 100, T0, "[\"__default__\",\"0\",\"A\",\"a\",\"b\",\"c\"]");
        assert_session_ids("n", 0, 2, T0, "[\"__default__\",\"0\"]");
        assert_session_ids("n", 1, 2, T0, "[\"A\",\"a\"]");
        assert_session_ids("n", 2, 2, T0, "[\"b\",\"c\"]");
        assert_session_ids("n", 3, 2, T0, "[]");
        assert_session_ids("n", INT64_MAX, 1000, T0, "[]");
        assert_session_ids("other", 0, 100, T0, "[]");
        cr_assert_eq(store_session_ids(st, ACC, "n", -1, 10, T0, &a), -EINVAL);
        cr_assert_eq(store_session_ids(st, ACC, "n", 0, 0, T0, &a), -EINVAL);
        cr_assert_eq(store_session_ids(st, ACC, "n", 0, 1001, T0, &a), -EINVAL);
        cr_assert_eq(store_session_props(st, ACC, "n", 0, 1001, T0, &a), -EINVAL);
        cr_assert_null(a);
        cr_assert_eq(store_session_ids(st, ACC, "n", 0, 1000, T0, &a), 0);
        json_decref(a);
}

Test(sessions, session_properties_follow_the_same_order)
{
        json_t *a = NULL;

        merge("n", "b", "{\"x\":1}", T0);
        merge("n", NULL, "{\"top\":true}", T0);
        cr_assert_eq(store_session_create(st, ACC, "n", "a", -1, T0), 0); /* no properties */
        cr_assert_eq(store_session_props(st, ACC, "n", 0, 100, T0, &a), 0);
        assert_array(0, a,
                     "[{\"sessionId\":\"__default__\",\"properties\":{\"top\":true}},"
                     " {\"sessionId\":\"a\",\"properties\":{}},"
                     " {\"sessionId\":\"b\",\"properties\":{\"x\":1}}]");
        cr_assert_eq(store_session_props(st, ACC, "n", 1, 2, T0, &a), 0);
        assert_array(0, a, "[{\"sessionId\":\"b\",\"properties\":{\"x\":1}}]");
}

Test(sessions, create_and_delete)
{
        json_t *a = NULL;

        cr_assert_eq(store_session_create(st, ACC, "n", "s", 30, T0), 0);
        cr_assert_eq(store_session_create(st, ACC, "n", "s", 60, T0 + 5), 0); /* idempotent */
        merge("n", "s", "{\"a\":1}", T0 + 10);
        cr_assert_eq(store_session_list(st, ACC, "n", T0 + 10, &a), 0);
        assert_array(0, a,
                     "[{\"sessionId\":\"s\",\"createdAt\":\"2027-01-15T08:00:00.000Z\","
                     "\"ttlSecond\":60}]");
        cr_assert_eq(store_session_delete(st, ACC, "n", "s"), 0);
        cr_assert_eq(store_session_delete(st, ACC, "n", "s"), 0);
        assert_session_ids("n", 0, 100, T0 + 10, "[]");
        assert_props("n", "s", T0 + 10, "{}");
        /* Created again it starts with no TTL of its own. */
        merge("n", "s", "{\"b\":2}", T0 + 20);
        assert_props("n", "s", T0 + INT64_C(10000000000), "{\"b\":2}");
}

/* ---- Concurrency ---- */

TestSuite(concurrency, .init = setup, .fini = teardown);

#define THREADS 6
#define ROUNDS  150

struct worker {
        int id;
        int failures;
        char msg[200];
};

static void fail(struct worker *w, const char *what, int rc)
{
        if (!w->failures++)
                snprintf(w->msg, sizeof(w->msg), "worker %d: %s: %d", w->id, what, rc);
}

static void *worker_main(void *arg)
{
        struct worker *w = arg;
        size_t last_size = 0;

        for (int i = 0; i < ROUNDS; i++) {
                char key[32], etag[STORE_ETAG_MAX], *text = NULL;
                json_t *obj = json_object(), *all = NULL, *v;
                int rc;

                /* Each worker adds its own keys: all must be there at the end. */
                snprintf(key, sizeof(key), "w%d_%d", w->id, i);
                json_object_set_new(obj, key, json_integer(i));
                json_object_set_new(obj, "last", json_integer(w->id));
                rc = store_props_merge(st, ACC, "conc", "shared", obj, NULL, T0, NULL);
                if (rc < 0)
                        fail(w, "merge", rc);
                json_decref(obj);

                /* A shared counter, incremented with optimistic If-Match retries: a lost
                 * update would show in the final count. */
                for (;;) {
                        rc =
                            store_prop_get(st, ACC, "conc", NULL, "counter", T0, &text, NULL, etag);
                        if (rc < 0)
                                break;
                        v = json_integer(atoll(text) + 1);
                        free(text);
                        rc = store_prop_put(st, ACC, "conc", NULL, "counter", v, etag, T0, NULL);
                        json_decref(v);
                        if (rc != -ECANCELED)
                                break;
                }
                if (rc < 0)
                        fail(w, "counter", rc);

                rc = store_props_get(st, ACC, "conc", "shared", NULL, T0, &all, NULL);
                if (rc < 0) {
                        fail(w, "props_get", rc);
                } else {
                        if (json_object_size(all) < last_size)
                                fail(w, "object shrank", (int)json_object_size(all));
                        last_size = json_object_size(all);
                        json_decref(all);
                }
        }
        return NULL;
}

Test(concurrency, merges_and_reads_from_many_threads_stay_consistent)
{
        pthread_t t[THREADS];
        struct worker w[THREADS];
        json_t *all = NULL;
        char *text = NULL;

        /* The counter exists before the race so every increment is conditional. */
        put("conc", NULL, "counter", "1", T0);
        for (int i = 0; i < THREADS; i++) {
                w[i] = (struct worker){.id = i};
                cr_assert_eq(pthread_create(&t[i], NULL, worker_main, &w[i]), 0);
        }
        for (int i = 0; i < THREADS; i++) {
                pthread_join(t[i], NULL);
                cr_assert_eq(w[i].failures, 0, "%s", w[i].msg);
        }
        cr_assert_eq(store_props_get(st, ACC, "conc", "shared", NULL, T0, &all, NULL), 0);
        cr_assert_eq(json_object_size(all), THREADS * ROUNDS + 1);
        for (int i = 0; i < THREADS; i++)
                for (int r = 0; r < ROUNDS; r += 37) {
                        char key[32];
                        snprintf(key, sizeof(key), "w%d_%d", i, r);
                        cr_assert_eq(json_integer_value(json_object_get(all, key)), r);
                }
        json_decref(all);
        cr_assert_eq(store_prop_get(st, ACC, "conc", NULL, "counter", T0, &text, NULL, NULL), 0);
        cr_assert_eq(atoll(text), 1 + THREADS * ROUNDS, "lost updates: counter %s", text);
        free(text);
}

/* ---- Formatting ---- */

Test(format, times_are_iso8601_utc_with_milliseconds)
{
        char out[32];

        store_format_time(0, out);
        cr_assert_str_eq(out, "1970-01-01T00:00:00.000Z");
        store_format_time(INT64_C(1795991964123), out);
        cr_assert_str_eq(out, "2026-11-29T22:39:24.123Z");
        store_format_time(-1, out);
        cr_assert_str_eq(out, "1969-12-31T23:59:59.999Z");
}
