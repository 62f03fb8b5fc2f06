/* What several unit tests need around their fixtures: removing a test's temporary directory. */
#ifndef CTXHOOKD_TEST_UTIL_H
#define CTXHOOKD_TEST_UTIL_H

#include <ftw.h>
#include <stdio.h>
#include <sys/stat.h>

static inline int test_rm_entry(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
        (void)sb;
        (void)flag;
        (void)ftw;
        return remove(p);
}

/* rm -rf dir (not following symlinks). */
static inline void test_rmtree(const char *dir)
{
        nftw(dir, test_rm_entry, 8, FTW_DEPTH | FTW_PHYS);
}

#endif
