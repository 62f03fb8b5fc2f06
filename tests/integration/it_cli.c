/* Integration tests of the ctxhookd command line and process behaviour through the real
 * binary: usage and exit codes (sysexits), check-config output and error reports, config
 * sources (-c, $CTXHOOKD_CONFIG, the embedded default, CTXHOOKD_<SECTION>_<KEY> overrides),
 * API key rotation against a running daemon, the service manager protocol (READY=1 and
 * STOPPING=1 on a NOTIFY_SOCKET), graceful shutdown with a request in flight, the log format,
 * and the failures an operator meets first (port in use, store that cannot be opened). */
#include <criterion/criterion.h>
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "ctxhookd/buf.h"
#include "support_daemon.h"

static struct it_daemon d;

static void teardown(void)
{
        it_daemon_cleanup(&d);
}

TestSuite(cli, .fini = teardown, .timeout = 90);

/* ---- helpers ---- */

static struct it_result run(const char *cwd, const char *const *args, const char *const *env)
{
        struct it_result r;

        cr_assert_eq(it_run(cwd, args, env, &r), 0, "cannot run ctxhookd");
        return r;
}

static char *args_text(const char *const *args)
{
        static char text[1024];
        size_t n = 0;

        text[0] = '\0';
        for (size_t i = 0; args[i] && n < sizeof(text) - 1; i++)
                n += (size_t)snprintf(text + n, sizeof(text) - n, "%s'%s'", i ? " " : "", args[i]);
        return text;
}

/* [section] key of INI text (see it_ini_value) is want. */
static void assert_ini(const char *text, const char *section, const char *key, const char *want)
{
        cr_assert_eq(it_ini_expect(text, section, key, want), 0, "[%s] %s is not '%s' (above)",
                     section, key, want);
}

/* 1 when one line of text contains both a and b. */
static int line_has_both(const char *text, const char *a, const char *b)
{
        for (const char *p = text; *p;) {
                size_t n = strcspn(p, "\n");
                char *line = strndup(p, n);
                int hit = line && strstr(line, a) && strstr(line, b);

                free(line);
                if (hit)
                        return 1;
                p += n + (p[n] ? 1 : 0);
        }
        return 0;
}

/* A listening TCP socket on a free loopback port, to make that port busy. */
static int busy_port(unsigned *ret_port)
{
        int fd = it_busy_port(ret_port);

        cr_assert_geq(fd, 0, "cannot make a loopback port busy");
        return fd;
}

static long healthz(void)
{
        return it_call(&d, "GET", "/healthz", NULL, NULL, NULL);
}

static void stop_ok(void)
{
        int code = -1;
        char *log;

        cr_assert_eq(it_daemon_stop(&d, SIGTERM, &code), 0);
        log = it_daemon_log(&d);
        cr_assert_eq(code, 0, "exit code %d after SIGTERM; log:\n%s", code, log);
        cr_assert(it_log_lines_prefixed(log), "log lines without <N>:\n%s", log);
        free(log);
}

/* ---- usage ---- */

Test(cli, help_and_version)
{
        const char *help[] = {"--help", NULL}, *version[] = {"--version", NULL};
        struct it_result r = run(NULL, help, NULL);

        cr_assert_eq(r.code, 0, "--help exited %d", r.code);
        cr_assert(strstr(r.out, "check-config") && strstr(r.out, "apikey create") &&
                      strstr(r.out, "--account") && strstr(r.out, "-c"),
                  "usage on stdout lacks the commands:\n%s", r.out);
        it_result_free(&r);

        r = run(NULL, version, NULL);
        cr_assert_eq(r.code, 0);
        cr_assert_str_eq(r.out, "ctxhookd " CTXHOOKD_VERSION "\n");
        it_result_free(&r);
}

Test(cli, bad_usage_exits_64)
{
        static const char *const cases[][6] = {
            {"bogus"},
            {"--bogus"},
            {"-x"},
            {"run", "extra"},
            {"apikey"},
            {"apikey", "create"},
            {"apikey", "delete", "--account", "1"},
            {"check-config", "-c"},
            {"check-config", "--account", "1"},
            {"--account"},
        };

        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                struct it_result r = run(NULL, cases[i], NULL);

                cr_assert_eq(r.code, 64, "%s exited %d; stderr:\n%s", args_text(cases[i]), r.code,
                             r.err);
                cr_assert(strstr(r.err, "Usage") || strstr(r.err, "usage"),
                          "%s: no usage on stderr:\n%s", args_text(cases[i]), r.err);
                cr_assert_eq(r.out_len, 0, "%s wrote to stdout:\n%s", args_text(cases[i]), r.out);
                it_result_free(&r);
        }
}

Test(cli, apikey_bad_account_exits_64)
{
        static const char *const bad[] = {
            "bad/acct", "a b", "", "acct;drop",
            "12345678901234567890123456789012345678901234567890123456789012345"};

        cr_assert_eq(it_daemon_init(&d, it_default_config), 0);
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
                const char *args[] = {"apikey", "create", "--account", bad[i], "-c", d.conf, NULL};
                struct it_result r = run(d.dir, args, NULL);

                cr_assert_eq(r.code, 64, "account '%s' exited %d; stderr:\n%s", bad[i], r.code,
                             r.err);
                cr_assert_eq(r.out_len, 0, "account '%s' printed:\n%s", bad[i], r.out);
                it_result_free(&r);
        }
}

/* ---- check-config ---- */

static const char full_config[] = "[api]\n"
                                  "listen = 127.0.0.1:0\n"
                                  "max_body = 12345\n"
                                  "admin_token = s3cr3t-admin-token-16\n"
                                  "threads = 3\n"
                                  "max_connections = 77\n"
                                  "connection_timeout_s = 9\n"
                                  "[store]\n"
                                  "path = @DIR@/x.db\n"
                                  "busy_timeout_ms = 4321\n"
                                  "pool_size = 5\n"
                                  "sweep_interval_s = 7\n"
                                  "[log]\n"
                                  "level = warning\n";

static const char *const table_keys[][2] = {
    {"api", "listen"},          {"api", "max_body"},
    {"api", "admin_token"},     {"api", "threads"},
    {"api", "max_connections"}, {"api", "connection_timeout_s"},
    {"store", "path"},          {"store", "busy_timeout_ms"},
    {"store", "pool_size"},     {"store", "sweep_interval_s"},
    {"log", "level"},
};

/* text without its comment lines (they may name the file the config came from). */
static char *without_comments(const char *text)
{
        struct buf b;

        buf_init(&b, 1 << 20);
        for (const char *p = text; *p;) {
                size_t n = strcspn(p, "\n");
                const char *s = p + strspn(p, " \t");

                if (*s != ';' && *s != '#')
                        cr_assert_eq(buf_append(&b, p, n + (p[n] ? 1 : 0)), 0);
                p += n + (p[n] ? 1 : 0);
        }
        return b.data ? buf_take(&b, NULL) : strdup("");
}

/* check-config on its own output (with the masked secret, if any, written back in, since a
 * mask is not a valid secret) must accept it and print the same settings again. */
static void assert_round_trip(const char *out, const char *secret)
{
        char path[IT_PATH_MAX + 64];
        struct it_result r;
        char *again, *first, *second;

        snprintf(path, sizeof(path), "%s/printed.conf", d.dir);
        if (secret) {
                const char *mask = strstr(out, "********");

                cr_assert_not_null(mask, "no masked secret in:\n%s", out);
                cr_assert_geq(asprintf(&again, "%.*s%s%s", (int)(mask - out), out, secret,
                                       mask + strlen("********")),
                              0);
        } else {
                again = strdup(out);
                cr_assert_not_null(again);
        }
        cr_assert_eq(it_write_file(path, again), 0);
        const char *args[] = {"check-config", "-c", path, NULL};
        r = run(d.dir, args, NULL);
        cr_assert_eq(r.code, 0,
                     "check-config rejects its own output (%d):\n%s\n--- output was:\n%s", r.code,
                     r.err, again);
        first = without_comments(out);
        second = without_comments(r.out);
        cr_assert_str_eq(second, first, "printing is not a fixed point");
        free(first);
        free(second);
        free(again);
        it_result_free(&r);
}

Test(cli, check_config_prints_effective_config)
{
        char path[IT_PATH_MAX + 64];
        struct it_result r;

        cr_assert_eq(it_daemon_init(&d, full_config), 0);
        const char *args[] = {"check-config", "-c", d.conf, NULL};
        r = run(d.dir, args, NULL);
        cr_assert_eq(r.code, 0, "check-config exited %d:\n%s", r.code, r.err);
        for (size_t i = 0; i < sizeof(table_keys) / sizeof(table_keys[0]); i++) {
                char v[512];

                cr_assert_eq(it_ini_value(r.out, table_keys[i][0], table_keys[i][1], v, sizeof(v)),
                             0, "[%s] %s not printed:\n%s", table_keys[i][0], table_keys[i][1],
                             r.out);
        }
        snprintf(path, sizeof(path), "%s/x.db", d.dir);
        assert_ini(r.out, "api", "listen", "127.0.0.1:0");
        assert_ini(r.out, "api", "max_body", "12345");
        assert_ini(r.out, "api", "admin_token", "********");
        assert_ini(r.out, "api", "threads", "3");
        assert_ini(r.out, "api", "max_connections", "77");
        assert_ini(r.out, "api", "connection_timeout_s", "9");
        assert_ini(r.out, "store", "path", path);
        assert_ini(r.out, "store", "busy_timeout_ms", "4321");
        assert_ini(r.out, "store", "pool_size", "5");
        assert_ini(r.out, "store", "sweep_interval_s", "7");
        assert_ini(r.out, "log", "level", "warning");
        cr_assert_null(strstr(r.out, "s3cr3t"), "the secret was printed");
        cr_assert_null(strstr(r.err, "s3cr3t"), "the secret was logged");
        /* The mask itself is refused as a secret (so a printed config is never deployed with
         * "********" as the token by mistake). */
        {
                char masked[IT_PATH_MAX + 64];

                snprintf(masked, sizeof(masked), "%s/masked.conf", d.dir);
                cr_assert_eq(it_write_file(masked, r.out), 0);
                const char *margs[] = {"check-config", "-c", masked, NULL};
                struct it_result m = run(d.dir, margs, NULL);

                cr_assert_eq(m.code, 78, "the mask was accepted as a secret");
                cr_assert(strstr(m.err, "admin_token"), "%s", m.err);
                it_result_free(&m);
        }
        assert_round_trip(r.out, "another-secret-0123456789");
        it_result_free(&r);
}

Test(cli, check_config_defaults_round_trip)
{
        struct it_result r;

        cr_assert_eq(it_daemon_init(&d, "[api]\nlisten = 127.0.0.1:0\n"), 0);
        const char *args[] = {"check-config", "-c", d.conf, NULL};
        r = run(d.dir, args, NULL);
        cr_assert_eq(r.code, 0, "check-config exited %d:\n%s", r.code, r.err);
        for (size_t i = 0; i < sizeof(table_keys) / sizeof(table_keys[0]); i++) {
                char v[512];

                cr_assert_eq(it_ini_value(r.out, table_keys[i][0], table_keys[i][1], v, sizeof(v)),
                             0, "[%s] %s not printed:\n%s", table_keys[i][0], table_keys[i][1],
                             r.out);
        }
        /* An unset secret is shown as unset, not as a mask that would then become the token. */
        assert_ini(r.out, "api", "admin_token", "");
        assert_ini(r.out, "api", "max_body", "1048576");
        assert_round_trip(r.out, NULL);
        it_result_free(&r);
}

Test(cli, bad_config_reports_every_problem)
{
        static const char bad[] = "[api]\n"                /* 1 */
                                  "listen = 127.0.0.1:0\n" /* 2 */
                                  "bogus_key = 1\n"        /* 3 */
                                  "max_body = lots\n"      /* 4 */
                                  "threads = -1\n"         /* 5 */
                                  "[store]\n"              /* 6 */
                                  "path = @DIR@/db\n"      /* 7 */
                                  "[log]\n"                /* 8 */
                                  "level = loud\n"         /* 9 */
                                  "[nosuch]\n"             /* 10 */
                                  "stray = 1\n";           /* 11 */
        char at[IT_PATH_MAX + 64];
        const char *const commands[][7] = {
            {"check-config", "-c", NULL},
            {"run", "-c", NULL},
            {"apikey", "create", "--account", "1001", "-c", NULL},
        };

        cr_assert_eq(it_daemon_init(&d, bad), 0);
        for (size_t c = 0; c < sizeof(commands) / sizeof(commands[0]); c++) {
                const char *args[8];
                size_t n = 0;
                struct it_result r;

                for (; commands[c][n]; n++)
                        args[n] = commands[c][n];
                args[n++] = d.conf;
                args[n] = NULL;
                r = run(d.dir, args, NULL);
                cr_assert_eq(r.code, 78, "%s exited %d:\n%s", args_text(args), r.code, r.err);
                snprintf(at, sizeof(at), "%s:3: [api] bogus_key", d.conf);
                cr_assert(strstr(r.err, at), "%s: no '%s' in:\n%s", args[0], at, r.err);
                snprintf(at, sizeof(at), "%s:4: [api] max_body", d.conf);
                cr_assert(strstr(r.err, at), "%s: no '%s' in:\n%s", args[0], at, r.err);
                snprintf(at, sizeof(at), "%s:5: [api] threads", d.conf);
                cr_assert(strstr(r.err, at), "%s: no '%s' in:\n%s", args[0], at, r.err);
                snprintf(at, sizeof(at), "%s:9: [log] level", d.conf);
                cr_assert(strstr(r.err, at), "%s: no '%s' in:\n%s", args[0], at, r.err);
                /* The stray section: at its header or at its key. */
                {
                        char at11[IT_PATH_MAX + 64];

                        snprintf(at, sizeof(at), "%s:10:", d.conf);
                        snprintf(at11, sizeof(at11), "%s:11:", d.conf);
                        cr_assert(line_has_both(r.err, at, "nosuch") ||
                                      line_has_both(r.err, at11, "stray"),
                                  "%s: the unknown section is not reported:\n%s", args[0], r.err);
                }
                cr_assert_null(strstr(r.out, "[api]"), "a bad config was printed:\n%s", r.out);
                it_result_free(&r);
        }
}

Test(cli, bad_listen_value)
{
        static const char *const bad[] = {"nohost", "127.0.0.1", "127.0.0.1:65536", "127.0.0.1:-1",
                                          "127.0.0.1:http"};

        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
                char text[256], at[IT_PATH_MAX + 64];
                struct it_result r;

                it_daemon_cleanup(&d);
                snprintf(text, sizeof(text), "[api]\nlisten = %s\n", bad[i]);
                cr_assert_eq(it_daemon_init(&d, text), 0);
                const char *args[] = {"check-config", "-c", d.conf, NULL};
                r = run(d.dir, args, NULL);
                cr_assert_eq(r.code, 78, "listen = %s accepted (%d)", bad[i], r.code);
                snprintf(at, sizeof(at), "%s:2: [api] listen", d.conf);
                cr_assert(strstr(r.err, at), "listen = %s: no '%s' in:\n%s", bad[i], at, r.err);
                it_result_free(&r);
        }
}

Test(cli, missing_explicit_config_exits_78)
{
        char missing[IT_PATH_MAX], env[IT_PATH_MAX + 64];

        cr_assert_eq(it_daemon_init(&d, NULL), 0);
        snprintf(missing, sizeof(missing), "%s/does-not-exist.conf", d.dir);
        const char *const commands[][7] = {
            {"check-config", "-c", missing},
            {"run", "-c", missing},
            {"apikey", "create", "--account", "1001", "-c", missing},
        };
        for (size_t c = 0; c < sizeof(commands) / sizeof(commands[0]); c++) {
                struct it_result r = run(d.dir, commands[c], NULL);

                cr_assert_eq(r.code, 78, "%s exited %d:\n%s", args_text(commands[c]), r.code,
                             r.err);
                cr_assert(strstr(r.err, missing), "%s: the path is not named:\n%s",
                          args_text(commands[c]), r.err);
                it_result_free(&r);
        }
        /* A path named by $CTXHOOKD_CONFIG is just as explicit: no fallback to the default. */
        snprintf(env, sizeof(env), "CTXHOOKD_CONFIG=%s", missing);
        const char *envs[] = {env, NULL};
        const char *args[] = {"check-config", NULL};
        struct it_result r = run(d.dir, args, envs);
        cr_assert_eq(r.code, 78, "missing $CTXHOOKD_CONFIG exited %d:\n%s", r.code, r.err);
        cr_assert(strstr(r.err, missing), "the path is not named:\n%s", r.err);
        it_result_free(&r);
}

Test(cli, config_from_environment_variable)
{
        char env[IT_PATH_MAX + 64];

        cr_assert_eq(it_daemon_init(&d, "[api]\nlisten = 127.0.0.1:0\nmax_body = 23456\n"), 0);
        snprintf(env, sizeof(env), "CTXHOOKD_CONFIG=%s", d.conf);
        const char *envs[] = {env, NULL};
        const char *args[] = {"check-config", NULL};
        struct it_result r = run(d.dir, args, envs);
        cr_assert_eq(r.code, 0, "check-config exited %d:\n%s", r.code, r.err);
        assert_ini(r.out, "api", "max_body", "23456");
        /* -c wins over the variable. */
        it_result_free(&r);
        {
                char other[IT_PATH_MAX + 64];

                snprintf(other, sizeof(other), "%s/other.conf", d.dir);
                cr_assert_eq(it_write_file(other, "[api]\nmax_body = 7777\n"), 0);
                const char *args2[] = {"check-config", "-c", other, NULL};
                r = run(d.dir, args2, envs);
                cr_assert_eq(r.code, 0, "check-config -c exited %d:\n%s", r.code, r.err);
                assert_ini(r.out, "api", "max_body", "7777");
                it_result_free(&r);
        }
}

Test(cli, environment_overrides_options)
{
        unsigned port;
        int busy = busy_port(&port);
        char text[512], db_env[IT_PATH_MAX + 64], db[IT_PATH_MAX];
        struct stat st;

        /* The file names a port that is taken; only the override lets the daemon start. */
        snprintf(text, sizeof(text),
                 "[api]\nlisten = 127.0.0.1:%u\n[store]\npath = @DIR@/from-file.db\n", port);
        cr_assert_eq(it_daemon_init(&d, text), 0);
        snprintf(db, sizeof(db), "%s/from-env.db", d.dir);
        snprintf(db_env, sizeof(db_env), "CTXHOOKD_STORE_PATH=%s", db);
        {
                const char *envs[] = {"CTXHOOKD_API_LISTEN=127.0.0.1:0",
                                      "CTXHOOKD_API_MAX_BODY=4096", db_env, NULL};
                const char *args[] = {"check-config", "-c", d.conf, NULL};
                struct it_result r = run(d.dir, args, envs);

                cr_assert_eq(r.code, 0, "check-config exited %d:\n%s", r.code, r.err);
                assert_ini(r.out, "api", "listen", "127.0.0.1:0");
                assert_ini(r.out, "api", "max_body", "4096");
                assert_ini(r.out, "store", "path", db);
                it_result_free(&r);
        }
        {
                const char *envs[] = {"CTXHOOKD_API_MAX_BODY=lots", NULL};
                const char *args[] = {"check-config", "-c", d.conf, NULL};
                struct it_result r = run(d.dir, args, envs);

                cr_assert_eq(r.code, 78, "a bad value from the environment passed (%d)", r.code);
                cr_assert(strcasestr(r.err, "max_body"), "the bad option is not named:\n%s", r.err);
                it_result_free(&r);
        }
        {
                const char *envs[] = {"CTXHOOKD_API_LISTEN=127.0.0.1:0", db_env, NULL};

                cr_assert_eq(it_daemon_start(&d, envs, NULL), 0);
        }
        cr_assert_neq(d.port, port);
        cr_assert_eq(healthz(), 200);
        cr_assert_eq(stat(db, &st), 0, "the store is not at the overridden path %s", db);
        snprintf(db, sizeof(db), "%s/from-file.db", d.dir);
        cr_assert_neq(stat(db, &st), 0, "the store was created at the file's path too");
        stop_ok();
        close(busy);
}

Test(cli, embedded_default_without_config)
{
        struct stat st;
        char db[IT_PATH_MAX + 64], *log;
        const char *envs[] = {"CTXHOOKD_API_LISTEN=127.0.0.1:0", NULL};

        if (access("/etc/ctxhookd/ctxhookd.conf", F_OK) == 0)
                cr_skip_test("/etc/ctxhookd/ctxhookd.conf exists on this machine");
        cr_assert_eq(it_daemon_init(&d, NULL), 0);
        {
                const char *args[] = {"check-config", NULL};
                struct it_result r = run(d.dir, args, NULL);
                char v[512];

                cr_assert_eq(r.code, 0, "check-config without a config exited %d:\n%s", r.code,
                             r.err);
                assert_ini(r.out, "api", "listen", "127.0.0.1:8080");
                cr_assert_eq(it_ini_value(r.out, "store", "path", v, sizeof(v)), 0);
                cr_assert(strcmp(v, "ctxhookd.db") == 0 || strcmp(v, "./ctxhookd.db") == 0,
                          "embedded store path '%s' is not ctxhookd.db in the working directory",
                          v);
                it_result_free(&r);
        }
        /* Plain `ctxhookd`: run is the default command. */
        d.no_run_word = 1;
        cr_assert_eq(it_daemon_start(&d, envs, NULL), 0);
        cr_assert_eq(healthz(), 200);
        snprintf(db, sizeof(db), "%s/ctxhookd.db", d.dir);
        cr_assert_eq(stat(db, &st), 0, "no ctxhookd.db in the working directory");
        log = it_daemon_log(&d);
        cr_assert(strstr(log, "embedded"), "the log does not say the embedded default is used:\n%s",
                  log);
        free(log);
        stop_ok();
}

/* ---- API keys ---- */

Test(cli, apikey_rotation_and_keys_never_logged)
{
        char k1[257], k2[257], other[257], *log, *out, path[IT_PATH_MAX + 64];
        const char *wrong = "NotAKeyButLooksLikeOne_0123456789";

        cr_assert_eq(it_daemon_init(&d, it_default_config), 0);
        cr_assert_eq(it_daemon_start(&d, NULL, NULL), 0);
        cr_assert_eq(it_apikey_create(&d, "1001", k1), 0);
        cr_assert_geq(strlen(k1), 20, "key '%s' too short to be secret", k1);
        for (const char *p = k1; *p; p++)
                cr_assert(*p > ' ' && *p < 127, "key '%s' has unprintable or space characters", k1);
        cr_assert_eq(it_call(&d, "GET", "/v1/account/1001", k1, NULL, NULL), 200);
        cr_assert_eq(it_call(&d, "PATCH", "/v1/account/1001/n/properties", k1, "{\"a\":1}", NULL),
                     204);

        /* A second key for the same account, made while the daemon runs, revokes the first. */
        cr_assert_eq(it_apikey_create(&d, "1001", k2), 0);
        cr_assert_str_neq(k1, k2);
        cr_assert_eq(it_call(&d, "GET", "/v1/account/1001", k1, NULL, NULL), 403,
                     "the revoked key still works");
        cr_assert_eq(it_call(&d, "PATCH", "/v1/account/1001/n/properties", k1, "{\"a\":2}", NULL),
                     403);
        cr_assert_eq(it_call(&d, "GET", "/v1/account/1001/n/properties/a", k2, NULL, NULL), 200);
        {
                struct it_response r;

                cr_assert_eq(it_call(&d, "GET", "/v1/account/1001/n/properties/a", k2, NULL, &r),
                             200);
                cr_assert_str_eq(r.body, "1", "the revoked key's PATCH was applied");
                it_response_free(&r);
        }
        /* Keys of other accounts are independent. */
        cr_assert_eq(it_apikey_create(&d, "2002", other), 0);
        cr_assert_str_neq(other, k2);
        cr_assert_eq(it_call(&d, "GET", "/v1/account/1001", k2, NULL, NULL), 200);
        cr_assert_eq(it_call(&d, "GET", "/v1/account/2002", other, NULL, NULL), 200);
        cr_assert_eq(it_call(&d, "GET", "/v1/account/1001", wrong, NULL, NULL), 403);
        stop_ok();

        log = it_daemon_log(&d);
        cr_assert_null(strstr(log, k1), "the first key is in the log");
        cr_assert_null(strstr(log, k2), "the second key is in the log");
        cr_assert_null(strstr(log, other), "the other account's key is in the log");
        cr_assert_null(strstr(log, wrong), "a presented (wrong) key is in the log");
        free(log);
        snprintf(path, sizeof(path), "%s/daemon.stdout", d.dir);
        out = it_read_file(path, NULL);
        cr_assert(!out || (!strstr(out, k1) && !strstr(out, k2)), "a key on the daemon's stdout");
        free(out);
}

/* ---- service manager protocol ---- */

static int notify_socket(const char *path)
{
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);

        cr_assert_geq(fd, 0);
        cr_assert_lt(strlen(path), sizeof(sa.sun_path));
        strcpy(sa.sun_path, path);
        cr_assert_eq(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
        return fd;
}

/* Receives datagrams into all (one per line) until one has a line equal to `want`. */
static int wait_notify(int fd, const char *want, int timeout_ms, struct buf *all)
{
        long long deadline = it_now_ms() + timeout_ms;

        for (;;) {
                struct pollfd pfd = {.fd = fd, .events = POLLIN};
                char msg[4096];
                int left = (int)(deadline - it_now_ms());
                ssize_t n;

                if (left <= 0 || poll(&pfd, 1, left) <= 0)
                        return 0;
                n = recv(fd, msg, sizeof(msg) - 1, 0);
                if (n <= 0)
                        continue;
                msg[n] = '\0';
                cr_assert_eq(buf_append_str(all, msg), 0);
                cr_assert_eq(buf_append_str(all, "\n"), 0);
                for (char *line = strtok(msg, "\n"); line; line = strtok(NULL, "\n"))
                        if (strcmp(line, want) == 0)
                                return 1;
        }
}

Test(cli, notify_ready_and_stopping)
{
        char sock[IT_PATH_MAX + 64], env[sizeof("NOTIFY_SOCKET=") + IT_PATH_MAX + 64];
        struct buf msgs;
        int fd, conn, code = -1;

        cr_assert_eq(it_daemon_init(&d, it_default_config), 0);
        snprintf(sock, sizeof(sock), "%s/notify.sock", d.dir);
        fd = notify_socket(sock);
        snprintf(env, sizeof(env), "NOTIFY_SOCKET=%s", sock);
        const char *envs[] = {env, NULL};
        buf_init(&msgs, 1 << 20);

        cr_assert_eq(it_daemon_spawn(&d, envs, NULL), 0);
        cr_assert(wait_notify(fd, "READY=1", IT_START_TIMEOUT_MS, &msgs), "no READY=1; got:\n%s",
                  msgs.data ? msgs.data : "(nothing)");
        cr_assert(!msgs.data || !strstr(msgs.data, "STOPPING=1"), "STOPPING=1 before READY=1");
        /* READY=1 means the listener is open: the port is logged and accepts connections. */
        cr_assert_eq(it_daemon_wait_listening(&d, 0), 0, "READY=1 came before 'listening on'");
        conn = it_tcp_connect(d.port);
        cr_assert_geq(conn, 0, "READY=1 sent but port %u refuses connections", d.port);
        close(conn);
        cr_assert_eq(healthz(), 200);

        cr_assert_eq(kill(d.pid, SIGTERM), 0);
        cr_assert(wait_notify(fd, "STOPPING=1", IT_STOP_TIMEOUT_MS, &msgs),
                  "no STOPPING=1 after SIGTERM; got:\n%s", msgs.data);
        cr_assert_eq(it_daemon_wait_exit(&d, IT_STOP_TIMEOUT_MS), 0, "no exit after STOPPING=1");
        code = it_exit_code(d.status);
        cr_assert_eq(code, 0, "exit code %d after SIGTERM", code);
        buf_free(&msgs);
        close(fd);
}

/* ---- signals ---- */

Test(cli, sigterm_lets_the_request_in_flight_finish)
{
        char key[257], head[1024], *resp, *log;
        static const char body[] = "\"a value uploaded slowly, in two halves, across SIGTERM\"";
        size_t half = sizeof(body) / 2, len = sizeof(body) - 1;
        int fd, code = -1;

        cr_assert_eq(it_daemon_init(&d, it_default_config), 0);
        cr_assert_eq(it_apikey_create(&d, "1001", key), 0);
        cr_assert_eq(it_daemon_start(&d, NULL, NULL), 0);

        fd = it_tcp_connect(d.port);
        cr_assert_geq(fd, 0);
        snprintf(head, sizeof(head),
                 "PUT /v1/account/1001/notes/s1/properties/slow HTTP/1.1\r\n"
                 "Host: 127.0.0.1\r\n"
                 "maven-api-key: %s\r\n"
                 "Content-Type: application/json\r\n"
                 "Content-Length: %zu\r\n"
                 "Connection: close\r\n"
                 "\r\n",
                 key, len);
        cr_assert_eq(it_write_all(fd, head, strlen(head)), 0);
        cr_assert_eq(it_write_all(fd, body, half), 0);
        it_sleep_ms(300);

        cr_assert_eq(kill(d.pid, SIGTERM), 0);
        it_sleep_ms(400);
        cr_assert_eq(it_daemon_wait_exit(&d, 0), -ETIMEDOUT,
                     "the daemon exited (code %d) with a request in flight",
                     it_exit_code(d.status));
        /* It no longer accepts: a new connection is refused or gets no answer. */
        {
                int late = it_tcp_connect(d.port);

                if (late >= 0) {
                        static const char get[] = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
                        char *answer;

                        (void)it_write_all(late, get, strlen(get));
                        answer = it_read_all(late, 500, NULL);
                        cr_assert(!answer || strncmp(answer, "HTTP/1.1 200", 12) != 0,
                                  "a new request was served after SIGTERM");
                        free(answer);
                        close(late);
                }
        }
        cr_assert_eq(it_write_all(fd, body + half, len - half), 0);
        resp = it_read_all(fd, 10000 * it_timeout_scale(), NULL);
        cr_assert_not_null(resp);
        cr_assert(strncmp(resp, "HTTP/1.1 204", 12) == 0, "in-flight request answered:\n%s", resp);
        free(resp);
        close(fd);

        cr_assert_eq(it_daemon_wait_exit(&d, IT_STOP_TIMEOUT_MS), 0, "no exit after SIGTERM");
        code = it_exit_code(d.status);
        log = it_daemon_log(&d);
        cr_assert_eq(code, 0, "exit code %d; log:\n%s", code, log);
        cr_assert(it_log_lines_prefixed(log));
        free(log);

        /* The write was committed. */
        cr_assert_eq(it_daemon_start(&d, NULL, NULL), 0);
        {
                struct it_response r;

                cr_assert_eq(
                    it_call(&d, "GET", "/v1/account/1001/notes/s1/properties/slow", key, NULL, &r),
                    200);
                cr_assert_str_eq(r.body, body);
                it_response_free(&r);
        }
        stop_ok();
}

Test(cli, sigint_exits_0)
{
        int code = -1;
        char *log;

        cr_assert_eq(it_daemon_init(&d, it_default_config), 0);
        cr_assert_eq(it_daemon_start(&d, NULL, NULL), 0);
        cr_assert_eq(healthz(), 200);
        cr_assert_eq(it_daemon_stop(&d, SIGINT, &code), 0);
        log = it_daemon_log(&d);
        cr_assert_eq(code, 0, "SIGINT exit code %d; log:\n%s", code, log);
        cr_assert(it_log_lines_prefixed(log), "log:\n%s", log);
        free(log);
}

/* ---- operator errors ---- */

Test(cli, port_in_use_exits_69)
{
        unsigned port;
        int busy = busy_port(&port);
        char env[64], addr[64];

        cr_assert_eq(it_daemon_init(&d, it_default_config), 0);
        snprintf(env, sizeof(env), "CTXHOOKD_API_LISTEN=127.0.0.1:%u", port);
        snprintf(addr, sizeof(addr), "127.0.0.1:%u", port);
        const char *envs[] = {env, NULL};
        const char *args[] = {"run", "-c", d.conf, NULL};
        struct it_result r = run(d.dir, args, envs);

        cr_assert_eq(r.code, 69, "exit code %d; stderr:\n%s", r.code, r.err);
        cr_assert(strstr(r.err, addr), "the address %s is not named:\n%s", addr, r.err);
        cr_assert(it_log_lines_prefixed(r.err), "stderr:\n%s", r.err);
        it_result_free(&r);
        close(busy);
}

Test(cli, store_unavailable_exits_69)
{
        char file[IT_PATH_MAX + 64], garbage[4096];
        const char *const paths[] = {"@DIR@/a-file/ctxhookd.db", "@DIR@/garbage.db"};

        cr_assert_eq(it_daemon_init(&d, NULL), 0);
        snprintf(file, sizeof(file), "%s/a-file", d.dir);
        cr_assert_eq(it_write_file(file, "a regular file, not a directory\n"), 0);
        memset(garbage, 'G', sizeof(garbage) - 1);
        garbage[sizeof(garbage) - 1] = '\0';
        snprintf(file, sizeof(file), "%s/garbage.db", d.dir);
        cr_assert_eq(it_write_file(file, garbage), 0);

        for (size_t i = 0; i < sizeof(paths) / sizeof(paths[0]); i++) {
                char text[IT_PATH_MAX * 2], conf[IT_PATH_MAX + 64], *db;

                snprintf(text, sizeof(text), "[api]\nlisten = 127.0.0.1:0\n[store]\npath = %s\n",
                         paths[i]);
                db = it_subst_dir(paths[i], d.dir);
                cr_assert_not_null(db);
                char *conf_text = it_subst_dir(text, d.dir);
                snprintf(conf, sizeof(conf), "%s/store%zu.conf", d.dir, i);
                cr_assert_eq(it_write_file(conf, conf_text), 0);
                free(conf_text);

                const char *run_args[] = {"run", "-c", conf, NULL};
                const char *key_args[] = {"apikey", "create", "--account", "1001",
                                          "-c",     conf,     NULL};
                const char *const *cmds[] = {run_args, key_args};
                for (size_t c = 0; c < 2; c++) {
                        struct it_result r = run(d.dir, cmds[c], NULL);

                        cr_assert_eq(r.code, 69, "%s with store %s: exit %d; stderr:\n%s",
                                     cmds[c][0], db, r.code, r.err);
                        cr_assert(strstr(r.err, db), "%s: the store path %s is not named:\n%s",
                                  cmds[c][0], db, r.err);
                        cr_assert_eq(r.out_len, 0, "%s printed:\n%s", cmds[c][0], r.out);
                        it_result_free(&r);
                }
                free(db);
        }
}
