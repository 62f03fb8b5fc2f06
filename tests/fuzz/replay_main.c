/* The main() a harness is linked with outside libFuzzer: runs LLVMFuzzerTestOneInput over every
 * file named on the command line and every file of every directory named there (in name
 * order, dot files skipped), so ctest replays each harness's corpus, every crash ever found
 * included, in the regular and the sanitizer builds. Each input's name is printed before it
 * runs, so a failing replay names the input at fault. Exits 0 when every input ran, 1 when
 * there was none (a missing corpus must not pass as a clean run), 2 when one cannot be read. */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "fuzz.h"

/* Harnesses without setup do not define it. */
extern int LLVMFuzzerInitialize(int *argc, char ***argv) __attribute__((weak));

static int read_all(const char *path, uint8_t **ret, size_t *ret_len)
{
        FILE *f = fopen(path, "rb");
        uint8_t *data = NULL;
        size_t len = 0, alloc = 0;

        if (!f)
                return -errno;
        for (;;) {
                size_t n;

                if (alloc - len < 4096) {
                        uint8_t *grown = realloc(data, alloc + 65536);

                        if (!grown) {
                                free(data);
                                fclose(f);
                                return -ENOMEM;
                        }
                        data = grown;
                        alloc += 65536;
                }
                n = fread(data + len, 1, alloc - len, f);
                len += n;
                if (n == 0)
                        break;
        }
        if (ferror(f)) {
                free(data);
                fclose(f);
                return -EIO;
        }
        fclose(f);
        *ret = data;
        *ret_len = len;
        return 0;
}

static int run_file(const char *path, unsigned long *count)
{
        uint8_t *data = NULL;
        size_t len = 0;
        int r;

        r = read_all(path, &data, &len);
        if (r < 0) {
                fprintf(stderr, "cannot read %s: %s\n", path, strerror(-r));
                return r;
        }
        printf("run %s (%zu bytes)\n", path, len);
        fflush(stdout);
        /* A copy of exactly len bytes, as libFuzzer gives, so reads past the end are caught. */
        {
                uint8_t *copy = malloc(len ? len : 1);

                if (!copy) {
                        free(data);
                        return -ENOMEM;
                }
                memcpy(copy, data, len);
                free(data);
                LLVMFuzzerTestOneInput(copy, len);
                free(copy);
        }
        (*count)++;
        return 0;
}

static int skip_dot(const struct dirent *d)
{
        return d->d_name[0] != '.';
}

static int run_path(const char *path, unsigned long *count)
{
        struct dirent **list;
        struct stat st;
        int n, r = 0;

        if (stat(path, &st) < 0) {
                fprintf(stderr, "cannot read %s: %s\n", path, strerror(errno));
                return -errno;
        }
        if (!S_ISDIR(st.st_mode))
                return run_file(path, count);
        n = scandir(path, &list, skip_dot, alphasort);
        if (n < 0) {
                fprintf(stderr, "cannot list %s: %s\n", path, strerror(errno));
                return -errno;
        }
        for (int i = 0; i < n; i++) {
                char *child = NULL;

                if (r == 0 && asprintf(&child, "%s/%s", path, list[i]->d_name) < 0)
                        r = -ENOMEM;
                if (r == 0 && stat(child, &st) == 0 && S_ISREG(st.st_mode))
                        r = run_file(child, count);
                free(child);
                free(list[i]);
        }
        free(list);
        return r;
}

int main(int argc, char **argv)
{
        unsigned long count = 0;

        if (argc < 2) {
                fprintf(stderr, "usage: %s FILE|DIR...\n", argv[0]);
                return 2;
        }
        if (LLVMFuzzerInitialize)
                LLVMFuzzerInitialize(&argc, &argv);
        for (int i = 1; i < argc; i++)
                if (run_path(argv[i], &count) < 0)
                        return 2;
        printf("%s: ran %lu inputs\n", argv[0], count);
        if (count == 0) {
                fprintf(stderr, "%s: no inputs found\n", argv[0]);
                return 1;
        }
        return 0;
}
