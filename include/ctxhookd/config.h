/* Configuration: an INI file (libinih) described by one table (daemon/config.c), one row per
 * option with its section, key, type, bounds, default and the field it fills. Parsing,
 * validation, environment overrides (CTXHOOKD_<SECTION>_<KEY>), printing the effective config
 * and (later) reload all walk that table, so a new option is a one-line addition.
 *
 * When no file is named and the default path does not exist, the configuration shipped in
 * config/ctxhookd.conf (embedded in the binary at build time) is used. */
#ifndef CTXHOOKD_CONFIG_H
#define CTXHOOKD_CONFIG_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stddef.h>

#include "ctxhookd/error.h"

#define CONFIG_DEFAULT_PATH "/etc/ctxhookd/ctxhookd.conf"
#define CONFIG_ENV_PATH     "CTXHOOKD_CONFIG"

#define CONFIG_HOOKS_MAX 64
#define CONFIG_LIST_MAX  32 /* items of a comma-separated list option */

/* One [hook "name"] section: which events it wants and where they go. */
struct config_hook {
        char *name;           /* the label: [A-Za-z0-9_.-]{1,64} */
        unsigned on;          /* enum event_kind bits; "on" is required */
        char **close_reasons; /* NULL-terminated; NULL = any close reason */
        char **namespaces;    /* NULL-terminated; NULL = gather no context */
        char *url;            /* http:// or https://, required */
        char *secret;         /* "whsec_<base64>", required (secret) */
        char *bearer_token;   /* "" = no Authorization header (secret) */
        int64_t timeout_ms;   /* per attempt */
        int64_t max_attempts; /* then dead letter */
        bool clear_after;     /* delete the gathered session notes once delivered */
};

/* A key of [kafka] that is not ctxhookd's own: passed to librdkafka as is. */
struct config_kv {
        char *key;
        char *value;
};

struct config {
        char *source; /* the file read, or "<embedded>" */
        struct {
                char *listen;      /* host:port; port 0 = any free port */
                int64_t max_body;  /* bytes */
                char *admin_token; /* NULL or "" = admin endpoints disabled (secret) */
                int64_t threads;   /* HTTP worker threads; 0 = one per CPU */
                int64_t max_connections;
                int64_t connection_timeout_s;
        } api;
        struct {
                char *backend; /* "sqlite" | "postgresql" */
                char *path;    /* sqlite */
                char *url;     /* postgresql: libpq connection string (may hold a password) */
                int64_t busy_timeout_ms;
                int64_t pool_size;        /* connections for concurrent requests */
                int64_t sweep_interval_s; /* how often expired data is deleted */
                int64_t cache_entries;    /* read cache slots; 0 = off */
        } store;
        struct {
                char *level; /* error|warning|notice|info|debug */
        } log;
        struct {
                char *brokers; /* "" = no Kafka; "embedded" = in-process mock cluster */
                char *topic;
                char *group;
                char *account;             /* for events that carry no account */
                int64_t max_message_bytes; /* larger messages are dead letters */
                struct config_kv *extra;   /* other keys, for librdkafka, in file order */
                size_t n_extra;
        } kafka;
        struct {
                int64_t max_in_flight; /* concurrent webhook calls */
                int64_t outbox_max;    /* pause consuming above this many queued deliveries */
                int64_t retry_base_ms; /* first back-off; doubles per attempt, with jitter */
                int64_t retry_max_ms;  /* cap of one back-off (and of Retry-After) */
                int64_t retention_s;   /* how long dedup keys (Kafka offsets, Idempotency-Key)
                                          are remembered */
        } delivery;
        struct config_hook *hooks; /* in file order */
        size_t n_hooks;
};

/* Which file `run`/`check-config` read when no -c is given: $CTXHOOKD_CONFIG if set, else
 * CONFIG_DEFAULT_PATH. *ret_explicit is set to 1 when the path came from the environment. */
const char *config_default_path(int *ret_explicit);

/* The text of config/ctxhookd.conf as shipped (embedded at build time). */
extern const char config_embedded_text[];

/* Loads the file at path (NULL = the embedded default), applies CTXHOOKD_<SECTION>_<KEY>
 * environment overrides and validates everything. On failure returns -EINVAL (bad content,
 * with every problem as one line "FILE:LINE: [section] key: reason" in err), -ENOENT or
 * another negative errno when the file cannot be read (err names the path), and *ret is
 * untouched. */
int config_load(const char *path, struct config **ret, struct ch_error *err);

/* Same as config_load but from text in memory; name is used in error messages. */
int config_load_string(const char *text, const char *name, struct config **ret,
                       struct ch_error *err);

/* Frees; accepts NULL; returns NULL. */
struct config *config_free(struct config *c);

struct store_options;

/* Fills *ret (include/ctxhookd/store.h) from [store]: backend, path, url, busy timeout, pool
 * size and cache, pointing into c (which must outlive it). A caller that needs fewer
 * connections or no cache (a one-shot command) lowers those afterwards. */
void config_store_options(const struct config *c, struct store_options *ret);

/* Writes the effective configuration as INI text, every option of the table, secrets shown
 * as "********" when set, and [store] url with its password (if any) as "********". Returns 0
 * or -EIO. */
int config_print(const struct config *c, FILE *out);

/* Whether SIGHUP applies [section] key to a running daemon: [hook] sections, [log], [delivery]
 * but max_in_flight, [kafka] account and max_message_bytes. The others (listen address, store,
 * Kafka client, threads) need a restart. */
bool config_option_live(const char *section, const char *key);

/* For a reload: in next (a config just loaded), every option that cannot change live gets
 * running's value back, and each one that differed is one line of notes, e.g.
 * "[api] listen: "127.0.0.1:8080" → "127.0.0.1:9090" needs a restart; … stays in force"
 * (secrets are not echoed, nor the password of [store] url). [kafka]'s librdkafka properties
 * count as one option. Returns how many options were kept, or -ENOMEM. */
int config_keep_restart_options(struct config *next, const struct config *running,
                                struct ch_error *notes);

#endif
