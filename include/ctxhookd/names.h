/* The naming rules of the Context API, shared by the HTTP handlers and the command line:
 * accounts, namespaces (with the reserved ones), session ids and property names. Each check
 * returns 0 when the name is acceptable, else -EINVAL with a reason that names the value in
 * err (for a 400 body or a usage error). */
#ifndef CTXHOOKD_NAMES_H
#define CTXHOOKD_NAMES_H

#include <stdbool.h>
#include <stddef.h>

#include "ctxhookd/error.h"

/* Length of the well-formed UTF-8 sequence starting at p (at most left ≥ 1 bytes), or 0 when
 * it is not one: overlong forms, surrogates and code points above U+10FFFF are refused. */
size_t names_utf8_len(const unsigned char *p, size_t left);

/* Whether s[0..len) is entirely well-formed UTF-8. */
bool names_utf8_valid(const char *s, size_t len);

/* [A-Za-z0-9_.-]{1,64} */
int names_check_account(const char *s, struct ch_error *err);

/* [A-Za-z0-9_]{1,64} and not consumer, operational, conversation, custom, sde, faas. */
int names_check_namespace(const char *s, struct ch_error *err);

/* Session ids and property names: 1…STORE_NAME_MAX bytes of valid UTF-8 without control
 * characters. what is "session id" or "property name", for the message. len is the byte
 * length (names may come from JSON and hold NUL, which is refused). */
int names_check_name(const char *what, const char *s, size_t len, struct ch_error *err);

#endif
