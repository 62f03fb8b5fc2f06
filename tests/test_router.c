/* Unit tests of the router: kind masks against every kind, close-reason filters (absent, empty,
 * exact and case-sensitive), several hooks in config order, and the samples' README promise
 * (which conversations a notes-on-autoclose hook fires for) through the real event parser. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ctxhookd/event.h"
#include "ctxhookd/router.h"

static const enum event_kind all_kinds[] = {EVENT_END,     EVENT_IDLE,         EVENT_NEW,
                                            EVENT_ROUTING, EVENT_PARTICIPANTS, EVENT_TTR};

static struct config_hook hook(const char *name, unsigned on, char **reasons)
{
        return (struct config_hook){
            .name = (char *)name, .on = on, .close_reasons = reasons, .url = (char *)"http://x/"};
}

static struct event event_of(enum event_kind kind, const char *reason)
{
        struct event e = {.kind = kind};

        snprintf(e.close_reason, sizeof(e.close_reason), "%s", reason);
        snprintf(e.conversation, sizeof(e.conversation), "c");
        return e;
}

/* How many of hooks match e; the indexes go to idx. A sentinel past n_hooks catches writes
 * beyond the promised bound. */
static size_t match(const struct config_hook *hooks, size_t n, const struct event *e,
                    size_t idx[CONFIG_HOOKS_MAX + 1])
{
        size_t got;

        idx[n] = 0xdead;
        got = router_match(hooks, n, e, idx);
        cr_assert_leq(got, n);
        cr_assert_eq(idx[n], 0xdead, "router wrote past n_hooks");
        return got;
}

Test(router, kind_masks_against_every_kind)
{
        size_t idx[CONFIG_HOOKS_MAX + 1];

        /* Every mask of the six kinds: a hook matches exactly the kinds in its mask. */
        for (unsigned mask = 0; mask <= EVENT_KIND_ALL; mask++) {
                struct config_hook h = hook("h", mask, NULL);

                for (size_t k = 0; k < 6; k++) {
                        struct event e = event_of(all_kinds[k], "SYSTEM");
                        size_t want = (mask & all_kinds[k]) ? 1 : 0;

                        cr_assert_eq(match(&h, 1, &e, idx), want, "mask %#x kind %s", mask,
                                     event_kind_name(all_kinds[k]));
                        if (want)
                                cr_assert_eq(idx[0], 0);
                }
        }
}

Test(router, close_reason_filter)
{
        char *system_timeout[] = {"SYSTEM", "TIMEOUT", NULL};
        struct config_hook h = hook("notes", EVENT_END, system_timeout);
        size_t idx[CONFIG_HOOKS_MAX + 1];
        static const struct {
                const char *reason;
                size_t want;
        } cases[] = {
            {"SYSTEM", 1},  {"TIMEOUT", 1}, {"AGENT", 0},   {"CONSUMER", 0}, {"system", 0},
            {"SYSTEM ", 0}, {"SYS", 0},     {"SYSTEMS", 0}, {"", 0}, /* an event without a close
                                                                        reason never passes a filter
                                                                      */
        };

        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                struct event e = event_of(EVENT_END, cases[i].reason);

                cr_assert_eq(match(&h, 1, &e, idx), cases[i].want, "reason '%s'", cases[i].reason);
        }
        /* Not even a list holding "" lets an event without a close reason through. */
        {
                char *blank[] = {"", NULL};
                struct config_hook hb = hook("blank", EVENT_END, blank);
                struct event e = event_of(EVENT_END, "");

                cr_assert_eq(match(&hb, 1, &e, idx), 0);
        }
        /* The reason filter never widens the kinds. */
        {
                struct event e = event_of(EVENT_IDLE, "SYSTEM");

                cr_assert_eq(match(&h, 1, &e, idx), 0);
        }
}

Test(router, absent_or_empty_reason_list_means_any_reason)
{
        char *empty[] = {NULL};
        struct config_hook hooks[] = {hook("absent", EVENT_END, NULL),
                                      hook("empty", EVENT_END, empty)};
        size_t idx[CONFIG_HOOKS_MAX + 1];
        static const char *const reasons[] = {"", "AGENT", "SYSTEM", "whatever"};

        for (size_t i = 0; i < 4; i++) {
                struct event e = event_of(EVENT_END, reasons[i]);

                cr_assert_eq(match(hooks, 2, &e, idx), 2, "reason '%s'", reasons[i]);
                cr_assert_eq(idx[0], 0);
                cr_assert_eq(idx[1], 1);
        }
}

Test(router, several_hooks_in_config_order)
{
        char *agent[] = {"AGENT", NULL};
        char *system[] = {"SYSTEM", NULL};
        struct config_hook hooks[] = {
            hook("h0-any-end", EVENT_END, NULL),
            hook("h1-idle", EVENT_IDLE, NULL),
            hook("h2-agent-end", EVENT_END, agent),
            hook("h3-everything", EVENT_KIND_ALL, NULL),
            hook("h4-system-end-or-idle", EVENT_END | EVENT_IDLE, system),
            hook("h5-nothing", 0, NULL),
            hook("h6-any-end-again", EVENT_END, NULL),
        };
        size_t n = sizeof(hooks) / sizeof(hooks[0]);
        size_t idx[CONFIG_HOOKS_MAX + 1];
        struct event e;

        e = event_of(EVENT_END, "SYSTEM");
        cr_assert_eq(match(hooks, n, &e, idx), 4);
        cr_assert(idx[0] == 0 && idx[1] == 3 && idx[2] == 4 && idx[3] == 6);

        e = event_of(EVENT_END, "AGENT");
        cr_assert_eq(match(hooks, n, &e, idx), 4);
        cr_assert(idx[0] == 0 && idx[1] == 2 && idx[2] == 3 && idx[3] == 6);

        e = event_of(EVENT_IDLE, "");
        cr_assert_eq(match(hooks, n, &e, idx), 2);
        cr_assert(idx[0] == 1 && idx[1] == 3);

        e = event_of(EVENT_TTR, "");
        cr_assert_eq(match(hooks, n, &e, idx), 1);
        cr_assert_eq(idx[0], 3);

        /* A prefix of the hooks only ever yields indexes inside it. */
        e = event_of(EVENT_END, "SYSTEM");
        cr_assert_eq(match(hooks, 3, &e, idx), 1);
        cr_assert_eq(idx[0], 0);
        cr_assert_eq(match(hooks, 0, &e, idx), 0);
}

Test(router, every_hook_matches_at_the_maximum)
{
        struct config_hook hooks[CONFIG_HOOKS_MAX];
        size_t idx[CONFIG_HOOKS_MAX + 1];
        struct event e = event_of(EVENT_ROUTING, "");

        for (size_t i = 0; i < CONFIG_HOOKS_MAX; i++)
                hooks[i] = hook("h", i % 2 ? EVENT_ROUTING : EVENT_KIND_ALL, NULL);
        cr_assert_eq(match(hooks, CONFIG_HOOKS_MAX, &e, idx), CONFIG_HOOKS_MAX);
        for (size_t i = 0; i < CONFIG_HOOKS_MAX; i++)
                cr_assert_eq(idx[i], i);
}

/* data/events/README.md: a hook on = conversation.end, close_reason = SYSTEM,TIMEOUT fires for
 * sample-conv-1, sample-conv-4 and sample-conv-6, and for nothing else. */
Test(router, the_samples_notes_on_autoclose_hook)
{
        const char *src = getenv("CTXHOOKD_SOURCE_DIR");
        char *reasons[] = {"SYSTEM", "TIMEOUT", NULL};
        struct config_hook h = hook("notes-on-autoclose", EVENT_END, reasons);
        char path[4096], fired[256] = "", *line = NULL;
        size_t cap = 0, idx[CONFIG_HOOKS_MAX + 1], lines = 0, events = 0;
        ssize_t n;
        FILE *f;

        if (src) {
                snprintf(path, sizeof(path), "%s/tests/data/events/sample.jsonl", src);
        } else {
                const char *slash = strrchr(__FILE__, '/');

                cr_assert_not_null(slash, "set CTXHOOKD_SOURCE_DIR");
                snprintf(path, sizeof(path), "%.*s/data/events/sample.jsonl",
                         (int)(slash - __FILE__), __FILE__);
        }
        f = fopen(path, "r");
        cr_assert_not_null(f, "cannot open %s", path);
        while ((n = getline(&line, &cap, f)) > 0) {
                struct event_batch b = {NULL, 0};
                struct ch_error err;
                char source[32];

                snprintf(source, sizeof(source), "t/0/%zu", lines++);
                if (event_parse(line, (size_t)n, 1 << 20, source, "1", 0, &b, &err) < 0)
                        continue;
                for (size_t i = 0; i < b.n; i++, events++)
                        if (match(&h, 1, &b.events[i], idx) == 1) {
                                strcat(fired, b.events[i].conversation);
                                strcat(fired, " ");
                        }
                event_batch_free(&b);
        }
        free(line);
        fclose(f);
        cr_assert_eq(events, 6, "the samples hold six events");
        cr_assert_str_eq(fired, "sample-conv-1 sample-conv-4 sample-conv-6 ");
}
