/*
 * file.c: bounded whole-file reads, exclusive and atomic writes.
 */
#define _GNU_SOURCE
#include "kv_file.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static kv_result kv_file_errno(const char *what, const char *path, int e)
{
    kv_code code = e == ENOENT                   ? KV_ERR_NOT_FOUND
                   : e == EEXIST                 ? KV_ERR_ALREADY_EXISTS
                   : (e == EACCES || e == EPERM) ? KV_ERR_PERMISSION_DENIED
                                                 : KV_ERR_UNAVAILABLE;
    return kv_error_set(code, __FILE__, __LINE__, "cannot %s %s: %s", what, path, strerror(e));
}

kv_result kv_file_read(const char *path, size_t max, uint8_t **data, size_t *len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return kv_file_errno("open", path, errno);
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return kv_file_errno("stat", path, e);
    }
    if (!S_ISREG(st.st_mode) || (uint64_t)st.st_size > max) {
        close(fd);
        KV_BAIL(KV_ERR_INVALID_ARGUMENT, "%s is %s (limit %zu bytes)", path,
                S_ISREG(st.st_mode) ? "too large" : "not a regular file", max);
    }
    size_t size = (size_t)st.st_size;
    uint8_t *buf = malloc(size + 1);
    if (buf == NULL) {
        close(fd);
        KV_BAIL(KV_ERR_RESOURCE_EXHAUSTED, "out of memory reading %s", path);
    }
    size_t got = 0;
    while (got < size) {
        ssize_t n = read(fd, buf + got, size - got);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        got += (size_t)n;
    }
    close(fd);
    buf[got] = 0;
    *data = buf;
    *len = got;
    return KV_SUCCESS;
}

static kv_result kv_file_write_fd(int fd, const char *path, const void *data, size_t len)
{
    const uint8_t *p = data;
    size_t done = 0;
    while (done < len) {
        ssize_t n = write(fd, p + done, len - done);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return kv_file_errno("write", path, errno);
        done += (size_t)n;
    }
    if (fsync(fd) != 0) return kv_file_errno("fsync", path, errno);
    return KV_SUCCESS;
}

kv_result kv_file_write_new(const char *path, const void *data, size_t len, unsigned mode)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, (mode_t)mode);
    if (fd < 0) {
        if (errno == EEXIST)
            KV_BAIL(KV_ERR_ALREADY_EXISTS, "%s already exists; refusing to overwrite it", path);
        return kv_file_errno("create", path, errno);
    }
    kv_result r = kv_file_write_fd(fd, path, data, len);
    close(fd);
    if (kv_failed(r)) unlink(path);
    return r;
}

kv_result kv_file_write_atomic(const char *path, const void *data, size_t len, unsigned mode)
{
    char tmp[PATH_MAX];
    KV_ENSURE(snprintf(tmp, sizeof(tmp), "%s.tmp.%d", path, (int)getpid()) < (int)sizeof(tmp),
              KV_ERR_INVALID_ARGUMENT, "path too long: %s", path);
    unlink(tmp);
    KV_GUARD(kv_file_write_new(tmp, data, len, mode));
    if (rename(tmp, path) != 0) {
        int e = errno;
        unlink(tmp);
        return kv_file_errno("rename into", path, e);
    }
    char dir[PATH_MAX];
    snprintf(dir, sizeof(dir), "%s", path);
    /* Until its directory is synced the rename may not survive a power cut. */
    int dfd = open(dirname(dir), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0) return kv_file_errno("open the directory of", path, errno);
    int rc = fsync(dfd), e = errno;
    close(dfd);
    if (rc != 0) return kv_file_errno("sync the directory of", path, e);
    return KV_SUCCESS;
}

kv_result kv_file_mkdirs(const char *path, unsigned mode)
{
    char buf[PATH_MAX];
    KV_ENSURE(strlen(path) < sizeof(buf), KV_ERR_INVALID_ARGUMENT, "path too long: %s", path);
    snprintf(buf, sizeof(buf), "%s", path);
    for (char *p = buf + 1;; p++) {
        if (*p == '/' || *p == '\0') {
            char saved = *p;
            *p = '\0';
            if (mkdir(buf, (mode_t)mode) != 0 && errno != EEXIST)
                return kv_file_errno("create directory", buf, errno);
            *p = saved;
            if (saved == '\0') break;
        }
    }
    return KV_SUCCESS;
}
