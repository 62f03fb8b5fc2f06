/* The HTTP path router of the Context API and the operations endpoints: a pure function from
 * (method, path) to the resource addressed, its path parameters and whether the method is
 * allowed there. No I/O, so it is unit-tested and fuzzed on its own. */
#ifndef CTXHOOKD_ROUTE_H
#define CTXHOOKD_ROUTE_H

#include <stddef.h>

#define ROUTE_PATH_MAX 4096

enum route_resource {
        ROUTE_NOT_FOUND = 0,
        ROUTE_ACCOUNT,            /* /v1/account/{acct}                          GET POST */
        ROUTE_NAMESPACE,          /* /v1/account/{acct}/{ns}                     DELETE */
        ROUTE_NS_PROPS,           /* /v1/account/{acct}/{ns}/properties          GET PATCH */
        ROUTE_NS_PROP,            /* /v1/account/{acct}/{ns}/properties/{prop}   GET PUT DELETE */
        ROUTE_SESSION_PROPS,      /* /v1/account/{acct}/{ns}/{sid}/properties    GET PATCH DELETE */
        ROUTE_SESSION_PROP,       /* …/{ns}/{sid}/properties/{prop}              GET PUT DELETE */
        ROUTE_SESSION_IDS,        /* /v1/account/{acct}/{ns}/session-ids         GET */
        ROUTE_SESSION_PROPERTIES, /* /v1/account/{acct}/{ns}/session-properties  GET */
        ROUTE_SESSIONS,           /* /v1/account/{acct}/namespace/{ns}/session   GET POST */
        ROUTE_SESSION,            /* /v1/account/{acct}/namespace/{ns}/session/{sid} DELETE */
        ROUTE_HEALTHZ,            /* /healthz GET */
        ROUTE_READYZ,             /* /readyz  GET */
        ROUTE_METRICS,            /* /metrics GET */
        ROUTE_DEAD_LETTERS,       /* /admin/dead-letters GET */
        ROUTE_DEAD_LETTER,        /* /admin/dead-letters/{id} DELETE */
        ROUTE_DEAD_LETTER_REDRIVE, /* /admin/dead-letters/{id}/redrive POST */
        ROUTE_EVENTS,              /* /v1/account/{acct}/events POST (ingest) DELETE (see below) */
        ROUTE__COUNT
};

enum route_method {
        ROUTE_M_GET = 1 << 0,
        ROUTE_M_HEAD = 1 << 1,
        ROUTE_M_POST = 1 << 2,
        ROUTE_M_PUT = 1 << 3,
        ROUTE_M_PATCH = 1 << 4,
        ROUTE_M_DELETE = 1 << 5,
        ROUTE_M_OTHER = 1 << 6,
};

struct route {
        enum route_resource resource;
        const char *account; /* NULL when the resource has none */
        const char *ns;
        const char *sid; /* NULL for namespace-level resources (= __default__) */
        const char *prop;
        const char *id; /* dead letter id (admin routes), not yet checked to be a number */
        char buf[ROUTE_PATH_MAX]; /* the segments point in here */
};

/* "GET" → ROUTE_M_GET …; anything unknown → ROUTE_M_OTHER. */
enum route_method route_method_from_string(const char *method);

/* Splits path (already percent-decoded, without the query string) into ret. A single
 * trailing slash is accepted ("…/properties/" == "…/properties"); empty segments elsewhere
 * ("//") do not match. Returns 0 (ret->resource may be ROUTE_NOT_FOUND) or -E2BIG for a path
 * longer than ROUTE_PATH_MAX-1, with ret->resource = ROUTE_NOT_FOUND. A session id literally
 * named "properties" is reachable only through the namespace-level routes: "/{ns}/properties/x"
 * always means the namespace property x.
 *
 * "/v1/account/{acct}/events" is two resources told apart by the method: POST there is event
 * ingest, and DELETE is still the deletion of the namespace literally named "events" (what
 * ROUTE_NAMESPACE would be), so that namespace keeps working. route_parse gives ROUTE_EVENTS
 * with ns = "events" for it; the caller dispatches on the method. Every longer path under
 * ".../events/" is the namespace "events" as usual. */
int route_parse(const char *path, struct route *ret);

/* The methods (ROUTE_M_* bits) the resource accepts; 0 for ROUTE_NOT_FOUND. HEAD is allowed
 * wherever GET is. */
unsigned route_allowed(enum route_resource r);

/* The Allow header value for the resource, e.g. "GET, HEAD, PATCH". */
const char *route_allow_header(enum route_resource r);

/* Stable name of the resource for logs and metrics, e.g. "session_prop". */
const char *route_resource_name(enum route_resource r);

#endif
