/* Unit tests of the store-free parts of replay (daemon/replay.c): the bounded line reader
 * (CRLF, empty lines, a missing final newline, lines over the limit, lines across the read
 * buffer), kcat -J envelope detection, and the comparison of deliveries with a golden file
 * (equal despite timestamps, missing, extra, changed with the JSON path named, repeated keys,
 * and golden files that are not deliveries). */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ctxhookd/cleanup.h"
#include "ctxhookd/replay.h"

/* ---- reader ---- */

struct line {
        const char *text; /* NULL: over the limit */
        size_t len;
        unsigned long lineno;
};

/* Reads all of text with limit max and checks the lines against want[0..n). */
static void check_lines(const char *text, size_t text_len, size_t max, const struct line *want,
                        size_t n)
{
        FILE *f = fmemopen((void *)text, text_len, "r");
        struct replay_reader *r = NULL;
        const char *line;
        size_t len, i = 0;
        unsigned long lineno;
        int rc;

        cr_assert_not_null(f);
        cr_assert_eq(replay_reader_new(f, max, &r), 0);
        while ((rc = replay_reader_next(r, &line, &len, &lineno)) == 1) {
                cr_assert_lt(i, n, "more lines than expected: '%s'", line ? line : "(long)");
                cr_assert_eq(lineno, want[i].lineno, "line %zu numbered %lu", i, lineno);
                cr_assert_eq(len, want[i].len, "line %lu: length %zu, want %zu", lineno, len,
                             want[i].len);
                if (!want[i].text) {
                        cr_assert_null(line, "line %lu over the limit was returned", lineno);
                } else {
                        cr_assert_not_null(line, "line %lu taken as over the limit", lineno);
                        cr_assert_eq(memcmp(line, want[i].text, len), 0, "line %lu: '%s'", lineno,
                                     line);
                        cr_assert_eq(line[len], '\0', "line %lu not NUL-terminated", lineno);
                }
                i++;
        }
        cr_assert_eq(rc, 0, "reader failed: %d", rc);
        cr_assert_eq(i, n, "%zu lines, want %zu", i, n);
        cr_assert_eq(replay_reader_next(r, &line, &len, &lineno), 0, "EOF not sticky");
        replay_reader_free(r);
        fclose(f);
}

Test(reader, crlf_empty_and_no_final_newline)
{
        static const char text[] = "a\r\nbb\n\n\r\nccc";
        const struct line want[] = {
            {"a", 1, 1}, {"bb", 2, 2}, {"", 0, 3}, {"", 0, 4}, {"ccc", 3, 5},
        };

        check_lines(text, sizeof(text) - 1, 16, want, 5);
}

Test(reader, only_a_carriage_return_at_the_end_is_stripped)
{
        static const char text[] = "x\ry\r\n\rz\n";
        const struct line want[] = {{"x\ry", 3, 1}, {"\rz", 2, 2}};

        check_lines(text, sizeof(text) - 1, 16, want, 2);
}

Test(reader, lines_over_the_limit_are_reported_and_skipped)
{
        /* max 8: exactly 8 is kept (also with CRLF), 9 is not; the reader goes on after. */
        static const char text[] = "12345678\n123456789\nok\n12345678\r\n0123456789abcdef\r\nend";
        const struct line want[] = {
            {"12345678", 8, 1}, {NULL, 9, 2},  {"ok", 2, 3},
            {"12345678", 8, 4}, {NULL, 16, 5}, {"end", 3, 6},
        };

        check_lines(text, sizeof(text) - 1, 8, want, 6);
}

Test(reader, lines_across_the_read_buffer)
{
        /* 200 kB lines cross the 64 kB read buffer several times. */
        size_t big = 200000, total = 3 * big + 16;
        _cleanup_free_ char *text = malloc(total), *a = malloc(big), *b = malloc(big);
        struct line want[3];
        size_t k = 0;

        cr_assert(text && a && b);
        for (size_t i = 0; i < big; i++) {
                a[i] = (char)('a' + i % 26);
                b[i] = (char)('0' + i % 10);
        }
        memcpy(text + k, a, big);
        k += big;
        text[k++] = '\n';
        memcpy(text + k, b, big);
        k += big;
        text[k++] = '\n';
        memcpy(text + k, a, big - 1); /* one byte over with max = big - 2 … */
        k += big - 1;
        text[k++] = '\n';
        want[0] = (struct line){a, big, 1};
        want[1] = (struct line){b, big, 2};
        want[2] = (struct line){a, big - 1, 3};
        check_lines(text, k, big, want, 3);
        /* … and over the limit: */
        want[0] = (struct line){NULL, big, 1};
        want[1] = (struct line){NULL, big, 2};
        want[2] = (struct line){a, big - 1, 3};
        check_lines(text, k, big - 1, want, 3);
}

Test(reader, empty_input)
{
        check_lines("", 0, 8, NULL, 0);
}

/* ---- envelopes ---- */

Test(envelope, kcat_record)
{
        static const char line[] =
            "{\"topic\": \"conversation-events\", \"partition\": 3, \"offset\": 42, \"tstype\": "
            "\"create\", \"ts\": 1, \"broker\": 1, \"key\": \"k\", \"payload\": "
            "\"{\\\"kind\\\":\\\"conversation.end\\\"}\"}";
        _cleanup_free_ char *payload = NULL, *source = NULL;
        size_t len = 0;

        cr_assert_eq(replay_envelope(line, sizeof(line) - 1, &payload, &len, &source), 1);
        cr_assert_str_eq(payload, "{\"kind\":\"conversation.end\"}");
        cr_assert_eq(len, strlen(payload));
        cr_assert_str_eq(source, "kafka:conversation-events/3/42");
}

Test(envelope, payload_with_nul_keeps_its_length)
{
        static const char line[] = "{\"topic\":\"t\",\"partition\":0,\"offset\":1,"
                                   "\"payload\":\"a\\u0000b\"}";
        _cleanup_free_ char *payload = NULL, *source = NULL;
        size_t len = 0;

        cr_assert_eq(replay_envelope(line, sizeof(line) - 1, &payload, &len, &source), 1);
        cr_assert_eq(len, 3);
        cr_assert_eq(memcmp(payload, "a\0b", 3), 0);
}

Test(envelope, partial_envelope_has_no_kafka_source)
{
        static const char line[] = "{\"topic\":\"t\",\"payload\":\"{}\"}";
        _cleanup_free_ char *payload = NULL;
        char *source = (char *)"untouched";
        size_t len = 0;

        cr_assert_eq(replay_envelope(line, sizeof(line) - 1, &payload, &len, &source), 1);
        cr_assert_str_eq(payload, "{}");
        cr_assert_null(source, "no partition/offset, yet a kafka source '%s'", source);
}

Test(envelope, null_payload_is_an_empty_message)
{
        static const char line[] =
            "{\"topic\":\"t\",\"partition\":0,\"offset\":9,\"payload\":null}";
        _cleanup_free_ char *payload = NULL, *source = NULL;
        size_t len = 7;

        cr_assert_eq(replay_envelope(line, sizeof(line) - 1, &payload, &len, &source), 1);
        cr_assert_eq(len, 0);
        cr_assert_str_eq(payload, "");
        cr_assert_str_eq(source, "kafka:t/0/9");
}

Test(envelope, events_are_not_envelopes)
{
        static const char *const lines[] = {
            /* plain event */
            "{\"kind\":\"conversation.end\",\"accountId\":\"1\",\"conversationId\":\"c\"}",
            /* a payload that is an object (a Functions invocation), not a string */
            "{\"topic\":\"t\",\"partition\":0,\"offset\":1,\"payload\":{\"general\":{}}}",
            /* a string payload without any Kafka coordinate */
            "{\"payload\":\"{}\",\"kind\":\"conversation.end\"}",
            /* not JSON, not an object */
            "{\"payload\": oops",
            "[\"payload\", \"topic\"]",
        };

        for (size_t i = 0; i < sizeof(lines) / sizeof(lines[0]); i++) {
                char *payload = NULL, *source = NULL;
                size_t len = 0;

                cr_assert_eq(replay_envelope(lines[i], strlen(lines[i]), &payload, &len, &source),
                             0, "taken as an envelope: %s", lines[i]);
                cr_assert_null(payload);
        }
}

/* ---- comparison ---- */

static const char d1[] =
    "{\"hook\":\"ends\",\"url\":\"http://h/x\",\"body\":{\"timestamp\":1,\"headers\":[],"
    "\"payload\":{\"hook\":\"ends\",\"event\":{\"id\":\"replay:a:1\",\"conversationId\":\"c1\"},"
    "\"raw\":{\"x\":1},\"context\":{\"notes\":{\"namespace\":{},\"session\":{\"n\":\"a\"}}}}}}";
static const char d2[] =
    "{\"hook\":\"ends\",\"url\":\"http://h/x\",\"body\":{\"timestamp\":2,\"headers\":[],"
    "\"payload\":{\"hook\":\"ends\",\"event\":{\"id\":\"replay:a:2\",\"conversationId\":\"c2\"},"
    "\"raw\":{\"x\":2},\"context\":{}}}}";
static const char d3[] =
    "{\"hook\":\"other\",\"url\":\"http://h/y\",\"body\":{\"timestamp\":3,\"headers\":[],"
    "\"payload\":{\"hook\":\"other\",\"event\":{\"id\":\"replay:a:1\",\"conversationId\":\"c1\"},"
    "\"raw\":{\"x\":1},\"context\":{}}}}";

struct seen {
        size_t n;
        struct {
                enum replay_diff_kind kind;
                char hook[32], conv[32], id[32], path[128];
        } d[32];
};

static void record(const struct replay_diff *d, void *userdata)
{
        struct seen *s = userdata;

        cr_assert_lt(s->n, 32);
        s->d[s->n].kind = d->kind;
        snprintf(s->d[s->n].hook, sizeof(s->d[0].hook), "%s", d->hook);
        snprintf(s->d[s->n].conv, sizeof(s->d[0].conv), "%s", d->conversation);
        snprintf(s->d[s->n].id, sizeof(s->d[0].id), "%s", d->event_id);
        snprintf(s->d[s->n].path, sizeof(s->d[0].path), "%s", d->path ? d->path : "");
        s->n++;
}

/* A set from JSON texts; each may be edited by a jansson path replacement before adding. */
static struct replay_set *set_of(const char *const *texts, size_t n)
{
        struct replay_set *s = NULL;

        cr_assert_eq(replay_set_new(&s), 0);
        for (size_t i = 0; i < n; i++) {
                json_error_t e;
                json_t *j = json_loads(texts[i], 0, &e);

                cr_assert_not_null(j, "bad test JSON: %s: %s", e.text, texts[i]);
                cr_assert_eq(replay_set_add(s, j), 0);
                json_decref(j);
        }
        return s;
}

static struct seen compare(struct replay_set *expected, struct replay_set *got)
{
        struct seen s = {0};
        size_t n = 99;

        cr_assert_eq(replay_compare(expected, got, record, &s, &n), 0);
        cr_assert_eq(n, s.n, "count %zu but %zu reported", n, s.n);
        replay_set_free(expected);
        replay_set_free(got);
        return s;
}

/* d with body.timestamp set to ts (a new string). */
static char *with(const char *d, const char *from, const char *to)
{
        const char *p = strstr(d, from);
        char *out = NULL;

        cr_assert_not_null(p, "'%s' not in %s", from, d);
        cr_assert_gt(asprintf(&out, "%.*s%s%s", (int)(p - d), d, to, p + strlen(from)), 0);
        return out;
}

Test(compare, equal_despite_timestamps_and_order)
{
        _cleanup_free_ char *d1t = with(d1, "\"timestamp\":1", "\"timestamp\":1795998000000");
        const char *const want[] = {d1, d2, d3};
        const char *const got[] = {d3, d2, d1t};
        struct seen s = compare(set_of(want, 3), set_of(got, 3));

        cr_assert_eq(s.n, 0, "difference reported: %s %s", s.d[0].hook, s.d[0].path);
}

Test(compare, missing_and_extra_name_hook_and_conversation)
{
        const char *const want[] = {d1, d2};
        const char *const got[] = {d2, d3};
        struct seen s = compare(set_of(want, 2), set_of(got, 2));

        cr_assert_eq(s.n, 2);
        cr_assert_eq(s.d[0].kind, REPLAY_MISSING);
        cr_assert_str_eq(s.d[0].hook, "ends");
        cr_assert_str_eq(s.d[0].conv, "c1");
        cr_assert_str_eq(s.d[0].id, "replay:a:1");
        cr_assert_eq(s.d[1].kind, REPLAY_EXTRA);
        cr_assert_str_eq(s.d[1].hook, "other");
        cr_assert_str_eq(s.d[1].conv, "c1");
}

Test(compare, changed_names_every_path)
{
        _cleanup_free_ char *a = with(d1, "\"n\":\"a\"", "\"n\":\"b\"");
        _cleanup_free_ char *b = with(a, "\"url\":\"http://h/x\"", "\"url\":\"http://h/z\"");
        _cleanup_free_ char *c = with(b, "\"raw\":{\"x\":1}", "\"raw\":{\"x\":1,\"y\":[1]}");
        _cleanup_free_ char *e = with(c, "\"headers\":[]", "\"headers\":[\"h\"]");
        const char *const want[] = {d1, d2};
        const char *const got[] = {e, d2};
        struct seen s = compare(set_of(want, 2), set_of(got, 2));

        cr_assert_eq(s.n, 4, "%zu differences", s.n);
        for (size_t i = 0; i < s.n; i++) {
                cr_assert_eq(s.d[i].kind, REPLAY_CHANGED);
                cr_assert_str_eq(s.d[i].hook, "ends");
                cr_assert_str_eq(s.d[i].conv, "c1");
        }
        cr_assert_str_eq(s.d[0].path, "url");
        cr_assert_str_eq(s.d[1].path, "body.headers");
        cr_assert_str_eq(s.d[2].path, "body.payload.raw.y");
        cr_assert_str_eq(s.d[3].path, "body.payload.context.notes.session.n");
}

Test(compare, type_change_and_array_element)
{
        _cleanup_free_ char *a = with(d2, "\"raw\":{\"x\":2}", "\"raw\":{\"x\":\"2\"}");
        _cleanup_free_ char *b = with(d2, "\"headers\":[]", "\"headers\":[1,2]");
        _cleanup_free_ char *c = with(d2, "\"headers\":[]", "\"headers\":[1,3]");
        const char *const w1[] = {d2};
        const char *const g1[] = {a};
        const char *const w2[] = {b};
        const char *const g2[] = {c};
        struct seen s = compare(set_of(w1, 1), set_of(g1, 1));

        cr_assert_eq(s.n, 1);
        cr_assert_str_eq(s.d[0].path, "body.payload.raw.x");
        s = compare(set_of(w2, 1), set_of(g2, 1));
        cr_assert_eq(s.n, 1);
        cr_assert_str_eq(s.d[0].path, "body.headers[1]");
}

Test(compare, a_repeated_delivery_counts)
{
        /* The same log replayed twice in one run makes every delivery twice. */
        const char *const want[] = {d1, d1, d2};
        const char *const got[] = {d1, d2, d2};
        struct seen s = compare(set_of(want, 3), set_of(got, 3));

        cr_assert_eq(s.n, 2);
        cr_assert_eq(s.d[0].kind, REPLAY_MISSING);
        cr_assert_str_eq(s.d[0].conv, "c1");
        cr_assert_eq(s.d[1].kind, REPLAY_EXTRA);
        cr_assert_str_eq(s.d[1].conv, "c2");
}

Test(compare, timestamp_elsewhere_is_compared)
{
        /* Only body.timestamp is ignored, not a "timestamp" inside the event. */
        _cleanup_free_ char *a = with(d2, "\"raw\":{\"x\":2}", "\"raw\":{\"timestamp\":1}");
        _cleanup_free_ char *b = with(d2, "\"raw\":{\"x\":2}", "\"raw\":{\"timestamp\":2}");
        const char *const want[] = {a};
        const char *const got[] = {b};
        struct seen s = compare(set_of(want, 1), set_of(got, 1));

        cr_assert_eq(s.n, 1);
        cr_assert_str_eq(s.d[0].path, "body.payload.raw.timestamp");
}

Test(compare, golden_file_load)
{
        _cleanup_free_ char *text = NULL;
        struct replay_set *s = NULL;
        struct ch_error err = {{0}};
        FILE *f;

        cr_assert_gt(asprintf(&text, "%s\n\n%s\r\n%s", d1, d2, d3), 0);
        f = fmemopen(text, strlen(text), "r");
        cr_assert_eq(replay_set_load(f, "golden", &s, &err), 0, "%s", err.msg);
        fclose(f);
        cr_assert_eq(replay_set_size(s), 3);
        replay_set_free(s);

        free(text);
        cr_assert_gt(asprintf(&text, "%s\n{\"hook\":\"x\",\"body\":{}}\n", d1), 0);
        f = fmemopen(text, strlen(text), "r");
        cr_assert_eq(replay_set_load(f, "golden", &s, &err), -EINVAL);
        fclose(f);
        cr_assert(strstr(err.msg, "golden:2:"), "line not named: %s", err.msg);

        f = fmemopen((void *)"{\"hook\":\n", 9, "r");
        cr_assert_eq(replay_set_load(f, "g2", &s, &err), -EINVAL);
        fclose(f);
        cr_assert(strstr(err.msg, "g2:1: not JSON"), "%s", err.msg);
}
