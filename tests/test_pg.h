/* What tests of the PostgreSQL store need around a cluster: an empty database of their own for
 * each test (a fresh schema in the cluster that the ctest fixture pg_cluster_start started, or
 * in the outside cluster named by $CTXHOOKD_TEST_PG_URL), a way to run SQL beside the store (to
 * tamper with its tables or cut its connections, as an operator or a failing network would),
 * and dropping the schema afterwards. Each schema's URL also carries the schema's name as
 * application_name, so that the store's server connections can be told apart from those of
 * the tests running in parallel. Header-only, for unit and integration tests alike; libpq comes
 * with ctxhookd_core. */
#ifndef CTXHOOKD_TEST_PG_H
#define CTXHOOKD_TEST_PG_H

#include <criterion/criterion.h>
#include <errno.h>
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#define TEST_PG_HOWTO                                                                              \
        "run the test through ctest (its fixture pg_cluster_start starts a cluster), or start "    \
        "one with `tools/pg start DIR` and export CTXHOOKD_TEST_PG_URL=$(tools/pg url DIR)"

#define TEST_PG_URL_MAX 1024

/* The cluster's URL: $CTXHOOKD_TEST_PG_URL, else the content of the file named by
 * $CTXHOOKD_TEST_PG_URL_FILE (written by `tools/pg start`). Fails the test when neither. */
static inline void test_pg_cluster_url(char *out, size_t size)
{
        const char *env = getenv("CTXHOOKD_TEST_PG_URL");
        const char *file = getenv("CTXHOOKD_TEST_PG_URL_FILE");
        FILE *f;
        size_t len;

        if (env && *env) {
                cr_assert_lt(strlen(env), size, "CTXHOOKD_TEST_PG_URL is too long");
                snprintf(out, size, "%s", env);
                return;
        }
        if (!file || !*file)
                cr_assert_fail("no PostgreSQL cluster for this test (neither CTXHOOKD_TEST_PG_URL "
                               "nor CTXHOOKD_TEST_PG_URL_FILE is set): " TEST_PG_HOWTO);
        f = fopen(file, "r");
        if (!f)
                cr_assert_fail("no PostgreSQL cluster for this test: cannot read %s (%s; did "
                               "pg_cluster_start fail?): " TEST_PG_HOWTO,
                               file, strerror(errno));
        if (!fgets(out, (int)size, f))
                out[0] = '\0';
        fclose(f);
        len = strcspn(out, "\r\n");
        out[len] = '\0';
        if (len == 0)
                cr_assert_fail("no PostgreSQL cluster for this test: %s is empty: " TEST_PG_HOWTO,
                               file);
}

/* A connection to url, or the test fails naming what failed. */
static inline PGconn *test_pg_connect(const char *url)
{
        PGconn *c = PQconnectdb(url);

        if (!c)
                cr_assert_fail("PQconnectdb(%s): out of memory", url);
        if (PQstatus(c) != CONNECTION_OK) {
                char msg[512];

                snprintf(msg, sizeof(msg), "%s", PQerrorMessage(c));
                PQfinish(c);
                cr_assert_fail("cannot connect to the PostgreSQL cluster at %s: %s; " TEST_PG_HOWTO,
                               url, msg);
        }
        return c;
}

/* Runs sql (one or more statements) on c; the test fails on an error. When out is not NULL it
 * gets the first column of the first row ("" when there is none). */
static inline void test_pg_run(PGconn *c, const char *sql, char *out, size_t size)
{
        PGresult *r = PQexec(c, sql);
        ExecStatusType st = PQresultStatus(r);

        if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
                char msg[512];

                snprintf(msg, sizeof(msg), "%s", PQerrorMessage(c));
                PQclear(r);
                cr_assert_fail("SQL failed: %s: %s", sql, msg);
        }
        if (out)
                snprintf(out, size, "%s",
                         st == PGRES_TUPLES_OK && PQntuples(r) > 0 && PQnfields(r) > 0
                             ? PQgetvalue(r, 0, 0)
                             : "");
        PQclear(r);
}

/* Creates a schema of its own for the calling test and writes into out the cluster's URL with
 * that schema as the search path (and as application_name), so that everything the store
 * creates lands there. Returns 0; fails the test, saying how to get a cluster, when there is
 * none to reach. */
static inline int test_pg_url(char *out, size_t size)
{
        static unsigned counter;
        char base[TEST_PG_URL_MAX], schema[64], sql[128];
        unsigned char rnd[4] = {0};
        PGconn *c;
        int n;

        test_pg_cluster_url(base, sizeof(base));
        cr_assert_eq(getrandom(rnd, sizeof(rnd), 0), (ssize_t)sizeof(rnd));
        snprintf(schema, sizeof(schema), "ctxhookd_t%ld_%u_%02x%02x%02x%02x", (long)getpid(),
                 ++counter, rnd[0], rnd[1], rnd[2], rnd[3]);
        c = test_pg_connect(base);
        snprintf(sql, sizeof(sql), "CREATE SCHEMA %s", schema);
        test_pg_run(c, sql, NULL, 0);
        PQfinish(c);
        if (strncmp(base, "postgresql://", 13) == 0 || strncmp(base, "postgres://", 11) == 0)
                n = snprintf(out, size, "%s%soptions=-csearch_path%%3D%s&application_name=%s", base,
                             strchr(base, '?') ? "&" : "?", schema, schema);
        else /* key=value pairs */
                n = snprintf(out, size, "%s options='-csearch_path=%s' application_name=%s", base,
                             schema, schema);
        cr_assert(n > 0 && (size_t)n < size, "the test's PostgreSQL URL does not fit %zu bytes",
                  size);
        return 0;
}

/* The schema of a URL made by test_pg_url (its application_name), into out; the test fails
 * when url has none. */
static inline void test_pg_schema(const char *url, char *out, size_t size)
{
        const char *p = strstr(url, "application_name=");
        size_t len;

        cr_assert_not_null(p, "not a URL of test_pg_url: %s", url);
        p += strlen("application_name=");
        len = strcspn(p, "&' ");
        cr_assert(len > 0 && len < size, "bad schema in %s", url);
        memcpy(out, p, len);
        out[len] = '\0';
}

/* Runs sql on a new connection to url (so in the test's schema); the test fails on any error.
 * Returns 0. */
static inline int test_pg_exec(const char *url, const char *sql)
{
        PGconn *c = test_pg_connect(url);

        test_pg_run(c, sql, NULL, 0);
        PQfinish(c);
        return 0;
}

/* As test_pg_exec, and out gets the first column of the first row ("" when none). */
static inline int test_pg_value(const char *url, const char *sql, char *out, size_t size)
{
        PGconn *c = test_pg_connect(url);

        test_pg_run(c, sql, out, size);
        PQfinish(c);
        return 0;
}

/* Terminates every server connection opened with url (by the store under test) except the
 * one used to do it, as a restart of the server or a network failure would. Returns how many
 * were terminated. */
static inline int test_pg_terminate(const char *url)
{
        char schema[64], sql[256], n[32];

        test_pg_schema(url, schema, sizeof(schema));
        snprintf(sql, sizeof(sql),
                 "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                 "WHERE application_name = '%s' AND pid <> pg_backend_pid()",
                 schema);
        test_pg_value(url, sql, n, sizeof(n));
        return atoi(n);
}

/* Drops the test's schema with everything in it; for teardown, so never fails the test (the
 * cluster is thrown away anyway: this only keeps an outside cluster tidy). */
static inline void test_pg_drop(const char *url)
{
        char schema[64], sql[160];
        const char *p = strstr(url, "application_name=");
        size_t len;
        PGconn *c;

        if (!p)
                return;
        p += strlen("application_name=");
        len = strcspn(p, "&' ");
        if (len == 0 || len >= sizeof(schema))
                return;
        memcpy(schema, p, len);
        schema[len] = '\0';
        c = PQconnectdb(url);
        if (c && PQstatus(c) == CONNECTION_OK) {
                snprintf(sql, sizeof(sql),
                         "SET client_min_messages = warning; SET lock_timeout = '5s'; "
                         "DROP SCHEMA IF EXISTS %s CASCADE",
                         schema);
                PQclear(PQexec(c, sql));
        }
        PQfinish(c);
}

#endif
