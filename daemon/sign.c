/* Standard Webhooks signing (sign.h, https://www.standardwebhooks.com/): the key is the base64
 * after "whsec_", the signature is base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}")) sent as
 * "v1,<base64>". OpenSSL does the HMAC (EVP_MAC) and the base64; this file only checks the
 * secret's form strictly, because OpenSSL's block decoder tolerates stray padding and spaces
 * that would hide a mistyped secret. */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/params.h>

#include "ctxhookd/sign.h"

#define SECRET_PREFIX "whsec_"
#define SIG_PREFIX    "v1,"
#define SHA256_LEN    32
/* Base64 of SIGN_KEY_MAX bytes, padded; anything longer cannot be a valid key. */
#define KEY_B64_MAX (4 * ((SIGN_KEY_MAX + 2) / 3))

/* Fetched once: a fetch takes a lock and a lookup in OpenSSL's method store, and every delivery
 * attempt signs. An EVP_MAC is immutable once fetched, so threads share it. */
static EVP_MAC *hmac_method;
static pthread_once_t hmac_once = PTHREAD_ONCE_INIT;

static void hmac_fetch(void)
{
        hmac_method = EVP_MAC_fetch(NULL, "HMAC", NULL);
}

static int is_b64_char(char c)
{
        return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
               c == '+' || c == '/';
}

int sign_key_parse(const char *secret, struct sign_key *ret, struct ch_error *err)
{
        char b64[KEY_B64_MAX + 4];
        unsigned char raw[KEY_B64_MAX];
        size_t n, pad = 0;
        int decoded;

        /* No message below quotes the secret, nor any part of it: errors end up in logs and in
         * `check-config` output. */
        if (!secret || strncmp(secret, SECRET_PREFIX, strlen(SECRET_PREFIX)) != 0) {
                ch_error_set(err, "the secret must start with \"" SECRET_PREFIX
                                  "\" followed by a base64 key (Standard Webhooks)");
                return -EINVAL;
        }
        secret += strlen(SECRET_PREFIX);
        n = strlen(secret);
        if (n == 0) {
                ch_error_set(err, "the secret has no key after \"" SECRET_PREFIX "\"");
                return -EINVAL;
        }
        if (n > KEY_B64_MAX) {
                ch_error_set(err, "the secret's key is longer than %d bytes", SIGN_KEY_MAX);
                return -EINVAL;
        }
        for (size_t i = 0; i < n; i++) {
                if (secret[i] == '=' && (pad > 0 || i + 2 >= n)) {
                        pad++;
                        continue;
                }
                if (pad > 0 || !is_b64_char(secret[i])) {
                        ch_error_set(err,
                                     "the secret's key is not valid base64 (character %zu "
                                     "after \"" SECRET_PREFIX "\")",
                                     i + 1);
                        return -EINVAL;
                }
        }
        /* Padding may be left off, as many generators do; restore it so length is whole
         * quads. A lone trailing character cannot encode anything. */
        memcpy(b64, secret, n);
        if (pad == 0) {
                while (n % 4 != 0) {
                        b64[n++] = '=';
                        pad++;
                }
        }
        if (n % 4 != 0 || pad > 2) {
                ch_error_set(err, "the secret's key is not valid base64 (its length is wrong)");
                return -EINVAL;
        }
        decoded = EVP_DecodeBlock(raw, (const unsigned char *)b64, (int)n);
        if (decoded < 0) {
                ch_error_set(err, "the secret's key is not valid base64");
                return -EINVAL;
        }
        /* EVP_DecodeBlock counts the padding as zero bytes: 3 per quad, always. */
        decoded -= (int)pad;
        if (decoded < SIGN_KEY_MIN || decoded > SIGN_KEY_MAX) {
                OPENSSL_cleanse(raw, sizeof(raw));
                ch_error_set(err, "the secret's key is %d bytes; it must be %d-%d bytes", decoded,
                             SIGN_KEY_MIN, SIGN_KEY_MAX);
                return -EINVAL;
        }
        memcpy(ret->bytes, raw, (size_t)decoded);
        ret->len = (size_t)decoded;
        OPENSSL_cleanse(raw, sizeof(raw));
        OPENSSL_cleanse(b64, sizeof(b64));
        return 0;
}

/* HMAC-SHA256 over msg_id "." timestamp "." body, fed in pieces so the body is never copied. */
static int hmac_sha256(const struct sign_key *key, const char *msg_id, int64_t timestamp_s,
                       const char *body, size_t body_len, unsigned char mac[SHA256_LEN])
{
        OSSL_PARAM params[] = {
            OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)"SHA256", 0),
            OSSL_PARAM_construct_end(),
        };
        EVP_MAC_CTX *ctx;
        char ts[32];
        size_t mac_len = 0;
        int ok, ts_len;

        pthread_once(&hmac_once, hmac_fetch);
        if (!hmac_method)
                return -EIO;
        ts_len = snprintf(ts, sizeof(ts), ".%" PRId64 ".", timestamp_s);
        ctx = EVP_MAC_CTX_new(hmac_method);
        if (!ctx)
                return -EIO;
        ok = EVP_MAC_init(ctx, key->bytes, key->len, params) &&
             EVP_MAC_update(ctx, (const unsigned char *)msg_id, strlen(msg_id)) &&
             EVP_MAC_update(ctx, (const unsigned char *)ts, (size_t)ts_len) &&
             (body_len == 0 || EVP_MAC_update(ctx, (const unsigned char *)body, body_len)) &&
             EVP_MAC_final(ctx, mac, &mac_len, SHA256_LEN);
        EVP_MAC_CTX_free(ctx);
        if (!ok || mac_len != SHA256_LEN)
                return -EIO;
        return 0;
}

int sign_signature(const struct sign_key *key, const char *msg_id, int64_t timestamp_s,
                   const char *body, size_t body_len, char out[SIGN_SIGNATURE_MAX])
{
        unsigned char mac[SHA256_LEN];
        int r;

        r = hmac_sha256(key, msg_id, timestamp_s, body, body_len, mac);
        if (r < 0)
                return r;
        memcpy(out, SIG_PREFIX, strlen(SIG_PREFIX));
        /* 44 base64 characters and a NUL after "v1,": 48 bytes of SIGN_SIGNATURE_MAX. */
        EVP_EncodeBlock((unsigned char *)out + strlen(SIG_PREFIX), mac, SHA256_LEN);
        return 0;
}

int sign_verify(const struct sign_key *key, const char *msg_id, int64_t timestamp_s,
                const char *body, size_t body_len, const char *header)
{
        char expected[SIGN_SIGNATURE_MAX];
        size_t expected_len;
        int match = 0;

        if (!header)
                return 0;
        if (sign_signature(key, msg_id, timestamp_s, body, body_len, expected) < 0)
                return 0;
        expected_len = strlen(expected);
        /* Senders rotating keys list several signatures; any one that matches is enough.
         * Lengths are public (every v1 signature has the same), the bytes are compared in
         * constant time. */
        for (const char *p = header; *p;) {
                size_t len;

                while (*p == ' ')
                        p++;
                len = strcspn(p, " ");
                if (len == expected_len && CRYPTO_memcmp(p, expected, len) == 0)
                        match = 1;
                p += len;
        }
        return match;
}
