/* kv_test.c: counters and helpers behind kv_test.h. */
#include "kv_test.h"

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

int kv_test_passed;
int kv_test_failed;

int kv_test_finish(void)
{
    printf("%d passed, %d failed\n", kv_test_passed, kv_test_failed);
    return kv_test_failed == 0 ? 0 : 1;
}

void kv_test_tmpdir(char *path, size_t cap, const char *tag)
{
    const char *base = getenv("TMPDIR");
    snprintf(path, cap, "%s/hsmvault-%s-XXXXXX", base && *base ? base : "/tmp", tag);
    if (mkdtemp(path) == NULL) {
        perror("mkdtemp");
        exit(2);
    }
}

int kv_test_sh(const char *fmt, ...)
{
    char cmd[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof(cmd), fmt, ap);
    va_end(ap);
    int st = system(cmd);
    if (st == -1 || !WIFEXITED(st)) return -1;
    return WEXITSTATUS(st);
}

void kv_test_rmtree(const char *path)
{
    if (path == NULL || strncmp(path, "/", 1) != 0 || strstr(path, "hsmvault-") == NULL) return;
    (void)kv_test_sh("rm -rf '%s'", path);
}

static char *preload_asan_saved;
static bool preload_asan_had;

void kv_test_preload_begin(const char *shim)
{
    const char *asan = getenv("ASAN_OPTIONS");
    preload_asan_had = asan != NULL;
    free(preload_asan_saved);
    preload_asan_saved = asan != NULL ? strdup(asan) : NULL;
    char opts[512];
    snprintf(opts, sizeof(opts), "%s%sverify_asan_link_order=0", asan ? asan : "",
             asan && *asan ? ":" : "");
    setenv("ASAN_OPTIONS", opts, 1);
    setenv("LD_PRELOAD", shim, 1);
}

void kv_test_preload_end(void)
{
    unsetenv("LD_PRELOAD");
    if (preload_asan_had && preload_asan_saved != NULL)
        setenv("ASAN_OPTIONS", preload_asan_saved, 1);
    else
        unsetenv("ASAN_OPTIONS");
    free(preload_asan_saved);
    preload_asan_saved = NULL;
}
