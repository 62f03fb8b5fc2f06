/* Support for the integration tests: starts the real ctxhookd binary ($CTXHOOKD_BIN) in a fresh
 * temporary working directory with a config written there, captures its stderr to a file, waits
 * for its "listening on http://HOST:PORT" line, stops it with a signal and reports how it
 * exited; runs one-shot CLI commands capturing stdout, stderr and the exit code; and talks HTTP
 * to the daemon through libcurl (or a raw socket when a test needs to control the bytes on the
 * wire). Functions return 0 or a negative errno code and print what went wrong to stderr, so a
 * failing test shows the daemon's own log. */
#ifndef CTXHOOKD_IT_SUPPORT_DAEMON_H
#define CTXHOOKD_IT_SUPPORT_DAEMON_H

#include <stddef.h>
#include <sys/types.h>
#include <jansson.h>

#define IT_PATH_MAX 512
#define IT_DIR_MAX  64 /* "/tmp/ctxhookd-it-XXXXXX" */

/* How long a daemon may take to say it is listening, or to exit after a signal. Generous so
 * that the sanitizer build on a loaded machine does not flake; multiplied by
 * $CTXHOOKD_TIMEOUT_SCALE for slow runs (under valgrind, see tools/valgrind). */
#define IT_START_TIMEOUT_MS (10000 * it_timeout_scale())
#define IT_STOP_TIMEOUT_MS  (10000 * it_timeout_scale())
#define IT_CLI_TIMEOUT_MS   (20000 * it_timeout_scale())

/* $CTXHOOKD_TIMEOUT_SCALE (a positive integer; 1 when unset or invalid): tests multiply their
 * waits for the daemon by it, and so does support_daemon.c every TestSuite's .timeout. */
int it_timeout_scale(void);

/* A config for the tests: any free port on loopback, the database in the daemon's directory,
 * a small body cap (IT_MAX_BODY) and debug logging (so that "never in the log" is a strong
 * claim). "@DIR@" is replaced with the daemon's directory. */
#define IT_MAX_BODY 65536
extern const char it_default_config[];

struct it_daemon {
        pid_t pid;       /* 0 when not running */
        int no_run_word; /* start as `ctxhookd [-c conf]`, relying on run as default */
        int exited;      /* 1 once reaped; status then holds the wait status */
        int status;
        char dir[IT_DIR_MAX];   /* fresh directory, the daemon's working directory */
        char conf[IT_PATH_MAX]; /* the config file, "" when the daemon runs without -c */
        char log[IT_PATH_MAX];  /* the daemon's stderr (append mode, across restarts) */
        char db[IT_PATH_MAX];   /* dir/ctxhookd.db, where it_default_config puts the store */
        off_t log_offset;       /* size of the log when the last start began */
        unsigned port;          /* from the last "listening on" line */
        char base[64];          /* "http://127.0.0.1:PORT" */
};

/* ---- files ---- */

/* Creates a new directory /tmp/ctxhookd-it-XXXXXX. */
int it_tmpdir(char ret[IT_DIR_MAX]);
/* rm -rf; accepts "" and NULL. Does nothing when $IT_KEEP is set (to look at a failure). */
void it_rmtree(const char *dir);
int it_write_file(const char *path, const char *text);
/* The whole file, NUL-terminated (free() it); NULL when it cannot be read. */
char *it_read_file(const char *path, size_t *ret_len);
/* malloc'ed copy of text with every "@DIR@" replaced by dir. */
char *it_subst_dir(const char *text, const char *dir);

/* ---- the daemon ---- */

/* Every run of $CTXHOOKD_BIN (daemon and one-shot commands) is prefixed with the words of
 * $CTXHOOKD_WRAPPER when it is set (split on spaces, e.g. "valgrind --tool=memcheck -q"); the
 * first word is looked up in $PATH. The test tools and kcat are never wrapped. */

/* Prepares d with a fresh directory. config_text (with @DIR@ substituted) is written to
 * dir/ctxhookd.conf and passed with -c; NULL means no file and no -c. */
int it_daemon_init(struct it_daemon *d, const char *config_text);

/* Starts `ctxhookd run [-c conf] [extra_args…]` in d->dir with the environment of the test
 * minus every CTXHOOKD_* and NOTIFY_SOCKET variable, plus env ("K=V" sets, "K" unsets; NULL-
 * terminated, may be NULL). Waits until the log holds a new "listening on http://" line and
 * fills d->port and d->base. Fails (after printing the log) when the process exits first or
 * nothing comes within IT_START_TIMEOUT_MS. */
int it_daemon_start(struct it_daemon *d, const char *const *env, const char *const *extra_args);

/* Like it_daemon_start, but returns as soon as the process runs (no wait for listening). */
int it_daemon_spawn(struct it_daemon *d, const char *const *env, const char *const *extra_args);

/* Waits up to timeout_ms for the (already spawned) daemon to log "listening on". */
int it_daemon_wait_listening(struct it_daemon *d, int timeout_ms);

/* Waits up to timeout_ms for the daemon to exit by itself. -ETIMEDOUT when still running. */
int it_daemon_wait_exit(struct it_daemon *d, int timeout_ms);

/* Sends sig and waits up to IT_STOP_TIMEOUT_MS for the exit; on time-out kills it with SIGKILL
 * and returns -ETIMEDOUT. *ret_code (may be NULL) gets it_exit_code() of the status. */
int it_daemon_stop(struct it_daemon *d, int sig, int *ret_code);

/* SIGKILL when still running, reaps, removes the directory. For test teardown. */
void it_daemon_cleanup(struct it_daemon *d);

/* The daemon's stderr so far (free() it); "" when there is none yet. Never NULL. */
char *it_daemon_log(const struct it_daemon *d);

/* 1 when every line of text starts with "<digit>" (the syslog priority prefix); otherwise 0
 * and the first offending line is printed. */
int it_log_lines_prefixed(const char *text);

/* Exit code of a wait status, 128+signal when killed by a signal. */
int it_exit_code(int status);

/* Polls GET /readyz until it answers 200 (with Kafka: the partitions are assigned). 0, or
 * -ETIMEDOUT after timeout_ms. */
int it_daemon_wait_ready(const struct it_daemon *d, int timeout_ms);

/* Prints the last max bytes of the daemon's log to stderr, to go with a failure message. */
void it_daemon_print_log_tail(const struct it_daemon *d, size_t max);

/* ---- one-shot commands ---- */

struct it_result {
        int code; /* exit code (it_exit_code); -1 when it had to be killed after the time-out */
        char *out;
        size_t out_len;
        char *err;
        size_t err_len;
};

/* Runs $CTXHOOKD_BIN args… in cwd (NULL: a fresh temporary directory, removed afterwards) with
 * the environment treated as in it_daemon_start, stdin from /dev/null. Returns 0 when it ran
 * (whatever its exit code) or a negative code when it could not be run. */
int it_run(const char *cwd, const char *const *args, const char *const *env, struct it_result *ret);
void it_result_free(struct it_result *r);

/* The value of key in [section] of INI text (such as the config check-config prints; section
 * as written between the brackets, e.g. `hook "x"`), with the blanks around it trimmed, into
 * out. 0 when found; -ENOENT when absent; -EBADMSG (printed) at a section header without "]"
 * before the key is found; -ENOBUFS when the value does not fit. Nothing else is taken off
 * the value (no inline comment, no CR): the daemon prints neither, so they would be a bug. */
int it_ini_value(const char *text, const char *section, const char *key, char *out, size_t outsz);

/* 0 when [section] key of text is exactly want; otherwise prints what is there (or that the
 * key is missing, with the whole text) and returns it_ini_value's error or -EINVAL. */
int it_ini_expect(const char *text, const char *section, const char *key, const char *want);

/* `ctxhookd apikey create --account ACCOUNT -c d->conf`; ret_key gets the last line of stdout.
 * Fails unless the command exits 0 with a non-empty last line. */
int it_apikey_create(const struct it_daemon *d, const char *account, char ret_key[257]);

/* ---- HTTP ---- */

struct it_request {
        const char *method;
        const char *url;            /* full URL */
        const char *api_key;        /* maven-api-key header; NULL = none */
        const char *const *headers; /* extra "Name: value" lines, NULL-terminated, may be NULL */
        const char *body;           /* NULL = no body */
        size_t body_len;            /* 0 with a body = strlen(body) */
        int chunked;                /* send the body with Transfer-Encoding: chunked */
};

struct it_response {
        long status;
        char *body; /* NUL-terminated (the NUL is not counted); never NULL after success */
        size_t body_len;
        char *headers; /* the raw header block */
        char etag[256];
        char allow[256];
        char content_type[256];
};

/* Performs the request. Returns 0 when a response came (whatever its status). */
int it_http(const struct it_request *req, struct it_response *ret);
void it_response_free(struct it_response *r);

/* d->base + path with the method, key and body given; the response goes to ret (may be NULL).
 * Returns the status code, or -1 when no response came. */
long it_call(const struct it_daemon *d, const char *method, const char *path, const char *key,
             const char *body, struct it_response *ret);

/* Same with extra headers (NULL-terminated "Name: value" lines). */
long it_call_h(const struct it_daemon *d, const char *method, const char *path, const char *key,
               const char *const *headers, const char *body, struct it_response *ret);

/* The body parsed with jansson (any value, "\u0000" allowed); NULL when it is not JSON. */
json_t *it_response_json(const struct it_response *r);

/* 1 when the body is a JSON object whose only member is a non-empty string "message". */
int it_is_error_body(const struct it_response *r);

/* ---- raw TCP, for requests whose timing the test controls ---- */

/* Connected socket to 127.0.0.1:port, or a negative errno. */
int it_tcp_connect(unsigned port);
/* A socket listening on a free loopback port, which stays busy while it is open; the port goes
 * to *ret_port. Returns the socket or a negative errno (printed). */
int it_busy_port(unsigned *ret_port);
int it_write_all(int fd, const void *p, size_t n);
/* Reads until EOF or timeout_ms without data; malloc'ed, NUL-terminated. NULL on error. */
char *it_read_all(int fd, int timeout_ms, size_t *ret_len);

/* Milliseconds of CLOCK_MONOTONIC. */
long long it_now_ms(void);
void it_sleep_ms(int ms);

/* ---- test peers: the programs of tests/tools, and kcat ---- */

/* A program of tests/tools ($CTXHOOKD_TOOLS_DIR/<tool>) running beside the daemon. */
struct it_peer {
        pid_t pid;  /* 0 when not running */
        int exited; /* 1 once reaped; status then holds the wait status */
        int status;
        char tool[64];
        char out[IT_PATH_MAX]; /* its stdout, a file */
        char err[IT_PATH_MAX]; /* its stderr, a file */
        char line[256];        /* the first line of its stdout, without the newline */
};

/* Starts $CTXHOOKD_TOOLS_DIR/tool args… (args NULL-terminated, may be NULL) in dir, stdout
 * and stderr into new files dir/<tool>-<N>.out/.err, and waits up to IT_START_TIMEOUT_MS for
 * the first line of stdout (the tools print their address or port there), copied to
 * p->line. Fails (printing the peer's stderr) when it exits first or prints nothing in time. */
int it_peer_start(struct it_peer *p, const char *dir, const char *tool, const char *const *args);

/* Sends sig and waits up to IT_STOP_TIMEOUT_MS; then SIGKILL and -ETIMEDOUT. *ret_code (may
 * be NULL) gets it_exit_code() of the status. -ESRCH when it is not running. */
int it_peer_stop(struct it_peer *p, int sig, int *ret_code);

/* SIGKILL when still running, and reap. For teardown; accepts a peer never started. */
void it_peer_cleanup(struct it_peer *p);

/* The peer's stderr so far (free() it); never NULL. */
char *it_peer_log(const struct it_peer *p);

/* Runs argv[0] (a path, or a name looked up in $PATH) with argv in cwd (NULL: the current
 * directory), stdin from /dev/null, the environment treated as in it_daemon_start, capturing
 * stdout and stderr; kills it after timeout_ms. Returns 0 when it ran (whatever its exit
 * code), a negative code when it could not be run. */
int it_run_prog(const char *cwd, const char *const *argv, int timeout_ms, struct it_result *ret);

/* Produces the lines of text to Kafka with kcat: each line is "KEY<TAB>VALUE" (no tab: the
 * whole line is the value, with a null key). The lines go through a file in dir. Returns 0
 * when kcat exits 0 (every message acknowledged by the broker), else prints kcat's output and
 * returns -EIO. */
int it_kcat_produce(const char *dir, const char *bootstrap, const char *topic, const char *text);

/* Produces numbered conversation.end events (closeReason SYSTEM) of account, seq from..to-1,
 * each with "seq" in it and of the conversation prefix + (seq % convs), zero-padded to width
 * digits, keyed by that conversation so that each stays in one partition. As it_kcat_produce. */
int it_kcat_produce_ends(const char *dir, const char *bootstrap, const char *topic,
                         const char *account, const char *prefix, int width, int convs, int from,
                         int to);

#endif
