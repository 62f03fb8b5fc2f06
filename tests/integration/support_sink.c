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

bool it_rec_ok(json_t *rec)
{
        long long status = json_integer_value(json_object_get(rec, "status"));

        return status >= 200 && status < 300 && json_is_true(json_object_get(rec, "signature_ok"));
}

json_t *it_rec_payload(json_t *rec)
{
        return json_object_get(json_object_get(rec, "body"), "payload");
}

const char *it_rec_str(json_t *obj, const char *key)
{
        const char *s = json_string_value(json_object_get(obj, key));

        return s ? s : "";
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
