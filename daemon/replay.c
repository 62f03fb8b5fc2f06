/* `ctxhookd replay` (see replay.h): reads logs line by line in a buffer bounded by [kafka]
 * max_message_bytes, unwraps kcat -J envelopes, and hands every line to the pipeline — built
 * only (--dry-run, printed as {"hook","url","body"} lines) or processed durably with the
 * delivery thread running until the outbox is empty — then compares the deliveries with a
 * golden file when asked. Nothing here knows an event shape: that is event.c's job, so a
 * replay and live Kafka traffic give the same deliveries. */
#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sysexits.h>
#include <time.h>
#include <unistd.h>

#include "ctxhookd/cleanup.h"
#include "ctxhookd/deliver.h"
#include "ctxhookd/pipeline.h"
#include "ctxhookd/replay.h"
#include "ctxhookd/service.h"
#include "ctxhookd/store.h"

#define READ_CHUNK   (64u * 1024)
#define PATH_MAX_LEN 1024 /* JSON path of a difference */
#define DIFF_PATHS   16   /* differing paths reported per changed delivery */
#define SOURCE_FILE  200  /* bytes of a log's name kept in "replay:<file>:<line>" */
#define POLL_MS      20   /* outbox polling while waiting for the deliveries */
#define STOP_GRACE   5000 /* ms the delivery thread may finish calls in flight */

/* ---- reader ---- */

struct replay_reader {
        FILE *f;
        size_t max;
        char *buf;
        size_t start, end;
        bool eof;
        char *line; /* max + 2 bytes: the line, one byte over (to see the limit), NUL */
        unsigned long lineno;
};

int replay_reader_new(FILE *f, size_t max, struct replay_reader **ret)
{
        struct replay_reader *r;

        if (!f || max == 0 || max > SIZE_MAX / 2)
                return -EINVAL;
        r = calloc(1, sizeof(*r));
        if (!r)
                return -ENOMEM;
        r->f = f;
        r->max = max;
        r->buf = malloc(READ_CHUNK);
        r->line = malloc(max + 2);
        if (!r->buf || !r->line) {
                replay_reader_free(r);
                return -ENOMEM;
        }
        *ret = r;
        return 0;
}

struct replay_reader *replay_reader_free(struct replay_reader *r)
{
        if (!r)
                return NULL;
        free(r->buf);
        free(r->line);
        free(r);
        return NULL;
}

int replay_reader_next(struct replay_reader *r, const char **ret_line, size_t *ret_len,
                       unsigned long *ret_lineno)
{
        size_t kept = 0, full = 0;
        bool any = false;
        char last = '\0';

        for (;;) {
                const char *p, *nl;
                size_t take, room;

                if (r->start == r->end) {
                        size_t n;

                        if (r->eof)
                                break;
                        n = fread(r->buf, 1, READ_CHUNK, r->f);
                        if (n == 0) {
                                if (ferror(r->f)) {
                                        int e = errno == EINTR ? -EINTR : -EIO;

                                        clearerr(r->f);
                                        return e;
                                }
                                r->eof = true;
                                break;
                        }
                        r->start = 0;
                        r->end = n;
                }
                any = true;
                p = r->buf + r->start;
                nl = memchr(p, '\n', r->end - r->start);
                take = nl ? (size_t)(nl - p) : r->end - r->start;
                room = r->max + 1 - kept;
                if (take > 0) {
                        memcpy(r->line + kept, p, take < room ? take : room);
                        kept += take < room ? take : room;
                        full += take;
                        last = p[take - 1];
                }
                r->start += take + (nl ? 1 : 0);
                if (nl)
                        break;
        }
        if (!any)
                return 0;
        r->lineno++;
        if (full > 0 && last == '\r')
                full--;
        if (full > r->max) {
                *ret_line = NULL;
                *ret_len = full;
        } else {
                r->line[full] = '\0';
                *ret_line = r->line;
                *ret_len = full;
        }
        *ret_lineno = r->lineno;
        return 1;
}

/* ---- envelopes ---- */

int replay_envelope(const char *line, size_t len, char **ret_payload, size_t *ret_len,
                    char **ret_kafka_source)
{
        json_t *root, *payload, *topic, *partition, *offset;
        char *copy, *source = NULL;
        size_t n;

        /* Most lines are plain events: do not parse them twice. */
        if (!memmem(line, len, "\"payload\"", 9))
                return 0;
        root = json_loadb(line, len, JSON_ALLOW_NUL, NULL);
        if (!json_is_object(root)) {
                json_decref(root);
                return 0;
        }
        payload = json_object_get(root, "payload");
        topic = json_object_get(root, "topic");
        partition = json_object_get(root, "partition");
        offset = json_object_get(root, "offset");
        if (!(json_is_string(payload) || json_is_null(payload)) ||
            (!topic && !partition && !offset)) {
                json_decref(root);
                return 0;
        }
        n = json_is_string(payload) ? json_string_length(payload) : 0;
        copy = malloc(n + 1);
        if (copy && json_is_string(topic) && json_is_integer(partition) &&
            json_is_integer(offset) &&
            asprintf(&source, "kafka:%s/%" JSON_INTEGER_FORMAT "/%" JSON_INTEGER_FORMAT,
                     json_string_value(topic), json_integer_value(partition),
                     json_integer_value(offset)) < 0)
                source = (free(copy), NULL), copy = NULL;
        if (!copy) {
                json_decref(root);
                return -ENOMEM;
        }
        if (n > 0)
                memcpy(copy, json_string_value(payload), n);
        copy[n] = '\0';
        json_decref(root);
        *ret_payload = copy;
        *ret_len = n;
        *ret_kafka_source = source;
        return 1;
}

/* ---- delivery sets and their comparison ---- */

struct replay_set {
        json_t *by_key; /* "hook\nevent id" → [delivery, …] */
        json_t *order;  /* the keys, in the order first added */
        size_t n;
};

int replay_set_new(struct replay_set **ret)
{
        struct replay_set *s = calloc(1, sizeof(*s));

        if (!s)
                return -ENOMEM;
        s->by_key = json_object();
        s->order = json_array();
        if (!s->by_key || !s->order) {
                replay_set_free(s);
                return -ENOMEM;
        }
        *ret = s;
        return 0;
}

struct replay_set *replay_set_free(struct replay_set *s)
{
        if (!s)
                return NULL;
        json_decref(s->by_key);
        json_decref(s->order);
        free(s);
        return NULL;
}

size_t replay_set_size(const struct replay_set *s)
{
        return s ? s->n : 0;
}

static json_t *event_of(json_t *delivery)
{
        return json_object_get(json_object_get(json_object_get(delivery, "body"), "payload"),
                               "event");
}

int replay_set_add(struct replay_set *s, json_t *delivery)
{
        const char *hook = json_string_value(json_object_get(delivery, "hook"));
        const char *id = json_string_value(json_object_get(event_of(delivery), "id"));
        _cleanup_free_ char *key = NULL;
        json_t *list;

        if (!hook || !id)
                return -EINVAL;
        if (asprintf(&key, "%s\n%s", hook, id) < 0)
                return -ENOMEM;
        list = json_object_get(s->by_key, key);
        if (!list) {
                list = json_array();
                if (!list || json_object_set_new(s->by_key, key, list) < 0 ||
                    json_array_append_new(s->order, json_string(key)) < 0)
                        return -ENOMEM;
        }
        if (json_array_append(list, delivery) < 0)
                return -ENOMEM;
        s->n++;
        return 0;
}

int replay_set_load(FILE *f, const char *name, struct replay_set **ret, struct ch_error *err)
{
        struct replay_set *s = NULL;
        struct replay_reader *rd = NULL;
        const char *line;
        size_t len;
        unsigned long lineno;
        int r;

        r = replay_set_new(&s);
        if (r < 0)
                return r;
        /* Golden bodies carry whole contexts: allow lines far longer than one event. */
        r = replay_reader_new(f, 64u << 20, &rd);
        while (r >= 0) {
                json_error_t e;
                json_t *d;

                r = replay_reader_next(rd, &line, &len, &lineno);
                if (r <= 0)
                        break;
                if (!line) {
                        ch_error_set(err, "%s:%lu: line too long", name, lineno);
                        r = -EINVAL;
                        break;
                }
                if (strspn(line, " \t\r") == len)
                        continue;
                d = json_loadb(line, len, 0, &e);
                if (!d) {
                        ch_error_set(err, "%s:%lu: not JSON: %s", name, lineno, e.text);
                        r = -EINVAL;
                        break;
                }
                r = replay_set_add(s, d);
                json_decref(d);
                if (r == -EINVAL)
                        ch_error_set(err,
                                     "%s:%lu: not a delivery {\"hook\", \"url\", \"body\"} with "
                                     "body.payload.event.id",
                                     name, lineno);
        }
        replay_reader_free(rd);
        if (r < 0) {
                if (r == -EIO)
                        ch_error_set(err, "%s: read error", name);
                replay_set_free(s);
                return r;
        }
        *ret = s;
        return 0;
}

struct differ {
        void (*report)(const struct replay_diff *d, void *userdata);
        void *userdata;
        struct replay_diff base;
        size_t n;       /* differences reported overall */
        size_t n_paths; /* paths of the current delivery */
};

static void diff_report(struct differ *df, enum replay_diff_kind kind, const char *path)
{
        struct replay_diff d = df->base;

        d.kind = kind;
        d.path = path;
        df->n++;
        if (df->report)
                df->report(&d, df->userdata);
}

static void diff_values(struct differ *df, json_t *a, json_t *b, char *path, size_t plen)
{
        if (strcmp(path, "body.timestamp") == 0)
                return; /* the moment the body was built: differs on every run */
        if (df->n_paths >= DIFF_PATHS)
                return;
        if (json_typeof(a) != json_typeof(b)) {
                df->n_paths++;
                diff_report(df, REPLAY_CHANGED, path);
                return;
        }
        if (json_is_object(a)) {
                const char *k;
                json_t *v;

                json_object_foreach(a, k, v)
                {
                        json_t *w = json_object_get(b, k);

                        snprintf(path + plen, PATH_MAX_LEN - plen, "%s%s", plen ? "." : "", k);
                        if (!w) {
                                df->n_paths++;
                                diff_report(df, REPLAY_CHANGED, path);
                        } else {
                                diff_values(df, v, w, path, strlen(path));
                        }
                        path[plen] = '\0';
                }
                json_object_foreach(b, k, v)
                {
                        if (json_object_get(a, k))
                                continue;
                        snprintf(path + plen, PATH_MAX_LEN - plen, "%s%s", plen ? "." : "", k);
                        df->n_paths++;
                        diff_report(df, REPLAY_CHANGED, path);
                        path[plen] = '\0';
                }
                return;
        }
        if (json_is_array(a)) {
                if (json_array_size(a) != json_array_size(b)) {
                        df->n_paths++;
                        diff_report(df, REPLAY_CHANGED, path);
                        return;
                }
                for (size_t i = 0; i < json_array_size(a); i++) {
                        snprintf(path + plen, PATH_MAX_LEN - plen, "[%zu]", i);
                        diff_values(df, json_array_get(a, i), json_array_get(b, i), path,
                                    strlen(path));
                        path[plen] = '\0';
                }
                return;
        }
        if (!json_equal(a, b)) {
                df->n_paths++;
                diff_report(df, REPLAY_CHANGED, path);
        }
}

static void diff_name(struct differ *df, json_t *delivery)
{
        json_t *ev = event_of(delivery);
        const char *conv = json_string_value(json_object_get(ev, "conversationId"));

        df->base.hook = json_string_value(json_object_get(delivery, "hook"));
        df->base.event_id = json_string_value(json_object_get(ev, "id"));
        df->base.conversation = conv ? conv : "?";
}

int replay_compare(const struct replay_set *expected, const struct replay_set *got,
                   void (*report)(const struct replay_diff *d, void *userdata), void *userdata,
                   size_t *ret_n)
{
        struct differ df = {.report = report, .userdata = userdata};
        char path[PATH_MAX_LEN];
        size_t i;
        json_t *key;

        if (!expected || !got)
                return -EINVAL;
        json_array_foreach(expected->order, i, key)
        {
                json_t *e = json_object_get(expected->by_key, json_string_value(key));
                json_t *g = json_object_get(got->by_key, json_string_value(key));
                size_t ne = json_array_size(e), ng = json_array_size(g);

                for (size_t j = 0; j < ne || j < ng; j++) {
                        json_t *x = json_array_get(e, j), *y = json_array_get(g, j);

                        diff_name(&df, x ? x : y);
                        if (!y) {
                                diff_report(&df, REPLAY_MISSING, NULL);
                        } else if (!x) {
                                diff_report(&df, REPLAY_EXTRA, NULL);
                        } else {
                                path[0] = '\0';
                                df.n_paths = 0;
                                diff_values(&df, x, y, path, 0);
                        }
                }
        }
        json_array_foreach(got->order, i, key)
        {
                json_t *g = json_object_get(got->by_key, json_string_value(key));
                size_t k;
                json_t *y;

                if (json_object_get(expected->by_key, json_string_value(key)))
                        continue;
                json_array_foreach(g, k, y)
                {
                        diff_name(&df, y);
                        diff_report(&df, REPLAY_EXTRA, NULL);
                }
        }
        *ret_n = df.n;
        return 0;
}

/* ---- the command ---- */

static volatile sig_atomic_t stop_signal;

static void on_signal(int sig)
{
        stop_signal = sig;
}

struct run {
        const struct config *cfg;
        const struct replay_options *o;
        struct store *store;
        struct pipeline *pipeline;
        struct deliver *deliver;
        struct replay_set *got; /* only with --expect */
        char **hook_json;       /* per hook: its name and URL as JSON strings */
        char **url_json;
        int64_t start_ms;
        size_t paced; /* events handed on, for --rate */
        size_t lines, events, deliveries, ignored, dead, duplicates;
        char tmpdir[64]; /* a throwaway empty store for --dry-run without a database */
};

static size_t hook_index(const struct run *run, const struct config_hook *hook)
{
        return (size_t)(hook - run->cfg->hooks);
}

static char *json_quote(const char *s)
{
        json_t *j = json_string(s);
        char *text = j ? json_dumps(j, JSON_ENCODE_ANY) : NULL;

        json_decref(j);
        return text;
}

/* Prints (dry run) and records (--expect) the deliveries built for one line. */
static int emit(struct run *run, const struct pipeline_delivery *d, size_t n, bool print)
{
        for (size_t i = 0; i < n; i++) {
                size_t h = hook_index(run, d[i].hook);

                if (print) {
                        FILE *out = run->o->out;

                        fputs("{\"hook\":", out);
                        fputs(run->hook_json[h], out);
                        fputs(",\"url\":", out);
                        fputs(run->url_json[h], out);
                        fputs(",\"body\":", out);
                        fwrite(d[i].body, 1, d[i].body_len, out);
                        fputs("}\n", out);
                }
                if (run->got) {
                        json_t *body = json_loadb(d[i].body, d[i].body_len, 0, NULL);
                        json_t *rec = body ? json_pack("{s:s, s:s, s:o}", "hook", d[i].hook->name,
                                                       "url", d[i].hook->url, "body", body)
                                           : NULL;
                        int r = rec ? replay_set_add(run->got, rec) : -ENOMEM;

                        json_decref(rec);
                        if (r < 0)
                                return r;
                }
        }
        return 0;
}

static void dead_line(struct run *run, const char *name, unsigned long lineno, const char *reason)
{
        run->dead++;
        fprintf(run->o->err, "%s:%lu: dead letter: %s\n", name, lineno, reason);
}

/* The longest line kept: anything longer is a dead letter without being read into memory. */
static size_t line_max(const struct config *cfg)
{
        return 2 * (size_t)cfg->kafka.max_message_bytes + 4096;
}

/* Waits until the next event is due at --rate. */
static void pace(struct run *run)
{
        int64_t due, now;

        if (run->o->rate <= 0)
                return;
        due = run->start_ms + (int64_t)((double)run->paced * 1000.0 / run->o->rate);
        run->paced++;
        now = service_now_ms();
        while (now < due && !stop_signal) {
                struct timespec ts = {.tv_sec = (due - now) / 1000,
                                      .tv_nsec = (long)((due - now) % 1000) * 1000000L};

                nanosleep(&ts, NULL);
                now = service_now_ms();
        }
}

/* One line of a log. Returns 0, or a negative code when the store failed (nothing recorded). */
static int replay_line(struct run *run, const char *name, unsigned long lineno, const char *line,
                       size_t len, size_t full_len)
{
        _cleanup_free_ char *payload = NULL, *ksrc = NULL, *dedup = NULL;
        char source[EVENT_ID_MAX];
        const char *data = line, *base;
        size_t data_len = len, name_len;
        struct pipeline_result res;
        struct pipeline_delivery *d = NULL;
        int64_t now;
        size_t n = 0;
        int r = 0;

        if (line && strspn(line, " \t\r") == len)
                return 0; /* empty lines separate nothing: skipped, not counted */
        run->lines++;
        pace(run);
        /* The base name only: a golden file made in one checkout matches a run in another. */
        base = strrchr(name, '/') ? strrchr(name, '/') + 1 : name;
        name_len = strlen(base);
        snprintf(source, sizeof(source), "replay:%s:%lu",
                 base + (name_len > SOURCE_FILE ? name_len - SOURCE_FILE : 0), lineno);
        if (line) {
                r = replay_envelope(line, len, &payload, &data_len, &ksrc);
                if (r < 0)
                        return r;
                if (r > 0)
                        data = payload;
        }
        /* A recorded Kafka message keeps its live event id (so the same webhook-id: receivers
         * drop it if they had it), but its own dedup key: replaying traffic the daemon has
         * consumed on this database still delivers; replaying it twice does not. */
        if (ksrc && asprintf(&dedup, "replay:%s", ksrc) < 0)
                return -ENOMEM;
        now = service_now_ms();
        if (!line) {
                char reason[160];

                snprintf(reason, sizeof(reason),
                         "line of %zu bytes is over the limit of %zu bytes (twice [kafka] "
                         "max_message_bytes, for kcat's escaping)",
                         full_len, line_max(run->cfg));
                if (!run->o->dry_run) {
                        r = store_dead_add(run->store, source, source, reason, NULL, 0, now);
                        if (r == -EEXIST) {
                                run->duplicates++;
                                return 0;
                        }
                        if (r < 0)
                                return r;
                }
                dead_line(run, name, lineno, reason);
                return 0;
        }
        if (run->o->dry_run || run->got) {
                r = pipeline_build(run->pipeline, ksrc ? ksrc : source, data, data_len, now, &res,
                                   &d, &n);
                if (r < 0)
                        return r;
        }
        if (!run->o->dry_run) {
                r = pipeline_process(run->pipeline, ksrc ? ksrc : source, dedup ? dedup : source,
                                     data, data_len, now, &res);
                if (r < 0) {
                        pipeline_deliveries_free(d, n);
                        return r;
                }
                if (res.duplicate) {
                        pipeline_deliveries_free(d, n);
                        run->duplicates++;
                        return 0;
                }
                if (res.deliveries > 0)
                        deliver_wake(run->deliver);
        }
        if (res.dead) {
                dead_line(run, name, lineno, res.reason);
        } else {
                run->events += res.events;
                run->ignored += res.ignored;
                run->deliveries += res.deliveries;
                r = emit(run, d, n, run->o->dry_run);
        }
        pipeline_deliveries_free(d, n);
        return r;
}

static int replay_log(struct run *run, const char *name, FILE *f)
{
        struct replay_reader *rd = NULL;
        const char *line;
        size_t len;
        unsigned long lineno;
        int r;

        /* A kcat envelope escapes its payload: room for that; the event itself is held to
         * max_message_bytes by the parser, as a Kafka message is. */
        r = replay_reader_new(f, line_max(run->cfg), &rd);
        if (r < 0)
                return r;
        while (!stop_signal) {
                r = replay_reader_next(rd, &line, &len, &lineno);
                if (r == -EINTR)
                        continue;
                if (r <= 0)
                        break;
                r = replay_line(run, name, lineno, line, len, len);
                if (r < 0)
                        break;
        }
        replay_reader_free(rd);
        if (r == -EIO)
                fprintf(run->o->err, "replay: cannot read %s: %s\n", name, strerror(errno));
        return r;
}

/* The id of the newest dead letter (0 when none): those after it are this run's. */
static int last_dead_id(struct store *store, int64_t *ret)
{
        int64_t after = 0;

        for (;;) {
                json_t *list = NULL;
                size_t n;
                int r = store_dead_list(store, after, 1000, &list);

                if (r < 0)
                        return r;
                n = json_array_size(list);
                if (n > 0)
                        after =
                            json_integer_value(json_object_get(json_array_get(list, n - 1), "id"));
                json_decref(list);
                if (n < 1000)
                        break;
        }
        *ret = after;
        return 0;
}

/* Reports the deliveries dead-lettered since after_id; *ret_n gets their number. */
static int dead_deliveries(struct run *run, int64_t after_id, size_t *ret_n)
{
        size_t count = 0;

        for (;;) {
                json_t *list = NULL, *x;
                size_t i, n;
                int r = store_dead_list(run->store, after_id, 1000, &list);

                if (r < 0)
                        return r;
                n = json_array_size(list);
                json_array_foreach(list, i, x)
                {
                        const char *src = json_string_value(json_object_get(x, "source"));

                        after_id = json_integer_value(json_object_get(x, "id"));
                        if (!src || strncmp(src, "delivery:", 9) != 0)
                                continue;
                        count++;
                        fprintf(run->o->err, "dead delivery %s: %s\n", src + 9,
                                json_string_value(json_object_get(x, "reason")));
                }
                json_decref(list);
                if (n < 1000)
                        break;
        }
        *ret_n = count;
        return 0;
}

static void print_diff(const struct replay_diff *d, void *userdata)
{
        FILE *err = userdata;

        switch (d->kind) {
        case REPLAY_MISSING:
                fprintf(err, "missing: hook %s, conversation %s (event %s): expected, not made\n",
                        d->hook, d->conversation, d->event_id);
                break;
        case REPLAY_EXTRA:
                fprintf(err, "extra: hook %s, conversation %s (event %s): made, not expected\n",
                        d->hook, d->conversation, d->event_id);
                break;
        case REPLAY_CHANGED:
                fprintf(err, "changed: hook %s, conversation %s (event %s): %s differs\n", d->hook,
                        d->conversation, d->event_id, d->path);
                break;
        }
}

static int open_store(struct run *run)
{
        struct store_options so;
        char path[128];
        struct ch_error err = {{0}};
        int r, version = -1;

        config_store_options(run->cfg, &so);
        so.pool_size = 1;
        so.cache_entries = 0;
        /* A dry run must not create the database or its tables: without them there is no
         * context to read, so an empty throwaway store gives exactly what the real one would.
         * A database that cannot be probed is left to store_open to report. */
        if (run->o->dry_run && store_probe(&so, &version, &err) == 0 && version == 0) {
                snprintf(run->tmpdir, sizeof(run->tmpdir), "/tmp/ctxhookd-replay-XXXXXX");
                if (!mkdtemp(run->tmpdir)) {
                        run->tmpdir[0] = '\0';
                        fprintf(run->o->err, "replay: cannot create a temporary store: %s\n",
                                strerror(errno));
                        return -EIO;
                }
                snprintf(path, sizeof(path), "%s/empty.db", run->tmpdir);
                so = (struct store_options){.backend = "sqlite",
                                            .path = path,
                                            .busy_timeout_ms = so.busy_timeout_ms,
                                            .pool_size = 1};
        }
        r = store_open(&so, &run->store, &err);
        if (r < 0)
                fprintf(run->o->err, "replay: cannot open the store: %s\n", err.msg);
        return r;
}

/* The throwaway store's directory and whatever files the store made in it. */
static void remove_tmpdir(const char *dir)
{
        char path[64 + 256 + 2];
        struct dirent *e;
        DIR *dp;

        if (!dir[0])
                return;
        dp = opendir(dir);
        for (;;) {
                e = dp ? readdir(dp) : NULL;
                if (!e)
                        break;
                if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
                        continue;
                snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
                (void)unlink(path);
        }
        if (dp)
                closedir(dp);
        (void)rmdir(dir);
}

static void run_free(struct run *run)
{
        run->deliver = deliver_stop(run->deliver, STOP_GRACE);
        run->pipeline = pipeline_free(run->pipeline);
        run->store = store_close(run->store);
        run->got = replay_set_free(run->got);
        for (size_t i = 0; run->hook_json && i < run->cfg->n_hooks; i++) {
                free(run->hook_json[i]);
                free(run->url_json[i]);
        }
        free(run->hook_json);
        free(run->url_json);
        remove_tmpdir(run->tmpdir);
}

static int prepare(struct run *run)
{
        size_t nh = run->cfg->n_hooks;
        int r;

        run->hook_json = calloc(nh + 1, sizeof(char *));
        run->url_json = calloc(nh + 1, sizeof(char *));
        if (!run->hook_json || !run->url_json)
                return -ENOMEM;
        for (size_t i = 0; i < nh; i++) {
                run->hook_json[i] = json_quote(run->cfg->hooks[i].name);
                run->url_json[i] = json_quote(run->cfg->hooks[i].url);
                if (!run->hook_json[i] || !run->url_json[i])
                        return -ENOMEM;
        }
        if (run->o->expect) {
                r = replay_set_new(&run->got);
                if (r < 0)
                        return r;
        }
        r = open_store(run);
        if (r < 0)
                return r;
        return pipeline_new(run->store, NULL, run->cfg, &run->pipeline);
}

/* Starts the delivery thread with SIGINT/SIGTERM blocked in it, so they reach this thread. */
static int start_delivery(struct run *run)
{
        struct ch_error err = {{0}};
        sigset_t block, old;
        int r;

        sigemptyset(&block);
        sigaddset(&block, SIGINT);
        sigaddset(&block, SIGTERM);
        pthread_sigmask(SIG_BLOCK, &block, &old);
        r = deliver_start(run->cfg, run->store, NULL, &run->deliver, &err);
        pthread_sigmask(SIG_SETMASK, &old, NULL);
        if (r < 0)
                fprintf(run->o->err, "replay: cannot start the delivery thread: %s\n", err.msg);
        return r;
}

/* Waits until every queued delivery is delivered or dead (or a signal). */
static int drain(struct run *run)
{
        for (;;) {
                struct timespec ts = {.tv_sec = 0, .tv_nsec = POLL_MS * 1000000L};
                int64_t depth = 0;
                int r = store_outbox_depth(run->store, &depth);

                if (r < 0)
                        return r;
                if (depth == 0 || stop_signal)
                        return 0;
                nanosleep(&ts, NULL);
        }
}

static int open_logs(const struct replay_options *o, FILE **files)
{
        bool stdin_seen = false;

        for (size_t i = 0; i < o->n_logs; i++) {
                if (strcmp(o->logs[i], "-") == 0) {
                        if (stdin_seen) {
                                fprintf(o->err, "replay: '-' (stdin) can be named only once\n");
                                return EX_USAGE;
                        }
                        stdin_seen = true;
                        files[i] = stdin;
                        continue;
                }
                files[i] = fopen(o->logs[i], "re");
                if (!files[i]) {
                        fprintf(o->err, "replay: cannot open %s: %s\n", o->logs[i],
                                strerror(errno));
                        return EX_NOINPUT;
                }
        }
        return -1;
}

static int load_expected(const struct replay_options *o, struct replay_set **ret)
{
        struct ch_error err = {{0}};
        FILE *f;
        int r;

        f = fopen(o->expect, "re");
        if (!f) {
                fprintf(o->err, "replay: cannot open %s: %s\n", o->expect, strerror(errno));
                return EX_NOINPUT;
        }
        r = replay_set_load(f, o->expect, ret, &err);
        fclose(f);
        if (r < 0) {
                fprintf(o->err, "replay: %s\n", err.msg);
                return r == -EINVAL ? EX_DATAERR : EX_IOERR;
        }
        return -1;
}

static int run_all(struct run *run, FILE **files, struct replay_set *expected)
{
        const struct replay_options *o = run->o;
        int64_t dead_before = 0;
        size_t dead_deliv = 0, ndiff = 0;
        int status = EX_OK, r;

        r = prepare(run);
        if (r < 0)
                return r == -ENOMEM ? EX_OSERR : EX_UNAVAILABLE;
        if (!o->dry_run) {
                r = last_dead_id(run->store, &dead_before);
                if (r == 0)
                        r = start_delivery(run);
                if (r < 0)
                        return EX_UNAVAILABLE;
        }
        run->start_ms = service_now_ms();
        for (size_t i = 0; i < o->n_logs && !stop_signal; i++) {
                r = replay_log(run, strcmp(o->logs[i], "-") == 0 ? "stdin" : o->logs[i], files[i]);
                if (r < 0) {
                        if (r != -EIO)
                                fprintf(o->err, "replay: the store failed: %s\n", strerror(-r));
                        return EX_IOERR;
                }
        }
        if (o->dry_run && fflush(o->out) != 0) {
                fprintf(o->err, "replay: cannot write the deliveries: %s\n", strerror(errno));
                return EX_IOERR;
        }
        if (!o->dry_run) {
                r = drain(run);
                run->deliver = deliver_stop(run->deliver, STOP_GRACE);
                if (r == 0)
                        r = dead_deliveries(run, dead_before, &dead_deliv);
                if (r < 0) {
                        fprintf(o->err, "replay: the store failed: %s\n", strerror(-r));
                        return EX_IOERR;
                }
        }
        fprintf(o->err,
                "replay: %zu lines, %zu events, %zu deliveries%s, %zu ignored, %zu dead letters",
                run->lines, run->events, run->deliveries, o->dry_run ? " (dry run)" : "",
                run->ignored, run->dead);
        if (!o->dry_run)
                fprintf(o->err, ", %zu duplicates, %zu dead deliveries", run->duplicates,
                        dead_deliv);
        fputc('\n', o->err);
        if (stop_signal) {
                fprintf(o->err, "replay: interrupted by signal %d%s\n", (int)stop_signal,
                        o->dry_run ? "" : "; what was queued stays queued for the daemon");
                return EX_TEMPFAIL;
        }
        if (dead_deliv > 0)
                status = 1;
        if (expected) {
                r = replay_compare(expected, run->got, print_diff, o->err, &ndiff);
                if (r < 0)
                        return EX_OSERR;
                fprintf(o->err, "expect %s: %zu differences (%zu expected, %zu made)\n", o->expect,
                        ndiff, replay_set_size(expected), replay_set_size(run->got));
                if (ndiff > 0)
                        status = 1;
        }
        return status;
}

int replay_run(const struct config *cfg, const struct replay_options *opts)
{
        struct sigaction sa = {.sa_handler = on_signal}, old_int, old_term;
        struct replay_set *expected = NULL;
        struct run run = {.cfg = cfg, .o = opts};
        FILE **files;
        int status;

        if (!cfg || !opts || !opts->out || !opts->err || opts->n_logs == 0)
                return EX_USAGE;
        files = calloc(opts->n_logs, sizeof(*files));
        if (!files)
                return EX_OSERR;
        status = open_logs(opts, files);
        if (status < 0 && opts->expect)
                status = load_expected(opts, &expected);
        if (status < 0) {
                stop_signal = 0;
                sigemptyset(&sa.sa_mask);
                sigaction(SIGINT, &sa, &old_int);
                sigaction(SIGTERM, &sa, &old_term);
                status = run_all(&run, files, expected);
                run_free(&run);
                sigaction(SIGINT, &old_int, NULL);
                sigaction(SIGTERM, &old_term, NULL);
        }
        for (size_t i = 0; i < opts->n_logs; i++)
                if (files[i] && files[i] != stdin)
                        fclose(files[i]);
        free(files);
        replay_set_free(expected);
        return status;
}
