/* See support_sink.h. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/rand.h>

#include "support_sink.h"

void it_make_secret(char out[128])
{
        unsigned char key[32], b64[64];

        if (RAND_bytes(key, sizeof(key)) != 1)
                abort();
        EVP_EncodeBlock(b64, key, sizeof(key));
        snprintf(out, 128, "whsec_%s", (const char *)b64);
}

int it_sink_start(struct it_peer *p, const char *dir, const char *out_file, const char *secret,
                  unsigned port, const char *const *extra_args, unsigned *ret_port)
{
        const char *args[32] = {"--out", out_file, "--secret", secret};
        char port_text[16];
        size_t n = 4;
        unsigned long got;
        char *end;
        int r;

        if (port) {
                snprintf(port_text, sizeof(port_text), "%u", port);
                args[n++] = "--port";
                args[n++] = port_text;
        }
        for (size_t i = 0; extra_args && extra_args[i]; i++) {
                if (n + 1 >= sizeof(args) / sizeof(args[0])) {
                        fprintf(stderr, "it: too many options for webhook_sink\n");
                        return -E2BIG;
                }
                args[n++] = extra_args[i];
        }
        args[n] = NULL;
        r = it_peer_start(p, dir, "webhook_sink", args);
        if (r < 0)
                return r;
        got = strtoul(p->line, &end, 10);
        if (end == p->line || *end || got == 0 || got > 65535 || (port && got != port)) {
                fprintf(stderr, "it: webhook_sink printed '%s', not %s\n", p->line,
                        port ? port_text : "a port");
                it_peer_cleanup(p);
                return -EPROTO;
        }
        *ret_port = (unsigned)got;
        return 0;
}

unsigned it_closed_port(void)
{
        unsigned port = 0;
        int fd = it_busy_port(&port);

        if (fd < 0)
                return 0;
        close(fd);
        return port;
}

char *it_replace_all(const char *text, const char *from, const char *to)
{
        char *out = NULL;
        size_t len = 0;
        FILE *f = open_memstream(&out, &len);
        const char *p = text, *at;

        if (!f)
                abort();
        while ((at = strstr(p, from)) != NULL) {
                fwrite(p, 1, (size_t)(at - p), f);
                fputs(to, f);
                p = at + strlen(from);
        }
        fputs(p, f);
        fclose(f);
        return out;
}

char *it_config_text(const struct it_config *c, unsigned sink_port, const char *secret)
{
        char *text = NULL, *with_url, url[64];
        size_t len = 0;
        FILE *f = open_memstream(&text, &len);

        if (!f)
                abort();
        fprintf(f,
                "[api]\n"
                "listen = %s\n"
                "threads = 2\n"
                "%s"
                "[store]\n"
                "path = @DIR@/ctxhookd.db\n"
                "%s"
                "[log]\n"
                "level = %s\n",
                c->listen ? c->listen : "127.0.0.1:0", c->api_extra ? c->api_extra : "",
                c->store_extra ? c->store_extra : "", c->level ? c->level : "debug");
        for (size_t i = 0; c->sections && c->sections[i]; i++)
                fputs(c->sections[i], f);
        if (fclose(f) != 0)
                abort();
        snprintf(url, sizeof(url), "http://127.0.0.1:%u", sink_port);
        with_url = it_replace_all(text, "@URL@", url);
        free(text);
        if (!secret)
                return with_url;
        text = it_replace_all(with_url, "@SECRET@", secret);
        free(with_url);
        return text;
}

char *it_kafka_section(const char *brokers, const char *topic, const char *group,
                       const char *account, int session_timeout_ms)
{
        char *text = NULL;

        if (asprintf(&text,
                     "[kafka]\n"
                     "brokers = %s\n"
                     "topic = %s\n"
                     "group = %s\n"
                     "account = %s\n"
                     "session.timeout.ms = %d\n"
                     "heartbeat.interval.ms = 300\n",
                     brokers, topic, group, account, session_timeout_ms) < 0)
                abort();
        return text;
}

json_t *it_sink_records(const char *path)
{
        char *text = it_read_file(path, NULL);
        json_t *arr = json_array();
        const char *p = text;

        while (p && *p) {
                const char *nl = strchr(p, '\n');
                json_error_t e;
                json_t *rec;

                if (!nl)
                        break; /* being written */
                rec = json_loadb(p, (size_t)(nl - p), 0, &e);
                if (!rec) {
                        fprintf(stderr, "bad sink record: %s: %.*s\n", e.text, (int)(nl - p), p);
                        json_decref(arr);
                        free(text);
                        return NULL;
                }
                json_array_append_new(arr, rec);
                p = nl + 1;
        }
        free(text);
        return arr;
}

bool it_rec_2xx(json_t *rec)
{
        long long status = it_rec_int(rec, "status");

        return status >= 200 && status < 300;
}

bool it_rec_ok(json_t *rec)
{
        return it_rec_2xx(rec) && json_is_true(json_object_get(rec, "signature_ok"));
}

json_t *it_rec_payload(json_t *rec)
{
        return json_object_get(json_object_get(rec, "body"), "payload");
}

long long it_rec_seq(json_t *rec)
{
        json_t *seq = json_object_get(json_object_get(it_rec_payload(rec), "raw"), "seq");

        return json_is_integer(seq) ? json_integer_value(seq) : -1;
}

json_t *it_rec_event(json_t *rec)
{
        return json_object_get(it_rec_payload(rec), "event");
}

long long it_rec_int(json_t *obj, const char *key)
{
        return json_integer_value(json_object_get(obj, key));
}

const char *it_rec_str(json_t *obj, const char *key)
{
        const char *s = json_string_value(json_object_get(obj, key));

        return s ? s : "";
}

size_t it_recs_count(json_t *recs, it_rec_match_fn *match, const void *arg)
{
        size_t i, n = 0;
        json_t *rec;

        json_array_foreach(recs, i, rec)
        {
                if (!match || match(rec, arg))
                        n++;
        }
        return n;
}

int it_sink_wait(const char *path, size_t n, it_rec_match_fn *match, const void *arg,
                 int timeout_ms, json_t **ret_recs)
{
        long long deadline = it_now_ms() + timeout_ms;
        json_t *recs;
        char *shown;

        for (;;) {
                recs = it_sink_records(path);
                if (!recs)
                        return -EBADMSG;
                if (it_recs_count(recs, match, arg) >= n) {
                        *ret_recs = recs;
                        return 0;
                }
                if (it_now_ms() > deadline)
                        break;
                json_decref(recs);
                it_sleep_ms(20);
        }
        shown = json_dumps(recs, JSON_INDENT(1));
        fprintf(stderr, "it: %zu of the %zu records of %s count after %d ms, want %zu:\n%s\n",
                it_recs_count(recs, match, arg), json_array_size(recs), path, timeout_ms, n,
                shown ? shown : "?");
        free(shown);
        json_decref(recs);
        return -ETIMEDOUT;
}

static void *notify_main(void *arg)
{
        struct it_notify *n = arg;
        char buf[4096];

        for (;;) {
                ssize_t got = recv(n->fd, buf, sizeof(buf) - 1, 0);
                char *text;

                if (got < 0 && errno == EINTR)
                        continue;
                if (got <= 0)
                        break; /* shut down */
                buf[got] = '\0';
                text = strdup(buf);
                pthread_mutex_lock(&n->lock);
                if (text && n->n < IT_NOTIFY_MAX)
                        n->msgs[n->n++] = (struct it_notify_msg){it_now_ms(), text};
                else
                        free(text);
                pthread_mutex_unlock(&n->lock);
        }
        return NULL;
}

int it_notify_start(struct it_notify *n, const char *dir)
{
        struct sockaddr_un sa = {.sun_family = AF_UNIX};

        memset(n, 0, sizeof(*n));
        snprintf(n->path, sizeof(n->path), "%s/notify", dir);
        snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", n->path);
        n->fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        if (n->fd < 0)
                return -errno;
        if (bind(n->fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
                int r = -errno;

                close(n->fd);
                return r;
        }
        pthread_mutex_init(&n->lock, NULL);
        if (pthread_create(&n->thread, NULL, notify_main, n) != 0) {
                close(n->fd);
                return -EAGAIN;
        }
        n->running = true;
        return 0;
}

void it_notify_stop(struct it_notify *n)
{
        if (!n->running)
                return;
        shutdown(n->fd, SHUT_RDWR);
        pthread_join(n->thread, NULL);
        close(n->fd);
        unlink(n->path);
        for (size_t i = 0; i < n->n; i++)
                free(n->msgs[i].text);
        pthread_mutex_destroy(&n->lock);
        n->running = false;
}

size_t it_notify_n(struct it_notify *n)
{
        size_t v;

        pthread_mutex_lock(&n->lock);
        v = n->n;
        pthread_mutex_unlock(&n->lock);
        return v;
}

size_t it_notify_times(struct it_notify *n, const char *needle, size_t from, long long *at,
                       size_t max)
{
        size_t k = 0;

        pthread_mutex_lock(&n->lock);
        for (size_t i = from; i < n->n; i++)
                if (strstr(n->msgs[i].text, needle)) {
                        if (at && k < max)
                                at[k] = n->msgs[i].at_ms;
                        k++;
                }
        pthread_mutex_unlock(&n->lock);
        return k;
}

size_t it_notify_count(struct it_notify *n, const char *needle, size_t first_after)
{
        return it_notify_times(n, needle, first_after, NULL, 0);
}

long it_notify_wait(struct it_notify *n, const char *needle, size_t from, int timeout_ms)
{
        long long deadline = it_now_ms() + timeout_ms;

        do {
                pthread_mutex_lock(&n->lock);
                for (size_t i = from; i < n->n; i++)
                        if (strstr(n->msgs[i].text, needle)) {
                                pthread_mutex_unlock(&n->lock);
                                return (long)i;
                        }
                pthread_mutex_unlock(&n->lock);
                it_sleep_ms(20);
        } while (it_now_ms() < deadline);
        return -1;
}
