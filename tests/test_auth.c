/* Unit tests of authentication material and naming rules: API keys (generation, hashing,
 * constant-time match) and the account/namespace/name checks the API and CLI share. */
#include <criterion/criterion.h>
#include <errno.h>
#include <string.h>

#include "ctxhookd/apikey.h"
#include "ctxhookd/names.h"

Test(apikey, generated_keys_are_long_random_and_urlsafe)
{
        char a[APIKEY_TEXT_LEN + 1], b[APIKEY_TEXT_LEN + 1];

        cr_assert_eq(apikey_generate(a), 0);
        cr_assert_eq(apikey_generate(b), 0);
        cr_assert_eq(strlen(a), APIKEY_TEXT_LEN);
        cr_assert_str_neq(a, b);
        cr_assert_eq(strspn(a, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"),
                     APIKEY_TEXT_LEN);
        /* At least 128 bits of randomness: 32 characters of 62 carry 190. */
        cr_assert_geq(APIKEY_TEXT_LEN * 5.95, 128);
}

Test(apikey, characters_are_spread_over_the_alphabet)
{
        /* 2000 keys = 64000 characters: each of 62 symbols expected ~1032 times. A biased or
         * truncated alphabet (e.g. modulo bias, or digits never drawn) shows up at once. */
        unsigned counts[256] = {0};
        char k[APIKEY_TEXT_LEN + 1];

        for (int i = 0; i < 2000; i++) {
                cr_assert_eq(apikey_generate(k), 0);
                for (int j = 0; j < APIKEY_TEXT_LEN; j++)
                        counts[(unsigned char)k[j]]++;
        }
        for (const char *c = "AZaz09"; *c; c++)
                cr_assert(counts[(unsigned char)*c] > 800 && counts[(unsigned char)*c] < 1300,
                          "'%c' drawn %u times", *c, counts[(unsigned char)*c]);
}

Test(apikey, hash_is_sha256)
{
        unsigned char h[STORE_KEY_HASH_LEN];
        /* SHA-256("abc") */
        static const unsigned char want[] = {0xba, 0x78, 0x16, 0xbf, 0x8f, 0x01, 0xcf, 0xea,
                                             0x41, 0x41, 0x40, 0xde, 0x5d, 0xae, 0x22, 0x23,
                                             0xb0, 0x03, 0x61, 0xa3, 0x96, 0x17, 0x7a, 0x9c,
                                             0xb4, 0x10, 0xff, 0x61, 0xf2, 0x00, 0x15, 0xad};

        apikey_hash("abc", 3, h);
        cr_assert_arr_eq(h, want, sizeof(want));
}

Test(apikey, matches_only_the_exact_key)
{
        unsigned char h[STORE_KEY_HASH_LEN];
        char key[APIKEY_TEXT_LEN + 1];
        char other[APIKEY_TEXT_LEN + 2];

        cr_assert_eq(apikey_generate(key), 0);
        apikey_hash(key, strlen(key), h);
        cr_assert(apikey_matches(h, key, strlen(key)));
        memcpy(other, key, sizeof(key));
        other[0] = other[0] == 'A' ? 'B' : 'A';
        cr_assert_not(apikey_matches(h, other, strlen(other)));
        cr_assert_not(apikey_matches(h, key, strlen(key) - 1));
        strcpy(other, key);
        strcat(other, "x");
        cr_assert_not(apikey_matches(h, other, strlen(other)));
        cr_assert_not(apikey_matches(h, "", 0));
}

Test(apikey, overlong_presented_key_is_refused)
{
        unsigned char h[STORE_KEY_HASH_LEN];
        static char big[APIKEY_MAX_LEN + 2];

        memset(big, 'k', APIKEY_MAX_LEN + 1);
        apikey_hash(big, APIKEY_MAX_LEN + 1, h);
        /* Even the right bytes are refused past the length limit. */
        cr_assert_not(apikey_matches(h, big, APIKEY_MAX_LEN + 1));
}

Test(names, accounts)
{
        struct ch_error err = {{0}};

        cr_assert_eq(names_check_account("12345678", NULL), 0);
        cr_assert_eq(names_check_account("le57708964", NULL), 0);
        cr_assert_eq(names_check_account("a.b-c_d", NULL), 0);
        cr_assert_eq(names_check_account("", &err), -EINVAL);
        cr_assert_eq(names_check_account("a/b", &err), -EINVAL);
        cr_assert(strstr(err.msg, "a/b"), "message names the value: %s", err.msg);
        cr_assert_eq(names_check_account("x y", NULL), -EINVAL);
        char long_acct[66];
        memset(long_acct, '1', 65);
        long_acct[65] = '\0';
        cr_assert_eq(names_check_account(long_acct, NULL), -EINVAL);
        long_acct[64] = '\0';
        cr_assert_eq(names_check_account(long_acct, NULL), 0);
}

Test(names, namespaces_and_reserved)
{
        struct ch_error err = {{0}};
        static const char *reserved[] = {"consumer", "operational", "conversation",
                                         "custom",   "sde",         "faas"};

        cr_assert_eq(names_check_namespace("agentNotes", NULL), 0);
        cr_assert_eq(names_check_namespace("a_1", NULL), 0);
        cr_assert_eq(names_check_namespace("a-1", &err), -EINVAL);
        cr_assert_eq(names_check_namespace("a.b", NULL), -EINVAL);
        cr_assert_eq(names_check_namespace("", NULL), -EINVAL);
        for (size_t i = 0; i < sizeof(reserved) / sizeof(reserved[0]); i++) {
                cr_assert_eq(names_check_namespace(reserved[i], &err), -EINVAL, "%s", reserved[i]);
                cr_assert(strstr(err.msg, "reserved"), "%s", err.msg);
        }
        /* Only the exact names are reserved. */
        cr_assert_eq(names_check_namespace("consumers", NULL), 0);
        char ns[66];
        memset(ns, 'n', 65);
        ns[65] = '\0';
        cr_assert_eq(names_check_namespace(ns, NULL), -EINVAL);
        ns[64] = '\0';
        cr_assert_eq(names_check_namespace(ns, NULL), 0);
}

Test(names, session_and_property_names)
{
        struct ch_error err = {{0}};

        cr_assert_eq(names_check_name("property name", "note", 4, NULL), 0);
        cr_assert_eq(names_check_name("property name", "é€😀", strlen("é€😀"), NULL), 0);
        cr_assert_eq(names_check_name("property name", "a b:c", 5, NULL), 0);
        cr_assert_eq(names_check_name("property name", "", 0, &err), -EINVAL);
        cr_assert(strstr(err.msg, "property name"), "%s", err.msg);
        cr_assert_eq(names_check_name("session id", "a\0b", 3, &err), -EINVAL);
        cr_assert(strstr(err.msg, "control"), "%s", err.msg);
        cr_assert_eq(names_check_name("session id", "a\tb", 3, NULL), -EINVAL);
        cr_assert_eq(names_check_name("session id", "a\x7f", 2, NULL), -EINVAL);
        /* Invalid UTF-8: lone continuation, overlong '/', surrogate, truncated sequence. */
        cr_assert_eq(names_check_name("n", "\x80", 1, &err), -EINVAL);
        cr_assert(strstr(err.msg, "UTF-8"), "%s", err.msg);
        cr_assert_eq(names_check_name("n", "\xc0\xaf", 2, NULL), -EINVAL);
        cr_assert_eq(names_check_name("n", "\xed\xa0\x80", 3, NULL), -EINVAL);
        cr_assert_eq(names_check_name("n", "\xe2\x82", 2, NULL), -EINVAL);
        cr_assert_eq(names_check_name("n", "\xf4\x90\x80\x80", 4, NULL), -EINVAL);
        char big[STORE_NAME_MAX + 1];
        memset(big, 'p', sizeof(big));
        cr_assert_eq(names_check_name("n", big, STORE_NAME_MAX, NULL), 0);
        cr_assert_eq(names_check_name("n", big, STORE_NAME_MAX + 1, NULL), -EINVAL);
}
