/* Human-readable error detail that a function hands back to the caller that
 * decides what to show. Library-like code fills it and never logs. */
#ifndef CTXHOOKD_ERROR_H
#define CTXHOOKD_ERROR_H

#include <stddef.h>

#define CH_ERROR_MAX 2048

struct ch_error {
        char msg[CH_ERROR_MAX];
};

/* Replaces err->msg with the formatted text (truncated to fit). err may be NULL. */
void ch_error_set(struct ch_error *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Appends one more line ("\n" + text) to err->msg, for callers that report every problem
 * at once (config validation). err may be NULL. */
void ch_error_append(struct ch_error *err, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

#endif
