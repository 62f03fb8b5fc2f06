/* Parsing and normalising one conversation event message (event.h): jansson parses, this file
 * only recognises the three accepted shapes (a LivePerson Functions messaging payload, a
 * cqm.ExConversationChangeNotification, a plain {"kind": …} event), checks every field it uses
 * and fills struct event. Anything it cannot make sense of becomes a dead-letter reason that
 * names the field path, so an operator can find the fault in the stored message. */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "ctxhookd/event.h"
#include "ctxhookd/names.h"

#define CQM_TYPE "cqm.ExConversationChangeNotification"

/* Indexed by the kind's bit number. */
static const char *const kind_names[] = {
    "conversation.end",     "conversation.idle",         "conversation.new",
    "conversation.routing", "conversation.participants", "conversation.ttr",
};
#define N_KINDS (sizeof(kind_names) / sizeof(kind_names[0]))

/* general.cbotEventType → kind. The names and their grouping are LivePerson's own table
 * "conversation event type mapping to messaging events on functions" (developers.liveperson.com,
 * Functions → Messaging events): each row there maps one event type to the Functions trigger
 * (Messaging new conversation, conversation end, routing, participants change, TTR, idle), and
 * that trigger is our kind. Two documented types have no kind of ours and are deliberately
 * absent, so they become dead letters that name them: CONSUMER_SEND_MESSAGE_ON_OFFHOURS
 * ("Messaging Line in Off-Hours") and CONSUMER_STEP_UP ("Messaging consumer step up").
 * Matching is case-sensitive, as LivePerson sends them. */
static const struct {
        const char *type;
        enum event_kind kind;
} cbot_types[] = {
    {"CONSUMER_OPEN_NEW_CONVERSATION_FIRST_TIME_OFF_HOURS", EVENT_NEW},
    {"CONSUMER_OPEN_NEW_CONVERSATION_OFF_HOURS", EVENT_NEW},
    {"CONSUMER_OPEN_NEW_CONVERSATION_FIRST_TIME", EVENT_NEW},
    {"CONSUMER_OPEN_NEW_CONVERSATION", EVENT_NEW},
    {"CONSUMER_OPEN_NEW_CONVERSATION_AFTER_AUTOCLOSE", EVENT_NEW},
    {"AGENT_END_CONVERSATION", EVENT_END},
    {"CONSUMER_END_CONVERSATION", EVENT_END},
    {"SYSTEM_END_CONVERSATION", EVENT_END},
    {"ENGAGEMENT_TRANSFERED", EVENT_ROUTING}, /* sic: LivePerson's spelling */
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

/* Room for "#999" after the source id: a notification has at most EVENT_CHANGES_MAX changes. */
#define SOURCE_ID_MAX (EVENT_ID_MAX - 4)
/* A longer source id is folded: its beginning, "~" and this many hex digits of its SHA-256. */
#define FOLD_HEX 32

enum event_kind event_kind_from_string(const char *s)
{
        if (!s)
                return 0;
        for (size_t i = 0; i < N_KINDS; i++)
                if (strcmp(s, kind_names[i]) == 0)
                        return (enum event_kind)(1u << i);
        return 0;
}

const char *event_kind_name(enum event_kind k)
{
        for (size_t i = 0; i < N_KINDS; i++)
                if ((unsigned)k == 1u << i)
                        return kind_names[i];
        return "unknown";
}

/* Dead-letter reasons quote values from the message and jansson's own text ("near '…'"), which
 * may hold control characters or broken UTF-8; the reason is later logged and served as JSON,
 * so it must be one line of valid UTF-8. */
static void sanitize(char *s)
{
        unsigned char *p = (unsigned char *)s;
        size_t len = strlen(s);

        for (size_t i = 0; i < len;) {
                size_t n;

                if (p[i] < 0x20 || p[i] == 0x7f) {
                        p[i++] = '?';
                        continue;
                }
                n = names_utf8_len(p + i, len - i);
                if (n == 0) {
                        p[i++] = '?';
                        continue;
                }
                i += n;
        }
}

/* Sets the dead-letter reason and returns -EINVAL, for `return fail(err, …);`. */
__attribute__((format(printf, 2, 3))) static int fail(struct ch_error *err, const char *fmt, ...)
{
        va_list ap;

        if (!err)
                return -EINVAL;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
        va_end(ap);
        sanitize(err->msg);
        return -EINVAL;
}

/* A string value: JSON strings may hold NUL (JSON_ALLOW_NUL), so the length is carried. */
struct text {
        const char *s; /* NULL = absent */
        size_t len;
};

/* obj[key] as a string. Absent or null leaves *ret absent (the caller decides whether that is
 * allowed); any other type is an error naming prefix+key. */
static int get_text(json_t *obj, const char *prefix, const char *key, struct text *ret,
                    struct ch_error *err)
{
        json_t *v = json_object_get(obj, key);

        if (!v || json_is_null(v)) {
                *ret = (struct text){NULL, 0};
                return 0;
        }
        if (!json_is_string(v))
                return fail(err, "%s%s must be a string", prefix, key);
        *ret = (struct text){json_string_value(v), json_string_length(v)};
        return 0;
}

/* obj[key] as an object; absent or null gives NULL. */
static int get_object(json_t *obj, const char *prefix, const char *key, json_t **ret,
                      struct ch_error *err)
{
        json_t *v = json_object_get(obj, key);

        if (!v || json_is_null(v)) {
                *ret = NULL;
                return 0;
        }
        if (!json_is_object(v))
                return fail(err, "%s%s must be an object", prefix, key);
        *ret = v;
        return 0;
}

/* obj[key] as a time in milliseconds since the epoch; *ret_found = false when absent or null.
 * Timestamps are integers in every shape; a string or a fraction is a producer bug worth a
 * dead letter rather than a guess. */
static int get_time(json_t *obj, const char *prefix, const char *key, bool *ret_found, int64_t *ret,
                    struct ch_error *err)
{
        json_t *v = json_object_get(obj, key);

        if (!v || json_is_null(v)) {
                *ret_found = false;
                return 0;
        }
        if (!json_is_integer(v) || json_integer_value(v) < 0)
                return fail(err, "%s%s must be a non-negative integer (milliseconds)", prefix, key);
        *ret_found = true;
        *ret = (int64_t)json_integer_value(v);
        return 0;
}

/* A conversation id or close reason: at most max bytes, no control characters (NUL included),
 * empty only when allow_empty. jansson has already refused invalid UTF-8. */
static int check_text(const char *prefix, const char *key, const struct text *t, size_t max,
                      bool allow_empty, struct ch_error *err)
{
        if (t->len == 0 && !allow_empty)
                return fail(err, "%s%s is empty", prefix, key);
        if (t->len > max)
                return fail(err, "%s%s is %zu bytes, longer than the limit of %zu", prefix, key,
                            t->len, max);
        for (size_t i = 0; i < t->len; i++) {
                unsigned char c = (unsigned char)t->s[i];

                if (c < 0x20 || c == 0x7f)
                        return fail(err, "%s%s contains a control character at byte %zu", prefix,
                                    key, i);
        }
        return 0;
}

/* The event's account (prefix+key; account->s NULL when it has none) else the default account,
 * checked by the one account rule of the program (names.c) and copied into out. where names
 * the fields looked at, for the reason when there is no account at all. */
static int resolve_account(const char *prefix, const char *key, const struct text *account,
                           const char *default_account, const char *where,
                           char out[EVENT_ACCOUNT_MAX + 1], struct ch_error *err)
{
        struct ch_error why = {{0}};

        if (account->s) {
                if (memchr(account->s, '\0', account->len))
                        return fail(err, "%s%s contains a control character", prefix, key);
                if (names_check_account(account->s, &why) < 0)
                        return fail(err, "%s%s: %s", prefix, key, why.msg);
                memcpy(out, account->s, account->len + 1);
                return 0;
        }
        if (!default_account || !*default_account)
                return fail(err,
                            "no account: the event carries none (%s) and [kafka] account is "
                            "not set",
                            where);
        if (names_check_account(default_account, &why) < 0)
                return fail(err, "[kafka] account: %s", why.msg);
        memcpy(out, default_account, strlen(default_account) + 1);
        return 0;
}

/* A source id longer than SOURCE_ID_MAX becomes one that fits, the same for the same message
 * and different for different ones: a Kafka topic may have 249 characters, so
 * "kafka:<topic>/<partition>/<offset>" can be longer, and refusing it would make every message
 * of such a topic a dead letter. The beginning is kept (cut at a UTF-8 boundary) so the id
 * still says where the message came from. -ENOMEM when hashing fails. */
static int fold_source_id(const char *source_id, char out[SOURCE_ID_MAX + 1])
{
        unsigned char md[EVP_MAX_MD_SIZE];
        unsigned int md_len = 0;
        size_t keep = SOURCE_ID_MAX - 1 - FOLD_HEX;

        if (EVP_Digest(source_id, strlen(source_id), md, &md_len, EVP_sha256(), NULL) != 1 ||
            md_len < FOLD_HEX / 2)
                return -ENOMEM;
        while (keep > 0 && ((unsigned char)source_id[keep] & 0xc0) == 0x80)
                keep--;
        memcpy(out, source_id, keep);
        out[keep++] = '~';
        for (size_t i = 0; i < FOLD_HEX / 2; i++) {
                out[keep++] = "0123456789abcdef"[md[i] >> 4];
                out[keep++] = "0123456789abcdef"[md[i] & 15];
        }
        out[keep] = '\0';
        return 0;
}

static void set_id(struct event *e, const char *source_id, size_t index)
{
        if (index == 0)
                snprintf(e->id, sizeof(e->id), "%s", source_id);
        else
                snprintf(e->id, sizeof(e->id), "%s#%zu", source_id, index);
}

/* Fills everything but kind, account, id and raw from checked values. */
static void set_texts(struct event *e, const struct text *conversation, const struct text *reason)
{
        memcpy(e->conversation, conversation->s, conversation->len);
        e->conversation[conversation->len] = '\0';
        if (reason->s) {
                memcpy(e->close_reason, reason->s, reason->len);
                e->close_reason[reason->len] = '\0';
        }
}

/* Shape 1: {"general": {"convId", "cbotEventType", "serverTimestamp", "startTs",
 * "brandId"|"accountId"}, "end": {"closeReason"}}. */
static int parse_functions(json_t *root, const char *default_account, int64_t now_ms,
                           struct event *e, struct ch_error *err)
{
        json_t *general = NULL, *end = NULL;
        struct text conv, type, reason = {NULL, 0}, account;
        bool found;
        int64_t t;
        int r;

        r = get_object(root, "", "general", &general, err);
        if (r < 0)
                return r;
        if (!general)
                return fail(err, "general must be an object");
        r = get_text(general, "general.", "convId", &conv, err);
        if (r < 0)
                return r;
        if (!conv.s)
                return fail(err, "no conversation id (general.convId)");
        r = check_text("general.", "convId", &conv, EVENT_CONVERSATION_MAX, false, err);
        if (r < 0)
                return r;

        r = get_text(general, "general.", "cbotEventType", &type, err);
        if (r < 0)
                return r;
        if (!type.s)
                return fail(err, "no event type (general.cbotEventType)");
        e->kind = 0;
        for (size_t i = 0; i < sizeof(cbot_types) / sizeof(cbot_types[0]); i++)
                if (type.len == strlen(cbot_types[i].type) &&
                    memcmp(type.s, cbot_types[i].type, type.len) == 0)
                        e->kind = cbot_types[i].kind;
        if (e->kind == 0)
                return fail(err, "unknown cbotEventType '%.64s' (general.cbotEventType)", type.s);

        r = get_object(root, "", "end", &end, err);
        if (r < 0)
                return r;
        if (end) {
                r = get_text(end, "end.", "closeReason", &reason, err);
                if (r < 0)
                        return r;
                if (reason.s) {
                        r = check_text("end.", "closeReason", &reason, EVENT_REASON_MAX, true, err);
                        if (r < 0)
                                return r;
                }
        }

        /* brandId is what LivePerson calls the account everywhere else; accountId is accepted
         * for payloads that were re-shaped on the way. */
        r = get_text(general, "general.", "brandId", &account, err);
        if (r < 0)
                return r;
        if (account.s) {
                r = resolve_account("general.", "brandId", &account, default_account, NULL,
                                    e->account, err);
        } else {
                r = get_text(general, "general.", "accountId", &account, err);
                if (r < 0)
                        return r;
                r = resolve_account("general.", "accountId", &account, default_account,
                                    "general.brandId, general.accountId", e->account, err);
        }
        if (r < 0)
                return r;

        r = get_time(general, "general.", "serverTimestamp", &found, &t, err);
        if (r < 0)
                return r;
        if (!found) {
                r = get_time(general, "general.", "startTs", &found, &t, err);
                if (r < 0)
                        return r;
        }
        e->time_ms = found ? t : now_ms;
        set_texts(e, &conv, &reason);
        return 0;
}

/* One change of a notification: body.changes[index]. */
static int parse_change(json_t *change, size_t index, const char *default_account, int64_t now_ms,
                        struct event *e, struct ch_error *err)
{
        char at[64], details_at[96];
        json_t *result = NULL, *details = NULL;
        struct text conv, state, reason, account;
        bool meta_found, start_found;
        int64_t meta = 0, start = 0;
        int r;

        snprintf(at, sizeof(at), "body.changes[%zu].", index);
        if (!json_is_object(change))
                return fail(err, "body.changes[%zu] must be an object", index);
        r = get_object(change, at, "result", &result, err);
        if (r < 0)
                return r;
        if (!result)
                return fail(err, "no result (%sresult)", at);

        snprintf(at, sizeof(at), "body.changes[%zu].result.", index);
        r = get_text(result, at, "convId", &conv, err);
        if (r < 0)
                return r;
        if (!conv.s)
                return fail(err, "no conversation id (%sconvId)", at);
        r = check_text(at, "convId", &conv, EVENT_CONVERSATION_MAX, false, err);
        if (r < 0)
                return r;
        r = get_object(result, at, "conversationDetails", &details, err);
        if (r < 0)
                return r;
        if (!details)
                return fail(err, "no conversation details (%sconversationDetails)", at);

        snprintf(details_at, sizeof(details_at), "%sconversationDetails.", at);
        /* state is the conversation's; stage is only a fallback for producers that omit it. */
        r = get_text(details, details_at, "state", &state, err);
        if (r < 0)
                return r;
        if (!state.s) {
                r = get_text(details, details_at, "stage", &state, err);
                if (r < 0)
                        return r;
        }
        r = get_time(details, details_at, "metaDataLastUpdateTs", &meta_found, &meta, err);
        if (r < 0)
                return r;
        r = get_time(details, details_at, "startTs", &start_found, &start, err);
        if (r < 0)
                return r;
        if (state.s && state.len == 5 && memcmp(state.s, "CLOSE", 5) == 0)
                e->kind = EVENT_END;
        else if (!meta_found || (start_found && meta == start))
                e->kind = EVENT_NEW;
        else
                e->kind = EVENT_ROUTING;

        r = get_text(details, details_at, "closeReason", &reason, err);
        if (r < 0)
                return r;
        if (reason.s) {
                r = check_text(details_at, "closeReason", &reason, EVENT_REASON_MAX, true, err);
                if (r < 0)
                        return r;
        }
        r = get_text(details, details_at, "brandId", &account, err);
        if (r < 0)
                return r;
        {
                char where[128];

                snprintf(where, sizeof(where), "%sbrandId", details_at);
                r = resolve_account(details_at, "brandId", &account, default_account, where,
                                    e->account, err);
                if (r < 0)
                        return r;
        }
        e->time_ms = meta_found ? meta : start_found ? start : now_ms;
        set_texts(e, &conv, &reason);
        e->raw = json_incref(change);
        return 0;
}

/* Shape 2. All or nothing: one bad change makes the whole message a dead letter. A dead letter
 * is stored and redriven as the whole message, so queueing the good changes now would deliver
 * them twice on redrive; and a notification with a malformed change is more likely a producer
 * fault than a one-off. */
static int parse_notification(json_t *root, const char *source_id, const char *default_account,
                              int64_t now_ms, struct event_batch *ret, struct ch_error *err)
{
        struct event_batch b = {NULL, 0};
        json_t *body = NULL, *changes;
        size_t n;
        int r;

        r = get_object(root, "", "body", &body, err);
        if (r < 0)
                return r;
        if (!body)
                return fail(err, "no changes (body.changes)");
        changes = json_object_get(body, "changes");
        if (!changes || json_is_null(changes))
                return fail(err, "no changes (body.changes)");
        if (!json_is_array(changes))
                return fail(err, "body.changes must be an array");
        n = json_array_size(changes);
        if (n == 0)
                return fail(err, "body.changes is empty");
        if (n > EVENT_CHANGES_MAX)
                return fail(err, "body.changes has %zu changes, more than the limit of %d", n,
                            EVENT_CHANGES_MAX);

        b.events = calloc(n, sizeof(*b.events));
        if (!b.events) {
                ch_error_set(err, "out of memory");
                return -ENOMEM;
        }
        for (size_t i = 0; i < n; i++) {
                r = parse_change(json_array_get(changes, i), i, default_account, now_ms,
                                 &b.events[i], err);
                if (r < 0) {
                        event_batch_free(&b);
                        return r;
                }
                b.n++;
                set_id(&b.events[i], source_id, i);
        }
        *ret = b;
        return 0;
}

/* Shape 3: {"kind", "accountId", "conversationId", "closeReason", "time"}. */
static int parse_plain(json_t *root, const char *default_account, int64_t now_ms, struct event *e,
                       struct ch_error *err)
{
        struct text kind, conv, reason, account;
        char name[32];
        bool found;
        int64_t t;
        int r;

        r = get_text(root, "", "kind", &kind, err);
        if (r < 0)
                return r;
        if (!kind.s)
                return fail(err, "kind must be a string");
        e->kind = 0;
        if (kind.len < sizeof(name) && !memchr(kind.s, '\0', kind.len)) {
                memcpy(name, kind.s, kind.len + 1);
                e->kind = event_kind_from_string(name);
        }
        if (e->kind == 0)
                return fail(err,
                            "unknown kind '%.64s' (kind): expected conversation.end, "
                            "conversation.idle, conversation.new, conversation.routing, "
                            "conversation.participants or conversation.ttr",
                            kind.s);

        r = get_text(root, "", "conversationId", &conv, err);
        if (r < 0)
                return r;
        if (!conv.s)
                return fail(err, "no conversation id (conversationId)");
        r = check_text("", "conversationId", &conv, EVENT_CONVERSATION_MAX, false, err);
        if (r < 0)
                return r;
        r = get_text(root, "", "closeReason", &reason, err);
        if (r < 0)
                return r;
        if (reason.s) {
                r = check_text("", "closeReason", &reason, EVENT_REASON_MAX, true, err);
                if (r < 0)
                        return r;
        }
        r = get_text(root, "", "accountId", &account, err);
        if (r < 0)
                return r;
        r = resolve_account("", "accountId", &account, default_account, "accountId", e->account,
                            err);
        if (r < 0)
                return r;
        r = get_time(root, "", "time", &found, &t, err);
        if (r < 0)
                return r;
        e->time_ms = found ? t : now_ms;
        set_texts(e, &conv, &reason);
        return 0;
}

static const char *json_type_name(const json_t *v)
{
        switch (json_typeof(v)) {
        case JSON_ARRAY:
                return "an array";
        case JSON_STRING:
                return "a string";
        case JSON_INTEGER:
        case JSON_REAL:
                return "a number";
        case JSON_TRUE:
        case JSON_FALSE:
                return "a boolean";
        case JSON_NULL:
                return "null";
        default:
                return "an object";
        }
}

int event_parse(const char *data, size_t len, size_t max_bytes, const char *source_id,
                const char *default_account, int64_t now_ms, struct event_batch *ret,
                struct ch_error *err)
{
        char folded[SOURCE_ID_MAX + 1];
        json_error_t jerr;
        json_t *root, *type;
        struct event *e;
        int r;

        if (!source_id || !*source_id)
                return fail(err, "the message has no source id");
        if (strlen(source_id) > SOURCE_ID_MAX) {
                r = fold_source_id(source_id, folded);
                if (r < 0) {
                        ch_error_set(err, "cannot hash the message's source id");
                        return r;
                }
                source_id = folded;
        }
        if (len > max_bytes) {
                ch_error_set(err, "message of %zu bytes exceeds the limit of %zu bytes", len,
                             max_bytes);
                return -E2BIG;
        }
        if (len == 0)
                return fail(err, "empty message");

        /* Duplicate keys are refused because which one counts would be a guess; \u0000 inside
         * strings is valid JSON and only refused in the fields this file uses. */
        root =
            json_loadb(data, len, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY | JSON_ALLOW_NUL, &jerr);
        if (!root)
                return fail(err, "not valid JSON: %s at line %d column %d", jerr.text, jerr.line,
                            jerr.column);
        if (!json_is_object(root)) {
                r = fail(err, "not a conversation event: the message is %s, not a JSON object",
                         json_type_name(root));
                json_decref(root);
                return r;
        }

        type = json_object_get(root, "type");
        if (json_is_string(type) && json_string_length(type) == strlen(CQM_TYPE) &&
            memcmp(json_string_value(type), CQM_TYPE, strlen(CQM_TYPE)) == 0) {
                r = parse_notification(root, source_id, default_account, now_ms, ret, err);
                json_decref(root);
                return r;
        }

        e = calloc(1, sizeof(*e));
        if (!e) {
                ch_error_set(err, "out of memory");
                json_decref(root);
                return -ENOMEM;
        }
        if (json_object_get(root, "general"))
                r = parse_functions(root, default_account, now_ms, e, err);
        else if (json_object_get(root, "kind"))
                r = parse_plain(root, default_account, now_ms, e, err);
        else
                r = fail(err, "not a conversation event: expected a LivePerson Functions payload "
                              "(general), a " CQM_TYPE " or {\"kind\":…}");
        if (r < 0) {
                free(e);
                json_decref(root);
                return r;
        }
        set_id(e, source_id, 0);
        e->raw = root;
        *ret = (struct event_batch){e, 1};
        return 0;
}

void event_batch_free(struct event_batch *b)
{
        if (!b)
                return;
        for (size_t i = 0; i < b->n; i++)
                json_decref(b->events[i].raw);
        free(b->events);
        b->events = NULL;
        b->n = 0;
}
