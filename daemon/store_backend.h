/* The private contract between store.c and a storage backend. store.c checks every argument
 * (NULLs, lengths, UTF-8, ranges) and maps a NULL session id to STORE_DEFAULT_SESSION, so a
 * backend receives only well-formed input and implements the semantics of include/ctxhookd/
 * store.h: TTL, ETags, If-Match, one transaction per write. Adding a backend means one new file
 * with a `struct store_ops` and one line in store.c's backend table; no caller changes. */
#ifndef CTXHOOKD_STORE_BACKEND_H
#define CTXHOOKD_STORE_BACKEND_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ctxhookd/store.h"

/* The change counters a backend keeps for the read cache: one for API keys, one for all
 * Context API data, so that writing notes does not also flush the cached keys. */
enum store_gen {
        STORE_GEN_KEYS = 0,
        STORE_GEN_DATA = 1,
};

/* One entry per public store_* operation. `impl` is what open() returned. Every function
 * returns 0 or a negative errno code with the meaning documented in store.h. */
struct store_ops {
        const char *name;
        int (*open)(const struct store_options *opts, void **ret_impl, struct ch_error *err);
        void (*close)(void *impl);
        /* store_probe(): opts already checked as store_open checks them. */
        int (*probe)(const struct store_options *opts, int *ret_version, struct ch_error *err);
        int schema_latest;
        /* why (may be NULL) gets the reason of a failure. */
        int (*ping)(void *impl, char *why, size_t why_size);
        int (*schema_version)(void *impl, int *ret_version);

        int (*key_set)(void *impl, const char *account,
                       const unsigned char hash[STORE_KEY_HASH_LEN], int64_t now_ms);
        int (*key_get)(void *impl, const char *account, unsigned char ret_hash[STORE_KEY_HASH_LEN]);

        int (*ns_create)(void *impl, const char *account, const char *ns, int64_t ttl_s,
                         int64_t now_ms);
        int (*ns_list)(void *impl, const char *account, json_t **ret_array);
        int (*ns_delete)(void *impl, const char *account, const char *ns);

        int (*props_get)(void *impl, const char *account, const char *ns, const char *sid,
                         const char *const *include, int64_t now_ms, json_t **ret_object,
                         char ret_etag[STORE_ETAG_MAX]);
        /* As store_prop_get, plus *ret_expires_ms: when the value stops being live under
         * the TTLs in force now (0 = never), so store.c may cache it until then. */
        int (*prop_get)(void *impl, const char *account, const char *ns, const char *sid,
                        const char *name, int64_t now_ms, char **ret_json, size_t *ret_len,
                        char ret_etag[STORE_ETAG_MAX], int64_t *ret_expires_ms);
        int (*props_merge)(void *impl, const char *account, const char *ns, const char *sid,
                           const json_t *props, const char *if_match, int64_t now_ms,
                           char ret_etag[STORE_ETAG_MAX]);
        int (*prop_put)(void *impl, const char *account, const char *ns, const char *sid,
                        const char *name, const json_t *value, const char *if_match, int64_t now_ms,
                        char ret_etag[STORE_ETAG_MAX]);
        int (*prop_delete)(void *impl, const char *account, const char *ns, const char *sid,
                           const char *name, const char *if_match, int64_t now_ms);
        int (*props_clear)(void *impl, const char *account, const char *ns, const char *sid,
                           const char *if_match, int64_t now_ms);

        /* offset = page * per_page, already checked not to overflow. */
        int (*session_ids)(void *impl, const char *account, const char *ns, int64_t offset,
                           int64_t limit, int64_t now_ms, json_t **ret_array);
        int (*session_props)(void *impl, const char *account, const char *ns, int64_t offset,
                             int64_t limit, int64_t now_ms, json_t **ret_array);
        int (*session_create)(void *impl, const char *account, const char *ns, const char *sid,
                              int64_t ttl_s, int64_t now_ms);
        int (*session_list)(void *impl, const char *account, const char *ns, int64_t now_ms,
                            json_t **ret_array);
        int (*session_delete)(void *impl, const char *account, const char *ns, const char *sid);

        int (*sweep)(void *impl, int64_t now_ms, int64_t *ret_deleted);

        /* The outbox and dead letters. store.c has checked every string (lengths, UTF-8 where
         * store.h asks for names) and that clear_namespaces is a JSON array of namespace names,
         * so the backend stores them as given. outbox_done sets *ret_cleared when it deleted
         * session properties (clear_namespaces), so store.c knows to invalidate cached reads;
         * none of the other operations touches Context API data. */
        /* store_outbox_enqueue_many (store_outbox_enqueue and store_dead_add are that with n
         * = 1): results may be written even when it fails; store.c copies them out only on
         * success. */
        int (*outbox_enqueue_many)(void *impl, const struct store_message *msgs, size_t n,
                                   int64_t now_ms, int *results);
        int (*outbox_claim)(void *impl, int64_t now_ms, int64_t lease_ms, size_t limit,
                            struct store_delivery **ret, size_t *ret_n);
        int (*outbox_done)(void *impl, int64_t id, int64_t now_ms, bool *ret_cleared);
        int (*outbox_retry)(void *impl, int64_t id, int64_t attempts, int64_t next_attempt_ms,
                            const char *last_error);
        int (*outbox_dead)(void *impl, int64_t id, const char *reason, int64_t now_ms);
        int (*outbox_depth)(void *impl, int64_t *ret);
        int (*outbox_next_due)(void *impl, int64_t *ret_ms);
        int (*dead_list)(void *impl, int64_t after_id, int64_t limit, json_t **ret_array);
        int (*dead_count)(void *impl, int64_t *ret);
        int (*dead_redrive)(void *impl, int64_t id, int64_t now_ms, char **ret_raw,
                            size_t *ret_raw_len, char **ret_source);
        int (*dead_delete)(void *impl, int64_t id);
        int (*dedup_expire)(void *impl, int64_t before_ms, int64_t *ret_deleted);

        /* Change counters shared by every process using the same database (see
         * store_cache.h): gen_load reads one, gen_bump increments it after a write has
         * finished. Both NULL when the backend cannot offer them; store.c then caches
         * nothing. */
        uint64_t (*gen_load)(void *impl, enum store_gen which);
        void (*gen_bump)(void *impl, enum store_gen which);
};

struct store_cache;

struct store {
        const struct store_ops *ops;
        void *impl;
        struct store_cache *keys_cache;  /* account → key hash; NULL = no caching */
        struct store_cache *props_cache; /* account/ns/sid/name → JSON text */
};

extern const struct store_ops store_sqlite_ops;
extern const struct store_ops store_pg_ops;

/* Whether a thing of TTL ttl_s (0 = forever) last written at updated_ms is still live at
 * now_ms. The one definition of liveness every backend applies. store.c refuses negative
 * times and TTLs above STORE_TTL_S_MAX, so neither the difference nor the product overflows. */
static inline bool store_is_live(int64_t updated_ms, int64_t ttl_s, int64_t now_ms)
{
        return ttl_s <= 0 || now_ms - updated_ms < ttl_s * 1000;
}

/* The largest TTL (seconds) the store accepts: TTLs are compared in milliseconds as int64. */
#define STORE_TTL_S_MAX (INT64_MAX / 1000)

/* Writes the quoted ETag text of a 64-bit tag value into out. */
void store_etag_format(uint64_t tag, char out[STORE_ETAG_MAX]);

/* Whether an If-Match header value (one tag, a comma-separated list, or "*") matches the
 * current ETag of an existing thing. Weak tags (W/"…") never match, as RFC 9110 requires of
 * If-Match's strong comparison. */
bool store_etag_matches(const char *if_match, const char *etag);

/* A JSON string of the bytes p[0..len): well-formed UTF-8 is kept as is (NUL included), every
 * maximal ill-formed subsequence becomes one U+FFFD, as the Unicode standard recommends. For
 * dead letters, whose raw bytes may be anything. NULL when out of memory. */
json_t *store_json_lossy(const char *p, size_t len);

/* ---- Pieces every backend shares: the JSON shapes of store.h and what a redrive reads ---- */

/* {"name": …, "createdAt": …, "ttlSecond": ttl_s} (ttlSecond only when ttl_s > 0). */
json_t *store_ns_item(const char *name, size_t name_len, int64_t created_ms, int64_t ttl_s);

/* {"sessionId": …, "createdAt": …, "ttlSecond": ttl_s}, as store_session_list gives it. */
json_t *store_session_item(const char *sid, size_t sid_len, int64_t created_ms, int64_t ttl_s);

/* A dead letter as store_dead_list gives it; source, reason and raw may be any bytes. */
json_t *store_dead_item(int64_t id, const char *source, size_t source_len, const char *reason,
                        size_t reason_len, int64_t received_ms, const char *raw, size_t raw_len);

/* Frees the strings of one claimed delivery (not d itself). */
void store_delivery_clear(struct store_delivery *d);

/* What a redrive takes out of a dead letter. */
struct store_dead_row {
        bool delivery;
        char *source;
        char *raw;
        size_t raw_len;
        char *hook, *account, *conversation, *webhook_id, *clear_namespaces;
};

/* Frees what r holds and zeroes it. */
void store_dead_row_clear(struct store_dead_row *r);

/* Calls fn(name, ctx) for each namespace of a delivery's clear_namespaces (a JSON array that
 * store.c checked on the way in), stopping at the first negative return. -EIO when the text is
 * not such an array (corrupted). */
int store_each_namespace(const char *clear_namespaces, int (*fn)(const char *ns, void *ctx),
                         void *ctx);

#endif
