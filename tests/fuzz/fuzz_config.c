/* libFuzzer harness of the configuration parser (config.h): the input is the text of a
 * ctxhookd.conf. A refusal must be -EINVAL with one line per problem, each naming the file and
 * a line number that exists. A config that loads is printed with config_print (what
 * check-config shows), the masked secrets put back, and loaded again: that must succeed and
 * print exactly the same text, so the printed effective configuration is always a valid file
 * meaning the same thing. CTXHOOKD_* environment overrides are cleared first: the input alone
 * decides. */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ctxhookd/config.h"
#include "fuzz.h"

#define NAME "fuzz.conf"
#define MASK "********" /* config_print's stand-in for a set secret */

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
        extern char **environ;
        bool again = true;

        (void)argc;
        (void)argv;
        while (again) {
                again = false;
                for (char **e = environ; *e; e++) {
                        if (strncmp(*e, "CTXHOOKD_", 9) == 0) {
                                char name[256];
                                size_t n = strcspn(*e, "=");

                                snprintf(name, sizeof(name), "%.*s", (int)n, *e);
                                unsetenv(name);
                                again = true; /* environ changed under us */
                                break;
                        }
                }
        }
        return 0;
}

static char *print_config(const struct config *c, size_t *ret_len)
{
        char *text = NULL;
        size_t len = 0;
        FILE *f = open_memstream(&text, &len);
        int r;

        FUZZ_CHECK(f, "open_memstream failed");
        r = config_print(c, f);
        FUZZ_CHECK(fclose(f) == 0 && r == 0, "config_print failed: %d", r);
        *ret_len = len;
        return text;
}

/* Whether config_print must mask the value of key in section: the SECRET rows and the [kafka]
 * librdkafka properties whose names say they hold one. */
static bool is_secret(const char *section, const char *key)
{
        if (strcmp(section, "api") == 0)
                return strcmp(key, "admin_token") == 0;
        if (strcmp(section, "hook") == 0)
                return strcmp(key, "secret") == 0 || strcmp(key, "bearer_token") == 0;
        if (strcmp(section, "kafka") == 0)
                return strstr(key, "password") || strstr(key, "secret") || strstr(key, "key") ||
                       strstr(key, "token");
        return false;
}

/* The value of a secret key in the printed section (hook: the hook-th one). */
static const char *secret_value(const struct config *c, const char *section, size_t hook,
                                const char *key)
{
        if (strcmp(section, "api") == 0)
                return c->api.admin_token;
        if (strcmp(section, "hook") == 0) {
                FUZZ_CHECK(hook < c->n_hooks, "config_print printed more hooks than there are");
                return strcmp(key, "secret") == 0 ? c->hooks[hook].secret
                                                  : c->hooks[hook].bearer_token;
        }
        for (size_t i = 0; i < c->kafka.n_extra; i++)
                if (strcmp(c->kafka.extra[i].key, key) == 0)
                        return c->kafka.extra[i].value;
        FUZZ_FAIL("config_print printed [kafka] %s, which is not in the config", key);
}

/* The printed text with every secret, which must be masked when set, put back from c. */
static char *unmask(const char *printed, const struct config *c)
{
        char *out = NULL, section[16] = "";
        size_t out_len = 0, hook = 0;
        bool any_hook = false;
        FILE *f = open_memstream(&out, &out_len);

        FUZZ_CHECK(f, "open_memstream failed");
        for (const char *p = printed; *p;) {
                const char *nl = strchr(p, '\n');
                size_t len = nl ? (size_t)(nl - p) : strlen(p);
                const char *eq = memmem(p, len, " =", 2);
                char key[4200];

                if (len > 0 && p[0] == '[') {
                        size_t n = strcspn(p + 1, " ]\n");

                        snprintf(section, sizeof(section), "%.*s", (int)n, p + 1);
                        if (strcmp(section, "hook") == 0) {
                                hook = any_hook ? hook + 1 : 0;
                                any_hook = true;
                        }
                }
                if (len > 0 && p[0] != ';' && p[0] != '[' && eq)
                        snprintf(key, sizeof(key), "%.*s", (int)(eq - p), p);
                else
                        key[0] = '\0';
                if (key[0] && is_secret(section, key)) {
                        const char *value = secret_value(c, section, hook, key);
                        const char *shown = eq + 2;

                        if (value && value[0])
                                FUZZ_CHECK(strcmp(shown, " " MASK) == 0 ||
                                               strncmp(shown, " " MASK "\n", 10) == 0,
                                           "config_print shows the secret [%s] %s", section, key);
                        /* As config_print writes values: no blank before a leading ';'. */
                        fprintf(f, "%s =%s%s\n", key,
                                value && value[0] && value[0] != ';' ? " " : "",
                                value ? value : "");
                } else {
                        fprintf(f, "%.*s\n", (int)len, p);
                }
                p += len + (nl ? 1 : 0);
        }
        FUZZ_CHECK(fclose(f) == 0, "open_memstream failed");
        return out;
}

static void check_refusal(int r, const struct ch_error *err, const char *text)
{
        static const char more[] = "... more not shown (";
        size_t lines = 1, len = strnlen(err->msg, sizeof(err->msg));

        FUZZ_CHECK(r == -EINVAL || r == -ENOMEM, "config_load_string returned %d", r);
        if (r == -ENOMEM)
                return;
        FUZZ_CHECK(len > 0, "refused without a reason");
        for (const char *t = text; *t; t++)
                lines += *t == '\n';
        for (const char *p = err->msg; *p;) {
                const char *nl = strchr(p, '\n');
                size_t n = nl ? (size_t)(nl - p) : strlen(p);
                unsigned long line;
                char *end;

                /* A report too long for the buffer ends with the notice saying so, never with
                 * a line cut short. */
                if (!nl && strncmp(p, more, strlen(more)) == 0)
                        break;
                FUZZ_CHECK(n > strlen(NAME ":") && strncmp(p, NAME ":", strlen(NAME ":")) == 0,
                           "problem line does not start with the file name: %.*s", (int)n, p);
                if (p[strlen(NAME ":")] >= '0' && p[strlen(NAME ":")] <= '9') {
                        line = strtoul(p + strlen(NAME ":"), &end, 10);
                        FUZZ_CHECK(line >= 1 && line <= lines && *end == ':',
                                   "problem names line %lu of a %zu-line text: %.*s", line, lines,
                                   (int)n, p);
                }
                p += n + (nl ? 1 : 0);
        }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        struct config *c = NULL, *again = NULL;
        struct ch_error err = {{0}};
        char *text, *printed, *restored, *printed_again;
        size_t printed_len, again_len;
        int r;

        text = malloc(size + 1);
        FUZZ_CHECK(text, "out of memory");
        memcpy(text, data, size);
        text[size] = '\0'; /* a NUL inside ends the text, as for any C string */

        r = config_load_string(text, NAME, &c, &err);
        if (r < 0) {
                FUZZ_CHECK(!c, "config_load_string failed but wrote *ret");
                check_refusal(r, &err, text);
                free(text);
                return 0;
        }
        FUZZ_CHECK(c && c->n_hooks <= CONFIG_HOOKS_MAX, "loaded config with %zu hooks",
                   c ? c->n_hooks : 0);

        printed = print_config(c, &printed_len);
        restored = unmask(printed, c);
        memset(&err, 0, sizeof(err));
        r = config_load_string(restored, NAME, &again, &err);
        FUZZ_CHECK(r == 0, "the printed configuration does not load again (%d):\n%s\n--- text:\n%s",
                   r, err.msg, restored);
        printed_again = print_config(again, &again_len);
        if (again_len != printed_len || memcmp(printed, printed_again, printed_len) != 0) {
                size_t i = 0;

                while (i < printed_len && i < again_len && printed[i] == printed_again[i])
                        i++;
                FUZZ_FAIL("printing the reloaded configuration differs at byte %zu:\n%s\n--- "
                          "again:\n%s",
                          i, printed, printed_again);
        }

        free(printed_again);
        free(restored);
        free(printed);
        config_free(again);
        config_free(c);
        free(text);
        return 0;
}
