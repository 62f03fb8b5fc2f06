/* A growing byte buffer with a hard cap, in the spirit of curl's dynbuf: going over the cap
 * or running out of memory frees the buffer, so nothing is left half-built. Used for request
 * bodies, response builders and event payloads. */
#ifndef CTXHOOKD_BUF_H
#define CTXHOOKD_BUF_H

#include <stddef.h>

struct buf {
        char *data; /* always NUL-terminated when non-NULL (the NUL is not counted in len) */
        size_t len;
        size_t alloc;
        size_t max; /* len never exceeds max */
};

/* Sets up an empty buffer that may hold at most max bytes. Allocates nothing. */
void buf_init(struct buf *b, size_t max);

/* Appends n bytes. Returns 0, -E2BIG when the result would exceed b->max, or -ENOMEM.
 * On any error the buffer is freed and left empty (as after buf_init with the same max). */
int buf_append(struct buf *b, const void *p, size_t n);

/* Appends a NUL-terminated string. Same contract as buf_append. */
int buf_append_str(struct buf *b, const char *s);

/* Appends printf-formatted text. Same contract as buf_append. */
int buf_printf(struct buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Empties the buffer, keeping its memory. */
void buf_reset(struct buf *b);

/* Frees the memory; the buffer is empty afterwards and may be reused. */
void buf_free(struct buf *b);

/* Hands the data over to the caller (free() it); the buffer is empty afterwards. Returns NULL
 * for an empty buffer that never allocated. */
char *buf_take(struct buf *b, size_t *ret_len);

#endif
