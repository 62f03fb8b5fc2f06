/* A webhook receiver for the integration tests: a libmicrohttpd server on 127.0.0.1 that
 * records every request it gets as one JSON line in a file and answers with a status the test
 * chose (always one code, or failures for the first attempts of each webhook-id or of one
 * conversation, optionally with Retry-After and a delay). It verifies each request's Standard
 * Webhooks signature itself, with OpenSSL directly rather than the daemon's sign module, so a
 * signing bug in the daemon cannot hide behind the same bug in the checker. The port is the
 * first line of stdout; it runs until SIGTERM or SIGINT, or until its parent exits.
 *
 * Usage: webhook_sink --out FILE [--port P] [--secret whsec_…] [--status CODE]
 *                     [--fail-first N] [--retry-after S] [--delay-ms D]
 *                     [--fail-conversation ID:N]…
 *
 * Each line: {"n", "method", "path", "webhook_id", "timestamp", "signature", "signature_ok",
 * "authorization", "content_type", "attempt", "received_ms", "body", "body_raw"?, "status"}:
 * n counts requests from 1, attempt counts requests with the same webhook-id, timestamp is
 * the webhook-timestamp header as a number, received_ms the wall clock in milliseconds,
 * body the parsed JSON (null when it is not JSON; body_raw then holds the text). The line is
 * written, and flushed, before the answer goes out: whatever the daemon saw answered is in
 * the file. */
#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <microhttpd.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#define BODY_CAP       (16u << 20)
#define KEY_MAX        64
#define ID_BUCKETS     4096
#define FAIL_CONV_MAX  16
#define SIG_B64_LEN    44 /* base64 of 32 bytes */
#define STATUS_DEFAULT 200

struct id_count {
        struct id_count *next;
        unsigned count;
        char id[];
};

struct fail_conv {
        char *conversation;
        unsigned first_n;
        unsigned seen;
};

static struct {
        FILE *out;
        unsigned char key[KEY_MAX];
        size_t key_len;
        bool have_key;
        int status; /* 0 = decide per request */
        unsigned fail_first;
        long retry_after_s; /* -1 = none */
        unsigned delay_ms;
        struct fail_conv fail_conv[FAIL_CONV_MAX];
        size_t n_fail_conv;

        pthread_mutex_t lock; /* everything below, and the writes to out */
        unsigned long n;
        struct id_count *ids[ID_BUCKETS];
} sink = {.retry_after_s = -1, .lock = PTHREAD_MUTEX_INITIALIZER};

struct request {
        char *data;
        size_t len, cap;
        bool too_big;
};

static void usage(void)
{
        fprintf(stderr, "usage: webhook_sink --out FILE [--port P] [--secret whsec_...] "
                        "[--status CODE] [--fail-first N] [--retry-after S] [--delay-ms D] "
                        "[--fail-conversation ID:N]...\n");
}

static int parse_ulong(const char *s, unsigned long max, unsigned long *ret)
{
        char *end;
        unsigned long v;

        if (!s || *s < '0' || *s > '9')
                return -EINVAL;
        errno = 0;
        v = strtoul(s, &end, 10);
        if (errno != 0 || end == s || *end != '\0' || v > max)
                return -EINVAL;
        *ret = v;
        return 0;
}

/* "whsec_<base64>" → key bytes, decoded here with OpenSSL on purpose (see the file comment). */
static int parse_secret(const char *secret)
{
        const char *b64 = secret + strlen("whsec_");
        size_t n = strlen(b64), pad = 0;
        unsigned char tmp[3 * (KEY_MAX + 4)];
        int len;

        if (strncmp(secret, "whsec_", 6) != 0 || n == 0 || n % 4 != 0 ||
            n > 4 * (KEY_MAX + 3) / 3 + 4)
                return -EINVAL;
        len = EVP_DecodeBlock(tmp, (const unsigned char *)b64, (int)n);
        if (len < 0)
                return -EINVAL;
        /* EVP_DecodeBlock counts the padding as zero bytes. */
        if (b64[n - 1] == '=')
                pad++;
        if (b64[n - 2] == '=')
                pad++;
        len -= (int)pad;
        if (len < 1 || len > KEY_MAX)
                return -EINVAL;
        memcpy(sink.key, tmp, (size_t)len);
        sink.key_len = (size_t)len;
        sink.have_key = true;
        return 0;
}

static int parse_fail_conversation(const char *arg)
{
        const char *colon = strrchr(arg, ':');
        unsigned long n;
        struct fail_conv *fc;

        if (!colon || colon == arg || sink.n_fail_conv >= FAIL_CONV_MAX)
                return -EINVAL;
        if (parse_ulong(colon + 1, 1000000, &n) < 0)
                return -EINVAL;
        fc = &sink.fail_conv[sink.n_fail_conv];
        fc->conversation = strndup(arg, (size_t)(colon - arg));
        if (!fc->conversation)
                return -ENOMEM;
        fc->first_n = (unsigned)n;
        sink.n_fail_conv++;
        return 0;
}

/* 1 when one of the space-separated "v1,<base64>" entries of header is the HMAC-SHA256 of
 * "id.timestamp.body" under the key, else 0. */
static int signature_matches(const char *id, const char *ts, const char *body, size_t body_len,
                             const char *header)
{
        unsigned char mac[EVP_MAX_MD_SIZE];
        unsigned int mac_len = 0;
        unsigned char want[SIG_B64_LEN + 1];
        char *msg;
        size_t id_len = strlen(id), ts_len = strlen(ts), msg_len;
        const char *p = header;
        int ok = 0;

        msg_len = id_len + 1 + ts_len + 1 + body_len;
        msg = malloc(msg_len);
        if (!msg)
                return 0;
        memcpy(msg, id, id_len);
        msg[id_len] = '.';
        memcpy(msg + id_len + 1, ts, ts_len);
        msg[id_len + 1 + ts_len] = '.';
        memcpy(msg + id_len + ts_len + 2, body, body_len);
        if (!HMAC(EVP_sha256(), sink.key, (int)sink.key_len, (unsigned char *)msg, msg_len, mac,
                  &mac_len)) {
                free(msg);
                return 0;
        }
        free(msg);
        if (EVP_EncodeBlock(want, mac, (int)mac_len) != SIG_B64_LEN)
                return 0;

        while (*p) {
                size_t n;

                p += strspn(p, " ");
                n = strcspn(p, " ");
                if (n == 3 + SIG_B64_LEN && strncmp(p, "v1,", 3) == 0 &&
                    CRYPTO_memcmp(p + 3, want, SIG_B64_LEN) == 0)
                        ok = 1;
                p += n;
        }
        return ok;
}

static uint32_t fnv1a(const char *s)
{
        uint32_t h = 2166136261u;

        for (; *s; s++) {
                h ^= (unsigned char)*s;
                h *= 16777619u;
        }
        return h;
}

/* Counts one more request for id; the new count, 0 when out of memory. Under sink.lock. */
static unsigned id_attempt(const char *id)
{
        struct id_count **head = &sink.ids[fnv1a(id) % ID_BUCKETS], *e;
        size_t n = strlen(id);

        for (e = *head; e; e = e->next)
                if (strcmp(e->id, id) == 0)
                        return ++e->count;
        e = malloc(sizeof(*e) + n + 1);
        if (!e)
                return 0;
        memcpy(e->id, id, n + 1);
        e->count = 1;
        e->next = *head;
        *head = e;
        return 1;
}

static void ids_free(void)
{
        for (size_t i = 0; i < ID_BUCKETS; i++) {
                struct id_count *e = sink.ids[i];

                while (e) {
                        struct id_count *next = e->next;

                        free(e);
                        e = next;
                }
                sink.ids[i] = NULL;
        }
}

static long long wall_ms(void)
{
        struct timespec ts;

        clock_gettime(CLOCK_REALTIME, &ts);
        return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(unsigned ms)
{
        struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};

        while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
                ;
}

static json_t *json_string_or_null(const char *s)
{
        return s ? json_string(s) : json_null();
}

static const char *body_conversation(json_t *body)
{
        json_t *event = json_object_get(json_object_get(body, "payload"), "event");

        return json_string_value(json_object_get(event, "conversationId"));
}

/* The answer for this request, by the options; updates the per-conversation counters. Under
 * sink.lock. */
static int decide_status(unsigned attempt, const char *conversation)
{
        int fail = sink.retry_after_s >= 0 ? 429 : 503;
        bool failed = false;

        if (sink.status)
                return sink.status;
        if (sink.fail_first > 0 && attempt <= sink.fail_first)
                failed = true;
        for (size_t i = 0; conversation && i < sink.n_fail_conv; i++) {
                struct fail_conv *fc = &sink.fail_conv[i];

                if (strcmp(fc->conversation, conversation) != 0)
                        continue;
                fc->seen++;
                if (fc->seen <= fc->first_n)
                        failed = true;
        }
        return failed ? fail : STATUS_DEFAULT;
}

static enum MHD_Result respond(struct MHD_Connection *c, int status)
{
        const char *text = status >= 200 && status < 300 ? "{\"ok\":true}\n"
                                                         : "{\"error\":\"webhook_sink said no\"}\n";
        struct MHD_Response *resp;
        enum MHD_Result ret;
        char ra[32];

        resp = MHD_create_response_from_buffer(strlen(text), (void *)text, MHD_RESPMEM_PERSISTENT);
        if (!resp)
                return MHD_NO;
        MHD_add_response_header(resp, "Content-Type", "application/json");
        if (sink.retry_after_s >= 0 && (status == 429 || status == 503)) {
                snprintf(ra, sizeof(ra), "%ld", sink.retry_after_s);
                MHD_add_response_header(resp, "Retry-After", ra);
        }
        ret = MHD_queue_response(c, (unsigned)status, resp);
        MHD_destroy_response(resp);
        return ret;
}

static enum MHD_Result finish_request(struct MHD_Connection *c, const char *url, const char *method,
                                      struct request *rq)
{
        const char *id = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "webhook-id");
        const char *ts = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "webhook-timestamp");
        const char *sig = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "webhook-signature");
        const char *auth = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Authorization");
        const char *ctype = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Type");
        const char *body_text = rq->data ? rq->data : "";
        json_t *line, *body, *ts_json = json_null(), *sig_ok;
        json_error_t jerr;
        unsigned attempt;
        int status;
        char *text;

        if (sink.delay_ms > 0)
                sleep_ms(sink.delay_ms);

        body = json_loadb(body_text, rq->len, JSON_DECODE_ANY, &jerr);
        if (ts) {
                char *end;
                long long v;

                errno = 0;
                v = strtoll(ts, &end, 10);
                if (errno == 0 && end != ts && *end == '\0')
                        ts_json = json_integer(v);
        }
        if (!sink.have_key)
                sig_ok = json_null();
        else
                sig_ok = json_boolean(id && ts && sig && !rq->too_big &&
                                      signature_matches(id, ts, body_text, rq->len, sig));

        pthread_mutex_lock(&sink.lock);
        sink.n++;
        attempt = id ? id_attempt(id) : 0;
        status = decide_status(attempt, body_conversation(body));
        line = json_object();
        json_object_set_new(line, "n", json_integer((json_int_t)sink.n));
        json_object_set_new(line, "method", json_string(method));
        json_object_set_new(line, "path", json_string(url));
        json_object_set_new(line, "webhook_id", json_string_or_null(id));
        json_object_set_new(line, "timestamp", ts_json);
        json_object_set_new(line, "signature", json_string_or_null(sig));
        json_object_set_new(line, "signature_ok", sig_ok);
        json_object_set_new(line, "authorization", json_string_or_null(auth));
        json_object_set_new(line, "content_type", json_string_or_null(ctype));
        json_object_set_new(line, "attempt", json_integer(attempt));
        json_object_set_new(line, "received_ms", json_integer(wall_ms()));
        json_object_set_new(line, "body", body ? body : json_null());
        if (!body) {
                json_t *raw = json_stringn(body_text, rq->too_big ? 0 : rq->len);

                json_object_set_new(line, "body_raw", raw ? raw : json_null());
        }
        json_object_set_new(line, "status", json_integer(status));
        text = json_dumps(line, JSON_COMPACT | JSON_ENSURE_ASCII);
        json_decref(line);
        if (text) {
                fputs(text, sink.out);
                fputc('\n', sink.out);
                fflush(sink.out);
                free(text);
        } else {
                fprintf(stderr, "webhook_sink: cannot serialise a record\n");
        }
        pthread_mutex_unlock(&sink.lock);

        return respond(c, status);
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_data_size, void **con_cls)
{
        struct request *rq = *con_cls;

        (void)cls;
        (void)version;
        if (!rq) {
                rq = calloc(1, sizeof(*rq));
                if (!rq)
                        return MHD_NO;
                *con_cls = rq;
                return MHD_YES;
        }
        if (*upload_data_size > 0) {
                size_t n = *upload_data_size;

                *upload_data_size = 0;
                if (rq->too_big || rq->len + n + 1 > BODY_CAP) {
                        rq->too_big = true;
                        return MHD_YES;
                }
                if (rq->len + n + 1 > rq->cap) {
                        size_t cap = rq->cap ? rq->cap : 4096;
                        char *p;

                        while (cap < rq->len + n + 1)
                                cap *= 2;
                        p = realloc(rq->data, cap);
                        if (!p)
                                return MHD_NO;
                        rq->data = p;
                        rq->cap = cap;
                }
                memcpy(rq->data + rq->len, upload_data, n);
                rq->len += n;
                rq->data[rq->len] = '\0';
                return MHD_YES;
        }
        return finish_request(c, url, method, rq);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
        struct request *rq = *con_cls;

        (void)cls;
        (void)c;
        (void)toe;
        if (rq) {
                free(rq->data);
                free(rq);
                *con_cls = NULL;
        }
}

int main(int argc, char **argv)
{
        const char *out_path = NULL;
        unsigned long port = 0, v;
        struct sockaddr_in sa = {.sin_family = AF_INET};
        struct MHD_Daemon *mhd;
        const union MHD_DaemonInfo *info;
        sigset_t set;
        int sig = 0;

        for (int i = 1; i < argc; i++) {
                const char *a = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;
                int r = 0;

                if (!val) {
                        usage();
                        return 64;
                }
                i++;
                if (strcmp(a, "--out") == 0) {
                        out_path = val;
                } else if (strcmp(a, "--port") == 0) {
                        r = parse_ulong(val, 65535, &port);
                } else if (strcmp(a, "--secret") == 0) {
                        r = parse_secret(val);
                } else if (strcmp(a, "--status") == 0) {
                        r = parse_ulong(val, 599, &v);
                        if (r == 0 && v < 100)
                                r = -EINVAL;
                        sink.status = (int)v;
                } else if (strcmp(a, "--fail-first") == 0) {
                        r = parse_ulong(val, 1000000, &v);
                        sink.fail_first = (unsigned)v;
                } else if (strcmp(a, "--retry-after") == 0) {
                        r = parse_ulong(val, 86400, &v);
                        sink.retry_after_s = (long)v;
                } else if (strcmp(a, "--delay-ms") == 0) {
                        r = parse_ulong(val, 600000, &v);
                        sink.delay_ms = (unsigned)v;
                } else if (strcmp(a, "--fail-conversation") == 0) {
                        r = parse_fail_conversation(val);
                } else {
                        r = -EINVAL;
                }
                if (r < 0) {
                        fprintf(stderr, "webhook_sink: bad %s '%s'\n", a, val);
                        usage();
                        return 64;
                }
        }
        if (!out_path) {
                usage();
                return 64;
        }
        /* Blocked before MHD starts its threads: they inherit the mask and sigwait() below
         * gets the signal, so shutdown is orderly. */
        sigemptyset(&set);
        sigaddset(&set, SIGTERM);
        sigaddset(&set, SIGINT);
        pthread_sigmask(SIG_BLOCK, &set, NULL);
        /* A test that dies (a criterion time-out) cannot stop its peers: they follow it. */
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        if (getppid() == 1)
                return 0;
        sink.out = fopen(out_path, "a");
        if (!sink.out) {
                fprintf(stderr, "webhook_sink: cannot open %s: %s\n", out_path, strerror(errno));
                return 73;
        }

        signal(SIGPIPE, SIG_IGN);

        sa.sin_port = htons((uint16_t)port);
        sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        /* A thread per connection so that --delay-ms delays one call, not all of them. */
        mhd = MHD_start_daemon(
            MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG, 0,
            NULL, NULL, on_request, NULL, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sa,
            MHD_OPTION_NOTIFY_COMPLETED, on_completed, NULL, MHD_OPTION_CONNECTION_TIMEOUT, 60u,
            MHD_OPTION_LISTENING_ADDRESS_REUSE, 1, MHD_OPTION_END);
        if (!mhd) {
                fprintf(stderr, "webhook_sink: cannot listen on 127.0.0.1:%lu\n", port);
                fclose(sink.out);
                return 69;
        }
        info = MHD_get_daemon_info(mhd, MHD_DAEMON_INFO_BIND_PORT);
        if (!info || info->port == 0) {
                fprintf(stderr, "webhook_sink: cannot tell the bound port\n");
                MHD_stop_daemon(mhd);
                fclose(sink.out);
                return 70;
        }
        printf("%u\n", (unsigned)info->port);
        fflush(stdout);

        if (sigwait(&set, &sig) != 0)
                sig = -1;
        fprintf(stderr, "webhook_sink: signal %d, %lu requests, shutting down\n", sig, sink.n);
        MHD_stop_daemon(mhd);
        fclose(sink.out);
        ids_free();
        for (size_t i = 0; i < sink.n_fail_conv; i++)
                free(sink.fail_conv[i].conversation);
        return 0;
}
