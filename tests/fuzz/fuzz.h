/* What every harness under tests/fuzz defines: libFuzzer's entry points, declared here so the
 * harnesses build with -Wmissing-prototypes, and a way to stop on a broken property that
 * prints the input's story first. Linked either with libFuzzer (-fsanitize=fuzzer) or with
 * replay_main.c, which runs the harness over saved inputs as a regular test. */
#ifndef CTXHOOKD_FUZZ_H
#define CTXHOOKD_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
/* Optional: called once before the first input (libFuzzer and replay_main alike). */
int LLVMFuzzerInitialize(int *argc, char ***argv);

/* A property the input broke: say which, then abort() so libFuzzer keeps the input as a
 * crash and the replay test fails. */
#define FUZZ_FAIL(...)                                                                             \
        do {                                                                                       \
                fprintf(stderr, "fuzz property broken (%s:%d): ", __FILE__, __LINE__);             \
                fprintf(stderr, __VA_ARGS__);                                                      \
                fputc('\n', stderr);                                                               \
                abort();                                                                           \
        } while (0)

#define FUZZ_CHECK(cond, ...)                                                                      \
        do {                                                                                       \
                if (!(cond))                                                                       \
                        FUZZ_FAIL(__VA_ARGS__);                                                    \
        } while (0)

#endif
