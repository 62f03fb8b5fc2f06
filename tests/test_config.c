/* Tests of the configuration: built-in defaults, the shipped (embedded) file, every option
 * type's bounds, error lines that name file, line, section and key, all problems reported at
 * once, environment overrides, inline comments, check-config output that loads back, and the
 * event pipeline's sections: [kafka] with its librdkafka pass-through keys, [delivery], and
 * [hook "name"] sections. Criterion runs every test in its own process, so setenv() here
 * cannot leak into others. */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ctxhookd/config.h"
#include "ctxhookd/event.h"
#include "ctxhookd/store.h"

/* A valid signing secret (32 bytes) and a second one, for two hooks. */
#define SECRET_A "whsec_AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA="
#define SECRET_B "whsec_MDEyMzQ1Njc4OWFiY2RlZg=="

/* Every variable the module reads, so a developer's shell cannot change the results. */
static const char *const env_vars[] = {
    "CTXHOOKD_CONFIG",
    "CTXHOOKD_API_LISTEN",
    "CTXHOOKD_API_MAX_BODY",
    "CTXHOOKD_API_ADMIN_TOKEN",
    "CTXHOOKD_API_THREADS",
    "CTXHOOKD_API_MAX_CONNECTIONS",
    "CTXHOOKD_API_CONNECTION_TIMEOUT_S",
    "CTXHOOKD_STORE_BACKEND",
    "CTXHOOKD_STORE_PATH",
    "CTXHOOKD_STORE_URL",
    "CTXHOOKD_STORE_CACHE_ENTRIES",
    "CTXHOOKD_STORE_BUSY_TIMEOUT_MS",
    "CTXHOOKD_STORE_POOL_SIZE",
    "CTXHOOKD_STORE_SWEEP_INTERVAL_S",
    "CTXHOOKD_LOG_LEVEL",
    "CTXHOOKD_KAFKA_BROKERS",
    "CTXHOOKD_KAFKA_TOPIC",
    "CTXHOOKD_KAFKA_GROUP",
    "CTXHOOKD_KAFKA_ACCOUNT",
    "CTXHOOKD_KAFKA_MAX_MESSAGE_BYTES",
    "CTXHOOKD_DELIVERY_MAX_IN_FLIGHT",
    "CTXHOOKD_DELIVERY_OUTBOX_MAX",
    "CTXHOOKD_DELIVERY_RETRY_BASE_MS",
    "CTXHOOKD_DELIVERY_RETRY_MAX_MS",
    "CTXHOOKD_DELIVERY_RETENTION_S",
    "CTXHOOKD_HOOK_A_URL",
    "CTXHOOKD_HOOK_A_SECRET",
    "CTXHOOKD_HOOK_A_TIMEOUT_MS",
    "CTXHOOKD_HOOK_NOTES_ON_AUTOCLOSE_URL",
    "CTXHOOKD_HOOK_NOTES_ON_AUTOCLOSE_SECRET",
    "CTXHOOKD_HOOK_NOTES_ON_AUTOCLOSE_ON",
    "CTXHOOKD_HOOK_NOTES_ON_AUTOCLOSE_CLOSE_REASON",
    "CTXHOOKD_HOOK_GHOST_URL",
};

static void clear_env(void)
{
        for (size_t i = 0; i < sizeof(env_vars) / sizeof(env_vars[0]); i++)
                unsetenv(env_vars[i]);
}

TestSuite(config, .init = clear_env);

static struct config *load_ok(const char *text)
{
        struct ch_error err = {{0}};
        struct config *c = NULL;
        int r;

        r = config_load_string(text, "t.conf", &c, &err);
        cr_assert_eq(r, 0, "load failed (%d): %s\n--- text:\n%s", r, err.msg, text);
        cr_assert_not_null(c);
        return c;
}

/* Loads text that must be refused and returns the error lines. */
static const char *load_bad(const char *text, struct ch_error *err)
{
        struct config *sentinel = (struct config *)0x1, *c = sentinel;
        int r;

        r = config_load_string(text, "t.conf", &c, err);
        cr_assert_eq(r, -EINVAL, "expected -EINVAL, got %d for:\n%s", r, text);
        cr_assert_eq(c, sentinel, "*ret written on failure");
        cr_assert_neq(err->msg[0], '\0', "no error text");
        return err->msg;
}

static void expect_error(const char *text, const char *needle)
{
        struct ch_error err = {{0}};

        load_bad(text, &err);
        cr_assert(strstr(err.msg, needle), "error\n  %s\ndoes not contain\n  %s", err.msg, needle);
}

static size_t count_lines(const char *s)
{
        size_t n = *s ? 1 : 0;

        for (; *s; s++)
                n += *s == '\n';
        return n;
}

static char *print_to_string(const struct config *c)
{
        char *text = NULL;
        size_t len = 0;
        FILE *f = open_memstream(&text, &len);

        cr_assert_not_null(f);
        cr_assert_eq(config_print(c, f), 0);
        cr_assert_eq(fclose(f), 0);
        return text;
}

Test(config, builtin_defaults)
{
        struct config *c = load_ok("");

        cr_expect_str_eq(c->source, "t.conf");
        cr_expect_str_eq(c->api.listen, "127.0.0.1:8080");
        cr_expect_eq(c->api.max_body, 1048576);
        cr_expect_str_eq(c->api.admin_token, "");
        cr_expect_eq(c->api.threads, 0);
        cr_expect_eq(c->api.max_connections, 1024);
        cr_expect_eq(c->api.connection_timeout_s, 30);
        cr_expect_str_eq(c->store.backend, "sqlite");
        cr_expect_str_eq(c->store.path, "/var/lib/ctxhookd/context.db");
        cr_expect_str_eq(c->store.url, "");
        cr_expect_eq(c->store.busy_timeout_ms, 5000);
        cr_expect_eq(c->store.pool_size, 8);
        cr_expect_eq(c->store.sweep_interval_s, 60);
        cr_expect_eq(c->store.cache_entries, 4096);
        cr_expect_str_eq(c->log.level, "info");
        cr_expect_str_eq(c->kafka.brokers, "", "no Kafka unless asked for");
        cr_expect_str_eq(c->kafka.topic, "conversation-events");
        cr_expect_str_eq(c->kafka.group, "ctxhookd");
        cr_expect_str_eq(c->kafka.account, "");
        cr_expect_eq(c->kafka.max_message_bytes, 1048576);
        cr_expect_null(c->kafka.extra);
        cr_expect_eq(c->kafka.n_extra, 0);
        cr_expect_eq(c->delivery.max_in_flight, 64);
        cr_expect_eq(c->delivery.outbox_max, 100000);
        cr_expect_eq(c->delivery.retry_base_ms, 1000);
        cr_expect_eq(c->delivery.retry_max_ms, 300000);
        cr_expect_eq(c->delivery.retention_s, 604800);
        cr_expect_null(c->hooks);
        cr_expect_eq(c->n_hooks, 0);
        config_free(c);
}

Test(config, embedded_config_loads_with_documented_values)
{
        struct ch_error err = {{0}};
        struct config *c = NULL;

        cr_assert_eq(config_load(NULL, &c, &err), 0, "%s", err.msg);
        cr_expect_str_eq(c->source, "<embedded>");
        cr_expect_str_eq(c->api.listen, "127.0.0.1:8080");
        cr_expect_str_eq(c->store.backend, "sqlite");
        cr_expect_str_eq(c->store.path, "ctxhookd.db");
        cr_expect_str_eq(c->store.url, "");
        cr_expect_eq(c->api.max_body, 1048576);
        cr_expect_str_eq(c->api.admin_token, "");
        cr_expect_eq(c->store.pool_size, 8);
        cr_expect_str_eq(c->log.level, "info");
        cr_expect_str_eq(c->kafka.brokers, "embedded", "a trial needs no Kafka");
        cr_expect_str_eq(c->kafka.topic, "conversation-events");
        cr_expect_str_eq(c->kafka.group, "ctxhookd");
        cr_expect_str_eq(c->kafka.account, "");
        cr_expect_eq(c->kafka.n_extra, 0);
        cr_expect_eq(c->delivery.max_in_flight, 64);
        cr_expect_eq(c->delivery.retry_max_ms, 300000);
        cr_expect_eq(c->n_hooks, 0, "the shipped file only shows a hook, commented out");
        config_free(c);
}

/* The embedded text is the shipped file, and that file sets (documents) every option. */
Test(config, embedded_text_is_the_shipped_file_and_covers_every_option)
{
        const char *src = getenv("CTXHOOKD_SOURCE_DIR");
        struct config *c = load_ok("");
        char *printed, *line, *save = NULL, path[4096], *file_text = NULL;
        size_t n = 0, checked = 0;
        FILE *f;

        if (src) {
                snprintf(path, sizeof(path), "%s/config/ctxhookd.conf", src);
                f = fopen(path, "r");
                cr_assert_not_null(f, "%s", path);
                cr_assert_gt(getdelim(&file_text, &n, '\0', f), 0);
                fclose(f);
                cr_expect_str_eq(config_embedded_text, file_text);
                free(file_text);
        }
        printed = print_to_string(c);
        for (line = strtok_r(printed, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
                char needle[256];
                const char *eq = strstr(line, " =");

                if (line[0] == ';' || line[0] == '[' || !eq)
                        continue;
                snprintf(needle, sizeof(needle), "\n%.*s =", (int)(eq - line), line);
                cr_expect(strstr(config_embedded_text, needle), "shipped file lacks %s",
                          needle + 1);
                checked++;
        }
        /* [api] 6, [store] 7, [log] 1, [kafka] 5, [delivery] 5; no hooks. */
        cr_expect_eq(checked, 24, "config_print printed %zu options", checked);
        free(printed);
        config_free(c);
}

/* "; key = value" with a lower-case key: a commented-out option line. */
static bool is_commented_option(const char *p, size_t len)
{
        size_t k;

        if (len < 4 || p[0] != ';' || p[1] != ' ')
                return false;
        k = strspn(p + 2, "abcdefghijklmnopqrstuvwxyz_");
        return k > 0 && 2 + k + 2 <= len && p[2 + k] == ' ' && p[3 + k] == '=';
}

/* The shipped file's commented-out hook shows every hook key, and uncommented it is a valid
 * hook: "; [hook" starts it, and each "; key = value" line after it is one of its keys. */
Test(config, shipped_example_hook_is_complete_and_valid)
{
        const char *start = strstr(config_embedded_text, "\n; [hook \"notes-on-autoclose\"]\n");
        static const char *const keys[] = {"on",           "close_reason", "namespaces",
                                           "url",          "secret",       "timeout_ms",
                                           "max_attempts", "bearer_token", "clear_after"};
        size_t head, keys_found = 0;
        char *text, *out;
        const char *p;
        struct config *c;

        cr_assert_not_null(start, "no example hook in the shipped file");
        text = calloc(1, strlen(config_embedded_text) + 1);
        cr_assert_not_null(text);
        /* The shipped text up to the example, then the example's header and option lines. */
        head = (size_t)(start - config_embedded_text) + 1;
        memcpy(text, config_embedded_text, head);
        out = text + head;
        for (p = config_embedded_text + head; *p;) {
                const char *eol = strchr(p, '\n');
                size_t len = eol ? (size_t)(eol - p) : strlen(p);

                if (p == config_embedded_text + head || is_commented_option(p, len)) {
                        memcpy(out, p + 2, len - 2);
                        out += len - 2;
                        *out++ = '\n';
                        keys_found += p != config_embedded_text + head;
                }
                p += len + (eol ? 1 : 0);
        }
        cr_expect_eq(keys_found, 9, "%s", text + head);
        for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
                char needle[64];

                snprintf(needle, sizeof(needle), "\n%s =", keys[i]);
                cr_expect(strstr(text + head, needle), "example hook lacks %s", keys[i]);
        }
        c = load_ok(text);
        cr_assert_eq(c->n_hooks, 1);
        cr_expect_str_eq(c->hooks[0].name, "notes-on-autoclose");
        cr_expect_eq(c->hooks[0].on, EVENT_END);
        cr_assert_not_null(c->hooks[0].close_reasons);
        cr_expect_str_eq(c->hooks[0].close_reasons[0], "SYSTEM");
        cr_expect_str_eq(c->hooks[0].close_reasons[1], "TIMEOUT");
        cr_expect_null(c->hooks[0].close_reasons[2]);
        cr_assert_not_null(c->hooks[0].namespaces);
        cr_expect_str_eq(c->hooks[0].namespaces[0], "agentNotes");
        cr_expect_null(c->hooks[0].namespaces[1]);
        cr_expect_str_eq(c->hooks[0].url, "http://127.0.0.1:9000/fn");
        cr_expect_eq(c->hooks[0].timeout_ms, 5000);
        cr_expect_eq(c->hooks[0].max_attempts, 8);
        cr_expect_str_eq(c->hooks[0].bearer_token, "");
        cr_expect_eq(c->hooks[0].clear_after, false);
        cr_expect_str_eq(c->kafka.brokers, "embedded");
        config_free(c);
        free(text);
}

/* Hook keys are in a labelled section, so the shipped file documents them in its example. */
Test(config, shipped_file_documents_every_hook_key)
{
        struct config *c = load_ok("[hook \"x\"]\non = conversation.end\nurl = http://h/\n"
                                   "secret = " SECRET_A "\n");
        char *printed = print_to_string(c), *line, *save = NULL;
        size_t checked = 0;
        bool in_hook = false;

        for (line = strtok_r(printed, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
                char needle[256];
                const char *eq = strstr(line, " =");

                if (line[0] == '[')
                        in_hook = strncmp(line, "[hook ", 6) == 0;
                if (!in_hook || line[0] == ';' || line[0] == '[' || !eq)
                        continue;
                snprintf(needle, sizeof(needle), "\n; %.*s =", (int)(eq - line), line);
                cr_expect(strstr(config_embedded_text, needle), "shipped file lacks %s",
                          needle + 1);
                checked++;
        }
        cr_expect_eq(checked, 9, "config_print printed %zu hook options", checked);
        free(printed);
        config_free(c);
}

struct int_option {
        const char *section, *key;
        size_t offset;
        long long min, max;
};

#define INT_OPT(s, k, field, lo, hi)                                                               \
        {                                                                                          \
                s, k, offsetof(struct config, field), lo, hi                                       \
        }

static const struct int_option int_options[] = {
    INT_OPT("api", "max_body", api.max_body, 1024, 67108864),
    INT_OPT("api", "threads", api.threads, 0, 64),
    INT_OPT("api", "max_connections", api.max_connections, 1, 65536),
    INT_OPT("api", "connection_timeout_s", api.connection_timeout_s, 1, 3600),
    INT_OPT("store", "busy_timeout_ms", store.busy_timeout_ms, 0, 600000),
    INT_OPT("store", "pool_size", store.pool_size, 1, 64),
    INT_OPT("store", "sweep_interval_s", store.sweep_interval_s, 1, 86400),
    INT_OPT("store", "cache_entries", store.cache_entries, 0, 1048576),
    INT_OPT("kafka", "max_message_bytes", kafka.max_message_bytes, 1024, 67108864),
    INT_OPT("delivery", "max_in_flight", delivery.max_in_flight, 1, 1024),
    INT_OPT("delivery", "outbox_max", delivery.outbox_max, 100, 100000000),
    INT_OPT("delivery", "retry_base_ms", delivery.retry_base_ms, 10, 3600000),
    INT_OPT("delivery", "retry_max_ms", delivery.retry_max_ms, 100, 86400000),
    INT_OPT("delivery", "retention_s", delivery.retention_s, 60, 31536000),
};

Test(config, integer_bounds)
{
        for (size_t i = 0; i < sizeof(int_options) / sizeof(int_options[0]); i++) {
                const struct int_option *o = &int_options[i];
                long long ok[] = {o->min, o->max}, bad[] = {o->min - 1, o->max + 1};
                char text[256], where[128];

                for (int j = 0; j < 2; j++) {
                        struct config *c;

                        snprintf(text, sizeof(text), "[%s]\n%s = %lld\n", o->section, o->key,
                                 ok[j]);
                        /* Keep retry_base_ms <= retry_max_ms, a rule of its own. */
                        if (strcmp(o->key, "retry_base_ms") == 0)
                                strcat(text, "retry_max_ms = 86400000\n");
                        if (strcmp(o->key, "retry_max_ms") == 0)
                                strcat(text, "retry_base_ms = 10\n");
                        c = load_ok(text);
                        cr_expect_eq(*(int64_t *)((char *)c + o->offset), ok[j], "%s", text);
                        config_free(c);
                }
                snprintf(where, sizeof(where), "t.conf:2: [%s] %s: ", o->section, o->key);
                for (int j = 0; j < 2; j++) {
                        char needle[256];

                        snprintf(text, sizeof(text), "[%s]\n%s = %lld\n", o->section, o->key,
                                 bad[j]);
                        snprintf(needle, sizeof(needle), "%s%lld is out of range", where, bad[j]);
                        expect_error(text, needle);
                }
        }
}

Test(config, integer_syntax)
{
        struct ch_error err = {{0}};

        load_bad("[api]\nmax_body = 12x\n", &err);
        cr_expect_str_eq(err.msg, "t.conf:2: [api] max_body: \"12x\" is not an integer "
                                  "(bytes, 1024…67108864)");
        expect_error("[api]\nthreads =\n",
                     "t.conf:2: [api] threads: \"\" is not an integer (0…64)");
        expect_error("[api]\nthreads = 0x10\n", "[api] threads: \"0x10\" is not an integer");
        expect_error("[api]\nthreads = 1.5\n", "[api] threads: \"1.5\" is not an integer");
        expect_error("[api]\nthreads = 99999999999999999999\n",
                     "[api] threads: 99999999999999999999 is out of range");
}

Test(config, listen_host_port)
{
        static const char *const good[] = {
            "127.0.0.1:0", "127.0.0.1:65535", "localhost:8080",        "0.0.0.0:80",
            "[::1]:8080",  "[::]:0",          "[::ffff:10.0.0.1]:443",
        };
        static const char *const bad[] = {
            "127.0.0.1:65536", "127.0.0.1",      "127.0.0.1:",   ":8080",
            "example.com:80",  "::1:8080",       "[::1]",        "[::1]8080",
            "[zz::1]:80",      "1.2.3.4:-1",     "1.2.3.4:8x",   "1.2.3:80",
            "256.1.1.1:80",    "1.2.3.4:123456", "[1.2.3.4]:80", "localhost:+80",
        };
        char text[256], needle[256];

        for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
                struct config *c;

                snprintf(text, sizeof(text), "[api]\nlisten = %s\n", good[i]);
                c = load_ok(text);
                cr_expect_str_eq(c->api.listen, good[i]);
                config_free(c);
        }
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
                snprintf(text, sizeof(text), "[api]\nlisten = %s\n", bad[i]);
                snprintf(needle, sizeof(needle), "t.conf:2: [api] listen: \"%s\" is not host:port",
                         bad[i]);
                expect_error(text, needle);
        }
}

Test(config, admin_token_is_a_secret_of_16_characters_or_none)
{
        struct ch_error err = {{0}};
        struct config *c;

        c = load_ok("[api]\nadmin_token = 0123456789abcdef\n");
        cr_expect_str_eq(c->api.admin_token, "0123456789abcdef");
        config_free(c);
        c = load_ok("[api]\nadmin_token =\n");
        cr_expect_str_eq(c->api.admin_token, "");
        config_free(c);

        load_bad("[api]\nadmin_token = 0123456789abcde\n", &err);
        cr_expect(strstr(err.msg, "t.conf:2: [api] admin_token: must be 16…1024 characters long"),
                  "%s", err.msg);
        cr_expect_null(strstr(err.msg, "0123456789abcde"), "secret echoed: %s", err.msg);

        expect_error("[api]\nadmin_token = ********\n",
                     "t.conf:2: [api] admin_token: \"********\" is how check-config hides");
}

Test(config, log_level_choices)
{
        static const char *const levels[] = {"error", "warning", "notice", "info", "debug"};
        char text[64];

        for (size_t i = 0; i < 5; i++) {
                struct config *c;

                snprintf(text, sizeof(text), "[log]\nlevel = %s\n", levels[i]);
                c = load_ok(text);
                cr_expect_str_eq(c->log.level, levels[i]);
                config_free(c);
        }
        expect_error("[log]\nlevel = loud\n", "t.conf:2: [log] level: \"loud\" is not one of "
                                              "error|warning|notice|info|debug");
        expect_error("[log]\nlevel = INFO\n", "[log] level: \"INFO\" is not one of");
}

Test(config, store_path_strings)
{
        struct config *c = load_ok("[store]\npath = /srv/my data/ctx.db\n");

        cr_expect_str_eq(c->store.path, "/srv/my data/ctx.db");
        config_free(c);
        expect_error("[store]\npath =\n", "t.conf:2: [store] path: must not be empty");
}

Test(config, every_problem_reported_with_file_line_section_and_key)
{
        static const char text[] = "[api]\n"            /* 1 */
                                   "max_body = 12x\n"   /* 2 */
                                   "listen = nowhere\n" /* 3 */
                                   "bogus = 1\n"        /* 4 */
                                   "[store]\n"          /* 5 */
                                   "pool_size = 0\n"    /* 6 */
                                   "[nope]\n"           /* 7 */
                                   "x = 1\n"            /* 8: under a bad header */
                                   "[log]\n"            /* 9 */
                                   "level = loud\n"     /* 10 */
                                   "level = info\n"     /* 11 */
                                   "this is not ini\n"  /* 12 */
                                   "[broken\n"          /* 13 */
                                   "y = 2\n";           /* 14: under a bad header */
        static const char *const expected[] = {
            "t.conf:2: [api] max_body: \"12x\" is not an integer",
            "t.conf:3: [api] listen: \"nowhere\" is not host:port",
            "t.conf:4: [api] bogus: unknown key",
            "t.conf:6: [store] pool_size: 0 is out of range (1…64)",
            "t.conf:7: [nope]: unknown section (known: api, store, log, kafka, delivery, hook)",
            "t.conf:10: [log] level: \"loud\" is not one of",
            "t.conf:11: [log] level: duplicate key (first set on line 10)",
            "t.conf:12: syntax error",
            "t.conf:13: syntax error",
        };
        struct ch_error err = {{0}};
        const char *at;

        load_bad(text, &err);
        cr_expect_eq(count_lines(err.msg), 9, "%s", err.msg);
        at = err.msg;
        for (size_t i = 0; i < sizeof(expected) / sizeof(expected[0]); i++) {
                const char *hit = strstr(at, expected[i]);

                cr_assert(hit, "missing (or out of order) %s in\n%s", expected[i], err.msg);
                cr_expect(hit == err.msg || hit[-1] == '\n', "not at a line start: %s",
                          expected[i]);
                at = hit + strlen(expected[i]);
        }
}

Test(config, unknown_section_and_key_and_duplicates)
{
        expect_error("[api]\nlistenn = 127.0.0.1:1\n", "t.conf:2: [api] listenn: unknown key");
        expect_error("[api]\n[kafkaa]\n", "t.conf:2: [kafkaa]: unknown section");
        expect_error("[api \"x\"]\nthreads = 1\n",
                     "t.conf:1: [api \"x\"]: section [api] takes no name");
        expect_error("[api x]\n", "t.conf:1: [api x]: expected [name] or [name \"label\"]");
        expect_error("[]\n", "t.conf:1: []: unknown section");
        /* inih keeps 49 characters of a header; longer ones are read from the line itself. */
        expect_error("[hook_with_a_name_far_longer_than_inih_keeps_around_here]\nx = 1\n",
                     "t.conf:1: [hook_with_a_name_far_longer_than_inih_keeps_around_here]: "
                     "unknown section");
        expect_error("[hook \"a-name-that-is-far-too-long-for-any-header-a-name-that-is-far-too-"
                     "long-for-any-header-a-name-that-is-far-too-long\"]\nx = 1\n",
                     "t.conf:1: [hook \"a-name-that-is…]: section header longer than 100 "
                     "characters");
        expect_error("[hook]\non = conversation.end\n",
                     "t.conf:1: [hook]: section [hook] needs a name: [hook \"name\"]");
        expect_error("[kafka \"x\"]\n", "t.conf:1: [kafka \"x\"]: section [kafka] takes no name");
        expect_error("threads = 1\n[api]\n", "t.conf:1: threads: key outside of any section");
        expect_error("[api]\nthreads = 1\n[store]\n[api]\nthreads = 2\n",
                     "t.conf:5: [api] threads: duplicate key (first set on line 2)");
        expect_error("[api]\nthreads = 1\nthreads = 1\n",
                     "t.conf:3: [api] threads: duplicate key (first set on line 2)");
}

Test(config, keys_under_a_bad_header_are_not_reported_again)
{
        struct ch_error err = {{0}};

        load_bad("[api]\nthreads = 1\n[nope]\nthreads = 2\nwhatever = 3\n", &err);
        cr_expect_str_eq(err.msg, "t.conf:3: [nope]: unknown section (known: api, store, log, "
                                  "kafka, delivery, hook)");
}

Test(config, long_lines)
{
        char text[10000], *p = text;
        struct ch_error err = {{0}};
        struct config *c;

        /* 4096 characters is the limit, and fits. */
        p += sprintf(p, "[store]\npath = ");
        memset(p, 'a', 4096 - 7);
        p += 4096 - 7;
        strcpy(p, "\n");
        c = load_ok(text);
        cr_expect_eq(strlen(c->store.path), 4096 - 7);
        config_free(c);

        /* Longer is one error, and the line numbers after it stay right. */
        p = text;
        p += sprintf(p, "[store]\npath = ");
        memset(p, 'a', 5000);
        p += 5000;
        strcpy(p, "\nbogus = 1\n");
        load_bad(text, &err);
        cr_expect_str_eq(err.msg, "t.conf:2: line longer than 4096 characters\n"
                                  "t.conf:3: [store] bogus: unknown key");
}

Test(config, comments_whitespace_and_line_endings)
{
        struct config *c = load_ok("\xEF\xBB\xBF; leading comment\n"
                                   "# hash comment\n"
                                   "[api]\n"
                                   "  max_body = 2048 ; inline comment\n"
                                   "  threads\t=\t4\t; tab before the comment\n"
                                   "\n"
                                   "[store]\r\n"
                                   "path = a;b.db\r\n"
                                   "pool_size = 3\r\n"
                                   "[log]\n"
                                   "level = debug"); /* no final line break */

        cr_expect_eq(c->api.max_body, 2048);
        cr_expect_eq(c->api.threads, 4);
        cr_expect_str_eq(c->store.path, "a;b.db"); /* ";" without a space before is data */
        cr_expect_eq(c->store.pool_size, 3);
        cr_expect_str_eq(c->log.level, "debug");
        config_free(c);

        /* Quotes are not special: they are part of the value. */
        expect_error("[log]\nlevel = \"debug\"\n", "[log] level: \"\"debug\"\" is not one of");
}

Test(config, environment_overrides_the_file)
{
        struct config *c;

        setenv("CTXHOOKD_API_LISTEN", "0.0.0.0:9000", 1);
        setenv("CTXHOOKD_API_MAX_BODY", " 4096 ", 1);
        setenv("CTXHOOKD_API_ADMIN_TOKEN", "from-the-environment", 1);
        setenv("CTXHOOKD_STORE_PATH", "/tmp/env.db", 1);
        setenv("CTXHOOKD_LOG_LEVEL", "debug", 1);
        c = load_ok("[api]\nlisten = 127.0.0.1:1\nmax_body = 2048\n[store]\npath = file.db\n");
        cr_expect_str_eq(c->api.listen, "0.0.0.0:9000");
        cr_expect_eq(c->api.max_body, 4096);
        cr_expect_str_eq(c->api.admin_token, "from-the-environment");
        cr_expect_str_eq(c->store.path, "/tmp/env.db");
        cr_expect_str_eq(c->log.level, "debug");
        cr_expect_eq(c->store.pool_size, 8, "an option not in the environment kept its value");
        config_free(c);
}

Test(config, environment_applies_to_the_embedded_config)
{
        struct ch_error err = {{0}};
        struct config *c = NULL;

        setenv("CTXHOOKD_STORE_POOL_SIZE", "2", 1);
        cr_assert_eq(config_load(NULL, &c, &err), 0, "%s", err.msg);
        cr_expect_eq(c->store.pool_size, 2);
        cr_expect_str_eq(c->store.path, "ctxhookd.db");
        config_free(c);
}

Test(config, bad_environment_value_names_the_variable)
{
        struct ch_error err = {{0}};

        setenv("CTXHOOKD_API_MAX_BODY", "12x", 1);
        setenv("CTXHOOKD_STORE_PATH", "a\nb", 1);
        setenv("CTXHOOKD_API_ADMIN_TOKEN", "short", 1);
        load_bad("[api]\nmax_body = 2048\n", &err);
        cr_expect_str_eq(err.msg,
                         "environment CTXHOOKD_API_MAX_BODY: \"12x\" is not an integer "
                         "(bytes, 1024…67108864)\n"
                         "environment CTXHOOKD_API_ADMIN_TOKEN: must be 16…1024 characters long\n"
                         "environment CTXHOOKD_STORE_PATH: contains a control character");
}

Test(config, print_masks_secrets_and_round_trips)
{
        static const char text[] = "[api]\n"
                                   "listen = [::1]:0\n"
                                   "max_body = 4096\n"
                                   "threads = 3\n"
                                   "max_connections = 10\n"
                                   "connection_timeout_s = 5\n"
                                   "[store]\n"
                                   "path = /tmp/some where.db\n"
                                   "busy_timeout_ms = 0\n"
                                   "pool_size = 2\n"
                                   "sweep_interval_s = 7\n"
                                   "[log]\n"
                                   "level = warning\n";
        struct config *c = load_ok(text), *again;
        char *first, *second;

        first = print_to_string(c);
        cr_expect(strstr(first, "\n[api]\n"), "%s", first);
        cr_expect(strstr(first, "\nlisten = [::1]:0\n"), "%s", first);
        cr_expect(strstr(first, "\npath = /tmp/some where.db\n"), "%s", first);
        cr_expect(strstr(first, "\nadmin_token =\n"), "%s", first);
        cr_expect(strstr(first, "\nlevel = warning\n"), "%s", first);
        again = load_ok(first);
        second = print_to_string(again);
        /* Both were loaded as "t.conf", so even the source comment matches. */
        cr_expect_str_eq(first, second);
        cr_expect_eq(again->api.max_body, 4096);
        cr_expect_eq(again->store.busy_timeout_ms, 0);
        cr_expect_str_eq(again->api.listen, "[::1]:0");
        free(first);
        free(second);
        config_free(again);
        config_free(c);
}

Test(config, print_never_shows_a_secret)
{
        struct config *c = load_ok("[api]\nadmin_token = s3cret-s3cret-s3cret\n");
        struct ch_error err = {{0}};
        char *out = print_to_string(c);

        cr_expect_null(strstr(out, "s3cret"), "%s", out);
        cr_expect(strstr(out, "\nadmin_token = ********\n"), "%s", out);
        /* Loading that output back refuses the mask, and only the mask. */
        load_bad(out, &err);
        cr_expect_eq(count_lines(err.msg), 1, "%s", err.msg);
        cr_expect(strstr(err.msg, "[api] admin_token: \"********\" is how check-config hides"),
                  "%s", err.msg);
        free(out);
        config_free(c);
}

Test(config, default_path_honours_the_environment)
{
        int explicit_path = -1;

        cr_expect_str_eq(config_default_path(&explicit_path), CONFIG_DEFAULT_PATH);
        cr_expect_eq(explicit_path, 0);
        setenv("CTXHOOKD_CONFIG", "/tmp/elsewhere.conf", 1);
        cr_expect_str_eq(config_default_path(&explicit_path), "/tmp/elsewhere.conf");
        cr_expect_eq(explicit_path, 1);
}

static char *temp_dir(void)
{
        char *dir = strdup("/tmp/ctxhookd-test-config-XXXXXX");

        cr_assert_not_null(dir);
        cr_assert_not_null(mkdtemp(dir));
        return dir;
}

static void write_file(const char *path, const char *data, size_t len)
{
        FILE *f = fopen(path, "w");

        cr_assert_not_null(f, "%s", path);
        cr_assert_eq(fwrite(data, 1, len, f), len);
        cr_assert_eq(fclose(f), 0);
}

Test(config, load_from_file)
{
        char *dir = temp_dir(), path[512], needle[600];
        struct ch_error err = {{0}};
        struct config *c = NULL;
        static const char good[] = "[api]\nthreads = 2\n";
        static const char bad[] = "[api]\nthreads = 2\nthreads = 99\n";

        snprintf(path, sizeof(path), "%s/ctxhookd.conf", dir);
        write_file(path, good, sizeof(good) - 1);
        cr_assert_eq(config_load(path, &c, &err), 0, "%s", err.msg);
        cr_expect_str_eq(c->source, path);
        cr_expect_eq(c->api.threads, 2);
        c = config_free(c);
        cr_expect_null(c);

        write_file(path, bad, sizeof(bad) - 1);
        cr_assert_eq(config_load(path, &c, &err), -EINVAL);
        snprintf(needle, sizeof(needle), "%s:3: [api] threads: duplicate key", path);
        cr_expect(strstr(err.msg, needle), "%s", err.msg);
        cr_expect_null(c);

        unlink(path);
        rmdir(dir);
        free(dir);
}

Test(config, unreadable_files)
{
        char *dir = temp_dir(), path[512], needle[600];
        struct ch_error err = {{0}};
        struct config *c = NULL;
        char *big;
        int r;

        snprintf(path, sizeof(path), "%s/missing.conf", dir);
        cr_expect_eq(config_load(path, &c, &err), -ENOENT);
        snprintf(needle, sizeof(needle), "%s: %s", path, strerror(ENOENT));
        cr_expect(strstr(err.msg, needle), "%s", err.msg);

        r = config_load(dir, &c, &err);
        cr_expect_eq(r, -EISDIR, "directory: %d", r);
        cr_expect(strstr(err.msg, dir), "%s", err.msg);

        snprintf(path, sizeof(path), "%s/nul.conf", dir);
        write_file(path, "[api]\n\0threads = 1\n", 19);
        cr_expect_eq(config_load(path, &c, &err), -EINVAL);
        cr_expect(strstr(err.msg, "NUL"), "%s", err.msg);
        unlink(path);

        snprintf(path, sizeof(path), "%s/big.conf", dir);
        big = malloc(2 * 1024 * 1024);
        cr_assert_not_null(big);
        memset(big, '\n', 2 * 1024 * 1024);
        write_file(path, big, 2 * 1024 * 1024);
        free(big);
        cr_expect_eq(config_load(path, &c, &err), -EFBIG);
        cr_expect(strstr(err.msg, path), "%s", err.msg);
        unlink(path);

        cr_expect_null(c);
        rmdir(dir);
        free(dir);
}

Test(config, null_error_and_free_are_accepted)
{
        struct config *c = NULL;

        cr_expect_eq(config_load_string("[nope]\n", "t.conf", &c, NULL), -EINVAL);
        cr_expect_null(c);
        cr_expect_null(config_free(NULL));
}

/* ---- [kafka] ---- */

Test(config, kafka_options)
{
        char topic[300], text[400];
        struct config *c;

        c = load_ok("[kafka]\nbrokers = k1:9092,k2:9093\ntopic = a.b_c-D9\ngroup = my group\n"
                    "account = 12345678\nmax_message_bytes = 2048\n");
        cr_expect_str_eq(c->kafka.brokers, "k1:9092,k2:9093");
        cr_expect_str_eq(c->kafka.topic, "a.b_c-D9");
        cr_expect_str_eq(c->kafka.group, "my group");
        cr_expect_str_eq(c->kafka.account, "12345678");
        cr_expect_eq(c->kafka.max_message_bytes, 2048);
        config_free(c);

        c = load_ok("[kafka]\nbrokers = embedded\naccount = le.acc_9-x\n");
        cr_expect_str_eq(c->kafka.brokers, "embedded");
        cr_expect_str_eq(c->kafka.account, "le.acc_9-x");
        config_free(c);
        c = load_ok("[kafka]\nbrokers =\n");
        cr_expect_str_eq(c->kafka.brokers, "");
        config_free(c);

        /* Topic names: Kafka's characters, 1…249 of them, not "." or "..". */
        memset(topic, 't', 249);
        topic[249] = '\0';
        snprintf(text, sizeof(text), "[kafka]\ntopic = %s\n", topic);
        c = load_ok(text);
        cr_expect_eq(strlen(c->kafka.topic), 249);
        config_free(c);
        snprintf(text, sizeof(text), "[kafka]\ntopic = %st\n", topic);
        expect_error(text, "t.conf:2: [kafka] topic: must be at most 249 characters long");
        expect_error("[kafka]\ntopic =\n", "t.conf:2: [kafka] topic: must not be empty");
        expect_error("[kafka]\ntopic = a/b\n",
                     "t.conf:2: [kafka] topic: \"a/b\" is not a Kafka topic name");
        expect_error("[kafka]\ntopic = ..\n", "[kafka] topic: \"..\" is not a Kafka topic name");

        expect_error("[kafka]\nbrokers = k1:9092, k2:9092\n",
                     "t.conf:2: [kafka] brokers: \"k1:9092, k2:9092\" is not host:port");
        expect_error("[kafka]\nbrokers = k1:9092,,k2:9092\n",
                     "[kafka] brokers: \"k1:9092,,k2:9092\" has an empty item");
        expect_error("[kafka]\ngroup =\n", "t.conf:2: [kafka] group: must not be empty");
        expect_error("[kafka]\naccount = a b\n",
                     "t.conf:2: [kafka] account: \"a b\" is not an account id");
        expect_error("[kafka]\naccount = 12345678901234567890123456789012345678901234567890123456"
                     "789012345\n",
                     "[kafka] account: ");
}

Test(config, kafka_extra_keys_are_kept_in_file_order)
{
        struct config *c = load_ok("[kafka]\n"
                                   "security.protocol = SASL_SSL\n"
                                   "topic = events\n"
                                   "sasl.mechanisms = PLAIN\n"
                                   "sasl.username = ctx\n"
                                   "sasl.password = p@ss word\n"
                                   "fetch.wait.max.ms = 50\n");

        cr_expect_str_eq(c->kafka.topic, "events", "a table key is not an extra key");
        cr_assert_eq(c->kafka.n_extra, 5);
        cr_expect_str_eq(c->kafka.extra[0].key, "security.protocol");
        cr_expect_str_eq(c->kafka.extra[0].value, "SASL_SSL");
        cr_expect_str_eq(c->kafka.extra[1].key, "sasl.mechanisms");
        cr_expect_str_eq(c->kafka.extra[1].value, "PLAIN");
        cr_expect_str_eq(c->kafka.extra[2].key, "sasl.username");
        cr_expect_str_eq(c->kafka.extra[3].key, "sasl.password");
        cr_expect_str_eq(c->kafka.extra[3].value, "p@ss word", "passed as is");
        cr_expect_str_eq(c->kafka.extra[4].key, "fetch.wait.max.ms");
        cr_expect_str_eq(c->kafka.extra[4].value, "50");
        config_free(c);
}

Test(config, kafka_extra_keys_refused)
{
        struct ch_error err = {{0}};

        expect_error("[kafka]\ngroup.id = g\n",
                     "t.conf:2: [kafka] group.id: set by ctxhookd itself; use [kafka] group");
        expect_error("[kafka]\nbootstrap.servers = k:9092\n",
                     "t.conf:2: [kafka] bootstrap.servers: set by ctxhookd itself; use [kafka] "
                     "brokers");
        expect_error("[kafka]\nmetadata.broker.list = k:9092\n", "use [kafka] brokers");
        expect_error("[kafka]\nenable.auto.offset.store = true\n",
                     "t.conf:2: [kafka] enable.auto.offset.store: set by ctxhookd itself");
        expect_error("[kafka]\nenable.auto.commit = false\n",
                     "t.conf:2: [kafka] enable.auto.commit: set by ctxhookd itself");
        /* Not a librdkafka property name at all. */
        expect_error("[kafka]\nSecurity.Protocol = SSL\n",
                     "t.conf:2: [kafka] Security.Protocol: unknown key");
        expect_error("[kafka]\nbrokerz = k:9092\n", "t.conf:2: [kafka] brokerz: unknown key");
        /* librdkafka judges its own properties when the file is loaded. */
        expect_error("[kafka]\nsecurity.protocol = carrier-pigeon\n",
                     "t.conf:2: [kafka] security.protocol: librdkafka refuses it: ");
        expect_error("[kafka]\nsecurity.protocl = SSL\n",
                     "t.conf:2: [kafka] security.protocl: unknown key (neither a ctxhookd option "
                     "nor a librdkafka property)");
        expect_error("[kafka]\nsocket.timeout.ms =\n",
                     "t.conf:2: [kafka] socket.timeout.ms: must not be empty");
        expect_error("[kafka]\nclient.id = a\nclient.id = b\n",
                     "t.conf:3: [kafka] client.id: duplicate key (first set on line 2)");
        expect_error("[kafka]\nsasl.password = ********\n",
                     "t.conf:2: [kafka] sasl.password: \"********\" is how check-config hides");
        /* Secret-looking properties take any text; a bad value of another is one error. */
        load_bad("[kafka]\nssl.key.password = hunter2-hunter2\nfetch.wait.max.ms = x9q\n", &err);
        cr_expect_str_eq(err.msg, "t.conf:3: [kafka] fetch.wait.max.ms: librdkafka refuses it: "
                                  "Invalid value for configuration property "
                                  "\"fetch.wait.max.ms\"");
}

/* ---- [delivery] ---- */

Test(config, delivery_retry_max_must_not_be_below_retry_base)
{
        struct ch_error err = {{0}};
        struct config *c;

        c = load_ok("[delivery]\nretry_base_ms = 500\nretry_max_ms = 500\n");
        cr_expect_eq(c->delivery.retry_base_ms, 500);
        cr_expect_eq(c->delivery.retry_max_ms, 500);
        config_free(c);

        load_bad("[delivery]\nretry_base_ms = 2000\nretry_max_ms = 1500\n", &err);
        cr_expect_str_eq(err.msg, "t.conf:3: [delivery] retry_max_ms: 1500 is less than "
                                  "retry_base_ms (2000); the longest back-off cannot be shorter "
                                  "than the first");
        /* Only the base was written: it is the one blamed, not the default maximum. */
        load_bad("[delivery]\nmax_in_flight = 2\nretry_base_ms = 400000\n", &err);
        cr_expect_str_eq(err.msg, "t.conf:3: [delivery] retry_base_ms: 400000 is more than "
                                  "retry_max_ms (300000); the longest back-off cannot be "
                                  "shorter than the first; raise retry_max_ms too");
        setenv("CTXHOOKD_DELIVERY_RETRY_MAX_MS", "200", 1);
        load_bad("[delivery]\nretry_max_ms = 5000\n", &err);
        cr_expect_str_eq(err.msg, "environment CTXHOOKD_DELIVERY_RETRY_MAX_MS: 200 is less than "
                                  "retry_base_ms (1000); the longest back-off cannot be shorter "
                                  "than the first");
}

Test(config, environment_overrides_kafka_and_delivery)
{
        struct config *c;

        setenv("CTXHOOKD_KAFKA_BROKERS", "k9:1", 1);
        setenv("CTXHOOKD_KAFKA_ACCOUNT", "777", 1);
        setenv("CTXHOOKD_DELIVERY_MAX_IN_FLIGHT", "3", 1);
        c = load_ok("[kafka]\nbrokers = embedded\n");
        cr_expect_str_eq(c->kafka.brokers, "k9:1");
        cr_expect_str_eq(c->kafka.account, "777");
        cr_expect_eq(c->delivery.max_in_flight, 3);
        config_free(c);
}

/* ---- [hook "name"] ---- */

static const char hook_full[] = "[hook \"notes-on-autoclose\"]\n" /* 1 */
                                "on = conversation.end, conversation.idle\n"
                                "close_reason = SYSTEM , TIMEOUT\n"
                                "namespaces = agentNotes,routing_2\n"
                                "url = https://fn.example.com:8443/run?x=1\n"
                                "secret = " SECRET_A "\n"
                                "bearer_token = b3arer-token\n"
                                "timeout_ms = 100\n"
                                "max_attempts = 1\n"
                                "clear_after = yes\n";

Test(config, hook_parsed_into_the_struct)
{
        struct config *c = load_ok(hook_full);
        const struct config_hook *h;

        cr_assert_eq(c->n_hooks, 1);
        h = &c->hooks[0];
        cr_expect_str_eq(h->name, "notes-on-autoclose");
        cr_expect_eq(h->on, EVENT_END | EVENT_IDLE);
        cr_assert_not_null(h->close_reasons);
        cr_expect_str_eq(h->close_reasons[0], "SYSTEM", "items are trimmed");
        cr_expect_str_eq(h->close_reasons[1], "TIMEOUT");
        cr_expect_null(h->close_reasons[2]);
        cr_assert_not_null(h->namespaces);
        cr_expect_str_eq(h->namespaces[0], "agentNotes");
        cr_expect_str_eq(h->namespaces[1], "routing_2");
        cr_expect_null(h->namespaces[2]);
        cr_expect_str_eq(h->url, "https://fn.example.com:8443/run?x=1");
        cr_expect_str_eq(h->secret, SECRET_A);
        cr_expect_str_eq(h->bearer_token, "b3arer-token");
        cr_expect_eq(h->timeout_ms, 100);
        cr_expect_eq(h->max_attempts, 1);
        cr_expect_eq(h->clear_after, true);
        config_free(c);
}

Test(config, hook_defaults_and_absent_lists)
{
        struct config *c = load_ok("[hook \"h\"]\non = conversation.ttr,conversation.new,"
                                   "conversation.routing,conversation.participants\n"
                                   "url = http://[::1]:9000\nsecret = " SECRET_B "\n"
                                   "close_reason =\n");
        const struct config_hook *h = &c->hooks[0];

        cr_assert_eq(c->n_hooks, 1);
        cr_expect_eq(h->on, EVENT_TTR | EVENT_NEW | EVENT_ROUTING | EVENT_PARTICIPANTS);
        cr_expect_null(h->close_reasons, "an empty list is no filter");
        cr_expect_null(h->namespaces, "absent = no context");
        cr_expect_str_eq(h->bearer_token, "");
        cr_expect_eq(h->timeout_ms, 5000);
        cr_expect_eq(h->max_attempts, 8);
        cr_expect_eq(h->clear_after, false);
        config_free(c);
}

Test(config, hooks_in_file_order_between_other_sections)
{
        struct config *c = load_ok("[hook \"zeta\"]\non = conversation.end\nurl = http://a/\n"
                                   "secret = " SECRET_A "\n"
                                   "[api]\nthreads = 2\n"
                                   "[hook \"alpha\"]\non = conversation.idle\nurl = http://b/\n"
                                   "secret = " SECRET_B "\nmax_attempts = 3\n");

        cr_assert_eq(c->n_hooks, 2);
        cr_expect_str_eq(c->hooks[0].name, "zeta");
        cr_expect_str_eq(c->hooks[0].url, "http://a/");
        cr_expect_eq(c->hooks[0].on, EVENT_END);
        cr_expect_eq(c->hooks[0].max_attempts, 8);
        cr_expect_str_eq(c->hooks[1].name, "alpha");
        cr_expect_str_eq(c->hooks[1].url, "http://b/");
        cr_expect_str_eq(c->hooks[1].secret, SECRET_B);
        cr_expect_eq(c->hooks[1].on, EVENT_IDLE);
        cr_expect_eq(c->hooks[1].max_attempts, 3);
        cr_expect_eq(c->api.threads, 2);
        config_free(c);
}

Test(config, hook_names)
{
        char name[80], text[300];
        struct config *c;

        /* 64 characters: longer than the 49 inih keeps of a header. */
        memset(name, 'n', 64);
        memcpy(name, "Aa0_.-", 6);
        name[64] = '\0';
        snprintf(text, sizeof(text),
                 "[hook \"%s\"]\non = conversation.end\nurl = http://h/\nsecret = " SECRET_A "\n",
                 name);
        c = load_ok(text);
        cr_assert_eq(c->n_hooks, 1);
        cr_expect_str_eq(c->hooks[0].name, name);
        config_free(c);

        snprintf(text, sizeof(text), "[hook \"%sn\"]\non = conversation.end\n", name);
        expect_error(text, "\"]: a hook name is 1-64 characters of A-Z a-z 0-9 _ . -");
        expect_error("[hook \"a b\"]\non = conversation.end\n",
                     "t.conf:1: [hook \"a b\"]: a hook name is 1-64 characters");
        expect_error("[hook \"a/b\"]\n", "t.conf:1: [hook \"a/b\"]: a hook name is");
        expect_error("[hook \"\"]\n", "t.conf:1: [hook \"\"]: expected [name] or [name \"label\"]");
}

Test(config, at_most_config_hooks_max_hooks)
{
        size_t size = (CONFIG_HOOKS_MAX + 1) * 160;
        char *text = malloc(size), *p = text;
        struct ch_error err = {{0}};
        struct config *c;

        cr_assert_not_null(text);
        for (int i = 0; i < CONFIG_HOOKS_MAX; i++)
                p += sprintf(p,
                             "[hook \"h%d\"]\non = conversation.end\nurl = http://h/%d\n"
                             "secret = " SECRET_A "\n",
                             i, i);
        c = load_ok(text);
        cr_expect_eq(c->n_hooks, CONFIG_HOOKS_MAX);
        cr_expect_str_eq(c->hooks[CONFIG_HOOKS_MAX - 1].url, "http://h/63");
        config_free(c);
        sprintf(p, "[hook \"one-too-many\"]\non = conversation.end\n");
        load_bad(text, &err);
        cr_expect_str_eq(err.msg, "t.conf:257: [hook \"one-too-many\"]: more than 64 hooks");
        free(text);
}

Test(config, duplicate_hook_names_name_both_lines)
{
        struct ch_error err = {{0}};

        load_bad("[hook \"a\"]\non = conversation.end\nurl = http://h/\nsecret = " SECRET_A "\n"
                 "[api]\n"
                 "[hook \"a\"]\nurl = http://other/\n",
                 &err);
        /* The keys under the second header are not reported again. */
        cr_expect_str_eq(err.msg,
                         "t.conf:6: [hook \"a\"]: the name \"a\" is already used on line 1");
        /* Names differ by case: two hooks. */
        config_free(load_ok("[hook \"a\"]\non = conversation.end\nurl = http://h/\n"
                            "secret = " SECRET_A "\n"
                            "[hook \"A\"]\non = conversation.end\nurl = http://h/\n"
                            "secret = " SECRET_A "\n"));
}

Test(config, hook_required_keys_name_the_section_line)
{
        struct ch_error err = {{0}};

        load_bad("[api]\n"                                                           /* 1 */
                 "[hook \"no-url\"]\non = conversation.end\nsecret = " SECRET_A "\n" /* 2 */
                 "[hook \"no-secret\"]\non = conversation.end\nurl = http://h/\n"    /* 5 */
                 "[hook \"no-on\"]\nurl = http://h/\nsecret = " SECRET_A "\n"        /* 8 */
                 "[hook \"empty\"]\nsecret =\n",                                     /* 11 */
                 &err);
        cr_expect_str_eq(err.msg, "t.conf:2: [hook \"no-url\"] url: required key missing\n"
                                  "t.conf:5: [hook \"no-secret\"] secret: required key missing\n"
                                  "t.conf:8: [hook \"no-on\"] on: required key missing\n"
                                  "t.conf:11: [hook \"empty\"] on: required key missing\n"
                                  "t.conf:11: [hook \"empty\"] url: required key missing\n"
                                  "t.conf:11: [hook \"empty\"] secret: required key missing");
        /* A value given but refused is one problem, not also a missing key. */
        load_bad("[hook \"x\"]\non = conversation.end\nurl = ftp://h/\nsecret = whsec_\n", &err);
        cr_expect_eq(count_lines(err.msg), 2, "%s", err.msg);
        cr_expect_null(strstr(err.msg, "missing"), "%s", err.msg);
        expect_error("[hook \"x\"]\non =\nurl = http://h/\nsecret = " SECRET_A "\n",
                     "t.conf:2: [hook \"x\"] on: must name at least one event kind "
                     "(conversation.end|conversation.idle|conversation.new|conversation.routing|"
                     "conversation.participants|conversation.ttr)");
}

/* A valid hook with one line replaced, to test that line's value alone. */
static void expect_hook_error(const char *line, const char *needle)
{
        char text[4096];

        snprintf(text, sizeof(text),
                 "[hook \"x\"]\n%s\non = conversation.end\nurl = http://h/\nsecret = " SECRET_A
                 "\n",
                 line);
        expect_error(text, needle);
}

Test(config, hook_event_kinds)
{
        expect_hook_error("on = conversation.ended",
                          "t.conf:2: [hook \"x\"] on: \"conversation.ended\" is not an event kind "
                          "(conversation.end|");
        expect_hook_error("on = end", "[hook \"x\"] on: \"end\" is not an event kind");
        expect_hook_error("on = conversation.end,,conversation.idle",
                          "[hook \"x\"] on: item 2 of the list is empty");
        expect_hook_error("on = conversation.end,", "[hook \"x\"] on: item 2 of the list is empty");
        expect_hook_error("on = conversation.end, conversation.end",
                          "[hook \"x\"] on: \"conversation.end\" is listed twice");
}

Test(config, hook_close_reasons)
{
        char line[600], *p = line;

        expect_hook_error("close_reason = SYSTEM,timeout",
                          "t.conf:2: [hook \"x\"] close_reason: \"timeout\" is not a close reason");
        expect_hook_error("close_reason = SYS TEM", "\"SYS TEM\" is not a close reason");
        expect_hook_error("close_reason = AGENT,,CONSUMER",
                          "[hook \"x\"] close_reason: item 2 of the list is empty");
        expect_hook_error("close_reason = AGENT,AGENT", "\"AGENT\" is listed twice");

        /* CONFIG_LIST_MAX items fit; one more does not. */
        p += sprintf(p, "close_reason = ");
        for (int i = 0; i < CONFIG_LIST_MAX; i++)
                p += sprintf(p, "%sR_%c%c", i ? "," : "", 'A' + i / 26, 'A' + i % 26);
        {
                char text[1024];
                struct config *c;

                snprintf(
                    text, sizeof(text),
                    "[hook \"x\"]\n%s\non = conversation.end\nurl = http://h/\nsecret = " SECRET_A
                    "\n",
                    line);
                c = load_ok(text);
                cr_expect_str_eq(c->hooks[0].close_reasons[CONFIG_LIST_MAX - 1], "R_BF");
                cr_expect_null(c->hooks[0].close_reasons[CONFIG_LIST_MAX]);
                config_free(c);
        }
        strcat(line, ",MORE");
        expect_hook_error(line, "[hook \"x\"] close_reason: more than 32 items");
}

Test(config, hook_namespaces)
{
        expect_hook_error("namespaces = agentNotes,consumer",
                          "t.conf:2: [hook \"x\"] namespaces: namespace 'consumer' is reserved");
        expect_hook_error("namespaces = faas", "namespace 'faas' is reserved");
        expect_hook_error("namespaces = my-notes", "[hook \"x\"] namespaces: ");
        expect_hook_error("namespaces = a, ,b",
                          "[hook \"x\"] namespaces: item 2 of the list is empty");
}

Test(config, hook_urls)
{
        static const char *const good[] = {
            "http://h",
            "https://h.example.com/path?q=1#f",
            "http://127.0.0.1:9000/fn",
            "http://[::1]:8080/x",
            "HTTPS://Example.COM:443",
        };
        static const char *const bad[][2] = {
            {"ftp://h/", "is not an http:// or https:// URL"},
            {"h:80/x", "is not an http:// or https:// URL"},
            {"http://", "has no host"},
            {"http:///path", "has no host"},
            {"http://:80/", "has no host"},
            {"http://h:/", "has no valid port"},
            {"http://h:99999/", "has no valid port"},
            {"http://h:8x/", "has no valid port"},
            {"http://[]/", "has no valid [IPv6] host"},
            {"http://h/a b", "contains a space"},
            {"http://user:pw@h/", "must not hold credentials"},
        };
        char line[3000];

        for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
                char text[600];
                struct config *c;

                snprintf(text, sizeof(text),
                         "[hook \"x\"]\non = conversation.end\nurl = %s\nsecret = " SECRET_A "\n",
                         good[i]);
                c = load_ok(text);
                cr_expect_str_eq(c->hooks[0].url, good[i]);
                config_free(c);
        }
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
                snprintf(line, sizeof(line), "url = %s", bad[i][0]);
                expect_hook_error(line, bad[i][1]);
                expect_hook_error(line, "t.conf:2: [hook \"x\"] url: ");
        }
        /* At most 2048 characters. */
        strcpy(line, "url = http://h/");
        memset(line + strlen(line), 'p', 2048 - strlen("http://h/") + 1);
        line[6 + 2049] = '\0';
        expect_hook_error(line, "[hook \"x\"] url: must be at most 2048 characters long");
}

Test(config, hook_secrets_are_checked_and_never_echoed)
{
        static const char *const bad[] = {
            "AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA=", /* no prefix */
            "whsec_AQIDBAUGBwgJCgsMDQ4P",                   /* 15 bytes */
            "whsec_not*base64*at*all*zzzzzzzzzzzzz",        /* not base64 */
            "whsec_",                                       /* no key */
        };
        struct ch_error err = {{0}};
        char text[512];

        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
                const char *key = strncmp(bad[i], "whsec_", 6) == 0 ? bad[i] + 6 : bad[i];

                snprintf(text, sizeof(text),
                         "[hook \"x\"]\non = conversation.end\nurl = http://h/\nsecret = %s\n",
                         bad[i]);
                load_bad(text, &err);
                cr_expect(strstr(err.msg, "t.conf:4: [hook \"x\"] secret: "), "%s", err.msg);
                cr_expect(strstr(err.msg, "(expected whsec_ and the base64 of 16-64 bytes)"), "%s",
                          err.msg);
                if (*key)
                        cr_expect_null(strstr(err.msg, key), "secret echoed: %s", err.msg);
        }
        expect_hook_error("secret = ********",
                          "[hook \"x\"] secret: \"********\" is how check-config hides");
        /* The optional bearer token is a secret too. */
        expect_hook_error("bearer_token = ********",
                          "[hook \"x\"] bearer_token: \"********\" is how check-config hides");
}

Test(config, hook_integer_bounds_and_bool)
{
        static const struct {
                const char *key;
                long long min, max;
                size_t offset;
        } ints[] = {
            {"timeout_ms", 100, 300000, offsetof(struct config_hook, timeout_ms)},
            {"max_attempts", 1, 100, offsetof(struct config_hook, max_attempts)},
        };
        char line[128], needle[128];

        for (size_t i = 0; i < 2; i++) {
                long long ok[] = {ints[i].min, ints[i].max},
                          bad[] = {ints[i].min - 1, ints[i].max + 1};

                for (int j = 0; j < 2; j++) {
                        char text[512];
                        struct config *c;

                        snprintf(text, sizeof(text),
                                 "[hook \"x\"]\non = conversation.end\nurl = http://h/\n"
                                 "secret = " SECRET_A "\n%s = %lld\n",
                                 ints[i].key, ok[j]);
                        c = load_ok(text);
                        cr_expect_eq(*(int64_t *)((char *)&c->hooks[0] + ints[i].offset), ok[j]);
                        config_free(c);

                        snprintf(line, sizeof(line), "%s = %lld", ints[i].key, bad[j]);
                        snprintf(needle, sizeof(needle),
                                 "t.conf:2: [hook \"x\"] %s: %lld is out of range", ints[i].key,
                                 bad[j]);
                        expect_hook_error(line, needle);
                }
        }
        expect_hook_error("clear_after = maybe",
                          "t.conf:2: [hook \"x\"] clear_after: \"maybe\" is not a boolean");
        expect_hook_error("colour = red", "t.conf:2: [hook \"x\"] colour: unknown key");
        expect_hook_error("url = http://h/", "t.conf:4: [hook \"x\"] url: duplicate key (first set "
                                             "on line 2)");
}

Test(config, environment_overrides_hook_keys)
{
        struct config *c;

        setenv("CTXHOOKD_HOOK_NOTES_ON_AUTOCLOSE_URL", "http://env.example/fn", 1);
        setenv("CTXHOOKD_HOOK_NOTES_ON_AUTOCLOSE_SECRET", " " SECRET_B " ", 1);
        setenv("CTXHOOKD_HOOK_NOTES_ON_AUTOCLOSE_CLOSE_REASON", "AGENT", 1);
        setenv("CTXHOOKD_HOOK_A_TIMEOUT_MS", "250", 1);
        setenv("CTXHOOKD_HOOK_GHOST_URL", "http://nobody/", 1); /* no such hook: ignored */
        c = load_ok(hook_full);
        cr_assert_eq(c->n_hooks, 1);
        cr_expect_str_eq(c->hooks[0].url, "http://env.example/fn");
        cr_expect_str_eq(c->hooks[0].secret, SECRET_B);
        cr_assert_not_null(c->hooks[0].close_reasons);
        cr_expect_str_eq(c->hooks[0].close_reasons[0], "AGENT");
        cr_expect_null(c->hooks[0].close_reasons[1]);
        cr_expect_eq(c->hooks[0].timeout_ms, 100, "another hook's variable");
        cr_expect_eq(c->hooks[0].on, EVENT_END | EVENT_IDLE);
        config_free(c);

        /* A required key may come from the environment alone; "." maps to "_" too. */
        setenv("CTXHOOKD_HOOK_A_SECRET", SECRET_A, 1);
        setenv("CTXHOOKD_HOOK_A_URL", "http://a/", 1);
        c = load_ok("[hook \"a\"]\non = conversation.new\n");
        cr_expect_str_eq(c->hooks[0].secret, SECRET_A);
        cr_expect_str_eq(c->hooks[0].url, "http://a/");
        cr_expect_eq(c->hooks[0].timeout_ms, 250);
        config_free(c);
}

Test(config, bad_hook_environment_values)
{
        struct ch_error err = {{0}};

        setenv("CTXHOOKD_HOOK_NOTES_ON_AUTOCLOSE_ON", "conversation.bogus", 1);
        setenv("CTXHOOKD_HOOK_NOTES_ON_AUTOCLOSE_SECRET", "whsec_AQIDBAUGBwgJCgsMDQ4P", 1);
        load_bad(hook_full, &err);
        cr_expect(strstr(err.msg, "environment CTXHOOKD_HOOK_NOTES_ON_AUTOCLOSE_ON: "
                                  "\"conversation.bogus\" is not an event kind"),
                  "%s", err.msg);
        cr_expect(strstr(err.msg, "environment CTXHOOKD_HOOK_NOTES_ON_AUTOCLOSE_SECRET: "), "%s",
                  err.msg);
        cr_expect_null(strstr(err.msg, "AQIDBAUGBwgJCgsMDQ4P"), "secret echoed: %s", err.msg);
        cr_expect_eq(count_lines(err.msg), 2, "%s", err.msg);
}

Test(config, hook_environment_variable_shared_by_two_names_is_refused)
{
        struct ch_error err = {{0}};
        struct config *c;
        static const char text[] = "[hook \"a.b\"]\non = conversation.end\nurl = http://h/\n"
                                   "secret = " SECRET_A "\n"
                                   "[hook \"a-b\"]\non = conversation.end\nurl = http://h/\n"
                                   "secret = " SECRET_A "\n";

        c = load_ok(text);
        cr_expect_eq(c->n_hooks, 2);
        config_free(c);
        setenv("CTXHOOKD_HOOK_A_B_URL", "http://which/", 1);
        load_bad(text, &err);
        cr_expect_str_eq(err.msg, "environment CTXHOOKD_HOOK_A_B_URL: applies to both [hook "
                                  "\"a.b\"] and [hook \"a-b\"]; rename one of them");
        unsetenv("CTXHOOKD_HOOK_A_B_URL");
}

/* Replaces the first "= ********" after *from with "= value" in a malloc'ed text. */
static char *unmask_next(char *text, size_t *from, const char *value)
{
        char *at = strstr(text + *from, "= "
                                        "********"),
             *out;
        size_t head;

        cr_assert_not_null(at, "no mask left in\n%s", text);
        head = (size_t)(at - text) + 2;
        out = malloc(strlen(text) + strlen(value) + 1);
        cr_assert_not_null(out);
        memcpy(out, text, head);
        strcpy(out + head, value);
        strcat(out, at + 2 + 8);
        *from = head + strlen(value);
        free(text);
        return out;
}

Test(config, print_round_trips_hooks_and_kafka_extras_with_masking)
{
        static const char text[] = "[kafka]\n"
                                   "brokers = k1:9092\n"
                                   "sasl.password = kafka-pass\n"
                                   "client.id = ctx-1\n"
                                   "ssl.key.password = kafka-key-pass\n"
                                   "[delivery]\n"
                                   "retry_base_ms = 20\n"
                                   "[hook \"first\"]\n"
                                   "on = conversation.idle, conversation.end\n"
                                   "close_reason = SYSTEM,TIMEOUT\n"
                                   "url = http://127.0.0.1:9000/fn\n"
                                   "secret = " SECRET_A "\n"
                                   "bearer_token = the-bearer-token\n"
                                   "clear_after = true\n"
                                   "[hook \"second\"]\n"
                                   "on = conversation.ttr\n"
                                   "namespaces = agentNotes,more\n"
                                   "url = https://b/\n"
                                   "secret = " SECRET_B "\n";
        struct config *c = load_ok(text), *again;
        char *first = print_to_string(c), *unmasked, *second;
        size_t from = 0;

        cr_expect_null(strstr(first, "kafka-pass"), "%s", first);
        cr_expect_null(strstr(first, "kafka-key-pass"), "%s", first);
        cr_expect_null(strstr(first, "the-bearer-token"), "%s", first);
        cr_expect_null(strstr(first, SECRET_A + 6), "%s", first);
        cr_expect_null(strstr(first, SECRET_B + 6), "%s", first);
        cr_expect(strstr(first, "\nsasl.password = ********\nclient.id = ctx-1\n"
                                "ssl.key.password = ********\n"),
                  "%s", first);
        cr_expect(strstr(first, "\n[hook \"first\"]\n"), "%s", first);
        cr_expect(strstr(first, "\non = conversation.end,conversation.idle\n"), "%s", first);
        cr_expect(strstr(first, "\nclose_reason = SYSTEM,TIMEOUT\n"), "%s", first);
        cr_expect(strstr(first, "\nnamespaces =\n"), "%s", first);
        cr_expect(strstr(first, "\nnamespaces = agentNotes,more\n"), "%s", first);
        cr_expect(strstr(first, "\nclose_reason =\n"), "%s", first);
        cr_expect(strstr(first, "\nsecret = ********\n"), "%s", first);
        cr_expect(strstr(first, "\nbearer_token = ********\n"), "%s", first);
        cr_expect(strstr(first, "\nbearer_token =\n"), "%s", first);
        cr_expect(strstr(first, "\nclear_after = true\n"), "%s", first);
        cr_expect(strstr(first, "\nretry_base_ms = 20\n"), "%s", first);
        cr_expect(strstr(first, "\nbrokers = k1:9092\n"), "%s", first);
        cr_expect(strstr(first, "[hook \"first\"]") < strstr(first, "[hook \"second\"]"));

        /* The masks in print order: [kafka] first, then each hook's secret and token. */
        unmasked = strdup(first);
        cr_assert_not_null(unmasked);
        unmasked = unmask_next(unmasked, &from, "kafka-pass");
        unmasked = unmask_next(unmasked, &from, "kafka-key-pass");
        unmasked = unmask_next(unmasked, &from, SECRET_A);
        unmasked = unmask_next(unmasked, &from, "the-bearer-token");
        unmasked = unmask_next(unmasked, &from, SECRET_B);
        again = load_ok(unmasked);
        second = print_to_string(again);
        cr_expect_str_eq(first, second);
        cr_assert_eq(again->n_hooks, 2);
        cr_expect_str_eq(again->hooks[0].secret, SECRET_A);
        cr_expect_eq(again->hooks[0].on, EVENT_END | EVENT_IDLE);
        cr_expect_null(again->hooks[0].namespaces);
        cr_expect_null(again->hooks[1].close_reasons);
        cr_assert_eq(again->kafka.n_extra, 3);
        cr_expect_str_eq(again->kafka.extra[2].value, "kafka-key-pass");
        free(unmasked);
        free(first);
        free(second);
        config_free(again);
        config_free(c);
}

Test(config, print_without_hooks_says_so_and_loads_back)
{
        struct config *c = load_ok(""), *again;
        char *out = print_to_string(c);

        cr_expect(strstr(out, "\n; no [hook \"name\"] sections\n"), "%s", out);
        cr_expect(strstr(out, "\n[kafka]\n"), "%s", out);
        cr_expect(strstr(out, "\n[delivery]\n"), "%s", out);
        again = load_ok(out);
        cr_expect_eq(again->n_hooks, 0);
        free(out);
        config_free(again);
        config_free(c);
}

/* ---- reload ---- */

Test(config, reload_keeps_restart_only_options_and_says_which)
{
        struct config *running = load_ok("[api]\nlisten = 127.0.0.1:8080\nadmin_token = "
                                         "0123456789abcdef\n[store]\npath = a.db\n"
                                         "[kafka]\nbrokers = k1:9092\nsocket.timeout.ms = 1000\n"
                                         "account = 111\n[log]\nlevel = info\n");
        struct config *next = load_ok("[api]\nlisten = 127.0.0.1:9090\nadmin_token = "
                                      "fedcba9876543210\nthreads = 3\n[store]\npath = b.db\n"
                                      "[kafka]\nbrokers = k1:9092\nsocket.timeout.ms = 2000\n"
                                      "account = 222\n[log]\nlevel = debug\n"
                                      "[delivery]\nmax_in_flight = 7\nretry_base_ms = 50\n");
        struct ch_error notes = {{0}};
        int kept = config_keep_restart_options(next, running, &notes);

        /* listen, admin_token, threads, path, max_in_flight, the librdkafka properties. */
        cr_assert_eq(kept, 6, "kept %d:\n%s", kept, notes.msg);
        cr_assert_eq(count_lines(notes.msg), 6, "%s", notes.msg);
        cr_assert(strstr(notes.msg, "[api] listen: \"127.0.0.1:8080\" → \"127.0.0.1:9090\" needs a "
                                    "restart; \"127.0.0.1:8080\" stays in force"),
                  "%s", notes.msg);
        cr_assert(strstr(notes.msg, "[api] threads: 0 → 3 needs a restart"), "%s", notes.msg);
        cr_assert(strstr(notes.msg, "[store] path: \"a.db\" → \"b.db\""), "%s", notes.msg);
        cr_assert(strstr(notes.msg, "[delivery] max_in_flight: 64 → 7"), "%s", notes.msg);
        cr_assert(strstr(notes.msg, "[kafka] librdkafka properties changed"), "%s", notes.msg);
        /* A secret is named, never shown. */
        cr_assert(strstr(notes.msg, "[api] admin_token: changed"), "%s", notes.msg);
        cr_assert_null(strstr(notes.msg, "fedcba"));
        cr_assert_null(strstr(notes.msg, "0123456789"));
        /* The restart-only values are the running ones again; the live ones are the new. */
        cr_assert_str_eq(next->api.listen, "127.0.0.1:8080");
        cr_assert_str_eq(next->api.admin_token, "0123456789abcdef");
        cr_assert_eq(next->api.threads, 0);
        cr_assert_str_eq(next->store.path, "a.db");
        cr_assert_eq(next->delivery.max_in_flight, 64);
        cr_assert_eq(next->kafka.n_extra, 1);
        cr_assert_str_eq(next->kafka.extra[0].value, "1000");
        cr_assert_str_eq(next->kafka.account, "222");
        cr_assert_str_eq(next->log.level, "debug");
        cr_assert_eq(next->delivery.retry_base_ms, 50);
        config_free(running);
        config_free(next);
}

Test(config, reload_of_the_same_file_keeps_nothing)
{
        struct config *running = load_ok(config_embedded_text);
        struct config *next = load_ok(config_embedded_text);
        struct ch_error notes = {{0}};

        cr_assert_eq(config_keep_restart_options(next, running, &notes), 0, "%s", notes.msg);
        cr_assert_str_eq(notes.msg, "");
        config_free(running);
        config_free(next);
}

Test(config, which_options_change_live)
{
        cr_assert(config_option_live("hook", "url"));
        cr_assert(config_option_live("log", "level"));
        cr_assert(config_option_live("delivery", "retry_max_ms"));
        cr_assert(config_option_live("kafka", "account"));
        cr_assert_not(config_option_live("delivery", "max_in_flight"));
        cr_assert_not(config_option_live("api", "listen"));
        cr_assert_not(config_option_live("store", "path"));
        cr_assert_not(config_option_live("store", "backend"));
        cr_assert_not(config_option_live("store", "url"));
        cr_assert_not(config_option_live("kafka", "brokers"));
        cr_assert_not(config_option_live("no", "such"));
}

/* A report too long for one error text ends with a notice, never mid-line or silently. */
Test(config, a_report_too_long_says_so_in_its_last_line)
{
        struct ch_error err = {{0}};
        char *text = NULL, *last;
        size_t len = 0, lines;
        FILE *f = open_memstream(&text, &len);

        fputs("[api]\n", f);
        for (int i = 1; i <= 80; i++)
                fprintf(f, "unknown_key_%d = 1\n", i);
        fclose(f);
        load_bad(text, &err);
        free(text);
        lines = count_lines(err.msg);
        cr_assert_gt(lines, 10);
        last = strrchr(err.msg, '\n');
        cr_assert_not_null(last);
        cr_assert_str_eq(last + 1, "... more not shown (this report holds 2048 bytes): fix these "
                                   "and check again");
        /* Every line before it is whole: problem number k on line k + 1. */
        for (size_t k = 1; k < lines; k++) {
                char want[128];

                snprintf(want, sizeof(want), "t.conf:%zu: [api] unknown_key_%zu: unknown key\n",
                         k + 1, k);
                cr_assert(strstr(err.msg, want), "line for key %zu missing in:\n%s", k, err.msg);
        }
}

Test(config, environment_variables_that_name_no_option_are_errors)
{
        struct ch_error err = {{0}};
        const char *text = "[hook \"notes\"]\non = conversation.end\nurl = http://h/\n"
                           "secret = whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n";

        setenv("CTXHOOKD_API_LISTN", "127.0.0.1:1", 1);
        setenv("CTXHOOKD_DELIVERY_RETRY_MAX", "5", 1);
        setenv("CTXHOOKD_SOMETHING_ELSE", "not ours", 1); /* no section of ours: left alone */
        setenv("CTXHOOKD_HOOK_NOPE_URL", "http://h/", 1); /* a hook this file lacks: ignored */
        load_bad(text, &err);
        unsetenv("CTXHOOKD_API_LISTN");
        unsetenv("CTXHOOKD_DELIVERY_RETRY_MAX");
        unsetenv("CTXHOOKD_SOMETHING_ELSE");
        unsetenv("CTXHOOKD_HOOK_NOPE_URL");
        cr_assert_eq(count_lines(err.msg), 2, "%s", err.msg);
        cr_assert(strstr(err.msg, "environment CTXHOOKD_API_LISTN: names no option of [api]"), "%s",
                  err.msg);
        cr_assert(strstr(err.msg, "environment CTXHOOKD_DELIVERY_RETRY_MAX: names no option of "
                                  "[delivery]"),
                  "%s", err.msg);
        /* The right name still works. */
        setenv("CTXHOOKD_API_LISTEN", "127.0.0.1:1", 1);
        {
                struct config *c = load_ok(text);

                cr_assert_str_eq(c->api.listen, "127.0.0.1:1");
                config_free(c);
        }
        unsetenv("CTXHOOKD_API_LISTEN");
}

/* Found by tests/fuzz/fuzz_config (corpus input crash-value-starting-with-semicolon): "key =;x"
 * sets ";x" (a ';' starts a comment only after a blank), but config_print wrote "key = ;x", which
 * loads back as an empty value: refused for a librdkafka property, and a path or group that is
 * not the one in force. The printed configuration must load back to the same. */
Test(config, print_round_trips_values_starting_with_semicolon)
{
        static const char text[] =
            "[store]\npath =;odd.db\n[kafka]\ngroup =;grp\nclient.id =;cid\n";
        struct config *c = load_ok(text), *again;
        char *first = print_to_string(c), *second;

        cr_assert_str_eq(c->store.path, ";odd.db");
        cr_expect(strstr(first, "\npath =;odd.db\n"), "%s", first);
        cr_expect(strstr(first, "\ngroup =;grp\n"), "%s", first);
        cr_expect(strstr(first, "\nclient.id =;cid\n"), "%s", first);
        again = load_ok(first);
        cr_expect_str_eq(again->store.path, ";odd.db");
        cr_expect_str_eq(again->kafka.group, ";grp");
        cr_assert_eq(again->kafka.n_extra, 1);
        cr_expect_str_eq(again->kafka.extra[0].value, ";cid");
        second = print_to_string(again);
        cr_expect_str_eq(second, first);
        free(second);
        free(first);
        config_free(again);
        config_free(c);
}

/* Found by tests/fuzz/fuzz_config (corpus input crash-librdkafka-message-line-break): some of
 * librdkafka's refusals end with "\n", which split that problem's line in two, so check-config
 * printed an empty line among the problems. Every problem is exactly one line. */
Test(config, librdkafka_refusal_is_one_line)
{
        static const char text[] = "[kafka]\n"
                                   "socket.timeout.ms = 5\n"
                                   "fetch.wait.max.ms = 300001\n";
        struct ch_error err = {{0}};

        load_bad(text, &err);
        cr_expect_eq(count_lines(err.msg), 2, "%s", err.msg);
        cr_expect_null(strstr(err.msg, "\n\n"), "%s", err.msg);
        cr_expect(strstr(err.msg, "t.conf:2: [kafka] socket.timeout.ms: librdkafka refuses it: "),
                  "%s", err.msg);
        cr_expect(strstr(err.msg, "t.conf:3: [kafka] fetch.wait.max.ms: librdkafka refuses it: "),
                  "%s", err.msg);
        cr_expect_neq(err.msg[strlen(err.msg) - 1], '\n', "%s", err.msg);
}

/* ---- [store] backend and url ---- */

#define PG_PASSWORD "Sekr1t-pw-42"

Test(config, postgresql_backend_with_url)
{
        struct store_options so;
        struct config *c = load_ok("[store]\nbackend = postgresql\n"
                                   "url = postgresql://ctx:" PG_PASSWORD "@db1:5432/ctxhookd\n"
                                   "pool_size = 3\n");

        cr_assert_str_eq(c->store.backend, "postgresql");
        cr_assert_str_eq(c->store.url, "postgresql://ctx:" PG_PASSWORD "@db1:5432/ctxhookd");
        /* path keeps its default: it is not judged with postgresql. */
        cr_assert_str_eq(c->store.path, "/var/lib/ctxhookd/context.db");
        config_store_options(c, &so);
        cr_assert_str_eq(so.backend, "postgresql");
        cr_assert_str_eq(so.url, c->store.url);
        cr_assert_eq(so.pool_size, 3);
        cr_assert_eq(so.busy_timeout_ms, 5000);
        cr_assert_eq(so.cache_entries, 4096);
        config_free(c);

        /* key=value pairs are libpq's other syntax. */
        c = load_ok("[store]\nbackend = postgresql\nurl = host=db1 port=5432 dbname=ctxhookd "
                    "user=ctx password=" PG_PASSWORD "\n");
        cr_assert(strstr(c->store.url, "dbname=ctxhookd"));
        config_free(c);
}

Test(config, sqlite_store_options_have_no_url)
{
        struct store_options so;
        struct config *c = load_ok("[store]\npath = x.db\ncache_entries = 0\n");

        config_store_options(c, &so);
        cr_assert_str_eq(so.backend, "sqlite");
        cr_assert_str_eq(so.path, "x.db");
        cr_assert_null(so.url, "an empty url must reach the store as none");
        cr_assert_eq(so.cache_entries, 0);
        cr_assert_eq(so.pool_size, 8);
        config_free(c);
}

Test(config, backend_is_one_of_the_built_in_ones)
{
        char want[128];

        snprintf(want, sizeof(want), "t.conf:2: [store] backend: \"mysql\" is not one of %s|%s",
                 store_backend_names[0], store_backend_names[1]);
        expect_error("[store]\nbackend = mysql\n", want);
        cr_assert_str_eq(store_backend_names[0], "sqlite", "the first backend is the default");
        expect_error("[store]\nbackend = PostgreSQL\n", "t.conf:2: [store] backend: ");
}

Test(config, postgresql_needs_a_url)
{
        struct ch_error err = {{0}};

        expect_error("[store]\nbackend = postgresql\n",
                     "t.conf:2: [store] backend: postgresql needs [store] url");
        expect_error("[store]\nbackend = postgresql\nurl =\n",
                     "t.conf:2: [store] backend: postgresql needs [store] url");
        /* From the environment, the variable is named instead of a line. */
        setenv("CTXHOOKD_STORE_BACKEND", "postgresql", 1);
        load_bad("[store]\npath = a.db\n", &err);
        cr_assert(strstr(err.msg, "environment CTXHOOKD_STORE_BACKEND: postgresql needs [store] "
                                  "url"),
                  "%s", err.msg);
        cr_assert_eq(count_lines(err.msg), 1, "%s", err.msg);
        /* ... and supplied there, it is enough. */
        setenv("CTXHOOKD_STORE_URL", "postgresql://ctx:" PG_PASSWORD "@db1/ctxhookd", 1);
        struct config *c = load_ok("[store]\npath = a.db\n");

        cr_assert_str_eq(c->store.backend, "postgresql");
        cr_assert_str_eq(c->store.url, "postgresql://ctx:" PG_PASSWORD "@db1/ctxhookd");
        config_free(c);
}

Test(config, url_with_sqlite_is_an_error)
{
        struct ch_error err = {{0}};

        expect_error("[store]\npath = a.db\nurl = postgresql://db1/ctxhookd\n",
                     "t.conf:3: [store] url: only used with backend = postgresql (backend is "
                     "sqlite)");
        expect_error("[store]\nbackend = sqlite\nurl = host=db1\n",
                     "t.conf:3: [store] url: only used with backend = postgresql");
        setenv("CTXHOOKD_STORE_URL", "postgresql://db1/ctxhookd", 1);
        load_bad("", &err);
        cr_assert(strstr(err.msg, "environment CTXHOOKD_STORE_URL: only used with backend = "
                                  "postgresql"),
                  "%s", err.msg);
        cr_assert_eq(count_lines(err.msg), 1, "%s", err.msg);
}

Test(config, bad_url_names_line_and_libpq_reason)
{
        struct ch_error err = {{0}};

        expect_error("[store]\nbackend = postgresql\nurl = host=db1 bogus=1\n",
                     "t.conf:3: [store] url: not a PostgreSQL connection string: invalid "
                     "connection option \"bogus\"");
        expect_error("[store]\nbackend = postgresql\nurl = nonsense\n",
                     "t.conf:3: [store] url: not a PostgreSQL connection string: ");
        expect_error("[store]\nbackend = postgresql\nurl = postgresql://db1/x?nosuch=1\n",
                     "t.conf:3: [store] url: not a PostgreSQL connection string: invalid URI "
                     "query parameter: \"nosuch\"");
        /* A refused url is one problem: not also "missing" for postgresql. */
        load_bad("[store]\nbackend = postgresql\nurl = host=db1 bogus=1\n", &err);
        cr_assert_eq(count_lines(err.msg), 1, "%s", err.msg);
        cr_assert_null(strchr(err.msg, '\n'), "libpq's line break kept: %s", err.msg);
}

/* libpq quotes the offending token, or the whole URI, in its reasons: the password must not
 * reach a message by that way. */
Test(config, a_bad_url_never_echoes_its_password)
{
        static const char *const bad[] = {
            "postgresql://ctx:" PG_PASSWORD "%zz@db1/x",           /* bad percent-encoding */
            "postgresql://ctx:" PG_PASSWORD "@[::1/x",             /* the whole URI is quoted */
            "postgresql://ctx:" PG_PASSWORD "@db1/x?nosuch=1",     /* a bad parameter */
            "postgresql://ctx@db1/x?password=" PG_PASSWORD "&a=1", /* password in the query */
            "host=db1 password=" PG_PASSWORD " bogus=1",           /* key=value */
        };

        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
                struct ch_error err = {{0}};
                char text[512];

                snprintf(text, sizeof(text), "[store]\nbackend = postgresql\nurl = %s\n", bad[i]);
                load_bad(text, &err);
                cr_assert(strstr(err.msg, "t.conf:3: [store] url: "), "%s: %s", bad[i], err.msg);
                cr_assert_null(strstr(err.msg, PG_PASSWORD), "the password is in: %s", err.msg);
                memset(&err, 0, sizeof(err));
                setenv("CTXHOOKD_STORE_URL", bad[i], 1);
                load_bad("[store]\nbackend = postgresql\n", &err);
                cr_assert(strstr(err.msg, "environment CTXHOOKD_STORE_URL: "), "%s", err.msg);
                cr_assert_null(strstr(err.msg, PG_PASSWORD), "the password is in: %s", err.msg);
                unsetenv("CTXHOOKD_STORE_URL");
        }
}

Test(config, printed_url_hides_the_password)
{
        static const struct {
                const char *url, *shown;
        } cases[] = {
            {"postgresql://ctx:" PG_PASSWORD "@db1:5432/ctxhookd",
             "postgresql://ctx:********@db1:5432/ctxhookd"},
            {"postgresql://ctx@db1/ctxhookd?sslmode=require&password=" PG_PASSWORD,
             "postgresql://ctx@db1/ctxhookd?sslmode=require&password=********"},
            {"host=db1 user=ctx password=" PG_PASSWORD " dbname=ctxhookd",
             "host=db1 user=ctx password=******** dbname=ctxhookd"},
            {"postgresql://ctx@db1/ctxhookd", "postgresql://ctx@db1/ctxhookd"},
        };

        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                char text[512], want[512];
                struct config *c;
                char *out;

                snprintf(text, sizeof(text), "[store]\nbackend = postgresql\nurl = %s\n",
                         cases[i].url);
                c = load_ok(text);
                out = print_to_string(c);
                snprintf(want, sizeof(want), "\nurl = %s\n", cases[i].shown);
                cr_assert(strstr(out, want), "want%sin:\n%s", want, out);
                cr_assert_null(strstr(out, PG_PASSWORD), "the password is printed:\n%s", out);
                free(out);
                config_free(c);
        }
}

/* The printed config with its masked password, fed back, is refused at the url's line, as every
 * masked secret is: it cannot be deployed with "********" as the password by mistake. */
Test(config, the_mask_is_refused_as_a_password)
{
        struct config *c = load_ok("[store]\nbackend = postgresql\n"
                                   "url = postgresql://ctx:" PG_PASSWORD "@db1/ctxhookd\n");
        struct ch_error err = {{0}};
        char *out = print_to_string(c), *line, *at;
        unsigned url_line = 1;

        at = strstr(out, "\nurl = ");
        cr_assert_not_null(at);
        for (line = out; line <= at; line++)
                url_line += *line == '\n';
        load_bad(out, &err);
        {
                char want[64];

                snprintf(want, sizeof(want), "t.conf:%u: [store] url: ", url_line);
                cr_assert(strstr(err.msg, want), "want %s in:\n%s", want, err.msg);
                cr_assert(strstr(err.msg, "how check-config hides it"), "%s", err.msg);
        }
        cr_assert_eq(count_lines(err.msg), 1, "%s", err.msg);
        free(out);
        config_free(c);
        /* Stars elsewhere than the password are no mask. */
        c = load_ok("[store]\nbackend = postgresql\nurl = postgresql://ctx:" PG_PASSWORD
                    "@db1/ctxhookd?application_name=********\n");
        config_free(c);
}

Test(config, reload_keeps_the_store_and_never_shows_the_password)
{
        struct config *running = load_ok("[store]\nbackend = postgresql\n"
                                         "url = postgresql://ctx:" PG_PASSWORD "@db1/ctxhookd\n");
        struct config *next = load_ok("[store]\nbackend = postgresql\n"
                                      "url = postgresql://ctx:other-pw-77@db2/ctxhookd\n");
        struct config *same_host = load_ok("[store]\nbackend = postgresql\n"
                                           "url = postgresql://ctx:third-pw-88@db1/ctxhookd\n");
        struct config *sqlite = load_ok("[store]\npath = b.db\n");
        struct ch_error notes = {{0}};

        cr_assert_eq(config_keep_restart_options(next, running, &notes), 1, "%s", notes.msg);
        cr_assert(strstr(notes.msg, "[store] url: \"postgresql://ctx:********@db1/ctxhookd\" → "
                                    "\"postgresql://ctx:********@db2/ctxhookd\" needs a restart"),
                  "%s", notes.msg);
        cr_assert_null(strstr(notes.msg, PG_PASSWORD), "%s", notes.msg);
        cr_assert_null(strstr(notes.msg, "other-pw-77"), "%s", notes.msg);
        cr_assert_str_eq(next->store.url, running->store.url);

        /* Only the password changed: the redacted URLs look the same, so no arrow. */
        cr_assert_eq(config_keep_restart_options(same_host, running, &notes), 1, "%s", notes.msg);
        cr_assert_str_eq(notes.msg, "[store] url: changed; needs a restart, the running value "
                                    "stays in force");
        cr_assert_str_eq(same_host->store.url, running->store.url);

        /* Another backend altogether: backend, url and path (a.db was the default) are kept. */
        cr_assert_eq(config_keep_restart_options(sqlite, running, &notes), 3, "%s", notes.msg);
        cr_assert(strstr(notes.msg, "[store] backend: \"postgresql\" → \"sqlite\" needs a "
                                    "restart"),
                  "%s", notes.msg);
        cr_assert(strstr(notes.msg, "[store] url: \"postgresql://ctx:********@db1/ctxhookd\" → "
                                    "\"\" needs a restart"),
                  "%s", notes.msg);
        cr_assert_null(strstr(notes.msg, PG_PASSWORD), "%s", notes.msg);
        cr_assert_str_eq(sqlite->store.backend, "postgresql");
        cr_assert_str_eq(sqlite->store.url, running->store.url);
        config_free(running);
        config_free(next);
        config_free(same_host);
        config_free(sqlite);
}
