/* Tests of the delivery thread (daemon/deliver.c) against real peers: a libmicrohttpd webhook
 * sink in this process on 127.0.0.1:0 that records every request (method, path, headers, body,
 * arrival time) and answers from a script per webhook-id (status, Retry-After, Location, a
 * delay, a body), and a real store in a fresh mkdtemp directory. Deliveries are queued with
 * store_outbox_enqueue, the thread runs with a hand-built struct config, and every test waits
 * (bounded) for the outcome in the sink and the store: exact bodies and signatures (checked
 * with sign_verify and, independently, with OpenSSL's HMAC), the bearer header, retries with
 * growing back-off, Retry-After honoured and capped, dead letters for 4xx, redirects,
 * max_attempts and unknown hooks, per-conversation order, clear_after, time-outs, wake-ups,
 * gauges, and a stop with a call in flight. Plus unit tests of the back-off and Retry-After
 * parsing. */
#include <criterion/criterion.h>
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <jansson.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "ctxhookd/clock.h"
#include "ctxhookd/buf.h"
#include "ctxhookd/config.h"
#include "ctxhookd/deliver.h"
#include "ctxhookd/log.h"
#include "ctxhookd/metrics.h"
#include "ctxhookd/sign.h"
#include "ctxhookd/store.h"
#include "test_util.h"

#define ACC    "12345678"
#define SECRET "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
#define TOKEN  "tok-7f3a9c-never-logged"
#define T0     INT64_C(1800000000000) /* 2027-01-15T08:00:00.000Z */

#define SINK_REQS_MAX    256
#define SINK_SCRIPTS_MAX 32
#define SINK_ANSWERS_MAX 8
#define HOOKS_MAX        8

/* ---- the webhook sink ---- */

struct answer {
        unsigned status;
        const char *retry_after; /* NULL = no header */
        const char *location;    /* NULL = no header */
        int delay_ms;            /* before answering; cut short when the sink stops */
        const char *body;        /* NULL = "" */
};

struct script {
        char webhook_id[80];
        struct answer answers[SINK_ANSWERS_MAX]; /* in order; then 200 */
        size_t n, used;
};

struct request {
        char method[16];
        char path[128];
        char webhook_id[80];
        char timestamp[32];
        char signature[256];
        char authorization[256];
        bool has_authorization;
        char content_type[128];
        char user_agent[128];
        char *body;
        size_t body_len;
        int64_t at_ms; /* CLOCK_MONOTONIC, when the request was complete */
        unsigned status;
};

struct upload {
        char *data;
        size_t len;
};

static struct {
        struct MHD_Daemon *mhd;
        unsigned port;
        pthread_mutex_t lock;
        pthread_cond_t cond;
        bool stopping;
        struct request reqs[SINK_REQS_MAX];
        size_t n;
        struct script scripts[SINK_SCRIPTS_MAX];
        size_t n_scripts;
        unsigned connections;  /* TCP connections accepted */
        unsigned active, peak; /* requests being answered now, and the most at once */
} sink = {.lock = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER};

static void copy_header(struct MHD_Connection *c, const char *name, char *out, size_t size,
                        bool *ret_present)
{
        const char *v = MHD_lookup_connection_value(c, MHD_HEADER_KIND, name);

        snprintf(out, size, "%s", v ? v : "");
        if (ret_present)
                *ret_present = v != NULL;
}

/* The next scripted answer for webhook_id (lock held). */
static struct answer next_answer(const char *webhook_id)
{
        struct answer a = {.status = 200};

        for (size_t i = 0; i < sink.n_scripts; i++) {
                struct script *s = &sink.scripts[i];

                if (strcmp(s->webhook_id, webhook_id) == 0 && s->used < s->n)
                        return s->answers[s->used++];
        }
        return a;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_data_size, void **con_cls)
{
        struct upload *up = *con_cls;
        struct request *rq;
        struct answer a;
        struct MHD_Response *resp;
        enum MHD_Result ret;

        (void)cls;
        (void)version;
        if (!up) {
                up = calloc(1, sizeof(*up));
                if (!up)
                        return MHD_NO;
                *con_cls = up;
                return MHD_YES;
        }
        if (*upload_data_size > 0) {
                char *grown = realloc(up->data, up->len + *upload_data_size + 1);

                if (!grown)
                        return MHD_NO;
                up->data = grown;
                memcpy(up->data + up->len, upload_data, *upload_data_size);
                up->len += *upload_data_size;
                *upload_data_size = 0;
                return MHD_YES;
        }

        /* No criterion assertions here: this is the sink's thread, not the test's. A request
         * that does not fit is answered but not recorded, which the tests' counts notice. */
        pthread_mutex_lock(&sink.lock);
        if (sink.n >= SINK_REQS_MAX) {
                pthread_mutex_unlock(&sink.lock);
                return MHD_NO;
        }
        rq = &sink.reqs[sink.n];
        snprintf(rq->method, sizeof(rq->method), "%s", method);
        snprintf(rq->path, sizeof(rq->path), "%s", url);
        copy_header(c, "webhook-id", rq->webhook_id, sizeof(rq->webhook_id), NULL);
        copy_header(c, "webhook-timestamp", rq->timestamp, sizeof(rq->timestamp), NULL);
        copy_header(c, "webhook-signature", rq->signature, sizeof(rq->signature), NULL);
        copy_header(c, "Authorization", rq->authorization, sizeof(rq->authorization),
                    &rq->has_authorization);
        copy_header(c, "Content-Type", rq->content_type, sizeof(rq->content_type), NULL);
        copy_header(c, "User-Agent", rq->user_agent, sizeof(rq->user_agent), NULL);
        rq->body = malloc(up->len + 1);
        if (!rq->body) {
                pthread_mutex_unlock(&sink.lock);
                return MHD_NO;
        }
        if (up->len > 0)
                memcpy(rq->body, up->data, up->len);
        rq->body[up->len] = '\0';
        rq->body_len = up->len;
        rq->at_ms = clock_mono_ms();
        a = next_answer(rq->webhook_id);
        rq->status = a.status;
        sink.n++;
        if (++sink.active > sink.peak)
                sink.peak = sink.active;
        pthread_cond_broadcast(&sink.cond);
        if (a.delay_ms > 0) {
                struct timespec until;

                clock_gettime(CLOCK_REALTIME, &until);
                until.tv_sec += a.delay_ms / 1000;
                until.tv_nsec += (long)(a.delay_ms % 1000) * 1000000;
                if (until.tv_nsec >= 1000000000) {
                        until.tv_sec++;
                        until.tv_nsec -= 1000000000;
                }
                while (!sink.stopping &&
                       pthread_cond_timedwait(&sink.cond, &sink.lock, &until) != ETIMEDOUT)
                        ;
        }
        sink.active--;
        pthread_mutex_unlock(&sink.lock);

        resp = MHD_create_response_from_buffer(a.body ? strlen(a.body) : 0, (void *)a.body,
                                               MHD_RESPMEM_MUST_COPY);
        if (!resp)
                return MHD_NO;
        if (a.retry_after)
                MHD_add_response_header(resp, "Retry-After", a.retry_after);
        if (a.location)
                MHD_add_response_header(resp, "Location", a.location);
        ret = MHD_queue_response(c, a.status, resp);
        MHD_destroy_response(resp);
        return ret;
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
        struct upload *up = *con_cls;

        (void)cls;
        (void)c;
        (void)toe;
        if (up) {
                free(up->data);
                free(up);
        }
        *con_cls = NULL;
}

static void on_connection(void *cls, struct MHD_Connection *c, void **socket_context,
                          enum MHD_ConnectionNotificationCode toe)
{
        (void)cls;
        (void)c;
        (void)socket_context;
        if (toe == MHD_CONNECTION_NOTIFY_STARTED) {
                pthread_mutex_lock(&sink.lock);
                sink.connections++;
                pthread_mutex_unlock(&sink.lock);
        }
}

static void sink_start(void)
{
        struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = 0};
        const union MHD_DaemonInfo *info;

        sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        sink.mhd = MHD_start_daemon(
            MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION | MHD_USE_ERROR_LOG, 0,
            NULL, NULL, on_request, NULL, MHD_OPTION_SOCK_ADDR, &sa, MHD_OPTION_NOTIFY_COMPLETED,
            on_completed, NULL, MHD_OPTION_NOTIFY_CONNECTION, on_connection, NULL, MHD_OPTION_END);
        cr_assert_not_null(sink.mhd, "starting the sink failed");
        info = MHD_get_daemon_info(sink.mhd, MHD_DAEMON_INFO_BIND_PORT);
        cr_assert_not_null(info);
        sink.port = info->port;
        cr_assert_gt(sink.port, 0);
}

static void sink_stop(void)
{
        pthread_mutex_lock(&sink.lock);
        sink.stopping = true;
        pthread_cond_broadcast(&sink.cond);
        pthread_mutex_unlock(&sink.lock);
        if (sink.mhd)
                MHD_stop_daemon(sink.mhd);
        sink.mhd = NULL;
        for (size_t i = 0; i < sink.n; i++)
                free(sink.reqs[i].body);
        sink.n = 0;
}

static void script(const char *webhook_id, const struct answer *answers, size_t n)
{
        struct script *s;

        cr_assert_lt(sink.n_scripts, SINK_SCRIPTS_MAX);
        cr_assert_leq(n, SINK_ANSWERS_MAX);
        pthread_mutex_lock(&sink.lock);
        s = &sink.scripts[sink.n_scripts++];
        snprintf(s->webhook_id, sizeof(s->webhook_id), "%s", webhook_id);
        memcpy(s->answers, answers, n * sizeof(answers[0]));
        s->n = n;
        pthread_mutex_unlock(&sink.lock);
}

#define SCRIPT(id, ...)                                                                            \
        do {                                                                                       \
                const struct answer a_[] = {__VA_ARGS__};                                          \
                script(id, a_, sizeof(a_) / sizeof(a_[0]));                                        \
        } while (0)

static size_t sink_count(const char *webhook_id)
{
        size_t n = 0;

        pthread_mutex_lock(&sink.lock);
        for (size_t i = 0; i < sink.n; i++)
                if (!webhook_id || strcmp(sink.reqs[i].webhook_id, webhook_id) == 0)
                        n++;
        pthread_mutex_unlock(&sink.lock);
        return n;
}

/* Reads one of the sink's counters under its lock (asserting while holding it would leave the
 * lock held for the teardown). */
static unsigned sink_read(const unsigned *counter)
{
        unsigned v;

        pthread_mutex_lock(&sink.lock);
        v = *counter;
        pthread_mutex_unlock(&sink.lock);
        return v;
}

/* How many requests went to a path other than path. */
static size_t sink_count_elsewhere(const char *path)
{
        size_t n = 0;

        pthread_mutex_lock(&sink.lock);
        for (size_t i = 0; i < sink.n; i++)
                if (strcmp(sink.reqs[i].path, path) != 0)
                        n++;
        pthread_mutex_unlock(&sink.lock);
        return n;
}

/* Indices (in arrival order) of the requests with webhook_id; returns how many. */
static size_t sink_find(const char *webhook_id, size_t *out, size_t max)
{
        size_t n = 0;

        pthread_mutex_lock(&sink.lock);
        for (size_t i = 0; i < sink.n && n < max; i++)
                if (strcmp(sink.reqs[i].webhook_id, webhook_id) == 0)
                        out[n++] = i;
        pthread_mutex_unlock(&sink.lock);
        return n;
}

/* ---- fixture: a store, the sink, a hand-built config ---- */

static struct {
        char dir[64];
        char db[128];
        struct store *store;
        struct metrics *metrics;
        struct deliver *deliver;
        struct config cfg;
        struct config_hook hooks[HOOKS_MAX];
        char urls[HOOKS_MAX][128];
} fx;

static void open_store(int busy_timeout_ms)
{
        struct store_options o = {
            .path = fx.db, .busy_timeout_ms = busy_timeout_ms, .pool_size = 2, .cache_entries = 0};
        struct ch_error err = {{0}};
        int rc;

        fx.store = store_close(fx.store);
        rc = store_open(&o, &fx.store, &err);
        cr_assert_eq(rc, 0, "store_open: %d %s", rc, err.msg);
}

static void setup(void)
{
        log_set_level(LOG_LEVEL_DEBUG);
        strcpy(fx.dir, "/tmp/ctxhookd-test-deliver-XXXXXX");
        cr_assert_not_null(mkdtemp(fx.dir));
        snprintf(fx.db, sizeof(fx.db), "%s/context.db", fx.dir);
        open_store(5000);
        sink_start();
        fx.cfg.hooks = fx.hooks;
        fx.cfg.delivery.max_in_flight = 8;
        fx.cfg.delivery.retry_base_ms = 20;
        fx.cfg.delivery.retry_max_ms = 2000;
        fx.cfg.delivery.outbox_max = 100000;
}

static void teardown(void)
{
        fx.deliver = deliver_stop(fx.deliver, 0);
        sink_stop();
        fx.store = store_close(fx.store);
        fx.metrics = metrics_free(fx.metrics);
        test_rmtree(fx.dir);
}

TestSuite(deliver, .init = setup, .fini = teardown, .timeout = 30);

/* Adds [hook "name"] posting to the sink's path (or to url_override). */
static struct config_hook *add_hook(const char *name, const char *path, const char *token)
{
        size_t i = fx.cfg.n_hooks++;
        struct config_hook *h = &fx.hooks[i];

        cr_assert_lt(i, HOOKS_MAX);
        snprintf(fx.urls[i], sizeof(fx.urls[i]), "http://127.0.0.1:%u%s", sink.port, path);
        h->name = (char *)name;
        h->url = fx.urls[i];
        h->secret = (char *)SECRET;
        h->bearer_token = (char *)(token ? token : "");
        h->timeout_ms = 5000;
        h->max_attempts = 8;
        return h;
}

static void with_metrics(void)
{
        const char *names[HOOKS_MAX];

        fx.metrics = metrics_new();
        cr_assert_not_null(fx.metrics);
        for (size_t i = 0; i < fx.cfg.n_hooks; i++)
                names[i] = fx.hooks[i].name;
        cr_assert_eq(metrics_set_hooks(fx.metrics, names, fx.cfg.n_hooks), 0);
}

static void start(void)
{
        struct ch_error err = {{0}};
        int rc = deliver_start(&fx.cfg, fx.store, fx.metrics, &fx.deliver, &err);

        cr_assert_eq(rc, 0, "deliver_start: %d %s", rc, err.msg);
        cr_assert_not_null(fx.deliver);
}

static void enqueue_clear(const char *hook, const char *conv, const char *id, const char *body,
                          const char *clear)
{
        struct store_enqueue e = {.hook = hook,
                                  .account = ACC,
                                  .conversation = conv,
                                  .webhook_id = id,
                                  .body = body,
                                  .body_len = strlen(body),
                                  .clear_namespaces = clear};
        int rc = store_outbox_enqueue(fx.store, NULL, &e, 1, clock_wall_ms());

        cr_assert_eq(rc, 0, "enqueue %s: %d", id, rc);
}

static void enqueue(const char *hook, const char *conv, const char *id, const char *body)
{
        enqueue_clear(hook, conv, id, body, NULL);
}

static int64_t depth(void)
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

/* Polls cond every 5 ms for up to timeout_ms; evaluates to whether it became true. */
#define WAIT_UNTIL(cond, timeout_ms)                                                               \
        __extension__({                                                                            \
                int64_t until_ = clock_mono_ms() + (timeout_ms);                                   \
                bool ok_;                                                                          \
                while (!(ok_ = (cond)) && clock_mono_ms() < until_)                                \
                        usleep(5000);                                                              \
                ok_;                                                                               \
        })

/* The reason of the dead letter whose raw text contains marker (caller frees), or NULL. */
static char *dead_reason(const char *marker)
{
        json_t *list = NULL, *item;
        size_t i;
        char *reason = NULL;

        cr_assert_eq(store_dead_list(fx.store, 0, 1000, &list), 0);
        json_array_foreach(list, i, item)
        {
                const char *raw = json_string_value(json_object_get(item, "raw"));
                const char *r = json_string_value(json_object_get(item, "reason"));

                if (raw && r && strstr(raw, marker)) {
                        reason = strdup(r);
                        break;
                }
        }
        json_decref(list);
        return reason;
}

static char *render_metrics(void)
{
        struct buf b;

        buf_init(&b, 1 << 20);
        cr_assert_eq(metrics_render(fx.metrics, &b), 0);
        return buf_take(&b, NULL);
}

static bool metrics_contain(const char *line)
{
        char *text = render_metrics();
        bool found = strstr(text, line) != NULL;

        free(text);
        return found;
}

/* Sends stderr (the log) to a file until log_end(), which returns what was written. */
static int log_begin(const char *name)
{
        char p[192];
        int fd, saved;

        snprintf(p, sizeof(p), "%s/%s", fx.dir, name);
        fd = open(p, O_CREAT | O_WRONLY | O_TRUNC, 0600);
        cr_assert_geq(fd, 0);
        saved = dup(2);
        cr_assert_geq(saved, 0);
        dup2(fd, 2);
        close(fd);
        return saved;
}

static char *log_end(int saved, const char *name)
{
        char p[192], *text;
        FILE *f;
        size_t n;

        dup2(saved, 2);
        close(saved);
        snprintf(p, sizeof(p), "%s/%s", fx.dir, name);
        f = fopen(p, "r");
        cr_assert_not_null(f);
        text = calloc(1, 1 << 20);
        cr_assert_not_null(text);
        n = fread(text, 1, (1 << 20) - 1, f);
        text[n] = '\0';
        fclose(f);
        return text;
}

static size_t count_of(const char *text, const char *needle)
{
        size_t n = 0;

        for (const char *p = strstr(text, needle); p; p = strstr(p + 1, needle))
                n++;
        return n;
}

/* A port nothing listens on: bound once by us, then closed. */
static unsigned closed_port(void)
{
        struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = 0};
        socklen_t len = sizeof(sa);
        int fd = socket(AF_INET, SOCK_STREAM, 0);

        sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        cr_assert_geq(fd, 0);
        cr_assert_eq(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
        cr_assert_eq(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
        close(fd);
        return ntohs(sa.sin_port);
}

/* The Standard Webhooks signature computed here with OpenSSL, independently of sign.c. */
static void expected_signature(const char *id, const char *ts, const char *body, size_t len,
                               char out[64])
{
        const char *b64 = SECRET + strlen("whsec_");
        unsigned char key[64], mac[EVP_MAX_MD_SIZE];
        unsigned int mac_len = 0;
        int key_len = EVP_DecodeBlock(key, (const unsigned char *)b64, (int)strlen(b64));
        struct buf msg;

        cr_assert_eq(key_len, 24); /* 32 base64 characters, no padding */
        buf_init(&msg, 1 << 20);
        cr_assert_eq(buf_printf(&msg, "%s.%s.", id, ts), 0);
        cr_assert_eq(buf_append(&msg, body, len), 0);
        cr_assert_not_null(
            HMAC(EVP_sha256(), key, key_len, (unsigned char *)msg.data, msg.len, mac, &mac_len));
        buf_free(&msg);
        strcpy(out, "v1,");
        cr_assert_eq(EVP_EncodeBlock((unsigned char *)out + 3, mac, (int)mac_len), 44);
}

/* ---- back-off and Retry-After ---- */

Test(backoff, full_jitter_within_the_doubling_bound)
{
        for (int64_t attempt = 1; attempt <= 12; attempt++) {
                int64_t bound = 100 << (attempt - 1), lo = INT64_MAX, hi = -1;

                if (bound > 5000)
                        bound = 5000;
                for (int i = 0; i < 2000; i++) {
                        int64_t v = deliver_backoff_ms(attempt, 100, 5000, -1);

                        cr_assert_geq(v, 0);
                        cr_assert_leq(v, bound, "attempt %lld: %lld > %lld", (long long)attempt,
                                      (long long)v, (long long)bound);
                        lo = v < lo ? v : lo;
                        hi = v > hi ? v : hi;
                }
                /* Uniform over [0, bound]: 2000 samples reach both ends of the range. */
                cr_assert_lt(lo, bound / 10 + 1, "attempt %lld: smallest %lld", (long long)attempt,
                             (long long)lo);
                cr_assert_gt(hi, bound * 9 / 10, "attempt %lld: largest %lld", (long long)attempt,
                             (long long)hi);
        }
}

Test(backoff, capped_and_never_overflowing)
{
        for (int i = 0; i < 1000; i++) {
                int64_t v = deliver_backoff_ms(200, 1000, 60000, -1);

                cr_assert(v >= 0 && v <= 60000, "%lld", (long long)v);
                v = deliver_backoff_ms(INT64_MAX, INT64_MAX / 2, INT64_MAX, -1);
                cr_assert_geq(v, 0);
        }
        cr_assert_eq(deliver_backoff_ms(3, 0, 1000, -1), 0);
        cr_assert_eq(deliver_backoff_ms(1, 100, 0, -1), 0);
}

Test(backoff, retry_after_is_used_and_capped)
{
        cr_assert_eq(deliver_backoff_ms(1, 100, 5000, 1234), 1234);
        cr_assert_eq(deliver_backoff_ms(7, 100, 5000, 0), 0);
        cr_assert_eq(deliver_backoff_ms(2, 100, 5000, 3600000), 5000);
}

Test(retry_after, delta_seconds)
{
        cr_assert_eq(deliver_parse_retry_after("120", T0), 120000);
        cr_assert_eq(deliver_parse_retry_after("0", T0), 0);
        cr_assert_eq(deliver_parse_retry_after(" 7 ", T0), 7000);
        cr_assert_gt(deliver_parse_retry_after("99999999999999999999999", T0), 1000000);
}

Test(retry_after, garbage_is_minus_one)
{
        const char *bad[] = {"-1", "garbage", "", "   ", "1.5", "12abc", "+3", "0x10"};

        cr_assert_eq(deliver_parse_retry_after(NULL, T0), -1);
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
                cr_assert_eq(deliver_parse_retry_after(bad[i], T0), -1, "'%s'", bad[i]);
}

Test(retry_after, http_dates)
{
        cr_assert_eq(deliver_parse_retry_after("Fri, 15 Jan 2027 08:00:30 GMT", T0), 30000);
        cr_assert_eq(deliver_parse_retry_after("Fri, 15 Jan 2027 08:00:30 GMT", T0 + 250), 29750);
        /* A date in the past means "now". */
        cr_assert_eq(deliver_parse_retry_after("Fri, 15 Jan 2027 07:43:20 GMT", T0), 0);
}

/* ---- delivery ---- */

Test(deliver, posts_the_exact_body_signed_with_bearer_only_when_configured)
{
        char body[4096], expect[64], *logtext;
        struct sign_key key;
        struct ch_error err = {{0}};
        size_t idx[4];
        int saved;
        long n;

        /* > 1 KiB, non-ASCII UTF-8, escapes: byte-exact through the store and the wire. */
        n = snprintf(body, sizeof(body),
                     "{\"timestamp\":1,\"payload\":{\"note\":\"caf\xc3\xa9 \\u00e9 \\\"q\\\" "
                     "SECRET-BODY-MARKER\",\"pad\":\"");
        memset(body + n, 'x', 2000);
        strcpy(body + n + 2000, "\"}}");

        add_hook("with-token", "/fn/a", TOKEN);
        add_hook("no-token", "/fn/b", NULL);
        with_metrics();

        saved = log_begin("log");
        start();
        enqueue("with-token", "conv-1", "msg_e1_with-token", body);
        enqueue("no-token", "conv-1", "msg_e1_no-token", body);
        deliver_wake(fx.deliver);
        cr_assert(WAIT_UNTIL(depth() == 0, 5000), "outbox not drained: %lld", (long long)depth());
        fx.deliver = deliver_stop(fx.deliver, 1000);
        logtext = log_end(saved, "log");

        cr_assert_eq(sign_key_parse(SECRET, &key, &err), 0, "%s", err.msg);
        cr_assert_eq(sink_count(NULL), 2);
        for (int k = 0; k < 2; k++) {
                const char *id = k == 0 ? "msg_e1_with-token" : "msg_e1_no-token";
                const struct request *rq;
                long long ts;

                cr_assert_eq(sink_find(id, idx, 4), 1, "%s", id);
                rq = &sink.reqs[idx[0]];
                cr_assert_str_eq(rq->method, "POST");
                cr_assert_str_eq(rq->path, k == 0 ? "/fn/a" : "/fn/b");
                cr_assert_eq(rq->body_len, strlen(body));
                cr_assert_eq(memcmp(rq->body, body, rq->body_len), 0, "body changed on the way");
                cr_assert_str_eq(rq->content_type, "application/json");
                cr_assert_str_eq(rq->user_agent, "ctxhookd/" CTXHOOKD_VERSION);
                ts = atoll(rq->timestamp);
                cr_assert(ts > clock_wall_ms() / 1000 - 60 && ts <= clock_wall_ms() / 1000,
                          "timestamp %s", rq->timestamp);
                cr_assert_eq(sign_verify(&key, id, ts, rq->body, rq->body_len, rq->signature), 1,
                             "signature %s does not verify", rq->signature);
                expected_signature(id, rq->timestamp, body, strlen(body), expect);
                cr_assert_str_eq(rq->signature, expect);
                /* Signed over this id: the other delivery's signature must not verify. */
                cr_assert_eq(sign_verify(&key, k == 0 ? "msg_e1_no-token" : "msg_e1_with-token", ts,
                                         rq->body, rq->body_len, rq->signature),
                             0);
                if (k == 0) {
                        cr_assert(rq->has_authorization);
                        cr_assert_str_eq(rq->authorization, "Bearer " TOKEN);
                } else {
                        cr_assert_not(rq->has_authorization, "Authorization: %s",
                                      rq->authorization);
                }
        }
        cr_assert(metrics_contain("ctxhookd_deliveries_total{hook=\"with-token\",result="
                                  "\"delivered\"} 1\n"));
        cr_assert(metrics_contain("ctxhookd_deliveries_total{hook=\"no-token\",result="
                                  "\"delivered\"} 1\n"));
        cr_assert(metrics_contain("ctxhookd_delivery_duration_seconds_count 2\n"));

        /* The log says what happened, and neither the token nor the body. */
        cr_assert_gt(strlen(logtext), 0, "nothing logged at debug level");
        cr_assert(strstr(logtext, "msg") || strstr(logtext, "conv-1"), "log: %s", logtext);
        cr_assert_null(strstr(logtext, TOKEN), "the bearer token was logged");
        cr_assert_null(strstr(logtext, "SECRET-BODY-MARKER"), "the body was logged");
        cr_assert_null(strstr(logtext, "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"), "the secret leaked");
        free(logtext);
}

Test(deliver, at_most_max_in_flight_calls_at_once)
{
        add_hook("h", "/busy", NULL);
        fx.cfg.delivery.max_in_flight = 2;
        for (int c = 0; c < 6; c++) {
                char id[16], conv[16];

                snprintf(id, sizeof(id), "msg_p%d", c);
                snprintf(conv, sizeof(conv), "conv-%d", c);
                SCRIPT(id, {.status = 200, .delay_ms = 150});
                enqueue("h", conv, id, "{}");
        }
        start();
        cr_assert(WAIT_UNTIL(depth() == 0, 5000), "not delivered: %lld left", (long long)depth());
        cr_assert_eq(sink_count(NULL), 6);
        cr_assert_eq(sink_read(&sink.peak), 2, "%u calls at once with max_in_flight = 2",
                     sink_read(&sink.peak));
}

Test(deliver, retries_keep_the_webhook_id_and_back_off_more_each_time)
{
        enum { CONVS = 12, FAILS = 4 };
        double mean_first = 0, mean_last = 0;
        const int64_t slack = 400;

        add_hook("h", "/retry", NULL);
        fx.cfg.hooks[0].max_attempts = 10;
        fx.cfg.delivery.retry_base_ms = 20;
        fx.cfg.delivery.retry_max_ms = 10000;
        with_metrics();
        for (int c = 0; c < CONVS; c++) {
                char id[32], conv[32];

                snprintf(id, sizeof(id), "msg_r%d", c);
                snprintf(conv, sizeof(conv), "conv-%d", c);
                SCRIPT(id, {.status = 503}, {.status = 500}, {.status = 408}, {.status = 502});
                enqueue("h", conv, id, "{\"n\":1}");
        }
        start();
        cr_assert(WAIT_UNTIL(depth() == 0, 10000), "not delivered: %lld left", (long long)depth());

        for (int c = 0; c < CONVS; c++) {
                char id[32];
                size_t idx[8], n;

                snprintf(id, sizeof(id), "msg_r%d", c);
                n = sink_find(id, idx, 8);
                cr_assert_eq(n, FAILS + 1, "%s: %zu requests", id, n);
                for (int k = 1; k <= FAILS; k++) {
                        int64_t gap = sink.reqs[idx[k]].at_ms - sink.reqs[idx[k - 1]].at_ms;
                        int64_t bound = (int64_t)20 << (k - 1);

                        cr_assert_str_eq(sink.reqs[idx[k]].webhook_id, id);
                        cr_assert_leq(gap, bound + slack, "%s retry %d after %lld ms", id, k,
                                      (long long)gap);
                        if (k == 1)
                                mean_first += (double)gap / CONVS;
                        if (k == FAILS)
                                mean_last += (double)gap / CONVS;
                }
        }
        /* Full jitter: uniform in [0, 20] for the first retry, [0, 160] for the fourth; means
         * 10 and 80 ms. */
        cr_assert_gt(mean_last, mean_first + 25,
                     "first retries after %.1f ms on average, "
                     "fourth after %.1f ms",
                     mean_first, mean_last);
        cr_assert(metrics_contain("ctxhookd_deliveries_total{hook=\"h\",result=\"retry\"} 48\n"));
        cr_assert(
            metrics_contain("ctxhookd_deliveries_total{hook=\"h\",result=\"delivered\"} 12\n"));
        cr_assert_eq(dead_count(), 0);
}

Test(deliver, retry_after_is_honoured_and_capped)
{
        size_t a[4], b[4];
        int64_t gap;

        add_hook("h", "/ra", NULL);
        fx.cfg.delivery.retry_base_ms = 20;
        fx.cfg.delivery.retry_max_ms = 1500;
        SCRIPT("msg_ra1", {.status = 429, .retry_after = "1"});
        SCRIPT("msg_ra2", {.status = 503, .retry_after = "3600"});
        enqueue("h", "conv-a", "msg_ra1", "{}");
        enqueue("h", "conv-b", "msg_ra2", "{}");
        start();
        cr_assert(WAIT_UNTIL(depth() == 0, 6000), "not delivered");

        cr_assert_eq(sink_find("msg_ra1", a, 4), 2);
        gap = sink.reqs[a[1]].at_ms - sink.reqs[a[0]].at_ms;
        cr_assert_geq(gap, 995, "Retry-After: 1 but retried after %lld ms", (long long)gap);
        cr_assert_lt(gap, 1000 + 800, "retried after %lld ms", (long long)gap);

        cr_assert_eq(sink_find("msg_ra2", b, 4), 2);
        gap = sink.reqs[b[1]].at_ms - sink.reqs[b[0]].at_ms;
        cr_assert_geq(gap, 1495, "capped Retry-After, but retried after %lld ms", (long long)gap);
        cr_assert_lt(gap, 1500 + 800, "Retry-After: 3600 not capped at retry_max_ms (%lld ms)",
                     (long long)gap);
}

Test(deliver, client_errors_and_redirects_are_dead_letters_at_once)
{
        char big[3000], *reason;

        /* A long answer with control characters: quoted short, on one line. */
        memset(big, 'z', sizeof(big) - 1);
        big[sizeof(big) - 1] = '\0';
        memcpy(big, "no such function\n\x01\x02", 19);

        add_hook("h", "/gone", NULL);
        with_metrics();
        SCRIPT("msg_404", {.status = 404, .body = big});
        SCRIPT("msg_302", {.status = 302, .location = "/followed"});
        SCRIPT("msg_400", {.status = 400, .body = "bad"});
        enqueue("h", "c1", "msg_404", "{\"m\":\"DEAD-404\"}");
        enqueue("h", "c2", "msg_302", "{\"m\":\"DEAD-302\"}");
        enqueue("h", "c3", "msg_400", "{\"m\":\"DEAD-400\"}");
        start();
        cr_assert(WAIT_UNTIL(dead_count() == 3 && depth() == 0, 5000), "dead %lld, depth %lld",
                  (long long)dead_count(), (long long)depth());

        cr_assert_eq(sink_count("msg_404"), 1, "a 404 was retried");
        cr_assert_eq(sink_count("msg_302"), 1, "a 302 was retried or followed");
        cr_assert_eq(sink_count("msg_400"), 1);
        cr_assert_eq(sink_count_elsewhere("/gone"), 0, "the redirect was followed");

        reason = dead_reason("DEAD-404");
        cr_assert_not_null(reason);
        cr_assert(strstr(reason, "HTTP 404 from http://127.0.0.1:"), "%s", reason);
        cr_assert(strstr(reason, "/gone: no such function"), "%s", reason);
        cr_assert_null(strchr(reason, '\n'), "%s", reason);
        cr_assert_lt(strlen(reason), 200 + 100, "the whole answer was quoted: %zu bytes",
                     strlen(reason));
        cr_assert(strstr(reason, "zzzz"), "%s", reason);
        free(reason);
        reason = dead_reason("DEAD-302");
        cr_assert_not_null(reason);
        cr_assert(strstr(reason, "HTTP 302") && strstr(reason, "redirects are not followed"), "%s",
                  reason);
        free(reason);
        reason = dead_reason("DEAD-400");
        cr_assert_not_null(reason);
        cr_assert(strstr(reason, "HTTP 400") && strstr(reason, ": bad"), "%s", reason);
        free(reason);

        cr_assert(metrics_contain("ctxhookd_deliveries_total{hook=\"h\",result=\"dead\"} 3\n"));
        cr_assert(metrics_contain("ctxhookd_deliveries_total{hook=\"h\",result=\"retry\"} 0\n"));
        /* The tick publishes the gauges. */
        cr_assert(WAIT_UNTIL(metrics_contain("\nctxhookd_dead_letters 3\n"), 3000));
        cr_assert(metrics_contain("\nctxhookd_outbox_depth 0\n"));
}

Test(deliver, max_attempts_then_dead_letter_naming_the_last_error)
{
        char *reason;

        add_hook("flaky", "/flaky", NULL);
        add_hook("closed", "/x", NULL);
        snprintf(fx.urls[1], sizeof(fx.urls[1]), "http://127.0.0.1:%u/x", closed_port());
        fx.cfg.hooks[0].max_attempts = 3;
        fx.cfg.hooks[1].max_attempts = 2;
        SCRIPT("msg_flaky", {.status = 503, .body = "busy"}, {.status = 503, .body = "busy"},
               {.status = 503, .body = "still busy"}, {.status = 200});
        enqueue("flaky", "c1", "msg_flaky", "{\"m\":\"FLAKY\"}");
        enqueue("closed", "c1", "msg_closed", "{\"m\":\"CLOSED\"}");
        start();
        cr_assert(WAIT_UNTIL(dead_count() == 2 && depth() == 0, 5000), "dead %lld, depth %lld",
                  (long long)dead_count(), (long long)depth());

        cr_assert_eq(sink_count("msg_flaky"), 3, "max_attempts = 3");
        reason = dead_reason("FLAKY");
        cr_assert_not_null(reason);
        cr_assert(strstr(reason, "3 attempts"), "%s", reason);
        cr_assert(strstr(reason, "HTTP 503") && strstr(reason, "still busy"), "%s", reason);
        free(reason);
        reason = dead_reason("CLOSED");
        cr_assert_not_null(reason);
        cr_assert(strstr(reason, "2 attempts"), "%s", reason);
        cr_assert(strstr(reason, "127.0.0.1"), "%s", reason);
        free(reason);
}

Test(deliver, a_slow_answer_times_out_and_is_retried)
{
        size_t idx[4];
        int64_t gap;

        add_hook("slow", "/slow", NULL);
        fx.cfg.hooks[0].timeout_ms = 300;
        SCRIPT("msg_slow", {.status = 200, .delay_ms = 3000});
        enqueue("slow", "c1", "msg_slow", "{}");
        start();
        cr_assert(WAIT_UNTIL(depth() == 0, 5000), "not delivered");
        cr_assert_eq(sink_find("msg_slow", idx, 4), 2, "the time-out was not retried");
        gap = sink.reqs[idx[1]].at_ms - sink.reqs[idx[0]].at_ms;
        cr_assert_geq(gap, 200, "retried after %lld ms, before the time-out", (long long)gap);
        cr_assert_lt(gap, 2500, "the time-out did not cut the call short (%lld ms)",
                     (long long)gap);
        cr_assert_eq(dead_count(), 0);
}

Test(deliver, one_conversation_waits_for_its_failing_delivery_others_flow)
{
        size_t a1[4], a2[4], b[3][4];

        add_hook("h", "/order", NULL);
        fx.cfg.delivery.retry_base_ms = 20;
        /* A1 fails twice, the first time asking for a 1 s pause, so B has time to flow. */
        SCRIPT("msg_A1", {.status = 503, .retry_after = "1"}, {.status = 503});
        enqueue("h", "conv-A", "msg_A1", "{\"e\":\"A1\"}");
        enqueue("h", "conv-A", "msg_A2", "{\"e\":\"A2\"}");
        enqueue("h", "conv-B", "msg_B1", "{\"e\":\"B1\"}");
        enqueue("h", "conv-B", "msg_B2", "{\"e\":\"B2\"}");
        enqueue("h", "conv-B", "msg_B3", "{\"e\":\"B3\"}");
        start();
        cr_assert(WAIT_UNTIL(depth() == 0, 6000), "not delivered: %lld left", (long long)depth());

        cr_assert_eq(sink_count(NULL), 7);
        cr_assert_eq(sink_find("msg_A1", a1, 4), 3);
        cr_assert_eq(sink_find("msg_A2", a2, 4), 1, "A2 sent more than once");
        cr_assert_gt(a2[0], a1[2], "A2 went out before A1 succeeded");
        for (int k = 0; k < 3; k++) {
                char id[16];

                snprintf(id, sizeof(id), "msg_B%d", k + 1);
                cr_assert_eq(sink_find(id, b[k], 4), 1);
                cr_assert_lt(b[k][0], a1[1], "%s waited for conversation A's retry", id);
                if (k > 0)
                        cr_assert_gt(b[k][0], b[k - 1][0], "conversation B out of order");
        }
}

Test(deliver, clear_after_deletes_the_notes_once_delivered)
{
        json_t *notes, *props = NULL;
        int64_t now = clock_wall_ms();

        add_hook("ok", "/ok", NULL);
        add_hook("bad", "/bad", NULL);
        SCRIPT("msg_cy", {.status = 404});
        notes = json_pack("{s:s}", "note", "call back tomorrow");
        cr_assert_not_null(notes);
        cr_assert_eq(
            store_props_merge(fx.store, ACC, "agentNotes", "conv-x", notes, NULL, now, NULL), 0);
        cr_assert_eq(store_props_merge(fx.store, ACC, "routing", "conv-x", notes, NULL, now, NULL),
                     0);
        cr_assert_eq(
            store_props_merge(fx.store, ACC, "agentNotes", "conv-y", notes, NULL, now, NULL), 0);
        json_decref(notes);
        enqueue_clear("ok", "conv-x", "msg_cx", "{}", "[\"agentNotes\"]");
        enqueue_clear("bad", "conv-y", "msg_cy", "{}", "[\"agentNotes\"]");
        start();
        cr_assert(WAIT_UNTIL(depth() == 0 && dead_count() == 1, 5000), "not finished");

        now = clock_wall_ms();
        cr_assert_eq(
            store_props_get(fx.store, ACC, "agentNotes", "conv-x", NULL, now, &props, NULL), 0);
        cr_assert_eq(json_object_size(props), 0, "delivered, but the notes are still there");
        json_decref(props);
        cr_assert_eq(store_props_get(fx.store, ACC, "routing", "conv-x", NULL, now, &props, NULL),
                     0);
        cr_assert_eq(json_object_size(props), 1, "a namespace not named was cleared");
        json_decref(props);
        cr_assert_eq(
            store_props_get(fx.store, ACC, "agentNotes", "conv-y", NULL, now, &props, NULL), 0);
        cr_assert_eq(json_object_size(props), 1, "a dead delivery cleared its notes");
        json_decref(props);
}

Test(deliver, a_delivery_for_an_unconfigured_hook_is_a_dead_letter)
{
        char *reason;

        add_hook("h", "/h", NULL);
        enqueue("removed-hook", "c1", "msg_gone", "{\"m\":\"NOHOOK\"}");
        enqueue("h", "c1", "msg_here", "{}");
        start();
        cr_assert(WAIT_UNTIL(depth() == 0 && dead_count() == 1, 5000), "not finished");
        reason = dead_reason("NOHOOK");
        cr_assert_not_null(reason);
        cr_assert_str_eq(reason,
                         "hook 'removed-hook' is not configured (any more: removed by a reload?)");
        free(reason);
        cr_assert_eq(sink_count("msg_gone"), 0);
        cr_assert_eq(sink_count("msg_here"), 1);
}

Test(deliver, wake_sends_at_once_instead_of_at_the_next_tick)
{
        int64_t t0, progress;

        add_hook("h", "/wake", NULL);
        start();
        usleep(50 * 1000);
        t0 = clock_mono_ms();
        /* One after the other: without the wake-up each would wait for the 1 s tick. */
        for (int i = 0; i < 5; i++) {
                char id[16];

                snprintf(id, sizeof(id), "msg_w%d", i);
                enqueue("h", "c1", id, "{}");
                deliver_wake(fx.deliver);
                cr_assert(WAIT_UNTIL(sink_count(id) == 1, 3000), "%s not delivered", id);
        }
        cr_assert_lt(clock_mono_ms() - t0, 2500, "5 woken deliveries took %lld ms",
                     (long long)(clock_mono_ms() - t0));
        cr_assert_eq(sink_read(&sink.connections), 1, "keep-alive: %u connections for 5 calls",
                     sink_read(&sink.connections));
        progress = deliver_last_progress_ms(fx.deliver);
        cr_assert(progress > clock_mono_ms() - 2000 && progress <= clock_mono_ms(), "progress %lld",
                  (long long)progress);
}

Test(deliver, stop_abandons_a_call_after_the_grace_and_it_is_claimable_again)
{
        struct store_delivery *got = NULL;
        size_t n = 0;
        int64_t t0, took;

        add_hook("slow", "/slow", NULL);
        fx.cfg.hooks[0].timeout_ms = 20000;
        SCRIPT("msg_stuck", {.status = 200, .delay_ms = 20000});
        enqueue("slow", "c1", "msg_stuck", "{\"m\":\"STUCK\"}");
        start();
        cr_assert(WAIT_UNTIL(sink_count("msg_stuck") == 1, 5000), "not sent");

        t0 = clock_mono_ms();
        fx.deliver = deliver_stop(fx.deliver, 300);
        took = clock_mono_ms() - t0;
        cr_assert_geq(took, 290, "did not wait for the grace period (%lld ms)", (long long)took);
        cr_assert_lt(took, 300 + 1000, "stop took %lld ms", (long long)took);

        cr_assert_eq(depth(), 1, "the abandoned delivery is gone");
        cr_assert_eq(dead_count(), 0);
        cr_assert_eq(store_outbox_claim(fx.store, clock_wall_ms(), 60000, 10, &got, &n), 0);
        cr_assert_eq(n, 1, "the abandoned delivery cannot be claimed again");
        cr_assert_str_eq(got[0].webhook_id, "msg_stuck");
        cr_assert_eq(got[0].attempts, 0, "an abandoned call counted as an attempt");
        store_deliveries_free(got, n);
}

Test(deliver, stop_lets_a_call_in_flight_finish_within_the_grace)
{
        int64_t t0, took;

        add_hook("h", "/h", NULL);
        SCRIPT("msg_fin", {.status = 200, .delay_ms = 300});
        enqueue("h", "c1", "msg_fin", "{}");
        start();
        cr_assert(WAIT_UNTIL(sink_count("msg_fin") == 1, 5000), "not sent");

        t0 = clock_mono_ms();
        fx.deliver = deliver_stop(fx.deliver, 10000);
        took = clock_mono_ms() - t0;
        cr_assert_lt(took, 5000, "stop waited for the whole grace (%lld ms)", (long long)took);
        cr_assert_eq(depth(), 0, "the answered call was not recorded as delivered");
        cr_assert_eq(sink_count("msg_fin"), 1);

        /* Nothing in flight: stop returns at once whatever the grace. */
        start();
        t0 = clock_mono_ms();
        fx.deliver = deliver_stop(fx.deliver, 10000);
        cr_assert_lt(clock_mono_ms() - t0, 1000);
}

Test(deliver, keeps_going_through_store_failures)
{
        sqlite3 *db = NULL;
        char *logtext;
        int saved;

        /* Writers give up after 100 ms, so claims fail while another process holds the lock. */
        open_store(100);
        add_hook("h", "/h", NULL);
        enqueue("h", "c1", "msg_locked", "{}");
        cr_assert_eq(sqlite3_open(fx.db, &db), SQLITE_OK);
        cr_assert_eq(sqlite3_exec(db, "BEGIN EXCLUSIVE", NULL, NULL, NULL), SQLITE_OK);

        saved = log_begin("log");
        start();
        usleep(1500 * 1000);
        cr_assert_eq(sink_count(NULL), 0, "claimed through an exclusive lock?");
        cr_assert_eq(sqlite3_exec(db, "COMMIT", NULL, NULL, NULL), SQLITE_OK);
        sqlite3_close(db);
        cr_assert(WAIT_UNTIL(sink_count("msg_locked") == 1 && depth() == 0, 5000),
                  "the thread gave up after the store failed");
        fx.deliver = deliver_stop(fx.deliver, 1000);
        logtext = log_end(saved, "log");

        /* Warned once (not once per failed claim), and told when it recovered. */
        cr_assert_eq(count_of(logtext, "<4>delivery: "), 1, "log: %s", logtext);
        cr_assert_eq(count_of(logtext, "the store works again"), 1, "log: %s", logtext);
        free(logtext);
}

/* ---- reload ---- */

/* The config a reload hands over; static, as the deliverer keeps pointing at it. */
static struct config next_cfg;
static struct config_hook next_hooks[2];
static char next_urls[2][128];

static const char *path_of(const char *webhook_id)
{
        size_t idx[2];

        if (sink_find(webhook_id, idx, 2) != 1)
                return "(not exactly once)";
        return sink.reqs[idx[0]].path;
}

Test(deliver, reconfigure_changes_hooks_and_lets_calls_in_flight_finish)
{
        struct ch_error err = {{0}};
        struct buf out;
        char *reason;

        add_hook("a", "/a-old", NULL);
        add_hook("gone", "/gone", NULL);
        with_metrics();
        SCRIPT("msg_inflight", {.status = 200, .delay_ms = 700});
        enqueue("a", "c1", "msg_inflight", "{}");
        start();
        cr_assert(WAIT_UNTIL(sink_count("msg_inflight") == 1, 5000), "not sent");

        /* The reload: a moves to another URL, gone goes, b comes. */
        next_cfg = fx.cfg;
        next_cfg.hooks = next_hooks;
        next_cfg.n_hooks = 2;
        next_hooks[0] = fx.hooks[0];
        snprintf(next_urls[0], sizeof(next_urls[0]), "http://127.0.0.1:%u/a-new", sink.port);
        next_hooks[0].url = next_urls[0];
        next_hooks[1] = fx.hooks[0];
        next_hooks[1].name = (char *)"b";
        snprintf(next_urls[1], sizeof(next_urls[1]), "http://127.0.0.1:%u/b", sink.port);
        next_hooks[1].url = next_urls[1];
        cr_assert_eq(deliver_reconfigure(fx.deliver, &next_cfg, &err), 0, "%s", err.msg);
        /* The old config is no longer looked at: wreck it. */
        memset(fx.urls, 0, sizeof(fx.urls));
        memset(fx.hooks, 0, sizeof(fx.hooks));

        enqueue("a", "c2", "msg_a_new", "{}");
        enqueue("b", "c3", "msg_b", "{}");
        enqueue("gone", "c4", "msg_gone", "{\"m\":\"GONE\"}");
        deliver_wake(fx.deliver);
        cr_assert(WAIT_UNTIL(depth() == 0 && dead_count() == 1, 5000), "not finished: depth %lld",
                  (long long)depth());
        /* The call in flight finished where it started, once; the rest follow the new hooks. */
        cr_assert_str_eq(path_of("msg_inflight"), "/a-old");
        cr_assert_str_eq(path_of("msg_a_new"), "/a-new");
        cr_assert_str_eq(path_of("msg_b"), "/b");
        cr_assert_eq(sink_count("msg_gone"), 0);
        reason = dead_reason("GONE");
        cr_assert_not_null(reason);
        cr_assert(strstr(reason, "hook 'gone' is not configured"), "%s", reason);
        free(reason);
        /* The counters know the new hook, and a keeps counting. */
        buf_init(&out, 1 << 20);
        cr_assert_eq(metrics_render(fx.metrics, &out), 0);
        cr_assert(
            strstr(out.data, "ctxhookd_deliveries_total{hook=\"a\",result=\"delivered\"} 2\n"),
            "%s", out.data);
        cr_assert(
            strstr(out.data, "ctxhookd_deliveries_total{hook=\"b\",result=\"delivered\"} 1\n"),
            "%s", out.data);
        buf_free(&out);
}

Test(deliver, reconfigure_with_a_bad_secret_changes_nothing)
{
        struct ch_error err = {{0}};

        add_hook("a", "/a", NULL);
        start();
        next_cfg = fx.cfg;
        next_cfg.hooks = next_hooks;
        next_cfg.n_hooks = 1;
        next_hooks[0] = fx.hooks[0];
        next_hooks[0].url = (char *)"http://127.0.0.1:1/never";
        next_hooks[0].secret = (char *)"whsec_not*base64";
        cr_assert_lt(deliver_reconfigure(fx.deliver, &next_cfg, &err), 0);
        cr_assert(strstr(err.msg, "hook 'a'"), "%s", err.msg);
        enqueue("a", "c1", "msg_still", "{}");
        deliver_wake(fx.deliver);
        cr_assert(WAIT_UNTIL(depth() == 0, 5000), "not delivered with the old hooks");
        cr_assert_str_eq(path_of("msg_still"), "/a");
}
