/* The ctxhookd command line: parse the arguments, load the configuration, run the chosen
 * command, map the outcome to a sysexits code. Everything else lives in the modules. */
#include <errno.h>
#include <libgen.h>
#include <stdbool.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sysexits.h>
#include <unistd.h>

#include "ctxhookd/apikey.h"
#include "ctxhookd/cleanup.h"
#include "ctxhookd/config.h"
#include "ctxhookd/log.h"
#include "ctxhookd/names.h"
#include "ctxhookd/replay.h"
#include "ctxhookd/service.h"
#include "ctxhookd/store.h"

static const char usage_text[] =
    "Usage:\n"
    "  ctxhookd run          [-c FILE]   run the daemon (the default command)\n"
    "  ctxhookd replay       [-c FILE] [--dry-run] [--expect FILE] [--rate N] LOG...\n"
    "                                    run recorded events (JSON lines or kcat -J, '-' =\n"
    "                                    stdin) through the pipeline; --dry-run prints the\n"
    "                                    deliveries instead of sending them\n"
    "  ctxhookd check-config [-c FILE]   validate, print the effective config and whether\n"
    "                                    the database answers; exit 0, 78 (bad config) or\n"
    "                                    69 (database unavailable)\n"
    "  ctxhookd apikey create --account ID [-c FILE]\n"
    "                                    print a new API key for the account (last line of\n"
    "                                    stdout); the account's previous key stops working\n"
    "  ctxhookd --version | --help\n"
    "\n"
    "Config: -c FILE, else $CTXHOOKD_CONFIG, else " CONFIG_DEFAULT_PATH ",\n"
    "else the embedded default. Any option can be overridden with CTXHOOKD_<SECTION>_<KEY>.\n";

struct args {
        const char *command; /* "run", "replay", "check-config", "apikey create" */
        const char *config;
        const char *account;
        bool dry_run; /* replay's options */
        const char *expect;
        double rate;
        bool rate_set;
        const char **logs; /* replay's LOGs (argv's strings), n_logs of them */
        size_t n_logs;
};

static int usage_error(const char *fmt, const char *what)
{
        fprintf(stderr, "ctxhookd: ");
        fprintf(stderr, fmt, what);
        fprintf(stderr, "\n%s", usage_text);
        return EX_USAGE;
}

/* Returns -1 to go on, else the exit code to leave with. */
static int parse_args(int argc, char **argv, const char **logs, struct args *ret)
{
        static const struct option options[] = {
            {"config", required_argument, NULL, 'c'}, {"account", required_argument, NULL, 'a'},
            {"dry-run", no_argument, NULL, 'n'},      {"expect", required_argument, NULL, 'e'},
            {"rate", required_argument, NULL, 'r'},   {"help", no_argument, NULL, 'h'},
            {"version", no_argument, NULL, 'V'},      {0},
        };
        struct args a = {0};
        const char *words[2] = {"", ""};
        int c, nwords = 0;

        a.logs = logs;
        opterr = 0;
        /* "-" first: command words come back as option 1, in order, among the options. */
        while ((c = getopt_long(argc, argv, "-:c:hV", options, NULL)) != -1) {
                switch (c) {
                case 1:
                        if (nwords >= 1 && strcmp(words[0], "replay") == 0) {
                                a.logs[a.n_logs++] = optarg;
                                break;
                        }
                        if (nwords == 2)
                                return usage_error("unexpected argument '%s'", optarg);
                        words[nwords++] = optarg;
                        break;
                case 'c':
                        a.config = optarg;
                        break;
                case 'a':
                        a.account = optarg;
                        break;
                case 'n':
                        a.dry_run = true;
                        break;
                case 'e':
                        a.expect = optarg;
                        break;
                case 'r': {
                        char *end = NULL;

                        errno = 0;
                        a.rate = strtod(optarg, &end);
                        if (errno != 0 || end == optarg || *end != '\0' || !(a.rate > 0) ||
                            a.rate > 1e9)
                                return usage_error("--rate needs a positive number of events per "
                                                   "second, not '%s'",
                                                   optarg);
                        a.rate_set = true;
                        break;
                }
                case 'h':
                        fputs(usage_text, stdout);
                        return EX_OK;
                case 'V':
                        printf("ctxhookd %s\n", CTXHOOKD_VERSION);
                        return EX_OK;
                case ':':
                        return usage_error("option '%s' needs a value", argv[optind - 1]);
                default:
                        return usage_error("unknown option '%s'", argv[optind - 1]);
                }
        }
        if (nwords == 0 || (nwords == 1 && strcmp(words[0], "run") == 0))
                a.command = "run";
        else if (strcmp(words[0], "replay") == 0)
                a.command = "replay";
        else if (nwords == 1 && strcmp(words[0], "check-config") == 0)
                a.command = "check-config";
        else if (nwords == 2 && strcmp(words[0], "apikey") == 0 && strcmp(words[1], "create") == 0)
                a.command = "apikey create";
        else if (strcmp(words[0], "apikey") == 0)
                return usage_error("%s", "apikey needs the subcommand 'create'");
        else if (nwords == 2)
                return usage_error("unexpected argument '%s'", words[1]);
        else
                return usage_error("unknown command '%s'", words[0]);
        if (strcmp(a.command, "apikey create") == 0 && !a.account)
                return usage_error("%s", "apikey create needs --account ID");
        if (strcmp(a.command, "apikey create") != 0 && a.account)
                return usage_error("%s", "--account is only valid with 'apikey create'");
        if (strcmp(a.command, "replay") != 0 && (a.dry_run || a.expect || a.rate_set))
                return usage_error("%s", "--dry-run, --expect and --rate are only valid with "
                                         "'replay'");
        if (strcmp(a.command, "replay") == 0 && a.n_logs == 0)
                return usage_error("%s", "replay needs at least one LOG (a file, or - for stdin)");
        *ret = a;
        return -1;
}

static void log_lines(const char *text)
{
        const char *p = text;

        while (*p) {
                const char *nl = strchr(p, '\n');
                int n = nl ? (int)(nl - p) : (int)strlen(p);
                log_error("%.*s", n, p);
                p += n + (nl ? 1 : 0);
        }
}

/* Loads the config named on the command line, else by $CTXHOOKD_CONFIG, else the default
 * path, else (only when the default path does not exist) the embedded default — said in the
 * log, never silently. */
static int load_config(const char *path, struct config **ret)
{
        struct ch_error err = {{0}};
        int explicit_path = 1, r;

        if (!path) {
                path = config_default_path(&explicit_path);
                if (!explicit_path && access(path, F_OK) < 0 && errno == ENOENT) {
                        log_notice("no config file at %s; using the embedded default "
                                   "(config/ctxhookd.conf as shipped)",
                                   path);
                        path = NULL;
                }
        }
        r = config_load(path, ret, &err);
        if (r < 0) {
                log_lines(err.msg);
                return EX_CONFIG;
        }
        log_set_level(log_level_from_string((*ret)->log.level));
        return -1;
}

/* What the store of a valid configuration says, as a comment line after the printed config:
 * whether the database answers and at which schema version, found without creating or
 * changing anything. A database that cannot be reached is EX_UNAVAILABLE, not a bad config. */
static int check_store(const struct config *cfg)
{
        struct ch_error err = {{0}};
        struct store_options so;
        char what[1200], where[1200 + 32] = "";
        bool postgresql;
        int r, version = 0, latest;

        config_store_options(cfg, &so);
        store_describe(&so, what, sizeof(what));
        postgresql = strcmp(cfg->store.backend, "postgresql") == 0;
        latest = store_schema_latest(&so);
        r = store_probe(&so, &version, &err);
        if (r == -ENOMEM) {
                log_error("out of memory");
                return EX_OSERR;
        }
        if (r < 0) {
                /* The reason names the database, unless a backend forgot to. */
                bool named;

                named = strstr(err.msg, what) != NULL;

                printf("# store: %s%s%s\n", named ? "" : what, named ? "" : ": ",
                       err.msg[0] ? err.msg : strerror(-r));
                if (r == -EINVAL) {
                        log_error("configuration from %s: %s", cfg->source, err.msg);
                        return EX_CONFIG;
                }
                log_error("configuration from %s is valid, but the store is unavailable: %s",
                          cfg->source, err.msg[0] ? err.msg : strerror(-r));
                return EX_UNAVAILABLE;
        }
        if (!postgresql && access(cfg->store.path, F_OK) < 0) {
                char *copy = strdup(cfg->store.path);
                const char *dir = copy ? dirname(copy) : NULL;

                if (dir && access(dir, F_OK) < 0)
                        snprintf(where, sizeof(where), " (nor does its directory %s)", dir);
                free(copy);
                printf("# store: %s: does not exist yet%s; the first ctxhookd run creates it\n",
                       what, where);
        } else if (version == 0) {
                printf("# store: %s: %s, schema not created yet: the first ctxhookd run creates "
                       "it\n",
                       what, postgresql ? "reachable" : "readable");
        } else if (version < latest) {
                printf("# store: %s: %s, schema version %d of %d: the next ctxhookd run "
                       "upgrades it\n",
                       what, postgresql ? "reachable" : "readable", version, latest);
        } else {
                printf("# store: %s: %s, schema version %d of %d\n", what,
                       postgresql ? "reachable" : "readable", version, latest);
        }
        return EX_OK;
}

static int cmd_check_config(const struct config *cfg)
{
        int r;

        if (config_print(cfg, stdout) < 0 || fflush(stdout) != 0) {
                log_error("cannot write the configuration to stdout: %s", strerror(errno));
                return EX_IOERR;
        }
        r = check_store(cfg);
        if (fflush(stdout) != 0) {
                log_error("cannot write the configuration to stdout: %s", strerror(errno));
                return EX_IOERR;
        }
        if (r != EX_OK)
                return r;
        log_notice("configuration from %s is valid", cfg->source);
        return EX_OK;
}

static int cmd_apikey_create(const struct config *cfg, const char *account)
{
        struct store_options sopts;
        char what[1200];
        unsigned char hash[STORE_KEY_HASH_LEN];
        char key[APIKEY_TEXT_LEN + 1];
        struct ch_error err = {{0}};
        struct store *store = NULL;
        long long now;
        int r;

        r = names_check_account(account, &err);
        if (r < 0) {
                log_error("%s", err.msg);
                return EX_USAGE;
        }
        config_store_options(cfg, &sopts);
        sopts.pool_size = 1;
        sopts.cache_entries = 0;
        store_describe(&sopts, what, sizeof(what));
        r = store_open(&sopts, &store, &err);
        if (r < 0) {
                log_error("cannot open the store: %s", err.msg);
                return EX_UNAVAILABLE;
        }
        r = apikey_generate(key);
        if (r < 0) {
                log_error("cannot generate a key: the random generator failed");
                store_close(store);
                return EX_SOFTWARE;
        }
        apikey_hash(key, strlen(key), hash);
        now = service_now_ms();
        r = store_key_set(store, account, hash, now);
        store_close(store);
        if (r < 0) {
                log_error("cannot store the key for account %s in %s: %s", account, what,
                          strerror(-r));
                return EX_UNAVAILABLE;
        }
        log_notice("created a new API key for account %s; any previous key is revoked", account);
        printf("%s\n", key);
        if (fflush(stdout) != 0)
                return EX_IOERR;
        return EX_OK;
}

static int cmd_replay(const struct config *cfg, const struct args *a)
{
        const struct replay_options o = {
            .dry_run = a->dry_run,
            .expect = a->expect,
            .rate = a->rate,
            .logs = a->logs,
            .n_logs = a->n_logs,
            .out = stdout,
            .err = stderr,
        };

        return replay_run(cfg, &o);
}

int main(int argc, char **argv)
{
        /* Every word after "replay" is a LOG: at most argc of them. */
        _cleanup_free_ const char **logs = calloc((size_t)argc + 1, sizeof(*logs));
        struct config *cfg = NULL;
        struct args a = {0};
        int r;

        if (!logs)
                return EX_OSERR;
        r = parse_args(argc, argv, logs, &a);
        if (r >= 0)
                return r;
        r = load_config(a.config, &cfg);
        if (r >= 0)
                return r;

        if (strcmp(a.command, "check-config") == 0)
                r = cmd_check_config(cfg);
        else if (strcmp(a.command, "apikey create") == 0)
                r = cmd_apikey_create(cfg, a.account);
        else if (strcmp(a.command, "replay") == 0)
                r = cmd_replay(cfg, &a);
        else
                r = service_run(cfg) < 0 ? EX_UNAVAILABLE : EX_OK;
        config_free(cfg);
        return r;
}
