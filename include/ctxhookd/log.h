/* Logging to stderr, one line per event, prefixed with the syslog priority in the form
 * journald understands ("<3>…"). Only the program's top layers log; modules return errors. */
#ifndef CTXHOOKD_LOG_H
#define CTXHOOKD_LOG_H

enum log_level {
        LOG_LEVEL_ERR = 3,
        LOG_LEVEL_WARNING = 4,
        LOG_LEVEL_NOTICE = 5,
        LOG_LEVEL_INFO = 6,
        LOG_LEVEL_DEBUG = 7,
};

/* Messages above this level are dropped. Default LOG_LEVEL_INFO. Thread-safe. */
void log_set_level(int level);
int log_get_level(void);

/* "error", "warning", "notice", "info", "debug" → the level, or -EINVAL. */
int log_level_from_string(const char *s);
const char *log_level_to_string(int level);

/* Writes "<level>text\n" to stderr with a single write(2), so lines of concurrent threads do
 * not interleave. Newlines inside the text are replaced by spaces: one event, one line. */
void log_msg(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define log_error(...)   log_msg(LOG_LEVEL_ERR, __VA_ARGS__)
#define log_warning(...) log_msg(LOG_LEVEL_WARNING, __VA_ARGS__)
#define log_notice(...)  log_msg(LOG_LEVEL_NOTICE, __VA_ARGS__)
#define log_info(...)    log_msg(LOG_LEVEL_INFO, __VA_ARGS__)
#define log_debug(...)   log_msg(LOG_LEVEL_DEBUG, __VA_ARGS__)

#endif
