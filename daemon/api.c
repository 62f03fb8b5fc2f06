/* The HTTP server of ctxhookd on libmicrohttpd: the Context API (LivePerson Context Session
 * Store v1 compatible), event ingest (POST /v1/account/{acct}/events, into the same pipeline
 * as Kafka messages), /healthz, /readyz, /metrics and the admin dead-letter endpoints. Every
 * request runs the same checks in the same order, each answering on its own: route (404) → method
 * (405 + Allow) → API key (403) → declared body size (413) → path and query parameters (400) → body
 * (413 while reading, then 400) → store call (412/503/…). Answers are queued on MHD's last callback
 * of a request, which keeps keep-alive connections open; POST/PUT/PATCH are also checked on the
 * first one, so a refusal never reads the body. Per-request state lives in a per-connection
 * context, so a request allocates nothing but its response. Every error is JSON
 * {"message": "..."} naming what was wrong; every answer is counted in the metrics, and 5xx
 * answers are logged once (method, path, reason; never keys or bodies). */
#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <microhttpd.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "ctxhookd/clock.h"
#include "ctxhookd/api.h"
#include "ctxhookd/apikey.h"
#include "ctxhookd/buf.h"
#include "ctxhookd/cleanup.h"
#include "ctxhookd/log.h"
#include "ctxhookd/names.h"
#include "ctxhookd/route.h"

#define API_KEY_HEADER       "maven-api-key"
#define IDEMPOTENCY_HEADER   "Idempotency-Key"
#define IDEMPOTENCY_KEY_MAX  255
#define CONTENT_TYPE_JSON    "application/json"
#define CONTENT_TYPE_METRICS "text/plain; version=0.0.4"
#define TTL_MAX              2147483647
#define PAGE_MAX             2147483647
#define PER_PAGE_MAX         1000
#define PER_PAGE_DEFAULT     100
#define INCLUDE_MAX          100
#define PATCH_MEMBERS_MAX    1000
#define MESSAGE_MAX          1024
#define SHOW_MAX             160         /* bytes of a client-supplied value quoted in a message */
#define SESSION_DESC_MAX     384         /* describe_session(): two quoted names and words */
#define PROP_DESC_MAX        640         /* describe_prop(): one more name */
#define METRICS_MAX          (16u << 20) /* an exposition larger than this is a bug, not a scrape */
#define STOP_WAIT_MS         10000       /* how long api_stop lets requests in flight finish */
#define STOP_POLL_MS         10

/* One HTTP worker thread as the watchdog sees it: since when (CLOCK_MONOTONIC, ms) it has
 * been inside one of our callbacks, 0 while MHD has it waiting for connections. A cache line
 * each, as every request writes its own twice. */
struct api_worker {
        _Alignas(64) _Atomic int64_t busy_since_ms;
};

#define API_WORKERS_MAX 64 /* [api] threads is at most 64 */

struct api {
        struct MHD_Daemon *daemon;
        struct store *store;
        struct metrics *metrics;
        struct pipeline *pipeline;
        struct deliver *deliver;
        bool (*ready)(void *ctx, char *why, size_t why_size);
        void *ready_ctx;
        char *admin_token; /* NULL = admin endpoints disabled */
        size_t max_body;
        unsigned port;
        atomic_uint in_flight; /* requests whose handler ran and that MHD has not completed */
        atomic_bool stopping;  /* answers then carry Connection: close */
        atomic_bool starting;  /* MHD's messages go to start_error instead of the log */
        char start_error[256];
        struct api_worker workers[API_WORKERS_MAX];
        atomic_uint n_workers; /* slots taken by MHD's threads as they first call us */
        /* The 5xx log's rate limit (error_log_allowed). */
        _Atomic int64_t errors_second; /* CLOCK_MONOTONIC_COARSE second being counted */
        atomic_uint errors_in_second;  /* 5xx answers in it so far */
        atomic_uint errors_dropped;    /* 5xx answers not logged since the last one logged */
};

/* Per connection (allocated when MHD accepts it), reused by each request on it, so the
 * request path allocates nothing of its own: a request's fields are reset when its request
 * line arrives (api_request_started) and its body is freed on MHD's completion notice. */
struct request {
        struct timespec start;
        enum route_method method;
        struct buf body;  /* POST/PUT/PATCH only */
        size_t received;  /* bytes of body seen, including those dropped */
        int64_t ttl;      /* ttlSecond of a POST; -1 when absent */
        bool too_big;     /* body went over max_body: drain, then answer 413 */
        bool nul_in_path; /* the raw path had "%00", which MHD decodes into a cut */
        bool first_call;
        bool answered;
};

/* What one callback knows about its request; on the stack. */
struct call {
        struct api *api;
        struct MHD_Connection *conn;
        const char *method;
        const char *url;
        struct timespec start;
        enum MHD_Result result;
        /* A /readyz 503 is an answer, not a server error: the parts that know why log it,
         * once per change, rather than once per probe. */
        bool not_ready;
};

/* ---- small helpers ---- */

static double seconds_since(const struct timespec *start)
{
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double)(ts.tv_sec - start->tv_sec) + (double)(ts.tv_nsec - start->tv_nsec) / 1e9;
}

/* Copies s into out (size ≥ 8) as printable UTF-8, so client-supplied names can be quoted in
 * JSON messages and log lines: control characters and bytes that are not UTF-8 become
 * "\xNN", and text that does not fit is cut with "...". */
static void printable(const char *s, size_t len, char *out, size_t size)
{
        const unsigned char *p = (const unsigned char *)s;
        size_t o = 0, room = size - 4; /* keep space for "..." and the NUL */

        for (size_t i = 0; i < len;) {
                size_t n = names_utf8_len(p + i, len - i);

                if (n == 1 && (p[i] < 0x20 || p[i] == 0x7f))
                        n = 0;
                if (n == 0) {
                        if (o + 4 > room)
                                goto cut;
                        snprintf(out + o, 5, "\\x%02x", p[i]);
                        o += 4;
                        i++;
                        continue;
                }
                if (o + n > room)
                        goto cut;
                memcpy(out + o, p + i, n);
                o += n;
                i += n;
        }
        out[o] = '\0';
        return;
cut:
        memcpy(out + o, "...", 4);
}

/* A decimal integer in [min, max]: digits only, no sign, no blanks. */
static int parse_decimal(const char *s, size_t len, int64_t min, int64_t max, int64_t *ret)
{
        int64_t v = 0;

        if (!s || len == 0)
                return -EINVAL;
        for (size_t i = 0; i < len; i++) {
                if (s[i] < '0' || s[i] > '9')
                        return -EINVAL;
                if (v > (max - (s[i] - '0')) / 10)
                        return -ERANGE;
                v = v * 10 + (s[i] - '0');
        }
        if (v < min)
                return -ERANGE;
        *ret = v;
        return 0;
}

static const char *header(struct call *c, const char *name)
{
        return MHD_lookup_connection_value(c->conn, MHD_HEADER_KIND, name);
}

/* ---- answering ---- */

/* 5xx answers logged per second at most: a database outage under a load balancer's traffic
 * writes a few lines a second rather than one per request (the outage itself is logged once by
 * the consumer and the deliverer). */
#define ERRORS_LOGGED_PER_S 10

/* Whether a 5xx may be logged now; *ret_dropped gets how many were not logged since the last one
 * that was. Counted per second of the coarse monotonic clock; the counters are shared by the
 * worker threads without a lock, so the limit is approximate, never the count of what was
 * dropped. */
static bool error_log_allowed(struct api *a, unsigned *ret_dropped)
{
        int64_t second = clock_ms(CLOCK_MONOTONIC_COARSE) / 1000;
        int64_t seen = atomic_load(&a->errors_second);

        if (second != seen && atomic_compare_exchange_strong(&a->errors_second, &seen, second))
                atomic_store(&a->errors_in_second, 0);
        if (atomic_fetch_add(&a->errors_in_second, 1) >= ERRORS_LOGGED_PER_S) {
                atomic_fetch_add(&a->errors_dropped, 1);
                return false;
        }
        *ret_dropped = atomic_exchange(&a->errors_dropped, 0);
        return true;
}

/* Queues resp (taking it) with status, counts the request and logs a 5xx with why (at most
 * ERRORS_LOGGED_PER_S a second). A NULL resp means building it failed: the connection is
 * dropped (MHD_NO). */
static enum MHD_Result answer(struct call *c, unsigned status, struct MHD_Response *resp,
                              const char *why)
{
        enum MHD_Result r = MHD_NO;

        if (!resp) {
                status = MHD_HTTP_INTERNAL_SERVER_ERROR;
                why = "out of memory building the response";
        } else {
                if (atomic_load_explicit(&c->api->stopping, memory_order_relaxed))
                        (void)MHD_add_response_header(resp, MHD_HTTP_HEADER_CONNECTION, "close");
                r = MHD_queue_response(c->conn, status, resp);
                MHD_destroy_response(resp);
        }
        metrics_http_request(c->api->metrics, status, seconds_since(&c->start));
        unsigned dropped = 0;

        if (status >= 500 && !c->not_ready && error_log_allowed(c->api, &dropped)) {
                char method[32], path[SHOW_MAX], more[96] = "";

                printable(c->method, strlen(c->method), method, sizeof(method));
                printable(c->url, strlen(c->url), path, sizeof(path));
                if (dropped > 0)
                        snprintf(more, sizeof(more),
                                 " (%u more 5xx answers were not logged: at most %d a second)",
                                 dropped, ERRORS_LOGGED_PER_S);
                log_error("%s %s: %u %s%s", method, path, status, why ? why : "", more);
        }
        c->result = r;
        return r;
}

/* A response over data (len bytes; mode as MHD's) with Content-Type and an optional ETag;
 * NULL when out of memory (data is freed then if it was ours to free). */
static struct MHD_Response *make_response(size_t len, void *data, enum MHD_ResponseMemoryMode mode,
                                          const char *content_type, const char *etag)
{
        struct MHD_Response *resp = MHD_create_response_from_buffer(len, data, mode);

        if (!resp) {
                if (mode == MHD_RESPMEM_MUST_FREE)
                        free(data);
                return NULL;
        }
        if ((content_type && MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE,
                                                     content_type) != MHD_YES) ||
            (etag && etag[0] &&
             MHD_add_response_header(resp, MHD_HTTP_HEADER_ETAG, etag) != MHD_YES)) {
                MHD_destroy_response(resp);
                return NULL;
        }
        return resp;
}

/* An error answer with text as its message and, when hdr is given, one more header (Allow for
 * a 405, WWW-Authenticate for a 401). */
static enum MHD_Result answer_message(struct call *c, unsigned status, const char *hdr,
                                      const char *hdr_value, const char *text)
{
        static const char oom[] = "{\"message\":\"out of memory\"}";
        char msg[MESSAGE_MAX];
        struct MHD_Response *resp;
        json_t *o;
        char *body;

        printable(text, strlen(text), msg, sizeof(msg));
        o = json_pack("{s:s}", "message", msg);
        body = o ? json_dumps(o, JSON_COMPACT) : NULL;
        json_decref(o);
        if (body)
                resp = make_response(strlen(body), body, MHD_RESPMEM_MUST_FREE, CONTENT_TYPE_JSON,
                                     NULL);
        else
                resp = make_response(sizeof(oom) - 1, (void *)oom, MHD_RESPMEM_PERSISTENT,
                                     CONTENT_TYPE_JSON, NULL);
        if (resp && hdr && MHD_add_response_header(resp, hdr, hdr_value) != MHD_YES)
                resp = (MHD_destroy_response(resp), NULL);
        return answer(c, status, resp, msg);
}

static enum MHD_Result answer_error(struct call *c, unsigned status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static enum MHD_Result answer_error(struct call *c, unsigned status, const char *fmt, ...)
{
        char text[MESSAGE_MAX];
        va_list ap;

        va_start(ap, fmt);
        vsnprintf(text, sizeof(text), fmt, ap);
        va_end(ap);
        return answer_message(c, status, NULL, NULL, text);
}

/* status with v as compact JSON (v is released). */
static enum MHD_Result answer_json_etag(struct call *c, unsigned status, json_t *v,
                                        const char *etag)
{
        char *body = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);

        json_decref(v);
        if (!body)
                return answer(c, 500, NULL, NULL);
        return answer(
            c, status,
            make_response(strlen(body), body, MHD_RESPMEM_MUST_FREE, CONTENT_TYPE_JSON, etag),
            NULL);
}

static enum MHD_Result answer_json(struct call *c, json_t *v, const char *etag)
{
        return answer_json_etag(c, MHD_HTTP_OK, v, etag);
}

static enum MHD_Result answer_json_status(struct call *c, unsigned status, json_t *v)
{
        return answer_json_etag(c, status, v, NULL);
}

static enum MHD_Result answer_no_content(struct call *c, const char *etag)
{
        return answer(c, MHD_HTTP_NO_CONTENT,
                      make_response(0, (void *)"", MHD_RESPMEM_PERSISTENT, NULL, etag), NULL);
}

/* "namespace 'ns'" or "namespace 'ns' session 'sid'", quoted printably, for messages. */
static void describe_session(const struct route *rt, char *out, size_t size)
{
        char ns[SHOW_MAX], sid[SHOW_MAX];

        printable(rt->ns, strlen(rt->ns), ns, sizeof(ns));
        if (!rt->sid) {
                snprintf(out, size, "namespace '%s'", ns);
                return;
        }
        printable(rt->sid, strlen(rt->sid), sid, sizeof(sid));
        snprintf(out, size, "namespace '%s' session '%s'", ns, sid);
}

/* Answers a failed store call; what names the thing addressed. */
static enum MHD_Result answer_store_error(struct call *c, int r, const char *what)
{
        switch (r) {
        case -ECANCELED:
                return answer_error(c, MHD_HTTP_PRECONDITION_FAILED,
                                    "If-Match precondition failed: %s has changed or does not "
                                    "exist",
                                    what);
        case -EIO:
                return answer_error(c, MHD_HTTP_SERVICE_UNAVAILABLE, "store unavailable");
        case -EINVAL:
                return answer_error(c, MHD_HTTP_BAD_REQUEST,
                                    "the store refused %s: a name or value is beyond its limits",
                                    what);
        case -ENOENT:
                return answer_error(c, MHD_HTTP_NOT_FOUND, "%s not found", what);
        case -ENOMEM:
                return answer_error(c, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory");
        default:
                return answer_error(c, MHD_HTTP_INTERNAL_SERVER_ERROR,
                                    "unexpected store error on %s: %s", what, strerror(-r));
        }
}

/* ---- checks; each returns 0 to go on, or answers and returns a negative code ---- */

static int check_auth(struct call *c, const char *account)
{
        static const unsigned char no_key[STORE_KEY_HASH_LEN];
        unsigned char hash[STORE_KEY_HASH_LEN];
        const char *key = NULL;
        size_t key_len = 0;
        struct ch_error err;
        char shown[SHOW_MAX];
        int r;

        if (MHD_lookup_connection_value_n(c->conn, MHD_HEADER_KIND, API_KEY_HEADER,
                                          strlen(API_KEY_HEADER), &key, &key_len) != MHD_YES ||
            !key) {
                answer_error(c, MHD_HTTP_FORBIDDEN, "missing " API_KEY_HEADER " header");
                return -EPERM;
        }
        /* The account is looked up by name, so its syntax is checked first: a malformed
         * account is a 400 that says so, not an unexplained 403. */
        r = names_check_account(account, &err);
        if (r < 0) {
                answer_error(c, MHD_HTTP_BAD_REQUEST, "%s", err.msg);
                return r;
        }
        printable(account, strlen(account), shown, sizeof(shown));
        if (key_len == 0 || key_len > APIKEY_MAX_LEN) {
                answer_error(c, MHD_HTTP_FORBIDDEN, "invalid " API_KEY_HEADER " for account %s",
                             shown);
                return -EPERM;
        }
        r = store_key_get(c->api->store, account, hash);
        if (r == -ENOENT) {
                /* Hash anyway, so an unknown account costs what a wrong key does. */
                (void)apikey_matches(no_key, key, key_len);
                answer_error(c, MHD_HTTP_FORBIDDEN, "invalid " API_KEY_HEADER " for account %s",
                             shown);
                return -EPERM;
        }
        if (r < 0) {
                answer_store_error(c, r, "the API key lookup");
                return r;
        }
        if (!apikey_matches(hash, key, key_len)) {
                answer_error(c, MHD_HTTP_FORBIDDEN, "invalid " API_KEY_HEADER " for account %s",
                             shown);
                return -EPERM;
        }
        return 0;
}

/* Refuses a declared Content-Length above max_body before any of the body is read. */
static int check_content_length(struct call *c)
{
        const char *cl = header(c, MHD_HTTP_HEADER_CONTENT_LENGTH);
        int64_t n;
        int r;

        if (!cl)
                return 0;
        r = parse_decimal(cl, strlen(cl), 0, INT64_MAX, &n);
        if (r == 0 && (uint64_t)n <= c->api->max_body)
                return 0;
        /* Malformed lengths never get here: MHD answers them itself. */
        answer_error(c, MHD_HTTP_CONTENT_TOO_LARGE,
                     "request body of %s bytes exceeds the limit of %zu bytes", cl,
                     c->api->max_body);
        return -E2BIG;
}

static int check_names(struct call *c, const struct route *rt, const struct request *rq)
{
        struct ch_error err;
        int r = 0;

        if (rq->nul_in_path) {
                answer_error(c, MHD_HTTP_BAD_REQUEST,
                             "the path contains an encoded NUL byte (%%00), which no name may "
                             "hold");
                return -EINVAL;
        }
        if (rt->ns)
                r = names_check_namespace(rt->ns, &err);
        if (r == 0 && rt->sid)
                r = names_check_name("session id", rt->sid, strlen(rt->sid), &err);
        if (r == 0 && rt->prop)
                r = names_check_name("property name", rt->prop, strlen(rt->prop), &err);
        if (r < 0)
                answer_error(c, MHD_HTTP_BAD_REQUEST, "%s", err.msg);
        return r;
}

/* A decimal query parameter in [min, max]; *ret keeps its default when absent. */
static int check_decimal_arg(struct call *c, const char *name, int64_t min, int64_t max,
                             int64_t *ret)
{
        const char *v = NULL;
        size_t len = 0;
        char shown[SHOW_MAX];
        int r;

        if (MHD_lookup_connection_value_n(c->conn, MHD_GET_ARGUMENT_KIND, name, strlen(name), &v,
                                          &len) != MHD_YES)
                return 0;
        r = parse_decimal(v, len, min, max, ret);
        if (r < 0) {
                printable(v ? v : "", v ? len : 0, shown, sizeof(shown));
                answer_error(c, MHD_HTTP_BAD_REQUEST,
                             "query parameter %s must be a decimal integer from %" PRId64
                             " to %" PRId64 ", got '%s'",
                             name, min, max, shown);
        }
        return r;
}

/* ?include=a,b → NULL-terminated names pointing into *ret_copy (free it); none → NULL. */
static int check_include(struct call *c, char **ret_copy, const char *names[INCLUDE_MAX + 1])
{
        const char *v = NULL;
        size_t len = 0, n = 0;
        struct ch_error err;
        char *copy, *p;
        int r;

        if (MHD_lookup_connection_value_n(c->conn, MHD_GET_ARGUMENT_KIND, "include",
                                          strlen("include"), &v, &len) != MHD_YES)
                return 0;
        if (!v || len == 0) {
                answer_error(c, MHD_HTTP_BAD_REQUEST,
                             "query parameter include is empty: list 1 to %d property names "
                             "separated by commas",
                             INCLUDE_MAX);
                return -EINVAL;
        }
        if (memchr(v, '\0', len)) {
                answer_error(c, MHD_HTTP_BAD_REQUEST,
                             "query parameter include: property name contains a NUL byte");
                return -EINVAL;
        }
        copy = strndup(v, len);
        if (!copy) {
                answer_error(c, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory");
                return -ENOMEM;
        }
        for (p = copy;;) {
                char *comma = strchr(p, ',');

                if (comma)
                        *comma = '\0';
                if (n == INCLUDE_MAX) {
                        free(copy);
                        answer_error(c, MHD_HTTP_BAD_REQUEST,
                                     "query parameter include lists more than %d property names",
                                     INCLUDE_MAX);
                        return -E2BIG;
                }
                r = names_check_name("property name", p, strlen(p), &err);
                if (r < 0) {
                        free(copy);
                        answer_error(c, MHD_HTTP_BAD_REQUEST, "query parameter include: %s",
                                     err.msg);
                        return r;
                }
                names[n++] = p;
                if (!comma)
                        break;
                p = comma + 1;
        }
        names[n] = NULL;
        *ret_copy = copy;
        return 0;
}

/* The request body as JSON; answers 400 itself. */
static int parse_body(struct call *c, const struct buf *body, json_t **ret)
{
        json_error_t jerr;
        json_t *v;

        if (body->len == 0) {
                answer_error(c, MHD_HTTP_BAD_REQUEST, "request body is empty");
                return -EINVAL;
        }
        v = json_loadb(body->data, body->len,
                       JSON_DECODE_ANY | JSON_ALLOW_NUL | JSON_REJECT_DUPLICATES, &jerr);
        if (!v) {
                answer_error(c, MHD_HTTP_BAD_REQUEST,
                             "body is not valid JSON: %s at line %d column %d", jerr.text,
                             jerr.line, jerr.column);
                return -EINVAL;
        }
        *ret = v;
        return 0;
}

/* A string member of a JSON object body and its length (it may hold NULs: callers decide);
 * answers 400 itself. */
static int body_string_member(struct call *c, json_t *body, const char *member, const char *what,
                              const char **ret, size_t *ret_len)
{
        json_t *v = json_is_object(body) ? json_object_get(body, member) : NULL;

        if (!json_is_string(v)) {
                answer_error(c, MHD_HTTP_BAD_REQUEST,
                             "body must be a JSON object with a string \"%s\" (the %s)", member,
                             what);
                return -EINVAL;
        }
        *ret = json_string_value(v);
        *ret_len = json_string_length(v);
        return 0;
}

/* ---- handlers, one per resource and method ---- */

static enum MHD_Result get_account(struct call *c, const struct route *rt)
{
        json_t *list;
        int r;

        r = store_ns_list(c->api->store, rt->account, &list);
        if (r < 0)
                return answer_store_error(c, r, "the namespace list");
        return answer_json(c, list, NULL);
}

static enum MHD_Result post_account(struct call *c, const struct route *rt, struct request *rq)
{
        json_t *body = NULL;
        const char *ns;
        size_t ns_len;
        struct ch_error err;
        char what[SHOW_MAX + 32];
        int r;

        r = parse_body(c, &rq->body, &body);
        if (r < 0)
                return c->result;
        r = body_string_member(c, body, "name", "namespace", &ns, &ns_len);
        if (r == 0 && strlen(ns) != ns_len) {
                answer_error(c, MHD_HTTP_BAD_REQUEST, "namespace name contains a NUL character");
                r = -EINVAL;
        }
        if (r == 0) {
                r = names_check_namespace(ns, &err);
                if (r < 0)
                        answer_error(c, MHD_HTTP_BAD_REQUEST, "%s", err.msg);
        }
        if (r == 0) {
                r = store_ns_create(c->api->store, rt->account, ns, rq->ttl, clock_wall_ms());
                if (r < 0) {
                        char shown[SHOW_MAX];

                        printable(ns, ns_len, shown, sizeof(shown));
                        snprintf(what, sizeof(what), "namespace '%s'", shown);
                        answer_store_error(c, r, what);
                } else {
                        answer_no_content(c, NULL);
                }
        }
        json_decref(body);
        return c->result;
}

static enum MHD_Result delete_namespace(struct call *c, const struct route *rt)
{
        int r = store_ns_delete(c->api->store, rt->account, rt->ns);
        char what[SESSION_DESC_MAX];

        if (r < 0) {
                describe_session(rt, what, sizeof(what));
                return answer_store_error(c, r, what);
        }
        return answer_no_content(c, NULL);
}

static enum MHD_Result get_props(struct call *c, const struct route *rt)
{
        _cleanup_free_ char *include_copy = NULL;
        const char *include[INCLUDE_MAX + 1];
        char etag[STORE_ETAG_MAX], what[SESSION_DESC_MAX];
        json_t *props;
        int r;

        r = check_include(c, &include_copy, include);
        if (r < 0)
                return c->result;
        r = store_props_get(c->api->store, rt->account, rt->ns, rt->sid,
                            include_copy ? include : NULL, clock_wall_ms(), &props, etag);
        if (r < 0) {
                describe_session(rt, what, sizeof(what));
                return answer_store_error(c, r, what);
        }
        return answer_json(c, props, etag);
}

static enum MHD_Result patch_props(struct call *c, const struct route *rt, struct request *rq)
{
        char etag[STORE_ETAG_MAX], what[SESSION_DESC_MAX];
        json_t *body = NULL, *value;
        struct ch_error err;
        const char *key;
        size_t key_len;
        int r;

        r = parse_body(c, &rq->body, &body);
        if (r < 0)
                return c->result;
        if (!json_is_object(body)) {
                answer_error(c, MHD_HTTP_BAD_REQUEST,
                             "body must be a JSON object of property names and values");
                goto out;
        }
        if (json_object_size(body) > PATCH_MEMBERS_MAX) {
                answer_error(c, MHD_HTTP_BAD_REQUEST,
                             "body has %zu properties; at most %d are accepted per request",
                             json_object_size(body), PATCH_MEMBERS_MAX);
                goto out;
        }
        json_object_keylen_foreach(body, key, key_len, value)
        {
                r = names_check_name("property name", key, key_len, &err);
                if (r < 0) {
                        answer_error(c, MHD_HTTP_BAD_REQUEST, "%s", err.msg);
                        goto out;
                }
        }
        r = store_props_merge(c->api->store, rt->account, rt->ns, rt->sid, body,
                              header(c, MHD_HTTP_HEADER_IF_MATCH), clock_wall_ms(), etag);
        if (r < 0) {
                describe_session(rt, what, sizeof(what));
                answer_store_error(c, r, what);
        } else {
                answer_no_content(c, etag);
        }
out:
        json_decref(body);
        return c->result;
}

static enum MHD_Result delete_props(struct call *c, const struct route *rt)
{
        char what[SESSION_DESC_MAX];
        int r;

        r = store_props_clear(c->api->store, rt->account, rt->ns, rt->sid,
                              header(c, MHD_HTTP_HEADER_IF_MATCH), clock_wall_ms());
        if (r < 0) {
                describe_session(rt, what, sizeof(what));
                return answer_store_error(c, r, what);
        }
        return answer_no_content(c, NULL);
}

static void describe_prop(const struct route *rt, char *out, size_t size)
{
        char where[SESSION_DESC_MAX], prop[SHOW_MAX];

        describe_session(rt, where, sizeof(where));
        printable(rt->prop, strlen(rt->prop), prop, sizeof(prop));
        snprintf(out, size, "property '%s' in %s", prop, where);
}

/* The hot path: the stored JSON text goes out as it is, no parsing, no copy. */
static enum MHD_Result get_prop(struct call *c, const struct route *rt)
{
        char etag[STORE_ETAG_MAX], what[PROP_DESC_MAX];
        char *json;
        size_t len;
        int r;

        r = store_prop_get(c->api->store, rt->account, rt->ns, rt->sid, rt->prop, clock_wall_ms(),
                           &json, &len, etag);
        if (r == -ENOENT) {
                char where[SESSION_DESC_MAX], prop[SHOW_MAX];

                describe_session(rt, where, sizeof(where));
                printable(rt->prop, strlen(rt->prop), prop, sizeof(prop));
                return answer_error(c, MHD_HTTP_NOT_FOUND, "property '%s' not found in %s", prop,
                                    where);
        }
        if (r < 0) {
                describe_prop(rt, what, sizeof(what));
                return answer_store_error(c, r, what);
        }
        return answer(c, MHD_HTTP_OK,
                      make_response(len, json, MHD_RESPMEM_MUST_FREE, CONTENT_TYPE_JSON, etag),
                      NULL);
}

static enum MHD_Result put_prop(struct call *c, const struct route *rt, struct request *rq)
{
        char etag[STORE_ETAG_MAX], what[PROP_DESC_MAX];
        json_t *value = NULL;
        int r;

        r = parse_body(c, &rq->body, &value);
        if (r < 0)
                return c->result;
        r = store_prop_put(c->api->store, rt->account, rt->ns, rt->sid, rt->prop, value,
                           header(c, MHD_HTTP_HEADER_IF_MATCH), clock_wall_ms(), etag);
        json_decref(value);
        if (r < 0) {
                describe_prop(rt, what, sizeof(what));
                return answer_store_error(c, r, what);
        }
        return answer_no_content(c, etag);
}

static enum MHD_Result delete_prop(struct call *c, const struct route *rt)
{
        char what[PROP_DESC_MAX];
        int r;

        r = store_prop_delete(c->api->store, rt->account, rt->ns, rt->sid, rt->prop,
                              header(c, MHD_HTTP_HEADER_IF_MATCH), clock_wall_ms());
        if (r < 0) {
                describe_prop(rt, what, sizeof(what));
                return answer_store_error(c, r, what);
        }
        return answer_no_content(c, NULL);
}

static enum MHD_Result get_session_page(struct call *c, const struct route *rt, bool with_props)
{
        int64_t page = 0, per_page = PER_PAGE_DEFAULT;
        char what[SESSION_DESC_MAX];
        json_t *list;
        int r;

        r = check_decimal_arg(c, "page", 0, PAGE_MAX, &page);
        if (r == 0)
                r = check_decimal_arg(c, "perPage", 1, PER_PAGE_MAX, &per_page);
        if (r < 0)
                return c->result;
        if (with_props)
                r = store_session_props(c->api->store, rt->account, rt->ns, page, per_page,
                                        clock_wall_ms(), &list);
        else
                r = store_session_ids(c->api->store, rt->account, rt->ns, page, per_page,
                                      clock_wall_ms(), &list);
        if (r < 0) {
                describe_session(rt, what, sizeof(what));
                return answer_store_error(c, r, what);
        }
        return answer_json(c, list, NULL);
}

static enum MHD_Result get_sessions(struct call *c, const struct route *rt)
{
        char what[SESSION_DESC_MAX];
        json_t *list;
        int r;

        r = store_session_list(c->api->store, rt->account, rt->ns, clock_wall_ms(), &list);
        if (r < 0) {
                describe_session(rt, what, sizeof(what));
                return answer_store_error(c, r, what);
        }
        return answer_json(c, list, NULL);
}

static enum MHD_Result post_sessions(struct call *c, const struct route *rt, struct request *rq)
{
        char what[SESSION_DESC_MAX];
        json_t *body = NULL;
        struct ch_error err;
        const char *sid;
        size_t sid_len;
        int r;

        r = parse_body(c, &rq->body, &body);
        if (r < 0)
                return c->result;
        r = body_string_member(c, body, "sessionId", "session id", &sid, &sid_len);
        if (r == 0) {
                r = names_check_name("session id", sid, sid_len, &err);
                if (r < 0)
                        answer_error(c, MHD_HTTP_BAD_REQUEST, "%s", err.msg);
        }
        if (r == 0) {
                struct route srt = *rt;

                srt.sid = sid;
                r = store_session_create(c->api->store, rt->account, rt->ns, sid, rq->ttl,
                                         clock_wall_ms());
                if (r < 0) {
                        describe_session(&srt, what, sizeof(what));
                        answer_store_error(c, r, what);
                } else {
                        answer_no_content(c, NULL);
                }
        }
        json_decref(body);
        return c->result;
}

static enum MHD_Result delete_session(struct call *c, const struct route *rt)
{
        char what[SESSION_DESC_MAX];
        int r;

        r = store_session_delete(c->api->store, rt->account, rt->ns, rt->sid);
        if (r < 0) {
                describe_session(rt, what, sizeof(what));
                return answer_store_error(c, r, what);
        }
        return answer_no_content(c, NULL);
}

/* /readyz's 503: {"status": "unavailable", "reason": "<what> <why>", "message": "<what> <why>"}
 * (the message as in every error answer). */
static enum MHD_Result answer_unready(struct call *c, const char *reason_what,
                                      const char *message_what, const char *why)
{
        char line[MESSAGE_MAX / 2], reason[MESSAGE_MAX], message[MESSAGE_MAX];
        json_t *o;
        char *body;

        c->not_ready = true;
        /* why is one line: the store's reasons are (store.h), and so is the service's. */
        printable(why, strlen(why), line, sizeof(line));
        snprintf(reason, sizeof(reason), "%s%s", reason_what, line);
        snprintf(message, sizeof(message), "%s%s", message_what, line);
        o = json_pack("{s:s, s:s, s:s}", "status", "unavailable", "reason", reason, "message",
                      message);
        body = o ? json_dumps(o, JSON_COMPACT) : NULL;
        json_decref(o);
        return answer(
            c, MHD_HTTP_SERVICE_UNAVAILABLE,
            body ? make_response(strlen(body), body, MHD_RESPMEM_MUST_FREE, CONTENT_TYPE_JSON, NULL)
                 : NULL,
            message);
}

/* /readyz: ready when the store answers and the service says so (Kafka partitions assigned).
 * /readyz?scope=api: ready when the store answers, whatever Kafka does: what a load balancer in
 * front of several instances checks, since a consumer group rebalance leaves every instance
 * without partitions for a while (and one instance more than there are partitions, for good)
 * while all of them serve the Context API. */
static enum MHD_Result get_readyz(struct call *c)
{
        static const char ready[] = "{\"status\":\"ready\"}";

        const char *scope = MHD_lookup_connection_value(c->conn, MHD_GET_ARGUMENT_KIND, "scope");
        char why[512] = "";
        int r;

        if (scope && strcmp(scope, "api") != 0) {
                char shown[SHOW_MAX];

                printable(scope, strlen(scope), shown, sizeof(shown));
                return answer_error(c, MHD_HTTP_BAD_REQUEST,
                                    "query parameter scope must be 'api' (the Context API only) "
                                    "or absent (the whole daemon), got '%s'",
                                    shown);
        }

        r = store_health(c->api->store, why, sizeof(why));
        if (r < 0)
                return answer_unready(
                    c, "store: ", "store unavailable: ", why[0] ? why : strerror(-r));
        if (!scope && c->api->ready && !c->api->ready(c->api->ready_ctx, why, sizeof(why)))
                return answer_unready(c, "", "not ready: ", why);
        return answer(c, MHD_HTTP_OK,
                      make_response(sizeof(ready) - 1, (void *)ready, MHD_RESPMEM_PERSISTENT,
                                    CONTENT_TYPE_JSON, NULL),
                      NULL);
}

static enum MHD_Result get_healthz(struct call *c)
{
        static const char ok[] = "{\"status\":\"ok\"}";

        return answer(c, MHD_HTTP_OK,
                      make_response(sizeof(ok) - 1, (void *)ok, MHD_RESPMEM_PERSISTENT,
                                    CONTENT_TYPE_JSON, NULL),
                      NULL);
}

static enum MHD_Result get_metrics(struct call *c)
{
        struct buf out;
        size_t len;
        char *text;
        int r;

        buf_init(&out, METRICS_MAX);
        r = metrics_render(c->api->metrics, &out);
        if (r < 0)
                return answer_error(c, MHD_HTTP_INTERNAL_SERVER_ERROR,
                                    "cannot render the metrics: %s", strerror(-r));
        text = buf_take(&out, &len);
        return answer(c, MHD_HTTP_OK,
                      make_response(len, text ? text : (void *)"",
                                    text ? MHD_RESPMEM_MUST_FREE : MHD_RESPMEM_PERSISTENT,
                                    CONTENT_TYPE_METRICS, NULL),
                      NULL);
}

/* ---- admin endpoints: dead letters ---- */

static bool is_admin(enum route_resource r)
{
        return r == ROUTE_DEAD_LETTERS || r == ROUTE_DEAD_LETTER || r == ROUTE_DEAD_LETTER_REDRIVE;
}

/* Authorization: Bearer <[api] admin_token>, compared in constant time. */
static int check_admin(struct call *c)
{
        const char *token = c->api->admin_token, *h;
        size_t len;

        if (!token) {
                answer_error(c, MHD_HTTP_NOT_FOUND,
                             "the admin endpoints are disabled: set [api] admin_token");
                return -ENOENT;
        }
        h = header(c, MHD_HTTP_HEADER_AUTHORIZATION);
        if (!h || strncasecmp(h, "Bearer ", 7) != 0) {
                answer_message(c, MHD_HTTP_UNAUTHORIZED, MHD_HTTP_HEADER_WWW_AUTHENTICATE,
                               "Bearer realm=\"ctxhookd admin\"",
                               "missing Authorization: Bearer <admin token>");
                return -EPERM;
        }
        h += 7;
        len = strlen(token);
        if (strlen(h) != len || CRYPTO_memcmp(h, token, len) != 0) {
                answer_error(c, MHD_HTTP_FORBIDDEN, "invalid admin token");
                return -EPERM;
        }
        return 0;
}

static int dead_letter_id(struct call *c, const struct route *rt, int64_t *ret)
{
        char shown[SHOW_MAX];

        if (parse_decimal(rt->id, strlen(rt->id), 1, INT64_MAX, ret) == 0)
                return 0;
        printable(rt->id, strlen(rt->id), shown, sizeof(shown));
        answer_error(c, MHD_HTTP_NOT_FOUND, "no dead letter '%s': ids are positive integers",
                     shown);
        return -ENOENT;
}

static enum MHD_Result get_dead_letters(struct call *c)
{
        int64_t limit = 100, after = 0;
        json_t *items;
        int r;

        if (check_decimal_arg(c, "limit", 1, 1000, &limit) < 0 ||
            check_decimal_arg(c, "after", 0, INT64_MAX, &after) < 0)
                return c->result;
        r = store_dead_list(c->api->store, after, limit, &items);
        if (r < 0)
                return answer_store_error(c, r, "the dead letters");
        return answer_json(c, json_pack("{s:o}", "items", items), NULL);
}

static enum MHD_Result delete_dead_letter(struct call *c, const struct route *rt)
{
        int64_t id;
        int r;

        if (dead_letter_id(c, rt, &id) < 0)
                return c->result;
        r = store_dead_delete(c->api->store, id);
        if (r == -ENOENT)
                return answer_error(c, MHD_HTTP_NOT_FOUND, "dead letter %" PRId64 " not found", id);
        if (r < 0)
                return answer_store_error(c, r, "the dead letter");
        return answer_no_content(c, NULL);
}

/* A dead delivery goes back to the outbox; a dead event goes through the pipeline again and
 * its dead letter is deleted only once that is recorded (it may become a new dead letter). */
static enum MHD_Result post_redrive(struct call *c, const struct route *rt)
{
        struct pipeline_result res = {0};
        char *raw = NULL, *source = NULL;
        size_t raw_len = 0;
        int64_t id;
        json_t *o;
        int r;

        if (dead_letter_id(c, rt, &id) < 0)
                return c->result;
        if (!c->api->pipeline)
                return answer_error(c, MHD_HTTP_SERVICE_UNAVAILABLE,
                                    "redrive is not available in this process");
        r = store_dead_redrive(c->api->store, id, clock_wall_ms(), &raw, &raw_len, &source);
        if (r == -ENOENT)
                return answer_error(c, MHD_HTTP_NOT_FOUND, "dead letter %" PRId64 " not found", id);
        if (r < 0)
                return answer_store_error(c, r, "the dead letter");
        if (r == 1) {
                if (c->api->deliver)
                        deliver_wake(c->api->deliver);
                return answer_json(
                    c, json_pack("{s:I, s:s}", "id", (json_int_t)id, "redriven", "delivery"), NULL);
        }
        r = pipeline_process(c->api->pipeline, source, NULL, raw, raw_len, clock_wall_ms(), &res);
        free(raw);
        free(source);
        if (r < 0)
                return answer_store_error(c, r, "the redriven event");
        r = store_dead_delete(c->api->store, id);
        if (r < 0 && r != -ENOENT)
                return answer_store_error(c, r, "the redriven dead letter");
        if (res.deliveries > 0 && c->api->deliver)
                deliver_wake(c->api->deliver);
        o = json_pack("{s:I, s:s, s:I, s:I, s:b}", "id", (json_int_t)id, "redriven", "event",
                      "events", (json_int_t)res.events, "deliveries", (json_int_t)res.deliveries,
                      "dead", res.dead);
        if (o && res.dead && json_object_set_new(o, "reason", json_string(res.reason)) < 0)
                o = (json_decref(o), NULL);
        return answer_json(c, o, NULL);
}

/* ---- event ingest ---- */

/* The Idempotency-Key header: *ret NULL when absent, else 1-255 printable ASCII characters;
 * answers 400 itself. */
static int idempotency_key(struct call *c, const char **ret)
{
        const char *v = NULL;
        size_t len = 0;

        if (MHD_lookup_connection_value_n(c->conn, MHD_HEADER_KIND, IDEMPOTENCY_HEADER,
                                          strlen(IDEMPOTENCY_HEADER), &v, &len) != MHD_YES ||
            !v) {
                *ret = NULL;
                return 0;
        }
        if (len == 0 || len > IDEMPOTENCY_KEY_MAX) {
                answer_error(c, MHD_HTTP_BAD_REQUEST,
                             IDEMPOTENCY_HEADER " must be 1 to %d characters, got %zu",
                             IDEMPOTENCY_KEY_MAX, len);
                return -EINVAL;
        }
        for (size_t i = 0; i < len; i++)
                if (v[i] < 0x20 || v[i] > 0x7e) {
                        answer_error(c, MHD_HTTP_BAD_REQUEST,
                                     IDEMPOTENCY_HEADER
                                     " must be printable ASCII (byte %zu is 0x%02x)",
                                     i + 1, (unsigned char)v[i]);
                        return -EINVAL;
                }
        *ret = v;
        return 0;
}

/* The event id: "http:<acct>:" and 32 hex digits, of SHA-256(key) when the request has an
 * Idempotency-Key (a repeat carries the same id, so it gets the same webhook-ids), else random.
 * Hex, not the key itself: a key holding "#1" would collide with the ids of a notification's
 * changes ("<id>#N"), and a long key would not fit EVENT_ID_MAX. */
static int event_id(const char *account, const char *key, char *out, size_t size)
{
        unsigned char md[EVP_MAX_MD_SIZE];
        unsigned int md_len = 0;
        size_t o;

        if (key) {
                if (EVP_Digest(key, strlen(key), md, &md_len, EVP_sha256(), NULL) != 1 ||
                    md_len < 16)
                        return -EIO;
        } else if (RAND_bytes(md, 16) != 1) {
                return -EIO;
        }
        o = (size_t)snprintf(out, size, "http:%s:", account);
        if (o + 33 > size)
                return -E2BIG;
        for (unsigned i = 0; i < 16; i++) {
                out[o + 2 * i] = "0123456789abcdef"[md[i] >> 4];
                out[o + 2 * i + 1] = "0123456789abcdef"[md[i] & 15];
        }
        out[o + 32] = '\0';
        return 0;
}

/* Every event of the body must be the account's own: its key authorises nothing else, and a
 * hook would otherwise gather another account's context. */
static int check_event_accounts(struct call *c, const struct route *rt,
                                const struct event_batch *batch)
{
        for (size_t i = 0; i < batch->n; i++) {
                char mine[SHOW_MAX], theirs[SHOW_MAX];
                const char *a = batch->events[i].account;

                if (strcmp(a, rt->account) == 0)
                        continue;
                printable(rt->account, strlen(rt->account), mine, sizeof(mine));
                printable(a, strlen(a), theirs, sizeof(theirs));
                answer_error(c, MHD_HTTP_FORBIDDEN,
                             "event %zu of the body is for account '%s': the key of account '%s' "
                             "submits only that account's events",
                             i + 1, theirs, mine);
                return -EPERM;
        }
        return 0;
}

/* One event (any accepted shape) queued like a Kafka message. The body is parsed first, with
 * the pipeline's own limits, so a bad one is refused (400) with nothing written, never turned
 * into a dead letter: the caller is there to be told. An Idempotency-Key seen before answers
 * 202 with "duplicate": true and queues nothing. */
static enum MHD_Result post_events(struct call *c, const struct route *rt, struct request *rq)
{
        struct pipeline_result res = {0};
        struct event_batch batch = {0};
        struct pipeline_message m = {0};
        char id[EVENT_ID_MAX + 1], *dedup = NULL;
        struct ch_error err = {""};
        const char *key;
        size_t events;
        int64_t now;
        json_t *o;
        int r;

        if (!c->api->pipeline)
                return answer_error(c, MHD_HTTP_SERVICE_UNAVAILABLE,
                                    "event ingest is not available in this process");
        if (idempotency_key(c, &key) < 0)
                return c->result;
        if (rq->body.len == 0)
                return answer_error(c, MHD_HTTP_BAD_REQUEST,
                                    "request body is empty: send one event as JSON");
        r = event_id(rt->account, key, id, sizeof(id));
        if (r < 0)
                return answer_error(c, MHD_HTTP_INTERNAL_SERVER_ERROR,
                                    "cannot make an event id: %s", strerror(-r));
        now = clock_wall_ms();
        r = pipeline_parse(c->api->pipeline, id, rt->account, rq->body.data, rq->body.len, now,
                           &batch, &err);
        if (r == -ENOMEM)
                return answer_error(c, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory");
        if (r == -E2BIG)
                return answer_error(c, MHD_HTTP_CONTENT_TOO_LARGE, "event not accepted: %s",
                                    err.msg);
        if (r < 0)
                return answer_error(c, MHD_HTTP_BAD_REQUEST, "event not accepted: %s", err.msg);
        events = batch.n;
        r = check_event_accounts(c, rt, &batch);
        event_batch_free(&batch);
        if (r < 0)
                return c->result;

        if (key && asprintf(&dedup, "http:%s:%s", rt->account, key) < 0)
                return answer_error(c, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory");
        m = (struct pipeline_message){.source = id,
                                      .dedup_key = dedup,
                                      .data = rq->body.data,
                                      .len = rq->body.len,
                                      .default_account = rt->account};
        r = pipeline_process_batch(c->api->pipeline, &m, 1, now, &res);
        free(dedup);
        if (r < 0)
                return answer_store_error(c, r, "the event");
        if (res.dead) /* cannot happen after the same parse: say so rather than claim 202 */
                return answer_error(c, MHD_HTTP_INTERNAL_SERVER_ERROR,
                                    "the event became a dead letter: %s", res.reason);
        if (res.deliveries > 0 && c->api->deliver)
                deliver_wake(c->api->deliver);
        o = json_pack("{s:s, s:I, s:I, s:b}", "id", id, "events", (json_int_t)events, "deliveries",
                      (json_int_t)res.deliveries, "duplicate", res.duplicate);
        if (!o)
                return answer(c, MHD_HTTP_INTERNAL_SERVER_ERROR, NULL, NULL);
        return answer_json_status(c, MHD_HTTP_ACCEPTED, o);
}

/* GET/HEAD/DELETE: everything is known on the first callback. */
static enum MHD_Result dispatch_bodiless(struct call *c, const struct route *rt,
                                         enum route_method m)
{
        bool del = m == ROUTE_M_DELETE;

        switch (rt->resource) {
        case ROUTE_ACCOUNT:
                return get_account(c, rt);
        case ROUTE_NAMESPACE:
        case ROUTE_EVENTS: /* DELETE is the namespace "events"'s (route.h) */
                return delete_namespace(c, rt);
        case ROUTE_NS_PROPS:
        case ROUTE_SESSION_PROPS:
                return del ? delete_props(c, rt) : get_props(c, rt);
        case ROUTE_NS_PROP:
        case ROUTE_SESSION_PROP:
                return del ? delete_prop(c, rt) : get_prop(c, rt);
        case ROUTE_SESSION_IDS:
                return get_session_page(c, rt, false);
        case ROUTE_SESSION_PROPERTIES:
                return get_session_page(c, rt, true);
        case ROUTE_SESSIONS:
                return get_sessions(c, rt);
        case ROUTE_SESSION:
                return delete_session(c, rt);
        case ROUTE_DEAD_LETTERS:
                return get_dead_letters(c);
        case ROUTE_DEAD_LETTER:
                return delete_dead_letter(c, rt);
        default:
                return answer_error(c, MHD_HTTP_INTERNAL_SERVER_ERROR, "no handler for %s",
                                    route_resource_name(rt->resource));
        }
}

/* POST/PUT/PATCH, once the whole body is in. */
static enum MHD_Result dispatch_body(struct call *c, const struct route *rt, struct request *rq)
{
        switch (rt->resource) {
        case ROUTE_ACCOUNT:
                return post_account(c, rt, rq);
        case ROUTE_NS_PROPS:
        case ROUTE_SESSION_PROPS:
                return patch_props(c, rt, rq);
        case ROUTE_NS_PROP:
        case ROUTE_SESSION_PROP:
                return put_prop(c, rt, rq);
        case ROUTE_SESSIONS:
                return post_sessions(c, rt, rq);
        case ROUTE_DEAD_LETTER_REDRIVE:
                return post_redrive(c, rt);
        case ROUTE_EVENTS:
                return post_events(c, rt, rq);
        default:
                return answer_error(c, MHD_HTTP_INTERNAL_SERVER_ERROR, "no handler for %s",
                                    route_resource_name(rt->resource));
        }
}

static bool has_body(enum route_method m)
{
        return m == ROUTE_M_POST || m == ROUTE_M_PUT || m == ROUTE_M_PATCH;
}

/* The checks every request goes through, in order, up to the handler: route (404), method
 * (405), then for the Context API the key (403), the declared body size (413) and the path
 * and query parameters (400). Returns 0 when the handler may run, 1 when the request is an
 * operations endpoint that needs no key, or a negative code when it has been answered. */
static int check_request(struct call *c, struct route *rt, struct request *rq)
{
        char shown[SHOW_MAX];
        int r;

        r = route_parse(c->url, rt);
        if (r < 0) {
                answer_error(c, MHD_HTTP_NOT_FOUND,
                             "no such resource: the path is longer than %d bytes",
                             ROUTE_PATH_MAX - 1);
                return r;
        }
        if (rt->resource == ROUTE_NOT_FOUND) {
                printable(c->url, strlen(c->url), shown, sizeof(shown));
                answer_error(c, MHD_HTTP_NOT_FOUND, "no such resource: %s", shown);
                return -ENOENT;
        }
        if (!(route_allowed(rt->resource) & rq->method)) {
                char text[MESSAGE_MAX];

                printable(c->method, strlen(c->method), shown, sizeof(shown));
                snprintf(text, sizeof(text), "method %s is not allowed here; allowed: %s", shown,
                         route_allow_header(rt->resource));
                answer_message(c, MHD_HTTP_METHOD_NOT_ALLOWED, MHD_HTTP_HEADER_ALLOW,
                               route_allow_header(rt->resource), text);
                return -EPERM;
        }
        if (rt->resource == ROUTE_HEALTHZ || rt->resource == ROUTE_READYZ ||
            rt->resource == ROUTE_METRICS)
                return 1;
        if (is_admin(rt->resource)) {
                r = check_admin(c);
                if (r == 0 && has_body(rq->method))
                        r = check_content_length(c);
                return r;
        }
        r = check_auth(c, rt->account);
        if (r < 0)
                return r;
        if (has_body(rq->method)) {
                r = check_content_length(c);
                if (r < 0)
                        return r;
        }
        r = check_names(c, rt, rq);
        if (r < 0)
                return r;
        if (rq->method == ROUTE_M_POST && rt->resource != ROUTE_EVENTS)
                return check_decimal_arg(c, "ttlSecond", 0, TTL_MAX, &rq->ttl);
        return 0;
}

/* Bytes a client may still send after going over max_body before it is cut off: MHD can
 * answer only once the request is complete, so the rest of a chunked body is drained. */
static size_t drain_limit(size_t max_body)
{
        return max_body > SIZE_MAX / 2 - 65536 ? SIZE_MAX : 2 * max_body + 65536;
}

/* The calling MHD thread's watchdog slot, taken on its first request; NULL when every slot is
 * taken (more threads than API_WORKERS_MAX cannot happen with the config's bounds). */
static struct api_worker *worker_slot(struct api *a)
{
        static _Thread_local struct api *owner;
        static _Thread_local struct api_worker *slot;
        unsigned i;

        if (owner == a)
                return slot;
        i = atomic_fetch_add(&a->n_workers, 1);
        owner = a;
        slot = i < API_WORKERS_MAX ? &a->workers[i] : NULL;
        return slot;
}

int64_t api_busy_since_ms(struct api *a)
{
        unsigned n = atomic_load(&a->n_workers);
        int64_t oldest = 0;

        for (unsigned i = 0; i < n && i < API_WORKERS_MAX; i++) {
                int64_t since =
                    atomic_load_explicit(&a->workers[i].busy_since_ms, memory_order_relaxed);

                if (since != 0 && (oldest == 0 || since < oldest))
                        oldest = since;
        }
        return oldest;
}

static enum MHD_Result api_access_work(void *cls, struct MHD_Connection *conn, const char *url,
                                       const char *method, const char *version,
                                       const char *upload_data, size_t *upload_data_size,
                                       void **con_cls);

/* Marks the thread busy for the watchdog while the request is ours. */
static enum MHD_Result api_access(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_data_size, void **con_cls)
{
        struct api_worker *w = worker_slot(cls);
        enum MHD_Result result;

        if (w)
                atomic_store_explicit(&w->busy_since_ms, clock_ms(CLOCK_MONOTONIC_COARSE),
                                      memory_order_relaxed);
        result = api_access_work(cls, conn, url, method, version, upload_data, upload_data_size,
                                 con_cls);
        if (w)
                atomic_store_explicit(&w->busy_since_ms, 0, memory_order_relaxed);
        return result;
}

/* MHD calls this first when the headers are in, then once per piece of body, then once more
 * with nothing when the request is complete. Only an answer queued on that last call keeps
 * the connection alive (one queued earlier makes MHD skip the body and close), so requests
 * are answered there, except the body methods' refusals, which should not read the body. */
static enum MHD_Result api_access_work(void *cls, struct MHD_Connection *conn, const char *url,
                                       const char *method, const char *version,
                                       const char *upload_data, size_t *upload_data_size,
                                       void **con_cls)
{
        struct call c = {.api = cls, .conn = conn, .method = method, .url = url};
        struct request *rq = *con_cls;
        struct route rt;
        int r;

        (void)version;
        if (!rq)
                return MHD_NO; /* the connection's context could not be allocated */
        c.start = rq->start;
        if (rq->first_call) {
                rq->first_call = false;
                rq->method = route_method_from_string(method);
                if (!has_body(rq->method))
                        return MHD_YES;
                r = check_request(&c, &rt, rq);
                if (r < 0)
                        rq->answered = true;
                return r < 0 ? c.result : MHD_YES;
        }
        if (*upload_data_size > 0) {
                size_t n = *upload_data_size;

                *upload_data_size = 0;
                rq->received = rq->received > SIZE_MAX - n ? SIZE_MAX : rq->received + n;
                if (!has_body(rq->method) || rq->too_big)
                        return rq->received > drain_limit(c.api->max_body) ? MHD_NO : MHD_YES;
                r = buf_append(&rq->body, upload_data, n);
                if (r == -E2BIG)
                        rq->too_big = true;
                else if (r < 0)
                        return MHD_NO; /* out of memory mid-body: nothing sane to answer */
                return MHD_YES;
        }
        if (rq->answered)
                return MHD_YES;
        rq->answered = true;
        if (has_body(rq->method)) {
                if (rq->too_big)
                        return answer_error(&c, MHD_HTTP_CONTENT_TOO_LARGE,
                                            "request body exceeds the limit of %zu bytes",
                                            c.api->max_body);
                (void)route_parse(url, &rt); /* checked on the first callback */
                return dispatch_body(&c, &rt, rq);
        }
        r = check_request(&c, &rt, rq);
        if (r < 0)
                return c.result;
        switch (rt.resource) {
        case ROUTE_HEALTHZ:
                return get_healthz(&c);
        case ROUTE_READYZ:
                return get_readyz(&c);
        case ROUTE_METRICS:
                return get_metrics(&c);
        default:
                return dispatch_bodiless(&c, &rt, rq->method);
        }
}

/* MHD calls this with the raw request target as soon as the request line is in, and makes
 * what it returns the request's *con_cls: the start of every request, including those that
 * MHD itself refuses later (completion is notified for them all, which keeps in_flight
 * balanced). */
static void *api_request_started(void *cls, const char *uri, struct MHD_Connection *conn)
{
        struct api *a = cls;
        const union MHD_ConnectionInfo *ci =
            MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
        struct request *rq = ci ? ci->socket_context : NULL;

        atomic_fetch_add_explicit(&a->in_flight, 1, memory_order_relaxed);
        if (!rq)
                return NULL;
        clock_gettime(CLOCK_MONOTONIC, &rq->start);
        buf_init(&rq->body, a->max_body);
        rq->received = 0;
        rq->ttl = -1;
        rq->nul_in_path = memmem(uri, strcspn(uri, "?"), "%00", 3) != NULL;
        rq->too_big = rq->answered = false;
        rq->first_call = true;
        return rq;
}

static void api_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                          enum MHD_RequestTerminationCode toe)
{
        struct api *a = cls;
        struct request *rq = *con_cls;

        (void)conn;
        (void)toe;
        if (rq) {
                buf_free(&rq->body);
                *con_cls = NULL;
        }
        atomic_fetch_sub_explicit(&a->in_flight, 1, memory_order_release);
}

static void api_connection(void *cls, struct MHD_Connection *conn, void **socket_context,
                           enum MHD_ConnectionNotificationCode toe)
{
        struct request *rq = *socket_context;

        (void)cls;
        (void)conn;
        if (toe == MHD_CONNECTION_NOTIFY_STARTED) {
                *socket_context = calloc(1, sizeof(struct request));
                return;
        }
        if (rq) {
                buf_free(&rq->body);
                free(rq);
                *socket_context = NULL;
        }
}

static void api_mhd_log(void *cls, const char *fmt, va_list ap)
    __attribute__((format(printf, 2, 0)));
static void api_mhd_log(void *cls, const char *fmt, va_list ap)
{
        struct api *a = cls;
        char line[512];
        size_t n;

        vsnprintf(line, sizeof(line), fmt, ap);
        n = strlen(line);
        while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
                line[--n] = '\0';
        if (atomic_load(&a->starting)) {
                snprintf(a->start_error, sizeof(a->start_error), "%.*s",
                         (int)sizeof(a->start_error) - 1, line);
                return;
        }
        log_warning("libmicrohttpd: %s", line);
}

/* "host:port", "[v6]:port", "localhost:port" → a socket address. */
static int parse_listen(const char *listen, struct sockaddr_storage *ret, struct ch_error *err)
{
        char host[INET6_ADDRSTRLEN + 1];
        const char *colon, *h = listen;
        size_t hlen;
        int64_t port;
        int r;

        memset(ret, 0, sizeof(*ret));
        if (!listen || !*listen)
                goto bad;
        if (listen[0] == '[') {
                const char *close = strchr(listen, ']');

                if (!close || close[1] != ':')
                        goto bad;
                h = listen + 1;
                hlen = (size_t)(close - h);
                colon = close + 1;
        } else {
                colon = strrchr(listen, ':');
                if (!colon)
                        goto bad;
                hlen = (size_t)(colon - listen);
        }
        if (hlen == 0 || hlen >= sizeof(host))
                goto bad;
        memcpy(host, h, hlen);
        host[hlen] = '\0';
        r = parse_decimal(colon + 1, strlen(colon + 1), 0, 65535, &port);
        if (r < 0) {
                ch_error_set(err, "invalid listen address '%s': port must be 0-65535", listen);
                return -EINVAL;
        }
        if (listen[0] == '[') {
                struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)ret;

                s6->sin6_family = AF_INET6;
                s6->sin6_port = htons((uint16_t)port);
                if (inet_pton(AF_INET6, host, &s6->sin6_addr) != 1)
                        goto bad;
        } else {
                struct sockaddr_in *s4 = (struct sockaddr_in *)ret;

                s4->sin_family = AF_INET;
                s4->sin_port = htons((uint16_t)port);
                if (strcmp(host, "localhost") == 0)
                        s4->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
                else if (inet_pton(AF_INET, host, &s4->sin_addr) != 1)
                        goto bad;
        }
        return 0;
bad:
        ch_error_set(err,
                     "invalid listen address '%s': expected IPv4:port, localhost:port or "
                     "[IPv6]:port",
                     listen ? listen : "");
        return -EINVAL;
}

int api_start(const struct api_options *opts, struct store *store, struct metrics *metrics,
              struct api **ret, struct ch_error *err)
{
        unsigned flags =
            MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_USE_ITC | MHD_USE_ERROR_LOG;
        struct sockaddr_storage addr;
        const union MHD_DaemonInfo *info;
        struct MHD_OptionItem ops[10];
        unsigned threads = opts->threads;
        size_t n = 0;
        struct api *a;
        int r;

        r = parse_listen(opts->listen, &addr, err);
        if (r < 0)
                return r;
        if (addr.ss_family == AF_INET6)
                flags |= MHD_USE_IPv6;
        if (threads == 0) {
                long cpus = sysconf(_SC_NPROCESSORS_ONLN);
                threads = cpus > 0 ? (unsigned)cpus : 1;
                /* As many as the watchdog can watch, which is also [api] threads' bound. */
                if (threads > API_WORKERS_MAX)
                        threads = API_WORKERS_MAX;
        }

        a = calloc(1, sizeof(*a));
        if (!a) {
                ch_error_set(err, "out of memory");
                return -ENOMEM;
        }
        a->store = store;
        a->metrics = metrics;
        a->max_body = opts->max_body;
        a->pipeline = opts->pipeline;
        a->deliver = opts->deliver;
        a->ready = opts->ready;
        a->ready_ctx = opts->ready_ctx;
        if (opts->admin_token && opts->admin_token[0]) {
                a->admin_token = strdup(opts->admin_token);
                if (!a->admin_token) {
                        free(a);
                        ch_error_set(err, "out of memory");
                        return -ENOMEM;
                }
        }

        ops[n++] = (struct MHD_OptionItem){MHD_OPTION_SOCK_ADDR, 0, &addr};
        ops[n++] = (struct MHD_OptionItem){MHD_OPTION_EXTERNAL_LOGGER, (intptr_t)api_mhd_log, a};
        ops[n++] = (struct MHD_OptionItem){MHD_OPTION_NOTIFY_COMPLETED, (intptr_t)api_completed, a};
        ops[n++] =
            (struct MHD_OptionItem){MHD_OPTION_URI_LOG_CALLBACK, (intptr_t)api_request_started, a};
        ops[n++] =
            (struct MHD_OptionItem){MHD_OPTION_NOTIFY_CONNECTION, (intptr_t)api_connection, a};
        ops[n++] = (struct MHD_OptionItem){MHD_OPTION_CONNECTION_TIMEOUT,
                                           (intptr_t)opts->connection_timeout_s, NULL};
        if (threads > 1)
                ops[n++] =
                    (struct MHD_OptionItem){MHD_OPTION_THREAD_POOL_SIZE, (intptr_t)threads, NULL};
        if (opts->max_connections > 0)
                ops[n++] = (struct MHD_OptionItem){MHD_OPTION_CONNECTION_LIMIT,
                                                   (intptr_t)opts->max_connections, NULL};
        ops[n++] = (struct MHD_OptionItem){MHD_OPTION_END, 0, NULL};

        atomic_store(&a->starting, true);
        errno = 0;
        a->daemon = MHD_start_daemon(flags, 0, NULL, NULL, api_access, a, MHD_OPTION_ARRAY, ops,
                                     MHD_OPTION_END);
        r = errno > 0 ? -errno : -EIO;
        atomic_store(&a->starting, false);
        if (!a->daemon) {
                ch_error_set(err, "cannot listen on %s: %s", opts->listen,
                             a->start_error[0] ? a->start_error : strerror(-r));
                free(a->admin_token);
                free(a);
                return r;
        }
        info = MHD_get_daemon_info(a->daemon, MHD_DAEMON_INFO_BIND_PORT);
        a->port = info ? info->port : 0;
        *ret = a;
        return 0;
}

unsigned api_port(const struct api *a)
{
        return a ? a->port : 0;
}

struct api *api_stop(struct api *a)
{
        MHD_socket listen_fd;

        if (!a)
                return NULL;
        atomic_store(&a->stopping, true);
        listen_fd = MHD_quiesce_daemon(a->daemon);
        /* No MHD thread polls the socket any more, but the kernel would still complete
         * handshakes into its backlog: shut it so new clients are refused at once. The fd
         * itself stays open until MHD is gone, as MHD_quiesce_daemon requires. */
        if (listen_fd != MHD_INVALID_SOCKET)
                (void)shutdown(listen_fd, SHUT_RDWR);
        for (int waited = 0;
             waited < STOP_WAIT_MS && atomic_load_explicit(&a->in_flight, memory_order_acquire) > 0;
             waited += STOP_POLL_MS)
                nanosleep(&(struct timespec){.tv_nsec = STOP_POLL_MS * 1000000L}, NULL);
        MHD_stop_daemon(a->daemon);
        /* Ours to close since the quiesce, and only now that no MHD thread can touch it. */
        if (listen_fd != MHD_INVALID_SOCKET)
                close(listen_fd);
        free(a->admin_token);
        free(a);
        return NULL;
}
