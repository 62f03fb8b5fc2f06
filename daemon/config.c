/* ctxhookd.conf: every option is one row of `options[]` (section, key, type, bounds, default,
 * field, help), and every section one row of `sections[]`. Defaults, the INI file (read by
 * libinih), CTXHOOKD_<SECTION>_<KEY> environment overrides and config_print all walk those
 * tables, and every value from every origin goes through option_set(), so a new option is one
 * row. Problems are collected, not stopped at: the caller gets one line per problem, each
 * naming where the value came from (FILE:LINE, the environment variable, or the built-in
 * default), the section and the key. */
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <ini.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "ctxhookd/cleanup.h"
#include "ctxhookd/config.h"

/* Longest line accepted, without its line break. */
#define LINE_MAX_CHARS 4096
/* inih keeps at most this many characters of a section header (its MAX_SECTION - 1). */
#define SECTION_MAX_CHARS 49
/* A config file is a few kilobytes; anything near this is not one. */
#define FILE_MAX_BYTES (1024 * 1024)
/* config_print shows a set secret as this, never the secret itself. */
#define SECRET_MASK "********"

enum option_type {
        OPT_STRING,    /* char *; min/max bound the length */
        OPT_SECRET,    /* char *; "" = unset, else min/max bound the length; never echoed */
        OPT_INT,       /* int64_t; min/max bound the value */
        OPT_BOOL,      /* bool; true|false|yes|no|on|off|1|0 */
        OPT_ENUM,      /* char *; one of choices */
        OPT_HOST_PORT, /* char *; IPv4|localhost|[IPv6] ":" port 0…65535 */
};

struct option {
        const char *section;
        const char *key;
        enum option_type type;
        int64_t min, max;
        const char *unit;           /* OPT_INT: named next to the bounds in messages */
        const char *const *choices; /* OPT_ENUM: NULL-terminated */
        const char *def;            /* parsed by option_set like any other value */
        size_t offset;              /* of the field in the section's struct (see struct section) */
        const char *help;           /* one line; config_print shows it as a comment */
};

/* offsetof that only compiles when the field has the C type the option type stores, so a row
 * cannot point an integer option at a string field. */
#define FIELD(type, field, ctype)                                                                  \
        (offsetof(type, field) +                                                                   \
         0 * sizeof(                                                                               \
                 char[__builtin_types_compatible_p(__typeof__(((type *)0)->field), ctype) ? 1      \
                                                                                          : -1]))
#define CFG(field, ctype) FIELD(struct config, field, ctype)

#define STRING(s, k, field, lo, hi, d, h)                                                          \
        {                                                                                          \
                .section = s, .key = k, .type = OPT_STRING, .min = lo, .max = hi, .def = d,        \
                .offset = CFG(field, char *), .help = h                                            \
        }
#define SECRET(s, k, field, lo, hi, h)                                                             \
        {                                                                                          \
                .section = s, .key = k, .type = OPT_SECRET, .min = lo, .max = hi, .def = "",       \
                .offset = CFG(field, char *), .help = h                                            \
        }
#define INT(s, k, field, lo, hi, u, d, h)                                                          \
        {                                                                                          \
                .section = s, .key = k, .type = OPT_INT, .min = lo, .max = hi, .unit = u,          \
                .def = d, .offset = CFG(field, int64_t), .help = h                                 \
        }
#define BOOL(s, k, field, d, h)                                                                    \
        {                                                                                          \
                .section = s, .key = k, .type = OPT_BOOL, .def = d, .offset = CFG(field, bool),    \
                .help = h                                                                          \
        }
#define ENUM(s, k, field, c, d, h)                                                                 \
        {                                                                                          \
                .section = s, .key = k, .type = OPT_ENUM, .choices = c, .def = d,                  \
                .offset = CFG(field, char *), .help = h                                            \
        }
#define HOST_PORT(s, k, field, d, h)                                                               \
        {                                                                                          \
                .section = s, .key = k, .type = OPT_HOST_PORT, .def = d,                           \
                .offset = CFG(field, char *), .help = h                                            \
        }

static const char *const log_levels[] = {"error", "warning", "notice", "info", "debug", NULL};

static const struct option options[] = {
    HOST_PORT("api", "listen", api.listen, "127.0.0.1:8080",
              "address of the Context API: IPv4|localhost|[IPv6]:port; port 0 = any free port"),
    INT("api", "max_body", api.max_body, 1024, 67108864, "bytes", "1048576",
        "largest request body accepted; bigger ones get 413"),
    SECRET("api", "admin_token", api.admin_token, 16, 1024,
           "bearer token of the /admin endpoints, at least 16 characters; empty = disabled"),
    INT("api", "threads", api.threads, 0, 64, NULL, "0", "HTTP worker threads; 0 = one per CPU"),
    INT("api", "max_connections", api.max_connections, 1, 65536, NULL, "1024",
        "concurrent client connections; more are refused"),
    INT("api", "connection_timeout_s", api.connection_timeout_s, 1, 3600, "seconds", "30",
        "idle time after which a client connection is closed"),
    STRING("store", "path", store.path, 1, 4095, "/var/lib/ctxhookd/context.db",
           "SQLite database file, created if missing; relative = under the working directory"),
    INT("store", "busy_timeout_ms", store.busy_timeout_ms, 0, 600000, "milliseconds", "5000",
        "how long a statement waits for a lock held by another connection"),
    INT("store", "pool_size", store.pool_size, 1, 64, NULL, "8",
        "SQLite connections shared by concurrent requests"),
    INT("store", "sweep_interval_s", store.sweep_interval_s, 1, 86400, "seconds", "60",
        "how often expired properties and sessions are deleted"),
    INT("store", "cache_entries", store.cache_entries, 0, 1048576, NULL, "4096",
        "read cache slots for API keys and single properties (values up to 1 KiB); 0 = off"),
    ENUM("log", "level", log.level, log_levels, "info",
         "messages above this level are dropped: error|warning|notice|info|debug"),
};

/* A section of the file. A fixed section ([api]) fills struct config directly: its rows'
 * offsets are offsetof(struct config, …). A labelled section ([hook "name"], may repeat with
 * different names) sets `labelled` and `instance`, which finds or creates the struct the
 * label's options live in; its rows' offsets are relative to that struct, and the parser fills
 * a new instance with the rows' defaults before the file's values. A section that also takes
 * free-form keys ([kafka]: anything librdkafka knows) sets `extra_key`; keys not in the table
 * go there instead of being errors. */
struct section {
        const char *name;
        bool labelled;
        /* Returns 1 and *ret_base for a new instance, 0 for one seen before, or -ENOMEM. */
        int (*instance)(struct config *c, const char *label, void **ret_base);
        /* Returns 0, or -EINVAL with the reason in why, or -ENOMEM. */
        int (*extra_key)(struct config *c, void *base, const char *key, const char *value,
                         char *why, size_t why_size);
};

static const struct section sections[] = {
    {.name = "api"},
    {.name = "store"},
    {.name = "log"},
};

#define ELEMENTSOF(a) (sizeof(a) / sizeof((a)[0]))

/* Where a value came from, to start its error line. */
struct origin {
        const char *file; /* with line: the config file */
        unsigned line;
        const char *env; /* the environment variable */
};

/* A key already set from the file, to refuse a second assignment. */
struct seen {
        const void *base;
        const struct option *opt;
        unsigned line;
};

/* State of one load: the text being fed to inih line by line, and the problems found. */
struct load {
        struct config *config;
        const char *name;
        const char *pos; /* text not yet handed to inih */
        size_t left;
        unsigned line; /* the line inih is working on */
        const struct section *sec;
        void *base;
        char where[SECTION_MAX_CHARS + 8]; /* "[api]" or "[hook \"x\"]" for messages */
        bool in_section;                   /* a header has been read */
        bool skip_keys;                    /* the current header was reported as bad */
        unsigned syntax_line;              /* first line reported as a syntax error */
        struct seen *seen;
        size_t n_seen;
        unsigned n_problems;
        bool oom;
        struct ch_error *err;
};

static pthread_once_t inih_once = PTHREAD_ONCE_INIT;

/* Debian builds libinih with its options as run-time variables. They are set once, before the
 * first parse, rather than trusting the build defaults: an indented line must be a key and not
 * the continuation of the previous value, and "value ; note" must drop the note. Nothing else
 * in the program uses inih. */
static void inih_setup(void)
{
        ini_allow_multiline = false;
        ini_allow_inline_comments = true;
        ini_inline_comment_prefixes = ";";
        ini_start_comment_prefixes = ";#";
        ini_allow_bom = true;
        ini_allow_no_value = false;
        ini_stop_on_first_error = false;
        ini_use_stack = true;
        ini_allow_realloc = false;
        ini_max_line = LINE_MAX_CHARS + 3; /* room for "\r\n\0" */
}

static void problem(struct load *l, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void problem(struct load *l, const char *fmt, ...)
{
        char line[CH_ERROR_MAX];
        va_list ap;

        va_start(ap, fmt);
        vsnprintf(line, sizeof(line), fmt, ap);
        va_end(ap);
        ch_error_append(l->err, "%s", line);
        l->n_problems++;
}

/* Reports why a value is refused, prefixed with where it came from. */
static void value_problem(struct load *l, const struct origin *o, const struct option *opt,
                          const char *where, const char *why)
{
        if (o->env)
                problem(l, "environment %s: %s", o->env, why);
        else if (o->file)
                problem(l, "%s:%u: %s %s: %s", o->file, o->line, where, opt->key, why);
        else
                problem(l, "built-in default of [%s] %s: %s", opt->section, opt->key, why);
}

static void *field_of(void *base, const struct option *opt)
{
        return (char *)base + opt->offset;
}

static const void *const_field_of(const void *base, const struct option *opt)
{
        return (const char *)base + opt->offset;
}

static bool is_port(const char *s)
{
        size_t n = strlen(s);

        if (n == 0 || n > 5 || strspn(s, "0123456789") != n)
                return false;
        return strtol(s, NULL, 10) <= 65535;
}

/* IPv4 literal, "localhost" or a bracketed IPv6 literal, then ":" and a port. */
static bool is_host_port(const char *s)
{
        char host[LINE_MAX_CHARS + 1], buf[sizeof(struct in6_addr)];
        const char *end, *port;
        size_t n;

        if (strlen(s) >= sizeof(host))
                return false;
        if (s[0] == '[') {
                end = strchr(s, ']');
                if (!end || end[1] != ':')
                        return false;
                n = (size_t)(end - s - 1);
                port = end + 2;
                memcpy(host, s + 1, n);
                host[n] = '\0';
                return inet_pton(AF_INET6, host, buf) == 1 && is_port(port);
        }
        end = strrchr(s, ':');
        if (!end)
                return false;
        n = (size_t)(end - s);
        memcpy(host, s, n);
        host[n] = '\0';
        if (strcmp(host, "localhost") != 0 && inet_pton(AF_INET, host, buf) != 1)
                return false;
        return is_port(end + 1);
}

static int parse_bool(const char *s, bool *ret)
{
        static const char *const yes[] = {"true", "yes", "on", "1"};
        static const char *const no[] = {"false", "no", "off", "0"};

        for (size_t i = 0; i < ELEMENTSOF(yes); i++) {
                if (strcasecmp(s, yes[i]) == 0) {
                        *ret = true;
                        return 0;
                }
                if (strcasecmp(s, no[i]) == 0) {
                        *ret = false;
                        return 0;
                }
        }
        return -EINVAL;
}

static void describe_choices(const struct option *opt, char *out, size_t size)
{
        size_t len = 0;

        out[0] = '\0';
        for (size_t i = 0; opt->choices[i] && len < size; i++)
                len +=
                    (size_t)snprintf(out + len, size - len, "%s%s", i ? "|" : "", opt->choices[i]);
}

/* "bytes, 1024…67108864": what an integer option accepts, for messages and config_print. */
static void describe_bounds(const struct option *opt, char *out, size_t size)
{
        snprintf(out, size, "%s%s%" PRId64 "…%" PRId64, opt->unit ? opt->unit : "",
                 opt->unit ? ", " : "", opt->min, opt->max);
}

/* Rules every string option shares, so that config_print writes back what was read: no control
 * characters (a newline would end the line) and no " ;" (it would start a comment). */
static int check_text(const struct option *opt, const char *s, char *why, size_t why_size)
{
        bool secret = opt->type == OPT_SECRET;
        size_t n = strlen(s);

        for (size_t i = 0; i < n; i++) {
                if (iscntrl((unsigned char)s[i])) {
                        snprintf(why, why_size, "contains a control character");
                        return -EINVAL;
                }
                if (s[i] == ';' && i > 0 && isspace((unsigned char)s[i - 1])) {
                        snprintf(why, why_size, "contains \" ;\", which starts a comment");
                        return -EINVAL;
                }
        }
        if (secret && n == 0)
                return 0;
        if (secret && strcmp(s, SECRET_MASK) == 0) {
                snprintf(why, why_size,
                         "\"%s\" is how check-config hides a secret; write the secret itself",
                         SECRET_MASK);
                return -EINVAL;
        }
        if ((int64_t)n < opt->min || (int64_t)n > opt->max) {
                if (secret)
                        snprintf(why, why_size, "must be %" PRId64 "…%" PRId64 " characters long",
                                 opt->min, opt->max);
                else if (n == 0)
                        snprintf(why, why_size, "must not be empty");
                else
                        snprintf(why, why_size, "must be at most %" PRId64 " characters long",
                                 opt->max);
                return -EINVAL;
        }
        return 0;
}

/* Parses text as the option's type and stores it in its field, replacing what was there.
 * Returns 0, -EINVAL with the reason (without origin) in why and the field unchanged, or
 * -ENOMEM. */
static int option_set(const struct option *opt, void *base, const char *text, char *why,
                      size_t why_size)
{
        char bounds[256], *end, *copy, **str;
        int64_t v;
        bool b;
        int r;

        switch (opt->type) {
        case OPT_INT:
                describe_bounds(opt, bounds, sizeof(bounds));
                errno = 0;
                v = strtoll(text, &end, 10);
                if (text[0] == '\0' || isspace((unsigned char)text[0]) || *end != '\0') {
                        snprintf(why, why_size, "\"%.80s\" is not an integer (%s)", text, bounds);
                        return -EINVAL;
                }
                if (errno == ERANGE || v < opt->min || v > opt->max) {
                        snprintf(why, why_size, "%.80s is out of range (%s)", text, bounds);
                        return -EINVAL;
                }
                *(int64_t *)field_of(base, opt) = v;
                return 0;
        case OPT_BOOL:
                r = parse_bool(text, &b);
                if (r < 0) {
                        snprintf(why, why_size, "\"%.80s\" is not a boolean (true or false)", text);
                        return r;
                }
                *(bool *)field_of(base, opt) = b;
                return 0;
        case OPT_ENUM:
                r = -EINVAL;
                for (size_t i = 0; opt->choices[i]; i++)
                        if (strcmp(text, opt->choices[i]) == 0)
                                r = 0;
                if (r < 0) {
                        describe_choices(opt, bounds, sizeof(bounds));
                        snprintf(why, why_size, "\"%.80s\" is not one of %s", text, bounds);
                        return r;
                }
                break;
        case OPT_HOST_PORT:
                if (!is_host_port(text)) {
                        snprintf(why, why_size,
                                 "\"%.80s\" is not host:port (host: IPv4 address, localhost "
                                 "or [IPv6 address]; port 0…65535)",
                                 text);
                        return -EINVAL;
                }
                break;
        case OPT_STRING:
        case OPT_SECRET:
                r = check_text(opt, text, why, why_size);
                if (r < 0)
                        return r;
                break;
        }

        copy = strdup(text);
        if (!copy)
                return -ENOMEM;
        str = field_of(base, opt);
        if (*str && opt->type == OPT_SECRET)
                explicit_bzero(*str, strlen(*str));
        free(*str);
        *str = copy;
        return 0;
}

static bool is_string_type(enum option_type t)
{
        return t != OPT_INT && t != OPT_BOOL;
}

/* Sets the value and reports a refusal; false only when out of memory. */
static bool set_reporting(struct load *l, const struct origin *o, const struct option *opt,
                          void *base, const char *where, const char *text)
{
        char why[512];
        int r;

        r = option_set(opt, base, text, why, sizeof(why));
        if (r == -ENOMEM) {
                l->oom = true;
                return false;
        }
        if (r < 0)
                value_problem(l, o, opt, where, why);
        return true;
}

static void apply_defaults(struct load *l, const struct section *sec, void *base)
{
        const struct origin o = {0};

        for (size_t i = 0; i < ELEMENTSOF(options) && !l->oom; i++)
                if (strcmp(options[i].section, sec->name) == 0)
                        set_reporting(l, &o, &options[i], base, "", options[i].def);
}

/* CTXHOOKD_<SECTION>_<KEY>, upper case, anything but letters and digits as "_". */
static void env_name(const struct option *opt, char *out, size_t size)
{
        snprintf(out, size, "CTXHOOKD_%s_%s", opt->section, opt->key);
        for (char *p = out; *p; p++)
                *p = isalnum((unsigned char)*p) ? (char)toupper((unsigned char)*p) : '_';
}

static const struct section *section_find(const char *name)
{
        for (size_t i = 0; i < ELEMENTSOF(sections); i++)
                if (strcmp(sections[i].name, name) == 0)
                        return &sections[i];
        return NULL;
}

/* Environment values are trimmed like the file's, so both say the same thing. */
static void apply_environment(struct load *l)
{
        for (size_t i = 0; i < ELEMENTSOF(options) && !l->oom; i++) {
                const struct option *opt = &options[i];
                const struct section *sec = section_find(opt->section);
                _cleanup_free_ char *value = NULL;
                char name[128];
                const char *env;
                size_t n;

                if (!sec || sec->labelled)
                        continue;
                env_name(opt, name, sizeof(name));
                env = getenv(name);
                if (!env)
                        continue;
                while (isspace((unsigned char)*env))
                        env++;
                n = strlen(env);
                while (n > 0 && isspace((unsigned char)env[n - 1]))
                        n--;
                value = strndup(env, n);
                if (!value) {
                        l->oom = true;
                        return;
                }
                set_reporting(l, &(const struct origin){.env = name}, opt, l->config, "", value);
                if (opt->type == OPT_SECRET)
                        explicit_bzero(value, n);
        }
}

static const struct option *option_find(const struct section *sec, const char *key)
{
        for (size_t i = 0; i < ELEMENTSOF(options); i++)
                if (strcmp(options[i].section, sec->name) == 0 && strcmp(options[i].key, key) == 0)
                        return &options[i];
        return NULL;
}

/* Judges the header text inih read ("api" or "hook \"name\"") and makes it the section the
 * following keys go to. A bad header is reported once, here, and its keys are skipped. */
static void enter_section(struct load *l, const char *text)
{
        char name[SECTION_MAX_CHARS + 1], known[256];
        const char *label = NULL, *rest;
        size_t n, len = 0, label_len = 0;
        void *base;
        int r;

        l->in_section = true;
        l->skip_keys = true;
        l->sec = NULL;
        if (strlen(text) >= SECTION_MAX_CHARS) {
                problem(l, "%s:%u: [%.20s…]: section header longer than %d characters", l->name,
                        l->line, text, SECTION_MAX_CHARS - 1);
                return;
        }
        n = strcspn(text, " \t");
        memcpy(name, text, n);
        name[n] = '\0';
        rest = text + n + strspn(text + n, " \t");
        if (*rest) {
                label_len = strlen(rest);
                if (label_len < 3 || rest[0] != '"' || rest[label_len - 1] != '"' ||
                    memchr(rest + 1, '"', label_len - 2)) {
                        problem(l, "%s:%u: [%s]: expected [name] or [name \"label\"]", l->name,
                                l->line, text);
                        return;
                }
                label = rest + 1;
                label_len -= 2;
        }
        l->sec = section_find(name);
        if (!l->sec) {
                known[0] = '\0';
                for (size_t i = 0; i < ELEMENTSOF(sections) && len < sizeof(known); i++)
                        len += (size_t)snprintf(known + len, sizeof(known) - len, "%s%s",
                                                i ? ", " : "", sections[i].name);
                problem(l, "%s:%u: [%s]: unknown section (known: %s)", l->name, l->line, text,
                        known);
                return;
        }
        if (!l->sec->labelled && label) {
                problem(l, "%s:%u: [%s]: section [%s] takes no name", l->name, l->line, text, name);
                return;
        }
        if (l->sec->labelled && !label) {
                problem(l, "%s:%u: [%s]: section [%s] needs a name: [%s \"name\"]", l->name,
                        l->line, text, name, name);
                return;
        }
        snprintf(l->where, sizeof(l->where), "[%s]", text);
        base = l->config;
        if (l->sec->instance) {
                char label_copy[SECTION_MAX_CHARS];

                memcpy(label_copy, label, label_len);
                label_copy[label_len] = '\0';
                r = l->sec->instance(l->config, label_copy, &base);
                if (r < 0) {
                        l->oom = true;
                        return;
                }
                if (r > 0)
                        apply_defaults(l, l->sec, base);
        }
        l->base = base;
        l->skip_keys = false;
}

struct probe {
        unsigned keys;
        char section[SECTION_MAX_CHARS + 1];
};

static int probe_key(void *user, const char *section, const char *name, const char *value)
{
        struct probe *p = user;

        (void)name;
        (void)value;
        p->keys++;
        snprintf(p->section, sizeof(p->section), "%s", section);
        return 1;
}

/* inih reports only the first syntax error and says nothing about a header with no keys under
 * it. With continuation lines off, whether a line is well-formed does not depend on the lines
 * before it, so each line is also run through inih on its own, followed by a probe key whose
 * section is the header's name exactly as inih reads it. */
static void judge_line(struct load *l, const char *line)
{
        char text[LINE_MAX_CHARS + 16];
        struct probe p = {0};
        const char *s = line;
        int r;

        if (l->line == 1 && memcmp(s, "\xEF\xBB\xBF", 3) == 0)
                s += 3;
        s += strspn(s, " \t\r\n\v\f");
        snprintf(text, sizeof(text), "%s\nprobe=\n", line);
        r = ini_parse_string(text, probe_key, &p);
        if (r == 1) {
                if (!l->syntax_line)
                        l->syntax_line = l->line;
                problem(l, "%s:%u: syntax error: expected [section], key = value or a comment",
                        l->name, l->line);
                if (*s == '[') {
                        l->in_section = true;
                        l->skip_keys = true;
                }
                return;
        }
        if (*s == '[' && r == 0 && p.keys == 1)
                enter_section(l, p.section);
}

/* inih's line reader: hands over one line at a time, so the line inih is on is always l->line. A
 * line too long for inih's buffer is reported and replaced by an empty one rather than split. */
static char *read_line(char *buf, int size, void *stream)
{
        struct load *l = stream;
        const char *nl;
        size_t len, chars;

        if (l->left == 0)
                return NULL;
        nl = memchr(l->pos, '\n', l->left);
        len = nl ? (size_t)(nl - l->pos) + 1 : l->left;
        l->line++;
        chars = len;
        while (chars > 0 && (l->pos[chars - 1] == '\n' || l->pos[chars - 1] == '\r'))
                chars--;
        if (chars > LINE_MAX_CHARS || len + 1 > (size_t)size) {
                problem(l, "%s:%u: line longer than %d characters", l->name, l->line,
                        LINE_MAX_CHARS);
                snprintf(buf, (size_t)size, "\n");
        } else {
                memcpy(buf, l->pos, len);
                buf[len] = '\0';
                judge_line(l, buf);
        }
        l->pos += len;
        l->left -= len;
        return buf;
}

static int on_key(void *user, const char *section, const char *name, const char *value)
{
        struct load *l = user;
        const struct origin o = {.file = l->name, .line = l->line};
        const struct option *opt;
        struct seen *grown;
        char why[512];
        int r;

        (void)section; /* judge_line tracked it, with the verdict on its header */
        if (l->oom || l->skip_keys)
                return 1;
        if (!l->in_section) {
                problem(l, "%s:%u: %s: key outside of any section", l->name, l->line, name);
                return 1;
        }
        opt = option_find(l->sec, name);
        if (!opt && l->sec->extra_key) {
                r = l->sec->extra_key(l->config, l->base, name, value, why, sizeof(why));
                if (r == -ENOMEM)
                        l->oom = true;
                else if (r < 0)
                        problem(l, "%s:%u: %s %s: %s", l->name, l->line, l->where, name, why);
                return 1;
        }
        if (!opt) {
                problem(l, "%s:%u: %s %s: unknown key", l->name, l->line, l->where, name);
                return 1;
        }
        for (size_t i = 0; i < l->n_seen; i++) {
                if (l->seen[i].base == l->base && l->seen[i].opt == opt) {
                        problem(l, "%s:%u: %s %s: duplicate key (first set on line %u)", l->name,
                                l->line, l->where, name, l->seen[i].line);
                        return 1;
                }
        }
        grown = realloc(l->seen, (l->n_seen + 1) * sizeof(*l->seen));
        if (!grown) {
                l->oom = true;
                return 1;
        }
        l->seen = grown;
        l->seen[l->n_seen++] = (struct seen){.base = l->base, .opt = opt, .line = l->line};
        set_reporting(l, &o, opt, l->base, l->where, value);
        return 1;
}

struct config *config_free(struct config *c)
{
        if (!c)
                return NULL;
        for (size_t i = 0; i < ELEMENTSOF(options); i++) {
                char **str;

                if (!is_string_type(options[i].type))
                        continue;
                str = field_of(c, &options[i]);
                if (*str && options[i].type == OPT_SECRET)
                        explicit_bzero(*str, strlen(*str));
                free(*str);
        }
        free(c->source);
        free(c);
        return NULL;
}

static void config_freep(struct config **c)
{
        config_free(*c);
}

int config_load_string(const char *text, const char *name, struct config **ret,
                       struct ch_error *err)
{
        _cleanup_(config_freep) struct config *c = NULL;
        struct load l = {.err = err, .name = name ? name : "<string>"};
        int r;

        if (err)
                err->msg[0] = '\0';
        if (!text) {
                ch_error_set(err, "%s: no configuration text", l.name);
                return -EINVAL;
        }
        pthread_once(&inih_once, inih_setup);
        c = calloc(1, sizeof(*c));
        if (!c)
                return -ENOMEM;
        c->source = strdup(l.name);
        if (!c->source)
                return -ENOMEM;
        l.config = c;
        for (size_t i = 0; i < ELEMENTSOF(sections); i++)
                if (!sections[i].labelled)
                        apply_defaults(&l, &sections[i], c);

        l.pos = text;
        l.left = strlen(text);
        r = ini_parse_stream(read_line, &l, on_key, &l);
        free(l.seen);
        if (r == -2 || l.oom)
                return -ENOMEM;
        if (r > 0 && (unsigned)r != l.syntax_line)
                problem(&l, "%s:%d: syntax error", l.name, r);

        apply_environment(&l);
        if (l.oom)
                return -ENOMEM;
        if (l.n_problems > 0)
                return -EINVAL;
        *ret = TAKE_PTR(c);
        return 0;
}

static void closep(int *fd)
{
        if (*fd >= 0)
                close(*fd);
}

/* Reads the whole file, refusing what cannot be a config file (too big, a NUL byte). */
static int read_file(const char *path, char **ret, struct ch_error *err)
{
        _cleanup_(closep) int fd = -1;
        _cleanup_free_ char *text = NULL;
        size_t len = 0;
        ssize_t n;

        fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
                ch_error_set(err, "cannot read %s: %s", path, strerror(errno));
                return -errno;
        }
        text = malloc(FILE_MAX_BYTES + 1);
        if (!text)
                return -ENOMEM;
        for (;;) {
                n = read(fd, text + len, FILE_MAX_BYTES + 1 - len);
                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0) {
                        ch_error_set(err, "cannot read %s: %s", path, strerror(errno));
                        return -errno;
                }
                if (n == 0)
                        break;
                len += (size_t)n;
                if (len > FILE_MAX_BYTES) {
                        ch_error_set(err, "cannot read %s: larger than %d bytes", path,
                                     FILE_MAX_BYTES);
                        return -EFBIG;
                }
        }
        if (memchr(text, '\0', len)) {
                ch_error_set(err, "%s: contains a NUL byte; not a text file", path);
                return -EINVAL;
        }
        text[len] = '\0';
        *ret = TAKE_PTR(text);
        return 0;
}

int config_load(const char *path, struct config **ret, struct ch_error *err)
{
        _cleanup_free_ char *text = NULL;
        int r;

        if (!path)
                return config_load_string(config_embedded_text, "<embedded>", ret, err);
        if (err)
                err->msg[0] = '\0';
        r = read_file(path, &text, err);
        if (r < 0)
                return r;
        return config_load_string(text, path, ret, err);
}

const char *config_default_path(int *ret_explicit)
{
        const char *env = getenv(CONFIG_ENV_PATH);
        bool from_env = env && *env;

        if (ret_explicit)
                *ret_explicit = from_env;
        return from_env ? env : CONFIG_DEFAULT_PATH;
}

static int print_value(const struct config *c, const struct option *opt, FILE *out)
{
        const void *field = const_field_of(c, opt);
        const char *s;

        switch (opt->type) {
        case OPT_INT:
                return fprintf(out, "%s = %" PRId64 "\n", opt->key, *(const int64_t *)field);
        case OPT_BOOL:
                return fprintf(out, "%s = %s\n", opt->key, *(const bool *)field ? "true" : "false");
        case OPT_SECRET:
                s = *(char *const *)field;
                return fprintf(out, "%s =%s\n", opt->key, s && *s ? " " SECRET_MASK : "");
        case OPT_STRING:
        case OPT_ENUM:
        case OPT_HOST_PORT:
                break;
        }
        s = *(char *const *)field;
        return fprintf(out, "%s =%s%s\n", opt->key, s && *s ? " " : "", s ? s : "");
}

int config_print(const struct config *c, FILE *out)
{
        char bounds[256];
        int r;

        r = fprintf(out, "; effective configuration, from %s\n", c->source ? c->source : "?");
        for (size_t s = 0; s < ELEMENTSOF(sections) && r >= 0; s++) {
                if (sections[s].labelled)
                        continue;
                r = fprintf(out, "\n[%s]\n", sections[s].name);
                for (size_t i = 0; i < ELEMENTSOF(options) && r >= 0; i++) {
                        if (strcmp(options[i].section, sections[s].name) != 0)
                                continue;
                        if (options[i].type == OPT_INT) {
                                describe_bounds(&options[i], bounds, sizeof(bounds));
                                r = fprintf(out, "; %s (%s)\n", options[i].help, bounds);
                        } else {
                                r = fprintf(out, "; %s\n", options[i].help);
                        }
                        if (r >= 0)
                                r = print_value(c, &options[i], out);
                }
        }
        if (r < 0 || ferror(out))
                return -EIO;
        return 0;
}
