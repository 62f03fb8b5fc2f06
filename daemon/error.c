/* Filling struct ch_error: the one place error text is formatted for callers to show. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "ctxhookd/error.h"

void ch_error_set(struct ch_error *err, const char *fmt, ...)
{
        va_list ap;

        if (!err)
                return;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
        va_end(ap);
}

void ch_error_append(struct ch_error *err, const char *fmt, ...)
{
        va_list ap;
        size_t len;

        if (!err)
                return;
        len = strnlen(err->msg, sizeof(err->msg));
        if (len > 0 && len + 1 < sizeof(err->msg))
                err->msg[len++] = '\n';
        if (len >= sizeof(err->msg) - 1)
                return;
        va_start(ap, fmt);
        vsnprintf(err->msg + len, sizeof(err->msg) - len, fmt, ap);
        va_end(ap);
}
