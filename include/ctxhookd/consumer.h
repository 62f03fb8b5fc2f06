/* The Kafka consumer thread (librdkafka high-level consumer, one consumer group): the messages
 * librdkafka already holds (up to 256 or 4 MiB) go through pipeline_process_batch() together,
 * and their offsets are stored (offset + 1, enable.auto.offset.store=false) only once the
 * pipeline has recorded their outcome in one transaction: at-least-once. A store failure
 * holds each partition at its first message of the batch and tries again after a back-off; when
 * the database itself is gone (store_health() fails), the assigned partitions are paused
 * instead, the store is asked again every second, and consumption resumes by itself when it
 * answers, with one log line at each of those two moments. When the outbox holds more than
 * [delivery] outbox_max deliveries, the assigned partitions are paused until it drains. brokers =
 * "embedded" starts librdkafka's mock cluster in-process and logs its bootstrap address, so a trial
 * needs no Kafka. */
#ifndef CTXHOOKD_CONSUMER_H
#define CTXHOOKD_CONSUMER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ctxhookd/config.h"
#include "ctxhookd/deliver.h"
#include "ctxhookd/error.h"
#include "ctxhookd/metrics.h"
#include "ctxhookd/pipeline.h"

struct consumer;

/* Creates the consumer (and the embedded cluster when asked), subscribes, starts the thread.
 * deliver (may be NULL) is woken after each queued batch. On failure err names the reason
 * (librdkafka's configuration errors name the key). */
int consumer_start(const struct config *cfg, struct pipeline *pipeline, struct store *store,
                   struct deliver *deliver, struct metrics *metrics, struct consumer **ret,
                   struct ch_error *err);

/* The bootstrap servers in use ("127.0.0.1:PORT" of the embedded cluster, else the config's). */
const char *consumer_bootstrap(const struct consumer *c);

/* Whether partitions are assigned (for /readyz). */
bool consumer_ready(const struct consumer *c);

/* Whether consumption is paused because the store cannot be reached; the reason store_health()
 * gave goes to why (may be NULL) then. Thread-safe (for STATUS=). */
bool consumer_store_unavailable(struct consumer *c, char *why, size_t why_size);

/* When (CLOCK_MONOTONIC, ms) the thread last went round its loop; it does several times a
 * second when healthy, also while paused or backing off (for the watchdog). */
int64_t consumer_last_progress_ms(const struct consumer *c);

/* A reload's [delivery] outbox_max: the back-pressure threshold from the next check on. Every
 * other option of the consumer needs a restart. */
void consumer_set_outbox_max(struct consumer *c, int64_t outbox_max);

/* Stops consuming, stores and commits the final offsets, closes the consumer (leaving the
 * group) and the embedded cluster. Accepts NULL; returns NULL. */
struct consumer *consumer_stop(struct consumer *c);

#endif
