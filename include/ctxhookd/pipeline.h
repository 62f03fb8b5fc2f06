/* The one path every event takes, whatever brought it (Kafka, replay, HTTP ingest, a redrive):
 * parse and normalise (event.h) → hooks it triggers (router.h) → gather the context each hook
 * asks for from the store → build the webhook body → queue the deliveries durably (or, for a
 * message that cannot be parsed, a dead letter), all before the caller acknowledges the
 * message.
 *
 * The webhook body is the LivePerson Functions invocation envelope:
 *   {"timestamp": <ms>, "headers": [],
 *    "payload": {"hook": "<name>",
 *                "event": {"id","kind","accountId","conversationId","closeReason","time"},
 *                "raw": <the event JSON; for a notification, that change>,
 *                "context": {"<ns>": {"namespace": {…}, "session": {…}}, …}}} */
#ifndef CTXHOOKD_PIPELINE_H
#define CTXHOOKD_PIPELINE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ctxhookd/config.h"
#include "ctxhookd/error.h"
#include "ctxhookd/event.h"
#include "ctxhookd/metrics.h"
#include "ctxhookd/store.h"

struct pipeline;

/* What happened to one message. */
struct pipeline_result {
        size_t events;     /* events in it (0 for a dead letter) */
        size_t deliveries; /* deliveries queued (or, with pipeline_build, built) */
        size_t ignored;    /* events no hook wanted */
        bool dead;         /* the message became a dead letter */
        bool duplicate;    /* dedup_key was seen before: nothing was done */
        char reason[256];  /* why it is a dead letter */
};

/* One built delivery (pipeline_build). */
struct pipeline_delivery {
        const struct config_hook *hook;
        char *webhook_id;
        char *body; /* the exact JSON that would be POSTed */
        size_t body_len;
        char *account;
        char *conversation;
        char *clear_namespaces; /* JSON array text, or NULL (see struct store_enqueue) */
};

/* cfg (its hooks, [kafka] account and max_message_bytes) must outlive the pipeline. metrics may
 * be NULL. */
int pipeline_new(struct store *store, struct metrics *metrics, const struct config *cfg,
                 struct pipeline **ret);
struct pipeline *pipeline_free(struct pipeline *p);

/* Makes cfg (hooks, [kafka] account and max_message_bytes) the one every later call uses. Waits
 * for the calls under way with the old config to finish, so the caller may free the old config
 * once this returns. Deliveries returned by pipeline_build point at the old config's hooks. */
void pipeline_reconfigure(struct pipeline *p, const struct config *cfg);

/* Processes one message durably. source names where it came from (for dead letters), dedup_key
 * (may be NULL) makes a repeat a no-op. Returns 0 once the outcome is recorded in the store
 * (deliveries queued, or nothing to do, or a dead letter): the caller may now acknowledge the
 * message. A negative code (-EIO: the store failed) means nothing was recorded: do not
 * acknowledge; try again later. */
int pipeline_process(struct pipeline *p, const char *source, const char *dedup_key,
                     const char *data, size_t len, int64_t now_ms, struct pipeline_result *ret);

/* One message of pipeline_process_batch (as pipeline_process's arguments). */
struct pipeline_message {
        const char *source;
        const char *dedup_key; /* may be NULL */
        const char *data;
        size_t len;
        const char *default_account; /* for events without one; NULL = [kafka] account */
};

/* pipeline_process for msgs[0..n), recorded in ONE store transaction (far cheaper per message
 * than one each): 0 once every outcome is recorded, ret_results[i] (n entries) saying what
 * happened to msgs[i]; a negative code means nothing of the batch was recorded. A dedup key
 * repeated within the batch makes the later message a duplicate. */
int pipeline_process_batch(struct pipeline *p, const struct pipeline_message *msgs, size_t n,
                           int64_t now_ms, struct pipeline_result *ret_results);

/* Like pipeline_process, but writes nothing: the deliveries it would queue are returned in
 * *ret_deliveries (*ret_n of them; free with pipeline_deliveries_free). For replay --dry-run. */
int pipeline_build(struct pipeline *p, const char *source, const char *data, size_t len,
                   int64_t now_ms, struct pipeline_result *ret,
                   struct pipeline_delivery **ret_deliveries, size_t *ret_n);
void pipeline_deliveries_free(struct pipeline_delivery *d, size_t n);

/* Parses data exactly as pipeline_process would (its limits; default_account as in struct
 * pipeline_message) and writes nothing: event_parse's result. For a caller that must refuse a
 * message it cannot take rather than dead-letter it (HTTP ingest). */
int pipeline_parse(struct pipeline *p, const char *source, const char *default_account,
                   const char *data, size_t len, int64_t now_ms, struct event_batch *ret,
                   struct ch_error *err);

#endif
