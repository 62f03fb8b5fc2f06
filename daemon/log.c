/* stderr logging with journald priority prefixes; one write(2) per line. */
#include <errno.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "ctxhookd/log.h"

static atomic_int log_level = LOG_LEVEL_INFO;

static const char *const level_names[] = {
    [LOG_LEVEL_ERR] = "error", [LOG_LEVEL_WARNING] = "warning", [LOG_LEVEL_NOTICE] = "notice",
    [LOG_LEVEL_INFO] = "info", [LOG_LEVEL_DEBUG] = "debug",
};

void log_set_level(int level)
{
        atomic_store(&log_level, level);
}

int log_get_level(void)
{
        return atomic_load(&log_level);
}

int log_level_from_string(const char *s)
{
        for (int i = LOG_LEVEL_ERR; i <= LOG_LEVEL_DEBUG; i++)
                if (strcmp(s, level_names[i]) == 0)
                        return i;
        return -EINVAL;
}

const char *log_level_to_string(int level)
{
        if (level < LOG_LEVEL_ERR || level > LOG_LEVEL_DEBUG)
                return "unknown";
        return level_names[level];
}

void log_msg(int level, const char *fmt, ...)
{
        char line[2048];
        va_list ap;
        int n, saved = errno;
        size_t len;

        if (level > atomic_load(&log_level))
                return;
        n = snprintf(line, sizeof(line), "<%d>", level);
        va_start(ap, fmt);
        vsnprintf(line + n, sizeof(line) - (size_t)n - 1, fmt, ap);
        va_end(ap);
        len = strlen(line);
        for (size_t i = (size_t)n; i < len; i++)
                if (line[i] == '\n' || line[i] == '\r')
                        line[i] = ' ';
        line[len++] = '\n';
        while (len > 0) {
                ssize_t w = write(STDERR_FILENO, line, len);
                if (w < 0 && errno == EINTR)
                        continue;
                if (w <= 0)
                        break;
                memmove(line, line + w, len - (size_t)w);
                len -= (size_t)w;
        }
        errno = saved;
}
