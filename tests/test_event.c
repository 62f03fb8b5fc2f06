/* Unit tests of event parsing and normalisation: every line of the shared samples, and the
 * messages that break naive parsers (several changes, broken UTF-8, wrong types deep inside,
 * NUL inside strings, duplicate keys, limits ±1). Each accepted message is checked field by
 * field, raw JSON included; each refused one by its code and the field path in its reason. */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ctxhookd/event.h"
#include "ctxhookd/names.h"

#define NOW     1700000000000LL
#define MAX     (1024 * 1024)
#define DEFAULT "dflt.acct-1"

struct want {
        enum event_kind kind;
        const char *id;
        const char *account;
        const char *conversation;
        const char *reason;
        int64_t time_ms;
};

static void check_event(const struct event *e, const struct want *w)
{
        cr_assert_eq(e->kind, w->kind, "%s: kind %s, want %s", w->id, event_kind_name(e->kind),
                     event_kind_name(w->kind));
        cr_assert_str_eq(e->id, w->id);
        cr_assert_str_eq(e->account, w->account, "%s", w->id);
        cr_assert_str_eq(e->conversation, w->conversation, "%s", w->id);
        cr_assert_str_eq(e->close_reason, w->reason, "%s", w->id);
        cr_assert_eq(e->time_ms, w->time_ms, "%s: time %lld, want %lld", w->id,
                     (long long)e->time_ms, (long long)w->time_ms);
        cr_assert_not_null(e->raw);
}

/* raw must be exactly expected_json (as a value, so key order and spacing do not matter). */
static void check_raw(const struct event *e, const char *expected_json)
{
        json_error_t jerr;
        json_t *want = json_loads(expected_json, JSON_ALLOW_NUL, &jerr);

        cr_assert_not_null(want, "test bug: %s", jerr.text);
        cr_assert(json_equal(e->raw, want), "raw of %s differs", e->id);
        json_decref(want);
}

static struct event_batch parse_ok_len(const char *data, size_t len, const char *source,
                                       const char *default_account)
{
        struct event_batch b = {NULL, 0};
        struct ch_error err = {{0}};
        int r = event_parse(data, len, MAX, source, default_account, NOW, &b, &err);

        cr_assert_eq(r, 0, "event_parse failed (%d): %s", r, err.msg);
        cr_assert_geq(b.n, 1);
        cr_assert_not_null(b.events);
        return b;
}

static struct event_batch parse_ok(const char *json, const char *default_account)
{
        return parse_ok_len(json, strlen(json), "src/0/1", default_account);
}

/* The message must be refused with code, the reason must contain every fragment, and the
 * batch must be left untouched. Returns nothing: the reason is checked here. */
static void parse_fail_len(const char *data, size_t len, const char *default_account, int code,
                           const char *fragment)
{
        struct event sentinel;
        struct event_batch b = {&sentinel, 77};
        struct ch_error err = {{0}};
        int r = event_parse(data, len, MAX, "src/0/1", default_account, NOW, &b, &err);

        cr_assert_eq(r, code, "want %d, got %d (%s)", code, r, err.msg);
        cr_assert(b.events == &sentinel && b.n == 77, "batch written on failure");
        cr_assert(strstr(err.msg, fragment), "reason '%s' lacks '%s'", err.msg, fragment);
        /* The reason is logged and served as JSON: one line of valid UTF-8. */
        cr_assert(names_utf8_valid(err.msg, strlen(err.msg)), "reason not UTF-8: %s", err.msg);
        for (const char *p = err.msg; *p; p++)
                cr_assert((unsigned char)*p >= 0x20 && *p != 0x7f, "control char in reason");
}

static void parse_fail(const char *json, const char *default_account, const char *fragment)
{
        parse_fail_len(json, strlen(json), default_account, -EINVAL, fragment);
}

/* ---- the shared samples ---- */

static char *source_path(const char *rel)
{
        const char *src = getenv("CTXHOOKD_SOURCE_DIR");
        char *path = NULL;

        if (src) {
                cr_assert_geq(asprintf(&path, "%s/%s", src, rel), 0);
        } else {
                /* Run by hand: __FILE__ is the path the compiler was given (absolute, or relative
                 * to a build directory inside the tree). */
                const char *slash = strrchr(__FILE__, '/');

                cr_assert_not_null(slash, "set CTXHOOKD_SOURCE_DIR");
                cr_assert_geq(asprintf(&path, "%.*s/../%s", (int)(slash - __FILE__), __FILE__, rel),
                              0);
        }
        return path;
}

/* What each line of sample.jsonl becomes (data/events/README.md): Functions payloads carry no
 * account, so they take the default one. */
static void check_sample_line(size_t index, const char *line, size_t len)
{
        struct event_batch b;
        char src[32];

        snprintf(src, sizeof(src), "conversation-events/0/%zu", index);
        if (index == 3) {
                parse_fail_len(line, len, DEFAULT, -EINVAL, "not valid JSON");
                return;
        }
        b = parse_ok_len(line, len, src, DEFAULT);
        switch (index) {
        case 0:
                cr_assert_eq(b.n, 1);
                check_event(&b.events[0], &(struct want){EVENT_END, src, DEFAULT, "sample-conv-1",
                                                         "SYSTEM", 1764400000201});
                break;
        case 1:
                cr_assert_eq(b.n, 1);
                check_event(&b.events[0], &(struct want){EVENT_END, src, DEFAULT, "sample-conv-2",
                                                         "AGENT", 1764400000202});
                break;
        case 2:
                cr_assert_eq(b.n, 1);
                check_event(&b.events[0], &(struct want){EVENT_IDLE, src, DEFAULT, "sample-conv-3",
                                                         "", 1764400000203});
                break;
        case 4: {
                json_t *root = json_loadb(line, len, 0, NULL);
                json_t *changes = json_object_get(json_object_get(root, "body"), "changes");
                char id1[40];

                snprintf(id1, sizeof(id1), "%s#1", src);
                cr_assert_eq(b.n, 2);
                check_event(&b.events[0],
                            &(struct want){EVENT_END, src, "12345678", "sample-conv-4", "TIMEOUT",
                                           1764400005000});
                check_event(&b.events[1], &(struct want){EVENT_NEW, id1, "12345678",
                                                         "sample-conv-5", "", 1764400000000});
                /* raw is the whole change, "type":"UPSERT" included, not only its result. */
                cr_assert(json_equal(b.events[0].raw, json_array_get(changes, 0)));
                cr_assert(json_equal(b.events[1].raw, json_array_get(changes, 1)));
                cr_assert_str_eq(json_string_value(json_object_get(b.events[0].raw, "type")),
                                 "UPSERT");
                json_decref(root);
                event_batch_free(&b);
                return;
        }
        case 5:
                cr_assert_eq(b.n, 1);
                check_event(&b.events[0], &(struct want){EVENT_END, src, "12345678",
                                                         "sample-conv-6", "SYSTEM", 1764400000006});
                break;
        default:
                cr_assert_fail("sample.jsonl has an unexpected line %zu", index);
        }
        /* The whole message is the raw JSON of the one event. */
        {
                json_t *root = json_loadb(line, len, 0, NULL);

                cr_assert(json_equal(b.events[0].raw, root));
                json_decref(root);
        }
        event_batch_free(&b);
}

static void check_sample_file(const char *path)
{
        FILE *f = fopen(path, "r");
        char *line = NULL;
        size_t cap = 0, index = 0;
        ssize_t n;

        cr_assert_not_null(f, "cannot open %s", path);
        while ((n = getline(&line, &cap, f)) > 0) {
                if (line[n - 1] == '\n')
                        n--;
                check_sample_line(index++, line, (size_t)n);
        }
        free(line);
        fclose(f);
        cr_assert_eq(index, 6, "%s: %zu lines, want 6", path, index);
}

Test(event_samples, own_copy)
{
        char *path = source_path("tests/data/events/sample.jsonl");

        check_sample_file(path);
        free(path);
}

Test(event_samples, shared_file_when_present)
{
        char *path = source_path("../shared/data/events/sample.jsonl");

        if (access(path, R_OK) != 0) {
                free(path);
                cr_skip_test("../shared/data/events/sample.jsonl is not beside the tree; the "
                             "copy in tests/data/events is tested instead");
        }
        check_sample_file(path);
        free(path);
}

/* ---- kinds ---- */

Test(event_kind, names_round_trip)
{
        static const char *const names[] = {"conversation.end",          "conversation.idle",
                                            "conversation.new",          "conversation.routing",
                                            "conversation.participants", "conversation.ttr"};
        static const enum event_kind kinds[] = {EVENT_END,     EVENT_IDLE,         EVENT_NEW,
                                                EVENT_ROUTING, EVENT_PARTICIPANTS, EVENT_TTR};
        unsigned all = 0;

        for (size_t i = 0; i < 6; i++) {
                cr_assert_eq(event_kind_from_string(names[i]), kinds[i], "%s", names[i]);
                cr_assert_str_eq(event_kind_name(kinds[i]), names[i]);
                all |= kinds[i];
        }
        cr_assert_eq(all, EVENT_KIND_ALL);
        cr_assert_eq(event_kind_from_string("conversation.END"), 0);
        cr_assert_eq(event_kind_from_string("conversation.end "), 0);
        cr_assert_eq(event_kind_from_string(""), 0);
        cr_assert_eq(event_kind_from_string(NULL), 0);
        cr_assert_str_eq(event_kind_name(0), "unknown");
        cr_assert_str_eq(event_kind_name(EVENT_END | EVENT_IDLE), "unknown");
        cr_assert_str_eq(event_kind_name(1 << 6), "unknown");
}

/* LivePerson's documented cbotEventType values, each with the Functions trigger it maps to. */
Test(event_functions, every_documented_cbot_event_type)
{
        static const struct {
                const char *type;
                enum event_kind kind;
        } table[] = {
            {"CONSUMER_OPEN_NEW_CONVERSATION_FIRST_TIME_OFF_HOURS", EVENT_NEW},
            {"CONSUMER_OPEN_NEW_CONVERSATION_OFF_HOURS", EVENT_NEW},
            {"CONSUMER_OPEN_NEW_CONVERSATION_FIRST_TIME", EVENT_NEW},
            {"CONSUMER_OPEN_NEW_CONVERSATION", EVENT_NEW},
            {"CONSUMER_OPEN_NEW_CONVERSATION_AFTER_AUTOCLOSE", EVENT_NEW},
            {"AGENT_END_CONVERSATION", EVENT_END},
            {"CONSUMER_END_CONVERSATION", EVENT_END},
            {"SYSTEM_END_CONVERSATION", EVENT_END},
            {"ENGAGEMENT_TRANSFERED", EVENT_ROUTING},
            {"YOU_ARE_CONNECTED_TO", EVENT_PARTICIPANTS},
            {"BACK_TO_QUEUE", EVENT_PARTICIPANTS},
            {"JOINED_AGENT_LEFT_CONVERSATION", EVENT_PARTICIPANTS},
            {"ANOTHER_AGENT_JOINED_CONVERSATION", EVENT_PARTICIPANTS},
            {"AGENT_UPDATED_RESPONSE_TIME", EVENT_TTR},
            {"CONSUMER_CANCELED_URGENT_RESPONSE_TIME", EVENT_TTR},
            {"CONSUMER_ASKED_URGENT_RESPONSE_TIME", EVENT_TTR},
            {"CONV_AWAITING_IN_QUEUE", EVENT_IDLE},
            {"AGENT_NON_RESPONSIVE", EVENT_IDLE},
            {"CONSUMER_NON_RESPONSIVE", EVENT_IDLE},
        };

        for (size_t i = 0; i < sizeof(table) / sizeof(table[0]); i++) {
                char json[256];
                struct event_batch b;

                snprintf(json, sizeof(json),
                         "{\"general\":{\"convId\":\"c%zu\",\"cbotEventType\":\"%s\"}}", i,
                         table[i].type);
                b = parse_ok(json, DEFAULT);
                cr_assert_eq(b.events[0].kind, table[i].kind, "%s → %s", table[i].type,
                             event_kind_name(b.events[0].kind));
                event_batch_free(&b);
        }
}

Test(event_functions, unknown_and_unmapped_cbot_event_types_are_dead_letters)
{
        parse_fail("{\"general\":{\"convId\":\"c\",\"cbotEventType\":\"FOO_BAR\"}}", DEFAULT,
                   "unknown cbotEventType 'FOO_BAR' (general.cbotEventType)");
        /* Documented by LivePerson, but no kind of ours: named, not guessed. */
        parse_fail("{\"general\":{\"convId\":\"c\",\"cbotEventType\":\"CONSUMER_STEP_UP\"}}",
                   DEFAULT, "'CONSUMER_STEP_UP'");
        parse_fail("{\"general\":{\"convId\":\"c\",\"cbotEventType\":"
                   "\"CONSUMER_SEND_MESSAGE_ON_OFFHOURS\"}}",
                   DEFAULT, "'CONSUMER_SEND_MESSAGE_ON_OFFHOURS'");
        /* Case matters, as LivePerson sends them upper case. */
        parse_fail("{\"general\":{\"convId\":\"c\",\"cbotEventType\":\"system_end_conversation\"}}",
                   DEFAULT, "unknown cbotEventType");
        /* A NUL makes a known prefix no match. */
        parse_fail("{\"general\":{\"convId\":\"c\",\"cbotEventType\":"
                   "\"SYSTEM_END_CONVERSATION\\u0000X\"}}",
                   DEFAULT, "unknown cbotEventType");
        parse_fail("{\"general\":{\"convId\":\"c\"}}", DEFAULT,
                   "no event type (general.cbotEventType)");
        parse_fail("{\"general\":{\"convId\":\"c\",\"cbotEventType\":7}}", DEFAULT,
                   "general.cbotEventType must be a string");
}

/* ---- Functions payloads ---- */

Test(event_functions, account_from_the_event_else_the_default)
{
        struct event_batch b;

        b = parse_ok(
            "{\"general\":{\"convId\":\"c1\",\"cbotEventType\":\"SYSTEM_END_CONVERSATION\","
            "\"brandId\":\"le123\",\"accountId\":\"other\"}}",
            DEFAULT);
        cr_assert_str_eq(b.events[0].account, "le123", "brandId wins over accountId");
        event_batch_free(&b);
        b = parse_ok(
            "{\"general\":{\"convId\":\"c1\",\"cbotEventType\":\"SYSTEM_END_CONVERSATION\","
            "\"accountId\":\"acc.9\"}}",
            NULL);
        cr_assert_str_eq(b.events[0].account, "acc.9");
        event_batch_free(&b);
        b = parse_ok(
            "{\"general\":{\"convId\":\"c1\",\"cbotEventType\":\"SYSTEM_END_CONVERSATION\","
            "\"brandId\":null}}",
            DEFAULT);
        cr_assert_str_eq(b.events[0].account, DEFAULT, "null is no account");
        event_batch_free(&b);
}

Test(event_functions, no_account_anywhere_is_a_dead_letter)
{
        static const char msg[] =
            "{\"general\":{\"convId\":\"c1\",\"cbotEventType\":\"SYSTEM_END_CONVERSATION\"}}";

        parse_fail(msg, NULL, "no account: the event carries none");
        parse_fail(msg, "", "[kafka] account is not set");
        parse_fail(msg, NULL, "general.brandId");
        /* A broken default account is the configuration's fault, and says so. */
        parse_fail(msg, "bad account!", "[kafka] account");
        parse_fail("{\"general\":{\"convId\":\"c1\",\"cbotEventType\":\"SYSTEM_END_CONVERSATION\","
                   "\"brandId\":\"a/b\"}}",
                   DEFAULT, "general.brandId: account id 'a/b' is invalid");
        parse_fail("{\"general\":{\"convId\":\"c1\",\"cbotEventType\":\"SYSTEM_END_CONVERSATION\","
                   "\"brandId\":12345678}}",
                   DEFAULT, "general.brandId must be a string");
        parse_fail("{\"general\":{\"convId\":\"c1\",\"cbotEventType\":\"SYSTEM_END_CONVERSATION\","
                   "\"brandId\":\"\"}}",
                   DEFAULT, "general.brandId");
        parse_fail("{\"general\":{\"convId\":\"c1\",\"cbotEventType\":\"SYSTEM_END_CONVERSATION\","
                   "\"brandId\":\"a\\u0000b\"}}",
                   DEFAULT, "general.brandId contains a control character");
}

Test(event_functions, time_falls_back_from_server_timestamp_to_start_to_now)
{
        struct event_batch b;

        b = parse_ok("{\"general\":{\"convId\":\"c\",\"cbotEventType\":\"AGENT_NON_RESPONSIVE\","
                     "\"startTs\":5,\"serverTimestamp\":9}}",
                     DEFAULT);
        cr_assert_eq(b.events[0].time_ms, 9);
        event_batch_free(&b);
        b = parse_ok("{\"general\":{\"convId\":\"c\",\"cbotEventType\":\"AGENT_NON_RESPONSIVE\","
                     "\"startTs\":5}}",
                     DEFAULT);
        cr_assert_eq(b.events[0].time_ms, 5);
        event_batch_free(&b);
        b = parse_ok("{\"general\":{\"convId\":\"c\",\"cbotEventType\":\"AGENT_NON_RESPONSIVE\","
                     "\"startTs\":5,\"serverTimestamp\":null}}",
                     DEFAULT);
        cr_assert_eq(b.events[0].time_ms, 5, "null is absent");
        event_batch_free(&b);
        b = parse_ok("{\"general\":{\"convId\":\"c\",\"cbotEventType\":\"AGENT_NON_RESPONSIVE\"}}",
                     DEFAULT);
        cr_assert_eq(b.events[0].time_ms, NOW);
        event_batch_free(&b);
        b = parse_ok("{\"general\":{\"convId\":\"c\",\"cbotEventType\":\"AGENT_NON_RESPONSIVE\","
                     "\"serverTimestamp\":0}}",
                     DEFAULT);
        cr_assert_eq(b.events[0].time_ms, 0, "0 is a time, not 'absent'");
        event_batch_free(&b);
}

Test(event_functions, time_of_the_wrong_type_is_a_dead_letter_not_a_fallback)
{
        parse_fail("{\"general\":{\"convId\":\"c\",\"cbotEventType\":\"AGENT_NON_RESPONSIVE\","
                   "\"startTs\":5,\"serverTimestamp\":\"1764400000201\"}}",
                   DEFAULT, "general.serverTimestamp must be a non-negative integer");
        parse_fail("{\"general\":{\"convId\":\"c\",\"cbotEventType\":\"AGENT_NON_RESPONSIVE\","
                   "\"serverTimestamp\":1.5}}",
                   DEFAULT, "general.serverTimestamp must be");
        parse_fail("{\"general\":{\"convId\":\"c\",\"cbotEventType\":\"AGENT_NON_RESPONSIVE\","
                   "\"serverTimestamp\":-1}}",
                   DEFAULT, "general.serverTimestamp must be a non-negative");
        parse_fail("{\"general\":{\"convId\":\"c\",\"cbotEventType\":\"AGENT_NON_RESPONSIVE\","
                   "\"startTs\":true}}",
                   DEFAULT, "general.startTs must be");
}

Test(event_functions, nested_wrong_types_name_the_path)
{
        parse_fail("{\"general\":{\"convId\":42,\"cbotEventType\":\"SYSTEM_END_CONVERSATION\"}}",
                   DEFAULT, "general.convId must be a string");
        parse_fail("{\"general\":[1,2]}", DEFAULT, "general must be an object");
        parse_fail("{\"general\":null}", DEFAULT, "general must be an object");
        parse_fail("{\"general\":{\"convId\":\"c\",\"cbotEventType\":\"SYSTEM_END_CONVERSATION\"},"
                   "\"end\":\"SYSTEM\"}",
                   DEFAULT, "end must be an object");
        parse_fail("{\"general\":{\"convId\":\"c\",\"cbotEventType\":\"SYSTEM_END_CONVERSATION\"},"
                   "\"end\":{\"closeReason\":{\"x\":1}}}",
                   DEFAULT, "end.closeReason must be a string");
        parse_fail("{\"general\":{\"cbotEventType\":\"SYSTEM_END_CONVERSATION\"}}", DEFAULT,
                   "no conversation id (general.convId)");
        parse_fail("{\"general\":{\"convId\":\"\",\"cbotEventType\":\"SYSTEM_END_CONVERSATION\"}}",
                   DEFAULT, "general.convId is empty");
}

Test(event_functions, optional_nulls_and_empty_close_reason)
{
        struct event_batch b;

        b = parse_ok(
            "{\"general\":{\"convId\":\"c\",\"cbotEventType\":\"CONSUMER_END_CONVERSATION\"},"
            "\"end\":null}",
            DEFAULT);
        cr_assert_str_eq(b.events[0].close_reason, "");
        cr_assert_eq(b.events[0].kind, EVENT_END);
        event_batch_free(&b);
        b = parse_ok(
            "{\"general\":{\"convId\":\"c\",\"cbotEventType\":\"CONSUMER_END_CONVERSATION\"},"
            "\"end\":{\"closeReason\":null}}",
            DEFAULT);
        cr_assert_str_eq(b.events[0].close_reason, "");
        event_batch_free(&b);
        b = parse_ok(
            "{\"general\":{\"convId\":\"c\",\"cbotEventType\":\"CONSUMER_END_CONVERSATION\"},"
            "\"end\":{\"closeReason\":\"CONSUMER\"}}",
            DEFAULT);
        check_event(&b.events[0],
                    &(struct want){EVENT_END, "src/0/1", DEFAULT, "c", "CONSUMER", NOW});
        event_batch_free(&b);
}

/* ---- limits ---- */

static char *repeat(char c, size_t n)
{
        char *s = malloc(n + 1);

        cr_assert_not_null(s);
        memset(s, c, n);
        s[n] = '\0';
        return s;
}

Test(event_limits, conversation_id_length)
{
        char *id = repeat('c', EVENT_CONVERSATION_MAX + 1);
        char *json = NULL;
        struct event_batch b;

        /* Exactly the limit passes, whole; one more is refused. */
        id[EVENT_CONVERSATION_MAX] = '\0';
        cr_assert_geq(
            asprintf(&json, "{\"kind\":\"conversation.end\",\"conversationId\":\"%s\"}", id), 0);
        b = parse_ok(json, DEFAULT);
        cr_assert_str_eq(b.events[0].conversation, id);
        cr_assert_eq(strlen(b.events[0].conversation), EVENT_CONVERSATION_MAX);
        event_batch_free(&b);
        free(json);
        id[EVENT_CONVERSATION_MAX] = 'c';
        cr_assert_geq(
            asprintf(&json, "{\"kind\":\"conversation.end\",\"conversationId\":\"%s\"}", id), 0);
        parse_fail(json, DEFAULT, "conversationId is 257 bytes, longer than the limit of 256");
        free(json);
        free(id);
}

Test(event_limits, multibyte_conversation_id_counts_bytes)
{
        /* 128 × "é" (2 bytes) = 256 bytes passes; 129 do not. */
        char conv[2 * 129 + 1] = "";
        char json[512];
        struct event_batch b;

        for (size_t i = 0; i < 129; i++)
                strcat(conv, "\xc3\xa9");
        conv[256] = '\0';
        snprintf(json, sizeof(json), "{\"kind\":\"conversation.new\",\"conversationId\":\"%s\"}",
                 conv);
        b = parse_ok(json, DEFAULT);
        cr_assert_str_eq(b.events[0].conversation, conv);
        event_batch_free(&b);
        strcat(conv, "\xc3\xa9");
        snprintf(json, sizeof(json), "{\"kind\":\"conversation.new\",\"conversationId\":\"%s\"}",
                 conv);
        parse_fail(json, DEFAULT, "conversationId is 258 bytes");
}

Test(event_limits, account_and_close_reason_length)
{
        char *acct = repeat('a', EVENT_ACCOUNT_MAX + 1);
        char *reason = repeat('R', EVENT_REASON_MAX + 1);
        char json[512];
        struct event_batch b;

        acct[EVENT_ACCOUNT_MAX] = reason[EVENT_REASON_MAX] = '\0';
        snprintf(json, sizeof(json),
                 "{\"kind\":\"conversation.end\",\"conversationId\":\"c\",\"accountId\":\"%s\","
                 "\"closeReason\":\"%s\"}",
                 acct, reason);
        b = parse_ok(json, NULL);
        cr_assert_str_eq(b.events[0].account, acct);
        cr_assert_str_eq(b.events[0].close_reason, reason);
        event_batch_free(&b);

        acct[EVENT_ACCOUNT_MAX] = 'a';
        snprintf(json, sizeof(json),
                 "{\"kind\":\"conversation.end\",\"conversationId\":\"c\",\"accountId\":\"%s\"}",
                 acct);
        parse_fail(json, NULL, "accountId: account id must be 1-64 characters");
        reason[EVENT_REASON_MAX] = 'R';
        snprintf(json, sizeof(json),
                 "{\"kind\":\"conversation.end\",\"conversationId\":\"c\",\"closeReason\":\"%s\"}",
                 reason);
        parse_fail(json, DEFAULT, "closeReason is 65 bytes, longer than the limit of 64");
        free(acct);
        free(reason);
}

Test(event_limits, message_size)
{
        static const char msg[] = "{\"kind\":\"conversation.end\",\"conversationId\":\"c\"}";
        size_t len = strlen(msg);
        struct event_batch b = {NULL, 0};
        struct ch_error err = {{0}};
        char want[128];

        /* Exactly max_bytes is allowed; one byte less of limit refuses it without parsing. */
        cr_assert_eq(event_parse(msg, len, len, "s", DEFAULT, NOW, &b, &err), 0, "%s", err.msg);
        event_batch_free(&b);
        cr_assert_eq(event_parse(msg, len, len - 1, "s", DEFAULT, NOW, &b, &err), -E2BIG);
        snprintf(want, sizeof(want), "message of %zu bytes exceeds the limit of %zu bytes", len,
                 len - 1);
        cr_assert_str_eq(err.msg, want);
        cr_assert_null(b.events);
        /* Not parsed: even garbage over the limit is "too big", not "not JSON". */
        cr_assert_eq(event_parse("xxxxxxxx", 8, 4, "s", DEFAULT, NOW, &b, &err), -E2BIG);
}

Test(event_limits, huge_message_under_the_limit_keeps_everything)
{
        /* A 600 kB transcript rides along in the raw JSON untouched. */
        char *filler = repeat('x', 600 * 1024);
        char *json = NULL;
        struct event_batch b;
        const char *kept;

        cr_assert_geq(asprintf(&json,
                               "{\"general\":{\"convId\":\"big\",\"cbotEventType\":"
                               "\"SYSTEM_END_CONVERSATION\"},\"transcript\":\"%s\"}",
                               filler),
                      0);
        b = parse_ok(json, DEFAULT);
        kept = json_string_value(json_object_get(b.events[0].raw, "transcript"));
        cr_assert_not_null(kept);
        cr_assert_eq(strlen(kept), 600 * 1024);
        event_batch_free(&b);
        {
                struct event_batch b2 = {NULL, 0};
                struct ch_error err;

                cr_assert_eq(event_parse(json, strlen(json), 1000, "s", DEFAULT, NOW, &b2, &err),
                             -E2BIG);
        }
        free(json);
        free(filler);
}

Test(event_limits, source_id)
{
        char *src = repeat('s', 252);
        static const char msg[] = "{\"kind\":\"conversation.end\",\"conversationId\":\"c\"}";
        struct event_batch b = {NULL, 0};
        struct ch_error err;

        cr_assert_eq(event_parse(msg, strlen(msg), MAX, src, DEFAULT, NOW, &b, &err), 0);
        cr_assert_str_eq(b.events[0].id, src);
        event_batch_free(&b);
        cr_assert_eq(event_parse(msg, strlen(msg), MAX, "", DEFAULT, NOW, &b, &err), -EINVAL);
        cr_assert(strstr(err.msg, "source id"), "%s", err.msg);
        cr_assert_eq(event_parse(msg, strlen(msg), MAX, NULL, DEFAULT, NOW, &b, &err), -EINVAL);
        free(src);
}

static char *notification_with(size_t n);

/* The event id of a source id over 252 bytes. */
static void long_source_id(const char *src, char out[EVENT_ID_MAX + 1])
{
        static const char msg[] = "{\"kind\":\"conversation.end\",\"conversationId\":\"c\"}";
        struct event_batch b = {NULL, 0};
        struct ch_error err = {{0}};

        cr_assert_eq(event_parse(msg, strlen(msg), MAX, src, DEFAULT, NOW, &b, &err), 0, "%s",
                     err.msg);
        strcpy(out, b.events[0].id);
        event_batch_free(&b);
}

/* Found by tests/fuzz/fuzz_event (corpus input crash-long-kafka-topic): a Kafka topic may have
 * 249 characters, so the consumer's and replay's "kafka:<topic>/<partition>/<offset>" may be
 * over the 252 bytes an event id has room for, and every message of such a topic was refused
 * as a dead letter ("source id must be 1-252 bytes"). A longer source id is now folded into
 * its beginning, "~" and 32 hex digits of its hash: stable, distinct, still readable. */
Test(event_limits, long_source_id_is_folded_not_refused)
{
        char topic[250], src[300], other[300], id[EVENT_ID_MAX + 1], again[EVENT_ID_MAX + 1],
            id_other[EVENT_ID_MAX + 1], want[EVENT_ID_MAX + 8];
        char *json = notification_with(EVENT_CHANGES_MAX), *head, *tail;
        struct event_batch b;
        size_t len;

        memset(topic, 't', 249);
        topic[249] = '\0';
        snprintf(src, sizeof(src), "kafka:%s/2147483647/9223372036854775807", topic);
        snprintf(other, sizeof(other), "kafka:%s/2147483647/9223372036854775806", topic);
        long_source_id(src, id);
        long_source_id(src, again);
        long_source_id(other, id_other);
        len = strlen(id);
        cr_assert_eq(len, 252, "%zu: %s", len, id);
        cr_assert_eq(strncmp(id, src, 219), 0, "keeps the beginning: %s", id);
        cr_assert_eq(id[219], '~');
        cr_assert_eq(strspn(id + 220, "0123456789abcdef"), 32, "%s", id + 220);
        cr_assert_str_eq(id, again, "the same message must get the same id");
        cr_assert_str_neq(id, id_other, "different messages must get different ids");

        /* The change suffix still fits. */
        b = parse_ok_len(json, strlen(json), src, DEFAULT);
        snprintf(want, sizeof(want), "%s#999", id);
        cr_assert_str_eq(b.events[999].id, want);
        event_batch_free(&b);
        free(json);

        /* A multi-byte character is not cut in half: the id stays UTF-8 for the JSON body. */
        head = repeat('a', 218);
        tail = repeat('z', 60);
        snprintf(src, sizeof(src), "%s\xc3\xa9\xc3\xa9%s", head, tail);
        free(head);
        free(tail);
        long_source_id(src, id);
        cr_assert(names_utf8_valid(id, strlen(id)), "%s", id);
        cr_assert_eq(strncmp(id, src, 218), 0);
        cr_assert_eq(id[218], '~', "%s", id);
}

/* ---- not JSON, not an object, not an event ---- */

Test(event_malformed, not_json)
{
        parse_fail("not json at all", DEFAULT,
                   "not valid JSON: invalid token near 'not' at line 1");
        parse_fail_len("", 0, DEFAULT, -EINVAL, "empty message");
        parse_fail("   \n", DEFAULT, "not valid JSON");
        parse_fail("{\"kind\":\"conversation.end\"", DEFAULT, "not valid JSON");
        parse_fail("{\"kind\":\"conversation.end\",\"conversationId\":\"c\"} {}", DEFAULT,
                   "not valid JSON: end of file expected");
}

Test(event_malformed, invalid_utf8_is_refused_and_the_reason_stays_utf8)
{
        static const char *const bad[] = {
            "{\"kind\":\"conversation.end\",\"conversationId\":\"\xff\"}",
            "{\"kind\":\"conversation.end\",\"conversationId\":\"\xc3\"}",
            /* overlong "/" and a UTF-16 surrogate encoded in UTF-8 */
            "{\"kind\":\"conversation.end\",\"conversationId\":\"\xc0\xaf\"}",
            "{\"kind\":\"conversation.end\",\"conversationId\":\"\xed\xa0\x80\"}",
            "{\"kind\":\"conversation.end\",\"conversationId\":\"\\ud800\"}",
            "\xff\xfe{}",
        };

        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
                parse_fail(bad[i], DEFAULT, "not valid JSON");
}

Test(event_malformed, not_an_object)
{
        parse_fail("[{\"kind\":\"conversation.end\",\"conversationId\":\"c\"}]", DEFAULT,
                   "not a conversation event: the message is an array");
        parse_fail("\"conversation.end\"", DEFAULT, "the message is a string");
        parse_fail("42", DEFAULT, "the message is a number");
        parse_fail("null", DEFAULT, "the message is null");
        parse_fail("true", DEFAULT, "the message is a boolean");
}

Test(event_malformed, unrecognised_shape)
{
        parse_fail("{}", DEFAULT,
                   "not a conversation event: expected a LivePerson Functions "
                   "payload (general), a cqm.ExConversationChangeNotification");
        parse_fail("{\"type\":\"cqm.SomethingElse\",\"body\":{}}", DEFAULT,
                   "not a conversation event");
        parse_fail("{\"payload\":{\"general\":{}}}", DEFAULT, "not a conversation event");
}

Test(event_malformed, duplicate_keys)
{
        parse_fail("{\"kind\":\"conversation.end\",\"conversationId\":\"a\",\"conversationId\":"
                   "\"b\"}",
                   DEFAULT, "not valid JSON: duplicate object key");
        parse_fail("{\"general\":{\"convId\":\"a\",\"convId\":\"b\",\"cbotEventType\":"
                   "\"SYSTEM_END_CONVERSATION\"}}",
                   DEFAULT, "duplicate object key");
}

Test(event_malformed, nul_bytes)
{
        static const char raw_nul[] = "{\"kind\":\"conversation.end\",\"conversationId\":\"a\0b\"}";
        static const char trailing[] = "{\"kind\":\"conversation.end\",\"conversationId\":\"c\"}\0";
        struct event_batch b;

        /* Escaped NUL in a field we use: a control character, with its byte offset. */
        parse_fail("{\"kind\":\"conversation.end\",\"conversationId\":\"ab\\u0000c\"}", DEFAULT,
                   "conversationId contains a control character at byte 2");
        parse_fail("{\"kind\":\"conversation.end\",\"conversationId\":\"c\",\"closeReason\":"
                   "\"SYS\\u0000TEM\"}",
                   DEFAULT, "closeReason contains a control character at byte 3");
        parse_fail("{\"general\":{\"convId\":\"a\\u0001\",\"cbotEventType\":"
                   "\"SYSTEM_END_CONVERSATION\"}}",
                   DEFAULT, "general.convId contains a control character at byte 1");
        /* Raw NUL bytes are not JSON at all. */
        parse_fail_len(raw_nul, sizeof(raw_nul) - 1, DEFAULT, -EINVAL, "not valid JSON");
        parse_fail_len(trailing, sizeof(trailing) - 1, DEFAULT, -EINVAL, "not valid JSON");
        /* An escaped NUL elsewhere is valid JSON and survives in raw, length and all. */
        b = parse_ok(
            "{\"kind\":\"conversation.end\",\"conversationId\":\"c\",\"note\":\"x\\u0000y\"}",
            DEFAULT);
        cr_assert_eq(json_string_length(json_object_get(b.events[0].raw, "note")), 3);
        check_raw(&b.events[0], "{\"kind\":\"conversation.end\",\"conversationId\":\"c\","
                                "\"note\":\"x\\u0000y\"}");
        event_batch_free(&b);
}

Test(event_malformed, reason_quoting_a_control_character_is_sanitised)
{
        /* The quoted value holds U+0001 and a newline; the reason must not. */
        parse_fail("{\"general\":{\"convId\":\"c\",\"cbotEventType\":\"A\\u0001B\\nC\"}}", DEFAULT,
                   "unknown cbotEventType 'A?B?C'");
        parse_fail("{\"kind\":\"end\\nX\",\"conversationId\":\"c\"}", DEFAULT,
                   "unknown kind 'end?X' (kind)");
}

Test(event_malformed, quoted_value_cut_inside_a_utf8_sequence)
{
        /* Quoted values are cut at 64 bytes; here byte 64 is the first half of "é". */
        char type[80], json[256], want[128];

        memset(type, 'A', 63);
        strcpy(type + 63, "\xc3\xa9"
                          "B");
        snprintf(json, sizeof(json), "{\"general\":{\"convId\":\"c\",\"cbotEventType\":\"%s\"}}",
                 type);
        memset(want, 'A', 63);
        strcpy(want + 63, "?' (general.cbotEventType)");
        parse_fail(json, DEFAULT, want);
}

Test(event_malformed, works_without_an_error_struct)
{
        struct event_batch b = {NULL, 0};

        cr_assert_eq(event_parse("nope", 4, MAX, "s", DEFAULT, NOW, &b, NULL), -EINVAL);
        cr_assert_eq(event_parse("{\"kind\":1}", 10, MAX, "s", DEFAULT, NOW, &b, NULL), -EINVAL);
        cr_assert_eq(event_parse("nope", 4, 2, "s", DEFAULT, NOW, &b, NULL), -E2BIG);
        cr_assert_null(b.events);
}

/* ---- plain ---- */

Test(event_plain, every_kind_and_defaults)
{
        static const char *const kinds[] = {"conversation.end",          "conversation.idle",
                                            "conversation.new",          "conversation.routing",
                                            "conversation.participants", "conversation.ttr"};

        for (size_t i = 0; i < 6; i++) {
                char json[256], conv[16];
                struct event_batch b;

                snprintf(conv, sizeof(conv), "p%zu", i);
                snprintf(json, sizeof(json), "{\"kind\":\"%s\",\"conversationId\":\"%s\"}",
                         kinds[i], conv);
                b = parse_ok(json, DEFAULT);
                cr_assert_eq(b.n, 1);
                check_event(&b.events[0], &(struct want){event_kind_from_string(kinds[i]),
                                                         "src/0/1", DEFAULT, conv, "", NOW});
                event_batch_free(&b);
        }
}

Test(event_plain, fields_and_errors)
{
        struct event_batch b;

        b = parse_ok("{\"kind\":\"conversation.idle\",\"accountId\":\"a1\",\"conversationId\":"
                     "\"c-9\",\"closeReason\":\"\",\"time\":123,\"extra\":[1,{}]}",
                     NULL);
        check_event(&b.events[0], &(struct want){EVENT_IDLE, "src/0/1", "a1", "c-9", "", 123});
        check_raw(&b.events[0], "{\"kind\":\"conversation.idle\",\"accountId\":\"a1\","
                                "\"conversationId\":\"c-9\",\"closeReason\":\"\",\"time\":123,"
                                "\"extra\":[1,{}]}");
        event_batch_free(&b);

        parse_fail("{\"kind\":\"notification\",\"conversationId\":\"c\"}", DEFAULT,
                   "unknown kind 'notification' (kind): expected conversation.end");
        parse_fail("{\"kind\":5,\"conversationId\":\"c\"}", DEFAULT, "kind must be a string");
        parse_fail("{\"kind\":null,\"conversationId\":\"c\"}", DEFAULT, "kind must be a string");
        parse_fail("{\"kind\":\"conversation.end\"}", DEFAULT,
                   "no conversation id (conversationId)");
        parse_fail("{\"kind\":\"conversation.end\",\"conversationId\":false}", DEFAULT,
                   "conversationId must be a string");
        parse_fail("{\"kind\":\"conversation.end\",\"conversationId\":\"c\",\"time\":\"now\"}",
                   DEFAULT, "time must be a non-negative integer");
        parse_fail("{\"kind\":\"conversation.end\",\"conversationId\":\"c\",\"time\":1e12}",
                   DEFAULT, "time must be a non-negative integer");
        parse_fail("{\"kind\":\"conversation.end\",\"conversationId\":\"c\",\"accountId\":7}",
                   DEFAULT, "accountId must be a string");
        parse_fail("{\"kind\":\"conversation.end\",\"conversationId\":\"c\",\"closeReason\":[]}",
                   DEFAULT, "closeReason must be a string");
        parse_fail("{\"kind\":\"conversation.end\",\"conversationId\":\"c\"}", NULL,
                   "no account: the event carries none (accountId)");
}

/* ---- cqm notifications ---- */

#define CHANGE(type, conv, details)                                                                \
        "{\"type\":\"" type "\",\"result\":{\"convId\":\"" conv                                    \
        "\",\"conversationDetails\":" details "}}"
#define NOTIFY(changes)                                                                            \
        "{\"kind\":\"notification\",\"type\":\"cqm.ExConversationChangeNotification\",\"body\":{"  \
        "\"changes\":[" changes "]}}"

#define C0                                                                                         \
        CHANGE("UPSERT", "n-0",                                                                    \
               "{\"brandId\":\"111\",\"state\":\"CLOSE\",\"stage\":\"CLOSE\",\"closeReason\":"     \
               "\"AGENT\",\"startTs\":10,\"metaDataLastUpdateTs\":30}")
#define C1                                                                                         \
        CHANGE(                                                                                    \
            "UPSERT", "n-1",                                                                       \
            "{\"brandId\":\"222\",\"state\":\"OPEN\",\"startTs\":20,\"metaDataLastUpdateTs\":20}")
#define C2                                                                                         \
        CHANGE(                                                                                    \
            "UPSERT", "n-2",                                                                       \
            "{\"state\":\"OPEN\",\"startTs\":20,\"metaDataLastUpdateTs\":25,\"skillId\":\"77\"}")

Test(event_notification, three_changes_three_events)
{
        static const char msg[] = NOTIFY(C0 "," C1 "," C2);
        struct event_batch b;

        b = parse_ok_len(msg, strlen(msg), "topic/3/99", DEFAULT);
        cr_assert_eq(b.n, 3);
        check_event(&b.events[0],
                    &(struct want){EVENT_END, "topic/3/99", "111", "n-0", "AGENT", 30});
        check_event(&b.events[1], &(struct want){EVENT_NEW, "topic/3/99#1", "222", "n-1", "", 20});
        /* Updated after it started: routing; no brandId: the default account. */
        check_event(&b.events[2],
                    &(struct want){EVENT_ROUTING, "topic/3/99#2", DEFAULT, "n-2", "", 25});
        check_raw(&b.events[0], C0);
        check_raw(&b.events[1], C1);
        check_raw(&b.events[2], C2);
        event_batch_free(&b);
        cr_assert_null(b.events);
        cr_assert_eq(b.n, 0);
}

Test(event_notification, raw_outlives_the_rest_of_the_message)
{
        static const char msg[] = NOTIFY(C0 "," C1);
        struct event_batch b = parse_ok(msg, DEFAULT);
        json_t *keep = json_incref(b.events[1].raw);

        /* The batch owns one reference per change; the message root is already gone. */
        event_batch_free(&b);
        cr_assert_str_eq(
            json_string_value(json_object_get(json_object_get(keep, "result"), "convId")), "n-1");
        json_decref(keep);
}

Test(event_notification, kind_rule_state_then_stage_then_timestamps)
{
        static const struct {
                const char *details;
                enum event_kind kind;
                int64_t time;
        } cases[] = {
            {"{\"state\":\"CLOSE\"}", EVENT_END, NOW},
            {"{\"state\":\"CLOSE\",\"startTs\":1,\"metaDataLastUpdateTs\":1}", EVENT_END, 1},
            /* stage counts only when there is no state */
            {"{\"stage\":\"CLOSE\",\"startTs\":4}", EVENT_END, 4},
            {"{\"state\":\"OPEN\",\"stage\":\"CLOSE\"}", EVENT_NEW, NOW},
            {"{\"state\":\"close\"}", EVENT_NEW, NOW},
            {"{\"state\":\"OPEN\"}", EVENT_NEW, NOW},
            {"{\"state\":\"OPEN\",\"metaDataLastUpdateTs\":7}", EVENT_ROUTING, 7},
            {"{\"state\":\"OPEN\",\"startTs\":3,\"metaDataLastUpdateTs\":3}", EVENT_NEW, 3},
            {"{\"state\":\"OPEN\",\"startTs\":3,\"metaDataLastUpdateTs\":4}", EVENT_ROUTING, 4},
            {"{\"state\":null,\"startTs\":3}", EVENT_NEW, 3},
        };

        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                char json[512];
                struct event_batch b;

                snprintf(json, sizeof(json),
                         "{\"type\":\"cqm.ExConversationChangeNotification\",\"body\":{"
                         "\"changes\":[{\"result\":{\"convId\":\"k\",\"conversationDetails\":%s}}"
                         "]}}",
                         cases[i].details);
                b = parse_ok(json, DEFAULT);
                cr_assert_eq(b.events[0].kind, cases[i].kind, "%s → %s", cases[i].details,
                             event_kind_name(b.events[0].kind));
                cr_assert_eq(b.events[0].time_ms, cases[i].time, "%s", cases[i].details);
                event_batch_free(&b);
        }
}

Test(event_notification, one_bad_change_makes_the_whole_message_a_dead_letter)
{
        parse_fail(
            NOTIFY(CHANGE("UPSERT", "g", "{\"state\":\"CLOSE\"}") "," CHANGE(
                "UPSERT", "g2", "{}") ",{\"type\":\"DELETE\",\"result\":{\"convId\":\"x\"}}"),
            DEFAULT, "no conversation details (body.changes[2].result.conversationDetails)");
        parse_fail(NOTIFY("{\"type\":\"UPSERT\"}"), DEFAULT, "no result (body.changes[0].result)");
        parse_fail(NOTIFY("{\"result\":{\"conversationDetails\":{}}}"), DEFAULT,
                   "no conversation id (body.changes[0].result.convId)");
        parse_fail(NOTIFY("7"), DEFAULT, "body.changes[0] must be an object");
        parse_fail(NOTIFY("{\"result\":[]}"), DEFAULT, "body.changes[0].result must be an object");
        parse_fail(NOTIFY("{\"result\":{\"convId\":1,\"conversationDetails\":{}}}"), DEFAULT,
                   "body.changes[0].result.convId must be a string");
        parse_fail(NOTIFY("{\"result\":{\"convId\":\"c\",\"conversationDetails\":\"x\"}}"), DEFAULT,
                   "body.changes[0].result.conversationDetails must be an object");
}

Test(event_notification, nested_wrong_types_name_the_path)
{
        parse_fail(NOTIFY(CHANGE("UPSERT", "c", "{\"brandId\":12345678}")), DEFAULT,
                   "body.changes[0].result.conversationDetails.brandId must be a string");
        parse_fail(NOTIFY(CHANGE("UPSERT", "c", "{\"state\":\"OPEN\"}") "," CHANGE(
                       "UPSERT", "d", "{\"state\":1}")),
                   DEFAULT, "body.changes[1].result.conversationDetails.state must be a string");
        parse_fail(NOTIFY(CHANGE("UPSERT", "c", "{\"closeReason\":true}")), DEFAULT,
                   "body.changes[0].result.conversationDetails.closeReason must be a string");
        parse_fail(NOTIFY(CHANGE("UPSERT", "c", "{\"metaDataLastUpdateTs\":\"1\"}")), DEFAULT,
                   "body.changes[0].result.conversationDetails.metaDataLastUpdateTs must be a "
                   "non-negative integer");
        parse_fail(NOTIFY(CHANGE("UPSERT", "c", "{\"startTs\":2.5}")), DEFAULT,
                   "body.changes[0].result.conversationDetails.startTs must be");
        parse_fail(NOTIFY(CHANGE("UPSERT", "c", "{}")), NULL,
                   "no account: the event carries none "
                   "(body.changes[0].result.conversationDetails.brandId)");
}

Test(event_notification, changes_container)
{
        parse_fail("{\"type\":\"cqm.ExConversationChangeNotification\"}", DEFAULT,
                   "no changes (body.changes)");
        parse_fail("{\"type\":\"cqm.ExConversationChangeNotification\",\"body\":[]}", DEFAULT,
                   "body must be an object");
        parse_fail("{\"type\":\"cqm.ExConversationChangeNotification\",\"body\":{}}", DEFAULT,
                   "no changes (body.changes)");
        parse_fail("{\"type\":\"cqm.ExConversationChangeNotification\",\"body\":{\"changes\":{}}}",
                   DEFAULT, "body.changes must be an array");
        parse_fail(NOTIFY(""), DEFAULT, "body.changes is empty");
        /* The type must match exactly: a NUL-extended one is not a notification. */
        parse_fail("{\"type\":\"cqm.ExConversationChangeNotification\\u0000\",\"body\":{"
                   "\"changes\":[]}}",
                   DEFAULT, "not a conversation event");
}

static char *notification_with(size_t n)
{
        static const char head[] =
            "{\"type\":\"cqm.ExConversationChangeNotification\",\"body\":{\"changes\":[";
        static const char change[] =
            "{\"result\":{\"convId\":\"m\",\"conversationDetails\":{\"state\":\"OPEN\"}}}";
        size_t cap = sizeof(head) + n * sizeof(change) + 8, len;
        char *s = malloc(cap);

        cr_assert_not_null(s);
        len = (size_t)sprintf(s, "%s", head);
        for (size_t i = 0; i < n; i++)
                len += (size_t)sprintf(s + len, "%s%s", i ? "," : "", change);
        sprintf(s + len, "]}}");
        return s;
}

Test(event_notification, change_count_limit)
{
        char *json = notification_with(EVENT_CHANGES_MAX);
        struct event_batch b;

        b = parse_ok_len(json, strlen(json), "t/0/5", DEFAULT);
        cr_assert_eq(b.n, EVENT_CHANGES_MAX);
        cr_assert_str_eq(b.events[EVENT_CHANGES_MAX - 1].id, "t/0/5#999");
        cr_assert_str_eq(b.events[10].id, "t/0/5#10");
        event_batch_free(&b);
        free(json);
        json = notification_with(EVENT_CHANGES_MAX + 1);
        parse_fail(json, DEFAULT, "body.changes has 1001 changes, more than the limit of 1000");
        free(json);
}

Test(event_notification, longest_source_id_still_fits_the_change_suffix)
{
        char *src = repeat('s', 252);
        char *json = notification_with(EVENT_CHANGES_MAX);
        struct event_batch b;
        char want[EVENT_ID_MAX + 1];

        b = parse_ok_len(json, strlen(json), src, DEFAULT);
        snprintf(want, sizeof(want), "%s#999", src);
        cr_assert_eq(strlen(want), EVENT_ID_MAX);
        cr_assert_str_eq(b.events[999].id, want);
        event_batch_free(&b);
        free(json);
        free(src);
}

Test(event_batch, free_is_idempotent)
{
        struct event_batch b = {NULL, 0};

        event_batch_free(&b);
        event_batch_free(NULL);
        b = parse_ok("{\"kind\":\"conversation.end\",\"conversationId\":\"c\"}", DEFAULT);
        event_batch_free(&b);
        event_batch_free(&b);
        cr_assert_null(b.events);
        cr_assert_eq(b.n, 0);
}
