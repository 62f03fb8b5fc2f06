/* Unit tests of Standard Webhooks signing: known-answer vectors computed outside this code (the
 * specification's own example and vectors made with the openssl command line), strict secret
 * parsing whose errors never echo the secret, and verification of multi-signature headers
 * against tampering. A round trip through our own verifier alone would pass with the content
 * delimiter, the base64 alphabet or the key decoding all wrong; the vectors would not. */
#include <criterion/criterion.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "ctxhookd/sign.h"

/* The example of the Standard Webhooks reference libraries (and Svix's): secret, id, timestamp
 * and body give exactly this signature. Reproduced independently with
 *   printf '%s' 'msg_p5jXN8AQM9LWM0D4loKWxJek.1614265330.{"test": 2432232314}' |
 *     openssl dgst -sha256 -mac HMAC \
 *       -macopt hexkey:$(printf MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw | base64 -d | xxd -p -c 100) \
 *       -binary | base64 */
#define SW_SECRET "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
#define SW_ID     "msg_p5jXN8AQM9LWM0D4loKWxJek"
#define SW_TS     1614265330
#define SW_BODY   "{\"test\": 2432232314}"
#define SW_SIG    "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="

/* Our own vectors, derived the same way with a hex key:
 *   printf '%s' "$id.$ts.$body" | openssl dgst -sha256 -mac HMAC -macopt hexkey:$HEX -binary |
 *     base64
 * and the secret is "whsec_" + the key's bytes through `xxd -r -p | base64`.
 * K32: bytes 00 01 … 1f; K16: a0 a1 … af; K64: ff fe … c0. For K64 the body holds a NUL
 * (printf 'm.1.a\0b'), which proves body_len is honoured rather than strlen. */
#define K32_SECRET "whsec_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
#define K32_SIG    "v1,SOPvljoOhXR3+fqJUV4Qng2+B8UPe56n1wdVEKUDEBo="
#define K16_SECRET "whsec_oKGio6SlpqeoqaqrrK2urw=="
#define K16_SIG    "v1,/ioPu/T3rXq8TQkDXaB1MSHCxF4unj3GbK5RF5cxhO8="
#define K64_SECRET                                                                                 \
        "whsec_//79/Pv6+fj39vX08/Lx8O/"                                                            \
        "u7ezr6uno5+bl5OPi4eDf3t3c29rZ2NfW1dTT0tHQz87NzMvKycjHxsXEw8LBwA=="
#define K64_SIG_NUL "v1,unEEiqaLY2rk4Fr4SHCPstj6Djx6aQtV312O/nLs8wI="
#define K64_SIG_A   "v1,+NtxPFtfM5/GjNbbqo//EggJfxgXvGfW8xEtjmBnzhU="

static struct sign_key key_of(const char *secret)
{
        struct sign_key k;
        struct ch_error err = {{0}};

        cr_assert_eq(sign_key_parse(secret, &k, &err), 0, "%s", err.msg);
        return k;
}

static void check_sig(const char *secret, const char *id, int64_t ts, const char *body,
                      size_t body_len, const char *want)
{
        struct sign_key k = key_of(secret);
        char out[SIGN_SIGNATURE_MAX];

        memset(out, 'X', sizeof(out));
        cr_assert_eq(sign_signature(&k, id, ts, body, body_len, out), 0);
        cr_assert_str_eq(out, want);
        cr_assert_eq(sign_verify(&k, id, ts, body, body_len, want), 1);
}

Test(sign, standard_webhooks_example)
{
        check_sig(SW_SECRET, SW_ID, SW_TS, SW_BODY, strlen(SW_BODY), SW_SIG);
}

Test(sign, known_answers_computed_with_openssl)
{
        static const char body[] = "{\"hook\":\"notes\",\"n\":1}";

        check_sig(K32_SECRET, "msg_ctxhookd_1", 1764400000, body, strlen(body), K32_SIG);
        /* Empty body (and a NULL pointer for it) with the shortest key and timestamp 0. */
        check_sig(K16_SECRET, "id-2", 0, "", 0, K16_SIG);
        check_sig(K16_SECRET, "id-2", 0, NULL, 0, K16_SIG);
        check_sig(K64_SECRET, "m", 1, "a\0b", 3, K64_SIG_NUL);
        check_sig(K64_SECRET, "m", 1, "a\0b", 1, K64_SIG_A);
}

Test(sign, output_shape)
{
        struct sign_key k = key_of(K32_SECRET);
        char out[SIGN_SIGNATURE_MAX];

        cr_assert_eq(sign_signature(&k, "x", 1, "{}", 2, out), 0);
        cr_assert_eq(strncmp(out, "v1,", 3), 0);
        cr_assert_eq(strlen(out), 3 + 44, "v1, and the base64 of 32 bytes");
        cr_assert_eq(out[46], '=');
}

Test(sign, key_parse_decodes_the_real_length)
{
        static const struct {
                const char *secret;
                size_t len;
        } cases[] = {
            {"whsec_AAECAwQFBgcICQoLDA0ODw==", 16}, /* two padding characters */
            {"whsec_AAECAwQFBgcICQoLDA0ODw", 16},   /* padding left off */
            {"whsec_AAECAwQFBgcICQoLDA0ODxA=", 17}, /* one */
            {"whsec_AAECAwQFBgcICQoLDA0ODxA", 17},
            {"whsec_AAECAwQFBgcICQoLDA0ODxAR", 18}, /* none needed */
            {SW_SECRET, 24},
            {K32_SECRET, 32},
            {K64_SECRET, 64},
        };

        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                struct sign_key k = key_of(cases[i].secret);

                cr_assert_eq(k.len, cases[i].len, "%s: %zu bytes, want %zu", cases[i].secret, k.len,
                             cases[i].len);
                /* K64 counts down from ff, the others up from 00. */
                for (size_t j = 0; j < k.len && cases[i].len != 24; j++)
                        cr_assert_eq(k.bytes[j], cases[i].len == 64 ? 0xff - j : j, "%s byte %zu",
                                     cases[i].secret, j);
        }
}

/* Refused with -EINVAL, *ret untouched, the reason containing want and not a trace of the
 * secret's key (not even a fragment that would narrow a search). */
static void check_refused(const char *secret, const char *want)
{
        struct sign_key k;
        struct ch_error err = {{0}};
        const char *key_part;

        memset(&k, 0xaa, sizeof(k));
        cr_assert_eq(sign_key_parse(secret, &k, &err), -EINVAL, "'%s' accepted", secret);
        for (size_t i = 0; i < sizeof(k); i++)
                cr_assert_eq(((unsigned char *)&k)[i], 0xaa, "ret written on failure");
        cr_assert(strstr(err.msg, want), "'%s': reason '%s' lacks '%s'", secret, err.msg, want);
        if (!secret)
                return;
        /* Past the first six characters: the prefix (or what stands in its place) is quoted
         * by design. */
        key_part = strlen(secret) > 6 ? secret + 6 : "";
        for (size_t i = 0; key_part[i] && key_part[i + 1] && key_part[i + 2] && key_part[i + 3];
             i++) {
                char frag[5] = {key_part[i], key_part[i + 1], key_part[i + 2], key_part[i + 3],
                                '\0'};

                cr_assert_null(strstr(err.msg, frag), "reason '%s' echoes the secret", err.msg);
        }
}

Test(sign, key_parse_errors_never_echo_the_secret)
{
        check_refused(NULL, "must start with \"whsec_\"");
        check_refused("", "must start with \"whsec_\"");
        check_refused("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "must start with \"whsec_\"");
        check_refused("WHSEC_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "must start with");
        check_refused("whsecMfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "must start with");
        check_refused("whsec_", "no key after");
        /* Characters outside standard base64, and padding in the wrong place. */
        check_refused("whsec_MfKQ9r8GKYqrTwjU-D8ILPZIo2LaLaSw", "not valid base64 (character 17");
        check_refused("whsec_MfKQ9r8GKYqrTwjU_D8ILPZIo2LaLaSw", "not valid base64");
        check_refused("whsec_MfKQ9r8GKYqr TwjUPD8ILPZIo2LaLaSw", "not valid base64");
        check_refused("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n", "not valid base64");
        check_refused("whsec_MfKQ9r8GKYqr=wjUPD8ILPZIo2LaLaSw", "not valid base64");
        check_refused("whsec_AAECAwQFBgcICQoLDA0ODxAREhM===", "not valid base64");
        check_refused("whsec_AAECAwQFBgcICQoLDA0ODx=A", "not valid base64");
        /* 4n+1 characters cannot be base64, padded or not. */
        check_refused("whsec_AAECAwQFBgcICQoLDA0ODxAREhMUA", "length is wrong");
        check_refused("whsec_AAECAwQFBgcICQoLDA0ODxA==", "length is wrong");
        /* Valid base64, wrong size: 15 and 65, 66 bytes; and far too long to decode at all. */
        check_refused("whsec_AAAAAAAAAAAAAAAAAAAA", "15 bytes; it must be 16-64 bytes");
        check_refused("whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
                      "AAAAAAAAAAAAAAAAAAA=",
                      "65 bytes");
        check_refused("whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
                      "AAAAAAAAAAAAAAAAAAAA",
                      "66 bytes");
        check_refused("whsec_c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0"
                      "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0",
                      "longer than 64 bytes");
        check_refused("whsec_c2hvcnRrZXk=", "8 bytes");
}

Test(sign, verify_accepts_any_listed_signature)
{
        struct sign_key k = key_of(SW_SECRET);
        static const char *const headers[] = {
            SW_SIG,
            "v1,bm9wZQ== " SW_SIG,
            SW_SIG " v1,bm9wZQ==",
            "  v1,bm9wZQ==   " SW_SIG "  ",
            "v1a,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE= " SW_SIG,
        };

        for (size_t i = 0; i < sizeof(headers) / sizeof(headers[0]); i++)
                cr_assert_eq(sign_verify(&k, SW_ID, SW_TS, SW_BODY, strlen(SW_BODY), headers[i]), 1,
                             "header '%s'", headers[i]);
}

Test(sign, verify_rejects_tampering_and_near_misses)
{
        struct sign_key k = key_of(SW_SECRET), other = key_of(K32_SECRET);
        size_t len = strlen(SW_BODY);
        static const char *const headers[] = {
            "",
            " ",
            "v1,bm9wZQ==",
            /* the right MAC under another version or without one */
            "v1a,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
            "v2,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
            "g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
            /* truncated, extended, one character changed, glued to the next signature */
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE",
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE==",
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OF=",
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=,v1,bm9wZQ==",
            /* comma-separated lists are not the format */
            "v1,bm9wZQ==,v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
        };

        for (size_t i = 0; i < sizeof(headers) / sizeof(headers[0]); i++)
                cr_assert_eq(sign_verify(&k, SW_ID, SW_TS, SW_BODY, len, headers[i]), 0,
                             "header '%s' accepted", headers[i]);
        cr_assert_eq(sign_verify(&k, SW_ID, SW_TS, SW_BODY, len, NULL), 0);
        /* Every signed part matters. */
        cr_assert_eq(sign_verify(&k, SW_ID, SW_TS, "{\"test\": 2432232315}", len, SW_SIG), 0);
        cr_assert_eq(sign_verify(&k, SW_ID, SW_TS, SW_BODY, len - 1, SW_SIG), 0);
        cr_assert_eq(sign_verify(&k, "msg_p5jXN8AQM9LWM0D4loKWxJeK", SW_TS, SW_BODY, len, SW_SIG),
                     0);
        cr_assert_eq(sign_verify(&k, SW_ID, SW_TS + 1, SW_BODY, len, SW_SIG), 0);
        cr_assert_eq(sign_verify(&other, SW_ID, SW_TS, SW_BODY, len, SW_SIG), 0);
        /* The delimiter is part of the content: moving it must change the signature. */
        cr_assert_eq(
            sign_verify(&k, "msg_p5jXN8AQM9LWM0D4loKWxJek.1614265330", 0, SW_BODY, len, SW_SIG), 0);
}

static void *sign_many(void *arg)
{
        const struct sign_key *k = arg;
        char out[SIGN_SIGNATURE_MAX];

        for (int i = 0; i < 500; i++) {
                if (sign_signature(k, SW_ID, SW_TS, SW_BODY, strlen(SW_BODY), out) < 0 ||
                    strcmp(out, SW_SIG) != 0)
                        return (void *)1;
        }
        return NULL;
}

/* Deliveries sign on one thread and the ingest path may on others: the shared HMAC method must
 * be safe to use concurrently, from the very first call. */
Test(sign, concurrent_signing)
{
        struct sign_key k = key_of(SW_SECRET);
        pthread_t t[4];

        for (size_t i = 0; i < 4; i++)
                cr_assert_eq(pthread_create(&t[i], NULL, sign_many, &k), 0);
        for (size_t i = 0; i < 4; i++) {
                void *res;

                cr_assert_eq(pthread_join(t[i], &res), 0);
                cr_assert_null(res, "thread %zu produced a wrong signature", i);
        }
}
