/* What differs between the backends for the store's unit suites: test_store and test_outbox run
 * on SQLite, and the same sources built with CTXHOOKD_TEST_PG (test_store_pg, test_outbox_pg;
 * test_store_pg_extra always) run on PostgreSQL. `where` names the test's database: the SQLite
 * file, or the URL of the test's own PostgreSQL schema (tests/test_pg.h). Header-only. */
#ifndef CTXHOOKD_TEST_STORE_BACKEND_H
#define CTXHOOKD_TEST_STORE_BACKEND_H

#include <criterion/criterion.h>
#include <stdio.h>

#include "ctxhookd/store.h"
#ifdef CTXHOOKD_TEST_PG
#include "test_pg.h"
#else
#include <sqlite3.h>
#endif

/* Options opening where with the suite's backend. A read cache is asked for, so the tests also
 * run through the cached read path on SQLite; the PostgreSQL backend must ignore it (other hosts
 * write the same data). */
static inline struct store_options test_store_options(const char *where, unsigned pool, int busy_ms)
{
        struct store_options o = {
            .busy_timeout_ms = busy_ms, .pool_size = pool, .cache_entries = 64};

#ifdef CTXHOOKD_TEST_PG
        o.backend = "postgresql";
        o.url = where;
#else
        o.path = where;
#endif
        return o;
}

/* Opens where or fails the test. */
static inline struct store *test_store_open(const char *where, unsigned pool, int busy_ms)
{
        struct store_options o = test_store_options(where, pool, busy_ms);
        struct ch_error err = {{0}};
        struct store *s = NULL;
        int rc = store_open(&o, &s, &err);

        cr_assert_eq(rc, 0, "store_open(%s): %d %s", where, rc, err.msg);
        cr_assert_not_null(s);
        return s;
}

/* A new empty database: the file name in dir, or a new schema of the test cluster. */
static inline void test_store_where(const char *dir, const char *name, char *out, size_t size)
{
#ifdef CTXHOOKD_TEST_PG
        (void)dir;
        (void)name;
        test_pg_url(out, size);
#else
        snprintf(out, size, "%s/%s", dir, name);
#endif
}

/* Runs SQL on the database where from outside the store; the test fails on an error. */
static inline void test_store_raw_sql(const char *where, const char *sql)
{
#ifdef CTXHOOKD_TEST_PG
        test_pg_exec(where, sql);
#else
        sqlite3 *db = NULL;
        char *msg = NULL;

        cr_assert_eq(sqlite3_open(where, &db), SQLITE_OK);
        sqlite3_busy_timeout(db, 5000);
        cr_assert_eq(sqlite3_exec(db, sql, NULL, NULL, &msg), SQLITE_OK, "%s: %s", sql, msg);
        sqlite3_close(db);
#endif
}

/* Removes what test_store_where made beyond the test's directory (the PostgreSQL schema). */
static inline void test_store_drop(const char *where)
{
#ifdef CTXHOOKD_TEST_PG
        test_pg_drop(where);
#else
        (void)where;
#endif
}

#endif
