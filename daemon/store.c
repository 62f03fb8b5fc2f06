/* The public face of the store: checks every argument against the store's own limits (so a
 * backend never sees a NULL, an over-long or non-UTF-8 name, a negative time or an absurd TTL),
 * maps a NULL session id to STORE_DEFAULT_SESSION, and dispatches to the backend's operation
 * table. It also keeps the read cache of key hashes and single properties (store_cache.h):
 * reads are served from it while the backend's change counter is unchanged, and every write
 * bumps that counter once it is done (outbox and dead-letter writes excepted: they do not touch
 * Context API data). Also the helpers all backends share: ETag text, If-Match matching, time
 * format, lossy JSON text of arbitrary bytes. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ctxhookd/cleanup.h"
#include "ctxhookd/names.h"
#include "ctxhookd/store.h"
#include "store_backend.h"
#include "store_cache.h"

/* The backends this build knows; the first is the default. A new backend is one more line. */
static const struct store_ops *const backends[] = {
    &store_sqlite_ops,
    &store_pg_ops,
};

const char *const store_backend_names[] = {"sqlite", "postgresql", NULL};

/* A name the store can hold: present, at most max bytes, valid UTF-8. */
static int check_name(const char *name, size_t max)
{
        size_t len;

        if (!name)
                return -EINVAL;
        len = strnlen(name, max + 1);
        if (len > max)
                return -EINVAL;
        if (!names_utf8_valid(name, len))
                return -EINVAL;
        return 0;
}

static int check_scope(struct store *s, const char *account, const char *ns, int64_t now_ms)
{
        int rc;

        if (!s || now_ms < 0)
                return -EINVAL;
        rc = check_name(account, STORE_ACCOUNT_MAX);
        if (rc < 0)
                return rc;
        if (ns) {
                rc = check_name(ns, STORE_NAMESPACE_MAX);
                if (rc < 0)
                        return rc;
        }
        return 0;
}

/* Checks account, namespace and session id, turning a NULL session into the default one. */
static int check_session(struct store *s, const char *account, const char *ns, const char **sid,
                         int64_t now_ms)
{
        int rc;

        if (!ns)
                return -EINVAL;
        rc = check_scope(s, account, ns, now_ms);
        if (rc < 0)
                return rc;
        if (!*sid)
                *sid = STORE_DEFAULT_SESSION;
        return check_name(*sid, STORE_NAME_MAX);
}

/* Checks what check_session() checks, plus the property name. */
static int check_property(struct store *s, const char *account, const char *ns, const char **sid,
                          const char *name, int64_t now_ms)
{
        int rc = check_session(s, account, ns, sid, now_ms);
        if (rc < 0)
                return rc;
        return check_name(name, STORE_NAME_MAX);
}

static int check_ttl(int64_t ttl_s)
{
        return ttl_s > STORE_TTL_S_MAX ? -EINVAL : 0;
}

/* page/per_page → offset/limit; *ret_empty when the page lies beyond anything storable. */
static int check_page(int64_t page, int64_t per_page, int64_t *ret_offset, bool *ret_empty)
{
        if (page < 0 || per_page < 1 || per_page > 1000)
                return -EINVAL;
        if (page > INT64_MAX / per_page) {
                *ret_empty = true;
                *ret_offset = 0;
                return 0;
        }
        *ret_empty = false;
        *ret_offset = page * per_page;
        return 0;
}

void store_etag_format(uint64_t tag, char out[STORE_ETAG_MAX])
{
        snprintf(out, STORE_ETAG_MAX, "\"%016" PRIx64 "\"", tag);
}

bool store_etag_matches(const char *if_match, const char *etag)
{
        size_t etag_len = strlen(etag);
        const char *p = if_match;

        if (etag_len < 2)
                return false;
        while (*p) {
                const char *start, *end;

                while (*p == ' ' || *p == '\t' || *p == ',')
                        p++;
                if (!*p)
                        break;
                start = p;
                if (*p == '"') {
                        end = strchr(p + 1, '"');
                        end = end ? end + 1 : p + strlen(p);
                } else {
                        end = p + strcspn(p, ",");
                        while (end > start && (end[-1] == ' ' || end[-1] == '\t'))
                                end--;
                }
                if (end - start == 1 && *start == '*')
                        return true;
                if ((size_t)(end - start) == etag_len && memcmp(start, etag, etag_len) == 0)
                        return true;
                /* Tolerate a client that drops the quotes; never a weak tag (starts "W/"). */
                if (*start != '"' && *start != 'W' && (size_t)(end - start) == etag_len - 2 &&
                    memcmp(start, etag + 1, etag_len - 2) == 0)
                        return true;
                p = end;
                p += strcspn(p, ",");
        }
        return false;
}

void store_format_time(int64_t ms, char out[32])
{
        int64_t secs = ms / 1000, milli = ms % 1000;
        struct tm tm;
        size_t len;
        time_t t;

        if (milli < 0) {
                milli += 1000;
                secs -= 1;
        }
        t = (time_t)secs;
        if (!gmtime_r(&t, &tm)) {
                snprintf(out, 32, "1970-01-01T00:00:00.000Z");
                return;
        }
        /* strftime keeps the compiler's format-length checks happy about tm's field ranges. */
        len = strftime(out, 32 - 6, "%Y-%m-%dT%H:%M:%S", &tm);
        snprintf(out + len, 32 - len, ".%03uZ", (unsigned)milli % 1000);
}

static const struct store_ops *backend_find(const char *name)
{
        if (!name)
                return backends[0];
        for (size_t i = 0; i < sizeof(backends) / sizeof(backends[0]); i++)
                if (strcmp(backends[i]->name, name) == 0)
                        return backends[i];
        return NULL;
}

void store_describe(const struct store_options *opts, char *out, size_t size)
{
        const struct store_ops *ops = backend_find(opts->backend);
        char url[1024];

        if (ops == &store_pg_ops) {
                store_url_redact(opts->url ? opts->url : "", url, sizeof(url));
                snprintf(out, size, "postgresql %s", url);
        } else {
                snprintf(out, size, "%s %s", opts->backend ? opts->backend : "sqlite",
                         opts->path ? opts->path : "(no path)");
        }
}

/* Checks opts as every entry point does; *ret_ops gets the backend. */
static int check_options(const struct store_options *opts, const struct store_ops **ret_ops,
                         struct ch_error *err)
{
        const struct store_ops *ops;
        char what[1100];

        if (!opts) {
                ch_error_set(err, "store: no options given");
                return -EINVAL;
        }
        ops = backend_find(opts->backend);
        if (!ops) {
                ch_error_set(err, "store: unknown backend \"%s\" (known: sqlite, postgresql)",
                             opts->backend);
                return -EINVAL;
        }
        if (ops == &store_sqlite_ops && (!opts->path || !*opts->path)) {
                ch_error_set(err, "store: no database path given");
                return -EINVAL;
        }
        if (ops == &store_pg_ops && (!opts->url || !*opts->url)) {
                ch_error_set(err, "store: no PostgreSQL connection URL given");
                return -EINVAL;
        }
        if (opts->pool_size < 1 || opts->pool_size > 1024 || opts->busy_timeout_ms < 0) {
                store_describe(opts, what, sizeof(what));
                ch_error_set(err, "store %s: pool_size must be 1..1024 and busy_timeout_ms >= 0",
                             what);
                return -EINVAL;
        }
        *ret_ops = ops;
        return 0;
}

int store_probe(const struct store_options *opts, int *ret_version, struct ch_error *err)
{
        const struct store_ops *ops;
        int rc;

        if (!ret_version)
                return -EINVAL;
        rc = check_options(opts, &ops, err);
        if (rc < 0)
                return rc;
        return ops->probe(opts, ret_version, err);
}

int store_schema_latest(const struct store_options *opts)
{
        const struct store_ops *ops = backend_find(opts ? opts->backend : NULL);

        return ops ? ops->schema_latest : -EINVAL;
}

int store_open(const struct store_options *opts, struct store **ret, struct ch_error *err)
{
        const struct store_ops *ops;
        _cleanup_free_ struct store *s = NULL;
        char what[1100];
        int rc;

        if (!ret)
                return -EINVAL;
        rc = check_options(opts, &ops, err);
        if (rc < 0)
                return rc;
        store_describe(opts, what, sizeof(what));
        s = calloc(1, sizeof(*s));
        if (!s) {
                ch_error_set(err, "store %s: out of memory", what);
                return -ENOMEM;
        }
        s->ops = ops;
        if (opts->cache_entries > 0 && ops->gen_load && ops->gen_bump) {
                s->keys_cache = store_cache_new(opts->cache_entries / 4 + 1);
                s->props_cache = store_cache_new(opts->cache_entries);
                if (!s->keys_cache || !s->props_cache) {
                        store_cache_free(s->keys_cache);
                        store_cache_free(s->props_cache);
                        ch_error_set(err, "store %s: out of memory for the read cache", what);
                        return -ENOMEM;
                }
        }
        rc = ops->open(opts, &s->impl, err);
        if (rc < 0) {
                store_cache_free(s->keys_cache);
                store_cache_free(s->props_cache);
                return rc;
        }
        *ret = TAKE_PTR(s);
        return 0;
}

struct store *store_close(struct store *s)
{
        if (!s)
                return NULL;
        s->ops->close(s->impl);
        store_cache_free(s->keys_cache);
        store_cache_free(s->props_cache);
        free(s);
        return NULL;
}

/* Called after every write, whatever its outcome (a failed write bumps needlessly, which
 * only costs cache misses): cached reads loaded before it are no longer served. */
static int written(struct store *s, enum store_gen which, int rc)
{
        if (s->ops->gen_bump)
                s->ops->gen_bump(s->impl, which);
        return rc;
}

int store_ping(struct store *s)
{
        if (!s)
                return -EINVAL;
        return s->ops->ping(s->impl, NULL, 0);
}

int store_health(struct store *s, char *why, size_t why_size)
{
        if (!s)
                return -EINVAL;
        if (why && why_size > 0)
                why[0] = '\0';
        return s->ops->ping(s->impl, why, why_size);
}

int store_schema_version(struct store *s, int *ret_version)
{
        if (!s || !ret_version)
                return -EINVAL;
        return s->ops->schema_version(s->impl, ret_version);
}

int store_key_set(struct store *s, const char *account,
                  const unsigned char hash[STORE_KEY_HASH_LEN], int64_t now_ms)
{
        int rc = check_scope(s, account, NULL, now_ms);
        if (rc < 0)
                return rc;
        if (!hash)
                return -EINVAL;
        return written(s, STORE_GEN_KEYS, s->ops->key_set(s->impl, account, hash, now_ms));
}

int store_key_get(struct store *s, const char *account, unsigned char ret_hash[STORE_KEY_HASH_LEN])
{
        int rc = check_scope(s, account, NULL, 0);
        if (rc < 0)
                return rc;
        if (!ret_hash)
                return -EINVAL;
        if (!s->keys_cache)
                return s->ops->key_get(s->impl, account, ret_hash);

        const char *parts[] = {account};
        char key[CACHE_KEY_MAX], *hit = NULL;
        size_t key_len = store_cache_key(key, parts, 1), hit_len = 0;
        uint64_t gen = s->ops->gen_load(s->impl, STORE_GEN_KEYS);

        if (store_cache_get(s->keys_cache, gen, 0, key, key_len, &hit, &hit_len, NULL) == 0) {
                if (hit_len == STORE_KEY_HASH_LEN)
                        memcpy(ret_hash, hit, STORE_KEY_HASH_LEN);
                free(hit);
                if (hit_len == STORE_KEY_HASH_LEN)
                        return 0;
        }
        rc = s->ops->key_get(s->impl, account, ret_hash);
        if (rc == 0)
                store_cache_put(s->keys_cache, gen, 0, key, key_len, (const char *)ret_hash,
                                STORE_KEY_HASH_LEN, NULL);
        return rc;
}

int store_ns_create(struct store *s, const char *account, const char *ns, int64_t ttl_s,
                    int64_t now_ms)
{
        int rc;

        if (!ns)
                return -EINVAL;
        rc = check_scope(s, account, ns, now_ms);
        if (rc < 0)
                return rc;
        rc = check_ttl(ttl_s);
        if (rc < 0)
                return rc;
        return written(s, STORE_GEN_DATA, s->ops->ns_create(s->impl, account, ns, ttl_s, now_ms));
}

int store_ns_list(struct store *s, const char *account, json_t **ret_array)
{
        int rc = check_scope(s, account, NULL, 0);
        if (rc < 0)
                return rc;
        if (!ret_array)
                return -EINVAL;
        return s->ops->ns_list(s->impl, account, ret_array);
}

int store_ns_delete(struct store *s, const char *account, const char *ns)
{
        int rc;

        if (!ns)
                return -EINVAL;
        rc = check_scope(s, account, ns, 0);
        if (rc < 0)
                return rc;
        return written(s, STORE_GEN_DATA, s->ops->ns_delete(s->impl, account, ns));
}

int store_props_get(struct store *s, const char *account, const char *ns, const char *sid,
                    const char *const *include, int64_t now_ms, json_t **ret_object,
                    char ret_etag[STORE_ETAG_MAX])
{
        int rc = check_session(s, account, ns, &sid, now_ms);
        if (rc < 0)
                return rc;
        if (!ret_object)
                return -EINVAL;
        return s->ops->props_get(s->impl, account, ns, sid, include, now_ms, ret_object, ret_etag);
}

int store_prop_get(struct store *s, const char *account, const char *ns, const char *sid,
                   const char *name, int64_t now_ms, char **ret_json, size_t *ret_len,
                   char ret_etag[STORE_ETAG_MAX])
{
        int rc = check_property(s, account, ns, &sid, name, now_ms);
        if (rc < 0)
                return rc;
        if (!ret_json)
                return -EINVAL;

        const char *parts[] = {account, ns, sid, name};
        char key[CACHE_KEY_MAX], etag[STORE_ETAG_MAX];
        size_t key_len = s->props_cache ? store_cache_key(key, parts, 4) : 0, len = 0;
        uint64_t gen = 0;
        int64_t expires_ms;
        char *json;

        if (key_len > 0) {
                gen = s->ops->gen_load(s->impl, STORE_GEN_DATA);
                if (store_cache_get(s->props_cache, gen, now_ms, key, key_len, ret_json, ret_len,
                                    ret_etag) == 0)
                        return 0;
        }
        rc = s->ops->prop_get(s->impl, account, ns, sid, name, now_ms, &json, &len, etag,
                              &expires_ms);
        if (rc < 0)
                return rc;
        if (key_len > 0)
                store_cache_put(s->props_cache, gen, expires_ms, key, key_len, json, len, etag);
        *ret_json = json;
        if (ret_len)
                *ret_len = len;
        if (ret_etag)
                memcpy(ret_etag, etag, STORE_ETAG_MAX);
        return 0;
}

int store_props_merge(struct store *s, const char *account, const char *ns, const char *sid,
                      const json_t *props, const char *if_match, int64_t now_ms,
                      char ret_etag[STORE_ETAG_MAX])
{
        const char *key;
        size_t key_len;
        json_t *value;
        int rc;

        rc = check_session(s, account, ns, &sid, now_ms);
        if (rc < 0)
                return rc;
        if (!json_is_object(props))
                return -EINVAL;
        /* Refuse the whole object before touching anything; the backend checks again inside
         * its transaction, so even a check missed here cannot leave half a merge behind. */
        json_object_keylen_foreach((json_t *)props, key, key_len, value)
        {
                if (key_len > STORE_NAME_MAX || strlen(key) != key_len ||
                    !names_utf8_valid(key, key_len))
                        return -EINVAL;
        }
        return written(
            s, STORE_GEN_DATA,
            s->ops->props_merge(s->impl, account, ns, sid, props, if_match, now_ms, ret_etag));
}

int store_prop_put(struct store *s, const char *account, const char *ns, const char *sid,
                   const char *name, const json_t *value, const char *if_match, int64_t now_ms,
                   char ret_etag[STORE_ETAG_MAX])
{
        int rc = check_property(s, account, ns, &sid, name, now_ms);
        if (rc < 0)
                return rc;
        if (!value)
                return -EINVAL;
        return written(
            s, STORE_GEN_DATA,
            s->ops->prop_put(s->impl, account, ns, sid, name, value, if_match, now_ms, ret_etag));
}

int store_prop_delete(struct store *s, const char *account, const char *ns, const char *sid,
                      const char *name, const char *if_match, int64_t now_ms)
{
        int rc = check_property(s, account, ns, &sid, name, now_ms);
        if (rc < 0)
                return rc;
        return written(s, STORE_GEN_DATA,
                       s->ops->prop_delete(s->impl, account, ns, sid, name, if_match, now_ms));
}

int store_props_clear(struct store *s, const char *account, const char *ns, const char *sid,
                      const char *if_match, int64_t now_ms)
{
        int rc = check_session(s, account, ns, &sid, now_ms);
        if (rc < 0)
                return rc;
        return written(s, STORE_GEN_DATA,
                       s->ops->props_clear(s->impl, account, ns, sid, if_match, now_ms));
}

/* The checks shared by the paged listings. Returns 0 to go on from *ret_offset, 1 when the
 * page lies beyond anything storable (*ret_array is then an empty array), or a negative code. */
static int check_listing(struct store *s, const char *account, const char *ns, int64_t page,
                         int64_t per_page, int64_t now_ms, int64_t *ret_offset, json_t **ret_array)
{
        bool empty;
        json_t *a;
        int rc;

        if (!ns || !ret_array)
                return -EINVAL;
        rc = check_scope(s, account, ns, now_ms);
        if (rc < 0)
                return rc;
        rc = check_page(page, per_page, ret_offset, &empty);
        if (rc < 0 || !empty)
                return rc;
        a = json_array();
        if (!a)
                return -ENOMEM;
        *ret_array = a;
        return 1;
}

int store_session_ids(struct store *s, const char *account, const char *ns, int64_t page,
                      int64_t per_page, int64_t now_ms, json_t **ret_array)
{
        int64_t offset;
        int rc = check_listing(s, account, ns, page, per_page, now_ms, &offset, ret_array);

        if (rc != 0)
                return rc < 0 ? rc : 0;
        return s->ops->session_ids(s->impl, account, ns, offset, per_page, now_ms, ret_array);
}

int store_session_props(struct store *s, const char *account, const char *ns, int64_t page,
                        int64_t per_page, int64_t now_ms, json_t **ret_array)
{
        int64_t offset;
        int rc = check_listing(s, account, ns, page, per_page, now_ms, &offset, ret_array);

        if (rc != 0)
                return rc < 0 ? rc : 0;
        return s->ops->session_props(s->impl, account, ns, offset, per_page, now_ms, ret_array);
}

int store_session_create(struct store *s, const char *account, const char *ns, const char *sid,
                         int64_t ttl_s, int64_t now_ms)
{
        int rc = check_session(s, account, ns, &sid, now_ms);
        if (rc < 0)
                return rc;
        rc = check_ttl(ttl_s);
        if (rc < 0)
                return rc;
        return written(s, STORE_GEN_DATA,
                       s->ops->session_create(s->impl, account, ns, sid, ttl_s, now_ms));
}

int store_session_list(struct store *s, const char *account, const char *ns, int64_t now_ms,
                       json_t **ret_array)
{
        int rc;

        if (!ns || !ret_array)
                return -EINVAL;
        rc = check_scope(s, account, ns, now_ms);
        if (rc < 0)
                return rc;
        return s->ops->session_list(s->impl, account, ns, now_ms, ret_array);
}

int store_session_delete(struct store *s, const char *account, const char *ns, const char *sid)
{
        int rc = check_session(s, account, ns, &sid, 0);
        if (rc < 0)
                return rc;
        return written(s, STORE_GEN_DATA, s->ops->session_delete(s->impl, account, ns, sid));
}

int store_sweep(struct store *s, int64_t now_ms, int64_t *ret_deleted)
{
        if (!s || now_ms < 0)
                return -EINVAL;
        return written(s, STORE_GEN_DATA, s->ops->sweep(s->impl, now_ms, ret_deleted));
}

/* ---- Outbox and dead letters ----
 *
 * None of these writes changes Context API data, so they do not bump STORE_GEN_DATA: cached
 * key hashes and properties stay valid, and a busy delivery thread does not empty the read
 * cache of the HTTP workers. The one exception is store_outbox_done of a delivery with
 * clear_namespaces, which deletes session properties and so must invalidate cached reads. */

/* A string the store keeps as given: present and at most max bytes. */
static int check_text(const char *s, size_t max)
{
        if (!s || strnlen(s, max + 1) > max)
                return -EINVAL;
        return 0;
}

/* clear_namespaces: NULL, or a JSON array of strings the store could hold as namespaces. */
static int check_clear_namespaces(const char *text)
{
        json_t *list, *ns;
        size_t i;
        int rc = 0;

        if (!text)
                return 0;
        list = json_loads(text, 0, NULL);
        if (!json_is_array(list)) {
                json_decref(list);
                return -EINVAL;
        }
        json_array_foreach(list, i, ns)
        {
                const char *name = json_string_value(ns);

                if (!name || strlen(name) != json_string_length(ns) ||
                    check_name(name, STORE_NAMESPACE_MAX) < 0) {
                        rc = -EINVAL;
                        break;
                }
        }
        json_decref(list);
        return rc;
}

static int check_enqueue(const struct store_enqueue *it)
{
        int rc;

        rc = check_name(it->hook, STORE_HOOK_MAX);
        if (rc >= 0)
                rc = check_name(it->account, STORE_ACCOUNT_MAX);
        if (rc >= 0)
                rc = check_name(it->conversation, STORE_NAME_MAX);
        if (rc >= 0)
                rc = check_name(it->webhook_id, STORE_WEBHOOK_ID_MAX);
        if (rc >= 0 && !it->body)
                rc = -EINVAL;
        if (rc >= 0)
                rc = check_clear_namespaces(it->clear_namespaces);
        return rc;
}

static int check_dedup_key(const char *dedup_key)
{
        return dedup_key ? check_text(dedup_key, STORE_DEDUP_KEY_MAX) : 0;
}

static int check_message(const struct store_message *m)
{
        int rc;

        if (m->n_items > 0 && !m->items)
                return -EINVAL;
        rc = check_dedup_key(m->dedup_key);
        if (rc < 0)
                return rc;
        if (m->dead_source) {
                if (m->n_items > 0 || !m->dead_reason || (!m->raw && m->raw_len > 0))
                        return -EINVAL;
                return 0;
        }
        for (size_t i = 0; i < m->n_items; i++) {
                rc = check_enqueue(&m->items[i]);
                if (rc < 0)
                        return rc;
        }
        return 0;
}

int store_outbox_enqueue_many(struct store *s, const struct store_message *msgs, size_t n,
                              int64_t now_ms, int *ret_results)
{
        _cleanup_free_ int *results = NULL;
        int rc;

        if (!s || now_ms < 0 || (n > 0 && (!msgs || !ret_results)))
                return -EINVAL;
        if (n == 0)
                return 0;
        for (size_t i = 0; i < n; i++) {
                rc = check_message(&msgs[i]);
                if (rc < 0)
                        return rc;
        }
        results = calloc(n, sizeof(*results));
        if (!results)
                return -ENOMEM;
        rc = s->ops->outbox_enqueue_many(s->impl, msgs, n, now_ms, results);
        if (rc < 0)
                return rc;
        memcpy(ret_results, results, n * sizeof(*results));
        return 0;
}

/* The single-message calls: a batch of one whose -EEXIST becomes the return value. */
static int enqueue_one(struct store *s, const struct store_message *m, int64_t now_ms)
{
        int result = 0;
        int rc;

        rc = store_outbox_enqueue_many(s, m, 1, now_ms, &result);
        return rc < 0 ? rc : result;
}

int store_outbox_enqueue(struct store *s, const char *dedup_key, const struct store_enqueue *items,
                         size_t n, int64_t now_ms)
{
        const struct store_message m = {.dedup_key = dedup_key, .items = items, .n_items = n};

        if (!s)
                return -EINVAL;
        return enqueue_one(s, &m, now_ms);
}

int store_outbox_claim(struct store *s, int64_t now_ms, int64_t lease_ms, size_t limit,
                       struct store_delivery **ret, size_t *ret_n)
{
        if (!s || !ret || !ret_n || now_ms < 0 || lease_ms < 1 || limit < 1)
                return -EINVAL;
        if (lease_ms > INT64_MAX - now_ms)
                return -EINVAL;
        return s->ops->outbox_claim(s->impl, now_ms, lease_ms, limit, ret, ret_n);
}

void store_delivery_clear(struct store_delivery *d)
{
        free(d->hook);
        free(d->account);
        free(d->conversation);
        free(d->webhook_id);
        free(d->body);
}

void store_deliveries_free(struct store_delivery *d, size_t n)
{
        if (!d)
                return;
        for (size_t i = 0; i < n; i++)
                store_delivery_clear(&d[i]);
        free(d);
}

int store_outbox_done(struct store *s, int64_t id, int64_t now_ms)
{
        bool cleared = false;
        int rc;

        if (!s || now_ms < 0)
                return -EINVAL;
        rc = s->ops->outbox_done(s->impl, id, now_ms, &cleared);
        /* As written(): a failed write bumps too, since it is cheap and always safe. */
        if (cleared || rc < 0)
                return written(s, STORE_GEN_DATA, rc);
        return rc;
}

int store_outbox_retry(struct store *s, int64_t id, int64_t attempts, int64_t next_attempt_ms,
                       const char *last_error)
{
        if (!s || attempts < 0 || next_attempt_ms < 0)
                return -EINVAL;
        return s->ops->outbox_retry(s->impl, id, attempts, next_attempt_ms, last_error);
}

int store_outbox_dead(struct store *s, int64_t id, const char *reason, int64_t now_ms)
{
        if (!s || !reason || now_ms < 0)
                return -EINVAL;
        return s->ops->outbox_dead(s->impl, id, reason, now_ms);
}

int store_outbox_depth(struct store *s, int64_t *ret)
{
        if (!s || !ret)
                return -EINVAL;
        return s->ops->outbox_depth(s->impl, ret);
}

int store_outbox_next_due(struct store *s, int64_t *ret_ms)
{
        if (!s || !ret_ms)
                return -EINVAL;
        return s->ops->outbox_next_due(s->impl, ret_ms);
}

int store_dead_add(struct store *s, const char *dedup_key, const char *source, const char *reason,
                   const char *raw, size_t raw_len, int64_t now_ms)
{
        const struct store_message m = {.dedup_key = dedup_key,
                                        .dead_source = source,
                                        .dead_reason = reason,
                                        .raw = raw,
                                        .raw_len = raw_len};

        if (!s || !source || !reason)
                return -EINVAL;
        return enqueue_one(s, &m, now_ms);
}

int store_dead_list(struct store *s, int64_t after_id, int64_t limit, json_t **ret_array)
{
        if (!s || !ret_array || limit < 1 || limit > 1000)
                return -EINVAL;
        return s->ops->dead_list(s->impl, after_id, limit, ret_array);
}

int store_dead_count(struct store *s, int64_t *ret)
{
        if (!s || !ret)
                return -EINVAL;
        return s->ops->dead_count(s->impl, ret);
}

int store_dead_redrive(struct store *s, int64_t id, int64_t now_ms, char **ret_raw,
                       size_t *ret_raw_len, char **ret_source)
{
        /* All three out-parameters are required: only the backend knows whether the dead
         * letter is an event, which is handed back through them. */
        if (!s || now_ms < 0 || !ret_raw || !ret_raw_len || !ret_source)
                return -EINVAL;
        return s->ops->dead_redrive(s->impl, id, now_ms, ret_raw, ret_raw_len, ret_source);
}

int store_dead_delete(struct store *s, int64_t id)
{
        if (!s)
                return -EINVAL;
        return s->ops->dead_delete(s->impl, id);
}

int store_dedup_expire(struct store *s, int64_t before_ms, int64_t *ret_deleted)
{
        /* A negative before_ms (a retention longer than the clock's age) just forgets nothing. */
        if (!s)
                return -EINVAL;
        return s->ops->dedup_expire(s->impl, before_ms, ret_deleted);
}

/* Length of the longest prefix of p[0..left) (left ≥ 1) that starts a well-formed UTF-8
 * sequence: the sequence's full length with *ret_ok set, or (at least 1) the length of the
 * maximal ill-formed subpart, which becomes one U+FFFD. Ranges per Unicode table 3-7. */
static size_t utf8_scan(const unsigned char *p, size_t left, bool *ret_ok)
{
        unsigned char lo = 0x80, hi = 0xbf;
        size_t need;

        *ret_ok = false;
        if (p[0] < 0x80) {
                *ret_ok = true;
                return 1;
        }
        if (p[0] >= 0xc2 && p[0] <= 0xdf) {
                need = 2;
        } else if (p[0] >= 0xe0 && p[0] <= 0xef) {
                need = 3;
                lo = p[0] == 0xe0 ? 0xa0 : 0x80; /* overlong */
                hi = p[0] == 0xed ? 0x9f : 0xbf; /* surrogates */
        } else if (p[0] >= 0xf0 && p[0] <= 0xf4) {
                need = 4;
                lo = p[0] == 0xf0 ? 0x90 : 0x80; /* overlong */
                hi = p[0] == 0xf4 ? 0x8f : 0xbf; /* above U+10FFFF */
        } else {
                return 1;
        }
        for (size_t i = 1; i < need; i++) {
                if (i >= left || p[i] < lo || p[i] > hi)
                        return i;
                lo = 0x80;
                hi = 0xbf;
        }
        *ret_ok = true;
        return need;
}

json_t *store_json_lossy(const char *p, size_t len)
{
        static const char replacement[] = "\xef\xbf\xbd";
        const unsigned char *in = (const unsigned char *)p;
        _cleanup_free_ char *out = NULL;
        size_t o = 0;

        if (len == 0)
                return json_string("");
        if (names_utf8_valid(p, len))
                return json_stringn(p, len);
        /* Every input byte yields at most 3 output bytes (one U+FFFD per ill-formed byte). */
        if (len > SIZE_MAX / 3)
                return NULL;
        out = malloc(len * 3);
        if (!out)
                return NULL;
        for (size_t i = 0; i < len;) {
                bool ok;
                size_t n = utf8_scan(in + i, len - i, &ok);

                if (ok) {
                        memcpy(out + o, in + i, n);
                        o += n;
                } else {
                        memcpy(out + o, replacement, 3);
                        o += 3;
                }
                i += n;
        }
        return json_stringn(out, o);
}

json_t *store_ns_item(const char *name, size_t name_len, int64_t created_ms, int64_t ttl_s)
{
        char created[32];
        json_t *o;

        store_format_time(created_ms, created);
        o = json_pack("{s:s%, s:s}", "name", name, name_len, "createdAt", created);
        if (o && ttl_s > 0 && json_object_set_new(o, "ttlSecond", json_integer(ttl_s)) < 0)
                o = (json_decref(o), NULL);
        return o;
}

json_t *store_session_item(const char *sid, size_t sid_len, int64_t created_ms, int64_t ttl_s)
{
        char created[32];

        store_format_time(created_ms, created);
        return json_pack("{s:s%, s:s, s:I}", "sessionId", sid, sid_len, "createdAt", created,
                         "ttlSecond", (json_int_t)ttl_s);
}

json_t *store_dead_item(int64_t id, const char *source, size_t source_len, const char *reason,
                        size_t reason_len, int64_t received_ms, const char *raw, size_t raw_len)
{
        char received[32];
        json_t *o = json_object();
        int rc = 0;

        if (!o)
                return NULL;
        /* Members in the documented order. */
        store_format_time(received_ms, received);
        rc |= json_object_set_new(o, "id", json_integer(id));
        rc |= json_object_set_new(o, "source", store_json_lossy(source, source_len));
        rc |= json_object_set_new(o, "reason", store_json_lossy(reason, reason_len));
        rc |= json_object_set_new(o, "received", json_string(received));
        rc |= json_object_set_new(o, "raw", store_json_lossy(raw, raw_len));
        if (rc != 0) {
                json_decref(o);
                return NULL;
        }
        return o;
}

void store_dead_row_clear(struct store_dead_row *r)
{
        free(r->source);
        free(r->raw);
        free(r->hook);
        free(r->account);
        free(r->conversation);
        free(r->webhook_id);
        free(r->clear_namespaces);
        *r = (struct store_dead_row){0};
}

int store_each_namespace(const char *clear_namespaces, int (*fn)(const char *ns, void *ctx),
                         void *ctx)
{
        json_t *list = json_loads(clear_namespaces, 0, NULL), *ns;
        size_t i;
        int rc = 0;

        if (!json_is_array(list)) {
                json_decref(list);
                return -EIO;
        }
        json_array_foreach(list, i, ns)
        {
                const char *name = json_string_value(ns);

                if (!name || strlen(name) > STORE_NAMESPACE_MAX) {
                        rc = -EIO;
                        break;
                }
                rc = fn(name, ctx);
                if (rc < 0)
                        break;
        }
        json_decref(list);
        return rc;
}
