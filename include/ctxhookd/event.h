/* Conversation events: parsing and normalising one message (a Kafka record, a replay line, an
 * HTTP ingest body) in any accepted shape (DESIGN.md "Events") into normalised events. Pure:
 * no I/O, no logging, so it is unit-tested and fuzzed on its own.
 *
 * Accepted shapes:
 *  1. LivePerson Functions messaging payload: general.convId, general.cbotEventType,
 *     end.closeReason, general.serverTimestamp (or startTs) as the time.
 *  2. cqm.ExConversationChangeNotification: every body.changes[].result with convId and
 *     conversationDetails is one event (state CLOSE → conversation.end; otherwise
 *     conversation.new when it has no metaDataLastUpdateTs or that equals startTs, else
 *     conversation.routing); brandId is the account.
 *  3. Plain: {"kind":"conversation.end","accountId","conversationId","closeReason","time"}. */
#ifndef CTXHOOKD_EVENT_H
#define CTXHOOKD_EVENT_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "ctxhookd/error.h"

enum event_kind {
        EVENT_END = 1 << 0,          /* conversation.end */
        EVENT_IDLE = 1 << 1,         /* conversation.idle */
        EVENT_NEW = 1 << 2,          /* conversation.new */
        EVENT_ROUTING = 1 << 3,      /* conversation.routing */
        EVENT_PARTICIPANTS = 1 << 4, /* conversation.participants */
        EVENT_TTR = 1 << 5,          /* conversation.ttr */
};
#define EVENT_KIND_ALL 0x3f

#define EVENT_ID_MAX           256
#define EVENT_ACCOUNT_MAX      64
#define EVENT_CONVERSATION_MAX 256
#define EVENT_REASON_MAX       64
#define EVENT_CHANGES_MAX      1000 /* changes of one notification; more → dead letter */

struct event {
        enum event_kind kind;
        char id[EVENT_ID_MAX + 1];           /* source id, "#N" appended for change N > 0 */
        char account[EVENT_ACCOUNT_MAX + 1]; /* from the event, else the default account */
        char conversation[EVENT_CONVERSATION_MAX + 1];
        char close_reason[EVENT_REASON_MAX + 1]; /* "" when the event has none */
        int64_t time_ms;                         /* the event's own time, else now_ms */
        json_t *raw; /* owned reference: the event JSON; for a notification, that change */
};

struct event_batch {
        struct event *events;
        size_t n;
};

/* "conversation.end" … → the kind, or 0 when unknown. */
enum event_kind event_kind_from_string(const char *s);
/* The kind's name ("conversation.end"); "unknown" for anything else. */
const char *event_kind_name(enum event_kind k);

/* Parses one message of len bytes (not NUL-terminated; at most max_bytes) into ret (all or
 * nothing). source_id names the message (e.g. "conversation-events/0/42") and becomes the
 * events' ids. default_account (may be NULL or "") is used for events without one.
 * Returns 0 with ret->n ≥ 1, or -EINVAL (-E2BIG when over max_bytes) with the reason in err:
 * the message is then a dead letter. The reason names the problem ("not valid JSON: … at
 * column 7", "no conversation id (general.convId)", "unknown cbotEventType 'X'", …).
 * -ENOMEM (out of memory) is not the message's fault. */
int event_parse(const char *data, size_t len, size_t max_bytes, const char *source_id,
                const char *default_account, int64_t now_ms, struct event_batch *ret,
                struct ch_error *err);

/* Frees the events' raw JSON and the array; leaves an empty batch. Accepts an empty batch. */
void event_batch_free(struct event_batch *b);

#endif
