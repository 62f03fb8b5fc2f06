/* Filling struct ch_error: the one place error text is formatted for callers to show. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "ctxhookd/error.h"

#define STRINGIFY_(x) #x
#define STRINGIFY(x)  STRINGIFY_(x)

void ch_error_set(struct ch_error *err, const char *fmt, ...)
{
        va_list ap;

        if (!err)
                return;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
        va_end(ap);
}

/* Said once, as the last line, when lines no longer fit: never a silent cut. */
static const char more[] =
    "... more not shown (this report holds " STRINGIFY(CH_ERROR_MAX) " bytes): "
                                                                     "fix these and check again";

void ch_error_append(struct ch_error *err, const char *fmt, ...)
{
        char line[CH_ERROR_MAX];
        size_t len, n;
        va_list ap;

        if (!err)
                return;
        len = strnlen(err->msg, sizeof(err->msg));
        if (len >= sizeof(more) - 1 && strcmp(err->msg + len - (sizeof(more) - 1), more) == 0)
                return;
        va_start(ap, fmt);
        vsnprintf(line, sizeof(line), fmt, ap);
        va_end(ap);
        if (len == 0) {
                /* Even a first line that long leaves room for the notice. */
                n = strnlen(line, sizeof(err->msg) - sizeof(more) - 2);
                memcpy(err->msg, line, n);
                err->msg[n] = '\0';
                return;
        }
        n = strlen(line);
        /* Room is kept for the notice after every line, so it always fits. */
        if (len + 1 + n + 1 + sizeof(more) <= sizeof(err->msg))
                snprintf(err->msg + len, sizeof(err->msg) - len, "\n%s", line);
        else
                snprintf(err->msg + len, sizeof(err->msg) - len, "\n%s", more);
}
