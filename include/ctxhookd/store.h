/* The store: every piece of durable state of ctxhookd (Context API data, API keys; later the
 * outbox and dead letters) behind one interface. Callers never see the backend: store.c
 * dispatches to a backend's operation table (daemon/store_backend.h), SQLite being the first
 * (daemon/store_sqlite.c), so a second backend is added without touching any caller.
 *
 * Conventions for every function here:
 * - Returns 0 on success or a negative errno-style code:
 *     -ENOENT     the thing asked for does not exist (or has expired)
 *     -ECANCELED  an If-Match precondition did not hold; nothing was changed
 *     -EINVAL     an argument is out of the store's own limits; nothing was changed
 *     -ENOMEM     out of memory; nothing was changed
 *     -EIO        the backend failed (disk, corruption, locked past the busy timeout …):
 *                 the API answers 503; nothing was changed (every write is one transaction)
 * - Out-parameters (ret_…) are written only on success.
 * - `sid` NULL means the namespace-level session STORE_DEFAULT_SESSION.
 * - Reasons handed out (err of store_open/store_probe, why of store_health and
 *   store_url_check) are one line: a backend folds its library's multi-line messages.
 * - `now_ms` is the caller's clock (Unix epoch milliseconds): TTL expiry is judged against
 *   it, so tests can move time without sleeping.
 * - Names are not validated here beyond length (the API validates them); the store refuses
 *   (-EINVAL) only what it cannot hold: account/namespace > 64 bytes, session id or property
 *   name > STORE_NAME_MAX bytes.
 * - Thread-safe: any number of threads may call into one struct store at once.
 *
 * TTL semantics: a namespace and a session may carry a TTL in seconds (0 = forever). A
 * session's own TTL, when set, overrides its namespace's. A property expires TTL seconds after
 * its last write; a session expires TTL seconds after the last write to any of its
 * properties (or its creation). Expired data is never returned and store_sweep() deletes it.
 *
 * ETags: every property and every session carries an opaque tag that changes on every write
 * to it (for a session: any write to any of its properties, or clearing them). An ETag is a
 * quoted string ready for the HTTP header, at most STORE_ETAG_MAX-1 bytes. `if_match` (NULL =
 * unconditional) is compared with the current tag of the thing written; "*" matches anything
 * that exists; a thing that does not exist matches no If-Match at all, not even "*".
 */
#ifndef CTXHOOKD_STORE_H
#define CTXHOOKD_STORE_H

#include <stdint.h>
#include <stddef.h>
#include <jansson.h>

#include "ctxhookd/error.h"

#define STORE_DEFAULT_SESSION "__default__"
#define STORE_ACCOUNT_MAX     64
#define STORE_NAMESPACE_MAX   64
#define STORE_NAME_MAX        256 /* session ids and property names, bytes */
#define STORE_ETAG_MAX        40
#define STORE_KEY_HASH_LEN    32 /* SHA-256 */

struct store;

struct store_options {
        const char *backend;    /* "sqlite" (also when NULL) or "postgresql" */
        const char *path;       /* sqlite: the database file; created when missing */
        const char *url;        /* postgresql: a libpq connection string, postgresql://… URI
                                   or key=value pairs */
        int busy_timeout_ms;    /* how long a writer waits for a lock before -EIO */
        unsigned pool_size;     /* connections kept open for concurrent callers (≥ 1) */
        unsigned cache_entries; /* read cache slots for key hashes and single properties;
                                   0 = no cache (see daemon/store_cache.h). The postgresql
                                   backend never caches: other hosts write the same data. */
};

/* The backends this build has, NULL-terminated; the first is the default. */
extern const char *const store_backend_names[];

/* What a store with these options keeps its data in, for messages: "sqlite /path/to/db" or
 * "postgresql postgresql://user:********@host/db" (the password never shown). */
void store_describe(const struct store_options *opts, char *out, size_t size);

/* Whether url is a connection string libpq accepts (a postgresql:// or postgres:// URI, or
 * key=value pairs), judged without connecting: 0, or -EINVAL with libpq's reason in why. */
int store_url_check(const char *url, char *why, size_t why_size);

/* Copies url into out with its password, if any (URI user info, a password= query parameter
 * or key=value pair), replaced by "********". */
void store_url_redact(const char *url, char *out, size_t size);

/* Opens (creating and migrating as needed) the store. On failure returns a negative code,
 * writes the reason (naming the path) into err and leaves *ret untouched. */
int store_open(const struct store_options *opts, struct store **ret, struct ch_error *err);

/* Connects to the store of opts without creating or migrating anything (for check-config)
 * and gets the schema version it is at: 0 when nothing was created yet (a missing SQLite file,
 * an empty PostgreSQL schema). On failure returns -EIO (cannot connect: err has the reason,
 * naming the database with store_describe), -EPROTO (the schema is newer than this build
 * knows; err says which versions) or -EINVAL. */
int store_probe(const struct store_options *opts, int *ret_version, struct ch_error *err);

/* The schema version this build migrates to, for the backend of opts. */
int store_schema_latest(const struct store_options *opts);

/* Closes the store, waiting for calls in progress. Accepts NULL; returns NULL. */
struct store *store_close(struct store *s);

/* Cheap liveness probe of the backend (for /readyz). 0 or -EIO. */
int store_ping(struct store *s);

/* store_ping with the reason of a failure in why (e.g. libpq's "connection to server at
 * \"127.0.0.1\", port 5432 failed: Connection refused"), for /readyz and the log. A backend
 * that lost its database answers -EIO at once while it is down rather than making every caller
 * wait for a connection attempt, and reconnects by itself. */
int store_health(struct store *s, char *why, size_t why_size);

/* The schema version the store is at (for check-config and tests). */
int store_schema_version(struct store *s, int *ret_version);

/* ---- API keys: only a hash is kept; one active key per account. ---- */

/* Makes hash the account's one active key hash, replacing (revoking) any previous one. */
int store_key_set(struct store *s, const char *account,
                  const unsigned char hash[STORE_KEY_HASH_LEN], int64_t now_ms);

/* Copies the account's active key hash into ret_hash. -ENOENT when the account has none. */
int store_key_get(struct store *s, const char *account, unsigned char ret_hash[STORE_KEY_HASH_LEN]);

/* ---- Namespaces ---- */

/* Creates the namespace if missing. ttl_s ≥ 0 sets its TTL (0 = forever); ttl_s < 0 leaves an
 * existing TTL unchanged (a new namespace then has none). Idempotent. */
int store_ns_create(struct store *s, const char *account, const char *ns, int64_t ttl_s,
                    int64_t now_ms);

/* The account's namespaces as a new JSON array, ordered by name:
 * [{"name": "ns", "createdAt": "2026-11-29T22:39:24.123Z", "ttlSecond": 3600}, …]
 * ("ttlSecond" only when a TTL is set and non-zero). Empty array when there are none. */
int store_ns_list(struct store *s, const char *account, json_t **ret_array);

/* Deletes the namespace with all its sessions, properties and its TTL. Deleting one that does
 * not exist succeeds. */
int store_ns_delete(struct store *s, const char *account, const char *ns);

/* ---- Properties ---- */

/* All live properties of the session as a new JSON object (name → value); {} when it has none
 * or does not exist. include: NULL for all, else a NULL-terminated list of names to return
 * (names not present are left out). ret_etag (may be NULL) gets the session's ETag, or "" when
 * the session does not exist. */
int store_props_get(struct store *s, const char *account, const char *ns, const char *sid,
                    const char *const *include, int64_t now_ms, json_t **ret_object,
                    char ret_etag[STORE_ETAG_MAX]);

/* One property's value as compact JSON text (malloc'ed, NUL-terminated; length in *ret_len,
 * which may be NULL). The text may contain "\u0000" escapes but never a raw NUL byte.
 * -ENOENT when the property is missing or expired. ret_etag (may be NULL) gets its ETag. */
int store_prop_get(struct store *s, const char *account, const char *ns, const char *sid,
                   const char *name, int64_t now_ms, char **ret_json, size_t *ret_len,
                   char ret_etag[STORE_ETAG_MAX]);

/* Upserts every member of the JSON object `props` into the session (others stay), creating
 * namespace and session as needed, all in one transaction. if_match is compared with the
 * session's ETag. ret_etag (may be NULL) gets the session's new ETag. */
int store_props_merge(struct store *s, const char *account, const char *ns, const char *sid,
                      const json_t *props, const char *if_match, int64_t now_ms,
                      char ret_etag[STORE_ETAG_MAX]);

/* Sets one property to any JSON value, creating namespace and session as needed. if_match is
 * compared with the property's ETag. ret_etag (may be NULL) gets the property's new ETag. */
int store_prop_put(struct store *s, const char *account, const char *ns, const char *sid,
                   const char *name, const json_t *value, const char *if_match, int64_t now_ms,
                   char ret_etag[STORE_ETAG_MAX]);

/* Deletes one property; deleting a missing one succeeds (unless if_match is given, which then
 * fails with -ECANCELED). if_match is compared with the property's ETag. */
int store_prop_delete(struct store *s, const char *account, const char *ns, const char *sid,
                      const char *name, const char *if_match, int64_t now_ms);

/* Deletes all properties of the session but keeps the session and its TTL. if_match is
 * compared with the session's ETag. Succeeds on a missing session (without if_match). */
int store_props_clear(struct store *s, const char *account, const char *ns, const char *sid,
                      const char *if_match, int64_t now_ms);

/* ---- Sessions ---- */

/* Live session ids of the namespace as a new JSON array of strings, "__default__" first
 * when it exists, then ordered by id; page (≥ 0) of per_page (1…1000) entries. */
int store_session_ids(struct store *s, const char *account, const char *ns, int64_t page,
                      int64_t per_page, int64_t now_ms, json_t **ret_array);

/* Same paging and order as store_session_ids, as
 * [{"sessionId": "sid", "properties": {…}}, …] with each session's live properties. */
int store_session_props(struct store *s, const char *account, const char *ns, int64_t page,
                        int64_t per_page, int64_t now_ms, json_t **ret_array);

/* Creates the session (and namespace) if missing and sets its TTL: ttl_s ≥ 0 (0 = forever);
 * ttl_s < 0 leaves it inheriting the namespace's. Idempotent. */
int store_session_create(struct store *s, const char *account, const char *ns, const char *sid,
                         int64_t ttl_s, int64_t now_ms);

/* Live sessions of the namespace, ordered as store_session_ids, as
 * [{"sessionId": "sid", "createdAt": "2026-…Z", "ttlSecond": N}, …] where ttlSecond is the
 * effective TTL (own, else the namespace's, else 0). */
int store_session_list(struct store *s, const char *account, const char *ns, int64_t now_ms,
                       json_t **ret_array);

/* Deletes the session and its properties. Deleting a missing one succeeds. */
int store_session_delete(struct store *s, const char *account, const char *ns, const char *sid);

/* ---- Outbox: deliveries queued durably before their source is acknowledged ----
 *
 * A delivery is one webhook call for one (event, hook). Deliveries of one (hook,
 * conversation) go out in the order they were enqueued: only the oldest of them is ever
 * claimable, so a failing delivery holds back only the later ones of its own conversation and
 * hook. Claimed deliveries are "in flight" until done, retried or dead; a claim holds for
 * lease_ms, after which (the claimer died) the delivery is claimable again. */

#define STORE_HOOK_MAX       64
#define STORE_WEBHOOK_ID_MAX 64
#define STORE_DEDUP_KEY_MAX  512

/* What to enqueue (all strings NUL-terminated; body is JSON text). */
struct store_enqueue {
        const char *hook;
        const char *account;
        const char *conversation;
        const char *webhook_id; /* stable across retries, e.g. "msg_<event id>_<hook>" */
        const char *body;
        size_t body_len;
        const char *clear_namespaces; /* JSON array of namespace names whose session
                                         `conversation` is cleared once delivered; NULL = none */
};

/* A claimed delivery (strings owned by the array; free with store_deliveries_free). */
struct store_delivery {
        int64_t id;
        char *hook;
        char *account;
        char *conversation;
        char *webhook_id;
        char *body;
        size_t body_len;
        int64_t attempts; /* attempts made before this one */
        int64_t created_ms;
};

/* Atomically records dedup_key (NULL = no dedup) and queues items[0..n) (n may be 0: an event
 * no hook wanted is still recorded as seen). -EEXIST when dedup_key was recorded before
 * (nothing is written: the message was already processed). */
int store_outbox_enqueue(struct store *s, const char *dedup_key, const struct store_enqueue *items,
                         size_t n, int64_t now_ms);

/* One message for store_outbox_enqueue_many: either its deliveries (items[0..n_items), n_items
 * may be 0) or, when dead_source is not NULL, a dead letter (as store_dead_add; then n_items
 * must be 0). */
struct store_message {
        const char *dedup_key; /* NULL = no dedup */
        const struct store_enqueue *items;
        size_t n_items;
        const char *dead_source;
        const char *dead_reason;
        const char *raw; /* the dead letter's bytes (raw_len of them; NULL when 0) */
        size_t raw_len;
};

/* Records msgs[0..n) in ONE write transaction, in order (delivery ids increase in that
 * order): per message as store_outbox_enqueue or store_dead_add. ret_results[i] gets 0
 * (recorded) or -EEXIST (its dedup key was recorded before, possibly by an earlier message of
 * the same batch: nothing was written for it). Any other failure writes nothing at all and is
 * returned (ret_results untouched). n may be 0. */
int store_outbox_enqueue_many(struct store *s, const struct store_message *msgs, size_t n,
                              int64_t now_ms, int *ret_results);

/* Claims up to limit due deliveries (next attempt ≤ now_ms, the oldest of their hook and
 * conversation, not in flight under an unexpired lease), oldest due first. *ret is a new array
 * of *ret_n (possibly 0; then *ret is NULL) entries. */
int store_outbox_claim(struct store *s, int64_t now_ms, int64_t lease_ms, size_t limit,
                       struct store_delivery **ret, size_t *ret_n);
void store_deliveries_free(struct store_delivery *d, size_t n);

/* The delivery succeeded: it is removed and, when it has clear_namespaces, the properties of
 * its conversation's session in those namespaces are deleted, in the same transaction. */
int store_outbox_done(struct store *s, int64_t id, int64_t now_ms);

/* The attempt failed but may be retried: attempts becomes attempts, the lease ends and the
 * next attempt is at next_attempt_ms. last_error is kept for the dead letter. */
int store_outbox_retry(struct store *s, int64_t id, int64_t attempts, int64_t next_attempt_ms,
                       const char *last_error);

/* The delivery failed for good: moved to the dead letters with reason, atomically. */
int store_outbox_dead(struct store *s, int64_t id, const char *reason, int64_t now_ms);

/* Deliveries queued (in flight included). */
int store_outbox_depth(struct store *s, int64_t *ret);

/* When the next pending delivery falls due (ms), or -ENOENT when none is pending: the earliest
 * now_ms at which store_outbox_claim() would return something. Only the oldest delivery of each
 * hook and conversation counts, and one in flight counts as due when its lease runs out. */
int store_outbox_next_due(struct store *s, int64_t *ret_ms);

/* ---- Dead letters: events that could not be parsed, deliveries that failed for good ---- */

/* Atomically records dedup_key (NULL = none) and keeps raw (len bytes, any bytes) as a dead
 * letter of source ("kafka:topic/partition/offset", "http", "replay:file:line", …) with reason.
 * -EEXIST when dedup_key was recorded before. */
int store_dead_add(struct store *s, const char *dedup_key, const char *source, const char *reason,
                   const char *raw, size_t raw_len, int64_t now_ms);

/* Up to limit (1…1000) dead letters with id > after_id, by id, as a new JSON array
 * [{"id": N, "source": "...", "reason": "...", "received": "2026-…Z", "raw": "..."}]; raw is a
 * string (invalid UTF-8 replaced by U+FFFD). */
int store_dead_list(struct store *s, int64_t after_id, int64_t limit, json_t **ret_array);

/* Counts dead letters. */
int store_dead_count(struct store *s, int64_t *ret);

/* A dead delivery goes back to the outbox as new (attempts 0, due now), keeping its
 * webhook_id, and the dead letter is deleted, atomically; returns 1. A dead event is handed
 * back instead: *ret_raw (malloc'ed, length in *ret_raw_len) and *ret_source get its message to
 * process again, and 0 is returned; that dead letter stays until the caller deletes it with
 * store_dead_delete() once the message has been processed again, so a failure in between loses
 * nothing. -ENOENT when there is no such dead letter. */
int store_dead_redrive(struct store *s, int64_t id, int64_t now_ms, char **ret_raw,
                       size_t *ret_raw_len, char **ret_source);

/* Deletes a dead letter; -ENOENT when there is none with that id. */
int store_dead_delete(struct store *s, int64_t id);

/* Forgets dedup keys recorded before before_ms (called by the sweeper). */
int store_dedup_expire(struct store *s, int64_t before_ms, int64_t *ret_deleted);

/* ---- Maintenance ---- */

/* Deletes expired properties and sessions (as judged at now_ms), in bounded batches so
 * writers are not blocked for long. *ret_deleted (may be NULL) gets the number of rows
 * deleted. */
int store_sweep(struct store *s, int64_t now_ms, int64_t *ret_deleted);

/* Formats a Unix epoch in milliseconds as "YYYY-MM-DDTHH:MM:SS.mmmZ" (UTC) into out (≥ 25
 * bytes). Shared by the backends so every backend prints times alike. */
void store_format_time(int64_t ms, char out[32]);

#endif
