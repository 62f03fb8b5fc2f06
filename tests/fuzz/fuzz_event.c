/* libFuzzer harness of the event parser and normaliser (event.h) and of the way replay logs
 * reach it (replay.h): the whole input is one message, and the input read as a replay log
 * (lines, each a plain event or a kcat -J envelope whose payload is the event) gives more.
 * Beyond "no crash, no leak" it checks what callers rely on: every accepted event has a known
 * kind, an account that passes the account rule, a conversation id without control characters
 * within its limit, a raw JSON object and a distinct id; every refusal is -EINVAL/-E2BIG with
 * a one-line UTF-8 reason; a default account only ever fills in (a message that parses without
 * one parses the same with one); where a message came from (its source id) never decides
 * whether it parses; and the line reader hands back exactly the bytes of each line. */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ctxhookd/event.h"
#include "ctxhookd/names.h"
#include "ctxhookd/replay.h"
#include "fuzz.h"

#define MAX_BYTES       8192 /* larger inputs reach the E2BIG refusal */
#define LINE_MAX_BYTES  1024 /* longer lines reach the reader's "too long" answer */
#define NOW_MS          1764400000000LL
#define DEFAULT_ACCOUNT "12345678"
#define SOURCE          "conversation-events/0/42"

static bool has_control(const char *s, size_t len)
{
        for (size_t i = 0; i < len; i++)
                if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
                        return true;
        return false;
}

static void check_refusal(int r, const struct ch_error *err, const char *what)
{
        size_t len = strnlen(err->msg, sizeof(err->msg));

        FUZZ_CHECK(r == -EINVAL || r == -E2BIG || r == -ENOMEM, "%s: event_parse returned %d", what,
                   r);
        FUZZ_CHECK(len > 0 && len < sizeof(err->msg), "%s: refusal %d without a reason", what, r);
        FUZZ_CHECK(!has_control(err->msg, len) && names_utf8_valid(err->msg, len),
                   "%s: reason is not one line of UTF-8: %s", what, err->msg);
}

static void check_event(const struct event *e, const char *source_id, const char *what)
{
        size_t conv = strnlen(e->conversation, sizeof(e->conversation));
        size_t reason = strnlen(e->close_reason, sizeof(e->close_reason));
        size_t id = strnlen(e->id, sizeof(e->id));
        struct ch_error why;

        FUZZ_CHECK(e->kind != 0 && (e->kind & EVENT_KIND_ALL) == (unsigned)e->kind &&
                       strcmp(event_kind_name(e->kind), "unknown") != 0,
                   "%s: kind %#x is not one known kind", what, (unsigned)e->kind);
        FUZZ_CHECK(event_kind_from_string(event_kind_name(e->kind)) == e->kind,
                   "%s: kind name does not map back", what);
        /* The id is the source id, or for one too long, its first 200-odd bytes and a hash. */
        FUZZ_CHECK(
            id > 0 && id <= EVENT_ID_MAX &&
                strncmp(e->id, source_id, strlen(source_id) < 200 ? strlen(source_id) : 200) == 0,
            "%s: id '%s' does not start with the source id '%s'", what, e->id, source_id);
        FUZZ_CHECK(names_check_account(e->account, &why) == 0, "%s: account '%s' refused: %s", what,
                   e->account, why.msg);
        FUZZ_CHECK(conv > 0 && conv <= EVENT_CONVERSATION_MAX, "%s: conversation id of %zu bytes",
                   what, conv);
        FUZZ_CHECK(!has_control(e->conversation, conv) && names_utf8_valid(e->conversation, conv),
                   "%s: conversation id with control characters or bad UTF-8", what);
        FUZZ_CHECK(reason <= EVENT_REASON_MAX && !has_control(e->close_reason, reason) &&
                       names_utf8_valid(e->close_reason, reason),
                   "%s: bad close reason", what);
        FUZZ_CHECK(e->time_ms >= 0, "%s: negative time %lld", what, (long long)e->time_ms);
        FUZZ_CHECK(json_is_object(e->raw), "%s: raw is not a JSON object", what);
}

static void check_batch(const struct event_batch *b, const char *source_id, const char *what)
{
        FUZZ_CHECK(b->n >= 1 && b->n <= EVENT_CHANGES_MAX && b->events,
                   "%s: accepted with %zu events", what, b->n);
        for (size_t i = 0; i < b->n; i++) {
                check_event(&b->events[i], source_id, what);
                for (size_t j = 0; j < i; j++)
                        FUZZ_CHECK(strcmp(b->events[i].id, b->events[j].id) != 0,
                                   "%s: events %zu and %zu share the id '%s'", what, j, i,
                                   b->events[i].id);
        }
}

/* Same events apart from their ids (which carry the source id). */
static bool same_events(const struct event_batch *a, const struct event_batch *b)
{
        if (a->n != b->n)
                return false;
        for (size_t i = 0; i < a->n; i++) {
                const struct event *x = &a->events[i], *y = &b->events[i];

                if (x->kind != y->kind || x->time_ms != y->time_ms ||
                    strcmp(x->account, y->account) != 0 ||
                    strcmp(x->conversation, y->conversation) != 0 ||
                    strcmp(x->close_reason, y->close_reason) != 0 || !json_equal(x->raw, y->raw))
                        return false;
        }
        return true;
}

/* One message, parsed the ways the pipeline may see it; returns whether it was accepted. */
static bool parse_message(const char *data, size_t len, const char *source_id, const char *what)
{
        struct event_batch with = {NULL, 0}, without = {NULL, 0}, other = {NULL, 0};
        struct ch_error err = {{0}};
        int r, r_without, r_other;

        r = event_parse(data, len, MAX_BYTES, source_id, DEFAULT_ACCOUNT, NOW_MS, &with, &err);
        if (r < 0)
                check_refusal(r, &err, what);
        else
                check_batch(&with, source_id, what);

        memset(&err, 0, sizeof(err));
        r_without = event_parse(data, len, MAX_BYTES, source_id, NULL, NOW_MS, &without, &err);
        if (r_without < 0) {
                check_refusal(r_without, &err, what);
        } else {
                check_batch(&without, source_id, what);
                /* Events that carry their own account do not care about the default. */
                FUZZ_CHECK(r == 0 && same_events(&with, &without),
                           "%s: accepted without a default account but not the same with one",
                           what);
        }

        /* The source id only names the message: a short one must give the same verdict. */
        memset(&err, 0, sizeof(err));
        r_other = event_parse(data, len, MAX_BYTES, "s", DEFAULT_ACCOUNT, NOW_MS, &other, &err);
        FUZZ_CHECK((r_other == 0) == (r == 0),
                   "%s: the source id '%.80s…' (%zu bytes) decides the verdict: %d vs %d (%s)",
                   what, source_id, strlen(source_id), r, r_other, err.msg);
        if (r == 0)
                FUZZ_CHECK(same_events(&with, &other), "%s: the source id changes the events",
                           what);

        event_batch_free(&with);
        event_batch_free(&without);
        event_batch_free(&other);
        FUZZ_CHECK(with.n == 0 && with.events == NULL, "event_batch_free left a batch behind");
        return r == 0;
}

/* A replay log line: a kcat -J envelope's payload, else the line itself. */
static void parse_line(const char *line, size_t len, unsigned long lineno)
{
        char *payload = NULL, *kafka_source = NULL;
        char source[64];
        size_t payload_len = 0;
        int r;

        snprintf(source, sizeof(source), "replay:fuzz.jsonl:%lu", lineno);
        r = replay_envelope(line, len, &payload, &payload_len, &kafka_source);
        FUZZ_CHECK(r == 0 || r == 1 || r == -ENOMEM, "replay_envelope returned %d", r);
        if (r != 1) {
                parse_message(line, len, source, "replay line");
                return;
        }
        FUZZ_CHECK(payload && payload[payload_len] == '\0', "envelope payload not terminated");
        FUZZ_CHECK(!kafka_source || strncmp(kafka_source, "kafka:", 6) == 0, "envelope source '%s'",
                   kafka_source);
        parse_message(payload, payload_len, kafka_source ? kafka_source : source,
                      "kcat envelope payload");
        free(payload);
        free(kafka_source);
}

/* The input as a replay log: every line's bytes must be the input's, in order, with "\n" or
 * "\r\n" between them. */
static void replay_log(const uint8_t *data, size_t size)
{
        struct replay_reader *rd = NULL;
        unsigned long lineno, expect_lineno = 0;
        size_t off = 0;
        FILE *f;
        int r;

        if (size == 0)
                return;
        f = fmemopen((void *)data, size, "r");
        FUZZ_CHECK(f, "fmemopen failed");
        r = replay_reader_new(f, LINE_MAX_BYTES, &rd);
        FUZZ_CHECK(r == 0, "replay_reader_new: %d", r);
        for (;;) {
                const char *line;
                size_t len;

                r = replay_reader_next(rd, &line, &len, &lineno);
                FUZZ_CHECK(r == 0 || r == 1, "replay_reader_next: %d", r);
                if (r == 0)
                        break;
                FUZZ_CHECK(lineno == ++expect_lineno, "line number %lu, expected %lu", lineno,
                           expect_lineno);
                FUZZ_CHECK(off + len <= size, "line %lu of %zu bytes runs past the input", lineno,
                           len);
                if (line) {
                        FUZZ_CHECK(len <= LINE_MAX_BYTES && line[len] == '\0' &&
                                       memcmp(line, data + off, len) == 0,
                                   "line %lu is not the input's bytes", lineno);
                        parse_line(line, len, lineno);
                } else {
                        FUZZ_CHECK(len > LINE_MAX_BYTES, "line %lu of %zu bytes refused", lineno,
                                   len);
                }
                off += len;
                if (off < size && data[off] == '\r' && (off + 1 == size || data[off + 1] == '\n'))
                        off++;
                FUZZ_CHECK(off == size || data[off] == '\n',
                           "line %lu does not end at a line break (offset %zu)", lineno, off);
                if (off < size)
                        off++;
        }
        FUZZ_CHECK(off == size, "the reader stopped at %zu of %zu bytes", off, size);
        replay_reader_free(rd);
        fclose(f);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        parse_message((const char *)data, size, SOURCE, "message");
        replay_log(data, size);
        return 0;
}
