/* A bounded, generation-validated read cache in front of a store backend (private to the
 * store). It keeps the answers of the hottest reads — an account's key hash, one property's
 * JSON text — so that GET of a property does not cost two database round trips.
 *
 * Correctness rests on one rule: every write to the store, by this process or another one on
 * the same database, bumps a shared generation counter after it commits (the backend keeps
 * it; SQLite in a small mmap'd file beside the database). An entry is only served while the
 * counter still has the value read before the entry was loaded, so a write invalidates every
 * entry at once. Entries also age out after CACHE_MAX_AGE_MS whatever the counter says, which
 * bounds staleness if a writer ever died between its commit and its bump, and properties
 * carry their TTL deadline so an expired value is never served. */
#ifndef CTXHOOKD_STORE_CACHE_H
#define CTXHOOKD_STORE_CACHE_H

#include <stddef.h>
#include <stdint.h>

#include "ctxhookd/store.h"

#define CACHE_MAX_AGE_MS 1000
#define CACHE_VALUE_MAX  1024 /* larger values are not cached: memory stays bounded */
#define CACHE_KEY_MAX    (STORE_ACCOUNT_MAX + STORE_NAMESPACE_MAX + 2 * STORE_NAME_MAX + 4)

struct store_cache;

/* A cache of `entries` slots (rounded up to a power of two; direct-mapped, a colliding load
 * replaces the older entry). NULL when out of memory. */
struct store_cache *store_cache_new(size_t entries);

/* Accepts NULL; returns NULL. */
struct store_cache *store_cache_free(struct store_cache *c);

/* Looks key up. Returns 0 on a hit valid for generation gen at now_ms, with a malloc'ed
 * NUL-terminated copy of the value in *ret_value (length in *ret_len, may be NULL) and its
 * ETag in ret_etag (may be NULL); -ENOENT on a miss; -ENOMEM. */
int store_cache_get(struct store_cache *c, uint64_t gen, int64_t now_ms, const char *key,
                    size_t key_len, char **ret_value, size_t *ret_len,
                    char ret_etag[STORE_ETAG_MAX]);

/* Remembers value (with etag, may be NULL) for key as loaded under generation gen, valid
 * until expires_ms (0 = no deadline). Values over CACHE_VALUE_MAX and keys over
 * CACHE_KEY_MAX are not kept. Failure to allocate just leaves the slot empty. */
void store_cache_put(struct store_cache *c, uint64_t gen, int64_t expires_ms, const char *key,
                     size_t key_len, const char *value, size_t len, const char *etag);

/* Builds the cache key of the given parts (joined by 0x1f, which no name may contain) into
 * out (CACHE_KEY_MAX bytes). Returns its length, or 0 when it does not fit. */
size_t store_cache_key(char out[CACHE_KEY_MAX], const char *const *parts, size_t n_parts);

#endif
