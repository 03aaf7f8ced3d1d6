/*
 * powercut_shim.c: an LD_PRELOAD library for power-loss tests (never part of
 * the product).  Loaded into a server with POWERCUT_ROOT (the tree to watch)
 * and POWERCUT_STORE (an empty directory outside it), it records what a
 * power cut could not take away from that tree:
 *
 *   - the tree as it was when the process started (taken as durable);
 *   - a regular file's bytes as of the start of its last successful
 *     fsync/fdatasync (writes that completed before the call are the ones
 *     the call makes durable);
 *   - a directory's entries as of the start of its last successful fsync.
 *
 * The record, in POWERCUT_STORE:
 *   root     the ino of POWERCUT_ROOT
 *   f<ino>   a file's durable bytes
 *   d<ino>   a directory's durable entries: lines "f <ino> <name>" or
 *            "d <ino> <name>"
 * each written under a temporary name and renamed, so a kill -9 of the
 * server never leaves half a record.  A file or directory created by the
 * process starts with no durable bytes or entries (its ino may be one a
 * deleted file used before).  powercut.c builds from the record and the
 * files as the killed process left them the trees a power cut at that
 * moment could have left.
 *
 * Refuses (aborts the process with a message) what the model cannot
 * describe: an O_SYNC/O_DSYNC file under the root.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

static char pc_root[PATH_MAX], pc_store[PATH_MAX];
static size_t pc_root_len;
static bool pc_on;
static pthread_mutex_t pc_mu = PTHREAD_MUTEX_INITIALIZER;

static int (*real_fsync)(int);
static int (*real_fdatasync)(int);
static int (*real_openat)(int, const char *, int, ...);
static int (*real_mkdirat)(int, const char *, mode_t);

static void pc_die(const char *what)
{
    fprintf(stderr, "powercut shim: %s: %s\n", what, strerror(errno));
    abort();
}

static void *pc_sym(const char *name)
{
    void *p = dlsym(RTLD_NEXT, name);
    if (p == NULL) {
        fprintf(stderr, "powercut shim: no %s\n", name);
        abort();
    }
    return p;
}

static void pc_resolve(void)
{
    if (real_openat != NULL) return;
    real_fsync = (int (*)(int))pc_sym("fsync");
    real_fdatasync = (int (*)(int))pc_sym("fdatasync");
    real_mkdirat = (int (*)(int, const char *, mode_t))pc_sym("mkdirat");
    real_openat = (int (*)(int, const char *, int, ...))pc_sym("openat");
}

/* Whether path (absolute, resolved) is the root or inside it. */
static bool pc_under(const char *path)
{
    return strncmp(path, pc_root, pc_root_len) == 0 &&
           (path[pc_root_len] == '\0' || path[pc_root_len] == '/');
}

static bool pc_fd_path(int fd, char *out, size_t cap)
{
    char link[64];
    snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, out, cap - 1);
    if (n <= 0) return false;
    out[n] = '\0';
    return true;
}

/* Writes store/<name> from n bytes, atomically. */
static void pc_store_put(const char *name, const void *buf, size_t n)
{
    char tmp[PATH_MAX + 64], dst[PATH_MAX + 64];
    snprintf(tmp, sizeof(tmp), "%s/.tmp.%ld", pc_store, (long)syscall(SYS_gettid));
    snprintf(dst, sizeof(dst), "%s/%s", pc_store, name);
    int fd = real_openat(AT_FDCWD, tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) pc_die("creating a record");
    for (size_t done = 0; done < n;) {
        ssize_t w = write(fd, (const char *)buf + done, n - done);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) pc_die("writing a record");
        done += (size_t)w;
    }
    close(fd);
    if (rename(tmp, dst) != 0) pc_die("renaming a record");
}

static void pc_store_drop(char kind, unsigned long long ino)
{
    char path[PATH_MAX + 64];
    snprintf(path, sizeof(path), "%s/%c%llu", pc_store, kind, ino);
    (void)unlink(path);
}

/* Reads all of a file through a fresh read-only descriptor (fd may be
 * write-only); *out is malloc'd. */
static size_t pc_read_all(const char *path, char **out)
{
    int fd = real_openat(AT_FDCWD, path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) pc_die("reopening a file");
    size_t cap = 65536, n = 0;
    char *buf = malloc(cap);
    for (;;) {
        if (buf == NULL) pc_die("out of memory");
        if (n == cap) buf = realloc(buf, cap *= 2);
        if (buf == NULL) pc_die("out of memory");
        ssize_t r = read(fd, buf + n, cap - n);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) pc_die("reading a file");
        if (r == 0) break;
        n += (size_t)r;
    }
    close(fd);
    *out = buf;
    return n;
}

static void pc_snap_file(const char *path, unsigned long long ino)
{
    char *buf = NULL, name[32];
    size_t n = pc_read_all(path, &buf);
    snprintf(name, sizeof(name), "f%llu", ino);
    pc_store_put(name, buf, n);
    free(buf);
}

/* A directory's entries as record text (*out malloc'd); with recurse, also
 * records everything below it (the start-up snapshot). */
static size_t pc_list_dir(const char *path, bool recurse, char **out)
{
    DIR *d = opendir(path);
    if (d == NULL) pc_die("listing a directory");
    size_t cap = 4096, n = 0;
    char *list = malloc(cap);
    struct dirent *e;
    while (list != NULL && (e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
        struct stat st;
        if (fstatat(dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0) continue;
        if (!S_ISREG(st.st_mode) && !S_ISDIR(st.st_mode)) continue;
        size_t need = strlen(e->d_name) + 32;
        if (n + need > cap) list = realloc(list, cap = 2 * cap + need);
        if (list == NULL) break;
        n += (size_t)snprintf(list + n, cap - n, "%c %llu %s\n", S_ISDIR(st.st_mode) ? 'd' : 'f',
                              (unsigned long long)st.st_ino, e->d_name);
        if (recurse) {
            char sub[PATH_MAX];
            if (snprintf(sub, sizeof(sub), "%s/%s", path, e->d_name) >= (int)sizeof(sub)) continue;
            if (S_ISDIR(st.st_mode)) {
                char *sub_list = NULL;
                size_t sub_n = pc_list_dir(sub, true, &sub_list);
                char name[32];
                snprintf(name, sizeof(name), "d%llu", (unsigned long long)st.st_ino);
                pc_store_put(name, sub_list, sub_n);
                free(sub_list);
            } else {
                pc_snap_file(sub, (unsigned long long)st.st_ino);
            }
        }
    }
    closedir(d);
    if (list == NULL) pc_die("out of memory");
    *out = list;
    return n;
}

__attribute__((constructor)) static void pc_init(void)
{
    pc_resolve();
    const char *root = getenv("POWERCUT_ROOT"), *store = getenv("POWERCUT_STORE");
    if (root == NULL || store == NULL) return;
    if (realpath(root, pc_root) == NULL || realpath(store, pc_store) == NULL)
        pc_die("POWERCUT_ROOT and POWERCUT_STORE must exist");
    pc_root_len = strlen(pc_root);
    struct stat st;
    if (stat(pc_root, &st) != 0 || !S_ISDIR(st.st_mode)) pc_die("POWERCUT_ROOT");
    char ino[32];
    int n = snprintf(ino, sizeof(ino), "%llu\n", (unsigned long long)st.st_ino);
    pc_store_put("root", ino, (size_t)n);
    char *list = NULL, name[32];
    size_t list_n = pc_list_dir(pc_root, true, &list);
    snprintf(name, sizeof(name), "d%llu", (unsigned long long)st.st_ino);
    pc_store_put(name, list, list_n);
    free(list);
    pc_on = true;
}

/* Before a sync of fd: what it will make durable, if fd is under the root.
 * Called with pc_mu held; the record is committed only if the sync
 * succeeds, so the snapshot goes to a pending name first. */
static int pc_sync(int fd, int (*real)(int))
{
    char path[PATH_MAX];
    struct stat st;
    if (!pc_on || !pc_fd_path(fd, path, sizeof(path)) || !pc_under(path) || fstat(fd, &st) != 0)
        return real(fd);
    pthread_mutex_lock(&pc_mu);
    /* Snapshot first (what the call is bound to make durable), then sync. */
    char *buf = NULL, name[32];
    bool dir = S_ISDIR(st.st_mode);
    size_t n = dir ? pc_list_dir(path, false, &buf) : pc_read_all(path, &buf);
    int rc = real(fd);
    int e = errno;
    snprintf(name, sizeof(name), "%c%llu", dir ? 'd' : 'f', (unsigned long long)st.st_ino);
    if (rc == 0) pc_store_put(name, buf, n);
    free(buf);
    pthread_mutex_unlock(&pc_mu);
    errno = e;
    return rc;
}

int fsync(int fd)
{
    pc_resolve();
    return pc_sync(fd, real_fsync);
}

int fdatasync(int fd)
{
    pc_resolve();
    return pc_sync(fd, real_fdatasync);
}

/* A file or directory the process created under the root: nothing durable
 * yet (its ino may be a deleted file's). */
static void pc_created(int fd_or_dirfd, const char *path, bool is_dir)
{
    struct stat st;
    char abs[PATH_MAX];
    if (is_dir) {
        if (fstatat(fd_or_dirfd, path, &st, AT_SYMLINK_NOFOLLOW) != 0) return;
        int dfd = real_openat(fd_or_dirfd, path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dfd < 0) return;
        bool under = pc_fd_path(dfd, abs, sizeof(abs)) && pc_under(abs);
        close(dfd);
        if (!under) return;
    } else {
        if (fstat(fd_or_dirfd, &st) != 0 || !pc_fd_path(fd_or_dirfd, abs, sizeof(abs)) ||
            !pc_under(abs))
            return;
    }
    pthread_mutex_lock(&pc_mu);
    pc_store_drop('f', (unsigned long long)st.st_ino);
    pc_store_drop('d', (unsigned long long)st.st_ino);
    pthread_mutex_unlock(&pc_mu);
}

static int pc_open(int dirfd, const char *path, int flags, mode_t mode)
{
    pc_resolve();
    struct stat before;
    bool existed = !(flags & O_CREAT) || fstatat(dirfd, path, &before, 0) == 0;
    int fd = real_openat(dirfd, path, flags, mode);
    if (fd < 0 || !pc_on) return fd;
    int e = errno;
    if (flags & (O_SYNC | O_DSYNC)) {
        char abs[PATH_MAX];
        if (pc_fd_path(fd, abs, sizeof(abs)) && pc_under(abs)) {
            fprintf(stderr, "powercut shim: %s opened O_SYNC/O_DSYNC: not modelled\n", abs);
            abort();
        }
    }
    if (!existed) pc_created(fd, NULL, false);
    errno = e;
    return fd;
}

static mode_t pc_mode(int flags, va_list ap)
{
    return (flags & O_CREAT) || (flags & O_TMPFILE) == O_TMPFILE ? (mode_t)va_arg(ap, int) : 0;
}

int open(const char *path, int flags, ...)
{
    va_list ap;
    va_start(ap, flags);
    mode_t mode = pc_mode(flags, ap);
    va_end(ap);
    return pc_open(AT_FDCWD, path, flags, mode);
}

int openat(int dirfd, const char *path, int flags, ...)
{
    va_list ap;
    va_start(ap, flags);
    mode_t mode = pc_mode(flags, ap);
    va_end(ap);
    return pc_open(dirfd, path, flags, mode);
}

/* glibc's _FORTIFY_SOURCE entry points (declared by fcntl2.h only then). */
int __open_2(const char *path, int flags);
int __open64_2(const char *path, int flags);

int __open_2(const char *path, int flags)
{
    return pc_open(AT_FDCWD, path, flags, 0);
}

/* The 64-bit names are the same calls on LP64. */
int open64(const char *path, int flags, ...) __attribute__((alias("open")));
int openat64(int dirfd, const char *path, int flags, ...) __attribute__((alias("openat")));
int __open64_2(const char *path, int flags) __attribute__((alias("__open_2")));

int creat(const char *path, mode_t mode)
{
    return pc_open(AT_FDCWD, path, O_WRONLY | O_CREAT | O_TRUNC, mode);
}

int mkdirat(int dirfd, const char *path, mode_t mode)
{
    pc_resolve();
    int rc = real_mkdirat(dirfd, path, mode);
    if (rc == 0 && pc_on) {
        int e = errno;
        pc_created(dirfd, path, true);
        errno = e;
    }
    return rc;
}

int mkdir(const char *path, mode_t mode)
{
    return mkdirat(AT_FDCWD, path, mode);
}
