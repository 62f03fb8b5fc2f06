/* ctxhookd.conf: every option is one row of `options[]` (section, key, type, bounds, default,
 * field, help), and every section one row of `sections[]`. Defaults, the INI file (read by
 * libinih), CTXHOOKD_<SECTION>_<KEY> environment overrides and config_print all walk those
 * tables, and every value from every origin goes through option_set(), so a new option is one
 * row. Labelled sections ([hook "name"]) are rows too, filling one struct per label, and [kafka]
 * also keeps keys that are not its rows for librdkafka. Problems are collected, not stopped at:
 * the caller gets one line per problem, each naming where the value came from (FILE:LINE, the
 * environment variable, or the built-in default), the section and the key. */
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <ini.h>
#include <inttypes.h>
#include <librdkafka/rdkafka.h>
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
#include "ctxhookd/event.h"
#include "ctxhookd/names.h"
#include "ctxhookd/sign.h"
#include "ctxhookd/store.h"

/* Longest line accepted, without its line break. */
#define LINE_MAX_CHARS 4096
/* Longest section header text accepted (between the brackets): room for [hook "<64 chars>"].
 * inih itself keeps only 49 characters of it, so the header is taken from the line instead. */
#define SECTION_MAX_CHARS 100
/* A config file is a few kilobytes; anything near this is not one. */
#define FILE_MAX_BYTES (1024 * 1024)
/* config_print shows a set secret as this, never the secret itself. */
#define SECRET_MASK "********"
/* librdkafka properties in [kafka] beyond ctxhookd's own keys. */
#define KAFKA_EXTRA_MAX 128
#define HOOK_NAME_MAX   64

enum option_type {
        OPT_STRING,    /* char *; min/max bound the length */
        OPT_SECRET,    /* char *; "" = unset, else min/max bound the length; never echoed */
        OPT_INT,       /* int64_t; min/max bound the value */
        OPT_BOOL,      /* bool; true|false|yes|no|on|off|1|0 */
        OPT_ENUM,      /* char *; one of choices */
        OPT_HOST_PORT, /* char *; IPv4|localhost|[IPv6] ":" port 0…65535 */
        OPT_LIST,      /* char **; comma-separated, NULL-terminated; "" = NULL; rule per item */
        OPT_KINDS,     /* unsigned; comma-separated event kinds as enum event_kind bits */
};

/* An extra rule for a value (OPT_STRING, OPT_SECRET: when not empty) or for each item of an
 * OPT_LIST. Returns 0, or -EINVAL with the reason in why; for a secret, never echoing it. */
typedef int (*value_rule)(const char *s, char *why, size_t why_size);

struct option {
        const char *section;
        const char *key;
        enum option_type type;
        int64_t min, max;
        const char *unit;           /* OPT_INT: named next to the bounds in messages */
        const char *const *choices; /* OPT_ENUM: NULL-terminated */
        value_rule rule;            /* NULL = the type's checks are all */
        /* OPT_STRING that may hold a secret part (a password in a connection URL): how it is
         * shown by config_print and in reload notes, with that part masked. NULL = as it is. */
        void (*redact)(const char *value, char *out, size_t size);
        const char *def;  /* parsed by option_set like any other value; NULL = the key
                             is required (file or environment) */
        size_t offset;    /* of the field in the section's struct (see struct section) */
        const char *help; /* one line; config_print shows it as a comment */
};

/* offsetof that only compiles when the field has the C type the option type stores, so a row
 * cannot point an integer option at a string field. */
#define FIELD(type, field, ctype)                                                                  \
        (offsetof(type, field) +                                                                   \
         0 * sizeof(                                                                               \
                 char[__builtin_types_compatible_p(__typeof__(((type *)0)->field), ctype) ? 1      \
                                                                                          : -1]))
/* The struct the rows below fill: struct config for fixed sections; options[] redefines it
 * before the rows of a labelled section. */
#define ROW_STRUCT        struct config
#define ROW(field, ctype) FIELD(ROW_STRUCT, field, ctype)

#define STRING(s, k, field, lo, hi, d, h) STRING_RULE(s, k, field, lo, hi, d, NULL, h)
#define STRING_RULE(s, k, field, lo, hi, d, r, h)                                                  \
        {                                                                                          \
                .section = s, .key = k, .type = OPT_STRING, .min = lo, .max = hi, .rule = r,       \
                .def = d, .offset = ROW(field, char *), .help = h                                  \
        }
/* A string shown through redact() wherever it is printed. */
#define STRING_REDACTED(s, k, field, lo, hi, d, r, show, h)                                        \
        {                                                                                          \
                .section = s, .key = k, .type = OPT_STRING, .min = lo, .max = hi, .rule = r,       \
                .redact = show, .def = d, .offset = ROW(field, char *), .help = h                  \
        }
#define SECRET(s, k, field, lo, hi, h) SECRET_RULE(s, k, field, lo, hi, "", NULL, h)
#define SECRET_RULE(s, k, field, lo, hi, d, r, h)                                                  \
        {                                                                                          \
                .section = s, .key = k, .type = OPT_SECRET, .min = lo, .max = hi, .rule = r,       \
                .def = d, .offset = ROW(field, char *), .help = h                                  \
        }
#define INT(s, k, field, lo, hi, u, d, h)                                                          \
        {                                                                                          \
                .section = s, .key = k, .type = OPT_INT, .min = lo, .max = hi, .unit = u,          \
                .def = d, .offset = ROW(field, int64_t), .help = h                                 \
        }
#define BOOL(s, k, field, d, h)                                                                    \
        {                                                                                          \
                .section = s, .key = k, .type = OPT_BOOL, .def = d, .offset = ROW(field, bool),    \
                .help = h                                                                          \
        }
#define ENUM(s, k, field, c, d, h)                                                                 \
        {                                                                                          \
                .section = s, .key = k, .type = OPT_ENUM, .choices = c, .def = d,                  \
                .offset = ROW(field, char *), .help = h                                            \
        }
#define HOST_PORT(s, k, field, d, h)                                                               \
        {                                                                                          \
                .section = s, .key = k, .type = OPT_HOST_PORT, .def = d,                           \
                .offset = ROW(field, char *), .help = h                                            \
        }
#define LIST(s, k, field, r, h)                                                                    \
        {                                                                                          \
                .section = s, .key = k, .type = OPT_LIST, .rule = r, .def = "",                    \
                .offset = ROW(field, char **), .help = h                                           \
        }
#define KINDS(s, k, field, d, h)                                                                   \
        {                                                                                          \
                .section = s, .key = k, .type = OPT_KINDS, .def = d,                               \
                .offset = ROW(field, unsigned), .help = h                                          \
        }

static int rule_brokers(const char *s, char *why, size_t why_size);
static int rule_topic(const char *s, char *why, size_t why_size);
static int rule_account(const char *s, char *why, size_t why_size);
static int rule_close_reason(const char *s, char *why, size_t why_size);
static int rule_namespace(const char *s, char *why, size_t why_size);
static int rule_url(const char *s, char *why, size_t why_size);
static int rule_signing_secret(const char *s, char *why, size_t why_size);
static int rule_store_url(const char *s, char *why, size_t why_size);

static const char *const log_levels[] = {"error", "warning", "notice", "info", "debug", NULL};

static const struct option options[] = {
    HOST_PORT("api", "listen", api.listen, "127.0.0.1:8080",
              "address of the Context API: IPv4|localhost|[IPv6]:port; port 0 = any free port"),
    INT("api", "max_body", api.max_body, 1024, 67108864, "bytes", "1048576",
        "largest request body accepted; bigger ones get 413"),
    SECRET("api", "admin_token", api.admin_token, 16, 1024,
           "bearer token of the /admin endpoints, at least 16 characters; empty = disabled"),
    INT("api", "threads", api.threads, 0, 64, NULL, "0",
        "HTTP worker threads; 0 = one per CPU (postgresql: [store] pool_size, at least one per "
        "CPU)"),
    INT("api", "max_connections", api.max_connections, 1, 65536, NULL, "1024",
        "concurrent client connections; more are refused"),
    INT("api", "connection_timeout_s", api.connection_timeout_s, 1, 3600, "seconds", "30",
        "idle time after which a client connection is closed"),
    ENUM("store", "backend", store.backend, store_backend_names, "sqlite",
         "where the data lives: sqlite (one file on this host) | postgresql (a database that "
         "several ctxhookd instances share)"),
    STRING("store", "path", store.path, 1, 4095, "/var/lib/ctxhookd/context.db",
           "SQLite database file (backend = sqlite), created if missing; relative = under the "
           "working directory"),
    STRING_REDACTED("store", "url", store.url, 0, 4095, "", rule_store_url, store_url_redact,
                    "PostgreSQL connection string (backend = postgresql, required there): "
                    "postgresql://user@host:port/database or libpq key=value pairs; a password "
                    "is shown as ********"),
    INT("store", "busy_timeout_ms", store.busy_timeout_ms, 0, 600000, "milliseconds", "5000",
        "how long a statement waits for a lock held by another connection"),
    INT("store", "pool_size", store.pool_size, 1, 64, NULL, "8",
        "database connections of this instance, shared by concurrent requests"),
    INT("store", "sweep_interval_s", store.sweep_interval_s, 1, 86400, "seconds", "60",
        "how often expired properties and sessions are deleted"),
    INT("store", "cache_entries", store.cache_entries, 0, 1048576, NULL, "4096",
        "read cache slots for API keys and single properties (values up to 1 KiB); 0 = off"),
    ENUM("log", "level", log.level, log_levels, "info",
         "messages above this level are dropped: error|warning|notice|info|debug"),
    STRING_RULE("kafka", "brokers", kafka.brokers, 0, 4095, "", rule_brokers,
                "bootstrap servers host:port,...; \"embedded\" = an in-process broker for "
                "trials; empty = no Kafka consumer"),
    STRING_RULE("kafka", "topic", kafka.topic, 1, 249, "conversation-events", rule_topic,
                "topic the conversation events are read from"),
    STRING("kafka", "group", kafka.group, 1, 255, "ctxhookd",
           "consumer group; instances with the same group share the partitions"),
    STRING_RULE("kafka", "account", kafka.account, 0, 64, "", rule_account,
                "account id for events that carry none (Functions payloads); empty = none"),
    INT("kafka", "max_message_bytes", kafka.max_message_bytes, 1024, 67108864, "bytes", "1048576",
        "larger messages become dead letters"),
    INT("delivery", "max_in_flight", delivery.max_in_flight, 1, 1024, NULL, "64",
        "webhook calls in progress at once"),
    INT("delivery", "outbox_max", delivery.outbox_max, 100, 100000000, NULL, "100000",
        "queued deliveries above which consuming pauses"),
    INT("delivery", "retry_base_ms", delivery.retry_base_ms, 10, 3600000, "milliseconds", "1000",
        "first back-off after a failed attempt; doubles per attempt, with jitter"),
    INT("delivery", "retry_max_ms", delivery.retry_max_ms, 100, 86400000, "milliseconds", "300000",
        "longest back-off (also caps Retry-After); at least retry_base_ms"),
    INT("delivery", "retention_s", delivery.retention_s, 60, 31536000, "seconds", "604800",
        "how long delivered events are remembered to drop a second copy"),
#undef ROW_STRUCT
#define ROW_STRUCT struct config_hook
    KINDS("hook", "on", on, NULL,
          "event kinds, comma separated: conversation.end|idle|new|routing|participants|ttr "
          "(required)"),
    LIST("hook", "close_reason", close_reasons, rule_close_reason,
         "only events with one of these close reasons, comma separated (SYSTEM,TIMEOUT,AGENT,"
         "CONSUMER...); empty = any"),
    LIST("hook", "namespaces", namespaces, rule_namespace,
         "Context API namespaces whose session of the conversation is sent along, comma "
         "separated; empty = none"),
    STRING_RULE("hook", "url", url, 1, 2048, NULL, rule_url,
                "where the event is POSTed: http:// or https:// URL (required)"),
    SECRET_RULE("hook", "secret", secret, 1, 1024, NULL, rule_signing_secret,
                "Standard Webhooks signing key whsec_<base64 of 16-64 bytes> (required)"),
    SECRET("hook", "bearer_token", bearer_token, 1, 2048,
           "sent as Authorization: Bearer; empty = no Authorization header"),
    INT("hook", "timeout_ms", timeout_ms, 100, 300000, "milliseconds", "5000",
        "time one attempt may take"),
    INT("hook", "max_attempts", max_attempts, 1, 100, NULL, "8",
        "attempts before the delivery becomes a dead letter"),
    BOOL("hook", "clear_after", clear_after, "false",
         "true: delete the gathered sessions of the conversation once delivered"),
#undef ROW_STRUCT
};

/* A section of the file. A fixed section ([api]) fills struct config directly: its rows'
 * offsets are offsetof(struct config, …). A labelled section ([hook "name"], may repeat with
 * different names) sets `labelled`, `instance`, which creates the struct the label's options
 * live in, and `nth`, which walks those structs; its rows' offsets are relative to that struct,
 * and the parser fills a new instance with the rows' defaults before the file's values. A label
 * may appear once. A section that also takes free-form keys ([kafka]: anything librdkafka
 * knows) sets `extra_key` (and `print_extra`); keys not in the table go there instead of being
 * errors. `release` frees what instance and extra_key allocated besides the rows' fields. */
struct section {
        const char *name;
        bool labelled;
        /* Returns 1 and *ret_base for a new instance, 0 and *ret_base for one seen before,
         * -EINVAL with the reason in why, or -ENOMEM. */
        int (*instance)(struct config *c, const char *label, void **ret_base, char *why,
                        size_t why_size);
        /* The i-th instance and its label, or NULL past the last. */
        void *(*nth)(const struct config *c, size_t i, const char **ret_label);
        /* Returns 0, or -EINVAL with the reason in why, or -ENOMEM. */
        int (*extra_key)(struct config *c, void *base, const char *key, const char *value,
                         char *why, size_t why_size);
        int (*print_extra)(const struct config *c, FILE *out);
        void (*release)(struct config *c);
};

static int hook_instance(struct config *c, const char *label, void **ret_base, char *why,
                         size_t why_size);
static void *hook_nth(const struct config *c, size_t i, const char **ret_label);
static void hooks_release(struct config *c);
static int kafka_extra_key(struct config *c, void *base, const char *key, const char *value,
                           char *why, size_t why_size);
static int kafka_print_extra(const struct config *c, FILE *out);
static void kafka_release(struct config *c);

static const struct section sections[] = {
    {.name = "api"},
    {.name = "store"},
    {.name = "log"},
    {.name = "kafka",
     .extra_key = kafka_extra_key,
     .print_extra = kafka_print_extra,
     .release = kafka_release},
    {.name = "delivery"},
    {.name = "hook",
     .labelled = true,
     .instance = hook_instance,
     .nth = hook_nth,
     .release = hooks_release},
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
        const struct option *opt; /* NULL for an extra key */
        char *extra;              /* the extra key, owned */
        unsigned line;
};

/* A value that was refused, so that its key is not also reported as missing. */
struct refused {
        const void *base;
        const struct option *opt;
};

/* The header line of a labelled section's instance, for duplicates and missing keys. */
struct instance_line {
        const void *base;
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
        struct instance_line *instances;
        size_t n_instances;
        struct refused *refused;
        size_t n_refused;
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

/* "", "embedded", or host[:port] items separated by commas, as librdkafka's bootstrap.servers. */
static int rule_brokers(const char *s, char *why, size_t why_size)
{
        const char *p = s;

        if (strcmp(s, "embedded") == 0)
                return 0;
        for (;;) {
                size_t n = strcspn(p, ",");

                for (size_t i = 0; i < n; i++) {
                        if (isspace((unsigned char)p[i])) {
                                snprintf(why, why_size,
                                         "\"%.80s\" is not host:port[,host:port...] (no spaces)",
                                         s);
                                return -EINVAL;
                        }
                }
                if (n == 0) {
                        snprintf(why, why_size, "\"%.80s\" has an empty item between commas", s);
                        return -EINVAL;
                }
                if (p[n] == '\0')
                        return 0;
                p += n + 1;
        }
}

/* Kafka's own rule for topic names. */
static int rule_topic(const char *s, char *why, size_t why_size)
{
        static const char allowed[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                      "0123456789._-";

        if (s[strspn(s, allowed)] != '\0' || strcmp(s, ".") == 0 || strcmp(s, "..") == 0) {
                snprintf(why, why_size,
                         "\"%.80s\" is not a Kafka topic name (A-Z a-z 0-9 . _ -, not \".\" or "
                         "\"..\")",
                         s);
                return -EINVAL;
        }
        return 0;
}

static int rule_account(const char *s, char *why, size_t why_size)
{
        struct ch_error err = {{0}};
        int r;

        r = names_check_account(s, &err);
        if (r < 0)
                snprintf(why, why_size, "\"%.80s\" is not an account id: %s", s, err.msg);
        return r;
}

static int rule_close_reason(const char *s, char *why, size_t why_size)
{
        size_t n = strlen(s);

        if (n > EVENT_REASON_MAX || s[strspn(s, "ABCDEFGHIJKLMNOPQRSTUVWXYZ_")] != '\0') {
                snprintf(why, why_size,
                         "\"%.80s\" is not a close reason (1-%d of A-Z and _, like SYSTEM or "
                         "TIMEOUT)",
                         s, EVENT_REASON_MAX);
                return -EINVAL;
        }
        return 0;
}

static int rule_namespace(const char *s, char *why, size_t why_size)
{
        struct ch_error err = {{0}};
        int r;

        r = names_check_namespace(s, &err);
        if (r < 0)
                snprintf(why, why_size, "%s", err.msg);
        return r;
}

/* http:// or https://, a host (name, IPv4 or [IPv6]), an optional port, then anything curl
 * takes as it is. Credentials in the URL are refused: check-config prints URLs in clear. */
static int rule_url(const char *s, char *why, size_t why_size)
{
        const char *host, *end, *port;
        size_t n;

        if (strncasecmp(s, "http://", 7) == 0) {
                host = s + 7;
        } else if (strncasecmp(s, "https://", 8) == 0) {
                host = s + 8;
        } else {
                snprintf(why, why_size, "\"%.80s\" is not an http:// or https:// URL", s);
                return -EINVAL;
        }
        for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
                if (*p <= ' ' || *p >= 0x7f) {
                        snprintf(why, why_size,
                                 "\"%.80s\" contains a space or a character that must be "
                                 "percent-encoded",
                                 s);
                        return -EINVAL;
                }
        }
        end = host + strcspn(host, "/?#");
        if (memchr(host, '@', (size_t)(end - host))) {
                snprintf(why, why_size,
                         "the URL must not hold credentials (user@host); use bearer_token");
                return -EINVAL;
        }
        if (*host == '[') {
                port = memchr(host, ']', (size_t)(end - host));
                if (!port || port == host + 1) {
                        snprintf(why, why_size, "\"%.80s\" has no valid [IPv6] host", s);
                        return -EINVAL;
                }
                port++;
        } else {
                port = memchr(host, ':', (size_t)(end - host));
                if (!port)
                        port = end;
                if (port == host) {
                        snprintf(why, why_size, "\"%.80s\" has no host", s);
                        return -EINVAL;
                }
        }
        if (port == end)
                return 0;
        n = (size_t)(end - port - 1);
        if (*port != ':' || n == 0 || n > 5 || strspn(port + 1, "0123456789") < n ||
            strtol(port + 1, NULL, 10) > 65535 || strtol(port + 1, NULL, 10) == 0) {
                snprintf(why, why_size, "\"%.80s\" has no valid port after the host (1-65535)", s);
                return -EINVAL;
        }
        return 0;
}

/* The reason comes from sign_key_parse, which promises not to echo the secret; it is dropped
 * anyway should it ever contain it, since config errors end up in logs. */
static int rule_signing_secret(const char *s, char *why, size_t why_size)
{
        struct ch_error err = {{0}};
        struct sign_key key;
        int r;

        r = sign_key_parse(s, &key, &err);
        explicit_bzero(&key, sizeof(key));
        if (r >= 0)
                return 0;
        if (strstr(err.msg, s) || !err.msg[0])
                snprintf(err.msg, sizeof(err.msg), "not a valid signing secret");
        snprintf(why, why_size, "%s (expected whsec_ and the base64 of %d-%d bytes)", err.msg,
                 SIGN_KEY_MIN, SIGN_KEY_MAX);
        explicit_bzero(&err, sizeof(err));
        return -EINVAL;
}

/* Where the password of a connection URL is: store_url_redact() replaces it with the mask, so
 * it is what lies between the parts the URL and its redacted copy share at both ends. False when
 * the URL holds no password (nothing was replaced). */
static bool url_password_span(const char *url, size_t *ret_off, size_t *ret_len)
{
        char shown[LINE_MAX_CHARS + sizeof(SECRET_MASK)];
        size_t n = strlen(url), m, pre = 0, post = 0;

        store_url_redact(url, shown, sizeof(shown));
        if (strcmp(url, shown) == 0)
                return false;
        m = strlen(shown);
        while (pre < n && pre < m && url[pre] == shown[pre])
                pre++;
        while (post < n - pre && post < m - pre && url[n - 1 - post] == shown[m - 1 - post])
                post++;
        if (n - pre - post == 0)
                return false;
        *ret_off = pre;
        *ret_len = n - pre - post;
        return true;
}

/* Replaces every copy of the URL's password in text (libpq quotes the offending token or the
 * whole URI in its reasons) with the mask, in place. */
static void scrub_password(const char *url, char *text, size_t size)
{
        char out[CH_ERROR_MAX];
        size_t off, len, o = 0;
        const char *p = text, *hit;

        if (!url_password_span(url, &off, &len))
                return;
        while ((hit = memmem(p, strlen(p), url + off, len)) && o < sizeof(out)) {
                o += (size_t)snprintf(out + o, sizeof(out) - o, "%.*s%s", (int)(hit - p), p,
                                      SECRET_MASK);
                p = hit + len;
        }
        if (o < sizeof(out))
                snprintf(out + o, sizeof(out) - o, "%s", p);
        snprintf(text, size, "%s", out);
}

/* [store] url: what libpq accepts, judged without connecting. Its reasons may quote the URL,
 * so the password is scrubbed from them; and the mask check-config prints for a password is
 * refused as one, as for every other secret. */
static int rule_store_url(const char *s, char *why, size_t why_size)
{
        char reason[CH_ERROR_MAX] = "";
        int r;

        r = store_url_check(s, reason, sizeof(reason));
        if (r == -ENOMEM)
                return r;
        if (r < 0) {
                scrub_password(s, reason, sizeof(reason));
                snprintf(why, why_size, "not a PostgreSQL connection string: %s",
                         reason[0] ? reason : "libpq refuses it");
                return -EINVAL;
        }
        if (strstr(s, SECRET_MASK) && !url_password_span(s, &(size_t){0}, &(size_t){0})) {
                snprintf(why, why_size,
                         "the password \"%s\" is how check-config hides it; write the password "
                         "itself, or keep it in CTXHOOKD_STORE_URL or libpq's PGPASSFILE",
                         SECRET_MASK);
                return -EINVAL;
        }
        return 0;
}

static char **strv_free(char **v)
{
        if (!v)
                return NULL;
        for (char **p = v; *p; p++)
                free(*p);
        free(v);
        return NULL;
}

static void strv_freep(char ***v)
{
        strv_free(*v);
}

/* Splits "a, b,c" into trimmed items; all blank text is no items (*ret = NULL). Empty items
 * and more than CONFIG_LIST_MAX items are refused. */
static int list_split(const char *text, char ***ret, char *why, size_t why_size)
{
        _cleanup_(strv_freep) char **items = NULL;
        const char *p = text;
        size_t n = 1, i = 0;

        if (text[strspn(text, " \t")] == '\0') {
                *ret = NULL;
                return 0;
        }
        for (const char *q = text; *q; q++)
                n += *q == ',';
        if (n > CONFIG_LIST_MAX) {
                snprintf(why, why_size, "more than %d items", CONFIG_LIST_MAX);
                return -EINVAL;
        }
        items = calloc(n + 1, sizeof(*items));
        if (!items)
                return -ENOMEM;
        for (;;) {
                size_t len = strcspn(p, ",");
                const char *start = p;

                while (len > 0 && isspace((unsigned char)*start)) {
                        start++;
                        len--;
                }
                while (len > 0 && isspace((unsigned char)start[len - 1]))
                        len--;
                if (len == 0) {
                        snprintf(why, why_size, "item %zu of the list is empty", i + 1);
                        return -EINVAL;
                }
                items[i] = strndup(start, len);
                if (!items[i])
                        return -ENOMEM;
                i++;
                p += strcspn(p, ",");
                if (*p == '\0')
                        break;
                p++;
        }
        *ret = TAKE_PTR(items);
        return 0;
}

static int list_parse(const struct option *opt, const char *text, char ***ret, char *why,
                      size_t why_size)
{
        _cleanup_(strv_freep) char **items = NULL;
        int r;

        r = list_split(text, &items, why, why_size);
        if (r < 0)
                return r;
        for (size_t i = 0; items && items[i]; i++) {
                if (opt->rule) {
                        r = opt->rule(items[i], why, why_size);
                        if (r < 0)
                                return r;
                }
                for (size_t j = 0; j < i; j++) {
                        if (strcmp(items[i], items[j]) == 0) {
                                snprintf(why, why_size, "\"%.80s\" is listed twice", items[i]);
                                return -EINVAL;
                        }
                }
        }
        *ret = TAKE_PTR(items);
        return 0;
}

static void describe_kinds(char *out, size_t size)
{
        size_t len = 0;

        out[0] = '\0';
        for (unsigned bit = 1; (bit & EVENT_KIND_ALL) && len < size; bit <<= 1)
                len += (size_t)snprintf(out + len, size - len, "%s%s", bit > 1 ? "|" : "",
                                        event_kind_name((enum event_kind)bit));
}

static int kinds_parse(const char *text, unsigned *ret, char *why, size_t why_size)
{
        _cleanup_(strv_freep) char **items = NULL;
        char kinds[256];
        unsigned bits = 0, k;
        int r;

        r = list_split(text, &items, why, why_size);
        if (r < 0)
                return r;
        if (!items) {
                describe_kinds(kinds, sizeof(kinds));
                snprintf(why, why_size, "must name at least one event kind (%s)", kinds);
                return -EINVAL;
        }
        for (size_t i = 0; items[i]; i++) {
                k = event_kind_from_string(items[i]);
                if (k == 0) {
                        describe_kinds(kinds, sizeof(kinds));
                        snprintf(why, why_size, "\"%.80s\" is not an event kind (%s)", items[i],
                                 kinds);
                        return -EINVAL;
                }
                if (bits & k) {
                        snprintf(why, why_size, "\"%.80s\" is listed twice", items[i]);
                        return -EINVAL;
                }
                bits |= k;
        }
        *ret = bits;
        return 0;
}

/* Parses text as the option's type and stores it in its field, replacing what was there.
 * Returns 0, -EINVAL with the reason (without origin) in why and the field unchanged, or
 * -ENOMEM. */
static int option_set(const struct option *opt, void *base, const char *text, char *why,
                      size_t why_size)
{
        char bounds[256], *end, *copy, **str, **list = NULL;
        unsigned bits = 0;
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
        case OPT_LIST:
                r = list_parse(opt, text, &list, why, why_size);
                if (r < 0)
                        return r;
                strv_free(*(char ***)field_of(base, opt));
                *(char ***)field_of(base, opt) = list;
                return 0;
        case OPT_KINDS:
                r = kinds_parse(text, &bits, why, why_size);
                if (r < 0)
                        return r;
                *(unsigned *)field_of(base, opt) = bits;
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
                if (opt->rule && text[0]) {
                        r = opt->rule(text, why, why_size);
                        if (r < 0)
                                return r;
                }
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
        return t == OPT_STRING || t == OPT_SECRET || t == OPT_ENUM || t == OPT_HOST_PORT;
}

/* Whether a required option got a value: a string that is not empty, a list of kinds. */
static bool option_has_value(const struct option *opt, const void *base)
{
        const void *field = const_field_of(base, opt);
        const char *s;

        if (opt->type == OPT_KINDS)
                return *(const unsigned *)field != 0;
        if (opt->type == OPT_LIST)
                return *(char *const *const *)field != NULL;
        if (!is_string_type(opt->type))
                return true;
        s = *(char *const *)field;
        return s && *s;
}

static void option_free(const struct option *opt, void *base)
{
        void *field = field_of(base, opt);
        char **str = field;

        if (opt->type == OPT_LIST) {
                *(char ***)field = strv_free(*(char ***)field);
                return;
        }
        if (!is_string_type(opt->type))
                return;
        if (*str && opt->type == OPT_SECRET)
                explicit_bzero(*str, strlen(*str));
        free(*str);
        *str = NULL;
}

/* Sets the value and reports a refusal; false only when out of memory. */
static bool set_reporting(struct load *l, const struct origin *o, const struct option *opt,
                          void *base, const char *where, const char *text)
{
        struct refused *grown;
        char why[512];
        int r;

        r = option_set(opt, base, text, why, sizeof(why));
        if (r == -ENOMEM) {
                l->oom = true;
                return false;
        }
        if (r < 0) {
                value_problem(l, o, opt, where, why);
                grown = realloc(l->refused, (l->n_refused + 1) * sizeof(*grown));
                if (!grown) {
                        l->oom = true;
                        return false;
                }
                l->refused = grown;
                l->refused[l->n_refused++] = (struct refused){base, opt};
        }
        return true;
}

/* Rows without a default are required: they stay unset until the file or environment sets
 * them, and check_required() reports them. */
static void apply_defaults(struct load *l, const struct section *sec, void *base)
{
        const struct origin o = {0};

        for (size_t i = 0; i < ELEMENTSOF(options) && !l->oom; i++)
                if (strcmp(options[i].section, sec->name) == 0 && options[i].def)
                        set_reporting(l, &o, &options[i], base, "", options[i].def);
}

/* CTXHOOKD_<SECTION>_<KEY>, or CTXHOOKD_<SECTION>_<LABEL>_<KEY> for a labelled section, upper
 * case, anything but letters and digits as "_". */
static void env_name(const struct option *opt, const char *label, char *out, size_t size)
{
        if (label)
                snprintf(out, size, "CTXHOOKD_%s_%s_%s", opt->section, label, opt->key);
        else
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

static const struct option *option_find(const struct section *sec, const char *key)
{
        for (size_t i = 0; i < ELEMENTSOF(options); i++)
                if (strcmp(options[i].section, sec->name) == 0 && strcmp(options[i].key, key) == 0)
                        return &options[i];
        return NULL;
}

/* The "[hook \"x\"]" of an instance (or "[api]"), for messages. */
static void describe_section(const struct section *sec, const char *label, char *out, size_t size)
{
        if (label)
                snprintf(out, size, "[%s \"%s\"]", sec->name, label);
        else
                snprintf(out, size, "[%s]", sec->name);
}

/* Two labels that differ only where the variable name has "_" ("a-b", "a.b", "A_B") share
 * their variables; such a variable is refused rather than applied to one of them. Whether an
 * instance other than `self`, from the `from`-th on, has `name` as its variable for opt; its
 * label in *ret_other. */
static bool env_label_clash(const struct section *sec, const struct config *c, size_t self,
                            size_t from, const struct option *opt, const char *name,
                            const char **ret_other)
{
        char other[256];
        const char *label;

        for (size_t j = from; sec->nth(c, j, &label); j++) {
                if (j == self)
                        continue;
                env_name(opt, label, other, sizeof(other));
                if (strcmp(other, name) == 0) {
                        *ret_other = label;
                        return true;
                }
        }
        return false;
}

/* Environment values are trimmed like the file's, so both say the same thing. */
static void apply_env_value(struct load *l, const struct option *opt, void *base, const char *where,
                            const char *name, const char *env)
{
        _cleanup_free_ char *value = NULL;
        size_t n;

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
        set_reporting(l, &(const struct origin){.env = name}, opt, base, where, value);
        if (opt->type == OPT_SECRET)
                explicit_bzero(value, n);
}

/* Variables of fixed sections, then of the labelled instances the file defined. */
static void apply_environment(struct load *l)
{
        for (size_t i = 0; i < ELEMENTSOF(options) && !l->oom; i++) {
                const struct option *opt = &options[i];
                const struct section *sec = section_find(opt->section);
                const char *label, *other, *env;
                char name[256], where[SECTION_MAX_CHARS + 8];
                void *base;

                if (!sec->labelled) {
                        env_name(opt, NULL, name, sizeof(name));
                        env = getenv(name);
                        if (env)
                                apply_env_value(l, opt, l->config, "", name, env);
                        continue;
                }
                for (size_t j = 0; (base = sec->nth(l->config, j, &label)) && !l->oom; j++) {
                        env_name(opt, label, name, sizeof(name));
                        env = getenv(name);
                        if (!env)
                                continue;
                        /* A clash is reported once, by the last instance involved. */
                        if (env_label_clash(sec, l->config, j, j + 1, opt, name, &other))
                                continue;
                        if (env_label_clash(sec, l->config, j, 0, opt, name, &other)) {
                                problem(l,
                                        "environment %s: applies to both [%s \"%s\"] and [%s "
                                        "\"%s\"]; rename one of them",
                                        name, sec->name, other, sec->name, label);
                                continue;
                        }
                        describe_section(sec, label, where, sizeof(where));
                        apply_env_value(l, opt, base, where, name, env);
                }
        }
}

/* Whether the environment variable name (up to '=') is one apply_environment reads for the
 * fixed section sec. */
static bool env_claimed(const struct section *sec, const char *var, size_t len)
{
        char name[256];

        for (size_t i = 0; i < ELEMENTSOF(options); i++) {
                if (strcmp(options[i].section, sec->name) != 0)
                        continue;
                env_name(&options[i], NULL, name, sizeof(name));
                if (strlen(name) == len && strncmp(name, var, len) == 0)
                        return true;
        }
        return false;
}

/* A CTXHOOKD_<SECTION>_… variable of a fixed section that names no option is a typo
 * (CTXHOOKD_API_LISTN): reported, not ignored. Hook variables are not judged: a label may
 * contain "_", so CTXHOOKD_HOOK_A_B_URL cannot be told apart from a hook's key, and a shared
 * environment file may hold secrets of hooks this file does not have. Variables of no section
 * (CTXHOOKD_CONFIG) are not ours to judge either. */
static void check_unknown_environment(struct load *l)
{
        extern char **environ;

        for (char **e = environ; e && *e; e++) {
                const char *eq = strchr(*e, '=');
                size_t len = eq ? (size_t)(eq - *e) : strlen(*e);

                if (strncmp(*e, "CTXHOOKD_", 9) != 0)
                        continue;
                for (size_t s = 0; s < ELEMENTSOF(sections); s++) {
                        const struct section *sec = &sections[s];
                        char prefix[64];

                        if (sec->labelled)
                                continue;
                        snprintf(prefix, sizeof(prefix), "CTXHOOKD_%s_", sec->name);
                        for (char *p = prefix; *p; p++)
                                *p = (char)toupper((unsigned char)*p);
                        if (strncmp(*e, prefix, strlen(prefix)) == 0 && !env_claimed(sec, *e, len))
                                problem(l, "environment %.*s: names no option of [%s]", (int)len,
                                        *e, sec->name);
                }
        }
}

static bool is_hook_name(const char *s)
{
        size_t n = strlen(s);

        return n >= 1 && n <= HOOK_NAME_MAX &&
               strspn(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-") == n;
}

/* The array has room for CONFIG_HOOKS_MAX from the first hook on, so that the instance pointers
 * the parser holds (the current section, the keys seen) stay valid while hooks are added. */
static int hook_instance(struct config *c, const char *label, void **ret_base, char *why,
                         size_t why_size)
{
        struct config_hook *h;
        char *name;

        for (size_t i = 0; i < c->n_hooks; i++) {
                if (strcmp(c->hooks[i].name, label) == 0) {
                        *ret_base = &c->hooks[i];
                        return 0;
                }
        }
        if (!is_hook_name(label)) {
                snprintf(why, why_size, "a hook name is 1-%d characters of A-Z a-z 0-9 _ . -",
                         HOOK_NAME_MAX);
                return -EINVAL;
        }
        if (c->n_hooks == CONFIG_HOOKS_MAX) {
                snprintf(why, why_size, "more than %d hooks", CONFIG_HOOKS_MAX);
                return -EINVAL;
        }
        if (!c->hooks) {
                c->hooks = calloc(CONFIG_HOOKS_MAX, sizeof(*c->hooks));
                if (!c->hooks)
                        return -ENOMEM;
        }
        name = strdup(label);
        if (!name)
                return -ENOMEM;
        h = &c->hooks[c->n_hooks++];
        h->name = name;
        *ret_base = h;
        return 1;
}

static void *hook_nth(const struct config *c, size_t i, const char **ret_label)
{
        if (i >= c->n_hooks)
                return NULL;
        if (ret_label)
                *ret_label = c->hooks[i].name;
        return &c->hooks[i];
}

static void hooks_release(struct config *c)
{
        for (size_t i = 0; i < c->n_hooks; i++)
                free(c->hooks[i].name);
        free(c->hooks);
        c->hooks = NULL;
        c->n_hooks = 0;
}

/* librdkafka properties that ctxhookd sets itself, and what to do instead. */
static const struct {
        const char *key, *instead;
} kafka_managed[] = {
    {"bootstrap.servers", "use [kafka] brokers"},
    {"metadata.broker.list", "use [kafka] brokers"},
    {"group.id", "use [kafka] group"},
    {"enable.auto.offset.store",
     "ctxhookd stores an offset only once the event's deliveries are queued"},
    {"enable.auto.commit", "ctxhookd commits the offsets it has stored"},
};

/* A property whose value may be a credential: masked by config_print. Errs on the side of
 * masking (ssl.keystore.location is masked too). */
static bool kafka_key_is_secret(const char *key)
{
        static const char *const words[] = {"password", "secret", "key", "token"};

        for (size_t i = 0; i < ELEMENTSOF(words); i++)
                if (strstr(key, words[i]))
                        return true;
        return false;
}

/* Asks librdkafka itself whether it knows the property and takes the value, so that a typo is
 * an error with file and line now rather than when the consumer starts. Plugins are loaded by
 * merely setting plugin.library.paths, which checking a file must not do. */
static int kafka_property_check(const char *key, const char *value, bool secret, char *why,
                                size_t why_size)
{
        char errstr[512] = "";
        rd_kafka_conf_t *conf;
        rd_kafka_conf_res_t res;

        if (strcmp(key, "plugin.library.paths") == 0)
                return 0;
        conf = rd_kafka_conf_new();
        if (!conf)
                return -ENOMEM;
        res = rd_kafka_conf_set(conf, key, value, errstr, sizeof(errstr));
        rd_kafka_conf_destroy(conf);
        if (res == RD_KAFKA_CONF_OK)
                return 0;
        /* Some of librdkafka's messages end with a line break ("… outside allowed range
         * 10..300000\n"), which would split this problem's line in two. */
        errstr[strcspn(errstr, "\r\n")] = '\0';
        if (res == RD_KAFKA_CONF_UNKNOWN)
                snprintf(why, why_size,
                         "unknown key (neither a ctxhookd option nor a librdkafka property)");
        else if (secret)
                snprintf(why, why_size, "librdkafka refuses the value");
        else
                snprintf(why, why_size, "librdkafka refuses it: %s", errstr);
        return -EINVAL;
}

static int kafka_extra_key(struct config *c, void *base, const char *key, const char *value,
                           char *why, size_t why_size)
{
        bool secret = kafka_key_is_secret(key);
        const struct option text = {.section = "kafka",
                                    .key = key,
                                    .type = secret ? OPT_SECRET : OPT_STRING,
                                    .min = 1,
                                    .max = LINE_MAX_CHARS};
        _cleanup_free_ char *k = NULL, *v = NULL;
        struct config_kv *grown;
        int r;

        (void)base;
        if (!*key || key[strspn(key, "abcdefghijklmnopqrstuvwxyz0123456789._")] != '\0') {
                snprintf(why, why_size,
                         "unknown key (other keys of [kafka] are librdkafka properties: a-z 0-9 "
                         ". _)");
                return -EINVAL;
        }
        for (size_t i = 0; i < ELEMENTSOF(kafka_managed); i++) {
                if (strcmp(key, kafka_managed[i].key) == 0) {
                        snprintf(why, why_size, "set by ctxhookd itself; %s",
                                 kafka_managed[i].instead);
                        return -EINVAL;
                }
        }
        if (!*value) {
                snprintf(why, why_size,
                         "must not be empty (leave the key out for librdkafka's default)");
                return -EINVAL;
        }
        r = check_text(&text, value, why, why_size);
        if (r < 0)
                return r;
        r = kafka_property_check(key, value, secret, why, why_size);
        if (r < 0)
                return r;
        if (c->kafka.n_extra == KAFKA_EXTRA_MAX) {
                snprintf(why, why_size, "more than %d librdkafka properties", KAFKA_EXTRA_MAX);
                return -EINVAL;
        }
        k = strdup(key);
        v = strdup(value);
        if (!k || !v)
                return -ENOMEM;
        grown = realloc(c->kafka.extra, (c->kafka.n_extra + 1) * sizeof(*grown));
        if (!grown)
                return -ENOMEM;
        c->kafka.extra = grown;
        c->kafka.extra[c->kafka.n_extra++] = (struct config_kv){TAKE_PTR(k), TAKE_PTR(v)};
        return 0;
}

/* The blank between "key =" and a printed value. inih takes a ';' after a blank for the start
 * of a comment, so a value that begins with ';' (read from "key =;x") is printed without it:
 * "key = ;x" would load back as an empty value. */
static const char *value_gap(const char *s)
{
        return s && *s && *s != ';' ? " " : "";
}

static int kafka_print_extra(const struct config *c, FILE *out)
{
        int r;

        r = fprintf(out, "; other keys are librdkafka properties, passed on as they are\n");
        for (size_t i = 0; i < c->kafka.n_extra && r >= 0; i++) {
                const struct config_kv *kv = &c->kafka.extra[i];
                const char *shown = kafka_key_is_secret(kv->key) ? SECRET_MASK : kv->value;

                r = fprintf(out, "%s =%s%s\n", kv->key, value_gap(shown), shown);
        }
        return r < 0 ? -EIO : 0;
}

static void kafka_release(struct config *c)
{
        for (size_t i = 0; i < c->kafka.n_extra; i++) {
                explicit_bzero(c->kafka.extra[i].value, strlen(c->kafka.extra[i].value));
                free(c->kafka.extra[i].value);
                free(c->kafka.extra[i].key);
        }
        free(c->kafka.extra);
        c->kafka.extra = NULL;
        c->kafka.n_extra = 0;
}

static unsigned instance_line(const struct load *l, const void *base)
{
        for (size_t i = 0; i < l->n_instances; i++)
                if (l->instances[i].base == base)
                        return l->instances[i].line;
        return 0;
}

/* Judges the header text ("api" or "hook \"name\"") and makes it the section the following
 * keys go to. A bad header is reported once, here, and its keys are skipped. */
static void enter_section(struct load *l, const char *text)
{
        char name[SECTION_MAX_CHARS + 1], known[256], why[512];
        const char *label = NULL, *rest;
        size_t n, len = 0, label_len = 0;
        struct instance_line *grown;
        void *base;
        int r;

        l->in_section = true;
        l->skip_keys = true;
        l->sec = NULL;
        if (strlen(text) > SECTION_MAX_CHARS) {
                problem(l, "%s:%u: [%.20s…]: section header longer than %d characters", l->name,
                        l->line, text, SECTION_MAX_CHARS);
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
                r = l->sec->instance(l->config, label_copy, &base, why, sizeof(why));
                if (r == -ENOMEM) {
                        l->oom = true;
                        return;
                }
                if (r < 0) {
                        problem(l, "%s:%u: %s: %s", l->name, l->line, l->where, why);
                        return;
                }
                if (r == 0) {
                        problem(l, "%s:%u: %s: the name \"%s\" is already used on line %u", l->name,
                                l->line, l->where, label_copy, instance_line(l, base));
                        return;
                }
                grown = realloc(l->instances, (l->n_instances + 1) * sizeof(*grown));
                if (!grown) {
                        l->oom = true;
                        return;
                }
                l->instances = grown;
                l->instances[l->n_instances++] = (struct instance_line){base, l->line};
                apply_defaults(l, l->sec, base);
        }
        l->base = base;
        l->skip_keys = false;
}

struct probe {
        unsigned keys;
};

static int probe_key(void *user, const char *section, const char *name, const char *value)
{
        struct probe *p = user;

        (void)section;
        (void)name;
        (void)value;
        p->keys++;
        return 1;
}

/* inih reports only the first syntax error and says nothing about a header with no keys under
 * it. With continuation lines off, whether a line is well-formed does not depend on the lines
 * before it, so each line is also run through inih on its own, followed by a probe key. The
 * header text is taken from the line itself, as inih would up to its first "]", because inih
 * cuts it to 49 characters. */
static void judge_line(struct load *l, const char *line)
{
        char text[LINE_MAX_CHARS + 16];
        struct probe p = {0};
        const char *s = line, *close;
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
        if (*s != '[' || r != 0 || p.keys != 1)
                return;
        close = strchr(s, ']');
        if (!close)
                return;
        snprintf(text, sizeof(text), "%.*s", (int)(close - s - 1), s + 1);
        enter_section(l, text);
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
        char why[512], *extra = NULL;
        int r;

        (void)section; /* judge_line tracked it, with the verdict on its header */
        if (l->oom || l->skip_keys)
                return 1;
        if (!l->in_section) {
                problem(l, "%s:%u: %s: key outside of any section", l->name, l->line, name);
                return 1;
        }
        opt = option_find(l->sec, name);
        if (!opt && !l->sec->extra_key) {
                problem(l, "%s:%u: %s %s: unknown key", l->name, l->line, l->where, name);
                return 1;
        }
        for (size_t i = 0; i < l->n_seen; i++) {
                const struct seen *s = &l->seen[i];

                if (s->base == l->base && s->opt == opt && (opt || strcmp(s->extra, name) == 0)) {
                        problem(l, "%s:%u: %s %s: duplicate key (first set on line %u)", l->name,
                                l->line, l->where, name, s->line);
                        return 1;
                }
        }
        if (!opt) {
                extra = strdup(name);
                if (!extra) {
                        l->oom = true;
                        return 1;
                }
        }
        grown = realloc(l->seen, (l->n_seen + 1) * sizeof(*l->seen));
        if (!grown) {
                free(extra);
                l->oom = true;
                return 1;
        }
        l->seen = grown;
        l->seen[l->n_seen++] =
            (struct seen){.base = l->base, .opt = opt, .extra = extra, .line = l->line};
        if (opt) {
                set_reporting(l, &o, opt, l->base, l->where, value);
                return 1;
        }
        r = l->sec->extra_key(l->config, l->base, name, value, why, sizeof(why));
        if (r == -ENOMEM)
                l->oom = true;
        else if (r < 0)
                problem(l, "%s:%u: %s %s: %s", l->name, l->line, l->where, name, why);
        return 1;
}

/* Every instance of every section: the config itself for a fixed one (label NULL). */
static void *section_nth(const struct section *sec, const struct config *c, size_t i,
                         const char **ret_label)
{
        if (sec->labelled)
                return sec->nth(c, i, ret_label);
        *ret_label = NULL;
        return i == 0 ? (void *)c : NULL;
}

static bool option_refused(const struct load *l, const struct option *opt, const void *base)
{
        for (size_t i = 0; i < l->n_refused; i++)
                if (l->refused[i].opt == opt && l->refused[i].base == base)
                        return true;
        return false;
}

/* A required row that neither the file nor the environment set, named with the line of its
 * section's header. A value that was refused has been reported already. */
static void check_required(struct load *l)
{
        for (size_t s = 0; s < ELEMENTSOF(sections); s++) {
                const struct section *sec = &sections[s];
                char where[SECTION_MAX_CHARS + 8];
                const char *label;
                void *base;

                for (size_t j = 0; (base = section_nth(sec, l->config, j, &label)); j++) {
                        describe_section(sec, label, where, sizeof(where));
                        for (size_t i = 0; i < ELEMENTSOF(options); i++) {
                                const struct option *opt = &options[i];

                                if (opt->def || strcmp(opt->section, sec->name) != 0 ||
                                    option_has_value(opt, base) || option_refused(l, opt, base))
                                        continue;
                                if (label)
                                        problem(l, "%s:%u: %s %s: required key missing", l->name,
                                                instance_line(l, base), where, opt->key);
                                else
                                        problem(l, "%s: %s %s: required key missing", l->name,
                                                where, opt->key);
                        }
                }
        }
}

/* Where the value of a fixed section's option came from: the environment wins over the file
 * line, which wins over the built-in default. */
static void origin_of(const struct load *l, const struct option *opt, struct origin *ret, char *env,
                      size_t env_size)
{
        env_name(opt, NULL, env, env_size);
        *ret = (struct origin){0};
        if (getenv(env)) {
                ret->env = env;
                return;
        }
        for (size_t i = 0; i < l->n_seen; i++) {
                if (l->seen[i].opt == opt && l->seen[i].base == l->config) {
                        ret->file = l->name;
                        ret->line = l->seen[i].line;
                }
        }
}

/* Integer options of one fixed section that must not be smaller than another. */
static const struct {
        const char *section, *low, *high, *why;
} ordered[] = {
    {"delivery", "retry_base_ms", "retry_max_ms",
     "the longest back-off cannot be shorter than the first"},
};

static void check_ordered(struct load *l)
{
        for (size_t i = 0; i < ELEMENTSOF(ordered); i++) {
                const struct section *sec = section_find(ordered[i].section);
                const struct option *low = option_find(sec, ordered[i].low);
                const struct option *high = option_find(sec, ordered[i].high);
                int64_t lo = *(const int64_t *)const_field_of(l->config, low);
                int64_t hi = *(const int64_t *)const_field_of(l->config, high);
                char env[256], why[512], where[SECTION_MAX_CHARS + 8];
                struct origin o;

                if (lo <= hi)
                        continue;
                describe_section(sec, NULL, where, sizeof(where));
                /* Blame the one that was set, not a default the operator never wrote. */
                origin_of(l, high, &o, env, sizeof(env));
                if (o.env || o.file) {
                        snprintf(why, sizeof(why), "%" PRId64 " is less than %s (%" PRId64 "); %s",
                                 hi, low->key, lo, ordered[i].why);
                        value_problem(l, &o, high, where, why);
                } else {
                        origin_of(l, low, &o, env, sizeof(env));
                        snprintf(why, sizeof(why),
                                 "%" PRId64 " is more than %s (%" PRId64 "); %s; raise %s too", lo,
                                 high->key, hi, ordered[i].why, high->key);
                        value_problem(l, &o, low, where, why);
                }
        }
}

/* [store]: the backend chosen has what it needs, and nothing is set that it would ignore.
 * url with sqlite is refused rather than ignored: whoever wrote it expects PostgreSQL. path keeps
 * its default with postgresql (and the shipped file sets it), so it is not judged there. */
static void check_store(struct load *l)
{
        const struct section *sec = section_find("store");
        const struct option *backend = option_find(sec, "backend");
        const struct option *url = option_find(sec, "url");
        const struct config *c = l->config;
        bool postgresql = strcmp(c->store.backend, "postgresql") == 0;
        bool has_url = c->store.url && c->store.url[0];
        char env[256], why[512];
        struct origin o;

        if (option_refused(l, backend, c) || option_refused(l, url, c))
                return;
        if (postgresql && !has_url) {
                origin_of(l, backend, &o, env, sizeof(env));
                snprintf(why, sizeof(why),
                         "postgresql needs [store] url, a libpq connection string such as "
                         "postgresql://ctxhookd@db1:5432/ctxhookd (or CTXHOOKD_STORE_URL)");
                value_problem(l, &o, backend, "[store]", why);
        } else if (!postgresql && has_url) {
                origin_of(l, url, &o, env, sizeof(env));
                snprintf(why, sizeof(why),
                         "only used with backend = postgresql (backend is %s); remove it or set "
                         "backend = postgresql",
                         c->store.backend);
                value_problem(l, &o, url, "[store]", why);
        }
}

struct config *config_free(struct config *c)
{
        if (!c)
                return NULL;
        for (size_t s = 0; s < ELEMENTSOF(sections); s++) {
                const char *label;
                void *base;

                for (size_t j = 0; (base = section_nth(&sections[s], c, j, &label)); j++)
                        for (size_t i = 0; i < ELEMENTSOF(options); i++)
                                if (strcmp(options[i].section, sections[s].name) == 0)
                                        option_free(&options[i], base);
        }
        for (size_t s = 0; s < ELEMENTSOF(sections); s++)
                if (sections[s].release)
                        sections[s].release(c);
        free(c->source);
        free(c);
        return NULL;
}

void config_store_options(const struct config *c, struct store_options *ret)
{
        *ret = (struct store_options){
            .backend = c->store.backend,
            .path = c->store.path,
            .url = c->store.url && c->store.url[0] ? c->store.url : NULL,
            .busy_timeout_ms = (int)c->store.busy_timeout_ms,
            .pool_size = (unsigned)c->store.pool_size,
            .cache_entries = (unsigned)c->store.cache_entries,
        };
}

static void config_freep(struct config **c)
{
        config_free(*c);
}

static void load_done(struct load *l)
{
        for (size_t i = 0; i < l->n_seen; i++)
                free(l->seen[i].extra);
        free(l->seen);
        free(l->instances);
        free(l->refused);
}

int config_load_string(const char *text, const char *name, struct config **ret,
                       struct ch_error *err)
{
        _cleanup_(config_freep) struct config *c = NULL;
        _cleanup_(load_done) struct load l = {.err = err, .name = name ? name : "<string>"};
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
        if (r == -2 || l.oom)
                return -ENOMEM;
        if (r > 0 && (unsigned)r != l.syntax_line)
                problem(&l, "%s:%d: syntax error", l.name, r);

        apply_environment(&l);
        check_unknown_environment(&l);
        if (l.oom)
                return -ENOMEM;
        check_required(&l);
        check_ordered(&l);
        check_store(&l);
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

static int print_value(const void *base, const struct option *opt, FILE *out)
{
        const void *field = const_field_of(base, opt);
        char *const *list;
        const char *s;
        unsigned bits;
        int r;

        switch (opt->type) {
        case OPT_INT:
                return fprintf(out, "%s = %" PRId64 "\n", opt->key, *(const int64_t *)field);
        case OPT_BOOL:
                return fprintf(out, "%s = %s\n", opt->key, *(const bool *)field ? "true" : "false");
        case OPT_SECRET:
                s = *(char *const *)field;
                return fprintf(out, "%s =%s\n", opt->key, s && *s ? " " SECRET_MASK : "");
        case OPT_LIST:
                list = *(char *const *const *)field;
                r = fprintf(out, "%s =", opt->key);
                for (size_t i = 0; list && list[i] && r >= 0; i++)
                        r = fprintf(out, "%s%s", i ? "," : " ", list[i]);
                return r < 0 ? r : fprintf(out, "\n");
        case OPT_KINDS:
                bits = *(const unsigned *)field;
                r = fprintf(out, "%s =", opt->key);
                for (unsigned bit = 1, first = 1; (bit & EVENT_KIND_ALL) && r >= 0; bit <<= 1) {
                        if (!(bits & bit))
                                continue;
                        r = fprintf(out, "%s%s", first ? " " : ",",
                                    event_kind_name((enum event_kind)bit));
                        first = 0;
                }
                return r < 0 ? r : fprintf(out, "\n");
        case OPT_STRING:
        case OPT_ENUM:
        case OPT_HOST_PORT:
                break;
        }
        s = *(char *const *)field;
        if (opt->redact && s && *s) {
                char shown[LINE_MAX_CHARS + sizeof(SECRET_MASK)];

                opt->redact(s, shown, sizeof(shown));
                return fprintf(out, "%s =%s%s\n", opt->key, value_gap(shown), shown);
        }
        return fprintf(out, "%s =%s%s\n", opt->key, value_gap(s), s ? s : "");
}

static int print_rows(const struct section *sec, const void *base, FILE *out)
{
        char bounds[256];
        int r = 0;

        for (size_t i = 0; i < ELEMENTSOF(options) && r >= 0; i++) {
                if (strcmp(options[i].section, sec->name) != 0)
                        continue;
                if (options[i].type == OPT_INT) {
                        describe_bounds(&options[i], bounds, sizeof(bounds));
                        r = fprintf(out, "; %s (%s)\n", options[i].help, bounds);
                } else {
                        r = fprintf(out, "; %s\n", options[i].help);
                }
                if (r >= 0)
                        r = print_value(base, &options[i], out);
        }
        return r;
}

int config_print(const struct config *c, FILE *out)
{
        char where[SECTION_MAX_CHARS + 8];
        const char *label;
        const void *base;
        int r;

        r = fprintf(out, "; effective configuration, from %s\n", c->source ? c->source : "?");
        for (size_t s = 0; s < ELEMENTSOF(sections) && r >= 0; s++) {
                const struct section *sec = &sections[s];

                if (sec->labelled && !sec->nth(c, 0, NULL))
                        r = fprintf(out, "\n; no [%s \"name\"] sections\n", sec->name);
                for (size_t j = 0; r >= 0 && (base = section_nth(sec, c, j, &label)); j++) {
                        describe_section(sec, label, where, sizeof(where));
                        r = fprintf(out, "\n%s\n", where);
                        if (r >= 0)
                                r = print_rows(sec, base, out);
                }
                if (r >= 0 && sec->print_extra)
                        r = sec->print_extra(c, out);
        }
        if (r < 0 || ferror(out))
                return -EIO;
        return 0;
}

/* Whether a SIGHUP applies the option. The others shape what exists only from the start: the
 * listening socket and its threads, the database and its pool, the Kafka client, the delivery
 * slots. */
static bool option_live(const struct option *opt)
{
        if (strcmp(opt->section, "hook") == 0 || strcmp(opt->section, "log") == 0)
                return true;
        if (strcmp(opt->section, "delivery") == 0)
                return strcmp(opt->key, "max_in_flight") != 0;
        if (strcmp(opt->section, "kafka") == 0)
                return strcmp(opt->key, "account") == 0 ||
                       strcmp(opt->key, "max_message_bytes") == 0;
        return false;
}

bool config_option_live(const char *section, const char *key)
{
        for (size_t i = 0; i < ELEMENTSOF(options); i++)
                if (strcmp(options[i].section, section) == 0 && strcmp(options[i].key, key) == 0)
                        return option_live(&options[i]);
        return false;
}

static bool same_string(const char *a, const char *b)
{
        return strcmp(a ? a : "", b ? b : "") == 0;
}

static bool kafka_extra_equal(const struct config *a, const struct config *b)
{
        if (a->kafka.n_extra != b->kafka.n_extra)
                return false;
        for (size_t i = 0; i < a->kafka.n_extra; i++)
                if (strcmp(a->kafka.extra[i].key, b->kafka.extra[i].key) != 0 ||
                    strcmp(a->kafka.extra[i].value, b->kafka.extra[i].value) != 0)
                        return false;
        return true;
}

static int kafka_extra_copy(struct config *to, const struct config *from)
{
        struct config_kv *kv = NULL;

        if (from->kafka.n_extra > 0) {
                kv = calloc(from->kafka.n_extra, sizeof(*kv));
                if (!kv)
                        return -ENOMEM;
        }
        for (size_t i = 0; i < from->kafka.n_extra; i++) {
                kv[i].key = strdup(from->kafka.extra[i].key);
                kv[i].value = strdup(from->kafka.extra[i].value);
                if (!kv[i].key || !kv[i].value) {
                        for (size_t j = 0; j <= i; j++) {
                                free(kv[j].key);
                                free(kv[j].value);
                        }
                        free(kv);
                        return -ENOMEM;
                }
        }
        kafka_release(to);
        to->kafka.extra = kv;
        to->kafka.n_extra = from->kafka.n_extra;
        return 0;
}

int config_keep_restart_options(struct config *next, const struct config *running,
                                struct ch_error *notes)
{
        int kept = 0;

        if (notes)
                notes->msg[0] = '\0';
        for (size_t s = 0; s < ELEMENTSOF(sections); s++) {
                const struct section *sec = &sections[s];

                if (sec->labelled)
                        continue;
                for (size_t i = 0; i < ELEMENTSOF(options); i++) {
                        const struct option *opt = &options[i];
                        const void *old_field = const_field_of(running, opt);
                        void *new_field = field_of(next, opt);
                        char *copy;

                        if (strcmp(opt->section, sec->name) != 0 || option_live(opt))
                                continue;
                        if (opt->type == OPT_INT) {
                                int64_t was = *(const int64_t *)old_field;

                                if (*(int64_t *)new_field == was)
                                        continue;
                                ch_error_append(notes,
                                                "[%s] %s: %" PRId64 " → %" PRId64
                                                " needs a restart; %" PRId64 " stays in force",
                                                opt->section, opt->key, was, *(int64_t *)new_field,
                                                was);
                                *(int64_t *)new_field = was;
                                kept++;
                                continue;
                        }
                        /* Every restart-only option is an integer or a string of some kind:
                         * lists, kinds and booleans live in [hook], which is all live. */
                        if (!is_string_type(opt->type) ||
                            same_string(*(char *const *)old_field, *(char **)new_field))
                                continue;
                        const char *was =
                            *(char *const *)old_field ? *(char *const *)old_field : "";
                        const char *wanted = *(char **)new_field ? *(char **)new_field : "";

                        char was_shown[LINE_MAX_CHARS + sizeof(SECRET_MASK)];
                        char wanted_shown[sizeof(was_shown)];

                        snprintf(was_shown, sizeof(was_shown), "%s", was);
                        snprintf(wanted_shown, sizeof(wanted_shown), "%s", wanted);
                        if (opt->redact) {
                                opt->redact(was, was_shown, sizeof(was_shown));
                                opt->redact(wanted, wanted_shown, sizeof(wanted_shown));
                        }
                        /* A URL whose password alone changed looks the same redacted. */
                        if (opt->type == OPT_SECRET || strcmp(was_shown, wanted_shown) == 0)
                                ch_error_append(notes,
                                                "[%s] %s: changed; needs a restart, the running "
                                                "value stays in force",
                                                opt->section, opt->key);
                        else
                                ch_error_append(notes,
                                                "[%s] %s: \"%s\" → \"%s\" needs a restart; "
                                                "\"%s\" stays in force",
                                                opt->section, opt->key, was_shown, wanted_shown,
                                                was_shown);
                        copy = *(char *const *)old_field ? strdup(*(char *const *)old_field) : NULL;
                        if (*(char *const *)old_field && !copy)
                                return -ENOMEM;
                        option_free(opt, next);
                        *(char **)new_field = copy;
                        kept++;
                }
        }
        if (!kafka_extra_equal(next, running)) {
                int r = kafka_extra_copy(next, running);

                if (r < 0)
                        return r;
                ch_error_append(notes, "[kafka] librdkafka properties changed: they need a "
                                       "restart; the running ones stay in force");
                kept++;
        }
        return kept;
}
