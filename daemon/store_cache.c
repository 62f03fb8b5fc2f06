/* Generation-validated read cache of the store (see store_cache.h). Direct-mapped slots, each
 * with its own lock, so concurrent readers of different keys never contend. */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ctxhookd/clock.h"
#include "store_cache.h"

struct slot {
        pthread_mutex_t lock;
        uint64_t hash;
        uint64_t gen;
        int64_t loaded_mono_ms;
        int64_t expires_ms;
        char *key; /* key bytes followed by the value bytes and a NUL, one allocation */
        size_t key_len;
        size_t value_len;
        char etag[STORE_ETAG_MAX];
};

struct store_cache {
        size_t mask;
        struct slot slots[];
};

/* FNV-1a, 64 bit. */
static uint64_t hash_bytes(const char *p, size_t n)
{
        uint64_t h = 0xcbf29ce484222325ULL;

        for (size_t i = 0; i < n; i++) {
                h ^= (unsigned char)p[i];
                h *= 0x100000001b3ULL;
        }
        return h;
}

struct store_cache *store_cache_new(size_t entries)
{
        struct store_cache *c;
        size_t n = 1;

        while (n < entries && n < ((size_t)1 << 24))
                n <<= 1;
        c = calloc(1, sizeof(*c) + n * sizeof(struct slot));
        if (!c)
                return NULL;
        c->mask = n - 1;
        for (size_t i = 0; i < n; i++)
                pthread_mutex_init(&c->slots[i].lock, NULL);
        return c;
}

struct store_cache *store_cache_free(struct store_cache *c)
{
        if (!c)
                return NULL;
        for (size_t i = 0; i <= c->mask; i++) {
                pthread_mutex_destroy(&c->slots[i].lock);
                free(c->slots[i].key);
        }
        free(c);
        return NULL;
}

size_t store_cache_key(char out[CACHE_KEY_MAX], const char *const *parts, size_t n_parts)
{
        size_t o = 0;

        for (size_t i = 0; i < n_parts; i++) {
                size_t n = strlen(parts[i]);

                if (n + 1 > CACHE_KEY_MAX - o)
                        return 0;
                memcpy(out + o, parts[i], n);
                o += n;
                out[o++] = '\x1f';
        }
        return o;
}

int store_cache_get(struct store_cache *c, uint64_t gen, int64_t now_ms, const char *key,
                    size_t key_len, char **ret_value, size_t *ret_len,
                    char ret_etag[STORE_ETAG_MAX])
{
        uint64_t h = hash_bytes(key, key_len);
        struct slot *s = &c->slots[h & c->mask];
        char *copy;
        size_t len;

        pthread_mutex_lock(&s->lock);
        if (!s->key || s->hash != h || s->gen != gen || s->key_len != key_len ||
            memcmp(s->key, key, key_len) != 0 ||
            clock_ms(CLOCK_MONOTONIC_COARSE) - s->loaded_mono_ms >= CACHE_MAX_AGE_MS ||
            (s->expires_ms != 0 && now_ms >= s->expires_ms)) {
                pthread_mutex_unlock(&s->lock);
                return -ENOENT;
        }
        len = s->value_len;
        copy = malloc(len + 1);
        if (!copy) {
                pthread_mutex_unlock(&s->lock);
                return -ENOMEM;
        }
        memcpy(copy, s->key + key_len, len + 1);
        if (ret_etag)
                memcpy(ret_etag, s->etag, STORE_ETAG_MAX);
        pthread_mutex_unlock(&s->lock);
        *ret_value = copy;
        if (ret_len)
                *ret_len = len;
        return 0;
}

void store_cache_put(struct store_cache *c, uint64_t gen, int64_t expires_ms, const char *key,
                     size_t key_len, const char *value, size_t len, const char *etag)
{
        uint64_t h = hash_bytes(key, key_len);
        struct slot *s = &c->slots[h & c->mask];
        char *block;

        if (len > CACHE_VALUE_MAX || key_len > CACHE_KEY_MAX)
                return;
        block = malloc(key_len + len + 1);
        if (block) {
                memcpy(block, key, key_len);
                memcpy(block + key_len, value, len);
                block[key_len + len] = '\0';
        }
        pthread_mutex_lock(&s->lock);
        free(s->key);
        s->key = block;
        s->hash = h;
        s->gen = gen;
        s->loaded_mono_ms = clock_ms(CLOCK_MONOTONIC_COARSE);
        s->expires_ms = expires_ms;
        s->key_len = key_len;
        s->value_len = len;
        if (etag)
                strncpy(s->etag, etag, STORE_ETAG_MAX - 1);
        else
                s->etag[0] = '\0';
        s->etag[STORE_ETAG_MAX - 1] = '\0';
        pthread_mutex_unlock(&s->lock);
}
