/* API keys of the Context API: generation (OpenSSL RAND_bytes), hashing (SHA-256; only the
 * hash is stored) and constant-time verification. */
#ifndef CTXHOOKD_APIKEY_H
#define CTXHOOKD_APIKEY_H

#include <stddef.h>

#include "ctxhookd/store.h"

#define APIKEY_TEXT_LEN 32  /* letters and digits: 32 * log2(62) = 190 bits */
#define APIKEY_MAX_LEN  256 /* longer presented keys are refused without hashing */

/* Writes a new random key (APIKEY_TEXT_LEN chars of [A-Za-z0-9], uniform) and NUL into out.
 * Returns 0 or -EIO when the random generator fails. */
int apikey_generate(char out[APIKEY_TEXT_LEN + 1]);

/* SHA-256 of the key's bytes. */
void apikey_hash(const char *key, size_t len, unsigned char out[STORE_KEY_HASH_LEN]);

/* 1 when key hashes to stored_hash, compared in constant time; else 0. */
int apikey_matches(const unsigned char stored_hash[STORE_KEY_HASH_LEN], const char *key,
                   size_t len);

#endif
