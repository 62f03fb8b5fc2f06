/* Standard Webhooks signatures (https://www.standardwebhooks.com/): the signing key is the
 * base64 after "whsec_" in a hook's secret; webhook-signature is
 * "v1,<base64 HMAC-SHA256(key, webhook-id "." webhook-timestamp "." body)>". */
#ifndef CTXHOOKD_SIGN_H
#define CTXHOOKD_SIGN_H

#include <stddef.h>
#include <stdint.h>

#include "ctxhookd/error.h"

#define SIGN_KEY_MIN       16 /* bytes of key after base64 decoding */
#define SIGN_KEY_MAX       64
#define SIGN_SIGNATURE_MAX 64 /* "v1," + 44 base64 chars + NUL fits */

struct sign_key {
        unsigned char bytes[SIGN_KEY_MAX];
        size_t len;
};

/* "whsec_<base64>" → key. -EINVAL with a reason in err (never echoing the secret) when the
 * prefix is missing, the base64 is invalid, or the key is not SIGN_KEY_MIN…SIGN_KEY_MAX bytes. */
int sign_key_parse(const char *secret, struct sign_key *ret, struct ch_error *err);

/* Writes "v1,<base64>" for the message into out. Returns 0 or -EIO (crypto failure). */
int sign_signature(const struct sign_key *key, const char *msg_id, int64_t timestamp_s,
                   const char *body, size_t body_len, char out[SIGN_SIGNATURE_MAX]);

/* 1 when any space-separated "v1,<sig>" in header matches the message (constant time), else 0.
 * For receivers (and the tests' webhook sink). */
int sign_verify(const struct sign_key *key, const char *msg_id, int64_t timestamp_s,
                const char *body, size_t body_len, const char *header);

#endif
