/* Unit tests of logging: the journald priority prefix, one line per event, level filtering. */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ctxhookd/log.h"

/* Runs fn with stderr redirected to a temporary file and returns what was written. */
static char *capture(void (*fn)(void))
{
        char path[] = "/tmp/ctxhookd-test-log-XXXXXX";
        int fd = mkstemp(path), saved = dup(STDERR_FILENO);
        static char text[8192];
        ssize_t n;

        cr_assert_geq(fd, 0);
        cr_assert_geq(saved, 0);
        dup2(fd, STDERR_FILENO);
        fn();
        dup2(saved, STDERR_FILENO);
        close(saved);
        lseek(fd, 0, SEEK_SET);
        n = read(fd, text, sizeof(text) - 1);
        cr_assert_geq(n, 0);
        text[n] = '\0';
        close(fd);
        unlink(path);
        return text;
}

static void emit_levels(void)
{
        log_set_level(LOG_LEVEL_NOTICE);
        log_error("e %d", 1);
        log_warning("w");
        log_notice("n");
        log_info("i: dropped");
        log_debug("d: dropped");
}

Test(log, prefix_and_level_filter)
{
        cr_assert_str_eq(capture(emit_levels), "<3>e 1\n<4>w\n<5>n\n");
}

static void emit_multiline(void)
{
        log_set_level(LOG_LEVEL_DEBUG);
        log_info("first\nsecond\r\nthird");
}

Test(log, one_event_is_one_line)
{
        cr_assert_str_eq(capture(emit_multiline), "<6>first second  third\n");
}

static void emit_long(void)
{
        static char big[5000];

        memset(big, 'x', sizeof(big) - 1);
        log_error("%s", big);
}

Test(log, long_messages_are_cut_but_stay_one_line)
{
        const char *t = capture(emit_long);

        cr_assert_eq(strncmp(t, "<3>xxx", 6), 0);
        cr_assert_eq(t[strlen(t) - 1], '\n');
        cr_assert_eq(strchr(t, '\n'), t + strlen(t) - 1, "more than one line");
        cr_assert_lt(strlen(t), 2100);
}

Test(log, level_names_round_trip)
{
        for (int l = LOG_LEVEL_ERR; l <= LOG_LEVEL_DEBUG; l++)
                cr_assert_eq(log_level_from_string(log_level_to_string(l)), l);
        cr_assert_eq(log_level_from_string("verbose"), -EINVAL);
        cr_assert_str_eq(log_level_to_string(42), "unknown");
}

static void emit_errno_kept(void)
{
        errno = EAGAIN;
        log_error("x");
        cr_assert_eq(errno, EAGAIN, "logging must not clobber errno");
}

Test(log, errno_is_preserved)
{
        capture(emit_errno_kept);
}
