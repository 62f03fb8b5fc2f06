/* Unit tests of the store's read cache: the cache module on its own (hits, misses, the
 * generation rule, TTL deadlines, age limit, bounds), and the store with its cache across two
 * handles on one database file, as the daemon and `ctxhookd apikey create` are. */
#include <criterion/criterion.h>
#include <errno.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ctxhookd/store.h"
#include "test_util.h"
#include "store_cache.h"

#define T0 INT64_C(1800000000000)

static size_t key_of(char out[CACHE_KEY_MAX], const char *a, const char *b)
{
        const char *parts[] = {a, b};
        return store_cache_key(out, parts, 2);
}

Test(cache, hit_miss_and_copy)
{
        struct store_cache *c = store_cache_new(16);
        char k[CACHE_KEY_MAX], etag[STORE_ETAG_MAX];
        size_t kl = key_of(k, "acct", "note"), len = 0;
        char *v = NULL;

        cr_assert_not_null(c);
        cr_assert_eq(store_cache_get(c, 7, T0, k, kl, &v, &len, etag), -ENOENT);
        store_cache_put(c, 7, 0, k, kl, "\"hello\"", 7, "\"e1\"");
        cr_assert_eq(store_cache_get(c, 7, T0, k, kl, &v, &len, etag), 0);
        cr_assert_eq(len, 7);
        cr_assert_str_eq(v, "\"hello\"");
        cr_assert_str_eq(etag, "\"e1\"");
        free(v);
        /* A different key is a miss even if it lands in the same slot. */
        size_t kl2 = key_of(k, "acct", "other");
        cr_assert_eq(store_cache_get(c, 7, T0, k, kl2, &v, &len, etag), -ENOENT);
        store_cache_free(c);
}

Test(cache, another_generation_is_a_miss)
{
        struct store_cache *c = store_cache_new(16);
        char k[CACHE_KEY_MAX];
        size_t kl = key_of(k, "a", "b");
        char *v = NULL;

        store_cache_put(c, 1, 0, k, kl, "1", 1, NULL);
        cr_assert_eq(store_cache_get(c, 2, T0, k, kl, &v, NULL, NULL), -ENOENT);
        cr_assert_eq(store_cache_get(c, 0, T0, k, kl, &v, NULL, NULL), -ENOENT);
        cr_assert_eq(store_cache_get(c, 1, T0, k, kl, &v, NULL, NULL), 0);
        free(v);
        store_cache_free(c);
}

Test(cache, ttl_deadline_is_honoured)
{
        struct store_cache *c = store_cache_new(16);
        char k[CACHE_KEY_MAX];
        size_t kl = key_of(k, "a", "b");
        char *v = NULL;

        store_cache_put(c, 1, T0 + 1000, k, kl, "1", 1, NULL);
        cr_assert_eq(store_cache_get(c, 1, T0 + 999, k, kl, &v, NULL, NULL), 0);
        free(v);
        cr_assert_eq(store_cache_get(c, 1, T0 + 1000, k, kl, &v, NULL, NULL), -ENOENT);
        store_cache_free(c);
}

Test(cache, entries_age_out_after_max_age)
{
        struct store_cache *c = store_cache_new(16);
        char k[CACHE_KEY_MAX];
        size_t kl = key_of(k, "a", "b");
        char *v = NULL;

        store_cache_put(c, 1, 0, k, kl, "1", 1, NULL);
        cr_assert_eq(store_cache_get(c, 1, T0, k, kl, &v, NULL, NULL), 0);
        free(v);
        usleep((CACHE_MAX_AGE_MS + 50) * 1000);
        cr_assert_eq(store_cache_get(c, 1, T0, k, kl, &v, NULL, NULL), -ENOENT);
        store_cache_free(c);
}

Test(cache, oversized_values_and_keys_are_not_kept)
{
        struct store_cache *c = store_cache_new(16);
        static char big[CACHE_VALUE_MAX + 2];
        char k[CACHE_KEY_MAX], parts_buf[STORE_NAME_MAX + 1];
        size_t kl = key_of(k, "a", "b");
        char *v = NULL;

        memset(big, 'x', CACHE_VALUE_MAX + 1);
        store_cache_put(c, 1, 0, k, kl, big, CACHE_VALUE_MAX + 1, NULL);
        cr_assert_eq(store_cache_get(c, 1, T0, k, kl, &v, NULL, NULL), -ENOENT);
        store_cache_put(c, 1, 0, k, kl, big, CACHE_VALUE_MAX, NULL);
        cr_assert_eq(store_cache_get(c, 1, T0, k, kl, &v, NULL, NULL), 0);
        cr_assert_eq(strlen(v), CACHE_VALUE_MAX);
        free(v);
        /* The key builder refuses what does not fit rather than cutting it. */
        memset(parts_buf, 'n', STORE_NAME_MAX);
        parts_buf[STORE_NAME_MAX] = '\0';
        const char *too_many[] = {parts_buf, parts_buf, parts_buf, parts_buf};
        cr_assert_eq(store_cache_key(k, too_many, 4), 0);
        store_cache_free(c);
}

Test(cache, a_colliding_put_replaces_the_slot)
{
        /* One slot: every key collides. */
        struct store_cache *c = store_cache_new(1);
        char k1[CACHE_KEY_MAX], k2[CACHE_KEY_MAX];
        size_t l1 = key_of(k1, "a", "1"), l2 = key_of(k2, "a", "2");
        char *v = NULL;

        store_cache_put(c, 1, 0, k1, l1, "one", 3, NULL);
        store_cache_put(c, 1, 0, k2, l2, "two", 3, NULL);
        cr_assert_eq(store_cache_get(c, 1, T0, k1, l1, &v, NULL, NULL), -ENOENT);
        cr_assert_eq(store_cache_get(c, 1, T0, k2, l2, &v, NULL, NULL), 0);
        cr_assert_str_eq(v, "two");
        free(v);
        store_cache_free(c);
}

/* ---- The store with its cache, two handles on one file ---- */

static char dir[64], path[160];

static struct store *open_cached(void)
{
        struct store_options o = {
            .path = path, .busy_timeout_ms = 5000, .pool_size = 2, .cache_entries = 256};
        struct ch_error err = {{0}};
        struct store *s = NULL;

        cr_assert_eq(store_open(&o, &s, &err), 0, "%s", err.msg);
        return s;
}

static void setup(void)
{
        strcpy(dir, "/tmp/ctxhookd-test-cache-XXXXXX");
        cr_assert_not_null(mkdtemp(dir));
        snprintf(path, sizeof(path), "%s/context.db", dir);
}

static void teardown(void)
{
        test_rmtree(dir);
}

TestSuite(cached_store, .init = setup, .fini = teardown);

Test(cached_store, a_key_replaced_by_another_handle_is_seen_at_once)
{
        struct store *daemon = open_cached(), *cli = open_cached();
        unsigned char h1[STORE_KEY_HASH_LEN], h2[STORE_KEY_HASH_LEN], got[STORE_KEY_HASH_LEN];

        memset(h1, 0x11, sizeof(h1));
        memset(h2, 0x22, sizeof(h2));
        cr_assert_eq(store_key_set(cli, "acct", h1, T0), 0);
        /* Twice: the second read is served from the daemon's cache. */
        cr_assert_eq(store_key_get(daemon, "acct", got), 0);
        cr_assert_eq(store_key_get(daemon, "acct", got), 0);
        cr_assert_arr_eq(got, h1, sizeof(h1));
        cr_assert_eq(store_key_set(cli, "acct", h2, T0), 0);
        cr_assert_eq(store_key_get(daemon, "acct", got), 0);
        cr_assert_arr_eq(got, h2, sizeof(h2), "the daemon still answered with the revoked key");
        store_close(cli);
        store_close(daemon);
}

Test(cached_store, a_property_written_through_another_handle_is_seen_at_once)
{
        struct store *a = open_cached(), *b = open_cached();
        json_t *v1 = json_string("v1"), *v2 = json_string("v2");
        char *text = NULL, e1[STORE_ETAG_MAX], e2[STORE_ETAG_MAX];

        cr_assert_eq(store_prop_put(b, "acct", "ns", "s", "p", v1, NULL, T0, NULL), 0);
        cr_assert_eq(store_prop_get(a, "acct", "ns", "s", "p", T0, &text, NULL, e1), 0);
        free(text);
        cr_assert_eq(store_prop_get(a, "acct", "ns", "s", "p", T0, &text, NULL, e1), 0);
        cr_assert_str_eq(text, "\"v1\"");
        free(text);
        cr_assert_eq(store_prop_put(b, "acct", "ns", "s", "p", v2, NULL, T0, NULL), 0);
        cr_assert_eq(store_prop_get(a, "acct", "ns", "s", "p", T0, &text, NULL, e2), 0);
        cr_assert_str_eq(text, "\"v2\"");
        cr_assert_str_neq(e1, e2, "the ETag must change with the value");
        free(text);
        /* A delete elsewhere is a miss here too. */
        cr_assert_eq(store_session_delete(b, "acct", "ns", "s"), 0);
        cr_assert_eq(store_prop_get(a, "acct", "ns", "s", "p", T0, &text, NULL, NULL), -ENOENT);
        json_decref(v1);
        json_decref(v2);
        store_close(b);
        store_close(a);
}

Test(cached_store, a_cached_value_is_not_served_past_its_ttl)
{
        struct store *s = open_cached();
        json_t *v = json_integer(5);
        char *text = NULL;

        cr_assert_eq(store_session_create(s, "acct", "ns", "s", 10, T0), 0);
        cr_assert_eq(store_prop_put(s, "acct", "ns", "s", "p", v, NULL, T0, NULL), 0);
        cr_assert_eq(store_prop_get(s, "acct", "ns", "s", "p", T0 + 9999, &text, NULL, NULL), 0);
        free(text);
        /* Same generation, cached: the deadline alone must refuse it. */
        cr_assert_eq(store_prop_get(s, "acct", "ns", "s", "p", T0 + 10000, &text, NULL, NULL),
                     -ENOENT);
        json_decref(v);
        store_close(s);
}

Test(cached_store, a_ttl_change_applies_to_cached_values)
{
        struct store *s = open_cached();
        json_t *v = json_integer(5);
        char *text = NULL;

        cr_assert_eq(store_prop_put(s, "acct", "ns", "s", "p", v, NULL, T0, NULL), 0);
        cr_assert_eq(store_prop_get(s, "acct", "ns", "s", "p", T0 + 5000, &text, NULL, NULL), 0);
        free(text);
        /* Now the namespace gets a 2 s TTL: the value written at T0 is dead at T0 + 5 s. */
        cr_assert_eq(store_ns_create(s, "acct", "ns", 2, T0), 0);
        cr_assert_eq(store_prop_get(s, "acct", "ns", "s", "p", T0 + 5000, &text, NULL, NULL),
                     -ENOENT);
        json_decref(v);
        store_close(s);
}
