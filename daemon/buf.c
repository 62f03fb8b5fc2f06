/* Capped growing buffer (see buf.h): every failure frees what was built. */
#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ctxhookd/buf.h"

void buf_init(struct buf *b, size_t max)
{
        b->data = NULL;
        b->len = 0;
        b->alloc = 0;
        b->max = max;
}

void buf_free(struct buf *b)
{
        free(b->data);
        buf_init(b, b->max);
}

void buf_reset(struct buf *b)
{
        b->len = 0;
        if (b->data)
                b->data[0] = '\0';
}

static int buf_grow(struct buf *b, size_t need)
{
        size_t want;
        char *p;

        if (need <= b->alloc)
                return 0;
        want = b->alloc ? b->alloc : 256;
        while (want < need)
                want = want > SIZE_MAX / 2 ? need : want * 2;
        if (want > b->max + 1)
                want = b->max + 1;
        p = realloc(b->data, want);
        if (!p) {
                buf_free(b);
                return -ENOMEM;
        }
        b->data = p;
        b->alloc = want;
        return 0;
}

int buf_append(struct buf *b, const void *p, size_t n)
{
        int r;

        if (n > b->max || b->len > b->max - n) {
                buf_free(b);
                return -E2BIG;
        }
        r = buf_grow(b, b->len + n + 1);
        if (r < 0)
                return r;
        if (n)
                memcpy(b->data + b->len, p, n);
        b->len += n;
        b->data[b->len] = '\0';
        return 0;
}

int buf_append_str(struct buf *b, const char *s)
{
        return buf_append(b, s, strlen(s));
}

int buf_printf(struct buf *b, const char *fmt, ...)
{
        char small[256];
        va_list ap;
        int n, r;

        va_start(ap, fmt);
        n = vsnprintf(small, sizeof(small), fmt, ap);
        va_end(ap);
        if (n < 0) {
                buf_free(b);
                return -EINVAL;
        }
        if ((size_t)n < sizeof(small))
                return buf_append(b, small, (size_t)n);
        if ((size_t)n > b->max || b->len > b->max - (size_t)n) {
                buf_free(b);
                return -E2BIG;
        }
        r = buf_grow(b, b->len + (size_t)n + 1);
        if (r < 0)
                return r;
        va_start(ap, fmt);
        vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
        va_end(ap);
        b->len += (size_t)n;
        return 0;
}

char *buf_take(struct buf *b, size_t *ret_len)
{
        char *p = b->data;

        if (ret_len)
                *ret_len = b->len;
        buf_init(b, b->max);
        return p;
}
