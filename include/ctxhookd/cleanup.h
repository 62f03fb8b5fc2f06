/* systemd-style scope cleanup: _cleanup_(f) calls f(&var) when var leaves scope, and
 * TAKE_PTR(p) hands ownership on, leaving NULL behind. */
#ifndef CTXHOOKD_CLEANUP_H
#define CTXHOOKD_CLEANUP_H

#include <stdlib.h>

#define _cleanup_(f) __attribute__((cleanup(f)))

#define TAKE_PTR(p)                                                                                \
        __extension__({                                                                            \
                __typeof__(p) _tp = (p);                                                           \
                (p) = NULL;                                                                        \
                _tp;                                                                               \
        })

static inline void freep(void *p)
{
        free(*(void **)p);
}
#define _cleanup_free_ _cleanup_(freep)

#endif
