/* In-process tests of the HTTP server (daemon/api.c): a real store in a fresh temp dir, a real
 * key, api_start on 127.0.0.1:0, and libcurl (plus a raw socket where curl would hide what
 * goes over the wire) against every endpoint: success shapes, every error status with its JSON
 * message, "bad input never changes stored data", ETag/If-Match, body limits with
 * Content-Length and chunked, 503 from a store locked past its busy timeout, metrics, a
 * graceful stop with a request in flight, the admin endpoints, and event ingest (a real
 * pipeline over a hand-made config; the outbox is read back from the store). */
#include <criterion/criterion.h>
#include <curl/curl.h>
#include <errno.h>
#include <ftw.h>
#include <jansson.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <pthread.h>
#include <semaphore.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "ctxhookd/api.h"
#include "ctxhookd/apikey.h"
#include "ctxhookd/metrics.h"
#include "ctxhookd/pipeline.h"
#include "ctxhookd/route.h"
#include "ctxhookd/store.h"
#include "test_util.h"

#define ACCT            "acct"
#define OTHER           "other"
#define NS              "/v1/account/" ACCT "/notes"
#define L65             "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
#define MAX_BODY        4096
#define BUSY_TIMEOUT_MS 200

static struct {
        char dir[64];
        char db[128];
        struct store *store;
        struct metrics *metrics;
        struct api *api;
        struct pipeline *pipeline; /* event ingest tests only */
        unsigned port;
        char key[APIKEY_TEXT_LEN + 1];       /* ACCT's */
        char other_key[APIKEY_TEXT_LEN + 1]; /* OTHER's */
        void *allocs[4096];                  /* response bodies, freed in teardown */
        size_t n_allocs;
} fx;

static void *track(void *p)
{
        cr_assert_not_null(p);
        cr_assert_lt(fx.n_allocs, sizeof(fx.allocs) / sizeof(fx.allocs[0]));
        fx.allocs[fx.n_allocs++] = p;
        return p;
}

static void start_api_with(size_t max_body, const char *admin_token,
                           bool (*ready)(void *, char *, size_t))
{
        struct api_options ao = {.listen = "127.0.0.1:0",
                                 .max_body = max_body,
                                 .threads = 2,
                                 .max_connections = 64,
                                 .connection_timeout_s = 30,
                                 .admin_token = admin_token,
                                 .ready = ready};
        struct ch_error err = {""};
        int r = api_start(&ao, fx.store, fx.metrics, &fx.api, &err);

        cr_assert_eq(r, 0, "api_start: %d %s", r, err.msg);
        fx.port = api_port(fx.api);
        cr_assert_gt(fx.port, 0);
}

static void start_api(size_t max_body)
{
        start_api_with(max_body, NULL, NULL);
}

static void set_key(const char *account, char out[APIKEY_TEXT_LEN + 1])
{
        unsigned char h[STORE_KEY_HASH_LEN];

        cr_assert_eq(apikey_generate(out), 0);
        apikey_hash(out, strlen(out), h);
        cr_assert_eq(store_key_set(fx.store, account, h, 1000), 0);
}

static void setup(void)
{
        struct store_options so = {.busy_timeout_ms = BUSY_TIMEOUT_MS, .pool_size = 4};
        struct ch_error err = {""};
        int r;

        memset(&fx, 0, sizeof(fx));
        cr_assert_eq(curl_global_init(CURL_GLOBAL_DEFAULT), CURLE_OK);
        strcpy(fx.dir, "/tmp/test_api.XXXXXX");
        cr_assert_not_null(mkdtemp(fx.dir));
        snprintf(fx.db, sizeof(fx.db), "%s/context.db", fx.dir);
        so.path = fx.db;
        r = store_open(&so, &fx.store, &err);
        cr_assert_eq(r, 0, "store_open: %d %s", r, err.msg);
        fx.metrics = metrics_new();
        cr_assert_not_null(fx.metrics);
        set_key(ACCT, fx.key);
        set_key(OTHER, fx.other_key);
        start_api(MAX_BODY);
}

static void teardown(void)
{
        fx.api = api_stop(fx.api);
        fx.pipeline = pipeline_free(fx.pipeline);
        fx.store = store_close(fx.store);
        fx.metrics = metrics_free(fx.metrics);
        for (size_t i = 0; i < fx.n_allocs; i++)
                free(fx.allocs[i]);
        if (fx.dir[0])
                test_rmtree(fx.dir);
        curl_global_cleanup();
}

TestSuite(api, .init = setup, .fini = teardown, .timeout = 60);

/* ---- HTTP client ---- */

struct req {
        const char *method;
        const char *path;     /* as sent: already percent-encoded */
        const char *key;      /* maven-api-key, NULL = no header */
        const char *body;     /* NULL = none */
        size_t body_len;      /* 0 with a body = strlen(body) */
        const char *if_match; /* NULL = none */
        bool chunked;         /* send the body with Transfer-Encoding: chunked */
        bool expect_100;      /* keep curl's Expect: 100-continue */
        const char *extra;    /* one more header line, e.g. "X-Request-ID: 1" */
};

struct resp {
        CURLcode rc;
        long status;
        char *body; /* NUL-terminated */
        size_t len;
        char etag[128];
        char allow[128];
        char ctype[128];
        char connection[64];
        char www_auth[128];
};

struct upload {
        const char *data;
        size_t len, off;
        size_t piece; /* bytes per read callback, so chunked bodies are many chunks */
};

static size_t on_body(char *p, size_t size, size_t n, void *ud)
{
        struct resp *r = ud;
        char *nb = realloc(r->body, r->len + size * n + 1);

        if (!nb)
                return 0;
        memcpy(nb + r->len, p, size * n);
        r->body = nb;
        r->len += size * n;
        r->body[r->len] = '\0';
        return size * n;
}

static void copy_header_value(const char *line, size_t len, size_t name_len, char *out, size_t size)
{
        const char *v = line + name_len;
        size_t vl = len - name_len;

        while (vl > 0 && (*v == ' ' || *v == '\t'))
                v++, vl--;
        while (vl > 0 && (v[vl - 1] == '\r' || v[vl - 1] == '\n' || v[vl - 1] == ' '))
                vl--;
        if (vl >= size)
                vl = size - 1;
        memcpy(out, v, vl);
        out[vl] = '\0';
}

static size_t on_header(char *p, size_t size, size_t n, void *ud)
{
        struct resp *r = ud;
        size_t len = size * n;
        static const struct {
                const char *name;
                size_t off;
                size_t size;
        } wanted[] = {
            {"etag:", offsetof(struct resp, etag), sizeof(((struct resp *)0)->etag)},
            {"allow:", offsetof(struct resp, allow), sizeof(((struct resp *)0)->allow)},
            {"content-type:", offsetof(struct resp, ctype), sizeof(((struct resp *)0)->ctype)},
            {"connection:", offsetof(struct resp, connection),
             sizeof(((struct resp *)0)->connection)},
            {"www-authenticate:", offsetof(struct resp, www_auth),
             sizeof(((struct resp *)0)->www_auth)},
        };

        if (len > 5 && strncmp(p, "HTTP/", 5) == 0) /* a new response (after 100): reset */
                r->etag[0] = r->allow[0] = r->ctype[0] = r->connection[0] = r->www_auth[0] = '\0';
        for (size_t i = 0; i < sizeof(wanted) / sizeof(wanted[0]); i++) {
                size_t nl = strlen(wanted[i].name);
                if (len >= nl && strncasecmp(p, wanted[i].name, nl) == 0)
                        copy_header_value(p, len, nl, (char *)r + wanted[i].off, wanted[i].size);
        }
        return len;
}

static size_t on_read(char *p, size_t size, size_t n, void *ud)
{
        struct upload *u = ud;
        size_t want = size * n, left = u->len - u->off;

        if (want > u->piece)
                want = u->piece;
        if (want > left)
                want = left;
        memcpy(p, u->data + u->off, want);
        u->off += want;
        return want;
}

/* One request on h (reset first; its connection cache survives, so keep-alive shows). */
static struct resp http_on(CURL *h, const struct req *q)
{
        struct resp r = {0};
        struct curl_slist *hdrs = NULL;
        struct upload up = {0};
        char url[8192], line[512];

        curl_easy_reset(h);
        cr_assert_lt(strlen(q->path), sizeof(url) - 64);
        snprintf(url, sizeof(url), "http://127.0.0.1:%u%s", fx.port, q->path);
        curl_easy_setopt(h, CURLOPT_URL, url);
        curl_easy_setopt(h, CURLOPT_PATH_AS_IS, 1L); /* keep "//", trailing slashes, dots */
        curl_easy_setopt(h, CURLOPT_TIMEOUT, 30L);
        curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
        curl_easy_setopt(h, CURLOPT_WRITEDATA, &r);
        curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, on_header);
        curl_easy_setopt(h, CURLOPT_HEADERDATA, &r);
        if (q->key) {
                snprintf(line, sizeof(line), "maven-api-key: %s", q->key);
                hdrs = curl_slist_append(hdrs, line);
        }
        if (q->if_match) {
                snprintf(line, sizeof(line), "If-Match: %s", q->if_match);
                hdrs = curl_slist_append(hdrs, line);
        }
        if (q->extra)
                hdrs = curl_slist_append(hdrs, q->extra);
        if (!q->expect_100)
                hdrs = curl_slist_append(hdrs, "Expect:");
        if (strcmp(q->method, "HEAD") == 0)
                curl_easy_setopt(h, CURLOPT_NOBODY, 1L);
        else
                curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, q->method);
        if (q->body) {
                size_t len = q->body_len ? q->body_len : strlen(q->body);

                if (q->chunked) {
                        up = (struct upload){.data = q->body, .len = len, .piece = 1000};
                        hdrs = curl_slist_append(hdrs, "Transfer-Encoding: chunked");
                        curl_easy_setopt(h, CURLOPT_POST, 1L);
                        curl_easy_setopt(h, CURLOPT_READFUNCTION, on_read);
                        curl_easy_setopt(h, CURLOPT_READDATA, &up);
                } else {
                        /* curl's default form Content-Type stays: the API must ignore it. */
                        curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)len);
                        curl_easy_setopt(h, CURLOPT_POSTFIELDS, q->body);
                }
        }
        curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdrs);
        r.rc = curl_easy_perform(h);
        curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &r.status);
        curl_slist_free_all(hdrs);
        if (!r.body) {
                r.body = calloc(1, 1);
                cr_assert_not_null(r.body);
        }
        track(r.body);
        return r;
}

static struct resp http(const struct req *q)
{
        CURL *h = curl_easy_init();
        struct resp r;

        cr_assert_not_null(h);
        r = http_on(h, q);
        curl_easy_cleanup(h);
        return r;
}

static struct resp req(const char *method, const char *path, const char *body)
{
        return http(&(struct req){.method = method, .path = path, .key = fx.key, .body = body});
}

static struct resp req_ok(const char *method, const char *path, const char *body, long status)
{
        struct resp r = req(method, path, body);

        cr_assert_eq(r.rc, CURLE_OK, "%s %s: curl: %s", method, path, curl_easy_strerror(r.rc));
        cr_assert_eq(r.status, status, "%s %s: status %ld, want %ld; body %s", method, path,
                     r.status, status, r.body);
        return r;
}

static json_t *parse(const struct resp *r)
{
        json_error_t e;
        json_t *v = json_loadb(r->body, r->len, JSON_DECODE_ANY | JSON_ALLOW_NUL, &e);

        cr_assert_not_null(v, "not JSON (%s): %s", e.text, r->body);
        return v;
}

/* The response is an error: status, JSON content type, {"message": "...want..."}. */
static void assert_error(const struct resp *r, long status, const char *want, const char *what)
{
        json_t *v, *m;

        cr_assert_eq(r->rc, CURLE_OK, "%s: curl: %s", what, curl_easy_strerror(r->rc));
        cr_assert_eq(r->status, status, "%s: status %ld, want %ld; body %s", what, r->status,
                     status, r->body);
        cr_assert_str_eq(r->ctype, "application/json", "%s: content type '%s'", what, r->ctype);
        v = parse(r);
        cr_assert(json_is_object(v), "%s: error body is not an object: %s", what, r->body);
        m = json_object_get(v, "message");
        cr_assert(json_is_string(m), "%s: no string message: %s", what, r->body);
        cr_assert_gt(json_string_length(m), 0, "%s: empty message", what);
        if (want)
                cr_assert_not_null(strstr(json_string_value(m), want),
                                   "%s: message '%s' does not mention '%s'", what,
                                   json_string_value(m), want);
        json_decref(v);
}

static void assert_json_eq(const struct resp *r, const char *want_text, const char *what)
{
        json_t *want = json_loads(want_text, JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
        json_t *got = parse(r);

        cr_assert_not_null(want, "bad expectation %s", want_text);
        cr_assert(json_equal(want, got), "%s: got %s, want %s", what, r->body, want_text);
        json_decref(want);
        json_decref(got);
}

/* Raw HTTP over a socket, for what curl hides; returns the bytes received until EOF. */
static char *raw_http(const char *request, size_t len, size_t *ret_len)
{
        struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)fx.port)};
        struct timeval tv = {.tv_sec = 10};
        size_t got = 0, cap = 65536;
        char *out = malloc(cap + 1);
        int fd = socket(AF_INET, SOCK_STREAM, 0);

        cr_assert_not_null(out);
        cr_assert_geq(fd, 0);
        sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        cr_assert_eq(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
        cr_assert_eq(send(fd, request, len, MSG_NOSIGNAL), (ssize_t)len);
        for (;;) {
                ssize_t n = recv(fd, out + got, cap - got, 0);
                if (n <= 0)
                        break;
                got += (size_t)n;
                cr_assert_lt(got, cap);
        }
        close(fd);
        out[got] = '\0';
        *ret_len = got;
        return track(out);
}

static unsigned long long metric(const char *text, const char *series)
{
        const char *p = strstr(text, series);
        unsigned long long v = 0;

        cr_assert_not_null(p, "series %s missing in:\n%s", series, text);
        cr_assert_eq(sscanf(p + strlen(series), " %llu", &v), 1);
        return v;
}

/* Everything the API shows about ACCT's data, byte for byte, ETags included. */
static char *snapshot(void)
{
        static const char *const paths[] = {
            "/v1/account/" ACCT,
            "/v1/account/" ACCT "/notes/properties",
            "/v1/account/" ACCT "/notes/s1/properties",
            "/v1/account/" ACCT "/notes/session-ids",
            "/v1/account/" ACCT "/notes/session-properties",
            "/v1/account/" ACCT "/namespace/notes/session",
            "/v1/account/" ACCT "/notes/s1/properties/color",
        };
        size_t cap = 1 << 16, len = 0;
        char *out = malloc(cap);

        cr_assert_not_null(out);
        out[0] = '\0';
        for (size_t i = 0; i < sizeof(paths) / sizeof(paths[0]); i++) {
                struct resp r = req_ok("GET", paths[i], NULL, 200);
                int n = snprintf(out + len, cap - len, "%s %s %s\n", paths[i], r.etag, r.body);
                cr_assert_lt((size_t)n, cap - len);
                len += (size_t)n;
        }
        return track(out);
}

static void seed(void)
{
        req_ok("POST", "/v1/account/" ACCT "?ttlSecond=3600", "{\"name\":\"notes\"}", 204);
        req_ok("PATCH", "/v1/account/" ACCT "/notes/properties", "{\"team\":\"blue\",\"n\":1}",
               204);
        req_ok("PATCH", "/v1/account/" ACCT "/notes/s1/properties",
               "{\"color\":\"red\",\"size\":[1,2]}", 204);
        req_ok("POST", "/v1/account/" ACCT "/namespace/notes/session?ttlSecond=60",
               "{\"sessionId\":\"s2\"}", 204);
}

/* ---- tests ---- */

Test(api, ops_endpoints_need_no_key)
{
        struct resp r;

        r = http(&(struct req){.method = "GET", .path = "/healthz"});
        cr_assert_eq(r.status, 200);
        assert_json_eq(&r, "{\"status\":\"ok\"}", "healthz");
        cr_assert_str_eq(r.ctype, "application/json");
        r = http(&(struct req){.method = "GET", .path = "/readyz"});
        cr_assert_eq(r.status, 200);
        assert_json_eq(&r, "{\"status\":\"ready\"}", "readyz");
        r = http(&(struct req){.method = "GET", .path = "/metrics"});
        cr_assert_eq(r.status, 200);
        cr_assert_str_eq(r.ctype, "text/plain; version=0.0.4");
        cr_assert_not_null(strstr(r.body, "# TYPE ctxhookd_http_requests_total counter"));
        r = http(&(struct req){.method = "GET", .path = "/healthz/"});
        cr_assert_eq(r.status, 200);
        r = http(&(struct req){.method = "POST", .path = "/healthz", .body = "{}"});
        assert_error(&r, 405, "POST", "POST /healthz");
        cr_assert_str_eq(r.allow, "GET, HEAD");
}

Test(api, namespaces_create_list_delete)
{
        struct resp r;
        json_t *list, *e;

        req_ok("POST", "/v1/account/" ACCT, "{\"name\":\"plain\"}", 204);
        req_ok("POST", "/v1/account/" ACCT "?ttlSecond=3600", "{\"name\":\"withttl\"}", 204);
        /* Creating again is idempotent. */
        req_ok("POST", "/v1/account/" ACCT, "{\"name\":\"plain\"}", 204);
        r = req_ok("GET", "/v1/account/" ACCT, NULL, 200);
        cr_assert_str_eq(r.ctype, "application/json");
        list = parse(&r);
        cr_assert(json_is_array(list));
        cr_assert_eq(json_array_size(list), 2, "%s", r.body);
        e = json_array_get(list, 0);
        cr_assert_str_eq(json_string_value(json_object_get(e, "name")), "plain");
        cr_assert(json_is_string(json_object_get(e, "createdAt")));
        cr_assert_null(json_object_get(e, "ttlSecond"));
        e = json_array_get(list, 1);
        cr_assert_str_eq(json_string_value(json_object_get(e, "name")), "withttl");
        cr_assert_eq(json_integer_value(json_object_get(e, "ttlSecond")), 3600);
        json_decref(list);

        /* The other account sees none of it. */
        r = http(&(struct req){.method = "GET", .path = "/v1/account/" OTHER, .key = fx.other_key});
        cr_assert_eq(r.status, 200);
        assert_json_eq(&r, "[]", "other account's namespaces");

        req_ok("PUT", "/v1/account/" ACCT "/plain/properties/p", "1", 204);
        req_ok("DELETE", "/v1/account/" ACCT "/plain", NULL, 204);
        req_ok("DELETE", "/v1/account/" ACCT "/plain", NULL, 204); /* idempotent */
        req_ok("DELETE", "/v1/account/" ACCT "/never", NULL, 204);
        r = req_ok("GET", "/v1/account/" ACCT, NULL, 200);
        list = parse(&r);
        cr_assert_eq(json_array_size(list), 1, "%s", r.body);
        cr_assert_str_eq(json_string_value(json_object_get(json_array_get(list, 0), "name")),
                         "withttl");
        json_decref(list);
        /* Its properties went with it. */
        r = req("GET", "/v1/account/" ACCT "/plain/properties/p", NULL);
        assert_error(&r, 404, "property 'p' not found in namespace 'plain'", "deleted ns prop");
}

Test(api, put_get_round_trip_keeps_values_exactly)
{
        static const char *const values[] = {
            "\"a\\u0000b\"",                                  /* NUL inside a string */
            "\"h\\u00e9llo \\u2713 \\ud83d\\ude00\"",         /* escaped non-ASCII */
            "\"h\xc3\xa9llo \xe2\x9c\x93 \xf0\x9f\x98\x80\"", /* raw UTF-8 */
            "{\"a\":[1,2.5,{\"b\":null,\"c\":[true,false]}],\"d\":{}}",
            "[]",
            "-12345678901234",
            "1.5e300",
            "true",
            "null",
            "\"\"",
        };
        struct resp r, g;

        for (size_t i = 0; i < sizeof(values) / sizeof(values[0]); i++) {
                r = req_ok("PUT", "/v1/account/" ACCT "/notes/s1/properties/v", values[i], 204);
                cr_assert_neq(r.etag[0], '\0', "PUT answers an ETag");
                cr_assert_eq(r.len, 0, "204 has no body");
                g = req_ok("GET", "/v1/account/" ACCT "/notes/s1/properties/v", NULL, 200);
                cr_assert_str_eq(g.ctype, "application/json");
                cr_assert_str_eq(g.etag, r.etag, "GET's ETag is the one PUT answered");
                assert_json_eq(&g, values[i], "round trip");
        }
        /* The NUL survives as an escape, never as a raw byte. */
        req_ok("PUT", "/v1/account/" ACCT "/notes/s1/properties/v", "\"a\\u0000b\"", 204);
        g = req_ok("GET", "/v1/account/" ACCT "/notes/s1/properties/v", NULL, 200);
        cr_assert_eq(strlen(g.body), g.len);
        cr_assert_not_null(strstr(g.body, "\\u0000"), "%s", g.body);

        /* Namespace-level properties are apart from the session's. */
        req_ok("PUT", "/v1/account/" ACCT "/notes/properties/v", "\"ns-level\"", 204);
        g = req_ok("GET", "/v1/account/" ACCT "/notes/properties/v", NULL, 200);
        assert_json_eq(&g, "\"ns-level\"", "namespace property");
        g = req_ok("GET", "/v1/account/" ACCT "/notes/s1/properties/v", NULL, 200);
        assert_json_eq(&g, "\"a\\u0000b\"", "session property unchanged");

        /* Percent-encoded names arrive decoded: "été" and "my prop". */
        req_ok("PUT", "/v1/account/" ACCT "/notes/s%C3%A9/properties/my%20prop", "7", 204);
        g = req_ok("GET", "/v1/account/" ACCT "/notes/s\xc3\xa9/properties", NULL, 200);
        assert_json_eq(&g, "{\"my prop\":7}", "decoded names");
}

Test(api, patch_merges_and_get_filters)
{
        struct resp r, g;

        r = req_ok("PATCH", "/v1/account/" ACCT "/notes/s1/properties", "{\"a\":1,\"b\":2}", 204);
        cr_assert_neq(r.etag[0], '\0');
        r = req_ok("PATCH", "/v1/account/" ACCT "/notes/s1/properties", "{\"b\":3,\"c\":{\"x\":4}}",
                   204);
        g = req_ok("GET", "/v1/account/" ACCT "/notes/s1/properties", NULL, 200);
        assert_json_eq(&g, "{\"a\":1,\"b\":3,\"c\":{\"x\":4}}", "merged");
        cr_assert_str_eq(g.etag, r.etag, "GET's ETag is the last PATCH's");
        g = req_ok("GET", "/v1/account/" ACCT "/notes/s1/properties?include=a,c,zz", NULL, 200);
        assert_json_eq(&g, "{\"a\":1,\"c\":{\"x\":4}}", "include");
        g = req_ok("GET", "/v1/account/" ACCT "/notes/s1/properties?include=b", NULL, 200);
        assert_json_eq(&g, "{\"b\":3}", "include one");
        /* Unknown query parameters are ignored. */
        g = req_ok("GET", "/v1/account/" ACCT "/notes/s1/properties?foo=bar&x&y=%00", NULL, 200);
        assert_json_eq(&g, "{\"a\":1,\"b\":3,\"c\":{\"x\":4}}", "unknown query parameter");
        /* A session that does not exist has no properties and no ETag. */
        g = req_ok("GET", "/v1/account/" ACCT "/notes/nobody/properties", NULL, 200);
        assert_json_eq(&g, "{}", "missing session");
        cr_assert_str_eq(g.etag, "");
        /* Namespace level. */
        req_ok("PATCH", "/v1/account/" ACCT "/notes/properties", "{\"k\":\"v\"}", 204);
        g = req_ok("GET", "/v1/account/" ACCT "/notes/properties", NULL, 200);
        assert_json_eq(&g, "{\"k\":\"v\"}", "namespace props");
        cr_assert_neq(g.etag[0], '\0');
}

Test(api, deletes_are_idempotent_and_accept_trailing_slash)
{
        struct resp g;

        seed();
        /* The SDK's own spelling, trailing slash included. */
        req_ok("DELETE", "/v1/account/" ACCT "/notes/s1/properties/color/", NULL, 204);
        g = req("GET", "/v1/account/" ACCT "/notes/s1/properties/color", NULL);
        assert_error(&g, 404, "property 'color' not found in namespace 'notes' session 's1'",
                     "deleted prop");
        req_ok("DELETE", "/v1/account/" ACCT "/notes/s1/properties/color", NULL, 204);
        req_ok("DELETE", "/v1/account/" ACCT "/notes/properties/team", NULL, 204);
        g = req_ok("GET", "/v1/account/" ACCT "/notes/properties", NULL, 200);
        assert_json_eq(&g, "{\"n\":1}", "namespace prop deleted");

        req_ok("DELETE", "/v1/account/" ACCT "/notes/s1/properties/", NULL, 204);
        g = req_ok("GET", "/v1/account/" ACCT "/notes/s1/properties", NULL, 200);
        assert_json_eq(&g, "{}", "session cleared");
        req_ok("DELETE", "/v1/account/" ACCT "/notes/s1/properties", NULL, 204);
        req_ok("DELETE", "/v1/account/" ACCT "/notes/ghost/properties", NULL, 204);

        req_ok("DELETE", "/v1/account/" ACCT "/namespace/notes/session/s2", NULL, 204);
        req_ok("DELETE", "/v1/account/" ACCT "/namespace/notes/session/s2/", NULL, 204);
        g = req_ok("GET", "/v1/account/" ACCT "/notes/session-ids", NULL, 200);
        cr_assert_null(strstr(g.body, "\"s2\""), "%s", g.body);
}

Test(api, sessions_and_paging)
{
        struct resp g;
        json_t *v, *e;

        req_ok("PATCH", "/v1/account/" ACCT "/notes/properties", "{\"d\":0}", 204);
        req_ok("PATCH", "/v1/account/" ACCT "/notes/s3/properties", "{\"x\":3}", 204);
        req_ok("PATCH", "/v1/account/" ACCT "/notes/s1/properties", "{\"x\":1}", 204);
        req_ok("PATCH", "/v1/account/" ACCT "/notes/s2/properties", "{\"x\":2}", 204);

        g = req_ok("GET", "/v1/account/" ACCT "/notes/session-ids", NULL, 200);
        assert_json_eq(&g, "[\"__default__\",\"s1\",\"s2\",\"s3\"]", "all ids");
        g = req_ok("GET", "/v1/account/" ACCT "/notes/session-ids?page=0&perPage=2", NULL, 200);
        assert_json_eq(&g, "[\"__default__\",\"s1\"]", "page 0");
        g = req_ok("GET", "/v1/account/" ACCT "/notes/session-ids?page=1&perPage=2", NULL, 200);
        assert_json_eq(&g, "[\"s2\",\"s3\"]", "page 1");
        g = req_ok("GET", "/v1/account/" ACCT "/notes/session-ids?page=7&perPage=1000", NULL, 200);
        assert_json_eq(&g, "[]", "past the end");
        g = req_ok("GET", "/v1/account/" ACCT "/notes/session-properties?page=1&perPage=3", NULL,
                   200);
        assert_json_eq(&g, "[{\"sessionId\":\"s3\",\"properties\":{\"x\":3}}]",
                       "session-properties");

        req_ok("POST", "/v1/account/" ACCT "/namespace/notes/session?ttlSecond=120",
               "{\"sessionId\":\"s9\"}", 204);
        req_ok("POST", "/v1/account/" ACCT "/namespace/notes/session/", "{\"sessionId\":\"s8\"}",
               204);
        g = req_ok("GET", "/v1/account/" ACCT "/namespace/notes/session", NULL, 200);
        v = parse(&g);
        cr_assert(json_is_array(v));
        e = NULL;
        for (size_t i = 0; i < json_array_size(v); i++)
                if (strcmp(json_string_value(json_object_get(json_array_get(v, i), "sessionId")),
                           "s9") == 0)
                        e = json_array_get(v, i);
        cr_assert_not_null(e, "s9 listed: %s", g.body);
        cr_assert_eq(json_integer_value(json_object_get(e, "ttlSecond")), 120);
        cr_assert(json_is_string(json_object_get(e, "createdAt")));
        json_decref(v);
        g = req_ok("GET", "/v1/account/" ACCT "/notes/session-ids", NULL, 200);
        cr_assert_not_null(strstr(g.body, "\"s8\""), "POST without ttl creates: %s", g.body);
}

Test(api, head_is_get_without_body)
{
        static const char fmt[] = "HEAD /v1/account/" ACCT "/notes/s1/properties/color HTTP/1.1\r\n"
                                  "Host: x\r\nmaven-api-key: %s\r\nConnection: close\r\n\r\n";
        char request[512];
        struct resp r, g;
        size_t len;
        char *raw;

        seed();
        g = req_ok("GET", "/v1/account/" ACCT "/notes/s1/properties/color", NULL, 200);
        r = req_ok("HEAD", "/v1/account/" ACCT "/notes/s1/properties/color", NULL, 200);
        cr_assert_str_eq(r.etag, g.etag);
        cr_assert_eq(r.len, 0);
        /* On the wire: headers, then nothing. */
        snprintf(request, sizeof(request), fmt, fx.key);
        raw = raw_http(request, strlen(request), &len);
        cr_assert(strncmp(raw, "HTTP/1.1 200", 12) == 0, "%s", raw);
        cr_assert_gt(len, 4);
        cr_assert_str_eq(raw + len - 4, "\r\n\r\n", "HEAD answered a body: %s", raw);
        r = req_ok("HEAD", "/v1/account/" ACCT "/notes/session-ids", NULL, 200);
        r = http(&(struct req){.method = "HEAD", .path = "/v1/account/" ACCT "/notes"});
        cr_assert_eq(r.status, 405);
        cr_assert_str_eq(r.allow, "DELETE");
}

/* Answers are queued when the request is complete, which keeps the connection; only a
 * refusal before a body is read closes it. */
Test(api, keep_alive_survives_answers_and_errors)
{
        static const struct {
                const char *method, *path, *body;
                long status;
        } seq[] = {
            {"PUT", NS "/s1/properties/p", "1", 204},
            {"GET", NS "/s1/properties/p", NULL, 200},
            {"GET", NS "/s1/properties/missing", NULL, 404},
            {"GET", "/nowhere", NULL, 404},
            {"DELETE", "/healthz", NULL, 405},
            {"GET", NS "/session-ids?perPage=0", NULL, 400},
            {"PATCH", NS "/s1/properties", "{\"q\":2}", 204},
            {"PATCH", NS "/s1/properties", "[]", 400},
            {"HEAD", NS "/s1/properties", NULL, 200},
            {"GET", "/metrics", NULL, 200},
            {"DELETE", NS "/s1/properties/p", NULL, 204},
        };
        CURL *h = curl_easy_init();
        long connects;

        cr_assert_not_null(h);
        for (size_t i = 0; i < sizeof(seq) / sizeof(seq[0]); i++) {
                struct resp r = http_on(h, &(struct req){.method = seq[i].method,
                                                         .path = seq[i].path,
                                                         .key = fx.key,
                                                         .body = seq[i].body});
                cr_assert_eq(r.status, seq[i].status, "%s %s: %ld %s", seq[i].method, seq[i].path,
                             r.status, r.body);
                cr_assert_str_neq(r.connection, "close", "%s %s", seq[i].method, seq[i].path);
                curl_easy_getinfo(h, CURLINFO_NUM_CONNECTS, &connects);
                cr_assert_eq(connects, i == 0 ? 1 : 0, "%s %s opened a new connection",
                             seq[i].method, seq[i].path);
        }
        curl_easy_cleanup(h);
}

Test(api, not_found)
{
        static const char *const paths[] = {
            "/",
            "/v1",
            "/v1/account",
            "/v2/account/" ACCT,
            "/v1/account/" ACCT "/notes/x",
            "/v1/account/" ACCT "//notes",
            "/v1/account/" ACCT "/notes/s1/properties/p/q",
            "/admin/nothing",
            "/v1/account/" ACCT "/notes/properties/properties/x",
        };
        struct resp r;
        char want[256];

        for (size_t i = 0; i < sizeof(paths) / sizeof(paths[0]); i++) {
                /* 404 comes before the key check: no key needed to learn a path is wrong. */
                r = http(&(struct req){.method = "GET", .path = paths[i]});
                snprintf(want, sizeof(want), "no such resource: %s", paths[i]);
                assert_error(&r, 404, want, paths[i]);
        }
        r = req("GET", "/v1/account/" ACCT "/notes/s1/properties/missing", NULL);
        assert_error(&r, 404, "property 'missing' not found in namespace 'notes' session 's1'",
                     "missing property");
        r = req("GET", "/v1/account/" ACCT "/notes/properties/missing", NULL);
        assert_error(&r, 404, "property 'missing' not found in namespace 'notes'",
                     "missing namespace property");
}

Test(api, path_too_long)
{
        size_t n = ROUTE_PATH_MAX + 100;
        char *path = malloc(n + 1);
        struct resp r;

        cr_assert_not_null(path);
        strcpy(path, "/v1/account/" ACCT "/notes/properties/");
        memset(path + strlen(path), 'p', n - strlen(path));
        path[n] = '\0';
        r = req("GET", path, NULL);
        assert_error(&r, 404, "longer than 4095 bytes", "long path");
        free(path);
}

Test(api, method_not_allowed_names_allowed_ones)
{
        static const struct {
                const char *method, *path, *allow;
        } cases[] = {
            {"PUT", "/v1/account/" ACCT, "GET, HEAD, POST"},
            {"DELETE", "/v1/account/" ACCT, "GET, HEAD, POST"},
            {"GET", "/v1/account/" ACCT "/notes", "DELETE"},
            {"PUT", "/v1/account/" ACCT "/notes/properties", "GET, HEAD, PATCH"},
            {"DELETE", "/v1/account/" ACCT "/notes/properties", "GET, HEAD, PATCH"},
            {"PATCH", "/v1/account/" ACCT "/notes/properties/p", "GET, HEAD, PUT, DELETE"},
            {"POST", "/v1/account/" ACCT "/notes/s1/properties", "GET, HEAD, PATCH, DELETE"},
            {"OPTIONS", "/v1/account/" ACCT "/notes/s1/properties/p", "GET, HEAD, PUT, DELETE"},
            {"DELETE", "/v1/account/" ACCT "/notes/session-ids", "GET, HEAD"},
            {"POST", "/v1/account/" ACCT "/notes/session-properties", "GET, HEAD"},
            {"PUT", "/v1/account/" ACCT "/namespace/notes/session", "GET, HEAD, POST"},
            {"GET", "/v1/account/" ACCT "/namespace/notes/session/s1", "DELETE"},
            {"DELETE", "/metrics", "GET, HEAD"},
            {"BREW", "/readyz", "GET, HEAD"},
        };

        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                /* 405 comes before the key check too. */
                struct resp r =
                    http(&(struct req){.method = cases[i].method, .path = cases[i].path});
                assert_error(&r, 405, cases[i].method, cases[i].path);
                cr_assert_str_eq(r.allow, cases[i].allow, "%s %s", cases[i].method, cases[i].path);
        }
}

Test(api, forbidden)
{
        char long_key[APIKEY_MAX_LEN + 2];
        struct resp r;

        seed();
        r = http(&(struct req){.method = "GET", .path = "/v1/account/" ACCT "/notes/properties"});
        assert_error(&r, 403, "missing maven-api-key header", "no key");
        r = http(&(struct req){.method = "GET",
                               .path = "/v1/account/" ACCT "/notes/properties",
                               .key = "not-the-key"});
        assert_error(&r, 403, "invalid maven-api-key for account acct", "wrong key");
        r = http(&(struct req){
            .method = "GET", .path = "/v1/account/" ACCT "/notes/properties", .key = fx.other_key});
        assert_error(&r, 403, "invalid maven-api-key for account acct", "other account's key");
        r = http(&(struct req){
            .method = "GET", .path = "/v1/account/nokey/notes/properties", .key = fx.key});
        assert_error(&r, 403, "invalid maven-api-key for account nokey", "account without key");
        /* The right key with extra bytes, and a key over the length limit. */
        snprintf(long_key, sizeof(long_key), "%sx", fx.key);
        r = http(&(struct req){
            .method = "GET", .path = "/v1/account/" ACCT "/notes/properties", .key = long_key});
        assert_error(&r, 403, "invalid maven-api-key", "key + 1 byte");
        memset(long_key, 'k', sizeof(long_key) - 1);
        long_key[sizeof(long_key) - 1] = '\0';
        r = http(&(struct req){
            .method = "GET", .path = "/v1/account/" ACCT "/notes/properties", .key = long_key});
        assert_error(&r, 403, "invalid maven-api-key", "key over the length limit");
        /* The header name is case-insensitive; header lines we do not know are fine. */
        r = http(&(struct req){.method = "GET",
                               .path = "/v1/account/" ACCT "/notes/properties",
                               .extra = "MAVEN-API-KEY: placeholder"});
        cr_assert_eq(r.status, 403);
        {
                char line[128];
                snprintf(line, sizeof(line), "MAVEN-API-KEY: %s", fx.key);
                r = http(&(struct req){.method = "GET",
                                       .path = "/v1/account/" ACCT "/notes/properties",
                                       .extra = line});
                cr_assert_eq(r.status, 200, "upper-case header name: %ld %s", r.status, r.body);
        }
        r = http(&(struct req){.method = "GET",
                               .path = "/v1/account/" ACCT "/notes/properties",
                               .key = fx.key,
                               .extra = "X-REQUEST-ID: 0f3c-11"});
        cr_assert_eq(r.status, 200);
        /* Auth comes before validation: a bad namespace without a key is a 403. */
        r = http(
            &(struct req){.method = "GET", .path = "/v1/account/" ACCT "/consumer/properties"});
        assert_error(&r, 403, "missing maven-api-key", "403 before 400");
        /* A write with the wrong key changes nothing. */
        r = http(&(struct req){.method = "PUT",
                               .path = "/v1/account/" ACCT "/notes/s1/properties/color",
                               .key = fx.other_key,
                               .body = "\"hacked\""});
        cr_assert_eq(r.status, 403);
        r = req_ok("GET", "/v1/account/" ACCT "/notes/s1/properties/color", NULL, 200);
        assert_json_eq(&r, "\"red\"", "unchanged after 403");
}

struct bad_case {
        const char *method;
        const char *path;
        const char *body;
        const char *want; /* substring of the message */
};

static void run_bad_cases(const struct bad_case *cases, size_t n)
{
        for (size_t i = 0; i < n; i++) {
                char what[512];
                struct resp r = req(cases[i].method, cases[i].path, cases[i].body);

                snprintf(what, sizeof(what), "case %zu: %s %s %s", i, cases[i].method,
                         cases[i].path, cases[i].body ? cases[i].body : "");
                assert_error(&r, 400, cases[i].want, what);
        }
}

Test(api, bad_input_is_400_and_changes_nothing)
{
        static const struct bad_case cases[] = {
            /* account */
            {"GET", "/v1/account/bad!acct", NULL, "account id 'bad!acct' is invalid"},
            {"GET", "/v1/account/" L65, NULL, "account id must be 1-64"},
            {"PUT", "/v1/account/b%20d/notes/properties/p", "1", "account id"},
            /* namespace, in the path and in the body, on every route naming one */
            {"GET", "/v1/account/" ACCT "/bad-ns/properties", NULL, "'bad-ns' is invalid"},
            {"GET", "/v1/account/" ACCT "/" L65 "/properties", NULL, "1-64"},
            {"PATCH", "/v1/account/" ACCT "/consumer/properties", "{\"a\":1}",
             "'consumer' is reserved"},
            {"PUT", "/v1/account/" ACCT "/operational/s1/properties/p", "1",
             "'operational' is reserved"},
            {"GET", "/v1/account/" ACCT "/conversation/session-ids", NULL,
             "'conversation' is reserved"},
            {"DELETE", "/v1/account/" ACCT "/custom", NULL, "'custom' is reserved"},
            {"GET", "/v1/account/" ACCT "/namespace/sde/session", NULL, "'sde' is reserved"},
            {"DELETE", "/v1/account/" ACCT "/namespace/faas/session/s1", NULL,
             "'faas' is reserved"},
            {"POST", "/v1/account/" ACCT, "{\"name\":\"faas\"}", "'faas' is reserved"},
            {"POST", "/v1/account/" ACCT, "{\"name\":\"has space\"}", "is invalid"},
            {"POST", "/v1/account/" ACCT, "{\"name\":\"\"}", "1-64"},
            {"POST", "/v1/account/" ACCT, "{\"name\":\"a\\u0000b\"}", "NUL"},
            {"POST", "/v1/account/" ACCT, "{\"name\":5}", "\"name\""},
            {"POST", "/v1/account/" ACCT, "{\"nom\":\"x\"}", "\"name\""},
            {"POST", "/v1/account/" ACCT, "[\"notes\"]", "\"name\""},
            /* session ids */
            {"GET", NS "/s%01/properties", NULL, "session id contains a control character"},
            {"GET", NS "/s%7F/properties", NULL, "control character"},
            {"PUT", NS "/s%FF/properties/p", "1", "session id is not valid UTF-8"},
            {"PUT", NS "/s%C0%AF/properties/p", "1", "not valid UTF-8"},    /* overlong */
            {"PUT", NS "/s%ED%A0%80/properties/p", "1", "not valid UTF-8"}, /* surrogate */
            {"POST", "/v1/account/" ACCT "/namespace/notes/session", "{\"sessionId\":\"\"}",
             "session id must be 1-256 bytes"},
            {"POST", "/v1/account/" ACCT "/namespace/notes/session", "{\"sessionId\":\"a\\u0001\"}",
             "control character"},
            {"POST", "/v1/account/" ACCT "/namespace/notes/session", "{\"sessionId\":7}",
             "\"sessionId\""},
            {"POST", "/v1/account/" ACCT "/namespace/notes/session", "{}", "\"sessionId\""},
            {"DELETE", "/v1/account/" ACCT "/namespace/notes/session/%1B", NULL,
             "control character"},
            /* property names */
            {"PUT", NS "/properties/p%0A", "1", "property name contains a control character"},
            {"GET", NS "/s1/properties/%E2%82", NULL, "property name is not valid UTF-8"},
            {"PATCH", NS "/s1/properties", "{\"\":1}", "property name must be 1-256 bytes"},
            {"PATCH", NS "/s1/properties", "{\"ok\":1,\"b\\u0007\":2}", "control character"},
            {"PATCH", NS "/s1/properties", "{\"a\\u0000\":1}", "NUL byte in object key"},
            /* %00 would cut the name short ("color%00x" is not "color") */
            {"PUT", NS "/s1/properties/color%00x", "\"evil\"", "encoded NUL byte (%00)"},
            {"DELETE", NS "%00/s1/properties", NULL, "encoded NUL"}, /* = DELETE notes */
            {"GET", NS "/s1/properties?include=color%00x", NULL, "NUL byte"},
            /* ttlSecond */
            {"POST", "/v1/account/" ACCT "?ttlSecond=-1", "{\"name\":\"n2\"}", "ttlSecond"},
            {"POST", "/v1/account/" ACCT "?ttlSecond=abc", "{\"name\":\"n2\"}", "got 'abc'"},
            {"POST", "/v1/account/" ACCT "?ttlSecond=2147483648", "{\"name\":\"n2\"}",
             "from 0 to 2147483647"},
            {"POST", "/v1/account/" ACCT "?ttlSecond=99999999999999999999999", "{\"name\":\"n2\"}",
             "ttlSecond"},
            {"POST", "/v1/account/" ACCT "?ttlSecond=", "{\"name\":\"n2\"}", "ttlSecond"},
            {"POST", "/v1/account/" ACCT "?ttlSecond", "{\"name\":\"n2\"}", "ttlSecond"},
            {"POST", "/v1/account/" ACCT "?ttlSecond=1.5", "{\"name\":\"n2\"}", "ttlSecond"},
            {"POST", "/v1/account/" ACCT "?ttlSecond=%201", "{\"name\":\"n2\"}", "ttlSecond"},
            {"POST", "/v1/account/" ACCT "?ttlSecond=0x10", "{\"name\":\"n2\"}", "ttlSecond"},
            {"POST", "/v1/account/" ACCT "/namespace/notes/session?ttlSecond=+5",
             "{\"sessionId\":\"s7\"}", "ttlSecond"},
            /* paging */
            {"GET", NS "/session-ids?page=-1", NULL, "query parameter page"},
            {"GET", NS "/session-ids?page=x", NULL, "page"},
            {"GET", NS "/session-ids?page=2147483648", NULL, "page"},
            {"GET", NS "/session-ids?perPage=0", NULL,
             "perPage must be a decimal integer "
             "from 1 to 1000, got '0'"},
            {"GET", NS "/session-ids?perPage=1001", NULL, "perPage"},
            {"GET", NS "/session-ids?perPage=", NULL, "perPage"},
            {"GET", NS "/session-properties?perPage=1e2", NULL, "perPage"},
            {"GET", NS "/session-properties?page=1&perPage=-5", NULL, "perPage"},
            /* include */
            {"GET", NS "/s1/properties?include=", NULL, "include is empty"},
            {"GET", NS "/s1/properties?include", NULL, "include is empty"},
            {"GET", NS "/s1/properties?include=a,,b", NULL, "include: property name"},
            {"GET", NS "/s1/properties?include=a,", NULL, "include"},
            {"GET", NS "/properties?include=%01", NULL, "include: property name contains"},
            /* bodies */
            {"PUT", NS "/s1/properties/p", "", "request body is empty"},
            {"PATCH", NS "/s1/properties", "", "request body is empty"},
            {"POST", "/v1/account/" ACCT, "", "request body is empty"},
            {"PUT", NS "/s1/properties/p", "{", "body is not valid JSON"},
            {"PUT", NS "/s1/properties/p", "1 2", "body is not valid JSON"},
            {"PUT", NS "/s1/properties/p", "{\"a\":1} x", "not valid JSON"},
            {"PUT", NS "/s1/properties/p", "\"\xff\"", "not valid JSON"},
            {"PUT", NS "/s1/properties/p", "{\"a\":1,\"a\":2}", "not valid JSON"},
            {"PUT", NS "/s1/properties/p", "   ", "not valid JSON"},
            {"PUT", NS "/s1/properties/p", "undefined", "line 1 column"},
            {"PATCH", NS "/s1/properties", "[1]", "body must be a JSON object"},
            {"PATCH", NS "/s1/properties", "\"x\"", "JSON object"},
            {"PATCH", NS "/s1/properties", "null", "JSON object"},
        };
        char *before, *after;

        seed();
        before = snapshot();
        run_bad_cases(cases, sizeof(cases) / sizeof(cases[0]));
        after = snapshot();
        cr_assert_str_eq(after, before, "a rejected request changed stored data");
}

Test(api, include_and_patch_limits)
{
        struct bad_case c[3];
        char *path = malloc(8192), *body = malloc(32768);
        char *before;
        size_t o;

        cr_assert_not_null(path);
        cr_assert_not_null(body);
        seed();
        before = snapshot();
        /* 101 names in include */
        o = (size_t)sprintf(path, NS "/s1/properties?include=");
        for (int i = 0; i < 101; i++)
                o += (size_t)sprintf(path + o, "%sp%d", i ? "," : "", i);
        c[0] = (struct bad_case){"GET", path, NULL, "more than 100 property names"};
        /* 1001 members in a PATCH */
        o = (size_t)sprintf(body, "{");
        for (int i = 0; i < 1001; i++)
                o += (size_t)sprintf(body + o, "%s\"k%d\":%d", i ? "," : "", i, i);
        strcpy(body + o, "}");
        c[1] = (struct bad_case){"PATCH", NS "/s1/properties", body, "at most 1000"};
        /* 257-byte session id */
        {
                static char p[512];
                o = (size_t)sprintf(p, NS "/");
                memset(p + o, 's', 257);
                strcpy(p + o + 257, "/properties");
                c[2] = (struct bad_case){"GET", p, NULL, "session id must be 1-256 bytes"};
        }
        cr_assert_lt(strlen(body), MAX_BODY * 4);
        /* The PATCH body is over MAX_BODY: raise the limit for this one. */
        fx.api = api_stop(fx.api);
        start_api(1 << 20);
        run_bad_cases(c, 3);
        cr_assert_str_eq(snapshot(), before);

        /* Exactly 100 names and exactly 1000 members are fine. */
        o = (size_t)sprintf(path, NS "/s1/properties?include=");
        for (int i = 0; i < 100; i++)
                o += (size_t)sprintf(path + o, "%sp%d", i ? "," : "", i);
        req_ok("GET", path, NULL, 200);
        o = (size_t)sprintf(body, "{");
        for (int i = 0; i < 1000; i++)
                o += (size_t)sprintf(body + o, "%s\"k%d\":%d", i ? "," : "", i, i);
        strcpy(body + o, "}");
        req_ok("PATCH", NS "/s2/properties", body, 204);
        free(path);
        free(body);
}

Test(api, if_match_guards_writes)
{
        struct resp put1, put2, r, g;
        char stale[128], *before;

        seed();
        put1 = req_ok("PUT", NS "/s1/properties/note", "\"v1\"", 204);
        strcpy(stale, put1.etag);
        put2 = req_ok("PUT", NS "/s1/properties/note", "\"v2\"", 204);
        cr_assert_str_neq(put2.etag, stale, "the ETag changes on write");
        before = snapshot();

        r = http(&(struct req){.method = "PUT",
                               .path = NS "/s1/properties/note",
                               .key = fx.key,
                               .body = "\"lost update\"",
                               .if_match = stale});
        assert_error(&r, 412, "If-Match", "PUT with a stale ETag");
        r = http(&(struct req){.method = "DELETE",
                               .path = NS "/s1/properties/note",
                               .key = fx.key,
                               .if_match = stale});
        assert_error(&r, 412, "property 'note'", "DELETE with a stale ETag");
        g = req_ok("GET", NS "/s1/properties", NULL, 200);
        r = http(&(struct req){.method = "PATCH",
                               .path = NS "/s1/properties",
                               .key = fx.key,
                               .body = "{\"note\":\"x\"}",
                               .if_match = stale});
        assert_error(&r, 412, "session 's1'", "PATCH with a stale ETag");
        r = http(&(struct req){
            .method = "DELETE", .path = NS "/s1/properties", .key = fx.key, .if_match = stale});
        assert_error(&r, 412, NULL, "clearing with a stale ETag");
        /* A property that does not exist matches no If-Match, not even "*". */
        r = http(&(struct req){.method = "PUT",
                               .path = NS "/s1/properties/ghost",
                               .key = fx.key,
                               .body = "1",
                               .if_match = "*"});
        assert_error(&r, 412, NULL, "If-Match * on a missing property");
        cr_assert_str_eq(snapshot(), before, "a 412 changed stored data");

        /* The current ETags are accepted. */
        r = http(&(struct req){.method = "PATCH",
                               .path = NS "/s1/properties",
                               .key = fx.key,
                               .body = "{\"other\":1}",
                               .if_match = g.etag});
        cr_assert_eq(r.status, 204, "%s", r.body);
        g = req_ok("GET", NS "/s1/properties/note", NULL, 200);
        cr_assert_str_eq(g.etag, put2.etag, "a sibling's write keeps the property's ETag");
        r = http(&(struct req){.method = "PUT",
                               .path = NS "/s1/properties/note",
                               .key = fx.key,
                               .body = "\"v3\"",
                               .if_match = put2.etag});
        cr_assert_eq(r.status, 204, "%s", r.body);
        r = http(&(struct req){.method = "DELETE",
                               .path = NS "/s1/properties/note",
                               .key = fx.key,
                               .if_match = r.etag});
        cr_assert_eq(r.status, 204, "%s", r.body);
        r = req("GET", NS "/s1/properties/note", NULL);
        cr_assert_eq(r.status, 404);
}

Test(api, body_limit_with_content_length)
{
        char *big = malloc(MAX_BODY + 2), *exact = malloc(MAX_BODY + 1), *before;
        static const char raw_fmt[] = "PUT " NS "/s1/properties/p HTTP/1.1\r\nHost: x\r\n"
                                      "maven-api-key: %s\r\nContent-Length: 1000000000\r\n\r\n";
        char request[512];
        struct resp r;
        size_t len;
        char *raw;

        cr_assert_not_null(big);
        cr_assert_not_null(exact);
        seed();
        before = snapshot();
        /* MAX_BODY + 1 bytes of a valid JSON string. */
        memset(big, 'x', MAX_BODY + 1);
        big[0] = big[MAX_BODY] = '"';
        big[MAX_BODY + 1] = '\0';
        r = req("PUT", NS "/s1/properties/color", big);
        assert_error(&r, 413, "exceeds the limit of 4096 bytes", "Content-Length over the limit");
        r = http(&(struct req){.method = "PATCH",
                               .path = NS "/s1/properties",
                               .key = fx.key,
                               .body = big,
                               .expect_100 = true});
        assert_error(&r, 413, "4097", "with Expect: 100-continue");
        /* The declared length alone is refused: the body is never sent. */
        snprintf(request, sizeof(request), raw_fmt, fx.key);
        raw = raw_http(request, strlen(request), &len);
        cr_assert(strncmp(raw, "HTTP/1.1 413", 12) == 0, "%s", raw);
        cr_assert_not_null(strstr(raw, "1000000000"), "%s", raw);
        /* 413 only after auth: without a key it is a 403. */
        r = http(&(struct req){.method = "PUT", .path = NS "/s1/properties/color", .body = big});
        cr_assert_eq(r.status, 403);
        cr_assert_str_eq(snapshot(), before, "a 413 changed stored data");

        /* Exactly max_body is accepted. */
        memset(exact, 'y', MAX_BODY);
        exact[0] = exact[MAX_BODY - 1] = '"';
        exact[MAX_BODY] = '\0';
        req_ok("PUT", NS "/s1/properties/big", exact, 204);
        r = req_ok("GET", NS "/s1/properties/big", NULL, 200);
        cr_assert_eq(r.len, MAX_BODY);
        cr_assert_str_eq(r.body, exact);
        free(big);
        free(exact);
}

Test(api, body_limit_when_chunked)
{
        size_t n = 3 * MAX_BODY, huge = 4u << 20;
        char *big = malloc(huge + 1), *before;
        struct resp r;

        cr_assert_not_null(big);
        seed();
        before = snapshot();
        memset(big, ' ', huge);
        big[0] = '"';
        big[n - 1] = '"';
        r = http(&(struct req){.method = "PUT",
                               .path = NS "/s1/properties/color",
                               .key = fx.key,
                               .body = big,
                               .body_len = n,
                               .chunked = true});
        assert_error(&r, 413, "exceeds the limit of 4096 bytes", "chunked over the limit");
        /* A chunked body far beyond the limit is cut off rather than read to the end. */
        r = http(&(struct req){.method = "PATCH",
                               .path = NS "/s1/properties",
                               .key = fx.key,
                               .body = big,
                               .body_len = huge,
                               .chunked = true});
        cr_assert(r.rc != CURLE_OK || r.status == 413, "rc %d status %ld", r.rc, r.status);
        cr_assert_str_eq(snapshot(), before, "a chunked 413 changed stored data");

        /* Chunked bodies within the limit work. */
        r = http(&(struct req){.method = "PUT",
                               .path = NS "/s1/properties/chunky",
                               .key = fx.key,
                               .body = "{\"a\":[1,2,3],\"b\":\"chunked\"}",
                               .chunked = true});
        cr_assert_eq(r.status, 204, "%ld %s", r.status, r.body);
        r = req_ok("GET", NS "/s1/properties/chunky", NULL, 200);
        assert_json_eq(&r, "{\"a\":[1,2,3],\"b\":\"chunked\"}", "chunked round trip");
        free(big);
}

/* The store answers -EIO when the database stays locked past its busy timeout: a second
 * SQLite connection holding an exclusive transaction makes every write wait BUSY_TIMEOUT_MS
 * and fail, deterministically and even as root (chmod would not stop root). */
Test(api, store_unavailable_is_503)
{
        sqlite3 *db;
        struct resp r;
        char *before;

        seed();
        before = snapshot();
        cr_assert_eq(sqlite3_open(fx.db, &db), SQLITE_OK);
        cr_assert_eq(sqlite3_exec(db, "BEGIN EXCLUSIVE", NULL, NULL, NULL), SQLITE_OK);

        r = req("PUT", NS "/s1/properties/color", "\"green\"");
        assert_error(&r, 503, "store unavailable", "write while locked");
        r = req("PATCH", NS "/s1/properties", "{\"x\":1}");
        assert_error(&r, 503, "store unavailable", "PATCH while locked");
        r = req("DELETE", NS, NULL);
        assert_error(&r, 503, "store unavailable", "DELETE while locked");
        /* WAL readers are not blocked: reads still work, including the key check. */
        r = req_ok("GET", NS "/s1/properties/color", NULL, 200);
        assert_json_eq(&r, "\"red\"", "read while locked");

        cr_assert_eq(sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL), SQLITE_OK);
        sqlite3_close(db);
        cr_assert_str_eq(snapshot(), before, "a 503 changed stored data");
        req_ok("PUT", NS "/s1/properties/color", "\"green\"", 204);
        r = http(&(struct req){.method = "GET", .path = "/metrics"});
        cr_assert_eq(metric(r.body, "ctxhookd_http_requests_total{code=\"503\"}"), 3);
}

Test(api, metrics_count_requests)
{
        struct resp r;
        unsigned long long total;

        req_ok("PUT", NS "/s1/properties/p", "1", 204);
        req_ok("GET", NS "/s1/properties/p", NULL, 200);
        req_ok("GET", NS "/s1/properties/p", NULL, 200);
        req("GET", NS "/s1/properties/missing", NULL);
        http(&(struct req){.method = "GET", .path = NS "/s1/properties/p"});
        http(&(struct req){.method = "GET", .path = "/nope"});
        r = http(&(struct req){.method = "GET", .path = "/metrics"});
        cr_assert_eq(r.status, 200);
        cr_assert_eq(metric(r.body, "ctxhookd_http_requests_total{code=\"204\"}"), 1);
        cr_assert_eq(metric(r.body, "ctxhookd_http_requests_total{code=\"200\"}"), 2);
        cr_assert_eq(metric(r.body, "ctxhookd_http_requests_total{code=\"404\"}"), 2);
        cr_assert_eq(metric(r.body, "ctxhookd_http_requests_total{code=\"403\"}"), 1);
        cr_assert_not_null(strstr(r.body, "# TYPE ctxhookd_http_request_duration_seconds "
                                          "histogram"));
        total = metric(r.body, "ctxhookd_http_request_duration_seconds_count");
        cr_assert_eq(total, 6);
        cr_assert_eq(metric(r.body, "ctxhookd_http_request_duration_seconds_bucket{le=\"+Inf\"}"),
                     6);
        cr_assert_eq(metric(r.body, "ctxhookd_http_request_duration_seconds_bucket{le=\"10\"}"), 6);
        /* The scrape itself is counted afterwards. */
        r = http(&(struct req){.method = "GET", .path = "/metrics"});
        cr_assert_eq(metric(r.body, "ctxhookd_http_requests_total{code=\"200\"}"), 3);
}

Test(api, start_errors_name_the_address)
{
        static const char *const bad[] = {"",        "127.0.0.1",       "127.0.0.1:", "1.2.3:80",
                                          "host:80", "127.0.0.1:65536", "[::1]80",    "[zz]:80",
                                          ":80",     "127.0.0.1:-1"};
        struct api_options ao = {.max_body = 1024, .threads = 1, .connection_timeout_s = 5};
        struct ch_error err;
        struct api *a = NULL;
        char listen[64];
        int r;

        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
                ao.listen = bad[i];
                err.msg[0] = '\0';
                r = api_start(&ao, fx.store, fx.metrics, &a, &err);
                cr_assert_eq(r, -EINVAL, "'%s': %d", bad[i], r);
                cr_assert_null(a);
                cr_assert_not_null(strstr(err.msg, bad[i]), "'%s': %s", bad[i], err.msg);
        }
        /* The port the fixture holds is taken. */
        snprintf(listen, sizeof(listen), "127.0.0.1:%u", fx.port);
        ao.listen = listen;
        r = api_start(&ao, fx.store, fx.metrics, &a, &err);
        cr_assert_eq(r, -EADDRINUSE, "%d %s", r, err.msg);
        cr_assert_null(a);
        cr_assert_not_null(strstr(err.msg, listen), "%s", err.msg);
        cr_assert_not_null(strstr(err.msg, "in use"), "%s", err.msg);
        /* "localhost" is 127.0.0.1. */
        ao.listen = "localhost:0";
        r = api_start(&ao, fx.store, fx.metrics, &a, &err);
        cr_assert_eq(r, 0, "%s", err.msg);
        cr_assert_gt(api_port(a), 0);
        a = api_stop(a);
        cr_assert_null(a);
        cr_assert_null(api_stop(NULL));
}

Test(api, ipv6_listener)
{
        struct api_options ao = {
            .listen = "[::1]:0", .max_body = 1024, .threads = 1, .connection_timeout_s = 5};
        struct sockaddr_in6 sa = {.sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT};
        struct ch_error err;
        struct api *a = NULL;
        char url[128];
        long status = 0;
        int fd = socket(AF_INET6, SOCK_STREAM, 0), ok;
        CURL *h;

        ok = fd >= 0 && bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0;
        if (fd >= 0)
                close(fd);
        if (!ok)
                cr_skip_test("no IPv6 loopback here");
        cr_assert_eq(api_start(&ao, fx.store, fx.metrics, &a, &err), 0, "%s", err.msg);
        snprintf(url, sizeof(url), "http://[::1]:%u/healthz", api_port(a));
        h = curl_easy_init();
        curl_easy_setopt(h, CURLOPT_URL, url);
        curl_easy_setopt(h, CURLOPT_NOBODY, 1L);
        cr_assert_eq(curl_easy_perform(h), CURLE_OK);
        curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
        curl_easy_cleanup(h);
        cr_assert_eq(status, 200);
        api_stop(a);
}

/* ---- graceful stop ---- */

struct slow_upload {
        sem_t started; /* posted when curl asks for the body the first time */
        sem_t release; /* the test lets the rest of the body go */
        int calls;
        struct resp r;
};

static size_t slow_read(char *p, size_t size, size_t n, void *ud)
{
        struct slow_upload *s = ud;

        (void)size;
        (void)n;
        switch (s->calls++) {
        case 0:
                sem_post(&s->started);
                memcpy(p, "[1,", 3);
                return 3;
        case 1:
                sem_wait(&s->release);
                memcpy(p, "2]", 2);
                return 2;
        default:
                return 0;
        }
}

static void *slow_client(void *arg)
{
        struct slow_upload *s = arg;
        struct curl_slist *hdrs = NULL;
        char url[256], line[128];
        CURL *h = curl_easy_init();

        snprintf(url, sizeof(url), "http://127.0.0.1:%u" NS "/s1/properties/slow", fx.port);
        snprintf(line, sizeof(line), "maven-api-key: %s", fx.key);
        hdrs = curl_slist_append(hdrs, line);
        hdrs = curl_slist_append(hdrs, "Transfer-Encoding: chunked");
        hdrs = curl_slist_append(hdrs, "Expect:");
        curl_easy_setopt(h, CURLOPT_URL, url);
        curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, "PUT");
        curl_easy_setopt(h, CURLOPT_POST, 1L);
        curl_easy_setopt(h, CURLOPT_READFUNCTION, slow_read);
        curl_easy_setopt(h, CURLOPT_READDATA, s);
        curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdrs);
        curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, on_header);
        curl_easy_setopt(h, CURLOPT_HEADERDATA, &s->r);
        curl_easy_setopt(h, CURLOPT_TIMEOUT, 30L);
        s->r.rc = curl_easy_perform(h);
        curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &s->r.status);
        curl_easy_cleanup(h);
        curl_slist_free_all(hdrs);
        return NULL;
}

static atomic_bool stop_returned;

static void *stopper(void *arg)
{
        api_stop(arg);
        atomic_store(&stop_returned, true);
        return NULL;
}

/* Hands the fixture's api over, so teardown does not stop it a second time. */
static struct api *take_api(void)
{
        struct api *a = fx.api;

        fx.api = NULL;
        return a;
}

Test(api, stop_lets_requests_in_flight_finish)
{
        struct slow_upload s = {0};
        pthread_t client, stop_thread;
        char *json = NULL;
        int connected;

        cr_assert_eq(sem_init(&s.started, 0, 0), 0);
        cr_assert_eq(sem_init(&s.release, 0, 0), 0);
        cr_assert_eq(pthread_create(&client, NULL, slow_client, &s), 0);
        sem_wait(&s.started);
        usleep(200 * 1000); /* the headers reach the server: the request is in flight */
        cr_assert_eq(pthread_create(&stop_thread, NULL, stopper, take_api()), 0);
        usleep(300 * 1000);
        cr_assert_not(atomic_load(&stop_returned), "api_stop did not wait for the request");
        /* New connections are refused meanwhile. */
        {
                struct sockaddr_in sa = {.sin_family = AF_INET,
                                         .sin_port = htons((uint16_t)fx.port)};
                int fd = socket(AF_INET, SOCK_STREAM, 0);
                sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
                connected = connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0;
                close(fd);
        }
        cr_assert_not(connected, "still accepting connections while stopping");
        sem_post(&s.release);
        pthread_join(client, NULL);
        pthread_join(stop_thread, NULL);
        cr_assert(atomic_load(&stop_returned));
        cr_assert_eq(s.r.rc, CURLE_OK, "%s", curl_easy_strerror(s.r.rc));
        cr_assert_eq(s.r.status, 204);
        cr_assert_str_eq(s.r.connection, "close", "answers while stopping close the connection");
        cr_assert_eq(store_prop_get(fx.store, ACCT, "notes", "s1", "slow", 0, &json, NULL, NULL),
                     0);
        cr_assert_str_eq(json, "[1,2]");
        free(json);
        sem_destroy(&s.started);
        sem_destroy(&s.release);
}

/* Requests that MHD refuses by itself must not count as in flight forever, or every stop
 * would wait its full bound. */
Test(api, stop_is_prompt_after_requests_mhd_refused)
{
        static const char *const bad[] = {
            "GET /healthz HTTP/1.1\r\nHost: x\r\nNo colon here\r\n\r\n",
            "GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: zz\r\n\r\n",
            "GET /healthz HTTP/9.9\r\nHost: x\r\n\r\n",
            "PUT " NS "/s1/properties/p HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            "\r\nzz\r\n",
        };
        struct timespec t0, t1;
        size_t len;

        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
                char *raw = raw_http(bad[i], strlen(bad[i]), &len);
                cr_assert(strncmp(raw, "HTTP/1.1 4", 10) == 0 ||
                              strncmp(raw, "HTTP/1.1 5", 10) == 0 || len == 0,
                          "request %zu: %s", i, raw);
        }
        req_ok("GET", NS "/s1/properties", NULL, 200);
        clock_gettime(CLOCK_MONOTONIC, &t0);
        fx.api = api_stop(fx.api);
        clock_gettime(CLOCK_MONOTONIC, &t1);
        cr_assert_lt((t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000, 2000,
                     "api_stop waited for requests that were over");
}

/* ---- admin endpoints and readiness ---- */

#define ADMIN_TOKEN "admin-token-0123456789abcdef"

Test(api, admin_endpoints_are_disabled_without_a_token)
{
        struct resp r = http(&(struct req){.method = "GET", .path = "/admin/dead-letters"});

        assert_error(&r, 404, "the admin endpoints are disabled: set [api] admin_token", "admin");
}

Test(api, admin_needs_the_bearer_token)
{
        struct resp r;

        fx.api = api_stop(fx.api);
        start_api_with(MAX_BODY, ADMIN_TOKEN, NULL);
        r = http(&(struct req){.method = "GET", .path = "/admin/dead-letters"});
        assert_error(&r, 401, "missing Authorization: Bearer <admin token>", "no token");
        cr_assert_eq(strncmp(r.www_auth, "Bearer ", 7), 0, "WWW-Authenticate: %s", r.www_auth);
        r = http(&(struct req){.method = "GET",
                               .path = "/admin/dead-letters",
                               .extra = "Authorization: Bearer admin-token-0123456789abcdeX"});
        assert_error(&r, 403, "invalid admin token", "wrong token");
        r = http(&(struct req){.method = "GET",
                               .path = "/admin/dead-letters",
                               .extra = "Authorization: Bearer " ADMIN_TOKEN "x"});
        assert_error(&r, 403, "invalid admin token", "longer token");
        /* The Context API key is no admin token. */
        r = http(&(struct req){.method = "GET",
                               .path = "/admin/dead-letters",
                               .extra = "Authorization: Bearer " ADMIN_TOKEN,
                               .key = fx.key});
        cr_assert_eq(r.status, 200, "%s", r.body);
        cr_assert_str_eq(r.body, "{\"items\":[]}");
}

Test(api, admin_lists_and_deletes_dead_letters)
{
        const char *auth = "Authorization: Bearer " ADMIN_TOKEN;
        struct resp r;
        json_t *v, *item;

        fx.api = api_stop(fx.api);
        start_api_with(MAX_BODY, ADMIN_TOKEN, NULL);
        cr_assert_eq(store_dead_add(fx.store, NULL, "kafka:t/0/1", "not valid JSON", "nope", 4,
                                    1800000000000),
                     0);
        cr_assert_eq(store_dead_add(fx.store, NULL, "kafka:t/0/2", "no conversation id", "{}", 2,
                                    1800000000000),
                     0);
        r = http(&(struct req){.method = "GET", .path = "/admin/dead-letters", .extra = auth});
        cr_assert_eq(r.status, 200, "%s", r.body);
        v = json_loads(r.body, 0, NULL);
        cr_assert_eq(json_array_size(json_object_get(v, "items")), 2, "%s", r.body);
        item = json_array_get(json_object_get(v, "items"), 0);
        cr_assert_str_eq(json_string_value(json_object_get(item, "source")), "kafka:t/0/1");
        cr_assert_str_eq(json_string_value(json_object_get(item, "reason")), "not valid JSON");
        cr_assert_str_eq(json_string_value(json_object_get(item, "raw")), "nope");
        cr_assert_str_eq(json_string_value(json_object_get(item, "received")),
                         "2027-01-15T08:00:00.000Z");
        json_int_t first = json_integer_value(json_object_get(item, "id"));
        json_decref(v);

        /* Paging: after the first id, limit 1. */
        char path[128];
        snprintf(path, sizeof(path), "/admin/dead-letters?after=%lld&limit=1", (long long)first);
        r = http(&(struct req){.method = "GET", .path = path, .extra = auth});
        v = json_loads(r.body, 0, NULL);
        cr_assert_eq(json_array_size(json_object_get(v, "items")), 1, "%s", r.body);
        cr_assert_str_eq(json_string_value(json_object_get(
                             json_array_get(json_object_get(v, "items"), 0), "source")),
                         "kafka:t/0/2");
        json_decref(v);
        r = http(
            &(struct req){.method = "GET", .path = "/admin/dead-letters?limit=0", .extra = auth});
        cr_assert_eq(r.status, 400, "%s", r.body);

        snprintf(path, sizeof(path), "/admin/dead-letters/%lld", (long long)first);
        r = http(&(struct req){.method = "DELETE", .path = path, .extra = auth});
        cr_assert_eq(r.status, 204, "%s", r.body);
        r = http(&(struct req){.method = "DELETE", .path = path, .extra = auth});
        cr_assert_eq(r.status, 404, "%s", r.body);
        r = http(
            &(struct req){.method = "DELETE", .path = "/admin/dead-letters/abc", .extra = auth});
        assert_error(&r, 404, "no dead letter 'abc': ids are positive integers", "bad id");
        /* No pipeline in this process: an event cannot be redriven, and stays. */
        snprintf(path, sizeof(path), "/admin/dead-letters/%lld/redrive", (long long)first + 1);
        r = http(&(struct req){.method = "POST", .path = path, .extra = auth});
        cr_assert_eq(r.status, 503, "%s", r.body);
        int64_t n = 0;
        cr_assert_eq(store_dead_count(fx.store, &n), 0);
        cr_assert_eq(n, 1);
}

static bool never_ready(void *ctx, char *why, size_t size)
{
        (void)ctx;
        snprintf(why, size, "no Kafka partitions assigned yet");
        return false;
}

Test(api, readyz_asks_the_service)
{
        struct resp r;

        fx.api = api_stop(fx.api);
        start_api_with(MAX_BODY, NULL, never_ready);
        r = http(&(struct req){.method = "GET", .path = "/readyz"});
        assert_error(&r, 503, "not ready: no Kafka partitions assigned yet", "readyz");
        r = http(&(struct req){.method = "GET", .path = "/healthz"});
        cr_assert_eq(r.status, 200);
        /* A load balancer's check: the Context API answers, whatever Kafka does. */
        r = http(&(struct req){.method = "GET", .path = "/readyz?scope=api"});
        assert_json_eq(&r, "{\"status\":\"ready\"}", "readyz?scope=api");
        r = http(&(struct req){.method = "GET", .path = "/readyz?scope=kafka"});
        assert_error(&r, 400,
                     "query parameter scope must be 'api' (the Context API only) or absent (the "
                     "whole daemon), got 'kafka'",
                     "readyz?scope=kafka");
}

/* ---- event ingest: POST /v1/account/{acct}/events ---- */

#define EVENTS    "/v1/account/" ACCT "/events"
#define MAX_EVENT 2048 /* [kafka] max_message_bytes: below MAX_BODY, so both limits show */
#define END_EVENT                                                                                  \
        "{\"kind\":\"conversation.end\",\"conversationId\":\"s1\",\"closeReason\":\"SYSTEM\"}"
#define IDLE_EVENT "{\"kind\":\"conversation.idle\",\"conversationId\":\"s1\"}"

static char *ingest_ns[] = {"notes", NULL};
static struct config_hook ingest_hook = {
    .name = "on-end",
    .on = EVENT_END,
    .namespaces = ingest_ns,
    .url = "http://127.0.0.1:9/fn",
    .secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    .bearer_token = "",
    .timeout_ms = 5000,
    .max_attempts = 3,
};
/* No [kafka] account: an event without one can only get the path's. */
static struct config ingest_cfg = {
    .hooks = &ingest_hook, .n_hooks = 1, .kafka = {.account = "", .max_message_bytes = MAX_EVENT}};

static void start_ingest(void)
{
        struct api_options ao = {.listen = "127.0.0.1:0",
                                 .max_body = MAX_BODY,
                                 .threads = 2,
                                 .max_connections = 64,
                                 .connection_timeout_s = 30};
        struct ch_error err = {""};
        int r;

        fx.api = api_stop(fx.api);
        cr_assert_eq(pipeline_new(fx.store, fx.metrics, &ingest_cfg, &fx.pipeline), 0);
        ao.pipeline = fx.pipeline;
        r = api_start(&ao, fx.store, fx.metrics, &fx.api, &err);
        cr_assert_eq(r, 0, "api_start: %d %s", r, err.msg);
        fx.port = api_port(fx.api);
}

static int64_t outbox_depth(void)
{
        int64_t n = -1;

        cr_assert_eq(store_outbox_depth(fx.store, &n), 0);
        return n;
}

static int64_t dead_count(void)
{
        int64_t n = -1;

        cr_assert_eq(store_dead_count(fx.store, &n), 0);
        return n;
}

/* POSTs body to path with ACCT's key and the Idempotency-Key key (NULL = none). */
static struct resp ingest(const char *path, const char *body, const char *key)
{
        char line[512];

        if (key)
                snprintf(line, sizeof(line), "Idempotency-Key: %s", key);
        return http(&(struct req){.method = "POST",
                                  .path = path,
                                  .key = fx.key,
                                  .body = body,
                                  .extra = key ? line : NULL});
}

/* A 202 answer: checks its shape and returns the event id (tracked). */
static char *accepted(const struct resp *r, json_int_t events, json_int_t deliveries, bool dup)
{
        json_t *v;
        const char *id;
        char *out;

        cr_assert_eq(r->rc, CURLE_OK);
        cr_assert_eq(r->status, 202, "status %ld: %s", r->status, r->body);
        cr_assert_str_eq(r->ctype, "application/json");
        v = parse(r);
        cr_assert_eq(json_object_size(v), 4, "%s", r->body);
        id = json_string_value(json_object_get(v, "id"));
        cr_assert_not_null(id, "%s", r->body);
        cr_assert_eq(strncmp(id, "http:" ACCT ":", strlen("http:" ACCT ":")), 0, "id %s", id);
        cr_assert_eq(strlen(id), strlen("http:" ACCT ":") + 32, "id %s", id);
        cr_assert_eq(strspn(id + strlen("http:" ACCT ":"), "0123456789abcdef"), 32, "id %s", id);
        cr_assert_eq(json_integer_value(json_object_get(v, "events")), events, "%s", r->body);
        cr_assert_eq(json_integer_value(json_object_get(v, "deliveries")), deliveries, "%s",
                     r->body);
        cr_assert(json_is_boolean(json_object_get(v, "duplicate")), "%s", r->body);
        cr_assert_eq(json_is_true(json_object_get(v, "duplicate")), dup, "%s", r->body);
        out = track(strdup(id));
        json_decref(v);
        return out;
}

Test(api, ingest_queues_the_event_with_its_context)
{
        struct store_delivery *d = NULL;
        size_t n = 0;
        struct resp r;
        json_t *body, *payload, *event;
        char *id;

        seed();
        start_ingest();
        r = ingest(EVENTS, END_EVENT, NULL);
        id = accepted(&r, 1, 1, false);
        cr_assert_eq(outbox_depth(), 1);
        cr_assert_eq(store_outbox_claim(fx.store, INT64_MAX / 2, 60000, 10, &d, &n), 0);
        cr_assert_eq(n, 1);
        cr_assert_str_eq(d[0].hook, "on-end");
        cr_assert_str_eq(d[0].account, ACCT, "an event without an account gets the path's");
        cr_assert_str_eq(d[0].conversation, "s1");
        body = json_loadb(d[0].body, d[0].body_len, 0, NULL);
        cr_assert_not_null(body);
        payload = json_object_get(body, "payload");
        event = json_object_get(payload, "event");
        cr_assert_str_eq(json_string_value(json_object_get(event, "id")), id);
        cr_assert_str_eq(json_string_value(json_object_get(event, "accountId")), ACCT);
        cr_assert_str_eq(json_string_value(json_object_get(event, "kind")), "conversation.end");
        cr_assert_str_eq(json_string_value(json_object_get(event, "closeReason")), "SYSTEM");
        /* The context came from the store, so the hook saw ACCT's data. */
        cr_assert_str_eq(
            json_string_value(json_object_get(
                json_object_get(json_object_get(json_object_get(payload, "context"), "notes"),
                                "session"),
                "color")),
            "red", "%.*s", (int)d[0].body_len, d[0].body);
        json_decref(body);
        store_deliveries_free(d, n);

        /* An event no hook wants is accepted and queues nothing. */
        r = ingest(EVENTS, IDLE_EVENT, NULL);
        accepted(&r, 1, 0, false);
        cr_assert_eq(outbox_depth(), 1);
        /* The account may also be named, as long as it is the path's. */
        r = ingest(EVENTS,
                   "{\"kind\":\"conversation.end\",\"accountId\":\"" ACCT
                   "\",\"conversationId\":\"s2\",\"closeReason\":\"AGENT\"}",
                   NULL);
        accepted(&r, 1, 1, false);
        cr_assert_eq(outbox_depth(), 2);
        cr_assert_eq(dead_count(), 0);

        r = http(&(struct req){.method = "GET", .path = "/metrics"});
        cr_assert_eq(metric(r.body, "ctxhookd_http_requests_total{code=\"202\"}"), 3);
        cr_assert_eq(metric(r.body, "ctxhookd_events_total{result=\"queued\"}"), 2);
        cr_assert_eq(metric(r.body, "ctxhookd_events_total{result=\"ignored\"}"), 1);
}

Test(api, ingest_idempotency_key_queues_once)
{
        struct resp r;
        char *a, *b;

        start_ingest();
        r = ingest(EVENTS, END_EVENT, "order-42");
        a = accepted(&r, 1, 1, false);
        r = ingest(EVENTS, END_EVENT, "order-42");
        b = accepted(&r, 1, 0, true);
        cr_assert_str_eq(a, b, "a repeat must name the same event");
        cr_assert_eq(outbox_depth(), 1);
        /* Even with another body: the key alone says "seen". */
        r = ingest(EVENTS, IDLE_EVENT, "order-42");
        accepted(&r, 1, 0, true);
        cr_assert_eq(outbox_depth(), 1);

        /* Another key is another event. */
        r = ingest(EVENTS, END_EVENT, "order-43");
        b = accepted(&r, 1, 1, false);
        cr_assert_str_neq(a, b);
        cr_assert_eq(outbox_depth(), 2);

        /* Without a key every request is new, with an id of its own. */
        r = ingest(EVENTS, END_EVENT, NULL);
        a = accepted(&r, 1, 1, false);
        r = ingest(EVENTS, END_EVENT, NULL);
        b = accepted(&r, 1, 1, false);
        cr_assert_str_neq(a, b);
        cr_assert_eq(outbox_depth(), 4);

        /* Keys are per account: OTHER's "order-42" is not ACCT's. */
        r = http(&(struct req){.method = "POST",
                               .path = "/v1/account/" OTHER "/events",
                               .key = fx.other_key,
                               .body = END_EVENT,
                               .extra = "Idempotency-Key: order-42"});
        cr_assert_eq(r.status, 202, "%s", r.body);
        cr_assert_not_null(strstr(r.body, "\"duplicate\":false"), "%s", r.body);
        cr_assert_eq(outbox_depth(), 5);
        cr_assert_eq(dead_count(), 0);
}

Test(api, ingest_refuses_a_bad_event_and_queues_nothing)
{
        static const struct {
                const char *body;
                const char *want;
        } cases[] = {
            {"{\"kind\":", "not valid JSON"},
            {"not json at all", "not valid JSON"},
            {"[1,2]", NULL},
            {"{\"kind\":\"conversation.bogus\",\"conversationId\":\"s1\"}", "conversation.bogus"},
            {"{\"kind\":\"conversation.end\",\"closeReason\":\"SYSTEM\"}", "conversationId"},
            {"{\"general\":{\"cbotEventType\":\"NO_SUCH_TYPE\",\"convId\":\"c\"}}", "NO_SUCH_TYPE"},
            /* A kcat -J envelope is a replay log's, not an event. */
            {"{\"topic\":\"t\",\"partition\":0,\"offset\":1,\"key\":null,\"payload\":"
             "\"{\\\"kind\\\":\\\"conversation.end\\\",\\\"conversationId\\\":\\\"s1\\\"}\"}",
             NULL},
        };
        struct resp r;

        start_ingest();
        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                r = ingest(EVENTS, cases[i].body, "k1");
                assert_error(&r, 400, cases[i].want, cases[i].body);
                cr_assert_not_null(strstr(r.body, "event not accepted"), "%s", r.body);
        }
        r = ingest(EVENTS, "", NULL);
        assert_error(&r, 400, "request body is empty", "empty body");
        cr_assert_eq(outbox_depth(), 0, "a refused event was queued");
        cr_assert_eq(dead_count(), 0, "a refused event became a dead letter");
        /* A refused request does not use up its Idempotency-Key. */
        r = ingest(EVENTS, END_EVENT, "k1");
        accepted(&r, 1, 1, false);
        cr_assert_eq(outbox_depth(), 1);
}

Test(api, ingest_checks_the_idempotency_key)
{
        char long_key[300], line[400];
        struct resp r;

        start_ingest();
        memset(long_key, 'k', 256);
        long_key[256] = '\0';
        r = ingest(EVENTS, END_EVENT, long_key);
        assert_error(&r, 400, "Idempotency-Key must be 1 to 255 characters, got 256", "long key");
        r = http(&(struct req){.method = "POST",
                               .path = EVENTS,
                               .key = fx.key,
                               .body = END_EVENT,
                               .extra = "Idempotency-Key;"}); /* curl: the header, empty */
        assert_error(&r, 400, "Idempotency-Key must be 1 to 255 characters, got 0", "empty key");
        r = ingest(EVENTS, END_EVENT, "caf\xc3\xa9");
        assert_error(&r, 400, "Idempotency-Key must be printable ASCII (byte 4 is 0xc3)",
                     "non-ASCII key");
        cr_assert_eq(outbox_depth(), 0);
        /* 255 is fine, spaces included, and the header name is case-insensitive. */
        long_key[255] = '\0';
        long_key[3] = ' ';
        r = ingest(EVENTS, END_EVENT, long_key);
        accepted(&r, 1, 1, false);
        snprintf(line, sizeof(line), "idempotency-key: %s", long_key);
        r = http(&(struct req){
            .method = "POST", .path = EVENTS, .key = fx.key, .body = END_EVENT, .extra = line});
        accepted(&r, 1, 0, true);
        cr_assert_eq(outbox_depth(), 1);
}

Test(api, ingest_refuses_another_accounts_event)
{
        struct resp r;

        start_ingest();
        r = ingest(EVENTS,
                   "{\"kind\":\"conversation.end\",\"accountId\":\"" OTHER
                   "\",\"conversationId\":\"s1\"}",
                   "k");
        assert_error(&r, 403, "event 1 of the body is for account 'other'", "other account");
        /* A notification: the second change is another account's, so none is taken. */
        r = ingest(EVENTS,
                   "{\"type\":\"cqm.ExConversationChangeNotification\",\"body\":{\"changes\":["
                   "{\"result\":{\"convId\":\"c1\",\"conversationDetails\":{\"brandId\":\"" ACCT
                   "\",\"state\":\"CLOSE\",\"closeReason\":\"SYSTEM\"}}},"
                   "{\"result\":{\"convId\":\"c2\",\"conversationDetails\":{\"brandId\":\"" OTHER
                   "\",\"state\":\"CLOSE\",\"closeReason\":\"SYSTEM\"}}}]}}",
                   NULL);
        assert_error(&r, 403, "event 2 of the body is for account 'other'", "mixed notification");
        cr_assert_eq(outbox_depth(), 0);
        cr_assert_eq(dead_count(), 0);
        /* The same notification with both changes ACCT's: two events, two deliveries. */
        r = ingest(EVENTS,
                   "{\"type\":\"cqm.ExConversationChangeNotification\",\"body\":{\"changes\":["
                   "{\"result\":{\"convId\":\"c1\",\"conversationDetails\":{\"brandId\":\"" ACCT
                   "\",\"state\":\"CLOSE\",\"closeReason\":\"SYSTEM\"}}},"
                   "{\"result\":{\"convId\":\"c2\",\"conversationDetails\":{\"brandId\":\"" ACCT
                   "\",\"state\":\"CLOSE\",\"closeReason\":\"SYSTEM\"}}}]}}",
                   "k");
        accepted(&r, 2, 2, false);
        cr_assert_eq(outbox_depth(), 2);
}

Test(api, ingest_needs_the_accounts_key)
{
        struct resp r;

        start_ingest();
        r = http(&(struct req){.method = "POST", .path = EVENTS, .body = END_EVENT});
        assert_error(&r, 403, "missing maven-api-key header", "no key");
        r = http(&(struct req){
            .method = "POST", .path = EVENTS, .key = fx.other_key, .body = END_EVENT});
        assert_error(&r, 403, "invalid maven-api-key for account acct", "other's key");
        r = http(&(struct req){.method = "POST",
                               .path = "/v1/account/nobody/events",
                               .key = fx.key,
                               .body = END_EVENT});
        assert_error(&r, 403, "invalid maven-api-key for account nobody", "unknown account");
        cr_assert_eq(outbox_depth(), 0);
}

Test(api, ingest_method_and_size_limits)
{
        char big[MAX_BODY + 100], event[MAX_EVENT + 200];
        struct resp r;
        int n;

        start_ingest();
        r = http(&(struct req){.method = "GET", .path = EVENTS, .key = fx.key});
        assert_error(&r, 405, "method GET is not allowed here; allowed: POST, DELETE", "GET");
        cr_assert_str_eq(r.allow, "POST, DELETE");
        r = http(&(struct req){.method = "PUT", .path = EVENTS, .key = fx.key, .body = END_EVENT});
        assert_error(&r, 405, "method PUT is not allowed here", "PUT");

        /* Over [api] max_body: refused before reading, with either framing. */
        memset(big, ' ', sizeof(big) - 1);
        big[sizeof(big) - 1] = '\0';
        r = ingest(EVENTS, big, NULL);
        assert_error(&r, 413, "exceeds the limit of 4096 bytes", "max_body");
        r = http(&(struct req){
            .method = "POST", .path = EVENTS, .key = fx.key, .body = big, .chunked = true});
        assert_error(&r, 413, "exceeds the limit of 4096 bytes", "max_body chunked");
        /* Within max_body but over [kafka] max_message_bytes: the pipeline's own limit. */
        n = snprintf(event, sizeof(event),
                     "{\"kind\":\"conversation.end\",\"conversationId\":\"s1\",\"pad\":\"%0*d\"}",
                     MAX_EVENT, 0);
        cr_assert_lt((size_t)n, sizeof(event));
        r = ingest(EVENTS, event, NULL);
        assert_error(&r, 413, "event not accepted", "max_message_bytes");
        cr_assert_eq(outbox_depth(), 0);
        cr_assert_eq(dead_count(), 0);
}

Test(api, delete_on_events_is_still_the_namespace)
{
        struct resp r;

        start_ingest();
        req_ok("POST", "/v1/account/" ACCT, "{\"name\":\"events\"}", 204);
        req_ok("PUT", "/v1/account/" ACCT "/events/properties/p", "1", 204);
        r = ingest(EVENTS, END_EVENT, NULL);
        accepted(&r, 1, 1, false);
        r = req_ok("GET", "/v1/account/" ACCT "/events/properties", NULL, 200);
        assert_json_eq(&r, "{\"p\":1}", "ingest left the namespace alone");
        req_ok("DELETE", EVENTS, NULL, 204);
        r = req_ok("GET", "/v1/account/" ACCT, NULL, 200);
        assert_json_eq(&r, "[]", "DELETE removed the namespace \"events\"");
        cr_assert_eq(outbox_depth(), 1, "DELETE touched the outbox");
}

Test(api, ingest_without_a_pipeline_is_503)
{
        struct resp r = ingest(EVENTS, END_EVENT, "k");

        assert_error(&r, 503, "event ingest is not available in this process", "no pipeline");
        cr_assert_eq(outbox_depth(), 0);
}

/* A burst of 5xx answers (a database outage under a load balancer's traffic) logs at most 10 a
 * second, and the next line logged says how many were not. */
Test(api, a_burst_of_5xx_is_logged_at_most_ten_a_second)
{
        char path[] = "/tmp/ctxhookd-api-log-XXXXXX", text[65536], *p;
        int fd = mkstemp(path), saved = dup(2), logged = 0;
        unsigned dropped = 0;
        ssize_t len;

        cr_assert(fd >= 0 && saved >= 0);
        fflush(stderr);
        cr_assert_eq(dup2(fd, 2), 2);
        for (int i = 0; i < 30; i++)
                cr_assert_eq(ingest(EVENTS, END_EVENT, "k").status, 503);
        usleep(1100 * 1000);
        cr_assert_eq(ingest(EVENTS, END_EVENT, "k").status, 503);
        fflush(stderr);
        cr_assert_eq(dup2(saved, 2), 2);
        close(saved);
        len = pread(fd, text, sizeof(text) - 1, 0);
        close(fd);
        unlink(path);
        cr_assert_gt(len, 0);
        text[len] = '\0';
        for (p = text; (p = strstr(p, "503 event ingest is not available")); p++) {
                const char *more = strstr(p, " more 5xx answers were not logged");
                const char *eol = strchr(p, '\n');

                logged++;
                if (more && (!eol || more < eol)) {
                        const char *count = more;

                        while (count > p && *count != '(')
                                count--;
                        dropped += (unsigned)strtoul(count + 1, NULL, 10);
                }
        }
        /* 31 answers: the burst straddles at most one second boundary, so 10 to 20 of its 30
         * are logged, then the late one with the count of the rest. */
        cr_assert(logged >= 11 && logged <= 21, "%d lines logged:\n%s", logged, text);
        cr_assert_eq((unsigned)logged + dropped, 31, "%d logged + %u reported dropped:\n%s", logged,
                     dropped, text);
}

Test(api, ingest_store_unavailable_is_503)
{
        sqlite3 *db;
        struct resp r;

        start_ingest();
        cr_assert_eq(sqlite3_open(fx.db, &db), SQLITE_OK);
        cr_assert_eq(sqlite3_exec(db, "BEGIN EXCLUSIVE", NULL, NULL, NULL), SQLITE_OK);
        r = ingest(EVENTS, END_EVENT, "k");
        assert_error(&r, 503, "store unavailable", "ingest while locked");
        cr_assert_eq(sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL), SQLITE_OK);
        sqlite3_close(db);
        cr_assert_eq(outbox_depth(), 0);
        /* Nothing was recorded, the key included: the retry is taken. */
        r = ingest(EVENTS, END_EVENT, "k");
        accepted(&r, 1, 1, false);
        cr_assert_eq(outbox_depth(), 1);
}
