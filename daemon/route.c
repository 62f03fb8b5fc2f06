/* The path router of the Context API (see route.h): splits a decoded path into segments in
 * place and matches them against the fixed set of resources. Pure and allocation-free, so the
 * request path pays a copy and a few string compares, and the fuzzer can drive it alone.
 * Ambiguities are settled in one place, match_account_route(): a namespace-level route wins
 * over a session-level one, so "/{ns}/properties/x" is always the namespace property x, and
 * "/{acct}/events" is ROUTE_EVENTS (ingest, or the namespace "events" for a DELETE). */
#include <errno.h>
#include <string.h>

#include "ctxhookd/route.h"

#define MAX_SEGMENTS                                                                               \
        8 /* the longest route has 7: v1 account {acct} namespace {ns} session {sid}               \
           */

static const unsigned allowed[ROUTE__COUNT] = {
    [ROUTE_NOT_FOUND] = 0,
    [ROUTE_ACCOUNT] = ROUTE_M_GET | ROUTE_M_HEAD | ROUTE_M_POST,
    [ROUTE_NAMESPACE] = ROUTE_M_DELETE,
    [ROUTE_NS_PROPS] = ROUTE_M_GET | ROUTE_M_HEAD | ROUTE_M_PATCH,
    [ROUTE_NS_PROP] = ROUTE_M_GET | ROUTE_M_HEAD | ROUTE_M_PUT | ROUTE_M_DELETE,
    [ROUTE_SESSION_PROPS] = ROUTE_M_GET | ROUTE_M_HEAD | ROUTE_M_PATCH | ROUTE_M_DELETE,
    [ROUTE_SESSION_PROP] = ROUTE_M_GET | ROUTE_M_HEAD | ROUTE_M_PUT | ROUTE_M_DELETE,
    [ROUTE_SESSION_IDS] = ROUTE_M_GET | ROUTE_M_HEAD,
    [ROUTE_SESSION_PROPERTIES] = ROUTE_M_GET | ROUTE_M_HEAD,
    [ROUTE_SESSIONS] = ROUTE_M_GET | ROUTE_M_HEAD | ROUTE_M_POST,
    [ROUTE_SESSION] = ROUTE_M_DELETE,
    [ROUTE_HEALTHZ] = ROUTE_M_GET | ROUTE_M_HEAD,
    [ROUTE_READYZ] = ROUTE_M_GET | ROUTE_M_HEAD,
    [ROUTE_METRICS] = ROUTE_M_GET | ROUTE_M_HEAD,
    [ROUTE_DEAD_LETTERS] = ROUTE_M_GET | ROUTE_M_HEAD,
    [ROUTE_DEAD_LETTER] = ROUTE_M_DELETE,
    [ROUTE_DEAD_LETTER_REDRIVE] = ROUTE_M_POST,
    [ROUTE_EVENTS] = ROUTE_M_POST | ROUTE_M_DELETE,
};

/* Kept in step with `allowed` by test_route.c, which rebuilds each string from the bits. */
static const char *const allow_headers[ROUTE__COUNT] = {
    [ROUTE_NOT_FOUND] = "",
    [ROUTE_ACCOUNT] = "GET, HEAD, POST",
    [ROUTE_NAMESPACE] = "DELETE",
    [ROUTE_NS_PROPS] = "GET, HEAD, PATCH",
    [ROUTE_NS_PROP] = "GET, HEAD, PUT, DELETE",
    [ROUTE_SESSION_PROPS] = "GET, HEAD, PATCH, DELETE",
    [ROUTE_SESSION_PROP] = "GET, HEAD, PUT, DELETE",
    [ROUTE_SESSION_IDS] = "GET, HEAD",
    [ROUTE_SESSION_PROPERTIES] = "GET, HEAD",
    [ROUTE_SESSIONS] = "GET, HEAD, POST",
    [ROUTE_SESSION] = "DELETE",
    [ROUTE_HEALTHZ] = "GET, HEAD",
    [ROUTE_READYZ] = "GET, HEAD",
    [ROUTE_METRICS] = "GET, HEAD",
    [ROUTE_DEAD_LETTERS] = "GET, HEAD",
    [ROUTE_DEAD_LETTER] = "DELETE",
    [ROUTE_DEAD_LETTER_REDRIVE] = "POST",
    [ROUTE_EVENTS] = "POST, DELETE",
};

static const char *const names[ROUTE__COUNT] = {
    [ROUTE_NOT_FOUND] = "not_found",
    [ROUTE_ACCOUNT] = "account",
    [ROUTE_NAMESPACE] = "namespace",
    [ROUTE_NS_PROPS] = "ns_props",
    [ROUTE_NS_PROP] = "ns_prop",
    [ROUTE_SESSION_PROPS] = "session_props",
    [ROUTE_SESSION_PROP] = "session_prop",
    [ROUTE_SESSION_IDS] = "session_ids",
    [ROUTE_SESSION_PROPERTIES] = "session_properties",
    [ROUTE_SESSIONS] = "sessions",
    [ROUTE_SESSION] = "session",
    [ROUTE_HEALTHZ] = "healthz",
    [ROUTE_READYZ] = "readyz",
    [ROUTE_METRICS] = "metrics",
    [ROUTE_DEAD_LETTERS] = "dead_letters",
    [ROUTE_DEAD_LETTER] = "dead_letter",
    [ROUTE_DEAD_LETTER_REDRIVE] = "dead_letter_redrive",
    [ROUTE_EVENTS] = "events",
};

enum route_method route_method_from_string(const char *method)
{
        static const struct {
                const char *name;
                enum route_method m;
        } methods[] = {
            {"GET", ROUTE_M_GET}, {"HEAD", ROUTE_M_HEAD},   {"POST", ROUTE_M_POST},
            {"PUT", ROUTE_M_PUT}, {"PATCH", ROUTE_M_PATCH}, {"DELETE", ROUTE_M_DELETE},
        };

        /* Methods are case-sensitive (RFC 9110 9.1): "get" is some other method. */
        if (!method)
                return ROUTE_M_OTHER;
        for (size_t i = 0; i < sizeof(methods) / sizeof(methods[0]); i++)
                if (strcmp(method, methods[i].name) == 0)
                        return methods[i].m;
        return ROUTE_M_OTHER;
}

static int eq(const char *a, const char *b)
{
        return strcmp(a, b) == 0;
}

/* seg[0..n) are the segments after "/v1/account". */
static void match_account_route(char **seg, size_t n, struct route *r)
{
        r->account = seg[0];
        switch (n) {
        case 1:
                r->resource = ROUTE_ACCOUNT;
                return;
        case 2:
                r->ns = seg[1];
                /* Which of the two the caller serves depends on the method (route.h). */
                r->resource = eq(seg[1], "events") ? ROUTE_EVENTS : ROUTE_NAMESPACE;
                return;
        case 3:
                r->ns = seg[1];
                if (eq(seg[2], "properties"))
                        r->resource = ROUTE_NS_PROPS;
                else if (eq(seg[2], "session-ids"))
                        r->resource = ROUTE_SESSION_IDS;
                else if (eq(seg[2], "session-properties"))
                        r->resource = ROUTE_SESSION_PROPERTIES;
                return;
        case 4:
                /* {ns}/properties/{prop} first: it wins over both readings below, including
                 * namespace/properties/session (the property "session" of namespace
                 * "namespace", not the sessions of namespace "properties"). */
                if (eq(seg[2], "properties")) {
                        r->ns = seg[1];
                        r->prop = seg[3];
                        r->resource = ROUTE_NS_PROP;
                } else if (eq(seg[1], "namespace") && eq(seg[3], "session")) {
                        r->ns = seg[2];
                        r->resource = ROUTE_SESSIONS;
                } else if (eq(seg[3], "properties")) {
                        r->ns = seg[1];
                        r->sid = seg[2];
                        r->resource = ROUTE_SESSION_PROPS;
                }
                return;
        case 5:
                if (eq(seg[1], "namespace") && eq(seg[3], "session")) {
                        r->ns = seg[2];
                        r->sid = seg[4];
                        r->resource = ROUTE_SESSION;
                } else if (eq(seg[3], "properties") && !eq(seg[2], "properties")) {
                        /* A session named "properties" has no session-level routes at all:
                         * its property list would be the namespace property "properties". */
                        r->ns = seg[1];
                        r->sid = seg[2];
                        r->prop = seg[4];
                        r->resource = ROUTE_SESSION_PROP;
                }
                return;
        default:
                return;
        }
}

int route_parse(const char *path, struct route *ret)
{
        char *seg[MAX_SEGMENTS];
        size_t len, n = 0;
        char *p;

        ret->resource = ROUTE_NOT_FOUND;
        ret->account = ret->ns = ret->sid = ret->prop = ret->id = NULL;
        ret->buf[0] = '\0';

        if (!path)
                return 0;
        len = strnlen(path, ROUTE_PATH_MAX);
        if (len >= ROUTE_PATH_MAX)
                return -E2BIG;
        if (len < 2 || path[0] != '/')
                return 0;
        memcpy(ret->buf, path, len + 1);
        if (ret->buf[len - 1] == '/')
                ret->buf[--len] = '\0';

        /* Every segment must be non-empty: "//" anywhere (or a second trailing slash) is not a
         * path of ours rather than a silently collapsed one. */
        p = ret->buf + 1;
        for (;;) {
                char *slash = strchr(p, '/');

                if (*p == '\0' || slash == p || n == MAX_SEGMENTS)
                        return 0;
                seg[n++] = p;
                if (!slash)
                        break;
                *slash = '\0';
                p = slash + 1;
        }

        if (n == 1) {
                if (eq(seg[0], "healthz"))
                        ret->resource = ROUTE_HEALTHZ;
                else if (eq(seg[0], "readyz"))
                        ret->resource = ROUTE_READYZ;
                else if (eq(seg[0], "metrics"))
                        ret->resource = ROUTE_METRICS;
                return 0;
        }
        if (n >= 2 && n <= 4 && eq(seg[0], "admin") && eq(seg[1], "dead-letters")) {
                if (n == 2)
                        ret->resource = ROUTE_DEAD_LETTERS;
                else if (n == 3)
                        ret->resource = ROUTE_DEAD_LETTER;
                else if (eq(seg[3], "redrive"))
                        ret->resource = ROUTE_DEAD_LETTER_REDRIVE;
                if (n >= 3 && ret->resource != ROUTE_NOT_FOUND)
                        ret->id = seg[2];
                return 0;
        }
        if (n >= 3 && eq(seg[0], "v1") && eq(seg[1], "account"))
                match_account_route(seg + 2, n - 2, ret);
        if (ret->resource == ROUTE_NOT_FOUND)
                ret->account = ret->ns = ret->sid = ret->prop = NULL;
        return 0;
}

unsigned route_allowed(enum route_resource r)
{
        if ((unsigned)r >= ROUTE__COUNT)
                return 0;
        return allowed[r];
}

const char *route_allow_header(enum route_resource r)
{
        if ((unsigned)r >= ROUTE__COUNT)
                return "";
        return allow_headers[r];
}

const char *route_resource_name(enum route_resource r)
{
        if ((unsigned)r >= ROUTE__COUNT)
                return "unknown";
        return names[r];
}
