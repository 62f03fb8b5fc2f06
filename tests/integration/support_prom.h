/* A strict parser of the Prometheus text exposition format 0.0.4, for tests that scrape
 * /metrics and check what it says. Beyond the format itself it insists on what an operator's
 * tooling relies on: every family has exactly one HELP and one TYPE line, both before its first
 * sample; a family's lines form one group (a family never appears twice); every series is
 * unique; histograms have cumulative _bucket counts with strictly increasing `le` ending in
 * +Inf, whose count equals _count, and a _sum. Anything else is refused with the line and the
 * reason, so a test can show what was wrong with the daemon's output. */
#ifndef CTXHOOKD_IT_SUPPORT_PROM_H
#define CTXHOOKD_IT_SUPPORT_PROM_H

#include <stdbool.h>
#include <stddef.h>

enum prom_type {
        PROM_COUNTER,
        PROM_GAUGE,
        PROM_HISTOGRAM,
        PROM_SUMMARY,
        PROM_UNTYPED,
};

struct prom_label {
        char *name;
        char *value; /* unescaped */
};

struct prom_sample {
        char *name; /* the full sample name, e.g. "x_bucket" of family "x" */
        struct prom_label *labels;
        size_t n_labels;
        double value;
        bool has_timestamp;
        long long timestamp;
        unsigned line;
};

struct prom_family {
        char *name;
        char *help; /* unescaped */
        enum prom_type type;
        struct prom_sample *samples; /* in exposition order */
        size_t n_samples;
        unsigned help_line, type_line;
};

struct prom_exposition {
        struct prom_family *families; /* in exposition order */
        size_t n_families;
};

/* Parses len bytes of text. Returns 0 and *ret (free with prom_free), -EINVAL with
 * "line N: reason" in why (why_size bytes) when the text breaks a rule, or -ENOMEM. */
int prom_parse(const char *text, size_t len, struct prom_exposition **ret, char *why,
               size_t why_size);

/* Accepts NULL; returns NULL. */
struct prom_exposition *prom_free(struct prom_exposition *e);

/* The family named name, or NULL. */
const struct prom_family *prom_family(const struct prom_exposition *e, const char *name);

/* The sample named name (e.g. "x_count") whose label set is exactly labels: NULL-terminated
 * name, value, name, value… (NULL or {NULL}: no labels), in any order. NULL when absent. */
const struct prom_sample *prom_sample(const struct prom_exposition *e, const char *name,
                                      const char *const *labels);

/* The value of the label, or NULL. */
const char *prom_label(const struct prom_sample *s, const char *name);

/* "counter", "gauge", … */
const char *prom_type_name(enum prom_type t);

#endif
