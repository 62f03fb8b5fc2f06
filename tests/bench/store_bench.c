/* Microbenchmark of the store itself, without HTTP: the cost of the GET path (key lookup +
 * one property) with and without the read cache, of a PATCH-like merge, and of reading a
 * whole session, on a temporary SQLite file. Prints figures; never fails on timing.
 *
 * Usage: store_bench [ITERATIONS]   (default 20000 reads, a quarter as many merges) */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "ctxhookd/store.h"

#define T0 INT64_C(1800000000000)

static double now_s(void)
{
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int die(const char *what, int rc)
{
        fprintf(stderr, "store_bench: %s failed: %d\n", what, rc);
        return 1;
}

static int run(const char *path, unsigned cache_entries, int n)
{
        struct store_options o = {
            .path = path, .busy_timeout_ms = 5000, .pool_size = 4, .cache_entries = cache_entries};
        unsigned char h[STORE_KEY_HASH_LEN];
        struct ch_error err = {{0}};
        struct store *s = NULL;
        json_t *obj, *note;
        double t;
        int rc;

        rc = store_open(&o, &s, &err);
        if (rc < 0) {
                fprintf(stderr, "store_bench: %s\n", err.msg);
                return 1;
        }
        memset(h, 7, sizeof(h));
        note = json_string("the customer asked for a callback");
        obj = json_pack("{s:s, s:s, s:i}", "note", "called back", "agent", "a17", "n", 1);
        rc = store_key_set(s, "12345678", h, T0);
        if (rc == 0)
                rc = store_prop_put(s, "12345678", "agentNotes", "conv-1", "note", note, NULL, T0,
                                    NULL);
        if (rc < 0)
                return die("setup", rc);

        t = now_s();
        for (int i = 0; i < n; i++) {
                char *text = NULL, etag[STORE_ETAG_MAX];

                rc = store_key_get(s, "12345678", h);
                if (rc == 0)
                        rc = store_prop_get(s, "12345678", "agentNotes", "conv-1", "note", T0,
                                            &text, NULL, etag);
                if (rc < 0)
                        return die("key_get + prop_get", rc);
                free(text);
        }
        t = now_s() - t;
        printf("  cache %-4s key_get + prop_get   %8.2f µs per request (%.0f/s)\n",
               cache_entries ? "on" : "off", t / n * 1e6, n / t);

        t = now_s();
        for (int i = 0; i < n / 4; i++) {
                char sid[32];

                snprintf(sid, sizeof(sid), "conv-%d", i % 100);
                rc = store_props_merge(s, "12345678", "agentNotes", sid, obj, NULL, T0, NULL);
                if (rc < 0)
                        return die("props_merge", rc);
        }
        t = now_s() - t;
        printf("  cache %-4s props_merge (3 keys) %8.2f µs each (%.0f/s)\n",
               cache_entries ? "on" : "off", t / (n / 4) * 1e6, (n / 4) / t);

        t = now_s();
        for (int i = 0; i < n / 10; i++) {
                json_t *all = NULL;

                rc = store_props_get(s, "12345678", "agentNotes", "conv-1", NULL, T0, &all, NULL);
                if (rc < 0)
                        return die("props_get", rc);
                json_decref(all);
        }
        t = now_s() - t;
        printf("  cache %-4s props_get (4 keys)   %8.2f µs each\n", cache_entries ? "on" : "off",
               t / (n / 10) * 1e6);
        json_decref(obj);
        json_decref(note);
        store_close(s);
        return 0;
}

int main(int argc, char **argv)
{
        char dir[] = "/tmp/ctxhookd-store-bench-XXXXXX", path[128];
        int n = argc > 1 ? atoi(argv[1]) : 20000, rc;

        if (n < 40) {
                fprintf(stderr, "usage: store_bench [ITERATIONS >= 40]\n");
                return 64;
        }
        if (!mkdtemp(dir)) {
                perror("store_bench: mkdtemp");
                return 1;
        }
        snprintf(path, sizeof(path), "%s/context.db", dir);
        printf("store_bench: %d iterations, SQLite file in %s\n", n, dir);
        rc = run(path, 0, n);
        if (rc == 0)
                rc = run(path, 4096, n);
        for (size_t i = 0; i < 4; i++) {
                static const char *const suffixes[] = {"", "-wal", "-shm", "-gen"};
                char p[160];

                snprintf(p, sizeof(p), "%s%s", path, suffixes[i]);
                unlink(p);
        }
        rmdir(dir);
        return rc;
}
