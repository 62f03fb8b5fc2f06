/* libFuzzer harness of the HTTP side: the path router (route.h) on its own, and the real
 * Context API server (api_start on 127.0.0.1:0 over a real store in a temp dir, with API keys,
 * an ingest pipeline with hooks and the admin endpoints) driven over loopback with the fuzzed
 * request, so api.c's own request, query and body handling runs exactly as in the daemon.
 *
 * Input, readable so the corpus is: line 1 the method (up to a blank; none = GET); line 2 the
 * request target (path?query; bytes a request line cannot carry are sent %-escaped); then
 * "Name: value" header lines up to an empty line; then the body. Host, Connection and
 * Content-Length are the harness's own; "Transfer-Encoding: chunked" sends the body in chunks.
 * The keys below make requests that pass authentication.
 *
 * Properties checked besides "no crash, no leak": the router's answer is self-consistent (its
 * segments rebuild a path that routes the same); the server never answers 5xx; every JSON
 * error carries {"message": "..."} and every JSON 200 is valid JSON; a 405 names the route's
 * Allow; a 2xx on an account's resource needs that account's key, and on an admin resource the
 * admin token; and what a 204 says was written is what a GET reads back right after (PUT →
 * same value, PATCH → every member, DELETE → gone), unless a TTL of ≥ 1 s may have run out. */
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <jansson.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "ctxhookd/clock.h"
#include "ctxhookd/api.h"
#include "ctxhookd/apikey.h"
#include "ctxhookd/buf.h"
#include "ctxhookd/config.h"
#include "ctxhookd/log.h"
#include "ctxhookd/metrics.h"
#include "ctxhookd/pipeline.h"
#include "ctxhookd/route.h"
#include "ctxhookd/store.h"
#include "fuzz.h"

#define ACCOUNT       "12345678"
#define KEY           "fuzzKey0fuzzKey1fuzzKey2fuzzKey3"
#define OTHER_ACCOUNT "87654321"
#define OTHER_KEY     "otherKey0otherKey1otherKey2other"
#define ADMIN_TOKEN   "fuzz-admin-token-0123456789"
#define MAX_BODY      1024
#define METHOD_MAX    32
#define HEADERS_MAX   32
#define CHUNK         13           /* bytes per chunk of a chunked body */
#define ANSWER_WAIT_S 10           /* a request the server leaves unanswered this long hangs */
#define RESPONSE_MAX  (64u << 20)  /* responses are read whole, up to this */
#define STORE_MAX     (64LL << 20) /* the store is recreated past this size */
#define TTL_MIN_MS    1000         /* the shortest TTL a request can set: 1 s */

/* Two hooks, so ingest routes events, gathers context and queues deliveries (nothing delivers
 * them: the outbox is reset with the store). */
static const char config_text[] =
    "[kafka]\n"
    "brokers =\n"
    "max_message_bytes = 1024\n"
    "[hook \"on-close\"]\n"
    "on = conversation.end,conversation.idle\n"
    "close_reason = SYSTEM,TIMEOUT\n"
    "namespaces = notes,agentNotes\n"
    "url = http://127.0.0.1:9/close\n"
    "secret = whsec_AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA=\n"
    "clear_after = true\n"
    "[hook \"all\"]\n"
    "on = conversation.new,conversation.routing,conversation.participants,conversation.ttr\n"
    "namespaces = notes\n"
    "url = http://127.0.0.1:9/all\n"
    "secret = whsec_AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA=\n";

static struct {
        char dir[64];
        char db[128];
        struct config *cfg;
        struct metrics *metrics;
        struct store *store;
        struct pipeline *pipeline;
        struct api *api;
        struct sockaddr_in addr;
        unsigned long inputs;
        bool verbose; /* $FUZZ_VERBOSE: print each request line and its answer */
} fx;

struct header {
        const char *name, *value;
        size_t name_len, value_len;
};

/* The fuzzed request, pointing into the input. */
struct request {
        char method[METHOD_MAX + 1];
        const char *target;
        size_t target_len;
        struct header headers[HEADERS_MAX];
        size_t n_headers;
        bool chunked;
        const char *body;
        size_t body_len;
};

struct response {
        unsigned status;
        const char *content_type, *allow; /* header values, NULL when absent */
        size_t content_type_len, allow_len;
        const char *body;
        size_t body_len;
        char *raw; /* owns everything above */
        size_t raw_len;
};

/* ---- the server under test ---- */

static void set_key(const char *account, const char *key)
{
        unsigned char hash[STORE_KEY_HASH_LEN];
        int r;

        apikey_hash(key, strlen(key), hash);
        r = store_key_set(fx.store, account, hash, clock_wall_ms());
        FUZZ_CHECK(r == 0, "store_key_set: %d", r);
}

/* Dead letters for the admin endpoints to list, delete and redrive: an event that parses, one
 * that does not, and a delivery that failed for good. */
static void seed_dead_letters(void)
{
        static const char good[] = "{\"kind\":\"conversation.end\",\"accountId\":\"" ACCOUNT
                                   "\",\"conversationId\":\"c1\",\"closeReason\":\"SYSTEM\"}";
        static const char bad[] = "{\"kind\":\"conversation.nope\"}";
        const struct store_enqueue item = {.hook = "on-close",
                                           .account = ACCOUNT,
                                           .conversation = "c2",
                                           .webhook_id = "msg_seed_on-close",
                                           .body = "{}",
                                           .body_len = 2};
        struct store_delivery *d = NULL;
        int64_t now = clock_wall_ms();
        size_t n = 0;
        int r;

        r = store_dead_add(fx.store, NULL, "kafka:conversation-events/0/1", "seeded", good,
                           sizeof(good) - 1, now);
        FUZZ_CHECK(r == 0, "store_dead_add: %d", r);
        r = store_dead_add(fx.store, NULL, "kafka:conversation-events/0/2", "seeded", bad,
                           sizeof(bad) - 1, now);
        FUZZ_CHECK(r == 0, "store_dead_add: %d", r);
        r = store_outbox_enqueue(fx.store, NULL, &item, 1, now);
        FUZZ_CHECK(r == 0, "store_outbox_enqueue: %d", r);
        r = store_outbox_claim(fx.store, now, 60000, 1, &d, &n);
        FUZZ_CHECK(r == 0 && n == 1, "store_outbox_claim: %d", r);
        r = store_outbox_dead(fx.store, d[0].id, "seeded", now);
        FUZZ_CHECK(r == 0, "store_outbox_dead: %d", r);
        store_deliveries_free(d, n);
}

static void fixture_open(void)
{
        const struct store_options so = {
            .path = fx.db, .busy_timeout_ms = 5000, .pool_size = 2, .cache_entries = 64};
        struct api_options ao = {.listen = "127.0.0.1:0",
                                 .max_body = MAX_BODY,
                                 .threads = 1,
                                 .max_connections = 16,
                                 .connection_timeout_s = 2,
                                 .admin_token = ADMIN_TOKEN};
        struct ch_error err = {{0}};
        int r;

        r = store_open(&so, &fx.store, &err);
        FUZZ_CHECK(r == 0, "store_open: %s", err.msg);
        set_key(ACCOUNT, KEY);
        set_key(OTHER_ACCOUNT, OTHER_KEY);
        seed_dead_letters();
        r = pipeline_new(fx.store, fx.metrics, fx.cfg, &fx.pipeline);
        FUZZ_CHECK(r == 0, "pipeline_new: %d", r);
        ao.pipeline = fx.pipeline;
        r = api_start(&ao, fx.store, fx.metrics, &fx.api, &err);
        FUZZ_CHECK(r == 0, "api_start: %s", err.msg);
        fx.addr = (struct sockaddr_in){.sin_family = AF_INET,
                                       .sin_port = htons((uint16_t)api_port(fx.api)),
                                       .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
}

static void remove_store_files(void)
{
        DIR *d = opendir(fx.dir);
        struct dirent *e;

        if (!d)
                return;
        while ((e = readdir(d))) {
                char path[512];

                if (e->d_name[0] == '.')
                        continue;
                snprintf(path, sizeof(path), "%s/%s", fx.dir, e->d_name);
                unlink(path);
        }
        closedir(d);
}

static void fixture_close(void)
{
        fx.api = api_stop(fx.api);
        fx.pipeline = pipeline_free(fx.pipeline);
        fx.store = store_close(fx.store);
        remove_store_files();
}

static long long file_size(const char *suffix)
{
        char path[160];
        struct stat st;

        snprintf(path, sizeof(path), "%s%s", fx.db, suffix);
        return stat(path, &st) == 0 ? (long long)st.st_size : 0;
}

/* Millions of writes would grow the store without bound: start afresh now and then. */
static void fixture_maybe_reset(void)
{
        if (++fx.inputs % 512 != 0)
                return;
        if (file_size("") + file_size("-wal") < STORE_MAX)
                return;
        fixture_close();
        fixture_open();
}

static void fixture_cleanup(void)
{
        fixture_close();
        rmdir(fx.dir);
        fx.cfg = config_free(fx.cfg);
        fx.metrics = metrics_free(fx.metrics);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
        struct ch_error err = {{0}};
        const char *tmp = getenv("TMPDIR");
        int r;

        (void)argc;
        (void)argv;
        log_set_level(LOG_LEVEL_ERR); /* MHD's warnings about malformed requests are expected */
        fx.verbose = getenv("FUZZ_VERBOSE") != NULL;
        snprintf(fx.dir, sizeof(fx.dir), "%s/fuzz_http.XXXXXX", tmp && *tmp ? tmp : "/tmp");
        FUZZ_CHECK(mkdtemp(fx.dir), "mkdtemp %s failed", fx.dir);
        snprintf(fx.db, sizeof(fx.db), "%s/context.db", fx.dir);
        r = config_load_string(config_text, "fuzz_http", &fx.cfg, &err);
        FUZZ_CHECK(r == 0, "harness config: %s", err.msg);
        fx.metrics = metrics_new();
        FUZZ_CHECK(fx.metrics, "metrics_new failed");
        fixture_open();
        atexit(fixture_cleanup);
        return 0;
}

/* ---- the input as a request ---- */

static bool next_line(const char **p, const char *end, const char **ret, size_t *ret_len)
{
        const char *nl;
        size_t len;

        if (*p >= end)
                return false;
        nl = memchr(*p, '\n', (size_t)(end - *p));
        len = nl ? (size_t)(nl - *p) : (size_t)(end - *p);
        *ret = *p;
        *p += len + (nl ? 1 : 0);
        if (len > 0 && (*ret)[len - 1] == '\r')
                len--;
        *ret_len = len;
        return true;
}

static bool is_token(const char *s, size_t len)
{
        if (len == 0)
                return false;
        for (size_t i = 0; i < len; i++) {
                bool alnum = (s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'z') ||
                             (s[i] >= 'A' && s[i] <= 'Z');

                if (!alnum && (s[i] == '\0' || !strchr("!#$%&'*+-.^_`|~", s[i])))
                        return false;
        }
        return true;
}

static bool name_is(const struct header *h, const char *name)
{
        return h->name_len == strlen(name) && strncasecmp(h->name, name, h->name_len) == 0;
}

static void parse_input(const uint8_t *data, size_t size, struct request *rq)
{
        const char *p = (const char *)data, *end = p + size, *line;
        size_t len;

        memset(rq, 0, sizeof(*rq));
        strcpy(rq->method, "GET");
        /* One token: what follows a blank would shift the request line (MHD would read
         * "HEAD o" as HEAD of "o"), and the checks must see the method the server sees. */
        if (next_line(&p, end, &line, &len) && len > 0) {
                len = strnlen(line, len < METHOD_MAX ? len : METHOD_MAX);
                for (size_t i = 0; i < len; i++)
                        if (line[i] == ' ' || line[i] == '\t')
                                len = i;
                if (len > 0)
                        snprintf(rq->method, sizeof(rq->method), "%.*s", (int)len, line);
        }
        if (next_line(&p, end, &line, &len)) {
                rq->target = line;
                rq->target_len = len;
        }
        while (next_line(&p, end, &line, &len) && len > 0) {
                const char *colon = memchr(line, ':', len);
                struct header h;

                if (!colon || rq->n_headers == HEADERS_MAX)
                        continue;
                h.name = line;
                h.name_len = (size_t)(colon - line);
                h.value = colon + 1;
                h.value_len = len - h.name_len - 1;
                while (h.value_len > 0 && (h.value[0] == ' ' || h.value[0] == '\t'))
                        h.value++, h.value_len--;
                if (!is_token(h.name, h.name_len))
                        continue;
                if (name_is(&h, "Transfer-Encoding")) {
                        rq->chunked = memmem(h.value, h.value_len, "chunked", 7) != NULL;
                        continue;
                }
                /* The harness frames the request itself. */
                if (name_is(&h, "Host") || name_is(&h, "Content-Length") ||
                    name_is(&h, "Connection") || name_is(&h, "Expect") || name_is(&h, "Upgrade") ||
                    name_is(&h, "Keep-Alive"))
                        continue;
                rq->headers[rq->n_headers++] = h;
        }
        rq->body = p;
        rq->body_len = (size_t)(end - p);
}

/* The first value of a header as MHD hands it to the server: name case-insensitive, value
 * without the blanks around it and cut at a NUL byte (MHD keeps header lines as C strings, so
 * "KEY\0junk" authenticates as KEY: a leniency of the HTTP library, not of api.c), or NULL. */
static const char *request_header(const struct request *rq, const char *name, size_t *ret_len)
{
        for (size_t i = 0; i < rq->n_headers; i++) {
                const struct header *h = &rq->headers[i];
                size_t len = strnlen(h->value, h->value_len);

                if (!name_is(h, name))
                        continue;
                while (len > 0 && (h->value[len - 1] == ' ' || h->value[len - 1] == '\t'))
                        len--;
                *ret_len = len;
                return h->value;
        }
        return NULL;
}

static bool has_body(const char *method)
{
        return strcmp(method, "POST") == 0 || strcmp(method, "PUT") == 0 ||
               strcmp(method, "PATCH") == 0;
}

static void append(struct buf *b, const void *p, size_t n)
{
        int r = buf_append(b, p, n);

        FUZZ_CHECK(r == 0, "building the request: %d", r);
}

/* What cannot go on a request line as it is goes %-escaped, so the server decodes it back; so
 * does "#", which would start a fragment. */
static void append_target(struct buf *b, const char *t, size_t len)
{
        if (len == 0) {
                append(b, "/", 1);
                return;
        }
        for (size_t i = 0; i < len; i++) {
                unsigned char c = (unsigned char)t[i];
                char esc[4];

                if (c > 0x20 && c < 0x7f && c != '#') {
                        append(b, &t[i], 1);
                        continue;
                }
                snprintf(esc, sizeof(esc), "%%%02X", c);
                append(b, esc, 3);
        }
}

static void build_request(const struct request *rq, const char *target, size_t target_len,
                          struct buf *out)
{
        char line[64];

        append(out, rq->method, strlen(rq->method));
        append(out, " ", 1);
        append_target(out, target, target_len);
        append(out, " HTTP/1.1\r\nHost: fuzz\r\nConnection: close\r\n", 42);
        for (size_t i = 0; i < rq->n_headers; i++) {
                append(out, rq->headers[i].name, rq->headers[i].name_len);
                append(out, ": ", 2);
                append(out, rq->headers[i].value, rq->headers[i].value_len);
                append(out, "\r\n", 2);
        }
        if (rq->chunked) {
                append(out, "Transfer-Encoding: chunked\r\n\r\n", 30);
                for (size_t off = 0; off < rq->body_len; off += CHUNK) {
                        size_t n = rq->body_len - off < CHUNK ? rq->body_len - off : CHUNK;

                        snprintf(line, sizeof(line), "%zx\r\n", n);
                        append(out, line, strlen(line));
                        append(out, rq->body + off, n);
                        append(out, "\r\n", 2);
                }
                append(out, "0\r\n\r\n", 5);
                return;
        }
        if (rq->body_len > 0 || has_body(rq->method)) {
                snprintf(line, sizeof(line), "Content-Length: %zu\r\n", rq->body_len);
                append(out, line, strlen(line));
        }
        append(out, "\r\n", 2);
        append(out, rq->body, rq->body_len);
}

/* ---- one exchange over loopback ---- */

static const char *find_header(const char *head, size_t head_len, const char *name, size_t *ret_len)
{
        size_t n = strlen(name);

        for (const char *p = head; p < head + head_len;) {
                const char *eol = memmem(p, (size_t)(head + head_len - p), "\r\n", 2);
                size_t len = eol ? (size_t)(eol - p) : (size_t)(head + head_len - p);

                if (len > n && p[n] == ':' && strncasecmp(p, name, n) == 0) {
                        const char *v = p + n + 1;

                        while (v < p + len && *v == ' ')
                                v++;
                        *ret_len = (size_t)(p + len - v);
                        return v;
                }
                p += len + 2;
        }
        return NULL;
}

/* connect() that survives a signal (libFuzzer's SIGALRM timer): the connection then completes
 * in the background, and is waited for. */
static int connect_loopback(int fd)
{
        struct pollfd p = {.fd = fd, .events = POLLOUT};
        socklen_t len = sizeof(int);
        int r, e = 0;

        r = connect(fd, (const struct sockaddr *)&fx.addr, sizeof(fx.addr));
        if (r == 0)
                return 0;
        if (errno != EINTR)
                return -errno;
        do
                r = poll(&p, 1, ANSWER_WAIT_S * 1000);
        while (r < 0 && errno == EINTR);
        if (r <= 0)
                return r == 0 ? -ETIMEDOUT : -errno;
        if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &len) < 0)
                return -errno;
        return -e;
}

/* Sends the request and reads the answer until the server closes; an empty rs->raw means the
 * server closed without answering. */
static void exchange(const char *req, size_t req_len, struct response *rs)
{
        const struct timeval wait = {.tv_sec = ANSWER_WAIT_S};
        const struct linger rst = {.l_onoff = 1, .l_linger = 0};
        struct buf in;
        const char *head_end;
        size_t sent = 0;
        int fd, r;

        memset(rs, 0, sizeof(*rs));
        buf_init(&in, RESPONSE_MAX);
        fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        FUZZ_CHECK(fd >= 0, "socket: %s", strerror(errno));
        (void)setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &wait, sizeof(wait));
        (void)setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &wait, sizeof(wait));
        r = connect_loopback(fd);
        FUZZ_CHECK(r == 0, "connect: %s", strerror(-r));
        while (sent < req_len) {
                ssize_t n = send(fd, req + sent, req_len - sent, MSG_NOSIGNAL);

                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0) /* the server answered early and closed (413 before the body) */
                        break;
                sent += (size_t)n;
        }
        for (;;) {
                char chunk[16384];
                ssize_t n = recv(fd, chunk, sizeof(chunk), 0);

                if (n < 0 && errno == EINTR)
                        continue;
                FUZZ_CHECK(n >= 0 || errno != EAGAIN,
                           "the server did not answer within %d s:\n%.*s", ANSWER_WAIT_S,
                           (int)(req_len < 2000 ? req_len : 2000), req);
                if (n <= 0)
                        break; /* closed; a reset may lose an early answer */
                r = buf_append(&in, chunk, (size_t)n);
                FUZZ_CHECK(r == 0, "response larger than %u bytes", RESPONSE_MAX);
        }
        (void)setsockopt(fd, SOL_SOCKET, SO_LINGER, &rst, sizeof(rst)); /* no TIME_WAIT pile-up */
        close(fd);

        rs->raw = buf_take(&in, &rs->raw_len);
        if (rs->raw_len == 0)
                return;
        FUZZ_CHECK(rs->raw_len >= 12 && strncmp(rs->raw, "HTTP/1.", 7) == 0 && rs->raw[8] == ' ' &&
                       sscanf(rs->raw + 9, "%3u", &rs->status) == 1,
                   "not an HTTP response: %.80s", rs->raw);
        head_end = memmem(rs->raw, rs->raw_len, "\r\n\r\n", 4);
        FUZZ_CHECK(head_end, "response without the end of its header");
        rs->content_type = find_header(rs->raw, (size_t)(head_end - rs->raw), "Content-Type",
                                       &rs->content_type_len);
        rs->allow = find_header(rs->raw, (size_t)(head_end - rs->raw), "Allow", &rs->allow_len);
        rs->body = head_end + 4;
        rs->body_len = rs->raw_len - (size_t)(rs->body - rs->raw);
}

static void response_free(struct response *rs)
{
        free(rs->raw);
        rs->raw = NULL;
}

/* A GET of a canonical path with the account's key, for the read-back checks. */
static void get(const char *path, const char *key, struct response *rs)
{
        char *req = NULL;
        int len;

        len = asprintf(&req,
                       "GET %s HTTP/1.1\r\nHost: fuzz\r\nConnection: close\r\nmaven-api-key: "
                       "%s\r\n\r\n",
                       path, key);
        FUZZ_CHECK(len > 0, "out of memory");
        exchange(req, (size_t)len, rs);
        free(req);
}

/* ---- the router alone ---- */

static int hex_digit(char c)
{
        if (c >= '0' && c <= '9')
                return c - '0';
        if (c >= 'a' && c <= 'f')
                return c - 'a' + 10;
        if (c >= 'A' && c <= 'F')
                return c - 'A' + 10;
        return -1;
}

/* Decodes %XX as MHD does for the path it hands the handler (anything else stays). */
static void unescape(const char *s, size_t len, char *out)
{
        size_t o = 0;

        for (size_t i = 0; i < len; i++) {
                if (s[i] == '%' && i + 2 < len && hex_digit(s[i + 1]) >= 0 &&
                    hex_digit(s[i + 2]) >= 0) {
                        out[o++] = (char)(hex_digit(s[i + 1]) * 16 + hex_digit(s[i + 2]));
                        i += 2;
                        continue;
                }
                out[o++] = s[i];
        }
        out[o] = '\0';
}

static bool is_account_route(enum route_resource r)
{
        return (r >= ROUTE_ACCOUNT && r <= ROUTE_SESSION) || r == ROUTE_EVENTS;
}

static bool is_admin_route(enum route_resource r)
{
        return r == ROUTE_DEAD_LETTERS || r == ROUTE_DEAD_LETTER || r == ROUTE_DEAD_LETTER_REDRIVE;
}

static void add_segment(struct buf *b, const char *seg, bool escape)
{
        append(b, "/", 1);
        for (const char *p = seg; *p; p++) {
                char esc[4];

                if (!escape || strchr("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                      "0123456789-._~",
                                      *p)) {
                        append(b, p, 1);
                        continue;
                }
                snprintf(esc, sizeof(esc), "%%%02X", (unsigned char)*p);
                append(b, esc, 3);
        }
}

/* The path of the resource rt names (segments %-escaped when escape), "" for no path. */
static void route_path(const struct route *rt, enum route_resource as, bool escape, struct buf *b)
{
        buf_reset(b);
        switch (as) {
        case ROUTE_HEALTHZ:
                add_segment(b, "healthz", false);
                return;
        case ROUTE_READYZ:
                add_segment(b, "readyz", false);
                return;
        case ROUTE_METRICS:
                add_segment(b, "metrics", false);
                return;
        case ROUTE_DEAD_LETTERS:
        case ROUTE_DEAD_LETTER:
        case ROUTE_DEAD_LETTER_REDRIVE:
                add_segment(b, "admin", false);
                add_segment(b, "dead-letters", false);
                if (as != ROUTE_DEAD_LETTERS)
                        add_segment(b, rt->id, escape);
                if (as == ROUTE_DEAD_LETTER_REDRIVE)
                        add_segment(b, "redrive", false);
                return;
        default:
                break;
        }
        add_segment(b, "v1", false);
        add_segment(b, "account", false);
        add_segment(b, rt->account, escape);
        switch (as) {
        case ROUTE_SESSIONS:
        case ROUTE_SESSION:
                add_segment(b, "namespace", false);
                add_segment(b, rt->ns, escape);
                add_segment(b, "session", false);
                if (as == ROUTE_SESSION)
                        add_segment(b, rt->sid, escape);
                return;
        case ROUTE_ACCOUNT:
                return;
        default:
                break;
        }
        add_segment(b, rt->ns, escape);
        if (rt->sid && (as == ROUTE_SESSION_PROPS || as == ROUTE_SESSION_PROP))
                add_segment(b, rt->sid, escape);
        if (as == ROUTE_NS_PROPS || as == ROUTE_NS_PROP || as == ROUTE_SESSION_PROPS ||
            as == ROUTE_SESSION_PROP)
                add_segment(b, "properties", false);
        if (as == ROUTE_NS_PROP || as == ROUTE_SESSION_PROP)
                add_segment(b, rt->prop, escape);
        if (as == ROUTE_SESSION_IDS)
                add_segment(b, "session-ids", false);
        if (as == ROUTE_SESSION_PROPERTIES)
                add_segment(b, "session-properties", false);
}

static bool same_str(const char *a, const char *b)
{
        return (!a && !b) || (a && b && strcmp(a, b) == 0);
}

static void check_route(const char *path, const struct route *rt, int r)
{
        static struct route again; /* 4 KiB: not on the stack of every input */
        struct buf b;
        const char *segs[] = {rt->account, rt->ns, rt->sid, rt->prop, rt->id};

        FUZZ_CHECK(r == 0 || (r == -E2BIG && strlen(path) >= ROUTE_PATH_MAX - 1),
                   "route_parse returned %d", r);
        FUZZ_CHECK((unsigned)rt->resource < ROUTE__COUNT, "resource %d", rt->resource);
        if (rt->resource == ROUTE_NOT_FOUND) {
                FUZZ_CHECK(!rt->account && !rt->ns && !rt->sid && !rt->prop,
                           "not found, yet with segments");
                return;
        }
        FUZZ_CHECK(route_allowed(rt->resource) != 0 && route_allow_header(rt->resource)[0] &&
                       strcmp(route_resource_name(rt->resource), "unknown") != 0,
                   "resource %d without methods or name", rt->resource);
        for (size_t i = 0; i < sizeof(segs) / sizeof(segs[0]); i++)
                FUZZ_CHECK(!segs[i] || (segs[i] >= rt->buf && segs[i] < rt->buf + sizeof(rt->buf) &&
                                        segs[i][0] && !strchr(segs[i], '/')),
                           "segment %zu is not a non-empty piece of the path", i);
        FUZZ_CHECK(!is_account_route(rt->resource) ||
                       (rt->account && (rt->ns || rt->resource == ROUTE_ACCOUNT)),
                   "account route %s without its account or namespace",
                   route_resource_name(rt->resource));
        FUZZ_CHECK(!is_admin_route(rt->resource) || rt->resource == ROUTE_DEAD_LETTERS || rt->id,
                   "dead letter route without its id");

        /* The segments, put back where the resource has them, route the same. */
        buf_init(&b, ROUTE_PATH_MAX * 2);
        route_path(rt, rt->resource, false, &b);
        FUZZ_CHECK(b.data, "empty rebuilt path");
        r = route_parse(b.data, &again);
        FUZZ_CHECK(r == 0 && again.resource == rt->resource &&
                       same_str(again.account, rt->account) && same_str(again.ns, rt->ns) &&
                       same_str(again.sid, rt->sid) && same_str(again.prop, rt->prop) &&
                       same_str(again.id, rt->id),
                   "'%s' routes as %s, but its rebuilt path '%s' as %s", path,
                   route_resource_name(rt->resource), b.data, route_resource_name(again.resource));
        buf_free(&b);
}

/* ---- checks of the answer ---- */

static bool is_json(const struct response *rs)
{
        return rs->content_type && rs->content_type_len >= 16 &&
               strncasecmp(rs->content_type, "application/json", 16) == 0;
}

static json_t *parse_json(const char *s, size_t len)
{
        return json_loadb(s, len, JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
}

static void check_answer(const struct request *rq, const struct route *rt,
                         const struct response *rs, const char *req, size_t req_len)
{
        const bool head = strcmp(rq->method, "HEAD") == 0;
        const char *v;
        size_t len;
        json_t *j;

        FUZZ_CHECK(rs->status >= 100 && rs->status < 500, "answered %u:\n%.*s\n--- request:\n%.*s",
                   rs->status, (int)(rs->raw_len < 2000 ? rs->raw_len : 2000), rs->raw,
                   (int)(req_len < 2000 ? req_len : 2000), req);
        if (rs->status == 204)
                FUZZ_CHECK(rs->body_len == 0, "204 with a body");
        if (is_json(rs) && !head) {
                j = parse_json(rs->body, rs->body_len);
                FUZZ_CHECK(j, "%u with a JSON body that is not JSON: %.*s", rs->status,
                           (int)rs->body_len, rs->body);
                if (rs->status >= 400)
                        FUZZ_CHECK(json_is_object(j) &&
                                       json_string_length(json_object_get(j, "message")) > 0,
                                   "%u without {\"message\": \"...\"}: %.*s", rs->status,
                                   (int)rs->body_len, rs->body);
                json_decref(j);
        }
        if (rs->status == 405 && rt->resource != ROUTE_NOT_FOUND)
                FUZZ_CHECK(rs->allow && rs->allow_len == strlen(route_allow_header(rt->resource)) &&
                               memcmp(rs->allow, route_allow_header(rt->resource), rs->allow_len) ==
                                   0,
                           "405 on %s without Allow: %s", route_resource_name(rt->resource),
                           route_allow_header(rt->resource));
        if (rs->status < 200 || rs->status >= 300)
                return;
        /* Authorised, so the credentials were right. */
        if (is_account_route(rt->resource)) {
                const char *want = strcmp(rt->account, ACCOUNT) == 0         ? KEY
                                   : strcmp(rt->account, OTHER_ACCOUNT) == 0 ? OTHER_KEY
                                                                             : NULL;

                v = request_header(rq, "maven-api-key", &len);
                FUZZ_CHECK(want && v && len == strlen(want) && memcmp(v, want, len) == 0,
                           "%u for account '%s' with maven-api-key '%.*s'", rs->status, rt->account,
                           v ? (int)len : 6, v ? v : "(none)");
        }
        if (is_admin_route(rt->resource)) {
                v = request_header(rq, "Authorization", &len);
                FUZZ_CHECK(v && len == 7 + strlen(ADMIN_TOKEN) &&
                               strncasecmp(v, "Bearer ", 7) == 0 &&
                               memcmp(v + 7, ADMIN_TOKEN, strlen(ADMIN_TOKEN)) == 0,
                           "%u on an admin endpoint with Authorization '%.*s'", rs->status,
                           v ? (int)len : 6, v ? v : "(none)");
        }
}

/* What a 204 wrote or deleted reads back so; started_ms is when the write was sent. */
static void check_read_back(const struct request *rq, const struct route *rt, int64_t started_ms)
{
        const char *key = strcmp(rt->account, ACCOUNT) == 0 ? KEY : OTHER_KEY;
        enum route_resource as = rt->resource;
        json_t *sent = NULL, *got = NULL;
        struct response rs;
        const char *what;
        struct buf path;
        bool ok = true;

        if (strcmp(rq->method, "PUT") == 0 && (as == ROUTE_NS_PROP || as == ROUTE_SESSION_PROP)) {
                what = "PUT";
        } else if (strcmp(rq->method, "PATCH") == 0 &&
                   (as == ROUTE_NS_PROPS || as == ROUTE_SESSION_PROPS)) {
                what = "PATCH";
        } else if (strcmp(rq->method, "DELETE") == 0 &&
                   (as == ROUTE_NS_PROP || as == ROUTE_SESSION_PROP || as == ROUTE_NS_PROPS ||
                    as == ROUTE_SESSION_PROPS)) {
                what = "DELETE";
        } else if (strcmp(rq->method, "DELETE") == 0 &&
                   (as == ROUTE_NAMESPACE || as == ROUTE_EVENTS || as == ROUTE_SESSION)) {
                /* The namespace's (or session's) properties are gone. */
                if (as == ROUTE_SESSION && strcmp(rt->sid, "properties") == 0)
                        return; /* no session-level route reaches a session named so */
                what = "DELETE";
                as = as == ROUTE_SESSION ? ROUTE_SESSION_PROPS : ROUTE_NS_PROPS;
        } else {
                return;
        }

        buf_init(&path, ROUTE_PATH_MAX * 4);
        route_path(rt, as, true, &path);
        get(path.data, key, &rs);
        if (rs.raw_len == 0 || (rs.status != 200 && rs.status != 404))
                FUZZ_FAIL("%s %s answered 204, then GET answered %u", what, path.data, rs.status);
        if (rs.status == 200)
                got = parse_json(rs.body, rs.body_len);
        FUZZ_CHECK(rs.status != 200 || got, "GET %s: not JSON", path.data);

        if (strcmp(what, "PUT") == 0 || strcmp(what, "PATCH") == 0) {
                sent = json_loadb(rq->body, rq->body_len,
                                  JSON_DECODE_ANY | JSON_ALLOW_NUL | JSON_REJECT_DUPLICATES, NULL);
                FUZZ_CHECK(sent, "%s %s accepted a body that is not JSON", what, path.data);
        }
        if (strcmp(what, "PUT") == 0) {
                ok = got && json_equal(got, sent);
        } else if (strcmp(what, "PATCH") == 0) {
                const char *k;
                json_t *v;

                FUZZ_CHECK(json_is_object(sent), "PATCH accepted a body that is not an object");
                json_object_foreach(sent, k, v)
                {
                        if (!json_equal(json_object_get(got, k), v))
                                ok = false;
                }
        } else if (as == ROUTE_NS_PROP || as == ROUTE_SESSION_PROP) {
                ok = rs.status == 404;
        } else {
                ok = json_is_object(got) && json_object_size(got) == 0;
        }
        /* A TTL of at least 1 s may legitimately have removed what was written meanwhile. */
        if (!ok && clock_mono_ms() - started_ms < TTL_MIN_MS)
                FUZZ_FAIL("%s %s answered 204, but GET reads back %u %.*s", what, path.data,
                          rs.status, (int)rs.body_len, rs.body);
        json_decref(sent);
        json_decref(got);
        response_free(&rs);
        buf_free(&path);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        static struct route rt;
        static char path[ROUTE_PATH_MAX * 2];
        const char *target, *query;
        size_t target_len, path_len;
        struct request rq;
        struct response rs;
        struct buf req;
        int64_t started;
        int r;

        fixture_maybe_reset();
        parse_input(data, size, &rq);

        /* The router, on the path as the server will see it. */
        target = rq.target ? rq.target : "";
        target_len = rq.target ? rq.target_len : 0;
        query = memchr(target, '?', target_len);
        path_len = query ? (size_t)(query - target) : target_len;
        if (path_len >= sizeof(path))
                path_len = sizeof(path) - 1;
        unescape(target, path_len, path);
        if (path_len == 0)
                strcpy(path, "/");
        r = route_parse(path, &rt);
        check_route(path, &rt, r);
        FUZZ_CHECK(route_method_from_string(rq.method) &
                       (ROUTE_M_GET | ROUTE_M_HEAD | ROUTE_M_POST | ROUTE_M_PUT | ROUTE_M_PATCH |
                        ROUTE_M_DELETE | ROUTE_M_OTHER),
                   "method '%s' maps to nothing", rq.method);

        /* The server. */
        buf_init(&req, 1u << 20);
        build_request(&rq, target, target_len, &req);
        started = clock_mono_ms();
        exchange(req.data, req.len, &rs);
        if (fx.verbose)
                fprintf(stderr, "%.*s -> %.*s\n", (int)strcspn(req.data, "\r"), req.data,
                        (int)(rs.raw_len > 0 ? strcspn(rs.raw, "\r") : 6),
                        rs.raw_len > 0 ? rs.raw : "closed");
        if (rs.raw_len > 0) {
                check_answer(&rq, &rt, &rs, req.data, req.len);
                if (rs.status == 204 && is_account_route(rt.resource))
                        check_read_back(&rq, &rt, started);
        }
        response_free(&rs);
        buf_free(&req);
        return 0;
}
