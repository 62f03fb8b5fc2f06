/* Naming rules of the Context API (see names.h), and the one UTF-8 check of the program:
 * names are path segments and object keys, not JSON documents jansson would parse. */
#include <errno.h>
#include <string.h>

#include "ctxhookd/names.h"
#include "ctxhookd/store.h"

static const char *const reserved_namespaces[] = {"consumer", "operational", "conversation",
                                                  "custom",   "sde",         "faas"};

static int is_word_char(unsigned char c)
{
        return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
               c == '_';
}

int names_check_account(const char *s, struct ch_error *err)
{
        size_t n = strlen(s);

        if (n == 0 || n > STORE_ACCOUNT_MAX) {
                ch_error_set(err, "account id must be 1-%d characters, got %zu", STORE_ACCOUNT_MAX,
                             n);
                return -EINVAL;
        }
        for (size_t i = 0; i < n; i++) {
                unsigned char c = (unsigned char)s[i];
                if (!is_word_char(c) && c != '.' && c != '-') {
                        ch_error_set(
                            err, "account id '%.64s' is invalid: use only A-Z a-z 0-9 _ . -", s);
                        return -EINVAL;
                }
        }
        return 0;
}

int names_check_namespace(const char *s, struct ch_error *err)
{
        size_t n = strlen(s);

        if (n == 0 || n > STORE_NAMESPACE_MAX) {
                ch_error_set(err, "namespace name must be 1-%d characters, got %zu",
                             STORE_NAMESPACE_MAX, n);
                return -EINVAL;
        }
        for (size_t i = 0; i < n; i++)
                if (!is_word_char((unsigned char)s[i])) {
                        ch_error_set(
                            err, "namespace name '%.64s' is invalid: use only A-Z a-z 0-9 _", s);
                        return -EINVAL;
                }
        for (size_t i = 0; i < sizeof(reserved_namespaces) / sizeof(reserved_namespaces[0]); i++)
                if (strcmp(s, reserved_namespaces[i]) == 0) {
                        ch_error_set(err, "namespace '%s' is reserved", s);
                        return -EINVAL;
                }
        return 0;
}

size_t names_utf8_len(const unsigned char *p, size_t left)
{
        unsigned c = p[0];
        size_t n;
        unsigned cp, min;

        if (c < 0x80)
                return 1;
        if (c >= 0xc2 && c <= 0xdf) {
                n = 2;
                cp = c & 0x1f;
                min = 0x80;
        } else if (c >= 0xe0 && c <= 0xef) {
                n = 3;
                cp = c & 0x0f;
                min = 0x800;
        } else if (c >= 0xf0 && c <= 0xf4) {
                n = 4;
                cp = c & 0x07;
                min = 0x10000;
        } else {
                return 0;
        }
        if (left < n)
                return 0;
        for (size_t i = 1; i < n; i++) {
                if ((p[i] & 0xc0) != 0x80)
                        return 0;
                cp = cp << 6 | (p[i] & 0x3f);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
                return 0;
        return n;
}

bool names_utf8_valid(const char *s, size_t len)
{
        const unsigned char *p = (const unsigned char *)s;

        for (size_t i = 0; i < len;) {
                size_t n = names_utf8_len(p + i, len - i);

                if (n == 0)
                        return false;
                i += n;
        }
        return true;
}

int names_check_name(const char *what, const char *s, size_t len, struct ch_error *err)
{
        const unsigned char *p = (const unsigned char *)s;

        if (len == 0 || len > STORE_NAME_MAX) {
                ch_error_set(err, "%s must be 1-%d bytes, got %zu", what, STORE_NAME_MAX, len);
                return -EINVAL;
        }
        for (size_t i = 0; i < len;) {
                size_t n;

                if (p[i] < 0x20 || p[i] == 0x7f) {
                        ch_error_set(err, "%s contains a control character at byte %zu", what, i);
                        return -EINVAL;
                }
                n = names_utf8_len(p + i, len - i);
                if (n == 0) {
                        ch_error_set(err, "%s is not valid UTF-8 at byte %zu", what, i);
                        return -EINVAL;
                }
                i += n;
        }
        return 0;
}
