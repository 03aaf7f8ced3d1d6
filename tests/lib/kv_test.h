/*
 * kv_test.h: a tiny assertion harness for plain-C ctest executables.
 * A failed check prints file:line and the expression and counts a failure;
 * kv_test_finish() prints "N passed, N failed" and returns the exit code.
 */
#ifndef KV_TEST_H
#define KV_TEST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

#include "kv_result.h"

extern int kv_test_passed;
extern int kv_test_failed;

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (cond) {                                                                                \
            kv_test_passed++;                                                                      \
        } else {                                                                                   \
            kv_test_failed++;                                                                      \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);               \
        }                                                                                          \
    } while (0)

/* Expects a kv_result to succeed; prints the error record otherwise. */
#define CHECK_OK(expr)                                                                             \
    do {                                                                                           \
        if (kv_ok(expr)) {                                                                         \
            kv_test_passed++;                                                                      \
        } else {                                                                                   \
            kv_test_failed++;                                                                      \
            fprintf(stderr, "%s:%d: %s failed: %s: %s (%s) at %s:%d\n", __FILE__, __LINE__, #expr, \
                    kv_code_name(kv_error_code()), kv_error_msg(), kv_error_detail_str(),          \
                    kv_error_file(), kv_error_line());                                             \
        }                                                                                          \
    } while (0)

/* Expects a kv_result to fail with the given code. */
#define CHECK_ERR(expr, code)                                                                      \
    do {                                                                                           \
        kv_error_clear();                                                                          \
        if (kv_failed(expr) && kv_error_code() == (code)) {                                        \
            kv_test_passed++;                                                                      \
        } else {                                                                                   \
            kv_test_failed++;                                                                      \
            fprintf(stderr, "%s:%d: %s: expected %s, got %s: %s\n", __FILE__, __LINE__, #expr,     \
                    kv_code_name(code), kv_code_name(kv_error_code()), kv_error_msg());            \
        }                                                                                          \
    } while (0)

#define RUN(test_fn)                                                                               \
    do {                                                                                           \
        fprintf(stderr, "-- %s\n", #test_fn);                                                      \
        test_fn();                                                                                 \
    } while (0)

int kv_test_finish(void);

/* Makes a fresh private temporary directory (mode 0700); path needs 256 bytes. */
void kv_test_tmpdir(char *path, size_t cap, const char *tag);
/* rm -rf of a test's temporary directory. */
void kv_test_rmtree(const char *path);
/* Runs a shell command, returns its exit status (-1 if it did not exit). */
int kv_test_sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* LD_PRELOAD of a test shim into the children started until
 * kv_test_preload_end (ASan is told the shim precedes its runtime);
 * kv_test_preload_end restores the environment. */
void kv_test_preload_begin(const char *shim);
void kv_test_preload_end(void);

#endif
