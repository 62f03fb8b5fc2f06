/* API key generation, hashing and constant-time comparison (OpenSSL libcrypto). Keys carry
 * 192 random bits, so a fast hash is enough: nothing to brute-force. */
#include <errno.h>
#include <pthread.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/sha.h>

#include "ctxhookd/apikey.h"

int apikey_generate(char out[APIKEY_TEXT_LEN + 1])
{
        /* Letters and digits only, like LivePerson's own keys: nothing a shell or a header
         * parser treats specially, and never a leading '-'. */
        static const char alphabet[] =
            "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
        unsigned char raw[64];
        size_t o = 0;

        while (o < APIKEY_TEXT_LEN) {
                if (RAND_bytes(raw, sizeof(raw)) != 1)
                        return -EIO;
                /* Rejection sampling keeps every character uniform: 248 = 4 * 62. */
                for (size_t i = 0; i < sizeof(raw) && o < APIKEY_TEXT_LEN; i++)
                        if (raw[i] < 248)
                                out[o++] = alphabet[raw[i] % 62];
        }
        out[o] = '\0';
        OPENSSL_cleanse(raw, sizeof(raw));
        return 0;
}

static EVP_MD *sha256_md;

static void sha256_fetch(void)
{
        sha256_md = EVP_MD_fetch(NULL, "SHA256", NULL);
}

void apikey_hash(const char *key, size_t len, unsigned char out[STORE_KEY_HASH_LEN])
{
        static pthread_once_t once = PTHREAD_ONCE_INIT;

        /* Every request hashes the key it presents: fetch the implementation once rather than
         * letting SHA256() look it up again each time (a measurable share of a GET). */
        pthread_once(&once, sha256_fetch);
        if (!sha256_md || EVP_Digest(key, len, out, NULL, sha256_md, NULL) != 1)
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
