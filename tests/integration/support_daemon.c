/* Support for the integration tests (see support_daemon.h): process control of the real
 * ctxhookd binary, one-shot CLI runs, and HTTP through libcurl or a raw socket. Everything a
 * test might need to diagnose a failure (the daemon's log, a command's output) is printed to
 * stderr when a helper fails, because the test itself only sees an error code. */
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <criterion/hooks.h>
#include <curl/curl.h>

#include "ctxhookd/buf.h"
#include "ctxhookd/cleanup.h"
#include "support_daemon.h"

extern char **environ;

const char it_default_config[] = "[api]\n"
                                 "listen = 127.0.0.1:0\n"
                                 "max_body = 65536\n"
                                 "threads = 2\n"
                                 "[store]\n"
                                 "path = @DIR@/ctxhookd.db\n"
                                 "sweep_interval_s = 1\n"
                                 "[log]\n"
                                 "level = debug\n";

#define LISTEN_MARK "listening on http://"
#define IT_BODY_CAP (64u << 20)

long long it_now_ms(void)
{
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void it_sleep_ms(int ms)
{
        struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};

        if (ms <= 0)
                return;
        while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
                ;
}

int it_exit_code(int status)
{
        if (WIFEXITED(status))
                return WEXITSTATUS(status);
        if (WIFSIGNALED(status))
                return 128 + WTERMSIG(status);
        return -1;
}

/* ---- files ---- */

int it_tmpdir(char ret[IT_DIR_MAX])
{
        char tmpl[] = "/tmp/ctxhookd-it-XXXXXX";

        if (!mkdtemp(tmpl)) {
                int r = -errno;

                fprintf(stderr, "it: mkdtemp: %s\n", strerror(-r));
                return r;
        }
        snprintf(ret, IT_DIR_MAX, "%s", tmpl);
        return 0;
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
        (void)st;
        (void)flag;
        (void)ftw;
        remove(path);
        return 0;
}

void it_rmtree(const char *dir)
{
        if (!dir || !*dir || getenv("IT_KEEP"))
                return;
        nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

int it_write_file(const char *path, const char *text)
{
        FILE *f = fopen(path, "w");
        int r = 0;

        if (!f) {
                r = -errno;
                fprintf(stderr, "it: cannot write %s: %s\n", path, strerror(-r));
                return r;
        }
        if (fputs(text, f) == EOF)
                r = -EIO;
        if (fclose(f) != 0)
                r = -EIO;
        return r;
}

/* The buffer's data, or "" when it never allocated; NUL-terminated either way. */
static char *take_or_empty(struct buf *b, size_t *ret_len)
{
        if (!b->data) {
                if (ret_len)
                        *ret_len = 0;
                return strdup("");
        }
        return buf_take(b, ret_len);
}

static char *read_fd_from(int fd, off_t offset, size_t *ret_len)
{
        struct buf b;
        char chunk[8192];

        buf_init(&b, IT_BODY_CAP);
        for (;;) {
                ssize_t n = pread(fd, chunk, sizeof(chunk), offset);

                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0) {
                        buf_free(&b);
                        return NULL;
                }
                if (n == 0)
                        break;
                if (buf_append(&b, chunk, (size_t)n) < 0)
                        return NULL;
                offset += n;
        }
        return take_or_empty(&b, ret_len);
}

char *it_read_file(const char *path, size_t *ret_len)
{
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        char *s;

        if (fd < 0)
                return NULL;
        s = read_fd_from(fd, 0, ret_len);
        close(fd);
        return s;
}

char *it_subst_dir(const char *text, const char *dir)
{
        struct buf b;
        const char *p = text;

        buf_init(&b, IT_BODY_CAP);
        for (;;) {
                const char *at = strstr(p, "@DIR@");

                if (!at) {
                        if (buf_append_str(&b, p) < 0)
                                return NULL;
                        break;
                }
                if (buf_append(&b, p, (size_t)(at - p)) < 0 || buf_append_str(&b, dir) < 0)
                        return NULL;
                p = at + strlen("@DIR@");
        }
        if (!b.data)
                return strdup("");
        return buf_take(&b, NULL);
}

/* ---- processes ---- */

static char *find_program(const char *argv0);

static const char *bin_path(void)
{
        const char *bin = getenv("CTXHOOKD_BIN");

        if (!bin || !*bin) {
                fprintf(stderr, "it: CTXHOOKD_BIN is not set (run the tests through ctest)\n");
                return NULL;
        }
        return bin;
}

int it_timeout_scale(void)
{
        static int scale;

        if (scale == 0) {
                const char *s = getenv("CTXHOOKD_TIMEOUT_SCALE");
                char *end = NULL;
                long v = s ? strtol(s, &end, 10) : 0;

                scale = s && end != s && *end == '\0' && v > 0 && v <= 1000 ? (int)v : 1;
        }
        return scale;
}

#define WRAPPER_MAX 24

/* The words of $CTXHOOKD_WRAPPER, NULL-terminated, the first resolved through $PATH; parsed
 * once (the test process never changes it) and kept until exit. NULL when it cannot be used. */
static const char *const *wrapper_words(void)
{
        static const char *words[WRAPPER_MAX + 1];
        static char *mem;
        static int done;
        const char *w = getenv("CTXHOOKD_WRAPPER");
        char *save = NULL, *prog;
        int n = 0;

        if (done)
                return words;
        if (w && *w) {
                mem = strdup(w);
                if (!mem)
                        return NULL;
                for (char *word = strtok_r(mem, " ", &save); word;
                     word = strtok_r(NULL, " ", &save)) {
                        if (n == WRAPPER_MAX) {
                                fprintf(stderr, "it: CTXHOOKD_WRAPPER has over %d words\n",
                                        WRAPPER_MAX);
                                free(mem);
                                mem = NULL;
                                return NULL;
                        }
                        words[n++] = word;
                }
        }
        if (n > 0) {
                prog = find_program(words[0]);
                if (!prog) {
                        fprintf(stderr, "it: CTXHOOKD_WRAPPER: %s not found in $PATH\n", words[0]);
                        free(mem);
                        mem = NULL;
                        return NULL;
                }
                words[0] = prog;
        }
        words[n] = NULL;
        done = 1;
        return words;
}

/* A suite's criterion time limit is scaled with the waits: the runner calls this before it
 * runs the suite's tests, and reads the limit from the suite's data when it starts each. */
ReportHook(PRE_SUITE)(struct criterion_suite_set *set)
{
        if (set->suite.data && set->suite.data->timeout > 0)
                set->suite.data->timeout *= it_timeout_scale();
}

#define IT_ARGV_MAX 64

/* Starts argv (room for IT_ARGV_MAX entries) with the wrapper's words and the binary; returns
 * the number of entries used, or a negative errno code. */
static int argv_begin(const char **argv)
{
        const char *const *wrap = wrapper_words();
        const char *bin = bin_path();
        int n = 0;

        if (!bin)
                return -ENOENT;
        if (!wrap)
                return -EINVAL;
        for (; wrap[n]; n++)
                argv[n] = wrap[n];
        argv[n++] = bin;
        return n;
}

static int env_overridden(const char *entry, const char *const *env)
{
        size_t n = strcspn(entry, "=");

        if (strncmp(entry, "CTXHOOKD_", strlen("CTXHOOKD_")) == 0)
                return 1;
        if (strncmp(entry, "NOTIFY_SOCKET=", strlen("NOTIFY_SOCKET=")) == 0)
                return 1;
        for (size_t i = 0; env && env[i]; i++) {
                size_t m = strcspn(env[i], "=");

                if (m == n && strncmp(entry, env[i], n) == 0)
                        return 1;
        }
        return 0;
}

/* The child's environment: ours without CTXHOOKD_* / NOTIFY_SOCKET (tests must not depend on
 * the caller's shell), plus the "K=V" entries of env. The strings are borrowed. */
static char **build_env(const char *const *env)
{
        size_t n = 0, k = 0;
        char **out;

        for (char **e = environ; *e; e++)
                n++;
        for (size_t i = 0; env && env[i]; i++)
                n++;
        out = calloc(n + 1, sizeof(*out));
        if (!out)
                return NULL;
        for (char **e = environ; *e; e++)
                if (!env_overridden(*e, env))
                        out[k++] = *e;
        for (size_t i = 0; env && env[i]; i++)
                if (strchr(env[i], '='))
                        out[k++] = (char *)env[i];
        out[k] = NULL;
        return out;
}

/* Forks and execs bin with argv in cwd; stdin /dev/null, stdout/stderr onto the given fds.
 * Everything is prepared before fork so the child only calls async-signal-safe functions. */
static int spawn(const char *cwd, char *const *argv, char *const *envp, int out_fd, int err_fd,
                 pid_t *ret_pid)
{
        int null_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
        pid_t pid;

        if (null_fd < 0)
                return -errno;
        pid = fork();
        if (pid < 0) {
                int r = -errno;

                close(null_fd);
                return r;
        }
        if (pid == 0) {
                if (chdir(cwd) < 0)
                        _exit(126);
                if (dup2(null_fd, 0) < 0 || dup2(out_fd, 1) < 0 || dup2(err_fd, 2) < 0)
                        _exit(126);
                /* criterion's pipes must not leak into the daemon, or a daemon that outlives
                 * its test could keep the runner waiting. */
                close_range(3, ~0U, 0);
                execve(argv[0], argv, envp);
                _exit(127);
        }
        close(null_fd);
        *ret_pid = pid;
        return 0;
}

int it_daemon_init(struct it_daemon *d, const char *config_text)
{
        int r;

        memset(d, 0, sizeof(*d));
        r = it_tmpdir(d->dir);
        if (r < 0)
                return r;
        snprintf(d->log, sizeof(d->log), "%s/daemon.log", d->dir);
        snprintf(d->db, sizeof(d->db), "%s/ctxhookd.db", d->dir);
        if (config_text) {
                _cleanup_free_ char *text = it_subst_dir(config_text, d->dir);

                if (!text)
                        return -ENOMEM;
                snprintf(d->conf, sizeof(d->conf), "%s/ctxhookd.conf", d->dir);
                r = it_write_file(d->conf, text);
                if (r < 0)
                        return r;
        }
        return 0;
}

int it_daemon_spawn(struct it_daemon *d, const char *const *env, const char *const *extra_args)
{
        const char *bin = bin_path();
        const char *argv[IT_ARGV_MAX];
        _cleanup_free_ char **envp = NULL;
        char out_path[IT_PATH_MAX + 16];
        struct stat st;
        int n, out_fd, err_fd, r;

        if (!bin)
                return -ENOENT;
        if (d->pid > 0 && !d->exited) {
                fprintf(stderr, "it: daemon already running\n");
                return -EBUSY;
        }
        n = argv_begin(argv);
        if (n < 0)
                return n;
        if (!d->no_run_word)
                argv[n++] = "run";
        if (d->conf[0]) {
                argv[n++] = "-c";
                argv[n++] = d->conf;
        }
        for (size_t i = 0; extra_args && extra_args[i] && n < IT_ARGV_MAX - 1; i++)
                argv[n++] = extra_args[i];
        argv[n] = NULL;
        envp = build_env(env);
        if (!envp)
                return -ENOMEM;
        snprintf(out_path, sizeof(out_path), "%s/daemon.stdout", d->dir);
        out_fd = open(out_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
        err_fd = open(d->log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
        if (out_fd < 0 || err_fd < 0) {
                r = -errno;
                fprintf(stderr, "it: cannot open the daemon's log files in %s\n", d->dir);
                if (out_fd >= 0)
                        close(out_fd);
                if (err_fd >= 0)
                        close(err_fd);
                return r;
        }
        d->log_offset = fstat(err_fd, &st) == 0 ? st.st_size : 0;
        r = spawn(d->dir, (char *const *)argv, envp, out_fd, err_fd, &d->pid);
        close(out_fd);
        close(err_fd);
        if (r < 0) {
                fprintf(stderr, "it: cannot start %s: %s\n", bin, strerror(-r));
                return r;
        }
        d->exited = 0;
        d->status = 0;
        d->port = 0;
        d->base[0] = '\0';
        return 0;
}

/* Reaps pid into *exited and *status (a daemon's or a peer's); 1 once it has exited (or never ran),
 * 0 while it runs (WNOHANG). */
static int reap_pid(pid_t pid, int *exited, int *status, int options)
{
        int st;
        pid_t p;

        if (pid <= 0 || *exited)
                return 1;
        do
                p = waitpid(pid, &st, options);
        while (p < 0 && errno == EINTR);
        if (p == pid) {
                *exited = 1;
                *status = st;
                return 1;
        }
        return 0;
}

static int reap(struct it_daemon *d, int options)
{
        return reap_pid(d->pid, &d->exited, &d->status, options);
}

static void print_log(const struct it_daemon *d, const char *why)
{
        _cleanup_free_ char *log = it_daemon_log(d);

        fprintf(stderr, "it: %s; daemon log %s:\n%s\n", why, d->log, log);
}

/* Parses "listening on http://HOST:PORT\n" found at mark; fills d->port and d->base. */
static int parse_listening(struct it_daemon *d, const char *mark)
{
        const char *host = mark + strlen(LISTEN_MARK), *p = host, *nl = strchr(mark, '\n');
        char *end;
        unsigned long port;

        if (!nl)
                return -EAGAIN; /* the line is not complete yet */
        if (*p == '[')
                p = strchr(p, ']');
        if (!p || !(p = strchr(p, ':')) || p > nl)
                return -EBADMSG;
        port = strtoul(p + 1, &end, 10);
        if (end == p + 1 || port == 0 || port > 65535)
                return -EBADMSG;
        d->port = (unsigned)port;
        snprintf(d->base, sizeof(d->base), "http://%.*s", (int)(end - host), host);
        return 0;
}

int it_daemon_wait_listening(struct it_daemon *d, int timeout_ms)
{
        long long deadline = it_now_ms() + timeout_ms;

        for (;;) {
                int fd = open(d->log, O_RDONLY | O_CLOEXEC);
                _cleanup_free_ char *log = NULL;

                if (fd >= 0) {
                        log = read_fd_from(fd, d->log_offset, NULL);
                        close(fd);
                }
                if (log) {
                        const char *mark = strstr(log, LISTEN_MARK);

                        if (mark) {
                                int r = parse_listening(d, mark);

                                if (r == 0)
                                        return 0;
                                if (r != -EAGAIN) {
                                        print_log(d, "cannot parse the listening line");
                                        return r;
                                }
                        }
                }
                if (reap(d, WNOHANG)) {
                        char why[96];

                        snprintf(why, sizeof(why), "daemon exited (code %d) before listening",
                                 it_exit_code(d->status));
                        print_log(d, why);
                        return -ECHILD;
                }
                if (it_now_ms() > deadline) {
                        print_log(d, "no 'listening on' line in time");
                        return -ETIMEDOUT;
                }
                it_sleep_ms(10);
        }
}

int it_daemon_start(struct it_daemon *d, const char *const *env, const char *const *extra_args)
{
        int r = it_daemon_spawn(d, env, extra_args);

        if (r < 0)
                return r;
        return it_daemon_wait_listening(d, IT_START_TIMEOUT_MS);
}

int it_daemon_wait_exit(struct it_daemon *d, int timeout_ms)
{
        long long deadline = it_now_ms() + timeout_ms;

        for (;;) {
                if (reap(d, WNOHANG))
                        return 0;
                if (it_now_ms() > deadline)
                        return -ETIMEDOUT;
                it_sleep_ms(5);
        }
}

int it_daemon_stop(struct it_daemon *d, int sig, int *ret_code)
{
        int r;

        if (d->pid <= 0)
                return -ESRCH;
        if (!d->exited)
                kill(d->pid, sig);
        r = it_daemon_wait_exit(d, IT_STOP_TIMEOUT_MS);
        if (r < 0) {
                print_log(d, "daemon did not exit after the signal; killing it");
                kill(d->pid, SIGKILL);
                reap(d, 0);
                return r;
        }
        if (ret_code)
                *ret_code = it_exit_code(d->status);
        return 0;
}

void it_daemon_cleanup(struct it_daemon *d)
{
        if (d->pid > 0 && !d->exited) {
                kill(d->pid, SIGKILL);
                reap(d, 0);
        }
        it_rmtree(d->dir);
        d->dir[0] = '\0';
}

char *it_daemon_log(const struct it_daemon *d)
{
        char *s = it_read_file(d->log, NULL);

        return s ? s : strdup("");
}

int it_log_lines_prefixed(const char *text)
{
        const char *p = text;

        while (*p) {
                size_t n = strcspn(p, "\n");

                if (n < 3 || p[0] != '<' || !isdigit((unsigned char)p[1])) {
                        fprintf(stderr, "it: log line without a <N> prefix: '%.*s'\n", (int)n, p);
                        return 0;
                }
                p += n + (p[n] ? 1 : 0);
        }
        return 1;
}

int it_daemon_wait_ready(const struct it_daemon *d, int timeout_ms)
{
        long long deadline = it_now_ms() + timeout_ms;

        do {
                if (it_call(d, "GET", "/readyz", NULL, NULL, NULL) == 200)
                        return 0;
                it_sleep_ms(50);
        } while (it_now_ms() < deadline);
        return -ETIMEDOUT;
}

void it_daemon_print_log_tail(const struct it_daemon *d, size_t max)
{
        _cleanup_free_ char *log = it_daemon_log(d);
        size_t n = strlen(log);

        fprintf(stderr, "it: daemon log (tail):\n%s\n", n > max ? log + n - max : log);
}

/* ---- one-shot commands ---- */

int it_run(const char *cwd, const char *const *args, const char *const *env, struct it_result *ret)
{
        const char *argv[IT_ARGV_MAX];
        _cleanup_free_ char **envp = NULL;
        char tmp[IT_DIR_MAX] = "";
        struct it_daemon proc = {0};
        int n, out_fd = -1, err_fd = -1, r;

        n = argv_begin(argv);
        if (n < 0)
                return n;
        for (size_t i = 0; args && args[i] && n < IT_ARGV_MAX - 1; i++)
                argv[n++] = args[i];
        argv[n] = NULL;
        envp = build_env(env);
        if (!envp)
                return -ENOMEM;
        if (!cwd) {
                r = it_tmpdir(tmp);
                if (r < 0)
                        return r;
                cwd = tmp;
        }
        out_fd = memfd_create("it-stdout", MFD_CLOEXEC);
        err_fd = memfd_create("it-stderr", MFD_CLOEXEC);
        if (out_fd < 0 || err_fd < 0) {
                r = -errno;
                goto out;
        }
        r = spawn(cwd, (char *const *)argv, envp, out_fd, err_fd, &proc.pid);
        if (r < 0)
                goto out;
        memset(ret, 0, sizeof(*ret));
        if (it_daemon_wait_exit(&proc, IT_CLI_TIMEOUT_MS) < 0) {
                kill(proc.pid, SIGKILL);
                reap(&proc, 0);
                ret->code = -1;
        } else {
                ret->code = it_exit_code(proc.status);
        }
        ret->out = read_fd_from(out_fd, 0, &ret->out_len);
        ret->err = read_fd_from(err_fd, 0, &ret->err_len);
        if (!ret->out || !ret->err) {
                it_result_free(ret);
                r = -ENOMEM;
        }
out:
        if (out_fd >= 0)
                close(out_fd);
        if (err_fd >= 0)
                close(err_fd);
        it_rmtree(tmp);
        return r;
}

void it_result_free(struct it_result *r)
{
        free(r->out);
        free(r->err);
        r->out = r->err = NULL;
        r->out_len = r->err_len = 0;
}

/* The value part of line (after "key ="): leading and trailing blanks off. */
static void ini_trim(const char **s, const char **e)
{
        *s += strspn(*s, " \t");
        while (*e > *s && ((*e)[-1] == ' ' || (*e)[-1] == '\t'))
                (*e)--;
}

int it_ini_value(const char *text, const char *section, const char *key, char *out, size_t outsz)
{
        _cleanup_free_ char *cur = strdup("");

        if (!cur)
                return -ENOMEM;
        for (const char *p = text; *p;) {
                size_t n = strcspn(p, "\n");
                const char *s = p, *end = p + n, *eq, *close;

                p += n + (p[n] ? 1 : 0);
                s += strspn(s, " \t");
                if (s == end || *s == ';' || *s == '#')
                        continue;
                if (*s == '[') {
                        close = memrchr(s, ']', (size_t)(end - s));
                        if (!close) {
                                fprintf(stderr, "it: INI header without ']': '%.*s'\n",
                                        (int)(end - s), s);
                                return -EBADMSG;
                        }
                        free(cur);
                        cur = strndup(s + 1, (size_t)(close - s - 1));
                        if (!cur)
                                return -ENOMEM;
                        continue;
                }
                eq = memchr(s, '=', (size_t)(end - s));
                if (!eq || strcmp(cur, section) != 0)
                        continue;
                {
                        const char *ks = s, *ke = eq, *vs = eq + 1, *ve = end;

                        ini_trim(&ks, &ke);
                        if ((size_t)(ke - ks) != strlen(key) || strncmp(ks, key, strlen(key)) != 0)
                                continue;
                        ini_trim(&vs, &ve);
                        if ((size_t)(ve - vs) >= outsz)
                                return -ENOBUFS;
                        memcpy(out, vs, (size_t)(ve - vs));
                        out[ve - vs] = '\0';
                        return 0;
                }
        }
        return -ENOENT;
}

int it_ini_expect(const char *text, const char *section, const char *key, const char *want)
{
        _cleanup_free_ char *v = malloc(strlen(text) + 1);
        int r;

        if (!v)
                return -ENOMEM;
        r = it_ini_value(text, section, key, v, strlen(text) + 1);
        if (r < 0) {
                fprintf(stderr, "it: [%s] %s: %s in:\n%s\n", section, key,
                        r == -ENOENT ? "missing" : strerror(-r), text);
                return r;
        }
        if (strcmp(v, want) != 0) {
                fprintf(stderr, "it: [%s] %s = '%s', want '%s'\n", section, key, v, want);
                return -EINVAL;
        }
        return 0;
}

int it_apikey_create(const struct it_daemon *d, const char *account, char ret_key[257])
{
        const char *args[] = {"apikey", "create", "--account", account, "-c", d->conf, NULL};
        struct it_result res;
        const char *last = NULL, *p;
        size_t len;
        int r;

        r = it_run(d->dir, args, NULL, &res);
        if (r < 0)
                return r;
        /* The key is the last non-empty line of stdout. */
        for (p = res.out; *p;) {
                size_t n = strcspn(p, "\n");

                if (n > 0)
                        last = p;
                p += n + (p[n] ? 1 : 0);
        }
        len = last ? strcspn(last, "\n") : 0;
        if (res.code != 0 || len == 0 || len > 256) {
                fprintf(stderr,
                        "it: apikey create --account %s exited %d\nstdout:\n%s\nstderr:\n%s\n",
                        account, res.code, res.out, res.err);
                it_result_free(&res);
                return -EIO;
        }
        memcpy(ret_key, last, len);
        ret_key[len] = '\0';
        it_result_free(&res);
        return 0;
}

/* ---- HTTP ---- */

struct upload {
        const char *p;
        size_t left;
};

static size_t on_read(char *dst, size_t size, size_t nitems, void *userdata)
{
        struct upload *u = userdata;
        size_t n = size * nitems;

        /* Small pieces, so that a chunked upload really is several chunks. */
        if (n > 1000)
                n = 1000;
        if (n > u->left)
                n = u->left;
        memcpy(dst, u->p, n);
        u->p += n;
        u->left -= n;
        return n;
}

static size_t on_body(char *ptr, size_t size, size_t nmemb, void *userdata)
{
        struct buf *b = userdata;

        if (buf_append(b, ptr, size * nmemb) < 0)
                return 0;
        return size * nmemb;
}

static void header_value(const char *line, size_t len, const char *name, char *out, size_t outsz)
{
        size_t nl = strlen(name), vlen;
        const char *v;

        if (len <= nl || strncasecmp(line, name, nl) != 0 || line[nl] != ':')
                return;
        v = line + nl + 1;
        while (v < line + len && (*v == ' ' || *v == '\t'))
                v++;
        vlen = (size_t)(line + len - v);
        while (vlen > 0 && (v[vlen - 1] == '\r' || v[vlen - 1] == '\n' || v[vlen - 1] == ' '))
                vlen--;
        if (vlen >= outsz)
                vlen = outsz - 1;
        memcpy(out, v, vlen);
        out[vlen] = '\0';
}

struct header_ctx {
        struct buf raw;
        struct it_response *resp;
};

static size_t on_header(char *ptr, size_t size, size_t nitems, void *userdata)
{
        struct header_ctx *h = userdata;
        size_t n = size * nitems;

        /* A new status line (after a 100 Continue) starts a new header block. */
        if (n >= 5 && strncmp(ptr, "HTTP/", 5) == 0) {
                buf_reset(&h->raw);
                h->resp->etag[0] = h->resp->allow[0] = h->resp->content_type[0] = '\0';
        }
        if (buf_append(&h->raw, ptr, n) < 0)
                return 0;
        header_value(ptr, n, "ETag", h->resp->etag, sizeof(h->resp->etag));
        header_value(ptr, n, "Allow", h->resp->allow, sizeof(h->resp->allow));
        header_value(ptr, n, "Content-Type", h->resp->content_type, sizeof(h->resp->content_type));
        return n;
}

static void free_slist(struct curl_slist **l)
{
        curl_slist_free_all(*l);
}

static void free_easy(CURL **c)
{
        if (*c)
                curl_easy_cleanup(*c);
}

int it_http(const struct it_request *req, struct it_response *ret)
{
        static int curl_ready;
        _cleanup_(free_easy) CURL *c = NULL;
        _cleanup_(free_slist) struct curl_slist *hdrs = NULL;
        struct it_response resp = {0};
        struct header_ctx hctx = {.resp = &resp};
        struct buf body;
        struct upload up = {0};
        char line[512];
        int has_ctype = 0;
        size_t body_len = req->body ? (req->body_len ? req->body_len : strlen(req->body)) : 0;
        CURLcode cc;

        if (!curl_ready) {
                curl_global_init(CURL_GLOBAL_ALL);
                curl_ready = 1;
        }
        c = curl_easy_init();
        if (!c)
                return -ENOMEM;
        buf_init(&body, IT_BODY_CAP);
        buf_init(&hctx.raw, 1 << 20);

        if (req->api_key) {
                snprintf(line, sizeof(line), "maven-api-key: %s", req->api_key);
                hdrs = curl_slist_append(hdrs, line);
        }
        for (size_t i = 0; req->headers && req->headers[i]; i++) {
                if (strncasecmp(req->headers[i], "Content-Type:", 13) == 0)
                        has_ctype = 1;
                hdrs = curl_slist_append(hdrs, req->headers[i]);
        }
        if (req->body && !has_ctype)
                hdrs = curl_slist_append(hdrs, "Content-Type: application/json");
        hdrs = curl_slist_append(hdrs, "Expect:");

        curl_easy_setopt(c, CURLOPT_URL, req->url);
        curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(c, CURLOPT_NOPROXY, "*");
        curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 20000L);
        curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, req->method);
        if (strcmp(req->method, "HEAD") == 0)
                curl_easy_setopt(c, CURLOPT_NOBODY, 1L);
        if (req->body && req->chunked) {
                up.p = req->body;
                up.left = body_len;
                hdrs = curl_slist_append(hdrs, "Transfer-Encoding: chunked");
                curl_easy_setopt(c, CURLOPT_UPLOAD, 1L);
                curl_easy_setopt(c, CURLOPT_READFUNCTION, on_read);
                curl_easy_setopt(c, CURLOPT_READDATA, &up);
        } else if (req->body) {
                curl_easy_setopt(c, CURLOPT_POSTFIELDS, req->body);
                curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)body_len);
        } else if (strcmp(req->method, "POST") == 0) {
                curl_easy_setopt(c, CURLOPT_POSTFIELDS, "");
                curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)0);
        }
        curl_easy_setopt(c, CURLOPT_HTTPHEADER, hdrs);
        curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
        curl_easy_setopt(c, CURLOPT_WRITEDATA, &body);
        curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
        curl_easy_setopt(c, CURLOPT_HEADERDATA, &hctx);

        cc = curl_easy_perform(c);
        if (cc != CURLE_OK) {
                fprintf(stderr, "it: %s %s: %s\n", req->method, req->url, curl_easy_strerror(cc));
                buf_free(&body);
                buf_free(&hctx.raw);
                return -EIO;
        }
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &resp.status);
        resp.body = take_or_empty(&body, &resp.body_len);
        resp.headers = take_or_empty(&hctx.raw, NULL);
        if (!resp.body || !resp.headers) {
                it_response_free(&resp);
                return -ENOMEM;
        }
        *ret = resp;
        return 0;
}

void it_response_free(struct it_response *r)
{
        if (!r)
                return;
        free(r->body);
        free(r->headers);
        r->body = r->headers = NULL;
        r->body_len = 0;
}

long it_call_h(const struct it_daemon *d, const char *method, const char *path, const char *key,
               const char *const *headers, const char *body, struct it_response *ret)
{
        _cleanup_free_ char *url = NULL;
        struct it_request req = {
            .method = method, .api_key = key, .headers = headers, .body = body};
        struct it_response resp;
        long status;

        if (asprintf(&url, "%s%s", d->base, path) < 0)
                return -1;
        req.url = url;
        if (it_http(&req, &resp) < 0)
                return -1;
        status = resp.status;
        if (ret)
                *ret = resp;
        else
                it_response_free(&resp);
        return status;
}

long it_call(const struct it_daemon *d, const char *method, const char *path, const char *key,
             const char *body, struct it_response *ret)
{
        return it_call_h(d, method, path, key, NULL, body, ret);
}

json_t *it_response_json(const struct it_response *r)
{
        json_error_t e;

        if (!r->body)
                return NULL;
        return json_loadb(r->body, r->body_len, JSON_DECODE_ANY | JSON_ALLOW_NUL, &e);
}

int it_is_error_body(const struct it_response *r)
{
        json_t *j = it_response_json(r);
        json_t *m = j ? json_object_get(j, "message") : NULL;
        int ok = json_is_object(j) && json_is_string(m) && json_string_length(m) > 0;

        if (!ok)
                fprintf(stderr, "it: not an error body {\"message\": …}: '%s'\n",
                        r->body ? r->body : "(none)");
        json_decref(j);
        return ok;
}

/* ---- raw TCP ---- */

int it_tcp_connect(unsigned port)
{
        struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

        if (fd < 0)
                return -errno;
        sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
                int r = -errno;

                close(fd);
                return r;
        }
        return fd;
}

int it_busy_port(unsigned *ret_port)
{
        struct sockaddr_in sa = {.sin_family = AF_INET};
        socklen_t len = sizeof(sa);
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), r;

        if (fd < 0) {
                r = -errno;
                fprintf(stderr, "it: socket: %s\n", strerror(errno));
                return r;
        }
        sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(fd, 4) < 0 ||
            getsockname(fd, (struct sockaddr *)&sa, &len) < 0) {
                r = -errno;
                fprintf(stderr, "it: cannot listen on a loopback port: %s\n", strerror(errno));
                close(fd);
                return r;
        }
        *ret_port = ntohs(sa.sin_port);
        return fd;
}

int it_write_all(int fd, const void *p, size_t n)
{
        const char *c = p;

        while (n > 0) {
                ssize_t w = send(fd, c, n, MSG_NOSIGNAL);

                if (w < 0 && errno == EINTR)
                        continue;
                if (w < 0)
                        return -errno;
                c += w;
                n -= (size_t)w;
        }
        return 0;
}

char *it_read_all(int fd, int timeout_ms, size_t *ret_len)
{
        struct buf b;
        char chunk[4096];

        buf_init(&b, IT_BODY_CAP);
        for (;;) {
                struct pollfd pfd = {.fd = fd, .events = POLLIN};
                int pr = poll(&pfd, 1, timeout_ms);
                ssize_t n;

                if (pr < 0 && errno == EINTR)
                        continue;
                if (pr <= 0)
                        break;
                n = read(fd, chunk, sizeof(chunk));
                if (n < 0 && errno == EINTR)
                        continue;
                if (n <= 0)
                        break;
                if (buf_append(&b, chunk, (size_t)n) < 0)
                        return NULL;
        }
        return take_or_empty(&b, ret_len);
}

/* ---- test peers ---- */

static int peer_reap(struct it_peer *p, int options)
{
        return reap_pid(p->pid, &p->exited, &p->status, options);
}

char *it_peer_log(const struct it_peer *p)
{
        char *s = p->err[0] ? it_read_file(p->err, NULL) : NULL;

        return s ? s : strdup("");
}

static void print_peer_log(const struct it_peer *p, const char *why)
{
        _cleanup_free_ char *log = it_peer_log(p);

        fprintf(stderr, "it: %s %s; its stderr %s:\n%s\n", p->tool, why, p->err, log);
}

int it_peer_start(struct it_peer *p, const char *dir, const char *tool, const char *const *args)
{
        static unsigned seq;
        const char *tools = getenv("CTXHOOKD_TOOLS_DIR");
        _cleanup_free_ char *path = NULL;
        _cleanup_free_ char **envp = NULL;
        const char *argv[32];
        long long deadline;
        int n = 0, out_fd, err_fd, r;

        memset(p, 0, sizeof(*p));
        if (!tools || !*tools) {
                fprintf(stderr,
                        "it: CTXHOOKD_TOOLS_DIR is not set (run the tests through ctest)\n");
                return -ENOENT;
        }
        if (asprintf(&path, "%s/%s", tools, tool) < 0)
                return -ENOMEM;
        snprintf(p->tool, sizeof(p->tool), "%s", tool);
        seq++;
        snprintf(p->out, sizeof(p->out), "%s/%s-%u.out", dir, tool, seq);
        snprintf(p->err, sizeof(p->err), "%s/%s-%u.err", dir, tool, seq);
        argv[n++] = path;
        for (size_t i = 0; args && args[i] && n < 31; i++)
                argv[n++] = args[i];
        argv[n] = NULL;
        envp = build_env(NULL);
        if (!envp)
                return -ENOMEM;
        out_fd = open(p->out, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        err_fd = open(p->err, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        if (out_fd < 0 || err_fd < 0) {
                r = -errno;
                fprintf(stderr, "it: cannot create %s / %s\n", p->out, p->err);
                if (out_fd >= 0)
                        close(out_fd);
                if (err_fd >= 0)
                        close(err_fd);
                return r;
        }
        r = spawn(dir, (char *const *)argv, envp, out_fd, err_fd, &p->pid);
        close(out_fd);
        close(err_fd);
        if (r < 0) {
                fprintf(stderr, "it: cannot start %s: %s\n", path, strerror(-r));
                return r;
        }

        deadline = it_now_ms() + IT_START_TIMEOUT_MS;
        for (;;) {
                _cleanup_free_ char *out = it_read_file(p->out, NULL);
                const char *nl = out ? strchr(out, '\n') : NULL;

                if (nl) {
                        size_t len = (size_t)(nl - out);

                        if (len >= sizeof(p->line))
                                len = sizeof(p->line) - 1;
                        memcpy(p->line, out, len);
                        p->line[len] = '\0';
                        return 0;
                }
                if (peer_reap(p, WNOHANG)) {
                        print_peer_log(p, "exited before printing its first line");
                        return -ECHILD;
                }
                if (it_now_ms() > deadline) {
                        print_peer_log(p, "printed no first line in time");
                        return -ETIMEDOUT;
                }
                it_sleep_ms(5);
        }
}

int it_peer_stop(struct it_peer *p, int sig, int *ret_code)
{
        long long deadline;

        if (p->pid <= 0)
                return -ESRCH;
        if (!p->exited)
                kill(p->pid, sig);
        deadline = it_now_ms() + IT_STOP_TIMEOUT_MS;
        while (!peer_reap(p, WNOHANG)) {
                if (it_now_ms() > deadline) {
                        print_peer_log(p, "did not exit after the signal; killing it");
                        kill(p->pid, SIGKILL);
                        peer_reap(p, 0);
                        return -ETIMEDOUT;
                }
                it_sleep_ms(5);
        }
        if (ret_code)
                *ret_code = it_exit_code(p->status);
        return 0;
}

void it_peer_cleanup(struct it_peer *p)
{
        if (p->pid > 0 && !p->exited) {
                kill(p->pid, SIGKILL);
                peer_reap(p, 0);
        }
}

/* argv0 itself when it holds a slash, else the first executable of that name in $PATH. */
static char *find_program(const char *argv0)
{
        const char *path = getenv("PATH");
        const char *p;

        if (strchr(argv0, '/'))
                return strdup(argv0);
        if (!path || !*path)
                path = "/usr/local/bin:/usr/bin:/bin";
        for (p = path; *p;) {
                size_t n = strcspn(p, ":");
                char *cand = NULL;

                if (n > 0 && asprintf(&cand, "%.*s/%s", (int)n, p, argv0) >= 0) {
                        if (access(cand, X_OK) == 0)
                                return cand;
                        free(cand);
                }
                p += n + (p[n] ? 1 : 0);
        }
        return NULL;
}

int it_run_prog(const char *cwd, const char *const *argv, int timeout_ms, struct it_result *ret)
{
        _cleanup_free_ char *prog = NULL;
        _cleanup_free_ char **envp = NULL;
        const char *av[64];
        struct it_peer proc = {0};
        int n = 0, out_fd = -1, err_fd = -1, killed = 0, r;
        long long deadline;

        prog = find_program(argv[0]);
        if (!prog) {
                fprintf(stderr, "it: %s not found in $PATH\n", argv[0]);
                return -ENOENT;
        }
        av[n++] = prog;
        for (size_t i = 1; argv[i] && n < 63; i++)
                av[n++] = argv[i];
        av[n] = NULL;
        envp = build_env(NULL);
        if (!envp)
                return -ENOMEM;
        out_fd = memfd_create("it-stdout", MFD_CLOEXEC);
        err_fd = memfd_create("it-stderr", MFD_CLOEXEC);
        if (out_fd < 0 || err_fd < 0) {
                r = -errno;
                goto out;
        }
        r = spawn(cwd ? cwd : ".", (char *const *)av, envp, out_fd, err_fd, &proc.pid);
        if (r < 0)
                goto out;
        memset(ret, 0, sizeof(*ret));
        deadline = it_now_ms() + timeout_ms;
        while (!peer_reap(&proc, WNOHANG)) {
                if (it_now_ms() > deadline) {
                        kill(proc.pid, SIGKILL);
                        peer_reap(&proc, 0);
                        killed = 1;
                        break;
                }
                it_sleep_ms(5);
        }
        ret->code = killed ? -1 : it_exit_code(proc.status);
        ret->out = read_fd_from(out_fd, 0, &ret->out_len);
        ret->err = read_fd_from(err_fd, 0, &ret->err_len);
        if (!ret->out || !ret->err) {
                it_result_free(ret);
                r = -ENOMEM;
        }
out:
        if (out_fd >= 0)
                close(out_fd);
        if (err_fd >= 0)
                close(err_fd);
        return r;
}

int it_kcat_produce_ends(const char *dir, const char *bootstrap, const char *topic,
                         const char *account, const char *prefix, int width, int convs, int from,
                         int to)
{
        char *text = NULL;
        size_t len = 0;
        FILE *f = open_memstream(&text, &len);
        int r;

        if (!f)
                return -errno;
        for (int i = from; i < to; i++)
                fprintf(f,
                        "%s%0*d\t{\"kind\":\"conversation.end\",\"accountId\":\"%s\","
                        "\"conversationId\":\"%s%0*d\",\"closeReason\":\"SYSTEM\","
                        "\"time\":%lld,\"seq\":%d}\n",
                        prefix, width, i % convs, account, prefix, width, i % convs,
                        1764400700000LL + i, i);
        if (fclose(f) != 0) {
                free(text);
                return -ENOMEM;
        }
        r = it_kcat_produce(dir, bootstrap, topic, text);
        free(text);
        return r;
}

int it_kcat_produce(const char *dir, const char *bootstrap, const char *topic, const char *text)
{
        static unsigned seq;
        char file[IT_PATH_MAX + 32];
        const char *argv[] = {"kcat", "-P",  "-b", bootstrap, "-t", topic,
                              "-K",   "\\t", "-l", file,      NULL};
        struct it_result res;
        int r;

        seq++;
        snprintf(file, sizeof(file), "%s/kcat-%u.in", dir, seq);
        r = it_write_file(file, text);
        if (r < 0)
                return r;
        r = it_run_prog(dir, argv, 60000, &res);
        if (r < 0)
                return r;
        if (res.code != 0) {
                fprintf(stderr, "it: kcat -P to %s exited %d\nstdout:\n%s\nstderr:\n%s\n",
                        bootstrap, res.code, res.out, res.err);
                it_result_free(&res);
                return -EIO;
        }
        it_result_free(&res);
        return 0;
}
