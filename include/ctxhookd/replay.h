/* `ctxhookd replay`: runs recorded events (JSON lines, plain or kcat -J envelopes) through the
 * very pipeline Kafka messages take (pipeline.h): with --dry-run it only builds the deliveries
 * and prints them, otherwise it queues them in the outbox and runs the delivery thread until
 * every one is delivered or dead. --expect compares this run's deliveries with a golden file.
 * The pieces that need no store (line reader, envelope detection, the comparison) are exposed
 * for the unit tests. */
#ifndef CTXHOOKD_REPLAY_H
#define CTXHOOKD_REPLAY_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

#include "ctxhookd/config.h"
#include "ctxhookd/error.h"

/* ---- reading a log: lines of at most max bytes, streamed ---- */

struct replay_reader;

/* Reads f (not closed by the reader) in lines of at most max bytes each. */
int replay_reader_new(FILE *f, size_t max, struct replay_reader **ret);
struct replay_reader *replay_reader_free(struct replay_reader *r);

/* The next line, without its "\n" or "\r\n": 1 with *ret_line (valid until the next call,
 * NUL-terminated, *ret_len bytes) and *ret_lineno (from 1), 0 at the end, -EIO on a read error
 * (-EINTR when interrupted by a signal). A line longer than max is not kept: *ret_line is
 * then NULL and *ret_len its full length, which the caller reports. Memory stays at max
 * bytes whatever the line lengths. */
int replay_reader_next(struct replay_reader *r, const char **ret_line, size_t *ret_len,
                       unsigned long *ret_lineno);

/* ---- kcat -J envelopes ---- */

/* Whether line is a kcat -J envelope: a JSON object with "payload" (a string, or null for a
 * message without a value) and "topic", "partition" or "offset". If so returns 1 with the
 * payload in *ret_payload (malloc'ed, *ret_len bytes, "" for null) and, when topic, partition
 * and offset are all there, "kafka:<topic>/<partition>/<offset>" in *ret_kafka_source
 * (malloc'ed; else NULL). Returns 0 for anything else (left to the event parser, which says
 * what is wrong with it), -ENOMEM. */
int replay_envelope(const char *line, size_t len, char **ret_payload, size_t *ret_len,
                    char **ret_kafka_source);

/* ---- comparing deliveries with a golden file ---- */

/* A set of deliveries {"hook", "url", "body"} keyed by (hook, body.payload.event.id). */
struct replay_set;

int replay_set_new(struct replay_set **ret);
struct replay_set *replay_set_free(struct replay_set *s);

/* Adds one delivery (a reference is taken). -EINVAL when it is not an object with a string
 * "hook" and a body with payload.event.id. */
int replay_set_add(struct replay_set *s, json_t *delivery);

/* Reads a file of such lines (empty lines skipped) into a new set. -EINVAL with the line
 * named in err when one is not a delivery; -errno when f cannot be read. */
int replay_set_load(FILE *f, const char *name, struct replay_set **ret, struct ch_error *err);

size_t replay_set_size(const struct replay_set *s);

enum replay_diff_kind {
        REPLAY_MISSING = 1, /* expected, not made */
        REPLAY_EXTRA,       /* made, not expected */
        REPLAY_CHANGED,     /* made differently: path names where */
};

struct replay_diff {
        enum replay_diff_kind kind;
        const char *hook;
        const char *conversation; /* body.payload.event.conversationId, "?" when absent */
        const char *event_id;
        const char *path; /* REPLAY_CHANGED: e.g. "body.payload.context.notes.session.x" */
};

/* Compares got with expected, ignoring body.timestamp (the moment of the build), and calls
 * report for every difference (every differing path of a changed delivery), in a stable
 * order. *ret_n gets the number of differences. Deliveries with the same key are paired in
 * the order they were added. */
int replay_compare(const struct replay_set *expected, const struct replay_set *got,
                   void (*report)(const struct replay_diff *d, void *userdata), void *userdata,
                   size_t *ret_n);

/* ---- the command ---- */

struct replay_options {
        bool dry_run;
        const char *expect;      /* golden file, or NULL */
        double rate;             /* events per second; 0 = as fast as possible */
        const char *const *logs; /* file names, "-" = stdin */
        size_t n_logs;
        FILE *out; /* --dry-run's deliveries */
        FILE *err; /* the summary and every problem */
};

/* Runs the replay and returns the process's exit status: 0 ok; 1 differences from --expect or
 * deliveries of this run dead-lettered; 64 usage; 65 an --expect file that is not deliveries;
 * 66 a LOG (or the --expect file) that cannot be opened; 69 the store cannot be opened; 74 an I/O
 * error; 75 interrupted by SIGINT or SIGTERM (what was queued stays queued). Installs
 * SIGINT/SIGTERM handlers while it runs. Malformed lines are reported with their line numbers and
 * counted; they never stop it. */
int replay_run(const struct config *cfg, const struct replay_options *opts);

#endif
