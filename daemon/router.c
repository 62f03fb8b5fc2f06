/* Which hooks an event triggers (router.h): the kind must be in the hook's `on` and, when the
 * hook filters by close reason, the event's close reason must be one of those listed. Pure and
 * allocation-free, because it runs once per event on the consumer thread. */
#include <string.h>

#include "ctxhookd/router.h"

/* A hook without a list, or with an empty one, does not filter: "close_reason =" in the config
 * means "any", not "none". An event without a close reason ("") never passes a filter. */
static int reason_matches(char *const *reasons, const char *reason)
{
        if (!reasons || !reasons[0])
                return 1;
        if (!reason[0])
                return 0;
        for (size_t i = 0; reasons[i]; i++)
                if (strcmp(reasons[i], reason) == 0)
                        return 1;
        return 0;
}

size_t router_match(const struct config_hook *hooks, size_t n_hooks, const struct event *e,
                    size_t *ret)
{
        size_t n = 0;

        for (size_t i = 0; i < n_hooks; i++) {
                if (!(hooks[i].on & (unsigned)e->kind))
                        continue;
                if (!reason_matches(hooks[i].close_reasons, e->close_reason))
                        continue;
                ret[n++] = i;
        }
        return n;
}
