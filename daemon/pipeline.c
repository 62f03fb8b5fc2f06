/* The one path of every event (see pipeline.h): parse → route → gather → build → queue, or
 * a dead letter. It owns no thread and keeps no state between messages; everything durable
 * goes through one store transaction per call (one message, or a batch of them), so a message
 * is either fully recorded or not at all, and its source may be acknowledged exactly when
 * pipeline_process (or pipeline_process_batch) returns 0. */
#include <errno.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ctxhookd/cleanup.h"
#include "ctxhookd/event.h"
#include "ctxhookd/pipeline.h"
#include "ctxhookd/router.h"

struct pipeline {
        struct store *store;
        struct metrics *metrics;
        /* Read-held by every call for as long as it uses cfg (its hooks above all); a reload
         * write-holds it to swap in the next config, so the old one is unused once
         * pipeline_reconfigure returns. */
        pthread_rwlock_t lock;
        const struct config *cfg;
};

int pipeline_new(struct store *store, struct metrics *metrics, const struct config *cfg,
                 struct pipeline **ret)
{
        struct pipeline *p = calloc(1, sizeof(*p));
        pthread_rwlockattr_t attr;

        if (!p)
                return -ENOMEM;
        p->store = store;
        p->metrics = metrics;
        p->cfg = cfg;
        /* Writer first: under steady load a reload must not wait for a gap between readers.
         * (No call takes the read lock twice, which this kind forbids.) */
        pthread_rwlockattr_init(&attr);
        pthread_rwlockattr_setkind_np(&attr, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
        pthread_rwlock_init(&p->lock, &attr);
        pthread_rwlockattr_destroy(&attr);
        *ret = p;
        return 0;
}

struct pipeline *pipeline_free(struct pipeline *p)
{
        if (!p)
                return NULL;
        pthread_rwlock_destroy(&p->lock);
        free(p);
        return NULL;
}

void pipeline_reconfigure(struct pipeline *p, const struct config *cfg)
{
        pthread_rwlock_wrlock(&p->lock);
        p->cfg = cfg;
        pthread_rwlock_unlock(&p->lock);
}

void pipeline_deliveries_free(struct pipeline_delivery *d, size_t n)
{
        if (!d)
                return;
        for (size_t i = 0; i < n; i++) {
                free(d[i].webhook_id);
                free(d[i].body);
                free(d[i].account);
                free(d[i].conversation);
                free(d[i].clear_namespaces);
        }
        free(d);
}

/* "msg_" + 32 hex digits of SHA-256(event id, hook): the same event and hook always give the
 * same webhook-id, so a receiver can drop a delivery it has seen, whatever path (a Kafka
 * redelivery, a replay, a redrive) brought it twice. */
static int webhook_id(const char *event_id, const char *hook, char **ret)
{
        unsigned char md[EVP_MAX_MD_SIZE];
        unsigned int md_len = 0;
        EVP_MD_CTX *ctx = EVP_MD_CTX_new();
        char *out;
        int ok;

        if (!ctx)
                return -ENOMEM;
        ok = EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) == 1 &&
             EVP_DigestUpdate(ctx, event_id, strlen(event_id) + 1) == 1 &&
             EVP_DigestUpdate(ctx, hook, strlen(hook)) == 1 &&
             EVP_DigestFinal_ex(ctx, md, &md_len) == 1;
        EVP_MD_CTX_free(ctx);
        if (!ok || md_len < 16)
                return -EIO;
        out = malloc(4 + 32 + 1);
        if (!out)
                return -ENOMEM;
        memcpy(out, "msg_", 4);
        for (unsigned i = 0; i < 16; i++) {
                /* Not snprintf: this runs for every delivery, and the formatting showed. */
                out[4 + 2 * i] = "0123456789abcdef"[md[i] >> 4];
                out[5 + 2 * i] = "0123456789abcdef"[md[i] & 15];
        }
        out[4 + 32] = '\0';
        *ret = out;
        return 0;
}

/* {"<ns>": {"namespace": {…}, "session": {…}}, …} for the hook's namespaces, read now. */
static int gather_context(struct pipeline *p, const struct config_hook *hook, const struct event *e,
                          int64_t now_ms, json_t **ret)
{
        json_t *context = json_object();

        if (!context)
                return -ENOMEM;
        for (char **ns = hook->namespaces; ns && *ns; ns++) {
                json_t *ns_props = NULL, *session_props = NULL, *entry;
                int r;

                r = store_props_get(p->store, e->account, *ns, NULL, NULL, now_ms, &ns_props, NULL);
                if (r == 0)
                        r = store_props_get(p->store, e->account, *ns, e->conversation, NULL,
                                            now_ms, &session_props, NULL);
                if (r < 0) {
                        json_decref(ns_props);
                        json_decref(context);
                        return r;
                }
                entry = json_pack("{s:o, s:o}", "namespace", ns_props, "session", session_props);
                if (!entry || json_object_set_new(context, *ns, entry) < 0) {
                        json_decref(context);
                        return -ENOMEM;
                }
        }
        *ret = context;
        return 0;
}

static int build_body(const struct config_hook *hook, const struct event *e, json_t *context,
                      int64_t now_ms, char **ret_body, size_t *ret_len)
{
        json_t *event, *envelope;
        char *body;

        event = json_pack("{s:s, s:s, s:s, s:s, s:o, s:I}", "id", e->id, "kind",
                          event_kind_name(e->kind), "accountId", e->account, "conversationId",
                          e->conversation, "closeReason",
                          e->close_reason[0] ? json_string(e->close_reason) : json_null(), "time",
                          (json_int_t)e->time_ms);
        if (!event) {
                json_decref(context);
                return -ENOMEM;
        }
        envelope = json_pack("{s:I, s:[], s:{s:s, s:o, s:O, s:o}}", "timestamp", (json_int_t)now_ms,
                             "headers", "payload", "hook", hook->name, "event", event, "raw",
                             e->raw, "context", context);
        if (!envelope)
                return -ENOMEM;
        body = json_dumps(envelope, JSON_COMPACT | JSON_ENCODE_ANY);
        json_decref(envelope);
        if (!body)
                return -ENOMEM;
        *ret_body = body;
        *ret_len = strlen(body);
        return 0;
}

/* The namespaces to clear once delivered, as a JSON array, or NULL. */
static int clear_spec(const struct config_hook *hook, char **ret)
{
        json_t *a;

        *ret = NULL;
        if (!hook->clear_after || !hook->namespaces || !hook->namespaces[0])
                return 0;
        a = json_array();
        for (char **ns = hook->namespaces; a && *ns; ns++)
                if (json_array_append_new(a, json_string(*ns)) < 0)
                        a = (json_decref(a), NULL);
        *ret = a ? json_dumps(a, JSON_COMPACT) : NULL;
        json_decref(a);
        return *ret ? 0 : -ENOMEM;
}

/* Every delivery the batch's events trigger, built now; counts into res. */
static int build_all(struct pipeline *p, const struct event_batch *batch, int64_t now_ms,
                     struct pipeline_result *res, struct pipeline_delivery **ret, size_t *ret_n)
{
        const struct config *cfg = p->cfg;
        struct pipeline_delivery *d = NULL;
        size_t n = 0, cap = 0;
        size_t *match = NULL;
        int r = 0;

        if (cfg->n_hooks > 0) {
                match = calloc(cfg->n_hooks, sizeof(*match));
                if (!match)
                        return -ENOMEM;
        }
        for (size_t i = 0; r == 0 && i < batch->n; i++) {
                const struct event *e = &batch->events[i];
                size_t m = router_match(cfg->hooks, cfg->n_hooks, e, match);

                if (m == 0)
                        res->ignored++;
                for (size_t j = 0; r == 0 && j < m; j++) {
                        const struct config_hook *hook = &cfg->hooks[match[j]];
                        struct pipeline_delivery *x;
                        json_t *context = NULL;

                        if (n == cap) {
                                size_t ncap = cap ? 2 * cap : 4;
                                struct pipeline_delivery *nd = realloc(d, ncap * sizeof(*d));
                                if (!nd) {
                                        r = -ENOMEM;
                                        break;
                                }
                                d = nd;
                                cap = ncap;
                        }
                        x = &d[n];
                        memset(x, 0, sizeof(*x));
                        n++;
                        x->hook = hook;
                        x->account = strdup(e->account);
                        x->conversation = strdup(e->conversation);
                        if (!x->account || !x->conversation)
                                r = -ENOMEM;
                        if (r == 0)
                                r = webhook_id(e->id, hook->name, &x->webhook_id);
                        if (r == 0)
                                r = clear_spec(hook, &x->clear_namespaces);
                        if (r == 0)
                                r = gather_context(p, hook, e, now_ms, &context);
                        if (r == 0)
                                r = build_body(hook, e, context, now_ms, &x->body, &x->body_len);
                }
        }
        free(match);
        if (r < 0) {
                pipeline_deliveries_free(d, n);
                return r;
        }
        res->events = batch->n;
        res->deliveries = n;
        *ret = d;
        *ret_n = n;
        return 0;
}

static int parse_locked(struct pipeline *p, const char *source, const char *default_account,
                        const char *data, size_t len, int64_t now_ms, struct event_batch *ret,
                        struct ch_error *err)
{
        return event_parse(data, len, (size_t)p->cfg->kafka.max_message_bytes, source,
                           default_account ? default_account : p->cfg->kafka.account, now_ms, ret,
                           err);
}

/* Parses and builds; a message that cannot be parsed gives res->dead with the reason. */
static int parse_and_build(struct pipeline *p, const char *source, const char *default_account,
                           const char *data, size_t len, int64_t now_ms,
                           struct pipeline_result *res, struct pipeline_delivery **ret,
                           size_t *ret_n)
{
        struct event_batch batch = {0};
        struct ch_error err = {{0}};
        int r;

        memset(res, 0, sizeof(*res));
        *ret = NULL;
        *ret_n = 0;
        r = parse_locked(p, source, default_account, data, len, now_ms, &batch, &err);
        if (r == -ENOMEM)
                return r; /* not the message's fault: it is not a dead letter */
        if (r < 0) {
                res->dead = true;
                snprintf(res->reason, sizeof(res->reason), "%.*s", (int)sizeof(res->reason) - 1,
                         err.msg);
                return 0;
        }
        r = build_all(p, &batch, now_ms, res, ret, ret_n);
        event_batch_free(&batch);
        return r;
}

int pipeline_parse(struct pipeline *p, const char *source, const char *default_account,
                   const char *data, size_t len, int64_t now_ms, struct event_batch *ret,
                   struct ch_error *err)
{
        int r;

        pthread_rwlock_rdlock(&p->lock);
        r = parse_locked(p, source, default_account, data, len, now_ms, ret, err);
        pthread_rwlock_unlock(&p->lock);
        return r;
}

int pipeline_build(struct pipeline *p, const char *source, const char *data, size_t len,
                   int64_t now_ms, struct pipeline_result *ret,
                   struct pipeline_delivery **ret_deliveries, size_t *ret_n)
{
        int r;

        pthread_rwlock_rdlock(&p->lock);
        r = parse_and_build(p, source, NULL, data, len, now_ms, ret, ret_deliveries, ret_n);
        pthread_rwlock_unlock(&p->lock);
        return r;
}

/* A message of a batch while it is built: its outcome and what to store for it. */
struct built {
        struct pipeline_result res;
        struct pipeline_delivery *d;
        size_t n;
};

static void built_free(struct built *b, size_t n)
{
        if (!b)
                return;
        for (size_t i = 0; i < n; i++)
                pipeline_deliveries_free(b[i].d, b[i].n);
        free(b);
}

/* Counts a recorded message's outcome into the metrics. */
static void count(struct pipeline *p, const struct pipeline_result *res)
{
        if (!p->metrics)
                return;
        if (res->dead)
                metrics_event(p->metrics, METRICS_EVENT_DEAD, 1);
        metrics_event(p->metrics, METRICS_EVENT_IGNORED, res->ignored);
        metrics_event(p->metrics, METRICS_EVENT_QUEUED, res->events - res->ignored);
}

/* Stores what b[0..n) built (one transaction) and fills ret_results. */
static int store_built(struct pipeline *p, const struct pipeline_message *msgs, struct built *b,
                       size_t n, int64_t now_ms, struct pipeline_result *ret_results)
{
        _cleanup_free_ struct store_message *sm = calloc(n, sizeof(*sm));
        _cleanup_free_ int *results = calloc(n, sizeof(*results));
        _cleanup_free_ struct store_enqueue *items = NULL;
        size_t total = 0, k = 0;
        int r;

        if (!sm || !results)
                return -ENOMEM;
        for (size_t i = 0; i < n; i++)
                total += b[i].n;
        if (total > 0) {
                items = calloc(total, sizeof(*items));
                if (!items)
                        return -ENOMEM;
        }
        for (size_t i = 0; i < n; i++) {
                sm[i].dedup_key = msgs[i].dedup_key;
                if (b[i].res.dead) {
                        if (!msgs[i].source)
                                return -EINVAL; /* a dead letter must say where it came from */
                        sm[i].dead_source = msgs[i].source;
                        sm[i].dead_reason = b[i].res.reason;
                        sm[i].raw = msgs[i].data;
                        sm[i].raw_len = msgs[i].len;
                        continue;
                }
                sm[i].items = items ? &items[k] : NULL;
                sm[i].n_items = b[i].n;
                for (size_t j = 0; j < b[i].n; j++) {
                        const struct pipeline_delivery *d = &b[i].d[j];

                        items[k++] = (struct store_enqueue){
                            .hook = d->hook->name,
                            .account = d->account,
                            .conversation = d->conversation,
                            .webhook_id = d->webhook_id,
                            .body = d->body,
                            .body_len = d->body_len,
                            .clear_namespaces = d->clear_namespaces,
                        };
                }
        }
        r = store_outbox_enqueue_many(p->store, sm, n, now_ms, results);
        if (r < 0)
                return r;
        for (size_t i = 0; i < n; i++) {
                struct pipeline_result *res = &b[i].res;

                if (results[i] == -EEXIST) {
                        memset(res, 0, sizeof(*res));
                        res->duplicate = true;
                        if (p->metrics)
                                metrics_event(p->metrics, METRICS_EVENT_DUPLICATE, 1);
                } else {
                        count(p, res);
                }
                ret_results[i] = *res;
        }
        return 0;
}

int pipeline_process_batch(struct pipeline *p, const struct pipeline_message *msgs, size_t n,
                           int64_t now_ms, struct pipeline_result *ret_results)
{
        struct built *b;
        int r = 0;

        if (n == 0)
                return 0;
        if (!msgs || !ret_results)
                return -EINVAL;
        b = calloc(n, sizeof(*b));
        if (!b)
                return -ENOMEM;
        pthread_rwlock_rdlock(&p->lock);
        for (size_t i = 0; r == 0 && i < n; i++)
                r = parse_and_build(p, msgs[i].source, msgs[i].default_account, msgs[i].data,
                                    msgs[i].len, now_ms, &b[i].res, &b[i].d, &b[i].n);
        if (r == 0)
                r = store_built(p, msgs, b, n, now_ms, ret_results);
        built_free(b, n);
        pthread_rwlock_unlock(&p->lock);
        return r;
}

int pipeline_process(struct pipeline *p, const char *source, const char *dedup_key,
                     const char *data, size_t len, int64_t now_ms, struct pipeline_result *ret)
{
        const struct pipeline_message m = {
            .source = source, .dedup_key = dedup_key, .data = data, .len = len};
        struct pipeline_result res;
        int r;

        r = pipeline_process_batch(p, &m, 1, now_ms, &res);
        if (r < 0)
                return r;
        if (ret)
                *ret = res;
        return 0;
}
