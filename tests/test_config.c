/* Tests of the configuration: built-in defaults, the shipped (embedded) file, every option
 * type's bounds, error lines that name file, line, section and key, all problems reported at
 * once, environment overrides, inline comments, and check-config output that loads back.
 * Criterion runs every test in its own process, so setenv() here cannot leak into others. */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ctxhookd/config.h"

/* Every variable the module reads, so a developer's shell cannot change the results. */
static const char *const env_vars[] = {
    "CTXHOOKD_CONFIG",
    "CTXHOOKD_API_LISTEN",
    "CTXHOOKD_API_MAX_BODY",
    "CTXHOOKD_API_ADMIN_TOKEN",
    "CTXHOOKD_API_THREADS",
    "CTXHOOKD_API_MAX_CONNECTIONS",
    "CTXHOOKD_API_CONNECTION_TIMEOUT_S",
    "CTXHOOKD_STORE_PATH",
    "CTXHOOKD_STORE_BUSY_TIMEOUT_MS",
    "CTXHOOKD_STORE_POOL_SIZE",
    "CTXHOOKD_STORE_SWEEP_INTERVAL_S",
    "CTXHOOKD_LOG_LEVEL",
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
        cr_expect_str_eq(c->store.path, "/var/lib/ctxhookd/context.db");
        cr_expect_eq(c->store.busy_timeout_ms, 5000);
        cr_expect_eq(c->store.pool_size, 8);
        cr_expect_eq(c->store.sweep_interval_s, 60);
        cr_expect_eq(c->store.cache_entries, 4096);
        cr_expect_str_eq(c->log.level, "info");
        config_free(c);
}

Test(config, embedded_config_loads_with_documented_values)
{
        struct ch_error err = {{0}};
        struct config *c = NULL;

        cr_assert_eq(config_load(NULL, &c, &err), 0, "%s", err.msg);
        cr_expect_str_eq(c->source, "<embedded>");
        cr_expect_str_eq(c->api.listen, "127.0.0.1:8080");
        cr_expect_str_eq(c->store.path, "ctxhookd.db");
        cr_expect_eq(c->api.max_body, 1048576);
        cr_expect_str_eq(c->api.admin_token, "");
        cr_expect_eq(c->store.pool_size, 8);
        cr_expect_str_eq(c->log.level, "info");
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
        cr_expect_eq(checked, 12, "config_print printed %zu options", checked);
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
            "t.conf:7: [nope]: unknown section (known: api, store, log)",
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
        expect_error("[hook_with_a_name_far_longer_than_inih_keeps_around_here]\nx = 1\n",
                     "t.conf:1: [hook_with_a_name_far…]: section header longer than 48 "
                     "characters");
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
        cr_expect_str_eq(err.msg, "t.conf:3: [nope]: unknown section (known: api, store, log)");
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
