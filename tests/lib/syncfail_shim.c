/*
 * syncfail_shim.c: an LD_PRELOAD library for fail-closed tests (never part
 * of the product).  Loaded into vaultd with SYNCFAIL_NAME (a file name, e.g.
 * "audit.journal") and SYNCFAIL_TRIGGER (a path), it makes fsync and
 * fdatasync of any file of that name fail with EIO for as long as the
 * trigger path exists: the disk error a key vault must not answer through.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static bool syncfail_now(int fd)
{
    const char *name = getenv("SYNCFAIL_NAME");
    const char *trigger = getenv("SYNCFAIL_TRIGGER");
    if (name == NULL || trigger == NULL || access(trigger, F_OK) != 0) return false;
    char link[64], path[PATH_MAX];
    snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, sizeof(path) - 1);
    if (n <= 0) return false;
    path[n] = '\0';
    const char *base = strrchr(path, '/');
    return strcmp(base != NULL ? base + 1 : path, name) == 0;
}

typedef int (*sync_fn)(int);

static int syncfail_call(const char *sym, int fd)
{
    if (syncfail_now(fd)) {
        errno = EIO;
        return -1;
    }
    sync_fn real = (sync_fn)dlsym(RTLD_NEXT, sym);
    if (real == NULL) {
        errno = ENOSYS;
        return -1;
    }
    return real(fd);
}

int fsync(int fd)
{
    return syncfail_call("fsync", fd);
}

int fdatasync(int fd)
{
    return syncfail_call("fdatasync", fd);
}
