/* `ctxhookd check-config` through the real binary, beyond the basics of it_cli.c: a file with
 * one problem of each kind (unknown key, bad value, out-of-range number, duplicate key, unknown
 * section, bad and repeated hook names, a hook without url and secret, bad hook values, keys
 * librdkafka refuses or ctxhookd manages, back-offs in the wrong order) reports every problem
 * exactly once as FILE:LINE: [section] key: reason with its exact line, exits 78 (EX_CONFIG)
 * and prints nothing on stdout, and `run` refuses it the same way; a good file prints the
 * effective config with every kind of secret (admin token, hook secret and bearer token,
 * librdkafka password) masked and never in clear on stdout or stderr, and the masks are refused
 * when the output is fed back; CTXHOOKD_<SECTION>_<KEY> and CTXHOOKD_HOOK_<NAME>_<KEY>
 * overrides show in the printed config (and can supply a required key); bad values from the
 * environment are reported naming the variable, without echoing a secret. After a valid config,
 * a "# store:" comment line says what the database is at, found without creating anything: a
 * SQLite file not there yet (and its missing directory), or at its schema version; a
 * PostgreSQL schema not created yet, then at its version (the cluster of the ctest fixture);
 * a PostgreSQL server that cannot be reached is exit 69 (EX_UNAVAILABLE) naming the URL with
 * its password masked, and no password ever shows on stdout or stderr. */
#include <criterion/criterion.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "test_pg.h"
#include "ctxhookd/cleanup.h"
#include "support_daemon.h"

#define MASK "********"
/* whsec_ + base64 of 32 bytes; the base64 part must never be printed either. */
#define HOOK_KEY_B64   "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="
#define HOOK_SECRET    "whsec_" HOOK_KEY_B64
#define ENV_KEY_B64    "ZW52LXNlY3JldC1rZXktMDEyMzQ1Njc4OWFiY2RlZg=="
#define ENV_SECRET     "whsec_" ENV_KEY_B64
#define ADMIN_SECRET   "adm-secret-0123456789abcdef"
#define BEARER_SECRET  "bearer-secret-abc-42"
#define KAFKA_PASSWORD "kafka-pass-secret-1"

static struct it_daemon d;
static char pg_url[TEST_PG_URL_MAX + 256]; /* a test's own PostgreSQL schema, "" = none */

static void teardown(void)
{
        it_daemon_cleanup(&d);
        if (pg_url[0])
                test_pg_drop(pg_url);
        pg_url[0] = '\0';
}

TestSuite(checkconfig, .fini = teardown, .timeout = 90);

/* ---- helpers ---- */

static struct it_result run(const char *const *args, const char *const *env)
{
        struct it_result r;

        cr_assert_eq(it_run(d.dir, args, env, &r), 0, "cannot run ctxhookd");
        return r;
}

/* The lines of stderr without their "<N>" priority prefix, as a NULL-terminated array of
 * malloc'ed strings. */
static char **err_lines(const char *err)
{
        size_t n = 0;
        char **v = calloc(1, sizeof(*v));

        cr_assert_not_null(v);
        for (const char *p = err; *p;) {
                size_t len = strcspn(p, "\n");
                const char *s = p;

                if (len >= 3 && s[0] == '<' && s[1] >= '0' && s[1] <= '7' && s[2] == '>')
                        s += 3;
                v = realloc(v, (n + 2) * sizeof(*v));
                cr_assert_not_null(v);
                v[n] = strndup(s, len - (size_t)(s - p));
                cr_assert_not_null(v[n]);
                v[++n] = NULL;
                p += len + (p[len] ? 1 : 0);
        }
        return v;
}

static void lines_free(char **v)
{
        for (size_t i = 0; v && v[i]; i++)
                free(v[i]);
        free(v);
}

/* How many lines start with prefix. */
static size_t count_prefixed(char *const *lines, const char *prefix)
{
        size_t n = 0;

        for (size_t i = 0; lines[i]; i++)
                if (strncmp(lines[i], prefix, strlen(prefix)) == 0)
                        n++;
        return n;
}

/* Exactly one line starts with prefix, followed by a reason that contains `reason`. */
static void assert_problem(char *const *lines, const char *err, const char *prefix,
                           const char *reason)
{
        size_t hits = 0;

        for (size_t i = 0; lines[i]; i++) {
                const char *rest;

                if (strncmp(lines[i], prefix, strlen(prefix)) != 0)
                        continue;
                hits++;
                rest = lines[i] + strlen(prefix);
                cr_assert(strlen(rest) > 3, "no reason after '%s': %s", prefix, lines[i]);
                cr_assert(strcasestr(rest, reason), "'%s': the reason does not say '%s'", lines[i],
                          reason);
        }
        cr_assert_eq(hits, 1, "%zu lines start with '%s', want 1; stderr:\n%s", hits, prefix, err);
}

/* No secret of this file appears anywhere in text. */
static void assert_no_secrets(const char *text, const char *what)
{
        static const char *const secrets[] = {HOOK_KEY_B64,        ENV_KEY_B64,    ADMIN_SECRET,
                                              BEARER_SECRET,       KAFKA_PASSWORD, "shortadm",
                                              "not-a-whsec-secret"};

        for (size_t i = 0; i < sizeof(secrets) / sizeof(secrets[0]); i++)
                cr_assert_null(strstr(text, secrets[i]), "%s shows the secret %s:\n%s", what,
                               secrets[i], text);
}

/* [section] key of INI text (see it_ini_value) is want. */
static void assert_ini(const char *text, const char *section, const char *key, const char *want)
{
        cr_assert_eq(it_ini_expect(text, section, key, want), 0, "[%s] %s is not '%s' (above)",
                     section, key, want);
}

/* ---- every problem, with its line ---- */

static const char bad_config[] = "; one problem of each kind\n" /* 1 */
                                 "[api]\n"                      /* 2 */
                                 "listen = 127.0.0.1:0\n"       /* 3 */
                                 "bogus_key = 1\n"              /* 4 unknown key */
                                 "max_body = lots\n"            /* 5 not a number */
                                 "threads = 65\n"               /* 6 out of range */
                                 "admin_token = shortadm\n"     /* 7 too short (not echoed) */
                                 "listen = 127.0.0.1:1\n"       /* 8 duplicate key */
                                 "[nosuch]\n"                   /* 9 unknown section */
                                 "stray = 1\n"                  /* 10 (under a refused header) */
                                 "[store]\n"                    /* 11 */
                                 "path = @DIR@/ctxhookd.db\n"   /* 12 */
                                 "pool_size = 0\n"              /* 13 out of range */
                                 "[log]\n"                      /* 14 */
                                 "level = loud\n"               /* 15 not a level */
                                 "[kafka]\n"                    /* 16 */
                                 "brokers = 127.0.0.1:9\n"      /* 17 */
                                 "fetch.wait.max.ms = soon\n" /* 18 librdkafka refuses the value */
                                 "no.such.property = 1\n"     /* 19 unknown to librdkafka */
                                 "group.id = other\n"         /* 20 managed by ctxhookd */
                                 "[delivery]\n"               /* 21 */
                                 "retry_base_ms = 5000\n"     /* 22 */
                                 "retry_max_ms = 1000\n"      /* 23 shorter than retry_base_ms */
                                 "[hook \"bad name!\"]\n"     /* 24 bad hook name */
                                 "url = http://127.0.0.1:9/x\n" /* 25 (under a refused header) */
                                 "[hook \"no-url\"]\n"          /* 26 url and secret missing */
                                 "on = conversation.end\n"      /* 27 */
                                 "[hook \"h\"]\n"               /* 28 */
                                 "on = conversation.end,conversation.nope\n" /* 29 unknown kind */
                                 "url = ftp://127.0.0.1/x\n"                 /* 30 not http(s) */
                                 "secret = " HOOK_SECRET "\n"                /* 31 */
                                 "timeout_ms = 50\n"                         /* 32 out of range */
                                 "max_attempts = 0\n"                        /* 33 out of range */
                                 "colour = blue\n"                           /* 34 unknown key */
                                 "bearer_token = " BEARER_SECRET "\n"        /* 35 */
                                 "[hook \"h\"]\n"                /* 36 name used twice */
                                 "url = http://127.0.0.1:9/y\n"; /* 37 (under a refused header) */

static const struct {
        unsigned line;
        const char *where; /* "[api] bogus_key" or "[nosuch]" */
        const char *reason;
} bad_problems[] = {
    {4, "[api] bogus_key", "unknown key"},
    {5, "[api] max_body", "integer"},
    {6, "[api] threads", "range"},
    {7, "[api] admin_token", "16"},
    {8, "[api] listen", "line 3"},
    {9, "[nosuch]", "unknown section"},
    {13, "[store] pool_size", "range"},
    {15, "[log] level", "loud"},
    {18, "[kafka] fetch.wait.max.ms", "librdkafka"},
    {19, "[kafka] no.such.property", "unknown"},
    {20, "[kafka] group.id", "[kafka] group"},
    {23, "[delivery] retry_max_ms", "retry_base_ms"},
    {24, "[hook \"bad name!\"]", "name"},
    {26, "[hook \"no-url\"] url", "required"},
    {26, "[hook \"no-url\"] secret", "required"},
    {29, "[hook \"h\"] on", "conversation.nope"},
    {30, "[hook \"h\"] url", "http"},
    {32, "[hook \"h\"] timeout_ms", "range"},
    {33, "[hook \"h\"] max_attempts", "range"},
    {34, "[hook \"h\"] colour", "unknown key"},
    {36, "[hook \"h\"]", "line 28"},
};

Test(checkconfig, every_problem_with_its_line)
{
        const char *const commands[][5] = {
            {"check-config", "-c", NULL},
            {"run", "-c", NULL},
        };
        const size_t n_problems = sizeof(bad_problems) / sizeof(bad_problems[0]);
        const char *file;

        cr_assert_eq(it_daemon_init(&d, bad_config), 0);
        /* Named relative to the working directory, as an operator in /etc/ctxhookd would: the
         * messages name the file as it was given. */
        file = strrchr(d.conf, '/') + 1;
        for (size_t c = 0; c < sizeof(commands) / sizeof(commands[0]); c++) {
                const char *args[] = {commands[c][0], commands[c][1], file, NULL};
                struct it_result r = run(args, NULL);
                char **lines = err_lines(r.err), prefix[IT_PATH_MAX + 128];

                cr_assert_eq(r.code, 78, "%s exited %d, want 78 (EX_CONFIG):\n%s", args[0], r.code,
                             r.err);
                cr_assert_eq(r.out_len, 0, "%s printed on stdout:\n%s", args[0], r.out);
                for (size_t i = 0; i < n_problems; i++) {
                        snprintf(prefix, sizeof(prefix), "%s:%u: %s: ", file, bad_problems[i].line,
                                 bad_problems[i].where);
                        assert_problem(lines, r.err, prefix, bad_problems[i].reason);
                }
                /* Nothing else (the keys under refused headers are not reported again). */
                snprintf(prefix, sizeof(prefix), "%s:", file);
                cr_assert_eq(count_prefixed(lines, prefix), n_problems,
                             "%s: want exactly %zu problems; stderr:\n%s", args[0], n_problems,
                             r.err);
                assert_no_secrets(r.err, "stderr");
                lines_free(lines);
                it_result_free(&r);
        }
}

/* ---- secrets ---- */

static const char secret_config[] = "[api]\n"
                                    "listen = 127.0.0.1:0\n"
                                    "admin_token = " ADMIN_SECRET "\n"
                                    "[store]\n"
                                    "path = @DIR@/ctxhookd.db\n"
                                    "[kafka]\n"
                                    "brokers = 127.0.0.1:9\n"
                                    "sasl.username = it-user\n"
                                    "sasl.password = " KAFKA_PASSWORD "\n"
                                    "[hook \"a\"]\n"
                                    "on = conversation.end\n"
                                    "url = http://127.0.0.1:9/a\n"
                                    "secret = " HOOK_SECRET "\n"
                                    "bearer_token = " BEARER_SECRET "\n"
                                    "[hook \"b\"]\n"
                                    "on = conversation.idle\n"
                                    "url = http://127.0.0.1:9/b\n"
                                    "secret = " HOOK_SECRET "\n";

Test(checkconfig, secrets_are_masked)
{
        const char *args[] = {"check-config", "-c", d.conf, NULL};
        char printed[IT_PATH_MAX + 64];
        struct it_result r, again;
        char **lines;
        unsigned masked_lines[8], n_masked = 0, line = 0;

        cr_assert_eq(it_daemon_init(&d, secret_config), 0);
        args[2] = d.conf;
        r = run(args, NULL);
        cr_assert_eq(r.code, 0, "check-config exited %d:\n%s", r.code, r.err);
        assert_ini(r.out, "api", "admin_token", MASK);
        assert_ini(r.out, "kafka", "sasl.password", MASK);
        assert_ini(r.out, "kafka", "sasl.username", "it-user");
        assert_ini(r.out, "hook \"a\"", "secret", MASK);
        assert_ini(r.out, "hook \"a\"", "bearer_token", MASK);
        assert_ini(r.out, "hook \"a\"", "url", "http://127.0.0.1:9/a");
        assert_ini(r.out, "hook \"b\"", "secret", MASK);
        /* An unset secret is shown as unset, not as a mask. */
        assert_ini(r.out, "hook \"b\"", "bearer_token", "");
        assert_no_secrets(r.out, "stdout");
        assert_no_secrets(r.err, "stderr");

        /* Fed back, every mask is refused at its own line: a printed config cannot be deployed
         * with "********" as a credential by mistake. */
        for (const char *p = r.out; *p && n_masked < 8;) {
                size_t n = strcspn(p, "\n");

                line++;
                if (n > strlen(" = " MASK) &&
                    strncmp(p + n - strlen(" = " MASK), " = " MASK, strlen(" = " MASK)) == 0)
                        masked_lines[n_masked++] = line;
                p += n + (p[n] ? 1 : 0);
        }
        cr_assert_eq(n_masked, 5, "want 5 masked values in:\n%s", r.out);
        snprintf(printed, sizeof(printed), "%s/printed.conf", d.dir);
        cr_assert_eq(it_write_file(printed, r.out), 0);
        {
                const char *args2[] = {"check-config", "-c", printed, NULL};

                again = run(args2, NULL);
        }
        cr_assert_eq(again.code, 78, "the masked config was accepted (%d)", again.code);
        cr_assert_eq(again.out_len, 0);
        lines = err_lines(again.err);
        for (unsigned i = 0; i < n_masked; i++) {
                char at[IT_PATH_MAX + 96];

                snprintf(at, sizeof(at), "%s:%u: ", printed, masked_lines[i]);
                cr_assert_eq(count_prefixed(lines, at), 1,
                             "the mask on line %u is not refused:\n%s", masked_lines[i], again.err);
        }
        lines_free(lines);
        it_result_free(&again);
        it_result_free(&r);
}

/* ---- the environment ---- */

static const char env_config[] = "[api]\n"
                                 "listen = 127.0.0.1:0\n"
                                 "[store]\n"
                                 "path = @DIR@/ctxhookd.db\n"
                                 "[hook \"notes-on.end\"]\n" /* 5 */
                                 "on = conversation.end\n"
                                 "secret = " HOOK_SECRET "\n"
                                 "timeout_ms = 5000\n";

Test(checkconfig, environment_overrides_are_printed)
{
        const char *args[] = {"check-config", "-c", NULL, NULL};
        const char *env[] = {"CTXHOOKD_HOOK_NOTES_ON_END_URL=http://127.0.0.1:9/from-env",
                             "CTXHOOKD_HOOK_NOTES_ON_END_TIMEOUT_MS=1234",
                             "CTXHOOKD_HOOK_NOTES_ON_END_CLOSE_REASON=SYSTEM,TIMEOUT",
                             "CTXHOOKD_HOOK_NOTES_ON_END_SECRET=" ENV_SECRET,
                             "CTXHOOKD_HOOK_NOTES_ON_END_BEARER_TOKEN=" BEARER_SECRET,
                             "CTXHOOKD_KAFKA_TOPIC=from-env",
                             "CTXHOOKD_LOG_LEVEL=notice",
                             "CTXHOOKD_DELIVERY_MAX_IN_FLIGHT=7",
                             "CTXHOOKD_STORE_POOL_SIZE=3",
                             NULL};
        struct it_result r;
        char **lines, at[IT_PATH_MAX + 96];

        cr_assert_eq(it_daemon_init(&d, env_config), 0);
        args[2] = d.conf;

        /* Without the environment the hook has no url. */
        r = run(args, NULL);
        cr_assert_eq(r.code, 78, "a hook without url passed (%d)", r.code);
        lines = err_lines(r.err);
        snprintf(at, sizeof(at), "%s:5: [hook \"notes-on.end\"] url: ", d.conf);
        assert_problem(lines, r.err, at, "required");
        lines_free(lines);
        it_result_free(&r);

        r = run(args, env);
        cr_assert_eq(r.code, 0, "check-config with the overrides exited %d:\n%s", r.code, r.err);
        assert_ini(r.out, "hook \"notes-on.end\"", "url", "http://127.0.0.1:9/from-env");
        assert_ini(r.out, "hook \"notes-on.end\"", "timeout_ms", "1234");
        assert_ini(r.out, "hook \"notes-on.end\"", "close_reason", "SYSTEM,TIMEOUT");
        assert_ini(r.out, "hook \"notes-on.end\"", "secret", MASK);
        assert_ini(r.out, "hook \"notes-on.end\"", "bearer_token", MASK);
        assert_ini(r.out, "hook \"notes-on.end\"", "on", "conversation.end");
        assert_ini(r.out, "kafka", "topic", "from-env");
        assert_ini(r.out, "log", "level", "notice");
        assert_ini(r.out, "delivery", "max_in_flight", "7");
        assert_ini(r.out, "store", "pool_size", "3");
        assert_no_secrets(r.out, "stdout");
        assert_no_secrets(r.err, "stderr");
        it_result_free(&r);
}

Test(checkconfig, bad_environment_values_name_the_variable)
{
        const char *args[] = {"check-config", "-c", NULL, NULL};
        const char *env[] = {"CTXHOOKD_API_MAX_BODY=lots",
                             "CTXHOOKD_HOOK_NOTES_ON_END_TIMEOUT_MS=5",
                             "CTXHOOKD_HOOK_NOTES_ON_END_SECRET=not-a-whsec-secret",
                             "CTXHOOKD_KAFKA_TOPIC=bad topic!",
                             "CTXHOOKD_HOOK_NOTES_ON_END_URL=http://127.0.0.1:9/ok",
                             NULL};
        static const struct {
                const char *var, *reason;
        } want[] = {
            {"CTXHOOKD_API_MAX_BODY", "integer"},
            {"CTXHOOKD_HOOK_NOTES_ON_END_TIMEOUT_MS", "range"},
            {"CTXHOOKD_HOOK_NOTES_ON_END_SECRET", "whsec_"},
            {"CTXHOOKD_KAFKA_TOPIC", ""},
        };
        _cleanup_free_ char *conf = NULL;
        struct it_result r;
        char **lines, at[IT_PATH_MAX + 96];
        size_t env_lines = 0;

        /* One problem in the file too: both kinds are reported together. */
        cr_assert_gt(asprintf(&conf, "%sbogus = 1\n", env_config), 0); /* line 9 */
        cr_assert_eq(it_daemon_init(&d, conf), 0);
        args[2] = d.conf;
        r = run(args, env);
        cr_assert_eq(r.code, 78, "bad values from the environment passed (%d):\n%s", r.code, r.out);
        cr_assert_eq(r.out_len, 0, "printed on stdout:\n%s", r.out);
        lines = err_lines(r.err);
        for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
                char prefix[256];

                /* The variable is named where a file problem names FILE:LINE. */
                snprintf(prefix, sizeof(prefix), "environment %s: ", want[i].var);
                assert_problem(lines, r.err, prefix, want[i].reason);
        }
        for (size_t i = 0; lines[i]; i++)
                if (strstr(lines[i], "CTXHOOKD_"))
                        env_lines++;
        cr_assert_eq(env_lines, sizeof(want) / sizeof(want[0]),
                     "want one line per bad variable, and none for the good one:\n%s", r.err);
        snprintf(at, sizeof(at), "%s:9: [hook \"notes-on.end\"] bogus: ", d.conf);
        assert_problem(lines, r.err, at, "unknown key");
        assert_no_secrets(r.err, "stderr");
        lines_free(lines);
        it_result_free(&r);
}

/* ---- what the database says ---- */

#define PG_PASSWORD "Pg-Sekr1t-77"

/* The "# store: " line of check-config's stdout (without the prefix), into out. */
static void store_line(const char *out_text, char *out, size_t size)
{
        const char *p = strstr(out_text, "\n# store: ");
        size_t n;

        cr_assert_not_null(p, "no \"# store:\" line in:\n%s", out_text);
        p += strlen("\n# store: ");
        n = strcspn(p, "\n");
        cr_assert_lt(n, size);
        memcpy(out, p, n);
        out[n] = '\0';
        cr_assert_null(strstr(p + n, "\n# store: "), "two \"# store:\" lines:\n%s", out_text);
}

static void check_config(struct it_result *r, const char *const *env)
{
        const char *args[] = {"check-config", "-c", d.conf, NULL};

        *r = run(args, env);
}

Test(checkconfig, sqlite_file_state)
{
        char line[1024], want[1024], key[257];
        struct it_result r;
        int v1 = -1, v2 = -2;

        cr_assert_eq(it_daemon_init(&d, "[store]\npath = @DIR@/ctx.db\n"), 0);
        check_config(&r, NULL);
        cr_assert_eq(r.code, 0, "exit %d:\n%s", r.code, r.err);
        store_line(r.out, line, sizeof(line));
        snprintf(want, sizeof(want),
                 "sqlite %s/ctx.db: does not exist yet; the first ctxhookd run creates it", d.dir);
        cr_assert_str_eq(line, want);
        it_result_free(&r);
        /* Checking created nothing. */
        snprintf(want, sizeof(want), "%s/ctx.db", d.dir);
        cr_assert_neq(access(want, F_OK), 0, "check-config created %s", want);

        cr_assert_eq(it_apikey_create(&d, "1234", key), 0);
        check_config(&r, NULL);
        cr_assert_eq(r.code, 0, "exit %d:\n%s", r.code, r.err);
        store_line(r.out, line, sizeof(line));
        snprintf(want, sizeof(want), "sqlite %s/ctx.db: readable, schema version ", d.dir);
        cr_assert_eq(strncmp(line, want, strlen(want)), 0, "%s", line);
        cr_assert_eq(sscanf(line + strlen(want), "%d of %d", &v1, &v2), 2, "%s", line);
        cr_assert(v1 > 0 && v1 == v2, "%s", line);
        it_result_free(&r);
}

Test(checkconfig, sqlite_in_a_missing_directory)
{
        char line[1024], want[1024];
        struct it_result r;

        cr_assert_eq(it_daemon_init(&d, "[store]\npath = @DIR@/not/here.db\n"), 0);
        check_config(&r, NULL);
        cr_assert_eq(r.code, 0, "exit %d:\n%s", r.code, r.err);
        store_line(r.out, line, sizeof(line));
        snprintf(want, sizeof(want), "(nor does its directory %s/not)", d.dir);
        cr_assert(strstr(line, want), "%s", line);
        it_result_free(&r);
}

Test(checkconfig, postgresql_schema_state)
{
        _cleanup_free_ char *conf = NULL;
        char line[2048], key[257];
        struct it_result r;
        int v1 = -1, v2 = -2;

        cr_assert_eq(test_pg_url(pg_url, sizeof(pg_url)), 0);
        cr_assert_gt(asprintf(&conf, "[store]\nbackend = postgresql\nurl = %s\n", pg_url), 0);
        cr_assert_eq(it_daemon_init(&d, conf), 0);
        check_config(&r, NULL);
        cr_assert_eq(r.code, 0, "exit %d:\n%s", r.code, r.err);
        assert_ini(r.out, "store", "url", pg_url);
        store_line(r.out, line, sizeof(line));
        cr_assert(strncmp(line, "postgresql ", 11) == 0 && strstr(line, pg_url), "%s", line);
        cr_assert(strstr(line, ": reachable, schema not created yet: the first ctxhookd run "
                               "creates it"),
                  "%s", line);
        it_result_free(&r);

        /* `apikey create` opens the store (creating its tables) with the same options. */
        cr_assert_eq(it_apikey_create(&d, "1234", key), 0);
        check_config(&r, NULL);
        cr_assert_eq(r.code, 0, "exit %d:\n%s", r.code, r.err);
        store_line(r.out, line, sizeof(line));
        cr_assert_not_null(strstr(line, ": reachable, schema version "), "%s", line);
        cr_assert_eq(
            sscanf(strstr(line, ": reachable, schema version ") + 28, "%d of %d", &v1, &v2), 2,
            "%s", line);
        cr_assert(v1 > 0 && v1 == v2, "%s", line);
        it_result_free(&r);
}

/* A loopback port where nothing listens, kept bound (not listening) so that nobody else takes
 * it meanwhile: connecting is refused at once. */
static int closed_port(unsigned *ret_port)
{
        struct sockaddr_in sa = {.sin_family = AF_INET};
        socklen_t len = sizeof(sa);
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

        cr_assert_geq(fd, 0);
        sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        cr_assert_eq(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
        cr_assert_eq(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
        *ret_port = ntohs(sa.sin_port);
        return fd;
}

Test(checkconfig, unreachable_postgresql_is_exit_69_without_the_password)
{
        _cleanup_free_ char *conf = NULL;
        char url[256], shown[256], line[2048];
        const char *env[2] = {url, NULL};
        struct it_result r;
        unsigned port;
        int fd = closed_port(&port);

        snprintf(shown, sizeof(shown), "postgresql://ctx:********@127.0.0.1:%u/ctxhookd", port);
        cr_assert_gt(asprintf(&conf,
                              "[store]\nbackend = postgresql\n"
                              "url = postgresql://ctx:" PG_PASSWORD "@127.0.0.1:%u/ctxhookd\n",
                              port),
                     0);
        cr_assert_eq(it_daemon_init(&d, conf), 0);
        check_config(&r, NULL);
        cr_assert_eq(r.code, 69, "exit %d, want 69 (EX_UNAVAILABLE):\n%s", r.code, r.err);
        assert_ini(r.out, "store", "url", shown);
        store_line(r.out, line, sizeof(line));
        cr_assert(strstr(line, shown), "the URL is not named: %s", line);
        cr_assert(strstr(line, "refused"), "libpq's reason is missing: %s", line);
        cr_assert(strstr(r.err, "is valid, but the store is unavailable"), "%s", r.err);
        cr_assert(strstr(r.err, shown), "%s", r.err);
        cr_assert_null(strstr(r.out, PG_PASSWORD), "the password is on stdout:\n%s", r.out);
        cr_assert_null(strstr(r.err, PG_PASSWORD), "the password is on stderr:\n%s", r.err);
        it_result_free(&r);

        /* The same URL from the environment (ctxhookd.env), key=value this time. */
        it_daemon_cleanup(&d);
        cr_assert_eq(it_daemon_init(&d, "[store]\nbackend = postgresql\n"), 0);
        snprintf(url, sizeof(url),
                 "CTXHOOKD_STORE_URL=host=127.0.0.1 port=%u dbname=ctxhookd user=ctx "
                 "password=" PG_PASSWORD,
                 port);
        check_config(&r, env);
        cr_assert_eq(r.code, 69, "exit %d:\n%s", r.code, r.err);
        snprintf(shown, sizeof(shown),
                 "host=127.0.0.1 port=%u dbname=ctxhookd user=ctx password=********", port);
        assert_ini(r.out, "store", "url", shown);
        store_line(r.out, line, sizeof(line));
        cr_assert(strstr(line, shown), "the URL is not named: %s", line);
        cr_assert_null(strstr(r.out, PG_PASSWORD), "the password is on stdout:\n%s", r.out);
        cr_assert_null(strstr(r.err, PG_PASSWORD), "the password is on stderr:\n%s", r.err);
        it_result_free(&r);
        close(fd);
}

Test(checkconfig, bad_postgresql_url_is_a_config_error)
{
        const char *file;
        struct it_result r;
        char **lines, prefix[IT_PATH_MAX + 64];

        cr_assert_eq(it_daemon_init(&d, "[store]\n"
                                        "backend = postgresql\n"
                                        "url = postgresql://ctx:" PG_PASSWORD "@[::1/ctxhookd\n"),
                     0);
        file = d.conf;
        check_config(&r, NULL);
        cr_assert_eq(r.code, 78, "exit %d:\n%s", r.code, r.err);
        cr_assert_eq(r.out_len, 0, "%s", r.out);
        lines = err_lines(r.err);
        snprintf(prefix, sizeof(prefix), "%s:3: [store] url: ", file);
        assert_problem(lines, r.err, prefix, "not a PostgreSQL connection string");
        cr_assert_null(strstr(r.err, PG_PASSWORD), "the password is on stderr:\n%s", r.err);
        lines_free(lines);
        it_result_free(&r);
}
