/* The strict Prometheus text-format parser of support_prom.h. It follows the 0.0.4 format
 * (blanks between tokens, optional trailing comma in a label set, optional timestamp, "#"
 * comments) and turns what the format leaves undefined or merely discourages (a family in two
 * groups, a repeated series, a sample before its TYPE, unknown escapes, non-cumulative
 * buckets) into errors, because a scraper's behaviour on such input is not something a test
 * should accept from the daemon. */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "support_prom.h"

struct parser {
        struct prom_exposition *e;
        size_t cur; /* index of the family whose group is open; n_families = none */
        unsigned line;
        char *why;
        size_t why_size;
};

static int fail(struct parser *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int fail(struct parser *p, const char *fmt, ...)
{
        char msg[512];
        va_list ap;

        va_start(ap, fmt);
        vsnprintf(msg, sizeof(msg), fmt, ap);
        va_end(ap);
        if (p->why && p->why_size > 0)
                snprintf(p->why, p->why_size, "line %u: %s", p->line, msg);
        return -EINVAL;
}

const char *prom_type_name(enum prom_type t)
{
        static const char *const names[] = {"counter", "gauge", "histogram", "summary", "untyped"};

        return (unsigned)t < sizeof(names) / sizeof(names[0]) ? names[t] : "?";
}

static void sample_release(struct prom_sample *s)
{
        for (size_t i = 0; i < s->n_labels; i++) {
                free(s->labels[i].name);
                free(s->labels[i].value);
        }
        free(s->labels);
        free(s->name);
}

struct prom_exposition *prom_free(struct prom_exposition *e)
{
        if (!e)
                return NULL;
        for (size_t i = 0; i < e->n_families; i++) {
                struct prom_family *f = &e->families[i];

                for (size_t j = 0; j < f->n_samples; j++)
                        sample_release(&f->samples[j]);
                free(f->samples);
                free(f->name);
                free(f->help);
        }
        free(e->families);
        free(e);
        return NULL;
}

/* ---- lexical rules ---- */

static bool is_blank(char c)
{
        return c == ' ' || c == '\t';
}

static const char *skip_blanks(const char *s)
{
        while (is_blank(*s))
                s++;
        return s;
}

static bool is_alpha_(char c)
{
        return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
}

static bool is_digit(char c)
{
        return c >= '0' && c <= '9';
}

/* Length of the metric name at s ([a-zA-Z_:][a-zA-Z0-9_:]*), 0 when there is none. */
static size_t metric_name_len(const char *s)
{
        size_t n = 0;

        if (!is_alpha_(s[0]) && s[0] != ':')
                return 0;
        while (is_alpha_(s[n]) || is_digit(s[n]) || s[n] == ':')
                n++;
        return n;
}

/* Length of the label name at s ([a-zA-Z_][a-zA-Z0-9_]*), 0 when there is none. */
static size_t label_name_len(const char *s)
{
        size_t n = 0;

        if (!is_alpha_(s[0]))
                return 0;
        while (is_alpha_(s[n]) || is_digit(s[n]))
                n++;
        return n;
}

/* A float as the format writes one: a decimal number, NaN, +Inf or -Inf (hexadecimal and
 * other spellings Go's ParseFloat also takes are refused: nothing ctxhookd should print). */
static bool parse_float(const char *s, double *ret)
{
        const char *p = s;
        bool digits = false;

        if (strcmp(s, "NaN") == 0) {
                *ret = NAN;
                return true;
        }
        if (strcmp(s, "+Inf") == 0 || strcmp(s, "Inf") == 0) {
                *ret = INFINITY;
                return true;
        }
        if (strcmp(s, "-Inf") == 0) {
                *ret = -INFINITY;
                return true;
        }
        if (*p == '+' || *p == '-')
                p++;
        while (is_digit(*p)) {
                p++;
                digits = true;
        }
        if (*p == '.') {
                p++;
                while (is_digit(*p)) {
                        p++;
                        digits = true;
                }
        }
        if (!digits)
                return false;
        if (*p == 'e' || *p == 'E') {
                p++;
                if (*p == '+' || *p == '-')
                        p++;
                if (!is_digit(*p))
                        return false;
                while (is_digit(*p))
                        p++;
        }
        if (*p)
                return false;
        *ret = strtod(s, NULL);
        return true;
}

static bool parse_timestamp(const char *s, long long *ret)
{
        const char *p = s;
        char *end;

        if (*p == '-' || *p == '+')
                p++;
        if (!is_digit(*p))
                return false;
        errno = 0;
        *ret = strtoll(s, &end, 10);
        return errno == 0 && *end == '\0';
}

static bool valid_utf8(const unsigned char *s, size_t n)
{
        size_t i = 0;

        while (i < n) {
                unsigned c = s[i], more;
                uint32_t cp;

                if (c < 0x80) {
                        i++;
                        continue;
                }
                if ((c & 0xE0) == 0xC0) {
                        more = 1;
                        cp = c & 0x1F;
                } else if ((c & 0xF0) == 0xE0) {
                        more = 2;
                        cp = c & 0x0F;
                } else if ((c & 0xF8) == 0xF0) {
                        more = 3;
                        cp = c & 0x07;
                } else {
                        return false;
                }
                if (i + more >= n)
                        return false;
                for (unsigned k = 1; k <= more; k++) {
                        if ((s[i + k] & 0xC0) != 0x80)
                                return false;
                        cp = (cp << 6) | (s[i + k] & 0x3F);
                }
                if ((more == 1 && cp < 0x80) || (more == 2 && cp < 0x800) ||
                    (more == 3 && cp < 0x10000) || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
                        return false;
                i += more + 1;
        }
        return true;
}

/* Unescapes s[0..n) into a new string. in_label: the escapes of a label value (\\ \" \n);
 * otherwise those of HELP text (\\ \n). Returns 0, -EINVAL (*bad_at: the offending offset)
 * or -ENOMEM. */
static int unescape(const char *s, size_t n, bool in_label, char **ret, size_t *bad_at)
{
        char *out = malloc(n + 1), *o = out;

        if (!out)
                return -ENOMEM;
        for (size_t i = 0; i < n; i++) {
                if (s[i] != '\\') {
                        *o++ = s[i];
                        continue;
                }
                if (i + 1 < n && s[i + 1] == '\\')
                        *o++ = '\\';
                else if (i + 1 < n && s[i + 1] == 'n')
                        *o++ = '\n';
                else if (in_label && i + 1 < n && s[i + 1] == '"')
                        *o++ = '"';
                else {
                        free(out);
                        *bad_at = i;
                        return -EINVAL;
                }
                i++;
        }
        *o = '\0';
        if (!valid_utf8((const unsigned char *)out, (size_t)(o - out))) {
                free(out);
                *bad_at = 0;
                return -EILSEQ;
        }
        *ret = out;
        return 0;
}

/* ---- families ---- */

static bool has_suffix(const char *name, const char *base, const char *suffix)
{
        size_t n = strlen(base);

        return strncmp(name, base, n) == 0 && strcmp(name + n, suffix) == 0;
}

/* Whether a sample called name is one of family f's. */
static bool family_owns(const struct prom_family *f, const char *name)
{
        switch (f->type) {
        case PROM_HISTOGRAM:
                return has_suffix(name, f->name, "_bucket") || has_suffix(name, f->name, "_sum") ||
                       has_suffix(name, f->name, "_count");
        case PROM_SUMMARY:
                return strcmp(name, f->name) == 0 || has_suffix(name, f->name, "_sum") ||
                       has_suffix(name, f->name, "_count");
        case PROM_COUNTER:
        case PROM_GAUGE:
        case PROM_UNTYPED:
                break;
        }
        return strcmp(name, f->name) == 0;
}

static size_t family_index(const struct prom_exposition *e, const char *name)
{
        for (size_t i = 0; i < e->n_families; i++)
                if (strcmp(e->families[i].name, name) == 0)
                        return i;
        return e->n_families;
}

const struct prom_family *prom_family(const struct prom_exposition *e, const char *name)
{
        size_t i = family_index(e, name);

        return i < e->n_families ? &e->families[i] : NULL;
}

static unsigned first_line(const struct prom_family *f)
{
        unsigned line = 0;

        if (f->help_line)
                line = f->help_line;
        if (f->type_line && (!line || f->type_line < line))
                line = f->type_line;
        return line;
}

/* Makes the family named name (name[0..n)) the open group, creating it. */
static int open_family(struct parser *p, const char *name, size_t n)
{
        struct prom_exposition *e = p->e;
        struct prom_family *grown;
        char *copy = strndup(name, n);
        size_t i;

        if (!copy)
                return -ENOMEM;
        i = family_index(e, copy);
        if (i < e->n_families) {
                if (i != p->cur) {
                        fail(p, "family %s appears a second time (its group began on line %u)",
                             copy, first_line(&e->families[i]));
                        free(copy);
                        return -EINVAL;
                }
                free(copy);
                return 0;
        }
        for (i = 0; i < e->n_families; i++) {
                if (family_owns(&e->families[i], copy) && strcmp(e->families[i].name, copy) != 0) {
                        fail(p, "family %s has the name of samples of family %s", copy,
                             e->families[i].name);
                        free(copy);
                        return -EINVAL;
                }
        }
        grown = realloc(e->families, (e->n_families + 1) * sizeof(*grown));
        if (!grown) {
                free(copy);
                return -ENOMEM;
        }
        e->families = grown;
        e->families[e->n_families] = (struct prom_family){.name = copy, .type = PROM_UNTYPED};
        p->cur = e->n_families++;
        return 0;
}

/* "# HELP name text" and "# TYPE name type"; s is after the keyword. */
static int descriptor(struct parser *p, bool help, const char *s)
{
        static const char *const types[] = {"counter", "gauge", "histogram", "summary", "untyped"};
        struct prom_family *f;
        const char *name;
        size_t n, bad;
        int r;

        s = skip_blanks(s);
        name = s;
        n = metric_name_len(s);
        if (n == 0)
                return fail(p, "%s without a valid metric name", help ? "HELP" : "TYPE");
        s += n;
        if (*s && !is_blank(*s))
                return fail(p, "bad character '%c' in the metric name of %s", *s,
                            help ? "HELP" : "TYPE");
        r = open_family(p, name, n);
        if (r < 0)
                return r;
        f = &p->e->families[p->cur];
        if (help) {
                if (f->help_line)
                        return fail(p, "second HELP line of %s (the first is line %u)", f->name,
                                    f->help_line);
                if (f->n_samples > 0)
                        return fail(p, "HELP of %s after its samples", f->name);
                s = skip_blanks(s);
                r = unescape(s, strlen(s), false, &f->help, &bad);
                if (r == -EINVAL)
                        return fail(p, "HELP of %s: bad escape \"%.2s\"", f->name, s + bad);
                if (r == -EILSEQ)
                        return fail(p, "HELP of %s: not UTF-8", f->name);
                if (r < 0)
                        return r;
                f->help_line = p->line;
                return 0;
        }
        if (f->type_line)
                return fail(p, "second TYPE line of %s (the first is line %u)", f->name,
                            f->type_line);
        if (f->n_samples > 0)
                return fail(p, "TYPE of %s after its samples", f->name);
        s = skip_blanks(s);
        n = strcspn(s, " \t");
        if (*skip_blanks(s + n))
                return fail(p, "TYPE of %s: text after the type", f->name);
        for (size_t t = 0; t < sizeof(types) / sizeof(types[0]); t++) {
                if (strlen(types[t]) == n && strncmp(s, types[t], n) == 0) {
                        f->type = (enum prom_type)t;
                        f->type_line = p->line;
                        break;
                }
        }
        if (!f->type_line)
                return fail(p, "TYPE of %s: unknown type \"%.*s\"", f->name, (int)n, s);
        if (f->type == PROM_HISTOGRAM || f->type == PROM_SUMMARY) {
                for (size_t i = 0; i < p->e->n_families; i++)
                        if (i != p->cur && family_owns(f, p->e->families[i].name))
                                return fail(p, "the samples of %s would have the name of family %s",
                                            f->name, p->e->families[i].name);
        }
        return 0;
}

/* ---- samples ---- */

static bool same_labels(const struct prom_sample *a, const struct prom_sample *b, const char *skip)
{
        size_t na = 0, nb = 0;

        for (size_t i = 0; i < a->n_labels; i++) {
                if (skip && strcmp(a->labels[i].name, skip) == 0)
                        continue;
                na++;
                if (!prom_label(b, a->labels[i].name) ||
                    strcmp(prom_label(b, a->labels[i].name), a->labels[i].value) != 0)
                        return false;
        }
        for (size_t i = 0; i < b->n_labels; i++)
                if (!skip || strcmp(b->labels[i].name, skip) != 0)
                        nb++;
        return na == nb;
}

const char *prom_label(const struct prom_sample *s, const char *name)
{
        for (size_t i = 0; i < s->n_labels; i++)
                if (strcmp(s->labels[i].name, name) == 0)
                        return s->labels[i].value;
        return NULL;
}

static int add_label(struct parser *p, struct prom_sample *s, const char *name, size_t n,
                     const char *value, size_t vn)
{
        struct prom_label *grown;
        char *k, *v = NULL;
        size_t bad;
        int r;

        k = strndup(name, n);
        if (!k)
                return -ENOMEM;
        if (strncmp(k, "__", 2) == 0) {
                fail(p, "label name %s is reserved (starts with __)", k);
                free(k);
                return -EINVAL;
        }
        if (prom_label(s, k)) {
                fail(p, "label %s given twice", k);
                free(k);
                return -EINVAL;
        }
        r = unescape(value, vn, true, &v, &bad);
        if (r < 0) {
                if (r == -EINVAL)
                        fail(p, "label %s: bad escape \"%.2s\" in its value", k, value + bad);
                else if (r == -EILSEQ)
                        fail(p, "label %s: value not UTF-8", k);
                free(k);
                return r == -ENOMEM ? r : -EINVAL;
        }
        grown = realloc(s->labels, (s->n_labels + 1) * sizeof(*grown));
        if (!grown) {
                free(k);
                free(v);
                return -ENOMEM;
        }
        s->labels = grown;
        s->labels[s->n_labels++] = (struct prom_label){k, v};
        return 0;
}

/* The label set at s (just after "{"); *ret_end gets the position after "}". */
static int parse_labels(struct parser *p, struct prom_sample *smp, const char *s,
                        const char **ret_end)
{
        for (;;) {
                const char *name, *value;
                size_t n;
                int r;

                s = skip_blanks(s);
                if (*s == '}') {
                        *ret_end = s + 1;
                        return 0;
                }
                name = s;
                n = label_name_len(s);
                if (n == 0)
                        return fail(p, "expected a label name or \"}\" at \"%.10s\"", s);
                s = skip_blanks(s + n);
                if (*s != '=')
                        return fail(p, "expected \"=\" after label %.*s", (int)n, name);
                s = skip_blanks(s + 1);
                if (*s != '"')
                        return fail(p, "the value of label %.*s is not quoted", (int)n, name);
                value = ++s;
                while (*s && *s != '"') {
                        if (*s == '\\' && s[1])
                                s++;
                        s++;
                }
                if (*s != '"')
                        return fail(p, "the value of label %.*s is not terminated", (int)n, name);
                r = add_label(p, smp, name, n, value, (size_t)(s - value));
                if (r < 0)
                        return r;
                s = skip_blanks(s + 1);
                if (*s == ',')
                        s++;
                else if (*s != '}')
                        return fail(p, "expected \",\" or \"}\" after label %.*s", (int)n, name);
        }
}

/* The family that the sample named name belongs to: the open one, or an error saying why not. */
static int sample_family(struct parser *p, const char *name, struct prom_family **ret)
{
        struct prom_exposition *e = p->e;

        if (p->cur < e->n_families && family_owns(&e->families[p->cur], name)) {
                struct prom_family *f = &e->families[p->cur];

                if (!f->help_line)
                        return fail(p, "sample %s before a HELP line of %s", name, f->name);
                if (!f->type_line)
                        return fail(p, "sample %s before a TYPE line of %s", name, f->name);
                *ret = f;
                return 0;
        }
        for (size_t i = 0; i < e->n_families; i++)
                if (family_owns(&e->families[i], name))
                        return fail(p, "sample %s of family %s outside that family's group", name,
                                    e->families[i].name);
        if (p->cur < e->n_families && !e->families[p->cur].type_line)
                return fail(p, "sample %s under family %s, which has no TYPE (yet)", name,
                            e->families[p->cur].name);
        return fail(p, "sample %s without HELP and TYPE lines before it", name);
}

static int check_sample_labels(struct parser *p, const struct prom_family *f,
                               const struct prom_sample *s)
{
        bool bucket = f->type == PROM_HISTOGRAM && has_suffix(s->name, f->name, "_bucket");
        bool quantile = f->type == PROM_SUMMARY && strcmp(s->name, f->name) == 0;
        const char *le = prom_label(s, "le"), *q = prom_label(s, "quantile");
        double v;

        if (f->type == PROM_HISTOGRAM) {
                if (bucket && !le)
                        return fail(p, "%s without an le label", s->name);
                if (!bucket && le)
                        return fail(p, "%s with an le label", s->name);
                if (bucket && !parse_float(le, &v))
                        return fail(p, "%s: le=\"%s\" is not a number", s->name, le);
                if (bucket && isnan(v))
                        return fail(p, "%s: le is NaN", s->name);
        }
        if (f->type == PROM_SUMMARY) {
                if (quantile && (!q || !parse_float(q, &v) || !(v >= 0 && v <= 1)))
                        return fail(p, "%s needs a quantile label between 0 and 1", s->name);
                if (!quantile && q)
                        return fail(p, "%s with a quantile label", s->name);
        }
        if ((f->type == PROM_COUNTER || f->type == PROM_HISTOGRAM) && !(s->value >= 0) &&
            !(f->type == PROM_HISTOGRAM && has_suffix(s->name, f->name, "_sum")))
                return fail(p, "%s: %g is not a count (negative or NaN)", s->name, s->value);
        for (size_t i = 0; i < f->n_samples; i++)
                if (strcmp(f->samples[i].name, s->name) == 0 &&
                    same_labels(&f->samples[i], s, NULL))
                        return fail(p, "series %s repeats the labels of line %u", s->name,
                                    f->samples[i].line);
        return 0;
}

static int sample_line(struct parser *p, const char *s)
{
        struct prom_sample smp = {.line = p->line};
        struct prom_family *f = NULL;
        struct prom_sample *grown;
        char token[128];
        size_t n;
        int r;

        n = metric_name_len(s);
        if (n == 0) {
                r = fail(p, "expected a metric name at \"%.10s\"", s);
                goto out;
        }
        smp.name = strndup(s, n);
        if (!smp.name) {
                r = -ENOMEM;
                goto out;
        }
        s += n;
        if (*s && !is_blank(*s) && *s != '{') {
                r = fail(p, "bad character '%c' in metric name %s", *s, smp.name);
                goto out;
        }
        s = skip_blanks(s);
        if (*s == '{') {
                r = parse_labels(p, &smp, s + 1, &s);
                if (r < 0)
                        goto out;
                if (*s && !is_blank(*s)) {
                        r = fail(p, "%s: expected a blank after the labels", smp.name);
                        goto out;
                }
                s = skip_blanks(s);
        }
        n = strcspn(s, " \t");
        if (n == 0 || n >= sizeof(token)) {
                r = fail(p, "%s: no value", smp.name);
                goto out;
        }
        memcpy(token, s, n);
        token[n] = '\0';
        if (!parse_float(token, &smp.value)) {
                r = fail(p, "%s: \"%s\" is not a number", smp.name, token);
                goto out;
        }
        s = skip_blanks(s + n);
        if (*s) {
                n = strcspn(s, " \t");
                if (n >= sizeof(token)) {
                        r = fail(p, "%s: bad timestamp", smp.name);
                        goto out;
                }
                memcpy(token, s, n);
                token[n] = '\0';
                if (!parse_timestamp(token, &smp.timestamp)) {
                        r = fail(p, "%s: \"%s\" is not a timestamp", smp.name, token);
                        goto out;
                }
                smp.has_timestamp = true;
                if (*skip_blanks(s + n)) {
                        r = fail(p, "%s: text after the timestamp", smp.name);
                        goto out;
                }
        }
        r = sample_family(p, smp.name, &f);
        if (r < 0)
                goto out;
        r = check_sample_labels(p, f, &smp);
        if (r < 0)
                goto out;
        grown = realloc(f->samples, (f->n_samples + 1) * sizeof(*grown));
        if (!grown) {
                r = -ENOMEM;
                goto out;
        }
        f->samples = grown;
        f->samples[f->n_samples++] = smp;
        return 0;
out:
        sample_release(&smp);
        return r;
}

/* ---- whole-family rules ---- */

/* The buckets, _sum and _count of one label set (group) of a histogram, checked together. */
static int check_histogram_group(struct parser *p, const struct prom_family *f, size_t first)
{
        const struct prom_sample *key = &f->samples[first];
        double last_le = -INFINITY, last_count = 0, count = NAN;
        size_t buckets = 0;
        bool have_sum = false, have_count = false;

        for (size_t i = 0; i < f->n_samples; i++) {
                const struct prom_sample *s = &f->samples[i];
                double le;

                if (!same_labels(s, key, "le"))
                        continue;
                p->line = s->line;
                if (has_suffix(s->name, f->name, "_sum")) {
                        have_sum = true;
                        continue;
                }
                if (has_suffix(s->name, f->name, "_count")) {
                        have_count = true;
                        count = s->value;
                        continue;
                }
                parse_float(prom_label(s, "le"), &le);
                if (buckets > 0 && !(le > last_le))
                        return fail(p, "%s: le=\"%s\" does not increase", s->name,
                                    prom_label(s, "le"));
                if (buckets > 0 && s->value < last_count)
                        return fail(p,
                                    "%s{le=\"%s\"}: %g is less than the bucket before (%g): "
                                    "not cumulative",
                                    s->name, prom_label(s, "le"), s->value, last_count);
                last_le = le;
                last_count = s->value;
                buckets++;
        }
        p->line = key->line;
        if (buckets == 0)
                return fail(p, "histogram %s has a series without buckets", f->name);
        if (!isinf(last_le) || last_le < 0)
                return fail(p, "the buckets of histogram %s do not end with le=\"+Inf\"", f->name);
        if (!have_count)
                return fail(p, "histogram %s has no _count", f->name);
        if (!have_sum)
                return fail(p, "histogram %s has no _sum", f->name);
        if (count != last_count)
                return fail(p, "histogram %s: _count %g differs from the +Inf bucket %g", f->name,
                            count, last_count);
        return 0;
}

static int check_family(struct parser *p, const struct prom_family *f)
{
        p->line = first_line(f);
        if (!f->help_line)
                return fail(p, "family %s has no HELP line", f->name);
        if (!f->type_line)
                return fail(p, "family %s has no TYPE line", f->name);
        if (f->type != PROM_HISTOGRAM)
                return 0;
        for (size_t i = 0; i < f->n_samples; i++) {
                bool seen = false;
                int r;

                for (size_t j = 0; j < i && !seen; j++)
                        seen = same_labels(&f->samples[j], &f->samples[i], "le");
                if (seen)
                        continue;
                r = check_histogram_group(p, f, i);
                if (r < 0)
                        return r;
        }
        return 0;
}

/* ---- the text ---- */

static int parse_line(struct parser *p, const char *line)
{
        const char *s = skip_blanks(line);

        if (!*s)
                return 0;
        if (*s == '#') {
                s = skip_blanks(s + 1);
                if (strncmp(s, "HELP", 4) == 0 && (is_blank(s[4]) || !s[4]))
                        return descriptor(p, true, s + 4);
                if (strncmp(s, "TYPE", 4) == 0 && (is_blank(s[4]) || !s[4]))
                        return descriptor(p, false, s + 4);
                return 0; /* a comment */
        }
        return sample_line(p, s);
}

int prom_parse(const char *text, size_t len, struct prom_exposition **ret, char *why,
               size_t why_size)
{
        struct parser p = {.why = why, .why_size = why_size};
        const char *pos = text, *end = text + len;
        int r = 0;

        if (why && why_size)
                why[0] = '\0';
        p.e = calloc(1, sizeof(*p.e));
        if (!p.e)
                return -ENOMEM;
        p.cur = 0; /* n_families is 0: no group is open */
        if (memchr(text, '\0', len)) {
                r = fail(&p, "a NUL byte in the text");
                goto out;
        }
        while (pos < end) {
                const char *nl = memchr(pos, '\n', (size_t)(end - pos));
                char *line;

                p.line++;
                if (!nl) {
                        r = fail(&p, "the last line does not end with a line feed");
                        goto out;
                }
                line = strndup(pos, (size_t)(nl - pos));
                if (!line) {
                        r = -ENOMEM;
                        goto out;
                }
                if (strchr(line, '\r'))
                        r = fail(&p, "a carriage return in the line");
                else
                        r = parse_line(&p, line);
                free(line);
                if (r < 0)
                        goto out;
                pos = nl + 1;
        }
        for (size_t i = 0; i < p.e->n_families; i++) {
                r = check_family(&p, &p.e->families[i]);
                if (r < 0)
                        goto out;
        }
        *ret = p.e;
        return 0;
out:
        prom_free(p.e);
        return r;
}

const struct prom_sample *prom_sample(const struct prom_exposition *e, const char *name,
                                      const char *const *labels)
{
        for (size_t i = 0; i < e->n_families; i++) {
                const struct prom_family *f = &e->families[i];

                for (size_t j = 0; j < f->n_samples; j++) {
                        const struct prom_sample *s = &f->samples[j];
                        size_t n = 0;
                        bool all = true;

                        if (strcmp(s->name, name) != 0)
                                continue;
                        for (; labels && all && labels[n]; n += 2) {
                                const char *v = prom_label(s, labels[n]);

                                all = v && labels[n + 1] && strcmp(v, labels[n + 1]) == 0;
                        }
                        if (all && n / 2 == s->n_labels)
                                return s;
                }
        }
        return NULL;
}
