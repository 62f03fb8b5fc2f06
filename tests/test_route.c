/* Unit tests of the path router (daemon/route.c): every resource with its parameters, the
 * trailing-slash and empty-segment rules, the documented "properties" ambiguity, a namespace
 * literally named "namespace", over-long paths, and the method tables behind 405 + Allow. */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ctxhookd/route.h"

/* Parses path and checks resource and every parameter (NULL = must be NULL). */
static void expect_route(const char *path, enum route_resource res, const char *account,
                         const char *ns, const char *sid, const char *prop)
{
        struct route r;
        const char *want[4] = {account, ns, sid, prop};
        const char *names[4] = {"account", "ns", "sid", "prop"};
        int rc;

        memset(&r, 0xa5, sizeof(r)); /* garbage in: route_parse must set every field */
        rc = route_parse(path, &r);
        cr_assert_eq(rc, 0, "route_parse(%s) = %d", path, rc);
        cr_assert_eq(r.resource, res, "route_parse(%s): resource %s, want %s", path,
                     route_resource_name(r.resource), route_resource_name(res));
        const char *got[4] = {r.account, r.ns, r.sid, r.prop};
        for (int i = 0; i < 4; i++) {
                if (!want[i])
                        cr_assert_null(got[i], "route_parse(%s): %s should be NULL, is '%s'", path,
                                       names[i], got[i]);
                else {
                        cr_assert_not_null(got[i], "route_parse(%s): %s is NULL", path, names[i]);
                        cr_assert_str_eq(got[i], want[i], "route_parse(%s): %s", path, names[i]);
                }
        }
}

static void expect_not_found(const char *path)
{
        expect_route(path, ROUTE_NOT_FOUND, NULL, NULL, NULL, NULL);
}

Test(route, every_resource)
{
        expect_route("/v1/account/le123", ROUTE_ACCOUNT, "le123", NULL, NULL, NULL);
        expect_route("/v1/account/le123/notes", ROUTE_NAMESPACE, "le123", "notes", NULL, NULL);
        expect_route("/v1/account/le123/notes/properties", ROUTE_NS_PROPS, "le123", "notes", NULL,
                     NULL);
        expect_route("/v1/account/le123/notes/properties/color", ROUTE_NS_PROP, "le123", "notes",
                     NULL, "color");
        expect_route("/v1/account/le123/notes/conv-1/properties", ROUTE_SESSION_PROPS, "le123",
                     "notes", "conv-1", NULL);
        expect_route("/v1/account/le123/notes/conv-1/properties/color", ROUTE_SESSION_PROP, "le123",
                     "notes", "conv-1", "color");
        expect_route("/v1/account/le123/notes/session-ids", ROUTE_SESSION_IDS, "le123", "notes",
                     NULL, NULL);
        expect_route("/v1/account/le123/notes/session-properties", ROUTE_SESSION_PROPERTIES,
                     "le123", "notes", NULL, NULL);
        expect_route("/v1/account/le123/namespace/notes/session", ROUTE_SESSIONS, "le123", "notes",
                     NULL, NULL);
        expect_route("/v1/account/le123/namespace/notes/session/conv-1", ROUTE_SESSION, "le123",
                     "notes", "conv-1", NULL);
        expect_route("/healthz", ROUTE_HEALTHZ, NULL, NULL, NULL, NULL);
        expect_route("/readyz", ROUTE_READYZ, NULL, NULL, NULL, NULL);
        expect_route("/metrics", ROUTE_METRICS, NULL, NULL, NULL, NULL);
}

Test(route, trailing_slash_is_accepted_once)
{
        expect_route("/v1/account/a/", ROUTE_ACCOUNT, "a", NULL, NULL, NULL);
        expect_route("/v1/account/a/ns/s1/properties/", ROUTE_SESSION_PROPS, "a", "ns", "s1", NULL);
        expect_route("/v1/account/a/ns/s1/properties/p/", ROUTE_SESSION_PROP, "a", "ns", "s1", "p");
        expect_route("/v1/account/a/namespace/ns/session/s1/", ROUTE_SESSION, "a", "ns", "s1",
                     NULL);
        expect_route("/healthz/", ROUTE_HEALTHZ, NULL, NULL, NULL, NULL);
        expect_not_found("/v1/account/a//");
        expect_not_found("/v1/account/a/ns/s1/properties//");
        expect_not_found("/healthz//");
}

Test(route, empty_segments_do_not_match)
{
        expect_not_found("//v1/account/a");
        expect_not_found("/v1//account/a");
        expect_not_found("/v1/account//a");
        expect_not_found("/v1/account/a//ns");
        expect_not_found("/v1/account/a/ns//properties");
        expect_not_found("/v1/account/a/ns/properties//p");
        expect_not_found("/v1/account/a/namespace//session");
        expect_not_found("/");
        expect_not_found("//");
        expect_not_found("");
        expect_not_found(NULL);
}

Test(route, unknown_paths)
{
        expect_not_found("v1/account/a"); /* not absolute */
        expect_not_found("/v1");
        expect_not_found("/v1/account");
        expect_not_found("/v1/account/");
        expect_not_found("/v2/account/a");
        expect_not_found("/v1/accounts/a");
        expect_not_found("/V1/account/a");
        expect_not_found("/v1/account/a/ns/unknown");
        expect_not_found("/v1/account/a/ns/s1/props");
        expect_not_found("/v1/account/a/ns/s1/properties/p/extra");
        expect_not_found("/v1/account/a/ns/s1/other/p");
        expect_not_found("/v1/account/a/namespace/ns/sessions");
        expect_not_found("/v1/account/a/namespace/ns/session/s1/extra");
        expect_not_found("/v1/account/a/b/c/d/e/f/g/h/i/j");
        expect_not_found("/healthz/x");
        expect_not_found("/Healthz");
        expect_not_found("/metricsx");
        expect_not_found("/admin/dead"); /* only /admin/dead-letters exists under /admin */
}

Test(route, properties_ambiguity)
{
        /* "/{ns}/properties/x" is always the namespace property x, never the property list of
         * a session named "properties" (route.h). */
        expect_route("/v1/account/a/ns/properties/properties", ROUTE_NS_PROP, "a", "ns", NULL,
                     "properties");
        expect_route("/v1/account/a/ns/properties/session-ids", ROUTE_NS_PROP, "a", "ns", NULL,
                     "session-ids");
        /* …and a session named "properties" has no session-level route either. */
        expect_not_found("/v1/account/a/ns/properties/properties/x");
        /* Other session ids that look like route words are ordinary session ids. */
        expect_route("/v1/account/a/ns/session-ids/properties", ROUTE_SESSION_PROPS, "a", "ns",
                     "session-ids", NULL);
        expect_route("/v1/account/a/ns/session/properties/p", ROUTE_SESSION_PROP, "a", "ns",
                     "session", "p");
        expect_route("/v1/account/a/ns/s/properties/properties", ROUTE_SESSION_PROP, "a", "ns", "s",
                     "properties");
}

Test(route, namespace_named_namespace)
{
        expect_route("/v1/account/a/namespace", ROUTE_NAMESPACE, "a", "namespace", NULL, NULL);
        expect_route("/v1/account/a/namespace/properties", ROUTE_NS_PROPS, "a", "namespace", NULL,
                     NULL);
        expect_route("/v1/account/a/namespace/properties/p", ROUTE_NS_PROP, "a", "namespace", NULL,
                     "p");
        expect_route("/v1/account/a/namespace/session-ids", ROUTE_SESSION_IDS, "a", "namespace",
                     NULL, NULL);
        expect_route("/v1/account/a/namespace/s1/properties", ROUTE_SESSION_PROPS, "a", "namespace",
                     "s1", NULL);
        expect_route("/v1/account/a/namespace/s1/properties/p", ROUTE_SESSION_PROP, "a",
                     "namespace", "s1", "p");
        /* The /namespace/{ns}/session routes, with namespace "namespace" too. */
        expect_route("/v1/account/a/namespace/namespace/session", ROUTE_SESSIONS, "a", "namespace",
                     NULL, NULL);
        expect_route("/v1/account/a/namespace/namespace/session/s1", ROUTE_SESSION, "a",
                     "namespace", "s1", NULL);
        /* Namespace-level wins: the property "session" of namespace "namespace". */
        expect_route("/v1/account/a/namespace/properties/session", ROUTE_NS_PROP, "a", "namespace",
                     NULL, "session");
        /* A session id "session" in namespace "namespace" keeps its property routes. */
        expect_route("/v1/account/a/namespace/session/properties", ROUTE_SESSION_PROPS, "a",
                     "namespace", "session", NULL);
}

Test(route, segments_are_copied_not_aliased)
{
        char path[] = "/v1/account/acct/ns/sid/properties/prop";
        struct route r;

        cr_assert_eq(route_parse(path, &r), 0);
        cr_assert_eq(r.resource, ROUTE_SESSION_PROP);
        memset(path, 'x', sizeof(path) - 1);
        cr_assert_str_eq(r.account, "acct");
        cr_assert_str_eq(r.prop, "prop");
        cr_assert(r.account >= r.buf && r.account < r.buf + sizeof(r.buf));
        cr_assert_str_eq(path, "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"); /* input untouched */
}

Test(route, odd_bytes_pass_through_to_validation)
{
        /* The router does not judge names: that is the API's 400, not a 404. */
        expect_route("/v1/account/a b/n\xc3\xa9/s\x01/properties/\xff", ROUTE_SESSION_PROP, "a b",
                     "n\xc3\xa9", "s\x01", "\xff");
}

Test(route, path_length_limit)
{
        char *p = malloc(ROUTE_PATH_MAX + 16);
        struct route r;
        size_t prefix = strlen("/v1/account/a/ns/properties/");

        cr_assert_not_null(p);
        /* Exactly ROUTE_PATH_MAX-1 bytes: accepted, the whole property name kept. */
        strcpy(p, "/v1/account/a/ns/properties/");
        memset(p + prefix, 'p', ROUTE_PATH_MAX - 1 - prefix);
        p[ROUTE_PATH_MAX - 1] = '\0';
        cr_assert_eq(route_parse(p, &r), 0);
        cr_assert_eq(r.resource, ROUTE_NS_PROP);
        cr_assert_eq(strlen(r.prop), ROUTE_PATH_MAX - 1 - prefix);

        /* One byte more: -E2BIG and nothing matched. */
        p[ROUTE_PATH_MAX - 1] = 'p';
        p[ROUTE_PATH_MAX] = '\0';
        r.resource = ROUTE_NS_PROP;
        cr_assert_eq(route_parse(p, &r), -E2BIG);
        cr_assert_eq(r.resource, ROUTE_NOT_FOUND);
        cr_assert_null(r.prop);

        memset(p + prefix, 'p', ROUTE_PATH_MAX + 10 - prefix);
        p[ROUTE_PATH_MAX + 10] = '\0';
        cr_assert_eq(route_parse(p, &r), -E2BIG);
        free(p);
}

Test(route, method_from_string)
{
        cr_assert_eq(route_method_from_string("GET"), ROUTE_M_GET);
        cr_assert_eq(route_method_from_string("HEAD"), ROUTE_M_HEAD);
        cr_assert_eq(route_method_from_string("POST"), ROUTE_M_POST);
        cr_assert_eq(route_method_from_string("PUT"), ROUTE_M_PUT);
        cr_assert_eq(route_method_from_string("PATCH"), ROUTE_M_PATCH);
        cr_assert_eq(route_method_from_string("DELETE"), ROUTE_M_DELETE);
        cr_assert_eq(route_method_from_string("OPTIONS"), ROUTE_M_OTHER);
        cr_assert_eq(route_method_from_string("get"), ROUTE_M_OTHER);
        cr_assert_eq(route_method_from_string("GETX"), ROUTE_M_OTHER);
        cr_assert_eq(route_method_from_string(""), ROUTE_M_OTHER);
        cr_assert_eq(route_method_from_string(NULL), ROUTE_M_OTHER);
}

Test(route, allowed_methods)
{
        const unsigned G = ROUTE_M_GET | ROUTE_M_HEAD;

        cr_assert_eq(route_allowed(ROUTE_NOT_FOUND), 0);
        cr_assert_eq(route_allowed(ROUTE_ACCOUNT), G | ROUTE_M_POST);
        cr_assert_eq(route_allowed(ROUTE_NAMESPACE), ROUTE_M_DELETE);
        cr_assert_eq(route_allowed(ROUTE_NS_PROPS), G | ROUTE_M_PATCH);
        cr_assert_eq(route_allowed(ROUTE_NS_PROP), G | ROUTE_M_PUT | ROUTE_M_DELETE);
        cr_assert_eq(route_allowed(ROUTE_SESSION_PROPS), G | ROUTE_M_PATCH | ROUTE_M_DELETE);
        cr_assert_eq(route_allowed(ROUTE_SESSION_PROP), G | ROUTE_M_PUT | ROUTE_M_DELETE);
        cr_assert_eq(route_allowed(ROUTE_SESSION_IDS), G);
        cr_assert_eq(route_allowed(ROUTE_SESSION_PROPERTIES), G);
        cr_assert_eq(route_allowed(ROUTE_SESSIONS), G | ROUTE_M_POST);
        cr_assert_eq(route_allowed(ROUTE_SESSION), ROUTE_M_DELETE);
        cr_assert_eq(route_allowed(ROUTE_HEALTHZ), G);
        cr_assert_eq(route_allowed(ROUTE_READYZ), G);
        cr_assert_eq(route_allowed(ROUTE_METRICS), G);
        cr_assert_eq(route_allowed(ROUTE__COUNT), 0);
        for (int r = 0; r < ROUTE__COUNT; r++) {
                unsigned a = route_allowed((enum route_resource)r);
                cr_assert_eq(a & ROUTE_M_OTHER, 0, "%s allows OTHER", route_resource_name(r));
                cr_assert_eq(!!(a & ROUTE_M_GET), !!(a & ROUTE_M_HEAD),
                             "%s: HEAD must be allowed exactly where GET is",
                             route_resource_name(r));
        }
}

Test(route, allow_header_matches_allowed_bits)
{
        static const struct {
                unsigned bit;
                const char *name;
        } order[] = {{ROUTE_M_GET, "GET"}, {ROUTE_M_HEAD, "HEAD"},   {ROUTE_M_POST, "POST"},
                     {ROUTE_M_PUT, "PUT"}, {ROUTE_M_PATCH, "PATCH"}, {ROUTE_M_DELETE, "DELETE"}};

        cr_assert_str_eq(route_allow_header(ROUTE_NS_PROPS), "GET, HEAD, PATCH");
        cr_assert_str_eq(route_allow_header(ROUTE_SESSION), "DELETE");
        cr_assert_str_eq(route_allow_header(ROUTE_NOT_FOUND), "");
        cr_assert_str_eq(route_allow_header(ROUTE__COUNT), "");
        for (int r = 0; r < ROUTE__COUNT; r++) {
                char want[128] = "";
                unsigned a = route_allowed((enum route_resource)r);

                for (size_t i = 0; i < sizeof(order) / sizeof(order[0]); i++)
                        if (a & order[i].bit) {
                                if (want[0])
                                        strcat(want, ", ");
                                strcat(want, order[i].name);
                        }
                cr_assert_str_eq(route_allow_header((enum route_resource)r), want,
                                 "Allow header of %s", route_resource_name(r));
        }
}

Test(route, resource_names_are_distinct)
{
        cr_assert_str_eq(route_resource_name(ROUTE_SESSION_PROP), "session_prop");
        cr_assert_str_eq(route_resource_name(ROUTE_NOT_FOUND), "not_found");
        cr_assert_str_eq(route_resource_name(ROUTE__COUNT), "unknown");
        for (int i = 0; i < ROUTE__COUNT; i++) {
                cr_assert_not_null(route_resource_name(i));
                for (int j = i + 1; j < ROUTE__COUNT; j++)
                        cr_assert_str_neq(route_resource_name(i), route_resource_name(j));
        }
}

Test(route, admin_dead_letters)
{
        struct route r;

        cr_assert_eq(route_parse("/admin/dead-letters", &r), 0);
        cr_assert_eq(r.resource, ROUTE_DEAD_LETTERS);
        cr_assert_null(r.id);
        cr_assert_null(r.account);
        cr_assert_eq(route_parse("/admin/dead-letters/", &r), 0);
        cr_assert_eq(r.resource, ROUTE_DEAD_LETTERS);
        cr_assert_eq(route_parse("/admin/dead-letters/42", &r), 0);
        cr_assert_eq(r.resource, ROUTE_DEAD_LETTER);
        cr_assert_str_eq(r.id, "42");
        cr_assert_eq(route_parse("/admin/dead-letters/42/redrive", &r), 0);
        cr_assert_eq(r.resource, ROUTE_DEAD_LETTER_REDRIVE);
        cr_assert_str_eq(r.id, "42");
        cr_assert_eq(route_parse("/admin/dead-letters/42/other", &r), 0);
        cr_assert_eq(r.resource, ROUTE_NOT_FOUND);
        cr_assert_null(r.id);
        cr_assert_eq(route_parse("/admin/dead-letters/42/redrive/x", &r), 0);
        cr_assert_eq(r.resource, ROUTE_NOT_FOUND);
        cr_assert_eq(route_parse("/admin", &r), 0);
        cr_assert_eq(r.resource, ROUTE_NOT_FOUND);
        cr_assert_eq(route_allowed(ROUTE_DEAD_LETTERS), ROUTE_M_GET | ROUTE_M_HEAD);
        cr_assert_eq(route_allowed(ROUTE_DEAD_LETTER), ROUTE_M_DELETE);
        cr_assert_eq(route_allowed(ROUTE_DEAD_LETTER_REDRIVE), ROUTE_M_POST);
}

/* POST /v1/account/{acct}/events is ingest, but "events" is also a namespace name like any
 * other: DELETE there must still delete it, and its deeper routes are untouched. */
Test(route, events_is_ingest_and_still_a_namespace)
{
        expect_route("/v1/account/a/events", ROUTE_EVENTS, "a", "events", NULL, NULL);
        expect_route("/v1/account/a/events/", ROUTE_EVENTS, "a", "events", NULL, NULL);
        cr_assert_eq(route_allowed(ROUTE_EVENTS), ROUTE_M_POST | ROUTE_M_DELETE);
        cr_assert_str_eq(route_allow_header(ROUTE_EVENTS), "POST, DELETE");
        cr_assert_str_eq(route_resource_name(ROUTE_EVENTS), "events");
        /* Only the exact segment: other namespaces stay namespaces. */
        expect_route("/v1/account/a/Events", ROUTE_NAMESPACE, "a", "Events", NULL, NULL);
        expect_route("/v1/account/a/events2", ROUTE_NAMESPACE, "a", "events2", NULL, NULL);
        expect_route("/v1/account/events", ROUTE_ACCOUNT, "events", NULL, NULL, NULL);
        expect_route("/v1/account/events/notes", ROUTE_NAMESPACE, "events", "notes", NULL, NULL);
        /* The namespace "events" keeps all of its routes. */
        expect_route("/v1/account/a/events/properties", ROUTE_NS_PROPS, "a", "events", NULL, NULL);
        expect_route("/v1/account/a/events/properties/p", ROUTE_NS_PROP, "a", "events", NULL, "p");
        expect_route("/v1/account/a/events/s1/properties", ROUTE_SESSION_PROPS, "a", "events", "s1",
                     NULL);
        expect_route("/v1/account/a/events/session-ids", ROUTE_SESSION_IDS, "a", "events", NULL,
                     NULL);
        expect_route("/v1/account/a/namespace/events/session", ROUTE_SESSIONS, "a", "events", NULL,
                     NULL);
        expect_not_found("/v1/account/a/events/x");
        expect_not_found("/v1/events");
}
