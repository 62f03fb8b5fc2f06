/* Which hooks an event triggers: a hook matches when the event's kind is in its `on` and, if
 * it lists close reasons, the event's close reason is one of them (case-sensitive, as
 * LivePerson sends them). Pure. */
#ifndef CTXHOOKD_ROUTER_H
#define CTXHOOKD_ROUTER_H

#include <stddef.h>

#include "ctxhookd/config.h"
#include "ctxhookd/event.h"

/* Writes the indexes (into hooks[]) of the hooks e triggers into ret, in config order, and
 * returns how many (at most n_hooks). */
size_t router_match(const struct config_hook *hooks, size_t n_hooks, const struct event *e,
                    size_t *ret);

#endif
