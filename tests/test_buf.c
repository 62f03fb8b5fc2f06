/* Unit tests of the capped buffer: the cap is hard and failures leave nothing behind. */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdint.h>
#include <string.h>

#include "ctxhookd/buf.h"

Test(buf, append_and_terminate)
{
        struct buf b;

        buf_init(&b, 64);
        cr_assert_eq(buf_append(&b, "abc", 3), 0);
        cr_assert_eq(buf_append_str(&b, "def"), 0);
        cr_assert_eq(b.len, 6);
        cr_assert_str_eq(b.data, "abcdef");
        buf_free(&b);
        cr_assert_null(b.data);
        cr_assert_eq(b.max, 64);
}

Test(buf, exactly_at_cap_is_allowed_one_more_is_not)
{
        struct buf b;
        char block[16];

        memset(block, 'x', sizeof(block));
        buf_init(&b, 32);
        cr_assert_eq(buf_append(&b, block, 16), 0);
        cr_assert_eq(buf_append(&b, block, 16), 0);
        cr_assert_eq(b.len, 32);
        cr_assert_eq(buf_append(&b, "y", 1), -E2BIG);
        /* Over the cap frees everything: no half-built result survives. */
        cr_assert_null(b.data);
        cr_assert_eq(b.len, 0);
}

Test(buf, huge_length_does_not_overflow)
{
        struct buf b;

        buf_init(&b, 100);
        cr_assert_eq(buf_append(&b, "a", 1), 0);
        cr_assert_eq(buf_append(&b, "b", SIZE_MAX), -E2BIG);
        cr_assert_null(b.data);
}

Test(buf, printf_short_and_long)
{
        struct buf b;
        char big[600];

        memset(big, 'z', sizeof(big) - 1);
        big[sizeof(big) - 1] = '\0';
        buf_init(&b, 4096);
        cr_assert_eq(buf_printf(&b, "n=%d ", 42), 0);
        cr_assert_eq(buf_printf(&b, "%s", big), 0);
        cr_assert_eq(b.len, 5 + 599);
        cr_assert_eq(strncmp(b.data, "n=42 zzz", 8), 0);
        cr_assert_eq(b.data[b.len], '\0');
        cr_assert_eq(buf_printf(&b, "%s%s%s%s%s%s%s", big, big, big, big, big, big, big), -E2BIG);
        cr_assert_null(b.data);
}

Test(buf, take_hands_over_and_empties)
{
        struct buf b;
        size_t len = 0;
        char *p;

        buf_init(&b, 16);
        cr_assert_eq(buf_append_str(&b, "hello"), 0);
        p = buf_take(&b, &len);
        cr_assert_str_eq(p, "hello");
        cr_assert_eq(len, 5);
        cr_assert_null(b.data);
        cr_assert_eq(b.len, 0);
        free(p);
        cr_assert_null(buf_take(&b, &len));
        cr_assert_eq(len, 0);
}

Test(buf, reset_keeps_memory)
{
        struct buf b;
        char *before;

        buf_init(&b, 16);
        cr_assert_eq(buf_append_str(&b, "abc"), 0);
        before = b.data;
        buf_reset(&b);
        cr_assert_eq(b.len, 0);
        cr_assert_eq(b.data, before);
        cr_assert_str_eq(b.data, "");
        buf_free(&b);
}
