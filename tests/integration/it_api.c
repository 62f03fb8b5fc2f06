/* Integration tests of the Context API through the real ctxhookd binary: every endpoint of the
 * DESIGN.md table with its success shape checked field by field, every error status (400 for
 * each validation rule, 403, 404, 405 with Allow, 412, 413) with the rule that a rejected
 * request never changes stored data (GET snapshots compared byte for byte), TTL expiry end to
 * end, JSON value round trips, and persistence across a restart. Each test gets its own daemon
 * on a fresh database and a free port. */
#include <criterion/criterion.h>
#include <regex.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ctxhookd/buf.h"
#include "support_daemon.h"

#define ACCT  "1001"
#define ACCT2 "2002"
#define A     "/v1/account/" ACCT
#define A2    "/v1/account/" ACCT2

static struct it_daemon d;
static char key[257];
static char last[1024]; /* the request being checked, for failure messages */

/* A timezone far from UTC (POSIX form, no tzdata needed) so that a timestamp formatted in
 * local time instead of UTC is caught. */
static const char *const daemon_env[] = {"TZ=XYZ-14", NULL};

static void setup(void)
{
        cr_assert_eq(it_daemon_init(&d, it_default_config), 0);
        cr_assert_eq(it_apikey_create(&d, ACCT, key), 0);
        cr_assert_eq(it_daemon_start(&d, daemon_env, NULL), 0);
}

static void teardown(void)
{
        it_daemon_cleanup(&d);
}

/* A graceful stop at the end of every test: the exit code (which carries LeakSanitizer's
 * verdict in the sanitizer build) and the log format are checked on every run. It runs in the
 * test body, because criterion does not fail a test for an assertion in .fini. */
static void finish(void)
{
        int code = -1;
        char *log;

        cr_assert_eq(it_daemon_stop(&d, SIGTERM, &code), 0, "the daemon did not stop on SIGTERM");
        log = it_daemon_log(&d);
        cr_assert_eq(code, 0, "the daemon exited %d after SIGTERM; log:\n%s", code, log);
        cr_assert(it_log_lines_prefixed(log), "log lines without the <N> prefix:\n%s", log);
        free(log);
}

/* A test of the suite whose body is followed by finish(). */
#define API_TEST(name)                                                                             \
        static void name##_body(void);                                                             \
        Test(api, name)                                                                            \
        {                                                                                          \
                name##_body();                                                                     \
                finish();                                                                          \
        }                                                                                          \
        static void name##_body(void)

TestSuite(api, .init = setup, .fini = teardown, .timeout = 90);

/* ---- helpers ---- */

static struct it_response rqh(const char *method, const char *path, const char *k,
                              const char *const *headers, const char *body)
{
        struct it_response r;
        long s;

        snprintf(last, sizeof(last), "%s %s", method, path);
        s = it_call_h(&d, method, path, k, headers, body, &r);
        cr_assert_geq(s, 0, "%s: no response", last);
        return r;
}

static struct it_response rq(const char *method, const char *path, const char *body)
{
        return rqh(method, path, key, NULL, body);
}

#define assert_status(r, want)                                                                     \
        cr_assert_eq((r).status, (want), "%s: status %ld, want %d; body '%s'", last, (r).status,   \
                     (int)(want), (r).body)

/* One request that must answer `want`; a 204 must come without a body. */
static void ok(const char *method, const char *path, const char *body, long want)
{
        struct it_response r = rq(method, path, body);

        assert_status(r, want);
        if (want == 204)
                cr_assert_eq(r.body_len, 0, "%s: 204 with a body '%s'", last, r.body);
        it_response_free(&r);
}

static json_t *parse(const char *text)
{
        json_t *j = json_loads(text, JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);

        cr_assert_not_null(j, "bad JSON in the test itself: %s", text);
        return j;
}

/* Asserts that the response is 200 application/json whose body equals `expected` as JSON. */
static void assert_json_body(const struct it_response *r, const char *expected)
{
        json_t *want = parse(expected), *got;

        assert_status(*r, 200);
        cr_assert(strncmp(r->content_type, "application/json", 16) == 0, "%s: Content-Type '%s'",
                  last, r->content_type);
        got = it_response_json(r);
        cr_assert(got && json_equal(got, want), "%s: got '%s', want '%s'", last, r->body, expected);
        json_decref(got);
        json_decref(want);
}

static void get_json(const char *path, const char *expected)
{
        struct it_response r = rq("GET", path, NULL);

        assert_json_body(&r, expected);
        it_response_free(&r);
}

/* GET path with the default key; returns the parsed 200 body (json_decref it). */
static json_t *get_parsed(const char *path)
{
        struct it_response r = rq("GET", path, NULL);
        json_t *j;

        assert_status(r, 200);
        j = it_response_json(&r);
        cr_assert_not_null(j, "%s: body is not JSON: '%s'", last, r.body);
        it_response_free(&r);
        return j;
}

/* Checks an ISO-8601 UTC timestamp "YYYY-MM-DDTHH:MM:SS.mmmZ" within ten minutes of now. */
static void assert_created_at(const json_t *v, const char *what)
{
        regex_t re;
        struct tm tm = {0};
        const char *s;
        time_t t;

        cr_assert(json_is_string(v), "%s: createdAt is not a string", what);
        s = json_string_value(v);
        cr_assert_eq(regcomp(&re,
                             "^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\\.[0-9]{3}Z$",
                             REG_EXTENDED | REG_NOSUB),
                     0);
        cr_assert_eq(regexec(&re, s, 0, NULL, 0), 0, "%s: createdAt '%s' is not ISO-8601 UTC", what,
                     s);
        regfree(&re);
        cr_assert_not_null(strptime(s, "%Y-%m-%dT%H:%M:%S", &tm));
        t = timegm(&tm);
        cr_assert(labs((long)(t - time(NULL))) < 600, "%s: createdAt '%s' is not now (UTC)", what,
                  s);
}

/* Every read a client can make of the test data, concatenated with status and length. */
static const char *const snap_paths[] = {
    A,
    A "/notes/properties",
    A "/notes/properties/a",
    A "/notes/s1/properties",
    A "/notes/s1/properties/p",
    A "/notes/s2/properties",
    A "/notes/session-ids",
    A "/notes/session-properties",
    A "/namespace/notes/session",
    A "/other/properties",
    NULL,
};

static char *snapshot_opt(int with_etags)
{
        struct buf b;
        char *s;

        buf_init(&b, 1 << 24);
        for (size_t i = 0; snap_paths[i]; i++) {
                struct it_response r;
                long st = it_call(&d, "GET", snap_paths[i], key, NULL, &r);

                cr_assert_geq(st, 0, "snapshot GET %s: no response", snap_paths[i]);
                cr_assert_eq(buf_printf(&b, "%s %ld %zu etag=%s\n", snap_paths[i], st, r.body_len,
                                        with_etags ? r.etag : "-"),
                             0);
                cr_assert_eq(buf_append(&b, r.body, r.body_len), 0);
                cr_assert_eq(buf_append_str(&b, "\n"), 0);
                it_response_free(&r);
        }
        s = buf_take(&b, NULL);
        cr_assert_not_null(s);
        return s;
}

/* With the ETags: a refused request must not even touch them. */
static char *snapshot(void)
{
        return snapshot_opt(1);
}

/* Data in two namespaces, two sessions, with TTLs, that the rejected requests aim at. */
static void seed(void)
{
        ok("POST", A "?ttlSecond=3600", "{\"name\":\"notes\"}", 204);
        ok("PATCH", A "/notes/properties", "{\"a\":1,\"b\":\"x\"}", 204);
        ok("PATCH", A "/notes/s1/properties", "{\"p\":\"q\",\"n\":[1,2]}", 204);
        ok("POST", A "/namespace/notes/session?ttlSecond=600", "{\"sessionId\":\"s2\"}", 204);
        ok("PUT", A "/notes/s2/properties/k", "\"v\"", 204);
        ok("PATCH", A "/other/properties", "{\"z\":true}", 204);
}

/* A request that must be refused with `want` and a JSON error body, and must leave every
 * readable byte of the stored data as it was. */
static void rejected(const char *method, const char *path, const char *k,
                     const char *const *headers, const char *body, long want)
{
        char *before = snapshot(), *after;
        struct it_response r = rqh(method, path, k, headers, body);
        char what[1200];

        snprintf(what, sizeof(what), "%s (key %s, body %.60s)", last,
                 k ? (k == key ? "own" : k) : "none", body ? body : "none");
        cr_assert_eq(r.status, want, "%s: status %ld, want %ld; body '%s'", what, r.status, want,
                     r.body);
        cr_assert(it_is_error_body(&r), "%s: error body '%s'", what, r.body);
        cr_assert(strncmp(r.content_type, "application/json", 16) == 0,
                  "%s: error Content-Type '%s'", what, r.content_type);
        it_response_free(&r);
        after = snapshot();
        cr_assert_str_eq(after, before, "%s changed the stored data", what);
        free(before);
        free(after);
}

/* ---- operations endpoints ---- */

/* The value of the sample `name` (exact, with labels) in a Prometheus text body; -1 if absent. */
static double metric_value(const char *text, const char *name)
{
        size_t n = strlen(name);

        for (const char *p = text; p && *p;) {
                if (strncmp(p, name, n) == 0 && p[n] == ' ')
                        return strtod(p + n + 1, NULL);
                p = strchr(p, '\n');
                if (p)
                        p++;
        }
        return -1;
}

API_TEST(ops_endpoints)
{
        struct it_response r;
        double before, after;

        r = rqh("GET", "/healthz", NULL, NULL, NULL);
        assert_status(r, 200);
        it_response_free(&r);
        r = rqh("GET", "/readyz", NULL, NULL, NULL);
        assert_status(r, 200);
        it_response_free(&r);

        ok("GET", "/no/such/path", NULL, 404);
        r = rqh("GET", "/metrics", NULL, NULL, NULL);
        assert_status(r, 200);
        cr_assert(strncmp(r.content_type, "text/plain", 10) == 0, "Content-Type '%s'",
                  r.content_type);
        cr_assert_geq(metric_value(r.body, "ctxhookd_http_requests_total{code=\"404\"}"), 1,
                      "no 404 counted:\n%s", r.body);
        cr_assert_geq(metric_value(r.body, "ctxhookd_http_requests_total{code=\"200\"}"), 2,
                      "healthz/readyz not counted:\n%s", r.body);
        cr_assert(strstr(r.body, "# TYPE ctxhookd_http_request_duration_seconds histogram"),
                  "no histogram TYPE line:\n%s", r.body);
        cr_assert_geq(
            metric_value(r.body, "ctxhookd_http_request_duration_seconds_bucket{le=\"+Inf\"}"), 3,
            "histogram +Inf bucket:\n%s", r.body);
        cr_assert_geq(metric_value(r.body, "ctxhookd_http_request_duration_seconds_count"), 3);
        cr_assert_geq(metric_value(r.body, "ctxhookd_http_request_duration_seconds_sum"), 0);
        before = metric_value(r.body, "ctxhookd_http_requests_total{code=\"204\"}");
        it_response_free(&r);

        for (int i = 0; i < 3; i++)
                ok("PUT", A "/ns/properties/x", "1", 204);
        r = rqh("GET", "/metrics", NULL, NULL, NULL);
        assert_status(r, 200);
        after = metric_value(r.body, "ctxhookd_http_requests_total{code=\"204\"}");
        cr_assert_eq(after - (before < 0 ? 0 : before), 3, "204 counter went %g → %g", before,
                     after);
        it_response_free(&r);
}

/* ---- namespaces ---- */

API_TEST(namespace_lifecycle)
{
        json_t *list, *e, *again;
        char created[64];

        get_json(A, "[]");
        ok("POST", A, "{\"name\":\"zeta\"}", 204);
        ok("POST", A "?ttlSecond=3600", "{\"name\":\"alpha\"}", 204);
        /* A namespace springs into being on first write, too. */
        ok("PATCH", A "/mid/properties", "{\"k\":1}", 204);

        list = get_parsed(A);
        cr_assert(json_is_array(list) && json_array_size(list) == 3, "list: %s",
                  json_dumps(list, 0));
        const char *names[] = {"alpha", "mid", "zeta"};
        for (size_t i = 0; i < 3; i++) {
                e = json_array_get(list, i);
                cr_assert(json_is_object(e));
                cr_assert_str_eq(json_string_value(json_object_get(e, "name")), names[i],
                                 "namespaces not ordered by name");
                assert_created_at(json_object_get(e, "createdAt"), names[i]);
                if (i == 0) {
                        cr_assert(json_is_integer(json_object_get(e, "ttlSecond")));
                        cr_assert_eq(json_integer_value(json_object_get(e, "ttlSecond")), 3600);
                        cr_assert_eq(json_object_size(e), 3);
                } else {
                        cr_assert_null(json_object_get(e, "ttlSecond"),
                                       "%s has a ttlSecond without one set", names[i]);
                        cr_assert_eq(json_object_size(e), 2);
                }
        }
        snprintf(created, sizeof(created), "%s",
                 json_string_value(json_object_get(json_array_get(list, 0), "createdAt")));
        json_decref(list);

        /* Creating again is idempotent, keeps createdAt, and can change the TTL. */
        it_sleep_ms(20);
        ok("POST", A "?ttlSecond=60", "{\"name\":\"alpha\"}", 204);
        again = get_parsed(A);
        cr_assert_eq(json_array_size(again), 3);
        e = json_array_get(again, 0);
        cr_assert_str_eq(json_string_value(json_object_get(e, "createdAt")), created);
        cr_assert_eq(json_integer_value(json_object_get(e, "ttlSecond")), 60);
        json_decref(again);

        /* ttlSecond=0 means forever: no ttlSecond in the listing. */
        ok("POST", A "?ttlSecond=0", "{\"name\":\"alpha\"}", 204);
        again = get_parsed(A);
        cr_assert_null(json_object_get(json_array_get(again, 0), "ttlSecond"));
        json_decref(again);

        ok("DELETE", A "/zeta", NULL, 204);
        ok("DELETE", A "/zeta", NULL, 204);
        ok("DELETE", A "/never_existed", NULL, 204);
        again = get_parsed(A);
        cr_assert_eq(json_array_size(again), 2);
        cr_assert_str_eq(json_string_value(json_object_get(json_array_get(again, 1), "name")),
                         "mid");
        json_decref(again);
}

API_TEST(delete_namespace_removes_properties_sessions_and_ttl)
{
        ok("POST", A "?ttlSecond=3600", "{\"name\":\"gone\"}", 204);
        ok("PATCH", A "/gone/properties", "{\"a\":1}", 204);
        ok("PATCH", A "/gone/s1/properties", "{\"b\":2}", 204);
        ok("POST", A "/namespace/gone/session?ttlSecond=50", "{\"sessionId\":\"s2\"}", 204);
        ok("PATCH", A "/kept/properties", "{\"c\":3}", 204);

        ok("DELETE", A "/gone", NULL, 204);
        get_json(A "/gone/properties", "{}");
        get_json(A "/gone/s1/properties", "{}");
        get_json(A "/gone/session-ids", "[]");
        get_json(A "/gone/session-properties", "[]");
        get_json(A "/namespace/gone/session", "[]");
        ok("GET", A "/gone/properties/a", NULL, 404);
        get_json(A "/kept/properties", "{\"c\":3}");

        /* Its TTL went with it: a namespace of the same name starts without one. */
        ok("POST", A, "{\"name\":\"gone\"}", 204);
        json_t *list = get_parsed(A);
        json_t *e = json_array_get(list, 0);
        cr_assert_str_eq(json_string_value(json_object_get(e, "name")), "gone");
        cr_assert_null(json_object_get(e, "ttlSecond"), "the deleted namespace's TTL survived");
        json_decref(list);
}

/* ---- properties ---- */

API_TEST(namespace_properties)
{
        struct it_response r;

        get_json(A "/notes/properties", "{}");
        ok("PATCH", A "/notes/properties", "{\"a\":1,\"b\":\"x\"}", 204);
        ok("PATCH", A "/notes/properties", "{\"b\":\"y\",\"c\":null}", 204);
        get_json(A "/notes/properties", "{\"a\":1,\"b\":\"y\",\"c\":null}");
        ok("PUT", A "/notes/properties/d", "[1,{\"e\":2}]", 204);
        ok("PUT", A "/notes/properties/a", "\"replaced\"", 204);

        r = rq("GET", A "/notes/properties/d", NULL);
        assert_json_body(&r, "[1,{\"e\":2}]");
        cr_assert(r.etag[0] == '"', "GET of one property without a quoted ETag: '%s'", r.etag);
        it_response_free(&r);
        r = rq("GET", A "/notes/properties", NULL);
        assert_json_body(&r, "{\"a\":\"replaced\",\"b\":\"y\",\"c\":null,\"d\":[1,{\"e\":2}]}");
        cr_assert(r.etag[0] == '"', "GET of properties without a quoted ETag: '%s'", r.etag);
        it_response_free(&r);

        ok("DELETE", A "/notes/properties/a", NULL, 204);
        ok("DELETE", A "/notes/properties/a", NULL, 204);
        ok("GET", A "/notes/properties/a", NULL, 404);
        get_json(A "/notes/properties", "{\"b\":\"y\",\"c\":null,\"d\":[1,{\"e\":2}]}");
        /* Namespace-level properties are the session __default__. */
        get_json(A "/notes/session-ids", "[\"__default__\"]");
        get_json(A "/notes/__default__/properties", "{\"b\":\"y\",\"c\":null,\"d\":[1,{\"e\":2}]}");
}

API_TEST(session_properties)
{
        get_json(A "/notes/s1/properties", "{}");
        ok("PATCH", A "/notes/s1/properties", "{\"a\":1,\"b\":2,\"c\":3}", 204);
        ok("PATCH", A "/notes/s1/properties", "{\"c\":30,\"d\":{\"x\":[]}}", 204);
        ok("PUT", A "/notes/s1/properties/e", "\"five\"", 204);
        get_json(A "/notes/s1/properties",
                 "{\"a\":1,\"b\":2,\"c\":30,\"d\":{\"x\":[]},\"e\":\"five\"}");
        get_json(A "/notes/s1/properties/d", "{\"x\":[]}");
        get_json(A "/notes/s1/properties?include=a,c,zz", "{\"a\":1,\"c\":30}");
        get_json(A "/notes/s1/properties?include=e", "{\"e\":\"five\"}");
        /* Sessions and the namespace level are separate. */
        get_json(A "/notes/properties", "{}");
        get_json(A "/notes/s2/properties", "{}");

        ok("DELETE", A "/notes/s1/properties/a", NULL, 204);
        ok("DELETE", A "/notes/s1/properties/a", NULL, 204);
        ok("GET", A "/notes/s1/properties/a", NULL, 404);
        get_json(A "/notes/s1/properties", "{\"b\":2,\"c\":30,\"d\":{\"x\":[]},\"e\":\"five\"}");

        ok("DELETE", A "/notes/s1/properties", NULL, 204);
        get_json(A "/notes/s1/properties", "{}");
        ok("DELETE", A "/notes/s1/properties", NULL, 204);
        ok("DELETE", A "/notes/nosuch/properties", NULL, 204);
        ok("DELETE", A "/notes/nosuch/properties/x", NULL, 204);
        ok("DELETE", A "/namespace/notes/session/nosuch", NULL, 204);
}

API_TEST(clearing_session_properties_keeps_its_ttl)
{
        json_t *list;

        ok("POST", A "/namespace/notes/session?ttlSecond=77", "{\"sessionId\":\"s1\"}", 204);
        ok("PATCH", A "/notes/s1/properties", "{\"a\":1}", 204);
        ok("DELETE", A "/notes/s1/properties/", NULL, 204); /* the SDK's trailing slash */
        get_json(A "/notes/s1/properties", "{}");
        list = get_parsed(A "/namespace/notes/session");
        cr_assert_eq(json_array_size(list), 1, "the session went away: %s", json_dumps(list, 0));
        cr_assert_eq(json_integer_value(json_object_get(json_array_get(list, 0), "ttlSecond")), 77,
                     "the session TTL was not kept");
        json_decref(list);
}

/* ---- session listings ---- */

API_TEST(session_ids_and_paging)
{
        ok("PATCH", A "/notes/properties", "{\"n\":0}", 204);
        ok("PATCH", A "/notes/s2/properties", "{\"n\":2}", 204);
        ok("PATCH", A "/notes/s1/properties", "{\"n\":1}", 204);
        ok("PATCH", A "/notes/s3/properties", "{\"n\":3}", 204);

        get_json(A "/notes/session-ids", "[\"__default__\",\"s1\",\"s2\",\"s3\"]");
        get_json(A "/notes/session-ids?page=0&perPage=100",
                 "[\"__default__\",\"s1\",\"s2\",\"s3\"]");
        get_json(A "/notes/session-ids?page=0&perPage=3", "[\"__default__\",\"s1\",\"s2\"]");
        get_json(A "/notes/session-ids?page=1&perPage=3", "[\"s3\"]");
        get_json(A "/notes/session-ids?page=1&perPage=2", "[\"s2\",\"s3\"]");
        get_json(A "/notes/session-ids?page=7&perPage=2", "[]");
        get_json(A "/notes/session-ids?perPage=1", "[\"__default__\"]");
        get_json(A "/notes/session-ids?page=3&perPage=1", "[\"s3\"]");
        get_json(A "/notes/session-ids?perPage=1000", "[\"__default__\",\"s1\",\"s2\",\"s3\"]");
        get_json(A "/empty/session-ids", "[]");

        get_json(A "/notes/session-properties",
                 "[{\"sessionId\":\"__default__\",\"properties\":{\"n\":0}},"
                 "{\"sessionId\":\"s1\",\"properties\":{\"n\":1}},"
                 "{\"sessionId\":\"s2\",\"properties\":{\"n\":2}},"
                 "{\"sessionId\":\"s3\",\"properties\":{\"n\":3}}]");
        get_json(A "/notes/session-properties?page=1&perPage=2",
                 "[{\"sessionId\":\"s2\",\"properties\":{\"n\":2}},"
                 "{\"sessionId\":\"s3\",\"properties\":{\"n\":3}}]");
        get_json(A "/notes/session-properties?page=2&perPage=2", "[]");

        /* A deleted session leaves the listings. */
        ok("DELETE", A "/namespace/notes/session/s2", NULL, 204);
        get_json(A "/notes/session-ids", "[\"__default__\",\"s1\",\"s3\"]");
        get_json(A "/notes/s2/properties", "{}");
}

API_TEST(sessions_endpoints)
{
        json_t *list, *e;

        ok("POST", A "?ttlSecond=3600", "{\"name\":\"notes\"}", 204);
        ok("POST", A "/namespace/notes/session?ttlSecond=60", "{\"sessionId\":\"own\"}", 204);
        ok("PATCH", A "/notes/inherits/properties", "{\"a\":1}", 204);
        ok("POST", A "/namespace/notes/session?ttlSecond=60", "{\"sessionId\":\"own\"}", 204);
        ok("POST", A "/namespace/plain/session", "{\"sessionId\":\"forever\"}", 204);

        list = get_parsed(A "/namespace/notes/session");
        cr_assert_eq(json_array_size(list), 2, "%s", json_dumps(list, 0));
        const char *sids[] = {"inherits", "own"};
        const long long ttls[] = {3600, 60};
        for (size_t i = 0; i < 2; i++) {
                e = json_array_get(list, i);
                cr_assert_str_eq(json_string_value(json_object_get(e, "sessionId")), sids[i]);
                assert_created_at(json_object_get(e, "createdAt"), sids[i]);
                cr_assert(json_is_integer(json_object_get(e, "ttlSecond")));
                cr_assert_eq(json_integer_value(json_object_get(e, "ttlSecond")), ttls[i],
                             "effective ttlSecond of %s", sids[i]);
                cr_assert_eq(json_object_size(e), 3);
        }
        json_decref(list);

        /* POST creates the session and its namespace (listed, no TTL). */
        list = get_parsed(A "/namespace/plain/session");
        cr_assert_eq(json_array_size(list), 1);
        e = json_array_get(list, 0);
        cr_assert_str_eq(json_string_value(json_object_get(e, "sessionId")), "forever");
        cr_assert_eq(json_integer_value(json_object_get(e, "ttlSecond")), 0);
        json_decref(list);
        get_json(A "/plain/session-ids", "[\"forever\"]");
        list = get_parsed(A);
        cr_assert_eq(json_array_size(list), 2, "namespaces: %s", json_dumps(list, 0));
        json_decref(list);

        ok("PATCH", A "/notes/own/properties", "{\"x\":1}", 204);
        ok("DELETE", A "/namespace/notes/session/own", NULL, 204);
        ok("DELETE", A "/namespace/notes/session/own", NULL, 204);
        get_json(A "/notes/own/properties", "{}");
        ok("GET", A "/notes/own/properties/x", NULL, 404);
        list = get_parsed(A "/namespace/notes/session");
        cr_assert_eq(json_array_size(list), 1);
        cr_assert_str_eq(json_string_value(json_object_get(json_array_get(list, 0), "sessionId")),
                         "inherits");
        json_decref(list);
}

/* ---- 403 ---- */

struct endpoint {
        const char *method;
        const char *path; /* after /v1/account/{acct} */
        const char *body;
};

static const struct endpoint endpoints[] = {
    {"POST", "", "{\"name\":\"n2\"}"},
    {"GET", "", NULL},
    {"DELETE", "/notes", NULL},
    {"PATCH", "/notes/properties", "{\"a\":2}"},
    {"PUT", "/notes/properties/a", "3"},
    {"GET", "/notes/properties", NULL},
    {"GET", "/notes/properties/a", NULL},
    {"DELETE", "/notes/properties/a", NULL},
    {"PATCH", "/notes/s1/properties", "{\"p\":0}"},
    {"PUT", "/notes/s1/properties/p", "0"},
    {"GET", "/notes/s1/properties", NULL},
    {"GET", "/notes/s1/properties/p", NULL},
    {"DELETE", "/notes/s1/properties", NULL},
    {"DELETE", "/notes/s1/properties/p", NULL},
    {"GET", "/notes/session-ids", NULL},
    {"GET", "/notes/session-properties", NULL},
    {"POST", "/namespace/notes/session?ttlSecond=5", "{\"sessionId\":\"s1\"}"},
    {"GET", "/namespace/notes/session", NULL},
    {"DELETE", "/namespace/notes/session/s1", NULL},
};

API_TEST(forbidden_without_the_accounts_key)
{
        char key2[257], near[300], longer[300], huge[301], path[256];
        char *before, *after;

        seed();
        cr_assert_eq(it_apikey_create(&d, ACCT2, key2), 0);
        snprintf(near, sizeof(near), "%s", key);
        near[strlen(near) - 1] ^= 1; /* one bit off */
        snprintf(longer, sizeof(longer), "%sx", key);
        memset(huge, 'k', 300);
        huge[300] = '\0';
        const char *bad_keys[] = {NULL, "wrong", near, longer, huge, key2};

        for (size_t i = 0; i < sizeof(endpoints) / sizeof(endpoints[0]); i++) {
                const struct endpoint *e = &endpoints[i];

                before = snapshot();
                snprintf(path, sizeof(path), A "%s", e->path);
                for (size_t k = 0; k < sizeof(bad_keys) / sizeof(bad_keys[0]); k++) {
                        struct it_response r = rqh(e->method, path, bad_keys[k], NULL, e->body);

                        cr_assert_eq(r.status, 403, "%s with key #%zu: status %ld, body '%s'", last,
                                     k, r.status, r.body);
                        cr_assert(it_is_error_body(&r), "%s: 403 body '%s'", last, r.body);
                        it_response_free(&r);
                }
                /* Our key on the other account's paths is refused as well. */
                snprintf(path, sizeof(path), A2 "%s", e->path);
                {
                        struct it_response r = rqh(e->method, path, key, NULL, e->body);

                        cr_assert_eq(r.status, 403, "%s with account %s's key: %ld", last, ACCT,
                                     r.status);
                        it_response_free(&r);
                }
                after = snapshot();
                cr_assert_str_eq(after, before, "refused %s %s changed stored data", e->method,
                                 e->path);
                free(before);
                free(after);
        }

        /* The other account sees none of our data and got none written by our key. */
        {
                struct it_response r = rqh("GET", A2, key2, NULL, NULL);

                assert_json_body(&r, "[]");
                it_response_free(&r);
                r = rqh("GET", A2 "/notes/properties", key2, NULL, NULL);
                assert_json_body(&r, "{}");
                it_response_free(&r);
                r = rqh("GET", A2 "/notes/s1/properties", key2, NULL, NULL);
                assert_json_body(&r, "{}");
                it_response_free(&r);
        }
        /* And the right key still works everywhere (the refusals are not a lock-out). */
        get_json(A "/notes/properties", "{\"a\":1,\"b\":\"x\"}");
}

/* ---- 400 ---- */

struct ns_name {
        const char *path; /* as it appears in the URL */
        const char *json; /* as it appears in a JSON body */
};

static const struct ns_name bad_namespaces[] = {
    {"bad-name", "bad-name"},
    {"a.b", "a.b"},
    {"a%20b", "a b"},
    {"%C3%A9", "\\u00e9"},
    {"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", /* 65 */
     "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"},
    {"consumer", "consumer"},
    {"operational", "operational"},
    {"conversation", "conversation"},
    {"custom", "custom"},
    {"sde", "sde"},
    {"faas", "faas"},
};

API_TEST(bad_namespace_names)
{
        char path[512], body[512];

        seed();
        for (size_t i = 0; i < sizeof(bad_namespaces) / sizeof(bad_namespaces[0]); i++) {
                const struct ns_name *n = &bad_namespaces[i];

                snprintf(body, sizeof(body), "{\"name\":\"%s\"}", n->json);
                rejected("POST", A, key, NULL, body, 400);
                snprintf(path, sizeof(path), A "/%s/properties", n->path);
                rejected("PATCH", path, key, NULL, "{\"x\":1}", 400);
                rejected("GET", path, key, NULL, NULL, 400);
                snprintf(path, sizeof(path), A "/%s/properties/x", n->path);
                rejected("PUT", path, key, NULL, "1", 400);
                snprintf(path, sizeof(path), A "/%s/s1/properties", n->path);
                rejected("PATCH", path, key, NULL, "{\"x\":1}", 400);
                snprintf(path, sizeof(path), A "/%s/s1/properties/x", n->path);
                rejected("PUT", path, key, NULL, "1", 400);
                snprintf(path, sizeof(path), A "/namespace/%s/session", n->path);
                rejected("POST", path, key, NULL, "{\"sessionId\":\"s1\"}", 400);
        }
        rejected("POST", A, key, NULL, "{\"name\":\"\"}", 400);

        /* The edges of the rule are accepted. */
        ok("POST", A,
           "{\"name\":\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"}", 204);
        ok("PUT", A "/Az_09/properties/x", "1", 204);
        ok("PUT", A "/consumers/properties/x", "1", 204);
        get_json(A "/Az_09/properties", "{\"x\":1}");
}

API_TEST(bad_bodies)
{
        static const char *const not_objects[] = {
            "not json", "{\"a\":1", "{\"a\":1} trailing", "[1]", "5", "\"s\"",
            "null",     "",         "{\"a\":\"\xff\"}", /* not UTF-8 */
        };

        seed();
        for (size_t i = 0; i < sizeof(not_objects) / sizeof(not_objects[0]); i++) {
                rejected("PATCH", A "/notes/properties", key, NULL, not_objects[i], 400);
                rejected("PATCH", A "/notes/s1/properties", key, NULL, not_objects[i], 400);
        }
        static const char *const not_values[] = {"not json", "{\"a\":",  "1 2",
                                                 "",         "\"\xc3\"", "'x'"};
        for (size_t i = 0; i < sizeof(not_values) / sizeof(not_values[0]); i++) {
                rejected("PUT", A "/notes/properties/a", key, NULL, not_values[i], 400);
                rejected("PUT", A "/notes/s1/properties/p", key, NULL, not_values[i], 400);
        }
        static const char *const bad_ns_bodies[] = {
            "", "x", "[]", "{}", "{\"name\":5}", "{\"name\":null}", "{\"nom\":\"notes\"}"};
        for (size_t i = 0; i < sizeof(bad_ns_bodies) / sizeof(bad_ns_bodies[0]); i++)
                rejected("POST", A "?ttlSecond=1", key, NULL, bad_ns_bodies[i], 400);
        static const char *const bad_session_bodies[] = {
            "", "x", "[]", "{}", "{\"sessionId\":5}", "{\"sessionId\":\"\"}"};
        for (size_t i = 0; i < sizeof(bad_session_bodies) / sizeof(bad_session_bodies[0]); i++)
                rejected("POST", A "/namespace/notes/session?ttlSecond=1", key, NULL,
                         bad_session_bodies[i], 400);
}

API_TEST(bad_ttl_values)
{
        static const char *const bad[] = {
            "-1",   "2147483648",           "abc",  "1.5", "", "1e3", "5%20",
            "%205", "99999999999999999999", "0x10", "5x"};
        char path[256];

        seed();
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
                snprintf(path, sizeof(path), A "?ttlSecond=%s", bad[i]);
                rejected("POST", path, key, NULL, "{\"name\":\"notes\"}", 400);
                rejected("POST", path, key, NULL, "{\"name\":\"fresh\"}", 400);
                snprintf(path, sizeof(path), A "/namespace/notes/session?ttlSecond=%s", bad[i]);
                rejected("POST", path, key, NULL, "{\"sessionId\":\"s1\"}", 400);
                rejected("POST", path, key, NULL, "{\"sessionId\":\"fresh\"}", 400);
        }

        ok("POST", A "?ttlSecond=2147483647", "{\"name\":\"maxed\"}", 204);
        ok("POST", A "/namespace/maxed/session?ttlSecond=2147483647", "{\"sessionId\":\"s\"}", 204);
        ok("POST", A "/namespace/maxed/session?ttlSecond=0", "{\"sessionId\":\"z\"}", 204);
        json_t *list = get_parsed(A);
        json_t *e = json_array_get(list, 0);
        cr_assert_str_eq(json_string_value(json_object_get(e, "name")), "maxed");
        cr_assert_eq(json_integer_value(json_object_get(e, "ttlSecond")), 2147483647);
        json_decref(list);
        list = get_parsed(A "/namespace/maxed/session");
        cr_assert_eq(json_array_size(list), 2, "%s", json_dumps(list, 0));
        cr_assert_eq(json_integer_value(json_object_get(json_array_get(list, 0), "ttlSecond")),
                     2147483647);
        json_decref(list);
}

API_TEST(bad_paging)
{
        static const char *const bad[] = {"page=-1",        "page=x",
                                          "page=1.5",       "perPage=0",
                                          "perPage=1001",   "perPage=-5",
                                          "perPage=abc",    "page=0&perPage=0",
                                          "page=&perPage=", "perPage=99999999999999999999"};
        char path[256];

        seed();
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
                snprintf(path, sizeof(path), A "/notes/session-ids?%s", bad[i]);
                rejected("GET", path, key, NULL, NULL, 400);
                snprintf(path, sizeof(path), A "/notes/session-properties?%s", bad[i]);
                rejected("GET", path, key, NULL, NULL, 400);
        }
        get_json(A "/notes/session-ids?page=0&perPage=1000", "[\"__default__\",\"s1\",\"s2\"]");
        get_json(A "/notes/session-ids?page=2147483647&perPage=1", "[]");
}

/* ---- 404 ---- */

API_TEST(not_found)
{
        static const char *const unknown[] = {
            "/",
            "/v1",
            "/v1/account",
            "/v1/accounts/" ACCT,
            "/v2/account/" ACCT,
            A "/notes/s1/s2/properties",
            A "/notes/s1/properties/p/extra",
            A "/notes/s1",
            A "//notes/properties",
            "/healthz/more",
        };

        seed();
        for (size_t i = 0; i < sizeof(unknown) / sizeof(unknown[0]); i++)
                rejected("GET", unknown[i], key, NULL, NULL, 404);
        rejected("GET", A "/notes/properties/missing", key, NULL, NULL, 404);
        rejected("GET", A "/notes/s1/properties/missing", key, NULL, NULL, 404);
        rejected("GET", A "/nosuchns/properties/a", key, NULL, NULL, 404);
        rejected("GET", A "/notes/nosuchsession/properties/p", key, NULL, NULL, 404);
        /* A missing session or namespace reads as empty, not as 404. */
        get_json(A "/notes/nosuchsession/properties", "{}");
        get_json(A "/nosuchns/properties", "{}");
        get_json(A "/nosuchns/session-ids", "[]");
}

/* ---- 405 ---- */

struct not_allowed {
        const char *method;
        const char *path;
        const char *body;
        const char *allow[4]; /* methods Allow must list */
};

static const struct not_allowed not_allowed[] = {
    {"PUT", A, "{\"name\":\"x\"}", {"GET", "POST"}},
    {"DELETE", A, NULL, {"GET", "POST"}},
    {"PATCH", A, "{\"name\":\"x\"}", {"GET", "POST"}},
    {"GET", A "/notes", NULL, {"DELETE"}},
    {"POST", A "/notes", "{\"a\":1}", {"DELETE"}},
    {"POST", A "/notes/properties", "{\"a\":5}", {"GET", "PATCH"}},
    {"PUT", A "/notes/properties", "{\"a\":5}", {"GET", "PATCH"}},
    {"PATCH", A "/notes/properties/a", "{\"a\":5}", {"GET", "PUT", "DELETE"}},
    {"POST", A "/notes/properties/a", "5", {"GET", "PUT", "DELETE"}},
    {"POST", A "/notes/s1/properties", "{\"p\":5}", {"GET", "PATCH", "DELETE"}},
    {"PUT", A "/notes/s1/properties", "{\"p\":5}", {"GET", "PATCH", "DELETE"}},
    {"PATCH", A "/notes/s1/properties/p", "{\"p\":5}", {"GET", "PUT", "DELETE"}},
    {"DELETE", A "/notes/session-ids", NULL, {"GET"}},
    {"POST", A "/notes/session-properties", "{}", {"GET"}},
    {"PUT", A "/namespace/notes/session", "{\"sessionId\":\"s1\"}", {"GET", "POST"}},
    {"DELETE", A "/namespace/notes/session", NULL, {"GET", "POST"}},
    {"GET", A "/namespace/notes/session/s1", NULL, {"DELETE"}},
    {"POST", "/healthz", "{}", {"GET"}},
    {"DELETE", "/readyz", NULL, {"GET"}},
    {"PUT", "/metrics", "x", {"GET"}},
    {"BREW", A "/notes/properties", NULL, {"GET", "PATCH"}},
};

/* 1 when the comma-separated list has the token. */
static int list_has(const char *list, const char *token)
{
        size_t n = strlen(token);

        for (const char *p = list; *p;) {
                while (*p == ' ' || *p == ',')
                        p++;
                size_t len = strcspn(p, ", ");
                if (len == n && strncmp(p, token, n) == 0)
                        return 1;
                p += len;
        }
        return 0;
}

API_TEST(method_not_allowed)
{
        seed();
        for (size_t i = 0; i < sizeof(not_allowed) / sizeof(not_allowed[0]); i++) {
                const struct not_allowed *t = &not_allowed[i];
                char *before = snapshot(), *after;
                struct it_response r = rqh(t->method, t->path, key, NULL, t->body);

                cr_assert_eq(r.status, 405, "%s: status %ld, body '%s'", last, r.status, r.body);
                cr_assert(it_is_error_body(&r), "%s: body '%s'", last, r.body);
                cr_assert(r.allow[0], "%s: 405 without Allow", last);
                for (size_t k = 0; k < 4 && t->allow[k]; k++)
                        cr_assert(list_has(r.allow, t->allow[k]), "%s: Allow '%s' lacks %s", last,
                                  r.allow, t->allow[k]);
                cr_assert(!list_has(r.allow, t->method), "%s: Allow '%s' lists the refused method",
                          last, r.allow);
                it_response_free(&r);
                after = snapshot();
                cr_assert_str_eq(after, before, "%s %s changed stored data", t->method, t->path);
                free(before);
                free(after);
        }
}

/* ---- 412 ---- */

static void etag_of(const char *path, char out[256])
{
        struct it_response r = rq("GET", path, NULL);

        assert_status(r, 200);
        cr_assert(r.etag[0] == '"' && strlen(r.etag) >= 3, "%s: ETag '%s'", last, r.etag);
        snprintf(out, 256, "%s", r.etag);
        it_response_free(&r);
}

API_TEST(if_match_preconditions)
{
        char e1[256], e2[256], again[256], s1[256], s2[256], n1[256], hdr[300];

        seed();
        /* One property. */
        etag_of(A "/notes/s1/properties/p", e1);
        etag_of(A "/notes/s1/properties/p", again);
        cr_assert_str_eq(e1, again, "ETag changed without a write");
        snprintf(hdr, sizeof(hdr), "If-Match: %s", e1);
        {
                const char *h[] = {hdr, NULL};
                struct it_response r = rqh("PUT", A "/notes/s1/properties/p", key, h, "\"q2\"");

                assert_status(r, 204);
                it_response_free(&r);
        }
        etag_of(A "/notes/s1/properties/p", e2);
        cr_assert_str_neq(e1, e2, "ETag did not change on a write");
        {
                const char *h[] = {hdr, NULL}; /* e1 is stale now */

                rejected("PUT", A "/notes/s1/properties/p", key, h, "\"lost update\"", 412);
                rejected("DELETE", A "/notes/s1/properties/p", key, h, NULL, 412);
        }
        get_json(A "/notes/s1/properties/p", "\"q2\"");

        /* A session's properties: any write to one of them changes the session's tag. */
        etag_of(A "/notes/s1/properties", s1);
        ok("PUT", A "/notes/s1/properties/other", "1", 204);
        etag_of(A "/notes/s1/properties", s2);
        cr_assert_str_neq(s1, s2, "session ETag did not change on a property write");
        snprintf(hdr, sizeof(hdr), "If-Match: %s", s1);
        {
                const char *h[] = {hdr, NULL};

                rejected("PATCH", A "/notes/s1/properties", key, h, "{\"p\":\"overwritten\"}", 412);
                rejected("DELETE", A "/notes/s1/properties", key, h, NULL, 412);
        }
        snprintf(hdr, sizeof(hdr), "If-Match: %s", s2);
        {
                const char *h[] = {hdr, NULL};
                struct it_response r =
                    rqh("PATCH", A "/notes/s1/properties", key, h, "{\"p\":\"ok\"}");

                assert_status(r, 204);
                it_response_free(&r);
        }
        get_json(A "/notes/s1/properties/p", "\"ok\"");
        etag_of(A "/notes/s1/properties", s1);
        snprintf(hdr, sizeof(hdr), "If-Match: %s", s1);
        {
                const char *h[] = {hdr, NULL};
                struct it_response r = rqh("DELETE", A "/notes/s1/properties", key, h, NULL);

                assert_status(r, 204);
                it_response_free(&r);
        }
        get_json(A "/notes/s1/properties", "{}");

        /* Namespace level. */
        etag_of(A "/notes/properties", n1);
        ok("PATCH", A "/notes/properties", "{\"a\":42}", 204);
        snprintf(hdr, sizeof(hdr), "If-Match: %s", n1);
        {
                const char *h[] = {hdr, NULL};

                rejected("PATCH", A "/notes/properties", key, h, "{\"a\":0}", 412);
        }
        etag_of(A "/notes/properties/a", e1);
        ok("PUT", A "/notes/properties/a", "43", 204);
        snprintf(hdr, sizeof(hdr), "If-Match: %s", e1);
        {
                const char *h[] = {hdr, NULL};

                rejected("PUT", A "/notes/properties/a", key, h, "0", 412);
                rejected("DELETE", A "/notes/properties/a", key, h, NULL, 412);
        }
        get_json(A "/notes/properties/a", "43");
        /* A made-up tag never matches. */
        {
                const char *h[] = {"If-Match: \"no-such-tag\"", NULL};

                rejected("PUT", A "/notes/properties/a", key, h, "0", 412);
        }
}

/* ---- 413 ---- */

/* A JSON string value (quotes included) of exactly len bytes. */
static char *json_string_of_len(size_t len)
{
        char *s = malloc(len + 1);

        cr_assert_not_null(s);
        memset(s, 'x', len);
        s[0] = s[len - 1] = '"';
        s[len] = '\0';
        return s;
}

API_TEST(body_too_large)
{
        char *at_cap = json_string_of_len(IT_MAX_BODY);
        char *over = json_string_of_len(IT_MAX_BODY + 1);
        char *huge = json_string_of_len(4 * IT_MAX_BODY);
        char *obj = malloc(IT_MAX_BODY + 64);

        seed();
        rejected("PUT", A "/notes/s1/properties/p", key, NULL, over, 413);
        rejected("PUT", A "/notes/properties/big", key, NULL, huge, 413);
        snprintf(obj, IT_MAX_BODY + 64, "{\"p\":%s}", over);
        rejected("PATCH", A "/notes/s1/properties", key, NULL, obj, 413);
        rejected("POST", A "/namespace/notes/session", key, NULL, huge, 413);

        /* Chunked bodies carry no Content-Length; the cap must still hold. */
        {
                char *before = snapshot(), *after;
                struct it_request req = {
                    .method = "PUT", .api_key = key, .body = over, .chunked = 1};
                struct it_response r;
                char url[256];

                snprintf(url, sizeof(url), "%s" A "/notes/s1/properties/p", d.base);
                req.url = url;
                cr_assert_eq(it_http(&req, &r), 0);
                cr_assert_eq(r.status, 413, "chunked over the cap: %ld '%s'", r.status, r.body);
                cr_assert(it_is_error_body(&r));
                it_response_free(&r);
                after = snapshot();
                cr_assert_str_eq(after, before, "chunked 413 changed stored data");
                free(before);
                free(after);
        }

        /* Exactly max_body is allowed, and the daemon is fine after the refusals. */
        ok("PUT", A "/notes/properties/big", at_cap, 204);
        {
                struct it_response r = rq("GET", A "/notes/properties/big", NULL);

                assert_status(r, 200);
                cr_assert_eq(r.body_len, (size_t)IT_MAX_BODY);
                cr_assert(memcmp(r.body, at_cap, IT_MAX_BODY) == 0, "big value changed");
                it_response_free(&r);
        }
        free(at_cap);
        free(over);
        free(huge);
        free(obj);
}

API_TEST(chunked_upload_accepted)
{
        struct buf b;
        char url[256];
        struct it_request req = {.method = "PATCH", .api_key = key, .chunked = 1};
        struct it_response r;

        buf_init(&b, 1 << 20);
        cr_assert_eq(buf_append_str(&b, "{"), 0);
        for (int i = 0; i < 300; i++)
                cr_assert_eq(buf_printf(&b, "%s\"k%03d\":\"value number %d\"", i ? "," : "", i, i),
                             0);
        cr_assert_eq(buf_append_str(&b, "}"), 0);
        snprintf(url, sizeof(url), "%s" A "/notes/s1/properties", d.base);
        req.url = url;
        req.body = b.data;
        cr_assert_eq(it_http(&req, &r), 0);
        cr_assert_eq(r.status, 204, "chunked PATCH: %ld '%s'", r.status, r.body);
        it_response_free(&r);
        r = rq("GET", A "/notes/s1/properties", NULL);
        assert_json_body(&r, b.data);
        it_response_free(&r);
        buf_free(&b);
}

/* ---- TTL ---- */

/* Asserts that sid is in none / all of the listings of ns. */
static void assert_session_listed(const char *ns, const char *sid, int listed)
{
        char path[256];
        json_t *ids, *sp, *sl;
        int in_ids = 0, in_sp = 0, in_sl = 0;
        size_t i;
        json_t *v;

        snprintf(path, sizeof(path), A "/%s/session-ids", ns);
        ids = get_parsed(path);
        json_array_foreach(ids, i, v) in_ids |= strcmp(json_string_value(v), sid) == 0;
        snprintf(path, sizeof(path), A "/%s/session-properties", ns);
        sp = get_parsed(path);
        json_array_foreach(sp, i, v) in_sp |=
            strcmp(json_string_value(json_object_get(v, "sessionId")), sid) == 0;
        snprintf(path, sizeof(path), A "/namespace/%s/session", ns);
        sl = get_parsed(path);
        json_array_foreach(sl, i, v) in_sl |=
            strcmp(json_string_value(json_object_get(v, "sessionId")), sid) == 0;
        cr_assert(in_ids == listed && in_sp == listed && in_sl == listed,
                  "%s/%s listed: session-ids %d, session-properties %d, session %d; want %d", ns,
                  sid, in_ids, in_sp, in_sl, listed);
        json_decref(ids);
        json_decref(sp);
        json_decref(sl);
}

API_TEST(ttl_end_to_end)
{
        long long t0;

        /* Namespace TTL 1 s: its default session and a session without its own TTL expire;
         * a session with its own TTL of 60 s overrides it. */
        ok("POST", A "?ttlSecond=1", "{\"name\":\"short\"}", 204);
        ok("POST", A "/namespace/short/session?ttlSecond=60", "{\"sessionId\":\"long\"}", 204);
        /* No namespace TTL, but a session of 1 s; and a long namespace with a short session. */
        ok("POST", A "/namespace/forever/session?ttlSecond=1", "{\"sessionId\":\"brief\"}", 204);
        ok("POST", A "?ttlSecond=3600", "{\"name\":\"hour\"}", 204);
        ok("POST", A "/namespace/hour/session?ttlSecond=1", "{\"sessionId\":\"brief\"}", 204);
        /* Namespace TTL 2 s to show that a property expires after its LAST write. */
        ok("POST", A "?ttlSecond=2", "{\"name\":\"two\"}", 204);

        t0 = it_now_ms();
        ok("PATCH", A "/short/properties", "{\"a\":1}", 204);
        ok("PATCH", A "/short/plain/properties", "{\"b\":2}", 204);
        ok("PATCH", A "/short/long/properties", "{\"c\":3}", 204);
        ok("PATCH", A "/forever/brief/properties", "{\"d\":4}", 204);
        ok("PATCH", A "/forever/stays/properties", "{\"e\":5}", 204);
        ok("PATCH", A "/hour/brief/properties", "{\"f\":6}", 204);
        ok("PATCH", A "/hour/stays/properties", "{\"g\":7}", 204);
        ok("PATCH", A "/two/s/properties", "{\"old\":1,\"new\":1}", 204);

        /* Everything is there before the TTL runs out. */
        get_json(A "/short/properties", "{\"a\":1}");
        get_json(A "/forever/brief/properties", "{\"d\":4}");
        assert_session_listed("short", "plain", 1);

        it_sleep_ms((int)(t0 + 1000 - it_now_ms()));
        ok("PUT", A "/two/s/properties/new", "2", 204); /* refreshed at ~t0+1 s */
        it_sleep_ms((int)(t0 + 2400 - it_now_ms()));

        /* Written at t0 with TTL 2: gone at t0+2.4; rewritten at t0+1: alive until t0+3. */
        ok("GET", A "/two/s/properties/old", NULL, 404);
        get_json(A "/two/s/properties", "{\"new\":2}");

        ok("GET", A "/short/properties/a", NULL, 404);
        get_json(A "/short/properties", "{}");
        ok("GET", A "/short/plain/properties/b", NULL, 404);
        get_json(A "/short/plain/properties", "{}");
        assert_session_listed("short", "plain", 0);
        assert_session_listed("short", "__default__", 0);
        get_json(A "/short/long/properties", "{\"c\":3}");
        assert_session_listed("short", "long", 1);

        ok("GET", A "/forever/brief/properties/d", NULL, 404);
        get_json(A "/forever/brief/properties", "{}");
        assert_session_listed("forever", "brief", 0);
        get_json(A "/forever/stays/properties", "{\"e\":5}");
        assert_session_listed("forever", "stays", 1);

        get_json(A "/hour/brief/properties", "{}");
        assert_session_listed("hour", "brief", 0);
        get_json(A "/hour/stays/properties", "{\"g\":7}");

        it_sleep_ms((int)(t0 + 3300 - it_now_ms()));
        get_json(A "/two/s/properties", "{}");
        assert_session_listed("two", "s", 0);

        /* The sweeper (every second in this config) deletes the expired rows themselves: only
         * c, e and g are left in the file, read behind the daemon's back. */
        long long rows = -1, deadline = it_now_ms() + 5000 * it_timeout_scale();
        while (it_now_ms() < deadline) {
                sqlite3 *db = NULL;
                sqlite3_stmt *st = NULL;

                cr_assert_eq(sqlite3_open_v2(d.db, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
                cr_assert_eq(
                    sqlite3_prepare_v2(db, "SELECT count(*) FROM properties", -1, &st, NULL),
                    SQLITE_OK, "%s", sqlite3_errmsg(db));
                cr_assert_eq(sqlite3_step(st), SQLITE_ROW);
                rows = sqlite3_column_int64(st, 0);
                sqlite3_finalize(st);
                sqlite3_close(db);
                if (rows == 3)
                        break;
                it_sleep_ms(200);
        }
        cr_assert_eq(rows, 3, "expired properties still in the database: %lld rows", rows);
        char *log = it_daemon_log(&d);
        cr_assert(strstr(log, "sweeper: deleted"), "no sweep in the log:\n%s", log);
        free(log);
}

/* ---- values ---- */

API_TEST(value_round_trip)
{
        static const char *const values[] = {
            "\"a\\u0000b\"",
            "\"\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\"", /* é€😀 as UTF-8 */
            "\"\\u00e9\\u20ac\\ud83d\\ude00\"",         /* the same, escaped */
            "\"quote \\\" backslash \\\\ tab \\t nl \\n\"",
            "{\"a\":{\"b\":[1,2,{\"c\":null}]},\"d\":true,\"e\":\"\"}",
            "[]",
            "{}",
            "\"\"",
            "0",
            "-1",
            "1.5",
            "-0.001",
            "9007199254740993",
            "-9223372036854775808",
            "1e300",
            "null",
            "true",
            "false",
        };
        size_t n = sizeof(values) / sizeof(values[0]);
        json_t *all = json_object();
        char path[256], *dump;

        for (size_t i = 0; i < n; i++) {
                char name[16];
                struct it_response r;
                json_t *got, *want = parse(values[i]);

                snprintf(name, sizeof(name), "v%02zu", i);
                snprintf(path, sizeof(path), A "/vals/s/properties/%s", name);
                ok("PUT", path, values[i], 204);
                r = rq("GET", path, NULL);
                assert_status(r, 200);
                cr_assert_null(memchr(r.body, '\0', r.body_len), "raw NUL in '%s'", values[i]);
                got = it_response_json(&r);
                cr_assert(got && json_equal(got, want), "value %s came back as '%s'", values[i],
                          r.body);
                json_decref(got);
                it_response_free(&r);
                json_object_set_new(all, name, want);
        }
        /* The same values inside objects: the session, the listing, and a PATCH of them all. */
        dump = json_dumps(all, JSON_COMPACT);
        get_json(A "/vals/s/properties", dump);
        ok("PATCH", A "/vals/t/properties", dump, 204);
        get_json(A "/vals/t/properties", dump);
        {
                json_t *list = get_parsed(A "/vals/session-properties");
                json_t *props = json_object_get(json_array_get(list, 0), "properties");

                cr_assert(json_equal(props, all), "session-properties changed the values");
                json_decref(list);
        }
        /* The NUL survives as a real character, not as a truncation. */
        {
                json_t *v = get_parsed(A "/vals/s/properties/v00");

                cr_assert_eq(json_string_length(v), 3);
                cr_assert(memcmp(json_string_value(v), "a\0b", 3) == 0);
                json_decref(v);
        }
        /* Property names are percent-decoded path segments. */
        ok("PUT", A "/vals/u/properties/my%20prop", "1", 204);
        get_json(A "/vals/u/properties", "{\"my prop\":1}");
        get_json(A "/vals/u/properties/my%20prop", "1");
        free(dump);
        json_decref(all);
}

/* ---- odds and ends of the wire ---- */

API_TEST(trailing_slash_and_unknown_headers)
{
        const char *h[] = {"X-REQUEST-ID: 3f2a-77", "User-Agent: context-sdk/1.0",
                           "X-Unknown-Thing: yes", NULL};
        struct it_response r;

        ok("PATCH", A "/notes/s1/properties", "{\"a\":1,\"b\":2}", 204);
        get_json(A "/notes/s1/properties/", "{\"a\":1,\"b\":2}");
        ok("DELETE", A "/notes/s1/properties/b/", NULL, 204);
        get_json(A "/notes/s1/properties", "{\"a\":1}");
        ok("DELETE", A "/notes/s1/properties/", NULL, 204);
        get_json(A "/notes/s1/properties", "{}");

        r = rqh("PATCH", A "/notes/s1/properties", key, h, "{\"c\":3}");
        assert_status(r, 204);
        it_response_free(&r);
        r = rqh("GET", A "/notes/s1/properties", key, h, NULL);
        assert_json_body(&r, "{\"c\":3}");
        it_response_free(&r);

        /* Header names are case-insensitive. */
        {
                char line[300];
                const char *shout[] = {line, NULL};

                snprintf(line, sizeof(line), "MAVEN-API-KEY: %s", key);
                r = rqh("GET", A "/notes/s1/properties", NULL, shout, NULL);
                assert_json_body(&r, "{\"c\":3}");
                it_response_free(&r);
        }
}

API_TEST(data_survives_restart)
{
        int code = -1;

        seed();
        ok("PUT", A "/notes/s1/properties/unicode", "\"\\u00e9\\u0000\"", 204);
        /* ETags are left out: the contract does not promise them across restarts. */
        char *before = snapshot_opt(0);

        cr_assert_eq(it_daemon_stop(&d, SIGTERM, &code), 0);
        cr_assert_eq(code, 0, "exit code after SIGTERM: %d", code);
        cr_assert_eq(it_daemon_start(&d, daemon_env, NULL), 0);

        /* Same key, same data; only the port may differ. */
        char *after = snapshot_opt(0);
        cr_assert_str_eq(after, before, "data changed across a restart");
        free(before);
        free(after);
}
