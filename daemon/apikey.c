/* API key generation, hashing and constant-time comparison (OpenSSL libcrypto). Keys carry
 * 192 random bits, so a fast hash is enough: nothing to brute-force. */
#include <errno.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/sha.h>

#include "ctxhookd/apikey.h"

int apikey_generate(char out[APIKEY_TEXT_LEN + 1])
{
        static const char alphabet[] =
            "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        unsigned char raw[APIKEY_RANDOM_BYTES];
        size_t o = 0;

        if (RAND_bytes(raw, sizeof(raw)) != 1)
                return -EIO;
        /* base64url without padding: 3 bytes → 4 characters. */
        for (size_t i = 0; i < sizeof(raw); i += 3) {
                unsigned v = (unsigned)raw[i] << 16 | (unsigned)raw[i + 1] << 8 | raw[i + 2];
                out[o++] = alphabet[(v >> 18) & 63];
                out[o++] = alphabet[(v >> 12) & 63];
                out[o++] = alphabet[(v >> 6) & 63];
                out[o++] = alphabet[v & 63];
        }
        out[o] = '\0';
        OPENSSL_cleanse(raw, sizeof(raw));
        return 0;
}

void apikey_hash(const char *key, size_t len, unsigned char out[STORE_KEY_HASH_LEN])
{
        SHA256((const unsigned char *)key, len, out);
}

int apikey_matches(const unsigned char stored_hash[STORE_KEY_HASH_LEN], const char *key, size_t len)
{
        unsigned char h[STORE_KEY_HASH_LEN];

        if (len == 0 || len > APIKEY_MAX_LEN)
                return 0;
        apikey_hash(key, len, h);
        return CRYPTO_memcmp(h, stored_hash, sizeof(h)) == 0;
}
